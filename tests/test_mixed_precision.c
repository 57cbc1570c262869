/*
 * test_mixed_precision.c -- CPU tier of the step's surroundings: the loss
 * scaler's state machine, non-finite skipping, global-norm clipping, the
 * learning-rate schedules and the unscaled-gradient write-back.
 *
 * Expected values come from closed forms written out here (schedules) or
 * from a plain double-precision computation in this file (clipping), never
 * from the library's own functions.
 */
#include <criterion/criterion.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fusedopt.h"

#define N_TENSORS 5
static const int64_t sizes[N_TENSORS] = {1, 37, 1000, 4099, 20000};

typedef struct model {
  float *p[N_TENSORS], *g[N_TENSORS];
  fo_tensor_desc t[N_TENSORS];
} model;

static uint64_t rng_state;
static float uniform_pm1(void) { /* (-1, 1), never 0 */
  rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
  float u = (float)((rng_state >> 40) + 1) * 0x1.0p-24f;
  return 2.0f * u - 1.0f + 0x1.0p-25f;
}

static void model_init(model *m, uint64_t seed) {
  rng_state = seed;
  for (int i = 0; i < N_TENSORS; i++) {
    m->p[i] = malloc((size_t)sizes[i] * sizeof(float));
    m->g[i] = malloc((size_t)sizes[i] * sizeof(float));
    cr_assert(m->p[i] && m->g[i]);
    for (int64_t k = 0; k < sizes[i]; k++) m->p[i][k] = uniform_pm1();
    m->t[i] = (fo_tensor_desc){sizes[i], i % 2, m->p[i], m->g[i], NULL};
  }
}

static void model_fill_grads(model *m, float scale) {
  for (int i = 0; i < N_TENSORS; i++)
    for (int64_t k = 0; k < sizes[i]; k++) m->g[i][k] = scale * uniform_pm1();
}

static void model_free(model *m) {
  for (int i = 0; i < N_TENSORS; i++) free(m->p[i]), free(m->g[i]);
}

static fo_optimizer *make(model *m, fo_options *o, fo_hparams *h) {
  fo_optimizer *opt = NULL;
  fo_hparams groups[2] = {*h, *h};
  fo_status st = fo_optimizer_create(&opt, o, groups, 2, m->t, N_TENSORS);
  cr_assert_eq(st, FO_SUCCESS, "create: %s", fo_last_error());
  return opt;
}

static fo_step_info info(fo_optimizer *opt) {
  fo_step_info i;
  cr_assert_eq(fo_optimizer_get_info(opt, &i), FO_SUCCESS, "%s", fo_last_error());
  return i;
}

static void step(fo_optimizer *opt) {
  cr_assert_eq(fo_optimizer_step(opt, NULL), FO_SUCCESS, "step: %s", fo_last_error());
}

/* ------------------------------------------------------------ the scaler */

Test(scaler, defaults_follow_grad_scaler) {
  fo_options o;
  fo_options_default(&o);
  cr_expect_eq(o.loss_scaler.enabled, 0);
  cr_expect_eq(o.loss_scaler.init_scale, 65536.0f);
  cr_expect_eq(o.loss_scaler.growth_factor, 2.0f);
  cr_expect_eq(o.loss_scaler.backoff_factor, 0.5f);
  cr_expect_eq(o.loss_scaler.growth_interval, 2000);
  cr_expect_eq(o.loss_scaler.hysteresis, 1);
}

