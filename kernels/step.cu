/*
 * step.cu -- the fused step's dispatch on the algorithm (its kernels are
 * step_kernel.cuh's, instantiated in step_<algorithm>.cu), the sync-master
 * and zero-grad kernels, and their extern "C" launchers (launch.h).
 *
 * The kernels are thin wrappers: all of a block's work is in block_work.cuh,
 * which the CPU tier also runs.  A launcher turns the runtime configuration
 * (algorithm, dtypes, master weights, stochastic rounding) into one template
 * instantiation, so each kernel's inner loop has no branch on any of them.
 *
 * Launches never synchronize and read no device memory from the host, so a
 * step can be captured in a CUDA graph.
 */
#include <cuda_runtime.h>
#include <stdint.h>

#include "block_work.cuh"
#include "grid.cuh"
#include "launch.h"
#include "step_kernel.cuh"

/* ---------------------------------------------------------------- kernels */

template <int PT>
__global__ void __launch_bounds__(FO_CUDA_THREADS)
    fo_sync_master_kernel(const __grid_constant__ fo_plan_args args, int64_t first_block) {
  fo_sync_master_block<PT>(args, first_block + blockIdx.x, (int)threadIdx.x, (int)blockDim.x);
}

template <int GT>
__global__ void __launch_bounds__(FO_CUDA_THREADS)
    fo_zero_grad_kernel(const __grid_constant__ fo_plan_args args, int64_t first_block) {
  fo_zero_grad_block<GT>(args, first_block + blockIdx.x, (int)threadIdx.x, (int)blockDim.x);
}

/* ------------------------------------------------------------- launchers */

/* Every kernel of the library is built for the same architectures: one
 * kernel's attributes stand for all of them. */
extern "C" int fo_kernels_ptx_version(void) {
  cudaFuncAttributes a;
  const cudaError_t e = cudaFuncGetAttributes(&a, fo_zero_grad_kernel<FO_RULE_F32>);
  if (e != cudaSuccess) {
    fo_forget_own_error(e);
    return 0;
  }
  return a.ptxVersion;
}

extern "C" int fo_launch_step(const fo_step_launch *args, void *stream) {
  if (!args) return (int)cudaErrorInvalidValue;
  /* an empty plan has nothing to update, but a step it carries must still
   * reach the state (one block publishes it: step_kernel.cuh) */
  if (args->num_blocks <= 0 && !(args->known && args->state)) return (int)cudaSuccess;
  if (args->num_blocks > 0 && (args->chunk <= 0 || !args->blocks || !args->tensors))
    return (int)cudaErrorInvalidValue;
  const cudaStream_t s = (cudaStream_t)stream;
  switch (args->algorithm) {
    case FO_RULE_SGD: return fo_launch_step_sgd(args, s);
    case FO_RULE_ADAM: return fo_launch_step_adam(args, s);
    case FO_RULE_ADAMW: return fo_launch_step_adamw(args, s);
    case FO_RULE_LION: return fo_launch_step_lion(args, s);
    case FO_RULE_ADAGRAD: return fo_launch_step_adagrad(args, s);
    case FO_RULE_RMSPROP: return fo_launch_step_rmsprop(args, s);
    case FO_RULE_NADAM: return fo_launch_step_nadam(args, s);
    case FO_RULE_LAMB: return fo_launch_step_lamb(args, s);
    case FO_RULE_LARS: return fo_launch_step_lars(args, s);
    default: return (int)cudaErrorInvalidValue;
  }
}

extern "C" int fo_launch_sync_master(const fo_plan_block *blocks, const fo_plan_tensor *tensors,
                                     int64_t num_blocks, int64_t chunk, int32_t param_dtype,
                                     void *stream) {
  if (num_blocks <= 0) return (int)cudaSuccess;
  if (chunk <= 0 || !blocks || !tensors) return (int)cudaErrorInvalidValue;
  const fo_plan_args a = {blocks, tensors, num_blocks, chunk};
  const cudaStream_t s = (cudaStream_t)stream;
  switch (param_dtype) {
    case FO_RULE_F32: return fo_launch_grid(fo_sync_master_kernel<FO_RULE_F32>, a, num_blocks, s);
    case FO_RULE_F16: return fo_launch_grid(fo_sync_master_kernel<FO_RULE_F16>, a, num_blocks, s);
    case FO_RULE_BF16: return fo_launch_grid(fo_sync_master_kernel<FO_RULE_BF16>, a, num_blocks, s);
    default: return (int)cudaErrorInvalidValue;
  }
}

extern "C" int fo_launch_zero_grad(const fo_plan_block *blocks, const fo_plan_tensor *tensors,
                                   int64_t num_blocks, int64_t chunk, int32_t grad_dtype,
                                   void *stream) {
  if (num_blocks <= 0) return (int)cudaSuccess;
  if (chunk <= 0 || !blocks || !tensors) return (int)cudaErrorInvalidValue;
  const fo_plan_args a = {blocks, tensors, num_blocks, chunk};
  const cudaStream_t s = (cudaStream_t)stream;
  switch (grad_dtype) {
    case FO_RULE_F32: return fo_launch_grid(fo_zero_grad_kernel<FO_RULE_F32>, a, num_blocks, s);
    case FO_RULE_F16: return fo_launch_grid(fo_zero_grad_kernel<FO_RULE_F16>, a, num_blocks, s);
    case FO_RULE_BF16: return fo_launch_grid(fo_zero_grad_kernel<FO_RULE_BF16>, a, num_blocks, s);
    default: return (int)cudaErrorInvalidValue;
  }
}
