//! The CPU backend: convolutions as im2col + GEMM (the `gemm` crate), rayon over the images
//! of a batch, scratch buffers reused across steps. Generic over the element type so that
//! the very same code is the f64 reference of the gradient checks.

use std::any::TypeId;
use std::marker::PhantomData;
use std::sync::Mutex;

use rayon::prelude::*;

use super::direct_conv;
use super::gemm::{MatRef, matmul};
use super::{AdamStep, Backend, ConvShape, DenseShape, PoolShape, StepFailure, StepTotals};
use crate::loss::{LossConfig, loss_forward_backward, softmax_backward_row, softmax_row};
use crate::metrics::argmax;
use crate::{Element, Result};

/// Below this many elements an elementwise loop is not worth splitting across threads.
const PARALLEL_MIN_ELEMENTS: usize = 1 << 15;

pub struct CpuBackend<T> {
    /// Scratch buffers (im2col matrices, per-thread partial gradients), taken and returned
    /// by workers so that a training step allocates nothing after the first.
    scratch: Mutex<Vec<Vec<T>>>,
    _t: PhantomData<T>,
}

impl<T: Element> Default for CpuBackend<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Element> CpuBackend<T> {
    pub fn new() -> Self {
        CpuBackend {
            scratch: Mutex::new(Vec::new()),
            _t: PhantomData,
        }
    }

    /// A scratch buffer of exactly `len` elements (contents unspecified).
    fn take_scratch(&self, len: usize) -> Vec<T> {
        let mut pool = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        // Prefer the smallest buffer that is large enough, so big ones stay for big jobs.
        let best = pool
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= len)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        let mut buf = match best {
            Some(i) => pool.swap_remove(i),
            None => pool.pop().unwrap_or_default(),
        };
        buf.resize(len, T::zero());
        buf
    }

    fn give_scratch(&self, buf: Vec<T>) {
        self.scratch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(buf);
    }

    /// Images processed per rayon task: enough tasks to keep every thread busy.
    fn images_per_task(batch: usize) -> usize {
        batch.div_ceil(rayon::current_num_threads()).max(1)
    }
}

fn check_len<T>(what: &str, buf: &[T], needed: usize) -> Result<()> {
    super::check_len(what, buf.len(), needed)
}

/// Bytes of im2col matrix processed at a time: small enough to stay in L2 between its
/// writing (im2col) and its reading (GEMM), large enough to keep the GEMM efficient.
const IM2COL_CHUNK_BYTES: usize = 512 * 1024;

/// Output pixels per im2col chunk for a convolution.
fn chunk_pixels<T>(s: &ConvShape) -> usize {
    let fits_l2 = IM2COL_CHUNK_BYTES / (s.patch_len() * std::mem::size_of::<T>());
    // At least 16 rows keep the GEMM efficient; never more than the image has (or 1).
    fits_l2.max(16).min(s.out_h() * s.out_w()).max(1)
}

/// Writes rows of one image's im2col matrix: row `r` of `col` holds the receptive field of
/// output pixel `first_pixel + r` (pixels numbered `oh * out_w + ow`), in (kh, kw, c) order —
/// the order of an HWIO kernel's rows.
fn im2col<T: Element>(s: &ConvShape, image: &[T], first_pixel: usize, col: &mut [T]) {
    let (pad_top, pad_left) = s.pad_before();
    let (out_w, c) = (s.out_w(), s.in_c);
    let patch = s.patch_len();
    for (r, row) in col.chunks_exact_mut(patch).enumerate() {
        let (oh, ow) = ((first_pixel + r) / out_w, (first_pixel + r) % out_w);
        for kh in 0..s.kernel_h {
            let ih = (oh + kh) as isize - pad_top as isize;
            let dst = &mut row[kh * s.kernel_w * c..][..s.kernel_w * c];
            if ih < 0 || ih >= s.in_h as isize {
                dst.fill(T::zero());
                continue;
            }
            let iw0 = ow as isize - pad_left as isize;
            if iw0 >= 0 && iw0 as usize + s.kernel_w <= s.in_w {
                // The whole kernel row is inside the image: one contiguous copy.
                let start = (ih as usize * s.in_w + iw0 as usize) * c;
                dst.copy_from_slice(&image[start..start + s.kernel_w * c]);
            } else {
                for kw in 0..s.kernel_w {
                    let iw = iw0 + kw as isize;
                    let d = &mut dst[kw * c..][..c];
                    if iw < 0 || iw >= s.in_w as isize {
                        d.fill(T::zero());
                    } else {
                        let start = (ih as usize * s.in_w + iw as usize) * c;
                        d.copy_from_slice(&image[start..start + c]);
                    }
                }
            }
        }
    }
}

