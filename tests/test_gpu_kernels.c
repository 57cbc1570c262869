/*
 * test_gpu_kernels.c -- the GPU tier: the CUDA executor through the public
 * API, against the CPU executor run on identical inputs.
 *
 * Every test first asks fo_cuda_device_count(); without a usable device it
 * is skipped with the reason (never passed without running).  With one:
 *
 *   - the matrix: every algorithm x option set x parameter dtype x gradient
 *     dtype x master/no-master/stochastic rounding, six steps, over many
 *     small tensors, odd sizes and a few large ones, as offset views into
 *     one cudaMalloc buffer per role (misaligned for some tensors), the gaps
 *     between tensors poisoned and checked afterwards;
 *   - repeated runs and graph replay: bit-identical to an eager run;
 *   - arena storage, zero-grad, sync-master;
 *   - stochastic rounding: reproducible, seed-dependent;
 *   - a tensor past 2^31 elements (64-bit indexing on the device);
 *   - pointers in the wrong memory: FO_ERR_BAD_POINTER.
 *
 * Tolerances against the CPU executor.  The kernels call the same rules.h
 * functions, and neither compiler contracts a*b + c (gcc in ISO C mode,
 * nvcc with --fmad=false), but the per-step scalars come from double pow()
 * and cos(), whose device versions may differ from glibc's in the last bit
 * (docs/numerics.md).  The bounds below are those of an FMA-contracted
 * build, kept so the tier also holds for a build without --fmad=false: at
 * most ~8 skipped roundings per element and step, six steps, <= ~50 u ~ 3e-6
 * of the magnitudes involved.  Hence:
 *   - fp32 values (fp32 parameters, master weights, moments): |d| <= 1e-5 x
 *     the buffer's largest magnitude + 1e-5 x |value|;
 *   - 16-bit parameters with master: that plus 1 ulp of the 16-bit type
 *     (the masters may lie on either side of a rounding boundary), and the
 *     parameter is exactly RNE(the GPU's own master);
 *   - 16-bit parameters without master (and stochastic rounding): that plus
 *     2 ulps, and at most 1 % of the elements differ at all (a flip is fed
 *     back and persists; a systematic error would touch far more);
 *   - the state of such parameters under L2 decay (SGD, Adam) inherits
 *     wd x the parameter's difference: at most 1 % of its elements may
 *     exceed the fp32 tolerance, none by more than wd x 4 ulps x (2 + 1/(1 -
 *     momentum)) x max(1, 2 |d|max).
 * Discontinuities are avoided by choosing the data, as in docs/numerics.md:
 * gradients are redrawn where Lion's c = b1*m + (1-b1)*d or Adam's
 * L2-decayed gradient d cancels to below 1e-3 of its terms.
 *
 * Set FO_GPU_TEST_STAND_IN=cpu to run the same harness with a second CPU
 * optimizer over host memory in place of the device (a check of the test
 * itself on a machine without a GPU; the device-only tests still skip).
 */
#include <criterion/criterion.h>
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fusedopt.h"
#include "gpu_harness.h"
#include "internal.h"
#include "reference.h"
#include "testutil.h"

#define K_STEPS 6
#define OVERFLOW_STEP 4 /* option set 2 injects an inf gradient here */
#define GAP 96          /* poisoned bytes at least between two tensors */

static fo_stream_t dev_stream(const dev *d) {
  return d->cuda ? d->stream : NULL;
}

static dev dev_open(int cuda) {
  dev d = {cuda, NULL};
  if (cuda) CK(cudaStreamCreate(&d.stream));
  return d;
}

static void dev_close(dev *d) {
  if (d->cuda) CK(cudaStreamDestroy(d->stream));
}

/* ---------------------------------------------------------------- world */

/* A list of tensors: sizes, groups, the host packing (tensors back to back)
 * and the layout in one device buffer per role (gaps, misalignment). */
typedef struct world {
  int64_t nt, total;
  int64_t *numel, *hoff; /* host: element offset of each tensor */
  int *group;
  size_t *poff, *goff; /* device buffers: byte offset of each tensor */
  size_t pbytes, gbytes;
  fo_dtype pt, gt;
} world;

/* Odd sizes around vectors, thread counts and the chunk, then many small
 * tensors, then a few large ones. */
static const int64_t ODD_SIZES[] = {1,    2,    3,     5,     7,     8,   9,   15,
                                    16,   17,   31,    33,    255,   256, 257, 1023,
                                    4095, 4097, 32767, 32769, 65549, 0,   3};
