//! End to end through the binary on a tiny trained run: the run folder (metrics with the
//! validation fields, checkpoints, plots), `eval`, `predict`, `calibrate`, `compare`,
//! `train --resume`, and their errors.

use std::path::Path;
use std::process::Output;

use serde_json::Value;

mod common;
use common::{TempDir, run, text};

fn ok(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what}: exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The error line of a failed command.
fn fails(what: &str, out: Output) -> String {
    assert!(
        !out.status.success(),
        "{what} should fail:\n{}",
        text(&out.stdout)
    );
    let stderr = text(&out.stderr);
    stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .to_string()
}

fn json(s: &str) -> Value {
    serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

/// `train` of the built-in set at 32x32 (64 images, 2 epochs) into `out`.
fn train(out: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "train",
        "--image-size",
        "32",
        "--synthetic-images",
        "64",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--quiet",
        "--device",
        "cpu",
        "--out",
        s(out),
    ];
    args.extend_from_slice(extra);
    ok("train", run(&args))
}

fn non_empty(path: &Path) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        bytes.len() > 1000,
        "{} has only {} bytes",
        path.display(),
        bytes.len()
    );
    bytes
}

fn check_plots(dir: &Path, stem: &str, must_say: &str) {
    let svg = String::from_utf8(non_empty(&dir.join(format!("{stem}.svg")))).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains(must_say),
        "{stem}.svg lacks {must_say:?}"
    );
    let png = non_empty(&dir.join(format!("{stem}.png")));
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let img = image::load_from_memory(&png).unwrap().to_rgb8();
    let dark = img
        .pixels()
        .filter(|p| p.0.iter().all(|&c| c < 100))
        .count();
    assert!(
        dark > 500,
        "{stem}.png has text and lines ({dark} dark pixels)"
    );
}

