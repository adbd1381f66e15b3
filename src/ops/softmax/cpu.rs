//! Softmax on the CPU, row by row with the reference functions of `crate::loss`.

use super::SoftmaxOps;
use crate::loss::{softmax_backward_row, softmax_row};
use crate::ops::check_len;
use crate::ops::cpu::CpuBackend;
use crate::{Element, Result};

impl<T: Element> SoftmaxOps for CpuBackend<T> {
    fn softmax_forward(
        &self,
        rows: usize,
        cols: usize,
        logits: &Vec<T>,
        probs: &mut Vec<T>,
    ) -> Result<()> {
        check_len("logits", logits.len(), rows * cols)?;
        check_len("probabilities", probs.len(), rows * cols)?;
        for (z, p) in logits
            .chunks_exact(cols)
            .zip(probs.chunks_exact_mut(cols))
            .take(rows)
        {
            softmax_row(z, p);
        }
        Ok(())
    }

    fn softmax_backward(
        &self,
        rows: usize,
        cols: usize,
        probs: &Vec<T>,
        dprobs: &Vec<T>,
        dlogits: &mut Vec<T>,
    ) -> Result<()> {
        check_len("probabilities", probs.len(), rows * cols)?;
        check_len("probability gradient", dprobs.len(), rows * cols)?;
        check_len("logit gradient", dlogits.len(), rows * cols)?;
        let n = rows * cols;
        dlogits[..n].copy_from_slice(&dprobs[..n]);
        for (p, dz) in probs
            .chunks_exact(cols)
            .zip(dlogits[..n].chunks_exact_mut(cols))
        {
            softmax_backward_row(p, dz);
        }
        Ok(())
    }
}
