//! The counters on the CPU: the totals themselves (host memory is where the CPU computes).

use super::{CounterOps, StepTotals};
use crate::ops::cpu::CpuBackend;
use crate::{Element, Result};

impl<T: Element> CounterOps for CpuBackend<T> {
    type Counters = StepTotals;

    fn counters(&self) -> Result<StepTotals> {
        Ok(StepTotals::default())
    }

    fn set_counters(&self, counters: &mut StepTotals, totals: &StepTotals) -> Result<()> {
        *counters = *totals;
        Ok(())
    }

    fn read_counters(&self, counters: &StepTotals) -> Result<StepTotals> {
        Ok(*counters)
    }

    fn reads_are_cheap(&self) -> bool {
        true
    }
}
