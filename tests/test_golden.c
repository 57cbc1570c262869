/*
 * test_golden.c -- the CPU executor against golden vectors recorded from
 * PyTorch's own optimizers (torch.optim.SGD, Adam, AdamW, Adagrad, RMSprop,
 * NAdam; fp32, CPU).
 *
 * The files in tests/golden/ come from scripts/gen_golden.py (its docstring
 * describes the format): initial parameters, every step's gradients, the
 * hyper-parameters, and PyTorch's final parameters and optimizer state after
 * 10 steps.  Every file is replayed through fusedopt in both storage modes
 * and compared.  Because the first step of SGD momentum and the placement of
 * Adam's eps change the results by far more than the tolerance, these cases
 * pin down exactly PyTorch's semantics.  (LAMB and LARS are not in
 * torch.optim; the fp64 reference of test_cpu_reference_matrix.c covers
 * them.)
 */
#define _POSIX_C_SOURCE 200809L
#include <criterion/criterion.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fusedopt.h"
#include "testutil.h"

#ifndef FO_GOLDEN_DIR
#error "FO_GOLDEN_DIR must name tests/golden"
#endif

/* Tolerance.  Both sides compute in fp32 with the same formulas; they differ
 * only in the order of operations (PyTorch's in-place tensor ops against
 * one fused expression per element) and in how the step scalars reach fp32.
 * Each step then differs by at most ~3 roundings (u = 2^-24 ~ 6e-8) of the
 * quantities involved, and 10 steps by at most ~30u ~ 2e-6 of the largest
 * magnitudes involved.  Element i passes when
 *   |got - want| <= GOLDEN_TOL * scale,
 * scale being the largest magnitude of the tensor's buffer (and for the
 * parameters of its initial values too; for a first moment or momentum
 * buffer, which can cancel to small values, of the gradients feeding it
 * too), at least 2^-10.  Observed: within 3u (FO_TEST_VERBOSE=1 prints the worst ratio).
 * The wrong first-step momentum rule, maximize applied after weight decay,
 * or eps inside the square root (the *_eps_placement cases use eps ~
 * sqrt(v_hat)) move results by 1e-3 or more, 500 times this tolerance.
 *
 * The same tolerance holds for Adagrad, RMSprop and NAdam.  Their step
 * scalars are computed in double on both sides (Adagrad's lr / (1 +
 * (t-1)*lr_decay); NAdam's mu_t = beta1*(1 - 0.5*0.96^(t*psi)), mu_{t+1},
 * the bias correction) and reach fp32 once.  NAdam's mu_product, the
 * product of the mu_t, is kept in fp32 and rounded once per step, as
 * PyTorch keeps it in an fp32 tensor (step_state.h; the coefficients
 * lr*(1-mu_t)/(1-mu_product) and lr*mu_{t+1}/(1 - mu_product*mu_{t+1})
 * read that fp32 product: test_step_scalars.c holds them to it bit for
 * bit).
 * RMSprop's centered variance square_avg - grad_avg^2 could cancel; with
 * random-sign gradients grad_avg^2 stays a fraction of square_avg.  A
 * wrong formula (eps inside the square root, Adagrad's sum starting
 * without initial_accumulator_value, the learning-rate decay one step off,
 * RMSprop's momentum with a first-step rule, NAdam's mu schedule one step
 * off or its decoupled decay as L2) moves results by 1e-3 or more. */
#define GOLDEN_TOL 2e-6
#define GOLDEN_FLOOR 0x1p-10

#define MAX_TENSORS 16
#define MAX_STEPS 64

/* PyTorch's state names and the roles fusedopt keeps them in (Adagrad's
 * sum and RMSprop's square_avg are the second-moment role, RMSprop's
 * grad_avg the AMSGrad maximum's). */
enum {
  ST_EXP_AVG,
  ST_EXP_AVG_SQ,
  ST_MAX_EXP_AVG_SQ,
  ST_MOMENTUM,
  ST_SUM,
  ST_SQUARE_AVG,
  ST_GRAD_AVG,
  ST_COUNT
};
static const char *const STATE_NAMES[ST_COUNT] = {
    "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer", "sum", "square_avg", "grad_avg"};
