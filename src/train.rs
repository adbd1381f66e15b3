//! The training loop: epochs of shuffled batches, validation, progress, and the run folder
//! (`config.json`, `metrics.jsonl`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use crate::backend::Backend;
use crate::data::{Augment, ClassFraction, ImageSet, PixelStore};
use crate::loss::LossConfig;
use crate::model::{Arch, Model, Plan};
use crate::optim::Adam;
use crate::rng::Rng;
use crate::{Element, Error, Result};

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
    /// Show progress bars (on a terminal).
    #[serde(skip)]
    pub progress: bool,
    /// `--resume`: continue the run in the output folder (see [`train_with`]).
    #[serde(skip)]
    pub resume: bool,
}

fn serialize_display<S: serde::Serializer, T: std::fmt::Display>(
    v: &T,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub val_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
    pub images_per_second: f64,
    pub seconds: f64,
    /// Validation metrics beyond loss and accuracy (`val_balanced_accuracy`, `val_ece`, ...;
    /// absent without a validation split).
    #[serde(flatten, default)]
    pub validation: Option<crate::metrics::EpochValidation>,
}

/// Index of the largest value of each row of `[rows, classes]`.
pub fn argmax_rows<E: Element>(values: &[E], classes: usize) -> Vec<usize> {
    values
        .chunks_exact(classes)
        .map(|row| (0..classes).fold(0, |best, c| if row[c] > row[best] { c } else { best }))
        .collect()
}

/// A batch on the host, assembled ahead of time by the loader thread.
struct HostBatch {
    indices: Vec<usize>,
    x: Vec<f32>,
    y: Vec<f32>,
}

/// Assembles the batches of `order` on a separate thread (two ahead) and hands each to
/// `step`, so the training step does not wait for the u8 -> f32 conversion. With
/// `flip_seed`, images are flipped at random (`--augment flip`), seeded per batch.
fn for_each_batch<P: PixelStore>(
    data: &ImageSet<P>,
    order: &[usize],
    batch_size: usize,
    flip_seed: Option<u64>,
    mut step: impl FnMut(usize, &HostBatch) -> Result<()>,
) -> Result<()> {
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::sync_channel::<HostBatch>(2);
        let (recycle_tx, recycle_rx) = mpsc::channel::<HostBatch>();
        scope.spawn(move || {
            for (n, chunk) in order.chunks(batch_size).enumerate() {
                let mut b = recycle_rx.try_recv().unwrap_or(HostBatch {
                    indices: Vec::new(),
                    x: Vec::new(),
                    y: Vec::new(),
                });
                b.indices.clear();
                b.indices.extend_from_slice(chunk);
                let flip = flip_seed.map(|s| Rng::derive(s, n as u64).next_u64());
                data.fill_batch_augmented(chunk, flip, &mut b.x, &mut b.y);
                if tx.send(b).is_err() {
                    return; // the consumer stopped early (an error)
                }
            }
        });
        for (i, batch) in rx.iter().enumerate() {
            step(i, &batch)?;
            let _ = recycle_tx.send(batch);
        }
        Ok(())
    })
}

/// Loss and accuracy of `model` over `indices` (no weight update).
pub fn evaluate<B: Backend<E = f32>, P: PixelStore>(
    backend: &B,
    model: &mut Model<B>,
    loss: &LossConfig,
    data: &ImageSet<P>,
    indices: &[usize],
    batch_size: usize,
) -> Result<(f64, f64)> {
    let classes = data.classes();
    let mut x = backend.zeros(batch_size * data.shape.len())?;
    let mut y = backend.zeros(batch_size * classes)?;
    let (mut loss_sum, mut correct) = (0.0, 0usize);
    for_each_batch(data, indices, batch_size, None, |_, b| {
        let n = b.indices.len();
        backend.write(&mut x, &b.x)?;
        backend.write(&mut y, &b.y)?;
        model.forward(backend, &x, n)?;
        loss_sum += model.loss_of_forward(backend, loss, &y, n)?.f64() * n as f64;
        let predicted = argmax_rows(&model.probabilities(backend, n)?, classes);
        correct += predicted
            .iter()
            .zip(&b.indices)
            .filter(|(p, i)| **p == data.labels[**i] as usize)
            .count();
        Ok(())
    })?;
    let n = indices.len().max(1) as f64;
    Ok((loss_sum / n, correct as f64 / n))
}

