//! The training loop: epochs of shuffled batches, validation, progress, and the run folder
//! (`config.json`, `metrics.jsonl`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::checkpoint::PartialEpoch;
use crate::data::{Augment, ClassFraction, ImageSet, PixelStore};
use crate::feed::{BatchFeeder, DATA_PATH_LINE, DeviceCache, Feeds};
use crate::loss::LossConfig;
use crate::model::{Arch, Model, Plan};
use crate::ops::{Backend, StepTotals};
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
    /// `--resume`: continue the run in the output folder (see [`train`]).
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

/// The images a run trains and validates on (indices into its set, each list sorted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split {
    pub train: Vec<usize>,
    pub val: Vec<usize>,
}

impl Split {
    /// The split `opts` asks for: `--class-fraction` subsampling, then `--val-fraction` of
    /// each class held out, both chosen with `--seed`.
    pub fn of<P: PixelStore>(data: &ImageSet<P>, opts: &TrainOptions) -> Result<Split> {
        let (train, val) =
            data.training_split(opts.val_fraction, opts.seed, &opts.class_fraction)?;
        Ok(Split { train, val })
    }
}

/// Trains a new model on `data` with `opts` (or, with `opts.resume` (`train --resume RUN`),
/// continues the run in `out` from its `checkpoints/last.safetensors`: weights, Adam state,
/// data order and random streams as they were, so the result equals an uninterrupted run
/// with the same seed). Writes `config.json`, `metrics.jsonl`, `checkpoints/last` and
/// `best` each epoch, TensorBoard events and, at the end, plots into `out`, and a line per
/// epoch through `log`. Returns the model and the metrics.
pub fn train<B: Feeds, P: PixelStore>(
    backend: &B,
    data: &ImageSet<P>,
    opts: &TrainOptions,
    out: &Path,
    log: impl FnMut(&str),
) -> Result<(Model<B>, Vec<EpochMetrics>)> {
    let plan = check_options(data, opts)?;
    let split = Split::of(data, opts)?;
    train_planned(backend, data, plan, &split, opts, out, log)
}

/// [`train`] on `split`, made beforehand with [`Split::of`] from the same `data` and `opts`
/// (the command line makes it first: it prints the split's class counts and derives
/// `--alpha auto` from them).
pub fn train_split<B: Feeds, P: PixelStore>(
    backend: &B,
    data: &ImageSet<P>,
    split: &Split,
    opts: &TrainOptions,
    out: &Path,
    log: impl FnMut(&str),
) -> Result<(Model<B>, Vec<EpochMetrics>)> {
    let plan = check_options(data, opts)?;
    train_planned(backend, data, plan, split, opts, out, log)
}

/// [`train_split`] with the per-phase profiler around `backend` when `profile` (or where
/// NVTX ranges are wanted); with `profile`, the per-phase table, timed with `clock` (what
/// the backend's phases are measured with), is logged at the end. Returns the metrics.
#[allow(clippy::too_many_arguments)]
pub fn train_profiled<B: Feeds + Timeline, P: PixelStore>(
    backend: &B,
    data: &ImageSet<P>,
    split: &Split,
    opts: &TrainOptions,
    out: &Path,
    profile: bool,
    clock: &str,
    mut log: impl FnMut(&str),
) -> Result<Vec<EpochMetrics>> {
    // The phase wrapper costs a compare per backend call; skip it when nobody looks.
    if !profile && !nvtx::available() {
        return Ok(train_split(backend, data, split, opts, out, log)?.1);
    }
    let prof = Profiler::new(profile);
    let (_model, history) = train_split(
        &Profiled::new(backend, &prof),
        data,
        split,
        opts,
        out,
        &mut log,
    )?;
    prof.finish(backend)?;
    if profile {
        log(&prof.table(clock));
    }
    Ok(history)
}

/// The options' own checks (the counts, the learning rate, the loss for `data`'s classes)
/// and the network `opts.arch` makes for `data`.
fn check_options<P: PixelStore>(data: &ImageSet<P>, opts: &TrainOptions) -> Result<Plan> {
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
    Plan::new(&opts.arch, data.shape, data.classes())
}

