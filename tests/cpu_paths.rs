//! The CPU's fast paths (direct 3x3, Winograd F(2x2,3x3), streaming dense) against the
//! reference path (im2col + GEMM) along a training trajectory: the question whether they
//! train as well (see scripts/cpu_paths_quality.py for the paired runs).
//!
//! `trajectory` (ignored: a minute on 2 cores; run it with
//! `cargo test --release --test cpu_paths -- --ignored --nocapture`; CI runs the same at 64x64,
//! `trajectory_at_64_pixels`) trains the reference CNN on the built-in set at 224x224 from one initialisation, with the same batches, on
//! both paths. At every step it measures, at the fast model's current weights, each path's
//! gradient error against the same gradient in f64 (per layer, relative, the norm of the
//! difference over the norm of the f64 gradient), and how far the two trajectories' weights
//! have moved apart. A path with a bug, or taken only for some shapes, shows as one path's
//! per-step error standing out; rounding alone shows as equal errors of order 1e-6 and a
//! divergence of the weights that grows from there.

use focalflow::Element;
use focalflow::data::synthetic;
use focalflow::loss::LossConfig;
use focalflow::model::{Arch, ImageShape, Model, Plan, REFERENCE_ARCH};
use focalflow::ops::prelude::*;
use focalflow::ops::{CpuBackend, CpuPath};

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// `||a - b|| / ||b||`.
fn relative(a: &[f64], b: &[f64]) -> f64 {
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    norm(&d) / norm(b).max(1e-300)
}

