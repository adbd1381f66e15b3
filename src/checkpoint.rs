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
//! `val_loss`, `kind` (`last`/`best`), and after `calibrate`: `temperature` and
//! `calibration` (JSON).
//!
//! Files are written atomically: to a temporary file in the same folder, flushed to disk
//! (`fsync`), renamed over the old one, and the folder synced, so a crash or a kill at any
//! moment leaves the previous checkpoint or the new one, never a mix.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors, View};
use serde::{Deserialize, Serialize};

use crate::data::{ImageSet, PixelStore};
use crate::loss::LossConfig;
use crate::model::{Arch, ImageShape, Model, Plan};
use crate::ops::{Backend, StepTotals};
use crate::optim::Adam;
use crate::run::{best_path, last_path, write_atomically};
use crate::schedule::RunProgress;
use crate::{Error, Result};

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
        Plan::new(&self.arch, self.input, self.class_names.len())
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

    /// The string metadata written into the file.
    pub fn metadata(&self) -> HashMap<String, String> {
        let mut m = HashMap::new();
        let json = |v: &dyn erased::Json| v.to_json();
        m.insert("format".into(), FORMAT.into());
        m.insert("format_version".into(), FORMAT_VERSION.into());
        m.insert("focalflow_version".into(), env!("CARGO_PKG_VERSION").into());
        m.insert("arch".into(), self.arch.to_string());
        m.insert(
            "input_shape".into(),
            json(&[self.input.height, self.input.width, self.input.channels]),
        );
        m.insert("class_names".into(), json(&self.class_names));
        m.insert("preprocessing".into(), PREPROCESSING.into());
        if let Some(loss) = &self.loss {
            m.insert("loss".into(), json(loss));
        }
        if let Some(e) = self.epoch {
            m.insert("epoch".into(), e.to_string());
        }
        if let Some(v) = self.val_loss {
            m.insert("val_loss".into(), v.to_string());
        }
        if !self.kind.is_empty() {
            m.insert("kind".into(), self.kind.clone());
        }
        if let Some(t) = self.temperature {
            m.insert("temperature".into(), t.to_string());
        }
        if let Some(c) = &self.calibration {
            m.insert("calibration".into(), c.to_string());
        }
        if let Some(o) = &self.optimizer {
            m.insert("optimizer".into(), json(&o.adam));
        }
        if let Some(t) = &self.training {
            m.insert("training".into(), json(t));
        }
        m
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let plan = self.plan()?;
        if self.weights.len() != plan.params.len() {
            return Err(Error::Shape(format!(
                "{} weight tensors for a plan of {}",
                self.weights.len(),
                plan.params.len()
            )));
        }
        let mut entries: Vec<(String, &[usize], &[f32])> = Vec::new();
        for (spec, w) in plan.params.iter().zip(&self.weights) {
            entries.push((spec.name.clone(), &spec.shape, w));
        }
        if let Some(opt) = &self.optimizer {
            for ((spec, m), v) in plan.params.iter().zip(&opt.m).zip(&opt.v) {
                entries.push((format!("{OPTIMIZER_PREFIX}m/{}", spec.name), &spec.shape, m));
                entries.push((format!("{OPTIMIZER_PREFIX}v/{}", spec.name), &spec.shape, v));
            }
        }
        let mut tensors: Vec<(String, F32View)> = Vec::with_capacity(entries.len());
        for (name, shape, data) in entries {
            if data.len() != shape.iter().product::<usize>() {
                return Err(Error::Shape(format!(
                    "{name}: {} values for shape {shape:?}",
                    data.len()
                )));
            }
            tensors.push((name, F32View::new(shape, data)));
        }
        safetensors::serialize(tensors, Some(self.metadata()))
            .map_err(|e| Error::invalid(format!("cannot serialise the checkpoint: {e}")))
    }

    /// Writes the checkpoint to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomically(path, &self.to_bytes()?)
    }

    /// Reads a checkpoint written by [`Checkpoint::save`].
    pub fn load(path: &Path) -> Result<Checkpoint> {
        let bytes = std::fs::read(path).map_err(|e| {
            Error::file(
                path,
                format!("cannot read the checkpoint: {e}; --checkpoint takes a .safetensors file written by focalflow train (e.g. RUN/checkpoints/best.safetensors)"),
            )
        })?;
        Self::from_bytes(&bytes, path)
    }

    /// Parses the bytes of a checkpoint file; `path` names it in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Checkpoint> {
        let bad = |msg: String| Error::file(path, msg);
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| bad(format!("not a safetensors file ({e})")))?;
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| bad(format!("not a safetensors file ({e})")))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let get = |key: &str| {
            meta.get(key).ok_or_else(|| {
                bad(format!(
                    "metadata key `{key}` missing: not a focalflow checkpoint (format {FORMAT} has it)"
                ))
            })
        };
        if get("format")? != FORMAT {
            return Err(bad(format!(
                "metadata `format` is {:?}, expected {FORMAT:?}",
                meta["format"]
            )));
        }
        let version = get("format_version")?;
        if version != FORMAT_VERSION {
            return Err(bad(format!(
                "checkpoint format version {version}; this focalflow reads version {FORMAT_VERSION}"
            )));
        }
        fn parse<T: serde::de::DeserializeOwned>(text: &str, key: &str, path: &Path) -> Result<T> {
            serde_json::from_str(text)
                .map_err(|e| Error::file(path, format!("metadata `{key}` is not valid: {e}")))
        }
        let arch: Arch = get("arch")?
            .parse()
            .map_err(|e| bad(format!("metadata `arch`: {e}")))?;
        let [height, width, channels]: [usize; 3] =
            parse(get("input_shape")?, "input_shape", path)?;
        let class_names: Vec<String> = parse(get("class_names")?, "class_names", path)?;
        let opt_parse = |key: &str| -> Result<Option<f64>> {
            meta.get(key)
                .map(|v| {
                    v.parse::<f64>()
                        .map_err(|_| bad(format!("metadata `{key}` = {v:?} is not a number")))
                })
                .transpose()
        };
        let mut ck = Checkpoint {
            arch,
            input: ImageShape {
                height,
                width,
                channels,
            },
            class_names,
            loss: meta
                .get("loss")
                .map(|v| parse(v, "loss", path))
                .transpose()?,
            weights: Vec::new(),
            epoch: opt_parse("epoch")?.map(|e| e as usize),
            val_loss: opt_parse("val_loss")?,
            kind: meta.get("kind").cloned().unwrap_or_default(),
            temperature: opt_parse("temperature")?,
            calibration: meta
                .get("calibration")
                .map(|v| parse(v, "calibration", path))
                .transpose()?,
            optimizer: None,
            // An older checkpoint's best moves into `progress` as it is read, so no reader
            // sees the old layout.
            training: meta
                .get("training")
                .map(|v| parse::<TrainingState>(v, "training", path))
                .transpose()?
                .map(|mut t| {
                    t.adopt_legacy_best();
                    t
                }),
        };
        if let Some(t) = ck.temperature
            && !(t.is_finite() && t > 0.0)
        {
            return Err(bad(format!(
                "metadata `temperature` = {t}: must be a positive number"
            )));
        }
        let plan = ck
            .plan()
            .map_err(|e| bad(format!("the metadata does not describe a model: {e}")))?;
        let read = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
            let t = st.tensor(name).map_err(|_| {
                bad(format!(
                    "tensor `{name}` missing; arch {} on {height}x{width}x{channels} with {} classes needs it",
                    ck.arch,
                    ck.class_names.len()
                ))
            })?;
            if t.dtype() != Dtype::F32 {
                return Err(bad(format!(
                    "tensor `{name}` is {:?}, expected F32",
                    t.dtype()
                )));
            }
            if t.shape() != shape {
                return Err(bad(format!(
                    "tensor `{name}` has shape {:?}, the model needs {shape:?}",
                    t.shape()
                )));
            }
            Ok(t.data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect())
        };
        ck.weights = plan
            .params
            .iter()
            .map(|spec| read(&spec.name, &spec.shape))
            .collect::<Result<_>>()?;
        if let Some(adam) = meta.get("optimizer") {
            let adam: Adam = parse(adam, "optimizer", path)?;
            let moment = |which: &str| {
                plan.params
                    .iter()
                    .map(|spec| {
                        read(
                            &format!("{OPTIMIZER_PREFIX}{which}/{}", spec.name),
                            &spec.shape,
                        )
                    })
                    .collect::<Result<Vec<_>>>()
            };
            ck.optimizer = Some(OptimizerState {
                adam,
                m: moment("m")?,
                v: moment("v")?,
            });
        }
        let known = plan.params.len() * if ck.optimizer.is_some() { 3 } else { 1 };
        if st.len() != known {
            let extra: Vec<&str> = st
                .names()
                .into_iter()
                .filter(|n| {
                    !plan.params.iter().any(|p| {
                        *n == p.name
                            || ck.optimizer.is_some()
                                && (*n == format!("{OPTIMIZER_PREFIX}m/{}", p.name)
                                    || *n == format!("{OPTIMIZER_PREFIX}v/{}", p.name))
                    })
                })
                .collect();
            return Err(bad(format!(
                "unexpected tensors {extra:?} for arch {}",
                ck.arch
            )));
        }
        Ok(ck)
    }
}

