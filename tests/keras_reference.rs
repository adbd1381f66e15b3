//! The CPU backend against TensorFlow/Keras' own numbers (`tests/data/keras_tiny_cnn.json`,
//! from ../shared/reference): a tiny CNN built like the reference one, its forward pass,
//! focal loss, every weight gradient, the probability/logit gradients and two Adam steps,
//! in f64 and f32. This is llm.c's "match the PyTorch dump" check.

use focalflow::Element;
use focalflow::loss::{Alpha, LossConfig};
use focalflow::model::{Arch, ImageShape, Model, Plan};
use focalflow::ops::CpuBackend;
use focalflow::ops::loss::loss_forward_backward;
use focalflow::ops::prelude::*;
use serde_json::Value;

const WEIGHTS: [&str; 6] = [
    "conv_kernel",
    "conv_bias",
    "dense1_kernel",
    "dense1_bias",
    "dense2_kernel",
    "dense2_bias",
];
/// Forward intermediates in the order of the model's ops (conv+relu, pool, dense+relu, dense).
const ACTIVATIONS: [&str; 4] = ["conv_out", "pool_out", "dense1_out", "logits"];

fn dump() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/keras_tiny_cnn.json"
    ))
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

fn flat(v: &Value) -> Vec<f64> {
    match v {
        Value::Array(items) => items.iter().flat_map(flat).collect(),
        Value::Number(n) => vec![n.as_f64().unwrap()],
        other => panic!("unexpected JSON {other}"),
    }
}

fn focal() -> LossConfig {
    LossConfig::Focal {
        alpha: Alpha::Scalar(0.25),
        gamma: 2.0,
        l1: 0.0,
        l2: 0.0,
        from_logits: false,
    }
}

/// `|a - b| <= atol + rtol * |b|` elementwise, with the worst offender in the message.
fn assert_close<T: Element>(what: &str, got: &[T], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let g = g.f64();
        assert!(
            (g - w).abs() <= atol + rtol * w.abs(),
            "{what}[{i}]: got {g:e}, Keras {w:e} (diff {:e})",
            (g - w).abs()
        );
    }
}

/// Runs one dump case at precision `T` with tolerances (atol, rtol).
fn check_case<T: Element>(case: &Value, weights: &Value, precision: &str, atol: f64, rtol: f64) {
    let id = case["id"].as_str().unwrap();
    let res = &case["results"][precision];
    let x: Vec<T> = flat(&case["inputs"]["x"]).into_iter().map(T::of).collect();
    let y: Vec<T> = flat(&case["inputs"]["y_true"])
        .into_iter()
        .map(T::of)
        .collect();
    let batch = y.len() / 2;
    let backend = CpuBackend::<T>::new();
    let plan = Plan::new(
        &"c4,p,d3".parse::<Arch>().unwrap(),
        ImageShape {
            height: 12,
            width: 12,
            channels: 3,
        },
        2,
    )
    .unwrap();
    let init: Vec<Vec<T>> = WEIGHTS
        .iter()
        .map(|w| flat(&weights[w]).into_iter().map(T::of).collect())
        .collect();
    let mut model = Model::with_weights(&backend, plan, &init).unwrap();
    let (xb, yb) = (backend.upload(&x).unwrap(), backend.upload(&y).unwrap());

    model.forward(&backend, &xb, batch).unwrap();
    for (i, name) in ACTIVATIONS.iter().enumerate() {
        let got = model.activation(&backend, i, batch).unwrap();
        assert_close(
            &format!("{id}/{precision}/{name}"),
            &got,
            &flat(&res["forward"][name]),
            atol,
            rtol,
        );
    }
    let probs = model.probabilities(&backend, batch).unwrap();
    assert_close(
        &format!("{id}/{precision}/probs"),
        &probs,
        &flat(&res["forward"]["probs"]),
        atol,
        rtol,
    );

    // The loss and its gradients w.r.t. probabilities and logits.
    let mut dprobs = vec![T::zero(); probs.len()];
    let loss = loss_forward_backward(&focal(), &y, &probs, batch, 2, Some(&mut dprobs)).unwrap();
    assert_close(
        &format!("{id}/{precision}/loss"),
        &[loss],
        &[res["loss"].as_f64().unwrap()],
        atol,
        rtol,
    );
    assert_close(
        &format!("{id}/{precision}/grad_probs"),
        &dprobs,
        &flat(&res["grad_probs"]),
        atol,
        rtol,
    );
    let mut dlogits = vec![T::zero(); probs.len()];
    backend
        .softmax_backward(batch, 2, &probs, &dprobs, &mut dlogits)
        .unwrap();
    assert_close(
        &format!("{id}/{precision}/grad_logits"),
        &dlogits,
        &flat(&res["grad_logits"]),
        atol,
        rtol,
    );

    // Every weight gradient through the model's backward pass.
    let model_loss = model.backward(&backend, &focal(), &xb, &yb, batch).unwrap();
    assert_close(
        &format!("{id}/{precision}/model loss"),
        &[model_loss],
        &[res["loss"].as_f64().unwrap()],
        atol,
        rtol,
    );
    for (name, got) in WEIGHTS.iter().zip(model.gradients(&backend).unwrap()) {
        assert_close(
            &format!("{id}/{precision}/grad {name}"),
            &got,
            &flat(&res["grads"][name]),
            atol,
            rtol,
        );
    }

    // Two Adam steps (Keras defaults), each from a fresh forward/backward.
    for step in res["adam_steps"].as_array().unwrap() {
        let out = model
            .train_step(&backend, &focal(), &xb, &yb, batch)
            .unwrap();
        let n = step["step"].as_u64().unwrap();
        assert_close(
            &format!("{id}/{precision}/adam {n} loss"),
            &[out.loss],
            &[step["loss_before_step"].as_f64().unwrap()],
            atol,
            rtol,
        );
        for (name, got) in WEIGHTS.iter().zip(model.weights(&backend).unwrap()) {
            assert_close(
                &format!("{id}/{precision}/adam {n} {name}"),
                &got,
                &flat(&step["weights_after"][name]),
                atol,
                rtol,
            );
        }
    }
}

#[test]
fn cpu_f64_matches_keras_float64() {
    let d = dump();
    // f64 against f64: only summation order differs (gemm's vs TF's), ~1e-16 relative per
    // op; 1e-12 leaves room for the ~10 chained ops and the Adam division by sqrt(v).
    for case in d["cases"].as_array().unwrap() {
        check_case::<f64>(case, &d["weights"], "float64", 1e-13, 1e-10);
    }
}

#[test]
fn cpu_f32_matches_keras_float32() {
    let d = dump();
    // f32 against f32: a few ulps (6e-8) per op; the dump's own f32-vs-f64 gradients differ
    // by up to 3e-8 absolute. 2e-6 relative plus 1e-7 absolute (for near-zero gradients and
    // for Adam's first step, where m/sqrt(v) amplifies the relative error of tiny gradients).
    for case in d["cases"].as_array().unwrap() {
        check_case::<f32>(case, &d["weights"], "float32", 1e-7, 2e-6);
    }
}
