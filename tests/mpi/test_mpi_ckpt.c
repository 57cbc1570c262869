/*
 * test_mpi_ckpt.c -- the multi-rank tier of checkpoints of a sharded
 * optimizer state (ZeRO-1): the CPU executor over MPI (fusedopt_mpi), run
 * by CTest under mpirun -np 2 and -np 4.
 *
 * A plain C program, as test_mpi_dp.c (Criterion forks; MPI does not
 * survive a fork): every rank runs every check; a check passes when it
 * passes on every rank; rank 0 prints one line per check and, last, "N
 * passed, M failed"; the exit status is non-zero when anything failed.
 * Each run works in its own temporary directory, made by rank 0.
 *
 * What is shown:
 *   - exact resume: after K steps every rank saves its own file and rank
 *     N-1 a gathered one; fresh sharded optimizers (other initial values)
 *     load the per-rank files, the gathered file, or every rank's files
 *     through fo_optimizer_load_shards, run M more steps, and their
 *     parameters, shards of the state, step state and hyper-parameters are
 *     bit-identical to the uninterrupted K+M-step run (AdamW with AMSGrad
 *     over bf16 with master weights, loss scaling with a skipped step and
 *     clipping; SGD with momentum; Adam);
 *   - the gathered file is byte for byte the file of an unsharded
 *     data-parallel run in the same state (dyadic gradients: every sum is
 *     exact), and it, or the per-rank files, load into unsharded
 *     optimizers that continue bit-identical to the sharded run;
 *   - the per-rank files load into a run sharded over half the ranks
 *     (MPI_Comm_split), which continues bit-identical too;
 *   - bad cases give every rank the same status and message, change
 *     nothing and never hang: another rank's file, a file missing on one
 *     rank or on all, files of two saves, a gathered save whose root cannot
 *     create its file, an unsharded optimizer given a per-rank file.
 */
#define _POSIX_C_SOURCE 200809L

#include <dirent.h>
#include <math.h>
#include <mpi.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fusedopt.h"
#include "fusedopt_mpi.h"
#include "mpi_check.h"

static fo_comm *g_comm; /* over MPI_COMM_WORLD */
static char g_dir[64];  /* this run's temporary directory */

/* 1 when buf holds rank 0's bits on every rank. */
static int same_on_every_rank(const void *buf, size_t bytes) {
  unsigned char *root = malloc(bytes + 1);
  if (g_rank == 0) memcpy(root, buf, bytes);
  MPI_Bcast(root, (int)bytes, MPI_BYTE, 0, MPI_COMM_WORLD);
  int same = memcmp(root, buf, bytes) == 0, all = 0;
  free(root);
  MPI_Allreduce(&same, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  return all;
}

/* ---------------------------------------------------------------- files */

static void file_in(char *out, size_t cap, const char *stem, int rank) {
  if (rank >= 0)
    snprintf(out, cap, "%s/%s-%d.safetensors", g_dir, stem, rank);
  else
    snprintf(out, cap, "%s/%s.safetensors", g_dir, stem);
}

static int read_all(const char *path, unsigned char **out, size_t *n) {
  FILE *f = fopen(path, "rb");
  if (!f) return 0;
  fseek(f, 0, SEEK_END);
  long len = ftell(f);
  fseek(f, 0, SEEK_SET);
  *out = malloc((size_t)len + 1);
  *n = fread(*out, 1, (size_t)len, f);
  fclose(f);
  return *n == (size_t)len;
}

/* Entries of the run's directory (rank 0's view). */
static int dir_count(void) {
  DIR *d = opendir(g_dir);
  int n = 0;
  for (struct dirent *e; d && (e = readdir(d));)
    if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
  if (d) closedir(d);
  return n;
}

static void dir_clear(void) {
  MPI_Barrier(MPI_COMM_WORLD);
  if (g_rank == 0) {
    DIR *d = opendir(g_dir);
    char f[600];
    for (struct dirent *e; d && (e = readdir(d));)
      if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
        snprintf(f, sizeof f, "%s/%s", g_dir, e->d_name);
        unlink(f);
      }
    if (d) closedir(d);
  }
  MPI_Barrier(MPI_COMM_WORLD);
}

/* ------------------------------------------------------------ the model */

