/*
 * test_api.c -- the public API of fusedopt.h on the CPU executor: version
 * and status strings, fo_last_error, argument validation of every public
 * function (exact statuses), "on failure nothing the caller owns has
 * changed", a success-path smoke test, and the fp16/bf16 conversions
 * against hand-derived bit patterns.
 *
 * Written against include/fusedopt.h only; no library internals.
 */
#define _POSIX_C_SOURCE 200809L

#include <criterion/criterion.h>

#include <ctype.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "fusedopt.h"

/* ================================================================ helpers */

static uint32_t f2u(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

static float u2f(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

static const char *st_name(fo_status s) { return fo_status_string(s); }

/* Case-insensitive strstr that also treats '_' and ' ' as the same
 * character, so "stochastic rounding" names stochastic_rounding. */
static int fold(int c) { return c == '_' ? ' ' : tolower(c); }

static int contains_ci(const char *hay, const char *needle) {
  size_t n = strlen(needle);
  for (; *hay; ++hay) {
    size_t i = 0;
    while (i < n && hay[i] &&
           fold((unsigned char)hay[i]) == fold((unsigned char)needle[i]))
      ++i;
    if (i == n) return 1;
  }
  return n == 0;
}

/* Set fo_last_error() to a message that names neither fn nor anything a
 * following check looks for, so a failing call that forgets to set its own
 * message is caught (instead of passing on a stale message). */
static void prime_error(const char *fn) {
  if (strcmp(fn, "fo_options_default") != 0)
    (void)fo_options_default(NULL);
  else
    (void)fo_hparams_default(FO_ALG_SGD, NULL);
}

/* One call, its exact expected status, and (on failure) a message that
 * names the function and, if arg is not NULL, the offending argument. */
static void check_status(fo_status got, fo_status want, const char *fn,
                         const char *arg, const char *call, int line) {
  const char *msg = fo_last_error();
  cr_expect(got == want,
            "line %d: %s returned %s (%d), want %s (%d); fo_last_error: \"%s\"",
            line, call, st_name(got), (int)got, st_name(want), (int)want,
            got == FO_SUCCESS ? "(not set by this call)" : msg);
  if (got != FO_SUCCESS && want != FO_SUCCESS) {
    cr_expect(msg != NULL && strstr(msg, fn) != NULL,
              "line %d: %s failed but fo_last_error \"%s\" does not name %s",
              line, call, msg ? msg : "(null)", fn);
    if (arg)
      cr_expect(msg != NULL && contains_ci(msg, arg),
                "line %d: %s failed but fo_last_error \"%s\" does not name "
                "the argument \"%s\"",
                line, call, msg ? msg : "(null)", arg);
  }
}

#define CHECK(want, arg, fn, ...)                                        \
  do {                                                                   \
    prime_error(#fn);                                                    \
    check_status(fn(__VA_ARGS__), (want), #fn, (arg),                    \
                 #fn "(" #__VA_ARGS__ ")", __LINE__);                    \
  } while (0)

/* Values we put into out-parameters before a call that must fail: the call
 * must leave them as they are. */
#define SENT_PTR ((void *)(uintptr_t)0x5e17e1u)
#define SENT_OPT ((fo_optimizer *)(uintptr_t)0x5e17e1u)
#define SENT_I64 ((int64_t)0x5e17e15e17e1)
#define SENT_F32 (-1234.5f)
#define SENT_SIZE ((size_t)0x5e17e1u)

/* Number of reserved words in fo_options (the header has changed it). */
#define NRESERVED (sizeof(((fo_options *)0)->reserved) / sizeof(uint64_t))

/* A non-NULL stream handle: must be refused by the CPU executor. */
#define SOME_STREAM ((fo_stream_t)(uintptr_t)0x1000u)

/* ====================================================== the create fixture */

/* Every buffer the tests hand the library lives in one pool, in 64-byte
 * slots: tensor k's param is slot 2k, its grad slot 2k+1 (16 fp32 elements,
 * or 16 16-bit elements in the first half of the slot).  Overlap cases move
 * pointers around inside the pool; the whole pool is compared byte by byte
 * before and after each call. */
enum { SLOT_ELEMS = 16, SLOT_BYTES = 64, NUM_SLOTS = 8, MAX_T = 3 };

typedef struct cenv {
  fo_options o;
  fo_hparams hp[FO_MAX_GROUPS + 1];
  int ng;
  fo_tensor_desc t[MAX_T];
  int64_t nt;
  /* what create gets (the NULL-pointer cases clear these) */
  int out_null;
  const fo_options *po;
  const fo_hparams *php;
  const fo_tensor_desc *pt;
  _Alignas(256) unsigned char pool[NUM_SLOTS * SLOT_BYTES];
} cenv;

static void *at(cenv *e, size_t byte_offset) { return e->pool + byte_offset; }

static void fill_pool(cenv *e) {
  float *f = (float *)(void *)e->pool;
  for (size_t i = 0; i < sizeof e->pool / sizeof(float); ++i)
    f[i] = 0.25f * (float)(i % 37) - 4.125f; /* never 0, exact in bf16 */
}

/* Baseline: algorithm alg, default options (CPU, external, fp32), two groups
 * (the second without weight decay), two tensors of 16 elements, one per
 * group.  t[2] is prepared (group 0, slots 4/5) for cases that set nt = 3. */
static void env_init(cenv *e, fo_algorithm alg) {
  memset(e, 0, sizeof *e);
  cr_assert_eq(fo_options_default(&e->o), FO_SUCCESS);
  e->o.algorithm = alg;
  for (int g = 0; g <= FO_MAX_GROUPS; ++g)
    cr_assert_eq(fo_hparams_default(alg, &e->hp[g]), FO_SUCCESS);
  e->hp[1].weight_decay = 0.0f;
  e->ng = 2;
  fill_pool(e);
  for (int k = 0; k < MAX_T; ++k) {
    e->t[k].numel = SLOT_ELEMS;
    e->t[k].group = k == 1 ? 1 : 0;
    e->t[k].param = at(e, (size_t)(2 * k) * SLOT_BYTES);
    e->t[k].grad = at(e, (size_t)(2 * k + 1) * SLOT_BYTES);
  }
  e->t[0].name = "t0";
  e->t[1].name = NULL;
  e->t[2].name = "t2";
  e->nt = 2;
  e->po = &e->o;
  e->php = e->hp;
  e->pt = e->t;
}

static void set_arena(cenv *e) {
  e->o.storage = FO_STORAGE_ARENA;
  for (int k = 0; k < MAX_T; ++k) e->t[k].param = e->t[k].grad = NULL;
}

/* Run create on the fixture and check: the exact status; on failure *out is
 * still the sentinel and fo_last_error names fo_optimizer_create and `arg`;
 * always: the caller's buffers and the const arguments are byte-identical.
 * On success the optimizer is returned (or destroyed when keep is NULL). */
static fo_status run_create(cenv *e, const char *label, fo_status want,
                            const char *arg, fo_optimizer **keep) {
  static unsigned char pool0[sizeof e->pool];
  static fo_options o0;
  static fo_hparams hp0[FO_MAX_GROUPS + 1];
  static fo_tensor_desc t0[MAX_T];
  memcpy(pool0, e->pool, sizeof pool0);
  o0 = e->o;
  memcpy(hp0, e->hp, sizeof hp0);
  memcpy(t0, e->t, sizeof t0);

  fo_optimizer *opt = SENT_OPT;
  prime_error("fo_optimizer_create");
  fo_status st = fo_optimizer_create(e->out_null ? NULL : &opt, e->po, e->php,
                                     e->ng, e->pt, e->nt);
  const char *msg = fo_last_error();
  cr_expect(st == want,
            "create [%s]: returned %s (%d), want %s (%d); fo_last_error: "
            "\"%s\"",
            label, st_name(st), (int)st, st_name(want), (int)want,
            st == FO_SUCCESS ? "(not set by this call)" : msg);
  if (st == FO_SUCCESS) {
    cr_expect(opt != SENT_OPT && opt != NULL,
              "create [%s]: success but *out not set", label);
  } else {
    cr_expect(opt == SENT_OPT, "create [%s]: failed with %s but changed *out",
              label, st_name(st));
    cr_expect(strstr(msg, "fo_optimizer_create") != NULL,
              "create [%s]: fo_last_error \"%s\" does not name "
              "fo_optimizer_create",
              label, msg);
    if (arg)
      cr_expect(contains_ci(msg, arg),
                "create [%s]: fo_last_error \"%s\" does not name \"%s\"",
                label, msg, arg);
  }
  cr_expect(memcmp(pool0, e->pool, sizeof pool0) == 0,
            "create [%s]: the caller's param/grad buffers changed", label);
  cr_expect(memcmp(&o0, &e->o, sizeof o0) == 0 &&
                memcmp(hp0, e->hp, sizeof hp0) == 0 &&
                memcmp(t0, e->t, sizeof t0) == 0,
            "create [%s]: a const argument changed", label);
  if (st == FO_SUCCESS && opt != SENT_OPT) {
    if (keep)
      *keep = opt;
    else
      cr_expect_eq(fo_optimizer_destroy(opt), FO_SUCCESS);
  } else if (keep) {
    *keep = NULL;
  }
  return st;
}

/* A valid optimizer over the baseline fixture of alg (asserts success). */
static fo_optimizer *make_opt(cenv *e, fo_algorithm alg) {
  env_init(e, alg);
  fo_optimizer *opt = NULL;
  cr_assert_eq(run_create(e, "baseline", FO_SUCCESS, NULL, &opt), FO_SUCCESS);
  return opt;
}

/* ======================================================= version, status */

Test(api_version, macros_match_library) {
  char want[64];
  cr_expect_eq(FO_VERSION_NUMBER,
               FO_VERSION_MAJOR * 10000 + FO_VERSION_MINOR * 100 +
                   FO_VERSION_PATCH);
  cr_expect_eq(fo_version_number(), (unsigned)FO_VERSION_NUMBER,
               "fo_version_number() = %u, header says %u",
               fo_version_number(), (unsigned)FO_VERSION_NUMBER);
  snprintf(want, sizeof want, "%d.%d.%d", FO_VERSION_MAJOR, FO_VERSION_MINOR,
           FO_VERSION_PATCH);
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
    cr_expect(strcmp(s[i], unknown) != 0,
              "fo_status_string(%d) is \"unknown status\"", i);
    for (int j = 0; j < i; ++j)
      cr_expect(strcmp(s[i], s[j]) != 0,
                "fo_status_string(%d) == fo_status_string(%d) == \"%s\"", i,
                j, s[i]);
  }
  const int bad[] = {FO_STATUS_COUNT, FO_STATUS_COUNT + 1, -1, 99, INT_MAX,
                     INT_MIN};
  for (size_t k = 0; k < sizeof bad / sizeof bad[0]; ++k) {
    const char *u = fo_status_string((fo_status)bad[k]);
    cr_assert(u != NULL, "fo_status_string(%d) is NULL", bad[k]);
    cr_expect_str_eq(u, unknown, "fo_status_string(%d) = \"%s\"", bad[k], u);
  }
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
  run_create(&e, "hparams[2].beta1 = 1.5", FO_ERR_INVALID_ARGUMENT,
             "hparams[2]", NULL);
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
  cr_expect_str_eq(r.initial, "", "a new thread starts with \"%s\"",
                   r.initial);
}

Test(api_last_error, thread_local_and_kept_across_successes) {
  char mine[256];
  fo_hparams hp;
  cr_assert_eq(fo_hparams_default((fo_algorithm)99, &hp),
               FO_ERR_INVALID_ARGUMENT);
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
  cr_expect(strstr(r.msg, "fo_optimizer_set_step") != NULL,
            "other thread's message \"%s\"", r.msg);
  cr_expect_str_eq(fo_last_error(), mine,
                   "this thread's message changed to \"%s\"", fo_last_error());

  /* Successful calls keep it ("kept until the next failing call"). */
  fo_options o;
  cr_expect_eq(fo_options_default(&o), FO_SUCCESS);
  cr_expect_eq(fo_hparams_default(FO_ALG_ADAM, &hp), FO_SUCCESS);
  (void)fo_version_string();
  cr_expect_str_eq(fo_last_error(), mine,
                   "a successful call changed the message to \"%s\"",
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
    cr_expect_eq(h.weight_decay, want[i].wd, "alg %d wd %g", want[i].alg,
                 h.weight_decay);
    if (!isnan(want[i].momentum))
      cr_expect_eq(h.momentum, want[i].momentum, "alg %d momentum",
                   want[i].alg);
    if (!isnan(want[i].beta1))
      cr_expect_eq(h.beta1, want[i].beta1, "alg %d beta1", want[i].alg);
    if (!isnan(want[i].beta2))
      cr_expect_eq(h.beta2, want[i].beta2, "alg %d beta2", want[i].alg);
    if (!isnan(want[i].eps))
      cr_expect_eq(h.eps, want[i].eps, "alg %d eps", want[i].alg);
    if (want[i].alg == FO_ALG_SGD) {
      cr_expect_eq(h.dampening, 0.0f);
      cr_expect_eq(h.nesterov, 0);
    }
    cr_expect_eq(h.amsgrad, 0, "alg %d amsgrad", want[i].alg);
    cr_expect_eq(h.maximize, 0, "alg %d maximize", want[i].alg);
    /* "fields an algorithm does not use ... must still be finite" */
    cr_expect(isfinite(h.lr) && isfinite(h.weight_decay) &&
                  isfinite(h.momentum) && isfinite(h.dampening) &&
                  isfinite(h.beta1) && isfinite(h.beta2) && isfinite(h.eps),
              "alg %d: default has a non-finite field", want[i].alg);
  }
  const int bad[] = {FO_ALG_COUNT, -1, 99};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; ++i) {
    fo_hparams h, h0;
    memset(&h, 0x5A, sizeof h);
    h0 = h;
    CHECK(FO_ERR_INVALID_ARGUMENT, NULL, fo_hparams_default,
          (fo_algorithm)bad[i], &h);
    cr_expect(memcmp(&h, &h0, sizeof h) == 0,
              "fo_hparams_default(%d) failed but wrote *out", bad[i]);
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

/* ================================================= create: option cases */

#define IA FO_ERR_INVALID_ARGUMENT
#define OK FO_SUCCESS
#define IS FO_ERR_INVALID_STATE

typedef void (*mutator)(cenv *e);
typedef struct create_case {
  const char *name;
  mutator mut;
  fo_status want;
  const char *arg; /* must appear in fo_last_error on failure; may be NULL */
} create_case;

#define MUT(fn, ...) \
  static void fn(cenv *e) { __VA_ARGS__; }

/* pointers and counts */
MUT(m_none, (void)e)
MUT(m_out_null, e->out_null = 1)
MUT(m_options_null, e->po = NULL)
MUT(m_hparams_null, e->php = NULL)
MUT(m_tensors_null, e->pt = NULL)
MUT(m_param_null, e->t[1].param = NULL)
MUT(m_grad_null, e->t[0].grad = NULL)
MUT(m_nt_neg, e->nt = -1)
MUT(m_nt_min, e->nt = INT64_MIN)
MUT(m_ng_zero, e->ng = 0)
MUT(m_ng_neg, e->ng = -1)
MUT(m_ng_over, e->ng = FO_MAX_GROUPS + 1)
MUT(m_ng_max, e->ng = FO_MAX_GROUPS)
MUT(m_ng_int_max, e->ng = INT_MAX)
MUT(m_numel_neg, e->t[1].numel = -1)
MUT(m_numel_min, e->t[1].numel = INT64_MIN)
MUT(m_numel_over, e->t[1].numel = ((int64_t)1 << 62) + 1)
MUT(m_numel_max, e->t[1].numel = INT64_MAX)
MUT(m_numel_zero_null, e->t[1].numel = 0; e->t[1].param = e->t[1].grad = NULL)
MUT(m_numel_zero_ptrs, e->t[1].numel = 0)
MUT(m_group_neg, e->t[1].group = -1)
MUT(m_group_eq_ng, e->t[1].group = 2)
MUT(m_group_max, e->t[1].group = FO_MAX_GROUPS)
MUT(m_group_unused, e->ng = 3) /* group 2 has no tensor: allowed */
MUT(m_three_tensors, e->nt = 3)
/* options fields */
MUT(m_size_zero, e->o.struct_size = 0)
MUT(m_size_small, e->o.struct_size = sizeof(fo_options) - 1)
MUT(m_size_half, e->o.struct_size = sizeof(fo_options) / 2)
MUT(m_size_big, e->o.struct_size = sizeof(fo_options) + 8)
MUT(m_reserved0, e->o.reserved[0] = 1)
MUT(m_reserved_last, e->o.reserved[NRESERVED - 1] = UINT64_MAX)
MUT(m_master_2, e->o.master_weights = 2)
MUT(m_master_neg, e->o.master_weights = -1)
MUT(m_sr_2, e->o.stochastic_rounding = 2)
MUT(m_sr_neg, e->o.stochastic_rounding = -1)
MUT(m_threads_neg, e->o.num_threads = -1)
MUT(m_threads_1, e->o.num_threads = 1)
MUT(m_seed, e->o.seed = UINT64_MAX)
/* dtype / master / stochastic-rounding combinations */
MUT(m_bf16, e->o.param_dtype = e->o.grad_dtype = FO_DTYPE_BF16)
MUT(m_f16, e->o.param_dtype = e->o.grad_dtype = FO_DTYPE_F16)
MUT(m_bf16_nomaster, m_bf16(e); e->o.master_weights = 0)
MUT(m_f16_nomaster, m_f16(e); e->o.master_weights = 0)
MUT(m_bf16_sr, m_bf16_nomaster(e); e->o.stochastic_rounding = 1)
MUT(m_f16_sr, m_f16_nomaster(e); e->o.stochastic_rounding = 1)
MUT(m_bf16_sr_master, m_bf16(e); e->o.stochastic_rounding = 1)
/* storage */
MUT(m_arena, set_arena(e))
MUT(m_arena_param, set_arena(e); e->t[0].param = at(e, 0))
MUT(m_arena_grad, set_arena(e); e->t[1].grad = at(e, 3 * SLOT_BYTES))
MUT(m_arena_huge, set_arena(e); e->nt = 1; e->t[0].numel = (int64_t)1 << 62)
MUT(m_arena_huge_sum, set_arena(e); e->t[0].numel = (int64_t)1 << 61;
    e->t[1].numel = (int64_t)1 << 61)
MUT(m_device_3, e->o.device = 3) /* ignored on the CPU */
/* clipping and loss scaling */
MUT(m_clip_neg, e->o.max_grad_norm = -1.0f)
MUT(m_clip_nan, e->o.max_grad_norm = NAN)
MUT(m_clip_ok, e->o.max_grad_norm = 1.0f)
MUT(m_unscaled_2, e->o.write_unscaled_grads = 2)
MUT(m_unscaled_1, e->o.write_unscaled_grads = 1)
MUT(m_ls_2, e->o.loss_scaler.enabled = 2)
MUT(m_ls_on, e->o.loss_scaler.enabled = 1)
MUT(m_ls_init_0, m_ls_on(e); e->o.loss_scaler.init_scale = 0.0f)
MUT(m_ls_init_neg, m_ls_on(e); e->o.loss_scaler.init_scale = -1.0f)
MUT(m_ls_init_nan, m_ls_on(e); e->o.loss_scaler.init_scale = NAN)
MUT(m_ls_init_inf, m_ls_on(e); e->o.loss_scaler.init_scale = INFINITY)
MUT(m_ls_init_subnormal, m_ls_on(e); e->o.loss_scaler.init_scale = 0x1p-127f)
MUT(m_ls_init_floor, m_ls_on(e); e->o.loss_scaler.init_scale = FO_LOSS_SCALE_MIN)
MUT(m_ls_growth_1, m_ls_on(e); e->o.loss_scaler.growth_factor = 1.0f)
MUT(m_ls_growth_nan, m_ls_on(e); e->o.loss_scaler.growth_factor = NAN)
MUT(m_ls_backoff_0, m_ls_on(e); e->o.loss_scaler.backoff_factor = 0.0f)
MUT(m_ls_backoff_1, m_ls_on(e); e->o.loss_scaler.backoff_factor = 1.0f)
MUT(m_ls_backoff_nan, m_ls_on(e); e->o.loss_scaler.backoff_factor = NAN)
MUT(m_ls_interval_0, m_ls_on(e); e->o.loss_scaler.growth_interval = 0)
MUT(m_ls_max_neg, m_ls_on(e); e->o.loss_scaler.max_scale = -1.0f)
MUT(m_ls_max_nan, m_ls_on(e); e->o.loss_scaler.max_scale = NAN)
MUT(m_ls_hyst_0, m_ls_on(e); e->o.loss_scaler.hysteresis = 0)
/* schedules */
MUT(m_sch_warm_neg, e->o.schedule.warmup_steps = -1)
MUT(m_sch_unused_neg, e->o.schedule.total_steps = -1) /* CONSTANT */
MUT(m_sch_unused_gamma, e->o.schedule.gamma = -1.0f) /* CONSTANT */
MUT(m_sch_unused_ratio, e->o.schedule.min_ratio = -0.5f) /* CONSTANT */
MUT(m_cos, e->o.schedule.kind = FO_SCHED_COSINE;
    e->o.schedule.total_steps = 100)
MUT(m_cos_warm, m_cos(e); e->o.schedule.warmup_steps = 10)
MUT(m_cos_total_0, m_cos(e); e->o.schedule.total_steps = 0)
MUT(m_cos_total_eq_warm, m_cos(e); e->o.schedule.warmup_steps = 100)
MUT(m_cos_ratio_big, m_cos(e); e->o.schedule.min_ratio = 1.5f)
MUT(m_cos_ratio_nan, m_cos(e); e->o.schedule.min_ratio = NAN)
MUT(m_step, e->o.schedule.kind = FO_SCHED_STEP; e->o.schedule.step_size = 10;
    e->o.schedule.gamma = 0.5f)
MUT(m_step_size_0, m_step(e); e->o.schedule.step_size = 0)
MUT(m_step_gamma_0, m_step(e); e->o.schedule.gamma = 0.0f)
MUT(m_step_gamma_big, m_step(e); e->o.schedule.gamma = 1.5f)
MUT(m_step_gamma_nan, m_step(e); e->o.schedule.gamma = NAN)
MUT(m_step_gamma_1, m_step(e); e->o.schedule.gamma = 1.0f)
MUT(m_exp, e->o.schedule.kind = FO_SCHED_EXPONENTIAL;
    e->o.schedule.gamma = 0.99f)
MUT(m_exp_gamma_0, m_exp(e); e->o.schedule.gamma = 0.0f)
MUT(m_sgdr, e->o.schedule.kind = FO_SCHED_COSINE_RESTARTS;
    e->o.schedule.period = 10; e->o.schedule.period_mult = 2)
MUT(m_sgdr_period_0, m_sgdr(e); e->o.schedule.period = 0)
MUT(m_sgdr_mult_0, m_sgdr(e); e->o.schedule.period_mult = 0)
MUT(m_cyc, e->o.schedule.kind = FO_SCHED_CYCLIC; e->o.schedule.step_size = 5;
    e->o.schedule.min_ratio = 0.1f)
MUT(m_cyc_size_neg, m_cyc(e); e->o.schedule.step_size = -1)
MUT(m_cyc_ratio_neg, m_cyc(e); e->o.schedule.min_ratio = -0.1f)
/* overlap (fp32: 64 bytes per buffer) */
MUT(m_ov_grad_is_param, e->t[0].grad = e->t[0].param)
MUT(m_ov_grad_in_param, e->t[0].grad = at(e, 32))
MUT(m_ov_last_elem, e->t[1].param = at(e, SLOT_BYTES - 4)) /* t0 grad too */
MUT(m_ov_shared_grad, e->t[1].grad = e->t[0].grad)
MUT(m_ov_param_is_other_grad, e->t[1].param = e->t[0].grad)
MUT(m_ov_low_into_high, e->t[0].param = at(e, 2 * SLOT_BYTES + 8))
MUT(m_ov_third_vs_first, e->nt = 3; e->t[2].grad = at(e, 8))
MUT(m_ov_grad_end_into_next, e->t[0].grad = at(e, SLOT_BYTES + 4)) /* into t1.param */
MUT(m_f16_touching, m_f16(e); e->t[0].grad = at(e, 32)) /* 16 x 2 bytes */
MUT(m_f16_one_over, m_f16(e); e->t[0].grad = at(e, 30))
MUT(m_bf16_touching, m_bf16(e);
    e->t[0].param = at(e, SLOT_BYTES - 32)) /* [32,64), grad at 64 */

static const create_case k_create_cases[] = {
    {"baseline", m_none, FO_SUCCESS, NULL},
    /* NULL pointers */
    {"out NULL", m_out_null, FO_ERR_NULL_POINTER, "out"},
    {"options NULL", m_options_null, FO_ERR_NULL_POINTER, "options"},
    {"hparams NULL", m_hparams_null, FO_ERR_NULL_POINTER, "hparams"},
    {"tensors NULL", m_tensors_null, FO_ERR_NULL_POINTER, "tensors"},
    {"external tensors[1].param NULL", m_param_null, FO_ERR_NULL_POINTER,
     "param"},
    {"external tensors[0].grad NULL", m_grad_null, FO_ERR_NULL_POINTER,
     "grad"},
    /* counts and sizes */
    {"num_tensors -1", m_nt_neg, FO_ERR_INVALID_ARGUMENT, "num_tensors"},
    {"num_tensors INT64_MIN", m_nt_min, FO_ERR_INVALID_ARGUMENT,
     "num_tensors"},
    {"num_groups 0", m_ng_zero, FO_ERR_INVALID_ARGUMENT, "num_groups"},
    {"num_groups -1", m_ng_neg, FO_ERR_INVALID_ARGUMENT, "num_groups"},
    {"num_groups FO_MAX_GROUPS+1", m_ng_over, FO_ERR_INVALID_ARGUMENT,
     "num_groups"},
    {"num_groups INT_MAX", m_ng_int_max, FO_ERR_INVALID_ARGUMENT,
     "num_groups"},
    {"num_groups FO_MAX_GROUPS", m_ng_max, FO_SUCCESS, NULL},
    {"group without tensors", m_group_unused, FO_SUCCESS, NULL},
    {"three tensors", m_three_tensors, FO_SUCCESS, NULL},
    {"numel -1", m_numel_neg, FO_ERR_INVALID_ARGUMENT, "numel"},
    {"numel INT64_MIN", m_numel_min, FO_ERR_INVALID_ARGUMENT, "numel"},
    {"numel 2^62+1", m_numel_over, FO_ERR_INVALID_ARGUMENT, "numel"},
    {"numel INT64_MAX", m_numel_max, FO_ERR_INVALID_ARGUMENT, "numel"},
    {"numel 0, NULL param and grad", m_numel_zero_null, FO_SUCCESS, NULL},
    {"numel 0 with pointers", m_numel_zero_ptrs, FO_SUCCESS, NULL},
    {"group -1", m_group_neg, FO_ERR_INVALID_ARGUMENT, "group"},
    {"group == num_groups", m_group_eq_ng, FO_ERR_INVALID_ARGUMENT, "group"},
    {"group FO_MAX_GROUPS", m_group_max, FO_ERR_INVALID_ARGUMENT, "group"},
    /* options */
    {"struct_size 0", m_size_zero, FO_ERR_INVALID_ARGUMENT, "struct_size"},
    {"struct_size -1", m_size_small, FO_ERR_INVALID_ARGUMENT, "struct_size"},
    {"struct_size half", m_size_half, FO_ERR_INVALID_ARGUMENT, "struct_size"},
    {"struct_size +8", m_size_big, FO_ERR_INVALID_ARGUMENT, "struct_size"},
    {"reserved[0] = 1", m_reserved0, FO_ERR_INVALID_ARGUMENT, "reserved"},
    {"reserved[last] = ~0", m_reserved_last, FO_ERR_INVALID_ARGUMENT,
     "reserved"},
    {"master_weights 2", m_master_2, FO_ERR_INVALID_ARGUMENT,
     "master_weights"},
    {"master_weights -1", m_master_neg, FO_ERR_INVALID_ARGUMENT,
     "master_weights"},
    {"stochastic_rounding 2", m_sr_2, FO_ERR_INVALID_ARGUMENT,
     "stochastic_rounding"},
    {"stochastic_rounding -1", m_sr_neg, FO_ERR_INVALID_ARGUMENT,
     "stochastic_rounding"},
    {"num_threads -1", m_threads_neg, FO_ERR_INVALID_ARGUMENT, "num_threads"},
    {"num_threads 1", m_threads_1, FO_SUCCESS, NULL},
    {"seed ~0", m_seed, FO_SUCCESS, NULL},
    {"device 3 on the CPU executor (ignored)", m_device_3,
     FO_SUCCESS, NULL},
    /* clipping, loss scaling */
    {"max_grad_norm -1", m_clip_neg, IA, "max_grad_norm"},
    {"max_grad_norm NaN", m_clip_nan, IA, "max_grad_norm"},
    {"max_grad_norm 1", m_clip_ok, OK, NULL},
    {"write_unscaled_grads 2", m_unscaled_2, IA, "write_unscaled_grads"},
    {"write_unscaled_grads 1", m_unscaled_1, OK, NULL},
    {"loss_scaler.enabled 2", m_ls_2, IA, "enabled"},
    {"loss_scaler on", m_ls_on, OK, NULL},
    {"init_scale 0", m_ls_init_0, IA, "init_scale"},
    {"init_scale -1", m_ls_init_neg, IA, "init_scale"},
    {"init_scale NaN", m_ls_init_nan, IA, "init_scale"},
    {"init_scale inf", m_ls_init_inf, IA, "init_scale"},
    {"init_scale subnormal", m_ls_init_subnormal, IA, "FO_LOSS_SCALE_MIN"},
    {"init_scale FO_LOSS_SCALE_MIN", m_ls_init_floor, OK, NULL},
    {"growth_factor 1", m_ls_growth_1, IA, "growth_factor"},
    {"growth_factor NaN", m_ls_growth_nan, IA, "growth_factor"},
    {"backoff_factor 0", m_ls_backoff_0, IA, "backoff_factor"},
    {"backoff_factor 1", m_ls_backoff_1, IA, "backoff_factor"},
    {"backoff_factor NaN", m_ls_backoff_nan, IA, "backoff_factor"},
    {"growth_interval 0", m_ls_interval_0, IA, "growth_interval"},
    {"max_scale -1", m_ls_max_neg, IA, "max_scale"},
    {"max_scale NaN", m_ls_max_nan, IA, "max_scale"},
    {"hysteresis 0", m_ls_hyst_0, IA, "hysteresis"},
    /* schedules */
    {"warmup_steps -1", m_sch_warm_neg, IA, "warmup_steps"},
    {"CONSTANT, unused total_steps -1", m_sch_unused_neg, IA, "total_steps"},
    {"CONSTANT, unused gamma -1", m_sch_unused_gamma, IA, "gamma"},
    {"CONSTANT, unused min_ratio -0.5", m_sch_unused_ratio, IA, "min_ratio"},
    {"COSINE 100", m_cos, OK, NULL},
    {"COSINE 100, warmup 10", m_cos_warm, OK, NULL},
    {"COSINE total 0", m_cos_total_0, IA, "total_steps"},
    {"COSINE total == warmup", m_cos_total_eq_warm, IA, "total_steps"},
    {"COSINE min_ratio 1.5", m_cos_ratio_big, IA, "min_ratio"},
    {"COSINE min_ratio NaN", m_cos_ratio_nan, IA, "min_ratio"},
    {"STEP 10 x0.5", m_step, OK, NULL},
    {"STEP step_size 0", m_step_size_0, IA, "step_size"},
    {"STEP gamma 0", m_step_gamma_0, IA, "gamma"},
    {"STEP gamma 1.5", m_step_gamma_big, IA, "gamma"},
    {"STEP gamma NaN", m_step_gamma_nan, IA, "gamma"},
    {"STEP gamma 1", m_step_gamma_1, OK, NULL},
    {"EXPONENTIAL 0.99", m_exp, OK, NULL},
    {"EXPONENTIAL gamma 0", m_exp_gamma_0, IA, "gamma"},
    {"COSINE_RESTARTS 10 x2", m_sgdr, OK, NULL},
    {"COSINE_RESTARTS period 0", m_sgdr_period_0, IA, "period"},
    {"COSINE_RESTARTS period_mult 0", m_sgdr_mult_0, IA, "period_mult"},
    {"CYCLIC 5", m_cyc, OK, NULL},
    {"CYCLIC step_size -1", m_cyc_size_neg, IA, "step_size"},
    {"CYCLIC min_ratio -0.1", m_cyc_ratio_neg, IA, "min_ratio"},
    /* dtypes, master weights, stochastic rounding */
    {"bf16 + master", m_bf16, FO_SUCCESS, NULL},
    {"f16 + master", m_f16, FO_SUCCESS, NULL},
    {"bf16 no master", m_bf16_nomaster, FO_SUCCESS, NULL},
    {"f16 no master", m_f16_nomaster, FO_SUCCESS, NULL},
    {"bf16 no master + SR", m_bf16_sr, FO_SUCCESS, NULL},
    {"f16 + SR", m_f16_sr, FO_ERR_UNSUPPORTED, "stochastic_rounding"},
    {"bf16 + master + SR", m_bf16_sr_master, FO_ERR_UNSUPPORTED,
     "stochastic_rounding"},
    /* storage */
    {"arena", m_arena, FO_SUCCESS, NULL},
    {"arena with tensors[0].param", m_arena_param, FO_ERR_INVALID_ARGUMENT,
     "param"},
    {"arena with tensors[1].grad", m_arena_grad, FO_ERR_INVALID_ARGUMENT,
     "grad"},
    {"arena numel 2^62 (2^64 bytes)", m_arena_huge, FO_ERR_OUT_OF_MEMORY,
     NULL},
    {"arena 2 x 2^61 (sum 2^64 bytes)", m_arena_huge_sum,
     FO_ERR_OUT_OF_MEMORY, NULL},
    /* overlap */
    {"grad == own param", m_ov_grad_is_param, FO_ERR_OVERLAP, NULL},
    {"grad inside own param", m_ov_grad_in_param, FO_ERR_OVERLAP, NULL},
    {"param shares one element", m_ov_last_elem, FO_ERR_OVERLAP, NULL},
    {"two tensors share a grad", m_ov_shared_grad, FO_ERR_OVERLAP, NULL},
    {"param == other tensor's grad", m_ov_param_is_other_grad, FO_ERR_OVERLAP,
     NULL},
    {"tensors[0].param inside tensors[1].param", m_ov_low_into_high,
     FO_ERR_OVERLAP, NULL},
    {"tensors[2].grad inside tensors[0].param", m_ov_third_vs_first,
     FO_ERR_OVERLAP, NULL},
    {"grad end runs into the next param", m_ov_grad_end_into_next,
     FO_ERR_OVERLAP, NULL},
    {"f16 param/grad touching", m_f16_touching, FO_SUCCESS, NULL},
    {"f16 param/grad one element over", m_f16_one_over, FO_ERR_OVERLAP, NULL},
    {"bf16 param ends where its grad starts", m_bf16_touching, FO_SUCCESS,
     NULL},
};

/* Each case with AdamW (moments to allocate) and plain SGD (no state). */
Test(api_create, table) {
  static const fo_algorithm algs[] = {FO_ALG_ADAMW, FO_ALG_SGD};
  for (size_t i = 0; i < sizeof k_create_cases / sizeof k_create_cases[0];
       ++i) {
    const create_case *c = &k_create_cases[i];
    for (size_t a = 0; a < sizeof algs / sizeof algs[0]; ++a) {
      cenv e;
      char label[160];
      env_init(&e, algs[a]);
      c->mut(&e);
      snprintf(label, sizeof label, "%s, %s", c->name,
               algs[a] == FO_ALG_SGD ? "SGD" : "AdamW");
      run_create(&e, label, c->want, c->arg, NULL);
    }
  }
}

/* Unknown enum values in every enum field of fo_options. */
Test(api_create, unknown_enums) {
  static const struct {
    const char *field;
    size_t offset;
    int count;
  } fields[] = {
      {"algorithm", offsetof(fo_options, algorithm), FO_ALG_COUNT},
      {"executor", offsetof(fo_options, executor), FO_EXEC_COUNT},
      {"storage", offsetof(fo_options, storage), FO_STORAGE_COUNT},
      {"param_dtype", offsetof(fo_options, param_dtype), FO_DTYPE_COUNT},
      {"grad_dtype", offsetof(fo_options, grad_dtype), FO_DTYPE_COUNT},
      {"kind", offsetof(fo_options, schedule.kind), FO_SCHED_COUNT},
  };
  cr_assert_eq(sizeof(fo_algorithm), sizeof(int));
  for (size_t f = 0; f < sizeof fields / sizeof fields[0]; ++f) {
    const int bad[] = {fields[f].count, -1, 99, INT_MAX, INT_MIN};
    for (size_t b = 0; b < sizeof bad / sizeof bad[0]; ++b) {
      cenv e;
      char label[96];
      env_init(&e, FO_ALG_ADAMW);
      memcpy((unsigned char *)&e.o + fields[f].offset, &bad[b], sizeof(int));
      snprintf(label, sizeof label, "options.%s = %d", fields[f].field,
               bad[b]);
      run_create(&e, label, FO_ERR_INVALID_ARGUMENT, fields[f].field, NULL);
    }
  }
}

/* ============================================== create: hyper-parameters */

/* One hyper-parameter case: up to three field assignments on group 1 (so
 * the message should name "hparams[1]" and the field), the status create
 * must return, and the status set_hparams(group 1) must return on an
 * optimizer created from the defaults (FO_ERR_INVALID_STATE where the
 * change would switch on momentum or amsgrad; ANY_FAILURE where both that
 * and a bad value apply). */
#define ANY_FAILURE FO_STATUS_COUNT

typedef struct hp_set {
  const char *field;
  size_t offset;
  int is_int;
  double value;
} hp_set;

typedef struct hp_case {
  fo_algorithm alg;
  hp_set set[3];
  fo_status want_create;
  fo_status want_set;
} hp_case;

#define F(f, v) {#f, offsetof(fo_hparams, f), 0, (v)}
#define I(f, v) {#f, offsetof(fo_hparams, f), 1, (v)}
static const hp_case k_hp_cases[] = {
    /* lr, weight_decay, maximize: every algorithm */
#define COMMON(alg)                                      \
  {alg, {F(lr, -1e-3)}, IA, IA},                         \
      {alg, {F(lr, NAN)}, IA, IA},                       \
      {alg, {F(lr, INFINITY)}, IA, IA},                  \
      {alg, {F(lr, -INFINITY)}, IA, IA},                 \
      {alg, {F(lr, 0.0)}, OK, OK},                       \
      {alg, {F(lr, 10.0)}, OK, OK},                      \
      {alg, {F(weight_decay, -1e-2)}, IA, IA},           \
      {alg, {F(weight_decay, NAN)}, IA, IA},             \
      {alg, {F(weight_decay, INFINITY)}, IA, IA},        \
      {alg, {F(weight_decay, 0.5)}, OK, OK},             \
      {alg, {I(maximize, 2)}, IA, IA},                   \
      {alg, {I(maximize, -1)}, IA, IA},                  \
      {alg, {I(maximize, 1)}, OK, OK}
    COMMON(FO_ALG_SGD),
    COMMON(FO_ALG_ADAM),
    COMMON(FO_ALG_ADAMW),
    COMMON(FO_ALG_LION),
    /* SGD */
    {FO_ALG_SGD, {F(momentum, NAN)}, IA, IA},
    {FO_ALG_SGD, {F(momentum, -0.1)}, IA, IA},
    {FO_ALG_SGD, {F(momentum, INFINITY)}, IA, IA},
    {FO_ALG_SGD, {F(momentum, 0.9)}, OK, IS},
    {FO_ALG_SGD, {F(momentum, 1.5)}, OK, IS}, /* >= 1 allowed, as PyTorch */
    {FO_ALG_SGD, {F(dampening, -0.1)}, IA, IA},
    {FO_ALG_SGD, {F(dampening, 1.5)}, IA, IA},
    {FO_ALG_SGD, {F(dampening, NAN)}, IA, IA},
    {FO_ALG_SGD, {F(dampening, 1.0)}, OK, OK},
    {FO_ALG_SGD, {I(nesterov, 2)}, IA, IA},
    {FO_ALG_SGD, {I(nesterov, -1)}, IA, IA},
    {FO_ALG_SGD, {I(nesterov, 1)}, IA, IA}, /* momentum 0 */
    {FO_ALG_SGD, {I(nesterov, 1), F(momentum, 0.9), F(dampening, 0.1)}, IA,
     ANY_FAILURE},
    {FO_ALG_SGD, {I(nesterov, 1), F(momentum, 0.9)}, OK, IS},
    {FO_ALG_SGD, {F(beta1, NAN)}, IA, IA}, /* unused but must be finite */
    {FO_ALG_SGD, {F(eps, INFINITY)}, IA, IA},
    {FO_ALG_SGD, {F(beta2, -INFINITY)}, IA, IA},
    /* Adam / AdamW */
#define ADAMLIKE(alg)                                    \
  {alg, {F(beta1, 1.0)}, IA, IA},                        \
      {alg, {F(beta1, -0.1)}, IA, IA},                   \
      {alg, {F(beta1, NAN)}, IA, IA},                    \
      {alg, {F(beta1, 0.0)}, OK, OK},                    \
      {alg, {F(beta2, 1.0)}, IA, IA},                    \
      {alg, {F(beta2, 1.5)}, IA, IA},                    \
      {alg, {F(beta2, -0.5)}, IA, IA},                   \
      {alg, {F(beta2, NAN)}, IA, IA},                    \
      {alg, {F(beta2, 0.0)}, OK, OK},                    \
      {alg, {F(eps, 0.0)}, IA, IA},                      \
      {alg, {F(eps, -1e-8)}, IA, IA},                    \
      {alg, {F(eps, NAN)}, IA, IA},                      \
      {alg, {F(eps, INFINITY)}, IA, IA},                 \
      {alg, {F(eps, 1e-30)}, OK, OK},                    \
      {alg, {I(amsgrad, 2)}, IA, IA},                    \
      {alg, {I(amsgrad, -1)}, IA, IA},                   \
      {alg, {I(amsgrad, 1)}, OK, IS},                    \
      {alg, {F(momentum, NAN)}, IA, IA},                 \
      {alg, {F(dampening, INFINITY)}, IA, IA}
    ADAMLIKE(FO_ALG_ADAM),
    ADAMLIKE(FO_ALG_ADAMW),
    /* Lion */
    {FO_ALG_LION, {F(beta1, 1.0)}, IA, IA},
    {FO_ALG_LION, {F(beta1, -0.1)}, IA, IA},
    {FO_ALG_LION, {F(beta2, 1.0)}, IA, IA},
    {FO_ALG_LION, {F(beta2, NAN)}, IA, IA},
    {FO_ALG_LION, {F(beta1, 0.0), F(beta2, 0.0)}, OK, OK},
    {FO_ALG_LION, {F(eps, NAN)}, IA, IA},
    {FO_ALG_LION, {F(momentum, INFINITY)}, IA, IA},
};

static void hp_apply(fo_hparams *h, const hp_set *s) {
  unsigned char *p = (unsigned char *)h + s->offset;
  if (s->is_int) {
    int v = (int)s->value;
    memcpy(p, &v, sizeof v);
  } else {
    float v = (float)s->value;
    memcpy(p, &v, sizeof v);
  }
}

static void hp_label(const hp_case *c, char *buf, size_t cap) {
  int n = snprintf(buf, cap, "alg %d:", c->alg);
  for (int k = 0; k < 3 && c->set[k].field && n > 0 && (size_t)n < cap; ++k)
    n += snprintf(buf + n, cap - (size_t)n, " %s=%g", c->set[k].field,
                  c->set[k].value);
}

Test(api_hparams, create_table) {
  for (size_t i = 0; i < sizeof k_hp_cases / sizeof k_hp_cases[0]; ++i) {
    const hp_case *c = &k_hp_cases[i];
    cenv e;
    char label[160];
    env_init(&e, c->alg);
    for (int k = 0; k < 3 && c->set[k].field; ++k) hp_apply(&e.hp[1], &c->set[k]);
    hp_label(c, label, sizeof label);
    /* The message names the group; the last assigned field is the one a
     * combination error is most naturally reported on, so only the group is
     * required for combinations. */
    run_create(&e, label, c->want_create,
               c->set[1].field ? "hparams[1]" : c->set[0].field, NULL);
    if (c->want_create != FO_SUCCESS && c->set[1].field == NULL) {
      const char *m = fo_last_error();
      cr_expect(strstr(m, "hparams[1]") != NULL,
                "create [%s]: message \"%s\" does not name hparams[1]", label,
                m);
    }
  }
}

Test(api_hparams, set_hparams_table) {
  for (size_t i = 0; i < sizeof k_hp_cases / sizeof k_hp_cases[0]; ++i) {
    const hp_case *c = &k_hp_cases[i];
    cenv e;
    char label[160];
    fo_optimizer *opt = make_opt(&e, c->alg);
    fo_hparams h = e.hp[1], before, after;
    for (int k = 0; k < 3 && c->set[k].field; ++k) hp_apply(&h, &c->set[k]);
    hp_label(c, label, sizeof label);
    cr_assert_eq(fo_optimizer_get_hparams(opt, 1, &before), FO_SUCCESS);
    cr_expect(memcmp(&before, &e.hp[1], sizeof before) == 0,
              "get_hparams does not return what create got");
    prime_error("fo_optimizer_set_hparams");
    fo_status st = fo_optimizer_set_hparams(opt, 1, &h);
    if (c->want_set == ANY_FAILURE)
      cr_expect(st == FO_ERR_INVALID_ARGUMENT || st == FO_ERR_INVALID_STATE,
                "set_hparams [%s]: returned %s, want a failure", label,
                st_name(st));
    else
      cr_expect(st == c->want_set,
                "set_hparams [%s]: returned %s (%d), want %s (%d); \"%s\"",
                label, st_name(st), (int)st, st_name(c->want_set),
                (int)c->want_set, fo_last_error());
    cr_assert_eq(fo_optimizer_get_hparams(opt, 1, &after), FO_SUCCESS);
    if (st == FO_SUCCESS) {
      cr_expect(memcmp(&after, &h, sizeof h) == 0,
                "set_hparams [%s]: succeeded but get_hparams differs", label);
    } else {
      cr_expect(memcmp(&after, &before, sizeof h) == 0,
                "set_hparams [%s]: failed but changed the hyper-parameters",
                label);
      cr_expect(strstr(fo_last_error(), "fo_optimizer_set_hparams") != NULL,
                "set_hparams [%s]: message \"%s\"", label, fo_last_error());
      if (c->set[1].field == NULL && st != FO_ERR_INVALID_STATE)
        cr_expect(contains_ci(fo_last_error(), c->set[0].field),
                  "set_hparams [%s]: message \"%s\" does not name %s", label,
                  fo_last_error(), c->set[0].field);
    }
    /* group 0 untouched either way */
    cr_assert_eq(fo_optimizer_get_hparams(opt, 0, &after), FO_SUCCESS);
    cr_expect(memcmp(&after, &e.hp[0], sizeof after) == 0,
              "set_hparams [%s]: group 0 changed", label);
    fo_optimizer_destroy(opt);
  }
}

/* set_hparams that stays inside the state the optimizer has. */
Test(api_hparams, set_hparams_within_state) {
  cenv e;
  env_init(&e, FO_ALG_SGD);
  e.hp[0].momentum = e.hp[1].momentum = 0.9f;
  fo_optimizer *opt = NULL;
  cr_assert_eq(run_create(&e, "SGD momentum", FO_SUCCESS, NULL, &opt),
               FO_SUCCESS);
  fo_hparams h = e.hp[1];
  h.nesterov = 1;
  CHECK(FO_SUCCESS, NULL, fo_optimizer_set_hparams, opt, 1, &h);
  h.nesterov = 0;
  h.momentum = 0.0f; /* switching momentum off is fine */
  CHECK(FO_SUCCESS, NULL, fo_optimizer_set_hparams, opt, 1, &h);
  fo_optimizer_destroy(opt);

  env_init(&e, FO_ALG_ADAMW);
  e.hp[0].amsgrad = e.hp[1].amsgrad = 1;
  cr_assert_eq(run_create(&e, "AdamW amsgrad", FO_SUCCESS, NULL, &opt),
               FO_SUCCESS);
  h = e.hp[1];
  h.amsgrad = 0;
  CHECK(FO_SUCCESS, NULL, fo_optimizer_set_hparams, opt, 1, &h);
  h.amsgrad = 1; /* and back on: the state exists */
  CHECK(FO_SUCCESS, NULL, fo_optimizer_set_hparams, opt, 1, &h);
  fo_optimizer_destroy(opt);
}

Test(api_hparams, set_get_hparams_bad_calls) {
  cenv e;
  fo_optimizer *opt = make_opt(&e, FO_ALG_ADAMW);
  fo_hparams h = e.hp[0], out, sent;
  memset(&sent, 0x5A, sizeof sent);
  CHECK(FO_ERR_NULL_POINTER, "opt", fo_optimizer_set_hparams, NULL, 0, &h);
  CHECK(FO_ERR_NULL_POINTER, "hparams", fo_optimizer_set_hparams, opt, 0,
        NULL);
  CHECK(FO_ERR_INVALID_ARGUMENT, "group", fo_optimizer_set_hparams, opt, -1,
        &h);
  CHECK(FO_ERR_INVALID_ARGUMENT, "group", fo_optimizer_set_hparams, opt, 2,
        &h);
  CHECK(FO_ERR_INVALID_ARGUMENT, "group", fo_optimizer_set_hparams, opt,
        FO_MAX_GROUPS, &h);
  CHECK(FO_ERR_INVALID_ARGUMENT, "group", fo_optimizer_set_hparams, opt,
        INT_MIN, &h);
  const int bad_groups[] = {-1, 2, FO_MAX_GROUPS, INT_MAX};
  for (size_t i = 0; i < sizeof bad_groups / sizeof bad_groups[0]; ++i) {
    out = sent;
    CHECK(FO_ERR_INVALID_ARGUMENT, "group", fo_optimizer_get_hparams, opt,
          bad_groups[i], &out);
    cr_expect(memcmp(&out, &sent, sizeof out) == 0,
              "get_hparams(group %d) failed but wrote *out", bad_groups[i]);
  }
  CHECK(FO_ERR_NULL_POINTER, "out", fo_optimizer_get_hparams, opt, 0, NULL);
  CHECK(FO_ERR_NULL_POINTER, "opt", fo_optimizer_get_hparams, NULL, 0, &out);
  fo_optimizer_destroy(opt);
}

/* ======================================= optimizer calls: NULL and modes */

Test(api_optimizer, null_pointers) {
  cenv e;
  fo_optimizer *opt = make_opt(&e, FO_ALG_ADAMW);
  int64_t i64 = SENT_I64;
  float f = SENT_F32;
  void *vp = SENT_PTR;
  float *fp = (float *)SENT_PTR;
  size_t sz = SENT_SIZE;
  fo_options o;

  CHECK(FO_SUCCESS, NULL, fo_optimizer_destroy, NULL);
  CHECK(FO_ERR_NULL_POINTER, "opt", fo_optimizer_step, NULL, NULL);
  CHECK(FO_ERR_NULL_POINTER, "opt", fo_optimizer_zero_grad, NULL, NULL);
  CHECK(FO_ERR_NULL_POINTER, "opt", fo_optimizer_sync_master, NULL, NULL);
  CHECK(FO_ERR_NULL_POINTER, "opt", fo_optimizer_get_step, NULL, &i64);
  CHECK(FO_ERR_NULL_POINTER, "out", fo_optimizer_get_step, opt, NULL);
  CHECK(FO_ERR_NULL_POINTER, "opt", fo_optimizer_set_step, NULL, 1);
  CHECK(FO_ERR_NULL_POINTER, "opt", fo_optimizer_set_lr, NULL, 0, 0.1f);
  CHECK(FO_ERR_NULL_POINTER, "opt", fo_optimizer_get_lr, NULL, 0, &f);
  CHECK(FO_ERR_NULL_POINTER, "out", fo_optimizer_get_lr, opt, 0, NULL);
  CHECK(FO_ERR_NULL_POINTER, "opt", fo_optimizer_get_options, NULL, &o);
  CHECK(FO_ERR_NULL_POINTER, "out", fo_optimizer_get_options, opt, NULL);
  CHECK(FO_ERR_NULL_POINTER, "opt", fo_optimizer_num_tensors, NULL, &i64);
  CHECK(FO_ERR_NULL_POINTER, "out", fo_optimizer_num_tensors, opt, NULL);
  CHECK(FO_ERR_NULL_POINTER, "opt", fo_optimizer_param_ptr, NULL, 0, &vp);
  CHECK(FO_ERR_NULL_POINTER, "out", fo_optimizer_param_ptr, opt, 0, NULL);
  CHECK(FO_ERR_NULL_POINTER, "opt", fo_optimizer_grad_ptr, NULL, 0, &vp);
  CHECK(FO_ERR_NULL_POINTER, "out", fo_optimizer_grad_ptr, opt, 0, NULL);
  CHECK(FO_ERR_NULL_POINTER, "opt", fo_optimizer_state_ptr, NULL, 0,
        FO_ROLE_EXP_AVG, &fp);
  CHECK(FO_ERR_NULL_POINTER, "out", fo_optimizer_state_ptr, opt, 0,
        FO_ROLE_EXP_AVG, NULL);
  CHECK(FO_ERR_NULL_POINTER, "opt", fo_optimizer_arena, NULL, FO_ROLE_PARAM,
        &vp, &sz);
  CHECK(FO_ERR_NULL_POINTER, "base", fo_optimizer_arena, opt, FO_ROLE_PARAM,
        NULL, &sz);
  CHECK(FO_ERR_NULL_POINTER, "bytes", fo_optimizer_arena, opt, FO_ROLE_PARAM,
        &vp, NULL);
  fo_step_info info;
  CHECK(FO_ERR_NULL_POINTER, "opt", fo_optimizer_get_info, NULL, &info);
  CHECK(FO_ERR_NULL_POINTER, "out", fo_optimizer_get_info, opt, NULL);
  CHECK(FO_ERR_NULL_POINTER, "opt", fo_optimizer_loss_scale_ptr, NULL, &fp);
  CHECK(FO_ERR_NULL_POINTER, "out", fo_optimizer_loss_scale_ptr, opt, NULL);
  CHECK(FO_ERR_NULL_POINTER, "count", fo_cuda_device_count, NULL);
  cr_expect(i64 == SENT_I64 && f == SENT_F32 && vp == SENT_PTR &&
                fp == (float *)SENT_PTR && sz == SENT_SIZE,
            "a failing call wrote an out-parameter");
  fo_optimizer_destroy(opt);
}

Test(api_optimizer, stream_must_be_null_on_cpu) {
  cenv e;
  fo_optimizer *opt = make_opt(&e, FO_ALG_ADAMW);
  unsigned char pool0[sizeof e.pool];
  for (int k = 0; k < 2; ++k) /* grads 1.0: a step would change params */
    for (int i = 0; i < SLOT_ELEMS; ++i) ((float *)e.t[k].grad)[i] = 1.0f;
  memcpy(pool0, e.pool, sizeof pool0);
  float *m0 = NULL;
  cr_assert_eq(fo_optimizer_state_ptr(opt, 0, FO_ROLE_EXP_AVG, &m0),
               FO_SUCCESS);

  CHECK(FO_ERR_INVALID_ARGUMENT, "stream", fo_optimizer_step, opt,
        SOME_STREAM);
  CHECK(FO_ERR_INVALID_ARGUMENT, "stream", fo_optimizer_zero_grad, opt,
        SOME_STREAM);
  CHECK(FO_ERR_INVALID_ARGUMENT, "stream", fo_optimizer_sync_master, opt,
        SOME_STREAM);
  cr_expect(memcmp(pool0, e.pool, sizeof pool0) == 0,
            "a refused step/zero_grad changed params or grads");
  for (int i = 0; i < SLOT_ELEMS; ++i)
    cr_expect(m0[i] == 0.0f, "a refused step changed exp_avg[%d] = %g", i,
              m0[i]);
  int64_t step = SENT_I64;
  cr_expect_eq(fo_optimizer_get_step(opt, &step), FO_SUCCESS);
  cr_expect_eq(step, 0, "a refused step counted: step = %lld",
               (long long)step);
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
  cr_expect_eq(s, 5, "failing set_step changed the step to %lld",
               (long long)s);
  CHECK(FO_SUCCESS, NULL, fo_optimizer_step, opt, NULL);
  cr_expect_eq(fo_optimizer_get_step(opt, &s), FO_SUCCESS);
  cr_expect_eq(s, 6);
  CHECK(FO_SUCCESS, NULL, fo_optimizer_set_step, opt, 0);
  cr_expect_eq(fo_optimizer_get_step(opt, &s), FO_SUCCESS);
  cr_expect_eq(s, 0);
  fo_optimizer_destroy(opt);
}

Test(api_optimizer, learning_rate) {
  cenv e;
  fo_optimizer *opt = make_opt(&e, FO_ALG_ADAMW);
  float lr0 = SENT_F32, lr1 = SENT_F32, f = SENT_F32;
  CHECK(FO_SUCCESS, NULL, fo_optimizer_set_lr, opt, 0, 0.25f);
  CHECK(FO_SUCCESS, NULL, fo_optimizer_set_lr, opt, 1, 0.5f);
  const float bad_lr[] = {-1e-3f, NAN, INFINITY, -INFINITY};
  for (size_t i = 0; i < sizeof bad_lr / sizeof bad_lr[0]; ++i) {
    CHECK(FO_ERR_INVALID_ARGUMENT, "lr", fo_optimizer_set_lr, opt, 0,
          bad_lr[i]);
    CHECK(FO_ERR_INVALID_ARGUMENT, "lr", fo_optimizer_set_lr, opt, -1,
          bad_lr[i]); /* all groups: none may change */
  }
  const int bad_group[] = {2, -2, FO_MAX_GROUPS, INT_MAX, INT_MIN};
  for (size_t i = 0; i < sizeof bad_group / sizeof bad_group[0]; ++i) {
    CHECK(FO_ERR_INVALID_ARGUMENT, "group", fo_optimizer_set_lr, opt,
          bad_group[i], 1.0f);
    f = SENT_F32;
    CHECK(FO_ERR_INVALID_ARGUMENT, "group", fo_optimizer_get_lr, opt,
          bad_group[i], &f);
    cr_expect(f == SENT_F32, "get_lr(group %d) failed but wrote *out",
              bad_group[i]);
  }
  f = SENT_F32;
  CHECK(FO_ERR_INVALID_ARGUMENT, "group", fo_optimizer_get_lr, opt, -1, &f);
  cr_expect(f == SENT_F32, "get_lr(-1) failed but wrote *out");
  cr_expect_eq(fo_optimizer_get_lr(opt, 0, &lr0), FO_SUCCESS);
  cr_expect_eq(fo_optimizer_get_lr(opt, 1, &lr1), FO_SUCCESS);
  cr_expect(lr0 == 0.25f && lr1 == 0.5f,
            "failing set_lr changed the lr: %g %g", lr0, lr1);
  fo_hparams h;
  cr_expect_eq(fo_optimizer_get_hparams(opt, 1, &h), FO_SUCCESS);
  cr_expect(h.lr == 0.5f, "get_hparams.lr %g disagrees with set_lr", h.lr);
  CHECK(FO_SUCCESS, NULL, fo_optimizer_set_lr, opt, -1, 0.125f);
  cr_expect_eq(fo_optimizer_get_lr(opt, 0, &lr0), FO_SUCCESS);
  cr_expect_eq(fo_optimizer_get_lr(opt, 1, &lr1), FO_SUCCESS);
  cr_expect(lr0 == 0.125f && lr1 == 0.125f, "set_lr(-1): %g %g", lr0, lr1);
  CHECK(FO_SUCCESS, NULL, fo_optimizer_set_lr, opt, 0, 0.0f);
  fo_optimizer_destroy(opt);
}

Test(api_optimizer, index_out_of_range) {
  cenv e;
  fo_optimizer *opt = make_opt(&e, FO_ALG_ADAMW);
  const int64_t bad[] = {-1, 2, INT64_MAX, INT64_MIN};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; ++i) {
    void *vp = SENT_PTR;
    float *fp = (float *)SENT_PTR;
    CHECK(FO_ERR_INVALID_ARGUMENT, "index", fo_optimizer_param_ptr, opt,
          bad[i], &vp);
    CHECK(FO_ERR_INVALID_ARGUMENT, "index", fo_optimizer_grad_ptr, opt,
          bad[i], &vp);
    CHECK(FO_ERR_INVALID_ARGUMENT, "index", fo_optimizer_state_ptr, opt,
          bad[i], FO_ROLE_EXP_AVG, &fp);
    cr_expect(vp == SENT_PTR && fp == (float *)SENT_PTR,
              "index %lld: a failing call wrote *out", (long long)bad[i]);
  }
  fo_optimizer_destroy(opt);
}

Test(api_optimizer, loss_scale_ptr_and_info) {
  cenv e;
  fo_optimizer *opt = make_opt(&e, FO_ALG_ADAMW);
  /* scaling off: a scale that stays 1, for one loop that serves both */
  float *fp = (float *)SENT_PTR;
  CHECK(FO_SUCCESS, NULL, fo_optimizer_loss_scale_ptr, opt, &fp);
  cr_assert(fp != (float *)SENT_PTR && fp != NULL, "loss_scale_ptr gave no pointer");
  cr_expect(*fp == 1.0f, "scale without scaling %g", *fp);
  fo_step_info info;
  memset(&info, 0x5A, sizeof info);
  CHECK(FO_SUCCESS, NULL, fo_optimizer_get_info, opt, &info);
  cr_expect(info.step == 0 && info.skipped_steps == 0 &&
                info.last_step_skipped == 0 && info.loss_scale == 1.0f,
            "fresh info: step %lld skipped %lld last %d scale %g",
            (long long)info.step, (long long)info.skipped_steps,
            info.last_step_skipped, info.loss_scale);
  for (int s = 0; s < 3; s++) CHECK(FO_SUCCESS, NULL, fo_optimizer_step, opt, NULL);
  cr_expect(*fp == 1.0f, "scale without scaling after 3 steps %g", *fp);
  fo_optimizer_destroy(opt);

  env_init(&e, FO_ALG_ADAMW);
  e.o.loss_scaler.enabled = 1;
  cr_assert_eq(run_create(&e, "loss scaler", FO_SUCCESS, NULL, &opt),
               FO_SUCCESS);
  fp = NULL;
  CHECK(FO_SUCCESS, NULL, fo_optimizer_loss_scale_ptr, opt, &fp);
  cr_expect(fp != NULL && *fp == 65536.0f, "initial scale %g",
            fp ? *fp : -1.0);
  CHECK(FO_SUCCESS, NULL, fo_optimizer_get_info, opt, &info);
  cr_expect(info.loss_scale == 65536.0f, "info.loss_scale %g",
            info.loss_scale);
  fo_optimizer_destroy(opt);
}

/* state_ptr: which roles each configuration keeps. */
typedef struct state_case {
  const char *name;
  fo_algorithm alg;
  mutator mut;
  int role;
  fo_status want;
} state_case;

MUT(m_amsgrad, e->hp[0].amsgrad = e->hp[1].amsgrad = 1)
MUT(m_momentum, e->hp[0].momentum = e->hp[1].momentum = 0.9f)

static const state_case k_state_cases[] = {
    {"AdamW f32", FO_ALG_ADAMW, m_none, FO_ROLE_EXP_AVG, OK},
    {"AdamW f32", FO_ALG_ADAMW, m_none, FO_ROLE_EXP_AVG_SQ, OK},
    {"AdamW f32", FO_ALG_ADAMW, m_none, FO_ROLE_MAX_EXP_AVG_SQ, IS},
    {"AdamW f32", FO_ALG_ADAMW, m_none, FO_ROLE_MASTER, IS},
    {"AdamW f32 amsgrad", FO_ALG_ADAMW, m_amsgrad, FO_ROLE_MAX_EXP_AVG_SQ, OK},
    {"Adam amsgrad", FO_ALG_ADAM, m_amsgrad, FO_ROLE_MAX_EXP_AVG_SQ, OK},
    {"Adam bf16 master", FO_ALG_ADAM, m_bf16, FO_ROLE_MASTER, OK},
    {"Adam f16 master", FO_ALG_ADAM, m_f16, FO_ROLE_MASTER, OK},
    {"Adam bf16 no master", FO_ALG_ADAM, m_bf16_nomaster, FO_ROLE_MASTER, IS},
    {"SGD", FO_ALG_SGD, m_none, FO_ROLE_EXP_AVG, IS},
    {"SGD", FO_ALG_SGD, m_none, FO_ROLE_EXP_AVG_SQ, IS},
    {"SGD", FO_ALG_SGD, m_none, FO_ROLE_MAX_EXP_AVG_SQ, IS},
    {"SGD", FO_ALG_SGD, m_none, FO_ROLE_MASTER, IS},
    {"SGD momentum", FO_ALG_SGD, m_momentum, FO_ROLE_EXP_AVG, OK},
    {"SGD momentum", FO_ALG_SGD, m_momentum, FO_ROLE_EXP_AVG_SQ, IS},
    {"Lion", FO_ALG_LION, m_none, FO_ROLE_EXP_AVG, OK},
    {"Lion", FO_ALG_LION, m_none, FO_ROLE_EXP_AVG_SQ, IS},
    {"Lion", FO_ALG_LION, m_none, FO_ROLE_MAX_EXP_AVG_SQ, IS},
    /* not a state role, or not a role at all */
    {"AdamW param role", FO_ALG_ADAMW, m_none, FO_ROLE_PARAM, IA},
    {"AdamW grad role", FO_ALG_ADAMW, m_none, FO_ROLE_GRAD, IA},
    {"AdamW role COUNT", FO_ALG_ADAMW, m_none, FO_ROLE_COUNT, IA},
    {"AdamW role -1", FO_ALG_ADAMW, m_none, -1, IA},
    {"AdamW role 99", FO_ALG_ADAMW, m_none, 99, IA},
};

Test(api_optimizer, state_ptr_roles) {
  for (size_t i = 0; i < sizeof k_state_cases / sizeof k_state_cases[0];
       ++i) {
    const state_case *c = &k_state_cases[i];
    cenv e;
    fo_optimizer *opt = NULL;
    char label[96];
    env_init(&e, c->alg);
    c->mut(&e);
    snprintf(label, sizeof label, "%s, role %d", c->name, c->role);
    cr_assert_eq(run_create(&e, label, FO_SUCCESS, NULL, &opt), FO_SUCCESS);
    float *fp = (float *)SENT_PTR;
    prime_error("fo_optimizer_state_ptr");
    fo_status st = fo_optimizer_state_ptr(opt, 0, (fo_role)c->role, &fp);
    cr_expect(st == c->want, "state_ptr [%s]: %s, want %s; \"%s\"", label,
              st_name(st), st_name(c->want), fo_last_error());
    if (st == FO_SUCCESS) {
      cr_expect(fp != NULL && fp != (float *)SENT_PTR,
                "state_ptr [%s]: no pointer", label);
    } else {
      cr_expect(fp == (float *)SENT_PTR, "state_ptr [%s]: wrote *out", label);
      cr_expect(strstr(fo_last_error(), "fo_optimizer_state_ptr") != NULL,
                "state_ptr [%s]: \"%s\"", label, fo_last_error());
    }
    if (st == FO_SUCCESS && c->role == FO_ROLE_MASTER) {
      /* master weights start as the widened parameters */
      float want[SLOT_ELEMS];
      cr_assert_eq(fo_convert_to_f32(e.o.param_dtype, e.t[0].param, want,
                                     SLOT_ELEMS),
                   FO_SUCCESS);
      for (int k = 0; k < SLOT_ELEMS; ++k)
        cr_expect(f2u(fp[k]) == f2u(want[k]),
                  "state_ptr [%s]: master[%d] = %g, param widened = %g",
                  label, k, fp[k], want[k]);
    } else if (st == FO_SUCCESS) {
      for (int k = 0; k < SLOT_ELEMS; ++k)
        cr_expect(fp[k] == 0.0f, "state_ptr [%s]: [%d] = %g, not zeroed",
                  label, k, fp[k]);
    }
    fo_optimizer_destroy(opt);
  }
}

Test(api_optimizer, arena_calls) {
  /* external storage: every valid role is the wrong mode */
  cenv e;
  fo_optimizer *opt = make_opt(&e, FO_ALG_ADAMW);
  for (int r = 0; r < FO_ROLE_COUNT; ++r) {
    void *base = SENT_PTR;
    size_t bytes = SENT_SIZE;
    CHECK(FO_ERR_INVALID_STATE, NULL, fo_optimizer_arena, opt, (fo_role)r,
          &base, &bytes);
    cr_expect(base == SENT_PTR && bytes == SENT_SIZE,
              "arena(external, role %d) wrote outputs", r);
  }
  void *vp = NULL;
  cr_expect_eq(fo_optimizer_param_ptr(opt, 1, &vp), FO_SUCCESS);
  cr_expect(vp == e.t[1].param, "external param_ptr is not the caller's");
  cr_expect_eq(fo_optimizer_grad_ptr(opt, 0, &vp), FO_SUCCESS);
  cr_expect(vp == e.t[0].grad, "external grad_ptr is not the caller's");
  fo_optimizer_destroy(opt);

  /* arena storage */
  env_init(&e, FO_ALG_ADAMW);
  set_arena(&e);
  e.t[1].numel = 5; /* not a multiple of the alignment */
  e.nt = 3;
  cr_assert_eq(run_create(&e, "arena", FO_SUCCESS, NULL, &opt), FO_SUCCESS);
  static const struct {
    int role;
    fo_status want;
    size_t elem;
  } roles[] = {
      {FO_ROLE_PARAM, OK, 4},           {FO_ROLE_GRAD, OK, 4},
      {FO_ROLE_MASTER, IS, 4},          {FO_ROLE_EXP_AVG, OK, 4},
      {FO_ROLE_EXP_AVG_SQ, OK, 4},      {FO_ROLE_MAX_EXP_AVG_SQ, IS, 4},
      {FO_ROLE_COUNT, IA, 0},           {-1, IA, 0},
      {99, IA, 0},
  };
  for (size_t i = 0; i < sizeof roles / sizeof roles[0]; ++i) {
    void *base = SENT_PTR;
    size_t bytes = SENT_SIZE;
    prime_error("fo_optimizer_arena");
    fo_status st =
        fo_optimizer_arena(opt, (fo_role)roles[i].role, &base, &bytes);
    cr_expect(st == roles[i].want, "arena(role %d): %s, want %s; \"%s\"",
              roles[i].role, st_name(st), st_name(roles[i].want),
              fo_last_error());
    if (st != FO_SUCCESS) {
      cr_expect(base == SENT_PTR && bytes == SENT_SIZE,
                "arena(role %d) failed but wrote outputs", roles[i].role);
      continue;
    }
    cr_expect(base != NULL && bytes >= (16 + 5 + 16) * roles[i].elem,
              "arena(role %d): base %p bytes %zu", roles[i].role, base, bytes);
    if (roles[i].role > FO_ROLE_GRAD) continue;
    for (int64_t k = 0; k < 3; ++k) {
      void *p = NULL;
      fo_status s2 = roles[i].role == FO_ROLE_PARAM
                         ? fo_optimizer_param_ptr(opt, k, &p)
                         : fo_optimizer_grad_ptr(opt, k, &p);
      cr_expect_eq(s2, FO_SUCCESS);
      unsigned char *pc = p, *bc = base;
      cr_expect(pc >= bc && pc + e.t[k].numel * 4 <= bc + bytes,
                "role %d tensor %lld: %p outside the arena", roles[i].role,
                (long long)k, p);
      cr_expect(((uintptr_t)p & 255u) == 0,
                "role %d tensor %lld: %p not 256-byte aligned", roles[i].role,
                (long long)k, p);
      for (int64_t j = 0; j < e.t[k].numel; ++j)
        cr_expect(((float *)p)[j] == 0.0f && !signbit(((float *)p)[j]),
                  "role %d tensor %lld [%lld] not zero-filled", roles[i].role,
                  (long long)k, (long long)j);
    }
  }
  fo_optimizer_destroy(opt);
}

/* ============================================================ CUDA paths */

Test(api_cuda, device_count) {
  int n = -7;
  prime_error("fo_cuda_device_count");
  fo_status st = fo_cuda_device_count(&n);
  if (st == FO_SUCCESS) {
    cr_expect(n >= 1, "FO_SUCCESS with %d devices", n);
    return;
  }
  const char *m = fo_last_error();
  cr_expect(st == FO_ERR_NO_DEVICE, "fo_cuda_device_count: %s; \"%s\"",
            st_name(st), m);
  cr_expect(n == -7, "failed but set *count = %d", n);
  cr_expect(contains_ci(m, "driver") || contains_ci(m, "device"),
            "reason \"%s\" names neither driver nor device", m);
  cr_expect(strstr(m, "fo_cuda_device_count") != NULL, "\"%s\"", m);
}

Test(api_cuda, create_without_gpu) {
  int n = 0;
  if (fo_cuda_device_count(&n) == FO_SUCCESS) {
    fprintf(stderr, "skipped: %d CUDA device(s) present, so FO_EXEC_CUDA "
                    "create cannot fail with FO_ERR_NO_DEVICE here\n", n);
    cr_skip_test("%d CUDA device(s) present", n);
  }
  cenv e;
  env_init(&e, FO_ALG_ADAMW);
  set_arena(&e); /* no pointers needed */
  e.o.executor = FO_EXEC_CUDA;
  run_create(&e, "FO_EXEC_CUDA without a GPU", FO_ERR_NO_DEVICE, NULL, NULL);
  const char *m = fo_last_error();
  cr_expect(contains_ci(m, "driver") || contains_ci(m, "device"),
            "reason \"%s\" names neither driver nor device", m);
#if !FO_TEST_CUDA_BUILT
  cr_expect(strstr(m, "built without CUDA") && strstr(m, "FO_ENABLE_CUDA=OFF"),
            "a build without CUDA must say so: \"%s\"", m);
#endif
}

/* A build without CUDA (FO_ENABLE_CUDA=OFF, docs/install.md): every CUDA
 * and NCCL entry point checks its arguments as usual, then fails with
 * FO_ERR_NO_DEVICE (NCCL's id: FO_ERR_UNSUPPORTED) and says the build has
 * no CUDA; a stream is refused; the CPU executor works. */
Test(api_cuda, build_without_cuda_says_so) {
#if FO_TEST_CUDA_BUILT
  cr_skip_test("this build has CUDA (FO_ENABLE_CUDA=ON)");
#else
  int n = -3;
  cr_expect_eq(fo_cuda_device_count(&n), FO_ERR_NO_DEVICE);
  cr_expect_eq(n, -3, "failed but set *count = %d", n);
  cr_expect(strstr(fo_last_error(), "built without CUDA") != NULL, "\"%s\"", fo_last_error());
  fo_nccl_id id;
  memset(&id, 0x5a, sizeof id);
  fo_comm *c = (fo_comm *)&n;
  cr_expect_eq(fo_comm_init_nccl(&c, &id, 0, 1, 0), FO_ERR_NO_DEVICE);
  cr_expect(c == (fo_comm *)&n, "a failed init set *out");
  cr_expect(strstr(fo_last_error(), "fo_comm_init_nccl") && strstr(fo_last_error(), "without CUDA"),
            "\"%s\"", fo_last_error());
  cr_expect_eq(fo_comm_init_nccl(&c, &id, 2, 1, 0), FO_ERR_INVALID_ARGUMENT);
  cr_expect_eq(fo_nccl_get_id(&id), FO_ERR_UNSUPPORTED);
  cr_expect(strstr(fo_last_error(), "without NCCL") != NULL, "\"%s\"", fo_last_error());
  cr_expect_eq(fo_comm_wrap_nccl(&c, (fo_nccl_comm_t)&id), FO_ERR_UNSUPPORTED);
  /* the CPU executor: a stream is not a CUDA stream here either */
  cenv e;
  env_init(&e, FO_ALG_ADAMW);
  set_arena(&e);
  fo_optimizer *opt = NULL;
  cr_assert_eq(fo_optimizer_create(&opt, &e.o, e.hp, e.ng, e.t, e.nt), FO_SUCCESS, "%s",
               fo_last_error());
  cr_expect_eq(fo_optimizer_step(opt, (fo_stream_t)&n), FO_ERR_INVALID_ARGUMENT);
  fo_optimizer_destroy(opt);
#endif
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
  cr_expect(info.step == 1 && info.skipped_steps == 0 &&
                info.last_step_skipped == 0 && info.loss_scale == 1.0f &&
                info.grad_coef == 1.0f && info.lr_factor == 1.0f,
            "info after one step: step %lld skipped %lld last %d scale %g "
            "coef %g lr_factor %g",
            (long long)info.step, (long long)info.skipped_steps,
            info.last_step_skipped, info.loss_scale, info.grad_coef,
            info.lr_factor);

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
                "tensor %d [%d]: p = %.9g, want %.9g (p0 %g, g %g)", k, i,
                p[i], want, p0[k][i], g);
    }
  }
  float *m = NULL;
  cr_expect_eq(fo_optimizer_state_ptr(opt, 1, FO_ROLE_EXP_AVG, &m),
               FO_SUCCESS);
  if (m)
    for (int i = 0; i < SLOT_ELEMS; ++i)
      cr_expect(fabsf(m[i] - 0.1f * g0[1][i]) <= 1e-6f * (1 + fabsf(g0[1][i])),
                "exp_avg[%d] = %g, want %g", i, m[i], 0.1f * g0[1][i]);

  CHECK(FO_SUCCESS, NULL, fo_optimizer_sync_master, opt, NULL); /* no-op */
  CHECK(FO_SUCCESS, NULL, fo_optimizer_zero_grad, opt, NULL);
  for (int k = 0; k < 2; ++k)
    for (int i = 0; i < SLOT_ELEMS; ++i)
      cr_expect(((const float *)e.t[k].grad)[i] == 0.0f,
                "zero_grad left grad %d [%d]", k, i);
  CHECK(FO_SUCCESS, NULL, fo_optimizer_destroy, opt);
}

