//! The options of a training run (`TrainOptions`: every flag of `train`, written to
//! `config.json` and stored in each checkpoint).

use crate::data::{Augment, ClassFraction};
use crate::feed::DeviceCache;
use crate::loss::LossConfig;
use crate::model::Arch;
use crate::precision::Precision;
use crate::schedule::{LrSchedule, Monitor};

/// Everything that defines a training run (written to `config.json`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct TrainOptions {
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub loss: LossConfig,
    #[serde(serialize_with = "serialize_display")]
    pub arch: Arch,
    pub seed: u64,
    pub val_fraction: f64,
    pub steps_per_epoch: Option<usize>,
    /// `--class-fraction`: classes kept only in part, chosen with the seed before the split.
    pub class_fraction: Vec<ClassFraction>,
    /// `--augment`: augmentation of training batches.
    pub augment: Augment,
    /// `--device-cache`: device memory the u8 set may take (where batches are assembled
    /// changes no result, so it is not part of the run's configuration).
    #[serde(skip)]
    pub device_cache: DeviceCache,
    /// `--lr-schedule` (not written when constant, so that runs of earlier versions, which
    /// had no schedule, still resume).
    #[serde(default, skip_serializing_if = "is_default")]
    pub lr_schedule: LrSchedule,
    /// `--warmup-epochs`: linear warm-up of the learning rate over this many epochs.
    #[serde(default, skip_serializing_if = "is_default")]
    pub warmup_epochs: f64,
    /// `--monitor`: the validation metric for the best checkpoint, early stopping and the
    /// plateau schedule.
    #[serde(default, skip_serializing_if = "is_default")]
    pub monitor: Monitor,
    /// `--early-stop PATIENCE`: stop when the monitored metric has not improved for this
    /// many epochs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stop: Option<usize>,
    /// `--precision`: the format of the convolution and dense products (not written when
    /// fp32, so that runs of earlier versions still resume; `config.json` also states the
    /// precision the backend ran at the top level).
    #[serde(default, skip_serializing_if = "Precision::is_fp32")]
    pub precision: Precision,
    /// Show progress bars (on a terminal).
    #[serde(skip)]
    pub progress: bool,
    /// `--resume`: continue the run in the output folder (see [`train`]).
    #[serde(skip)]
    pub resume: bool,
    /// Where the images came from and how they were prepared (`--data` or the built-in
    /// set, the image size, the cache and decoding settings), as the command line gives
    /// them: `config.json`'s `data`. Not among the options a resume compares (the data's
    /// fingerprint is): a set may move to another folder or cache.
    #[serde(skip)]
    pub origin: serde_json::Value,
}

impl Default for TrainOptions {
    /// The command line's defaults (`focalflow train` with no flags, on given data).
    fn default() -> Self {
        TrainOptions {
            epochs: 10,
            batch_size: 32,
            learning_rate: 1e-3,
            loss: LossConfig::default_focal(),
            arch: Arch::default(),
            seed: 42,
            val_fraction: 0.2,
            steps_per_epoch: None,
            class_fraction: Vec::new(),
            augment: Augment::None,
            device_cache: DeviceCache::Auto,
            lr_schedule: LrSchedule::Constant,
            warmup_epochs: 0.0,
            monitor: Monitor::ValLoss,
            early_stop: None,
            precision: Precision::Fp32,
            progress: false,
            resume: false,
            origin: serde_json::Value::Null,
        }
    }
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

fn serialize_display<S: serde::Serializer, T: std::fmt::Display>(
    v: &T,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.collect_str(v)
}