static const fo_role STATE_ROLES[ST_COUNT] = {
    FO_ROLE_EXP_AVG,    FO_ROLE_EXP_AVG_SQ, FO_ROLE_MAX_EXP_AVG_SQ, FO_ROLE_EXP_AVG,
    FO_ROLE_EXP_AVG_SQ, FO_ROLE_EXP_AVG_SQ, FO_ROLE_MAX_EXP_AVG_SQ};

/* The newest file version this reader knows (scripts/gen_golden.py):
 * version 2 adds algorithms, state names and optional group keys. */
#define GOLDEN_VERSION 2

typedef struct golden {
  char path[1024];
  char name[128];
  fo_algorithm alg;
  int num_groups;
  fo_hparams hp[FO_MAX_GROUPS];
  int steps;
  int nt;
  int64_t numel[MAX_TENSORS];
  int group[MAX_TENSORS];
  float *init[MAX_TENSORS];
  float *grad[MAX_STEPS][MAX_TENSORS];
  float *final[MAX_TENSORS];
  float *state[ST_COUNT][MAX_TENSORS];
} golden;

static void golden_free(golden *g) {
  for (int t = 0; t < MAX_TENSORS; ++t) {
    free(g->init[t]);
    free(g->final[t]);
    for (int s = 0; s < MAX_STEPS; ++s) free(g->grad[s][t]);
    for (int k = 0; k < ST_COUNT; ++k) free(g->state[k][t]);
  }
  memset(g, 0, sizeof *g);
}

/* ---------------------------------------------------------------- parser */

typedef struct reader {
  FILE *f;
  const char *path;
  char tok[256];
  int pushed; /* tok holds a token given back by unread() */
} reader;

/* Next token, skipping '#' comments to the end of their line; NULL at EOF. */
static const char *next(reader *r) {
  if (r->pushed) {
    r->pushed = 0;
    return r->tok;
  }
  for (;;) {
    if (fscanf(r->f, "%255s", r->tok) != 1) return NULL;
    if (r->tok[0] != '#') return r->tok;
    int c;
    while ((c = fgetc(r->f)) != EOF && c != '\n') {
    }
  }
}

/* Give back the token next() returned last: the next call returns it
 * again. */
static void unread(reader *r) {
  r->pushed = 1;
}

static const char *need(reader *r, const char *what) {
  const char *t = next(r);
  cr_assert_not_null(t, "%s: unexpected end of file, wanted %s", r->path, what);
  return t;
}

static long need_int(reader *r, const char *what, long lo, long hi) {
  const char *t = need(r, what);
  char *end = NULL;
  long v = strtol(t, &end, 10);
  cr_assert(*t && !*end && v >= lo && v <= hi, "%s: %s: '%s' is not an integer in [%ld, %ld]",
            r->path, what, t, lo, hi);
  return v;
}

static float need_float(reader *r, const char *what) {
  const char *t = need(r, what);
  char *end = NULL;
  double v = strtod(t, &end);
  cr_assert(*t && !*end, "%s: %s: '%s' is not a number", r->path, what, t);
  cr_assert((double)(float)v == v, "%s: %s: %s is not an fp32 value", r->path, what, t);
  return (float)v;
}

static void expect_word(reader *r, const char *word) {
  const char *t = need(r, word);
  cr_assert_str_eq(t, word, "%s: wanted '%s', got '%s'", r->path, word, t);
}

static float *read_values(reader *r, int64_t n, const char *what) {
  float *v = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
  cr_assert_not_null(v);
  for (int64_t i = 0; i < n; ++i) v[i] = need_float(r, what);
  return v;
}

