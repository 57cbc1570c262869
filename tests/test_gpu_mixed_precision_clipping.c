/*
 * test_gpu_mixed_precision_clipping.c -- the GPU tier of mixed
 * precision (issue #4):
 * non-finite skipping and global-norm clipping on the CUDA executor
 * through the public API.
 * tests/test_mixed_precision.c is the CPU tier of the same features;
 * tests/support/gpu/gpu_mp.h is the rig.
 *
 * Every test first asks fo_cuda_device_count(); without a usable device it
 * is skipped with the reason (never passed without running).  With one:
 *
 *   overflow_in_one_element_skips_the_whole_step
 *       40 tensors of assorted odd sizes, external storage at (partly
 *       misaligned) offsets into one cudaMalloc per role, every algorithm x
 *       parameter dtype x gradient dtype, master weights for 16-bit
 *       parameters: after two clean steps one element of one tensor is inf,
 *       -inf or NaN; the step must leave every byte of the parameter and
 *       gradient buffers and every master / state buffer as it was, the
 *       step count unchanged, one skipped step, the scale halved; the next
 *       clean step applies.
 *   clipping_matches_the_cpu_executor_and_a_double_norm
 *       five clipped (and one unclipped) steps with loss scaling and a
 *       cosine schedule, against the CPU executor on identical inputs (the
 *       norm within 1e-6 relative: different summation trees; parameters
 *       and state within the tolerances of docs/numerics.md), and against
 *       the norm and coefficient computed here in double.
 *   norm_is_bit_identical_across_runs
 *       fresh optimizers, four runs (legacy default stream, a blocking and a
 *       non-blocking stream), 1240 tensors (more plan blocks than the
 *       prepare kernel's 1024 threads): the norm, the coefficient and every
 *       result bit for bit the same.
 *
 * Set FO_GPU_TEST_STAND_IN=cpu to run the same bodies against the CPU
 * executor over host memory (a check of the test's own plumbing on a
 * machine without a GPU).  The tests that need real CUDA streams skip:
 * step_never_waits_for_the_host entirely, graph_replay_matches_eager_steps
 * after running its eager-against-eager plumbing.
 */
#define _POSIX_C_SOURCE 200809L
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fusedopt.h"
#include "gpu_harness.h"
#include "gpu_mp.h"
#include "reference.h"
#include "testutil.h"

