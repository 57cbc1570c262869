/*
 * test_api_basics.c -- the public API's first pages: the version, status
 * and algorithm strings, fo_last_error (per thread, kept across
 * successes), and the _default() functions.
 *
 * Written against include/fusedopt.h only; no library internals.
 */
#define _POSIX_C_SOURCE 200809L

#include <criterion/criterion.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "api_harness.h"
#include "fusedopt.h"

/* ======================================================= version, status */

Test(api_version, macros_match_library) {
  char want[64];
  cr_expect_eq(FO_VERSION_NUMBER,
               FO_VERSION_MAJOR * 10000 + FO_VERSION_MINOR * 100 + FO_VERSION_PATCH);
  cr_expect_eq(fo_version_number(), (unsigned)FO_VERSION_NUMBER,
               "fo_version_number() = %u, header says %u", fo_version_number(),
               (unsigned)FO_VERSION_NUMBER);
  snprintf(want, sizeof want, "%d.%d.%d", FO_VERSION_MAJOR, FO_VERSION_MINOR, FO_VERSION_PATCH);
  const char *got = fo_version_string();
  cr_assert(got != NULL);
  cr_expect_str_eq(got, want);
  cr_expect(fo_version_string() == got, "version string is not static");
}

Test(api_status, strings_distinct_and_unknown) {
  const char *s[FO_STATUS_COUNT];
  const char *unknown = "unknown status";
  for (int i = 0; i < FO_STATUS_COUNT; ++i) {
    s[i] = fo_status_string((fo_status)i);
    cr_assert(s[i] != NULL, "fo_status_string(%d) is NULL", i);
    cr_expect(s[i][0] != '\0', "fo_status_string(%d) is empty", i);
    cr_expect(strcmp(s[i], unknown) != 0, "fo_status_string(%d) is \"unknown status\"", i);
    for (int j = 0; j < i; ++j)
      cr_expect(strcmp(s[i], s[j]) != 0, "fo_status_string(%d) == fo_status_string(%d) == \"%s\"",
                i, j, s[i]);
  }
  const int bad[] = {FO_STATUS_COUNT, FO_STATUS_COUNT + 1, -1, 99, INT_MAX, INT_MIN};
  for (size_t k = 0; k < sizeof bad / sizeof bad[0]; ++k) {
    const char *u = fo_status_string((fo_status)bad[k]);
    cr_assert(u != NULL, "fo_status_string(%d) is NULL", bad[k]);
    cr_expect_str_eq(u, unknown, "fo_status_string(%d) = \"%s\"", bad[k], u);
  }
}

/* ======================================================== algorithm names */

/* The names checkpoints record: every algorithm's, lower case. */
Test(api_algorithm, every_name) {
  static const struct {
    fo_algorithm alg;
    const char *name;
  } want[] = {
      {FO_ALG_SGD, "sgd"},     {FO_ALG_ADAM, "adam"},       {FO_ALG_ADAMW, "adamw"},
      {FO_ALG_LION, "lion"},   {FO_ALG_ADAGRAD, "adagrad"}, {FO_ALG_RMSPROP, "rmsprop"},
      {FO_ALG_NADAM, "nadam"}, {FO_ALG_LAMB, "lamb"},       {FO_ALG_LARS, "lars"},
  };
  cr_assert_eq(sizeof want / sizeof want[0], (size_t)FO_ALG_COUNT,
               "an algorithm was added: give its name here");
  for (size_t i = 0; i < sizeof want / sizeof want[0]; ++i) {
    const char *s = fo_algorithm_string(want[i].alg);
    cr_assert(s != NULL, "fo_algorithm_string(%d) is NULL", (int)want[i].alg);
    cr_expect_str_eq(s, want[i].name, "fo_algorithm_string(%d) = \"%s\"", (int)want[i].alg, s);
    cr_expect(fo_algorithm_string(want[i].alg) == s, "the name of %d is not static",
              (int)want[i].alg);
    for (const char *c = s; *c; ++c)
      cr_expect(*c >= 'a' && *c <= 'z', "\"%s\" is not lower-case letters", s);
  }
}

/* Outside the enum: "unknown", never NULL, never an algorithm's name, and
 * no error recorded (the function cannot fail). */
Test(api_algorithm, out_of_range_is_unknown) {
  const int bad[] = {FO_ALG_COUNT, FO_ALG_COUNT + 1, -1, 99, INT_MAX, INT_MIN};
  (void)fo_options_default(NULL); /* a message the calls must leave alone */
  char before[256];
  snprintf(before, sizeof before, "%s", fo_last_error());
  for (size_t k = 0; k < sizeof bad / sizeof bad[0]; ++k) {
    const char *u = fo_algorithm_string((fo_algorithm)bad[k]);
    cr_assert(u != NULL, "fo_algorithm_string(%d) is NULL", bad[k]);
    cr_expect_str_eq(u, "unknown", "fo_algorithm_string(%d) = \"%s\"", bad[k], u);
    for (int a = 0; a < FO_ALG_COUNT; ++a)
      cr_expect(strcmp(u, fo_algorithm_string((fo_algorithm)a)) != 0,
                "out of range %d reads as algorithm %d", bad[k], a);
  }
  cr_expect_str_eq(fo_last_error(), before, "fo_algorithm_string changed fo_last_error");
}

