//! Max-pooling with a square window and an equal stride over NHWC batches, forward and
//! backward, and the backward fused with the ReLU gradient of the layer before.
//!
//! - CPU (`cpu.rs`): one image per rayon task; the usual 2x2 window branch-free.
//! - CUDA (`cuda.rs`, `kernels/pool.cu`): one thread per output (per 4 channels with float4).

pub(crate) mod cpu;
mod cuda;

use crate::Result;
use crate::ops::relu::ReluOps;
use crate::ops::{Storage, check_len};
use crate::profile::{Phase, Profiled, Timeline};

/// Shape of a max-pooling with a square window and equal stride over an NHWC batch; odd
/// sizes are floored, as in Keras (109 -> 54).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolShape {
    pub batch: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub channels: usize,
    pub size: usize,
}

impl PoolShape {
    pub fn out_h(&self) -> usize {
        self.in_h / self.size
    }
    pub fn out_w(&self) -> usize {
        self.in_w / self.size
    }
    pub fn input_len(&self) -> usize {
        self.batch * self.in_h * self.in_w * self.channels
    }
    pub fn output_len(&self) -> usize {
        self.batch * self.out_h() * self.out_w() * self.channels
    }
}

impl PoolShape {
    /// A window of size 0 has no output size (`out_h` would divide by zero).
    fn check_window(&self) -> Result<()> {
        if self.size == 0 {
            return Err(crate::Error::Shape(
                "max-pooling with a window of size 0".into(),
            ));
        }
        Ok(())
    }
    pub fn check_forward(&self, x: usize, y: usize) -> Result<()> {
        self.check_window()?;
        check_len("pool input", x, self.input_len())?;
        check_len("pool output", y, self.output_len())
    }
    pub fn check_backward(&self, x: usize, dy: usize, dx: usize) -> Result<()> {
        self.check_window()?;
        check_len("pool input", x, self.input_len())?;
        check_len("pool output gradient", dy, self.output_len())?;
        check_len("pool input gradient", dx, self.input_len())
    }
}

/// The pooling ops of a backend.
pub trait PoolOps: Storage + ReluOps {
    fn maxpool2d_forward(&self, s: &PoolShape, x: &Self::Buf, y: &mut Self::Buf) -> Result<()>;
    /// Routes each output gradient to the first maximal input of its window (row-major
    /// order); inputs in no window (the floored edge) get zero.
    fn maxpool2d_backward(
        &self,
        s: &PoolShape,
        x: &Self::Buf,
        dy: &Self::Buf,
        dx: &mut Self::Buf,
    ) -> Result<()>;
    /// [`Self::maxpool2d_backward`] then [`Self::relu_backward`] of the layer before, for a
    /// pool whose input `x` is a ReLU's output: the gradient reaches the ReLU's input. A
    /// window's maximum is the only input with a gradient, so the ReLU mask reduces to
    /// "that maximum is above 0"; backends override this to do it in one pass.
    fn maxpool2d_relu_backward(
        &self,
        s: &PoolShape,
        x: &Self::Buf,
        dy: &Self::Buf,
        dx: &mut Self::Buf,
    ) -> Result<()> {
        self.maxpool2d_backward(s, x, dy, dx)?;
        self.relu_backward(s.input_len(), x, dx)
    }
}

/// Under `--profile`: the op, timed as part of its phase of the step.
impl<B: PoolOps + Timeline> PoolOps for Profiled<'_, B> {
    fn maxpool2d_forward(&self, s: &PoolShape, x: &Self::Buf, y: &mut Self::Buf) -> Result<()> {
        self.enter(Phase::Forward)?;
        self.inner.maxpool2d_forward(s, x, y)
    }
    fn maxpool2d_backward(
        &self,
        s: &PoolShape,
        x: &Self::Buf,
        dy: &Self::Buf,
        dx: &mut Self::Buf,
    ) -> Result<()> {
        self.enter(Phase::Backward)?;
        self.inner.maxpool2d_backward(s, x, dy, dx)
    }
    fn maxpool2d_relu_backward(
        &self,
        s: &PoolShape,
        x: &Self::Buf,
        dy: &Self::Buf,
        dx: &mut Self::Buf,
    ) -> Result<()> {
        self.enter(Phase::Backward)?;
        self.inner.maxpool2d_relu_backward(s, x, dy, dx)
    }
}

/// The pool's window arithmetic for the fused convolution blocks (the direct first layer,
/// Winograd's output transform), on AVX-512.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use std::arch::x86_64::*;

    /// The 2x2 max-pool of a window's four values (row by row) after a ReLU, and its code, each
    /// as the unfused ReLU and pool ops compute them (NaNs included): the pooled value as the pool's forward
    /// pass (from -inf, `v > max` in window order), the code as its backward pass picks the
    /// maximum (from the first value, the first of equal ones): its position (0-3), or -1
    /// where that maximum is <= 0 (no gradient through the ReLU).
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(crate) fn relu_window_max(v: [__m512; 4]) -> (__m512, __m512) {
        let zero = _mm512_setzero_ps();
        let r = v.map(|a| _mm512_max_ps(zero, a));
        let mut pooled = _mm512_set1_ps(f32::NEG_INFINITY);
        for &x in &r {
            pooled = _mm512_mask_mov_ps(pooled, _mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, pooled), x);
        }
        let (mut best, mut code) = (r[0], zero);
        for (k, &x) in r.iter().enumerate().skip(1) {
            let more = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, best);
            best = _mm512_mask_mov_ps(best, more, x);
            code = _mm512_mask_mov_ps(code, more, _mm512_set1_ps(k as f32));
        }
        let off = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(best, zero);
        (pooled, _mm512_mask_mov_ps(code, off, _mm512_set1_ps(-1.0)))
    }
}
