//! 2-D convolution (stride 1, any kernel size, valid or same padding) over NHWC batches
//! with HWIO kernels: forward (bias and ReLU fused), backward-data and backward-filter.
//!
//! - CPU (`cpu.rs`, one image per rayon task; [`algorithm`] picks per shape and pass): the
//!   first layer (3x3 over 1 or 3 channels) by direct AVX-512 code (`direct.rs`); 3x3 layers
//!   with 16k channels in and out by Winograd F(2x2, 3x3) (`winograd.rs`), or in bf16 on a
//!   CPU with AMX by direct products on its tiles (`amx_direct/`); the rest by im2col + GEMM
//!   (`gemm::cpu`) in L2-sized chunks. `CpuPath::Reference` takes the last for all.
//! - CUDA (`cuda.rs`, `kernels/conv2d.cu`): implicit GEMMs on the tiled core of
//!   `kernels/gemm_tile.cuh`; the filter gradient split over K with the deterministic
//!   reduction of `kernels/gemm_splitk.cu`; `kernels/conv2d_naive.cu` the one-thread-per-output
//!   reference kernels ([`Variant::Naive`](crate::ops::gemm::Variant)).

#[cfg(target_arch = "x86_64")]
pub mod amx_direct;
mod cpu;
mod cuda;
pub mod direct;
pub mod winograd;

pub use cpu::{Algorithm, algorithm};

use crate::Result;
use crate::ops::{PoolShape, Storage, check_len};
use crate::profile::{Phase, Profiled, Timeline};

/// Spatial padding of a convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Padding {
    /// No padding: the output shrinks by `kernel - 1` (Keras `padding="valid"`).
    Valid,
    /// Zero padding so that the output keeps the input's size (Keras `padding="same"`,
    /// stride 1: `(kernel-1)/2` before, the rest after).
    Same,
}

/// Shape of a 2-D convolution with stride 1 over an NHWC batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    pub batch: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub in_c: usize,
    pub out_c: usize,
    pub kernel_h: usize,
    pub kernel_w: usize,
    pub padding: Padding,
}

impl ConvShape {
    /// Zero rows/columns added before the input (top, left).
    pub fn pad_before(&self) -> (usize, usize) {
        match self.padding {
            Padding::Valid => (0, 0),
            Padding::Same => ((self.kernel_h - 1) / 2, (self.kernel_w - 1) / 2),
        }
    }
    pub fn out_h(&self) -> usize {
        match self.padding {
            Padding::Valid => self.in_h + 1 - self.kernel_h,
            Padding::Same => self.in_h,
        }
    }
    pub fn out_w(&self) -> usize {
        match self.padding {
            Padding::Valid => self.in_w + 1 - self.kernel_w,
            Padding::Same => self.in_w,
        }
    }
    /// Length of one im2col row: the receptive field of one output pixel.
    pub fn patch_len(&self) -> usize {
        self.kernel_h * self.kernel_w * self.in_c
    }
    pub fn input_len(&self) -> usize {
        self.batch * self.in_h * self.in_w * self.in_c
    }
    pub fn output_len(&self) -> usize {
        self.batch * self.out_h() * self.out_w() * self.out_c
    }
    pub fn kernel_len(&self) -> usize {
        self.patch_len() * self.out_c
    }
    /// Multiply-adds of the forward pass, times two (FLOPs).
    pub fn forward_flops(&self) -> f64 {
        2.0 * (self.batch * self.out_h() * self.out_w()) as f64
            * (self.patch_len() * self.out_c) as f64
    }
}

