/*
 * api_harness.c -- the public-API tests' shared checks and create fixture
 * (api_harness.h).
 */
#include "api_harness.h"

#include <criterion/criterion.h>
#include <ctype.h>
#include <string.h>

uint32_t f2u(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

float u2f(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

const char *st_name(fo_status s) {
  return fo_status_string(s);
}

static int fold(int c) {
  return c == '_' ? ' ' : tolower(c);
}

int contains_ci(const char *hay, const char *needle) {
  size_t n = strlen(needle);
  for (; *hay; ++hay) {
    size_t i = 0;
    while (i < n && hay[i] && fold((unsigned char)hay[i]) == fold((unsigned char)needle[i])) ++i;
    if (i == n) return 1;
  }
  return n == 0;
}

void prime_error(const char *fn) {
  if (strcmp(fn, "fo_options_default") != 0)
    (void)fo_options_default(NULL);
  else
    (void)fo_hparams_default(FO_ALG_SGD, NULL);
}

void check_status(fo_status got, fo_status want, const char *fn, const char *arg, const char *call,
                  int line) {
  const char *msg = fo_last_error();
  cr_expect(got == want, "line %d: %s returned %s (%d), want %s (%d); fo_last_error: \"%s\"", line,
            call, st_name(got), (int)got, st_name(want), (int)want,
            got == FO_SUCCESS ? "(not set by this call)" : msg);
  if (got != FO_SUCCESS && want != FO_SUCCESS) {
    cr_expect(msg != NULL && strstr(msg, fn) != NULL,
              "line %d: %s failed but fo_last_error \"%s\" does not name %s", line, call,
              msg ? msg : "(null)", fn);
    if (arg)
      cr_expect(msg != NULL && contains_ci(msg, arg),
                "line %d: %s failed but fo_last_error \"%s\" does not name "
                "the argument \"%s\"",
                line, call, msg ? msg : "(null)", arg);
  }
}

void *at(cenv *e, size_t byte_offset) {
  return e->pool + byte_offset;
}

static void fill_pool(cenv *e) {
  float *f = (float *)(void *)e->pool;
  for (size_t i = 0; i < sizeof e->pool / sizeof(float); ++i)
    f[i] = 0.25f * (float)(i % 37) - 4.125f; /* never 0, exact in bf16 */
}

void env_init(cenv *e, fo_algorithm alg) {
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

void set_arena(cenv *e) {
  e->o.storage = FO_STORAGE_ARENA;
  for (int k = 0; k < MAX_T; ++k) e->t[k].param = e->t[k].grad = NULL;
}

fo_status run_create(cenv *e, const char *label, fo_status want, const char *arg,
                     fo_optimizer **keep) {
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
  fo_status st = fo_optimizer_create(e->out_null ? NULL : &opt, e->po, e->php, e->ng, e->pt, e->nt);
  const char *msg = fo_last_error();
  cr_expect(st == want,
            "create [%s]: returned %s (%d), want %s (%d); fo_last_error: "
            "\"%s\"",
            label, st_name(st), (int)st, st_name(want), (int)want,
            st == FO_SUCCESS ? "(not set by this call)" : msg);
  if (st == FO_SUCCESS) {
    cr_expect(opt != SENT_OPT && opt != NULL, "create [%s]: success but *out not set", label);
  } else {
    cr_expect(opt == SENT_OPT, "create [%s]: failed with %s but changed *out", label, st_name(st));
    cr_expect(strstr(msg, "fo_optimizer_create") != NULL,
              "create [%s]: fo_last_error \"%s\" does not name "
              "fo_optimizer_create",
              label, msg);
    if (arg)
      cr_expect(contains_ci(msg, arg), "create [%s]: fo_last_error \"%s\" does not name \"%s\"",
                label, msg, arg);
  }
  cr_expect(memcmp(pool0, e->pool, sizeof pool0) == 0,
            "create [%s]: the caller's param/grad buffers changed", label);
  cr_expect(memcmp(&o0, &e->o, sizeof o0) == 0 && memcmp(hp0, e->hp, sizeof hp0) == 0 &&
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

fo_optimizer *make_opt(cenv *e, fo_algorithm alg) {
  env_init(e, alg);
  fo_optimizer *opt = NULL;
  cr_assert_eq(run_create(e, "baseline", FO_SUCCESS, NULL, &opt), FO_SUCCESS);
  return opt;
}
