/*
 * step_kernel.cuh -- the fused step kernel and the dispatch from the runtime
 * configuration (dtypes, master weights, stochastic rounding, pass) to one
 * template instantiation, so each kernel's inner loop branches on none of
 * them.  Each algorithm's instantiations are compiled in a file of their
 * own (step_<algorithm>.cu, through FO_DEFINE_STEP_LAUNCHER), so nvcc builds
 * them in parallel; step.cu dispatches on the algorithm.
 */
#ifndef FO_STEP_KERNEL_CUH
#define FO_STEP_KERNEL_CUH

#include <cuda_runtime.h>
#include <stdint.h>

#include "block_sum.cuh"
#include "block_work.cuh"
#include "grid.cuh"
#include "launch.h"

/* The launch arguments are a __grid_constant__ parameter so the block work
 * can take their address without a copy to local memory.  The block has
 * FO_CUDA_THREADS threads (fo_launch_grid), passed as the constant it is, so
 * a thread's vectors lie at immediate offsets from one address; the bounds
 * hold every variant to fo_step_min_blocks blocks per SM with no spills
 * (the build fails on a spill).  The norms pass
 * of LAMB and LARS reduces each thread's two sums of squares over the
 * block in a fixed tree and writes them as the block's partials. */
template <int ALG, int PT, int GT, bool MASTER, bool SR, int PASS>
__global__ void __launch_bounds__(FO_CUDA_THREADS, fo_step_min_blocks(ALG))
    fo_step_kernel(const __grid_constant__ fo_step_launch args, int64_t first_block) {
  const int64_t b = first_block + blockIdx.x;
  fo_publish_known_block(args, b, (int)threadIdx.x);
  if (b >= args.num_blocks) return; /* the one block of an empty plan's publish */
  if constexpr (PASS == FO_PASS_NORMS) {
    double sums[2] = {0.0, 0.0};
    fo_norms_block<ALG, PT, GT, MASTER, SR>(args, b, (int)threadIdx.x, FO_CUDA_THREADS, sums);
    const double w = fo_block_sum<FO_CUDA_THREADS>(sums[0]);
    __syncthreads(); /* fo_block_sum's shared scratch is reused */
    const double x = fo_block_sum<FO_CUDA_THREADS>(sums[1]);
    if (threadIdx.x == 0) {
      args.norm_partials[2 * b] = w;
      args.norm_partials[2 * b + 1] = x;
    }
  } else {
    fo_step_block<ALG, PT, GT, MASTER, SR, PASS>(args, b, (int)threadIdx.x, FO_CUDA_THREADS);
  }
}

template <int ALG, int PT, int GT, int PASS>
static int fo_launch_step_mode(const fo_step_launch &a, cudaStream_t stream) {
  /* A launch that publishes a carried step into the state is never a PDL
   * launch: its block 0 writes the state before any wait, while the
   * kernels before it on the stream may still read it.  It always runs, an
   * empty plan's as one block that publishes and returns, so that every
   * applied step leaves the state the prepare kernel would have. */
  const bool publishes = a.known && a.state;
  const bool pdl = a.pdl != 0 && !publishes;
  const int64_t nb = a.num_blocks > 0 || !publishes ? a.num_blocks : 1;
  /* fp32 parameters keep no master and are never stochastically rounded:
   * both flags are ignored for them, as the host documents. */
  if constexpr (PT == FO_RULE_F32) {
    return fo_launch_grid(fo_step_kernel<ALG, PT, GT, false, false, PASS>, a, nb, stream, pdl);
  } else {
    if (a.master)
      return fo_launch_grid(fo_step_kernel<ALG, PT, GT, true, false, PASS>, a, nb, stream, pdl);
    if (a.stochastic) {
      /* the host rejects stochastic rounding of fp16 at create */
      if constexpr (PT != FO_RULE_BF16)
        return (int)cudaErrorInvalidValue;
      else
        return fo_launch_grid(fo_step_kernel<ALG, PT, GT, false, true, PASS>, a, nb, stream, pdl);
    }
    return fo_launch_grid(fo_step_kernel<ALG, PT, GT, false, false, PASS>, a, nb, stream, pdl);
  }
}

template <int ALG, int PT, int PASS>
static int fo_launch_step_grad(const fo_step_launch &a, cudaStream_t stream) {
  switch (a.grad_dtype) {
    case FO_RULE_F32: return fo_launch_step_mode<ALG, PT, FO_RULE_F32, PASS>(a, stream);
    case FO_RULE_F16: return fo_launch_step_mode<ALG, PT, FO_RULE_F16, PASS>(a, stream);
    case FO_RULE_BF16: return fo_launch_step_mode<ALG, PT, FO_RULE_BF16, PASS>(a, stream);
    default: return (int)cudaErrorInvalidValue;
  }
}

template <int ALG, int PASS>
static int fo_launch_step_param(const fo_step_launch &a, cudaStream_t stream) {
  switch (a.param_dtype) {
    case FO_RULE_F32: return fo_launch_step_grad<ALG, FO_RULE_F32, PASS>(a, stream);
    case FO_RULE_F16: return fo_launch_step_grad<ALG, FO_RULE_F16, PASS>(a, stream);
    case FO_RULE_BF16: return fo_launch_step_grad<ALG, FO_RULE_BF16, PASS>(a, stream);
    default: return (int)cudaErrorInvalidValue;
  }
}

/* One algorithm's launcher: the passes it has. */
template <int ALG>
static int fo_launch_step_alg(const fo_step_launch &a, cudaStream_t stream) {
  if constexpr (ALG == FO_RULE_LAMB || ALG == FO_RULE_LARS) {
    if (a.pass == FO_PASS_NORMS) return fo_launch_step_param<ALG, FO_PASS_NORMS>(a, stream);
    if (a.pass == FO_PASS_APPLY) return fo_launch_step_param<ALG, FO_PASS_APPLY>(a, stream);
    return (int)cudaErrorInvalidValue;
  } else {
    if (a.pass != FO_PASS_UPDATE) return (int)cudaErrorInvalidValue;
    return fo_launch_step_param<ALG, FO_PASS_UPDATE>(a, stream);
  }
}

/* The extern "C" launcher of one algorithm, for step.cu's dispatch. */
#define FO_DEFINE_STEP_LAUNCHER(name, ALG)                     \
  extern "C" int name(const fo_step_launch *a, void *stream) { \
    return fo_launch_step_alg<ALG>(*a, (cudaStream_t)stream);  \
  }

/* The launchers of step_<algorithm>.cu. */
extern "C" {
int fo_launch_step_sgd(const fo_step_launch *a, void *stream);
int fo_launch_step_adam(const fo_step_launch *a, void *stream);
int fo_launch_step_adamw(const fo_step_launch *a, void *stream);
int fo_launch_step_lion(const fo_step_launch *a, void *stream);
int fo_launch_step_adagrad(const fo_step_launch *a, void *stream);
int fo_launch_step_rmsprop(const fo_step_launch *a, void *stream);
int fo_launch_step_nadam(const fo_step_launch *a, void *stream);
int fo_launch_step_lamb(const fo_step_launch *a, void *stream);
int fo_launch_step_lars(const fo_step_launch *a, void *stream);
}

#endif /* FO_STEP_KERNEL_CUH */
