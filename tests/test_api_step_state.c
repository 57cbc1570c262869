/*
 * test_api_step_state.c -- the parts of the step state that
 * fo_optimizer_set_step does not set: the loss scaler's state
 * (fo_optimizer_get_scaler_state / _set_scaler_state) and NAdam's products
 * of momentum coefficients (fo_optimizer_get_mu_product / _set_mu_product),
 * on the CPU executor.
 *
 *   - round trips: what a setter wrote reads back, and reaches the step
 *     report, the loss scale pointer and the step-count limit;
 *   - a state copied into a fresh optimizer (parameters, moments, the step
 *     count and these) continues exactly as the original: scaler decisions
 *     over overflow steps, and NAdam after beta1 and momentum_decay changed
 *     between steps -- where set_step alone gives other results;
 *   - every refusal: its status, a message naming the call and the value,
 *     and nothing changed (read back).
 *
 * Written against include/fusedopt.h only; no library internals.
 */
#define _POSIX_C_SOURCE 200809L /* mkdtemp */

#include <criterion/criterion.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api_harness.h"
#include "fusedopt.h"
#include "testutil.h"

/* --------------------------------------------------------------- the rig */

#define NT 3
#define MAXN 130
static const int64_t k_numel[NT] = {37, MAXN, 5};

/* One optimizer over its own parameters and gradients (external storage,
 * fp32); tensor t is in group t % ng. */
typedef struct rig {
  fo_optimizer *opt;
  float p[NT][MAXN], g[NT][MAXN];
} rig;

static void rig_make(rig *r, const fo_options *o, const fo_hparams *h, int ng, uint64_t seed) {
  tu_rng rng;
  tu_rng_seed(&rng, seed, 7);
  fo_tensor_desc d[NT];
  for (int t = 0; t < NT; t++) {
    for (int64_t i = 0; i < k_numel[t]; i++) {
      r->p[t][i] = (float)tu_rng_nonzero(&rng, 1e-2, 1.0);
      r->g[t][i] = 0.0f;
    }
    d[t] = (fo_tensor_desc){k_numel[t], t % ng, r->p[t], r->g[t], NULL};
  }
  fo_status st = fo_optimizer_create(&r->opt, o, h, ng, d, NT);
  cr_assert_eq(st, FO_SUCCESS, "create: %s", fo_last_error());
}

/* Step k's gradients, the same for every rig given the same seed and k;
 * an overflow step gets one inf or NaN. */
static void rig_grads(rig *r, uint64_t seed, int k, int overflow) {
  tu_rng rng;
  tu_rng_seed(&rng, tu_hash(seed, (uint64_t)k), 3);
  for (int t = 0; t < NT; t++)
    for (int64_t i = 0; i < k_numel[t]; i++) r->g[t][i] = (float)tu_rng_nonzero(&rng, 1e-3, 2.0);
  if (overflow) r->g[k % NT][(k * 7) % k_numel[k % NT]] = (k & 1) ? INFINITY : NAN;
}

static void rig_step(rig *r) {
  fo_status st = fo_optimizer_step(r->opt, NULL);
  cr_assert_eq(st, FO_SUCCESS, "step: %s", fo_last_error());
}

/* Copy the parameters and every state buffer the optimizer keeps from a
 * to b (the same configuration). */
static void rig_copy_buffers(const rig *a, rig *b) {
  memcpy(b->p, a->p, sizeof b->p);
  for (int t = 0; t < NT; t++)
    for (int role = FO_ROLE_MASTER; role < FO_ROLE_COUNT; role++) {
      float *src = NULL, *dst = NULL;
      if (fo_optimizer_state_ptr(a->opt, t, (fo_role)role, &src) != FO_SUCCESS) continue;
      cr_assert_eq(fo_optimizer_state_ptr(b->opt, t, (fo_role)role, &dst), FO_SUCCESS);
      memcpy(dst, src, (size_t)k_numel[t] * sizeof(float));
    }
}

/* 1 if a's and b's parameters and state buffers are equal bit for bit. */
static int rig_same_buffers(const rig *a, const rig *b) {
  for (int t = 0; t < NT; t++) {
    if (memcmp(a->p[t], b->p[t], (size_t)k_numel[t] * sizeof(float)) != 0) return 0;
    for (int role = FO_ROLE_MASTER; role < FO_ROLE_COUNT; role++) {
      float *x = NULL, *y = NULL;
      if (fo_optimizer_state_ptr(a->opt, t, (fo_role)role, &x) != FO_SUCCESS) continue;
      cr_assert_eq(fo_optimizer_state_ptr(b->opt, t, (fo_role)role, &y), FO_SUCCESS);
      if (memcmp(x, y, (size_t)k_numel[t] * sizeof(float)) != 0) return 0;
    }
  }
  return 1;
}

static fo_scaler_state scaler_of(const fo_optimizer *opt) {
  fo_scaler_state s;
  memset(&s, 0x5A, sizeof s);
  fo_status st = fo_optimizer_get_scaler_state(opt, &s);
  cr_assert_eq(st, FO_SUCCESS, "get_scaler_state: %s", fo_last_error());
  return s;
}

