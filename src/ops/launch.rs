//! Launch shapes and argument checks that the ops' CUDA host code shares. A leaf: it knows
//! the executor's launch configuration and the kernel ABI, and no op or device.

use crate::executor::LaunchConfig;
use crate::ops::kernel_abi::ROWS_PER_BLOCK;
use crate::{Error, Result};

/// Threads per block of the elementwise and pooling kernels (they read `blockDim`).
const ELEMENTWISE_THREADS: u32 = 256;
/// Most blocks of a grid-stride elementwise launch (enough to fill an H200 several times).
const MAX_ELEMENTWISE_BLOCKS: usize = 8192;
/// Grid cap of the row kernels (they loop over the remaining rows).
const MAX_ROW_BLOCKS: usize = 65_535;

/// The launch shape of the row kernels (loss, softmax): [`ROWS_PER_BLOCK`] warps per block,
/// one per row, grid-stride beyond the cap.
pub(crate) fn row_grid(rows: usize) -> LaunchConfig {
    let blocks = rows.div_ceil(ROWS_PER_BLOCK).clamp(1, MAX_ROW_BLOCKS);
    LaunchConfig::new(blocks as u32, 32 * ROWS_PER_BLOCK as u32)
}

/// One thread per element in blocks of ELEMENTWISE_THREADS, grid-stride beyond the cap.
pub(crate) fn elementwise_config(n: usize) -> LaunchConfig {
    grid_stride(n, ELEMENTWISE_THREADS)
}

/// One thread per element in blocks of `threads`, grid-stride beyond the cap.
pub(crate) fn grid_stride(n: usize, threads: u32) -> LaunchConfig {
    let blocks = n
        .div_ceil(threads as usize)
        .clamp(1, MAX_ELEMENTWISE_BLOCKS);
    LaunchConfig::new(blocks as u32, threads)
}

/// A size as the kernels' `int`; every tensor must have fewer than 2^31 elements.
pub fn int(what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| {
        Error::Shape(format!(
            "{what} is {v}: the CUDA kernels index with 32-bit ints (at most 2^31-1 elements per tensor); \
             use a smaller batch"
        ))
    })
}
