/*
 * test_checkpoint_shard.c -- checkpoints of a sharded optimizer state
 * (ZeRO-1), CPU tier, in one process.
 *
 * The ranks are threads: a "thread world" is a host communicator whose
 * collectives meet at a barrier and read each other's buffers (sums in
 * rank order, each partial sum rounded to the dtype), so N sharded
 * optimizers in one process step, save and load exactly as N processes
 * would (the MPI tier, tests/mpi/test_mpi_ckpt.c, does it with processes).
 * A barrier that waits 20 s breaks the world: every collective then fails,
 * so a rank that skipped one fails the test instead of hanging it.
 * Criterion's asserts run on the main thread only; the ranks record.
 *
 * What is shown:
 *   - exact resume, N = 1..4 ranks, four configurations (clipping, loss
 *     scaling with skipped steps, a schedule, master weights, AMSGrad,
 *     SGD with Nesterov): per-rank files, a gathered file, and the
 *     per-rank files through fo_optimizer_load_shards, each loaded into a
 *     fresh sharded run over other initial values: parameters, every
 *     shard of the state, the step state and the hyper-parameters equal
 *     the uninterrupted run's, right after the load and after more steps;
 *     the same with a rank whose shard is empty;
 *   - the gathered file is byte for byte the file of an unsharded run in
 *     the same state (through windows smaller than a tensor, too);
 *   - per-rank files of N ranks load into an unsharded optimizer and into
 *     a sharded run over another number of ranks, and those continue
 *     bit-identical to the N-rank run;
 *   - the per-rank file's layout (format version 2, the shard, pieces);
 *     Python's safetensors reads it and reassembles the whole state
 *     (checkpoint_python.py, when installed);
 *   - refusals, each with every rank's status and message equal and
 *     nothing changed: an unsharded optimizer and a per-rank file, another
 *     rank's file, a missing file on one rank, files of two saves, edited
 *     and corrupt per-rank files, incomplete or mixed sets of files;
 *   - failures of a gathered save (root's directory missing, root's disk
 *     full, a faulted rank) and of a load's copies on one rank reach every
 *     rank alike;
 *   - argument checks of the new functions.
 */
#define _POSIX_C_SOURCE 200809L

#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

#include "checkpoint_format.h" /* fo_st_parse and fo_crc32, to re-sign edits */
#include "checkpoint_shard.h"  /* fo_ckpt_set_gather_window */
#include "ckpt_harness.h"
#include "internal.h" /* fo_inject_fault */

#define MAXR 8
#define TOTAL_STEPS 12

/* ------------------------------------------------------- the thread world */

typedef struct world world;

typedef struct peer {
  world *w;
  int rank;
} peer;

struct world {
  int size;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int arrived, broken;
  unsigned gen;
  void *bufs[MAXR];
  peer peers[MAXR];
};

/* All ranks meet; 1 when the world is broken (a rank never came). */
static int barrier(world *w) {
  pthread_mutex_lock(&w->mu);
  unsigned gen = w->gen;
  if (!w->broken && ++w->arrived == w->size) {
    w->arrived = 0;
    w->gen++;
    pthread_cond_broadcast(&w->cv);
  } else {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 20;
    while (gen == w->gen && !w->broken)
      if (pthread_cond_timedwait(&w->cv, &w->mu, &until) == ETIMEDOUT) {
        w->broken = 1;
        pthread_cond_broadcast(&w->cv);
      }
  }
  int broken = w->broken;
  pthread_mutex_unlock(&w->mu);
  return broken;
}

static int broken_msg(char *err, size_t cap) {
  snprintf(err, cap, "thread world broken: a rank did not take part");
  return 3;
}

/* acc = sum over ranks of part [off, off + n) of every rank's buffer, in
 * rank order, each partial sum rounded to dtype. */
static void sum_parts(world *w, size_t off, int64_t n, fo_dtype dt, float *acc) {
  if (n == 0) return;
  size_t es = fo_dtype_size(dt);
  float *x = malloc((size_t)n * sizeof *x);
  unsigned char *h = malloc((size_t)n * es);
  for (int q = 0; q < w->size; q++) {
    fo_convert_to_f32(dt, (const char *)w->bufs[q] + off * es, q ? x : acc, n);
    if (!q) continue;
    for (int64_t i = 0; i < n; i++) acc[i] += x[i];
    if (dt != FO_DTYPE_F32) {
      fo_convert_from_f32(dt, acc, h, n);
      fo_convert_to_f32(dt, h, acc, n);
    }
  }
  free(x);
  free(h);
}

static int tw_allreduce(void *ctx, void *buf, int64_t count, fo_dtype dt, char *err, size_t cap) {
  peer *p = ctx;
  world *w = p->w;
  w->bufs[p->rank] = buf;
  if (barrier(w)) return broken_msg(err, cap);
  float *acc = malloc((size_t)(count + 1) * sizeof *acc);
  sum_parts(w, 0, count, dt, acc);
  int b = barrier(w); /* everyone has read */
  if (count) fo_convert_from_f32(dt, acc, buf, count);
  free(acc);
  return b ? broken_msg(err, cap) : 0;
}

static int tw_reduce_scatter(void *ctx, void *buf, const int64_t *counts, fo_dtype dt, char *err,
                             size_t cap) {
  peer *p = ctx;
  world *w = p->w;
  w->bufs[p->rank] = buf;
  if (barrier(w)) return broken_msg(err, cap);
  size_t off = 0;
  for (int q = 0; q < p->rank; q++) off += (size_t)counts[q];
  int64_t n = counts[p->rank];
  float *acc = malloc((size_t)(n + 1) * sizeof *acc);
  sum_parts(w, off, n, dt, acc);
  int b = barrier(w);
  if (n) fo_convert_from_f32(dt, acc, (char *)buf + off * fo_dtype_size(dt), n);
  free(acc);
  return b ? broken_msg(err, cap) : 0;
}

static int tw_all_gather(void *ctx, void *buf, const int64_t *bytes, char *err, size_t cap) {
  peer *p = ctx;
  world *w = p->w;
  w->bufs[p->rank] = buf;
  if (barrier(w)) return broken_msg(err, cap);
  size_t off = 0;
  for (int q = 0; q < w->size; off += (size_t)bytes[q], q++)
    if (q != p->rank && bytes[q])
      memcpy((char *)buf + off, (const char *)w->bufs[q] + off, (size_t)bytes[q]);
  return barrier(w) ? broken_msg(err, cap) : 0;
}

static void world_init(world *w, int size) {
  memset(w, 0, sizeof *w);
  cr_assert(size >= 1 && size <= MAXR);
  w->size = size;
  pthread_mutex_init(&w->mu, NULL);
  pthread_cond_init(&w->cv, NULL);
  for (int r = 0; r < size; r++) w->peers[r] = (peer){w, r};
}

static fo_comm *world_comm(world *w, int rank) {
  fo_comm_ops ops;
  memset(&ops, 0, sizeof ops);
  ops.struct_size = sizeof ops;
  ops.allreduce_sum = tw_allreduce;
  ops.reduce_scatter_sum = tw_reduce_scatter;
  ops.all_gather = tw_all_gather;
  fo_comm *c = NULL;
  CK_OK(fo_comm_create_host(&c, &ops, &w->peers[rank], rank, w->size));
  return c;
}

static void world_destroy(world *w) {
  pthread_mutex_destroy(&w->mu);
  pthread_cond_destroy(&w->cv);
}

/* --------------------------------------------------------------- ranks */

/* One rank: its optimizer and what its calls returned.  Ranks run on
 * threads, so they record instead of asserting. */
typedef struct rk {
  fo_optimizer *opt;
  fo_comm *comm;
  ck_cfg cfg;
  char failure[400]; /* the first unexpected failure */
  fo_status last;    /* the last call a phase checks */
  char msg[400];     /* and its message */
} rk;

static void rk_note(rk *r, const char *fmt, ...) {
  if (r->failure[0]) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(r->failure, sizeof r->failure, fmt, ap);
  va_end(ap);
}

