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

use crate::Result;
use crate::data::{ImageSet, PixelStore};
use crate::executor::Event;
use crate::feed::{BatchFeeder, BatchFn, DeviceCache, Feeds};
use crate::loss::LossConfig;
use crate::ops::{
    AdamOps, AdamStep, Backend, Conv2dOps, ConvShape, CounterOps, CpuBackend, CudaBackend,
    DenseOps, DenseShape, LossOps, PoolOps, PoolShape, ReluOps, SoftmaxOps, StepTotals, Storage,
};
use crate::{Element, Error};

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
    /// A CUDA event (on the emulator: a wall-clock instant, launches being synchronous).
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

impl<T: Element> Timeline for CpuBackend<T> {
    fn mark(&self) -> Result<Mark> {
        Ok(Mark::Wall(Instant::now()))
    }
}

impl Timeline for CudaBackend {
    fn mark(&self) -> Result<Mark> {
        self.executor().record_event().map(Mark::Device)
    }
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
    fn enter(&self, phase: Phase) -> Result<()> {
        self.profiler.enter(phase, self.inner)
    }
}

// Each op trait, passed through to the inner backend after entering the op's phase. (The
// compiler asks for one impl per op trait: a new op adds its own here.)

impl<B: Storage + Timeline> Storage for Profiled<'_, B> {
    type E = B::E;
    type Buf = B::Buf;

    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn zeros(&self, len: usize) -> Result<Self::Buf> {
        self.inner.zeros(len)
    }
    fn write(&self, buf: &mut Self::Buf, host: &[Self::E]) -> Result<()> {
        self.enter(Phase::Data)?;
        self.inner.write(buf, host)
    }
    fn read(&self, buf: &Self::Buf, len: usize) -> Result<Vec<Self::E>> {
        self.enter(Phase::Readback)?;
        let v = self.inner.read(buf, len)?;
        // The host has synchronised: resolve the marks, and count what follows (waiting for
        // the next batch) as data loading.
        self.profiler.resolve()?;
        self.enter(Phase::Data)?;
        Ok(v)
    }
    fn copy_into(
        &self,
        src: &Self::Buf,
        len: usize,
        dst: &mut Self::Buf,
        offset: usize,
    ) -> Result<()> {
        self.inner.copy_into(src, len, dst, offset)
    }
    fn free_memory(&self) -> Result<Option<u64>> {
        self.inner.free_memory()
    }
}

impl<B: Conv2dOps + Timeline> Conv2dOps for Profiled<'_, B> {
    fn conv2d_forward(
        &self,
        s: &ConvShape,
        x: &Self::Buf,
        w: &Self::Buf,
        b: &Self::Buf,
        y: &mut Self::Buf,
        relu: bool,
    ) -> Result<()> {
        self.enter(Phase::Forward)?;
        self.inner.conv2d_forward(s, x, w, b, y, relu)
    }
    fn conv2d_backward_data(
        &self,
        s: &ConvShape,
        dy: &Self::Buf,
        w: &Self::Buf,
        dx: &mut Self::Buf,
    ) -> Result<()> {
        self.enter(Phase::Backward)?;
        self.inner.conv2d_backward_data(s, dy, w, dx)
    }
    fn conv2d_backward_filter(
        &self,
        s: &ConvShape,
        x: &Self::Buf,
        dy: &Self::Buf,
        dw: &mut Self::Buf,
        db: &mut Self::Buf,
    ) -> Result<()> {
        self.enter(Phase::Backward)?;
        self.inner.conv2d_backward_filter(s, x, dy, dw, db)
    }
}

