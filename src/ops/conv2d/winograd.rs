//! Winograd F(2x2, 3x3) convolution on the CPU, f32 on AVX-512: the forward pass, the input
//! gradient and the filter gradient of a 3x3 convolution with 16k input and output channels
//! (conv2 and conv3 of the reference CNN).
//!
//! Why: a 2x2 block of outputs of a 3x3 convolution takes 36 multiplies per channel pair
//! directly, 16 in the Winograd domain (Lavin & Gray, "Fast Algorithms for Convolutional
//! Neural Networks", 2016): 2.25x fewer. Per image, in chunks of output tiles small enough
//! to stay in L2:
//!
//! 1. the kernel is transformed once per call, `U = G g G^T` (16 values per channel pair);
//! 2. each tile's 4x4 input patch is transformed, `V = B^T d B` (adds only, 16 channels a
//!    register);
//! 3. 16 independent products `M[p] = V[p] U[p]` (tiles x C times C x K), register-blocked;
//! 4. each tile's 2x2 outputs are `A^T M A` (adds only), plus bias and ReLU.
//!
//! The input gradient of `y = x * w` (a correlation) is a correlation of the padded output
//! gradient with the kernel turned by 180 degrees and its channels swapped, so it runs
//! through the same code. The filter gradient is the transpose of the forward algebra:
//! `dg = G^T [sum over tiles (A dy A^T) . (B^T d B)] G`, one product per position with the
//! long sum over tiles inside it ([`filter_gradient_image`]).
//!
//! Numerics: the transforms have coefficients 0, +-1 and +-1/2 (the 1/2 are exact), so the
//! rounding differs from im2col's by a small factor; `tests/ops.rs` holds the Winograd path
//! to the same bound as every GEMM (K + 2) * EPSILON * sum|a b| against the f64 reference,
//! and the README states the errors measured.

use super::ConvShape;
use crate::ops::cpu::avx512;

#[cfg(target_arch = "x86_64")]
mod amx;
pub mod bf16;

/// Channels per AVX-512 register.
const LANES: usize = 16;
/// Winograd-domain values per tile (4x4).
const POSITIONS: usize = 16;
/// Bytes of a chunk's transformed inputs and products: they stay in L2 between the steps.
const CHUNK_BYTES: usize = 384 * 1024;

/// Which way a convolution runs through the Winograd code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// `y = conv(x, w)`.
    Forward,
    /// `dx = conv^T(dy, w)`: the input gradient.
    BackwardData,
    /// `dw = sum over pixels of patch(x)^T dy`: the filter gradient (forward's geometry).
    BackwardFilter,
}

/// Whether this machine and shape take the Winograd path (either direction: both need 16k
/// channels in and out).
pub fn supported(s: &ConvShape) -> bool {
    shape_fits(s) && avx512()
}

fn shape_fits(s: &ConvShape) -> bool {
    (s.kernel_h, s.kernel_w) == (3, 3)
        && s.in_c.is_multiple_of(LANES)
        && s.out_c.is_multiple_of(LANES)
        && s.in_c > 0
        && s.out_c > 0
        && s.out_h() > 0
        && s.out_w() > 0
}

/// One image's problem in the terms of the code: a correlation of an `[in_h, in_w, c]`
/// input, zero-padded by `pad` before (top and left), with a transformed 3x3 kernel, into
/// an `[out_h, out_w, k]` output.
#[derive(Clone, Copy, Debug)]
pub struct Geometry {
    in_h: usize,
    in_w: usize,
    c: usize,
    out_h: usize,
    out_w: usize,
    k: usize,
    pad: usize,
}