/// The adjoint of `im2col`: adds every row of `col` back onto the pixels it was read from.
fn col2im_add<T: Element>(s: &ConvShape, col: &[T], first_pixel: usize, image: &mut [T]) {
    let (pad_top, pad_left) = s.pad_before();
    let (out_w, c) = (s.out_w(), s.in_c);
    let patch = s.patch_len();
    for (r, row) in col.chunks_exact(patch).enumerate() {
        let (oh, ow) = ((first_pixel + r) / out_w, (first_pixel + r) % out_w);
        for kh in 0..s.kernel_h {
            let ih = (oh + kh) as isize - pad_top as isize;
            if ih < 0 || ih >= s.in_h as isize {
                continue;
            }
            for kw in 0..s.kernel_w {
                let iw = ow as isize + kw as isize - pad_left as isize;
                if iw < 0 || iw >= s.in_w as isize {
                    continue;
                }
                let src = &row[(kh * s.kernel_w + kw) * c..][..c];
                let start = (ih as usize * s.in_w + iw as usize) * c;
                for (d, &v) in image[start..start + c].iter_mut().zip(src) {
                    *d += v;
                }
            }
        }
    }
}

/// Calls `f(first_pixel, pixel_count)` for consecutive chunks of an image's output pixels.
fn for_each_pixel_chunk<T>(s: &ConvShape, mut f: impl FnMut(usize, usize)) {
    let (pixels, step) = (s.out_h() * s.out_w(), chunk_pixels::<T>(s));
    let mut first = 0;
    while first < pixels {
        let count = step.min(pixels - first);
        f(first, count);
        first += count;
    }
}

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

/// True when `T` is f32: the element type of the hand-vectorised paths.
fn is_f32<T: Element>() -> bool {
    TypeId::of::<T>() == TypeId::of::<f32>()
}

/// `values` as f32, for a path taken only when [`is_f32`] holds.
fn f32_view<T: Element>(values: &[T]) -> &[f32] {
    assert!(is_f32::<T>(), "f32 path with another element type");
    // SAFETY: T is f32 (checked above), so the slice is one of f32 already.
    unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<f32>(), values.len()) }
}

/// [`f32_view`], mutable.
fn f32_view_mut<T: Element>(values: &mut [T]) -> &mut [f32] {
    assert!(is_f32::<T>(), "f32 path with another element type");
    // SAFETY: as in f32_view; the exclusive borrow carries over.
    unsafe { std::slice::from_raw_parts_mut(values.as_mut_ptr().cast::<f32>(), values.len()) }
}

/// `rows[r] = rows[r] + bias`, then ReLU if asked, for a row-major `[_, bias.len()]` block.
fn add_bias_relu<T: Element>(rows: &mut [T], bias: &[T], relu: bool) {
    for row in rows.chunks_exact_mut(bias.len()) {
        for (v, &b) in row.iter_mut().zip(bias) {
            let s = *v + b;
            *v = if relu && s <= T::zero() { T::zero() } else { s };
        }
    }
}

/// Column sums of a row-major `[_, out.len()]` block, added to `out`.
fn add_column_sums<T: Element>(rows: &[T], out: &mut [T]) {
    for row in rows.chunks_exact(out.len()) {
        for (o, &v) in out.iter_mut().zip(row) {
            *o += v;
        }
    }
}

impl<T: Element> Backend for CpuBackend<T> {
    type E = T;
    type Buf = Vec<T>;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn zeros(&self, len: usize) -> Result<Vec<T>> {
        Ok(vec![T::zero(); len])
    }

    fn write(&self, buf: &mut Vec<T>, host: &[T]) -> Result<()> {
        check_len("destination buffer", buf, host.len())?;
        buf[..host.len()].copy_from_slice(host);
        Ok(())
    }

    fn read(&self, buf: &Vec<T>, len: usize) -> Result<Vec<T>> {
        check_len("source buffer", buf, len)?;
        Ok(buf[..len].to_vec())
    }