// The buffer checks of each operation, given the buffers' lengths: written once here and
// called by every backend before it touches memory.
impl ConvShape {
    pub fn check_forward(&self, x: usize, w: usize, b: usize, y: usize) -> Result<()> {
        check_len("conv input", x, self.input_len())?;
        check_len("conv kernel", w, self.kernel_len())?;
        check_len("conv bias", b, self.out_c)?;
        check_len("conv output", y, self.output_len())
    }
    pub fn check_backward_data(&self, dy: usize, w: usize, dx: usize) -> Result<()> {
        check_len("conv output gradient", dy, self.output_len())?;
        check_len("conv kernel", w, self.kernel_len())?;
        check_len("conv input gradient", dx, self.input_len())
    }
    /// Whether `pool` is a 2x2 max-pool over exactly this convolution's output, with at
    /// least one window: the block a backend may fuse (`Conv2dOps::fuses_conv_relu_pool`).
    pub fn pooled_2x2_by(&self, pool: &PoolShape) -> bool {
        pool.size == 2
            && (pool.batch, pool.in_h, pool.in_w, pool.channels)
                == (self.batch, self.out_h(), self.out_w(), self.out_c)
            && pool.output_len() > 0
    }
    pub fn check_backward_filter(&self, x: usize, dy: usize, dw: usize, db: usize) -> Result<()> {
        check_len("conv input", x, self.input_len())?;
        check_len("conv output gradient", dy, self.output_len())?;
        check_len("conv kernel gradient", dw, self.kernel_len())?;
        check_len("conv bias gradient", db, self.out_c)
    }
}

/// How a backend runs the three passes of a convolution (`bench` reports it per layer).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ConvPaths {
    pub forward: &'static str,
    pub backward_data: &'static str,
    pub backward_filter: &'static str,
}

/// The convolution ops of a backend.
pub trait Conv2dOps: Storage {
    /// The algorithm each pass of a convolution of shape `s` takes on this backend.
    fn conv2d_paths(&self, s: &ConvShape) -> ConvPaths;
    /// `y = conv(x, w) + b`, then ReLU if `relu`.
    fn conv2d_forward(
        &self,
        s: &ConvShape,
        x: &Self::Buf,
        w: &Self::Buf,
        b: &Self::Buf,
        y: &mut Self::Buf,
        relu: bool,
    ) -> Result<()>;
    /// `dx = dL/dx` given `dy = dL/dy` (of the convolution's pre-activation output).
    fn conv2d_backward_data(
        &self,
        s: &ConvShape,
        dy: &Self::Buf,
        w: &Self::Buf,
        dx: &mut Self::Buf,
    ) -> Result<()>;
    /// `dw = dL/dw`, `db = dL/db`, summed over the batch.
    fn conv2d_backward_filter(
        &self,
        s: &ConvShape,
        x: &Self::Buf,
        dy: &Self::Buf,
        dw: &mut Self::Buf,
        db: &mut Self::Buf,
    ) -> Result<()>;

    /// Whether this backend runs the convolution `s` with its ReLU and the 2x2 max-pool
    /// `pool` of its output as one pass ([`Conv2dOps::conv2d_relu_pool_forward`], never
    /// storing the convolution's output; its gradients then come from the pooled gradient
    /// and the pool's codes: [`Conv2dOps::conv2d_relu_pool_backward_filter`] and, but for a
    /// first layer, [`Conv2dOps::conv2d_relu_pool_backward_data`]). None does unless it says
    /// so.
    fn fuses_conv_relu_pool(&self, s: &ConvShape, pool: &PoolShape) -> bool {
        let _ = (s, pool);
        false
    }
    /// `pooled = maxpool(relu(conv(x, w) + b))` and each pooled value's `codes` (where in
    /// its window the maximum was, -1 where the ReLU was off), as long as `pooled`.
    #[allow(clippy::too_many_arguments)]
    fn conv2d_relu_pool_forward(
        &self,
        s: &ConvShape,
        pool: &PoolShape,
        x: &Self::Buf,
        w: &Self::Buf,
        b: &Self::Buf,
        pooled: &mut Self::Buf,
        codes: &mut Self::Buf,
    ) -> Result<()> {
        let _ = (s, pool, x, w, b, pooled, codes);
        Err(crate::Error::invalid(format!(
            "{}: no fused convolution + ReLU + pool",
            self.name()
        )))
    }
    /// `dw`, `db` of the fused block from the pooled gradient and the forward's `codes`.
    #[allow(clippy::too_many_arguments)]
    fn conv2d_relu_pool_backward_filter(
        &self,
        s: &ConvShape,
        pool: &PoolShape,
        x: &Self::Buf,
        codes: &Self::Buf,
        dpooled: &Self::Buf,
        dw: &mut Self::Buf,
        db: &mut Self::Buf,
    ) -> Result<()> {
        let _ = (s, pool, x, codes, dpooled, dw, db);
        Err(crate::Error::invalid(format!(
            "{}: no fused convolution + ReLU + pool",
            self.name()
        )))
    }
    /// `dx` of the fused block from the pooled gradient, the forward's `codes` and the
    /// kernel `w`.
    fn conv2d_relu_pool_backward_data(
        &self,
        s: &ConvShape,
        pool: &PoolShape,
        codes: &Self::Buf,
        dpooled: &Self::Buf,
        w: &Self::Buf,
        dx: &mut Self::Buf,
    ) -> Result<()> {
        let _ = (s, pool, codes, dpooled, w, dx);
        Err(crate::Error::invalid(format!(
            "{}: no fused convolution + ReLU + pool",
            self.name()
        )))
    }
}

