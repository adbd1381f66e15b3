//! Adam on CUDA (kernels/adam.cu): [`ADAM_THREADS`] threads per block, one float4 per
//! thread per iteration, grid `ceil(len / (4 * ADAM_THREADS))` capped at [`ADAM_MAX_BLOCKS`]
//! (grid-stride).

use super::{AdamOps, AdamStep};
use crate::Result;
use crate::executor::{DeviceBuffer, LaunchConfig};
use crate::ops::check_len;
use crate::ops::counters::cuda::check;
use crate::ops::cuda::CudaBackend;
use crate::ops::kernel_abi::ADAM_THREADS;

/// Grid cap of the Adam kernel: enough blocks to fill any current GPU several times over.
const ADAM_MAX_BLOCKS: usize = 8192;

impl AdamOps for CudaBackend {
    fn adam_update(
        &self,
        len: usize,
        step: &AdamStep<f32>,
        param: &mut DeviceBuffer<f32>,
        grad: &DeviceBuffer<f32>,
        m: &mut DeviceBuffer<f32>,
        v: &mut DeviceBuffer<f32>,
        counters: Option<&DeviceBuffer<f64>>,
    ) -> Result<()> {
        if let Some(c) = counters {
            check(c)?;
        }
        check_len("parameter", param.len(), len)?;
        check_len("gradient", grad.len(), len)?;
        check_len("first moment", m.len(), len)?;
        check_len("second moment", v.len(), len)?;
        if len == 0 {
            return Ok(());
        }
        let per_block = 4 * ADAM_THREADS as usize;
        let blocks = len.div_ceil(per_block).clamp(1, ADAM_MAX_BLOCKS);
        // SAFETY: adam_update_f32(float*, const float*, float*, float*, long long, float x4,
        // const double*) updates the first `len` elements of the four buffers checked above
        // and reads the counters (COUNTER_COUNT doubles, checked above) or none (null).
        unsafe {
            self.exec
                .launch_builder(
                    "adam_update_f32",
                    LaunchConfig::new(blocks as u32, ADAM_THREADS),
                )
                .arg(param)
                .arg(grad)
                .arg(m)
                .arg(v)
                .arg(len as i64)
                .arg(step.step_size)
                .arg(step.one_minus_beta1)
                .arg(step.one_minus_beta2)
                .arg(step.epsilon)
                .arg(counters)
                .launch()
        }
    }
}