static void golden_load(golden *g, const char *path) {
  memset(g, 0, sizeof *g);
  snprintf(g->path, sizeof g->path, "%s", path);
  reader r = {fopen(path, "r"), g->path, {0}, 0};
  cr_assert_not_null(r.f, "cannot open %s", path);
  expect_word(&r, "fusedopt-golden");
  long version = need_int(&r, "version", 0, 1000);
  cr_assert(version >= 1 && version <= GOLDEN_VERSION, "%s: unknown format version %ld", path,
            version);
  const char *t;
  while ((t = need(&r, "a record")) && strcmp(t, "end") != 0) {
    if (!strcmp(t, "case")) {
      snprintf(g->name, sizeof g->name, "%s", need(&r, "case name"));
    } else if (!strcmp(t, "algorithm")) {
      const char *a = need(&r, "algorithm");
      if (!strcmp(a, "sgd"))
        g->alg = FO_ALG_SGD;
      else if (!strcmp(a, "adam"))
        g->alg = FO_ALG_ADAM;
      else if (!strcmp(a, "adamw"))
        g->alg = FO_ALG_ADAMW;
      else if (version >= 2 && !strcmp(a, "adagrad"))
        g->alg = FO_ALG_ADAGRAD;
      else if (version >= 2 && !strcmp(a, "rmsprop"))
        g->alg = FO_ALG_RMSPROP;
      else if (version >= 2 && !strcmp(a, "nadam"))
        g->alg = FO_ALG_NADAM;
      else
        cr_assert_fail("%s: unknown algorithm '%s'", path, a);
    } else if (!strcmp(t, "groups")) {
      g->num_groups = (int)need_int(&r, "groups", 1, FO_MAX_GROUPS);
    } else if (!strcmp(t, "group")) {
      int k = (int)need_int(&r, "group index", 0, g->num_groups - 1);
      fo_hparams *h = &g->hp[k];
      cr_assert_eq(fo_hparams_default(g->alg, h), FO_SUCCESS);
      expect_word(&r, "lr");
      h->lr = need_float(&r, "lr");
      expect_word(&r, "weight_decay");
      h->weight_decay = need_float(&r, "weight_decay");
      expect_word(&r, "momentum");
      h->momentum = need_float(&r, "momentum");
      expect_word(&r, "dampening");
      h->dampening = need_float(&r, "dampening");
      expect_word(&r, "nesterov");
      h->nesterov = (int)need_int(&r, "nesterov", 0, 1);
      expect_word(&r, "beta1");
      h->beta1 = need_float(&r, "beta1");
      expect_word(&r, "beta2");
      h->beta2 = need_float(&r, "beta2");
      expect_word(&r, "eps");
      h->eps = need_float(&r, "eps");
      expect_word(&r, "amsgrad");
      h->amsgrad = (int)need_int(&r, "amsgrad", 0, 1);
      expect_word(&r, "maximize");
      h->maximize = (int)need_int(&r, "maximize", 0, 1);
      /* version 2: optional keys; a key left out keeps the default */
      const char *key;
      while (version >= 2 && (key = next(&r)) != NULL) {
        if (!strcmp(key, "lr_decay")) {
          h->lr_decay = need_float(&r, "lr_decay");
        } else if (!strcmp(key, "initial_accumulator_value")) {
          h->initial_accumulator_value = need_float(&r, "initial_accumulator_value");
        } else if (!strcmp(key, "alpha")) {
          h->alpha = need_float(&r, "alpha");
        } else if (!strcmp(key, "centered")) {
          h->centered = (int)need_int(&r, "centered", 0, 1);
        } else if (!strcmp(key, "momentum_decay")) {
          h->momentum_decay = need_float(&r, "momentum_decay");
        } else if (!strcmp(key, "decoupled_weight_decay")) {
          h->decoupled_weight_decay = (int)need_int(&r, "decoupled_weight_decay", 0, 1);
        } else {
          unread(&r); /* the next record */
          break;
        }
      }
    } else if (!strcmp(t, "steps")) {
      g->steps = (int)need_int(&r, "steps", 1, MAX_STEPS);
    } else if (!strcmp(t, "tensors")) {
      g->nt = (int)need_int(&r, "tensors", 1, MAX_TENSORS);
    } else if (!strcmp(t, "tensor")) {
      int k = (int)need_int(&r, "tensor index", 0, g->nt - 1);
      expect_word(&r, "group");
      g->group[k] = (int)need_int(&r, "tensor group", 0, g->num_groups - 1);
      expect_word(&r, "numel");
      g->numel[k] = need_int(&r, "numel", 0, 1L << 20);
    } else if (!strcmp(t, "init")) {
      int k = (int)need_int(&r, "tensor index", 0, g->nt - 1);
      g->init[k] = read_values(&r, g->numel[k], "init value");
    } else if (!strcmp(t, "grad")) {
      int s = (int)need_int(&r, "step", 0, g->steps - 1);
      int k = (int)need_int(&r, "tensor index", 0, g->nt - 1);
      g->grad[s][k] = read_values(&r, g->numel[k], "gradient");
    } else if (!strcmp(t, "final")) {
      int k = (int)need_int(&r, "tensor index", 0, g->nt - 1);
      g->final[k] = read_values(&r, g->numel[k], "final value");
    } else if (!strcmp(t, "state")) {
      const char *name = need(&r, "state name");
      int which = -1;
      for (int k = 0; k < (version >= 2 ? ST_COUNT : ST_SUM); ++k)
        if (!strcmp(name, STATE_NAMES[k])) which = k;
      cr_assert(which >= 0, "%s: unknown state '%s'", path, name);
      int k = (int)need_int(&r, "tensor index", 0, g->nt - 1);
      g->state[which][k] = read_values(&r, g->numel[k], "state value");
    } else {
      cr_assert_fail("%s: unknown record '%s'", path, t);
    }
  }
  fclose(r.f);
  cr_assert(g->name[0] && g->num_groups > 0 && g->steps > 0 && g->nt > 0, "%s: incomplete header",
            path);
  for (int k = 0; k < g->nt; ++k) {
    cr_assert(g->init[k] && g->final[k], "%s: tensor %d lacks init/final", path, k);
    for (int s = 0; s < g->steps; ++s)
      cr_assert_not_null(g->grad[s][k], "%s: no gradient for step %d tensor %d", path, s, k);
  }
}

