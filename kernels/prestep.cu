/*
 * prestep.cu -- what runs around the fused update on the device:
 *
 *   fo_grad_sumsq_kernel   one read of every gradient: a partial sum of
 *                          squares per plan block (the global norm and the
 *                          non-finite check in one pass);
 *   fo_prepare_kernel      one block: folds the partials in a fixed order,
 *                          then one thread runs fo_prepare_step (step_state.h:
 *                          skip decision, clip coefficient, schedule, bias
 *                          corrections, loss-scaler update);
 *   fo_unscale_kernel      optional: writes g * coef back, for callers that
 *                          inspect their gradients.
 *
 * Every reduction has a fixed shape (thread mapping and tree), so the norm
 * is bit-identical from run to run: no float atomics.
 */
#include <cuda_runtime.h>
#include <stdint.h>

#include "launch.h"
#include "step_state.h"

#define PRE_THREADS 256
#define PREPARE_THREADS 1024

template <int GT>
static __device__ __forceinline__ float load_grad(const void *g, int64_t i) {
  if (GT == FO_RULE_F32) return static_cast<const float *>(g)[i];
  const uint16_t h = static_cast<const uint16_t *>(g)[i];
  return GT == FO_RULE_F16 ? fo_f16_to_f32(h) : fo_bf16_to_f32(h);
}

template <int GT>
static __device__ __forceinline__ void store_grad(void *g, int64_t i, float x) {
  if (GT == FO_RULE_F32)
    static_cast<float *>(g)[i] = x;
  else
    static_cast<uint16_t *>(g)[i] = GT == FO_RULE_F16 ? fo_f32_to_f16(x) : fo_f32_to_bf16(x);
}

/* Sum of v over the block, the same tree every time; result in thread 0. */
template <int THREADS>
static __device__ double block_sum(double v) {
  __shared__ double warp_sums[THREADS / 32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  v = threadIdx.x < THREADS / 32 ? warp_sums[threadIdx.x] : 0.0;
  if (warp == 0)
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}

/* Each square is formed in double: a finite fp32 gradient cannot overflow
 * it, so a partial is non-finite exactly when one of its gradients is. */
template <int GT>
__global__ void __launch_bounds__(PRE_THREADS)
    fo_grad_sumsq_kernel(const fo_plan_block *blocks, const fo_plan_tensor *tensors,
                         int64_t chunk, int64_t first_block, double *partials) {
  const int64_t b = first_block + blockIdx.x;
  const fo_plan_block blk = blocks[b];
  const fo_plan_tensor t = tensors[blk.tensor];
  const int64_t end = t.numel - blk.start < chunk ? t.numel : blk.start + chunk;
  double sum = 0.0;
  for (int64_t i = blk.start + threadIdx.x; i < end; i += PRE_THREADS) {
    const double g = (double)load_grad<GT>(t.grad, i);
    sum += g * g;
  }
  sum = block_sum<PRE_THREADS>(sum);
  if (threadIdx.x == 0) partials[b] = sum;
}

__global__ void __launch_bounds__(PREPARE_THREADS)
    fo_prepare_kernel(const __grid_constant__ fo_prepare_args args, const double *partials,
                      int64_t num_partials, fo_step_state *state) {
  double sum = 0.0;
  if (partials)
    for (int64_t i = threadIdx.x; i < num_partials; i += PREPARE_THREADS) sum += partials[i];
  sum = block_sum<PREPARE_THREADS>(sum);
  if (threadIdx.x == 0) fo_prepare_step(&args, sum, state);
}

template <int GT>
__global__ void __launch_bounds__(PRE_THREADS)
    fo_unscale_kernel(const fo_plan_block *blocks, const fo_plan_tensor *tensors, int64_t chunk,
                      int64_t first_block, const fo_step_state *state) {
  if (state->skip) return;
  const float coef = state->grad_coef;
  const fo_plan_block blk = blocks[first_block + blockIdx.x];
  const fo_plan_tensor t = tensors[blk.tensor];
  const int64_t end = t.numel - blk.start < chunk ? t.numel : blk.start + chunk;
  for (int64_t i = blk.start + threadIdx.x; i < end; i += PRE_THREADS)
    store_grad<GT>(t.grad, i, load_grad<GT>(t.grad, i) * coef);
}

/* ------------------------------------------------------------ launchers */

static const int64_t MAX_GRID = 2147483647;

/* Launch a per-plan-block kernel over num_blocks blocks in grid slices. */
template <class Launch>
static int over_plan(int64_t num_blocks, Launch launch) {
  for (int64_t first = 0; first < num_blocks; first += MAX_GRID) {
    const int64_t left = num_blocks - first;
    launch((unsigned)(left < MAX_GRID ? left : MAX_GRID), first);
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return (int)e;
  }
  return 0;
}

extern "C" int fo_launch_grad_sumsq(const fo_plan_block *blocks, const fo_plan_tensor *tensors,
                                    int64_t num_blocks, int64_t chunk, int32_t grad_dtype,
                                    double *partials, void *stream) {
  cudaStream_t s = (cudaStream_t)stream;
  return over_plan(num_blocks, [&](unsigned grid, int64_t first) {
    switch (grad_dtype) {
      case FO_RULE_F32:
        fo_grad_sumsq_kernel<FO_RULE_F32><<<grid, PRE_THREADS, 0, s>>>(blocks, tensors, chunk,
                                                                       first, partials);
        break;
      case FO_RULE_F16:
        fo_grad_sumsq_kernel<FO_RULE_F16><<<grid, PRE_THREADS, 0, s>>>(blocks, tensors, chunk,
                                                                       first, partials);
        break;
      default:
        fo_grad_sumsq_kernel<FO_RULE_BF16><<<grid, PRE_THREADS, 0, s>>>(blocks, tensors, chunk,
                                                                        first, partials);
        break;
    }
  });
}

extern "C" int fo_launch_prepare(const fo_prepare_args *args, const double *partials,
                                 int64_t num_partials, fo_step_state *state, void *stream) {
  fo_prepare_kernel<<<1, PREPARE_THREADS, 0, (cudaStream_t)stream>>>(*args, partials,
                                                                    num_partials, state);
  return (int)cudaGetLastError();
}

extern "C" int fo_launch_unscale_grads(const fo_plan_block *blocks,
                                       const fo_plan_tensor *tensors, int64_t num_blocks,
                                       int64_t chunk, int32_t grad_dtype,
                                       const fo_step_state *state, void *stream) {
  cudaStream_t s = (cudaStream_t)stream;
  return over_plan(num_blocks, [&](unsigned grid, int64_t first) {
    switch (grad_dtype) {
      case FO_RULE_F32:
        fo_unscale_kernel<FO_RULE_F32><<<grid, PRE_THREADS, 0, s>>>(blocks, tensors, chunk, first,
                                                                    state);
        break;
      case FO_RULE_F16:
        fo_unscale_kernel<FO_RULE_F16><<<grid, PRE_THREADS, 0, s>>>(blocks, tensors, chunk, first,
                                                                    state);
        break;
      default:
        fo_unscale_kernel<FO_RULE_BF16><<<grid, PRE_THREADS, 0, s>>>(blocks, tensors, chunk,
                                                                     first, state);
        break;
    }
  });
}
