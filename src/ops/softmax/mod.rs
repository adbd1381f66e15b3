//! The output activations, forward and backward: row-wise softmax of `[rows, cols]` logits
//! (single-label models), and the elementwise sigmoid (`sigmoid-focal`'s models, whose
//! classes are independent).
//!
//! - CPU (`cpu.rs`): the reference rows of `crate::loss` (`softmax_row`), [`sigmoid`].
//! - CUDA (`cuda.rs`, `kernels/softmax.cu`): one warp per softmax row; sigmoid elementwise.

mod cpu;
mod cuda;

pub use cpu::{sigmoid, softmax_backward_row, softmax_row, softplus};

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
    /// Elementwise `1 / (1 + exp(-z))` of the first `n` logits.
    fn sigmoid_forward(&self, n: usize, logits: &Self::Buf, probs: &mut Self::Buf) -> Result<()>;
    /// `dlogits = dprobs * p * (1 - p)` elementwise over the first `n`.
    fn sigmoid_backward(
        &self,
        n: usize,
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
    fn sigmoid_forward(&self, n: usize, logits: &Self::Buf, probs: &mut Self::Buf) -> Result<()> {
        self.enter(Phase::Forward)?;
        self.inner.sigmoid_forward(n, logits, probs)
    }
    fn sigmoid_backward(
        &self,
        n: usize,
        probs: &Self::Buf,
        dprobs: &Self::Buf,
        dlogits: &mut Self::Buf,
    ) -> Result<()> {
        self.enter(Phase::Loss)?;
        self.inner.sigmoid_backward(n, probs, dprobs, dlogits)
    }
}