impl<B: PoolOps + Timeline> PoolOps for Profiled<'_, B> {
    fn maxpool2d_forward(&self, s: &PoolShape, x: &Self::Buf, y: &mut Self::Buf) -> Result<()> {
        self.enter(Phase::Forward)?;
        self.inner.maxpool2d_forward(s, x, y)
    }
    fn maxpool2d_backward(
        &self,
        s: &PoolShape,
        x: &Self::Buf,
        dy: &Self::Buf,
        dx: &mut Self::Buf,
    ) -> Result<()> {
        self.enter(Phase::Backward)?;
        self.inner.maxpool2d_backward(s, x, dy, dx)
    }
    fn maxpool2d_relu_backward(
        &self,
        s: &PoolShape,
        x: &Self::Buf,
        dy: &Self::Buf,
        dx: &mut Self::Buf,
    ) -> Result<()> {
        self.enter(Phase::Backward)?;
        self.inner.maxpool2d_relu_backward(s, x, dy, dx)
    }
}

impl<B: DenseOps + Timeline> DenseOps for Profiled<'_, B> {
    fn dense_forward(
        &self,
        s: &DenseShape,
        x: &Self::Buf,
        w: &Self::Buf,
        b: &Self::Buf,
        y: &mut Self::Buf,
        relu: bool,
    ) -> Result<()> {
        self.enter(Phase::Forward)?;
        self.inner.dense_forward(s, x, w, b, y, relu)
    }
    fn dense_backward(
        &self,
        s: &DenseShape,
        x: &Self::Buf,
        w: &Self::Buf,
        dy: &Self::Buf,
        dx: Option<&mut Self::Buf>,
        dw: &mut Self::Buf,
        db: &mut Self::Buf,
    ) -> Result<()> {
        self.enter(Phase::Backward)?;
        self.inner.dense_backward(s, x, w, dy, dx, dw, db)
    }
}

impl<B: ReluOps + Timeline> ReluOps for Profiled<'_, B> {
    fn relu_backward(&self, len: usize, y: &Self::Buf, dy: &mut Self::Buf) -> Result<()> {
        self.enter(Phase::Backward)?;
        self.inner.relu_backward(len, y, dy)
    }
}

impl<B: SoftmaxOps + Timeline> SoftmaxOps for Profiled<'_, B> {
    fn softmax_forward(
        &self,
        rows: usize,
        cols: usize,
        logits: &Self::Buf,
        probs: &mut Self::Buf,
    ) -> Result<()> {
        self.enter(Phase::Forward)?;
        self.inner.softmax_forward(rows, cols, logits, probs)
    }
    fn softmax_backward(
        &self,
        rows: usize,
        cols: usize,
        probs: &Self::Buf,
        dprobs: &Self::Buf,
        dlogits: &mut Self::Buf,
    ) -> Result<()> {
        self.enter(Phase::Loss)?;
        self.inner
            .softmax_backward(rows, cols, probs, dprobs, dlogits)
    }
}

impl<B: LossOps + Timeline> LossOps for Profiled<'_, B> {
    fn loss(
        &self,
        cfg: &LossConfig,
        batch: usize,
        classes: usize,
        y_true: &Self::Buf,
        pred: &Self::Buf,
        grad: Option<&mut Self::Buf>,
    ) -> Result<Self::E> {
        self.enter(Phase::Loss)?;
        self.inner.loss(cfg, batch, classes, y_true, pred, grad)
    }
    fn loss_counted(
        &self,
        cfg: &LossConfig,
        batch: usize,
        classes: usize,
        y_true: &Self::Buf,
        pred: &Self::Buf,
        probs: &Self::Buf,
        grad: Option<&mut Self::Buf>,
        step: usize,
        counters: &mut Self::Counters,
    ) -> Result<()> {
        self.enter(Phase::Loss)?;
        self.inner.loss_counted(
            cfg, batch, classes, y_true, pred, probs, grad, step, counters,
        )
    }
}

impl<B: AdamOps + Timeline> AdamOps for Profiled<'_, B> {
    fn adam_update(
        &self,
        len: usize,
        step: &AdamStep<Self::E>,
        param: &mut Self::Buf,
        grad: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
    ) -> Result<()> {
        self.enter(Phase::Optimizer)?;
        self.inner.adam_update(len, step, param, grad, m, v)
    }
    fn adam_update_counted(
        &self,
        len: usize,
        step: &AdamStep<Self::E>,
        param: &mut Self::Buf,
        grad: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        counters: &Self::Counters,
    ) -> Result<()> {
        self.enter(Phase::Optimizer)?;
        self.inner
            .adam_update_counted(len, step, param, grad, m, v, counters)
    }
}

