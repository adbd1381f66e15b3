//! Direct 3x3 convolution over 1 or 3 input channels (the first layer of an image model),
//! f32 on AVX-512: the forward pass and the filter gradient, one image at a time.
//!
//! Why: im2col + GEMM suits large patches, but a 3x3 RGB patch has only 27 values, so the
//! first layer spent more time writing and re-reading its patch matrix than multiplying
//! (conv1 ran at ~30 GFLOP/s while conv2/conv3 reached 110-170). Here the 16 output channels
//! of a pixel are one zmm register: the forward pass is 27 broadcast-FMAs per pixel and
//! channel block, for 8 pixels at a time (8 independent chains hide the FMA latency); the
//! filter gradient keeps all 27 x 16 partial sums in 27 registers over a whole image.
//!
//! Used only where [`supported`] says so: f32, AVX-512F at run time, valid padding, a 3x3
//! kernel over 1 or 3 channels, output channels a multiple of 16. Results equal the im2col
//! path up to the order of the sums (the tests below compare them).

use super::{ConvShape, Padding};
use crate::ops::cpu::avx512;

/// Output pixels computed together by the forward pass.
const PIXELS: usize = 8;
/// Output channels per register.
const LANES: usize = 16;

/// Whether this machine and shape take the direct path.
pub fn supported(s: &ConvShape) -> bool {
    shape_fits(s) && avx512()
}

fn shape_fits(s: &ConvShape) -> bool {
    s.padding == Padding::Valid
        && (s.kernel_h, s.kernel_w) == (3, 3)
        && matches!(s.in_c, 1 | 3)
        && s.out_c.is_multiple_of(LANES)
        && s.in_h >= 3
        && s.in_w >= 3
}

/// What every per-image entry point checks first: this machine and shape, the input image.
fn check_image(s: &ConvShape, x: &[f32]) {
    assert!(supported(s), "direct conv used where it does not apply");
    assert_eq!(x.len(), s.in_h * s.in_w * s.in_c, "input image");
}

/// [`check_image`], and the kernel and bias of a forward pass.
fn check_forward(s: &ConvShape, x: &[f32], w: &[f32], b: &[f32]) {
    check_image(s, x);
    assert_eq!(w.len(), s.kernel_len(), "kernel");
    assert_eq!(b.len(), s.out_c, "bias");
}

/// Values per image of the 2x2 max-pool over the convolution's output (floored).
fn pooled_len(s: &ConvShape) -> usize {
    (s.out_h() / 2) * (s.out_w() / 2) * s.out_c
}

/// `y = conv(x, w) + b` (then ReLU if `relu`) for one image: `x` is `[in_h, in_w, in_c]`,
/// `w` `[3, 3, in_c, out_c]`, `y` `[out_h, out_w, out_c]`.
pub fn forward_image(s: &ConvShape, x: &[f32], w: &[f32], b: &[f32], y: &mut [f32], relu: bool) {
    check_forward(s, x, w, b);
    assert_eq!(y.len(), s.out_h() * s.out_w() * s.out_c, "output image");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX-512F is present (supported() checked it); the lengths were checked above
    // and the kernels index only inside them (see their comments).
    unsafe {
        match s.in_c {
            3 => avx512::forward::<3>(s, x, w, b, y, relu),
            _ => avx512::forward::<1>(s, x, w, b, y, relu),
        }
    }
}

