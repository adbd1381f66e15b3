//! The bf16 Winograd products on AMX tiles (Intel from Sapphire Rapids), where the CPU has
//! them: `TDPBF16PS` multiplies a 16 x 32 bf16 tile by a 32 x 16 one into 16 x 16 f32 sums,
//! 8,192 multiplies an instruction. Measured on this project's 2-core Xeon: ~1,700 GMAC/s
//! a core, against ~240 for f32 FMAs and ~120 for `vdpbf16ps` (which runs at a quarter of
//! the FMA's instruction rate there), so on such a CPU the tiles are the bf16 path.
//!
//! The operands are the layouts of the AVX512_BF16 path (`super::bf16`): V as bf16 rows of
//! channels (`[p][t][c]`), U packed as channel pairs (`[p][c / 2][k]` words: AMX's "VNNI"
//! layout of the second operand), M as f32 rows; each position's product is a small GEMM
//! `M[p] (tiles x k) = V[p] (tiles x c) U[p] (c x k)` in 16 x 16 blocks of M.
//!
//! Tiles: tmm0-tmm3 the sums of up to four 16-channel blocks of outputs, tmm4 the V block,
//! tmm5-tmm7 the U blocks. A thread configures its tiles at the start of a call and
//! releases them at the end, so the state never outlives the call.

use std::arch::asm;

use super::{Geometry, LANES, POSITIONS};

/// `LDTILECFG`'s 64-byte operand: palette 1, then bytes per row and rows of each tile.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

impl TileConfig {
    /// Four 16 x 16 f32 sums, a 16 x `channels` bf16 block of V, three `channels / 2` x 16
    /// word blocks of U (`channels` = 16 or 32).
    fn products(channels: usize) -> TileConfig {
        debug_assert!(channels == 16 || channels == 32);
        let mut cfg = TileConfig {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            bytes_per_row: [0; 16],
            rows: [0; 16],
        };
        for t in 0..4 {
            cfg.bytes_per_row[t] = 64;
            cfg.rows[t] = 16;
        }
        cfg.bytes_per_row[4] = (2 * channels) as u16;
        cfg.rows[4] = 16;
        for t in 5..8 {
            cfg.bytes_per_row[t] = 64;
            cfg.rows[t] = (channels / 2) as u8;
        }
        cfg
    }
}

/// Output channels per tile of sums (16 f32 = 64 bytes a row).
const BLOCK: usize = LANES;
/// Tiles (rows of M) per block.
const ROWS: usize = 16;

