//! Host side of the GEMM-shaped kernels (gemm_tile.cuh and the kernels built on it:
//! conv2d/conv2d.cu, dense/dense.cu, their naive versions, gemm_splitk.cu): their argument
//! block, the choice of tile shape, load width and split-K, and the launches.

use crate::executor::{DeviceBuffer, Executor, LaunchConfig};
use crate::ops::cuda::int;
use crate::{Error, Result};

/// `struct GemmArgs` of gemm_tile.cuh, field for field: six device pointers, then
/// an even number of `int`s, so that neither C nor Rust inserts padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GemmArgs {
    pub a: u64,
    pub b: u64,
    pub bias: u64,
    pub out: u64,
    pub out2: u64,
    pub partial: u64,
    pub m: i32,
    pub n: i32,
    pub k: i32,
    pub lda: i32,
    pub ldb: i32,
    pub ldo: i32,
    pub m_split: i32,
    pub ones_row: i32,
    pub relu: i32,
    pub k_chunk: i32,
    pub batch: i32,
    pub in_h: i32,
    pub in_w: i32,
    pub in_c: i32,
    pub out_h: i32,
    pub out_w: i32,
    pub out_c: i32,
    pub kernel_h: i32,
    pub kernel_w: i32,
    pub pad_top: i32,
    pub pad_left: i32,
    pub unused: i32,
}

// SAFETY: `repr(C)`, only integer fields, and no padding (6 * 8 + 22 * 4 = 136 bytes, a
// multiple of the 8-byte alignment), so every bit pattern is valid and all bytes are
// initialised.
unsafe impl bytemuck::Zeroable for GemmArgs {}
// SAFETY: as above.
unsafe impl bytemuck::Pod for GemmArgs {}
const _: () = assert!(size_of::<GemmArgs>() == 136);

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
    /// The tile shapes this family has kernels for.
    pub fn tiles(self) -> &'static [Tile] {
        match self {
            Op::ConvForward | Op::ConvBackwardData => &[N16, N32, N64],
            _ => &[S32, S64, M64N32, M32N64],
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            Op::ConvForward => "conv_fwd",
            Op::ConvBackwardData => "conv_bwd_data",
            Op::ConvBackwardFilter => "conv_bwd_filter",
            Op::DenseForward => "dense_fwd",
            Op::DenseBackwardWeights => "dense_bwd_w",
            Op::DenseBackwardInput => "dense_bwd_x",
        }
    }
}

/// Which implementation of the GEMM-shaped ops runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Variant {
    /// Shared-memory tiles, register blocking, float4 loads, split-K (the one used).
    #[default]
    Tiled,
    /// One thread per output (conv2d_naive.cu, dense_naive.cu): the simple reference variant.
    Naive,
}

/// A tile shape of gemm_tile.cuh (256 threads each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tile {
    pub name: &'static str,
    pub bm: usize,
    pub bn: usize,
}

/// K depth of every tile's shared-memory slice (`BK`); split-K chunks are multiples of it.
pub const BK: usize = 16;
pub const THREADS: u32 = 256;
pub const N16: Tile = Tile {
    name: "n16",
    bm: 128,
    bn: 16,
};
pub const N32: Tile = Tile {
    name: "n32",
    bm: 128,
    bn: 32,
};
pub const N64: Tile = Tile {
    name: "n64",
    bm: 128,
    bn: 64,
};
pub const S32: Tile = Tile {
    name: "s32",
    bm: 32,
    bn: 32,
};
pub const S64: Tile = Tile {
    name: "s64",
    bm: 64,
    bn: 64,
};
pub const M64N32: Tile = Tile {
    name: "m64n32",
    bm: 64,
    bn: 32,
};
pub const M32N64: Tile = Tile {
    name: "m32n64",
    bm: 32,
    bn: 64,
};

/// The tile for a GEMM of `m x n` in the family `op` (the kernels exist for these pairs).
pub fn choose_tile(op: Op, m: usize, n: usize) -> Tile {
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

/// Every tile shape, by name.
pub const TILES: [Tile; 7] = [N16, N32, N64, S32, S64, M64N32, M32N64];

/// Overrides of the automatic kernel choice, to validate and time every variant (tests,
/// op timings); the default is the automatic choice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelChoice {
    /// Use this tile (a name of [`TILES`]) for the op families that have it.
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
}

/// Smallest K range of one split-K slice.
const MIN_SPLIT_K: usize = 2 * BK;

impl Planner {
    /// The tile `g` runs with: the override if its family has it, else [`choose_tile`].
    pub fn tile_for(&self, op: Op, m: usize, n: usize) -> Tile {
        self.choice
            .tile
            .and_then(|name| op.tiles().iter().find(|t| t.name == name).copied())
            .unwrap_or_else(|| choose_tile(op, m, n))
    }

    /// `(slices, k per slice)` for a GEMM of `tiles` output tiles and depth `k`.
    pub fn split_k(&self, tiles: usize, k: usize) -> (usize, usize) {
        if k == 0 || tiles * 2 >= self.target_blocks || k < 2 * MIN_SPLIT_K {
            return (1, k.max(1));
        }
        let want = self.target_blocks.div_ceil(tiles);
        let slices = want.min(k / MIN_SPLIT_K).clamp(1, 65535);
        let chunk = k.div_ceil(slices).div_ceil(BK) * BK;
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
            let name = format!("{}_naive", g.op.prefix());
            let blocks = (m * n).div_ceil(THREADS as usize).min(65535) as u32;
            let cfg = LaunchConfig::new(blocks, THREADS);
            // SAFETY: forwarded to the caller; the kernel takes one GemmArgs.
            return unsafe { exec.launch_builder(&name, cfg).arg_pod(&args).launch() };
        }
        let tile = self.tile_for(g.op, m, n);
        let (mt, nt) = (m.div_ceil(tile.bm), n.div_ceil(tile.bn));
        let (slices, chunk) = self.split_k(mt * nt, k);
        args.k_chunk = int("split-K chunk", chunk)?;
        let name = format!(
            "{}_{}_{}",
            g.op.prefix(),
            tile.name,
            if g.vector && !self.choice.scalar {
                "v"
            } else {
                "s"
            }
        );
        let grid = (int("row tiles", mt)? as u32, nt as u32, slices as u32);
        let cfg = LaunchConfig::new(grid, THREADS);
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
        let blocks = (m * n).div_ceil(THREADS as usize).min(4096) as u32;
        let reduce = LaunchConfig::new(blocks, THREADS);
        // SAFETY: as above; the reduction reads the partials the launch above wrote.
        unsafe {
            exec.launch_builder("gemm_splitk_reduce", reduce)
                .arg_pod(&args)
                .arg(slices as i32)
                .launch()
        }
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
                assert_eq!(chunk % BK, 0);
                assert!(tiles * slices <= 2 * p.target_blocks);
            }
        }
        assert_eq!(p.split_k(600, 100_000), (1, 100_000));
    }
}