impl Geometry {
    /// The problem `direction` of `s` poses, per image.
    pub fn of(s: &ConvShape, direction: Direction) -> Geometry {
        let (pad_top, pad_left) = s.pad_before();
        debug_assert_eq!(pad_top, pad_left, "3x3 kernels pad alike");
        match direction {
            Direction::Forward | Direction::BackwardFilter => Geometry {
                in_h: s.in_h,
                in_w: s.in_w,
                c: s.in_c,
                out_h: s.out_h(),
                out_w: s.out_w(),
                k: s.out_c,
                pad: pad_top,
            },
            // dx[i] = sum_a dy[i + a - (2 - pad)] * w[2 - a]: a correlation of dy padded
            // by 2 - pad, whose output is the input's size.
            Direction::BackwardData => Geometry {
                in_h: s.out_h(),
                in_w: s.out_w(),
                c: s.out_c,
                out_h: s.in_h,
                out_w: s.in_w,
                k: s.in_c,
                pad: 2 - pad_top,
            },
        }
    }

    fn tiles_h(&self) -> usize {
        self.out_h.div_ceil(2)
    }
    fn tiles_w(&self) -> usize {
        self.out_w.div_ceil(2)
    }
    fn tiles(&self) -> usize {
        self.tiles_h() * self.tiles_w()
    }
    /// Tiles per chunk: a multiple of 4 (the product's tile block) whose transformed
    /// inputs and products fit [`CHUNK_BYTES`].
    fn chunk_tiles(&self) -> usize {
        let per_tile = POSITIONS * (self.c + self.k) * size_of::<f32>();
        (CHUNK_BYTES / per_tile).clamp(4, 512) / 4 * 4
    }
    /// Scratch floats one image needs ([`conv_image`]'s `scratch`).
    pub fn scratch_len(&self) -> usize {
        POSITIONS * self.chunk_tiles() * (self.c + self.k)
    }
    /// Floats of the transformed kernel ([`transform_kernel`]).
    pub fn kernel_len(&self) -> usize {
        POSITIONS * self.c * self.k
    }

    /// The chunks of output tiles an image is processed in, as `(first, count)`.
    fn chunks(&self) -> impl Iterator<Item = (usize, usize)> + use<> {
        let (tiles, chunk) = (self.tiles(), self.chunk_tiles());
        (0..tiles)
            .step_by(chunk)
            .map(move |first| (first, chunk.min(tiles - first)))
    }

    /// The checks every per-image pass makes first: this machine, the channel blocks, the
    /// input image and the scratch.
    fn check_pass(&self, input: &[f32], scratch: &[f32]) {
        assert!(avx512(), "Winograd convolution used without AVX-512");
        assert!(
            self.c.is_multiple_of(LANES) && self.k.is_multiple_of(LANES),
            "channels"
        );
        assert_eq!(input.len(), self.in_h * self.in_w * self.c, "input image");
        assert!(scratch.len() >= self.scratch_len(), "scratch");
    }
}

/// `U[p][c][k] = (G g G^T)[p]` for every channel pair, `g` the 3x3 kernel from input channel
/// `c` to output channel `k` of the problem `g` describes (for the input gradient: `w`
/// turned by 180 degrees, its channels swapped). `w` is HWIO `[3, 3, in_c, out_c]`.
pub fn transform_kernel(s: &ConvShape, direction: Direction, w: &[f32]) -> Vec<f32> {
    let g = Geometry::of(s, direction);
    assert_eq!(w.len(), s.kernel_len(), "kernel");
    let mut u = vec![0f32; g.kernel_len()];
    let (in_c, out_c) = (s.in_c, s.out_c);
    for c in 0..g.c {
        for k in 0..g.k {
            // The 3x3 kernel of this channel pair, in the problem's orientation.
            let mut t = [[0f32; 3]; 3];
            for (a, row) in t.iter_mut().enumerate() {
                for (b, v) in row.iter_mut().enumerate() {
                    *v = match direction {
                        Direction::Forward | Direction::BackwardFilter => {
                            w[(a * 3 + b) * in_c * out_c + c * out_c + k]
                        }
                        Direction::BackwardData => {
                            w[((2 - a) * 3 + (2 - b)) * in_c * out_c + k * out_c + c]
                        }
                    };
                }
            }
            // G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]: rows, then columns.
            let rows = |col: [f32; 3]| -> [f32; 4] {
                [
                    col[0],
                    0.5 * (col[0] + col[1] + col[2]),
                    0.5 * (col[0] - col[1] + col[2]),
                    col[2],
                ]
            };
            let mut gg = [[0f32; 3]; 4];
            for b in 0..3 {
                let r = rows([t[0][b], t[1][b], t[2][b]]);
                for i in 0..4 {
                    gg[i][b] = r[i];
                }
            }
            for (i, row) in gg.iter().enumerate() {
                let r = rows(*row);
                for (j, v) in r.iter().enumerate() {
                    u[((i * 4 + j) * g.c + c) * g.k + k] = *v;
                }
            }
        }
    }
    u
}

