/*
 * test_gpu_mixed_precision.c -- the GPU tier of mixed precision (issue #4):
 * loss scaling, non-finite skipping, global-norm clipping, schedules and the
 * unscaled-gradient write-back, on the CUDA executor through the public API.
 * tests/test_mixed_precision.c is the CPU tier of the same features.
 *
 * Every test first asks fo_cuda_device_count(); without a usable device it
 * is skipped with the reason (never passed without running).  With one:
 *
 *   overflow_in_one_element_skips_the_whole_step
 *       40 tensors of assorted odd sizes, external storage at (partly
 *       misaligned) offsets into one cudaMalloc per role, every algorithm x
 *       parameter dtype x gradient dtype, master weights for 16-bit
 *       parameters: after two clean steps one element of one tensor is inf,
 *       -inf or NaN; the step must leave every byte of the parameter and
 *       gradient buffers and every master / state buffer as it was, the
 *       step count unchanged, one skipped step, the scale halved; the next
 *       clean step applies.
 *   clipping_matches_the_cpu_executor_and_a_double_norm
 *       five clipped (and one unclipped) steps with loss scaling and a
 *       cosine schedule, against the CPU executor on identical inputs (the
 *       norm within 1e-6 relative: different summation trees; parameters
 *       and state within the tolerances of docs/numerics.md), and against
 *       the norm and coefficient computed here in double.
 *   norm_is_bit_identical_across_runs
 *       fresh optimizers, four runs (legacy default stream, a blocking and a
 *       non-blocking stream), 1240 tensors (more plan blocks than the
 *       prepare kernel's 1024 threads): the norm, the coefficient and every
 *       result bit for bit the same.
 *   graph_replay_matches_eager_steps
 *       fo_optimizer_step with loss scaling (growth every 3 steps),
 *       clipping and a cosine schedule captured once (global mode) on a
 *       non-blocking stream and replayed 8 times (the gradients rewritten
 *       before each replay by cudaMemcpyAsync on that stream, outside the
 *       graph; step 5 overflows and must be skipped inside the graph),
 *       against 8 eager steps of a second optimizer on another stream:
 *       fo_step_info after every step (step, skipped, scale, tracker, norm,
 *       coefficient, lr_factor) and every parameter, gradient and state
 *       byte at the end, bit for bit; with and without write_unscaled_grads.
 *   step_never_waits_for_the_host
 *       the stream is held by a host callback waiting on a flag the test
 *       sets (at most 10 s); step, zero_grad and sync_master (external and
 *       arena storage; every kernel already run once, so that lazy module
 *       loading cannot synchronize) must return FO_SUCCESS while it is still
 *       held, and the work must be done once it is released.  The same
 *       calls under a global-mode stream capture must succeed (a
 *       synchronizing call fails the capture).
 *   unscaled_grads_written_back_and_loss_scale_ptr
 *       write_unscaled_grads writes exactly g / scale (power-of-two scales,
 *       no clipping), g * coef rounded to the gradient dtype with clipping,
 *       nothing after a skipped step and nothing between tensors;
 *       fo_optimizer_loss_scale_ptr is device memory holding get_info's
 *       loss_scale.
 *   scaler_grows_and_backs_off_on_the_device
 *       growth_interval 3 (the CPU tier's sequence), hysteresis, max_scale
 *       and the inf guard, on the device.
 *   scale_floor_and_non_finite_coefficient_on_the_device
 *       issue #20: 200 consecutive overflows from 2^16 end at
 *       FO_LOSS_SCALE_MIN with the parameters and state untouched and a
 *       checkpoint that verifies and loads; the next clean step applies,
 *       finite; a scale of 0, 2^-127 or NaN written through the pointer is
 *       skipped like an overflow and restarts at the floor.
 *
 * Set FO_GPU_TEST_STAND_IN=cpu to run the same bodies against the CPU
 * executor over host memory (a check of the test's own plumbing on a
 * machine without a GPU).  The tests that need real CUDA streams skip:
 * step_never_waits_for_the_host entirely, graph_replay_matches_eager_steps
 * after running its eager-against-eager plumbing.
 */
#define _POSIX_C_SOURCE 200809L
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fusedopt.h"
#include "gpu_harness.h"
#include "reference.h"
#include "testutil.h"

#define GAP 96 /* poisoned bytes at least between two tensors */


static fo_stream_t dev_stream(const dev *d) { return d->cuda ? d->stream : NULL; }

static dev dev_open(int cuda) {
  dev d = {cuda, NULL};
  if (cuda) CK(cudaStreamCreate(&d.stream));
  return d;
}

static void dev_close(dev *d) {
  if (d->cuda) CK(cudaStreamDestroy(d->stream));
}

/* ---------------------------------------------------------------- world */

/* 40 assorted sizes: odd, around vector widths, thread counts and the CUDA
 * chunk (32768), tensors of several plan blocks, and an empty one. */
#define N_BASE 40
static const int64_t BASE_SIZES[N_BASE] = {
    1,    2,    3,    5,    7,     9,     11,    13,    15,    17,    19,     23,   29,    31,
    33,   37,   41,   63,   65,    127,   129,   255,   257,   511,   513,    1023, 1025,  2047,
    2049, 4095, 4097, 8191, 8193,  16383, 16385, 32767, 32769, 65537, 100003, 0};

/* A list of tensors and their layout: packed (host, back to back) and in
 * one buffer per role (gaps, misalignment). */
typedef struct world {
  int64_t nt, total;
  int64_t *numel, *hoff; /* host: element offset of each tensor */
  int *group;
  size_t *poff, *goff; /* buffers: byte offset of each tensor */
  size_t pbytes, gbytes;
  fo_dtype pt, gt;
} world;

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