Test(scaler, grows_after_interval_and_backs_off_on_overflow) {
  model m;
  model_init(&m, 11);
  fo_options o;
  fo_options_default(&o);
  o.loss_scaler.enabled = 1;
  o.loss_scaler.growth_interval = 3;
  fo_hparams h;
  fo_hparams_default(FO_ALG_ADAMW, &h);
  fo_optimizer *opt = make(&m, &o, &h);
  float *scale_ptr = NULL;
  cr_assert_eq(fo_optimizer_loss_scale_ptr(opt, &scale_ptr), FO_SUCCESS);
  cr_expect_eq(*scale_ptr, 65536.0f);
  /* expected scale after each of 8 steps; step 5 (index 4) overflows */
  const float expect[8] = {65536, 65536, 131072, 131072, 65536, 65536, 65536, 131072};
  for (int s = 0; s < 8; s++) {
    model_fill_grads(&m, info(opt).loss_scale);
    if (s == 4) m.g[3][17] = INFINITY;
    step(opt);
    fo_step_info i = info(opt);
    cr_expect_eq(i.loss_scale, expect[s], "after step %d: scale %g, expected %g", s + 1,
                 (double)i.loss_scale, (double)expect[s]);
    cr_expect_eq(*scale_ptr, i.loss_scale);
    cr_expect_eq(i.last_step_skipped, s == 4);
  }
  fo_step_info i = info(opt);
  cr_expect_eq(i.step, 7);
  cr_expect_eq(i.skipped_steps, 1);
  fo_optimizer_destroy(opt);
  model_free(&m);
}

Test(scaler, hysteresis_backs_off_after_n_consecutive_overflows) {
  model m;
  model_init(&m, 12);
  fo_options o;
  fo_options_default(&o);
  o.loss_scaler.enabled = 1;
  o.loss_scaler.hysteresis = 2;
  fo_hparams h;
  fo_hparams_default(FO_ALG_ADAM, &h);
  fo_optimizer *opt = make(&m, &o, &h);
  /* overflow, clean, overflow, overflow, overflow: the clean step restores
   * the hysteresis, so only the 4th step backs off ... and the 5th does not
   * (the count restarted after the backoff). */
  const int overflow[5] = {1, 0, 1, 1, 1};
  const float expect[5] = {65536, 65536, 65536, 32768, 32768};
  for (int s = 0; s < 5; s++) {
    model_fill_grads(&m, 1.0f);
    if (overflow[s]) m.g[0][0] = NAN;
    step(opt);
    cr_expect_eq(info(opt).loss_scale, expect[s], "step %d", s + 1);
  }
  cr_expect_eq(info(opt).skipped_steps, 4);
  cr_expect_eq(info(opt).step, 1);
  fo_optimizer_destroy(opt);
  model_free(&m);
}

Test(scaler, never_grows_past_max_or_to_inf) {
  model m;
  model_init(&m, 13);
  fo_options o;
  fo_options_default(&o);
  o.loss_scaler.enabled = 1;
  o.loss_scaler.growth_interval = 1;
  o.loss_scaler.init_scale = 0x1.0p126f;
  fo_hparams h;
  fo_hparams_default(FO_ALG_SGD, &h);
  fo_optimizer *opt = make(&m, &o, &h);
  for (int s = 0; s < 3; s++) {
    model_fill_grads(&m, 1.0f);
    step(opt);
  }
  /* 2^126 -> 2^127 -> (2^128 is inf: stays) */
  cr_expect_eq(info(opt).loss_scale, 0x1.0p127f);
  cr_expect(isfinite(info(opt).loss_scale));
  fo_optimizer_destroy(opt);

  o.loss_scaler.init_scale = 1024.0f;
  o.loss_scaler.max_scale = 3000.0f;
  opt = make(&m, &o, &h);
  const float expect[3] = {2048.0f, 3000.0f, 3000.0f};
  for (int s = 0; s < 3; s++) {
    model_fill_grads(&m, 1.0f);
    step(opt);
    cr_expect_eq(info(opt).loss_scale, expect[s], "step %d: %g", s + 1,
                 (double)info(opt).loss_scale);
  }
  fo_optimizer_destroy(opt);
  model_free(&m);
}

/* A scale of +inf (written through the pointer) backs off like any other
 * overflow, onto the largest finite float -- inf * backoff is still inf, so
 * without the clamp the scale would stay inf and every step skip. */
