/*
 * thread_ranks.c -- ranks as threads of one process (thread_ranks.h).
 */
#define _POSIX_C_SOURCE 200809L

#include "thread_ranks.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ------------------------------------------------------- the thread tr_world */

/* All ranks meet; 1 when the tr_world is broken (a rank never came). */
static int tr_barrier(tr_world *w) {
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

static int tr_broken_msg(char *err, size_t cap) {
  snprintf(err, cap, "thread tr_world broken: a rank did not take part");
  return 3;
}

/* acc = sum over ranks of part [off, off + n) of every rank's buffer, in
 * rank order, each partial sum rounded to dtype. */
static void tr_sum_parts(tr_world *w, size_t off, int64_t n, fo_dtype dt, float *acc) {
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
  tr_peer *p = ctx;
  tr_world *w = p->w;
  w->allreduce_calls[p->rank]++;
  w->bufs[p->rank] = buf;
  if (tr_barrier(w)) return tr_broken_msg(err, cap);
  float *acc = malloc((size_t)(count + 1) * sizeof *acc);
  tr_sum_parts(w, 0, count, dt, acc);
  int b = tr_barrier(w); /* everyone has read */
  if (count) fo_convert_from_f32(dt, acc, buf, count);
  free(acc);
  return b ? tr_broken_msg(err, cap) : 0;
}

static int tw_reduce_scatter(void *ctx, void *buf, const int64_t *counts, fo_dtype dt, char *err,
                             size_t cap) {
  tr_peer *p = ctx;
  tr_world *w = p->w;
  w->bufs[p->rank] = buf;
  if (tr_barrier(w)) return tr_broken_msg(err, cap);
  size_t off = 0;
  for (int q = 0; q < p->rank; q++) off += (size_t)counts[q];
  int64_t n = counts[p->rank];
  float *acc = malloc((size_t)(n + 1) * sizeof *acc);
  tr_sum_parts(w, off, n, dt, acc);
  int b = tr_barrier(w);
  if (n) fo_convert_from_f32(dt, acc, (char *)buf + off * fo_dtype_size(dt), n);
  free(acc);
  return b ? tr_broken_msg(err, cap) : 0;
}

static int tw_all_gather(void *ctx, void *buf, const int64_t *bytes, char *err, size_t cap) {
  tr_peer *p = ctx;
  tr_world *w = p->w;
  w->bufs[p->rank] = buf;
  if (tr_barrier(w)) return tr_broken_msg(err, cap);
  size_t off = 0;
  for (int q = 0; q < w->size; off += (size_t)bytes[q], q++)
    if (q != p->rank && bytes[q])
      memcpy((char *)buf + off, (const char *)w->bufs[q] + off, (size_t)bytes[q]);
  return tr_barrier(w) ? tr_broken_msg(err, cap) : 0;
}

void tr_world_init(tr_world *w, int size) {
  memset(w, 0, sizeof *w);
  cr_assert(size >= 1 && size <= MAXR);
  w->size = size;
  pthread_mutex_init(&w->mu, NULL);
  pthread_cond_init(&w->cv, NULL);
  for (int r = 0; r < size; r++) w->peers[r] = (tr_peer){w, r};
}

static fo_comm *world_comm(tr_world *w, int rank, int with_shard_ops) {
  fo_comm_ops ops;
  memset(&ops, 0, sizeof ops);
  ops.struct_size = sizeof ops;
  ops.allreduce_sum = tw_allreduce;
  if (with_shard_ops) {
    ops.reduce_scatter_sum = tw_reduce_scatter;
    ops.all_gather = tw_all_gather;
  }
  fo_comm *c = NULL;
  CK_OK(fo_comm_create_host(&c, &ops, &w->peers[rank], rank, w->size));
  return c;
}

fo_comm *tr_world_comm(tr_world *w, int rank) {
  return world_comm(w, rank, 1);
}

fo_comm *tr_world_comm_allreduce_only(tr_world *w, int rank) {
  return world_comm(w, rank, 0);
}

void tr_world_destroy(tr_world *w) {
  pthread_mutex_destroy(&w->mu);
  pthread_cond_destroy(&w->cv);
}

/* --------------------------------------------------------------- ranks */

void rk_note(rk *r, const char *fmt, ...) {
  if (r->failure[0]) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(r->failure, sizeof r->failure, fmt, ap);
  va_end(ap);
}

void rk_record(rk *r, fo_status st) {
  r->last = st;
  snprintf(r->msg, sizeof r->msg, "%s", st == FO_SUCCESS ? "" : fo_last_error());
}

int g_nt = CK_TENSORS;

/* Step s's gradients of rank `rank` (of (rank, s, tensor, element)), or
 * with rank -1 the mean over n ranks: their sum in rank order, rounded as
 * the tr_world sums, then / n (exact for n a power of two). */
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
      if (q > lo) { /* rounded like the tr_world's sums */
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

void rk_step(rk *r, int rank, int n, int s) {
  fill_grads(r, rank, n, s);
  RK_OK(r, fo_optimizer_step(r->opt, NULL));
  if (s == 1) RK_OK(r, fo_optimizer_set_lr(r->opt, 1, 0.0191f));
}

fo_optimizer *rk_make_opt(const ck_cfg *c, uint64_t seed) {
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

void fleet_make(fleet *f, const ck_cfg *c, int n, int shard, uint64_t seed) {
  memset(f, 0, sizeof *f);
  tr_world_init(&f->w, n);
  f->n = n;
  f->shard = shard;
  fo_dp_options d;
  CK_OK(fo_dp_options_default(&d));
  d.shard_state = shard;
  d.bucket_bytes = 40000; /* a few buckets */
  for (int k = 0; k < n; k++) {
    f->r[k].cfg = *c;
    f->r[k].opt = rk_make_opt(c, seed);
    f->r[k].comm = tr_world_comm(&f->w, k);
    CK_OK(fo_optimizer_set_comm(f->r[k].opt, f->r[k].comm, &d));
  }
}

void fleet_free(fleet *f) {
  for (int k = 0; k < f->n; k++) {
    CK_OK(fo_optimizer_destroy(f->r[k].opt));
    CK_OK(fo_comm_destroy(f->r[k].comm));
  }
  tr_world_destroy(&f->w);
}

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

void fleet_run(fleet *f, phase_fn fn, const void *arg) {
  pthread_t t[MAXR];
  job j[MAXR];
  for (int k = 0; k < f->n; k++) {
    j[k] = (job){f, k, fn, arg};
    cr_assert_eq(pthread_create(&t[k], NULL, job_main, &j[k]), 0);
  }
  for (int k = 0; k < f->n; k++) pthread_join(t[k], NULL);
  cr_assert(!f->w.broken, "the thread tr_world broke: a rank skipped a collective");
}

void fleet_expect_ok(fleet *f, const char *what) {
  for (int k = 0; k < f->n; k++)
    cr_assert(!f->r[k].failure[0], "%s: rank %d of %d: %s", what, k, f->n, f->r[k].failure);
}

void phase_steps(fleet *f, int rank, const void *arg) {
  const steps_arg *a = arg;
  for (int s = a->from; s < a->to; s++) rk_step(&f->r[rank], rank, f->n, s);
}

void fleet_steps(fleet *f, int from, int to) {
  steps_arg a = {from, to};
  fleet_run(f, phase_steps, &a);
  fleet_expect_ok(f, "steps");
}

void paths_make(paths *x, const ck_dir *d, const char *stem, int n) {
  for (int k = 0; k < n; k++) {
    char name[64];
    snprintf(name, sizeof name, "%s-%d.safetensors", stem, k);
    ck_dir_file(d, name, x->p[k], sizeof x->p[k]);
    x->v[k] = x->p[k];
  }
}

void phase_save(fleet *f, int rank, const void *arg) {
  const file_arg *a = arg;
  rk_record(&f->r[rank], fo_optimizer_save(f->r[rank].opt, a->per_rank->p[rank], NULL));
}

void phase_save_gathered(fleet *f, int rank, const void *arg) {
  const file_arg *a = arg;
  rk_record(&f->r[rank], fo_optimizer_save_gathered(f->r[rank].opt, rank == a->root ? a->one : NULL,
                                                    a->root, NULL));
}

void phase_load(fleet *f, int rank, const void *arg) {
  const file_arg *a = arg;
  fo_optimizer *o = f->r[rank].opt;
  fo_status st = a->shards ? fo_optimizer_load_shards(o, a->per_rank->v, a->shards, NULL)
                 : a->one  ? fo_optimizer_load(o, a->one, NULL)
                           : fo_optimizer_load(o, a->per_rank->p[rank], NULL);
  rk_record(&f->r[rank], st);
}

void fleet_expect_calls_ok(fleet *f, const char *what) {
  for (int k = 0; k < f->n; k++)
    cr_assert_eq(f->r[k].last, FO_SUCCESS, "%s: rank %d of %d: %s", what, k, f->n, f->r[k].msg);
}

void fleet_expect_calls_failed(fleet *f, fo_status status, const char *want, const char *what) {
  for (int k = 0; k < f->n; k++) {
    cr_expect_eq(f->r[k].last, status, "%s: rank %d: %s, expected %s (%s)", what, k,
                 fo_status_string(f->r[k].last), fo_status_string(status), f->r[k].msg);
    cr_expect(strstr(f->r[k].msg, want), "%s: rank %d's message \"%s\" lacks \"%s\"", what, k,
              f->r[k].msg, want);
    cr_expect_str_eq(f->r[k].msg, f->r[0].msg, "%s: ranks 0 and %d disagree", what, k);
  }
  if (getenv("FO_CKPT_PRINT")) printf("%-30s %s\n", what, f->r[0].msg);
}
