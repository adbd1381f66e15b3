//! The Winograd transforms on AVX-512: each tile's 4x4 input patch (`B^T d B`), its 2x2
//! output gradient taken back to the Winograd domain (`A dy A^T`), and the products back to
//! outputs (`A^T M A`, with bias and ReLU); adds and halves only, in f32. What they store
//! is f32 or bf16 in the layout of the products that read it ([`Layout`]).

use std::arch::x86_64::*;

use super::{Geometry, LANES, POSITIONS, Source, position_stride};

/// 16 f32 lanes rounded to bf16 (to nearest even, a NaN kept a NaN, as
/// [`crate::precision::bf16_bits`]), each in the high half of its 32-bit lane. Integer
/// instructions only, so that AVX-512F code can use it.
#[target_feature(enable = "avx512f")]
#[inline]
pub(in crate::ops::conv2d) unsafe fn bf16_high_halves(x: __m512) -> __m512i {
    let bits = _mm512_castps_si512(x);
    let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(bits), _mm512_set1_epi32(1));
    let rounded = _mm512_add_epi32(bits, _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), lsb));
    let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
    let quiet = _mm512_or_si512(bits, _mm512_set1_epi32(0x0040_0000));
    _mm512_mask_mov_epi32(rounded, nan, quiet)
}

/// How a transform stores its 16 values per tile and channel block.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Layout {
    /// f32, `[p][t][channel]`.
    F32,
    /// bf16, two channels a 32-bit word, `[p][t][channel / 2]` words in the first half
    /// of the buffer: the bf16 products' layout.
    ChannelPairs,
    /// bf16, two tiles a 32-bit word (tile 2i in the low half, a missing odd last tile
    /// as zeros), `[p][t / 2][channel]` words: the bf16 filter gradient's layout.
    TilePairs,
}

/// Stores one chunk's transform, `values(t, cb)` giving tile t's 16 positions for the
/// channels cb.. cb + 16 of `width`, in `layout`, each position's rows
/// [`position_stride`] words after the last's.
///
/// # Safety
/// `out` holds at least `16 * position_stride(count, width)` floats; `values` is safe to
/// call for every t < count and cb < width.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn store_chunk(
    layout: Layout,
    count: usize,
    width: usize,
    out: &mut [f32],
    mut values: impl FnMut(usize, usize) -> [__m512; POSITIONS],
) {
    debug_assert!(out.len() >= POSITIONS * position_stride(count, width));
    let base = out.as_mut_ptr();
    if layout == Layout::TilePairs {
        let pairs = count.div_ceil(2);
        let stride = position_stride(pairs, width);
        for i in 0..pairs {
            for cb in (0..width).step_by(LANES) {
                let even = values(2 * i, cb);
                let odd = if 2 * i + 1 < count {
                    values(2 * i + 1, cb)
                } else {
                    [_mm512_setzero_ps(); POSITIONS]
                };
                for p in 0..POSITIONS {
                    let words = unsafe { pair_words(even[p], odd[p]) };
                    let at = p * stride + i * width + cb;
                    // SAFETY: p < 16, i < pairs <= count, cb + 16 <= width.
                    unsafe { _mm512_storeu_si512(base.add(at).cast(), words) };
                }
            }
        }
        return;
    }
    // Words per position: a row of `width` f32, or of width / 2 bf16 pairs.
    let stride = match layout {
        Layout::ChannelPairs => position_stride(count, width / 2),
        _ => position_stride(count, width),
    };
    for t in 0..count {
        for cb in (0..width).step_by(LANES) {
            let vals = values(t, cb);
            for (p, o) in vals.iter().enumerate() {
                if layout == Layout::ChannelPairs {
                    // 16 bf16 = 8 words at bf16 `at` (width and cb are even).
                    let at = 2 * p * stride + t * width + cb;
                    let halves = unsafe { bf16_high_halves(*o) };
                    let packed = _mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(halves));
                    // SAFETY: at / 2 + 8 <= 16 * position_stride(count, width / 2) words.
                    unsafe {
                        let dst = base.cast::<u16>().add(at);
                        _mm256_storeu_si256(dst.cast::<__m256i>(), packed);
                    }
                } else {
                    let at = p * stride + t * width + cb;
                    // SAFETY: p < 16, t < count, cb + 16 <= width.
                    unsafe { _mm512_storeu_ps(base.add(at), *o) };
                }
            }
        }
    }
}

/// Two f32 vectors as bf16 pairs: `even` in the low half of each 32-bit lane.
#[target_feature(enable = "avx512f")]
#[inline]
pub(in crate::ops::conv2d) unsafe fn pair_words(even: __m512, odd: __m512) -> __m512i {
    let (even, odd) = unsafe { (bf16_high_halves(even), bf16_high_halves(odd)) };
    _mm512_or_si512(
        _mm512_srli_epi32::<16>(even),
        _mm512_and_si512(odd, _mm512_set1_epi32(0xFFFF_0000u32 as i32)),
    )
}