Test(scaler, an_infinite_scale_backs_off_to_flt_max) {
  model m;
  model_init(&m, 14);
  fo_options o;
  fo_options_default(&o);
  o.loss_scaler.enabled = 1;
  fo_hparams h;
  fo_hparams_default(FO_ALG_SGD, &h);
  fo_optimizer *opt = make(&m, &o, &h);
  float *scale = NULL;
  cr_assert_eq(fo_optimizer_loss_scale_ptr(opt, &scale), FO_SUCCESS);
  *scale = INFINITY;
  model_fill_grads(&m, INFINITY); /* a backward pass at scale inf */
  step(opt);
  cr_expect(info(opt).last_step_skipped);
  cr_expect_eq(info(opt).loss_scale, FLT_MAX, "scale %a", (double)info(opt).loss_scale);
  model_fill_grads(&m, INFINITY);
  step(opt);
  cr_expect_eq(info(opt).loss_scale, FLT_MAX * 0.5f, "scale %a", (double)info(opt).loss_scale);
  fo_optimizer_destroy(opt);
  model_free(&m);
}

/* A skipped step changes nothing: parameters, every state buffer and the
 * step count stay bit-identical. */
Test(scaler, overflow_in_one_element_skips_everything) {
  const fo_dtype dts[3] = {FO_DTYPE_F32, FO_DTYPE_F16, FO_DTYPE_BF16};
  for (int a = 0; a < FO_ALG_COUNT; a++)
    for (int d = 0; d < 3; d++) {
      model m;
      model_init(&m, 100 + (uint64_t)a);
      fo_options o;
      fo_options_default(&o);
      o.algorithm = (fo_algorithm)a;
      o.loss_scaler.enabled = 1;
      o.grad_dtype = dts[d];
      o.storage = FO_STORAGE_ARENA;
      fo_hparams h;
      fo_hparams_default((fo_algorithm)a, &h);
      h.momentum = 0.9f;
      h.amsgrad = a == FO_ALG_ADAM || a == FO_ALG_ADAMW;
      fo_tensor_desc t[N_TENSORS];
      for (int i = 0; i < N_TENSORS; i++) t[i] = (fo_tensor_desc){sizes[i], 0, NULL, NULL, NULL};
      fo_optimizer *opt = NULL;
      cr_assert_eq(fo_optimizer_create(&opt, &o, &h, 1, t, N_TENSORS), FO_SUCCESS, "%s",
                   fo_last_error());
      void *pbase, *gbase;
      size_t pbytes, gbytes;
      cr_assert_eq(fo_optimizer_arena(opt, FO_ROLE_PARAM, &pbase, &pbytes), FO_SUCCESS);
      cr_assert_eq(fo_optimizer_arena(opt, FO_ROLE_GRAD, &gbase, &gbytes), FO_SUCCESS);
      for (size_t k = 0; k < pbytes / 4; k++) ((float *)pbase)[k] = uniform_pm1();
      /* two clean steps so that every moment is non-zero */
      for (int s = 0; s < 3; s++) {
        for (int i = 0; i < N_TENSORS; i++) {
          void *g;
          fo_optimizer_grad_ptr(opt, i, &g);
          float *tmp = malloc((size_t)sizes[i] * sizeof(float));
          for (int64_t k = 0; k < sizes[i]; k++) tmp[k] = 100.0f * uniform_pm1();
          if (s == 2 && i == 2) tmp[999] = (d == 0) ? NAN : INFINITY;
          fo_convert_from_f32(dts[d], tmp, g, sizes[i]);
          free(tmp);
        }
        if (s < 2) {
          step(opt);
          continue;
        }
        /* snapshot every role, step with the poisoned gradient, compare */
        void *snap[FO_ROLE_COUNT] = {0};
        size_t bytes[FO_ROLE_COUNT] = {0};
        for (int r = 0; r < FO_ROLE_COUNT; r++) {
          void *base;
          if (fo_optimizer_arena(opt, (fo_role)r, &base, &bytes[r]) != FO_SUCCESS) continue;
          snap[r] = malloc(bytes[r]);
          memcpy(snap[r], base, bytes[r]);
        }
        step(opt);
        fo_step_info i = info(opt);
        cr_expect_eq(i.step, 2, "alg %d dtype %d", a, d);
        cr_expect_eq(i.last_step_skipped, 1);
        cr_expect_eq(i.loss_scale, 32768.0f);
        cr_expect(!isfinite(i.grad_norm));
        for (int r = 0; r < FO_ROLE_COUNT; r++) {
          if (!snap[r]) continue;
          void *base;
          fo_optimizer_arena(opt, (fo_role)r, &base, &bytes[r]);
          cr_expect_eq(memcmp(snap[r], base, bytes[r]), 0, "alg %d dtype %d: role %d changed", a,
                       d, r);
          free(snap[r]);
        }
      }
      fo_optimizer_destroy(opt);
      model_free(&m);
    }
}

