// mma.h (emulator): the warp matrix functions of CUDA's <mma.h> (nvcuda::wmma) for the
// tensor-core shapes the kernels use: TF32 m16n16k8 and BF16 m16n16k16, f32 accumulators.
// Kernel files include <mma.h>; nvcc finds CUDA's, the emulator's build this one.
//
// Numerics, as the hardware computes them:
//  * TF32: the products use an input's sign, exponent and top 10 mantissa bits. Kernels are
//    to round their inputs first with wmma::__float_to_tf32 (round to nearest, ties away
//    from zero, as cvt.rna.tf32.f32); bits of an f32 that was not converted are ignored
//    (truncated), which is what the GPU's tensor cores read of it (to be confirmed on a
//    GPU: tests/emulator/fixtures.rs, wmma_tf32).
//  * BF16: inputs are bf16 already; products of two bf16 (or two TF32) are exact in f32.
//  * Accumulation in f32, one product at a time in k order, each sum rounded to nearest
//    (the hardware adds in another order and may round differently: compare with a
//    tolerance of about K f32 roundings, never bit for bit).
//
// Layout: how a fragment's elements are spread over the lanes is unspecified in CUDA and
// differs here from any GPU (element e of lane l is element e * 32 + l of the tile, row by
// row): only layout-independent code (load, mma, store, and element-wise work on x[]) is
// portable, and that is all this emulates. The hardware's conditions are checked: every
// lane of the warp calls with the same pointer and stride, the pointer is 32-byte aligned
// and the stride (in bytes) a multiple of 16.
#pragma once

#include "cuda_bf16.h"
#include "cuda_emu.h"

namespace nvcuda {
namespace wmma {

struct row_major {};
struct col_major {};
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
namespace precision {
struct tf32 {};
}  // namespace precision
enum layout_t { mem_row_major, mem_col_major };

// Round to TF32 (ties away from zero); NaN and infinity stay.
static inline float __float_to_tf32(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & 0xffffe000u;
    memcpy(&f, &u, 4);
    return f;
}

namespace detail {

template <class T>
struct storage {
    using type = T;
};
template <>
struct storage<precision::tf32> {
    using type = float;
};

template <class Use, int M, int N, int K>
struct shape;
template <int M, int N, int K>
struct shape<matrix_a, M, N, K> {
    static constexpr int rows = M, cols = K;
};
template <int M, int N, int K>
struct shape<matrix_b, M, N, K> {
    static constexpr int rows = K, cols = N;
};
template <int M, int N, int K>
struct shape<accumulator, M, N, K> {
    static constexpr int rows = M, cols = N;
};

// What a tensor core multiplies: the value an input element stands for.
static inline float operand(float f) {  // TF32: the bits past its 10 mantissa bits ignored
    uint32_t u;
    memcpy(&u, &f, 4);
    u &= 0xffffe000u;
    memcpy(&f, &u, 4);
    return f;
}
static inline float operand(__nv_bfloat16 h) { return static_cast<float>(h); }

// The lane and the warp (within the block) of the calling CUDA thread.
static inline unsigned linear_thread() {
    return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}

[[noreturn]] void fail(const char* file, int line, const char* fmt, ...) __attribute__((format(printf, 3, 4)));
inline void fail(const char* file, int line, const char* fmt, ...) {
    static thread_local char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    ::emu::trap(file, line, msg);
}

// Every lane must pass the same pointer and stride, suitably aligned, as the hardware requires.
template <class T>
inline void check_operands(const char* what, const T* p, unsigned ldm, const char* file, int line) {
    ::emu::Site site{file, line};
    const uint64_t bits = reinterpret_cast<uint64_t>(p);
    const uint64_t lane0 = site.shfl(0xffffffffu, bits, 0);
    const unsigned ldm0 = site.shfl(0xffffffffu, ldm, 0);
    if (lane0 != bits || ldm0 != ldm)
        fail(file, line, "wmma::%s: the lanes of a warp passed different pointers or strides", what);
    if (bits % 32 != 0)
        fail(file, line, "wmma::%s: misaligned address 0x%llx (must be 32-byte aligned)", what,
             static_cast<unsigned long long>(bits));
    if ((ldm * sizeof(T)) % 16 != 0)
        fail(file, line, "wmma::%s: stride %u elements is not a multiple of 16 bytes", what, ldm);
}

// Per OS thread (= per running block): the tiles of each warp's mma_sync, as floats.
struct MmaScratch {
    float a[16 * 16], b[16 * 16], c[16 * 16];
};
inline MmaScratch& scratch(unsigned warp) {
    static thread_local MmaScratch s[32];
    return s[warp];
}

}  // namespace detail

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
    static_assert(M == 16 && N == 16 && (K == 8 || K == 16),
                  "the emulator has the m16n16k8 (TF32) and m16n16k16 (BF16) shapes");
    using element_type = typename detail::storage<T>::type;
    using storage_element_type = element_type;
    static constexpr int rows = detail::shape<Use, M, N, K>::rows;
    static constexpr int cols = detail::shape<Use, M, N, K>::cols;
    static constexpr int num_elements = rows * cols / 32;
    element_type x[num_elements];
    // Element e of this lane: element e * 32 + lane of the tile, row by row.
    static int row(int e, unsigned lane) { return (e * 32 + static_cast<int>(lane)) / cols; }
    static int col(int e, unsigned lane) { return (e * 32 + static_cast<int>(lane)) % cols; }
};

template <class Use, int M, int N, int K, class T, class L, class V>
inline void fill_fragment(fragment<Use, M, N, K, T, L>& f, const V& v) {
    for (int e = 0; e < f.num_elements; ++e) f.x[e] = v;
}

// A or B from memory, in the fragment's layout.
template <class Use, int M, int N, int K, class T, class L>
inline void load_matrix_sync(fragment<Use, M, N, K, T, L>& f,
                             const typename fragment<Use, M, N, K, T, L>::element_type* p, unsigned ldm,
                             const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    static_assert(std::is_same<L, row_major>::value || std::is_same<L, col_major>::value,
                  "matrix_a/matrix_b fragments have a row_major or col_major layout");
    detail::check_operands("load_matrix_sync", p, ldm, file, line);
    const unsigned lane = detail::linear_thread() % 32;
    for (int e = 0; e < f.num_elements; ++e) {
        const int r = f.row(e, lane), c = f.col(e, lane);
        f.x[e] = std::is_same<L, row_major>::value ? p[r * ldm + c] : p[c * ldm + r];
    }
}

// The accumulator from memory, in the layout given.
template <int M, int N, int K, class T>
inline void load_matrix_sync(fragment<accumulator, M, N, K, T>& f, const T* p, unsigned ldm, layout_t layout,
                             const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    detail::check_operands("load_matrix_sync", p, ldm, file, line);
    const unsigned lane = detail::linear_thread() % 32;
    for (int e = 0; e < f.num_elements; ++e) {
        const int r = f.row(e, lane), c = f.col(e, lane);
        f.x[e] = layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r];
    }
}

