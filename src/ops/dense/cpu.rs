//! Dense layers on the CPU: three GEMMs of `gemm::cpu`, or for layers whose weights dwarf
//! the batch the streaming AVX-512 passes of `streaming.rs`; in bf16 on a CPU with AMX, the
//! tile passes of `amx.rs` where the shape fits.

use super::{DenseOps, DenseShape, streaming};
use crate::ops::cpu::{
    CpuBackend, CpuPath, add_bias_relu, add_column_sums, f32_view, f32_view_mut, is_f32,
};
use crate::ops::gemm::cpu::{MatRef, matmul};
use crate::{Element, Result};

/// Whether `s` takes the AMX passes on this backend: bf16 products on AMX, a shape they take.
fn on_amx<T: Element>(backend: &CpuBackend<T>, s: &DenseShape) -> bool {
    #[cfg(target_arch = "x86_64")]
    return backend.bf16_products() == Some(crate::ops::Bf16Unit::Amx) && super::amx::supported(s);
    #[cfg(not(target_arch = "x86_64"))]
    return false;
}

/// Whether `s` takes the streaming passes on this backend.
fn streams<T: Element>(backend: &CpuBackend<T>, s: &DenseShape) -> bool {
    backend.path == CpuPath::Auto && is_f32::<T>() && streaming::supported(s)
}

impl<T: Element> DenseOps for CpuBackend<T> {
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
        let (x, w) = (&x[..s.batch * s.inputs], &w[..s.inputs * s.outputs]);
        if on_amx(self, s) {
            #[cfg(target_arch = "x86_64")]
            {
                let mut scratch = self.take_scratch(super::amx::forward_scratch_len(s));
                let xs = f32_view_mut(&mut scratch);
                super::amx::forward(s, f32_view(x), f32_view(w), f32_view_mut(out), xs);
                self.give_scratch(scratch);
            }
        } else if streams(self, s) {
            streaming::forward(s, f32_view(x), f32_view(w), f32_view_mut(out));
        } else {
            matmul(
                out,
                MatRef::row_major(x, s.batch, s.inputs),
                MatRef::row_major(w, s.inputs, s.outputs),
                false,
                true,
            );
        }
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
        let (x, dw) = (&x[..s.batch * s.inputs], &mut dw[..s.inputs * s.outputs]);
        if on_amx(self, s) {
            #[cfg(target_arch = "x86_64")]
            super::amx::weight_gradient(s, f32_view(x), f32_view(dy), f32_view_mut(dw));
        } else if streams(self, s) {
            streaming::weight_gradient(s, f32_view(x), f32_view(dy), f32_view_mut(dw));
        } else {
            matmul(
                dw,
                MatRef::transposed(x, s.inputs, s.batch),
                MatRef::row_major(dy, s.batch, s.outputs),
                false,
                true,
            );
        }
        db[..s.outputs].fill(T::zero());
        add_column_sums(dy, &mut db[..s.outputs]);
        if let Some(dx) = dx {
            // dx[batch, in] = dy[batch, out] @ w^T[out, in]
            let (dx, w) = (&mut dx[..s.batch * s.inputs], &w[..s.inputs * s.outputs]);
            if on_amx(self, s) {
                #[cfg(target_arch = "x86_64")]
                super::amx::input_gradient(s, f32_view(dy), f32_view(w), f32_view_mut(dx));
            } else if streams(self, s) {
                streaming::input_gradient(s, f32_view(dy), f32_view(w), f32_view_mut(dx));
            } else {
                matmul(
                    dx,
                    MatRef::row_major(dy, s.batch, s.outputs),
                    MatRef::transposed(w, s.outputs, s.inputs),
                    false,
                    true,
                );
            }
        }
        Ok(())
    }
}
