//! 3x3 convolutions with bf16 products on AMX tiles, computed directly: the forward pass
//! (bias, ReLU and the fused 2x2 max-pool in its epilogue), the input gradient and the
//! filter gradient (`filter.rs`) of the layers the f32 path runs by Winograd (16k channels
//! in and out), under `--precision bf16` on a CPU with AMX.
//!
//! Why not Winograd here: its transforms are f32 adds that the bf16 products do not speed
//! up, and with the products on AMX (14x the f32 FMAs' rate, `cargo bench --bench
//! cpu_units`) they were three quarters of a bf16 Winograd pass. The direct products take
//! 2.25x Winograd's multiplies and no transforms; an image is rounded to bf16 once, into a
//! zero-padded copy whose rows the tiles read in place.
//!
//! The forward product as tiles: output row y, 16 pixels from x0, 16 output channels per
//! tile of sums. For each kernel row ky the sum runs over `3c` values that lie contiguous
//! in the padded image (pixels x0 + i .. x0 + i + 3, all channels), so the first operand's
//! row i is 64 bytes read from pixel x0 + i of row y + ky: the tile is a strided load from
//! the image, rows `2c` bytes apart, and no patch matrix is ever built. The kernel is
//! packed to match ([`Plan::new`]): per ky, 32-value chunks of those `3c` (zero past them)
//! in word pairs by output channel. The input gradient is a correlation of the padded
//! output gradient with the kernel turned by 180 degrees (as in `winograd.rs`), so it runs
//! through the same code.
//!
//! Numerics: each product's operands are rounded to bf16 (to nearest even) and the
//! products are summed in f32 by the tiles, in chunks of 32 along each kernel row; the
//! bound of `tests/ops.rs` for bf16 holds with room to spare (direct sums, no transform
//! growth).

mod filter;

use std::arch::x86_64::*;

pub use filter::FilterPlan;

use super::ConvShape;
use super::winograd::transforms::bf16_high_halves;
use super::winograd::{Direction, Geometry, Output, Source};
use crate::ops::amx_tiles::{
    TileConfig, configure, load_first, multiply_2x2, multiply_4x1, multiply_into, release,
    store_sums, zero_sums,
};

/// Channels per tile of sums, and per AVX-512 register.
const LANES: usize = 16;
/// bf16 values per row of the first operand (64 bytes).
const CHUNK: usize = 32;
/// Zero pixels past a staged image's last row: the last step of a row reads up to 64
/// pixels past the output's width, and 3 more along a kernel row (its sums for those
/// pixels are dropped).
const SLACK_PIXELS: usize = 80;

/// Whether `s` runs here (every pass), on a CPU whose AMX tiles this process may use: a
/// 3x3 layer with 16k channels in and out (the Winograd layers). A version whose forward
/// pass also took the first layer (3 channels: a tile row of 32 values then holds 9 of a
/// kernel row) ran it no faster than its f32 direct kernel (8.8 against 9.8 ms, then 12.7
/// against 10.5, `cargo bench --bench ops -- "conv1 + relu"`), which stays.
pub fn supported(s: &ConvShape) -> bool {
    let shape = (s.kernel_h, s.kernel_w) == (3, 3)
        && s.in_c > 0
        && s.out_c > 0
        && s.out_h() > 0
        && s.out_w() > 0
        && s.out_c.is_multiple_of(LANES)
        && s.in_c.is_multiple_of(LANES);
    shape && supported_here()
}

/// Rounds 16 f32 lanes to bf16 (to nearest even, as [`crate::precision::bf16_bits`]):
/// 16 values, 32 bytes.
#[target_feature(enable = "avx512f")]
#[inline]
fn bf16x16(x: __m512) -> __m256i {
    // SAFETY: AVX-512F is enabled for this function.
    let halves = unsafe { bf16_high_halves(x) };
    _mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(halves))
}

