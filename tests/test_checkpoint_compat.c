/*
 * test_checkpoint_compat.c -- checkpoints written by an earlier build still
 * load, and this build writes the same bytes (docs/checkpoints.md).
 *
 * tests/golden/ckpt/ holds files saved by the CPU executor for a spread of
 * configurations (each algorithm; fp32, fp16, bf16 with master weights and
 * loss scaling; two parameter groups; named and unnamed tensors, one of
 * them empty; a per-rank file of each of two thread ranks of a sharded
 * state, and their gathered file).  For each one this test
 *   (a) runs the generator again (the same configuration, the same
 *       deterministic gradients) and loads the fixture into a fresh
 *       optimizer of that configuration over other initial parameters:
 *       every parameter, every state buffer, the step state and the
 *       hyper-parameters equal the generator's, bit for bit;
 *   (b) saves both optimizers again: each file equals the fixture byte for
 *       byte.
 * Saves are deterministic: the file holds no time, no path and no random
 * name, only the state and the library's version ("fusedopt.library_
 * version").  When the version differs from the fixture's (a later
 * release), (b) compares everything but that value and the metadata
 * checksum that covers it.
 *
 * FO_WRITE_CKPT_FIXTURES=<dir> writes the fixtures into dir instead of
 * checking them (only ever with the code whose files they pin).
 */
#define _POSIX_C_SOURCE 200809L

#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checkpoint_format.h" /* fo_st_parse: the fallback of (b) */
#include "fusedopt.h"
#include "thread_ranks.h"

