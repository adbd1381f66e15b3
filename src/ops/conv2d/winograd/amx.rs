//! The bf16 Winograd products on AMX tiles (Intel from Sapphire Rapids), where the CPU has
//! them: `TDPBF16PS` multiplies a 16 x 32 bf16 tile by a 32 x 16 one into 16 x 16 f32 sums,
//! 8,192 multiplies an instruction. Measured on this project's 2-core Xeon (`cargo bench
//! --bench cpu_units`): 1,803 GMAC/s a core, against 118 for f32 FMAs and 60 for `vdpbf16ps`
//! (which issues at a quarter of the FMA's rate there), so on such a CPU the tiles are the
//! bf16 path.
//!
//! The operands are the layouts of the AVX512_BF16 path (`super::bf16`): V as bf16 rows of
//! channels (`[p][t][c]`), U packed as channel pairs (`[p][c / 2][k]` words: AMX's "VNNI"
//! layout of the second operand), M as f32 rows; each position's product is a small GEMM
//! `M[p] (tiles x k) = V[p] (tiles x c) U[p] (c x k)` in 16 x 16 blocks of M.
//!
//! Tiles: tmm0-tmm3 the sums of up to four 16-channel blocks of outputs, tmm4 the first
//! operand's block (V; for the filter gradient V transposed: channels by tiles), tmm5-tmm7
//! the second's (U; for the filter gradient Z in tile pairs). A thread configures its tiles
//! at the start of a call and releases them at the end, so the state never outlives it.

use std::arch::asm;

use super::{Geometry, LANES, POSITIONS, position_stride};

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
    /// Every tile 16 rows of 64 bytes: the filter gradient's blocks.
    fn filter() -> TileConfig {
        TileConfig::products(32)
    }

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

/// `with_sums!(j, S => body)`: `body` with the const `S` the tile of sums `j` (0-3, tmm0-tmm3):
/// tile registers are immediates, so a runtime index picks one of four copies.
macro_rules! with_sums {
    ($j:expr, $s:ident => $body:expr) => {
        match $j {
            0 => {
                const $s: usize = 0;
                $body
            }
            1 => {
                const $s: usize = 1;
                $body
            }
            2 => {
                const $s: usize = 2;
                $body
            }
            _ => {
                const $s: usize = 3;
                $body
            }
        }
    };
}

/// Loads tile of sums `j` from `p` (rows `stride` bytes apart).
///
/// # Safety
/// Tiles configured; 16 rows of 64 bytes readable at `p`.
#[inline(always)]
unsafe fn load_sums(j: usize, p: *const f32, stride: usize) {
    // SAFETY: forwarded.
    unsafe {
        with_sums!(j, S => asm!("tileloadd tmm{s}, [{}+{}*1]", in(reg) p, in(reg) stride,
            s = const S, options(nostack, readonly)))
    }
}

/// Stores tile of sums `j` to `p` (rows `stride` bytes apart).
///
/// # Safety
/// Tiles configured; 16 rows of 64 bytes writable at `p`.
#[inline(always)]
unsafe fn store_sums(j: usize, p: *mut f32, stride: usize) {
    // SAFETY: forwarded.
    unsafe {
        with_sums!(j, S => asm!("tilestored [{}+{}*1], tmm{s}", in(reg) p, in(reg) stride,
            s = const S, options(nostack)))
    }
}

/// Sums `j` += tmm4 (the first operand, loaded) x the second operand's block at `b` (rows
/// `stride` bytes apart), loaded into tmm5-tmm7 in turn so that loads overlap products.
///
/// # Safety
/// Tiles configured; the block readable at `b`.
#[inline(always)]
unsafe fn multiply_into(j: usize, b: *const u32, stride: usize) {
    // SAFETY: forwarded.
    unsafe {
        with_sums!(j, S => asm!(
            "tileloadd tmm{b}, [{}+{}*1]",
            "tdpbf16ps tmm{s}, tmm4, tmm{b}",
            in(reg) b, in(reg) stride, s = const S, b = const 5 + S % 3,
            options(nostack, readonly)
        ))
    }
}

