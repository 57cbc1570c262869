/*
 * test_gpu_mixed_precision_scaler.c -- the GPU tier of mixed
 * precision (issue #4):
 * the loss scaler and the unscaled-gradient write-back on the device.
 * tests/test_mixed_precision.c is the CPU tier of the same features;
 * tests/support/gpu/gpu_mp.h is the rig.
 *
 * Every test first asks fo_cuda_device_count(); without a usable device it
 * is skipped with the reason (never passed without running).  With one:
 *
 *   unscaled_grads_written_back_and_loss_scale_ptr
 *       write_unscaled_grads writes exactly g / scale (power-of-two scales,
 *       no clipping; AdamW, and LAMB and LARS, whose write-back follows
 *       their second pass), g * coef rounded to the gradient dtype with clipping,
 *       nothing after a skipped step and nothing between tensors;
 *       fo_optimizer_loss_scale_ptr is device memory holding get_info's
 *       loss_scale.
 *   scaler_grows_and_backs_off_on_the_device
 *       growth_interval 3 (the CPU tier's sequence), hysteresis, max_scale
 *       and the inf guard, on the device; a scaler state read back and set
 *       (fo_optimizer_get_scaler_state, _set_scaler_state) is where the
 *       device's next steps continue from.
 *   scale_floor_and_non_finite_coefficient_on_the_device
 *       issue #20: 200 consecutive overflows from 2^16 end at
 *       FO_LOSS_SCALE_MIN with the parameters and state untouched and a
 *       checkpoint that verifies and loads; the next clean step applies,
 *       finite; a scale of 0, 2^-127 or NaN written through the pointer is
 *       skipped like an overflow and restarts at the floor.
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
#include <unistd.h>

#include "fusedopt.h"
#include "gpu_harness.h"
#include "gpu_mp.h"
#include "reference.h"
#include "testutil.h"

static void expect_divided(const world *w, const unsigned char *got, const unsigned char *want,
                           double div, const char *ctx) {
  for (int64_t i = 0; i < w->nt; i++)
    for (int64_t j = 0; j < w->numel[i]; j++) {
      const double g = img_load(w, got, 1, i, j), x = img_load(w, want, 1, i, j) / div;
      cr_assert(g == x, "%s: tensor %lld [%lld]: written %.9g, expected %.9g / %g = %.9g", ctx,
                (long long)i, (long long)j, g, x * div, div, x);
    }
}

Test(gpu_mp, unscaled_grads_written_back_and_loss_scale_ptr) {
  dev d = dev_open(require_device(0));
  const fo_dtype dts[3] = {FO_DTYPE_F32, FO_DTYPE_F16, FO_DTYPE_BF16};
  /* the one-pass step, and LAMB's and LARS's two passes (the write-back
   * follows the apply pass there) */
  const fo_algorithm algs[3] = {FO_ALG_ADAMW, FO_ALG_LAMB, FO_ALG_LARS};
  for (int k = 0; k < 9; k++) {
    const fo_dtype dt = dts[k % 3];
    const fo_algorithm alg = algs[k / 3];
    char ctx[160];
    ctx_name(ctx, sizeof ctx, alg, dt, dt, "write_unscaled_grads");
    world w;
    mp_world_make(&w, dt, dt, 0, 6000 + (uint64_t)k);
    unsigned char *pimg = param_image(&w, 61 + (uint64_t)k);
    fo_options o;
    base_options(&o, alg, dt, dt);
    o.write_unscaled_grads = 1;
    fo_hparams h[2];
    hparams_for(alg, h);
    run r;
    run_open(&r, &d, &w, &o, h, pimg);
    tu_rng rng;
    tu_rng_seed(&rng, (uint64_t)k, 6);

    /* the scale pointer: executor memory, holding get_info's scale */
    float *sp = NULL;
    OK(fo_optimizer_loss_scale_ptr(r.opt, &sp));
    if (d.cuda) {
      struct cudaPointerAttributes pa;
      CK(cudaPointerGetAttributes(&pa, sp));
      cr_assert_eq(pa.type, cudaMemoryTypeDevice, "%s: loss_scale_ptr is not device memory", ctx);
    }
    cr_assert_eq(run_scale_at_ptr(&r), 1024.0f, "%s", ctx);
    cr_assert_eq(run_info(&r).loss_scale, 1024.0f, "%s", ctx);

    /* a clean step: g / 1024 written back, exactly */
    unsigned char *g1 = grad_image(&w, &rng, 1024.0);
    run_grads(&r, g1);
    run_step(&r);
    snap s1;
    snap_take(&r, &s1);
    cr_assert_eq(s1.info.last_step_skipped, 0, "%s", ctx);
    cr_assert_eq(s1.info.grad_coef, 1.0f / 1024.0f, "%s: coefficient %a", ctx,
                 (double)s1.info.grad_coef);
    expect_divided(&w, s1.grad, g1, 1024.0, ctx);
    mp_check_gaps(&w, s1.grad, 1, ctx);
    cr_assert_eq(run_scale_at_ptr(&r), s1.info.loss_scale, "%s", ctx);

    /* a skipped step writes nothing */
    unsigned char *g2 = grad_image(&w, &rng, 1024.0);
    img_store(&w, g2, 1, find_tensor(&w, 1025), 1024, -INFINITY);
    run_grads(&r, g2);
    run_step(&r);
    snap s2;
    snap_take(&r, &s2);
    cr_assert_eq(s2.info.last_step_skipped, 1, "%s", ctx);
    cr_assert_eq(s2.info.step, 1, "%s", ctx);
    cr_assert(memcmp(s2.grad, g2, w.gbytes) == 0, "%s: a skipped step wrote the gradients", ctx);
    cr_assert(memcmp(s2.param, s1.param, w.pbytes) == 0, "%s: a skipped step wrote parameters",
              ctx);
    cr_assert_eq(s2.info.loss_scale, 512.0f, "%s", ctx);
    cr_assert_eq(run_scale_at_ptr(&r), 512.0f, "%s: the scale at loss_scale_ptr", ctx);

    /* the next step unscales by the new scale */
    unsigned char *g3 = grad_image(&w, &rng, 512.0);
    run_grads(&r, g3);
    run_step(&r);
    snap s3;
    snap_take(&r, &s3);
    cr_assert_eq(s3.info.step, 2, "%s", ctx);
    cr_assert_eq(s3.info.grad_coef, 1.0f / 512.0f, "%s", ctx);
    expect_divided(&w, s3.grad, g3, 512.0, ctx);
    mp_check_gaps(&w, s3.grad, 1, ctx);
    snap_free(&s1);
    snap_free(&s2);
    snap_free(&s3);
    run_close(&r);

    /* with clipping: g * coef in fp32, rounded to the gradient dtype */
    o.max_grad_norm = 5.0f;
    run_open(&r, &d, &w, &o, h, pimg);
    unsigned char *g4 = grad_image(&w, &rng, 1024.0);
    run_grads(&r, g4);
    run_step(&r);
    snap s4;
    snap_take(&r, &s4);
    const double norm = image_norm(&w, g4, 1024.0);
    const double coef = fmin(1.0, 5.0 / (norm + 1e-6)) / 1024.0;
    cr_assert(coef * 1024.0 < 0.1, "%s: the test meant to clip", ctx);
    cr_assert(fabs((double)s4.info.grad_coef - coef) <= 1e-6 * coef, "%s: coefficient %.9g, %.9g",
              ctx, (double)s4.info.grad_coef, coef);
    for (int64_t i = 0; i < w.nt; i++)
      for (int64_t j = 0; j < w.numel[i]; j++) {
        const float prod = (float)img_load(&w, g4, 1, i, j) * s4.info.grad_coef;
        const double want = ref_round(w.gt, (double)prod), got = img_load(&w, s4.grad, 1, i, j);
        cr_assert(got == want, "%s, clipped: tensor %lld [%lld]: written %.9g, expected %.9g", ctx,
                  (long long)i, (long long)j, got, want);
      }
    mp_check_gaps(&w, s4.grad, 1, ctx);
    snap_free(&s4);
    run_close(&r);
    free(g1);
    free(g2);
    free(g3);
    free(g4);
    free(pimg);
    world_free(&w);
  }
  dev_close(&d);
}

