//! The CUDA device: the ops over the kernel executor ([`Executor`]), so the same host code
//! drives a GPU (`cuda`) or the CPU emulator running the very same kernel sources
//! (`cuda-emu`). Each op's host code is in its folder (`conv2d/cuda.rs`, ...); this file
//! holds the device, its reusable state and the launch helpers several ops share.
//!
//! Parameters, activations, gradients and optimizer state live in device buffers; nothing
//! comes back to the host inside a step except what [`Storage::read`](crate::ops::Storage::read)
//! and [`CounterOps::read_counters`](crate::ops::CounterOps::read_counters) ask for. The only scratch memory, the split-K workspace of
//! the filter/dense gradients, is allocated once at its largest size and reused.
//!
//! [`Variant::Naive`] swaps the GEMM-shaped ops for one-thread-per-output reference kernels
//! (`conv2d_naive.cu`, `dense_naive.cu`), for validation and timing beside the tiled ones.

use std::sync::Mutex;

use crate::executor::{DeviceBuffer, Executor, LaunchConfig};
use crate::ops::check_len;
use crate::ops::gemm::cuda::{Gemm, GemmArgs, KernelChoice, Op, Planner, Variant};
use crate::ops::loss::cuda::LossKernels;
use crate::profile::{Mark, Timeline};
use crate::{Error, Result};

/// Threads per block of the elementwise and pooling kernels.
const ELEMENTWISE_THREADS: u32 = 256;
/// Most blocks of a grid-stride elementwise launch (enough to fill an H200 several times).
const MAX_ELEMENTWISE_BLOCKS: usize = 8192;

/// The CUDA backend over a GPU or the emulator.
pub struct CudaBackend {
    pub(crate) exec: Executor,
    /// Launch shapes; the kernel choice can be changed between ops (`set_choice`).
    planner: Mutex<Planner>,
    /// Split-K partial sums; grown to the largest need, then reused by every step.
    workspace: Mutex<Option<DeviceBuffer<f32>>>,
    /// The loss kernels' reusable device state (per-row sums, result, class weights).
    pub(crate) loss_state: Mutex<LossKernels>,
}

impl CudaBackend {
    /// The backend on `exec` with the tiled kernels.
    pub fn new(exec: Executor) -> Self {
        Self::with_variant(exec, Variant::Tiled)
    }

    /// The backend on `exec` with the given implementation of the GEMM-shaped ops.
    pub fn with_variant(exec: Executor, variant: Variant) -> Self {
        Self::with_choice(exec, variant, KernelChoice::default())
    }

    /// The backend on `exec` with the given implementation of the GEMM-shaped ops and
    /// overrides of the tiled kernels' automatic choice (to validate and time them all).
    pub fn with_choice(exec: Executor, variant: Variant, choice: KernelChoice) -> Self {
        let target_blocks = match &exec {
            // A few resident blocks per SM (the tiled kernels fit two of 256 threads).
            Executor::Cuda(c) => (c.info().multiprocessors.max(1) as usize) * 4,
            // The emulator has a handful of OS threads; a small target still makes the
            // tests exercise split-K on small shapes.
            Executor::Emu(_) => 16,
        };
        CudaBackend {
            exec,
            planner: Mutex::new(Planner {
                variant,
                target_blocks,
                choice,
            }),
            workspace: Mutex::new(None),
            loss_state: Mutex::new(LossKernels::new()),
        }
    }

    /// The executor the kernels run on.
    pub fn executor(&self) -> &Executor {
        &self.exec
    }

    fn planner(&self) -> Planner {
        *self.planner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn variant(&self) -> Variant {
        self.planner().variant
    }

    pub fn choice(&self) -> KernelChoice {
        self.planner().choice
    }

    /// Changes the implementation and kernel choice of later GEMM-shaped ops (one executor,
    /// so one module load, can then validate or time every variant).
    pub fn set_choice(&self, variant: Variant, choice: KernelChoice) {
        let mut p = self.planner.lock().unwrap_or_else(|e| e.into_inner());
        p.variant = variant;
        p.choice = choice;
    }

    /// Launches one GEMM-shaped kernel (and its split-K reduction), growing the workspace
    /// first if it needs more.
    ///
    /// # Safety
    /// The pointers in `args` must be valid for the extents its sizes describe.
    pub(crate) unsafe fn gemm(&self, op: Op, args: GemmArgs, vector: bool) -> Result<()> {
        let g = Gemm { op, args, vector };
        let planner = self.planner();
        let need = planner.workspace_len(&g);
        let mut ws = self.workspace.lock().unwrap_or_else(|e| e.into_inner());
        if need > 0 && ws.as_ref().is_none_or(|w| w.len() < need) {
            *ws = None; // free the old one first
            *ws = Some(self.exec.alloc::<f32>(need)?);
        }
        // SAFETY: forwarded to the caller; the workspace holds `need` floats.
        unsafe { planner.launch(&self.exec, &g, ws.as_mut()) }
    }

    /// `p[..n] = value`.
    pub(crate) fn fill(&self, p: &mut DeviceBuffer<f32>, n: usize, value: f32) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        check_len("buffer", p.len(), n)?;
        let cfg = elementwise_config(n);
        // SAFETY: fill_f32(float*, int, float) writes the first n elements of p.
        unsafe {
            self.exec
                .launch_builder("fill_f32", cfg)
                .arg(p)
                .arg(int("fill length", n)?)
                .arg(value)
                .launch()
        }
    }
}

/// Rows per block of the row kernels (one warp per row): `LOSS_ROWS_PER_BLOCK` in
/// loss/loss.cu and `SOFTMAX_ROWS_PER_BLOCK` in softmax/softmax.cu.
pub const ROWS_PER_BLOCK: usize = 4;
/// Grid cap of the row kernels (they loop over the remaining rows).
const MAX_ROW_BLOCKS: usize = 65_535;

/// The launch shape of the row kernels: [`ROWS_PER_BLOCK`] warps per block, one per row,
/// grid-stride beyond the cap.
pub(crate) fn row_grid(rows: usize) -> LaunchConfig {
    let blocks = rows.div_ceil(ROWS_PER_BLOCK).clamp(1, MAX_ROW_BLOCKS);
    LaunchConfig::new(blocks as u32, 32 * ROWS_PER_BLOCK as u32)
}

/// One thread per element in blocks of ELEMENTWISE_THREADS, grid-stride beyond the cap.
pub(crate) fn elementwise_config(n: usize) -> LaunchConfig {
    let blocks = n
        .div_ceil(ELEMENTWISE_THREADS as usize)
        .clamp(1, MAX_ELEMENTWISE_BLOCKS);
    LaunchConfig::new(blocks as u32, ELEMENTWISE_THREADS)
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

/// CUDA events on the backend's stream.
impl Timeline for CudaBackend {
    fn mark(&self) -> Result<Mark> {
        self.executor().record_event().map(Mark::Device)
    }
}