#define NT 6
static const int64_t SIZES[NT] = {1000, 37, 0, 4099, 260, 9000};
static const char *const NAMES[NT] = {"fc.weight", NULL, "empty", "conv.weight", "fc.bias", NULL};

typedef struct cfg {
  const char *label;
  fo_algorithm alg;
  fo_dtype pd, gd;
  int master, amsgrad, scaler, dyadic;
  float clip, momentum;
} cfg;

static const cfg CFG_MIXED = {"adamw-amsgrad bf16, scaler, clip",
                              FO_ALG_ADAMW,
                              FO_DTYPE_BF16,
                              FO_DTYPE_BF16,
                              1,
                              1,
                              1,
                              0,
                              1.0f,
                              0.0f};
static const cfg CFG_SGD = {
    "sgd-momentum f32", FO_ALG_SGD, FO_DTYPE_F32, FO_DTYPE_F32, 0, 0, 0, 0, 0.5f, 0.9f};
/* no pre-pass, dyadic gradients: every sum exact, whatever the sharding */
static const cfg CFG_EXACT = {
    "adam f32, dyadic", FO_ALG_ADAM, FO_DTYPE_F32, FO_DTYPE_F32, 0, 0, 0, 1, 0.0f, 0.0f};

static uint64_t mix(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  return x ^ (x >> 33);
}

/* In (-1, 1) from (seed, a, b). */
static float uniform(uint64_t seed, uint64_t a, uint64_t b) {
  uint64_t h = mix(seed * 0x9e3779b97f4a7c15ull ^ mix(a * 0x632be59bd9b4e019ull + b));
  return (float)((double)(h >> 11) * 0x1.0p-52 - 1.0);
}

/* k/16, k in [-4, 4]: sums over up to 4 ranks, and their means, are exact. */
static float dyadic(uint64_t a, uint64_t b) {
  return (float)((int)(mix(a * 31 + b) % 9) - 4) / 16.0f;
}

/* An arena optimizer over the model, parameters from seed; shard 1: the
 * sharded state over comm, 0: plain data parallelism, -1: no comm. */
static fo_status make(fo_optimizer **out, const cfg *c, fo_comm *comm, int shard, uint64_t seed) {
  fo_options o;
  fo_options_default(&o);
  o.algorithm = c->alg;
  o.storage = FO_STORAGE_ARENA;
  o.param_dtype = c->pd;
  o.grad_dtype = c->gd;
  o.master_weights = c->master;
  o.num_threads = 1; /* several ranks share the cores */
  o.max_grad_norm = c->clip;
  if (c->scaler) {
    o.loss_scaler.enabled = 1;
    o.loss_scaler.init_scale = 1024.0f;
    o.loss_scaler.growth_interval = 3;
    o.loss_scaler.hysteresis = 1;
  }
  fo_hparams h[2];
  fo_hparams_default(c->alg, &h[0]);
  h[0].lr = c->alg == FO_ALG_SGD ? 0.05f : 0.01f;
  h[0].amsgrad = c->amsgrad;
  h[0].momentum = c->momentum;
  h[0].weight_decay = 0.01f;
  h[1] = h[0];
  h[1].weight_decay = 0.0f;
  fo_tensor_desc t[NT];
  for (int i = 0; i < NT; i++) t[i] = (fo_tensor_desc){SIZES[i], i % 2, NULL, NULL, NAMES[i]};
  fo_status st = fo_optimizer_create(out, &o, h, 2, t, NT);
  if (st != FO_SUCCESS) return st;
  float *v = malloc(9000 * sizeof *v);
  for (int i = 0; i < NT && st == FO_SUCCESS; i++) {
    void *p = NULL;
    st = fo_optimizer_param_ptr(*out, i, &p);
    for (int64_t k = 0; k < SIZES[i]; k++) v[k] = uniform(seed, (uint64_t)i, (uint64_t)k);
    if (st == FO_SUCCESS && SIZES[i]) st = fo_convert_from_f32(c->pd, v, p, SIZES[i]);
  }
  free(v);
  if (st == FO_SUCCESS) st = fo_optimizer_sync_master(*out, NULL);
  if (st == FO_SUCCESS && comm) {
    fo_dp_options d;
    fo_dp_options_default(&d);
    d.shard_state = shard;
    d.bucket_bytes = 16384;
    st = fo_optimizer_set_comm(*out, comm, &d);
  }
  return st;
}

