//! Adam on the CPU: one rayon pass over parameters, gradients and moments.

use rayon::prelude::*;

use super::{AdamOps, AdamStep};
use crate::ops::check_len;
use crate::ops::counters::StepTotals;
use crate::ops::cpu::{CpuBackend, PARALLEL_MIN_ELEMENTS};
use crate::{Element, Result};

impl<T: Element> AdamOps for CpuBackend<T> {
    fn adam_update(
        &self,
        len: usize,
        step: &AdamStep<T>,
        param: &mut Vec<T>,
        grad: &Vec<T>,
        m: &mut Vec<T>,
        v: &mut Vec<T>,
        counters: Option<&StepTotals>,
    ) -> Result<()> {
        for (what, b) in [
            ("parameter", &*param),
            ("gradient", grad),
            ("first moment", &*m),
            ("second moment", &*v),
        ] {
            check_len(what, b.len(), len)?;
        }
        if counters.is_some_and(|c| c.failure.is_some()) {
            return Ok(());
        }
        let s = *step;
        param[..len]
            .par_iter_mut()
            .with_min_len(PARALLEL_MIN_ELEMENTS)
            .zip(&grad[..len])
            .zip(m[..len].par_iter_mut())
            .zip(v[..len].par_iter_mut())
            .for_each(|(((p, &g), m), v)| {
                *m += (g - *m) * s.one_minus_beta1;
                *v += (g * g - *v) * s.one_minus_beta2;
                *p -= *m * s.step_size / (v.sqrt() + s.epsilon);
            });
        Ok(())
    }
}
