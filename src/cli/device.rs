//! `--device auto|cpu|cuda|cuda-emu` and `--profile`: which backend runs a command, and
//! running `train`, `bench` and `loss` on it (one generic call per backend).

use std::path::Path;

use super::DeviceChoice;
use crate::backend::Backend;
use crate::backend::cuda::CudaBackend;
use crate::bench::{self, BenchOptions, BenchReport, Stage};
use crate::data::{ImageSet, PixelStore};
use crate::feed::Feeds;
use crate::gpu::{Executor, cuda_unavailable_reason};
use crate::loss::LossConfig;
use crate::profile::{Profiled, Profiler, Timeline, nvtx};
use crate::run::EpochMetrics;
use crate::train::{self, TrainOptions};
use crate::{Error, Result};

/// Where the model runs.
#[derive(clap::Args, Debug, Clone)]
pub struct DeviceFlag {
    /// auto: cuda when a GPU and compiled kernels are present, else cpu (said on stderr).
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceChoice,
}

/// Resolves `--device` to a backend this machine and build can run (`auto`: cuda when a GPU
/// and compiled kernels are there, else cpu, said in one line on stderr), or a one-line
/// error saying why not and what to do.
pub fn resolve(choice: DeviceChoice) -> Result<DeviceChoice> {
    match choice {
        DeviceChoice::Cpu | DeviceChoice::CudaEmu => Ok(choice),
        DeviceChoice::Cuda => match cuda_unavailable_reason() {
            None => Ok(DeviceChoice::Cuda),
            Some(why) => Err(Error::Device(format!("--device cuda: {why}"))),
        },
        DeviceChoice::Auto => match cuda_unavailable_reason() {
            None => {
                eprintln!("--device auto: cuda (a GPU and compiled kernels are present)");
                Ok(DeviceChoice::Cuda)
            }
            Some(why) => {
                // The reason without its advice (which is about --device cuda).
                let cut = [": --device", "; use", ": run "]
                    .iter()
                    .filter_map(|m| why.find(m))
                    .min();
                eprintln!(
                    "--device auto: cpu (no usable GPU: {})",
                    &why[..cut.unwrap_or(why.len())]
                );
                Ok(DeviceChoice::Cpu)
            }
        },
    }
}

/// The `--device` spelling of a choice (`cpu`, `cuda-emu`, ...).
pub fn name(device: DeviceChoice) -> String {
    clap::ValueEnum::to_possible_value(&device)
        .map_or_else(|| format!("{device:?}"), |v| v.get_name().to_string())
}

/// Parses a `--device` string (`focalflow loss` takes one) and resolves it.
pub fn resolve_str(s: &str) -> Result<DeviceChoice> {
    let choice = <DeviceChoice as clap::ValueEnum>::from_str(s, true).map_err(|_| {
        Error::invalid(format!(
            "--device {s}: expected auto, cpu, cuda or cuda-emu"
        ))
    })?;
    resolve(choice)
}

/// The CUDA backend of a resolved `cuda` / `cuda-emu` choice.
pub fn cuda_backend(device: DeviceChoice) -> Result<CudaBackend> {
    let exec = match device {
        DeviceChoice::CudaEmu => Executor::emu()?,
        _ => Executor::cuda(0).map_err(|e| Error::Device(format!("--device cuda: {e}")))?,
    };
    Ok(CudaBackend::new(exec))
}

/// Evaluates `$body` with `$b` bound to (a reference to) the backend of a resolved
/// `--device`: one body, compiled for each backend type (a closure cannot be generic over
/// it). `?` inside `$body` returns from the enclosing function.
macro_rules! on_device {
    ($device:expr, |$b:ident| $body:expr) => {
        match $device {
            $crate::cli::DeviceChoice::Cuda | $crate::cli::DeviceChoice::CudaEmu => {
                let backend = $crate::cli::device::cuda_backend($device)?;
                let $b = &backend;
                $body
            }
            _ => {
                let backend = $crate::backend::CpuBackend::<f32>::new();
                let $b = &backend;
                $body
            }
        }
    };
}
pub(crate) use on_device;

