/*
 * checkpoint_fit.c -- whether a checkpoint fits an optimizer: everything
 * fo_ckpt_verify checks, then the structure (the fields of the schema that
 * must agree), the groups' hyper-parameters, the step state, the shard of
 * a per-rank file, and every tensor's name, dtype, shape, group and
 * checksum; fo_ckpt_validate, for one file.  Nothing here writes the
 * optimizer: what a valid file restores is decoded into an
 * fo_ckpt_restore, copies included (checkpoint_apply.c).
 */
#include "checkpoint_fit.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint_header.h"
#include "checkpoint_schema.h"

/* --------------------------------------------------- the file's structure */

static fo_status mismatch_int(const fo_meta_reader *r, const char *what, long long file,
                              long long opt) {
  return fo_fail(FO_ERR_CHECKPOINT, r->fn, "the checkpoint has %s = %lld; this optimizer has %lld",
                 what, file, opt);
}

/* Field f, just read into value (file: the options read so far over the
 * loader's), against the loader's own (own). */
static fo_status check_fit(const fo_meta_reader *r, const fo_optimizer *opt, const fo_ckpt_field *f,
                           const fo_options *file, const void *value, const void *own) {
  int64_t got = fo_ckpt_field_int(f, value), want = fo_ckpt_field_int(f, own);
  switch (f->use) {
    case FO_CKPT_FIT_ALGORITHM:
      if (got == want) return FO_SUCCESS;
      return fo_fail(FO_ERR_CHECKPOINT, r->fn,
                     "the checkpoint holds %s state; this optimizer runs %s", f->names[got],
                     f->names[want]);
    case FO_CKPT_FIT_PARAM_DTYPE:
      if (got == want) return FO_SUCCESS;
      return fo_fail(FO_ERR_CHECKPOINT, r->fn,
                     "the checkpoint's parameters are %s; this optimizer's are %s", f->names[got],
                     f->names[want]);
    case FO_CKPT_FIT_ROLES: {
      /* the algorithm agrees, so of the roles only the master weights can
       * differ here; the groups' hyper-parameters decide the others
       * (check_groups) */
      int master = fo_state_needed(file, opt->hparams, opt->num_groups).master;
      if (master == opt->keeps.master) return FO_SUCCESS;
      return fo_fail(
          FO_ERR_CHECKPOINT, r->fn, "the checkpoint %s fp32 master weights; this optimizer %s",
          opt->keeps.master ? "has no" : "has", opt->keeps.master ? "keeps them" : "keeps none");
    }
    case FO_CKPT_FIT_EQUAL: {
      const char *what = f->name; /* "stochastic_rounding", not "options.stochastic_rounding" */
      if (strncmp(what, "options.", 8) == 0) what += 8;
      return got == want ? FO_SUCCESS : mismatch_int(r, what, got, want);
    }
    default: return FO_SUCCESS;
  }
}

/* What must agree for the saved state to mean the same thing here (the
 * schema's FO_CKPT_FIT_* fields, in its order).  Everything else
 * (schedule, scaler constants, clipping, gradient dtype, executor,
 * storage) is the loading optimizer's own choice; the file records the
 * saver's. */
static fo_status check_structure(const fo_meta_reader *r, const fo_optimizer *opt) {
  fo_options file = opt->options;
  fo_ckpt_facts facts = {0, NULL, 0, 0}, own = {0, NULL, opt->num_groups, opt->num_tensors};
  for (int i = 0; i < fo_ckpt_num_fields; i++) {
    const fo_ckpt_field *f = &fo_ckpt_fields[i];
    if (!fo_ckpt_use_is_fit(f->use)) continue;
    int option = f->scope == FO_CKPT_OPTION;
    void *value = option ? (void *)&file : (void *)&facts;
    fo_status st = fo_ckpt_schema_read_field(r, f, 0, value);
    if (st == FO_SUCCESS)
      st = check_fit(r, opt, f, &file, value, option ? (const void *)&opt->options : &own);
    if (st != FO_SUCCESS) return st;
  }
  return FO_SUCCESS;
}

