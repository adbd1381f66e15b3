//! `focalflow compare`: the final metrics of several runs side by side.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::checkpoint;
use crate::cli::text::short;
use crate::run::EpochMetrics;
use crate::{Error, Result};

#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// Run folders written by train.
    #[arg(value_name = "RUN_DIR", required = true)]
    pub runs: Vec<PathBuf>,
    /// Print one JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// One run's final numbers for `compare`.
#[derive(serde::Serialize)]
struct RunSummary {
    run: String,
    loss: String,
    epochs: usize,
    train_loss: f64,
    val_loss: Option<f64>,
    val_accuracy: Option<f64>,
    val_balanced_accuracy: Option<f64>,
    val_macro_f1: Option<f64>,
    val_worst_recall: Option<f64>,
    val_nll: Option<f64>,
    val_brier: Option<f64>,
    val_ece: Option<f64>,
    val_mce: Option<f64>,
    best_epoch: Option<usize>,
    temperature: Option<f64>,
}

fn summarise_run(run: &Path) -> Result<RunSummary> {
    let metrics_path = run.join("metrics.jsonl");
    let text = std::fs::read_to_string(&metrics_path).map_err(|e| {
        Error::file(
            &metrics_path,
            format!("cannot read: {e}; compare takes run folders written by focalflow train"),
        )
    })?;
    let mut history: Vec<EpochMetrics> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| Error::file(&metrics_path, format!("line {}: {e}", i + 1)))
        })
        .collect::<Result<_>>()?;
    // An interrupted epoch (no validation yet) is not a result.
    history.retain(|m| !m.partial);
    let last = history
        .last()
        .ok_or_else(|| Error::file(&metrics_path, "no epochs yet"))?;
    let config: Value = std::fs::read_to_string(run.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    let loss = serde_json::from_value::<crate::loss::LossConfig>(config["options"]["loss"].clone())
        .map(|l| l.describe())
        .unwrap_or_else(|_| "?".into());
    let best = history
        .iter()
        .filter_map(|m| m.val_loss.map(|l| (m.epoch, l)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(e, _)| e);
    let temperature = checkpoint::resolve(run)
        .ok()
        .and_then(|p| checkpoint::read_metadata(&p).ok())
        .and_then(|m| m.get("temperature").and_then(|t| t.parse().ok()));
    let v = last.validation.as_ref();
    Ok(RunSummary {
        run: run.display().to_string(),
        loss,
        epochs: last.epoch,
        train_loss: last.train_loss,
        val_loss: last.val_loss,
        val_accuracy: last.val_accuracy,
        val_balanced_accuracy: v.map(|v| v.val_balanced_accuracy),
        val_macro_f1: v.map(|v| v.val_macro_f1),
        val_worst_recall: v.and_then(|v| {
            v.val_per_class
                .iter()
                .filter_map(|c| c.recall)
                .reduce(f64::min)
        }),
        val_nll: v.map(|v| v.val_nll),
        val_brier: v.map(|v| v.val_brier),
        val_ece: v.map(|v| v.val_ece),
        val_mce: v.map(|v| v.val_mce),
        best_epoch: best,
        temperature,
    })
}

/// `focalflow compare`.
pub fn run(args: &CompareArgs) -> Result<()> {
    let runs: Vec<RunSummary> = args
        .runs
        .iter()
        .map(|r| summarise_run(r))
        .collect::<Result<_>>()?;
    if args.json {
        println!("{}", serde_json::to_string(&runs).expect("JSON"));
        return Ok(());
    }
    println!("{}", compare_table(&runs));
    println!(
        "final epoch, validation split; * marks the best of each column (lower is better for NLL, Brier, ECE, MCE)"
    );
    Ok(())
}

fn compare_table(runs: &[RunSummary]) -> String {
    type Col = (&'static str, fn(&RunSummary) -> Option<f64>, bool, bool);
    // (header, value, higher is better, as percent). The validation loss is left out: runs
    // with different losses measure it on different scales (it is in --json).
    let cols: [Col; 8] = [
        ("val acc", |r| r.val_accuracy, true, true),
        ("bal acc", |r| r.val_balanced_accuracy, true, true),
        ("macro-F1", |r| r.val_macro_f1, true, false),
        ("worst rec", |r| r.val_worst_recall, true, true),
        ("NLL", |r| r.val_nll, false, false),
        ("Brier", |r| r.val_brier, false, false),
        ("ECE", |r| r.val_ece, false, false),
        ("MCE", |r| r.val_mce, false, false),
    ];
    let run_w = runs
        .iter()
        .map(|r| r.run.chars().count())
        .max()
        .unwrap_or(3)
        .max(3);
    let loss_w = runs
        .iter()
        .map(|r| r.loss.chars().count())
        .max()
        .unwrap_or(4)
        .clamp(4, 56);
    let mut out = format!("{:<run_w$}  {:<loss_w$}  {:>6}", "run", "loss", "epochs");
    for (h, ..) in &cols {
        out.push_str(&format!("  {h:>10}"));
    }
    out.push_str(&format!("  {:>5}  {:>6}\n", "best", "T"));
    let best: Vec<Option<f64>> = cols
        .iter()
        .map(|(_, f, higher, _)| {
            runs.iter().filter_map(f).reduce(|a, b| {
                if (*higher && b > a) || (!*higher && b < a) {
                    b
                } else {
                    a
                }
            })
        })
        .collect();
    for r in runs {
        out.push_str(&format!(
            "{:<run_w$}  {:<loss_w$}  {:>6}",
            r.run,
            short(&r.loss, loss_w),
            r.epochs
        ));
        for ((_, f, _, pct), b) in cols.iter().zip(&best) {
            let cell = match f(r) {
                Some(v) => {
                    let mark = if runs.len() > 1 && Some(v) == *b {
                        "*"
                    } else {
                        " "
                    };
                    if *pct {
                        format!("{:.1}%{mark}", v * 100.0)
                    } else {
                        format!("{v:.4}{mark}")
                    }
                }
                None => "- ".into(),
            };
            out.push_str(&format!("  {cell:>10}"));
        }
        out.push_str(&format!(
            "  {:>5}  {:>6}\n",
            r.best_epoch.map_or("-".into(), |e| e.to_string()),
            r.temperature.map_or("-".into(), |t| format!("{t:.3}"))
        ));
    }
    out.pop();
    out
}
