//! The losses on the CPU: [`loss_forward_backward`], the reference implementation of every
//! [`LossConfig`], computes the loss of a batch and, on request, its gradient with respect
//! to the predictions (or to the logits with `from_logits`); the `LossOps` of the CPU
//! backend run it. The CUDA kernels (kernels/loss.cu) follow its formulas and operation
//! order.
//!
//! Every formula follows a stated reference exactly, so that results can be compared with
//! TensorFlow/Keras to float32 precision:
//!
//! - `focal`: the practitioner's original Keras loss
//!   `p = clip(pred, 1e-7, 1-1e-7)`,
//!   `mean_batch(sum_c -alpha_c * y * (1-p)^gamma * ln p) + l1 * sum|p| + l2 * sum p^2`,
//!   where the L1/L2 sums run over the whole batch (they grow with the batch size).
//!   Gradients follow TensorFlow's `clip_by_value`: zero where `pred` lies strictly outside
//!   `[1e-7, 1-1e-7]` (for the L1/L2 terms too), passed on at the bounds and inside.
//!   With `from_logits` a fused, numerically stable softmax + focal path without clipping.
//! - `calibrated-mse`: `mean((y-p)^2) + facture * mean((0.5-p)^2)` over all batch x classes
//!   elements, no clipping (softmax first with `from_logits`).
//! - `keras-focal`: Keras 3 `CategoricalFocalCrossentropy` (label smoothing, softmax when
//!   from logits, division by the row sum, clip, mean over the batch).
//! - `ce`: Keras 3 `CategoricalCrossentropy` (label smoothing, division by the row sum and
//!   clip for probabilities; stable log-softmax with `from_logits`).
//! - `flsd-53`: Mukhoti et al.'s sample-dependent focal loss, `-(1-p_t)^gamma log p_t` with
//!   gamma 5 where the true class's `p_t < 0.2`, else 3 (a constant of the sample in the
//!   gradient): the `focal` paths with alpha 1, no L1/L2, and that gamma per row (`p_t`
//!   clipped as the probability path clips it).
//! - `adafocal`: Ghosh et al.'s AdaFocal, the `flsd-53` paths with the gamma of the bin
//!   the sample's `p_t` falls in (`crate::adafocal` updates them each epoch); a negative
//!   gamma is the inverse-focal form `-(1 + p_t)^|gamma| log p_t`.
//! - `sigmoid-focal`: torchvision's `sigmoid_focal_loss` on independent sigmoid outputs,
//!   per element `alpha_t * BCE * (1 - p_t)^gamma` (`p_t = p y + (1-p)(1-y)`, `alpha_t =
//!   alpha y + (1-alpha)(1-y)`, 1 where alpha < 0), mean over batch x classes; probabilities
//!   clipped as for `focal` (no gradient strictly outside the bounds), or from logits through
//!   log-sigmoids (`ln p = -softplus(-z)`), never `1 - p`.
//! - `dual-focal`: Tao et al.'s `-(1 - p_k + p_j)^gamma log p_k`, `p_j` the largest
//!   probability strictly below the true class's `p_k` (0 if none; the first on a tie), mean
//!   over the batch, the gradient through `p_k` and `p_j`; probabilities clipped as for
//!   `focal` (no gradient strictly outside the bounds), or a stable log-softmax from logits.
//!
//! The clip bounds are computed in the element type's arithmetic, as TensorFlow does: in f32
//! the upper bound is 0.99999988 (the f32 nearest to 1-1e-7), so an f32 prediction of
//! 0.99999994 or 1.0 is clipped and gets no gradient.

mod focal;
mod sigmoid;

