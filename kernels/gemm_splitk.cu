// The second pass of every split-K GEMM (dense layers and conv filter gradients): sums the
// K slices in a fixed order, so results are reproducible; see gemm_tile.cuh.
// Host side: src/ops/gemm/cuda.rs.

#include "gemm_tile.cuh"

__global__ void __launch_bounds__(GEMM_THREADS) gemm_splitk_reduce(GemmArgs p, int splits) { gemm_splitk_reduce_body(p, splits); }