/* ========================================================== fo_last_error */

typedef struct thread_result {
  char initial[256];
  fo_status st;
  char msg[256];
} thread_result;

static void copy_str(char *dst, size_t cap, const char *src) {
  snprintf(dst, cap, "%s", src ? src : "(null)");
}

static void *other_thread(void *arg) {
  thread_result *r = arg;
  copy_str(r->initial, sizeof r->initial, fo_last_error());
  r->st = fo_optimizer_set_step(NULL, 0);
  copy_str(r->msg, sizeof r->msg, fo_last_error());
  return NULL;
}

Test(api_last_error, names_function_and_argument) {
  cenv e;
  env_init(&e, FO_ALG_ADAMW);
  e.ng = 3; /* hparams[2]: the header's own example */
  e.hp[2].beta1 = 1.5f;
  run_create(&e, "hparams[2].beta1 = 1.5", FO_ERR_INVALID_ARGUMENT, "hparams[2]", NULL);
  const char *m = fo_last_error();
  cr_expect(strstr(m, "beta1") != NULL && strstr(m, "1.5") != NULL,
            "message \"%s\" lacks the field or its value", m);
}

Test(api_last_error, empty_before_any_failure_in_a_new_thread) {
  thread_result r;
  pthread_t th;
  memset(&r, 0, sizeof r);
  cr_assert_eq(pthread_create(&th, NULL, other_thread, &r), 0);
  cr_assert_eq(pthread_join(th, NULL), 0);
  cr_expect_str_eq(r.initial, "", "a new thread starts with \"%s\"", r.initial);
}

Test(api_last_error, thread_local_and_kept_across_successes) {
  char mine[256];
  fo_hparams hp;
  cr_assert_eq(fo_hparams_default((fo_algorithm)99, &hp), FO_ERR_INVALID_ARGUMENT);
  copy_str(mine, sizeof mine, fo_last_error());
  cr_expect(strstr(mine, "fo_hparams_default") != NULL, "\"%s\"", mine);
  cr_expect(strstr(mine, "99") != NULL || strstr(mine, "alg") != NULL,
            "\"%s\" names neither the argument nor its value", mine);

  /* A failure on another thread does not touch this thread's message. */
  thread_result r;
  pthread_t th;
  memset(&r, 0, sizeof r);
  cr_assert_eq(pthread_create(&th, NULL, other_thread, &r), 0);
  cr_assert_eq(pthread_join(th, NULL), 0);
  cr_expect_eq(r.st, FO_ERR_NULL_POINTER);
  cr_expect(strstr(r.msg, "fo_optimizer_set_step") != NULL, "other thread's message \"%s\"", r.msg);
  cr_expect_str_eq(fo_last_error(), mine, "this thread's message changed to \"%s\"",
                   fo_last_error());

  /* Successful calls keep it ("kept until the next failing call"). */
  fo_options o;
  cr_expect_eq(fo_options_default(&o), FO_SUCCESS);
  cr_expect_eq(fo_hparams_default(FO_ALG_ADAM, &hp), FO_SUCCESS);
  (void)fo_version_string();
  cr_expect_str_eq(fo_last_error(), mine, "a successful call changed the message to \"%s\"",
                   fo_last_error());
}

/* ================================================== defaults and utilities */

Test(api_defaults, options_default) {
  fo_options o;
  memset(&o, 0xAB, sizeof o);
  cr_assert_eq(fo_options_default(&o), FO_SUCCESS);
  cr_expect_eq(o.struct_size, sizeof(fo_options));
  cr_expect_eq(o.algorithm, FO_ALG_ADAMW);
  cr_expect_eq(o.executor, FO_EXEC_CPU);
  cr_expect_eq(o.device, 0);
  cr_expect_eq(o.storage, FO_STORAGE_EXTERNAL);
  cr_expect_eq(o.param_dtype, FO_DTYPE_F32);
  cr_expect_eq(o.grad_dtype, FO_DTYPE_F32);
  cr_expect_eq(o.master_weights, 1);
  cr_expect_eq(o.stochastic_rounding, 0);
  cr_expect_eq(o.seed, 0u);
  cr_expect_eq(o.num_threads, 0);
  cr_expect_eq(o.max_grad_norm, 0.0f);
  cr_expect_eq(o.write_unscaled_grads, 0);
  cr_expect_eq(o.loss_scaler.enabled, 0);
  cr_expect_eq(o.loss_scaler.init_scale, 65536.0f);
  cr_expect_eq(o.loss_scaler.growth_factor, 2.0f);
  cr_expect_eq(o.loss_scaler.backoff_factor, 0.5f);
  cr_expect_eq(o.loss_scaler.growth_interval, 2000);
  cr_expect_eq(o.loss_scaler.max_scale, 0.0f);
  cr_expect_eq(o.loss_scaler.hysteresis, 1);
  cr_expect_eq(o.schedule.kind, FO_SCHED_CONSTANT);
  cr_expect_eq(o.schedule.warmup_steps, 0);
  cr_expect_eq(o.schedule.period_mult, 1);
  cr_expect_eq(o.schedule.gamma, 0.1f);
  cr_expect_eq(o.schedule.min_ratio, 0.0f);
  for (size_t i = 0; i < NRESERVED; ++i) cr_expect_eq(o.reserved[i], 0u);
  CHECK(FO_ERR_NULL_POINTER, "out", fo_options_default, NULL);
}

