//! The loss, softmax and Adam kernels (kernels/{loss,softmax,adam}.cu, through the op traits
//! of the CUDA backend) against the CPU truth: `loss_forward_backward::<f32>` for every loss
//! and option, `CpuBackend` for softmax and Adam. Each test body runs on the CUDA targets of
//! tests/common/targets.rs: the emulator under the forward, reverse and random schedules, and
//! the GPU when `Executor::cuda(0)` works; without one the GPU variants print `SKIPPED (no GPU): ...` to stderr and pass
//! (`FOCALFLOW_REQUIRE_GPU=1` makes them fail instead).
//!
//! Inputs are random and odd-sized (batch 1, 3, 37; classes 2, 5, 33), with rows at the
//! clip bounds exactly, beyond them, confidently right and wrong, and saturated logits
//! (margins 50 and 200); gradient buffers are poisoned with NaN before every launch, so an
//! element a kernel forgets to write fails the comparison.
//!
//! Tolerances (`|a - b| <= RTOL * |ref| + SUM_TOL * scale`): the kernels evaluate the
//! reference's own f32 formulas in the same operation order, except (a) the order of the
//! additions in row sums (softmax denominators, log-sum-exp, dot products, the exclusive
//! sums of the softmax residual, the batch sum), a warp butterfly/scan instead of a
//! left-to-right loop, and (b) on a GPU, FMA contraction and CUDA's libm (expf, logf,
//! log1pf, expm1f, powf within 1-2 ulp; the emulator calls the same glibc functions as
//! Rust). Per operation that is a few ulp relative: RTOL = 2e-5 (~170 ulp) leaves room for
//! the chain of a dozen operations each value goes through. A sum of n terms evaluated in
//! another order differs by up to ~n·u times the sum of the terms' magnitudes (u = 2^-24),
//! not times the result, and the reference itself carries that error where terms cancel
//! (e.g. the Keras paths' `(dout_j - sum_c dout_c o_c) / s` with soft labels loses 2-3
//! digits in both): so each gradient element also gets SUM_TOL = 4·k·u (k = classes, both
//! sides rounding, 2x margin) times `scale`, the f64 magnitude of the terms it is made of
//! ([`grad_scale`]). `scale` is zero where the reference's form has no cancellation (the
//! clipped focal path, and the fused `p_j * others_j - q_j * w_j` residual from logits), so
//! there the tiny gradients of confident samples (e.g. -exp(-50)) must agree relatively. The
//! loss is a sum of non-negative terms: RTOL alone.

mod common;

use focalflow::Error;
use focalflow::executor::{DeviceBuffer, Executor, LaunchConfig, Schedule};
use focalflow::loss::{AdaFocalSettings, Alpha, GammaBins, LossConfig};
use focalflow::ops::gemm::Variant;
use focalflow::ops::loss::loss_forward_backward;
use focalflow::ops::loss::uncounted;
use focalflow::ops::prelude::*;
use focalflow::ops::{AdamStep, CpuBackend, CudaBackend};
use focalflow::rng::Rng;

// ---------------------------------------------------------------- executors

fn emu(schedule: Schedule) -> CudaBackend {
    common::targets::emu_backend(schedule, Variant::Tiled)
}

/// The shared GPU backend, or `None` after printing the skip line.
fn gpu(test: &str) -> Option<&'static CudaBackend> {
    common::targets::gpu_backend(Variant::Tiled, &format!("cuda_loss::{test}"))
}

