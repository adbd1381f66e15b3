//! The device data path (src/feed/, src/ops/gather_batch/): batches
//! gathered on the device equal the host's bit for bit (flips included), whether the set is
//! resident or streamed; training reads nothing back per step; a non-finite loss stops
//! training without touching the weights. On the emulator always, on a GPU where there is one.

mod common;

use std::sync::OnceLock;

use common::targets::{emu_backend, gpu_backend};
use focalflow::data::{Augment, ImageSet, synthetic};
use focalflow::executor::{Executor, Schedule};
use focalflow::feed::{DeviceCache, Feeds, flip_decisions};
use focalflow::loss::LossConfig;
use focalflow::model::ImageShape;
use focalflow::ops::CudaBackend;
use focalflow::ops::gemm::Variant;
use focalflow::ops::loss::CountStep;
use focalflow::ops::prelude::*;
use focalflow::ops::{AdamStep, CpuBackend};
use focalflow::train::{self, TrainOptions};
use focalflow::{Error, Result};

fn emu() -> CudaBackend {
    emu_backend(Schedule::Forward, Variant::Tiled)
}

/// The emulator, and the GPU where there is one (else a visible skip line).
fn devices(test: &str) -> Vec<&'static CudaBackend> {
    static EMU: OnceLock<CudaBackend> = OnceLock::new();
    let mut out = vec![EMU.get_or_init(emu)];
    out.extend(gpu_backend(Variant::Tiled, &format!("device_data::{test}")));
    out
}

/// A set with an odd width and 3 channels (so a flip moves whole pixels, not bytes) and
/// three classes.
fn odd_set() -> ImageSet {
    let shape = ImageShape {
        height: 5,
        width: 7,
        channels: 3,
    };
    let count = 23;
    ImageSet {
        shape,
        class_names: vec!["a".into(), "b".into(), "c".into()],
        pixels: (0..count * shape.len())
            .map(|i| (i * 37 % 251) as u8)
            .collect(),
        labels: (0..count as u32).map(|i| i * 7 % 3).collect(),
        multi: None,
    }
}

/// Every batch of a pass as (index, images, x, y) on the host.
type Batches = Vec<(usize, usize, Vec<f32>, Vec<f32>)>;

fn batches_of<B: Feeds>(
    backend: &B,
    set: &ImageSet,
    order: &[usize],
    batch_size: usize,
    flip_seed: Option<u64>,
    cache: DeviceCache,
) -> Result<Batches> {
    let mut feeder = backend.feeder(set, batch_size, cache)?;
    let mut out = Vec::new();
    let (len, classes) = (set.shape.len(), set.classes());
    feeder.for_each_batch(order, flip_seed, 0, &mut |step, n, x, y| {
        out.push((
            step,
            n,
            backend.read(x, n * len)?,
            backend.read(y, n * classes)?,
        ));
        Ok(())
    })?;
    Ok(out)
}

#[test]
fn device_batches_equal_host_batches_bit_for_bit() {
    let set = odd_set();
    // A shuffled order with repeats and a short last batch (23 = 2 * 9 + 5).
    let order: Vec<usize> = (0..23).map(|i| (i * 11 + 4) % 23).collect();
    let cpu = CpuBackend::<f32>::new();
    for flip_seed in [None, Some(7u64)] {
        let host = batches_of(&cpu, &set, &order, 9, flip_seed, DeviceCache::Auto).unwrap();
        assert_eq!(host.len(), 3);
        assert_eq!(host[2].1, 5, "the last batch is short");
        if flip_seed.is_some() {
            // The test must see both decisions, or a kernel ignoring flips would pass.
            let flips = flip_decisions(order.len(), 9, flip_seed);
            assert!(flips.iter().any(|&f| f) && flips.iter().any(|&f| !f));
        }
        for backend in devices("device_batches_equal_host_batches_bit_for_bit") {
            for cache in [DeviceCache::Auto, DeviceCache::Off] {
                let device = batches_of(backend, &set, &order, 9, flip_seed, cache).unwrap();
                assert_eq!(
                    device,
                    host,
                    "{} with {cache:?}, flip seed {flip_seed:?}",
                    backend.name()
                );
            }
        }
    }
}