/* The groups' hyper-parameters, held to what fo_optimizer_set_hparams
 * accepts: valid values, and no state (momentum, AMSGrad) they need that
 * the optimizer has no buffer for (fo_state_needed).  The fields a file
 * does not hold keep the optimizer's own values. */
static fo_status check_groups(const fo_meta_reader *r, const fo_optimizer *opt, fo_hparams *out) {
  fo_algorithm alg = opt->options.algorithm;
  for (int g = 0; g < opt->num_groups; g++) {
    fo_hparams *h = &out[g];
    *h = opt->hparams[g];
    fo_status st = fo_ckpt_schema_read(r, FO_CKPT_GROUP, alg, g, h);
    if (st != FO_SUCCESS) return st;
    if (fo_validate_hparams(r->fn, alg, g, h) != FO_SUCCESS) {
      /* the validator's message without its "func: " prefix */
      char why[400];
      const char *msg = fo_last_error();
      size_t skip = strlen(r->fn) + 2;
      snprintf(why, sizeof why, "%s", strlen(msg) >= skip ? msg + skip : msg);
      return fo_fail(FO_ERR_CHECKPOINT, r->fn, "the checkpoint's hyper-parameters are invalid (%s)",
                     why);
    }
    fo_state_flags need = fo_state_needed(&opt->options, h, 1);
    if (need.exp_avg && !opt->keeps.exp_avg)
      return fo_fail(FO_ERR_CHECKPOINT, r->fn,
                     "group %d uses momentum in the checkpoint; this optimizer was created "
                     "without a momentum buffer",
                     g);
    if (need.max_exp_avg_sq && !opt->keeps.max_exp_avg_sq)
      return fo_fail(FO_ERR_CHECKPOINT, r->fn,
                     "group %d uses %s in the checkpoint; this optimizer was created "
                     "without its state",
                     g, alg == FO_ALG_RMSPROP ? "centering" : "AMSGrad");
  }
  return FO_SUCCESS;
}

/* The step state, and that the loss scaler can continue from it. */
static fo_status check_state(const fo_meta_reader *r, const fo_optimizer *opt, fo_step_state *s) {
  fo_algorithm alg = opt->options.algorithm;
  fo_status st = fo_ckpt_schema_read(r, FO_CKPT_STATE, alg, 0, s);
  for (int g = 0; g < opt->num_groups && st == FO_SUCCESS; g++) {
    st = fo_ckpt_schema_read(r, FO_CKPT_GROUP_STATE, alg, g, s);
    /* NAdam's product of momentum coefficients in (0, 1] ... 0 after
     * underflow: what the step can produce */
    if (st == FO_SUCCESS && alg == FO_ALG_NADAM && !fo_mu_product_valid(s->mu_product[g]))
      return fo_fail(FO_ERR_CHECKPOINT, r->fn,
                     "the checkpoint's group.%d.mu_product = %g is not in [0, 1]", g,
                     (double)s->mu_product[g]);
  }
  if (st != FO_SUCCESS) return st;
  /* Without loss scaling the scaler's fields stay as created, whatever the
   * file holds (a file of an optimizer that scaled its loss loads without
   * its scale); with it, the rule fo_optimizer_set_scaler_state applies */
  if (fo_scaler_fields_unused(&opt->options, s)) return FO_SUCCESS;
  return fo_check_scaler_fields(r->fn, FO_ERR_CHECKPOINT, "the checkpoint's",
                                &opt->options.loss_scaler, s->scale, s->growth_tracker,
                                s->hysteresis_left);
}

/* --------------------------------------------------------------- shards */

/* A version-2 file with "fusedopt.shard.size" is a per-rank file of a
 * sharded state: read its shard (*is_shard stays 0 for a whole one). */
