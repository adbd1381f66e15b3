//! What the emulator catches that a lenient one would not (as compute-sanitizer and the
//! GPU's own faults do): an access outside the exact bytes of an allocation, a misaligned
//! vector access, an overrun of dynamic shared memory, and host code that does not wait for
//! the device. Each check is shown failing on a planted bug (tests/emulator/emu_fixtures.cu)
//! and passing without the bug, and the planted bug passing with the check off.

mod common;

use focalflow::Error;
use focalflow::executor::{DeviceMode, EmuOptions, Executor, LaunchConfig};

fn emu(memcheck: bool, device: DeviceMode) -> Executor {
    Executor::emu_with(EmuOptions {
        memcheck,
        device,
        ..EmuOptions::default()
    })
    .expect("the emulator is built on this target")
}

/// Launches `kernel` on (x, y, scalar) and waits: the launch's outcome.
fn run(
    exec: &Executor,
    kernel: &str,
    cfg: LaunchConfig,
    x: &[f32],
    y_len: usize,
    scalar: i32,
) -> Result<Vec<f32>, String> {
    let dx = exec.upload(x).unwrap();
    let mut dy = exec.alloc_zeros::<f32>(y_len).unwrap();
    // SAFETY: every fixture here takes (const float*, float*, int); the bugs planted in them
    // are caught by the emulator before any access is made.
    let launched = unsafe {
        exec.launch_builder(kernel, cfg)
            .arg(&dx)
            .arg(&mut dy)
            .arg(scalar)
            .launch()
    };
    match launched.and_then(|()| exec.download(&dy)) {
        Ok(y) => Ok(y),
        Err(Error::Device(msg)) => Err(msg),
        Err(e) => panic!("{kernel}: expected Error::Device, got {e:?}"),
    }
}

fn assert_one_line(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "expected `{p}` in: {msg}");
    }
    assert!(!msg.contains('\n'), "one line: {msg}");
}

#[test]
fn a_read_one_element_past_the_end_is_reported() {
    let x: Vec<f32> = (0..100).map(|i| i as f32).collect();
    let cfg = LaunchConfig::for_elements(100, 32);
    let msg = run(
        &emu(true, DeviceMode::Async),
        "fx_read_past_end",
        cfg,
        &x,
        100,
        100,
    )
    .unwrap_err();
    // The last thread, i = 99 = block 3 x 32 + thread 3, reads x[100].
    assert_one_line(
        &msg,
        &[
            "fx_read_past_end",
            "invalid global read of 4 bytes",
            "0 bytes after the end of the nearest allocation, 400 bytes at 0x",
            "by thread (3,0,0) in block (3,0,0)",
        ],
    );
    // The check is exact: one more element and the same kernel is fine.
    let mut x101 = x.clone();
    x101.push(100.0);
    let y = run(
        &emu(true, DeviceMode::Async),
        "fx_read_past_end",
        cfg,
        &x101,
        100,
        100,
    )
    .unwrap();
    assert_eq!(y, x101[1..]);
    // Without the check the planted bug passes (the 400 bytes lie in a 4 KiB page).
    run(
        &emu(false, DeviceMode::Async),
        "fx_read_past_end",
        cfg,
        &x,
        100,
        100,
    )
    .expect("unchecked");
}