Test(api_defaults, hparams_default) {
  static const struct {
    fo_algorithm alg;
    float lr, wd, momentum, beta1, beta2, eps;
  } want[] = {
      {FO_ALG_SGD, 1e-3f, 0.0f, 0.0f, NAN, NAN, NAN},
      {FO_ALG_ADAM, 1e-3f, 0.0f, NAN, 0.9f, 0.999f, 1e-8f},
      {FO_ALG_ADAMW, 1e-3f, 1e-2f, NAN, 0.9f, 0.999f, 1e-8f},
      {FO_ALG_LION, 1e-4f, 0.0f, NAN, 0.9f, 0.99f, NAN},
  }; /* NaN: not specified for this algorithm */
  for (size_t i = 0; i < sizeof want / sizeof want[0]; ++i) {
    fo_hparams h;
    memset(&h, 0xAB, sizeof h);
    cr_assert_eq(fo_hparams_default(want[i].alg, &h), FO_SUCCESS);
    cr_expect_eq(h.lr, want[i].lr, "alg %d lr %g", want[i].alg, h.lr);
    cr_expect_eq(h.weight_decay, want[i].wd, "alg %d wd %g", want[i].alg, h.weight_decay);
    if (!isnan(want[i].momentum))
      cr_expect_eq(h.momentum, want[i].momentum, "alg %d momentum", want[i].alg);
    if (!isnan(want[i].beta1)) cr_expect_eq(h.beta1, want[i].beta1, "alg %d beta1", want[i].alg);
    if (!isnan(want[i].beta2)) cr_expect_eq(h.beta2, want[i].beta2, "alg %d beta2", want[i].alg);
    if (!isnan(want[i].eps)) cr_expect_eq(h.eps, want[i].eps, "alg %d eps", want[i].alg);
    if (want[i].alg == FO_ALG_SGD) {
      cr_expect_eq(h.dampening, 0.0f);
      cr_expect_eq(h.nesterov, 0);
    }
    cr_expect_eq(h.struct_size, sizeof(fo_hparams), "alg %d struct_size %zu", want[i].alg,
                 h.struct_size);
    for (size_t r = 0; r < NRESERVED_HP; ++r)
      cr_expect_eq(h.reserved[r], 0u, "alg %d reserved[%zu]", want[i].alg, r);
    cr_expect_eq(h.amsgrad, 0, "alg %d amsgrad", want[i].alg);
    cr_expect_eq(h.maximize, 0, "alg %d maximize", want[i].alg);
    /* "fields an algorithm does not use ... must still be finite" */
    cr_expect(isfinite(h.lr) && isfinite(h.weight_decay) && isfinite(h.momentum) &&
                  isfinite(h.dampening) && isfinite(h.beta1) && isfinite(h.beta2) &&
                  isfinite(h.eps),
              "alg %d: default has a non-finite field", want[i].alg);
  }
  const int bad[] = {FO_ALG_COUNT, -1, 99};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; ++i) {
    fo_hparams h, h0;
    memset(&h, 0x5A, sizeof h);
    h0 = h;
    CHECK(FO_ERR_INVALID_ARGUMENT, NULL, fo_hparams_default, (fo_algorithm)bad[i], &h);
    cr_expect(memcmp(&h, &h0, sizeof h) == 0, "fo_hparams_default(%d) failed but wrote *out",
              bad[i]);
  }
  CHECK(FO_ERR_NULL_POINTER, "out", fo_hparams_default, FO_ALG_ADAM, NULL);
}

Test(api_defaults, dtype_size) {
  cr_expect_eq(fo_dtype_size(FO_DTYPE_F32), 4u);
  cr_expect_eq(fo_dtype_size(FO_DTYPE_F16), 2u);
  cr_expect_eq(fo_dtype_size(FO_DTYPE_BF16), 2u);
  cr_expect_eq(fo_dtype_size(FO_DTYPE_COUNT), 0u);
  cr_expect_eq(fo_dtype_size((fo_dtype)-1), 0u);
  cr_expect_eq(fo_dtype_size((fo_dtype)99), 0u);
}
