/*
 * checkpoint_gathered.c -- fo_optimizer_save_gathered's body: the
 * collective save of a communicator's ranks into one whole checkpoint on
 * the root.  A sharded state is gathered window by window
 * (checkpoint_shard.c); the root writes it as fo_optimizer_save would
 * write the same state unsharded, byte for byte.  The ranks agree on the
 * outcome after preparing, after the data and after the rename, so that
 * every rank returns the same status.
 */
#define _POSIX_C_SOURCE 200809L

#include "checkpoint_gathered.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checkpoint_io.h"
#include "checkpoint_save.h"
#include "checkpoint_shard.h"
#include "comm_internal.h"
#include "exec.h"

/* A state entry of a sharded optimizer, gathered window by window; the
 * root writes it.  A rank whose *local already failed keeps taking part
 * (so that no rank waits for it) without copying or writing; a failing
 * collective (*fatal) ends the save. */
static fo_status gather_entry(fo_ckpt_saver *s, fo_ckpt_gather *g, fo_ckpt_entry *e,
                              fo_status *local, int *fatal) {
  int64_t off = s->opt->offsets[e->tensor], cap = fo_ckpt_gather_cap(g);
  int writes = s->fd >= 0;
  e->crc = 0;
  for (int64_t at = 0; at < e->numel; at += cap) {
    int64_t n = e->numel - at < cap ? e->numel - at : cap;
    const void *piece = NULL;
    int ok = *local == FO_SUCCESS;
    fo_status st = fo_ckpt_gather_window(g, e->role, off + e->first + at, n, ok,
                                         writes && ok ? &piece : NULL, fatal);
    if (*fatal) return st;
    if (st != FO_SUCCESS && *local == FO_SUCCESS) *local = st;
    if (writes && *local == FO_SUCCESS)
      *local = fo_ckpt_save_piece(s, e, piece, (size_t)n * sizeof(float));
  }
  return FO_SUCCESS;
}

/* What a gathered save holds while it runs. */
typedef struct gathered {
  fo_ckpt_saver *s;
  fo_ckpt_plan plan;
  fo_step_state state;
  fo_ckpt_gather *g;
  char *tmp;
  int root, rank;
} gathered;

/* Before any data moves: on every rank the state, the plan and the
 * gathering's buffers; on the root the temporary file and its header. */
static fo_status gathered_prepare(gathered *x, const char *path, fo_stream_t stream) {
  fo_ckpt_saver *s = x->s;
  const fo_optimizer *opt = s->opt;
  int here = x->rank == x->root;
  fo_status st = here ? fo_ckpt_check_path(s->fn, "path", path) : FO_SUCCESS;
  if (st == FO_SUCCESS) st = fo_fault_check(s->fn, opt);
  if (st == FO_SUCCESS) st = fo_master_check(s->fn, opt);
  if (st == FO_SUCCESS) st = fo_ckpt_saved_state(s->fn, opt, &x->state);
  if (st == FO_SUCCESS) st = fo_ckpt_plan_build_for(s->fn, opt, NULL, &x->plan);
  if (st != FO_SUCCESS) return st;
  s->total = x->plan.data_len;
  if (here && !opt->exec->host_memory && !(s->staging = malloc(FO_CKPT_IO_CHUNK)))
    return fo_fail(FO_ERR_OUT_OF_MEMORY, s->fn, "no memory for the staging buffer");
  if (opt->shard.on &&
      (st = fo_ckpt_gather_open(s->fn, opt, stream, here, fo_ckpt_gather_window_size(), &x->g)) !=
          FO_SUCCESS)
    return st;
  if (!here) return FO_SUCCESS;
  if ((st = fo_ckpt_save_build_header(s, &x->state, &x->plan)) != FO_SUCCESS) return st;
  if ((st = fo_ckpt_open_temp(s->fn, path, &x->tmp, &s->fd)) != FO_SUCCESS) return st;
  s->tmp = x->tmp;
  s->path = path;
  fo_crc32_init(&s->crc);
  return fo_ckpt_save_header(s);
}

/* Every entry in the file's order: parameters from the root's own
 * memory, state gathered (sharded) or the root's own (not sharded).
 * Returns a failed collective; this rank's own failures go to *local. */
