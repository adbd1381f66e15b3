//! A trained checkpoint on images: the logits of a labelled folder (`eval`, `calibrate`)
//! and the predictions for image files (`predict`), through the same data path as
//! training (the set on the device for CUDA).

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::{Value, json};

use crate::checkpoint::Checkpoint;
use crate::data::load::decode_resized;
use crate::data::{ImageSet, PixelStore, Pixels};
use crate::feed::{DeviceCache, Feeds};
use crate::metrics::{argmax, prediction_rows};
use crate::model::{ImageShape, Model};
use crate::{Error, Result};

/// Fails unless `ck`'s model can read image files (square RGB input); `path` is the
/// checkpoint's file.
pub fn check_reads_images(path: &Path, ck: &Checkpoint) -> Result<()> {
    if ck.input.height != ck.input.width || ck.input.channels != 3 {
        return Err(Error::file(
            path,
            format!(
                "input shape {}x{}x{}: only square RGB models can read image files",
                ck.input.height, ck.input.width, ck.input.channels
            ),
        ));
    }
    Ok(())
}

/// `set`, a labelled folder `dir` loaded at the checkpoint's size, with its labels in the
/// checkpoint's class order (a class may be missing; an unknown one is an error, and so is
/// a set without images).
pub fn in_class_order(
    set: ImageSet<Pixels>,
    ck: &Checkpoint,
    dir: &Path,
) -> Result<ImageSet<Pixels>> {
    let mut map = Vec::with_capacity(set.classes());
    for name in &set.class_names {
        match ck.class_names.iter().position(|c| c == name) {
            Some(i) => map.push(i as u32),
            None => {
                return Err(Error::file(
                    dir,
                    format!(
                        "class folder {name:?} is not a class of the checkpoint ({}); --data needs sub-folders named after those",
                        ck.class_names.join(", ")
                    ),
                ));
            }
        }
    }
    if set.is_empty() {
        return Err(Error::file(dir, "no usable images"));
    }
    Ok(ImageSet {
        shape: set.shape,
        class_names: ck.class_names.clone(),
        labels: set.labels.iter().map(|&l| map[l as usize]).collect(),
        multi: None,
        pixels: set.pixels,
    })
}

/// The labels of `set` as class indices.
pub fn labels_of(set: &ImageSet<Pixels>) -> Vec<usize> {
    set.labels.iter().map(|&l| l as usize).collect()
}

/// Logits of `ck`'s model for every image of `set` (`[set.len(), classes]`), on `backend`.
pub fn logits_of_set<B: Feeds>(
    backend: &B,
    ck: &Checkpoint,
    set: &ImageSet<Pixels>,
    batch_size: usize,
) -> Result<Vec<f32>> {
    let mut model = ck.model(backend)?;
    logits_of_images(backend, &mut model, set, batch_size)
}

/// Logits of every image of `set`, `batch_size` at a time through the backend's data path
/// (the set on the device for CUDA).
fn logits_of_images<B: Feeds>(
    backend: &B,
    model: &mut Model<B>,
    set: &ImageSet<impl PixelStore>,
    batch_size: usize,
) -> Result<Vec<f32>> {
    let all: Vec<usize> = (0..set.len()).collect();
    let batch = batch_size.min(set.len()).max(1);
    let free = backend
        .free_memory()?
        .or_else(crate::system::available_memory);
    crate::train::check_inference_memory(&model.plan, batch, free, backend.name())?;
    let mut feeder = backend.feeder(set, batch, DeviceCache::Auto)?;
    Ok(crate::train::logits_of(backend, model, None, feeder.as_mut(), &all)?.1)
}

