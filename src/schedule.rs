//! What decides the learning rate of each step, the best checkpoint and the end of a run:
//! `--lr-schedule`, `--warmup-epochs`, `--monitor` and `--early-stop`.
//!
//! Everything here is a function of the run's position (epoch, step) and of [`RunProgress`],
//! which the `last` checkpoint carries, so a resumed run takes exactly the decisions an
//! uninterrupted one takes.

use crate::metrics::EpochValidation;
use crate::{Error, Result};

/// `--lr-schedule`: the learning rate over the run, before warm-up.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    /// `--lr` throughout.
    #[default]
    Constant,
    /// Half a cosine from `--lr` after warm-up to 0 at the end of the last epoch, per step.
    Cosine,
    /// `step:EPOCHS:FACTOR`: times FACTOR every EPOCHS epochs.
    Step { epochs: usize, factor: f64 },
    /// `plateau:PATIENCE:FACTOR`: times FACTOR when the monitored metric has not improved
    /// for PATIENCE epochs (Keras' ReduceLROnPlateau, min_delta 0, cooldown 0).
    Plateau { patience: usize, factor: f64 },
}

impl std::str::FromStr for LrSchedule {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::invalid(format!(
                "--lr-schedule {s}: {why}; expected constant, cosine, step:EPOCHS:FACTOR or plateau:PATIENCE:FACTOR (e.g. step:3:0.5)"
            ))
        };
        let parts: Vec<&str> = s.split(':').collect();
        let epochs_and_factor = || -> Result<(usize, f64)> {
            let [_, n, f] = parts[..] else {
                return Err(bad("two numbers are needed"));
            };
            let n: usize = n
                .parse()
                .ok()
                .filter(|&n| n >= 1)
                .ok_or_else(|| bad("the epochs must be a whole number of at least 1"))?;
            let f: f64 = f
                .parse()
                .ok()
                .filter(|f: &f64| *f > 0.0 && *f < 1.0)
                .ok_or_else(|| bad("the factor must be between 0 and 1"))?;
            Ok((n, f))
        };
        match parts[0] {
            "constant" if parts.len() == 1 => Ok(LrSchedule::Constant),
            "cosine" if parts.len() == 1 => Ok(LrSchedule::Cosine),
            "step" => {
                epochs_and_factor().map(|(epochs, factor)| LrSchedule::Step { epochs, factor })
            }
            "plateau" => epochs_and_factor()
                .map(|(patience, factor)| LrSchedule::Plateau { patience, factor }),
            _ => Err(bad("unknown schedule")),
        }
    }
}

impl std::fmt::Display for LrSchedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LrSchedule::Constant => write!(f, "constant"),
            LrSchedule::Cosine => write!(f, "cosine"),
            LrSchedule::Step { epochs, factor } => write!(f, "step:{epochs}:{factor}"),
            LrSchedule::Plateau { patience, factor } => write!(f, "plateau:{patience}:{factor}"),
        }
    }
}

/// `--monitor`: the validation metric that picks the best checkpoint, drives early stopping
/// and the plateau schedule.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Monitor {
    #[default]
    ValLoss,
    ValAccuracy,
    ValBalancedAccuracy,
    ValMacroF1,
    ValEce,
}

impl Monitor {
    /// The metrics.jsonl key.
    pub fn name(self) -> &'static str {
        match self {
            Monitor::ValLoss => "val_loss",
            Monitor::ValAccuracy => "val_accuracy",
            Monitor::ValBalancedAccuracy => "val_balanced_accuracy",
            Monitor::ValMacroF1 => "val_macro_f1",
            Monitor::ValEce => "val_ece",
        }
    }
    /// Whether smaller is better.
    fn lower_is_better(self) -> bool {
        matches!(self, Monitor::ValLoss | Monitor::ValEce)
    }
    /// The monitored value of an epoch (`None` without validation, or a macro-F1 that is
    /// undefined).
    pub fn value(
        self,
        val_loss: Option<f64>,
        val_accuracy: Option<f64>,
        v: Option<&EpochValidation>,
    ) -> Option<f64> {
        match self {
            Monitor::ValLoss => val_loss,
            Monitor::ValAccuracy => val_accuracy,
            Monitor::ValBalancedAccuracy => v.map(|v| v.val_balanced_accuracy),
            Monitor::ValMacroF1 => v.map(|v| v.val_macro_f1),
            Monitor::ValEce => v.map(|v| v.val_ece),
        }
        .filter(|x| x.is_finite())
    }
    /// Whether `value` improves on `best` (strictly; any finite value improves on none).
    pub fn improves(self, value: f64, best: Option<f64>) -> bool {
        match best {
            None => true,
            Some(b) if self.lower_is_better() => value < b,
            Some(b) => value > b,
        }
    }
}

