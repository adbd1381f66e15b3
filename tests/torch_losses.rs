//! The calibration and multi-label losses against PyTorch: tests/data/torch_losses.json
//! (made by scripts/torch_loss_fixtures.py from torchvision's `sigmoid_focal_loss` and the
//! authors' code of FLSD-53, AdaFocal and dual focal; versions in its `meta`) holds float32
//! inputs (probabilities at and beyond the clip bounds, near 0 and 1, saturated logits) and
//! the loss and gradient PyTorch computed in float32 and in float64 on the same inputs.
//! Every backend is checked: the CPU, the CUDA emulator (strict in CI), and a GPU where
//! there is one (a visible skip where not). AdaFocal's gamma update is checked against the
//! authors' `update_bin_stats` on the same validation confidences.
//!
//! Tolerances: our f32 result against the float64 value (the exact result of the f32
//! computation to ~1e-15; both runs clip at the f32 bounds): the loss within 1e-5 relative
//! plus 1e-7; each gradient element within 1e-5 relative plus 1e-6 of the case's largest
//! element plus 4 f32 ulps per sample. Elements the clip zeroes are exact zeros in PyTorch
//! and must be here. (PyTorch's own float32 result is further off in places, e.g. `1 - p_t`
//! of a saturated sigmoid; it is reported, not used as the reference.)

mod common;

use common::loss_fixture::{Case, Fixture};
use focalflow::executor::Schedule;
use focalflow::loss::{AdaFocalSettings, GammaBins, LOSS_NAMES};
use focalflow::ops::CudaBackend;
use focalflow::ops::gemm::Variant;
use focalflow::ops::loss::{loss_forward_backward, uncounted};
use focalflow::ops::prelude::*;
use serde::Deserialize;

const LOSS_RTOL: f64 = 1e-5;
const LOSS_ATOL: f64 = 1e-7;
const GRAD_RTOL: f64 = 1e-5;
const GRAD_ATOL_REL_MAX: f64 = 1e-6;
const GRAD_ATOL_PER_SAMPLE: f64 = 4.0 * f32::EPSILON as f64 / 2.0;

/// The losses this fixture covers (the others are checked against Keras).
const TORCH_LOSSES: [&str; 4] = ["sigmoid-focal", "flsd-53", "adafocal", "dual-focal"];

const FIXTURE: &str = include_str!("data/torch_losses.json");

fn fixture() -> Fixture {
    common::loss_fixture::parse(FIXTURE)
}

/// The loss and gradient of `case` on a backend.
type Run<'a> = &'a dyn Fn(&Case) -> (f32, Vec<f32>);