/// Logits of `model` over `indices` (`[indices.len(), classes]`) and, with `loss`, the mean
/// loss (no weight update).
pub fn logits_of<B: Backend<E = f32>, P: PixelStore>(
    backend: &B,
    model: &mut Model<B>,
    loss: Option<&LossConfig>,
    data: &ImageSet<P>,
    indices: &[usize],
    batch_size: usize,
) -> Result<(Option<f64>, Vec<f32>)> {
    let classes = data.classes();
    let batch_size = batch_size.clamp(1, indices.len().max(1));
    let mut x = backend.zeros(batch_size * data.shape.len())?;
    let mut y = backend.zeros(batch_size * classes)?;
    let mut loss_sum = 0.0;
    let mut logits = Vec::with_capacity(indices.len() * classes);
    for_each_batch(data, indices, batch_size, None, |_, b| {
        let n = b.indices.len();
        backend.write(&mut x, &b.x)?;
        model.forward(backend, &x, n)?;
        if let Some(loss) = loss {
            backend.write(&mut y, &b.y)?;
            loss_sum += model.loss_of_forward(backend, loss, &y, n)?.f64() * n as f64;
        }
        logits.extend(model.logits(backend, n)?);
        Ok(())
    })?;
    let mean = loss.map(|_| loss_sum / indices.len().max(1) as f64);
    Ok((mean, logits))
}

/// Trains a new model on `data` with `opts` (or continues the run in `out` with
/// `opts.resume`), writing `config.json` and `metrics.jsonl` into `out` and a line per epoch
/// through `log`. Returns the model and the metrics.
pub fn train<B: Backend<E = f32>, P: PixelStore>(
    backend: &B,
    data: &ImageSet<P>,
    opts: &TrainOptions,
    out: &Path,
    log: impl FnMut(&str),
) -> Result<(Model<B>, Vec<EpochMetrics>)> {
    train_with(backend, data, opts, out, opts.resume, log)
}

