//! Phase profiling of training and benchmark runs: NVTX ranges (so an Nsight timeline reads
//! like the training loop) and, with `--profile`, a per-phase time table measured with CUDA
//! events on the GPU and the wall clock elsewhere.
//!
//! It needs no change to the model: [`Profiled`] wraps a backend and assigns every backend
//! call to a phase (forward ops, the loss and its softmax gradient, backward ops, the Adam
//! updates, uploads, downloads); a change of phase closes the previous NVTX range, opens the
//! next and, when timing, records a mark on the device's timeline. The host time between
//! the end of a download (the step's metrics) and the next upload — waiting for the next
//! batch — counts as data loading. Marks are resolved into durations only after a download
//! (the host has synchronised anyway), so profiling does not serialise host and device
//! beyond what the training loop already does.
//!
//! The CPU path pays nothing when neither `--profile` nor NVTX is wanted: the caller uses
//! the plain backend then.

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::time::Instant;

use crate::executor::Event;
use crate::{Error, Result};

/// A part of a training step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the next batch and uploading it.
    Data,
    Forward,
    /// The loss, its gradient and (on the probability path) the softmax gradient.
    Loss,
    Backward,
    /// The Adam updates.
    Optimizer,
    /// Downloads of results (probabilities for the metrics).
    Readback,
}

impl Phase {
    pub const ALL: [Phase; 6] = [
        Phase::Data,
        Phase::Forward,
        Phase::Loss,
        Phase::Backward,
        Phase::Optimizer,
        Phase::Readback,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Phase::Data => "data",
            Phase::Forward => "forward",
            Phase::Loss => "loss",
            Phase::Backward => "backward",
            Phase::Optimizer => "optimizer",
            Phase::Readback => "readback",
        }
    }
    fn nvtx_name(self) -> &'static std::ffi::CStr {
        match self {
            Phase::Data => c"data",
            Phase::Forward => c"forward",
            Phase::Loss => c"loss",
            Phase::Backward => c"backward",
            Phase::Optimizer => c"optimizer",
            Phase::Readback => c"readback",
        }
    }
    fn index(self) -> usize {
        self as usize
    }
}

/// A point on a backend's timeline.
pub enum Mark {
    Wall(Instant),
    /// A CUDA event (on the emulator: the instant its device thread reached it).
    Device(Event),
}

impl Mark {
    /// Milliseconds from this mark to `end` (on the same clock).
    pub fn ms_until(&self, end: &Mark) -> Result<f64> {
        match (self, end) {
            (Mark::Wall(a), Mark::Wall(b)) => {
                Ok(b.saturating_duration_since(*a).as_secs_f64() * 1e3)
            }
            (Mark::Device(a), Mark::Device(b)) => Ok(a.elapsed_ms(b)? as f64),
            _ => Err(Error::Device("profile marks of different clocks".into())),
        }
    }
}

/// Backends that can put a mark on their timeline.
pub trait Timeline {
    fn mark(&self) -> Result<Mark>;
}

/// Phase bookkeeping shared by the calls of one run.
pub struct Profiler {
    timing: Cell<bool>,
    current: Cell<Option<Phase>>,
    /// Marks not yet turned into durations: (phase that starts at the mark, mark).
    pending: RefCell<Vec<(Phase, Mark)>>,
    totals_ms: RefCell<[f64; 6]>,
    entries: RefCell<[u64; 6]>,
}

impl Profiler {
    /// NVTX ranges and, if `timing`, the per-phase times.
    pub fn new(timing: bool) -> Self {
        Profiler {
            timing: Cell::new(timing),
            current: Cell::new(None),
            pending: RefCell::new(Vec::new()),
            totals_ms: RefCell::new([0.0; 6]),
            entries: RefCell::new([0; 6]),
        }
    }

    /// Turns timing on or off (e.g. on after a benchmark's warm-up); the NVTX ranges go on.
    pub fn set_timing(&self, on: bool) {
        if !on {
            self.pending.borrow_mut().clear();
        }
        self.timing.set(on);
    }

    /// Enters `phase` (nothing happens if it is the current one).
    pub fn enter(&self, phase: Phase, clock: &dyn Timeline) -> Result<()> {
        if self.current.get() == Some(phase) {
            return Ok(());
        }
        if self.current.get().is_some() {
            nvtx::pop();
        }
        nvtx::push(phase.nvtx_name());
        self.current.set(Some(phase));
        if self.timing.get() {
            self.entries.borrow_mut()[phase.index()] += 1;
            self.pending.borrow_mut().push((phase, clock.mark()?));
        }
        Ok(())
    }

    /// Turns the marks recorded so far into durations, keeping the last as the start of the
    /// current phase. Waits for the device to reach the last mark.
    pub fn resolve(&self) -> Result<()> {
        let mut pending = self.pending.borrow_mut();
        if pending.len() < 2 {
            return Ok(());
        }
        let mut totals = self.totals_ms.borrow_mut();
        for pair in pending.windows(2) {
            totals[pair[0].0.index()] += pair[0].1.ms_until(&pair[1].1)?;
        }
        let last = pending.pop().expect("two or more");
        pending.clear();
        pending.push(last);
        Ok(())
    }

    /// Closes the current phase at `clock`'s present and resolves every mark.
    pub fn finish(&self, clock: &dyn Timeline) -> Result<()> {
        if let Some(phase) = self.current.take() {
            nvtx::pop();
            if self.timing.get() {
                self.pending.borrow_mut().push((phase, clock.mark()?));
            }
        }
        self.resolve()?;
        self.pending.borrow_mut().clear();
        Ok(())
    }

