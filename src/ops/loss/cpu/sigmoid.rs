//! `sigmoid-focal` on the CPU (formula in the parent module's documentation).

use super::{Dims, clamp, clip_bounds};
use crate::Element;
use crate::ops::softmax::{sigmoid, softplus};

/// `sigmoid-focal` (see the module documentation). Per element, with `m = 1 - p_t =
/// p (1-y) + q y` (`q = 1 - p`) and `ce` the binary cross-entropy: the value is
/// `a_t ce m^g`; from probabilities `dL/dp = a_t (ce' m^g + g ce m^(g-1) (1 - 2y))` with
/// `ce' = -y/p + (1-y)/q`; from logits (`dp/dz = p q`)
/// `dL/dz = a_t m^g ((p (1-y) - q y) + g ce (1 - 2y) p q / m)`, where `p q / m <= 1` (m lies
/// between p and q) and the term is 0 where `m = 0` (a saturated, right answer). Divided by
/// batch x classes.
pub(super) fn sigmoid_focal<T: Element>(
    alpha: &[T],
    gamma: T,
    from_logits: bool,
    y_true: &[T],
    pred: &[T],
    d: Dims,
    mut grad: Option<&mut [T]>,
) -> T {
    let (lo, hi) = clip_bounds::<T>();
    let inv_n = T::one() / T::of((d.batch * d.classes) as f64);
    let mut total = T::zero();
    for (i, (&x, &y)) in pred.iter().zip(y_true).enumerate() {
        let a = alpha[i % d.classes];
        let a_t = if a < T::zero() {
            T::one()
        } else {
            a * y + (T::one() - a) * (T::one() - y)
        };
        let not_y = T::one() - y;
        let (p, q, ce) = if from_logits {
            let (p, q) = (sigmoid(x), sigmoid(-x));
            (p, q, y * softplus(-x) + not_y * softplus(x))
        } else {
            let p = clamp(x, lo, hi);
            let q = T::one() - p;
            (p, q, -(y * p.ln() + not_y * q.ln()))
        };
        let m = p * not_y + q * y;
        let mg = m.powf(gamma);
        total += a_t * ce * mg;
        let Some(g) = grad.as_deref_mut() else {
            continue;
        };
        let two_y = T::one() - y - y;
        g[i] = if from_logits {
            let focus = if m > T::zero() {
                gamma * ce * two_y * (p * q / m)
            } else {
                T::zero()
            };
            a_t * mg * ((p * not_y - q * y) + focus)
        } else if x < lo || x > hi {
            T::zero()
        } else {
            let dce = -y / p + not_y / q;
            a_t * (dce * mg + gamma * ce * m.powf(gamma - T::one()) * two_y)
        } * inv_n;
    }
    total * inv_n
}
