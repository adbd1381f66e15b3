//! Checkpoints: save and load give identical predictions and optimizer state, the tensor
//! names and layouts are Keras', bad files give clear errors, an interrupted run resumed
//! equals an uninterrupted one bit for bit, and a write killed half-way leaves the previous
//! checkpoint intact.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use focalflow::checkpoint::{self, Checkpoint};
use focalflow::data::{Augment, ImageSet, synthetic};
use focalflow::loss::LossConfig;
use focalflow::model::Model;
use focalflow::ops::CpuBackend;
use focalflow::ops::prelude::*;
use focalflow::run::{self, ABORT_AFTER_BYTES_ENV, EpochMetrics};
use focalflow::train::{self, TrainOptions};

mod common;
use common::TempDir;

fn data() -> ImageSet {
    synthetic::generate(40, 16, 3)
}

fn options(epochs: usize) -> TrainOptions {
    TrainOptions {
        epochs,
        batch_size: 8,
        learning_rate: 3e-3,
        loss: LossConfig::default_focal(),
        arch: "c4,p,d8".parse().unwrap(),
        seed: 11,
        val_fraction: 0.25,
        steps_per_epoch: None,
        class_fraction: Vec::new(),
        // Flips exercise the per-epoch augmentation stream on resume as well.
        augment: Augment::Flip,
        device_cache: Default::default(),
        ..Default::default()
    }
}

/// Probabilities of `model` on every image of `set`.
fn predict(
    backend: &CpuBackend<f32>,
    model: &mut Model<CpuBackend<f32>>,
    set: &ImageSet,
) -> Vec<f32> {
    let all: Vec<usize> = (0..set.len()).collect();
    let (mut x, mut y) = (Vec::new(), Vec::new());
    set.fill_batch(&all, &mut x, &mut y);
    let buf = backend.upload(&x).unwrap();
    model.predict(backend, &buf, set.len()).unwrap()
}

/// The fields of a metrics line that do not depend on timing.
fn untimed(history: &[EpochMetrics]) -> Vec<serde_json::Value> {
    history
        .iter()
        .map(|m| {
            let mut v = serde_json::to_value(m).unwrap();
            let o = v.as_object_mut().unwrap();
            o.remove("seconds");
            o.remove("images_per_second");
            v
        })
        .collect()
}