    /// Milliseconds spent in each phase so far (resolved marks only).
    pub fn totals_ms(&self) -> [(Phase, f64); 6] {
        let t = self.totals_ms.borrow();
        Phase::ALL.map(|p| (p, t[p.index()]))
    }

    /// The per-phase table: total, per training step (steps = optimizer phases entered)
    /// and share, plus the sum.
    pub fn table(&self, clock_name: &str) -> String {
        let totals = self.totals_ms();
        let steps = self.entries.borrow()[Phase::Optimizer.index()].max(1);
        let sum: f64 = totals.iter().map(|t| t.1).sum();
        let mut s = format!(
            "profile ({clock_name}; {steps} step(s))\n{:<10} {:>11} {:>11} {:>7}\n",
            "phase", "total ms", "ms/step", "share"
        );
        for (p, ms) in totals {
            let _ = writeln!(
                s,
                "{:<10} {:>11.3} {:>11.3} {:>6.1}%",
                p.name(),
                ms,
                ms / steps as f64,
                if sum > 0.0 { 100.0 * ms / sum } else { 0.0 }
            );
        }
        let _ = write!(
            s,
            "{:<10} {:>11.3} {:>11.3} {:>6.1}%",
            "total",
            sum,
            sum / steps as f64,
            100.0
        );
        s
    }
}

/// A backend whose calls are attributed to phases of a [`Profiler`].
pub struct Profiled<'a, B> {
    pub inner: &'a B,
    pub profiler: &'a Profiler,
}

impl<'a, B: Timeline> Profiled<'a, B> {
    pub fn new(inner: &'a B, profiler: &'a Profiler) -> Self {
        Profiled { inner, profiler }
    }
    /// Enters `phase` (the op about to run belongs to it).
    pub fn enter(&self, phase: Phase) -> Result<()> {
        self.profiler.enter(phase, self.inner)
    }
}

/// NVTX ranges through a library with NVTX's C API, loaded at run time: libnvToolsExt
/// (CUDA <= 12 toolkits) or libnvtx3interop (CUDA 13, e.g. the `nvidia-nvtx` wheel that
/// PyTorch installs: `nvidia/cu13/lib/libnvtx3interop.so.1`). When none can be loaded (not
/// on the library path) every call is a no-op; `FOCALFLOW_NVTX_LIB` names one explicitly.
/// Profilers (Nsight Systems / Compute) inject their handler through
/// `NVTX_INJECTION64_PATH`.
pub mod nvtx {
    use std::ffi::{CStr, c_char, c_int, c_void};
    use std::sync::OnceLock;

    struct Api {
        push: unsafe extern "C" fn(*const c_char) -> c_int,
        pop: unsafe extern "C" fn() -> c_int,
    }

    #[cfg(unix)]
    unsafe extern "C" {
        fn dlopen(filename: *const c_char, flag: c_int) -> *mut c_void;
        fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
    }

    #[cfg(unix)]
    fn load() -> Option<Api> {
        const RTLD_NOW: c_int = 2;
        let custom = std::env::var("FOCALFLOW_NVTX_LIB")
            .ok()
            .filter(|s| !s.is_empty());
        let names = custom.into_iter().chain(
            [
                "libnvToolsExt.so.1",
                "libnvToolsExt.so",
                "libnvtx3interop.so.1",
            ]
            .map(String::from),
        );
        for name in names {
            let Ok(c) = std::ffi::CString::new(name) else {
                continue;
            };
            // SAFETY: dlopen with a NUL-terminated name; a null handle means not found.
            let h = unsafe { dlopen(c.as_ptr(), RTLD_NOW) };
            if h.is_null() {
                continue;
            }
            // SAFETY: looking up two symbols of the library just opened.
            let (push, pop) = unsafe {
                (
                    dlsym(h, c"nvtxRangePushA".as_ptr()),
                    dlsym(h, c"nvtxRangePop".as_ptr()),
                )
            };
            if push.is_null() || pop.is_null() {
                continue;
            }
            // SAFETY: the NVTX v2 API: int nvtxRangePushA(const char*), int nvtxRangePop(void).
            return Some(unsafe {
                Api {
                    push: std::mem::transmute::<
                        *mut c_void,
                        unsafe extern "C" fn(*const c_char) -> c_int,
                    >(push),
                    pop: std::mem::transmute::<*mut c_void, unsafe extern "C" fn() -> c_int>(pop),
                }
            });
        }
        None
    }

    #[cfg(not(unix))]
    fn load() -> Option<Api> {
        None
    }

    fn api() -> Option<&'static Api> {
        static API: OnceLock<Option<Api>> = OnceLock::new();
        API.get_or_init(load).as_ref()
    }

    /// Whether NVTX ranges go anywhere (libnvToolsExt was loaded).
    pub fn available() -> bool {
        api().is_some()
    }

    /// Opens a range named `name` on this thread.
    pub fn push(name: &CStr) {
        if let Some(a) = api() {
            // SAFETY: a NUL-terminated string, valid for the call.
            unsafe { (a.push)(name.as_ptr()) };
        }
    }

    /// Closes the innermost range of this thread.
    pub fn pop() {
        if let Some(a) = api() {
            // SAFETY: no arguments.
            unsafe { (a.pop)() };
        }
    }
}
