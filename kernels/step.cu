/*
 * step.cu -- the fused step, sync-master and zero-grad kernels and their
 * extern "C" launchers (launch.h).
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


/* ---------------------------------------------------------------- kernels */

/* The launch arguments are a __grid_constant__ parameter (~3 KB: the scalars
 * of every group) so the block work can take their address without a copy
 * to local memory. */
template <int ALG, int PT, int GT, bool MASTER, bool SR>
__global__ void __launch_bounds__(FO_CUDA_THREADS)
    fo_step_kernel(const __grid_constant__ fo_step_launch args, int64_t first_block) {
  fo_step_block<ALG, PT, GT, MASTER, SR>(args, first_block + blockIdx.x,
                                         (int)threadIdx.x, (int)blockDim.x);
}

template <int PT>
__global__ void __launch_bounds__(FO_CUDA_THREADS)
    fo_sync_master_kernel(const __grid_constant__ fo_plan_args args, int64_t first_block) {
  fo_sync_master_block<PT>(args, first_block + blockIdx.x, (int)threadIdx.x,
                           (int)blockDim.x);
}

template <int GT>
__global__ void __launch_bounds__(FO_CUDA_THREADS)
    fo_zero_grad_kernel(const __grid_constant__ fo_plan_args args, int64_t first_block) {
  fo_zero_grad_block<GT>(args, first_block + blockIdx.x, (int)threadIdx.x,
                         (int)blockDim.x);
}


/* ---------------------------------------------------- step dispatching */

template <int ALG, int PT, int GT>
static int fo_launch_step_mode(const fo_step_launch &a, cudaStream_t stream) {
  /* fp32 parameters keep no master and are never stochastically rounded:
   * both flags are ignored for them, as the host documents. */
  if constexpr (PT == FO_RULE_F32) {
    return fo_launch_grid(fo_step_kernel<ALG, PT, GT, false, false>, a, a.num_blocks,
                          stream, a.pdl != 0);
  } else {
    if (a.master)
      return fo_launch_grid(fo_step_kernel<ALG, PT, GT, true, false>, a, a.num_blocks,
                            stream, a.pdl != 0);
    if (a.stochastic) {
      /* the host rejects stochastic rounding of fp16 at create */
      if constexpr (PT != FO_RULE_BF16) return (int)cudaErrorInvalidValue;
      else
        return fo_launch_grid(fo_step_kernel<ALG, PT, GT, false, true>, a, a.num_blocks,
                              stream, a.pdl != 0);
    }
    return fo_launch_grid(fo_step_kernel<ALG, PT, GT, false, false>, a, a.num_blocks,
                          stream, a.pdl != 0);
  }
}

template <int ALG, int PT>
static int fo_launch_step_grad(const fo_step_launch &a, cudaStream_t stream) {
  switch (a.grad_dtype) {
    case FO_RULE_F32: return fo_launch_step_mode<ALG, PT, FO_RULE_F32>(a, stream);
    case FO_RULE_F16: return fo_launch_step_mode<ALG, PT, FO_RULE_F16>(a, stream);
    case FO_RULE_BF16: return fo_launch_step_mode<ALG, PT, FO_RULE_BF16>(a, stream);
    default: return (int)cudaErrorInvalidValue;
  }
}

template <int ALG>
static int fo_launch_step_param(const fo_step_launch &a, cudaStream_t stream) {
  switch (a.param_dtype) {
    case FO_RULE_F32: return fo_launch_step_grad<ALG, FO_RULE_F32>(a, stream);
    case FO_RULE_F16: return fo_launch_step_grad<ALG, FO_RULE_F16>(a, stream);
    case FO_RULE_BF16: return fo_launch_step_grad<ALG, FO_RULE_BF16>(a, stream);
    default: return (int)cudaErrorInvalidValue;
  }
}

/* ------------------------------------------------------------- launchers */

extern "C" int fo_launch_step(const fo_step_launch *args, void *stream) {
  if (!args) return (int)cudaErrorInvalidValue;
  if (args->num_blocks <= 0) return (int)cudaSuccess;
  if (args->chunk <= 0 || !args->blocks || !args->tensors) return (int)cudaErrorInvalidValue;
  const cudaStream_t s = (cudaStream_t)stream;
  switch (args->algorithm) {
    case FO_RULE_SGD: return fo_launch_step_param<FO_RULE_SGD>(*args, s);
    case FO_RULE_ADAM: return fo_launch_step_param<FO_RULE_ADAM>(*args, s);
    case FO_RULE_ADAMW: return fo_launch_step_param<FO_RULE_ADAMW>(*args, s);
    case FO_RULE_LION: return fo_launch_step_param<FO_RULE_LION>(*args, s);
    default: return (int)cudaErrorInvalidValue;
  }
}

extern "C" int fo_launch_sync_master(const fo_plan_block *blocks,
                                     const fo_plan_tensor *tensors, int64_t num_blocks,
                                     int64_t chunk, int32_t param_dtype, void *stream) {
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

extern "C" int fo_launch_zero_grad(const fo_plan_block *blocks,
                                   const fo_plan_tensor *tensors, int64_t num_blocks,
                                   int64_t chunk, int32_t grad_dtype, void *stream) {
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