#[test]
fn flip_decisions_are_those_of_the_host_batches() {
    // Image k of the pass is mirrored exactly when the host batch holds it mirrored.
    let set = odd_set();
    let order: Vec<usize> = (0..23).collect();
    let flips = flip_decisions(order.len(), 4, Some(99));
    let cpu = CpuBackend::<f32>::new();
    let plain = batches_of(&cpu, &set, &order, 4, None, DeviceCache::Auto).unwrap();
    let flipped = batches_of(&cpu, &set, &order, 4, Some(99), DeviceCache::Auto).unwrap();
    let len = set.shape.len();
    for (k, &flip) in flips.iter().enumerate() {
        let (b, slot) = (k / 4, k % 4);
        let a = &plain[b].2[slot * len..][..len];
        let f = &flipped[b].2[slot * len..][..len];
        assert_eq!(a != f, flip, "image {k}");
    }
}

#[test]
fn device_cache_flag_values() {
    assert_eq!("auto".parse::<DeviceCache>().unwrap(), DeviceCache::Auto);
    assert_eq!("off".parse::<DeviceCache>().unwrap(), DeviceCache::Off);
    assert_eq!(
        "0.5".parse::<DeviceCache>().unwrap(),
        DeviceCache::Bytes(1 << 29)
    );
    for bad in ["-1", "lots", "nan", ""] {
        let err = bad.parse::<DeviceCache>().unwrap_err().to_string();
        assert!(
            err.contains("--device-cache") && err.contains("auto, off"),
            "{err}"
        );
    }
    assert_eq!(DeviceCache::Auto.budget(Some(10)), 5);
    assert_eq!(DeviceCache::Off.budget(Some(10)), 0);
    assert_eq!(DeviceCache::Bytes(3).budget(None), 3);
}

fn options(epochs: usize, learning_rate: f64) -> TrainOptions {
    TrainOptions {
        epochs,
        batch_size: 4,
        learning_rate,
        loss: LossConfig::default_focal(),
        arch: "c4,p,d8".parse().unwrap(),
        seed: 5,
        val_fraction: 0.25,
        steps_per_epoch: None,
        class_fraction: Vec::new(),
        augment: Augment::Flip,
        device_cache: DeviceCache::Auto,
        ..Default::default()
    }
}

/// Blocking device-to-host reads of one epoch of training on `images` generated images.
fn reads_of_one_epoch(backend: &CudaBackend, images: usize, cache: DeviceCache) -> u64 {
    let set = synthetic::generate(images, 12, 1);
    let dir = common::TempDir::new("device-reads");
    let opts = TrainOptions {
        device_cache: cache,
        ..options(1, 1e-3)
    };
    let before = backend.executor().blocking_reads();
    train::train(backend, &set, &opts, &dir.join("run"), |_| {}).unwrap();
    backend.executor().blocking_reads() - before
}

#[test]
fn an_epoch_reads_back_a_fixed_number_of_times_whatever_its_steps() {
    // Backends of this test's own: the shared ones count the reads of tests running beside.
    let test = "an_epoch_reads_back_a_fixed_number_of_times_whatever_its_steps";
    let gpu = devices(test)
        .get(1)
        .map(|_| CudaBackend::new(Executor::cuda(0).expect("the GPU opened once already")));
    for backend in std::iter::once(emu()).chain(gpu) {
        let backend = &backend;
        for cache in [DeviceCache::Auto, DeviceCache::Off] {
            // 4 and 16 training steps (batches of 4 of 75% of the images); the validation
            // pass and the checkpoint grow too, but not their reads.
            let few = reads_of_one_epoch(backend, 20, cache);
            let many = reads_of_one_epoch(backend, 84, cache);
            assert_eq!(
                few,
                many,
                "{} {cache:?}: reads grow with the steps",
                backend.name()
            );
            // The epoch's counters, the validation logits and loss, and the checkpoint's
            // tensors: a handful, not one per step.
            assert!(few <= 30, "{few} reads");
        }
    }
}