Test(gpu_mp, overflow_in_one_element_skips_the_whole_step) {
  dev d = dev_open(require_device(0));
  const fo_dtype dts[3] = {FO_DTYPE_F32, FO_DTYPE_F16, FO_DTYPE_BF16};
  /* where the non-finite value goes: the last element of the largest
   * tensor (its tail block), the single element of a 1-element tensor, the
   * first element of a tensor's second plan block, the middle of another */
  const struct {
    int64_t numel, elem;
  } where[4] = {{100003, 100002}, {1, 0}, {32769, 32768}, {8193, 4001}};
  const float bad_values[3] = {INFINITY, -INFINITY, NAN};
  int k = 0;
  for (int p = 0; p < 3; p++)
    for (int g = 0; g < 3; g++) {
      world w;
      mp_world_make(&w, dts[p], dts[g], 0, 1000 + (uint64_t)(p * 3 + g));
      unsigned char *pimg = param_image(&w, 7 + (uint64_t)(p * 3 + g));
      for (int a = 0; a < FO_ALG_COUNT; a++, k++) {
        char ctx[160];
        fo_options o;
        base_options(&o, (fo_algorithm)a, dts[p], dts[g]);
        o.max_grad_norm = k % 2 ? 5.0f : 0.0f;
        o.write_unscaled_grads = k % 3 == 0;
        if (k % 4 == 1) {
          o.schedule.kind = FO_SCHED_COSINE;
          o.schedule.warmup_steps = 1;
          o.schedule.total_steps = 6;
        }
        ctx_name(ctx, sizeof ctx, (fo_algorithm)a, dts[p], dts[g],
                 o.max_grad_norm > 0.0f ? "clip" : NULL);
        fo_hparams h[2];
        hparams_for((fo_algorithm)a, h);
        run r;
        run_open(&r, &d, &w, &o, h, pimg);
        tu_rng rng;
        tu_rng_seed(&rng, (uint64_t)k, 3);
        /* two clean steps, so that every moment and buffer is non-zero */
        for (int s = 0; s < 2; s++) {
          unsigned char *gimg = grad_image(&w, &rng, 1024.0);
          run_grads(&r, gimg);
          run_step(&r);
          dev_sync(&r.d); /* the copy's source is freed next */
          free(gimg);
        }
        /* one element of one tensor non-finite */
        unsigned char *bad = grad_image(&w, &rng, 1024.0);
        const int64_t t = find_tensor(&w, where[k % 4].numel), e = where[k % 4].elem;
        const float v = bad_values[k % 3];
        img_store(&w, bad, 1, t, e, (double)v);
        cr_assert(!isfinite(img_load(&w, bad, 1, t, e)), "%s: the test's bad value is finite", ctx);
        run_grads(&r, bad);
        snap before, after;
        snap_take(&r, &before);
        cr_assert_eq(memcmp(before.grad, bad, w.gbytes), 0, "%s: gradient upload", ctx);
        cr_assert_eq(before.info.step, 2, "%s", ctx);
        cr_assert_eq(before.info.skipped_steps, 0, "%s", ctx);
        cr_assert_eq(before.info.loss_scale, 1024.0f, "%s", ctx);
        run_step(&r);
        snap_take(&r, &after);
        cr_assert(memcmp(before.param, after.param, w.pbytes) == 0,
                  "%s: %g at tensor %lld [%lld]: the parameter buffer changed", ctx, (double)v,
                  (long long)t, (long long)e);
        cr_assert(memcmp(before.grad, after.grad, w.gbytes) == 0,
                  "%s: the gradient buffer changed in a skipped step", ctx);
        for (int s = 0; s < 4; s++) {
          cr_assert_eq(before.state[s] == NULL, after.state[s] == NULL);
          if (before.state[s])
            cr_assert(memcmp(before.state[s], after.state[s], (size_t)w.total * 4) == 0,
                      "%s: %g at tensor %lld [%lld]: %s changed", ctx, (double)v, (long long)t,
                      (long long)e, ROLE_NAMES[s]);
        }
        if (dts[p] != FO_DTYPE_F32) cr_assert_not_null(before.state[0], "%s: no master", ctx);
        cr_assert_eq(after.info.step, 2, "%s: step count %lld", ctx, (long long)after.info.step);
        cr_assert_eq(after.info.skipped_steps, 1, "%s", ctx);
        cr_assert_eq(after.info.last_step_skipped, 1, "%s", ctx);
        cr_assert_eq(after.info.loss_scale, 512.0f, "%s: scale %g", ctx,
                     (double)after.info.loss_scale);
        cr_assert(!isfinite(after.info.grad_norm), "%s: norm %g", ctx,
                  (double)after.info.grad_norm);
        cr_assert_eq(run_scale_at_ptr(&r), 512.0f, "%s", ctx);
        /* the next clean step applies */
        unsigned char *clean = grad_image(&w, &rng, 512.0);
        run_grads(&r, clean);
        run_step(&r);
        snap again;
        snap_take(&r, &again);
        cr_assert_eq(again.info.step, 3, "%s", ctx);
        cr_assert_eq(again.info.last_step_skipped, 0, "%s", ctx);
        /* in fp32: the master where there is one (every 16-bit case here;
         * LARS's step, lr x eta x ||w|| / ||g||, about 1e-6 of a weight,
         * is below a bf16 parameter's resolution), else the parameter.
         * Nearly every element moves (99 %; 90 % for LAMB's and LARS's
         * steps of about 1e-6 of a weight, some below an fp32 ulp): a
         * block that read a stale skip decision or scale would leave its
         * elements, up to a chunk of 32768 of the world's ~300,000, where
         * they were. */
        int64_t moved = 0;
        for (int64_t ti = 0; ti < w.nt; ti++)
          for (int64_t ei = 0; ei < w.numel[ti]; ei++)
            moved +=
                before.state[0]
                    ? before.state[0][w.hoff[ti] + ei] != again.state[0][w.hoff[ti] + ei]
                    : img_load(&w, before.param, 0, ti, ei) != img_load(&w, again.param, 0, ti, ei);
        const int layerwise = a == FO_ALG_LAMB || a == FO_ALG_LARS;
        cr_assert(moved >= w.total - w.total / (layerwise ? 10 : 100),
                  "%s: the clean step after a skip moved %lld of %lld weights", ctx,
                  (long long)moved, (long long)w.total);
        mp_check_gaps(&w, again.param, 0, ctx);
        mp_check_gaps(&w, again.grad, 1, ctx);
        snap_free(&before);
        snap_free(&after);
        snap_free(&again);
        free(bad);
        free(clean);
        run_close(&r);
      }
      free(pimg);
      world_free(&w);
    }
  dev_close(&d);
}

