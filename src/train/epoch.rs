//! The epoch loop of a run under way ([`Training`]): the steps of each epoch, validation,
//! the learning-rate schedule, checkpoints, metrics and TensorBoard events after each,
//! and the stop on a failed step, an interrupt or early stopping.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::checkpoint::PartialEpoch;
use crate::data::{Augment, ImageSet, PixelStore};
use crate::feed::{BatchFeeder, Feeds};
use crate::metrics::multilabel::{EpochMultiLabel, MultiLabelMetrics};
use crate::model::Model;
use crate::ops::{Backend, StepTotals};
use crate::rng::Rng;
use crate::run::{EpochMetrics, append_metrics};
use crate::schedule::{RunProgress, Schedule};
use crate::{Error, Result};

use super::report::{epoch_line, epoch_table, progress_bar};
use super::{RunStart, Split, TrainOptions, logits_of};

/// How often the progress bar reads the counters of a backend whose reads wait for the
/// device (about 10 times a second; not at all without a progress bar).
const PROGRESS_READ_EVERY: Duration = Duration::from_millis(100);

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

/// Whether the run goes on after an epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum AfterEpoch {
    Continue,
    /// Early stopping: the monitored metric has not improved for long enough.
    Stop,
}

/// A run under way: the model, its batches, what the epochs write, and where they stand.
pub(super) struct Training<'a, B: Feeds, P: PixelStore> {
    backend: &'a B,
    data: &'a ImageSet<P>,
    split: &'a Split,
    opts: &'a TrainOptions,
    out: &'a Path,
    schedule: Schedule,
    pub(super) model: Model<B>,
    feeder: Box<dyn BatchFeeder<B::Buf> + 'a>,
    counters: B::Counters,
    metrics_path: PathBuf,
    metrics_file: std::fs::File,
    /// The metrics of the epochs done (those of the resumed run's first).
    pub(super) history: Vec<EpochMetrics>,
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
    /// A multi-label run's instead.
    final_multilabel: Option<MultiLabelMetrics>,
    /// The loss the steps use: `opts.loss`, but for `adafocal` with the bins of the last
    /// update (kept in `progress` for a resumed run).
    loss: crate::loss::LossConfig,
}

