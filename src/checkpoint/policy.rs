//! Which checkpoints a run keeps: `last` after every epoch (and at an interrupt), `best`
//! whenever the monitored value is the best so far.

use std::path::PathBuf;

use super::{Checkpoint, PartialEpoch, TrainingState};
use crate::Result;
use crate::loss::LossConfig;
use crate::model::Model;
use crate::ops::Backend;
use crate::run::{best_path, last_path};
use crate::schedule::RunProgress;

/// Writes `last` (weights, optimizer, training state) after every epoch (and at an
/// interrupt) and `best` (weights) whenever the monitored value is the best so far.
pub struct EpochCheckpoints {
    pub run: PathBuf,
    pub class_names: Vec<String>,
    pub loss: LossConfig,
    pub options: serde_json::Value,
    pub fingerprint: String,
}

impl EpochCheckpoints {
    /// Saves the checkpoints of `epoch` (completed): `best` too when `best`; `progress` is
    /// the run's state after the epoch, `partial` the steps of the next one done before an
    /// interrupt.
    #[allow(clippy::too_many_arguments)]
    pub fn save<B: Backend<E = f32>>(
        &self,
        backend: &B,
        model: &Model<B>,
        epoch: usize,
        val_loss: Option<f64>,
        best: bool,
        progress: &RunProgress,
        partial: Option<PartialEpoch>,
    ) -> Result<()> {
        let mut ck = Checkpoint::of_model(backend, model, &self.class_names)?;
        ck.loss = Some(self.loss.clone());
        ck.epoch = Some(epoch);
        ck.val_loss = val_loss;
        if best {
            ck.kind = "best".into();
            ck.save(&best_path(&self.run))?;
        }
        ck.kind = "last".into();
        ck.training = Some(TrainingState {
            epoch,
            progress: progress.clone(),
            options: self.options.clone(),
            data_fingerprint: self.fingerprint.clone(),
            partial,
            best_val_loss: None,
            best_epoch: None,
        });
        ck.with_optimizer(backend, model)?
            .save(&last_path(&self.run))
    }
}