/* ========================================================== 2. clipping */

/* The gradients of one clipping step, packed fp32 values exactly
 * representable in the gradient dtype: mp_draw_grad() * gain * scale, redrawn
 * where the rule has a discontinuity (docs/numerics.md): Lion's c = b1*m +
 * (1-b1)*d or Adam's L2-decayed gradient d + wd*w cancelling to below 1e-3
 * of its terms, judged with the CPU optimizer's current state. */
static float *clip_grads(const world *w, fo_algorithm alg, const fo_hparams h[2], const snap *cpu,
                         tu_rng *r, double scale, double gain, double max_norm) {
  const int64_t n = w->total;
  float *gf = malloc((size_t)n * 4 + 4);
  double *pv = malloc((size_t)n * sizeof *pv + 8);
  cr_assert(gf && pv);
  for (int64_t e = 0; e < n; e++) gf[e] = (float)ref_round(w->gt, mp_draw_grad(r) * gain * scale);
  for (int64_t i = 0; i < w->nt; i++)
    for (int64_t j = 0; j < w->numel[i]; j++)
      pv[w->hoff[i] + j] =
          cpu->state[0] ? (double)cpu->state[0][w->hoff[i] + j] : img_load(w, cpu->param, 0, i, j);
  const float *m = cpu->state[1];
  for (int round = 0; round < 8; round++) {
    double sumsq = 0.0;
    for (int64_t e = 0; e < n; e++) sumsq += (double)gf[e] * (double)gf[e];
    const double norm = sqrt(sumsq) / scale;
    const double coef = fmin(1.0, max_norm / (norm + 1e-6)) / scale;
    int64_t redrawn = 0;
    for (int64_t i = 0; i < w->nt; i++) {
      const fo_hparams *hg = &h[w->group[i]];
      for (int64_t j = 0; j < w->numel[i]; j++) {
        const int64_t e = w->hoff[i] + j;
        const double dd = (double)gf[e] * coef * (hg->maximize ? -1.0 : 1.0);
        int bad = 0;
        if (alg == FO_ALG_ADAM && hg->weight_decay > 0.0f) {
          const double wp = (double)hg->weight_decay * pv[e];
          const double terms = fabs(dd) + fabs(wp);
          bad = terms > 0.0 && fabs(dd + wp) < 1e-3 * terms;
        } else if (alg == FO_ALG_LION) {
          const double bm = (double)hg->beta1 * (m ? (double)m[e] : 0.0);
          const double bd = (1.0 - (double)hg->beta1) * dd;
          const double terms = fabs(bm) + fabs(bd);
          bad = terms > 0.0 && fabs(bm + bd) < 1e-3 * terms;
        }
        if (bad) {
          gf[e] = (float)ref_round(w->gt, mp_draw_grad(r) * gain * scale);
          redrawn++;
        }
      }
    }
    if (!redrawn) break;
  }
  free(pv);
  return gf;
}

