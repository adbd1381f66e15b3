//! The command line on each device: `train` and `loss` on the emulator (cuda-emu) agree
//! with the cpu, and on the GPU where there is one; `--device cuda` without a GPU is one
//! clear line, `--device auto` falls back to the cpu.

mod common;

use std::path::Path;

use common::assert_close;
use common::targets::gpu_executor;
use common::{TempDir, run};

/// `train_loss` and `val_loss` of each epoch of a run folder.
fn losses(folder: &Path) -> Vec<(f64, f64)> {
    let text = std::fs::read_to_string(folder.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["train_loss"].as_f64().unwrap(),
                v["val_loss"].as_f64().unwrap(),
            )
        })
        .collect()
}

fn train_losses(device: &str, dir: &Path) -> Vec<(f64, f64)> {
    let out = dir.join(device);
    let o = run(&[
        "train",
        "--device",
        device,
        "--synthetic-images",
        "24",
        "--image-size",
        "14",
        "--arch",
        "c3,p,c4,p,d5",
        "--epochs",
        "2",
        "--batch-size",
        "5",
        "--steps-per-epoch",
        "3",
        "--seed",
        "3",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        o.status.success(),
        "train --device {device} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    losses(&out)
}

/// `focalflow train --device cuda-emu` gives the losses of `--device cpu` (same seed, same
/// data, same batches), within float tolerance (1e-4 relative; see `training_step`).
#[test]
fn cli_train_on_the_emulator_matches_the_cpu() {
    let dir = TempDir::new("device-cli-train");
    let cpu = train_losses("cpu", &dir.0);
    let emu = train_losses("cuda-emu", &dir.0);
    assert_eq!(cpu.len(), 2);
    assert_eq!(emu.len(), cpu.len(), "epochs on cuda-emu");
    for (e, c) in emu.iter().zip(&cpu) {
        assert!(
            (e.0 - c.0).abs() <= 1e-4 * c.0.abs(),
            "train loss {} on cuda-emu, {} on cpu",
            e.0,
            c.0
        );
        assert!(
            (e.1 - c.1).abs() <= 1e-4 * c.1.abs(),
            "val loss {} on cuda-emu, {} on cpu",
            e.1,
            c.1
        );
    }
    if gpu_executor("device_cli::cli_train_on_the_emulator_matches_the_cpu").is_some() {
        let gpu = train_losses("cuda", &dir.0);
        assert_eq!(gpu.len(), cpu.len(), "epochs on cuda");
        for (g, c) in gpu.iter().zip(&cpu) {
            assert!(
                (g.0 - c.0).abs() <= 1e-4 * c.0.abs(),
                "train loss {} on cuda, {} on cpu",
                g.0,
                c.0
            );
        }
    }
}

/// Without a GPU, `--device cuda` fails with one clear line saying why and what to do;
/// `--device auto` falls back to the cpu and says so.
#[test]
fn cli_device_cuda_without_a_gpu_is_a_clear_error() {
    let args = |device: &'static str| {
        vec![
            "bench",
            "--device",
            device,
            "--image-size",
            "12",
            "--arch",
            "c2,p,d3",
            "--batch-size",
            "2",
            "--steps",
            "1",
        ]
    };
    let o = run(&args("cuda"));
    let stderr = String::from_utf8_lossy(&o.stderr);
    if gpu_executor("device_cli::cli_device_cuda_without_a_gpu_is_a_clear_error").is_some() {
        assert!(o.status.success(), "{stderr}");
    } else {
        assert!(!o.status.success(), "--device cuda without a GPU must fail");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "one line: {stderr}");
        assert!(lines[0].contains("--device cuda"), "{stderr}");
        assert!(
            lines[0].contains("cpu") && lines[0].contains("cuda-emu"),
            "what to do: {stderr}"
        );
        let o = run(&args("auto"));
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{stderr}");
        assert!(
            stderr.contains("--device auto: cpu"),
            "auto says which: {stderr}"
        );
    }
}

