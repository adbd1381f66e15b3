//! Dense layers with bf16 products on AMX tiles (`--precision bf16` on a CPU with AMX):
//! the forward pass, the input gradient and the weight gradient of layers whose inputs and
//! outputs are multiples of 32 (the reference CNN's dense1: 43264 x 256).
//!
//! Why: the f32 streaming passes (`streaming.rs`) run dense1's forward pass at about 140
//! GFLOP/s, reading its 44 MB of weights at under 9 GB/s, bound neither by memory (Adam
//! streams 311 MB in about 8 ms) nor quite by the FMAs; on AMX the multiplies cost next to
//! nothing, so what is left is reading the weights once per pass and rounding them to bf16
//! as they are read (`vcvtne2ps2bf16`, 32 values an instruction; it rounds to nearest
//! even, and flushes operands below 2^-126 to zero where the convolutions' integer rounding
//! keeps bf16's subnormals: a difference of under 2^-126 per operand).
//!
//! Each pass is one GEMM in 16 x 16 tiles of f32 sums, four at a time (two blocks of rows
//! by two of columns, `amx_tiles::multiply_2x2`); the batch is padded with zero rows to a
//! multiple of 32. The layouts:
//! - forward, `y = x w`: x as bf16 rows (`[batch][inputs]`), w paired along the inputs
//!   ("VNNI": word (p, o) holds w[2p][o] and w[2p + 1][o]), a chunk of 256 weight rows at a
//!   time; the sum over the inputs in [`FORWARD_RANGES`] fixed ranges, a task each, their
//!   partial sums added in range order (the bits do not depend on the threads);
//! - input gradient, `dx^T = w dy^T`: w's rows as bf16 rows (a weight row's outputs are
//!   the sum), dy paired along the outputs per image; each 16 x 16 tile of dx^T transposed
//!   as it is stored;
//! - weight gradient, `dw = x^T dy`: x transposed to bf16 rows of images per input, dy
//!   paired along the images; each tile of dw stored once, straight into dw.

use std::arch::x86_64::*;

use rayon::prelude::*;

use super::{DenseShape, GradientSink};
use crate::ops::amx_tiles::{
    TileConfig, configure, load_sums, multiply_2x2, release, store_sums, transpose16, zero_sums,
};

/// Rows and columns of a tile of sums; f32 lanes of an AVX-512 register.
const TILE: usize = 16;
/// bf16 values of a tile row: the sum's step, and the padding of the batch.
const STEP: usize = 32;
/// Weight rows per chunk of the forward pass (paired: 128 KiB at 256 outputs, in L2).
const CHUNK_ROWS: usize = 256;
/// Ranges of the forward pass's sum over the inputs, a task each.
const FORWARD_RANGES: usize = 8;
/// Inputs per task of the gradients.
const BAND: usize = 256;

/// Whether `s` runs here: inputs and outputs multiples of 32, on a CPU with AMX-BF16 (which
/// `cpu_has` grants only with AVX512_BF16) and AVX-512 BW: the instructions that round and
/// pair the operands.
pub fn supported(s: &DenseShape) -> bool {
    s.inputs.is_multiple_of(STEP)
        && s.outputs.is_multiple_of(STEP)
        && s.inputs > 0
        && s.outputs > 0
        && s.batch > 0
        && crate::precision::cpu_has("amx-bf16")
        && crate::precision::cpu_has("avx512bw")
}

/// The batch padded to whole steps of 32 rows.
fn padded_batch(s: &DenseShape) -> usize {
    s.batch.next_multiple_of(STEP)
}

/// 32 floats, `lo` then `hi`, rounded to bf16 (to nearest even) in order.
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
fn bf16x32(lo: __m512, hi: __m512) -> __m512i {
    // SAFETY: __m512bh and __m512i are the same 512 bits.
    unsafe { std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo)) }
}

/// 16 words pairing `even[i]` (low half) with `odd[i]`, rounded to bf16.
#[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
#[inline]
fn paired(even: __m512, odd: __m512) -> __m512i {
    // [e0.. e15, o0.. o15] -> [e0, o0, e1, o1, ..].
    let order = _mm512_set_epi16(
        31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4,
        19, 3, 18, 2, 17, 1, 16, 0,
    );
    _mm512_permutexvar_epi16(order, bf16x32(even, odd))
}

