//! `focalflow eval`: the metrics of a checkpoint on a folder of labelled images (per-class
//! table, ECE, reliability plots). The model runs on the backend `--device` picks.

use std::path::PathBuf;

use serde_json::json;

use crate::Result;
use crate::cli::device::DeviceFlag;
use crate::cli::flags::checkpoint::{
    CheckpointFlag, LabelledData, check_before_data, describe, logits_on_device,
};
use crate::inference::labels_of;
use crate::metrics::Metrics;
use crate::metrics::multilabel::MultiLabelMetrics;

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub checkpoint: CheckpointFlag,
    #[command(flatten)]
    pub device: DeviceFlag,
    #[command(flatten)]
    pub data: LabelledData,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Folder for metrics.json and reliability.{svg,png} (default: eval-<data folder name>
    /// in the run folder of the checkpoint).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Ignore the temperature stored by `calibrate` (evaluate the raw model).
    #[arg(long)]
    pub no_temperature: bool,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

/// `eval --labels`: the multi-label metrics, printed and written to `metrics.json`.
fn report_multi_label(
    args: &EvalArgs,
    path: &std::path::Path,
    out: &std::path::Path,
    class_names: &[String],
    temperature: f64,
    logits: &[f32],
    sets: &[Vec<u32>],
) -> Result<()> {
    let m = MultiLabelMetrics::from_logits(logits, sets, class_names, temperature)?;
    std::fs::create_dir_all(out).map_err(|e| crate::Error::file(out, e))?;
    let report = json!({
        "checkpoint": path,
        "data": args.data.dir,
        "labels": args.data.labels,
        "temperature": temperature,
        "multi_label": m,
    });
    let metrics_path = out.join("metrics.json");
    crate::run::write_atomically(
        &metrics_path,
        serde_json::to_string_pretty(&report)
            .expect("JSON")
            .as_bytes(),
    )?;
    if args.json {
        let mut report = report;
        report["files"] = json!([metrics_path]);
        println!("{}", serde_json::to_string(&report).expect("JSON"));
        return Ok(());
    }
    println!("{}", m.summary_line());
    println!();
    println!("{}", m.per_class_table());
    println!("wrote {}", metrics_path.display());
    Ok(())
}

/// `focalflow eval`.
pub fn run(args: &EvalArgs) -> Result<()> {
    let (path, ck) = args.checkpoint.open()?;
    let temperature = ck.temperature_unless(args.no_temperature);
    eprintln!("{}", describe(&path, &ck, temperature));
    let device = check_before_data(
        args.batch_size,
        &args.device,
        args.out.as_deref(),
        &args.data.dir,
    )?;
    let set = args.data.load(&ck, !args.quiet && !args.json)?;
    let precision = args.device.precision.precision;
    let logits = logits_on_device(&ck, &set, args.batch_size, device, precision)?;
    let out = match &args.out {
        Some(o) => o.clone(),
        None => crate::run::default_eval_dir(&path, &args.data.dir),
    };
    if let Some(sets) = &set.multi {
        let names = &ck.class_names;
        return report_multi_label(args, &path, &out, names, temperature, &logits, sets);
    }
    let labels = labels_of(&set);
    let m = Metrics::from_logits(&logits, &labels, &ck.class_names, temperature, ck.output())?;
    let raw = (temperature != 1.0)
        .then(|| Metrics::from_logits(&logits, &labels, &ck.class_names, 1.0, ck.output()))
        .transpose()?;
    let data_name = args
        .data
        .dir
        .file_name()
        .map_or("data".into(), |n| n.to_string_lossy().into_owned());
    let mut files = crate::plots::reliability_diagram(
        &m,
        &format!(
            "{data_name}{}",
            if temperature != 1.0 {
                ", T applied"
            } else {
                ""
            }
        ),
        &out,
        "reliability",
    )?;
    let report = json!({
        "checkpoint": path,
        "data": args.data.dir,
        "temperature": temperature,
        "metrics": m,
        "uncalibrated": raw.as_ref().map(|r| json!({
            "nll": r.nll, "brier": r.brier, "ece": r.ece, "mce": r.mce,
            "adaptive_ece": r.adaptive_ece, "classwise_ece": r.classwise_ece,
            "mean_confidence": r.mean_confidence
        })),
    });
    let metrics_path = out.join("metrics.json");
    crate::run::write_atomically(
        &metrics_path,
        serde_json::to_string_pretty(&report)
            .expect("JSON")
            .as_bytes(),
    )?;
    files.insert(0, metrics_path);
    if args.json {
        let mut report = report;
        report["files"] = json!(files);
        println!("{}", serde_json::to_string(&report).expect("JSON"));
        return Ok(());
    }
    println!("{}", m.summary_line());
    if let Some(r) = &raw {
        println!(
            "without the temperature: NLL {:.4}  Brier {:.4}  ECE {:.4}  MCE {:.4}",
            r.nll, r.brier, r.ece, r.mce
        );
    }
    println!();
    print!("{}", m.per_class_table());
    println!();
    println!("{}", m.reliability_table());
    let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    println!("wrote {}", names.join(", "));
    Ok(())
}
