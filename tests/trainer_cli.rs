//! What a practitioner expects of a trainer, through the `focalflow` binary: Ctrl-C that
//! saves and resumes exactly, learning-rate schedules, `--monitor` and early stopping.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{TempDir, metrics, text};
use serde_json::Value;

/// A small run: 96 generated 32x32 images (76 train / 20 val), batches of 16: 5 steps per
/// epoch.
fn base_args(out: &Path, epochs: &str) -> Vec<String> {
    [
        "train",
        "--quiet",
        "--image-size",
        "32",
        "--synthetic-images",
        "96",
        "--arch",
        "c8,p,d16",
        "--batch-size",
        "16",
        "--augment",
        "flip",
        "--epochs",
        epochs,
        "--out",
        out.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn run_with(args: &[String], env: &[(&str, &str)]) -> Output {
    let mut cmd = common::command();
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// The tensors of a safetensors file (name -> bytes), metadata aside.
fn tensors(path: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let mut out: Vec<(String, Vec<u8>)> = header
        .iter()
        .filter(|(k, _)| k.as_str() != "__metadata__")
        .map(|(k, v)| {
            let o = v["data_offsets"].as_array().unwrap();
            let (a, b) = (
                o[0].as_u64().unwrap() as usize,
                o[1].as_u64().unwrap() as usize,
            );
            (k.clone(), bytes[8 + n + a..8 + n + b].to_vec())
        })
        .collect();
    out.sort();
    out
}

/// The metrics lines without their timings (which differ from run to run).
fn untimed(lines: &[Value]) -> Vec<Value> {
    lines
        .iter()
        .map(|m| {
            let mut m = m.clone();
            let o = m.as_object_mut().unwrap();
            o.remove("seconds");
            o.remove("images_per_second");
            m
        })
        .collect()
}

/// The shell words of the `continue with:` line of an interrupted run.
fn resume_words(stderr: &str) -> Vec<String> {
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("continue with: "))
        .unwrap_or_else(|| panic!("no resume command:\n{stderr}"));
    // The test's paths need no quoting.
    line.split(' ').skip(1).map(String::from).collect()
}

#[test]
fn an_interrupt_mid_epoch_saves_and_the_resume_command_finishes_the_run_exactly() {
    for (device, flags) in [
        (
            "cpu",
            vec!["--lr-schedule", "cosine", "--warmup-epochs", "0.5"],
        ),
        (
            "cpu",
            vec![
                "--lr-schedule",
                "plateau:1:0.5",
                "--monitor",
                "val-balanced-accuracy",
                "--early-stop",
                "5",
            ],
        ),
        ("cuda-emu", vec!["--lr-schedule", "step:1:0.5"]),
    ] {
        let dir = TempDir::new("interrupt");
        let mut full = base_args(&dir.join("full"), "3");
        let mut cut = base_args(&dir.join("cut"), "3");
        for args in [&mut full, &mut cut] {
            args.extend(["--device".to_string(), device.to_string()]);
            args.extend(flags.iter().map(|s| s.to_string()));
        }
        let done = run_with(&full, &[]);
        assert!(done.status.success(), "{}", text(&done.stderr));
        // Step 7 of 15: the middle of epoch 2.
        let stopped = run_with(&cut, &[("FOCALFLOW_INTERRUPT_AFTER_STEPS", "7")]);
        let stderr = text(&stopped.stderr);
        assert_eq!(
            stopped.status.code(),
            Some(130),
            "{device} {flags:?}: {stderr}"
        );
        assert!(
            stderr.contains("interrupted at epoch 2, step 2 of 5"),
            "{stderr}"
        );
        let partial = metrics(&dir.join("cut"));
        assert_eq!(partial.len(), 2, "epoch 1 and the partial epoch 2");
        assert_eq!(partial[1]["partial"], true);
        assert_eq!(partial[1]["learning_rates"].as_array().unwrap().len(), 2);
        assert!(dir.join("cut/checkpoints/last.safetensors").is_file());

        let resumed = run_with(&resume_words(&stderr), &[]);
        assert!(resumed.status.success(), "{}", text(&resumed.stderr));
        let (a, b) = (metrics(&dir.join("full")), metrics(&dir.join("cut")));
        assert_eq!(
            untimed(&a),
            untimed(&b),
            "{device} {flags:?}: metrics differ"
        );
        for name in ["last", "best"] {
            let path = |run: &str| dir.0.join(format!("{run}/checkpoints/{name}.safetensors"));
            assert_eq!(
                tensors(&path("full")),
                tensors(&path("cut")),
                "{device} {flags:?}: {name} weights differ"
            );
        }
    }
}

#[test]
fn real_signals_stop_training_with_status_130() {
    let dir = TempDir::new("sigint");
    // Long enough to be interrupted while training: 2,000 images, 200 epochs.
    // Interrupted once its first epoch is done.
    let child = training_past_epoch_1(&dir.join("run"));
    let kill = |sig: &str| {
        Command::new("kill")
            .args([sig, &child.id().to_string()])
            .status()
            .unwrap()
    };
    assert!(kill("-INT").success());
    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("continue with: ") && stderr.contains("--resume"),
        "{stderr}"
    );
    assert!(dir.join("run/checkpoints/last.safetensors").is_file());

    // Two signals at once (TERM right after INT): out with 130, no temporary file left.
    let dir = TempDir::new("sigint-twice");
    let child = training_past_epoch_1(&dir.join("run"));
    let pid = child.id().to_string();
    Command::new("kill").args(["-INT", &pid]).status().unwrap();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
    assert_no_temporary_files(&dir.join("run"));
}

#[test]
fn a_second_interrupt_quits_at_once_without_saving() {
    // Deterministic: the second SIGINT comes while the first is being handled, so the run
    // must not get to its checkpoint of the partial epoch.
    let dir = TempDir::new("twice");
    let run = dir.join("run");
    let out = run_with(
        &base_args(&run, "3"),
        &[
            ("FOCALFLOW_INTERRUPT_AFTER_STEPS", "7"),
            ("FOCALFLOW_INTERRUPT_TWICE", "1"),
        ],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("interrupted again: stopped at once"),
        "{stderr}"
    );
    assert!(!stderr.contains("continue with:"), "{stderr}");
    // Epoch 1 finished and was saved; the interrupted epoch 2 was not.
    let lines = metrics(&run);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let ck =
        focalflow::checkpoint::Checkpoint::load(&run.join("checkpoints/last.safetensors")).unwrap();
    assert_eq!(ck.training.unwrap().partial, None);
    assert_no_temporary_files(&run);
}

fn assert_no_temporary_files(run: &Path) {
    let leftovers: Vec<String> = walk(run)
        .into_iter()
        .filter(|p| p.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A long run (2,000 images, 200 epochs) into `out`, once it has printed its first epoch.
fn training_past_epoch_1(out: &Path) -> std::process::Child {
    let mut args = base_args(out, "200");
    let at = args.iter().position(|a| a == "--synthetic-images").unwrap();
    args[at + 1] = "2000".into();
    let mut child = common::command()
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(
        lines.any(|l| l.unwrap().starts_with("epoch 1/")),
        "no epoch line"
    );
    // Keep reading, or the next line written would find the pipe closed.
    std::thread::spawn(move || lines.for_each(drop));
    child
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}

#[test]
fn schedules_are_logged_per_step_and_early_stopping_follows_the_monitor() {
    let dir = TempDir::new("schedule");
    let mut args = base_args(&dir.join("step"), "3");
    args.extend(["--lr-schedule", "step:1:0.5", "--lr", "0.002"].map(String::from));
    let out = run_with(&args, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lrs: Vec<Vec<f64>> = metrics(&dir.join("step"))
        .iter()
        .map(|m| {
            m["learning_rates"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect()
        })
        .collect();
    assert_eq!(lrs, vec![vec![0.002; 5], vec![0.001; 5], vec![0.0005; 5]]);

    // A learning rate too small to change anything: val accuracy never improves after
    // epoch 1, so patience 1 stops after epoch 2, and best is epoch 1.
    let mut args = base_args(&dir.join("stop"), "6");
    args.extend(
        [
            "--lr",
            "1e-12",
            "--early-stop",
            "1",
            "--monitor",
            "val-accuracy",
        ]
        .map(String::from),
    );
    let out = run_with(&args, &[]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(metrics(&dir.join("stop")).len(), 2, "{stdout}");
    assert!(
        stdout.contains("early stop after epoch 2: val_accuracy has not improved for 1 epochs"),
        "{stdout}"
    );
    assert!(stdout.contains("(epoch 1, best val_accuracy)"), "{stdout}");

    // Early stopping without a validation split has nothing to watch.
    let mut args = base_args(&dir.join("noval"), "2");
    args.extend(["--early-stop", "2", "--val-fraction", "0"].map(String::from));
    let out = run_with(&args, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--early-stop watches --monitor val_loss"));
}

/// Every event of the run folder's event file, after checking its framing and CRCs.
fn events(run: &Path) -> Vec<focalflow::tensorboard::Event> {
    use prost::Message;
    let files: Vec<_> = walk(run)
        .into_iter()
        .filter(|p| p.contains("tfevents"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let bytes = std::fs::read(&files[0]).unwrap();
    let (records, problems) = focalflow::data::tfrecord::frame(&bytes);
    assert!(problems.is_empty(), "{problems:?}");
    records
        .iter()
        .map(|r| focalflow::tensorboard::Event::decode(&bytes[r.offset..r.offset + r.len]).unwrap())
        .collect()
}

#[test]
fn the_run_folder_has_tensorboard_events_of_every_metric() {
    use focalflow::tensorboard::{EventKind, ValueKind};
    let dir = TempDir::new("tensorboard");
    let run = dir.join("run");
    let out = run_with(&base_args(&run, "2"), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let events = events(&run);
    assert_eq!(
        events[0].kind,
        Some(EventKind::FileVersion("brain.Event:2".into()))
    );
    // (tag, step) -> value, of every scalar; and the images.
    let mut scalars = std::collections::BTreeMap::new();
    let mut images = Vec::new();
    for e in &events[1..] {
        let Some(EventKind::Summary(s)) = &e.kind else {
            panic!("not a summary: {e:?}")
        };
        for v in &s.value {
            match &v.kind {
                Some(ValueKind::SimpleValue(x)) => {
                    scalars.insert((v.tag.clone(), e.step), *x);
                }
                Some(ValueKind::Image(i)) => images.push((v.tag.clone(), e.step, i.clone())),
                None => panic!("empty value {v:?}"),
            }
        }
    }
    let lines = metrics(&run);
    for m in &lines {
        let epoch = m["epoch"].as_i64().unwrap();
        for key in [
            "train_loss",
            "val_loss",
            "val_accuracy",
            "val_balanced_accuracy",
            "val_ece",
        ] {
            assert_eq!(
                scalars[&(key.to_string(), epoch)],
                m[key].as_f64().unwrap() as f32,
                "{key} at epoch {epoch}"
            );
        }
    }
    let lrs: Vec<i64> = scalars
        .keys()
        .filter(|(t, _)| t == "learning_rate")
        .map(|(_, s)| *s)
        .collect();
    assert_eq!(
        lrs,
        (0..10).collect::<Vec<_>>(),
        "one learning rate per step"
    );
    assert_eq!(images.len(), 1);
    let (tag, step, image) = &images[0];
    assert_eq!((tag.as_str(), *step), ("reliability_diagram", 2));
    assert_eq!(
        image.encoded_image_string,
        std::fs::read(run.join("reliability.png")).unwrap()
    );

    // TensorBoard's own reader sees the same.
    let Some(python) = common::python_or_skip(
        "trainer_cli::the_run_folder_has_tensorboard_events_of_every_metric",
    ) else {
        return;
    };
    let out = Command::new(python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/tensorboard_read.py"))
        .arg(&run)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let read: Value = serde_json::from_slice(&out.stdout).unwrap();
    for m in &lines {
        let epoch = m["epoch"].as_i64().unwrap();
        let at = |tag: &str| {
            read["scalars"][tag]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p[0].as_i64() == Some(epoch))
                .map(|p| p[1].as_f64().unwrap())
                .unwrap()
        };
        assert_eq!(
            at("val_loss") as f32,
            m["val_loss"].as_f64().unwrap() as f32
        );
        assert_eq!(
            at("train_accuracy") as f32,
            m["train_accuracy"].as_f64().unwrap() as f32
        );
    }
    assert_eq!(
        read["scalars"]["learning_rate"].as_array().unwrap().len(),
        10
    );
    assert_eq!(read["images"]["reliability_diagram"][0][1], 720);
}

#[test]
fn the_onnx_export_reproduces_predict_on_real_images() {
    use focalflow::checkpoint::Checkpoint;
    let dir = TempDir::new("onnx");
    let run = dir.join("run");
    // A `same`-padded convolution and two poolings exercise the layout changes.
    let mut args = base_args(&run, "2");
    let at = args.iter().position(|a| a == "c8,p,d16").unwrap();
    args[at] = "c8,p,c4k3s,p,d16".into();
    let out = run_with(&args, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // A calibrated temperature, which the export folds in.
    let mut ck = Checkpoint::load(&run.join("checkpoints/last.safetensors")).unwrap();
    ck.temperature = Some(1.7);
    let calibrated = dir.join("calibrated.safetensors");
    ck.save(&calibrated).unwrap();

    let images: Vec<std::path::PathBuf> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tf_jpeg"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
            .collect();
    assert!(images.len() >= 5);
    let mut predict = vec![
        "predict".to_string(),
        "--json".into(),
        "--checkpoint".into(),
        calibrated.display().to_string(),
    ];
    predict.extend(images.iter().map(|p| p.display().to_string()));
    let out = run_with(&predict, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let classes = ["horizontal", "vertical"];
    let predicted: Vec<Vec<f64>> = images
        .iter()
        .map(|img| {
            let p = report["predictions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| Path::new(p["file"].as_str().unwrap()) == img.as_path())
                .unwrap_or_else(|| panic!("no prediction for {}", img.display()));
            classes
                .iter()
                .map(|c| p["probabilities"][c].as_f64().unwrap())
                .collect()
        })
        .collect();

    // The pixels the model sees, decoded and resized as predict does.
    let shape = ck.input;
    let mut pixels = vec![0u8; images.len() * shape.len()];
    for (img, slot) in images.iter().zip(pixels.chunks_exact_mut(shape.len())) {
        focalflow::data::load::decode_resized(&std::fs::read(img).unwrap(), shape, slot).unwrap();
    }
    let u8_path = dir.join("pixels-u8.bin");
    std::fs::write(&u8_path, &pixels).unwrap();
    let f32_path = dir.join("pixels-f32.bin");
    let scaled: Vec<u8> = pixels
        .iter()
        .flat_map(|&p| (f32::from(p) * (1.0f32 / 255.0)).to_le_bytes())
        .collect();
    std::fs::write(&f32_path, scaled).unwrap();

    let export = |name: &str, extra: &[&str]| {
        let path = dir.join(name);
        let mut args = vec![
            "export".to_string(),
            "--checkpoint".into(),
            calibrated.display().to_string(),
            "--onnx".into(),
            path.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let out = run_with(&args, &[]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(text(&out.stderr).contains("temperature 1.7 folded in"));
        path
    };
    let u8_model = export("u8.onnx", &["--probabilities"]);
    let f32_model = export("f32.onnx", &["--input", "f32"]);

    let Some(python) =
        common::python_or_skip("trainer_cli::the_onnx_export_reproduces_predict_on_real_images")
    else {
        return;
    };
    let dims = [images.len(), shape.height, shape.width, shape.channels].map(|d| d.to_string());
    let out = Command::new(python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/onnx_check.py"))
        .args(&dims)
        .args([u8_model.as_os_str(), u8_path.as_os_str(), "u8".as_ref()])
        .args([f32_model.as_os_str(), f32_path.as_os_str(), "f32".as_ref()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        result["metadata"][0]["class_names"],
        serde_json::to_string(&classes).unwrap()
    );
    let rows = |k: usize| -> Vec<Vec<f64>> {
        serde_json::from_value(result["outputs"][k].clone()).unwrap()
    };
    let softmax = |z: &[f64]| {
        let m = z.iter().cloned().fold(f64::MIN, f64::max);
        let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
        let s: f64 = e.iter().sum();
        e.into_iter().map(|v| v / s).collect::<Vec<f64>>()
    };
    for (k, (probs, logits)) in rows(0).iter().zip(rows(1)).enumerate() {
        for (c, want) in predicted[k].iter().enumerate() {
            assert!(
                (probs[c] - want).abs() < 1e-5,
                "image {k}: {probs:?} vs {:?}",
                predicted[k]
            );
            let from_logits = softmax(&logits)[c];
            assert!(
                (from_logits - want).abs() < 1e-5,
                "image {k}: logits {logits:?}"
            );
        }
    }
}
