//! Kernel executors: the project's CUDA kernels (`kernels/*.cu`) run either on a GPU
//! ([`CudaExecutor`], cudarc) or on the CPU emulator ([`EmuExecutor`], the same sources
//! compiled as C++ by build.rs), behind one interface, [`Executor`], so host code is
//! written once:
//!
//! ```no_run
//! use focalflow::executor::{Executor, LaunchConfig};
//! # fn main() -> focalflow::Result<()> {
//! let exec = Executor::emu()?; // or Executor::cuda(0)?
//! let x = exec.upload(&[1.0f32, 2.0, 3.0])?;
//! let mut sums = exec.alloc::<f32>(1)?;
//! let cfg = LaunchConfig::new(1u32, 128u32);
//! // SAFETY: the arguments match fx_block_sum(const float*, float*, int).
//! unsafe { exec.launch_builder("fx_block_sum", cfg).arg(&x).arg(&mut sums).arg(3i32).launch()? };
//! let host: Vec<f32> = exec.download(&sums)?;
//! # Ok(()) }
//! ```
//!
//! Kernels are launched by name with `cuLaunchKernel`-style arguments (each argument's
//! bytes, buffers as device pointers); both executors check the count and the size of each
//! argument against the kernel's signature and check the launch shape as the GPU does.

mod cuda;
mod emu;
pub mod ffi;
pub mod kernels;

use std::ffi::c_void;
use std::fmt;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::Ordering;

pub use cuda::{
    CudaExecutor, GpuInfo, ModuleLoad, cuda_unavailable_reason, driver_version, probe_gpus,
};
pub use emu::{DeviceMode, EMULATOR_CHECKS, EmuExecutor, EmuOptions, GPU_ONLY, Schedule};
pub use kernels::{BUILD, KERNELS, KernelInfo, PTX_MODULES};

use crate::{Error, Result};

/// Grid or block dimensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dim3 {
    pub x: u32,
    pub y: u32,
    pub z: u32,
}

impl Dim3 {
    pub const fn new(x: u32, y: u32, z: u32) -> Self {
        Dim3 { x, y, z }
    }
    /// x * y * z.
    pub fn volume(&self) -> u64 {
        self.x as u64 * self.y as u64 * self.z as u64
    }
}
impl From<u32> for Dim3 {
    fn from(x: u32) -> Self {
        Dim3::new(x, 1, 1)
    }
}
impl From<(u32, u32)> for Dim3 {
    fn from((x, y): (u32, u32)) -> Self {
        Dim3::new(x, y, 1)
    }
}
impl From<(u32, u32, u32)> for Dim3 {
    fn from((x, y, z): (u32, u32, u32)) -> Self {
        Dim3::new(x, y, z)
    }
}
impl fmt::Display for Dim3 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({},{},{})", self.x, self.y, self.z)
    }
}

/// Launch shape: grid and block dimensions and dynamic shared memory bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchConfig {
    pub grid: Dim3,
    pub block: Dim3,
    pub shared_mem_bytes: u32,
}

impl LaunchConfig {
    pub fn new(grid: impl Into<Dim3>, block: impl Into<Dim3>) -> Self {
        LaunchConfig {
            grid: grid.into(),
            block: block.into(),
            shared_mem_bytes: 0,
        }
    }
    /// One thread per element in blocks of `block` threads (1-D).
    pub fn for_elements(n: usize, block: u32) -> Self {
        let blocks = n.div_ceil(block as usize).max(1);
        LaunchConfig::new(u32::try_from(blocks).unwrap_or(u32::MAX), block)
    }
    /// With `bytes` of dynamic shared memory (`extern __shared__`).
    pub fn with_shared(mut self, bytes: u32) -> Self {
        self.shared_mem_bytes = bytes;
        self
    }
}

/// Element types that device buffers hold.
pub trait DeviceElem:
    bytemuck::Pod + cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits + Send + Sync + 'static
{
}
impl DeviceElem for f32 {}
impl DeviceElem for f64 {}
impl DeviceElem for i32 {}
impl DeviceElem for u32 {}
impl DeviceElem for i64 {}
impl DeviceElem for u64 {}
impl DeviceElem for u8 {}
impl DeviceElem for i8 {}
impl DeviceElem for u16 {}
impl DeviceElem for i16 {}