#define N_SMALL 150

static size_t layout(world *w, size_t *off, size_t elem, int phase) {
  size_t cursor = 0;
  for (int64_t i = 0; i < w->nt; i++) {
    cursor = (cursor + GAP + 255) & ~(size_t)255;
    /* one tensor in three 256-byte aligned, the others 1..7 elements off */
    int64_t k = (i + phase) % 3 == 0 ? 0 : 1 + (i * 5 + phase) % 7;
    off[i] = cursor + (size_t)k * elem;
    cursor = off[i] + (size_t)w->numel[i] * elem;
  }
  return cursor + GAP;
}

static void world_make(world *w, fo_dtype pt, fo_dtype gt, const int64_t *extra, int n_extra,
                       uint64_t seed) {
  tu_rng r;
  tu_rng_seed(&r, seed, 99);
  int64_t n_odd = (int64_t)(sizeof ODD_SIZES / sizeof ODD_SIZES[0]);
  w->nt = n_odd + N_SMALL + n_extra;
  w->numel = calloc((size_t)w->nt, sizeof *w->numel);
  w->hoff = calloc((size_t)w->nt + 1, sizeof *w->hoff);
  w->group = calloc((size_t)w->nt, sizeof *w->group);
  w->poff = calloc((size_t)w->nt, sizeof *w->poff);
  w->goff = calloc((size_t)w->nt, sizeof *w->goff);
  cr_assert(w->numel && w->hoff && w->group && w->poff && w->goff);
  for (int64_t i = 0; i < w->nt; i++) {
    if (i < n_odd)
      w->numel[i] = ODD_SIZES[i];
    else if (i < n_odd + N_SMALL)
      w->numel[i] = 1 + (int64_t)(tu_rng_u32(&r) % 400);
    else
      w->numel[i] = extra[i - n_odd - N_SMALL];
    w->group[i] = (int)(i % 2);
    w->hoff[i + 1] = w->hoff[i] + w->numel[i];
  }
  w->total = w->hoff[w->nt];
  w->pt = pt;
  w->gt = gt;
  w->pbytes = layout(w, w->poff, fo_dtype_size(pt), 0);
  w->gbytes = layout(w, w->goff, fo_dtype_size(gt), 1);
}

static void world_free(world *w) {
  free(w->numel);
  free(w->hoff);
  free(w->group);
  free(w->poff);
  free(w->goff);
}

