//! The C ABI between Rust and the emulator (src/executor/emulator/cuda_emu.h, generated launchers).

use std::ffi::{c_char, c_int, c_void};

/// Mirrors `emu::LaunchParams` in src/executor/emulator/cuda_emu.h.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EmuLaunchParams {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub dynamic_shared_bytes: u32,
    /// 0 forward, 1 reverse, 2 random.
    pub schedule: u32,
    pub seed: u64,
    /// OS threads the blocks are spread over (>= 1).
    pub threads: u32,
    /// Stack of each fiber (one per CUDA thread), bytes.
    pub stack_bytes: u32,
    /// 1: every access to device or dynamic shared memory is checked (bounds, alignment).
    pub memcheck: u32,
}

/// `focalflow_emu_launch_<kernel>(params, args, arg_sizes, nargs, err, err_len)`: runs the
/// whole grid before it returns (on the device thread); `args[i]` points at the i-th parameter's value, as for
/// `cuLaunchKernel`, and `arg_sizes[i]` is its size (checked against the kernel's
/// signature). Returns 0, or non-zero with a NUL-terminated message in `err`.
pub type EmuLaunchFn = unsafe extern "C" fn(
    params: *const EmuLaunchParams,
    args: *mut *mut c_void,
    arg_sizes: *const u32,
    nargs: u32,
    err: *mut c_char,
    err_len: usize,
) -> c_int;

/// The emulator's device memory (src/executor/emulator/memcheck.cpp): page-aligned allocations
/// in one reserved range, each followed by a guard page, whose exact bounds every kernel
/// access is checked against.
#[derive(Clone, Copy, Debug)]
pub struct EmuMemory {
    /// `alloc(bytes, fill, err, err_len)`: `bytes` set to `fill`, or null with a
    /// NUL-terminated message in `err`.
    pub alloc: unsafe extern "C" fn(usize, u8, *mut c_char, usize) -> *mut c_void,
    /// Releases a pointer `alloc` returned.
    pub free: unsafe extern "C" fn(*mut c_void),
}
