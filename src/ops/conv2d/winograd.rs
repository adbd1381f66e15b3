//! Winograd F(2x2, 3x3) convolution on the CPU, f32 on AVX-512: the forward pass, the input
//! gradient and the filter gradient of a 3x3 convolution with 16k input and output channels
//! (conv2 and conv3 of the reference CNN). The transforms are in `winograd/transforms.rs`;
//! `--precision bf16` runs the products in bf16 on AVX512_BF16 (`winograd/bf16.rs`), held to
//! the bf16 bound of `tests/ops.rs`; a CPU with AMX tiles runs these layers directly
//! (`amx_direct`).
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

/// `product_block!(block, (g, vp, up, mp), t, tb, regs, kb)`: one block of a chunk's products
/// (see [`for_each_product_block`]) by the kernel `block::<TB, R>(g, vp, up, mp, tile, kb)` of
/// the f32 or the bf16 products: a full block in the shape [`TILES_PER_BLOCK`] gives `regs`,
/// a chunk's short last one by fours, then tile by tile (a single tile's few sums wait on
/// their own FMA latency, so as few tiles as possible go singly). Call inside `unsafe`, with
/// the kernel's contract met for tiles t..t + tb.
macro_rules! product_block {
    ($block:ident, ($($arg:expr),*), $t:expr, $tb:expr, $regs:expr, $kb:expr) => {{
        let (t, tb, regs, kb) = ($t, $tb, $regs, $kb);
        if tb == TILES_PER_BLOCK[regs] {
            match regs {
                4 => $block::<4, 4>($($arg,)* t, kb),
                3 => $block::<4, 3>($($arg,)* t, kb),
                2 => $block::<8, 2>($($arg,)* t, kb),
                _ => $block::<12, 1>($($arg,)* t, kb),
            }
        } else {
            let fours = t + tb / 4 * 4;
            for tile in (t..fours).step_by(4) {
                match regs {
                    4 => $block::<4, 4>($($arg,)* tile, kb),
                    3 => $block::<4, 3>($($arg,)* tile, kb),
                    2 => $block::<4, 2>($($arg,)* tile, kb),
                    _ => $block::<4, 1>($($arg,)* tile, kb),
                }
            }
            for tile in fours..t + tb {
                match regs {
                    4 => $block::<1, 4>($($arg,)* tile, kb),
                    3 => $block::<1, 3>($($arg,)* tile, kb),
                    2 => $block::<1, 2>($($arg,)* tile, kb),
                    _ => $block::<1, 1>($($arg,)* tile, kb),
                }
            }
        }
    }};
}

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
    pub(in crate::ops::conv2d) in_h: usize,
    pub(in crate::ops::conv2d) in_w: usize,
    pub(in crate::ops::conv2d) c: usize,
    pub(in crate::ops::conv2d) out_h: usize,
    pub(in crate::ops::conv2d) out_w: usize,
    pub(in crate::ops::conv2d) k: usize,
    pub(in crate::ops::conv2d) pad: usize,
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
    /// Scratch floats one image needs ([`conv_image`]'s `scratch`): a chunk's V region,
    /// then its M (or Z) region.
    pub fn scratch_len(&self) -> usize {
        self.v_len() + POSITIONS * position_stride(self.chunk_tiles(), self.k)
    }
    /// Floats of a chunk's V region, at the start of the scratch.
    fn v_len(&self) -> usize {
        POSITIONS * position_stride(self.chunk_tiles(), self.c)
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
    fn check_pass(&self, input: Source<'_>, scratch: &[f32]) {
        assert!(avx512(), "Winograd convolution used without AVX-512");
        assert!(
            self.c.is_multiple_of(LANES) && self.k.is_multiple_of(LANES),
            "channels"
        );
        input.check(self.in_h, self.in_w, self.c, "input image");
        assert!(scratch.len() >= self.scratch_len(), "scratch");
    }
}