#[test]
fn a_non_finite_loss_on_the_device_stops_training_and_spares_the_weights() {
    for backend in devices("a_non_finite_loss_on_the_device_stops_training_and_spares_the_weights")
    {
        let set = synthetic::generate(40, 12, 2);
        let dir = common::TempDir::new("device-nan");
        let out = dir.join("run");
        // lr 1e30: the first Adam step throws every weight to ~1e30 and the next forward
        // pass overflows.
        let Err(err) = train::train(backend, &set, &options(2, 1e30), &out, |_| {}) else {
            panic!("{}: trained with lr 1e30", backend.name());
        };
        let msg = err.to_string();
        assert!(matches!(err, Error::NonFinite(_)), "{msg}");
        assert!(msg.contains("epoch 1, step 2"), "{msg}");
        assert!(!out.join("checkpoints/last.safetensors").exists(), "{msg}");
    }
}

#[test]
fn adam_leaves_the_weights_alone_once_a_step_failed() {
    for backend in devices("adam_leaves_the_weights_alone_once_a_step_failed") {
        let step = AdamStep {
            step_size: 0.1f32,
            one_minus_beta1: 0.1,
            one_minus_beta2: 0.001,
            epsilon: 1e-7,
        };
        let mut counters = backend.counters().unwrap();
        let (p0, g) = (vec![1.0f32, -2.0, 3.0], vec![0.5f32, 0.5, -0.5]);
        let update = |counters: &<CudaBackend as CounterOps>::Counters| {
            let mut p = backend.upload(&p0).unwrap();
            let (mut m, mut v) = (backend.zeros(3).unwrap(), backend.zeros(3).unwrap());
            let g = backend.upload(&g).unwrap();
            backend
                .adam_update(3, &step, &mut p, &g, &mut m, &mut v, Some(counters))
                .unwrap();
            backend.read(&p, 3).unwrap()
        };
        assert_ne!(update(&counters), p0, "no failure: the step updates");
        // A batch whose loss is NaN (a NaN prediction on the probability path).
        let y = backend.upload(&[1.0f32, 0.0]).unwrap();
        let pred = backend.upload(&[f32::NAN, 0.5]).unwrap();
        backend
            .loss(
                &LossConfig::CrossEntropy {
                    label_smoothing: 0.0,
                    from_logits: false,
                },
                1,
                2,
                &y,
                &pred,
                None,
                Some(CountStep {
                    probs: &pred,
                    step: 6,
                    counters: &mut counters,
                }),
            )
            .unwrap();
        let totals = backend.read_counters(&counters).unwrap();
        let failure = totals.failure.expect("the failure is recorded");
        assert_eq!((failure.step, totals.seen), (6, 0));
        assert_eq!(update(&counters), p0, "after a failure: no update");
        backend
            .set_counters(&mut counters, &Default::default())
            .unwrap();
        assert_eq!(
            backend.read_counters(&counters).unwrap(),
            Default::default()
        );
    }
}