static fo_step_info info_of(const fo_optimizer *opt) {
  fo_step_info i;
  fo_status st = fo_optimizer_get_info(opt, &i);
  cr_assert_eq(st, FO_SUCCESS, "get_info: %s", fo_last_error());
  return i;
}

static float mu_of(const fo_optimizer *opt, int group) {
  float v = SENT_F32;
  fo_status st = fo_optimizer_get_mu_product(opt, group, &v);
  cr_assert_eq(st, FO_SUCCESS, "get_mu_product(%d): %s", group, fo_last_error());
  return v;
}

static int same_scaler(fo_scaler_state a, fo_scaler_state b) {
  return a.skipped_steps == b.skipped_steps && f2u(a.scale) == f2u(b.scale) &&
         a.growth_tracker == b.growth_tracker && a.hysteresis_left == b.hysteresis_left;
}

/* Loss scaling on, small constants so that a few steps grow, back off and
 * use the hysteresis. */
static void scaler_options(fo_options *o) {
  cr_assert_eq(fo_options_default(o), FO_SUCCESS);
  o->algorithm = FO_ALG_ADAMW;
  o->loss_scaler.enabled = 1;
  o->loss_scaler.init_scale = 1024.0f;
  o->loss_scaler.growth_interval = 3;
  o->loss_scaler.hysteresis = 2;
}

static void two_groups(fo_algorithm alg, fo_hparams h[2]) {
  for (int g = 0; g < 2; g++) {
    cr_assert_eq(fo_hparams_default(alg, &h[g]), FO_SUCCESS);
    h[g].weight_decay = g ? 0.0f : 0.05f;
  }
}

/* A NAdam rig of two groups (weight decay in the first). */
static void nadam_rig(rig *r, uint64_t seed) {
  fo_options o;
  cr_assert_eq(fo_options_default(&o), FO_SUCCESS);
  o.algorithm = FO_ALG_NADAM;
  fo_hparams h[2];
  two_groups(FO_ALG_NADAM, h);
  rig_make(r, &o, h, 2, seed);
}

/* ----------------------------------------------------------- round trips */

Test(api_step_state, scaler_state_round_trip_reaches_the_report_and_the_scale_pointer) {
  fo_options o;
  scaler_options(&o);
  fo_hparams h[2];
  two_groups(FO_ALG_ADAMW, h);
  rig r;
  rig_make(&r, &o, h, 2, 11);
  const fo_scaler_state fresh = scaler_of(r.opt);
  cr_expect(fresh.skipped_steps == 0 && fresh.scale == 1024.0f && fresh.growth_tracker == 0 &&
                fresh.hysteresis_left == 2,
            "fresh: skipped %lld scale %g tracker %d hysteresis %d", (long long)fresh.skipped_steps,
            fresh.scale, fresh.growth_tracker, fresh.hysteresis_left);
  float *scale_ptr = NULL;
  cr_assert_eq(fo_optimizer_loss_scale_ptr(r.opt, &scale_ptr), FO_SUCCESS);
  tu_rng rng;
  tu_rng_seed(&rng, 12, 1);
  for (int k = 0; k < 20; k++) {
    fo_scaler_state want;
    memset(&want, 0, sizeof want);
    want.skipped_steps = (int64_t)(tu_rng_u64(&rng) % 1000000);
    want.scale = ldexpf((float)tu_rng_range(&rng, 1.0, 2.0), (int)(tu_rng_u32(&rng) % 200) - 100);
    want.growth_tracker = (int)(tu_rng_u32(&rng) % 3);
    want.hysteresis_left = 1 + (int)(tu_rng_u32(&rng) % 2);
    if (k == 0) want.scale = FO_LOSS_SCALE_MIN; /* the ends of the ranges */
    if (k == 1) want.skipped_steps = FO_MAX_STEP - 5;
    CHECK(FO_SUCCESS, NULL, fo_optimizer_set_scaler_state, r.opt, &want);
    fo_scaler_state got = scaler_of(r.opt);
    cr_expect(same_scaler(got, want), "round trip %d: got %lld %g %d %d, set %lld %g %d %d", k,
              (long long)got.skipped_steps, got.scale, got.growth_tracker, got.hysteresis_left,
              (long long)want.skipped_steps, want.scale, want.growth_tracker, want.hysteresis_left);
    const fo_step_info i = info_of(r.opt);
    cr_expect(i.skipped_steps == want.skipped_steps && f2u(i.loss_scale) == f2u(want.scale) &&
                  i.growth_tracker == want.growth_tracker && i.step == 0,
              "round trip %d: info skipped %lld scale %g tracker %d step %lld", k,
              (long long)i.skipped_steps, i.loss_scale, i.growth_tracker, (long long)i.step);
    cr_expect(f2u(*scale_ptr) == f2u(want.scale), "round trip %d: *loss_scale_ptr %g, set %g", k,
              *scale_ptr, want.scale);
  }
  /* the getter writes every byte of the struct: its padding too */
  fo_scaler_state a, b;
  memset(&a, 0xAB, sizeof a);
  memset(&b, 0x5C, sizeof b);
  cr_assert_eq(fo_optimizer_get_scaler_state(r.opt, &a), FO_SUCCESS);
  cr_assert_eq(fo_optimizer_get_scaler_state(r.opt, &b), FO_SUCCESS);
  cr_expect(memcmp(&a, &b, sizeof a) == 0, "get_scaler_state left bytes of *out unwritten");
  cr_assert_eq(fo_optimizer_destroy(r.opt), FO_SUCCESS);
}