#define RK_OK(r, call)                                                                             \
  do {                                                                                             \
    fo_status s_ = (call);                                                                         \
    if (s_ != FO_SUCCESS) rk_note(r, "%s: %s (%s)", #call, fo_status_string(s_), fo_last_error()); \
  } while (0)

static void rk_record(rk *r, fo_status st) {
  r->last = st;
  snprintf(r->msg, sizeof r->msg, "%s", st == FO_SUCCESS ? "" : fo_last_error());
}

/* The model's first g_nt tensors of ckpt_harness.h (a test may take
 * fewer, for a tiny arena). */
static int g_nt = CK_TENSORS;

/* Step s's gradients of rank `rank` (of (rank, s, tensor, element)), or
 * with rank -1 the mean over n ranks: their sum in rank order, rounded as
 * the world sums, then / n (exact for n a power of two). */
static void fill_grads(rk *r, int rank, int n, int s) {
  fo_step_info info;
  RK_OK(r, fo_optimizer_get_info(r->opt, &info));
  float scale = r->cfg.scaler ? info.loss_scale : 1.0f;
  fo_dtype gd = r->cfg.gd;
  size_t es = fo_dtype_size(gd);
  for (int i = 0; i < g_nt; i++) {
    int64_t m = ck_sizes[i];
    if (!m) continue;
    void *g = NULL;
    RK_OK(r, fo_optimizer_grad_ptr(r->opt, i, &g));
    if (!g) return;
    float *v = malloc((size_t)m * sizeof *v), *x = malloc((size_t)m * sizeof *x);
    unsigned char *h = malloc((size_t)m * es);
    int lo = rank < 0 ? 0 : rank, hi = rank < 0 ? n : rank + 1;
    for (int q = lo; q < hi; q++) {
      for (int64_t k = 0; k < m; k++)
        x[k] = scale * ck_value(777 + (uint64_t)q, (uint64_t)s + 1, (uint64_t)i, (uint64_t)k);
      fo_convert_from_f32(gd, x, h, m); /* this rank's gradient, in its dtype */
      fo_convert_to_f32(gd, h, x, m);
      for (int64_t k = 0; k < m; k++) v[k] = q == lo ? x[k] : v[k] + x[k];
      if (q > lo) { /* rounded like the world's sums */
        fo_convert_from_f32(gd, v, h, m);
        fo_convert_to_f32(gd, h, v, m);
      }
    }
    if (rank < 0)
      for (int64_t k = 0; k < m; k++) v[k] /= (float)n;
    if (r->cfg.scaler && (s == 3 || s == 6) && i == 4 && rank <= 0) v[0] = INFINITY;
    RK_OK(r, fo_convert_from_f32(gd, v, g, m));
    free(v);
    free(x);
    free(h);
  }
}

/* Step s of a run over n ranks; rank -1: one process fed the mean. */
static void rk_step(rk *r, int rank, int n, int s) {
  fill_grads(r, rank, n, s);
  RK_OK(r, fo_optimizer_step(r->opt, NULL));
  if (s == 1) RK_OK(r, fo_optimizer_set_lr(r->opt, 1, 0.0191f));
}

/* An optimizer over fresh tensors whose parameters come from seed (main
 * thread). */
static fo_optimizer *make_opt(const ck_cfg *c, uint64_t seed) {
  fo_options o = ck_options(c);
  o.num_threads = 1;
  fo_hparams h[2];
  ck_hparams(c, h);
  fo_tensor_desc t[CK_TENSORS];
  for (int i = 0; i < g_nt; i++)
    t[i] = (fo_tensor_desc){ck_sizes[i], i % 2, NULL, NULL, ck_names[i]};
  fo_optimizer *opt = NULL;
  CK_OK(fo_optimizer_create(&opt, &o, h, 2, t, g_nt));
  for (int i = 0; i < g_nt; i++) {
    void *p = NULL;
    CK_OK(fo_optimizer_param_ptr(opt, i, &p));
    if (ck_sizes[i] > 0) ck_fill(c->pd, p, ck_sizes[i], seed, 0, (uint64_t)i, 1.0f);
  }
  CK_OK(fo_optimizer_sync_master(opt, NULL));
  return opt;
}

/* --------------------------------------------------------------- fleets */

/* n ranks of one run: sharded (ZeRO-1) or plain data parallelism. */
typedef struct fleet {
  world w;
  rk r[MAXR];
  int n, shard;
} fleet;

static void fleet_make(fleet *f, const ck_cfg *c, int n, int shard, uint64_t seed) {
  memset(f, 0, sizeof *f);
  world_init(&f->w, n);
  f->n = n;
  f->shard = shard;
  fo_dp_options d;
  CK_OK(fo_dp_options_default(&d));
  d.shard_state = shard;
  d.bucket_bytes = 40000; /* a few buckets */
  for (int k = 0; k < n; k++) {
    f->r[k].cfg = *c;
    f->r[k].opt = make_opt(c, seed);
    f->r[k].comm = world_comm(&f->w, k);
    CK_OK(fo_optimizer_set_comm(f->r[k].opt, f->r[k].comm, &d));
  }
}

static void fleet_free(fleet *f) {
  for (int k = 0; k < f->n; k++) {
    CK_OK(fo_optimizer_destroy(f->r[k].opt));
    CK_OK(fo_comm_destroy(f->r[k].comm));
  }
  world_destroy(&f->w);
}

typedef void (*phase_fn)(fleet *f, int rank, const void *arg);

typedef struct job {
  fleet *f;
  int rank;
  phase_fn fn;
  const void *arg;
} job;

static void *job_main(void *p) {
  job *j = p;
  j->fn(j->f, j->rank, j->arg);
  return NULL;
}

/* Run fn on every rank at once, one thread each. */
static void fleet_run(fleet *f, phase_fn fn, const void *arg) {
  pthread_t t[MAXR];
  job j[MAXR];
  for (int k = 0; k < f->n; k++) {
    j[k] = (job){f, k, fn, arg};
    cr_assert_eq(pthread_create(&t[k], NULL, job_main, &j[k]), 0);
  }
  for (int k = 0; k < f->n; k++) pthread_join(t[k], NULL);
  cr_assert(!f->w.broken, "the thread world broke: a rank skipped a collective");
}

static void fleet_expect_ok(fleet *f, const char *what) {
  for (int k = 0; k < f->n; k++)
    cr_assert(!f->r[k].failure[0], "%s: rank %d of %d: %s", what, k, f->n, f->r[k].failure);
}

typedef struct steps_arg {
  int from, to;
} steps_arg;

static void phase_steps(fleet *f, int rank, const void *arg) {
  const steps_arg *a = arg;
  for (int s = a->from; s < a->to; s++) rk_step(&f->r[rank], rank, f->n, s);
}

static void fleet_steps(fleet *f, int from, int to) {
  steps_arg a = {from, to};
  fleet_run(f, phase_steps, &a);
  fleet_expect_ok(f, "steps");
}

/* Per-rank paths: "<dir>/<stem>-<rank>.safetensors". */
typedef struct paths {
  char p[MAXR][160];
  const char *v[MAXR];
} paths;

static void paths_make(paths *x, const ck_dir *d, const char *stem, int n) {
  for (int k = 0; k < n; k++) {
    char name[64];
    snprintf(name, sizeof name, "%s-%d.safetensors", stem, k);
    ck_dir_file(d, name, x->p[k], sizeof x->p[k]);
    x->v[k] = x->p[k];
  }
}

/* What a phase of file calls does on each rank. */
typedef struct file_arg {
  const paths *per_rank; /* rank k's own file */
  const char *one;       /* one file for every rank */
  int root;
  int shards; /* load_shards over per_rank->v[0 .. shards-1] */
} file_arg;

static void phase_save(fleet *f, int rank, const void *arg) {
  const file_arg *a = arg;
  rk_record(&f->r[rank], fo_optimizer_save(f->r[rank].opt, a->per_rank->p[rank], NULL));
}

static void phase_save_gathered(fleet *f, int rank, const void *arg) {
  const file_arg *a = arg;
  rk_record(&f->r[rank], fo_optimizer_save_gathered(f->r[rank].opt, rank == a->root ? a->one : NULL,
                                                    a->root, NULL));
}

static void phase_load(fleet *f, int rank, const void *arg) {
  const file_arg *a = arg;
  fo_optimizer *o = f->r[rank].opt;
  fo_status st = a->shards ? fo_optimizer_load_shards(o, a->per_rank->v, a->shards, NULL)
                 : a->one  ? fo_optimizer_load(o, a->one, NULL)
                           : fo_optimizer_load(o, a->per_rank->p[rank], NULL);
  rk_record(&f->r[rank], st);
}

/* Every rank's last call succeeded. */
static void fleet_expect_calls_ok(fleet *f, const char *what) {
  for (int k = 0; k < f->n; k++)
    cr_assert_eq(f->r[k].last, FO_SUCCESS, "%s: rank %d of %d: %s", what, k, f->n, f->r[k].msg);
}

/* Every rank's last call failed alike: status, and the one message,
 * which names the failing rank and holds want. */
static void fleet_expect_calls_failed(fleet *f, fo_status status, const char *want,
                                      const char *what) {
  for (int k = 0; k < f->n; k++) {
    cr_expect_eq(f->r[k].last, status, "%s: rank %d: %s, expected %s (%s)", what, k,
                 fo_status_string(f->r[k].last), fo_status_string(status), f->r[k].msg);
    cr_expect(strstr(f->r[k].msg, want), "%s: rank %d's message \"%s\" lacks \"%s\"", what, k,
              f->r[k].msg, want);
    cr_expect_str_eq(f->r[k].msg, f->r[0].msg, "%s: ranks 0 and %d disagree", what, k);
  }
  if (getenv("FO_CKPT_PRINT")) printf("%-30s %s\n", what, f->r[0].msg);
}

/* ------------------------------------------------------------- snapshots */

/* Everything a resumed run must reproduce: the step state, the
 * hyper-parameters, the parameter arena and each state role's buffer (the
 * shard, or the whole arena of an unsharded optimizer). */
typedef struct shot {
  fo_step_info info;
  fo_hparams h[2];
  unsigned char *buf[FO_ROLE_COUNT];
  size_t bytes[FO_ROLE_COUNT];
  int64_t first, count;
} shot;

static void shot_take(fo_optimizer *opt, shot *s) {
  memset(s, 0, sizeof *s);
  CK_OK(fo_optimizer_get_info(opt, &s->info));
  for (int g = 0; g < 2; g++) CK_OK(fo_optimizer_get_hparams(opt, g, &s->h[g]));
  CK_OK(fo_optimizer_get_shard(opt, &s->first, &s->count));
  for (int r = 0; r < FO_ROLE_COUNT; r++) {
    if (r == FO_ROLE_GRAD) continue;
    void *p = NULL;
    size_t n = 0;
    if (fo_optimizer_arena(opt, (fo_role)r, &p, &n) != FO_SUCCESS) continue;
    s->buf[r] = malloc(n + 1);
    memcpy(s->buf[r], p, n);
    s->bytes[r] = n;
  }
}

static void shot_free(shot *s) {
  for (int r = 0; r < FO_ROLE_COUNT; r++) free(s->buf[r]);
  memset(s, 0, sizeof *s);
}

static void expect_same_bytes(const void *a, const void *b, size_t n, const char *what, int role) {
  const unsigned char *p = a, *q = b;
  size_t k = 0;
  while (k < n && p[k] == q[k]) k++;
  cr_expect_eq(k, n, "%s: role %d differs first at byte %zu of %zu", what, role, k, n);
}

/* b (a shard, or whole) equals a (whole, or the same shard): step state
 * (grad_coef too unless skip_coef: it holds 1 / N), hyper-parameters,
 * parameters, and b's slice of every state role. */
static void shot_expect(const shot *a, const shot *b, int skip_coef, const char *what) {
  const fo_step_info *x = &a->info, *y = &b->info;
  cr_expect(x->step == y->step && x->skipped_steps == y->skipped_steps &&
                x->last_step_skipped == y->last_step_skipped &&
                x->growth_tracker == y->growth_tracker,
            "%s: step %lld/%lld skipped %lld/%lld", what, (long long)x->step, (long long)y->step,
            (long long)x->skipped_steps, (long long)y->skipped_steps);
  cr_expect(ck_bits_equal(x->loss_scale, y->loss_scale) &&
                ck_bits_equal(x->grad_norm, y->grad_norm) &&
                ck_bits_equal(x->lr_factor, y->lr_factor) &&
                (skip_coef || ck_bits_equal(x->grad_coef, y->grad_coef)),
            "%s: the step state differs (scale %g/%g norm %g/%g coef %g/%g)", what,
            (double)x->loss_scale, (double)y->loss_scale, (double)x->grad_norm,
            (double)y->grad_norm, (double)x->grad_coef, (double)y->grad_coef);
  cr_expect(memcmp(a->h, b->h, sizeof a->h) == 0, "%s: hyper-parameters differ", what);
  for (int r = 0; r < FO_ROLE_COUNT; r++) {
    cr_expect_eq(!a->buf[r], !b->buf[r], "%s: role %d kept by one only", what, r);
    if (!a->buf[r] || !b->buf[r]) continue;
    if (r == FO_ROLE_PARAM) {
      cr_expect_eq(a->bytes[r], b->bytes[r], "%s: parameter bytes", what);
      expect_same_bytes(a->buf[r], b->buf[r], a->bytes[r], what, r);
      continue;
    }
    /* b's elements [b->first, +b->count) inside a's [a->first, +a->count) */
    cr_assert(b->first >= a->first && b->first + b->count <= a->first + a->count,
              "%s: shard [%lld, +%lld) not inside [%lld, +%lld)", what, (long long)b->first,
              (long long)b->count, (long long)a->first, (long long)a->count);
    cr_assert_eq(b->bytes[r], (size_t)b->count * 4, "%s: role %d holds %zu bytes", what, r,
                 b->bytes[r]);
    expect_same_bytes(a->buf[r] + (size_t)(b->first - a->first) * 4, b->buf[r], b->bytes[r], what,
                      r);
  }
}

typedef struct fleet_shot {
  shot s[MAXR];
  int n;
} fleet_shot;

static void fleet_take(fleet *f, fleet_shot *x) {
  x->n = f->n;
  for (int k = 0; k < f->n; k++) shot_take(f->r[k].opt, &x->s[k]);
}

static void fleet_shot_free(fleet_shot *x) {
  for (int k = 0; k < x->n; k++) shot_free(&x->s[k]);
}

static void fleet_shot_expect(const fleet_shot *a, const fleet_shot *b, const char *what) {
  cr_assert_eq(a->n, b->n);
  char w[160];
  for (int k = 0; k < a->n; k++) {
    snprintf(w, sizeof w, "%s, rank %d of %d", what, k, a->n);
    shot_expect(&a->s[k], &b->s[k], 0, w);
  }
}

/* A whole state (one unsharded optimizer) against every rank's shard. */
static void whole_expect_fleet(const shot *whole, const fleet_shot *b, int skip_coef,
                               const char *what) {
  char w[160];
  for (int k = 0; k < b->n; k++) {
    snprintf(w, sizeof w, "%s, rank %d of %d", what, k, b->n);
    shot_expect(whole, &b->s[k], skip_coef, w);
  }
}

static char *header_text(const ck_bytes *b) {
  uint64_t n = 0;
  for (int i = 7; i >= 0; i--) n = n << 8 | b->p[i];
  cr_assert_leq(n, b->n - 8);
  char *h = malloc(n + 1);
  memcpy(h, b->p + 8, n);
  h[n] = '\0';
  return h;
}

/* ------------------------------------------------------------ configs */

static ck_cfg cfg_of(int which) {
  ck_cfg c;
  memset(&c, 0, sizeof c);
  c.exec = FO_EXEC_CPU;
  c.storage = FO_STORAGE_ARENA;
  switch (which) {
    case 0: /* mixed precision with everything on */
      snprintf(c.label, sizeof c.label, "adamw-ams-bf16");
      c.alg = FO_ALG_ADAMW;
      c.pd = c.gd = FO_DTYPE_BF16;
      c.master = c.amsgrad = c.scaler = c.sched = 1;
      c.clip = 3.0f;
      break;
    case 1:
      snprintf(c.label, sizeof c.label, "sgd-nesterov-f32");
      c.alg = FO_ALG_SGD;
      c.pd = c.gd = FO_DTYPE_F32;
      c.momentum = 0.9f;
      c.nesterov = 1;
      c.clip = 0.5f;
      break;
    case 2:
      snprintf(c.label, sizeof c.label, "lion-f16");
      c.alg = FO_ALG_LION;
      c.pd = FO_DTYPE_F16;
      c.gd = FO_DTYPE_F32;
      c.master = c.scaler = 1;
      break;
    case 3: /* no pre-pass: exact across shardings */
      snprintf(c.label, sizeof c.label, "adam-f32");
      c.alg = FO_ALG_ADAM;
      c.pd = c.gd = FO_DTYPE_F32;
      c.sched = 1;
      break;
    default: /* no pre-pass, 16-bit */
      snprintf(c.label, sizeof c.label, "adamw-ams-bf16-plain");
      c.alg = FO_ALG_ADAMW;
      c.pd = c.gd = FO_DTYPE_BF16;
      c.master = c.amsgrad = 1;
      break;
  }
  return c;
}

/* ------------------------------------------------------------ resume */

typedef struct resume_case {
  int cfg, n;
} resume_case;

ParameterizedTestParameters(shard_resume, bit_identical) {
  static resume_case cases[4 * 4];
  for (int c = 0; c < 4; c++)
    for (int n = 1; n <= 4; n++) cases[c * 4 + n - 1] = (resume_case){c, n};
  return cr_make_param_array(resume_case, cases, 16);
}

/* Load into a fresh sharded run (other initial values) the way `how`
 * says; its state right after equals `at_k`, and after the rest of the
 * steps it equals `want`. */
static void resume_from(const ck_cfg *c, int n, int k, const file_arg *how, const fleet_shot *at_k,
                        const fleet_shot *want, const char *what) {
  fleet f;
  fleet_make(&f, c, n, 1, 99);
  fleet_run(&f, phase_load, how);
  fleet_expect_calls_ok(&f, what);
  fleet_shot got;
  char w[160];
  fleet_take(&f, &got);
  snprintf(w, sizeof w, "%s: right after the load at K=%d", what, k);
  fleet_shot_expect(at_k, &got, w);
  fleet_shot_free(&got);
  fleet_steps(&f, k, TOTAL_STEPS);
  fleet_take(&f, &got);
  snprintf(w, sizeof w, "%s: resumed at K=%d", what, k);
  fleet_shot_expect(want, &got, w);
  fleet_shot_free(&got);
  fleet_free(&f);
}

ParameterizedTest(resume_case *rc, shard_resume, bit_identical) {
  ck_cfg c = cfg_of(rc->cfg);
  ck_dir d;
  ck_dir_make(&d);
  const int ks[2] = {5, 7}; /* mid-growth; right after an overflow */
  paths files[2];
  char gathered[2][160];
  fleet_shot at[2], want;
  fleet ref;
  fleet_make(&ref, &c, rc->n, 1, 1);
  int done = 0;
  for (int i = 0; i < 2; i++) {
    fleet_steps(&ref, done, ks[i]);
    done = ks[i];
    char stem[32];
    snprintf(stem, sizeof stem, "k%d", ks[i]);
    paths_make(&files[i], &d, stem, rc->n);
    snprintf(stem, sizeof stem, "g%d.safetensors", ks[i]);
    ck_dir_file(&d, stem, gathered[i], sizeof gathered[i]);
    file_arg save = {&files[i], gathered[i], rc->n - 1, 0};
    fleet_run(&ref, phase_save, &save);
    fleet_expect_calls_ok(&ref, "per-rank save");
    fleet_run(&ref, phase_save_gathered, &save);
    fleet_expect_calls_ok(&ref, "gathered save");
    fleet_take(&ref, &at[i]);
  }
  fleet_steps(&ref, done, TOTAL_STEPS);
  fleet_take(&ref, &want);
  fleet_free(&ref);
  if (c.scaler) cr_expect_eq(want.s[0].info.skipped_steps, 2, "the run skips two steps");
  cr_expect_eq(ck_dir_count(&d), 2 * rc->n + 2, "only the checkpoints are in the directory");

  char what[96];
  for (int i = 0; i < 2; i++) {
    file_arg own = {&files[i], NULL, 0, 0}, one = {NULL, gathered[i], 0, 0},
             all = {&files[i], NULL, 0, rc->n};
    snprintf(what, sizeof what, "%s over %d: per-rank files", c.label, rc->n);
    resume_from(&c, rc->n, ks[i], &own, &at[i], &want, what);
    snprintf(what, sizeof what, "%s over %d: gathered file", c.label, rc->n);
    resume_from(&c, rc->n, ks[i], &one, &at[i], &want, what);
    snprintf(what, sizeof what, "%s over %d: load_shards", c.label, rc->n);
    resume_from(&c, rc->n, ks[i], &all, &at[i], &want, what);
    fleet_shot_free(&at[i]);
  }
  fleet_shot_free(&want);
  ck_dir_remove(&d);
}

/* A tiny arena (two tensors: 256 elements) over 3 ranks: rank 2's shard
 * is empty.  Its file holds the parameters alone; every way still
 * resumes exactly, and the gathered file is the one-rank run's. */
Test(shard_resume, a_rank_with_an_empty_shard) {
  g_nt = 2;
  ck_cfg c = cfg_of(3);
  ck_dir d;
  ck_dir_make(&d);
  paths files;
  paths_make(&files, &d, "t", 3);
  char g[160];
  ck_dir_file(&d, "g.safetensors", g, sizeof g);
  fleet ref;
  fleet_make(&ref, &c, 3, 1, 1);
  int64_t first = -1, count = -1;
  CK_OK(fo_optimizer_get_shard(ref.r[2].opt, &first, &count));
  cr_assert(first == 256 && count == 0, "rank 2's shard [%lld, +%lld)", (long long)first,
            (long long)count);
  fleet_steps(&ref, 0, 4);
  file_arg save = {&files, g, 2, 0};
  fleet_run(&ref, phase_save, &save);
  fleet_expect_calls_ok(&ref, "per-rank save");
  fleet_run(&ref, phase_save_gathered, &save);
  fleet_expect_calls_ok(&ref, "gathered save from the empty shard's rank");
  ck_bytes b = ck_read(files.p[2]);
  char *h = header_text(&b);
  cr_expect_null(strstr(h, ".exp_avg\""), "the empty shard's file holds state: %s", h);
  cr_expect_not_null(strstr(h, "\"embed.weight\":{\"dtype\":\"F32\",\"shape\":[1],"), "%s", h);
  free(h);
  free(b.p);
  fleet_shot at, want;
  fleet_take(&ref, &at);
  fleet_steps(&ref, 4, TOTAL_STEPS);
  fleet_take(&ref, &want);
  fleet_free(&ref);
  file_arg own = {&files, NULL, 0, 0}, whole = {NULL, g, 0, 0}, all = {&files, NULL, 0, 3};
  resume_from(&c, 3, 4, &own, &at, &want, "tiny: per-rank files");
  resume_from(&c, 3, 4, &whole, &at, &want, "tiny: gathered file");
  resume_from(&c, 3, 4, &all, &at, &want, "tiny: load_shards");
  fleet_shot_free(&at);
  fleet_shot_free(&want);
  ck_dir_remove(&d);
}

/* --------------------------------------- gathered = unsharded, resharding */

static void read_expect_same(const char *a, const char *b, const char *what) {
  ck_bytes x = ck_read(a), y = ck_read(b);
  cr_expect_eq(x.n, y.n, "%s: %zu vs %zu bytes", what, x.n, y.n);
  if (x.n == y.n) expect_same_bytes(x.p, y.p, x.n, what, -1);
  free(x.p);
  free(y.p);
}

/* n sharded ranks and n plain data-parallel ranks, fed the same
 * gradients, hold the same state (no pre-pass: the sums are the same
 * bits); the gathered file is the plain run's file, byte for byte. */
static void gathered_is_plain(int which, int n, int64_t window) {
  ck_cfg c = cfg_of(which);
  ck_dir d;
  ck_dir_make(&d);
  char g[160], p[160];
  ck_dir_file(&d, "gathered.safetensors", g, sizeof g);
  ck_dir_file(&d, "plain.safetensors", p, sizeof p);
  fo_ckpt_set_gather_window(window);
  fleet sh, pl;
  fleet_make(&sh, &c, n, 1, 1);
  fleet_make(&pl, &c, n, 0, 1);
  fleet_steps(&sh, 0, 6);
  fleet_steps(&pl, 0, 6);
  file_arg a = {NULL, g, 0, 0};
  fleet_run(&sh, phase_save_gathered, &a);
  fleet_expect_calls_ok(&sh, "gathered save");
  CK_OK(fo_optimizer_save(pl.r[0].opt, p, NULL));
  char what[96];
  snprintf(what, sizeof what, "%s over %d, window %lld: gathered vs plain file", c.label, n,
           (long long)window);
  read_expect_same(g, p, what);
  /* the plain fleet's gathered save is rank 0's own file too */
  a.root = n - 1;
  a.one = g;
  fleet_run(&pl, phase_save_gathered, &a);
  fleet_expect_calls_ok(&pl, "gathered save of a plain fleet");
  read_expect_same(g, p, "a plain fleet's gathered file");
  fo_ckpt_set_gather_window(0);
  fleet_free(&sh);
  fleet_free(&pl);
  ck_dir_remove(&d);
}

Test(shard_files, gathered_file_is_the_unsharded_file) {
  gathered_is_plain(3, 2, 0);
  gathered_is_plain(3, 3, 1000); /* windows smaller than a tensor, across shard boundaries */
  gathered_is_plain(4, 4, 0);
  gathered_is_plain(4, 4, 4099);
}

/* One rank: even with clipping and loss scaling the sharded optimizer is
 * the plain one, and so is its gathered file. */
Test(shard_files, one_rank_gathered_file_is_the_plain_file) {
  ck_cfg c = cfg_of(0);
  ck_dir d;
  ck_dir_make(&d);
  char g[160], p[160];
  ck_dir_file(&d, "g.safetensors", g, sizeof g);
  ck_dir_file(&d, "p.safetensors", p, sizeof p);
  fleet sh;
  fleet_make(&sh, &c, 1, 1, 1);
  rk plain = {.opt = make_opt(&c, 1), .cfg = c};
  fleet_steps(&sh, 0, 8);
  for (int s = 0; s < 8; s++) rk_step(&plain, 0, 1, s);
  cr_assert(!plain.failure[0], "%s", plain.failure);
  file_arg a = {NULL, g, 0, 0};
  fleet_run(&sh, phase_save_gathered, &a);
  fleet_expect_calls_ok(&sh, "gathered save");
  CK_OK(fo_optimizer_save(plain.opt, p, NULL));
  read_expect_same(g, p, "one rank: gathered vs plain");
  /* without a communicator, save_gathered is save */
  CK_OK(fo_optimizer_save_gathered(plain.opt, g, 0, NULL));
  read_expect_same(g, p, "no communicator: save_gathered vs save");
  CK_OK(fo_optimizer_destroy(plain.opt));
  fleet_free(&sh);
  ck_dir_remove(&d);
}

typedef struct reshard_arg {
  int from, to, world_n; /* steps; the run's ranks, whose mean each rank is fed */
} reshard_arg;

/* Every rank of another sharding is fed the mean of the original run's
 * world_n ranks: its sum over its own ranks, / its ranks, is that mean
 * again (exact: powers of two), so it continues the original run. */
static void phase_mean_steps(fleet *f, int rank, const void *arg) {
  const reshard_arg *a = arg;
  for (int s = a->from; s < a->to; s++) rk_step(&f->r[rank], -1, a->world_n, s);
}

/* Per-rank files of a 4-rank run, loaded into an unsharded optimizer and
 * into 2- and 1-rank sharded runs (and the gathered file likewise), which
 * continue bit-identical to the 4-rank run. */
static void reshard(int which) {
  ck_cfg c = cfg_of(which);
  const int n = 4, k = 5;
  ck_dir d;
  ck_dir_make(&d);
  paths files;
  paths_make(&files, &d, "r", n);
  char g[160];
  ck_dir_file(&d, "g.safetensors", g, sizeof g);
  fleet ref;
  fleet_make(&ref, &c, n, 1, 1);
  fleet_steps(&ref, 0, k);
  file_arg save = {&files, g, 1, 0};
  fleet_run(&ref, phase_save, &save);
  fleet_expect_calls_ok(&ref, "per-rank save");
  fleet_run(&ref, phase_save_gathered, &save);
  fleet_expect_calls_ok(&ref, "gathered save");
  fleet_shot at, want;
  fleet_take(&ref, &at);
  fleet_steps(&ref, k, TOTAL_STEPS);
  fleet_take(&ref, &want);
  fleet_free(&ref);

  char what[128];
  for (int via = 0; via < 2; via++) { /* the per-rank files; the gathered file */
    const char *how = via ? "gathered file" : "per-rank files";
    rk one = {.opt = make_opt(&c, 7), .cfg = c};
    fo_status st = via ? fo_optimizer_load(one.opt, g, NULL)
                       : fo_optimizer_load_shards(one.opt, files.v, n, NULL);
    cr_assert_eq(st, FO_SUCCESS, "%s: %s", how, fo_last_error());
    shot s;
    shot_take(one.opt, &s);
    snprintf(what, sizeof what, "%s %s into one unsharded optimizer, right after", c.label, how);
    whole_expect_fleet(&s, &at, 0, what);
    shot_free(&s);
    for (int step = k; step < TOTAL_STEPS; step++) rk_step(&one, -1, n, step);
    cr_assert(!one.failure[0], "%s", one.failure);
    shot_take(one.opt, &s);
    snprintf(what, sizeof what, "%s %s into one unsharded optimizer, resumed", c.label, how);
    whole_expect_fleet(&s, &want, 1, what);

    for (int m = 1; m <= 2; m++) { /* another sharding; compared with the unsharded run */
      fleet f;
      fleet_make(&f, &c, m, 1, 8);
      file_arg load = {&files, via ? g : NULL, 0, via ? 0 : n};
      fleet_run(&f, phase_load, &load);
      fleet_expect_calls_ok(&f, "load into another sharding");
      reshard_arg steps = {k, TOTAL_STEPS, n};
      fleet_run(&f, phase_mean_steps, &steps);
      fleet_expect_ok(&f, "steps");
      fleet_shot got;
      fleet_take(&f, &got);
      snprintf(what, sizeof what, "%s %s into %d ranks, resumed", c.label, how, m);
      whole_expect_fleet(&s, &got, 1, what);
      fleet_shot_free(&got);
      fleet_free(&f);
    }
    shot_free(&s);
    CK_OK(fo_optimizer_destroy(one.opt));
  }
  fleet_shot_free(&at);
  fleet_shot_free(&want);
  ck_dir_remove(&d);
}

Test(shard_files, per_rank_files_load_into_any_sharding) {
  reshard(3);
  reshard(4);
}

/* ------------------------------------------------------------- layout */

/* Rank 1 of 3: version 2, its shard, whole parameters, pieces of the
 * state named like the whole buffers, each with its first element; the
 * shards of 25600 arena elements are [0, 8576), [8576, 17152), [17152,
 * 25600): tensor 4 (4099 elements at 1280) lies in rank 0's shard and
 * tensor 5 (20000 at 5504) spans all three. */
Test(shard_format, per_rank_file_layout) {
  ck_cfg c = cfg_of(0);
  ck_dir d;
  ck_dir_make(&d);
  paths files;
  paths_make(&files, &d, "rank", 3);
  char g[160];
  ck_dir_file(&d, "whole.safetensors", g, sizeof g);
  fleet f;
  fleet_make(&f, &c, 3, 1, 1);
  fleet_steps(&f, 0, 3);
  file_arg save = {&files, g, 0, 0};
  fleet_run(&f, phase_save, &save);
  fleet_expect_calls_ok(&f, "per-rank save");
  fleet_run(&f, phase_save_gathered, &save);
  fleet_expect_calls_ok(&f, "gathered save");
  for (int k = 0; k < 3; k++) CK_OK(fo_checkpoint_verify(files.p[k]));
  ck_bytes b = ck_read(files.p[1]);
  char *h = header_text(&b);
  const char *has[] = {"\"fusedopt.format_version\":\"2\"",
                       "\"fusedopt.shard.rank\":\"1\"",
                       "\"fusedopt.shard.size\":\"3\"",
                       "\"fusedopt.shard.first\":\"8576\"",
                       "\"fusedopt.shard.count\":\"8576\"",
                       "\"fusedopt.shard.total\":\"25600\"",
                       "\"fusedopt.shard.offset.fc1.bias.exp_avg\":\"3072\"",
                       "\"fc1.bias\":{\"dtype\":\"BF16\",\"shape\":[20000],",
                       "\"fc1.bias.master\":{\"dtype\":\"F32\",\"shape\":[8576],",
                       "\"fc1.bias.max_exp_avg_sq\":{\"dtype\":\"F32\",\"shape\":[8576],",
                       "\"embed.weight\":{\"dtype\":\"BF16\",\"shape\":[1],",
                       "\"tensor.4\":{\"dtype\":\"BF16\",\"shape\":[4099],",
                       "\"fusedopt.crc32.fc1.bias.exp_avg_sq\""};
  for (size_t i = 0; i < sizeof has / sizeof has[0]; i++)
    cr_expect_not_null(strstr(h, has[i]), "rank 1's header lacks %s", has[i]);
  const char *lacks[] = {"\"tensor.4.exp_avg\"", "\"embed.weight.master\"", "\"empty.exp_avg\"",
                         "\"fc1.weight.exp_avg\""};
  for (size_t i = 0; i < sizeof lacks / sizeof lacks[0]; i++)
    cr_expect_null(strstr(h, lacks[i]), "rank 1's header holds %s", lacks[i]);
  free(h);
  free(b.p);
  b = ck_read(files.p[0]);
  h = header_text(&b);
  cr_expect_not_null(strstr(h, "\"tensor.4.exp_avg\":{\"dtype\":\"F32\",\"shape\":[4099],"));
  cr_expect_not_null(strstr(h, "\"fusedopt.shard.offset.fc1.bias.exp_avg\":\"0\""));
  cr_expect_not_null(strstr(h, "\"fc1.bias.exp_avg\":{\"dtype\":\"F32\",\"shape\":[3072],"));
  free(h);
  free(b.p);
  b = ck_read(g);
  h = header_text(&b);
  cr_expect_not_null(strstr(h, "\"fusedopt.format_version\":\"1\""), "a whole file is version 1");
  cr_expect_null(strstr(h, "fusedopt.shard"), "a whole file names no shard");
  free(h);
  free(b.p);
  fleet_free(&f);

  const char *py = ck_find_python();
  if (py) { /* Python reassembles the whole state from the pieces */
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s %s/../checkpoint_python.py --shards %s %s %s %s", py,
             FO_GOLDEN_DIR, g, files.p[2], files.p[0], files.p[1]);
    int rc = system(cmd);
    cr_expect(rc != -1 && WIFEXITED(rc) && WEXITSTATUS(rc) == 0, "%s failed (%d)", cmd, rc);
  }
  ck_dir_remove(&d);
  if (!py) cr_skip_test("no Python with safetensors and numpy for the Python half (FO_PYTHON)");
}

