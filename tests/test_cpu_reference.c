/*
 * test_cpu_reference.c -- the CPU executor against the independent
 * double-precision reference (tests/support/reference.c).
 *
 * The matrix: every algorithm x option (SGD momentum / dampening / Nesterov,
 * weight decay, AMSGrad, maximize) x parameter dtype x gradient dtype x
 * master weights (16-bit parameters) x storage mode, over tensors of odd
 * sizes (empty ones included) in two parameter groups with different
 * hyper-parameters, fresh random non-zero gradients every step, the learning
 * rate changed twice along the way, 20 steps.  After steps 1-3, 5, 8, 10,
 * 14, 15 and 20 the parameters, the master weights and every state buffer
 * are compared with the reference (checked_step()).
 *
 * Then: options that differ between the groups of one optimizer, 1 thread
 * against many (bit-identical), stochastic rounding (refused where it does
 * not apply, reproducible, seed-dependent, bracketing the exact value,
 * unbiased), and the public 16-bit conversions against the reference's
 * own.
 *
 * The tolerances are the named constants below; docs/numerics.md explains
 * each.  Set FO_TEST_VERBOSE=1 to print the worst error/tolerance ratio seen
 * per category.
 */
#define _POSIX_C_SOURCE 200809L
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fusedopt.h"
#include "reference.h"
#include "testutil.h"

/* ------------------------------------------------------------ tolerances */

/* fp32 quantities (fp32 parameters, master weights, moments, momentum
 * buffers) against the fp64 reference: element i passes when
 *   |got - want| <= TOL_F32 * scale_i,
 * where scale_i is the largest magnitude that element (or, for a moment,
 * the gradient feeding it) has had so far.  The library rounds every
 * operation to fp32 (unit roundoff u = 2^-24 ~ 6e-8).  One step is at most
 * ~8 roundings per element, each an error of at most u times a magnitude
 * bounded by scale_i; over NUM_STEPS = 20 steps they add up to at most
 * ~160u ~ 1e-5 of scale_i.  The running maximum (not the final value) is
 * the right scale because an element that has shrunk or crossed zero
 * carries the absolute error of the larger values it was computed from.
 * The step scalars (lr, betas, 1 - lr*wd, bias corrections) are fp32
 * roundings of the exact values, another u each.  Observed worst errors
 * are well below this bound (FO_TEST_VERBOSE=1 prints them); a wrong
 * formula (eps placement, a bias correction one step off, a missing
 * dampening) gives errors of 1e-3 and more. */
#define TOL_F32 1e-5

/* 16-bit parameters with master weights: the parameter is the rounding of
 * the master weight, so it may differ from round16(reference master) by
 * one ulp of the 16-bit type where the master lies within the fp32 error of
 * a rounding boundary.  Separately, every 16-bit parameter must be exactly
 * RNE(library's own master weight). */
#define TOL_16_MASTER_ULPS 1.0

/* 16-bit parameters without master weights: the stored value is fed back,
 * so a rounding that lands within fp32 error of a tie (probability ~ fp32
 * error / 16-bit ulp, 1e-5 to 1e-4 per element and step) makes the library
 * and the reference differ by one 16-bit ulp from then on.  Two such events
 * in one element are rare but possible over 20 steps: 2 ulps.  A systematic
 * rounding error (truncation, double rounding, wrong tie rule) would touch a
 * large fraction of the elements, so the fraction of elements that differ
 * at all is bounded too. */
#define TOL_16_NOMASTER_ULPS 2.0 /* at the element's largest magnitude */
#define TOL_16_FLIP_FRACTION 0.01

/* Gradients are drawn with magnitude in [GRAD_MIN, GRAD_MAX], random sign,
 * fresh every step, and redrawn while the reference's sensitivity (Adam:
 * the gradient after L2 decay; Lion: the interpolation c whose sign is the
 * update) is below SENS_MIN: near zero those are ill-conditioned (the first
 * Adam step is lr*d/(|d|+eps); sign(c) flips), and fp32 against fp64 would
 * legitimately disagree there.  SENS_MIN is 1e5 times the fp32 error of
 * these quantities. */
#define GRAD_MIN 0.05
#define GRAD_MAX 1.0
#define SENS_MIN 0.01
#define PARAM_INIT 1.0

#define NUM_STEPS 20
#define MAX_TENSORS 16
#define MAX_REPORTED 12

/* The matrix's tensors: odd sizes, empty ones, two groups. */
static const int64_t MATRIX_SIZES[] = {1, 7, 1000, 0, 4099, 33, 0};
static const int MATRIX_GROUPS[] = {0, 1, 0, 1, 1, 0, 1};
#define MATRIX_TENSORS ((int)(sizeof MATRIX_SIZES / sizeof MATRIX_SIZES[0]))

/* ------------------------------------------------------- configurations */

typedef struct opt_flags {
  int momentum; /* SGD: 0 none, 1 plain, 2 with dampening, 3 Nesterov */
  int wd;
  int amsgrad;
  int maximize;
} opt_flags;

typedef struct run_cfg {
  fo_algorithm alg;
  opt_flags f; /* options of group 0, and of group 1 unless mixed */
  int mixed;
  opt_flags f1; /* options of group 1 when mixed */
  fo_dtype pdt, gdt;
  int master;
  fo_storage storage;
  int threads;
  int sr;
  uint64_t sr_seed;
  uint64_t seed;
} run_cfg;

static void describe_flags(fo_algorithm alg, const opt_flags *f, char *buf, size_t cap) {
  static const char *mom[] = {"", " momentum", " momentum+dampening", " nesterov"};
  snprintf(buf, cap, "%s%s%s%s", alg == FO_ALG_SGD ? mom[f->momentum] : "", f->wd ? " wd" : "",
           f->amsgrad ? " amsgrad" : "", f->maximize ? " maximize" : "");
}

static void describe(const run_cfg *c, char *buf, size_t cap) {
  char f0[96], f1[112] = "";
  describe_flags(c->alg, &c->f, f0, sizeof f0);
  if (c->mixed) {
    char g1[96];
    describe_flags(c->alg, &c->f1, g1, sizeof g1);
    snprintf(f1, sizeof f1, " | group 1:%s", g1[0] ? g1 : " plain");
  }
  snprintf(buf, cap, "%s%s%s param=%s grad=%s%s %s threads=%d%s", tu_alg_name(c->alg), f0, f1,
           tu_dtype_name(c->pdt), tu_dtype_name(c->gdt),
           c->pdt == FO_DTYPE_F32 ? "" : (c->master ? " master" : " no-master"),
           c->storage == FO_STORAGE_ARENA ? "arena" : "external", c->threads, c->sr ? " sr" : "");
}