/* ------------------------------------------------------------ clipping */

/* Plain double AdamW on one element, for the clipping comparison. */
typedef struct ref_adamw {
  double p, m, v;
} ref_adamw;

static void ref_adamw_step(ref_adamw *e, double g, double lr, double b1, double b2, double eps,
                           double wd, int t) {
  e->p *= 1.0 - lr * wd;
  e->m = b1 * e->m + (1.0 - b1) * g;
  e->v = b2 * e->v + (1.0 - b2) * g * g;
  double mhat = e->m / (1.0 - pow(b1, t)), vhat = e->v / (1.0 - pow(b2, t));
  e->p -= lr * mhat / (sqrt(vhat) + eps);
}

Test(clipping, matches_a_double_reference_with_loss_scaling) {
  model m;
  model_init(&m, 21);
  fo_options o;
  fo_options_default(&o);
  o.max_grad_norm = 1.0f;
  o.loss_scaler.enabled = 1;
  o.loss_scaler.init_scale = 1024.0f;
  fo_hparams h;
  fo_hparams_default(FO_ALG_ADAMW, &h);
  h.lr = 0.01f;
  fo_optimizer *opt = make(&m, &o, &h);
  int64_t total = 0;
  for (int i = 0; i < N_TENSORS; i++) total += sizes[i];
  ref_adamw *ref = calloc((size_t)total, sizeof *ref);
  for (int i = 0, k0 = 0; i < N_TENSORS; k0 += (int)sizes[i], i++)
    for (int64_t k = 0; k < sizes[i]; k++) ref[k0 + k].p = m.p[i][k];
  double max_err = 0.0;
  for (int s = 1; s <= 10; s++) {
    /* gradients with norm ~ 0.6 * sqrt(25137) ~ 90: clipped to 1 */
    model_fill_grads(&m, 1024.0f);
    double sumsq = 0.0;
    for (int i = 0; i < N_TENSORS; i++)
      for (int64_t k = 0; k < sizes[i]; k++) sumsq += (double)m.g[i][k] * m.g[i][k];
    double norm = sqrt(sumsq) / 1024.0;
    double coef = fmin(1.0, 1.0 / (norm + 1e-6)) / 1024.0;
    for (int i = 0, k0 = 0; i < N_TENSORS; k0 += (int)sizes[i], i++)
      for (int64_t k = 0; k < sizes[i]; k++)
        ref_adamw_step(&ref[k0 + k], m.g[i][k] * coef, 0.01, 0.9, 0.999, 1e-8, 0.01, s);
    step(opt);
    fo_step_info in = info(opt);
    cr_expect_float_eq(in.grad_norm, (float)norm, 1e-5f * (float)norm, "norm %g vs %g",
                       (double)in.grad_norm, norm);
    cr_expect_float_eq(in.grad_coef, (float)coef, 1e-5f * (float)coef);
  }
  for (int i = 0, k0 = 0; i < N_TENSORS; k0 += (int)sizes[i], i++)
    for (int64_t k = 0; k < sizes[i]; k++)
      max_err = fmax(max_err, fabs(m.p[i][k] - ref[k0 + k].p));
  /* 10 Adam steps of size <= lr move p by <= 0.1; fp32 rounding of p, of the
   * coefficient and of the moments stays far below 1e-5 of that. */
  cr_expect_lt(max_err, 2e-6, "max |p - ref| = %g", max_err);
  free(ref);
  fo_optimizer_destroy(opt);
  model_free(&m);
}