/// Output channels per tile of sums (16 f32 = 64 bytes a row).
const BLOCK: usize = LANES;
/// Tiles (rows of M) per block.
const ROWS: usize = 16;

/// `M[p][t][k] = sum_c V[p][t][c] U[p][c][k]` for the chunk's `count` tiles, V as bf16
/// (`v`'s first half, written by the input transform in `Layout::ChannelPairs`), U packed by
/// `super::bf16::pack_kernel`, on AMX tiles.
///
/// # Safety
/// AMX-BF16 must be usable (`crate::precision::cpu_has("amx-bf16")`); `g.c` and `g.k` are
/// multiples of 16; `v` holds a chunk's V region for at least `count` tiles (the last block
/// of tiles reads up to 15 rows beyond `count`, inside that region, and its sums for those
/// rows are dropped); `u` holds `16 * c / 2 * k` words and `m` 16 positions of `count * k`
/// floats, [`position_stride`] apart.
pub(super) unsafe fn products(g: &Geometry, count: usize, v: &[f32], u: &[u32], m: &mut [f32]) {
    // Channels per V block: 32 (a full 64-byte row) where they divide c, else 16.
    let channels = if g.c.is_multiple_of(32) { 32 } else { 16 };
    assert!(g.c.is_multiple_of(channels) && g.k.is_multiple_of(BLOCK));
    // Positions' rows apart, in bf16 values (V) and floats (M).
    let (sv, sm) = (
        2 * position_stride(count, g.c / 2),
        position_stride(count, g.k),
    );
    assert!(
        v.len() * 2 >= (POSITIONS - 1) * sv + (count + ROWS) * g.c,
        "V"
    );
    assert!(u.len() >= POSITIONS * g.c / 2 * g.k);
    assert!(m.len() >= (POSITIONS - 1) * sm + count * g.k, "M");
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
            let vp = v.add(p * sv);
            let up = u.as_ptr().add(p * g.c / 2 * g.k);
            let mp = m.as_mut_ptr().add(p * sm);
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
                            multiply_into(j, b, b_stride);
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
                        store_sums(j, dst, stride);
                        if !full {
                            for r in 0..rows {
                                let row = mp.add((t + r) * g.k + (first + j) * BLOCK);
                                std::ptr::copy_nonoverlapping(
                                    spill.as_ptr().add(r * BLOCK),
                                    row,
                                    BLOCK,
                                );
                            }
                        }
                    }
                }
            }
        }
        asm!("tilerelease", options(nostack, nomem));
    }
}

/// Pairs of tiles per block of the filter gradient's products (32 tiles: a 64-byte row of
/// bf16).
const PAIRS: usize = 16;

/// Tile pairs of a chunk of `count` tiles, padded to whole blocks of [`PAIRS`].
fn padded_pairs(count: usize) -> usize {
    count.div_ceil(2).next_multiple_of(PAIRS)
}

/// Floats of scratch the AMX filter gradient takes beyond a Winograd pass's: V transposed,
/// `[p][c][pairs]` words.
pub(super) fn filter_pack_len(g: &Geometry) -> usize {
    POSITIONS * g.c * padded_pairs(g.chunk_tiles())
}

