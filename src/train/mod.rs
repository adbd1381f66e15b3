//! Training: a run's split, its checks before any work, its start (a new model, or a resumed
//! one), then the epoch loop.
//!
//! - `options.rs`: [`TrainOptions`], every flag of `train`;
//! - `epoch.rs`: the epoch loop of a run under way (`Training`);
//! - `report.rs`: the line per epoch, the final table and the progress bar;
//! - the run folder's files are written by `crate::run`, the checkpoints by
//!   `crate::checkpoint`.

mod epoch;
mod options;
mod report;

pub use options::TrainOptions;
pub use report::epoch_table;

use epoch::{AfterEpoch, Training};

use std::path::Path;

use crate::data::{ImageSet, PixelStore};
use crate::feed::{BatchFeeder, DATA_PATH_LINE, Feeds};
use crate::loss::LossConfig;
use crate::model::{ImageShape, Model, Plan};
use crate::ops::Backend;
use crate::optim::Adam;
use crate::profile::{Profiled, Profiler, Timeline, nvtx};
use crate::run::EpochMetrics;
use crate::schedule::Schedule;
use crate::{Error, Result};

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
    check_memory(plan, batch_size, backend.free_memory()?, backend.name())
}

/// [`check_memory`] against the memory the host has free (a CPU run's, the emulator's,
/// and the host side of any).
pub fn check_host_memory(plan: &Plan, batch_size: usize) -> Result<()> {
    check_memory(plan, batch_size, crate::system::available_memory(), "host")
}

/// [`check_memory`] for inference (`eval`, `predict`, `calibrate`): the parameters and a
/// batch's activations, no gradients or optimizer state.
pub fn check_inference_memory(
    plan: &Plan,
    batch_size: usize,
    free: Option<u64>,
    memory: &str,
) -> Result<()> {
    let need = plan.inference_bytes(batch_size, size_of::<f32>());
    refuse_beyond(need, free, plan, batch_size, memory, "--batch-size")
}

/// Fails with one line when the model and a batch of `batch_size` need more than `free`
/// bytes of `memory` ("cpu", "cuda", ...; nothing is checked where `free` is unknown).
pub fn check_memory(plan: &Plan, batch_size: usize, free: Option<u64>, memory: &str) -> Result<()> {
    let need = plan.training_bytes(batch_size, size_of::<f32>());
    refuse_beyond(
        need,
        free,
        plan,
        batch_size,
        memory,
        "--batch-size or --arch",
    )
}

