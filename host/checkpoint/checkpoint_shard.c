/*
 * checkpoint_shard.c -- the collective side of checkpoints
 * (docs/reliability.md, "A sharded state"):
 *
 *   - agreement: a collective save or load ends with every rank knowing
 *     every rank's outcome (one all-gather of a small record per rank),
 *     so that all of them return the same status and message, and a load
 *     is applied on every rank or on none;
 *   - gathering: a gathered save of a sharded state moves each state
 *     buffer through a bounded window, each rank copying in the part of
 *     its shard and the window being all-gathered in place (the parts of
 *     the shards are consecutive, in rank order, since the shards tile
 *     the arena that way).
 *
 * The communicator's collectives run on host memory (a host communicator)
 * or device memory enqueued on a stream (NCCL); this file stages through
 * the optimizer's executor memory either way.
 */
#include "checkpoint_shard.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm_internal.h"
#include "exec.h"

/* One gathered window: 4 Mi elements, 16 MiB of fp32, as the I/O chunk. */
#define GATHER_WINDOW_DEFAULT ((int64_t)4 << 20)

#ifdef FO_TESTING
/* The test suite's window (0: the default); the shipped library has no
 * such setting. */
static _Atomic int64_t test_window;

void fo_ckpt_set_gather_window(int64_t elems) {
  test_window = elems > 0 ? elems : 0;
}
#endif

int64_t fo_ckpt_gather_window_size(void) {
#ifdef FO_TESTING
  if (test_window > 0) return test_window;
#endif
  return GATHER_WINDOW_DEFAULT;
}

void fo_ckpt_comm_shape(const fo_optimizer *opt, int *rank, int *size) {
  const fo_comm *c = opt->dp ? opt->dp->comm : NULL;
  *rank = c ? c->rank : 0;
  *size = c ? c->size : 1;
}

/* The state is in device memory: the host reaches it through copies. */
static int on_device(const fo_optimizer *opt) {
  return !opt->exec->host_memory;
}

/* ------------------------------------------------------------ agreement */

#define VOTE_MSG 496

/* What each rank tells the others; 512 bytes, no padding. */
typedef struct vote {
  int32_t status;
  uint32_t fingerprint;
  int64_t step;
  char msg[VOTE_MSG];
} vote;

/* In place over executor memory: all-gather the records of every rank. */
static fo_status exchange(const char *fn, const fo_optimizer *opt, vote *all, fo_stream_t stream) {
  fo_comm *c = opt->dp->comm;
  int64_t *bytes = malloc((size_t)c->size * sizeof *bytes);
  if (!bytes) return fo_fail(FO_ERR_OUT_OF_MEMORY, fn, "no memory to agree with the other ranks");
  for (int r = 0; r < c->size; r++) bytes[r] = (int64_t)sizeof(vote);
  size_t total = (size_t)c->size * sizeof(vote);
  fo_status st;
  if (!on_device(opt)) {
    st = fo_comm_all_gather(fn, c, all, bytes, NULL);
  } else {
    void *dev = NULL;
    st = fo_exec_alloc(fn, opt, total, &dev);
    /* the copy has landed when it returns (exec.h), so the collective on
     * another stream reads it */
    if (st == FO_SUCCESS)
      st = fo_exec_copy(fn, opt, (vote *)dev + c->rank, all + c->rank, sizeof(vote),
                        FO_COPY_FROM_HOST);
    if (st == FO_SUCCESS) st = fo_comm_all_gather(fn, c, dev, bytes, stream);
    if (st == FO_SUCCESS) st = fo_exec_synchronize(fn, opt);
    if (st == FO_SUCCESS) st = fo_exec_copy(fn, opt, all, dev, total, FO_COPY_TO_HOST);
    fo_exec_free(opt, dev);
  }
  free(bytes);
  return st;
}

/* msg without a leading "fn: ". */
static const char *unprefixed(const char *fn, const char *msg) {
  size_t n = strlen(fn);
  return strncmp(msg, fn, n) == 0 && msg[n] == ':' && msg[n + 1] == ' ' ? msg + n + 2 : msg;
}