/// Under `--profile`: the op, timed as part of its phase of the step.
impl<B: Conv2dOps + Timeline> Conv2dOps for Profiled<'_, B> {
    fn conv2d_paths(&self, s: &ConvShape) -> ConvPaths {
        self.inner.conv2d_paths(s)
    }
    fn conv2d_forward(
        &self,
        s: &ConvShape,
        x: &Self::Buf,
        w: &Self::Buf,
        b: &Self::Buf,
        y: &mut Self::Buf,
        relu: bool,
    ) -> Result<()> {
        self.enter(Phase::Forward)?;
        self.inner.conv2d_forward(s, x, w, b, y, relu)
    }
    fn conv2d_backward_data(
        &self,
        s: &ConvShape,
        dy: &Self::Buf,
        w: &Self::Buf,
        dx: &mut Self::Buf,
    ) -> Result<()> {
        self.enter(Phase::Backward)?;
        self.inner.conv2d_backward_data(s, dy, w, dx)
    }
    fn conv2d_backward_filter(
        &self,
        s: &ConvShape,
        x: &Self::Buf,
        dy: &Self::Buf,
        dw: &mut Self::Buf,
        db: &mut Self::Buf,
    ) -> Result<()> {
        self.enter(Phase::Backward)?;
        self.inner.conv2d_backward_filter(s, x, dy, dw, db)
    }
    fn fuses_conv_relu_pool(&self, s: &ConvShape, pool: &PoolShape) -> bool {
        self.inner.fuses_conv_relu_pool(s, pool)
    }
    fn conv2d_relu_pool_forward(
        &self,
        s: &ConvShape,
        pool: &PoolShape,
        x: &Self::Buf,
        w: &Self::Buf,
        b: &Self::Buf,
        pooled: &mut Self::Buf,
        codes: &mut Self::Buf,
    ) -> Result<()> {
        self.enter(Phase::Forward)?;
        self.inner
            .conv2d_relu_pool_forward(s, pool, x, w, b, pooled, codes)
    }
    fn conv2d_relu_pool_backward_filter(
        &self,
        s: &ConvShape,
        pool: &PoolShape,
        x: &Self::Buf,
        codes: &Self::Buf,
        dpooled: &Self::Buf,
        dw: &mut Self::Buf,
        db: &mut Self::Buf,
    ) -> Result<()> {
        self.enter(Phase::Backward)?;
        self.inner
            .conv2d_relu_pool_backward_filter(s, pool, x, codes, dpooled, dw, db)
    }
    fn conv2d_relu_pool_backward_data(
        &self,
        s: &ConvShape,
        pool: &PoolShape,
        codes: &Self::Buf,
        dpooled: &Self::Buf,
        w: &Self::Buf,
        dx: &mut Self::Buf,
    ) -> Result<()> {
        self.enter(Phase::Backward)?;
        self.inner
            .conv2d_relu_pool_backward_data(s, pool, codes, dpooled, w, dx)
    }
}