/// Serialises values to JSON strings (a tiny helper so `metadata` reads as a list).
mod erased {
    pub trait Json {
        fn to_json(&self) -> String;
    }
    impl<T: serde::Serialize + ?Sized> Json for T {
        fn to_json(&self) -> String {
            serde_json::to_string(self).expect("metadata serialises to JSON")
        }
    }
}

/// An f32 slice seen as a safetensors tensor (little-endian bytes).
struct F32View<'a> {
    shape: Vec<usize>,
    data: &'a [f32],
}

impl<'a> F32View<'a> {
    fn new(shape: &[usize], data: &'a [f32]) -> Self {
        F32View {
            shape: shape.to_vec(),
            data,
        }
    }
}

impl View for F32View<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        if cfg!(target_endian = "little") {
            std::borrow::Cow::Borrowed(bytemuck::cast_slice(self.data))
        } else {
            std::borrow::Cow::Owned(self.data.iter().flat_map(|v| v.to_le_bytes()).collect())
        }
    }
    fn data_len(&self) -> usize {
        self.data.len() * 4
    }
}

/// A short hash of what a run trains on: the image shape, class names, labels and the
/// train/validation split. `--resume` refuses data that gives another one.
pub fn data_fingerprint<P: PixelStore>(
    data: &ImageSet<P>,
    train: &[usize],
    val: &[usize],
) -> String {
    let mut text = format!(
        "{}x{}x{} {} images; classes {}\nlabels ",
        data.shape.height,
        data.shape.width,
        data.shape.channels,
        data.len(),
        data.class_names.join("/")
    );
    for l in &data.labels {
        text.push_str(&format!("{l},"));
    }
    text.push_str("\ntrain ");
    for i in train {
        text.push_str(&format!("{i},"));
    }
    text.push_str("\nval ");
    for i in val {
        text.push_str(&format!("{i},"));
    }
    format!("{:016x}", crate::data::cache::fnv1a(text.as_bytes()))
}