/// What the per-phase times are measured with.
fn clock_name(device: DeviceChoice) -> &'static str {
    match device {
        DeviceChoice::Cuda => "CUDA events",
        _ => "wall clock",
    }
}

/// Trains on `device` (see [`train::train`]); with `profile`, prints the per-phase table.
pub fn train<P: PixelStore>(
    device: DeviceChoice,
    profile: bool,
    data: &ImageSet<P>,
    opts: &TrainOptions,
    out: &Path,
    log: impl FnMut(&str),
) -> Result<Vec<EpochMetrics>> {
    on_device!(device, |backend| {
        train_with(backend, profile, clock_name(device), data, opts, out, log)
    })
}

fn train_with<B: Feeds + Timeline, P: PixelStore>(
    backend: &B,
    profile: bool,
    clock: &str,
    data: &ImageSet<P>,
    opts: &TrainOptions,
    out: &Path,
    log: impl FnMut(&str),
) -> Result<Vec<EpochMetrics>> {
    // The phase wrapper costs a compare per backend call; skip it when nobody looks.
    if !profile && !nvtx::available() {
        return Ok(train::train(backend, data, opts, out, log)?.1);
    }
    let prof = Profiler::new(profile);
    let (_model, history) = train::train(&Profiled::new(backend, &prof), data, opts, out, log)?;
    prof.finish(backend)?;
    if profile {
        println!("{}", prof.table(clock));
    }
    Ok(history)
}

/// Benchmarks on `device` (see [`bench::run`]); with `profile`, prints the per-phase table
/// of the timed training steps (to stderr when `json`, so stdout stays one JSON object).
pub fn bench(
    device: DeviceChoice,
    profile: bool,
    json: bool,
    opts: &BenchOptions,
) -> Result<BenchReport> {
    on_device!(device, |backend| {
        bench_with(backend, profile, json, clock_name(device), opts)
    })
}

fn bench_with<B: Feeds + Timeline>(
    backend: &B,
    profile: bool,
    json: bool,
    clock: &str,
    opts: &BenchOptions,
) -> Result<BenchReport> {
    if !profile && !nvtx::available() {
        return bench::run(backend, opts);
    }
    let prof = Profiler::new(false);
    let report = bench::run_with(&Profiled::new(backend, &prof), opts, |stage| match stage {
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
    if profile {
        let table = prof.table(clock);
        if json {
            eprintln!("{table}")
        } else {
            println!("{table}")
        }
    }
    Ok(report)
}

/// The loss (and its gradient when `want_grad`) of `[batch, classes]` host arrays, computed
/// by `device`'s backend (`Backend::loss`).
pub fn loss(
    device: DeviceChoice,
    cfg: &LossConfig,
    y_true: &[f32],
    y_pred: &[f32],
    [batch, classes]: [usize; 2],
    want_grad: bool,
) -> Result<(f32, Option<Vec<f32>>)> {
    on_device!(device, |backend| {
        loss_with(backend, cfg, y_true, y_pred, batch, classes, want_grad)
    })
}

fn loss_with<B: Backend<E = f32>>(
    b: &B,
    cfg: &LossConfig,
    y_true: &[f32],
    y_pred: &[f32],
    batch: usize,
    classes: usize,
    want_grad: bool,
) -> Result<(f32, Option<Vec<f32>>)> {
    let (t, p) = (b.upload(y_true)?, b.upload(y_pred)?);
    let mut g = if want_grad {
        Some(b.zeros(batch * classes)?)
    } else {
        None
    };
    let value = b.loss(cfg, batch, classes, &t, &p, g.as_mut())?;
    let grad = match &g {
        Some(g) => Some(b.read(g, batch * classes)?),
        None => None,
    };
    Ok((value, grad))
}
