//! The losses on the CPU: the reference implementation of `crate::loss`.

use super::{CountStep, LossOps};
use crate::loss::{LossConfig, loss_forward_backward};
use crate::metrics::argmax;
use crate::ops::check_len;
use crate::ops::counters::{StepFailure, StepTotals};
use crate::ops::cpu::CpuBackend;
use crate::{Element, Result};

impl<T: Element> LossOps for CpuBackend<T> {
    fn loss(
        &self,
        cfg: &LossConfig,
        batch: usize,
        classes: usize,
        y_true: &Vec<T>,
        pred: &Vec<T>,
        grad: Option<&mut Vec<T>>,
        count: Option<CountStep<'_, Vec<T>, StepTotals>>,
    ) -> Result<Option<T>> {
        let n = batch * classes;
        check_len("labels", y_true.len(), n)?;
        check_len("predictions", pred.len(), n)?;
        let grad = match grad {
            Some(g) => {
                check_len("loss gradient", g.len(), n)?;
                Some(&mut g[..n])
            }
            None => None,
        };
        let value = loss_forward_backward(cfg, &y_true[..n], &pred[..n], batch, classes, grad)?;
        match count {
            None => Ok(Some(value)),
            Some(c) => {
                check_len("probabilities", c.probs.len(), n)?;
                add_step(
                    c.counters,
                    c.step,
                    value.f64(),
                    &c.probs[..n],
                    &y_true[..n],
                    batch,
                    classes,
                );
                Ok(None)
            }
        }
    }
}

/// Adds a step's loss and correctly classified images to the pass's totals, or records its
/// failure (nothing is added after the first).
fn add_step<T: Element>(
    totals: &mut StepTotals,
    step: usize,
    value: f64,
    probs: &[T],
    y_true: &[T],
    batch: usize,
    classes: usize,
) {
    if totals.failure.is_some() {
        return;
    }
    if !value.is_finite() {
        totals.failure = Some(StepFailure {
            step,
            bad_inputs: false,
        });
        return;
    }
    totals.loss_sum += value * batch as f64;
    totals.seen += batch as u64;
    totals.correct += probs
        .chunks_exact(classes)
        .zip(y_true.chunks_exact(classes))
        .filter(|(p, y)| argmax(p) == argmax(y))
        .count() as u64;
}
