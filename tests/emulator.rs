//! The CUDA emulator (cuda-emu) on the fixture kernels: every fixture under the forward,
//! reverse and random schedules, plus the failures the emulator must catch (a missing
//! barrier, a divergent barrier, a warp deadlock, a trap).

mod common;
#[path = "emulator/fixtures.rs"]
#[macro_use]
mod fixtures;

use focalflow::Error;
use focalflow::executor::{EmuOptions, Executor, Schedule};

fn emu(schedule: Schedule) -> Executor {
    common::targets::emu_executor(schedule)
}

macro_rules! fixture_tests {
    ($($name:ident),* $(,)?) => {
        mod forward {
            use super::*;
            $( #[test] fn $name() { fixtures::$name(&emu(Schedule::Forward)); } )*
        }
        mod reverse {
            use super::*;
            $( #[test] fn $name() { fixtures::$name(&emu(Schedule::Reverse)); } )*
        }
        mod random {
            use super::*;
            $( #[test] fn $name() { fixtures::$name(&emu(Schedule::Random(0xC0FFEE))); } )*
        }
    };
}

with_working_fixtures!(fixture_tests);

/// The missing barrier is invisible under the forward schedule and caught by the others:
/// this is the proof that the schedule tests can fail.
#[test]
fn missing_barrier_is_caught_by_reverse_and_random_schedules() {
    let forward =
        fixtures::shift_mismatches(&emu(Schedule::Forward), "fx_shift_missing_barrier", 9);
    assert_eq!(
        forward, 0,
        "the forward schedule hides the race (the left neighbour always ran first)"
    );
    let reverse =
        fixtures::shift_mismatches(&emu(Schedule::Reverse), "fx_shift_missing_barrier", 9);
    assert!(
        reverse > 0,
        "the reverse schedule must expose the missing __syncthreads"
    );
    for seed in [1, 2, 3] {
        let random =
            fixtures::shift_mismatches(&emu(Schedule::Random(seed)), "fx_shift_missing_barrier", 9);
        assert!(
            random > 0,
            "random:{seed} must expose the missing __syncthreads"
        );
    }
}

/// The message of a launch that fails while it runs: reported by the next call that waits
/// for the device (here `synchronize`), as on a GPU.
fn launch_error(exec: &Executor, kernel: &str, threads: u32) -> String {
    let mut y = exec.alloc_zeros::<f32>(threads as usize).unwrap();
    let cfg = focalflow::executor::LaunchConfig::new(2u32, threads);
    // SAFETY: the fixture takes one float* of blockDim.x elements (both blocks write the same ones).
    let run = unsafe { exec.launch_builder(kernel, cfg).arg(&mut y).launch() };
    match run.and_then(|()| exec.synchronize()) {
        Ok(()) => panic!("{kernel} must fail on the emulator"),
        Err(Error::Device(msg)) => msg,
        Err(e) => panic!("{kernel}: expected Error::Device, got {e:?}"),
    }
}

#[test]
fn divergent_barrier_fails_with_kernel_name_and_line() {
    for schedule in [Schedule::Forward, Schedule::Reverse, Schedule::Random(5)] {
        let msg = launch_error(&emu(schedule), "fx_divergent_barrier", 32);
        let line = fixtures::fixture_line("FIXTURE: divergent barrier");
        assert!(msg.contains("fx_divergent_barrier"), "{msg}");
        assert!(msg.contains("divergent __syncthreads"), "{msg}");
        assert!(msg.contains(&line), "expected {line} in: {msg}");
        assert!(msg.contains("16 thread(s) [16-31] exited"), "{msg}");
        assert!(!msg.contains('\n'), "one line: {msg}");
    }
}

#[test]
fn warp_deadlock_fails_with_kernel_name_and_line() {
    let msg = launch_error(&emu(Schedule::Forward), "fx_warp_deadlock", 32);
    let line = fixtures::fixture_line("FIXTURE: warp deadlock");
    assert!(
        msg.contains("fx_warp_deadlock") && msg.contains("deadlock"),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("__shfl_down_sync ({line})")),
        "expected {line} in: {msg}"
    );
}

#[test]
fn trap_fails_with_line() {
    let msg = launch_error(&emu(Schedule::Reverse), "fx_trap", 32);
    let line = fixtures::fixture_line("FIXTURE: trap");
    assert!(
        msg.contains("fx_trap") && msg.contains(&format!("__trap() at {line}")),
        "{msg}"
    );
}

/// A launch returns before its kernel runs; a failure is reported by the next call that
/// waits, and by every later call (a CUDA context is unusable after a kernel fault); a new
/// executor works.
#[test]
fn a_failed_launch_is_reported_later_and_sticks_as_on_a_gpu() {
    let exec = emu(Schedule::Forward);
    let mut y = exec.alloc_zeros::<f32>(64).unwrap();
    let cfg = focalflow::executor::LaunchConfig::new(2u32, 64u32);
    // SAFETY: fx_divergent_barrier takes one float* of blockDim.x elements.
    unsafe {
        exec.launch_builder("fx_divergent_barrier", cfg)
            .arg(&mut y)
            .launch()
    }
    .expect("the launch is only queued");
    let first = exec.synchronize().unwrap_err().to_string();
    assert!(first.contains("fx_divergent_barrier"), "{first}");
    let later = exec.download(&y).unwrap_err().to_string();
    assert_eq!(later, first, "the failure sticks");
    // SAFETY: as above.
    let again = unsafe {
        exec.launch_builder("fx_divergent_barrier", cfg)
            .arg(&mut y)
            .launch()
    };
    assert_eq!(again.unwrap_err().to_string(), first);
    let fresh = emu(Schedule::Forward);
    fixtures::shift_with_barrier(&fresh);
    fixtures::block_sum(&fresh);
}

#[test]
fn schedules_parse_and_print() {
    assert_eq!("forward".parse::<Schedule>().unwrap(), Schedule::Forward);
    assert_eq!("reverse".parse::<Schedule>().unwrap(), Schedule::Reverse);
    assert!(matches!(
        "random".parse::<Schedule>().unwrap(),
        Schedule::Random(_)
    ));
    assert_eq!(
        "random:42".parse::<Schedule>().unwrap(),
        Schedule::Random(42)
    );
    assert_eq!(Schedule::Random(42).to_string(), "random:42");
    let err = "sideways".parse::<Schedule>().unwrap_err().to_string();
    assert!(err.contains("forward, reverse, random"), "{err}");
}

#[test]
fn emulator_buffers_start_poisoned() {
    let exec = emu(Schedule::Forward);
    let b = exec.alloc::<f32>(5).unwrap();
    assert!(exec.download(&b).unwrap().iter().all(|v| v.is_nan()));
    let z = exec.alloc_zeros::<i32>(5).unwrap();
    assert_eq!(exec.download(&z).unwrap(), [0; 5]);
}

#[test]
fn fiber_stack_overflow_fails_the_launch_and_a_larger_stack_fixes_it() {
    let run = |stack_bytes: u32| {
        let exec = Executor::emu_with(EmuOptions {
            stack_bytes,
            ..EmuOptions::default()
        })
        .unwrap();
        let mut y = exec.alloc_zeros::<f32>(32).unwrap();
        let cfg = focalflow::executor::LaunchConfig::new(3u32, 32u32);
        // SAFETY: fx_stack_hog(float* y, int n) writes y[threadIdx.x], 32 elements.
        let r = unsafe {
            exec.launch_builder("fx_stack_hog", cfg)
                .arg(&mut y)
                .arg(32768i32)
                .launch()
        };
        r.and_then(|()| exec.download(&y))
    };
    let msg = run(64 * 1024)
        .expect_err("128 KiB of locals on a 64 KiB stack must fail")
        .to_string();
    assert!(
        msg.contains("fx_stack_hog") && msg.contains("FOCALFLOW_EMU_STACK_KB"),
        "{msg}"
    );
    let y = run(256 * 1024).unwrap();
    assert!(y.iter().all(|&v| v == 32767.0), "{y:?}");
}
