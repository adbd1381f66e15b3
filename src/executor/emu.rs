//! The CPU emulator executor ("cuda-emu"): runs the same kernel sources, compiled as C++ by
//! build.rs with src/executor/emulator/cuda_emu.h, on the CPU. Host memory stands in for device
//! memory (kernel pointer arguments are host addresses); launches are synchronous.

use std::collections::HashMap;
use std::ffi::{CStr, c_char, c_void};
use std::fmt;
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::ffi::EmuLaunchParams;
use super::kernels::{BUILD, KernelInfo};
use super::{DeviceElem, LaunchConfig, validate_launch};
use crate::{Error, Result};

/// The order in which the threads of a block run between two barriers. A kernel whose
/// result depends on it has a race (typically a missing `__syncthreads`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Schedule {
    /// Thread 0 first.
    #[default]
    Forward,
    /// The last thread first.
    Reverse,
    /// A new random permutation at every step, from this seed (varied per launch).
    Random(u64),
}

/// Seed of `random` without one.
pub const DEFAULT_RANDOM_SEED: u64 = 0x5EED_F0CA_1F10;

impl FromStr for Schedule {
    type Err = Error;
    /// `forward`, `reverse`, `random` or `random:<seed>`.
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        match s {
            "forward" => Ok(Schedule::Forward),
            "reverse" => Ok(Schedule::Reverse),
            "random" => Ok(Schedule::Random(DEFAULT_RANDOM_SEED)),
            _ => s
                .strip_prefix("random:")
                .and_then(|seed| seed.parse().ok())
                .map(Schedule::Random)
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "emulator schedule `{s}`: expected forward, reverse, random or random:<seed>"
                    ))
                }),
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Forward => f.write_str("forward"),
            Schedule::Reverse => f.write_str("reverse"),
            Schedule::Random(seed) => write!(f, "random:{seed}"),
        }
    }
}

/// Emulator settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmuOptions {
    pub schedule: Schedule,
    /// OS threads the blocks of a launch are spread over.
    pub threads: u32,
    /// Stack of each emulated CUDA thread, bytes.
    pub stack_bytes: u32,
    /// Free "device memory" the emulator reports (`FOCALFLOW_EMU_FREE_MIB`), so that the
    /// GPU's memory checks can be exercised; `None`: unknown, as the host's memory is.
    pub free_bytes: Option<u64>,
}

impl Default for EmuOptions {
    fn default() -> Self {
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(64) as u32;
        EmuOptions {
            schedule: Schedule::Forward,
            threads,
            stack_bytes: 64 * 1024,
            free_bytes: None,
        }
    }
}

impl EmuOptions {
    /// Defaults, overridden by `FOCALFLOW_EMU_SCHEDULE` (forward | reverse | random[:seed]),
    /// `FOCALFLOW_EMU_THREADS` and `FOCALFLOW_EMU_STACK_KB`.
    pub fn from_env() -> Result<Self> {
        let mut o = EmuOptions::default();
        if let Some(s) = env_var("FOCALFLOW_EMU_SCHEDULE") {
            o.schedule = s
                .parse()
                .map_err(|e| Error::invalid(format!("FOCALFLOW_EMU_SCHEDULE: {e}")))?;
        }
        if let Some(s) = env_var("FOCALFLOW_EMU_THREADS") {
            o.threads = s
                .parse()
                .ok()
                .filter(|&t| (1..=1024).contains(&t))
                .ok_or_else(|| {
                    Error::invalid(format!("FOCALFLOW_EMU_THREADS={s}: expected 1..=1024"))
                })?;
        }
        if let Some(s) = env_var("FOCALFLOW_EMU_STACK_KB") {
            let kb: u32 = s
                .parse()
                .ok()
                .filter(|&k| (8..=16 * 1024).contains(&k))
                .ok_or_else(|| {
                    Error::invalid(format!("FOCALFLOW_EMU_STACK_KB={s}: expected 8..=16384"))
                })?;
            o.stack_bytes = kb * 1024;
        }
        if let Some(s) = env_var("FOCALFLOW_EMU_FREE_MIB") {
            let mib: u64 = s.parse().map_err(|_| {
                Error::invalid(format!(
                    "FOCALFLOW_EMU_FREE_MIB={s}: expected a number of MiB"
                ))
            })?;
            o.free_bytes = Some(mib << 20);
        }
        Ok(o)
    }
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|s| !s.trim().is_empty())
}

/// The emulator executor.
pub struct EmuExecutor {
    options: Mutex<EmuOptions>,
    launches: AtomicU64,
    /// Device-to-host copies (the reads that block a GPU's host), see `Executor::blocking_reads`.
    pub(super) blocking_reads: AtomicU64,
    max_dynamic_shared: Mutex<HashMap<&'static str, u32>>,
}

