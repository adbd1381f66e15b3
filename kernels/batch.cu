// The device data path: training batches gathered from the u8 image set on the device, and
// the per-epoch counters that replace a per-step read of the loss and the probabilities.
// Host side: src/feed/cuda.rs and src/backend/cuda/counters.rs. Reference: the CPU
// path (ImageSet::fill_batch_augmented, CpuBackend's counters in src/backend/cpu.rs).

#define BATCH_THREADS 256
#define COUNT_THREADS 256
// Bit 31 of an entry of the epoch's order: mirror the image left-right (`--augment flip`).
#define FLIP_BIT 0x80000000u

#include "counters.cuh"

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

// Index of the first largest value of a row (as `argmax_rows` on the host: a NaN never wins).
__device__ __forceinline__ int count_argmax(const float* row, int classes) {
    int best = 0;
    for (int c = 1; c < classes; ++c)
        if (row[c] > row[best]) best = c;
    return best;
}

// Adds one step to the counters: `loss` holds the loss and the loss kernels' input-error
// flag (kernels/loss.cu's `loss_reduce` result), `probs` and `y` the batch's probabilities
// and one-hot labels. A failed step is recorded once (the first) and nothing is added from
// then on; adam_update_f32 reads the record and leaves the weights alone. One block; the
// count is reduced in a fixed order, so the counters are bit-reproducible.
__global__ void __launch_bounds__(COUNT_THREADS)
    count_step(const float* __restrict__ loss, const float* __restrict__ probs, const float* __restrict__ y,
               int batch, int classes, int step, double* __restrict__ counters) {
    __shared__ int partial[COUNT_THREADS];
    int correct = 0;
    for (int row = threadIdx.x; row < batch; row += COUNT_THREADS) {
        const long long base = (long long)row * classes;
        correct += count_argmax(probs + base, classes) == count_argmax(y + base, classes);
    }
    partial[threadIdx.x] = correct;
    __syncthreads();
    for (int half = COUNT_THREADS / 2; half > 0; half >>= 1) {
        if (threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0 && counters[COUNTER_FAILED_STEP] == 0.0) {
        const float value = loss[0];
        const bool bad_inputs = loss[1] != 0.0f;
        if (bad_inputs || !isfinite(value)) {
            counters[COUNTER_FAILED_STEP] = (double)step + 1.0;
            counters[COUNTER_FAILURE] = bad_inputs ? 2.0 : 1.0;
        } else {
            // The product is exact in double (24 + 31 bits), so FMA contraction cannot
            // change the sum: the CPU adds loss * batch in the same order.
            counters[COUNTER_LOSS_SUM] += (double)value * (double)batch;
            counters[COUNTER_CORRECT] += (double)partial[0];
            counters[COUNTER_SEEN] += (double)batch;
        }
    }
}
