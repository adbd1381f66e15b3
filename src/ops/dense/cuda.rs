//! Dense layers on CUDA: launches of kernels/dense.cu's kernels (or kernels/dense_naive.cu's)
//! through the GEMM planner (`gemm::cuda`).

use super::{DenseAdamOps, DenseOps, DenseShape};
use crate::Result;
use crate::executor::DeviceBuffer;
use crate::ops::cuda::CudaBackend;
use crate::ops::gemm::cuda::{Op, vector_loads};
use crate::ops::kernel_abi::GemmArgs;
use crate::ops::launch::int;

fn dense_check(s: &DenseShape) -> Result<()> {
    int("dense input", s.batch * s.inputs)?;
    int("dense output", s.batch * s.outputs)?;
    int("dense kernel", (s.inputs + 1) * s.outputs)?;
    Ok(())
}

/// The gradient and the Adam step apart, as two launches each (the default).
impl DenseAdamOps for CudaBackend {}

impl DenseOps for CudaBackend {
    fn dense_forward(
        &self,
        s: &DenseShape,
        x: &DeviceBuffer<f32>,
        w: &DeviceBuffer<f32>,
        b: &DeviceBuffer<f32>,
        y: &mut DeviceBuffer<f32>,
        relu: bool,
    ) -> Result<()> {
        s.check_forward(x.len(), w.len(), b.len(), y.len())?;
        dense_check(s)?;
        let args = GemmArgs::product(
            x.device_ptr(),
            w.device_ptr(),
            y.device_ptr(),
            [s.batch, s.outputs, s.inputs],
            [s.inputs, s.outputs, s.outputs],
        )
        .with_bias(b.device_ptr(), relu);
        let vector = vector_loads(&[s.inputs, s.outputs]);
        // SAFETY: the lengths were checked against the shape the arguments describe.
        unsafe { self.gemm(Op::DenseForward, args, vector) }
    }

    fn dense_backward(
        &self,
        s: &DenseShape,
        x: &DeviceBuffer<f32>,
        w: &DeviceBuffer<f32>,
        dy: &DeviceBuffer<f32>,
        dx: Option<&mut DeviceBuffer<f32>>,
        dw: &mut DeviceBuffer<f32>,
        db: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        let dx_len = dx.as_ref().map(|d| d.len());
        s.check_backward(x.len(), w.len(), dy.len(), dx_len, dw.len(), db.len())?;
        dense_check(s)?;
        // [dw; db][in + 1, out] = [x | 1]^T [in + 1, batch] * dy[batch, out]
        let args = GemmArgs::product(
            x.device_ptr(),
            dy.device_ptr(),
            dw.device_ptr(),
            [s.inputs + 1, s.outputs, s.batch],
            [s.inputs, s.outputs, s.outputs],
        )
        .with_bias_gradient_row(db.device_ptr());
        let vector = vector_loads(&[s.inputs, s.outputs]);
        // SAFETY: the lengths were checked against the shape the arguments describe.
        unsafe { self.gemm(Op::DenseBackwardWeights, args, vector)? };
        if let Some(dx) = dx {
            // dx[batch, in] = dy[batch, out] * w^T[out, in]
            let args = GemmArgs::product(
                dy.device_ptr(),
                w.device_ptr(),
                dx.device_ptr(),
                [s.batch, s.inputs, s.outputs],
                [s.outputs, s.outputs, s.inputs],
            );
            let vector = vector_loads(&[s.outputs]);
            // SAFETY: the lengths were checked against the shape the arguments describe.
            unsafe { self.gemm(Op::DenseBackwardInput, args, vector)? };
        }
        Ok(())
    }
}
