// cuda_emu.h: lets the project's CUDA kernels (kernels/*.cu) compile as plain C++ and run on
// the CPU ("cuda-emu" executor). build.rs includes this header first in every generated
// emulator translation unit; nvcc never sees it.
//
// Model (README, "Devices"):
//  * one fiber per CUDA thread; the threads of a block take turns on one OS thread and
//    switch only at barriers, warp shuffles and votes (runtime.cpp, beside this file);
//  * `__shared__` is `thread_local`: shared by the fibers of a block, private to the block;
//  * `extern __shared__ T name[];` is rewritten by build.rs into a pointer to the block's
//    dynamic shared buffer (it must be declared inside the kernel or a device function);
//  * blocks are spread over a few OS threads; atomics are real atomics.
//
// Rules for kernel sources that follow from it: give every __global__ function a unique
// name, include only project headers and the standard headers included below, do not rely
// on warp-synchronous execution without __syncwarp/shuffles (Volta+ semantics), and keep
// every __syncthreads reached by all threads of the block (the emulator checks this).
#pragma once

#include <assert.h>
#include <float.h>
#include <stdarg.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <limits>
#include <type_traits>
#include <utility>

#define FOCALFLOW_EMU 1

// ---- qualifiers --------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __constant__
#define __managed__
#define __grid_constant__
#define __shared__ thread_local
#define __forceinline__ __attribute__((always_inline)) inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

// ---- vector types --------------------------------------------------------------------------
struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1)
        : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return uint3{x, y, z}; }
};

#define FOCALFLOW_EMU_VEC2(T, name, al)                                                   \
    struct __attribute__((aligned(al))) name {                                            \
        T x, y;                                                                           \
    };                                                                                    \
    static inline name make_##name(T x, T y) { return name{x, y}; }
#define FOCALFLOW_EMU_VEC3(T, name)                                                       \
    struct name {                                                                         \
        T x, y, z;                                                                        \
    };                                                                                    \
    static inline name make_##name(T x, T y, T z) { return name{x, y, z}; }
#define FOCALFLOW_EMU_VEC4(T, name, al)                                                   \
    struct __attribute__((aligned(al))) name {                                            \
        T x, y, z, w;                                                                     \
    };                                                                                    \
    static inline name make_##name(T x, T y, T z, T w) { return name{x, y, z, w}; }

FOCALFLOW_EMU_VEC2(float, float2, 8)
FOCALFLOW_EMU_VEC3(float, float3)
FOCALFLOW_EMU_VEC4(float, float4, 16)
FOCALFLOW_EMU_VEC2(int, int2, 8)
FOCALFLOW_EMU_VEC3(int, int3)
FOCALFLOW_EMU_VEC4(int, int4, 16)
FOCALFLOW_EMU_VEC2(unsigned int, uint2, 8)
FOCALFLOW_EMU_VEC4(unsigned int, uint4, 16)
FOCALFLOW_EMU_VEC2(double, double2, 16)
FOCALFLOW_EMU_VEC4(unsigned char, uchar4, 4)
FOCALFLOW_EMU_VEC4(signed char, char4, 4)
FOCALFLOW_EMU_VEC2(short, short2, 4)
FOCALFLOW_EMU_VEC2(long long, longlong2, 16)
static inline uint3 make_uint3(unsigned int x, unsigned int y, unsigned int z) {
    return uint3{x, y, z};
}

