/*
 * convert.cu -- dtype conversion of a flat device buffer, for a sharded
 * state's 16-bit gradients reduced in fp32 (host/dp/buckets.c): round this
 * rank's part of the reduce-scattered fp32 bucket back (the whole bucket
 * goes through pack.cu).  The conversions are rules.h's, the same the step
 * and the CPU executor use.
 */
#include <cuda_runtime.h>
#include <stdint.h>

#include "grid.cuh"
#include "launch.h"
#include "rules.h"

#define CONVERT_THREADS 256
#define CONVERT_MAX_BLOCKS 4096 /* grid-stride past this */

template <int FROM>
static __device__ float load_f32(const void *p, int64_t i) {
  if (FROM == FO_RULE_F32) return ((const float *)p)[i];
  const uint16_t h = ((const uint16_t *)p)[i];
  return FROM == FO_RULE_F16 ? fo_f16_to_f32(h) : fo_bf16_to_f32(h);
}

template <int TO>
static __device__ void store_f32(void *p, int64_t i, float v) {
  if (TO == FO_RULE_F32)
    ((float *)p)[i] = v;
  else
    ((uint16_t *)p)[i] = TO == FO_RULE_F16 ? fo_f32_to_f16(v) : fo_f32_to_bf16(v);
}

template <int FROM, int TO>
__global__ void __launch_bounds__(CONVERT_THREADS)
    fo_convert_kernel(const void *src, void *dst, int64_t n) {
  const int64_t stride = (int64_t)gridDim.x * CONVERT_THREADS;
  for (int64_t i = (int64_t)blockIdx.x * CONVERT_THREADS + threadIdx.x; i < n; i += stride)
    store_f32<TO>(dst, i, load_f32<FROM>(src, i));
}

template <int FROM, int TO>
static int launch(const void *src, void *dst, int64_t n, cudaStream_t s) {
  int64_t blocks = (n + CONVERT_THREADS - 1) / CONVERT_THREADS;
  if (blocks > CONVERT_MAX_BLOCKS) blocks = CONVERT_MAX_BLOCKS;
  return fo_launch(fo_convert_kernel<FROM, TO>, (unsigned)blocks, CONVERT_THREADS, s, src, dst, n);
}

extern "C" int fo_launch_convert(const void *src, int32_t from, void *dst, int32_t to,
                                 int64_t n, void *stream) {
  if (n <= 0) return (int)cudaSuccess;
  const cudaStream_t s = (cudaStream_t)stream;
  if (to == FO_RULE_F32 && from == FO_RULE_F16) return launch<FO_RULE_F16, FO_RULE_F32>(src, dst, n, s);
  if (to == FO_RULE_F32 && from == FO_RULE_BF16) return launch<FO_RULE_BF16, FO_RULE_F32>(src, dst, n, s);
  if (from == FO_RULE_F32 && to == FO_RULE_F16) return launch<FO_RULE_F32, FO_RULE_F16>(src, dst, n, s);
  if (from == FO_RULE_F32 && to == FO_RULE_BF16) return launch<FO_RULE_F32, FO_RULE_BF16>(src, dst, n, s);
  return (int)cudaErrorInvalidValue;
}
