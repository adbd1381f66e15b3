//! The CPU device: rayon over the images of a batch, scratch buffers reused across steps.
//! Generic over the element type so that the very same code is the f64 reference of the
//! gradient checks. Each op's CPU code is in its folder (`conv2d/cpu.rs`, ...); this file
//! holds the device and the helpers several ops share.

use std::any::TypeId;
use std::marker::PhantomData;
use std::sync::Mutex;

use std::time::Instant;

use crate::precision::Precision;
use crate::profile::{Mark, Timeline};
use crate::{Element, Result};

/// Below this many elements an elementwise loop is not worth splitting across threads.
pub(crate) const PARALLEL_MIN_ELEMENTS: usize = 1 << 15;

/// Which algorithms the CPU backend uses where more than one suits (convolutions, and dense
/// layers whose weights dwarf the batch): its fast paths, or the plain reference path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CpuPath {
    /// The fastest measured for the shape: the direct kernel for a 3x3 first layer over 1 or
    /// 3 channels, Winograd F(2x2, 3x3) for 3x3 layers with 16k channels in and out, the
    /// streaming passes for dense layers with 64k outputs (f32 on AVX-512 all), im2col +
    /// GEMM and GEMM for the rest.
    #[default]
    Auto,
    /// im2col + GEMM for every convolution and GEMM for every dense layer (timed and tested
    /// beside the fast paths).
    Reference,
}

impl CpuPath {
    /// What this path runs on this CPU, for `focalflow info` (`focalflow bench` names each
    /// layer's path).
    pub fn describe(self) -> String {
        match self {
            CpuPath::Reference => {
                "im2col + GEMM and GEMM for every layer (FOCALFLOW_CPU_PATH=reference)".into()
            }
            CpuPath::Auto if avx512() => "direct 3x3 first layers, Winograd 3x3 layers, \
                                          streaming dense layers (AVX-512), GEMM for the rest"
                .into(),
            CpuPath::Auto => "im2col + GEMM and GEMM for every layer: no AVX-512F here, which \
                              the direct, Winograd and streaming paths need"
                .into(),
        }
    }

    /// `FOCALFLOW_CPU_PATH`: `auto` (the default) or `reference` (im2col + GEMM and GEMM for
    /// every convolution and dense layer: the plain reference path, for comparisons).
    pub fn from_env() -> crate::Result<CpuPath> {
        match std::env::var("FOCALFLOW_CPU_PATH").ok().as_deref() {
            None | Some("") | Some("auto") => Ok(CpuPath::Auto),
            Some("reference") => Ok(CpuPath::Reference),
            Some(other) => Err(crate::Error::invalid(format!(
                "FOCALFLOW_CPU_PATH={other}: expected auto or reference"
            ))),
        }
    }
}

/// The instructions the bf16 products run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bf16Unit {
    /// AMX tiles (`TDPBF16PS`), where the CPU has them and Linux allows them: 15x the f32
    /// FMAs' multiply rate measured on a Xeon (`cargo bench --bench cpu_units`).
    Amx,
    /// AVX512_BF16 (`vdpbf16ps`): twice the f32 FMA's multiplies per instruction, though a
    /// Xeon issues it at a quarter of the FMA's rate (AMD's Zen 4 at the same rate).
    Avx512,
}

impl Bf16Unit {
    /// The fastest unit this CPU has (callers have checked AVX512_BF16).
    pub fn best() -> Bf16Unit {
        if crate::precision::cpu_has("amx-bf16") {
            Bf16Unit::Amx
        } else {
            Bf16Unit::Avx512
        }
    }

    /// As reports name it.
    pub fn name(self) -> &'static str {
        match self {
            Bf16Unit::Amx => "AMX",
            Bf16Unit::Avx512 => "AVX512_BF16",
        }
    }
}

pub struct CpuBackend<T> {
    /// Fast paths or the reference path (see [`CpuPath`]).
    pub(crate) path: CpuPath,
    /// `--precision`: the format of the products' operands where a layer has a path for it
    /// (f32 backends only; the f64 reference always multiplies in f64).
    pub(crate) precision: Precision,
    /// Where bf16 products run ([`Bf16Unit::best`] unless chosen).
    bf16_unit: Bf16Unit,
    /// Scratch buffers (im2col matrices, per-thread partial gradients), taken and returned
    /// by workers so that a training step allocates nothing after the first.
    scratch: Mutex<Vec<Vec<T>>>,
    _t: PhantomData<T>,
}

impl<T: Element> Default for CpuBackend<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Element> CpuBackend<T> {
    pub fn new() -> Self {
        Self::with_path(CpuPath::Auto)
    }

