/*
 * layout.c -- where an optimizer's state lives: which roles it keeps, the
 * tensors laid out in the role buffers (the arena), and the switch to a
 * sharded state.  The optimizer's buffers and plan are written here and in
 * optimizer.c only.
 */
#include <stdlib.h>
#include <string.h>

#include "exec.h"

#define FO_MAX_NUMEL ((int64_t)1 << 62)

size_t fo_role_elem_size(const fo_optimizer *opt, fo_role role) {
  if (role == FO_ROLE_PARAM) return fo_dtype_size(opt->options.param_dtype);
  if (role == FO_ROLE_GRAD) return fo_dtype_size(opt->options.grad_dtype);
  return sizeof(float);
}

int fo_role_kept(const fo_optimizer *opt, fo_role role) {
  switch (role) {
    case FO_ROLE_PARAM:
    case FO_ROLE_GRAD: return opt->options.storage == FO_STORAGE_ARENA;
    case FO_ROLE_MASTER: return opt->keeps.master;
    case FO_ROLE_EXP_AVG: return opt->keeps.exp_avg;
    case FO_ROLE_EXP_AVG_SQ: return opt->keeps.exp_avg_sq;
    case FO_ROLE_MAX_EXP_AVG_SQ: return opt->keeps.max_exp_avg_sq;
    default: return 0;
  }
}

/* Lay the tensors out in the role buffers and fill the plan's tensor
 * table with every role's pointer for each tensor. */
fo_status fo_layout_tensors(const char *fn, fo_optimizer *opt, const fo_tensor_desc *t) {
  int64_t total = 0;
  for (int64_t i = 0; i < opt->num_tensors; i++) {
    opt->offsets[i] = total;
    int64_t padded =
        (t[i].numel + FO_TENSOR_ALIGN_ELEMS - 1) / FO_TENSOR_ALIGN_ELEMS * FO_TENSOR_ALIGN_ELEMS;
    if (padded > FO_MAX_NUMEL - total)
      return fo_fail(FO_ERR_INVALID_ARGUMENT, fn,
                     "the tensors hold more than 2^62 elements in all");
    total += padded;
  }
  opt->total_elems = total;
  if ((uint64_t)total > SIZE_MAX / 4)
    return fo_fail(FO_ERR_OUT_OF_MEMORY, fn, "%lld elements do not fit in memory",
                   (long long)total);
  for (int r = 0; r < FO_ROLE_COUNT; r++) {
    if (!fo_role_kept(opt, (fo_role)r) || total == 0) continue;
    fo_status st =
        fo_exec_alloc(fn, opt, (size_t)total * fo_role_elem_size(opt, (fo_role)r), &opt->arena[r]);
    if (st != FO_SUCCESS) return st;
  }
  for (int64_t i = 0; i < opt->num_tensors; i++) {
    fo_plan_tensor *p = &opt->tensors[i];
    char *at[FO_ROLE_COUNT];
    for (int r = 0; r < FO_ROLE_COUNT; r++)
      at[r] = opt->arena[r] ? (char *)opt->arena[r] +
                                  (size_t)opt->offsets[i] * fo_role_elem_size(opt, (fo_role)r)
                            : NULL;
    int ext = opt->options.storage == FO_STORAGE_EXTERNAL;
    p->param = ext ? t[i].param : at[FO_ROLE_PARAM];
    p->grad = ext ? t[i].grad : at[FO_ROLE_GRAD];
    p->master = (float *)at[FO_ROLE_MASTER];
    p->exp_avg = (float *)at[FO_ROLE_EXP_AVG];
    p->exp_avg_sq = (float *)at[FO_ROLE_EXP_AVG_SQ];
    p->max_exp_avg_sq = (float *)at[FO_ROLE_MAX_EXP_AVG_SQ];
    p->numel = t[i].numel;
    p->index = i;
    p->group = t[i].group;
    uintptr_t bits = (uintptr_t)p->param | (uintptr_t)p->grad;
    p->vector_ok = (bits & 15u) == 0;
  }
  return FO_SUCCESS;
}

/* AdaGrad's sums start at their group's initial_accumulator_value, as
 * torch.optim.Adagrad fills them at construction: a fresh optimizer reads
 * them, a checkpoint before the first step holds them, and the update is
 * sum += d^2 at every step, whatever fo_optimizer_set_step does to the
 * count.  The arena is zero-filled, so only non-zero values are written,
 * through a host chunk (on CUDA, synchronous copies: create waits anyway). */
fo_status fo_layout_fill_initial_sums(const char *fn, fo_optimizer *opt) {
  enum { CHUNK = 1 << 18 }; /* floats: 1 MiB */
  if (opt->options.algorithm != FO_ALG_ADAGRAD) return FO_SUCCESS;
  float *chunk = NULL;
  float filled_with = 0.0f;
  fo_status st = FO_SUCCESS;
  for (int64_t i = 0; i < opt->num_tensors && st == FO_SUCCESS; i++) {
    const fo_plan_tensor *t = &opt->tensors[i];
    const float v = opt->hparams[t->group].initial_accumulator_value;
    if (v == 0.0f || t->numel == 0) continue;
    if (!chunk && !(chunk = malloc(CHUNK * sizeof *chunk)))
      return fo_fail(FO_ERR_OUT_OF_MEMORY, fn, "no memory to fill AdaGrad's sums");
    if (filled_with != v) {
      for (int k = 0; k < CHUNK; k++) chunk[k] = v;
      filled_with = v;
    }
    for (int64_t at = 0; at < t->numel && st == FO_SUCCESS; at += CHUNK) {
      int64_t n = t->numel - at < CHUNK ? t->numel - at : CHUNK;
      st = fo_exec_copy(fn, opt, t->exp_avg_sq + at, chunk, (size_t)n * sizeof *chunk,
                        FO_COPY_FROM_HOST);
    }
  }
  free(chunk);
  return st;
}

void fo_layout_adopt_shard(fo_optimizer *opt, const fo_shard_layout *shard,
                           void *const state[FO_ROLE_COUNT], fo_run_plan *run) {
  for (int r = FO_ROLE_MASTER; r < FO_ROLE_COUNT; r++) {
    if (!opt->arena[r]) continue;
    fo_exec_free(opt, opt->arena[r]);
    opt->arena[r] = state[r];
  }
  for (int64_t i = 0; i < opt->num_tensors; i++) {
    fo_plan_tensor *t = &opt->tensors[i]; /* no longer has a whole state */
    t->master = t->exp_avg = t->exp_avg_sq = t->max_exp_avg_sq = NULL;
  }
  fo_run_plan_free(opt, &opt->run);
  opt->run = *run;
  opt->shard = *shard;
}
