/*
 * ckpt_harness.h -- what the checkpoint tests share (test_checkpoint*.c,
 * test_gpu_checkpoint.c): a small model of named tensors over host memory
 * for the CPU executor, deterministic gradients per step, snapshots of the
 * whole optimizer state and bitwise comparison, scratch directories, and
 * raw file editing for the bad-file tests.
 *
 * Header-only (static inline): the tests include it, and so do the
 * shared rigs of tests/support built on it (thread_ranks.c, shard_shots.c).
 */
#ifndef FO_TEST_CKPT_HARNESS_H
#define FO_TEST_CKPT_HARNESS_H

#include <criterion/criterion.h>
#include <dirent.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fusedopt.h"

#define CK_OK(call)                                                                            \
  do {                                                                                         \
    fo_status s_ = (call);                                                                     \
    cr_assert_eq(s_, FO_SUCCESS, "%s: %s (%s)", #call, fo_status_string(s_), fo_last_error()); \
  } while (0)

/* ------------------------------------------------------------- configs */

/* One optimizer configuration. */
typedef struct ck_cfg {
  /* no pointers: Criterion hands parameters to a re-executed worker */
  char label[24];
  fo_algorithm alg;
  fo_dtype pd, gd;
  int master;          /* master weights (16-bit parameters) */
  int sr;              /* stochastic rounding (bf16 without master) */
  int amsgrad;         /* Adam/AdamW */
  float momentum;      /* SGD, RMSprop, LARS */
  int centered;        /* RMSprop */
  int nesterov;        /* SGD */
  int scaler;          /* loss scaling: growth every 3 clean steps, hysteresis 2 */
  int growth_interval; /* with scaler: instead of 3 when not 0 */
  float init_scale;    /* with scaler: instead of 1024 when not 0 */
  int hysteresis;      /* with scaler: instead of 2 when not 0 */
  float clip;          /* max_grad_norm, 0: none */
  int sched;           /* warmup + cosine */
  fo_storage storage;
  fo_executor exec;
} ck_cfg;

#define CK_TENSORS 6
/* Sizes: one element, odd sizes, an empty tensor, a few plan blocks. */
static const int64_t ck_sizes[CK_TENSORS] = {1, 37, 1000, 0, 4099, 20000};
/* Names: some given, some not (saved as "tensor.<i>"). */
static const char *const ck_names[CK_TENSORS] = {"embed.weight", NULL, "fc1.weight",
                                                 "empty",        NULL, "fc1.bias"};

static inline fo_options ck_options(const ck_cfg *c) {
  fo_options o;
  fo_options_default(&o);
  o.algorithm = c->alg;
  o.executor = c->exec;
  o.storage = c->storage;
  o.param_dtype = c->pd;
  o.grad_dtype = c->gd;
  o.master_weights = c->master;
  o.stochastic_rounding = c->sr;
  o.seed = 12345;
  o.max_grad_norm = c->clip;
  if (c->scaler) {
    o.loss_scaler.enabled = 1;
    o.loss_scaler.init_scale = c->init_scale > 0.0f ? c->init_scale : 1024.0f;
    o.loss_scaler.growth_interval = c->growth_interval ? c->growth_interval : 3;
    o.loss_scaler.hysteresis = c->hysteresis ? c->hysteresis : 2;
  }
  if (c->sched) {
    o.schedule.kind = FO_SCHED_COSINE;
    o.schedule.warmup_steps = 2;
    o.schedule.total_steps = 20;
    o.schedule.min_ratio = 0.1f;
  }
  return o;
}

/* Two groups with "generic" values (docs/numerics.md), group 1 without
 * weight decay. */
static inline void ck_hparams(const ck_cfg *c, fo_hparams h[2]) {
  fo_hparams_default(c->alg, &h[0]);
  h[0].lr = c->alg == FO_ALG_LION ? 0.00317f : 0.0213f;
  h[0].weight_decay = 0.0137f;
  h[0].beta1 = 0.873f;
  h[0].beta2 = c->alg == FO_ALG_LION ? 0.981f : 0.9917f;
  h[0].eps = 1.3e-6f;
  h[0].amsgrad = c->amsgrad;
  if (c->alg == FO_ALG_SGD || c->alg == FO_ALG_LARS || c->alg == FO_ALG_RMSPROP) {
    h[0].momentum = c->momentum;
    h[0].nesterov = c->nesterov;
  }
  h[0].centered = c->centered;
  h[0].lr_decay = 0.0173f;
  h[0].initial_accumulator_value = 0.137f;
  h[0].alpha = 0.937f;
  h[0].momentum_decay = 0.00413f;
  h[0].trust_coef = 0.0171f;
  if (c->alg == FO_ALG_LARS) h[0].lr = 0.713f;
  h[1] = h[0];
  h[1].weight_decay = 0.0f;
  h[1].layer_adaptation = 0;       /* LAMB, LARS: a group without trust ratios */
  h[1].decoupled_weight_decay = 1; /* NAdam */
}

/* ------------------------------------------------------------- values */

static inline uint64_t ck_mix(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  return x ^ (x >> 33);
}

/* A value in (-1, 1), never 0, from (seed, step, tensor, element). */
static inline float ck_value(uint64_t seed, uint64_t step, uint64_t tensor, uint64_t k) {
  uint64_t h = ck_mix(seed * 0x9E3779B97F4A7C15ull ^ ck_mix(step * 1000003u + tensor) ^
                      k * 0x632BE59BD9B4E019ull);
  float u = (float)((h >> 40) + 1) * 0x1.0p-24f; /* (0, 1] */
  return 2.0f * u - 1.0f + 0x1.0p-25f;
}

/* ------------------------------------------------------------- a model */

/* The tensors in host memory (CPU executor).  With arena storage p and g
 * point into the optimizer's arena. */
typedef struct ck_model {
  ck_cfg cfg;
  fo_optimizer *opt;
  void *p[CK_TENSORS], *g[CK_TENSORS];
  void *own_p[CK_TENSORS], *own_g[CK_TENSORS];
} ck_model;

static inline void ck_fill(fo_dtype d, void *dst, int64_t n, uint64_t seed, uint64_t step,
                           uint64_t tensor, float scale) {
  float *tmp = malloc((size_t)(n + 1) * sizeof *tmp);
  cr_assert_not_null(tmp);
  for (int64_t k = 0; k < n; k++) tmp[k] = scale * ck_value(seed, step, tensor, (uint64_t)k);
  if (n > 0) CK_OK(fo_convert_from_f32(d, tmp, dst, n));
  free(tmp);
}

/* Create the optimizer over fresh tensors whose parameters come from
 * init_seed. */
static inline void ck_model_create(ck_model *m, const ck_cfg *c, uint64_t init_seed) {
  memset(m, 0, sizeof *m);
  m->cfg = *c;
  fo_options o = ck_options(c);
  fo_hparams h[2];
  ck_hparams(c, h);
  fo_tensor_desc t[CK_TENSORS];
  size_t ps = fo_dtype_size(c->pd), gs = fo_dtype_size(c->gd);
  for (int i = 0; i < CK_TENSORS; i++) {
    t[i] = (fo_tensor_desc){ck_sizes[i], i % 2, NULL, NULL, ck_names[i]};
    if (c->storage == FO_STORAGE_ARENA) continue;
    m->own_p[i] = malloc((size_t)ck_sizes[i] * ps + 1);
    m->own_g[i] = calloc((size_t)ck_sizes[i] * gs + 1, 1);
    cr_assert(m->own_p[i] && m->own_g[i]);
    ck_fill(c->pd, m->own_p[i], ck_sizes[i], init_seed, 0, (uint64_t)i, 1.0f);
    t[i].param = m->own_p[i];
    t[i].grad = m->own_g[i];
  }
  CK_OK(fo_optimizer_create(&m->opt, &o, h, 2, t, CK_TENSORS));
  for (int i = 0; i < CK_TENSORS; i++) {
    CK_OK(fo_optimizer_param_ptr(m->opt, i, &m->p[i]));
    CK_OK(fo_optimizer_grad_ptr(m->opt, i, &m->g[i]));
    if (c->storage == FO_STORAGE_ARENA && ck_sizes[i] > 0)
      ck_fill(c->pd, m->p[i], ck_sizes[i], init_seed, 0, (uint64_t)i, 1.0f);
  }
  if (c->storage == FO_STORAGE_ARENA) CK_OK(fo_optimizer_sync_master(m->opt, NULL));
}

static inline void ck_model_destroy(ck_model *m) {
  CK_OK(fo_optimizer_destroy(m->opt));
  for (int i = 0; i < CK_TENSORS; i++) {
    free(m->own_p[i]);
    free(m->own_g[i]);
  }
  memset(m, 0, sizeof *m);
}

/* The step with number s (0-based over the whole run): gradients from s
 * times the current loss scale; step 3 overflows once, and step 6 too
 * (with hysteresis 2 only the second consecutive overflow backs off), so
 * a checkpoint after step 7 is mid-growth with hysteresis spent. */
static inline void ck_grads(ck_model *m, int s) {
  fo_step_info info;
  CK_OK(fo_optimizer_get_info(m->opt, &info));
  float scale = m->cfg.scaler ? info.loss_scale : 1.0f;
  for (int i = 0; i < CK_TENSORS; i++)
    if (ck_sizes[i] > 0)
      ck_fill(m->cfg.gd, m->g[i], ck_sizes[i], 777, (uint64_t)s + 1, (uint64_t)i, scale);
  if (m->cfg.scaler && (s == 3 || s == 6)) {
    float inf = INFINITY;
    CK_OK(fo_convert_from_f32(m->cfg.gd, &inf, m->g[4], 1));
  }
}

static inline void ck_step(ck_model *m, int s) {
  ck_grads(m, s);
  CK_OK(fo_optimizer_step(m->opt, NULL));
  /* a run-time change the checkpoint must carry: group 1's lr after step 1 */
  if (s == 1) CK_OK(fo_optimizer_set_lr(m->opt, 1, 0.0191f));
}

/* ----------------------------------------------------------- snapshots */

/* Everything a resumed run must reproduce bit for bit. */
typedef struct ck_snap {
  fo_step_info info;
  fo_hparams h[2];
  void *buf[CK_TENSORS][FO_ROLE_COUNT]; /* PARAM and the state roles; NULL if not kept */
  size_t bytes[CK_TENSORS][FO_ROLE_COUNT];
} ck_snap;

/* Copy n bytes of the optimizer's memory to the host (the CPU executor's
 * memory is host memory; the GPU test supplies its own). */
typedef void (*ck_download_fn)(void *dst, const void *src, size_t bytes);

static inline void ck_download_host(void *dst, const void *src, size_t bytes) {
  memcpy(dst, src, bytes);
}

static inline void ck_snapshot_with(fo_optimizer *opt, fo_dtype pd, ck_snap *s,
                                    ck_download_fn get) {
  memset(s, 0, sizeof *s);
  CK_OK(fo_optimizer_get_info(opt, &s->info));
  for (int g = 0; g < 2; g++) CK_OK(fo_optimizer_get_hparams(opt, g, &s->h[g]));
  for (int i = 0; i < CK_TENSORS; i++)
    for (int r = 0; r < FO_ROLE_COUNT; r++) {
      if (r == FO_ROLE_GRAD) continue;
      void *p = NULL;
      if (r == FO_ROLE_PARAM) {
        CK_OK(fo_optimizer_param_ptr(opt, i, &p));
      } else {
        float *f = NULL;
        if (fo_optimizer_state_ptr(opt, i, (fo_role)r, &f) != FO_SUCCESS) continue;
        p = f;
      }
      size_t n = (size_t)ck_sizes[i] * (r == FO_ROLE_PARAM ? fo_dtype_size(pd) : sizeof(float));
      s->bytes[i][r] = n;
      s->buf[i][r] = malloc(n + 1);
      cr_assert_not_null(s->buf[i][r]);
      if (n) get(s->buf[i][r], p, n);
    }
}

static inline void ck_snapshot(const ck_model *m, ck_snap *s) {
  ck_snapshot_with(m->opt, m->cfg.pd, s, ck_download_host);
}

static inline void ck_snap_free(ck_snap *s) {
  for (int i = 0; i < CK_TENSORS; i++)
    for (int r = 0; r < FO_ROLE_COUNT; r++) free(s->buf[i][r]);
  memset(s, 0, sizeof *s);
}

static inline int ck_bits_equal(float a, float b) {
  return memcmp(&a, &b, sizeof a) == 0;
}

/* Bit-identical: every buffer, the step state, the hyper-parameters. */
static inline void ck_snap_expect_equal(const ck_snap *a, const ck_snap *b, const char *what) {
  const fo_step_info *x = &a->info, *y = &b->info;
  cr_expect_eq(x->step, y->step, "%s: step %lld vs %lld", what, (long long)x->step,
               (long long)y->step);
  cr_expect_eq(x->skipped_steps, y->skipped_steps, "%s: skipped steps", what);
  cr_expect_eq(x->last_step_skipped, y->last_step_skipped, "%s: last_step_skipped", what);
  cr_expect_eq(x->growth_tracker, y->growth_tracker, "%s: growth tracker %d vs %d", what,
               x->growth_tracker, y->growth_tracker);
  cr_expect(ck_bits_equal(x->loss_scale, y->loss_scale), "%s: loss scale %g vs %g", what,
            (double)x->loss_scale, (double)y->loss_scale);
  cr_expect(ck_bits_equal(x->grad_norm, y->grad_norm), "%s: grad_norm", what);
  cr_expect(ck_bits_equal(x->grad_coef, y->grad_coef), "%s: grad_coef", what);
  cr_expect(ck_bits_equal(x->lr_factor, y->lr_factor), "%s: lr_factor", what);
  cr_expect(memcmp(a->h, b->h, sizeof a->h) == 0, "%s: hyper-parameters differ", what);
  for (int i = 0; i < CK_TENSORS; i++)
    for (int r = 0; r < FO_ROLE_COUNT; r++) {
      cr_expect_eq(a->bytes[i][r], b->bytes[i][r], "%s: tensor %d role %d kept differently", what,
                   i, r);
      if (a->bytes[i][r] != b->bytes[i][r] || !a->bytes[i][r]) continue;
      const unsigned char *p = a->buf[i][r], *q = b->buf[i][r];
      size_t k = 0;
      while (k < a->bytes[i][r] && p[k] == q[k]) k++;
      cr_expect_eq(k, a->bytes[i][r], "%s: tensor %d role %d differs first at byte %zu", what, i, r,
                   k);
    }
}

/* ---------------------------------------------------------- scratch dir */

typedef struct ck_dir {
  char path[64];
} ck_dir;

static inline void ck_dir_make(ck_dir *d) {
  snprintf(d->path, sizeof d->path, "/tmp/fo_ckpt_XXXXXX");
  cr_assert_not_null(mkdtemp(d->path), "mkdtemp");
}

static inline void ck_dir_file(const ck_dir *d, const char *name, char *out, size_t cap) {
  snprintf(out, cap, "%s/%s", d->path, name);
}

/* Number of entries in the directory (without . and ..). */
static inline int ck_dir_count(const ck_dir *d) {
  DIR *dir = opendir(d->path);
  cr_assert_not_null(dir);
  int n = 0;
  for (struct dirent *e; (e = readdir(dir));)
    if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
  closedir(dir);
  return n;
}

static inline void ck_dir_remove(ck_dir *d) {
  DIR *dir = opendir(d->path);
  if (!dir) return;
  char f[512];
  for (struct dirent *e; (e = readdir(dir));)
    if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
      snprintf(f, sizeof f, "%s/%s", d->path, e->d_name);
      unlink(f);
    }
  closedir(dir);
  rmdir(d->path);
}

