//! Every loss of `crate::loss` (the reference: focal with L1/L2 terms, the 0.5-regularised
//! MSE, Keras' focal cross-entropy, cross-entropy; FLSD-53, AdaFocal, dual focal and
//! sigmoid focal; per-class alpha; from logits or probabilities), its value and its gradient.
//!
//! - CPU (`cpu/`): [`loss_forward_backward`], the reference, with the formulas.
//! - CUDA (`cuda.rs`, `kernels/loss.cu`): one warp per row, then a one-block deterministic reduction.

mod cpu;
mod cuda;

pub use cpu::{LengthRule, check_loss_shapes, loss_forward_backward};

use crate::Result;
use crate::loss::LossConfig;
use crate::ops::CounterOps;
use crate::profile::{Phase, Profiled, Timeline};

/// Where a step of a pass puts its loss instead of returning it (training's way: no read
/// by the host per step): the step's index, its probabilities (for the count of correctly
/// classified images) and the pass's counters.
pub struct CountStep<'a, Buf, Counters> {
    pub probs: &'a Buf,
    pub step: usize,
    pub counters: &'a mut Counters,
}

/// The loss ops of a backend.
pub trait LossOps: CounterOps {
    /// The loss of `pred` (probabilities, or logits when `cfg.from_logits()`) against
    /// one-hot `y_true`, both `[batch, classes]`, and its gradient w.r.t. `pred` into `grad`.
    ///
    /// Without `count`, returns the loss (`Some`; on a GPU, a read by the host). With it,
    /// returns `None`: the loss and the correctly classified images (`count.probs` against
    /// `y_true`) are added to `count.counters` as step `count.step`, and a non-finite loss
    /// is recorded there as the pass's [`StepFailure`](crate::ops::StepFailure).
    #[allow(clippy::too_many_arguments)]
    fn loss(
        &self,
        cfg: &LossConfig,
        batch: usize,
        classes: usize,
        y_true: &Self::Buf,
        pred: &Self::Buf,
        grad: Option<&mut Self::Buf>,
        count: Option<CountStep<'_, Self::Buf, Self::Counters>>,
    ) -> Result<Option<Self::E>>;
}

/// The value of a loss that was not counted: [`LossOps::loss`] without a [`CountStep`]
/// always returns it.
pub fn uncounted<E>(value: Option<E>) -> E {
    value.expect("LossOps::loss returns the value of a loss that is not counted")
}

/// Under `--profile`: the op, timed as part of its phase of the step.
impl<B: LossOps + Timeline> LossOps for Profiled<'_, B> {
    fn loss(
        &self,
        cfg: &LossConfig,
        batch: usize,
        classes: usize,
        y_true: &Self::Buf,
        pred: &Self::Buf,
        grad: Option<&mut Self::Buf>,
        count: Option<CountStep<'_, Self::Buf, Self::Counters>>,
    ) -> Result<Option<Self::E>> {
        self.enter(Phase::Loss)?;
        self.inner
            .loss(cfg, batch, classes, y_true, pred, grad, count)
    }
}
