//! Gradient checks of the CPU backend by central finite differences, in f64.
//!
//! Every layer op (conv2d with valid/same padding and several kernel sizes, max-pool,
//! dense, ReLU, softmax), every loss and option, and the whole model's gradient (a whole
//! training step, Adam included) are compared with `(L(x+h) - L(x-h)) / 2h` of a scalar
//! objective. For an op with output `out` the objective is `L = sum(out * R)` for a fixed
//! random `R`, so that `dL/dout = R` and the analytic gradient is the op's backward pass
//! applied to `R`. Adam is checked against values worked out by hand.
//!
//! Shapes are odd on purpose (7x5, 7x9, 9x11, 7 -> 5; batches 1 and 3), so that an error
//! that only shows at an edge, in a floored pooling row or in an asymmetric padding is
//! not hidden by a size that happens to be a multiple of 2. Points are kept away from
//! kinks: every ReLU pre-activation is at least `KINK_MARGIN` away from 0 (resampled
//! otherwise), and the maximum of every pooling window is unique by more than `KINK_MARGIN`.
//!
//! Output buffers are filled with NaN before every backward call, so an element the
//! backend forgets to write fails the check instead of passing as a stale zero.

mod common;

use focalflow::loss::{Alpha, LossConfig};
use focalflow::model::{Arch, ImageShape, Layer, Model, Plan};
use focalflow::ops::loss::loss_forward_backward;
use focalflow::ops::loss::uncounted;
use focalflow::ops::prelude::*;
use focalflow::ops::{ConvShape, CpuBackend, DenseShape, Padding, PoolShape};
use focalflow::optim::Adam;
use focalflow::rng::Rng;

type Cpu = CpuBackend<f64>;

/// Finite-difference step.
const H: f64 = 1e-6;
/// Tolerance `|analytic - fd| <= ATOL + RTOL * |fd|`.
///
/// Why these values: the central difference has a truncation error of `h^2/6 * |L'''|`
/// (zero for conv, dense and pooling, which are linear in each input away from kinks;
/// below 1e-9 for softmax and the losses at the points used here, where `|L'''| < 1e4`)
/// and a rounding error of about `eps * |L| / h = 2.2e-16 * |L| / 1e-6 = 2.2e-10 * |L|`;
/// `|L|` stays below ~100 here, so the difference itself is good to ~2e-8 absolute.
/// `ATOL = 1e-7` covers that with a margin of 5, `RTOL = 1e-6` covers summation-order
/// differences of the larger gradients. A real mistake (a missed term, a transposed or
/// flipped kernel, an off-by-one padding, a wrong routing in pooling) changes a gradient
/// by a sizeable fraction of its magnitude (~1e-2 .. 1), five orders of magnitude above.
const ATOL: f64 = 1e-7;
const RTOL: f64 = 1e-6;
/// Minimal distance of a ReLU pre-activation from 0, and of a pooling window's maximum
/// from the window's next value: `H` times any weight (|w| <= ~2) moves them by < 1e-5.
const KINK_MARGIN: f64 = 1e-3;

fn close(a: f64, fd: f64) -> bool {
    (a - fd).abs() <= ATOL + RTOL * fd.abs()
}