/* ------------------------------------------------------------- refusals */

/* A fleet three steps past its checkpoint, so a load that wrote anything
 * would show.  Step 3 of the run is skipped (an overflow), so the files
 * taken after 4 and 6 step calls hold steps 3 and 5. */
typedef struct bad_fx {
  ck_dir d;
  ck_cfg c;
  paths files; /* per-rank files after 4 steps */
  paths later; /* and after 6 */
  char whole[160];
  fleet f;
  fleet_shot before;
} bad_fx;

static void bad_open(bad_fx *x, int n) {
  x->c = cfg_of(0);
  ck_dir_make(&x->d);
  paths_make(&x->files, &x->d, "k4", n);
  paths_make(&x->later, &x->d, "k6", n);
  ck_dir_file(&x->d, "whole.safetensors", x->whole, sizeof x->whole);
  fleet_make(&x->f, &x->c, n, 1, 1);
  fleet_steps(&x->f, 0, 4);
  file_arg s = {&x->files, x->whole, 0, 0};
  fleet_run(&x->f, phase_save, &s);
  fleet_expect_calls_ok(&x->f, "save");
  fleet_run(&x->f, phase_save_gathered, &s);
  fleet_expect_calls_ok(&x->f, "gathered save");
  fleet_steps(&x->f, 4, 6);
  s.per_rank = &x->later;
  fleet_run(&x->f, phase_save, &s);
  fleet_expect_calls_ok(&x->f, "save");
  fleet_steps(&x->f, 6, 7);
  fleet_take(&x->f, &x->before);
}

