//! The CPU emulator executor ("cuda-emu"): runs the same kernel sources, compiled as C++ by
//! build.rs with src/executor/emulator/cuda_emu.h, on the CPU, with CUDA's semantics where a
//! GPU would catch a bug: device memory whose exact bounds and alignment every kernel access
//! is checked against (memory.rs, src/executor/emulator/memcheck.cpp), and a stream whose
//! work runs on a device thread after the host call returns (stream.rs).

mod memory;
mod stream;

use std::collections::HashMap;
use std::ffi::{CStr, c_char, c_void};
use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

pub(crate) use memory::{DeviceMemory, EmuStaging};
pub use stream::DeviceMode;
pub(crate) use stream::EmuEvent;

use super::ffi::EmuLaunchParams;
use super::kernels::{BUILD, KernelInfo};
use super::{DeviceElem, LaunchConfig, validate_launch};
use crate::{Error, Result};
use memory::copy_bytes;
use stream::Stream;

/// What the emulator checks on every launch (`focalflow info`, README "How the emulator works").
pub const EMULATOR_CHECKS: &str = "every kernel access to device memory inside a live allocation's exact bytes and \
    aligned to its size, dynamic shared memory overruns, divergent barriers, deadlocks and traps; races by the thread \
    order (FOCALFLOW_EMU_SCHEDULE) and missing host waits by a lazy device (FOCALFLOW_EMU_STRICT=1); tensor \
    cores through wmma (TF32 m16n16k8, BF16 m16n16k16)";

/// What only a GPU can tell.
pub const GPU_ONLY: &str = "timing; the memory model under real concurrency (warps in lockstep, caches, ordering \
    between blocks without fences); the tensor cores' fragment layouts and the order their sums round in; \
    out-of-bounds accesses to static __shared__ arrays and local memory";

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
    /// When queued work runs (`FOCALFLOW_EMU_DEVICE`).
    pub device: DeviceMode,
    /// Check every kernel access to device memory and dynamic shared memory: its exact
    /// bounds and its alignment (on unless `FOCALFLOW_EMU_MEMCHECK=0`, which is there to show
    /// what the checks catch and to time them).
    pub memcheck: bool,
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
            device: DeviceMode::Async,
            memcheck: true,
        }
    }
}

impl EmuOptions {
    /// The strict mode (`FOCALFLOW_EMU_STRICT=1`, what CI runs): threads in a random order
    /// and a lazy device, on top of the memory checks that are always on.
    pub fn strict() -> Self {
        EmuOptions {
            schedule: Schedule::Random(DEFAULT_RANDOM_SEED),
            device: DeviceMode::Lazy,
            ..EmuOptions::default()
        }
    }

    /// Defaults (or [`EmuOptions::strict`] under `FOCALFLOW_EMU_STRICT=1`), overridden by
    /// `FOCALFLOW_EMU_SCHEDULE` (forward | reverse | random[:seed]), `FOCALFLOW_EMU_DEVICE`
    /// (sync | async | lazy), `FOCALFLOW_EMU_MEMCHECK` (1 | 0), `FOCALFLOW_EMU_THREADS`,
    /// `FOCALFLOW_EMU_STACK_KB` and `FOCALFLOW_EMU_FREE_MIB`.
    pub fn from_env() -> Result<Self> {
        let mut o = match env_var("FOCALFLOW_EMU_STRICT").as_deref() {
            None | Some("0") => EmuOptions::default(),
            Some("1") => EmuOptions::strict(),
            Some(s) => {
                return Err(Error::invalid(format!(
                    "FOCALFLOW_EMU_STRICT={s}: expected 1 (strict checks) or 0"
                )));
            }
        };
        if let Some(s) = env_var("FOCALFLOW_EMU_MEMCHECK") {
            o.memcheck = match s.trim() {
                "1" => true,
                "0" => false,
                _ => {
                    return Err(Error::invalid(format!(
                        "FOCALFLOW_EMU_MEMCHECK={s}: expected 1 (check every access, the default) or 0"
                    )));
                }
            };
        }
        if let Some(s) = env_var("FOCALFLOW_EMU_DEVICE") {
            o.device = DeviceMode::parse(&s).ok_or_else(|| {
                Error::invalid(format!(
                    "FOCALFLOW_EMU_DEVICE={s}: expected sync, async or lazy"
                ))
            })?;
        }
        if let Some(s) = env_var("FOCALFLOW_EMU_SCHEDULE") {
            o.schedule = s.parse().map_err(|_| {
                Error::invalid(format!(
                    "FOCALFLOW_EMU_SCHEDULE={s}: expected forward, reverse, random or random:<seed>"
                ))
            })?;
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
    stream: Stream,
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
            stream: Stream::new(options.device)?,
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
            "cuda-emu: CPU emulator, {} OS thread(s), schedule {}, {} device, memory checks {}, {} KiB per \
             CUDA thread, {}",
            o.threads,
            o.schedule,
            self.stream.mode().name(),
            if o.memcheck { "on" } else { "off" },
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
            memcheck: u32::from(o.memcheck),
        };
        // The launch returns before the kernel runs: its arguments' bytes go with it.
        let args: Vec<Vec<u8>> = args
            .iter()
            .zip(arg_sizes)
            .map(|(&p, &size)| {
                // SAFETY: the caller promised `size` readable bytes at each argument pointer.
                unsafe { std::slice::from_raw_parts(p as *const u8, size as usize) }.to_vec()
            })
            .collect();
        let sizes = arg_sizes.to_vec();
        self.stream.queue().submit(move || {
            let mut args = args;
            let mut pointers: Vec<*mut c_void> = args
                .iter_mut()
                .map(|a| a.as_mut_ptr() as *mut c_void)
                .collect();
            let mut err = [0 as c_char; 2048];
            // SAFETY: the launcher reads `params`, `sizes` and the argument bytes, whose device
            // pointers stay valid (device memory is freed in stream order, after this launch);
            // it writes at most `err.len()` bytes including the NUL.
            let rc = unsafe {
                launcher(
                    &params,
                    pointers.as_mut_ptr(),
                    sizes.as_ptr(),
                    sizes.len() as u32,
                    err.as_mut_ptr(),
                    err.len(),
                )
            };
            if rc == 0 {
                return Ok(());
            }
            // SAFETY: the launcher NUL-terminates the message within the buffer.
            Err(unsafe { CStr::from_ptr(err.as_ptr()) }
                .to_string_lossy()
                .into_owned())
        })?;
        Ok(())
    }
}