Test(clipping, small_gradients_are_not_clipped_and_grads_written_back) {
  model m;
  model_init(&m, 22);
  fo_options o;
  fo_options_default(&o);
  o.algorithm = FO_ALG_SGD;
  o.max_grad_norm = 1e6f;
  o.write_unscaled_grads = 1;
  o.loss_scaler.enabled = 1;
  o.loss_scaler.init_scale = 256.0f;
  fo_hparams h;
  fo_hparams_default(FO_ALG_SGD, &h);
  h.lr = 0.5f;
  fo_optimizer *opt = make(&m, &o, &h);
  model_fill_grads(&m, 256.0f);
  float *before = malloc((size_t)sizes[4] * sizeof(float));
  float *g_before = malloc((size_t)sizes[4] * sizeof(float));
  memcpy(before, m.p[4], (size_t)sizes[4] * sizeof(float));
  memcpy(g_before, m.g[4], (size_t)sizes[4] * sizeof(float));
  step(opt);
  cr_expect_eq(info(opt).grad_coef, 1.0f / 256.0f);
  for (int64_t k = 0; k < sizes[4]; k++) {
    float g = g_before[k] / 256.0f; /* exact: division by a power of two */
    cr_assert_eq(m.g[4][k], g, "grad %lld not unscaled", (long long)k);
    cr_assert_eq(m.p[4][k], before[k] - 0.5f * g, "param %lld", (long long)k);
  }
  free(before);
  free(g_before);
  fo_optimizer_destroy(opt);
  model_free(&m);
}

Test(clipping, norm_is_reproducible_bit_for_bit) {
  model m;
  model_init(&m, 23);
  fo_options o;
  fo_options_default(&o);
  o.max_grad_norm = 0.5f;
  fo_hparams h;
  fo_hparams_default(FO_ALG_LION, &h);
  model_fill_grads(&m, 3.0f);
  float norms[2];
  for (int r = 0; r < 2; r++) {
    o.num_threads = r ? 1 : 0;
    fo_optimizer *opt = make(&m, &o, &h);
    step(opt);
    norms[r] = info(opt).grad_norm;
    fo_optimizer_destroy(opt);
  }
  cr_expect_eq(memcmp(&norms[0], &norms[1], sizeof(float)), 0, "%a vs %a", (double)norms[0],
               (double)norms[1]);
  model_free(&m);
}

/* A step skipped for a non-finite gradient does not clip: it reports the
 * plain unscale (1 here), not a coefficient from an infinite norm. */
Test(clipping, a_skipped_step_reports_the_unclipped_coefficient) {
  float p = 0.0f, g = INFINITY;
  fo_tensor_desc t = {1, 0, &p, &g, NULL};
  fo_options o;
  fo_options_default(&o);
  o.algorithm = FO_ALG_SGD;
  o.max_grad_norm = 1.0f;
  fo_hparams h;
  fo_hparams_default(FO_ALG_SGD, &h);
  fo_optimizer *opt = NULL;
  cr_assert_eq(fo_optimizer_create(&opt, &o, &h, 1, &t, 1), FO_SUCCESS, "%s", fo_last_error());
  step(opt);
  cr_expect(info(opt).last_step_skipped);
  cr_expect_eq(info(opt).grad_coef, 1.0f, "coef %g", (double)info(opt).grad_coef);
  cr_expect_eq(p, 0.0f);
  fo_optimizer_destroy(opt);
}

/* ------------------------------------------------------------ schedules */

typedef struct sched_case {
  const char *name;
  fo_schedule s;
  int n;            /* points checked */
  int64_t k[8];     /* completed steps before the step */
  double factor[8]; /* closed-form factor, worked out by hand */
} sched_case;

/* cos values used below: cos(pi/4) = 0.70710678..., cos(pi/2) = 0,
 * cos(3pi/4) = -0.70710678... */
