//! The GPU executor: cudarc with the driver loaded at run time (`dynamic-loading`), so the
//! binary runs on machines without CUDA. Every failure becomes a one-line
//! [`Error::Device`]; nothing here panics on a machine without a driver or a GPU.

use std::collections::HashMap;
use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::{self, CUdevice_attribute, CUfunction_attribute};
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaModule, CudaSlice, CudaStream, DriverError, result,
};
use cudarc::nvrtc::Ptx;

use super::kernels::{BUILD, KERNELS, KernelInfo, PTX_MODULES};
use super::{DeviceElem, LaunchConfig, validate_launch};
use crate::{Error, Result};

const NO_DRIVER: &str = "no CUDA driver found (libcuda.so): --device cuda needs an NVIDIA GPU and driver; \
                         use --device cpu or cuda-emu";

/// A GPU as the driver reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuInfo {
    pub ordinal: usize,
    pub name: String,
    pub total_memory: usize,
    pub compute_capability: (i32, i32),
    pub multiprocessors: i32,
}

/// Maps a driver error to a one-line [`Error::Device`] naming what failed.
pub(super) fn driver_error(what: &'static str) -> impl Fn(DriverError) -> Error {
    move |e| Error::Device(format!("CUDA {what} failed: {}", describe_driver_error(&e)))
}

fn describe_driver_error(e: &DriverError) -> String {
    let name = e
        .error_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|_| format!("{:?}", e.0));
    match e.error_string() {
        Ok(s) => format!("{name} ({})", s.to_string_lossy()),
        Err(_) => name,
    }
}

/// Runs a driver call that may panic inside cudarc (e.g. a symbol missing from an old
/// driver) and turns the panic into an error.
fn guarded<T>(what: &'static str, f: impl FnOnce() -> Result<T, DriverError>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(driver_error(what)),
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            Err(Error::Device(format!(
                "CUDA {what} failed: {msg} (is the NVIDIA driver too old for CUDA 13.0?)"
            )))
        }
    }
}

/// Loads libcuda and initialises the driver; the error says why `--device cuda` cannot work.
fn init_driver() -> Result<()> {
    // SAFETY: only probes whether the library can be loaded.
    if !unsafe { sys::is_culib_present() } {
        return Err(Error::Device(NO_DRIVER.into()));
    }
    guarded("initialisation (cuInit)", result::init)
}

/// The GPUs the driver sees (empty with an error message when there is no driver).
pub fn probe_gpus() -> Result<Vec<GpuInfo>> {
    init_driver()?;
    let count = guarded("device count", result::device::get_count)?;
    let mut gpus = Vec::new();
    for ordinal in 0..count.max(0) {
        let info = guarded("device query", || {
            let dev = result::device::get(ordinal)?;
            // SAFETY: `dev` comes from cuDeviceGet.
            unsafe {
                let attr = |a| result::device::get_attribute(dev, a);
                Ok(GpuInfo {
                    ordinal: ordinal as usize,
                    name: result::device::get_name(dev)?,
                    total_memory: result::device::total_mem(dev)?,
                    compute_capability: (
                        attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
                        attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
                    ),
                    multiprocessors: attr(
                        CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
                    )?,
                })
            }
        })?;
        gpus.push(info);
    }
    Ok(gpus)
}

/// The driver's CUDA version, e.g. (13, 0).
pub fn driver_version() -> Result<(i32, i32)> {
    init_driver()?;
    let mut v = 0;
    // SAFETY: writes one int.
    guarded("driver version", || unsafe {
        sys::cuDriverGetVersion(&mut v).result()
    })?;
    Ok((v / 1000, (v % 1000) / 10))
}

/// Why `--device cuda` cannot be used here, or `None` when it can (a driver, a GPU and
/// kernels in this build). Creates no context.
pub fn cuda_unavailable_reason() -> Option<String> {
    if PTX_MODULES.is_empty() {
        return Some(no_kernels_message());
    }
    match probe_gpus() {
        Ok(g) if g.is_empty() => Some("the CUDA driver reports no GPU".into()),
        Ok(_) => None,
        Err(e) => Some(e.to_string()),
    }
}