static void bad_close(bad_fx *x) {
  fleet_shot_free(&x->before);
  fleet_free(&x->f);
  ck_dir_remove(&x->d);
}

/* Every rank refused alike and nothing changed, nothing faulted. */
static void bad_expect(bad_fx *x, fo_status status, const char *want, const char *what) {
  fleet_expect_calls_failed(&x->f, status, want, what);
  fleet_shot now;
  fleet_take(&x->f, &now);
  char w[128];
  snprintf(w, sizeof w, "%s: the state after the refused load", what);
  fleet_shot_expect(&x->before, &now, w);
  fleet_shot_free(&now);
  for (int k = 0; k < x->f.n; k++) {
    fo_status fault;
    CK_OK(fo_optimizer_get_fault(x->f.r[k].opt, &fault, NULL, 0));
    cr_expect_eq(fault, FO_SUCCESS, "%s: rank %d faulted", what, k);
  }
}

/* Each rank loads the file the table names for it. */
typedef struct per_rank_paths {
  const char *p[MAXR];
} per_rank_paths;

static void phase_load_each(fleet *f, int rank, const void *arg) {
  const per_rank_paths *a = arg;
  rk_record(&f->r[rank], fo_optimizer_load(f->r[rank].opt, a->p[rank], NULL));
}