/* ============================================================= conversion */

/* f32 -> f16, each expected pattern derived by hand (sign | exponent+15 <<
 * 10 | 10-bit fraction; ties to even). */
static const struct {
  uint32_t f32;
  uint16_t f16;
  const char *why;
} k_to_f16[] = {
    {0x00000000u, 0x0000u, "+0"},
    {0x80000000u, 0x8000u, "-0 keeps its sign"},
    {0x3F800000u, 0x3C00u, "1.0: exp 0 -> 15<<10"},
    {0xC0000000u, 0xC000u, "-2.0: sign, exp 1 -> 16<<10"},
    {0x3F000000u, 0x3800u, "0.5: exp -1 -> 14<<10"},
    {0x3DCCCCCDu, 0x2E66u, "0.1f: exp -4 -> 11<<10; frac 0x4CCCCD>>13 = "
                           "0x266, rest 0x0CCD < 0x1000 rounds down"},
    {0x477FE000u, 0x7BFFu, "65504 = (2-2^-10)*2^15: largest finite"},
    {0x477FEF00u, 0x7BFFu, "65519: below the tie 65520"},
    {0x477FF000u, 0x7C00u, "65520: tie 65504 (odd 0x3FF) / 65536 -> even, "
                           "which is inf"},
    {0xC77FF000u, 0xFC00u, "-65520 -> -inf"},
    {0x49742400u, 0x7C00u, "1e6 overflows"},
    {0x7F7FFFFFu, 0x7C00u, "FLT_MAX overflows"},
    {0x7F800000u, 0x7C00u, "+inf"},
    {0xFF800000u, 0xFC00u, "-inf"},
    {0x38800000u, 0x0400u, "2^-14: smallest normal"},
    {0x387FC000u, 0x03FFu, "1023*2^-24 = (1+511/512)*2^-15: exp 112, frac "
                           "511<<14: largest subnormal"},
    {0x387FD000u, 0x03FFu, "1023.25*2^-24: below the tie"},
    {0x387FE000u, 0x0400u, "1023.5*2^-24 (frac 1023<<13): tie 0x3FF (odd) "
                           "/ 0x400 -> 0x400"},
    {0x33800000u, 0x0001u, "2^-24: smallest subnormal"},
    {0xB3800000u, 0x8001u, "-2^-24"},
    {0x33000000u, 0x0000u, "2^-25: tie 0 / 2^-24 -> even 0"},
    {0xB3000000u, 0x8000u, "-2^-25 -> -0"},
    {0x33000001u, 0x0001u, "just above 2^-25 rounds up"},
    {0x33C00000u, 0x0002u, "1.5*2^-24: tie 1 / 2 -> even 2"},
    {0x33400000u, 0x0001u, "0.75*2^-24: above the tie at 0.5 -> 1"},
    {0x33A00000u, 0x0001u, "1.25*2^-24: below tie -> 1"},
    {0x00000001u, 0x0000u, "fp32 subnormal underflows to +0"},
    {0x80000001u, 0x8000u, "negative fp32 subnormal to -0"},
    {0x3F801000u, 0x3C00u, "1+2^-11: tie 0x3C00 (even) / 0x3C01"},
    {0x3F801001u, 0x3C01u, "just above 1+2^-11 rounds up"},
    {0x3F803000u, 0x3C02u, "1+3*2^-11: tie 0x3C01 (odd) / 0x3C02 -> 0x3C02"},
    {0x44FFF000u, 0x6800u, "2047.5: tie 2047 (0x67FF, odd) / 2048 -> carry "
                           "into the exponent, 0x6800"},
    {0x44FFE000u, 0x67FFu, "2047: exact"},
};