/// `V[p][t][c]` for the chunk's tiles `first..first + count` in `layout`: the 4x4 input
/// patch of each tile (zero outside the image), transformed by `B^T d B`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn input_transform(
    layout: Layout,
    g: &Geometry,
    input: Source<'_>,
    first: usize,
    count: usize,
    v: &mut [f32],
) {
    // SAFETY: v is a chunk's V region (16 * chunk * c floats, chunk >= count); the
    // caller checked `input` against the geometry (Geometry::check_pass), cb < c.
    unsafe {
        store_chunk(layout, count, g.c, v, |t, cb| {
            input_tile(g, input, first + t, cb)
        })
    }
}

/// The 16 transformed values of `tile`'s 4x4 input patch for channels cb.. cb + 16,
/// B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]. Reads input pixels
/// only after checking they are inside `[0, in_h) x [0, in_w)`.
///
/// # Safety
/// `input` is an image of `g` (`[in_h, in_w, c]`, checked by `Source::check`) and
/// cb + 16 <= c.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn input_tile(
    g: &Geometry,
    input: Source<'_>,
    tile: usize,
    cb: usize,
) -> [__m512; POSITIONS] {
    let tiles_w = g.tiles_w();
    let (th, tw) = (tile / tiles_w, tile % tiles_w);
    let top = (2 * th) as isize - g.pad as isize;
    let left = (2 * tw) as isize - g.pad as isize;
    let image = (g.in_h, g.in_w, g.c);
    // SAFETY: forwarded (the contract).
    let d = unsafe {
        if g.pad.is_multiple_of(2) {
            patch::<4, 0>(input, image, (top, left), cb)
        } else {
            patch::<4, 1>(input, image, (top, left), cb)
        }
    };
    // B^T d (rows), then (B^T d) B (columns).
    let mut r = [[_mm512_setzero_ps(); 4]; 4];
    for j in 0..4 {
        r[0][j] = _mm512_sub_ps(d[0][j], d[2][j]);
        r[1][j] = _mm512_add_ps(d[1][j], d[2][j]);
        r[2][j] = _mm512_sub_ps(d[2][j], d[1][j]);
        r[3][j] = _mm512_sub_ps(d[1][j], d[3][j]);
    }
    let mut out = [_mm512_setzero_ps(); POSITIONS];
    for (i, row) in r.iter().enumerate() {
        out[i * 4] = _mm512_sub_ps(row[0], row[2]);
        out[i * 4 + 1] = _mm512_add_ps(row[1], row[2]);
        out[i * 4 + 2] = _mm512_sub_ps(row[2], row[1]);
        out[i * 4 + 3] = _mm512_sub_ps(row[1], row[3]);
    }
    out
}

/// `Z[p][t][k] = (A dy A^T)[p]` for the chunk's tiles in `layout`: each tile's 2x2
/// output gradient taken back to the Winograd domain.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn gradient_transform(
    layout: Layout,
    g: &Geometry,
    dy: Source<'_>,
    first: usize,
    count: usize,
    z: &mut [f32],
) {
    // SAFETY: z is a chunk's Z region (16 * chunk * k floats, chunk >= count); the
    // caller checked `dy` against the geometry, kb < k.
    unsafe {
        store_chunk(layout, count, g.k, z, |t, kb| {
            gradient_tile(g, dy, first + t, kb)
        })
    }
}

/// The 16 Winograd-domain values of `tile`'s 2x2 output gradient for channels kb.. kb +
/// 16 (zero where the tile passes an odd-sized output's edge), A = [[1, 0], [1, 1],
/// [1, -1], [0, -1]]. Reads dy only inside the output.
///
/// # Safety
/// `dy` is an output gradient of `g` (`[out_h, out_w, k]`, checked by `Source::check`) and
/// kb + 16 <= k.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn gradient_tile(
    g: &Geometry,
    dy: Source<'_>,
    tile: usize,
    kb: usize,
) -> [__m512; POSITIONS] {
    let tiles_w = g.tiles_w();
    let (th, tw) = (tile / tiles_w, tile % tiles_w);
    let zero = _mm512_setzero_ps();
    let corner = ((2 * th) as isize, (2 * tw) as isize);
    // SAFETY: forwarded (the contract).
    let d = unsafe { patch::<2, 0>(dy, (g.out_h, g.out_w, g.k), corner, kb) };
    // A d (rows), then (A d) A^T (columns): 2x2 -> 4x4.
    let a = |u: __m512, v: __m512| -> [__m512; 4] {
        [
            u,
            _mm512_add_ps(u, v),
            _mm512_sub_ps(u, v),
            _mm512_sub_ps(zero, v),
        ]
    };
    let c0 = a(d[0][0], d[1][0]);
    let c1 = a(d[0][1], d[1][1]);
    let mut out = [zero; POSITIONS];
    for i in 0..4 {
        let r = a(c0[i], c1[i]);
        out[i * 4..i * 4 + 4].copy_from_slice(&r);
    }
    out
}