/* The skipped count bounds the steps left, as a load's does: at
 * FO_MAX_STEP the next step is refused, lower again it runs. */
Test(api_step_state, skipped_steps_set_the_step_limit) {
  fo_options o;
  scaler_options(&o);
  fo_hparams h[2];
  two_groups(FO_ALG_ADAMW, h);
  rig r;
  rig_make(&r, &o, h, 2, 21);
  rig_grads(&r, 21, 1, 0);
  fo_scaler_state s = scaler_of(r.opt);
  s.skipped_steps = FO_MAX_STEP;
  CHECK(FO_SUCCESS, NULL, fo_optimizer_set_scaler_state, r.opt, &s);
  CHECK(FO_ERR_INVALID_STATE, "FO_MAX_STEP", fo_optimizer_step, r.opt, NULL);
  cr_expect_eq(info_of(r.opt).step, 0);
  s.skipped_steps = FO_MAX_STEP - 1;
  CHECK(FO_SUCCESS, NULL, fo_optimizer_set_scaler_state, r.opt, &s);
  CHECK(FO_SUCCESS, NULL, fo_optimizer_step, r.opt, NULL);
  cr_expect_eq(info_of(r.opt).step, 1);
  cr_expect_eq(scaler_of(r.opt).skipped_steps, FO_MAX_STEP - 1);
  cr_assert_eq(fo_optimizer_destroy(r.opt), FO_SUCCESS);
}

/* Loss scaling off: the scaler's fields are those create left; the skipped
 * count (clipping's non-finite check skips steps too) is free. */
Test(api_step_state, scaler_state_without_loss_scaling) {
  fo_options o;
  cr_assert_eq(fo_options_default(&o), FO_SUCCESS);
  o.loss_scaler.hysteresis = 3; /* read even with scaling off */
  o.max_grad_norm = 1.0f;       /* a pre-pass: non-finite gradients skip */
  fo_hparams h[2];
  two_groups(FO_ALG_ADAMW, h);
  rig r;
  rig_make(&r, &o, h, 2, 31);
  fo_scaler_state s = scaler_of(r.opt);
  cr_expect(
      s.skipped_steps == 0 && s.scale == 1.0f && s.growth_tracker == 0 && s.hysteresis_left == 3,
      "off: skipped %lld scale %g tracker %d hysteresis %d", (long long)s.skipped_steps, s.scale,
      s.growth_tracker, s.hysteresis_left);
  rig_grads(&r, 31, 1, 1);
  rig_step(&r);
  cr_expect_eq(scaler_of(r.opt).skipped_steps, 1, "a non-finite gradient with clipping skips");
  s.skipped_steps = 123456789;
  CHECK(FO_SUCCESS, NULL, fo_optimizer_set_scaler_state, r.opt, &s);
  const fo_scaler_state got = scaler_of(r.opt);
  cr_expect(same_scaler(got, s), "off: got skipped %lld scale %g", (long long)got.skipped_steps,
            got.scale);
  cr_expect_eq(info_of(r.opt).skipped_steps, 123456789);
  cr_assert_eq(fo_optimizer_destroy(r.opt), FO_SUCCESS);
}

Test(api_step_state, mu_product_round_trip_and_set_step_overwrites_it) {
  rig r;
  nadam_rig(&r, 41);
  cr_expect(mu_of(r.opt, 0) == 1.0f && mu_of(r.opt, 1) == 1.0f, "fresh products are not 1");
  tu_rng rng;
  tu_rng_seed(&rng, 42, 1);
  for (int k = 0; k < 20; k++) {
    const int g = k & 1;
    const float v = k < 2 ? (float)k : (float)tu_rng_uniform(&rng); /* 0, 1, then random */
    const float other = mu_of(r.opt, !g);
    CHECK(FO_SUCCESS, NULL, fo_optimizer_set_mu_product, r.opt, g, v);
    cr_expect(f2u(mu_of(r.opt, g)) == f2u(v), "group %d: got %.9g, set %.9g", g, mu_of(r.opt, g),
              v);
    cr_expect(f2u(mu_of(r.opt, !g)) == f2u(other), "setting group %d changed group %d", g, !g);
  }
  /* set_step recomputes the products: a product set before it is gone */
  CHECK(FO_SUCCESS, NULL, fo_optimizer_set_mu_product, r.opt, 0, 0.125f);
  CHECK(FO_SUCCESS, NULL, fo_optimizer_set_step, r.opt, 5);
  const float recomputed = mu_of(r.opt, 0);
  cr_expect(recomputed != 0.125f && recomputed > 0.0f && recomputed < 1.0f,
            "after set_step(5): %.9g", recomputed);
  cr_assert_eq(fo_optimizer_destroy(r.opt), FO_SUCCESS);
}

