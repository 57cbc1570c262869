/*
 * comm_shard.c -- a sharded optimizer state, ZeRO stage 1
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
  int64_t first, count;
  void *state[FO_ROLE_COUNT]; /* the shard's state buffers (state roles) */
  fo_plan_tensor *tensors;
  int64_t num_tensors;
  fo_plan_block *blocks;
  int64_t num_blocks;
  fo_plan_block *d_blocks;
  fo_plan_tensor *d_tensors;
  double *partials;
  double *sumsq;
} shard_build;

static int is_state_role(int r) {
  return r >= FO_ROLE_MASTER && r < FO_ROLE_COUNT;
}

static void build_free(const fo_optimizer *opt, shard_build *b) {
  for (int r = 0; r < FO_ROLE_COUNT; r++) fo_exec_free(opt, b->state[r]);
  fo_exec_free(opt, b->partials);
  fo_exec_free(opt, b->sumsq);
  if (b->d_blocks) fo_cuda_free(opt->options.device, b->d_blocks);
  if (b->d_tensors) fo_cuda_free(opt->options.device, b->d_tensors);
  free(b->tensors);
  free(b->blocks);
}

/* Shard-sized state buffers holding this rank's slice of the current
 * state. */
static fo_status build_state(const char *fn, const fo_optimizer *opt, shard_build *b) {
  size_t bytes = (size_t)b->count * sizeof(float);
  for (int r = 0; r < FO_ROLE_COUNT; r++) {
    if (!is_state_role(r) || !opt->arena[r]) continue;
    fo_status st = fo_exec_alloc(fn, opt, bytes, &b->state[r]);
    if (st != FO_SUCCESS) return st;
    if (bytes == 0) continue;
    const float *from = (const float *)opt->arena[r] + b->first;
    if (opt->options.executor == FO_EXEC_CUDA) {
      st = fo_cuda_copy(fn, opt->options.device, b->state[r], from, bytes);
      if (st != FO_SUCCESS) return st;
    } else {
      memcpy(b->state[r], from, bytes);
    }
  }
  return FO_SUCCESS;
}

/* The piece of tensor t (at element offset off of the arena) inside the
 * shard, with its state pointers in the shard's buffers. */
static fo_plan_tensor piece(const fo_optimizer *opt, const shard_build *b, const fo_plan_tensor *t,
                            int64_t off) {
  int64_t lo, hi;
  overlap(off, t->numel, b->first, b->count, &lo, &hi);
  size_t in = (size_t)(lo - off), at = (size_t)(lo - b->first);
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
  return t->numel > 0 && off < b->first + b->count && off + t->numel > b->first;
}

/* The step's tensor table and plan over the shard. */
static fo_status build_plan(const char *fn, const fo_optimizer *opt, shard_build *b) {
  int64_t n = 0;
  for (int64_t i = 0; i < opt->num_tensors; i++)
    n += in_shard(b, &opt->tensors[i], opt->offsets[i]);
  b->tensors = calloc((size_t)n + 1, sizeof *b->tensors);
  if (!b->tensors) return fo_fail(FO_ERR_OUT_OF_MEMORY, fn, "no memory for the shard's plan");
  for (int64_t i = 0; i < opt->num_tensors; i++)
    if (in_shard(b, &opt->tensors[i], opt->offsets[i]))
      b->tensors[b->num_tensors++] = piece(opt, b, &opt->tensors[i], opt->offsets[i]);
  b->num_blocks = fo_plan_count_blocks(b->tensors, b->num_tensors, opt->chunk);
  b->blocks = malloc((size_t)(b->num_blocks + 1) * sizeof *b->blocks);
  if (b->num_blocks < 0 || !b->blocks)
    return fo_fail(FO_ERR_OUT_OF_MEMORY, fn, "no memory for the shard's plan");
  fo_plan_fill_blocks(b->tensors, b->num_tensors, opt->chunk, b->blocks);
  if (opt->options.executor != FO_EXEC_CUDA) return FO_SUCCESS;
  int dev = opt->options.device;
  fo_status st = fo_cuda_upload(fn, dev, b->blocks, (size_t)b->num_blocks * sizeof *b->blocks,
                                (void **)&b->d_blocks);
  if (st != FO_SUCCESS) return st;
  return fo_cuda_upload(fn, dev, b->tensors, (size_t)b->num_tensors * sizeof *b->tensors,
                        (void **)&b->d_tensors);
}

