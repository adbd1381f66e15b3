//! Host side of the GEMM-shaped kernels (kernels/gemm_tile.cuh and the kernels built on
//! it: kernels/conv2d.cu, kernels/dense.cu, their naive versions, kernels/gemm_splitk.cu):
//! the choice of tile shape, load width and split-K, the split-K workspace, and the
//! launches. The argument block, the tile shapes and the kernel families are in
//! [`kernel_abi`](crate::ops::kernel_abi), shared with the kernels.

use crate::executor::{DeviceBuffer, Executor, LaunchConfig};
use crate::ops::cuda::CudaBackend;
use crate::ops::kernel_abi::{
    CONV_BACKWARD_DATA, CONV_BACKWARD_FILTER, CONV_FORWARD, DENSE_BACKWARD_INPUT,
    DENSE_BACKWARD_WEIGHTS, DENSE_FORWARD, GEMM_BK, GEMM_THREADS, GEMM_VECTOR_WIDTH, GemmArgs,
    GemmFamily, GemmMath, GemmTile, M32N64, M64N32, N16, N32, N64, S32, S64,
};
use crate::ops::launch::int;
use crate::precision::Precision;
use crate::{Error, Result};

// SAFETY: `repr(C)`, only integer fields, and no padding (6 * 8 + 22 * 4 = 136 bytes, a
// multiple of the 8-byte alignment), so every bit pattern is valid and all bytes are
// initialised.
unsafe impl bytemuck::Zeroable for GemmArgs {}
// SAFETY: as above.
unsafe impl bytemuck::Pod for GemmArgs {}
const _: () = assert!(size_of::<GemmArgs>() == 136);

/// The argument blocks of the conv and dense ops, filled in one place.
impl GemmArgs {
    /// `out[m, n] = A[m, k] * B[k, n]` with leading dimensions `[lda, ldb, ldo]` (the
    /// loaders that gather A or B ignore theirs), no bias, no ReLU, no bias-gradient row.
    /// The caller has checked that every size fits an `int`.
    pub(crate) fn product(
        a: u64,
        b: u64,
        out: u64,
        [m, n, k]: [usize; 3],
        [lda, ldb, ldo]: [usize; 3],
    ) -> Self {
        GemmArgs {
            a,
            b,
            out,
            m: m as i32,
            n: n as i32,
            k: k as i32,
            lda: lda as i32,
            ldb: ldb as i32,
            ldo: ldo as i32,
            m_split: m as i32,
            ones_row: -1,
            ..GemmArgs::default()
        }
    }

    /// Adds `bias[n]` and then ReLU (when `relu`) in the epilogue.
    pub(crate) fn with_bias(self, bias: u64, relu: bool) -> Self {
        GemmArgs {
            bias,
            relu: relu as i32,
            ..self
        }
    }

    /// A's last row is all ones, and C's last row (the bias gradient: the column sums of
    /// B) goes to `out2`.
    pub(crate) fn with_bias_gradient_row(self, out2: u64) -> Self {
        GemmArgs {
            out2,
            m_split: self.m - 1,
            ones_row: self.m - 1,
            ..self
        }
    }
}

/// Whether the loaders may read A and B as vectors of [`GEMM_VECTOR_WIDTH`] floats (the
/// `_v` kernels' float4 loads): every contiguous dimension in `dims` is a multiple of it.
pub(crate) fn vector_loads(dims: &[usize]) -> bool {
    dims.iter().all(|d| d.is_multiple_of(GEMM_VECTOR_WIDTH))
}

/// Which family of kernels a GEMM launch uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    ConvForward,
    ConvBackwardData,
    ConvBackwardFilter,
    DenseForward,
    DenseBackwardWeights,
    DenseBackwardInput,
}