/* set_step(k) leaves the products k steps would have left, bit for bit:
 * with psi 0 (mu_t constant from the start), a large psi (constant
 * early), a tiny one, the default, and a beta1 whose product settles at a
 * fixed point instead of underflowing; over counts past the point where
 * mu_t stops changing and past the underflow. */
Test(api_step_state, set_step_gives_the_products_of_the_steps) {
  static const float psis[] = {0.0f, 100.0f, 1e-20f, 4e-3f, 0.0f};
  static const float beta1s[] = {0.9f, 0.9f, 0.5f, 0.9f, 0.99999994f};
  for (size_t c = 0; c < sizeof psis / sizeof psis[0]; c++) {
    fo_options o;
    cr_assert_eq(fo_options_default(&o), FO_SUCCESS);
    o.algorithm = FO_ALG_NADAM;
    fo_hparams h[2];
    two_groups(FO_ALG_NADAM, h);
    h[0].momentum_decay = h[1].momentum_decay = psis[c];
    h[0].beta1 = h[1].beta1 = beta1s[c];
    rig stepped, set;
    rig_make(&stepped, &o, h, 2, 61);
    rig_make(&set, &o, h, 2, 62);
    int done = 0;
    for (int k = 1; k <= 1200; k += k < 40 ? 13 : 389) {
      for (; done < k; done++) cr_assert_eq(fo_optimizer_step(stepped.opt, NULL), FO_SUCCESS);
      CHECK(FO_SUCCESS, NULL, fo_optimizer_set_step, set.opt, k);
      cr_expect(f2u(mu_of(set.opt, 0)) == f2u(mu_of(stepped.opt, 0)),
                "psi %g, beta1 %.9g, %d steps: set_step %.9g, stepped %.9g", (double)psis[c],
                (double)beta1s[c], k, (double)mu_of(set.opt, 0), (double)mu_of(stepped.opt, 0));
    }
    cr_assert_eq(fo_optimizer_destroy(stepped.opt), FO_SUCCESS);
    cr_assert_eq(fo_optimizer_destroy(set.opt), FO_SUCCESS);
  }
}

/* AdaGrad's sums start at initial_accumulator_value at create, as
 * torch.optim.Adagrad's do, and set_step moves only the count: a fresh
 * optimizer set to step 5 adds d^2 to the initial value (not to 0), and
 * setting the count back to 0 after some steps keeps the sums. */
Test(api_step_state, adagrad_sums_start_at_create_and_set_step_keeps_them) {
  fo_options o;
  cr_assert_eq(fo_options_default(&o), FO_SUCCESS);
  o.algorithm = FO_ALG_ADAGRAD;
  fo_hparams h[2];
  two_groups(FO_ALG_ADAGRAD, h);
  h[0].initial_accumulator_value = 0.75f;
  h[1].initial_accumulator_value = 0.0f;
  h[0].lr_decay = h[1].lr_decay = 0.0f;
  h[0].weight_decay = h[1].weight_decay = 0.0f; /* d = g exactly */
  rig r;
  rig_make(&r, &o, h, 2, 71);
  for (int t = 0; t < NT; t++) {
    float *sum = NULL;
    cr_assert_eq(fo_optimizer_state_ptr(r.opt, t, FO_ROLE_EXP_AVG_SQ, &sum), FO_SUCCESS);
    for (int64_t i = 0; i < k_numel[t]; i++)
      cr_assert_eq(sum[i], t % 2 ? 0.0f : 0.75f, "tensor %d [%lld]: a fresh sum of %.9g", t,
                   (long long)i, (double)sum[i]);
  }
  /* set_step(5), then a step: sum = init + d^2 */
  CHECK(FO_SUCCESS, NULL, fo_optimizer_set_step, r.opt, 5);
  for (int t = 0; t < NT; t++)
    for (int64_t i = 0; i < k_numel[t]; i++) r.g[t][i] = 0.5f;
  cr_assert_eq(fo_optimizer_step(r.opt, NULL), FO_SUCCESS);
  float *sum0 = NULL;
  cr_assert_eq(fo_optimizer_state_ptr(r.opt, 0, FO_ROLE_EXP_AVG_SQ, &sum0), FO_SUCCESS);
  cr_expect_eq(sum0[0], 0.75f + 0.25f, "after set_step(5) and a step: %.9g", (double)sum0[0]);
  /* set_step(0) keeps the accumulated sums */
  CHECK(FO_SUCCESS, NULL, fo_optimizer_set_step, r.opt, 0);
  cr_assert_eq(fo_optimizer_step(r.opt, NULL), FO_SUCCESS);
  cr_expect_eq(sum0[0], 0.75f + 0.25f + 0.25f, "after set_step(0) and a step: %.9g",
               (double)sum0[0]);
  cr_assert_eq(fo_optimizer_destroy(r.opt), FO_SUCCESS);
}

/* -------------------------------------------------- continuing a state */

/* Which of steps 1..16 overflow: clean runs long enough to grow (interval
 * 3), single overflows the hysteresis (2) absorbs, and pairs that back
 * off. */
