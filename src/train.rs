//! The training loop: epochs of shuffled batches, validation, progress, and the run folder
//! (`config.json`, `metrics.jsonl`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::backend::{Backend, StepTotals};
use crate::checkpoint::PartialEpoch;
use crate::data::{Augment, ClassFraction, ImageSet, PixelStore};
use crate::feed::{BatchFeeder, DATA_PATH_LINE, DeviceCache, Feeds};
use crate::loss::LossConfig;
use crate::model::{Arch, Model, Plan};
use crate::optim::Adam;
use crate::profile::{Profiled, Profiler, Timeline, nvtx};
use crate::rng::Rng;
use crate::run::{EpochMetrics, append_metrics};
use crate::schedule::{LrSchedule, Monitor, RunProgress, Schedule};
use crate::{Error, Result};

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
    /// Show progress bars (on a terminal).
    #[serde(skip)]
    pub progress: bool,
    /// `--resume`: continue the run in the output folder (see [`train_with`]).
    #[serde(skip)]
    pub resume: bool,
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
            progress: false,
            resume: false,
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

/// How often the progress bar reads the counters of a backend whose reads wait for the
/// device (about 10 times a second; not at all without a progress bar).
const PROGRESS_READ_EVERY: Duration = Duration::from_millis(100);

/// Logits of `model` over `indices` (`[indices.len(), classes]`) and, with `loss`, the mean
/// loss (no weight update). Batches come from `feeder`; the logits are collected on the
/// backend and read once, with the loss's counters.
pub fn logits_of<B: Backend<E = f32>>(
    backend: &B,
    model: &mut Model<B>,
    loss: Option<&LossConfig>,
    feeder: &mut dyn BatchFeeder<B::Buf>,
    indices: &[usize],
) -> Result<(Option<f64>, Vec<f32>)> {
    let classes = model.plan.classes;
    let mut logits = backend.zeros(indices.len() * classes)?;
    let mut counters = backend.counters()?;
    let mut row = 0;
    feeder.for_each_batch(indices, None, 0, &mut |step, n, x, y| {
        model.forward(backend, x, n)?;
        if let Some(loss) = loss {
            model.count_loss_of_forward(backend, loss, y, n, step, &mut counters)?;
        }
        model.copy_logits_into(backend, n, &mut logits, row)?;
        row += n;
        Ok(())
    })?;
    let mean = match loss {
        Some(_) => {
            let totals = backend.read_counters(&counters)?;
            if let Some(f) = totals.failure {
                return Err(Error::NonFinite(format!(
                    "evaluation batch {}: {}",
                    f.step + 1,
                    f.describe()
                )));
            }
            Some(totals.loss_sum / indices.len().max(1) as f64)
        }
        None => None,
    };
    Ok((mean, backend.read(&logits, indices.len() * classes)?))
}

/// Fails with one line when the model and a batch of `batch_size` do not fit in the
/// backend's free device memory (where it knows it), before anything is allocated.
fn check_device_memory<B: Backend<E = f32>>(
    backend: &B,
    plan: &Plan,
    batch_size: usize,
) -> Result<()> {
    let Some(free) = backend.free_memory()? else {
        return Ok(());
    };
    let need = plan.training_bytes(batch_size, size_of::<B::E>());
    if need > free {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        return Err(Error::Device(format!(
            "--batch-size {batch_size}: the model ({} parameters) and a batch need at least {:.2} GiB of {} memory, {:.2} GiB is free; use a smaller --batch-size or --arch",
            plan.parameter_count(),
            gib(need),
            backend.name(),
            gib(free)
        )));
    }
    Ok(())
}

/// The error of a failed step (the loss, or the model's outputs, not finite).
fn stopped_at(epoch: usize, step: usize, what: &str) -> Error {
    Error::NonFinite(format!(
        "training stopped at epoch {epoch}, step {}: {what}; try a lower --lr or check the data and loss parameters",
        step + 1
    ))
}

/// `totals`, or the error of the step that failed.
fn checked(totals: StepTotals, epoch: usize) -> Result<StepTotals> {
    match totals.failure {
        Some(f) => Err(stopped_at(epoch, f.step, f.describe())),
        None => Ok(totals),
    }
}

