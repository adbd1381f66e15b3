//! The CPU's fused blocks (convolution + ReLU + 2x2 max-pool as one pass, the convolution's
//! output never stored: the direct first layer, and Winograd layers whose output tiles are
//! the pool's windows) train exactly as the unfused ops: the same losses, gradients and
//! weights, bit for bit, step after step, in fp32 and in bf16.

mod common;

use focalflow::loss::LossConfig;
use focalflow::model::{Arch, ImageShape, Model, Plan};
use focalflow::ops::prelude::*;
use focalflow::ops::{ConvShape, CpuBackend, Padding, PoolShape};
use focalflow::precision::{Precision, cpu_unsupported};
use focalflow::rng::Rng;

fn skipped(test: &str) -> bool {
    let b = CpuBackend::<f32>::new();
    let conv = ConvShape {
        batch: 1,
        in_h: 8,
        in_w: 8,
        in_c: 3,
        out_c: 16,
        kernel_h: 3,
        kernel_w: 3,
        padding: Padding::Valid,
    };
    let pool = PoolShape {
        batch: 1,
        in_h: 6,
        in_w: 6,
        channels: 16,
        size: 2,
    };
    if b.fuses_conv_relu_pool(&conv, &pool) {
        return false;
    }
    common::skipped(&format!(
        "{test}: this CPU runs no fused block (no AVX-512)"
    ));
    true
}

/// Trains two copies of one model for 3 steps, fused and not, and compares everything.
fn fused_equals_unfused(
    b: &CpuBackend<f32>,
    arch: &str,
    height: usize,
    width: usize,
    loss: LossConfig,
) {
    let b = &b;
    let input = ImageShape {
        height,
        width,
        channels: 3,
    };
    let plan = Plan::new(&arch.parse::<Arch>().unwrap(), input, 3).unwrap();
    let fusable = focalflow::model::fused_blocks(&plan.ops, *b, 3);
    let mut fused = Model::new(*b, plan.clone(), 11).unwrap();
    let mut plain = Model::with_weights(*b, plan, &fused.weights(*b).unwrap()).unwrap();
    plain.keep_activations();
    let batch = 3;
    let mut rng = Rng::new(5);
    for step in 0..3 {
        let x: Vec<f32> = (0..batch * input.len())
            .map(|_| rng.uniform() as f32 - 0.3)
            .collect();
        let y: Vec<f32> = (0..batch * 3)
            .map(|i| f32::from(i % 3 == (i / 3 + step) % 3))
            .collect();
        let (x, y) = (b.upload(&x).unwrap(), b.upload(&y).unwrap());
        let what = format!("{arch} at {height}x{width}, step {step}");
        fused.forward(b, &x, batch).unwrap();
        plain.forward(b, &x, batch).unwrap();
        assert_eq!(
            fused.probabilities(b, batch).unwrap(),
            plain.probabilities(b, batch).unwrap(),
            "{what}: probabilities"
        );
        for (i, &f) in fusable.iter().enumerate() {
            if !f {
                continue;
            }
            // A fused block's convolution output is not kept, and says so.
            let err = fused.activation(b, i, batch).unwrap_err().to_string();
            assert!(err.contains("keep_activations"), "{err}");
            assert_eq!(
                fused.activation(b, i + 1, batch).unwrap(),
                plain.activation(b, i + 1, batch).unwrap(),
                "{what}: the pooled output of op {}",
                i + 1
            );
        }
        let (lf, lp) = (
            fused.backward(b, &loss, &x, &y, batch).unwrap(),
            plain.backward(b, &loss, &x, &y, batch).unwrap(),
        );
        assert_eq!(lf, lp, "{what}: loss");
        let (gf, gp) = (fused.gradients(b).unwrap(), plain.gradients(b).unwrap());
        for (i, (f, p)) in gf.iter().zip(&gp).enumerate() {
            assert_eq!(f, p, "{what}: gradient of parameter {i}");
            assert!(
                f.iter().any(|v| *v != 0.0),
                "{what}: parameter {i} got no gradient"
            );
        }
        fused.apply_gradients(b).unwrap();
        plain.apply_gradients(b).unwrap();
        assert_eq!(
            fused.weights(b).unwrap(),
            plain.weights(b).unwrap(),
            "{what}: weights after Adam"
        );
    }
}

#[test]
fn fused_blocks_train_exactly_as_the_unfused_ops() {
    if skipped("fused_blocks_train_exactly_as_the_unfused_ops") {
        return;
    }
    let mut backends = vec![("fp32", CpuBackend::<f32>::new())];
    match cpu_unsupported(Precision::Bf16) {
        None => backends.push((
            "bf16",
            CpuBackend::<f32>::new().with_precision(Precision::Bf16),
        )),
        Some(why) => common::skipped(&format!(
            "fused_blocks_train_exactly_as_the_unfused_ops (bf16): {why}"
        )),
    }
    for (name, b) in &backends {
        // Which blocks fuse: the first (direct) and the 16-channel ones (Winograd); the
        // pool of a fused block is left out of the backward pass, its input gradient
        // computed from the codes by the convolution's (but for the first layer's).
        let plan = |arch: &str| {
            let input = ImageShape {
                height: 13,
                width: 22,
                channels: 3,
            };
            Plan::new(&arch.parse::<Arch>().unwrap(), input, 3).unwrap()
        };
        let ops = plan("c16,p,c16,p,d4").ops;
        assert_eq!(
            focalflow::model::fused_blocks(&ops, b, 3),
            [true, false, true, false, false, false],
            "{name}"
        );
        // Even convolution outputs (every pixel pooled), odd ones (a row and a column the
        // pool drops), one and more 16-channel blocks, pooled rows of 1 to 9 (partial
        // blocks of 4), partial Winograd chunks.
        fused_equals_unfused(b, "c16,p,d4", 12, 12, LossConfig::default_focal());
        fused_equals_unfused(b, "c16,p,c16,p,d4", 13, 22, LossConfig::default_focal());
        fused_equals_unfused(
            b,
            "c16,p,c32,p,c16,p,d4",
            29,
            27,
            LossConfig::default_focal(),
        );
        // Same padding: the input gradient's tiles cut the pool windows at odd offsets.
        fused_equals_unfused(
            b,
            "c16s,p,c16s,p,c32s,p,d4",
            23,
            18,
            LossConfig::default_focal(),
        );
        // A direct block past the first layer (3 channels in): its input gradient too.
        fused_equals_unfused(b, "c16,p,c3,c16,p,d4", 20, 17, LossConfig::default_focal());
        fused_equals_unfused(
            b,
            "c32,p,d5",
            21,
            9,
            LossConfig::CrossEntropy {
                label_smoothing: 0.0,
                from_logits: true,
            },
        );
    }
}