/// `src` rounded to bf16 into `dst`, 16 values at a time (a row of 16k channels).
///
/// # Safety
/// `src.len()` values writable at `dst`.
#[target_feature(enable = "avx512f")]
unsafe fn round_run(src: &[f32], dst: *mut u16) {
    debug_assert!(src.len().is_multiple_of(LANES));
    for i in (0..src.len()).step_by(LANES) {
        // SAFETY: i + 16 <= len for both.
        unsafe {
            let v = _mm512_loadu_ps(src.as_ptr().add(i));
            _mm256_storeu_si256(dst.add(i).cast(), bf16x16(v));
        }
    }
}

/// The value of channels `cb.. cb + 16` at pixel (y, x) of an `[h, w, channels]` image
/// `src` (a pooled one expanded: the window's gradient where its code names the pixel,
/// else zero), zero outside the image and on a pooled image's floored edge.
///
/// # Safety
/// `src` checked against (h, w, channels); cb + 16 <= channels.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn pixel(
    src: Source<'_>,
    (h, w, channels): (usize, usize, usize),
    y: usize,
    x: usize,
    cb: usize,
) -> __m512 {
    match src {
        Source::Dense(image) => {
            if y >= h || x >= w {
                return _mm512_setzero_ps();
            }
            let at = (y * w + x) * channels + cb;
            debug_assert!(at + LANES <= image.len());
            // SAFETY: (y, x) inside the image, cb + 16 <= channels.
            unsafe { _mm512_loadu_ps(image.as_ptr().add(at)) }
        }
        Source::Pooled { grad, codes } => {
            let (i, j) = (y / 2, x / 2);
            if i >= h / 2 || j >= w / 2 {
                return _mm512_setzero_ps();
            }
            let at = (i * (w / 2) + j) * channels + cb;
            debug_assert!(at + LANES <= grad.len() && at + LANES <= codes.len());
            // SAFETY: window (i, j) inside the pooled image, cb + 16 <= channels.
            let (g, code) = unsafe {
                (
                    _mm512_loadu_ps(grad.as_ptr().add(at)),
                    _mm512_loadu_ps(codes.as_ptr().add(at)),
                )
            };
            let here = _mm512_set1_ps((2 * (y % 2) + x % 2) as f32);
            _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_EQ_OQ>(code, here), g)
        }
    }
}

/// A forward or input-gradient pass of one layer: its per-image geometry and its kernel
/// packed for the tiles.
pub struct Plan {
    g: Geometry,
    /// 32-value chunks per kernel row (`3c` values, rounded up).
    chunks: usize,
    /// `[ky][chunk][pair][k]` words: values 2 pair, 2 pair + 1 of the chunk (kx c + channel
    /// along a kernel row, zero past `3c`) for output channel k, the first in the low half.
    kernel: Vec<u32>,
}

impl Plan {
    /// The pass `direction` (forward or input gradient) of `s` with HWIO kernel `w`.
    pub fn new(s: &ConvShape, direction: Direction, w: &[f32]) -> Plan {
        assert!(
            direction != Direction::BackwardFilter,
            "FilterPlan runs the filter gradient"
        );
        assert_eq!(w.len(), s.kernel_len(), "kernel");
        let g = Geometry::of(s, direction);
        let chunks = (3 * g.c).div_ceil(CHUNK);
        let (in_c, out_c) = (s.in_c, s.out_c);
        // The problem's kernel: value `kx c + ch` of row ky, output channel k.
        let value = |ky: usize, along: usize, k: usize| -> f32 {
            if along >= 3 * g.c {
                return 0.0;
            }
            let (kx, ch) = (along / g.c, along % g.c);
            match direction {
                Direction::Forward => w[(ky * 3 + kx) * in_c * out_c + ch * out_c + k],
                _ => w[((2 - ky) * 3 + (2 - kx)) * in_c * out_c + k * out_c + ch],
            }
        };
        let mut kernel = vec![0u32; 3 * chunks * CHUNK / 2 * g.k];
        for ky in 0..3 {
            for q in 0..chunks {
                for pair in 0..CHUNK / 2 {
                    let along = q * CHUNK + 2 * pair;
                    for k in 0..g.k {
                        let at = ((ky * chunks + q) * CHUNK / 2 + pair) * g.k + k;
                        kernel[at] = crate::precision::bf16_pair(
                            value(ky, along, k),
                            value(ky, along + 1, k),
                        );
                    }
                }
            }
        }
        Plan { g, chunks, kernel }
    }