Test(shard_errors, loads_refused_alike_on_every_rank) {
  bad_fx x;
  bad_open(&x, 3);
  per_rank_paths a;
  char missing[160];
  ck_dir_file(&x.d, "nope.safetensors", missing, sizeof missing);

  for (int k = 0; k < 3; k++) a.p[k] = x.files.p[(k + 1) % 3];
  fleet_run(&x.f, phase_load_each, &a);
  bad_expect(&x, FO_ERR_CHECKPOINT, "rank 0 of 3: \"", "another rank's file");
  cr_expect(strstr(x.f.r[0].msg,
                   "holds the shard of rank 1 of 3 (elements [8576, +8576) of "
                   "25600); this optimizer is rank 0 of 3 (elements [0, +8576)"),
            "%s", x.f.r[0].msg);

  for (int k = 0; k < 3; k++) a.p[k] = k == 1 ? missing : x.files.p[k];
  fleet_run(&x.f, phase_load_each, &a);
  bad_expect(&x, FO_ERR_IO, "rank 1 of 3: cannot open", "a missing file on rank 1");
  cr_expect(strstr(x.f.r[2].msg, "No such file or directory"), "%s", x.f.r[2].msg);

  for (int k = 0; k < 3; k++) a.p[k] = k == 2 ? x.later.p[k] : x.files.p[k];
  fleet_run(&x.f, phase_load_each, &a);
  bad_expect(&x, FO_ERR_CHECKPOINT,
             "the ranks loaded different saves: rank 2's checkpoint holds step 5, rank 0's step 3",
             "files of two saves");

  for (int k = 0; k < 3; k++) a.p[k] = k == 0 ? x.whole : x.files.p[k]; /* mixing is fine */
  fleet_run(&x.f, phase_load_each, &a);
  fleet_expect_calls_ok(&x.f, "the gathered file on rank 0, per-rank files elsewhere");
  bad_close(&x);
}

