// The ReLU gradient: memory-bound, a grid-stride loop, float4 (16-byte) accesses for the
// bulk of the buffer (device buffers are 256-byte aligned) and scalars for the tail.
// Host side: src/ops/relu/cuda.rs.

// dy[i] = 0 where y[i] <= 0 (y is the ReLU's output; the gradient at exactly 0 is 0, as in
// TensorFlow), for i < n.
__global__ void relu_bwd(const float* __restrict__ y, float* __restrict__ dy, int n) {
    const int stride = gridDim.x * blockDim.x;
    const int start = blockIdx.x * blockDim.x + threadIdx.x;
    const int n4 = n / 4;
    const float4* y4 = reinterpret_cast<const float4*>(y);
    float4* d4 = reinterpret_cast<float4*>(dy);
    for (int i = start; i < n4; i += stride) {
        const float4 v = __ldg(y4 + i);
        float4 d = d4[i];
        if (v.x <= 0.0f) d.x = 0.0f;
        if (v.y <= 0.0f) d.y = 0.0f;
        if (v.z <= 0.0f) d.z = 0.0f;
        if (v.w <= 0.0f) d.w = 0.0f;
        d4[i] = d;
    }
    for (int i = n4 * 4 + start; i < n; i += stride)
        if (__ldg(y + i) <= 0.0f) dy[i] = 0.0f;
}
