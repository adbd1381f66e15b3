//! The GPU executor: the same fixture tests as tests/emulator.rs on a real GPU when one is
//! present. Without one, each test prints `SKIPPED (no GPU): ...` to stderr (visible even
//! with captured output) and passes; with `FOCALFLOW_REQUIRE_GPU=1` it fails instead (for
//! the GPU check script). Without a driver, `Executor::cuda` must return a clean one-line
//! error, never panic.

mod common;
#[path = "emulator/fixtures.rs"]
#[macro_use]
mod fixtures;

use std::io::Write as _;

use focalflow::Error;
use focalflow::executor::Executor;

/// One line straight to the stderr handle, in one write: the test harness captures
/// `eprintln!`, and a skip must stay visible.
fn note(line: &str) {
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}

/// The shared GPU executor, or `None` after printing the skip line.
fn gpu(test: &str) -> Option<&'static Executor> {
    common::targets::gpu_executor(&format!("gpu_executor::{test}"))
}

macro_rules! gpu_fixture_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                if let Some(exec) = gpu(stringify!($name)) {
                    fixtures::$name(exec);
                }
            }
        )*
    };
}

with_working_fixtures!(gpu_fixture_tests);

#[test]
fn cuda_executor_returns_a_clean_error_or_works() {
    // Must not panic, whatever the machine.
    let first = Executor::cuda(0);
    let first_ok = first.is_ok();
    match first {
        Ok(exec) => {
            let d = exec.describe();
            assert!(d.starts_with("cuda: GPU 0"), "{d}");
        }
        Err(Error::Device(msg)) => {
            assert!(!msg.is_empty() && !msg.contains('\n'), "one line: {msg:?}");
            // SAFETY: only probes whether libcuda can be loaded.
            if !unsafe { cudarc::driver::sys::is_culib_present() } {
                assert_eq!(
                    msg,
                    "no CUDA driver found (libcuda.so): --device cuda needs an NVIDIA GPU and driver; \
                     use --device cpu or cuda-emu"
                );
            }
            note(&format!(
                "note: the cuda executor is unavailable here: {msg}"
            ));
        }
        Err(e) => panic!("expected Error::Device, got {e:?}"),
    }
    // A second attempt behaves the same (no state left half-initialised).
    assert_eq!(Executor::cuda(0).is_ok(), first_ok);
}

#[test]
fn a_missing_gpu_ordinal_is_an_error() {
    match Executor::cuda(1000) {
        Ok(_) => panic!("no machine has 1001 GPUs"),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}
