// gemm_tile.cuh: the shared-memory-tiled, register-blocked SGEMM core behind the convolution
// (conv2d.cu) and dense (dense.cu) kernels. Host side: src/ops/gemm/cuda.rs.
//
//   C[M, N] = A[M, K] * B[K, N]   (+ bias[n], then ReLU, in the epilogue)
//
// A and B are never materialised: a *loader* produces the elements of one tile from wherever
// they live (a row-major matrix, its transpose, an image gathered as im2col rows, ...). Each
// block computes a BM x BN tile of C with THREADS threads; each thread a TM x TN sub-tile in
// registers (register blocking), reading BK-deep slices of A and B from shared memory that
// are double-buffered: the global loads of slice t+1 are issued into registers before the
// FMAs of slice t, and stored to the other buffer after them, so one barrier per slice.
// Loaders read VW = 4 consecutive elements as one float4 (16-byte load) when the host has
// checked that the contiguous dimension allows it, else scalars.
//
// Split-K: blockIdx.z takes the K range [z*k_chunk, min(K, (z+1)*k_chunk)); with a workspace
// (`partial`) each slice writes its own partial tile and gemm_splitk_reduce (gemm_splitk.cu, on
// gemm_splitk_reduce_body below; launched by the host as a second pass) sums them in a fixed order, so results are deterministic.
//
// Grid: x = M tiles (up to 2^31-1), y = N tiles, z = K slices. Sizes are ints: the host
// checks that every tensor has fewer than 2^31 elements.
#pragma once

// GemmArgs (the arguments of every GEMM-shaped kernel), GEMM_THREADS and GEMM_BK are
// generated from src/ops/kernel_abi.rs, which also lists the tile shapes and the kernels
// built from this core (appended to conv2d.cu and dense.cu by build.rs).
#include "kernel_abi.cuh"
#include <cuda_bf16.h>
#include <mma.h>