/// One image: `out = correlation(pad(input), kernel)` (+ `bias`, then ReLU if `relu`), the
/// kernel given transformed by [`transform_kernel`]. `scratch` holds at least
/// [`Geometry::scratch_len`] floats.
#[allow(clippy::too_many_arguments)]
pub fn conv_image(
    g: &Geometry,
    input: &[f32],
    u: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
    out: &mut [f32],
    scratch: &mut [f32],
) {
    g.check_pass(input, scratch);
    assert_eq!(u.len(), g.kernel_len(), "transformed kernel");
    assert_eq!(out.len(), g.out_h * g.out_w * g.k, "output image");
    assert!(bias.is_none_or(|b| b.len() == g.k), "bias");
    let (v, m) = scratch[..g.scratch_len()].split_at_mut(POSITIONS * g.chunk_tiles() * g.c);
    for (first, count) in g.chunks() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512F is present (asserted); every buffer's length was checked above
        // against the geometry, and the kernels index inside those lengths (see theirs).
        unsafe {
            avx512::input_transform::<false>(g, input, first, count, v);
            avx512::products(g, count, v, u, m);
            avx512::output_transform(g, m, first, count, bias, relu, out);
        }
    }
}

/// Floats of the Winograd-domain filter gradient ([`filter_gradient_image`]'s `sums`).
pub fn filter_sums_len(g: &Geometry) -> usize {
    POSITIONS * g.c * g.k
}

/// One image's filter gradient, in the Winograd domain: `sums[p][c][k] += sum over tiles of
/// V[p][t][c] * (A dy A^T)[p][t][k]`, `input` an image `[in_h, in_w, c]` and `dy` its output
/// gradient `[out_h, out_w, k]` (the forward geometry). [`fold_filter_sums`] turns the sums
/// of any number of images into `dw`.
pub fn filter_gradient_image(
    g: &Geometry,
    input: &[f32],
    dy: &[f32],
    sums: &mut [f32],
    scratch: &mut [f32],
) {
    g.check_pass(input, scratch);
    assert_eq!(dy.len(), g.out_h * g.out_w * g.k, "output gradient");
    assert_eq!(sums.len(), filter_sums_len(g), "filter sums");
    let (v, z) = scratch[..g.scratch_len()].split_at_mut(POSITIONS * g.chunk_tiles() * g.c);
    for (first, count) in g.chunks() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in conv_image: AVX-512F present, every length checked above.
        unsafe {
            avx512::input_transform::<false>(g, input, first, count, v);
            avx512::gradient_transform(g, dy, first, count, z);
            avx512::filter_products(g, count, v, z, sums);
        }
    }
}