#[test]
fn a_misaligned_vector_access_is_reported() {
    let x: Vec<f32> = (0..12).map(|i| i as f32).collect();
    let one = LaunchConfig::new(1u32, 1u32);
    let msg = run(
        &emu(true, DeviceMode::Async),
        "fx_misaligned_float4",
        one,
        &x,
        1,
        1,
    )
    .unwrap_err();
    assert_one_line(
        &msg,
        &[
            "fx_misaligned_float4",
            "invalid global read of 16 bytes",
            "misaligned address: a 16-byte access must be 16-byte aligned",
            "by thread (0,0,0) in block (0,0,0)",
        ],
    );
    let y = run(
        &emu(true, DeviceMode::Async),
        "fx_misaligned_float4",
        one,
        &x,
        1,
        4,
    )
    .unwrap();
    assert_eq!(y, [4.0 + 5.0 + 6.0 + 7.0]);

    let msg = run(
        &emu(true, DeviceMode::Async),
        "fx_misaligned_float2",
        one,
        &x,
        1,
        3,
    )
    .unwrap_err();
    assert_one_line(
        &msg,
        &[
            "fx_misaligned_float2",
            "misaligned address: a 8-byte access",
        ],
    );
    assert_eq!(
        run(
            &emu(true, DeviceMode::Async),
            "fx_misaligned_float2",
            one,
            &x,
            1,
            2
        )
        .unwrap(),
        [5.0]
    );
    // Without the check the x86 CPU loads the misaligned float2 without complaint.
    let y = run(
        &emu(false, DeviceMode::Async),
        "fx_misaligned_float2",
        one,
        &x,
        1,
        3,
    )
    .unwrap();
    assert_eq!(y, [7.0]);
}

#[test]
fn an_overrun_of_dynamic_shared_memory_is_reported() {
    // `threads` threads each write their own float of `floats` floats of shared memory.
    let launch = |memcheck: bool, threads: u32, floats: u32| {
        let exec = emu(memcheck, DeviceMode::Async);
        let mut y = exec.alloc_zeros::<f32>(threads as usize).unwrap();
        let cfg = LaunchConfig::new(1u32, threads).with_shared(floats * 4);
        // SAFETY: fx_shared_overrun(float* y) writes y[threadIdx.x], `threads` elements.
        unsafe {
            exec.launch_builder("fx_shared_overrun", cfg)
                .arg(&mut y)
                .launch()
        }
        .and_then(|()| exec.download(&y))
        .map_err(|e| e.to_string())
    };
    let msg = launch(true, 33, 32).unwrap_err();
    assert_one_line(
        &msg,
        &[
            "fx_shared_overrun",
            "invalid shared write of 4 bytes",
            "4 bytes past the end of the launch's 128 bytes of dynamic shared memory",
            "by thread (32,0,0) in block (0,0,0)",
        ],
    );
    // A size the buffer's rounding does not hide: 256 bytes asked for, the write at byte 256.
    let msg = launch(true, 65, 64).unwrap_err();
    assert_one_line(
        &msg,
        &[
            "4 bytes past the end of the launch's 256 bytes",
            "thread (64,0,0)",
        ],
    );
    assert_eq!(launch(true, 33, 33).unwrap(), vec![0.0; 33]);
    launch(false, 33, 32).expect("unchecked, the overrun lands in the rounded-up buffer");
}

/// A buffer of one emulator executor given to another is refused: it is freed on its own
/// executor's stream, which does not wait for the other's work.
#[test]
fn a_buffer_of_another_executor_is_refused() {
    let (a, b) = (emu(true, DeviceMode::Async), emu(true, DeviceMode::Async));
    let x = a.upload(&[1.0f32, 2.0]).unwrap();
    let err = b.download(&x).unwrap_err().to_string();
    assert!(err.contains("another cuda-emu executor"), "{err}");
    assert_eq!(a.download(&x).unwrap(), [1.0, 2.0]);
}

#[test]
fn a_misaligned_tensor_core_load_is_reported_with_its_line() {
    let a = vec![1.0f32; 16 * 8 + 4];
    let msg = run(
        &emu(true, DeviceMode::Async),
        "fx_wmma_misaligned",
        LaunchConfig::new(1u32, 32u32),
        &a,
        32,
        8,
    )
    .unwrap_err();
    let src = include_str!("emulator/emu_fixtures.cu");
    let line = src
        .lines()
        .position(|l| l.contains("FIXTURE: misaligned wmma"))
        .unwrap()
        + 1;
    assert_one_line(
        &msg,
        &[
            "fx_wmma_misaligned",
            "wmma::load_matrix_sync: misaligned address",
            "(must be 32-byte aligned)",
            &format!("tests/emulator/emu_fixtures.cu:{line}"),
        ],
    );
}