template <int M, int N, int K, class T>
inline void store_matrix_sync(T* p, const fragment<accumulator, M, N, K, T>& f, unsigned ldm, layout_t layout,
                              const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    detail::check_operands("store_matrix_sync", p, ldm, file, line);
    const unsigned lane = detail::linear_thread() % 32;
    for (int e = 0; e < f.num_elements; ++e) {
        const int r = f.row(e, lane), c = f.col(e, lane);
        (layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.x[e];
    }
}

// D = A B + C for the warp: every lane puts its elements of A, B and C into the warp's
// scratch, then computes its elements of D from the whole tiles.
template <int M, int N, int K, class T, class LA, class LB>
inline void mma_sync(fragment<accumulator, M, N, K, float>& d, const fragment<matrix_a, M, N, K, T, LA>& a,
                     const fragment<matrix_b, M, N, K, T, LB>& b, const fragment<accumulator, M, N, K, float>& c,
                     bool satf = false, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    static_assert((K == 8 && std::is_same<T, precision::tf32>::value) ||
                      (K == 16 && std::is_same<T, __nv_bfloat16>::value),
                  "the emulator has TF32 m16n16k8 and BF16 m16n16k16");
    if (satf) detail::fail(file, line, "wmma::mma_sync: satf is not emulated");
    ::emu::Site site{file, line};
    const unsigned t = detail::linear_thread(), lane = t % 32;
    detail::MmaScratch& s = detail::scratch(t / 32);
    site.syncwarp();  // the previous mma_sync of this warp has read the scratch
    for (int e = 0; e < a.num_elements; ++e) s.a[a.row(e, lane) * K + a.col(e, lane)] = detail::operand(a.x[e]);
    for (int e = 0; e < b.num_elements; ++e) s.b[b.row(e, lane) * N + b.col(e, lane)] = detail::operand(b.x[e]);
    for (int e = 0; e < c.num_elements; ++e) s.c[c.row(e, lane) * N + c.col(e, lane)] = c.x[e];
    site.syncwarp();
    for (int e = 0; e < d.num_elements; ++e) {
        const int r = d.row(e, lane), col = d.col(e, lane);
        float acc = s.c[r * N + col];
        for (int k = 0; k < K; ++k) acc = fmaf(s.a[r * K + k], s.b[k * N + col], acc);  // exact products
        d.x[e] = acc;
    }
}

}  // namespace wmma
}  // namespace nvcuda
