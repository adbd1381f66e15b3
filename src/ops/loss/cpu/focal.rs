//! The focal family on the CPU: `focal`, `flsd-53` and `adafocal` (one path each from
//! probabilities and from logits, with a gamma per row from [`GammaBins`]), and `dual-focal`.
//! The formulas are in the parent module's documentation.

use super::{Dims, add_softmax_residual, clamp, clip_bounds, log_softmax_row, true_class};
use crate::Element;
use crate::loss::GammaBins;
use crate::ops::softmax::softmax_backward_row;

/// The focusing parameter of each row ([`GammaBins`] in `T`).
pub(super) struct RowGamma<T> {
    edges: Vec<T>,
    gammas: Vec<T>,
}

impl<T: Element> RowGamma<T> {
    pub(super) fn of(g: &GammaBins) -> Self {
        RowGamma {
            edges: g.edges.iter().map(|&e| T::of(e)).collect(),
            gammas: g.gammas.iter().map(|&v| T::of(v)).collect(),
        }
    }
    /// The modulating factor of a row whose labels are `y` and whose probabilities `p(c)`
    /// gives (the bin of its true class's, compared in `T`).
    fn of_row(&self, y: &[T], p: impl Fn(usize) -> T) -> Modulator<T> {
        let gamma = if self.edges.is_empty() {
            self.gammas[0]
        } else {
            let p_t = p(true_class(y));
            self.gammas[self.edges.partition_point(|&e| e <= p_t)]
        };
        Modulator::of(gamma)
    }
}

/// The factor `b^g` that multiplies `-log p`: focal `(1 - p)^gamma` for gamma >= 0, AdaFocal's
/// inverse focal `(1 + p)^|gamma|` below zero; `slope` is `db/dp` (-1 or +1).
#[derive(Clone, Copy)]
struct Modulator<T> {
    g: T,
    inverse: bool,
}

impl<T: Element> Modulator<T> {
    fn of(gamma: T) -> Self {
        Modulator {
            g: gamma.abs(),
            inverse: gamma < T::zero(),
        }
    }
    /// The base `b` for a class of probability `p` and complement `q = 1 - p` (from logits,
    /// q comes from `expm1`, more precise than `1 - p`).
    fn base(&self, p: T, q: T) -> T {
        if self.inverse { T::one() + p } else { q }
    }
    fn slope(&self) -> T {
        if self.inverse { T::one() } else { -T::one() }
    }
}

/// The signature both focal paths share: alpha per class, the row's gamma, l1, l2, labels,
/// predictions, shape, and the gradient to write.
pub(super) type FocalPath<T> =
    fn(&[T], &RowGamma<T>, T, T, &[T], &[T], Dims, Option<&mut [T]>) -> T;

/// The fused path from logits, or the clipped one on probabilities.
pub(super) fn focal_path<T: Element>(from_logits: bool) -> FocalPath<T> {
    if from_logits {
        focal_logits::<T>
    } else {
        focal_probs::<T>
    }
}

#[allow(clippy::too_many_arguments)]
fn focal_probs<T: Element>(
    alpha: &[T],
    row_gamma: &RowGamma<T>,
    l1: T,
    l2: T,
    y_true: &[T],
    pred: &[T],
    d: Dims,
    mut grad: Option<&mut [T]>,
) -> T {
    let (lo, hi) = clip_bounds::<T>();
    let inv_batch = T::one() / T::of(d.batch as f64);
    let two = T::of(2.0);
    let (mut focal, mut abs_sum, mut sq_sum) = (T::zero(), T::zero(), T::zero());
    for row in 0..d.batch {
        let row_range = row * d.classes..(row + 1) * d.classes;
        let m = row_gamma.of_row(&y_true[row_range], |c| {
            clamp(pred[row * d.classes + c], lo, hi)
        });
        let gamma = m.g;
        let mut row_sum = T::zero();
        for (c, &alpha_c) in alpha.iter().enumerate() {
            let i = row * d.classes + c;
            let x = pred[i];
            let y = y_true[i];
            let p = clamp(x, lo, hi);
            let q = T::one() - p;
            let b = m.base(p, q);
            let ln_p = p.ln();
            row_sum += -alpha_c * y * b.powf(gamma) * ln_p;
            abs_sum += p.abs();
            sq_sum += p * p;
            if let Some(g) = grad.as_deref_mut() {
                g[i] = if x < lo || x > hi {
                    // clip_by_value: no gradient strictly outside the bounds.
                    T::zero()
                } else {
                    // d/dp of -a*y*b^g*ln p (b = 1-p, or 1+p inverse); 1-p >= 1.2e-7 here,
                    // so b^(g-1) is finite.
                    let d_focal = -alpha_c
                        * y
                        * (b.powf(gamma) / p + m.slope() * gamma * b.powf(gamma - T::one()) * ln_p);
                    d_focal * inv_batch + l1 * p.signum() + two * l2 * p
                };
            }
        }
        focal += row_sum;
    }
    focal * inv_batch + l1 * abs_sum + l2 * sq_sum
}