/* ============================================================ 7. scaler */

/* Gradients for a run: mp_draw_grad() * the scale read through
 * loss_scale_ptr (times mult), with a NaN in one element when overflow. */
static unsigned char *scaler_grads(const run *r, tu_rng *rng, double mult, int overflow) {
  const double scale = (double)run_scale_at_ptr(r);
  unsigned char *g = grad_image(r->w, rng, scale * mult);
  if (overflow) img_store(r->w, g, 1, find_tensor(r->w, 257), 100, NAN);
  return g;
}

/* One step of r over the gradient image g, finished. */
static void step_over(run *r, const unsigned char *g) {
  run_grads(r, g);
  run_step(r);
  dev_sync(&r->d);
}

/* Step a run over scaler_grads(). */
static void scaler_step(run *r, tu_rng *rng, double mult, int overflow) {
  unsigned char *g = scaler_grads(r, rng, mult, overflow);
  step_over(r, g);
  free(g);
}

Test(gpu_mp, scaler_grows_and_backs_off_on_the_device) {
  dev d = dev_open(require_device(0));
  const fo_dtype gts[2] = {FO_DTYPE_F32, FO_DTYPE_BF16};
  for (int k = 0; k < 2; k++) {
    char ctx[160];
    ctx_name(ctx, sizeof ctx, FO_ALG_ADAMW, FO_DTYPE_F32, gts[k], NULL);
    world w;
    mp_world_make(&w, FO_DTYPE_F32, gts[k], 0, 7000 + (uint64_t)k);
    unsigned char *pimg = param_image(&w, 71);
    fo_hparams h[2];
    hparams_for(FO_ALG_ADAMW, h);
    tu_rng rng;
    tu_rng_seed(&rng, (uint64_t)k, 7);

    /* growth_interval 3, defaults otherwise: the CPU tier's sequence; the
     * fifth step overflows */
    fo_options o;
    base_options(&o, FO_ALG_ADAMW, FO_DTYPE_F32, gts[k]);
    o.loss_scaler.init_scale = 65536.0f;
    o.loss_scaler.growth_interval = 3;
    run r;
    run_open(&r, &d, &w, &o, h, pimg);
    const float expect[8] = {65536, 65536, 131072, 131072, 65536, 65536, 65536, 131072};
    const int tracker[8] = {1, 2, 0, 1, 0, 1, 2, 0};
    for (int s = 0; s < 8; s++) {
      scaler_step(&r, &rng, 1.0, s == 4);
      const fo_step_info i = run_info(&r);
      cr_assert_eq(i.loss_scale, expect[s], "%s: after step %d: scale %g, expected %g", ctx, s + 1,
                   (double)i.loss_scale, (double)expect[s]);
      cr_assert_eq(run_scale_at_ptr(&r), i.loss_scale, "%s: step %d", ctx, s + 1);
      cr_assert_eq(i.last_step_skipped, s == 4, "%s: step %d", ctx, s + 1);
      cr_assert_eq(i.growth_tracker, tracker[s], "%s: after step %d: tracker %d", ctx, s + 1,
                   i.growth_tracker);
    }
    fo_step_info i = run_info(&r);
    cr_assert_eq(i.step, 7, "%s", ctx);
    cr_assert_eq(i.skipped_steps, 1, "%s", ctx);
    run_close(&r);

    /* hysteresis 2: overflow, clean, overflow x3 -> only the 4th backs off */
    base_options(&o, FO_ALG_ADAMW, FO_DTYPE_F32, gts[k]);
    o.loss_scaler.init_scale = 65536.0f;
    o.loss_scaler.hysteresis = 2;
    run_open(&r, &d, &w, &o, h, pimg);
    const int over[5] = {1, 0, 1, 1, 1};
    const float hexpect[5] = {65536, 65536, 65536, 32768, 32768};
    for (int s = 0; s < 5; s++) {
      scaler_step(&r, &rng, 1.0, over[s]);
      cr_assert_eq(run_info(&r).loss_scale, hexpect[s], "%s: hysteresis, step %d: %g", ctx, s + 1,
                   (double)run_info(&r).loss_scale);
    }
    i = run_info(&r);
    cr_assert_eq(i.skipped_steps, 4, "%s", ctx);
    cr_assert_eq(i.step, 1, "%s", ctx);
    /* the state read back from the device (one overflow since the
     * back-off), then set: the prepare kernel continues from what was set
     * -- one overflow left before a back-off, then a tracker one short of
     * the interval */
    fo_scaler_state ss;
    OK(fo_optimizer_get_scaler_state(r.opt, &ss));
    cr_assert(ss.skipped_steps == 4 && ss.scale == 32768.0f && ss.growth_tracker == 0 &&
                  ss.hysteresis_left == 1,
              "%s: scaler state %lld %g %d %d", ctx, (long long)ss.skipped_steps, (double)ss.scale,
              ss.growth_tracker, ss.hysteresis_left);
    const fo_scaler_state set = {9, 4096.0f, 0, 1};
    OK(fo_optimizer_set_scaler_state(r.opt, &set));
    cr_assert_eq(run_scale_at_ptr(&r), 4096.0f, "%s", ctx);
    scaler_step(&r, &rng, 1.0, 1);
    i = run_info(&r);
    cr_assert(i.loss_scale == 2048.0f && i.skipped_steps == 10,
              "%s: after set: scale %g skipped %lld", ctx, (double)i.loss_scale,
              (long long)i.skipped_steps);
    const fo_scaler_state grow = {10, 4096.0f, o.loss_scaler.growth_interval - 1, 2};
    OK(fo_optimizer_set_scaler_state(r.opt, &grow));
    scaler_step(&r, &rng, 1.0, 0);
    OK(fo_optimizer_get_scaler_state(r.opt, &ss));
    cr_assert(ss.scale == 8192.0f && ss.growth_tracker == 0 && ss.skipped_steps == 10,
              "%s: after a tracker one short: scale %g tracker %d", ctx, (double)ss.scale,
              ss.growth_tracker);
    cr_assert_eq(run_info(&r).step, 2, "%s", ctx);
    run_close(&r);

    /* max_scale: 1024 -> 2048 -> 3000 (clamped) -> 3000 */
    base_options(&o, FO_ALG_ADAMW, FO_DTYPE_F32, gts[k]);
    o.loss_scaler.growth_interval = 1;
    o.loss_scaler.max_scale = 3000.0f;
    run_open(&r, &d, &w, &o, h, pimg);
    const float mexpect[3] = {2048.0f, 3000.0f, 3000.0f};
    for (int s = 0; s < 3; s++) {
      scaler_step(&r, &rng, 1.0, 0);
      cr_assert_eq(run_info(&r).loss_scale, mexpect[s], "%s: max_scale, step %d: %g", ctx, s + 1,
                   (double)run_info(&r).loss_scale);
    }
    run_close(&r);

    /* never to inf: 2^126 -> 2^127 -> stays (gradients not scaled) */
    o.loss_scaler.max_scale = 0.0f;
    o.loss_scaler.init_scale = 0x1.0p126f;
    run_open(&r, &d, &w, &o, h, pimg);
    for (int s = 0; s < 3; s++) scaler_step(&r, &rng, 1.0 / (double)run_scale_at_ptr(&r), 0);
    i = run_info(&r);
    cr_assert_eq(i.loss_scale, 0x1.0p127f, "%s: scale %a", ctx, (double)i.loss_scale);
    cr_assert_eq(i.step, 3, "%s", ctx);
    run_close(&r);

    free(pimg);
    world_free(&w);
  }
  dev_close(&d);
}