/* Step s's gradients of rank who, or (who < 0, dyadic only) the mean over
 * every rank of the world, times the loss scale. */
static fo_status grads(fo_optimizer *opt, const cfg *c, int who, int s) {
  fo_step_info info;
  fo_status st = fo_optimizer_get_info(opt, &info);
  float scale = c->scaler ? info.loss_scale : 1.0f, *v = malloc(9000 * sizeof *v);
  for (int i = 0; i < NT && st == FO_SUCCESS; i++) {
    void *g = NULL;
    st = fo_optimizer_grad_ptr(opt, i, &g);
    for (int64_t k = 0; k < SIZES[i]; k++) {
      uint64_t b = (uint64_t)(i * 10000 + k);
      if (!c->dyadic) {
        v[k] = scale * uniform(7 + (uint64_t)who, (uint64_t)s, b);
      } else if (who >= 0) {
        v[k] = dyadic((uint64_t)(who * 1000 + s), b);
      } else {
        float sum = 0.0f;
        for (int r = 0; r < g_size; r++) sum += dyadic((uint64_t)(r * 1000 + s), b);
        v[k] = sum / (float)g_size;
      }
    }
    if (c->scaler && s == 3 && i == 3 && who == 0) v[0] = INFINITY; /* every rank skips */
    if (st == FO_SUCCESS && SIZES[i]) st = fo_convert_from_f32(c->gd, v, g, SIZES[i]);
  }
  free(v);
  return st;
}

static fo_status step(fo_optimizer *opt, const cfg *c, int who, int s) {
  fo_status st = grads(opt, c, who, s);
  if (st == FO_SUCCESS) st = fo_optimizer_step(opt, NULL);
  if (st == FO_SUCCESS && s == 1) st = fo_optimizer_set_lr(opt, 1, 0.0071f);
  return st;
}

static fo_status steps(fo_optimizer *opt, const cfg *c, int who, int from, int to) {
  fo_status st = FO_SUCCESS;
  for (int s = from; s < to && st == FO_SUCCESS; s++) st = step(opt, c, who, s);
  return st;
}

/* ------------------------------------------------------------ snapshots */

/* The step state, hyper-parameters, parameter arena and every state
 * role's buffer (this rank's shard, or whole) with its place. */
typedef struct shot {
  fo_step_info info;
  fo_hparams h[2];
  unsigned char *buf[FO_ROLE_COUNT];
  size_t bytes[FO_ROLE_COUNT];
  int64_t first, count;
} shot;

static void shot_take(fo_optimizer *opt, shot *s) {
  memset(s, 0, sizeof *s);
  fo_optimizer_get_info(opt, &s->info);
  for (int g = 0; g < 2; g++) fo_optimizer_get_hparams(opt, g, &s->h[g]);
  fo_optimizer_get_shard(opt, &s->first, &s->count);
  for (int r = 0; r < FO_ROLE_COUNT; r++) {
    void *p = NULL;
    size_t n = 0;
    if (r == FO_ROLE_GRAD || fo_optimizer_arena(opt, (fo_role)r, &p, &n) != FO_SUCCESS) continue;
    s->buf[r] = malloc(n + 1);
    memcpy(s->buf[r], p, n);
    s->bytes[r] = n;
  }
}

static void shot_free(shot *s) {
  for (int r = 0; r < FO_ROLE_COUNT; r++) free(s->buf[r]);
  memset(s, 0, sizeof *s);
}

static int bits(float a, float b) {
  return memcmp(&a, &b, sizeof a) == 0;
}

/* b equals a: b's shard (or whole state) inside a's; grad_coef unless
 * skip_coef (it holds 1 / ranks).  1 when equal. */
