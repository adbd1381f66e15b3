//! Run folders side by side (`focalflow compare`): each run's final numbers, read from what
//! `train` (and `calibrate`) left in it.

use std::path::Path;

use serde_json::Value;

use crate::checkpoint;
use crate::run::EpochMetrics;
use crate::{Error, Result};

/// One run's final numbers for `compare`: the last complete epoch's, the best epoch by
/// validation loss, and the temperature `calibrate` stored, if any.
#[derive(serde::Serialize)]
pub struct RunSummary {
    pub run: String,
    pub loss: String,
    pub epochs: usize,
    pub train_loss: f64,
    pub val_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
    pub val_balanced_accuracy: Option<f64>,
    pub val_macro_f1: Option<f64>,
    pub val_worst_recall: Option<f64>,
    pub val_nll: Option<f64>,
    pub val_brier: Option<f64>,
    pub val_ece: Option<f64>,
    pub val_mce: Option<f64>,
    pub val_adaptive_ece: Option<f64>,
    pub val_classwise_ece: Option<f64>,
    pub best_epoch: Option<usize>,
    pub temperature: Option<f64>,
    /// The epochs the run was started for (`--epochs`), from config.json.
    pub planned_epochs: Option<usize>,
    /// Trained to its last epoch, or stopped by `--early-stop`; false for a run that was
    /// interrupted, failed or is still going (its numbers are not final).
    pub finished: bool,
}

/// The summary of the run folder `run` (its metrics.jsonl, config.json and checkpoint).
pub fn summarise_run(run: &Path) -> Result<RunSummary> {
    let metrics_path = crate::run::metrics_path(run);
    let text = std::fs::read_to_string(&metrics_path).map_err(|e| {
        Error::file(
            &metrics_path,
            format!("cannot read: {e}; compare takes run folders written by focalflow train"),
        )
    })?;
    let mut history: Vec<EpochMetrics> = crate::run::parse_metrics(&metrics_path, &text)?
        .into_iter()
        .map(|(_, m)| m)
        .collect();
    // An interrupted epoch (no validation yet) is not a result.
    let interrupted = history.last().is_some_and(|m| m.partial);
    history.retain(|m| !m.partial);
    let last = history
        .last()
        .ok_or_else(|| Error::file(&metrics_path, "no epochs yet"))?;
    let config: Value = std::fs::read_to_string(crate::run::config_path(run))
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
    let planned_epochs = config["options"]["epochs"].as_u64().map(|e| e as usize);
    let early_stop = config["options"]["early_stop"].as_u64().map(|p| p as usize);
    // Early stopping ends a run when the monitored value has not improved for PATIENCE epochs.
    let stopped_early = early_stop.is_some_and(|patience| {
        checkpoint::read_metadata(&crate::run::last_path(run))
            .ok()
            .and_then(|m| m.get("training").cloned())
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|t| t["progress"]["stale_epochs"].as_u64())
            .is_some_and(|stale| stale as usize >= patience)
    });
    let finished = !interrupted && (planned_epochs == Some(last.epoch) || stopped_early);
    let v = last.validation.as_ref();
    Ok(RunSummary {
        run: run.display().to_string(),
        loss,
        epochs: last.epoch,
        train_loss: last.train_loss,
        val_loss: last.val_loss,
        val_accuracy: last.val_accuracy,
        val_balanced_accuracy: v.map(|v| v.val_balanced_accuracy),
        val_macro_f1: v
            .map(|v| v.val_macro_f1)
            .or(last.multilabel.as_ref().map(|m| m.val_macro_f1)),
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
        val_adaptive_ece: v.and_then(|v| v.val_adaptive_ece),
        val_classwise_ece: v.and_then(|v| v.val_classwise_ece),
        best_epoch: best,
        temperature,
        planned_epochs,
        finished,
    })
}