#[test]
fn run_folder_eval_predict_calibrate_compare() {
    let tmp = TempDir::new("all");
    let run_dir = tmp.join("run");
    let stdout = train(&run_dir, &[]);

    // The run folder: metrics with the validation fields, checkpoints, plots, the table.
    let lines: Vec<Value> = std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(json)
        .collect();
    assert_eq!(lines.len(), 2);
    for field in [
        "epoch",
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_accuracy",
        "images_per_second",
        "seconds",
        "val_balanced_accuracy",
        "val_macro_f1",
        "val_nll",
        "val_brier",
        "val_ece",
        "val_mce",
        "val_adaptive_ece",
        "val_classwise_ece",
        "val_per_class",
        "val_confusion",
    ] {
        assert!(
            lines[1].get(field).is_some(),
            "metrics.jsonl lacks {field}: {}",
            lines[1]
        );
    }
    let confusion: u64 = lines[1]["val_confusion"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_u64().unwrap()))
        .sum();
    assert_eq!(
        confusion, 12,
        "64 images, 20% of each class of 32: round(6.4) = 6 each"
    );
    assert!(
        stdout.contains("epoch train loss") && stdout.contains("confusion (rows: true"),
        "{stdout}"
    );
    non_empty(&run_dir.join("checkpoints/last.safetensors"));
    non_empty(&run_dir.join("checkpoints/best.safetensors"));
    check_plots(&run_dir, "training_curves", "epoch");
    check_plots(&run_dir, "reliability", "ECE");

    // eval on a labelled folder.
    let data = tmp.join("data");
    common::stripes_folder(&data, 24, 99);
    let eval_dir = tmp.join("eval");
    let report = json(&ok(
        "eval --json",
        run(&[
            "eval",
            "--checkpoint",
            s(&run_dir),
            "--data",
            s(&data),
            "--no-cache",
            "--json",
            "--out",
            s(&eval_dir),
        ]),
    ));
    let m = &report["metrics"];
    assert_eq!(m["images"], 24);
    assert_eq!(report["temperature"], 1.0);
    assert_eq!(m["per_class"].as_array().unwrap().len(), 2);
    assert_eq!(m["reliability"].as_array().unwrap().len(), 15);
    let counts: Vec<Vec<u64>> = serde_json::from_value(m["confusion"]["counts"].clone()).unwrap();
    assert_eq!(counts[0][0] + counts[0][1], 12);
    for key in [
        "accuracy",
        "balanced_accuracy",
        "macro_f1",
        "nll",
        "brier",
        "ece",
        "mce",
    ] {
        assert!(m[key].as_f64().is_some_and(f64::is_finite), "{key}: {m}");
    }
    check_plots(&eval_dir, "reliability", "ECE");
    assert!(eval_dir.join("metrics.json").is_file());
    let table = ok(
        "eval",
        run(&[
            "eval",
            "--checkpoint",
            s(&run_dir),
            "--data",
            s(&data),
            "--no-cache",
            "--out",
            s(&eval_dir),
        ]),
    );
    for want in [
        "balanced acc",
        "precision",
        "confusion (rows: true",
        "confidence bins",
        "reliability.png",
    ] {
        assert!(table.contains(want), "eval output lacks {want:?}:\n{table}");
    }

    // predict: files and folders, an unreadable file reported and skipped.
    let broken = tmp.join("broken.jpg");
    std::fs::write(&broken, b"\xff\xd8\xff not really a jpeg").unwrap();
    let one = data.join("vertical/img001.png");
    let pred = run(&[
        "predict",
        "--checkpoint",
        s(&run_dir),
        s(&data),
        s(&broken),
        "--json",
    ]);
    let stderr = text(&pred.stderr);
    let pred = json(&ok("predict --json", pred));
    let predictions = pred["predictions"].as_array().unwrap();
    assert_eq!(predictions.len(), 24);
    assert_eq!(pred["skipped"].as_array().unwrap().len(), 1);
    assert!(
        stderr.contains("skipped") && stderr.contains("broken.jpg"),
        "{stderr}"
    );
    // Predicted classes agree with eval's confusion matrix columns.
    let as_vertical = predictions
        .iter()
        .filter(|p| p["class"] == "vertical")
        .count() as u64;
    assert_eq!(as_vertical, counts[0][1] + counts[1][1]);
    for p in predictions {
        let sum: f64 = p["probabilities"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_f64().unwrap())
            .sum();
        assert!((sum - 1.0).abs() < 1e-9);
    }
    let csv = ok(
        "predict --csv",
        run(&["predict", "--checkpoint", s(&run_dir), s(&one), "--csv"]),
    );
    let mut csv_lines = csv.lines();
    assert_eq!(
        csv_lines.next().unwrap(),
        "file,class,confidence,p_horizontal,p_vertical"
    );
    assert_eq!(csv_lines.count(), 1);
    let table = ok(
        "predict",
        run(&["predict", "--checkpoint", s(&run_dir), s(&one)]),
    );
    assert!(
        table.contains("img001.png") && table.contains("p(vertic~)"),
        "{table}"
    );
    let err = fails(
        "predict of nothing readable",
        run(&["predict", "--checkpoint", s(&run_dir), s(&broken)]),
    );
    assert!(err.contains("no image could be read"), "{err}");

    // calibrate into a copy; eval then applies the temperature.
    let calibrated = tmp.join("calibrated.safetensors");
    let cal = json(&ok(
        "calibrate",
        run(&[
            "calibrate",
            "--checkpoint",
            s(&run_dir),
            "--data",
            s(&data),
            "--no-cache",
            "--json",
            "--out",
            s(&calibrated),
        ]),
    ));
    let t = cal["temperature"].as_f64().unwrap();
    assert!(t > 0.0 && t.is_finite());
    let (before, after) = (
        cal["before"]["nll"].as_f64().unwrap(),
        cal["after"]["nll"].as_f64().unwrap(),
    );
    assert!(after <= before + 1e-12, "NLL {before} -> {after}");
    assert_eq!(cal["before"]["accuracy"], cal["after"]["accuracy"]);
    let meta = focalflow::checkpoint::read_metadata(&calibrated).unwrap();
    assert_eq!(meta["temperature"].parse::<f64>().unwrap(), t);
    let report = json(&ok(
        "eval calibrated",
        run(&[
            "eval",
            "--checkpoint",
            s(&calibrated),
            "--data",
            s(&data),
            "--no-cache",
            "--json",
            "--out",
            s(&eval_dir),
        ]),
    ));
    assert_eq!(report["temperature"].as_f64().unwrap(), t);
    assert!((report["metrics"]["nll"].as_f64().unwrap() - after).abs() < 1e-9);
    assert_eq!(report["metrics"]["accuracy"], m["accuracy"]);
    let text_out = ok(
        "calibrate table",
        run(&[
            "calibrate",
            "--checkpoint",
            s(&calibrated),
            "--data",
            s(&data),
            "--no-cache",
        ]),
    );
    assert!(
        text_out.contains("before (T = 1)") && text_out.contains("replaces"),
        "{text_out}"
    );

    // compare: two runs with different losses.
    let ce_dir = tmp.join("ce");
    train(&ce_dir, &["--loss", "ce"]);
    let table = ok("compare", run(&["compare", s(&run_dir), s(&ce_dir)]));
    assert!(
        table.contains("focal(") && table.contains("ce(") && table.contains('*'),
        "{table}"
    );
    let rows = json(&ok(
        "compare --json",
        run(&["compare", s(&run_dir), s(&ce_dir), "--json"]),
    ));
    assert_eq!(rows.as_array().unwrap().len(), 2);
    assert!(rows[1]["val_ece"].as_f64().is_some());
    assert_eq!(rows[1]["finished"], true);
    assert!(!table.contains("unfinished"), "{table}");
    // A run short of its --epochs (as an interrupted one is) is marked.
    let config_path = ce_dir.join("config.json");
    let mut config = json(&std::fs::read_to_string(&config_path).unwrap());
    let trained = config["options"]["epochs"].as_u64().unwrap();
    config["options"]["epochs"] = (trained + 3).into();
    std::fs::write(&config_path, config.to_string()).unwrap();
    let table = ok("compare", run(&["compare", s(&run_dir), s(&ce_dir)]));
    assert!(
        table.contains(&format!("{} (unfinished)", s(&ce_dir)))
            && table.contains(&format!("{trained}/{}", trained + 3))
            && table.contains("not a final result"),
        "{table}"
    );
}