/// Fused softmax + focal loss from logits, stable for any gamma >= 0 and any logit margin.
///
/// Per sample, with `log p = z - logsumexp(z)`, `q_c = 1 - p_c`:
/// `L = -sum_c a_c y_c q_c^g log p_c`. Using `d log p_c/dz_j = δ_cj - p_j` and
/// `d q_c/dz_j = -p_c (δ_cj - p_j)`:
///
/// `dL/dz_j = -sum_c a_c y_c (δ_cj - p_j) [q_c^g - g p_c q_c^(g-1) log p_c]`.
///
/// The second term has `q_c^(g-1)`, infinite for `g < 1` when the class is certain
/// (`q_c = 0`), times `log p_c = 0`. With `r_c = -log(p_c)/q_c` (→ 1 as `q_c → 0`;
/// `r = 1 + q/2 + q^2/3 + q^3/4 + ...` for tiny `q`) it is `q_c^(g-1) log p_c = -q_c^g r_c`,
/// so the bracket is `q_c^g (1 + g p_c r_c)`, a product of finite factors. With
/// `w_c = a_c y_c q_c^g (1 + g p_c r_c)` and `W = sum_c w_c`:
///
/// `dL/dz_j = p_j W - w_j` (evaluated as `p_j (W - w_j) - q_j w_j`, see
/// [`add_softmax_residual`], so that a confident sample's small gradient stays accurate).
///
/// A confidently wrong sample (`p_c → 0` for its true class) keeps `w_c ≈ a_c y_c`, so its
/// gradient stays large instead of vanishing as on the clipped probability path.
///
/// A negative gamma (AdaFocal's inverse focal, `b = 1 + p`, `db/dp = +1`) makes the bracket
/// `b^g + g p b^(g-1) log p = b^g (1 + g p log(p) / b)`, finite everywhere since `b >= 1`.
/// L1/L2 act on the un-clipped softmax probabilities, chained through the softmax Jacobian.
#[allow(clippy::too_many_arguments)]
fn focal_logits<T: Element>(
    alpha: &[T],
    row_gamma: &RowGamma<T>,
    l1: T,
    l2: T,
    y_true: &[T],
    logits: &[T],
    d: Dims,
    mut grad: Option<&mut [T]>,
) -> T {
    let k = d.classes;
    let inv_batch = T::one() / T::of(d.batch as f64);
    let two = T::of(2.0);
    let series_below = T::of(1e-4);
    let (mut logp, mut p, mut q, mut w) = (
        vec![T::zero(); k],
        vec![T::zero(); k],
        vec![T::zero(); k],
        vec![T::zero(); k],
    );
    let mut suffix = vec![T::zero(); k];
    let (mut focal, mut abs_sum, mut sq_sum) = (T::zero(), T::zero(), T::zero());
    for row in 0..d.batch {
        let z = &logits[row * k..(row + 1) * k];
        let y = &y_true[row * k..(row + 1) * k];
        log_softmax_row(z, &mut logp, &mut p, &mut q);
        let m = row_gamma.of_row(y, |c| p[c]);
        let gamma = m.g;
        let mut row_sum = T::zero();
        for c in 0..k {
            let (bg, bracket) = if m.inverse {
                let b = T::one() + p[c];
                (b.powf(gamma), T::one() + gamma * p[c] * logp[c] / b)
            } else {
                let r = if q[c] < series_below {
                    let qc = q[c];
                    T::one() + qc * (T::of(0.5) + qc * (T::of(1.0 / 3.0) + qc * T::of(0.25)))
                } else {
                    -logp[c] / q[c]
                };
                (q[c].powf(gamma), T::one() + gamma * p[c] * r)
            };
            row_sum += -alpha[c] * y[c] * bg * logp[c];
            abs_sum += p[c].abs();
            sq_sum += p[c] * p[c];
            w[c] = alpha[c] * y[c] * bg * bracket;
        }
        focal += row_sum;
        if let Some(g) = grad.as_deref_mut() {
            let g = &mut g[row * k..(row + 1) * k];
            // Gradient of the L1/L2 terms w.r.t. p, chained through the softmax.
            for j in 0..k {
                g[j] = l1 * p[j].signum() + two * l2 * p[j];
            }
            softmax_backward_row(&p, g);
            add_softmax_residual(&p, &q, &w, inv_batch, &mut suffix, g);
        }
    }
    focal * inv_batch + l1 * abs_sum + l2 * sq_sum
}