/* The hyper-parameters of group g (0 or 1): the two groups differ in every
 * numeric value.  The learning rates and decays are "generic" floats (not
 * 0.05 or 0.01): an fp32 constant close to a short decimal times a 16-bit
 * gradient often lands within fp32 rounding of a 16-bit tie, and fp32
 * arithmetic followed by RNE then legitimately differs by one 16-bit ulp
 * from rounding the exact value (docs/numerics.md, "double rounding"); such
 * data would turn a rare event into a common one.  Group 1's eps is large
 * enough (comparable to sqrt(v_hat)) that its placement matters. */
static void make_hparams(fo_algorithm alg, const opt_flags *f, int g, fo_hparams *h) {
  cr_assert_eq(fo_hparams_default(alg, h), FO_SUCCESS);
  h->maximize = f->maximize;
  switch (alg) {
    case FO_ALG_SGD:
      h->lr = g ? 0.0213f : 0.0517f;
      h->momentum = f->momentum ? (g ? 0.613f : 0.893f) : 0.0f;
      h->dampening = f->momentum == 2 ? (g ? 0.317f : 0.109f) : 0.0f;
      h->nesterov = f->momentum == 3;
      h->weight_decay = f->wd ? (g ? 0.0493f : 0.0107f) : 0.0f;
      break;
    case FO_ALG_ADAM:
    case FO_ALG_ADAMW:
      h->lr = g ? 0.00407f : 0.0103f;
      h->beta1 = g ? 0.8f : 0.9f;
      h->beta2 = g ? 0.99f : 0.999f;
      h->eps = g ? 0.0213f : 1e-8f;
      h->amsgrad = f->amsgrad;
      if (alg == FO_ALG_ADAM)
        h->weight_decay = f->wd ? (g ? 0.0317f : 0.0973f) : 0.0f;
      else
        h->weight_decay = f->wd ? (g ? 0.213f : 0.0973f) : 0.0f;
      break;
    default:
      h->lr = g ? 0.00307f : 0.0101f;
      h->beta1 = g ? 0.95f : 0.9f;
      h->beta2 = g ? 0.98f : 0.99f;
      h->weight_decay = f->wd ? (g ? 0.317f : 0.0973f) : 0.0f;
      break;
  }
}

/* Every option combination of alg. */
static int flag_list(fo_algorithm alg, opt_flags *out) {
  int n = 0;
  int moms = alg == FO_ALG_SGD ? 4 : 1;
  int ams = (alg == FO_ALG_ADAM || alg == FO_ALG_ADAMW) ? 2 : 1;
  for (int mo = 0; mo < moms; ++mo)
    for (int a = 0; a < ams; ++a)
      for (int wd = 0; wd < 2; ++wd)
        for (int mx = 0; mx < 2; ++mx) out[n++] = (opt_flags){mo, wd, a, mx};
  return n;
}

/* ---------------------------------------------------------------- stats */

/* The worst error/tolerance ratio per category, over the whole process. */
typedef struct tol_stats {
  double f32_param, master, p16_master, p16_nomaster, state;
  int64_t flips, flip_total;
} tol_stats;

static tol_stats g_stats;

static void note(double *slot, const tu_report *r) {
  if (r->worst >= 0 && r->worst_tol > 0) {
    double q = r->worst_err / r->worst_tol;
    if (q > *slot) *slot = q;
  }
}

static void print_stats(const char *what) {
  if (!getenv("FO_TEST_VERBOSE")) return;
  fprintf(stderr,
          "[%s] worst err/tol: f32 param %.3f, master %.3f, 16-bit param "
          "(master) %.3f, 16-bit param (no master) %.3f, state %.3f; "
          "16-bit no-master elements differing: %lld of %lld\n",
          what, g_stats.f32_param, g_stats.master, g_stats.p16_master, g_stats.p16_nomaster,
          g_stats.state, (long long)g_stats.flips, (long long)g_stats.flip_total);
}

/* --------------------------------------------------------------- harness */

typedef struct harness {
  run_cfg c;
  int nt;
  int64_t numel[MAX_TENSORS];
  int group[MAX_TENSORS];
  fo_hparams hp[2];
  ref_optimizer *ref;
  fo_optimizer *opt;
  tu_buffer pbuf[MAX_TENSORS], gbuf[MAX_TENSORS];
  double *gval[MAX_TENSORS];
  /* running maxima of |parameter| and of |m| (SGD buffer), |v| per element:
   * the magnitudes the tolerances scale with */
  double *pscale[MAX_TENSORS], *mscale[MAX_TENSORS], *vscale[MAX_TENSORS];
  double *lim; /* scratch: per-element tolerances */
  tu_rng rng;
} harness;

#define FAIL(...)                    \
  do {                               \
    snprintf(msg, cap, __VA_ARGS__); \
    return 0;                        \
  } while (0)

static void *param_ptr(const harness *h, int t) {
  void *p = NULL;
  if (h->c.storage == FO_STORAGE_EXTERNAL) return tu_buffer_data(&h->pbuf[t]);
  cr_assert_eq(fo_optimizer_param_ptr(h->opt, t, &p), FO_SUCCESS, "%s", fo_last_error());
  return p;
}

static void *grad_ptr(const harness *h, int t) {
  void *p = NULL;
  if (h->c.storage == FO_STORAGE_EXTERNAL) return tu_buffer_data(&h->gbuf[t]);
  cr_assert_eq(fo_optimizer_grad_ptr(h->opt, t, &p), FO_SUCCESS, "%s", fo_last_error());
  return p;
}

static void harness_free(harness *h) {
  fo_optimizer_destroy(h->opt);
  ref_destroy(h->ref);
  for (int t = 0; t < h->nt; ++t) {
    if (h->pbuf[t].block) tu_buffer_free(&h->pbuf[t]);
    if (h->gbuf[t].block) tu_buffer_free(&h->gbuf[t]);
    free(h->gval[t]);
    free(h->pscale[t]);
    free(h->mscale[t]);
    free(h->vscale[t]);
  }
  free(h->lim);
  memset(h, 0, sizeof *h);
}

/* Build the reference and the library optimizer over the same random
 * initial parameters.  Returns 1, or 0 with msg set. */
