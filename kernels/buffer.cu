// Device buffer utilities: fill, a grid-stride loop. Host side: the CUDA backend's `fill`
// (src/ops/buffer/cuda.rs). Copies are the driver's (Executor::copy_dtod).

// p[i] = value for i < n.
__global__ void fill_f32(float* __restrict__ p, int n, float value) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) p[i] = value;
}