/* f32 -> bf16: the upper 16 bits, rounded to nearest even on the lower 16
 * (each pattern by hand: lower > 0x8000 up, < down, == tie to even). */
static const struct {
  uint32_t f32;
  uint16_t bf16;
  const char *why;
} k_to_bf16[] = {
    {0x00000000u, 0x0000u, "+0"},
    {0x80000000u, 0x8000u, "-0"},
    {0x3F800000u, 0x3F80u, "1.0"},
    {0x3F808000u, 0x3F80u, "1+2^-8: tie, 0x3F80 even"},
    {0x3F818000u, 0x3F82u, "1+3*2^-8: tie, 0x3F81 odd -> 0x3F82"},
    {0x3F808001u, 0x3F81u, "just above the tie"},
    {0x3F807FFFu, 0x3F80u, "just below the tie"},
    {0xBF818000u, 0xBF82u, "negative tie to even"},
    {0x477FE000u, 0x4780u, "65504: lower 0xE000 > 0x8000 -> 65536"},
    {0x477FF000u, 0x4780u, "65520 -> 65536"},
    {0x7F7FFFFFu, 0x7F80u, "FLT_MAX rounds up to inf"},
    {0x7F7F8000u, 0x7F80u, "tie above the largest bf16 (0x7F7F odd) -> inf"},
    {0x7F7E8000u, 0x7F7Eu, "tie, 0x7F7E even"},
    {0x7F800000u, 0x7F80u, "+inf"},
    {0xFF800000u, 0xFF80u, "-inf"},
    {0x00000001u, 0x0000u, "smallest fp32 subnormal -> +0"},
    {0x00008000u, 0x0000u, "subnormal tie to even 0"},
    {0x00018000u, 0x0002u, "subnormal tie 1 (odd) -> 2"},
    {0x00008001u, 0x0001u, "subnormal above tie"},
    {0x807FFFFFu, 0x8080u, "largest negative subnormal carries into the "
                           "exponent: -2^-126"},
    {0x00010000u, 0x0001u, "bf16 subnormal exact (no flush to zero)"},
};

