//! Dense (fully connected) layers: `y = x @ w + b` (ReLU fused), and the weight, bias and
//! input gradients.
//!
//! - CPU (`cpu.rs`): GEMMs of `gemm::cpu`; for weights that dwarf the batch (outputs a
//!   multiple of 64, f32 on AVX-512) every pass streams the weights once (`streaming.rs`);
//!   in bf16 on a CPU with AMX, inputs and outputs multiples of 32 run on its tiles (`amx.rs`).
//! - CUDA (`cuda.rs`, `kernels/dense.cu`): the tiled GEMM core of `kernels/gemm_tile.cuh`, split-K for
//!   the long reductions; `kernels/dense_naive.cu` the reference kernels.
//!
//! `adam.rs`: the backward pass with the kernel's Adam step fused in, where the CPU's
//! streaming and AMX passes apply each band of the weight gradient as it is computed.

mod adam;
#[cfg(target_arch = "x86_64")]
pub mod amx;
mod cpu;
mod cuda;
pub mod streaming;

pub use adam::{DenseAdamOps, Kernel};
pub(crate) use adam::{GradientSink, backward_then_adam};

use crate::Result;
use crate::ops::{Storage, check_len};
use crate::profile::{Phase, Profiled, Timeline};

/// Shape of a dense layer `y[batch, out] = x[batch, in] @ w[in, out] + b[out]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DenseShape {
    pub batch: usize,
    pub inputs: usize,
    pub outputs: usize,
}

impl DenseShape {
    pub fn forward_flops(&self) -> f64 {
        2.0 * self.batch as f64 * self.inputs as f64 * self.outputs as f64
    }
}

impl DenseShape {
    pub fn check_forward(&self, x: usize, w: usize, b: usize, y: usize) -> Result<()> {
        check_len("dense input", x, self.batch * self.inputs)?;
        check_len("dense kernel", w, self.inputs * self.outputs)?;
        check_len("dense bias", b, self.outputs)?;
        check_len("dense output", y, self.batch * self.outputs)
    }
    /// `dx` is the input gradient's length when it is asked for.
    pub fn check_backward(
        &self,
        x: usize,
        w: usize,
        dy: usize,
        dx: Option<usize>,
        dw: usize,
        db: usize,
    ) -> Result<()> {
        check_len("dense input", x, self.batch * self.inputs)?;
        check_len("dense kernel", w, self.inputs * self.outputs)?;
        check_len("dense output gradient", dy, self.batch * self.outputs)?;
        check_len("dense kernel gradient", dw, self.inputs * self.outputs)?;
        check_len("dense bias gradient", db, self.outputs)?;
        match dx {
            Some(dx) => check_len("dense input gradient", dx, self.batch * self.inputs),
            None => Ok(()),
        }
    }
}

/// The dense-layer ops of a backend.
pub trait DenseOps: Storage {
    /// `y = x @ w + b`, then ReLU if `relu`.
    fn dense_forward(
        &self,
        s: &DenseShape,
        x: &Self::Buf,
        w: &Self::Buf,
        b: &Self::Buf,
        y: &mut Self::Buf,
        relu: bool,
    ) -> Result<()>;
    /// `dw = x^T @ dy`, `db = sum_rows(dy)`, and `dx = dy @ w^T` when `dx` is given.
    #[allow(clippy::too_many_arguments)]
    fn dense_backward(
        &self,
        s: &DenseShape,
        x: &Self::Buf,
        w: &Self::Buf,
        dy: &Self::Buf,
        dx: Option<&mut Self::Buf>,
        dw: &mut Self::Buf,
        db: &mut Self::Buf,
    ) -> Result<()>;
}

/// Under `--profile`: the op, timed as part of its phase of the step.
impl<B: DenseOps + Timeline> DenseOps for Profiled<'_, B> {
    fn dense_forward(
        &self,
        s: &DenseShape,
        x: &Self::Buf,
        w: &Self::Buf,
        b: &Self::Buf,
        y: &mut Self::Buf,
        relu: bool,
    ) -> Result<()> {
        self.enter(Phase::Forward)?;
        self.inner.dense_forward(s, x, w, b, y, relu)
    }
    fn dense_backward(
        &self,
        s: &DenseShape,
        x: &Self::Buf,
        w: &Self::Buf,
        dy: &Self::Buf,
        dx: Option<&mut Self::Buf>,
        dw: &mut Self::Buf,
        db: &mut Self::Buf,
    ) -> Result<()> {
        self.enter(Phase::Backward)?;
        self.inner.dense_backward(s, x, w, dy, dx, dw, db)
    }
}