/// `rows` rows of `width` floats (`src`, rows `width` apart) rounded to bf16 into `dst`
/// (rows `width` apart), `width` a multiple of 32.
///
/// # Safety
/// AVX-512F and AVX512_BF16 present; the rows inside both.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn round_rows(src: &[f32], rows: usize, width: usize, dst: *mut u16) {
    debug_assert!(width.is_multiple_of(STEP) && src.len() >= rows * width);
    for at in (0..rows * width).step_by(STEP) {
        // SAFETY: at + 32 <= rows * width, inside both.
        unsafe {
            let (lo, hi) = (
                _mm512_loadu_ps(src.as_ptr().add(at)),
                _mm512_loadu_ps(src.as_ptr().add(at + TILE)),
            );
            _mm512_storeu_si512(dst.add(at).cast(), bf16x32(lo, hi));
        }
    }
}

/// `pairs[p][col] = (m[2p][col], m[2p + 1][col])` as bf16 words for the padded rows of an
/// `[rows, cols]` matrix `m` (rows past `rows` zero), `cols` a multiple of 16: the second
/// operand's layout when the sum runs down `m`'s rows.
#[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
fn pair_rows(m: &[f32], rows: usize, cols: usize, padded: usize) -> Vec<u32> {
    let mut pairs = vec![0u32; padded / 2 * cols];
    let row = |r: usize, c: usize| {
        if r < rows {
            // SAFETY: r < rows, c + 16 <= cols.
            unsafe { _mm512_loadu_ps(m.as_ptr().add(r * cols + c)) }
        } else {
            _mm512_setzero_ps()
        }
    };
    for p in 0..padded / 2 {
        for c in (0..cols).step_by(TILE) {
            let words = paired(row(2 * p, c), row(2 * p + 1, c));
            // SAFETY: p < padded / 2, c + 16 <= cols: inside `pairs`.
            unsafe { _mm512_storeu_si512(pairs.as_mut_ptr().add(p * cols + c).cast(), words) };
        }
    }
    pairs
}

/// Floats of scratch [`forward`] takes: the batch as bf16 rows.
pub fn forward_scratch_len(s: &DenseShape) -> usize {
    padded_batch(s) * s.inputs / 2
}

/// `y = x @ w` (`x` `[batch, inputs]`, `w` `[inputs, outputs]`, `y` `[batch, outputs]`,
/// all row-major), without the bias, with bf16 products; `scratch` holds at least
/// [`forward_scratch_len`] floats (the caller's, reused: 2.7 MB for dense1, which a fresh
/// allocation would map and fault in page by page at every call).
pub fn forward(s: &DenseShape, x: &[f32], w: &[f32], y: &mut [f32], scratch: &mut [f32]) {
    assert!(supported(s), "AMX dense layer used where it does not apply");
    assert_eq!(x.len(), s.batch * s.inputs, "input");
    assert_eq!(w.len(), s.inputs * s.outputs, "kernel");
    assert_eq!(y.len(), s.batch * s.outputs, "output");
    assert!(scratch.len() >= forward_scratch_len(s), "scratch");
    let batch = padded_batch(s);
    // x as bf16 rows, the padding rows zero.
    let xs: &mut [u16] = bytemuck::cast_slice_mut(&mut scratch[..forward_scratch_len(s)]);
    xs[s.batch * s.inputs..].fill(0);
    xs.par_chunks_mut(s.inputs)
        .zip(x.par_chunks(s.inputs))
        .for_each(|(dst, src)| {
            // SAFETY: AMX-BF16, AVX512_BF16 present (supported); one row of `inputs` values.
            unsafe { round_rows(src, 1, s.inputs, dst.as_mut_ptr()) }
        });
    let xs = &*xs;
    let per_range = s.inputs.div_ceil(CHUNK_ROWS).div_ceil(FORWARD_RANGES) * CHUNK_ROWS;
    let starts: Vec<usize> = (0..s.inputs).step_by(per_range).collect();
    let partials: Vec<Vec<f32>> = starts
        .into_par_iter()
        // A chunk's paired weights, one buffer per rayon job.
        .map_init(
            || vec![0u32; CHUNK_ROWS / 2 * s.outputs],
            |pairs, k0| {
                let mut sums = vec![0f32; batch * s.outputs];
                let k1 = (k0 + per_range).min(s.inputs);
                // SAFETY: as above; the range's rows inside w, `sums` [batch, outputs].
                unsafe { forward_range(s, xs, w, k0, k1, pairs, &mut sums) };
                sums
            },
        )
        .collect();
    let (first, rest) = partials
        .split_first()
        .expect("inputs > 0: one range at least");
    y.copy_from_slice(&first[..s.batch * s.outputs]);
    for part in rest {
        for (o, &v) in y.iter_mut().zip(part) {
            *o += v;
        }
    }
}