namespace tiled_gemm {

template <int BM_, int BN_, int BK_, int TM_, int TN_>
struct Tile {
    static constexpr int BM = BM_, BN = BN_, BK = BK_, TM = TM_, TN = TN_;
    static constexpr int THREADS = (BM / TM) * (BN / TN);
    static_assert(BM % TM == 0 && BN % TN == 0, "tile not divisible by thread tile");
    static_assert(THREADS % BK == 0 && THREADS >= BM && THREADS >= BN, "loader mapping");
    static_assert(THREADS == GEMM_THREADS && BK == GEMM_BK, "tile shapes come from src/ops/kernel_abi.rs");
    static_assert(GEMM_VECTOR_WIDTH == 4, "the _v loaders read float4 (load_vec)");
};

__device__ __forceinline__ void set_vec(float* r, float4 v) {
    r[0] = v.x;
    r[1] = v.y;
    r[2] = v.z;
    r[3] = v.w;
}

template <int VW>
__device__ __forceinline__ void load_vec(float* r, const float* p) {
    if (VW == 4) {
        set_vec(r, __ldg(reinterpret_cast<const float4*>(p)));
    } else {
        r[0] = __ldg(p);
    }
}

template <int VW>
__device__ __forceinline__ void zero_vec(float* r) {
#pragma unroll
    for (int e = 0; e < VW; ++e) r[e] = 0.0f;
}

// ---- loaders whose source is contiguous along k: each thread keeps one k offset (kk) and
// several rows (of A) or columns (of B) ----------------------------------------------------------

// Shared bookkeeping of a k-contiguous loader over a tile of ROWS x BK.
template <class T, int ROWS, int VW>
struct KFast {
    static constexpr int KV = T::BK / VW;  // vectors per tile row
    static constexpr int NV = ROWS * KV;   // vectors per tile
    static constexpr int IT = (NV + T::THREADS - 1) / T::THREADS;
    static constexpr int RSTEP = T::THREADS / KV;
    static constexpr int REGS = IT * VW;
    __device__ static int kk(int tid) { return (tid % KV) * VW; }
    __device__ static int row(int tid, int it) { return tid / KV + it * RSTEP; }
    __device__ static bool used(int tid, int it) { return NV % T::THREADS == 0 || row(tid, it) < ROWS; }
    // Shared tile s[BK][LD]: element (row, k) at s[k * LD + row].
    // E: float, or __nv_bfloat16 for the BF16 tensor-core kernels (rounded to nearest even).
    template <int LD, class E>
    __device__ static void store(E* s, const float* r, int tid) {
        const int k = kk(tid);
#pragma unroll
        for (int it = 0; it < IT; ++it) {
            if (!used(tid, it)) continue;
#pragma unroll
            for (int e = 0; e < VW; ++e) s[(k + e) * LD + row(tid, it)] = E(r[it * VW + e]);
        }
    }
};

// A[m][k] = a[m * lda + k] (a row-major matrix).
template <class T, int VW>
struct ARowMajor {
    using F = KFast<T, T::BM, VW>;
    static constexpr int REGS = F::REGS;
    int tid, m0, k, k_end;
    __device__ void init(const GemmArgs& p, int m0_, int tid_, int k_begin, int k_end_) {
        tid = tid_;
        m0 = m0_;
        k = k_begin;
        k_end = k_end_;
    }
    __device__ void fetch(const GemmArgs& p, float* r) {
        const int kx = k + F::kk(tid);
#pragma unroll
        for (int it = 0; it < F::IT; ++it) {
            const int m = m0 + F::row(tid, it);
            if (F::used(tid, it) && m < p.M && kx < k_end) {
                load_vec<VW>(r + it * VW, p.a + m * p.lda + kx);
            } else {
                zero_vec<VW>(r + it * VW);
            }
        }
        k += T::BK;
    }
    template <int LD, class E>
    __device__ void store(E* s, const float* r) { F::template store<LD>(s, r, tid); }
};

// A[m][k] = im2col(x)[pixel m][patch element k]: the receptive field of output pixel m,
// k = (kh * kernel_w + kw) * in_c + ic, zero outside the image (padding).
template <class T, int VW>
struct AIm2col {
    using F = KFast<T, T::BM, VW>;
    static constexpr int REGS = F::REGS;
    int tid, k, k_end;
    int oh[F::IT], ow[F::IT], base[F::IT];
    __device__ void init(const GemmArgs& p, int m0, int tid_, int k_begin, int k_end_) {
        tid = tid_;
        k = k_begin;
        k_end = k_end_;
        const int pixels = p.out_h * p.out_w;
#pragma unroll
        for (int it = 0; it < F::IT; ++it) {
            const int m = m0 + F::row(tid, it);
            if (F::used(tid, it) && m < p.M) {
                const int n = m / pixels, rem = m - n * pixels;
                oh[it] = rem / p.out_w;
                ow[it] = rem - oh[it] * p.out_w;
                base[it] = ((n * p.in_h + oh[it]) * p.in_w + ow[it]) * p.in_c;
            } else {
                oh[it] = -(1 << 28);  // fails every bounds check below
                ow[it] = 0;
                base[it] = 0;
            }
        }
    }
    __device__ void fetch(const GemmArgs& p, float* r) {
        const int kx = k + F::kk(tid);
        int dh = -(1 << 28), dw = 0, off = 0;
        if (kx < k_end) {
            const int t = kx / p.in_c, ic = kx - t * p.in_c;
            const int kh = t / p.kernel_w, kw = t - kh * p.kernel_w;
            dh = kh - p.pad_top;
            dw = kw - p.pad_left;
            off = (dh * p.in_w + dw) * p.in_c + ic;
        }
#pragma unroll
        for (int it = 0; it < F::IT; ++it) {
            const int ih = oh[it] + dh, iw = ow[it] + dw;
            if ((unsigned)ih < (unsigned)p.in_h && (unsigned)iw < (unsigned)p.in_w) {
                load_vec<VW>(r + it * VW, p.a + base[it] + off);
            } else {
                zero_vec<VW>(r + it * VW);
            }
        }
        k += T::BK;
    }
    template <int LD, class E>
    __device__ void store(E* s, const float* r) { F::template store<LD>(s, r, tid); }
};

// Backward data: A[m][k] with m an input pixel (n, ih, iw) and k = (kh * kernel_w + kw) *
// out_c + oc is dy[n, ih + pad_top - kh, iw + pad_left - kw, oc], zero outside the output.
template <class T, int VW>
struct AConvDy {
    using F = KFast<T, T::BM, VW>;
    static constexpr int REGS = F::REGS;
    int tid, k, k_end;
    int oh[F::IT], ow[F::IT], base[F::IT];  // output pixel of kh = kw = 0, and its offset
    __device__ void init(const GemmArgs& p, int m0, int tid_, int k_begin, int k_end_) {
        tid = tid_;
        k = k_begin;
        k_end = k_end_;
        const int pixels = p.in_h * p.in_w;
#pragma unroll
        for (int it = 0; it < F::IT; ++it) {
            const int m = m0 + F::row(tid, it);
            if (F::used(tid, it) && m < p.M) {
                const int n = m / pixels, rem = m - n * pixels;
                const int ih = rem / p.in_w, iw = rem - ih * p.in_w;
                oh[it] = ih + p.pad_top;
                ow[it] = iw + p.pad_left;
                base[it] = ((n * p.out_h + oh[it]) * p.out_w + ow[it]) * p.out_c;
            } else {
                oh[it] = -(1 << 28);
                ow[it] = 0;
                base[it] = 0;
            }
        }
    }
    __device__ void fetch(const GemmArgs& p, float* r) {
        const int kx = k + F::kk(tid);
        int kh = 1 << 28, kw = 0, off = 0;
        if (kx < k_end) {
            const int t = kx / p.out_c, oc = kx - t * p.out_c;
            kh = t / p.kernel_w;
            kw = t - kh * p.kernel_w;
            off = oc - (kh * p.out_w + kw) * p.out_c;
        }
#pragma unroll
        for (int it = 0; it < F::IT; ++it) {
            const int y = oh[it] - kh, x = ow[it] - kw;
            if ((unsigned)y < (unsigned)p.out_h && (unsigned)x < (unsigned)p.out_w) {
                load_vec<VW>(r + it * VW, p.a + base[it] + off);
            } else {
                zero_vec<VW>(r + it * VW);
            }
        }
        k += T::BK;
    }
    template <int LD, class E>
    __device__ void store(E* s, const float* r) { F::template store<LD>(s, r, tid); }
};

// B[k][n] = b[n * ldb + k] (the transpose of a row-major matrix).
template <class T, int VW>
struct BTransposed {
    using F = KFast<T, T::BN, VW>;
    static constexpr int REGS = F::REGS;
    int tid, n0, k, k_end;
    __device__ void init(const GemmArgs& p, int n0_, int tid_, int k_begin, int k_end_) {
        tid = tid_;
        n0 = n0_;
        k = k_begin;
        k_end = k_end_;
    }
    __device__ void fetch(const GemmArgs& p, float* r) {
        const int kx = k + F::kk(tid);
#pragma unroll
        for (int it = 0; it < F::IT; ++it) {
            const int n = n0 + F::row(tid, it);
            if (F::used(tid, it) && n < p.N && kx < k_end) {
                load_vec<VW>(r + it * VW, p.b + n * p.ldb + kx);
            } else {
                zero_vec<VW>(r + it * VW);
            }
        }
        k += T::BK;
    }
    template <int LD, class E>
    __device__ void store(E* s, const float* r) { F::template store<LD>(s, r, tid); }
};

// Backward data: B[k][n] with k = (kh * kernel_w + kw) * out_c + oc and n = ic is the HWIO
// kernel's w[kh, kw, ic, oc].
template <class T, int VW>
struct BConvW {
    using F = KFast<T, T::BN, VW>;
    static constexpr int REGS = F::REGS;
    int tid, n0, k, k_end;
    __device__ void init(const GemmArgs& p, int n0_, int tid_, int k_begin, int k_end_) {
        tid = tid_;
        n0 = n0_;
        k = k_begin;
        k_end = k_end_;
    }
    __device__ void fetch(const GemmArgs& p, float* r) {
        const int kx = k + F::kk(tid);
        int off = 0;
        const bool k_ok = kx < k_end;
        if (k_ok) {
            const int t = kx / p.out_c, oc = kx - t * p.out_c;
            off = t * p.in_c * p.out_c + oc;
        }
#pragma unroll
        for (int it = 0; it < F::IT; ++it) {
            const int n = n0 + F::row(tid, it);
            if (F::used(tid, it) && n < p.N && k_ok) {
                load_vec<VW>(r + it * VW, p.b + off + n * p.out_c);
            } else {
                zero_vec<VW>(r + it * VW);
            }
        }
        k += T::BK;
    }
    template <int LD, class E>
    __device__ void store(E* s, const float* r) { F::template store<LD>(s, r, tid); }
};

// ---- loaders whose source is contiguous along m (A) or n (B): each thread keeps one
// row/column offset and several k --------------------------------------------------------------------

template <class T, int COLS, int VW>
struct CFast {
    static constexpr int CV = COLS / VW;  // vectors per k row of the tile
    static constexpr int NV = CV * T::BK;
    static constexpr int IT = (NV + T::THREADS - 1) / T::THREADS;
    static constexpr int KSTEP = T::THREADS / CV;
    static constexpr int REGS = IT * VW;
    static_assert(T::THREADS % CV == 0, "loader mapping");
    __device__ static int col(int tid) { return (tid % CV) * VW; }
    __device__ static int kk(int tid, int it) { return tid / CV + it * KSTEP; }
    __device__ static bool used(int tid, int it) { return NV % T::THREADS == 0 || kk(tid, it) < T::BK; }
    template <int LD, class E>
    __device__ static void store(E* s, const float* r, int tid) {
        const int c = col(tid);
#pragma unroll
        for (int it = 0; it < IT; ++it) {
            if (!used(tid, it)) continue;
            E* d = s + kk(tid, it) * LD + c;
            if (VW == 4 && sizeof(E) == 4) {
                *reinterpret_cast<float4*>(d) = make_float4(r[it * 4], r[it * 4 + 1], r[it * 4 + 2], r[it * 4 + 3]);
            } else {
#pragma unroll
                for (int e = 0; e < VW; ++e) d[e] = E(r[it * VW + e]);
            }
        }
    }
};

// A[m][k] = a[k * lda + m] (the transpose of a row-major [K, M] matrix), with row
// `ones_row` all ones (when the caller wants column sums of B as an extra output row) and
// rows m_split.. beyond the matrix (m >= lda's logical width) zero.
template <class T, int VW>
struct ATransposed {
    using F = CFast<T, T::BM, VW>;
    static constexpr int REGS = F::REGS;
    int tid, m, k, k_end;
    __device__ void init(const GemmArgs& p, int m0, int tid_, int k_begin, int k_end_) {
        tid = tid_;
        m = m0 + F::col(tid);
        k = k_begin;
        k_end = k_end_;
    }
    __device__ void fetch(const GemmArgs& p, float* r) {
        const int width = p.m_split;  // rows of A that come from the matrix
#pragma unroll
        for (int it = 0; it < F::IT; ++it) {
            const int kx = k + F::kk(tid, it);
            float* v = r + it * VW;
            if (!F::used(tid, it) || kx >= k_end) {
                zero_vec<VW>(v);
            } else if (VW == 4 && m + 3 < width) {
                load_vec<4>(v, p.a + kx * p.lda + m);
            } else {
#pragma unroll
                for (int e = 0; e < VW; ++e) {
                    const int mi = m + e;
                    v[e] = mi < width ? __ldg(p.a + kx * p.lda + mi) : (mi == p.ones_row ? 1.0f : 0.0f);
                }
            }
        }
        k += T::BK;
    }
    template <int LD, class E>
    __device__ void store(E* s, const float* r) { F::template store<LD>(s, r, tid); }
};

// Backward filter: A[m][k] = im2col(x)[pixel k][patch element m], m = (kh * kernel_w + kw)
// * in_c + ic, with row `ones_row` (= the patch length) all ones so that the same GEMM
// yields the bias gradient (the column sums of dy) as its last row.
template <class T, int VW>
struct AIm2colT {
    using F = CFast<T, T::BM, VW>;
    static constexpr int REGS = F::REGS;
    int tid, kind, off, dh, dw;  // kind: 0 image, 1 the ones row, 2 zero
    int p_[F::IT], oh[F::IT], ow[F::IT], n_[F::IT], k_end;
    __device__ void init(const GemmArgs& p, int m0, int tid_, int k_begin, int k_end_) {
        tid = tid_;
        k_end = k_end_;
        const int m = m0 + F::col(tid);
        const int patch = p.kernel_h * p.kernel_w * p.in_c;
        kind = m < patch ? 0 : (m == p.ones_row ? 1 : 2);
        off = 0;
        dh = dw = 0;
        if (kind == 0) {
            const int t = m / p.in_c, ic = m - t * p.in_c;
            const int kh = t / p.kernel_w, kw = t - kh * p.kernel_w;
            dh = kh - p.pad_top;
            dw = kw - p.pad_left;
            off = (dh * p.in_w + dw) * p.in_c + ic;
        }
        const int pixels = p.out_h * p.out_w;
#pragma unroll
        for (int it = 0; it < F::IT; ++it) {
            const int px = k_begin + F::kk(tid, it);
            p_[it] = px;
            n_[it] = px / pixels;
            const int rem = px - n_[it] * pixels;
            oh[it] = rem / p.out_w;
            ow[it] = rem - oh[it] * p.out_w;
        }
    }
    __device__ void fetch(const GemmArgs& p, float* r) {
#pragma unroll
        for (int it = 0; it < F::IT; ++it) {
            float* v = r + it * VW;
            zero_vec<VW>(v);
            if (F::used(tid, it) && p_[it] < k_end) {
                if (kind == 0) {
                    const int ih = oh[it] + dh, iw = ow[it] + dw;
                    if ((unsigned)ih < (unsigned)p.in_h && (unsigned)iw < (unsigned)p.in_w) {
                        const int pix = (n_[it] * p.in_h + oh[it]) * p.in_w + ow[it];
                        load_vec<VW>(v, p.a + pix * p.in_c + off);
                    }
                } else if (kind == 1) {
                    v[0] = 1.0f;
                }
            }
            // Next slice: the pixel BK further on.
            p_[it] += T::BK;
            ow[it] += T::BK;
            while (ow[it] >= p.out_w) {
                ow[it] -= p.out_w;
                if (++oh[it] == p.out_h) {
                    oh[it] = 0;
                    ++n_[it];
                }
            }
        }
    }
    template <int LD, class E>
    __device__ void store(E* s, const float* r) { F::template store<LD>(s, r, tid); }
};

// B[k][n] = b[k * ldb + n] (a row-major matrix).
template <class T, int VW>
struct BRowMajor {
    using F = CFast<T, T::BN, VW>;
    static constexpr int REGS = F::REGS;
    int tid, n, k, k_end;
    __device__ void init(const GemmArgs& p, int n0, int tid_, int k_begin, int k_end_) {
        tid = tid_;
        n = n0 + F::col(tid);
        k = k_begin;
        k_end = k_end_;
    }
    __device__ void fetch(const GemmArgs& p, float* r) {
#pragma unroll
        for (int it = 0; it < F::IT; ++it) {
            const int kx = k + F::kk(tid, it);
            float* v = r + it * VW;
            // VW == 4 only when N % 4 == 0: n < N then covers n + 3.
            if (F::used(tid, it) && kx < k_end && n < p.N) {
                load_vec<VW>(v, p.b + kx * p.ldb + n);
            } else {
                zero_vec<VW>(v);
            }
        }
        k += T::BK;
    }
    template <int LD, class E>
    __device__ void store(E* s, const float* r) { F::template store<LD>(s, r, tid); }
};

// ---- the tile loop -------------------------------------------------------------------------------

template <int N>
__device__ __forceinline__ void load_frag(float* d, const float* s) {
    if (N % 4 == 0) {
#pragma unroll
        for (int i = 0; i < N; i += 4) set_vec(d + i, *reinterpret_cast<const float4*>(s + i));
    } else if (N == 2) {
        const float2 v = *reinterpret_cast<const float2*>(s);
        d[0] = v.x;
        d[1] = v.y;
    } else {
#pragma unroll
        for (int i = 0; i < N; ++i) d[i] = s[i];
    }
}

// ---- the arithmetic: FMAs, or tensor cores (--precision tf32 / bf16) ------------------------------

// f32 FMAs on the threads' register tiles (fp32: bit-reproducible, the default).
struct MathFma {
    using E = float;  // the shared tiles' element
    static constexpr bool TENSOR = false;
    static constexpr int PAD = 4;  // shared row padding: float4-aligned rows
    static constexpr int K = 1;
};
// TF32 tensor cores, m16n16k8: the f32 tiles' elements rounded to TF32 (to nearest, ties
// away) as the fragments are loaded; products exact, f32 sums.
struct MathTf32 {
    using E = float;
    using Fragment = nvcuda::wmma::precision::tf32;
    static constexpr bool TENSOR = true;
    static constexpr int PAD = 4;  // rows of 16-byte multiples, 32-byte aligned at k = 0, 8
    static constexpr int K = 8;
};
// BF16 tensor cores, m16n16k16: the loaders round to bf16 (to nearest even) as they store
// the shared tiles; products exact, f32 sums.
struct MathBf16 {
    using E = __nv_bfloat16;
    using Fragment = __nv_bfloat16;
    static constexpr bool TENSOR = true;
    static constexpr int PAD = 8;  // 16 bf16 = a 16-byte multiple, and bank spreading
    static constexpr int K = 16;
};

// Row strides of the shared tiles: BM or BN padded (by the arithmetic's PAD: float4-aligned
// rows for f32, 16-byte rows for bf16) against bank conflicts when loaders write along k.
template <class T, class M>
struct Shared {
    static constexpr int LDA = T::BM + M::PAD;
    static constexpr int LDB = T::BN + M::PAD;
    // The tensor-core epilogue's staging: a 16 x 16 block of floats per warp.
    static constexpr int STAGE_BYTES = M::TENSOR ? T::THREADS / 32 * 16 * 16 * 4 : 0;
    static_assert(!M::TENSOR || (T::BM % 16 == 0 && T::BN % 16 == 0 && T::BK % M::K == 0),
                  "tensor-core tiles are 16 x 16, k in steps of M::K");
};

// The tensor-core epilogue of one 16 x 16 block of C (rows m, columns n from its corner),
// staged through the warp's `stage` (16 x 16 floats): the split-K partial, or bias, ReLU
// and the row split, as the FMA epilogue below.
__device__ __forceinline__ void store_block(const GemmArgs& p, float* stage, int m_corner, int n_corner) {
    const int lane = threadIdx.x % 32;
    __syncwarp();
    for (int e = lane; e < 256; e += 32) {
        const int m = m_corner + e / 16, n = n_corner + e % 16;
        if (m >= p.M || n >= p.N) continue;
        float v = stage[e];
        if (p.partial) {
            p.partial[(size_t)blockIdx.z * p.M * p.N + (size_t)m * p.N + n] = v;
            continue;
        }
        if (p.bias) v += p.bias[n];
        if (p.relu && v <= 0.0f) v = 0.0f;
        float* row = m < p.m_split ? p.out + m * p.ldo : p.out2 + (m - p.m_split) * p.ldo;
        row[n] = v;
    }
    __syncwarp();
}

// The tile loop on tensor cores: the same double-buffered slices as the FMA loop, each warp
// multiplying the 16 x 16 blocks of C that are its own (block w, w + 8, ... of the tile, row
// by row) with wmma fragments loaded from the shared tiles (A stored k-major: col_major).
template <class T, class M, class AL, class BL, class E>
__device__ __forceinline__ void gemm_mma(const GemmArgs& p, AL& al, BL& bl, float* ra, float* rb,
                                         E (*As)[T::BK * Shared<T, M>::LDA], E (*Bs)[T::BK * Shared<T, M>::LDB],
                                         float* stage_all, int tiles, int m0, int n0) {
    using namespace nvcuda;
    constexpr int LDA = Shared<T, M>::LDA, LDB = Shared<T, M>::LDB;
    constexpr int FN = T::BN / 16, BLOCKS = (T::BM / 16) * FN;
    constexpr int WARPS = T::THREADS / 32, PER_WARP = (BLOCKS + WARPS - 1) / WARPS;
    const int warp = threadIdx.x / 32;
    float* stage = stage_all + warp * 16 * 16;  // this warp's 16 x 16 staging block
    wmma::fragment<wmma::accumulator, 16, 16, M::K, float> acc[PER_WARP];
#pragma unroll
    for (int i = 0; i < PER_WARP; ++i) wmma::fill_fragment(acc[i], 0.0f);
    for (int t = 0; t < tiles; ++t) {
        const int cur = t & 1;
        const bool more = t + 1 < tiles;
        if (more) {
            al.fetch(p, ra);
            bl.fetch(p, rb);
        }
#pragma unroll
        for (int i = 0; i < PER_WARP; ++i) {
            const int b = warp + WARPS * i;
            if (b >= BLOCKS) break;  // warp-uniform
            const int bm = b / FN, bn = b - bm * FN;
#pragma unroll
            for (int k0 = 0; k0 < T::BK; k0 += M::K) {
                wmma::fragment<wmma::matrix_a, 16, 16, M::K, typename M::Fragment, wmma::col_major> fa;
                wmma::fragment<wmma::matrix_b, 16, 16, M::K, typename M::Fragment, wmma::row_major> fb;
                wmma::load_matrix_sync(fa, As[cur] + k0 * LDA + bm * 16, LDA);
                wmma::load_matrix_sync(fb, Bs[cur] + k0 * LDB + bn * 16, LDB);
                if constexpr (sizeof(E) == 4) {  // TF32: round what the tensor cores read
#pragma unroll
                    for (int e = 0; e < fa.num_elements; ++e) fa.x[e] = wmma::__float_to_tf32(fa.x[e]);
#pragma unroll
                    for (int e = 0; e < fb.num_elements; ++e) fb.x[e] = wmma::__float_to_tf32(fb.x[e]);
                }
                wmma::mma_sync(acc[i], fa, fb, acc[i]);
            }
        }
        if (more) {
            al.template store<LDA>(As[cur ^ 1], ra);
            bl.template store<LDB>(Bs[cur ^ 1], rb);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < PER_WARP; ++i) {
        const int b = warp + WARPS * i;
        if (b >= BLOCKS) break;
        const int bm = b / FN, bn = b - bm * FN;
        wmma::store_matrix_sync(stage, acc[i], 16, wmma::mem_row_major);
        store_block(p, stage, m0 + bm * 16, n0 + bn * 16);
    }
}

// The rest of the FMA GEMM after the first slice: the tile loop on the threads' register
// tiles, then the epilogue (split-K partial, or bias, ReLU, row split).
template <class T, class AL, class BL>
__device__ __forceinline__ void gemm_fma_rest(const GemmArgs& p, AL& al, BL& bl, float* ra, float* rb,
                                              float (*As)[T::BK * Shared<T, MathFma>::LDA],
                                              float (*Bs)[T::BK * Shared<T, MathFma>::LDB], int tiles, int m0,
                                              int n0) {
    constexpr int LDA = Shared<T, MathFma>::LDA, LDB = Shared<T, MathFma>::LDB;
    const int tid = threadIdx.x;
    const int tx = tid % (T::BN / T::TN), ty = tid / (T::BN / T::TN);
    float acc[T::TM][T::TN];
#pragma unroll
    for (int i = 0; i < T::TM; ++i)
#pragma unroll
        for (int j = 0; j < T::TN; ++j) acc[i][j] = 0.0f;
    for (int t = 0; t < tiles; ++t) {
        const int cur = t & 1;
        const bool more = t + 1 < tiles;
        if (more) {  // global loads of the next slice overlap the FMAs below
            al.fetch(p, ra);
            bl.fetch(p, rb);
        }
        const float* as = As[cur] + ty * T::TM;
        const float* bs = Bs[cur] + tx * T::TN;
#pragma unroll
        for (int kk = 0; kk < T::BK; ++kk) {
            float a[T::TM], b[T::TN];
            load_frag<T::TM>(a, as + kk * LDA);
            load_frag<T::TN>(b, bs + kk * LDB);
#pragma unroll
            for (int i = 0; i < T::TM; ++i)
#pragma unroll
                for (int j = 0; j < T::TN; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        if (more) {  // the other buffer: every thread finished reading it before the last barrier
            al.template store<LDA>(As[cur ^ 1], ra);
            bl.template store<LDB>(Bs[cur ^ 1], rb);
        }
        __syncthreads();
    }

    // Epilogue.
    if (p.partial) {
        float* dst = p.partial + (size_t)blockIdx.z * p.M * p.N;
#pragma unroll
        for (int i = 0; i < T::TM; ++i) {
            const int m = m0 + ty * T::TM + i;
            if (m >= p.M) continue;
#pragma unroll
            for (int j = 0; j < T::TN; ++j) {
                const int n = n0 + tx * T::TN + j;
                if (n < p.N) dst[m * p.N + n] = acc[i][j];
            }
        }
        return;
    }
    float bias[T::TN];
#pragma unroll
    for (int j = 0; j < T::TN; ++j) {
        const int n = n0 + tx * T::TN + j;
        bias[j] = (p.bias && n < p.N) ? p.bias[n] : 0.0f;
    }
#pragma unroll
    for (int i = 0; i < T::TM; ++i) {
        const int m = m0 + ty * T::TM + i;
        if (m >= p.M) continue;
        float* row = m < p.m_split ? p.out + m * p.ldo : p.out2 + (m - p.m_split) * p.ldo;
        float v[T::TN];
#pragma unroll
        for (int j = 0; j < T::TN; ++j) {
            const float s = acc[i][j] + bias[j];
            v[j] = (p.relu && s <= 0.0f) ? 0.0f : s;
        }
        const int n = n0 + tx * T::TN;
        if (T::TN == 4 && n + 3 < p.N && ((p.ldo | n) & 3) == 0) {
            *reinterpret_cast<float4*>(row + n) = make_float4(v[0], v[1], v[2], v[3]);
        } else {
#pragma unroll
            for (int j = 0; j < T::TN; ++j)
                if (n + j < p.N) row[n + j] = v[j];
        }
    }
}


// The shared memory of every GEMM kernel that needs BYTES: one static allocation per kernel
// on a GPU, as a __shared__ array in the kernel would be; in the emulator (where __shared__
// is thread_local, reserved in every OS thread's static TLS) one per size instead of one per
// kernel, so that the 3 arithmetics x 44 kernels do not crowd the threads' stacks.
template <int BYTES>
__device__ __forceinline__ char* shared_pool() {
    __shared__ __align__(32) char pool[BYTES];
    return pool;
}

template <class T, class AL, class BL, class M = MathFma>
__device__ __forceinline__ void gemm(const GemmArgs& p) {
    using E = typename M::E;
    constexpr int LDA = Shared<T, M>::LDA, LDB = Shared<T, M>::LDB;
    constexpr int A_BYTES = 2 * T::BK * LDA * sizeof(E), B_BYTES = 2 * T::BK * LDB * sizeof(E);
    char* smem = shared_pool<A_BYTES + B_BYTES + Shared<T, M>::STAGE_BYTES>();
    E (*As)[T::BK * LDA] = reinterpret_cast<E (*)[T::BK * LDA]>(smem);
    E (*Bs)[T::BK * LDB] = reinterpret_cast<E (*)[T::BK * LDB]>(smem + A_BYTES);
    const int tid = threadIdx.x;
    const int m0 = blockIdx.x * T::BM, n0 = blockIdx.y * T::BN;
    const int k_begin = blockIdx.z * p.k_chunk;
    const int k_end = min(p.K, k_begin + p.k_chunk);

    AL al;
    BL bl;
    al.init(p, m0, tid, k_begin, k_end);
    bl.init(p, n0, tid, k_begin, k_end);
    float ra[AL::REGS], rb[BL::REGS];

    const int tiles = k_end > k_begin ? (k_end - k_begin + T::BK - 1) / T::BK : 0;
    if (tiles > 0) {
        al.fetch(p, ra);
        bl.fetch(p, rb);
        al.template store<LDA>(As[0], ra);
        bl.template store<LDB>(Bs[0], rb);
    }
    __syncthreads();
    if constexpr (M::TENSOR) {
        float* stage = reinterpret_cast<float*>(smem + A_BYTES + B_BYTES);
        gemm_mma<T, M>(p, al, bl, ra, rb, As, Bs, stage, tiles, m0, n0);
    } else {
        gemm_fma_rest<T>(p, al, bl, ra, rb, As, Bs, tiles, m0, n0);
    }
}

}  // namespace tiled_gemm

// Second pass of split-K: C[m][n] = sum over z (in order) of partial[z][m][n], then the
// epilogue (bias, ReLU, row split). One thread per element.
__device__ __forceinline__ void gemm_splitk_reduce_body(const GemmArgs& p, int splits) {
    const int total = p.M * p.N;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        const int m = i / p.N, n = i - m * p.N;
        float s = 0.0f;
        for (int z = 0; z < splits; ++z) s += p.partial[(size_t)z * total + i];
        if (p.bias) s += p.bias[n];
        if (p.relu && s <= 0.0f) s = 0.0f;
        float* row = m < p.m_split ? p.out + m * p.ldo : p.out2 + (m - p.m_split) * p.ldo;
        row[n] = s;
    }
}
