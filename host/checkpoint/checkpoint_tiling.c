/*
 * checkpoint_tiling.c -- assembling the per-rank files of one save of a
 * sharded state (fo_ckpt_validate_shards): every file is checked as
 * fo_ckpt_validate checks one, and together they must tile the arena in
 * rank order and hold one save (one step state, one set of
 * hyper-parameters, the same parameters).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint_fit.h"
#include "checkpoint_header.h"

/* One of the per-rank files being assembled. */
typedef struct shard_file {
  fo_st_file f;
  int open;
  fo_ckpt_restore head; /* its version, hyper-parameters, step state, shard */
  const char *path;
  char where[240]; /* "func: \"path\"": what its messages start with */
} shard_file;

/* The files' shards: one per rank of one sharding, tiling opt's arena in
 * rank order.  by_rank[r]: the file of rank r. */
static fo_status check_tiling(const fo_optimizer *opt, int n, const shard_file *sf, int *by_rank) {
  for (int r = 0; r < n; r++) by_rank[r] = -1;
  for (int k = 0; k < n; k++) {
    const fo_ckpt_shard *s = &sf[k].head.shard;
    if (s->size != n)
      return fo_fail(FO_ERR_CHECKPOINT, sf[k].where,
                     "the file is rank %d's of %d ranks, but %d files were given: pass every "
                     "rank's file of one save, once",
                     s->rank, s->size, n);
    if (by_rank[s->rank] >= 0)
      return fo_fail(FO_ERR_CHECKPOINT, sf[k].where,
                     "rank %d's shard, which \"%.200s\" holds too: pass every rank's file of "
                     "one save, once",
                     s->rank, sf[by_rank[s->rank]].path);
    by_rank[s->rank] = k;
  }
  int64_t next = 0; /* every rank's file is present: n of n distinct ranks */
  for (int r = 0; r < n; r++) {
    const shard_file *x = &sf[by_rank[r]];
    if (x->head.shard.total != opt->total_elems)
      return fo_fail(FO_ERR_CHECKPOINT, x->where,
                     "the shards cover an arena of %lld elements; this optimizer's holds %lld: "
                     "the tensors differ",
                     (long long)x->head.shard.total, (long long)opt->total_elems);
    if (x->head.shard.first != next)
      return fo_fail(FO_ERR_CHECKPOINT, x->where,
                     "rank %d's shard starts at element %lld, where rank %d's ended (%lld): "
                     "the files are not of one sharding",
                     r, (long long)x->head.shard.first, r - 1, (long long)next);
    next += x->head.shard.count;
  }
  if (next != opt->total_elems)
    return fo_fail(FO_ERR_CHECKPOINT, sf[by_rank[n - 1]].where,
                   "the last rank's shard ends at element %lld of %lld: the files are not of "
                   "one sharding",
                   (long long)next, (long long)opt->total_elems);
  return FO_SUCCESS;
}

/* Every file holds the step state and hyper-parameters of rank 0's file. */
static fo_status check_one_save(const fo_crc32 *c, const fo_optimizer *opt, int n,
                                const shard_file *sf, const int *by_rank) {
  const shard_file *a = &sf[by_rank[0]];
  uint32_t want = fo_ckpt_fingerprint(c, 0, &a->head, opt->options.algorithm, opt->num_groups);
  for (int r = 1; r < n; r++) {
    const shard_file *b = &sf[by_rank[r]];
    if (fo_ckpt_fingerprint(c, 0, &b->head, opt->options.algorithm, opt->num_groups) == want)
      continue;
    return fo_fail(FO_ERR_CHECKPOINT, b->where,
                   "rank %d's file holds step %lld, rank 0's (\"%.200s\") step %lld%s: the "
                   "files are not of one save",
                   r, (long long)b->head.state.step, a->path, (long long)a->head.state.step,
                   b->head.state.step == a->head.state.step
                       ? ", with another step state or other hyper-parameters"
                       : "");
  }
  return FO_SUCCESS;
}

