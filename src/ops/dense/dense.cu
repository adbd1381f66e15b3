// Dense layers as tiled SGEMMs on the core of gemm_tile.cuh (x [batch, in], w [in, out],
// all row-major):
//
//   forward     y[batch, out]   = x * w, bias + ReLU fused into the epilogue; the K = in
//                                 dimension is long (43264 in the reference CNN) and M =
//                                 batch short, so the host splits K (blockIdx.z) to fill
//                                 the GPU and sums the slices with gemm_splitk_reduce
//   weights     [dw; db][in+1, out] = [x | 1]^T * dy: the bias gradient (column sums of
//                                 dy) is the extra row of ones of A
//   input       dx[batch, in]   = dy * w^T
//
// Suffixes: tile shape (s32: 32x32, s64: 64x64, m64n32: 64x32, m32n64: 32x64) and load width (_v: float4 loads, needs
// the contiguous dimensions to be multiples of 4; _s: scalar).

#include "gemm/gemm_tile.cuh"

using namespace fft;

__global__ void __launch_bounds__(256) dense_fwd_s32_s(GemmArgs p) { gemm<TileS32, ARowMajor<TileS32, 1>, BRowMajor<TileS32, 1>>(p); }
__global__ void __launch_bounds__(256) dense_fwd_s32_v(GemmArgs p) { gemm<TileS32, ARowMajor<TileS32, 4>, BRowMajor<TileS32, 4>>(p); }
__global__ void __launch_bounds__(256) dense_fwd_s64_s(GemmArgs p) { gemm<TileS64, ARowMajor<TileS64, 1>, BRowMajor<TileS64, 1>>(p); }
__global__ void __launch_bounds__(256) dense_fwd_s64_v(GemmArgs p) { gemm<TileS64, ARowMajor<TileS64, 4>, BRowMajor<TileS64, 4>>(p); }
__global__ void __launch_bounds__(256) dense_fwd_m64n32_s(GemmArgs p) { gemm<TileM64N32, ARowMajor<TileM64N32, 1>, BRowMajor<TileM64N32, 1>>(p); }
__global__ void __launch_bounds__(256) dense_fwd_m64n32_v(GemmArgs p) { gemm<TileM64N32, ARowMajor<TileM64N32, 4>, BRowMajor<TileM64N32, 4>>(p); }
__global__ void __launch_bounds__(256) dense_fwd_m32n64_s(GemmArgs p) { gemm<TileM32N64, ARowMajor<TileM32N64, 1>, BRowMajor<TileM32N64, 1>>(p); }
__global__ void __launch_bounds__(256) dense_fwd_m32n64_v(GemmArgs p) { gemm<TileM32N64, ARowMajor<TileM32N64, 4>, BRowMajor<TileM32N64, 4>>(p); }

__global__ void __launch_bounds__(256) dense_bwd_w_s32_s(GemmArgs p) { gemm<TileS32, ATransposed<TileS32, 1>, BRowMajor<TileS32, 1>>(p); }
__global__ void __launch_bounds__(256) dense_bwd_w_s32_v(GemmArgs p) { gemm<TileS32, ATransposed<TileS32, 4>, BRowMajor<TileS32, 4>>(p); }
__global__ void __launch_bounds__(256) dense_bwd_w_s64_s(GemmArgs p) { gemm<TileS64, ATransposed<TileS64, 1>, BRowMajor<TileS64, 1>>(p); }
__global__ void __launch_bounds__(256) dense_bwd_w_s64_v(GemmArgs p) { gemm<TileS64, ATransposed<TileS64, 4>, BRowMajor<TileS64, 4>>(p); }
__global__ void __launch_bounds__(256) dense_bwd_w_m64n32_s(GemmArgs p) { gemm<TileM64N32, ATransposed<TileM64N32, 1>, BRowMajor<TileM64N32, 1>>(p); }
__global__ void __launch_bounds__(256) dense_bwd_w_m64n32_v(GemmArgs p) { gemm<TileM64N32, ATransposed<TileM64N32, 4>, BRowMajor<TileM64N32, 4>>(p); }
__global__ void __launch_bounds__(256) dense_bwd_w_m32n64_s(GemmArgs p) { gemm<TileM32N64, ATransposed<TileM32N64, 1>, BRowMajor<TileM32N64, 1>>(p); }
__global__ void __launch_bounds__(256) dense_bwd_w_m32n64_v(GemmArgs p) { gemm<TileM32N64, ATransposed<TileM32N64, 4>, BRowMajor<TileM32N64, 4>>(p); }

__global__ void __launch_bounds__(256) dense_bwd_x_s32_s(GemmArgs p) { gemm<TileS32, ARowMajor<TileS32, 1>, BTransposed<TileS32, 1>>(p); }
__global__ void __launch_bounds__(256) dense_bwd_x_s32_v(GemmArgs p) { gemm<TileS32, ARowMajor<TileS32, 4>, BTransposed<TileS32, 4>>(p); }
__global__ void __launch_bounds__(256) dense_bwd_x_s64_s(GemmArgs p) { gemm<TileS64, ARowMajor<TileS64, 1>, BTransposed<TileS64, 1>>(p); }
__global__ void __launch_bounds__(256) dense_bwd_x_s64_v(GemmArgs p) { gemm<TileS64, ARowMajor<TileS64, 4>, BTransposed<TileS64, 4>>(p); }
__global__ void __launch_bounds__(256) dense_bwd_x_m64n32_s(GemmArgs p) { gemm<TileM64N32, ARowMajor<TileM64N32, 1>, BTransposed<TileM64N32, 1>>(p); }
__global__ void __launch_bounds__(256) dense_bwd_x_m64n32_v(GemmArgs p) { gemm<TileM64N32, ARowMajor<TileM64N32, 4>, BTransposed<TileM64N32, 4>>(p); }
__global__ void __launch_bounds__(256) dense_bwd_x_m32n64_s(GemmArgs p) { gemm<TileM32N64, ARowMajor<TileM32N64, 1>, BTransposed<TileM32N64, 1>>(p); }
__global__ void __launch_bounds__(256) dense_bwd_x_m32n64_v(GemmArgs p) { gemm<TileM32N64, ARowMajor<TileM32N64, 4>, BTransposed<TileM32N64, 4>>(p); }
