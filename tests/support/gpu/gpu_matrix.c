/*
 * gpu_matrix.c -- the comparison rig of test_gpu_kernels_*.c
 * (gpu_matrix.h).
 *
 * Discontinuities are avoided by choosing the data, as in docs/numerics.md:
 * gradients are redrawn where Lion's c = b1*m + (1-b1)*d or the L2-decayed
 * gradient d = g + wd*w of a rule whose first step is close to sign(d)
 * (Adam, NAdam without decoupled decay, AdaGrad, RMSprop) cancels to below
 * 1e-3 of its terms.
 */
#define _POSIX_C_SOURCE 200809L /* setenv */

#include "gpu_matrix.h"

#include <criterion/criterion.h>
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cr_status.h"
#include "exec.h"
#include "internal.h"
#include "testutil.h"

/* ---------------------------------------------------------------- world */

/* Odd sizes around vectors, thread counts and the chunk, then many small
 * tensors, then a few large ones.  Placed for gpu_world.c's alignment
 * pattern (index % 3 == 0: the vector path): 65549 (3 chunks) at 18 takes
 * the vector path, 32769 at 19 the scalar one, and the first large tensor
 * (index 23 + N_SMALL = 174) the vector path. */
static const int64_t ODD_SIZES[] = {1,    2,    3,     5,     7,     8,   9,   15,
                                    16,   17,   31,    33,    255,   256, 257, 1023,
                                    4095, 4097, 65549, 32769, 32767, 0,   3};
#define N_SMALL 151

void mx_world_make(world *w, fo_dtype pt, fo_dtype gt, const int64_t *extra, int n_extra,
                   uint64_t seed) {
  tu_rng r;
  tu_rng_seed(&r, seed, 99);
  int64_t n_odd = (int64_t)(sizeof ODD_SIZES / sizeof ODD_SIZES[0]);
  int64_t nt = n_odd + N_SMALL + n_extra;
  int64_t *numel = calloc((size_t)nt, sizeof *numel);
  cr_assert_not_null(numel);
  for (int64_t i = 0; i < nt; i++) {
    if (i < n_odd)
      numel[i] = ODD_SIZES[i];
    else if (i < n_odd + N_SMALL)
      numel[i] = 1 + (int64_t)(tu_rng_u32(&r) % 400);
    else
      numel[i] = extra[i - n_odd - N_SMALL];
  }
  world_init(w, pt, gt, numel, nt);
  free(numel);
}

/* Every byte of a device buffer outside the tensors still poisoned. */
void mx_check_gaps(const dev *d, const world *w, const void *buf, size_t bytes, const size_t *off,
                   size_t elem, const char *what, const char *ctx) {
  unsigned char *h = malloc(bytes);
  cr_assert_not_null(h);
  dev_get(d, h, buf, bytes);
  size_t at = 0;
  for (int64_t i = 0; i <= w->nt; i++) {
    size_t end = i < w->nt ? off[i] : bytes;
    cr_assert(tu_is_poisoned(h + at, end - at),
              "%s: %s bytes [%zu, %zu) before tensor %lld were written", ctx, what, at, end,
              (long long)i);
    if (i < w->nt) at = off[i] + (size_t)w->numel[i] * elem;
  }
  free(h);
}

/* ------------------------------------------------------------ the matrix */

void cfg_name(const cfg *c, char *buf, size_t cap) {
  snprintf(buf, cap, "%s set %d param %s grad %s%s%s%s", tu_alg_name(c->alg), c->set,
           tu_dtype_name(c->pt), tu_dtype_name(c->gt),
           c->pt == FO_DTYPE_F32 ? "" : (c->master ? " master" : " no-master"),
           c->sr ? " stochastic" : "", c->storage == FO_STORAGE_ARENA ? " arena" : "");
}

/* Two groups; "generic" values (docs/numerics.md: short decimals times
 * 16-bit values land on 16-bit ties). */
