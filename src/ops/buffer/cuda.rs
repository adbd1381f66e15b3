//! Buffers on CUDA: device memory of the executor (a GPU's, or host memory standing in for
//! it on the emulator); `fill` runs kernels/buffer.cu.

use super::Storage;
use crate::Result;
use crate::executor::DeviceBuffer;
use crate::ops::check_len;
use crate::ops::cuda::CudaBackend;
use crate::ops::launch::{elementwise_config, int};

impl CudaBackend {
    /// `p[..n] = value`.
    pub(crate) fn fill(&self, p: &mut DeviceBuffer<f32>, n: usize, value: f32) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        check_len("buffer", p.len(), n)?;
        // SAFETY: fill_f32(float*, int, float) writes the first n elements of p.
        unsafe {
            self.exec
                .launch_builder("fill_f32", elementwise_config(n))
                .arg(p)
                .arg(int("fill length", n)?)
                .arg(value)
                .launch()
        }
    }
}

impl Storage for CudaBackend {
    type E = f32;
    type Buf = DeviceBuffer<f32>;

    fn name(&self) -> &'static str {
        self.exec.kind().name()
    }

    fn precision(&self) -> crate::precision::Precision {
        self.gemm_precision()
    }

    fn zeros(&self, len: usize) -> Result<DeviceBuffer<f32>> {
        self.exec.alloc_zeros(len)
    }

    fn write(&self, buf: &mut DeviceBuffer<f32>, host: &[f32]) -> Result<()> {
        check_len("destination buffer", buf.len(), host.len())?;
        self.exec.copy_htod(host, buf)
    }

    fn read(&self, buf: &DeviceBuffer<f32>, len: usize) -> Result<Vec<f32>> {
        check_len("source buffer", buf.len(), len)?;
        let mut v = vec![0f32; len];
        self.exec.copy_dtoh(buf, &mut v)?;
        Ok(v)
    }

    fn copy_into(
        &self,
        src: &DeviceBuffer<f32>,
        len: usize,
        dst: &mut DeviceBuffer<f32>,
        offset: usize,
    ) -> Result<()> {
        check_len("source buffer", src.len(), len)?;
        check_len("destination buffer", dst.len(), offset + len)?;
        self.exec.copy_dtod(src, len, dst, offset)
    }

    fn free_memory(&self) -> Result<Option<u64>> {
        self.exec.free_memory()
    }
}
