/*
 * prestep.cu -- what runs around the fused update on the device:
 *
 *   fo_grad_sumsq_kernel   one read of every gradient: a partial sum of
 *                          squares per plan block (the global norm and the
 *                          non-finite check in one pass);
 *   fo_prepare_kernel      one block: folds the partials in a fixed order,
 *                          then one thread decides the step (step_state.h:
 *                          skip decision, clip coefficient, schedule,
 *                          loss-scaler update) and one thread per group
 *                          computes its scalars (bias corrections, ...);
 *   fo_sum_doubles_kernel  one block: a sharded rank's total of its
 *                          partials, before the ranks all-gather them;
 *   fo_unscale_kernel      optional: writes g * coef back, for callers that
 *                          inspect their gradients.
 *
 * The per-block work (which thread reads which gradient, 16-byte loads) is
 * block_work.cuh's, so the CPU tier checks it; only the block reductions
 * here are GPU-only.  Every reduction has a fixed shape (thread mapping and tree), so the norm
 * is bit-identical from run to run: no float atomics.
 */
#include <cuda_runtime.h>
#include <stdint.h>
#include <string.h>

#include "block_sum.cuh"
#include "block_work.cuh"
#include "grid.cuh"
#include "launch.h"
#include "step_state.h"

#define PREPARE_THREADS 1024

/* Arguments of the per-plan-block pre-pass and unscale kernels. */
struct fo_prestep_args {
  fo_plan_args plan;
  double *partials;           /* pre-pass output, one per plan block */
  const fo_step_state *state; /* unscale input */
};

/* Each thread sums its share with the block work's own loop (16-byte
 * loads), then the block reduces the shares in a fixed tree. */
template <int GT>
__global__ void __launch_bounds__(FO_CUDA_THREADS)
    fo_grad_sumsq_kernel(const __grid_constant__ fo_prestep_args a, int64_t first_block) {
  const int64_t b = first_block + blockIdx.x;
  double sum = fo_grad_sumsq_block<GT>(a.plan, b, (int)threadIdx.x, (int)blockDim.x);
  sum = fo_block_sum<FO_CUDA_THREADS>(sum);
  if (threadIdx.x == 0) a.partials[b] = sum;
}

/* The prepare kernel's parameter: the head and G groups' hyper-parameters
 * (at least num_groups of them).  Most optimizers have one or two groups:
 * their launch carries FO_PREPARE_FEW groups, about 300 bytes, instead of
 * all FO_PLAN_MAX_GROUPS (3,184 bytes) that every eager step would copy into the
 * launch (issue #15, as for the step's own parameter). */
#define FO_PREPARE_FEW 4
template <int G>
struct fo_prepare_launch {
  fo_prepare_head head;
  fo_group_hparams groups[G];
};

template <int G>
__global__ void __launch_bounds__(PREPARE_THREADS)
    fo_prepare_kernel(const __grid_constant__ fo_prepare_launch<G> args, const double *partials,
                      int64_t num_partials, fo_step_state *state) {
#if __CUDA_ARCH__ >= 900
  /* Let the step kernel (launched after this one with Programmatic
   * Dependent Launch) start now: its blocks look up their plan records and
   * then wait in cudaGridDependencySynchronize() until this grid has
   * finished and its writes are visible, so triggering early is safe. */
  cudaTriggerProgrammaticLaunchCompletion();
#endif
  /* partials (a pre-pass ran): PREPARE_THREADS threads fold them; else
   * the launch has one thread per group at most and nothing to fold */
  double sum = 0.0;
  if (partials) {
    for (int64_t i = threadIdx.x; i < num_partials; i += PREPARE_THREADS) sum += partials[i];
    sum = fo_block_sum<PREPARE_THREADS>(sum);
  }
  /* thread 0 decides; the groups' scalars (double pow and the like, per
   * group) are then computed by one thread each, not one after another on
   * thread 0: the step kernel waits for all of this */
  __shared__ int applies;
  __shared__ double factor;
  if (threadIdx.x == 0) applies = fo_prepare_decide(&args.head, sum, state, &factor);
  __syncthreads();
  if (!applies) return;
  for (int g = (int)threadIdx.x; g < args.head.num_groups && g < G; g += (int)blockDim.x)
    fo_prepare_group(args.head.algorithm, args.groups, state, g, factor);
  __syncthreads();
  if (threadIdx.x == 0) state->step += 1;
}

