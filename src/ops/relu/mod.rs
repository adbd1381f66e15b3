//! The ReLU gradient. (The ReLU itself is fused into the conv and dense forward passes,
//! and its gradient into max-pooling's backward pass where a pool follows.)

mod cpu;
mod cuda;

use crate::Result;
use crate::ops::Storage;
use crate::profile::{Phase, Profiled, Timeline};

/// The ReLU op of a backend.
pub trait ReluOps: Storage {
    /// `dy *= (y > 0)` over `len` elements, where `y` is the ReLU's output (TF's ReLU
    /// gradient at exactly 0 is 0).
    fn relu_backward(&self, len: usize, y: &Self::Buf, dy: &mut Self::Buf) -> Result<()>;
}

/// Under `--profile`: the op, timed as part of its phase of the step.
impl<B: ReluOps + Timeline> ReluOps for Profiled<'_, B> {
    fn relu_backward(&self, len: usize, y: &Self::Buf, dy: &mut Self::Buf) -> Result<()> {
        self.enter(Phase::Backward)?;
        self.inner.relu_backward(len, y, dy)
    }
}
