//! The Winograd passes with their products in bf16 (`--precision bf16`, AVX512_BF16).
//!
//! The transforms compute in f32 (adds and halves only) and round their results to bf16 as
//! they store them; the 16 products per chunk, where the multiplies are, sum in f32 with
//! `vdpbf16ps`, which multiplies two pairs per 32-bit lane; the transformed operands take
//! half the bytes through L2. A CPU with AMX tiles runs these layers directly instead
//! (`super::super::amx_direct`).
//!
//! Pairs: the forward products `M[p] = V[p] U[p]` sum over input channels, so a word holds
//! channels (2i, 2i + 1) of V (written so by the input transform) and of U (packed once per
//! call by [`pack_kernel`]). The filter gradient sums over tiles, so a word holds tiles
//! (2i, 2i + 1) of V and of Z, paired by the transforms as they store (`Layout::TilePairs`;
//! an odd last tile is paired with zeros).

use super::{Geometry, LANES, POSITIONS, Source};
#[cfg(target_arch = "x86_64")]
use super::{Layout, transforms};
use crate::precision::bf16_pair;

/// `U` of [`super::transform_kernel`] as bf16 pairs of input channels: `[p][c / 2][k]`
/// words, channel 2i in the low half.
pub fn pack_kernel(g: &Geometry, u: &[f32]) -> Vec<u32> {
    assert_eq!(u.len(), g.kernel_len(), "transformed kernel");
    let mut packed = vec![0u32; g.kernel_len() / 2];
    for p in 0..POSITIONS {
        for c2 in 0..g.c / 2 {
            for k in 0..g.k {
                let at = |c: usize| u[(p * g.c + c) * g.k + k];
                packed[(p * g.c / 2 + c2) * g.k + k] = bf16_pair(at(2 * c2), at(2 * c2 + 1));
            }
        }
    }
    packed
}

/// Whether this CPU runs the bf16 products (AVX512_BF16, not hidden).
fn present() -> bool {
    crate::precision::cpu_has("avx512bf16")
}

/// [`super::conv_image`] with bf16 products: `u` is the kernel packed by [`pack_kernel`].
pub fn conv_image(
    g: &Geometry,
    input: Source<'_>,
    u: &[u32],
    bias: Option<&[f32]>,
    mut out: super::Output<'_>,
    scratch: &mut [f32],
) {
    g.check_pass(input, scratch);
    assert!(present(), "bf16 Winograd products without AVX512_BF16");
    assert_eq!(u.len(), g.kernel_len() / 2, "packed kernel");
    out.check(g);
    assert!(bias.is_none_or(|b| b.len() == g.k), "bias");
    let (v, m) = scratch[..g.scratch_len()].split_at_mut(g.v_len());
    for (first, count) in g.chunks() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512F and AVX512_BF16 are present (asserted); every buffer's length
        // was checked above against the geometry, and the kernels index inside those.
        unsafe {
            transforms::input_transform(Layout::ChannelPairs, g, input, first, count, v);
            avx512bf16::products(g, count, v, u, m);
            transforms::output_transform(g, m, first, count, bias, &mut out);
        }
    }
}

