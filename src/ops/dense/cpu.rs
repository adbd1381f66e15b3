//! Dense layers on the CPU: three GEMMs of `gemm::cpu`, or for layers whose weights dwarf
//! the batch the streaming AVX-512 passes of `streaming.rs`; in bf16 on a CPU with AMX, the
//! tile passes of `amx.rs` where the shape fits. The streaming and AMX passes also run the
//! kernel's Adam step inside the backward pass (`adam.rs`).

use super::{
    DenseAdamOps, DenseOps, DenseShape, GradientSink, Kernel, backward_then_adam, streaming,
};
use crate::ops::adam::AdamStep;
use crate::ops::check_len;
use crate::ops::counters::StepTotals;
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
        if on_amx(self, s) || streams(self, s) {
            let sink = GradientSink::Store(f32_view_mut(dw));
            self.weight_gradient(s, f32_view(x), f32_view(dy), sink);
        } else {
            matmul(
                dw,
                MatRef::transposed(x, s.inputs, s.batch),
                MatRef::row_major(dy, s.batch, s.outputs),
                false,
                true,
            );
        }
        self.bias_and_input_gradients(s, dy, &w[..s.inputs * s.outputs], dx, db);
        Ok(())
    }
}

impl<T: Element> DenseAdamOps for CpuBackend<T> {
    fn fuses_dense_adam(&self, s: &DenseShape) -> bool {
        on_amx(self, s) || streams(self, s)
    }

    fn dense_backward_adam(
        &self,
        s: &DenseShape,
        x: &Vec<T>,
        dy: &Vec<T>,
        dx: Option<&mut Vec<T>>,
        kernel: Kernel<'_, Vec<T>>,
        db: &mut Vec<T>,
        step: &AdamStep<T>,
        counters: Option<&StepTotals>,
    ) -> Result<()> {
        let failed = counters.is_some_and(|c| c.failure.is_some());
        if !self.fuses_dense_adam(s) || failed {
            return backward_then_adam(self, s, x, dy, dx, kernel, db, step, counters);
        }
        let (w, len) = (kernel.value, s.inputs * s.outputs);
        let dx_len = dx.as_ref().map(|d| d.len());
        s.check_backward(x.len(), w.len(), dy.len(), dx_len, w.len(), db.len())?;
        check_len("first moment", kernel.m.len(), len)?;
        check_len("second moment", kernel.v.len(), len)?;
        let dy = &dy[..s.batch * s.outputs];
        // The input gradient first: it reads the kernel before its update.
        self.bias_and_input_gradients(s, dy, &w[..len], dx, db);
        let of = |x: T| x.f64() as f32; // exact: the fused passes are f32 only
        let sink = GradientSink::Adam {
            w: f32_view_mut(&mut w[..len]),
            m: f32_view_mut(&mut kernel.m[..len]),
            v: f32_view_mut(&mut kernel.v[..len]),
            step: AdamStep {
                step_size: of(step.step_size),
                one_minus_beta1: of(step.one_minus_beta1),
                one_minus_beta2: of(step.one_minus_beta2),
                epsilon: of(step.epsilon),
            },
        };
        self.weight_gradient(s, f32_view(&x[..s.batch * s.inputs]), f32_view(dy), sink);
        Ok(())
    }
}

impl<T: Element> CpuBackend<T> {
    /// `dw = x^T @ dy` into `sink` by the AMX or the streaming passes (where
    /// [`DenseAdamOps::fuses_dense_adam`] says one applies).
    fn weight_gradient(&self, s: &DenseShape, x: &[f32], dy: &[f32], sink: GradientSink<'_>) {
        if on_amx(self, s) {
            #[cfg(target_arch = "x86_64")]
            super::amx::weight_gradient(s, x, dy, sink);
        } else {
            streaming::weight_gradient_into(s, x, dy, sink);
        }
    }

    /// `db = sum_rows(dy)`, and `dx = dy @ w^T` when `dx` is given.
    fn bias_and_input_gradients(
        &self,
        s: &DenseShape,
        dy: &[T],
        w: &[T],
        dx: Option<&mut Vec<T>>,
        db: &mut [T],
    ) {
        db[..s.outputs].fill(T::zero());
        add_column_sums(dy, &mut db[..s.outputs]);
        let Some(dx) = dx else { return };
        // dx[batch, in] = dy[batch, out] @ w^T[out, in]
        let dx = &mut dx[..s.batch * s.inputs];
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
}
