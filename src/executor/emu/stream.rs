//! The emulator's stream: launches, copies, frees and events run in order on a device thread
//! of their own, after the host call that queued them has returned, as on a GPU. A missing
//! wait in the host code therefore shows: in the lazy mode (`FOCALFLOW_EMU_STRICT`) the device
//! runs queued work only when the host waits for it (or when the queue is as full as a GPU's
//! would be), the latest that CUDA allows, so a host that reuses memory still being copied
//! from, or reads results it has not waited for, sees the wrong bytes every time.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::{Error, Result};

/// When the emulated device runs the work the host queues.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeviceMode {
    /// At once, in the host's call (the old, lenient emulator: hides missing waits).
    Sync,
    /// As soon as it can, on the device thread, while the host goes on.
    #[default]
    Async,
    /// Only when the host waits for it or the queue is full: every missing wait shows.
    Lazy,
}

impl DeviceMode {
    pub fn name(self) -> &'static str {
        match self {
            DeviceMode::Sync => "sync",
            DeviceMode::Async => "async",
            DeviceMode::Lazy => "lazy",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [DeviceMode::Sync, DeviceMode::Async, DeviceMode::Lazy]
            .into_iter()
            .find(|m| m.name() == s.trim())
    }
}

/// Queued work a lazy device lets pile up before it starts on the oldest: a GPU's launch
/// queue is bounded too (the host blocks once it is full).
const LAZY_QUEUE_DEPTH: u64 = 64;
/// Queued work at most, in any mode: the host waits for room beyond it (each queued copy
/// holds its bytes), as it does when a GPU's queue is full.
const MAX_QUEUED: usize = 1024;

type Work = Box<dyn FnOnce() -> std::result::Result<(), String> + Send>;

struct Queued {
    seq: u64,
    work: Work,
    /// Runs even after a failure (frees, so that memory is not lost).
    always: bool,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Queued>,
    /// Sequence number of the last work queued (work is numbered from 1).
    submitted: u64,
    /// Of the last work finished (in order, so everything before it has finished too).
    completed: u64,
    /// A lazy device runs work up to this number only.
    released: u64,
    /// The first failure: every later call reports it, as a CUDA context stays broken after
    /// a kernel fault.
    error: Option<String>,
    /// The device thread is to finish the queue and stop.
    closing: bool,
    /// The device thread has stopped: work runs in the caller.
    stopped: bool,
}

/// What the host and the device thread share; buffers hold it to queue their own free.
pub(crate) struct Queue {
    mode: DeviceMode,
    state: Mutex<State>,
    work_ready: Condvar,
    work_done: Condvar,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `work`; refused with the stream's failure if there is one.
    pub(crate) fn submit(
        &self,
        work: impl FnOnce() -> std::result::Result<(), String> + Send + 'static,
    ) -> Result<u64> {
        let seq = {
            let mut s = self.lock();
            while s.queue.len() >= MAX_QUEUED && !s.stopped {
                s.released = s.submitted;
                self.work_ready.notify_one();
                s = self.work_done.wait(s).unwrap_or_else(|p| p.into_inner());
            }
            if let Some(e) = &s.error {
                return Err(Error::Device(e.clone()));
            }
            self.push(&mut s, Box::new(work), false)
        };
        if self.mode == DeviceMode::Sync {
            self.wait(seq)?;
        }
        Ok(seq)
    }

    /// Queues `work` that must run even after a failure (a free).
    pub(crate) fn submit_always(&self, work: impl FnOnce() + Send + 'static) {
        let mut s = self.lock();
        if s.stopped {
            drop(s);
            work();
            return;
        }
        let seq = self.push(
            &mut s,
            Box::new(move || {
                work();
                Ok(())
            }),
            true,
        );
        drop(s);
        if self.mode == DeviceMode::Sync {
            let _ = self.wait(seq);
        }
    }

    fn push(&self, s: &mut State, work: Work, always: bool) -> u64 {
        s.submitted += 1;
        let seq = s.submitted;
        s.queue.push_back(Queued { seq, work, always });
        if self.mode == DeviceMode::Lazy {
            s.released = s.released.max(seq.saturating_sub(LAZY_QUEUE_DEPTH));
        } else {
            s.released = seq;
        }
        self.work_ready.notify_one();
        seq
    }

