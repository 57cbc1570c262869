/*
 * block_sum.cuh -- deterministic reductions of doubles on the device: the
 * same thread mapping and tree every time, so a sum is bit-identical from
 * run to run (no float atomics).
 */
#ifndef FO_BLOCK_SUM_CUH
#define FO_BLOCK_SUM_CUH

#include <cuda_runtime.h>

/* Sum of v over the warp; the result in lane 0. */
static __device__ __forceinline__ double fo_warp_sum(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}

/* Sum of v over a block of THREADS threads; the result in thread 0.  Uses
 * shared scratch: a second call in the same block needs a __syncthreads()
 * between the two. */
template <int THREADS>
static __device__ double fo_block_sum(double v) {
  __shared__ double warp_sums[THREADS / 32];
  v = fo_warp_sum(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  v = threadIdx.x < THREADS / 32 ? warp_sums[threadIdx.x] : 0.0;
  if (warp == 0) v = fo_warp_sum(v);
  return v;
}

#endif /* FO_BLOCK_SUM_CUH */
