//! Checkpoints: the model as a `safetensors` file with Keras names and layouts, and what is
//! needed to use it (architecture, input shape, class names, loss, temperature) as metadata.
//!
//! Tensors, all little-endian f32, in the order of the layers:
//! - `conv2d/kernel` `[kh, kw, in, out]` (HWIO), `conv2d/bias` `[out]`, then `conv2d_1/...`;
//! - `dense/kernel` `[in, out]`, `dense/bias` `[out]`, ..., the last dense layer is the head
//!   (its softmax is not a tensor). The flatten before the first dense layer is NHWC
//!   row-major, as Keras' `Flatten` on channels-last input.
//!
//! `last.safetensors` also holds the optimizer state for `train --resume`: `optimizer/m/<name>`
//! and `optimizer/v/<name>` (Adam's moments, same shapes) with the step counter and the
//! hyperparameters in the `optimizer` metadata key, and the training position in `training`.
//!
//! Metadata (safetensors allows only strings; JSON where a value is structured):
//! `format` (`focalflow.checkpoint`), `format_version` (`1`), `focalflow_version`, `arch`
//! (`--arch` notation, without the head), `input_shape` (`[h, w, c]`), `class_names` (JSON
//! list; the head's output `i` is class `i`), `preprocessing`, `loss` (JSON), `epoch`,
//! `val_loss`, `kind` (`last`/`best`), after `calibrate`: `temperature` and `calibration`
//! (JSON), and `checksums` (JSON: tensor name -> `crc32c:<hex>` of its bytes), which every
//! load verifies (a file without it, from an older focalflow, loads with a note).
//!
//! Files are written atomically: to a temporary file in the same folder, flushed to disk
//! (`fsync`), renamed over the old one, and the folder synced, so a crash or a kill at any
//! moment leaves the previous checkpoint or the new one, never a mix.
//!
//! Here: what a checkpoint holds ([`Checkpoint`], the training state) and its conversion to
//! and from a model. `format.rs`: the file (write, read, check, `--checkpoint` resolved);
//! `resume.rs`: `train --resume`'s checks and resume point; `policy.rs`: which checkpoints a
//! run keeps (`last`, `best`).

use serde::{Deserialize, Serialize};

use crate::loss::LossConfig;
use crate::model::{Arch, ImageShape, Model, Plan};
use crate::ops::{Backend, StepTotals};
use crate::optim::Adam;
use crate::schedule::RunProgress;
use crate::{Error, Result};

mod format;
mod policy;
mod resume;

pub use format::{CHECKSUMS_KEY, read_metadata, resolve};
pub use policy::EpochCheckpoints;
pub use resume::{
    ResumePoint, check_resumable, check_resume_before_data, data_fingerprint, option_differences,
    resume_point,
};

pub const FORMAT: &str = "focalflow.checkpoint";
pub const FORMAT_VERSION: &str = "1";
/// How images must be prepared for the model (the same recipe as `train --data`).
pub const PREPROCESSING: &str =
    "RGB, resized (bilinear) to input_shape, values x/255 in [0, 1], NHWC float32";
/// Prefix of the optimizer tensors (not model weights).
pub const OPTIMIZER_PREFIX: &str = "optimizer/";

/// Adam's state: hyperparameters, step counter and both moments of every parameter.
#[derive(Clone, Debug, PartialEq)]
pub struct OptimizerState {
    pub adam: Adam,
    pub m: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
}

/// Where an interrupted training run stands (metadata key `training`, JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainingState {
    /// Epochs completed.
    pub epoch: usize,
    /// The best monitored value and its epoch (what `best.safetensors` holds), and the
    /// schedule's and early stopping's counters.
    #[serde(default)]
    pub progress: RunProgress,
    /// The run's `TrainOptions`, as in `config.json`.
    pub options: serde_json::Value,
    /// Identifies the data and its split: a resumed run must see the same.
    pub data_fingerprint: String,
    /// Where an interrupt stopped the next epoch (`None`: at an epoch's end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial: Option<PartialEpoch>,
    /// Checkpoints written before `progress` existed kept the lowest validation loss and
    /// its epoch here (read, then moved into `progress`, never written).
    #[serde(default, skip_serializing)]
    best_val_loss: Option<f64>,
    #[serde(default, skip_serializing)]
    best_epoch: Option<usize>,
}

impl TrainingState {
    /// Moves an older checkpoint's best (the lowest validation loss, as `--monitor
    /// val_loss` chooses) into `progress` ([`Checkpoint::load`] does it).
    fn adopt_legacy_best(&mut self) {
        if self.best_epoch.is_some() && self.progress.best_epoch.is_none() {
            self.progress.best = self.best_val_loss.take();
            self.progress.best_epoch = self.best_epoch.take();
        }
    }
}

/// The steps of an epoch done before an interrupt, and what they added up to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PartialEpoch {
    /// Steps done (the epoch continues with the next one).
    pub steps: usize,
    pub loss_sum: f64,
    pub correct: u64,
    pub seen: u64,
    /// Seconds spent on them.
    pub seconds: f64,
    /// The learning rate of each.
    pub learning_rates: Vec<f64>,
}

