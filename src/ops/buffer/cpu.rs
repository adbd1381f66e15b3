//! Buffers on the CPU: vectors in host memory.

use super::Storage;
use crate::ops::check_len;
use crate::ops::cpu::CpuBackend;
use crate::{Element, Result};

impl<T: Element> Storage for CpuBackend<T> {
    type E = T;
    type Buf = Vec<T>;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn precision(&self) -> crate::precision::Precision {
        if self.bf16_products().is_some() {
            crate::precision::Precision::Bf16
        } else {
            crate::precision::Precision::Fp32
        }
    }

    /// Populated at once: the fresh pages of a zeroed vector are otherwise mapped to the
    /// kernel's shared zero page when first read, and the first write to each then costs a
    /// copy and a TLB shootdown across the threads (an inter-processor interrupt, a VM exit
    /// on a virtual machine). Adam's moments are read before they are written: their 22,000
    /// pages took 10% of the CPU time of `focalflow bench --device cpu --precision bf16
    /// --steps 8` that way (`perf record`: `native_write_msr` under `flush_tlb_mm_range`).
    fn zeros(&self, len: usize) -> Result<Vec<T>> {
        let mut v = vec![T::zero(); len];
        crate::system::populate(&mut v);
        Ok(v)
    }

    fn write(&self, buf: &mut Vec<T>, host: &[T]) -> Result<()> {
        check_len("destination buffer", buf.len(), host.len())?;
        buf[..host.len()].copy_from_slice(host);
        Ok(())
    }

    fn read(&self, buf: &Vec<T>, len: usize) -> Result<Vec<T>> {
        check_len("source buffer", buf.len(), len)?;
        Ok(buf[..len].to_vec())
    }

    /// The memory this process may still allocate (a CPU's "device memory" is the host's).
    fn free_memory(&self) -> Result<Option<u64>> {
        Ok(crate::system::available_memory())
    }

    fn copy_into(&self, src: &Vec<T>, len: usize, dst: &mut Vec<T>, offset: usize) -> Result<()> {
        check_len("source buffer", src.len(), len)?;
        check_len("destination buffer", dst.len(), offset + len)?;
        dst[offset..offset + len].copy_from_slice(&src[..len]);
        Ok(())
    }
}