/// `sums[b][o] += sum over k0 <= k < k1 of xs[b][k] w[k][o]`, chunk by chunk of weight rows
/// paired to bf16.
///
/// # Safety
/// AMX-BF16, AVX-512 BW and BF16 usable; `xs` the padded batch of bf16 rows; k0, k1
/// multiples of 32 (or k1 = inputs) inside the inputs.
#[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
unsafe fn forward_range(
    s: &DenseShape,
    xs: &[u16],
    w: &[f32],
    k0: usize,
    k1: usize,
    pairs: &mut [u32],
    sums: &mut [f32],
) {
    let (batch, outs) = (padded_batch(s), s.outputs);
    debug_assert!(pairs.len() >= CHUNK_ROWS / 2 * outs);
    let (a_stride, b_stride) = (2 * s.inputs, 4 * outs);
    let sums = sums.as_mut_ptr();
    // SAFETY (below): tiles configured here and released at the end; A tiles are 16 rows of
    // xs from column c0 + k (< inputs), B tiles 16 rows of `pairs` (< rows / 2), sums tiles
    // inside `sums` ([batch, outputs], batch a multiple of 32, outputs of 32).
    unsafe { configure(&TileConfig::products(STEP)) };
    for c0 in (k0..k1).step_by(CHUNK_ROWS) {
        let rows = CHUNK_ROWS.min(k1 - c0);
        for p in 0..rows / 2 {
            for o in (0..outs).step_by(TILE) {
                let at = |r: usize| (c0 + r) * outs + o;
                // SAFETY: rows c0 + 2p + 1 < k1 <= inputs, o + 16 <= outputs.
                let words = unsafe {
                    paired(
                        _mm512_loadu_ps(w.as_ptr().add(at(2 * p))),
                        _mm512_loadu_ps(w.as_ptr().add(at(2 * p + 1))),
                    )
                };
                // SAFETY: p < CHUNK_ROWS / 2, o + 16 <= outputs.
                unsafe { _mm512_storeu_si512(pairs.as_mut_ptr().add(p * outs + o).cast(), words) };
            }
        }
        for o0 in (0..outs).step_by(STEP) {
            for b0 in (0..batch).step_by(STEP) {
                let sum_at = |t: usize| (b0 + t / 2 * TILE) * outs + o0 + t % 2 * TILE;
                unsafe {
                    for t in 0..4 {
                        load_sums(t, sums.add(sum_at(t)), 4 * outs);
                    }
                    for k in (0..rows).step_by(STEP) {
                        let a = |m: usize| xs.as_ptr().add((b0 + m * TILE) * s.inputs + c0 + k);
                        let b = |n: usize| pairs.as_ptr().add(k / 2 * outs + o0 + n * TILE);
                        multiply_2x2([a(0), a(1)], a_stride, [b(0), b(1)], b_stride);
                    }
                    for t in 0..4 {
                        store_sums(t, sums.add(sum_at(t)), 4 * outs);
                    }
                }
            }
        }
    }
    unsafe { release() };
}

