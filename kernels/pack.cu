/*
 * pack.cu -- a gradient bucket's pack and unpack for its collective
 * (host/dp/buckets.c): one launch moves every segment of a bucket into the
 * packed buffer (converting to the wire dtype), one moves it back.  The
 * block table is the bucket's (plan.h, fo_pack_block), in device memory
 * since attach: a launch passes three pointers and a count, copies nothing
 * from the host and waits for nothing, so it is captured in a CUDA graph
 * like the rest of the step.  The work is pack_work.cuh's.
 */
#include <cuda_runtime.h>
#include <stdint.h>

#include "grid.cuh"
#include "launch.h"
#include "pack_work.cuh"

template <int GT, int WT, bool UNPACK>
__global__ void __launch_bounds__(FO_PACK_THREADS) fo_pack_kernel(fo_pack_launch a, int64_t first) {
  fo_pack_block_work<GT, WT, UNPACK>(a, first + blockIdx.x, threadIdx.x, FO_PACK_THREADS);
}

template <int GT, int WT>
static int launch(const fo_pack_launch &a, bool unpack, cudaStream_t s) {
  return unpack ? fo_launch_grid(fo_pack_kernel<GT, WT, true>, a, a.num_blocks, s)
                : fo_launch_grid(fo_pack_kernel<GT, WT, false>, a, a.num_blocks, s);
}

extern "C" int fo_launch_pack(const fo_pack_block *blocks, int64_t num_blocks, void *wire,
                              int32_t grad_dtype, int32_t wire_dtype, int32_t unpack,
                              void *stream) {
  if (num_blocks <= 0) return (int)cudaSuccess;
  const fo_pack_launch a = {blocks, num_blocks, wire};
  const cudaStream_t s = (cudaStream_t)stream;
  const bool u = unpack != 0;
  if (wire_dtype == grad_dtype) { /* a bit copy */
    if (grad_dtype == FO_RULE_F32) return launch<FO_RULE_F32, FO_RULE_F32>(a, u, s);
    if (grad_dtype == FO_RULE_F16) return launch<FO_RULE_F16, FO_RULE_F16>(a, u, s);
    if (grad_dtype == FO_RULE_BF16) return launch<FO_RULE_BF16, FO_RULE_BF16>(a, u, s);
  } else if (wire_dtype == FO_RULE_F32) { /* 16-bit gradients reduced in fp32 */
    if (grad_dtype == FO_RULE_F16) return launch<FO_RULE_F16, FO_RULE_F32>(a, u, s);
    if (grad_dtype == FO_RULE_BF16) return launch<FO_RULE_BF16, FO_RULE_F32>(a, u, s);
  }
  return (int)cudaErrorInvalidValue;
}