/* Every byte of a device buffer outside the tensors still poisoned. */
static void check_gaps(const dev *d, const world *w, const void *buf, size_t bytes,
                       const size_t *off, size_t elem, const char *what, const char *ctx) {
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

typedef struct cfg {
  fo_algorithm alg;
  int set; /* 0: hparams A; 1: hparams B; 2: A + clipping, schedule, loss scaler */
  fo_dtype pt, gt;
  int master, sr;
  fo_storage storage;
  uint64_t seed;
} cfg;

static void cfg_name(const cfg *c, char *buf, size_t cap) {
  snprintf(buf, cap, "%s set %d param %s grad %s%s%s%s", tu_alg_name(c->alg), c->set,
           tu_dtype_name(c->pt), tu_dtype_name(c->gt),
           c->pt == FO_DTYPE_F32 ? "" : (c->master ? " master" : " no-master"),
           c->sr ? " stochastic" : "", c->storage == FO_STORAGE_ARENA ? " arena" : "");
}

/* Two groups; "generic" values (docs/numerics.md: short decimals times
 * 16-bit values land on 16-bit ties). */
static void cfg_hparams(const cfg *c, fo_hparams h[2]) {
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
static fo_optimizer *make_opt(const cfg *c, const world *w, int cuda, unsigned char *pbuf,
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

/* What a run leaves: every buffer, packed, on the host. */
typedef struct result {
  unsigned char *param;
  float *state[4]; /* MASTER, EXP_AVG, EXP_AVG_SQ, MAX_EXP_AVG_SQ; NULL: not kept */
  fo_step_info info;
} result;

static const fo_role STATE_ROLES[4] = {FO_ROLE_MASTER, FO_ROLE_EXP_AVG, FO_ROLE_EXP_AVG_SQ,
                                       FO_ROLE_MAX_EXP_AVG_SQ};
static const char *const ROLE_NAMES[4] = {"master", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"};

static void gather(const dev *d, fo_optimizer *opt, const world *w, result *r) {
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
}

static void result_free(result *r) {
  free(r->param);
  for (int k = 0; k < 4; k++) free(r->state[k]);
}

/* ------------------------------------------------------------- gradients */

static double widen1(fo_dtype dt, const void *buf, int64_t i) {
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
static float draw_grad(tu_rng *r) {
  return tu_rng_u32(r) % 50 == 0 ? 0.0f : (float)tu_rng_nonzero(r, 2e-3, 2.0);
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
  for (int64_t e = 0; e < n; e++) gf[e] = (float)(draw_grad(r) * scale);
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
        if (c->alg == FO_ALG_ADAM && hg->weight_decay > 0.0f) {
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
          float x = (float)(draw_grad(r) * scale);
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
static void cpu_run(const cfg *c, const world *w, unsigned char *const *grads,
                    const unsigned char *init_param, result *out) {
  size_t ps = fo_dtype_size(w->pt), gs = fo_dtype_size(w->gt);
  unsigned char *p = NULL, *g = NULL;
  fo_optimizer *opt;
  if (c->storage == FO_STORAGE_EXTERNAL) {
    p = malloc((size_t)w->total * ps + 1);
    g = malloc((size_t)w->total * gs + 1);
    cr_assert(p && g);
    memcpy(p, init_param, (size_t)w->total * ps);
    opt = make_opt(c, w, 0, p, g, 1);
  } else {
    opt = make_opt(c, w, 0, NULL, NULL, 1);
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

/* How the run under test steps. */
enum { EAGER = 0, GRAPH = 1 };

/* The executor under test (d) over the world with the given gradients:
 * external tensors at their offsets in poisoned buffers (gaps checked
 * afterwards), or the arena.  mode GRAPH: step 1 eager, then one step
 * captured in a CUDA graph and replayed for steps 2..K. */
static void dev_run(const dev *d, const cfg *c, const world *w, unsigned char *const *grads,
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
    opt = make_opt(c, w, d->cuda, dp, dg, 0);
  } else {
    opt = make_opt(c, w, d->cuda, NULL, NULL, 0);
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
  if (c->storage == FO_STORAGE_EXTERNAL) {
    check_gaps(d, w, dp, w->pbytes, w->poff, ps, "parameter", ctx);
    check_gaps(d, w, dg, w->gbytes, w->goff, gs, "gradient", ctx);
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

static double max_abs(const double *x, int64_t n) {
  double m = 0.0;
  for (int64_t i = 0; i < n; i++)
    if (isfinite(x[i]) && fabs(x[i]) > m) m = fabs(x[i]);
  return m;
}

static double *widen_all(fo_dtype dt, const void *buf, int64_t n) {
  double *x = malloc((size_t)n * sizeof *x + 8);
  float *f = malloc((size_t)n * 4 + 4);
  cr_assert(x && f);
  OK(fo_convert_to_f32(dt, buf, f, n));
  for (int64_t i = 0; i < n; i++) x[i] = (double)f[i];
  free(f);
  return x;
}

static void expect(int ok, const tu_report *rep, const char *label, const char *ctx) {
  char msg[512];
  tu_report_format(rep, label, msg, sizeof msg);
  cr_assert(ok, "%s: %s", ctx, msg);
}

/* The run under test (got) against the CPU executor (want), with the
 * tolerances of the file comment. */
static void compare(const cfg *c, const world *w, const result *want, const result *got,
                    const char *ctx) {
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
  expect(ok, &rep, "parameters", ctx);
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
  const int l2 = (c->alg == FO_ALG_SGD || c->alg == FO_ALG_ADAM) &&
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
    if (!ok && fed_back && l2 && k != 0) {
      /* the parameter's flips enter the gradient as wd*dp (file comment) */
      double wd = h[0].weight_decay > h[1].weight_decay ? h[0].weight_decay : h[1].weight_decay;
      double mu = c->alg == FO_ALG_SGD ? 0.9 : 0.0;
      double dp = 4.0 * (c->pt == FO_DTYPE_BF16 ? 0x1p-7 : 0x1p-10) * (pmax > 1.0 ? pmax : 1.0);
      double dmax = c->set == 2 ? 2.0 : 2.0 + wd * pmax;
      tu_tol loose = {st.atol + wd * dp * (2.0 + 1.0 / (1.0 - mu)) * (1.0 + 2.0 * dmax), 1e-5, 0.0,
                      FO_DTYPE_F32};
      int64_t bad_tight = rep.bad;
      ok = tu_compare(&rep, sw, got->state[k], FO_DTYPE_F32, n, loose) && bad_tight <= n / 100;
    }
    expect(ok, &rep, ROLE_NAMES[k], ctx);
    free(sw);
  }
}

static void results_identical(const world *w, fo_dtype pt, const result *a, const result *b,
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
static unsigned char *init_params(const world *w, uint64_t seed) {
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

static unsigned char **alloc_grads(const world *w) {
  unsigned char **g = calloc(K_STEPS, sizeof *g);
  cr_assert_not_null(g);
  for (int s = 0; s < K_STEPS; s++) {
    g[s] = malloc((size_t)w->total * fo_dtype_size(w->gt) + 1);
    cr_assert_not_null(g[s]);
  }
  return g;
}

static void free_grads(unsigned char **g) {
  for (int s = 0; s < K_STEPS; s++) free(g[s]);
  free(g);
}

/* One configuration: the CPU executor draws and steps; the device runs the
 * same gradients; compare.  repeat: a second device run must give the same
 * bits; graph: so must a run replayed from a captured graph. */
static void run_cfg(const dev *d, const cfg *c, const int64_t *extra, int n_extra, int repeat,
                    int graph) {
  char ctx[160];
  cfg_name(c, ctx, sizeof ctx);
  world w;
  world_make(&w, c->pt, c->gt, extra, n_extra, c->seed);
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
    result replay;
    dev_run(d, c, &w, grads, init, GRAPH, &replay, ctx);
    results_identical(&w, c->pt, &got, &replay, "graph replay", ctx);
    result_free(&replay);
  }
  result_free(&want);
  result_free(&got);
  free_grads(grads);
  free(init);
  world_free(&w);
}

/* Every option set and dtype combination of one algorithm. */
static void run_matrix(fo_algorithm alg) {
  dev d = dev_open(require_device(0));
  const struct {
    fo_dtype pt;
    int master, sr;
  } modes[] = {{FO_DTYPE_F32, 1, 0},  {FO_DTYPE_F16, 1, 0},  {FO_DTYPE_F16, 0, 0},
               {FO_DTYPE_BF16, 1, 0}, {FO_DTYPE_BF16, 0, 0}, {FO_DTYPE_BF16, 0, 1}};
  const fo_dtype grads[] = {FO_DTYPE_F32, FO_DTYPE_F16, FO_DTYPE_BF16};
  const int64_t large[] = {3 * 32768 + 5, (1 << 18) + 3};
  uint64_t k = 0;
  for (int set = 0; set < 3; set++)
    for (size_t m = 0; m < sizeof modes / sizeof modes[0]; m++)
      for (size_t g = 0; g < 3; g++, k++) {
        cfg c = {alg,
                 set,
                 modes[m].pt,
                 grads[g],
                 modes[m].master,
                 modes[m].sr,
                 FO_STORAGE_EXTERNAL,
                 tu_hash((uint64_t)alg * 1000 + 7, k)};
        run_cfg(&d, &c, large, 2, 0, 0);
      }
  dev_close(&d);
}

Test(gpu, matrix_sgd) {
  run_matrix(FO_ALG_SGD);
}
Test(gpu, matrix_adam) {
  run_matrix(FO_ALG_ADAM);
}
Test(gpu, matrix_adamw) {
  run_matrix(FO_ALG_ADAMW);
}
Test(gpu, matrix_lion) {
  run_matrix(FO_ALG_LION);
}

/* The same inputs twice give the same bits, and a step captured in a CUDA
 * graph and replayed gives the same bits as eager steps (the scalars,
 * step counter, schedule and loss scaler live on the device). */
Test(gpu, repeatable_and_graph_replay) {
  dev d = dev_open(require_device(0));
  const fo_algorithm algs[] = {FO_ALG_SGD, FO_ALG_ADAM, FO_ALG_ADAMW, FO_ALG_LION};
  const int64_t large[] = {(1 << 20) + 1};
  for (int a = 0; a < 4; a++)
    for (int set = 0; set < 3; set++) {
      cfg c = {algs[a],  set,      FO_DTYPE_BF16,       FO_DTYPE_BF16,
               set != 1, set == 1, FO_STORAGE_EXTERNAL, tu_hash(77, (uint64_t)(a * 3 + set))};
      run_cfg(&d, &c, large, 1, 1, 1);
      cfg f = c;
      f.pt = f.gt = FO_DTYPE_F32;
      f.sr = 0;
      run_cfg(&d, &f, large, 1, 1, 1);
    }
  dev_close(&d);
}

/* Arena storage: parameters written through param_ptr, sync_master, the
 * step over the flat buffers. */
Test(gpu, arena) {
  dev d = dev_open(require_device(0));
  const int64_t large[] = {70001};
  const fo_dtype pts[] = {FO_DTYPE_F32, FO_DTYPE_BF16, FO_DTYPE_F16};
  for (int a = 0; a < 4; a++)
    for (int i = 0; i < 3; i++) {
      cfg c = {(fo_algorithm)a,
               a % 3,
               pts[i],
               i == 0 ? FO_DTYPE_F32 : FO_DTYPE_BF16,
               1,
               0,
               FO_STORAGE_ARENA,
               tu_hash(88, (uint64_t)(a * 3 + i))};
      run_cfg(&d, &c, large, 1, 0, d.cuda);
    }
  dev_close(&d);
}

/* sync_master writes exactly widen(param) into every master; zero_grad
 * zeroes every gradient and nothing else (external tensors: the kernel;
 * arena: one memset). */
Test(gpu, sync_master_and_zero_grad) {
  dev d = dev_open(require_device(0));
  const fo_dtype dts[] = {FO_DTYPE_F16, FO_DTYPE_BF16};
  for (int i = 0; i < 2; i++)
    for (int storage = 0; storage < 2; storage++) {
      cfg c = {FO_ALG_ADAMW,
               0,
               dts[i],
               dts[1 - i],
               1,
               0,
               (fo_storage)storage,
               tu_hash(99, (uint64_t)(i * 2 + storage))};
      char ctx[160];
      cfg_name(&c, ctx, sizeof ctx);
      const int64_t large[] = {40000};
      world w;
      world_make(&w, c.pt, c.gt, large, 1, c.seed);
      size_t ps = fo_dtype_size(w.pt), gs = fo_dtype_size(w.gt);
      unsigned char *dp = NULL, *dg = NULL;
      fo_optimizer *opt;
      if (c.storage == FO_STORAGE_EXTERNAL) {
        dp = dev_alloc(&d, w.pbytes);
        dg = dev_alloc(&d, w.gbytes);
        dev_poison(&d, dp, w.pbytes);
        dev_poison(&d, dg, w.gbytes);
        opt = make_opt(&c, &w, d.cuda, dp, dg, 0);
      } else {
        opt = make_opt(&c, &w, d.cuda, NULL, NULL, 0);
      }
      /* new parameters and gradients, then sync_master and zero_grad */
      unsigned char *p = init_params(&w, c.seed + 1);
      unsigned char *g = init_params(&w, c.seed + 2); /* pt-sized; reused as bytes */
      for (int64_t t = 0; t < w.nt; t++) {
        void *q;
        OK(fo_optimizer_param_ptr(opt, t, &q));
        dev_put(&d, q, p + (size_t)w.hoff[t] * ps, (size_t)w.numel[t] * ps);
        OK(fo_optimizer_grad_ptr(opt, t, &q));
        dev_put(&d, q, g + (size_t)w.hoff[t] * gs, (size_t)w.numel[t] * gs);
      }
      OK(fo_optimizer_sync_master(opt, dev_stream(&d)));
      OK(fo_optimizer_zero_grad(opt, dev_stream(&d)));
      result r;
      gather(&d, opt, &w, &r);
      float *want = malloc((size_t)w.total * 4 + 4);
      cr_assert_not_null(want);
      OK(fo_convert_to_f32(w.pt, p, want, w.total));
      cr_assert(memcmp(want, r.state[0], (size_t)w.total * 4) == 0, "%s: master != widen(param)",
                ctx);
      cr_assert(memcmp(p, r.param, (size_t)w.total * ps) == 0, "%s: sync_master changed a param",
                ctx);
      for (int64_t t = 0; t < w.nt; t++) {
        void *q;
        OK(fo_optimizer_grad_ptr(opt, t, &q));
        unsigned char *hb = calloc((size_t)w.numel[t] * gs + 1, 1);
        unsigned char *zero = calloc((size_t)w.numel[t] * gs + 1, 1);
        cr_assert(hb && zero);
        dev_get(&d, hb, q, (size_t)w.numel[t] * gs);
        cr_assert(memcmp(hb, zero, (size_t)w.numel[t] * gs) == 0, "%s: tensor %lld not zeroed", ctx,
                  (long long)t);
        free(hb);
        free(zero);
      }
      if (dp) {
        check_gaps(&d, &w, dp, w.pbytes, w.poff, ps, "parameter", ctx);
        check_gaps(&d, &w, dg, w.gbytes, w.goff, gs, "gradient", ctx);
      }
      OK(fo_optimizer_destroy(opt));
      if (dp) dev_free(&d, dp);
      if (dg) dev_free(&d, dg);
      result_free(&r);
      free(want);
      free(p);
      free(g);
      world_free(&w);
    }
  dev_close(&d);
}

/* Stochastic rounding on the device: the same seed gives the same bits
 * (covered by repeatable_and_graph_replay too), another seed other bits,
 * and the CPU and CUDA executors agree within the no-master tolerance
 * (the matrix). */
Test(gpu, stochastic_rounding_seeded) {
  dev d = dev_open(require_device(0));
  cfg c = {FO_ALG_ADAMW, 0, FO_DTYPE_BF16, FO_DTYPE_BF16, 0, 1, FO_STORAGE_EXTERNAL, 1234};
  char ctx[160];
  cfg_name(&c, ctx, sizeof ctx);
  const int64_t large[] = {1 << 18};
  world w;
  world_make(&w, c.pt, c.gt, large, 1, 5);
  unsigned char *init = init_params(&w, 5);
  unsigned char **grads = alloc_grads(&w);
  result want, a, b, other;
  cpu_run(&c, &w, grads, init, &want);
  dev_run(&d, &c, &w, grads, init, EAGER, &a, ctx);
  dev_run(&d, &c, &w, grads, init, EAGER, &b, ctx);
  results_identical(&w, c.pt, &a, &b, "same seed", ctx);
  cfg c2 = c;
  c2.seed = 4321;
  dev_run(&d, &c2, &w, grads, init, EAGER, &other, ctx);
  int64_t differ = 0;
  for (int64_t e = 0; e < w.total; e++)
    differ += memcmp(a.param + 2 * e, other.param + 2 * e, 2) != 0;
  cr_assert_gt(differ, w.total / 100, "%s: another seed changed only %lld of %lld parameters", ctx,
               (long long)differ, (long long)w.total);
  compare(&c, &w, &want, &a, ctx);
  result_free(&want);
  result_free(&a);
  result_free(&b);
  result_free(&other);
  free_grads(grads);
  free(init);
  world_free(&w);
  dev_close(&d);
}

/* n random bf16 values (params: [1e-3, 1]; else gradients), converted in
 * slices so that no fp32 copy of the whole array is needed. */
static void fill_bf16(tu_rng *r, uint16_t *dst, int64_t n, int params) {
  enum { SLICE = 1 << 20 };
  float *f = malloc(SLICE * sizeof *f);
  cr_assert_not_null(f);
  for (int64_t at = 0; at < n; at += SLICE) {
    int64_t k = n - at < SLICE ? n - at : SLICE;
    for (int64_t i = 0; i < k; i++)
      f[i] = params ? (float)tu_rng_nonzero(r, 1e-3, 1.0) : draw_grad(r);
    OK(fo_convert_from_f32(FO_DTYPE_BF16, f, dst + at, k));
  }
  free(f);
}

/* One tensor past 2^31 elements (bf16, SGD with momentum, no master: 17 GB
 * on the device), after a small one: the kernels' 64-bit element
 * arithmetic.  Two steps, compared with the CPU executor. */
Test(gpu, tensor_past_2_31_elements, .timeout = 600) {
  require_device(1);
  const int64_t big = ((int64_t)1 << 31) + 4099, small = 1000;
  size_t free_b = 0, total_b = 0;
  CK(cudaMemGetInfo(&free_b, &total_b));
  const size_t need = (size_t)(big + small) * (2 + 2 + 4) + ((size_t)1 << 28);
  if (free_b < need) cr_skip_test("needs %zu bytes of device memory, %zu free", need, free_b);
  const int64_t numel[2] = {small, big};
  const int64_t total = small + big;
  uint16_t *hp = malloc((size_t)total * 2), *hg = malloc((size_t)total * 2);
  uint16_t *back = malloc((size_t)total * 2);
  cr_assert(hp && hg && back, "needs ~13 GB of host memory");
  tu_rng r;
  tu_rng_seed(&r, 31, 31);
  fill_bf16(&r, hp, total, 1);
  /* the last 100000 elements, past 2^31, before the steps */
  uint16_t *tail0 = malloc(100000 * 2);
  cr_assert_not_null(tail0);
  memcpy(tail0, hp + total - 100000, 100000 * 2);
  uint16_t *dp = NULL, *dg = NULL;
  CK(cudaMalloc((void **)&dp, (size_t)total * 2));
  CK(cudaMalloc((void **)&dg, (size_t)total * 2));
  CK(cudaMemcpy(dp, hp, (size_t)total * 2, cudaMemcpyHostToDevice));
  fo_hparams h;
  OK(fo_hparams_default(FO_ALG_SGD, &h));
  h.lr = 0.517f; /* large enough to move most bf16 values */
  h.momentum = 0.9f;
  fo_options o;
  OK(fo_options_default(&o));
  o.algorithm = FO_ALG_SGD;
  o.param_dtype = o.grad_dtype = FO_DTYPE_BF16;
  o.master_weights = 0;
  fo_tensor_desc tc[2], tg[2];
  for (int i = 0; i < 2; i++) {
    int64_t at = i ? small : 0;
    tc[i] = (fo_tensor_desc){numel[i], 0, hp + at, hg + at, NULL};
    tg[i] = (fo_tensor_desc){numel[i], 0, dp + at, dg + at, NULL};
  }
  fo_optimizer *cpu = NULL, *gpu = NULL;
  OK(fo_optimizer_create(&cpu, &o, &h, 1, tc, 2));
  o.executor = FO_EXEC_CUDA;
  OK(fo_optimizer_create(&gpu, &o, &h, 1, tg, 2));
  for (int s = 0; s < 2; s++) {
    fill_bf16(&r, hg, total, 0);
    CK(cudaMemcpy(dg, hg, (size_t)total * 2, cudaMemcpyHostToDevice));
    OK(fo_optimizer_step(gpu, NULL));
    OK(fo_optimizer_step(cpu, NULL));
  }
  CK(cudaMemcpy(back, dp, (size_t)total * 2, cudaMemcpyDeviceToHost));
  /* 1 bf16 ulp (the fp32 results differ by contraction; a flip at a
   * rounding boundary), at most 1 % of the elements differing at all, and
   * the elements past 2^31 updated like the rest */
  int64_t differ = 0, bad = 0, changed_tail = 0;
  for (int64_t e = 0; e < total; e++) {
    if (back[e] == hp[e]) continue;
    differ++;
    double a = widen1(FO_DTYPE_BF16, back, e), b = widen1(FO_DTYPE_BF16, hp, e);
    if (fabs(a - b) > ref_ulp(FO_DTYPE_BF16, b)) bad++;
  }
  for (int64_t e = 0; e < 100000; e++) changed_tail += back[total - 100000 + e] != tail0[e];
  cr_assert_eq(bad, 0, "%lld elements differ by more than 1 ulp", (long long)bad);
  cr_assert(differ <= total / 100, "%lld of %lld elements differ", (long long)differ,
            (long long)total);
  cr_assert_gt(changed_tail, 50000, "only %lld of the last 100000 elements were updated",
               (long long)changed_tail);
  free(tail0);
  OK(fo_optimizer_destroy(gpu));
  OK(fo_optimizer_destroy(cpu));
  CK(cudaFree(dp));
  CK(cudaFree(dg));
  free(hp);
  free(hg);
  free(back);
}

/* An error the caller's own work left pending in the CUDA runtime is not
 * the library's: create, step, sync_master and zero_grad succeed, the
 * parameters move, and the caller still finds its error afterwards. */
Test(gpu, caller_pending_error_is_neither_blamed_nor_cleared) {
  require_device(1);
  enum { N = 5000 };
  tu_rng r;
  tu_rng_seed(&r, 77, 1);
  float hp[N], hg[N], back[N];
  for (int i = 0; i < N; i++) hp[i] = (float)tu_rng_nonzero(&r, 1e-2, 1.0), hg[i] = draw_grad(&r);
  float *dp = NULL, *dg = NULL;
  CK(cudaMalloc((void **)&dp, sizeof hp));
  CK(cudaMalloc((void **)&dg, sizeof hg));
  CK(cudaMemcpy(dp, hp, sizeof hp, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dg, hg, sizeof hg, cudaMemcpyHostToDevice));
  /* the caller's mistake: an allocation far past any device (not sticky) */
  void *huge = NULL;
  cr_assert_eq(cudaMalloc(&huge, (size_t)1 << 62), cudaErrorMemoryAllocation);
  fo_hparams h;
  OK(fo_hparams_default(FO_ALG_ADAMW, &h));
  fo_options o;
  OK(fo_options_default(&o));
  o.executor = FO_EXEC_CUDA;
  fo_tensor_desc t = {N, 0, dp, dg, "w"};
  fo_optimizer *opt = NULL;
  OK(fo_optimizer_create(&opt, &o, &h, 1, &t, 1));
  OK(fo_optimizer_step(opt, NULL));
  OK(fo_optimizer_zero_grad(opt, NULL));
  cr_assert_eq(cudaPeekAtLastError(), cudaErrorMemoryAllocation,
               "the caller's pending error was cleared or replaced: %s",
               cudaGetErrorName(cudaPeekAtLastError()));
  (void)cudaGetLastError();
  CK(cudaMemcpy(back, dp, sizeof back, cudaMemcpyDeviceToHost));
  int moved = 0;
  for (int i = 0; i < N; i++) moved += back[i] != hp[i];
  cr_assert_gt(moved, N / 2, "only %d of %d parameters moved", moved, N);
  CK(cudaMemcpy(back, dg, sizeof back, cudaMemcpyDeviceToHost));
  for (int i = 0; i < N; i++) cr_assert_eq(back[i], 0.0f, "gradient %d not zeroed", i);
  OK(fo_optimizer_destroy(opt));
  CK(cudaFree(dp));
  CK(cudaFree(dg));
}

/* On a device of compute capability 9.0 or newer the step kernel is
 * launched with Programmatic Dependent Launch after the prepare kernel (and
 * waits for it before reading the step state); on older ones it is not.
 * The other tests of this file check the results either way. */
Test(gpu, step_uses_pdl_exactly_on_sm90_and_newer) {
  require_device(1);
  int major = 0;
  CK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0));
  float *dp = NULL, *dg = NULL;
  CK(cudaMalloc((void **)&dp, 1024 * sizeof(float)));
  CK(cudaMalloc((void **)&dg, 1024 * sizeof(float)));
  CK(cudaMemset(dp, 0, 1024 * sizeof(float)));
  CK(cudaMemset(dg, 0, 1024 * sizeof(float)));
  fo_hparams h;
  OK(fo_hparams_default(FO_ALG_ADAMW, &h));
  fo_options o;
  OK(fo_options_default(&o));
  o.executor = FO_EXEC_CUDA;
  fo_tensor_desc t = {1024, 0, dp, dg, "w"};
  fo_optimizer *opt = NULL;
  OK(fo_optimizer_create(&opt, &o, &h, 1, &t, 1));
  cr_assert_eq(opt->run.pdl, major >= 9, "compute capability %d.x, pdl %d", major, opt->run.pdl);
  OK(fo_optimizer_destroy(opt));
  CK(cudaFree(dp));
  CK(cudaFree(dg));
}

/* Pointers in the wrong memory are refused at create. */
Test(gpu, bad_pointers) {
  require_device(1);
  float *host = calloc(64, sizeof *host), *hostg = calloc(64, sizeof *hostg);
  float *dev_p = NULL, *dev_g = NULL;
  CK(cudaMalloc((void **)&dev_p, 64 * sizeof(float)));
  CK(cudaMalloc((void **)&dev_g, 64 * sizeof(float)));
  fo_hparams h;
  OK(fo_hparams_default(FO_ALG_ADAMW, &h));
  fo_options o;
  OK(fo_options_default(&o));
  fo_optimizer *opt = NULL;
  const struct {
    fo_executor ex;
    void *p, *g;
    const char *what;
  } cases[] = {{FO_EXEC_CUDA, host, dev_g, "host parameter, CUDA executor"},
               {FO_EXEC_CUDA, dev_p, hostg, "host gradient, CUDA executor"},
               {FO_EXEC_CPU, dev_p, hostg, "device parameter, CPU executor"},
               {FO_EXEC_CPU, host, dev_g, "device gradient, CPU executor"}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    o.executor = cases[i].ex;
    fo_tensor_desc t = {64, 0, cases[i].p, cases[i].g, "t"};
    fo_status st = fo_optimizer_create(&opt, &o, &h, 1, &t, 1);
    cr_assert_eq(st, FO_ERR_BAD_POINTER, "%s: %s (%s)", cases[i].what, fo_status_string(st),
                 fo_last_error());
    cr_assert_null(opt);
  }
  CK(cudaFree(dev_p));
  CK(cudaFree(dev_g));
  free(host);
  free(hostg);
}