static fo_status read_shard(const fo_meta_reader *r, int version, int *is_shard,
                            fo_ckpt_shard *sh) {
  *is_shard = 0;
  if (version < FO_CKPT_FORMAT_SHARD ||
      !fo_st_find_meta(r->f, FO_CKPT_SHARD_SIZE_KEY, strlen(FO_CKPT_SHARD_SIZE_KEY)))
    return FO_SUCCESS;
  fo_ckpt_shard s = {0, 0, 0, 0, 0};
  fo_status st = fo_ckpt_schema_read(r, FO_CKPT_SHARD, FO_ALG_COUNT, 0, &s);
  if (st != FO_SUCCESS) return st;
  *sh = s;
  *is_shard = 1;
  return FO_SUCCESS;
}

static fo_status shard_does_not_fit(const fo_meta_reader *r, const fo_optimizer *opt,
                                    const fo_ckpt_shard *sh) {
  if (!opt->shard.on)
    return fo_fail(FO_ERR_CHECKPOINT, r->fn,
                   "the checkpoint is rank %d's file of a state sharded over %d ranks; this "
                   "optimizer's state is not sharded: assemble every rank's file with "
                   "fo_optimizer_load_shards(), or load a gathered checkpoint "
                   "(fo_optimizer_save_gathered())",
                   sh->rank, sh->size);
  return fo_fail(FO_ERR_CHECKPOINT, r->fn,
                 "the checkpoint holds the shard of rank %d of %d (elements [%lld, +%lld) of "
                 "%lld); this optimizer is rank %d of %d (elements [%lld, +%lld) of %lld): "
                 "every rank loads its own rank's file (fo_optimizer_load_shards() takes "
                 "every rank's files of another sharding)",
                 sh->rank, sh->size, (long long)sh->first, (long long)sh->count,
                 (long long)sh->total, opt->shard.rank, opt->shard.size,
                 (long long)opt->shard.first, (long long)opt->shard.count,
                 (long long)opt->total_elems);
}

/* ------------------------------------------------------------- tensors */

/* A tensor stays in its group: its hyper-parameters, and the state they
 * shaped, are its group's.  Files without the record pass. */
static fo_status check_group_of(const fo_meta_reader *r, const fo_optimizer *opt,
                                const fo_ckpt_entry *e) {
  const fo_st_meta *m = NULL;
  fo_status st = fo_meta_find_per_tensor(r, FO_CKPT_GROUP_OF_PREFIX, e->key, strlen(e->key), &m);
  if (st != FO_SUCCESS || !m) return st;
  int64_t g = -1;
  if (!fo_parse_i64(m->value, m->value_len, &g) || g < 0 || g >= FO_MAX_GROUPS)
    return fo_meta_bad_value(r, m, "a group index");
  int want = opt->tensors[e->tensor].group;
  if (g != want)
    return fo_fail(FO_ERR_CHECKPOINT, r->fn,
                   "tensor \"%.80s\" is in parameter group %lld in the checkpoint, but the "
                   "registered tensor %lld is in group %d: a load does not move a tensor to "
                   "another group (register it in group %lld, or start from fresh state)",
                   e->key, (long long)g, (long long)e->tensor, want, (long long)g);
  return FO_SUCCESS;
}

