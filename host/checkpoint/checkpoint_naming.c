/*
 * checkpoint_naming.c -- which buffers a checkpoint holds, under which
 * names, in which order and where (the plan of fo_ckpt_plan_build), and
 * where each one lives in the optimizer.
 *
 * A tensor's buffers are named "<name><suffix>": its fo_tensor_desc.name
 * (or "tensor.<index>" when it had none) and the role's suffix
 * (checkpoint_schema.c).  Keys name the buffers in the file and match
 * them on load, so they must be unique and valid UTF-8.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint_format.h"
#include "checkpoint_schema.h"

float *fo_ckpt_whole_state(const fo_plan_tensor *t, fo_role r) {
  switch (r) {
    case FO_ROLE_MASTER: return t->master;
    case FO_ROLE_EXP_AVG: return t->exp_avg;
    case FO_ROLE_EXP_AVG_SQ: return t->exp_avg_sq;
    case FO_ROLE_MAX_EXP_AVG_SQ: return t->max_exp_avg_sq;
    default: return NULL;
  }
}

void fo_ckpt_piece_of(const fo_optimizer *opt, int64_t i, int64_t first, int64_t count, int64_t *lo,
                      int64_t *hi) {
  int64_t off = opt->offsets[i], n = opt->tensors[i].numel;
  int64_t a = off > first ? off : first, b = off + n < first + count ? off + n : first + count;
  *lo = a - off;
  *hi = b > a ? b - off : a - off;
}

const void *fo_ckpt_entry_src(const fo_optimizer *opt, const fo_ckpt_entry *e) {
  const fo_plan_tensor *t = &opt->tensors[e->tensor];
  if (e->role == FO_ROLE_PARAM) return t->param;
  if (!fo_ckpt_is_state_role(e->role)) return NULL;
  if (!opt->shard.on) {
    const float *base = fo_ckpt_whole_state(t, e->role);
    return base ? base + e->first : NULL;
  }
  int64_t at = opt->offsets[e->tensor] + e->first; /* in the arena */
  if (!opt->arena[e->role] || at < opt->shard.first ||
      at + e->numel > opt->shard.first + opt->shard.count)
    return NULL;
  return (const float *)opt->arena[e->role] + (at - opt->shard.first);
}

/* A tensor's name in the file: fo_tensor_desc.name, or "tensor.<index>"
 * when it had none (or an empty one). */
static const char *base_name(const fo_optimizer *opt, int64_t i, char tmp[32]) {
  if (opt->names[i] && opt->names[i][0]) return opt->names[i];
  snprintf(tmp, 32, "tensor.%lld", (long long)i);
  return tmp;
}

static int entry_dtype(const fo_optimizer *opt, fo_role r) {
  return r == FO_ROLE_PARAM ? fo_st_dtype_of(opt->options.param_dtype)
                            : fo_st_dtype_of(FO_DTYPE_F32);
}

static int entry_key_cmp(const void *x, const void *y) {
  const fo_ckpt_entry *a = *(const fo_ckpt_entry *const *)x, *b = *(const fo_ckpt_entry *const *)y;
  return strcmp(a->key, b->key);
}

/* Keys name the buffers in the file and match them on load, so two equal
 * keys (two tensors with one name, or a name that ends like a role) would
 * make a file whose meaning depends on order: refuse to write one. */
static fo_status check_keys_unique(const char *fn, const fo_ckpt_plan *p) {
  const fo_ckpt_entry **s = malloc((size_t)(p->n + 1) * sizeof *s);
  if (!s) return fo_fail(FO_ERR_OUT_OF_MEMORY, fn, "no memory for the tensor names");
  for (int64_t i = 0; i < p->n; i++) s[i] = &p->e[i];
  qsort(s, (size_t)p->n, sizeof *s, entry_key_cmp);
  fo_status st = FO_SUCCESS;
  for (int64_t i = 0; i < p->n && st == FO_SUCCESS; i++) {
    if (strcmp(s[i]->key, "__metadata__") == 0)
      st = fo_fail(FO_ERR_INVALID_STATE, fn,
                   "tensor %lld's checkpoint name \"__metadata__\" is reserved by safetensors",
                   (long long)s[i]->tensor);
    else if (i > 0 && strcmp(s[i - 1]->key, s[i]->key) == 0)
      st = fo_fail(FO_ERR_INVALID_STATE, fn,
                   "tensors %lld and %lld would both be saved as \"%.80s\": give the tensors "
                   "distinct names (fo_tensor_desc.name)",
                   (long long)s[i - 1]->tensor, (long long)s[i]->tensor, s[i]->key);
  }
  free(s);
  return st;
}