void cfg_hparams(const cfg *c, fo_hparams h[2]) {
  for (int g = 0; g < 2; g++) OK(fo_hparams_default(c->alg, &h[g]));
  int b = c->set == 1;
  switch (c->alg) {
    case FO_ALG_SGD:
      if (!b) {
        h[0].lr = 0.0517f, h[0].momentum = 0.9f, h[0].dampening = 0.1f;
        h[0].weight_decay = 0.0113f;
        h[1].lr = 0.0213f;
      } else {
        h[0].lr = 0.0311f, h[0].momentum = 0.9f, h[0].nesterov = 1;
        h[0].weight_decay = 1.3e-3f, h[0].maximize = 1;
        h[1].lr = 0.0917f, h[1].momentum = 0.5f;
      }
      break;
    case FO_ALG_ADAM:
    case FO_ALG_ADAMW:
      if (!b) {
        h[0].lr = 1.07e-2f, h[0].weight_decay = 0.0913f;
        h[1].lr = 3.1e-3f, h[1].amsgrad = 1, h[1].weight_decay = 0.0f;
      } else {
        h[0].lr = 2.03e-2f, h[0].amsgrad = 1, h[0].maximize = 1, h[0].eps = 1.1e-6f;
        h[0].beta1 = 0.8f, h[0].beta2 = 0.95f;
        h[1].lr = 5.3e-3f;
      }
      break;
    case FO_ALG_ADAGRAD:
      h[0].lr = 2.07e-2f, h[0].weight_decay = b ? 0.0f : 0.0113f;
      h[0].lr_decay = 0.0137f, h[0].initial_accumulator_value = b ? 0.0f : 0.113f;
      h[0].maximize = b;
      h[1].lr = 1.03e-2f;
      break;
    case FO_ALG_RMSPROP:
      h[0].lr = 3.1e-3f, h[0].alpha = 0.93f, h[0].centered = !b, h[0].momentum = b ? 0.0f : 0.7f;
      h[0].weight_decay = b ? 0.0f : 0.0113f, h[0].maximize = b;
      h[1].lr = 1.07e-3f, h[1].centered = b, h[1].momentum = b ? 0.5f : 0.0f;
      break;
    case FO_ALG_NADAM:
      h[0].lr = 1.07e-2f, h[0].weight_decay = 0.0913f, h[0].decoupled_weight_decay = b;
      h[0].momentum_decay = 0.0041f, h[0].maximize = b;
      h[1].lr = 3.1e-3f;
      break;
    case FO_ALG_LAMB:
      h[0].lr = 1.07e-2f, h[0].weight_decay = 0.0913f, h[0].maximize = b;
      h[0].beta1 = b ? 0.8f : 0.9f, h[0].eps = 1.1e-6f;
      h[1].lr = 3.1e-3f, h[1].layer_adaptation = b, h[1].weight_decay = 0.0f;
      break;
    case FO_ALG_LARS:
      h[0].lr = 0.517f, h[0].momentum = 0.9f, h[0].nesterov = b, h[0].weight_decay = 0.0113f;
      h[0].trust_coef = 0.0213f, h[0].maximize = b;
      h[1].lr = 0.0917f, h[1].momentum = b ? 0.0f : 0.5f, h[1].layer_adaptation = !b;
      break;
    default:
      if (!b) {
        h[0].lr = 1.03e-3f, h[0].weight_decay = 0.0917f;
        h[1].lr = 3.1e-4f;
      } else {
        h[0].lr = 2.07e-3f, h[0].maximize = 1, h[0].beta1 = 0.95f, h[0].beta2 = 0.98f;
        h[1].lr = 1.13e-3f, h[1].weight_decay = 0.47f;
      }
      break;
  }
}

static void cfg_options(const cfg *c, int cuda, fo_options *o) {
  OK(fo_options_default(o));
  o->algorithm = c->alg;
  o->executor = cuda ? FO_EXEC_CUDA : FO_EXEC_CPU;
  o->storage = c->storage;
  o->param_dtype = c->pt;
  o->grad_dtype = c->gt;
  o->master_weights = c->master;
  o->stochastic_rounding = c->sr;
  o->seed = c->seed;
  if (c->set == 2) {
    o->max_grad_norm = 5.0f;
    o->schedule.kind = FO_SCHED_COSINE;
    o->schedule.warmup_steps = 2;
    o->schedule.total_steps = 8;
    o->loss_scaler.enabled = 1;
    o->loss_scaler.init_scale = 1024.0f;
    o->loss_scaler.growth_factor = 2.0f;
    o->loss_scaler.backoff_factor = 0.5f;
    o->loss_scaler.growth_interval = 3;
    o->loss_scaler.hysteresis = 1;
  }
}

