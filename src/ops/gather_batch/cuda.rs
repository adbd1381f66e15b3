//! The batch gather on CUDA (kernels/gather_batch.cu), driven by src/feed/cuda.rs.

use crate::Result;
use crate::executor::{DeviceBuffer, Executor};
use crate::ops::kernel_abi::BATCH_THREADS;
use crate::ops::launch::{grid_stride, int};

/// The shape of the images and labels a gather reads and writes.
#[derive(Clone, Copy, Debug)]
pub struct BatchLayout {
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    pub classes: usize,
    /// The most images a batch holds (`x` and `y` are sized for it).
    pub batch_size: usize,
}

/// `x`, `y` = the images and one-hot labels named by `entries[first..first + count]` (bit
/// 31: mirror) and `labels[first..first + count]`, from the u8 set `images`.
///
/// # Safety
/// `entries` and `labels` must hold `first + count` values, each entry (without bit 31)
/// must be below the number of images in `images`, and `count <= layout.batch_size`, for
/// which `x` and `y` are sized.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gather_batch_u8(
    exec: &Executor,
    layout: &BatchLayout,
    images: &DeviceBuffer<u8>,
    entries: &DeviceBuffer<u32>,
    labels: &DeviceBuffer<i32>,
    first: usize,
    count: usize,
    x: &mut DeviceBuffer<f32>,
    y: &mut DeviceBuffer<f32>,
) -> Result<()> {
    let image_len = layout.height * layout.width * layout.channels;
    let values = count * image_len.max(layout.classes);
    // The kernel indexes a batch's values with 32-bit arithmetic.
    int(
        "values in a batch",
        layout.batch_size * image_len.max(layout.classes),
    )?;
    // SAFETY: gather_batch_u8(const u8*, const u32*, const int*, int x6, float*, float*)
    // reads what the caller vouches for and writes count images of x and count rows of y.
    unsafe {
        exec.launch_builder("gather_batch_u8", grid_stride(values, BATCH_THREADS))
            .arg(images)
            .arg(entries)
            .arg(labels)
            .arg(int("first image of the batch", first)?)
            .arg(count as i32)
            .arg(layout.height as i32)
            .arg(layout.width as i32)
            .arg(layout.channels as i32)
            .arg(layout.classes as i32)
            .arg(x)
            .arg(y)
            .launch()
    }
}
