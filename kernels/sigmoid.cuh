// The logistic sigmoid of sigmoid-focal's models, shared by softmax.cu (the head's forward)
// and loss.cu (the loss from logits). Reference: src/ops/softmax/cpu.rs `sigmoid`.
#pragma once

// 1 / (1 + exp(-z)) from the exponential of a non-positive number only (no overflow).
__device__ __forceinline__ float ff_sigmoid(float z) {
    if (z >= 0.0f) return 1.0f / (1.0f + expf(-z));
    const float e = expf(z);
    return e / (1.0f + e);
}