static int harness_init(harness *h, const run_cfg *c, const int64_t *sizes, const int *groups,
                        int nt, char *msg, size_t cap) {
  memset(h, 0, sizeof *h);
  h->c = *c;
  h->nt = nt;
  for (int g = 0; g < 2; ++g)
    make_hparams(c->alg, g == 1 && c->mixed ? &c->f1 : &c->f, g, &h->hp[g]);
  memcpy(h->numel, sizes, (size_t)nt * sizeof *sizes);
  memcpy(h->group, groups, (size_t)nt * sizeof *groups);
  tu_rng_seed(&h->rng, c->seed, 7);

  h->ref = ref_create(c->alg, c->pdt, c->master, h->hp, 2, h->numel, h->group, nt);
  cr_assert_not_null(h->ref);
  size_t psz = fo_dtype_size(c->pdt), gsz = fo_dtype_size(c->gdt);
  fo_tensor_desc desc[MAX_TENSORS];
  memset(desc, 0, sizeof desc);
  int64_t nmax = 1;
  for (int t = 0; t < nt; ++t) nmax = h->numel[t] > nmax ? h->numel[t] : nmax;
  h->lim = calloc((size_t)nmax, sizeof(double));
  cr_assert_not_null(h->lim);
  for (int t = 0; t < nt; ++t) {
    int64_t n = h->numel[t];
    size_t n1 = (size_t)(n > 0 ? n : 1);
    double *init = malloc(n1 * sizeof(double));
    h->gval[t] = calloc(n1, sizeof(double));
    h->pscale[t] = calloc(n1, sizeof(double));
    h->mscale[t] = calloc(n1, sizeof(double));
    h->vscale[t] = calloc(n1, sizeof(double));
    cr_assert(init && h->gval[t] && h->pscale[t] && h->mscale[t] && h->vscale[t]);
    tu_fill_range(&h->rng, init, n, -PARAM_INIT, PARAM_INIT);
    ref_set_params(h->ref, t, init);
    for (int64_t i = 0; i < n; ++i) h->pscale[t][i] = fabs(h->ref->tensors[t].param[i]);
    free(init);
    desc[t].numel = n;
    desc[t].group = h->group[t];
    desc[t].name = NULL; /* saved as "tensor.<t>": names must be distinct */
    if (c->storage == FO_STORAGE_EXTERNAL) {
      /* misaligned by a varying number of elements */
      void *p = tu_buffer_alloc(&h->pbuf[t], (size_t)n * psz, (size_t)(t % 4) * psz);
      void *g = tu_buffer_alloc(&h->gbuf[t], (size_t)n * gsz, (size_t)((t + 1) % 4) * gsz);
      cr_assert(p && g);
      for (int64_t i = 0; i < n; ++i) ref_store(c->pdt, p, i, h->ref->tensors[t].param[i]);
      desc[t].param = p;
      desc[t].grad = g;
    }
  }

  fo_options o;
  cr_assert_eq(fo_options_default(&o), FO_SUCCESS);
  o.algorithm = c->alg;
  o.executor = FO_EXEC_CPU;
  o.storage = c->storage;
  o.param_dtype = c->pdt;
  o.grad_dtype = c->gdt;
  o.master_weights = c->master;
  o.num_threads = c->threads;
  o.stochastic_rounding = c->sr;
  o.seed = c->sr_seed;
  fo_status st = fo_optimizer_create(&h->opt, &o, h->hp, 2, desc, nt);
  if (st != FO_SUCCESS) FAIL("fo_optimizer_create: %s: %s", fo_status_string(st), fo_last_error());

  if (c->storage == FO_STORAGE_ARENA) {
    for (int t = 0; t < nt; ++t) {
      if (h->numel[t] == 0) continue;
      void *p = param_ptr(h, t);
      if ((uintptr_t)p % 256u != 0)
        FAIL("arena param pointer of tensor %d is not 256-byte aligned", t);
      for (int64_t i = 0; i < h->numel[t]; ++i)
        ref_store(c->pdt, p, i, h->ref->tensors[t].param[i]);
    }
    st = fo_optimizer_sync_master(h->opt, NULL);
    if (st != FO_SUCCESS) FAIL("fo_optimizer_sync_master: %s", fo_last_error());
  }
  return 1;
}

/* Fresh random non-zero gradients, rounded to the gradient dtype, drawn so
 * that the reference's sensitivity is not tiny; written to the library's
 * gradient buffers and kept in gval for the reference. */
static void harness_grads(harness *h) {
  for (int t = 0; t < h->nt; ++t) {
    int64_t n = h->numel[t];
    if (n == 0) continue;
    void *gp = grad_ptr(h, t);
    for (int64_t i = 0; i < n; ++i) {
      double g = 0.0;
      for (int tries = 0; tries < 1000; ++tries) {
        ref_store(h->c.gdt, gp, i, tu_rng_nonzero(&h->rng, GRAD_MIN, GRAD_MAX));
        g = ref_load(h->c.gdt, gp, i);
        if (fabs(ref_sensitivity(h->ref, t, i, g)) >= SENS_MIN) break;
      }
      h->gval[t][i] = g;
    }
  }
}

static double max3(double a, double b, double c) {
  double m = a > b ? a : b;
  return m > c ? m : c;
}

static int harness_step(harness *h, char *msg, size_t cap) {
  ref_step(h->ref, (const double *const *)h->gval);
  for (int t = 0; t < h->nt; ++t) {
    const ref_tensor *R = &h->ref->tensors[t];
    for (int64_t i = 0; i < h->numel[t]; ++i) {
      h->pscale[t][i] = max3(h->pscale[t][i], fabs(R->param[i]), fabs(R->exact[i]));
      if (fabs(R->w[i]) > h->pscale[t][i]) h->pscale[t][i] = fabs(R->w[i]);
      if (fabs(R->m[i]) > h->mscale[t][i]) h->mscale[t][i] = fabs(R->m[i]);
      h->vscale[t][i] = max3(h->vscale[t][i], R->v[i], R->vmax[i]);
    }
  }
  fo_status st = fo_optimizer_step(h->opt, NULL);
  if (st != FO_SUCCESS) FAIL("fo_optimizer_step: %s: %s", fo_status_string(st), fo_last_error());
  return 1;
}

/* Compare one fp32 state buffer of tensor t with the reference's, against
 * the per-element limits in h->lim. */