    /// Pixels of a staged image's row: the padded input, and zero pixels for the values a
    /// kernel row's last chunk reads past its `3c` (with kernel values zero there): a
    /// fourth pixel for 16 channels (48 values in two chunks of 32), none for 32k.
    fn staged_width(&self) -> usize {
        let past = (self.chunks * CHUNK - 3 * self.g.c).div_ceil(self.g.c);
        self.g.in_w + 2 * self.g.pad + past
    }

    /// bf16 values of the staged (padded) image.
    fn staged_len(&self) -> usize {
        let rows = self.g.in_h + 2 * self.g.pad;
        (rows * self.staged_width() + SLACK_PIXELS) * self.g.c
    }

    /// Floats of one output row's sums: whole steps of 64 pixels.
    fn row_len(&self) -> usize {
        self.g.out_w.next_multiple_of(4 * LANES) * self.g.k
    }

    /// Floats of scratch [`Plan::image`] needs.
    pub fn scratch_len(&self) -> usize {
        self.staged_len().div_ceil(2) + 2 * self.row_len()
    }

    /// One image: `out = correlation(pad(input), kernel)` (+ `bias`, then per `out`);
    /// `scratch` holds at least [`Plan::scratch_len`] floats.
    pub fn image(
        &self,
        input: Source<'_>,
        bias: Option<&[f32]>,
        mut out: Output<'_>,
        scratch: &mut [f32],
    ) {
        let g = self.g;
        assert!(supported_here(), "AMX convolution used without AMX-BF16");
        assert!(scratch.len() >= self.scratch_len(), "scratch");
        input.check(g.in_h, g.in_w, g.c, "input image");
        out.check(&g);
        assert!(bias.is_none_or(|b| b.len() == g.k), "bias");
        let staged_floats = self.staged_len().div_ceil(2);
        let (staged, rows) = scratch[..self.scratch_len()].split_at_mut(staged_floats);
        let (first, second) = rows.split_at_mut(self.row_len());
        // SAFETY: AVX-512F and AMX-BF16 present (asserted); the buffers' lengths are
        // checked above, and the kernels index inside them.
        unsafe {
            self.stage(input, staged);
            configure(&TileConfig::products(CHUNK));
            if matches!(out, Output::Pooled { .. }) {
                for i in 0..g.out_h / 2 {
                    self.sum_row(staged, 2 * i, first);
                    self.sum_row(staged, 2 * i + 1, second);
                    pool_rows(&g, i, first, second, bias, &mut out);
                }
            } else {
                for y in 0..g.out_h {
                    self.sum_row(staged, y, first);
                    store_row(&g, y, first, bias, &mut out);
                }
            }
            release();
        }
    }