/// Which implementation runs the kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExecutorKind {
    /// A GPU through the CUDA driver.
    Cuda,
    /// The CPU emulator.
    Emu,
}

impl ExecutorKind {
    /// The name used by `--device`: "cuda" or "cuda-emu".
    pub fn name(self) -> &'static str {
        match self {
            ExecutorKind::Cuda => "cuda",
            ExecutorKind::Emu => "cuda-emu",
        }
    }
}
impl fmt::Display for ExecutorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A typed buffer in device memory (GPU memory, or host memory standing in for it on the
/// emulator). Freed on drop (stream-ordered on the GPU).
pub struct DeviceBuffer<T: DeviceElem> {
    inner: BufferInner<T>,
}

enum BufferInner<T: DeviceElem> {
    Cuda(cudarc::driver::CudaSlice<T>),
    Emu(emu::DeviceMemory<T>),
}

impl<T: DeviceElem> DeviceBuffer<T> {
    pub fn len(&self) -> usize {
        match &self.inner {
            BufferInner::Cuda(s) => s.len(),
            BufferInner::Emu(h) => h.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The executor this buffer belongs to.
    pub fn kind(&self) -> ExecutorKind {
        match &self.inner {
            BufferInner::Cuda(_) => ExecutorKind::Cuda,
            BufferInner::Emu(_) => ExecutorKind::Emu,
        }
    }
    /// The raw device address (`CUdeviceptr`; a host address on the emulator).
    pub fn device_ptr(&self) -> u64 {
        match &self.inner {
            BufferInner::Cuda(s) => {
                use cudarc::driver::DevicePtr;
                s.device_ptr(s.stream()).0
            }
            BufferInner::Emu(h) => h.addr() as u64,
        }
    }
    /// A sub-range, to pass as a kernel argument (a pointer to its first element).
    pub fn slice(&self, range: impl RangeBounds<usize>) -> DeviceSlice<'_, T> {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => e + 1,
            Bound::Excluded(&e) => e,
            Bound::Unbounded => self.len(),
        };
        assert!(
            start <= end && end <= self.len(),
            "slice {start}..{end} out of bounds (len {})",
            self.len()
        );
        DeviceSlice {
            ptr: self.device_ptr() + (start * size_of::<T>()) as u64,
            len: end - start,
            kind: self.kind(),
            _buf: PhantomData,
        }
    }
}

impl<T: DeviceElem> fmt::Debug for DeviceBuffer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "DeviceBuffer<{}>[{}] on {}",
            std::any::type_name::<T>(),
            self.len(),
            self.kind()
        )
    }
}

/// A range of a [`DeviceBuffer`], passed to kernels as a pointer.
#[derive(Clone, Copy, Debug)]
pub struct DeviceSlice<'a, T: DeviceElem> {
    ptr: u64,
    len: usize,
    kind: ExecutorKind,
    _buf: PhantomData<&'a DeviceBuffer<T>>,
}

impl<T: DeviceElem> DeviceSlice<'_, T> {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn device_ptr(&self) -> u64 {
        self.ptr
    }
}

/// Kernel arguments, in `cuLaunchKernel` layout: each argument's bytes in its own slot.
#[derive(Default, Debug)]
pub struct ArgList {
    words: Vec<u64>,
    /// (offset in words, size in bytes) per argument.
    slots: Vec<(usize, u32)>,
    /// Executor of the buffers passed, to catch a buffer of the other executor.
    buffer_kind: Option<ExecutorKind>,
    mixed_kinds: bool,
}

impl ArgList {
    /// Appends one argument given by its bytes (a scalar, a `#[repr(C)]` struct by value).
    pub fn push_bytes(&mut self, bytes: &[u8]) {
        let offset = self.words.len();
        let nwords = bytes.len().div_ceil(8).max(1);
        self.words.resize(offset + nwords, 0);
        bytemuck::cast_slice_mut::<u64, u8>(&mut self.words[offset..])[..bytes.len()]
            .copy_from_slice(bytes);
        self.slots.push((offset, bytes.len() as u32));
    }
    /// Appends a device pointer.
    pub fn push_device_ptr(&mut self, ptr: u64, kind: ExecutorKind) {
        match self.buffer_kind {
            Some(k) if k != kind => self.mixed_kinds = true,
            _ => self.buffer_kind = Some(kind),
        }
        self.push_bytes(&ptr.to_ne_bytes());
    }
    pub fn len(&self) -> usize {
        self.slots.len()
    }
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
    /// Size in bytes of each argument.
    pub fn sizes(&self) -> Vec<u32> {
        self.slots.iter().map(|s| s.1).collect()
    }
    /// `void* args[]` for `cuLaunchKernel`: valid while `self` is neither moved nor changed.
    pub fn pointers(&mut self) -> Vec<*mut c_void> {
        let base = self.words.as_mut_ptr();
        // SAFETY: every offset lies within `words`.
        self.slots
            .iter()
            .map(|&(o, _)| unsafe { base.add(o) } as *mut c_void)
            .collect()
    }
}