/* The 40 base tensors in a shuffled order, then n_tiny of 1..64 elements. */
static void world_make(world *w, fo_dtype pt, fo_dtype gt, int64_t n_tiny, uint64_t seed) {
  tu_rng r;
  tu_rng_seed(&r, seed, 99);
  w->nt = N_BASE + n_tiny;
  w->numel = calloc((size_t)w->nt, sizeof *w->numel);
  w->hoff = calloc((size_t)w->nt + 1, sizeof *w->hoff);
  w->group = calloc((size_t)w->nt, sizeof *w->group);
  w->poff = calloc((size_t)w->nt, sizeof *w->poff);
  w->goff = calloc((size_t)w->nt, sizeof *w->goff);
  cr_assert(w->numel && w->hoff && w->group && w->poff && w->goff);
  for (int64_t i = 0; i < w->nt; i++) {
    w->numel[i] = i < N_BASE ? BASE_SIZES[(i * 17) % N_BASE] : 1 + (int64_t)(tu_rng_u32(&r) % 64);
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

/* The index of the first tensor of numel elements. */
static int64_t find_tensor(const world *w, int64_t numel) {
  for (int64_t i = 0; i < w->nt; i++)
    if (w->numel[i] == numel) return i;
  cr_assert_fail("no tensor of %lld elements", (long long)numel);
  return -1;
}

/* ------------------------------------------------------- buffer images */

/* Host images of a whole role buffer (grad != 0: the gradient buffer):
 * tensors at their offsets, every other byte poisoned.  Values go in and
 * out through the reference's own conversions (tests/support). */
static unsigned char *image_new(size_t bytes) {
  unsigned char *p = malloc(bytes + 1);
  cr_assert_not_null(p);
  tu_poison(p, bytes + 1);
  return p;
}

static void *img_at(const world *w, const unsigned char *img, int grad, int64_t i) {
  return (void *)(img + (grad ? w->goff[i] : w->poff[i]));
}

static void img_store(const world *w, unsigned char *img, int grad, int64_t i, int64_t j,
                      double x) {
  ref_store(grad ? w->gt : w->pt, img_at(w, img, grad, i), j, x);
}

static double img_load(const world *w, const unsigned char *img, int grad, int64_t i,
                       int64_t j) {
  return ref_load(grad ? w->gt : w->pt, img_at(w, img, grad, i), j);
}

/* The tensors of an image back to back (total elements of the dtype). */
static unsigned char *img_pack(const world *w, const unsigned char *img, int grad) {
  size_t es = fo_dtype_size(grad ? w->gt : w->pt);
  unsigned char *p = malloc((size_t)w->total * es + 1);
  cr_assert_not_null(p);
  for (int64_t i = 0; i < w->nt; i++)
    memcpy(p + (size_t)w->hoff[i] * es, img_at(w, img, grad, i), (size_t)w->numel[i] * es);
  return p;
}

/* Every byte outside the tensors still poisoned. */
static void check_gaps(const world *w, const unsigned char *img, int grad, const char *ctx) {
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
static double draw_grad(tu_rng *r) {
  return tu_rng_u32(r) % 50 == 0 ? 0.0 : tu_rng_nonzero(r, 2e-3, 2.0);
}

/* Initial parameters: random in [-1, 1], no zeros, rounded to the dtype. */
static unsigned char *param_image(const world *w, uint64_t seed) {
  unsigned char *img = image_new(w->pbytes);
  tu_rng r;
  tu_rng_seed(&r, seed, 5);
  for (int64_t i = 0; i < w->nt; i++)
    for (int64_t j = 0; j < w->numel[i]; j++)
      img_store(w, img, 0, i, j, (double)(float)tu_rng_nonzero(&r, 1e-3, 1.0));
  return img;
}

/* Gradients draw_grad() * mult, rounded to the gradient dtype. */
static unsigned char *grad_image(const world *w, tu_rng *r, double mult) {
  unsigned char *img = image_new(w->gbytes);
  for (int64_t i = 0; i < w->nt; i++)
    for (int64_t j = 0; j < w->numel[i]; j++)
      img_store(w, img, 1, i, j, (double)(float)(draw_grad(r) * mult));
  return img;
}

/* The same from packed fp32 values. */
static unsigned char *grad_image_from(const world *w, const float *packed) {
  unsigned char *img = image_new(w->gbytes);
  for (int64_t i = 0; i < w->nt; i++)
    for (int64_t j = 0; j < w->numel[i]; j++)
      img_store(w, img, 1, i, j, (double)packed[w->hoff[i] + j]);
  return img;
}

/* sqrt(sum of g^2) / scale over every tensor of a gradient image, in
 * double: the norm the step must report. */
static double image_norm(const world *w, const unsigned char *img, double scale) {
  double sumsq = 0.0;
  for (int64_t i = 0; i < w->nt; i++)
    for (int64_t j = 0; j < w->numel[i]; j++) {
      double g = img_load(w, img, 1, i, j);
      sumsq += g * g;
    }
  return sqrt(sumsq) / scale;
}

/* ------------------------------------------------------------ options */

static void base_options(fo_options *o, fo_algorithm alg, fo_dtype pt, fo_dtype gt) {
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
static void hparams_for(fo_algorithm alg, fo_hparams h[2]) {
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

/* One optimizer of the executor in d over a world: external tensors at
 * their offsets in one buffer per role. */
typedef struct run {
  dev d;
  const world *w;
  unsigned char *dp, *dg;
  fo_optimizer *opt;
} run;

static void run_open(run *r, const dev *d, const world *w, const fo_options *opts,
                     const fo_hparams h[2], const unsigned char *pimg) {
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
    t[i] = (fo_tensor_desc){w->numel[i], w->group[i], r->dp + w->poff[i], r->dg + w->goff[i],
                            NULL};
  r->opt = NULL;
  OK(fo_optimizer_create(&r->opt, &o, h, 2, t, w->nt));
  free(t);
}

static void run_close(run *r) {
  OK(fo_optimizer_destroy(r->opt));
  dev_free(&r->d, r->dp);
  dev_free(&r->d, r->dg);
}

static void run_grads(run *r, const unsigned char *gimg) {
  dev_put(&r->d, r->dg, gimg, r->w->gbytes);
}

static void run_step(run *r) { OK(fo_optimizer_step(r->opt, dev_stream(&r->d))); }

static fo_step_info run_info(const run *r) {
  fo_step_info i;
  OK(fo_optimizer_get_info(r->opt, &i));
  return i;
}

/* The loss scale as a backward pass would read it: through the pointer. */
static float run_scale_at_ptr(const run *r) {
  float *p = NULL, v = 0.0f;
  OK(fo_optimizer_loss_scale_ptr(r->opt, &p));
  dev_get(&r->d, &v, p, sizeof v);
  return v;
}

/* Everything a run holds, on the host: both role buffers whole (gaps
 * included), the state buffers packed, the step info. */
typedef struct snap {
  unsigned char *param, *grad;
  float *state[4]; /* MASTER, EXP_AVG, EXP_AVG_SQ, MAX_EXP_AVG_SQ; NULL: not kept */
  fo_step_info info;
} snap;

static const fo_role STATE_ROLES[4] = {FO_ROLE_MASTER, FO_ROLE_EXP_AVG, FO_ROLE_EXP_AVG_SQ,
                                       FO_ROLE_MAX_EXP_AVG_SQ};
static const char *const ROLE_NAMES[4] = {"master", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"};

static void snap_take(const run *r, snap *s) {
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

static void snap_free(snap *s) {
  free(s->param);
  free(s->grad);
  for (int k = 0; k < 4; k++) free(s->state[k]);
}

static int same_bits(float a, float b) { return memcmp(&a, &b, sizeof a) == 0; }

static void info_identical(const fo_step_info *a, const fo_step_info *b, const char *what,
                           const char *ctx) {
  cr_assert_eq(a->step, b->step, "%s: %s: step %lld vs %lld", ctx, what, (long long)a->step,
               (long long)b->step);
  cr_assert_eq(a->skipped_steps, b->skipped_steps, "%s: %s: skipped steps", ctx, what);
  cr_assert_eq(a->last_step_skipped, b->last_step_skipped, "%s: %s: last_step_skipped", ctx,
               what);
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
static void snap_identical(const world *w, const snap *a, const snap *b, const char *what,
                           const char *ctx) {
  cr_assert(memcmp(a->param, b->param, w->pbytes) == 0, "%s: %s: parameter buffers differ", ctx,
            what);
  cr_assert(memcmp(a->grad, b->grad, w->gbytes) == 0, "%s: %s: gradient buffers differ", ctx,
            what);
  for (int k = 0; k < 4; k++) {
    cr_assert_eq(a->state[k] == NULL, b->state[k] == NULL, "%s: %s: %s kept by one only", ctx,
                 what, ROLE_NAMES[k]);
    if (a->state[k])
      cr_assert(memcmp(a->state[k], b->state[k], (size_t)w->total * 4) == 0,
                "%s: %s: %s differs", ctx, what, ROLE_NAMES[k]);
  }
  info_identical(&a->info, &b->info, what, ctx);
}

static void ctx_name(char *buf, size_t cap, fo_algorithm alg, fo_dtype pt, fo_dtype gt,
                     const char *extra) {
  snprintf(buf, cap, "%s param %s grad %s%s%s", tu_alg_name(alg), tu_dtype_name(pt),
           tu_dtype_name(gt), extra ? " " : "", extra ? extra : "");
}

/* ===================================================== 1. overflow skips */

Test(gpu_mp, overflow_in_one_element_skips_the_whole_step) {
  dev d = dev_open(require_device(0));
  const fo_dtype dts[3] = {FO_DTYPE_F32, FO_DTYPE_F16, FO_DTYPE_BF16};
  /* where the non-finite value goes: the last element of the largest
   * tensor (its tail block), the single element of a 1-element tensor, the
   * first element of a tensor's second plan block, the middle of another */
  const struct {
    int64_t numel, elem;
  } where[4] = {{100003, 100002}, {1, 0}, {32769, 32768}, {8193, 4001}};
  const float bad_values[3] = {INFINITY, -INFINITY, NAN};
  int k = 0;
  for (int p = 0; p < 3; p++)
    for (int g = 0; g < 3; g++) {
      world w;
      world_make(&w, dts[p], dts[g], 0, 1000 + (uint64_t)(p * 3 + g));
      unsigned char *pimg = param_image(&w, 7 + (uint64_t)(p * 3 + g));
      for (int a = 0; a < FO_ALG_COUNT; a++, k++) {
        char ctx[160];
        fo_options o;
        base_options(&o, (fo_algorithm)a, dts[p], dts[g]);
        o.max_grad_norm = k % 2 ? 5.0f : 0.0f;
        o.write_unscaled_grads = k % 3 == 0;
        if (k % 4 == 1) {
          o.schedule.kind = FO_SCHED_COSINE;
          o.schedule.warmup_steps = 1;
          o.schedule.total_steps = 6;
        }
        ctx_name(ctx, sizeof ctx, (fo_algorithm)a, dts[p], dts[g],
                 o.max_grad_norm > 0.0f ? "clip" : NULL);
        fo_hparams h[2];
        hparams_for((fo_algorithm)a, h);
        run r;
        run_open(&r, &d, &w, &o, h, pimg);
        tu_rng rng;
        tu_rng_seed(&rng, (uint64_t)k, 3);
        /* two clean steps, so that every moment and buffer is non-zero */
        for (int s = 0; s < 2; s++) {
          unsigned char *gimg = grad_image(&w, &rng, 1024.0);
          run_grads(&r, gimg);
          run_step(&r);
          dev_sync(&r.d); /* the copy's source is freed next */
          free(gimg);
        }
        /* one element of one tensor non-finite */
        unsigned char *bad = grad_image(&w, &rng, 1024.0);
        const int64_t t = find_tensor(&w, where[k % 4].numel), e = where[k % 4].elem;
        const float v = bad_values[k % 3];
        img_store(&w, bad, 1, t, e, (double)v);
        cr_assert(!isfinite(img_load(&w, bad, 1, t, e)), "%s: the test's bad value is finite", ctx);
        run_grads(&r, bad);
        snap before, after;
        snap_take(&r, &before);
        cr_assert_eq(memcmp(before.grad, bad, w.gbytes), 0, "%s: gradient upload", ctx);
        cr_assert_eq(before.info.step, 2, "%s", ctx);
        cr_assert_eq(before.info.skipped_steps, 0, "%s", ctx);
        cr_assert_eq(before.info.loss_scale, 1024.0f, "%s", ctx);
        run_step(&r);
        snap_take(&r, &after);
        cr_assert(memcmp(before.param, after.param, w.pbytes) == 0,
                  "%s: %g at tensor %lld [%lld]: the parameter buffer changed", ctx, (double)v,
                  (long long)t, (long long)e);
        cr_assert(memcmp(before.grad, after.grad, w.gbytes) == 0,
                  "%s: the gradient buffer changed in a skipped step", ctx);
        for (int s = 0; s < 4; s++) {
          cr_assert_eq(before.state[s] == NULL, after.state[s] == NULL);
          if (before.state[s])
            cr_assert(memcmp(before.state[s], after.state[s], (size_t)w.total * 4) == 0,
                      "%s: %g at tensor %lld [%lld]: %s changed", ctx, (double)v, (long long)t,
                      (long long)e, ROLE_NAMES[s]);
        }
        if (dts[p] != FO_DTYPE_F32) cr_assert_not_null(before.state[0], "%s: no master", ctx);
        cr_assert_eq(after.info.step, 2, "%s: step count %lld", ctx, (long long)after.info.step);
        cr_assert_eq(after.info.skipped_steps, 1, "%s", ctx);
        cr_assert_eq(after.info.last_step_skipped, 1, "%s", ctx);
        cr_assert_eq(after.info.loss_scale, 512.0f, "%s: scale %g", ctx,
                     (double)after.info.loss_scale);
        cr_assert(!isfinite(after.info.grad_norm), "%s: norm %g", ctx,
                  (double)after.info.grad_norm);
        cr_assert_eq(run_scale_at_ptr(&r), 512.0f, "%s", ctx);
        /* the next clean step applies */
        unsigned char *clean = grad_image(&w, &rng, 512.0);
        run_grads(&r, clean);
        run_step(&r);
        snap again;
        snap_take(&r, &again);
        cr_assert_eq(again.info.step, 3, "%s", ctx);
        cr_assert_eq(again.info.last_step_skipped, 0, "%s", ctx);
        cr_assert(memcmp(before.param, again.param, w.pbytes) != 0,
                  "%s: the clean step after a skip changed nothing", ctx);
        check_gaps(&w, again.param, 0, ctx);
        check_gaps(&w, again.grad, 1, ctx);
        snap_free(&before);
        snap_free(&after);
        snap_free(&again);
        free(bad);
        free(clean);
        run_close(&r);
      }
      free(pimg);
      world_free(&w);
    }
  dev_close(&d);
}

/* ========================================================== 2. clipping */

/* The gradients of one clipping step, packed fp32 values exactly
 * representable in the gradient dtype: draw_grad() * gain * scale, redrawn
 * where the rule has a discontinuity (docs/numerics.md): Lion's c = b1*m +
 * (1-b1)*d or Adam's L2-decayed gradient d + wd*w cancelling to below 1e-3
 * of its terms, judged with the CPU optimizer's current state. */
static float *clip_grads(const world *w, fo_algorithm alg, const fo_hparams h[2], const snap *cpu,
                         tu_rng *r, double scale, double gain, double max_norm) {
  const int64_t n = w->total;
  float *gf = malloc((size_t)n * 4 + 4);
  double *pv = malloc((size_t)n * sizeof *pv + 8);
  cr_assert(gf && pv);
  for (int64_t e = 0; e < n; e++) gf[e] = (float)ref_round(w->gt, draw_grad(r) * gain * scale);
  for (int64_t i = 0; i < w->nt; i++)
    for (int64_t j = 0; j < w->numel[i]; j++)
      pv[w->hoff[i] + j] = cpu->state[0] ? (double)cpu->state[0][w->hoff[i] + j]
                                         : img_load(w, cpu->param, 0, i, j);
  const float *m = cpu->state[1];
  for (int round = 0; round < 8; round++) {
    double sumsq = 0.0;
    for (int64_t e = 0; e < n; e++) sumsq += (double)gf[e] * (double)gf[e];
    const double norm = sqrt(sumsq) / scale;
    const double coef = fmin(1.0, max_norm / (norm + 1e-6)) / scale;
    int64_t redrawn = 0;
    for (int64_t i = 0; i < w->nt; i++) {
      const fo_hparams *hg = &h[w->group[i]];
      for (int64_t j = 0; j < w->numel[i]; j++) {
        const int64_t e = w->hoff[i] + j;
        const double dd = (double)gf[e] * coef * (hg->maximize ? -1.0 : 1.0);
        int bad = 0;
        if (alg == FO_ALG_ADAM && hg->weight_decay > 0.0f) {
          const double wp = (double)hg->weight_decay * pv[e];
          const double terms = fabs(dd) + fabs(wp);
          bad = terms > 0.0 && fabs(dd + wp) < 1e-3 * terms;
        } else if (alg == FO_ALG_LION) {
          const double bm = (double)hg->beta1 * (m ? (double)m[e] : 0.0);
          const double bd = (1.0 - (double)hg->beta1) * dd;
          const double terms = fabs(bm) + fabs(bd);
          bad = terms > 0.0 && fabs(bm + bd) < 1e-3 * terms;
        }
        if (bad) {
          gf[e] = (float)ref_round(w->gt, draw_grad(r) * gain * scale);
          redrawn++;
        }
      }
    }
    if (!redrawn) break;
  }
  free(pv);
  return gf;
}

static double *widen_packed(fo_dtype dt, const unsigned char *buf, int64_t n) {
  double *x = malloc((size_t)n * sizeof *x + 8);
  cr_assert_not_null(x);
  for (int64_t i = 0; i < n; i++) x[i] = ref_load(dt, buf, i);
  return x;
}

static double max_abs(const double *x, int64_t n) {
  double m = 0.0;
  for (int64_t i = 0; i < n; i++)
    if (isfinite(x[i]) && fabs(x[i]) > m) m = fabs(x[i]);
  return m;
}

static void expect_report(int ok, const tu_report *rep, const char *label, const char *ctx) {
  char msg[512];
  tu_report_format(rep, label, msg, sizeof msg);
  cr_assert(ok, "%s: %s", ctx, msg);
}

/* The run under test against the CPU executor with test_gpu_kernels.c's
 * tolerances: fp32 values within 1e-5 of the buffer's largest magnitude +
 * 1e-5 relative; 16-bit parameters (all with master here) that plus 1 ulp,
 * and exactly RNE(their own master). */
static void compare_to_cpu(const world *w, const snap *want, const snap *got, const char *ctx) {
  const int64_t n = w->total;
  const int sixteen = w->pt != FO_DTYPE_F32;
  tu_report rep;
  int64_t inexact = 0;
  unsigned char *pw_raw = img_pack(w, want->param, 0), *pg_raw = img_pack(w, got->param, 0);
  double *pw = widen_packed(w->pt, pw_raw, n);
  tu_tol tol = {1e-5 * max_abs(pw, n), 1e-5, sixteen ? 1.0 : 0.0, w->pt};
  expect_report(tu_compare(&rep, pw, pg_raw, w->pt, n, tol), &rep, "parameters", ctx);
  inexact += rep.inexact;
  if (sixteen) {
    cr_assert_not_null(got->state[0], "%s: no master weights", ctx);
    for (int64_t e = 0; e < n; e++) {
      double rne = ref_round(w->pt, (double)got->state[0][e]);
      double pe = ref_load(w->pt, pg_raw, e);
      cr_assert(rne == pe, "%s: parameter [%lld] = %.9g is not RNE(master %.9g)", ctx,
                (long long)e, pe, (double)got->state[0][e]);
    }
  }
  for (int k = 0; k < 4; k++) {
    cr_assert_eq(got->state[k] == NULL, want->state[k] == NULL, "%s: %s kept by one executor",
                 ctx, ROLE_NAMES[k]);
    if (!want->state[k]) continue;
    double *sw = malloc((size_t)n * sizeof *sw + 8);
    cr_assert_not_null(sw);
    for (int64_t i = 0; i < n; i++) sw[i] = (double)want->state[k][i];
    tu_tol st = {1e-5 * max_abs(sw, n), 1e-5, 0.0, FO_DTYPE_F32};
    expect_report(tu_compare(&rep, sw, got->state[k], FO_DTYPE_F32, n, st), &rep, ROLE_NAMES[k],
                  ctx);
    inexact += rep.inexact;
    free(sw);
  }
  if (inexact) cr_log_info("%s: %lld values differ from the CPU executor (within tolerance)", ctx,
                           (long long)inexact);
  free(pw);
  free(pw_raw);
  free(pg_raw);
}

Test(gpu_mp, clipping_matches_the_cpu_executor_and_a_double_norm) {
  dev d = dev_open(require_device(0));
  const dev host = {0, NULL};
  const struct {
    fo_dtype pt, gt;
  } dts[4] = {{FO_DTYPE_F32, FO_DTYPE_F32},
              {FO_DTYPE_BF16, FO_DTYPE_BF16},
              {FO_DTYPE_F16, FO_DTYPE_F32},
              {FO_DTYPE_F32, FO_DTYPE_F16}};
  /* gradient magnitudes per step: the norm is ~650 x gain, so max_grad_norm
   * 5 clips every step but the third */
  enum { STEPS = 5 };
  const double gains[STEPS] = {1.0, 1.0, 1e-3, 1.0, 0.5};
  const double scale = 1024.0, max_norm = 5.0;
  for (int a = 0; a < FO_ALG_COUNT; a++)
    for (int m = 0; m < 4; m++) {
      const fo_algorithm alg = (fo_algorithm)a;
      char ctx[160];
      ctx_name(ctx, sizeof ctx, alg, dts[m].pt, dts[m].gt, NULL);
      world w;
      world_make(&w, dts[m].pt, dts[m].gt, 0, 2000 + (uint64_t)(a * 4 + m));
      unsigned char *pimg = param_image(&w, 21 + (uint64_t)(a * 4 + m));
      fo_options o;
      base_options(&o, alg, dts[m].pt, dts[m].gt);
      o.max_grad_norm = (float)max_norm;
      o.schedule.kind = FO_SCHED_COSINE;
      o.schedule.warmup_steps = 1;
      o.schedule.total_steps = 8;
      o.schedule.min_ratio = 0.05f;
      fo_hparams h[2];
      hparams_for(alg, h);
      run cpu, dut;
      run_open(&cpu, &host, &w, &o, h, pimg);
      run_open(&dut, &d, &w, &o, h, pimg);
      tu_rng rng;
      tu_rng_seed(&rng, (uint64_t)(a * 4 + m), 11);
      for (int s = 0; s < STEPS; s++) {
        snap cs;
        snap_take(&cpu, &cs);
        float *gf = clip_grads(&w, alg, h, &cs, &rng, scale, gains[s], max_norm);
        unsigned char *gimg = grad_image_from(&w, gf);
        run_grads(&cpu, gimg);
        run_grads(&dut, gimg);
        run_step(&cpu);
        run_step(&dut);
        const fo_step_info ci = run_info(&cpu), gi = run_info(&dut);
        /* the norm and coefficient, in double here */
        const double norm = image_norm(&w, gimg, scale);
        const double clip = fmin(1.0, max_norm / (norm + 1e-6));
        const double coef = clip / scale;
        cr_assert_eq(gi.step, s + 1, "%s: step %d: count %lld", ctx, s + 1, (long long)gi.step);
        cr_assert_eq(gi.last_step_skipped, 0, "%s: step %d skipped", ctx, s + 1);
        cr_assert(fabs((double)gi.grad_norm - norm) <= 1e-6 * norm,
                  "%s: step %d: norm %.9g, double %.9g", ctx, s + 1, (double)gi.grad_norm, norm);
        cr_assert(fabs((double)gi.grad_norm - (double)ci.grad_norm) <= 1e-6 * (double)ci.grad_norm,
                  "%s: step %d: norm %.9g, CPU executor %.9g", ctx, s + 1, (double)gi.grad_norm,
                  (double)ci.grad_norm);
        cr_assert(fabs((double)gi.grad_coef - coef) <= 1e-6 * coef,
                  "%s: step %d: coefficient %.9g, double %.9g", ctx, s + 1, (double)gi.grad_coef,
                  coef);
        cr_assert(fabs((double)gi.grad_coef - (double)ci.grad_coef) <= 1e-6 * (double)ci.grad_coef,
                  "%s: step %d: coefficient %.9g, CPU executor %.9g", ctx, s + 1,
                  (double)gi.grad_coef, (double)ci.grad_coef);
        cr_assert(fabs((double)gi.lr_factor - (double)ci.lr_factor) <= 1e-6,
                  "%s: step %d: lr factor %.9g, CPU executor %.9g", ctx, s + 1,
                  (double)gi.lr_factor, (double)ci.lr_factor);
        cr_assert_eq(gi.loss_scale, ci.loss_scale, "%s: step %d: scale", ctx, s + 1);
        if (gains[s] == 1.0)
          cr_assert(clip < 0.1 && (double)gi.grad_coef * scale < 0.1,
                    "%s: step %d: the test meant to clip (clip %g, coef x scale %g)", ctx, s + 1,
                    clip, (double)gi.grad_coef * scale);
        if (gains[s] < 0.01)
          cr_assert(norm < max_norm, "%s: step %d: the test meant not to clip (norm %g)", ctx,
                    s + 1, norm);
        if (norm < max_norm)
          cr_assert_eq(gi.grad_coef, (float)(1.0 / scale),
                       "%s: step %d: norm %g < %g, yet coefficient %a", ctx, s + 1, norm,
                       max_norm, (double)gi.grad_coef);
        snap_free(&cs);
        free(gf);
        free(gimg);
      }
      snap want, got;
      snap_take(&cpu, &want);
      snap_take(&dut, &got);
      compare_to_cpu(&w, &want, &got, ctx);
      check_gaps(&w, got.param, 0, ctx);
      check_gaps(&w, got.grad, 1, ctx);
      /* gradients are not written back unless asked */
      cr_assert(memcmp(got.grad, want.grad, w.gbytes) == 0, "%s: gradients changed", ctx);
      snap_free(&want);
      snap_free(&got);
      run_close(&cpu);
      run_close(&dut);
      free(pimg);
      world_free(&w);
    }
  dev_close(&d);
}

/* ======================================================= 3. repeatable */

Test(gpu_mp, norm_is_bit_identical_across_runs) {
  dev d = dev_open(require_device(0));
  enum { RUNS = 4, STEPS = 3 };
  /* 1200 tiny tensors on top of the 40: more plan blocks (and partial sums)
   * than the prepare kernel has threads, so its strided loop runs */
  world w;
  world_make(&w, FO_DTYPE_BF16, FO_DTYPE_BF16, 1200, 3000);
  const char *ctx = "adamw param bf16 grad bf16, 1240 tensors";
  unsigned char *pimg = param_image(&w, 31);
  unsigned char *gimg[STEPS];
  tu_rng rng;
  tu_rng_seed(&rng, 31, 1);
  for (int s = 0; s < STEPS; s++) gimg[s] = grad_image(&w, &rng, 1024.0);
  fo_options o;
  base_options(&o, FO_ALG_ADAMW, w.pt, w.gt);
  o.max_grad_norm = 5.0f;
  fo_hparams h[2];
  hparams_for(FO_ALG_ADAMW, h);
  cudaStream_t nonblocking = NULL;
  if (d.cuda) CK(cudaStreamCreateWithFlags(&nonblocking, cudaStreamNonBlocking));
  fo_step_info info[RUNS][STEPS];
  snap fin[RUNS];
  for (int i = 0; i < RUNS; i++) {
    /* the legacy default stream, the test's stream, a non-blocking one */
    dev di = d;
    if (d.cuda) di.stream = i == 0 ? NULL : i == 2 ? nonblocking : d.stream;
    run r;
    run_open(&r, &di, &w, &o, h, pimg);
    for (int s = 0; s < STEPS; s++) {
      run_grads(&r, gimg[s]);
      run_step(&r);
      info[i][s] = run_info(&r);
    }
    snap_take(&r, &fin[i]);
    run_close(&r);
  }
  for (int s = 0; s < STEPS; s++) {
    const double norm = image_norm(&w, gimg[s], 1024.0);
    cr_assert(isfinite(info[0][s].grad_norm) && info[0][s].grad_norm > 0.0f, "%s", ctx);
    cr_assert(fabs((double)info[0][s].grad_norm - norm) <= 1e-6 * norm,
              "%s: step %d: norm %.9g, double %.9g", ctx, s + 1, (double)info[0][s].grad_norm,
              norm);
    for (int i = 1; i < RUNS; i++) {
      char what[64];
      snprintf(what, sizeof what, "run %d step %d against run 0", i + 1, s + 1);
      info_identical(&info[i][s], &info[0][s], what, ctx);
    }
  }
  for (int i = 1; i < RUNS; i++) {
    char what[64];
    snprintf(what, sizeof what, "run %d against run 0", i + 1);
    snap_identical(&w, &fin[i], &fin[0], what, ctx);
  }
  for (int i = 0; i < RUNS; i++) snap_free(&fin[i]);
  for (int s = 0; s < STEPS; s++) free(gimg[s]);
  if (nonblocking) CK(cudaStreamDestroy(nonblocking));
  free(pimg);
  world_free(&w);
  dev_close(&d);
}

/* ======================================================== 4. CUDA graph */

Test(gpu_mp, graph_replay_matches_eager_steps) {
  const int cuda = require_device(0);
  dev d = dev_open(cuda);
  enum { N = 8, OVERFLOW_AT = 5 };
  /* init 1024, growth every 3 clean steps, step 5 overflows */
  const float want_scale[N] = {1024, 1024, 2048, 2048, 1024, 1024, 1024, 2048};
  const int want_tracker[N] = {1, 2, 0, 1, 0, 1, 2, 0};
  dev gd = d; /* the graph's stream: non-blocking */
  if (cuda) CK(cudaStreamCreateWithFlags(&gd.stream, cudaStreamNonBlocking));
  const struct {
    fo_dtype pt, gt;
  } dts[2] = {{FO_DTYPE_BF16, FO_DTYPE_BF16}, {FO_DTYPE_F32, FO_DTYPE_F16}};
  for (int a = 0; a < FO_ALG_COUNT; a++)
    for (int m = 0; m < 2; m++) {
      const fo_algorithm alg = (fo_algorithm)a;
      char ctx[160];
      ctx_name(ctx, sizeof ctx, alg, dts[m].pt, dts[m].gt, m ? "write_unscaled_grads" : NULL);
      world w;
      world_make(&w, dts[m].pt, dts[m].gt, 0, 4000 + (uint64_t)(a * 2 + m));
      unsigned char *pimg = param_image(&w, 41 + (uint64_t)(a * 2 + m));
      unsigned char *gimg[N];
      tu_rng rng;
      tu_rng_seed(&rng, (uint64_t)(a * 2 + m), 4);
      for (int s = 0; s < N; s++) gimg[s] = grad_image(&w, &rng, 1024.0);
      img_store(&w, gimg[OVERFLOW_AT - 1], 1, find_tensor(&w, 4097), 4096, INFINITY);
      fo_options o;
      base_options(&o, alg, dts[m].pt, dts[m].gt);
      o.loss_scaler.growth_interval = 3;
      o.max_grad_norm = 5.0f;
      o.write_unscaled_grads = m;
      o.schedule.kind = FO_SCHED_COSINE;
      o.schedule.warmup_steps = 2;
      o.schedule.total_steps = 10;
      o.schedule.min_ratio = 0.1f;
      fo_hparams h[2];
      hparams_for(alg, h);
      run eager, graphed;
      run_open(&eager, &d, &w, &o, h, pimg);
      run_open(&graphed, &gd, &w, &o, h, pimg);
      cudaGraph_t graph = NULL;
      cudaGraphExec_t exec = NULL;
      for (int s = 0; s < N; s++) {
        run_grads(&eager, gimg[s]);
        run_step(&eager);
        if (cuda && !exec) {
          /* captured after the eager optimizer's first step has run the
           * same kernels once (lazy module loading stays out of the
           * capture).  Global mode: a call the step makes that is not
           * allowed during capture (a synchronizing copy, an allocation)
           * fails the capture. */
          dev_sync(&d);
          CK(cudaStreamBeginCapture(gd.stream, cudaStreamCaptureModeGlobal));
          fo_status st = fo_optimizer_step(graphed.opt, gd.stream);
          cudaError_t e = cudaStreamEndCapture(gd.stream, &graph);
          cr_assert_eq(st, FO_SUCCESS, "%s: step during capture: %s", ctx, fo_last_error());
          cr_assert_eq(e, cudaSuccess, "%s: capture: %s", ctx, cudaGetErrorString(e));
          size_t nodes = 0;
          CK(cudaGraphGetNodes(graph, NULL, &nodes));
          /* the pre-pass, the prepare kernel, the update (+ the write-back) */
          cr_assert_geq(nodes, (size_t)(3 + m), "%s: %zu graph nodes", ctx, nodes);
          CK(cudaGraphInstantiate(&exec, graph, 0));
          /* capturing ran nothing */
          cr_assert_eq(run_info(&graphed).step, 0, "%s: capture applied a step", ctx);
        }
        /* a copy outside the graph, in stream order before the replay */
        run_grads(&graphed, gimg[s]);
        if (cuda)
          CK(cudaGraphLaunch(exec, gd.stream));
        else
          run_step(&graphed);
        const fo_step_info ie = run_info(&eager), ig = run_info(&graphed);
        char what[64];
        snprintf(what, sizeof what, "replay %d", s + 1);
        info_identical(&ig, &ie, what, ctx);
        cr_assert_eq(ie.loss_scale, want_scale[s], "%s: after step %d: scale %g, expected %g",
                     ctx, s + 1, (double)ie.loss_scale, (double)want_scale[s]);
        cr_assert_eq(ie.growth_tracker, want_tracker[s], "%s: after step %d: tracker %d", ctx,
                     s + 1, ie.growth_tracker);
        cr_assert_eq(ie.last_step_skipped, s + 1 == OVERFLOW_AT, "%s: step %d", ctx, s + 1);
        cr_assert_eq(ie.step, s + 1 < OVERFLOW_AT ? s + 1 : s, "%s: step %d", ctx, s + 1);
        cr_assert_eq(run_scale_at_ptr(&graphed), ig.loss_scale, "%s: step %d", ctx, s + 1);
      }
      snap se, sg;
      snap_take(&eager, &se);
      snap_take(&graphed, &sg);
      snap_identical(&w, &sg, &se, "graph replay against eager steps", ctx);
      cr_assert_eq(se.info.skipped_steps, 1, "%s", ctx);
      /* the last applied step is number 7 (k = 6): warmup 2, then cosine
       * over 8 steps at j = 4: 0.1 + 0.9 * 0.5 * (1 + cos(pi/2)) = 0.55 */
      cr_assert(fabs((double)sg.info.lr_factor - 0.55) <= 1e-6, "%s: lr factor %.9g", ctx,
                (double)sg.info.lr_factor);
      check_gaps(&w, sg.param, 0, ctx);
      check_gaps(&w, sg.grad, 1, ctx);
      if (exec) CK(cudaGraphExecDestroy(exec));
      if (graph) CK(cudaGraphDestroy(graph));
      snap_free(&se);
      snap_free(&sg);
      run_close(&eager);
      run_close(&graphed);
      for (int s = 0; s < N; s++) free(gimg[s]);
      free(pimg);
      world_free(&w);
    }
  if (cuda) CK(cudaStreamDestroy(gd.stream));
  dev_close(&d);
  if (!cuda)
    cr_skip_test("stand-in: graph capture needs a CUDA device (the eager-against-eager "
                 "plumbing ran and passed)");
}

/* ==================================================== 5. no host waits */

#define GATE_TIMEOUT_S 10.0

/* A host callback that holds its stream until the test opens the gate (or
 * GATE_TIMEOUT_S passes, so that a library call that waits for the stream
 * fails the test instead of hanging it). */
typedef struct gate {
  atomic_int open, done, timed_out;
} gate;

static void CUDART_CB gate_wait(void *arg) {
  gate *g = arg;
  const double t0 = tu_now();
  const struct timespec nap = {0, 1000000};
  while (!atomic_load(&g->open)) {
    if (tu_now() - t0 > GATE_TIMEOUT_S) {
      atomic_store(&g->timed_out, 1);
      break;
    }
    nanosleep(&nap, NULL);
  }
  atomic_store(&g->done, 1);
}

Test(gpu_mp, step_never_waits_for_the_host, .timeout = 120) {
  require_device(1);
  dev d = dev_open(1); /* a blocking stream: legacy-stream work would wait on it too */
  world w;
  world_make(&w, FO_DTYPE_BF16, FO_DTYPE_BF16, 0, 5000);
  const char *ctx = "adamw bf16, scaler + clip + cosine + write_unscaled_grads";
  unsigned char *pimg = param_image(&w, 51);
  tu_rng rng;
  tu_rng_seed(&rng, 51, 2);
  unsigned char *gimg = grad_image(&w, &rng, 1024.0);
  fo_options o;
  base_options(&o, FO_ALG_ADAMW, w.pt, w.gt);
  o.max_grad_norm = 5.0f;
  o.write_unscaled_grads = 1;
  o.schedule.kind = FO_SCHED_COSINE;
  o.schedule.warmup_steps = 1;
  o.schedule.total_steps = 5;
  fo_hparams h[2];
  hparams_for(FO_ALG_ADAMW, h);
  run r;
  run_open(&r, &d, &w, &o, h, pimg);
  run_grads(&r, gimg);
  /* an arena optimizer too: its zero_grad is one cudaMemsetAsync */
  fo_options oa = o;
  oa.storage = FO_STORAGE_ARENA;
  oa.executor = FO_EXEC_CUDA;
  fo_tensor_desc *t = calloc((size_t)w.nt, sizeof *t);
  cr_assert_not_null(t);
  for (int64_t i = 0; i < w.nt; i++) t[i] = (fo_tensor_desc){w.numel[i], w.group[i], NULL, NULL, NULL};
  fo_optimizer *arena = NULL;
  OK(fo_optimizer_create(&arena, &oa, h, 2, t, w.nt));
  free(t);
  void *abase = NULL;
  size_t abytes = 0;
  OK(fo_optimizer_arena(arena, FO_ROLE_GRAD, &abase, &abytes));
  /* warm-up: every call once on a free stream, so that each kernel the
   * held round launches is loaded (lazy module loading may synchronize the
   * context on a kernel's first launch) */
  OK(fo_optimizer_step(r.opt, d.stream));
  OK(fo_optimizer_zero_grad(r.opt, d.stream));
  /* the arena's master weights first: a step refuses until they are set */
  OK(fo_optimizer_sync_master(arena, d.stream));
  OK(fo_optimizer_step(arena, d.stream));
  OK(fo_optimizer_zero_grad(arena, d.stream));
  CK(cudaStreamSynchronize(d.stream));
  snap s0;
  snap_take(&r, &s0);
  cr_assert_eq(s0.info.step, 1, "%s: warm-up step", ctx);
  /* fresh gradients: external ones, and the arena's as bf16 0x3c3c
   * (finite, non-zero) */
  run_grads(&r, gimg);
  CK(cudaMemsetAsync(abase, 0x3c, abytes, d.stream));
  CK(cudaStreamSynchronize(d.stream));

  gate g;
  atomic_init(&g.open, 0);
  atomic_init(&g.done, 0);
  atomic_init(&g.timed_out, 0);
  CK(cudaLaunchHostFunc(d.stream, gate_wait, &g));
  /* separate statements: the order matters (an initializer list's
   * expressions are indeterminately sequenced) */
  fo_status st[5];
  const double t0 = tu_now();
  st[0] = fo_optimizer_step(r.opt, d.stream);
  st[1] = fo_optimizer_zero_grad(r.opt, d.stream);
  st[2] = fo_optimizer_step(arena, d.stream);
  st[3] = fo_optimizer_zero_grad(arena, d.stream);
  st[4] = fo_optimizer_sync_master(arena, d.stream);
  const double took = tu_now() - t0;
  const int held = !atomic_load(&g.done);
  const cudaError_t q = cudaStreamQuery(d.stream);
  (void)cudaGetLastError(); /* cudaErrorNotReady is not an error to keep */
  atomic_store(&g.open, 1);
  CK(cudaStreamSynchronize(d.stream));
  const char *names[5] = {"step", "zero_grad", "arena step", "arena zero_grad",
                          "arena sync_master"};
  for (int i = 0; i < 5; i++)
    cr_assert_eq(st[i], FO_SUCCESS, "%s: %s on a held stream: %s (%s)", ctx, names[i],
                 fo_status_string(st[i]), fo_last_error());
  cr_assert(held, "%s: the calls returned after %.3f s, only once the stream was released: one "
                  "of them waited for the stream",
            ctx, took);
  cr_assert_eq(q, cudaErrorNotReady, "%s: the stream was not busy after the calls (%s)", ctx,
               cudaGetErrorName(q));
  cr_assert(!atomic_load(&g.timed_out), "%s: the host callback timed out", ctx);
  cr_log_info("%s: 5 calls on a held stream returned in %.1f us", ctx, took * 1e6);

  /* the work ran once the stream was released */
  snap s;
  snap_take(&r, &s);
  cr_assert_eq(s.info.step, 2, "%s: step count %lld", ctx, (long long)s.info.step);
  cr_assert_eq(s.info.last_step_skipped, 0, "%s", ctx);
  cr_assert(memcmp(s.param, s0.param, w.pbytes) != 0, "%s: no parameter changed", ctx);
  for (int64_t i = 0; i < w.nt; i++)
    for (int64_t j = 0; j < w.numel[i]; j++)
      cr_assert(img_load(&w, s.grad, 1, i, j) == 0.0, "%s: grad %lld [%lld] not zeroed", ctx,
                (long long)i, (long long)j);
  check_gaps(&w, s.param, 0, ctx);
  check_gaps(&w, s.grad, 1, ctx);
  fo_step_info ai;
  OK(fo_optimizer_get_info(arena, &ai));
  cr_assert_eq(ai.step, 2, "%s: arena step count", ctx);
  unsigned char *ag = malloc(abytes + 1), *zero = calloc(abytes + 1, 1);
  cr_assert(ag && zero);
  CK(cudaMemcpy(ag, abase, abytes, cudaMemcpyDeviceToHost));
  cr_assert(memcmp(ag, zero, abytes) == 0, "%s: arena gradients not zeroed", ctx);
  free(ag);
  free(zero);

  /* under a global-mode capture, a synchronizing call would fail it */
  cudaStream_t cs;
  CK(cudaStreamCreateWithFlags(&cs, cudaStreamNonBlocking));
  CK(cudaStreamBeginCapture(cs, cudaStreamCaptureModeGlobal));
  fo_status cst[5];
  cst[0] = fo_optimizer_step(r.opt, cs);
  cst[1] = fo_optimizer_zero_grad(r.opt, cs);
  cst[2] = fo_optimizer_sync_master(r.opt, cs);
  cst[3] = fo_optimizer_step(arena, cs);
  cst[4] = fo_optimizer_zero_grad(arena, cs);
  cudaGraph_t graph = NULL;
  const cudaError_t e = cudaStreamEndCapture(cs, &graph);
  const char *cnames[5] = {"step", "zero_grad", "sync_master", "arena step", "arena zero_grad"};
  for (int i = 0; i < 5; i++)
    cr_assert_eq(cst[i], FO_SUCCESS, "%s: %s under capture: %s (%s)", ctx, cnames[i],
                 fo_status_string(cst[i]), fo_last_error());
  cr_assert_eq(e, cudaSuccess, "%s: capture: %s (%s)", ctx, cudaGetErrorName(e),
               cudaGetErrorString(e));
  cr_assert_not_null(graph);
  CK(cudaGraphDestroy(graph));
  CK(cudaStreamDestroy(cs));
  cr_assert_eq(run_info(&r).step, 2, "%s: the capture applied a step", ctx);

  snap_free(&s0);
  snap_free(&s);
  OK(fo_optimizer_destroy(arena));
  run_close(&r);
  free(gimg);
  free(pimg);
  world_free(&w);
  dev_close(&d);
}

/* ============================================ 6. unscaled gradients */

/* Every gradient of got is want / div exactly (div a power of two). */
static void expect_divided(const world *w, const unsigned char *got, const unsigned char *want,
                           double div, const char *ctx) {
  for (int64_t i = 0; i < w->nt; i++)
    for (int64_t j = 0; j < w->numel[i]; j++) {
      const double g = img_load(w, got, 1, i, j), x = img_load(w, want, 1, i, j) / div;
      cr_assert(g == x, "%s: tensor %lld [%lld]: written %.9g, expected %.9g / %g = %.9g", ctx,
                (long long)i, (long long)j, g, x * div, div, x);
    }
}

Test(gpu_mp, unscaled_grads_written_back_and_loss_scale_ptr) {
  dev d = dev_open(require_device(0));
  const fo_dtype dts[3] = {FO_DTYPE_F32, FO_DTYPE_F16, FO_DTYPE_BF16};
  for (int k = 0; k < 3; k++) {
    char ctx[160];
    ctx_name(ctx, sizeof ctx, FO_ALG_ADAMW, dts[k], dts[k], "write_unscaled_grads");
    world w;
    world_make(&w, dts[k], dts[k], 0, 6000 + (uint64_t)k);
    unsigned char *pimg = param_image(&w, 61 + (uint64_t)k);
    fo_options o;
    base_options(&o, FO_ALG_ADAMW, dts[k], dts[k]);
    o.write_unscaled_grads = 1;
    fo_hparams h[2];
    hparams_for(FO_ALG_ADAMW, h);
    run r;
    run_open(&r, &d, &w, &o, h, pimg);
    tu_rng rng;
    tu_rng_seed(&rng, (uint64_t)k, 6);

    /* the scale pointer: executor memory, holding get_info's scale */
    float *sp = NULL;
    OK(fo_optimizer_loss_scale_ptr(r.opt, &sp));
    if (d.cuda) {
      struct cudaPointerAttributes pa;
      CK(cudaPointerGetAttributes(&pa, sp));
      cr_assert_eq(pa.type, cudaMemoryTypeDevice, "%s: loss_scale_ptr is not device memory",
                   ctx);
    }
    cr_assert_eq(run_scale_at_ptr(&r), 1024.0f, "%s", ctx);
    cr_assert_eq(run_info(&r).loss_scale, 1024.0f, "%s", ctx);

    /* a clean step: g / 1024 written back, exactly */
    unsigned char *g1 = grad_image(&w, &rng, 1024.0);
    run_grads(&r, g1);
    run_step(&r);
    snap s1;
    snap_take(&r, &s1);
    cr_assert_eq(s1.info.last_step_skipped, 0, "%s", ctx);
    cr_assert_eq(s1.info.grad_coef, 1.0f / 1024.0f, "%s: coefficient %a", ctx,
                 (double)s1.info.grad_coef);
    expect_divided(&w, s1.grad, g1, 1024.0, ctx);
    check_gaps(&w, s1.grad, 1, ctx);
    cr_assert_eq(run_scale_at_ptr(&r), s1.info.loss_scale, "%s", ctx);

    /* a skipped step writes nothing */
    unsigned char *g2 = grad_image(&w, &rng, 1024.0);
    img_store(&w, g2, 1, find_tensor(&w, 1025), 1024, -INFINITY);
    run_grads(&r, g2);
    run_step(&r);
    snap s2;
    snap_take(&r, &s2);
    cr_assert_eq(s2.info.last_step_skipped, 1, "%s", ctx);
    cr_assert_eq(s2.info.step, 1, "%s", ctx);
    cr_assert(memcmp(s2.grad, g2, w.gbytes) == 0,
              "%s: a skipped step wrote the gradients", ctx);
    cr_assert(memcmp(s2.param, s1.param, w.pbytes) == 0, "%s: a skipped step wrote parameters",
              ctx);
    cr_assert_eq(s2.info.loss_scale, 512.0f, "%s", ctx);
    cr_assert_eq(run_scale_at_ptr(&r), 512.0f, "%s: the scale at loss_scale_ptr", ctx);

    /* the next step unscales by the new scale */
    unsigned char *g3 = grad_image(&w, &rng, 512.0);
    run_grads(&r, g3);
    run_step(&r);
    snap s3;
    snap_take(&r, &s3);
    cr_assert_eq(s3.info.step, 2, "%s", ctx);
    cr_assert_eq(s3.info.grad_coef, 1.0f / 512.0f, "%s", ctx);
    expect_divided(&w, s3.grad, g3, 512.0, ctx);
    check_gaps(&w, s3.grad, 1, ctx);
    snap_free(&s1);
    snap_free(&s2);
    snap_free(&s3);
    run_close(&r);

    /* with clipping: g * coef in fp32, rounded to the gradient dtype */
    o.max_grad_norm = 5.0f;
    run_open(&r, &d, &w, &o, h, pimg);
    unsigned char *g4 = grad_image(&w, &rng, 1024.0);
    run_grads(&r, g4);
    run_step(&r);
    snap s4;
    snap_take(&r, &s4);
    const double norm = image_norm(&w, g4, 1024.0);
    const double coef = fmin(1.0, 5.0 / (norm + 1e-6)) / 1024.0;
    cr_assert(coef * 1024.0 < 0.1, "%s: the test meant to clip", ctx);
    cr_assert(fabs((double)s4.info.grad_coef - coef) <= 1e-6 * coef, "%s: coefficient %.9g, %.9g",
              ctx, (double)s4.info.grad_coef, coef);
    for (int64_t i = 0; i < w.nt; i++)
      for (int64_t j = 0; j < w.numel[i]; j++) {
        const float prod = (float)img_load(&w, g4, 1, i, j) * s4.info.grad_coef;
        const double want = ref_round(w.gt, (double)prod), got = img_load(&w, s4.grad, 1, i, j);
        cr_assert(got == want, "%s, clipped: tensor %lld [%lld]: written %.9g, expected %.9g", ctx,
                  (long long)i, (long long)j, got, want);
      }
    check_gaps(&w, s4.grad, 1, ctx);
    snap_free(&s4);
    run_close(&r);
    free(g1);
    free(g2);
    free(g3);
    free(g4);
    free(pimg);
    world_free(&w);
  }
  dev_close(&d);
}

/* ============================================================ 7. scaler */

/* Step a run whose gradients are draw_grad() * the scale read through
 * loss_scale_ptr (times mult), with a NaN in one element when overflow. */
static void scaler_step(run *r, tu_rng *rng, double mult, int overflow) {
  const double scale = (double)run_scale_at_ptr(r);
  unsigned char *g = grad_image(r->w, rng, scale * mult);
  if (overflow) img_store(r->w, g, 1, find_tensor(r->w, 257), 100, NAN);
  run_grads(r, g);
  run_step(r);
  dev_sync(&r->d);
  free(g);
}

Test(gpu_mp, scaler_grows_and_backs_off_on_the_device) {
  dev d = dev_open(require_device(0));
  const fo_dtype gts[2] = {FO_DTYPE_F32, FO_DTYPE_BF16};
  for (int k = 0; k < 2; k++) {
    char ctx[160];
    ctx_name(ctx, sizeof ctx, FO_ALG_ADAMW, FO_DTYPE_F32, gts[k], NULL);
    world w;
    world_make(&w, FO_DTYPE_F32, gts[k], 0, 7000 + (uint64_t)k);
    unsigned char *pimg = param_image(&w, 71);
    fo_hparams h[2];
    hparams_for(FO_ALG_ADAMW, h);
    tu_rng rng;
    tu_rng_seed(&rng, (uint64_t)k, 7);

    /* growth_interval 3, defaults otherwise: the CPU tier's sequence; the
     * fifth step overflows */
    fo_options o;
    base_options(&o, FO_ALG_ADAMW, FO_DTYPE_F32, gts[k]);
    o.loss_scaler.init_scale = 65536.0f;
    o.loss_scaler.growth_interval = 3;
    run r;
    run_open(&r, &d, &w, &o, h, pimg);
    const float expect[8] = {65536, 65536, 131072, 131072, 65536, 65536, 65536, 131072};
    const int tracker[8] = {1, 2, 0, 1, 0, 1, 2, 0};
    for (int s = 0; s < 8; s++) {
      scaler_step(&r, &rng, 1.0, s == 4);
      const fo_step_info i = run_info(&r);
      cr_assert_eq(i.loss_scale, expect[s], "%s: after step %d: scale %g, expected %g", ctx,
                   s + 1, (double)i.loss_scale, (double)expect[s]);
      cr_assert_eq(run_scale_at_ptr(&r), i.loss_scale, "%s: step %d", ctx, s + 1);
      cr_assert_eq(i.last_step_skipped, s == 4, "%s: step %d", ctx, s + 1);
      cr_assert_eq(i.growth_tracker, tracker[s], "%s: after step %d: tracker %d", ctx, s + 1,
                   i.growth_tracker);
    }
    fo_step_info i = run_info(&r);
    cr_assert_eq(i.step, 7, "%s", ctx);
    cr_assert_eq(i.skipped_steps, 1, "%s", ctx);
    run_close(&r);

    /* hysteresis 2: overflow, clean, overflow x3 -> only the 4th backs off */
    base_options(&o, FO_ALG_ADAMW, FO_DTYPE_F32, gts[k]);
    o.loss_scaler.init_scale = 65536.0f;
    o.loss_scaler.hysteresis = 2;
    run_open(&r, &d, &w, &o, h, pimg);
    const int over[5] = {1, 0, 1, 1, 1};
    const float hexpect[5] = {65536, 65536, 65536, 32768, 32768};
    for (int s = 0; s < 5; s++) {
      scaler_step(&r, &rng, 1.0, over[s]);
      cr_assert_eq(run_info(&r).loss_scale, hexpect[s], "%s: hysteresis, step %d: %g", ctx, s + 1,
                   (double)run_info(&r).loss_scale);
    }
    i = run_info(&r);
    cr_assert_eq(i.skipped_steps, 4, "%s", ctx);
    cr_assert_eq(i.step, 1, "%s", ctx);
    run_close(&r);

    /* max_scale: 1024 -> 2048 -> 3000 (clamped) -> 3000 */
    base_options(&o, FO_ALG_ADAMW, FO_DTYPE_F32, gts[k]);
    o.loss_scaler.growth_interval = 1;
    o.loss_scaler.max_scale = 3000.0f;
    run_open(&r, &d, &w, &o, h, pimg);
    const float mexpect[3] = {2048.0f, 3000.0f, 3000.0f};
    for (int s = 0; s < 3; s++) {
      scaler_step(&r, &rng, 1.0, 0);
      cr_assert_eq(run_info(&r).loss_scale, mexpect[s], "%s: max_scale, step %d: %g", ctx, s + 1,
                   (double)run_info(&r).loss_scale);
    }
    run_close(&r);

    /* never to inf: 2^126 -> 2^127 -> stays (gradients not scaled) */
    o.loss_scaler.max_scale = 0.0f;
    o.loss_scaler.init_scale = 0x1.0p126f;
    run_open(&r, &d, &w, &o, h, pimg);
    for (int s = 0; s < 3; s++) scaler_step(&r, &rng, 1.0 / (double)run_scale_at_ptr(&r), 0);
    i = run_info(&r);
    cr_assert_eq(i.loss_scale, 0x1.0p127f, "%s: scale %a", ctx, (double)i.loss_scale);
    cr_assert_eq(i.step, 3, "%s", ctx);
    run_close(&r);

    free(pimg);
    world_free(&w);
  }
  dev_close(&d);
}

/* ======================================================= 8. scale floor */

/* The parameter and state buffers of a and b are the same, byte for byte
 * (the gradients and the step info are the caller's to compare). */
static void weights_identical(const world *w, const snap *a, const snap *b, const char *what,
                              const char *ctx) {
  cr_assert(memcmp(a->param, b->param, w->pbytes) == 0, "%s: %s: parameter buffers differ", ctx,
            what);
  for (int k = 0; k < 4; k++)
    if (a->state[k] && b->state[k])
      cr_assert(memcmp(a->state[k], b->state[k], (size_t)w->total * 4) == 0, "%s: %s: %s differs",
                ctx, what, ROLE_NAMES[k]);
}

/* Every parameter and state element of s is finite. */
static void weights_finite(const world *w, const snap *s, const char *what, const char *ctx) {
  for (int64_t i = 0; i < w->nt; i++)
    for (int64_t j = 0; j < w->numel[i]; j++)
      cr_assert(isfinite(img_load(w, s->param, 0, i, j)), "%s: %s: tensor %lld param %lld", ctx,
                what, (long long)i, (long long)j);
  for (int k = 0; k < 4; k++)
    for (int64_t e = 0; s->state[k] && e < w->total; e++)
      cr_assert(isfinite(s->state[k][e]), "%s: %s: %s element %lld is %g", ctx, what, ROLE_NAMES[k],
                (long long)e, (double)s->state[k][e]);
}

/* Issue #20 on the device (fo_prepare_step is the same code): 200
 * consecutive overflows from 2^16 end at FO_LOSS_SCALE_MIN with every
 * parameter and state byte as it was and a checkpoint that verifies and
 * loads; the next clean step applies and writes no NaN.  Then a scale of
 * 0, a subnormal or NaN written through fo_optimizer_loss_scale_ptr (a
 * non-finite coefficient, or a scale below the floor) skips the step and
 * restarts the scale at the floor. */
Test(gpu_mp, scale_floor_and_non_finite_coefficient_on_the_device) {
  dev d = dev_open(require_device(0));
  const char *ctx = "adamw param f16 grad f32";
  world w;
  world_make(&w, FO_DTYPE_F16, FO_DTYPE_F32, 0, 8000);
  unsigned char *pimg = param_image(&w, 81), *pimg2 = param_image(&w, 82);
  fo_hparams h[2];
  hparams_for(FO_ALG_ADAMW, h);
  fo_options o;
  base_options(&o, FO_ALG_ADAMW, FO_DTYPE_F16, FO_DTYPE_F32);
  o.loss_scaler.init_scale = 65536.0f;
  tu_rng rng;
  tu_rng_seed(&rng, 20, 8);
  run r;
  run_open(&r, &d, &w, &o, h, pimg);
  for (int s = 0; s < 2; s++) scaler_step(&r, &rng, 1.0, 0);
  snap before, after;
  snap_take(&r, &before);
  cr_assert_eq(before.info.step, 2, "%s: the clean steps", ctx);
  float last = before.info.loss_scale;
  for (int s = 0; s < 200; s++) {
    scaler_step(&r, &rng, 1.0, 1);
    const fo_step_info i = run_info(&r);
    cr_assert(i.last_step_skipped, "%s: overflow %d was applied", ctx, s + 1);
    cr_assert(isnormal(i.loss_scale) && i.loss_scale >= FO_LOSS_SCALE_MIN,
              "%s: after overflow %d the scale is %a", ctx, s + 1, (double)i.loss_scale);
    cr_assert(i.loss_scale == FO_LOSS_SCALE_MIN || i.loss_scale == last * 0.5f,
              "%s: overflow %d: %a after %a", ctx, s + 1, (double)i.loss_scale, (double)last);
    last = i.loss_scale;
  }
  snap_take(&r, &after);
  cr_assert_eq(after.info.loss_scale, FO_LOSS_SCALE_MIN, "%s: scale %a", ctx,
               (double)after.info.loss_scale);
  cr_assert_eq(after.info.step, 2, "%s", ctx);
  cr_assert_eq(after.info.skipped_steps, 200, "%s", ctx);
  weights_identical(&w, &before, &after, "200 overflows", ctx);

  /* whatever save writes, load accepts */
  char dir[] = "/tmp/fo_gpu_floor_XXXXXX", path[96];
  cr_assert_not_null(mkdtemp(dir));
  snprintf(path, sizeof path, "%s/floor.safetensors", dir);
  OK(fo_optimizer_save(r.opt, path, dev_stream(&d)));
  OK(fo_checkpoint_verify(path));
  run fresh;
  run_open(&fresh, &d, &w, &o, h, pimg2);
  OK(fo_optimizer_load(fresh.opt, path, dev_stream(&d)));
  snap loaded;
  snap_take(&fresh, &loaded);
  weights_identical(&w, &after, &loaded, "loaded", ctx);
  info_identical(&after.info, &loaded.info, "loaded", ctx);
  unlink(path);
  rmdir(dir);

  /* the next clean step at the floor applies, on both */
  run *runs[2] = {&r, &fresh};
  for (int k = 0; k < 2; k++) {
    scaler_step(runs[k], &rng, 1.0, 0);
    const fo_step_info i = run_info(runs[k]);
    cr_assert_eq(i.step, 3, "%s: run %d", ctx, k);
    cr_assert(isfinite(i.grad_coef), "%s: run %d: coef %g", ctx, k, (double)i.grad_coef);
    snap s;
    snap_take(runs[k], &s);
    weights_finite(&w, &s, "the clean step at the floor", ctx);
    snap_free(&s);
  }
  run_close(&fresh);

  /* a scale written below the floor through the pointer */
  const float bad[3] = {0.0f, 0x1p-127f, NAN};
  for (int b = 0; b < 3; b++) {
    float *scale = NULL;
    OK(fo_optimizer_loss_scale_ptr(r.opt, &scale));
    dev_put(&d, scale, &bad[b], sizeof bad[b]);
    unsigned char *g = grad_image(&w, &rng, 1e-3);
    run_grads(&r, g);
    free(g);
    snap x, y;
    snap_take(&r, &x);
    run_step(&r);
    snap_take(&r, &y);
    cr_assert(y.info.last_step_skipped, "%s: scale %a: the step was applied", ctx, (double)bad[b]);
    cr_assert_eq(y.info.step, x.info.step, "%s: scale %a", ctx, (double)bad[b]);
    cr_assert_eq(y.info.loss_scale, FO_LOSS_SCALE_MIN, "%s: scale %a became %a", ctx,
                 (double)bad[b], (double)y.info.loss_scale);
    weights_identical(&w, &x, &y, "a scale below the floor", ctx);
    scaler_step(&r, &rng, 1.0, 0);
    cr_assert_eq(run_info(&r).step, y.info.step + 1, "%s: scale %a: the next step", ctx,
                 (double)bad[b]);
    snap_free(&x);
    snap_free(&y);
  }
  snap s;
  snap_take(&r, &s);
  weights_finite(&w, &s, "after the bad scales", ctx);
  snap_free(&s);
  snap_free(&before);
  snap_free(&after);
  snap_free(&loaded);
  run_close(&r);
  free(pimg);
  free(pimg2);
  world_free(&w);
  dev_close(&d);
}