/// [`super::filter_gradient_image`] with bf16 products; `scratch` holds at least
/// [`Geometry::scratch_len`] floats.
pub fn filter_gradient_image(
    g: &Geometry,
    input: &[f32],
    dy: Source<'_>,
    sums: &mut [f32],
    scratch: &mut [f32],
) {
    g.check_pass(Source::Dense(input), scratch);
    assert!(present(), "bf16 Winograd products without AVX512_BF16");
    dy.check(g.out_h, g.out_w, g.k, "output gradient");
    assert_eq!(sums.len(), super::filter_sums_len(g), "filter sums");
    let (v, z) = scratch[..g.scratch_len()].split_at_mut(g.v_len());
    for (first, count) in g.chunks() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in conv_image.
        unsafe {
            transforms::input_transform(
                Layout::TilePairs,
                g,
                Source::Dense(input),
                first,
                count,
                v,
            );
            transforms::gradient_transform(Layout::TilePairs, g, dy, first, count, z);
            avx512bf16::filter_products(g, count.div_ceil(2), v, z, sums);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512bf16 {
    use std::arch::x86_64::*;

    use super::super::{
        TILES_PER_BLOCK, for_each_filter_block, for_each_product_block, position_stride,
    };
    use super::{Geometry, LANES};

    /// One bf16 product step: `acc += lo(x) lo(w) + hi(x) hi(w)` per f32 lane.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[inline]
    unsafe fn dot_pairs(acc: __m512, x: __m512i, w: __m512i) -> __m512 {
        // SAFETY: __m512i and __m512bh are the same 512 bits.
        let (x, w) = unsafe {
            (
                std::mem::transmute::<__m512i, __m512bh>(x),
                std::mem::transmute::<__m512i, __m512bh>(w),
            )
        };
        _mm512_dpbf16_ps(acc, x, w)
    }

    /// `M[p][t][k] = sum_c V[p][t][c] U[p][c][k]` with V and U as bf16 channel pairs
    /// (`v` written by the input transform in `Layout::ChannelPairs`, `u` by `pack_kernel`):
    /// the f32 products' blocking (winograd.rs), half the steps.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn products(g: &Geometry, count: usize, v: &[f32], u: &[u32], m: &mut [f32]) {
        let half = g.c / 2;
        // SAFETY: f32 and u32 have one size and alignment; the words were written there.
        let v = unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u32>(), v.len()) };
        let (sv, sm) = (position_stride(count, half), position_stride(count, g.k));
        for_each_product_block(g, count, |p, t, tb, regs, kb| {
            let vp = &v[p * sv..][..count * half];
            let up = &u[p * half * g.k..(p + 1) * half * g.k];
            let mp = &mut m[p * sm..][..count * g.k];
            // SAFETY: tiles t..t + tb < count, channels kb..kb + 16 * regs <= k.
            unsafe { product_block!(block, (g, vp, up, mp), t, tb, regs, kb) }
        });
    }

    /// `TB` tiles from `t` by `R` registers of output channels from `kb`, over every
    /// channel pair.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[inline]
    unsafe fn block<const TB: usize, const R: usize>(
        g: &Geometry,
        vp: &[u32],
        up: &[u32],
        mp: &mut [f32],
        t: usize,
        kb: usize,
    ) {
        let half = g.c / 2;
        debug_assert!((t + TB) * half <= vp.len() && (t + TB) * g.k <= mp.len());
        debug_assert!(kb + R * LANES <= g.k && half * g.k <= up.len());
        let mut acc = [[_mm512_setzero_ps(); R]; TB];
        for c2 in 0..half {
            let mut w = [_mm512_setzero_si512(); R];
            for (r, wr) in w.iter_mut().enumerate() {
                // SAFETY: c2 < c / 2, kb + 16 * (r + 1) <= k: inside U[p] (c / 2 * k words).
                *wr = unsafe {
                    _mm512_loadu_si512(up.as_ptr().add(c2 * g.k + kb + r * LANES).cast())
                };
            }
            for (i, row) in acc.iter_mut().enumerate() {
                // SAFETY: tile t + i < count, c2 < c / 2: inside V[p] (count * c / 2 words).
                let x = _mm512_set1_epi32(unsafe { *vp.get_unchecked((t + i) * half + c2) } as i32);
                for (a, wr) in row.iter_mut().zip(&w) {
                    *a = unsafe { dot_pairs(*a, x, *wr) };
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            for (r, a) in row.iter().enumerate() {
                let at = (t + i) * g.k + kb + r * LANES;
                // SAFETY: tile t + i < count, channel block inside k: inside M[p].
                unsafe { _mm512_storeu_ps(mp.as_mut_ptr().add(at), *a) };
            }
        }
    }

    /// `sums[p][c][k] += sum over tile pairs of V[p][i][c] . Z[p][i][k]` (bf16 tile pairs
    /// from the transforms' `Layout::TilePairs`, `pairs` of them): 4 input channels by up to 4 registers of
    /// output channels per block.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn filter_products(
        g: &Geometry,
        pairs: usize,
        v: &[f32],
        z: &[f32],
        sums: &mut [f32],
    ) {
        // SAFETY: f32 and u32 have one size and alignment; the transforms wrote the words.
        let (v, z) = unsafe {
            (
                std::slice::from_raw_parts(v.as_ptr().cast::<u32>(), v.len()),
                std::slice::from_raw_parts(z.as_ptr().cast::<u32>(), z.len()),
            )
        };
        let (sv, sz) = (position_stride(pairs, g.c), position_stride(pairs, g.k));
        for_each_filter_block(
            g,
            |_| 4,
            |p, c, regs, kb| {
                let vp = &v[p * sv..][..pairs * g.c];
                let zp = &z[p * sz..][..pairs * g.k];
                let sp = &mut sums[p * g.c * g.k..(p + 1) * g.c * g.k];
                // SAFETY: c + 4 <= c (c is a multiple of 16), kb + 16 * regs <= k.
                unsafe {
                    match regs {
                        4 => filter_block::<4>(g, pairs, vp, zp, sp, c, kb),
                        3 => filter_block::<3>(g, pairs, vp, zp, sp, c, kb),
                        2 => filter_block::<2>(g, pairs, vp, zp, sp, c, kb),
                        _ => filter_block::<1>(g, pairs, vp, zp, sp, c, kb),
                    }
                }
            },
        );
    }

    /// Input channels `c..c + 4` by `R` registers of output channels from `kb`, over every
    /// tile pair, added to the sums.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[inline]
    unsafe fn filter_block<const R: usize>(
        g: &Geometry,
        pairs: usize,
        vp: &[u32],
        zp: &[u32],
        sp: &mut [f32],
        c: usize,
        kb: usize,
    ) {
        debug_assert!(c + 4 <= g.c && kb + R * LANES <= g.k);
        debug_assert!(pairs * g.c <= vp.len() && pairs * g.k <= zp.len());
        let mut acc = [[_mm512_setzero_ps(); R]; 4];
        for i in 0..pairs {
            let mut d = [_mm512_setzero_si512(); R];
            for (r, dr) in d.iter_mut().enumerate() {
                // SAFETY: i < pairs, kb + 16 * (r + 1) <= k: inside Z[p].
                *dr =
                    unsafe { _mm512_loadu_si512(zp.as_ptr().add(i * g.k + kb + r * LANES).cast()) };
            }
            for (ci, row) in acc.iter_mut().enumerate() {
                // SAFETY: i < pairs, c + ci < c: inside V[p].
                let x = _mm512_set1_epi32(unsafe { *vp.get_unchecked(i * g.c + c + ci) } as i32);
                for (a, dr) in row.iter_mut().zip(&d) {
                    *a = unsafe { dot_pairs(*a, x, *dr) };
                }
            }
        }
        for (ci, row) in acc.iter().enumerate() {
            for (r, a) in row.iter().enumerate() {
                let at = (c + ci) * g.k + kb + r * LANES;
                // SAFETY: c + ci < c, the channel block inside k: inside sums[p] (c * k).
                unsafe {
                    let old = _mm512_loadu_ps(sp.as_ptr().add(at));
                    _mm512_storeu_ps(sp.as_mut_ptr().add(at), _mm512_add_ps(old, *a));
                }
            }
        }
    }
}
