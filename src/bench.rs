//! `focalflow bench`: training and inference throughput of a model on random data, after
//! warm-up, and the process' peak memory.

use std::time::Instant;

use crate::data::{Augment, synthetic};
use crate::feed::{DATA_PATH_LINE, DeviceCache, Feeds};
use crate::loss::LossConfig;
use crate::model::{Arch, ImageShape, Layer, Model, Plan};
use crate::ops::conv2d::ConvPaths;
use crate::profile::{Profiled, Profiler, Timeline, nvtx};
use crate::rng::Rng;
use crate::{Error, Result};

#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub arch: Arch,
    pub image_size: usize,
    pub batch_size: usize,
    pub classes: usize,
    /// Timed steps (after `warmup` untimed ones).
    pub steps: usize,
    pub warmup: usize,
    pub loss: LossConfig,
    /// `--end-to-end N`: also train on N generated images for [`END_TO_END_EPOCHS`] epochs
    /// (the first one untimed), data path included.
    pub end_to_end: Option<usize>,
    /// `--device-cache` of the end-to-end run.
    pub device_cache: DeviceCache,
}

/// Epochs of an end-to-end run: one to warm up, the rest timed.
pub const END_TO_END_EPOCHS: usize = 3;

#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchReport {
    pub device: String,
    /// `--precision` of the products.
    pub precision: crate::precision::Precision,
    pub arch: String,
    pub image_size: usize,
    pub batch_size: usize,
    pub steps: usize,
    pub train_images_per_second: f64,
    pub inference_images_per_second: f64,
    /// Model FLOPs (forward + backward, about 3x forward) per second of training.
    pub train_gflops: f64,
    pub train_step_ms: f64,
    pub inference_batch_ms: f64,
    /// Training images/s of whole epochs of `train` (batches assembled and counted as a
    /// user's run does), with `--end-to-end`.
    pub end_to_end_images_per_second: Option<f64>,
    /// How the end-to-end run's batches reached the model (the feeder's line).
    pub end_to_end_data_path: Option<String>,
    /// Peak resident memory of the process (Linux VmHWM), if known.
    pub peak_rss_bytes: Option<u64>,
    /// The algorithm of each convolution pass, layer by layer.
    pub conv_layers: Vec<ConvLayerPaths>,
}

/// One convolution layer of the benchmarked model and how the backend runs it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ConvLayerPaths {
    /// e.g. "conv 2: 111x111x16 -> 32, 3x3 valid".
    pub layer: String,
    pub paths: ConvPaths,
}

impl ConvLayerPaths {
    /// The layers of `plan` and their paths on `backend`.
    fn of<B: Feeds>(backend: &B, plan: &Plan) -> Vec<ConvLayerPaths> {
        let fused = crate::model::fused_blocks(&plan.ops, backend, 1);
        plan.ops
            .iter()
            .enumerate()
            .filter_map(|(at, op)| match op {
                Layer::Conv { shape, .. } => Some((at, shape)),
                _ => None,
            })
            .enumerate()
            .map(|(i, (at, s))| {
                let mut paths = backend.conv2d_paths(s);
                if fused[at] && at == 0 {
                    paths.forward = "direct 3x3 + ReLU + 2x2 max-pool in one pass (AVX-512)";
                    paths.backward_filter = "direct 3x3 from the pooled gradient (AVX-512)";
                } else if fused[at] {
                    // The backend's name of the pass (with its products' format) and the
                    // epilogue; made once per benchmark, so leaking the few bytes is fine.
                    let name = format!("{} + ReLU + 2x2 max-pool in its epilogue", paths.forward);
                    paths.forward = Box::leak(name.into_boxed_str());
                }
                ConvLayerPaths {
                    layer: format!(
                        "conv {}: {}x{}x{} -> {}, {}x{} {:?}",
                        i + 1,
                        s.in_h,
                        s.in_w,
                        s.in_c,
                        s.out_c,
                        s.kernel_h,
                        s.kernel_w,
                        s.padding
                    )
                    .to_lowercase(),
                    paths: ConvPaths {
                        // The model computes no gradient of its input (the images).
                        backward_data: if at == 0 {
                            "not run (the model's input needs no gradient)"
                        } else {
                            paths.backward_data
                        },
                        ..paths
                    },
                }
            })
            .collect()
    }

    /// `conv 2: 111x111x16 -> 32, 3x3 valid: forward ..., backward data ..., filter ...`.
    pub fn line(&self) -> String {
        format!(
            "{}: forward {}; backward data {}; backward filter {}",
            self.layer, self.paths.forward, self.paths.backward_data, self.paths.backward_filter
        )
    }
}

/// Peak resident set size of this process, from /proc/self/status (Linux).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Where a benchmark run is, for [`run_with`]'s observer (e.g. to profile the timed
/// training steps only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// The timed training steps start (warm-up is done).
    TrainTimed,
    /// The timed training steps are done.
    TrainDone,
}

pub fn run<B: Feeds>(backend: &B, opts: &BenchOptions) -> Result<BenchReport> {
    run_with(backend, opts, |_| Ok(()))
}

/// [`run`] with the per-phase profiler around `backend` over the timed training steps when
/// `profile` (and around every call, untimed, where NVTX ranges are wanted): the report and,
/// with `profile`, the per-phase table, timed with `clock` (what the backend's phases are
/// measured with).
pub fn run_profiled<B: Feeds + Timeline>(
    backend: &B,
    opts: &BenchOptions,
    profile: bool,
    clock: &str,
) -> Result<(BenchReport, Option<String>)> {
    if !profile && !nvtx::available() {
        return Ok((run(backend, opts)?, None));
    }
    let prof = Profiler::new(false);
    let report = run_with(&Profiled::new(backend, &prof), opts, |stage| match stage {
        Stage::TrainTimed => {
            prof.set_timing(profile);
            Ok(())
        }
        Stage::TrainDone => {
            prof.finish(backend)?;
            prof.set_timing(false);
            Ok(())
        }
    })?;
    prof.finish(backend)?;
    Ok((report, profile.then(|| prof.table(clock))))
}