fn uniform(rng: &mut Rng, n: usize, lo: f64, hi: f64) -> Vec<f64> {
    (0..n).map(|_| rng.range(lo, hi)).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Central difference of `objective` w.r.t. element `i` of `x`, with step `h`.
fn central_difference(
    x: &mut [f64],
    i: usize,
    h: f64,
    objective: &mut impl FnMut(&[f64]) -> f64,
) -> f64 {
    let orig = x[i];
    x[i] = orig + h;
    let plus = objective(x);
    x[i] = orig - h;
    let minus = objective(x);
    x[i] = orig;
    (plus - minus) / (2.0 * h)
}

/// Compares `analytic` (dL/dx) with central differences of `objective` at `x`, at the
/// positions `which`; asserts that some of the compared gradient is not zero, so that a
/// backward pass that writes zeros everywhere cannot pass vacuously.
fn check_at(
    what: &str,
    x: &[f64],
    analytic: &[f64],
    which: impl IntoIterator<Item = usize>,
    mut objective: impl FnMut(&[f64]) -> f64,
) {
    assert_eq!(x.len(), analytic.len(), "{what}: gradient length");
    let mut x = x.to_vec();
    let (mut checked, mut largest) = (0usize, 0f64);
    for i in which {
        let fd = central_difference(&mut x, i, H, &mut objective);
        let a = analytic[i];
        assert!(
            close(a, fd),
            "{what}[{i}]: analytic {a:e}, finite difference {fd:e} (diff {:e})",
            (a - fd).abs()
        );
        checked += 1;
        largest = largest.max(fd.abs());
    }
    assert!(checked > 0, "{what}: nothing checked");
    assert!(
        largest > 1e-3,
        "{what}: every checked gradient is ~0 ({largest:e}); the check would be vacuous"
    );
}

fn check(what: &str, x: &[f64], analytic: &[f64], objective: impl FnMut(&[f64]) -> f64) {
    check_at(what, x, analytic, 0..x.len(), objective);
}

// ---------------------------------------------------------------------------------------
// Convolution
// ---------------------------------------------------------------------------------------

fn conv_out(b: &Cpu, s: &ConvShape, x: &[f64], w: &[f64], bias: &[f64], relu: bool) -> Vec<f64> {
    let mut y = vec![f64::NAN; s.output_len()];
    b.conv2d_forward(s, &x.to_vec(), &w.to_vec(), &bias.to_vec(), &mut y, relu)
        .unwrap();
    y
}

/// Gradients of `sum(conv(x, w, b) * r)` (after ReLU if `relu`) w.r.t. x, w and b.
fn conv_grads(
    b: &Cpu,
    s: &ConvShape,
    x: &[f64],
    w: &[f64],
    bias: &[f64],
    r: &[f64],
    relu: bool,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut dy = r.to_vec();
    if relu {
        let y = conv_out(b, s, x, w, bias, true);
        b.relu_backward(s.output_len(), &y, &mut dy).unwrap();
    }
    let mut dx = vec![f64::NAN; s.input_len()];
    b.conv2d_backward_data(s, &dy, &w.to_vec(), &mut dx)
        .unwrap();
    let (mut dw, mut db) = (vec![f64::NAN; s.kernel_len()], vec![f64::NAN; s.out_c]);
    b.conv2d_backward_filter(s, &x.to_vec(), &dy, &mut dw, &mut db)
        .unwrap();
    (dx, dw, db)
}

#[allow(clippy::too_many_arguments)]
fn conv_shape(
    batch: usize,
    in_h: usize,
    in_w: usize,
    in_c: usize,
    out_c: usize,
    kernel: usize,
    padding: Padding,
) -> ConvShape {
    ConvShape {
        batch,
        in_h,
        in_w,
        in_c,
        out_c,
        kernel_h: kernel,
        kernel_w: kernel,
        padding,
    }
}

/// Draws x, w, b, R for `s` (resampling until every pre-activation is `KINK_MARGIN` away
/// from 0 when `relu`), checks dL/dx at `x_positions` (all when None) and dL/dw, dL/db
/// everywhere.
fn check_conv(name: &str, s: ConvShape, relu: bool, seed: u64, x_positions: Option<Vec<usize>>) {
    let b = Cpu::new();
    let mut rng = Rng::new(seed);
    let (x, w, bias) = (0..200)
        .map(|_| {
            let x = uniform(&mut rng, s.input_len(), -1.0, 1.0);
            let w = uniform(&mut rng, s.kernel_len(), -1.0, 1.0);
            let bias = uniform(&mut rng, s.out_c, -0.5, 0.5);
            (x, w, bias)
        })
        .find(|(x, w, bias)| {
            !relu
                || conv_out(&b, &s, x, w, bias, false)
                    .iter()
                    .all(|z| z.abs() > KINK_MARGIN)
        })
        .expect("a point away from the ReLU kink");
    let r = uniform(&mut rng, s.output_len(), -1.0, 1.0);
    let objective =
        |x: &[f64], w: &[f64], bias: &[f64]| dot(&conv_out(&b, &s, x, w, bias, relu), &r);
    let (dx, dw, db) = conv_grads(&b, &s, &x, &w, &bias, &r, relu);
    let xs = x_positions.unwrap_or_else(|| (0..x.len()).collect());
    check_at(&format!("{name} dx"), &x, &dx, xs, |xp| {
        objective(xp, &w, &bias)
    });
    check(&format!("{name} dw"), &w, &dw, |wp| {
        objective(&x, wp, &bias)
    });
    check(&format!("{name} db"), &bias, &db, |bp| {
        objective(&x, &w, bp)
    });
}

#[test]
fn conv_3x3_valid() {
    // 9x7 input, 3 -> 5 channels: a 7x5 output.
    check_conv(
        "conv k3 valid",
        conv_shape(2, 9, 7, 3, 5, 3, Padding::Valid),
        false,
        1,
        None,
    );
}

#[test]
fn conv_3x3_valid_batch_1_relu() {
    check_conv(
        "conv k3 valid relu b1",
        conv_shape(1, 9, 7, 3, 5, 3, Padding::Valid),
        true,
        2,
        None,
    );
}

/// Convolutions whose output has fewer than 16 pixels per image (7x5 valid 3x3 -> 5x3,
/// 7x5 valid 5x5 -> 3x1): the reference CNN meets them at small `--image-size` (28: the
/// last conv gives 3x3) and the whole-model check below does (its second conv gives 3x4).
/// Fails while `chunk_pixels` in src/ops/conv2d/cpu.rs clamps with `clamp(16, pixels)`,
/// which panics (`min > max`) when `pixels < 16`.
#[test]
fn conv_outputs_under_16_pixels() {
    check_conv(
        "conv k3 valid 7x5",
        conv_shape(2, 7, 5, 3, 5, 3, Padding::Valid),
        false,
        71,
        None,
    );
    check_conv(
        "conv k3 valid relu b1 7x5",
        conv_shape(1, 7, 5, 3, 5, 3, Padding::Valid),
        true,
        72,
        None,
    );
    check_conv(
        "conv k5 valid 7x5",
        conv_shape(2, 7, 5, 3, 5, 5, Padding::Valid),
        false,
        73,
        None,
    );
    check_conv(
        "conv k3 same 3x4",
        conv_shape(3, 3, 4, 3, 4, 3, Padding::Same),
        true,
        74,
        None,
    );
}

#[test]
fn conv_3x3_same() {
    check_conv(
        "conv k3 same",
        conv_shape(1, 7, 5, 3, 5, 3, Padding::Same),
        false,
        3,
        None,
    );
}

#[test]
fn conv_3x3_same_relu_batch_3() {
    // Batch 3 on (typically) 2 threads: tasks of 2 and 1 images.
    check_conv(
        "conv k3 same relu b3",
        conv_shape(3, 7, 5, 3, 5, 3, Padding::Same),
        true,
        4,
        None,
    );
}

#[test]
fn conv_2x2_same_asymmetric_padding() {
    // Keras "same" with an even kernel pads 0 before and 1 after.
    check_conv(
        "conv k2 same",
        conv_shape(3, 7, 5, 3, 5, 2, Padding::Same),
        false,
        5,
        None,
    );
}

#[test]
fn conv_4x4_same_asymmetric_padding() {
    // 1 before, 2 after.
    check_conv(
        "conv k4 same",
        conv_shape(2, 7, 5, 3, 5, 4, Padding::Same),
        false,
        6,
        None,
    );
}

#[test]
fn conv_5x5_valid_and_same() {
    // 11x9 with a 5x5 kernel, valid: a 7x5 output.
    check_conv(
        "conv k5 valid",
        conv_shape(2, 11, 9, 3, 5, 5, Padding::Valid),
        false,
        7,
        None,
    );
    check_conv(
        "conv k5 same",
        conv_shape(1, 7, 5, 3, 5, 5, Padding::Same),
        false,
        8,
        None,
    );
}

#[test]
fn conv_1x1_and_non_square_input() {
    check_conv(
        "conv k1",
        conv_shape(3, 5, 9, 4, 3, 1, Padding::Valid),
        true,
        9,
        None,
    );
}

#[test]
fn conv_several_im2col_chunks() {
    // The CPU backend runs im2col in chunks of 512 KiB: with a 3x3x16 patch in f64 that is
    // 524288 / (144 * 8) = 455 output pixels; a 23x21 "same" output has 483, so each image
    // is two chunks, the second one ragged (28 pixels). dx is checked on a subset (every
    // 17th element plus the whole last image row, 2 x 7728 inputs in all).
    let s = conv_shape(2, 23, 21, 16, 3, 3, Padding::Same);
    let per_image = s.in_h * s.in_w * s.in_c;
    let last_row = (per_image - s.in_w * s.in_c)..per_image;
    let positions: Vec<usize> = (0..s.input_len())
        .step_by(17)
        .chain(last_row.clone())
        .chain(last_row.map(|i| i + per_image))
        .collect();
    check_conv("conv chunks", s, true, 10, Some(positions));
}

// ---------------------------------------------------------------------------------------
// Max-pooling
// ---------------------------------------------------------------------------------------

fn pool_out(b: &Cpu, s: &PoolShape, x: &[f64]) -> Vec<f64> {
    let mut y = vec![f64::NAN; s.output_len()];
    b.maxpool2d_forward(s, &x.to_vec(), &mut y).unwrap();
    y
}

/// Values that are pairwise at least 6e-3 apart (a random permutation of a ramp with step
/// 1e-2, plus noise below 4e-3), centred on 0: every pooling window has a unique maximum
/// by a margin well above `KINK_MARGIN`.
fn distinct_values(rng: &mut Rng, n: usize) -> Vec<f64> {
    let mut ranks: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut ranks);
    ranks
        .into_iter()
        .map(|k| (k as f64 - n as f64 / 2.0) * 1e-2 + rng.range(0.0, 4e-3))
        .collect()
}

