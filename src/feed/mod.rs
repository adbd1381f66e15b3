//! How batches reach the model: a [`BatchFeeder`] turns a pass over the data (the epoch's
//! shuffled order, or the validation images) into `x`/`y` buffers on the backend.
//!
//! - [`HostFeeder`] (the CPU backend, and any backend by default): a loader thread builds
//!   each f32 batch two ahead of the step, which writes it to the backend.
//! - The CUDA backend's feeders ([`cuda`]) move u8 pixels only: the whole
//!   set once into device memory when it fits `--device-cache`, else each batch through
//!   pinned staging; a kernel then gathers, flips, scales and one-hot encodes the batch.
//!
//! Every feeder makes the same batches: each batch's flips are [`flip_stream`] of its seed,
//! drawn by `ImageSet::fill_batch_augmented` on the host and by [`flip_decisions`] for the
//! device.

pub mod cuda;

use std::sync::mpsc;

use crate::data::{ImageSet, PixelStore, flip_stream};
use crate::ops::CudaBackend;
use crate::ops::kernel_abi::FLIP_BIT;
use crate::ops::{Backend, CpuBackend, Storage};
use crate::profile::{Phase, Profiled, Timeline};
use crate::rng::Rng;
use crate::{Error, Result};

/// One step's batch: its index in the pass, its number of images, and `x` (NHWC in [0, 1])
/// and one-hot `y` on the backend (buffers may be longer than the batch).
pub type BatchFn<'s, Buf> = dyn FnMut(usize, usize, &Buf, &Buf) -> Result<()> + 's;

/// What the run's line on its data path starts with (the rest is
/// [`BatchFeeder::describe`]); `bench --end-to-end` picks the line out of the run's log.
pub const DATA_PATH_LINE: &str = "data: ";

/// Assembles the batches of passes over one image set on a backend.
pub trait BatchFeeder<Buf> {
    /// How batches reach the model, for the run's first lines (after [`DATA_PATH_LINE`]).
    fn describe(&self) -> String;
    /// Calls `step` for each batch of `order` in turn (`batch_size` images, the last one
    /// possibly fewer), from batch `first` on (a resumed epoch); with `flip_seed`
    /// (`--augment flip`), images are mirrored as [`flip_decisions`] says.
    fn for_each_batch(
        &mut self,
        order: &[usize],
        flip_seed: Option<u64>,
        first: usize,
        step: &mut BatchFn<'_, Buf>,
    ) -> Result<()>;
}

/// A backend that training can feed: it makes the [`BatchFeeder`] of an image set.
pub trait Feeds: Backend<E = f32> + Sized {
    /// The feeder of batches of up to `batch_size` images of `data`; `cache` bounds the
    /// device memory the set may take.
    fn feeder<'a, P: PixelStore + 'a>(
        &'a self,
        data: &'a ImageSet<P>,
        batch_size: usize,
        cache: DeviceCache,
    ) -> Result<Box<dyn BatchFeeder<Self::Buf> + 'a>>;
}

/// The CPU: f32 batches built on the host (the cache does not apply).
impl Feeds for CpuBackend<f32> {
    fn feeder<'a, P: PixelStore + 'a>(
        &'a self,
        data: &'a ImageSet<P>,
        batch_size: usize,
        _cache: DeviceCache,
    ) -> Result<Box<dyn BatchFeeder<Vec<f32>> + 'a>> {
        Ok(Box::new(HostFeeder::new(self, data, batch_size)?))
    }
}

/// CUDA: the set resident on the device when it fits `cache`'s budget, else streamed.
impl Feeds for CudaBackend {
    fn feeder<'a, P: PixelStore + 'a>(
        &'a self,
        data: &'a ImageSet<P>,
        batch_size: usize,
        cache: DeviceCache,
    ) -> Result<Box<dyn BatchFeeder<crate::executor::DeviceBuffer<f32>> + 'a>> {
        // Multi-label batches are built on the host: the device gather writes one-hot rows.
        if data.multi.is_some() {
            return Ok(Box::new(HostFeeder::new(self, data, batch_size)?));
        }
        let budget = cache.budget(self.free_memory()?);
        if data.pixels.len() as u64 <= budget {
            Ok(Box::new(cuda::ResidentFeeder::new(self, data, batch_size)?))
        } else {
            Ok(Box::new(cuda::StreamingFeeder::new(
                self, data, batch_size, budget,
            )?))
        }
    }
}

