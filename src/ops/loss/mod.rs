//! Every loss of `crate::loss` (the reference: focal with L1/L2 terms, the 0.5-regularised
//! MSE, Keras' focal cross-entropy, cross-entropy; per-class alpha; from logits or
//! probabilities), its value and its gradient.
//!
//! - CPU (`cpu.rs`): `crate::loss::loss_forward_backward` itself.
//! - CUDA (`cuda.rs`, `loss.cu`): one warp per row, then a one-block deterministic reduction.

mod cpu;
pub mod cuda;

use crate::Result;
use crate::loss::LossConfig;
use crate::ops::CounterOps;
use crate::profile::{Phase, Profiled, Timeline};

/// The loss ops of a backend.
pub trait LossOps: CounterOps {
    /// The loss of `pred` (probabilities, or logits when `cfg.from_logits()`) against
    /// one-hot `y_true`, both `[batch, classes]`, and its gradient w.r.t. `pred` into `grad`.
    #[allow(clippy::too_many_arguments)]
    fn loss(
        &self,
        cfg: &LossConfig,
        batch: usize,
        classes: usize,
        y_true: &Self::Buf,
        pred: &Self::Buf,
        grad: Option<&mut Self::Buf>,
    ) -> Result<Self::E>;
    /// [`Self::loss`] of step `step` of a pass, adding its loss and its correctly
    /// classified images (`probs` against `y_true`) to `counters` instead of returning them;
    /// a non-finite loss is recorded there as the pass's [`StepFailure`].
    #[allow(clippy::too_many_arguments)]
    fn loss_counted(
        &self,
        cfg: &LossConfig,
        batch: usize,
        classes: usize,
        y_true: &Self::Buf,
        pred: &Self::Buf,
        probs: &Self::Buf,
        grad: Option<&mut Self::Buf>,
        step: usize,
        counters: &mut Self::Counters,
    ) -> Result<()>;
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
    ) -> Result<Self::E> {
        self.enter(Phase::Loss)?;
        self.inner.loss(cfg, batch, classes, y_true, pred, grad)
    }
    fn loss_counted(
        &self,
        cfg: &LossConfig,
        batch: usize,
        classes: usize,
        y_true: &Self::Buf,
        pred: &Self::Buf,
        probs: &Self::Buf,
        grad: Option<&mut Self::Buf>,
        step: usize,
        counters: &mut Self::Counters,
    ) -> Result<()> {
        self.enter(Phase::Loss)?;
        self.inner.loss_counted(
            cfg, batch, classes, y_true, pred, probs, grad, step, counters,
        )
    }
}