/// Trains a new model on `data` with `opts` (or continues the run in `out` with
/// `opts.resume`), writing `config.json` and `metrics.jsonl` into `out` and a line per epoch
/// through `log`. Returns the model and the metrics.
pub fn train<B: Feeds, P: PixelStore>(
    backend: &B,
    data: &ImageSet<P>,
    opts: &TrainOptions,
    out: &Path,
    log: impl FnMut(&str),
) -> Result<(Model<B>, Vec<EpochMetrics>)> {
    train_with(backend, data, opts, out, opts.resume, log)
}

/// [`train`] with the per-phase profiler around `backend` when `profile` (or where NVTX
/// ranges are wanted); with `profile`, the per-phase table, timed with `clock` (what the
/// backend's phases are measured with), is logged at the end. Returns the metrics.
pub fn train_profiled<B: Feeds + Timeline, P: PixelStore>(
    backend: &B,
    data: &ImageSet<P>,
    opts: &TrainOptions,
    out: &Path,
    profile: bool,
    clock: &str,
    mut log: impl FnMut(&str),
) -> Result<Vec<EpochMetrics>> {
    // The phase wrapper costs a compare per backend call; skip it when nobody looks.
    if !profile && !nvtx::available() {
        return Ok(train(backend, data, opts, out, log)?.1);
    }
    let prof = Profiler::new(profile);
    let (_model, history) = train(&Profiled::new(backend, &prof), data, opts, out, &mut log)?;
    prof.finish(backend)?;
    if profile {
        log(&prof.table(clock));
    }
    Ok(history)
}