__global__ void __launch_bounds__(PREPARE_THREADS)
    fo_sum_doubles_kernel(const double *values, int64_t n, double *out) {
  double sum = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += PREPARE_THREADS) sum += values[i];
  sum = fo_block_sum<PREPARE_THREADS>(sum);
  if (threadIdx.x == 0) *out = sum;
}

template <int GT>
__global__ void __launch_bounds__(FO_CUDA_THREADS)
    fo_unscale_kernel(const __grid_constant__ fo_prestep_args a, int64_t first_block) {
  fo_unscale_block<GT>(a.plan, a.state, first_block + blockIdx.x, (int)threadIdx.x,
                       (int)blockDim.x);
}

/* ------------------------------------------------------------ launchers */

extern "C" int fo_launch_grad_sumsq(const fo_plan_block *blocks, const fo_plan_tensor *tensors,
                                    int64_t num_blocks, int64_t chunk, int32_t grad_dtype,
                                    double *partials, void *stream) {
  if (num_blocks <= 0) return (int)cudaSuccess;
  const fo_prestep_args a = {{blocks, tensors, num_blocks, chunk}, partials, nullptr};
  const cudaStream_t s = (cudaStream_t)stream;
  switch (grad_dtype) {
    case FO_RULE_F32: return fo_launch_grid(fo_grad_sumsq_kernel<FO_RULE_F32>, a, num_blocks, s);
    case FO_RULE_F16: return fo_launch_grid(fo_grad_sumsq_kernel<FO_RULE_F16>, a, num_blocks, s);
    case FO_RULE_BF16: return fo_launch_grid(fo_grad_sumsq_kernel<FO_RULE_BF16>, a, num_blocks, s);
    default: return (int)cudaErrorInvalidValue;
  }
}

/* Launch the prepare kernel whose parameter holds G >= num_groups groups. */
template <int G>
static int fo_launch_prepare_of(const fo_prepare_args *args, const double *partials,
                                int64_t num_partials, fo_step_state *state, cudaStream_t stream) {
  fo_prepare_launch<G> a;
  memset(&a, 0, sizeof a);
  a.head = args->head;
  memcpy(a.groups, args->groups, (size_t)args->head.num_groups * sizeof a.groups[0]);
  /* without partials there is nothing to fold: one thread per group (a
   * block of 1024 threads costs more to start and to finish); with them,
   * exactly PREPARE_THREADS, which the kernel's fo_block_sum assumes */
  const unsigned threads = partials ? PREPARE_THREADS : FO_PLAN_MAX_GROUPS;
  return fo_launch(fo_prepare_kernel<G>, 1, threads, stream, a, partials, num_partials, state);
}

extern "C" int fo_launch_prepare(const fo_prepare_args *args, const double *partials,
                                 int64_t num_partials, fo_step_state *state, void *stream) {
  const int n = args->head.num_groups;
  if (n < 0 || n > FO_PLAN_MAX_GROUPS) return (int)cudaErrorInvalidValue;
  const cudaStream_t s = (cudaStream_t)stream;
  if (n <= FO_PREPARE_FEW)
    return fo_launch_prepare_of<FO_PREPARE_FEW>(args, partials, num_partials, state, s);
  return fo_launch_prepare_of<FO_PLAN_MAX_GROUPS>(args, partials, num_partials, state, s);
}

extern "C" int fo_launch_sum_doubles(const double *values, int64_t n, double *out, void *stream) {
  return fo_launch(fo_sum_doubles_kernel, 1, PREPARE_THREADS, (cudaStream_t)stream, values, n, out);
}

extern "C" int fo_launch_unscale_grads(const fo_plan_block *blocks, const fo_plan_tensor *tensors,
                                       int64_t num_blocks, int64_t chunk, int32_t grad_dtype,
                                       const fo_step_state *state, void *stream) {
  if (num_blocks <= 0) return (int)cudaSuccess;
  const fo_prestep_args a = {{blocks, tensors, num_blocks, chunk}, nullptr, state};
  const cudaStream_t s = (cudaStream_t)stream;
  switch (grad_dtype) {
    case FO_RULE_F32: return fo_launch_grid(fo_unscale_kernel<FO_RULE_F32>, a, num_blocks, s);
    case FO_RULE_F16: return fo_launch_grid(fo_unscale_kernel<FO_RULE_F16>, a, num_blocks, s);
    case FO_RULE_BF16: return fo_launch_grid(fo_unscale_kernel<FO_RULE_BF16>, a, num_blocks, s);
    default: return (int)cudaErrorInvalidValue;
  }
}