/// The flag of a `TrainOptions` field, for messages.
fn flag_of(key: &str) -> String {
    match key {
        "learning_rate" => "--lr".into(),
        "loss" => "--loss (and its parameters)".into(),
        other => format!("--{}", other.replace('_', "-")),
    }
}

/// The options that differ between the saved run and now, as `--flag: A in the run, B now`
/// (`epochs` may differ: that is how a run is extended).
pub fn option_differences(saved: &serde_json::Value, now: &serde_json::Value) -> Vec<String> {
    let (Some(a), Some(b)) = (saved.as_object(), now.as_object()) else {
        return vec!["the saved options are not readable".into()];
    };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| k.as_str() != "epochs" && a.get(*k) != b.get(*k))
        .map(|k| {
            let show = |v: Option<&serde_json::Value>| v.map_or("unset".into(), |v| v.to_string());
            format!(
                "{} is {} in the run but {} now",
                flag_of(k),
                show(a.get(k)),
                show(b.get(k))
            )
        })
        .collect()
}

/// Where `train --resume` continues from: `RUN/checkpoints/last.safetensors`.
#[derive(Clone, Debug)]
pub struct ResumePoint {
    pub checkpoint: Checkpoint,
    pub state: TrainingState,
}

/// Loads the resume point of `run` and checks that it fits the options and data of now.
pub fn resume_point(
    run: &Path,
    options: &serde_json::Value,
    fingerprint: &str,
    epochs: usize,
) -> Result<ResumePoint> {
    let path = last_path(run);
    if !path.is_file() {
        return Err(Error::file(
            &path,
            "no checkpoint to resume from; --resume takes the folder of a run written by focalflow train (it holds checkpoints/last.safetensors)",
        ));
    }
    let checkpoint = Checkpoint::load(&path)?;
    let state = checkpoint.training.clone().ok_or_else(|| {
        Error::file(&path, "no training state (metadata `training`): written by something other than focalflow train, it cannot be resumed")
    })?;
    if checkpoint.optimizer.is_none() {
        return Err(Error::file(
            &path,
            "no optimizer state (optimizer/m/*, optimizer/v/*): cannot be resumed",
        ));
    }
    let diffs = option_differences(&state.options, options);
    if !diffs.is_empty() {
        return Err(Error::invalid(format!(
            "--resume {}: {}; repeat the run's flags (only --epochs may change)",
            run.display(),
            diffs.join("; ")
        )));
    }
    if state.data_fingerprint != fingerprint {
        return Err(Error::invalid(format!(
            "--resume {}: the data or its split differ from the run's (other images or classes, --image-size, --synthetic-images, --val-fraction or --class-fraction); give the run's data flags",
            run.display()
        )));
    }
    if state.epoch >= epochs {
        return Err(Error::invalid(format!(
            "--resume {}: the run has completed {} of --epochs {epochs}; give --epochs above {} to train longer",
            run.display(),
            state.epoch,
            state.epoch
        )));
    }
    Ok(ResumePoint { checkpoint, state })
}

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

