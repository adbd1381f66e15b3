//! `focalflow::loss` against TensorFlow/Keras: tests/data/keras_losses.json holds, for every
//! loss and option, float32 inputs (including predictions exactly at and beyond the clip
//! bounds, and saturated logits), and the float32 loss and gradient TensorFlow computed
//! (made by scripts/keras_loss_fixtures.py; versions in its `meta`).

use std::path::PathBuf;
use std::process::Command;

use focalflow::npy;
use focalflow::ops::loss::loss_forward_backward;

mod common;
use common::loss_fixture::{Case, Fixture};

fn fixture() -> Fixture {
    common::loss_fixture::parse(include_str!("data/keras_losses.json"))
}

// Tolerances. Both sides compute in f32 (unit roundoff u = 6e-8) with the same formulas but
// a different order of operations (TF's reductions, `alpha*pow*ce` against our order, Eigen's
// softmax multiplying by 1/sum), so each value differs by a few u times the condition of its
// formula:
// - loss: every loss here is a sum of non-negative terms, which is well conditioned, so the
//   two f32 results differ by a few u relative. We require 1e-5 relative (about 170 u) against
//   TF's f32 value and against the same Keras code run in f64 (the exact value to ~1e-12 on
//   these f32 inputs). One exception is allowed for, and measured: where TF's own f32 result
//   is further than 1e-5 from its f64 value (`softmax_cross_entropy_with_logits` forms
//   log(1 + s) in f32, losing ~3e-5 relative for a confident sample; we use log1p), the
//   agreement with TF f32 is required to within TF's own error plus 1e-5.
// - gradient: elements are differences of terms (`(g_j - sum g o)/s` after the row
//   normalisation, `p_j (g_j - dot)` in the softmax backward, TF's `p - y`), and the terms
//   weigh up to ~1/batch (labels and alphas are <= 1) or, for an element much smaller than the
//   largest of its case, up to that largest. Each side's rounding is a few u of those scales,
//   so atol = 1e-6 * max|grad| of the case + 4u/batch (TF's `p - y` for a confident sample is
//   off by ~1u: it rounds p near 1; we compute `-q` directly), and rtol = 1e-5 (~170 u) for the
//   rest. The test prints the worst error as a fraction of its tolerance.
//   Entries that Keras zeroes by clipping are exact zeros in TF and must be exact zeros here.
//   (`ce` from logits has no clipping: TF's zeros there are `p - y` rounding to 0 for a
//   saturated sample, where we return the true, tiny, value; the tolerance covers it.)
const LOSS_RTOL: f64 = 1e-5;
const LOSS_ATOL: f64 = 1e-7;
const GRAD_RTOL: f64 = 1e-5;
const GRAD_ATOL_REL_MAX: f64 = 1e-6;
const GRAD_ATOL_PER_SAMPLE: f64 = 4.0 * f32::EPSILON as f64 / 2.0;

fn relative(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-30)
}

/// Checks a loss and gradient against a case; returns (relative loss error against TF f32,
/// worst gradient error as a fraction of its tolerance).
fn check_case(case: &Case, loss: f64, grad: &[f64]) -> Result<(f64, f64), String> {
    let tf_own_error = relative(case.loss_value, case.loss_value_f64);
    let vs_exact = (loss - case.loss_value_f64).abs();
    if vs_exact > LOSS_ATOL + LOSS_RTOL * case.loss_value_f64.abs() {
        return Err(format!(
            "{}: loss {loss} vs Keras in f64 {} (relative error {:.2e})",
            case.name,
            case.loss_value_f64,
            relative(loss, case.loss_value_f64)
        ));
    }
    let loss_err = (loss - case.loss_value).abs();
    let rtol = if tf_own_error > LOSS_RTOL {
        tf_own_error + LOSS_RTOL
    } else {
        LOSS_RTOL
    };
    if loss_err > LOSS_ATOL + rtol * case.loss_value.abs() {
        return Err(format!(
            "{}: loss {loss} vs Keras {} (relative error {:.2e})",
            case.name,
            case.loss_value,
            relative(loss, case.loss_value)
        ));
    }
    let gmax = case.grad.iter().fold(0f64, |m, g| m.max(g.abs()));
    let atol = GRAD_ATOL_REL_MAX * gmax + GRAD_ATOL_PER_SAMPLE / case.batch as f64;
    let clipped_zeros = !(case.loss == "ce" && case.params["from_logits"] == true);
    let mut worst = 0f64;
    for (i, (&a, &b)) in grad.iter().zip(&case.grad).enumerate() {
        let (row, col) = (i / case.classes, i % case.classes);
        if clipped_zeros && b == 0.0 && a != 0.0 {
            return Err(format!(
                "{}: grad[{row},{col}] = {a}, Keras has exactly 0 (clipped)",
                case.name
            ));
        }
        let err = (a - b).abs();
        if err > atol + GRAD_RTOL * b.abs() {
            return Err(format!(
                "{}: grad[{row},{col}] = {a} vs Keras {b} (|diff| {err:.3e} > {:.3e})",
                case.name,
                atol + GRAD_RTOL * b.abs()
            ));
        }
        worst = worst.max(err / (atol + GRAD_RTOL * b.abs()).max(f64::MIN_POSITIVE));
    }
    Ok((relative(loss, case.loss_value), worst))
}