/// `sums[p][c][k] += sum over tile pairs of V[p][i][c] . Z[p][i][k]` on AMX tiles: `v` and
/// `z` as the transforms store them in `Layout::TilePairs` (`[p][pairs][width]` words,
/// `pairs = ceil(count / 2)`, positions [`position_stride`] apart),
/// `pack` at least [`filter_pack_len`] floats. The sums are the tiles' accumulators, loaded
/// and stored back per block; V goes through `pack` transposed (the first operand's rows
/// must run along the sum: over tiles, per channel), zero-padded to whole blocks, which
/// also cancels whatever the second operand's reads past the last pair find (zeroed first:
/// there they would be stale floats, possibly NaN as bf16).
///
/// # Safety
/// AMX-BF16 usable; `g.c`, `g.k` multiples of 16; `v` and `z` the V and Z regions of a
/// Winograd pass's scratch for a chunk of at least `count` tiles.
pub(super) unsafe fn filter_products(
    g: &Geometry,
    count: usize,
    v: &[f32],
    z: &mut [f32],
    pack: &mut [f32],
    sums: &mut [f32],
) {
    let (pairs, padded) = (count.div_ceil(2), padded_pairs(count));
    let (sv, sz) = (position_stride(pairs, g.c), position_stride(pairs, g.k));
    assert!(g.c.is_multiple_of(BLOCK) && g.k.is_multiple_of(BLOCK));
    assert!(v.len() >= (POSITIONS - 1) * sv + pairs * g.c, "V");
    assert!(pack.len() >= POSITIONS * g.c * padded, "pack");
    assert_eq!(sums.len(), POSITIONS * g.c * g.k, "sums");
    // The second operand's last block reads up to PAIRS - 1 rows past a position's last
    // pair: into the gap before the next position's rows (stale), then into those (this
    // chunk's), or past the last position (stale). The stale words are zeroed.
    let reach = (PAIRS - 1) * g.k;
    assert!(z.len() >= (POSITIONS - 1) * sz + pairs * g.k + reach, "Z");
    for p in 0..POSITIONS {
        let (end, next) = (p * sz + pairs * g.k, (p + 1) * sz);
        let stale = if p + 1 < POSITIONS {
            next.min(end + reach)
        } else {
            end + reach
        };
        z[end..stale].fill(0.0);
    }
    // SAFETY: as the function's contract; lengths asserted above.
    unsafe {
        transpose_pairs(g.c, pairs, padded, v, pack);
        let cfg = TileConfig::filter();
        let (vt, zp) = (pack.as_ptr().cast::<u32>(), z.as_ptr().cast::<u32>());
        let sums = sums.as_mut_ptr();
        let (a_stride, b_stride, c_stride) = (4 * padded, 4 * g.k, 4 * g.k);
        let blocks = g.k / BLOCK;
        asm!("ldtilecfg [{}]", in(reg) &cfg, options(nostack, readonly));
        for p in 0..POSITIONS {
            for c0 in (0..g.c).step_by(BLOCK) {
                for first in (0..blocks).step_by(4) {
                    let n = (blocks - first).min(4);
                    let sum_at = |j: usize| sums.add((p * g.c + c0) * g.k + (first + j) * BLOCK);
                    for j in 0..n {
                        let s = sum_at(j);
                        load_sums(j, s, c_stride);
                    }
                    for i0 in (0..padded).step_by(PAIRS) {
                        // Channels c0.. c0 + 16 over tile pairs i0.. i0 + 16.
                        let a = vt.add((p * g.c + c0) * padded + i0);
                        asm!("tileloadd tmm4, [{}+{}*1]", in(reg) a, in(reg) a_stride,
                            options(nostack, readonly));
                        for j in 0..n {
                            let b = zp.add(p * sz + i0 * g.k + (first + j) * BLOCK);
                            multiply_into(j, b, b_stride);
                        }
                    }
                    for j in 0..n {
                        let s = sum_at(j);
                        store_sums(j, s, c_stride);
                    }
                }
            }
        }
        asm!("tilerelease", options(nostack, nomem));
    }
}