static const sched_case sched_cases[] = {
    {"constant", {FO_SCHED_CONSTANT, 0, 0, 0, 0, 1, 0.1f, 0.0f}, 3, {0, 1, 1000}, {1, 1, 1}},
    {"linear warmup",
     {FO_SCHED_CONSTANT, 4, 0, 0, 0, 1, 0.1f, 0.0f},
     5,
     {0, 1, 2, 3, 10},
     {0.25, 0.5, 0.75, 1.0, 1.0}},
    /* warmup 2, then cosine over 8 steps from 1 to 0.1:
     * f = 0.1 + 0.9 * 0.5 * (1 + cos(pi * j / 8)), j = k - 2 */
    {"cosine with warmup",
     {FO_SCHED_COSINE, 2, 10, 0, 0, 1, 0.1f, 0.1f},
     6,
     {0, 1, 2, 4, 6, 10},
     {0.5, 1.0, 1.0, 0.1 + 0.45 * (1 + 0.70710678118654752), 0.55, 0.1}},
    {"step decay",
     {FO_SCHED_STEP, 0, 0, 3, 0, 1, 0.5f, 0.0f},
     5,
     {0, 2, 3, 5, 6},
     {1, 1, 0.5, 0.5, 0.25}},
    {"exponential",
     {FO_SCHED_EXPONENTIAL, 0, 0, 0, 0, 1, 0.5f, 0.0f},
     3,
     {0, 1, 4},
     {1, 0.5, 0.0625}},
    /* SGDR, period 4, mult 2, floor 0: periods [0,4) [4,12) [12,28);
     * f = 0.5 * (1 + cos(pi * pos / len)) */
    {"cosine restarts",
     {FO_SCHED_COSINE_RESTARTS, 0, 0, 0, 4, 2, 0.1f, 0.0f},
     6,
     {0, 2, 4, 8, 10, 12},
     {1.0, 0.5, 1.0, 0.5, 0.5 * (1 - 0.70710678118654752), 1.0}},
    /* triangular, half period 4, floor 0.2: 0.2 -> 1 -> 0.2 */
    {"cyclic",
     {FO_SCHED_CYCLIC, 0, 0, 4, 0, 1, 0.1f, 0.2f},
     6,
     {0, 2, 4, 6, 8, 9},
     {0.2, 0.6, 1.0, 0.6, 0.2, 0.4}},
    /* past total_steps the cosine stays at its floor */
    {"cosine past total_steps",
     {FO_SCHED_COSINE, 2, 10, 0, 0, 1, 0.1f, 0.1f},
     3,
     {11, 14, 1000},
     {0.1, 0.1, 0.1}},
    /* after a warmup the decays count from its end: j = k - 2 */
    {"step decay after warmup",
     {FO_SCHED_STEP, 2, 0, 3, 0, 1, 0.5f, 0.0f},
     5,
     {0, 2, 4, 5, 8},
     {0.5, 1, 1, 0.5, 0.25}},
    {"exponential after warmup",
     {FO_SCHED_EXPONENTIAL, 2, 0, 0, 0, 1, 0.5f, 0.0f},
     3,
     {2, 3, 5},
     {1, 0.5, 0.125}},
    {"cyclic after warmup",
     {FO_SCHED_CYCLIC, 2, 0, 4, 0, 1, 0.1f, 0.2f},
     3,
     {2, 6, 10},
     {0.2, 1.0, 0.2}},
    /* SGDR with equal periods (mult 1): pos = k mod 4, found at once even
     * 2^40 and 2^62 - 1 steps in (the test's timeout: a walk period by
     * period would take hours) */
    {"cosine restarts, equal periods",
     {FO_SCHED_COSINE_RESTARTS, 0, 0, 0, 4, 1, 0.1f, 0.0f},
     7,
     {4, 6, 9, 13, 4001, (int64_t)1 << 40, FO_MAX_STEP - 1},
     {1.0, 0.5, 0.5 * (1 + 0.70710678118654752), 0.5 * (1 + 0.70710678118654752),
      0.5 * (1 + 0.70710678118654752), 1.0, 0.5 * (1 - 0.70710678118654752)}},
};

Test(schedule, every_kind_matches_its_closed_form, .timeout = 60) {
  for (size_t c = 0; c < sizeof sched_cases / sizeof sched_cases[0]; c++) {
    const sched_case *sc = &sched_cases[c];
    float p = 0.0f, g = 1.0f;
    fo_tensor_desc t = {1, 0, &p, &g, NULL};
    fo_options o;
    fo_options_default(&o);
    o.algorithm = FO_ALG_SGD;
    o.schedule = sc->s;
    fo_hparams h;
    fo_hparams_default(FO_ALG_SGD, &h);
    h.lr = 1.0f;
    fo_optimizer *opt = NULL;
    cr_assert_eq(fo_optimizer_create(&opt, &o, &h, 1, &t, 1), FO_SUCCESS, "%s: %s", sc->name,
                 fo_last_error());
    int64_t done = 0;
    for (int i = 0; i < sc->n; i++) {
      /* run until sc->k[i] steps are complete, then one more */
      cr_assert_eq(fo_optimizer_set_step(opt, sc->k[i]), FO_SUCCESS);
      done = sc->k[i];
      p = 0.0f;
      step(opt);
      /* plain SGD, g = 1, lr = 1: the parameter moves by -factor */
      cr_expect_float_eq(-p, sc->factor[i], 1e-6, "%s: k=%lld: moved %.9g, expected %.9g",
                         sc->name, (long long)done, (double)-p, sc->factor[i]);
      cr_expect_float_eq(info(opt).lr_factor, sc->factor[i], 1e-6, "%s: lr_factor", sc->name);
    }
    fo_optimizer_destroy(opt);
  }
}

