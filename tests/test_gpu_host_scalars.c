/*
 * test_gpu_host_scalars.c -- the GPU tier: eager steps the host decides
 * (host/known.c), one launch each, against the CPU executor.
 *
 * An eager step without a pre-pass carries its scalars by value in the
 * step launch, and block 0 publishes them into the device's step state.
 * Here, for a one-pass algorithm of each kind and for LAMB (whose apply
 * pass and trust factors read the state the norms pass published):
 *
 *   - after every eager step the device's whole step state equals the
 *     host's copy byte for byte (nothing more, nothing less was published),
 *     and its learning-rate factor equals the CPU executor's bit for bit
 *     (both come from the host's libm now);
 *   - a step captured into a CUDA graph turns the scheme off; replays and
 *     eager steps after it (through the prepare kernel) count on from the
 *     device's state: the step count and the parameters after eager,
 *     replayed and eager steps again match the CPU executor's;
 *   - with more groups than a launch carries, the prepare kernel decides
 *     and every group's tensor moves as on the CPU executor;
 *   - a step count set by the host reaches the next step on a
 *     non-blocking stream, with and without the prepare kernel;
 *   - so do a skipped count and NAdam's products set by the host
 *     (fo_optimizer_set_scaler_state, _set_mu_product): the host's copy
 *     follows them, and the host-decided steps after them carry and
 *     publish them.
 *
 * Skipped with the reason without a usable device.
 */
#define _POSIX_C_SOURCE 200809L /* unsetenv */

#include <criterion/criterion.h>
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "exec.h"
#include "fusedopt.h"
#include "gpu_harness.h"
#include "internal.h"
#include "testutil.h"

#define NT 3
#define N 3001

typedef struct pair {
  fo_optimizer *gpu, *cpu;
  float *dp[NT], *dg[NT];
  float hp[NT][N], hg[NT][N];
} pair;

/* max_grad_norm > 0: clipping, so every step takes the pre-pass and the
 * prepare kernel. */
static void pair_make(pair *p, fo_algorithm alg, uint64_t seed, float max_grad_norm) {
  memset(p, 0, sizeof *p);
  tu_rng r;
  tu_rng_seed(&r, seed, 1);
  fo_hparams h[2];
  for (int g = 0; g < 2; g++) {
    OK(fo_hparams_default(alg, &h[g]));
    h[g].weight_decay = g ? 0.0f : 0.05f;
    if (alg == FO_ALG_SGD) h[g].momentum = 0.9f;
    if (alg == FO_ALG_LAMB) h[g].layer_adaptation = g == 0;
  }
  fo_options o;
  OK(fo_options_default(&o));
  o.algorithm = alg;
  o.max_grad_norm = max_grad_norm;
  o.schedule.kind = FO_SCHED_COSINE;
  o.schedule.warmup_steps = 2;
  o.schedule.total_steps = 20;
  o.schedule.min_ratio = 0.1f;
  fo_tensor_desc dg[NT], dc[NT];
  for (int t = 0; t < NT; t++) {
    for (int i = 0; i < N; i++) {
      p->hp[t][i] = (float)tu_rng_nonzero(&r, 1e-2, 1.0);
      p->hg[t][i] = (float)tu_rng_nonzero(&r, -1.0, 1.0);
    }
    CK(cudaMalloc((void **)&p->dp[t], sizeof p->hp[t]));
    CK(cudaMalloc((void **)&p->dg[t], sizeof p->hg[t]));
    CK(cudaMemcpy(p->dp[t], p->hp[t], sizeof p->hp[t], cudaMemcpyHostToDevice));
    CK(cudaMemcpy(p->dg[t], p->hg[t], sizeof p->hg[t], cudaMemcpyHostToDevice));
    dg[t] = (fo_tensor_desc){N, t == 1, p->dp[t], p->dg[t], NULL};
    dc[t] = (fo_tensor_desc){N, t == 1, p->hp[t], p->hg[t], NULL};
  }
  o.executor = FO_EXEC_CUDA;
  OK(fo_optimizer_create(&p->gpu, &o, h, 2, dg, NT));
  o.executor = FO_EXEC_CPU;
  OK(fo_optimizer_create(&p->cpu, &o, h, 2, dc, NT));
}

static void pair_free(pair *p) {
  OK(fo_optimizer_destroy(p->gpu));
  OK(fo_optimizer_destroy(p->cpu));
  for (int t = 0; t < NT; t++) {
    CK(cudaFree(p->dp[t]));
    CK(cudaFree(p->dg[t]));
  }
}