#[test]
fn round_trip_gives_identical_predictions_and_keras_layouts() {
    let dir = TempDir::new("roundtrip");
    let backend = CpuBackend::<f32>::new();
    let set = data();
    let (mut model, _) = train::train(&backend, &set, &options(2), &dir.0, |_| {}).unwrap();
    let expected = predict(&backend, &mut model, &set);

    for path in [run::last_path(&dir.0), run::best_path(&dir.0)] {
        let ck = Checkpoint::load(&path).unwrap();
        assert_eq!(ck.class_names, vec!["horizontal", "vertical"]);
        assert_eq!(ck.arch.to_string(), "c4,p,d8");
        assert_eq!(
            (ck.input.height, ck.input.width, ck.input.channels),
            (16, 16, 3)
        );
        assert_eq!(ck.loss, Some(LossConfig::default_focal()));
        assert_eq!(ck.temperature, None);
        if path.ends_with("last.safetensors") {
            assert_eq!(ck.epoch, Some(2));
            assert_eq!(ck.kind, "last");
            let mut loaded = ck.model(&backend).unwrap();
            // Bit-identical predictions from the loaded weights.
            assert_eq!(predict(&backend, &mut loaded, &set), expected);
            let opt = ck.optimizer.as_ref().expect("last holds Adam's state");
            assert_eq!(opt.adam, model.optimizer);
            for (p, m) in model.params.iter().zip(&opt.m) {
                assert_eq!(
                    &backend.read(&p.m, p.spec.len()).unwrap(),
                    m,
                    "{}",
                    p.spec.name
                );
            }
            assert!(ck.training.as_ref().unwrap().epoch == 2);
        } else {
            assert_eq!(ck.kind, "best");
            assert!(ck.optimizer.is_none(), "best holds weights only");
        }
    }

    // Keras names and layouts, read straight from the file.
    let bytes = std::fs::read(run::best_path(&dir.0)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names = st.names();
    names.sort();
    assert_eq!(
        names,
        vec![
            "conv2d/bias",
            "conv2d/kernel",
            "dense/bias",
            "dense/kernel",
            "dense_1/bias",
            "dense_1/kernel"
        ]
    );
    // 16 -> conv 3x3 -> 14 -> pool -> 7: flatten 7*7*4 = 196
    assert_eq!(st.tensor("conv2d/kernel").unwrap().shape(), &[3, 3, 3, 4]); // HWIO
    assert_eq!(st.tensor("dense/kernel").unwrap().shape(), &[196, 8]); // [in, out]
    assert_eq!(st.tensor("dense_1/kernel").unwrap().shape(), &[8, 2]);
    let meta = checkpoint::read_metadata(&run::best_path(&dir.0)).unwrap();
    for key in [
        "format",
        "format_version",
        "arch",
        "input_shape",
        "class_names",
        "loss",
        "epoch",
        "preprocessing",
    ] {
        assert!(meta.contains_key(key), "metadata key {key} in {meta:?}");
    }
    assert_eq!(meta["input_shape"], "[16,16,3]");
    assert_eq!(meta["class_names"], r#"["horizontal","vertical"]"#);
}

#[test]
fn bad_files_give_one_line_errors() {
    let dir = TempDir::new("bad");
    let backend = CpuBackend::<f32>::new();
    let set = data();
    train::train(&backend, &set, &options(1), &dir.0, |_| {}).unwrap();
    let good = std::fs::read(run::last_path(&dir.0)).unwrap();

    let truncated = dir.join("truncated.safetensors");
    std::fs::write(&truncated, &good[..good.len() / 2]).unwrap();
    let err = Checkpoint::load(&truncated).unwrap_err().to_string();
    assert!(
        err.contains("truncated.safetensors") && err.contains("not a safetensors file"),
        "{err}"
    );
    assert!(!err.contains('\n'), "{err}");

    let missing = dir.join("missing.safetensors");
    let err = Checkpoint::load(&missing).unwrap_err().to_string();
    assert!(
        err.contains("missing.safetensors") && err.contains("--checkpoint"),
        "{err}"
    );

    // A safetensors file from elsewhere: no focalflow metadata.
    let foreign = dir.join("foreign.safetensors");
    let data = [0f32; 4];
    let view = safetensors::tensor::TensorView::new(
        safetensors::Dtype::F32,
        vec![4],
        bytemuck::cast_slice(&data),
    )
    .unwrap();
    std::fs::write(
        &foreign,
        safetensors::serialize([("w", view)], None).unwrap(),
    )
    .unwrap();
    let err = Checkpoint::load(&foreign).unwrap_err().to_string();
    assert!(err.contains("metadata key `format` missing"), "{err}");

    // A tensor of the wrong shape.
    let mut ck = Checkpoint::load(&run::last_path(&dir.0)).unwrap();
    ck.optimizer = None;
    let mut bytes = ck.to_bytes().unwrap();
    // Corrupt the header: claim another class count so the head's shape no longer fits.
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(bytes[8..8 + header_len].to_vec()).unwrap();
    let changed = header.replace(r#"[\"horizontal\",\"vertical\"]"#, r#"[\"a\",\"b\",\"c\"]"#);
    assert_ne!(header, changed, "the class names are in the header");
    let pad = changed.len().div_ceil(8) * 8 - changed.len();
    let changed = format!("{changed}{}", " ".repeat(pad));
    let mut patched = (changed.len() as u64).to_le_bytes().to_vec();
    patched.extend_from_slice(changed.as_bytes());
    patched.extend_from_slice(&bytes.split_off(8 + header_len));
    let shape = dir.join("shape.safetensors");
    std::fs::write(&shape, patched).unwrap();
    let err = Checkpoint::load(&shape).unwrap_err().to_string();
    assert!(
        err.contains("dense_1/kernel") && err.contains("shape [8, 2]") && err.contains("[8, 3]"),
        "{err}"
    );
}

fn train_err(backend: &CpuBackend<f32>, set: &ImageSet, opts: &TrainOptions, out: &Path) -> String {
    match train::train(backend, set, opts, out, |_| {}) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn interrupted_run_resumed_equals_uninterrupted_run() {
    let backend = CpuBackend::<f32>::new();
    let set = data();
    let whole = TempDir::new("whole");
    let (mut a, history_a) = train::train(&backend, &set, &options(4), &whole.0, |_| {}).unwrap();

    // The same run, killed right after epoch 2 has been saved (a panic in the log callback
    // unwinds out of `train` like a crash: nothing after it runs).
    let split = TempDir::new("split");
    let killed = catch_unwind(AssertUnwindSafe(|| {
        train::train(&backend, &set, &options(4), &split.0, |line| {
            if line.starts_with("epoch 2/4") {
                panic!("killed after epoch 2");
            }
        })
    }));
    assert!(killed.is_err(), "the run was interrupted");
    assert_eq!(
        Checkpoint::load(&run::last_path(&split.0)).unwrap().epoch,
        Some(2)
    );
    let mut opts = options(4);
    opts.resume = true;
    let mut lines = Vec::new();
    let (mut b, history_b) = train::train(&backend, &set, &opts, &split.0, |l| {
        lines.push(l.to_string())
    })
    .unwrap();
    assert!(
        lines[1].starts_with("resuming") && lines[1].contains("after epoch 2"),
        "{lines:?}"
    );

    assert_eq!(
        untimed(&history_a),
        untimed(&history_b),
        "metrics of every epoch"
    );
    assert_eq!(
        a.weights(&backend).unwrap(),
        b.weights(&backend).unwrap(),
        "final weights"
    );
    assert_eq!(a.optimizer, b.optimizer);
    assert_eq!(
        predict(&backend, &mut a, &set),
        predict(&backend, &mut b, &set)
    );
    let file_a = std::fs::read_to_string(whole.join("metrics.jsonl")).unwrap();
    let file_b = std::fs::read_to_string(split.join("metrics.jsonl")).unwrap();
    assert_eq!(file_b.lines().count(), 4);
    let parse = |t: &str| -> Vec<EpochMetrics> {
        t.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    assert_eq!(untimed(&parse(&file_a)), untimed(&parse(&file_b)));
    let best = |d: &Path| Checkpoint::load(&run::best_path(d)).unwrap();
    assert_eq!(best(&whole.0).weights, best(&split.0).weights);
    assert_eq!(best(&whole.0).epoch, best(&split.0).epoch);

    // Nothing left to do, and other options, are refused with the flag named.
    let err = train_err(&backend, &set, &opts, &split.0);
    assert!(err.contains("completed 4 of --epochs 4"), "{err}");
    let mut other = options(6);
    other.resume = true;
    other.learning_rate = 0.01;
    let err = train_err(&backend, &set, &other, &split.0);
    assert!(
        err.contains("--lr is 0.003 in the run but 0.01 now"),
        "{err}"
    );
    let mut other = options(6);
    other.resume = true;
    let err = train_err(&backend, &synthetic::generate(44, 16, 3), &other, &split.0);
    assert!(err.contains("the data or its split differ"), "{err}");
}

/// adafocal's gammas change after every epoch: a run killed after epoch 2 and resumed must
/// train epochs 3-4 with the gammas of epoch 2's update (kept in the checkpoint), so that it
/// equals the run that was not interrupted; and each epoch's record starts from the gammas
/// the previous one ended with.
#[test]
fn adafocal_resumes_with_its_gammas() {
    let backend = CpuBackend::<f32>::new();
    let set = data();
    let mut opts = options(4);
    opts.loss = LossConfig::default_for("adafocal").unwrap();
    opts.loss = match opts.loss {
        LossConfig::AdaFocal { settings, .. } => LossConfig::adafocal(
            focalflow::loss::AdaFocalSettings {
                lambda: 5.0,
                ..settings
            },
            true,
        ),
        _ => unreachable!(),
    };
    let whole = TempDir::new("whole-ada");
    let (_, history_a) = train::train(&backend, &set, &opts, &whole.0, |_| {}).unwrap();
    let split = TempDir::new("split-ada");
    let killed = catch_unwind(AssertUnwindSafe(|| {
        train::train(&backend, &set, &opts, &split.0, |line| {
            if line.starts_with("epoch 2/4") {
                panic!("killed after epoch 2");
            }
        })
    }));
    assert!(killed.is_err());
    let mut resume = opts.clone();
    resume.resume = true;
    let (_, history_b) = train::train(&backend, &set, &resume, &split.0, |_| {}).unwrap();
    assert_eq!(untimed(&history_a), untimed(&history_b));
    let updates: Vec<_> = history_a
        .iter()
        .map(|m| m.adafocal.clone().expect("an adafocal record per epoch"))
        .collect();
    assert!(updates[0].bins.iter().all(|b| b.gamma_before == 1.0));
    for pair in updates.windows(2) {
        let after: Vec<f64> = pair[0].bins.iter().map(|b| b.gamma_after).collect();
        let before: Vec<f64> = pair[1].bins.iter().map(|b| b.gamma_before).collect();
        assert_eq!(after, before);
    }
    assert!(
        updates
            .iter()
            .flat_map(|u| &u.bins)
            .any(|b| b.gamma_after != b.gamma_before),
        "the gammas moved"
    );
}

#[test]
fn failed_write_leaves_the_previous_file() {
    let dir = TempDir::new("atomic");
    let target = dir.join("x.safetensors");
    run::write_atomically(&target, b"old").unwrap();
    // Renaming over a non-empty folder fails after the temporary file was written.
    let blocked = dir.join("blocked");
    std::fs::create_dir_all(blocked.join("inside")).unwrap();
    let err = run::write_atomically(&blocked, b"new")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("blocked") && err.contains("cannot write"),
        "{err}"
    );
    assert_eq!(std::fs::read(&target).unwrap(), b"old");
    let leftovers: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "a failed write removes its temporary file"
    );
}

#[test]
fn killed_write_leaves_the_previous_checkpoint_intact() {
    let dir = TempDir::new("killed");
    let run = dir.join("run");
    let run_s = run.to_str().unwrap();
    let args = |epochs: &'static str| {
        vec![
            "train",
            "--image-size",
            "16",
            "--synthetic-images",
            "40",
            "--arch",
            "c4,p,d8",
            "--batch-size",
            "8",
            "--quiet",
            "--device",
            "cpu",
            "--epochs",
            epochs,
        ]
    };
    let mut first = args("1");
    first.extend(["--out", run_s]);
    let out = common::command().args(&first).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = run::last_path(&run);
    let before = std::fs::read(&last).unwrap();
    let best_before = std::fs::read(run::best_path(&run)).unwrap();

    // Resume to epoch 2 with the process aborting after 3000 bytes of its next checkpoint
    // (metrics.jsonl, rewritten on resume, is shorter and goes through).
    let mut second = args("2");
    second.extend(["--resume", run_s]);
    let out = common::command()
        .args(&second)
        .env(ABORT_AFTER_BYTES_ENV, "3000")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the write was killed: {stderr}");
    assert!(stderr.contains("aborting after 3000 bytes"), "{stderr}");
    let leftovers: Vec<String> = std::fs::read_dir(run::dir_of_run(&run))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert_eq!(
        leftovers.len(),
        1,
        "the killed write's temporary file: {leftovers:?}"
    );

    // The previous checkpoints are untouched and load.
    assert_eq!(std::fs::read(&last).unwrap(), before);
    assert_eq!(std::fs::read(run::best_path(&run)).unwrap(), best_before);
    assert_eq!(Checkpoint::load(&last).unwrap().epoch, Some(1));

    // And the run resumes from them; the leftover is cleaned up.
    let out = common::command().args(&second).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(Checkpoint::load(&last).unwrap().epoch, Some(2));
    let leftovers = std::fs::read_dir(run::dir_of_run(&run))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .count();
    assert_eq!(leftovers, 0);
}

/// The byte offset and name of every tensor in a safetensors file (data offsets are
/// relative to the end of the header).
fn tensor_offsets(bytes: &[u8]) -> Vec<(String, usize, usize)> {
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let mut out: Vec<(String, usize, usize)> = header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| {
            let o = &v["data_offsets"];
            let base = 8 + header_len;
            (
                k.clone(),
                base + o[0].as_u64().unwrap() as usize,
                base + o[1].as_u64().unwrap() as usize,
            )
        })
        .collect();
    out.sort_by_key(|t| t.1);
    out
}

/// One flipped bit in any tensor (weights and Adam's moments) is refused, naming the
/// tensor; the untouched file loads; a file without checksums (an older focalflow's) loads.
#[test]
fn a_flipped_bit_in_any_tensor_is_refused_with_its_name() {
    let dir = TempDir::new("checksum");
    let backend = CpuBackend::<f32>::new();
    train::train(&backend, &data(), &options(1), &dir.0, |_| {}).unwrap();
    let good = std::fs::read(run::last_path(&dir.0)).unwrap();
    let tensors = tensor_offsets(&good);
    assert!(tensors.len() >= 12, "weights and both moments: {tensors:?}");
    let flipped = dir.join("flipped.safetensors");
    for (name, start, end) in &tensors {
        let mut bad = good.clone();
        bad[start + (end - start) / 2] ^= 0x10; // a mantissa bit in the middle of the tensor
        std::fs::write(&flipped, &bad).unwrap();
        let err = Checkpoint::load(&flipped).unwrap_err().to_string();
        assert!(
            err.contains(&format!("tensor `{name}` fails its checksum"))
                && err.contains("flipped.safetensors"),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
    }
    Checkpoint::load(&run::last_path(&dir.0)).expect("the file as written");

    // Without the checksums key (as files written before it existed): still loads.
    let st = safetensors::SafeTensors::deserialize(&good).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&good).unwrap();
    let mut meta = header.metadata().clone().unwrap();
    assert!(meta.remove(checkpoint::CHECKSUMS_KEY).is_some());
    let old = safetensors::serialize(st.tensors(), Some(meta)).unwrap();
    let old_path = dir.join("old.safetensors");
    std::fs::write(&old_path, old).unwrap();
    let ck = Checkpoint::load(&old_path).unwrap();
    assert_eq!(
        ck.weights,
        Checkpoint::load(&run::last_path(&dir.0)).unwrap().weights
    );
}