    fn conv2d_forward(
        &self,
        s: &ConvShape,
        x: &Vec<T>,
        w: &Vec<T>,
        b: &Vec<T>,
        y: &mut Vec<T>,
        relu: bool,
    ) -> Result<()> {
        s.check_forward(x.len(), w.len(), b.len(), y.len())?;
        let (in_img, out_img) = (s.in_h * s.in_w * s.in_c, s.out_h() * s.out_w() * s.out_c);
        let per_task = Self::images_per_task(s.batch);
        let gemm_parallel = s.batch < rayon::current_num_threads();
        let direct = is_f32::<T>() && direct_conv::supported(s);
        y[..s.output_len()]
            .par_chunks_mut(out_img * per_task)
            .zip(x[..s.input_len()].par_chunks(in_img * per_task))
            .for_each(|(ys, xs)| {
                let mut col = self.take_scratch(chunk_pixels::<T>(s) * s.patch_len());
                for (yi, xi) in ys.chunks_exact_mut(out_img).zip(xs.chunks_exact(in_img)) {
                    if direct {
                        direct_conv::forward_image(
                            s,
                            f32_view(xi),
                            f32_view(&w[..s.kernel_len()]),
                            f32_view(&b[..s.out_c]),
                            f32_view_mut(yi),
                            relu,
                        );
                        continue;
                    }
                    for_each_pixel_chunk::<T>(s, |first, count| {
                        let col = &mut col[..count * s.patch_len()];
                        im2col(s, xi, first, col);
                        let out = &mut yi[first * s.out_c..(first + count) * s.out_c];
                        matmul(
                            out,
                            MatRef::row_major(col, count, s.patch_len()),
                            MatRef::row_major(&w[..s.kernel_len()], s.patch_len(), s.out_c),
                            false,
                            gemm_parallel,
                        );
                        add_bias_relu(out, &b[..s.out_c], relu);
                    });
                }
                self.give_scratch(col);
            });
        Ok(())
    }

    fn conv2d_backward_data(
        &self,
        s: &ConvShape,
        dy: &Vec<T>,
        w: &Vec<T>,
        dx: &mut Vec<T>,
    ) -> Result<()> {
        s.check_backward_data(dy.len(), w.len(), dx.len())?;
        let (in_img, out_img) = (s.in_h * s.in_w * s.in_c, s.out_h() * s.out_w() * s.out_c);
        let per_task = Self::images_per_task(s.batch);
        let gemm_parallel = s.batch < rayon::current_num_threads();
        dx[..s.input_len()]
            .par_chunks_mut(in_img * per_task)
            .zip(dy[..s.output_len()].par_chunks(out_img * per_task))
            .for_each(|(dxs, dys)| {
                let mut dcol = self.take_scratch(chunk_pixels::<T>(s) * s.patch_len());
                for (dxi, dyi) in dxs.chunks_exact_mut(in_img).zip(dys.chunks_exact(out_img)) {
                    dxi.fill(T::zero());
                    for_each_pixel_chunk::<T>(s, |first, count| {
                        let dcol = &mut dcol[..count * s.patch_len()];
                        // dcol[pixels, patch] = dy[pixels, out_c] @ w^T[out_c, patch]
                        matmul(
                            dcol,
                            MatRef::row_major(
                                &dyi[first * s.out_c..(first + count) * s.out_c],
                                count,
                                s.out_c,
                            ),
                            MatRef::transposed(&w[..s.kernel_len()], s.out_c, s.patch_len()),
                            false,
                            gemm_parallel,
                        );
                        col2im_add(s, dcol, first, dxi);
                    });
                }
                self.give_scratch(dcol);
            });
        Ok(())
    }