/// Each body on the emulator under three schedules and on the GPU.
macro_rules! device_tests {
    ($($name:ident),* $(,)?) => {
        mod forward {
            $( #[test] fn $name() { super::$name(&super::emu(super::Schedule::Forward)); } )*
        }
        mod reverse {
            $( #[test] fn $name() { super::$name(&super::emu(super::Schedule::Reverse)); } )*
        }
        mod random {
            $( #[test] fn $name() { super::$name(&super::emu(super::common::targets::RANDOM)); } )*
        }
        mod gpu {
            $( #[test] fn $name() {
                if let Some(dev) = super::gpu(stringify!($name)) { super::$name(dev); }
            } )*
        }
    };
}

device_tests!(
    focal_probabilities,
    focal_logits,
    calibrated_mse,
    keras_focal,
    cross_entropy,
    per_class_alpha_cache_follows_the_configuration,
    gamma_bins_follow_the_configuration,
    extreme_gammas_stay_finite,
    longer_buffers_and_loss_only,
    loss_is_bit_reproducible,
    input_errors_match_the_reference,
    softmax_forward_backward,
    adam_two_steps,
);

// ---------------------------------------------------------------- inputs

const BATCHES: [usize; 3] = [1, 3, 37];
const CLASSES: [usize; 3] = [2, 5, 33];
const LO: f32 = 1e-7;
/// 1 - 1e-7 in f32: 0.99999988.
const HI: f32 = (1.0 - 1e-7) as f32;

/// One-hot labels, or (`soft`) non-negative labels that need not sum to 1.
fn labels(rng: &mut Rng, b: usize, k: usize, soft: bool) -> Vec<f32> {
    let mut y = vec![0.0f32; b * k];
    for r in 0..b {
        if soft {
            for c in 0..k {
                y[r * k + c] = rng.uniform() as f32;
            }
        } else {
            y[r * k + rng.below(k)] = 1.0;
        }
    }
    y
}

fn softmax_f32(z: &[f32]) -> Vec<f32> {
    let m = z.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let e: Vec<f32> = z.iter().map(|&v| (v - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.iter().map(|&v| v / s).collect()
}

/// Probabilities with special rows, chosen by `(row + salt) % 6` so that batch 1 meets
/// them too across cases: 0-2 random (scaled by 0.5..2 with `unnormalised`, as Keras
/// normalises rows), 3 the true class at exactly 1 and the rest 0 (clipped both ways),
/// 4 the true class at 0 and another at 1 (confidently wrong, clipped), 5 exactly at the
/// bounds (hi, lo, 0, ...; sums to 1 in f32). With `edges`, random rows also get entries at
/// and beyond the bounds (the clipped focal path, which does not normalise).
fn probabilities(
    rng: &mut Rng,
    y: &[f32],
    b: usize,
    k: usize,
    salt: usize,
    unnormalised: bool,
    edges: bool,
) -> Vec<f32> {
    let mut p = vec![0.0f32; b * k];
    for r in 0..b {
        let row = &mut p[r * k..(r + 1) * k];
        let truth = (0..k)
            .max_by(|&i, &j| y[r * k + i].total_cmp(&y[r * k + j]))
            .unwrap();
        let other = (truth + 1) % k;
        match (r + salt) % 6 {
            3 => row[truth] = 1.0,
            4 => row[other] = 1.0,
            5 => {
                row[truth] = HI;
                row[other] = LO;
            }
            _ => {
                let z: Vec<f32> = (0..k).map(|_| (2.0 * rng.normal()) as f32).collect();
                row.copy_from_slice(&softmax_f32(&z));
                if unnormalised {
                    let scale = rng.range(0.5, 2.0) as f32;
                    row.iter_mut().for_each(|v| *v *= scale);
                }
                if edges {
                    let specials = [LO, HI, 0.0, 5e-8, 1.0, 0.99999994, 1.5e-7, 0.9999998];
                    for _ in 0..k.div_ceil(3) {
                        row[rng.below(k)] = specials[rng.below(specials.len())];
                    }
                }
            }
        }
    }
    p
}

/// Logits with special rows by `(row + salt) % 6`: 0-2 random (N(0, 3^2)), 3 the true class
/// ahead by 50, 4 ahead by 200, 5 another class ahead by 50 (confidently wrong); two
/// classes tied for the maximum in row kind 2.
fn logits(rng: &mut Rng, y: &[f32], b: usize, k: usize, salt: usize) -> Vec<f32> {
    let mut z = vec![0.0f32; b * k];
    for r in 0..b {
        let row = &mut z[r * k..(r + 1) * k];
        for v in row.iter_mut() {
            *v = (3.0 * rng.normal()) as f32;
        }
        let truth = (0..k)
            .max_by(|&i, &j| y[r * k + i].total_cmp(&y[r * k + j]))
            .unwrap();
        let other = (truth + 1) % k;
        let top = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        match (r + salt) % 6 {
            2 => {
                row[truth] = top;
                row[other] = top;
            }
            3 => row[truth] = top + 50.0,
            4 => row[truth] = top + 200.0,
            5 => row[other] = top + 50.0,
            _ => {}
        }
    }
    z
}

// ---------------------------------------------------------------- comparison

fn scalar_alpha(a: f64) -> Alpha {
    Alpha::Scalar(a)
}

fn class_alpha(k: usize) -> Alpha {
    Alpha::PerClass((0..k).map(|c| 0.1 + 0.8 * c as f64 / k as f64).collect())
}

/// rtol of the loss and the gradients (see the top of the file).
const RTOL: f64 = 2e-5;

/// Runs the loss on the device with a NaN-poisoned gradient and compares with the reference.
fn check_loss(dev: &CudaBackend, cfg: &LossConfig, y: &[f32], pred: &[f32], b: usize, k: usize) {
    let mut want_grad = vec![f32::NAN; b * k];
    let want = loss_forward_backward::<f32>(cfg, y, pred, b, k, Some(&mut want_grad))
        .unwrap_or_else(|e| panic!("reference {}: {e}", cfg.describe()));
    let exec = dev.executor();
    let yd = exec.upload(y).unwrap();
    let pd = exec.upload(pred).unwrap();
    let mut gd = exec.upload(&vec![f32::NAN; b * k]).unwrap();
    let got = dev
        .loss(cfg, b, k, &yd, &pd, Some(&mut gd), None)
        .map(uncounted)
        .unwrap_or_else(|e| panic!("{} [b={b}, k={k}]: {e}", cfg.describe()));
    let grad = exec.download(&gd).unwrap();
    let what = format!(
        "{} [batch={b}, classes={k}] on {}",
        cfg.describe(),
        exec.kind()
    );
    assert!(
        (got as f64 - want as f64).abs() <= RTOL * (want as f64).abs(),
        "{what}: loss {got:e} vs reference {want:e}"
    );
    let scale = grad_scale(cfg, y, pred, b, k);
    let sum_tol = SUM_ULPS_PER_TERM * k as f64 * f64::from(f32::EPSILON) / 2.0;
    for r in 0..b {
        let row = r * k..(r + 1) * k;
        for c in 0..k {
            let i = r * k + c;
            let (a, w) = (grad[i] as f64, want_grad[i] as f64);
            let tol = RTOL * w.abs() + sum_tol * scale[i];
            // Written so that a NaN (an unwritten, poisoned element) fails too.
            let within = (a - w).abs() <= tol;
            if !within {
                // The same loss in f64 shows which side is off.
                let to64 = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
                let mut g64 = vec![0.0f64; b * k];
                loss_forward_backward::<f64>(cfg, &to64(y), &to64(pred), b, k, Some(&mut g64))
                    .unwrap();
                panic!(
                    "{what}: grad[{r},{c}] = {a:e} vs reference {w:e} (|diff| {:.2e} > {tol:.2e}; \
                     f64 reference {:e}; term scale {:.2e}; pred row {:?}, labels {:?})",
                    (a - w).abs(),
                    g64[i],
                    scale[i],
                    &pred[row.clone()],
                    &y[row.clone()]
                );
            }
        }
    }
}

/// Ulps of rounding error allowed per summed term (both sides round; see the top).
const SUM_ULPS_PER_TERM: f64 = 4.0;

fn softmax_f64(z: &[f64]) -> Vec<f64> {
    let m = z.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
    let e: Vec<f64> = z.iter().map(|&v| (v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|&v| v / s).collect()
}

/// Magnitudes through the softmax backward `p_j (g_j - sum_c p_c g_c)`.
fn chain_softmax(p: &[f64], m: &[f64]) -> Vec<f64> {
    let dot: f64 = p.iter().zip(m).map(|(a, b)| a * b).sum();
    p.iter().zip(m).map(|(pj, mj)| pj * (mj + dot)).collect()
}

/// Per gradient element, the size of the terms that are added or cancelled to form it (in
/// f64): a sum evaluated in another order differs by ~n·eps times this, not times the result.
/// Zero where the reference's form has no cancellation: the clipped focal path (element-
/// wise) and the fused residual `p_j * others_j - q_j * w_j` of focal/ce from logits (whose
/// L1/L2 part, chained through the softmax, does cancel and is counted).
fn grad_scale(cfg: &LossConfig, y: &[f32], pred: &[f32], b: usize, k: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(b * k);
    let (lo, hi) = (LO as f64, HI as f64);
    for r in 0..b {
        let x: Vec<f64> = pred[r * k..(r + 1) * k].iter().map(|&v| v as f64).collect();
        let yr: Vec<f64> = y[r * k..(r + 1) * k].iter().map(|&v| v as f64).collect();
        let p = if cfg.from_logits() {
            softmax_f64(&x)
        } else {
            x.clone()
        };
        let keras = |ls: f64, focal: Option<(&Alpha, f64)>| -> Vec<f64> {
            let s: f64 = p.iter().sum();
            let dout: Vec<f64> = (0..k)
                .map(|c| {
                    let yy = yr[c] * (1.0 - ls) + ls / k as f64;
                    let o = p[c] / s;
                    if o < lo || o > hi {
                        return 0.0;
                    }
                    match focal {
                        None => (yy / o).abs(),
                        Some((alpha, g)) => {
                            let q = 1.0 - o;
                            let cce = (yy * o.ln()).abs();
                            alpha.at(c) * (g * q.powf(g - 1.0) * cce + q.powf(g) * (yy / o).abs())
                        }
                    }
                })
                .collect();
            let dot: f64 = (0..k).map(|c| dout[c] * p[c] / s).sum();
            let m: Vec<f64> = dout.iter().map(|d| (d + dot) / s / b as f64).collect();
            if cfg.from_logits() {
                chain_softmax(&p, &m)
            } else {
                m
            }
        };
        let m = match cfg {
            LossConfig::Focal {
                from_logits: false, ..
            }
            | LossConfig::CrossEntropy {
                from_logits: true, ..
            }
            | LossConfig::Flsd53 { .. }
            | LossConfig::AdaFocal { .. }
            | LossConfig::SigmoidFocal { .. }
            | LossConfig::DualFocal { .. } => vec![0.0; k],
            LossConfig::Focal { l1, l2, .. } => {
                let gl: Vec<f64> = p.iter().map(|pc| l1 + 2.0 * l2 * pc).collect();
                chain_softmax(&p, &gl)
            }
            LossConfig::CalibratedMse {
                facture,
                from_logits,
            } => {
                let n = (b * k) as f64;
                let m: Vec<f64> = (0..k)
                    .map(|c| (2.0 * (p[c] - yr[c]).abs() + 2.0 * facture * (p[c] - 0.5).abs()) / n)
                    .collect();
                if *from_logits {
                    chain_softmax(&p, &m)
                } else {
                    m
                }
            }
            LossConfig::KerasFocal {
                alpha,
                gamma,
                label_smoothing,
                ..
            } => keras(*label_smoothing, Some((alpha, *gamma))),
            LossConfig::CrossEntropy {
                label_smoothing, ..
            } => keras(*label_smoothing, None),
        };
        out.extend(m);
    }
    out
}

// ---------------------------------------------------------------- the losses

fn focal_probabilities(dev: &CudaBackend) {
    let mut rng = Rng::new(11);
    let mut salt = 0;
    for &b in &BATCHES {
        for &k in &CLASSES {
            for (i, gamma) in [0.0, 0.5, 2.0].into_iter().enumerate() {
                for (alpha, l1, l2) in [
                    (scalar_alpha(0.25), 0.0, 0.0),
                    (class_alpha(k), 1e-3, 2e-3),
                    (scalar_alpha(1.0), 0.0, 0.01),
                ] {
                    salt += 1;
                    let y = labels(&mut rng, b, k, i == 1);
                    let p = probabilities(&mut rng, &y, b, k, salt, false, true);
                    let cfg = LossConfig::Focal {
                        alpha,
                        gamma,
                        l1,
                        l2,
                        from_logits: false,
                    };
                    check_loss(dev, &cfg, &y, &p, b, k);
                }
            }
        }
    }
}

fn focal_logits(dev: &CudaBackend) {
    let mut rng = Rng::new(12);
    let mut salt = 0;
    for &b in &BATCHES {
        for &k in &CLASSES {
            for (i, gamma) in [0.0, 0.5, 2.0].into_iter().enumerate() {
                for (alpha, l1, l2) in
                    [(scalar_alpha(0.25), 0.0, 0.0), (class_alpha(k), 1e-3, 2e-3)]
                {
                    salt += 1;
                    let y = labels(&mut rng, b, k, i == 1);
                    let z = logits(&mut rng, &y, b, k, salt);
                    let cfg = LossConfig::Focal {
                        alpha,
                        gamma,
                        l1,
                        l2,
                        from_logits: true,
                    };
                    check_loss(dev, &cfg, &y, &z, b, k);
                }
            }
        }
    }
}

fn calibrated_mse(dev: &CudaBackend) {
    let mut rng = Rng::new(13);
    let mut salt = 0;
    for &b in &BATCHES {
        for &k in &CLASSES {
            for (facture, from_logits, soft) in [
                (0.1, false, false),
                (0.0, false, true),
                (0.1, true, false),
                (2.5, true, true),
            ] {
                salt += 1;
                let y = labels(&mut rng, b, k, soft);
                let x = if from_logits {
                    logits(&mut rng, &y, b, k, salt)
                } else {
                    probabilities(&mut rng, &y, b, k, salt, false, true)
                };
                let cfg = LossConfig::CalibratedMse {
                    facture,
                    from_logits,
                };
                check_loss(dev, &cfg, &y, &x, b, k);
            }
        }
    }
}

fn keras_focal(dev: &CudaBackend) {
    let mut rng = Rng::new(14);
    let mut salt = 0;
    for &b in &BATCHES {
        for &k in &CLASSES {
            for (i, gamma) in [0.0, 0.5, 2.0].into_iter().enumerate() {
                for (alpha, smoothing, from_logits) in [
                    (scalar_alpha(0.25), 0.0, false),
                    (class_alpha(k), 0.1, false),
                    (scalar_alpha(0.25), 0.0, true),
                    (class_alpha(k), 0.2, true),
                ] {
                    salt += 1;
                    let y = labels(&mut rng, b, k, i == 1);
                    let x = if from_logits {
                        logits(&mut rng, &y, b, k, salt)
                    } else {
                        probabilities(&mut rng, &y, b, k, salt, true, false)
                    };
                    let cfg = LossConfig::KerasFocal {
                        alpha,
                        gamma,
                        label_smoothing: smoothing,
                        from_logits,
                    };
                    check_loss(dev, &cfg, &y, &x, b, k);
                }
            }
        }
    }
}

fn cross_entropy(dev: &CudaBackend) {
    let mut rng = Rng::new(15);
    let mut salt = 0;
    for &b in &BATCHES {
        for &k in &CLASSES {
            for (smoothing, from_logits, soft) in [
                (0.0, false, false),
                (0.1, false, true),
                (0.0, true, false),
                (0.1, true, false),
                (0.3, true, true),
            ] {
                salt += 1;
                let y = labels(&mut rng, b, k, soft);
                let x = if from_logits {
                    logits(&mut rng, &y, b, k, salt)
                } else {
                    probabilities(&mut rng, &y, b, k, salt, true, false)
                };
                let cfg = LossConfig::CrossEntropy {
                    label_smoothing: smoothing,
                    from_logits,
                };
                check_loss(dev, &cfg, &y, &x, b, k);
            }
        }
    }
}

/// One LossKernels across configurations whose per-class alpha changes (and back), and
/// between them a scalar alpha: the cached device copy must follow.
fn per_class_alpha_cache_follows_the_configuration(dev: &CudaBackend) {
    let mut rng = Rng::new(16);
    let (b, k) = (7, 5);
    let y = labels(&mut rng, b, k, false);
    let z = logits(&mut rng, &y, b, k, 0);
    let p = probabilities(&mut rng, &y, b, k, 0, false, true);
    let a1 = Alpha::PerClass(vec![0.1, 0.2, 0.3, 0.4, 0.5]);
    let a2 = Alpha::PerClass(vec![0.9, 0.1, 0.9, 0.1, 0.9]);
    for alpha in [a1.clone(), a2.clone(), scalar_alpha(0.5), a1, a2] {
        for from_logits in [false, true] {
            let cfg = LossConfig::Focal {
                alpha: alpha.clone(),
                gamma: 2.0,
                l1: 0.0,
                l2: 0.0,
                from_logits,
            };
            check_loss(dev, &cfg, &y, if from_logits { &z } else { &p }, b, k);
        }
    }
}

/// adafocal's bins change after every epoch: one LossKernels across tables that differ in
/// values and in size (and flsd-53's between), from probabilities and logits, on batches of
/// every kind; the cached device table must follow, and a negative gamma (inverse focal)
/// must agree with the reference as a positive one does.
fn gamma_bins_follow_the_configuration(dev: &CudaBackend) {
    let mut rng = Rng::new(17);
    let tables = [
        GammaBins::uniform(15, 1.0),
        GammaBins {
            edges: vec![0.1, 0.3, 0.5, 0.8],
            gammas: vec![4.0, -2.0, 0.3, -0.2, 1.7],
        },
        GammaBins::uniform(15, -1.0),
        GammaBins {
            edges: vec![0.25],
            gammas: vec![20.0, -2.0],
        },
    ];
    for (b, k) in [(1, 2), (7, 5), (37, 33)] {
        let y = labels(&mut rng, b, k, false);
        let z = logits(&mut rng, &y, b, k, 0);
        let p = probabilities(&mut rng, &y, b, k, 0, false, true);
        for from_logits in [false, true] {
            let pred = if from_logits { &z } else { &p };
            for bins in &tables {
                let cfg = LossConfig::AdaFocal {
                    settings: AdaFocalSettings::default(),
                    bins: bins.clone(),
                    from_logits,
                };
                check_loss(dev, &cfg, &y, pred, b, k);
                check_loss(dev, &LossConfig::Flsd53 { from_logits }, &y, pred, b, k);
            }
        }
    }
}

/// The calibration and multi-label losses at every gamma the flags allow (0, tiny, < 1,
/// large; adafocal's bins from -20 to 1000), on saturated logits (margins of 100 and 1e4,
/// whose complements are subnormal or 0 in f32) and on probabilities at and beyond 0 and 1:
/// the loss and every gradient element finite on the device and on the CPU, and equal.
fn extreme_gammas_stay_finite(dev: &CudaBackend) {
    let (b, k) = (6, 3);
    let y = [
        1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0,
    ];
    // Right and wrong, saturated and tied rows.
    let z = [
        100.0, 0.0, 0.0, 100.0, 0.0, 0.0, -1e4, 0.0, 1e4, 1e4, 1e4, -1e4, 0.0, 0.0, 0.0, 50.0,
        50.0, -50.0,
    ];
    let p = [
        1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 2e-38, 1.0, HI, LO, 0.0, 0.5, 0.5, 0.0, 1e-30, 1e-30,
        1.0,
    ];
    let bins = |gammas: Vec<f64>| GammaBins {
        edges: (1..gammas.len())
            .map(|i| i as f64 / gammas.len() as f64)
            .collect(),
        gammas,
    };
    for from_logits in [false, true] {
        let pred: &[f32] = if from_logits { &z } else { &p };
        let mut configs = vec![
            LossConfig::Flsd53 { from_logits },
            LossConfig::AdaFocal {
                settings: AdaFocalSettings::default(),
                bins: bins(vec![-20.0, -0.2, 0.0, 1e-3, 1000.0]),
                from_logits,
            },
        ];
        for gamma in [0.0, 1e-6, 0.5, 1.0, 5.0, 100.0, 1e4] {
            configs.push(LossConfig::DualFocal { gamma, from_logits });
            configs.push(LossConfig::SigmoidFocal {
                alpha: scalar_alpha(0.25),
                gamma,
                from_logits,
            });
        }
        for cfg in configs {
            let mut g = vec![f32::NAN; b * k];
            let v = loss_forward_backward::<f32>(&cfg, &y, pred, b, k, Some(&mut g)).unwrap();
            assert!(
                v.is_finite() && g.iter().all(|x| x.is_finite()),
                "{} on the CPU: loss {v}, grad {g:?}",
                cfg.describe()
            );
            check_loss(dev, &cfg, &y, pred, b, k);
        }
    }
}

/// Buffers longer than [batch, classes] (as the Backend trait allows): the prefix is used,
/// the gradient's tail is left alone; and without a gradient the loss is the same.
fn longer_buffers_and_loss_only(dev: &CudaBackend) {
    let exec = dev.executor();
    let mut rng = Rng::new(17);
    let (b, k) = (3, 5);
    let y = labels(&mut rng, b, k, false);
    let z = logits(&mut rng, &y, b, k, 0);
    let cfg = LossConfig::Focal {
        alpha: scalar_alpha(0.25),
        gamma: 2.0,
        l1: 1e-3,
        l2: 0.0,
        from_logits: true,
    };
    let mut want_grad = vec![0.0f32; b * k];
    let want = loss_forward_backward::<f32>(&cfg, &y, &z, b, k, Some(&mut want_grad)).unwrap();
    let pad = |v: &[f32], fill: f32| -> Vec<f32> {
        let mut out = v.to_vec();
        out.extend(std::iter::repeat_n(fill, 11));
        out
    };
    let yd = exec.upload(&pad(&y, 7.0)).unwrap();
    let zd = exec.upload(&pad(&z, f32::NAN)).unwrap();
    let mut gd = exec.upload(&vec![f32::NAN; b * k + 11]).unwrap();
    let got = dev
        .loss(&cfg, b, k, &yd, &zd, Some(&mut gd), None)
        .map(uncounted)
        .unwrap();
    let g = exec.download(&gd).unwrap();
    assert!((got - want).abs() <= 2e-5 * want.abs(), "{got} vs {want}");
    for i in 0..b * k {
        assert!(
            (g[i] - want_grad[i]).abs() <= 2e-5 * want_grad[i].abs(),
            "grad[{i}]"
        );
    }
    assert!(
        g[b * k..].iter().all(|v| v.is_nan()),
        "the tail was written"
    );
    let loss_only = dev
        .loss(&cfg, b, k, &yd, &zd, None, None)
        .map(uncounted)
        .unwrap();
    assert_eq!(loss_only.to_bits(), got.to_bits(), "loss without gradient");
}

/// The same launch twice gives bit-identical loss and gradient; on the emulator so do all
/// three schedules (the kernels' results do not depend on thread timing).
fn loss_is_bit_reproducible(dev: &CudaBackend) {
    let exec = dev.executor();
    let mut rng = Rng::new(18);
    let (b, k) = (37, 33);
    let y = labels(&mut rng, b, k, true);
    let z = logits(&mut rng, &y, b, k, 0);
    let cfgs = [
        LossConfig::Focal {
            alpha: class_alpha(k),
            gamma: 0.5,
            l1: 1e-3,
            l2: 1e-3,
            from_logits: true,
        },
        LossConfig::KerasFocal {
            alpha: scalar_alpha(0.25),
            gamma: 2.0,
            label_smoothing: 0.1,
            from_logits: true,
        },
        LossConfig::CalibratedMse {
            facture: 0.1,
            from_logits: true,
        },
    ];
    let run = |dev: &CudaBackend, cfg: &LossConfig| -> (u32, Vec<u32>) {
        let exec = dev.executor();
        let yd = exec.upload(&y).unwrap();
        let zd = exec.upload(&z).unwrap();
        let mut gd = exec.upload(&vec![f32::NAN; b * k]).unwrap();
        let l = dev
            .loss(cfg, b, k, &yd, &zd, Some(&mut gd), None)
            .map(uncounted)
            .unwrap();
        let g = exec.download(&gd).unwrap();
        (l.to_bits(), g.iter().map(|v| v.to_bits()).collect())
    };
    for cfg in &cfgs {
        let first = run(dev, cfg);
        assert_eq!(
            first,
            run(dev, cfg),
            "{}: second run differs",
            cfg.describe()
        );
        if let Executor::Emu(_) = exec {
            for schedule in [Schedule::Forward, Schedule::Reverse, Schedule::Random(99)] {
                assert_eq!(
                    first,
                    run(&emu(schedule), cfg),
                    "{}: differs under the {schedule} schedule",
                    cfg.describe()
                );
            }
        }
    }
}

/// Invalid parameters, shapes and inputs give the reference's errors (same variant, same
/// message).
fn input_errors_match_the_reference(dev: &CudaBackend) {
    let exec = dev.executor();
    let (b, k) = (4, 3);
    let mut rng = Rng::new(19);
    let y = labels(&mut rng, b, k, false);
    let p = probabilities(&mut rng, &y, b, k, 0, false, false);
    let focal = LossConfig::default_focal();
    let mut cases: Vec<(LossConfig, Vec<f32>, Vec<f32>)> = Vec::new();
    for (i, bad) in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY]
        .into_iter()
        .enumerate()
    {
        let mut pb = p.clone();
        pb[5 + i] = bad;
        cases.push((focal.clone(), y.clone(), pb.clone()));
        let mut yb = y.clone();
        yb[7] = bad;
        // Both bad: the reference reports y_true first.
        cases.push((LossConfig::default_cross_entropy(), yb, pb));
    }
    for cfg in [
        LossConfig::default_keras_focal(),
        LossConfig::default_cross_entropy(),
    ] {
        let mut pz = p.clone();
        pz[k..2 * k].fill(0.0); // row 1 sums to 0
        cases.push((cfg, y.clone(), pz));
    }
    let mut logit_cfg = LossConfig::default_focal();
    if let LossConfig::Focal { from_logits, .. } = &mut logit_cfg {
        *from_logits = true;
    }
    let mut zb = p.clone();
    zb[11] = f32::NAN;
    cases.push((logit_cfg, y.clone(), zb));
    cases.push((
        LossConfig::Focal {
            alpha: Alpha::PerClass(vec![0.5, 0.5]),
            gamma: 2.0,
            l1: 0.0,
            l2: 0.0,
            from_logits: false,
        },
        y.clone(),
        p.clone(),
    ));
    cases.push((
        LossConfig::Focal {
            alpha: scalar_alpha(0.25),
            gamma: -1.0,
            l1: 0.0,
            l2: 0.0,
            from_logits: false,
        },
        y.clone(),
        p.clone(),
    ));
    for (cfg, yv, pv) in &cases {
        let want = loss_forward_backward::<f32>(cfg, yv, pv, b, k, None).unwrap_err();
        let yd = exec.upload(yv).unwrap();
        let pd = exec.upload(pv).unwrap();
        let mut gd = exec.alloc::<f32>(b * k).unwrap();
        let got = dev
            .loss(cfg, b, k, &yd, &pd, Some(&mut gd), None)
            .map(uncounted)
            .unwrap_err();
        assert_eq!(
            std::mem::discriminant(&got),
            std::mem::discriminant(&want),
            "{}: {got:?} vs {want:?}",
            cfg.describe()
        );
        assert_eq!(got.to_string(), want.to_string());
    }
    // Shapes: no rows, and buffers too short.
    let yd = exec.upload(&y).unwrap();
    let pd = exec.upload(&p).unwrap();
    let zero = dev
        .loss(&focal, 0, k, &yd, &pd, None, None)
        .map(uncounted)
        .unwrap_err();
    let want = loss_forward_backward::<f32>(&focal, &[], &[], 0, k, None).unwrap_err();
    assert_eq!(zero.to_string(), want.to_string());
    let short = dev
        .loss(&focal, b + 1, k, &yd, &pd, None, None)
        .map(uncounted)
        .unwrap_err();
    assert!(matches!(short, Error::Shape(_)), "{short:?}");
    assert!(short.to_string().contains("y_true has 12"), "{short}");
    // The state is still usable after the errors.
    check_loss(dev, &focal, &y, &p, b, k);
}

// ---------------------------------------------------------------- softmax and Adam

/// Softmax forward and backward against the CPU backend on odd shapes, saturated rows
/// included. Forward: RTOL (same formula; the sum in another order). Backward:
/// `p (dp - dot)` cancels, so as for the losses SUM_TOL applies to
/// `p_j (|dp_j| + sum_c |p_c dp_c|)`, the size of the terms it is made of.
fn softmax_forward_backward(dev: &CudaBackend) {
    let exec = dev.executor();
    let cpu = CpuBackend::<f32>::new();
    let mut rng = Rng::new(20);
    for &rows in &BATCHES {
        for &cols in &[2usize, 5, 33, 100] {
            let y = labels(&mut rng, rows, cols, false);
            let z = logits(&mut rng, &y, rows, cols, rows + cols);
            let dp: Vec<f32> = (0..rows * cols).map(|_| rng.normal() as f32).collect();
            let mut want_p = vec![0.0f32; rows * cols];
            cpu.softmax_forward(rows, cols, &z, &mut want_p).unwrap();
            let mut want_dz = vec![0.0f32; rows * cols];
            cpu.softmax_backward(rows, cols, &want_p, &dp, &mut want_dz)
                .unwrap();

            let zd = exec.upload(&z).unwrap();
            let mut pd = exec.upload(&vec![f32::NAN; rows * cols]).unwrap();
            dev.softmax_forward(rows, cols, &zd, &mut pd).unwrap();
            let got_p = exec.download(&pd).unwrap();
            for i in 0..rows * cols {
                let (a, w) = (got_p[i] as f64, want_p[i] as f64);
                assert!(
                    (a - w).abs() <= RTOL * w.abs(),
                    "softmax [{rows}x{cols}] on {}: p[{i}] = {a:e} vs {w:e}",
                    exec.kind()
                );
            }
            // Backward from the reference probabilities, so both see the same inputs.
            let ppd = exec.upload(&want_p).unwrap();
            let dpd = exec.upload(&dp).unwrap();
            let mut dzd = exec.upload(&vec![f32::NAN; rows * cols]).unwrap();
            dev.softmax_backward(rows, cols, &ppd, &dpd, &mut dzd)
                .unwrap();
            let got_dz = exec.download(&dzd).unwrap();
            for r in 0..rows {
                let row = r * cols..(r + 1) * cols;
                let dot_abs: f64 = row
                    .clone()
                    .map(|i| (want_p[i] as f64 * dp[i] as f64).abs())
                    .sum();
                for i in row {
                    let (a, w) = (got_dz[i] as f64, want_dz[i] as f64);
                    let scale = want_p[i] as f64 * (dp[i].abs() as f64 + dot_abs);
                    let sum_tol = SUM_ULPS_PER_TERM * cols as f64 * f64::from(f32::EPSILON) / 2.0;
                    assert!(
                        (a - w).abs() <= RTOL * w.abs() + sum_tol * scale,
                        "softmax backward [{rows}x{cols}] on {}: dz[{i}] = {a:e} vs {w:e}",
                        exec.kind()
                    );
                }
            }
        }
    }
    // Empty shapes launch nothing; short buffers are shape errors.
    let one = exec.upload(&[1.0f32]).unwrap();
    let mut out = exec.upload(&[f32::NAN]).unwrap();
    dev.softmax_forward(0, 7, &one, &mut out).unwrap();
    let err = dev.softmax_forward(1, 2, &one, &mut out).unwrap_err();
    assert!(matches!(err, Error::Shape(_)), "{err:?}");
}

fn adam_step(t: i32) -> AdamStep<f32> {
    let (lr, b1, b2) = (1e-3f64, 0.9f64, 0.999f64);
    AdamStep {
        step_size: (lr * (1.0 - b2.powi(t)).sqrt() / (1.0 - b1.powi(t))) as f32,
        one_minus_beta1: (1.0 - b1) as f32,
        one_minus_beta2: (1.0 - b2) as f32,
        epsilon: 1e-7,
    }
}

/// Two Adam steps against the CPU backend, on lengths that exercise the float4 body and
/// the scalar tail, and on misaligned views (the scalar-only path). The kernel evaluates the
/// same three f32 expressions per element as the CPU; on a GPU, FMA contraction rounds
/// `m + (g - m)(1 - b1)` once instead of twice (sqrt and division are correctly rounded
/// there too), so each result is within a few ulp of the magnitude of the terms it adds,
/// which in the second step can cancel (`m` nearly undone by a gradient of opposite sign;
/// seen on the H200: 5e-11 on m = 1.1e-5). Tolerance: 1e-6 (~16 ulp) times
/// `|ref| + scale`, where scale is the largest `|x| + |increment|` over the two steps.
fn adam_two_steps(dev: &CudaBackend) {
    let exec = dev.executor();
    let cpu = CpuBackend::<f32>::new();
    let mut rng = Rng::new(21);
    for &len in &[1usize, 3, 4, 5, 37, 1027, 4099] {
        let p0: Vec<f32> = (0..len).map(|_| rng.normal() as f32).collect();
        let grads: Vec<Vec<f32>> = (0..2)
            .map(|_| (0..len).map(|_| (1e-2 * rng.normal()) as f32).collect())
            .collect();
        let (mut p, mut m, mut v) = (p0.clone(), vec![0.0f32; len], vec![0.0f32; len]);
        // Per element, the largest |old value| + |increment| of p, m and v over the steps.
        let mut scale = [vec![0.0f64; len], vec![0.0f64; len], vec![0.0f64; len]];
        for (t, g) in grads.iter().enumerate() {
            let before = [p.clone(), m.clone(), v.clone()];
            cpu.adam_update(
                len,
                &adam_step(t as i32 + 1),
                &mut p,
                g,
                &mut m,
                &mut v,
                None,
            )
            .unwrap();
            for (j, after) in [&p, &m, &v].into_iter().enumerate() {
                for i in 0..len {
                    let (old, new) = (before[j][i] as f64, after[i] as f64);
                    scale[j][i] = scale[j][i].max(old.abs() + (new - old).abs());
                }
            }
        }
        // On the device: the API (aligned buffers), and a raw launch on views offset by one
        // element (misaligned for float4).
        for offset in [0usize, 1] {
            let pad = |x: &[f32]| -> Vec<f32> {
                let mut out = vec![f32::NAN; offset];
                out.extend_from_slice(x);
                out
            };
            let mut pd = exec.upload(&pad(&p0)).unwrap();
            let mut md = exec.upload(&pad(&vec![0.0; len])).unwrap();
            let mut vd = exec.upload(&pad(&vec![0.0; len])).unwrap();
            for (t, g) in grads.iter().enumerate() {
                let gd = exec.upload(&pad(g)).unwrap();
                let step = adam_step(t as i32 + 1);
                if offset == 0 {
                    dev.adam_update(len, &step, &mut pd, &gd, &mut md, &mut vd, None)
                        .unwrap();
                } else {
                    launch_adam_view(exec, len, offset, &step, &mut pd, &gd, &mut md, &mut vd);
                }
            }
            for (j, (name, got, want)) in [
                ("param", exec.download(&pd).unwrap(), &p),
                ("m", exec.download(&md).unwrap(), &m),
                ("v", exec.download(&vd).unwrap(), &v),
            ]
            .into_iter()
            .enumerate()
            {
                assert!(
                    got[..offset].iter().all(|x| x.is_nan()),
                    "{name}: head written"
                );
                for i in 0..len {
                    let (a, w) = (got[offset + i] as f64, want[i] as f64);
                    assert!(
                        (a - w).abs() <= 1e-6 * (w.abs() + scale[j][i]),
                        "adam len {len} offset {offset} on {}: {name}[{i}] = {a:e} vs {w:e}",
                        exec.kind()
                    );
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn launch_adam_view(
    exec: &Executor,
    len: usize,
    offset: usize,
    step: &AdamStep<f32>,
    p: &mut DeviceBuffer<f32>,
    g: &DeviceBuffer<f32>,
    m: &mut DeviceBuffer<f32>,
    v: &mut DeviceBuffer<f32>,
) {
    let cfg = LaunchConfig::new(2u32, 256u32);
    // SAFETY: adam_update_f32(float*, const float*, float*, float*, long long, float x4,
    // const double*) on views of `len` elements inside the buffers (each holds offset +
    // len), without counters (null).
    unsafe {
        exec.launch_builder("adam_update_f32", cfg)
            .arg(p.slice(offset..))
            .arg(g.slice(offset..))
            .arg(m.slice(offset..))
            .arg(v.slice(offset..))
            .arg(len as i64)
            .arg(step.step_size)
            .arg(step.one_minus_beta1)
            .arg(step.one_minus_beta2)
            .arg(step.epsilon)
            .arg(0u64)
            .launch()
            .unwrap()
    };
}
