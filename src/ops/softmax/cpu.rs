//! Softmax on the CPU, row by row; the row functions are shared with the losses
//! (src/ops/loss/cpu/).

use super::SoftmaxOps;
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

    fn sigmoid_forward(&self, n: usize, logits: &Vec<T>, probs: &mut Vec<T>) -> Result<()> {
        check_len("logits", logits.len(), n)?;
        check_len("probabilities", probs.len(), n)?;
        for (p, &z) in probs[..n].iter_mut().zip(&logits[..n]) {
            *p = sigmoid(z);
        }
        Ok(())
    }

    fn sigmoid_backward(
        &self,
        n: usize,
        probs: &Vec<T>,
        dprobs: &Vec<T>,
        dlogits: &mut Vec<T>,
    ) -> Result<()> {
        check_len("probabilities", probs.len(), n)?;
        check_len("probability gradient", dprobs.len(), n)?;
        check_len("logit gradient", dlogits.len(), n)?;
        for ((dz, &p), &dp) in dlogits[..n].iter_mut().zip(&probs[..n]).zip(&dprobs[..n]) {
            *dz = dp * (p * (T::one() - p));
        }
        Ok(())
    }
}

/// `softplus(x) = ln(1 + e^x)` without overflow: `max(x, 0) + ln1p(e^-|x|)` (so
/// `ln sigmoid(z) = -softplus(-z)`).
pub fn softplus<T: Element>(x: T) -> T {
    x.max(T::zero()) + (-x.abs()).exp().ln_1p()
}

/// `1 / (1 + exp(-z))` without overflow: `exp(z) / (1 + exp(z))` for negative `z`.
pub fn sigmoid<T: Element>(z: T) -> T {
    if z >= T::zero() {
        T::one() / (T::one() + (-z).exp())
    } else {
        let e = z.exp();
        e / (T::one() + e)
    }
}

/// Softmax of one row as TensorFlow computes it: `exp(z - max) / sum`.
/// Numerically stable softmax of one row (the maximum is subtracted before `exp`); shared
/// by the losses and the CPU backend's softmax.
pub fn softmax_row<T: Element>(z: &[T], p: &mut [T]) {
    let m = z.iter().copied().fold(T::neg_infinity(), T::max);
    let mut sum = T::zero();
    for (pj, &zj) in p.iter_mut().zip(z) {
        *pj = (zj - m).exp();
        sum += *pj;
    }
    for pj in p.iter_mut() {
        *pj = *pj / sum;
    }
}

/// Chains a gradient w.r.t. the softmax output `p` back to the logits in place:
/// `dz_j = p_j * (g_j - sum_c p_c g_c)`.
/// In place, `g <- J_softmax^T g = p * (g - sum(g * p))` for one row.
pub fn softmax_backward_row<T: Element>(p: &[T], g: &mut [T]) {
    let dot: T = p.iter().zip(g.iter()).map(|(&pc, &gc)| pc * gc).sum();
    for (gj, &pj) in g.iter_mut().zip(p) {
        *gj = pj * (*gj - dot);
    }
}
