//! `focalflow predict`: the class and probabilities of image files or folders. The model
//! runs on the backend `--device` picks.

use std::path::PathBuf;

use serde_json::json;

use crate::cli::device::{self, DeviceFlag, on_device};
use crate::cli::flags::checkpoint::{CheckpointFlag, describe};
use crate::cli::text::short;
use crate::inference;
use crate::{Error, Result};

#[derive(clap::Args, Debug)]
pub struct PredictArgs {
    #[command(flatten)]
    pub checkpoint: CheckpointFlag,
    #[command(flatten)]
    pub device: DeviceFlag,
    /// Image files or folders (searched recursively; hidden files are left out).
    #[arg(value_name = "IMAGES", required_unless_present = "labels")]
    pub images: Vec<PathBuf>,
    /// Predict the images of a multi-label list (IMAGE,LABEL,.. lines, paths under --data)
    /// and show their labels beside the predicted ones.
    #[arg(long, value_name = "FILE", requires = "data")]
    pub labels: Option<PathBuf>,
    /// The folder the --labels paths are relative to.
    #[arg(long, value_name = "DIR", requires = "labels")]
    pub data: Option<PathBuf>,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Ignore the temperature stored by `calibrate`.
    #[arg(long)]
    pub no_temperature: bool,
    /// One JSON object (predictions and skipped files) instead of a table.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// CSV: file, class, confidence, then one probability column per class.
    #[arg(long)]
    pub csv: bool,
}

/// `focalflow predict`.
pub fn run(args: &PredictArgs) -> Result<()> {
    let (path, ck) = args.checkpoint.open()?;
    if args.batch_size == 0 {
        return Err(Error::invalid("--batch-size must be at least 1"));
    }
    let temperature = ck.temperature_unless(args.no_temperature);
    eprintln!("{}", describe(&path, &ck, temperature));
    let classes = ck.class_names.len();
    let mut files = inference::image_files(&args.images);
    // --labels: the listed images, and each one's labels by its path.
    let mut listed: std::collections::HashMap<String, Vec<String>> = Default::default();
    if let (Some(csv), Some(data)) = (&args.labels, &args.data) {
        crate::cli::flags::checkpoint::check_multi_label_model(&ck, csv)?;
        let list = crate::data::label_list::LabelList::read(csv, data)?;
        list.label_sets(&ck.class_names)?;
        for e in list.entries {
            listed.insert(e.path.display().to_string(), e.labels);
            files.push((e.path, None));
        }
    }
    let device = device::resolve(args.device.device)?;
    let precision = args.device.precision.precision;
    device::check_precision(device, precision)?;
    eprintln!("device: {}; precision: {precision}", device::name(device));
    let mut skipped: Vec<(String, String)> = Vec::new();
    let predictions = on_device!(device, precision, |backend| {
        inference::predict_files(
            backend,
            &ck,
            &files,
            args.batch_size,
            temperature,
            |file, why| {
                eprintln!("skipped {}: {why}", file.display());
                skipped.push((file.display().to_string(), why.to_string()));
            },
        )
    })?;
    let mut predictions = predictions;
    for p in &mut predictions {
        p.true_labels = listed.get(&p.file).cloned();
    }
    let joined = |v: &Option<Vec<String>>| {
        v.as_ref().map(|v| {
            if v.is_empty() {
                "-".to_string()
            } else {
                v.join("+")
            }
        })
    };
    // Nothing on stdout when nothing could be predicted: the error says why.
    if predictions.is_empty() {
        eprintln!("0 predicted, {} skipped", skipped.len());
        return Err(Error::invalid(format!(
            "no image could be read among the {} files given",
            files.len()
        )));
    }
    // A model with sigmoid outputs: each prediction carries its labels (p >= 0.5).
    let multi = predictions[0].labels.is_some();
    if args.json {
        let report = json!({
            "checkpoint": path,
            "temperature": temperature,
            "classes": ck.class_names,
            "predictions": predictions,
            "skipped": skipped.iter().map(|(f, w)| json!({"file": f, "reason": w})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string(&report).expect("JSON"));
    } else if args.csv {
        let mut header = vec!["file".to_string(), "class".into(), "confidence".into()];
        header.extend(ck.class_names.iter().map(|c| format!("p_{c}")));
        if multi {
            header.push("labels".into());
        }
        if !listed.is_empty() {
            header.push("true_labels".into());
        }
        println!(
            "{}",
            header
                .iter()
                .map(|h| csv_field(h))
                .collect::<Vec<_>>()
                .join(",")
        );
        for p in &predictions {
            let mut row = vec![
                csv_field(&p.file),
                csv_field(&p.class),
                format!("{:.6}", p.confidence),
            ];
            row.extend(
                ck.class_names
                    .iter()
                    .map(|c| format!("{:.6}", p.probabilities[c].as_f64().unwrap_or(f64::NAN))),
            );
            if multi {
                row.push(csv_field(&joined(&p.labels).unwrap_or_default()));
            }
            if !listed.is_empty() {
                row.push(csv_field(&joined(&p.true_labels).unwrap_or_default()));
            }
            println!("{}", row.join(","));
        }
    } else {
        let width = predictions
            .iter()
            .map(|p| p.file.chars().count())
            .max()
            .unwrap_or(4)
            .max(4);
        let shown: Vec<&String> = ck.class_names.iter().take(6).collect();
        let mut header = format!("{:<width$}  {:<12} {:>10}", "file", "class", "confidence");
        for c in &shown {
            header.push_str(&format!("  {:>10}", format!("p({})", short(c, 7))));
        }
        if multi {
            header.push_str("  labels (p >= 0.5)");
        }
        if !listed.is_empty() {
            header.push_str("  true labels");
        }
        println!("{header}");
        for p in &predictions {
            let mut line = format!(
                "{:<width$}  {:<12} {:>10.4}",
                p.file,
                short(&p.class, 12),
                p.confidence
            );
            for c in &shown {
                line.push_str(&format!(
                    "  {:>10.4}",
                    p.probabilities[c.as_str()].as_f64().unwrap_or(f64::NAN)
                ));
            }
            if multi {
                line.push_str(&format!("  {:<18}", joined(&p.labels).unwrap_or_default()));
            }
            if !listed.is_empty() {
                line.push_str(&format!("  {}", joined(&p.true_labels).unwrap_or_default()));
            }
            println!("{line}");
        }
        if classes > shown.len() {
            println!(
                "({} more classes: use --json or --csv for every probability)",
                classes - shown.len()
            );
        }
    }
    eprintln!("{} predicted, {} skipped", predictions.len(), skipped.len());
    Ok(())
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
