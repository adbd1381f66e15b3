//! The losses on the CPU: the reference implementation of `crate::loss`.

use super::LossOps;
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
    ) -> Result<T> {
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
        loss_forward_backward(cfg, &y_true[..n], &pred[..n], batch, classes, grad)
    }

    fn loss_counted(
        &self,
        cfg: &LossConfig,
        batch: usize,
        classes: usize,
        y_true: &Vec<T>,
        pred: &Vec<T>,
        probs: &Vec<T>,
        grad: Option<&mut Vec<T>>,
        step: usize,
        counters: &mut StepTotals,
    ) -> Result<()> {
        let value = self.loss(cfg, batch, classes, y_true, pred, grad)?.f64();
        check_len("probabilities", probs.len(), batch * classes)?;
        if counters.failure.is_some() {
            return Ok(());
        }
        if !value.is_finite() {
            counters.failure = Some(StepFailure {
                step,
                bad_inputs: false,
            });
            return Ok(());
        }
        counters.loss_sum += value * batch as f64;
        counters.seen += batch as u64;
        counters.correct += probs[..batch * classes]
            .chunks_exact(classes)
            .zip(y_true.chunks_exact(classes))
            .filter(|(p, y)| argmax(p) == argmax(y))
            .count() as u64;
        Ok(())
    }
}