/// `vt[p][c][i] = v[p][i][c]` (32-bit words, v's positions [`position_stride`] apart) for
/// the `pairs` tile pairs, zeros for `pairs <= i < padded`: 16 x 16 blocks transposed in
/// registers.
#[target_feature(enable = "avx512f")]
unsafe fn transpose_pairs(c: usize, pairs: usize, padded: usize, v: &[f32], vt: &mut [f32]) {
    use std::arch::x86_64::*;
    let sv = position_stride(pairs, c);
    debug_assert!(v.len() >= (POSITIONS - 1) * sv + pairs * c);
    debug_assert!(vt.len() >= POSITIONS * c * padded);
    for p in 0..POSITIONS {
        for i0 in (0..padded).step_by(PAIRS) {
            for c0 in (0..c).step_by(BLOCK) {
                let mut rows = [_mm512_setzero_si512(); 16];
                for (i, row) in rows.iter_mut().enumerate() {
                    if i0 + i < pairs {
                        let at = p * sv + (i0 + i) * c + c0;
                        // SAFETY: pair i0 + i < pairs, channels c0 + 16 <= c: inside v.
                        *row = unsafe { _mm512_loadu_si512(v.as_ptr().add(at).cast()) };
                    }
                }
                let cols = transpose16(rows);
                for (j, col) in cols.iter().enumerate() {
                    let at = (p * c + c0 + j) * padded + i0;
                    // SAFETY: channel c0 + j < c, pairs i0 + 16 <= padded: inside vt.
                    unsafe { _mm512_storeu_si512(vt.as_mut_ptr().add(at).cast(), *col) };
                }
            }
        }
    }
}

/// The transpose of a 16 x 16 matrix of 32-bit words held as 16 rows: interleave words,
/// then pairs of words, within 128-bit lanes, then gather the lanes.
#[target_feature(enable = "avx512f")]
fn transpose16(r: [std::arch::x86_64::__m512i; 16]) -> [std::arch::x86_64::__m512i; 16] {
    use std::arch::x86_64::*;
    let mut t = [_mm512_setzero_si512(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    // u[4g + q], lane L: word 4L + q of rows 4g.. 4g + 4.
    let mut u = [_mm512_setzero_si512(); 16];
    for g in 0..4 {
        let (a, b, c, d) = (t[4 * g], t[4 * g + 1], t[4 * g + 2], t[4 * g + 3]);
        u[4 * g] = _mm512_unpacklo_epi64(a, c);
        u[4 * g + 1] = _mm512_unpackhi_epi64(a, c);
        u[4 * g + 2] = _mm512_unpacklo_epi64(b, d);
        u[4 * g + 3] = _mm512_unpackhi_epi64(b, d);
    }
    let mut out = [_mm512_setzero_si512(); 16];
    for q in 0..4 {
        let low = (
            _mm512_shuffle_i32x4::<0x44>(u[q], u[4 + q]),
            _mm512_shuffle_i32x4::<0x44>(u[8 + q], u[12 + q]),
        );
        let high = (
            _mm512_shuffle_i32x4::<0xEE>(u[q], u[4 + q]),
            _mm512_shuffle_i32x4::<0xEE>(u[8 + q], u[12 + q]),
        );
        out[q] = _mm512_shuffle_i32x4::<0x88>(low.0, low.1);
        out[4 + q] = _mm512_shuffle_i32x4::<0xDD>(low.0, low.1);
        out[8 + q] = _mm512_shuffle_i32x4::<0x88>(high.0, high.1);
        out[12 + q] = _mm512_shuffle_i32x4::<0xDD>(high.0, high.1);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn transpose16_transposes() {
        use std::arch::x86_64::*;
        if !crate::precision::cpu_has("avx512f") {
            println!("SKIPPED transpose16_transposes: no AVX-512");
            return;
        }
        let m: Vec<u32> = (0..256).collect();
        // SAFETY: AVX-512F present (checked above); 16 rows of 16 words.
        let t = unsafe {
            let rows = std::array::from_fn(|i| _mm512_loadu_si512(m.as_ptr().add(16 * i).cast()));
            super::transpose16(rows)
        };
        let mut got = [0u32; 256];
        for (j, col) in t.iter().enumerate() {
            // SAFETY: 16 words per row of `got`.
            unsafe { _mm512_storeu_si512(got.as_mut_ptr().add(16 * j).cast(), *col) };
        }
        for i in 0..16 {
            for j in 0..16 {
                assert_eq!(got[16 * j + i], m[16 * i + j], "({i}, {j})");
            }
        }
    }
}
