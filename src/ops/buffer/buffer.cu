// Device buffer utilities: fill and copy, grid-stride loops. Host side:
// src/ops/buffer/cuda.rs and the CUDA backend's `fill`.

// p[i] = value for i < n.
__global__ void fill_f32(float* __restrict__ p, int n, float value) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) p[i] = value;
}

// dst[i] = src[i] for i < n (a device-side copy into part of a larger buffer, e.g. a batch's
// logits into the validation pass's).
__global__ void copy_f32(const float* __restrict__ src, float* __restrict__ dst, long long n) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) dst[i] = src[i];
}