    /// Waits until work `seq` (and all before it) has run; the stream's failure if any.
    pub(crate) fn wait(&self, seq: u64) -> Result<()> {
        let mut s = self.lock();
        if s.released < seq {
            s.released = seq;
            self.work_ready.notify_one();
        }
        while s.completed < seq && !s.stopped {
            s = self.work_done.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        match &s.error {
            Some(e) => Err(Error::Device(e.clone())),
            None => Ok(()),
        }
    }

    /// Waits for everything queued so far.
    pub(crate) fn synchronize(&self) -> Result<()> {
        let last = self.lock().submitted;
        self.wait(last)
    }

    fn run_device(&self) {
        let mut s = self.lock();
        loop {
            let runnable = s.queue.front().is_some_and(|q| q.seq <= s.released);
            if !runnable {
                if s.closing {
                    return;
                }
                s = self.work_ready.wait(s).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            let q = s.queue.pop_front().expect("runnable work");
            let skip = s.error.is_some() && !q.always;
            drop(s);
            // A panic in the work (a bug) becomes the stream's failure, so that waiters
            // return instead of waiting for a thread that is gone.
            let result = if skip {
                Ok(())
            } else {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(q.work)).unwrap_or_else(
                    |_| Err("emulator: queued work panicked (a bug in the emulator)".into()),
                )
            };
            s = self.lock();
            if let Err(e) = result {
                s.error.get_or_insert(e);
            }
            s.completed = q.seq;
            self.work_done.notify_all();
        }
    }
}

/// The stream and its device thread; dropping it runs what is queued and stops the thread.
pub(crate) struct Stream {
    queue: Arc<Queue>,
    thread: Option<JoinHandle<()>>,
}

impl Stream {
    pub(crate) fn new(mode: DeviceMode) -> Result<Self> {
        let queue = Arc::new(Queue {
            mode,
            state: Mutex::new(State::default()),
            work_ready: Condvar::new(),
            work_done: Condvar::new(),
        });
        let device = Arc::clone(&queue);
        let thread = std::thread::Builder::new()
            .name("cuda-emu device".into())
            .spawn(move || device.run_device())
            .map_err(|e| {
                Error::Device(format!("cannot start the emulator's device thread: {e}"))
            })?;
        Ok(Stream {
            queue,
            thread: Some(thread),
        })
    }
    pub(crate) fn queue(&self) -> &Arc<Queue> {
        &self.queue
    }
    /// Whether `queue` is this stream's (buffers of another emulator executor are refused).
    pub(crate) fn owns(&self, queue: &Arc<Queue>) -> bool {
        Arc::ptr_eq(&self.queue, queue)
    }
    pub(crate) fn mode(&self) -> DeviceMode {
        self.queue.mode
    }

    /// Records an event: the instant the device reaches it.
    pub(crate) fn record_event(&self) -> Result<EmuEvent> {
        let at = Arc::new(OnceLock::new());
        let reached = Arc::clone(&at);
        let seq = self.queue.submit(move || {
            let _ = reached.set(Instant::now());
            Ok(())
        })?;
        Ok(EmuEvent {
            queue: Arc::clone(&self.queue),
            seq,
            at,
        })
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        {
            let mut s = self.queue.lock();
            s.released = u64::MAX;
            s.closing = true;
            self.queue.work_ready.notify_one();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let rest: Vec<Queued> = {
            let mut s = self.queue.lock();
            s.stopped = true;
            self.queue.work_done.notify_all();
            s.queue.drain(..).collect()
        };
        // Frees queued after the thread's last look.
        for q in rest.into_iter().filter(|q| q.always) {
            let _ = (q.work)();
        }
    }
}

/// A point in the stream (`cudaEventRecord`).
pub(crate) struct EmuEvent {
    queue: Arc<Queue>,
    seq: u64,
    at: Arc<OnceLock<Instant>>,
}

impl EmuEvent {
    /// Waits until the device has reached the event (`cudaEventSynchronize`).
    pub(crate) fn synchronize(&self) -> Result<Instant> {
        self.queue.wait(self.seq)?;
        self.at.get().copied().ok_or_else(|| {
            Error::Device("the event was not reached: the stream failed before it".into())
        })
    }
}
