//! Dense layers whose weights dwarf their batch (the reference CNN's first dense layer:
//! 43264 x 256 weights, 44 MB, against a 32-image batch), f32 on AVX-512: the forward pass
//! and the weight gradient stream the weights once, in register-blocked passes.
//!
//! Why: a general GEMM packs its operands into panels first; with 32 rows on one side the
//! packing of the 44 MB weight matrix costs as much as the arithmetic (the `gemm` crate ran
//! the forward pass at ~75 GFLOP/s). Here the forward pass reads each weight once from
//! memory (a chunk of rows at a time, kept in L2 while every block of 8 images uses it, the
//! next chunk prefetched meanwhile), and the weight gradient writes each weight once, its 4
//! rows x 64 columns accumulated in 16 registers over the batch.
//!
//! The input gradient reads each weight once too: 4 images by 4 weight rows accumulate 16
//! registers over the outputs, then reduce each to its sum.
//!
//! Used where [`supported`] says so (f32, AVX-512F at run time, outputs a multiple of 64).

use rayon::prelude::*;

use super::{DenseShape, GradientSink};
use crate::ops::cpu::avx512;

/// Output columns per block: four AVX-512 registers.
const COLUMNS: usize = 64;
/// Weight rows per chunk of the forward pass: 256 rows (256 KiB of dense1's) stay in L2
/// while every block of columns and images passes over them.
const CHUNK_ROWS: usize = 256;
/// Ranges of the forward pass's sum over the inputs, a task each: a fixed number, so that
/// the sums do not depend on the number of threads.
const FORWARD_RANGES: usize = 8;
/// Images (forward) or weight rows (gradient) per register block.
const BLOCK: usize = 4;

/// Whether this machine and shape take the streaming path.
pub fn supported(s: &DenseShape) -> bool {
    s.outputs.is_multiple_of(COLUMNS) && s.inputs > 0 && s.batch > 0 && avx512()
}

/// `y = x @ w` (`x` `[batch, inputs]`, `w` `[inputs, outputs]`, `y` `[batch, outputs]`,
/// all row-major), without the bias: rayon over [`FORWARD_RANGES`] ranges of weight rows,
/// each read as one contiguous stream, their partial sums added in range order. (By blocks
/// of 64 columns, each thread had read a quarter of every 1 KiB row of dense1's weights,
/// which the prefetchers followed badly: under `perf record focalflow bench --device cpu`
/// the pass's share of all samples fell from 3.8% to 2.6% with this order.)
pub fn forward(s: &DenseShape, x: &[f32], w: &[f32], y: &mut [f32]) {
    assert!(
        supported(s),
        "streaming dense layer used where it does not apply"
    );
    assert_eq!(x.len(), s.batch * s.inputs, "input");
    assert_eq!(w.len(), s.inputs * s.outputs, "kernel");
    assert_eq!(y.len(), s.batch * s.outputs, "output");
    let per_range = s.inputs.div_ceil(CHUNK_ROWS).div_ceil(FORWARD_RANGES) * CHUNK_ROWS;
    let starts: Vec<usize> = (0..s.inputs).step_by(per_range).collect();
    let partials: Vec<Vec<f32>> = starts
        .into_par_iter()
        .map(|k0| {
            let mut out = vec![0f32; s.batch * s.outputs];
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX-512F is present (supported() checked it); the lengths were checked
            // above and the kernel indexes inside them (see its comment).
            unsafe {
                avx512::forward_rows(s, x, w, k0, (k0 + per_range).min(s.inputs), &mut out)
            };
            out
        })
        .collect();
    let (first, rest) = partials
        .split_first()
        .expect("inputs > 0: one range at least");
    y.copy_from_slice(first);
    for part in rest {
        for (o, &v) in y.iter_mut().zip(part) {
            *o += v;
        }
    }
}

/// `dw = x^T @ dy` (`dw` `[inputs, outputs]`): rayon over bands of weight rows.
pub fn weight_gradient(s: &DenseShape, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    weight_gradient_into(s, x, dy, GradientSink::Store(dw));
}

/// [`weight_gradient`] into `sink` (stored, or applied by Adam band by band).
pub(crate) fn weight_gradient_into(s: &DenseShape, x: &[f32], dy: &[f32], sink: GradientSink<'_>) {
    assert!(
        supported(s),
        "streaming dense layer used where it does not apply"
    );
    assert_eq!(x.len(), s.batch * s.inputs, "input");
    assert_eq!(dy.len(), s.batch * s.outputs, "output gradient");
    assert_eq!(sink.len(), s.inputs * s.outputs, "kernel gradient");
    sink.bands(s.outputs, CHUNK_ROWS, |k0, rows| {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in forward; `rows` is dw's rows k0.. (a whole number of rows).
        unsafe {
            avx512::gradient_rows(s, x, dy, k0, rows)
        };
    });
}