Test(shard_errors, an_unsharded_optimizer_refuses_a_per_rank_file) {
  bad_fx x;
  bad_open(&x, 2);
  rk one = {.opt = make_opt(&x.c, 3), .cfg = x.c};
  shot before, after;
  shot_take(one.opt, &before);
  fo_status st = fo_optimizer_load(one.opt, x.files.p[1], NULL);
  cr_expect_eq(st, FO_ERR_CHECKPOINT, "%s", fo_last_error());
  cr_expect(strstr(fo_last_error(),
                   "is rank 1's file of a state sharded over 2 ranks; this "
                   "optimizer's state is not sharded: assemble every rank's "
                   "file with fo_optimizer_load_shards()"),
            "%s", fo_last_error());
  shot_take(one.opt, &after);
  shot_expect(&before, &after, 0, "after the refused load");
  shot_free(&after);
  /* assembled, they load */
  CK_OK(fo_optimizer_load_shards(one.opt, x.files.v, 2, NULL));
  shot_free(&before);
  CK_OK(fo_optimizer_destroy(one.opt));
  bad_close(&x);
}

/* load_shards into one optimizer: files must be every rank's of one save. */
static void expect_set_refused(fo_optimizer *opt, const shot *before, const char *const *v, int n,
                               fo_status status, const char *want, const char *what) {
  fo_status st = fo_optimizer_load_shards(opt, v, n, NULL);
  cr_expect_eq(st, status, "%s: %s (%s)", what, fo_status_string(st), fo_last_error());
  cr_expect(strstr(fo_last_error(), want), "%s: \"%s\" lacks \"%s\"", what, fo_last_error(), want);
  cr_expect(strstr(fo_last_error(), "fo_optimizer_load_shards: "), "%s", fo_last_error());
  if (getenv("FO_CKPT_PRINT")) printf("%-30s %s\n", what, fo_last_error());
  shot after;
  shot_take(opt, &after);
  shot_expect(before, &after, 0, what);
  shot_free(&after);
}