static int shot_same(const shot *a, const shot *b, int skip_coef, const char *what) {
  const fo_step_info *x = &a->info, *y = &b->info;
  int ok = 1;
  if (x->step != y->step || x->skipped_steps != y->skipped_steps ||
      x->growth_tracker != y->growth_tracker || !bits(x->loss_scale, y->loss_scale) ||
      !bits(x->grad_norm, y->grad_norm) || !bits(x->lr_factor, y->lr_factor) ||
      (!skip_coef && !bits(x->grad_coef, y->grad_coef))) {
    fail_here(__FILE__, __LINE__,
              "%s: step state differs (step %lld/%lld, scale %g/%g, norm %g/%g)", what,
              (long long)x->step, (long long)y->step, (double)x->loss_scale, (double)y->loss_scale,
              (double)x->grad_norm, (double)y->grad_norm);
    ok = 0;
  }
  if (memcmp(a->h, b->h, sizeof a->h) != 0) {
    fail_here(__FILE__, __LINE__, "%s: hyper-parameters differ", what);
    ok = 0;
  }
  for (int r = 0; r < FO_ROLE_COUNT && ok; r++) {
    if (!a->buf[r] != !b->buf[r]) {
      fail_here(__FILE__, __LINE__, "%s: role %d kept by one only", what, r);
      ok = 0;
    } else if (!a->buf[r]) {
      continue;
    } else if (r == FO_ROLE_PARAM) {
      if (a->bytes[r] != b->bytes[r] || memcmp(a->buf[r], b->buf[r], a->bytes[r]) != 0) {
        fail_here(__FILE__, __LINE__, "%s: parameters differ", what);
        ok = 0;
      }
    } else if (b->first < a->first || b->first + b->count > a->first + a->count ||
               memcmp(a->buf[r] + (size_t)(b->first - a->first) * 4, b->buf[r], b->bytes[r])) {
      fail_here(__FILE__, __LINE__, "%s: role %d differs ([%lld, +%lld) in [%lld, +%lld))", what, r,
                (long long)b->first, (long long)b->count, (long long)a->first, (long long)a->count);
      ok = 0;
    }
  }
  return ok;
}

/* ------------------------------------------------------- 1. exact resume */

#define K_SAVE 5
#define T_END 11

typedef enum { VIA_OWN, VIA_GATHERED, VIA_SHARDS } via;

static const char *const via_name[] = {"per-rank files", "gathered file", "load_shards"};

/* Load into a fresh sharded optimizer via `how`: equal to `at` right
 * after, to `want` after the rest of the steps. */
static void resume(const cfg *c, via how, const shot *at, const shot *want) {
  fo_optimizer *opt = NULL;
  char path[256], what[160];
  const char *all[64];
  char names[64][256];
  shot got;
  memset(&got, 0, sizeof got);
  OK(make(&opt, c, g_comm, 1, 99));
  if (how == VIA_OWN) {
    file_in(path, sizeof path, "k", g_rank);
    OK(fo_optimizer_load(opt, path, NULL));
  } else if (how == VIA_GATHERED) {
    file_in(path, sizeof path, "gathered", -1);
    OK(fo_optimizer_load(opt, path, NULL));
  } else {
    for (int r = 0; r < g_size; r++) { /* every rank's file, in reverse order */
      file_in(names[r], sizeof names[r], "k", g_size - 1 - r);
      all[r] = names[r];
    }
    OK(fo_optimizer_load_shards(opt, all, g_size, NULL));
  }
  shot_take(opt, &got);
  snprintf(what, sizeof what, "%s via %s: right after the load", c->label, via_name[how]);
  shot_same(at, &got, 0, what);
  shot_free(&got);
  OK(steps(opt, c, g_rank, K_SAVE, T_END));
  shot_take(opt, &got);
  snprintf(what, sizeof what, "%s via %s: resumed", c->label, via_name[how]);
  shot_same(want, &got, 0, what);
out:
  shot_free(&got);
  fo_optimizer_destroy(opt);
}

static void exact_resume(const cfg *c) {
  fo_optimizer *ref = NULL;
  char path[256];
  shot at, want;
  memset(&at, 0, sizeof at);
  memset(&want, 0, sizeof want);
  OK(make(&ref, c, g_comm, 1, 1));
  OK(steps(ref, c, g_rank, 0, K_SAVE));
  file_in(path, sizeof path, "k", g_rank);
  OK(fo_optimizer_save(ref, path, NULL));
  file_in(path, sizeof path, "gathered", -1);
  OK(fo_optimizer_save_gathered(ref, g_rank == g_size - 1 ? path : NULL, g_size - 1, NULL));
  MPI_Barrier(MPI_COMM_WORLD); /* every rank's file is written before any is read */
  if (g_rank == 0)
    CHECK(dir_count() == g_size + 1, "%d files, expected %d", dir_count(), g_size + 1);
  shot_take(ref, &at);
  OK(steps(ref, c, g_rank, K_SAVE, T_END));
  shot_take(ref, &want);
  if (c->scaler)
    CHECK(want.info.skipped_steps == 1, "the run skipped %lld steps",
          (long long)want.info.skipped_steps);
  CHECK(same_on_every_rank(want.buf[FO_ROLE_PARAM], want.bytes[FO_ROLE_PARAM]),
        "ranks hold different parameters");
  for (int how = VIA_OWN; how <= VIA_SHARDS && g_ok; how++) resume(c, (via)how, &at, &want);
out:
  shot_free(&at);
  shot_free(&want);
  fo_optimizer_destroy(ref);
  dir_clear();
}

