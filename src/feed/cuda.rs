//! The device data path (see [`crate::feed`]): only u8 pixels cross the bus, and one kernel
//! (`gather_batch_u8`, src/ops/gather_batch/) turns them into a batch: it gathers the images by
//! the pass's entries, mirrors those marked for `--augment flip`, scales by 1/255 and writes
//! the one-hot labels.
//!
//! - [`ResidentFeeder`]: the whole u8 set is uploaded once (in chunks, through two pinned
//!   staging buffers, so reading the next chunk overlaps the copy of the last); a pass then
//!   uploads its entries and labels (a few bytes per image) and each step is one launch.
//! - [`StreamingFeeder`]: for sets larger than the `--device-cache` budget. Each batch's
//!   images are copied from the (memory-mapped) set into one of two pinned staging buffers
//!   while the device runs the previous steps, then copied to the device without blocking
//!   the host; the host only waits when it comes back to a staging buffer whose copy has
//!   not finished.

use rayon::prelude::*;

use crate::data::{ImageSet, PixelStore};
use crate::executor::{DeviceBuffer, Executor, Staging};
use crate::feed::{BatchFeeder, BatchFn, pass_entries, pass_labels};
use crate::ops::CudaBackend;
use crate::ops::gather_batch::cuda::{BatchLayout, gather_batch_u8};
use crate::{Error, Result};

/// Bytes per chunk of the one-time upload of a resident set.
const UPLOAD_CHUNK: usize = 64 << 20;

/// Buffers shared by both feeders: the pass's entries and labels, and the batch.
struct Batch<'a> {
    exec: &'a Executor,
    layout: BatchLayout,
    /// Images in the current pass (the entry buffers may be longer, from a larger pass).
    pass_len: usize,
    entries: DeviceBuffer<u32>,
    labels: DeviceBuffer<i32>,
    x: DeviceBuffer<f32>,
    y: DeviceBuffer<f32>,
}

impl<'a> Batch<'a> {
    fn new<P: PixelStore>(
        exec: &'a Executor,
        data: &ImageSet<P>,
        batch_size: usize,
    ) -> Result<Self> {
        Ok(Batch {
            exec,
            layout: BatchLayout {
                height: data.shape.height,
                width: data.shape.width,
                channels: data.shape.channels,
                classes: data.classes(),
                batch_size,
            },
            pass_len: 0,
            entries: exec.alloc_zeros(0)?,
            labels: exec.alloc_zeros(0)?,
            x: exec.alloc_zeros(batch_size * data.shape.len())?,
            y: exec.alloc_zeros(batch_size * data.classes())?,
        })
    }

    /// Uploads a pass's entries and labels (once per pass), growing their buffers.
    fn start_pass(&mut self, entries: &[u32], labels: &[i32]) -> Result<()> {
        if self.entries.len() < entries.len() {
            self.entries = self.exec.alloc(entries.len())?;
            self.labels = self.exec.alloc(labels.len())?;
        }
        self.exec.copy_htod(entries, &mut self.entries)?;
        self.exec.copy_htod(labels, &mut self.labels)?;
        self.pass_len = entries.len();
        Ok(())
    }

    /// Gathers `count` images from `images` by the pass's entries `first..first + count`
    /// into `x` and `y`.
    fn gather(&mut self, images: &DeviceBuffer<u8>, first: usize, count: usize) -> Result<()> {
        if first + count > self.pass_len || count > self.layout.batch_size {
            return Err(Error::Shape(format!(
                "batch {first}..{} of a pass of {} images (batches of {})",
                first + count,
                self.pass_len,
                self.layout.batch_size
            )));
        }
        // SAFETY: the entries and labels first..first + count exist (checked above), each
        // entry is below the image count of `images` (pass_entries builds them from indices
        // into it), and x and y are sized for batch_size >= count.
        unsafe {
            gather_batch_u8(
                self.exec,
                &self.layout,
                images,
                &self.entries,
                &self.labels,
                first,
                count,
                &mut self.x,
                &mut self.y,
            )
        }
    }
}

/// The whole u8 set in device memory.
pub struct ResidentFeeder<'a> {
    batch: Batch<'a>,
    set: DeviceBuffer<u8>,
    /// The set's labels on the host: a pass uploads those of its order.
    labels: Vec<u32>,
}

impl<'a> ResidentFeeder<'a> {
    /// Uploads `data`'s pixels (chunked through two pinned buffers).
    pub fn new<P: PixelStore>(
        backend: &'a CudaBackend,
        data: &ImageSet<P>,
        batch_size: usize,
    ) -> Result<Self> {
        Self::with_upload_chunk(backend, data, batch_size, UPLOAD_CHUNK)
    }

