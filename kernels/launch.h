/*
 * launch.h -- the only way host code reaches the kernels: thin extern "C"
 * launchers.  Each returns a cudaError_t value (0 on success) and never
 * synchronizes.  The structs are plain C so host/ can fill them.
 */
#ifndef FO_LAUNCH_H
#define FO_LAUNCH_H

#include <stdint.h>

#include "plan.h"
#include "rules.h"
#include "step_state.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Threads per block of the step kernels, and the elements one block covers
 * (the plan's chunk for the CUDA executor). */
#define FO_CUDA_THREADS 256
#define FO_CUDA_CHUNK 32768

/* Passes of a step (fo_step_launch.pass): one for most algorithms; LAMB and
 * LARS first sum two squared norms per block (NORMS), then update with each
 * tensor's factor (APPLY). */
#define FO_PASS_UPDATE 0
#define FO_PASS_NORMS 1
#define FO_PASS_APPLY 2

/* Everything one fused step launch needs, passed by value. */
typedef struct fo_step_launch {
  const fo_plan_block *blocks;   /* device memory */
  const fo_plan_tensor *tensors; /* device memory */
  int64_t num_blocks;
  int64_t chunk;
  int32_t algorithm;   /* FO_RULE_SGD ... FO_RULE_LION */
  int32_t param_dtype; /* FO_RULE_F32 / F16 / BF16 */
  int32_t grad_dtype;
  int32_t master;     /* tensors carry fp32 master weights */
  int32_t stochastic; /* bf16 params without master: stochastic rounding */
  int32_t num_groups;
  /* Launch with Programmatic Dependent Launch (a device of compute
   * capability 9.0 or newer): the step's blocks start, look up their plan
   * records and wait for the prepare kernel only before they read the step
   * state, so the second launch's latency hides behind the first. */
  int32_t pdl;
  uint64_t seed;
  /* Where the step's scalars, number and skip decision come from.
   * known = 0 (the library's step after the prepare kernel): the step
   * state, written on the device, so a captured graph replays correctly.
   * known = 1: k, by value -- an eager step the host decided (host/known.c,
   * at most FO_KNOWN_GROUPS groups, never skipped), or a test's or
   * benchmark's launch; the blocks then never read state, and when state
   * is non-NULL block 0 of the launch writes k into it (fo_known_publish)
   * for what runs after on the stream.  By value rather than through a
   * pointer, so the host needs no copy to the device per step; the whole
   * parameter stays about 400 bytes. */
  fo_step_state *state;
  int32_t known;
  fo_known_step k;
  /* LAMB and LARS: which pass; the norms pass writes norm_partials[2b] and
   * [2b+1] for block b; the apply pass reads tensor_factors[tensor]. */
  int32_t pass;
  double *norm_partials;
  const float *tensor_factors;
} fo_step_launch;

/* Per-step launch of the fused update over the whole plan on stream. */
int fo_launch_step(const fo_step_launch *args, void *stream);

/* The PTX architecture (cudaFuncAttributes.ptxVersion: 80, 90, ...) of the
 * library's kernels as the runtime runs them on the current device, 0 when
 * it cannot tell.  Programmatic Dependent Launch needs 90 or more: compiled
 * for less (a build for sm_80 alone, run on an H100 from its PTX), the step
 * kernel's wait for the prepare kernel is not in it. */
int fo_kernels_ptx_version(void);

/* LAMB and LARS, after the norms pass: slot[2k] and slot[2k+1], k <
 * all_tensors, = the sums of squares over the blocks of the plan's piece
 * of tensor k (fo_plan_tensor.index; a tensor's blocks are consecutive in
 * the plan), added in a fixed order; 0 where the plan has no piece of k. */
int fo_launch_piece_sums(const fo_plan_block *blocks, const fo_plan_tensor *tensors,
                         int64_t num_blocks, int64_t num_tensors, int64_t all_tensors,
                         const double *norm_partials, double *slot, void *stream);

/* Then, once every rank's slot is in sums (slots x all_tensors x 2):
 * tensor_factors[i] = fo_trust_factor of plan tensor i from its whole
 * tensor's sums, the slots added in order; nothing when the step state
 * says the step is skipped. */
int fo_launch_tensor_factors(const fo_plan_tensor *tensors, int64_t num_tensors,
                             int64_t all_tensors, int32_t slots, int32_t algorithm,
                             const double *sums, const fo_step_state *state, float *tensor_factors,
                             void *stream);

/* master = widen(param) for every element of every tensor in the plan. */
int fo_launch_sync_master(const fo_plan_block *blocks, const fo_plan_tensor *tensors,
                          int64_t num_blocks, int64_t chunk, int32_t param_dtype, void *stream);

/* Zero every gradient in the plan (used for scattered external tensors). */
int fo_launch_zero_grad(const fo_plan_block *blocks, const fo_plan_tensor *tensors,
                        int64_t num_blocks, int64_t chunk, int32_t grad_dtype, void *stream);

/* The gradient pre-pass: partials[b] = sum of squares (double) of plan
 * block b's gradients. */
int fo_launch_grad_sumsq(const fo_plan_block *blocks, const fo_plan_tensor *tensors,
                         int64_t num_blocks, int64_t chunk, int32_t grad_dtype, double *partials,
                         void *stream);

/* One block: total the partials (NULL: no pre-pass ran) and run
 * fo_prepare_step on the device state. */
int fo_launch_prepare(const fo_prepare_args *args, const double *partials, int64_t num_partials,
                      fo_step_state *state, void *stream);

/* *out = the sum of values[0..n) (0 when n is 0), one block, the same tree
 * as the prepare kernel's: a sharded rank's partial sum of squares. */
int fo_launch_sum_doubles(const double *values, int64_t n, double *out, void *stream);

/* g *= state->grad_coef for every gradient, unless the step was skipped. */
int fo_launch_unscale_grads(const fo_plan_block *blocks, const fo_plan_tensor *tensors,
                            int64_t num_blocks, int64_t chunk, int32_t grad_dtype,
                            const fo_step_state *state, void *stream);

/* dst[i] = src[i] converted from dtype from to dtype to, i < n (one of
 * the two is FO_RULE_F32; RNE on narrowing): a sharded rank's part of a
 * bucket reduced in fp32 (kernels/convert.cu). */
int fo_launch_convert(const void *src, int32_t from, void *dst, int32_t to, int64_t n,
                      void *stream);

/* A gradient bucket's pack (unpack = 0) or unpack (kernels/pack.cu): for
 * each of blocks[0..num_blocks) (device memory, plan.h), its gradients
 * (grad_dtype) to the packed buffer wire (wire_dtype: the same, a bit
 * copy, or FO_RULE_F32 for 16-bit gradients) or back (RNE on narrowing). */
int fo_launch_pack(const fo_pack_block *blocks, int64_t num_blocks, void *wire, int32_t grad_dtype,
                   int32_t wire_dtype, int32_t unpack, void *stream);

#ifdef __cplusplus
}
#endif

#endif /* FO_LAUNCH_H */
