/*
 * checkpoint_header_write.c -- the JSON header a save writes: the
 * metadata of the schema (checkpoint_schema.c) for the optimizer, its step
 * state and the plan, each tensor's checksum and place, and the checksum
 * over the metadata itself.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint_format.h"
#include "checkpoint_header.h"
#include "checkpoint_schema.h"

/* The per-tensor metadata (checkpoint_schema.h): "<prefix><tensor key>"
 * for every entry of the plan it is kept for. */
typedef enum per_tensor { PER_TENSOR_CRC, PER_TENSOR_GROUP, PER_TENSOR_PIECE_FIRST } per_tensor;

static const struct {
  const char *prefix;
  per_tensor what;
} per_tensor_keys[] = {
    {FO_CKPT_CRC_PREFIX, PER_TENSOR_CRC},           /* every buffer */
    {FO_CKPT_GROUP_OF_PREFIX, PER_TENSOR_GROUP},    /* the parameters */
    {FO_CKPT_PIECE_PREFIX, PER_TENSOR_PIECE_FIRST}, /* a per-rank file's state pieces */
};

static void meta_per_tensor(fo_meta_list *l, const fo_optimizer *opt, const fo_ckpt_plan *p,
                            const char *prefix, per_tensor what) {
  fo_sbuf key = {0};
  for (int64_t k = 0; k < p->n; k++) {
    const fo_ckpt_entry *e = &p->e[k];
    if (what == PER_TENSOR_PIECE_FIRST && (!p->sharded || !fo_ckpt_is_state_role(e->role)))
      continue;
    if (what == PER_TENSOR_GROUP && e->role != FO_ROLE_PARAM) continue;
    char v[32];
    key.len = 0;
    fo_sb_str(&key, prefix);
    fo_sb_str(&key, e->key);
    if (what == PER_TENSOR_PIECE_FIRST)
      snprintf(v, sizeof v, "%lld", (long long)e->first);
    else if (what == PER_TENSOR_GROUP)
      snprintf(v, sizeof v, "%d", opt->tensors[e->tensor].group);
    else
      snprintf(v, sizeof v, "%08x", (unsigned)e->crc);
    if (key.failed)
      l->text.failed = 1;
    else
      fo_meta_add(l, key.p, key.len, v);
  }
  free(key.p);
}

/* All metadata of a save, sorted, with its own CRC. */
static int build_meta(const fo_optimizer *opt, const fo_step_state *state, const fo_ckpt_plan *plan,
                      fo_meta_list *l) {
  fo_ckpt_facts facts = {plan->sharded ? FO_CKPT_FORMAT_SHARD : FO_CKPT_FORMAT_WHOLE,
                         fo_version_string(), opt->num_groups, opt->num_tensors};
  fo_algorithm alg = opt->options.algorithm;
  fo_ckpt_schema_write(l, FO_CKPT_FILE, alg, 0, &facts);
  fo_ckpt_schema_write(l, FO_CKPT_OPTION, alg, 0, &opt->options);
  for (int g = 0; g < opt->num_groups; g++) {
    fo_ckpt_schema_write(l, FO_CKPT_GROUP, alg, g, &opt->hparams[g]);
    fo_ckpt_schema_write(l, FO_CKPT_GROUP_STATE, alg, g, state);
  }
  fo_ckpt_schema_write(l, FO_CKPT_STATE, alg, 0, state);
  if (plan->sharded) fo_ckpt_schema_write(l, FO_CKPT_SHARD, alg, 0, &plan->shard);
  for (size_t i = 0; i < sizeof per_tensor_keys / sizeof per_tensor_keys[0]; i++)
    meta_per_tensor(l, opt, plan, per_tensor_keys[i].prefix, per_tensor_keys[i].what);
  if (!fo_meta_finish(l)) return 0;
  fo_crc32 c;
  fo_crc32_init(&c);
  char v[16];
  snprintf(v, sizeof v, "%08x", (unsigned)fo_meta_crc(&c, l->sorted, l->n));
  fo_meta_add(l, FO_META_CRC_KEY, strlen(FO_META_CRC_KEY), v);
  return fo_meta_finish(l);
}

static void header_json(fo_sbuf *b, const fo_meta_list *l, const fo_ckpt_plan *p) {
  fo_sb_str(b, "{\"__metadata__\":{");
  for (int64_t i = 0; i < l->n; i++) {
    if (i) fo_sb_str(b, ",");
    fo_sb_json(b, l->sorted[i].key, l->sorted[i].key_len);
    fo_sb_str(b, ":");
    fo_sb_json(b, l->sorted[i].value, l->sorted[i].value_len);
  }
  fo_sb_str(b, "}");
  for (int64_t k = 0; k < p->n; k++) {
    const fo_ckpt_entry *e = &p->e[k];
    fo_sb_str(b, ",");
    fo_sb_json(b, e->key, strlen(e->key));
    fo_sb_printf(b, ":{\"dtype\":\"%s\",\"shape\":[%llu],\"data_offsets\":[%llu,%llu]}",
                 fo_st_dtype_name(e->dtype),
                 (unsigned long long)(e->bytes / (uint64_t)fo_st_dtype_size(e->dtype)),
                 (unsigned long long)e->begin, (unsigned long long)(e->begin + e->bytes));
  }
  fo_sb_str(b, "}");
  while ((8 + b->len) % 8 != 0) fo_sb_str(b, " ");
}

fo_status fo_ckpt_header_text(const char *fn, const fo_optimizer *opt, const fo_step_state *state,
                              const fo_ckpt_plan *plan, char **text, size_t *len) {
  fo_meta_list l;
  memset(&l, 0, sizeof l);
  fo_sbuf b = {0};
  if (build_meta(opt, state, plan, &l)) header_json(&b, &l, plan);
  int ok = !l.text.failed && l.sorted && !b.failed;
  fo_meta_free(&l);
  if (!ok) {
    free(b.p);
    return fo_fail(FO_ERR_OUT_OF_MEMORY, fn, "no memory for the checkpoint header");
  }
  *text = b.p;
  *len = b.len;
  return FO_SUCCESS;
}

fo_status fo_ckpt_header(const char *fn, const fo_optimizer *opt, const fo_step_state *state,
                         const fo_ckpt_plan *plan, char **text, size_t *len) {
  fo_sbuf b = {0};
  fo_status st = fo_ckpt_header_text(fn, opt, state, plan, &b.p, &b.len);
  if (st != FO_SUCCESS) return st;
  /* The reader's limit is the writer's: a file it would refuse is never
   * written (the savers build the header before they create the file). */
  if ((uint64_t)b.len > FO_ST_MAX_HEADER) {
    free(b.p);
    return fo_fail(FO_ERR_INVALID_STATE, fn,
                   "the checkpoint's header would be %zu bytes, more than the %llu that "
                   "safetensors readers (this one included) accept: too many tensors, or names "
                   "too long, for one checkpoint; nothing was written",
                   b.len, (unsigned long long)FO_ST_MAX_HEADER);
  }
  *text = b.p;
  *len = b.len;
  return FO_SUCCESS;
}