/// Something that can be passed to a kernel.
pub trait KernelArg {
    fn push_to(&self, args: &mut ArgList);
}

macro_rules! scalar_arg {
    ($($t:ty),*) => {$(
        impl KernelArg for $t {
            fn push_to(&self, args: &mut ArgList) {
                args.push_bytes(&self.to_ne_bytes());
            }
        }
    )*};
}
// No usize/isize: C kernels take int/unsigned/long long; say which with a cast.
scalar_arg!(f32, f64, i32, u32, i64, u64, i16, u16, i8, u8);

impl<T: DeviceElem> KernelArg for DeviceBuffer<T> {
    fn push_to(&self, args: &mut ArgList) {
        args.push_device_ptr(self.device_ptr(), self.kind());
    }
}
/// An optional buffer: its address, or a null pointer (`T* = nullptr` in the kernel). The
/// launch checks the buffer's executor as for any buffer.
impl<T: DeviceElem> KernelArg for Option<&DeviceBuffer<T>> {
    fn push_to(&self, args: &mut ArgList) {
        match self {
            Some(b) => b.push_to(args),
            None => args.push_bytes(&0u64.to_ne_bytes()),
        }
    }
}
impl<T: DeviceElem> KernelArg for DeviceSlice<'_, T> {
    fn push_to(&self, args: &mut ArgList) {
        args.push_device_ptr(self.ptr, self.kind);
    }
}
impl<A: KernelArg + ?Sized> KernelArg for &A {
    fn push_to(&self, args: &mut ArgList) {
        (**self).push_to(args)
    }
}
impl<A: KernelArg + ?Sized> KernelArg for &mut A {
    fn push_to(&self, args: &mut ArgList) {
        (**self).push_to(args)
    }
}

/// A launch being prepared: `exec.launch_builder(name, cfg).arg(..).arg(..).launch()`.
pub struct Launch<'a> {
    exec: &'a Executor,
    kernel: &'a str,
    cfg: LaunchConfig,
    args: ArgList,
}

impl Launch<'_> {
    /// Appends an argument: `&buffer` / `&mut buffer` / `buffer.slice(..)` (a device pointer)
    /// or a scalar by value (`2.0f32`, `n as i32`).
    pub fn arg(&mut self, a: impl KernelArg) -> &mut Self {
        a.push_to(&mut self.args);
        self
    }
    /// Appends a plain-old-data value (e.g. a `#[repr(C)]` struct) by value.
    pub fn arg_pod<P: bytemuck::Pod>(&mut self, v: &P) -> &mut Self {
        self.args.push_bytes(bytemuck::bytes_of(v));
        self
    }
    /// Queues the kernel's launch; it runs after this returns (on the GPU, and on the
    /// emulator's device thread), and a failure while it runs is reported by a later call.
    ///
    /// # Safety
    /// The arguments must match the kernel's parameters in meaning (their count and sizes are
    /// checked) and the kernel must stay within the buffers it is given.
    pub unsafe fn launch(&mut self) -> Result<()> {
        if self.args.mixed_kinds || self.args.buffer_kind.is_some_and(|k| k != self.exec.kind()) {
            return Err(Error::Device(format!(
                "kernel `{}`: a buffer of another executor was passed to the {} executor",
                self.kernel,
                self.exec.kind()
            )));
        }
        let sizes = self.args.sizes();
        let mut ptrs = self.args.pointers();
        // SAFETY: forwarded to the caller.
        unsafe {
            self.exec
                .launch_raw(self.kernel, self.cfg, &mut ptrs, &sizes)
        }
    }
}

/// Host memory that uploads are staged from (see [`Executor::staging`]).
pub struct Staging(StagingInner);