static int f16_is_nan(uint16_t h) {
  return (h & 0x7C00u) == 0x7C00u && (h & 0x03FFu) != 0;
}
static int bf16_is_nan(uint16_t h) {
  return (h & 0x7F80u) == 0x7F80u && (h & 0x007Fu) != 0;
}

/* NaN inputs that a truncating or naive rounding conversion turns into inf
 * or zero: 0x7F800001 (payload only in the low bits), 0xFFFFFFFF (rounding
 * the upper half up would wrap to 0). */
static const uint32_t k_nans[] = {0x7FC00000u, 0xFFC00000u, 0x7F800001u,
                                  0xFF800001u, 0x7FFFFFFFu, 0xFFFFFFFFu,
                                  0x7F801000u};

Test(api_convert, f16_from_f32_bit_patterns) {
  enum { N = sizeof k_to_f16 / sizeof k_to_f16[0] };
  float src[N];
  uint16_t dst[N];
  for (int i = 0; i < N; ++i) src[i] = u2f(k_to_f16[i].f32);
  cr_assert_eq(fo_convert_from_f32(FO_DTYPE_F16, src, dst, N), FO_SUCCESS);
  for (int i = 0; i < N; ++i)
    cr_expect(dst[i] == k_to_f16[i].f16,
              "f32 0x%08X -> f16 0x%04X, want 0x%04X (%s)", k_to_f16[i].f32,
              dst[i], k_to_f16[i].f16, k_to_f16[i].why);

  enum { NN = sizeof k_nans / sizeof k_nans[0] };
  float nsrc[NN];
  uint16_t ndst[NN];
  for (int i = 0; i < NN; ++i) nsrc[i] = u2f(k_nans[i]);
  cr_assert_eq(fo_convert_from_f32(FO_DTYPE_F16, nsrc, ndst, NN), FO_SUCCESS);
  for (int i = 0; i < NN; ++i)
    cr_expect(f16_is_nan(ndst[i]), "NaN 0x%08X -> f16 0x%04X is not NaN",
              k_nans[i], ndst[i]);
}

