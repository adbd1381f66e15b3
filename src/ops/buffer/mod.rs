//! Device buffers: allocation, upload, read-back and device-side copies; the trait every
//! op trait builds on ([`Storage::Buf`] is the buffer type of the backend's ops).
//!
//! - CPU (`cpu.rs`): `Vec<T>`.
//! - CUDA (`cuda.rs`, `kernels/buffer.cu`): `DeviceBuffer<f32>`, copies by the executor (the
//!   driver's), and the `fill_f32` kernel.

mod cpu;
mod cuda;

use crate::profile::{Phase, Profiled, Timeline};
use crate::{Element, Result};

/// A backend's buffers.
pub trait Storage {
    type E: Element;
    type Buf;

    /// Short name for logs: "cpu", "cuda", "cuda-emu".
    fn name(&self) -> &'static str;

    /// The format the convolution and dense products of this backend round their operands
    /// to (`--precision`; see [`crate::precision`]): the coarsest any layer uses.
    fn precision(&self) -> crate::precision::Precision {
        crate::precision::Precision::Fp32
    }

    /// A zero-filled buffer of `len` elements.
    fn zeros(&self, len: usize) -> Result<Self::Buf>;
    /// Copy `host` into the start of `buf`.
    fn write(&self, buf: &mut Self::Buf, host: &[Self::E]) -> Result<()>;
    /// Copy the first `len` elements of `buf` to the host.
    fn read(&self, buf: &Self::Buf, len: usize) -> Result<Vec<Self::E>>;
    /// A new buffer holding `host`.
    fn upload(&self, host: &[Self::E]) -> Result<Self::Buf> {
        let mut buf = self.zeros(host.len())?;
        self.write(&mut buf, host)?;
        Ok(buf)
    }

    /// Copies the first `len` elements of `src` to `dst[offset..offset + len]`.
    fn copy_into(
        &self,
        src: &Self::Buf,
        len: usize,
        dst: &mut Self::Buf,
        offset: usize,
    ) -> Result<()>;
    /// Free device memory in bytes, where the backend knows it (a GPU).
    fn free_memory(&self) -> Result<Option<u64>> {
        Ok(None)
    }
}

/// Under `--profile`: the op, timed as part of its phase of the step.
impl<B: Storage + Timeline> Storage for Profiled<'_, B> {
    type E = B::E;
    type Buf = B::Buf;

    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn precision(&self) -> crate::precision::Precision {
        self.inner.precision()
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
