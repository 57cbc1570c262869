/*
 * grid.cuh -- launching a per-plan-block kernel over any number of blocks.
 *
 * blockIdx.x is at most 2^31 - 1: a larger plan is covered by several
 * launches, each passing the index of its first block.
 */
#ifndef FO_GRID_CUH
#define FO_GRID_CUH

#include <cuda_runtime.h>
#include <stdint.h>

#include "launch.h"

static const int64_t FO_MAX_GRID = 2147483647;

/* Clear e from the runtime's last-error slot if it is what sits there (an
 * error of the library's own call), leaving an error the caller's earlier
 * work left pending as it was. */
static inline void fo_forget_own_error(cudaError_t e) {
  if (cudaPeekAtLastError() == e) (void)cudaGetLastError();
}

/* Launch kernel with its arguments and return this launch's own status.
 * cudaLaunchKernelEx reports the launch's error itself, where reading
 * cudaGetLastError() after <<<>>> would also pick up (and clear) an
 * unrelated error the caller's own earlier work left pending. */
template <class... Params, class... Actual>
static int fo_launch_pdl(bool pdl, void (*kernel)(Params...), unsigned grid, unsigned threads,
                         cudaStream_t stream, Actual &&...args) {
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(grid);
  cfg.blockDim = dim3(threads);
  cfg.dynamicSmemBytes = 0;
  cfg.stream = stream;
  cfg.attrs = pdl ? attr : nullptr;
  cfg.numAttrs = pdl ? 1 : 0;
  cudaError_t e = cudaLaunchKernelEx(&cfg, kernel, static_cast<Actual &&>(args)...);
  if (e != cudaSuccess && pdl) {
    /* Not yet seen on a device: whether every stream (the legacy default
     * stream among them) and driver takes the attribute.  A launch refused
     * with it is made again without it -- the same kernel, whose wait for
     * the prior kernel then returns at once -- and the refusal is not left
     * pending for the caller.  An error that is not the attribute's comes
     * back from the second launch as well. */
    fo_forget_own_error(e);
    cfg.attrs = nullptr;
    cfg.numAttrs = 0;
    e = cudaLaunchKernelEx(&cfg, kernel, static_cast<Actual &&>(args)...);
  }
  return (int)e;
}

template <class... Params, class... Actual>
static int fo_launch(void (*kernel)(Params...), unsigned grid, unsigned threads,
                     cudaStream_t stream, Actual &&...args) {
  return fo_launch_pdl(false, kernel, grid, threads, stream, static_cast<Actual &&>(args)...);
}

/* Launch kernel over num_blocks blocks in slices of at most FO_MAX_GRID;
 * returns the first launch error.  pdl: Programmatic Dependent Launch (sm_90
 * and newer): the kernel may start while the one before it on the stream
 * still runs, and must call fo_wait_for_prior_kernel() (block_work.cuh)
 * before it reads anything that kernel writes. */
template <class Args>
static int fo_launch_grid(void (*kernel)(Args, int64_t), const Args &args, int64_t num_blocks,
                          cudaStream_t stream, bool pdl = false) {
  for (int64_t first = 0; first < num_blocks; first += FO_MAX_GRID) {
    const int64_t left = num_blocks - first;
    const unsigned grid = (unsigned)(left < FO_MAX_GRID ? left : FO_MAX_GRID);
    const int e = fo_launch_pdl(pdl, kernel, grid, FO_CUDA_THREADS, stream, args, first);
    if (e != (int)cudaSuccess) return e;
  }
  return (int)cudaSuccess;
}

#endif /* FO_GRID_CUH */