/// `M[p][t][k] = sum_c V[p][t][c] U[p][c][k]` for the chunk's `count` tiles, V as bf16
/// (`v`'s first half, written by the input transform with `BF16`), U packed by
/// `super::bf16::pack_kernel`, on AMX tiles.
///
/// # Safety
/// AMX-BF16 must be usable (`crate::precision::cpu_has("amx-bf16")`); `g.c` and `g.k` are
/// multiples of 16; `v` holds `16 * chunk * c` floats for a chunk of at least `count` tiles
/// (the last block of tiles reads up to 15 rows beyond `count`, inside that space, and its
/// sums for those rows are dropped); `u` holds `16 * c / 2 * k` words and `m` `16 * count * k`
/// floats.
pub(super) unsafe fn products(g: &Geometry, count: usize, v: &[f32], u: &[u32], m: &mut [f32]) {
    // Channels per V block: 32 (a full 64-byte row) where they divide c, else 16.
    let channels = if g.c.is_multiple_of(32) { 32 } else { 16 };
    assert!(g.c.is_multiple_of(channels) && g.k.is_multiple_of(BLOCK));
    assert!(v.len() * 2 >= POSITIONS * count * g.c + ROWS * g.c, "V");
    assert!(u.len() >= POSITIONS * g.c / 2 * g.k && m.len() >= POSITIONS * count * g.k);
    let cfg = TileConfig::products(channels);
    let v = v.as_ptr().cast::<u16>();
    let (a_stride, b_stride, c_stride) = (2 * g.c, 4 * g.k, 4 * g.k);
    let blocks = g.k / BLOCK;
    let mut spill = [0f32; ROWS * BLOCK];
    // SAFETY: the tiles are configured here and released below; every load reads inside
    // the buffers asserted above (addresses derived as in the comments), every store
    // writes inside `m` or `spill`.
    unsafe {
        asm!("ldtilecfg [{}]", in(reg) &cfg, options(nostack, readonly));
        for p in 0..POSITIONS {
            let vp = v.add(p * count * g.c);
            let up = u.as_ptr().add(p * g.c / 2 * g.k);
            let mp = m.as_mut_ptr().add(p * count * g.k);
            for t in (0..count).step_by(ROWS) {
                for first in (0..blocks).step_by(4) {
                    let n = (blocks - first).min(4);
                    asm!(
                        "tilezero tmm0",
                        "tilezero tmm1",
                        "tilezero tmm2",
                        "tilezero tmm3",
                        options(nostack, nomem)
                    );
                    for c0 in (0..g.c).step_by(channels) {
                        // V rows t.. t + 16, channels c0.. c0 + channels.
                        let a = vp.add(t * g.c + c0);
                        asm!("tileloadd tmm4, [{}+{}*1]", in(reg) a, in(reg) a_stride,
                            options(nostack, readonly));
                        for j in 0..n {
                            // U channel pairs c0 / 2.., output channels (first + j) * 16...
                            let b = up.add(c0 / 2 * g.k + (first + j) * BLOCK);
                            match j {
                                0 => asm!(
                                    "tileloadd tmm5, [{}+{}*1]",
                                    "tdpbf16ps tmm0, tmm4, tmm5",
                                    in(reg) b, in(reg) b_stride, options(nostack, readonly)
                                ),
                                1 => asm!(
                                    "tileloadd tmm6, [{}+{}*1]",
                                    "tdpbf16ps tmm1, tmm4, tmm6",
                                    in(reg) b, in(reg) b_stride, options(nostack, readonly)
                                ),
                                2 => asm!(
                                    "tileloadd tmm7, [{}+{}*1]",
                                    "tdpbf16ps tmm2, tmm4, tmm7",
                                    in(reg) b, in(reg) b_stride, options(nostack, readonly)
                                ),
                                _ => asm!(
                                    "tileloadd tmm5, [{}+{}*1]",
                                    "tdpbf16ps tmm3, tmm4, tmm5",
                                    in(reg) b, in(reg) b_stride, options(nostack, readonly)
                                ),
                            }
                        }
                    }
                    let rows = (count - t).min(ROWS);
                    for j in 0..n {
                        let full = rows == ROWS;
                        let (dst, stride) = if full {
                            (mp.add(t * g.k + (first + j) * BLOCK), c_stride)
                        } else {
                            (spill.as_mut_ptr(), 4 * BLOCK)
                        };
                        match j {
                            0 => asm!("tilestored [{}+{}*1], tmm0", in(reg) dst, in(reg) stride, options(nostack)),
                            1 => asm!("tilestored [{}+{}*1], tmm1", in(reg) dst, in(reg) stride, options(nostack)),
                            2 => asm!("tilestored [{}+{}*1], tmm2", in(reg) dst, in(reg) stride, options(nostack)),
                            _ => asm!("tilestored [{}+{}*1], tmm3", in(reg) dst, in(reg) stride, options(nostack)),
                        }
                        if !full {
                            for r in 0..rows {
                                let row = mp.add((t + r) * g.k + (first + j) * BLOCK);
                                std::ptr::copy_nonoverlapping(spill.as_ptr().add(r * BLOCK), row, BLOCK);
                            }
                        }
                    }
                }
            }
        }
        asm!("tilerelease", options(nostack, nomem));
    }
}