fn no_kernels_message() -> String {
    format!(
        "this build has no CUDA kernels ({}): run scripts/install-cuda-toolchain.sh and rebuild with the \
         NVCC=... line it prints, or use --device cpu or cuda-emu",
        BUILD
            .no_nvcc_reason
            .unwrap_or("nvcc was not found at build time")
    )
}

/// The first `len` elements of a pinned buffer, as a host source of a copy (cudarc copies
/// whole slices; a batch fills only part of its staging buffer).
struct PinnedPrefix<'a> {
    slice: &'a cudarc::driver::PinnedHostSlice<u8>,
    len: usize,
}

impl cudarc::driver::HostSlice<u8> for PinnedPrefix<'_> {
    fn len(&self) -> usize {
        self.len
    }
    unsafe fn stream_synced_slice<'b>(
        &'b self,
        stream: &'b CudaStream,
    ) -> (&'b [u8], cudarc::driver::SyncOnDrop<'b>) {
        // SAFETY: forwarded; the prefix lies within the slice.
        let (all, sync) = unsafe { self.slice.stream_synced_slice(stream) };
        (&all[..self.len], sync)
    }
    unsafe fn stream_synced_mut_slice<'b>(
        &'b mut self,
        _stream: &'b CudaStream,
    ) -> (&'b mut [u8], cudarc::driver::SyncOnDrop<'b>) {
        unreachable!("a staging buffer is only copied from")
    }
}

/// A GPU with every embedded PTX module loaded, and one stream.
pub struct CudaExecutor {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    functions: HashMap<&'static str, CudaFunction>,
    _modules: Vec<Arc<CudaModule>>,
    max_dynamic_shared: Mutex<HashMap<&'static str, u32>>,
    info: GpuInfo,
    /// Device-to-host copies, see `Executor::blocking_reads`.
    pub(super) blocking_reads: AtomicU64,
    load: ModuleLoad,
}

/// How the embedded modules were loaded for a GPU.
#[derive(Clone, Debug, PartialEq)]
pub struct ModuleLoad {
    /// The machine code the driver took (`sm_90`), or `None`: it compiled the PTX (JIT).
    pub machine_code: Option<&'static str>,
    /// `CUDA_FORCE_PTX_JIT=1` made the driver compile the PTX despite the machine code.
    pub forced_jit: bool,
    /// Seconds to load every module (including a JIT compilation, unless the driver's
    /// cache had it).
    pub seconds: f64,
}

impl ModuleLoad {
    /// The embedded machine code a GPU of compute capability `cc` runs: the same major
    /// version and the highest minor not above its own (what the driver picks).
    pub fn expected((major, minor): (i32, i32)) -> Option<&'static str> {
        BUILD
            .sass_archs
            .iter()
            .filter_map(|a| {
                let n: i32 = a.trim_start_matches("sm_").parse().ok()?;
                (n / 10 == major && n % 10 <= minor).then_some((n, *a))
            })
            .max()
            .map(|(_, a)| a)
    }

    /// One line for `focalflow info`.
    pub fn describe(&self) -> String {
        match self.machine_code {
            Some(arch) => format!(
                "machine code {arch} (no JIT), loaded in {:.2} s",
                self.seconds
            ),
            None => format!(
                "JIT-compiled from PTX {} in {:.2} s ({})",
                BUILD.newest_ptx_arch.or(BUILD.ptx_arch).unwrap_or("?"),
                self.seconds,
                if self.forced_jit {
                    "CUDA_FORCE_PTX_JIT=1"
                } else {
                    "no machine code for this GPU in the build"
                }
            ),
        }
    }
}

/// The error of a module the driver cannot load: names the driver's CUDA version, the
/// toolkit's, and what to do.
fn load_error(e: &Error, file: &str, gpu: &GpuInfo) -> Error {
    let driver = driver_version()
        .map(|(a, b)| format!("{a}.{b}"))
        .unwrap_or_else(|_| "?".into());
    Error::Device(format!(
        "{e} for {file}: the driver supports CUDA {driver}, the kernels were built by nvcc {} (machine code for {}, PTX {}), none of which it can load for {} (compute capability {}.{}); update the NVIDIA driver to one for CUDA {} or newer, or build with an older toolkit such as the one scripts/install-cuda-toolchain.sh pins (CUDA 13.0)",
        BUILD.nvcc_version.unwrap_or("?"),
        if BUILD.sass_archs.is_empty() {
            "no architecture".to_string()
        } else {
            BUILD.sass_archs.join(" ")
        },
        BUILD.ptx_arch.unwrap_or("?"),
        gpu.name,
        gpu.compute_capability.0,
        gpu.compute_capability.1,
        BUILD
            .nvcc_version
            .and_then(|v| v.rsplit_once('.').map(|(mm, _)| mm.to_string()))
            .unwrap_or_else(|| "?".into()),
    ))
}