static int overflows(int k) {
  static const int pattern[17] = {0, 0, 1, 0, 0, 0, 1, 0, 1, 1, 0, 0, 0, 0, 1, 0, 1};
  return pattern[k];
}

/* An optimizer stepped k times (overflow steps among them), its buffers,
 * step count and scaler state copied into a fresh one: the two then agree
 * bit for bit on every later step, overflows included.  Over the copy
 * points every field of the scaler's state differs from a fresh
 * optimizer's at least once, so a copy that dropped one would fail. */
Test(api_step_state, a_copied_scaler_state_continues_as_the_original) {
  fo_options o;
  scaler_options(&o);
  fo_hparams h[2];
  two_groups(FO_ALG_ADAMW, h);
  const uint64_t seed = 51;
  int differed[4] = {0, 0, 0, 0};
  for (int k = 1; k <= 8; k++) {
    rig a, b;
    rig_make(&a, &o, h, 2, seed);
    rig_make(&b, &o, h, 2, seed);
    for (int j = 1; j <= k; j++) {
      rig_grads(&a, seed, j, overflows(j));
      rig_step(&a);
    }
    const fo_scaler_state sa = scaler_of(a.opt), fresh = scaler_of(b.opt);
    differed[0] |= sa.skipped_steps != fresh.skipped_steps;
    differed[1] |= sa.scale != fresh.scale;
    differed[2] |= sa.growth_tracker != fresh.growth_tracker;
    differed[3] |= sa.hysteresis_left != fresh.hysteresis_left;
    rig_copy_buffers(&a, &b);
    CHECK(FO_SUCCESS, NULL, fo_optimizer_set_step, b.opt, info_of(a.opt).step);
    CHECK(FO_SUCCESS, NULL, fo_optimizer_set_scaler_state, b.opt, &sa);
    for (int j = k + 1; j <= 16; j++) {
      rig_grads(&a, seed, j, overflows(j));
      rig_grads(&b, seed, j, overflows(j));
      rig_step(&a);
      rig_step(&b);
      const fo_step_info ia = info_of(a.opt), ib = info_of(b.opt);
      cr_assert(ia.step == ib.step && ia.skipped_steps == ib.skipped_steps &&
                    ia.last_step_skipped == ib.last_step_skipped &&
                    f2u(ia.loss_scale) == f2u(ib.loss_scale) &&
                    ia.growth_tracker == ib.growth_tracker &&
                    f2u(ia.grad_coef) == f2u(ib.grad_coef),
                "copied after %d steps, step %d: step %lld/%lld skipped %lld/%lld scale %g/%g "
                "tracker %d/%d",
                k, j, (long long)ia.step, (long long)ib.step, (long long)ia.skipped_steps,
                (long long)ib.skipped_steps, ia.loss_scale, ib.loss_scale, ia.growth_tracker,
                ib.growth_tracker);
      cr_assert(same_scaler(scaler_of(a.opt), scaler_of(b.opt)),
                "copied after %d steps, step %d: the scaler states differ", k, j);
      cr_assert(rig_same_buffers(&a, &b), "copied after %d steps, step %d: the buffers differ", k,
                j);
    }
    cr_assert_eq(fo_optimizer_destroy(a.opt), FO_SUCCESS);
    cr_assert_eq(fo_optimizer_destroy(b.opt), FO_SUCCESS);
  }
  cr_expect(differed[0] && differed[1] && differed[2] && differed[3],
            "some field never differed from a fresh state (skipped %d scale %d tracker %d "
            "hysteresis %d): the test would not see it dropped",
            differed[0], differed[1], differed[2], differed[3]);
}

/* NAdam after beta1 (group 0) and momentum_decay (group 1) changed between
 * steps: set_step recomputes the products with the current values, which
 * is not what the steps multiplied.  A copy with set_step and then
 * set_mu_product continues as the original, bit for bit; a copy with
 * set_step alone does not. */