static fo_status validate_shards(const fo_optimizer *opt, int n, const unsigned char *const *bufs,
                                 const size_t *lens, shard_file *sf, int *by_rank,
                                 const fo_crc32 *c, fo_ckpt_restore *out) {
  fo_status st = FO_SUCCESS;
  const uint64_t bound = fo_ckpt_header_bound(sf[0].where, opt);
  for (int k = 0; k < n && st == FO_SUCCESS; k++) {
    st = fo_ckpt_check_header_bound(sf[k].where, opt, bufs[k], lens[k], bound);
    if (st == FO_SUCCESS)
      st = fo_ckpt_open(sf[k].where, bufs[k], lens[k], &sf[k].f, c, &sf[k].head.version);
    if (st != FO_SUCCESS) break;
    sf[k].open = 1;
    fo_meta_reader r = {sf[k].where, &sf[k].f};
    st = fo_ckpt_read_header(&r, opt, &sf[k].head);
    if (st == FO_SUCCESS && !sf[k].head.sharded_file)
      st = fo_fail(FO_ERR_CHECKPOINT, sf[k].where,
                   "not a per-rank file of a sharded state: it holds the whole state "
                   "(load it with fo_optimizer_load())");
  }
  if (st == FO_SUCCESS) st = check_tiling(opt, n, sf, by_rank);
  if (st == FO_SUCCESS) st = check_one_save(c, opt, n, sf, by_rank);
  uint32_t params0 = 0;
  for (int r = 0; r < n && st == FO_SUCCESS; r++) {
    shard_file *x = &sf[by_rank[r]];
    fo_meta_reader rd = {x->where, &x->f};
    fo_ckpt_plan p;
    if ((st = fo_ckpt_plan_build_for(x->where, opt, &x->head.shard, &p)) != FO_SUCCESS) break;
    uint32_t params = 0; /* parameters from rank 0's file; the others' must equal them */
    st = fo_ckpt_match_tensors(&rd, opt, c, &p, r == 0, &params, out);
    fo_ckpt_plan_free(&p);
    if (r == 0) params0 = params;
    if (st == FO_SUCCESS && params != params0)
      st = fo_fail(FO_ERR_CHECKPOINT, x->where,
                   "rank %d's file holds other parameters than rank 0's (\"%.200s\"): the "
                   "files are not of one save",
                   r, sf[by_rank[0]].path);
  }
  if (st == FO_SUCCESS) {
    const fo_ckpt_restore *h = &sf[by_rank[0]].head;
    out->version = h->version;
    memcpy(out->hparams, h->hparams, sizeof out->hparams);
    out->state = h->state;
    out->sharded_file = 1;
    out->shard = h->shard;
    out->fingerprint =
        fo_ckpt_fingerprint(c, params0, out, opt->options.algorithm, opt->num_groups);
  }
  return st;
}

fo_status fo_ckpt_validate_shards(const char *fn, const fo_optimizer *opt, int n,
                                  const unsigned char *const *bufs, const size_t *lens,
                                  const char *const *paths, fo_ckpt_restore *out) {
  if (n < 1) return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "no files (n = %d)", n);
  fo_ckpt_restore res;
  memset(&res, 0, sizeof res);
  shard_file *sf = calloc((size_t)n, sizeof *sf);
  int *by_rank = calloc((size_t)n, sizeof *by_rank);
  fo_crc32 *c = malloc(sizeof *c);
  fo_status st = FO_SUCCESS;
  if (!sf || !by_rank || !c)
    st = fo_fail(FO_ERR_OUT_OF_MEMORY, fn, "no memory to read the checkpoints");
  if (st == FO_SUCCESS) {
    fo_crc32_init(c);
    for (int k = 0; k < n; k++) {
      sf[k].path = paths[k];
      snprintf(sf[k].where, sizeof sf[k].where, "%s: \"%.200s\"", fn, paths[k]);
    }
    st = validate_shards(opt, n, bufs, lens, sf, by_rank, c, &res);
  }
  for (int k = 0; sf && k < n; k++)
    if (sf[k].open) fo_st_free(&sf[k].f);
  free(sf);
  free(by_rank);
  free(c);
  if (st != FO_SUCCESS) {
    fo_ckpt_restore_free(&res);
    return st;
  }
  *out = res;
  return FO_SUCCESS;
}