/// 32-bit words from one position's rows to the next in a chunk's transformed inputs,
/// gradients or products (`[p][row][width]`, `rows` rows of `width` words: tiles or tile
/// pairs, of f32 values or bf16 pairs): `rows * width` rounded up to an odd number of
/// 64-byte lines. The transforms store, and the output transform loads, one vector per
/// position in turn; at a stride of a power of two lines (128 tiles of 32 channels: 16 KiB)
/// those 16 addresses share one set of the 12-way L1 cache, and each evicts a line the next
/// tile needs (`cargo bench --bench ops -- conv2`: the fused filter gradient took 21.1 ms
/// instead of 13.6, the input gradient 20.7 instead of 14.3).
pub(super) fn position_stride(rows: usize, width: usize) -> usize {
    ((rows * width).div_ceil(LANES) | 1) * LANES
}

/// An image a pass reads: the forward pass's input, or an output gradient (the input
/// gradient's image, the filter gradient's second operand).
#[derive(Clone, Copy)]
pub enum Source<'a> {
    /// `[h, w, channels]` as stored.
    Dense(&'a [f32]),
    /// A fused block's output gradient, never expanded (three quarters of it are zeros):
    /// the pooled gradient and the codes of [`Output::Pooled`], `[h / 2, w / 2, channels]`
    /// each. The gradient of window (i, j) is at the position its code names (none where
    /// the ReLU was off); everything else, the floored edge included, is zero: what
    /// `maxpool2d_relu_backward` would have written.
    Pooled { grad: &'a [f32], codes: &'a [f32] },
}