Test(api_step_state, a_copied_mu_product_continues_nadam_as_the_original) {
  fo_options o;
  cr_assert_eq(fo_options_default(&o), FO_SUCCESS);
  o.algorithm = FO_ALG_NADAM;
  fo_hparams h[2];
  two_groups(FO_ALG_NADAM, h);
  const uint64_t seed = 61;
  rig a, b, c; /* the original, the full copy, set_step only */
  rig_make(&a, &o, h, 2, seed);
  rig_make(&b, &o, h, 2, seed);
  rig_make(&c, &o, h, 2, seed);
  fo_hparams now[2] = {h[0], h[1]};
  for (int j = 1; j <= 6; j++) {
    if (j == 3) now[1].momentum_decay = 0.02f;
    if (j == 4) now[0].beta1 = 0.8f;
    for (int g = 0; g < 2; g++) cr_assert_eq(fo_optimizer_set_hparams(a.opt, g, &now[g]), 0);
    rig_grads(&a, seed, j, 0);
    rig_step(&a);
  }
  const float mu[2] = {mu_of(a.opt, 0), mu_of(a.opt, 1)};
  rig *copies[2] = {&b, &c};
  for (int x = 0; x < 2; x++) {
    rig *r = copies[x];
    rig_copy_buffers(&a, r);
    for (int g = 0; g < 2; g++) cr_assert_eq(fo_optimizer_set_hparams(r->opt, g, &now[g]), 0);
    CHECK(FO_SUCCESS, NULL, fo_optimizer_set_step, r->opt, 6);
  }
  for (int g = 0; g < 2; g++) {
    cr_assert(f2u(mu_of(c.opt, g)) != f2u(mu[g]),
              "group %d: set_step alone gives the real product %.9g: the test shows nothing", g,
              mu[g]);
    CHECK(FO_SUCCESS, NULL, fo_optimizer_set_mu_product, b.opt, g, mu[g]);
    cr_expect(f2u(mu_of(b.opt, g)) == f2u(mu[g]), "group %d: set %.9g, read %.9g", g, mu[g],
              mu_of(b.opt, g));
  }
  int c_differs = 0;
  for (int j = 7; j <= 10; j++) {
    if (j == 9) now[0].beta1 = 0.85f; /* and once more, on all three */
    rig *all[3] = {&a, &b, &c};
    for (int x = 0; x < 3; x++) {
      for (int g = 0; g < 2; g++)
        cr_assert_eq(fo_optimizer_set_hparams(all[x]->opt, g, &now[g]), 0);
      rig_grads(all[x], seed, j, 0);
      rig_step(all[x]);
    }
    for (int g = 0; g < 2; g++)
      cr_assert(f2u(mu_of(a.opt, g)) == f2u(mu_of(b.opt, g)), "step %d group %d: mu %.9g vs %.9g",
                j, g, mu_of(a.opt, g), mu_of(b.opt, g));
    cr_assert(rig_same_buffers(&a, &b), "step %d: the copy's buffers differ from the original's",
              j);
    c_differs |= !rig_same_buffers(&a, &c);
  }
  cr_expect(c_differs, "set_step alone continued identically: the products made no difference");
  cr_assert_eq(fo_optimizer_destroy(a.opt), FO_SUCCESS);
  cr_assert_eq(fo_optimizer_destroy(b.opt), FO_SUCCESS);
  cr_assert_eq(fo_optimizer_destroy(c.opt), FO_SUCCESS);
}

/* -------------------------------------------------------------- refusals */

Test(api_step_state, null_pointers) {
  rig r;
  nadam_rig(&r, 71);
  fo_scaler_state s = scaler_of(r.opt);
  float f = SENT_F32;
  CHECK(FO_ERR_NULL_POINTER, "opt", fo_optimizer_get_scaler_state, NULL, &s);
  CHECK(FO_ERR_NULL_POINTER, "out", fo_optimizer_get_scaler_state, r.opt, NULL);
  CHECK(FO_ERR_NULL_POINTER, "opt", fo_optimizer_set_scaler_state, NULL, &s);
  CHECK(FO_ERR_NULL_POINTER, "state", fo_optimizer_set_scaler_state, r.opt, NULL);
  CHECK(FO_ERR_NULL_POINTER, "opt", fo_optimizer_get_mu_product, NULL, 0, &f);
  CHECK(FO_ERR_NULL_POINTER, "out", fo_optimizer_get_mu_product, r.opt, 0, NULL);
  CHECK(FO_ERR_NULL_POINTER, "opt", fo_optimizer_set_mu_product, NULL, 0, 0.5f);
  cr_expect(f == SENT_F32, "a failing get_mu_product wrote *out");
  cr_assert_eq(fo_optimizer_destroy(r.opt), FO_SUCCESS);
}

/* A set_scaler_state that must fail: the exact status, the value named in
 * the message, and the state read back unchanged. */
static void refuse_scaler(fo_optimizer *opt, fo_scaler_state bad, const char *arg,
                          const char *what) {
  const fo_scaler_state before = scaler_of(opt);
  const fo_step_info ib = info_of(opt);
  const fo_scaler_state copy = bad;
  prime_error("fo_optimizer_set_scaler_state");
  check_status(fo_optimizer_set_scaler_state(opt, &bad), FO_ERR_INVALID_ARGUMENT,
               "fo_optimizer_set_scaler_state", arg, what, __LINE__);
  cr_expect(memcmp(&bad, &copy, sizeof bad) == 0, "%s: *state changed", what);
  cr_expect(same_scaler(scaler_of(opt), before), "%s: a refused set changed the state", what);
  const fo_step_info ia = info_of(opt);
  cr_expect(ia.step == ib.step && ia.skipped_steps == ib.skipped_steps &&
                f2u(ia.loss_scale) == f2u(ib.loss_scale),
            "%s: a refused set changed the report", what);
}

