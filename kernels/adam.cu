// The fused Adam update, in f32. Host side: src/ops/adam/cuda.rs. Reference:
// src/ops/adam/cpu.rs.

#include "kernel_abi.cuh"

// Keras 3 Adam, one element: m += (g - m)(1-b1); v += (g^2 - v)(1-b2);
// p -= m * step_size / (sqrt(v) + eps).
__device__ __forceinline__ void adam_one(float& p, float g, float& m, float& v, float step_size, float omb1,
                                         float omb2, float eps) {
    m += (g - m) * omb1;
    v += (g * g - v) * omb2;
    p -= m * step_size / (sqrtf(v) + eps);
}

// The fused Adam update of n parameters in place: float4 loads and stores when all four
// buffers are 16-byte aligned (then the last n % 4 elements by the scalar tail), else all
// scalar; grid-stride loops, ADAM_THREADS threads per block. With `counters` (else null),
// nothing is updated once they record a failed step (a non-finite loss), so no NaN reaches
// the weights without the host reading the loss every step.
__global__ void __launch_bounds__(ADAM_THREADS)
    adam_update_f32(float* __restrict__ param, const float* __restrict__ grad, float* __restrict__ m,
                    float* __restrict__ v, long long n, float step_size, float one_minus_beta1,
                    float one_minus_beta2, float epsilon, const double* __restrict__ counters) {
    if (counters != nullptr && counters[COUNTER_FAILED_STEP] != 0.0) return;
    const long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long stride = (long long)gridDim.x * blockDim.x;
    const unsigned long long addr_bits = (unsigned long long)param | (unsigned long long)grad |
                                         (unsigned long long)m | (unsigned long long)v;
    long long done = 0;
    if ((addr_bits & 15ull) == 0) {
        const long long n4 = n / 4;
        float4* p4 = reinterpret_cast<float4*>(param);
        const float4* g4 = reinterpret_cast<const float4*>(grad);
        float4* m4 = reinterpret_cast<float4*>(m);
        float4* v4 = reinterpret_cast<float4*>(v);
        for (long long i = tid; i < n4; i += stride) {
            float4 p = p4[i], mm = m4[i], vv = v4[i];
            const float4 g = g4[i];
            adam_one(p.x, g.x, mm.x, vv.x, step_size, one_minus_beta1, one_minus_beta2, epsilon);
            adam_one(p.y, g.y, mm.y, vv.y, step_size, one_minus_beta1, one_minus_beta2, epsilon);
            adam_one(p.z, g.z, mm.z, vv.z, step_size, one_minus_beta1, one_minus_beta2, epsilon);
            adam_one(p.w, g.w, mm.w, vv.w, step_size, one_minus_beta1, one_minus_beta2, epsilon);
            p4[i] = p;
            m4[i] = mm;
            v4[i] = vv;
        }
        done = n4 * 4;
    }
    for (long long i = done + tid; i < n; i += stride) {
        float p = param[i], mm = m[i], vv = v[i];
        adam_one(p, grad[i], mm, vv, step_size, one_minus_beta1, one_minus_beta2, epsilon);
        param[i] = p;
        m[i] = mm;
        v[i] = vv;
    }
}