static int check_state(harness *h, int t, fo_role role, const char *name, const double *want,
                       int step, char *msg, size_t cap) {
  float *s = NULL;
  fo_status st = fo_optimizer_state_ptr(h->opt, t, role, &s);
  if (st != FO_SUCCESS)
    FAIL("step %d: fo_optimizer_state_ptr(tensor %d, %s): %s", step, t, name, fo_last_error());
  tu_report rep;
  int ok = tu_compare_limits(&rep, want, s, FO_DTYPE_F32, h->numel[t], h->lim);
  note(role == FO_ROLE_MASTER ? &g_stats.master : &g_stats.state, &rep);
  if (!ok) {
    char line[512], label[64];
    snprintf(label, sizeof label, "%s of tensor %d (group %d)", name, t, h->group[t]);
    tu_report_format(&rep, label, line, sizeof line);
    FAIL("after step %d: %s", step, line);
  }
  return 1;
}

/* The tolerance of a parameter that has had magnitude up to scale. */
static double param_tol(const run_cfg *c, double scale, double want) {
  if (c->pdt == FO_DTYPE_F32) return TOL_F32 * scale;
  if (c->master) return TOL_F32 * scale + TOL_16_MASTER_ULPS * ref_ulp(c->pdt, want);
  return TOL_F32 * scale + TOL_16_NOMASTER_ULPS * ref_ulp(c->pdt, scale);
}

/* Compare everything after step `step` (1-based). */
static int harness_check(harness *h, int step, int final, char *msg, size_t cap) {
  const run_cfg *c = &h->c;
  int sixteen = c->pdt != FO_DTYPE_F32;
  int nomaster16 = sixteen && !c->master;
  int64_t differing = 0, total = 0;
  for (int t = 0; t < h->nt; ++t) {
    int64_t n = h->numel[t];
    if (n == 0) continue;
    const ref_tensor *R = &h->ref->tensors[t];
    const fo_hparams *hp = &h->hp[h->group[t]];
    const double *ps = h->pscale[t];
    double *lim = h->lim;
    void *pp = param_ptr(h, t);
    char line[512], label[64];
    tu_report rep;

    /* parameters */
    if (!c->sr) {
      for (int64_t i = 0; i < n; ++i) lim[i] = param_tol(c, ps[i], R->param[i]);
      int ok = tu_compare_limits(&rep, R->param, pp, c->pdt, n, lim);
      note(
          !sixteen ? &g_stats.f32_param : (c->master ? &g_stats.p16_master : &g_stats.p16_nomaster),
          &rep);
      differing += rep.inexact;
      total += n;
      if (!ok) {
        snprintf(label, sizeof label, "param of tensor %d (group %d)", t, h->group[t]);
        tu_report_format(&rep, label, line, sizeof line);
        FAIL("after step %d: %s", step, line);
      }
    }

    /* master weights, and the parameter is exactly their RNE rounding */
    if (sixteen && c->master) {
      for (int64_t i = 0; i < n; ++i) lim[i] = TOL_F32 * ps[i];
      if (!check_state(h, t, FO_ROLE_MASTER, "master", R->w, step, msg, cap)) return 0;
      float *ms = NULL;
      cr_assert_eq(fo_optimizer_state_ptr(h->opt, t, FO_ROLE_MASTER, &ms), FO_SUCCESS);
      for (int64_t i = 0; i < n; ++i) {
        double want = ref_round(c->pdt, (double)ms[i]);
        double got = ref_load(c->pdt, pp, i);
        if (got != want)
          FAIL(
              "after step %d: tensor %d param[%lld] = %.9g is not "
              "RNE(master = %.9g) = %.9g",
              step, t, (long long)i, got, (double)ms[i], want);
      }
    }

    /* State.  A moment's rounding errors scale with the gradients feeding
     * it (|d| <= GRAD_MAX + wd*|p| with L2 decay) as well as with its own
     * running maximum.  Without master weights, a 16-bit parameter may be
     * off the reference's by its tolerance dp; with L2 weight decay (SGD,
     * Adam) that enters the gradient as wd*dp, and the state carries it:
     * the momentum buffer with weight at most 1 + 1/(1-mu), m with weight
     * at most 1, v as (2|d| + wd*dp)*wd*dp. */
    int coupled = (c->alg == FO_ALG_SGD || c->alg == FO_ALG_ADAM) && hp->weight_decay != 0.0f;
    double wd = coupled ? hp->weight_decay : 0.0;
    double mw = c->alg == FO_ALG_SGD ? 1.0 + 1.0 / (1.0 - hp->momentum) : 1.0;
    /* roles this tensor's group does not use are not compared: what a
     * buffer the library keeps for another group holds there is not
     * specified */
    if (c->alg != FO_ALG_SGD || hp->momentum != 0.0f) {
      for (int64_t i = 0; i < n; ++i) {
        double dmax = GRAD_MAX + wd * ps[i];
        double dd = nomaster16 ? wd * param_tol(c, ps[i], 0.0) : 0.0;
        double sc = h->mscale[t][i] > dmax ? h->mscale[t][i] : dmax;
        lim[i] = TOL_F32 * sc + mw * dd;
      }
      if (!check_state(h, t, FO_ROLE_EXP_AVG, c->alg == FO_ALG_SGD ? "momentum_buffer" : "exp_avg",
                       R->m, step, msg, cap))
        return 0;
    }
    if (c->alg == FO_ALG_ADAM || c->alg == FO_ALG_ADAMW) {
      for (int64_t i = 0; i < n; ++i) {
        double dmax = GRAD_MAX + wd * ps[i];
        double dd = nomaster16 ? wd * param_tol(c, ps[i], 0.0) : 0.0;
        lim[i] = TOL_F32 * h->vscale[t][i] + (2.0 * dmax + dd) * dd;
      }
      if (!check_state(h, t, FO_ROLE_EXP_AVG_SQ, "exp_avg_sq", R->v, step, msg, cap)) return 0;
      if (hp->amsgrad &&
          !check_state(h, t, FO_ROLE_MAX_EXP_AVG_SQ, "max_exp_avg_sq", R->vmax, step, msg, cap))
        return 0;
    }
  }
  if (nomaster16 && final && !c->sr) {
    g_stats.flips += differing;
    g_stats.flip_total += total;
    if ((double)differing > TOL_16_FLIP_FRACTION * (double)total)
      FAIL(
          "after step %d: %lld of %lld 16-bit parameters differ from the "
          "reference (more than %.1f%%: a systematic rounding difference)",
          step, (long long)differing, (long long)total, 100.0 * TOL_16_FLIP_FRACTION);
  }
  return 1;
}