static fo_status match_entry(const fo_meta_reader *r, const fo_optimizer *opt,
                             const fo_ckpt_plan *p, const fo_ckpt_entry *e,
                             const fo_st_tensor **out) {
  const fo_st_tensor *t = fo_st_find(r->f, e->key, strlen(e->key));
  if (!t)
    return fo_fail(
        FO_ERR_CHECKPOINT, r->fn, "the checkpoint has no tensor \"%.80s\" (tensor %lld's %s)",
        e->key, (long long)e->tensor,
        e->role == FO_ROLE_PARAM ? "parameters"
                                 : fo_ckpt_role_suffix(opt->options.algorithm, e->role) + 1);
  if (t->dtype != e->dtype)
    return fo_fail(FO_ERR_CHECKPOINT, r->fn,
                   "tensor \"%.80s\" has dtype %s in the checkpoint; this optimizer holds it as %s",
                   e->key, fo_st_dtype_name(t->dtype), fo_st_dtype_name(e->dtype));
  int piece = p->sharded && fo_ckpt_is_state_role(e->role);
  if (r->f->doc.values[t->shape_value].count != 1 || t->numel != e->numel) {
    char shape[96];
    fo_st_shape_string(r->f, t, shape, sizeof shape);
    if (piece)
      return fo_fail(FO_ERR_CHECKPOINT, r->fn,
                     "tensor \"%.80s\" has shape %s in the checkpoint; the shard's piece of the "
                     "registered tensor %lld has shape [%lld]",
                     e->key, shape, (long long)e->tensor, (long long)e->numel);
    return fo_fail(FO_ERR_CHECKPOINT, r->fn,
                   "tensor \"%.80s\" has shape %s in the checkpoint; the registered tensor %lld "
                   "has shape [%lld]",
                   e->key, shape, (long long)e->tensor, (long long)e->numel);
  }
  if (e->role == FO_ROLE_PARAM) {
    fo_status st = check_group_of(r, opt, e);
    if (st != FO_SUCCESS) return st;
  }
  if (piece) { /* a piece says where in its tensor it starts */
    const fo_st_meta *m = NULL;
    fo_status st = fo_meta_find_per_tensor(r, FO_CKPT_PIECE_PREFIX, e->key, strlen(e->key), &m);
    if (st != FO_SUCCESS) return st;
    int64_t v = -1;
    if (!m)
      return fo_fail(FO_ERR_CHECKPOINT, r->fn,
                     "the metadata lacks the first element of piece \"%.80s\"", e->key);
    if (!fo_parse_i64(m->value, m->value_len, &v))
      return fo_meta_bad_value(r, m, "a decimal integer");
    if (v != e->first)
      return fo_fail(FO_ERR_CHECKPOINT, r->fn,
                     "piece \"%.80s\" starts at element %lld of its tensor in the checkpoint; "
                     "the shard's piece starts at element %lld",
                     e->key, (long long)v, (long long)e->first);
  }
  *out = t;
  return FO_SUCCESS;
}

fo_status fo_ckpt_match_tensors(const fo_meta_reader *r, const fo_optimizer *opt, const fo_crc32 *c,
                                const fo_ckpt_plan *p, int take_params, uint32_t *param_crc,
                                fo_ckpt_restore *out) {
  const fo_st_tensor **found = calloc((size_t)p->n + 1, sizeof *found);
  fo_status st = FO_SUCCESS;
  if (!found) st = fo_fail(FO_ERR_OUT_OF_MEMORY, r->fn, "no memory for the tensor table");
  for (int64_t k = 0; k < p->n && st == FO_SUCCESS; k++)
    st = match_entry(r, opt, p, &p->e[k], &found[k]);
  if (st == FO_SUCCESS && r->f->num_tensors != p->n) {
    /* every expected tensor was found, so the file holds an extra one */
    char *seen = calloc((size_t)r->f->num_tensors + 1, 1);
    if (!seen) st = fo_fail(FO_ERR_OUT_OF_MEMORY, r->fn, "no memory for the tensor table");
    for (int64_t k = 0; k < p->n && seen; k++) seen[found[k] - r->f->tensors] = 1;
    for (int64_t i = 0; i < r->f->num_tensors && st == FO_SUCCESS; i++)
      if (!seen[i])
        st = fo_fail(FO_ERR_CHECKPOINT, r->fn,
                     "unexpected tensor \"%.80s\" in the checkpoint: this optimizer keeps no "
                     "such buffer%s",
                     r->f->tensors[i].name, p->sharded ? " in this shard" : "");
    free(seen);
  }
  for (int64_t k = 0; k < p->n && st == FO_SUCCESS; k++) {
    uint32_t crc = 0;
    st = fo_ckpt_check_tensor_crc(r, c, found[k], &crc);
    if (st == FO_SUCCESS && p->e[k].role == FO_ROLE_PARAM) {
      unsigned char le[4] = {(unsigned char)crc, (unsigned char)(crc >> 8),
                             (unsigned char)(crc >> 16), (unsigned char)(crc >> 24)};
      *param_crc = fo_crc32_update(c, *param_crc, le, 4);
    }
  }
  for (int64_t k = 0; k < p->n && st == FO_SUCCESS; k++)
    if (take_params || p->e[k].role != FO_ROLE_PARAM)
      st = fo_ckpt_add_copies(r->fn, opt, &p->e[k], r->f->data + found[k]->begin, out);
  free(found);
  return st;
}

