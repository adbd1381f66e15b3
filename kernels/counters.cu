// The per-epoch step counters that replace a per-step read of the loss and the
// probabilities. Host side: src/ops/counters/cuda.rs. Reference: src/ops/counters/cpu.rs.

#include "kernel_abi.cuh"

// Index of the first largest value of a row (as `argmax_rows` on the host: a NaN never wins).
__device__ __forceinline__ int count_argmax(const float* row, int classes) {
    int best = 0;
    for (int c = 1; c < classes; ++c)
        if (row[c] > row[best]) best = c;
    return best;
}

// Adds one step to the counters: `loss` holds the loss and the loss kernels' input-error
// flag (loss/loss.cu's `loss_reduce` result), `probs` and `y` the batch's probabilities
// and labels (one-hot, or multi-hot for a multi-label set). A failed step is recorded once (the first) and nothing is added from
// then on; adam_update_f32 reads the record and leaves the weights alone. One block; the
// count is reduced in a fixed order, so the counters are bit-reproducible.
__global__ void __launch_bounds__(COUNT_THREADS)
    count_step(const float* __restrict__ loss, const float* __restrict__ probs, const float* __restrict__ y,
               int batch, int classes, int step, double* __restrict__ counters) {
    __shared__ int partial[COUNT_THREADS];
    int correct = 0;
    for (int row = threadIdx.x; row < batch; row += COUNT_THREADS) {
        const long long base = (long long)row * classes;
        // A hit: the predicted class's label is the row's largest and positive (one-hot:
        // top-1 accuracy; multi-hot: the top class is one of the image's labels).
        const float label = y[base + count_argmax(probs + base, classes)];
        correct += label > 0.0f && label == y[base + count_argmax(y + base, classes)];
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
            counters[COUNTER_FAILURE] = bad_inputs ? (double)FAILURE_BAD_INPUTS : (double)FAILURE_LOSS_NOT_FINITE;
        } else {
            // The product is exact in double (24 + 31 bits), so FMA contraction cannot
            // change the sum: the CPU adds loss * batch in the same order.
            counters[COUNTER_LOSS_SUM] += (double)value * (double)batch;
            counters[COUNTER_CORRECT] += (double)partial[0];
            counters[COUNTER_SEEN] += (double)batch;
        }
    }
}