fn check_pool(name: &str, s: PoolShape, seed: u64) {
    let b = Cpu::new();
    let mut rng = Rng::new(seed);
    let x = distinct_values(&mut rng, s.input_len());
    let r = uniform(&mut rng, s.output_len(), -1.0, 1.0);
    let mut dx = vec![f64::NAN; s.input_len()];
    b.maxpool2d_backward(&s, &x, &r, &mut dx).unwrap();
    // Each output routes its gradient to exactly one input; the floored edge gets none.
    assert_eq!(
        dx.iter().filter(|&&d| d != 0.0).count(),
        r.iter().filter(|&&v| v != 0.0).count(),
        "{name}: one input per window gets the gradient"
    );
    check(&format!("{name} dx"), &x, &dx, |xp| {
        dot(&pool_out(&b, &s, xp), &r)
    });
}

fn pool_shape(batch: usize, in_h: usize, in_w: usize, channels: usize, size: usize) -> PoolShape {
    PoolShape {
        batch,
        in_h,
        in_w,
        channels,
        size,
    }
}

#[test]
fn maxpool_2_on_odd_sizes() {
    // 7x9 -> 3x4: the last row and column are in no window.
    check_pool("pool 2 b2", pool_shape(2, 7, 9, 3, 2), 11);
    check_pool("pool 2 b1", pool_shape(1, 7, 9, 3, 2), 12);
}

#[test]
fn maxpool_3_on_odd_sizes() {
    // 7x9 -> 2x3: row 6 is in no window, every column is.
    check_pool("pool 3 b3", pool_shape(3, 7, 9, 3, 3), 13);
    check_pool("pool 3 b1 11x10", pool_shape(1, 11, 10, 2, 3), 14);
}

#[test]
fn maxpool_ties_go_to_the_first_maximum() {
    // The documented rule for exact ties (a kink, so not a finite-difference matter): the
    // gradient goes to the first maximal input of the window in row-major order.
    let b = Cpu::new();
    let s = pool_shape(1, 3, 3, 2, 2);
    // Channel 0: window [5, 5; 5, 5] -> (0,0). Channel 1: [1, 7; 7, 2] -> (0,1).
    #[rustfmt::skip]
    let x = vec![
        5.0, 1.0,   5.0, 7.0,   9.0, 9.0,
        5.0, 7.0,   5.0, 2.0,   9.0, 9.0,
        9.0, 9.0,   9.0, 9.0,   9.0, 9.0,
    ];
    let mut dx = vec![f64::NAN; s.input_len()];
    b.maxpool2d_backward(&s, &x, &vec![3.0, 4.0], &mut dx)
        .unwrap();
    #[rustfmt::skip]
    let want = vec![
        3.0, 0.0,   0.0, 4.0,   0.0, 0.0,
        0.0, 0.0,   0.0, 0.0,   0.0, 0.0,
        0.0, 0.0,   0.0, 0.0,   0.0, 0.0,
    ];
    assert_eq!(dx, want);
    assert_eq!(pool_out(&b, &s, &x), vec![5.0, 7.0]);
}

#[test]
fn maxpool_with_a_window_of_size_0_is_an_error_not_a_panic() {
    let b = Cpu::new();
    let s = pool_shape(1, 4, 4, 1, 0);
    let x = vec![0.0; 16];
    let err = b.maxpool2d_forward(&s, &x, &mut vec![]).unwrap_err();
    assert!(err.to_string().contains("window of size 0"), "{err}");
    let err = b
        .maxpool2d_backward(&s, &x, &vec![], &mut vec![0.0; 16])
        .unwrap_err();
    assert!(err.to_string().contains("window of size 0"), "{err}");
}

#[test]
fn maxpool_relu_backward_is_the_pool_step_then_the_relu_step() {
    // The fused pass training uses after a ReLU conv must give exactly the two separate
    // steps: values from a coarse grid so that windows have ties, zero and negative
    // maxima (a ReLU output has zeros; the mask must zero those gradients).
    let b = Cpu::new();
    let mut rng = Rng::new(21);
    let mut masked_somewhere = false;
    for s in [
        pool_shape(2, 7, 9, 5, 2),
        pool_shape(1, 8, 6, 16, 2),
        pool_shape(3, 7, 9, 3, 3),
    ] {
        // Integers in -1..=3, about half of them 0 (as after a ReLU) and a few negative.
        let x: Vec<f64> = (0..s.input_len())
            .map(|_| {
                let relu_like = rng.range(-3.0, 4.0).floor().max(0.0);
                if rng.range(0.0, 1.0) < 0.1 {
                    relu_like - 1.0
                } else {
                    relu_like
                }
            })
            .collect();
        let dy = uniform(&mut rng, s.output_len(), -1.0, 1.0);
        let mut pool_only = vec![f64::NAN; s.input_len()];
        b.maxpool2d_backward(&s, &x, &dy, &mut pool_only).unwrap();
        let mut two_steps = pool_only.clone();
        b.relu_backward(s.input_len(), &x, &mut two_steps).unwrap();
        let mut fused = vec![f64::NAN; s.input_len()];
        b.maxpool2d_relu_backward(&s, &x, &dy, &mut fused).unwrap();
        assert_eq!(fused, two_steps, "{s:?}");
        masked_somewhere |= two_steps != pool_only;
    }
    assert!(
        masked_somewhere,
        "no window had a maximum <= 0: the mask went untested"
    );
}

// ---------------------------------------------------------------------------------------
// Dense and ReLU
// ---------------------------------------------------------------------------------------

