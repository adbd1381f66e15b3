//! The emulator's device memory: allocations in the arena of
//! src/executor/emulator/memcheck.cpp, whose exact bounds every kernel access is checked
//! against, freed in stream order (as `cuMemFreeAsync`), and the host's staging buffers.

use std::ffi::{CStr, c_char, c_void};
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

use super::stream::Queue;
use crate::executor::DeviceElem;
use crate::executor::kernels::EMU_MEMORY;
use crate::{Error, Result};

/// `len` elements of emulated device memory.
pub(crate) struct DeviceMemory<T> {
    addr: usize,
    len: usize,
    queue: Arc<Queue>,
    _t: PhantomData<T>,
}

impl<T: DeviceElem> DeviceMemory<T> {
    /// `len` elements, every byte set to `fill`.
    pub(super) fn new(len: usize, fill: u8, queue: &Arc<Queue>) -> Result<Self> {
        let memory = EMU_MEMORY.ok_or_else(|| {
            Error::Device("the CUDA emulator is not built for this target (unix only)".into())
        })?;
        let bytes = len
            .checked_mul(size_of::<T>())
            .ok_or_else(|| Error::Device(format!("buffer of {len} elements is too large")))?;
        let mut err = [0 as c_char; 256];
        // SAFETY: the allocator writes at most `err.len()` bytes, NUL included.
        let p = unsafe { (memory.alloc)(bytes, fill, err.as_mut_ptr(), err.len()) };
        if p.is_null() {
            // SAFETY: NUL-terminated by the allocator when it returns null.
            let msg = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy();
            return Err(Error::Device(msg.into_owned()));
        }
        Ok(DeviceMemory {
            addr: p as usize,
            len,
            queue: Arc::clone(queue),
            _t: PhantomData,
        })
    }
    pub(crate) fn len(&self) -> usize {
        self.len
    }
    /// The address kernels are given.
    pub(crate) fn addr(&self) -> usize {
        self.addr
    }
    /// The stream the memory is freed on (its executor's).
    pub(super) fn queue(&self) -> &Arc<Queue> {
        &self.queue
    }
}

impl<T> Drop for DeviceMemory<T> {
    fn drop(&mut self) {
        let (addr, free) = (self.addr, EMU_MEMORY.map(|m| m.free));
        // After the work queued before it, which may still use the memory.
        self.queue.submit_always(move || {
            if let Some(free) = free {
                // SAFETY: allocated by `alloc` and freed once.
                unsafe { free(addr as *mut c_void) }
            }
        });
    }
}

/// Copies `bytes` bytes from `src` to `dst`: the device's side of every copy.
///
/// # Safety
/// Both ranges are valid for the copy and do not overlap.
pub(super) unsafe fn copy_bytes(src: usize, dst: usize, bytes: usize) {
    // SAFETY: forwarded to the caller.
    unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst as *mut u8, bytes) }
}

/// A host buffer uploads are staged from (pinned memory on a GPU): the device reads it when
/// the copy runs, not when it is queued, so the host must wait before writing it again.
pub(crate) struct EmuStaging {
    bytes: Box<[u8]>,
    /// The last upload from it: the stream and the work's number.
    last_upload: Mutex<Option<(Arc<Queue>, u64)>>,
}

impl EmuStaging {
    pub(crate) fn new(len: usize) -> Self {
        EmuStaging {
            bytes: vec![0; len].into_boxed_slice(),
            last_upload: Mutex::new(None),
        }
    }
    /// The bytes, to fill, once the last upload from them has been copied.
    pub(crate) fn bytes_mut(&mut self) -> Result<&mut [u8]> {
        let last = self
            .last_upload
            .get_mut()
            .unwrap_or_else(|p| p.into_inner());
        if let Some((queue, seq)) = last.take() {
            queue.wait(seq)?;
        }
        Ok(&mut self.bytes)
    }
    /// Queues the copy of the first `len` bytes to `dst[offset..offset + len]`.
    pub(crate) fn upload(
        &self,
        queue: &Arc<Queue>,
        len: usize,
        dst: &DeviceMemory<u8>,
        offset: usize,
    ) -> Result<()> {
        if len > self.bytes.len() || offset + len > dst.len() {
            return Err(Error::Shape(format!(
                "staged upload: {len} bytes from a staging buffer of {} to offset {offset} of a buffer of {}",
                self.bytes.len(),
                dst.len()
            )));
        }
        let (src, to) = (self.bytes.as_ptr() as usize, dst.addr() + offset);
        // SAFETY: in bounds (checked above); the staging buffer outlives the copy (its drop
        // waits for it) and device memory is freed in stream order, after it.
        let seq = queue.submit(move || {
            unsafe { copy_bytes(src, to, len) };
            Ok(())
        })?;
        *self.last_upload.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Arc::clone(queue), seq));
        Ok(())
    }
}

impl Drop for EmuStaging {
    fn drop(&mut self) {
        if let Some((queue, seq)) = self.last_upload.get_mut().ok().and_then(|l| l.take()) {
            let _ = queue.wait(seq);
        }
    }
}