/* Change the learning rate of one group, then of all, in both. */
static int harness_set_lr(harness *h, int step, char *msg, size_t cap) {
  int group = -2;
  float lr = 0.0f;
  if (step == 7) {
    group = 0;
    lr = h->hp[0].lr * 0.5f;
  } else if (step == 13) {
    group = -1;
    lr = h->hp[1].lr * 1.5f;
  }
  if (group == -2) return 1;
  fo_status st = fo_optimizer_set_lr(h->opt, group, lr);
  if (st != FO_SUCCESS) FAIL("fo_optimizer_set_lr: %s", fo_last_error());
  ref_set_lr(h->ref, group, lr);
  for (int g = 0; g < 2; ++g) {
    float got = -1.0f;
    cr_assert_eq(fo_optimizer_get_lr(h->opt, g, &got), FO_SUCCESS);
    if (got != h->ref->groups[g].lr)
      FAIL("fo_optimizer_get_lr(%d) = %g after set_lr(%d, %g), want %g", g, (double)got, group,
           (double)lr, (double)h->ref->groups[g].lr);
  }
  return 1;
}

static int harness_guards(const harness *h, char *msg, size_t cap) {
  if (h->c.storage != FO_STORAGE_EXTERNAL) return 1;
  for (int t = 0; t < h->nt; ++t) {
    if (!tu_buffer_guards_intact(&h->pbuf[t]))
      FAIL("bytes outside tensor %d's parameter buffer were written", t);
    if (!tu_buffer_guards_intact(&h->gbuf[t]))
      FAIL("bytes outside tensor %d's gradient buffer were written", t);
  }
  return 1;
}

/* Whether the matrix compares everything after step (1-based): the first
 * steps (SGD's first-step rule, bias corrections at their largest), the
 * steps right after each learning-rate change, every fifth, the last. */
static int checked_step(int step) {
  return step <= 3 || step % 5 == 0 || step == 8 || step == 14 || step == NUM_STEPS;
}

/* One configuration of the matrix, NUM_STEPS steps. */
static int run_case(const run_cfg *c, char *msg, size_t cap) {
  harness h;
  int ok = harness_init(&h, c, MATRIX_SIZES, MATRIX_GROUPS, MATRIX_TENSORS, msg, cap);
  for (int s = 0; ok && s < NUM_STEPS; ++s) {
    ok = harness_set_lr(&h, s, msg, cap);
    if (!ok) break;
    harness_grads(&h);
    ok = harness_step(&h, msg, cap);
    if (ok && checked_step(s + 1)) ok = harness_check(&h, s + 1, s + 1 == NUM_STEPS, msg, cap);
  }
  if (ok) {
    int64_t step = -1;
    cr_assert_eq(fo_optimizer_get_step(h.opt, &step), FO_SUCCESS);
    if (step != NUM_STEPS) {
      snprintf(msg, cap, "fo_optimizer_get_step = %lld, want %d", (long long)step, NUM_STEPS);
      ok = 0;
    }
  }
  if (ok) ok = harness_guards(&h, msg, cap);
  harness_free(&h);
  return ok;
}

/* FO_TEST_MAX_REPORTED overrides how many failing configurations are
 * printed per test. */
static int max_reported(void) {
  const char *e = getenv("FO_TEST_MAX_REPORTED");
  return e ? atoi(e) : MAX_REPORTED;
}

static const fo_dtype DTYPES[] = {FO_DTYPE_F32, FO_DTYPE_F16, FO_DTYPE_BF16};

static void run_matrix(fo_algorithm alg) {
  opt_flags flags[32];
  int nf = flag_list(alg, flags);
  int runs = 0, failures = 0;
  double t0 = tu_now();
  for (int k = 0; k < nf; ++k)
    for (int pi = 0; pi < 3; ++pi)
      for (int gi = 0; gi < 3; ++gi)
        for (int master = 1; master >= (DTYPES[pi] == FO_DTYPE_F32 ? 1 : 0); --master)
          for (int sto = 0; sto < 2; ++sto) {
            run_cfg c = {0};
            c.alg = alg;
            c.f = flags[k];
            c.pdt = DTYPES[pi];
            c.gdt = DTYPES[gi];
            c.master = master;
            c.storage = sto ? FO_STORAGE_ARENA : FO_STORAGE_EXTERNAL;
            c.threads = 1;
            c.seed = tu_hash(tu_hash((uint64_t)alg, (uint64_t)k),
                             (uint64_t)(pi * 100 + gi * 10 + master));
            char msg[1024];
            ++runs;
            if (!run_case(&c, msg, sizeof msg)) {
              ++failures;
              if (failures <= max_reported()) {
                char d[256];
                describe(&c, d, sizeof d);
                cr_expect(0, "%s: %s", d, msg);
              }
            }
          }
  char what[64];
  snprintf(what, sizeof what, "%s: %d runs, %.2f s", tu_alg_name(alg), runs, tu_now() - t0);
  print_stats(what);
  cr_expect_eq(failures, 0, "%s: %d of %d configurations failed", tu_alg_name(alg), failures, runs);
}

Test(cpu_reference, sgd, .timeout = 120) {
  run_matrix(FO_ALG_SGD);
}
Test(cpu_reference, adam, .timeout = 120) {
  run_matrix(FO_ALG_ADAM);
}
Test(cpu_reference, adamw, .timeout = 120) {
  run_matrix(FO_ALG_ADAMW);
}
Test(cpu_reference, lion, .timeout = 120) {
  run_matrix(FO_ALG_LION);
}

/* The boolean options are per group: the two groups of one optimizer differ
 * in them (momentum on in one, off in the other; AMSGrad in one; maximize
 * in one; Nesterov against dampening). */