Test(api_convert, bf16_from_f32_bit_patterns) {
  enum { N = sizeof k_to_bf16 / sizeof k_to_bf16[0] };
  float src[N];
  uint16_t dst[N];
  for (int i = 0; i < N; ++i) src[i] = u2f(k_to_bf16[i].f32);
  cr_assert_eq(fo_convert_from_f32(FO_DTYPE_BF16, src, dst, N), FO_SUCCESS);
  for (int i = 0; i < N; ++i)
    cr_expect(dst[i] == k_to_bf16[i].bf16,
              "f32 0x%08X -> bf16 0x%04X, want 0x%04X (%s)", k_to_bf16[i].f32,
              dst[i], k_to_bf16[i].bf16, k_to_bf16[i].why);

  enum { NN = sizeof k_nans / sizeof k_nans[0] };
  float nsrc[NN];
  uint16_t ndst[NN];
  for (int i = 0; i < NN; ++i) nsrc[i] = u2f(k_nans[i]);
  cr_assert_eq(fo_convert_from_f32(FO_DTYPE_BF16, nsrc, ndst, NN),
               FO_SUCCESS);
  for (int i = 0; i < NN; ++i)
    cr_expect(bf16_is_nan(ndst[i]), "NaN 0x%08X -> bf16 0x%04X is not NaN",
              k_nans[i], ndst[i]);
}

