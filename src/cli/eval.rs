//! `focalflow eval`: the metrics of a checkpoint on a folder of labelled images (per-class
//! table, ECE, reliability plots). The model runs on the backend `--device` picks.

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::Result;
use crate::cli::device::DeviceFlag;
use crate::cli::flags::checkpoint::{
    CheckpointFlag, LabelledData, describe, labels_of, load_labelled, logits_of_set,
    open_checkpoint,
};
use crate::metrics::Metrics;

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

/// `focalflow eval`.
pub fn run(args: &EvalArgs) -> Result<()> {
    let (path, ck) = open_checkpoint(&args.checkpoint)?;
    let temperature = if args.no_temperature {
        1.0
    } else {
        ck.temperature_or_one()
    };
    eprintln!("{}", describe(&path, &ck, temperature));
    let set = load_labelled(&args.data, &ck, !args.quiet && !args.json)?;
    let logits = logits_of_set(&ck, &set, args.batch_size, args.device.device)?;
    let labels = labels_of(&set);
    let m = Metrics::from_logits(&logits, &labels, &ck.class_names, temperature)?;
    let raw = (temperature != 1.0)
        .then(|| Metrics::from_logits(&logits, &labels, &ck.class_names, 1.0))
        .transpose()?;
    let out = match &args.out {
        Some(o) => o.clone(),
        None => default_eval_dir(&path, &args.data.dir),
    };
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
    println!("{}", reliability_table(&m));
    let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    println!("wrote {}", names.join(", "));
    Ok(())
}

/// `RUN/eval-<data>` for `RUN/checkpoints/x.safetensors`, else `eval-<data>` beside the file.
fn default_eval_dir(checkpoint: &Path, data: &Path) -> PathBuf {
    let parent = checkpoint.parent().unwrap_or(Path::new("."));
    let base = if parent.file_name().is_some_and(|n| n == "checkpoints") {
        parent.parent().unwrap_or(Path::new("."))
    } else {
        parent
    };
    let name = std::fs::canonicalize(data)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "data".into());
    base.join(format!("eval-{name}"))
}

/// The non-empty confidence bins as a small table.
pub fn reliability_table(m: &Metrics) -> String {
    let mut out = format!(
        "confidence bins (ECE {:.4}, MCE {:.4}; empty bins left out)\n{:>13}  {:>7}  {:>10}  {:>8}  {:>7}\n",
        m.ece, m.mce, "bin", "images", "confidence", "accuracy", "gap"
    );
    for b in &m.reliability {
        if let (Some(c), Some(a)) = (b.confidence, b.accuracy) {
            out.push_str(&format!(
                "{:>13}  {:>7}  {:>10.4}  {:>8.4}  {:>+7.4}\n",
                format!("({:.3}, {:.3}]", b.lower, b.upper),
                b.count,
                c,
                a,
                a - c
            ));
        }
    }
    out.pop();
    out
}
