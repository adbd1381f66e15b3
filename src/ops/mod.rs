//! Every tensor operation a training step needs, one folder per op, as dfdx does: the op's
//! shape type, buffer checks, trait and `--profile` pass-through in `mod.rs`, the CPU code
//! in `cpu.rs`, the CUDA host code in `cuda.rs`; its kernels are in the top-level `kernels/`
//! (`kernels/<op>.cu`, as candle's `candle-kernels/src/`), and what the host and the kernels
//! share in [`kernel_abi`]. `tests/ops.rs` checks every op on every target.
//!
//! | folder          | trait          | what                                                  |
//! |-----------------|----------------|-------------------------------------------------------|
//! | `buffer`        | [`Storage`]    | device buffers: alloc, upload, read, copy             |
//! | `conv2d`        | [`Conv2dOps`]  | 2-D convolution forward, backward-data, backward-filter|
//! | `pool`          | [`PoolOps`]    | max-pooling forward and backward (with the ReLU fused) |
//! | `dense`         | [`DenseOps`]   | dense layer forward and backward                      |
//! | `relu`          | [`ReluOps`]    | the ReLU gradient (the forward is fused into conv/dense)|
//! | `softmax`       | [`SoftmaxOps`] | row-wise softmax forward and backward                 |
//! | `loss`          | [`LossOps`]    | every loss and its gradient                           |
//! | `adam`          | [`AdamOps`]    | the Adam update                                       |
//! | `counters`      | [`CounterOps`] | a pass's loss/accuracy totals, kept on the device     |
//! | `gemm`          | —              | the GEMM core under conv2d and dense (CPU and CUDA)   |
//! | `gather_batch`  | —              | the GPU data path's batch assembly (src/feed)         |
//!
//! A backend is a device that implements every op trait ([`Backend`] names that whole set):
//! [`CpuBackend`] (`cpu.rs`) and [`CudaBackend`] (`cuda.rs`: a GPU, or the emulator running
//! the same kernels). Those two files hold the device and what several ops share. Adding an op: a new
//! folder here, its `mod` line below, and its trait in [`Backend`]'s list.
//!
//! Conventions (Keras'): activations NHWC, conv kernels HWIO, dense kernels `[in, out]`,
//! all row-major. Buffers may be longer than an operation needs (a workspace sized for the
//! largest batch serves a smaller last batch); an operation reads and writes only the prefix
//! its shape describes, and *overwrites* its outputs (gradients are not accumulated).

pub mod adam;
#[cfg(target_arch = "x86_64")]
pub(crate) mod amx_tiles;
pub mod buffer;
pub mod conv2d;
pub mod counters;
pub mod cpu;
pub mod cuda;
pub mod dense;
pub mod gather_batch;
pub mod gemm;
pub mod kernel_abi;
pub(crate) mod launch;
pub mod loss;
pub mod pool;
pub mod relu;
pub mod softmax;

pub use adam::{AdamOps, AdamStep};
pub use buffer::Storage;
pub use conv2d::{Conv2dOps, ConvShape, Padding};
pub use counters::{CounterOps, StepFailure, StepTotals};
pub use cpu::{Bf16Unit, CpuBackend, CpuPath};
pub use cuda::CudaBackend;
pub use dense::{DenseAdamOps, DenseOps, DenseShape, Kernel};
pub use loss::LossOps;
pub use pool::{PoolOps, PoolShape};
pub use relu::ReluOps;
pub use softmax::SoftmaxOps;

use crate::Result;

/// Every operation of a training step on one device. `E` (from [`Storage`]) is the element
/// type (f32 for training; the CPU backend also runs in f64 for gradient checks); `Buf` a
/// device buffer of `E`. Implemented for every type that implements all the op traits.
pub trait Backend:
    Storage
    + Conv2dOps
    + PoolOps
    + DenseOps
    + DenseAdamOps
    + ReluOps
    + SoftmaxOps
    + LossOps
    + AdamOps
    + CounterOps
{
}

impl<B> Backend for B where
    B: Storage
        + Conv2dOps
        + PoolOps
        + DenseOps
        + DenseAdamOps
        + ReluOps
        + SoftmaxOps
        + LossOps
        + AdamOps
        + CounterOps
{
}

/// The op traits, for calling ops on a concrete backend: `use focalflow::ops::prelude::*`.
pub mod prelude {
    pub use super::{
        AdamOps, Backend, Conv2dOps, CounterOps, DenseAdamOps, DenseOps, LossOps, PoolOps, ReluOps,
        SoftmaxOps, Storage,
    };
}

/// Fails with a shape error naming `what` when a buffer of `have` elements is shorter than
/// the `needed` elements an operation touches. Shared by every backend, so that a wrong
/// buffer gives the same message on each.
pub fn check_len(what: &str, have: usize, needed: usize) -> Result<()> {
    if have < needed {
        return Err(crate::Error::Shape(format!(
            "{what} holds {have} elements, the operation needs {needed}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{Profiled, Profiler, nvtx};

    #[test]
    fn a_profiled_cpu_step_is_timed_by_phase_and_tabled() {
        let cpu = CpuBackend::<f32>::new();
        let prof = Profiler::new(true);
        let b = Profiled::new(&cpu, &prof);
        let x = b.upload(&[1.0, -2.0, 3.0]).unwrap();
        let mut g = b.upload(&[1.0, 1.0, 1.0]).unwrap();
        b.relu_backward(3, &x, &mut g).unwrap();
        assert_eq!(b.read(&g, 3).unwrap(), [1.0, 0.0, 1.0]);
        let mut p = b.zeros(3).unwrap();
        let (mut m, mut v) = (b.zeros(3).unwrap(), b.zeros(3).unwrap());
        let step = AdamStep {
            step_size: 0.1,
            one_minus_beta1: 0.1,
            one_minus_beta2: 0.001,
            epsilon: 1e-7,
        };
        b.adam_update(3, &step, &mut p, &g, &mut m, &mut v, None)
            .unwrap();
        prof.finish(&cpu).unwrap();
        let totals = prof.totals_ms();
        assert!(totals.iter().all(|(_, ms)| *ms >= 0.0));
        let table = prof.table("wall clock");
        for name in [
            "data",
            "forward",
            "loss",
            "backward",
            "optimizer",
            "readback",
            "total",
            "1 step(s)",
        ] {
            assert!(table.contains(name), "{table}");
        }
        // Without libnvToolsExt (CI), NVTX is a no-op and must not crash.
        nvtx::push(c"test");
        nvtx::pop();
    }
}