/* ======================================================= 8. scale floor */

/* The parameter and state buffers of a and b are the same, byte for byte
 * (the gradients and the step info are the caller's to compare). */
static void weights_identical(const world *w, const snap *a, const snap *b, const char *what,
                              const char *ctx) {
  cr_assert(memcmp(a->param, b->param, w->pbytes) == 0, "%s: %s: parameter buffers differ", ctx,
            what);
  for (int k = 0; k < 4; k++)
    if (a->state[k] && b->state[k])
      cr_assert(memcmp(a->state[k], b->state[k], (size_t)w->total * 4) == 0, "%s: %s: %s differs",
                ctx, what, ROLE_NAMES[k]);
}

/* Every parameter and state element of s is finite. */
static void weights_finite(const world *w, const snap *s, const char *what, const char *ctx) {
  for (int64_t i = 0; i < w->nt; i++)
    for (int64_t j = 0; j < w->numel[i]; j++)
      cr_assert(isfinite(img_load(w, s->param, 0, i, j)), "%s: %s: tensor %lld param %lld", ctx,
                what, (long long)i, (long long)j);
  for (int k = 0; k < 4; k++)
    for (int64_t e = 0; s->state[k] && e < w->total; e++)
      cr_assert(isfinite(s->state[k][e]), "%s: %s: %s element %lld is %g", ctx, what, ROLE_NAMES[k],
                (long long)e, (double)s->state[k][e]);
}