static fo_status build(const char *fn, const fo_optimizer *opt, const fo_comm *comm,
                       shard_build *b) {
  fo_shard_range(opt->total_elems, comm->size, comm->rank, &b->first, &b->count);
  fo_status st = build_state(fn, opt, b);
  if (st == FO_SUCCESS) st = build_plan(fn, opt, b);
  if (st == FO_SUCCESS && opt->check_grads)
    st =
        fo_exec_alloc(fn, opt, (size_t)(b->num_blocks + 1) * sizeof(double), (void **)&b->partials);
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

/* Swap the shard in: the full state buffers and the full plan go. */
static void commit(fo_optimizer *opt, const fo_comm *comm, shard_build *b) {
  for (int r = 0; r < FO_ROLE_COUNT; r++) {
    if (!is_state_role(r) || !opt->arena[r]) continue;
    fo_exec_free(opt, opt->arena[r]);
    opt->arena[r] = b->state[r];
  }
  for (int64_t i = 0; i < opt->num_tensors; i++) {
    fo_plan_tensor *t = &opt->tensors[i]; /* no longer has a whole state */
    t->master = t->exp_avg = t->exp_avg_sq = t->max_exp_avg_sq = NULL;
  }
  if (opt->run_tensors != opt->tensors) free(opt->run_tensors);
  free(opt->blocks);
  fo_exec_free(opt, opt->partials);
  if (opt->d_blocks) fo_cuda_free(opt->options.device, opt->d_blocks);
  if (opt->d_tensors) fo_cuda_free(opt->options.device, opt->d_tensors);
  opt->run_tensors = b->tensors;
  opt->num_run_tensors = b->num_tensors;
  opt->blocks = b->blocks;
  opt->num_blocks = b->num_blocks;
  opt->d_blocks = b->d_blocks;
  opt->d_tensors = b->d_tensors;
  opt->partials = b->partials;
  opt->shard_sumsq = b->sumsq;
  opt->shard.on = 1;
  opt->shard.rank = comm->rank;
  opt->shard.size = comm->size;
  opt->shard.first = b->first;
  opt->shard.count = b->count;
}

fo_status fo_shard_attach(const char *fn, fo_optimizer *opt, fo_comm *comm) {
  fo_status st = check_shardable(fn, opt, comm);
  if (st != FO_SUCCESS) return st;
  /* the device may still run a step over the buffers about to go */
  if (opt->options.executor == FO_EXEC_CUDA) {
    st = fo_cuda_synchronize(opt->options.device);
    if (st != FO_SUCCESS) return st;
  }
  shard_build b;
  memset(&b, 0, sizeof b);
  st = build(fn, opt, comm, &b);
  /* the shard's copies (cudaMemcpy on the legacy stream) may still be in
   * flight: wait for them here rather than rely on commit's cudaFree to,
   * so a step on any stream (a non-blocking one too) sees the shard */
  if (st == FO_SUCCESS && opt->options.executor == FO_EXEC_CUDA)
    st = fo_cuda_synchronize(opt->options.device);
  if (st != FO_SUCCESS) {
    build_free(opt, &b);
    return st;
  }
  commit(opt, comm, &b);
  return FO_SUCCESS;
}

void fo_shard_free(fo_optimizer *opt) {
  if (opt->run_tensors != opt->tensors) free(opt->run_tensors);
  opt->run_tensors = opt->tensors;
  fo_exec_free(opt, opt->shard_sumsq);
  opt->shard_sumsq = NULL;
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

fo_status fo_dp_agree_sumsq(const char *fn, fo_optimizer *opt, double *total, fo_stream_t stream) {
  int64_t *bytes = opt->dp->counts;
  for (int r = 0; r < opt->shard.size; r++) bytes[r] = sizeof(double);
  if (total) opt->shard_sumsq[opt->shard.rank] = *total;
  fo_status st = fo_comm_all_gather(fn, opt->dp->comm, opt->shard_sumsq, bytes, stream);
  if (st != FO_SUCCESS) {
    opt->grads_poisoned = 1; /* the step has not started: retry after zero_grad */
    return st;
  }
  if (total) { /* host memory: add in rank order, the same on every rank */
    double sum = 0.0;
    for (int r = 0; r < opt->shard.size; r++) sum += opt->shard_sumsq[r];
    *total = sum;
  }
  return FO_SUCCESS;
}

fo_status fo_dp_after_step(const char *fn, fo_optimizer *opt, fo_stream_t stream) {
  if (!opt->shard.on) return FO_SUCCESS;
  /* every rank made the same skip decision; the device's is not known here */
  if (opt->options.executor == FO_EXEC_CPU && opt->state->skip) return FO_SUCCESS;
  int64_t *bytes = opt->dp->counts;
  size_t ps = fo_role_elem_size(opt, FO_ROLE_PARAM);
  for (int r = 0; r < opt->shard.size; r++) {
    int64_t f, c;
    fo_shard_range(opt->total_elems, opt->shard.size, r, &f, &c);
    bytes[r] = c * (int64_t)ps;
  }
  return fo_comm_all_gather(fn, opt->dp->comm, opt->arena[FO_ROLE_PARAM], bytes, stream);
}