/// The pooled output of `pool(relu(conv(x, w) + b))` for one image, without the convolution's
/// output ever being stored: `pooled` `[out_h / 2, out_w / 2, out_c]`, and `codes` (as long)
/// which of the window's four values is the maximum (0-3, row by row, the first of equal
/// ones, as the pool's backward pass picks) or -1 where the maximum is <= 0 (the ReLU was
/// off there: no gradient). The values are the unfused path's bit for bit.
pub fn forward_relu_pool_image(
    s: &ConvShape,
    x: &[f32],
    w: &[f32],
    b: &[f32],
    pooled: &mut [f32],
    codes: &mut [f32],
) {
    check_forward(s, x, w, b);
    let pooled_len = pooled_len(s);
    assert_eq!(pooled.len(), pooled_len, "pooled image");
    assert_eq!(codes.len(), pooled_len, "codes");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX-512F is present (supported() checked it); the lengths were checked above
    // and the kernels index only inside them (see their comments).
    unsafe {
        match s.in_c {
            3 => avx512::forward_relu_pool::<3>(s, x, w, b, pooled, codes),
            _ => avx512::forward_relu_pool::<1>(s, x, w, b, pooled, codes),
        }
    }
}

/// `dw += sum over pixels of patch(x)^T dy` and `db += sum of dy` for one image, where dy is
/// the gradient the pool and the ReLU give the convolution's output from the pooled
/// gradient `dpooled` and the `codes` of [`forward_relu_pool_image`]: the pooled value's
/// gradient at the window's maximum, zero elsewhere. The sums run in the unfused path's
/// order (pixel by pixel, row by row), so they equal it bit for bit.
pub fn backward_filter_relu_pool_image(
    s: &ConvShape,
    x: &[f32],
    codes: &[f32],
    dpooled: &[f32],
    dw: &mut [f32],
    db: &mut [f32],
) {
    check_image(s, x);
    let pooled_len = pooled_len(s);
    assert_eq!(codes.len(), pooled_len, "codes");
    assert_eq!(dpooled.len(), pooled_len, "pooled gradient");
    assert_eq!(dw.len(), s.kernel_len(), "kernel gradient");
    assert_eq!(db.len(), s.out_c, "bias gradient");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: as in forward_relu_pool_image.
    unsafe {
        match s.in_c {
            3 => avx512::backward_filter_relu_pool::<3>(s, x, codes, dpooled, dw, db),
            _ => avx512::backward_filter_relu_pool::<1>(s, x, codes, dpooled, dw, db),
        }
    }
}