/// [`train`], or with `resume` (`train --resume RUN`) the continuation of the run in `out`
/// from its `checkpoints/last.safetensors`: weights, Adam state, data order and random
/// streams as they were, so the result equals an uninterrupted run with the same seed.
/// Also writes `checkpoints/last` and `best` each epoch, and plots at the end.
pub fn train_with<B: Backend<E = f32>, P: PixelStore>(
    backend: &B,
    data: &ImageSet<P>,
    opts: &TrainOptions,
    out: &Path,
    resume: bool,
    mut log: impl FnMut(&str),
) -> Result<(Model<B>, Vec<EpochMetrics>)> {
    if opts.batch_size == 0 || opts.epochs == 0 || opts.steps_per_epoch == Some(0) {
        return Err(Error::invalid(format!(
            "--batch-size {}, --epochs {}, --steps-per-epoch {:?}: each must be at least 1",
            opts.batch_size, opts.epochs, opts.steps_per_epoch
        )));
    }
    if !(opts.learning_rate.is_finite() && opts.learning_rate > 0.0) {
        return Err(Error::invalid(format!(
            "--lr {}: the learning rate must be a positive number (Keras' default is 0.001)",
            opts.learning_rate
        )));
    }
    opts.loss.validate(data.classes())?;
    let plan = Plan::new(&opts.arch, data.shape, data.classes())?;
    let (train_idx, val_idx) =
        data.training_split(opts.val_fraction, opts.seed, &opts.class_fraction)?;
    if train_idx.is_empty() {
        return Err(Error::invalid(format!(
            "no training images left after --val-fraction {}",
            opts.val_fraction
        )));
    }
    let options_json = serde_json::to_value(opts).expect("JSON");
    let fingerprint = crate::checkpoint::data_fingerprint(data, &train_idx, &val_idx);
    let resumed = if resume {
        Some(crate::checkpoint::resume_point(
            out,
            &options_json,
            &fingerprint,
            opts.epochs,
        )?)
    } else {
        None
    };
    std::fs::create_dir_all(out)
        .map_err(|e| Error::file(out, format!("cannot create the run folder: {e}")))?;
    let mut config = serde_json::json!({
        "focalflow_version": env!("CARGO_PKG_VERSION"),
        "device": backend.name(),
        "options": opts,
        "image_shape": data.shape,
        "class_names": data.class_names,
        "train_class_counts": data.class_counts(&train_idx),
        "val_class_counts": data.class_counts(&val_idx),
        "parameters": plan.parameter_count(),
    });
    if let Some(r) = &resumed {
        config["resumed_after_epoch"] = r.state.epoch.into();
    }
    write_file_atomically(
        &out.join("config.json"),
        serde_json::to_string_pretty(&config)
            .expect("JSON")
            .as_bytes(),
    )?;
    log(&format!(
        "model {} on {}x{}x{}: {} parameters; {} train / {} val images (per class: {:?} / {:?}); loss {}",
        opts.arch,
        data.shape.height,
        data.shape.width,
        data.shape.channels,
        plan.parameter_count(),
        train_idx.len(),
        val_idx.len(),
        data.class_counts(&train_idx),
        data.class_counts(&val_idx),
        opts.loss.describe(),
    ));

    let mut model = match &resumed {
        Some(r) => {
            log(&format!(
                "resuming {} after epoch {} (Adam step {})",
                out.display(),
                r.state.epoch,
                r.checkpoint
                    .optimizer
                    .as_ref()
                    .map_or(0, |o| o.adam.iterations)
            ));
            r.checkpoint.model(backend)?
        }
        None => {
            let mut model = Model::new(backend, plan, opts.seed)?;
            model.optimizer = Adam::with_learning_rate(opts.learning_rate);
            model
        }
    };
    let classes = data.classes();
    let mut x = backend.zeros(opts.batch_size * data.shape.len())?;
    let mut y = backend.zeros(opts.batch_size * classes)?;
    let metrics_path = out.join("metrics.jsonl");
    let (mut history, mut metrics_file) = match &resumed {
        Some(r) => crate::checkpoint::reopen_metrics(&metrics_path, r.state.epoch)?,
        None => (
            Vec::new(),
            std::fs::File::create(&metrics_path).map_err(|e| Error::file(&metrics_path, e))?,
        ),
    };
    let mut checkpoints = crate::checkpoint::EpochCheckpoints {
        run: out.to_path_buf(),
        class_names: data.class_names.clone(),
        loss: opts.loss.clone(),
        options: options_json,
        fingerprint,
        best_val_loss: resumed.as_ref().and_then(|r| r.state.best_val_loss),
        best_epoch: resumed.as_ref().and_then(|r| r.state.best_epoch),
    };
    let first_epoch = resumed.as_ref().map_or(1, |r| r.state.epoch + 1);
    drop(resumed);
    let mut shuffle_rng = Rng::derive(opts.seed, 3);
    for _ in 1..first_epoch {
        // The shuffles of the epochs done: the stream is where the run left it.
        shuffle_rng.shuffle(&mut train_idx.clone());
    }
    let mut final_metrics = None;
    for epoch in first_epoch..=opts.epochs {
        let mut order = train_idx.clone();
        shuffle_rng.shuffle(&mut order);
        let steps = order
            .len()
            .div_ceil(opts.batch_size)
            .min(opts.steps_per_epoch.unwrap_or(usize::MAX));
        order.truncate((steps * opts.batch_size).min(order.len()));
        let bar = progress_bar(opts.progress, steps as u64, epoch, opts.epochs);
        let start = Instant::now();
        let (mut loss_sum, mut correct, mut seen) = (0.0, 0usize, 0usize);
        let flip_seed = (opts.augment == Augment::Flip)
            .then(|| Rng::derive(opts.seed, 0xf11b_0000 + epoch as u64).next_u64());
        for_each_batch(data, &order, opts.batch_size, flip_seed, |step, b| {
            let n = b.indices.len();
            backend.write(&mut x, &b.x)?;
            backend.write(&mut y, &b.y)?;
            let out = model.train_step(backend, &opts.loss, &x, &y, n).map_err(|e| match e {
                Error::NonFinite(what) => Error::NonFinite(format!(
                    "training stopped at epoch {epoch}, step {}: {what}; try a lower --lr or check the data and loss parameters",
                    step + 1
                )),
                other => other,
            })?;
            loss_sum += out.loss.f64() * n as f64;
            seen += n;
            let predicted = argmax_rows(&out.probs, classes);
            correct += predicted
                .iter()
                .zip(&b.indices)
                .filter(|(p, i)| **p == data.labels[**i] as usize)
                .count();
            bar.inc(1);
            bar.set_message(format!(
                "loss {:.4}  {:.1} img/s",
                loss_sum / seen as f64,
                seen as f64 / start.elapsed().as_secs_f64()
            ));
            Ok(())
        })?;
        bar.finish_and_clear();
        let seconds = start.elapsed().as_secs_f64();
        let (val_loss, val_accuracy, validation) = if val_idx.is_empty() {
            (None, None, None)
        } else {
            let (l, logits) = logits_of(
                backend,
                &mut model,
                Some(&opts.loss),
                data,
                &val_idx,
                opts.batch_size,
            )?;
            let labels: Vec<usize> = val_idx.iter().map(|&i| data.labels[i] as usize).collect();
            let vm =
                crate::metrics::Metrics::from_logits(&logits, &labels, &data.class_names, 1.0)?;
            let summary = crate::metrics::EpochValidation::from(&vm);
            let accuracy = vm.accuracy;
            final_metrics = Some(vm);
            (l, Some(accuracy), Some(summary))
        };
        let m = EpochMetrics {
            epoch,
            train_loss: loss_sum / seen as f64,
            train_accuracy: correct as f64 / seen as f64,
            val_loss,
            val_accuracy,
            images_per_second: seen as f64 / seconds,
            seconds,
            validation,
        };
        writeln!(metrics_file, "{}", serde_json::to_string(&m).expect("JSON"))
            .and_then(|_| metrics_file.flush())
            .map_err(|e| Error::file(&metrics_path, e))?;
        let best = checkpoints.save(backend, &model, epoch, m.val_loss)?;
        let val = match (m.val_loss, m.val_accuracy, &m.validation) {
            (Some(l), Some(a), Some(v)) => format!(
                "val loss {l:.4} acc {:.1}% bal {:.1}% ECE {:.3}{}",
                a * 100.0,
                v.val_balanced_accuracy * 100.0,
                v.val_ece,
                if best { " (best)" } else { "" }
            ),
            (Some(l), Some(a), None) => format!("val loss {l:.4} acc {:.1}%", a * 100.0),
            _ => "no validation split".to_string(),
        };
        log(&format!(
            "epoch {epoch}/{}: train loss {:.4} acc {:.1}% | {val} | {:.1} img/s, {:.1} s",
            opts.epochs,
            m.train_loss,
            m.train_accuracy * 100.0,
            m.images_per_second,
            m.seconds
        ));
        history.push(m);
    }
    log(&format!("\n{}", epoch_table(&history)));
    if let Some(vm) = &final_metrics {
        log(&format!(
            "validation, epoch {}: {}\n{}",
            opts.epochs,
            vm.summary_line(),
            vm.per_class_table()
        ));
    }
    match checkpoints.best_epoch {
        Some(e) => log(&format!(
            "checkpoints: {} (epoch {}), {} (epoch {e}, lowest val loss)",
            crate::checkpoint::last_path(out).display(),
            opts.epochs,
            crate::checkpoint::best_path(out).display()
        )),
        None => log(&format!(
            "checkpoints: {} (no validation split: no best)",
            crate::checkpoint::last_path(out).display()
        )),
    }
    let mut written = Vec::new();
    let mut plot = |r: Result<Vec<PathBuf>>| match r {
        Ok(paths) => written.extend(paths),
        Err(e) => log(&format!("warning: a plot was not written: {e}")),
    };
    plot(crate::plots::training_curves(
        &history,
        out,
        "training_curves",
    ));
    if let Some(vm) = &final_metrics {
        let title = format!("validation, epoch {}", opts.epochs);
        plot(crate::plots::reliability_diagram(
            vm,
            &title,
            out,
            "reliability",
        ));
    }
    if !written.is_empty() {
        let names: Vec<String> = written
            .iter()
            .map(|p| {
                p.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        log(&format!("plots in {}: {}", out.display(), names.join(", ")));
    }
    Ok((model, history))
}

/// The compact per-epoch table printed at the end of training.
pub fn epoch_table(history: &[EpochMetrics]) -> String {
    let f = |v: Option<f64>, pct: bool| match v {
        Some(v) if pct => format!("{:.1}%", v * 100.0),
        Some(v) => format!("{v:.4}"),
        None => "-".into(),
    };
    let mut out = format!(
        "{:>5} {:>10} {:>9} {:>9} {:>8} {:>8} {:>8} {:>7} {:>7} {:>7} {:>7}\n",
        "epoch",
        "train loss",
        "train acc",
        "val loss",
        "val acc",
        "bal acc",
        "macro-F1",
        "NLL",
        "Brier",
        "ECE",
        "s"
    );
    for m in history {
        let v = m.validation.as_ref();
        out.push_str(&format!(
            "{:>5} {:>10.4} {:>9} {:>9} {:>8} {:>8} {:>8} {:>7} {:>7} {:>7} {:>7.1}\n",
            m.epoch,
            m.train_loss,
            f(Some(m.train_accuracy), true),
            f(m.val_loss, false),
            f(m.val_accuracy, true),
            f(v.map(|v| v.val_balanced_accuracy), true),
            f(v.map(|v| v.val_macro_f1), false),
            f(v.map(|v| v.val_nll), false),
            f(v.map(|v| v.val_brier), false),
            f(v.map(|v| v.val_ece), false),
            m.seconds
        ));
    }
    out.pop();
    out
}

fn progress_bar(show: bool, steps: u64, epoch: usize, epochs: usize) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(steps);
    bar.set_style(
        ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} ({eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("{epoch}/{epochs}"));
    bar
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so a
/// crash leaves either the old file or the new one, never half of one.
pub fn write_file_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp: PathBuf = {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".tmp{}", std::process::id()));
        path.with_file_name(name)
    };
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::file(path, format!("cannot write: {e}"))
    })
}

/// `runs/<date>-<time>-<loss>`: a new folder name for a run (UTC).
pub fn default_run_dir(loss: &LossConfig) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = ((secs / 86400) as i64, secs % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    PathBuf::from("runs").join(format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}-{}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        loss.cli_name()
    ))
}
