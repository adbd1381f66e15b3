// The shared body of the reference ("naive") GEMM-shaped kernels: one thread per output
// element and a plain loop over the reduction. They take the same GemmArgs as the tiled
// kernels, so the same host code launches either; the tests check both against the CPU
// and the op timings compare them. Never used in training. Host side: src/ops/gemm/cuda.rs.
#pragma once

#include "gemm_tile.cuh"

__device__ __forceinline__ void naive_store(const GemmArgs& p, int m, int n, float acc) {
    if (p.bias) acc += p.bias[n];
    if (p.relu && acc <= 0.0f) acc = 0.0f;
    float* row = m < p.m_split ? p.out + m * p.ldo : p.out2 + (m - p.m_split) * p.ldo;
    row[n] = acc;
}

// One (row, column) of C per thread, grid-stride.
#define NAIVE_LOOP(p)                                                                                  \
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < (p).M * (p).N; idx += gridDim.x * blockDim.x)

