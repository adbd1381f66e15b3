//! The CPU's dense layers run their kernel's Adam step inside the backward pass in a train
//! step (`DenseAdamOps`: each band of the weight gradient applied as it is computed, never
//! stored). A train step must give the bits of the unfused one (every gradient stored, then
//! the Adam pass), in fp32 (the streaming passes) and in bf16 (AMX), counted or not; and a
//! step after a failed one must leave every weight as it was.

mod common;

use focalflow::loss::LossConfig;
use focalflow::model::{Arch, ImageShape, Layer, Model, Plan};
use focalflow::ops::prelude::*;
use focalflow::ops::{CpuBackend, StepFailure, StepTotals};
use focalflow::precision::{Precision, cpu_unsupported};
use focalflow::rng::Rng;

/// The reference CNN's shape in small: a conv block, a dense layer the fused passes take
/// (inputs and outputs multiples of 64), the head.
const ARCH: &str = "c16,p,d64,d3";

fn plan() -> Plan {
    let input = ImageShape {
        height: 18,
        width: 18,
        channels: 3,
    };
    Plan::new(&ARCH.parse::<Arch>().unwrap(), input, 3).unwrap()
}

/// The CPU backends whose dense layer fuses the update here, each named; the others are
/// reported as skipped.
fn backends(test: &str) -> Vec<(&'static str, CpuBackend<f32>)> {
    let mut all = vec![("fp32", CpuBackend::<f32>::new())];
    match cpu_unsupported(Precision::Bf16) {
        None => all.push((
            "bf16",
            CpuBackend::<f32>::new().with_precision(Precision::Bf16),
        )),
        Some(why) => common::skipped(&format!("{test} (bf16): {why}")),
    }
    let plan = plan();
    let Some(Layer::Dense { shape, .. }) =
        plan.ops.iter().find(|op| matches!(op, Layer::Dense { .. }))
    else {
        panic!("{ARCH} has a dense layer");
    };
    let s = focalflow::ops::DenseShape { batch: 4, ..*shape };
    all.retain(|(name, b)| {
        let fused = b.fuses_dense_adam(&s);
        if !fused {
            common::skipped(&format!(
                "{test} ({name}): this CPU's dense passes do not fuse Adam"
            ));
        }
        fused
    });
    all
}

/// A loss whose gradient no clipping zeroes (the focal loss clips confident predictions).
fn cross_entropy() -> LossConfig {
    LossConfig::CrossEntropy {
        label_smoothing: 0.0,
        from_logits: true,
    }
}

fn batch(rng: &mut Rng, step: usize, n: usize, plan: &Plan) -> (Vec<f32>, Vec<f32>) {
    let x = (0..n * plan.input.len())
        .map(|_| rng.uniform() as f32)
        .collect();
    let y = (0..n * 3)
        .map(|i| f32::from(i % 3 == (i / 3 + step) % 3))
        .collect();
    (x, y)
}

/// Every parameter's value and both moments, as bits.
fn state(b: &CpuBackend<f32>, model: &Model<CpuBackend<f32>>) -> Vec<Vec<u32>> {
    model
        .params
        .iter()
        .flat_map(|p| [&p.value, &p.m, &p.v].map(|buf| b.read(buf, p.spec.len()).unwrap()))
        .map(|v| v.iter().map(|f| f.to_bits()).collect())
        .collect()
}

#[test]
fn adam_in_the_backward_pass_gives_the_bits_of_the_unfused_step() {
    for (name, b) in backends("adam_in_the_backward_pass_gives_the_bits_of_the_unfused_step") {
        let loss = cross_entropy();
        let mut fused = Model::new(&b, plan(), 3).unwrap();
        let mut counted = Model::with_weights(&b, plan(), &fused.weights(&b).unwrap()).unwrap();
        let mut apart = Model::with_weights(&b, plan(), &fused.weights(&b).unwrap()).unwrap();
        let mut counters = b.counters().unwrap();
        let mut rng = Rng::new(8);
        let n = 4;
        let start = state(&b, &apart);
        for step in 0..3 {
            let (x, y) = batch(&mut rng, step, n, &fused.plan);
            let (x, y) = (b.upload(&x).unwrap(), b.upload(&y).unwrap());
            let out = fused.train_step(&b, &loss, &x, &y, n).unwrap();
            counted
                .train_step_counted(&b, &loss, &x, &y, n, step, &mut counters)
                .unwrap();
            apart.forward(&b, &x, n).unwrap();
            let value = apart.backward(&b, &loss, &x, &y, n).unwrap();
            apart.apply_gradients(&b).unwrap();
            assert_eq!(
                out.loss.to_bits(),
                value.to_bits(),
                "{name} step {step}: loss"
            );
            let want = state(&b, &apart);
            assert!(state(&b, &fused) == want, "{name} step {step}: train_step");
            assert!(state(&b, &counted) == want, "{name} step {step}: counted");
        }
        // Not vacuous: the dense kernel (parameter 2: its value is state 6) was trained.
        assert!(
            state(&b, &apart)[6] != start[6],
            "{name}: the dense kernel never moved"
        );
    }
}

#[test]
fn a_counted_step_after_a_failed_one_updates_nothing() {
    for (name, b) in backends("a_counted_step_after_a_failed_one_updates_nothing") {
        let loss = cross_entropy();
        let mut model = Model::new(&b, plan(), 3).unwrap();
        let mut counters = b.counters().unwrap();
        let mut rng = Rng::new(8);
        // A good step first: with moments that are not zero, even a zero gradient moves.
        let (x, y) = batch(&mut rng, 0, 4, &model.plan);
        let (x, y) = (b.upload(&x).unwrap(), b.upload(&y).unwrap());
        model
            .train_step_counted(&b, &loss, &x, &y, 4, 0, &mut counters)
            .unwrap();
        let failed = StepTotals {
            failure: Some(StepFailure {
                step: 0,
                bad_inputs: false,
            }),
            ..Default::default()
        };
        b.set_counters(&mut counters, &failed).unwrap();
        let before = state(&b, &model);
        let (x, y) = batch(&mut rng, 1, 4, &model.plan);
        let (x, y) = (b.upload(&x).unwrap(), b.upload(&y).unwrap());
        model
            .train_step_counted(&b, &loss, &x, &y, 4, 1, &mut counters)
            .unwrap();
        assert!(state(&b, &model) == before, "{name}: a parameter moved");
    }
}
