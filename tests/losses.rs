//! The losses checked independently of their implementation:
//! (a) values worked out by hand (formulas and numbers in the comments),
//! (b) central finite-difference gradient checks in f64 on random odd shapes for every loss
//!     and option, and the clip edges separately,
//! (c) stability of the from-logits paths at saturated logits, against the clipped path,
//! (d) every validation error.
//! tests/keras_losses.rs compares the same code with TensorFlow/Keras.

use focalflow::Error;
mod common;

use focalflow::loss::{AdaFocalSettings, Alpha, CLIP_EPSILON, GammaBins, LOSS_NAMES, LossConfig};
use focalflow::ops::loss::loss_forward_backward;

// ---------------------------------------------------------------- helpers

/// `|a - b| <= atol + rtol * |reference|`.
fn close(a: f64, reference: f64, atol: f64, rtol: f64) -> bool {
    (a - reference).abs() <= atol + rtol * reference.abs()
}

#[track_caller]
fn assert_close(a: f64, reference: f64, atol: f64, rtol: f64, what: &str) {
    assert!(
        close(a, reference, atol, rtol),
        "{what}: {a} vs {reference} (|diff| {:.3e} > {:.3e})",
        (a - reference).abs(),
        atol + rtol * reference.abs()
    );
}

fn loss_of<T: focalflow::Element>(cfg: &LossConfig, y: &[T], p: &[T], b: usize, k: usize) -> T {
    loss_forward_backward(cfg, y, p, b, k, None)
        .unwrap_or_else(|e| panic!("{}: {e}", cfg.describe()))
}

fn loss_grad<T: focalflow::Element>(
    cfg: &LossConfig,
    y: &[T],
    p: &[T],
    b: usize,
    k: usize,
) -> (T, Vec<T>) {
    let mut g = vec![T::nan(); y.len()];
    let l = loss_forward_backward(cfg, y, p, b, k, Some(&mut g))
        .unwrap_or_else(|e| panic!("{}: {e}", cfg.describe()));
    (l, g)
}

/// splitmix64: a small deterministic generator, so the tests need no RNG crate.
struct Rng(u64);
impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// One-hot labels, or with `soft` non-negative labels not summing to 1 (the losses must
/// not assume one-hot labels).
fn labels(rng: &mut Rng, b: usize, k: usize, soft: bool) -> Vec<f64> {
    let mut y = vec![0.0; b * k];
    for r in 0..b {
        if soft {
            for c in 0..k {
                y[r * k + c] = rng.uniform(0.0, 1.0);
            }
        } else {
            y[r * k + rng.below(k)] = 1.0;
        }
    }
    y
}

/// Probabilities kept away from the clip edges (so that a finite-difference step never
/// crosses one), and not normalised (so that the row-sum division of keras-focal/ce is
/// exercised): entries in [0.02, 0.98], and after division by a row sum of 5 entries
/// still in [0.005, 0.93].
fn probabilities(rng: &mut Rng, b: usize, k: usize) -> Vec<f64> {
    (0..b * k).map(|_| rng.uniform(0.02, 0.98)).collect()
}

fn logits(rng: &mut Rng, b: usize, k: usize) -> Vec<f64> {
    (0..b * k).map(|_| rng.uniform(-4.0, 4.0)).collect()
}

fn focal(alpha: Alpha, gamma: f64, l1: f64, l2: f64, from_logits: bool) -> LossConfig {
    LossConfig::Focal {
        alpha,
        gamma,
        l1,
        l2,
        from_logits,
    }
}
fn keras_focal(alpha: Alpha, gamma: f64, label_smoothing: f64, from_logits: bool) -> LossConfig {
    LossConfig::KerasFocal {
        alpha,
        gamma,
        label_smoothing,
        from_logits,
    }
}
fn ce(label_smoothing: f64, from_logits: bool) -> LossConfig {
    LossConfig::CrossEntropy {
        label_smoothing,
        from_logits,
    }
}
fn cmse(facture: f64, from_logits: bool) -> LossConfig {
    LossConfig::CalibratedMse {
        facture,
        from_logits,
    }
}
fn a(x: f64) -> Alpha {
    Alpha::Scalar(x)
}

// ---------------------------------------------------------------- (a) values by hand

// Tolerance for hand-worked values: the numbers below are printed to 16-17 significant
// digits from an f64 evaluation of the formula, and the code evaluates the same formula in
// f64 in another order: agreement to a few ulps, so rtol 1e-12.
const HAND_RTOL: f64 = 1e-12;

#[test]
fn focal_values_by_hand() {
    let cfg = LossConfig::default_focal(); // alpha 0.25, gamma 2
    // y=[1,0], p=[0.8,0.2]: only the true class counts:
    // 0.25 * (1-0.8)^2 * (-ln 0.8) = 0.25 * 0.04 * 0.2231435513142097 = 0.0022314355131420973
    let v = loss_of(&cfg, &[1.0, 0.0], &[0.8, 0.2], 1, 2);
    assert_close(v, 0.0022314355131420973, 0.0, HAND_RTOL, "focal 1x2");
    // Second sample y=[0,1], p=[0.6,0.4]: 0.25 * 0.6^2 * (-ln 0.4) = 0.08246616586867395;
    // mean over the batch of 2: (0.0022314355131420973 + 0.08246616586867395) / 2.
    let v = loss_of(&cfg, &[1.0, 0.0, 0.0, 1.0], &[0.8, 0.2, 0.6, 0.4], 2, 2);
    assert_close(v, 0.042348800690908024, 0.0, HAND_RTOL, "focal 2x2");
    // Alpha per class [0.1, 0.9], y=[0,1], p=[0.3,0.7]: 0.9 * 0.3^2 * (-ln 0.7) = 0.02889067045903733.
    let cfg = focal(Alpha::PerClass(vec![0.1, 0.9]), 2.0, 0.0, 0.0, false);
    assert_close(
        loss_of(&cfg, &[0.0, 1.0], &[0.3, 0.7], 1, 2),
        0.02889067045903733,
        0.0,
        HAND_RTOL,
        "alpha vector",
    );
    // gamma 0 is alpha-weighted cross-entropy: 0.25 * -ln 0.8.
    let cfg = focal(a(0.25), 0.0, 0.0, 0.0, false);
    assert_close(
        loss_of(&cfg, &[1.0, 0.0], &[0.8, 0.2], 1, 2),
        0.25 * 0.2231435513142097,
        0.0,
        HAND_RTOL,
        "gamma 0",
    );
}