use super::{CountStep, LossOps};
use crate::loss::{Alpha, CLIP_EPSILON, GammaBins, LossConfig};
use crate::metrics::argmax;
use crate::ops::check_len;
use crate::ops::counters::{StepFailure, StepTotals};
use crate::ops::cpu::CpuBackend;
use crate::ops::softmax::{softmax_backward_row, softmax_row};
use crate::{Element, Error, Result};
use focal::{RowGamma, dual_focal, focal_path};
use sigmoid::sigmoid_focal;

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
        .filter(|(p, y)| is_hit(p, y))
        .count() as u64;
}

/// Whether the predicted class (the first largest probability) is a true class: its label
/// is the row's largest and positive. One-hot labels: top-1 accuracy; multi-hot: the top
/// class is one of the image's labels.
fn is_hit<T: Element>(probs: &[T], y: &[T]) -> bool {
    let label = y[argmax(probs)];
    label > T::zero() && label == y[argmax(y)]
}

/// Loss value, and if `grad` is Some, dLoss/dpred (or dLoss/dlogits when from_logits)
/// written into it (overwritten, not accumulated).
/// `y_true`, `pred`, `grad` are row-major `[batch, classes]`. Computed in `T` (f32 in
/// training, f64 in gradient checks).
///
/// Errors: invalid parameters ([`LossConfig::validate`]), a zero batch or class count or
/// slices of the wrong length (`Error::Shape`), a non-finite input (`Error::NonFinite`,
/// naming the row and column), and for `keras-focal`/`ce` on probabilities a row whose sum
/// is not positive (Keras would divide by it).
pub fn loss_forward_backward<T: Element>(
    cfg: &LossConfig,
    y_true: &[T],
    pred: &[T],
    batch: usize,
    classes: usize,
    grad: Option<&mut [T]>,
) -> Result<T> {
    check_loss_shapes(
        batch,
        classes,
        y_true.len(),
        pred.len(),
        grad.as_ref().map(|g| g.len()),
        LengthRule::Exact,
    )?;
    cfg.validate(classes)?;
    let pred_name = if cfg.from_logits() { "logits" } else { "pred" };
    check_finite(y_true, "y_true", classes)?;
    check_finite(pred, pred_name, classes)?;
    let dims = Dims { batch, classes };
    let alphas = |alpha: &Alpha| -> Vec<T> { (0..classes).map(|c| T::of(alpha.at(c))).collect() };

    Ok(match cfg {
        LossConfig::Focal {
            alpha,
            gamma,
            l1,
            l2,
            from_logits,
        } => {
            // The two paths take the same arguments: probabilities, or logits (fused).
            focal_path(*from_logits)(
                &alphas(alpha),
                &RowGamma::of(&GammaBins::fixed(*gamma)),
                T::of(*l1),
                T::of(*l2),
                y_true,
                pred,
                dims,
                grad,
            )
        }
        LossConfig::CalibratedMse {
            facture,
            from_logits,
        } => calibrated_mse(T::of(*facture), *from_logits, y_true, pred, dims, grad),
        LossConfig::KerasFocal {
            alpha,
            gamma,
            label_smoothing,
            from_logits,
        } => {
            let a = alphas(alpha);
            let g = T::of(*gamma);
            // d/do of a*(1-o)^g*(-y ln o), in the operation order Keras uses.
            let term = |c: usize, y: T, o: T| -> (T, T) {
                let q = T::one() - o;
                let cce = -y * o.ln();
                let value = q.powf(g) * a[c] * cce;
                let d = a[c] * (-g * q.powf(g - T::one()) * cce + q.powf(g) * (-y / o));
                (value, d)
            };
            keras_normalized(
                *label_smoothing,
                *from_logits,
                y_true,
                pred,
                dims,
                grad,
                term,
            )?
        }
        LossConfig::CrossEntropy {
            label_smoothing,
            from_logits: false,
        } => {
            let term = |_c: usize, y: T, o: T| -> (T, T) { (-y * o.ln(), -y / o) };
            keras_normalized(*label_smoothing, false, y_true, pred, dims, grad, term)?
        }
        LossConfig::CrossEntropy {
            label_smoothing,
            from_logits: true,
        } => cross_entropy_logits(*label_smoothing, y_true, pred, dims, grad),
        LossConfig::Flsd53 { .. } | LossConfig::AdaFocal { .. } => {
            // The focal paths with alpha 1, no L1/L2 and a gamma per sample.
            let bins = cfg
                .sample_gammas()
                .expect("flsd-53 and adafocal have sample gammas");
            let ones = vec![T::one(); classes];
            focal_path(cfg.from_logits())(
                &ones,
                &RowGamma::of(&bins),
                T::zero(),
                T::zero(),
                y_true,
                pred,
                dims,
                grad,
            )
        }
        LossConfig::DualFocal { gamma, from_logits } => {
            dual_focal(T::of(*gamma), *from_logits, y_true, pred, dims, grad)
        }
        LossConfig::SigmoidFocal {
            alpha,
            gamma,
            from_logits,
        } => sigmoid_focal(
            &alphas(alpha),
            T::of(*gamma),
            *from_logits,
            y_true,
            pred,
            dims,
            grad,
        ),
    })
}

