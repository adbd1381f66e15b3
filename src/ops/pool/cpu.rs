//! Max-pooling on the CPU: one image per rayon task.

use rayon::prelude::*;

use super::{PoolOps, PoolShape};
use crate::ops::cpu::CpuBackend;
use crate::{Element, Result};

/// Max-pool backward, one image per task: each output gradient goes to the first maximal
/// input of its window (row-major order), zero to the rest and to inputs in no window.
/// With `relu_mask` (the pool's input is a ReLU's output) a gradient whose maximum is
/// <= 0 becomes 0 too: the ReLU's backward step, done in the same pass.
fn maxpool_backward<T: Element>(s: &PoolShape, x: &[T], dy: &[T], dx: &mut [T], relu_mask: bool) {
    let (in_img, out_img) = (
        s.in_h * s.in_w * s.channels,
        s.out_h() * s.out_w() * s.channels,
    );
    dx[..s.input_len()]
        .par_chunks_mut(in_img)
        .zip(x[..s.input_len()].par_chunks(in_img))
        .zip(dy[..s.output_len()].par_chunks(out_img))
        .for_each(|((dxi, xi), dyi)| {
            let (c, in_w) = (s.channels, s.in_w);
            let (covered_h, covered_w) = (s.out_h() * s.size, s.out_w() * s.size);
            // Pixels in no window (the floored last row/column of an odd size) get zero.
            dxi[covered_h * in_w * c..].fill(T::zero());
            for row in dxi[..covered_h * in_w * c].chunks_exact_mut(in_w * c) {
                row[covered_w * c..].fill(T::zero());
            }
            if s.size == 2 {
                pool2_backward_image(s, xi, dyi, dxi, relu_mask);
            } else {
                pool_backward_image(s, xi, dyi, dxi, relu_mask);
            }
        });
}

/// 2x2 windows (the usual pool): branch-free per channel, so the channel loop vectorises.
fn pool2_backward_image<T: Element>(
    s: &PoolShape,
    xi: &[T],
    dyi: &[T],
    dxi: &mut [T],
    relu_mask: bool,
) {
    let (c, row_len) = (s.channels, s.in_w * s.channels);
    let zero = T::zero();
    for oh in 0..s.out_h() {
        let (x_top, x_rest) = xi[2 * oh * row_len..].split_at(row_len);
        let (d_top, d_rest) = dxi[2 * oh * row_len..].split_at_mut(row_len);
        for ow in 0..s.out_w() {
            let at = 2 * ow * c;
            let (x00, x01) = x_top[at..at + 2 * c].split_at(c);
            let (x10, x11) = x_rest[at..at + 2 * c].split_at(c);
            let (d00, d01) = d_top[at..at + 2 * c].split_at_mut(c);
            let (d10, d11) = d_rest[at..at + 2 * c].split_at_mut(c);
            let g = &dyi[(oh * s.out_w() + ow) * c..][..c];
            for ch in 0..c {
                // The first maximum in the order 00, 01, 10, 11: a later one wins only
                // when strictly greater.
                let b = x01[ch] > x00[ch];
                let m = if b { x01[ch] } else { x00[ch] };
                let cc = x10[ch] > m;
                let m = if cc { x10[ch] } else { m };
                let d = x11[ch] > m;
                let m = if d { x11[ch] } else { m };
                let gv = if relu_mask && m <= zero { zero } else { g[ch] };
                d11[ch] = if d { gv } else { zero };
                d10[ch] = if cc && !d { gv } else { zero };
                d01[ch] = if b && !cc && !d { gv } else { zero };
                d00[ch] = if !b && !cc && !d { gv } else { zero };
            }
        }
    }
}

/// Any window size (stride = size, so windows do not overlap).
fn pool_backward_image<T: Element>(
    s: &PoolShape,
    xi: &[T],
    dyi: &[T],
    dxi: &mut [T],
    relu_mask: bool,
) {
    let (c, size, in_w) = (s.channels, s.size, s.in_w);
    // Window position (0..size*size) of each channel's first maximum.
    let mut best_at = vec![0usize; c];
    let mut best = vec![T::zero(); c];
    for oh in 0..s.out_h() {
        for ow in 0..s.out_w() {
            let at = |k: usize| ((oh * size + k / size) * in_w + ow * size + k % size) * c;
            for k in 0..size * size {
                let xs = &xi[at(k)..][..c];
                for ch in 0..c {
                    if k == 0 || xs[ch] > best[ch] {
                        best[ch] = xs[ch];
                        best_at[ch] = k;
                    }
                }
            }
            // Every input of the window is written: the gradient at the maximum, zero
            // elsewhere.
            let g = &dyi[(oh * s.out_w() + ow) * c..][..c];
            for k in 0..size * size {
                let start = at(k);
                for (ch, d) in dxi[start..start + c].iter_mut().enumerate() {
                    let masked = relu_mask && best[ch] <= T::zero();
                    *d = if best_at[ch] == k && !masked {
                        g[ch]
                    } else {
                        T::zero()
                    };
                }
            }
        }
    }
}

