//! The convolutions on the CPU, one image per rayon task: im2col + GEMM over chunks of output
//! pixels small enough to stay in L2, the direct first-layer kernel (`direct.rs`) and
//! Winograd (`winograd.rs`), picked per shape and pass by [`algorithm`].

use rayon::prelude::*;

use super::winograd::{self, Direction, Geometry, Source};
use super::{Conv2dOps, ConvPaths, ConvShape, direct};
use crate::ops::cpu::{
    Bf16Unit, CpuBackend, CpuPath, add_bias_relu, add_column_sums, f32_view, f32_view_mut, is_f32,
};
use crate::ops::gemm::cpu::{MatRef, matmul};
use crate::ops::pool::cpu::unpool_from_codes;
use crate::ops::{PoolShape, check_len};
use crate::{Element, Result};

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

/// How one convolution pass runs on the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// The direct AVX-512 kernel of a 3x3 first layer (`direct.rs`).
    Direct,
    /// Winograd F(2x2, 3x3) (`winograd.rs`).
    Winograd,
    /// im2col + GEMM, in L2-sized chunks of output pixels.
    Im2col,
}

impl Algorithm {
    /// The algorithm's name, for reports.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Direct => "direct 3x3 (AVX-512)",
            Algorithm::Winograd => "Winograd F(2x2,3x3) (AVX-512)",
            Algorithm::Im2col => "im2col + GEMM",
        }
    }
}

/// The algorithm `path` picks for `direction` of `s` with elements `T` (the fast paths are
/// f32 only; the direct kernel has no input gradient: the first layer needs none).
pub fn algorithm<T: Element>(path: CpuPath, s: &ConvShape, direction: Direction) -> Algorithm {
    if path == CpuPath::Reference || !is_f32::<T>() {
        Algorithm::Im2col
    } else if direction != Direction::BackwardData && direct::supported(s) {
        Algorithm::Direct
    } else if winograd::supported(s) {
        Algorithm::Winograd
    } else {
        Algorithm::Im2col
    }
}

/// The transformed kernel of a Winograd pass, f32 or packed for the bf16 products.
enum WinogradKernel {
    F32(Vec<f32>),
    Bf16(Vec<u32>),
}

/// A Winograd layer's forward or input-gradient pass as it runs: by Winograd (f32 products,
/// or bf16 on AVX512_BF16), or with bf16 products on AMX directly (`amx_direct.rs`: there
/// the transforms would cost more than the multiplies they save).
enum LayerPass {
    Winograd(Geometry, WinogradKernel),
    #[cfg(target_arch = "x86_64")]
    Amx(super::amx_direct::Plan),
}

impl LayerPass {
    /// The pass `direction` of `s` with kernel `w`, its products in bf16 on `bf16`'s unit
    /// if any.
    fn new<T: Element>(
        s: &ConvShape,
        direction: Direction,
        w: &[T],
        bf16: Option<Bf16Unit>,
    ) -> Self {
        let w = f32_view(&w[..s.kernel_len()]);
        #[cfg(target_arch = "x86_64")]
        if bf16 == Some(Bf16Unit::Amx) {
            return LayerPass::Amx(super::amx_direct::Plan::new(s, direction, w));
        }
        let g = Geometry::of(s, direction);
        let u = winograd::transform_kernel(s, direction, w);
        let kernel = match bf16 {
            Some(_) => WinogradKernel::Bf16(winograd::bf16::pack_kernel(&g, &u)),
            None => WinogradKernel::F32(u),
        };
        LayerPass::Winograd(g, kernel)
    }

    /// Floats of scratch [`LayerPass::image`] takes.
    fn scratch_len(&self) -> usize {
        match self {
            LayerPass::Winograd(g, _) => g.scratch_len(),
            #[cfg(target_arch = "x86_64")]
            LayerPass::Amx(plan) => plan.scratch_len(),
        }
    }

    /// One image through the pass.
    fn image(
        &self,
        input: Source<'_>,
        bias: Option<&[f32]>,
        out: winograd::Output<'_>,
        scratch: &mut [f32],
    ) {
        match self {
            LayerPass::Winograd(g, WinogradKernel::F32(u)) => {
                winograd::conv_image(g, input, u, bias, out, scratch)
            }
            LayerPass::Winograd(g, WinogradKernel::Bf16(u)) => {
                winograd::bf16::conv_image(g, input, u, bias, out, scratch)
            }
            #[cfg(target_arch = "x86_64")]
            LayerPass::Amx(plan) => plan.image(input, bias, out, scratch),
        }
    }
}