#[test]
fn focal_l1_l2_grow_with_the_batch() {
    // l1 = 0.01, l2 = 0.02 on y=[1,0], p=[0.8,0.2]: focal 0.0022314355131420973
    // + 0.01 * (0.8 + 0.2) + 0.02 * (0.64 + 0.04) = 0.025831435513142098.
    let cfg = focal(a(0.25), 2.0, 0.01, 0.02, false);
    assert_close(
        loss_of(&cfg, &[1.0, 0.0], &[0.8, 0.2], 1, 2),
        0.025831435513142098,
        0.0,
        HAND_RTOL,
        "l1/l2 batch 1",
    );
    // The same sample three times: the focal mean is unchanged, the L1/L2 sums triple
    // (not divided by the batch, as in the original): 0.0022314355131420973 + 0.03 + 0.0408.
    let y = [1.0, 0.0].repeat(3);
    let p = [0.8, 0.2].repeat(3);
    assert_close(
        loss_of(&cfg, &y, &p, 3, 2),
        0.07303143551314209,
        0.0,
        HAND_RTOL,
        "l1/l2 batch 3",
    );
    // The L1/L2 gradients do not shrink with the batch either: d/dp0 = focal'/3 + 0.01 + 2*0.02*0.8.
    let (_, g) = loss_grad(&cfg, &y, &p, 3, 2);
    // focal' at p=0.8, y=1: -0.25 * ((0.2^2)/0.8 - 2*0.2*ln 0.8) = -0.034814355131420976.
    assert_close(
        g[0],
        -0.034814355131420976 / 3.0 + 0.01 + 0.032,
        0.0,
        HAND_RTOL,
        "l1/l2 grad p0",
    );
    assert_close(
        g[1],
        0.01 + 2.0 * 0.02 * 0.2,
        0.0,
        HAND_RTOL,
        "l1/l2 grad p1",
    );
}

#[test]
fn focal_clipped_value_by_hand() {
    // y=[0,1], p=[1,0] is clipped to [1-1e-7, 1e-7]:
    // 0.25 * (1 - 1e-7)^2 * (-ln 1e-7) = 4.029523106834838.
    let cfg = LossConfig::default_focal();
    assert_close(
        loss_of(&cfg, &[0.0, 1.0], &[1.0, 0.0], 1, 2),
        4.029523106834838,
        0.0,
        HAND_RTOL,
        "clipped",
    );
    // In f32 the bounds are 1e-7f32 and 0.99999988f32 (the f32 nearest 1-1e-7).
    let v = loss_of::<f32>(&cfg, &[0.0, 1.0], &[1.0, 0.0], 1, 2) as f64;
    let (lo, hi) = (1e-7f32 as f64, f32::from_bits(0x3F7F_FFFE) as f64); // hi = 1 - 2^-23 = 0.99999988
    assert_close(
        v,
        0.25 * (1.0 - lo) * (1.0 - lo) * -lo.ln(),
        0.0,
        1e-6,
        "clipped f32",
    );
    assert_eq!((1.0f64 - CLIP_EPSILON) as f32 as f64, hi);
}

#[test]
fn focal_from_logits_value_by_hand() {
    // z=[2,0]: p = e^2/(e^2+1) = 0.8807970779778824, q = 0.11920292202211757,
    // 0.25 * q^2 * (-ln p) = 0.0004508907088100941.
    let cfg = focal(a(0.25), 2.0, 0.0, 0.0, true);
    assert_close(
        loss_of(&cfg, &[1.0, 0.0], &[2.0, 0.0], 1, 2),
        0.0004508907088100941,
        0.0,
        HAND_RTOL,
        "focal logits",
    );
    // L1/L2 on the softmax probabilities: sum p = 1, sum p^2 = p^2 + q^2.
    let cfg = focal(a(0.25), 2.0, 0.5, 0.25, true);
    let (p, q) = (0.8807970779778824f64, 0.11920292202211757f64);
    let want = 0.0004508907088100941 + 0.5 + 0.25 * (p * p + q * q);
    assert_close(
        loss_of(&cfg, &[1.0, 0.0], &[2.0, 0.0], 1, 2),
        want,
        0.0,
        HAND_RTOL,
        "focal logits l1/l2",
    );
}

/// FLSD-53 by hand: gamma 5 for a sample whose true class has p < 0.2, 3 otherwise; the
/// same values from probabilities and from the logits whose softmax they are; gamma is a
/// constant of the sample in the gradient (dL/dp_t = -(1-p)^g/p + g (1-p)^(g-1) ln p).
#[test]
fn flsd_53_values_by_hand() {
    // Row 0: p_t = 0.1 (< 0.2: gamma 5); row 1: p_t = 0.7 (gamma 3).
    let y = [0.0, 1.0, 0.0, 1.0, 0.0, 0.0];
    let p = [0.6, 0.1, 0.3, 0.7, 0.2, 0.1];
    let term = |pt: f64, g: f64| -(1.0 - pt).powf(g) * pt.ln();
    let want = (term(0.1, 5.0) + term(0.7, 3.0)) / 2.0;
    let probs = LossConfig::Flsd53 { from_logits: false };
    assert_close(
        loss_of(&probs, &y, &p, 2, 3),
        want,
        1e-15,
        1e-13,
        "flsd-53 on probabilities",
    );
    let (_, g) = loss_grad(&probs, &y, &p, 2, 3);
    let dp = |pt: f64, gm: f64| {
        (-(1.0 - pt).powf(gm) / pt + gm * (1.0 - pt).powf(gm - 1.0) * pt.ln()) / 2.0
    };
    assert_close(
        g[1],
        dp(0.1, 5.0),
        1e-15,
        1e-12,
        "flsd-53 gradient, gamma 5",
    );
    assert_close(
        g[3],
        dp(0.7, 3.0),
        1e-15,
        1e-12,
        "flsd-53 gradient, gamma 3",
    );
    assert_eq!((g[0], g[2], g[4], g[5]), (0.0, 0.0, 0.0, 0.0));
    let logits: Vec<f64> = p.iter().map(|v: &f64| v.ln()).collect();
    let fused = LossConfig::Flsd53 { from_logits: true };
    assert_close(
        loss_of(&fused, &y, &logits, 2, 3),
        want,
        1e-15,
        1e-12,
        "flsd-53 from logits",
    );
    // Against focal with alpha 1 and the row's gamma, row by row.
    for (row, gamma) in [(0, 5.0), (1, 3.0)] {
        let r = row * 3..row * 3 + 3;
        let focal_row = focal(a(1.0), gamma, 0.0, 0.0, true);
        let flsd_row = loss_of(&fused, &y[r.clone()], &logits[r.clone()], 1, 3);
        assert_close(
            flsd_row,
            loss_of(&focal_row, &y[r.clone()], &logits[r], 1, 3),
            1e-15,
            1e-13,
            "flsd-53 = focal(g)",
        );
    }
    assert!(
        LossConfig::Flsd53 { from_logits: true }
            .describe()
            .starts_with("flsd-53(gamma=5 where p_t<0.2, else 3")
    );
}