fo_status fo_ckpt_agree(const char *fn, const fo_optimizer *opt, fo_status local, int64_t step,
                        uint32_t fingerprint, int compare, fo_stream_t stream) {
  const fo_comm *c = opt->dp->comm;
  vote *all = calloc((size_t)c->size, sizeof *all);
  if (!all) return fo_fail(FO_ERR_OUT_OF_MEMORY, fn, "no memory to agree with the other ranks");
  vote *mine = &all[c->rank];
  mine->status = (int32_t)local;
  mine->step = step;
  mine->fingerprint = fingerprint;
  if (local != FO_SUCCESS) snprintf(mine->msg, VOTE_MSG, "%s", unprefixed(fn, fo_last_error()));
  fo_status st = exchange(fn, opt, all, stream);
  if (st != FO_SUCCESS) {
    free(all);
    return st;
  }
  for (int r = 0; r < c->size && st == FO_SUCCESS; r++) {
    int32_t s = all[r].status;
    if (s == FO_SUCCESS) continue;
    all[r].msg[VOTE_MSG - 1] = '\0';
    st = fo_fail(s > 0 && s < FO_STATUS_COUNT ? (fo_status)s : FO_ERR_INTERNAL, fn,
                 "rank %d of %d: %s", r, c->size, all[r].msg);
  }
  for (int r = 1; r < c->size && st == FO_SUCCESS && compare; r++) {
    if (all[r].fingerprint == all[0].fingerprint && all[r].step == all[0].step) continue;
    st = fo_fail(FO_ERR_CHECKPOINT, fn,
                 "the ranks loaded different saves: rank %d's checkpoint holds step %lld, rank "
                 "0's step %lld%s; nothing was loaded",
                 r, (long long)all[r].step, (long long)all[0].step,
                 all[r].step == all[0].step
                     ? " (with other parameters, hyper-parameters or step state)"
                     : "");
  }
  free(all);
  return st;
}

/* ------------------------------------------------------------ gathering */

struct fo_ckpt_gather {
  const char *fn;
  const fo_optimizer *opt;
  fo_stream_t stream;
  int64_t cap;
  void *window;        /* cap floats of executor memory */
  unsigned char *host; /* CUDA with want_host: cap floats of host memory */
  int64_t *bytes;      /* per rank */
};

fo_status fo_ckpt_gather_open(const char *fn, const fo_optimizer *opt, fo_stream_t stream,
                              int want_host, int64_t window, fo_ckpt_gather **out) {
  fo_ckpt_gather *g = calloc(1, sizeof *g);
  if (!g) return fo_fail(FO_ERR_OUT_OF_MEMORY, fn, "no memory to gather the state");
  g->fn = fn;
  g->opt = opt;
  g->stream = stream;
  g->cap = window > 0 ? window : GATHER_WINDOW_DEFAULT;
  fo_status st = fo_exec_alloc(fn, opt, (size_t)g->cap * sizeof(float), &g->window);
  g->bytes = malloc((size_t)opt->dp->comm->size * sizeof *g->bytes);
  if (st == FO_SUCCESS && !g->bytes)
    st = fo_fail(FO_ERR_OUT_OF_MEMORY, fn, "no memory to gather the state");
  if (st == FO_SUCCESS && want_host && on_device(opt) &&
      !(g->host = malloc((size_t)g->cap * sizeof(float))))
    st = fo_fail(FO_ERR_OUT_OF_MEMORY, fn, "no memory for the gathering's staging buffer");
  if (st != FO_SUCCESS) {
    fo_ckpt_gather_close(g);
    return st;
  }
  *out = g;
  return FO_SUCCESS;
}

void fo_ckpt_gather_close(fo_ckpt_gather *g) {
  if (!g) return;
  fo_exec_free(g->opt, g->window);
  free(g->host);
  free(g->bytes);
  free(g);
}

int64_t fo_ckpt_gather_cap(const fo_ckpt_gather *g) {
  return g->cap;
}

fo_status fo_ckpt_gather_window(fo_ckpt_gather *g, fo_role role, int64_t at, int64_t n, int copy_in,
                                const void **host, int *fatal) {
  const fo_optimizer *opt = g->opt;
  fo_comm *c = opt->dp->comm;
  for (int r = 0; r < c->size; r++) { /* rank r's part: the window within its shard */
    int64_t f, k;
    fo_shard_range(opt->total_elems, c->size, r, &f, &k);
    int64_t lo = at > f ? at : f, hi = at + n < f + k ? at + n : f + k;
    g->bytes[r] = hi > lo ? (hi - lo) * (int64_t)sizeof(float) : 0;
  }
  int64_t lo = at > opt->shard.first ? at : opt->shard.first;
  size_t own = (size_t)g->bytes[c->rank];
  float *dst = (float *)g->window + (lo - at);
  const float *src = (const float *)opt->arena[role] + (lo - opt->shard.first);
  fo_status local = FO_SUCCESS;
  int device = on_device(opt);
  /* a copy within device memory may return before it is done: wait, so
   * the collective on another stream reads it */
  if (copy_in && own > 0) local = fo_exec_copy(g->fn, opt, dst, src, own, FO_COPY_WITHIN);
  if (local == FO_SUCCESS) local = fo_exec_synchronize(g->fn, opt);
  fo_status st = fo_comm_all_gather(g->fn, c, g->window, g->bytes, g->stream);
  *fatal = st != FO_SUCCESS;
  if (st != FO_SUCCESS) return st;
  if (!device) {
    if (host) *host = g->window;
    return local;
  }
  /* the next window's copy must not overwrite this one under NCCL's feet */
  st = fo_exec_synchronize(g->fn, opt);
  if (st == FO_SUCCESS && host && local == FO_SUCCESS)
    st = fo_exec_copy(g->fn, opt, g->host, g->window, (size_t)n * sizeof(float), FO_COPY_TO_HOST);
  if (host) *host = g->host;
  return local != FO_SUCCESS ? local : st;
}