impl CudaExecutor {
    pub fn new(ordinal: usize) -> Result<Self> {
        init_driver()?;
        if PTX_MODULES.is_empty() {
            return Err(Error::Device(no_kernels_message()));
        }
        let gpus = probe_gpus()?;
        let info = gpus.get(ordinal).cloned().ok_or_else(|| {
            Error::Device(if gpus.is_empty() {
                "the CUDA driver reports no GPU: use --device cpu or cuda-emu".to_string()
            } else {
                format!("no GPU {ordinal}: the driver reports {} GPU(s)", gpus.len())
            })
        })?;
        let ctx = guarded("context creation", || CudaContext::new(ordinal))?;
        // One stream, used for everything: cudarc's per-buffer events are not needed.
        // SAFETY: all work goes to `stream`, so allocation, use and free are stream-ordered.
        unsafe { ctx.disable_event_tracking() };
        let stream = guarded("stream creation", || ctx.new_stream())?;

        // The driver takes the embedded machine code unless told to compile the PTX.
        let forced_jit = std::env::var("CUDA_FORCE_PTX_JIT").is_ok_and(|v| v.trim() == "1");
        let machine_code = if forced_jit {
            None
        } else {
            ModuleLoad::expected(info.compute_capability)
        };
        let started = std::time::Instant::now();
        let mut modules = Vec::with_capacity(PTX_MODULES.len());
        for m in PTX_MODULES {
            let image = Ptx::from_binary(m.fatbin.to_vec());
            let module = guarded("module loading", || ctx.load_module(image))
                .map_err(|e| load_error(&e, m.file, &info))?;
            modules.push(module);
        }
        let load = ModuleLoad {
            machine_code,
            forced_jit,
            seconds: started.elapsed().as_secs_f64(),
        };
        let mut functions = HashMap::new();
        for k in KERNELS {
            if let Some(p) = &k.ptx {
                let f = guarded("kernel lookup", || {
                    modules[p.module].load_function(p.symbol)
                })
                .map_err(|e| Error::Device(format!("{e}: kernel `{}` ({})", k.name, p.symbol)))?;
                functions.insert(k.name, f);
            }
        }
        Ok(CudaExecutor {
            ctx,
            stream,
            functions,
            _modules: modules,
            max_dynamic_shared: Mutex::new(HashMap::new()),
            info,
            blocking_reads: AtomicU64::new(0),
            load,
        })
    }

    pub fn info(&self) -> &GpuInfo {
        &self.info
    }

    /// How the kernels were loaded for this GPU, and how long it took.
    pub fn module_load(&self) -> &ModuleLoad {
        &self.load
    }

