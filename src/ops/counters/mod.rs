//! The step counters of a pass: the loss summed over its steps, the images seen and those
//! classified correctly, and the first step whose loss failed. The training loop reads
//! them once per pass instead of reading each step's loss (a device round trip per step).
//! [`LossOps::loss`](crate::ops::LossOps::loss) with a [`CountStep`](crate::ops::loss::CountStep)
//! adds to them and [`AdamOps::adam_update`](crate::ops::AdamOps::adam_update) with them
//! reads them.
//!
//! - CPU (`cpu.rs`): the totals themselves, in host memory.
//! - CUDA (`cuda.rs`, kernels/counters.cu; the slots in
//!   [`kernel_abi`](crate::ops::kernel_abi)): doubles in device memory, added to by
//!   `count_step` after each step's loss.

mod cpu;
pub(crate) mod cuda;

use crate::Result;
use crate::ops::Storage;
use crate::profile::{Phase, Profiled, Timeline};

/// What the steps of a pass add up to, kept by the backend's counters
/// ([`Backend::loss`] with a [`CountStep`](crate::ops::loss::CountStep)) and read once per pass ([`Backend::read_counters`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepTotals {
    /// The loss summed as `loss * batch` per step (divide by `seen` for the mean).
    pub loss_sum: f64,
    /// Images whose largest probability is their label's.
    pub correct: u64,
    pub seen: u64,
    /// The first step whose loss could not be computed; nothing is counted from it on.
    pub failure: Option<StepFailure>,
}

/// A step whose loss was not finite (training stops; its weights were not updated).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepFailure {
    /// The step's index in the pass (0-based).
    pub step: usize,
    /// The loss's inputs (the model's outputs) held a NaN or an infinity, not just the loss.
    pub bad_inputs: bool,
}

impl StepFailure {
    /// What failed, for an error message.
    pub fn describe(&self) -> &'static str {
        if self.bad_inputs {
            "the model's outputs are not finite"
        } else {
            "the loss is not finite"
        }
    }
}

/// The counter ops of a backend: the training loop's data path (batches in, per-pass
/// totals out) with no read of the device inside a step.
pub trait CounterOps: Storage {
    /// The step counters of a pass (see [`StepTotals`]), kept where the backend computes:
    /// on the device for CUDA, so a step needs no read-back.
    type Counters;
    /// New counters at zero.
    fn counters(&self) -> Result<Self::Counters>;
    /// Sets `counters` to `totals` (zero for a new pass; a resumed epoch's partial sums, so
    /// that its sums continue in the order of an uninterrupted one).
    fn set_counters(&self, counters: &mut Self::Counters, totals: &StepTotals) -> Result<()>;
    /// The totals so far: the one read of the device a pass needs (waits for its work).
    fn read_counters(&self, counters: &Self::Counters) -> Result<StepTotals>;
    /// Whether [`Self::read_counters`] costs no more than a copy in host memory (then the
    /// training loop reads after every step and stops at a failed one at once).
    fn reads_are_cheap(&self) -> bool {
        false
    }
}

/// Under `--profile`: the op, timed as part of its phase of the step.
impl<B: CounterOps + Timeline> CounterOps for Profiled<'_, B> {
    type Counters = B::Counters;

    fn counters(&self) -> Result<Self::Counters> {
        self.inner.counters()
    }
    fn set_counters(&self, counters: &mut Self::Counters, totals: &StepTotals) -> Result<()> {
        self.inner.set_counters(counters, totals)
    }
    fn read_counters(&self, counters: &Self::Counters) -> Result<StepTotals> {
        self.enter(Phase::Readback)?;
        let totals = self.inner.read_counters(counters)?;
        // As after `read`: the host has synchronised.
        self.profiler.resolve()?;
        self.enter(Phase::Data)?;
        Ok(totals)
    }
    fn reads_are_cheap(&self) -> bool {
        self.inner.reads_are_cheap()
    }
}
