//! The targets the op and kernel tests run on, made in one place: the emulator (cuda-emu)
//! under a thread schedule, and the GPU when there is one (made once per test binary; where
//! there is none the test is skipped visibly, see [`super::gpu_or_skip`]).

use std::sync::OnceLock;

use focalflow::executor::{EmuOptions, Executor, Schedule};
use focalflow::ops::CudaBackend;
use focalflow::ops::gemm::{KernelChoice, Variant};
use focalflow::precision::Precision;

/// The schedules every emulator target runs under (the random one with a fixed seed).
pub const RANDOM: Schedule = Schedule::Random(0xF0CA1);

/// An emulator executor running its blocks' threads in `schedule`'s order, with the rest
/// of its settings from the environment (`FOCALFLOW_EMU_STRICT=1`, as CI runs the tests: a
/// lazy device).
pub fn emu_executor(schedule: Schedule) -> Executor {
    Executor::emu_with(EmuOptions {
        schedule,
        ..EmuOptions::from_env().expect("the FOCALFLOW_EMU_* settings")
    })
    .expect("the emulator is built on this target")
}

/// The CUDA backend on the emulator with the given GEMM implementation.
pub fn emu_backend(schedule: Schedule, variant: Variant) -> CudaBackend {
    CudaBackend::with_variant(emu_executor(schedule), variant)
}

/// The CUDA backend on the emulator with the tiled kernels' automatic choice overridden.
pub fn emu_choice(schedule: Schedule, choice: KernelChoice) -> CudaBackend {
    CudaBackend::with_choice(emu_executor(schedule), Variant::Tiled, choice)
}

static GPU_EXECUTOR: OnceLock<Result<Executor, String>> = OnceLock::new();
static GPU_TILED: OnceLock<Result<CudaBackend, String>> = OnceLock::new();
static GPU_NAIVE: OnceLock<Result<CudaBackend, String>> = OnceLock::new();
static GPU_TF32: OnceLock<Result<CudaBackend, String>> = OnceLock::new();
static GPU_BF16: OnceLock<Result<CudaBackend, String>> = OnceLock::new();

/// An executor on GPU 0, or `None` after the skip line naming `test`.
pub fn gpu_executor(test: &str) -> Option<&'static Executor> {
    let init = || Executor::cuda(0).map_err(|e| e.to_string());
    super::gpu_or_skip(&GPU_EXECUTOR, init, test)
}

/// The tiled kernels on GPU 0 with `precision`'s tensor cores (TF32 or BF16), or `None`
/// after the skip line naming `test`.
pub fn gpu_tensor_backend(precision: Precision, test: &str) -> Option<&'static CudaBackend> {
    let cell = match precision {
        Precision::Tf32 => &GPU_TF32,
        _ => &GPU_BF16,
    };
    let init = || {
        Executor::cuda(0)
            .map(|e| CudaBackend::with_variant(e, Variant::Tiled).with_precision(precision))
            .map_err(|e| e.to_string())
    };
    super::gpu_or_skip(cell, init, test)
}

/// A CUDA backend on GPU 0 with the given GEMM implementation, or `None` after the skip
/// line naming `test`.
pub fn gpu_backend(variant: Variant, test: &str) -> Option<&'static CudaBackend> {
    let cell = match variant {
        Variant::Tiled => &GPU_TILED,
        Variant::Naive => &GPU_NAIVE,
    };
    let init = || {
        Executor::cuda(0)
            .map(|e| CudaBackend::with_variant(e, variant))
            .map_err(|e| e.to_string())
    };
    super::gpu_or_skip(cell, init, test)
}
