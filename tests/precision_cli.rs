//! `--precision` as a user meets it: a bf16 run records its precision in config.json and
//! every metrics line, resumes only as bf16, its checkpoint evaluates and predicts in either
//! precision, and every precision a device lacks is one line naming what is missing.

mod common;

use common::{TempDir, command, metrics, text};
use focalflow::precision::{CPU_HIDE_ENV, Precision, cpu_unsupported};

/// A small run of the built-in set.
const RUN: &[&str] = &[
    "train",
    "--quiet",
    "--device",
    "cpu",
    "--synthetic-images",
    "24",
    "--image-size",
    "24",
    "--arch",
    "c16,c16,p,d8",
    "--epochs",
    "2",
];

fn run_ok(args: &[&str]) -> std::process::Output {
    let out = command().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "focalflow {}: {}",
        args.join(" "),
        text(&out.stderr)
    );
    out
}

/// A run's config.json, parsed.
fn config_of(run: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap()
}

/// The last line of a failed command, checked to be its one error line with `words`.
fn error_line(out: &std::process::Output, words: &[&str]) {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "exit code; stderr:\n{stderr}");
    let last = stderr.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
    assert!(last.starts_with("error: "), "one error line: {stderr}");
    for w in words {
        assert!(last.contains(w), "expected `{w}` in: {last}");
    }
}

#[test]
fn a_bf16_run_is_recorded_resumed_and_evaluated_as_bf16() {
    if let Some(why) = cpu_unsupported(Precision::Bf16) {
        common::skipped(&format!(
            "a_bf16_run_is_recorded_resumed_and_evaluated_as_bf16: {why}"
        ));
        return;
    }
    let dir = TempDir::new("precision-run");
    let run = dir.join("run");
    let run_s = run.display().to_string();
    let mut args = RUN.to_vec();
    args.extend(["--precision", "bf16", "--out", &run_s]);
    run_ok(&args);

    let config = config_of(&run);
    assert_eq!(config["precision"], "bf16", "{config}");
    assert_eq!(config["options"]["precision"], "bf16", "{config}");
    let lines = metrics(&run);
    assert_eq!(lines.len(), 2);
    for m in &lines {
        assert_eq!(m["precision"], "bf16", "{m}");
        assert!(m["train_loss"].as_f64().unwrap().is_finite(), "{m}");
    }

    // Resuming in another precision is refused, naming the flag; in bf16 it goes on.
    let mut resume: Vec<&str> = RUN
        .iter()
        .map(|a| if *a == "2" { "3" } else { a })
        .collect();
    resume.extend(["--resume", &run_s]);
    let out = command().args(&resume).output().unwrap();
    error_line(&out, &["--precision", "bf16"]);
    resume.extend(["--precision", "bf16"]);
    run_ok(&resume);
    assert_eq!(metrics(&run).len(), 3);

    // The checkpoint is f32: eval in both precisions, close but not necessarily equal.
    let ck = run.join("checkpoints").join("last.safetensors");
    let ck = ck.display().to_string();
    let data = dir.join("data");
    common::stripes_folder(&data, 8, 5);
    let data = data.display().to_string();
    let loss_in = |precision: &str| -> f64 {
        let out = run_ok(&[
            "eval",
            "--quiet",
            "--json",
            "--device",
            "cpu",
            "--precision",
            precision,
            "--checkpoint",
            &ck,
            "--data",
            &data,
        ]);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        report["metrics"]["nll"].as_f64().unwrap()
    };
    let (bf16, fp32) = (loss_in("bf16"), loss_in("fp32"));
    assert!(
        (bf16 - fp32).abs() <= 0.05 * fp32.abs().max(0.1),
        "eval NLL bf16 {bf16} vs fp32 {fp32}"
    );
    run_ok(&[
        "predict",
        "--device",
        "cpu",
        "--precision",
        "bf16",
        "--checkpoint",
        &ck,
        &data,
    ]);
}