Test(schedule, set_lr_scales_the_schedule) {
  float p = 0.0f, g = 1.0f;
  fo_tensor_desc t = {1, 0, &p, &g, NULL};
  fo_options o;
  fo_options_default(&o);
  o.algorithm = FO_ALG_SGD;
  o.schedule.warmup_steps = 2;
  fo_hparams h;
  fo_hparams_default(FO_ALG_SGD, &h);
  h.lr = 1.0f;
  fo_optimizer *opt = NULL;
  cr_assert_eq(fo_optimizer_create(&opt, &o, &h, 1, &t, 1), FO_SUCCESS);
  cr_assert_eq(fo_optimizer_set_lr(opt, -1, 4.0f), FO_SUCCESS);
  step(opt); /* factor 0.5, lr 4 */
  cr_expect_eq(p, -2.0f);
  fo_optimizer_destroy(opt);
}

Test(schedule, bad_schedules_are_refused) {
  float p = 0.0f, g = 1.0f;
  fo_tensor_desc t = {1, 0, &p, &g, NULL};
  fo_hparams h;
  fo_hparams_default(FO_ALG_SGD, &h);
  fo_schedule bad[] = {
      {FO_SCHED_COSINE, 10, 10, 0, 0, 1, 0.1f, 0.0f},      /* total <= warmup */
      {FO_SCHED_STEP, 0, 0, 0, 0, 1, 0.5f, 0.0f},          /* step_size 0 */
      {FO_SCHED_EXPONENTIAL, 0, 0, 0, 0, 1, 1.5f, 0.0f},   /* gamma > 1 */
      {FO_SCHED_COSINE_RESTARTS, 0, 0, 0, 0, 1, 0.1f, 0.0f}, /* period 0 */
      {FO_SCHED_CYCLIC, 0, 0, 4, 0, 1, 0.1f, 1.5f},        /* min_ratio > 1 */
      {(fo_schedule_kind)99, 0, 0, 0, 0, 1, 0.1f, 0.0f},   /* unknown kind */
      {FO_SCHED_CONSTANT, -1, 0, 0, 0, 1, 0.1f, 0.0f},     /* negative warmup */
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    fo_options o;
    fo_options_default(&o);
    o.schedule = bad[i];
    fo_optimizer *opt = (fo_optimizer *)&p; /* a sentinel that must survive */
    cr_expect_eq(fo_optimizer_create(&opt, &o, &h, 1, &t, 1), FO_ERR_INVALID_ARGUMENT,
                 "case %zu", i);
    cr_expect_eq(opt, (fo_optimizer *)&p);
    cr_expect_neq(strlen(fo_last_error()), 0);
  }
  fo_options o;
  fo_options_default(&o);
  o.loss_scaler.enabled = 1;
  o.loss_scaler.backoff_factor = 1.0f;
  fo_optimizer *opt = NULL;
  cr_expect_eq(fo_optimizer_create(&opt, &o, &h, 1, &t, 1), FO_ERR_INVALID_ARGUMENT);
  fo_options_default(&o);
  o.max_grad_norm = NAN;
  cr_expect_eq(fo_optimizer_create(&opt, &o, &h, 1, &t, 1), FO_ERR_INVALID_ARGUMENT);
  cr_expect_null(opt);
}

/* write_unscaled_grads with 16-bit gradients: the unscaled values are
 * rounded back into the caller's buffer (fp32 ones are scaled in place). */