/* Widening, by hand: f16 value = (-1)^s * 2^(e-15) * (1 + f/1024), or
 * 2^-24 * f for e == 0. */
Test(api_convert, f16_to_f32_bit_patterns) {
  static const struct {
    uint16_t f16;
    uint32_t f32;
  } k[] = {
      {0x0000u, 0x00000000u}, {0x8000u, 0x80000000u}, /* +-0 */
      {0x0001u, 0x33800000u},                         /* 2^-24 */
      {0x8001u, 0xB3800000u},                         /* -2^-24 */
      {0x03FFu, 0x387FC000u},                         /* 1023*2^-24 */
      {0x0400u, 0x38800000u},                         /* 2^-14 */
      {0x3C00u, 0x3F800000u},                         /* 1 */
      {0x3C01u, 0x3F802000u},                         /* 1+2^-10 */
      {0xC000u, 0xC0000000u},                         /* -2 */
      {0x7BFFu, 0x477FE000u},                         /* 65504 */
      {0x7C00u, 0x7F800000u}, {0xFC00u, 0xFF800000u}, /* +-inf */
  };
  enum { N = sizeof k / sizeof k[0] };
  uint16_t src[N];
  float dst[N];
  for (int i = 0; i < N; ++i) src[i] = k[i].f16;
  cr_assert_eq(fo_convert_to_f32(FO_DTYPE_F16, src, dst, N), FO_SUCCESS);
  for (int i = 0; i < N; ++i)
    cr_expect(f2u(dst[i]) == k[i].f32, "f16 0x%04X -> 0x%08X, want 0x%08X",
              k[i].f16, f2u(dst[i]), k[i].f32);
  const uint16_t nans[] = {0x7E00u, 0x7C01u, 0xFFFFu, 0xFC01u};
  float nd[4];
  cr_assert_eq(fo_convert_to_f32(FO_DTYPE_F16, nans, nd, 4), FO_SUCCESS);
  for (int i = 0; i < 4; ++i)
    cr_expect(isnan(nd[i]), "f16 NaN 0x%04X -> %g", nans[i], nd[i]);
}