/* The device's master weights and moments against the CPU executor's
 * after the same steps, within the GPU tier's fp32 bound (gpu_matrix.h). */
static void state_like_cpu(const world *w, const snap *gpu, const snap *cpu, const char *what,
                           const char *ctx) {
  double *want = malloc((size_t)w->total * sizeof *want + 8);
  cr_assert_not_null(want);
  for (int k = 0; k < 4; k++) {
    cr_assert_eq(gpu->state[k] == NULL, cpu->state[k] == NULL, "%s: %s", ctx, ROLE_NAMES[k]);
    if (!cpu->state[k]) continue;
    for (int64_t e = 0; e < w->total; e++) want[e] = (double)cpu->state[k][e];
    const tu_tol tol = {1e-5 * max_abs(want, w->total), 1e-5, 0.0, FO_DTYPE_F32};
    tu_report rep;
    char label[96];
    snprintf(label, sizeof label, "%s: %s", what, ROLE_NAMES[k]);
    expect_report(tu_compare(&rep, want, gpu->state[k], FO_DTYPE_F32, w->total, tol), &rep, label,
                  ctx);
  }
  free(want);
}

/* Issue #20 on the device (fo_prepare_step is the same code): 200
 * consecutive overflows from 2^16 end at FO_LOSS_SCALE_MIN with every
 * parameter and state byte as it was and a checkpoint that verifies and
 * loads; the next clean step applies and writes no NaN.  Then a scale of
 * 0, a subnormal or NaN written through fo_optimizer_loss_scale_ptr (a
 * non-finite coefficient, or a scale below the floor) skips the step and
 * restarts the scale at the floor. */
