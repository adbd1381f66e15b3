// Row-wise softmax, forward and backward, in f32. Host side: src/ops/softmax/cuda.rs.
// Reference: src/ops/softmax/cpu.rs.

#define SOFTMAX_FULL 0xffffffffu
// ROWS_PER_BLOCK warps per block, one per row.
#include "kernel_abi.cuh"
#include "sigmoid.cuh"
#define SOFTMAX_THREADS (32 * ROWS_PER_BLOCK)

__device__ __forceinline__ float softmax_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(SOFTMAX_FULL, v, o);
    return v;
}

__device__ __forceinline__ float softmax_warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(SOFTMAX_FULL, v, o));
    return v;
}

// probs = exp(z - max) / sum per row of [rows, cols] (as the CPU backend and TF). One warp
// per row, ROWS_PER_BLOCK rows per block, grid-stride over rows; lanes take the
// columns lane, lane+32, ... (coalesced). The exponentials are parked in `probs` by the
// lane that later divides them, so each is computed once.
__global__ void __launch_bounds__(SOFTMAX_THREADS)
    softmax_forward_rows(const float* __restrict__ logits, float* __restrict__ probs, int rows, int cols) {
    const int lane = threadIdx.x & 31;
    for (int row = blockIdx.x * ROWS_PER_BLOCK + (threadIdx.x >> 5); row < rows;
         row += gridDim.x * ROWS_PER_BLOCK) {
        const float* z = logits + (size_t)row * cols;
        float* p = probs + (size_t)row * cols;
        float m = -INFINITY;
        for (int c = lane; c < cols; c += 32) m = fmaxf(m, z[c]);
        m = softmax_warp_max(m);
        float sum = 0.0f;
        for (int c = lane; c < cols; c += 32) {
            const float e = expf(z[c] - m);
            p[c] = e;
            sum += e;
        }
        sum = softmax_warp_sum(sum);
        for (int c = lane; c < cols; c += 32) p[c] = p[c] / sum;
    }
}

// dlogits = p * (dp - sum(dp * p)) per row; same launch shape as softmax_forward_rows.
__global__ void __launch_bounds__(SOFTMAX_THREADS)
    softmax_backward_rows(const float* __restrict__ probs, const float* __restrict__ dprobs,
                          float* __restrict__ dlogits, int rows, int cols) {
    const int lane = threadIdx.x & 31;
    for (int row = blockIdx.x * ROWS_PER_BLOCK + (threadIdx.x >> 5); row < rows;
         row += gridDim.x * ROWS_PER_BLOCK) {
        const size_t base = (size_t)row * cols;
        float dot = 0.0f;
        for (int c = lane; c < cols; c += 32) dot += probs[base + c] * dprobs[base + c];
        dot = softmax_warp_sum(dot);
        for (int c = lane; c < cols; c += 32) dlogits[base + c] = probs[base + c] * (dprobs[base + c] - dot);
    }
}

// ------------------------------------------------------------------------------------------
// The sigmoid output of sigmoid-focal's models, elementwise, grid-stride (one thread per
// element). Reference: src/ops/softmax/cpu.rs `sigmoid`.

// probs = sigmoid(z) (sigmoid.cuh); `unused` keeps the signature of sigmoid_backward_elems.
__global__ void sigmoid_forward_elems(const float* __restrict__ logits, const float* __restrict__ unused,
                                      float* __restrict__ probs, int n) {
    (void)unused;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        probs[i] = ff_sigmoid(logits[i]);
}

// dlogits = dprobs * p (1 - p).
__global__ void sigmoid_backward_elems(const float* __restrict__ probs, const float* __restrict__ dprobs,
                                       float* __restrict__ dlogits, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        const float p = probs[i];
        dlogits[i] = dprobs[i] * (p * (1.0f - p));
    }
}