/// The `N x N` patch of `src`, an `[h, w, channels]` image, from (top, left), channels
/// cb.. cb + 16, zero outside the image. `P` is top's and left's parity, `top % 2` (both
/// alike: the tiles start at even offsets less the padding): for a pooled source it says
/// where the patch cuts the pool windows.
///
/// # Safety
/// `src` holds an `[h, w, channels]` image (`Source::check`) and cb + 16 <= channels.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn patch<const N: usize, const P: usize>(
    src: Source<'_>,
    (h, w, channels): (usize, usize, usize),
    (top, left): (isize, isize),
    cb: usize,
) -> [[__m512; N]; N] {
    debug_assert!(top.rem_euclid(2) as usize == P && left.rem_euclid(2) as usize == P);
    let mut d = [[_mm512_setzero_ps(); N]; N];
    match src {
        Source::Dense(image) => {
            for (i, row) in d.iter_mut().enumerate() {
                let y = top + i as isize;
                if y < 0 || y >= h as isize {
                    continue;
                }
                for (j, val) in row.iter_mut().enumerate() {
                    let x = left + j as isize;
                    if x < 0 || x >= w as isize {
                        continue;
                    }
                    let at = (y as usize * w + x as usize) * channels + cb;
                    debug_assert!(at + LANES <= image.len());
                    // SAFETY: (y, x) is inside the image and cb + 16 <= channels.
                    *val = unsafe { _mm512_loadu_ps(image.as_ptr().add(at)) };
                }
            }
        }
        Source::Pooled { grad, codes } => {
            // Window by window: each one's gradient and code are read once and give the
            // (up to) four values of the patch inside it, the one its code names or zero.
            let (pooled_h, pooled_w) = (h / 2, w / 2);
            let (first_row, first_col) = (top.div_euclid(2), left.div_euclid(2));
            let windows = (N + P).div_ceil(2);
            for wi in 0..windows {
                let r = first_row + wi as isize;
                if r < 0 || r >= pooled_h as isize {
                    continue;
                }
                for wj in 0..windows {
                    let c = first_col + wj as isize;
                    if c < 0 || c >= pooled_w as isize {
                        continue;
                    }
                    let at = (r as usize * pooled_w + c as usize) * channels + cb;
                    debug_assert!(at + LANES <= grad.len() && at + LANES <= codes.len());
                    // SAFETY: window (r, c) is inside the pooled image, cb + 16 <= channels.
                    let (g, code) = unsafe {
                        (
                            _mm512_loadu_ps(grad.as_ptr().add(at)),
                            _mm512_loadu_ps(codes.as_ptr().add(at)),
                        )
                    };
                    for a in 0..2 {
                        // The patch row of the window's row a (the patch starts P rows
                        // into its first window).
                        let i = 2 * wi + a;
                        if i < P || i - P >= N {
                            continue;
                        }
                        for b in 0..2 {
                            let j = 2 * wj + b;
                            if j < P || j - P >= N {
                                continue;
                            }
                            let here = _mm512_set1_ps((2 * a + b) as f32);
                            let hit = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(code, here);
                            d[i - P][j - P] = _mm512_maskz_mov_ps(hit, g);
                        }
                    }
                }
            }
        }
    }
    d
}