fn dense_out(b: &Cpu, s: &DenseShape, x: &[f64], w: &[f64], bias: &[f64], relu: bool) -> Vec<f64> {
    let mut y = vec![f64::NAN; s.batch * s.outputs];
    b.dense_forward(s, &x.to_vec(), &w.to_vec(), &bias.to_vec(), &mut y, relu)
        .unwrap();
    y
}

fn check_dense(name: &str, s: DenseShape, relu: bool, seed: u64) {
    let b = Cpu::new();
    let mut rng = Rng::new(seed);
    let (x, w, bias) = (0..200)
        .map(|_| {
            (
                uniform(&mut rng, s.batch * s.inputs, -1.0, 1.0),
                uniform(&mut rng, s.inputs * s.outputs, -1.0, 1.0),
                uniform(&mut rng, s.outputs, -0.5, 0.5),
            )
        })
        .find(|(x, w, bias)| {
            !relu
                || dense_out(&b, &s, x, w, bias, false)
                    .iter()
                    .all(|z| z.abs() > KINK_MARGIN)
        })
        .expect("a point away from the ReLU kink");
    let r = uniform(&mut rng, s.batch * s.outputs, -1.0, 1.0);
    let mut dy = r.clone();
    if relu {
        let y = dense_out(&b, &s, &x, &w, &bias, true);
        assert!(
            y.contains(&0.0) && y.iter().any(|&v| v > 0.0),
            "{name}: both ReLU sides"
        );
        b.relu_backward(dy.len(), &y, &mut dy).unwrap();
    }
    let mut dx = vec![f64::NAN; x.len()];
    let (mut dw, mut db) = (vec![f64::NAN; w.len()], vec![f64::NAN; bias.len()]);
    b.dense_backward(&s, &x, &w, &dy, Some(&mut dx), &mut dw, &mut db)
        .unwrap();
    // Without dx the parameter gradients are the same.
    let (mut dw2, mut db2) = (vec![f64::NAN; w.len()], vec![f64::NAN; bias.len()]);
    b.dense_backward(&s, &x, &w, &dy, None, &mut dw2, &mut db2)
        .unwrap();
    assert_eq!((&dw, &db), (&dw2, &db2), "{name}: dx None");
    let objective =
        |x: &[f64], w: &[f64], bias: &[f64]| dot(&dense_out(&b, &s, x, w, bias, relu), &r);
    check(&format!("{name} dx"), &x, &dx, |xp| {
        objective(xp, &w, &bias)
    });
    check(&format!("{name} dw"), &w, &dw, |wp| {
        objective(&x, wp, &bias)
    });
    check(&format!("{name} db"), &bias, &db, |bp| {
        objective(&x, &w, bp)
    });
}

fn dense_shape(batch: usize, inputs: usize, outputs: usize) -> DenseShape {
    DenseShape {
        batch,
        inputs,
        outputs,
    }
}

#[test]
fn dense_7_to_5() {
    check_dense("dense b3", dense_shape(3, 7, 5), false, 21);
    check_dense("dense b1", dense_shape(1, 7, 5), false, 22);
}

#[test]
fn dense_7_to_5_relu() {
    check_dense("dense relu b3", dense_shape(3, 7, 5), true, 23);
    check_dense("dense relu b1", dense_shape(1, 7, 5), true, 24);
    check_dense("dense relu b5 13->9", dense_shape(5, 13, 9), true, 25);
}

#[test]
fn relu() {
    // ReLU on its own: forward through a dense layer with the identity kernel and no bias
    // (y = relu(x)), backward through `relu_backward`.
    let b = Cpu::new();
    let (rows, n) = (3, 7);
    let mut rng = Rng::new(31);
    // Away from the kink: |x| in [0.1, 1).
    let x: Vec<f64> = (0..rows * n)
        .map(|_| {
            let v = rng.range(0.1, 1.0);
            if rng.uniform() < 0.5 { -v } else { v }
        })
        .collect();
    let r = uniform(&mut rng, rows * n, -1.0, 1.0);
    let s = dense_shape(rows, n, n);
    let eye: Vec<f64> = (0..n * n)
        .map(|i| if i / n == i % n { 1.0 } else { 0.0 })
        .collect();
    let zero = vec![0.0; n];
    let y = dense_out(&b, &s, &x, &eye, &zero, true);
    let mut dx = r.clone();
    b.relu_backward(dx.len(), &y, &mut dx).unwrap();
    check("relu dx", &x, &dx, |xp| {
        dot(&dense_out(&b, &s, xp, &eye, &zero, true), &r)
    });

    // TF's convention at exactly 0: zero gradient. And the parallel path (long buffers).
    let len = 40_001;
    let y: Vec<f64> = (0..len).map(|i| [0.0, 1.5, -0.0, 2.0][i % 4]).collect();
    let mut dy = vec![7.0; len];
    b.relu_backward(len, &y, &mut dy).unwrap();
    for (i, &d) in dy.iter().enumerate() {
        assert_eq!(d, if y[i] > 0.0 { 7.0 } else { 0.0 }, "relu_backward[{i}]");
    }
}

// ---------------------------------------------------------------------------------------
// Softmax
// ---------------------------------------------------------------------------------------

fn check_softmax(name: &str, rows: usize, cols: usize, offset: f64, seed: u64) {
    let b = Cpu::new();
    let mut rng = Rng::new(seed);
    let z = uniform(&mut rng, rows * cols, offset - 2.0, offset + 2.0);
    let r = uniform(&mut rng, rows * cols, -1.0, 1.0);
    let softmax = |z: &[f64]| {
        let mut p = vec![f64::NAN; rows * cols];
        b.softmax_forward(rows, cols, &z.to_vec(), &mut p).unwrap();
        p
    };
    let p = softmax(&z);
    for row in p.chunks(cols) {
        assert!(
            (row.iter().sum::<f64>() - 1.0).abs() < 1e-12,
            "{name}: rows sum to 1"
        );
    }
    let mut dz = vec![f64::NAN; rows * cols];
    b.softmax_backward(rows, cols, &p, &r, &mut dz).unwrap();
    check(&format!("{name} dz"), &z, &dz, |zp| dot(&softmax(zp), &r));
}

#[test]
fn softmax() {
    check_softmax("softmax 3x5", 3, 5, 0.0, 41);
    check_softmax("softmax 1x7", 1, 7, 0.0, 42);
    check_softmax("softmax 3x2", 3, 2, 0.0, 43);
    // Large logits (exp(1000) overflows unless the maximum is subtracted first); the ulp of
    // 1000 (1.1e-13) makes the effective step exact to 1e-7 relative, inside RTOL.
    check_softmax("softmax 2x3 large", 2, 3, 1000.0, 44);
}