enum StagingInner {
    /// Page-locked memory and its length (cudarc's slice has at least one byte).
    Pinned(cudarc::driver::PinnedHostSlice<u8>, usize),
    Emu(emu::EmuStaging),
}

impl Staging {
    /// The bytes, to fill; on a GPU this first waits until the last upload from them has
    /// been copied (not for the device's other work).
    pub fn bytes_mut(&mut self) -> Result<&mut [u8]> {
        match &mut self.0 {
            StagingInner::Pinned(p, len) => p
                .as_mut_slice()
                .map(|s| &mut s[..*len])
                .map_err(cuda::driver_error("waiting for a staging buffer")),
            StagingInner::Emu(e) => e.bytes_mut(),
        }
    }
    /// Copies the first `len` bytes to `dst[offset..offset + len]`, in the executor's stream
    /// order, without waiting for the copy on a GPU.
    pub fn upload(
        &self,
        exec: &Executor,
        len: usize,
        dst: &mut DeviceBuffer<u8>,
        offset: usize,
    ) -> Result<()> {
        check_len("staged upload", offset.saturating_add(len), dst.len())?;
        match (&self.0, exec, &mut dst.inner) {
            (StagingInner::Pinned(p, cap), Executor::Cuda(c), BufferInner::Cuda(d)) => {
                check_len("staged upload", len, *cap)?;
                c.copy_pinned_htod(p, d, offset, len)
            }
            (StagingInner::Emu(s), Executor::Emu(e), BufferInner::Emu(d)) => {
                e.upload_staged(s, len, d, offset)
            }
            _ => Err(foreign_buffer("staged upload")),
        }
    }
}

/// A point in a stream's work, for timing.
pub struct Event(EventInner);

enum EventInner {
    Cuda(cudarc::driver::CudaEvent),
    Emu(emu::EmuEvent),
}

impl Event {
    /// Milliseconds from `self` to `end` (waits for `end` on the GPU).
    pub fn elapsed_ms(&self, end: &Event) -> Result<f32> {
        match (&self.0, &end.0) {
            (EventInner::Cuda(a), EventInner::Cuda(b)) => {
                a.elapsed_ms(b).map_err(cuda::driver_error("event timing"))
            }
            (EventInner::Emu(a), EventInner::Emu(b)) => {
                let (a, b) = (a.synchronize()?, b.synchronize()?);
                Ok(b.saturating_duration_since(a).as_secs_f64() as f32 * 1e3)
            }
            _ => Err(Error::Device("events of different executors".into())),
        }
    }
}

/// The executor interface: a GPU or the emulator.
pub enum Executor {
    Cuda(CudaExecutor),
    Emu(EmuExecutor),
}

impl fmt::Debug for Executor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Executor({})", self.describe())
    }
}

impl Executor {
    /// The GPU with this ordinal; a clear [`Error::Device`] when there is no driver, no GPU
    /// or no kernels in this build (never a panic).
    pub fn cuda(ordinal: usize) -> Result<Self> {
        CudaExecutor::new(ordinal).map(Executor::Cuda)
    }
    /// The CPU emulator with options from the environment (`FOCALFLOW_EMU_SCHEDULE`,
    /// `FOCALFLOW_EMU_THREADS`, `FOCALFLOW_EMU_STACK_KB`).
    pub fn emu() -> Result<Self> {
        EmuExecutor::new(EmuOptions::from_env()?).map(Executor::Emu)
    }
    /// The CPU emulator with explicit options.
    pub fn emu_with(options: EmuOptions) -> Result<Self> {
        EmuExecutor::new(options).map(Executor::Emu)
    }