static fo_step_info info_of(const fo_optimizer *opt) {
  fo_step_info i;
  OK(fo_optimizer_get_info(opt, &i));
  return i;
}

/* The device's parameters within a small relative distance of the CPU
 * executor's: the same fp32 arithmetic, scalars within 1 ulp. */
static void params_close(const pair *p, const char *ctx) {
  static float got[N];
  for (int t = 0; t < NT; t++) {
    CK(cudaMemcpy(got, p->dp[t], sizeof got, cudaMemcpyDeviceToHost));
    for (int i = 0; i < N; i++) {
      const double want = p->hp[t][i], d = fabs((double)got[i] - want);
      cr_assert(d <= 1e-5 * fmax(1.0, fabs(want)), "%s: tensor %d [%d] = %.9g, CPU %.9g", ctx, t, i,
                (double)got[i], want);
    }
  }
}

Test(gpu_host_scalars, eager_steps_publish_their_state_and_a_capture_turns_them_off,
     .timeout = 120) {
  require_device(1);
  cr_assert_eq(unsetenv("FUSEDOPT_HOST_SCALARS"), 0); /* whatever the suite's environment */
  const fo_algorithm algs[] = {FO_ALG_ADAMW, FO_ALG_SGD, FO_ALG_NADAM, FO_ALG_LAMB};
  cudaStream_t s;
  CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  for (size_t a = 0; a < sizeof algs / sizeof algs[0]; a++) {
    char ctx[64];
    snprintf(ctx, sizeof ctx, "algorithm %d", (int)algs[a]);
    pair p;
    pair_make(&p, algs[a], 40 + a, 0.0f);
    /* eager steps: decided on the host, the device's state published */
    for (int k = 1; k <= 3; k++) {
      OK(fo_optimizer_step(p.gpu, s));
      OK(fo_optimizer_step(p.cpu, NULL));
      cr_assert(p.gpu->known.valid && !p.gpu->known.off, "%s: step %d not decided on the host", ctx,
                k);
      fo_step_state on_dev;
      OK(fo_exec_read_state("test", p.gpu, &on_dev));
      cr_assert(memcmp(&on_dev, &p.gpu->known.state, sizeof on_dev) == 0,
                "%s, step %d: the device's state (step %lld, lr factor %.9g) is not the host's "
                "copy (step %lld, lr factor %.9g)",
                ctx, k, (long long)on_dev.step, (double)on_dev.lr_factor,
                (long long)p.gpu->known.state.step, (double)p.gpu->known.state.lr_factor);
      const fo_step_info gi = info_of(p.gpu), ci = info_of(p.cpu);
      cr_assert_eq(gi.step, k, "%s", ctx);
      cr_assert_eq(fo_f32_bits(gi.lr_factor), fo_f32_bits(ci.lr_factor),
                   "%s, step %d: lr factor %.9g, CPU %.9g", ctx, k, (double)gi.lr_factor,
                   (double)ci.lr_factor);
      cr_assert_eq(gi.last_step_skipped, 0, "%s", ctx);
    }
    params_close(&p, ctx);

    /* a captured step: off for good; three replays, two eager steps */
    cudaGraph_t graph = NULL;
    cudaGraphExec_t exec = NULL;
    CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    const fo_status st = fo_optimizer_step(p.gpu, s);
    CK(cudaStreamEndCapture(s, &graph));
    cr_assert_eq(st, FO_SUCCESS, "%s: step during capture: %s", ctx, fo_last_error());
    cr_assert(p.gpu->known.off, "%s: still deciding on the host after a capture", ctx);
    CK(cudaGraphInstantiate(&exec, graph, 0));
    for (int k = 0; k < 3; k++) {
      CK(cudaGraphLaunch(exec, s));
      OK(fo_optimizer_step(p.cpu, NULL));
    }
    for (int k = 0; k < 2; k++) {
      OK(fo_optimizer_step(p.gpu, s));
      OK(fo_optimizer_step(p.cpu, NULL));
    }
    CK(cudaStreamSynchronize(s));
    const fo_step_info gi = info_of(p.gpu), ci = info_of(p.cpu);
    cr_assert_eq(gi.step, 8, "%s: %lld steps after 3 eager, 3 replayed, 2 eager", ctx,
                 (long long)gi.step);
    cr_assert_eq(ci.step, 8, "%s", ctx);
    cr_assert(fabsf(gi.lr_factor - ci.lr_factor) <= 2e-7f * ci.lr_factor,
              "%s: lr factor %.9g, CPU %.9g", ctx, (double)gi.lr_factor, (double)ci.lr_factor);
    params_close(&p, ctx);
    CK(cudaGraphExecDestroy(exec));
    CK(cudaGraphDestroy(graph));
    pair_free(&p);
  }
  CK(cudaStreamDestroy(s));
}

