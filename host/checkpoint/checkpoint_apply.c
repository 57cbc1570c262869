/*
 * checkpoint_apply.c -- applying a validated checkpoint: the list of
 * copies a valid file becomes (from the file's buffer into the
 * optimizer's buffers, or with a sharded state into its shard's slice),
 * and running it.  The hyper-parameters and the step state are the
 * caller's to set (checkpoint_load.c).
 */
#include <stdlib.h>

#include "checkpoint_fit.h"

/* ---------------------------------------------------------- the copies */

static fo_status add_copy(const char *fn, fo_ckpt_restore *out, void *dst, const unsigned char *src,
                          size_t bytes) {
  if (bytes == 0) return FO_SUCCESS;
  if (out->num_copies == out->cap_copies) {
    int64_t cap = out->cap_copies ? 2 * out->cap_copies : 64;
    fo_ckpt_copy *c = realloc(out->copies, (size_t)cap * sizeof *c);
    if (!c) return fo_fail(FO_ERR_OUT_OF_MEMORY, fn, "no memory for the copy list");
    out->copies = c;
    out->cap_copies = cap;
  }
  out->copies[out->num_copies++] = (fo_ckpt_copy){dst, src, bytes};
  return FO_SUCCESS;
}

fo_status fo_ckpt_add_copies(const char *fn, const fo_optimizer *opt, const fo_ckpt_entry *e,
                             const unsigned char *src, fo_ckpt_restore *out) {
  const fo_plan_tensor *t = &opt->tensors[e->tensor];
  size_t es = (size_t)fo_st_dtype_size(e->dtype);
  if (e->role == FO_ROLE_PARAM) return add_copy(fn, out, t->param, src, (size_t)e->numel * es);
  int64_t dlo = 0, dhi = t->numel; /* the tensor's elements this optimizer keeps */
  float *dst;
  if (opt->shard.on) {
    fo_ckpt_piece_of(opt, e->tensor, opt->shard.first, opt->shard.count, &dlo, &dhi);
    if (dhi == dlo) return FO_SUCCESS;
    dst = (float *)opt->arena[e->role] + (opt->offsets[e->tensor] + dlo - opt->shard.first);
  } else {
    dst = fo_ckpt_whole_state(t, e->role);
  }
  int64_t lo = dlo > e->first ? dlo : e->first;
  int64_t hi = dhi < e->first + e->numel ? dhi : e->first + e->numel;
  if (hi <= lo) return FO_SUCCESS;
  return add_copy(fn, out, dst + (lo - dlo), src + (size_t)(lo - e->first) * es,
                  (size_t)(hi - lo) * es);
}

void fo_ckpt_restore_free(fo_ckpt_restore *r) {
  free(r->copies);
  r->copies = NULL;
  r->num_copies = r->cap_copies = 0;
}

/* ------------------------------------------------------------ applying */

fo_status fo_ckpt_apply_tensors(const char *fn, fo_optimizer *opt, const fo_ckpt_restore *r,
                                int64_t stop_after) {
  for (int64_t k = 0; k < r->num_copies; k++) {
    if (stop_after >= 0 && k == stop_after)
      return fo_fail(FO_ERR_CUDA, fn,
                     "injected fault: copy %lld of the checkpoint's tensors failed", (long long)k);
    fo_status st = fo_exec_copy(fn, opt, r->copies[k].dst, r->copies[k].src, r->copies[k].bytes,
                                FO_COPY_FROM_HOST);
    if (st != FO_SUCCESS) return st;
  }
  return FO_SUCCESS;
}