    /// The image rounded to bf16 into `staged`, every value written: the padding, the
    /// extra pixel of each row and the slack as zeros.
    ///
    /// # Safety
    /// AVX-512F present; `input` checked against the geometry; `staged` holds
    /// `staged_len` bf16 values.
    #[target_feature(enable = "avx512f")]
    unsafe fn stage(&self, input: Source<'_>, staged: &mut [f32]) {
        let g = self.g;
        let width = self.staged_width();
        debug_assert!(staged.len() * 2 >= self.staged_len());
        let staged = staged.as_mut_ptr().cast::<u16>();
        let zero = |from: usize, values: usize| {
            // SAFETY: the callers' ranges lie inside the staged image.
            unsafe { std::ptr::write_bytes(staged.add(from), 0, values) }
        };
        for py in 0..g.in_h + 2 * g.pad {
            let row = py * width * g.c;
            let Some(y) = py.checked_sub(g.pad).filter(|&y| y < g.in_h) else {
                zero(row, width * g.c);
                continue;
            };
            zero(row, g.pad * g.c);
            let interior = row + g.pad * g.c;
            match input {
                // A row of the image is one run of values.
                Source::Dense(image) => {
                    let run = &image[y * g.in_w * g.c..(y + 1) * g.in_w * g.c];
                    // SAFETY: in_w * c values from `interior`: inside staged row py.
                    unsafe { round_run(run, staged.add(interior)) };
                }
                // Window by window of pooled row y / 2: its gradient where its code names
                // the pixel, else zero (as `pixel`); the floored edge zero.
                Source::Pooled { grad, codes } => {
                    assert!(g.c.is_multiple_of(LANES), "a pooled image of 16k channels");
                    let (pooled_h, pooled_w) = (g.in_h / 2, g.in_w / 2);
                    if y / 2 >= pooled_h {
                        zero(interior, g.in_w * g.c);
                    } else {
                        for j in 0..pooled_w {
                            for cb in (0..g.c).step_by(LANES) {
                                let at = ((y / 2) * pooled_w + j) * g.c + cb;
                                debug_assert!(at + LANES <= grad.len().min(codes.len()));
                                // SAFETY: window (y / 2, j) inside the pooled image, cb + 16
                                // <= c; pixels 2j, 2j + 1 inside staged row py.
                                unsafe {
                                    let gv = _mm512_loadu_ps(grad.as_ptr().add(at));
                                    let code = _mm512_loadu_ps(codes.as_ptr().add(at));
                                    for b in 0..2 {
                                        let here = _mm512_set1_ps((2 * (y % 2) + b) as f32);
                                        let hit = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(code, here);
                                        let v = _mm512_maskz_mov_ps(hit, gv);
                                        let to = interior + (2 * j + b) * g.c + cb;
                                        _mm256_storeu_si256(staged.add(to).cast(), bf16x16(v));
                                    }
                                }
                            }
                        }
                        zero(interior + 2 * pooled_w * g.c, (g.in_w - 2 * pooled_w) * g.c);
                    }
                }
            }
            zero(row + (g.pad + g.in_w) * g.c, (width - g.pad - g.in_w) * g.c);
        }
        zero((g.in_h + 2 * g.pad) * width * g.c, SLACK_PIXELS * g.c);
    }

    /// Output row `y`'s sums, `[16-pixel blocks][k]` in `row`, from the staged image.
    ///
    /// # Safety
    /// Tiles configured as `TileConfig::products(CHUNK)`; the image staged; y < out_h.
    unsafe fn sum_row(&self, staged: &[f32], y: usize, row: &mut [f32]) {
        let g = self.g;
        let (width, blocks) = (self.staged_width(), g.k / LANES);
        debug_assert!(row.len() >= self.row_len() && y < g.out_h);
        let staged = staged.as_ptr().cast::<u16>();
        let kernel = self.kernel.as_ptr();
        let (a_stride, b_stride) = (2 * g.c, 4 * g.k);
        // Four tiles of sums at a time: 16-pixel blocks by 16-channel blocks (see
        // `amx_tiles::multiply_2x2`).
        let (pixel_blocks, channel_blocks) = match blocks {
            1 => (4, 1),
            2 => (2, 2),
            _ => (1, 4),
        };
        for x0 in (0..g.out_w).step_by(pixel_blocks * LANES) {
            for group in (0..blocks).step_by(channel_blocks) {
                let n = (blocks - group).min(channel_blocks);
                // SAFETY (all below): the first operands' rows are pixels x0.. x0 + 64 of
                // staged rows y.. y + 3 (< in_h + 2 pad), read `3c` values on (a fourth
                // pixel's for 16 channels), inside the row or, for the last blocks, past
                // it into the next row or the slack; the kernel blocks are inside
                // `kernel`; the sums go to pixels x0.. x0 + 64 of `row`.
                unsafe {
                    zero_sums(pixel_blocks * n);
                    for ky in 0..3 {
                        let a = staged.add(((y + ky) * width + x0) * g.c);
                        for q in 0..self.chunks {
                            let a_at = |m: usize| a.add(m * LANES * g.c + q * CHUNK);
                            let at = (ky * self.chunks + q) * CHUNK / 2 * g.k;
                            let b_at = |j: usize| kernel.add(at + (group + j) * LANES);
                            match (pixel_blocks, n) {
                                (4, 1) => multiply_4x1(
                                    [a_at(0), a_at(1), a_at(2), a_at(3)],
                                    a_stride,
                                    b_at(0),
                                    b_stride,
                                ),
                                (2, 2) => multiply_2x2(
                                    [a_at(0), a_at(1)],
                                    a_stride,
                                    [b_at(0), b_at(1)],
                                    b_stride,
                                ),
                                _ => {
                                    load_first(a_at(0), a_stride);
                                    for j in 0..n {
                                        multiply_into(j, b_at(j), b_stride);
                                    }
                                }
                            }
                        }
                    }
                    for m in 0..pixel_blocks {
                        for j in 0..n {
                            let dst = row
                                .as_mut_ptr()
                                .add((x0 + m * LANES) * g.k + (group + j) * LANES);
                            store_sums(m * n + j, dst, b_stride);
                        }
                    }
                }
            }
        }
    }
}