/* ------------------------------------------------------------------ run */

static double max_into(double m, const float *x, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (fabs((double)x[i]) > m) m = fabs((double)x[i]);
  return m;
}

/* The magnitude scale of a buffer of tensor t (see GOLDEN_TOL). */
static double buffer_scale(const golden *g, int t, const char *what, const float *want) {
  int64_t n = g->numel[t];
  double m = max_into(GOLDEN_FLOOR, want, n);
  if (!strcmp(what, "param")) return max_into(m, g->init[t], n);
  if (!strcmp(what, "exp_avg") || !strcmp(what, "momentum_buffer") || !strcmp(what, "grad_avg")) {
    /* the gradient after L2 decay: |g| + wd*|p| */
    double gm = 0.0;
    for (int s = 0; s < g->steps; ++s) gm = max_into(gm, g->grad[s][t], n);
    double pm = max_into(max_into(0.0, g->init[t], n), g->final[t], n);
    gm += g->hp[g->group[t]].weight_decay * pm;
    return gm > m ? gm : m;
  }
  return m;
}

static double g_worst_ratio;

/* Compare got with PyTorch's want; returns 1 when within tolerance. */
static int compare(const golden *g, fo_storage sto, const char *what, int t, const float *want,
                   const float *got) {
  int64_t n = g->numel[t];
  double *w = malloc((size_t)(n > 0 ? n : 1) * sizeof(double));
  cr_assert_not_null(w);
  for (int64_t i = 0; i < n; ++i) w[i] = want[i];
  tu_tol tol = {GOLDEN_TOL * buffer_scale(g, t, what, want), 0.0, 0.0, FO_DTYPE_F32};
  tu_report rep;
  int ok = tu_compare(&rep, w, got, FO_DTYPE_F32, n, tol);
  if (rep.worst >= 0 && rep.worst_tol > 0 && rep.worst_err / rep.worst_tol > g_worst_ratio)
    g_worst_ratio = rep.worst_err / rep.worst_tol;
  free(w);
  if (!ok) {
    char label[256], line[512];
    snprintf(label, sizeof label, "%s (%s): %s of tensor %d", g->name,
             sto == FO_STORAGE_ARENA ? "arena" : "external", what, t);
    tu_report_format(&rep, label, line, sizeof line);
    cr_expect(0, "%s", line);
  }
  return ok;
}