/* ------------------------------------------------------------ one file */

uint32_t fo_ckpt_fingerprint(const fo_crc32 *c, uint32_t crc, const fo_ckpt_restore *r,
                             fo_algorithm alg, int groups) {
  crc = fo_ckpt_schema_fold(c, crc, FO_CKPT_STATE, alg, 0, &r->state);
  for (int g = 0; g < groups; g++) {
    crc = fo_ckpt_schema_fold(c, crc, FO_CKPT_GROUP, alg, g, &r->hparams[g]);
    crc = fo_ckpt_schema_fold(c, crc, FO_CKPT_GROUP_STATE, alg, g, &r->state);
  }
  return crc;
}

fo_status fo_ckpt_read_header(const fo_meta_reader *r, const fo_optimizer *opt,
                              fo_ckpt_restore *out) {
  fo_status st = check_structure(r, opt);
  if (st == FO_SUCCESS) st = check_groups(r, opt, out->hparams);
  if (st == FO_SUCCESS) st = check_state(r, opt, &out->state);
  if (st == FO_SUCCESS) st = read_shard(r, out->version, &out->sharded_file, &out->shard);
  return st;
}

static fo_status validate_file(const fo_meta_reader *r, const fo_optimizer *opt, const fo_crc32 *c,
                               fo_ckpt_restore *out) {
  fo_status st = fo_ckpt_read_header(r, opt, out);
  if (st != FO_SUCCESS) return st;
  const fo_ckpt_shard *sh = out->sharded_file ? &out->shard : NULL;
  if (sh && (!opt->shard.on || sh->rank != opt->shard.rank || sh->size != opt->shard.size ||
             sh->first != opt->shard.first || sh->count != opt->shard.count ||
             sh->total != opt->total_elems))
    return shard_does_not_fit(r, opt, sh);
  fo_ckpt_plan p;
  if ((st = fo_ckpt_plan_build_for(r->fn, opt, sh, &p)) != FO_SUCCESS) return st;
  uint32_t params = 0;
  st = fo_ckpt_match_tensors(r, opt, c, &p, 1, &params, out);
  fo_ckpt_plan_free(&p);
  if (st == FO_SUCCESS)
    out->fingerprint = fo_ckpt_fingerprint(c, params, out, opt->options.algorithm, opt->num_groups);
  return st;
}

fo_status fo_ckpt_validate(const char *fn, const fo_optimizer *opt, const unsigned char *buf,
                           size_t len, fo_ckpt_restore *out) {
  fo_ckpt_restore res;
  memset(&res, 0, sizeof res);
  fo_crc32 *c = malloc(sizeof *c);
  fo_status st = FO_SUCCESS;
  if (!c) st = fo_fail(FO_ERR_OUT_OF_MEMORY, fn, "no memory to read the checkpoint");
  if (st == FO_SUCCESS)
    st = fo_ckpt_check_header_bound(fn, opt, buf, len, fo_ckpt_header_bound(fn, opt));
  fo_st_file f;
  if (st == FO_SUCCESS) {
    fo_crc32_init(c);
    st = fo_ckpt_open(fn, buf, len, &f, c, &res.version);
  }
  if (st == FO_SUCCESS) {
    fo_meta_reader r = {fn, &f};
    st = validate_file(&r, opt, c, &res);
    fo_st_free(&f);
  }
  free(c);
  if (st != FO_SUCCESS) {
    fo_ckpt_restore_free(&res);
    return st;
  }
  *out = res;
  return FO_SUCCESS;
}