impl Op {
    /// The family's kernels, as the kernel ABI lists them.
    pub fn family(self) -> &'static GemmFamily {
        match self {
            Op::ConvForward => &CONV_FORWARD,
            Op::ConvBackwardData => &CONV_BACKWARD_DATA,
            Op::ConvBackwardFilter => &CONV_BACKWARD_FILTER,
            Op::DenseForward => &DENSE_FORWARD,
            Op::DenseBackwardWeights => &DENSE_BACKWARD_WEIGHTS,
            Op::DenseBackwardInput => &DENSE_BACKWARD_INPUT,
        }
    }
}

/// Which implementation of the GEMM-shaped ops runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Variant {
    /// Shared-memory tiles, register blocking, float4 loads, split-K (the one used).
    #[default]
    Tiled,
    /// One thread per output (kernels/conv2d_naive.cu, kernels/dense_naive.cu): the simple
    /// reference variant.
    Naive,
}

/// The tile for a GEMM of `m x n` in the family `op` (the kernels exist for these pairs).
pub fn choose_tile(op: Op, m: usize, n: usize) -> GemmTile {
    match op {
        // Many output pixels, few channels: 128 rows by as few columns as the channels need.
        Op::ConvForward | Op::ConvBackwardData => match n {
            0..=16 => N16,
            17..=32 => N32,
            _ => N64,
        },
        // A (patch+1) x filters matrix, or a batch-row matrix: a tile no wider than the
        // matrix in either direction where possible (the 32-wide tiles use 2x2 register
        // blocks, the others 4x2, 2x4 or 4x4: more FMAs per shared-memory load).
        Op::ConvBackwardFilter
        | Op::DenseForward
        | Op::DenseBackwardWeights
        | Op::DenseBackwardInput => match (m > 32, n > 32) {
            (true, true) => S64,
            (true, false) => M64N32,
            (false, true) => M32N64,
            (false, false) => S32,
        },
    }
}

/// One GEMM launch, described in the terms of gemm_tile.cuh.
pub struct Gemm {
    pub op: Op,
    pub args: GemmArgs,
    /// float4 loads are valid for this shape (the host checked the contiguous dimensions).
    pub vector: bool,
}

/// Overrides of the automatic kernel choice, to validate and time every variant (tests,
/// op timings); the default is the automatic choice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelChoice {
    /// Use this tile (a name of [`GEMM_TILES`](crate::ops::kernel_abi::GEMM_TILES)) for the
    /// op families that have it.
    pub tile: Option<&'static str>,
    /// Scalar loads even where float4 loads are possible.
    pub scalar: bool,
}

/// How the launches of one backend are shaped.
#[derive(Clone, Copy, Debug)]
pub struct Planner {
    pub variant: Variant,
    /// Blocks that fill the device (a few per SM): below this, a long K is split.
    pub target_blocks: usize,
    pub choice: KernelChoice,
    /// The tiled kernels' arithmetic (`--precision`; the naive ones are always f32).
    pub math: GemmMath,
}

impl GemmMath {
    /// The arithmetic of `precision`'s products.
    pub fn of(precision: Precision) -> GemmMath {
        match precision {
            Precision::Fp32 => GemmMath::Fma,
            Precision::Tf32 => GemmMath::Tf32,
            Precision::Bf16 => GemmMath::Bf16,
        }
    }
}

/// Smallest K range of one split-K slice.
const MIN_SPLIT_K: usize = 2 * GEMM_BK;

impl Planner {
    /// The tile `g` runs with: the override if its family has it, else [`choose_tile`].
    pub fn tile_for(&self, op: Op, m: usize, n: usize) -> GemmTile {
        self.choice
            .tile
            .and_then(|name| op.family().tiles.iter().find(|t| t.name == name).copied())
            .unwrap_or_else(|| choose_tile(op, m, n))
    }

    /// `(slices, k per slice)` for a GEMM of `tiles` output tiles and depth `k`.
    pub fn split_k(&self, tiles: usize, k: usize) -> (usize, usize) {
        if k == 0 || tiles * 2 >= self.target_blocks || k < 2 * MIN_SPLIT_K {
            return (1, k.max(1));
        }
        let want = self.target_blocks.div_ceil(tiles);
        let slices = want.min(k / MIN_SPLIT_K).clamp(1, 65535);
        let chunk = k.div_ceil(slices).div_ceil(GEMM_BK) * GEMM_BK;
        (k.div_ceil(chunk), chunk)
    }

