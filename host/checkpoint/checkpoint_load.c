/*
 * checkpoint_load.c -- the body of fo_optimizer_load and _load_shards.
 * A load reads the whole file (or files) into host memory and checks all
 * of it (checkpoint_fit.c, checkpoint_tiling.c) before it writes
 * anything: a bad file changes nothing.  On a sharded optimizer a load is
 * collective: the ranks agree that every one of them has a good file of
 * one save before any writes.  Only a failing copy into device memory
 * after that can leave the optimizer half-restored, and that marks it
 * faulted (docs/reliability.md).
 */
#include "checkpoint_load.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint_format.h"
#include "checkpoint_io.h"
#include "checkpoint_shard.h"
#include "exec.h"

/* Write a validated checkpoint into the optimizer.  Only a failing device
 * copy can stop this halfway; the optimizer is then marked faulted. */
static fo_status apply(const char *fn, fo_optimizer *opt, const fo_ckpt_restore *r) {
  int64_t stop = -1; /* no copy fails on purpose ... */
#ifdef FO_TESTING
  if (fo_fault_armed(opt, FO_FAULT_LOAD_APPLY)) stop = r->num_copies / 2; /* ... but in a test */
#endif
  fo_status st = fo_exec_synchronize(fn, opt); /* no step still writing */
  if (st == FO_SUCCESS) st = fo_ckpt_apply_tensors(fn, opt, r, stop);
  if (st == FO_SUCCESS) st = fo_exec_write_state(fn, opt, &r->state);
  if (st == FO_SUCCESS) st = fo_exec_synchronize(fn, opt);
  if (st != FO_SUCCESS) return fo_fault_after(fn, opt, FO_FAULT_NONE, st);
  fo_steps_left_reset(opt, &r->state);
  memcpy(opt->hparams, r->hparams, (size_t)opt->num_groups * sizeof *opt->hparams);
  opt->master_unset = 0; /* the master weights came from the file */
  fo_fault_clear(opt);
  return FO_SUCCESS;
}

/* A load's files in memory and what they restore (its copies point into
 * the files). */
typedef struct loaded {
  fo_ckpt_restore r;
  unsigned char **bufs;
  int n;
} loaded;

/* Read every file and check it against opt. */
static fo_status read_and_check(const char *fn, const fo_optimizer *opt, const char *const *paths,
                                int n, int shards, loaded *out) {
  if (!paths) return fo_fail(FO_ERR_NULL_POINTER, fn, "paths is NULL");
  if (n < 1) return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "n = %d: no files", n);
  for (int k = 0; k < n; k++) {
    char what[32] = "path";
    if (shards) snprintf(what, sizeof what, "paths[%d]", k);
    fo_status st = fo_ckpt_check_path(fn, what, paths[k]);
    if (st != FO_SUCCESS) return st;
  }
  unsigned char **bufs = calloc((size_t)n, sizeof *bufs);
  size_t *lens = calloc((size_t)n, sizeof *lens);
  fo_status st = FO_SUCCESS;
  out->bufs = bufs;
  out->n = n;
  if (!bufs || !lens) st = fo_fail(FO_ERR_OUT_OF_MEMORY, fn, "no memory for %d files", n);
  for (int k = 0; k < n && st == FO_SUCCESS; k++)
    st = fo_ckpt_read_file(fn, paths[k], &bufs[k], &lens[k]);
  if (st == FO_SUCCESS && !shards) {
    char where[240]; /* content errors name the file, as the OS's errors do */
    snprintf(where, sizeof where, "%s: \"%.200s\"", fn, paths[0]);
    st = fo_ckpt_validate(where, opt, bufs[0], lens[0], &out->r);
  } else if (st == FO_SUCCESS) {
    st = fo_ckpt_validate_shards(fn, opt, n, (const unsigned char *const *)bufs, lens, paths,
                                 &out->r);
  }
  free(lens);
  return st;
}

static void release(loaded *x) {
  for (int k = 0; x->bufs && k < x->n; k++) free(x->bufs[k]);
  free(x->bufs);
  fo_ckpt_restore_free(&x->r);
}

fo_status fo_ckpt_load(const char *fn, fo_optimizer *opt, const char *const *paths, int n,
                       int shards, fo_stream_t stream) {
  loaded x;
  memset(&x, 0, sizeof x);
  fo_status st = read_and_check(fn, opt, paths, n, shards, &x);
  if (opt->shard.on) st = fo_ckpt_agree(fn, opt, st, x.r.state.step, x.r.fingerprint, 1, stream);
  if (st == FO_SUCCESS) {
    st = apply(fn, opt, &x.r);
    if (opt->shard.on) {
      fo_status all = fo_ckpt_agree(fn, opt, st, 0, 0, 0, stream);
      if (all != FO_SUCCESS && st == FO_SUCCESS) fo_fault_after(fn, opt, FO_FAULT_NONE, all);
      st = all;
    }
  }
  release(&x);
  return st;
}