/// `dx = dy @ w^T` (`dy` `[batch, outputs]`, `dx` `[batch, inputs]`) with bf16 products:
/// rayon over bands of weight rows, each writing its columns of dx through a buffer.
pub fn input_gradient(s: &DenseShape, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    assert!(supported(s), "AMX dense layer used where it does not apply");
    assert_eq!(dy.len(), s.batch * s.outputs, "output gradient");
    assert_eq!(w.len(), s.inputs * s.outputs, "kernel");
    assert_eq!(dx.len(), s.batch * s.inputs, "input gradient");
    let batch = padded_batch(s);
    // dy^T paired along the outputs: word (j, b) = (dy[b][2j], dy[b][2j + 1]).
    let mut dy_t = vec![0f32; batch * s.outputs];
    for b in 0..s.batch {
        for o in 0..s.outputs {
            dy_t[o * batch + b] = dy[b * s.outputs + o];
        }
    }
    // SAFETY: the CPU features checked by supported().
    let pairs = unsafe { pair_rows(&dy_t, s.outputs, batch, s.outputs) };
    let bands: Vec<(usize, Vec<f32>)> = (0..s.inputs)
        .step_by(BAND)
        .collect::<Vec<_>>()
        .into_par_iter()
        // A band's weights as bf16 rows, one buffer per rayon job.
        .map_init(
            || vec![0u16; BAND * s.outputs],
            |ws, n0| {
                let rows = BAND.min(s.inputs - n0);
                let mut out = vec![0f32; batch * rows];
                // SAFETY: as above; weight rows n0.. n0 + rows inside w.
                unsafe { input_gradient_band(s, &pairs, w, n0, rows, ws, &mut out) };
                (n0, out)
            },
        )
        .collect();
    for (n0, out) in bands {
        let rows = out.len() / batch;
        for (b, part) in out.chunks_exact(rows).take(s.batch).enumerate() {
            dx[b * s.inputs + n0..b * s.inputs + n0 + rows].copy_from_slice(part);
        }
    }
}

/// `out[b][r] = sum_o dy[b][o] w[n0 + r][o]` for the band's `rows` weight rows (a multiple
/// of 32), `pairs` dy^T paired along the outputs.
///
/// # Safety
/// As [`forward_range`]; rows n0.. n0 + rows inside w; `out` `[padded batch, rows]`.
#[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
unsafe fn input_gradient_band(
    s: &DenseShape,
    pairs: &[u32],
    w: &[f32],
    n0: usize,
    rows: usize,
    ws: &mut [u16],
    out: &mut [f32],
) {
    let (batch, outs) = (padded_batch(s), s.outputs);
    debug_assert!(ws.len() >= rows * outs);
    // SAFETY: rows n0.. n0 + rows of w, `rows * outs` values of ws.
    unsafe {
        round_rows(
            &w[n0 * outs..(n0 + rows) * outs],
            rows,
            outs,
            ws.as_mut_ptr(),
        )
    };
    let (a_stride, b_stride) = (2 * outs, 4 * batch);
    let mut tile = [0f32; TILE * TILE];
    // SAFETY (below): tiles configured and released here; A tiles 16 rows of ws from
    // column q (< outputs), B tiles 16 rows of `pairs` from row q / 2, columns b0..;
    // stores inside `tile`, then `out`.
    unsafe { configure(&TileConfig::products(STEP)) };
    for r0 in (0..rows).step_by(STEP) {
        for b0 in (0..batch).step_by(STEP) {
            unsafe {
                zero_sums(4);
                for q in (0..outs).step_by(STEP) {
                    let a = |m: usize| ws.as_ptr().add((r0 + m * TILE) * outs + q);
                    let b = |n: usize| pairs.as_ptr().add(q / 2 * batch + b0 + n * TILE);
                    multiply_2x2([a(0), a(1)], a_stride, [b(0), b(1)], b_stride);
                }
                // Tile 2m + n: weight rows r0 + 16m.., images b0 + 16n..; stored turned.
                for t in 0..4 {
                    let (m, n) = (t / 2, t % 2);
                    store_sums(t, tile.as_mut_ptr(), 4 * TILE);
                    let rows_of = std::array::from_fn(|i| {
                        _mm512_loadu_si512(tile.as_ptr().add(i * TILE).cast())
                    });
                    for (i, col) in transpose16(rows_of).into_iter().enumerate() {
                        let at = (b0 + n * TILE + i) * rows + r0 + m * TILE;
                        _mm512_storeu_si512(out.as_mut_ptr().add(at).cast(), col);
                    }
                }
            }
        }
    }
    unsafe { release() };
}