/// [`run`], telling `observe` when the timed training steps start and end.
pub fn run_with<B: Feeds>(
    backend: &B,
    opts: &BenchOptions,
    mut observe: impl FnMut(Stage) -> Result<()>,
) -> Result<BenchReport> {
    if opts.steps == 0 || opts.batch_size == 0 {
        return Err(Error::invalid(
            "--steps and --batch-size must be at least 1",
        ));
    }
    let shape = ImageShape {
        height: opts.image_size,
        width: opts.image_size,
        channels: 3,
    };
    if opts.image_size == 0 || opts.image_size > crate::data::load::MAX_IMAGE_SIZE {
        return Err(Error::invalid(format!(
            "--image-size {}: must be 1 to {}",
            opts.image_size,
            crate::data::load::MAX_IMAGE_SIZE
        )));
    }
    let plan = Plan::new(&opts.arch, shape, opts.classes)?.with_output(opts.loss.output());
    // The model and the batch live on the device (the CPU's and the emulator's are the
    // host's); on a GPU the host holds the batch's input too, a small part of it.
    match backend.free_memory()? {
        Some(free) => {
            crate::train::check_memory(&plan, opts.batch_size, Some(free), backend.name())?
        }
        None => crate::train::check_host_memory(&plan, opts.batch_size)?,
    }
    let flops_per_image = plan.forward_flops();
    let conv_layers = ConvLayerPaths::of(backend, &plan);
    let mut model = Model::new(backend, plan, 0)?;
    let n = opts.batch_size;
    let mut rng = Rng::new(1);
    let x_host: Vec<f32> = (0..n * shape.len()).map(|_| rng.uniform() as f32).collect();
    let y_host: Vec<f32> = (0..n * opts.classes)
        .map(|i| f32::from(i % opts.classes == (i / opts.classes) % opts.classes))
        .collect();
    let (x, y) = (backend.upload(&x_host)?, backend.upload(&y_host)?);

    for _ in 0..opts.warmup {
        model.train_step(backend, &opts.loss, &x, &y, n)?;
    }
    observe(Stage::TrainTimed)?;
    let start = Instant::now();
    for _ in 0..opts.steps {
        model.train_step(backend, &opts.loss, &x, &y, n)?;
    }
    let train_s = start.elapsed().as_secs_f64() / opts.steps as f64;
    observe(Stage::TrainDone)?;

    for _ in 0..opts.warmup {
        model.predict(backend, &x, n)?;
    }
    let start = Instant::now();
    for _ in 0..opts.steps {
        model.predict(backend, &x, n)?;
    }
    let infer_s = start.elapsed().as_secs_f64() / opts.steps as f64;
    let end_to_end = match opts.end_to_end {
        Some(images) => Some(end_to_end(backend, opts, images)?),
        None => None,
    };

    Ok(BenchReport {
        device: backend.name().to_string(),
        precision: backend.precision(),
        arch: opts.arch.to_string(),
        image_size: opts.image_size,
        batch_size: n,
        steps: opts.steps,
        train_images_per_second: n as f64 / train_s,
        inference_images_per_second: n as f64 / infer_s,
        // The backward pass costs about twice the forward (data and filter gradients).
        train_gflops: 3.0 * flops_per_image * n as f64 / train_s / 1e9,
        train_step_ms: train_s * 1e3,
        inference_batch_ms: infer_s * 1e3,
        end_to_end_images_per_second: end_to_end.as_ref().map(|e| e.0),
        end_to_end_data_path: end_to_end.map(|e| e.1),
        peak_rss_bytes: peak_rss_bytes(),
        conv_layers,
    })
}

/// Training images/s of the timed epochs of `train` on `images` generated images (no
/// validation split, so an epoch is the training loop alone), and the data path's line.
/// The run folder (checkpoints written after each epoch, outside the timing) is a
/// temporary one.
fn end_to_end<B: Feeds>(backend: &B, opts: &BenchOptions, images: usize) -> Result<(f64, String)> {
    if images < opts.batch_size {
        return Err(Error::invalid(format!(
            "--end-to-end {images}: at least one batch of {} images is needed",
            opts.batch_size
        )));
    }
    let set = synthetic::generate(images, opts.image_size, 0);
    let train_opts = crate::train::TrainOptions {
        epochs: END_TO_END_EPOCHS,
        batch_size: opts.batch_size,
        learning_rate: 1e-4,
        loss: opts.loss.clone(),
        arch: opts.arch.clone(),
        seed: 0,
        val_fraction: 0.0,
        steps_per_epoch: None,
        class_fraction: Vec::new(),
        augment: Augment::None,
        device_cache: opts.device_cache,
        precision: backend.precision(),
        ..Default::default()
    };
    let dir = std::env::temp_dir().join(format!("focalflow-bench-{}", std::process::id()));
    let mut data_path = String::new();
    let result = crate::train::train(backend, &set, &train_opts, &dir, |line| {
        if let Some(path) = line.strip_prefix(DATA_PATH_LINE) {
            data_path = path.to_string();
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
    let (_, history) = result?;
    // Every epoch trains on every image (no validation split, no step limit).
    let timed = &history[1..];
    let seconds: f64 = timed.iter().map(|m| m.seconds).sum();
    Ok(((timed.len() * images) as f64 / seconds, data_path))
}