/// adafocal by hand: the gamma of the bin holding p_t (edge 0.5): row 0 p_t = 0.3 takes the
/// inverse focal gamma -1, `-(1 + p)^1 ln p`, row 1 p_t = 0.6 focal gamma 2; the gradient
/// `-(b^g/p + b' g b^(g-1) ln p)` with `b' = +1` inverse, `-1` focal; the same from logits.
#[test]
fn adafocal_values_by_hand() {
    let y = [0.0, 1.0, 0.0, 1.0, 0.0, 0.0];
    let p = [0.6, 0.3, 0.1, 0.6, 0.3, 0.1];
    let bins = GammaBins {
        edges: vec![0.5],
        gammas: vec![-1.0, 2.0],
    };
    let cfg = |from_logits| LossConfig::AdaFocal {
        settings: AdaFocalSettings::default(),
        bins: bins.clone(),
        from_logits,
    };
    let want = (-(1.3f64) * 0.3f64.ln() - 0.4f64.powi(2) * 0.6f64.ln()) / 2.0;
    assert_close(
        loss_of(&cfg(false), &y, &p, 2, 3),
        want,
        1e-15,
        1e-13,
        "adafocal",
    );
    let (_, g) = loss_grad(&cfg(false), &y, &p, 2, 3);
    assert_close(
        g[1],
        -(1.3 / 0.3 + 0.3f64.ln()) / 2.0,
        1e-15,
        1e-12,
        "inverse dL/dp",
    );
    assert_close(
        g[3],
        -(0.4f64.powi(2) / 0.6 - 2.0 * 0.4 * 0.6f64.ln()) / 2.0,
        1e-15,
        1e-12,
        "focal dL/dp",
    );
    let logits: Vec<f64> = p.iter().map(|v: &f64| v.ln()).collect();
    assert_close(
        loss_of(&cfg(true), &y, &logits, 2, 3),
        want,
        1e-15,
        1e-12,
        "from logits",
    );
    // Every bin at gamma 2 is focal with alpha 1, gamma 2.
    let flat = LossConfig::AdaFocal {
        settings: AdaFocalSettings::default(),
        bins: GammaBins::uniform(15, 2.0),
        from_logits: true,
    };
    let (v, gf) = loss_grad(&flat, &y, &logits, 2, 3);
    let (w, gw) = loss_grad(&focal(a(1.0), 2.0, 0.0, 0.0, true), &y, &logits, 2, 3);
    assert_close(v, w, 0.0, 0.0, "uniform bins = focal");
    assert_eq!(gf, gw);
}

/// sigmoid-focal by hand (torchvision's formula): element (y=1, p=.8) costs
/// `.25 * -ln .8 * .2^2`, (y=0, p=.3) `.75 * -ln .7 * .3^2`, mean over the two; the gradient
/// `a_t (ce' m^g + g ce m^(g-1) (1-2y))` with `ce' = -y/p + (1-y)/(1-p)`, `m = 1 - p_t`; from
/// logits the same value, and the gradient times `p (1 - p)`; saturated logits stay finite.
#[test]
fn sigmoid_focal_values_by_hand() {
    let cfg = |from_logits| LossConfig::SigmoidFocal {
        alpha: a(0.25),
        gamma: 2.0,
        from_logits,
    };
    let (y, p) = ([1.0, 0.0], [0.8, 0.3]);
    let want = (0.25 * -(0.8f64.ln()) * 0.04 + 0.75 * -(0.7f64.ln()) * 0.09) / 2.0;
    let (v, g) = loss_grad(&cfg(false), &y, &p, 1, 2);
    assert_close(v, want, 1e-15, 1e-13, "sigmoid-focal");
    // (1 - 2y) = -1 for y = 1.
    let g0 = 0.25 * (-1.25 * 0.04 - 2.0 * -(0.8f64.ln()) * 0.2) / 2.0;
    let g1 = 0.75 * (1.0 / 0.7 * 0.09 + 2.0 * -(0.7f64.ln()) * 0.3) / 2.0;
    assert_close(g[0], g0, 1e-15, 1e-12, "dL/dp, y = 1");
    assert_close(g[1], g1, 1e-15, 1e-12, "dL/dp, y = 0");
    let z: Vec<f64> = p.iter().map(|&v: &f64| (v / (1.0 - v)).ln()).collect();
    let (vz, gz) = loss_grad(&cfg(true), &y, &z, 1, 2);
    assert_close(vz, want, 1e-15, 1e-12, "from logits");
    assert_close(gz[0], g0 * 0.8 * 0.2, 1e-15, 1e-12, "dL/dz, y = 1");
    assert_close(gz[1], g1 * 0.3 * 0.7, 1e-15, 1e-12, "dL/dz, y = 0");
    // alpha < 0: no weighting (torchvision's alpha = -1).
    let off = LossConfig::SigmoidFocal {
        alpha: a(-1.0),
        gamma: 2.0,
        from_logits: false,
    };
    let unweighted = (-(0.8f64.ln()) * 0.04 + -(0.7f64.ln()) * 0.09) / 2.0;
    assert_close(
        loss_of(&off, &y, &p, 1, 2),
        unweighted,
        1e-15,
        1e-13,
        "alpha off",
    );
    // Saturated logits, right and wrong, in f32: finite values and gradients.
    let y32 = [1.0f32, 0.0, 1.0, 0.0];
    let z32 = [100.0f32, -100.0, -100.0, 100.0];
    for gamma in [0.0, 0.5, 2.0] {
        let c = LossConfig::SigmoidFocal {
            alpha: a(0.25),
            gamma,
            from_logits: true,
        };
        let mut g = vec![0f32; 4];
        let v = loss_forward_backward(&c, &y32, &z32, 2, 2, Some(&mut g)).unwrap();
        assert!(
            v.is_finite() && g.iter().all(|x| x.is_finite()),
            "gamma {gamma}: {v} {g:?}"
        );
        // The wrong ones cost about alpha_t * 100 each, over 4 elements.
        assert!(
            (v - (0.25 * 100.0 + 0.75 * 100.0) / 4.0).abs() < 1e-3,
            "{v}"
        );
    }
}

