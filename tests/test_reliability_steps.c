/*
 * test_reliability_steps.c -- the edges of issue #20 (reliability, round 2)
 * on the CPU executor, in the step's counters:
 *
 *   scale_floor       200 consecutive overflows end at FO_LOSS_SCALE_MIN,
 *                     with the parameters and state untouched and a
 *                     checkpoint that verifies and loads; a scale of 0, a
 *                     subnormal or NaN written through the scale pointer
 *                     (a scale below the floor, a non-finite gradient
 *                     coefficient) skips the step;
 *   step_limit        set_step, load and step keep the counters at or
 *                     below FO_MAX_STEP.
 *
 * The GPU tier of the scale floor is in test_gpu_mixed_precision_scaler.c.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ckpt_harness.h"
#include "reliability.h"
#include "testutil.h"

/* fp16 parameters with master weights and fp32 gradients, loss scaling
 * from 2^16 with hysteresis 1: after 142 backoffs the scale would be
 * subnormal without a floor, 0 after 166. */
static const ck_cfg fp16_cfg = {.label = "adamw-fp16",
                                .alg = FO_ALG_ADAMW,
                                .pd = FO_DTYPE_F16,
                                .gd = FO_DTYPE_F32,
                                .master = 1,
                                .amsgrad = 1,
                                .scaler = 1,
                                .init_scale = 65536.0f,
                                .hysteresis = 1,
                                .storage = FO_STORAGE_EXTERNAL,
                                .exec = FO_EXEC_CPU};

/* Gradients of step s times the current scale; with overflow, one element
 * inf (as an fp16 backward pass that overflowed would leave it). */
static void grads_scaled(ck_model *m, int s, int overflow) {
  const float scale = info_of(m->opt).loss_scale;
  for (int i = 0; i < CK_TENSORS; i++)
    if (ck_sizes[i] > 0)
      ck_fill(m->cfg.gd, m->g[i], ck_sizes[i], 4242, (uint64_t)s + 1, (uint64_t)i, scale);
  if (overflow) {
    const float inf = (s % 2) ? INFINITY : -INFINITY;
    CK_OK(fo_convert_from_f32(m->cfg.gd, &inf, (char *)m->g[2] + 4 * (size_t)(s % 1000), 1));
  }
}

/* Every parameter, master weight and moment is finite. */
static void expect_all_finite(const ck_snap *s, const char *what) {
  for (int i = 0; i < CK_TENSORS; i++)
    for (int r = 0; r < FO_ROLE_COUNT; r++) {
      if (!s->bytes[i][r]) continue;
      size_t n = r == FO_ROLE_PARAM ? s->bytes[i][r] / 2 : s->bytes[i][r] / 4;
      for (size_t k = 0; k < n; k++) {
        float v;
        if (r == FO_ROLE_PARAM)
          CK_OK(fo_convert_to_f32(FO_DTYPE_F16, (const uint16_t *)s->buf[i][r] + k, &v, 1));
        else
          v = ((const float *)s->buf[i][r])[k];
        cr_assert(isfinite(v), "%s: tensor %d role %d element %zu is %g", what, i, r, k, (double)v);
      }
    }
}

/* The buffers and hyper-parameters of a and b are bit-identical (the step
 * info is compared by the caller). */
static void expect_same_buffers(const ck_snap *a, const ck_snap *b, const char *what) {
  ck_snap x = *a;
  x.info = b->info;
  ck_snap_expect_equal(&x, b, what);
}