/// The first largest label of a row: its true class.
fn true_class<T: Element>(y: &[T]) -> usize {
    let mut t = 0;
    for (c, &v) in y.iter().enumerate() {
        if v > y[t] {
            t = c;
        }
    }
    t
}

#[derive(Clone, Copy)]
struct Dims {
    batch: usize,
    classes: usize,
}

/// How the buffers handed to a loss must relate to `[batch, classes]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LengthRule {
    /// Slices of exactly `batch * classes` values (`loss_forward_backward`).
    Exact,
    /// Device buffers of at least that many values (backends may reuse longer buffers).
    AtLeast,
}

/// The shape checks of every loss implementation (same messages on every backend): returns
/// `batch * classes`.
pub fn check_loss_shapes(
    batch: usize,
    classes: usize,
    y_len: usize,
    pred_len: usize,
    grad_len: Option<usize>,
    rule: LengthRule,
) -> Result<usize> {
    if batch == 0 || classes == 0 {
        return Err(Error::Shape(format!(
            "a loss needs at least one sample and one class, got [batch={batch}, classes={classes}]"
        )));
    }
    let want = batch.checked_mul(classes).ok_or_else(|| {
        Error::Shape(format!(
            "[batch={batch}, classes={classes}] overflows the address space"
        ))
    })?;
    let fits = |len: usize| match rule {
        LengthRule::Exact => len == want,
        LengthRule::AtLeast => len >= want,
    };
    let mut bad = Vec::new();
    if !fits(y_len) {
        bad.push(format!("y_true has {y_len}"));
    }
    if !fits(pred_len) {
        bad.push(format!("pred has {pred_len}"));
    }
    if let Some(g) = grad_len
        && !fits(g)
    {
        bad.push(format!("grad has {g}"));
    }
    if bad.is_empty() {
        Ok(want)
    } else {
        Err(Error::Shape(format!(
            "[batch={batch}, classes={classes}] needs {want} values, but {}",
            bad.join(", ")
        )))
    }
}

fn check_finite<T: Element>(values: &[T], what: &str, classes: usize) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(Error::NonFinite(format!(
            "{what} has a non-finite value ({}) at row {}, column {}",
            values[i],
            i / classes,
            i % classes
        ))),
    }
}

fn clip_bounds<T: Element>() -> (T, T) {
    // As TensorFlow: both bounds are Python floats converted to the tensor's type.
    (T::of(CLIP_EPSILON), T::of(1.0 - CLIP_EPSILON))
}

fn clamp<T: Element>(x: T, lo: T, hi: T) -> T {
    if x < lo {
        lo
    } else if x > hi {
        hi
    } else {
        x
    }
}

