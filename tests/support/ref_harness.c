/*
 * ref_harness.c -- the CPU executor against the reference, side by side
 * (ref_harness.h).
 */
#define _POSIX_C_SOURCE 200809L

#include "ref_harness.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ tolerances */

const int64_t MATRIX_SIZES[MATRIX_TENSORS] = {1, 7, 1000, 0, 4099, 33, 0};

const int MATRIX_GROUPS[MATRIX_TENSORS] = {0, 1, 0, 1, 1, 0, 1};

/* ------------------------------------------------------- configurations */

void describe_flags(fo_algorithm alg, const opt_flags *f, char *buf, size_t cap) {
  static const char *mom[] = {"", " momentum", " momentum+dampening", " nesterov"};
  const char *m = "";
  if (alg == FO_ALG_SGD || alg == FO_ALG_LARS)
    m = mom[f->momentum];
  else if (alg == FO_ALG_RMSPROP && f->momentum)
    m = " momentum";
  const char *wd = "";
  if (f->wd) wd = alg == FO_ALG_NADAM ? (f->wd == 2 ? " decoupled-wd" : " l2-wd") : " wd";
  snprintf(buf, cap, "%s%s%s%s%s%s%s%s", m, f->centered ? " centered" : "", wd,
           f->amsgrad ? " amsgrad" : "", f->lr_decay ? " lr_decay" : "",
           f->init_acc ? " initial_accumulator" : "",
           f->no_adapt ? " no-layer-adaptation(group 1)" : "", f->maximize ? " maximize" : "");
}

void describe(const run_cfg *c, char *buf, size_t cap) {
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

void make_hparams(fo_algorithm alg, const opt_flags *f, int g, fo_hparams *h) {
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
    case FO_ALG_ADAGRAD:
      h->lr = g ? 0.0213f : 0.0517f;
      h->lr_decay = f->lr_decay ? (g ? 0.0317f : 0.113f) : 0.0f;
      h->initial_accumulator_value = f->init_acc ? (g ? 0.0731f : 0.317f) : 0.0f;
      h->eps = g ? 0.0213f : 1e-10f;
      h->weight_decay = f->wd ? (g ? 0.0493f : 0.0107f) : 0.0f;
      break;
    case FO_ALG_RMSPROP:
      /* the first step moves by about lr/sqrt(1-alpha): ten times lr */
      h->lr = g ? 0.00123f : 0.00317f;
      h->alpha = g ? 0.913f : 0.987f;
      h->momentum = f->momentum ? (g ? 0.613f : 0.893f) : 0.0f;
      h->centered = f->centered;
      h->eps = g ? 0.0173f : 1e-8f;
      h->weight_decay = f->wd ? (g ? 0.0317f : 0.0973f) : 0.0f;
      break;
    case FO_ALG_NADAM:
      h->lr = g ? 0.00407f : 0.0103f;
      h->beta1 = g ? 0.8f : 0.9f;
      h->beta2 = g ? 0.99f : 0.999f;
      h->eps = g ? 0.0213f : 1e-8f;
      h->momentum_decay = g ? 0.0517f : 0.00413f;
      h->decoupled_weight_decay = f->wd == 2;
      if (f->wd == 2)
        h->weight_decay = g ? 0.213f : 0.0973f;
      else
        h->weight_decay = f->wd ? (g ? 0.0317f : 0.0973f) : 0.0f;
      break;
    case FO_ALG_LAMB:
      h->lr = g ? 0.00407f : 0.0103f;
      h->beta1 = g ? 0.8f : 0.9f;
      h->beta2 = g ? 0.99f : 0.999f;
      h->eps = g ? 0.0213f : 1e-6f;
      h->weight_decay = f->wd ? (g ? 0.0317f : 0.0973f) : 0.0f;
      h->layer_adaptation = !(f->no_adapt && g == 1);
      break;
    case FO_ALG_LARS:
      /* a step of about lr * trust_coef * |w| per element */
      h->lr = g ? 0.713f : 1.37f;
      h->trust_coef = g ? 0.0213f : 0.0117f;
      h->momentum = f->momentum ? (g ? 0.613f : 0.893f) : 0.0f;
      h->dampening = f->momentum == 2 ? (g ? 0.317f : 0.109f) : 0.0f;
      h->nesterov = f->momentum == 3;
      h->weight_decay = f->wd ? (g ? 0.0493f : 0.0107f) : 0.0f;
      h->layer_adaptation = !(f->no_adapt && g == 1);
      if (!h->layer_adaptation) h->lr = 0.0213f; /* plain SGD on the gradient */
      break;
    default:
      h->lr = g ? 0.00307f : 0.0101f;
      h->beta1 = g ? 0.95f : 0.9f;
      h->beta2 = g ? 0.98f : 0.99f;
      h->weight_decay = f->wd ? (g ? 0.317f : 0.0973f) : 0.0f;
      break;
  }
}

