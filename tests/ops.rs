//! The op test matrix, in the spirit of ggml's `test-backend-ops`: every op on every target,
//! each against the CPU backend in f64 (the reference).
//!
//! - **Targets** ([`op_matrix!`]'s list): the CPU in f32, with its fast paths (direct,
//!   Winograd, streaming dense; they apply to the shapes with 16k channels and 64k outputs
//!   below) and on its reference path (im2col + GEMM); the CUDA backend on the emulator
//!   (cuda-emu: the same kernel sources and host code, run on the CPU) under the forward,
//!   reverse and random thread schedules; its naive reference kernels; and the GPU (tiled
//!   and naive) when one is present. Without a GPU the GPU tests print `SKIPPED (no GPU):
//!   ...` to stderr and pass; with `FOCALFLOW_REQUIRE_GPU=1` they fail instead (the GPU
//!   check script sets it). Every tile shape and load width of the tiled kernels is forced
//!   one by one on the emulator too ([`tile_tests!`]).
//! - **Modes**: compare (each op body below: the target's result against the f64 reference
//!   within a bound derived from the op's arithmetic); gradient (`gradient_check`: the
//!   target's backward pass against a central difference of its own forward pass, through
//!   a whole model; each op's own finite-difference check in f64 is tests/gradcheck.rs);
//!   perf (`perf` below, ignored, and `cargo bench --bench ops`: every op timed on every
//!   target present, tests/ops/perf.rs).
//! - One test body per op, generic over the backend: a new op is one body and one line in
//!   the op list, a new target one runner and one line in the target list.
//!
//! Shapes are small but odd (never multiples of the tile sizes), with batch 1, 2 and 5
//! channels/classes, 1x1 and non-square kernels, same and valid padding, and sizes that
//! leave a floored pooling edge. Every output buffer is longer than the op needs and filled
//! with NaN before the launch: an element the op fails to write shows as NaN in the
//! prefix, one it writes beyond the prefix as a non-NaN in the tail.
//!
//! Tolerances. A sum of K products computed in f32 in any order (any tiling, split-K, FMA or
//! not) is within gamma_K * sum|a_i * b_i| of the exact value, gamma_K = K*u/(1-K*u) with
//! u = 2^-24 (Higham, Accuracy and Stability of Numerical Algorithms, 3.1); the f64
//! reference is within 2^-29 K of it, so the target is within about K * u * sum|a_i b_i| of
//! the reference. The tests compute sum|a_i b_i| per output element by running the reference
//! on the absolute values of the inputs, and allow (K + 2) * EPSILON times it (EPSILON =
//! 2^-23 = 2u: a factor 2 of margin, +2 for the bias addition and the rounding of the
//! inputs to f32). Max-pooling, the ReLU gradient and copies do no arithmetic: they must
//! match exactly. Whole training steps chain many such ops (and the losses' transcendental
//! functions): see `training_step` for their tolerance.

mod common;
#[path = "ops/perf.rs"]
mod perf;

use std::io::Write as _;

use common::assert_close;
use common::targets::{RANDOM, emu_backend, emu_choice, gpu_backend, gpu_tensor_backend};
use focalflow::Error;
use focalflow::executor::{Executor, Schedule};
use focalflow::loss::{Alpha, LossConfig};
use focalflow::model::{Arch, ImageShape, Model, Plan};
use focalflow::ops::gemm::{KernelChoice, Variant};
use focalflow::ops::kernel_abi::GEMM_TILES;
use focalflow::ops::loss::{CountStep, uncounted};
use focalflow::ops::prelude::*;
use focalflow::ops::{
    AdamStep, Bf16Unit, ConvShape, CpuBackend, CpuPath, CudaBackend, DenseShape, Padding,
    PoolShape, StepFailure, StepTotals,
};
use focalflow::precision::Precision;
use focalflow::rng::Rng;

/// Extra elements after every output's prefix, which must stay untouched (NaN).
const TAIL: usize = 7;

fn random(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.range(-1.0, 1.0) as f32).collect()
}