/// [`train`], or with `resume` (`train --resume RUN`) the continuation of the run in `out`
/// from its `checkpoints/last.safetensors`: weights, Adam state, data order and random
/// streams as they were, so the result equals an uninterrupted run with the same seed.
/// Also writes `checkpoints/last` and `best` each epoch, and plots at the end.
pub fn train_with<B: Feeds, P: PixelStore>(
    backend: &B,
    data: &ImageSet<P>,
    opts: &TrainOptions,
    out: &Path,
    resume: bool,
    mut log: impl FnMut(&str),
) -> Result<(Model<B>, Vec<EpochMetrics>)> {
    for (flag, value) in [
        ("--batch-size", Some(opts.batch_size)),
        ("--epochs", Some(opts.epochs)),
        ("--steps-per-epoch", opts.steps_per_epoch),
    ] {
        if value == Some(0) {
            return Err(Error::invalid(format!("{flag} 0: must be at least 1")));
        }
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
    let schedule = Schedule {
        base_lr: opts.learning_rate,
        schedule: opts.lr_schedule,
        warmup_epochs: opts.warmup_epochs,
        epochs: opts.epochs,
        monitor: opts.monitor,
        early_stop: opts.early_stop,
    };
    schedule.validate(!val_idx.is_empty())?;
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
    crate::run::write_atomically(
        &crate::run::config_path(out),
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

    check_device_memory(backend, &plan, opts.batch_size)?;
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
    let mut feeder = backend.feeder(data, opts.batch_size, opts.device_cache)?;
    log(&format!("{DATA_PATH_LINE}{}", feeder.describe()));
    let mut counters = backend.counters()?;
    let metrics_path = crate::run::metrics_path(out);
    let (mut history, mut metrics_file) = match &resumed {
        Some(r) => crate::run::reopen_metrics(&metrics_path, r.state.epoch)?,
        None => (
            Vec::new(),
            std::fs::File::create(&metrics_path).map_err(|e| Error::file(&metrics_path, e))?,
        ),
    };
    let mut events = crate::tensorboard::EventWriter::create(out)?;
    let checkpoints = crate::checkpoint::EpochCheckpoints {
        run: out.to_path_buf(),
        class_names: data.class_names.clone(),
        loss: opts.loss.clone(),
        options: options_json,
        fingerprint,
    };
    let first_epoch = resumed.as_ref().map_or(1, |r| r.state.epoch + 1);
    let mut progress = resumed
        .as_ref()
        .map_or_else(RunProgress::default, |r| r.state.progress.clone());
    // The steps of `first_epoch` done before an interrupt, if that is where the run stopped.
    let mut partial = resumed.and_then(|r| r.state.partial);
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
        let run = EpochSteps {
            epoch,
            order: &order,
            steps,
            done: partial.take().unwrap_or_default(),
        }
        .run(
            backend,
            &mut model,
            feeder.as_mut(),
            &mut counters,
            opts,
            &schedule,
            &progress,
        )?;
        let done = &run.done;
        let seen = done.seen as f64;
        let mut m = EpochMetrics {
            epoch,
            train_loss: done.loss_sum / seen,
            train_accuracy: done.correct as f64 / seen,
            val_loss: None,
            val_accuracy: None,
            images_per_second: seen / done.seconds,
            seconds: done.seconds,
            validation: None,
            learning_rates: done.learning_rates.clone(),
            partial: run.interrupted,
        };
        if run.interrupted {
            append_metrics(&mut metrics_file, &metrics_path, &m)?;
            checkpoints.save(
                backend,
                &model,
                epoch - 1,
                history.last().and_then(|h| h.val_loss),
                false,
                &progress,
                Some(run.done.clone()),
            )?;
            return Err(Error::Interrupted(format!(
                "interrupted at epoch {epoch}, step {} of {steps}: saved {} (the partial epoch is in metrics.jsonl, marked \"partial\")",
                run.done.steps,
                crate::run::last_path(out).display()
            )));
        }
        if !val_idx.is_empty() {
            let (l, logits) = logits_of(
                backend,
                &mut model,
                Some(&opts.loss),
                feeder.as_mut(),
                &val_idx,
            )?;
            let labels: Vec<usize> = val_idx.iter().map(|&i| data.labels[i] as usize).collect();
            let vm =
                crate::metrics::Metrics::from_logits(&logits, &labels, &data.class_names, 1.0)?;
            m.val_loss = l;
            m.val_accuracy = Some(vm.accuracy);
            m.validation = Some(crate::metrics::EpochValidation::from(&vm));
            final_metrics = Some(vm);
        }
        let monitored = opts
            .monitor
            .value(m.val_loss, m.val_accuracy, m.validation.as_ref());
        let decision = schedule.end_epoch(epoch, monitored, &mut progress);
        append_metrics(&mut metrics_file, &metrics_path, &m)?;
        checkpoints.save(
            backend,
            &model,
            epoch,
            m.val_loss,
            decision.best,
            &progress,
            None,
        )?;
        events.epoch(&m, steps)?;
        log(&epoch_line(&m, opts.epochs, decision.best));
        history.push(m);
        if decision.stop {
            log(&format!(
                "early stop after epoch {epoch}: {} has not improved for {} epochs (best {:.4} at epoch {})",
                opts.monitor.name(),
                progress.stale_epochs,
                progress.best.unwrap_or(f64::NAN),
                progress.best_epoch.unwrap_or(0)
            ));
            break;
        }
    }
    log(&format!("\n{}", epoch_table(&history)));
    let last_epoch = history.last().map_or(0, |m| m.epoch);
    if let Some(vm) = &final_metrics {
        log(&format!(
            "validation, epoch {last_epoch}: {}\n{}",
            vm.summary_line(),
            vm.per_class_table()
        ));
    }
    match progress.best_epoch {
        Some(e) => log(&format!(
            "checkpoints: {} (epoch {last_epoch}), {} (epoch {e}, best {})",
            crate::run::last_path(out).display(),
            crate::run::best_path(out).display(),
            opts.monitor.name()
        )),
        None => log(&format!(
            "checkpoints: {} (no validation split: no best)",
            crate::run::last_path(out).display()
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
        let title = format!("validation, epoch {last_epoch}");
        let diagram = crate::plots::reliability_diagram(vm, &title, out, "reliability");
        if let Ok(paths) = &diagram
            && let Some(png) = paths
                .iter()
                .find(|p| p.extension().is_some_and(|e| e == "png"))
        {
            events.png("reliability_diagram", last_epoch as i64, png)?;
        }
        plot(diagram);
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

/// The steps of one epoch to run: its order, and those done before an interrupt.
struct EpochSteps<'a> {
    epoch: usize,
    order: &'a [usize],
    steps: usize,
    done: PartialEpoch,
}

/// What the steps of an epoch came to: all of them, or (`interrupted`) those before Ctrl-C.
struct EpochRun {
    done: PartialEpoch,
    interrupted: bool,
}

impl EpochSteps<'_> {
    /// Trains on the epoch's batches (from the first not done), with the scheduled learning
    /// rate of each step; stops early at an interrupt. The counters are read where that
    /// is free (the CPU: then a failed step stops training at once) or for the progress
    /// bar, at most every PROGRESS_READ_EVERY; otherwise once, at the end.
    #[allow(clippy::too_many_arguments)]
    fn run<B: Backend<E = f32>>(
        self,
        backend: &B,
        model: &mut Model<B>,
        feeder: &mut dyn BatchFeeder<B::Buf>,
        counters: &mut B::Counters,
        opts: &TrainOptions,
        schedule: &Schedule,
        progress: &RunProgress,
    ) -> Result<EpochRun> {
        let EpochSteps {
            epoch,
            order,
            steps,
            done,
        } = self;
        let bar = progress_bar(opts.progress, steps as u64, epoch, opts.epochs);
        bar.inc(done.steps as u64);
        let start = Instant::now();
        let flip_seed = (opts.augment == Augment::Flip)
            .then(|| Rng::derive(opts.seed, 0xf11b_0000 + epoch as u64).next_u64());
        // The sums continue from the interrupted steps', in the same order.
        let before = done.totals();
        backend.set_counters(counters, &before)?;
        let mut learning_rates = done.learning_rates;
        let mut steps_done = done.steps;
        let mut last_read = start;
        let result = feeder.for_each_batch(order, flip_seed, done.steps, &mut |step, n, x, y| {
            let lr = schedule.learning_rate(epoch, step, steps, progress);
            model.optimizer.learning_rate = lr;
            learning_rates.push(lr);
            model
                .train_step_counted(backend, &opts.loss, x, y, n, step, counters)
                .map_err(|e| match e {
                    Error::NonFinite(what) => stopped_at(epoch, step, &what),
                    other => other,
                })?;
            steps_done = step + 1;
            bar.inc(1);
            if backend.reads_are_cheap()
                || (opts.progress && last_read.elapsed() >= PROGRESS_READ_EVERY)
            {
                let t = checked(backend.read_counters(counters)?, epoch)?;
                bar.set_message(format!(
                    "loss {:.4}  lr {lr:.3e}  {:.1} img/s",
                    t.loss_sum / t.seen.max(1) as f64,
                    (t.seen - before.seen) as f64 / start.elapsed().as_secs_f64()
                ));
                last_read = Instant::now();
            }
            crate::interrupt::after_step();
            if crate::interrupt::requested() {
                // Unwinds the feeder; caught below.
                return Err(Error::Interrupted(String::new()));
            }
            Ok(())
        });
        let interrupted = match result {
            Err(Error::Interrupted(_)) => true,
            other => {
                other?;
                false
            }
        };
        let totals = checked(backend.read_counters(counters)?, epoch)?;
        bar.finish_and_clear();
        Ok(EpochRun {
            done: PartialEpoch {
                steps: steps_done,
                loss_sum: totals.loss_sum,
                correct: totals.correct,
                seen: totals.seen,
                seconds: done.seconds + start.elapsed().as_secs_f64(),
                learning_rates,
            },
            interrupted,
        })
    }
}

/// The line logged after an epoch.
fn epoch_line(m: &EpochMetrics, epochs: usize, best: bool) -> String {
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
    format!(
        "epoch {}/{epochs}: train loss {:.4} acc {:.1}% | {val} | {:.1} img/s, {:.1} s",
        m.epoch,
        m.train_loss,
        m.train_accuracy * 100.0,
        m.images_per_second,
        m.seconds
    )
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