int flag_list(fo_algorithm alg, opt_flags *out) {
  int n = 0;
  switch (alg) {
    case FO_ALG_ADAGRAD:
      for (int ld = 0; ld < 2; ++ld)
        for (int ia = 0; ia < 2; ++ia)
          for (int wd = 0; wd < 2; ++wd)
            for (int mx = 0; mx < 2; ++mx)
              out[n++] = (opt_flags){.wd = wd, .maximize = mx, .lr_decay = ld, .init_acc = ia};
      return n;
    case FO_ALG_RMSPROP:
      for (int ce = 0; ce < 2; ++ce)
        for (int mo = 0; mo < 2; ++mo)
          for (int wd = 0; wd < 2; ++wd)
            for (int mx = 0; mx < 2; ++mx)
              out[n++] = (opt_flags){.momentum = mo, .wd = wd, .maximize = mx, .centered = ce};
      return n;
    case FO_ALG_NADAM:
      for (int wd = 0; wd < 3; ++wd)
        for (int mx = 0; mx < 2; ++mx) out[n++] = (opt_flags){.wd = wd, .maximize = mx};
      return n;
    case FO_ALG_LAMB:
    case FO_ALG_LARS:
      for (int mo = 0; mo < (alg == FO_ALG_LARS ? 4 : 1); ++mo)
        for (int na = 0; na < 2; ++na)
          for (int wd = 0; wd < 2; ++wd)
            for (int mx = 0; mx < 2; ++mx)
              out[n++] = (opt_flags){.momentum = mo, .wd = wd, .maximize = mx, .no_adapt = na};
      return n;
    default: break;
  }
  int moms = alg == FO_ALG_SGD ? 4 : 1;
  int ams = (alg == FO_ALG_ADAM || alg == FO_ALG_ADAMW) ? 2 : 1;
  for (int mo = 0; mo < moms; ++mo)
    for (int a = 0; a < ams; ++a)
      for (int wd = 0; wd < 2; ++wd)
        for (int mx = 0; mx < 2; ++mx)
          out[n++] = (opt_flags){.momentum = mo, .wd = wd, .amsgrad = a, .maximize = mx};
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

void print_stats(const char *what) {
  if (!getenv("FO_TEST_VERBOSE")) return;
  fprintf(stderr,
          "[%s] worst err/tol: f32 param %.3f, master %.3f, 16-bit param "
          "(master) %.3f, 16-bit param (no master) %.3f, state %.3f; "
          "16-bit no-master elements differing: %lld of %lld\n",
          what, g_stats.f32_param, g_stats.master, g_stats.p16_master, g_stats.p16_nomaster,
          g_stats.state, (long long)g_stats.flips, (long long)g_stats.flip_total);
}

/* --------------------------------------------------------------- harness */

#define FAIL(...)                    \
  do {                               \
    snprintf(msg, cap, __VA_ARGS__); \
    return 0;                        \
  } while (0)

void *param_ptr(const harness *h, int t) {
  void *p = NULL;
  if (h->c.storage == FO_STORAGE_EXTERNAL) return tu_buffer_data(&h->pbuf[t]);
  cr_assert_eq(fo_optimizer_param_ptr(h->opt, t, &p), FO_SUCCESS, "%s", fo_last_error());
  return p;
}

void *grad_ptr(const harness *h, int t) {
  void *p = NULL;
  if (h->c.storage == FO_STORAGE_EXTERNAL) return tu_buffer_data(&h->gbuf[t]);
  cr_assert_eq(fo_optimizer_grad_ptr(h->opt, t, &p), FO_SUCCESS, "%s", fo_last_error());
  return p;
}

void harness_free(harness *h) {
  fo_optimizer_destroy(h->opt);
  ref_destroy(h->ref);
  for (int t = 0; t < h->nt; ++t) {
    if (h->pbuf[t].block) tu_buffer_free(&h->pbuf[t]);
    if (h->gbuf[t].block) tu_buffer_free(&h->gbuf[t]);
    free(h->gval[t]);
    free(h->pscale[t]);
    free(h->mscale[t]);
    free(h->vscale[t]);
    free(h->fscale[t]);
    free(h->dabs[t]);
    free(h->rel[t]);
    free(h->ebound[t]);
  }
  free(h->lim);
  memset(h, 0, sizeof *h);
}

int harness_init(harness *h, const run_cfg *c, const int64_t *sizes, const int *groups, int nt,
                 char *msg, size_t cap) {
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
    h->fscale[t] = calloc(n1, sizeof(double));
    h->dabs[t] = calloc(n1, sizeof(double));
    h->rel[t] = calloc(n1, sizeof(double));
    h->ebound[t] = calloc(n1, sizeof(double));
    cr_assert(init && h->gval[t] && h->pscale[t] && h->mscale[t] && h->vscale[t] && h->fscale[t] &&
              h->dabs[t] && h->rel[t] && h->ebound[t]);
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

void harness_grads(harness *h) {
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

int harness_step(harness *h, char *msg, size_t cap) {
  int track = harness_is_new_alg(h->c.alg) && h->c.pdt != FO_DTYPE_F32 && !h->c.master;
  if (track) harness_perturbation_before(h);
  ref_step(h->ref, (const double *const *)h->gval);
  if (track) harness_perturbation_after(h);
  for (int t = 0; t < h->nt; ++t) {
    const ref_tensor *R = &h->ref->tensors[t];
    for (int64_t i = 0; i < h->numel[t]; ++i) {
      h->pscale[t][i] = max3(h->pscale[t][i], fabs(R->param[i]), fabs(R->exact[i]));
      if (fabs(R->w[i]) > h->pscale[t][i]) h->pscale[t][i] = fabs(R->w[i]);
      if (fabs(R->m[i]) > h->mscale[t][i]) h->mscale[t][i] = fabs(R->m[i]);
      h->vscale[t][i] = max3(h->vscale[t][i], R->v[i], R->vmax[i]);
      if (R->feed[i] > h->fscale[t][i]) h->fscale[t][i] = R->feed[i];
    }
  }
  fo_status st = fo_optimizer_step(h->opt, NULL);
  if (st != FO_SUCCESS) FAIL("fo_optimizer_step: %s: %s", fo_status_string(st), fo_last_error());
  return 1;
}

/* Compare one fp32 state buffer of tensor t with the reference's, against
 * the per-element limits in h->lim. */
int harness_check_state(harness *h, int t, fo_role role, const char *name, const double *want,
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

int harness_check(harness *h, int step, int final, char *msg, size_t cap) {
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
      for (int64_t i = 0; i < n; ++i) lim[i] = harness_param_tol(c, ps[i], R->param[i]);
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
      if (!harness_check_state(h, t, FO_ROLE_MASTER, "master", R->w, step, msg, cap)) return 0;
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

    if (harness_is_new_alg(c->alg)) {
      if (!harness_check_new_state(h, t, step, msg, cap)) return 0;
      continue;
    }

    /* State.  A moment's rounding errors scale with the gradients feeding
     * it (|d| <= GRAD_MAX + wd*|p| with L2 decay) as well as with its own
     * running maximum.  Without master weights, a 16-bit parameter may be
     * off the reference's by its tolerance dp; with L2 weight decay (SGD,
     * Adam) that enters the gradient as wd*dp, and the state carries it:
     * the momentum buffer with weight at most 1 + 1/(1-mu), m with weight
     * at most 1, v as (2|d| + wd*dp)*wd*dp. */
    double wd = harness_l2_coupled(c->alg, hp) ? hp->weight_decay : 0.0;
    double mw = c->alg == FO_ALG_SGD ? 1.0 + 1.0 / (1.0 - hp->momentum) : 1.0;
    /* roles this tensor's group does not use are not compared: what a
     * buffer the library keeps for another group holds there is not
     * specified */
    if (c->alg != FO_ALG_SGD || hp->momentum != 0.0f) {
      for (int64_t i = 0; i < n; ++i) {
        double dmax = GRAD_MAX + wd * ps[i];
        double dd = nomaster16 ? wd * harness_param_tol(c, ps[i], 0.0) : 0.0;
        double sc = h->mscale[t][i] > dmax ? h->mscale[t][i] : dmax;
        lim[i] = TOL_F32 * sc + mw * dd;
      }
      if (!harness_check_state(h, t, FO_ROLE_EXP_AVG,
                               c->alg == FO_ALG_SGD ? "momentum_buffer" : "exp_avg", R->m, step,
                               msg, cap))
        return 0;
    }
    if (c->alg == FO_ALG_ADAM || c->alg == FO_ALG_ADAMW) {
      for (int64_t i = 0; i < n; ++i) {
        double dmax = GRAD_MAX + wd * ps[i];
        double dd = nomaster16 ? wd * harness_param_tol(c, ps[i], 0.0) : 0.0;
        lim[i] = TOL_F32 * h->vscale[t][i] + (2.0 * dmax + dd) * dd;
      }
      if (!harness_check_state(h, t, FO_ROLE_EXP_AVG_SQ, "exp_avg_sq", R->v, step, msg, cap))
        return 0;
      if (hp->amsgrad && !harness_check_state(h, t, FO_ROLE_MAX_EXP_AVG_SQ, "max_exp_avg_sq",
                                              R->vmax, step, msg, cap))
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

int harness_set_lr(harness *h, int step, char *msg, size_t cap) {
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

int harness_guards(const harness *h, char *msg, size_t cap) {
  if (h->c.storage != FO_STORAGE_EXTERNAL) return 1;
  for (int t = 0; t < h->nt; ++t) {
    if (!tu_buffer_guards_intact(&h->pbuf[t]))
      FAIL("bytes outside tensor %d's parameter buffer were written", t);
    if (!tu_buffer_guards_intact(&h->gbuf[t]))
      FAIL("bytes outside tensor %d's gradient buffer were written", t);
  }
  return 1;
}

int checked_step(int step) {
  return step <= 3 || step % 5 == 0 || step == 8 || step == 14 || step == NUM_STEPS;
}

int run_case(const run_cfg *c, char *msg, size_t cap) {
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

int max_reported(void) {
  const char *e = getenv("FO_TEST_MAX_REPORTED");
  return e ? atoi(e) : MAX_REPORTED;
}

const fo_dtype DTYPES[3] = {FO_DTYPE_F32, FO_DTYPE_F16, FO_DTYPE_BF16};

/* ------------------------------------------------------------ snapshots */

/* Sizes past the CPU executor's block size, so that one tensor is split
 * between threads. */
static const int64_t BIG_SIZES[] = {1, 7, 40000, 100003, 0, 16385, 3};
static const int BIG_GROUPS[] = {0, 1, 0, 1, 0, 1, 0};
#define BIG_TENSORS ((int)(sizeof BIG_SIZES / sizeof BIG_SIZES[0]))

/* Run cfg for a few steps and return the bytes of every parameter and state
 * buffer, concatenated. */
unsigned char *snapshot_run(const run_cfg *c, int steps, size_t *len) {
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