/* Every f16 pattern: widening then narrowing gives the pattern back (NaN
 * stays NaN), and the exact midpoint between two neighbouring finite
 * values (representable in fp32: 12 significant bits) rounds to the one
 * with the even fraction. */
Test(api_convert, f16_exhaustive_round_trip_and_ties) {
  static uint16_t all[65536], back[65536], mid16[65536];
  static float wide[65536], mid[65536];
  for (int i = 0; i < 65536; ++i) all[i] = (uint16_t)i;
  cr_assert_eq(fo_convert_to_f32(FO_DTYPE_F16, all, wide, 65536), FO_SUCCESS);
  cr_assert_eq(fo_convert_from_f32(FO_DTYPE_F16, wide, back, 65536),
               FO_SUCCESS);
  int bad = 0;
  for (int i = 0; i < 65536 && bad < 10; ++i) {
    int ok = f16_is_nan(all[i]) ? (isnan(wide[i]) && f16_is_nan(back[i]))
                                : back[i] == all[i];
    if (!ok) {
      ++bad;
      cr_expect(0, "f16 0x%04X -> %a -> 0x%04X", i, (double)wide[i], back[i]);
    }
  }
  /* midpoints between h and h+1 for h = 0..0x7BFE (positive finite) */
  int nm = 0;
  for (int h = 0; h < 0x7BFF; ++h)
    mid[nm++] = (float)(((double)wide[h] + (double)wide[h + 1]) / 2);
  cr_assert_eq(fo_convert_from_f32(FO_DTYPE_F16, mid, mid16, nm), FO_SUCCESS);
  bad = 0;
  for (int h = 0; h < nm && bad < 10; ++h) {
    uint16_t want = (uint16_t)((h & 1) ? h + 1 : h);
    if (mid16[h] != want) {
      ++bad;
      cr_expect(0, "midpoint %a of 0x%04X/0x%04X -> 0x%04X, want 0x%04X",
                (double)mid[h], h, h + 1, mid16[h], want);
    }
  }
}

