//! Row-wise softmax of `[rows, cols]` logits, forward and backward.
//!
//! - CPU (`cpu.rs`): the reference rows of `crate::loss` (`softmax_row`).
//! - CUDA (`cuda.rs`, `softmax.cu`): one warp per row.

mod cpu;
pub mod cuda;

use crate::Result;
use crate::ops::Storage;

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