/// `dual-focal` (see the module documentation). Per row, with `k` the true class, `j` the
/// class of the largest `p_j < p_k`, `u = q_k + p_j` (`q_k = 1 - p_k`) and
/// `A = gamma u^(gamma-1) log p_k` (0 where `u = 0`: then `log p_k = 0` too):
/// from probabilities `dL/dp_k = A - u^gamma / p_k`, `dL/dp_j = -A`; from logits
/// `dL/dz_c = p_c (u^gamma - A p_k + A p_j) - [c = j] A p_j`, and for `c = k` the equal
/// `A p_k u - q_k u^gamma` (no cancellation when `p_k` is close to 1). Divided by the batch.
pub(super) fn dual_focal<T: Element>(
    gamma: T,
    from_logits: bool,
    y_true: &[T],
    pred: &[T],
    d: Dims,
    mut grad: Option<&mut [T]>,
) -> T {
    let k = d.classes;
    let (lo, hi) = clip_bounds::<T>();
    let inv_batch = T::one() / T::of(d.batch as f64);
    let (mut logp, mut p, mut q) = (vec![T::zero(); k], vec![T::zero(); k], vec![T::zero(); k]);
    let mut total = T::zero();
    for row in 0..d.batch {
        let x = &pred[row * k..(row + 1) * k];
        let t = true_class(&y_true[row * k..(row + 1) * k]);
        if from_logits {
            log_softmax_row(x, &mut logp, &mut p, &mut q);
        } else {
            for c in 0..k {
                p[c] = clamp(x[c], lo, hi);
            }
        }
        let (p_k, logp_k, q_k) = if from_logits {
            (p[t], logp[t], q[t])
        } else {
            (p[t], p[t].ln(), T::one() - p[t])
        };
        let mut j: Option<usize> = None;
        for c in 0..k {
            if p[c] < p_k && j.is_none_or(|j| p[c] > p[j]) {
                j = Some(c);
            }
        }
        let p_j = j.map_or(T::zero(), |j| p[j]);
        let u = q_k + p_j;
        let ug = u.powf(gamma);
        total += -ug * logp_k;
        let Some(g) = grad.as_deref_mut() else {
            continue;
        };
        let g = &mut g[row * k..(row + 1) * k];
        // A = g u^g (log p_k / u): u < 1 (p_j < p_k) and |log p_k| / u is at most about 1
        // where u is small (u >= q_k ~ -log p_k), so no factor overflows, unlike
        // u^(g-1) log p_k for g < 1 and a subnormal u (0 x inf at g = 0).
        let a = if u > T::zero() {
            gamma * ug * (logp_k / u)
        } else {
            T::zero()
        };
        for c in 0..k {
            let d = if from_logits {
                if c == t {
                    a * p_k * u - q_k * ug
                } else {
                    let jj = if Some(c) == j { a * p_j } else { T::zero() };
                    p[c] * (ug - a * p_k + a * p_j) - jj
                }
            } else if x[c] < lo || x[c] > hi {
                T::zero()
            } else if c == t {
                a - ug / p_k
            } else if Some(c) == j {
                -a
            } else {
                T::zero()
            };
            g[c] = d * inv_batch;
        }
    }
    total * inv_batch
}