#[test]
fn a_precision_the_device_lacks_is_one_line_naming_what_is_missing() {
    // TF32 exists on NVIDIA tensor cores only; the line offers what this CPU runs instead.
    let mut args = RUN.to_vec();
    args.extend(["--precision", "tf32"]);
    let instead = match cpu_unsupported(Precision::Bf16) {
        None => "use --device cuda, or --precision bf16 or fp32 on the cpu",
        Some(_) => "use --device cuda, or --precision fp32 on the cpu",
    };
    error_line(
        &command().args(&args).output().unwrap(),
        &["--precision tf32", "NVIDIA", instead],
    );
    // A CPU without AVX512_BF16 (hidden here, as if absent).
    let mut args = RUN.to_vec();
    args.extend(["--precision", "bf16"]);
    let out = command()
        .args(&args)
        .env(CPU_HIDE_ENV, "avx512bf16")
        .output()
        .unwrap();
    error_line(
        &out,
        &[
            "--precision bf16 on cpu",
            "AVX512_BF16",
            CPU_HIDE_ENV,
            "--precision fp32",
        ],
    );
    // The plain reference path multiplies in f32 only.
    let out = command()
        .args(&args)
        .env("FOCALFLOW_CPU_PATH", "reference")
        .output()
        .unwrap();
    error_line(
        &out,
        &["--precision bf16 on cpu", "FOCALFLOW_CPU_PATH=reference"],
    );
    let out = command()
        .args([
            "bench",
            "--device",
            "cpu",
            "--precision",
            "bf16",
            "--image-size",
            "32",
        ])
        .env(CPU_HIDE_ENV, "avx512bf16")
        .output()
        .unwrap();
    error_line(&out, &["AVX512_BF16"]);
}

/// The tensor-core kernels train on the emulator: TF32 and BF16 runs record their
/// precision, stay finite and follow the fp32 run's losses closely (the same weights and
/// batches, only the products' operands rounded).
#[test]
fn the_emulator_trains_with_tensor_cores() {
    let dir = TempDir::new("precision-emu");
    let loss_of = |precision: &str| -> Vec<f64> {
        let run = dir.join(precision);
        let run_s = run.display().to_string();
        let mut args: Vec<&str> = RUN
            .iter()
            .map(|a| if *a == "cpu" { "cuda-emu" } else { a })
            .collect();
        args.extend(["--precision", precision, "--out", &run_s]);
        run_ok(&args);
        let config = config_of(&run);
        assert_eq!(config["precision"], precision, "{config}");
        metrics(&run)
            .iter()
            .map(|m| {
                assert_eq!(m["precision"], precision, "{m}");
                m["train_loss"].as_f64().unwrap()
            })
            .collect()
    };
    let fp32 = loss_of("fp32");
    for (precision, cores) in [("tf32", "TF32 tensor cores"), ("bf16", "BF16 tensor cores")] {
        let out = run_ok(&[
            "bench",
            "--device",
            "cuda-emu",
            "--precision",
            precision,
            "--image-size",
            "16",
            "--batch-size",
            "2",
            "--steps",
            "1",
            "--arch",
            "c2,p,d3",
            "--json",
        ]);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["precision"], precision, "{report}");
        let paths = report["conv_layers"].to_string();
        assert!(paths.contains(cores), "{paths}");
    }
    for precision in ["tf32", "bf16"] {
        let losses = loss_of(precision);
        for (got, want) in losses.iter().zip(&fp32) {
            assert!(got.is_finite(), "{precision}: {losses:?}");
            assert!(
                (got - want).abs() <= 0.05 * want.abs().max(0.1),
                "{precision}: train losses {losses:?} against fp32's {fp32:?}"
            );
        }
    }
}

#[test]
fn bench_and_info_state_the_precision() {
    let out = run_ok(&["info"]);
    let info = text(&out.stdout);
    let cpu = info
        .lines()
        .find(|l| l.trim_start().starts_with("cpu "))
        .unwrap();
    assert!(cpu.contains("precisions: fp32"), "{cpu}");
    // The paths it names follow the CPU's features.
    let winograd = "Winograd 3x3 layers";
    assert_eq!(
        cpu.contains(winograd),
        focalflow::precision::cpu_has("avx512f"),
        "{cpu}"
    );
    let hidden = command()
        .arg("info")
        .env(CPU_HIDE_ENV, "avx512f")
        .output()
        .unwrap();
    let hidden = text(&hidden.stdout);
    assert!(
        hidden.contains("paths: im2col + GEMM and GEMM for every layer: no AVX-512F here"),
        "{hidden}"
    );
    assert!(
        cpu.contains("not tf32: TF32 is a format of NVIDIA"),
        "{cpu}"
    );
    assert_eq!(
        cpu.contains("bf16") && !cpu.contains("not bf16"),
        cpu_unsupported(Precision::Bf16).is_none(),
        "{cpu}"
    );
    if cpu_unsupported(Precision::Bf16).is_some() {
        common::skipped("bench_and_info_state_the_precision (bench in bf16): no AVX512_BF16");
        return;
    }
    let out = run_ok(&[
        "bench",
        "--device",
        "cpu",
        "--precision",
        "bf16",
        "--image-size",
        "48",
        "--batch-size",
        "2",
        "--steps",
        "1",
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["precision"], "bf16", "{report}");
    let paths = report["conv_layers"].to_string();
    assert!(paths.contains("bf16 products"), "{paths}");
}