static fo_status gathered_data(gathered *x, fo_status *local) {
  fo_ckpt_saver *s = x->s;
  int here = x->rank == x->root;
  for (int64_t k = 0; k < x->plan.n; k++) {
    fo_ckpt_entry *e = &x->plan.e[k];
    if (x->g && e->role != FO_ROLE_PARAM) {
      int fatal = 0;
      fo_status st = gather_entry(s, x->g, e, local, &fatal);
      if (fatal) return st;
    } else if (here && *local == FO_SUCCESS) {
      *local = fo_ckpt_save_entry(s, e);
    }
  }
  if (here && *local == FO_SUCCESS) *local = fo_ckpt_save_finish(s, &x->state, &x->plan);
  if (s->fd >= 0 && close(s->fd) != 0 && *local == FO_SUCCESS)
    *local = fo_ckpt_tmp_fail(s->fn, "cannot close", s->path, x->tmp, errno);
  s->fd = -1;
  return FO_SUCCESS;
}

/* The collective save of a communicator's ranks (see the header). */
static fo_status save_gathered(gathered *x, const char *path, fo_stream_t stream) {
  fo_ckpt_saver *s = x->s;
  const fo_optimizer *opt = s->opt;
  fo_status local = gathered_prepare(x, path, stream);
  fo_status st = fo_ckpt_agree(s->fn, opt, local, 0, 0, 0, stream);
  if (st != FO_SUCCESS) return st;
  st = gathered_data(x, &local);
  if (st != FO_SUCCESS) return st; /* a collective failed: no agreement is possible */
  st = fo_ckpt_agree(s->fn, opt, local, 0, 0, 0, stream);
  if (st != FO_SUCCESS) return st;
  if (x->rank == x->root) {
    local = fo_ckpt_commit(s->fn, x->tmp, path);
    free(x->tmp); /* renamed, or removed by commit_file */
    x->tmp = NULL;
  }
  return fo_ckpt_agree(s->fn, opt, local, 0, 0, 0, stream);
}

fo_status fo_ckpt_save_gathered(const char *fn, const fo_optimizer *opt, const char *path, int root,
                                fo_stream_t stream) {
  fo_status st = fo_check_process(fn, opt, 0);
  if (st == FO_SUCCESS) st = fo_exec_check_stream(fn, opt, stream);
  if (st != FO_SUCCESS) return st;
  int rank, size;
  fo_ckpt_comm_shape(opt, &rank, &size);
  if (root < 0 || root >= size)
    return fo_fail(FO_ERR_INVALID_ARGUMENT, fn,
                   "root = %d is not a rank of the communicator (%d rank%s)", root, size,
                   size == 1 ? "" : "s");
  if (!opt->dp) { /* one process: an ordinary save */
    st = fo_ckpt_check_path(fn, "path", path);
    if (st == FO_SUCCESS) st = fo_fault_check(fn, opt);
    if (st == FO_SUCCESS) st = fo_master_check(fn, opt);
    return st == FO_SUCCESS ? fo_ckpt_save_file(fn, opt, path) : st;
  }
  /* the ranks agree on the outcome through all_gather: refused before any
   * communication (the ranks of one program pass the same ops) */
  if (opt->dp->comm->kind == FO_COMM_HOST && !opt->dp->comm->ops.all_gather)
    return fo_fail(FO_ERR_UNSUPPORTED, fn,
                   "the host communicator has no all_gather op, through which the ranks agree "
                   "on the save's outcome; save on one rank with fo_optimizer_save()");
  gathered x;
  memset(&x, 0, sizeof x);
  x.root = root;
  x.rank = rank;
  if (!(x.s = calloc(1, sizeof *x.s))) st = fo_fail(FO_ERR_OUT_OF_MEMORY, fn, "no memory to save");
  if (x.s) {
    x.s->fn = fn;
    x.s->opt = opt;
    x.s->fd = -1;
    st = save_gathered(&x, path, stream);
    if (x.s->fd >= 0) close(x.s->fd);
    free(x.s->staging);
    free(x.s->hdr);
  } else { /* still take part, so that no rank waits for this one */
    st = fo_ckpt_agree(fn, opt, st, 0, 0, 0, stream);
  }
  if (x.tmp) unlink(x.tmp); /* not renamed: the old checkpoint, if any, is untouched */
  free(x.tmp);
  fo_ckpt_gather_close(x.g);
  fo_ckpt_plan_free(&x.plan);
  free(x.s);
  return st;
}