impl EmuExecutor {
    /// Refuses memory of another emulator executor: it is freed on that one's stream, which
    /// does not wait for this one's work.
    fn own<T: DeviceElem>(&self, m: &DeviceMemory<T>) -> Result<()> {
        if self.stream.owns(m.queue()) {
            Ok(())
        } else {
            Err(Error::Device(
                "a buffer of another cuda-emu executor was given to this one".into(),
            ))
        }
    }
    /// `len` elements of device memory, every byte set to `fill`.
    pub(crate) fn alloc<T: DeviceElem>(&self, len: usize, fill: u8) -> Result<DeviceMemory<T>> {
        DeviceMemory::new(len, fill, self.stream.queue())
    }
    /// Queues the copy of `src` (taken now, as `cuMemcpyHtoDAsync` stages pageable memory)
    /// to the start of `dst`.
    pub(crate) fn copy_htod<T: DeviceElem>(&self, src: &[T], dst: &DeviceMemory<T>) -> Result<()> {
        self.own(dst)?;
        let bytes: Vec<u8> = bytemuck::cast_slice(src).to_vec();
        let to = dst.addr();
        self.stream.queue().submit(move || {
            // SAFETY: `dst` holds at least `src.len()` elements (checked by the caller) and is
            // freed in stream order.
            unsafe { copy_bytes(bytes.as_ptr() as usize, to, bytes.len()) };
            Ok(())
        })?;
        Ok(())
    }
    /// Copies the start of `src` into `dst` once the work before it has run.
    pub(crate) fn copy_dtoh<T: DeviceElem>(
        &self,
        src: &DeviceMemory<T>,
        dst: &mut [T],
    ) -> Result<()> {
        self.own(src)?;
        self.blocking_reads
            .fetch_add(u64::from(!dst.is_empty()), Ordering::Relaxed);
        let (from, to, bytes) = (src.addr(), dst.as_mut_ptr() as usize, size_of_val(dst));
        let queue = self.stream.queue();
        let seq = queue.submit(move || {
            // SAFETY: `dst` stays borrowed until the wait below has seen this copy done.
            unsafe { copy_bytes(from, to, bytes) };
            Ok(())
        })?;
        queue.wait(seq)
    }
    /// Queues the copy of `src`'s first `len` elements to `dst[offset..]`.
    pub(crate) fn copy_dtod<T: DeviceElem>(
        &self,
        src: &DeviceMemory<T>,
        len: usize,
        dst: &DeviceMemory<T>,
        offset: usize,
    ) -> Result<()> {
        self.own(src)?;
        self.own(dst)?;
        let elem = size_of::<T>();
        let (from, to) = (src.addr(), dst.addr() + offset * elem);
        self.stream.queue().submit(move || {
            // SAFETY: in bounds (checked by the caller); distinct allocations.
            unsafe { copy_bytes(from, to, len * elem) };
            Ok(())
        })?;
        Ok(())
    }
    /// Queues setting every byte of `dst` to zero.
    pub(crate) fn memset_zeros<T: DeviceElem>(&self, dst: &DeviceMemory<T>) -> Result<()> {
        self.own(dst)?;
        let (to, bytes) = (dst.addr(), dst.len() * size_of::<T>());
        self.stream.queue().submit(move || {
            // SAFETY: the whole allocation.
            unsafe { std::ptr::write_bytes(to as *mut u8, 0, bytes) };
            Ok(())
        })?;
        Ok(())
    }
    /// Queues an upload from a staging buffer.
    pub(crate) fn upload_staged(
        &self,
        staging: &EmuStaging,
        len: usize,
        dst: &DeviceMemory<u8>,
        offset: usize,
    ) -> Result<()> {
        self.own(dst)?;
        staging.upload(self.stream.queue(), len, dst, offset)
    }
    /// Waits for all queued work; the first failure of any of it.
    pub(crate) fn synchronize(&self) -> Result<()> {
        self.stream.queue().synchronize()
    }
    pub(crate) fn record_event(&self) -> Result<EmuEvent> {
        self.stream.record_event()
    }
}
