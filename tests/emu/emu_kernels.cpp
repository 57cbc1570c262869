/*
 * emu_kernels.cpp -- the kernel launchers of kernels/launch.h for the
 * emulated device (emu.h): each checks its arguments as the real launcher
 * does, then enqueues a closure that runs the kernel's own block work
 * (block_work.cuh, pack_work.cuh, step_state.h, rules.h) for every block
 * and thread slot, and reduces in the shapes the kernels reduce in (a warp's
 * shuffle tree, then the block's warp sums), so sums come out as the
 * device's would.
 *
 * What the kernels add around the block work is written again here, small
 * as it is (the step kernel's publish and passes, the prepare kernel's fold,
 * norms.cu's searches): keep the two in step when a kernel changes.  The
 * step kernel's own part is emu_step.h, compiled in emu_step_*.cpp.
 */
#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "emu_step.h"
#include "pack_work.cuh"

namespace {

using emu::block_sum;
using emu::by_dtype;
using emu::NT;
using emu::warp_sum;

const int PREPARE_THREADS = 1024; /* prestep.cu */

/* -------------------------------------------- per-plan-block kernels */

fo_plan_args plan_args(const fo_plan_block *blocks, const fo_plan_tensor *tensors,
                       int64_t num_blocks, int64_t chunk) {
  const fo_plan_args a = {blocks, tensors, num_blocks, chunk};
  return a;
}

/* Run f(a, b, t, NT) for every block and thread of a plan, on stream. */
template <class F>
int enqueue_blocks(const fo_plan_args &a, void *stream, F f) {
  return fo_emu_launch(stream, [a, f]() {
    for (int64_t b = 0; b < a.num_blocks; b++)
      for (int t = 0; t < NT; t++) f(a, b, t);
  });
}

template <int GT>
int sumsq(const fo_plan_args &a, double *partials, void *stream) {
  return fo_emu_launch(stream, [a, partials]() {
    std::vector<double> v(NT);
    for (int64_t b = 0; b < a.num_blocks; b++) {
      for (int t = 0; t < NT; t++) v[(size_t)t] = fo_grad_sumsq_block<GT>(a, b, t, NT);
      partials[b] = block_sum(v);
    }
  });
}

/* prestep.cu's fold of n partials over PREPARE_THREADS threads. */
double fold(const double *values, int64_t n) {
  std::vector<double> v(PREPARE_THREADS, 0.0);
  for (int t = 0; t < PREPARE_THREADS; t++)
    for (int64_t i = t; i < n; i += PREPARE_THREADS) v[(size_t)t] += values[i];
  return block_sum(v);
}

float load_as_f32(int32_t dtype, const void *p, int64_t i) {
  if (dtype == FO_RULE_F32) return ((const float *)p)[i];
  const uint16_t h = ((const uint16_t *)p)[i];
  return dtype == FO_RULE_F16 ? fo_f16_to_f32(h) : fo_bf16_to_f32(h);
}

void store_from_f32(int32_t dtype, void *p, int64_t i, float v) {
  if (dtype == FO_RULE_F32)
    ((float *)p)[i] = v;
  else
    ((uint16_t *)p)[i] = dtype == FO_RULE_F16 ? fo_f32_to_f16(v) : fo_f32_to_bf16(v);
}

template <int GT, int WT>
int pack_launch(const fo_pack_launch &a, bool unpack, void *stream) {
  return fo_emu_launch(stream, [a, unpack]() {
    for (int64_t b = 0; b < a.num_blocks; b++)
      for (int t = 0; t < FO_PACK_THREADS; t++) {
        if (unpack)
          fo_pack_block_work<GT, WT, true>(a, b, t, FO_PACK_THREADS);
        else
          fo_pack_block_work<GT, WT, false>(a, b, t, FO_PACK_THREADS);
      }
  });
}

}  // namespace