Test(shard_errors, load_shards_wants_every_rank_of_one_save) {
  bad_fx x;
  bad_open(&x, 3);
  rk one = {.opt = make_opt(&x.c, 3), .cfg = x.c};
  shot before;
  shot_take(one.opt, &before);
  const char *v[4];
  expect_set_refused(one.opt, &before, x.files.v, 2, FO_ERR_CHECKPOINT,
                     "the file is rank 0's of 3 ranks, but 2 files were given", "a missing rank");
  v[0] = x.files.p[0], v[1] = x.files.p[1], v[2] = x.files.p[1];
  expect_set_refused(one.opt, &before, v, 3, FO_ERR_CHECKPOINT, "rank 1's shard, which",
                     "a rank twice");
  v[2] = x.later.p[1];
  expect_set_refused(one.opt, &before, v, 3, FO_ERR_CHECKPOINT, "rank 1's shard, which",
                     "a rank twice, of two saves");
  v[0] = x.files.p[0], v[1] = x.files.p[1], v[2] = x.later.p[2];
  expect_set_refused(one.opt, &before, v, 3, FO_ERR_CHECKPOINT,
                     "rank 2's file holds step 5, rank 0's", "two saves");
  v[2] = x.whole;
  expect_set_refused(one.opt, &before, v, 3, FO_ERR_CHECKPOINT,
                     "not a per-rank file of a sharded state", "a whole file among them");
  char missing[160];
  ck_dir_file(&x.d, "nope.safetensors", missing, sizeof missing);
  v[2] = missing;
  expect_set_refused(one.opt, &before, v, 3, FO_ERR_IO, "cannot open", "a missing file");
  v[2] = NULL;
  expect_set_refused(one.opt, &before, v, 3, FO_ERR_NULL_POINTER, "paths[2] is NULL",
                     "a NULL path");
  expect_set_refused(one.opt, &before, NULL, 3, FO_ERR_NULL_POINTER, "paths is NULL", "NULL paths");
  expect_set_refused(one.opt, &before, x.files.v, 0, FO_ERR_INVALID_ARGUMENT, "no files",
                     "no files");
  /* files of other tensors */
  ck_cfg other = x.c;
  other.sched = 0;
  fo_options o = ck_options(&other);
  fo_hparams h[2];
  ck_hparams(&other, h);
  fo_tensor_desc t[CK_TENSORS];
  for (int i = 0; i < CK_TENSORS; i++)
    t[i] = (fo_tensor_desc){ck_sizes[i] + (i == 3 ? 200 : 0), i % 2, NULL, NULL, ck_names[i]};
  fo_optimizer *bigger = NULL;
  CK_OK(fo_optimizer_create(&bigger, &o, h, 2, t, CK_TENSORS));
  cr_expect_eq(fo_optimizer_load_shards(bigger, x.files.v, 3, NULL), FO_ERR_CHECKPOINT);
  cr_expect(strstr(fo_last_error(),
                   "the shards cover an arena of 25600 elements; this "
                   "optimizer's holds 25856"),
            "%s", fo_last_error());
  CK_OK(fo_optimizer_destroy(bigger));
  /* and all of them, in any order, load */
  v[0] = x.files.p[2], v[1] = x.files.p[0], v[2] = x.files.p[1];
  CK_OK(fo_optimizer_load_shards(one.opt, v, 3, NULL));
  shot_free(&before);
  CK_OK(fo_optimizer_destroy(one.opt));
  bad_close(&x);
}

/* Re-sign the metadata checksum after an edit (the format's definition). */
static ck_bytes resign(const ck_bytes *b) {
  fo_st_file f;
  cr_assert_eq(fo_st_parse("test", b->p, b->n, &f), FO_SUCCESS, "%s", fo_last_error());
  fo_crc32 c;
  fo_crc32_init(&c);
  uint32_t crc = 0;
  for (int64_t i = 0; i < f.num_meta; i++) {
    const fo_st_meta *m = &f.meta[i];
    if (strncmp(m->key, "fusedopt.", 9) != 0 || strcmp(m->key, "fusedopt.metadata_crc32") == 0)
      continue;
    crc = fo_crc32_update(&c, crc, m->key, m->key_len + 1);
    crc = fo_crc32_update(&c, crc, m->value, m->value_len + 1);
  }
  fo_st_free(&f);
  ck_bytes out = {malloc(b->n + 1), b->n};
  memcpy(out.p, b->p, b->n);
  char *at = strstr((char *)out.p + 8, "\"fusedopt.metadata_crc32\":\"");
  cr_assert_not_null(at);
  char v[9];
  snprintf(v, sizeof v, "%08x", (unsigned)crc);
  memcpy(at + strlen("\"fusedopt.metadata_crc32\":\""), v, 8);
  return out;
}

/* The header edited in place (same length), re-signed or not. */
static ck_bytes edited(const ck_bytes *b, const char *old, const char *new_text, int sign) {
  cr_assert_eq(strlen(old), strlen(new_text));
  ck_bytes c = {malloc(b->n + 1), b->n};
  memcpy(c.p, b->p, b->n);
  char *hdr = malloc(b->n + 1);
  memcpy(hdr, c.p, b->n);
  hdr[b->n] = '\0';
  char *at = strstr(hdr + 8, old);
  cr_assert_not_null(at, "no %s", old);
  memcpy(c.p + (at - hdr), new_text, strlen(new_text));
  free(hdr);
  if (!sign) return c;
  ck_bytes s = resign(&c);
  free(c.p);
  return s;
}

Test(shard_errors, damaged_per_rank_files) {
  bad_fx x;
  bad_open(&x, 2);
  ck_bytes good = ck_read(x.files.p[1]);
  struct {
    ck_bytes b;
    const char *want, *what;
  } cases[] = {
      {edited(&good, "\"fusedopt.shard.rank\":\"1\"", "\"fusedopt.shard.rank\":\"2\"", 1),
       "\"fusedopt.shard.rank\" = \"2\" is not in [0, 1]", "rank out of range"},
      {edited(&good, "\"fusedopt.shard.rank\":\"1\"", "\"fusedopt.shard.rank\":\"0\"", 1),
       "rank 0's shard, which", "another rank's shard named"},
      {edited(&good, "\"fusedopt.shard.first\":\"12800\"", "\"fusedopt.shard.first\":\"12672\"", 1),
       "rank 1's shard starts at element 12672, where rank 0's ended (12800)", "another shard"},
      {edited(&good, "\"fusedopt.shard.count\":\"12800\"", "\"fusedopt.shard.count\":\"12801\"", 1),
       "\"fusedopt.shard.count\" = \"12801\" is not in [0, 12800]", "a shard past the end"},
      {edited(&good, "\"fusedopt.shard.offset.fc1.bias.exp_avg\":\"7296\"",
              "\"fusedopt.shard.offset.fc1.bias.exp_avg\":\"7297\"", 1),
       "piece \"fc1.bias.exp_avg\" starts at element 7297 of its tensor in the checkpoint; the "
       "shard's piece starts at element 7296",
       "a piece's offset"},
      {edited(&good, "\"fusedopt.shard.offset.fc1.bias.exp_avg\":\"7296\"",
              "\"fusedopt.shard.offset.fc1.bias.exp_avg\":\"7297\"", 0),
       "metadata checksum mismatch", "an unsigned edit"},
      {edited(&good, "\"fusedopt.shard.offset.fc1.bias.exp_avg\":\"7296\"",
              "\"fusedopt.shard.offsex.fc1.bias.exp_avg\":\"7296\"", 1),
       "the metadata lacks the first element of piece \"fc1.bias.exp_avg\"", "a missing offset"},
      {edited(&good, "\"fusedopt.format_version\":\"2\"", "\"fusedopt.format_version\":\"1\"", 1),
       "not a per-rank file of a sharded state: it holds the whole state",
       "version 1: a whole file"},
  };
  fo_optimizer *opt = x.f.r[1].opt;
  shot before;
  shot_take(opt, &before);
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    /* load_shards into an unsharded optimizer needs no other rank */
    rk one = {.opt = make_opt(&x.c, 3), .cfg = x.c};
    char bad[160];
    ck_dir_file(&x.d, "bad.safetensors", bad, sizeof bad);
    ck_write(bad, cases[i].b.p, cases[i].b.n);
    free(cases[i].b.p);
    const char *v[2] = {x.files.p[0], bad};
    fo_status st = fo_optimizer_load_shards(one.opt, v, 2, NULL);
    cr_expect_eq(st, FO_ERR_CHECKPOINT, "%s: %s", cases[i].what, fo_last_error());
    cr_expect(strstr(fo_last_error(), cases[i].want), "%s: \"%s\" lacks \"%s\"", cases[i].what,
              fo_last_error(), cases[i].want);
    if (getenv("FO_CKPT_PRINT")) printf("%-30s %s\n", cases[i].what, fo_last_error());
    CK_OK(fo_optimizer_destroy(one.opt));
  }
  /* a flipped data byte on rank 1: every rank refuses */
  good.p[good.n - 5] ^= 0x10;
  char bad[160];
  ck_dir_file(&x.d, "bad.safetensors", bad, sizeof bad);
  ck_write(bad, good.p, good.n);
  per_rank_paths a = {{x.files.p[0], bad}};
  fleet_run(&x.f, phase_load_each, &a);
  bad_expect(&x, FO_ERR_CHECKPOINT, "rank 1 of 2: \"", "a flipped byte on rank 1");
  cr_expect(strstr(x.f.r[0].msg, "checksum mismatch"), "%s", x.f.r[0].msg);
  free(good.p);
  shot_free(&before);
  bad_close(&x);
}