/* Every buffer, 4-byte dtypes first so that every fp32 tensor starts at a
 * multiple of 4 (the data section starts at a multiple of 8).  With a
 * shard: the parameters whole, and of the state only the pieces of the
 * tensors that reach into the shard. */
static int64_t plan_order(const fo_optimizer *opt, const fo_ckpt_shard *sh, fo_ckpt_entry *e) {
  int64_t n = 0;
  for (int pass = 0; pass < 2; pass++)
    for (int64_t i = 0; i < opt->num_tensors; i++)
      for (int r = 0; r < FO_ROLE_COUNT; r++) {
        if (!fo_ckpt_role_saved(opt, (fo_role)r)) continue;
        int dt = entry_dtype(opt, (fo_role)r);
        if ((fo_st_dtype_size(dt) == 4) != (pass == 0)) continue;
        int64_t lo = 0, hi = opt->tensors[i].numel;
        if (sh && r != FO_ROLE_PARAM) {
          fo_ckpt_piece_of(opt, i, sh->first, sh->count, &lo, &hi);
          if (hi == lo) continue;
        }
        if (e) e[n] = (fo_ckpt_entry){NULL, i, (fo_role)r, dt, lo, hi - lo, 0, 0, 0};
        n++;
      }
  return n;
}

static fo_status plan_names(const char *fn, const fo_optimizer *opt, fo_ckpt_plan *p) {
  size_t total = 0;
  char tmp[32];
  for (int64_t k = 0; k < p->n; k++) {
    const char *b = base_name(opt, p->e[k].tensor, tmp);
    if (!fo_json_utf8_valid(b, strlen(b)))
      return fo_fail(FO_ERR_INVALID_STATE, fn,
                     "tensor %lld's name is not valid UTF-8, which a checkpoint's JSON header "
                     "cannot hold",
                     (long long)p->e[k].tensor);
    total += strlen(b) + strlen(fo_ckpt_role_suffix(opt->options.algorithm, p->e[k].role)) + 1;
  }
  p->keys = malloc(total + 1);
  if (!p->keys) return fo_fail(FO_ERR_OUT_OF_MEMORY, fn, "no memory for the tensor names");
  char *at = p->keys;
  for (int64_t k = 0; k < p->n; k++) {
    const char *b = base_name(opt, p->e[k].tensor, tmp);
    const char *suffix = fo_ckpt_role_suffix(opt->options.algorithm, p->e[k].role);
    size_t nb = strlen(b), ns = strlen(suffix);
    memcpy(at, b, nb);
    memcpy(at + nb, suffix, ns + 1);
    p->e[k].key = at;
    at += nb + ns + 1;
  }
  return FO_SUCCESS;
}

fo_status fo_ckpt_plan_build_for(const char *fn, const fo_optimizer *opt,
                                 const fo_ckpt_shard *shard, fo_ckpt_plan *out) {
  fo_ckpt_plan p;
  memset(&p, 0, sizeof p);
  if (shard) {
    p.sharded = 1;
    p.shard = *shard;
  }
  p.n = plan_order(opt, shard, NULL);
  p.e = malloc((size_t)(p.n + 1) * sizeof *p.e);
  if (!p.e) return fo_fail(FO_ERR_OUT_OF_MEMORY, fn, "no memory for the checkpoint plan");
  plan_order(opt, shard, p.e);
  uint64_t at = 0;
  for (int64_t k = 0; k < p.n; k++) {
    p.e[k].bytes = (uint64_t)p.e[k].numel * (uint64_t)fo_st_dtype_size(p.e[k].dtype);
    p.e[k].begin = at;
    at += p.e[k].bytes;
  }
  p.data_len = at;
  fo_status st = plan_names(fn, opt, &p);
  if (st == FO_SUCCESS) st = check_keys_unique(fn, &p);
  if (st != FO_SUCCESS) {
    fo_ckpt_plan_free(&p);
    return st;
  }
  *out = p;
  return FO_SUCCESS;
}

fo_status fo_ckpt_plan_build(const char *fn, const fo_optimizer *opt, fo_ckpt_plan *out) {
  if (!opt->shard.on) return fo_ckpt_plan_build_for(fn, opt, NULL, out);
  fo_ckpt_shard own = {opt->shard.rank, opt->shard.size, opt->shard.first, opt->shard.count,
                       opt->total_elems};
  return fo_ckpt_plan_build_for(fn, opt, &own, out);
}

void fo_ckpt_plan_free(fo_ckpt_plan *p) {
  free(p->e);
  free(p->keys);
  memset(p, 0, sizeof *p);
}