/// Whether this process may run AMX-BF16 (which `cpu_has` grants only with AVX512_BF16 and
/// AVX-512F, the staging's instructions).
fn supported_here() -> bool {
    crate::precision::cpu_has("amx-bf16")
}

/// The bias of channels kb.. kb + 16, or zeros.
#[target_feature(enable = "avx512f")]
#[inline]
fn bias_at(bias: Option<&[f32]>, kb: usize) -> __m512 {
    match bias {
        // SAFETY: kb + 16 <= k = bias.len() (checked by Plan::image).
        Some(b) => unsafe { _mm512_loadu_ps(b.as_ptr().add(kb)) },
        None => _mm512_setzero_ps(),
    }
}

/// Output row `y` from its sums: plus bias, ReLU if asked, stored (a `Plain` output).
#[target_feature(enable = "avx512f")]
fn store_row(g: &Geometry, y: usize, row: &[f32], bias: Option<&[f32]>, out: &mut Output<'_>) {
    let Output::Plain { out, relu } = out else {
        unreachable!("store_row takes a plain output")
    };
    let zero = _mm512_setzero_ps();
    // Pixel by pixel, its channels in turn: the output row is written in order.
    for x in 0..g.out_w {
        for kb in (0..g.k).step_by(LANES) {
            let b = bias_at(bias, kb);
            // SAFETY: x < out_w, kb + 16 <= k: inside `row` and output row y.
            unsafe {
                let v = _mm512_add_ps(_mm512_loadu_ps(row.as_ptr().add(x * g.k + kb)), b);
                // max(0, v): a NaN stays NaN, as in the scalar path.
                let v = if *relu { _mm512_max_ps(zero, v) } else { v };
                _mm512_storeu_ps(out.as_mut_ptr().add((y * g.out_w + x) * g.k + kb), v);
            }
        }
    }
}