static void check_resume_mixed(void) {
  exact_resume(&CFG_MIXED);
}

static void check_resume_sgd(void) {
  exact_resume(&CFG_SGD);
}

static void check_resume_exact(void) {
  exact_resume(&CFG_EXACT);
}

/* ------------------------------------------- 2. unsharded and resharded */

/* The gathered file of a sharded run is the file of the unsharded run in
 * the same state; it and the per-rank files load into unsharded
 * data-parallel optimizers that continue like the sharded run. */
static void check_gathered_is_unsharded(void) {
  const cfg *c = &CFG_EXACT;
  fo_optimizer *sh = NULL, *plain = NULL, *a = NULL, *b = NULL;
  char g[256], p[256], names[64][256];
  const char *all[64];
  unsigned char *x = NULL, *y = NULL;
  size_t nx = 0, ny = 0;
  shot want, got;
  memset(&want, 0, sizeof want);
  memset(&got, 0, sizeof got);
  OK(make(&sh, c, g_comm, 1, 1));
  OK(make(&plain, c, g_comm, 0, 1));
  OK(steps(sh, c, g_rank, 0, K_SAVE));
  OK(steps(plain, c, g_rank, 0, K_SAVE));
  file_in(g, sizeof g, "gathered", -1);
  file_in(p, sizeof p, "plain", -1);
  OK(fo_optimizer_save_gathered(sh, g, 0, NULL));
  if (g_rank == 0) OK(fo_optimizer_save(plain, p, NULL));
  for (int r = 0; r < g_size; r++) {
    file_in(names[r], sizeof names[r], "k", r);
    all[r] = names[r];
  }
  OK(fo_optimizer_save(sh, names[g_rank], NULL));
  MPI_Barrier(MPI_COMM_WORLD);
  if (g_rank == 0) {
    CHECK(read_all(g, &x, &nx) && read_all(p, &y, &ny), "cannot read the files back");
    CHECK(nx == ny && memcmp(x, y, nx) == 0,
          "the gathered file (%zu bytes) is not the "
          "unsharded run's (%zu bytes)",
          nx, ny);
  }
  OK(steps(sh, c, g_rank, K_SAVE, T_END));
  shot_take(sh, &want);
  /* unsharded data-parallel optimizers from the gathered file, and from
   * the per-rank files */
  OK(make(&a, c, g_comm, 0, 5));
  OK(make(&b, c, g_comm, 0, 6));
  OK(fo_optimizer_load(a, g, NULL));
  OK(fo_optimizer_load_shards(b, all, g_size, NULL));
  OK(steps(a, c, g_rank, K_SAVE, T_END));
  OK(steps(b, c, g_rank, K_SAVE, T_END));
  shot_take(a, &got); /* the whole state: the sharded run's shard is in it */
  shot_same(&got, &want, 0, "unsharded from the gathered file, resumed");
  shot_free(&got);
  shot_take(b, &got);
  shot_same(&got, &want, 0, "unsharded from the per-rank files, resumed");
out:
  free(x);
  free(y);
  shot_free(&want);
  shot_free(&got);
  fo_optimizer_destroy(sh);
  fo_optimizer_destroy(plain);
  fo_optimizer_destroy(a);
  fo_optimizer_destroy(b);
  dir_clear();
}

/* The per-rank files of the world's run load into runs sharded over half
 * the ranks (two such runs side by side; np 2: one rank each), fed the
 * world's mean gradient, which continue like the world's run: compared
 * through the gathered files, each loaded into one optimizer. */