/// dual-focal by hand: `-(1 - p_k + p_j)^g log p_k` with `p_j` the largest probability below
/// the true class's (row 0: 0.3 below 0.6; row 1: the true class is the smallest, so
/// p_j = 0), and the gradient through both.
#[test]
fn dual_focal_values_by_hand() {
    let y = [1.0, 0.0, 0.0, 0.0, 0.0, 1.0];
    let p = [0.6, 0.1, 0.3, 0.5, 0.4, 0.1];
    let g = 2.0;
    let row = |pk: f64, pj: f64| -(1.0 - pk + pj).powf(g) * pk.ln();
    let want = (row(0.6, 0.3) + row(0.1, 0.0)) / 2.0;
    let cfg = LossConfig::DualFocal {
        gamma: g,
        from_logits: false,
    };
    assert_close(
        loss_of(&cfg, &y, &p, 2, 3),
        want,
        1e-15,
        1e-13,
        "dual-focal",
    );
    let (_, grad) = loss_grad(&cfg, &y, &p, 2, 3);
    // Row 0: u = 0.7; dL/dp_k = g u^(g-1) ln p_k - u^g / p_k, dL/dp_j = -g u^(g-1) ln p_k.
    let (u, a) = (0.7f64, 2.0 * 0.7 * 0.6f64.ln());
    assert_close(
        grad[0],
        (a - u * u / 0.6) / 2.0,
        1e-15,
        1e-12,
        "dual-focal dL/dp_k",
    );
    assert_close(grad[2], -a / 2.0, 1e-15, 1e-12, "dual-focal dL/dp_j");
    assert_eq!(grad[1], 0.0);
    // Row 1: no class below p_k, so only p_k's own term.
    let a1 = 2.0 * 0.9 * 0.1f64.ln();
    assert_close(
        grad[5],
        (a1 - 0.81 / 0.1) / 2.0,
        1e-15,
        1e-12,
        "dual-focal, no p_j",
    );
    assert_eq!((grad[3], grad[4]), (0.0, 0.0));
    // From the logits whose softmax these are: the same value.
    let logits: Vec<f64> = p.iter().map(|v: &f64| v.ln()).collect();
    let fused = LossConfig::DualFocal {
        gamma: g,
        from_logits: true,
    };
    assert_close(
        loss_of(&fused, &y, &logits, 2, 3),
        want,
        1e-15,
        1e-12,
        "dual-focal from logits",
    );
}

#[test]
fn calibrated_mse_values_by_hand() {
    // y=[1,0], p=[0.8,0.2]: mean((y-p)^2) = (0.04+0.04)/2 = 0.04,
    // mean((0.5-p)^2) = (0.09+0.09)/2 = 0.09; 0.04 + 0.1*0.09 = 0.049.
    assert_close(
        loss_of(
            &LossConfig::default_calibrated_mse(),
            &[1.0, 0.0],
            &[0.8, 0.2],
            1,
            2,
        ),
        0.049,
        0.0,
        HAND_RTOL,
        "cmse",
    );
    // facture 0.5 on a 2x2 batch, second sample y=[0,1], p=[0.5,0.5]:
    // mean((y-p)^2) = (0.04+0.04+0.25+0.25)/4 = 0.145; mean((0.5-p)^2) = (0.09+0.09+0+0)/4 = 0.045;
    // 0.145 + 0.5*0.045 = 0.1675.
    let v = loss_of(
        &cmse(0.5, false),
        &[1.0, 0.0, 0.0, 1.0],
        &[0.8, 0.2, 0.5, 0.5],
        2,
        2,
    );
    assert_close(v, 0.1675, 0.0, HAND_RTOL, "cmse 2x2");
    // From logits z=[ln 4, 0]: softmax = [0.8, 0.2], so 0.049 again.
    assert_close(
        loss_of(&cmse(0.1, true), &[1.0, 0.0], &[4f64.ln(), 0.0], 1, 2),
        0.049,
        0.0,
        HAND_RTOL,
        "cmse logits",
    );
}

#[test]
fn keras_focal_values_by_hand() {
    let cfg = LossConfig::default_keras_focal();
    // Row sum 1: same as focal, 0.0022314355131420973.
    assert_close(
        loss_of(&cfg, &[1.0, 0.0], &[0.8, 0.2], 1, 2),
        0.0022314355131420973,
        0.0,
        HAND_RTOL,
        "kf",
    );
    // Keras divides by the row sum first: [1.6, 0.4] -> [0.8, 0.2], same value
    // (the practitioner's focal would clip 1.6 instead).
    assert_close(
        loss_of(&cfg, &[1.0, 0.0], &[1.6, 0.4], 1, 2),
        0.0022314355131420973,
        0.0,
        HAND_RTOL,
        "kf normalised",
    );
    // Label smoothing 0.2 over 2 classes: y = [1*0.8 + 0.1, 0.1] = [0.9, 0.1];
    // 0.25 * (0.2^2 * 0.9 * (-ln 0.8) + 0.8^2 * 0.1 * (-ln 0.2)) = 0.027759298560773492.
    let cfg = keras_focal(a(0.25), 2.0, 0.2, false);
    assert_close(
        loss_of(&cfg, &[1.0, 0.0], &[0.8, 0.2], 1, 2),
        0.027759298560773492,
        0.0,
        HAND_RTOL,
        "kf smoothing",
    );
    // From logits z=[ln 4, 0] -> [0.8, 0.2]: same.
    let cfg = keras_focal(a(0.25), 2.0, 0.2, true);
    assert_close(
        loss_of(&cfg, &[1.0, 0.0], &[4f64.ln(), 0.0], 1, 2),
        0.027759298560773492,
        0.0,
        HAND_RTOL,
        "kf logits",
    );
    // Alpha per class [0.1, 0.9] (our extension): 0.1 * 0.2^2 * 0.9 * (-ln 0.8) + 0.9 * 0.8^2 * 0.1 * (-ln 0.2).
    let cfg = keras_focal(Alpha::PerClass(vec![0.1, 0.9]), 2.0, 0.2, false);
    let want = 0.1 * 0.04 * 0.9 * 0.2231435513142097 + 0.9 * 0.64 * 0.1 * 1.6094379124341003;
    assert_close(
        loss_of(&cfg, &[1.0, 0.0], &[0.8, 0.2], 1, 2),
        want,
        0.0,
        HAND_RTOL,
        "kf alpha vector",
    );
}