/// `--device-cache`: how much device memory the u8 image set may take.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum DeviceCache {
    /// Half of the device memory free when training starts.
    #[default]
    Auto,
    /// Never: stream every batch from host memory.
    Off,
    /// At most this many bytes.
    Bytes(u64),
}

impl std::str::FromStr for DeviceCache {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(DeviceCache::Auto),
            "off" => Ok(DeviceCache::Off),
            _ => match s.parse::<f64>() {
                Ok(gib) if gib.is_finite() && gib >= 0.0 => {
                    Ok(DeviceCache::Bytes((gib * (1u64 << 30) as f64) as u64))
                }
                _ => Err(Error::invalid(format!(
                    "--device-cache {s}: expected auto, off or a size in GiB (e.g. 4 or 0.5)"
                ))),
            },
        }
    }
}

/// As `--device-cache` takes it: `auto`, `off` or GiB.
impl std::fmt::Display for DeviceCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceCache::Auto => f.write_str("auto"),
            DeviceCache::Off => f.write_str("off"),
            DeviceCache::Bytes(b) => write!(f, "{}", *b as f64 / (1u64 << 30) as f64),
        }
    }
}

impl DeviceCache {
    /// The bytes the set may take, given the device's free memory (`None`: unknown, then
    /// `auto` allows any size: the emulator's "device memory" is host memory).
    pub fn budget(self, free_bytes: Option<u64>) -> u64 {
        match self {
            DeviceCache::Auto => free_bytes.map_or(u64::MAX, |f| f / 2),
            DeviceCache::Off => 0,
            DeviceCache::Bytes(b) => b,
        }
    }
}

/// The flip seed of batch `n` of a pass whose flip seed is `pass_seed`.
fn batch_flip_seed(pass_seed: u64, n: usize) -> u64 {
    Rng::derive(pass_seed, n as u64).next_u64()
}

/// Whether each image of `order` is mirrored: batch `n`'s decisions are
/// [`flip_stream`] of its [`batch_flip_seed`], as the host batches draw them.
pub fn flip_decisions(order_len: usize, batch_size: usize, flip_seed: Option<u64>) -> Vec<bool> {
    let Some(seed) = flip_seed else {
        return vec![false; order_len];
    };
    let mut flips = Vec::with_capacity(order_len);
    for n in 0..order_len.div_ceil(batch_size.max(1)) {
        let in_batch = batch_size.min(order_len - n * batch_size);
        flips.extend(flip_stream(batch_flip_seed(seed, n)).take(in_batch));
    }
    flips
}

/// The entries of a pass for the gather kernel: `image(k) | FLIP_BIT` where image k of the
/// pass is mirrored. `image` maps the position in the pass to the image's index in the
/// buffer the kernel reads (the set on the device, or a staged batch).
pub fn pass_entries(
    order: &[usize],
    batch_size: usize,
    flip_seed: Option<u64>,
    image: impl Fn(usize) -> usize,
) -> Result<Vec<u32>> {
    let flips = flip_decisions(order.len(), batch_size, flip_seed);
    (0..order.len())
        .map(|k| {
            let i = image(k);
            if i as u64 >= u64::from(FLIP_BIT) {
                return Err(Error::invalid(format!(
                    "image {i}: the device data path indexes at most 2^31 images"
                )));
            }
            Ok(i as u32 | if flips[k] { FLIP_BIT } else { 0 })
        })
        .collect()
}

/// The labels of `order` (`labels` are the set's), as the gather kernel takes them.
pub fn pass_labels(labels: &[u32], order: &[usize]) -> Vec<i32> {
    order.iter().map(|&i| labels[i] as i32).collect()
}

/// The host data path: f32 batches built on a loader thread, written to the backend.
pub struct HostFeeder<'a, B: Backend<E = f32>, P: PixelStore> {
    backend: &'a B,
    data: &'a ImageSet<P>,
    batch_size: usize,
    x: B::Buf,
    y: B::Buf,
}