extern "C" {

int fo_kernels_ptx_version(void) {
  return 90; /* the emulated device runs the sm_90 build */
}

int fo_launch_step(const fo_step_launch *args, void *stream) {
  if (!args) return (int)cudaErrorInvalidValue;
  /* Some devices refuse a Programmatic Dependent Launch into a stream
   * capture, which invalidates the capture; the library never makes one
   * (host/exec_cuda.c, step_launch_fill).  The emulated device refuses it,
   * so that every test that captures a step shows the rule kept. */
  enum cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  if (args->pdl && stream && cudaStreamIsCapturing((cudaStream_t)stream, &capture) == cudaSuccess &&
      capture != cudaStreamCaptureStatusNone)
    return (int)cudaErrorStreamCaptureUnsupported;
  if (args->num_blocks <= 0 && !(args->known && args->state)) return (int)cudaSuccess;
  if (args->num_blocks > 0 && (args->chunk <= 0 || !args->blocks || !args->tensors))
    return (int)cudaErrorInvalidValue;
  switch (args->algorithm) {
    case FO_RULE_SGD: return emu::step_alg<FO_RULE_SGD>(*args, stream);
    case FO_RULE_ADAM: return emu::step_alg<FO_RULE_ADAM>(*args, stream);
    case FO_RULE_ADAMW: return emu::step_alg<FO_RULE_ADAMW>(*args, stream);
    case FO_RULE_LION: return emu::step_alg<FO_RULE_LION>(*args, stream);
    case FO_RULE_ADAGRAD: return emu::step_alg<FO_RULE_ADAGRAD>(*args, stream);
    case FO_RULE_RMSPROP: return emu::step_alg<FO_RULE_RMSPROP>(*args, stream);
    case FO_RULE_NADAM: return emu::step_alg<FO_RULE_NADAM>(*args, stream);
    case FO_RULE_LAMB: return emu::step_alg<FO_RULE_LAMB>(*args, stream);
    case FO_RULE_LARS: return emu::step_alg<FO_RULE_LARS>(*args, stream);
    default: return (int)cudaErrorInvalidValue;
  }
}

int fo_launch_sync_master(const fo_plan_block *blocks, const fo_plan_tensor *tensors,
                          int64_t num_blocks, int64_t chunk, int32_t param_dtype, void *stream) {
  if (num_blocks <= 0) return (int)cudaSuccess;
  if (chunk <= 0 || !blocks || !tensors) return (int)cudaErrorInvalidValue;
  const fo_plan_args a = plan_args(blocks, tensors, num_blocks, chunk);
  return by_dtype(param_dtype, [&](auto pt) {
    return enqueue_blocks(a, stream, [](const fo_plan_args &p, int64_t b, int t) {
      fo_sync_master_block<decltype(pt)::value>(p, b, t, NT);
    });
  });
}

int fo_launch_zero_grad(const fo_plan_block *blocks, const fo_plan_tensor *tensors,
                        int64_t num_blocks, int64_t chunk, int32_t grad_dtype, void *stream) {
  if (num_blocks <= 0) return (int)cudaSuccess;
  if (chunk <= 0 || !blocks || !tensors) return (int)cudaErrorInvalidValue;
  const fo_plan_args a = plan_args(blocks, tensors, num_blocks, chunk);
  return by_dtype(grad_dtype, [&](auto gt) {
    return enqueue_blocks(a, stream, [](const fo_plan_args &p, int64_t b, int t) {
      fo_zero_grad_block<decltype(gt)::value>(p, b, t, NT);
    });
  });
}

int fo_launch_grad_sumsq(const fo_plan_block *blocks, const fo_plan_tensor *tensors,
                         int64_t num_blocks, int64_t chunk, int32_t grad_dtype, double *partials,
                         void *stream) {
  if (num_blocks <= 0) return (int)cudaSuccess;
  const fo_plan_args a = plan_args(blocks, tensors, num_blocks, chunk);
  return by_dtype(grad_dtype,
                  [&](auto gt) { return sumsq<decltype(gt)::value>(a, partials, stream); });
}

int fo_launch_prepare(const fo_prepare_args *args, const double *partials, int64_t num_partials,
                      fo_step_state *state, void *stream) {
  const int n = args->head.num_groups;
  if (n < 0 || n > FO_PLAN_MAX_GROUPS) return (int)cudaErrorInvalidValue;
  /* the launch's parameter is a copy: the caller's struct may change */
  const fo_prepare_args a = *args;
  return fo_emu_launch(stream, [a, partials, num_partials, state]() {
    fo_prepare_step(&a, partials ? fold(partials, num_partials) : 0.0, state);
  });
}

int fo_launch_sum_doubles(const double *values, int64_t n, double *out, void *stream) {
  return fo_emu_launch(stream, [values, n, out]() { *out = fold(values, n); });
}

int fo_launch_unscale_grads(const fo_plan_block *blocks, const fo_plan_tensor *tensors,
                            int64_t num_blocks, int64_t chunk, int32_t grad_dtype,
                            const fo_step_state *state, void *stream) {
  if (num_blocks <= 0) return (int)cudaSuccess;
  const fo_plan_args a = plan_args(blocks, tensors, num_blocks, chunk);
  return by_dtype(grad_dtype, [&](auto gt) {
    return enqueue_blocks(a, stream, [state](const fo_plan_args &p, int64_t b, int t) {
      fo_unscale_block<decltype(gt)::value>(p, state, b, t, NT);
    });
  });
}

int fo_launch_convert(const void *src, int32_t from, void *dst, int32_t to, int64_t n,
                      void *stream) {
  if (n <= 0) return (int)cudaSuccess;
  const bool widen = to == FO_RULE_F32 && (from == FO_RULE_F16 || from == FO_RULE_BF16);
  const bool narrow = from == FO_RULE_F32 && (to == FO_RULE_F16 || to == FO_RULE_BF16);
  if (!widen && !narrow) return (int)cudaErrorInvalidValue;
  return fo_emu_launch(stream, [src, from, dst, to, n]() {
    for (int64_t i = 0; i < n; i++) store_from_f32(to, dst, i, load_as_f32(from, src, i));
  });
}

int fo_launch_pack(const fo_pack_block *blocks, int64_t num_blocks, void *wire, int32_t grad_dtype,
                   int32_t wire_dtype, int32_t unpack, void *stream) {
  if (num_blocks <= 0) return (int)cudaSuccess;
  const fo_pack_launch a = {blocks, num_blocks, wire};
  const bool u = unpack != 0;
  if (wire_dtype == grad_dtype) {
    if (grad_dtype == FO_RULE_F32) return pack_launch<FO_RULE_F32, FO_RULE_F32>(a, u, stream);
    if (grad_dtype == FO_RULE_F16) return pack_launch<FO_RULE_F16, FO_RULE_F16>(a, u, stream);
    if (grad_dtype == FO_RULE_BF16) return pack_launch<FO_RULE_BF16, FO_RULE_BF16>(a, u, stream);
  } else if (wire_dtype == FO_RULE_F32) {
    if (grad_dtype == FO_RULE_F16) return pack_launch<FO_RULE_F16, FO_RULE_F32>(a, u, stream);
    if (grad_dtype == FO_RULE_BF16) return pack_launch<FO_RULE_BF16, FO_RULE_F32>(a, u, stream);
  }
  return (int)cudaErrorInvalidValue;
}

int fo_launch_piece_sums(const fo_plan_block *blocks, const fo_plan_tensor *tensors,
                         int64_t num_blocks, int64_t num_tensors, int64_t all_tensors,
                         const double *norm_partials, double *slot, void *stream) {
  if (all_tensors <= 0) return (int)cudaSuccess;
  return fo_emu_launch(stream, [=]() {
    for (int64_t k = 0; k < all_tensors; k++) {
      int64_t lo, hi;
      fo_piece_blocks(blocks, tensors, num_blocks, num_tensors, k, &lo, &hi);
      double w[32] = {0.0}, x[32] = {0.0};
      for (int lane = 0; lane < 32; lane++)
        for (int64_t b = lo + lane; b < hi; b += 32) {
          w[lane] += norm_partials[2 * b];
          x[lane] += norm_partials[2 * b + 1];
        }
      slot[2 * k] = warp_sum(w);
      slot[2 * k + 1] = warp_sum(x);
    }
  });
}

int fo_launch_tensor_factors(const fo_plan_tensor *tensors, int64_t num_tensors,
                             int64_t all_tensors, int32_t slots, int32_t algorithm,
                             const double *sums, const fo_step_state *state, float *tensor_factors,
                             void *stream) {
  if (num_tensors <= 0) return (int)cudaSuccess;
  return fo_emu_launch(stream, [=]() {
    if (state->skip) return;
    for (int64_t i = 0; i < num_tensors; i++) {
      const double *s = sums + 2 * tensors[i].index;
      double w = 0.0, x = 0.0;
      for (int r = 0; r < slots; r++, s += 2 * all_tensors) {
        w += s[0];
        x += s[1];
      }
      tensor_factors[i] = fo_trust_factor(algorithm, w, x, &state->groups[tensors[i].group]);
    }
  });
}

}  // extern "C"