impl<'a, B: Feeds, P: PixelStore> Training<'a, B, P> {
    /// The counters, `metrics.jsonl` (new, or the resumed run's up to its last epoch), the
    /// TensorBoard events, and the run's state: where a resumed run left it, with the
    /// shuffle stream advanced past the epochs done.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn open(
        backend: &'a B,
        data: &'a ImageSet<P>,
        split: &'a Split,
        opts: &'a TrainOptions,
        out: &'a Path,
        schedule: Schedule,
        start: RunStart,
        model: Model<B>,
        feeder: Box<dyn BatchFeeder<B::Buf> + 'a>,
    ) -> Result<Self> {
        let counters = backend.counters()?;
        let metrics_path = crate::run::metrics_path(out);
        let resumed = start.resumed;
        let (history, metrics_file) = match &resumed {
            Some(r) => crate::run::reopen_metrics(&metrics_path, r.state.epoch)?,
            None => (
                Vec::new(),
                std::fs::File::create(&metrics_path).map_err(|e| Error::file(&metrics_path, e))?,
            ),
        };
        let events = crate::tensorboard::EventWriter::create(out)?;
        let epochs_done = resumed.as_ref().map_or(0, |r| r.state.epoch);
        let progress = resumed
            .as_ref()
            .map_or_else(RunProgress::default, |r| r.state.progress.clone());
        let partial = resumed.and_then(|r| r.state.partial);
        let loss = with_adafocal_bins(&opts.loss, progress.adafocal.as_ref());
        // The loss a checkpoint names: adafocal's with the gammas in use.
        let checkpoints = crate::checkpoint::EpochCheckpoints {
            run: out.to_path_buf(),
            class_names: data.class_names.clone(),
            loss: loss.clone(),
            options: start.options,
            fingerprint: start.fingerprint,
        };
        let mut shuffle_rng = Rng::derive(opts.seed, 3);
        for _ in 0..epochs_done {
            // The shuffles of the epochs done: the stream is where the run left it.
            shuffle_rng.shuffle(&mut split.train.clone());
        }
        Ok(Training {
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
            final_multilabel: None,
            loss,
        })
    }

    /// The first epoch to train: 1, or the one after the resumed run's last.
    pub(super) fn first_epoch(&self) -> usize {
        self.epochs_done + 1
    }

    /// Trains epoch `epoch` on a new shuffle of the training images, validates, writes its
    /// metrics line, checkpoints and events, and logs its line. An interrupt saves the
    /// steps done and ends the run with [`Error::Interrupted`].
    pub(super) fn epoch(&mut self, epoch: usize, log: &mut impl FnMut(&str)) -> Result<AfterEpoch> {
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
        .train(
            self.backend,
            &mut self.model,
            self.feeder.as_mut(),
            &mut self.counters,
            opts,
            &self.schedule,
            &self.progress,
            &self.loss,
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
            precision: self.backend.precision(),
            validation: None,
            multilabel: None,
            learning_rates: done.learning_rates.clone(),
            adafocal: None,
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
            Some(&self.loss),
            self.feeder.as_mut(),
            val,
        )?;
        m.val_loss = l;
        if let Some(sets) = &self.data.multi {
            let sets: Vec<Vec<u32>> = val.iter().map(|&i| sets[i].clone()).collect();
            let mm = MultiLabelMetrics::from_logits(&logits, &sets, &self.data.class_names, 1.0)?;
            m.val_accuracy = Some(mm.top1_accuracy);
            m.multilabel = Some(EpochMultiLabel::from(&mm));
            self.final_multilabel = Some(mm);
            return Ok(());
        }
        let labels: Vec<usize> = val.iter().map(|&i| self.data.labels[i] as usize).collect();
        let output = self.loss.output();
        let vm = crate::metrics::Metrics::from_logits(
            &logits,
            &labels,
            &self.data.class_names,
            1.0,
            output,
        )?;
        if let crate::loss::LossConfig::AdaFocal { settings, bins, .. } = &self.loss {
            let probs =
                crate::metrics::probability_rows(&logits, vm.confusion.classes, 1.0, output);
            let (confidences, correct) = crate::metrics::confidences(&probs, &labels);
            let (next, update) = settings.update(bins, &confidences, &correct)?;
            m.adafocal = Some(update);
            self.loss = with_adafocal_bins(&self.opts.loss, Some(&next));
            self.checkpoints.loss = self.loss.clone();
            self.progress.adafocal = Some(next);
        }
        m.val_accuracy = Some(vm.accuracy);
        m.validation = Some(crate::metrics::EpochValidation::from(&vm));
        self.final_metrics = Some(vm);
        Ok(())
    }

    /// The closing report: the epoch table, the last validation in detail, the checkpoints,
    /// and the plots (a plot that fails is a warning, not an error).
    pub(super) fn report(&mut self, log: &mut impl FnMut(&str)) -> Result<()> {
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
        if let Some(mm) = &self.final_multilabel {
            log(&format!(
                "validation, epoch {last_epoch}: {}\n{}",
                mm.summary_line(),
                mm.per_class_table()
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

/// `loss` with `adafocal`'s bins replaced by `bins` (where it is adafocal and they are given).
fn with_adafocal_bins(
    loss: &crate::loss::LossConfig,
    bins: Option<&crate::loss::GammaBins>,
) -> crate::loss::LossConfig {
    let mut loss = loss.clone();
    if let (crate::loss::LossConfig::AdaFocal { bins: b, .. }, Some(next)) = (&mut loss, bins) {
        *b = next.clone();
    }
    loss
}

/// The steps of one epoch to run: its order, and those done before an interrupt.
struct EpochSteps<'a> {
    epoch: usize,
    order: &'a [usize],
    steps: usize,
    done: PartialEpoch,
}

/// What the steps of an epoch came to: all of them, or (`interrupted`) those before Ctrl-C.
struct EpochOutcome {
    done: PartialEpoch,
    interrupted: bool,
}

impl EpochSteps<'_> {
    /// Trains on the epoch's batches (from the first not done), with the scheduled learning
    /// rate of each step; stops early at an interrupt. The counters are read where that
    /// is free (the CPU: then a failed step stops training at once) or for the progress
    /// bar, at most every PROGRESS_READ_EVERY; otherwise once, at the end.
    #[allow(clippy::too_many_arguments)]
    fn train<B: Backend<E = f32>>(
        self,
        backend: &B,
        model: &mut Model<B>,
        feeder: &mut dyn BatchFeeder<B::Buf>,
        counters: &mut B::Counters,
        opts: &TrainOptions,
        schedule: &Schedule,
        progress: &RunProgress,
        loss: &crate::loss::LossConfig,
    ) -> Result<EpochOutcome> {
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
                .train_step_counted(backend, loss, x, y, n, step, counters)
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
        Ok(EpochOutcome {
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