// ---- the runtime (runtime.cpp, beside this file) ---------------------------------------------------
namespace emu {

// Per OS thread: the coordinates of the fiber that is running now.
struct Coords {
    uint3 thread_idx;
    uint3 block_idx;
    dim3 block_dim;
    dim3 grid_dim;
};
extern thread_local Coords coords;

// Launch parameters; mirrored by `EmuLaunchParams` in src/executor/ffi.rs.
struct LaunchParams {
    uint32_t grid[3];
    uint32_t block[3];
    uint32_t dynamic_shared_bytes;
    uint32_t schedule;  // 0 forward, 1 reverse, 2 random
    uint64_t seed;
    uint32_t threads;      // OS threads to spread blocks over (>= 1)
    uint32_t stack_bytes;  // per fiber
    uint32_t memcheck;     // 1: check every device memory access (memcheck.cpp)
};
// Whether the launch running on this OS thread checks its memory accesses, and its dynamic
// shared memory: start, the bytes the launch asked for, the bytes mapped (for memcheck.cpp).
extern thread_local bool memcheck_on;
extern thread_local uintptr_t dyn_shared_base, dyn_shared_used, dyn_shared_mapped;

enum class WarpOp : int {
    SyncWarp,
    Shfl,
    ShflUp,
    ShflDown,
    ShflXor,
    All,
    Any,
    Ballot,
    ReduceAdd,
    ReduceMin,
    ReduceMax,
    ReduceMinU,
    ReduceMaxU,
};
enum class BlockOp : int { Sync, Count, And, Or };

typedef void (*Trampoline)(void* ctx);

// Runs the whole grid; returns 0, or 1 with a one-line message in `err`.
int run_grid(const LaunchParams* p, const char* kernel, const char* file, Trampoline body,
             void* ctx, char* err, size_t err_len);
// Cross-thread operations; they switch fibers and may not return if the launch fails.
int block_barrier(const char* file, int line, BlockOp op, int value);
uint64_t warp_collective(const char* file, int line, WarpOp op, unsigned mask, uint64_t value,
                         int arg, int width);
[[noreturn]] void trap(const char* file, int line, const char* what);
void* dynamic_shared();
// Fails the running CUDA thread's launch with `what` (an invalid access, from memcheck.cpp),
// naming the thread and block.
[[noreturn]] void memory_fault(const char* what);
unsigned active_lanes_mask();
long long clock_ns();

// Argument unpacking: args[i] points at the i-th parameter's value (cuLaunchKernel layout).
template <class T>
inline T load_arg(void* p) {
    static_assert(std::is_trivially_copyable<T>::value, "kernel parameters must be trivially copyable");
    typename std::remove_cv<T>::type v;
    memcpy(static_cast<void*>(&v), p, sizeof(v));
    return v;
}
template <class... A, size_t... I>
inline void call_kernel(void (*k)(A...), void** args, std::index_sequence<I...>) {
    k(load_arg<A>(args[I])...);
}
int report_arg_mismatch(const char* kernel, const uint32_t* expected, uint32_t n_expected,
                        const uint32_t* got, uint32_t n_got, char* err, size_t err_len);

template <class... A>
inline int launch_kernel(const LaunchParams* p, const char* name, const char* file,
                         void (*k)(A...), void** args, const uint32_t* arg_sizes, uint32_t nargs,
                         char* err, size_t err_len) {
    static const uint32_t expected[sizeof...(A) + 1] = {static_cast<uint32_t>(sizeof(A))..., 0};
    bool ok = nargs == sizeof...(A);
    for (uint32_t i = 0; ok && i < nargs; ++i) ok = arg_sizes[i] == expected[i];
    if (!ok) return report_arg_mismatch(name, expected, sizeof...(A), arg_sizes, nargs, err, err_len);
    struct Ctx {
        void (*k)(A...);
        void** args;
    } ctx{k, args};
    return run_grid(
        p, name, file,
        [](void* c) {
            Ctx* x = static_cast<Ctx*>(c);
            call_kernel(x->k, x->args, std::index_sequence_for<A...>{});
        },
        &ctx, err, err_len);
}

template <class T>
inline uint64_t to_bits(T v) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value,
                  "warp shuffles take values of at most 8 bytes");
    uint64_t b = 0;
    memcpy(&b, &v, sizeof(T));
    return b;
}
template <class T>
inline T from_bits(uint64_t b) {
    T v;
    memcpy(&v, &b, sizeof(T));
    return v;
}

