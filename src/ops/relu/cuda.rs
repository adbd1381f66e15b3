//! The ReLU gradient on CUDA (`kernels/relu.cu`).

use super::ReluOps;
use crate::Result;
use crate::executor::DeviceBuffer;
use crate::ops::check_len;
use crate::ops::cuda::CudaBackend;
use crate::ops::launch::{elementwise_config, int};

impl ReluOps for CudaBackend {
    fn relu_backward(
        &self,
        len: usize,
        y: &DeviceBuffer<f32>,
        dy: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        check_len("relu output", y.len(), len)?;
        check_len("relu gradient", dy.len(), len)?;
        if len == 0 {
            return Ok(());
        }
        let cfg = elementwise_config(len.div_ceil(4));
        // SAFETY: relu_bwd(const float*, float*, int) touches the first len elements.
        unsafe {
            self.exec
                .launch_builder("relu_bwd", cfg)
                .arg(y)
                .arg(dy)
                .arg(int("relu length", len)?)
                .launch()
        }
    }
}