/// The one line of both memory checks: `need` bytes against `free`, and what to make smaller.
fn refuse_beyond(
    need: u64,
    free: Option<u64>,
    plan: &Plan,
    batch_size: usize,
    memory: &str,
    smaller: &str,
) -> Result<()> {
    match free {
        Some(free) if need > free => Err(Error::Device(format!(
            "--batch-size {batch_size}: the model ({} parameters) and a batch need at least {} of {memory} memory, {} is free; use a smaller {smaller}",
            plan.parameter_count(),
            crate::system::gib(need),
            crate::system::gib(free)
        ))),
        _ => Ok(()),
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
    let split = Split::of(data, opts)?;
    let plan = check_run(data, &split, opts)?;
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
    let plan = check_run(data, split, opts)?;
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

/// The options' own checks (the counts, the learning rate, the schedule, the loss for
/// `data`'s classes) and the network `opts.arch` makes for `data`.
fn check_options<P: PixelStore>(data: &ImageSet<P>, opts: &TrainOptions) -> Result<Plan> {
    check_options_for(data.shape, data.classes(), opts)
}

/// [`check_options`] before any image is read: for images of `shape` in `classes` classes
/// (the command line checks this first, with the classes of the folder's sub-folders), the
/// schedule as if `--val-fraction` leaves a validation split when it is above 0. Returns the
/// network's plan.
pub fn check_options_for(shape: ImageShape, classes: usize, opts: &TrainOptions) -> Result<Plan> {
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
    if !(0.0..1.0).contains(&opts.val_fraction) {
        return Err(Error::invalid(format!(
            "--val-fraction {}: must be in [0, 1)",
            opts.val_fraction
        )));
    }
    schedule_of(opts).validate(opts.val_fraction > 0.0)?;
    opts.loss.validate(classes)?;
    if matches!(opts.loss, crate::loss::LossConfig::AdaFocal { .. }) && opts.val_fraction == 0.0 {
        return Err(Error::invalid(
            "--loss adafocal updates its gammas from the validation split after each epoch: give --val-fraction above 0 (e.g. 0.2)",
        ));
    }
    Ok(Plan::new(&opts.arch, shape, classes)?.with_output(opts.loss.output()))
}

/// What a multi-label set (`--labels`) needs: a loss on sigmoid outputs, no class
/// subsampling, and a monitored value it has (the validation loss or top-1 accuracy).
pub fn check_multi_label(opts: &TrainOptions) -> Result<()> {
    if opts.loss.output() != crate::loss::Output::Sigmoid {
        return Err(Error::invalid(format!(
            "--labels gives each image several classes; --loss {} picks one per image: use --loss sigmoid-focal",
            opts.loss.cli_name()
        )));
    }
    if !opts.class_fraction.is_empty() {
        return Err(Error::invalid(crate::data::CLASS_FRACTION_WITH_LABELS));
    }
    if !matches!(
        opts.monitor,
        crate::schedule::Monitor::ValLoss | crate::schedule::Monitor::ValAccuracy
    ) {
        return Err(Error::invalid(format!(
            "--monitor {}: a multi-label run monitors val-loss or val-accuracy (top-1)",
            opts.monitor.name()
        )));
    }
    Ok(())
}

/// `--val-fraction` above 0 must leave a validation image (`val_images` of classes of
/// `class_counts` images).
pub fn check_validation_left(
    val_fraction: f64,
    val_images: usize,
    class_counts: &[usize],
) -> Result<()> {
    if val_fraction > 0.0 && val_images == 0 {
        return Err(Error::invalid(format!(
            "--val-fraction {val_fraction} leaves no validation image (each class's share rounds to 0 of its {class_counts:?} images); raise it, or give 0 to train without validation"
        )));
    }
    Ok(())
}

/// The learning-rate schedule and stopping rule `opts` ask for.
fn schedule_of(opts: &TrainOptions) -> Schedule {
    Schedule {
        base_lr: opts.learning_rate,
        schedule: opts.lr_schedule,
        warmup_epochs: opts.warmup_epochs,
        epochs: opts.epochs,
        monitor: opts.monitor,
        early_stop: opts.early_stop,
    }
}

/// Every check of a run on `data` split as `split`, before anything is written: the
/// options, the split (training images left, a validation image where one is asked for)
/// and the schedule against it. Returns the network's plan.
pub fn check_run<P: PixelStore>(
    data: &ImageSet<P>,
    split: &Split,
    opts: &TrainOptions,
) -> Result<Plan> {
    let plan = check_options(data, opts)?;
    if data.multi.is_some() {
        check_multi_label(opts)?;
    }
    if split.train.is_empty() {
        return Err(Error::invalid(format!(
            "no training images left after --val-fraction {}",
            opts.val_fraction
        )));
    }
    check_validation_left(
        opts.val_fraction,
        split.val.len(),
        &data.class_counts(&split.train),
    )?;
    schedule_of(opts).validate(!split.val.is_empty())?;
    Ok(plan)
}

/// The run, from its checked options and split on ([`check_run`]): the memory checked, the
/// run folder started (or the resumed one checked), the model built (or restored), the
/// epochs, and the closing report.
fn train_planned<B: Feeds, P: PixelStore>(
    backend: &B,
    data: &ImageSet<P>,
    plan: Plan,
    split: &Split,
    opts: &TrainOptions,
    out: &Path,
    mut log: impl FnMut(&str),
) -> Result<(Model<B>, Vec<EpochMetrics>)> {
    check_device_memory(backend, &plan, opts.batch_size)?;
    let schedule = schedule_of(opts);
    let start = RunStart::start(backend, data, &plan, split, opts, out)?;
    log(&model_line(data, &plan, split, opts));
    let model = start_model(backend, plan, opts, out, start.resumed.as_ref(), &mut log)?;
    let feeder = backend.feeder(data, opts.batch_size, opts.device_cache)?;
    log(&format!("{DATA_PATH_LINE}{}", feeder.describe()));
    let mut training = Training::open(
        backend, data, split, opts, out, schedule, start, model, feeder,
    )?;
    for epoch in training.first_epoch()..=opts.epochs {
        if training.epoch(epoch, &mut log)? == AfterEpoch::Stop {
            break;
        }
    }
    training.report(&mut log)?;
    Ok((training.model, training.history))
}

/// The run folder as training starts: `config.json` written, and with `--resume` the point
/// the run continues from (its options and data checked against this run's).
pub(super) struct RunStart {
    /// `opts` as JSON, stored in each checkpoint (a resume compares them).
    pub(super) options: serde_json::Value,
    /// The split's images, fingerprinted (a resume compares it).
    pub(super) fingerprint: String,
    pub(super) resumed: Option<crate::checkpoint::ResumePoint>,
}

impl RunStart {
    fn start<B: Feeds, P: PixelStore>(
        backend: &B,
        data: &ImageSet<P>,
        plan: &Plan,
        split: &Split,
        opts: &TrainOptions,
        out: &Path,
    ) -> Result<RunStart> {
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
            // A run is never overwritten: a new one starts only where none is.
            crate::run::check_holds_no_run(out)?;
            None
        };
        let mut config = serde_json::json!({
            "focalflow_version": env!("CARGO_PKG_VERSION"),
            "device": backend.name(),
            "precision": backend.precision(),
            "options": opts,
            "image_shape": data.shape,
            "class_names": data.class_names,
            "train_class_counts": data.class_counts(&split.train),
            "val_class_counts": data.class_counts(&split.val),
            "parameters": plan.parameter_count(),
        });
        if !opts.origin.is_null() {
            config["data"] = opts.origin.clone();
        }
        config["device_cache"] = opts.device_cache.to_string().into();
        if let Some(r) = &resumed {
            config["resumed_after_epoch"] = r.state.epoch.into();
        }
        crate::run::write_config(out, &config)?;
        Ok(RunStart {
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