/* More groups than a launch carries (FO_KNOWN_GROUPS): the host does not
 * decide those steps, the prepare kernel does, and every group's tensor
 * moves as on the CPU executor -- the groups past the carried ones
 * included. */
Test(gpu_host_scalars, more_groups_than_a_launch_carries_take_the_prepare_kernel, .timeout = 60) {
  require_device(1);
  cr_assert_eq(unsetenv("FUSEDOPT_HOST_SCALARS"), 0);
  enum { G = FO_KNOWN_GROUPS + 2, M = 1000 };
  static float hp[G][M], hg[G][M], got[M];
  float *dp[G], *dg[G];
  fo_hparams h[G];
  fo_tensor_desc tg[G], tc[G];
  tu_rng r;
  tu_rng_seed(&r, 77, 1);
  for (int g = 0; g < G; g++) {
    OK(fo_hparams_default(FO_ALG_ADAMW, &h[g]));
    h[g].lr = 1e-3f * (float)(g + 1); /* each group its own step */
    h[g].weight_decay = 0.01f * (float)g;
    for (int i = 0; i < M; i++) {
      hp[g][i] = (float)tu_rng_nonzero(&r, 1e-2, 1.0);
      hg[g][i] = (float)tu_rng_nonzero(&r, -1.0, 1.0);
    }
    CK(cudaMalloc((void **)&dp[g], sizeof hp[g]));
    CK(cudaMalloc((void **)&dg[g], sizeof hg[g]));
    CK(cudaMemcpy(dp[g], hp[g], sizeof hp[g], cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dg[g], hg[g], sizeof hg[g], cudaMemcpyHostToDevice));
    tg[g] = (fo_tensor_desc){M, g, dp[g], dg[g], NULL};
    tc[g] = (fo_tensor_desc){M, g, hp[g], hg[g], NULL};
  }
  fo_options o;
  OK(fo_options_default(&o));
  o.algorithm = FO_ALG_ADAMW;
  fo_optimizer *gpu = NULL, *cpu = NULL;
  o.executor = FO_EXEC_CUDA;
  OK(fo_optimizer_create(&gpu, &o, h, G, tg, G));
  o.executor = FO_EXEC_CPU;
  OK(fo_optimizer_create(&cpu, &o, h, G, tc, G));
  for (int k = 1; k <= 3; k++) {
    OK(fo_optimizer_step(gpu, NULL));
    OK(fo_optimizer_step(cpu, NULL));
    cr_assert(!gpu->known.valid, "step %d with %d groups decided on the host", k, G);
    cr_assert_eq(info_of(gpu).step, k);
  }
  for (int g = 0; g < G; g++) {
    CK(cudaMemcpy(got, dp[g], sizeof got, cudaMemcpyDeviceToHost));
    for (int i = 0; i < M; i++) {
      const double want = hp[g][i], d = fabs((double)got[i] - want);
      cr_assert(d <= 1e-5 * fmax(1.0, fabs(want)), "group %d [%d] = %.9g, CPU %.9g", g, i,
                (double)got[i], want);
    }
  }
  OK(fo_optimizer_destroy(gpu));
  OK(fo_optimizer_destroy(cpu));
  for (int g = 0; g < G; g++) {
    CK(cudaFree(dp[g]));
    CK(cudaFree(dg[g]));
  }
}

/* A step count the host writes (fo_optimizer_set_step) is in the device's
 * state before a step on a non-blocking stream reads it -- such a stream
 * does not wait for the legacy stream's copies by itself -- both through
 * the prepare kernel (clipping on) and on the host-decided path: the step
 * after it is number 101 on both, with the CPU executor's bias
 * corrections. */