    pub fn kind(&self) -> ExecutorKind {
        match self {
            Executor::Cuda(_) => ExecutorKind::Cuda,
            Executor::Emu(_) => ExecutorKind::Emu,
        }
    }
    /// One line: the device and its settings.
    pub fn describe(&self) -> String {
        match self {
            Executor::Cuda(c) => c.describe(),
            Executor::Emu(e) => e.describe(),
        }
    }
    /// The kernel called `name`, if this executor can run it.
    pub fn kernel(&self, name: &str) -> Result<&'static KernelInfo> {
        let k = kernels::find(name).ok_or_else(|| {
            Error::Device(format!(
                "no kernel `{name}` in this build (kernels/*.cu define the kernels)"
            ))
        })?;
        match self {
            Executor::Cuda(_) if k.ptx.is_none() => Err(Error::Device(format!(
                "kernel `{name}` has no PTX in this build"
            ))),
            Executor::Emu(_) if k.emu.is_none() => Err(Error::Device(format!(
                "kernel `{name}` is not built for the emulator"
            ))),
            _ => Ok(k),
        }
    }

    /// A buffer of `len` elements with unspecified contents (on the emulator: all-ones
    /// bytes, i.e. NaN for floats, so reads of unwritten elements show).
    pub fn alloc<T: DeviceElem>(&self, len: usize) -> Result<DeviceBuffer<T>> {
        let inner = match self {
            Executor::Cuda(c) => BufferInner::Cuda(c.alloc(len)?),
            Executor::Emu(e) => BufferInner::Emu(e.alloc(len, 0xff)?),
        };
        Ok(DeviceBuffer { inner })
    }
    /// A buffer of `len` zeros.
    pub fn alloc_zeros<T: DeviceElem>(&self, len: usize) -> Result<DeviceBuffer<T>> {
        let inner = match self {
            Executor::Cuda(c) => BufferInner::Cuda(c.alloc_zeros(len)?),
            Executor::Emu(e) => BufferInner::Emu(e.alloc(len, 0)?),
        };
        Ok(DeviceBuffer { inner })
    }
    /// A new buffer holding a copy of `data`.
    pub fn upload<T: DeviceElem>(&self, data: &[T]) -> Result<DeviceBuffer<T>> {
        let mut b = self.alloc(data.len())?;
        self.copy_htod(data, &mut b)?;
        Ok(b)
    }
    /// Copies `src` into the start of `dst`.
    pub fn copy_htod<T: DeviceElem>(&self, src: &[T], dst: &mut DeviceBuffer<T>) -> Result<()> {
        check_len("copy_htod", src.len(), dst.len())?;
        match (self, &mut dst.inner) {
            (Executor::Cuda(c), BufferInner::Cuda(d)) => c.copy_htod(src, d),
            (Executor::Emu(e), BufferInner::Emu(d)) => e.copy_htod(src, d),
            _ => Err(foreign_buffer("copy_htod")),
        }
    }
    /// Copies the start of `src` into `dst` (waits for the copy).
    pub fn copy_dtoh<T: DeviceElem>(&self, src: &DeviceBuffer<T>, dst: &mut [T]) -> Result<()> {
        check_len("copy_dtoh", dst.len(), src.len())?;
        match (self, &src.inner) {
            (Executor::Cuda(c), BufferInner::Cuda(s)) => {
                if !dst.is_empty() {
                    c.blocking_reads.fetch_add(1, Ordering::Relaxed);
                }
                c.copy_dtoh(s, dst)
            }
            (Executor::Emu(e), BufferInner::Emu(s)) => e.copy_dtoh(s, dst),
            _ => Err(foreign_buffer("copy_dtoh")),
        }
    }
    /// Device-to-host copies so far: each one makes the host wait for the device (the
    /// emulator counts them too, so a test there can show a loop does not synchronise).
    pub fn blocking_reads(&self) -> u64 {
        match self {
            Executor::Cuda(c) => &c.blocking_reads,
            Executor::Emu(e) => &e.blocking_reads,
        }
        .load(Ordering::Relaxed)
    }
    /// Free device memory in bytes (on the emulator, whose device memory is the host's,
    /// `None` unless `FOCALFLOW_EMU_FREE_MIB` sets a figure).
    pub fn free_memory(&self) -> Result<Option<u64>> {
        match self {
            Executor::Cuda(c) => Ok(Some(c.memory_info()?.0 as u64)),
            Executor::Emu(e) => Ok(e.options().free_bytes),
        }
    }
    /// A host buffer of `len` bytes to stage uploads from: page-locked on a GPU, so that
    /// [`Staging::upload`] does not block the host.
    pub fn staging(&self, len: usize) -> Result<Staging> {
        Ok(Staging(match self {
            Executor::Cuda(c) => StagingInner::Pinned(c.alloc_pinned(len)?, len),
            Executor::Emu(_) => StagingInner::Emu(emu::EmuStaging::new(len)),
        }))
    }
    /// The whole buffer as a `Vec` (waits for the copy).
    pub fn download<T: DeviceElem>(&self, src: &DeviceBuffer<T>) -> Result<Vec<T>> {
        let mut v = vec![T::zeroed(); src.len()];
        self.copy_dtoh(src, &mut v)?;
        Ok(v)
    }
    /// Copies the first `len` elements of `src` to `dst[offset..offset + len]`, on the
    /// device (in stream order).
    pub fn copy_dtod<T: DeviceElem>(
        &self,
        src: &DeviceBuffer<T>,
        len: usize,
        dst: &mut DeviceBuffer<T>,
        offset: usize,
    ) -> Result<()> {
        check_len("copy_dtod source", len, src.len())?;
        check_len("copy_dtod destination", offset + len, dst.len())?;
        match (self, &src.inner, &mut dst.inner) {
            (Executor::Cuda(c), BufferInner::Cuda(s), BufferInner::Cuda(d)) => {
                c.copy_dtod(s, len, d, offset)
            }
            (Executor::Emu(e), BufferInner::Emu(s), BufferInner::Emu(d)) => {
                e.copy_dtod(s, len, d, offset)
            }
            _ => Err(foreign_buffer("copy_dtod")),
        }
    }
    /// Sets every element to zero.
    pub fn memset_zeros<T: DeviceElem>(&self, dst: &mut DeviceBuffer<T>) -> Result<()> {
        match (self, &mut dst.inner) {
            (Executor::Cuda(c), BufferInner::Cuda(d)) => c.memset_zeros(d),
            (Executor::Emu(e), BufferInner::Emu(d)) => e.memset_zeros(d),
            _ => Err(foreign_buffer("memset_zeros")),
        }
    }

    /// Allows `kernel` up to `bytes` of dynamic shared memory (like `cudaFuncSetAttribute(..,
    /// cudaFuncAttributeMaxDynamicSharedMemorySize, bytes)`); needed above 48 KiB; static +
    /// dynamic may not exceed 227 KiB.
    pub fn set_max_dynamic_shared(&self, kernel: &str, bytes: u32) -> Result<()> {
        let k = self.kernel(kernel)?;
        let static_smem = k.ptx.as_ref().map_or(0, |p| p.static_smem);
        if static_smem as u64 + bytes as u64 > MAX_SHARED_OPT_IN as u64 {
            return Err(Error::Device(format!(
                "CUDA_ERROR_INVALID_VALUE: kernel `{kernel}`: {bytes} bytes of dynamic shared memory plus {static_smem} \
                 static exceed the {MAX_SHARED_OPT_IN} bytes (227 KiB) a block may use"
            )));
        }
        match self {
            Executor::Cuda(c) => c.set_max_dynamic_shared(k, bytes),
            Executor::Emu(e) => {
                e.set_max_dynamic_shared(k, bytes);
                Ok(())
            }
        }
    }

    /// Starts a launch of `kernel`; add arguments with [`Launch::arg`], then
    /// [`Launch::launch`].
    pub fn launch_builder<'a>(&'a self, kernel: &'a str, cfg: LaunchConfig) -> Launch<'a> {
        Launch {
            exec: self,
            kernel,
            cfg,
            args: ArgList::default(),
        }
    }

    /// Launches `kernel` with `cuLaunchKernel`-style arguments: `args[i]` points at the i-th
    /// parameter's value, `arg_sizes[i]` is its size in bytes.
    ///
    /// # Safety
    /// As for `cuLaunchKernel`: the pointers must be valid and the values must match the
    /// kernel's parameters in meaning; device pointers must belong to this executor.
    pub unsafe fn launch_raw(
        &self,
        kernel: &str,
        cfg: LaunchConfig,
        args: &mut [*mut c_void],
        arg_sizes: &[u32],
    ) -> Result<()> {
        let k = self.kernel(kernel)?;
        if args.len() != arg_sizes.len() {
            return Err(Error::Device(format!(
                "kernel `{kernel}`: {} arguments but {} sizes",
                args.len(),
                arg_sizes.len()
            )));
        }
        match self {
            // SAFETY: forwarded to the caller.
            Executor::Cuda(c) => unsafe { c.launch(k, cfg, args, arg_sizes) },
            Executor::Emu(e) => unsafe { e.launch(k, cfg, args, arg_sizes) },
        }
    }

    /// Waits until all launched work has finished; reports asynchronous kernel failures.
    pub fn synchronize(&self) -> Result<()> {
        match self {
            Executor::Cuda(c) => c.synchronize(),
            Executor::Emu(e) => e.synchronize(),
        }
    }
    /// Records an event in the executor's stream (on the emulator: the instant its device
    /// thread reaches it).
    pub fn record_event(&self) -> Result<Event> {
        match self {
            Executor::Cuda(c) => c.record_event().map(|e| Event(EventInner::Cuda(e))),
            Executor::Emu(e) => e.record_event().map(|e| Event(EventInner::Emu(e))),
        }
    }
}