/// Weight rows per task of the input gradient: 64 rows (64 KiB at 256 outputs) stay in L2
/// while every block of images passes over them.
const GRADIENT_BAND: usize = 64;

/// `dx = dy @ w^T` (`dx` `[batch, inputs]`): rayon over bands of weight rows, each writing
/// its columns of dx through a small buffer.
pub fn input_gradient(s: &DenseShape, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    assert!(
        supported(s),
        "streaming dense layer used where it does not apply"
    );
    assert_eq!(dy.len(), s.batch * s.outputs, "output gradient");
    assert_eq!(w.len(), s.inputs * s.outputs, "kernel");
    assert_eq!(dx.len(), s.batch * s.inputs, "input gradient");
    let bands: Vec<(usize, Vec<f32>)> = (0..s.inputs.div_ceil(GRADIENT_BAND))
        .into_par_iter()
        .map(|band| {
            let k0 = band * GRADIENT_BAND;
            let rows = GRADIENT_BAND.min(s.inputs - k0);
            let mut out = vec![0f32; s.batch * rows];
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as in forward; out holds [batch, rows] for weight rows k0..k0 + rows.
            unsafe {
                avx512::input_gradient_band(s, dy, w, k0, rows, &mut out)
            };
            (k0, out)
        })
        .collect();
    for (k0, out) in bands {
        let rows = out.len() / s.batch;
        for (b, part) in out.chunks_exact(rows).enumerate() {
            dx[b * s.inputs + k0..b * s.inputs + k0 + rows].copy_from_slice(part);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{BLOCK, CHUNK_ROWS, COLUMNS, DenseShape};

    /// `out[b][r] = sum_j dy[b][j] w[k0 + r][j]` for r < rows: blocks of 4 images by 4 weight
    /// rows (the rest one by one). Indexing: dy[b * outputs + j], w[(k0 + r) * outputs + j]
    /// with k0 + rows <= inputs, j < outputs (a multiple of 16), out[b * rows + r].
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn input_gradient_band(
        s: &DenseShape,
        dy: &[f32],
        w: &[f32],
        k0: usize,
        rows: usize,
        out: &mut [f32],
    ) {
        debug_assert!(k0 + rows <= s.inputs && out.len() == s.batch * rows);
        let mut r = 0;
        while r < rows {
            let nr = (rows - r).min(BLOCK);
            // The next block's weight rows, on their way from memory while every image
            // uses this block's (the loads had waited on memory: `perf annotate`).
            let next = (k0 + r + nr) * s.outputs;
            let ahead = (rows - r - nr).min(BLOCK) * s.outputs;
            for at in (next..next + ahead).step_by(16) {
                // SAFETY: a prefetch of an address inside w (rows below k0 + rows).
                unsafe { _mm_prefetch::<_MM_HINT_T0>(w.as_ptr().add(at).cast()) };
            }
            let mut b = 0;
            while b < s.batch {
                let nb = (s.batch - b).min(BLOCK);
                // SAFETY: forwarded: images b..b + nb, band rows r..r + nr, all in range.
                unsafe {
                    if nb == BLOCK && nr == BLOCK {
                        dot_block::<BLOCK, BLOCK>(s, dy, w, k0, rows, out, b, r);
                    } else {
                        for i in 0..nb {
                            for j in 0..nr {
                                dot_block::<1, 1>(s, dy, w, k0, rows, out, b + i, r + j);
                            }
                        }
                    }
                }
                b += nb;
            }
            r += nr;
        }
    }

    /// Images `b..b + NB` by band rows `r..r + NR`: each a dot product over the outputs.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn dot_block<const NB: usize, const NR: usize>(
        s: &DenseShape,
        dy: &[f32],
        w: &[f32],
        k0: usize,
        rows: usize,
        out: &mut [f32],
        b: usize,
        r: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); NR]; NB];
        for j in (0..s.outputs).step_by(LANES) {
            let mut wr = [_mm512_setzero_ps(); NR];
            for (q, v) in wr.iter_mut().enumerate() {
                // SAFETY: weight row k0 + r + q < inputs, j + 16 <= outputs: inside w.
                *v = unsafe { _mm512_loadu_ps(w.as_ptr().add((k0 + r + q) * s.outputs + j)) };
            }
            for (i, row) in acc.iter_mut().enumerate() {
                // SAFETY: image b + i < batch, j + 16 <= outputs: inside dy.
                let d = unsafe { _mm512_loadu_ps(dy.as_ptr().add((b + i) * s.outputs + j)) };
                for (a, v) in row.iter_mut().zip(&wr) {
                    *a = _mm512_fmadd_ps(d, *v, *a);
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            for (q, a) in row.iter().enumerate() {
                // SAFETY: image b + i < batch, band row r + q < rows: inside out.
                unsafe {
                    *out.get_unchecked_mut((b + i) * rows + r + q) = _mm512_reduce_add_ps(*a)
                };
            }
        }
    }

    const LANES: usize = 16;
    const REGS: usize = COLUMNS / LANES;

    /// Images per register block of the forward pass, by [`FORWARD_REGS`] registers of
    /// columns: each weight vector loaded from L2 serves 8 images, half the L2 traffic of 4
    /// images by 4 registers. With the next chunk prefetched, dense1's forward took 4.9-5.3
    /// ms against 5.8-8.8 before (`cargo bench --bench dense_streaming`, alternating).
    const FORWARD_IMAGES: usize = 8;
    const FORWARD_REGS: usize = 2;

    /// `out[b][j] = sum_{k0 <= k < k1} x[b][k] w[k][j]`: over chunks of weight rows, blocks
    /// of 32 columns, blocks of 8 images (and the last images one by one) accumulate in 16
    /// registers. Indexing: x[b * inputs + k] with b < batch, k < k1 <= inputs;
    /// w[k * outputs + j] and out[b * outputs + j] with j < outputs (a multiple of 64).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn forward_rows(
        s: &DenseShape,
        x: &[f32],
        w: &[f32],
        k0: usize,
        k1: usize,
        out: &mut [f32],
    ) {
        debug_assert!(k1 <= s.inputs && out.len() == s.batch * s.outputs);
        const C: usize = FORWARD_REGS;
        for c0 in (k0..k1).step_by(CHUNK_ROWS) {
            let c1 = (c0 + CHUNK_ROWS).min(k1);
            // The next chunk's weights, a line per row step of every block, into L2.
            let mut next = (c1 * s.outputs..((c1 + CHUNK_ROWS).min(k1)) * s.outputs).step_by(16);
            for first in (0..s.outputs).step_by(C * LANES) {
                let mut b = 0;
                while b < s.batch {
                    let rows = (s.batch - b).min(FORWARD_IMAGES);
                    for at in next.by_ref().take(c1 - c0) {
                        // SAFETY: a prefetch of an address inside w (rows below k1).
                        unsafe { _mm_prefetch::<_MM_HINT_T1>(w.as_ptr().add(at).cast()) };
                    }
                    // SAFETY: forwarded: images b..b + rows < batch, rows c0..c1 <= inputs.
                    unsafe {
                        if rows == FORWARD_IMAGES {
                            forward_block::<FORWARD_IMAGES, C>(s, x, w, first, out, b, c0, c1);
                        } else {
                            for i in 0..rows {
                                forward_block::<1, C>(s, x, w, first, out, b + i, c0, c1);
                            }
                        }
                    }
                    b += rows;
                }
            }
        }
    }

    /// Images `b..b + R`, weight rows `k0..k1`, the `16 * C` columns from `first`: added to
    /// out. Each sum runs over k in order whatever R and C, so the blocking leaves the bits.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn forward_block<const R: usize, const C: usize>(
        s: &DenseShape,
        x: &[f32],
        w: &[f32],
        first: usize,
        out: &mut [f32],
        b: usize,
        k0: usize,
        k1: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        for k in k0..k1 {
            let mut wk = [_mm512_setzero_ps(); C];
            for (r, v) in wk.iter_mut().enumerate() {
                // SAFETY: k < inputs, first + 16 * (r + 1) <= outputs: inside w.
                *v = unsafe { _mm512_loadu_ps(w.as_ptr().add(k * s.outputs + first + r * LANES)) };
            }
            for (i, row) in acc.iter_mut().enumerate() {
                // SAFETY: image b + i < batch, k < inputs: inside x.
                let xv = _mm512_set1_ps(unsafe { *x.get_unchecked((b + i) * s.inputs + k) });
                for (a, v) in row.iter_mut().zip(&wk) {
                    *a = _mm512_fmadd_ps(xv, *v, *a);
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            for (r, a) in row.iter().enumerate() {
                let at = (b + i) * s.outputs + first + r * LANES;
                // SAFETY: image b + i < batch, first + r * 16 + 16 <= outputs: inside out.
                unsafe {
                    let old = _mm512_loadu_ps(out.as_ptr().add(at));
                    _mm512_storeu_ps(out.as_mut_ptr().add(at), _mm512_add_ps(old, *a));
                }
            }
        }
    }

    /// `rows` = dw's weight rows `k0..` (a whole number of rows): `dw[k][j] = sum_b x[b][k]
    /// dy[b][j]`, 4 rows by 64 columns in 16 registers over the batch (the last rows of the
    /// band one by one). Indexing: x[b * inputs + k], dy[b * outputs + j], rows[(k - k0) *
    /// outputs + j], all inside their slices for k < inputs, j < outputs, b < batch.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn gradient_rows(
        s: &DenseShape,
        x: &[f32],
        dy: &[f32],
        k0: usize,
        rows: &mut [f32],
    ) {
        let n = rows.len() / s.outputs;
        debug_assert!(k0 + n <= s.inputs && n * s.outputs == rows.len());
        for col in (0..s.outputs).step_by(COLUMNS) {
            let mut k = 0;
            while k < n {
                let count = (n - k).min(BLOCK);
                // SAFETY: forwarded: rows k..k + count < n, columns col..col + 64 <= outputs.
                unsafe {
                    if count == BLOCK {
                        gradient_block::<BLOCK>(s, x, dy, k0, rows, k, col);
                    } else {
                        for i in 0..count {
                            gradient_block::<1>(s, x, dy, k0, rows, k + i, col);
                        }
                    }
                }
                k += count;
            }
        }
    }

    /// Rows `k..k + R` of the band (weight rows `k0 + k..`), columns `col..col + 64`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn gradient_block<const R: usize>(
        s: &DenseShape,
        x: &[f32],
        dy: &[f32],
        k0: usize,
        rows: &mut [f32],
        k: usize,
        col: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); REGS]; R];
        for b in 0..s.batch {
            let mut d = [_mm512_setzero_ps(); REGS];
            for (r, v) in d.iter_mut().enumerate() {
                // SAFETY: b < batch, col + 16 * (r + 1) <= outputs: inside dy.
                *v = unsafe { _mm512_loadu_ps(dy.as_ptr().add(b * s.outputs + col + r * LANES)) };
            }
            for (i, row) in acc.iter_mut().enumerate() {
                // SAFETY: b < batch, weight row k0 + k + i < inputs: inside x.
                let xv = _mm512_set1_ps(unsafe { *x.get_unchecked(b * s.inputs + k0 + k + i) });
                for (a, v) in row.iter_mut().zip(&d) {
                    *a = _mm512_fmadd_ps(xv, *v, *a);
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            for (r, a) in row.iter().enumerate() {
                let at = (k + i) * s.outputs + col + r * LANES;
                // SAFETY: band row k + i < n, col + 16 * (r + 1) <= outputs: inside rows.
                unsafe { _mm512_storeu_ps(rows.as_mut_ptr().add(at), *a) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The forward pass's sums in the order its doc states, one multiply-add at a time:
    /// per range of weight rows, per chunk from zero, added to the range's partial sum; the
    /// partials added in range order.
    fn forward_in_order(s: &DenseShape, x: &[f32], w: &[f32]) -> Vec<f32> {
        let per_range = s.inputs.div_ceil(CHUNK_ROWS).div_ceil(FORWARD_RANGES) * CHUNK_ROWS;
        let mut y: Option<Vec<f32>> = None;
        for k0 in (0..s.inputs).step_by(per_range) {
            let k1 = (k0 + per_range).min(s.inputs);
            let mut part = vec![0f32; s.batch * s.outputs];
            for c0 in (k0..k1).step_by(CHUNK_ROWS) {
                for b in 0..s.batch {
                    for j in 0..s.outputs {
                        let mut acc = 0f32;
                        for k in c0..(c0 + CHUNK_ROWS).min(k1) {
                            acc = x[b * s.inputs + k].mul_add(w[k * s.outputs + j], acc);
                        }
                        part[b * s.outputs + j] += acc;
                    }
                }
            }
            y = Some(match y {
                None => part,
                Some(y) => y.iter().zip(&part).map(|(a, b)| a + b).collect(),
            });
        }
        y.expect("inputs > 0")
    }

    /// Bit for bit that order, whatever the register blocking (full blocks of images and
    /// the rest one by one, several chunks a range, column blocks): the sums do not depend
    /// on the number of threads or on how the kernel is tiled.
    #[test]
    fn forward_sums_in_its_stated_order() {
        if !crate::ops::cpu::avx512() {
            println!("SKIPPED forward_sums_in_its_stated_order: no AVX-512");
            return;
        }
        let mut rng = crate::rng::Rng::new(22);
        let mut next = || rng.range(-0.5, 0.5) as f32;
        for (batch, inputs, outputs) in [(11, 2100, 64), (3, 300, 128), (8, 40, 192)] {
            let s = DenseShape {
                batch,
                inputs,
                outputs,
            };
            let x: Vec<f32> = (0..batch * inputs).map(|_| next()).collect();
            let w: Vec<f32> = (0..inputs * outputs).map(|_| next()).collect();
            let mut y = vec![0f32; batch * outputs];
            forward(&s, &x, &w, &mut y);
            let want = forward_in_order(&s, &x, &w);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&y), bits(&want), "{batch}x{inputs} -> {outputs}");
        }
    }
}
