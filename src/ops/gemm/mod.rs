//! The GEMM core under the convolutions and the dense layers.
//!
//! - CPU (`cpu.rs`): a safe, bounds-checked front to the `gemm` crate.
//! - CUDA (`cuda.rs`; kernels/gemm_tile.cuh, gemm_naive.cuh, gemm_splitk.cu): the
//!   shared-memory-tiled, register-blocked SGEMM core whose kernels build.rs instantiates
//!   in kernels/conv2d.cu and kernels/dense.cu from the families of
//!   [`kernel_abi`](crate::ops::kernel_abi), the reference body of the naive kernels, the
//!   deterministic split-K reduction, and the planner that picks tile, load width and
//!   split-K per launch.

pub mod cpu;
pub(crate) mod cuda;

pub use cuda::{KernelChoice, Variant};