/// `dw = x^T @ dy` (`dw` `[inputs, outputs]`) with bf16 products, into `sink` (stored,
/// or applied by Adam): rayon over bands of weight rows, each tile of a band stored once.
pub(crate) fn weight_gradient(s: &DenseShape, x: &[f32], dy: &[f32], sink: GradientSink<'_>) {
    assert!(supported(s), "AMX dense layer used where it does not apply");
    assert_eq!(x.len(), s.batch * s.inputs, "input");
    assert_eq!(dy.len(), s.batch * s.outputs, "output gradient");
    assert_eq!(sink.len(), s.inputs * s.outputs, "kernel gradient");
    let batch = padded_batch(s);
    // SAFETY: the CPU features checked by supported().
    let pairs = unsafe { pair_rows(dy, s.batch, s.outputs, batch) };
    sink.bands(s.outputs, BAND, |n0, band| {
        // SAFETY: as above; `band` is dw's rows n0.. (a whole number of rows).
        unsafe { weight_gradient_band(s, x, &pairs, n0, band) };
    });
}

/// dw's rows n0.. (as many as `band` holds, a multiple of 32): x's columns turned to bf16
/// rows of images, times dy paired along the images (`pairs`).
///
/// # Safety
/// As [`forward_range`]; `band` whole rows of dw from row n0.
#[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
unsafe fn weight_gradient_band(
    s: &DenseShape,
    x: &[f32],
    pairs: &[u32],
    n0: usize,
    band: &mut [f32],
) {
    let (batch, outs) = (padded_batch(s), s.outputs);
    let rows = band.len() / outs;
    // x^T for the band's inputs: [rows][batch] bf16, images past the batch zero.
    let mut xt = vec![0u16; rows * batch];
    for r0 in (0..rows).step_by(TILE) {
        for b0 in (0..s.batch).step_by(TILE) {
            let images: [__m512i; TILE] = std::array::from_fn(|i| {
                if b0 + i < s.batch {
                    // SAFETY: image b0 + i < batch, inputs n0 + r0 + 16 <= inputs.
                    unsafe {
                        _mm512_loadu_si512(x.as_ptr().add((b0 + i) * s.inputs + n0 + r0).cast())
                    }
                } else {
                    _mm512_setzero_si512()
                }
            });
            for (i, col) in transpose16(images).into_iter().enumerate() {
                let v = _mm512_castsi512_ps(col);
                // 16 images of input r0 + i, rounded.
                let half = _mm512_castsi512_si256(bf16x32(v, _mm512_setzero_ps()));
                // SAFETY: r0 + i < rows, b0 + 16 <= batch (padded): inside xt.
                unsafe {
                    _mm256_storeu_si256(xt.as_mut_ptr().add((r0 + i) * batch + b0).cast(), half)
                };
            }
        }
    }
    let (a_stride, b_stride) = (2 * batch, 4 * outs);
    // SAFETY (below): tiles configured and released here; A tiles 16 rows of xt from image
    // kb, B tiles 16 rows of `pairs` from kb / 2, columns o0..; sums stored inside `band`.
    unsafe { configure(&TileConfig::products(STEP)) };
    for r0 in (0..rows).step_by(STEP) {
        for o0 in (0..outs).step_by(STEP) {
            unsafe {
                zero_sums(4);
                for kb in (0..batch).step_by(STEP) {
                    let a = |m: usize| xt.as_ptr().add((r0 + m * TILE) * batch + kb);
                    let b = |n: usize| pairs.as_ptr().add(kb / 2 * outs + o0 + n * TILE);
                    multiply_2x2([a(0), a(1)], a_stride, [b(0), b(1)], b_stride);
                }
                for t in 0..4 {
                    let at = (r0 + t / 2 * TILE) * outs + o0 + t % 2 * TILE;
                    store_sums(t, band.as_mut_ptr().add(at), 4 * outs);
                }
            }
        }
    }
    unsafe { release() };
}
