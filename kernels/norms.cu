/*
 * norms.cu -- LAMB's and LARS's step between its two passes: each tensor's
 * factor (rules.h, fo_trust_factor) from the squared norms its blocks'
 * norms pass left, one warp per tensor.  The warp finds the tensor's
 * blocks by binary search (a tensor's blocks are consecutive in the plan,
 * in tensor order), its lanes add the partials in a fixed order and the
 * warp reduces them in a fixed tree: the factors are bit-identical from run
 * to run, in one launch whatever the tensor count.
 */
#include <cuda_runtime.h>
#include <stdint.h>

#include "block_sum.cuh"
#include "grid.cuh"
#include "launch.h"

#define FACTOR_THREADS 256
#define WARPS_PER_BLOCK (FACTOR_THREADS / 32)

/* The first block of tensor t or later: blocks[lo].tensor >= t. */
static __device__ int64_t first_block_of(const fo_plan_block *blocks, int64_t n, int64_t t) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (blocks[mid].tensor < t)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

__global__ void __launch_bounds__(FACTOR_THREADS)
    fo_tensor_factors_kernel(const fo_plan_block *blocks, const fo_plan_tensor *tensors,
                             int64_t num_blocks, int64_t num_tensors, int32_t algorithm,
                             const double *partials, const fo_step_state *state, float *factors) {
  const int64_t t = (int64_t)blockIdx.x * WARPS_PER_BLOCK + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (t >= num_tensors || state->skip) return; /* whole warps leave together */
  const int64_t lo = first_block_of(blocks, num_blocks, t);
  const int64_t hi = first_block_of(blocks, num_blocks, t + 1);
  double w = 0.0, x = 0.0;
  for (int64_t b = lo + lane; b < hi; b += 32) {
    w += partials[2 * b];
    x += partials[2 * b + 1];
  }
  w = fo_warp_sum(w);
  x = fo_warp_sum(x);
  if (lane == 0) factors[t] = fo_trust_factor(algorithm, w, x, &state->groups[tensors[t].group]);
}

extern "C" int fo_launch_tensor_factors(const fo_plan_block *blocks, const fo_plan_tensor *tensors,
                                        int64_t num_blocks, int64_t num_tensors, int32_t algorithm,
                                        const double *norm_partials, const fo_step_state *state,
                                        float *tensor_factors, void *stream) {
  if (num_tensors <= 0) return (int)cudaSuccess;
  const int64_t grid = (num_tensors + WARPS_PER_BLOCK - 1) / WARPS_PER_BLOCK;
  if (grid > FO_MAX_GRID) return (int)cudaErrorInvalidValue;
  return fo_launch(fo_tensor_factors_kernel, (unsigned)grid, FACTOR_THREADS, (cudaStream_t)stream,
                   blocks, tensors, num_blocks, num_tensors, algorithm, norm_partials, state,
                   tensor_factors);
}