    fn conv2d_backward_filter(
        &self,
        s: &ConvShape,
        x: &Vec<T>,
        dy: &Vec<T>,
        dw: &mut Vec<T>,
        db: &mut Vec<T>,
    ) -> Result<()> {
        s.check_backward_filter(x.len(), dy.len(), dw.len(), db.len())?;
        let (in_img, out_img) = (s.in_h * s.in_w * s.in_c, s.out_h() * s.out_w() * s.out_c);
        let per_task = Self::images_per_task(s.batch);
        let gemm_parallel = s.batch < rayon::current_num_threads();
        let (kernel_len, out_c) = (s.kernel_len(), s.out_c);
        let direct = is_f32::<T>() && direct_conv::supported(s);
        // Each task sums its images' gradients into a private [dw | db] buffer; the partial
        // sums are added up at the end (a fixed order, so results are reproducible).
        let partials: Vec<Vec<T>> = x[..s.input_len()]
            .par_chunks(in_img * per_task)
            .zip(dy[..s.output_len()].par_chunks(out_img * per_task))
            .map(|(xs, dys)| {
                let mut col = self.take_scratch(chunk_pixels::<T>(s) * s.patch_len());
                let mut acc = self.take_scratch(kernel_len + out_c);
                acc.fill(T::zero());
                for (xi, dyi) in xs.chunks_exact(in_img).zip(dys.chunks_exact(out_img)) {
                    add_column_sums(dyi, &mut acc[kernel_len..]);
                    if direct {
                        let dw = f32_view_mut(&mut acc[..kernel_len]);
                        direct_conv::backward_filter_image(s, f32_view(xi), f32_view(dyi), dw);
                        continue;
                    }
                    for_each_pixel_chunk::<T>(s, |first, count| {
                        let col = &mut col[..count * s.patch_len()];
                        im2col(s, xi, first, col);
                        // dw[patch, out_c] += col^T[patch, pixels] @ dy[pixels, out_c]
                        matmul(
                            &mut acc[..kernel_len],
                            MatRef::transposed(col, s.patch_len(), count),
                            MatRef::row_major(
                                &dyi[first * out_c..(first + count) * out_c],
                                count,
                                out_c,
                            ),
                            true,
                            gemm_parallel,
                        );
                    });
                }
                self.give_scratch(col);
                acc
            })
            .collect();
        dw[..kernel_len].fill(T::zero());
        db[..out_c].fill(T::zero());
        for acc in partials {
            for (d, &v) in dw[..kernel_len].iter_mut().zip(&acc[..kernel_len]) {
                *d += v;
            }
            for (d, &v) in db[..out_c].iter_mut().zip(&acc[kernel_len..]) {
                *d += v;
            }
            self.give_scratch(acc);
        }
        Ok(())
    }

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

    fn dense_forward(
        &self,
        s: &DenseShape,
        x: &Vec<T>,
        w: &Vec<T>,
        b: &Vec<T>,
        y: &mut Vec<T>,
        relu: bool,
    ) -> Result<()> {
        s.check_forward(x.len(), w.len(), b.len(), y.len())?;
        let out = &mut y[..s.batch * s.outputs];
        matmul(
            out,
            MatRef::row_major(&x[..s.batch * s.inputs], s.batch, s.inputs),
            MatRef::row_major(&w[..s.inputs * s.outputs], s.inputs, s.outputs),
            false,
            true,
        );
        add_bias_relu(out, &b[..s.outputs], relu);
        Ok(())
    }

    fn dense_backward(
        &self,
        s: &DenseShape,
        x: &Vec<T>,
        w: &Vec<T>,
        dy: &Vec<T>,
        dx: Option<&mut Vec<T>>,
        dw: &mut Vec<T>,
        db: &mut Vec<T>,
    ) -> Result<()> {
        let dx_len = dx.as_ref().map(|d| d.len());
        s.check_backward(x.len(), w.len(), dy.len(), dx_len, dw.len(), db.len())?;
        let dy = &dy[..s.batch * s.outputs];
        // dw[in, out] = x^T[in, batch] @ dy[batch, out]
        matmul(
            &mut dw[..s.inputs * s.outputs],
            MatRef::transposed(&x[..s.batch * s.inputs], s.inputs, s.batch),
            MatRef::row_major(dy, s.batch, s.outputs),
            false,
            true,
        );
        db[..s.outputs].fill(T::zero());
        add_column_sums(dy, &mut db[..s.outputs]);
        if let Some(dx) = dx {
            // dx[batch, in] = dy[batch, out] @ w^T[out, in]
            matmul(
                &mut dx[..s.batch * s.inputs],
                MatRef::row_major(dy, s.batch, s.outputs),
                MatRef::transposed(&w[..s.inputs * s.outputs], s.outputs, s.inputs),
                false,
                true,
            );
        }
        Ok(())
    }

    fn relu_backward(&self, len: usize, y: &Vec<T>, dy: &mut Vec<T>) -> Result<()> {
        check_len("relu output", y, len)?;
        check_len("relu gradient", dy, len)?;
        dy[..len]
            .par_iter_mut()
            .with_min_len(PARALLEL_MIN_ELEMENTS)
            .zip(&y[..len])
            .for_each(|(d, &v)| {
                if v <= T::zero() {
                    *d = T::zero();
                }
            });
        Ok(())
    }

    fn softmax_forward(
        &self,
        rows: usize,
        cols: usize,
        logits: &Vec<T>,
        probs: &mut Vec<T>,
    ) -> Result<()> {
        check_len("logits", logits, rows * cols)?;
        check_len("probabilities", probs, rows * cols)?;
        for (z, p) in logits
            .chunks_exact(cols)
            .zip(probs.chunks_exact_mut(cols))
            .take(rows)
        {
            softmax_row(z, p);
        }
        Ok(())
    }

