//! The Adam update (Keras 3 semantics: epsilon added to `sqrt(v)`, the bias correction
//! folded into the step size), in place, fused into one pass over the four buffers.
//!
//! - CPU (`cpu.rs`): one rayon pass.
//! - CUDA (`cuda.rs`, `kernels/adam.cu`): float4 loads, grid-stride; skips its update once the
//!   step counters record a failed step, without a read by the host.

mod cpu;
mod cuda;

pub(crate) use cpu::update_slice;

use crate::Result;
use crate::ops::CounterOps;
use crate::profile::{Phase, Profiled, Timeline};

/// One Adam step's scalars, computed on the host once per step (Keras 3 semantics).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamStep<T> {
    /// `lr * sqrt(1 - beta2^t) / (1 - beta1^t)`: the bias correction folded into the step.
    pub step_size: T,
    /// `1 - beta1` and `1 - beta2`, the moving-average rates.
    pub one_minus_beta1: T,
    pub one_minus_beta2: T,
    /// Added to `sqrt(v)` (not to the bias-corrected v), as Keras does.
    pub epsilon: T,
}

/// The optimizer ops of a backend.
pub trait AdamOps: CounterOps {
    /// One Adam update of `len` parameters in place; with `counters`, none once they record
    /// a failed step (so no NaN reaches the weights; on a GPU the kernel reads them, without
    /// a read by the host).
    #[allow(clippy::too_many_arguments)]
    fn adam_update(
        &self,
        len: usize,
        step: &AdamStep<Self::E>,
        param: &mut Self::Buf,
        grad: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        counters: Option<&Self::Counters>,
    ) -> Result<()>;
}

/// Under `--profile`: the op, timed as part of its phase of the step.
impl<B: AdamOps + Timeline> AdamOps for Profiled<'_, B> {
    fn adam_update(
        &self,
        len: usize,
        step: &AdamStep<Self::E>,
        param: &mut Self::Buf,
        grad: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        counters: Option<&Self::Counters>,
    ) -> Result<()> {
        self.enter(Phase::Optimizer)?;
        self.inner
            .adam_update(len, step, param, grad, m, v, counters)
    }
}