/// The chunk's outputs: `A^T M A` per tile and channel block, A^T = [[1, 1, 1, 0],
/// [0, 1, -1, -1]], plus bias, then per `out`: ReLU (if asked) and stored, the 2x2 outputs
/// that fall outside an odd-sized output dropped; or ReLU and the 2x2 max-pool of the tile
/// (a tile is exactly a pool window), its value and code stored (tiles past the pooled
/// output dropped, as the pool drops them).
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn output_transform(
    g: &Geometry,
    m: &[f32],
    first: usize,
    count: usize,
    bias: Option<&[f32]>,
    out: &mut super::Output<'_>,
) {
    let tiles_w = g.tiles_w();
    let stride_p = position_stride(count, g.k);
    let zero = _mm512_setzero_ps();
    let (pooled_h, pooled_w) = (g.out_h / 2, g.out_w / 2);
    for t in 0..count {
        let tile = first + t;
        let (th, tw) = (tile / tiles_w, tile % tiles_w);
        if matches!(out, super::Output::Pooled { .. }) && (th >= pooled_h || tw >= pooled_w) {
            continue;
        }
        for kb in (0..g.k).step_by(LANES) {
            let mut mm = [[zero; 4]; 4];
            for (i, row) in mm.iter_mut().enumerate() {
                for (j, val) in row.iter_mut().enumerate() {
                    let at = (i * 4 + j) * stride_p + t * g.k + kb;
                    // SAFETY: p < 16, t < count, kb + 16 <= k: inside 16 * stride_p.
                    *val = unsafe { _mm512_loadu_ps(m.as_ptr().add(at)) };
                }
            }
            let mut s = [[zero; 4]; 2];
            for j in 0..4 {
                s[0][j] = _mm512_add_ps(_mm512_add_ps(mm[0][j], mm[1][j]), mm[2][j]);
                s[1][j] = _mm512_sub_ps(_mm512_sub_ps(mm[1][j], mm[2][j]), mm[3][j]);
            }
            let b = match bias {
                // SAFETY: kb + 16 <= k = bias.len() (checked by conv_image).
                Some(b) => unsafe { _mm512_loadu_ps(b.as_ptr().add(kb)) },
                None => zero,
            };
            // The tile's 2x2 outputs, row by row, with the bias.
            let mut ys = [zero; 4];
            for (i, row) in s.iter().enumerate() {
                ys[2 * i] = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(row[0], row[1]), row[2]), b);
                ys[2 * i + 1] =
                    _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(row[1], row[2]), row[3]), b);
            }
            match out {
                super::Output::Plain { out, relu } => {
                    for (e, y) in ys.iter().enumerate() {
                        let (oh, ow) = (2 * th + e / 2, 2 * tw + e % 2);
                        if oh >= g.out_h || ow >= g.out_w {
                            continue;
                        }
                        // max(0, y): a NaN y stays NaN (the second operand wins), as in
                        // the scalar path.
                        let y = if *relu { _mm512_max_ps(zero, *y) } else { *y };
                        let at = (oh * g.out_w + ow) * g.k + kb;
                        debug_assert!(at + LANES <= out.len());
                        // SAFETY: (oh, ow) inside the output, kb + 16 <= k.
                        unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(at), y) };
                    }
                }
                super::Output::Pooled { pooled, codes } => {
                    let (value, code) = crate::ops::pool::avx512::relu_window_max(ys);
                    let at = (th * pooled_w + tw) * g.k + kb;
                    debug_assert!(at + LANES <= pooled.len() && at + LANES <= codes.len());
                    // SAFETY: th < pooled_h, tw < pooled_w, kb + 16 <= k.
                    unsafe {
                        _mm512_storeu_ps(pooled.as_mut_ptr().add(at), value);
                        _mm512_storeu_ps(codes.as_mut_ptr().add(at), code);
                    }
                }
            }
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use std::arch::x86_64::*;

    use crate::precision::bf16_bits;

    /// The kernels' vector rounding to bf16 is the scalar one, ties and specials included.
    #[test]
    fn vector_bf16_rounding_is_the_scalar_one() {
        if !crate::ops::cpu::avx512() {
            println!("SKIPPED vector_bf16_rounding_is_the_scalar_one: no AVX-512");
            return;
        }
        let tie = 1.0 + 2f32.powi(-8);
        let mut values = vec![
            0.0,
            -0.0,
            1.0,
            tie,
            1.0 + 3.0 * 2f32.powi(-8),
            -tie,
            f32::MAX,
            f32::MIN_POSITIVE,
            1e-40, // subnormal
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::from_bits(0x7F80_0001), // a signalling NaN with only low bits set
        ];
        let mut rng = crate::rng::Rng::new(3);
        values.extend((0..1000).map(|_| (rng.uniform() as f32 - 0.5) * 1e3));
        for chunk in values.chunks(16) {
            let mut lanes = [0f32; 16];
            lanes[..chunk.len()].copy_from_slice(chunk);
            let mut out = [0u32; 16];
            // SAFETY: AVX-512F present (checked above); 16-element arrays.
            unsafe {
                let v = super::bf16_high_halves(_mm512_loadu_ps(lanes.as_ptr()));
                _mm512_storeu_si512(out.as_mut_ptr().cast(), v);
            }
            for (x, o) in lanes.iter().zip(out) {
                let got = (o >> 16) as u16;
                let want = bf16_bits(*x);
                assert_eq!(
                    got,
                    want,
                    "{x:e} ({:#x}): {got:#x} vs {want:#x}",
                    x.to_bits()
                );
            }
        }
    }
}