/// `dw[a][b][c][k] += (G^T sums[.][c][k] G)[a][b]` (HWIO, `[3, 3, c, k]`): the Winograd-domain
/// sums of [`filter_gradient_image`] back to the 3x3 kernel's gradient.
pub fn fold_filter_sums(g: &Geometry, sums: &[f32], dw: &mut [f32]) {
    assert_eq!(sums.len(), filter_sums_len(g), "filter sums");
    assert_eq!(dw.len(), 9 * g.c * g.k, "kernel gradient");
    // G^T = [[1, 1/2, 1/2, 0], [0, 1/2, -1/2, 0], [0, 1/2, 1/2, 1]]: applied to 4 values.
    let gt = |v: [f32; 4]| -> [f32; 3] {
        [
            v[0] + 0.5 * (v[1] + v[2]),
            0.5 * (v[1] - v[2]),
            0.5 * (v[1] + v[2]) + v[3],
        ]
    };
    for c in 0..g.c {
        for k in 0..g.k {
            let at = |p: usize| sums[(p * g.c + c) * g.k + k];
            // Columns first (G^T M), then rows ((G^T M) G).
            let mut cols = [[0f32; 4]; 3];
            for j in 0..4 {
                let r = gt([at(j), at(4 + j), at(8 + j), at(12 + j)]);
                for (col, v) in cols.iter_mut().zip(r) {
                    col[j] = v;
                }
            }
            for (a, row) in cols.iter().enumerate() {
                let r = gt(*row);
                for (b, v) in r.iter().enumerate() {
                    dw[(a * 3 + b) * g.c * g.k + c * g.k + k] += *v;
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{Geometry, LANES, POSITIONS};

    /// 16 f32 lanes rounded to bf16 (to nearest even, a NaN kept a NaN, as
    /// [`crate::precision::bf16_bits`]), each in the high half of its 32-bit lane. Integer
    /// instructions only, so that AVX-512F code can use it.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(super) unsafe fn bf16_high_halves(x: __m512) -> __m512i {
        let bits = _mm512_castps_si512(x);
        let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(bits), _mm512_set1_epi32(1));
        let rounded = _mm512_add_epi32(bits, _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), lsb));
        let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
        let quiet = _mm512_or_si512(bits, _mm512_set1_epi32(0x0040_0000));
        _mm512_mask_mov_epi32(rounded, nan, quiet)
    }

    /// `V[p][t][c]` for the chunk's tiles `first..first + count`: the 4x4 input patch of
    /// tile t (zero outside the image), transformed by `B^T d B`, B^T = [[1, 0, -1, 0],
    /// [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]. Reads input pixels only after checking
    /// they are inside `[0, in_h) x [0, in_w)`; writes `V[p][t][c]` for t < count <= chunk.
    /// With `BF16` the values are rounded to bf16 and written two channels a 32-bit word
    /// (`[p][t][c / 2]` words in the first half of `v`), the layout of the bf16 products.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn input_transform<const BF16: bool>(
        g: &Geometry,
        input: &[f32],
        first: usize,
        count: usize,
        v: &mut [f32],
    ) {
        let tiles_w = g.tiles_w();
        let stride_p = count * g.c; // between positions, for this chunk's layout
        for t in 0..count {
            let tile = first + t;
            let (th, tw) = (tile / tiles_w, tile % tiles_w);
            let top = (2 * th) as isize - g.pad as isize;
            let left = (2 * tw) as isize - g.pad as isize;
            for cb in (0..g.c).step_by(LANES) {
                let mut d = [[_mm512_setzero_ps(); 4]; 4];
                for (i, row) in d.iter_mut().enumerate() {
                    let ih = top + i as isize;
                    if ih < 0 || ih >= g.in_h as isize {
                        continue;
                    }
                    for (j, val) in row.iter_mut().enumerate() {
                        let iw = left + j as isize;
                        if iw < 0 || iw >= g.in_w as isize {
                            continue;
                        }
                        let at = (ih as usize * g.in_w + iw as usize) * g.c + cb;
                        debug_assert!(at + LANES <= input.len());
                        // SAFETY: (ih, iw) is inside the image and cb + 16 <= c.
                        *val = unsafe { _mm512_loadu_ps(input.as_ptr().add(at)) };
                    }
                }
                // B^T d (rows), then (B^T d) B (columns).
                let mut r = [[_mm512_setzero_ps(); 4]; 4];
                for j in 0..4 {
                    r[0][j] = _mm512_sub_ps(d[0][j], d[2][j]);
                    r[1][j] = _mm512_add_ps(d[1][j], d[2][j]);
                    r[2][j] = _mm512_sub_ps(d[2][j], d[1][j]);
                    r[3][j] = _mm512_sub_ps(d[1][j], d[3][j]);
                }
                for (i, row) in r.iter().enumerate() {
                    let out = [
                        _mm512_sub_ps(row[0], row[2]),
                        _mm512_add_ps(row[1], row[2]),
                        _mm512_sub_ps(row[2], row[1]),
                        _mm512_sub_ps(row[1], row[3]),
                    ];
                    for (j, o) in out.iter().enumerate() {
                        let at = (i * 4 + j) * stride_p + t * g.c + cb;
                        debug_assert!(at + LANES <= v.len());
                        if BF16 {
                            // 16 bf16 = 8 words at word at / 2 (c and cb are even).
                            let halves = unsafe { bf16_high_halves(*o) };
                            let packed = _mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(halves));
                            // SAFETY: at / 2 + 8 <= 16 * count * c / 2: inside v's first half.
                            unsafe {
                                let dst = v.as_mut_ptr().cast::<u16>().add(at);
                                _mm256_storeu_si256(dst.cast::<__m256i>(), packed);
                            }
                        } else {
                            // SAFETY: p < 16, t < count, cb + 16 <= c: inside 16 * count * c.
                            unsafe { _mm512_storeu_ps(v.as_mut_ptr().add(at), *o) };
                        }
                    }
                }
            }
        }
    }

    /// `M[p][t][k] = sum_c V[p][t][c] U[p][c][k]` for the chunk's `count` tiles: blocks of
    /// 4 to 12 tiles by up to 4 registers of output channels, accumulated over c.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn products(g: &Geometry, count: usize, v: &[f32], u: &[f32], m: &mut [f32]) {
        for p in 0..POSITIONS {
            let vp = &v[p * count * g.c..(p + 1) * count * g.c];
            let up = &u[p * g.c * g.k..(p + 1) * g.c * g.k];
            let mp = &mut m[p * count * g.k..(p + 1) * count * g.k];
            let mut kb = 0;
            while kb < g.k {
                let regs = ((g.k - kb) / LANES).min(4);
                // Tiles per block: as many as keep 12-16 accumulators in registers.
                let full = [0, 12, 8, 4, 4][regs];
                let mut t = 0;
                while t < count {
                    let tb = (count - t).min(full);
                    // SAFETY: tiles t..t + tb < count, channels kb..kb + 16 * regs <= k.
                    unsafe {
                        match (tb == full, regs) {
                            (true, 4) => block::<4, 4>(g, vp, up, mp, t, kb),
                            (true, 3) => block::<4, 3>(g, vp, up, mp, t, kb),
                            (true, 2) => block::<8, 2>(g, vp, up, mp, t, kb),
                            (true, _) => block::<12, 1>(g, vp, up, mp, t, kb),
                            (false, 4) => rest::<4>(g, vp, up, mp, t, tb, kb),
                            (false, 3) => rest::<3>(g, vp, up, mp, t, tb, kb),
                            (false, 2) => rest::<2>(g, vp, up, mp, t, tb, kb),
                            (false, _) => rest::<1>(g, vp, up, mp, t, tb, kb),
                        }
                    }
                    t += tb;
                }
                kb += regs * LANES;
            }
        }
    }

    /// `TB` tiles from `t` by `R` registers of output channels from `kb`, over every c.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn block<const TB: usize, const R: usize>(
        g: &Geometry,
        vp: &[f32],
        up: &[f32],
        mp: &mut [f32],
        t: usize,
        kb: usize,
    ) {
        debug_assert!((t + TB) * g.c <= vp.len() && (t + TB) * g.k <= mp.len());
        debug_assert!(kb + R * LANES <= g.k && g.c * g.k <= up.len());
        let mut acc = [[_mm512_setzero_ps(); R]; TB];
        for c in 0..g.c {
            let mut w = [_mm512_setzero_ps(); R];
            for (r, wr) in w.iter_mut().enumerate() {
                // SAFETY: c < c, kb + 16 * (r + 1) <= k: inside U[p] (c * k floats).
                *wr = unsafe { _mm512_loadu_ps(up.as_ptr().add(c * g.k + kb + r * LANES)) };
            }
            for (i, row) in acc.iter_mut().enumerate() {
                // SAFETY: tile t + i < count, c < c: inside V[p] (count * c floats).
                let x = _mm512_set1_ps(unsafe { *vp.get_unchecked((t + i) * g.c + c) });
                for (a, wr) in row.iter_mut().zip(&w) {
                    *a = _mm512_fmadd_ps(x, *wr, *a);
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

    /// The last tiles of a chunk (fewer than a block), one at a time.
    #[target_feature(enable = "avx512f")]
    unsafe fn rest<const R: usize>(
        g: &Geometry,
        vp: &[f32],
        up: &[f32],
        mp: &mut [f32],
        t: usize,
        tb: usize,
        kb: usize,
    ) {
        for i in 0..tb {
            // SAFETY: forwarded: tile t + i < count.
            unsafe { block::<1, R>(g, vp, up, mp, t + i, kb) };
        }
    }

    /// `Z[p][t][k] = (A dy A^T)[p]` for the chunk's tiles, A = [[1, 0], [1, 1], [1, -1],
    /// [0, -1]]: the tile's 2x2 output gradient (zero where the tile passes an odd-sized
    /// output's edge) taken back to the Winograd domain. Reads dy only inside the output.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn gradient_transform(
        g: &Geometry,
        dy: &[f32],
        first: usize,
        count: usize,
        z: &mut [f32],
    ) {
        let tiles_w = g.tiles_w();
        let stride_p = count * g.k;
        let zero = _mm512_setzero_ps();
        for t in 0..count {
            let tile = first + t;
            let (th, tw) = (tile / tiles_w, tile % tiles_w);
            for kb in (0..g.k).step_by(LANES) {
                let mut d = [[zero; 2]; 2];
                for (i, row) in d.iter_mut().enumerate() {
                    let oh = 2 * th + i;
                    if oh >= g.out_h {
                        continue;
                    }
                    for (j, val) in row.iter_mut().enumerate() {
                        let ow = 2 * tw + j;
                        if ow >= g.out_w {
                            continue;
                        }
                        let at = (oh * g.out_w + ow) * g.k + kb;
                        // SAFETY: (oh, ow) inside the output, kb + 16 <= k.
                        *val = unsafe { _mm512_loadu_ps(dy.as_ptr().add(at)) };
                    }
                }
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
                for i in 0..4 {
                    let r = a(c0[i], c1[i]);
                    for (j, v) in r.iter().enumerate() {
                        let at = (i * 4 + j) * stride_p + t * g.k + kb;
                        // SAFETY: p < 16, t < count, kb + 16 <= k: inside 16 * count * k.
                        unsafe { _mm512_storeu_ps(z.as_mut_ptr().add(at), *v) };
                    }
                }
            }
        }
    }

    /// `sums[p][c][k] += sum_t V[p][t][c] Z[p][t][k]` over the chunk's `count` tiles: blocks
    /// of 4 input channels by up to 4 registers of output channels, accumulated over t.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn filter_products(
        g: &Geometry,
        count: usize,
        v: &[f32],
        z: &[f32],
        sums: &mut [f32],
    ) {
        for p in 0..POSITIONS {
            let vp = &v[p * count * g.c..(p + 1) * count * g.c];
            let zp = &z[p * count * g.k..(p + 1) * count * g.k];
            let sp = &mut sums[p * g.c * g.k..(p + 1) * g.c * g.k];
            let mut kb = 0;
            while kb < g.k {
                let regs = ((g.k - kb) / LANES).min(4);
                for c in (0..g.c).step_by(4) {
                    // SAFETY: c + 4 <= c (c is a multiple of 16), kb + 16 * regs <= k.
                    unsafe {
                        match regs {
                            4 => filter_block::<4>(g, count, vp, zp, sp, c, kb),
                            3 => filter_block::<3>(g, count, vp, zp, sp, c, kb),
                            2 => filter_block::<2>(g, count, vp, zp, sp, c, kb),
                            _ => filter_block::<1>(g, count, vp, zp, sp, c, kb),
                        }
                    }
                }
                kb += regs * LANES;
            }
        }
    }

    /// Input channels `c..c + 4` by `R` registers of output channels from `kb`, over every
    /// tile of the chunk, added to the sums.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn filter_block<const R: usize>(
        g: &Geometry,
        count: usize,
        vp: &[f32],
        zp: &[f32],
        sp: &mut [f32],
        c: usize,
        kb: usize,
    ) {
        debug_assert!(c + 4 <= g.c && kb + R * LANES <= g.k);
        debug_assert!(count * g.c <= vp.len() && count * g.k <= zp.len());
        let mut acc = [[_mm512_setzero_ps(); R]; 4];
        for t in 0..count {
            let mut d = [_mm512_setzero_ps(); R];
            for (r, dr) in d.iter_mut().enumerate() {
                // SAFETY: t < count, kb + 16 * (r + 1) <= k: inside Z[p].
                *dr = unsafe { _mm512_loadu_ps(zp.as_ptr().add(t * g.k + kb + r * LANES)) };
            }
            for (i, row) in acc.iter_mut().enumerate() {
                // SAFETY: t < count, c + i < c: inside V[p].
                let x = _mm512_set1_ps(unsafe { *vp.get_unchecked(t * g.c + c + i) });
                for (a, dr) in row.iter_mut().zip(&d) {
                    *a = _mm512_fmadd_ps(x, *dr, *a);
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            for (r, a) in row.iter().enumerate() {
                let at = (c + i) * g.k + kb + r * LANES;
                // SAFETY: c + i < c, the channel block inside k: inside sums[p] (c * k).
                unsafe {
                    let old = _mm512_loadu_ps(sp.as_ptr().add(at));
                    _mm512_storeu_ps(sp.as_mut_ptr().add(at), _mm512_add_ps(old, *a));
                }
            }
        }
    }

    /// The chunk's outputs: `A^T M A` per tile and channel block, A^T = [[1, 1, 1, 0],
    /// [0, 1, -1, -1]], plus bias and ReLU; the 2x2 outputs that fall outside an odd-sized
    /// output are dropped.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn output_transform(
        g: &Geometry,
        m: &[f32],
        first: usize,
        count: usize,
        bias: Option<&[f32]>,
        relu: bool,
        out: &mut [f32],
    ) {
        let tiles_w = g.tiles_w();
        let stride_p = count * g.k;
        let zero = _mm512_setzero_ps();
        for t in 0..count {
            let tile = first + t;
            let (th, tw) = (tile / tiles_w, tile % tiles_w);
            for kb in (0..g.k).step_by(LANES) {
                let mut mm = [[zero; 4]; 4];
                for (i, row) in mm.iter_mut().enumerate() {
                    for (j, val) in row.iter_mut().enumerate() {
                        let at = (i * 4 + j) * stride_p + t * g.k + kb;
                        // SAFETY: p < 16, t < count, kb + 16 <= k: inside 16 * count * k.
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
                for (i, row) in s.iter().enumerate() {
                    let oh = 2 * th + i;
                    if oh >= g.out_h {
                        continue;
                    }
                    let ys = [
                        _mm512_add_ps(_mm512_add_ps(row[0], row[1]), row[2]),
                        _mm512_sub_ps(_mm512_sub_ps(row[1], row[2]), row[3]),
                    ];
                    for (j, y) in ys.iter().enumerate() {
                        let ow = 2 * tw + j;
                        if ow >= g.out_w {
                            continue;
                        }
                        let mut y = _mm512_add_ps(*y, b);
                        if relu {
                            // max(0, y): a NaN y stays NaN (the second operand wins), as
                            // in the scalar path.
                            y = _mm512_max_ps(zero, y);
                        }
                        let at = (oh * g.out_w + ow) * g.k + kb;
                        debug_assert!(at + LANES <= out.len());
                        // SAFETY: (oh, ow) inside the output, kb + 16 <= k.
                        unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(at), y) };
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
        if !super::avx512() {
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
                let v = super::avx512::bf16_high_halves(_mm512_loadu_ps(lanes.as_ptr()));
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