impl<T: Element> PoolOps for CpuBackend<T> {
    fn maxpool2d_forward(&self, s: &PoolShape, x: &Vec<T>, y: &mut Vec<T>) -> Result<()> {
        s.check_forward(x.len(), y.len())?;
        let (in_img, out_img) = (
            s.in_h * s.in_w * s.channels,
            s.out_h() * s.out_w() * s.channels,
        );
        let c = s.channels;
        y[..s.output_len()]
            .par_chunks_mut(out_img)
            .zip(x[..s.input_len()].par_chunks(in_img))
            .for_each(|(yi, xi)| {
                for oh in 0..s.out_h() {
                    for ow in 0..s.out_w() {
                        let out = &mut yi[(oh * s.out_w() + ow) * c..][..c];
                        out.fill(T::neg_infinity());
                        for dh in 0..s.size {
                            for dw in 0..s.size {
                                let start = ((oh * s.size + dh) * s.in_w + ow * s.size + dw) * c;
                                // A select, not a conditional store: it vectorises.
                                for (o, &v) in out.iter_mut().zip(&xi[start..start + c]) {
                                    *o = if v > *o { v } else { *o };
                                }
                            }
                        }
                    }
                }
            });
        Ok(())
    }

    fn maxpool2d_backward(
        &self,
        s: &PoolShape,
        x: &Vec<T>,
        dy: &Vec<T>,
        dx: &mut Vec<T>,
    ) -> Result<()> {
        s.check_backward(x.len(), dy.len(), dx.len())?;
        maxpool_backward(s, x, dy, dx, false);
        Ok(())
    }

    fn maxpool2d_relu_backward(
        &self,
        s: &PoolShape,
        x: &Vec<T>,
        dy: &Vec<T>,
        dx: &mut Vec<T>,
    ) -> Result<()> {
        s.check_backward(x.len(), dy.len(), dx.len())?;
        maxpool_backward(s, x, dy, dx, true);
        Ok(())
    }
}

/// `maxpool2d_relu_backward` of a 2x2 pool from the `codes` a fused forward pass wrote
/// (`Conv2dOps::conv2d_relu_pool_forward`: where each window's maximum was, -1 where the
/// ReLU was off) instead of the pool's input, which it never stored: the convolution's
/// output gradient, for the rare fused block whose input gradient no transform reads from
/// the codes directly.
pub(crate) fn unpool_from_codes<T: Element>(
    s: &PoolShape,
    codes: &[T],
    dy: &[T],
    dx: &mut [T],
) -> Result<()> {
    s.check_backward(s.input_len(), dy.len(), dx.len())?;
    crate::ops::check_len("pool codes", codes.len(), s.output_len())?;
    if s.size != 2 {
        return Err(crate::Error::Shape(format!(
            "pool {s:?}: codes describe 2x2 windows only"
        )));
    }
    let (in_img, out_img, c) = (
        s.in_h * s.in_w * s.channels,
        s.out_h() * s.out_w() * s.channels,
        s.channels,
    );
    dx[..s.input_len()]
        .par_chunks_mut(in_img)
        .zip(codes[..s.output_len()].par_chunks(out_img))
        .zip(dy[..s.output_len()].par_chunks(out_img))
        .for_each(|((dxi, ci), dyi)| {
            // What maxpool2d_relu_backward writes: each window's gradient at its
            // maximum, zero at its other inputs (and everywhere where the ReLU was off:
            // code -1), zero in the floored edge. Rows of windows, channels innermost,
            // as selects: it vectorises.
            let row_len = s.in_w * c;
            let covered_w = s.out_w() * 2 * c;
            dxi[s.out_h() * 2 * row_len..].fill(T::zero());
            for ph in 0..s.out_h() {
                let (top, bottom) =
                    dxi[2 * ph * row_len..(2 * ph + 2) * row_len].split_at_mut(row_len);
                top[covered_w..].fill(T::zero());
                bottom[covered_w..].fill(T::zero());
                for pw in 0..s.out_w() {
                    let o = (ph * s.out_w() + pw) * c;
                    let (cs, gs) = (&ci[o..o + c], &dyi[o..o + c]);
                    let at = 2 * pw * c;
                    let (d00, d01) = top[at..at + 2 * c].split_at_mut(c);
                    let (d10, d11) = bottom[at..at + 2 * c].split_at_mut(c);
                    for (k, d) in [d00, d01, d10, d11].into_iter().enumerate() {
                        let here = T::from(k).expect("0-3 is a float");
                        for ((d, &code), &g) in d.iter_mut().zip(cs).zip(gs) {
                            *d = if code == here { g } else { T::zero() };
                        }
                    }
                }
            }
        });
    Ok(())
}
