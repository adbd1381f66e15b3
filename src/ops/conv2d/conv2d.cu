// Convolutions (stride 1, any kernel size, valid or same padding; NHWC activations, HWIO
// kernels) as implicit GEMMs on the tiled core of gemm_tile.cuh: no im2col matrix is ever
// written, the loaders gather its elements straight from the image.
//
//   forward        y[P, OC]        = im2col(x)[P, KH*KW*IC] * w[KH*KW*IC, OC], bias + ReLU fused
//                                    into the epilogue (P = batch * out_h * out_w)
//   backward data  dx[Pin, IC]     = dy gathered [Pin, KH*KW*OC] * w rearranged [KH*KW*OC, IC]
//   backward filt. [dw; db][K+1, OC] = [im2col(x) | 1]^T [K+1, P] * dy[P, OC]
//
// The filter gradient reduces over P (up to batch * 222 * 222 pixels) into a small matrix:
// it is split over blockIdx.z (split-K), each slice writing its own partial tile to a
// workspace, and gemm_splitk_reduce (gemm/gemm_splitk.cu) sums the partials in a fixed order. That is
// deterministic (same bits every run, like the CPU backend) and contention-free, where
// float atomics on the few hundred outputs would serialise thousands of blocks and make
// every step's gradients differ in the last bits. The bias gradient is the same GEMM's
// extra row: A gets a row of ones (AIm2colT's `ones_row`).
//
// Suffixes: the tile shape (n16/n32/n64: 128 output rows by 16/32/64 columns; s32/s64,
// m64n32, m32n64: 32x32, 64x64, 64x32, 32x64 tiles for the small filter-gradient matrices)
// and the load width (_v: float4 loads, needs the contiguous channel counts to be multiples
// of 4; _s: scalar). The one-thread-per-output reference versions are in conv2d_naive.cu.

#include "gemm/gemm_tile.cuh"

using namespace fft;

__global__ void __launch_bounds__(256) conv_fwd_n16_s(GemmArgs p) { gemm<TileN16, AIm2col<TileN16, 1>, BRowMajor<TileN16, 1>>(p); }
__global__ void __launch_bounds__(256) conv_fwd_n16_v(GemmArgs p) { gemm<TileN16, AIm2col<TileN16, 4>, BRowMajor<TileN16, 4>>(p); }
__global__ void __launch_bounds__(256) conv_fwd_n32_s(GemmArgs p) { gemm<TileN32, AIm2col<TileN32, 1>, BRowMajor<TileN32, 1>>(p); }
__global__ void __launch_bounds__(256) conv_fwd_n32_v(GemmArgs p) { gemm<TileN32, AIm2col<TileN32, 4>, BRowMajor<TileN32, 4>>(p); }
__global__ void __launch_bounds__(256) conv_fwd_n64_s(GemmArgs p) { gemm<TileN64, AIm2col<TileN64, 1>, BRowMajor<TileN64, 1>>(p); }
__global__ void __launch_bounds__(256) conv_fwd_n64_v(GemmArgs p) { gemm<TileN64, AIm2col<TileN64, 4>, BRowMajor<TileN64, 4>>(p); }

__global__ void __launch_bounds__(256) conv_bwd_data_n16_s(GemmArgs p) { gemm<TileN16, AConvDy<TileN16, 1>, BConvW<TileN16, 1>>(p); }
__global__ void __launch_bounds__(256) conv_bwd_data_n16_v(GemmArgs p) { gemm<TileN16, AConvDy<TileN16, 4>, BConvW<TileN16, 4>>(p); }
__global__ void __launch_bounds__(256) conv_bwd_data_n32_s(GemmArgs p) { gemm<TileN32, AConvDy<TileN32, 1>, BConvW<TileN32, 1>>(p); }
__global__ void __launch_bounds__(256) conv_bwd_data_n32_v(GemmArgs p) { gemm<TileN32, AConvDy<TileN32, 4>, BConvW<TileN32, 4>>(p); }
__global__ void __launch_bounds__(256) conv_bwd_data_n64_s(GemmArgs p) { gemm<TileN64, AConvDy<TileN64, 1>, BConvW<TileN64, 1>>(p); }
__global__ void __launch_bounds__(256) conv_bwd_data_n64_v(GemmArgs p) { gemm<TileN64, AConvDy<TileN64, 4>, BConvW<TileN64, 4>>(p); }

__global__ void __launch_bounds__(256) conv_bwd_filter_s32_s(GemmArgs p) { gemm<TileS32, AIm2colT<TileS32, 1>, BRowMajor<TileS32, 1>>(p); }
__global__ void __launch_bounds__(256) conv_bwd_filter_s32_v(GemmArgs p) { gemm<TileS32, AIm2colT<TileS32, 4>, BRowMajor<TileS32, 4>>(p); }
__global__ void __launch_bounds__(256) conv_bwd_filter_s64_s(GemmArgs p) { gemm<TileS64, AIm2colT<TileS64, 1>, BRowMajor<TileS64, 1>>(p); }
__global__ void __launch_bounds__(256) conv_bwd_filter_s64_v(GemmArgs p) { gemm<TileS64, AIm2colT<TileS64, 4>, BRowMajor<TileS64, 4>>(p); }
__global__ void __launch_bounds__(256) conv_bwd_filter_m64n32_s(GemmArgs p) { gemm<TileM64N32, AIm2colT<TileM64N32, 1>, BRowMajor<TileM64N32, 1>>(p); }
__global__ void __launch_bounds__(256) conv_bwd_filter_m64n32_v(GemmArgs p) { gemm<TileM64N32, AIm2colT<TileM64N32, 4>, BRowMajor<TileM64N32, 4>>(p); }
__global__ void __launch_bounds__(256) conv_bwd_filter_m32n64_s(GemmArgs p) { gemm<TileM32N64, AIm2colT<TileM32N64, 1>, BRowMajor<TileM32N64, 1>>(p); }
__global__ void __launch_bounds__(256) conv_bwd_filter_m32n64_v(GemmArgs p) { gemm<TileM32N64, AIm2colT<TileM32N64, 4>, BRowMajor<TileM32N64, 4>>(p); }