    /// Floats of split-K workspace that `g` needs (0 when it is not split).
    pub fn workspace_len(&self, g: &Gemm) -> usize {
        if self.variant == Variant::Naive {
            return 0;
        }
        let a = &g.args;
        let tile = self.tile_for(g.op, a.m as usize, a.n as usize);
        let tiles = (a.m as usize).div_ceil(tile.bm) * (a.n as usize).div_ceil(tile.bn);
        let (slices, _) = self.split_k(tiles, a.k as usize);
        if slices > 1 {
            slices * a.m as usize * a.n as usize
        } else {
            0
        }
    }

    /// Launches `g` (and its split-K reduction) on `exec`; `workspace` must hold
    /// [`Planner::workspace_len`] floats.
    ///
    /// # Safety
    /// The pointers in `g.args` must be valid for the extents its sizes describe.
    pub unsafe fn launch(
        &self,
        exec: &Executor,
        g: &Gemm,
        workspace: Option<&mut DeviceBuffer<f32>>,
    ) -> Result<()> {
        let mut args = g.args;
        let (m, n, k) = (args.m as usize, args.n as usize, args.k as usize);
        if m == 0 || n == 0 {
            return Ok(());
        }
        if self.variant == Variant::Naive {
            let name = format!("{}_naive", g.op.family().prefix);
            let blocks = (m * n).div_ceil(GEMM_THREADS as usize).min(65535) as u32;
            let cfg = LaunchConfig::new(blocks, GEMM_THREADS);
            // SAFETY: forwarded to the caller; the kernel takes one GemmArgs.
            return unsafe { exec.launch_builder(&name, cfg).arg_pod(&args).launch() };
        }
        let tile = self.tile_for(g.op, m, n);
        let (mt, nt) = (m.div_ceil(tile.bm), n.div_ceil(tile.bn));
        let (slices, chunk) = self.split_k(mt * nt, k);
        args.k_chunk = int("split-K chunk", chunk)?;
        let name =
            g.op.family()
                .kernel_name(&tile, g.vector && !self.choice.scalar, self.math);
        let grid = (int("row tiles", mt)? as u32, nt as u32, slices as u32);
        let cfg = LaunchConfig::new(grid, GEMM_THREADS);
        if slices == 1 {
            args.partial = 0;
            // SAFETY: forwarded to the caller.
            return unsafe { exec.launch_builder(&name, cfg).arg_pod(&args).launch() };
        }
        let ws = workspace
            .ok_or_else(|| Error::Device(format!("{name}: split-K without a workspace")))?;
        let need = slices * m * n;
        if ws.len() < need {
            return Err(Error::Device(format!(
                "{name}: split-K workspace of {} floats, {need} needed",
                ws.len()
            )));
        }
        int("split-K workspace", need)?;
        args.partial = ws.device_ptr();
        // SAFETY: forwarded to the caller; the workspace holds slices * m * n floats.
        unsafe { exec.launch_builder(&name, cfg).arg_pod(&args).launch()? };
        let blocks = (m * n).div_ceil(GEMM_THREADS as usize).min(4096) as u32;
        let reduce = LaunchConfig::new(blocks, GEMM_THREADS);
        // SAFETY: as above; the reduction reads the partials the launch above wrote.
        unsafe {
            exec.launch_builder("gemm_splitk_reduce", reduce)
                .arg_pod(&args)
                .arg(slices as i32)
                .launch()
        }
    }
}

/// Blocks that fill the device `exec`: below this, a GEMM splits a long K.
fn target_blocks(exec: &Executor) -> usize {
    match exec {
        // A few resident blocks per SM (the tiled kernels fit two of 256 threads).
        Executor::Cuda(c) => (c.info().multiprocessors.max(1) as usize) * 4,
        // The emulator has a handful of OS threads; a small target still makes the tests
        // exercise split-K on small shapes.
        Executor::Emu(_) => 16,
    }
}

