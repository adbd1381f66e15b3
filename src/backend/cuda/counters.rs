//! The step counters of the device data path: `COUNTER_COUNT` doubles in device memory
//! (kernels/counters.cuh), added to by `count_step` after each step's loss and read by the
//! Adam kernel, so that neither the loss nor the probabilities come back to the host inside
//! an epoch. The host reads them once per pass (and, for a progress bar, a few times a
//! second).

use crate::backend::{StepFailure, StepTotals};
use crate::gpu::{DeviceBuffer, Executor};
use crate::{Error, Result};

/// `COUNTER_*` in kernels/counters.cuh.
const LOSS_SUM: usize = 0;
const CORRECT: usize = 1;
const SEEN: usize = 2;
const FAILED_STEP: usize = 3;
const FAILURE: usize = 4;
pub const COUNT: usize = 5;
/// `COUNTER_FAILURE`'s value for a loss whose inputs were not finite.
const FAILURE_BAD_INPUTS: f64 = 2.0;

/// Fails unless `counters` has room for every counter.
pub fn check(counters: &DeviceBuffer<f64>) -> Result<()> {
    if counters.len() < COUNT {
        return Err(Error::Shape(format!(
            "step counters hold {} values, the kernels use {COUNT}",
            counters.len()
        )));
    }
    Ok(())
}

/// The totals the counters hold (one blocking read).
pub fn read(exec: &Executor, counters: &DeviceBuffer<f64>) -> Result<StepTotals> {
    check(counters)?;
    let mut c = [0.0f64; COUNT];
    exec.copy_dtoh(counters, &mut c)?;
    Ok(StepTotals {
        loss_sum: c[LOSS_SUM],
        correct: c[CORRECT] as u64,
        seen: c[SEEN] as u64,
        failure: (c[FAILED_STEP] != 0.0).then(|| StepFailure {
            step: c[FAILED_STEP] as usize - 1,
            bad_inputs: c[FAILURE] == FAILURE_BAD_INPUTS,
        }),
    })
}

/// Sets the counters to `totals` (one small upload).
pub fn write(exec: &Executor, counters: &mut DeviceBuffer<f64>, totals: &StepTotals) -> Result<()> {
    check(counters)?;
    let mut c = [0.0f64; COUNT];
    c[LOSS_SUM] = totals.loss_sum;
    c[CORRECT] = totals.correct as f64;
    c[SEEN] = totals.seen as f64;
    if let Some(f) = totals.failure {
        c[FAILED_STEP] = f.step as f64 + 1.0;
        c[FAILURE] = if f.bad_inputs {
            FAILURE_BAD_INPUTS
        } else {
            1.0
        };
    }
    exec.copy_htod(&c, counters)
}