Test(api_step_state, scaler_state_out_of_range_is_refused) {
  fo_options o;
  scaler_options(&o);
  fo_hparams h[2];
  two_groups(FO_ALG_ADAMW, h);
  rig r;
  rig_make(&r, &o, h, 2, 81);
  for (int j = 1; j <= 4; j++) { /* a state no longer the fresh one */
    rig_grads(&r, 81, j, j == 2 || j == 4);
    rig_step(&r);
  }
  const fo_scaler_state ok = scaler_of(r.opt);
  cr_assert(ok.skipped_steps == 2 && ok.hysteresis_left == 1, "skipped %lld hysteresis %d",
            (long long)ok.skipped_steps, ok.hysteresis_left);
  static const int64_t bad_skipped[] = {-1, FO_MAX_STEP + 1, INT64_MIN, INT64_MAX};
  for (size_t i = 0; i < sizeof bad_skipped / sizeof bad_skipped[0]; i++) {
    fo_scaler_state s = ok;
    s.skipped_steps = bad_skipped[i];
    refuse_scaler(r.opt, s, "skipped_steps", "skipped_steps out of range");
  }
  static const float bad_scale[] = {0.0f, -0.0f, 5.87747e-39f, -1.0f, NAN, INFINITY, -INFINITY};
  for (size_t i = 0; i < sizeof bad_scale / sizeof bad_scale[0]; i++) {
    fo_scaler_state s = ok;
    s.scale = bad_scale[i];
    refuse_scaler(r.opt, s, "loss scale", "scale out of range");
  }
  static const int bad_tracker[] = {-1, 3, 4, INT_MAX, INT_MIN}; /* growth_interval 3 */
  for (size_t i = 0; i < sizeof bad_tracker / sizeof bad_tracker[0]; i++) {
    fo_scaler_state s = ok;
    s.growth_tracker = bad_tracker[i];
    refuse_scaler(r.opt, s, "growth_tracker", "growth_tracker out of range");
  }
  static const int bad_hysteresis[] = {0, -1, 3, INT_MAX, INT_MIN}; /* hysteresis 2 */
  for (size_t i = 0; i < sizeof bad_hysteresis / sizeof bad_hysteresis[0]; i++) {
    fo_scaler_state s = ok;
    s.hysteresis_left = bad_hysteresis[i];
    refuse_scaler(r.opt, s, "hysteresis", "hysteresis_left out of range");
  }
  /* the ends that are in range pass */
  fo_scaler_state s = ok;
  s.growth_tracker = 2;
  s.hysteresis_left = 2;
  s.skipped_steps = 0;
  CHECK(FO_SUCCESS, NULL, fo_optimizer_set_scaler_state, r.opt, &s);
  cr_assert_eq(fo_optimizer_destroy(r.opt), FO_SUCCESS);
}

Test(api_step_state, scaler_state_without_loss_scaling_keeps_the_created_fields) {
  fo_options o;
  cr_assert_eq(fo_options_default(&o), FO_SUCCESS);
  o.loss_scaler.hysteresis = 2;
  fo_hparams h[2];
  two_groups(FO_ALG_ADAMW, h);
  rig r;
  rig_make(&r, &o, h, 2, 91);
  rig_grads(&r, 91, 1, 0);
  rig_step(&r);
  const fo_scaler_state ok = scaler_of(r.opt);
  static const float bad_scale[] = {2.0f, 0.5f, 1024.0f, 0.0f, NAN, INFINITY};
  for (size_t i = 0; i < sizeof bad_scale / sizeof bad_scale[0]; i++) {
    fo_scaler_state s = ok;
    s.scale = bad_scale[i];
    /* finite scales in range: the rule of scaling off; others: the range */
    refuse_scaler(r.opt, s,
                  isfinite(bad_scale[i]) && bad_scale[i] > 0 ? "loss scaling is off" : "loss scale",
                  "scale, scaling off");
  }
  static const int bad_tracker[] = {1, 1999, -1};
  for (size_t i = 0; i < sizeof bad_tracker / sizeof bad_tracker[0]; i++) {
    fo_scaler_state s = ok;
    s.growth_tracker = bad_tracker[i];
    refuse_scaler(r.opt, s, "loss scaling is off", "growth_tracker, scaling off");
  }
  static const int bad_hysteresis[] = {1, 3, 0};
  for (size_t i = 0; i < sizeof bad_hysteresis / sizeof bad_hysteresis[0]; i++) {
    fo_scaler_state s = ok;
    s.hysteresis_left = bad_hysteresis[i];
    refuse_scaler(r.opt, s, "hysteresis_left", "hysteresis_left, scaling off");
  }
  fo_scaler_state s = ok;
  s.skipped_steps = -1;
  refuse_scaler(r.opt, s, "skipped_steps", "skipped_steps, scaling off");
  cr_assert_eq(fo_optimizer_destroy(r.opt), FO_SUCCESS);
}