/* An optimizer of the executor in d over the world: external tensors at
 * their offsets in pbuf/gbuf (packed back to back when packed != 0), or
 * an arena. */
fo_optimizer *gpu_make_opt(const cfg *c, const world *w, int cuda, unsigned char *pbuf,
                           unsigned char *gbuf, int packed) {
  fo_hparams h[2];
  cfg_hparams(c, h);
  fo_options o;
  cfg_options(c, cuda, &o);
  fo_tensor_desc *t = calloc((size_t)w->nt, sizeof *t);
  cr_assert_not_null(t);
  size_t ps = fo_dtype_size(w->pt), gs = fo_dtype_size(w->gt);
  for (int64_t i = 0; i < w->nt; i++) {
    t[i].numel = w->numel[i];
    t[i].group = w->group[i];
    if (c->storage == FO_STORAGE_EXTERNAL) {
      t[i].param = pbuf + (packed ? (size_t)w->hoff[i] * ps : w->poff[i]);
      t[i].grad = gbuf + (packed ? (size_t)w->hoff[i] * gs : w->goff[i]);
    }
  }
  fo_optimizer *opt = NULL;
  OK(fo_optimizer_create(&opt, &o, h, 2, t, w->nt));
  free(t);
  return opt;
}

void gather(const dev *d, fo_optimizer *opt, const world *w, result *r) {
  size_t ps = fo_dtype_size(w->pt);
  r->param = malloc((size_t)w->total * ps + 1);
  cr_assert_not_null(r->param);
  for (int64_t i = 0; i < w->nt; i++) {
    void *p = NULL;
    OK(fo_optimizer_param_ptr(opt, i, &p));
    dev_get(d, r->param + (size_t)w->hoff[i] * ps, p, (size_t)w->numel[i] * ps);
  }
  for (int k = 0; k < 4; k++) {
    float *p = NULL;
    r->state[k] = NULL;
    if (fo_optimizer_state_ptr(opt, 0, STATE_ROLES[k], &p) != FO_SUCCESS) continue;
    r->state[k] = malloc((size_t)w->total * 4 + 4);
    cr_assert_not_null(r->state[k]);
    for (int64_t i = 0; i < w->nt; i++) {
      OK(fo_optimizer_state_ptr(opt, i, STATE_ROLES[k], &p));
      dev_get(d, r->state[k] + w->hoff[i], p, (size_t)w->numel[i] * 4);
    }
  }
  OK(fo_optimizer_get_info(opt, &r->info));
  r->host_scalars = 0; /* dev_run says */
}

void result_free(result *r) {
  free(r->param);
  for (int k = 0; k < 4; k++) free(r->state[k]);
}

/* ------------------------------------------------------------- gradients */

double widen1(fo_dtype dt, const void *buf, int64_t i) {
  float f;
  if (dt == FO_DTYPE_F32)
    memcpy(&f, (const float *)buf + i, 4);
  else
    OK(fo_convert_to_f32(dt, (const uint16_t *)buf + i, &f, 1));
  return (double)f;
}

static void store1(fo_dtype dt, void *buf, int64_t i, float x) {
  if (dt == FO_DTYPE_F32)
    memcpy((float *)buf + i, &x, 4);
  else
    OK(fo_convert_from_f32(dt, &x, (uint16_t *)buf + i, 1));
}

/* A fresh gradient value: ~2 % exact zeros, magnitudes in [2e-3, 2]. */
float mx_draw_grad(tu_rng *r) {
  return tu_rng_u32(r) % 50 == 0 ? 0.0f : (float)tu_rng_nonzero(r, 2e-3, 2.0);
}

/* Whether the rule adds wd*w to the gradient (L2) and its first step is
 * about lr * d / (|d| + eps), so that a cancelling d = g + wd*w turns the
 * step on the last bits of either term (docs/numerics.md). */
static int l2_sign_like(fo_algorithm alg, const fo_hparams *hg) {
  if (hg->weight_decay <= 0.0f) return 0;
  switch (alg) {
    case FO_ALG_ADAM:
    case FO_ALG_ADAGRAD:
    case FO_ALG_RMSPROP: return 1;
    case FO_ALG_NADAM: return !hg->decoupled_weight_decay;
    default: return 0;
  }
}

/* The gradients of one step (packed, grad dtype, already times the loss
 * scale), drawn so that no element sits on a discontinuity of the rule
 * (see the file comment), judged against the CPU optimizer's current
 * parameters (or masters) and first moments. */