#[test]
fn bench_end_to_end_reports_the_trained_rate_beside_the_kernels_only_one() {
    for device in ["cpu", "cuda-emu"] {
        let out = common::run(&[
            "bench",
            "--device",
            device,
            "--image-size",
            "12",
            "--arch",
            "c4,p,d8",
            "--batch-size",
            "4",
            "--steps",
            "1",
            "--end-to-end",
            "24",
            "--json",
        ]);
        let stdout = common::text(&out.stdout);
        assert!(
            out.status.success(),
            "{device}: {}",
            common::text(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        let rate = report["end_to_end_images_per_second"].as_f64().unwrap();
        assert!(rate.is_finite() && rate > 0.0, "{device}: {stdout}");
        let path = report["end_to_end_data_path"].as_str().unwrap();
        let expected = if device == "cpu" {
            "on the host"
        } else {
            "resident on the device"
        };
        assert!(path.contains(expected), "{device}: {path}");
    }
    // Fewer images than a batch cannot time an epoch.
    let out = common::run(&[
        "bench",
        "--device",
        "cpu",
        "--image-size",
        "12",
        "--arch",
        "c4,p,d8",
        "--steps",
        "1",
        "--end-to-end",
        "2",
    ]);
    assert!(!out.status.success());
    assert!(common::text(&out.stderr).contains("--end-to-end 2"));
}

/// `train --device cuda-emu` on the built-in set with the emulator reporting `free_mib` MiB
/// of free device memory.
fn train_with_free_memory(free_mib: &str, extra: &[&str]) -> std::process::Output {
    let dir = common::TempDir::new("device-memory");
    let out = dir.join("run");
    let mut args = vec![
        "train",
        "--device",
        "cuda-emu",
        "--epochs",
        "1",
        "--synthetic-images",
        "64",
        "--arch",
        "c4,p,d8",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    common::command()
        .args(&args)
        .env("FOCALFLOW_EMU_FREE_MIB", free_mib)
        .output()
        .unwrap()
}

#[test]
fn the_set_is_streamed_when_it_exceeds_the_budget_and_a_model_too_large_fails_at_start() {
    // 64 images of 64x64x3 (768 KiB) against half of 1 MiB: streamed, and said so.
    let out = train_with_free_memory("1", &["--image-size", "64", "--batch-size", "2"]);
    let log = common::text(&out.stdout) + &common::text(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("data: u8 batches streamed"), "{log}");
    // The same set with room for it: resident.
    let out = train_with_free_memory("64", &["--image-size", "64", "--batch-size", "2"]);
    let log = common::text(&out.stdout) + &common::text(&out.stderr);
    assert!(log.contains("resident on the device"), "{log}");
    // The model and a batch of 256 at 224 px need far more than 1 MiB: one line at start.
    let out = train_with_free_memory("1", &["--image-size", "224", "--batch-size", "256"]);
    let stderr = common::text(&out.stderr);
    assert!(
        !out.status.success() && !stderr.contains("panicked"),
        "{stderr}"
    );
    let error = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_default();
    assert!(
        error.contains("--batch-size 256") && error.contains("GiB is free"),
        "{stderr}"
    );
}

#[test]
fn a_set_uploaded_in_many_chunks_gives_the_same_batches() {
    use focalflow::feed::BatchFeeder;
    use focalflow::feed::cuda::ResidentFeeder;
    let set = odd_set();
    let order: Vec<usize> = (0..23).rev().collect();
    let cpu = CpuBackend::<f32>::new();
    let host = batches_of(&cpu, &set, &order, 9, Some(3), DeviceCache::Auto).unwrap();
    for backend in devices("a_set_uploaded_in_many_chunks_gives_the_same_batches") {
        // 1,000-byte chunks of the 2,415-byte set: three, alternating between the two
        // staging buffers, each ending inside an image.
        let mut feeder = ResidentFeeder::with_upload_chunk(backend, &set, 9, 1000).unwrap();
        let (len, classes) = (set.shape.len(), set.classes());
        let mut device = Vec::new();
        feeder
            .for_each_batch(&order, Some(3), 0, &mut |step, n, x, y| {
                device.push((
                    step,
                    n,
                    backend.read(x, n * len)?,
                    backend.read(y, n * classes)?,
                ));
                Ok(())
            })
            .unwrap();
        assert_eq!(device, host, "{}", backend.name());
    }
}