// A call site (file, line) of a warp/block collective: the macros below build one so the
// emulator can name the line that diverged or deadlocked.
struct Site {
    const char* file;
    int line;
    void syncwarp(unsigned mask = 0xffffffffu) const {
        warp_collective(file, line, WarpOp::SyncWarp, mask, 0, 0, 32);
    }
    template <class T>
    T shfl(unsigned mask, T v, int src, int width = 32) const {
        return from_bits<T>(warp_collective(file, line, WarpOp::Shfl, mask, to_bits(v), src, width));
    }
    template <class T>
    T shfl_up(unsigned mask, T v, unsigned d, int width = 32) const {
        return from_bits<T>(
            warp_collective(file, line, WarpOp::ShflUp, mask, to_bits(v), static_cast<int>(d), width));
    }
    template <class T>
    T shfl_down(unsigned mask, T v, unsigned d, int width = 32) const {
        return from_bits<T>(warp_collective(file, line, WarpOp::ShflDown, mask, to_bits(v),
                                            static_cast<int>(d), width));
    }
    template <class T>
    T shfl_xor(unsigned mask, T v, int lane_mask, int width = 32) const {
        return from_bits<T>(
            warp_collective(file, line, WarpOp::ShflXor, mask, to_bits(v), lane_mask, width));
    }
    int all(unsigned mask, int pred) const {
        return static_cast<int>(warp_collective(file, line, WarpOp::All, mask, pred != 0, 0, 32));
    }
    int any(unsigned mask, int pred) const {
        return static_cast<int>(warp_collective(file, line, WarpOp::Any, mask, pred != 0, 0, 32));
    }
    unsigned ballot(unsigned mask, int pred) const {
        return static_cast<unsigned>(
            warp_collective(file, line, WarpOp::Ballot, mask, pred != 0, 0, 32));
    }
    unsigned reduce_add(unsigned mask, unsigned v) const {
        return static_cast<unsigned>(warp_collective(file, line, WarpOp::ReduceAdd, mask, v, 0, 32));
    }
    int reduce_add(unsigned mask, int v) const {
        return static_cast<int>(reduce_add(mask, static_cast<unsigned>(v)));
    }
    unsigned reduce_min(unsigned mask, unsigned v) const {
        return static_cast<unsigned>(warp_collective(file, line, WarpOp::ReduceMinU, mask, v, 0, 32));
    }
    int reduce_min(unsigned mask, int v) const {
        return static_cast<int>(warp_collective(file, line, WarpOp::ReduceMin, mask,
                                                static_cast<uint64_t>(static_cast<int64_t>(v)), 0, 32));
    }
    unsigned reduce_max(unsigned mask, unsigned v) const {
        return static_cast<unsigned>(warp_collective(file, line, WarpOp::ReduceMaxU, mask, v, 0, 32));
    }
    int reduce_max(unsigned mask, int v) const {
        return static_cast<int>(warp_collective(file, line, WarpOp::ReduceMax, mask,
                                                static_cast<uint64_t>(static_cast<int64_t>(v)), 0, 32));
    }
    void syncthreads() const { block_barrier(file, line, BlockOp::Sync, 0); }
    int syncthreads_count(int p) const { return block_barrier(file, line, BlockOp::Count, p != 0); }
    int syncthreads_and(int p) const { return block_barrier(file, line, BlockOp::And, p != 0); }
    int syncthreads_or(int p) const { return block_barrier(file, line, BlockOp::Or, p != 0); }
};

}  // namespace emu

// ---- built-in variables ------------------------------------------------------------------------
#define threadIdx (::emu::coords.thread_idx)
#define blockIdx (::emu::coords.block_idx)
#define blockDim (::emu::coords.block_dim)
#define gridDim (::emu::coords.grid_dim)
static constexpr int warpSize = 32;

