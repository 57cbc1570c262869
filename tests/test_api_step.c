/*
 * test_api_step.c -- the step on the CPU executor: a stream is refused
 * without touching anything, the step counter, and a success-path smoke
 * test of one AdamW step checked against its closed form.
 *
 * Written against include/fusedopt.h only; no library internals.
 */
#define _POSIX_C_SOURCE 200809L

#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "api_harness.h"
#include "fusedopt.h"

/* =============================================== stream and step counter */

Test(api_optimizer, stream_must_be_null_on_cpu) {
  cenv e;
  fo_optimizer *opt = make_opt(&e, FO_ALG_ADAMW);
  unsigned char pool0[sizeof e.pool];
  for (int k = 0; k < 2; ++k) /* grads 1.0: a step would change params */
    for (int i = 0; i < SLOT_ELEMS; ++i) ((float *)e.t[k].grad)[i] = 1.0f;
  memcpy(pool0, e.pool, sizeof pool0);
  float *m0 = NULL;
  cr_assert_eq(fo_optimizer_state_ptr(opt, 0, FO_ROLE_EXP_AVG, &m0), FO_SUCCESS);

  CHECK(FO_ERR_INVALID_ARGUMENT, "stream", fo_optimizer_step, opt, SOME_STREAM);
  CHECK(FO_ERR_INVALID_ARGUMENT, "stream", fo_optimizer_zero_grad, opt, SOME_STREAM);
  CHECK(FO_ERR_INVALID_ARGUMENT, "stream", fo_optimizer_sync_master, opt, SOME_STREAM);
  cr_expect(memcmp(pool0, e.pool, sizeof pool0) == 0,
            "a refused step/zero_grad changed params or grads");
  for (int i = 0; i < SLOT_ELEMS; ++i)
    cr_expect(m0[i] == 0.0f, "a refused step changed exp_avg[%d] = %g", i, m0[i]);
  int64_t step = SENT_I64;
  cr_expect_eq(fo_optimizer_get_step(opt, &step), FO_SUCCESS);
  cr_expect_eq(step, 0, "a refused step counted: step = %lld", (long long)step);
  fo_optimizer_destroy(opt);
}

Test(api_optimizer, step_counter) {
  cenv e;
  fo_optimizer *opt = make_opt(&e, FO_ALG_ADAM);
  int64_t s = SENT_I64;
  CHECK(FO_SUCCESS, NULL, fo_optimizer_set_step, opt, 5);
  const int64_t bad[] = {-1, INT64_MIN};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; ++i)
    CHECK(FO_ERR_INVALID_ARGUMENT, "step", fo_optimizer_set_step, opt, bad[i]);
  cr_expect_eq(fo_optimizer_get_step(opt, &s), FO_SUCCESS);
  cr_expect_eq(s, 5, "failing set_step changed the step to %lld", (long long)s);
  CHECK(FO_SUCCESS, NULL, fo_optimizer_step, opt, NULL);
  cr_expect_eq(fo_optimizer_get_step(opt, &s), FO_SUCCESS);
  cr_expect_eq(s, 6);
  CHECK(FO_SUCCESS, NULL, fo_optimizer_set_step, opt, 0);
  cr_expect_eq(fo_optimizer_get_step(opt, &s), FO_SUCCESS);
  cr_expect_eq(s, 0);
  fo_optimizer_destroy(opt);
}

/* ===================================================== success smoke test */

