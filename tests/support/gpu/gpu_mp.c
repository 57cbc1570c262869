/*
 * gpu_mp.c -- the rig of test_gpu_mixed_precision_*.c (gpu_mp.h).
 */
#include "gpu_mp.h"

#include <criterion/criterion.h>
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cr_status.h"
#include "reference.h"
#include "testutil.h"

/* ---------------------------------------------------------------- world */

/* 40 assorted sizes: odd, around vector widths, thread counts and the CUDA
 * chunk (32768), tensors of several plan blocks, and an empty one. */
#define N_BASE 40
static const int64_t BASE_SIZES[N_BASE] = {
    1,    2,    3,    5,    7,    9,     11,    13,    15,    17,    19,     23,   29,   31,
    33,   37,   41,   63,   65,   127,   129,   255,   257,   511,   513,    1023, 1025, 2047,
    2049, 4095, 4097, 8191, 8193, 16383, 16385, 32767, 32769, 65537, 100003, 0};

/* The 40 base tensors in a shuffled order, then n_tiny of 1..64 elements. */
void mp_world_make(world *w, fo_dtype pt, fo_dtype gt, int64_t n_tiny, uint64_t seed) {
  tu_rng r;
  tu_rng_seed(&r, seed, 99);
  int64_t nt = N_BASE + n_tiny;
  int64_t *numel = calloc((size_t)nt, sizeof *numel);
  cr_assert_not_null(numel);
  for (int64_t i = 0; i < nt; i++)
    numel[i] = i < N_BASE ? BASE_SIZES[(i * 17) % N_BASE] : 1 + (int64_t)(tu_rng_u32(&r) % 64);
  world_init(w, pt, gt, numel, nt);
  free(numel);
}

/* The index of the first tensor of numel elements. */
int64_t find_tensor(const world *w, int64_t numel) {
  for (int64_t i = 0; i < w->nt; i++)
    if (w->numel[i] == numel) return i;
  cr_assert_fail("no tensor of %lld elements", (long long)numel);
  return -1;
}

/* ------------------------------------------------------- buffer images */

/* Host images of a whole role buffer (grad != 0: the gradient buffer):
 * tensors at their offsets, every other byte poisoned.  Values go in and
 * out through the reference's own conversions (tests/support). */
unsigned char *image_new(size_t bytes) {
  unsigned char *p = malloc(bytes + 1);
  cr_assert_not_null(p);
  tu_poison(p, bytes + 1);
  return p;
}

static void *img_at(const world *w, const unsigned char *img, int grad, int64_t i) {
  return (void *)(img + (grad ? w->goff[i] : w->poff[i]));
}

void img_store(const world *w, unsigned char *img, int grad, int64_t i, int64_t j, double x) {
  ref_store(grad ? w->gt : w->pt, img_at(w, img, grad, i), j, x);
}

double img_load(const world *w, const unsigned char *img, int grad, int64_t i, int64_t j) {
  return ref_load(grad ? w->gt : w->pt, img_at(w, img, grad, i), j);
}

/* The tensors of an image back to back (total elements of the dtype). */
unsigned char *img_pack(const world *w, const unsigned char *img, int grad) {
  size_t es = fo_dtype_size(grad ? w->gt : w->pt);
  unsigned char *p = malloc((size_t)w->total * es + 1);
  cr_assert_not_null(p);
  for (int64_t i = 0; i < w->nt; i++)
    memcpy(p + (size_t)w->hoff[i] * es, img_at(w, img, grad, i), (size_t)w->numel[i] * es);
  return p;
}

/* Every byte outside the tensors still poisoned. */
void mp_check_gaps(const world *w, const unsigned char *img, int grad, const char *ctx) {
  const size_t *off = grad ? w->goff : w->poff;
  size_t es = fo_dtype_size(grad ? w->gt : w->pt), bytes = grad ? w->gbytes : w->pbytes;
  size_t at = 0;
  for (int64_t i = 0; i <= w->nt; i++) {
    size_t end = i < w->nt ? off[i] : bytes;
    cr_assert(tu_is_poisoned(img + at, end - at),
              "%s: %s bytes [%zu, %zu) before tensor %lld were written", ctx,
              grad ? "gradient" : "parameter", at, end, (long long)i);
    if (i < w->nt) at = off[i] + (size_t)w->numel[i] * es;
  }
}

/* A fresh gradient value: ~2 % exact zeros, magnitudes in [2e-3, 2]. */
double mp_draw_grad(tu_rng *r) {
  return tu_rng_u32(r) % 50 == 0 ? 0.0 : tu_rng_nonzero(r, 2e-3, 2.0);
}