/// The decisions of a run so far that later ones depend on (kept in the `last` checkpoint).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunProgress {
    /// Best monitored value and its epoch.
    pub best: Option<f64>,
    pub best_epoch: Option<usize>,
    /// Epochs since the monitored value last improved.
    pub stale_epochs: usize,
    /// The plateau schedule's accumulated factor.
    pub lr_factor: f64,
    /// Epochs since the plateau schedule last reduced the rate, without improvement.
    pub plateau_wait: usize,
    /// `adafocal`'s gamma bins after the last update (what the next epoch trains with).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adafocal: Option<crate::loss::GammaBins>,
}

impl Default for RunProgress {
    fn default() -> Self {
        RunProgress {
            best: None,
            best_epoch: None,
            stale_epochs: 0,
            lr_factor: 1.0,
            plateau_wait: 0,
            adafocal: None,
        }
    }
}

/// The learning-rate and stopping rules of a run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    pub base_lr: f64,
    pub schedule: LrSchedule,
    pub warmup_epochs: f64,
    pub epochs: usize,
    pub monitor: Monitor,
    pub early_stop: Option<usize>,
}

/// What [`Schedule::end_epoch`] decided.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EpochDecision {
    /// The epoch's monitored value is the best so far (save `best`).
    pub best: bool,
    /// Early stopping: train no further.
    pub stop: bool,
}

impl Schedule {
    /// Checks the flags against each other and the data (a plateau schedule or early
    /// stopping needs a validation split to watch).
    pub fn validate(&self, has_validation: bool) -> Result<()> {
        if !(self.warmup_epochs.is_finite() && self.warmup_epochs >= 0.0) {
            return Err(Error::invalid(format!(
                "--warmup-epochs {}: expected a number of epochs, 0 or more (fractions allowed)",
                self.warmup_epochs
            )));
        }
        if self.warmup_epochs > self.epochs as f64 {
            return Err(Error::invalid(format!(
                "--warmup-epochs {} is longer than --epochs {}: the learning rate would never reach --lr; use at most {}",
                self.warmup_epochs, self.epochs, self.epochs
            )));
        }
        if self.early_stop == Some(0) {
            return Err(Error::invalid(
                "--early-stop 0: the patience must be at least 1 epoch",
            ));
        }
        if !has_validation {
            let needs = if self.early_stop.is_some() {
                Some("--early-stop")
            } else if matches!(self.schedule, LrSchedule::Plateau { .. }) {
                Some("--lr-schedule plateau")
            } else {
                None
            };
            if let Some(flag) = needs {
                return Err(Error::invalid(format!(
                    "{flag} watches --monitor {} on the validation split, and --val-fraction leaves none",
                    self.monitor.name()
                )));
            }
        }
        Ok(())
    }