#define OK(call)                                                                               \
  do {                                                                                         \
    fo_status s_ = (call);                                                                     \
    cr_assert_eq(s_, FO_SUCCESS, "%s: %s (%s)", #call, fo_status_string(s_), fo_last_error()); \
  } while (0)

/* --------------------------------------------------------------- model */

#define NT 5
/* One element, odd sizes, an empty tensor, more than one 128-element
 * alignment unit (so that two ranks' shards split a tensor). */
static const int64_t sizes[NT] = {3, 40, 0, 130, 17};
static const char *const names[NT] = {"embed.weight", NULL, "empty", "fc.weight", NULL};

typedef struct cfg {
  const char *label; /* the fixture is golden/ckpt/<label>.safetensors */
  fo_algorithm alg;
  fo_dtype pd, gd;
  int master, scaler, amsgrad, clip_sched;
  float momentum;
  fo_storage storage;
  int steps;
  int ranks; /* 0: no communicator; else a sharded state over this many */
} cfg;

static const cfg cfgs[] = {
    {"sgd_momentum_f32", FO_ALG_SGD, FO_DTYPE_F32, FO_DTYPE_F32, 0, 0, 0, 0, 0.9f,
     FO_STORAGE_EXTERNAL, 4, 0},
    {"adam_f32_clip_cosine", FO_ALG_ADAM, FO_DTYPE_F32, FO_DTYPE_F32, 0, 0, 0, 1, 0.0f,
     FO_STORAGE_ARENA, 4, 0},
    {"adamw_amsgrad_bf16_master_scaler", FO_ALG_ADAMW, FO_DTYPE_BF16, FO_DTYPE_BF16, 1, 1, 1, 0,
     0.0f, FO_STORAGE_ARENA, 6, 0},
    {"lion_f16_master", FO_ALG_LION, FO_DTYPE_F16, FO_DTYPE_F16, 1, 0, 0, 0, 0.0f,
     FO_STORAGE_EXTERNAL, 3, 0},
    {"adamw_amsgrad_shard2", FO_ALG_ADAMW, FO_DTYPE_F32, FO_DTYPE_F32, 0, 0, 1, 1, 0.0f,
     FO_STORAGE_ARENA, 3, 2},
};

static uint64_t mix64(uint64_t x) { /* splitmix64's finalizer */
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

/* A value in [-1, 1), never zero, of (seed, step, tensor, element). */
static float value(uint64_t seed, int step, int tensor, int64_t k) {
  uint64_t h = mix64(seed ^ mix64((uint64_t)step << 40 ^ (uint64_t)tensor << 32 ^ (uint64_t)k));
  float v = (float)(h >> 40) * 0x1.0p-23f - 1.0f;
  return v == 0.0f ? 0x1.0p-10f : v;
}

static void fill(fo_dtype d, void *dst, int64_t n, uint64_t seed, int step, int tensor,
                 float scale) {
  if (n == 0) return;
  float *v = malloc((size_t)n * sizeof *v);
  cr_assert_not_null(v);
  for (int64_t k = 0; k < n; k++) v[k] = scale * value(seed, step, tensor, k);
  OK(fo_convert_from_f32(d, v, dst, n));
  free(v);
}

typedef struct model {
  const cfg *c;
  fo_optimizer *opt;
  void *own[2 * NT]; /* external storage: parameters, gradients */
} model;

static void model_create(model *m, const cfg *c, uint64_t init_seed) {
  memset(m, 0, sizeof *m);
  m->c = c;
  fo_options o;
  OK(fo_options_default(&o));
  o.algorithm = c->alg;
  o.storage = c->storage;
  o.param_dtype = c->pd;
  o.grad_dtype = c->gd;
  o.master_weights = c->master;
  o.seed = 4242;
  o.num_threads = 1;
  if (c->scaler) {
    o.loss_scaler.enabled = 1;
    o.loss_scaler.init_scale = 512.0f;
    o.loss_scaler.growth_interval = 2;
    o.loss_scaler.hysteresis = 2;
  }
  if (c->clip_sched) {
    o.max_grad_norm = 0.75f;
    o.schedule.kind = FO_SCHED_COSINE;
    o.schedule.warmup_steps = 1;
    o.schedule.total_steps = 10;
    o.schedule.min_ratio = 0.05f;
  }
  fo_hparams h[2];
  OK(fo_hparams_default(c->alg, &h[0]));
  h[0].lr = c->alg == FO_ALG_LION ? 0.0029f : 0.0187f;
  h[0].weight_decay = 0.0113f;
  if (c->alg == FO_ALG_SGD) {
    h[0].momentum = c->momentum;
    h[0].dampening = 0.125f;
  } else {
    h[0].beta1 = 0.87f;
    h[0].beta2 = c->alg == FO_ALG_LION ? 0.97f : 0.993f;
    h[0].amsgrad = c->amsgrad;
  }
  h[1] = h[0];
  h[1].weight_decay = 0.0f;
  h[1].lr *= 0.5f;
  fo_tensor_desc t[NT];
  size_t ps = fo_dtype_size(c->pd), gs = fo_dtype_size(c->gd);
  for (int i = 0; i < NT; i++) {
    t[i] = (fo_tensor_desc){sizes[i], i % 2, NULL, NULL, names[i]};
    if (c->storage == FO_STORAGE_ARENA) continue;
    m->own[2 * i] = calloc((size_t)sizes[i] * ps + 1, 1);
    m->own[2 * i + 1] = calloc((size_t)sizes[i] * gs + 1, 1);
    cr_assert(m->own[2 * i] && m->own[2 * i + 1]);
    t[i].param = m->own[2 * i];
    t[i].grad = m->own[2 * i + 1];
  }
  OK(fo_optimizer_create(&m->opt, &o, h, 2, t, NT));
  for (int i = 0; i < NT; i++) {
    void *p = NULL;
    OK(fo_optimizer_param_ptr(m->opt, i, &p));
    fill(c->pd, p, sizes[i], init_seed, 0, i, 1.0f);
  }
  if (c->storage == FO_STORAGE_ARENA) OK(fo_optimizer_sync_master(m->opt, NULL));
}

static void model_destroy(model *m) {
  OK(fo_optimizer_destroy(m->opt));
  for (int i = 0; i < 2 * NT; i++) free(m->own[i]);
  memset(m, 0, sizeof *m);
}

/* Step s's gradients of rank `rank` (times the loss scale); with the
 * scaler, steps 2 and 3 overflow (hysteresis 2: the second backs off). */
static fo_status step(model *m, int rank, int s) {
  fo_step_info info;
  fo_status st = fo_optimizer_get_info(m->opt, &info);
  float scale = m->c->scaler ? info.loss_scale : 1.0f;
  for (int i = 0; st == FO_SUCCESS && i < NT; i++) {
    void *g = NULL;
    st = fo_optimizer_grad_ptr(m->opt, i, &g);
    if (st == FO_SUCCESS) fill(m->c->gd, g, sizes[i], 1000 + (uint64_t)rank, s + 1, i, scale);
  }
  if (st == FO_SUCCESS && m->c->scaler && (s == 2 || s == 3)) {
    void *g = NULL;
    float inf = INFINITY;
    st = fo_optimizer_grad_ptr(m->opt, 3, &g);
    if (st == FO_SUCCESS) st = fo_convert_from_f32(m->c->gd, &inf, (char *)g, 1);
  }
  if (st == FO_SUCCESS) st = fo_optimizer_step(m->opt, NULL);
  /* a run-time change the file carries */
  if (st == FO_SUCCESS && s == 1) st = fo_optimizer_set_lr(m->opt, 1, 0.0071f);
  return st;
}

/* ------------------------------------------------------------ snapshots */

/* What a load restores: the step state, the hyper-parameters, every
 * parameter and every state buffer this rank keeps. */
typedef struct snap {
  fo_step_info info;
  fo_hparams h[2];
  unsigned char *buf;
  size_t len, cap;
} snap;

static void snap_put(snap *s, const void *p, size_t n) {
  if (s->len + n > s->cap) {
    s->cap = (s->len + n) * 2 + 64;
    s->buf = realloc(s->buf, s->cap);
    cr_assert_not_null(s->buf);
  }
  if (n) memcpy(s->buf + s->len, p, n);
  s->len += n;
}

static void snap_take(const model *m, snap *s) {
  memset(s, 0, sizeof *s);
  OK(fo_optimizer_get_info(m->opt, &s->info));
  for (int g = 0; g < 2; g++) OK(fo_optimizer_get_hparams(m->opt, g, &s->h[g]));
  for (int i = 0; i < NT; i++) {
    void *p = NULL;
    OK(fo_optimizer_param_ptr(m->opt, i, &p));
    snap_put(s, p, (size_t)sizes[i] * fo_dtype_size(m->c->pd));
  }
  for (int r = FO_ROLE_MASTER; r < FO_ROLE_COUNT; r++) {
    void *base = NULL;
    size_t bytes = 0;
    if (m->c->ranks) { /* the shard */
      if (fo_optimizer_arena(m->opt, (fo_role)r, &base, &bytes) == FO_SUCCESS)
        snap_put(s, base, bytes);
      continue;
    }
    for (int i = 0; i < NT; i++) {
      float *f = NULL;
      if (fo_optimizer_state_ptr(m->opt, i, (fo_role)r, &f) == FO_SUCCESS)
        snap_put(s, f, (size_t)sizes[i] * sizeof(float));
    }
  }
}

static int info_equal(const fo_step_info *a, const fo_step_info *b) {
  return a->step == b->step && a->skipped_steps == b->skipped_steps &&
         a->last_step_skipped == b->last_step_skipped && a->growth_tracker == b->growth_tracker &&
         memcmp(&a->loss_scale, &b->loss_scale, sizeof(float)) == 0 &&
         memcmp(&a->grad_norm, &b->grad_norm, sizeof(float)) == 0 &&
         memcmp(&a->grad_coef, &b->grad_coef, sizeof(float)) == 0 &&
         memcmp(&a->lr_factor, &b->lr_factor, sizeof(float)) == 0;
}

static void snap_expect_equal(const snap *a, const snap *b, const char *what) {
  cr_expect(info_equal(&a->info, &b->info), "%s: the step state differs (step %lld vs %lld)", what,
            (long long)a->info.step, (long long)b->info.step);
  for (int g = 0; g < 2; g++) {
    const fo_hparams *x = &a->h[g], *y = &b->h[g];
    cr_expect(x->lr == y->lr && x->weight_decay == y->weight_decay && x->momentum == y->momentum &&
                  x->dampening == y->dampening && x->nesterov == y->nesterov &&
                  x->beta1 == y->beta1 && x->beta2 == y->beta2 && x->eps == y->eps &&
                  x->amsgrad == y->amsgrad && x->maximize == y->maximize,
              "%s: group %d's hyper-parameters differ", what, g);
  }
  cr_expect_eq(a->len, b->len, "%s: %zu vs %zu bytes of buffers", what, a->len, b->len);
  size_t k = 0;
  while (k < a->len && k < b->len && a->buf[k] == b->buf[k]) k++;
  cr_expect_eq(k, a->len, "%s: the buffers differ first at byte %zu", what, k);
}

static void snap_free(snap *s) {
  free(s->buf);
  memset(s, 0, sizeof *s);
}

/* ---------------------------------------------------------------- files */

typedef struct blob {
  unsigned char *p;
  size_t n;
} blob;

static blob slurp(const char *path) {
  FILE *f = fopen(path, "rb");
  cr_assert_not_null(f, "cannot open %s: %s", path, strerror(errno));
  cr_assert_eq(fseek(f, 0, SEEK_END), 0);
  long n = ftell(f);
  cr_assert(n >= 0);
  rewind(f);
  blob b = {malloc((size_t)n + 1), (size_t)n};
  cr_assert_not_null(b.p);
  cr_assert_eq(fread(b.p, 1, b.n, f), b.n, "short read of %s", path);
  fclose(f);
  return b;
}

static void fixture_path(const char *name, char *out, size_t cap) {
  snprintf(out, cap, "%s/ckpt/%s.safetensors", FO_GOLDEN_DIR, name);
}

/* Where a test writes: "<dir>/<name>.safetensors". */
static void scratch_path(const char *dir, const char *name, char *out, size_t cap) {
  snprintf(out, cap, "%s/%s.safetensors", dir, name);
}

static const char *write_dir(void) {
  const char *d = getenv("FO_WRITE_CKPT_FIXTURES");
  return d && d[0] ? d : NULL;
}

#define VERSION_KEY "fusedopt.library_version"
#define META_CRC_KEY "fusedopt.metadata_crc32"

static int is_key(const fo_st_meta *m, const char *key) {
  return m->key_len == strlen(key) && memcmp(m->key, key, m->key_len) == 0;
}

/* Every metadata entry and every tensor alike, but the library's version
 * and the checksum over it. */
static void expect_same_but_version(const blob *a, const blob *b, const char *what) {
  fo_st_file x, y;
  OK(fo_st_parse("compat", a->p, a->n, &x));
  OK(fo_st_parse("compat", b->p, b->n, &y));
  cr_expect_eq(x.num_meta, y.num_meta, "%s: %lld vs %lld metadata entries", what,
               (long long)x.num_meta, (long long)y.num_meta);
  for (int64_t i = 0; i < x.num_meta && i < y.num_meta; i++) {
    const fo_st_meta *m = &x.meta[i], *n = &y.meta[i];
    cr_expect(m->key_len == n->key_len && memcmp(m->key, n->key, m->key_len) == 0,
              "%s: metadata key \"%s\" vs \"%s\"", what, m->key, n->key);
    if (is_key(m, VERSION_KEY) || is_key(m, META_CRC_KEY)) continue;
    cr_expect(m->value_len == n->value_len && memcmp(m->value, n->value, m->value_len) == 0,
              "%s: metadata \"%s\" = \"%s\" vs \"%s\"", what, m->key, m->value, n->value);
  }
  cr_expect_eq(x.num_tensors, y.num_tensors, "%s: tensor count", what);
  for (int64_t i = 0; i < x.num_tensors && i < y.num_tensors; i++) {
    const fo_st_tensor *s = &x.tensors[i], *t = &y.tensors[i];
    cr_expect(strcmp(s->name, t->name) == 0 && s->dtype == t->dtype && s->numel == t->numel &&
                  s->begin == t->begin && s->end == t->end,
              "%s: tensor \"%s\" vs \"%s\"", what, s->name, t->name);
  }
  cr_expect(x.data_len == y.data_len && memcmp(x.data, y.data, (size_t)x.data_len) == 0,
            "%s: the data sections differ", what);
  fo_st_free(&x);
  fo_st_free(&y);
}

/* (b): the file at path is the fixture, byte for byte (see the top). */
static void expect_same_file(const char *fixture, const char *path, const char *what) {
  char want[512];
  fixture_path(fixture, want, sizeof want);
  blob a = slurp(want), b = slurp(path);
  fo_st_file f;
  OK(fo_st_parse("compat", a.p, a.n, &f));
  const fo_st_meta *v = fo_st_find_meta(&f, VERSION_KEY, strlen(VERSION_KEY));
  int same_version = v && strcmp(v->value, fo_version_string()) == 0;
  fo_st_free(&f);
  if (same_version) {
    size_t k = 0;
    while (k < a.n && k < b.n && a.p[k] == b.p[k]) k++;
    cr_expect(a.n == b.n && k == a.n, "%s: %zu vs %zu bytes, first difference at byte %zu", what,
              a.n, b.n, k);
  } else {
    expect_same_but_version(&a, &b, what);
  }
  free(a.p);
  free(b.p);
}

typedef struct scratch {
  char path[64];
} scratch;

static void scratch_make(scratch *d) {
  snprintf(d->path, sizeof d->path, "/tmp/fo_compat_XXXXXX");
  cr_assert_not_null(mkdtemp(d->path));
}

static void scratch_remove(scratch *d, const char *const *files, int n) {
  char p[512];
  for (int k = 0; k < n; k++) {
    scratch_path(d->path, files[k], p, sizeof p);
    unlink(p);
  }
  rmdir(d->path);
}

/* ------------------------------------------------ one process, one file */

static void run_steps(model *m, int n) {
  for (int s = 0; s < n; s++) OK(step(m, 0, s));
}

static void check_single(const cfg *c) {
  model gen;
  model_create(&gen, c, 1);
  run_steps(&gen, c->steps);
  const char *out = write_dir();
  if (out) {
    char p[512];
    scratch_path(out, c->label, p, sizeof p);
    OK(fo_optimizer_save(gen.opt, p, NULL));
    model_destroy(&gen);
    return;
  }
  scratch d;
  scratch_make(&d);
  char fx[512], again[512], resaved[512];
  fixture_path(c->label, fx, sizeof fx);
  scratch_path(d.path, "again", again, sizeof again);
  scratch_path(d.path, "resaved", resaved, sizeof resaved);

  model fresh;
  model_create(&fresh, c, 2);
  OK(fo_optimizer_load(fresh.opt, fx, NULL));
  snap a, b;
  snap_take(&gen, &a);
  snap_take(&fresh, &b);
  snap_expect_equal(&a, &b, c->label);
  snap_free(&a);
  snap_free(&b);

  OK(fo_optimizer_save(gen.opt, again, NULL));
  expect_same_file(c->label, again, "the generator's save");
  OK(fo_optimizer_save(fresh.opt, resaved, NULL));
  expect_same_file(c->label, resaved, "the loaded optimizer's save");

  /* and both go on alike */
  OK(step(&gen, 0, c->steps));
  OK(step(&fresh, 0, c->steps));
  snap_take(&gen, &a);
  snap_take(&fresh, &b);
  snap_expect_equal(&a, &b, "one step after the load");
  snap_free(&a);
  snap_free(&b);

  model_destroy(&gen);
  model_destroy(&fresh);
  const char *files[] = {"again", "resaved"};
  scratch_remove(&d, files, 2);
}

Test(compat, sgd_momentum_f32) {
  check_single(&cfgs[0]);
}

Test(compat, adam_f32_clip_cosine) {
  check_single(&cfgs[1]);
}

Test(compat, adamw_amsgrad_bf16_master_scaler) {
  check_single(&cfgs[2]);
}

Test(compat, lion_f16_master) {
  check_single(&cfgs[3]);
}

/* ------------------------------------------------------ thread ranks */

/* Ranks as threads of one process: tests/support/thread_ranks.h's world,
 * summing fp32 in rank order. */
/* A run's ranks: a sharded model each. */
typedef struct cfleet {
  tr_world w;
  model m[MAXR];
  fo_comm *comm[MAXR];
  int n;
} cfleet;

static void cfleet_make(cfleet *f, const cfg *c, uint64_t init_seed) {
  memset(f, 0, sizeof *f);
  f->n = c->ranks;
  cr_assert(f->n >= 1 && f->n <= MAXR);
  tr_world_init(&f->w, f->n);
  fo_dp_options d;
  OK(fo_dp_options_default(&d));
  d.shard_state = 1;
  for (int r = 0; r < f->n; r++) {
    model_create(&f->m[r], c, init_seed);
    f->comm[r] = tr_world_comm(&f->w, r);
    OK(fo_optimizer_set_comm(f->m[r].opt, f->comm[r], &d));
  }
}

static void cfleet_free(cfleet *f) {
  for (int r = 0; r < f->n; r++) {
    model_destroy(&f->m[r]);
    OK(fo_comm_destroy(f->comm[r]));
  }
  tr_world_destroy(&f->w);
}

/* What every rank does in one cphase; the ranks record their failures
 * (Criterion asserts on the main thread only). */
typedef enum { PH_STEPS, PH_SAVE, PH_SAVE_GATHERED, PH_LOAD } cphase;

typedef struct cjob {
  cfleet *f;
  int rank;
  cphase ph;
  int steps;
  const char *dir; /* PH_SAVE: "<dir>/<stem>-<rank>"; PH_SAVE_GATHERED: rank 0 writes */
  const char *stem;
  fo_status st;
  char msg[320];
} cjob;

static void *job_main(void *arg) {
  cjob *j = arg;
  model *m = &j->f->m[j->rank];
  char p[512], name[96];
  snprintf(name, sizeof name, "%s-%d", j->stem ? j->stem : "", j->rank);
  fo_status st = FO_SUCCESS;
  switch (j->ph) {
    case PH_STEPS:
      for (int s = 0; s < j->steps && st == FO_SUCCESS; s++) st = step(m, j->rank, s);
      break;
    case PH_SAVE:
      scratch_path(j->dir, name, p, sizeof p);
      st = fo_optimizer_save(m->opt, p, NULL);
      break;
    case PH_SAVE_GATHERED:
      scratch_path(j->dir, j->stem, p, sizeof p);
      st = fo_optimizer_save_gathered(m->opt, j->rank == 0 ? p : NULL, 0, NULL);
      break;
    case PH_LOAD:
      scratch_path(j->dir, name, p, sizeof p);
      st = fo_optimizer_load(m->opt, p, NULL);
      break;
  }
  j->st = st;
  snprintf(j->msg, sizeof j->msg, "%s", st == FO_SUCCESS ? "" : fo_last_error());
  return NULL;
}

static void cfleet_run(cfleet *f, cphase ph, int steps, const char *dir, const char *stem) {
  pthread_t t[MAXR];
  cjob j[MAXR];
  for (int r = 0; r < f->n; r++) {
    j[r] = (cjob){f, r, ph, steps, dir, stem, FO_SUCCESS, ""};
    cr_assert_eq(pthread_create(&t[r], NULL, job_main, &j[r]), 0);
  }
  for (int r = 0; r < f->n; r++) pthread_join(t[r], NULL);
  for (int r = 0; r < f->n; r++)
    cr_assert_eq(j[r].st, FO_SUCCESS, "cphase %d, rank %d: %s", (int)ph, r, j[r].msg);
}

static void shard_name(const char *label, int rank, char *out, size_t cap) {
  snprintf(out, cap, "%s-%d", label, rank);
}

static void check_sharded(const cfg *c) {
  char gathered[96];
  snprintf(gathered, sizeof gathered, "%s-gathered", c->label);
  cfleet gen;
  cfleet_make(&gen, c, 1);
  cfleet_run(&gen, PH_STEPS, c->steps, NULL, NULL);
  const char *out = write_dir();
  if (out) {
    cfleet_run(&gen, PH_SAVE, 0, out, c->label);
    cfleet_run(&gen, PH_SAVE_GATHERED, 0, out, gathered);
    cfleet_free(&gen);
    return;
  }
  char fxdir[512];
  snprintf(fxdir, sizeof fxdir, "%s/ckpt", FO_GOLDEN_DIR);
  scratch d;
  scratch_make(&d);

  /* (a) every rank loads its own rank's file */
  cfleet fresh;
  cfleet_make(&fresh, c, 2);
  cfleet_run(&fresh, PH_LOAD, 0, fxdir, c->label);
  for (int r = 0; r < c->ranks; r++) {
    snap a, b;
    snap_take(&gen.m[r], &a);
    snap_take(&fresh.m[r], &b);
    char what[64];
    snprintf(what, sizeof what, "rank %d's file", r);
    snap_expect_equal(&a, &b, what);
    snap_free(&a);
    snap_free(&b);
  }
  /* (b) the generator's and the loaded cfleet's files */
  const char *stems[] = {"again", "resaved"};
  cfleet *fl[] = {&gen, &fresh};
  for (int k = 0; k < 2; k++) {
    cfleet_run(fl[k], PH_SAVE, 0, d.path, stems[k]);
    char g[64];
    snprintf(g, sizeof g, "%s-gathered", stems[k]);
    cfleet_run(fl[k], PH_SAVE_GATHERED, 0, d.path, g);
    for (int r = 0; r < c->ranks; r++) {
      char fx[96], mine[96], p[512], what[96];
      shard_name(c->label, r, fx, sizeof fx);
      shard_name(stems[k], r, mine, sizeof mine);
      scratch_path(d.path, mine, p, sizeof p);
      snprintf(what, sizeof what, "%s rank %d's file", stems[k], r);
      expect_same_file(fx, p, what);
    }
    char p[512];
    scratch_path(d.path, g, p, sizeof p);
    expect_same_file(gathered, p, "the gathered file");
  }

  /* the gathered file, and every rank's file at once, load into one
   * unsharded optimizer, which saves the gathered file again */
  cfg whole = *c;
  whole.ranks = 0;
  model one;
  model_create(&one, &whole, 3);
  char fx[512], resaved[512];
  fixture_path(gathered, fx, sizeof fx);
  scratch_path(d.path, "whole", resaved, sizeof resaved);
  OK(fo_optimizer_load(one.opt, fx, NULL));
  OK(fo_optimizer_save(one.opt, resaved, NULL));
  expect_same_file(gathered, resaved, "the gathered file loaded unsharded");
  char shard_fx[MAXR][512];
  const char *shard_paths[MAXR];
  for (int r = 0; r < c->ranks; r++) {
    char name[96];
    shard_name(c->label, r, name, sizeof name);
    fixture_path(name, shard_fx[r], sizeof shard_fx[r]);
    shard_paths[r] = shard_fx[r];
  }
  model two;
  model_create(&two, &whole, 4);
  OK(fo_optimizer_load_shards(two.opt, shard_paths, c->ranks, NULL));
  OK(fo_optimizer_save(two.opt, resaved, NULL));
  expect_same_file(gathered, resaved, "the per-rank files loaded unsharded");
  model_destroy(&one);
  model_destroy(&two);

  cfleet_free(&gen);
  cfleet_free(&fresh);
  const char *files[] = {"again-0",        "again-1",          "resaved-0", "resaved-1",
                         "again-gathered", "resaved-gathered", "whole"};
  scratch_remove(&d, files, 7);
}

Test(compat, adamw_amsgrad_shard2) {
  check_sharded(&cfgs[4]);
}

/* --------------------------------------------- a decision of the refactor */

/* Which state a file's hyper-parameters need is fo_state_needed's rule,
 * the optimizer's own: Lion keeps no AMSGrad state whatever its amsgrad
 * flag (fo_optimizer_create and _set_hparams accept the flag), so a Lion
 * optimizer with amsgrad = 1 loads its own checkpoint.  Before the schema
 * was shared the loader refused it ("uses AMSGrad in the checkpoint"). */
Test(compat, lion_with_the_amsgrad_flag_loads_its_own_file) {
  fo_options o;
  OK(fo_options_default(&o));
  o.algorithm = FO_ALG_LION;
  fo_hparams h;
  OK(fo_hparams_default(FO_ALG_LION, &h));
  h.amsgrad = 1;
  float p[5] = {0.5f, -1.0f, 2.0f, 0.25f, -0.75f}, g[5] = {0.1f, 0.2f, -0.3f, 0.4f, -0.5f};
  fo_tensor_desc t = {5, 0, p, g, "w"};
  fo_optimizer *opt = NULL;
  OK(fo_optimizer_create(&opt, &o, &h, 1, &t, 1));
  OK(fo_optimizer_step(opt, NULL));
  scratch d;
  scratch_make(&d);
  char path[512];
  scratch_path(d.path, "lion", path, sizeof path);
  OK(fo_optimizer_save(opt, path, NULL));
  float before[5];
  memcpy(before, p, sizeof p);
  OK(fo_optimizer_step(opt, NULL));
  OK(fo_optimizer_load(opt, path, NULL));
  cr_expect(memcmp(before, p, sizeof p) == 0, "the load restored other parameters");
  OK(fo_optimizer_destroy(opt));
  const char *files[] = {"lion"};
  scratch_remove(&d, files, 1);
}
