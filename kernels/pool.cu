// Max-pooling with a square window and equal stride (any size; odd sizes are floored, as in
// Keras), NHWC. Host side: src/ops/pool/cuda.rs. Memory-bound: one thread per output
// element and channel, consecutive threads on consecutive channels (coalesced); the _v4
// variants move 4 channels per thread as float4 (16-byte) loads and stores when the channel
// count is a multiple of 4.
//
// Backward routes each output gradient to the FIRST maximal input of its window in
// row-major window order (as the CPU backend does) and writes every other input of the
// window with zero; the threads of the last output row/column also zero the inputs that lie
// in no window (the floored edge), so dx is fully written without a separate pass.

struct PoolGeom {
    int batch, in_h, in_w, channels, size, out_h, out_w;
};

__device__ __forceinline__ PoolGeom pool_geom(int batch, int in_h, int in_w, int channels, int size) {
    return PoolGeom{batch, in_h, in_w, channels, size, in_h / size, in_w / size};
}

// Output index -> (n, oh, ow, c-group) and the input offset of the window's first element.
__device__ __forceinline__ void pool_locate(const PoolGeom& g, int groups, int idx, int& n, int& oh, int& ow,
                                            int& cg) {
    cg = idx % groups;
    int t = idx / groups;
    ow = t % g.out_w;
    t /= g.out_w;
    oh = t % g.out_h;
    n = t / g.out_h;
}

__device__ __forceinline__ float4 max4(float4 a, float4 b) {
    // `b > a ? b : a` per lane, like the CPU's `if v > best { best = v }`.
    return make_float4(b.x > a.x ? b.x : a.x, b.y > a.y ? b.y : a.y, b.z > a.z ? b.z : a.z, b.w > a.w ? b.w : a.w);
}

__global__ void maxpool_fwd(const float* __restrict__ x, float* __restrict__ y, int batch, int in_h, int in_w,
                            int channels, int size) {
    const PoolGeom g = pool_geom(batch, in_h, in_w, channels, size);
    const int total = g.batch * g.out_h * g.out_w * g.channels;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        int n, oh, ow, c;
        pool_locate(g, g.channels, i, n, oh, ow, c);
        const float* w = x + ((n * g.in_h + oh * g.size) * g.in_w + ow * g.size) * g.channels + c;
        float best = -INFINITY;
        for (int dh = 0; dh < g.size; ++dh)
            for (int dw = 0; dw < g.size; ++dw) {
                const float v = __ldg(w + (dh * g.in_w + dw) * g.channels);
                if (v > best) best = v;
            }
        y[i] = best;
    }
}

__global__ void maxpool_fwd_v4(const float* __restrict__ x, float* __restrict__ y, int batch, int in_h, int in_w,
                               int channels, int size) {
    const PoolGeom g = pool_geom(batch, in_h, in_w, channels, size);
    const int groups = g.channels / 4;
    const int total = g.batch * g.out_h * g.out_w * groups;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        int n, oh, ow, cg;
        pool_locate(g, groups, i, n, oh, ow, cg);
        const float* w = x + ((n * g.in_h + oh * g.size) * g.in_w + ow * g.size) * g.channels + cg * 4;
        float4 best = make_float4(-INFINITY, -INFINITY, -INFINITY, -INFINITY);
        for (int dh = 0; dh < g.size; ++dh)
            for (int dw = 0; dw < g.size; ++dw)
                best = max4(best, __ldg(reinterpret_cast<const float4*>(w + (dh * g.in_w + dw) * g.channels)));
        reinterpret_cast<float4*>(y)[i] = best;
    }
}