Test(api_step_state, mu_product_refusals) {
  fo_options o;
  cr_assert_eq(fo_options_default(&o), FO_SUCCESS);
  o.algorithm = FO_ALG_NADAM;
  fo_hparams h[2];
  two_groups(FO_ALG_NADAM, h);
  rig r;
  rig_make(&r, &o, h, 2, 101);
  for (int j = 1; j <= 3; j++) {
    rig_grads(&r, 101, j, 0);
    rig_step(&r);
  }
  const uint32_t before[2] = {f2u(mu_of(r.opt, 0)), f2u(mu_of(r.opt, 1))};
  static const int bad_group[] = {-1, 2, FO_MAX_GROUPS, INT_MAX, INT_MIN};
  for (size_t i = 0; i < sizeof bad_group / sizeof bad_group[0]; i++) {
    float f = SENT_F32;
    CHECK(FO_ERR_INVALID_ARGUMENT, "group", fo_optimizer_get_mu_product, r.opt, bad_group[i], &f);
    CHECK(FO_ERR_INVALID_ARGUMENT, "group", fo_optimizer_set_mu_product, r.opt, bad_group[i], 0.5f);
    cr_expect(f == SENT_F32, "get_mu_product(group %d) failed but wrote *out", bad_group[i]);
  }
  static const float bad_value[] = {-0.25f, -1e-30f, 1.0000001f, 2.0f, NAN, INFINITY, -INFINITY};
  for (size_t i = 0; i < sizeof bad_value / sizeof bad_value[0]; i++)
    for (int g = 0; g < 2; g++)
      CHECK(FO_ERR_INVALID_ARGUMENT, "mu_product", fo_optimizer_set_mu_product, r.opt, g,
            bad_value[i]);
  cr_expect(f2u(mu_of(r.opt, 0)) == before[0] && f2u(mu_of(r.opt, 1)) == before[1],
            "a refused set_mu_product changed a product");
  cr_expect_eq(info_of(r.opt).step, 3);
  cr_assert_eq(fo_optimizer_destroy(r.opt), FO_SUCCESS);

  /* only NAdam keeps the products: the others refuse, as state_ptr refuses
   * a role the optimizer keeps no buffer of */
  static const fo_algorithm others[] = {FO_ALG_ADAMW, FO_ALG_ADAM, FO_ALG_SGD, FO_ALG_LAMB};
  for (size_t a = 0; a < sizeof others / sizeof others[0]; a++) {
    cr_assert_eq(fo_options_default(&o), FO_SUCCESS);
    o.algorithm = others[a];
    two_groups(others[a], h);
    rig_make(&r, &o, h, 2, 111 + a);
    float f = SENT_F32;
    CHECK(FO_ERR_INVALID_STATE, "NAdam", fo_optimizer_get_mu_product, r.opt, 0, &f);
    CHECK(FO_ERR_INVALID_STATE, "NAdam", fo_optimizer_set_mu_product, r.opt, 1, 0.5f);
    cr_expect(f == SENT_F32, "algorithm %d: get_mu_product failed but wrote *out", (int)others[a]);
    cr_assert_eq(fo_optimizer_destroy(r.opt), FO_SUCCESS);
  }
}

/* A load into an optimizer without loss scaling: the file's scaler fields
 * (another optimizer's hysteresis count, a scale written through the
 * pointer) do not come with it, so what the optimizer reads back is what
 * set_scaler_state accepts there; the skipped count does. */
Test(api_step_state, a_load_without_loss_scaling_keeps_the_created_fields) {
  char dir[] = "/tmp/fo_step_state_XXXXXX";
  cr_assert_not_null(mkdtemp(dir));
  char path[64];
  snprintf(path, sizeof path, "%s/ck.safetensors", dir);
  fo_options o1, o3;
  cr_assert_eq(fo_options_default(&o1), FO_SUCCESS);
  o1.algorithm = FO_ALG_ADAMW;
  o1.loss_scaler.hysteresis = 1;
  o3 = o1;
  o3.loss_scaler.hysteresis = 3;
  fo_hparams h[2];
  two_groups(FO_ALG_ADAMW, h);
  rig a, b;
  rig_make(&a, &o1, h, 2, 93);
  rig_grads(&a, 93, 1, 0);
  rig_step(&a);
  fo_scaler_state s = scaler_of(a.opt);
  s.skipped_steps = 5;
  cr_assert_eq(fo_optimizer_set_scaler_state(a.opt, &s), FO_SUCCESS, "%s", fo_last_error());
  float *scale = NULL;
  cr_assert_eq(fo_optimizer_loss_scale_ptr(a.opt, &scale), FO_SUCCESS);
  *scale = 4.0f; /* written through the pointer: saved with the state */
  cr_assert_eq(fo_optimizer_save(a.opt, path, NULL), FO_SUCCESS, "%s", fo_last_error());
  rig_make(&b, &o3, h, 2, 94);
  cr_assert_eq(fo_optimizer_load(b.opt, path, NULL), FO_SUCCESS, "%s", fo_last_error());
  fo_scaler_state got = scaler_of(b.opt);
  cr_expect(f2u(got.scale) == f2u(1.0f) && got.growth_tracker == 0 && got.hysteresis_left == 3,
            "loaded without scaling: %g %d %d", (double)got.scale, got.growth_tracker,
            got.hysteresis_left);
  cr_expect_eq(got.skipped_steps, 5);
  cr_expect_eq(fo_optimizer_set_scaler_state(b.opt, &got), FO_SUCCESS, "%s", fo_last_error());
  cr_assert_eq(fo_optimizer_destroy(a.opt), FO_SUCCESS);
  cr_assert_eq(fo_optimizer_destroy(b.opt), FO_SUCCESS);
  unlink(path);
  rmdir(dir);
}
