// The device data path's batch assembly: training batches gathered from the u8 image set on
// the device. Host side: src/ops/gather_batch/cuda.rs (driven by src/feed/cuda.rs).
// Reference: the CPU path (ImageSet::fill_batch_augmented).

// BATCH_THREADS, and FLIP_BIT: bit 31 of an entry of the epoch's order, mirror the image
// left-right (`--augment flip`).
#include "kernel_abi.cuh"

// x[slot] = image entries[first + slot] of `set` as f32 in [0, 1] (times the f32 nearest
// 1/255, as the CPU path and Keras' Rescaling), mirrored when the entry's FLIP_BIT is set;
// y[slot] = the one-hot row of labels[first + slot]. One thread per value, grid-stride;
// the host keeps batch * height * width * channels below 2^31, so the per-value index
// arithmetic is 32-bit (64-bit division spilled registers), only the set offset is 64-bit.
__global__ void __launch_bounds__(BATCH_THREADS)
    gather_batch_u8(const unsigned char* __restrict__ set, const unsigned int* __restrict__ entries,
                    const int* __restrict__ labels, int first, int batch, int height, int width,
                    int channels, int classes, float* __restrict__ x, float* __restrict__ y) {
    const unsigned int image_len = (unsigned int)(height * width * channels);
    const unsigned int row_len = (unsigned int)(width * channels);
    const unsigned int total = image_len * (unsigned int)batch;
    const unsigned int stride = gridDim.x * blockDim.x;
    const unsigned int tid = blockIdx.x * blockDim.x + threadIdx.x;
    for (unsigned int i = tid; i < total; i += stride) {
        const unsigned int slot = i / image_len;
        unsigned int at = i - slot * image_len;
        const unsigned int entry = entries[first + slot];
        if (entry & FLIP_BIT) {
            const unsigned int row = at / row_len;
            const unsigned int in_row = at - row * row_len;
            const unsigned int col = in_row / (unsigned int)channels;
            at = row * row_len + ((unsigned int)width - 1u - col) * channels + (in_row - col * channels);
        }
        const long long image = (long long)(entry & ~FLIP_BIT);
        x[i] = (float)set[image * image_len + at] * (1.0f / 255.0f);
    }
    const unsigned int labels_total = (unsigned int)(batch * classes);
    for (unsigned int i = tid; i < labels_total; i += stride) {
        const unsigned int slot = i / (unsigned int)classes;
        y[i] = (labels[first + slot] == (int)(i - slot * classes)) ? 1.0f : 0.0f;
    }
}