#[test]
fn fixture_covers_every_loss_and_option() {
    let f = fixture();
    assert!(f.meta["tensorflow"].is_string() && f.meta["keras"].is_string());
    for name in ["focal", "calibrated-mse", "keras-focal", "ce"] {
        for logits in [false, true] {
            if name == "focal" && logits {
                continue; // Keras has no fused focal from logits: checked by finite differences.
            }
            assert!(
                f.cases
                    .iter()
                    .any(|c| c.loss == name && c.config().from_logits() == logits),
                "no {name} case with from_logits={logits}"
            );
        }
    }
    // Clipped entries (exact zeros in Keras' gradient) are present.
    assert!(f.cases.iter().filter(|c| c.grad.contains(&0.0)).count() > 20);
}

#[test]
fn f32_losses_and_gradients_match_keras() {
    let f = fixture();
    let mut failures = Vec::new();
    let (mut worst_loss, mut worst_grad) = (0f64, 0f64);
    let mut tf_less_accurate = Vec::new();
    for case in &f.cases {
        let cfg = case.config();
        let (y, p) = case.inputs_f32();
        let mut g = vec![f32::NAN; y.len()];
        let loss =
            loss_forward_backward::<f32>(&cfg, &y, &p, case.batch, case.classes, Some(&mut g))
                .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let g: Vec<f64> = g.iter().map(|&v| v as f64).collect();
        match check_case(case, loss as f64, &g) {
            Ok((l, gr)) => {
                if l > LOSS_RTOL {
                    // Allowed only where TF f32 is itself off; say so.
                    tf_less_accurate.push(format!(
                        "{} (TF f32 {:.1e} from f64, ours {:.1e})",
                        case.name,
                        relative(case.loss_value, case.loss_value_f64),
                        relative(loss as f64, case.loss_value_f64)
                    ));
                } else {
                    worst_loss = worst_loss.max(l);
                }
                worst_grad = worst_grad.max(gr);
            }
            Err(e) => failures.push(e),
        }
    }
    eprintln!(
        "{} cases vs TF {} / Keras {}: worst loss relative error {worst_loss:.2e}, worst gradient error {worst_grad:.3} of its tolerance; \
         cases where TF f32 is less accurate than 1e-5: {tf_less_accurate:?}",
        f.cases.len(),
        f.meta["tensorflow"],
        f.meta["keras"]
    );
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        f.cases.len(),
        failures.join("\n")
    );
}

/// The `focalflow loss` binary end to end: .npy files in, one JSON object and an f32 .npy
/// gradient out, on one case of each loss (with clipped entries and an alpha vector).
#[test]
fn focalflow_loss_command_matches_keras() {
    let f = fixture();
    let dir = std::env::temp_dir().join(format!("focalflow-keras-losses-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let picks = [
        "focal-alpha-vector-b7c5",
        "keras-focal-smooth-logits-b7c5",
        "ce-smooth-b7c2",
        "calibrated-mse-f0.7-logits-b4c5",
    ];
    for pick in picks {
        let case = f
            .cases
            .iter()
            .find(|c| c.name == pick)
            .unwrap_or_else(|| panic!("no case {pick}"));
        let shape = [case.batch, case.classes];
        let (y, p) = case.inputs_f32();
        let (yp, pp, gp): (PathBuf, PathBuf, PathBuf) = (
            dir.join("y_true.npy"),
            dir.join("y_pred.npy"),
            dir.join("grad.npy"),
        );
        npy::write_2d_f32(&yp, &y, shape).unwrap();
        // Predictions as f64, to exercise the f64 reader and the cast to f32.
        npy::write_2d_f64(&pp, &case.y_pred, shape).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_focalflow"))
            .arg("loss")
            .args(&case.args)
            .args([
                "--y-true".as_ref(),
                yp.as_os_str(),
                "--y-pred".as_ref(),
                pp.as_os_str(),
            ])
            .args(["--grad-out".as_ref(), gp.as_os_str()])
            .output()
            .expect("run focalflow");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{pick}: focalflow loss {:?} failed: {}{}",
            case.args,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(
            lines.len(),
            1,
            "{pick}: expected exactly one JSON line, got {stdout:?}"
        );
        let v: serde_json::Value = serde_json::from_str(lines[0]).expect("JSON on stdout");
        let obj = v.as_object().expect("a JSON object");
        assert_eq!(obj.len(), 1, "{pick}: only the key \"loss\": {v}");
        let loss = obj["loss"].as_f64().expect("a number");
        assert_eq!(
            loss as f32 as f64, loss,
            "{pick}: the printed loss is an f32 value"
        );
        let (g, g_shape) = npy::read_2d_full(&gp).map(|a| (a.data, a.shape)).unwrap();
        assert_eq!(g_shape, shape);
        assert_eq!(npy::read_2d_full(&gp).unwrap().dtype, npy::Dtype::F32);
        check_case(case, loss, &g).unwrap();
        // The library and the command agree exactly.
        let mut lib_g = vec![0f32; y.len()];
        let lib_loss = loss_forward_backward::<f32>(
            &case.config(),
            &y,
            &p,
            case.batch,
            case.classes,
            Some(&mut lib_g),
        )
        .unwrap();
        assert_eq!(lib_loss as f64, loss, "{pick}");
        assert!(
            lib_g.iter().zip(&g).all(|(&a, &b)| a as f64 == b),
            "{pick}: gradient file differs from the library"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}