Test(cpu_reference, mixed_group_options, .timeout = 60) {
  static const struct {
    fo_algorithm alg;
    opt_flags g0, g1;
  } mixes[] = {
      {FO_ALG_SGD, {3, 1, 0, 0}, {0, 0, 0, 1}},   {FO_ALG_SGD, {0, 1, 0, 0}, {2, 0, 0, 1}},
      {FO_ALG_SGD, {1, 0, 0, 1}, {3, 1, 0, 0}},   {FO_ALG_ADAM, {0, 1, 1, 0}, {0, 0, 0, 1}},
      {FO_ALG_ADAM, {0, 0, 0, 1}, {0, 1, 1, 0}},  {FO_ALG_ADAMW, {0, 1, 1, 1}, {0, 1, 0, 0}},
      {FO_ALG_ADAMW, {0, 0, 0, 0}, {0, 1, 1, 1}}, {FO_ALG_LION, {0, 1, 0, 1}, {0, 0, 0, 0}},
  };
  static const struct {
    fo_dtype p, g;
    int master;
  } dts[] = {{FO_DTYPE_F32, FO_DTYPE_F32, 1},
             {FO_DTYPE_BF16, FO_DTYPE_BF16, 1},
             {FO_DTYPE_F16, FO_DTYPE_F32, 0},
             {FO_DTYPE_BF16, FO_DTYPE_F16, 0}};
  int failures = 0, runs = 0;
  for (size_t k = 0; k < sizeof mixes / sizeof mixes[0]; ++k)
    for (size_t d = 0; d < sizeof dts / sizeof dts[0]; ++d)
      for (int sto = 0; sto < 2; ++sto) {
        run_cfg c = {0};
        c.alg = mixes[k].alg;
        c.f = mixes[k].g0;
        c.mixed = 1;
        c.f1 = mixes[k].g1;
        c.pdt = dts[d].p;
        c.gdt = dts[d].g;
        c.master = dts[d].master;
        c.storage = sto ? FO_STORAGE_ARENA : FO_STORAGE_EXTERNAL;
        c.threads = 1;
        c.seed = tu_hash(1000 + k, d * 2 + (size_t)sto);
        char msg[1024], desc[256];
        ++runs;
        if (!run_case(&c, msg, sizeof msg)) {
          describe(&c, desc, sizeof desc);
          if (++failures <= max_reported()) cr_expect(0, "%s: %s", desc, msg);
        }
      }
  cr_expect_eq(failures, 0, "%d of %d mixed-option configurations failed", failures, runs);
}

/* -------------------------------------------------- threads: bit-identical */

/* Sizes past the CPU executor's block size, so that one tensor is split
 * between threads. */
static const int64_t BIG_SIZES[] = {1, 7, 40000, 100003, 0, 16385, 3};
static const int BIG_GROUPS[] = {0, 1, 0, 1, 0, 1, 0};
#define BIG_TENSORS ((int)(sizeof BIG_SIZES / sizeof BIG_SIZES[0]))

/* Run cfg for a few steps and return the bytes of every parameter and state
 * buffer, concatenated. */
static unsigned char *snapshot_run(const run_cfg *c, int steps, size_t *len) {
  harness h;
  char msg[1024];
  cr_assert(harness_init(&h, c, BIG_SIZES, BIG_GROUPS, BIG_TENSORS, msg, sizeof msg), "%s", msg);
  for (int s = 0; s < steps; ++s) {
    harness_grads(&h);
    cr_assert(harness_step(&h, msg, sizeof msg), "%s", msg);
  }
  size_t cap = 0;
  for (int t = 0; t < h.nt; ++t) cap += (size_t)h.numel[t] * 4u * 5u;
  unsigned char *out = malloc(cap + 1);
  cr_assert_not_null(out);
  size_t at = 0;
  for (int t = 0; t < h.nt; ++t) {
    int64_t n = h.numel[t];
    if (n == 0) continue;
    size_t pb = (size_t)n * fo_dtype_size(c->pdt);
    memcpy(out + at, param_ptr(&h, t), pb);
    at += pb;
    for (int role = FO_ROLE_MASTER; role <= FO_ROLE_MAX_EXP_AVG_SQ; ++role) {
      float *s = NULL;
      if (fo_optimizer_state_ptr(h.opt, t, (fo_role)role, &s) != FO_SUCCESS) continue;
      memcpy(out + at, s, (size_t)n * sizeof(float));
      at += (size_t)n * sizeof(float);
    }
  }
  harness_free(&h);
  *len = at;
  return out;
}

Test(cpu_reference, threads_bit_identical, .timeout = 120) {
  const run_cfg base[] = {
      {.alg = FO_ALG_SGD,
       .f = {3, 1, 0, 0},
       .pdt = FO_DTYPE_F32,
       .gdt = FO_DTYPE_F32,
       .master = 1,
       .storage = FO_STORAGE_EXTERNAL},
      {.alg = FO_ALG_SGD,
       .f = {2, 1, 0, 1},
       .pdt = FO_DTYPE_F16,
       .gdt = FO_DTYPE_BF16,
       .master = 0,
       .storage = FO_STORAGE_ARENA},
      {.alg = FO_ALG_ADAM,
       .f = {0, 1, 1, 0},
       .pdt = FO_DTYPE_BF16,
       .gdt = FO_DTYPE_F16,
       .master = 1,
       .storage = FO_STORAGE_EXTERNAL},
      {.alg = FO_ALG_ADAMW,
       .f = {0, 1, 1, 1},
       .pdt = FO_DTYPE_F16,
       .gdt = FO_DTYPE_F32,
       .master = 0,
       .storage = FO_STORAGE_ARENA},
      {.alg = FO_ALG_ADAMW,
       .f = {0, 1, 0, 0},
       .pdt = FO_DTYPE_BF16,
       .gdt = FO_DTYPE_BF16,
       .master = 0,
       .storage = FO_STORAGE_EXTERNAL,
       .sr = 1,
       .sr_seed = 1234},
      {.alg = FO_ALG_LION,
       .f = {0, 1, 0, 1},
       .pdt = FO_DTYPE_BF16,
       .gdt = FO_DTYPE_F32,
       .master = 1,
       .storage = FO_STORAGE_ARENA},
  };
  const int thread_counts[] = {2, 4, 0};
  for (size_t k = 0; k < sizeof base / sizeof base[0]; ++k) {
    run_cfg c = base[k];
    c.seed = 99 + k;
    c.threads = 1;
    size_t n1 = 0;
    unsigned char *one = snapshot_run(&c, 4, &n1);
    for (size_t j = 0; j < sizeof thread_counts / sizeof thread_counts[0]; ++j) {
      c.threads = thread_counts[j];
      size_t nm = 0;
      unsigned char *many = snapshot_run(&c, 4, &nm);
      char d[256];
      describe(&c, d, sizeof d);
      cr_expect(n1 == nm && memcmp(one, many, n1) == 0, "%s: results differ from num_threads=1", d);
      free(many);
    }
    free(one);
  }
}

/* ---------------------------------------------------- stochastic rounding */

/* SR runs of every algorithm: each step's bf16 parameter must be one of the
 * two bf16 values bracketing the exact result (widened by the fp32
 * tolerance), and the reference then continues from the library's rounded
 * parameter, since SR's random bits are the library's own. */
