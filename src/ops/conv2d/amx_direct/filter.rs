//! The filter gradient on AMX tiles, directly: `dw[ky][kx][ci][co] += sum over output
//! pixels p of x[p + (ky, kx)][ci] dy[p][co]` (x zero-padded), one 16 x 16 tile of sums per
//! (ky, kx, 16 input channels, 16 output channels), the sum over pixels along the tiles'
//! inner dimension, 32 pixels of an output row an instruction.
//!
//! The first operand's rows are input channels, so the image is staged transposed
//! (`[row][channel][pixel]` bf16, padded): a kernel column kx is then an offset of kx
//! values into the same rows. The second operand pairs neighbouring pixels of the output
//! gradient in each word (`[row][pixel pair][co]`: "VNNI" layout). The tiles of sums are
//! the HWIO gradient itself, loaded and stored once per band of output rows, so a task
//! sums its images straight into its partial `dw`. Both staged operands cover a band of
//! [`BAND`] output rows at a time, which keeps them in L2.

use std::arch::x86_64::*;

use super::super::winograd::transforms::pair_words;
use super::super::winograd::{Direction, Geometry, Source};
use super::{CHUNK, ConvShape, LANES, bf16x16, pixel, supported_here};
use crate::ops::amx_tiles::{
    TileConfig, configure, load_first, load_sums, multiply_into, release, store_sums, transpose16,
};

/// Output rows per band.
const BAND: usize = 16;

/// A layer's filter gradient on AMX tiles.
pub struct FilterPlan {
    /// The forward geometry (input, output gradient, channels).
    g: Geometry,
}

impl FilterPlan {
    pub fn new(s: &ConvShape) -> FilterPlan {
        FilterPlan {
            g: Geometry::of(s, Direction::BackwardFilter),
        }
    }

    /// Output pixels a staged row covers: whole steps of 32.
    fn padded_out_w(&self) -> usize {
        self.g.out_w.next_multiple_of(CHUNK)
    }

    /// bf16 values of a staged input row per channel: the padded output width, plus the
    /// kernel's reach (kx <= 2) rounded to a 64-byte line.
    fn x_row(&self) -> usize {
        self.padded_out_w() + CHUNK
    }

    /// bf16 values of the staged input: [`BAND`] + 2 rows of `c` channels.
    fn x_len(&self) -> usize {
        (BAND + 2) * self.g.c * self.x_row()
    }

    /// Words of the staged output gradient: [`BAND`] rows of pixel pairs by `k`.
    fn dy_len(&self) -> usize {
        BAND * self.padded_out_w() / 2 * self.g.k
    }

    /// Floats of scratch [`FilterPlan::image`] needs.
    pub fn scratch_len(&self) -> usize {
        self.x_len().div_ceil(2) + self.dy_len()
    }

    /// `dw += ` one image's filter gradient and `db += ` its bias gradient: `x` the image
    /// `[in_h, in_w, c]`, `dy` its output gradient `[out_h, out_w, k]` (either form), `dw`
    /// HWIO `[3, 3, c, k]`; `scratch` holds at least [`FilterPlan::scratch_len`] floats.
    /// `db` gets the bits of `Source::add_channel_sums` (the same values in the same
    /// order), summed as the output gradient is staged.
    pub fn image(
        &self,
        x: &[f32],
        dy: Source<'_>,
        dw: &mut [f32],
        db: &mut [f32],
        scratch: &mut [f32],
    ) {
        let g = self.g;
        assert!(supported_here(), "AMX convolution used without AMX-BF16");
        assert!(scratch.len() >= self.scratch_len(), "scratch");
        assert_eq!(x.len(), g.in_h * g.in_w * g.c, "input image");
        dy.check(g.out_h, g.out_w, g.k, "output gradient");
        assert_eq!(dw.len(), 9 * g.c * g.k, "kernel gradient");
        assert_eq!(db.len(), g.k, "bias gradient");
        let (xs, dys) = scratch[..self.scratch_len()].split_at_mut(self.x_len().div_ceil(2));
        // SAFETY: AVX-512F and AMX-BF16 present (asserted); buffers checked above, the
        // kernels index inside them. The staging leaves the tiles alone.
        unsafe {
            configure(&TileConfig::products(CHUNK));
            for y0 in (0..g.out_h).step_by(BAND) {
                let rows = BAND.min(g.out_h - y0);
                self.stage_x(x, y0, rows, xs);
                self.stage_dy(dy, y0, rows, dys, db);
                self.sum_band(rows, xs, dys, dw);
            }
            release();
        }
    }