#[test]
fn cross_entropy_values_by_hand() {
    let cfg = LossConfig::default_cross_entropy();
    // -ln 0.8 = 0.2231435513142097, also for the un-normalised [0.4, 0.1].
    assert_close(
        loss_of(&cfg, &[1.0, 0.0], &[0.8, 0.2], 1, 2),
        0.2231435513142097,
        0.0,
        HAND_RTOL,
        "ce",
    );
    assert_close(
        loss_of(&cfg, &[1.0, 0.0], &[0.4, 0.1], 1, 2),
        0.2231435513142097,
        0.0,
        HAND_RTOL,
        "ce normalised",
    );
    // Smoothing 0.2: -(0.9 ln 0.8 + 0.1 ln 0.2) = 0.3617729874261988; from logits z=[ln 4, 0] too.
    assert_close(
        loss_of(&ce(0.2, false), &[1.0, 0.0], &[0.8, 0.2], 1, 2),
        0.3617729874261988,
        0.0,
        HAND_RTOL,
        "ce smooth",
    );
    assert_close(
        loss_of(&ce(0.2, true), &[1.0, 0.0], &[4f64.ln(), 0.0], 1, 2),
        0.3617729874261988,
        0.0,
        HAND_RTOL,
        "ce smooth logits",
    );
    // Mean over a batch of 2: (-ln 0.8 - ln 0.5) / 2.
    let v = loss_of(&cfg, &[1.0, 0.0, 0.0, 1.0], &[0.8, 0.2, 0.5, 0.5], 2, 2);
    assert_close(
        v,
        (0.2231435513142097 + std::f64::consts::LN_2) / 2.0,
        0.0,
        HAND_RTOL,
        "ce batch 2",
    );
    // Gradient from logits: (p * sum(y) - y) / batch = [0.8 - 1, 0.2].
    let (_, g) = loss_grad(&ce(0.0, true), &[1.0, 0.0], &[4f64.ln(), 0.0], 1, 2);
    assert_close(g[0], -0.2, 1e-15, HAND_RTOL, "ce logits grad 0");
    assert_close(g[1], 0.2, 1e-15, HAND_RTOL, "ce logits grad 1");
}

// ---------------------------------------------------------------- (b) finite differences

// Central differences in f64 with step h: the truncation error is h^2/6 * |f'''| and the
// rounding error about eps*|f|/h. With h = 1e-6 and the probabilities kept in [0.02, 0.98]
// (|f'''| <~ 2*alpha/p^3 ~ 1e5 for focal, |f| < 20), both are below 1e-8; for logits in
// [-4, 4] (smooth, |f'''| < 10) likewise. The tolerance, atol 1e-7 + rtol 1e-6, is 10x that
// bound and still catches any real mistake (a wrong term changes the gradient at the 1e-2 level).
const FD_H: f64 = 1e-6;
const FD_ATOL: f64 = 1e-7;
const FD_RTOL: f64 = 1e-6;

fn fd_check(cfg: &LossConfig, y: &[f64], x: &[f64], b: usize, k: usize) -> f64 {
    let (l, g) = loss_grad(cfg, y, x, b, k);
    assert_eq!(
        l.to_bits(),
        loss_of(cfg, y, x, b, k).to_bits(),
        "{}: loss differs with/without grad",
        cfg.describe()
    );
    let mut xs = x.to_vec();
    let mut worst = 0f64;
    for i in 0..x.len() {
        xs[i] = x[i] + FD_H;
        let up = loss_of(cfg, y, &xs, b, k);
        xs[i] = x[i] - FD_H;
        let down = loss_of(cfg, y, &xs, b, k);
        xs[i] = x[i];
        let numeric = (up - down) / (2.0 * FD_H);
        assert!(
            close(g[i], numeric, FD_ATOL, FD_RTOL),
            "{} [{b}x{k}] element ({}, {}): analytic {} vs finite difference {}",
            cfg.describe(),
            i / k,
            i % k,
            g[i],
            numeric
        );
        worst = worst.max((g[i] - numeric).abs() / (FD_ATOL + FD_RTOL * numeric.abs()));
    }
    worst
}

fn all_configs(classes: usize) -> Vec<LossConfig> {
    let per_class = Alpha::PerClass(
        (0..classes)
            .map(|c| 0.1 + 0.8 * c as f64 / classes as f64)
            .collect(),
    );
    let mut out = Vec::new();
    for from_logits in [false, true] {
        out.extend([
            focal(a(0.25), 2.0, 0.0, 0.0, from_logits),
            focal(per_class.clone(), 2.0, 0.0, 0.0, from_logits),
            focal(a(0.6), 0.0, 0.0, 0.0, from_logits),
            focal(a(0.6), 0.5, 0.0, 0.0, from_logits),
            focal(a(0.4), 3.0, 0.0, 0.0, from_logits),
            focal(per_class.clone(), 1.5, 0.01, 0.02, from_logits),
            cmse(0.1, from_logits),
            cmse(0.7, from_logits),
            cmse(0.0, from_logits),
            keras_focal(a(0.25), 2.0, 0.0, from_logits),
            keras_focal(per_class.clone(), 2.0, 0.0, from_logits),
            keras_focal(a(0.5), 0.5, 0.1, from_logits),
            keras_focal(a(0.25), 0.0, 0.3, from_logits),
            ce(0.0, from_logits),
            ce(0.1, from_logits),
            ce(1.0, from_logits),
            LossConfig::Flsd53 { from_logits },
            LossConfig::DualFocal {
                gamma: 5.0,
                from_logits,
            },
            LossConfig::DualFocal {
                gamma: 0.5,
                from_logits,
            },
            LossConfig::SigmoidFocal {
                alpha: Alpha::Scalar(-1.0),
                gamma: 0.0,
                from_logits,
            },
        ]);
        out.extend(common::loss_configs::calibration_losses(
            classes,
            from_logits,
        ));
    }
    out
}