static void make_grads(const cfg *c, const world *w, fo_optimizer *cpu,
                       const unsigned char *cpu_param, tu_rng *r, int step, unsigned char *g) {
  fo_hparams h[2];
  cfg_hparams(c, h);
  fo_step_info info;
  OK(fo_optimizer_get_info(cpu, &info));
  const double scale = c->set == 2 ? (double)info.loss_scale : 1.0;
  const int64_t n = w->total;
  float *gf = malloc((size_t)n * 4 + 4), *pv = malloc((size_t)n * 4 + 4);
  cr_assert(gf && pv);
  for (int64_t e = 0; e < n; e++) gf[e] = (float)(mx_draw_grad(r) * scale);
  OK(fo_convert_from_f32(w->gt, gf, g, n));
  OK(fo_convert_to_f32(w->gt, g, gf, n)); /* exactly what is stored */
  /* the parameter each element's rule will see: the master, or the
   * widened parameter */
  OK(fo_convert_to_f32(w->pt, cpu_param, pv, n));
  for (int64_t i = 0; i < w->nt; i++) {
    float *master = NULL;
    if (w->numel[i] && fo_optimizer_state_ptr(cpu, i, FO_ROLE_MASTER, &master) == FO_SUCCESS)
      memcpy(pv + w->hoff[i], master, (size_t)w->numel[i] * 4);
  }
  for (int round = 0; round < 8; round++) {
    /* the coefficient the step will use: unscale, clip */
    double sumsq = 0.0;
    for (int64_t e = 0; e < n; e++) sumsq += ((double)gf[e] / scale) * ((double)gf[e] / scale);
    double coef = 1.0 / scale;
    if (c->set == 2) {
      double clip = 5.0 / (sqrt(sumsq) + 1e-6);
      if (clip < 1.0) coef *= clip;
    }
    int64_t redrawn = 0;
    for (int64_t i = 0; i < w->nt; i++) {
      const fo_hparams *hg = &h[w->group[i]];
      float *m = NULL;
      if (!w->numel[i] || fo_optimizer_state_ptr(cpu, i, FO_ROLE_EXP_AVG, &m) != FO_SUCCESS)
        m = NULL;
      for (int64_t j = 0; j < w->numel[i]; j++) {
        const int64_t e = w->hoff[i] + j;
        const double d = (double)gf[e] * coef * (hg->maximize ? -1.0 : 1.0);
        int bad = 0;
        if (l2_sign_like(c->alg, hg)) {
          const double wp = (double)hg->weight_decay * (double)pv[e];
          const double terms = fabs(d) + fabs(wp);
          bad = terms > 0.0 && fabs(d + wp) < 1e-3 * terms;
        } else if (c->alg == FO_ALG_LION) {
          const double bm = (double)hg->beta1 * (m ? (double)m[j] : 0.0);
          const double bd = (1.0 - (double)hg->beta1) * d;
          const double terms = fabs(bm) + fabs(bd);
          bad = terms > 0.0 && fabs(bm + bd) < 1e-3 * terms;
        }
        if (bad) {
          float x = (float)(mx_draw_grad(r) * scale);
          store1(w->gt, g, e, x);
          gf[e] = (float)widen1(w->gt, g, e);
          redrawn++;
        }
      }
    }
    if (!redrawn) break;
  }
  if (c->set == 2 && step == OVERFLOW_STEP) {
    /* a non-finite gradient: the step must change nothing and back off */
    store1(w->gt, g, n / 2, INFINITY);
  }
  free(gf);
  free(pv);
}

/* ------------------------------------------------------------------ runs */

/* The CPU executor over packed host tensors: draws the gradients of every
 * step (stored in grads[step-1], packed) and steps. */