    /// [`Self::new`] with uploads of `chunk` bytes (tests use small ones).
    pub fn with_upload_chunk<P: PixelStore>(
        backend: &'a CudaBackend,
        data: &ImageSet<P>,
        batch_size: usize,
        chunk: usize,
    ) -> Result<Self> {
        let exec = backend.executor();
        let pixels: &[u8] = &data.pixels;
        let chunk = chunk.max(1);
        let mut set = exec.alloc::<u8>(pixels.len())?;
        let mut staging = [
            exec.staging(chunk.min(pixels.len()))?,
            exec.staging(chunk.min(pixels.len()))?,
        ];
        for (n, part) in pixels.chunks(chunk).enumerate() {
            let stage = &mut staging[n % 2];
            stage.bytes_mut()?[..part.len()].copy_from_slice(part);
            stage.upload(exec, part.len(), &mut set, n * chunk)?;
        }
        Ok(ResidentFeeder {
            batch: Batch::new(exec, data, batch_size)?,
            set,
            labels: data.labels.clone(),
        })
    }
}

impl BatchFeeder<DeviceBuffer<f32>> for ResidentFeeder<'_> {
    fn describe(&self) -> String {
        format!(
            "the u8 set ({} images, {:.1} MiB) resident on the device; batches gathered, flipped and scaled there",
            self.labels.len(),
            self.set.len() as f64 / (1u64 << 20) as f64
        )
    }

    fn for_each_batch(
        &mut self,
        order: &[usize],
        flip_seed: Option<u64>,
        first: usize,
        step: &mut BatchFn<'_, DeviceBuffer<f32>>,
    ) -> Result<()> {
        let b = &mut self.batch;
        let images = self.labels.len();
        if let Some(&bad) = order.iter().find(|&&i| i >= images) {
            return Err(Error::Shape(format!(
                "image {bad} of a pass over a set of {images} images"
            )));
        }
        // The labels come with the pass (not the set), so both feeders share the kernel.
        b.start_pass(
            &pass_entries(order, b.layout.batch_size, flip_seed, |k| order[k])?,
            &pass_labels(&self.labels, order),
        )?;
        for (n, start) in (0..order.len())
            .step_by(b.layout.batch_size)
            .enumerate()
            .skip(first)
        {
            let count = b.layout.batch_size.min(order.len() - start);
            b.gather(&self.set, start, count)?;
            step(n, count, &b.x, &b.y)?;
        }
        Ok(())
    }
}

/// Batches streamed from host memory through pinned staging.
pub struct StreamingFeeder<'a, P: PixelStore> {
    batch: Batch<'a>,
    data: &'a ImageSet<P>,
    staging: [Staging; 2],
    staged: [DeviceBuffer<u8>; 2],
    budget: u64,
}

impl<'a, P: PixelStore> StreamingFeeder<'a, P> {
    /// `budget`: the `--device-cache` bytes the set did not fit in (for the description).
    pub fn new(
        backend: &'a CudaBackend,
        data: &'a ImageSet<P>,
        batch_size: usize,
        budget: u64,
    ) -> Result<Self> {
        let exec = backend.executor();
        let bytes = batch_size * data.shape.len();
        Ok(StreamingFeeder {
            batch: Batch::new(exec, data, batch_size)?,
            data,
            staging: [exec.staging(bytes)?, exec.staging(bytes)?],
            staged: [exec.alloc(bytes)?, exec.alloc(bytes)?],
            budget,
        })
    }
}

impl<P: PixelStore> BatchFeeder<DeviceBuffer<f32>> for StreamingFeeder<'_, P> {
    fn describe(&self) -> String {
        format!(
            "u8 batches streamed through pinned staging (the set, {:.1} MiB, exceeds the --device-cache budget of {:.1} MiB)",
            self.data.pixels.len() as f64 / (1u64 << 20) as f64,
            self.budget as f64 / (1u64 << 20) as f64
        )
    }

    fn for_each_batch(
        &mut self,
        order: &[usize],
        flip_seed: Option<u64>,
        first: usize,
        step: &mut BatchFn<'_, DeviceBuffer<f32>>,
    ) -> Result<()> {
        let StreamingFeeder {
            batch: b,
            data,
            staging,
            staged,
            ..
        } = self;
        let batch_size = b.layout.batch_size;
        // Entry k names its place in the staged batch; the labels follow the pass.
        let entries = pass_entries(order, batch_size, flip_seed, |k| k % batch_size)?;
        b.start_pass(&entries, &pass_labels(&data.labels, order))?;
        let image_len = data.shape.len();
        for (n, chunk) in order.chunks(batch_size).enumerate().skip(first) {
            let (stage, device) = (&mut staging[n % 2], &mut staged[n % 2]);
            let bytes = stage.bytes_mut()?;
            bytes[..chunk.len() * image_len]
                .par_chunks_mut(image_len)
                .zip(chunk)
                .for_each(|(dst, &i)| dst.copy_from_slice(data.image(i)));
            stage.upload(b.exec, chunk.len() * image_len, device, 0)?;
            b.gather(device, n * batch_size, chunk.len())?;
            step(n, chunk.len(), &b.x, &b.y)?;
        }
        Ok(())
    }
}
