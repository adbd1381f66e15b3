//! Row-wise softmax of `[rows, cols]` logits, forward and backward.
//!
//! - CPU (`cpu.rs`): the reference rows of `crate::loss` (`softmax_row`).
//! - CUDA (`cuda.rs`, `kernels/softmax.cu`): one warp per row.

mod cpu;
mod cuda;

pub use cpu::{softmax_backward_row, softmax_row};

use crate::Result;
use crate::ops::Storage;
use crate::profile::{Phase, Profiled, Timeline};

/// The softmax ops of a backend.
pub trait SoftmaxOps: Storage {
    /// Row-wise softmax of `[rows, cols]` logits.
    fn softmax_forward(
        &self,
        rows: usize,
        cols: usize,
        logits: &Self::Buf,
        probs: &mut Self::Buf,
    ) -> Result<()>;
    /// `dlogits = J_softmax^T dprobs`, i.e. `p * (dp - sum(dp * p))` per row.
    fn softmax_backward(
        &self,
        rows: usize,
        cols: usize,
        probs: &Self::Buf,
        dprobs: &Self::Buf,
        dlogits: &mut Self::Buf,
    ) -> Result<()>;
}

/// Under `--profile`: the op, timed as part of its phase of the step.
impl<B: SoftmaxOps + Timeline> SoftmaxOps for Profiled<'_, B> {
    fn softmax_forward(
        &self,
        rows: usize,
        cols: usize,
        logits: &Self::Buf,
        probs: &mut Self::Buf,
    ) -> Result<()> {
        self.enter(Phase::Forward)?;
        self.inner.softmax_forward(rows, cols, logits, probs)
    }
    fn softmax_backward(
        &self,
        rows: usize,
        cols: usize,
        probs: &Self::Buf,
        dprobs: &Self::Buf,
        dlogits: &mut Self::Buf,
    ) -> Result<()> {
        self.enter(Phase::Loss)?;
        self.inner
            .softmax_backward(rows, cols, probs, dprobs, dlogits)
    }
}
