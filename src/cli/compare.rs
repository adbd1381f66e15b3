//! `focalflow compare`: the final metrics of several runs side by side.

use std::path::PathBuf;

use crate::Result;
use crate::cli::text::short;
use crate::compare::{RunSummary, summarise_run};

#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// Run folders written by train.
    #[arg(value_name = "RUN_DIR", required = true)]
    pub runs: Vec<PathBuf>,
    /// Print one JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
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
        "final epoch, validation split; * marks the best of each column (lower is better for NLL, Brier and the calibration errors; AdaECE: 15 equal-mass bins, cw-ECE: classwise)"
    );
    if runs.iter().any(|r| !r.finished) {
        println!(
            "(unfinished): interrupted, failed or still training: its last complete epoch, not a final result (continue it with train --resume)"
        );
    }
    Ok(())
}

fn compare_table(runs: &[RunSummary]) -> String {
    type Col = (&'static str, fn(&RunSummary) -> Option<f64>, bool, bool);
    // (header, value, higher is better, as percent). The validation loss is left out: runs
    // with different losses measure it on different scales (it is in --json).
    let cols: [Col; 10] = [
        ("val acc", |r| r.val_accuracy, true, true),
        ("bal acc", |r| r.val_balanced_accuracy, true, true),
        ("macro-F1", |r| r.val_macro_f1, true, false),
        ("worst rec", |r| r.val_worst_recall, true, true),
        ("NLL", |r| r.val_nll, false, false),
        ("Brier", |r| r.val_brier, false, false),
        ("ECE", |r| r.val_ece, false, false),
        ("MCE", |r| r.val_mce, false, false),
        ("AdaECE", |r| r.val_adaptive_ece, false, false),
        ("cw-ECE", |r| r.val_classwise_ece, false, false),
    ];
    let run_w = runs
        .iter()
        .map(|r| r.run.chars().count() + if r.finished { 0 } else { " (unfinished)".len() })
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
        let run = if r.finished {
            r.run.clone()
        } else {
            format!("{} (unfinished)", r.run)
        };
        let epochs = match r.planned_epochs {
            Some(n) if !r.finished => format!("{}/{n}", r.epochs),
            _ => r.epochs.to_string(),
        };
        out.push_str(&format!(
            "{:<run_w$}  {:<loss_w$}  {:>6}",
            run,
            short(&r.loss, loss_w),
            epochs
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