// Zeros the inputs right of / below the windows that the output (oh, ow) owns at the edge.
// `VW` channels starting at `c`.
template <int VW>
__device__ __forceinline__ void pool_zero_edge(const PoolGeom& g, float* dx, int n, int oh, int ow, int c) {
    const int covered_h = g.out_h * g.size, covered_w = g.out_w * g.size;
    const bool last_col = ow == g.out_w - 1, last_row = oh == g.out_h - 1;
    auto zero = [&](int ih, int iw) {
        float* d = dx + ((n * g.in_h + ih) * g.in_w + iw) * g.channels + c;
        if (VW == 4) {
            *reinterpret_cast<float4*>(d) = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        } else {
            d[0] = 0.0f;
        }
    };
    if (last_col)
        for (int ih = oh * g.size; ih < oh * g.size + g.size; ++ih)
            for (int iw = covered_w; iw < g.in_w; ++iw) zero(ih, iw);
    if (last_row) {
        const int w_end = last_col ? g.in_w : ow * g.size + g.size;
        for (int ih = covered_h; ih < g.in_h; ++ih)
            for (int iw = ow * g.size; iw < w_end; ++iw) zero(ih, iw);
    }
}

__global__ void maxpool_bwd(const float* __restrict__ x, const float* __restrict__ dy, float* __restrict__ dx,
                            int batch, int in_h, int in_w, int channels, int size) {
    const PoolGeom g = pool_geom(batch, in_h, in_w, channels, size);
    const int total = g.batch * g.out_h * g.out_w * g.channels;
    const int window = g.size * g.size;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        int n, oh, ow, c;
        pool_locate(g, g.channels, i, n, oh, ow, c);
        const int first = ((n * g.in_h + oh * g.size) * g.in_w + ow * g.size) * g.channels + c;
        float best = 0.0f;
        int at = 0;
        for (int k = 0; k < window; ++k) {
            const int dh = k / g.size, dw = k - dh * g.size;
            const float v = __ldg(x + first + (dh * g.in_w + dw) * g.channels);
            if (k == 0 || v > best) {
                best = v;
                at = k;
            }
        }
        const float grad = dy[i];
        for (int k = 0; k < window; ++k) {
            const int dh = k / g.size, dw = k - dh * g.size;
            dx[first + (dh * g.in_w + dw) * g.channels] = k == at ? grad : 0.0f;
        }
        pool_zero_edge<1>(g, dx, n, oh, ow, c);
    }
}

__global__ void maxpool_bwd_v4(const float* __restrict__ x, const float* __restrict__ dy, float* __restrict__ dx,
                               int batch, int in_h, int in_w, int channels, int size) {
    const PoolGeom g = pool_geom(batch, in_h, in_w, channels, size);
    const int groups = g.channels / 4;
    const int total = g.batch * g.out_h * g.out_w * groups;
    const int window = g.size * g.size;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        int n, oh, ow, cg;
        pool_locate(g, groups, i, n, oh, ow, cg);
        const int first = ((n * g.in_h + oh * g.size) * g.in_w + ow * g.size) * g.channels + cg * 4;
        float best[4];
        int at[4] = {0, 0, 0, 0};
        for (int k = 0; k < window; ++k) {
            const int dh = k / g.size, dw = k - dh * g.size;
            const float4 v4 = __ldg(reinterpret_cast<const float4*>(x + first + (dh * g.in_w + dw) * g.channels));
            const float v[4] = {v4.x, v4.y, v4.z, v4.w};
#pragma unroll
            for (int e = 0; e < 4; ++e)
                if (k == 0 || v[e] > best[e]) {
                    best[e] = v[e];
                    at[e] = k;
                }
        }
        const float4 grad = reinterpret_cast<const float4*>(dy)[i];
        for (int k = 0; k < window; ++k) {
            const int dh = k / g.size, dw = k - dh * g.size;
            *reinterpret_cast<float4*>(dx + first + (dh * g.in_w + dw) * g.channels) =
                make_float4(at[0] == k ? grad.x : 0.0f, at[1] == k ? grad.y : 0.0f, at[2] == k ? grad.z : 0.0f,
                            at[3] == k ? grad.w : 0.0f);
        }
        pool_zero_edge<4>(g, dx, n, oh, ow, cg * 4);
    }
}