/// `focalflow loss --device cuda-emu` runs the loss through the CUDA backend and agrees
/// with `--device cpu`.
#[test]
fn cli_loss_on_the_emulator_matches_the_cpu() {
    let dir = TempDir::new("device-cli-loss");
    let (yt, yp) = (dir.join("t.npy"), dir.join("p.npy"));
    let t = [
        0.0f32, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0,
    ];
    let p = [
        0.2f32, 0.5, 0.1, 0.1, 0.1, 0.7, 0.1, 0.1, 0.05, 0.05, 0.3, 0.3, 0.2, 0.1, 0.1,
    ];
    focalflow::npy::write_2d_f32(&yt, &t, [3, 5]).unwrap();
    focalflow::npy::write_2d_f32(&yp, &p, [3, 5]).unwrap();
    let run = |device: &str| {
        let g = dir.join(&format!("g-{device}.npy"));
        let o = run(&[
            "loss",
            "--loss",
            "focal",
            "--y-true",
            yt.to_str().unwrap(),
            "--y-pred",
            yp.to_str().unwrap(),
            "--grad-out",
            g.to_str().unwrap(),
            "--device",
            device,
        ]);
        assert!(
            o.status.success(),
            "loss --device {device}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        (
            v["loss"].as_f64().unwrap(),
            focalflow::npy::read_2d_f32(&g).unwrap().0,
        )
    };
    let (lc, gc) = run("cpu");
    let (le, ge) = run("cuda-emu");
    assert!(
        (le - lc).abs() <= 1e-5 * lc.abs(),
        "loss {le} on cuda-emu, {lc} on cpu"
    );
    assert_close("loss gradient", &ge, &gc, 1e-5);
}

/// `bench` names the algorithm of every convolution pass, layer by layer (text and JSON).
#[test]
fn bench_reports_the_path_of_each_convolution() {
    let args = [
        "bench",
        "--device",
        "cpu",
        "--image-size",
        "20",
        "--arch",
        "c16,p,c16,d4",
        "--batch-size",
        "2",
        "--steps",
        "1",
    ];
    let o = run(&[&args[..], &["--json"]].concat());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let layers = v["conv_layers"].as_array().expect("conv_layers");
    assert_eq!(layers.len(), 2, "{v}");
    assert!(
        layers[0]["layer"]
            .as_str()
            .unwrap()
            .starts_with("conv 1: 20x20x3 -> 16")
    );
    assert!(
        layers[0]["paths"]["backward_data"]
            .as_str()
            .unwrap()
            .starts_with("not run")
    );
    let known = [
        "direct 3x3 (AVX-512)",
        "Winograd F(2x2,3x3) (AVX-512)",
        "im2col + GEMM",
    ];
    for pass in ["forward", "backward_data", "backward_filter"] {
        let path = layers[1]["paths"][pass].as_str().unwrap();
        assert!(known.contains(&path), "{pass}: {path}");
    }
    let text = String::from_utf8_lossy(&run(&args).stdout).into_owned();
    assert!(
        text.contains("conv 2: 9x9x16 -> 16, 3x3 valid: forward "),
        "{text}"
    );
}

/// `FOCALFLOW_CPU_PATH=reference` puts the CPU on im2col + GEMM everywhere (the plain
/// reference path); a wrong value is one clear line.
#[test]
fn the_cpu_reference_path_is_one_variable_away() {
    let bench = |value: &str| {
        common::command()
            .args([
                "bench",
                "--device",
                "cpu",
                "--image-size",
                "20",
                "--arch",
                "c16,p,c16,d4",
                "--batch-size",
                "2",
                "--steps",
                "1",
                "--json",
            ])
            .env("FOCALFLOW_CPU_PATH", value)
            .output()
            .unwrap()
    };
    let o = bench("reference");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for pass in ["forward", "backward_data", "backward_filter"] {
        assert_eq!(v["conv_layers"][1]["paths"][pass], "im2col + GEMM", "{v}");
    }
    let o = bench("fastest");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        err.trim(),
        "error: FOCALFLOW_CPU_PATH=fastest: expected auto or reference"
    );
}
