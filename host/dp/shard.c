/*
 * shard.c -- a sharded optimizer state, ZeRO stage 1
 * (fo_dp_options.shard_state; docs/data-parallel.md).
 *
 * The arena's elements are cut into one contiguous shard per rank
 * (fo_shard_range).  Rank r keeps master weights and moments only for its
 * shard; parameters and gradients stay whole.  A step then
 *   1. reduce-scatters each gradient bucket along the shard boundaries, so
 *      that every rank holds the summed gradients of its own shard;
 *   2. runs the pre-pass over its shard and all-gathers the per-rank sums
 *      of squares (one double each), which every rank adds in rank order:
 *      the norm, the overflow flag and the loss scale agree bit for bit;
 *   3. updates its shard: the step's plan is built over the pieces of the
 *      tensors that fall in the shard (run_tensors), whose state pointers
 *      point into the shard-sized state buffers -- the kernels and the CPU
 *      executor run unchanged;
 *   4. all-gathers the updated parameters.
 */
#include <stdlib.h>
#include <string.h>

#include "comm_internal.h"
#include "exec.h"

/* ---------------------------------------------------------------- ranges */

void fo_shard_range(int64_t total, int size, int rank, int64_t *first, int64_t *count) {
  const int64_t a = FO_TENSOR_ALIGN_ELEMS;
  /* total <= 2^62, so none of these overflow */
  int64_t per = (total / size + (total % size != 0) + a - 1) / a * a;
  int64_t lo = per * rank < total ? per * rank : total;
  int64_t hi = total - lo > per ? lo + per : total;
  *first = lo;
  *count = hi - lo;
}

/* The common part [*lo, *hi) of [at, at + count) and [first, first + n);
 * empty (*lo == *hi) when they do not meet. */
static void overlap(int64_t at, int64_t count, int64_t first, int64_t n, int64_t *lo, int64_t *hi) {
  int64_t a = at > first ? at : first;
  int64_t b = at + count < first + n ? at + count : first + n;
  *lo = a;
  *hi = b > a ? b : a;
}

void fo_shard_clip(const fo_optimizer *opt, int64_t at, int64_t count, int64_t *lo, int64_t *hi) {
  overlap(at, count, opt->shard.first, opt->shard.count, lo, hi);
}

fo_status fo_optimizer_get_shard(const fo_optimizer *opt, int64_t *first, int64_t *count) {
  if (!opt) return fo_fail(FO_ERR_NULL_POINTER, "fo_optimizer_get_shard", "opt is NULL");
  if (first) *first = opt->shard.on ? opt->shard.first : 0;
  if (count) *count = opt->shard.on ? opt->shard.count : opt->total_elems;
  return FO_SUCCESS;
}

/* ------------------------------------------------------------- building */

/* Everything a shard needs, allocated before the optimizer changes, so an
 * attach that fails changes nothing. */
typedef struct shard_build {
  fo_shard_layout layout;
  void *state[FO_ROLE_COUNT]; /* the shard's state buffers (state roles) */
  fo_plan_tensor *tensors;    /* the pieces of the tensors in the shard */
  int64_t num_tensors;
  fo_run_plan run;
  double *sumsq;
} shard_build;

static int is_state_role(int r) {
  return r >= FO_ROLE_MASTER && r < FO_ROLE_COUNT;
}

static void build_free(const fo_optimizer *opt, shard_build *b) {
  for (int r = 0; r < FO_ROLE_COUNT; r++) fo_exec_free(opt, b->state[r]);
  fo_exec_free(opt, b->sumsq);
  fo_run_plan_free(opt, &b->run);
  free(b->tensors);
}

/* Shard-sized state buffers holding this rank's slice of the current
 * state. */
static fo_status build_state(const char *fn, const fo_optimizer *opt, shard_build *b) {
  size_t bytes = (size_t)b->layout.count * sizeof(float);
  for (int r = 0; r < FO_ROLE_COUNT; r++) {
    if (!is_state_role(r) || !opt->arena[r]) continue;
    fo_status st = fo_exec_alloc(fn, opt, bytes, &b->state[r]);
    if (st != FO_SUCCESS) return st;
    const float *from = (const float *)opt->arena[r] + b->layout.first;
    st = fo_exec_copy(fn, opt, b->state[r], from, bytes, FO_COPY_WITHIN);
    if (st != FO_SUCCESS) return st;
  }
  return FO_SUCCESS;
}