/// Shared memory per block without opt-in (static + dynamic).
pub const DEFAULT_SHARED_LIMIT: u32 = 48 * 1024;
/// Shared memory per block with opt-in on sm_90 (H100/H200).
pub const MAX_SHARED_OPT_IN: u32 = 227 * 1024;
/// Registers per SM (and the most one block may use).
const REGISTERS_PER_BLOCK: u64 = 65536;

fn check_len(what: &str, src: usize, dst: usize) -> Result<()> {
    if src > dst {
        return Err(Error::Shape(format!(
            "{what}: {src} elements do not fit in a buffer of {dst}"
        )));
    }
    Ok(())
}

fn foreign_buffer(what: &str) -> Error {
    Error::Device(format!("{what}: the buffer belongs to another executor"))
}

/// The launch checks a GPU makes, with the same answers on both executors.
fn validate_launch(
    k: &KernelInfo,
    cfg: &LaunchConfig,
    max_dynamic_shared: Option<u32>,
    arg_sizes: &[u32],
) -> Result<()> {
    let name = k.name;
    let (g, b) = (cfg.grid, cfg.block);
    let threads = b.volume();
    let err = |msg: String| {
        Err(Error::Device(format!(
            "{msg} (kernel `{name}`, {})",
            k.file
        )))
    };
    if b.x == 0 || b.y == 0 || b.z == 0 || g.x == 0 || g.y == 0 || g.z == 0 {
        return err(format!(
            "CUDA_ERROR_INVALID_VALUE: empty launch: grid {g}, block {b}"
        ));
    }
    if threads > 1024 || b.x > 1024 || b.y > 1024 || b.z > 64 {
        return err(format!(
            "CUDA_ERROR_INVALID_VALUE: block {b} has {threads} threads; a block may have at most 1024 \
             (x, y <= 1024, z <= 64)"
        ));
    }
    if g.x > i32::MAX as u32 || g.y > 65535 || g.z > 65535 {
        return err(format!(
            "CUDA_ERROR_INVALID_VALUE: grid {g} exceeds 2^31-1 x 65535 x 65535 blocks"
        ));
    }
    if let Some(p) = &k.ptx {
        if let Some(max) = p.max_threads
            && threads > max as u64
        {
            return err(format!(
                "CUDA_ERROR_INVALID_VALUE: block of {threads} threads exceeds the kernel's __launch_bounds__ of {max}"
            ));
        }
        let regs_per_warp = (p.registers as u64 * 32).div_ceil(256) * 256;
        if regs_per_warp * threads.div_ceil(32) > REGISTERS_PER_BLOCK {
            return err(format!(
                "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES: {threads} threads x {} registers exceed the {REGISTERS_PER_BLOCK} \
                 registers of an SM",
                p.registers
            ));
        }
        if p.param_sizes != arg_sizes {
            return err(format!(
                "kernel takes {} argument(s) of sizes {:?} bytes, the launch passed {} of sizes {:?}",
                p.param_sizes.len(),
                p.param_sizes,
                arg_sizes.len(),
                arg_sizes
            ));
        }
    }
    let static_smem = k.ptx.as_ref().map_or(0, |p| p.static_smem);
    let limit = max_dynamic_shared.unwrap_or(DEFAULT_SHARED_LIMIT.saturating_sub(static_smem));
    if cfg.shared_mem_bytes > limit {
        return err(format!(
            "CUDA_ERROR_INVALID_VALUE: {} bytes of dynamic shared memory exceed the kernel's limit of {limit} \
             ({static_smem} static; 48 KiB in all unless raised with set_max_dynamic_shared, up to 227 KiB)",
            cfg.shared_mem_bytes
        ));
    }
    Ok(())
}
