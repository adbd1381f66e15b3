// Reference convolution kernels (one thread per output; see gemm_naive.cuh): the
// "simple variant" beside each tiled kernel of conv2d.cu (llm.c's habit).
// Host side: src/ops/gemm/cuda.rs (Variant::Naive), for src/ops/conv2d/cuda.rs.

#include "gemm_naive.cuh"

__global__ void conv_fwd_naive(GemmArgs p) {
    NAIVE_LOOP(p) {
        const int m = idx / p.N, oc = idx - m * p.N;
        const int pixels = p.out_h * p.out_w, n = m / pixels, rem = m - n * pixels;
        const int oh = rem / p.out_w, ow = rem - oh * p.out_w;
        float acc = 0.0f;
        for (int kh = 0; kh < p.kernel_h; ++kh)
            for (int kw = 0; kw < p.kernel_w; ++kw) {
                const int ih = oh + kh - p.pad_top, iw = ow + kw - p.pad_left;
                if (ih < 0 || ih >= p.in_h || iw < 0 || iw >= p.in_w) continue;
                for (int ic = 0; ic < p.in_c; ++ic)
                    acc = fmaf(p.a[((n * p.in_h + ih) * p.in_w + iw) * p.in_c + ic],
                               p.b[((kh * p.kernel_w + kw) * p.in_c + ic) * p.out_c + oc], acc);
            }
        naive_store(p, m, oc, acc);
    }
}

__global__ void conv_bwd_data_naive(GemmArgs p) {
    NAIVE_LOOP(p) {
        const int m = idx / p.N, ic = idx - m * p.N;
        const int pixels = p.in_h * p.in_w, n = m / pixels, rem = m - n * pixels;
        const int ih = rem / p.in_w, iw = rem - ih * p.in_w;
        float acc = 0.0f;
        for (int kh = 0; kh < p.kernel_h; ++kh)
            for (int kw = 0; kw < p.kernel_w; ++kw) {
                const int oh = ih + p.pad_top - kh, ow = iw + p.pad_left - kw;
                if (oh < 0 || oh >= p.out_h || ow < 0 || ow >= p.out_w) continue;
                for (int oc = 0; oc < p.out_c; ++oc)
                    acc = fmaf(p.a[((n * p.out_h + oh) * p.out_w + ow) * p.out_c + oc],
                               p.b[((kh * p.kernel_w + kw) * p.in_c + ic) * p.out_c + oc], acc);
            }
        naive_store(p, m, ic, acc);
    }
}

// Rows 0..patch-1: dw; row `ones_row` (= patch): db.
__global__ void conv_bwd_filter_naive(GemmArgs p) {
    NAIVE_LOOP(p) {
        const int m = idx / p.N, oc = idx - m * p.N;
        const int patch = p.kernel_h * p.kernel_w * p.in_c;
        int dh = 0, dw = 0, ic = 0;
        if (m < patch) {
            const int t = m / p.in_c;
            ic = m - t * p.in_c;
            dh = t / p.kernel_w - p.pad_top;
            dw = t % p.kernel_w - p.pad_left;
        }
        float acc = 0.0f;
        for (int px = 0; px < p.K; ++px) {
            const int pixels = p.out_h * p.out_w, n = px / pixels, rem = px - n * pixels;
            const int oh = rem / p.out_w, ow = rem - oh * p.out_w;
            float a = 1.0f;
            if (m < patch) {
                const int ih = oh + dh, iw = ow + dw;
                if (ih < 0 || ih >= p.in_h || iw < 0 || iw >= p.in_w) continue;
                a = p.a[((n * p.in_h + ih) * p.in_w + iw) * p.in_c + ic];
            }
            acc = fmaf(a, p.b[px * p.out_c + oc], acc);
        }
        naive_store(p, m, oc, acc);
    }
}