/// Pooled row `i` from output rows 2i and 2i + 1's sums: plus bias, ReLU, the 2x2 max-pool
/// and its codes, as the Winograd output transform stores them (a `Pooled` output).
#[target_feature(enable = "avx512f")]
fn pool_rows(
    g: &Geometry,
    i: usize,
    top: &[f32],
    bottom: &[f32],
    bias: Option<&[f32]>,
    out: &mut Output<'_>,
) {
    let Output::Pooled { pooled, codes } = out else {
        unreachable!("pool_rows takes a pooled output")
    };
    let pooled_w = g.out_w / 2;
    // Window by window, its channels in turn: the pooled row is written in order.
    for j in 0..pooled_w {
        for kb in (0..g.k).step_by(LANES) {
            let b = bias_at(bias, kb);
            // SAFETY: pixels 2j, 2j + 1 < out_w and kb + 16 <= k: inside both rows; window
            // (i, j) inside the pooled output.
            unsafe {
                let at = |row: &[f32], x: usize| {
                    _mm512_add_ps(_mm512_loadu_ps(row.as_ptr().add(x * g.k + kb)), b)
                };
                let window = [
                    at(top, 2 * j),
                    at(top, 2 * j + 1),
                    at(bottom, 2 * j),
                    at(bottom, 2 * j + 1),
                ];
                let (value, code) = crate::ops::pool::avx512::relu_window_max(window);
                let dst = (i * pooled_w + j) * g.k + kb;
                _mm512_storeu_ps(pooled.as_mut_ptr().add(dst), value);
                _mm512_storeu_ps(codes.as_mut_ptr().add(dst), code);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::Padding;

    /// Every pass writes all it reads of its scratch: results from scratch full of NaNs
    /// are those from zeroed scratch (the tiles read past each row and past the image,
    /// where stale values would otherwise reach the sums).
    #[test]
    fn passes_ignore_stale_scratch() {
        if !supported_here() {
            println!("SKIPPED passes_ignore_stale_scratch: no AMX-BF16");
            return;
        }
        // Odd sizes (a floored pool edge, a partial last block), both paddings, 1 to 4
        // blocks of output channels.
        for (size, in_c, out_c, padding) in [
            (9, 16, 32, Padding::Valid),
            (7, 32, 16, Padding::Same),
            (20, 16, 64, Padding::Valid),
        ] {
            let s = ConvShape {
                batch: 1,
                in_h: size,
                in_w: size + 3,
                in_c,
                out_c,
                kernel_h: 3,
                kernel_w: 3,
                padding,
            };
            check_stale_scratch(&s);
        }
    }

    fn check_stale_scratch(s: &ConvShape) {
        let mut rng = crate::rng::Rng::new(9);
        let mut draw =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.uniform() as f32 - 0.5).collect() };
        let (x, w, bias, dy) = (
            draw(s.input_len()),
            draw(s.kernel_len()),
            draw(s.out_c),
            draw(s.output_len()),
        );
        let pooled_len = (s.out_h() / 2) * (s.out_w() / 2) * s.out_c;
        let grad = draw(pooled_len);
        let codes: Vec<f32> = (0..pooled_len).map(|i| (i % 5) as f32 - 1.0).collect();
        let pooled_dy = Source::Pooled {
            grad: &grad,
            codes: &codes,
        };
        let forward = Plan::new(s, Direction::Forward, &w);
        let backward = Plan::new(s, Direction::BackwardData, &w);
        let filter = FilterPlan::new(s);
        let run = |fill: f32| {
            let mut results = Vec::new();
            let mut out = vec![0f32; s.output_len()];
            let mut scratch = vec![fill; forward.scratch_len()];
            let plain = Output::Plain {
                out: &mut out,
                relu: true,
            };
            forward.image(Source::Dense(&x), Some(&bias), plain, &mut scratch);
            results.push(out);
            let (mut pooled, mut pool_codes) = (vec![0f32; pooled_len], vec![0f32; pooled_len]);
            let mut scratch = vec![fill; forward.scratch_len()];
            let out = Output::Pooled {
                pooled: &mut pooled,
                codes: &mut pool_codes,
            };
            forward.image(Source::Dense(&x), Some(&bias), out, &mut scratch);
            results.extend([pooled, pool_codes]);
            for dy in [Source::Dense(&dy), pooled_dy] {
                let mut dx = vec![0f32; s.input_len()];
                let mut scratch = vec![fill; backward.scratch_len()];
                let plain = Output::Plain {
                    out: &mut dx,
                    relu: false,
                };
                backward.image(dy, None, plain, &mut scratch);
                results.push(dx);
                let (mut dw, mut db) = (vec![0f32; s.kernel_len()], vec![0f32; s.out_c]);
                let mut scratch = vec![fill; filter.scratch_len()];
                filter.image(&x, dy, &mut dw, &mut db, &mut scratch);
                // The bias gradient is the output gradient's channel sums, bit for bit.
                let mut sums = vec![0f32; s.out_c];
                dy.add_channel_sums(s.out_h(), s.out_w(), s.out_c, &mut sums);
                assert_eq!(db, sums, "{s:?}: bias gradient");
                results.extend([dw, db]);
            }
            results
        };
        // NaN as a float and as each of its bf16 halves (the staged copies are bf16).
        let nans = f32::from_bits(0x7FC0_7FC0);
        let (clean, stale) = (run(0.0), run(nans));
        for (i, (c, st)) in clean.iter().zip(&stale).enumerate() {
            assert!(
                c.iter().all(|v| v.is_finite()),
                "{s:?}: result {i} not finite"
            );
            let differ = c
                .iter()
                .zip(st)
                .position(|(a, b)| a.to_bits() != b.to_bits());
            assert_eq!(
                differ, None,
                "{s:?}: stale scratch changed result {i} at that value"
            );
        }
    }
}
