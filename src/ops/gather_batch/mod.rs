//! The GPU data path's batch assembly (driven by `crate::feed`): a training batch gathered
//! from the u8 image set in device memory by the pass's order, mirrored where
//! `--augment flip` marks an image, scaled by 1/255, with its one-hot labels.
//!
//! - CPU: no kernel; the host path builds batches with `ImageSet::fill_batch_augmented`,
//!   the reference the GPU's batches are tested against (tests/device_data.rs).
//! - CUDA (`cuda.rs`, `kernels/gather_batch.cu`): one thread per value.

pub(crate) mod cuda;