    /// Padded input rows y0.. y0 + rows + 2, transposed and rounded to bf16 into `staged`,
    /// every value written (the padding as zeros).
    ///
    /// # Safety
    /// AVX-512F present; `x` checked against the geometry.
    #[target_feature(enable = "avx512f")]
    unsafe fn stage_x(&self, x: &[f32], y0: usize, rows: usize, staged: &mut [f32]) {
        let (g, row) = (self.g, self.x_row());
        debug_assert!(staged.len() * 2 >= self.x_len());
        let staged = staged.as_mut_ptr().cast::<u16>();
        for r in 0..rows + 2 {
            let slot = r * g.c * row;
            let Some(y) = (y0 + r).checked_sub(g.pad).filter(|&y| y < g.in_h) else {
                // SAFETY: slot r < BAND + 2: inside the staged input.
                unsafe { std::ptr::write_bytes(staged.add(slot), 0, g.c * row) };
                continue;
            };
            // The left padding and the columns past the last 16-pixel block as zeros.
            let written = g.in_w.next_multiple_of(LANES);
            for ch in 0..g.c {
                let at = slot + ch * row;
                // SAFETY: pad + written <= x_row (see below): inside channel ch's row.
                unsafe {
                    std::ptr::write_bytes(staged.add(at), 0, g.pad);
                    std::ptr::write_bytes(
                        staged.add(at + g.pad + written),
                        0,
                        row - g.pad - written,
                    );
                }
            }
            for x0 in (0..g.in_w).step_by(LANES) {
                for cb in (0..g.c).step_by(LANES) {
                    // Pixels x0.. x0 + 16 (zero past the image) of channels cb.. cb + 16,
                    // turned into channels of 16 pixels.
                    let pixels: [__m512i; LANES] = std::array::from_fn(|i| {
                        // SAFETY: `x` checked; cb + 16 <= c.
                        let v = unsafe {
                            pixel(Source::Dense(x), (g.in_h, g.in_w, g.c), y, x0 + i, cb)
                        };
                        _mm512_castps_si512(v)
                    });
                    for (j, col) in transpose16(pixels).into_iter().enumerate() {
                        let at = slot + (cb + j) * row + g.pad + x0;
                        // SAFETY: pad + x0 + 16 <= pad + in_w + 15 <= x_row (out_w =
                        // in_w + 2 pad - 2, x_row >= out_w + 32): inside channel cb + j's row.
                        unsafe {
                            let v = bf16x16(_mm512_castsi512_ps(col));
                            _mm256_storeu_si256(staged.add(at).cast(), v);
                        }
                    }
                }
            }
        }
    }

    /// Output gradient rows y0.. y0 + rows as bf16 pixel pairs into `staged` (zero past
    /// the output), each pixel's f32 values added to `db` in turn.
    ///
    /// # Safety
    /// AVX-512F present; `dy` checked against the geometry.
    #[target_feature(enable = "avx512f")]
    unsafe fn stage_dy(
        &self,
        dy: Source<'_>,
        y0: usize,
        rows: usize,
        staged: &mut [f32],
        db: &mut [f32],
    ) {
        let g = self.g;
        let pairs = self.padded_out_w() / 2;
        debug_assert!(staged.len() >= self.dy_len());
        let staged = staged.as_mut_ptr().cast::<u32>();
        let shape = (g.out_h, g.out_w, g.k);
        for r in 0..rows {
            for q in 0..pairs {
                for cb in (0..g.k).step_by(LANES) {
                    // SAFETY: `dy` checked, cb + 16 <= k; word (r, q, cb) inside the staged
                    // gradient (r < BAND, q < pairs).
                    unsafe {
                        let even = pixel(dy, shape, y0 + r, 2 * q, cb);
                        let odd = pixel(dy, shape, y0 + r, 2 * q + 1, cb);
                        let at = (r * pairs + q) * g.k + cb;
                        _mm512_storeu_si512(staged.add(at).cast(), pair_words(even, odd));
                        // The bias gradient, pixel after pixel (none past the output).
                        let sum = db.as_mut_ptr().add(cb);
                        for (x, v) in [(2 * q, even), (2 * q + 1, odd)] {
                            if x < g.out_w {
                                _mm512_storeu_ps(sum, _mm512_add_ps(_mm512_loadu_ps(sum), v));
                            }
                        }
                    }
                }
            }
        }
    }

    /// The band's products added to `dw`: tiles of sums in groups of four, in the order
    /// (ky, kx, input channels, output channels), so that neighbours share a first operand.
    ///
    /// # Safety
    /// Tiles configured as `TileConfig::products(CHUNK)`; the band staged.
    unsafe fn sum_band(&self, rows: usize, xs: &[f32], dys: &[f32], dw: &mut [f32]) {
        let g = self.g;
        let (row, pairs) = (self.x_row(), self.padded_out_w() / 2);
        let (cbs, kbs) = (g.c / LANES, g.k / LANES);
        let tiles = 9 * cbs * kbs;
        // Tile t: (first operand's kernel position and channel block, output block).
        let split = |t: usize| ((t / kbs / cbs, t / kbs % cbs), t % kbs);
        let sums_at = |t: usize| {
            let ((kpos, cb), kb) = split(t);
            (kpos * g.c + cb * LANES) * g.k + kb * LANES
        };
        let (x, dy, dw) = (
            xs.as_ptr().cast::<u16>(),
            dys.as_ptr().cast::<u32>(),
            dw.as_mut_ptr(),
        );
        let (a_stride, sums_stride) = (2 * row, 4 * g.k);
        for first in (0..tiles).step_by(4) {
            let n = (tiles - first).min(4);
            // SAFETY (all below): tiles of sums inside dw (HWIO, rows of k floats); the
            // first operand's rows are channels cb.. cb + 16 of staged row r + ky, 32
            // values from x0 + kx <= padded_out_w + 1 < x_row; the second's 16 pixel pairs
            // from x0 / 2 of staged row r, channels kb.. kb + 16.
            unsafe {
                for j in 0..n {
                    load_sums(j, dw.add(sums_at(first + j)), sums_stride);
                }
                for r in 0..rows {
                    for x0 in (0..2 * pairs).step_by(CHUNK) {
                        let mut loaded = None;
                        for j in 0..n {
                            let ((kpos, cb), kb) = split(first + j);
                            if loaded != Some((kpos, cb)) {
                                let (ky, kx) = (kpos / 3, kpos % 3);
                                let a = x.add(((r + ky) * g.c + cb * LANES) * row + x0 + kx);
                                load_first(a, a_stride);
                                loaded = Some((kpos, cb));
                            }
                            let b = dy.add((r * pairs + x0 / 2) * g.k + kb * LANES);
                            multiply_into(j, b, sums_stride);
                        }
                    }
                }
                for j in 0..n {
                    store_sums(j, dw.add(sums_at(first + j)), sums_stride);
                }
            }
        }
    }
}