/// `dw += sum over pixels of patch(x)^T dy` for one image (`dw` as `w` in
/// [`forward_image`]; the bias gradient is left to the caller).
pub fn backward_filter_image(s: &ConvShape, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    check_image(s, x);
    assert_eq!(dy.len(), s.out_h() * s.out_w() * s.out_c, "output gradient");
    assert_eq!(dw.len(), s.kernel_len(), "kernel gradient");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: as in forward_image.
    unsafe {
        match s.in_c {
            3 => avx512::backward_filter::<3>(s, x, dy, dw),
            _ => avx512::backward_filter::<1>(s, x, dy, dw),
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{ConvShape, LANES, PIXELS};

    /// Offsets of the 9*C patch values from the patch's top-left value, in the order of
    /// the kernel's rows (kh, kw, ci).
    #[inline(always)]
    fn patch_offsets<const C: usize>(in_w: usize) -> [[usize; C]; 9] {
        let mut off = [[0; C]; 9];
        for kh in 0..3 {
            for kw in 0..3 {
                for (ci, o) in off[kh * 3 + kw].iter_mut().enumerate() {
                    *o = (kh * in_w + kw) * C + ci;
                }
            }
        }
        off
    }

    /// Indexing: the input pixel (oh + kh, ow + kw) of a valid 3x3 convolution is inside
    /// the image for every output pixel, so `base + off` < x.len(); weights and outputs
    /// are read/written at `p * out_c + co` and `pixel * out_c + co` with co + 16 <= out_c.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn forward<const C: usize>(
        s: &ConvShape,
        x: &[f32],
        w: &[f32],
        b: &[f32],
        y: &mut [f32],
        relu: bool,
    ) {
        let (out_h, out_w, out_c) = (s.out_h(), s.out_w(), s.out_c);
        let off = patch_offsets::<C>(s.in_w);
        let at = Pointers {
            x: x.as_ptr(),
            w: w.as_ptr(),
            y: y.as_mut_ptr(),
            out_c,
        };
        // SAFETY (whole body): indices as in the comment above.
        unsafe {
            for co in (0..out_c).step_by(LANES) {
                let bias = _mm512_loadu_ps(b.as_ptr().add(co));
                for oh in 0..out_h {
                    let mut ow = 0;
                    // Whole groups of PIXELS, then the row's tail one pixel at a time.
                    while ow + PIXELS <= out_w {
                        let (x0, y0) = ((oh * s.in_w + ow) * C, oh * out_w + ow);
                        pixels::<C, PIXELS>(&at, &off, x0, y0, co, bias, relu);
                        ow += PIXELS;
                    }
                    for ow in ow..out_w {
                        let (x0, y0) = ((oh * s.in_w + ow) * C, oh * out_w + ow);
                        pixels::<C, 1>(&at, &off, x0, y0, co, bias, relu);
                    }
                }
            }
        }
    }

    struct Pointers {
        x: *const f32,
        w: *const f32,
        y: *mut f32,
        out_c: usize,
    }

    /// N consecutive output pixels of one row, from input value `x0` and output pixel
    /// `y0`, channels `co..co + 16`: N independent FMA chains.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn pixels<const C: usize, const N: usize>(
        at: &Pointers,
        off: &[[usize; C]; 9],
        x0: usize,
        y0: usize,
        co: usize,
        bias: __m512,
        relu: bool,
    ) {
        // SAFETY: indices as in forward's comment.
        unsafe {
            let acc = conv_pixels::<C, N>(at, off, x0, co, bias);
            for (i, &a) in acc.iter().enumerate() {
                // max(0, a) keeps a NaN (vmaxps returns its second operand when either is
                // NaN), so a diverging run still shows it.
                let v = if relu {
                    _mm512_max_ps(_mm512_setzero_ps(), a)
                } else {
                    a
                };
                _mm512_storeu_ps(at.y.add((y0 + i) * at.out_c + co), v);
            }
        }
    }

    /// The convolution (before ReLU) of N consecutive output pixels of one row, from input
    /// value `x0`, channels `co..co + 16`: the bias, then the 27 (or 9) FMAs in one order.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn conv_pixels<const C: usize, const N: usize>(
        at: &Pointers,
        off: &[[usize; C]; 9],
        x0: usize,
        co: usize,
        bias: __m512,
    ) -> [__m512; N] {
        let mut acc = [bias; N];
        // SAFETY: indices as in forward's comment.
        unsafe {
            for (p, offs) in off.iter().enumerate() {
                for (ci, &o) in offs.iter().enumerate() {
                    let wv = _mm512_loadu_ps(at.w.add((p * C + ci) * at.out_c + co));
                    for (i, a) in acc.iter_mut().enumerate() {
                        let xv = _mm512_set1_ps(*at.x.add(x0 + i * C + o));
                        *a = _mm512_fmadd_ps(xv, wv, *a);
                    }
                }
            }
        }
        acc
    }

    /// Pooled outputs per block of the fused forward pass: 2 rows of 2 * POOLED pixels,
    /// 4 * POOLED FMA chains.
    const POOLED: usize = 4;

    /// Indexing: as in [`forward`] for the convolution's pixels (rows and columns below
    /// 2 * (out / 2)); `pooled` and `codes` at `(ph * pooled_w + pw) * out_c + co`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn forward_relu_pool<const C: usize>(
        s: &ConvShape,
        x: &[f32],
        w: &[f32],
        b: &[f32],
        pooled: &mut [f32],
        codes: &mut [f32],
    ) {
        let (pooled_h, pooled_w, out_c) = (s.out_h() / 2, s.out_w() / 2, s.out_c);
        let off = patch_offsets::<C>(s.in_w);
        let at = Pointers {
            x: x.as_ptr(),
            w: w.as_ptr(),
            y: std::ptr::null_mut(),
            out_c,
        };
        let (pp, cp) = (pooled.as_mut_ptr(), codes.as_mut_ptr());
        // SAFETY (whole body): indices as in the comment above.
        unsafe {
            for co in (0..out_c).step_by(LANES) {
                let bias = _mm512_loadu_ps(b.as_ptr().add(co));
                for ph in 0..pooled_h {
                    let mut pw = 0;
                    while pw < pooled_w {
                        let n = (pooled_w - pw).min(POOLED);
                        let (top, bottom) = (
                            (2 * ph * s.in_w + 2 * pw) * C,
                            ((2 * ph + 1) * s.in_w + 2 * pw) * C,
                        );
                        let mut rows = [[_mm512_setzero_ps(); 2 * POOLED]; 2];
                        if n == POOLED {
                            rows[0] = conv_pixels::<C, { 2 * POOLED }>(&at, &off, top, co, bias);
                            rows[1] = conv_pixels::<C, { 2 * POOLED }>(&at, &off, bottom, co, bias);
                        } else {
                            for q in 0..n {
                                let t = conv_pixels::<C, 2>(&at, &off, top + 2 * q * C, co, bias);
                                let u =
                                    conv_pixels::<C, 2>(&at, &off, bottom + 2 * q * C, co, bias);
                                rows[0][2 * q..2 * q + 2].copy_from_slice(&t);
                                rows[1][2 * q..2 * q + 2].copy_from_slice(&u);
                            }
                        }
                        for q in 0..n {
                            let (m, code) = crate::ops::pool::avx512::relu_window_max([
                                rows[0][2 * q],
                                rows[0][2 * q + 1],
                                rows[1][2 * q],
                                rows[1][2 * q + 1],
                            ]);
                            let o = (ph * pooled_w + pw + q) * out_c + co;
                            _mm512_storeu_ps(pp.add(o), m);
                            _mm512_storeu_ps(cp.add(o), code);
                        }
                        pw += n;
                    }
                }
            }
        }
    }

    /// Indexing as in [`forward`]; `codes` and `dpooled` as in [`forward_relu_pool`].
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn backward_filter_relu_pool<const C: usize>(
        s: &ConvShape,
        x: &[f32],
        codes: &[f32],
        dpooled: &[f32],
        dw: &mut [f32],
        db: &mut [f32],
    ) {
        let (pooled_h, pooled_w, out_c) = (s.out_h() / 2, s.out_w() / 2, s.out_c);
        let off = patch_offsets::<C>(s.in_w);
        let (xp, cp, gp, dwp) = (
            x.as_ptr(),
            codes.as_ptr(),
            dpooled.as_ptr(),
            dw.as_mut_ptr(),
        );
        // SAFETY (whole body): indices as in the comment above.
        unsafe {
            for co in (0..out_c).step_by(LANES) {
                let mut acc = [[_mm512_setzero_ps(); C]; 9];
                let mut bias = _mm512_loadu_ps(db.as_ptr().add(co));
                // Rows and columns past 2 * pooled get no gradient: the unfused sums add
                // zeros there, which leaves them as they are.
                for oh in 0..2 * pooled_h {
                    for ow in 0..2 * pooled_w {
                        let o = ((oh / 2) * pooled_w + ow / 2) * out_c + co;
                        let here = _mm512_set1_ps(((oh % 2) * 2 + ow % 2) as f32);
                        let hit =
                            _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(_mm512_loadu_ps(cp.add(o)), here);
                        let g = _mm512_maskz_mov_ps(hit, _mm512_loadu_ps(gp.add(o)));
                        bias = _mm512_add_ps(bias, g);
                        let base = (oh * s.in_w + ow) * C;
                        for (accs, offs) in acc.iter_mut().zip(&off) {
                            for (a, &o) in accs.iter_mut().zip(offs) {
                                *a = _mm512_fmadd_ps(_mm512_set1_ps(*xp.add(base + o)), g, *a);
                            }
                        }
                    }
                }
                _mm512_storeu_ps(db.as_mut_ptr().add(co), bias);
                for (p, accs) in acc.iter().enumerate() {
                    for (ci, &a) in accs.iter().enumerate() {
                        let at = dwp.add((p * C + ci) * out_c + co);
                        _mm512_storeu_ps(at, _mm512_add_ps(_mm512_loadu_ps(at), a));
                    }
                }
            }
        }
    }

    /// Indexing as in [`forward`].
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn backward_filter<const C: usize>(
        s: &ConvShape,
        x: &[f32],
        dy: &[f32],
        dw: &mut [f32],
    ) {
        let (out_h, out_w, out_c) = (s.out_h(), s.out_w(), s.out_c);
        let off = patch_offsets::<C>(s.in_w);
        let (xp, dyp, dwp) = (x.as_ptr(), dy.as_ptr(), dw.as_mut_ptr());
        // SAFETY (whole body): indices as in forward's comment.
        unsafe {
            for co in (0..out_c).step_by(LANES) {
                let mut acc = [[_mm512_setzero_ps(); C]; 9];
                for oh in 0..out_h {
                    for ow in 0..out_w {
                        let base = (oh * s.in_w + ow) * C;
                        let g = _mm512_loadu_ps(dyp.add((oh * out_w + ow) * out_c + co));
                        for (accs, offs) in acc.iter_mut().zip(&off) {
                            for (a, &o) in accs.iter_mut().zip(offs) {
                                *a = _mm512_fmadd_ps(_mm512_set1_ps(*xp.add(base + o)), g, *a);
                            }
                        }
                    }
                }
                for (p, accs) in acc.iter().enumerate() {
                    for (ci, &a) in accs.iter().enumerate() {
                        let at = dwp.add((p * C + ci) * out_c + co);
                        _mm512_storeu_ps(at, _mm512_add_ps(_mm512_loadu_ps(at), a));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(in_c: usize, out_c: usize, in_h: usize, in_w: usize) -> ConvShape {
        ConvShape {
            batch: 1,
            in_h,
            in_w,
            in_c,
            out_c,
            kernel_h: 3,
            kernel_w: 3,
            padding: Padding::Valid,
        }
    }

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect()
    }

    /// The convolution straight from its definition, in f64.
    fn reference(s: &ConvShape, x: &[f32], w: &[f32], b: &[f32], relu: bool) -> Vec<f64> {
        let mut y = Vec::new();
        for oh in 0..s.out_h() {
            for ow in 0..s.out_w() {
                for (co, &bias) in b.iter().enumerate() {
                    let mut acc = f64::from(bias);
                    for kh in 0..3 {
                        for kw in 0..3 {
                            for ci in 0..s.in_c {
                                let xi = ((oh + kh) * s.in_w + ow + kw) * s.in_c + ci;
                                let wi = ((kh * 3 + kw) * s.in_c + ci) * s.out_c + co;
                                acc += f64::from(x[xi]) * f64::from(w[wi]);
                            }
                        }
                    }
                    y.push(if relu { acc.max(0.0) } else { acc });
                }
            }
        }
        y
    }

    /// True (after saying so on stderr, past the harness's capture) without AVX-512F.
    fn skipped_without_avx512(test: &str) -> bool {
        use std::io::Write as _;
        if avx512() {
            return false;
        }
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED (no AVX-512F): direct_conv::{test}: the im2col path serves this machine"
        );
        true
    }

    fn close(got: &[f32], want: &[f64], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(
                (f64::from(g) - w).abs() <= 1e-5 * (1.0 + w.abs()),
                "{what}[{i}]: {g} vs {w}"
            );
        }
    }

    #[test]
    fn the_cpu_backend_takes_it_and_agrees_with_its_f64_im2col_path() {
        use crate::ops::{Conv2dOps, CpuBackend};
        if skipped_without_avx512("the_cpu_backend_takes_it_and_agrees_with_its_f64_im2col_path") {
            return;
        }
        // A batch of 5 split across tasks; f64 never takes the direct path.
        let mut s = shape(3, 32, 13, 19);
        s.batch = 5;
        let x = values(s.input_len(), 11);
        let w = values(s.kernel_len(), 12);
        let b = values(s.out_c, 13);
        let dy = values(s.output_len(), 14);
        let wide = |v: &[f32]| v.iter().map(|&e| f64::from(e)).collect::<Vec<f64>>();
        let (f32s, f64s) = (CpuBackend::<f32>::new(), CpuBackend::<f64>::new());

        let mut y = vec![0f32; s.output_len()];
        f32s.conv2d_forward(&s, &x, &w, &b, &mut y, true).unwrap();
        let mut y64 = vec![0f64; s.output_len()];
        f64s.conv2d_forward(&s, &wide(&x), &wide(&w), &wide(&b), &mut y64, true)
            .unwrap();
        close(&y, &y64, "backend forward");

        let (mut dw, mut db) = (vec![0f32; s.kernel_len()], vec![0f32; s.out_c]);
        f32s.conv2d_backward_filter(&s, &x, &dy, &mut dw, &mut db)
            .unwrap();
        let (mut dw64, mut db64) = (vec![0f64; s.kernel_len()], vec![0f64; s.out_c]);
        f64s.conv2d_backward_filter(&s, &wide(&x), &wide(&dy), &mut dw64, &mut db64)
            .unwrap();
        close(&dw, &dw64, "backend filter gradient");
        close(&db, &db64, "backend bias gradient");
    }

    #[test]
    fn only_small_valid_3x3_layers_with_16_channel_blocks_fit() {
        assert!(shape_fits(&shape(3, 16, 224, 224)));
        assert!(shape_fits(&shape(1, 32, 5, 5)));
        assert!(!shape_fits(&shape(16, 32, 111, 111)), "deep input");
        assert!(!shape_fits(&shape(3, 24, 10, 10)), "24 channels");
        let mut same = shape(3, 16, 10, 10);
        same.padding = Padding::Same;
        assert!(!shape_fits(&same), "same padding");
    }

    #[test]
    fn forward_and_filter_gradient_match_the_definition() {
        if skipped_without_avx512("forward_and_filter_gradient_match_the_definition") {
            return;
        }
        // Odd widths exercise the 8-pixel groups' tails; 32 channels two register blocks.
        for (in_c, out_c, h, w) in [(3, 16, 9, 21), (1, 32, 6, 11), (3, 32, 5, 3)] {
            let s = shape(in_c, out_c, h, w);
            let x = values(h * w * in_c, 1);
            let k = values(s.kernel_len(), 2);
            let b = values(out_c, 3);
            for relu in [false, true] {
                let mut y = vec![f32::NAN; s.out_h() * s.out_w() * out_c];
                forward_image(&s, &x, &k, &b, &mut y, relu);
                close(&y, &reference(&s, &x, &k, &b, relu), "forward");
            }
            // dw = sum over pixels of x_patch * dy, against the definition; it adds to dw.
            let dy = values(s.out_h() * s.out_w() * out_c, 4);
            let start = values(s.kernel_len(), 5);
            let mut dw = start.clone();
            backward_filter_image(&s, &x, &dy, &mut dw);
            let mut want: Vec<f64> = start.iter().map(|&v| f64::from(v)).collect();
            for oh in 0..s.out_h() {
                for ow in 0..s.out_w() {
                    for (p, wnt) in want.chunks_exact_mut(out_c).enumerate() {
                        let (kh, kw, ci) = (p / (3 * in_c), p / in_c % 3, p % in_c);
                        let xv = f64::from(x[((oh + kh) * w + ow + kw) * in_c + ci]);
                        for (co, v) in wnt.iter_mut().enumerate() {
                            *v += xv * f64::from(dy[(oh * s.out_w() + ow) * out_c + co]);
                        }
                    }
                }
            }
            close(&dw, &want, "filter gradient");
        }
    }
}