/// The GEMM's state on a CUDA backend: which kernels run, and the split-K workspace
/// (grown to the largest need, then reused by every step).
#[derive(Default)]
struct GemmState {
    variant: Variant,
    choice: KernelChoice,
    precision: Precision,
    workspace: Option<DeviceBuffer<f32>>,
}

impl CudaBackend {
    /// The backend on `exec` with the given implementation of the GEMM-shaped ops.
    pub fn with_variant(exec: Executor, variant: Variant) -> Self {
        Self::with_choice(exec, variant, KernelChoice::default())
    }

    /// The backend on `exec` with the given implementation of the GEMM-shaped ops and
    /// overrides of the tiled kernels' automatic choice (to validate and time them all).
    pub fn with_choice(exec: Executor, variant: Variant, choice: KernelChoice) -> Self {
        let backend = CudaBackend::new(exec);
        backend.set_choice(variant, choice);
        backend
    }

    /// Changes the implementation and kernel choice of later GEMM-shaped ops (one executor,
    /// so one module load, can then validate or time every variant).
    pub fn set_choice(&self, variant: Variant, choice: KernelChoice) {
        self.op_state(|s: &mut GemmState| {
            s.variant = variant;
            s.choice = choice;
        });
    }

    /// This backend with its GEMM-shaped ops (convolutions, dense layers) on `precision`'s
    /// tensor cores (fp32: the FMA kernels).
    pub fn with_precision(self, precision: Precision) -> Self {
        self.op_state(|s: &mut GemmState| s.precision = precision);
        self
    }

    /// The precision of the GEMM-shaped ops ([`CudaBackend::with_precision`]).
    pub fn gemm_precision(&self) -> Precision {
        self.op_state(|s: &mut GemmState| s.precision)
    }

    pub fn variant(&self) -> Variant {
        self.op_state(|s: &mut GemmState| s.variant)
    }

    pub fn choice(&self) -> KernelChoice {
        self.op_state(|s: &mut GemmState| s.choice)
    }

    /// Launches one GEMM-shaped kernel (and its split-K reduction), growing the workspace
    /// first if it needs more.
    ///
    /// # Safety
    /// The pointers in `args` must be valid for the extents its sizes describe.
    pub(crate) unsafe fn gemm(&self, op: Op, args: GemmArgs, vector: bool) -> Result<()> {
        let g = Gemm { op, args, vector };
        let target_blocks = target_blocks(&self.exec);
        self.op_state(|s: &mut GemmState| {
            let planner = Planner {
                variant: s.variant,
                target_blocks,
                choice: s.choice,
                math: GemmMath::of(s.precision),
            };
            let need = planner.workspace_len(&g);
            if need > 0 && s.workspace.as_ref().is_none_or(|w| w.len() < need) {
                s.workspace = None; // free the old one first
                s.workspace = Some(self.exec.alloc::<f32>(need)?);
            }
            // SAFETY: forwarded to the caller; the workspace holds `need` floats.
            unsafe { planner.launch(&self.exec, &g, s.workspace.as_mut()) }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_k_covers_k_with_chunks_of_whole_slices() {
        let p = Planner {
            variant: Variant::Tiled,
            target_blocks: 528,
            choice: KernelChoice::default(),
            math: GemmMath::Fma,
        };
        for (tiles, k) in [
            (1, 1_577_088),
            (5, 86_528),
            (8, 43_264),
            (1, 100),
            (1, 64),
            (600, 1000),
            (3, 33),
        ] {
            let (slices, chunk) = p.split_k(tiles, k);
            assert!(slices >= 1 && chunk >= 1);
            assert!(
                slices * chunk >= k && (slices - 1) * chunk < k,
                "{tiles} {k}: {slices} x {chunk}"
            );
            if slices > 1 {
                assert_eq!(chunk % GEMM_BK, 0);
                assert!(tiles * slices <= 2 * p.target_blocks);
            }
        }
        assert_eq!(p.split_k(600, 100_000), (1, 100_000));
    }
}