    /// The learning rate of step `step` (0-based) of epoch `epoch` (1-based) of `steps`.
    pub fn learning_rate(&self, epoch: usize, step: usize, steps: usize, p: &RunProgress) -> f64 {
        let steps = steps.max(1) as f64;
        // The run's position in epochs at the start and at the end of this step.
        let start = (epoch - 1) as f64 + step as f64 / steps;
        let end = start + 1.0 / steps;
        let scheduled = match self.schedule {
            LrSchedule::Constant => self.base_lr,
            LrSchedule::Cosine => {
                let span = (self.epochs as f64 - self.warmup_epochs).max(f64::MIN_POSITIVE);
                let t = ((start - self.warmup_epochs) / span).clamp(0.0, 1.0);
                self.base_lr * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
            LrSchedule::Step { epochs, factor } => {
                self.base_lr * factor.powi(((epoch - 1) / epochs) as i32)
            }
            LrSchedule::Plateau { .. } => self.base_lr * p.lr_factor,
        };
        if self.warmup_epochs > 0.0 && start < self.warmup_epochs {
            scheduled * (end / self.warmup_epochs).min(1.0)
        } else {
            scheduled
        }
    }

    /// Updates `p` with the monitored value of `epoch` (`None`: no validation) and decides
    /// whether it is the best so far and whether to stop.
    pub fn end_epoch(
        &self,
        epoch: usize,
        value: Option<f64>,
        p: &mut RunProgress,
    ) -> EpochDecision {
        let Some(value) = value else {
            return EpochDecision {
                best: false,
                stop: false,
            };
        };
        let best = self.monitor.improves(value, p.best);
        if best {
            p.best = Some(value);
            p.best_epoch = Some(epoch);
            p.stale_epochs = 0;
            p.plateau_wait = 0;
        } else {
            p.stale_epochs += 1;
            p.plateau_wait += 1;
        }
        if let LrSchedule::Plateau { patience, factor } = self.schedule
            && p.plateau_wait >= patience
        {
            p.lr_factor *= factor;
            p.plateau_wait = 0;
        }
        EpochDecision {
            best,
            stop: self.early_stop.is_some_and(|n| p.stale_epochs >= n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(s: &str, warmup: f64) -> Schedule {
        Schedule {
            base_lr: 1.0,
            schedule: s.parse().unwrap(),
            warmup_epochs: warmup,
            epochs: 10,
            monitor: Monitor::ValLoss,
            early_stop: Some(2),
        }
    }

    #[test]
    fn schedules_and_warmup() {
        let p = RunProgress::default();
        let c = schedule("constant", 0.0);
        assert_eq!(c.learning_rate(3, 5, 10, &p), 1.0);
        // Half an epoch of linear warm-up over 10 steps: 0.2, 0.4, ... 1.0, then flat.
        let w = schedule("constant", 0.5);
        let lrs: Vec<f64> = (0..7).map(|s| w.learning_rate(1, s, 10, &p)).collect();
        for (got, want) in lrs.iter().zip([0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0]) {
            assert!((got - want).abs() < 1e-12, "{lrs:?}");
        }
        let cos = schedule("cosine", 0.0);
        assert_eq!(cos.learning_rate(1, 0, 10, &p), 1.0);
        assert!((cos.learning_rate(6, 0, 10, &p) - 0.5).abs() < 1e-12);
        assert!(cos.learning_rate(10, 9, 10, &p) < 0.01);
        let step = schedule("step:3:0.5", 0.0);
        let by_epoch: Vec<f64> = (1..=7).map(|e| step.learning_rate(e, 0, 10, &p)).collect();
        assert_eq!(by_epoch, [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25]);
    }

    #[test]
    fn plateau_best_and_early_stop() {
        let s = schedule("plateau:1:0.1", 0.0);
        let mut p = RunProgress::default();
        let d = s.end_epoch(1, Some(0.5), &mut p);
        assert_eq!((d.best, d.stop, p.lr_factor), (true, false, 1.0));
        let d = s.end_epoch(2, Some(0.6), &mut p);
        assert_eq!((d.best, d.stop), (false, false));
        assert!((p.lr_factor - 0.1).abs() < 1e-15);
        assert!((s.learning_rate(3, 0, 10, &p) - 0.1).abs() < 1e-15);
        let d = s.end_epoch(3, Some(0.5), &mut p); // equal is not better
        assert_eq!((d.best, d.stop), (false, true));
        assert_eq!(p.best_epoch, Some(1));
        // Higher is better for accuracy.
        assert!(Monitor::ValAccuracy.improves(0.9, Some(0.8)));
        assert!(!Monitor::ValEce.improves(0.9, Some(0.8)));
    }

    #[test]
    fn bad_flags_name_themselves() {
        for bad in ["cos", "step:0:0.5", "step:2:1.5", "plateau:2", "constant:1"] {
            let e = bad.parse::<LrSchedule>().unwrap_err().to_string();
            assert!(e.contains(&format!("--lr-schedule {bad}")), "{e}");
        }
        let mut s = schedule("plateau:2:0.5", 0.0);
        s.early_stop = None;
        assert!(
            s.validate(false)
                .unwrap_err()
                .to_string()
                .contains("--lr-schedule plateau")
        );
        s.warmup_epochs = -1.0;
        assert!(
            s.validate(true)
                .unwrap_err()
                .to_string()
                .contains("--warmup-epochs -1")
        );
        for text in ["cosine", "step:3:0.5", "plateau:2:0.25", "constant"] {
            assert_eq!(text.parse::<LrSchedule>().unwrap().to_string(), text);
        }
    }
}