/* -------------------------------------------------------------- faults */

static void phase_save_gathered_root0(fleet *f, int rank, const void *arg) {
  const char *path = arg;
  rk_record(&f->r[rank], fo_optimizer_save_gathered(f->r[rank].opt, path, 0, NULL));
}

Test(shard_faults, gathered_save_failures_reach_every_rank) {
  ck_cfg c = cfg_of(0);
  ck_dir d;
  ck_dir_make(&d);
  char path[160], nodir[200];
  ck_dir_file(&d, "g.safetensors", path, sizeof path);
  snprintf(nodir, sizeof nodir, "%s/no/such/dir/g.safetensors", d.path);
  fleet f;
  fleet_make(&f, &c, 3, 1, 1);
  fleet_steps(&f, 0, 2);
  fleet_run(&f, phase_save_gathered_root0, path);
  fleet_expect_calls_ok(&f, "gathered save");
  ck_bytes old = ck_read(path);
  fleet_steps(&f, 2, 3);

  fleet_run(&f, phase_save_gathered_root0, nodir);
  fleet_expect_calls_failed(&f, FO_ERR_IO, "rank 0 of 3: cannot create", "root's directory");

  fleet_run(&f, phase_save_gathered_root0, "");
  fleet_expect_calls_failed(&f, FO_ERR_INVALID_ARGUMENT, "rank 0 of 3: path is empty",
                            "root's empty path");

  CK_OK(fo_inject_fault(f.r[0].opt, FO_FAULT_SAVE_WRITE));
  fleet_run(&f, phase_save_gathered_root0, path);
  fleet_expect_calls_failed(&f, FO_ERR_IO, "rank 0 of 3: cannot write (injected fault)",
                            "root's disk full");
  CK_OK(fo_inject_fault(f.r[0].opt, FO_FAULT_NONE));
  ck_bytes now = ck_read(path);
  cr_expect(now.n == old.n && memcmp(now.p, old.p, old.n) == 0, "the old file changed");
  free(now.p);
  cr_expect_eq(ck_dir_count(&d), 1, "a temporary file was left behind");

  /* rank 2's step fails after its work started: it is faulted */
  CK_OK(fo_inject_fault(f.r[2].opt, FO_FAULT_STEP));
  steps_arg one = {3, 4};
  fleet_run(&f, phase_steps, &one);
  cr_expect(strstr(f.r[2].failure, "injected fault"), "%s", f.r[2].failure);
  CK_OK(fo_inject_fault(f.r[2].opt, FO_FAULT_NONE));
  fleet_run(&f, phase_save_gathered_root0, path);
  fleet_expect_calls_failed(&f, FO_ERR_INVALID_STATE, "rank 2 of 3: the optimizer's state may be",
                            "a faulted rank");
  now = ck_read(path);
  cr_expect(now.n == old.n && memcmp(now.p, old.p, old.n) == 0, "the old file changed");
  free(now.p);
  free(old.p);
  cr_expect_eq(ck_dir_count(&d), 1, "a temporary file was left behind");
  fleet_free(&f);
  ck_dir_remove(&d);
}

Test(shard_faults, a_failed_copy_on_one_rank_faults_every_rank) {
  bad_fx x;
  bad_open(&x, 3);
  CK_OK(fo_inject_fault(x.f.r[1].opt, FO_FAULT_LOAD_APPLY));
  file_arg own = {&x.files, NULL, 0, 0};
  fleet_run(&x.f, phase_load, &own);
  fleet_expect_calls_failed(&x.f, FO_ERR_CUDA, "rank 1 of 3: injected fault: copy",
                            "a failed copy on rank 1");
  for (int k = 0; k < 3; k++) {
    fo_status fault;
    char msg[320];
    CK_OK(fo_optimizer_get_fault(x.f.r[k].opt, &fault, msg, sizeof msg));
    cr_expect_eq(fault, FO_ERR_CUDA, "rank %d: %s", k, msg);
    /* rank 1 keeps its own failure; the others rank 1's */
    cr_expect(strstr(msg, k == 1 ? "injected fault: copy" : "rank 1 of 3: injected fault"),
              "rank %d: %s", k, msg);
  }
  CK_OK(fo_inject_fault(x.f.r[1].opt, FO_FAULT_NONE));
  fleet_run(&x.f, phase_load, &own); /* a load clears it everywhere */
  fleet_expect_calls_ok(&x.f, "the second load");
  for (int k = 0; k < 3; k++) {
    fo_status fault;
    CK_OK(fo_optimizer_get_fault(x.f.r[k].opt, &fault, NULL, 0));
    cr_expect_eq(fault, FO_SUCCESS, "rank %d still faulted", k);
  }
  fleet_steps(&x.f, 4, 5);
  bad_close(&x);
}

/* ------------------------------------------------------------ arguments */

Test(shard_arguments, the_new_functions_check_their_own) {
  ck_cfg c = cfg_of(3);
  fo_optimizer *opt = make_opt(&c, 1);
  int s;
  const char *one[1] = {"/nonexistent/fo_ckpt_x"};
  cr_expect_eq(fo_optimizer_save_gathered(NULL, "/tmp/x", 0, NULL), FO_ERR_NULL_POINTER);
  cr_expect_eq(fo_optimizer_save_gathered(opt, "/tmp/x", 1, NULL), FO_ERR_INVALID_ARGUMENT);
  cr_expect(strstr(fo_last_error(), "root = 1 is not a rank of the communicator (1 rank)"), "%s",
            fo_last_error());
  cr_expect_eq(fo_optimizer_save_gathered(opt, "/tmp/x", -1, NULL), FO_ERR_INVALID_ARGUMENT);
  cr_expect_eq(fo_optimizer_save_gathered(opt, "/tmp/x", 0, (fo_stream_t)&s),
               FO_ERR_INVALID_ARGUMENT);
  cr_expect_eq(fo_optimizer_save_gathered(opt, NULL, 0, NULL), FO_ERR_NULL_POINTER);
  cr_expect_eq(fo_optimizer_save_gathered(opt, "", 0, NULL), FO_ERR_INVALID_ARGUMENT);
  cr_expect_eq(fo_optimizer_load_shards(NULL, one, 1, NULL), FO_ERR_NULL_POINTER);
  cr_expect_eq(fo_optimizer_load_shards(opt, NULL, 1, NULL), FO_ERR_NULL_POINTER);
  cr_expect_eq(fo_optimizer_load_shards(opt, one, 0, NULL), FO_ERR_INVALID_ARGUMENT);
  cr_expect_eq(fo_optimizer_load_shards(opt, one, 1, (fo_stream_t)&s), FO_ERR_INVALID_ARGUMENT);
  cr_expect(strstr(fo_last_error(), "stream must be NULL"), "%s", fo_last_error());
  cr_expect_eq(fo_optimizer_load_shards(opt, one, 1, NULL), FO_ERR_IO);
  CK_OK(fo_optimizer_destroy(opt));

  /* sharded: argument errors that can differ between ranks are agreed on */
  ck_dir d;
  ck_dir_make(&d);
  paths files;
  paths_make(&files, &d, "a", 2);
  fleet f;
  fleet_make(&f, &c, 2, 1, 1);
  fleet_run(&f, phase_save_gathered_root0, NULL);
  fleet_expect_calls_failed(&f, FO_ERR_NULL_POINTER, "rank 0 of 2: path is NULL",
                            "root's NULL path");
  file_arg save = {&files, NULL, 0, 0};
  fleet_run(&f, phase_save, &save);
  fleet_expect_calls_ok(&f, "per-rank save");
  per_rank_paths a = {{files.p[0], NULL}};
  fleet_run(&f, phase_load_each, &a);
  fleet_expect_calls_failed(&f, FO_ERR_NULL_POINTER, "rank 1 of 2: path is NULL",
                            "a NULL path on rank 1");
  a.p[1] = "";
  fleet_run(&f, phase_load_each, &a);
  fleet_expect_calls_failed(&f, FO_ERR_INVALID_ARGUMENT, "rank 1 of 2: path is empty",
                            "an empty path on rank 1");
  fleet_free(&f);
  ck_dir_remove(&d);
}
