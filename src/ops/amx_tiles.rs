//! AMX tile registers as the CPU's bf16 convolutions and dense layers use them (Intel from
//! Sapphire Rapids):
//! `TDPBF16PS` multiplies a 16 x 32 bf16 tile by a 32 x 16 one (the second in "VNNI"
//! layout: each 32-bit word a pair along the sum) into 16 x 16 f32 sums, 8,192 multiplies
//! an instruction. One convention for every caller: tmm0-tmm3 hold up to four 16 x 16
//! blocks of sums; [`multiply_into`] takes the first operand in tmm4 and the second in
//! tmm5-tmm7 (loaded in turn, so that a load overlaps the product before it);
//! [`multiply_2x2`] and [`multiply_4x1`] load first operands into tmm4 and tmm5, second
//! ones into tmm6 and tmm7, for four independent sums. A thread configures its tiles at
//! the start of a call ([`configure`]) and releases them at its end ([`release`]), so the
//! state never outlives the call. Callers check `crate::precision::cpu_has("amx-bf16")`
//! first.

use std::arch::asm;

/// `LDTILECFG`'s 64-byte operand: palette 1, then bytes per row and rows of each tile.
#[repr(C, align(64))]
pub(crate) struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

impl TileConfig {
    /// Four 16 x 16 f32 sums, a 16 x `first` bf16 first operand (`first` = 16 or 32
    /// values a row), three `first / 2` x 16 word blocks of the second.
    pub(crate) fn products(first: usize) -> TileConfig {
        debug_assert!(first == 16 || first == 32);
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
        cfg.bytes_per_row[4] = (2 * first) as u16;
        cfg.rows[4] = 16;
        for t in 5..8 {
            cfg.bytes_per_row[t] = 64;
            cfg.rows[t] = (first / 2) as u8;
        }
        cfg
    }
}

/// Loads `cfg` into the tile registers (zeroing them).
///
/// # Safety
/// AMX-BF16 usable by this process.
#[inline(always)]
pub(crate) unsafe fn configure(cfg: &TileConfig) {
    // SAFETY: forwarded; `cfg` is a valid 64-byte configuration.
    unsafe { asm!("ldtilecfg [{}]", in(reg) cfg, options(nostack, readonly)) }
}

/// Releases the tile state [`configure`] set up.
///
/// # Safety
/// AMX-BF16 usable by this process.
#[inline(always)]
pub(crate) unsafe fn release() {
    // SAFETY: forwarded.
    unsafe { asm!("tilerelease", options(nostack, nomem)) }
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

/// Zeroes tiles of sums `0..n` (n <= 4).
///
/// # Safety
/// Tiles configured.
#[inline(always)]
pub(crate) unsafe fn zero_sums(n: usize) {
    for j in 0..n {
        // SAFETY: forwarded.
        unsafe { with_sums!(j, S => asm!("tilezero tmm{s}", s = const S, options(nostack, nomem))) }
    }
}

/// Loads tile of sums `j` from `p` (rows `stride` bytes apart).
///
/// # Safety
/// Tiles configured; 16 rows of 64 bytes readable at `p`.
#[inline(always)]
pub(crate) unsafe fn load_sums(j: usize, p: *const f32, stride: usize) {
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
pub(crate) unsafe fn store_sums(j: usize, p: *mut f32, stride: usize) {
    // SAFETY: forwarded.
    unsafe {
        with_sums!(j, S => asm!("tilestored [{}+{}*1], tmm{s}", in(reg) p, in(reg) stride,
            s = const S, options(nostack)))
    }
}

/// Loads the first operand (tmm4) from `a`, rows `stride` bytes apart.
///
/// # Safety
/// Tiles configured; its 16 rows readable at `a`.
#[inline(always)]
pub(crate) unsafe fn load_first<T>(a: *const T, stride: usize) {
    // SAFETY: forwarded.
    unsafe {
        asm!("tileloadd tmm4, [{}+{}*1]", in(reg) a, in(reg) stride, options(nostack, readonly))
    }
}

/// Sums `j` += tmm4 (the first operand, loaded) x the second operand's block at `b` (rows
/// `stride` bytes apart), loaded into tmm5-tmm7 in turn so that loads overlap products.
///
/// # Safety
/// Tiles configured; the block readable at `b`.
#[inline(always)]
pub(crate) unsafe fn multiply_into(j: usize, b: *const u32, stride: usize) {
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

/// Sums tile 2m + n += A_m B_n for two first operands (tmm4, tmm5: at `a`) and two second
/// (tmm6, tmm7: at `b`): four independent sums, so that the products' latency hides behind
/// their issue (a single sum's chain waits on each product).
///
/// # Safety
/// Tiles configured with tmm4-tmm7 alike (`TileConfig::products(32)`); the blocks
/// readable at `a` and `b`.
#[inline(always)]
pub(crate) unsafe fn multiply_2x2(
    a: [*const u16; 2],
    a_stride: usize,
    b: [*const u32; 2],
    b_stride: usize,
) {
    // SAFETY: forwarded.
    unsafe {
        asm!(
            "tileloadd tmm6, [{b0}+{bs}*1]",
            "tileloadd tmm4, [{a0}+{as}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{b1}+{bs}*1]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tileloadd tmm5, [{a1}+{as}*1]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            a0 = in(reg) a[0], a1 = in(reg) a[1], as = in(reg) a_stride,
            b0 = in(reg) b[0], b1 = in(reg) b[1], bs = in(reg) b_stride,
            options(nostack, readonly)
        )
    }
}

/// Sums tile m += A_m B for four first operands (at `a`, loaded into tmm4 and tmm5 in
/// turn) and one second (tmm6, at `b`): four independent sums, as [`multiply_2x2`].
///
/// # Safety
/// As [`multiply_2x2`].
#[inline(always)]
pub(crate) unsafe fn multiply_4x1(
    a: [*const u16; 4],
    a_stride: usize,
    b: *const u32,
    b_stride: usize,
) {
    // SAFETY: forwarded.
    unsafe {
        asm!(
            "tileloadd tmm6, [{b}+{bs}*1]",
            "tileloadd tmm4, [{a0}+{as}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm5, [{a1}+{as}*1]",
            "tdpbf16ps tmm1, tmm5, tmm6",
            "tileloadd tmm4, [{a2}+{as}*1]",
            "tdpbf16ps tmm2, tmm4, tmm6",
            "tileloadd tmm5, [{a3}+{as}*1]",
            "tdpbf16ps tmm3, tmm5, tmm6",
            a0 = in(reg) a[0], a1 = in(reg) a[1], a2 = in(reg) a[2], a3 = in(reg) a[3],
            as = in(reg) a_stride, b = in(reg) b, bs = in(reg) b_stride,
            options(nostack, readonly)
        )
    }
}

/// The transpose of a 16 x 16 matrix of 32-bit words held as 16 rows: interleave words,
/// then pairs of words, within 128-bit lanes, then gather the lanes.
#[target_feature(enable = "avx512f")]
pub(crate) fn transpose16(r: [std::arch::x86_64::__m512i; 16]) -> [std::arch::x86_64::__m512i; 16] {
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