impl<'a, B: Backend<E = f32>, P: PixelStore> HostFeeder<'a, B, P> {
    /// A feeder of batches of up to `batch_size` images of `data`.
    pub fn new(backend: &'a B, data: &'a ImageSet<P>, batch_size: usize) -> Result<Self> {
        Ok(HostFeeder {
            backend,
            data,
            batch_size,
            x: backend.zeros(batch_size * data.shape.len())?,
            y: backend.zeros(batch_size * data.classes())?,
        })
    }
}

impl<B: Backend<E = f32>, P: PixelStore> BatchFeeder<B::Buf> for HostFeeder<'_, B, P> {
    fn describe(&self) -> String {
        "f32 batches built on the host, two ahead of the step".into()
    }

    fn for_each_batch(
        &mut self,
        order: &[usize],
        flip_seed: Option<u64>,
        first: usize,
        step: &mut BatchFn<'_, B::Buf>,
    ) -> Result<()> {
        let HostFeeder {
            backend,
            data,
            batch_size,
            x,
            y,
        } = self;
        host_batches(data, order, *batch_size, flip_seed, first, |n, b| {
            backend.write(x, &b.x)?;
            backend.write(y, &b.y)?;
            step(n, b.len, x, y)
        })
    }
}

/// A batch on the host, assembled ahead of time by the loader thread.
pub struct HostBatch {
    /// Images in the batch.
    pub len: usize,
    pub x: Vec<f32>,
    pub y: Vec<f32>,
}

/// Assembles the f32 batches of `order` from batch `first` on, on a separate thread (two
/// ahead), and hands each to `step`, so the step does not wait for the u8 -> f32
/// conversion. With `flip_seed`, images are flipped at random (`--augment flip`), seeded
/// per batch.
pub fn host_batches<P: PixelStore>(
    data: &ImageSet<P>,
    order: &[usize],
    batch_size: usize,
    flip_seed: Option<u64>,
    first: usize,
    mut step: impl FnMut(usize, &HostBatch) -> Result<()>,
) -> Result<()> {
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::sync_channel::<HostBatch>(2);
        let (recycle_tx, recycle_rx) = mpsc::channel::<HostBatch>();
        scope.spawn(move || {
            for (n, chunk) in order.chunks(batch_size).enumerate().skip(first) {
                let mut b = recycle_rx.try_recv().unwrap_or(HostBatch {
                    len: 0,
                    x: Vec::new(),
                    y: Vec::new(),
                });
                b.len = chunk.len();
                let flip = flip_seed.map(|s| batch_flip_seed(s, n));
                data.fill_batch_augmented(chunk, flip, &mut b.x, &mut b.y);
                if tx.send(b).is_err() {
                    return; // the consumer stopped early (an error)
                }
            }
        });
        for (i, batch) in rx.iter().enumerate() {
            step(first + i, &batch)?;
            let _ = recycle_tx.send(batch);
        }
        Ok(())
    })
}

impl<B: Feeds + Timeline> Feeds for Profiled<'_, B> {
    /// The inner backend's feeder, its batch assembly counted as data loading.
    fn feeder<'f, P: PixelStore + 'f>(
        &'f self,
        data: &'f ImageSet<P>,
        batch_size: usize,
        cache: DeviceCache,
    ) -> Result<Box<dyn BatchFeeder<B::Buf> + 'f>> {
        Ok(Box::new(ProfiledFeeder {
            inner: self.inner.feeder(data, batch_size, cache)?,
            profiled: self,
        }))
    }
}

/// A feeder whose work between steps (gathering the next batch) is the data phase.
struct ProfiledFeeder<'f, 'a, B: Backend> {
    inner: Box<dyn BatchFeeder<B::Buf> + 'f>,
    profiled: &'f Profiled<'a, B>,
}

impl<B: Backend<E = f32> + Timeline> BatchFeeder<B::Buf> for ProfiledFeeder<'_, '_, B> {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn for_each_batch(
        &mut self,
        order: &[usize],
        flip_seed: Option<u64>,
        first: usize,
        step: &mut BatchFn<'_, B::Buf>,
    ) -> Result<()> {
        let profiled = self.profiled;
        profiled.enter(Phase::Data)?;
        self.inner
            .for_each_batch(order, flip_seed, first, &mut |n, count, x, y| {
                step(n, count, x, y)?;
                profiled.enter(Phase::Data)
            })
    }
}