static double *widen_packed(fo_dtype dt, const unsigned char *buf, int64_t n) {
  double *x = malloc((size_t)n * sizeof *x + 8);
  cr_assert_not_null(x);
  for (int64_t i = 0; i < n; i++) x[i] = ref_load(dt, buf, i);
  return x;
}

/* The run under test against the CPU executor with test_gpu_kernels.c's
 * tolerances: fp32 values within 1e-5 of the buffer's largest magnitude +
 * 1e-5 relative; 16-bit parameters (all with master here) that plus 1 ulp,
 * and exactly RNE(their own master). */
static void compare_to_cpu(const world *w, const snap *want, const snap *got, const char *ctx) {
  const int64_t n = w->total;
  const int sixteen = w->pt != FO_DTYPE_F32;
  tu_report rep;
  int64_t inexact = 0;
  unsigned char *pw_raw = img_pack(w, want->param, 0), *pg_raw = img_pack(w, got->param, 0);
  double *pw = widen_packed(w->pt, pw_raw, n);
  tu_tol tol = {1e-5 * max_abs(pw, n), 1e-5, sixteen ? 1.0 : 0.0, w->pt};
  expect_report(tu_compare(&rep, pw, pg_raw, w->pt, n, tol), &rep, "parameters", ctx);
  inexact += rep.inexact;
  if (sixteen) {
    cr_assert_not_null(got->state[0], "%s: no master weights", ctx);
    for (int64_t e = 0; e < n; e++) {
      double rne = ref_round(w->pt, (double)got->state[0][e]);
      double pe = ref_load(w->pt, pg_raw, e);
      cr_assert(rne == pe, "%s: parameter [%lld] = %.9g is not RNE(master %.9g)", ctx, (long long)e,
                pe, (double)got->state[0][e]);
    }
  }
  for (int k = 0; k < 4; k++) {
    cr_assert_eq(got->state[k] == NULL, want->state[k] == NULL, "%s: %s kept by one executor", ctx,
                 ROLE_NAMES[k]);
    if (!want->state[k]) continue;
    double *sw = malloc((size_t)n * sizeof *sw + 8);
    cr_assert_not_null(sw);
    for (int64_t i = 0; i < n; i++) sw[i] = (double)want->state[k][i];
    tu_tol st = {1e-5 * max_abs(sw, n), 1e-5, 0.0, FO_DTYPE_F32};
    expect_report(tu_compare(&rep, sw, got->state[k], FO_DTYPE_F32, n, st), &rep, ROLE_NAMES[k],
                  ctx);
    inexact += rep.inexact;
    free(sw);
  }
  if (inexact)
    cr_log_info("%s: %lld values differ from the CPU executor (within tolerance)", ctx,
                (long long)inexact);
  free(pw);
  free(pw_raw);
  free(pg_raw);
}

