//! Max-pooling on CUDA: launches of the kernels of `kernels/pool.cu` (float4 when the channels allow).

use super::{PoolOps, PoolShape};
use crate::Result;
use crate::executor::{DeviceBuffer, Launch};
use crate::ops::cuda::CudaBackend;
use crate::ops::launch::{elementwise_config, int};

/// The pooling kernel for `s` (the float4 one when the channels allow it) and its thread
/// count (one per output element, or per 4 with float4).
fn pool_kernel(s: &PoolShape, scalar: &'static str, v4: &'static str) -> (&'static str, usize) {
    if s.channels.is_multiple_of(4) {
        (v4, s.output_len() / 4)
    } else {
        (scalar, s.output_len())
    }
}

/// The shape arguments every pooling kernel takes after its buffers.
fn pool_dims<'l, 'a>(launch: &'l mut Launch<'a>, s: &PoolShape) -> &'l mut Launch<'a> {
    launch
        .arg(s.batch as i32)
        .arg(s.in_h as i32)
        .arg(s.in_w as i32)
        .arg(s.channels as i32)
        .arg(s.size as i32)
}

impl PoolOps for CudaBackend {
    fn maxpool2d_forward(
        &self,
        s: &PoolShape,
        x: &DeviceBuffer<f32>,
        y: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        s.check_forward(x.len(), y.len())?;
        int("pool input", s.input_len())?;
        let (name, n) = pool_kernel(s, "maxpool_fwd", "maxpool_fwd_v4");
        if n == 0 {
            return Ok(());
        }
        let mut launch = self.exec.launch_builder(name, elementwise_config(n));
        launch.arg(x).arg(y);
        // SAFETY: the kernel reads the input and writes the output the shape describes.
        unsafe { pool_dims(&mut launch, s).launch() }
    }

    fn maxpool2d_backward(
        &self,
        s: &PoolShape,
        x: &DeviceBuffer<f32>,
        dy: &DeviceBuffer<f32>,
        dx: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        s.check_backward(x.len(), dy.len(), dx.len())?;
        int("pool input", s.input_len())?;
        if s.output_len() == 0 {
            // No window at all: every input gets zero.
            return self.fill(dx, s.input_len(), 0.0);
        }
        let (name, n) = pool_kernel(s, "maxpool_bwd", "maxpool_bwd_v4");
        let mut launch = self.exec.launch_builder(name, elementwise_config(n));
        launch.arg(x).arg(dy).arg(dx);
        // SAFETY: the kernel reads x and dy and writes every element of dx the shape describes.
        unsafe { pool_dims(&mut launch, s).launch() }
    }
}