/// The labels with Keras' label smoothing applied: `y*(1-ls) + ls/classes`.
fn smooth_labels<T: Element>(y_true: &[T], label_smoothing: f64, classes: usize) -> Vec<T> {
    if label_smoothing == 0.0 {
        return y_true.to_vec();
    }
    let keep = T::of(1.0 - label_smoothing);
    let add = T::of(label_smoothing) / T::of(classes as f64);
    y_true.iter().map(|&y| y * keep + add).collect()
}

/// Stable log-softmax of one row: `logp_j`, `p_j = exp(logp_j)` and `q_j = 1 - p_j`
/// computed as `-expm1(logp_j)`. The log-sum-exp is `m + ln1p(sum over j != argmax of
/// exp(z_j - m))`, so that a dominant class gets `logp = -ln1p(s)` and `q ~ s` with full
/// relative precision even when `s` is far below the epsilon of `T`.
fn log_softmax_row<T: Element>(z: &[T], logp: &mut [T], p: &mut [T], q: &mut [T]) {
    let mut arg = 0;
    for (j, &zj) in z.iter().enumerate() {
        if zj > z[arg] {
            arg = j;
        }
    }
    let m = z[arg];
    let s: T = z
        .iter()
        .enumerate()
        .filter(|&(j, _)| j != arg)
        .map(|(_, &zj)| (zj - m).exp())
        .sum();
    let lse_minus_m = s.ln_1p();
    for j in 0..z.len() {
        logp[j] = (z[j] - m) - lse_minus_m;
        p[j] = logp[j].exp();
        q[j] = -logp[j].exp_m1();
    }
}

/// Adds `scale * (p_j * sum_c v_c - v_j)` to `out[j]`, the gradient w.r.t. the logits of
/// `-sum_c v_c log p_c` with fixed weights `v`. Evaluated as
/// `p_j * (sum over c != j of v_c) - q_j * v_j` (equal, since `p_j + q_j = 1`): for a confident
/// class (`p_j ≈ 1`) the direct form subtracts two numbers close to `v_j` and keeps only an
/// absolute precision of ~eps·v_j, whereas this form keeps the full relative precision of
/// `q_j` (e.g. one-hot labels: exactly `-q_j`). The sums excluding `j` come from a suffix sum
/// (`suffix`, scratch of the row's length) and a running prefix sum, never from `W - v_j`.
fn add_softmax_residual<T: Element>(
    p: &[T],
    q: &[T],
    v: &[T],
    scale: T,
    suffix: &mut [T],
    out: &mut [T],
) {
    let k = p.len();
    let mut acc = T::zero();
    for j in (0..k).rev() {
        suffix[j] = acc;
        acc += v[j];
    }
    let mut prefix = T::zero();
    for j in 0..k {
        let others = prefix + suffix[j];
        out[j] += (p[j] * others - q[j] * v[j]) * scale;
        prefix += v[j];
    }
}

fn calibrated_mse<T: Element>(
    facture: T,
    from_logits: bool,
    y_true: &[T],
    pred: &[T],
    d: Dims,
    mut grad: Option<&mut [T]>,
) -> T {
    let k = d.classes;
    let n = T::of((d.batch * k) as f64);
    let half = T::of(0.5);
    let two = T::of(2.0);
    let mut p = vec![T::zero(); k];
    let (mut fit, mut calib) = (T::zero(), T::zero());
    for row in 0..d.batch {
        let x = &pred[row * k..(row + 1) * k];
        if from_logits {
            softmax_row(x, &mut p);
        } else {
            p.copy_from_slice(x);
        }
        let y = &y_true[row * k..(row + 1) * k];
        for c in 0..k {
            fit += (y[c] - p[c]) * (y[c] - p[c]);
            calib += (half - p[c]) * (half - p[c]);
        }
        if let Some(g) = grad.as_deref_mut() {
            let g = &mut g[row * k..(row + 1) * k];
            for c in 0..k {
                g[c] = (two * (p[c] - y[c]) + facture * two * (p[c] - half)) / n;
            }
            if from_logits {
                softmax_backward_row(&p, g);
            }
        }
    }
    fit / n + facture * (calib / n)
}