/// A Winograd layer's filter gradient as it runs: by Winograd (f32 or bf16 on AVX512_BF16
/// products), each task summing its images in the Winograd domain and folding the sums
/// once; or with bf16 products on AMX directly, into the task's `dw`.
enum FilterPass {
    /// The geometry, and whether the products are bf16.
    Winograd(Geometry, bool),
    #[cfg(target_arch = "x86_64")]
    Amx(super::amx_direct::FilterPlan),
}

impl FilterPass {
    fn new(s: &ConvShape, bf16: Option<Bf16Unit>) -> Self {
        #[cfg(target_arch = "x86_64")]
        if bf16 == Some(Bf16Unit::Amx) {
            return FilterPass::Amx(super::amx_direct::FilterPlan::new(s));
        }
        FilterPass::Winograd(Geometry::of(s, Direction::BackwardFilter), bf16.is_some())
    }

    /// Floats of a task's scratch.
    fn scratch_len(&self) -> usize {
        match self {
            FilterPass::Winograd(g, _) => g.scratch_len() + winograd::filter_sums_len(g),
            #[cfg(target_arch = "x86_64")]
            FilterPass::Amx(plan) => plan.scratch_len(),
        }
    }

    /// Before a task's first image.
    fn start(&self, scratch: &mut [f32]) {
        if let FilterPass::Winograd(g, _) = self {
            scratch[g.scratch_len()..].fill(0.0);
        }
    }

    /// One image's filter gradient (into the task's sums, or `dw += ` it) and
    /// `db += ` its bias gradient.
    fn image(
        &self,
        x: &[f32],
        dy: Source<'_>,
        dw: &mut [f32],
        db: &mut [f32],
        scratch: &mut [f32],
    ) {
        match self {
            FilterPass::Winograd(g, bf16) => {
                dy.add_channel_sums(g.out_h, g.out_w, g.k, db);
                let (work, sums) = scratch.split_at_mut(g.scratch_len());
                if *bf16 {
                    winograd::bf16::filter_gradient_image(g, x, dy, sums, work)
                } else {
                    winograd::filter_gradient_image(g, x, dy, sums, work)
                }
            }
            #[cfg(target_arch = "x86_64")]
            FilterPass::Amx(plan) => plan.image(x, dy, dw, db, scratch),
        }
    }

    /// After a task's last image: `dw += ` the task's sums.
    fn finish(&self, scratch: &[f32], dw: &mut [f32]) {
        if let FilterPass::Winograd(g, _) = self {
            winograd::fold_filter_sums(g, &scratch[g.scratch_len()..], dw);
        }
    }
}

/// The name of `algo` for reports, with the products' format and unit where they are bf16.
fn path_name(algo: Algorithm, bf16: Option<Bf16Unit>) -> &'static str {
    match (algo, bf16) {
        (Algorithm::Winograd, Some(Bf16Unit::Avx512)) => {
            "Winograd F(2x2,3x3), bf16 products (AVX512_BF16)"
        }
        _ => algo.name(),
    }
}