#[test]
fn finite_difference_gradients_of_every_loss_and_option() {
    let mut rng = Rng(0x5EED_1055);
    let mut checked = 0;
    let mut worst = 0f64;
    for b in [1, 3, 7] {
        for k in [2, 5] {
            for cfg in all_configs(k) {
                for soft in [false, true] {
                    let y = labels(&mut rng, b, k, soft);
                    let x = if cfg.from_logits() {
                        logits(&mut rng, b, k)
                    } else {
                        probabilities(&mut rng, b, k)
                    };
                    worst = worst.max(fd_check(&cfg, &y, &x, b, k));
                    checked += 1;
                }
            }
        }
    }
    eprintln!("{checked} finite-difference checks; worst error {worst:.3} of the tolerance");
    // Every loss name and both input kinds were covered.
    for name in LOSS_NAMES {
        assert!(all_configs(2).iter().any(|c| c.cli_name() == name));
    }
}

#[test]
fn fused_focal_from_logits_equals_focal_on_the_softmax() {
    // Where no clipping happens, the fused path must equal the probability path applied to
    // softmax(z), and its gradient the probability gradient chained through the softmax
    // Jacobian dz_j = p_j (g_j - sum_c p_c g_c): two different derivations, equal to rounding.
    let mut rng = Rng(77);
    let (b, k) = (3, 5);
    for cfg_p in [
        focal(a(0.3), 2.0, 0.01, 0.02, false),
        focal(a(0.7), 0.5, 0.0, 0.0, false),
    ] {
        let LossConfig::Focal {
            alpha,
            gamma,
            l1,
            l2,
            ..
        } = cfg_p.clone()
        else {
            unreachable!()
        };
        let cfg_z = focal(alpha, gamma, l1, l2, true);
        let y = labels(&mut rng, b, k, true);
        let z = logits(&mut rng, b, k);
        let mut p = vec![0.0; b * k];
        for r in 0..b {
            let row = &z[r * k..(r + 1) * k];
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = row.iter().map(|v| (v - m).exp()).sum();
            for c in 0..k {
                p[r * k + c] = (row[c] - m).exp() / s;
            }
        }
        let (lp, gp) = loss_grad(&cfg_p, &y, &p, b, k);
        let (lz, gz) = loss_grad(&cfg_z, &y, &z, b, k);
        assert_close(lz, lp, 0.0, 1e-12, "fused loss");
        for r in 0..b {
            let dot: f64 = (0..k).map(|c| p[r * k + c] * gp[r * k + c]).sum();
            for j in 0..k {
                let chained = p[r * k + j] * (gp[r * k + j] - dot);
                assert_close(gz[r * k + j], chained, 1e-13, 1e-9, "fused gradient");
            }
        }
    }
}

/// The clip edges, in f64 and f32: exactly at a bound the gradient passes (TF's
/// clip_by_value), strictly beyond it is zero, for the focal term and the L1/L2 terms.
#[test]
fn focal_gradient_at_and_beyond_the_clip_bounds() {
    fn check<T: focalflow::Element>() {
        let lo = T::of(CLIP_EPSILON);
        let hi = T::of(1.0 - CLIP_EPSILON);
        let cfg = focal(a(0.25), 2.0, 0.01, 0.02, false);
        let formula = |p: f64, y: f64| {
            // d/dp of -0.25*y*(1-p)^2*ln p, batch 1, plus l1 + 2*l2*p.
            -0.25 * y * ((1.0 - p).powi(2) / p - 2.0 * (1.0 - p) * p.ln()) + 0.01 + 0.04 * p
        };
        // At the bounds: [lo, hi] with either label.
        for y in [[1.0, 0.0], [0.0, 1.0]] {
            let yt = [T::of(y[0]), T::of(y[1])];
            let (_, g) = loss_grad(&cfg, &yt, &[lo, hi], 1, 2);
            assert_close(g[0].f64(), formula(lo.f64(), y[0]), 0.0, 1e-5, "grad at lo");
            assert_close(g[1].f64(), formula(hi.f64(), y[1]), 0.0, 1e-5, "grad at hi");
            assert!(g[0] != T::zero() && g[1] != T::zero());
        }
        // Beyond: 0, 1, slightly beyond each bound, and far outside [0, 1].
        let below = T::of(CLIP_EPSILON) * T::of(0.5);
        let above = T::one() - (T::one() - hi) * T::of(0.5);
        assert!(above > hi && above < T::one());
        for pair in [
            [T::zero(), T::one()],
            [below, above],
            [T::of(-0.5), T::of(1.5)],
        ] {
            for y in [[1.0, 0.0], [0.0, 1.0]] {
                let yt = [T::of(y[0]), T::of(y[1])];
                let (l, g) = loss_grad(&cfg, &yt, &pair, 1, 2);
                assert!(l.is_finite());
                assert_eq!(
                    (g[0], g[1]),
                    (T::zero(), T::zero()),
                    "{pair:?} must get no gradient, L1/L2 included"
                );
            }
        }
    }
    check::<f64>();
    check::<f32>();
    // The f32 upper bound is 0.99999988: 0.99999994 (the next f32) is already clipped.
    let (_, g) = loss_grad::<f32>(
        &LossConfig::default_focal(),
        &[0.0, 1.0],
        &[0.99999994, 0.00000006],
        1,
        2,
    );
    assert_eq!(g, vec![0.0, 0.0]);
}

/// keras-focal and ce clip after the row normalisation: a row [1, 0] is clipped on both
/// entries (no gradient), a row inside the bounds is not.
#[test]
fn keras_paths_clip_after_normalisation() {
    for cfg in [
        LossConfig::default_keras_focal(),
        LossConfig::default_cross_entropy(),
    ] {
        let (l, g) = loss_grad::<f64>(&cfg, &[0.0, 1.0, 1.0, 0.0], &[2.0, 0.0, 0.3, 0.3], 2, 2);
        assert!(l.is_finite());
        assert_eq!((g[0], g[1]), (0.0, 0.0), "{}: clipped row", cfg.describe());
        assert!(
            g[2] != 0.0 && g[3] != 0.0,
            "{}: row inside the bounds",
            cfg.describe()
        );
        // Scaling a row does not change the loss, so the gradient is orthogonal to the row.
        assert!((g[2] * 0.3 + g[3] * 0.3).abs() < 1e-15);
    }
}

