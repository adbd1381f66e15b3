//! The ReLU gradient. (The ReLU itself is fused into the conv and dense forward passes,
//! and its gradient into max-pooling's backward pass where a pool follows.)

mod cpu;
mod cuda;

use crate::Result;
use crate::ops::Storage;

/// The ReLU op of a backend.
pub trait ReluOps: Storage {
    /// `dy *= (y > 0)` over `len` elements, where `y` is the ReLU's output (TF's ReLU
    /// gradient at exactly 0 is 0).
    fn relu_backward(&self, len: usize, y: &Self::Buf, dy: &mut Self::Buf) -> Result<()>;
}