// ---------------------------------------------------------------------------------------
// Losses
// ---------------------------------------------------------------------------------------

fn one_hot(rng: &mut Rng, batch: usize, classes: usize) -> Vec<f64> {
    let mut y = vec![0.0; batch * classes];
    for row in 0..batch {
        y[row * classes + rng.below(classes)] = 1.0;
    }
    y
}

fn loss_value(cfg: &LossConfig, y: &[f64], pred: &[f64], batch: usize, classes: usize) -> f64 {
    let value = Cpu::new()
        .loss(cfg, batch, classes, &y.to_vec(), &pred.to_vec(), None, None)
        .map(uncounted)
        .unwrap();
    let direct = loss_forward_backward(cfg, y, pred, batch, classes, None).unwrap();
    assert_eq!(value, direct, "the backend's loss is loss_forward_backward");
    value
}

fn loss_grad(cfg: &LossConfig, y: &[f64], pred: &[f64], batch: usize, classes: usize) -> Vec<f64> {
    let mut g = vec![f64::NAN; pred.len()];
    Cpu::new()
        .loss(
            cfg,
            batch,
            classes,
            &y.to_vec(),
            &pred.to_vec(),
            Some(&mut g),
            None,
        )
        .map(uncounted)
        .unwrap();
    g
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

fn every_loss_config(classes: usize) -> Vec<LossConfig> {
    let alphas = Alpha::PerClass(
        (0..classes)
            .map(|c| 0.15 + 0.7 * c as f64 / classes as f64)
            .collect(),
    );
    let mut configs = Vec::new();
    for from_logits in [false, true] {
        configs.extend([
            focal(Alpha::Scalar(0.25), 2.0, 0.0, 0.0, from_logits),
            focal(alphas.clone(), 0.5, 0.01, 0.02, from_logits),
            focal(alphas.clone(), 0.0, 0.0, 0.03, from_logits),
            focal(Alpha::Scalar(1.0), 3.5, 0.02, 0.0, from_logits),
            LossConfig::CalibratedMse {
                facture: 0.1,
                from_logits,
            },
            LossConfig::CalibratedMse {
                facture: 0.0,
                from_logits,
            },
            LossConfig::KerasFocal {
                alpha: Alpha::Scalar(0.25),
                gamma: 2.0,
                label_smoothing: 0.0,
                from_logits,
            },
            LossConfig::KerasFocal {
                alpha: alphas.clone(),
                gamma: 0.5,
                label_smoothing: 0.1,
                from_logits,
            },
            LossConfig::CrossEntropy {
                label_smoothing: 0.0,
                from_logits,
            },
            LossConfig::CrossEntropy {
                label_smoothing: 0.2,
                from_logits,
            },
            LossConfig::Flsd53 { from_logits },
            LossConfig::DualFocal {
                gamma: 2.0,
                from_logits,
            },
        ]);
        configs.extend(common::loss_configs::calibration_losses(
            classes,
            from_logits,
        ));
    }
    configs
}

#[test]
fn every_loss_and_option() {
    for (batch, classes, seed) in [(3, 5, 51), (1, 2, 52), (4, 3, 53)] {
        let mut rng = Rng::new(seed);
        let y = one_hot(&mut rng, batch, classes);
        // Probabilities well inside the clip bounds (rows need not sum to 1: the focal
        // loss takes them as they are, keras-focal and ce divide by the row sum) and
        // logits of moderate size.
        let probs = uniform(&mut rng, batch * classes, 0.05, 0.9);
        let logits = uniform(&mut rng, batch * classes, -3.0, 3.0);
        for cfg in every_loss_config(classes) {
            let pred = if cfg.from_logits() { &logits } else { &probs };
            let g = loss_grad(&cfg, &y, pred, batch, classes);
            let name = format!("{} b{batch} c{classes}", cfg.describe());
            check(&name, pred, &g, |p| loss_value(&cfg, &y, p, batch, classes));
        }
    }
}

#[test]
fn losses_from_saturated_logits() {
    // Confident rows, right and wrong (|logit gap| up to 30): finite gradients that match
    // the finite differences; the confidently wrong row keeps a large gradient.
    let (batch, classes) = (3, 3);
    #[rustfmt::skip]
    let logits = vec![
        15.0, -15.0, 0.5,  // confident, right (class 0)
        -12.0, 18.0, 1.0,  // confident, wrong (true class 0)
        0.3, -0.2, 0.1,
    ];
    #[rustfmt::skip]
    let y = vec![
        1.0, 0.0, 0.0,
        1.0, 0.0, 0.0,
        0.0, 0.0, 1.0,
    ];
    for cfg in every_loss_config(classes)
        .into_iter()
        .filter(LossConfig::from_logits)
    {
        let g = loss_grad(&cfg, &y, &logits, batch, classes);
        assert!(g.iter().all(|v| v.is_finite()), "{}: {g:?}", cfg.describe());
        check(&cfg.describe(), &logits, &g, |z| {
            loss_value(&cfg, &y, z, batch, classes)
        });
    }
}

#[test]
fn focal_clip_edges_have_zero_gradient() {
    // `focal` on probabilities clips to [1e-7, 1-1e-7] and, like tf.clip_by_value, passes
    // no gradient strictly outside, for the L1/L2 terms too. Entries at 1e-8 and 1-1e-8
    // are outside by more than a step of 1e-9, so both sides of the difference are clipped
    // and the finite difference is exactly 0; the other entries are checked as usual.
    // Clipped entries on the true class (rows 0, 1) and on other classes (rows 2, 3).
    let (batch, classes) = (4, 3);
    #[rustfmt::skip]
    let pred = vec![
        1e-8, 0.3, 0.6,
        0.2, 1.0 - 1e-8, 0.45,
        0.25, 0.35, 1e-8,
        1.0 - 1e-8, 0.4, 0.15,
    ];
    #[rustfmt::skip]
    let y = vec![
        1.0, 0.0, 0.0,
        0.0, 1.0, 0.0,
        0.0, 1.0, 0.0,
        0.0, 0.0, 1.0,
    ];
    let clipped = [0usize, 4, 8, 9];
    for cfg in [
        focal(Alpha::Scalar(0.25), 2.0, 0.0, 0.0, false),
        focal(Alpha::PerClass(vec![0.2, 0.5, 0.3]), 0.5, 0.01, 0.02, false),
    ] {
        let name = cfg.describe();
        let g = loss_grad(&cfg, &y, &pred, batch, classes);
        let mut objective = |p: &[f64]| loss_value(&cfg, &y, p, batch, classes);
        for &i in &clipped {
            assert_eq!(g[i], 0.0, "{name}: clipped entry {i}");
            let fd = central_difference(&mut pred.clone(), i, 1e-9, &mut objective);
            assert_eq!(fd, 0.0, "{name}: finite difference at clipped entry {i}");
        }
        let inside = (0..pred.len()).filter(|i| !clipped.contains(i));
        check_at(&name, &pred, &g, inside, objective);
    }
}

#[test]
fn keras_probability_path_clip_edges() {
    // keras-focal and ce divide each row by its sum `s`, then clip `o = p/s`. A clipped
    // `o_j` passes no gradient itself, but `p_j` still moves every other `o_c` through `s`,
    // so dL/dp_j = -sum_c dL/do_c * o_c / s is not zero. p_j = 5e-8 with a step of 4e-8
    // stays clipped on both sides (o_j < 9e-8 < 1e-7); the rounding error of that step is
    // 2.2e-16 * |L| / 4e-8 < 2e-8 here, inside ATOL.
    let (batch, classes) = (2, 3);
    #[rustfmt::skip]
    let pred = vec![
        0.55, 5e-8, 0.45,
        0.2, 0.3, 0.5,
    ];
    #[rustfmt::skip]
    let y = vec![
        0.0, 0.0, 1.0,
        0.0, 1.0, 0.0,
    ];
    for cfg in [
        LossConfig::CrossEntropy {
            label_smoothing: 0.0,
            from_logits: false,
        },
        LossConfig::CrossEntropy {
            label_smoothing: 0.3,
            from_logits: false,
        },
        LossConfig::KerasFocal {
            alpha: Alpha::Scalar(0.25),
            gamma: 2.0,
            label_smoothing: 0.1,
            from_logits: false,
        },
    ] {
        let name = cfg.describe();
        let g = loss_grad(&cfg, &y, &pred, batch, classes);
        let mut objective = |p: &[f64]| loss_value(&cfg, &y, p, batch, classes);
        let fd = central_difference(&mut pred.clone(), 1, 4e-8, &mut objective);
        assert!(
            fd.abs() > 1e-2,
            "{name}: the normalisation carries a gradient"
        );
        assert!(
            close(g[1], fd),
            "{name}: clipped entry, analytic {:e}, fd {fd:e}",
            g[1]
        );
        check_at(&name, &pred, &g, [0, 2, 3, 4, 5], objective);
    }
    // A row that is clipped everywhere (o = [1-2e-9, 1e-9, 1e-9]) has no gradient at all:
    // the original's trap for a confident sample, here exact.
    let pred = vec![1.0, 1e-9, 1e-9];
    let y = vec![0.0, 1.0, 0.0];
    let cfg = LossConfig::default_cross_entropy();
    let g = loss_grad(&cfg, &y, &pred, 1, 3);
    assert_eq!(g, vec![0.0; 3], "a fully clipped row");
    let mut objective = |p: &[f64]| loss_value(&cfg, &y, p, 1, 3);
    for i in 0..3 {
        let fd = central_difference(&mut pred.clone(), i, 1e-10, &mut objective);
        assert_eq!(fd, 0.0, "fully clipped row, entry {i}");
    }
}

// ---------------------------------------------------------------------------------------
// The whole model: a whole training step
// ---------------------------------------------------------------------------------------

/// The smallest distance of the model's state at `x` from a kink: of every ReLU
/// pre-activation from 0, and of every pooling window's maximum from the window's next
/// value (windows whose maximum is 0, i.e. all ReLU outputs dead, are smooth: skipped).
fn kink_margin(b: &Cpu, model: &mut Model<Cpu>, x: &[f64], batch: usize) -> f64 {
    model.forward(b, &x.to_vec(), batch).unwrap();
    let mut margin = f64::INFINITY;
    for (i, op) in model.plan.ops.clone().iter().enumerate() {
        let input = if i == 0 {
            x.to_vec()
        } else {
            model.activation(b, i - 1, batch).unwrap()
        };
        match *op {
            Layer::Conv { shape, relu, param } => {
                if relu {
                    let s = ConvShape { batch, ..shape };
                    let w = &model.params[param].value;
                    let bias = &model.params[param + 1].value;
                    let z = conv_out(b, &s, &input, w, bias, false);
                    margin = z.iter().fold(margin, |m, v| m.min(v.abs()));
                }
            }
            Layer::Dense { shape, relu, param } => {
                if relu {
                    let s = DenseShape { batch, ..shape };
                    let w = &model.params[param].value;
                    let bias = &model.params[param + 1].value;
                    let z = dense_out(b, &s, &input, w, bias, false);
                    margin = z.iter().fold(margin, |m, v| m.min(v.abs()));
                }
            }
            Layer::Pool { shape } => {
                let c = shape.channels;
                for n in 0..batch {
                    for oh in 0..shape.out_h() {
                        for ow in 0..shape.out_w() {
                            for ch in 0..c {
                                let mut vals: Vec<f64> = (0..shape.size * shape.size)
                                    .map(|k| {
                                        let (h, w) = (
                                            oh * shape.size + k / shape.size,
                                            ow * shape.size + k % shape.size,
                                        );
                                        input[((n * shape.in_h + h) * shape.in_w + w) * c + ch]
                                    })
                                    .collect();
                                vals.sort_by(|a, b| b.total_cmp(a));
                                if vals[0] != 0.0 && vals.len() > 1 {
                                    margin = margin.min(vals[0] - vals[1]);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    margin
}

struct ModelCase {
    plan: Plan,
    weights: Vec<Vec<f64>>,
    x: Vec<f64>,
    y: Vec<f64>,
    batch: usize,
}

/// `c3,p,c4k3s,p,d5` on `height x width x 2` images, 3 classes, batch 3. On 9x11: conv
/// 3x3 valid -> 7x9x3, pool -> 3x4x3 (floored), conv 3x3 same -> 3x4x4, pool -> 1x2x4
/// (floored), dense 8 -> 5, dense 5 -> 3, softmax. On 13x15: 11x13x3, 5x6x3, 5x6x4,
/// 2x3x4, dense 24 -> 5 -> 3. Random weights and biases (not Keras' zero biases, so that
/// every bias gradient is exercised), resampled until the point is away from every kink.
fn model_case(seed: u64, height: usize, width: usize) -> ModelCase {
    let b = Cpu::new();
    let arch: Arch = "c3,p,c4k3s,p,d5".parse().unwrap();
    let input = ImageShape {
        height,
        width,
        channels: 2,
    };
    let plan = Plan::new(&arch, input, 3).unwrap();
    let batch = 3;
    let mut rng = Rng::new(seed);
    for _ in 0..500 {
        let weights: Vec<Vec<f64>> = plan
            .params
            .iter()
            .map(|p| {
                if p.shape.len() == 1 {
                    uniform(&mut rng, p.len(), -0.2, 0.2)
                } else {
                    uniform(&mut rng, p.len(), -0.8, 0.8)
                }
            })
            .collect();
        let x = uniform(&mut rng, batch * input.len(), -1.0, 1.0);
        let mut model = Model::with_weights(&b, plan.clone(), &weights).unwrap();
        if kink_margin(&b, &mut model, &x, batch) > KINK_MARGIN {
            let y = one_hot(&mut rng, batch, 3);
            return ModelCase {
                plan: plan.clone(),
                weights,
                x,
                y,
                batch,
            };
        }
    }
    panic!("no point away from the kinks in 500 draws");
}

/// The loss as a user of the library computes it: forward, then `loss_forward_backward`
/// on the probabilities (or on the logits for a from-logits loss).
fn model_loss(b: &Cpu, model: &mut Model<Cpu>, cfg: &LossConfig, c: &ModelCase) -> f64 {
    model.forward(b, &c.x, c.batch).unwrap();
    let pred = if cfg.from_logits() {
        model.logits(b, c.batch).unwrap()
    } else {
        model.probabilities(b, c.batch).unwrap()
    };
    loss_forward_backward(cfg, &c.y, &pred, c.batch, model.plan.classes, None).unwrap()
}

fn model_configs() -> Vec<LossConfig> {
    vec![
        LossConfig::default_focal(),
        LossConfig::CrossEntropy {
            label_smoothing: 0.0,
            from_logits: true,
        },
        focal(Alpha::PerClass(vec![0.2, 0.5, 0.3]), 1.5, 0.01, 0.01, true),
        LossConfig::KerasFocal {
            alpha: Alpha::Scalar(0.25),
            gamma: 2.0,
            label_smoothing: 0.1,
            from_logits: false,
        },
        // A sigmoid head: through sigmoid_backward, and fused from the logits.
        LossConfig::SigmoidFocal {
            alpha: Alpha::Scalar(0.25),
            gamma: 2.0,
            from_logits: false,
        },
        LossConfig::SigmoidFocal {
            alpha: Alpha::PerClass(vec![0.2, -1.0, 0.6]),
            gamma: 1.5,
            from_logits: true,
        },
    ]
}

/// Every parameter gradient of `Model::backward` against finite differences of the loss
/// computed by forward + `loss_forward_backward`, for several losses.
fn check_whole_model(case: &ModelCase) {
    let b = Cpu::new();
    for cfg in model_configs() {
        let name = cfg.describe();
        let plan = case.plan.clone().with_output(cfg.output());
        let mut model = Model::with_weights(&b, plan.clone(), &case.weights).unwrap();
        for p in &mut model.params {
            p.grad.fill(f64::NAN);
        }
        model.forward(&b, &case.x, case.batch).unwrap();
        let loss = model
            .backward(&b, &cfg, &case.x, &case.y, case.batch)
            .unwrap();
        let grads = model.gradients(&b).unwrap();
        let reference = model_loss(&b, &mut model, &cfg, case);
        assert!(
            (loss - reference).abs() <= 1e-12 * reference.abs(),
            "{name}: backward's loss {loss} vs forward + loss {reference}"
        );
        for (k, spec) in case.plan.params.clone().iter().enumerate() {
            let what = format!("{name}: {}", spec.name);
            let mut fd_model = Model::with_weights(&b, plan.clone(), &case.weights).unwrap();
            check(&what, &case.weights[k], &grads[k], |wk| {
                fd_model.params[k].value.copy_from_slice(wk);
                model_loss(&b, &mut fd_model, &cfg, case)
            });
        }
    }
}

/// The brief's plan on 9x11x2: fails while convolutions with outputs under 16 pixels panic
/// (see `conv_outputs_under_16_pixels`).
#[test]
fn whole_model_gradient() {
    check_whole_model(&model_case(61, 9, 11));
}

#[test]
fn whole_model_gradient_13x15() {
    check_whole_model(&model_case(63, 13, 15));
}

#[test]
fn whole_training_step() {
    // train_step = forward + backward (checked above) + one Adam update of every parameter
    // with the model's optimizer (Keras' defaults: lr 1e-3, beta1 0.9, beta2 0.999,
    // epsilon 1e-7). At t = 1, m = 0.1 g and v = 0.001 g^2.
    let b = Cpu::new();
    let case = model_case(62, 13, 15);
    let cfg = LossConfig::default_focal();
    let mut model = Model::with_weights(&b, case.plan.clone(), &case.weights).unwrap();
    model.forward(&b, &case.x, case.batch).unwrap();
    let probs = model.probabilities(&b, case.batch).unwrap();
    let loss = model
        .backward(&b, &cfg, &case.x, &case.y, case.batch)
        .unwrap();
    let grads = model.gradients(&b).unwrap();

    let mut stepped = Model::with_weights(&b, case.plan.clone(), &case.weights).unwrap();
    let out = stepped
        .train_step(&b, &cfg, &case.x, &case.y, case.batch)
        .unwrap();
    assert_eq!(out.loss, loss);
    assert_eq!(
        out.probs, probs,
        "train_step reports the probabilities before the update"
    );
    assert_eq!(stepped.optimizer.iterations, 1);
    assert_eq!(stepped.gradients(&b).unwrap(), grads);

    let step_size = 1e-3f32 as f64 * (1.0 - 0.999f32 as f64).sqrt() / (1.0 - 0.9f32 as f64);
    let new = stepped.weights(&b).unwrap();
    for (k, spec) in case.plan.params.iter().enumerate() {
        for (j, (&g, &after)) in grads[k].iter().zip(&new[k]).enumerate() {
            let (m, v) = ((1.0 - 0.9) * g, (1.0 - 0.999) * g * g);
            let want = case.weights[k][j] - step_size * m / (v.sqrt() + 1e-7);
            assert!(
                (after - want).abs() <= 1e-15,
                "{}[{j}]: after the step {after}, expected {want}",
                spec.name
            );
        }
        assert_ne!(new[k], case.weights[k], "{}: the step moved it", spec.name);
    }
}

// ---------------------------------------------------------------------------------------
// Adam, worked out by hand
// ---------------------------------------------------------------------------------------

#[test]
fn adam_two_steps_by_hand() {
    // Hyperparameters exactly representable in f32 (Keras keeps lr and the betas of the
    // bias correction in f32), and an epsilon large enough to matter:
    //   lr = 0.5, beta1 = 0.5, beta2 = 0.9375 (15/16), epsilon = 0.25.
    // Keras 3: m = beta1 m + (1-beta1) g; v = beta2 v + (1-beta2) g^2;
    //          step = lr * sqrt(1 - beta2^t) / (1 - beta1^t);  p -= step * m / (sqrt(v) + eps).
    let b = Cpu::new();
    let mut adam = Adam {
        learning_rate: 0.5,
        beta1: 0.5,
        beta2: 0.9375,
        epsilon: 0.25,
        iterations: 0,
    };
    let mut p = vec![1.0, 2.0, 3.0];
    let (mut m, mut v) = (vec![0.0; 3], vec![0.0; 3]);

    // Step 1, g = [4, -8, 0]:
    //   m = 0.5 * g            = [2, -4, 0]
    //   v = g^2 / 16           = [1, 4, 0]      sqrt(v) + eps = [1.25, 2.25, 0.25]
    //   step = 0.5 * sqrt(1 - 15/16) / (1 - 0.5) = 0.5 * 0.25 / 0.5 = 0.25
    //   p = [1 - 0.25*2/1.25, 2 + 0.25*4/2.25, 3 - 0] = [0.6, 22/9, 3]
    // (the zero gradient gives a zero step: epsilon keeps 0/0 away).
    let s1 = adam.next_step::<f64>();
    assert_eq!(s1.step_size, 0.25);
    assert_eq!(s1.one_minus_beta1, 0.5);
    assert_eq!(s1.one_minus_beta2, 0.0625);
    assert_eq!(s1.epsilon, 0.25);
    b.adam_update(3, &s1, &mut p, &vec![4.0, -8.0, 0.0], &mut m, &mut v, None)
        .unwrap();
    assert_eq!(m, vec![2.0, -4.0, 0.0]);
    assert_eq!(v, vec![1.0, 4.0, 0.0]);
    let want1 = [0.6, 22.0 / 9.0, 3.0];
    for i in 0..3 {
        assert!((p[i] - want1[i]).abs() < 1e-15, "step 1, p[{i}] = {}", p[i]);
    }
    // What the two common mistakes would give for p[0] at step 1 (so this test tells
    // them apart): epsilon added to the bias-corrected sqrt(v_hat) (the paper's form):
    //   m_hat = 2/0.5 = 4, sqrt(v_hat) = sqrt(1/(1/16)) = 4: 1 - 0.5*4/(4+0.25) = 0.5294;
    // epsilon inside the square root: 1 - 0.25*2/sqrt(1+0.25) = 0.5528.

    // Step 2, g = [-2, 0, 6]:
    //   m = 0.5 m + 0.5 g               = [0, -2, 3]
    //   v = 15/16 v + g^2/16            = [15/16 + 4/16, 60/16, 36/16] = [1.1875, 3.75, 2.25]
    //   step = 0.5 * sqrt(1 - (15/16)^2) / (1 - 0.25) = 0.5 * (sqrt(31)/16) / 0.75
    //        = sqrt(31)/24 = 0.2319901817845842
    //   p[0] = 0.6 - step*0/(...)                        = 0.6
    //   p[1] = 22/9 + step*2/(sqrt(3.75) + 0.25)         = 2.444444 + 0.463980/2.186492
    //                                                    = 2.656647568415437
    //   p[2] = 3 - step*3/(1.5 + 0.25) = 3 - sqrt(31)/14 = 2.602302545512141
    let s2 = adam.next_step::<f64>();
    assert!((s2.step_size - 31f64.sqrt() / 24.0).abs() < 1e-16);
    assert!((s2.step_size - 0.2319901817845842).abs() < 1e-15);
    b.adam_update(3, &s2, &mut p, &vec![-2.0, 0.0, 6.0], &mut m, &mut v, None)
        .unwrap();
    assert_eq!(m, vec![0.0, -2.0, 3.0]);
    assert_eq!(v, vec![1.1875, 3.75, 2.25]);
    let want2 = [0.6, 2.656_647_568_415_437, 2.602_302_545_512_141];
    for i in 0..3 {
        assert!((p[i] - want2[i]).abs() < 1e-15, "step 2, p[{i}] = {}", p[i]);
    }
    assert_eq!(adam.iterations, 2);
}

#[test]
fn adam_keras_defaults_first_step() {
    // Keras' defaults (lr 1e-3, beta1 0.9, beta2 0.999, epsilon 1e-7), first step:
    //   m = 0.1 g, v = 0.001 g^2, step = lr * sqrt(0.001) / 0.1 = 0.316 lr, so
    //   dp = -0.316 lr * 0.1 g / (0.0316 |g| + 1e-7) = -lr sign(g) / (1 + 3.16e-6 / |g|).
    // For |g| >> 3e-6 every parameter moves by lr; for a tiny gradient g = 1e-9 the
    // epsilon added to sqrt(v) (not to sqrt(v_hat)) dominates:
    //   dp = -lr * g / (g + eps / sqrt(1 - beta2)) = -1e-3 * 1e-9 / (1e-9 + 3.162e-6)
    //      = -3.161e-7,
    // where the paper's form (eps added to sqrt(v_hat) = 1e-9) would give -9.9e-6.
    let b = Cpu::new();
    let mut adam = Adam::default();
    let step = adam.next_step::<f64>();
    let g = vec![2.0, -0.5, 1e-9];
    let mut p = vec![0.0; 3];
    let (mut m, mut v) = (vec![0.0; 3], vec![0.0; 3]);
    b.adam_update(3, &step, &mut p, &g, &mut m, &mut v, None)
        .unwrap();
    let lr = 1e-3f32 as f64;
    // (Within 1e-4: epsilon takes 3.16e-6/|g| off, and Keras' f32 betas in the bias
    // correction another ~6e-6.)
    assert!((p[0] + lr).abs() < 1e-4 * lr, "{}", p[0]);
    assert!((p[1] - lr).abs() < 1e-4 * lr, "{}", p[1]);
    let sqrt_corr = (1.0 - 0.999f32 as f64).sqrt(); // sqrt(1 - beta2) = 0.0316
    let want = -lr * 1e-9 / (1e-9 + 1e-7 / sqrt_corr);
    assert!(
        (p[2] - want).abs() < 1e-4 * want.abs(),
        "{} vs {want}",
        p[2]
    );
    assert!((p[2] - (-3.161e-7)).abs() < 1e-10, "{}", p[2]);
}
