//! Dense layers on CUDA: launches of `dense.cu`'s kernels (or `dense_naive.cu`'s) through
//! the GEMM planner (`gemm::cuda`).

use super::{DenseOps, DenseShape};
use crate::Result;
use crate::executor::DeviceBuffer;
use crate::ops::cuda::{CudaBackend, int};
use crate::ops::gemm::cuda::{GemmArgs, Op};

fn dense_check(s: &DenseShape) -> Result<()> {
    int("dense input", s.batch * s.inputs)?;
    int("dense output", s.batch * s.outputs)?;
    int("dense kernel", (s.inputs + 1) * s.outputs)?;
    Ok(())
}

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
        let args = GemmArgs {
            a: x.device_ptr(),
            b: w.device_ptr(),
            bias: b.device_ptr(),
            out: y.device_ptr(),
            m: s.batch as i32,
            n: s.outputs as i32,
            k: s.inputs as i32,
            lda: s.inputs as i32,
            ldb: s.outputs as i32,
            ldo: s.outputs as i32,
            m_split: s.batch as i32,
            ones_row: -1,
            relu: relu as i32,
            ..GemmArgs::default()
        };
        let vector = s.inputs.is_multiple_of(4) && s.outputs.is_multiple_of(4);
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
        let args = GemmArgs {
            a: x.device_ptr(),
            b: dy.device_ptr(),
            out: dw.device_ptr(),
            out2: db.device_ptr(),
            m: (s.inputs + 1) as i32,
            n: s.outputs as i32,
            k: s.batch as i32,
            lda: s.inputs as i32,
            ldb: s.outputs as i32,
            ldo: s.outputs as i32,
            m_split: s.inputs as i32,
            ones_row: s.inputs as i32,
            ..GemmArgs::default()
        };
        let vector = s.inputs.is_multiple_of(4) && s.outputs.is_multiple_of(4);
        // SAFETY: the lengths were checked against the shape the arguments describe.
        unsafe { self.gemm(Op::DenseBackwardWeights, args, vector)? };
        if let Some(dx) = dx {
            // dx[batch, in] = dy[batch, out] * w^T[out, in]
            let args = GemmArgs {
                a: dy.device_ptr(),
                b: w.device_ptr(),
                out: dx.device_ptr(),
                m: s.batch as i32,
                n: s.inputs as i32,
                k: s.outputs as i32,
                lda: s.outputs as i32,
                ldb: s.outputs as i32,
                ldo: s.inputs as i32,
                m_split: s.batch as i32,
                ones_row: -1,
                ..GemmArgs::default()
            };
            let vector = s.outputs.is_multiple_of(4);
            // SAFETY: the lengths were checked against the shape the arguments describe.
            unsafe { self.gemm(Op::DenseBackwardInput, args, vector)? };
        }
        Ok(())
    }
}