/// Every file behind `inputs` (folders recursively, sorted; hidden entries left out), with
/// why it cannot be read where that is known already (a missing file, a folder not listed).
pub fn image_files(inputs: &[PathBuf]) -> Vec<(PathBuf, Option<String>)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, Option<String>)>) {
        let mut entries: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(rd) => rd.flatten().map(|e| e.path()).collect(),
            Err(e) => {
                out.push((
                    dir.to_path_buf(),
                    Some(format!("cannot list the folder: {e}")),
                ));
                return;
            }
        };
        entries.sort();
        for p in entries {
            if p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            {
                continue;
            }
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push((p, None));
            }
        }
    }
    let mut out = Vec::new();
    for p in inputs {
        if p.is_dir() {
            walk(p, &mut out);
        } else if p.exists() {
            out.push((p.clone(), None));
        } else {
            out.push((p.clone(), Some("no such file".into())));
        }
    }
    out
}

/// One prediction.
#[derive(serde::Serialize)]
pub struct Prediction {
    pub file: String,
    pub class: String,
    pub confidence: f64,
    /// Class name to probability, in the checkpoint's class order.
    pub probabilities: serde_json::Map<String, Value>,
    /// A model with sigmoid outputs: the classes at or above the threshold (0.5).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    /// `predict --labels`: the image's labels in the list.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub true_labels: Option<Vec<String>>,
}

/// Files decoded per round of `predict` (then sent to the device as one u8 set).
const PREDICT_CHUNK: usize = 1024;

/// Predictions of `ck`'s model, its logits divided by `temperature`, for `files` (from
/// [`image_files`]; decoded and resized in parallel, a chunk at a time, then run
/// `batch_size` at a time through the same data path as training and `eval`) on `backend`.
/// A file that cannot be used is told to `skipped` (the file, why) as it is met.
pub fn predict_files<B: Feeds>(
    backend: &B,
    ck: &Checkpoint,
    files: &[(PathBuf, Option<String>)],
    batch_size: usize,
    temperature: f64,
    mut skipped: impl FnMut(&Path, &str),
) -> Result<Vec<Prediction>> {
    let shape: ImageShape = ck.input;
    let mut model = ck.model(backend)?;
    let classes = ck.class_names.len();
    let mut predictions = Vec::new();
    for chunk in files.chunks(PREDICT_CHUNK.max(batch_size)) {
        let decoded: Vec<std::result::Result<Vec<u8>, String>> = chunk
            .par_iter()
            .map(|(file, problem)| {
                if let Some(p) = problem {
                    return Err(p.clone());
                }
                let bytes = std::fs::read(file).map_err(|e| format!("cannot read: {e}"))?;
                let mut slot = vec![0u8; shape.len()];
                decode_resized(&bytes, shape, &mut slot).map_err(|s| s.describe())?;
                Ok(slot)
            })
            .collect();
        let mut pixels = Vec::new();
        let mut names = Vec::new();
        for ((file, _), d) in chunk.iter().zip(decoded) {
            match d {
                Ok(image) => {
                    pixels.extend_from_slice(&image);
                    names.push(file.display().to_string());
                }
                Err(why) => skipped(file, &why),
            }
        }
        if names.is_empty() {
            continue;
        }
        let set = ImageSet {
            shape,
            class_names: ck.class_names.clone(),
            pixels,
            labels: vec![0; names.len()],
            multi: None,
        };
        let logits = logits_of_images(backend, &mut model, &set, batch_size)?;
        let probs = prediction_rows(&logits, classes, temperature, ck.output());
        for (file, row) in names.into_iter().zip(probs.chunks_exact(classes)) {
            let best = argmax(row);
            let labels = (ck.output() == crate::loss::Output::Sigmoid).then(|| {
                ck.class_names
                    .iter()
                    .zip(row)
                    .filter(|&(_, &p)| p >= crate::metrics::multilabel::THRESHOLD)
                    .map(|(c, _)| c.clone())
                    .collect()
            });
            predictions.push(Prediction {
                file,
                class: ck.class_names[best].clone(),
                confidence: row[best],
                probabilities: ck
                    .class_names
                    .iter()
                    .zip(row)
                    .map(|(c, &p)| (c.clone(), json!(p)))
                    .collect(),
                labels,
                true_labels: None,
            });
        }
    }
    Ok(predictions)
}