/* Every bf16 pattern: widening is the 16-bit shift (NaN stays NaN), and
 * narrowing gives the pattern back. */
Test(api_convert, bf16_exhaustive_round_trip) {
  static uint16_t all[65536], back[65536];
  static float wide[65536];
  for (int i = 0; i < 65536; ++i) all[i] = (uint16_t)i;
  cr_assert_eq(fo_convert_to_f32(FO_DTYPE_BF16, all, wide, 65536),
               FO_SUCCESS);
  cr_assert_eq(fo_convert_from_f32(FO_DTYPE_BF16, wide, back, 65536),
               FO_SUCCESS);
  int bad = 0;
  for (int i = 0; i < 65536 && bad < 10; ++i) {
    int nan = bf16_is_nan(all[i]);
    int ok = nan ? (isnan(wide[i]) && bf16_is_nan(back[i]))
                 : (f2u(wide[i]) == (uint32_t)i << 16 && back[i] == all[i]);
    if (!ok) {
      ++bad;
      cr_expect(0, "bf16 0x%04X -> 0x%08X -> 0x%04X", i, f2u(wide[i]),
                back[i]);
    }
  }
}

Test(api_convert, bad_arguments) {
  float src[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  uint16_t dst[8], dst0[8];
  float fdst[8], fdst0[8];
  memset(dst, 0x5A, sizeof dst);
  memcpy(dst0, dst, sizeof dst);
  memset(fdst, 0x5A, sizeof fdst);
  memcpy(fdst0, fdst, sizeof fdst);
  const int bad_dtype[] = {FO_DTYPE_COUNT, -1, 99};
  for (size_t i = 0; i < 3; ++i) {
    CHECK(FO_ERR_INVALID_ARGUMENT, "dtype", fo_convert_from_f32,
          (fo_dtype)bad_dtype[i], src, dst, 8);
    CHECK(FO_ERR_INVALID_ARGUMENT, "dtype", fo_convert_to_f32,
          (fo_dtype)bad_dtype[i], dst0, fdst, 8);
  }
  CHECK(FO_ERR_INVALID_ARGUMENT, "n", fo_convert_from_f32, FO_DTYPE_F16, src,
        dst, -1);
  CHECK(FO_ERR_INVALID_ARGUMENT, "n", fo_convert_to_f32, FO_DTYPE_BF16, dst0,
        fdst, INT64_MIN);
  CHECK(FO_ERR_NULL_POINTER, "src", fo_convert_from_f32, FO_DTYPE_F16, NULL,
        dst, 8);
  CHECK(FO_ERR_NULL_POINTER, "dst", fo_convert_from_f32, FO_DTYPE_F16, src,
        NULL, 8);
  CHECK(FO_ERR_NULL_POINTER, "src", fo_convert_to_f32, FO_DTYPE_BF16, NULL,
        fdst, 8);
  CHECK(FO_ERR_NULL_POINTER, "dst", fo_convert_to_f32, FO_DTYPE_BF16, dst0,
        NULL, 8);
  cr_expect(memcmp(dst, dst0, sizeof dst) == 0 &&
                memcmp(fdst, fdst0, sizeof fdst) == 0,
            "a failing conversion wrote its destination");

  /* overlap: allowed only for src == dst with FO_DTYPE_F32 */
  float buf[16];
  for (int i = 0; i < 16; ++i) buf[i] = (float)i + 0.5f;
  float buf0[16];
  memcpy(buf0, buf, sizeof buf);
  CHECK(FO_SUCCESS, NULL, fo_convert_from_f32, FO_DTYPE_F32, buf, buf, 16);
  CHECK(FO_SUCCESS, NULL, fo_convert_to_f32, FO_DTYPE_F32, buf, buf, 16);
  cr_expect(memcmp(buf, buf0, sizeof buf) == 0, "in-place f32 copy changed");
  CHECK(FO_ERR_OVERLAP, NULL, fo_convert_from_f32, FO_DTYPE_F16, buf, buf, 8);
  CHECK(FO_ERR_OVERLAP, NULL, fo_convert_from_f32, FO_DTYPE_BF16, buf,
        (uint16_t *)(void *)buf + 3, 8);
  CHECK(FO_ERR_OVERLAP, NULL, fo_convert_to_f32, FO_DTYPE_F16,
        (uint16_t *)(void *)buf + 8, buf, 8);
  CHECK(FO_ERR_OVERLAP, NULL, fo_convert_from_f32, FO_DTYPE_F32, buf, buf + 1,
        8);
  CHECK(FO_ERR_OVERLAP, NULL, fo_convert_to_f32, FO_DTYPE_F32, buf + 1, buf,
        8);
  cr_expect(memcmp(buf, buf0, sizeof buf) == 0,
            "a refused overlapping conversion wrote its destination");
  /* touching but disjoint: 8 floats then 8 halves right after them */
  CHECK(FO_SUCCESS, NULL, fo_convert_from_f32, FO_DTYPE_F16, buf, buf + 8, 8);
  /* n == 0 does nothing, whatever the pointers */
  CHECK(FO_SUCCESS, NULL, fo_convert_from_f32, FO_DTYPE_F16, src, dst, 0);
}

/* ===================================================== ambiguous contract */

/* Cases the header leaves open; the choice made here is the sensible one,
 * listed in the report for the library author to confirm. */
Test(api_ambiguous, choices) {
  cenv e;
  /* stochastic rounding with fp32 parameters: nothing to round */
  env_init(&e, FO_ALG_ADAMW);
  e.o.stochastic_rounding = 1;
  run_create(&e, "[ambiguous] fp32 + SR", FO_ERR_UNSUPPORTED,
             "stochastic_rounding", NULL);
  /* unused hyper-parameters that are finite and non-negative but out of
   * their algorithm's range are ignored ("ignored but must still be finite
   * and non-negative"); a negative one is refused */
  env_init(&e, FO_ALG_SGD);
  e.hp[1].beta1 = 1.5f;
  e.hp[1].eps = 0.0f;
  run_create(&e, "[ambiguous] SGD beta1 1.5, eps 0 (unused)", FO_SUCCESS,
             NULL, NULL);
  env_init(&e, FO_ALG_LION);
  e.hp[1].eps = 0.0f;
  e.hp[1].dampening = 2.0f;
  run_create(&e, "[ambiguous] Lion eps 0, dampening 2 (unused)", FO_SUCCESS,
             NULL, NULL);
  env_init(&e, FO_ALG_LION);
  e.hp[1].eps = -1.0f;
  run_create(&e, "Lion eps -1 (unused but negative)", FO_ERR_INVALID_ARGUMENT,
             "eps", NULL);
  /* a zero-size tensor occupies no bytes, so it overlaps nothing */
  env_init(&e, FO_ALG_ADAMW);
  e.nt = 3;
  e.t[2].numel = 0;
  e.t[2].param = at(&e, 4);
  e.t[2].grad = at(&e, 4);
  run_create(&e, "[ambiguous] numel 0 inside another buffer", FO_SUCCESS,
             NULL, NULL);
  /* each tensor at most 2^62 (documented), their total more than 2^62 */
  env_init(&e, FO_ALG_ADAMW);
  set_arena(&e);
  e.t[0].numel = (int64_t)1 << 62;
  run_create(&e, "[ambiguous] total numel 2^62 + 16", FO_ERR_INVALID_ARGUMENT,
             "2^62", NULL);
  /* an external fp32 tensor of 2^62 elements spans 2^64 bytes: no such
   * buffer exists (and p + bytes wraps); create must not succeed, whatever
   * the status (SGD without momentum allocates no state to fail on) */
  static const fo_algorithm algs[] = {FO_ALG_SGD, FO_ALG_ADAMW};
  for (size_t a = 0; a < 2; ++a) {
    env_init(&e, algs[a]);
    e.nt = 1;
    e.t[0].numel = (int64_t)1 << 62;
    fo_optimizer *opt = SENT_OPT;
    fo_status st =
        fo_optimizer_create(&opt, &e.o, e.hp, e.ng, e.t, e.nt);
    cr_expect(st == FO_ERR_INVALID_ARGUMENT || st == FO_ERR_OVERLAP ||
                  st == FO_ERR_OUT_OF_MEMORY,
              "[ambiguous] external fp32 numel 2^62, alg %d: %s", algs[a],
              st_name(st));
    if (st == FO_SUCCESS) fo_optimizer_destroy(opt);
  }
  /* num_tensors 0: an optimizer over nothing */
  env_init(&e, FO_ALG_ADAMW);
  e.nt = 0;
  run_create(&e, "[ambiguous] num_tensors 0", FO_SUCCESS, NULL, NULL);
  env_init(&e, FO_ALG_ADAMW);
  e.nt = 0;
  e.pt = NULL;
  run_create(&e, "[ambiguous] num_tensors 0, tensors NULL", FO_SUCCESS, NULL,
             NULL);
}