    /// The backend on the given path.
    pub fn with_path(path: CpuPath) -> Self {
        CpuBackend {
            path,
            precision: Precision::Fp32,
            bf16_unit: Bf16Unit::Avx512,
            scratch: Mutex::new(Vec::new()),
            _t: PhantomData,
        }
    }

    /// This backend with the products in `precision`, which the caller has checked this CPU
    /// runs ([`crate::precision::cpu_unsupported`]).
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        if precision == Precision::Bf16 {
            self.bf16_unit = Bf16Unit::best();
        }
        self
    }

    /// This backend with its bf16 products on `unit` (tests and benchmarks time each;
    /// `Amx` only where [`Bf16Unit::best`] says so).
    pub fn with_bf16_unit(mut self, unit: Bf16Unit) -> Self {
        assert!(
            unit == Bf16Unit::Avx512 || Bf16Unit::best() == Bf16Unit::Amx,
            "AMX asked for on a CPU without it"
        );
        self.bf16_unit = unit;
        self
    }

    /// Where the products run in bf16, if they do: asked for, on the fast paths (the
    /// reference path is f32), and this is an f32 backend on a CPU with AVX512_BF16.
    pub(crate) fn bf16_products(&self) -> Option<Bf16Unit> {
        (self.precision == Precision::Bf16
            && self.path == CpuPath::Auto
            && is_f32::<T>()
            && crate::precision::cpu_has("avx512bf16"))
        .then_some(self.bf16_unit)
    }

    /// A scratch buffer of exactly `len` elements (contents unspecified).
    pub(crate) fn take_scratch(&self, len: usize) -> Vec<T> {
        let mut pool = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        // Prefer the smallest buffer that is large enough, so big ones stay for big jobs.
        let best = pool
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= len)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        let mut buf = match best {
            Some(i) => pool.swap_remove(i),
            None => pool.pop().unwrap_or_default(),
        };
        buf.resize(len, T::zero());
        buf
    }

    pub(crate) fn give_scratch(&self, buf: Vec<T>) {
        self.scratch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(buf);
    }

    /// Images processed per rayon task: enough tasks to keep every thread busy.
    pub(crate) fn images_per_task(batch: usize) -> usize {
        batch.div_ceil(rayon::current_num_threads()).max(1)
    }
}

/// Whether this machine has AVX-512F, which the hand-vectorised paths (direct, Winograd,
/// streaming dense) need; detected at run time.
pub(crate) fn avx512() -> bool {
    crate::precision::cpu_has("avx512f")
}

/// True when `T` is f32: the element type of the hand-vectorised paths.
pub(crate) fn is_f32<T: Element>() -> bool {
    TypeId::of::<T>() == TypeId::of::<f32>()
}

/// `values` as f32, for a path taken only when [`is_f32`] holds.
pub(crate) fn f32_view<T: Element>(values: &[T]) -> &[f32] {
    assert!(is_f32::<T>(), "f32 path with another element type");
    // SAFETY: T is f32 (checked above), so the slice is one of f32 already.
    unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<f32>(), values.len()) }
}

/// [`f32_view`], mutable.
pub(crate) fn f32_view_mut<T: Element>(values: &mut [T]) -> &mut [f32] {
    assert!(is_f32::<T>(), "f32 path with another element type");
    // SAFETY: as in f32_view; the exclusive borrow carries over.
    unsafe { std::slice::from_raw_parts_mut(values.as_mut_ptr().cast::<f32>(), values.len()) }
}

/// `rows[r] = rows[r] + bias`, then ReLU if asked, for a row-major `[_, bias.len()]` block.
pub(crate) fn add_bias_relu<T: Element>(rows: &mut [T], bias: &[T], relu: bool) {
    for row in rows.chunks_exact_mut(bias.len()) {
        for (v, &b) in row.iter_mut().zip(bias) {
            let s = *v + b;
            *v = if relu && s <= T::zero() { T::zero() } else { s };
        }
    }
}

/// Column sums of a row-major `[_, out.len()]` block, added to `out`.
pub(crate) fn add_column_sums<T: Element>(rows: &[T], out: &mut [T]) {
    for row in rows.chunks_exact(out.len()) {
        for (o, &v) in out.iter_mut().zip(row) {
            *o += v;
        }
    }
}

/// Wall time: the CPU's ops run synchronously.
impl<T: Element> Timeline for CpuBackend<T> {
    fn mark(&self) -> Result<Mark> {
        Ok(Mark::Wall(Instant::now()))
    }
}