    fn softmax_backward(
        &self,
        rows: usize,
        cols: usize,
        probs: &Vec<T>,
        dprobs: &Vec<T>,
        dlogits: &mut Vec<T>,
    ) -> Result<()> {
        check_len("probabilities", probs, rows * cols)?;
        check_len("probability gradient", dprobs, rows * cols)?;
        check_len("logit gradient", dlogits, rows * cols)?;
        let n = rows * cols;
        dlogits[..n].copy_from_slice(&dprobs[..n]);
        for (p, dz) in probs
            .chunks_exact(cols)
            .zip(dlogits[..n].chunks_exact_mut(cols))
        {
            softmax_backward_row(p, dz);
        }
        Ok(())
    }

    fn loss(
        &self,
        cfg: &LossConfig,
        batch: usize,
        classes: usize,
        y_true: &Vec<T>,
        pred: &Vec<T>,
        grad: Option<&mut Vec<T>>,
    ) -> Result<T> {
        let n = batch * classes;
        check_len("labels", y_true, n)?;
        check_len("predictions", pred, n)?;
        let grad = match grad {
            Some(g) => {
                check_len("loss gradient", g, n)?;
                Some(&mut g[..n])
            }
            None => None,
        };
        loss_forward_backward(cfg, &y_true[..n], &pred[..n], batch, classes, grad)
    }

    fn adam_update(
        &self,
        len: usize,
        step: &AdamStep<T>,
        param: &mut Vec<T>,
        grad: &Vec<T>,
        m: &mut Vec<T>,
        v: &mut Vec<T>,
    ) -> Result<()> {
        for (what, b) in [
            ("parameter", &*param),
            ("gradient", grad),
            ("first moment", &*m),
            ("second moment", &*v),
        ] {
            check_len(what, b, len)?;
        }
        let s = *step;
        param[..len]
            .par_iter_mut()
            .with_min_len(PARALLEL_MIN_ELEMENTS)
            .zip(&grad[..len])
            .zip(m[..len].par_iter_mut())
            .zip(v[..len].par_iter_mut())
            .for_each(|(((p, &g), m), v)| {
                *m += (g - *m) * s.one_minus_beta1;
                *v += (g * g - *v) * s.one_minus_beta2;
                *p -= *m * s.step_size / (v.sqrt() + s.epsilon);
            });
        Ok(())
    }

    /// The totals themselves: host memory is where the CPU computes.
    type Counters = StepTotals;

    fn counters(&self) -> Result<StepTotals> {
        Ok(StepTotals::default())
    }

    fn set_counters(&self, counters: &mut StepTotals, totals: &StepTotals) -> Result<()> {
        *counters = *totals;
        Ok(())
    }

    fn read_counters(&self, counters: &StepTotals) -> Result<StepTotals> {
        Ok(*counters)
    }

    fn reads_are_cheap(&self) -> bool {
        true
    }

    fn loss_counted(
        &self,
        cfg: &LossConfig,
        batch: usize,
        classes: usize,
        y_true: &Vec<T>,
        pred: &Vec<T>,
        probs: &Vec<T>,
        grad: Option<&mut Vec<T>>,
        step: usize,
        counters: &mut StepTotals,
    ) -> Result<()> {
        let value = self.loss(cfg, batch, classes, y_true, pred, grad)?.f64();
        check_len("probabilities", probs, batch * classes)?;
        if counters.failure.is_some() {
            return Ok(());
        }
        if !value.is_finite() {
            counters.failure = Some(StepFailure {
                step,
                bad_inputs: false,
            });
            return Ok(());
        }
        counters.loss_sum += value * batch as f64;
        counters.seen += batch as u64;
        counters.correct += probs[..batch * classes]
            .chunks_exact(classes)
            .zip(y_true.chunks_exact(classes))
            .filter(|(p, y)| argmax(p) == argmax(y))
            .count() as u64;
        Ok(())
    }

    fn adam_update_counted(
        &self,
        len: usize,
        step: &AdamStep<T>,
        param: &mut Vec<T>,
        grad: &Vec<T>,
        m: &mut Vec<T>,
        v: &mut Vec<T>,
        counters: &StepTotals,
    ) -> Result<()> {
        if counters.failure.is_some() {
            return Ok(());
        }
        self.adam_update(len, step, param, grad, m, v)
    }

    fn copy_into(&self, src: &Vec<T>, len: usize, dst: &mut Vec<T>, offset: usize) -> Result<()> {
        check_len("source buffer", src, len)?;
        check_len("destination buffer", dst, offset + len)?;
        dst[offset..offset + len].copy_from_slice(&src[..len]);
        Ok(())
    }
}