/* The piece of tensor t (at element offset off of the arena) inside the
 * shard, with its state pointers in the shard's buffers. */
static fo_plan_tensor piece(const fo_optimizer *opt, const shard_build *b, const fo_plan_tensor *t,
                            int64_t off) {
  int64_t lo, hi;
  overlap(off, t->numel, b->layout.first, b->layout.count, &lo, &hi);
  size_t in = (size_t)(lo - off), at = (size_t)(lo - b->layout.first);
  fo_plan_tensor p = *t;
  p.param = (char *)t->param + in * fo_role_elem_size(opt, FO_ROLE_PARAM);
  p.grad = (char *)t->grad + in * fo_role_elem_size(opt, FO_ROLE_GRAD);
  p.master = b->state[FO_ROLE_MASTER] ? (float *)b->state[FO_ROLE_MASTER] + at : NULL;
  p.exp_avg = b->state[FO_ROLE_EXP_AVG] ? (float *)b->state[FO_ROLE_EXP_AVG] + at : NULL;
  p.exp_avg_sq = b->state[FO_ROLE_EXP_AVG_SQ] ? (float *)b->state[FO_ROLE_EXP_AVG_SQ] + at : NULL;
  p.max_exp_avg_sq =
      b->state[FO_ROLE_MAX_EXP_AVG_SQ] ? (float *)b->state[FO_ROLE_MAX_EXP_AVG_SQ] + at : NULL;
  p.numel = hi - lo;
  p.vector_ok = (((uintptr_t)p.param | (uintptr_t)p.grad) & 15u) == 0;
  return p;
}

static int in_shard(const shard_build *b, const fo_plan_tensor *t, int64_t off) {
  return t->numel > 0 && off < b->layout.first + b->layout.count &&
         off + t->numel > b->layout.first;
}

/* The step's tensor table over the shard, and its plan. */
static fo_status build_plan(const char *fn, const fo_optimizer *opt, shard_build *b) {
  int64_t n = 0;
  for (int64_t i = 0; i < opt->num_tensors; i++)
    n += in_shard(b, &opt->tensors[i], opt->offsets[i]);
  b->tensors = calloc((size_t)n + 1, sizeof *b->tensors);
  if (!b->tensors) return fo_fail(FO_ERR_OUT_OF_MEMORY, fn, "no memory for the shard's plan");
  for (int64_t i = 0; i < opt->num_tensors; i++)
    if (in_shard(b, &opt->tensors[i], opt->offsets[i]))
      b->tensors[b->num_tensors++] = piece(opt, b, &opt->tensors[i], opt->offsets[i]);
  return fo_run_plan_build(fn, opt, b->tensors, b->num_tensors, &b->run);
}

static fo_status build(const char *fn, const fo_optimizer *opt, const fo_comm *comm,
                       shard_build *b) {
  b->layout = (fo_shard_layout){1, comm->rank, comm->size, 0, 0};
  fo_shard_range(opt->total_elems, comm->size, comm->rank, &b->layout.first, &b->layout.count);
  fo_status st = build_state(fn, opt, b);
  if (st == FO_SUCCESS) st = build_plan(fn, opt, b);
  /* LAMB, LARS: one slot of tensor sums per rank (fo_dp_gather_tensor_sums) */
  if (st == FO_SUCCESS && b->run.tensor_sums)
    st = fo_run_plan_norm_slots(fn, opt, &b->run, comm->size, comm->rank);
  if (st == FO_SUCCESS)
    st = fo_exec_alloc(fn, opt, (size_t)comm->size * sizeof(double), (void **)&b->sumsq);
  return st;
}

/* ---------------------------------------------------------------- attach */

static fo_status check_shardable(const char *fn, const fo_optimizer *opt, const fo_comm *comm) {
  if (opt->options.storage != FO_STORAGE_ARENA)
    return fo_fail(FO_ERR_UNSUPPORTED, fn,
                   "a sharded state needs arena storage (FO_STORAGE_ARENA): shards are "
                   "slices of the arena");
  if (opt->options.stochastic_rounding)
    return fo_fail(FO_ERR_UNSUPPORTED, fn,
                   "a sharded state does not support stochastic rounding (its random "
                   "bits are per whole tensor)");
  if (!fo_comm_can_shard(comm))
    return fo_fail(FO_ERR_UNSUPPORTED, fn,
                   "the host communicator has no reduce_scatter_sum or all_gather op, "
                   "which a sharded state needs");
  return FO_SUCCESS;
}