impl<B: CounterOps + Timeline> CounterOps for Profiled<'_, B> {
    type Counters = B::Counters;

    fn counters(&self) -> Result<Self::Counters> {
        self.inner.counters()
    }
    fn set_counters(&self, counters: &mut Self::Counters, totals: &StepTotals) -> Result<()> {
        self.inner.set_counters(counters, totals)
    }
    fn read_counters(&self, counters: &Self::Counters) -> Result<StepTotals> {
        self.enter(Phase::Readback)?;
        let totals = self.inner.read_counters(counters)?;
        // As after `read`: the host has synchronised.
        self.profiler.resolve()?;
        self.enter(Phase::Data)?;
        Ok(totals)
    }
    fn reads_are_cheap(&self) -> bool {
        self.inner.reads_are_cheap()
    }
}

impl<B: Feeds + Timeline> Feeds for Profiled<'_, B> {
    /// The inner backend's feeder, its batch assembly counted as data loading.
    fn feeder<'f, P: PixelStore + 'f>(
        &'f self,
        data: &'f ImageSet<P>,
        batch_size: usize,
        cache: DeviceCache,
    ) -> Result<Box<dyn BatchFeeder<B::Buf> + 'f>> {
        Ok(Box::new(ProfiledFeeder {
            inner: self.inner.feeder(data, batch_size, cache)?,
            profiled: self,
        }))
    }
}

/// A feeder whose work between steps (gathering the next batch) is the data phase.
struct ProfiledFeeder<'f, 'a, B: Backend> {
    inner: Box<dyn BatchFeeder<B::Buf> + 'f>,
    profiled: &'f Profiled<'a, B>,
}

impl<B: Backend<E = f32> + Timeline> BatchFeeder<B::Buf> for ProfiledFeeder<'_, '_, B> {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn for_each_batch(
        &mut self,
        order: &[usize],
        flip_seed: Option<u64>,
        first: usize,
        step: &mut BatchFn<'_, B::Buf>,
    ) -> Result<()> {
        let profiled = self.profiled;
        profiled.enter(Phase::Data)?;
        self.inner
            .for_each_batch(order, flip_seed, first, &mut |n, count, x, y| {
                step(n, count, x, y)?;
                profiled.enter(Phase::Data)
            })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_of_a_cpu_step_are_timed_and_tabled() {
        let cpu = CpuBackend::<f32>::new();
        let prof = Profiler::new(true);
        let b = Profiled::new(&cpu, &prof);
        let x = b.upload(&[1.0, -2.0, 3.0]).unwrap();
        let mut g = b.upload(&[1.0, 1.0, 1.0]).unwrap();
        b.relu_backward(3, &x, &mut g).unwrap();
        assert_eq!(b.read(&g, 3).unwrap(), [1.0, 0.0, 1.0]);
        let mut p = b.zeros(3).unwrap();
        let (mut m, mut v) = (b.zeros(3).unwrap(), b.zeros(3).unwrap());
        let step = AdamStep {
            step_size: 0.1,
            one_minus_beta1: 0.1,
            one_minus_beta2: 0.001,
            epsilon: 1e-7,
        };
        b.adam_update(3, &step, &mut p, &g, &mut m, &mut v).unwrap();
        prof.finish(&cpu).unwrap();
        let totals = prof.totals_ms();
        assert!(totals.iter().all(|(_, ms)| *ms >= 0.0));
        let table = prof.table("wall clock");
        for name in [
            "data",
            "forward",
            "loss",
            "backward",
            "optimizer",
            "readback",
            "total",
            "1 step(s)",
        ] {
            assert!(table.contains(name), "{table}");
        }
        // Without libnvToolsExt (CI), NVTX is a no-op and must not crash.
        nvtx::push(c"test");
        nvtx::pop();
    }
}
