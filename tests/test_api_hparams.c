/*
 * test_api_hparams.c -- hyper-parameters: every field's range at create
 * and at fo_optimizer_set_hparams (a table per algorithm), set_hparams
 * within the state the optimizer has, bad calls of set/get, and the
 * struct's struct_size and reserved words.
 *
 * Written against include/fusedopt.h only; no library internals.
 */
#define _POSIX_C_SOURCE 200809L

#include <criterion/criterion.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api_harness.h"
#include "fusedopt.h"

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

#define F(f, v) \
  { #f, offsetof(fo_hparams, f), 0, (v) }
#define I(f, v) \
  { #f, offsetof(fo_hparams, f), 1, (v) }
static const hp_case k_hp_cases[] = {
/* lr, weight_decay, maximize: every algorithm */
#define COMMON(alg)                                                                             \
  {alg, {F(lr, -1e-3)}, IA, IA}, {alg, {F(lr, NAN)}, IA, IA}, {alg, {F(lr, INFINITY)}, IA, IA}, \
      {alg, {F(lr, -INFINITY)}, IA, IA}, {alg, {F(lr, 0.0)}, OK, OK},                           \
      {alg, {F(lr, 10.0)}, OK, OK}, {alg, {F(weight_decay, -1e-2)}, IA, IA},                    \
      {alg, {F(weight_decay, NAN)}, IA, IA}, {alg, {F(weight_decay, INFINITY)}, IA, IA},        \
      {alg, {F(weight_decay, 0.5)}, OK, OK}, {alg, {I(maximize, 2)}, IA, IA},                   \
      {alg, {I(maximize, -1)}, IA, IA}, {                                                       \
    alg, {I(maximize, 1)}, OK, OK                                                               \
  }
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
    {FO_ALG_SGD, {I(nesterov, 1), F(momentum, 0.9), F(dampening, 0.1)}, IA, ANY_FAILURE},
    {FO_ALG_SGD, {I(nesterov, 1), F(momentum, 0.9)}, OK, IS},
    {FO_ALG_SGD, {F(beta1, NAN)}, IA, IA}, /* unused but must be finite */
    {FO_ALG_SGD, {F(eps, INFINITY)}, IA, IA},
    {FO_ALG_SGD, {F(beta2, -INFINITY)}, IA, IA},
/* Adam / AdamW */
#define ADAMLIKE(alg)                                                                              \
  {alg, {F(beta1, 1.0)}, IA, IA}, {alg, {F(beta1, -0.1)}, IA, IA}, {alg, {F(beta1, NAN)}, IA, IA}, \
      {alg, {F(beta1, 0.0)}, OK, OK}, {alg, {F(beta2, 1.0)}, IA, IA},                              \
      {alg, {F(beta2, 1.5)}, IA, IA}, {alg, {F(beta2, -0.5)}, IA, IA},                             \
      {alg, {F(beta2, NAN)}, IA, IA}, {alg, {F(beta2, 0.0)}, OK, OK},                              \
      {alg, {F(eps, 0.0)}, IA, IA}, {alg, {F(eps, -1e-8)}, IA, IA}, {alg, {F(eps, NAN)}, IA, IA},  \
      {alg, {F(eps, INFINITY)}, IA, IA}, {alg, {F(eps, 1e-30)}, OK, OK},                           \
      {alg, {I(amsgrad, 2)}, IA, IA}, {alg, {I(amsgrad, -1)}, IA, IA},                             \
      {alg, {I(amsgrad, 1)}, OK, IS}, {alg, {F(momentum, NAN)}, IA, IA}, {                         \
    alg, {F(dampening, INFINITY)}, IA, IA                                                          \
  }
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
    /* AdaGrad */
    {FO_ALG_ADAGRAD, {F(lr_decay, -0.1)}, IA, IA},
    {FO_ALG_ADAGRAD, {F(lr_decay, NAN)}, IA, IA},
    {FO_ALG_ADAGRAD, {F(initial_accumulator_value, -1.0)}, IA, IA},
    {FO_ALG_ADAGRAD, {F(eps, 0.0)}, IA, IA},
    {FO_ALG_ADAGRAD, {F(lr_decay, 0.5), F(initial_accumulator_value, 0.1)}, OK, OK},
    /* RMSprop */
    {FO_ALG_RMSPROP, {F(alpha, 1.0)}, IA, IA},
    {FO_ALG_RMSPROP, {F(alpha, -0.5)}, IA, IA},
    {FO_ALG_RMSPROP, {F(alpha, 0.0)}, OK, OK},
    {FO_ALG_RMSPROP, {I(centered, 2)}, IA, IA},
    {FO_ALG_RMSPROP, {I(centered, 1)}, OK, IS},
    {FO_ALG_RMSPROP, {F(momentum, 0.9)}, OK, IS},
    {FO_ALG_RMSPROP, {F(eps, 0.0)}, IA, IA},
    /* NAdam */
    {FO_ALG_NADAM, {F(momentum_decay, -4e-3)}, IA, IA},
    {FO_ALG_NADAM, {I(decoupled_weight_decay, 3)}, IA, IA},
    {FO_ALG_NADAM, {I(decoupled_weight_decay, 1), F(weight_decay, 0.1)}, OK, OK},
    {FO_ALG_NADAM, {F(beta1, 1.0)}, IA, IA},
    /* LAMB */
    {FO_ALG_LAMB, {I(layer_adaptation, -1)}, IA, IA},
    {FO_ALG_LAMB, {I(layer_adaptation, 0)}, OK, OK},
    {FO_ALG_LAMB, {F(beta2, 1.0)}, IA, IA},
    {FO_ALG_LAMB, {F(eps, 0.0)}, IA, IA},
    /* LARS */
    {FO_ALG_LARS, {F(trust_coef, 0.0)}, IA, IA},
    {FO_ALG_LARS, {F(trust_coef, -1e-3)}, IA, IA},
    {FO_ALG_LARS, {F(trust_coef, INFINITY)}, IA, IA},
    {FO_ALG_LARS, {F(dampening, 1.5)}, IA, IA},
    {FO_ALG_LARS, {I(nesterov, 1), F(dampening, 0.1)}, IA, IA},
    {FO_ALG_LARS, {I(nesterov, 1)}, OK, OK},
    {FO_ALG_LARS, {F(momentum, 0.0)}, OK, OK},
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
    n += snprintf(buf + n, cap - (size_t)n, " %s=%g", c->set[k].field, c->set[k].value);
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
    run_create(&e, label, c->want_create, c->set[1].field ? "hparams[1]" : c->set[0].field, NULL);
    if (c->want_create != FO_SUCCESS && c->set[1].field == NULL) {
      const char *m = fo_last_error();
      cr_expect(strstr(m, "hparams[1]") != NULL,
                "create [%s]: message \"%s\" does not name hparams[1]", label, m);
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
                "set_hparams [%s]: returned %s, want a failure", label, st_name(st));
    else
      cr_expect(st == c->want_set, "set_hparams [%s]: returned %s (%d), want %s (%d); \"%s\"",
                label, st_name(st), (int)st, st_name(c->want_set), (int)c->want_set,
                fo_last_error());
    cr_assert_eq(fo_optimizer_get_hparams(opt, 1, &after), FO_SUCCESS);
    if (st == FO_SUCCESS) {
      cr_expect(memcmp(&after, &h, sizeof h) == 0,
                "set_hparams [%s]: succeeded but get_hparams differs", label);
    } else {
      cr_expect(memcmp(&after, &before, sizeof h) == 0,
                "set_hparams [%s]: failed but changed the hyper-parameters", label);
      cr_expect(strstr(fo_last_error(), "fo_optimizer_set_hparams") != NULL,
                "set_hparams [%s]: message \"%s\"", label, fo_last_error());
      if (c->set[1].field == NULL && st != FO_ERR_INVALID_STATE)
        cr_expect(contains_ci(fo_last_error(), c->set[0].field),
                  "set_hparams [%s]: message \"%s\" does not name %s", label, fo_last_error(),
                  c->set[0].field);
    }
    /* group 0 untouched either way */
    cr_assert_eq(fo_optimizer_get_hparams(opt, 0, &after), FO_SUCCESS);
    cr_expect(memcmp(&after, &e.hp[0], sizeof after) == 0, "set_hparams [%s]: group 0 changed",
              label);
    fo_optimizer_destroy(opt);
  }
}

/* set_hparams that stays inside the state the optimizer has. */
Test(api_hparams, set_hparams_within_state) {
  cenv e;
  env_init(&e, FO_ALG_SGD);
  e.hp[0].momentum = e.hp[1].momentum = 0.9f;
  fo_optimizer *opt = NULL;
  cr_assert_eq(run_create(&e, "SGD momentum", FO_SUCCESS, NULL, &opt), FO_SUCCESS);
  fo_hparams h = e.hp[1];
  h.nesterov = 1;
  CHECK(FO_SUCCESS, NULL, fo_optimizer_set_hparams, opt, 1, &h);
  h.nesterov = 0;
  h.momentum = 0.0f; /* switching momentum off is fine */
  CHECK(FO_SUCCESS, NULL, fo_optimizer_set_hparams, opt, 1, &h);
  fo_optimizer_destroy(opt);

  env_init(&e, FO_ALG_ADAMW);
  e.hp[0].amsgrad = e.hp[1].amsgrad = 1;
  cr_assert_eq(run_create(&e, "AdamW amsgrad", FO_SUCCESS, NULL, &opt), FO_SUCCESS);
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
  CHECK(FO_ERR_NULL_POINTER, "hparams", fo_optimizer_set_hparams, opt, 0, NULL);
  CHECK(FO_ERR_INVALID_ARGUMENT, "group", fo_optimizer_set_hparams, opt, -1, &h);
  CHECK(FO_ERR_INVALID_ARGUMENT, "group", fo_optimizer_set_hparams, opt, 2, &h);
  CHECK(FO_ERR_INVALID_ARGUMENT, "group", fo_optimizer_set_hparams, opt, FO_MAX_GROUPS, &h);
  CHECK(FO_ERR_INVALID_ARGUMENT, "group", fo_optimizer_set_hparams, opt, INT_MIN, &h);
  const int bad_groups[] = {-1, 2, FO_MAX_GROUPS, INT_MAX};
  for (size_t i = 0; i < sizeof bad_groups / sizeof bad_groups[0]; ++i) {
    out = sent;
    CHECK(FO_ERR_INVALID_ARGUMENT, "group", fo_optimizer_get_hparams, opt, bad_groups[i], &out);
    cr_expect(memcmp(&out, &sent, sizeof out) == 0, "get_hparams(group %d) failed but wrote *out",
              bad_groups[i]);
  }
  CHECK(FO_ERR_NULL_POINTER, "out", fo_optimizer_get_hparams, opt, 0, NULL);
  CHECK(FO_ERR_NULL_POINTER, "opt", fo_optimizer_get_hparams, NULL, 0, &out);
  fo_optimizer_destroy(opt);
}

/* ==================================== struct_size and the reserved words */

/* One way to spoil a group's fo_hparams header, and the word the message
 * must name. */
typedef struct hp_header_case {
  const char *label;
  void (*spoil)(fo_hparams *h);
  const char *arg;
} hp_header_case;

static void size_zero(fo_hparams *h) {
  h->struct_size = 0;
}
static void size_small(fo_hparams *h) {
  h->struct_size = sizeof(fo_hparams) - 1;
}
static void size_half(fo_hparams *h) {
  h->struct_size = sizeof(fo_hparams) / 2;
}
static void size_big(fo_hparams *h) {
  h->struct_size = sizeof(fo_hparams) + 8;
}
static void reserved_first(fo_hparams *h) {
  h->reserved[0] = 1;
}
static void reserved_last(fo_hparams *h) {
  h->reserved[NRESERVED_HP - 1] = UINT64_MAX;
}

static const hp_header_case k_header_cases[] = {
    {"struct_size 0", size_zero, "struct_size"},
    {"struct_size - 1", size_small, "struct_size"},
    {"struct_size / 2", size_half, "struct_size"},
    {"struct_size + 8", size_big, "struct_size"},
    {"reserved[0] = 1", reserved_first, "reserved[0]"},
    {"last reserved word", reserved_last, "reserved"},
};

/* Create and set_hparams refuse a spoiled header with
 * FO_ERR_INVALID_ARGUMENT, naming the group and fo_hparams_default; a
 * refused set_hparams leaves the group as it was. */
Test(api_hparams, struct_size_and_reserved) {
  for (size_t i = 0; i < sizeof k_header_cases / sizeof k_header_cases[0]; ++i) {
    const hp_header_case *c = &k_header_cases[i];
    cenv e;
    env_init(&e, FO_ALG_ADAMW);
    c->spoil(&e.hp[1]);
    run_create(&e, c->label, FO_ERR_INVALID_ARGUMENT, c->arg, NULL);
    const char *m = fo_last_error();
    cr_expect(strstr(m, "hparams[1]") && strstr(m, "fo_hparams_default"),
              "create [%s]: \"%s\" names neither the group nor the remedy", c->label, m);

    fo_optimizer *opt = make_opt(&e, FO_ALG_ADAMW);
    fo_hparams h = e.hp[1], before, after;
    h.lr = 0.5f; /* a change a refused call must not make */
    c->spoil(&h);
    cr_assert_eq(fo_optimizer_get_hparams(opt, 1, &before), FO_SUCCESS);
    CHECK(FO_ERR_INVALID_ARGUMENT, c->arg, fo_optimizer_set_hparams, opt, 1, &h);
    cr_expect(strstr(fo_last_error(), "fo_hparams_default") != NULL, "set_hparams [%s]: \"%s\"",
              c->label, fo_last_error());
    cr_assert_eq(fo_optimizer_get_hparams(opt, 1, &after), FO_SUCCESS);
    cr_expect(memcmp(&before, &after, sizeof before) == 0,
              "set_hparams [%s]: refused but changed the group", c->label);
    fo_optimizer_destroy(opt);
  }
}

/* A struct built from nothing -- every hyper-parameter set by hand,
 * struct_size not -- is refused; a copy of a default is not. */
Test(api_hparams, built_from_nothing_is_refused) {
  cenv e;
  env_init(&e, FO_ALG_ADAM);
  fo_hparams h;
  memset(&h, 0, sizeof h);
  h.lr = 1e-3f;
  h.beta1 = 0.9f;
  h.beta2 = 0.999f;
  h.eps = 1e-8f;
  e.hp[0] = h;
  run_create(&e, "hand-built hparams[0]", FO_ERR_INVALID_ARGUMENT, "struct_size", NULL);
  cr_expect(strstr(fo_last_error(), "fo_hparams_default") != NULL, "\"%s\"", fo_last_error());
  env_init(&e, FO_ALG_ADAM);
  e.hp[0] = e.hp[1]; /* a copy of one fo_hparams_default filled */
  e.hp[0].lr = 0.25f;
  run_create(&e, "copy of a default", FO_SUCCESS, NULL, NULL);
}

/* What get_hparams returns passes back through set_hparams: struct_size
 * and reserved as fo_hparams_default set them, after create and after a
 * load (whose hyper-parameters come from the file). */
Test(api_hparams, get_set_round_trip_survives_a_load) {
  cenv e;
  fo_optimizer *opt = make_opt(&e, FO_ALG_ADAMW);
  fo_hparams h;
  cr_assert_eq(fo_optimizer_get_hparams(opt, 1, &h), FO_SUCCESS);
  cr_expect_eq(h.struct_size, sizeof(fo_hparams));
  h.lr = 0.0625f;
  CHECK(FO_SUCCESS, NULL, fo_optimizer_set_hparams, opt, 1, &h);

  char path[] = "/tmp/fo_api_hparams_XXXXXX";
  int fd = mkstemp(path);
  cr_assert(fd >= 0, "mkstemp");
  close(fd);
  CHECK(FO_SUCCESS, NULL, fo_optimizer_save, opt, path, NULL);
  cenv e2;
  fo_optimizer *back = make_opt(&e2, FO_ALG_ADAMW);
  CHECK(FO_SUCCESS, NULL, fo_optimizer_load, back, path, NULL);
  unlink(path);
  fo_hparams g;
  memset(&g, 0x5A, sizeof g);
  cr_assert_eq(fo_optimizer_get_hparams(back, 1, &g), FO_SUCCESS);
  cr_expect_eq(g.struct_size, sizeof(fo_hparams), "after a load: struct_size %zu", g.struct_size);
  for (size_t r = 0; r < NRESERVED_HP; ++r)
    cr_expect_eq(g.reserved[r], 0u, "after a load: reserved[%zu]", r);
  cr_expect(memcmp(&g, &h, sizeof g) == 0, "the loaded group differs from the saved one");
  g.lr = 0.125f;
  CHECK(FO_SUCCESS, NULL, fo_optimizer_set_hparams, back, 1, &g);
  fo_optimizer_destroy(back);
  fo_optimizer_destroy(opt);
}