Test(api_smoke, adamw_step) {
  cenv e;
  env_init(&e, FO_ALG_ADAMW);
  e.hp[0].lr = 0.01f;
  e.hp[0].weight_decay = 0.1f;
  fo_optimizer *opt = NULL;
  cr_assert_eq(run_create(&e, "smoke", FO_SUCCESS, NULL, &opt), FO_SUCCESS);

  int64_t n = 0;
  cr_expect_eq(fo_optimizer_num_tensors(opt, &n), FO_SUCCESS);
  cr_expect_eq(n, 2);
  fo_options o;
  cr_expect_eq(fo_optimizer_get_options(opt, &o), FO_SUCCESS);
  cr_expect(memcmp(&o, &e.o, sizeof o) == 0, "get_options differs");

  float p0[2][SLOT_ELEMS], g0[2][SLOT_ELEMS];
  for (int k = 0; k < 2; ++k) {
    memcpy(p0[k], e.t[k].param, sizeof p0[k]);
    memcpy(g0[k], e.t[k].grad, sizeof g0[k]);
  }
  CHECK(FO_SUCCESS, NULL, fo_optimizer_step, opt, NULL);
  int64_t s = -1;
  cr_expect_eq(fo_optimizer_get_step(opt, &s), FO_SUCCESS);
  cr_expect_eq(s, 1, "get_step after one step = %lld", (long long)s);
  fo_step_info info;
  cr_expect_eq(fo_optimizer_get_info(opt, &info), FO_SUCCESS);
  cr_expect(info.step == 1 && info.skipped_steps == 0 && info.last_step_skipped == 0 &&
                info.loss_scale == 1.0f && info.grad_coef == 1.0f && info.lr_factor == 1.0f,
            "info after one step: step %lld skipped %lld last %d scale %g "
            "coef %g lr_factor %g",
            (long long)info.step, (long long)info.skipped_steps, info.last_step_skipped,
            info.loss_scale, info.grad_coef, info.lr_factor);

  /* AdamW step 1: m_hat = g, v_hat = g^2, so
   * p1 = p0*(1 - lr*wd) - lr * g / (|g| + eps). */
  for (int k = 0; k < 2; ++k) {
    const fo_hparams *h = &e.hp[e.t[k].group];
    const float *p = e.t[k].param;
    cr_expect(memcmp(e.t[k].grad, g0[k], sizeof g0[k]) == 0,
              "step changed the gradients of tensor %d", k);
    for (int i = 0; i < SLOT_ELEMS; ++i) {
      double g = g0[k][i];
      double want = p0[k][i] * (1.0 - (double)h->lr * h->weight_decay) -
                    (double)h->lr * g / (fabs(g) + h->eps);
      cr_expect(fabs(p[i] - want) <= 1e-6 + 1e-6 * fabs(want),
                "tensor %d [%d]: p = %.9g, want %.9g (p0 %g, g %g)", k, i, p[i], want, p0[k][i], g);
    }
  }
  float *m = NULL;
  cr_expect_eq(fo_optimizer_state_ptr(opt, 1, FO_ROLE_EXP_AVG, &m), FO_SUCCESS);
  if (m)
    for (int i = 0; i < SLOT_ELEMS; ++i)
      cr_expect(fabsf(m[i] - 0.1f * g0[1][i]) <= 1e-6f * (1 + fabsf(g0[1][i])),
                "exp_avg[%d] = %g, want %g", i, m[i], 0.1f * g0[1][i]);

  CHECK(FO_SUCCESS, NULL, fo_optimizer_sync_master, opt, NULL); /* no-op */
  CHECK(FO_SUCCESS, NULL, fo_optimizer_zero_grad, opt, NULL);
  for (int k = 0; k < 2; ++k)
    for (int i = 0; i < SLOT_ELEMS; ++i)
      cr_expect(((const float *)e.t[k].grad)[i] == 0.0f, "zero_grad left grad %d [%d]", k, i);
  CHECK(FO_SUCCESS, NULL, fo_optimizer_destroy, opt);
}

/* LAMB and LARS with layer adaptation: a tensor whose update direction has
 * norm 0 (zero gradients, no weight decay) gets trust ratio 1, not
 * ||w|| / 0 = inf, which times the zero update would write NaN. */
Test(api_smoke, trust_ratio_of_a_zero_update_is_one) {
  const fo_algorithm algs[2] = {FO_ALG_LAMB, FO_ALG_LARS};
  for (int a = 0; a < 2; a++) {
    float p[4] = {1.0f, -2.0f, 3.0f, -4.0f}, g[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    fo_tensor_desc t = {4, 0, p, g, NULL};
    fo_options o;
    fo_options_default(&o);
    o.algorithm = algs[a];
    fo_hparams h;
    fo_hparams_default(algs[a], &h);
    h.weight_decay = 0.0f;
    h.layer_adaptation = 1;
    fo_optimizer *opt = NULL;
    cr_assert_eq(fo_optimizer_create(&opt, &o, &h, 1, &t, 1), FO_SUCCESS, "%s", fo_last_error());
    cr_assert_eq(fo_optimizer_step(opt, NULL), FO_SUCCESS, "%s", fo_last_error());
    for (int i = 0; i < 4; i++)
      cr_expect_eq(p[i], (float)((i % 2 ? -1 : 1) * (i + 1)), "alg %d: p[%d] = %g", (int)algs[a], i,
                   (double)p[i]);
    fo_optimizer_destroy(opt);
  }
}