// ---------------------------------------------------------------- (c) from-logits stability

/// gamma 0.5 and 0, logit margins 50 and 200, both signs (confidently right and confidently
/// wrong), in f32 and f64: the fused path gives a finite loss and gradient, and the
/// confidently wrong sample keeps a gradient of about alpha/batch per logit.
#[test]
fn focal_from_logits_is_stable_at_saturated_logits() {
    fn check<T: focalflow::Element>() {
        for gamma in [0.5, 0.0, 2.0] {
            for margin in [50.0, 200.0] {
                for sign in [1.0, -1.0] {
                    let alpha = 0.25;
                    let cfg = focal(a(alpha), gamma, 0.0, 0.0, true);
                    // Sample 0: true class 0, logit margin +-margin; sample 1: moderate.
                    let y = [1.0, 0.0, 0.0, 1.0].map(T::of);
                    let z = [sign * margin, 0.0, 0.3, -0.2].map(T::of);
                    let (l, g) = loss_grad(&cfg, &y, &z, 2, 2);
                    let what = format!("gamma {gamma}, margin {}", sign * margin);
                    assert!(
                        l.is_finite() && g.iter().all(|v| v.is_finite()),
                        "{what}: {l} {g:?}"
                    );
                    if sign < 0.0 {
                        // Confidently wrong: dL/dz_true = -(alpha * (1-p)^gamma ...)/batch ~ -alpha/2.
                        assert!(
                            g[0].f64() < -0.9 * alpha / 2.0,
                            "{what}: gradient {:?} should stay large",
                            g
                        );
                        assert!(g[1].f64() > 0.9 * alpha / 2.0, "{what}: gradient {:?}", g);
                        // And the loss is about alpha * margin / batch.
                        assert_close(l.f64(), alpha * margin / 2.0, 0.0, 0.05, &what);
                    } else {
                        // Confidently right: a tiny, non-positive push on the true logit.
                        assert!(g[0].f64() <= 0.0 && g[0].f64() > -1e-6, "{what}: {g:?}");
                    }
                }
            }
        }
    }
    check::<f32>();
    check::<f64>();
}

/// The trap of the original (probability) focal loss in f32: a softmax output of
/// 0.99999994 for the wrong class is clipped and the sample gets no gradient at all, while
/// the same sample given as logits (margin 17, where the f32 softmax already rounds to
/// 0.99999994) still gets a large one.
#[test]
fn confidently_wrong_sample_probabilities_vs_logits() {
    let y = [1.0f32, 0.0];
    let (_, g) = loss_grad::<f32>(
        &LossConfig::default_focal(),
        &y,
        &[0.00000006, 0.99999994],
        1,
        2,
    );
    assert_eq!(g, vec![0.0, 0.0], "clipped: no gradient");
    let z = [0.0f32, 17.0];
    let p1 = 1.0f32 / (1.0 + (-17.0f32).exp());
    assert!(
        p1 >= 0.99999994,
        "margin 17 saturates the f32 softmax ({p1})"
    );
    let (_, g) = loss_grad::<f32>(&focal(a(0.25), 2.0, 0.0, 0.0, true), &y, &z, 1, 2);
    assert!(
        g[0] < -0.24 && g[1] > 0.24,
        "from logits the sample still teaches: {g:?}"
    );
}

#[test]
fn every_logits_path_is_finite_at_saturated_logits() {
    for cfg in all_configs(3).into_iter().filter(|c| c.from_logits()) {
        for margin in [50.0, 200.0, 1e4] {
            let y = [1.0, 0.0, 0.0, 0.0, 0.0, 1.0];
            let z = [margin, 0.0, -margin, margin, -margin, 0.0];
            let (l, g) = loss_grad::<f32>(&cfg, &y.map(|v| v as f32), &z.map(|v| v as f32), 2, 3);
            assert!(
                l.is_finite() && g.iter().all(|v| v.is_finite()),
                "{} margin {margin}: {l} {g:?}",
                cfg.describe()
            );
            let (l, g) = loss_grad::<f64>(&cfg, &y, &z, 2, 3);
            assert!(
                l.is_finite() && g.iter().all(|v| v.is_finite()),
                "{} margin {margin}: {l} {g:?}",
                cfg.describe()
            );
        }
    }
}

// ---------------------------------------------------------------- (d) validation

#[track_caller]
fn invalid(cfg: &LossConfig, classes: usize, want: &str) {
    let y = vec![0.5; 2 * classes];
    let err = loss_forward_backward::<f64>(cfg, &y, &y, 2, classes, None).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(want), "{msg:?} should contain {want:?}");
    assert!(!msg.contains('\n'));
}

