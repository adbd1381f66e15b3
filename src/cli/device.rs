//! `--device auto|cpu|cuda|cuda-emu`: which backend runs a command, the backend itself
//! ([`on_device!`]: one body compiled for each backend type), and what its phases are timed
//! with (`--profile`).

use super::DeviceChoice;
use crate::executor::{Executor, cuda_unavailable_reason};
use crate::ops::CudaBackend;
use crate::precision::{self, Precision};
use crate::{Error, Result};

/// Where the model runs, and in which precision.
#[derive(clap::Args, Debug, Clone)]
pub struct DeviceFlag {
    /// auto: cuda when a GPU and compiled kernels are present, else cpu (said on stderr).
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceChoice,
    #[command(flatten)]
    pub precision: PrecisionFlag,
}

/// `--precision`.
#[derive(clap::Args, Debug, Clone)]
pub struct PrecisionFlag {
    /// Number format of the convolution and dense products: fp32 (bit-reproducible), bf16
    /// (GPU tensor cores, or a CPU with AVX512_BF16) or tf32 (GPU tensor cores); weights,
    /// sums, loss and metrics stay f32.
    #[arg(long, value_enum, default_value = "fp32")]
    pub precision: Precision,
}

/// Checks that the resolved `device` runs `precision` (before any work: every command that
/// takes `--precision` calls it first): a one-line error naming the flag, the device, what is
/// missing and what to use instead.
pub fn check_precision(device: DeviceChoice, precision: Precision) -> Result<()> {
    let why = match device {
        DeviceChoice::Cuda | DeviceChoice::CudaEmu => precision::cuda_unsupported(precision),
        _ if precision != Precision::Fp32
            && crate::ops::CpuPath::from_env()? == crate::ops::CpuPath::Reference =>
        {
            Some(
                "FOCALFLOW_CPU_PATH=reference is the plain f32 path, for comparisons; unset it \
                 for other precisions"
                    .to_string(),
            )
        }
        _ => precision::cpu_unsupported(precision),
    };
    why.map_or(Ok(()), |w| {
        Err(Error::invalid(format!(
            "--precision {precision} on {}: {w}",
            name(device)
        )))
    })
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
/// `--device`, its products in `$precision` (which the caller has checked with
/// [`check_precision`], before any work): one body,
/// compiled for each backend type (a closure cannot be generic over it). `?` inside `$body`
/// returns from the enclosing function.
macro_rules! on_device {
    ($device:expr, $precision:expr, |$b:ident| $body:expr) => {
        match $device {
            $crate::cli::DeviceChoice::Cuda | $crate::cli::DeviceChoice::CudaEmu => {
                let backend =
                    $crate::cli::device::cuda_backend($device)?.with_precision($precision);
                let $b = &backend;
                $body
            }
            _ => {
                let path = $crate::ops::CpuPath::from_env()?;
                let backend =
                    $crate::ops::CpuBackend::<f32>::with_path(path).with_precision($precision);
                let $b = &backend;
                $body
            }
        }
    };
}
pub(crate) use on_device;

/// What the per-phase times of `--profile` are measured with on `device`.
pub fn clock_name(device: DeviceChoice) -> &'static str {
    match device {
        DeviceChoice::Cuda => "CUDA events",
        _ => "wall clock",
    }
}
