//! The GEMM core under the convolutions and the dense layers.
//!
//! - CPU (`cpu.rs`): a safe, bounds-checked front to the `gemm` crate.
//! - CUDA (`cuda.rs`, `gemm_tile.cuh`, `gemm_naive.cuh`, `gemm_splitk.cu`): the
//!   shared-memory-tiled, register-blocked SGEMM core that conv2d.cu and dense.cu
//!   instantiate, the reference body of the naive kernels, the deterministic split-K
//!   reduction, and the planner that picks tile, load width and split-K per launch.

pub mod cpu;
pub mod cuda;

pub use cuda::{GemmArgs, KernelChoice, TILES, Tile, Variant};