/* ------------------------------------------------------------ raw files */

typedef struct ck_bytes {
  unsigned char *p;
  size_t n;
} ck_bytes;

static inline ck_bytes ck_read(const char *path) {
  FILE *f = fopen(path, "rb");
  cr_assert_not_null(f, "open %s", path);
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  ck_bytes b = {malloc((size_t)n + 1), (size_t)n};
  cr_assert_not_null(b.p);
  cr_assert_eq(fread(b.p, 1, (size_t)n, f), (size_t)n);
  fclose(f);
  return b;
}

static inline void ck_write(const char *path, const void *p, size_t n) {
  FILE *f = fopen(path, "wb");
  cr_assert_not_null(f, "create %s", path);
  cr_assert_eq(fwrite(p, 1, n, f), n);
  fclose(f);
}

/* A Python with safetensors and numpy, to read the files as Python's own
 * tools do: $FO_PYTHON, else python3, else /usr/bin/python3; NULL when
 * none has them (the caller skips, saying so). */
static inline const char *ck_find_python(void) {
  static const char *const candidates[] = {"python3", "/usr/bin/python3"};
  const char *env = getenv("FO_PYTHON");
  char cmd[512];
  for (int i = -1; i < 2; i++) {
    const char *py = i < 0 ? env : candidates[i];
    if (!py) continue;
    snprintf(cmd, sizeof cmd, "%s -c 'import safetensors, numpy' >/dev/null 2>&1", py);
    int rc = system(cmd);
    if (rc != -1 && WIFEXITED(rc) && WEXITSTATUS(rc) == 0) return py;
  }
  return NULL;
}

#endif /* FO_TEST_CKPT_HARNESS_H */
