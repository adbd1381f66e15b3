// Reference dense kernels (one thread per output; see gemm_naive.cuh): the "simple
// variant" beside each tiled kernel of dense.cu. Host side: src/ops/gemm/cuda.rs
// (Variant::Naive), for src/ops/dense/cuda.rs.

#include "gemm_naive.cuh"

// y = x * w (+ bias, ReLU): A row-major [M, K] (lda), B row-major [K, N] (ldb).
__global__ void dense_fwd_naive(GemmArgs p) {
    NAIVE_LOOP(p) {
        const int m = idx / p.N, n = idx - m * p.N;
        float acc = 0.0f;
        for (int k = 0; k < p.K; ++k) acc = fmaf(p.a[m * p.lda + k], p.b[k * p.ldb + n], acc);
        naive_store(p, m, n, acc);
    }
}

// [dw; db] = [x | 1]^T * dy: A[m][k] = x[k * lda + m] for m < m_split, 1 on ones_row.
__global__ void dense_bwd_w_naive(GemmArgs p) {
    NAIVE_LOOP(p) {
        const int m = idx / p.N, n = idx - m * p.N;
        float acc = 0.0f;
        for (int k = 0; k < p.K; ++k) {
            const float a = m < p.m_split ? p.a[k * p.lda + m] : (m == p.ones_row ? 1.0f : 0.0f);
            acc = fmaf(a, p.b[k * p.ldb + n], acc);
        }
        naive_store(p, m, n, acc);
    }
}

// dx = dy * w^T: A row-major [M, K], B[k][n] = w[n * ldb + k].
__global__ void dense_bwd_x_naive(GemmArgs p) {
    NAIVE_LOOP(p) {
        const int m = idx / p.N, n = idx - m * p.N;
        float acc = 0.0f;
        for (int k = 0; k < p.K; ++k) acc = fmaf(p.a[m * p.lda + k], p.b[n * p.ldb + k], acc);
        naive_store(p, m, n, acc);
    }
}