/// The run, from its checked options on: the split and the schedule checked, the run folder
/// started (or the resumed one checked), the model built (or restored), the epochs, and the
/// closing report.
fn train_planned<B: Feeds, P: PixelStore>(
    backend: &B,
    data: &ImageSet<P>,
    plan: Plan,
    split: &Split,
    opts: &TrainOptions,
    out: &Path,
    mut log: impl FnMut(&str),
) -> Result<(Model<B>, Vec<EpochMetrics>)> {
    if split.train.is_empty() {
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
    schedule.validate(!split.val.is_empty())?;
    let folder = RunFolder::start(backend, data, &plan, split, opts, out)?;
    log(&model_line(data, &plan, split, opts));
    check_device_memory(backend, &plan, opts.batch_size)?;
    let model = start_model(backend, plan, opts, out, folder.resumed.as_ref(), &mut log)?;
    let feeder = backend.feeder(data, opts.batch_size, opts.device_cache)?;
    log(&format!("{DATA_PATH_LINE}{}", feeder.describe()));
    let mut run = Run::open(
        backend, data, split, opts, out, schedule, folder, model, feeder,
    )?;
    for epoch in run.first_epoch()..=opts.epochs {
        if run.epoch(epoch, &mut log)? == AfterEpoch::Stop {
            break;
        }
    }
    run.report(&mut log)?;
    Ok((run.model, run.history))
}

/// The run folder as training starts: `config.json` written, and with `--resume` the point
/// the run continues from (its options and data checked against this run's).
struct RunFolder {
    /// `opts` as JSON, stored in each checkpoint (a resume compares them).
    options: serde_json::Value,
    /// The split's images, fingerprinted (a resume compares it).
    fingerprint: String,
    resumed: Option<crate::checkpoint::ResumePoint>,
}

impl RunFolder {
    fn start<B: Feeds, P: PixelStore>(
        backend: &B,
        data: &ImageSet<P>,
        plan: &Plan,
        split: &Split,
        opts: &TrainOptions,
        out: &Path,
    ) -> Result<RunFolder> {
        let options = serde_json::to_value(opts).expect("JSON");
        let fingerprint = crate::checkpoint::data_fingerprint(data, &split.train, &split.val);
        let resumed = if opts.resume {
            Some(crate::checkpoint::resume_point(
                out,
                &options,
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
            "train_class_counts": data.class_counts(&split.train),
            "val_class_counts": data.class_counts(&split.val),
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
        Ok(RunFolder {
            options,
            fingerprint,
            resumed,
        })
    }
}

/// The first line logged: the model, the split and the loss.
fn model_line<P: PixelStore>(
    data: &ImageSet<P>,
    plan: &Plan,
    split: &Split,
    opts: &TrainOptions,
) -> String {
    format!(
        "model {} on {}x{}x{}: {} parameters; {} train / {} val images (per class: {:?} / {:?}); loss {}",
        opts.arch,
        data.shape.height,
        data.shape.width,
        data.shape.channels,
        plan.parameter_count(),
        split.train.len(),
        split.val.len(),
        data.class_counts(&split.train),
        data.class_counts(&split.val),
        opts.loss.describe(),
    )
}

/// A new model (seeded with `opts.seed`), or the resumed run's, as it was saved.
fn start_model<B: Feeds>(
    backend: &B,
    plan: Plan,
    opts: &TrainOptions,
    out: &Path,
    resumed: Option<&crate::checkpoint::ResumePoint>,
    log: &mut impl FnMut(&str),
) -> Result<Model<B>> {
    match resumed {
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
            r.checkpoint.model(backend)
        }
        None => {
            let mut model = Model::new(backend, plan, opts.seed)?;
            model.optimizer = Adam::with_learning_rate(opts.learning_rate);
            Ok(model)
        }
    }
}

/// Whether the run goes on after an epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AfterEpoch {
    Continue,
    /// Early stopping: the monitored metric has not improved for long enough.
    Stop,
}

/// A run under way: the model, its batches, what the epochs write, and where they stand.
struct Run<'a, B: Feeds, P: PixelStore> {
    backend: &'a B,
    data: &'a ImageSet<P>,
    split: &'a Split,
    opts: &'a TrainOptions,
    out: &'a Path,
    schedule: Schedule,
    model: Model<B>,
    feeder: Box<dyn BatchFeeder<B::Buf> + 'a>,
    counters: B::Counters,
    metrics_path: PathBuf,
    metrics_file: std::fs::File,
    /// The metrics of the epochs done (those of the resumed run's first).
    history: Vec<EpochMetrics>,
    events: crate::tensorboard::EventWriter,
    checkpoints: crate::checkpoint::EpochCheckpoints,
    progress: RunProgress,
    /// The epochs done before this run started (those of the resumed run).
    epochs_done: usize,
    /// The steps of the first epoch done before an interrupt, if that is where a resumed
    /// run stopped.
    partial: Option<PartialEpoch>,
    shuffle_rng: Rng,
    /// The validation metrics of the last epoch.
    final_metrics: Option<crate::metrics::Metrics>,
}

impl<'a, B: Feeds, P: PixelStore> Run<'a, B, P> {
    /// The counters, `metrics.jsonl` (new, or the resumed run's up to its last epoch), the
    /// TensorBoard events, and the run's state: where a resumed run left it, with the
    /// shuffle stream advanced past the epochs done.
    #[allow(clippy::too_many_arguments)]
    fn open(
        backend: &'a B,
        data: &'a ImageSet<P>,
        split: &'a Split,
        opts: &'a TrainOptions,
        out: &'a Path,
        schedule: Schedule,
        folder: RunFolder,
        model: Model<B>,
        feeder: Box<dyn BatchFeeder<B::Buf> + 'a>,
    ) -> Result<Self> {
        let counters = backend.counters()?;
        let metrics_path = crate::run::metrics_path(out);
        let resumed = folder.resumed;
        let (history, metrics_file) = match &resumed {
            Some(r) => crate::run::reopen_metrics(&metrics_path, r.state.epoch)?,
            None => (
                Vec::new(),
                std::fs::File::create(&metrics_path).map_err(|e| Error::file(&metrics_path, e))?,
            ),
        };
        let events = crate::tensorboard::EventWriter::create(out)?;
        let checkpoints = crate::checkpoint::EpochCheckpoints {
            run: out.to_path_buf(),
            class_names: data.class_names.clone(),
            loss: opts.loss.clone(),
            options: folder.options,
            fingerprint: folder.fingerprint,
        };
        let epochs_done = resumed.as_ref().map_or(0, |r| r.state.epoch);
        let progress = resumed
            .as_ref()
            .map_or_else(RunProgress::default, |r| r.state.progress.clone());
        let partial = resumed.and_then(|r| r.state.partial);
        let mut shuffle_rng = Rng::derive(opts.seed, 3);
        for _ in 0..epochs_done {
            // The shuffles of the epochs done: the stream is where the run left it.
            shuffle_rng.shuffle(&mut split.train.clone());
        }
        Ok(Run {
            backend,
            data,
            split,
            opts,
            out,
            schedule,
            model,
            feeder,
            counters,
            metrics_path,
            metrics_file,
            history,
            events,
            checkpoints,
            progress,
            epochs_done,
            partial,
            shuffle_rng,
            final_metrics: None,
        })
    }

    /// The first epoch to train: 1, or the one after the resumed run's last.
    fn first_epoch(&self) -> usize {
        self.epochs_done + 1
    }

    /// Trains epoch `epoch` on a new shuffle of the training images, validates, writes its
    /// metrics line, checkpoints and events, and logs its line. An interrupt saves the
    /// steps done and ends the run with [`Error::Interrupted`].
    fn epoch(&mut self, epoch: usize, log: &mut impl FnMut(&str)) -> Result<AfterEpoch> {
        let opts = self.opts;
        let mut order = self.split.train.clone();
        self.shuffle_rng.shuffle(&mut order);
        let steps = order
            .len()
            .div_ceil(opts.batch_size)
            .min(opts.steps_per_epoch.unwrap_or(usize::MAX));
        order.truncate((steps * opts.batch_size).min(order.len()));
        let run = EpochSteps {
            epoch,
            order: &order,
            steps,
            done: self.partial.take().unwrap_or_default(),
        }
        .run(
            self.backend,
            &mut self.model,
            self.feeder.as_mut(),
            &mut self.counters,
            opts,
            &self.schedule,
            &self.progress,
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
            append_metrics(&mut self.metrics_file, &self.metrics_path, &m)?;
            self.checkpoints.save(
                self.backend,
                &self.model,
                epoch - 1,
                self.history.last().and_then(|h| h.val_loss),
                false,
                &self.progress,
                Some(run.done.clone()),
            )?;
            return Err(Error::Interrupted(format!(
                "interrupted at epoch {epoch}, step {} of {steps}: saved {} (the partial epoch is in metrics.jsonl, marked \"partial\")",
                run.done.steps,
                crate::run::last_path(self.out).display()
            )));
        }
        if !self.split.val.is_empty() {
            self.validate(&mut m)?;
        }
        let monitored = opts
            .monitor
            .value(m.val_loss, m.val_accuracy, m.validation.as_ref());
        let decision = self
            .schedule
            .end_epoch(epoch, monitored, &mut self.progress);
        append_metrics(&mut self.metrics_file, &self.metrics_path, &m)?;
        self.checkpoints.save(
            self.backend,
            &self.model,
            epoch,
            m.val_loss,
            decision.best,
            &self.progress,
            None,
        )?;
        self.events.epoch(&m, steps)?;
        log(&epoch_line(&m, opts.epochs, decision.best));
        self.history.push(m);
        if decision.stop {
            log(&format!(
                "early stop after epoch {epoch}: {} has not improved for {} epochs (best {:.4} at epoch {})",
                opts.monitor.name(),
                self.progress.stale_epochs,
                self.progress.best.unwrap_or(f64::NAN),
                self.progress.best_epoch.unwrap_or(0)
            ));
            return Ok(AfterEpoch::Stop);
        }
        Ok(AfterEpoch::Continue)
    }

    /// The validation loss and metrics of the model as it is, into `m`.
    fn validate(&mut self, m: &mut EpochMetrics) -> Result<()> {
        let val = &self.split.val;
        let (l, logits) = logits_of(
            self.backend,
            &mut self.model,
            Some(&self.opts.loss),
            self.feeder.as_mut(),
            val,
        )?;
        let labels: Vec<usize> = val.iter().map(|&i| self.data.labels[i] as usize).collect();
        let vm =
            crate::metrics::Metrics::from_logits(&logits, &labels, &self.data.class_names, 1.0)?;
        m.val_loss = l;
        m.val_accuracy = Some(vm.accuracy);
        m.validation = Some(crate::metrics::EpochValidation::from(&vm));
        self.final_metrics = Some(vm);
        Ok(())
    }

    /// The closing report: the epoch table, the last validation in detail, the checkpoints,
    /// and the plots (a plot that fails is a warning, not an error).
    fn report(&mut self, log: &mut impl FnMut(&str)) -> Result<()> {
        let (opts, out) = (self.opts, self.out);
        log(&format!("\n{}", epoch_table(&self.history)));
        let last_epoch = self.history.last().map_or(0, |m| m.epoch);
        if let Some(vm) = &self.final_metrics {
            log(&format!(
                "validation, epoch {last_epoch}: {}\n{}",
                vm.summary_line(),
                vm.per_class_table()
            ));
        }
        match self.progress.best_epoch {
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
            &self.history,
            out,
            "training_curves",
        ));
        if let Some(vm) = &self.final_metrics {
            let title = format!("validation, epoch {last_epoch}");
            let diagram = crate::plots::reliability_diagram(vm, &title, out, "reliability");
            if let Ok(paths) = &diagram
                && let Some(png) = paths
                    .iter()
                    .find(|p| p.extension().is_some_and(|e| e == "png"))
            {
                self.events
                    .png("reliability_diagram", last_epoch as i64, png)?;
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
        Ok(())
    }
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
                // The message only where a bar shows it (the CPU reads every step anyway).
                if opts.progress {
                    bar.set_message(format!(
                        "loss {:.4}  lr {lr:.3e}  {:.1} img/s",
                        t.loss_sum / t.seen.max(1) as f64,
                        (t.seen - before.seen) as f64 / start.elapsed().as_secs_f64()
                    ));
                    last_read = Instant::now();
                }
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