#[test]
fn resume_through_the_binary_and_clear_errors() {
    let tmp = TempDir::new("resume");
    let run_dir = tmp.join("run");
    train(&run_dir, &[]);
    let resume = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "--image-size",
            "32",
            "--synthetic-images",
            "64",
            "--batch-size",
            "8",
            "--quiet",
            "--device",
            "cpu",
            "--resume",
            s(&run_dir),
        ];
        args.extend_from_slice(extra);
        run(&args)
    };
    let out = ok("resume", resume(&["--epochs", "3"]));
    assert!(
        out.contains("resuming") && out.contains("epoch 3/3"),
        "{out}"
    );
    assert!(
        !out.contains("epoch 1/3"),
        "epochs done are not trained again: {out}"
    );
    assert_eq!(
        std::fs::read_to_string(run_dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .count(),
        3
    );

    let err = fails(
        "resume with another lr",
        resume(&["--epochs", "4", "--lr", "0.01"]),
    );
    assert!(
        err.contains("--lr") && err.contains("only --epochs may change"),
        "{err}"
    );
    let err = fails("resume done", resume(&["--epochs", "3"]));
    assert!(err.contains("completed 3 of --epochs 3"), "{err}");
    let err = fails(
        "resume nothing",
        run(&["train", "--resume", s(&tmp.join("nope")), "--quiet"]),
    );
    assert!(
        err.contains("last.safetensors") && err.contains("--resume"),
        "{err}"
    );

    // eval errors name the file or folder.
    let err = fails(
        "eval missing checkpoint",
        run(&[
            "eval",
            "--checkpoint",
            s(&tmp.join("none.safetensors")),
            "--data",
            s(&tmp.0),
        ]),
    );
    assert!(
        err.contains("none.safetensors") && err.contains("--checkpoint"),
        "{err}"
    );
    let data = tmp.join("data");
    common::stripes_folder(&data, 4, 5);
    std::fs::create_dir_all(data.join("diagonal")).unwrap();
    std::fs::copy(
        data.join("vertical/img001.png"),
        data.join("diagonal/x.png"),
    )
    .unwrap();
    let err = fails(
        "eval unknown class",
        run(&[
            "eval",
            "--checkpoint",
            s(&run_dir),
            "--data",
            s(&data),
            "--no-cache",
        ]),
    );
    assert!(
        err.contains("\"diagonal\"") && err.contains("horizontal, vertical"),
        "{err}"
    );
}

#[test]
fn eval_and_predict_on_the_cuda_emulator_match_the_cpu() {
    // --device runs the checkpoint's model on another backend (here the CUDA emulator: the
    // same kernels and host code as on a GPU); the figures must be the CPU's, to float
    // rounding.
    let tmp = TempDir::new("devices");
    let run_dir = tmp.join("run");
    train(&run_dir, &[]);
    let data = tmp.join("data");
    common::stripes_folder(&data, 8, 7);
    let eval_on = |device: &str| {
        let out = run(&[
            "eval",
            "--checkpoint",
            s(&run_dir),
            "--data",
            s(&data),
            "--no-cache",
            "--json",
            "--device",
            device,
            "--out",
            s(&tmp.join(&format!("eval-{device}"))),
        ]);
        let said = text(&out.stderr);
        assert!(
            said.contains(&format!("device: {device}; precision: fp32\n")),
            "{said}"
        );
        json(&ok(&format!("eval --device {device}"), out))["metrics"].clone()
    };
    let (cpu, emu) = (eval_on("cpu"), eval_on("cuda-emu"));
    assert_eq!(cpu["images"], 8);
    assert_eq!(cpu["confusion"], emu["confusion"]);
    let nll = |m: &Value| m["nll"].as_f64().unwrap();
    assert!(
        (nll(&cpu) - nll(&emu)).abs() < 1e-4 * (1.0 + nll(&cpu)),
        "NLL {} on cpu, {} on cuda-emu",
        nll(&cpu),
        nll(&emu)
    );

    let predict_on = |device: &str| {
        let out = run(&[
            "predict",
            "--checkpoint",
            s(&run_dir),
            s(&data),
            "--json",
            "--device",
            device,
        ]);
        let said = text(&out.stderr);
        assert!(
            said.contains(&format!("device: {device}; precision: fp32\n")),
            "{said}"
        );
        let out = json(&ok(&format!("predict --device {device}"), out));
        out["predictions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let probs = p["probabilities"].as_object().unwrap();
                (
                    p["file"].as_str().unwrap().to_string(),
                    probs["vertical"].as_f64().unwrap(),
                )
            })
            .collect::<Vec<_>>()
    };
    let (cpu, emu) = (predict_on("cpu"), predict_on("cuda-emu"));
    assert_eq!(cpu.len(), 8);
    for ((file, p), (file_emu, q)) in cpu.iter().zip(&emu) {
        assert_eq!(file, file_emu);
        assert!(
            (p - q).abs() < 1e-5,
            "{file}: p(vertical) {p} on cpu, {q} on cuda-emu"
        );
    }
}