/// The metadata of a checkpoint file without reading its tensors (for `compare`).
pub fn read_metadata(path: &Path) -> Result<HashMap<String, String>> {
    use std::io::Read;
    let bad = |msg: String| Error::file(path, msg);
    let mut f = std::fs::File::open(path).map_err(|e| bad(format!("cannot open: {e}")))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|e| bad(format!("not a safetensors file ({e})")))?;
    let n = u64::from_le_bytes(len);
    if n > 100 << 20 {
        return Err(bad(format!("not a safetensors file (header of {n} bytes)")));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header)
        .map_err(|e| bad(format!("not a safetensors file ({e})")))?;
    let v: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| bad(format!("not a safetensors file ({e})")))?;
    Ok(v.get("__metadata__")
        .and_then(|m| serde_json::from_value(m.clone()).ok())
        .unwrap_or_default())
}

/// `--checkpoint`: a `.safetensors` file, or a run folder (its best checkpoint, else last).
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if path.is_dir() {
        for candidate in [
            best_path(path),
            last_path(path),
            path.join("best.safetensors"),
            path.join("last.safetensors"),
        ] {
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
        return Err(Error::file(
            path,
            "a folder without checkpoints; --checkpoint takes a .safetensors file or a run folder holding checkpoints/best.safetensors",
        ));
    }
    Ok(path.to_path_buf())
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