static void check_resharded(void) {
  const cfg *c = &CFG_EXACT;
  fo_optimizer *ref = NULL, *half = NULL, *w = NULL, *hw = NULL;
  fo_comm *sub = NULL;
  MPI_Comm split = MPI_COMM_NULL;
  char names[64][256], gw[256], gh[256];
  const char *all[64];
  shot sw, shh;
  memset(&sw, 0, sizeof sw);
  memset(&shh, 0, sizeof shh);
  int m = g_size / 2, color = g_rank / m;
  OK(make(&ref, c, g_comm, 1, 1));
  OK(steps(ref, c, g_rank, 0, K_SAVE));
  for (int r = 0; r < g_size; r++) {
    file_in(names[r], sizeof names[r], "k", r);
    all[r] = names[r];
  }
  OK(fo_optimizer_save(ref, names[g_rank], NULL));
  MPI_Barrier(MPI_COMM_WORLD);
  OK(steps(ref, c, g_rank, K_SAVE, T_END));
  file_in(gw, sizeof gw, "world", -1);
  OK(fo_optimizer_save_gathered(ref, gw, 0, NULL));

  MPI_Comm_split(MPI_COMM_WORLD, color, g_rank, &split);
  OK(fo_comm_create_mpi(&sub, split));
  OK(make(&half, c, sub, 1, 3));
  OK(fo_optimizer_load_shards(half, all, g_size, NULL));
  OK(steps(half, c, -1, K_SAVE, T_END));
  char stem[32];
  snprintf(stem, sizeof stem, "half%d", color);
  file_in(gh, sizeof gh, stem, -1);
  OK(fo_optimizer_save_gathered(half, gh, 0, NULL));
  MPI_Barrier(MPI_COMM_WORLD);
  OK(make(&w, c, NULL, -1, 8));
  OK(make(&hw, c, NULL, -1, 9));
  OK(fo_optimizer_load(w, gw, NULL));
  OK(fo_optimizer_load(hw, gh, NULL));
  shot_take(w, &sw);
  shot_take(hw, &shh);
  char what[96];
  snprintf(what, sizeof what, "resumed over %d ranks vs the world's %d", m, g_size);
  shot_same(&sw, &shh, 1, what);
out:
  shot_free(&sw);
  shot_free(&shh);
  fo_optimizer_destroy(ref);
  fo_optimizer_destroy(half);
  fo_optimizer_destroy(w);
  fo_optimizer_destroy(hw);
  fo_comm_destroy(sub);
  if (split != MPI_COMM_NULL) MPI_Comm_free(&split);
  dir_clear();
}

/* --------------------------------------------------------- 3. bad cases */

/* Every rank got status and rank 0's message, holding want; the
 * optimizer equals `before` and is not faulted. */
static void expect_refused(fo_status got, fo_status status, const char *want, fo_optimizer *opt,
                           const shot *before, const char *what) {
  char msg[512];
  memset(msg, 0, sizeof msg); /* compared whole across ranks */
  snprintf(msg, sizeof msg, "%s", got == FO_SUCCESS ? "" : fo_last_error());
  CHECK(got == status, "%s: %s, expected %s (%s)", what, fo_status_string(got),
        fo_status_string(status), msg);
  CHECK(strstr(msg, want) != NULL, "%s: \"%s\" lacks \"%s\"", what, msg, want);
  CHECK(same_on_every_rank(msg, sizeof msg), "%s: the ranks' messages differ (here: %s)", what,
        msg);
  if (g_rank == 0 && getenv("FO_CKPT_PRINT")) printf("  %-26s %s\n", what, msg);
  shot now;
  shot_take(opt, &now);
  shot_same(before, &now, 0, what);
  shot_free(&now);
  fo_status fault = FO_ERR_INTERNAL;
  fo_optimizer_get_fault(opt, &fault, NULL, 0);
  CHECK(fault == FO_SUCCESS, "%s: the optimizer is faulted", what);
}