/* Initial parameters: random in [-1, 1], no zeros, rounded to the dtype. */
unsigned char *param_image(const world *w, uint64_t seed) {
  unsigned char *img = image_new(w->pbytes);
  tu_rng r;
  tu_rng_seed(&r, seed, 5);
  for (int64_t i = 0; i < w->nt; i++)
    for (int64_t j = 0; j < w->numel[i]; j++)
      img_store(w, img, 0, i, j, (double)(float)tu_rng_nonzero(&r, 1e-3, 1.0));
  return img;
}

/* Gradients mp_draw_grad() * mult, rounded to the gradient dtype. */
unsigned char *grad_image(const world *w, tu_rng *r, double mult) {
  unsigned char *img = image_new(w->gbytes);
  for (int64_t i = 0; i < w->nt; i++)
    for (int64_t j = 0; j < w->numel[i]; j++)
      img_store(w, img, 1, i, j, (double)(float)(mp_draw_grad(r) * mult));
  return img;
}

/* The same from packed fp32 values. */
unsigned char *grad_image_from(const world *w, const float *packed) {
  unsigned char *img = image_new(w->gbytes);
  for (int64_t i = 0; i < w->nt; i++)
    for (int64_t j = 0; j < w->numel[i]; j++)
      img_store(w, img, 1, i, j, (double)packed[w->hoff[i] + j]);
  return img;
}

/* sqrt(sum of g^2) / scale over every tensor of a gradient image, in
 * double: the norm the step must report. */
double image_norm(const world *w, const unsigned char *img, double scale) {
  double sumsq = 0.0;
  for (int64_t i = 0; i < w->nt; i++)
    for (int64_t j = 0; j < w->numel[i]; j++) {
      double g = img_load(w, img, 1, i, j);
      sumsq += g * g;
    }
  return sqrt(sumsq) / scale;
}

/* ------------------------------------------------------------ options */

void base_options(fo_options *o, fo_algorithm alg, fo_dtype pt, fo_dtype gt) {
  OK(fo_options_default(o));
  o->algorithm = alg;
  o->param_dtype = pt;
  o->grad_dtype = gt;
  o->master_weights = 1;
  o->loss_scaler.enabled = 1;
  o->loss_scaler.init_scale = 1024.0f;
  o->loss_scaler.growth_interval = 1000;
}

/* Two groups with "generic" values (docs/numerics.md: short decimals times
 * 16-bit values land on 16-bit ties); every kind of state is kept. */
void hparams_for(fo_algorithm alg, fo_hparams h[2]) {
  for (int g = 0; g < 2; g++) OK(fo_hparams_default(alg, &h[g]));
  switch (alg) {
    case FO_ALG_SGD:
      h[0].lr = 0.0517f, h[0].momentum = 0.9f, h[0].dampening = 0.1f;
      h[0].weight_decay = 0.0113f;
      h[1].lr = 0.0213f, h[1].momentum = 0.5f, h[1].nesterov = 1;
      break;
    case FO_ALG_ADAM:
    case FO_ALG_ADAMW:
      h[0].lr = 1.07e-2f, h[0].weight_decay = 0.0913f;
      h[1].lr = 3.1e-3f, h[1].amsgrad = 1, h[1].weight_decay = 0.0f;
      break;
    default:
      h[0].lr = 1.03e-3f, h[0].weight_decay = 0.0917f;
      h[1].lr = 3.1e-4f, h[1].maximize = 1;
      break;
  }
}

/* ----------------------------------------------------------------- runs */

void run_open(run *r, const dev *d, const world *w, const fo_options *opts, const fo_hparams h[2],
              const unsigned char *pimg) {
  r->d = *d;
  r->w = w;
  r->dp = dev_alloc(d, w->pbytes);
  r->dg = dev_alloc(d, w->gbytes);
  dev_put(d, r->dp, pimg, w->pbytes);
  dev_poison(d, r->dg, w->gbytes);
  dev_sync(d);
  fo_options o = *opts;
  o.executor = d->cuda ? FO_EXEC_CUDA : FO_EXEC_CPU;
  fo_tensor_desc *t = calloc((size_t)w->nt, sizeof *t);
  cr_assert_not_null(t);
  for (int64_t i = 0; i < w->nt; i++)
    t[i] = (fo_tensor_desc){w->numel[i], w->group[i], r->dp + w->poff[i], r->dg + w->goff[i], NULL};
  r->opt = NULL;
  OK(fo_optimizer_create(&r->opt, &o, h, 2, t, w->nt));
  free(t);
}

void run_close(run *r) {
  OK(fo_optimizer_destroy(r->opt));
  dev_free(&r->d, r->dp);
  dev_free(&r->d, r->dg);
}