fn wide(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

/// Each layer's gradient of `loss` on batch (`x`, `y`) at `weights`, on `backend`.
fn gradients<B: Backend>(
    backend: &B,
    plan: &Plan,
    weights: &[Vec<B::E>],
    loss: &LossConfig,
    x: &[B::E],
    y: &[B::E],
    batch: usize,
) -> Vec<Vec<f64>> {
    let mut model = Model::with_weights(backend, plan.clone(), weights).unwrap();
    let (xb, yb) = (backend.upload(x).unwrap(), backend.upload(y).unwrap());
    model.forward(backend, &xb, batch).unwrap();
    model.backward(backend, loss, &xb, &yb, batch).unwrap();
    model
        .gradients(backend)
        .unwrap()
        .iter()
        .map(|g| g.iter().map(|v| v.f64()).collect())
        .collect()
}

#[test]
#[ignore = "a minute on 2 cores: run by hand (see the file's documentation)"]
fn trajectory() {
    follow(224, 32, 24);
}

/// The same check on 64x64 images, small enough for every CI run (the fast paths all apply:
/// the direct first layer, Winograd for conv2 and conv3, the streaming dense layer).
#[test]
fn trajectory_at_64_pixels() {
    follow(64, 8, 8);
}

/// Trains `steps` steps of `batch` images of `size` x `size` on both paths (see the file's
/// documentation) and checks that the fast paths' gradients are as accurate as the
/// reference's.
fn follow(size: usize, batch: usize, steps: usize) {
    let set = synthetic::generate(640, size, 42);
    let plan = Plan::new(
        &REFERENCE_ARCH.parse::<Arch>().unwrap(),
        ImageShape {
            height: size,
            width: size,
            channels: 3,
        },
        2,
    )
    .unwrap();
    let loss = LossConfig::default_for("focal").unwrap();
    let loss = match loss {
        LossConfig::Focal {
            alpha,
            gamma,
            l1,
            l2,
            ..
        } => LossConfig::Focal {
            alpha,
            gamma,
            l1,
            l2,
            from_logits: true,
        },
        other => other,
    };
    let fast = CpuBackend::<f32>::with_path(CpuPath::Auto);
    let reference = CpuBackend::<f32>::with_path(CpuPath::Reference);
    let exact = CpuBackend::<f64>::new();
    let mut fast_model = Model::new(&fast, plan.clone(), 42).unwrap();
    let init = fast_model.weights(&fast).unwrap();
    let mut ref_model = Model::with_weights(&reference, plan.clone(), &init).unwrap();
    let names: Vec<String> = plan.params.iter().map(|p| p.name.clone()).collect();
    let (mut x, mut y) = (Vec::new(), Vec::new());
    // Each path's error vector (its gradient minus f64's) of the step before, per layer, and
    // the sum over steps of the cosine between consecutive ones: errors that point the same
    // way step after step are a bias that Adam, which normalises each weight's update,
    // turns into steps of full size where the true gradient is near zero.
    let mut last_err: Vec<Option<(Vec<f64>, Vec<f64>)>> = vec![None; plan.params.len()];
    let mut consistency = vec![(0f64, 0f64); plan.params.len()];
    // Over every step and layer: the sum of each path's errors, and the mean log10 ratio.
    let (mut sum_fast, mut sum_ref, mut log_ratio, mut fast_worse, mut entries) =
        (0f64, 0f64, 0f64, 0usize, 0usize);
    println!("step  layer            fast err   ref err   fast/ref   weights apart");
    for step in 0..steps {
        let first = (step * batch) % (set.len() - batch);
        let order: Vec<usize> = (first..first + batch).collect();
        set.fill_batch(&order, &mut x, &mut y);
        let w = fast_model.weights(&fast).unwrap();
        let w64: Vec<Vec<f64>> = w.iter().map(|v| wide(v)).collect();
        let (x64, y64) = (wide(&x), wide(&y));
        let g_fast = gradients(&fast, &plan, &w, &loss, &x, &y, batch);
        let g_ref = gradients(&reference, &plan, &w, &loss, &x, &y, batch);
        let g_exact = gradients(&exact, &plan, &w64, &loss, &x64, &y64, batch);
        let apart: Vec<f64> = {
            let wr = ref_model.weights(&reference).unwrap();
            w.iter()
                .zip(&wr)
                .map(|(a, b)| relative(&wide(a), &wide(b)))
                .collect()
        };
        for (k, name) in names.iter().enumerate() {
            let (ef, er) = (
                relative(&g_fast[k], &g_exact[k]),
                relative(&g_ref[k], &g_exact[k]),
            );
            let ratio = ef / er.max(1e-12);
            sum_fast += ef;
            sum_ref += er;
            let diff =
                |g: &[f64]| -> Vec<f64> { g.iter().zip(&g_exact[k]).map(|(a, b)| a - b).collect() };
            let (df, dr) = (diff(&g_fast[k]), diff(&g_ref[k]));
            if let Some((pf, pr)) = &last_err[k] {
                let cos = |a: &[f64], b: &[f64]| {
                    a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>()
                        / (norm(a) * norm(b)).max(1e-300)
                };
                consistency[k].0 += cos(&df, pf);
                consistency[k].1 += cos(&dr, pr);
            }
            last_err[k] = Some((df, dr));
            log_ratio += ratio.log10();
            fast_worse += usize::from(ef > er);
            entries += 1;
            println!(
                "{step:>4}  {name:<15}  {ef:>9.2e}  {er:>8.2e}  {ratio:>8.2}  {:>13.2e}",
                apart[k]
            );
            // Rounding, with the odd ReLU or pooling decision flipped in f32 (either path:
            // up to ~5e-4 seen), stays far below this; a path computing something else does not.
            assert!(
                ef < 1e-2,
                "step {step}, {name}: the fast path's gradient is off by {ef:e}"
            );
        }
        // Each model takes its own step (Adam, as training).
        let (xf, yf) = (fast.upload(&x).unwrap(), fast.upload(&y).unwrap());
        fast_model
            .train_step(&fast, &loss, &xf, &yf, batch)
            .unwrap();
        let (xr, yr) = (reference.upload(&x).unwrap(), reference.upload(&y).unwrap());
        ref_model
            .train_step(&reference, &loss, &xr, &yr, batch)
            .unwrap();
    }
    println!(
        "layer            error consistency, fast / reference (mean cosine of consecutive steps)"
    );
    for (name, (f, r)) in names.iter().zip(&consistency) {
        let n = (steps - 1) as f64;
        println!("{name:<15}  {:>+8.3} / {:>+8.3}", f / n, r / n);
    }
    let mean_log = log_ratio / entries as f64;
    println!(
        "{entries} gradients: errors summed fast {sum_fast:.3e} / reference {sum_ref:.3e}; \
         mean log10(fast/ref) {mean_log:+.3}; the fast path worse in {fast_worse}"
    );
    // Single entries vary both ways by 10-100x (a kink flipped in one path); fast paths that
    // are less accurate show in the sums and the mean ratio. (The other way is no fault: at
    // 64 px one reference step's flipped kink makes its sum 60x the fast paths'.)
    assert!(
        sum_fast < 2.0 * sum_ref && mean_log < 0.3,
        "the fast paths' gradients are less accurate than the reference's"
    );
}

/// Exact ties in the 2x2 max-pool windows after each convolution, per path, on the built-in
/// set (stripes: neighbouring pixels along a stripe see the same patch): the pool's backward
/// pass sends a tied window's gradient to its first maximum, so a path whose rounding breaks
/// such ties (Winograd computes the four pixels of a 2x2 output tile with different
/// transforms) routes the gradient to other pixels than one that keeps them (im2col).
/// Measured: 0-1 tied windows in 0.9-3.8 million per layer on either path (the generated
/// stripes carry noise), so tie-breaking does not explain the paths' difference on this
/// set; the test holds that (`--nocapture` prints the counts).
#[test]
fn pool_ties() {
    let (size, batch) = (224, 32);
    let set = synthetic::generate(64, size, 42);
    let plan = Plan::new(
        &REFERENCE_ARCH.parse::<Arch>().unwrap(),
        ImageShape {
            height: size,
            width: size,
            channels: 3,
        },
        2,
    )
    .unwrap();
    let (mut x, mut y) = (Vec::new(), Vec::new());
    set.fill_batch(&(0..batch).collect::<Vec<_>>(), &mut x, &mut y);
    let init = Model::new(&CpuBackend::<f32>::new(), plan.clone(), 42)
        .unwrap()
        .weights(&CpuBackend::<f32>::new())
        .unwrap();
    for (name, path) in [("fast", CpuPath::Auto), ("reference", CpuPath::Reference)] {
        let b = CpuBackend::<f32>::with_path(path);
        let mut m = Model::with_weights(&b, plan.clone(), &init).unwrap();
        m.keep_activations(); // the pools' inputs, which a fused first block would not keep
        let xb = b.upload(&x).unwrap();
        m.forward(&b, &xb, batch).unwrap();
        for (i, op) in plan.ops.iter().enumerate() {
            let focalflow::model::Layer::Pool { shape } = op else {
                continue;
            };
            // The pool's input: the convolution before it (after its ReLU).
            let a = m.activation(&b, i - 1, batch).unwrap();
            let (h, w, c) = (shape.in_h, shape.in_w, shape.channels);
            let (mut windows, mut tied) = (0usize, 0usize);
            for n in 0..batch {
                for oh in 0..h / 2 {
                    for ow in 0..w / 2 {
                        for ch in 0..c {
                            let at = |dh: usize, dw: usize| {
                                a[((n * h + 2 * oh + dh) * w + 2 * ow + dw) * c + ch]
                            };
                            let v = [at(0, 0), at(0, 1), at(1, 0), at(1, 1)];
                            let max = v.iter().copied().fold(f32::MIN, f32::max);
                            if max > 0.0 {
                                windows += 1;
                                tied += usize::from(v.iter().filter(|&&u| u == max).count() > 1);
                            }
                        }
                    }
                }
            }
            println!(
                "{name:<9} pool after op {}: {tied} of {windows} windows with a positive max have a tie ({:.1} %)",
                i - 1,
                100.0 * tied as f64 / windows as f64
            );
            assert!(
                tied * 10_000 < windows,
                "{name}: ties are common after op {}",
                i - 1
            );
        }
    }
}