static void check_bad_cases(void) {
  const cfg *c = &CFG_MIXED;
  fo_optimizer *opt = NULL, *one = NULL;
  char mine[256], next[256], later[256], missing[256], nodir[256], g[256], msg[64];
  shot before, one_before;
  memset(&before, 0, sizeof before);
  memset(&one_before, 0, sizeof one_before);
  OK(make(&opt, c, g_comm, 1, 1));
  OK(steps(opt, c, g_rank, 0, 3));
  file_in(mine, sizeof mine, "k3", g_rank);
  OK(fo_optimizer_save(opt, mine, NULL));
  OK(steps(opt, c, g_rank, 3, 5));
  file_in(later, sizeof later, "k5", g_rank);
  OK(fo_optimizer_save(opt, later, NULL));
  file_in(g, sizeof g, "g", -1);
  OK(fo_optimizer_save_gathered(opt, g, 0, NULL));
  MPI_Barrier(MPI_COMM_WORLD);
  OK(steps(opt, c, g_rank, 5, 6));
  shot_take(opt, &before);
  file_in(next, sizeof next, "k3", (g_rank + 1) % g_size);
  file_in(missing, sizeof missing, "nope", g_rank);

  fo_status st = fo_optimizer_load(opt, next, NULL);
  expect_refused(st, FO_ERR_CHECKPOINT, "rank 0 of", opt, &before, "another rank's file");
  CHECK(strstr(fo_last_error(), "holds the shard of rank 1 of"), "%s", fo_last_error());

  st = fo_optimizer_load(opt, g_rank == g_size - 1 ? missing : mine, NULL);
  snprintf(msg, sizeof msg, "rank %d of %d: cannot open", g_size - 1, g_size);
  expect_refused(st, FO_ERR_IO, msg, opt, &before, "missing on the last rank");

  st = fo_optimizer_load(opt, missing, NULL);
  expect_refused(st, FO_ERR_IO, "rank 0 of", opt, &before, "missing everywhere");

  st = fo_optimizer_load(opt, g_rank == g_size - 1 ? later : mine, NULL);
  expect_refused(st, FO_ERR_CHECKPOINT, "the ranks loaded different saves", opt, &before,
                 "files of two saves");

  snprintf(nodir, sizeof nodir, "%s/no/such/dir/g.safetensors", g_dir);
  st = fo_optimizer_save_gathered(opt, g_rank == 0 ? nodir : NULL, 0, NULL);
  expect_refused(st, FO_ERR_IO, "rank 0 of", opt, &before, "gathered, root cannot create");

  /* one process, no communication: an unsharded optimizer and a per-rank file */
  OK(make(&one, c, NULL, -1, 4));
  shot_take(one, &one_before);
  st = fo_optimizer_load(one, mine, NULL);
  CHECK(st == FO_ERR_CHECKPOINT && strstr(fo_last_error(), "this optimizer's state is not sharded"),
        "unsharded + a per-rank file: %s (%s)", fo_status_string(st), fo_last_error());
  shot now;
  shot_take(one, &now);
  shot_same(&one_before, &now, 0, "unsharded after refusing a per-rank file");
  shot_free(&now);

  /* and after all that, a good load works on every rank */
  OK(fo_optimizer_load(opt, mine, NULL));
  OK(steps(opt, c, g_rank, 3, 4));
  MPI_Barrier(MPI_COMM_WORLD);
  if (g_rank == 0)
    CHECK(dir_count() == 2 * g_size + 1, "%d files: a temporary one was left?", dir_count());
out:
  shot_free(&before);
  shot_free(&one_before);
  fo_optimizer_destroy(opt);
  fo_optimizer_destroy(one);
  dir_clear();
}

int main(int argc, char **argv) {
  g_comm = begin(&argc, &argv);
  if (g_rank == 0) {
    snprintf(g_dir, sizeof g_dir, "/tmp/fo_mpi_ckpt_XXXXXX");
    if (!mkdtemp(g_dir)) {
      perror("mkdtemp");
      MPI_Abort(MPI_COMM_WORLD, 2);
    }
  }
  MPI_Bcast(g_dir, sizeof g_dir, MPI_CHAR, 0, MPI_COMM_WORLD);
  run("exact resume: adamw-amsgrad bf16, scaler, clip", check_resume_mixed);
  run("exact resume: sgd-momentum f32", check_resume_sgd);
  run("exact resume: adam f32", check_resume_exact);
  run("gathered file = unsharded file; unsharded resume", check_gathered_is_unsharded);
  run("per-rank files resume over half the ranks", check_resharded);
  run("bad files: the same error on every rank", check_bad_cases);
  MPI_Barrier(MPI_COMM_WORLD);
  if (g_rank == 0) rmdir(g_dir);
  return finish(g_comm);
}