impl<T: Element> Conv2dOps for CpuBackend<T> {
    fn conv2d_paths(&self, s: &ConvShape) -> ConvPaths {
        let name = |d| {
            if self.on_amx(s) {
                "direct 3x3, bf16 products (AMX)"
            } else {
                path_name(algorithm::<T>(self.path, s, d), self.bf16_products())
            }
        };
        ConvPaths {
            forward: name(Direction::Forward),
            backward_data: name(Direction::BackwardData),
            backward_filter: name(Direction::BackwardFilter),
        }
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
        let algo = algorithm::<T>(self.path, s, Direction::Forward);
        let wino = (algo == Algorithm::Winograd || self.on_amx(s))
            .then(|| LayerPass::new(s, Direction::Forward, w, self.bf16_products()));
        let scratch_len = match &wino {
            Some(pass) => pass.scratch_len(),
            None => chunk_pixels::<T>(s) * s.patch_len(),
        };
        y[..s.output_len()]
            .par_chunks_mut(out_img * per_task)
            .zip(x[..s.input_len()].par_chunks(in_img * per_task))
            .for_each(|(ys, xs)| {
                let mut col = self.take_scratch(scratch_len);
                for (yi, xi) in ys.chunks_exact_mut(out_img).zip(xs.chunks_exact(in_img)) {
                    if let Some(plan) = &wino {
                        let bias = Some(f32_view(&b[..s.out_c]));
                        let scratch = f32_view_mut(&mut col);
                        let out = winograd::Output::Plain {
                            out: f32_view_mut(yi),
                            relu,
                        };
                        plan.image(Source::Dense(f32_view(xi)), bias, out, scratch);
                        continue;
                    }
                    if algo == Algorithm::Direct {
                        direct::forward_image(
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
        if algorithm::<T>(self.path, s, Direction::BackwardData) == Algorithm::Winograd {
            let dy = Source::Dense(f32_view(&dy[..s.output_len()]));
            self.winograd_backward_data(s, dy, w, dx);
            return Ok(());
        }
        let (in_img, out_img) = (s.in_h * s.in_w * s.in_c, s.out_h() * s.out_w() * s.out_c);
        let per_task = Self::images_per_task(s.batch);
        let gemm_parallel = s.batch < rayon::current_num_threads();
        let scratch_len = chunk_pixels::<T>(s) * s.patch_len();
        dx[..s.input_len()]
            .par_chunks_mut(in_img * per_task)
            .zip(dy[..s.output_len()].par_chunks(out_img * per_task))
            .for_each(|(dxs, dys)| {
                let mut dcol = self.take_scratch(scratch_len);
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
        let algo = algorithm::<T>(self.path, s, Direction::BackwardFilter);
        if algo == Algorithm::Winograd {
            let dy = Source::Dense(f32_view(&dy[..s.output_len()]));
            self.winograd_backward_filter(s, x, dy, dw, db);
            return Ok(());
        }
        let (in_img, out_img) = (s.in_h * s.in_w * s.in_c, s.out_h() * s.out_w() * s.out_c);
        let per_task = Self::images_per_task(s.batch);
        let gemm_parallel = s.batch < rayon::current_num_threads();
        let (kernel_len, out_c) = (s.kernel_len(), s.out_c);
        let scratch_len = chunk_pixels::<T>(s) * s.patch_len();
        // Each task sums its images' gradients into a private [dw | db] buffer; the partial
        // sums are added up at the end (a fixed order, so results are reproducible).
        let partials: Vec<Vec<T>> = x[..s.input_len()]
            .par_chunks(in_img * per_task)
            .zip(dy[..s.output_len()].par_chunks(out_img * per_task))
            .map(|(xs, dys)| {
                let mut col = self.take_scratch(scratch_len);
                let mut acc = self.take_scratch(kernel_len + out_c);
                acc.fill(T::zero());
                for (xi, dyi) in xs.chunks_exact(in_img).zip(dys.chunks_exact(out_img)) {
                    add_column_sums(dyi, &mut acc[kernel_len..]);
                    if algo == Algorithm::Direct {
                        let dw = f32_view_mut(&mut acc[..kernel_len]);
                        direct::backward_filter_image(s, f32_view(xi), f32_view(dyi), dw);
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
        self.sum_partials(partials, &mut dw[..kernel_len], &mut db[..out_c]);
        Ok(())
    }

    fn fuses_conv_relu_pool(&self, s: &ConvShape, pool: &PoolShape) -> bool {
        // The direct first layer, or a Winograd layer: its output tiles are the windows.
        let winograd = algorithm::<T>(self.path, s, Direction::Forward) == Algorithm::Winograd;
        self.path == CpuPath::Auto
            && is_f32::<T>()
            && s.pooled_2x2_by(pool)
            && (direct::supported(s) || winograd)
    }

    fn conv2d_relu_pool_forward(
        &self,
        s: &ConvShape,
        pool: &PoolShape,
        x: &Vec<T>,
        w: &Vec<T>,
        b: &Vec<T>,
        pooled: &mut Vec<T>,
        codes: &mut Vec<T>,
    ) -> Result<()> {
        s.check_forward(x.len(), w.len(), b.len(), s.output_len())?;
        check_fused(self, s, pool)?;
        let (n, in_img, out_img) = (
            pool.output_len(),
            s.in_h * s.in_w * s.in_c,
            pool.output_len() / s.batch,
        );
        check_len("pooled output", pooled.len(), n)?;
        check_len("pool codes", codes.len(), n)?;
        let wino = (!direct::supported(s) || self.on_amx(s))
            .then(|| LayerPass::new(s, Direction::Forward, w, self.bf16_products()));
        let scratch_len = wino.as_ref().map_or(0, LayerPass::scratch_len);
        let (w, b) = (f32_view(&w[..s.kernel_len()]), f32_view(&b[..s.out_c]));
        pooled[..n]
            .par_chunks_mut(out_img)
            .zip(codes[..n].par_chunks_mut(out_img))
            .zip(x[..s.input_len()].par_chunks(in_img))
            .for_each(|((pi, ci), xi)| {
                let (pooled, codes) = (f32_view_mut(pi), f32_view_mut(ci));
                match &wino {
                    None => direct::forward_relu_pool_image(s, f32_view(xi), w, b, pooled, codes),
                    Some(plan) => {
                        let mut scratch = self.take_scratch(scratch_len);
                        let out = winograd::Output::Pooled { pooled, codes };
                        let scratch_f32 = f32_view_mut(&mut scratch);
                        plan.image(Source::Dense(f32_view(xi)), Some(b), out, scratch_f32);
                        self.give_scratch(scratch);
                    }
                }
            });
        Ok(())
    }

    fn conv2d_relu_pool_backward_filter(
        &self,
        s: &ConvShape,
        pool: &PoolShape,
        x: &Vec<T>,
        codes: &Vec<T>,
        dpooled: &Vec<T>,
        dw: &mut Vec<T>,
        db: &mut Vec<T>,
    ) -> Result<()> {
        s.check_backward_filter(x.len(), s.output_len(), dw.len(), db.len())?;
        let n = check_fused_gradient(self, s, pool, codes, dpooled)?;
        if !direct::supported(s) {
            // A Winograd block: its transforms read the pooled gradient where they read
            // the convolution's output gradient, which is never expanded.
            let dy = pooled_source(dpooled, codes, n);
            self.winograd_backward_filter(s, x, dy, dw, db);
            return Ok(());
        }
        let (in_img, out_img) = (s.in_h * s.in_w * s.in_c, n / s.batch);
        let per_task = Self::images_per_task(s.batch);
        let (kernel_len, out_c) = (s.kernel_len(), s.out_c);
        // As conv2d_backward_filter: private [dw | db] sums per task, added in a fixed order.
        let partials: Vec<Vec<T>> = x[..s.input_len()]
            .par_chunks(in_img * per_task)
            .zip(codes[..n].par_chunks(out_img * per_task))
            .zip(dpooled[..n].par_chunks(out_img * per_task))
            .map(|((xs, cs), gs)| {
                let mut acc = self.take_scratch(kernel_len + out_c);
                acc.fill(T::zero());
                let (dwt, dbt) = f32_view_mut(&mut acc).split_at_mut(kernel_len);
                for ((xi, ci), gi) in xs
                    .chunks_exact(in_img)
                    .zip(cs.chunks_exact(out_img))
                    .zip(gs.chunks_exact(out_img))
                {
                    let (xi, ci, gi) = (f32_view(xi), f32_view(ci), f32_view(gi));
                    direct::backward_filter_relu_pool_image(s, xi, ci, gi, dwt, dbt);
                }
                acc
            })
            .collect();
        self.sum_partials(partials, &mut dw[..kernel_len], &mut db[..out_c]);
        Ok(())
    }

    fn conv2d_relu_pool_backward_data(
        &self,
        s: &ConvShape,
        pool: &PoolShape,
        codes: &Vec<T>,
        dpooled: &Vec<T>,
        w: &Vec<T>,
        dx: &mut Vec<T>,
    ) -> Result<()> {
        s.check_backward_data(s.output_len(), w.len(), dx.len())?;
        let n = check_fused_gradient(self, s, pool, codes, dpooled)?;
        if algorithm::<T>(self.path, s, Direction::BackwardData) == Algorithm::Winograd {
            self.winograd_backward_data(s, pooled_source(dpooled, codes, n), w, dx);
            return Ok(());
        }
        // A direct block past the first layer (1 or 3 channels in, no Winograd input
        // gradient): the convolution's output gradient expanded, then as unfused.
        let mut dy = self.take_scratch(s.output_len());
        let done = unpool_from_codes(pool, &codes[..n], &dpooled[..n], &mut dy)
            .and_then(|()| self.conv2d_backward_data(s, &dy, w, dx));
        self.give_scratch(dy);
        done
    }
}

/// [`check_fused`], and the pooled gradient and the codes against the pool: their length.
fn check_fused_gradient<T: Element>(
    b: &CpuBackend<T>,
    s: &ConvShape,
    pool: &PoolShape,
    codes: &[T],
    dpooled: &[T],
) -> Result<usize> {
    check_fused(b, s, pool)?;
    let n = pool.output_len();
    check_len("pool codes", codes.len(), n)?;
    check_len("pooled gradient", dpooled.len(), n)?;
    Ok(n)
}

/// A fused block's output gradient as the Winograd transforms read it: the first `n`
/// values of the pooled gradient and of the codes.
fn pooled_source<'a, T: Element>(dpooled: &'a [T], codes: &'a [T], n: usize) -> Source<'a> {
    Source::Pooled {
        grad: f32_view(&dpooled[..n]),
        codes: f32_view(&codes[..n]),
    }
}

/// The fused block's shapes fit this backend (what the callers ask
/// [`Conv2dOps::fuses_conv_relu_pool`] first).
fn check_fused<T: Element>(b: &CpuBackend<T>, s: &ConvShape, pool: &PoolShape) -> Result<()> {
    if b.fuses_conv_relu_pool(s, pool) {
        Ok(())
    } else {
        Err(crate::Error::Shape(format!(
            "conv {s:?} with pool {pool:?}: not a block the CPU fuses"
        )))
    }
}

impl<T: Element> CpuBackend<T> {
    /// Whether `s` runs as direct bf16 products on AMX tiles (`amx_direct/`): bf16 asked
    /// for, on a CPU with AMX, and a shape it takes.
    fn on_amx(&self, s: &ConvShape) -> bool {
        #[cfg(target_arch = "x86_64")]
        return self.bf16_products() == Some(Bf16Unit::Amx) && super::amx_direct::supported(s);
        #[cfg(not(target_arch = "x86_64"))]
        return false;
    }

    /// `dx` of a Winograd layer (f32) from the batch's output gradient `dy`, either form.
    fn winograd_backward_data(&self, s: &ConvShape, dy: Source<'_>, w: &[T], dx: &mut [T]) {
        let plan = LayerPass::new(s, Direction::BackwardData, w, self.bf16_products());
        let (in_img, per_task) = (s.in_h * s.in_w * s.in_c, Self::images_per_task(s.batch));
        f32_view_mut(&mut dx[..s.input_len()])
            .par_chunks_mut(in_img * per_task)
            .enumerate()
            .for_each(|(task, dxs)| {
                let mut scratch = self.take_scratch(plan.scratch_len());
                for (i, dxi) in dxs.chunks_exact_mut(in_img).enumerate() {
                    let dyi = dy.image(task * per_task + i, s.out_h(), s.out_w(), s.out_c);
                    let out = winograd::Output::Plain {
                        out: dxi,
                        relu: false,
                    };
                    plan.image(dyi, None, out, f32_view_mut(&mut scratch));
                }
                self.give_scratch(scratch);
            });
    }

    /// `dw`, `db` of a Winograd layer (f32) from its input `x` and the batch's output
    /// gradient `dy`, either form: each task sums its images into a private `[dw | db]`
    /// ([`Self::sum_partials`]), through [`FilterPass`].
    fn winograd_backward_filter(
        &self,
        s: &ConvShape,
        x: &[T],
        dy: Source<'_>,
        dw: &mut [T],
        db: &mut [T],
    ) {
        let pass = FilterPass::new(s, self.bf16_products());
        let (in_img, per_task) = (s.in_h * s.in_w * s.in_c, Self::images_per_task(s.batch));
        let (kernel_len, out_c) = (s.kernel_len(), s.out_c);
        let partials: Vec<Vec<T>> = x[..s.input_len()]
            .par_chunks(in_img * per_task)
            .enumerate()
            .map(|(task, xs)| {
                let mut work = self.take_scratch(pass.scratch_len());
                let mut acc = self.take_scratch(kernel_len + out_c);
                acc.fill(T::zero());
                let (dwt, dbt) = f32_view_mut(&mut acc).split_at_mut(kernel_len);
                let work_f32 = f32_view_mut(&mut work);
                pass.start(work_f32);
                for (i, xi) in xs.chunks_exact(in_img).enumerate() {
                    let dyi = dy.image(task * per_task + i, s.out_h(), s.out_w(), out_c);
                    pass.image(f32_view(xi), dyi, dwt, dbt, work_f32);
                }
                pass.finish(work_f32, dwt);
                self.give_scratch(work);
                acc
            })
            .collect();
        self.sum_partials(partials, &mut dw[..kernel_len], &mut db[..out_c]);
    }

    /// `[dw | db]` as the sum of the tasks' private `[dw | db]` partial sums, added in task
    /// order (so the same inputs give the same bits), the buffers handed back to the pool.
    fn sum_partials(&self, partials: Vec<Vec<T>>, dw: &mut [T], db: &mut [T]) {
        dw.fill(T::zero());
        db.fill(T::zero());
        for acc in partials {
            let (pw, pb) = acc.split_at(dw.len());
            for (d, &v) in dw.iter_mut().zip(pw) {
                *d += v;
            }
            for (d, &v) in db.iter_mut().zip(pb) {
                *d += v;
            }
            self.give_scratch(acc);
        }
    }
}
