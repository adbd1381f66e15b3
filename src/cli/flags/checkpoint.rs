//! The flags of the commands that run a trained model (`eval`, `predict`, `calibrate`):
//! `--checkpoint` and a labelled `--data` folder, and what they share: opening the
//! checkpoint, loading the folder in its class order, and the logits on `--device`.

use std::path::{Path, PathBuf};

use crate::checkpoint::{self, Checkpoint};
use crate::cli::DeviceChoice;
use crate::cli::device::{self, on_device};
use crate::data::load::load;
use crate::data::{ImageSet, PixelStore, Pixels};
use crate::feed::{DeviceCache, Feeds};
use crate::model::Model;
use crate::train;
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
    #[command(flatten)]
    pub preprocessing: PreprocessFlags,
}

/// The checkpoint behind `--checkpoint` and its path.
pub fn open_checkpoint(flag: &CheckpointFlag) -> Result<(PathBuf, Checkpoint)> {
    let path = checkpoint::resolve(&flag.checkpoint)?;
    let ck = Checkpoint::load(&path)?;
    if ck.input.height != ck.input.width || ck.input.channels != 3 {
        return Err(Error::file(
            &path,
            format!(
                "input shape {}x{}x{}: only square RGB models can read image files",
                ck.input.height, ck.input.width, ck.input.channels
            ),
        ));
    }
    Ok((path, ck))
}

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

/// Loads `--data` at the checkpoint's size with its labels in the checkpoint's class order.
pub fn load_labelled(
    flags: &LabelledData,
    ck: &Checkpoint,
    progress: bool,
) -> Result<ImageSet<Pixels>> {
    let opts = flags
        .preprocessing
        .load_options(ck.input.height, progress)?;
    let loaded = load(&flags.dir, &opts)?;
    eprintln!("{}", loaded.summary());
    let set = loaded.set;
    let mut map = Vec::with_capacity(set.classes());
    for name in &set.class_names {
        match ck.class_names.iter().position(|c| c == name) {
            Some(i) => map.push(i as u32),
            None => {
                return Err(Error::file(
                    &flags.dir,
                    format!(
                        "class folder {name:?} is not a class of the checkpoint ({}); --data needs sub-folders named after those",
                        ck.class_names.join(", ")
                    ),
                ));
            }
        }
    }
    if set.is_empty() {
        return Err(Error::file(&flags.dir, "no usable images"));
    }
    Ok(ImageSet {
        shape: set.shape,
        class_names: ck.class_names.clone(),
        labels: set.labels.iter().map(|&l| map[l as usize]).collect(),
        pixels: set.pixels,
    })
}

/// Logits of every image of `set`, computed on `device`.
pub fn logits_of_set(
    ck: &Checkpoint,
    set: &ImageSet<Pixels>,
    batch_size: usize,
    device: DeviceChoice,
) -> Result<Vec<f32>> {
    if batch_size == 0 {
        return Err(Error::invalid("--batch-size must be at least 1"));
    }
    let device = device::resolve(device)?;
    eprintln!("device: {}", device::name(device));
    on_device!(device, |backend| {
        let mut model = ck.model(backend)?;
        logits_of_images(backend, &mut model, set, batch_size)
    })
}

/// Logits of every image of `set`, `batch_size` at a time through the backend's data path
/// (the set on the device for CUDA).
pub fn logits_of_images<B: Feeds>(
    backend: &B,
    model: &mut Model<B>,
    set: &ImageSet<impl PixelStore>,
    batch_size: usize,
) -> Result<Vec<f32>> {
    let all: Vec<usize> = (0..set.len()).collect();
    let batch = batch_size.min(set.len()).max(1);
    let mut feeder = backend.feeder(set, batch, DeviceCache::Auto)?;
    Ok(train::logits_of(backend, model, None, feeder.as_mut(), &all)?.1)
}

pub fn labels_of(set: &ImageSet<Pixels>) -> Vec<usize> {
    set.labels.iter().map(|&l| l as usize).collect()
}
