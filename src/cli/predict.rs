//! `focalflow predict`: the class and probabilities of image files or folders. The model
//! runs on the backend `--device` picks.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::{Value, json};

use crate::checkpoint::Checkpoint;
use crate::cli::device::{self, DeviceFlag, on_device};
use crate::cli::flags::checkpoint::{CheckpointFlag, describe, logits_of_images, open_checkpoint};
use crate::cli::text::short;
use crate::data::ImageSet;
use crate::data::load::decode_resized;
use crate::feed::Feeds;
use crate::metrics::softmax_rows;
use crate::model::ImageShape;
use crate::{Error, Result};

#[derive(clap::Args, Debug)]
pub struct PredictArgs {
    #[command(flatten)]
    pub checkpoint: CheckpointFlag,
    #[command(flatten)]
    pub device: DeviceFlag,
    /// Image files or folders (searched recursively; hidden files are left out).
    #[arg(value_name = "IMAGES", required = true)]
    pub images: Vec<PathBuf>,
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

/// Every file behind `inputs` (folders recursively, sorted; hidden entries left out).
fn image_files(inputs: &[PathBuf]) -> Vec<(PathBuf, Option<String>)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, Option<String>)>) {
        let mut entries: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(rd) => rd.flatten().map(|e| e.path()).collect(),
            Err(e) => {
                out.push((
                    dir.to_path_buf(),
                    Some(format!("cannot list the folder: {e}")),
                ));
                return;
            }
        };
        entries.sort();
        for p in entries {
            if p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            {
                continue;
            }
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push((p, None));
            }
        }
    }
    let mut out = Vec::new();
    for p in inputs {
        if p.is_dir() {
            walk(p, &mut out);
        } else if p.exists() {
            out.push((p.clone(), None));
        } else {
            out.push((p.clone(), Some("no such file".into())));
        }
    }
    out
}

/// One prediction.
#[derive(serde::Serialize)]
struct Prediction {
    file: String,
    class: String,
    confidence: f64,
    probabilities: serde_json::Map<String, Value>,
}

/// Files that could not be used, with why.
type Skips = Vec<(String, String)>;

/// Files decoded per round of `predict` (then sent to the device as one u8 set).
const PREDICT_CHUNK: usize = 1024;

/// Predictions for `files` (decoded and resized in parallel, a chunk at a time, then run
/// `batch_size` at a time through the same data path as training and `eval`) on `backend`,
/// and the files that could not be read.
fn predict_files<B: Feeds>(
    backend: &B,
    ck: &Checkpoint,
    files: &[(PathBuf, Option<String>)],
    batch_size: usize,
    temperature: f64,
) -> Result<(Vec<Prediction>, Skips)> {
    let shape: ImageShape = ck.input;
    let mut model = ck.model(backend)?;
    let classes = ck.class_names.len();
    let mut predictions = Vec::new();
    let mut skipped: Vec<(String, String)> = Vec::new();
    for chunk in files.chunks(PREDICT_CHUNK.max(batch_size)) {
        let decoded: Vec<std::result::Result<Vec<u8>, String>> = chunk
            .par_iter()
            .map(|(file, problem)| {
                if let Some(p) = problem {
                    return Err(p.clone());
                }
                let bytes = std::fs::read(file).map_err(|e| format!("cannot read: {e}"))?;
                let mut slot = vec![0u8; shape.len()];
                decode_resized(&bytes, shape, &mut slot).map_err(|s| s.describe())?;
                Ok(slot)
            })
            .collect();
        let mut pixels = Vec::new();
        let mut names = Vec::new();
        for ((file, _), d) in chunk.iter().zip(decoded) {
            match d {
                Ok(image) => {
                    pixels.extend_from_slice(&image);
                    names.push(file.display().to_string());
                }
                Err(why) => {
                    eprintln!("skipped {}: {why}", file.display());
                    skipped.push((file.display().to_string(), why));
                }
            }
        }
        if names.is_empty() {
            continue;
        }
        let set = ImageSet {
            shape,
            class_names: ck.class_names.clone(),
            pixels,
            labels: vec![0; names.len()],
        };
        let logits = logits_of_images(backend, &mut model, &set, batch_size)?;
        let probs = softmax_rows(&logits, classes, temperature);
        for (file, row) in names.into_iter().zip(probs.chunks_exact(classes)) {
            let best = crate::metrics::argmax(row);
            predictions.push(Prediction {
                file,
                class: ck.class_names[best].clone(),
                confidence: row[best],
                probabilities: ck
                    .class_names
                    .iter()
                    .zip(row)
                    .map(|(c, &p)| (c.clone(), json!(p)))
                    .collect(),
            });
        }
    }
    Ok((predictions, skipped))
}

/// `focalflow predict`.
pub fn run(args: &PredictArgs) -> Result<()> {
    let (path, ck) = open_checkpoint(&args.checkpoint)?;
    if args.batch_size == 0 {
        return Err(Error::invalid("--batch-size must be at least 1"));
    }
    let temperature = if args.no_temperature {
        1.0
    } else {
        ck.temperature_or_one()
    };
    eprintln!("{}", describe(&path, &ck, temperature));
    let classes = ck.class_names.len();
    let files = image_files(&args.images);
    let device = device::resolve(args.device.device)?;
    eprintln!("device: {}", device::name(device));
    let (predictions, skipped) = on_device!(device, |backend| {
        predict_files(backend, &ck, &files, args.batch_size, temperature)
    })?;
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
    if predictions.is_empty() {
        return Err(Error::invalid(format!(
            "no image could be read among the {} files given",
            files.len()
        )));
    }
    Ok(())
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