#[test]
fn parameter_errors() {
    invalid(
        &focal(a(0.25), -1.0, 0.0, 0.0, false),
        2,
        "--gamma must be a finite number >= 0, got -1",
    );
    invalid(
        &focal(a(0.25), f64::NAN, 0.0, 0.0, false),
        2,
        "--gamma must be a finite number >= 0, got NaN",
    );
    invalid(
        &keras_focal(a(0.25), f64::INFINITY, 0.0, false),
        2,
        "--gamma must be a finite number >= 0, got inf",
    );
    invalid(
        &focal(a(1.5), 2.0, 0.0, 0.0, false),
        2,
        "--alpha must be in [0, 1], got 1.5",
    );
    invalid(
        &keras_focal(a(-0.1), 2.0, 0.0, false),
        2,
        "--alpha must be in [0, 1], got -0.1",
    );
    invalid(
        &focal(a(f64::NAN), 2.0, 0.0, 0.0, false),
        2,
        "--alpha must be in [0, 1], got NaN",
    );
    invalid(
        &focal(Alpha::PerClass(vec![0.5, 2.0]), 2.0, 0.0, 0.0, false),
        2,
        "--alpha (class 1) must be in [0, 1], got 2",
    );
    invalid(
        &focal(Alpha::PerClass(vec![0.5, 0.5, 0.5]), 2.0, 0.0, 0.0, false),
        2,
        "--alpha has 3 values but the data has 2 classes",
    );
    invalid(
        &keras_focal(Alpha::PerClass(vec![0.5]), 2.0, 0.0, true),
        5,
        "--alpha has 1 values but the data has 5 classes",
    );
    invalid(
        &focal(Alpha::PerClass(vec![]), 2.0, 0.0, 0.0, false),
        2,
        "list is empty",
    );
    invalid(
        &focal(a(0.25), 2.0, -0.1, 0.0, false),
        2,
        "--l1 must be a finite number >= 0, got -0.1",
    );
    invalid(
        &focal(a(0.25), 2.0, 0.0, f64::INFINITY, false),
        2,
        "--l2 must be a finite number >= 0, got inf",
    );
    invalid(
        &cmse(-1.0, false),
        2,
        "--facture must be a finite number >= 0, got -1",
    );
    invalid(
        &cmse(f64::NAN, true),
        2,
        "--facture must be a finite number >= 0, got NaN",
    );
    invalid(
        &ce(1.5, false),
        2,
        "--label-smoothing must be in [0, 1], got 1.5",
    );
    invalid(
        &keras_focal(a(0.25), 2.0, -0.5, false),
        2,
        "--label-smoothing must be in [0, 1], got -0.5",
    );
    // validate() alone, as the CLI and training call it.
    assert!(LossConfig::default_focal().validate(7).is_ok());
    assert!(
        focal(Alpha::PerClass(vec![0.1; 7]), 2.0, 0.0, 0.0, false)
            .validate(7)
            .is_ok()
    );
    assert!(
        focal(Alpha::PerClass(vec![0.1; 7]), 2.0, 0.0, 0.0, false)
            .validate_params()
            .is_ok()
    );
}

#[test]
fn shape_errors_name_both_shapes() {
    let cfg = LossConfig::default_focal();
    let shape = |y: &[f64], p: &[f64], b, k, g: Option<&mut [f64]>| -> String {
        match loss_forward_backward::<f64>(&cfg, y, p, b, k, g).unwrap_err() {
            Error::Shape(m) => m,
            other => panic!("expected a shape error, got {other:?}"),
        }
    };
    let four = [0.5; 4];
    assert!(shape(&[], &[], 0, 2, None).contains("[batch=0, classes=2]"));
    assert!(shape(&[], &[], 3, 0, None).contains("[batch=3, classes=0]"));
    let m = shape(&four, &[0.5; 6], 2, 2, None);
    assert!(
        m.contains("[batch=2, classes=2] needs 4 values") && m.contains("pred has 6"),
        "{m}"
    );
    let m = shape(&[0.5; 3], &four, 2, 2, None);
    assert!(m.contains("y_true has 3"), "{m}");
    let mut g = [0.0; 5];
    let m = shape(&four, &four, 2, 2, Some(&mut g));
    assert!(m.contains("grad has 5"), "{m}");
}

#[test]
fn non_finite_inputs_name_row_and_column() {
    let cfg = LossConfig::default_focal();
    let mut y = vec![0.0, 1.0, 1.0, 0.0, 0.0, 1.0];
    let p = vec![0.5; 6];
    y[3] = f64::NAN;
    let err = loss_forward_backward::<f64>(&cfg, &y, &p, 3, 2, None).unwrap_err();
    assert!(matches!(err, Error::NonFinite(_)));
    assert_eq!(
        err.to_string(),
        "y_true has a non-finite value (NaN) at row 1, column 1"
    );
    y[3] = 0.0;
    let mut p = p;
    p[4] = f64::INFINITY;
    let err = loss_forward_backward::<f64>(&cfg, &y, &p, 3, 2, None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "pred has a non-finite value (inf) at row 2, column 0"
    );
    let err = loss_forward_backward::<f32>(
        &ce(0.0, true),
        &[1.0, 0.0],
        &[f32::NEG_INFINITY, 0.0],
        1,
        2,
        None,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "logits has a non-finite value (-inf) at row 0, column 0"
    );
}

#[test]
fn row_sum_must_be_positive_for_the_keras_probability_paths() {
    for cfg in [
        LossConfig::default_keras_focal(),
        LossConfig::default_cross_entropy(),
    ] {
        let err = loss_forward_backward::<f64>(
            &cfg,
            &[1.0, 0.0, 1.0, 0.0],
            &[0.5, 0.5, 0.0, 0.0],
            2,
            2,
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("pred row 1 sums to 0"), "{err}");
    }
}

// ---------------------------------------------------------------- configuration helpers

#[test]
fn names_defaults_descriptions_and_serde() {
    assert_eq!(
        LossConfig::default_focal().describe(),
        "focal(alpha=0.25, gamma=2, l1=0, l2=0)"
    );
    assert_eq!(
        focal(Alpha::PerClass(vec![0.1, 0.9]), 0.5, 0.0, 0.01, true).describe(),
        "focal(alpha=[0.1,0.9], gamma=0.5, l1=0, l2=0.01, from_logits)"
    );
    assert_eq!(
        LossConfig::default_calibrated_mse().describe(),
        "calibrated-mse(facture=0.1)"
    );
    assert_eq!(
        LossConfig::default_keras_focal().describe(),
        "keras-focal(alpha=0.25, gamma=2, label_smoothing=0)"
    );
    assert_eq!(
        ce(0.1, true).describe(),
        "ce(label_smoothing=0.1, from_logits)"
    );
    for name in LOSS_NAMES {
        let cfg = LossConfig::default_for(name).unwrap();
        assert_eq!(cfg.cli_name(), name);
        assert!(!cfg.from_logits());
        let json = serde_json::to_string(&cfg).unwrap();
        assert_eq!(
            serde_json::from_str::<LossConfig>(&json).unwrap(),
            cfg,
            "{json}"
        );
    }
    let err = LossConfig::default_for("hinge").unwrap_err().to_string();
    assert!(
        err.contains("valid: focal, calibrated-mse, keras-focal, ce"),
        "{err}"
    );
    let json =
        serde_json::to_value(focal(Alpha::PerClass(vec![0.1, 0.9]), 2.0, 0.0, 0.0, false)).unwrap();
    assert_eq!(json["name"], "focal");
    assert_eq!(json["alpha"], serde_json::json!([0.1, 0.9]));
    assert_eq!(
        serde_json::to_value(LossConfig::default_focal()).unwrap()["alpha"],
        0.25
    );
}