// ---- barriers, shuffles, votes ----------------------------------------------------------------
#define FOCALFLOW_EMU_SITE (::emu::Site{__FILE__, __LINE__})
#define __syncthreads() FOCALFLOW_EMU_SITE.syncthreads()
#define __syncthreads_count(p) FOCALFLOW_EMU_SITE.syncthreads_count(p)
#define __syncthreads_and(p) FOCALFLOW_EMU_SITE.syncthreads_and(p)
#define __syncthreads_or(p) FOCALFLOW_EMU_SITE.syncthreads_or(p)
#define __syncwarp(...) FOCALFLOW_EMU_SITE.syncwarp(__VA_ARGS__)
#define __shfl_sync(...) FOCALFLOW_EMU_SITE.shfl(__VA_ARGS__)
#define __shfl_up_sync(...) FOCALFLOW_EMU_SITE.shfl_up(__VA_ARGS__)
#define __shfl_down_sync(...) FOCALFLOW_EMU_SITE.shfl_down(__VA_ARGS__)
#define __shfl_xor_sync(...) FOCALFLOW_EMU_SITE.shfl_xor(__VA_ARGS__)
#define __all_sync(m, p) FOCALFLOW_EMU_SITE.all(m, p)
#define __any_sync(m, p) FOCALFLOW_EMU_SITE.any(m, p)
#define __ballot_sync(m, p) FOCALFLOW_EMU_SITE.ballot(m, p)
#define __reduce_add_sync(m, v) FOCALFLOW_EMU_SITE.reduce_add(m, v)
#define __reduce_min_sync(m, v) FOCALFLOW_EMU_SITE.reduce_min(m, v)
#define __reduce_max_sync(m, v) FOCALFLOW_EMU_SITE.reduce_max(m, v)
#define __trap() ::emu::trap(__FILE__, __LINE__, "__trap()")
static inline unsigned __activemask() { return ::emu::active_lanes_mask(); }
static inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline void __threadfence_block() { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
static inline void __threadfence_system() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline long long clock64() { return ::emu::clock_ns(); }

// ---- atomics (real atomics: blocks run on several OS threads) ----------------------------------
#define FOCALFLOW_EMU_ATOMIC_INT(T)                                                              \
    static inline T atomicAdd(T* a, T v) { return __atomic_fetch_add(a, v, __ATOMIC_RELAXED); } \
    static inline T atomicSub(T* a, T v) { return __atomic_fetch_sub(a, v, __ATOMIC_RELAXED); } \
    static inline T atomicAnd(T* a, T v) { return __atomic_fetch_and(a, v, __ATOMIC_RELAXED); } \
    static inline T atomicOr(T* a, T v) { return __atomic_fetch_or(a, v, __ATOMIC_RELAXED); }   \
    static inline T atomicXor(T* a, T v) { return __atomic_fetch_xor(a, v, __ATOMIC_RELAXED); } \
    static inline T atomicExch(T* a, T v) { return __atomic_exchange_n(a, v, __ATOMIC_RELAXED); } \
    static inline T atomicCAS(T* a, T cmp, T v) {                                                \
        __atomic_compare_exchange_n(a, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);      \
        return cmp;                                                                              \
    }                                                                                            \
    static inline T atomicMax(T* a, T v) {                                                       \
        T old = __atomic_load_n(a, __ATOMIC_RELAXED);                                            \
        while (old < v &&                                                                        \
               !__atomic_compare_exchange_n(a, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) \
            ;                                                                                    \
        return old;                                                                              \
    }                                                                                            \
    static inline T atomicMin(T* a, T v) {                                                       \
        T old = __atomic_load_n(a, __ATOMIC_RELAXED);                                            \
        while (old > v &&                                                                        \
               !__atomic_compare_exchange_n(a, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) \
            ;                                                                                    \
        return old;                                                                              \
    }
FOCALFLOW_EMU_ATOMIC_INT(int)
FOCALFLOW_EMU_ATOMIC_INT(unsigned int)
FOCALFLOW_EMU_ATOMIC_INT(long long)
FOCALFLOW_EMU_ATOMIC_INT(unsigned long long)

#define FOCALFLOW_EMU_ATOMIC_FLOAT(T, U)                                                          \
    static inline T atomicAdd(T* a, T v) {                                                        \
        U* p = reinterpret_cast<U*>(a);                                                           \
        U old = __atomic_load_n(p, __ATOMIC_RELAXED);                                             \
        for (;;) {                                                                                \
            T f;                                                                                  \
            memcpy(&f, &old, sizeof f);                                                           \
            f += v;                                                                               \
            U nw;                                                                                 \
            memcpy(&nw, &f, sizeof nw);                                                           \
            if (__atomic_compare_exchange_n(p, &old, nw, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) { \
                memcpy(&f, &old, sizeof f);                                                       \
                return f;                                                                         \
            }                                                                                     \
        }                                                                                         \
    }                                                                                             \
    static inline T atomicExch(T* a, T v) {                                                       \
        U nw;                                                                                     \
        memcpy(&nw, &v, sizeof nw);                                                               \
        U old = __atomic_exchange_n(reinterpret_cast<U*>(a), nw, __ATOMIC_RELAXED);               \
        T f;                                                                                      \
        memcpy(&f, &old, sizeof f);                                                               \
        return f;                                                                                 \
    }
FOCALFLOW_EMU_ATOMIC_FLOAT(float, unsigned int)
FOCALFLOW_EMU_ATOMIC_FLOAT(double, unsigned long long)
static inline unsigned int atomicInc(unsigned int* a, unsigned int lim) {
    unsigned int old = __atomic_load_n(a, __ATOMIC_RELAXED);
    while (!__atomic_compare_exchange_n(a, &old, old >= lim ? 0u : old + 1u, true, __ATOMIC_RELAXED,
                                        __ATOMIC_RELAXED))
        ;
    return old;
}
static inline unsigned int atomicDec(unsigned int* a, unsigned int lim) {
    unsigned int old = __atomic_load_n(a, __ATOMIC_RELAXED);
    while (!__atomic_compare_exchange_n(a, &old, (old == 0u || old > lim) ? lim : old - 1u, true,
                                        __ATOMIC_RELAXED, __ATOMIC_RELAXED))
        ;
    return old;
}

// ---- math: <math.h> provides expf, logf, fmaf, fminf, ... ; CUDA extras here ---------------------
// Intrinsics are exact on the CPU (a GPU's __expf is an approximation: compare with tolerance).
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline double rsqrt(double x) { return 1.0 / sqrt(x); }
static inline float rcbrtf(float x) { return 1.0f / cbrtf(x); }
// glibc declares __expf & co. itself, hence macros.
#define __expf expf
#define __exp10f exp10f
#define __logf logf
#define __log2f log2f
#define __log10f log10f
#define __sinf sinf
#define __cosf cosf
#define __tanf tanf
#define __powf powf
static inline float __fdividef(float x, float y) { return x / y; }
static inline float fdividef(float x, float y) { return x / y; }
static inline float __frcp_rn(float x) { return 1.0f / x; }
static inline float __fsqrt_rn(float x) { return sqrtf(x); }
static inline float __frsqrt_rn(float x) { return 1.0f / sqrtf(x); }
static inline float __fadd_rn(float x, float y) { return x + y; }
static inline float __fsub_rn(float x, float y) { return x - y; }
static inline float __fmul_rn(float x, float y) { return x * y; }
static inline float __fdiv_rn(float x, float y) { return x / y; }
static inline float __fmaf_rn(float x, float y, float z) { return fmaf(x, y, z); }
static inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : (x == x ? x : 0.0f)); }
static inline int __float_as_int(float x) { int i; memcpy(&i, &x, 4); return i; }
static inline unsigned int __float_as_uint(float x) { unsigned int i; memcpy(&i, &x, 4); return i; }
static inline float __int_as_float(int i) { float x; memcpy(&x, &i, 4); return x; }
static inline float __uint_as_float(unsigned int i) { float x; memcpy(&x, &i, 4); return x; }
static inline long long __double_as_longlong(double x) { long long i; memcpy(&i, &x, 8); return i; }
static inline double __longlong_as_double(long long i) { double x; memcpy(&x, &i, 8); return x; }
static inline int __float2int_rn(float x) { return static_cast<int>(nearbyintf(x)); }
static inline int __float2int_rz(float x) { return static_cast<int>(x); }
static inline int __float2int_rd(float x) { return static_cast<int>(floorf(x)); }
static inline int __float2int_ru(float x) { return static_cast<int>(ceilf(x)); }
static inline float __int2float_rn(int x) { return static_cast<float>(x); }
static inline int __popc(unsigned int x) { return __builtin_popcount(x); }
static inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
static inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
static inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x)); }
static inline int __ffs(int x) { return __builtin_ffs(x); }
static inline int __ffsll(long long x) { return __builtin_ffsll(x); }
static inline unsigned int __brev(unsigned int x) {
    x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
    x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
    x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
    return __builtin_bswap32(x);
}
static inline int __mul24(int a, int b) { return a * b; }
static inline unsigned int __umul24(unsigned int a, unsigned int b) { return a * b; }
static inline int __mulhi(int a, int b) { return static_cast<int>((static_cast<long long>(a) * b) >> 32); }
static inline unsigned int __umulhi(unsigned int a, unsigned int b) {
    return static_cast<unsigned int>((static_cast<unsigned long long>(a) * b) >> 32);
}
template <class T>
static inline T __ldg(const T* p) { return *p; }

// CUDA's min/max overloads for device code.
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline unsigned int min(unsigned int a, unsigned int b) { return a < b ? a : b; }
static inline unsigned int max(unsigned int a, unsigned int b) { return a > b ? a : b; }
static inline unsigned int min(int a, unsigned int b) { return min(static_cast<unsigned int>(a), b); }
static inline unsigned int max(int a, unsigned int b) { return max(static_cast<unsigned int>(a), b); }
static inline unsigned int min(unsigned int a, int b) { return min(a, static_cast<unsigned int>(b)); }
static inline unsigned int max(unsigned int a, int b) { return max(a, static_cast<unsigned int>(b)); }
static inline long long min(long long a, long long b) { return a < b ? a : b; }
static inline long long max(long long a, long long b) { return a > b ? a : b; }
static inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
static inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
static inline float min(float a, float b) { return fminf(a, b); }
static inline float max(float a, float b) { return fmaxf(a, b); }
static inline double min(double a, double b) { return fmin(a, b); }
static inline double max(double a, double b) { return fmax(a, b); }