Test(gpu_mp, clipping_matches_the_cpu_executor_and_a_double_norm) {
  dev d = dev_open(require_device(0));
  const dev host = {0, NULL};
  const struct {
    fo_dtype pt, gt;
  } dts[4] = {{FO_DTYPE_F32, FO_DTYPE_F32},
              {FO_DTYPE_BF16, FO_DTYPE_BF16},
              {FO_DTYPE_F16, FO_DTYPE_F32},
              {FO_DTYPE_F32, FO_DTYPE_F16}};
  /* gradient magnitudes per step: the norm is ~650 x gain, so max_grad_norm
   * 5 clips every step but the third */
  enum { STEPS = 5 };
  const double gains[STEPS] = {1.0, 1.0, 1e-3, 1.0, 0.5};
  const double scale = 1024.0, max_norm = 5.0;
  for (int a = 0; a < FO_ALG_COUNT; a++)
    for (int m = 0; m < 4; m++) {
      const fo_algorithm alg = (fo_algorithm)a;
      char ctx[160];
      ctx_name(ctx, sizeof ctx, alg, dts[m].pt, dts[m].gt, NULL);
      world w;
      mp_world_make(&w, dts[m].pt, dts[m].gt, 0, 2000 + (uint64_t)(a * 4 + m));
      unsigned char *pimg = param_image(&w, 21 + (uint64_t)(a * 4 + m));
      fo_options o;
      base_options(&o, alg, dts[m].pt, dts[m].gt);
      o.max_grad_norm = (float)max_norm;
      o.schedule.kind = FO_SCHED_COSINE;
      o.schedule.warmup_steps = 1;
      o.schedule.total_steps = 8;
      o.schedule.min_ratio = 0.05f;
      fo_hparams h[2];
      hparams_for(alg, h);
      run cpu, dut;
      run_open(&cpu, &host, &w, &o, h, pimg);
      run_open(&dut, &d, &w, &o, h, pimg);
      tu_rng rng;
      tu_rng_seed(&rng, (uint64_t)(a * 4 + m), 11);
      for (int s = 0; s < STEPS; s++) {
        snap cs;
        snap_take(&cpu, &cs);
        float *gf = clip_grads(&w, alg, h, &cs, &rng, scale, gains[s], max_norm);
        unsigned char *gimg = grad_image_from(&w, gf);
        run_grads(&cpu, gimg);
        run_grads(&dut, gimg);
        run_step(&cpu);
        run_step(&dut);
        const fo_step_info ci = run_info(&cpu), gi = run_info(&dut);
        /* the norm and coefficient, in double here */
        const double norm = image_norm(&w, gimg, scale);
        const double clip = fmin(1.0, max_norm / (norm + 1e-6));
        const double coef = clip / scale;
        cr_assert_eq(gi.step, s + 1, "%s: step %d: count %lld", ctx, s + 1, (long long)gi.step);
        cr_assert_eq(gi.last_step_skipped, 0, "%s: step %d skipped", ctx, s + 1);
        cr_assert(fabs((double)gi.grad_norm - norm) <= 1e-6 * norm,
                  "%s: step %d: norm %.9g, double %.9g", ctx, s + 1, (double)gi.grad_norm, norm);
        cr_assert(fabs((double)gi.grad_norm - (double)ci.grad_norm) <= 1e-6 * (double)ci.grad_norm,
                  "%s: step %d: norm %.9g, CPU executor %.9g", ctx, s + 1, (double)gi.grad_norm,
                  (double)ci.grad_norm);
        cr_assert(fabs((double)gi.grad_coef - coef) <= 1e-6 * coef,
                  "%s: step %d: coefficient %.9g, double %.9g", ctx, s + 1, (double)gi.grad_coef,
                  coef);
        cr_assert(fabs((double)gi.grad_coef - (double)ci.grad_coef) <= 1e-6 * (double)ci.grad_coef,
                  "%s: step %d: coefficient %.9g, CPU executor %.9g", ctx, s + 1,
                  (double)gi.grad_coef, (double)ci.grad_coef);
        cr_assert(fabs((double)gi.lr_factor - (double)ci.lr_factor) <= 1e-6,
                  "%s: step %d: lr factor %.9g, CPU executor %.9g", ctx, s + 1,
                  (double)gi.lr_factor, (double)ci.lr_factor);
        cr_assert_eq(gi.loss_scale, ci.loss_scale, "%s: step %d: scale", ctx, s + 1);
        if (gains[s] == 1.0)
          cr_assert(clip < 0.1 && (double)gi.grad_coef * scale < 0.1,
                    "%s: step %d: the test meant to clip (clip %g, coef x scale %g)", ctx, s + 1,
                    clip, (double)gi.grad_coef * scale);
        if (gains[s] < 0.01)
          cr_assert(norm < max_norm, "%s: step %d: the test meant not to clip (norm %g)", ctx,
                    s + 1, norm);
        if (norm < max_norm)
          cr_assert_eq(gi.grad_coef, (float)(1.0 / scale),
                       "%s: step %d: norm %g < %g, yet coefficient %a", ctx, s + 1, norm, max_norm,
                       (double)gi.grad_coef);
        snap_free(&cs);
        free(gf);
        free(gimg);
      }
      snap want, got;
      snap_take(&cpu, &want);
      snap_take(&dut, &got);
      compare_to_cpu(&w, &want, &got, ctx);
      mp_check_gaps(&w, got.param, 0, ctx);
      mp_check_gaps(&w, got.grad, 1, ctx);
      /* gradients are not written back unless asked */
      cr_assert(memcmp(got.grad, want.grad, w.gbytes) == 0, "%s: gradients changed", ctx);
      snap_free(&want);
      snap_free(&got);
      run_close(&cpu);
      run_close(&dut);
      free(pimg);
      world_free(&w);
    }
  dev_close(&d);
}

