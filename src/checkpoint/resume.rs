//! `train --resume`: the checks that a run continues on the same data and options, and the
//! point it continues from.

use std::path::Path;

use super::{Checkpoint, TrainingState};
use crate::data::{ImageSet, PixelStore};
use crate::run::last_path;
use crate::{Error, Result};

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
    // A multi-label set: every image's labels (the first alone would miss an edited list).
    if let Some(sets) = &data.multi {
        text.push_str("\nmulti ");
        for set in sets {
            let ids: Vec<String> = set.iter().map(u32::to_string).collect();
            text.push_str(&format!("{};", ids.join(",")));
        }
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

/// Refuses `--resume RUN` when RUN has no checkpoint to resume from (checked before any
/// data is read; the checkpoint itself is read and checked by [`resume_point`]).
pub fn check_resumable(run: &Path) -> Result<()> {
    let path = last_path(run);
    if !path.is_file() {
        return Err(Error::file(
            &path,
            "--resume: no checkpoint to resume from; --resume takes the folder of a run written by focalflow train (it holds checkpoints/last.safetensors)",
        ));
    }
    Ok(())
}

/// Loads the resume point of `run` and checks that it fits the options and data of now.
pub fn resume_point(
    run: &Path,
    options: &serde_json::Value,
    fingerprint: &str,
    epochs: usize,
) -> Result<ResumePoint> {
    check_resumable(run)?;
    let path = last_path(run);
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
    check_options_and_epochs(run, &state, options, epochs, &[])?;
    if state.data_fingerprint != fingerprint {
        return Err(Error::invalid(format!(
            "--resume {}: the data or its split differ from the run's (other images or classes, --image-size, --synthetic-images, --val-fraction or --class-fraction); give the run's data flags",
            run.display()
        )));
    }
    Ok(ResumePoint { checkpoint, state })
}

/// [`resume_point`]'s checks that need no image (so before any data is read): the run's
/// checkpoint loads (its checksums hold), its options are `options` (but for
/// the keys in `unknown_yet`, such as a loss whose `--alpha auto` comes from the split)
/// and it has epochs left.
pub fn check_resume_before_data(
    run: &Path,
    options: &serde_json::Value,
    epochs: usize,
    unknown_yet: &[&str],
) -> Result<()> {
    check_resumable(run)?;
    let path = last_path(run);
    let state = Checkpoint::load(&path)?.training.ok_or_else(|| {
        Error::file(&path, "no training state (metadata `training`): written by something other than focalflow train, it cannot be resumed")
    })?;
    check_options_and_epochs(run, &state, options, epochs, unknown_yet)
}

fn check_options_and_epochs(
    run: &Path,
    state: &TrainingState,
    options: &serde_json::Value,
    epochs: usize,
    unknown_yet: &[&str],
) -> Result<()> {
    let mut diffs = option_differences(&state.options, options);
    diffs.retain(|d| !unknown_yet.iter().any(|k| d.starts_with(&flag_of(k))));
    if !diffs.is_empty() {
        return Err(Error::invalid(format!(
            "--resume {}: {}; repeat the run's flags (only --epochs may change)",
            run.display(),
            diffs.join("; ")
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
    Ok(())
}