Test(cpu_reference, sr_brackets_exact_value, .timeout = 60) {
  const fo_algorithm algs[] = {FO_ALG_SGD, FO_ALG_ADAM, FO_ALG_ADAMW, FO_ALG_LION};
  for (int a = 0; a < 4; ++a)
    for (int gi = 0; gi < 3; ++gi) {
      run_cfg c = {.alg = algs[a],
                   .f = {1, 1, 1, a % 2},
                   .pdt = FO_DTYPE_BF16,
                   .gdt = DTYPES[gi],
                   .master = 0,
                   .storage = gi == 1 ? FO_STORAGE_ARENA : FO_STORAGE_EXTERNAL,
                   .threads = 2,
                   .sr = 1,
                   .sr_seed = 77,
                   .seed = 5 + gi};
      char d[256], msg[1024];
      describe(&c, d, sizeof d);
      harness h;
      cr_assert(harness_init(&h, &c, MATRIX_SIZES, MATRIX_GROUPS, MATRIX_TENSORS, msg, sizeof msg),
                "%s: %s", d, msg);
      int64_t rounded_up = 0, rounded_down = 0;
      for (int s = 0; s < 10; ++s) {
        harness_grads(&h);
        cr_assert(harness_step(&h, msg, sizeof msg), "%s: %s", d, msg);
        cr_assert(harness_check(&h, s + 1, 0, msg, sizeof msg), "%s: %s", d,
                  msg); /* state only: parameters are checked here */
        for (int t = 0; t < h.nt; ++t) {
          int64_t n = h.numel[t];
          if (n == 0) continue;
          const ref_tensor *R = &h.ref->tensors[t];
          void *pp = param_ptr(&h, t);
          double *next = malloc((size_t)n * sizeof(double));
          cr_assert_not_null(next);
          for (int64_t i = 0; i < n; ++i) {
            double x = R->exact[i];
            double e = TOL_F32 * h.pscale[t][i];
            double lo, hi, lo2, hi2;
            ref_bracket(FO_DTYPE_BF16, x - e, &lo, &hi);
            ref_bracket(FO_DTYPE_BF16, x + e, &lo2, &hi2);
            double got = ref_load(FO_DTYPE_BF16, pp, i);
            cr_assert(got >= lo && got <= hi2,
                      "%s: step %d tensor %d [%lld]: %.9g is not a bf16 "
                      "neighbour of the exact %.9g ([%.9g, %.9g])",
                      d, s + 1, t, (long long)i, got, x, lo, hi2);
            if (got > x) ++rounded_up;
            if (got < x) ++rounded_down;
            next[i] = got;
          }
          ref_set_params(h.ref, t, next);
          free(next);
        }
      }
      /* both directions occur: it is not a directed rounding */
      cr_expect(rounded_up > 100 && rounded_down > 100, "%s: rounded up %lld, down %lld times", d,
                (long long)rounded_up, (long long)rounded_down);
      harness_free(&h);
    }
}

Test(cpu_reference, sr_reproducible_and_seeded, .timeout = 60) {
  const fo_algorithm algs[] = {FO_ALG_SGD, FO_ALG_ADAMW, FO_ALG_LION};
  for (int a = 0; a < 3; ++a) {
    run_cfg c = {.alg = algs[a],
                 .f = {1, 1, 0, 0},
                 .pdt = FO_DTYPE_BF16,
                 .gdt = FO_DTYPE_F32,
                 .master = 0,
                 .storage = FO_STORAGE_EXTERNAL,
                 .threads = 2,
                 .sr = 1,
                 .sr_seed = 42,
                 .seed = 3};
    size_t n1, n2, n3;
    unsigned char *r1 = snapshot_run(&c, 3, &n1);
    unsigned char *r2 = snapshot_run(&c, 3, &n2);
    c.sr_seed = 43;
    unsigned char *r3 = snapshot_run(&c, 3, &n3);
    cr_expect(n1 == n2 && memcmp(r1, r2, n1) == 0, "%s: the same seed gave different results",
              tu_alg_name(c.alg));
    /* count the 2-byte units of the snapshots that differ */
    size_t differ = 0;
    for (size_t i = 0; i + 1 < n1 && i + 1 < n3; i += 2) differ += memcmp(r1 + i, r3 + i, 2) != 0;
    cr_expect(n1 == n3 && differ > 100, "%s: seeds 42 and 43 differ in only %zu values",
              tu_alg_name(c.alg), differ);
    free(r1);
    free(r2);
    free(r3);
  }
}

/* Stochastic rounding is for bf16 parameters without master weights only
 * (docs/numerics.md); anything else is refused, not silently ignored. */
Test(cpu_reference, sr_only_bf16_without_master) {
  static const struct {
    fo_dtype p;
    int master;
  } bad[] = {{FO_DTYPE_F16, 0}, {FO_DTYPE_F32, 0}, {FO_DTYPE_BF16, 1}};
  float p32[4] = {0}, g32[4] = {0};
  for (size_t k = 0; k < sizeof bad / sizeof bad[0]; ++k) {
    fo_options o;
    cr_assert_eq(fo_options_default(&o), FO_SUCCESS);
    o.algorithm = FO_ALG_SGD;
    o.param_dtype = bad[k].p;
    o.master_weights = bad[k].master;
    o.stochastic_rounding = 1;
    fo_hparams hp;
    cr_assert_eq(fo_hparams_default(FO_ALG_SGD, &hp), FO_SUCCESS);
    fo_tensor_desc d = {.numel = 4, .param = p32, .grad = g32};
    fo_optimizer *opt = NULL;
    fo_status st = fo_optimizer_create(&opt, &o, &hp, 1, &d, 1);
    cr_expect_eq(st, FO_ERR_UNSUPPORTED, "stochastic rounding with %s parameters, master %d: %s",
                 tu_dtype_name(bad[k].p), bad[k].master, fo_status_string(st));
    fo_optimizer_destroy(opt);
  }
}

/* Many tiny SGD updates, each far below half a bf16 ulp: round-to-nearest
 * loses every one of them, stochastic rounding accumulates them in
 * expectation.  The mean over N elements of (final - initial + sum of
 * updates) has mean 0 and standard deviation at most
 * sqrt(STEPS) * ulp / 2 / sqrt(N) under SR. */
#define SR_N 16384
#define SR_STEPS 200