void cpu_run(const cfg *c, const world *w, unsigned char *const *grads,
             const unsigned char *init_param, result *out) {
  size_t ps = fo_dtype_size(w->pt), gs = fo_dtype_size(w->gt);
  unsigned char *p = NULL, *g = NULL;
  fo_optimizer *opt;
  if (c->storage == FO_STORAGE_EXTERNAL) {
    p = malloc((size_t)w->total * ps + 1);
    g = malloc((size_t)w->total * gs + 1);
    cr_assert(p && g);
    memcpy(p, init_param, (size_t)w->total * ps);
    opt = gpu_make_opt(c, w, 0, p, g, 1);
  } else {
    opt = gpu_make_opt(c, w, 0, NULL, NULL, 1);
    for (int64_t i = 0; i < w->nt; i++) {
      void *q;
      OK(fo_optimizer_param_ptr(opt, i, &q));
      memcpy(q, init_param + (size_t)w->hoff[i] * ps, (size_t)w->numel[i] * ps);
    }
    OK(fo_optimizer_sync_master(opt, NULL));
  }
  /* the parameters as the optimizer holds them, packed, for make_grads */
  unsigned char *view = malloc((size_t)w->total * ps + 1);
  cr_assert_not_null(view);
  tu_rng r;
  tu_rng_seed(&r, c->seed, 17);
  for (int s = 1; s <= K_STEPS; s++) {
    for (int64_t i = 0; i < w->nt; i++) {
      void *q;
      OK(fo_optimizer_param_ptr(opt, i, &q));
      memcpy(view + (size_t)w->hoff[i] * ps, q, (size_t)w->numel[i] * ps);
    }
    make_grads(c, w, opt, view, &r, s, grads[s - 1]);
    for (int64_t i = 0; i < w->nt; i++) {
      void *q;
      OK(fo_optimizer_grad_ptr(opt, i, &q));
      memcpy(q, grads[s - 1] + (size_t)w->hoff[i] * gs, (size_t)w->numel[i] * gs);
    }
    OK(fo_optimizer_step(opt, NULL));
  }
  dev host = {0, NULL};
  gather(&host, opt, w, out);
  OK(fo_optimizer_destroy(opt));
  free(view);
  free(p);
  free(g);
}

/* External tensors of several chunks take both of the step's paths: 16-byte
 * vectors (parameter and gradient both aligned) and elements one at a time. */
static void expect_both_paths(const fo_optimizer *opt, const char *ctx) {
  int64_t vector = 0, scalar = 0;
  for (int64_t i = 0; i < opt->num_tensors; i++) {
    const fo_plan_tensor *t = &opt->tensors[i];
    if (t->numel <= opt->exec->chunk) continue;
    if (t->vector_ok)
      vector++;
    else
      scalar++;
  }
  cr_assert(vector > 0 && scalar > 0,
            "%s: of the tensors past one chunk, %lld take the vector path and %lld not: the "
            "world must have both",
            ctx, (long long)vector, (long long)scalar);
}

/* The executor under test (d) over the world with the given gradients:
 * external tensors at their offsets in poisoned buffers (gaps checked
 * afterwards), or the arena.  mode GRAPH: step 1 eager, then one step
 * captured in a CUDA graph and replayed for steps 2..K. */