Test(scale_floor, two_hundred_overflows_end_at_a_valid_scale_with_nothing_changed) {
  cr_assert_eq(FO_LOSS_SCALE_MIN, FLT_MIN, "the documented floor is the smallest normal float");
  ck_dir dir;
  ck_dir_make(&dir);
  char path[128];
  ck_dir_file(&dir, "floor.safetensors", path, sizeof path);
  ck_model m;
  ck_model_create(&m, &fp16_cfg, 3);
  for (int s = 0; s < 3; s++) { /* clean steps: every moment non-zero */
    grads_scaled(&m, s, 0);
    CK_OK(fo_optimizer_step(m.opt, NULL));
  }
  ck_snap before;
  ck_snapshot(&m, &before);
  cr_assert_eq(before.info.step, 3);

  float last = before.info.loss_scale;
  for (int s = 3; s < 203; s++) {
    grads_scaled(&m, s, 1);
    CK_OK(fo_optimizer_step(m.opt, NULL));
    const fo_step_info i = info_of(m.opt);
    cr_assert(i.last_step_skipped, "overflow %d was not skipped", s - 2);
    cr_assert(isnormal(i.loss_scale) && i.loss_scale >= FO_LOSS_SCALE_MIN,
              "after overflow %d the scale is %a", s - 2, (double)i.loss_scale);
    cr_assert(i.loss_scale == FO_LOSS_SCALE_MIN || i.loss_scale == last * 0.5f,
              "overflow %d: %a after %a", s - 2, (double)i.loss_scale, (double)last);
    last = i.loss_scale;
  }
  ck_snap after;
  ck_snapshot(&m, &after);
  cr_expect_eq(after.info.loss_scale, FO_LOSS_SCALE_MIN, "scale %a", (double)after.info.loss_scale);
  cr_expect_eq(after.info.step, 3);
  cr_expect_eq(after.info.skipped_steps, 200);
  expect_same_buffers(&before, &after, "after 200 overflows");

  /* whatever save writes, load accepts: the file verifies and resumes */
  CK_OK(fo_optimizer_save(m.opt, path, NULL));
  CK_OK(fo_checkpoint_verify(path));
  ck_model fresh;
  ck_model_create(&fresh, &fp16_cfg, 99);
  CK_OK(fo_optimizer_load(fresh.opt, path, NULL));
  ck_snap loaded;
  ck_snapshot(&fresh, &loaded);
  ck_snap_expect_equal(&after, &loaded, "loaded after 200 overflows");

  /* the next clean step at the floor applies, and writes no NaN */
  for (ck_model *x = &m; x; x = x == &m ? &fresh : NULL) {
    grads_scaled(x, 300, 0);
    CK_OK(fo_optimizer_step(x->opt, NULL));
    const fo_step_info i = info_of(x->opt);
    cr_expect_eq(i.step, 4);
    cr_expect(!i.last_step_skipped);
    cr_expect(isfinite(i.grad_coef) && i.grad_coef > 0.0f, "coef %g", (double)i.grad_coef);
    ck_snap now;
    ck_snapshot(x, &now);
    expect_all_finite(&now, "the clean step at the floor");
    ck_snap_free(&now);
  }
  ck_snap_free(&before);
  ck_snap_free(&after);
  ck_snap_free(&loaded);
  ck_model_destroy(&fresh);
  ck_model_destroy(&m);
  ck_dir_remove(&dir);
}

/* A scale that is 0, subnormal or NaN (written through the pointer, as a
 * buggy caller might) makes 1/scale non-finite: the step must be skipped
 * like an overflow, the scale restart at the floor, and the next step
 * apply. */
Test(scale_floor, a_non_finite_coefficient_skips_the_step) {
  const float bad[4] = {0.0f, 0x1p-127f, 0x1p-149f, NAN};
  for (int b = 0; b < 4; b++) {
    ck_model m;
    ck_model_create(&m, &fp16_cfg, 5 + (uint64_t)b);
    for (int s = 0; s < 2; s++) {
      grads_scaled(&m, s, 0);
      CK_OK(fo_optimizer_step(m.opt, NULL));
    }
    float *scale = NULL;
    CK_OK(fo_optimizer_loss_scale_ptr(m.opt, &scale));
    *scale = bad[b];
    /* a backward pass with this scale: the gradients times 0 (or tiny) */
    for (int i = 0; i < CK_TENSORS; i++)
      if (ck_sizes[i] > 0)
        ck_fill(m.cfg.gd, m.g[i], ck_sizes[i], 4242, 9, (uint64_t)i, b == 0 ? 0.0f : 1e-3f);
    ck_snap before;
    ck_snapshot(&m, &before);
    CK_OK(fo_optimizer_step(m.opt, NULL));
    ck_snap after;
    ck_snapshot(&m, &after);
    cr_expect(after.info.last_step_skipped, "scale %a: the step was applied", (double)bad[b]);
    if (!(1.0f / bad[b] <= FLT_MAX)) /* 2^-127 still has a finite inverse */
      cr_expect(!isfinite(after.info.grad_coef), "scale %a: coef %g", (double)bad[b],
                (double)after.info.grad_coef);
    cr_expect_eq(after.info.step, 2, "scale %a", (double)bad[b]);
    cr_expect_eq(after.info.skipped_steps, 1, "scale %a", (double)bad[b]);
    cr_expect_eq(after.info.loss_scale, FO_LOSS_SCALE_MIN, "scale %a became %a", (double)bad[b],
                 (double)after.info.loss_scale);
    expect_same_buffers(&before, &after, "a skipped non-finite coefficient");
    grads_scaled(&m, 10, 0);
    CK_OK(fo_optimizer_step(m.opt, NULL));
    cr_expect_eq(info_of(m.opt).step, 3, "scale %a: the next step", (double)bad[b]);
    ck_snap next;
    ck_snapshot(&m, &next);
    expect_all_finite(&next, "the step after");
    ck_snap_free(&before);
    ck_snap_free(&after);
    ck_snap_free(&next);
    ck_model_destroy(&m);
  }
}

