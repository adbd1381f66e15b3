//! The counters on CUDA: [`COUNTER_COUNT`] doubles in device memory, added to by
//! `count_step` (kernels/counters.cu) after each step's loss and read by the Adam kernel, so
//! that neither the loss nor the probabilities come back to the host inside an epoch. The
//! host reads them once per pass (and, for a progress bar, a few times a second).

use super::{CounterOps, StepFailure, StepTotals};
use crate::executor::{DeviceBuffer, Executor, LaunchConfig};
use crate::ops::cuda::CudaBackend;
use crate::ops::kernel_abi::{
    COUNT_THREADS, COUNTER_CORRECT, COUNTER_COUNT, COUNTER_FAILED_STEP, COUNTER_FAILURE,
    COUNTER_LOSS_SUM, COUNTER_SEEN, FAILURE_BAD_INPUTS, FAILURE_LOSS_NOT_FINITE,
};
use crate::ops::launch::int;
use crate::{Error, Result};

/// Fails unless `counters` has room for every counter.
pub(crate) fn check(counters: &DeviceBuffer<f64>) -> Result<()> {
    if counters.len() < COUNTER_COUNT {
        return Err(Error::Shape(format!(
            "step counters hold {} values, the kernels use {COUNTER_COUNT}",
            counters.len()
        )));
    }
    Ok(())
}

/// The totals the counters hold (one blocking read).
fn read(exec: &Executor, counters: &DeviceBuffer<f64>) -> Result<StepTotals> {
    check(counters)?;
    let mut c = [0.0f64; COUNTER_COUNT];
    exec.copy_dtoh(counters, &mut c)?;
    Ok(StepTotals {
        loss_sum: c[COUNTER_LOSS_SUM],
        correct: c[COUNTER_CORRECT] as u64,
        seen: c[COUNTER_SEEN] as u64,
        failure: (c[COUNTER_FAILED_STEP] != 0.0).then(|| StepFailure {
            step: c[COUNTER_FAILED_STEP] as usize - 1,
            bad_inputs: c[COUNTER_FAILURE] == FAILURE_BAD_INPUTS as f64,
        }),
    })
}

/// Sets the counters to `totals` (one small upload).
fn write(exec: &Executor, counters: &mut DeviceBuffer<f64>, totals: &StepTotals) -> Result<()> {
    check(counters)?;
    let mut c = [0.0f64; COUNTER_COUNT];
    c[COUNTER_LOSS_SUM] = totals.loss_sum;
    c[COUNTER_CORRECT] = totals.correct as f64;
    c[COUNTER_SEEN] = totals.seen as f64;
    if let Some(f) = totals.failure {
        c[COUNTER_FAILED_STEP] = f.step as f64 + 1.0;
        c[COUNTER_FAILURE] = if f.bad_inputs {
            FAILURE_BAD_INPUTS
        } else {
            FAILURE_LOSS_NOT_FINITE
        } as f64;
    }
    exec.copy_htod(&c, counters)
}

/// Adds step `step` to `counters`: `result` holds its loss and the loss kernels' input-error
/// flag (two floats), `probs` and `y_true` its `[batch, classes]` probabilities and one-hot
/// labels (the caller has checked their lengths).
#[allow(clippy::too_many_arguments)]
pub(crate) fn count_step(
    exec: &Executor,
    result: &DeviceBuffer<f32>,
    probs: &DeviceBuffer<f32>,
    y_true: &DeviceBuffer<f32>,
    batch: usize,
    classes: usize,
    step: usize,
    counters: &mut DeviceBuffer<f64>,
) -> Result<()> {
    check(counters)?;
    // SAFETY: count_step(const float*, const float*, const float*, int, int, int, double*)
    // reads the 2-float result, the [batch, classes] probabilities and labels and updates
    // the COUNTER_COUNT counters (checked above); one block of COUNT_THREADS.
    unsafe {
        exec.launch_builder("count_step", LaunchConfig::new(1u32, COUNT_THREADS))
            .arg(result)
            .arg(probs)
            .arg(y_true)
            .arg(int("batch", batch)?)
            .arg(int("classes", classes)?)
            .arg(int("step", step)?)
            .arg(counters)
            .launch()
    }
}

impl CounterOps for CudaBackend {
    type Counters = DeviceBuffer<f64>;

    fn counters(&self) -> Result<DeviceBuffer<f64>> {
        self.exec.alloc_zeros(COUNTER_COUNT)
    }

    fn set_counters(&self, counters: &mut DeviceBuffer<f64>, totals: &StepTotals) -> Result<()> {
        write(&self.exec, counters, totals)
    }

    fn read_counters(&self, counters: &DeviceBuffer<f64>) -> Result<StepTotals> {
        read(&self.exec, counters)
    }
}