Test(gpu_mp, scale_floor_and_non_finite_coefficient_on_the_device) {
  dev d = dev_open(require_device(0));
  const char *ctx = "adamw param f16 grad f32";
  world w;
  mp_world_make(&w, FO_DTYPE_F16, FO_DTYPE_F32, 0, 8000);
  unsigned char *pimg = param_image(&w, 81), *pimg2 = param_image(&w, 82);
  fo_hparams h[2];
  hparams_for(FO_ALG_ADAMW, h);
  fo_options o;
  base_options(&o, FO_ALG_ADAMW, FO_DTYPE_F16, FO_DTYPE_F32);
  o.loss_scaler.init_scale = 65536.0f;
  tu_rng rng;
  tu_rng_seed(&rng, 20, 8);
  run r;
  run_open(&r, &d, &w, &o, h, pimg);
  for (int s = 0; s < 2; s++) scaler_step(&r, &rng, 1.0, 0);
  snap before, after;
  snap_take(&r, &before);
  cr_assert_eq(before.info.step, 2, "%s: the clean steps", ctx);
  float last = before.info.loss_scale;
  for (int s = 0; s < 200; s++) {
    scaler_step(&r, &rng, 1.0, 1);
    const fo_step_info i = run_info(&r);
    cr_assert(i.last_step_skipped, "%s: overflow %d was applied", ctx, s + 1);
    cr_assert(isnormal(i.loss_scale) && i.loss_scale >= FO_LOSS_SCALE_MIN,
              "%s: after overflow %d the scale is %a", ctx, s + 1, (double)i.loss_scale);
    cr_assert(i.loss_scale == FO_LOSS_SCALE_MIN || i.loss_scale == last * 0.5f,
              "%s: overflow %d: %a after %a", ctx, s + 1, (double)i.loss_scale, (double)last);
    last = i.loss_scale;
  }
  snap_take(&r, &after);
  cr_assert_eq(after.info.loss_scale, FO_LOSS_SCALE_MIN, "%s: scale %a", ctx,
               (double)after.info.loss_scale);
  cr_assert_eq(after.info.step, 2, "%s", ctx);
  cr_assert_eq(after.info.skipped_steps, 200, "%s", ctx);
  weights_identical(&w, &before, &after, "200 overflows", ctx);

  /* whatever save writes, load accepts */
  char dir[] = "/tmp/fo_gpu_floor_XXXXXX", path[96];
  cr_assert_not_null(mkdtemp(dir));
  snprintf(path, sizeof path, "%s/floor.safetensors", dir);
  OK(fo_optimizer_save(r.opt, path, dev_stream(&d)));
  OK(fo_checkpoint_verify(path));
  run fresh;
  run_open(&fresh, &d, &w, &o, h, pimg2);
  OK(fo_optimizer_load(fresh.opt, path, dev_stream(&d)));
  snap loaded;
  snap_take(&fresh, &loaded);
  weights_identical(&w, &after, &loaded, "loaded", ctx);
  info_identical(&after.info, &loaded.info, "loaded", ctx);
  /* the CPU executor's twin, from the same checkpoint */
  const dev host = dev_open(0);
  run twin;
  run_open(&twin, &host, &w, &o, h, pimg2);
  OK(fo_optimizer_load(twin.opt, path, NULL));
  unlink(path);
  rmdir(dir);

  /* the next clean step at the floor applies, on both; the gradients (in
   * fp32, times the floor's scale 2^-126) are subnormal: the device must
   * not flush them to zero, so its first run ends as the CPU's twin */
  run *runs[2] = {&r, &fresh};
  for (int k = 0; k < 2; k++) {
    unsigned char *g = scaler_grads(runs[k], &rng, 1.0, 0);
    step_over(runs[k], g);
    const fo_step_info i = run_info(runs[k]);
    cr_assert_eq(i.step, 3, "%s: run %d", ctx, k);
    cr_assert(isfinite(i.grad_coef), "%s: run %d: coef %g", ctx, k, (double)i.grad_coef);
    snap s;
    snap_take(runs[k], &s);
    weights_finite(&w, &s, "the clean step at the floor", ctx);
    if (k == 0) {
      step_over(&twin, g);
      snap t;
      snap_take(&twin, &t);
      cr_assert(t.info.step == i.step && t.info.skipped_steps == i.skipped_steps &&
                    t.info.loss_scale == i.loss_scale && t.info.grad_coef == i.grad_coef,
                "%s: the CPU executor at the floor: step %lld, scale %a, coef %a", ctx,
                (long long)t.info.step, (double)t.info.loss_scale, (double)t.info.grad_coef);
      state_like_cpu(&w, &s, &t, "the clean step at the floor", ctx);
      snap_free(&t);
    }
    snap_free(&s);
    free(g);
  }
  run_close(&twin);
  run_close(&fresh);

  /* a scale written below the floor through the pointer */
  const float bad[3] = {0.0f, 0x1p-127f, NAN};
  for (int b = 0; b < 3; b++) {
    float *scale = NULL;
    OK(fo_optimizer_loss_scale_ptr(r.opt, &scale));
    dev_put(&d, scale, &bad[b], sizeof bad[b]);
    unsigned char *g = grad_image(&w, &rng, 1e-3);
    run_grads(&r, g);
    free(g);
    snap x, y;
    snap_take(&r, &x);
    run_step(&r);
    snap_take(&r, &y);
    cr_assert(y.info.last_step_skipped, "%s: scale %a: the step was applied", ctx, (double)bad[b]);
    cr_assert_eq(y.info.step, x.info.step, "%s: scale %a", ctx, (double)bad[b]);
    cr_assert_eq(y.info.loss_scale, FO_LOSS_SCALE_MIN, "%s: scale %a became %a", ctx,
                 (double)bad[b], (double)y.info.loss_scale);
    weights_identical(&w, &x, &y, "a scale below the floor", ctx);
    scaler_step(&r, &rng, 1.0, 0);
    cr_assert_eq(run_info(&r).step, y.info.step + 1, "%s: scale %a: the next step", ctx,
                 (double)bad[b]);
    snap_free(&x);
    snap_free(&y);
  }
  snap s;
  snap_take(&r, &s);
  weights_finite(&w, &s, "after the bad scales", ctx);
  snap_free(&s);
  snap_free(&before);
  snap_free(&after);
  snap_free(&loaded);
  run_close(&r);
  free(pimg);
  free(pimg2);
  world_free(&w);
  dev_close(&d);
}