void dev_run(const dev *d, const cfg *c, const world *w, unsigned char *const *grads,
             const unsigned char *init_param, int mode, result *out, const char *ctx) {
  size_t ps = fo_dtype_size(w->pt), gs = fo_dtype_size(w->gt);
  unsigned char *dp = NULL, *dg = NULL;
  fo_optimizer *opt;
  if (c->storage == FO_STORAGE_EXTERNAL) {
    dp = dev_alloc(d, w->pbytes);
    dg = dev_alloc(d, w->gbytes);
    dev_poison(d, dp, w->pbytes);
    dev_poison(d, dg, w->gbytes);
    for (int64_t i = 0; i < w->nt; i++)
      dev_put(d, dp + w->poff[i], init_param + (size_t)w->hoff[i] * ps, (size_t)w->numel[i] * ps);
    if (d->cuda) CK(cudaStreamSynchronize(d->stream));
    opt = gpu_make_opt(c, w, d->cuda, dp, dg, 0);
    expect_both_paths(opt, ctx);
  } else {
    opt = gpu_make_opt(c, w, d->cuda, NULL, NULL, 0);
    for (int64_t i = 0; i < w->nt; i++) {
      void *q;
      OK(fo_optimizer_param_ptr(opt, i, &q));
      dev_put(d, q, init_param + (size_t)w->hoff[i] * ps, (size_t)w->numel[i] * ps);
    }
    OK(fo_optimizer_sync_master(opt, dev_stream(d)));
  }
  void **gptr = calloc((size_t)w->nt, sizeof *gptr);
  cr_assert_not_null(gptr);
  for (int64_t i = 0; i < w->nt; i++) OK(fo_optimizer_grad_ptr(opt, i, &gptr[i]));

  cudaGraph_t graph = NULL;
  cudaGraphExec_t exec = NULL;
  for (int s = 1; s <= K_STEPS; s++) {
    for (int64_t i = 0; i < w->nt; i++)
      dev_put(d, gptr[i], grads[s - 1] + (size_t)w->hoff[i] * gs, (size_t)w->numel[i] * gs);
    if (mode == GRAPH && s >= 2) {
      if (!exec) {
        /* global mode: any call inside the step that is not allowed during
         * capture (a synchronizing copy, an allocation) fails it */
        CK(cudaStreamBeginCapture(d->stream, cudaStreamCaptureModeGlobal));
        fo_status st = fo_optimizer_step(opt, d->stream);
        cudaError_t e = cudaStreamEndCapture(d->stream, &graph);
        cr_assert_eq(st, FO_SUCCESS, "%s: step during capture: %s", ctx, fo_last_error());
        cr_assert_eq(e, cudaSuccess, "%s: capture: %s", ctx, cudaGetErrorString(e));
        CK(cudaGraphInstantiate(&exec, graph, 0));
      }
      CK(cudaGraphLaunch(exec, d->stream));
    } else {
      OK(fo_optimizer_step(opt, dev_stream(d)));
    }
  }
  if (exec) CK(cudaGraphExecDestroy(exec));
  if (graph) CK(cudaGraphDestroy(graph));
  gather(d, opt, w, out);
  const char *host = getenv("FUSEDOPT_HOST_SCALARS");
  out->host_scalars = mode == EAGER && c->set != 2 && !(host && strcmp(host, "0") == 0);
  if (c->storage == FO_STORAGE_EXTERNAL) {
    mx_check_gaps(d, w, dp, w->pbytes, w->poff, ps, "parameter", ctx);
    mx_check_gaps(d, w, dg, w->gbytes, w->goff, gs, "gradient", ctx);
  }
  /* the step never writes the gradients (write_unscaled_grads is off) */
  unsigned char *gback = malloc((size_t)w->total * gs + 1);
  cr_assert_not_null(gback);
  for (int64_t i = 0; i < w->nt; i++)
    dev_get(d, gback + (size_t)w->hoff[i] * gs, gptr[i], (size_t)w->numel[i] * gs);
  cr_assert(memcmp(gback, grads[K_STEPS - 1], (size_t)w->total * gs) == 0,
            "%s: the step wrote the gradients", ctx);
  free(gback);
  free(gptr);
  OK(fo_optimizer_destroy(opt));
  if (dp) dev_free(d, dp);
  if (dg) dev_free(d, dg);
}

/* ------------------------------------------------------------ comparing */

static double *widen_all(fo_dtype dt, const void *buf, int64_t n) {
  double *x = malloc((size_t)n * sizeof *x + 8);
  float *f = malloc((size_t)n * 4 + 4);
  cr_assert(x && f);
  OK(fo_convert_to_f32(dt, buf, f, n));
  for (int64_t i = 0; i < n; i++) x[i] = (double)f[i];
  free(f);
  return x;
}

/* With the scalars the CPU executor has (got->host_scalars) and the same
 * arithmetic (no contraction on either side; IEEE sqrt and division; no
 * per-tensor norms, which are summed in another order), every updated
 * value should equal the CPU executor's.  Asserted as at most 1 in 1000
 * differing, so that a rare boundary case does not fail the tier, while a
 * kernel built with fast math or FMA contraction, or reading a stale
 * scalar, which change most values by an ulp or more, does. */
static void expect_nearly_bitwise(const cfg *c, const result *got, const tu_report *rep,
                                  const char *what, const char *ctx) {
  if (!got->host_scalars || c->alg == FO_ALG_LAMB || c->alg == FO_ALG_LARS) return;
  cr_assert(rep->inexact <= rep->n / 1000,
            "%s: %lld of %lld %s differ from the CPU executor's, whose scalars and arithmetic "
            "the step shares (at most 1 in 1000 may)",
            ctx, (long long)rep->inexact, (long long)rep->n, what);
}

/* The run under test (got) against the CPU executor (want), with the
 * tolerances of the file comment. */