fo_status fo_shard_attach(const char *fn, fo_optimizer *opt, fo_comm *comm) {
  fo_status st = check_shardable(fn, opt, comm);
  if (st != FO_SUCCESS) return st;
  /* the device may still run a step over the buffers about to go */
  st = fo_exec_synchronize(fn, opt);
  if (st != FO_SUCCESS) return st;
  shard_build b;
  memset(&b, 0, sizeof b);
  st = build(fn, opt, comm, &b);
  /* the shard's copies may still be in flight: wait for them here, so a
   * step on any stream (a non-blocking one too) sees the shard */
  if (st == FO_SUCCESS) st = fo_exec_synchronize(fn, opt);
  if (st != FO_SUCCESS) {
    build_free(opt, &b);
    return st;
  }
  /* the plan owns the pieces' table from now on */
  b.run.owns_tensors = 1;
  b.tensors = NULL;
  fo_layout_adopt_shard(opt, &b.layout, b.state, &b.run);
  opt->dp->sumsq = b.sumsq;
  return FO_SUCCESS;
}

/* ----------------------------------------------------------------- step */

fo_status fo_shard_reduce(const char *fn, fo_optimizer *opt, void *buf, int64_t at, int64_t count,
                          fo_dtype dtype, int64_t *counts, fo_stream_t stream) {
  /* the shards tile the arena in rank order, so the parts of [at, at +
   * count) are consecutive in buf */
  for (int r = 0; r < opt->shard.size; r++) {
    int64_t f, c, lo, hi;
    fo_shard_range(opt->total_elems, opt->shard.size, r, &f, &c);
    overlap(at, count, f, c, &lo, &hi);
    counts[r] = hi - lo;
  }
  return fo_comm_reduce_scatter(fn, opt->dp->comm, buf, counts, dtype, stream);
}

fo_status fo_dp_agree_sumsq(const char *fn, fo_optimizer *opt, const double **sums, int64_t *n,
                            fo_stream_t stream) {
  fo_dp *dp = opt->dp;
  int64_t *bytes = dp->counts;
  for (int r = 0; r < opt->shard.size; r++) bytes[r] = sizeof(double);
  /* a failed launch here is the executor's (the caller faults the state);
   * a failed collective leaves the ranks apart and poisons the gradients */
  fo_status st = opt->exec->sum_partials(opt, dp->sumsq + opt->shard.rank, stream);
  if (st != FO_SUCCESS) return st;
  st = fo_comm_all_gather(fn, dp->comm, dp->sumsq, bytes, stream);
  if (st != FO_SUCCESS) {
    opt->grads_poisoned = 1; /* the step has not started: retry after zero_grad */
    return st;
  }
  /* the update adds them in rank order: the same bits on every rank */
  *sums = dp->sumsq;
  *n = opt->shard.size;
  return FO_SUCCESS;
}

fo_status fo_dp_gather_tensor_sums(const char *fn, fo_optimizer *opt, fo_stream_t stream) {
  int64_t *bytes = opt->dp->counts;
  for (int r = 0; r < opt->shard.size; r++)
    bytes[r] = opt->run.all_tensors * 2 * (int64_t)sizeof(double);
  return fo_comm_all_gather(fn, opt->dp->comm, opt->run.tensor_sums, bytes, stream);
}

fo_status fo_dp_gather_params(const char *fn, fo_optimizer *opt, fo_stream_t stream) {
  int64_t *bytes = opt->dp->counts;
  size_t ps = fo_role_elem_size(opt, FO_ROLE_PARAM);
  for (int r = 0; r < opt->shard.size; r++) {
    int64_t f, c;
    fo_shard_range(opt->total_elems, opt->shard.size, r, &f, &c);
    bytes[r] = c * (int64_t)ps;
  }
  return fo_comm_all_gather(fn, opt->dp->comm, opt->arena[FO_ROLE_PARAM], bytes, stream);
}