Test(clipping, unscaled_bf16_grads_are_written_back) {
  enum { N = 1000 }; /* two tiles and a part */
  static float p[N];
  static uint16_t g[N];
  for (int i = 0; i < N; i++) {
    p[i] = 1.0f;
    g[i] = 0x4100; /* bf16 8.0 */
  }
  fo_options o;
  fo_options_default(&o);
  o.algorithm = FO_ALG_SGD;
  o.grad_dtype = FO_DTYPE_BF16;
  o.num_threads = 1;
  o.write_unscaled_grads = 1;
  o.loss_scaler.enabled = 1;
  o.loss_scaler.init_scale = 4.0f;
  fo_hparams h;
  fo_hparams_default(FO_ALG_SGD, &h);
  fo_tensor_desc t = {.numel = N, .group = 0, .param = p, .grad = g, .name = NULL};
  fo_optimizer *opt = NULL;
  cr_assert_eq(fo_optimizer_create(&opt, &o, &h, 1, &t, 1), FO_SUCCESS, "%s", fo_last_error());
  cr_assert_eq(fo_optimizer_step(opt, NULL), FO_SUCCESS, "%s", fo_last_error());
  for (int i = 0; i < N; i++)
    cr_assert_eq(g[i], 0x4000, "grad %d = 0x%04x, want bf16 2.0", i, g[i]);
  cr_expect_eq(fo_optimizer_destroy(opt), FO_SUCCESS);
}

/* Arena storage with master weights but no elements: nothing to set, so
 * the step runs without fo_optimizer_sync_master(). */
Test(scaler, empty_arena_needs_no_master_sync) {
  fo_options o;
  fo_options_default(&o);
  o.storage = FO_STORAGE_ARENA;
  o.param_dtype = o.grad_dtype = FO_DTYPE_BF16;
  fo_hparams h;
  fo_hparams_default(FO_ALG_ADAMW, &h);
  fo_tensor_desc t = {.numel = 0, .group = 0, .param = NULL, .grad = NULL, .name = NULL};
  fo_optimizer *opt = NULL;
  cr_assert_eq(fo_optimizer_create(&opt, &o, &h, 1, &t, 1), FO_SUCCESS, "%s", fo_last_error());
  cr_expect_eq(fo_optimizer_step(opt, NULL), FO_SUCCESS, "%s", fo_last_error());
  cr_expect_eq(fo_optimizer_destroy(opt), FO_SUCCESS);
}

/* zero_grad on arena storage clears every byte of every gradient (fp32:
 * four bytes an element). */
Test(clipping, arena_zero_grad_clears_every_gradient) {
  static const int64_t n[2] = {300, 1000};
  fo_options o;
  fo_options_default(&o);
  o.storage = FO_STORAGE_ARENA;
  fo_hparams h;
  fo_hparams_default(FO_ALG_ADAMW, &h);
  fo_tensor_desc t[2] = {{.numel = n[0]}, {.numel = n[1]}};
  fo_optimizer *opt = NULL;
  cr_assert_eq(fo_optimizer_create(&opt, &o, &h, 1, t, 2), FO_SUCCESS, "%s", fo_last_error());
  for (int64_t i = 0; i < 2; i++) {
    void *g = NULL;
    cr_assert_eq(fo_optimizer_grad_ptr(opt, i, &g), FO_SUCCESS, "%s", fo_last_error());
    for (int64_t k = 0; k < n[i]; k++) ((float *)g)[k] = 1.0f;
  }
  cr_assert_eq(fo_optimizer_zero_grad(opt, NULL), FO_SUCCESS, "%s", fo_last_error());
  for (int64_t i = 0; i < 2; i++) {
    void *g = NULL;
    cr_assert_eq(fo_optimizer_grad_ptr(opt, i, &g), FO_SUCCESS, "%s", fo_last_error());
    for (int64_t k = 0; k < n[i]; k++)
      cr_assert_eq(((float *)g)[k], 0.0f, "tensor %lld element %lld not zeroed", (long long)i,
                   (long long)k);
  }
  cr_expect_eq(fo_optimizer_destroy(opt), FO_SUCCESS);
}