void compare(const cfg *c, const world *w, const result *want, const result *got, const char *ctx) {
  const int64_t n = w->total;
  const int sixteen = c->pt != FO_DTYPE_F32;
  const int fed_back = sixteen && !c->master; /* rounded parameter read back */
  tu_report rep;

  cr_assert_eq(got->info.step, want->info.step, "%s: step count", ctx);
  cr_assert_eq(got->info.skipped_steps, want->info.skipped_steps, "%s: skipped steps", ctx);
  cr_assert_eq(got->info.loss_scale, want->info.loss_scale, "%s: loss scale", ctx);

  /* parameters */
  double *pw = widen_all(c->pt, want->param, n);
  const double pmax = max_abs(pw, n);
  tu_tol tol = {1e-5 * pmax, 1e-5, 0.0, c->pt};
  if (sixteen) tol.ulps = fed_back ? 2.0 : 1.0;
  int ok = tu_compare(&rep, pw, got->param, c->pt, n, tol);
  expect_report(ok, &rep, "parameters", ctx);
  expect_nearly_bitwise(c, got, &rep, "parameters", ctx);
  if (fed_back)
    cr_assert(rep.inexact <= n / 100, "%s: %lld of %lld parameters differ (> 1 %%)", ctx,
              (long long)rep.inexact, (long long)n);
  free(pw);

  /* a 16-bit parameter with master is exactly RNE(its own master) */
  if (sixteen && c->master) {
    cr_assert_not_null(got->state[0], "%s: no master weights", ctx);
    uint16_t *r = malloc((size_t)n * 2 + 2);
    cr_assert_not_null(r);
    OK(fo_convert_from_f32(c->pt, got->state[0], r, n));
    cr_assert(memcmp(r, got->param, (size_t)n * 2) == 0, "%s: a parameter is not RNE of its master",
              ctx);
    free(r);
  }

  /* state */
  fo_hparams h[2];
  cfg_hparams(c, h);
  const int l2 = (c->alg == FO_ALG_SGD || c->alg == FO_ALG_ADAM || c->alg == FO_ALG_ADAGRAD ||
                  c->alg == FO_ALG_RMSPROP || c->alg == FO_ALG_LARS ||
                  (c->alg == FO_ALG_NADAM && !h[0].decoupled_weight_decay)) &&
                 (h[0].weight_decay > 0.0f || h[1].weight_decay > 0.0f);
  for (int k = 0; k < 4; k++) {
    cr_assert_eq(got->state[k] == NULL, want->state[k] == NULL, "%s: %s kept by one executor only",
                 ctx, ROLE_NAMES[k]);
    if (!want->state[k]) continue;
    double *sw = malloc((size_t)n * sizeof *sw + 8);
    cr_assert_not_null(sw);
    for (int64_t i = 0; i < n; i++) sw[i] = (double)want->state[k][i];
    const double smax = max_abs(sw, n);
    tu_tol st = {1e-5 * smax, 1e-5, 0.0, FO_DTYPE_F32};
    ok = tu_compare(&rep, sw, got->state[k], FO_DTYPE_F32, n, st);
    expect_nearly_bitwise(c, got, &rep, ROLE_NAMES[k], ctx);
    if (!ok && fed_back && l2 && k != 0) {
      /* the parameter's flips enter the gradient as wd*dp (file comment) */
      double wd = h[0].weight_decay > h[1].weight_decay ? h[0].weight_decay : h[1].weight_decay;
      double mu =
          c->alg == FO_ALG_SGD || c->alg == FO_ALG_LARS || c->alg == FO_ALG_RMSPROP ? 0.9 : 0.0;
      double dp = 4.0 * (c->pt == FO_DTYPE_BF16 ? 0x1p-7 : 0x1p-10) * (pmax > 1.0 ? pmax : 1.0);
      double dmax = c->set == 2 ? 2.0 : 2.0 + wd * pmax;
      tu_tol loose = {st.atol + wd * dp * (2.0 + 1.0 / (1.0 - mu)) * (1.0 + 2.0 * dmax), 1e-5, 0.0,
                      FO_DTYPE_F32};
      int64_t bad_tight = rep.bad;
      ok = tu_compare(&rep, sw, got->state[k], FO_DTYPE_F32, n, loose) && bad_tight <= n / 100;
    }
    expect_report(ok, &rep, ROLE_NAMES[k], ctx);
    free(sw);
  }
}