impl PartialEpoch {
    /// What the steps added up to, as the backend's counters hold it.
    pub fn totals(&self) -> StepTotals {
        StepTotals {
            loss_sum: self.loss_sum,
            correct: self.correct,
            seen: self.seen,
            failure: None,
        }
    }
}

/// A model with its metadata, in memory.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    pub arch: Arch,
    pub input: ImageShape,
    pub class_names: Vec<String>,
    pub loss: Option<LossConfig>,
    /// Weights in the order and layouts of the plan's parameters.
    pub weights: Vec<Vec<f32>>,
    pub epoch: Option<usize>,
    pub val_loss: Option<f64>,
    /// `last`, `best`, or empty.
    pub kind: String,
    /// Temperature fitted by `calibrate` (divides the logits).
    pub temperature: Option<f64>,
    /// What `calibrate` measured (JSON).
    pub calibration: Option<serde_json::Value>,
    pub optimizer: Option<OptimizerState>,
    pub training: Option<TrainingState>,
}

impl Checkpoint {
    /// The weights of `model` (no optimizer state) with the class names.
    pub fn of_model<B: Backend<E = f32>>(
        backend: &B,
        model: &Model<B>,
        class_names: &[String],
    ) -> Result<Checkpoint> {
        if class_names.len() != model.plan.classes {
            return Err(Error::invalid(format!(
                "{} class names for a model of {} classes",
                class_names.len(),
                model.plan.classes
            )));
        }
        Ok(Checkpoint {
            arch: model.plan.arch.clone(),
            input: model.plan.input,
            class_names: class_names.to_vec(),
            loss: None,
            weights: model.weights(backend)?,
            epoch: None,
            val_loss: None,
            kind: String::new(),
            temperature: None,
            calibration: None,
            optimizer: None,
            training: None,
        })
    }

    /// Adds `model`'s Adam state (for `last`, which `--resume` reads).
    pub fn with_optimizer<B: Backend<E = f32>>(
        mut self,
        backend: &B,
        model: &Model<B>,
    ) -> Result<Checkpoint> {
        let read = |pick: fn(&crate::model::Param<B::Buf>) -> &B::Buf| {
            model
                .params
                .iter()
                .map(|p| backend.read(pick(p), p.spec.len()))
                .collect::<Result<Vec<_>>>()
        };
        self.optimizer = Some(OptimizerState {
            adam: model.optimizer.clone(),
            m: read(|p| &p.m)?,
            v: read(|p| &p.v)?,
        });
        Ok(self)
    }

    /// The layer plan this checkpoint's weights belong to.
    pub fn plan(&self) -> Result<Plan> {
        Ok(Plan::new(&self.arch, self.input, self.class_names.len())?.with_output(self.output()))
    }

    /// The activation of the model's head: sigmoid for a model trained with `sigmoid-focal`,
    /// else softmax (also for checkpoints that do not name their loss).
    pub fn output(&self) -> crate::loss::Output {
        self.loss.as_ref().map(|l| l.output()).unwrap_or_default()
    }

    /// The temperature to apply (1 when not calibrated).
    pub fn temperature_or_one(&self) -> f64 {
        self.temperature.unwrap_or(1.0)
    }

    /// The temperature a command applies: the calibrated one, or 1 with `--no-temperature`.
    pub fn temperature_unless(&self, no_temperature: bool) -> f64 {
        if no_temperature {
            1.0
        } else {
            self.temperature_or_one()
        }
    }

    /// A model on `backend` with these weights (and the optimizer state, when present).
    pub fn model<B: Backend<E = f32>>(&self, backend: &B) -> Result<Model<B>> {
        let mut model = Model::with_weights(backend, self.plan()?, &self.weights)?;
        if let Some(opt) = &self.optimizer {
            for ((p, m), v) in model.params.iter_mut().zip(&opt.m).zip(&opt.v) {
                backend.write(&mut p.m, m)?;
                backend.write(&mut p.v, v)?;
            }
            model.optimizer = opt.adam.clone();
        }
        Ok(model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_training_state_keeps_its_best() {
        // The `training` metadata as checkpoints wrote it before schedules and --monitor.
        let old = r#"{"epoch": 3, "best_val_loss": 0.25, "best_epoch": 2,
                      "options": {}, "data_fingerprint": "x"}"#;
        let mut state: TrainingState = serde_json::from_str(old).unwrap();
        state.adopt_legacy_best();
        assert_eq!(state.progress.best, Some(0.25));
        assert_eq!(state.progress.best_epoch, Some(2));
        assert_eq!(state.progress.lr_factor, 1.0);
        assert_eq!(state.partial, None);
        // And what is written now has no legacy fields.
        let text = serde_json::to_string(&state).unwrap();
        assert!(!text.contains("best_val_loss"), "{text}");
        let mut again: TrainingState = serde_json::from_str(&text).unwrap();
        again.adopt_legacy_best();
        assert_eq!(again, state);
    }
}
