// The second pass of every split-K GEMM (dense layers and conv filter gradients): sums the
// K slices in a fixed order, so results are reproducible; see gemm_tile.cuh.

#include "gemm/gemm_tile.cuh"

using namespace fft;

__global__ void __launch_bounds__(256) gemm_splitk_reduce(GemmArgs p, int splits) { gemm_splitk_reduce_body(p, splits); }