/// The Keras probability path shared by `keras-focal` and `ce` (and `keras-focal` from
/// logits, where Keras applies a plain softmax first): labels smoothed, `o = pred/rowsum`,
/// `o` clipped to `[1e-7, 1-1e-7]` with TF's gradient semantics, per-element `term(c, y, o)`
/// giving the value and its derivative w.r.t. the clipped `o`, mean over the batch.
fn keras_normalized<T: Element>(
    label_smoothing: f64,
    from_logits: bool,
    y_true: &[T],
    pred: &[T],
    d: Dims,
    mut grad: Option<&mut [T]>,
    term: impl Fn(usize, T, T) -> (T, T),
) -> Result<T> {
    let k = d.classes;
    let (lo, hi) = clip_bounds::<T>();
    let inv_batch = T::one() / T::of(d.batch as f64);
    let y_all = smooth_labels(y_true, label_smoothing, k);
    let (mut p, mut o, mut dout) = (vec![T::zero(); k], vec![T::zero(); k], vec![T::zero(); k]);
    let mut total = T::zero();
    for row in 0..d.batch {
        let x = &pred[row * k..(row + 1) * k];
        if from_logits {
            softmax_row(x, &mut p);
        } else {
            p.copy_from_slice(x);
        }
        let s: T = p.iter().copied().sum();
        if !(s > T::zero() && s.is_finite()) {
            return Err(Error::invalid(format!(
                "pred row {row} sums to {s}; this loss divides each row by its sum, which must be positive"
            )));
        }
        let y = &y_all[row * k..(row + 1) * k];
        let mut row_sum = T::zero();
        for c in 0..k {
            o[c] = p[c] / s;
            let (v, dv) = term(c, y[c], clamp(o[c], lo, hi));
            row_sum += v;
            dout[c] = if o[c] < lo || o[c] > hi {
                T::zero()
            } else {
                dv
            };
        }
        total += row_sum;
        if let Some(g) = grad.as_deref_mut() {
            let g = &mut g[row * k..(row + 1) * k];
            // o_c = p_c / s: do_c/dp_j = (δ_cj - o_c) / s.
            let dot: T = dout.iter().zip(&o).map(|(&dc, &oc)| dc * oc).sum();
            for j in 0..k {
                g[j] = (dout[j] - dot) / s * inv_batch;
            }
            if from_logits {
                softmax_backward_row(&p, g);
            }
        }
    }
    Ok(total * inv_batch)
}

/// `ce` from logits: `-sum_c y_c log_softmax(z)_c`, gradient `p * sum(y) - y`, mean over the batch.
/// (TensorFlow's kernel returns `p - y`, the same when the labels sum to 1.)
fn cross_entropy_logits<T: Element>(
    label_smoothing: f64,
    y_true: &[T],
    logits: &[T],
    d: Dims,
    mut grad: Option<&mut [T]>,
) -> T {
    let k = d.classes;
    let inv_batch = T::one() / T::of(d.batch as f64);
    let y_all = smooth_labels(y_true, label_smoothing, k);
    let (mut logp, mut p, mut q) = (vec![T::zero(); k], vec![T::zero(); k], vec![T::zero(); k]);
    let mut suffix = vec![T::zero(); k];
    let mut total = T::zero();
    for row in 0..d.batch {
        let z = &logits[row * k..(row + 1) * k];
        let y = &y_all[row * k..(row + 1) * k];
        log_softmax_row(z, &mut logp, &mut p, &mut q);
        total += -y.iter().zip(&logp).map(|(&yc, &lc)| yc * lc).sum::<T>();
        if let Some(g) = grad.as_deref_mut() {
            let g = &mut g[row * k..(row + 1) * k];
            g.fill(T::zero());
            add_softmax_residual(&p, &q, y, inv_batch, &mut suffix, g);
        }
    }
    total * inv_batch
}