void results_identical(const world *w, fo_dtype pt, const result *a, const result *b,
                       const char *what, const char *ctx) {
  cr_assert(memcmp(a->param, b->param, (size_t)w->total * fo_dtype_size(pt)) == 0,
            "%s: %s: parameters differ", ctx, what);
  for (int k = 0; k < 4; k++) {
    cr_assert_eq(a->state[k] == NULL, b->state[k] == NULL);
    if (a->state[k])
      cr_assert(memcmp(a->state[k], b->state[k], (size_t)w->total * 4) == 0, "%s: %s: %s differs",
                ctx, what, ROLE_NAMES[k]);
  }
  cr_assert_eq(a->info.step, b->info.step, "%s: %s: step", ctx, what);
  cr_assert_eq(a->info.loss_scale, b->info.loss_scale, "%s: %s: loss scale", ctx, what);
}

/* Initial parameters: random in [-1, 1] (no zeros), rounded to the dtype. */
unsigned char *init_params(const world *w, uint64_t seed) {
  size_t ps = fo_dtype_size(w->pt);
  unsigned char *p = malloc((size_t)w->total * ps + 1);
  cr_assert_not_null(p);
  float *f = malloc((size_t)w->total * 4 + 4);
  cr_assert_not_null(f);
  tu_rng r;
  tu_rng_seed(&r, seed, 5);
  for (int64_t e = 0; e < w->total; e++) f[e] = (float)tu_rng_nonzero(&r, 1e-3, 1.0);
  OK(fo_convert_from_f32(w->pt, f, p, w->total));
  free(f);
  return p;
}

unsigned char **alloc_grads(const world *w) {
  unsigned char **g = calloc(K_STEPS, sizeof *g);
  cr_assert_not_null(g);
  for (int s = 0; s < K_STEPS; s++) {
    g[s] = malloc((size_t)w->total * fo_dtype_size(w->gt) + 1);
    cr_assert_not_null(g[s]);
  }
  return g;
}

void free_grads(unsigned char **g) {
  for (int s = 0; s < K_STEPS; s++) free(g[s]);
  free(g);
}

/* One configuration: the CPU executor draws and steps; the device runs the
 * same gradients; compare.  repeat: a second device run must give the same
 * bits; graph: so must a run replayed from a captured graph. */
void run_cfg(const dev *d, const cfg *c, const int64_t *extra, int n_extra, int repeat, int graph) {
  char ctx[160];
  cfg_name(c, ctx, sizeof ctx);
  world w;
  mx_world_make(&w, c->pt, c->gt, extra, n_extra, c->seed);
  unsigned char *init = init_params(&w, c->seed);
  unsigned char **grads = alloc_grads(&w);
  result want, got;
  cpu_run(c, &w, grads, init, &want);
  dev_run(d, c, &w, grads, init, EAGER, &got, ctx);
  compare(c, &w, &want, &got, ctx);
  if (repeat) {
    result again;
    dev_run(d, c, &w, grads, init, EAGER, &again, ctx);
    results_identical(&w, c->pt, &got, &again, "a second run", ctx);
    result_free(&again);
  }
  if (graph && d->cuda) {
    /* A replayed step takes its scalars from the prepare kernel, as every
     * step does with FUSEDOPT_HOST_SCALARS=0; an eager step the host
     * decides takes them from the host's libm, within 1 ulp of the
     * device's (docs/numerics.md).  Bits are compared between runs that
     * computed their scalars in the same place: the host-decided run above
     * was compared with the CPU executor. */
    result eager, replay;
    const char *was = getenv("FUSEDOPT_HOST_SCALARS");
    char *saved = was ? strdup(was) : NULL;
    cr_assert_eq(setenv("FUSEDOPT_HOST_SCALARS", "0", 1), 0);
    dev_run(d, c, &w, grads, init, EAGER, &eager, ctx);
    dev_run(d, c, &w, grads, init, GRAPH, &replay, ctx);
    cr_assert_eq(
        saved ? setenv("FUSEDOPT_HOST_SCALARS", saved, 1) : unsetenv("FUSEDOPT_HOST_SCALARS"), 0);
    free(saved);
    compare(c, &w, &want, &eager, ctx);
    results_identical(&w, c->pt, &eager, &replay, "graph replay", ctx);
    result_free(&eager);
    result_free(&replay);
  }
  result_free(&want);
  result_free(&got);
  free_grads(grads);
  free(init);
  world_free(&w);
}