/* ------------------------------------------------------------ step limit */

Test(step_limit, set_step_refuses_counts_past_the_maximum) {
  ck_model m;
  ck_model_create(&m, &sgd_cfg, 1);
  ck_step(&m, 0);
  const int64_t bad[3] = {INT64_MAX, FO_MAX_STEP + 1, -1};
  for (int b = 0; b < 3; b++) {
    cr_expect_eq(fo_optimizer_set_step(m.opt, bad[b]), FO_ERR_INVALID_ARGUMENT, "set_step(%lld)",
                 (long long)bad[b]);
    cr_expect_neq(strstr(fo_last_error(), "FO_MAX_STEP"), NULL, "%s", fo_last_error());
    cr_expect_eq(info_of(m.opt).step, 1, "a refused set_step(%lld) changed the count",
                 (long long)bad[b]);
  }
  /* the largest count is accepted, and the step that would pass it is
   * refused without changing anything */
  CK_OK(fo_optimizer_set_step(m.opt, FO_MAX_STEP - 1));
  ck_step(&m, 1);
  cr_expect_eq(info_of(m.opt).step, FO_MAX_STEP);
  ck_snap before, after;
  ck_snapshot(&m, &before);
  ck_grads(&m, 2);
  cr_expect_eq(fo_optimizer_step(m.opt, NULL), FO_ERR_INVALID_STATE);
  cr_expect_neq(strstr(fo_last_error(), "FO_MAX_STEP"), NULL, "%s", fo_last_error());
  ck_snapshot(&m, &after);
  ck_snap_expect_equal(&before, &after, "a refused step");
  /* and it is usable again once the count is set back */
  CK_OK(fo_optimizer_set_step(m.opt, 7));
  ck_step(&m, 2);
  cr_expect_eq(info_of(m.opt).step, 8);
  ck_snap_free(&before);
  ck_snap_free(&after);
  ck_model_destroy(&m);
}

/* A checkpoint at the maximum loads (save writes it, so load takes it),
 * and the loaded optimizer refuses the step past it; one that would need
 * more is refused by load (test_checkpoint_errors: "step past FO_MAX_STEP"). */
Test(step_limit, a_checkpoint_at_the_maximum_loads_and_refuses_the_next_step) {
  ck_dir dir;
  ck_dir_make(&dir);
  char path[128];
  ck_dir_file(&dir, "max.safetensors", path, sizeof path);
  ck_model m, fresh;
  ck_model_create(&m, &sgd_cfg, 1);
  ck_step(&m, 0);
  CK_OK(fo_optimizer_set_step(m.opt, FO_MAX_STEP));
  CK_OK(fo_optimizer_save(m.opt, path, NULL));
  ck_model_create(&fresh, &sgd_cfg, 2);
  CK_OK(fo_optimizer_load(fresh.opt, path, NULL));
  cr_expect_eq(info_of(fresh.opt).step, FO_MAX_STEP);
  ck_grads(&fresh, 1);
  cr_expect_eq(fo_optimizer_step(fresh.opt, NULL), FO_ERR_INVALID_STATE, "%s", fo_last_error());
  cr_expect_eq(info_of(fresh.opt).step, FO_MAX_STEP);
  /* a load of an earlier checkpoint makes it usable again */
  CK_OK(fo_optimizer_set_step(m.opt, 5));
  CK_OK(fo_optimizer_save(m.opt, path, NULL));
  CK_OK(fo_optimizer_load(fresh.opt, path, NULL));
  CK_OK(fo_optimizer_step(fresh.opt, NULL));
  cr_expect_eq(info_of(fresh.opt).step, 6);
  ck_model_destroy(&fresh);
  ck_model_destroy(&m);
  ck_dir_remove(&dir);
}
