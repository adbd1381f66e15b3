//! The flags of the commands that run a trained model (`eval`, `predict`, `calibrate`):
//! `--checkpoint` and a labelled `--data` folder, and what the commands share: opening the
//! checkpoint, the line that describes it, loading the folder, the logits on `--device`.

use std::path::{Path, PathBuf};

use crate::checkpoint::{self, Checkpoint};
use crate::cli::DeviceChoice;
use crate::cli::device::{self, on_device};
use crate::data::label_list::LabelList;
use crate::data::load::{load, load_source};
use crate::data::source::Source;
use crate::data::{ImageSet, Pixels};
use crate::inference;
use crate::{Error, Result};

use super::data::PreprocessFlags;

/// A checkpoint: a `.safetensors` file, or a run folder.
#[derive(clap::Args, Debug, Clone)]
pub struct CheckpointFlag {
    /// A checkpoint written by train (RUN/checkpoints/best.safetensors or last.safetensors),
    /// or a run folder (its best checkpoint, else its last).
    #[arg(long, value_name = "FILE|RUN")]
    pub checkpoint: PathBuf,
}

/// A labelled folder of images, loaded as `train --data` loads it.
#[derive(clap::Args, Debug, Clone)]
pub struct LabelledData {
    /// Images: a folder with one sub-folder per class, named as the checkpoint's classes
    /// (a class may be missing; an unknown one is an error).
    #[arg(long = "data", value_name = "DIR")]
    pub dir: PathBuf,
    /// Multi-label data: a CSV of IMAGE,LABEL,.. lines, the images under --data, the labels
    /// among the checkpoint's classes (an unknown one is an error naming its line).
    #[arg(long = "labels", value_name = "FILE")]
    pub labels: Option<PathBuf>,
    #[command(flatten)]
    pub preprocessing: PreprocessFlags,
}

impl CheckpointFlag {
    /// The checkpoint behind `--checkpoint` and its path; its model must read image files.
    pub fn open(&self) -> Result<(PathBuf, Checkpoint)> {
        let path = checkpoint::resolve(&self.checkpoint)?;
        let ck = Checkpoint::load(&path)?;
        inference::check_reads_images(&path, &ck)?;
        Ok((path, ck))
    }
}

impl LabelledData {
    /// Loads `--data` at the checkpoint's size (the loader's line on stderr) with its labels
    /// in the checkpoint's class order.
    pub fn load(&self, ck: &Checkpoint, progress: bool) -> Result<ImageSet<Pixels>> {
        let opts = self.preprocessing.load_options(ck.input.height, progress)?;
        if let Some(csv) = &self.labels {
            let source = self.multi_label_source(ck, csv)?;
            let loaded = load_source(&self.dir, source, &opts)?;
            eprintln!("{}", loaded.summary());
            return Ok(loaded.set);
        }
        let loaded = load(&self.dir, &opts)?;
        eprintln!("{}", loaded.summary());
        inference::in_class_order(loaded.set, ck, &self.dir)
    }

    /// The images of `--labels` with the checkpoint's classes; its model must have sigmoid
    /// outputs (a softmax model picks one class per image).
    fn multi_label_source(&self, ck: &Checkpoint, csv: &Path) -> Result<Source> {
        check_multi_label_model(ck, csv)?;
        let list = LabelList::read(csv, &self.dir)?;
        list.source(&self.dir, ck.class_names.clone())
    }
}

/// `--labels` (multi-label data) needs a model with sigmoid outputs.
pub fn check_multi_label_model(ck: &Checkpoint, csv: &Path) -> Result<()> {
    if ck.output() == crate::loss::Output::Sigmoid {
        return Ok(());
    }
    Err(Error::file(
        csv,
        "--labels gives each image several classes, but this checkpoint's model has a softmax head (one class per image); use a model trained with --loss sigmoid-focal",
    ))
}

/// The line that says which checkpoint runs (stderr of eval, predict and calibrate).
pub fn describe(path: &Path, ck: &Checkpoint, temperature: f64) -> String {
    format!(
        "checkpoint {} ({}{}arch {}, {}x{}, classes {}; {})",
        path.display(),
        if ck.kind.is_empty() {
            String::new()
        } else {
            format!("{}, ", ck.kind)
        },
        ck.epoch.map_or(String::new(), |e| format!("epoch {e}, ")),
        ck.arch,
        ck.input.height,
        ck.input.width,
        ck.class_names.join(", "),
        if temperature == 1.0 {
            "no temperature".to_string()
        } else {
            format!("temperature {temperature:.4}")
        }
    )
}

/// What `eval` and `calibrate` check before any image is read: the batch size, the device
/// (resolved, said on stderr) and its precision, and that `--out` does not lie inside
/// `--data`.
pub fn check_before_data(
    batch_size: usize,
    flag: &device::DeviceFlag,
    out: Option<&std::path::Path>,
    data: &std::path::Path,
) -> Result<DeviceChoice> {
    if batch_size == 0 {
        return Err(Error::invalid("--batch-size must be at least 1"));
    }
    if let Some(out) = out {
        crate::run::check_outside_data(out, data)?;
    }
    let device = device::resolve(flag.device)?;
    device::check_precision(device, flag.precision.precision)?;
    Ok(device)
}

/// Logits of every image of `set` on `device` (checked by [`check_before_data`]).
pub fn logits_on_device(
    ck: &Checkpoint,
    set: &ImageSet<Pixels>,
    batch_size: usize,
    device: DeviceChoice,
    precision: crate::precision::Precision,
) -> Result<Vec<f32>> {
    eprintln!("device: {}; precision: {precision}", device::name(device));
    on_device!(device, precision, |backend| {
        inference::logits_of_set(backend, ck, set, batch_size)
    })
}
