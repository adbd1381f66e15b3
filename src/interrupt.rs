//! Ctrl-C (SIGINT) and SIGTERM during `train`: the first asks the training loop to stop
//! after the current step (it then saves a resumable checkpoint and exits with 130); the
//! second exits at once with 130, first removing the temporary files of writes in progress,
//! so no half-written file is left (the files themselves are only ever replaced by rename).
//!
//! Tests raise the interrupt deterministically with `FOCALFLOW_INTERRUPT_AFTER_STEPS=N`:
//! the training loop sends itself SIGINT after its N-th step of the process (and, with
//! `FOCALFLOW_INTERRUPT_TWICE=1`, a second one at once).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use signal_hook::consts::{SIGINT, SIGTERM};

use crate::{Error, Result};

static INSTALLED: AtomicBool = AtomicBool::new(false);
static REQUESTED: AtomicBool = AtomicBool::new(false);
/// Temporary files being written (removed by a second interrupt before exiting).
static WRITING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
/// Steps this process has taken (for `FOCALFLOW_INTERRUPT_AFTER_STEPS`).
static STEPS: AtomicUsize = AtomicUsize::new(0);

/// The exit status of an interrupted run (128 + SIGINT, as shells report it).
pub const EXIT_STATUS: i32 = 130;

/// Installs the handlers (once per process; later calls do nothing).
pub fn install() -> Result<()> {
    if INSTALLED.swap(true, Ordering::SeqCst) {
        return Ok(());
    }
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .map_err(|e| Error::Device(format!("cannot install the Ctrl-C handler: {e}")))?;
    std::thread::spawn(move || {
        for _ in signals.forever() {
            if REQUESTED.swap(true, Ordering::SeqCst) {
                // Held until the process is gone: a write that has not created its
                // temporary file yet waits for the lock (create_temporary) and never does.
                // (Released before exit, it had let one be created after the removal.)
                let writing = WRITING.lock().unwrap_or_else(|e| e.into_inner());
                for tmp in writing.iter() {
                    let _ = std::fs::remove_file(tmp);
                }
                eprintln!("\ninterrupted again: stopped at once");
                std::process::exit(EXIT_STATUS);
            }
            eprintln!(
                "\ninterrupt: finishing the current step and saving a checkpoint (interrupt again to quit at once)"
            );
        }
    });
    Ok(())
}

/// Whether an interrupt asked training to stop.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// Called after every training step: raises the test interrupt when its step has come.
pub fn after_step() {
    static AT: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    let at = *AT.get_or_init(|| {
        std::env::var("FOCALFLOW_INTERRUPT_AFTER_STEPS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
    });
    let n = STEPS.fetch_add(1, Ordering::SeqCst) + 1;
    if at == Some(n) && INSTALLED.load(Ordering::SeqCst) {
        let _ = signal_hook::low_level::raise(SIGINT);
        // The handler runs on its own thread: wait for it to record the request.
        while !requested() {
            std::thread::yield_now();
        }
        if std::env::var_os("FOCALFLOW_INTERRUPT_TWICE").is_some_and(|v| v == "1") {
            let _ = signal_hook::low_level::raise(SIGINT);
            // The handler exits the process; should it not, training goes on to the
            // first interrupt's save after a while (and the test sees that).
            std::thread::sleep(std::time::Duration::from_secs(10));
        }
    }
}

/// Creates the temporary file `tmp` and registers it as being written until the guard is
/// dropped, both under the lock a second interrupt holds while it removes such files and
/// exits: so every temporary file either exists registered or is never created.
pub fn create_temporary(tmp: &Path) -> std::io::Result<(std::fs::File, WritingGuard)> {
    let mut writing = WRITING.lock().unwrap_or_else(|e| e.into_inner());
    let file = std::fs::File::create(tmp)?;
    writing.push(tmp.to_path_buf());
    Ok((file, WritingGuard(tmp.to_path_buf())))
}

/// See [`create_temporary`].
pub struct WritingGuard(PathBuf);

impl Drop for WritingGuard {
    fn drop(&mut self) {
        WRITING
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|p| p != &self.0);
    }
}
