/*
 * norms.cu -- LAMB's and LARS's step between its two passes, in two
 * launches whatever the tensor count: each tensor's sums of squares from
 * the partials its blocks' norms pass left (one warp per tensor: binary
 * searches find its piece and blocks, the lanes add in a fixed order, the
 * warp reduces in a fixed tree), then -- after a sharded state's ranks
 * have all-gathered their sums -- each tensor's factor (rules.h,
 * fo_trust_factor), the ranks' sums added in rank order.  The factors are
 * bit-identical from run to run and the same on every rank.
 */
#include <cuda_runtime.h>
#include <stdint.h>

#include "block_sum.cuh"
#include "block_work.cuh"
#include "grid.cuh"
#include "launch.h"

#define FACTOR_THREADS 256
#define WARPS_PER_BLOCK (FACTOR_THREADS / 32)

/* One warp per tensor k of the optimizer: the blocks of the plan's piece
 * of k (block_work.cuh, fo_piece_blocks), their partials added
 * lane-strided and reduced in a fixed tree (0 without a piece). */
__global__ void __launch_bounds__(FACTOR_THREADS)
    fo_piece_sums_kernel(const fo_plan_block *blocks, const fo_plan_tensor *tensors,
                         int64_t num_blocks, int64_t num_tensors, int64_t all_tensors,
                         const double *partials, double *slot) {
  const int64_t k = (int64_t)blockIdx.x * WARPS_PER_BLOCK + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (k >= all_tensors) return; /* whole warps leave together */
  int64_t lo, hi;
  fo_piece_blocks(blocks, tensors, num_blocks, num_tensors, k, &lo, &hi);
  double w = 0.0, x = 0.0;
  for (int64_t b = lo + lane; b < hi; b += 32) {
    w += partials[2 * b];
    x += partials[2 * b + 1];
  }
  w = fo_warp_sum(w);
  x = fo_warp_sum(x);
  if (lane == 0) {
    slot[2 * k] = w;
    slot[2 * k + 1] = x;
  }
}

/* One thread per plan tensor: its whole tensor's sums over the slots, in
 * slot (rank) order, and the factor. */
__global__ void __launch_bounds__(FACTOR_THREADS)
    fo_tensor_factors_kernel(const fo_plan_tensor *tensors, int64_t num_tensors,
                             int64_t all_tensors, int32_t slots, int32_t algorithm,
                             const double *sums, const fo_step_state *state, float *factors) {
  const int64_t i = (int64_t)blockIdx.x * FACTOR_THREADS + threadIdx.x;
  if (i >= num_tensors || state->skip) return;
  const double *s = sums + 2 * tensors[i].index;
  double w = 0.0, x = 0.0;
  for (int r = 0; r < slots; r++, s += 2 * all_tensors) {
    w += s[0];
    x += s[1];
  }
  factors[i] = fo_trust_factor(algorithm, w, x, &state->groups[tensors[i].group]);
}

extern "C" int fo_launch_piece_sums(const fo_plan_block *blocks, const fo_plan_tensor *tensors,
                                    int64_t num_blocks, int64_t num_tensors, int64_t all_tensors,
                                    const double *norm_partials, double *slot, void *stream) {
  if (all_tensors <= 0) return (int)cudaSuccess;
  const int64_t grid = (all_tensors + WARPS_PER_BLOCK - 1) / WARPS_PER_BLOCK;
  if (grid > FO_MAX_GRID) return (int)cudaErrorInvalidValue;
  return fo_launch(fo_piece_sums_kernel, (unsigned)grid, FACTOR_THREADS, (cudaStream_t)stream,
                   blocks, tensors, num_blocks, num_tensors, all_tensors, norm_partials, slot);
}

extern "C" int fo_launch_tensor_factors(const fo_plan_tensor *tensors, int64_t num_tensors,
                                        int64_t all_tensors, int32_t slots, int32_t algorithm,
                                        const double *sums, const fo_step_state *state,
                                        float *tensor_factors, void *stream) {
  if (num_tensors <= 0) return (int)cudaSuccess;
  const int64_t grid = (num_tensors + FACTOR_THREADS - 1) / FACTOR_THREADS;
  if (grid > FO_MAX_GRID) return (int)cudaErrorInvalidValue;
  return fo_launch(fo_tensor_factors_kernel, (unsigned)grid, FACTOR_THREADS, (cudaStream_t)stream,
                   tensors, num_tensors, all_tensors, slots, algorithm, sums, state,
                   tensor_factors);
}