    /// The underlying cudarc stream, for work beyond this interface.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub fn describe(&self) -> String {
        let g = &self.info;
        format!(
            "cuda: GPU {} {} ({:.1} GiB, compute capability {}.{}, {} SMs)",
            g.ordinal,
            g.name,
            g.total_memory as f64 / (1u64 << 30) as f64,
            g.compute_capability.0,
            g.compute_capability.1,
            g.multiprocessors
        )
    }

    pub(super) fn alloc<T: DeviceElem>(&self, len: usize) -> Result<CudaSlice<T>> {
        // SAFETY: the contents are unspecified, as documented by Executor::alloc.
        unsafe { self.stream.alloc::<T>(len) }.map_err(driver_error("allocation"))
    }
    pub(super) fn alloc_zeros<T: DeviceElem>(&self, len: usize) -> Result<CudaSlice<T>> {
        let mut s = self.alloc(len)?;
        self.memset_zeros(&mut s)?;
        Ok(s)
    }
    pub(super) fn copy_htod<T: DeviceElem>(&self, src: &[T], dst: &mut CudaSlice<T>) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        let mut view = dst.slice_mut(0..src.len());
        self.stream
            .memcpy_htod(src, &mut view)
            .map_err(driver_error("copy to device"))
    }
    pub(super) fn copy_dtoh<T: DeviceElem>(&self, src: &CudaSlice<T>, dst: &mut [T]) -> Result<()> {
        if dst.is_empty() {
            return Ok(());
        }
        let view = src.slice(0..dst.len());
        self.stream
            .memcpy_dtoh(&view, dst)
            .map_err(driver_error("copy to host"))?;
        self.synchronize()
    }
    pub(super) fn copy_dtod<T: DeviceElem>(
        &self,
        src: &CudaSlice<T>,
        len: usize,
        dst: &mut CudaSlice<T>,
        offset: usize,
    ) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let from = src.slice(0..len);
        let mut to = dst.slice_mut(offset..offset + len);
        self.stream
            .memcpy_dtod(&from, &mut to)
            .map_err(driver_error("device copy"))
    }
    pub(super) fn memset_zeros<T: DeviceElem>(&self, dst: &mut CudaSlice<T>) -> Result<()> {
        if dst.is_empty() {
            return Ok(());
        }
        self.stream
            .memset_zeros(dst)
            .map_err(driver_error("memset"))
    }

    pub(super) fn set_max_dynamic_shared(&self, k: &'static KernelInfo, bytes: u32) -> Result<()> {
        let f = self.function(k)?;
        guarded("cuFuncSetAttribute", || {
            f.set_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                bytes as i32,
            )
        })?;
        self.max_dynamic_shared
            .lock()
            .unwrap()
            .insert(k.name, bytes);
        Ok(())
    }

    fn function(&self, k: &KernelInfo) -> Result<&CudaFunction> {
        self.functions
            .get(k.name)
            .ok_or_else(|| Error::Device(format!("kernel `{}` has no PTX in this build", k.name)))
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
        let f = self.function(k)?;
        self.ctx
            .bind_to_thread()
            .map_err(driver_error("context binding"))?;
        // SAFETY: the caller guarantees the arguments; the shape was validated.
        unsafe {
            result::launch_kernel(
                f.cu_function(),
                (cfg.grid.x, cfg.grid.y, cfg.grid.z),
                (cfg.block.x, cfg.block.y, cfg.block.z),
                cfg.shared_mem_bytes,
                self.stream.cu_stream(),
                args,
            )
        }
        .map_err(|e| {
            Error::Device(format!(
                "launch of kernel `{}` failed: {}",
                k.name,
                describe_driver_error(&e)
            ))
        })
    }

    /// Free and total device memory in bytes.
    pub(super) fn memory_info(&self) -> Result<(usize, usize)> {
        self.ctx
            .mem_get_info()
            .map_err(driver_error("memory query (cuMemGetInfo)"))
    }

    /// Page-locked host memory of `len` bytes, for copies that overlap with kernels.
    pub(super) fn alloc_pinned(&self, len: usize) -> Result<cudarc::driver::PinnedHostSlice<u8>> {
        // SAFETY: the contents are unspecified until the caller writes them (as a Vec's
        // spare capacity); the staging code writes before it copies.
        unsafe { self.ctx.alloc_pinned_with_flags::<u8>(len.max(1), 0) }
            .map_err(driver_error("pinned host allocation"))
    }

    /// Copies the first `len` bytes of pinned `src` to `dst[offset..]` without waiting: the
    /// copy is ordered in the stream, and `src`'s own event (waited on when the host next
    /// touches it) records its end.
    pub(super) fn copy_pinned_htod(
        &self,
        src: &cudarc::driver::PinnedHostSlice<u8>,
        dst: &mut CudaSlice<u8>,
        offset: usize,
        len: usize,
    ) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let mut view = dst.slice_mut(offset..offset + len);
        let src_view = PinnedPrefix { slice: src, len };
        self.stream
            .memcpy_htod(&src_view, &mut view)
            .map_err(driver_error("copy to device"))
    }

    pub(super) fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(driver_error("synchronize (a kernel may have failed)"))
    }

    pub(super) fn record_event(&self) -> Result<CudaEvent> {
        self.stream
            .record_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(driver_error("event record"))
    }
}