Test(gpu_host_scalars, a_step_count_set_by_the_host_reaches_the_next_step, .timeout = 60) {
  require_device(1);
  cr_assert_eq(unsetenv("FUSEDOPT_HOST_SCALARS"), 0);
  cudaStream_t s;
  CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  for (int clip = 0; clip < 2; clip++) {
    pair p;
    /* clipped: the prepare kernel reads the state the host wrote */
    pair_make(&p, FO_ALG_ADAMW, 90 + (uint64_t)clip, clip ? 1.0f : 0.0f);
    OK(fo_optimizer_step(p.gpu, s));
    OK(fo_optimizer_step(p.cpu, NULL));
    CK(cudaStreamSynchronize(s));
    OK(fo_optimizer_set_step(p.gpu, 100));
    OK(fo_optimizer_set_step(p.cpu, 100));
    OK(fo_optimizer_step(p.gpu, s));
    OK(fo_optimizer_step(p.cpu, NULL));
    CK(cudaStreamSynchronize(s));
    cr_assert_eq(info_of(p.gpu).step, 101, "clip %d: step %lld after set_step(100)", clip,
                 (long long)info_of(p.gpu).step);
    params_close(&p, clip ? "set_step, clipped" : "set_step");
    pair_free(&p);
  }
  CK(cudaStreamDestroy(s));
}

/* The skipped count and NAdam's products the host writes
 * (fo_optimizer_set_scaler_state, _set_mu_product) are whole-state writes
 * like a step count: the host's copy follows them, so the host-decided
 * steps after them carry the new products and publish the new count (a
 * stale copy would put the old ones back into the device's state), and
 * the device's state equals the copy after each; the products and the
 * parameters match the CPU executor given the same values. */
Test(gpu_host_scalars, a_skipped_count_and_products_set_by_the_host_reach_the_next_steps,
     .timeout = 60) {
  require_device(1);
  cr_assert_eq(unsetenv("FUSEDOPT_HOST_SCALARS"), 0);
  cudaStream_t s;
  CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  pair p;
  pair_make(&p, FO_ALG_NADAM, 120, 0.0f);
  OK(fo_optimizer_step(p.gpu, s));
  OK(fo_optimizer_step(p.cpu, NULL));
  CK(cudaStreamSynchronize(s));
  fo_optimizer *both[2] = {p.gpu, p.cpu};
  for (int x = 0; x < 2; x++) {
    OK(fo_optimizer_set_step(both[x], 10));
    OK(fo_optimizer_set_mu_product(both[x], 0, 0.25f)); /* after set_step, which recomputes */
    OK(fo_optimizer_set_mu_product(both[x], 1, 0.5f));
    fo_scaler_state ss;
    OK(fo_optimizer_get_scaler_state(both[x], &ss));
    ss.skipped_steps = 7;
    OK(fo_optimizer_set_scaler_state(both[x], &ss));
  }
  cr_assert(p.gpu->known.valid && p.gpu->known.state.skipped == 7 &&
                p.gpu->known.state.mu_product[0] == 0.25f,
            "the host's copy did not follow the writes");
  for (int k = 1; k <= 2; k++) {
    OK(fo_optimizer_step(p.gpu, s));
    OK(fo_optimizer_step(p.cpu, NULL));
    CK(cudaStreamSynchronize(s));
    cr_assert(p.gpu->known.valid && !p.gpu->known.off, "step %d not decided on the host", k);
    fo_step_state on_dev;
    OK(fo_exec_read_state("test", p.gpu, &on_dev));
    cr_assert(memcmp(&on_dev, &p.gpu->known.state, sizeof on_dev) == 0,
              "step %d: the device's state (skipped %lld, mu %.9g) is not the host's copy "
              "(skipped %lld, mu %.9g)",
              k, (long long)on_dev.skipped, (double)on_dev.mu_product[0],
              (long long)p.gpu->known.state.skipped, (double)p.gpu->known.state.mu_product[0]);
    const fo_step_info gi = info_of(p.gpu);
    cr_assert(gi.step == 10 + k && gi.skipped_steps == 7, "step %d: step %lld, skipped %lld", k,
              (long long)gi.step, (long long)gi.skipped_steps);
    for (int g = 0; g < 2; g++) {
      float mg = 0.0f, mc = 0.0f;
      OK(fo_optimizer_get_mu_product(p.gpu, g, &mg));
      OK(fo_optimizer_get_mu_product(p.cpu, g, &mc));
      cr_assert_eq(fo_f32_bits(mg), fo_f32_bits(mc), "step %d, group %d: mu_product %.9g, CPU %.9g",
                   k, g, (double)mg, (double)mc);
    }
  }
  params_close(&p, "set_scaler_state, set_mu_product");
  pair_free(&p);
  CK(cudaStreamDestroy(s));
}