static double sr_drift(int sr, double *mean_err, double *expected_drift) {
  fo_options o;
  cr_assert_eq(fo_options_default(&o), FO_SUCCESS);
  o.algorithm = FO_ALG_SGD;
  o.param_dtype = FO_DTYPE_BF16;
  o.grad_dtype = FO_DTYPE_F32;
  o.master_weights = 0;
  o.stochastic_rounding = sr;
  o.seed = 2024;
  o.num_threads = 2;
  fo_hparams hp;
  cr_assert_eq(fo_hparams_default(FO_ALG_SGD, &hp), FO_SUCCESS);
  hp.lr = 0x1p-14f; /* updates <= 1.5 * 2^-14 ~ 9e-5 << 2^-9 / 2 */
  hp.momentum = 0.0f;
  hp.weight_decay = 0.0f;
  uint16_t *p = malloc(SR_N * sizeof *p);
  float *g = malloc(SR_N * sizeof *g);
  double *p0 = malloc(SR_N * sizeof *p0);
  double *sum = calloc(SR_N, sizeof *sum);
  cr_assert(p && g && p0 && sum);
  tu_rng rng;
  tu_rng_seed(&rng, 11, 1);
  for (int i = 0; i < SR_N; ++i) {
    p[i] = ref_bf16_bits(tu_rng_range(&rng, 0.5, 2.0));
    p0[i] = ref_bf16_value(p[i]);
  }
  fo_tensor_desc d = {.numel = SR_N, .group = 0, .param = p, .grad = g};
  fo_optimizer *opt = NULL;
  cr_assert_eq(fo_optimizer_create(&opt, &o, &hp, 1, &d, 1), FO_SUCCESS, "%s", fo_last_error());
  for (int s = 0; s < SR_STEPS; ++s) {
    for (int i = 0; i < SR_N; ++i) {
      g[i] = (float)tu_rng_range(&rng, 0.5, 1.5);
      sum[i] += (double)hp.lr * (double)g[i];
    }
    cr_assert_eq(fo_optimizer_step(opt, NULL), FO_SUCCESS);
  }
  double err = 0.0, drift = 0.0, moved = 0.0;
  for (int i = 0; i < SR_N; ++i) {
    double pf = ref_bf16_value(p[i]);
    err += pf - (p0[i] - sum[i]);
    drift += sum[i];
    moved += p0[i] - pf;
  }
  fo_optimizer_destroy(opt);
  free(p);
  free(g);
  free(p0);
  free(sum);
  *mean_err = err / SR_N;
  *expected_drift = drift / SR_N;
  return moved / SR_N;
}

Test(cpu_reference, sr_unbiased_where_rne_loses_updates, .timeout = 60) {
  double err, want;
  double moved = sr_drift(0, &err, &want);
  cr_expect_eq(moved, 0.0,
               "round-to-nearest: tiny updates should all be lost, but the "
               "parameters moved by %g on average",
               moved);
  moved = sr_drift(1, &err, &want);
  /* per element the SR error has variance <= SR_STEPS * (2^-7)^2 / 4 */
  double sigma = sqrt((double)SR_STEPS) * 0x1p-7 / 2.0 / sqrt((double)SR_N);
  cr_expect(fabs(err) <= 5.0 * sigma,
            "stochastic rounding is biased: mean error %g (5 sigma = %g), "
            "moved %g of %g",
            err, 5.0 * sigma, moved, want);
  cr_expect(moved > 0.9 * want, "SR moved the parameters by %g, want %g", moved, want);
}

/* -------------------------------------------------- conversions (API) */

Test(cpu_reference, conversions_match_reference) {
  static uint16_t bits[65536];
  static float wide[65536];
  for (int dt = FO_DTYPE_F16; dt <= FO_DTYPE_BF16; ++dt) {
    for (uint32_t b = 0; b < 65536; ++b) bits[b] = (uint16_t)b;
    cr_assert_eq(fo_convert_to_f32((fo_dtype)dt, bits, wide, 65536), FO_SUCCESS);
    for (uint32_t b = 0; b < 65536; ++b) {
      double want = dt == FO_DTYPE_F16 ? ref_f16_value((uint16_t)b) : ref_bf16_value((uint16_t)b);
      cr_assert(wide[b] == want || (isnan(wide[b]) && isnan(want)),
                "%s 0x%04x widened to %.9g, want %.9g", tu_dtype_name((fo_dtype)dt), b,
                (double)wide[b], want);
    }
  }
  /* random fp32 bit patterns, the exact midpoints between 16-bit values
   * (ties) and their fp32 neighbours, overflow thresholds */
  enum { N = 1 << 16 };
  static float src[N];
  static uint16_t out[N];
  tu_rng rng;
  tu_rng_seed(&rng, 123, 0);
  for (int dt = FO_DTYPE_F16; dt <= FO_DTYPE_BF16; ++dt) {
    for (int i = 0; i < N; ++i) {
      int kind = i % 4;
      uint32_t u = tu_rng_u32(&rng);
      float f;
      if (kind == 0) {
        memcpy(&f, &u, sizeof f);
        if (isnan(f)) f = 1.0f;
      } else {
        /* a midpoint of two consecutive 16-bit values, nudged by 0 or +-1
         * fp32 ulp */
        uint16_t h = (uint16_t)(u & 0x7bffu);
        double a = dt == FO_DTYPE_F16 ? ref_f16_value(h) : ref_bf16_value(h);
        double b = dt == FO_DTYPE_F16 ? ref_f16_value((uint16_t)(h + 1))
                                      : ref_bf16_value((uint16_t)(h + 1));
        if (!isfinite(a) || !isfinite(b)) a = b = 1.0;
        f = (float)((a + b) / 2.0);
        if (kind == 2) f = nextafterf(f, INFINITY);
        if (kind == 3) f = nextafterf(f, -INFINITY);
        if (u & 0x80000000u) f = -f;
      }
      src[i] = f;
    }
    src[0] = 65519.99f;
    src[1] = 65520.0f;
    src[2] = 3.3895314e38f;
    src[3] = -0.0f;
    cr_assert_eq(fo_convert_from_f32((fo_dtype)dt, src, out, N), FO_SUCCESS);
    for (int i = 0; i < N; ++i) {
      uint16_t want = dt == FO_DTYPE_F16 ? ref_f16_bits(src[i]) : ref_bf16_bits(src[i]);
      cr_assert_eq(out[i], want, "%s: %a rounded to 0x%04x, want 0x%04x",
                   tu_dtype_name((fo_dtype)dt), (double)src[i], out[i], want);
    }
  }
}