fn on_cpu(case: &Case) -> (f32, Vec<f32>) {
    let (y, p) = case.inputs_f32();
    let mut g = vec![f32::NAN; y.len()];
    let v = loss_forward_backward::<f32>(
        &case.config(),
        &y,
        &p,
        case.batch,
        case.classes,
        Some(&mut g),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", case.name));
    (v, g)
}

fn on_device(dev: &CudaBackend, case: &Case) -> (f32, Vec<f32>) {
    let (y, p) = case.inputs_f32();
    let exec = dev.executor();
    let yd = exec.upload(&y).unwrap();
    let pd = exec.upload(&p).unwrap();
    let mut gd = exec.upload(&vec![f32::NAN; y.len()]).unwrap();
    let v = dev
        .loss(
            &case.config(),
            case.batch,
            case.classes,
            &yd,
            &pd,
            Some(&mut gd),
            None,
        )
        .map(uncounted)
        .unwrap_or_else(|e| panic!("{}: {e}", case.name));
    (v, exec.download(&gd).unwrap())
}

/// Every case on `run`: the failures, and the worst gradient error as a fraction of its
/// tolerance.
fn check_all(target: &str, run: Run<'_>) {
    let f = fixture();
    let mut failures = Vec::new();
    let (mut worst_loss, mut worst_grad, mut torch_f32_off) = (0f64, 0f64, 0f64);
    for case in &f.cases {
        let (loss, grad) = run(case);
        let (loss, want) = (f64::from(loss), case.loss_value_f64);
        let loss_err = (loss - want).abs();
        if loss_err.is_nan() || loss_err > LOSS_ATOL + LOSS_RTOL * want.abs() {
            failures.push(format!(
                "{}: loss {loss:e} vs PyTorch (f64) {want:e}",
                case.name
            ));
            continue;
        }
        let loss_tol = LOSS_ATOL + LOSS_RTOL * want.abs();
        worst_loss = worst_loss.max(loss_err / loss_tol);
        torch_f32_off = torch_f32_off.max((case.loss_value - want).abs() / loss_tol);
        let exact = case
            .grad_f64
            .as_ref()
            .expect("PyTorch fixtures carry the f64 gradient");
        let gmax = exact.iter().fold(0f64, |m, g| m.max(g.abs()));
        let atol = GRAD_ATOL_REL_MAX * gmax + GRAD_ATOL_PER_SAMPLE / case.batch as f64;
        let clipped_zeros = !case.config().from_logits();
        for (i, (&a, (&w, &w32))) in grad.iter().zip(exact.iter().zip(&case.grad)).enumerate() {
            let (row, col, a) = (i / case.classes, i % case.classes, f64::from(a));
            if clipped_zeros && w == 0.0 && w32 == 0.0 && a != 0.0 {
                failures.push(format!(
                    "{}: grad[{row},{col}] = {a:e}, PyTorch has exactly 0",
                    case.name
                ));
                continue;
            }
            let tol = atol + GRAD_RTOL * w.abs();
            // Written so that a NaN fails too.
            let within = (a - w).abs() <= tol;
            if !within {
                failures.push(format!(
                    "{}: grad[{row},{col}] = {a:e} vs PyTorch (f64) {w:e} (|diff| {:.2e} > {tol:.2e})",
                    case.name,
                    (a - w).abs()
                ));
            }
            worst_grad = worst_grad.max((a - w).abs() / tol);
        }
    }
    eprintln!(
        "{target}: {} cases vs torch {} / torchvision {}: worst loss error {worst_loss:.3} of its tolerance \
         (PyTorch's own f32: {torch_f32_off:.3}), worst gradient error {worst_grad:.3} of its tolerance",
        f.cases.len(),
        f.meta["torch"],
        f.meta["torchvision"]
    );
    assert!(
        failures.is_empty(),
        "{target}: {} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn fixture_covers_each_loss_both_ways_and_the_edges() {
    let f = fixture();
    assert!(f.meta["torch"].is_string() && f.meta["torchvision"].is_string());
    for name in TORCH_LOSSES {
        assert!(LOSS_NAMES.contains(&name));
        for logits in [false, true] {
            assert!(
                f.cases
                    .iter()
                    .any(|c| c.loss == name && c.config().from_logits() == logits),
                "no {name} case with from_logits={logits}"
            );
        }
    }
    // Clipped entries (exact zeros), saturated logits, inverse-focal bins, alpha turned off.
    assert!(
        f.cases
            .iter()
            .filter(|c| !c.config().from_logits() && c.grad.contains(&0.0))
            .count()
            > 10
    );
    assert!(f.cases.iter().any(|c| c.name.contains("saturated")));
    assert!(
        f.cases
            .iter()
            .any(|c| c.loss == "adafocal" && c.params["bins"]["gammas"].to_string().contains('-'))
    );
    assert!(
        f.cases
            .iter()
            .any(|c| c.loss == "sigmoid-focal" && c.params["alpha"] == -1.0)
    );
}

#[test]
fn cpu_matches_pytorch() {
    check_all("cpu", &on_cpu);
}

#[test]
fn cuda_emulator_matches_pytorch() {
    let dev = common::targets::emu_backend(common::targets::RANDOM, Variant::Tiled);
    check_all("cuda-emu", &|c: &Case| on_device(&dev, c));
    let dev = common::targets::emu_backend(Schedule::Forward, Variant::Tiled);
    check_all("cuda-emu (forward schedule)", &|c: &Case| {
        on_device(&dev, c)
    });
}

#[test]
fn gpu_matches_pytorch() {
    if let Some(dev) =
        common::targets::gpu_backend(Variant::Tiled, "torch_losses::gpu_matches_pytorch")
    {
        check_all("cuda", &|c: &Case| on_device(dev, c));
    }
}

#[derive(Deserialize)]
struct Update {
    lambda: f64,
    confidences: Vec<f64>,
    correct: Vec<bool>,
    gammas_before: Vec<f64>,
    edges_after: Vec<f64>,
    gammas_after: Vec<f64>,
}

/// AdaFocal's update against the authors' update_bin_stats (ported to numpy by the script,
/// with our one stated difference: the least confident image counts in the first bin).
#[test]
fn adafocal_update_matches_the_authors_rule() {
    #[derive(Deserialize)]
    struct Updates {
        adafocal_updates: Vec<Update>,
    }
    let u: Updates = serde_json::from_str(FIXTURE).unwrap();
    assert!(u.adafocal_updates.len() >= 3);
    for (i, up) in u.adafocal_updates.iter().enumerate() {
        let s = AdaFocalSettings {
            lambda: up.lambda,
            ..AdaFocalSettings::default()
        };
        let n = up.gammas_before.len();
        let current = GammaBins {
            gammas: up.gammas_before.clone(),
            ..GammaBins::uniform(n, 1.0)
        };
        let (next, _) = s.update(&current, &up.confidences, &up.correct).unwrap();
        for (what, got, want) in [
            ("edges", &next.edges, &up.edges_after),
            ("gammas", &next.gammas, &up.gammas_after),
        ] {
            assert_eq!(got.len(), want.len(), "update {i}: {what}");
            for (b, (g, w)) in got.iter().zip(want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-12 * (1.0 + w.abs()),
                    "update {i}: {what}[{b}] = {g} vs {w}"
                );
            }
        }
    }
}

/// `focalflow loss` end to end on a per-class sigmoid-focal case (a negative alpha in the
/// list) and a dual-focal case: the flags as users write them, .npy in and out.
#[test]
fn focalflow_loss_command_matches_pytorch() {
    let f = fixture();
    let dir = common::TempDir::new("torch-losses");
    for pick in [
        "sigmoid-focal-per-class-probs-b7c5",
        "dual-focal-g5.0-logits-b6c3",
        "flsd-53-probs-b7c5",
    ] {
        let case = f
            .cases
            .iter()
            .find(|c| c.name == pick)
            .unwrap_or_else(|| panic!("no case {pick}"));
        let (y, p) = case.inputs_f32();
        let shape = [case.batch, case.classes];
        let (yp, pp, gp) = (
            dir.0.join("y.npy"),
            dir.0.join("p.npy"),
            dir.0.join("g.npy"),
        );
        focalflow::npy::write_2d_f32(&yp, &y, shape).unwrap();
        focalflow::npy::write_2d_f32(&pp, &p, shape).unwrap();
        let mut args: Vec<String> = vec!["loss".into()];
        args.extend(case.args.iter().cloned());
        for (flag, path) in [("--y-true", &yp), ("--y-pred", &pp), ("--grad-out", &gp)] {
            args.push(flag.into());
            args.push(path.display().to_string());
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = common::run(&refs);
        let stdout = common::text(&out.stdout);
        assert!(
            out.status.success(),
            "{pick}: {args:?}: {stdout}{}",
            common::text(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        let loss = v["loss"].as_f64().unwrap();
        assert!(
            (loss - case.loss_value_f64).abs() <= LOSS_ATOL + LOSS_RTOL * case.loss_value_f64,
            "{pick}: {loss}"
        );
        let (grad, _) = focalflow::npy::read_2d_f32(&gp).unwrap();
        let (_, want) = on_cpu(case);
        assert_eq!(
            grad, want,
            "{pick}: the command's gradient is the library's"
        );
    }
}