/// The planted host bug: a staging buffer written again right after its upload was queued,
/// without waiting for the copy (the raw pointer sidesteps `bytes_mut`, which waits). A
/// synchronous emulator hides it; the lazy device (the strict mode) copies when the host
/// waits, so the device gets the new bytes.
fn staged_upload_with_early_reuse(device: DeviceMode, wait_first: bool) -> Vec<u8> {
    let exec = emu(true, device);
    let mut dst = exec.alloc_zeros::<u8>(4).unwrap();
    let mut stage = exec.staging(4).unwrap();
    stage.bytes_mut().unwrap().copy_from_slice(&[1, 2, 3, 4]);
    let p = stage.bytes_mut().unwrap().as_mut_ptr();
    stage.upload(&exec, 4, &mut dst, 0).unwrap();
    let reused = if wait_first {
        stage.bytes_mut().unwrap().as_mut_ptr() // waits for the copy: the right way
    } else {
        p // the bug
    };
    // SAFETY: the staging buffer is alive and 4 bytes long; the emulator's copy reads it on
    // its device thread only while the host waits below, so nothing races.
    unsafe { reused.write(9) };
    exec.download(&dst).unwrap()
}

#[test]
fn reusing_a_staging_buffer_without_waiting_is_caught_by_the_lazy_device() {
    assert_eq!(
        staged_upload_with_early_reuse(DeviceMode::Sync, false),
        [1, 2, 3, 4],
        "the sync emulator hides it"
    );
    assert_eq!(
        staged_upload_with_early_reuse(DeviceMode::Lazy, false),
        [9, 2, 3, 4],
        "the lazy device copies late, as a GPU may"
    );
    assert_eq!(
        staged_upload_with_early_reuse(DeviceMode::Lazy, true),
        [1, 2, 3, 4],
        "waiting fixes it"
    );
}

/// On a lazy device nothing runs until the host waits: a launch has returned long before
/// its kernel ran, and work runs in the order it was queued.
#[test]
fn a_lazy_device_runs_work_in_order_when_the_host_waits() {
    let exec = emu(true, DeviceMode::Lazy);
    let x: Vec<f32> = (0..64).map(|i| i as f32).collect();
    let dx = exec.upload(&x).unwrap();
    let mut dy = exec.alloc_zeros::<f32>(64).unwrap();
    let start = exec.record_event().unwrap();
    for _ in 0..3 {
        // y = x shifted by one: the same result however often; a copy of x queued between
        // launches must land before the next launch reads it.
        // SAFETY: fx_shift_with_barrier(const float*, float*, int) over 64 elements.
        unsafe {
            exec.launch_builder("fx_shift_with_barrier", LaunchConfig::new(1u32, 64u32))
                .arg(&dx)
                .arg(&mut dy)
                .arg(64i32)
                .launch()
                .unwrap()
        };
    }
    let mut dz = exec.alloc::<f32>(64).unwrap();
    exec.copy_dtod(&dy, 64, &mut dz, 0).unwrap();
    exec.memset_zeros(&mut dy).unwrap();
    let end = exec.record_event().unwrap();
    assert_eq!(exec.blocking_reads(), 0);
    assert!(start.elapsed_ms(&end).unwrap() >= 0.0);
    let z = exec.download(&dz).unwrap();
    assert_eq!(z[0], 0.0);
    assert_eq!(z[1..], x[..63]);
    assert_eq!(exec.download(&dy).unwrap(), vec![0.0; 64]);
}

#[test]
fn strict_mode_and_device_settings_parse() {
    assert_eq!(DeviceMode::parse("lazy"), Some(DeviceMode::Lazy));
    assert_eq!(DeviceMode::parse("sync"), Some(DeviceMode::Sync));
    assert_eq!(DeviceMode::parse("later"), None);
    let strict = EmuOptions::strict();
    assert_eq!(strict.device, DeviceMode::Lazy);
    assert!(strict.memcheck);
    assert!(matches!(
        strict.schedule,
        focalflow::executor::Schedule::Random(_)
    ));
}
