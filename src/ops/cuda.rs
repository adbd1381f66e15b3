//! The CUDA device: the kernel executor ([`Executor`]), so the same host code drives a GPU
//! (`cuda`) or the CPU emulator running the very same kernel sources (`cuda-emu`), and the
//! state the ops keep between launches. Each op's host code is in its folder
//! (`conv2d/cuda.rs`, ...) and its kernels in `kernels/`; the launch helpers they share are
//! in `launch.rs`. Like dfdx's device, this module imports no op: an op keeps its state
//! here by its own type ([`CudaBackend::op_state`]).
//!
//! Parameters, activations, gradients and optimizer state live in device buffers; nothing
//! comes back to the host inside a step except what [`Storage::read`](crate::ops::Storage::read)
//! and [`CounterOps::read_counters`](crate::ops::CounterOps::read_counters) ask for.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::Result;
use crate::executor::Executor;
use crate::profile::{Mark, Timeline};

/// The CUDA backend over a GPU or the emulator.
pub struct CudaBackend {
    pub(crate) exec: Executor,
    /// Each op's reusable device state (the GEMM's kernel choice and split-K workspace, the
    /// loss's scratch, ...), by the state's type; made on first use.
    op_state: Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
}

impl CudaBackend {
    /// The backend on `exec`, every op with its default state (the tiled GEMM kernels,
    /// chosen automatically).
    pub fn new(exec: Executor) -> Self {
        CudaBackend {
            exec,
            op_state: Mutex::new(HashMap::new()),
        }
    }

    /// The executor the kernels run on.
    pub fn executor(&self) -> &Executor {
        &self.exec
    }

    /// Runs `f` on the op state of type `T` (its `Default` on first use), under that
    /// state's own lock: an op may use another op's state inside `f`.
    pub(crate) fn op_state<T: Default + Send + 'static, R>(
        &self,
        f: impl FnOnce(&mut T) -> R,
    ) -> R {
        let state = {
            let mut states = self.op_state.lock().unwrap_or_else(|e| e.into_inner());
            let any = states
                .entry(TypeId::of::<T>())
                .or_insert_with(|| Arc::new(Mutex::new(T::default())))
                .clone();
            any.downcast::<Mutex<T>>()
                .expect("op states are stored under their own TypeId")
        };
        let mut guard = state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    }
}

/// CUDA events on the backend's stream.
impl Timeline for CudaBackend {
    fn mark(&self) -> Result<Mark> {
        self.executor().record_event().map(Mark::Device)
    }
}