impl EmuExecutor {
    pub fn new(options: EmuOptions) -> Result<Self> {
        if !BUILD.emulator {
            return Err(Error::Device(
                "the CUDA emulator is not built for this target (unix only)".into(),
            ));
        }
        Ok(EmuExecutor {
            options: Mutex::new(options),
            launches: AtomicU64::new(0),
            blocking_reads: AtomicU64::new(0),
            max_dynamic_shared: Mutex::new(HashMap::new()),
        })
    }
    pub fn options(&self) -> EmuOptions {
        self.options.lock().unwrap().clone()
    }
    /// Changes the thread schedule of later launches.
    pub fn set_schedule(&self, schedule: Schedule) {
        self.options.lock().unwrap().schedule = schedule;
    }
    pub fn describe(&self) -> String {
        let o = self.options();
        format!(
            "cuda-emu: CPU emulator, {} OS thread(s), schedule {}, {} KiB per CUDA thread, {}",
            o.threads,
            o.schedule,
            o.stack_bytes / 1024,
            BUILD.emulator_switch
        )
    }

    pub(super) fn set_max_dynamic_shared(&self, k: &'static KernelInfo, bytes: u32) {
        self.max_dynamic_shared
            .lock()
            .unwrap()
            .insert(k.name, bytes);
    }

    /// # Safety
    /// See [`super::Executor::launch_raw`].
    pub(super) unsafe fn launch(
        &self,
        k: &'static KernelInfo,
        cfg: LaunchConfig,
        args: &mut [*mut c_void],
        arg_sizes: &[u32],
    ) -> Result<()> {
        let limit = self.max_dynamic_shared.lock().unwrap().get(k.name).copied();
        validate_launch(k, &cfg, limit, arg_sizes)?;
        let launcher = k.emu.ok_or_else(|| {
            Error::Device(format!("kernel `{}` is not built for the emulator", k.name))
        })?;
        let o = self.options();
        let n = self.launches.fetch_add(1, Ordering::Relaxed);
        let (schedule, seed) = match o.schedule {
            Schedule::Forward => (0, 0),
            Schedule::Reverse => (1, 0),
            Schedule::Random(s) => (2, s ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        };
        let params = EmuLaunchParams {
            grid: [cfg.grid.x, cfg.grid.y, cfg.grid.z],
            block: [cfg.block.x, cfg.block.y, cfg.block.z],
            dynamic_shared_bytes: cfg.shared_mem_bytes,
            schedule,
            seed,
            threads: o.threads.max(1),
            stack_bytes: o.stack_bytes,
        };
        let mut err = [0 as c_char; 2048];
        // SAFETY: the launcher reads `params` and `arg_sizes`, and `args` as the caller
        // promised; it writes at most `err.len()` bytes including the NUL.
        let rc = unsafe {
            launcher(
                &params,
                args.as_mut_ptr(),
                arg_sizes.as_ptr(),
                arg_sizes.len() as u32,
                err.as_mut_ptr(),
                err.len(),
            )
        };
        if rc != 0 {
            // SAFETY: the launcher NUL-terminates the message within the buffer.
            let msg = unsafe { CStr::from_ptr(err.as_ptr()) }
                .to_string_lossy()
                .into_owned();
            return Err(Error::Device(msg));
        }
        Ok(())
    }
}

/// Host memory standing in for device memory: 256-byte aligned like `cudaMalloc`.
pub(super) struct HostBuffer<T> {
    ptr: NonNull<u8>,
    len: usize,
    _t: PhantomData<T>,
}

// SAFETY: owns its memory like a Vec<T>.
unsafe impl<T: Send> Send for HostBuffer<T> {}
// SAFETY: as above.
unsafe impl<T: Sync> Sync for HostBuffer<T> {}

const HOST_ALIGN: usize = 256;

impl<T: DeviceElem> HostBuffer<T> {
    /// `len` elements, every byte set to `fill`.
    pub(super) fn new(len: usize, fill: u8) -> Result<Self> {
        let layout = Self::layout(len)?;
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { std::alloc::alloc(layout) };
        let ptr = NonNull::new(p).ok_or_else(|| {
            Error::Device(format!(
                "cannot allocate {} bytes of emulated device memory",
                layout.size()
            ))
        })?;
        // SAFETY: freshly allocated, `layout.size()` bytes.
        unsafe { std::ptr::write_bytes(ptr.as_ptr(), fill, layout.size()) };
        Ok(HostBuffer {
            ptr,
            len,
            _t: PhantomData,
        })
    }
    fn layout(len: usize) -> Result<std::alloc::Layout> {
        let bytes = len
            .checked_mul(size_of::<T>())
            .ok_or_else(|| Error::Device(format!("buffer of {len} elements is too large")))?;
        std::alloc::Layout::from_size_align(bytes.max(1), HOST_ALIGN)
            .map_err(|_| Error::Device(format!("buffer of {len} elements is too large")))
    }
    pub(super) fn len(&self) -> usize {
        self.len
    }
    pub(super) fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }
    pub(super) fn as_slice(&self) -> &[T] {
        // SAFETY: `len` initialised elements of a Pod type, aligned.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr() as *const T, self.len) }
    }
    pub(super) fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: as above, and uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr() as *mut T, self.len) }
    }
}

impl<T> Drop for HostBuffer<T> {
    fn drop(&mut self) {
        let bytes = (self.len * size_of::<T>()).max(1);
        // SAFETY: allocated in `new` with this layout.
        unsafe {
            std::alloc::dealloc(
                self.ptr.as_ptr(),
                std::alloc::Layout::from_size_align_unchecked(bytes, HOST_ALIGN),
            )
        };
    }
}
