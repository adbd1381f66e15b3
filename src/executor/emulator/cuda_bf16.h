// cuda_bf16.h (emulator): the bfloat16 type of CUDA's <cuda_bf16.h>, enough for the
// kernels: storage, and conversions with the hardware's rounding. Kernel files include
// <cuda_bf16.h>; nvcc finds CUDA's, the emulator's build this one (its folder is on the path).
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>

// 1 sign, 8 exponent and 7 mantissa bits: the top half of an f32.
struct __nv_bfloat16 {
    unsigned short __x;
    __nv_bfloat16() = default;
    // Round to nearest, ties to even (as cvt.rn.bf16.f32); NaN stays a (quiet) NaN.
    __nv_bfloat16(float f) {
        uint32_t u;
        memcpy(&u, &f, 4);
        if ((u & 0x7fffffffu) > 0x7f800000u) {
            __x = static_cast<unsigned short>((u >> 16) | 0x0040u);
        } else {
            u += 0x7fffu + ((u >> 16) & 1u);
            __x = static_cast<unsigned short>(u >> 16);
        }
    }
    // Exact: every bf16 is an f32.
    operator float() const {
        uint32_t u = static_cast<uint32_t>(__x) << 16;
        float f;
        memcpy(&f, &u, 4);
        return f;
    }
};

static inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
static inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
static inline float __bfloat162float(__nv_bfloat16 h) { return static_cast<float>(h); }
static inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }
static inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short x) {
    __nv_bfloat16 h;
    h.__x = x;
    return h;
}
