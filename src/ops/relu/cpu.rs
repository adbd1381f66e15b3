//! The ReLU gradient on the CPU.

use rayon::prelude::*;

use super::ReluOps;
use crate::ops::check_len;
use crate::ops::cpu::{CpuBackend, PARALLEL_MIN_ELEMENTS};
use crate::{Element, Result};

impl<T: Element> ReluOps for CpuBackend<T> {
    fn relu_backward(&self, len: usize, y: &Vec<T>, dy: &mut Vec<T>) -> Result<()> {
        check_len("relu output", y.len(), len)?;
        check_len("relu gradient", dy.len(), len)?;
        dy[..len]
            .par_iter_mut()
            .with_min_len(PARALLEL_MIN_ELEMENTS)
            .zip(&y[..len])
            .for_each(|(d, &v)| {
                if v <= T::zero() {
                    *d = T::zero();
                }
            });
        Ok(())
    }
}