/// `v` in f64, for the reference.
fn wide(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// `|v|` in f64: the reference on absolute values gives the sums of absolute products.
fn abs(v: &[f32]) -> Vec<f64> {
    v.iter().map(|x| x.abs() as f64).collect()
}

/// The f64 reference's result in f32, to compare with.
fn narrow(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// A buffer of `len + TAIL` NaNs on the target.
fn poisoned<B: Backend<E = f32>>(b: &B, len: usize) -> B::Buf {
    b.upload(&vec![f32::NAN; len + TAIL]).unwrap()
}

/// Reads back an output of `want.len()` elements (in a buffer made by [`poisoned`]) and
/// checks it against the reference's `want` within `bound[i]` per element, and that the
/// tail was left alone.
fn check<B: Backend<E = f32>>(b: &B, what: &str, got: &B::Buf, want: &[f32], bound: &[f32]) {
    let all = b.read(got, want.len() + TAIL).unwrap();
    let (head, tail) = all.split_at(want.len());
    assert_eq!(tail.len(), TAIL, "{what}: buffer length");
    for (i, t) in tail.iter().enumerate() {
        assert!(
            t.is_nan(),
            "{what}: element {} beyond the output was written ({t})",
            want.len() + i
        );
    }
    for (i, ((&g, &w), &tol)) in head.iter().zip(want).zip(bound).enumerate() {
        let err = (g - w).abs();
        assert!(
            err <= tol,
            "{what} on {}: element {i} is {g}, the f64 reference says {w} (|diff| {err:e} > tolerance {tol:e})",
            b.name()
        );
    }
}

/// The bound of a product computed by `b` in its precision: [`gemm_bound`], plus for TF32
/// and bf16 the rounding of both operands, (2 u + u^2) |a b| per product (u = 2^-11 or
/// 2^-8), times 64/9: Winograd F(2x2, 3x3) rounds the transformed operands, whose sum of
/// absolute products grows by (8/3)^2 over the direct one where the magnitudes are equal
/// (the 1-D transform's 8/3, once per dimension). A plain GEMM needs no such factor; one
/// bound for every path keeps the targets comparable (a wrong index or a dropped term is
/// off by O(1), far outside either).
fn product_bound<B: Backend<E = f32>>(b: &B, abs_ref: &[f64], k: usize) -> Vec<f32> {
    let u = b.precision().unit_roundoff();
    let rounding = if b.precision().is_fp32() {
        0.0
    } else {
        64.0 / 9.0 * (2.0 * u + u * u)
    };
    gemm_bound(abs_ref, k)
        .iter()
        .zip(abs_ref)
        .map(|(&g, &a)| g + (rounding * a) as f32)
        .collect()
}

/// `(K + 2) * EPSILON * sum|a b|` per element (see the module documentation).
fn gemm_bound(abs_ref: &[f64], k: usize) -> Vec<f32> {
    abs_ref
        .iter()
        .map(|&a| (k + 2) as f32 * f32::EPSILON * a as f32 + f32::MIN_POSITIVE)
        .collect()
}

fn conv_shapes() -> Vec<ConvShape> {
    let c = |batch, in_h, in_w, in_c, out_c, kernel_h, kernel_w, padding| ConvShape {
        batch,
        in_h,
        in_w,
        in_c,
        out_c,
        kernel_h,
        kernel_w,
        padding,
    };
    vec![
        c(1, 13, 11, 3, 5, 3, 3, Padding::Valid), // batch 1, RGB input, 5 filters
        c(2, 9, 7, 2, 2, 3, 3, Padding::Same),    // 2 channels, 2 filters, padding
        c(3, 7, 10, 4, 8, 3, 3, Padding::Same),   // float4 loads (channels.is_multiple_of(4))
        c(2, 8, 9, 5, 37, 2, 3, Padding::Same),   // even, non-square kernel; N > 32 tile
        c(1, 6, 6, 8, 20, 1, 1, Padding::Valid),  // 1x1, vector path, partial N tile
        c(2, 15, 13, 4, 12, 3, 3, Padding::Valid), // several row tiles; split-K filter grads
        c(1, 5, 4, 3, 70, 5, 3, Padding::Same),   // kernel taller than half the image; 2 N tiles
        c(2, 7, 6, 36, 40, 3, 3, Padding::Same), // > 32 input channels: 64-wide data-gradient tile, float4
        // 16k channels in and out: the CPU's Winograd path, both ways
        c(2, 11, 9, 16, 32, 3, 3, Padding::Valid), // odd output: edge tiles dropped
        c(1, 9, 12, 32, 16, 3, 3, Padding::Same),  // same padding; 16 outputs, 32 inputs
        c(3, 3, 4, 16, 48, 3, 3, Padding::Valid),  // a 1x2 output; 48 = 3 registers
        c(1, 14, 13, 64, 80, 3, 3, Padding::Valid), // several chunks' worth of channels
        // A first layer (3 channels in, 16k out): the CPU's direct kernel, which bf16 keeps
        // (f32 products) beside the AMX layers
        c(2, 13, 17, 3, 16, 3, 3, Padding::Valid),
    ]
}

fn conv_forward<B: Backend<E = f32>>(b: &B) {
    let cpu = CpuBackend::<f64>::new();
    let mut rng = Rng::new(11);
    for s in conv_shapes() {
        for relu in [false, true] {
            let (x, w, bias) = (
                random(&mut rng, s.input_len()),
                random(&mut rng, s.kernel_len()),
                random(&mut rng, s.out_c),
            );
            let mut want = vec![0f64; s.output_len()];
            cpu.conv2d_forward(&s, &wide(&x), &wide(&w), &wide(&bias), &mut want, relu)
                .unwrap();
            let mut abs_ref = vec![0f64; s.output_len()];
            cpu.conv2d_forward(&s, &abs(&x), &abs(&w), &abs(&bias), &mut abs_ref, false)
                .unwrap();
            let mut y = poisoned(b, s.output_len());
            let (dx, dw, db) = (
                b.upload(&x).unwrap(),
                b.upload(&w).unwrap(),
                b.upload(&bias).unwrap(),
            );
            b.conv2d_forward(&s, &dx, &dw, &db, &mut y, relu).unwrap();
            check(
                b,
                &format!("conv2d_forward {s:?} relu={relu}"),
                &y,
                &narrow(&want),
                &product_bound(b, &abs_ref, s.patch_len() + 1),
            );
        }
    }
}

fn conv_backward_data<B: Backend<E = f32>>(b: &B) {
    let cpu = CpuBackend::<f64>::new();
    let mut rng = Rng::new(12);
    for s in conv_shapes() {
        let (dy, w) = (
            random(&mut rng, s.output_len()),
            random(&mut rng, s.kernel_len()),
        );
        let mut want = vec![0f64; s.input_len()];
        cpu.conv2d_backward_data(&s, &wide(&dy), &wide(&w), &mut want)
            .unwrap();
        let mut abs_ref = vec![0f64; s.input_len()];
        cpu.conv2d_backward_data(&s, &abs(&dy), &abs(&w), &mut abs_ref)
            .unwrap();
        let mut dx = poisoned(b, s.input_len());
        b.conv2d_backward_data(&s, &b.upload(&dy).unwrap(), &b.upload(&w).unwrap(), &mut dx)
            .unwrap();
        let k = s.kernel_h * s.kernel_w * s.out_c;
        check(
            b,
            &format!("conv2d_backward_data {s:?}"),
            &dx,
            &narrow(&want),
            &product_bound(b, &abs_ref, k),
        );
    }
}

fn conv_backward_filter<B: Backend<E = f32>>(b: &B) {
    let cpu = CpuBackend::<f64>::new();
    let mut rng = Rng::new(13);
    for s in conv_shapes() {
        let (x, dy) = (
            random(&mut rng, s.input_len()),
            random(&mut rng, s.output_len()),
        );
        let (mut want_w, mut want_b) = (vec![0f64; s.kernel_len()], vec![0f64; s.out_c]);
        cpu.conv2d_backward_filter(&s, &wide(&x), &wide(&dy), &mut want_w, &mut want_b)
            .unwrap();
        let (mut abs_w, mut abs_b) = (vec![0f64; s.kernel_len()], vec![0f64; s.out_c]);
        cpu.conv2d_backward_filter(&s, &abs(&x), &abs(&dy), &mut abs_w, &mut abs_b)
            .unwrap();
        let (mut dw, mut db) = (poisoned(b, s.kernel_len()), poisoned(b, s.out_c));
        b.conv2d_backward_filter(
            &s,
            &b.upload(&x).unwrap(),
            &b.upload(&dy).unwrap(),
            &mut dw,
            &mut db,
        )
        .unwrap();
        let pixels = s.batch * s.out_h() * s.out_w();
        check(
            b,
            &format!("conv2d_backward_filter dw {s:?}"),
            &dw,
            &narrow(&want_w),
            &product_bound(b, &abs_w, pixels),
        );
        check(
            b,
            &format!("conv2d_backward_filter db {s:?}"),
            &db,
            &narrow(&want_b),
            &product_bound(b, &abs_b, pixels),
        );
    }
}

fn pool_shapes() -> Vec<PoolShape> {
    let p = |batch, in_h, in_w, channels, size| PoolShape {
        batch,
        in_h,
        in_w,
        channels,
        size,
    };
    vec![
        p(1, 7, 9, 5, 2),  // odd sizes: a floored last row and column
        p(2, 6, 5, 8, 2),  // float4 path, floored column
        p(2, 8, 7, 3, 3),  // window 3
        p(1, 5, 5, 2, 2),  // 2 channels
        p(3, 9, 11, 4, 4), // window 4, float4, both edges floored
    ]
}

/// Pool inputs with ties (few distinct values), so that "the first maximum" matters.
fn pool_input(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| (rng.range(-2.0, 2.0) as f32).round() * 0.5)
        .collect()
}

fn maxpool_forward<B: Backend<E = f32>>(b: &B) {
    let cpu = CpuBackend::<f64>::new();
    let mut rng = Rng::new(14);
    for s in pool_shapes() {
        for ties in [false, true] {
            let x = if ties {
                pool_input(&mut rng, s.input_len())
            } else {
                random(&mut rng, s.input_len())
            };
            let mut want = vec![0f64; s.output_len()];
            cpu.maxpool2d_forward(&s, &wide(&x), &mut want).unwrap();
            let mut y = poisoned(b, s.output_len());
            b.maxpool2d_forward(&s, &b.upload(&x).unwrap(), &mut y)
                .unwrap();
            check(
                b,
                &format!("maxpool2d_forward {s:?}"),
                &y,
                &narrow(&want),
                &vec![0.0; want.len()],
            );
        }
    }
}

fn maxpool_backward<B: Backend<E = f32>>(b: &B) {
    let cpu = CpuBackend::<f64>::new();
    let mut rng = Rng::new(15);
    for s in pool_shapes() {
        for ties in [false, true] {
            let x = if ties {
                pool_input(&mut rng, s.input_len())
            } else {
                random(&mut rng, s.input_len())
            };
            let dy = random(&mut rng, s.output_len());
            let mut want = vec![0f64; s.input_len()];
            cpu.maxpool2d_backward(&s, &wide(&x), &wide(&dy), &mut want)
                .unwrap();
            let mut dx = poisoned(b, s.input_len());
            b.maxpool2d_backward(&s, &b.upload(&x).unwrap(), &b.upload(&dy).unwrap(), &mut dx)
                .unwrap();
            check(
                b,
                &format!("maxpool2d_backward {s:?} ties={ties}"),
                &dx,
                &narrow(&want),
                &vec![0.0; want.len()],
            );
        }
    }
}

/// Max-pooling backward fused with the ReLU gradient of the layer before (the pool's input
/// is a ReLU output: zeros and positives, with ties).
fn maxpool_relu_backward<B: Backend<E = f32>>(b: &B) {
    let cpu = CpuBackend::<f64>::new();
    let mut rng = Rng::new(22);
    for s in pool_shapes() {
        let x: Vec<f32> = pool_input(&mut rng, s.input_len())
            .iter()
            .map(|v| v.max(0.0))
            .collect();
        let dy = random(&mut rng, s.output_len());
        let mut want = vec![0f64; s.input_len()];
        cpu.maxpool2d_relu_backward(&s, &wide(&x), &wide(&dy), &mut want)
            .unwrap();
        let mut dx = poisoned(b, s.input_len());
        b.maxpool2d_relu_backward(&s, &b.upload(&x).unwrap(), &b.upload(&dy).unwrap(), &mut dx)
            .unwrap();
        check(
            b,
            &format!("maxpool2d_relu_backward {s:?}"),
            &dx,
            &narrow(&want),
            &vec![0.0; want.len()],
        );
    }
}

/// Softmax rows of 1, 2, 5, 33 (more than a warp) and 70 columns.
const SOFTMAX_SHAPES: [(usize, usize); 5] = [(3, 1), (4, 2), (7, 5), (5, 33), (2, 70)];

/// `exp`, a sum and a division per element: f32 results are within a few ulps of the f64
/// reference; 1e-5 of the row's scale leaves a margin of ~10x.
fn softmax_forward<B: Backend<E = f32>>(b: &B) {
    let cpu = CpuBackend::<f64>::new();
    let mut rng = Rng::new(23);
    for (rows, cols) in SOFTMAX_SHAPES {
        let z: Vec<f32> = (0..rows * cols)
            .map(|_| rng.range(-6.0, 6.0) as f32)
            .collect();
        let mut want = vec![0f64; rows * cols];
        cpu.softmax_forward(rows, cols, &wide(&z), &mut want)
            .unwrap();
        let mut p = poisoned(b, rows * cols);
        b.softmax_forward(rows, cols, &b.upload(&z).unwrap(), &mut p)
            .unwrap();
        let bound = vec![1e-5f32; rows * cols];
        check(
            b,
            &format!("softmax_forward {rows}x{cols}"),
            &p,
            &narrow(&want),
            &bound,
        );
    }
}

/// `p * (dp - sum(dp * p))`: a dot product of `cols` terms per row; 1e-5 absolute (all
/// terms are below 1 in magnitude).
fn softmax_backward<B: Backend<E = f32>>(b: &B) {
    let cpu = CpuBackend::<f64>::new();
    let mut rng = Rng::new(24);
    for (rows, cols) in SOFTMAX_SHAPES {
        let z: Vec<f64> = (0..rows * cols).map(|_| rng.range(-3.0, 3.0)).collect();
        let mut p64 = vec![0f64; rows * cols];
        cpu.softmax_forward(rows, cols, &z, &mut p64).unwrap();
        let p = narrow(&p64);
        let dp = random(&mut rng, rows * cols);
        let mut want = vec![0f64; rows * cols];
        cpu.softmax_backward(rows, cols, &wide(&p), &wide(&dp), &mut want)
            .unwrap();
        let mut dz = poisoned(b, rows * cols);
        b.softmax_backward(
            rows,
            cols,
            &b.upload(&p).unwrap(),
            &b.upload(&dp).unwrap(),
            &mut dz,
        )
        .unwrap();
        let bound = vec![1e-5f32; rows * cols];
        check(
            b,
            &format!("softmax_backward {rows}x{cols}"),
            &dz,
            &narrow(&want),
            &bound,
        );
    }
}

/// The sigmoid head of sigmoid-focal's models, elementwise over 1 to 70 x 33 values (more
/// than a block of the elementwise launch): within a few ulps of the f64 reference.
fn sigmoid_forward_backward<B: Backend<E = f32>>(b: &B) {
    let cpu = CpuBackend::<f64>::new();
    let mut rng = Rng::new(25);
    for n in [1, 5, 257, 70 * 33] {
        // Saturated logits too: the exponential of a non-positive number only.
        let z: Vec<f32> = (0..n).map(|_| rng.range(-30.0, 30.0) as f32).collect();
        let mut p64 = vec![0f64; n];
        cpu.sigmoid_forward(n, &wide(&z), &mut p64).unwrap();
        let mut p = poisoned(b, n);
        b.sigmoid_forward(n, &b.upload(&z).unwrap(), &mut p)
            .unwrap();
        let bound: Vec<f32> = p64
            .iter()
            .map(|&v| (4.0 * f64::from(f32::EPSILON) * v) as f32)
            .collect();
        check(
            b,
            &format!("sigmoid_forward {n}"),
            &p,
            &narrow(&p64),
            &bound,
        );
        let pn = narrow(&p64);
        let dp = random(&mut rng, n);
        let mut want = vec![0f64; n];
        cpu.sigmoid_backward(n, &wide(&pn), &wide(&dp), &mut want)
            .unwrap();
        let mut dz = poisoned(b, n);
        b.sigmoid_backward(n, &b.upload(&pn).unwrap(), &b.upload(&dp).unwrap(), &mut dz)
            .unwrap();
        let bound: Vec<f32> = want
            .iter()
            .map(|&v| (4.0 * f64::from(f32::EPSILON) * v.abs()) as f32 + f32::MIN_POSITIVE)
            .collect();
        check(
            b,
            &format!("sigmoid_backward {n}"),
            &dz,
            &narrow(&want),
            &bound,
        );
    }
}

/// One configuration of each loss family, from probabilities and from logits.
fn loss_configs(classes: usize) -> Vec<LossConfig> {
    let per_class = Alpha::PerClass(
        (0..classes)
            .map(|c| 0.2 + 0.6 * c as f64 / classes as f64)
            .collect(),
    );
    let mut out = Vec::new();
    for from_logits in [false, true] {
        out.extend([
            LossConfig::Focal {
                alpha: per_class.clone(),
                gamma: 2.0,
                l1: 0.01,
                l2: 0.02,
                from_logits,
            },
            LossConfig::CalibratedMse {
                facture: 0.1,
                from_logits,
            },
            LossConfig::KerasFocal {
                alpha: Alpha::Scalar(0.25),
                gamma: 2.0,
                label_smoothing: 0.1,
                from_logits,
            },
            LossConfig::CrossEntropy {
                label_smoothing: 0.0,
                from_logits,
            },
            LossConfig::Flsd53 { from_logits },
            LossConfig::DualFocal {
                gamma: 5.0,
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

/// Model outputs for a loss: logits in [-3, 3], or probability rows (softmax of such
/// logits, so well inside the focal loss's clip range [1e-7, 1 - 1e-7]).
fn loss_inputs(
    rng: &mut Rng,
    batch: usize,
    classes: usize,
    from_logits: bool,
) -> (Vec<f32>, Vec<f32>) {
    let z: Vec<f64> = (0..batch * classes).map(|_| rng.range(-3.0, 3.0)).collect();
    let pred = if from_logits {
        narrow(&z)
    } else {
        let mut p = vec![0f64; z.len()];
        CpuBackend::<f64>::new()
            .softmax_forward(batch, classes, &z, &mut p)
            .unwrap();
        narrow(&p)
    };
    let y = (0..batch * classes)
        .map(|i| f32::from(i % classes == (i / classes * 7 + 3) % classes))
        .collect();
    (y, pred)
}

/// Every loss family's value and gradient. f32 `exp`/`log`/`pow` are accurate to a few
/// ulps; the value is a mean of `batch` such terms, the gradient per element a few of them:
/// 1e-4 relative (to the value, to the gradient's largest element) is ~100x what is seen
/// and far below a wrong term (O(1)).
fn loss<B: Backend<E = f32>>(b: &B) {
    let cpu = CpuBackend::<f64>::new();
    let mut rng = Rng::new(25);
    for (batch, classes) in [(1usize, 2usize), (5, 3), (37, 33)] {
        for cfg in loss_configs(classes) {
            let (y, pred) = loss_inputs(&mut rng, batch, classes, cfg.from_logits());
            let n = batch * classes;
            let mut want = vec![0f64; n];
            let want_loss = cpu
                .loss(
                    &cfg,
                    batch,
                    classes,
                    &wide(&y),
                    &wide(&pred),
                    Some(&mut want),
                    None,
                )
                .map(uncounted)
                .unwrap();
            let mut grad = poisoned(b, n);
            let got_loss = b
                .loss(
                    &cfg,
                    batch,
                    classes,
                    &b.upload(&y).unwrap(),
                    &b.upload(&pred).unwrap(),
                    Some(&mut grad),
                    None,
                )
                .map(uncounted)
                .unwrap();
            let what = format!("{} batch {batch} classes {classes}", cfg.describe());
            assert!(
                (got_loss as f64 - want_loss).abs() <= 1e-4 * want_loss.abs().max(1e-3),
                "{what} on {}: loss {got_loss}, the f64 reference says {want_loss}",
                b.name()
            );
            let scale = want.iter().fold(0f64, |m, v| m.max(v.abs())) as f32;
            check(
                b,
                &format!("{what} gradient"),
                &grad,
                &narrow(&want),
                &vec![1e-4 * scale + f32::MIN_POSITIVE; n],
            );
        }
    }
}

/// Two Adam updates: a handful of flops per element, no reduction; 1e-5 relative to each
/// tensor's scale.
fn adam_update<B: Backend<E = f32>>(b: &B) {
    let cpu = CpuBackend::<f64>::new();
    let mut rng = Rng::new(26);
    for len in [1usize, 7, 1029] {
        let (mut p, mut m, mut v) = (random(&mut rng, len), vec![0f32; len], vec![0f32; len]);
        let (mut pc, mut mc, mut vc) = (wide(&p), wide(&m), wide(&v));
        let (mut pg, mut mg, mut vg) = (
            b.upload(&p).unwrap(),
            b.upload(&m).unwrap(),
            b.upload(&v).unwrap(),
        );
        for t in 1..=2 {
            let g = random(&mut rng, len);
            let step = AdamStep {
                step_size: 1e-3 * (1.0 - 0.999f64.powi(t)).sqrt() / (1.0 - 0.9f64.powi(t)),
                one_minus_beta1: 0.1,
                one_minus_beta2: 0.001,
                epsilon: 1e-7,
            };
            let step32 = AdamStep {
                step_size: step.step_size as f32,
                one_minus_beta1: 0.1,
                one_minus_beta2: 0.001,
                epsilon: 1e-7,
            };
            cpu.adam_update(len, &step, &mut pc, &wide(&g), &mut mc, &mut vc, None)
                .unwrap();
            b.adam_update(
                len,
                &step32,
                &mut pg,
                &b.upload(&g).unwrap(),
                &mut mg,
                &mut vg,
                None,
            )
            .unwrap();
        }
        p = b.read(&pg, len).unwrap();
        m = b.read(&mg, len).unwrap();
        v = b.read(&vg, len).unwrap();
        assert_close(&format!("adam parameters, {len}"), &p, &narrow(&pc), 1e-5);
        assert_close(
            &format!("adam first moments, {len}"),
            &m,
            &narrow(&mc),
            1e-5,
        );
        assert_close(
            &format!("adam second moments, {len}"),
            &v,
            &narrow(&vc),
            1e-5,
        );
    }
}

/// A copy into the middle of a longer buffer: exact, and nothing else touched.
fn copy_into<B: Backend<E = f32>>(b: &B) {
    let mut rng = Rng::new(27);
    for (len, offset) in [(1usize, 0usize), (5, 3), (1031, 17)] {
        let src = random(&mut rng, len);
        let mut dst = poisoned(b, offset + len);
        b.copy_into(&b.upload(&src).unwrap(), len, &mut dst, offset)
            .unwrap();
        let got = b.read(&dst, offset + len + TAIL).unwrap();
        assert!(
            got[..offset].iter().all(|v| v.is_nan()),
            "copy_into wrote before offset {offset} on {}",
            b.name()
        );
        assert_eq!(
            &got[offset..offset + len],
            &src[..],
            "copy_into {len} at {offset} on {}",
            b.name()
        );
        assert!(
            got[offset + len..].iter().all(|v| v.is_nan()),
            "copy_into wrote past its range on {}",
            b.name()
        );
    }
}

/// The step counters over a pass: three steps add up the loss times the batch, the images
/// and the correctly classified ones; a step with a NaN prediction is recorded as the
/// pass's failure, nothing is added from then on, and a counted Adam update leaves the
/// weights alone.
/// Multi-hot labels (a multi-label set): a step counts the images whose most probable
/// class is one of their labels, on every backend (an image without labels never counts).
fn counters_multi_hot<B: Backend<E = f32>>(b: &B) {
    let cfg = LossConfig::SigmoidFocal {
        alpha: Alpha::Scalar(0.25),
        gamma: 2.0,
        from_logits: false,
    };
    // Top class 1 of {0, 1}: a hit; none labelled: no; top 0 of {1, 2}: no; top 2 of {0, 2}: hit.
    let y = [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0];
    let p = [0.3, 0.8, 0.1, 0.9, 0.2, 0.1, 0.7, 0.6, 0.5, 0.2, 0.3, 0.9];
    let mut c = b.counters().unwrap();
    let (yb, pb) = (b.upload(&y).unwrap(), b.upload(&p).unwrap());
    let count = CountStep {
        probs: &pb,
        step: 0,
        counters: &mut c,
    };
    b.loss(&cfg, 4, 3, &yb, &pb, None, Some(count)).unwrap();
    let t = b.read_counters(&c).unwrap();
    assert_eq!(
        (t.seen, t.correct),
        (4, 2),
        "multi-hot hits on {}",
        b.name()
    );
}

fn counters<B: Backend<E = f32>>(b: &B) {
    let cpu = CpuBackend::<f64>::new();
    let mut rng = Rng::new(28);
    let (batch, classes) = (6usize, 3usize);
    let cfg = LossConfig::default_focal();
    let mut c = b.counters().unwrap();
    let mut want_sum = 0f64;
    let mut want_correct = 0u64;
    for step in 0..3 {
        let (y, pred) = loss_inputs(&mut rng, batch, classes, false);
        let l = cpu
            .loss(&cfg, batch, classes, &wide(&y), &wide(&pred), None, None)
            .map(uncounted)
            .unwrap();
        want_sum += l * batch as f64;
        want_correct += pred
            .chunks(classes)
            .zip(y.chunks(classes))
            .filter(|(p, y)| focalflow::metrics::argmax(p) == focalflow::metrics::argmax(y))
            .count() as u64;
        let (yb, pb) = (b.upload(&y).unwrap(), b.upload(&pred).unwrap());
        b.loss(
            &cfg,
            batch,
            classes,
            &yb,
            &pb,
            None,
            Some(CountStep {
                probs: &pb,
                step,
                counters: &mut c,
            }),
        )
        .unwrap();
    }
    let t = b.read_counters(&c).unwrap();
    assert_eq!(
        (t.seen, t.correct, t.failure),
        (3 * batch as u64, want_correct, None),
        "counters on {}",
        b.name()
    );
    assert!(
        (t.loss_sum - want_sum).abs() <= 1e-5 * want_sum,
        "loss sum {} vs {want_sum} on {}",
        t.loss_sum,
        b.name()
    );
    // A step whose predictions hold a NaN: the CUDA kernels record it as the pass's
    // failure (the host reads it later); the CPU, whose reads are free, refuses it at once.
    let (y, mut pred) = loss_inputs(&mut rng, batch, classes, false);
    pred[4] = f32::NAN;
    let (yb, pb) = (b.upload(&y).unwrap(), b.upload(&pred).unwrap());
    match b.loss(
        &cfg,
        batch,
        classes,
        &yb,
        &pb,
        None,
        Some(CountStep {
            probs: &pb,
            step: 3,
            counters: &mut c,
        }),
    ) {
        Ok(_) => {
            let after = b.read_counters(&c).unwrap();
            let failure = after.failure.expect("the NaN step is recorded");
            assert_eq!(
                (failure.step, failure.bad_inputs, after.seen),
                (3, true, t.seen),
                "failure on {}",
                b.name()
            );
        }
        Err(Error::NonFinite(_)) if b.reads_are_cheap() => {}
        Err(e) => panic!("a counted loss on NaN predictions on {}: {e}", b.name()),
    }
    // Counters set to a failed pass (as a resumed one may be): a counted Adam update is a no-op.
    let failed = StepTotals {
        failure: Some(StepFailure {
            step: 1,
            bad_inputs: false,
        }),
        ..t
    };
    b.set_counters(&mut c, &failed).unwrap();
    assert_eq!(
        b.read_counters(&c).unwrap(),
        failed,
        "set_counters on {}",
        b.name()
    );
    let w = random(&mut rng, 9);
    let mut wb = b.upload(&w).unwrap();
    let (mut m, mut v) = (b.zeros(9).unwrap(), b.zeros(9).unwrap());
    let step = AdamStep {
        step_size: 1e-3,
        one_minus_beta1: 0.1,
        one_minus_beta2: 0.001,
        epsilon: 1e-7,
    };
    b.adam_update(
        9,
        &step,
        &mut wb,
        &b.upload(&w).unwrap(),
        &mut m,
        &mut v,
        Some(&c),
    )
    .unwrap();
    assert_eq!(
        b.read(&wb, 9).unwrap(),
        w,
        "Adam updated after a failed step on {}",
        b.name()
    );
}

fn dense_shapes() -> Vec<DenseShape> {
    let d = |batch, inputs, outputs| DenseShape {
        batch,
        inputs,
        outputs,
    };
    vec![
        d(1, 37, 5),   // batch 1, 5 classes
        d(3, 70, 2),   // 2 classes (a head)
        d(5, 64, 36),  // float4 path
        d(2, 203, 9),  // long K: split-K forward
        d(67, 33, 65), // 64x64 tiles with partial edges
        // 64k outputs: the CPU's streaming passes (a partial image block, several column
        // blocks, a weight band longer than one chunk)
        d(5, 70, 64),
        d(3, 9, 192),
        d(6, 300, 128),
        // a full block of 8 images and 3 more; ranges of two chunks (a prefetched next one)
        d(11, 2100, 64),
        // 32k inputs and outputs: the CPU's AMX passes in bf16 (a batch padded to 32, two
        // steps of 32 images; ranges and bands of several chunks)
        d(5, 96, 64),
        d(33, 160, 32),
        d(3, 2112, 96),
    ]
}

fn dense_forward<B: Backend<E = f32>>(b: &B) {
    let cpu = CpuBackend::<f64>::new();
    let mut rng = Rng::new(16);
    for s in dense_shapes() {
        for relu in [false, true] {
            let x = random(&mut rng, s.batch * s.inputs);
            let (w, bias) = (
                random(&mut rng, s.inputs * s.outputs),
                random(&mut rng, s.outputs),
            );
            let mut want = vec![0f64; s.batch * s.outputs];
            cpu.dense_forward(&s, &wide(&x), &wide(&w), &wide(&bias), &mut want, relu)
                .unwrap();
            let mut abs_ref = vec![0f64; s.batch * s.outputs];
            cpu.dense_forward(&s, &abs(&x), &abs(&w), &abs(&bias), &mut abs_ref, false)
                .unwrap();
            let mut y = poisoned(b, s.batch * s.outputs);
            let (gx, gw, gb) = (
                b.upload(&x).unwrap(),
                b.upload(&w).unwrap(),
                b.upload(&bias).unwrap(),
            );
            b.dense_forward(&s, &gx, &gw, &gb, &mut y, relu).unwrap();
            check(
                b,
                &format!("dense_forward {s:?} relu={relu}"),
                &y,
                &narrow(&want),
                &product_bound(b, &abs_ref, s.inputs + 1),
            );
        }
    }
}

fn dense_backward<B: Backend<E = f32>>(b: &B) {
    let cpu = CpuBackend::<f64>::new();
    let mut rng = Rng::new(17);
    for s in dense_shapes() {
        for with_dx in [true, false] {
            let x = random(&mut rng, s.batch * s.inputs);
            let (w, dy) = (
                random(&mut rng, s.inputs * s.outputs),
                random(&mut rng, s.batch * s.outputs),
            );
            let (mut want_dx, mut want_dw, mut want_db) = (
                vec![0f64; s.batch * s.inputs],
                vec![0f64; s.inputs * s.outputs],
                vec![0f64; s.outputs],
            );
            cpu.dense_backward(
                &s,
                &wide(&x),
                &wide(&w),
                &wide(&dy),
                Some(&mut want_dx),
                &mut want_dw,
                &mut want_db,
            )
            .unwrap();
            let (mut abs_dx, mut abs_dw, mut abs_db) =
                (want_dx.clone(), want_dw.clone(), want_db.clone());
            cpu.dense_backward(
                &s,
                &abs(&x),
                &abs(&w),
                &abs(&dy),
                Some(&mut abs_dx),
                &mut abs_dw,
                &mut abs_db,
            )
            .unwrap();
            let (mut dx, mut dw, mut db) = (
                poisoned(b, s.batch * s.inputs),
                poisoned(b, s.inputs * s.outputs),
                poisoned(b, s.outputs),
            );
            let (gx, gw, gdy) = (
                b.upload(&x).unwrap(),
                b.upload(&w).unwrap(),
                b.upload(&dy).unwrap(),
            );
            b.dense_backward(
                &s,
                &gx,
                &gw,
                &gdy,
                if with_dx { Some(&mut dx) } else { None },
                &mut dw,
                &mut db,
            )
            .unwrap();
            check(
                b,
                &format!("dense_backward dw {s:?}"),
                &dw,
                &narrow(&want_dw),
                &product_bound(b, &abs_dw, s.batch),
            );
            check(
                b,
                &format!("dense_backward db {s:?}"),
                &db,
                &narrow(&want_db),
                &product_bound(b, &abs_db, s.batch),
            );
            if with_dx {
                check(
                    b,
                    &format!("dense_backward dx {s:?}"),
                    &dx,
                    &narrow(&want_dx),
                    &product_bound(b, &abs_dx, s.outputs),
                );
            } else {
                let untouched = b.read(&dx, s.batch * s.inputs + TAIL).unwrap();
                assert!(
                    untouched.iter().all(|v| v.is_nan()),
                    "dense_backward wrote dx although it was not asked for"
                );
            }
        }
    }
}

fn relu_backward<B: Backend<E = f32>>(b: &B) {
    let cpu = CpuBackend::<f64>::new();
    let mut rng = Rng::new(18);
    for len in [1usize, 5, 8, 1003] {
        // ReLU outputs: zeros (the gradient at exactly 0 is 0) and positives.
        let y: Vec<f32> = (0..len)
            .map(|_| (rng.range(-1.0, 1.0) as f32).max(0.0))
            .collect();
        let dy = random(&mut rng, len);
        let mut want = wide(&dy);
        cpu.relu_backward(len, &wide(&y), &mut want).unwrap();
        let mut full = dy.clone();
        full.extend([f32::NAN; TAIL]);
        let mut g = b.upload(&full).unwrap();
        b.relu_backward(len, &b.upload(&y).unwrap(), &mut g)
            .unwrap();
        check(
            b,
            &format!("relu_backward len {len}"),
            &g,
            &narrow(&want),
            &vec![0.0; len],
        );
    }
}

/// A full training step (forward, loss, backward, Adam), three times, on the target and on
/// the f64 reference from the same weights and data: losses, every gradient and every
/// weight after each Adam update must agree.
///
/// Tolerance: each op is accurate to K * EPSILON relative to its sum of absolute products
/// (above); chained through three to five layers, a softmax and a loss with exp/log/pow,
/// the relative differences seen are ~1e-6. Gradients are compared relative to their
/// tensor's largest magnitude (1e-4 of it, two orders above what is seen, and far below
/// any real error: a wrong index or a missing term moves them by O(1)). Weights after Adam:
/// the first steps move each weight by about lr * sign(g), so a gradient element that is
/// ~0 and differs in sign between the two may move its weight by up to 2 * lr differently;
/// weights are compared to 2.5 * lr absolute, and the mean difference must be tiny
/// (1e-3 * lr), which only holds if nearly all updates agree.
fn training_step<B: Backend<E = f32>>(b: &B) {
    let cpu = CpuBackend::<f64>::new();
    let cases = [
        ("c3,p,c4,p,d5", LossConfig::default_focal(), 3usize),
        (
            "c4s,p,c8,d6",
            LossConfig::CrossEntropy {
                label_smoothing: 0.1,
                from_logits: true,
            },
            2,
        ),
        // 16k channels: the CPU's Winograd path in every pass of the middle layers.
        ("c16,c16s,c32,d6", LossConfig::default_focal(), 4),
        // A 16-channel first layer and its pool: the CPU's fused first block.
        ("c16,p,c16,d6", LossConfig::default_focal(), 3),
    ];
    let wide_all = |v: Vec<Vec<f32>>| v.iter().map(|t| wide(t)).collect::<Vec<_>>();
    for (arch, loss, batch) in cases {
        let input = ImageShape {
            height: 13,
            width: 11,
            channels: 3,
        };
        let plan = Plan::new(&arch.parse::<Arch>().unwrap(), input, 3).unwrap();
        let mut mg = Model::new(b, plan.clone(), 7).unwrap();
        let mut mc = Model::with_weights(&cpu, plan, &wide_all(mg.weights(b).unwrap())).unwrap();
        let mut rng = Rng::new(19);
        let lr = mg.optimizer.learning_rate as f32;
        for step in 0..3 {
            let x = (0..batch * input.len())
                .map(|_| rng.uniform() as f32)
                .collect::<Vec<_>>();
            let y: Vec<f32> = (0..batch * 3)
                .map(|i| f32::from(i % 3 == (i / 3 + step) % 3))
                .collect();
            let (gx, gy) = (b.upload(&x).unwrap(), b.upload(&y).unwrap());
            let (cx, cy) = (wide(&x), wide(&y));
            mc.forward(&cpu, &cx, batch).unwrap();
            mg.forward(b, &gx, batch).unwrap();
            let pc = narrow(&mc.probabilities(&cpu, batch).unwrap());
            let pg = mg.probabilities(b, batch).unwrap();
            assert_close(&format!("{arch} step {step} probabilities"), &pg, &pc, 1e-4);
            let lc = mc.backward(&cpu, &loss, &cx, &cy, batch).unwrap() as f32;
            let lg = mg.backward(b, &loss, &gx, &gy, batch).unwrap();
            assert!(
                (lg - lc).abs() <= 1e-4 * lc.abs().max(1e-3),
                "{arch} step {step}: loss {lg} vs the f64 reference's {lc}"
            );
            for ((spec, gc), gg) in mc
                .params
                .iter()
                .map(|p| &p.spec)
                .zip(mc.gradients(&cpu).unwrap())
                .zip(mg.gradients(b).unwrap())
            {
                assert_close(
                    &format!("{arch} step {step} gradient of {}", spec.name),
                    &gg,
                    &narrow(&gc),
                    1e-4,
                );
            }
            mc.apply_gradients(&cpu).unwrap();
            mg.apply_gradients(b).unwrap();
            for ((spec, wc), wg) in mc
                .params
                .iter()
                .map(|p| &p.spec)
                .zip(mc.weights(&cpu).unwrap())
                .zip(mg.weights(b).unwrap())
            {
                let what = format!("{arch} step {step} weights {}", spec.name);
                let mut sum = 0.0f64;
                for (i, (g, c)) in wg.iter().zip(&narrow(&wc)).enumerate() {
                    let d = (g - c).abs();
                    assert!(
                        d <= 2.5 * lr,
                        "{what}: element {i} is {g}, the f64 reference says {c}"
                    );
                    sum += d as f64;
                }
                let mean = sum / wc.len() as f64;
                assert!(mean <= 1e-3 * lr as f64, "{what}: mean difference {mean:e}");
            }
        }
    }
}

/// A gradient check through the target alone: along a random direction v in weight
/// space, the backward pass's <dL/dw, v> must match the central difference
/// (L(w + h v) - L(w - h v)) / 2h of the forward pass.
///
/// Step and tolerance: in f32 the difference quotient carries a rounding error of about
/// EPSILON * |L| / h (~2e-3 relative here with h = 1e-4) plus O(h^2) curvature terms;
/// 1e-2 relative leaves a margin while a wrong or missing gradient term (an error of O(1)
/// in some component) fails it. The direction is random and dense, so every parameter
/// tensor contributes. h must not carry a ReLU input or a max-pool comparison across its
/// kink: the same check in f64 on the CPU backend (same seeds) agrees to 1e-7 at h = 1e-4
/// and 1e-6, and is off by 12% at h = 1e-3, where a kink is crossed.
fn gradient_check<B: Backend<E = f32>>(b: &B) {
    let input = ImageShape {
        height: 13,
        width: 11,
        channels: 3,
    };
    let plan = Plan::new(&"c3,p,c4,p,d5".parse::<Arch>().unwrap(), input, 3).unwrap();
    let loss = LossConfig::default_focal();
    let batch = 2;
    let mut rng = Rng::new(21);
    let x: Vec<f32> = (0..batch * input.len())
        .map(|_| rng.uniform() as f32)
        .collect();
    let y: Vec<f32> = (0..batch * 3).map(|i| f32::from(i % 3 == i / 3)).collect();
    let (gx, gy) = (b.upload(&x).unwrap(), b.upload(&y).unwrap());
    let mut model = Model::new(b, plan.clone(), 5).unwrap();
    let w0 = model.weights(b).unwrap();
    model.forward(b, &gx, batch).unwrap();
    model.backward(b, &loss, &gx, &gy, batch).unwrap();
    let grads = model.gradients(b).unwrap();
    let v: Vec<Vec<f32>> = w0.iter().map(|w| random(&mut rng, w.len())).collect();
    let analytic: f64 = grads
        .iter()
        .zip(&v)
        .flat_map(|(g, d)| g.iter().zip(d).map(|(a, b)| *a as f64 * *b as f64))
        .sum();
    let h = 1e-4f32;
    let loss_at = |sign: f32| -> f64 {
        let w: Vec<Vec<f32>> = w0
            .iter()
            .zip(&v)
            .map(|(w, d)| w.iter().zip(d).map(|(a, b)| a + sign * h * b).collect())
            .collect();
        let mut m = Model::with_weights(b, plan.clone(), &w).unwrap();
        m.forward(b, &gx, batch).unwrap();
        m.loss_of_forward(b, &loss, &gy, batch).unwrap() as f64
    };
    let numeric = (loss_at(1.0) - loss_at(-1.0)) / (2.0 * h as f64);
    assert!(
        (numeric - analytic).abs() <= 1e-2 * analytic.abs().max(1e-3),
        "directional derivative on {}: backward pass {analytic:e}, central difference {numeric:e}",
        b.name()
    );
}

/// A test body the targets can run: one unit type per body (see [`op_matrix!`]), so that a
/// target's runner can hand it a backend of the target's own type.
trait OpTest {
    fn run<B: Backend<E = f32>>(&self, b: &B);
}

// The targets: one runner each, given the body and the test's name (for the skip line).
fn cpu_f32(t: impl OpTest, _test: &str) {
    t.run(&CpuBackend::<f32>::new());
}
/// The CPU with the reference path: im2col + GEMM for every convolution and GEMM for every
/// dense layer (the default takes the direct, Winograd and streaming kernels where they
/// apply).
fn cpu_f32_im2col(t: impl OpTest, _test: &str) {
    t.run(&CpuBackend::<f32>::with_path(CpuPath::Reference));
}
/// The CPU with `--precision bf16`: the products on the best unit this CPU has for them
/// (AMX tiles or AVX512_BF16) where a layer has a bf16 path; skipped, visibly, on a CPU
/// without AVX512_BF16.
fn cpu_bf16(t: impl OpTest, test: &str) {
    if let Some(why) = focalflow::precision::cpu_unsupported(Precision::Bf16) {
        common::skipped(&format!("{test}: {why}"));
        return;
    }
    t.run(&CpuBackend::<f32>::new().with_precision(Precision::Bf16));
}
/// `--precision bf16` with every product on AVX512_BF16 (`vdpbf16ps`), also where AMX is
/// the default: both units are tested on a CPU with AMX.
fn cpu_bf16_avx512(t: impl OpTest, test: &str) {
    if let Some(why) = focalflow::precision::cpu_unsupported(Precision::Bf16) {
        common::skipped(&format!("{test}: {why}"));
        return;
    }
    let b = CpuBackend::<f32>::new().with_precision(Precision::Bf16);
    t.run(&b.with_bf16_unit(Bf16Unit::Avx512));
}
/// The tiled kernels on the emulator's TF32 and BF16 tensor cores (`--precision`).
fn emu_tf32(t: impl OpTest, _test: &str) {
    t.run(&emu_backend(Schedule::Forward, Variant::Tiled).with_precision(Precision::Tf32));
}
fn emu_bf16(t: impl OpTest, _test: &str) {
    t.run(&emu_backend(RANDOM, Variant::Tiled).with_precision(Precision::Bf16));
}
fn on_gpu_tf32(t: impl OpTest, test: &str) {
    if let Some(b) = gpu_tensor_backend(Precision::Tf32, test) {
        t.run(b);
    }
}
fn on_gpu_bf16(t: impl OpTest, test: &str) {
    if let Some(b) = gpu_tensor_backend(Precision::Bf16, test) {
        t.run(b);
    }
}
fn emu_forward(t: impl OpTest, _test: &str) {
    t.run(&emu_backend(Schedule::Forward, Variant::Tiled));
}
fn emu_reverse(t: impl OpTest, _test: &str) {
    t.run(&emu_backend(Schedule::Reverse, Variant::Tiled));
}
fn emu_random(t: impl OpTest, _test: &str) {
    t.run(&emu_backend(RANDOM, Variant::Tiled));
}
/// The one-thread-per-output reference kernels (no barriers: one schedule suffices).
fn emu_naive(t: impl OpTest, _test: &str) {
    t.run(&emu_backend(Schedule::Forward, Variant::Naive));
}
fn on_gpu(t: impl OpTest, test: &str) {
    if let Some(b) = gpu_backend(Variant::Tiled, test) {
        t.run(b);
    }
}
fn on_gpu_naive(t: impl OpTest, test: &str) {
    if let Some(b) = gpu_backend(Variant::Naive, test) {
        t.run(b);
    }
}

/// `op_matrix!([ops...], [targets...])`: a module per target with a `#[test]` per op
/// (`emu_reverse::conv_forward`), each calling the target's runner with the op's body.
macro_rules! op_matrix {
    ($ops:tt, [$($target:ident),* $(,)?]) => {
        op_matrix!(@bodies $ops);
        $( op_matrix!(@target $target, $ops); )*
    };
    (@bodies [$($op:ident),* $(,)?]) => {
        mod bodies {
            $(
                #[allow(non_camel_case_types)]
                pub struct $op;
                impl super::OpTest for $op {
                    fn run<B: super::Backend<E = f32>>(&self, b: &B) {
                        super::$op(b)
                    }
                }
            )*
        }
    };
    (@target $target:ident, [$($op:ident),* $(,)?]) => {
        mod $target {
            $(
                #[test]
                fn $op() {
                    super::$target(
                        super::bodies::$op,
                        concat!("ops::", stringify!($target), "::", stringify!($op)),
                    );
                }
            )*
        }
    };
}

op_matrix!(
    [
        conv_forward,
        conv_backward_data,
        conv_backward_filter,
        maxpool_forward,
        maxpool_backward,
        maxpool_relu_backward,
        dense_forward,
        dense_backward,
        relu_backward,
        softmax_forward,
        softmax_backward,
        sigmoid_forward_backward,
        loss,
        adam_update,
        copy_into,
        counters,
        counters_multi_hot,
        training_step,
        gradient_check,
    ],
    [
        cpu_f32,
        cpu_f32_im2col,
        emu_forward,
        emu_reverse,
        emu_random,
        emu_naive,
        on_gpu,
        on_gpu_naive,
    ]
);

// `--precision bf16` changes the products alone: the convolutions and dense layers on the
// bf16 CPU (each unit; its dense layers stay f32, within the same bound).
op_matrix!(
    @target cpu_bf16,
    [
        conv_forward,
        conv_backward_data,
        conv_backward_filter,
        dense_forward,
        dense_backward,
    ]
);
op_matrix!(
    @target cpu_bf16_avx512,
    [conv_forward, conv_backward_data, conv_backward_filter]
);
// The tensor cores of the GPU (and of the emulator): every GEMM-shaped op in TF32 and BF16.
op_matrix!(
    @target emu_tf32,
    [conv_forward, conv_backward_data, conv_backward_filter, dense_forward, dense_backward]
);
op_matrix!(
    @target emu_bf16,
    [conv_forward, conv_backward_data, conv_backward_filter, dense_forward, dense_backward]
);
op_matrix!(
    @target on_gpu_tf32,
    [conv_forward, conv_backward_data, conv_backward_filter, dense_forward, dense_backward]
);
op_matrix!(
    @target on_gpu_bf16,
    [conv_forward, conv_backward_data, conv_backward_filter, dense_forward, dense_backward]
);

/// The CPU's Winograd path (forward, input and filter gradients) against the f64 reference
/// at the reference CNN's conv2 and conv3 shapes (one image), beside im2col: the largest
/// and the mean error in units of
/// EPSILON * sum|a b| (the per-element scale of the GEMM bound above), printed with
/// `--nocapture` for the README; each path must stay within that bound's K + 2.
#[test]
fn winograd_error_against_f64() {
    let mut rng = Rng::new(29);
    let cpu = CpuBackend::<f64>::new();
    for (hw, in_c, out_c) in [(111, 16, 32), (54, 32, 64)] {
        let s = ConvShape {
            batch: 1,
            in_h: hw,
            in_w: hw,
            in_c,
            out_c,
            kernel_h: 3,
            kernel_w: 3,
            padding: Padding::Valid,
        };
        if !focalflow::ops::conv2d::winograd::supported(&s) {
            common::skipped("winograd_error_against_f64: no AVX-512");
            return;
        }
        let (x, w, dy) = (
            random(&mut rng, s.input_len()),
            random(&mut rng, s.kernel_len()),
            random(&mut rng, s.output_len()),
        );
        let bias = vec![0f32; out_c];
        let (mut want_y, mut scale_y) = (vec![0f64; s.output_len()], vec![0f64; s.output_len()]);
        cpu.conv2d_forward(&s, &wide(&x), &wide(&w), &wide(&bias), &mut want_y, false)
            .unwrap();
        cpu.conv2d_forward(&s, &abs(&x), &abs(&w), &wide(&bias), &mut scale_y, false)
            .unwrap();
        let (mut want_dx, mut scale_dx) = (vec![0f64; s.input_len()], vec![0f64; s.input_len()]);
        cpu.conv2d_backward_data(&s, &wide(&dy), &wide(&w), &mut want_dx)
            .unwrap();
        cpu.conv2d_backward_data(&s, &abs(&dy), &abs(&w), &mut scale_dx)
            .unwrap();
        let (mut want_dw, mut scale_dw) = (vec![0f64; s.kernel_len()], vec![0f64; s.kernel_len()]);
        let mut db64 = vec![0f64; out_c];
        cpu.conv2d_backward_filter(&s, &wide(&x), &wide(&dy), &mut want_dw, &mut db64)
            .unwrap();
        cpu.conv2d_backward_filter(&s, &abs(&x), &abs(&dy), &mut scale_dw, &mut db64)
            .unwrap();
        // (largest, mean) of |got - want| / (EPSILON * scale).
        let errors = |got: &[f32], want: &[f64], scale: &[f64]| {
            let e: Vec<f64> = got
                .iter()
                .zip(want)
                .zip(scale)
                .map(|((g, w), s)| (*g as f64 - w).abs() / (f32::EPSILON as f64 * s.max(1e-30)))
                .collect();
            (
                e.iter().fold(0f64, |m, v| m.max(*v)),
                e.iter().sum::<f64>() / e.len() as f64,
            )
        };
        let bf16 = focalflow::precision::cpu_unsupported(Precision::Bf16).is_none();
        let targets = [
            ("winograd", CpuPath::Auto, Precision::Fp32),
            ("im2col", CpuPath::Reference, Precision::Fp32),
            // Winograd with vdpbf16ps, or direct products where AMX is present.
            ("bf16", CpuPath::Auto, Precision::Bf16),
        ];
        for (name, path, precision) in targets {
            if precision == Precision::Bf16 && !bf16 {
                common::skipped(&format!(
                    "winograd_error_against_f64 ({name}): no AVX512_BF16"
                ));
                continue;
            }
            let b = CpuBackend::<f32>::with_path(path).with_precision(precision);
            let mut y = vec![0f32; s.output_len()];
            b.conv2d_forward(&s, &x, &w, &bias, &mut y, false).unwrap();
            let mut dx = vec![0f32; s.input_len()];
            b.conv2d_backward_data(&s, &dy, &w, &mut dx).unwrap();
            let (mut dw, mut db) = (vec![0f32; s.kernel_len()], vec![0f32; out_c]);
            b.conv2d_backward_filter(&s, &x, &dy, &mut dw, &mut db)
                .unwrap();
            // In units of the products' own rounding: EPSILON for f32, u = 2^-8 for bf16.
            let unit = (precision.unit_roundoff() * 2.0) / f64::from(f32::EPSILON);
            let unit_name = ["EPSILON", "2 u(bf16)"][usize::from(!precision.is_fp32())];
            let scaled = |(max, mean): (f64, f64)| (max / unit, mean / unit);
            let fwd = scaled(errors(&y, &want_y, &scale_y));
            let bwd = scaled(errors(&dx, &want_dx, &scale_dx));
            let filt = scaled(errors(&dw, &want_dw, &scale_dw));
            let _ = writeln!(
                std::io::stderr(),
                "ERROR {hw}x{hw}x{in_c}->{out_c} {name:<13} forward max {:.3} mean {:.4}, \
                 backward data max {:.3} mean {:.4}, backward filter max {:.3} mean {:.4} \
                 ({unit_name} * sum|a b|)",
                fwd.0,
                fwd.1,
                bwd.0,
                bwd.1,
                filt.0,
                filt.1
            );
            let pixels = s.out_h() * s.out_w();
            if precision.is_fp32() {
                assert!(fwd.0 <= (9 * in_c + 2) as f64, "{name} forward {fwd:?}");
                assert!(
                    bwd.0 <= (9 * out_c + 2) as f64,
                    "{name} backward data {bwd:?}"
                );
                assert!(
                    filt.0 <= (pixels + 2) as f64,
                    "{name} backward filter {filt:?}"
                );
            } else {
                // product_bound's growth of 64/9 on both operands' rounding (the f32 sums'
                // part is 2^-15 of a unit here), and the operands really were rounded: a
                // mean error of at least 1e-3 units, 65 EPSILON, which no f32 path comes
                // near (above: < 0.2 EPSILON; the filter gradient's long sums over pixels
                // let independent roundings cancel, so its mean is the smallest).
                for (pass, (max, mean)) in [
                    ("forward", fwd),
                    ("backward data", bwd),
                    ("backward filter", filt),
                ] {
                    assert!(max <= 64.0 / 9.0 * 1.01, "{name} {pass}: max {max}");
                    assert!(
                        mean >= 1e-3,
                        "{name} {pass}: mean {mean}: not rounded to bf16?"
                    );
                }
            }
        }
    }
}

/// Every tile shape and load width of the tiled kernels, not only those the automatic choice
/// picks for the shapes above: forced one by one, under the forward and reverse schedules.
macro_rules! tile_tests {
    ($($module:ident: $tile:literal, $scalar:literal => [$($op:ident),*];)*) => {$(
        mod $module {
            use super::*;
            $( #[test] fn $op() {
                for schedule in [Schedule::Forward, Schedule::Reverse] {
                    super::$op(&emu_choice(schedule, KernelChoice { tile: Some($tile), scalar: $scalar }));
                }
            } )*
        }
    )*};
}

tile_tests! {
    tile_n16: "n16", false => [conv_forward, conv_backward_data];
    tile_n16_scalar: "n16", true => [conv_forward, conv_backward_data];
    tile_n32: "n32", false => [conv_forward, conv_backward_data];
    tile_n32_scalar: "n32", true => [conv_forward, conv_backward_data];
    tile_n64: "n64", false => [conv_forward, conv_backward_data];
    tile_n64_scalar: "n64", true => [conv_forward, conv_backward_data];
    tile_s32: "s32", false => [conv_backward_filter, dense_forward, dense_backward];
    tile_s32_scalar: "s32", true => [conv_backward_filter, dense_forward, dense_backward];
    tile_s64: "s64", false => [conv_backward_filter, dense_forward, dense_backward];
    tile_s64_scalar: "s64", true => [conv_backward_filter, dense_forward, dense_backward];
    tile_m64n32: "m64n32", false => [conv_backward_filter, dense_forward, dense_backward];
    tile_m64n32_scalar: "m64n32", true => [conv_backward_filter, dense_forward, dense_backward];
    tile_m32n64: "m32n64", false => [conv_backward_filter, dense_forward, dense_backward];
    tile_m32n64_scalar: "m32n64", true => [conv_backward_filter, dense_forward, dense_backward];
}

/// The same on the GPU: every kernel variant that the automatic choice may pick.
#[test]
fn gpu_every_tile() {
    if gpu_backend(Variant::Tiled, "ops::gpu_every_tile").is_none() {
        return;
    }
    // One more executor (one module load), switched from variant to variant.
    let b = CudaBackend::new(Executor::cuda(0).unwrap());
    for tile in GEMM_TILES {
        for scalar in [false, true] {
            let choice = KernelChoice {
                tile: Some(tile.name),
                scalar,
            };
            b.set_choice(Variant::Tiled, choice);
            conv_forward(&b);
            conv_backward_data(&b);
            conv_backward_filter(&b);
            dense_forward(&b);
            dense_backward(&b);
        }
    }
}

#[test]
fn names_say_which_executor() {
    assert_eq!(CpuBackend::<f32>::new().name(), "cpu");
    assert_eq!(
        emu_backend(Schedule::Forward, Variant::Tiled).name(),
        "cuda-emu"
    );
    if let Some(b) = gpu_backend(Variant::Tiled, "ops::names_say_which_executor") {
        assert_eq!(b.name(), "cuda");
    }
}

// ---- perf mode ---------------------------------------------------------------------------------

/// Every op's time on every target present at the reference CNN's shapes (batch 32): the
/// CPU, and on a GPU the tiled kernels beside the naive ones and each forced tile shape of
/// the GEMM-shaped ops (the llm.c habit of timing each variant before promoting one). Run
/// with `--ignored --nocapture` (scripts/gpu-check.sh does); `cargo bench --bench ops`
/// prints the same table.
#[test]
#[ignore = "timing; run explicitly with --ignored --nocapture"]
fn perf() {
    let say = |line: String| {
        let _ = writeln!(std::io::stderr(), "TIMING {line}");
    };
    let batch = 32;
    for t in perf::time_ops(&CpuBackend::<f32>::new(), batch, 1, &|_| true) {
        say(format!("cpu        {}", t.line()));
    }
    let im2col = CpuBackend::<f32>::with_path(CpuPath::Reference);
    for t in perf::time_ops(&im2col, batch, 1, &|op| {
        op.starts_with("conv") && !op.contains("relu") || op.starts_with("dense")
    }) {
        say(format!("cpu im2col {}", t.line()));
    }
    let (Some(tiled), Some(naive)) = (
        gpu_backend(Variant::Tiled, "ops::perf"),
        gpu_backend(Variant::Naive, "ops::perf"),
    ) else {
        return;
    };
    for t in perf::time_ops(tiled, batch, 20, &|_| true) {
        say(format!("cuda       {}", t.line()));
    }
    let gemm_shaped =
        |op: &str| op.starts_with("conv") && !op.contains("relu") || op.starts_with("dense");
    for t in perf::time_ops(naive, batch, 1, &gemm_shaped) {
        say(format!("cuda naive {}", t.line()));
    }
    // Every tile and load width, forced, on one more executor (one module load).
    let var = CudaBackend::new(Executor::cuda(0).unwrap());
    for tile in GEMM_TILES {
        for scalar in [false, true] {
            var.set_choice(
                Variant::Tiled,
                KernelChoice {
                    tile: Some(tile.name),
                    scalar,
                },
            );
            let label = format!("{}_{}", tile.name, if scalar { "s" } else { "v" });
            for t in perf::time_ops(&var, batch, 10, &gemm_shaped) {
                say(format!("cuda {label:<6}{}", t.line()));
            }
        }
    }
}

/// One training step of the reference CNN (224x224, batch 32) from the same weights on the
/// CPU's fast paths, on its reference path and in f64: per gradient tensor, each f32 path's
/// largest error relative to the tensor's largest value and its cosine with the f64
/// gradient (printed with `--nocapture`; the README quotes them). The fast paths must be
/// about as accurate as the reference path (within 2x of its error, plus 1e-5).
#[test]
fn fast_paths_are_as_accurate_as_the_reference_path_on_the_reference_cnn() {
    let input = ImageShape {
        height: 224,
        width: 224,
        channels: 3,
    };
    let plan = Plan::new(&"c16,p,c32,p,c64,p,d256".parse::<Arch>().unwrap(), input, 2).unwrap();
    let batch = 32;
    let mut rng = Rng::new(3);
    let x: Vec<f32> = (0..batch * input.len())
        .map(|_| rng.uniform() as f32)
        .collect();
    let y: Vec<f32> = (0..batch * 2)
        .map(|i| f32::from(i % 2 == (i / 2) % 2))
        .collect();
    let loss = LossConfig::CrossEntropy {
        label_smoothing: 0.0,
        from_logits: true,
    };
    let gradients = |b: &CpuBackend<f32>| {
        let mut m = Model::new(b, plan.clone(), 42).unwrap();
        m.forward(b, &x, batch).unwrap();
        m.backward(b, &loss, &x, &y, batch).unwrap();
        (m.weights(b).unwrap(), m.gradients(b).unwrap())
    };
    let (weights, fast) = gradients(&CpuBackend::<f32>::new());
    let (_, reference) = gradients(&CpuBackend::<f32>::with_path(CpuPath::Reference));
    let cpu = CpuBackend::<f64>::new();
    let wide_weights: Vec<Vec<f64>> = weights.iter().map(|w| wide(w)).collect();
    let mut exact = Model::with_weights(&cpu, plan.clone(), &wide_weights).unwrap();
    let (x64, y64) = (wide(&x), wide(&y));
    exact.forward(&cpu, &x64, batch).unwrap();
    exact.backward(&cpu, &loss, &x64, &y64, batch).unwrap();
    // (largest |g - exact| / max|exact|, cosine with exact)
    let error = |g: &[f32], e: &[f64]| {
        let scale = e
            .iter()
            .fold(0f64, |m, v| m.max(v.abs()))
            .max(f64::MIN_POSITIVE);
        let worst = g
            .iter()
            .zip(e)
            .fold(0f64, |m, (a, b)| m.max((*a as f64 - b).abs()));
        let dot: f64 = g.iter().zip(e).map(|(a, b)| *a as f64 * b).sum();
        let norm_g = g.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        let norm_e = e.iter().map(|v| v.powi(2)).sum::<f64>().sqrt();
        (
            worst / scale,
            dot / (norm_g * norm_e).max(f64::MIN_POSITIVE),
        )
    };
    let names = exact.params.iter().map(|p| p.spec.name.clone());
    for (((name, e), f), r) in names
        .zip(exact.gradients(&cpu).unwrap())
        .zip(&fast)
        .zip(&reference)
    {
        let (ef, cf) = error(f, &e);
        let (er, cr) = error(r, &e);
        let _ = writeln!(
            std::io::stderr(),
            "GRADIENT {name:<16} fast paths: error {ef:.2e} cosine {cf:.9}; reference path: \
             error {er:.2e} cosine {cr:.9}"
        );
        assert!(
            ef <= 2.0 * er + 1e-5,
            "{name}: fast paths {ef:e}, reference path {er:e}"
        );
    }
}

/// The tensor-core kernels really round their operands (TF32: 11 significant bits, BF16: 8)
/// and no more than that: the forward convolution on the emulator, errors against the f64
/// reference in units of 2 u * sum|a b| (u the format's unit roundoff), beside fp32's.
#[test]
fn tensor_cores_round_their_operands_on_the_emulator() {
    let cpu = CpuBackend::<f64>::new();
    let s = ConvShape {
        batch: 2,
        in_h: 11,
        in_w: 9,
        in_c: 16,
        out_c: 32,
        kernel_h: 3,
        kernel_w: 3,
        padding: Padding::Same,
    };
    let mut rng = Rng::new(31);
    let (x, w) = (
        random(&mut rng, s.input_len()),
        random(&mut rng, s.kernel_len()),
    );
    let bias = vec![0f32; s.out_c];
    let (mut want, mut scale) = (vec![0f64; s.output_len()], vec![0f64; s.output_len()]);
    cpu.conv2d_forward(&s, &wide(&x), &wide(&w), &wide(&bias), &mut want, false)
        .unwrap();
    cpu.conv2d_forward(&s, &abs(&x), &abs(&w), &wide(&bias), &mut scale, false)
        .unwrap();
    for precision in Precision::ALL {
        let b = emu_backend(Schedule::Forward, Variant::Tiled).with_precision(precision);
        let mut y = b.zeros(s.output_len()).unwrap();
        let (dx, dw, db) = (
            b.upload(&x).unwrap(),
            b.upload(&w).unwrap(),
            b.upload(&bias).unwrap(),
        );
        b.conv2d_forward(&s, &dx, &dw, &db, &mut y, false).unwrap();
        let got = b.read(&y, s.output_len()).unwrap();
        let unit = 2.0 * precision.unit_roundoff();
        let e: Vec<f64> = got
            .iter()
            .zip(&want)
            .zip(&scale)
            .map(|((g, w), s)| (*g as f64 - w).abs() / (unit * s.max(1e-30)))
            .collect();
        let max = e.iter().fold(0f64, |m, v| m.max(*v));
        let mean = e.iter().sum::<f64>() / e.len() as f64;
        println!("{precision}: max {max:.3}, mean {mean:.4} (2 u * sum|a b|)");
        if precision.is_fp32() {
            // K = 144 f32 sums: within (K + 2) / 2 units of EPSILON / 2.
            assert!(max <= 73.0, "fp32: max {max}");
        } else {
            // Both operands rounded, exact products, f32 sums (2^-13 or 2^-16 of a unit).
            assert!(max <= 1.01, "{precision}: max {max}");
            assert!(
                mean >= 1e-2,
                "{precision}: mean {mean}: operands not rounded?"
            );
        }
    }
}
