//! Max-pooling with a square window and an equal stride over NHWC batches, forward and
//! backward, and the backward fused with the ReLU gradient of the layer before.
//!
//! - CPU (`cpu.rs`): one image per rayon task; the usual 2x2 window branch-free.
//! - CUDA (`cuda.rs`, `kernels/pool.cu`): one thread per output (per 4 channels with float4).

mod cpu;
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