/* ======================================================= 3. repeatable */

Test(gpu_mp, norm_is_bit_identical_across_runs) {
  dev d = dev_open(require_device(0));
  enum { RUNS = 4, STEPS = 3 };
  /* 1200 tiny tensors on top of the 40: more plan blocks (and partial sums)
   * than the prepare kernel has threads, so its strided loop runs */
  world w;
  mp_world_make(&w, FO_DTYPE_BF16, FO_DTYPE_BF16, 1200, 3000);
  const char *ctx = "adamw param bf16 grad bf16, 1240 tensors";
  unsigned char *pimg = param_image(&w, 31);
  unsigned char *gimg[STEPS];
  tu_rng rng;
  tu_rng_seed(&rng, 31, 1);
  for (int s = 0; s < STEPS; s++) gimg[s] = grad_image(&w, &rng, 1024.0);
  fo_options o;
  base_options(&o, FO_ALG_ADAMW, w.pt, w.gt);
  o.max_grad_norm = 5.0f;
  fo_hparams h[2];
  hparams_for(FO_ALG_ADAMW, h);
  cudaStream_t nonblocking = NULL;
  if (d.cuda) CK(cudaStreamCreateWithFlags(&nonblocking, cudaStreamNonBlocking));
  fo_step_info info[RUNS][STEPS];
  snap fin[RUNS];
  for (int i = 0; i < RUNS; i++) {
    /* the legacy default stream, the test's stream, a non-blocking one */
    dev di = d;
    if (d.cuda) di.stream = i == 0 ? NULL : i == 2 ? nonblocking : d.stream;
    run r;
    run_open(&r, &di, &w, &o, h, pimg);
    for (int s = 0; s < STEPS; s++) {
      run_grads(&r, gimg[s]);
      run_step(&r);
      info[i][s] = run_info(&r);
    }
    snap_take(&r, &fin[i]);
    run_close(&r);
  }
  for (int s = 0; s < STEPS; s++) {
    const double norm = image_norm(&w, gimg[s], 1024.0);
    cr_assert(isfinite(info[0][s].grad_norm) && info[0][s].grad_norm > 0.0f, "%s", ctx);
    cr_assert(fabs((double)info[0][s].grad_norm - norm) <= 1e-6 * norm,
              "%s: step %d: norm %.9g, double %.9g", ctx, s + 1, (double)info[0][s].grad_norm,
              norm);
    for (int i = 1; i < RUNS; i++) {
      char what[64];
      snprintf(what, sizeof what, "run %d step %d against run 0", i + 1, s + 1);
      info_identical(&info[i][s], &info[0][s], what, ctx);
    }
  }
  for (int i = 1; i < RUNS; i++) {
    char what[64];
    snprintf(what, sizeof what, "run %d against run 0", i + 1);
    snap_identical(&w, &fin[i], &fin[0], what, ctx);
  }
  for (int i = 0; i < RUNS; i++) snap_free(&fin[i]);
  for (int s = 0; s < STEPS; s++) free(gimg[s]);
  if (nonblocking) CK(cudaStreamDestroy(nonblocking));
  free(pimg);
  world_free(&w);
  dev_close(&d);
}

/* ======================================================== 4. CUDA graph */