static void run_golden(const golden *g, fo_storage sto) {
  fo_options o;
  cr_assert_eq(fo_options_default(&o), FO_SUCCESS);
  o.algorithm = g->alg;
  o.executor = FO_EXEC_CPU;
  o.storage = sto;
  o.param_dtype = FO_DTYPE_F32;
  o.grad_dtype = FO_DTYPE_F32;
  o.num_threads = 1;
  fo_tensor_desc d[MAX_TENSORS];
  float *p[MAX_TENSORS] = {0}, *gr[MAX_TENSORS] = {0};
  memset(d, 0, sizeof d);
  for (int t = 0; t < g->nt; ++t) {
    d[t].numel = g->numel[t];
    d[t].group = g->group[t];
    if (sto == FO_STORAGE_EXTERNAL) {
      size_t bytes = (size_t)(g->numel[t] > 0 ? g->numel[t] : 1) * sizeof(float);
      p[t] = malloc(bytes);
      gr[t] = malloc(bytes);
      cr_assert(p[t] && gr[t]);
      memcpy(p[t], g->init[t], (size_t)g->numel[t] * sizeof(float));
      d[t].param = p[t];
      d[t].grad = gr[t];
    }
  }
  fo_optimizer *opt = NULL;
  cr_assert_eq(fo_optimizer_create(&opt, &o, g->hp, g->num_groups, d, g->nt), FO_SUCCESS,
               "%s: fo_optimizer_create: %s", g->name, fo_last_error());
  if (sto == FO_STORAGE_ARENA) {
    for (int t = 0; t < g->nt; ++t) {
      void *pp = NULL, *gg = NULL;
      cr_assert_eq(fo_optimizer_param_ptr(opt, t, &pp), FO_SUCCESS);
      cr_assert_eq(fo_optimizer_grad_ptr(opt, t, &gg), FO_SUCCESS);
      p[t] = pp;
      gr[t] = gg;
      memcpy(p[t], g->init[t], (size_t)g->numel[t] * sizeof(float));
    }
    cr_assert_eq(fo_optimizer_sync_master(opt, NULL), FO_SUCCESS);
  }
  for (int s = 0; s < g->steps; ++s) {
    for (int t = 0; t < g->nt; ++t)
      memcpy(gr[t], g->grad[s][t], (size_t)g->numel[t] * sizeof(float));
    cr_assert_eq(fo_optimizer_step(opt, NULL), FO_SUCCESS, "%s: step %d: %s", g->name, s,
                 fo_last_error());
  }
  for (int t = 0; t < g->nt; ++t) {
    compare(g, sto, "param", t, g->final[t], p[t]);
    for (int k = 0; k < ST_COUNT; ++k) {
      if (!g->state[k][t]) continue;
      float *s = NULL;
      fo_status st = fo_optimizer_state_ptr(opt, t, STATE_ROLES[k], &s);
      cr_expect_eq(st, FO_SUCCESS, "%s: state_ptr(%s): %s", g->name, STATE_NAMES[k],
                   fo_last_error());
      if (st == FO_SUCCESS) compare(g, sto, STATE_NAMES[k], t, g->state[k][t], s);
    }
  }
  fo_optimizer_destroy(opt);
  if (sto == FO_STORAGE_EXTERNAL)
    for (int t = 0; t < g->nt; ++t) {
      free(p[t]);
      free(gr[t]);
    }
}

/* Replay every golden file of algorithm alg; returns how many there were. */
static int run_all(fo_algorithm alg) {
  DIR *dir = opendir(FO_GOLDEN_DIR);
  cr_assert_not_null(dir, "cannot open %s", FO_GOLDEN_DIR);
  struct dirent *e;
  int count = 0;
  while ((e = readdir(dir)) != NULL) {
    size_t len = strlen(e->d_name);
    if (len < 8 || strcmp(e->d_name + len - 7, ".golden") != 0) continue;
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", FO_GOLDEN_DIR, e->d_name);
    golden *g = calloc(1, sizeof *g);
    cr_assert_not_null(g);
    golden_load(g, path);
    if (g->alg == alg) {
      run_golden(g, FO_STORAGE_EXTERNAL);
      run_golden(g, FO_STORAGE_ARENA);
      ++count;
    }
    golden_free(g);
    free(g);
  }
  closedir(dir);
  if (getenv("FO_TEST_VERBOSE"))
    fprintf(stderr, "[golden %s] %d files, worst err/tol %.4f\n", tu_alg_name(alg), count,
            g_worst_ratio);
  return count;
}

Test(golden, sgd) {
  cr_expect_geq(run_all(FO_ALG_SGD), 4, "too few SGD golden files");
}

Test(golden, adam) {
  cr_expect_geq(run_all(FO_ALG_ADAM), 4, "too few Adam golden files");
}

Test(golden, adamw) {
  cr_expect_geq(run_all(FO_ALG_ADAMW), 4, "too few AdamW golden files");
}

Test(golden, adagrad) {
  cr_expect_geq(run_all(FO_ALG_ADAGRAD), 4, "too few Adagrad golden files");
}

Test(golden, rmsprop) {
  cr_expect_geq(run_all(FO_ALG_RMSPROP), 4, "too few RMSprop golden files");
}

Test(golden, nadam) {
  cr_expect_geq(run_all(FO_ALG_NADAM), 4, "too few NAdam golden files");
}