void run_grads(run *r, const unsigned char *gimg) {
  dev_put(&r->d, r->dg, gimg, r->w->gbytes);
}

void run_step(run *r) {
  OK(fo_optimizer_step(r->opt, dev_stream(&r->d)));
}

fo_step_info run_info(const run *r) {
  fo_step_info i;
  OK(fo_optimizer_get_info(r->opt, &i));
  return i;
}

/* The loss scale as a backward pass would read it: through the pointer. */
float run_scale_at_ptr(const run *r) {
  float *p = NULL, v = 0.0f;
  OK(fo_optimizer_loss_scale_ptr(r->opt, &p));
  dev_get(&r->d, &v, p, sizeof v);
  return v;
}

void snap_take(const run *r, snap *s) {
  const world *w = r->w;
  s->param = malloc(w->pbytes + 1);
  s->grad = malloc(w->gbytes + 1);
  cr_assert(s->param && s->grad);
  dev_get(&r->d, s->param, r->dp, w->pbytes);
  dev_get(&r->d, s->grad, r->dg, w->gbytes);
  for (int k = 0; k < 4; k++) {
    float *p = NULL;
    s->state[k] = NULL;
    if (fo_optimizer_state_ptr(r->opt, 0, STATE_ROLES[k], &p) != FO_SUCCESS) continue;
    s->state[k] = malloc((size_t)w->total * 4 + 4);
    cr_assert_not_null(s->state[k]);
    for (int64_t i = 0; i < w->nt; i++) {
      OK(fo_optimizer_state_ptr(r->opt, i, STATE_ROLES[k], &p));
      dev_get(&r->d, s->state[k] + w->hoff[i], p, (size_t)w->numel[i] * 4);
    }
  }
  s->info = run_info(r);
}

void snap_free(snap *s) {
  free(s->param);
  free(s->grad);
  for (int k = 0; k < 4; k++) free(s->state[k]);
}

static int same_bits(float a, float b) {
  return memcmp(&a, &b, sizeof a) == 0;
}

void info_identical(const fo_step_info *a, const fo_step_info *b, const char *what,
                    const char *ctx) {
  cr_assert_eq(a->step, b->step, "%s: %s: step %lld vs %lld", ctx, what, (long long)a->step,
               (long long)b->step);
  cr_assert_eq(a->skipped_steps, b->skipped_steps, "%s: %s: skipped steps", ctx, what);
  cr_assert_eq(a->last_step_skipped, b->last_step_skipped, "%s: %s: last_step_skipped", ctx, what);
  cr_assert_eq(a->growth_tracker, b->growth_tracker, "%s: %s: growth tracker", ctx, what);
  cr_assert(same_bits(a->loss_scale, b->loss_scale), "%s: %s: loss scale %a vs %a", ctx, what,
            (double)a->loss_scale, (double)b->loss_scale);
  cr_assert(same_bits(a->grad_norm, b->grad_norm), "%s: %s: grad norm %a vs %a", ctx, what,
            (double)a->grad_norm, (double)b->grad_norm);
  cr_assert(same_bits(a->grad_coef, b->grad_coef), "%s: %s: grad coef %a vs %a", ctx, what,
            (double)a->grad_coef, (double)b->grad_coef);
  cr_assert(same_bits(a->lr_factor, b->lr_factor), "%s: %s: lr factor %a vs %a", ctx, what,
            (double)a->lr_factor, (double)b->lr_factor);
}

/* Two snapshots the same, byte for byte. */
void snap_identical(const world *w, const snap *a, const snap *b, const char *what,
                    const char *ctx) {
  cr_assert(memcmp(a->param, b->param, w->pbytes) == 0, "%s: %s: parameter buffers differ", ctx,
            what);
  cr_assert(memcmp(a->grad, b->grad, w->gbytes) == 0, "%s: %s: gradient buffers differ", ctx, what);
  for (int k = 0; k < 4; k++) {
    cr_assert_eq(a->state[k] == NULL, b->state[k] == NULL, "%s: %s: %s kept by one only", ctx, what,
                 ROLE_NAMES[k]);
    if (a->state[k])
      cr_assert(memcmp(a->state[k], b->state[k], (size_t)w->total * 4) == 0, "%s: %s: %s differs",
                ctx, what, ROLE_NAMES[k]);
  }
  info_identical(&a->info, &b->info, what, ctx);
}

void ctx_name(char *buf, size_t cap, fo_algorithm alg, fo_dtype pt, fo_dtype gt,
              const char *extra) {
  snprintf(buf, cap, "%s param %s grad %s%s%s", tu_alg_name(alg), tu_dtype_name(pt),
           tu_dtype_name(gt), extra ? " " : "", extra ? extra : "");
}

/* ===================================================== 1. overflow skips */