impl<'a> Source<'a> {
    /// Image `index` of a batch of `[h, w, channels]` images.
    pub fn image(self, index: usize, h: usize, w: usize, channels: usize) -> Source<'a> {
        let pick = |buf: &'a [f32], len: usize| &buf[index * len..(index + 1) * len];
        match self {
            Source::Dense(images) => Source::Dense(pick(images, h * w * channels)),
            Source::Pooled { grad, codes } => {
                let len = (h / 2) * (w / 2) * channels;
                Source::Pooled {
                    grad: pick(grad, len),
                    codes: pick(codes, len),
                }
            }
        }
    }

    /// `sums[ch] += ` every pixel's value of channel ch, pixel after pixel (row by row), of
    /// an `[h, w, channels]` image: the bias gradient, the same bits from either form (the
    /// pooled one adds the zeros of a window's other positions in their places and leaves
    /// out the floored edge's, which change no sum).
    pub fn add_channel_sums(self, h: usize, w: usize, channels: usize, sums: &mut [f32]) {
        assert_eq!(sums.len(), channels, "channel sums");
        self.check(h, w, channels, "output gradient");
        match self {
            Source::Dense(image) => crate::ops::cpu::add_column_sums(image, sums),
            Source::Pooled { grad, codes } => {
                let row = (w / 2) * channels;
                if row == 0 {
                    return;
                }
                for (g_row, c_row) in grad.chunks_exact(row).zip(codes.chunks_exact(row)) {
                    for a in 0..2 {
                        for (g, c) in g_row
                            .chunks_exact(channels)
                            .zip(c_row.chunks_exact(channels))
                        {
                            for b in 0..2 {
                                let here = (2 * a + b) as f32;
                                for ((s, &g), &c) in sums.iter_mut().zip(g).zip(c) {
                                    *s += if c == here { g } else { 0.0 };
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Checks the buffers against an `[h, w, channels]` image.
    pub(in crate::ops::conv2d) fn check(&self, h: usize, w: usize, channels: usize, what: &str) {
        match self {
            Source::Dense(image) => assert_eq!(image.len(), h * w * channels, "{what}"),
            Source::Pooled { grad, codes } => {
                let n = (h / 2) * (w / 2) * channels;
                assert_eq!(grad.len(), n, "{what}: pooled gradient");
                assert_eq!(codes.len(), n, "{what}: pool codes");
            }
        }
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

/// Where a forward (or input-gradient) pass puts each tile's 2x2 outputs.
pub enum Output<'a> {
    /// Stored as they are (after the ReLU if `relu`): `[out_h, out_w, k]`.
    Plain { out: &'a mut [f32], relu: bool },
    /// ReLU, then the 2x2 max-pool: each tile is one pool window. `pooled` and `codes` are
    /// `[out_h / 2, out_w / 2, k]`: the pooled values and where each window's maximum was,
    /// as the fused first block writes them (`super::direct::forward_relu_pool_image`).
    Pooled {
        pooled: &'a mut [f32],
        codes: &'a mut [f32],
    },
}

impl Output<'_> {
    /// Checks the output buffers against the problem `g` describes.
    pub(in crate::ops::conv2d) fn check(&self, g: &Geometry) {
        match self {
            Output::Plain { out, .. } => {
                assert_eq!(out.len(), g.out_h * g.out_w * g.k, "output image")
            }
            Output::Pooled { pooled, codes } => {
                let n = (g.out_h / 2) * (g.out_w / 2) * g.k;
                assert_eq!(pooled.len(), n, "pooled image");
                assert_eq!(codes.len(), n, "pool codes");
            }
        }
    }
}

/// One image: `out = correlation(pad(input), kernel)` (+ `bias`, then per `out`), the
/// kernel given transformed by [`transform_kernel`]. `scratch` holds at least
/// [`Geometry::scratch_len`] floats.
pub fn conv_image(
    g: &Geometry,
    input: Source<'_>,
    u: &[f32],
    bias: Option<&[f32]>,
    mut out: Output<'_>,
    scratch: &mut [f32],
) {
    g.check_pass(input, scratch);
    assert_eq!(u.len(), g.kernel_len(), "transformed kernel");
    out.check(g);
    assert!(bias.is_none_or(|b| b.len() == g.k), "bias");
    let (v, m) = scratch[..g.scratch_len()].split_at_mut(g.v_len());
    for (first, count) in g.chunks() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512F is present (asserted); every buffer's length was checked above
        // against the geometry, and the kernels index inside those lengths (see theirs).
        unsafe {
            transforms::input_transform(Layout::F32, g, input, first, count, v);
            avx512::products(g, count, v, u, m);
            transforms::output_transform(g, m, first, count, bias, &mut out);
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
    dy: Source<'_>,
    sums: &mut [f32],
    scratch: &mut [f32],
) {
    g.check_pass(Source::Dense(input), scratch);
    dy.check(g.out_h, g.out_w, g.k, "output gradient");
    assert_eq!(sums.len(), filter_sums_len(g), "filter sums");
    let (v, z) = scratch[..g.scratch_len()].split_at_mut(g.v_len());
    for (first, count) in g.chunks() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in conv_image: AVX-512F present, every length checked above.
        unsafe {
            transforms::input_transform(Layout::F32, g, Source::Dense(input), first, count, v);
            transforms::gradient_transform(Layout::F32, g, dy, first, count, z);
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

/// Tiles per block of the products, by registers of output channels (1-4): as many as keep
/// 12-16 accumulators in registers.
const TILES_PER_BLOCK: [usize; 5] = [0, 12, 8, 4, 4];

/// The blocking of a chunk's 16 products `M[p] = V[p] U[p]` over `count` tiles, shared by
/// the f32 and bf16 kernels: per position p, output channels in blocks of up to 4 registers
/// from `kb`, tiles in blocks of [`TILES_PER_BLOCK`] from `t` (the last one, `tb` long,
/// maybe shorter): `block(p, t, tb, regs, kb)`.
fn for_each_product_block(
    g: &Geometry,
    count: usize,
    mut block: impl FnMut(usize, usize, usize, usize, usize),
) {
    for p in 0..POSITIONS {
        let mut kb = 0;
        while kb < g.k {
            let regs = ((g.k - kb) / LANES).min(4);
            let mut t = 0;
            while t < count {
                let tb = (count - t).min(TILES_PER_BLOCK[regs]);
                block(p, t, tb, regs, kb);
                t += tb;
            }
            kb += regs * LANES;
        }
    }
}

/// The blocking of the filter gradient's 16 products, shared by the f32 and bf16 kernels:
/// per position p, output channels in blocks of up to 4 registers from `kb`, input channels
/// in blocks of `channels(regs)` (4 or 8: a divisor of 16) from `c`: `block(p, c, regs, kb)`.
fn for_each_filter_block(
    g: &Geometry,
    channels: impl Fn(usize) -> usize,
    mut block: impl FnMut(usize, usize, usize, usize),
) {
    for p in 0..POSITIONS {
        let mut kb = 0;
        while kb < g.k {
            let regs = ((g.k - kb) / LANES).min(4);
            for c in (0..g.c).step_by(channels(regs)) {
                block(p, c, regs, kb);
            }
            kb += regs * LANES;
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(in crate::ops::conv2d) mod transforms;
#[cfg(target_arch = "x86_64")]
use transforms::Layout;

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{
        Geometry, LANES, TILES_PER_BLOCK, for_each_filter_block, for_each_product_block,
        position_stride,
    };

    /// `M[p][t][k] = sum_c V[p][t][c] U[p][c][k]` for the chunk's `count` tiles: blocks of
    /// 4 to 12 tiles by up to 4 registers of output channels, accumulated over c.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn products(g: &Geometry, count: usize, v: &[f32], u: &[f32], m: &mut [f32]) {
        let (sv, sm) = (position_stride(count, g.c), position_stride(count, g.k));
        for_each_product_block(g, count, |p, t, tb, regs, kb| {
            let vp = &v[p * sv..][..count * g.c];
            let up = &u[p * g.c * g.k..(p + 1) * g.c * g.k];
            let mp = &mut m[p * sm..][..count * g.k];
            // SAFETY: tiles t..t + tb < count, channels kb..kb + 16 * regs <= k.
            unsafe { product_block!(block, (g, vp, up, mp), t, tb, regs, kb) }
        });
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

    /// `sums[p][c][k] += sum_t V[p][t][c] Z[p][t][k]` over the chunk's `count` tiles: blocks
    /// of input channels by up to 4 registers of output channels, accumulated over t; 8
    /// channels where the registers are 1 or 2, so that 8 to 16 sums are in flight (with 8
    /// of 2 registers, each FMA waited for the one before it: conv2's filter gradient).
    /// The order of every sum's terms is the same either way.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn filter_products(
        g: &Geometry,
        count: usize,
        v: &[f32],
        z: &[f32],
        sums: &mut [f32],
    ) {
        let (sv, sz) = (position_stride(count, g.c), position_stride(count, g.k));
        let channels = |regs: usize| if regs <= 2 { 8 } else { 4 };
        for_each_filter_block(g, channels, |p, c, regs, kb| {
            let vp = &v[p * sv..][..count * g.c];
            let zp = &z[p * sz..][..count * g.k];
            let sp = &mut sums[p * g.c * g.k..(p + 1) * g.c * g.k];
            // SAFETY: c + 8 <= c (c is a multiple of 16), kb + 16 * regs <= k.
            unsafe {
                match regs {
                    4 => filter_block::<4, 4>(g, count, vp, zp, sp, c, kb),
                    3 => filter_block::<3, 4>(g, count, vp, zp, sp, c, kb),
                    2 => filter_block::<2, 8>(g, count, vp, zp, sp, c, kb),
                    _ => filter_block::<1, 8>(g, count, vp, zp, sp, c, kb),
                }
            }
        });
    }

    /// Input channels `c..c + CB` by `R` registers of output channels from `kb`, over every
    /// tile of the chunk, added to the sums.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn filter_block<const R: usize, const CB: usize>(
        g: &Geometry,
        count: usize,
        vp: &[f32],
        zp: &[f32],
        sp: &mut [f32],
        c: usize,
        kb: usize,
    ) {
        debug_assert!(c + CB <= g.c && kb + R * LANES <= g.k);
        debug_assert!(count * g.c <= vp.len() && count * g.k <= zp.len());
        let mut acc = [[_mm512_setzero_ps(); R]; CB];
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
}
