/*
 * checkpoint_schema.c -- the table of what a checkpoint holds, and the
 * writing, reading and folding of its fields (checkpoint_schema.h).
 */
#include "checkpoint_schema.h"

#include <stdio.h>
#include <string.h>

/* Enums are stored and read through int. */
_Static_assert(sizeof(fo_algorithm) == sizeof(int) && sizeof(fo_dtype) == sizeof(int) &&
                   sizeof(fo_executor) == sizeof(int) && sizeof(fo_storage) == sizeof(int) &&
                   sizeof(fo_schedule_kind) == sizeof(int),
               "checkpoint enums are read and written as int");
_Static_assert(sizeof(int32_t) == sizeof(int), "FO_CKPT_INT fields are int or int32_t");

static const char *const dtype_names[FO_DTYPE_COUNT] = {"f32", "f16", "bf16"};
static const char *const exec_names[FO_EXEC_COUNT] = {"cpu", "cuda"};
static const char *const storage_names[FO_STORAGE_COUNT] = {"external", "arena"};
static const char *const sched_names[FO_SCHED_COUNT] = {"constant",    "cosine",          "step",
                                                        "exponential", "cosine_restarts", "cyclic"};

/* The bounds of a shard's fields, from those read before them. */
static int64_t last_rank(const void *v) {
  return (int64_t)((const fo_ckpt_shard *)v)->size - 1;
}
static int64_t shard_total(const void *v) {
  return ((const fo_ckpt_shard *)v)->total;
}
static int64_t shard_rest(const void *v) {
  const fo_ckpt_shard *s = v;
  return s->total - s->first;
}

/* clang-format off */
/* A row; the columns a row leaves out are 0 or NULL. */
#define ROW(name_, scope_, type_, st, member, use_, ...) \
  {.name = name_, .scope = scope_, .type = type_, .offset = offsetof(st, member), .use = use_, __VA_ARGS__}
/* Shorthands of the columns that repeat. */
#define FILE_(name, type, member, use, ...) ROW(name, FO_CKPT_FILE, type, fo_ckpt_facts, member, use, __VA_ARGS__)
#define OPT(name, type, member) ROW(name, FO_CKPT_OPTION, type, fo_options, member, FO_CKPT_RECORDED, .lo = 0)
#define OPT_FIT(name, member, use) ROW(name, FO_CKPT_OPTION, FO_CKPT_INT, fo_options, member, use, .hi = 1)
#define NAMED(name, member, use, names_) \
  ROW(name, FO_CKPT_OPTION, FO_CKPT_NAME, fo_options, member, use, .names = names_, \
      .num_names = (int)(sizeof names_ / sizeof names_[0]))
#define GROUP(type, member, hi_) ROW(#member, FO_CKPT_GROUP, type, fo_hparams, member, FO_CKPT_RESTORED, .hi = hi_)
#define STATE(name, type, member, hi_) ROW(name, FO_CKPT_STATE, type, fo_step_state, member, FO_CKPT_RESTORED, .hi = hi_)
#define SHARD(name, type, member, ...) ROW(name, FO_CKPT_SHARD, type, fo_ckpt_shard, member, FO_CKPT_RESTORED, __VA_ARGS__)
/* Fields of some algorithms only (fo_ckpt_field.algs). */
#define ALG(a) (1u << (unsigned)FO_ALG_##a)
#define GROUP_OF(type, member, hi_, algs_) ROW(#member, FO_CKPT_GROUP, type, fo_hparams, member, FO_CKPT_RESTORED, .hi = hi_, .algs = algs_)
#define GROUP_STATE(type, member, algs_) \
  ROW(#member, FO_CKPT_GROUP_STATE, type, fo_step_state, member, FO_CKPT_RESTORED, .algs = algs_, \
      .stride = sizeof(((fo_step_state *)0)->member[0]))

const fo_ckpt_field fo_ckpt_fields[] = {
    /* the file: its format first (a newer one may change what follows) */
    FILE_("format_version", FO_CKPT_INT, format_version, FO_CKPT_VERSION, .lo = 1),
    FILE_("library_version", FO_CKPT_TEXT, library_version, FO_CKPT_RECORDED, .lo = 0),
    /* what must agree for the saved state to mean the same thing in the
     * loader: the update rule, the parameters' dtype, which buffers exist,
     * whether the scale in the step state is a loss scale, the groups and
     * the tensors */
    NAMED("algorithm", algorithm, FO_CKPT_FIT_ALGORITHM, fo_algorithm_names),
    NAMED("options.param_dtype", param_dtype, FO_CKPT_FIT_PARAM_DTYPE, dtype_names),
    OPT_FIT("options.master_weights", master_weights, FO_CKPT_FIT_ROLES),
    OPT_FIT("options.stochastic_rounding", stochastic_rounding, FO_CKPT_FIT_EQUAL),
    OPT_FIT("options.loss_scaler.enabled", loss_scaler.enabled, FO_CKPT_FIT_EQUAL),
    FILE_("num_groups", FO_CKPT_INT, num_groups, FO_CKPT_FIT_EQUAL, .lo = 1, .hi = FO_MAX_GROUPS),
    FILE_("num_tensors", FO_CKPT_I64, num_tensors, FO_CKPT_FIT_EQUAL, .hi = INT64_MAX),
    /* the saver's other options: the loader's own apply (schedule, scaler
     * constants, clipping, gradient dtype, executor, storage) */
    NAMED("executor", executor, FO_CKPT_RECORDED, exec_names),
    NAMED("storage", storage, FO_CKPT_RECORDED, storage_names),
    NAMED("options.grad_dtype", grad_dtype, FO_CKPT_RECORDED, dtype_names),
    OPT("options.seed", FO_CKPT_U64, seed),
    OPT("options.max_grad_norm", FO_CKPT_F32, max_grad_norm),
    OPT("options.write_unscaled_grads", FO_CKPT_INT, write_unscaled_grads),
    OPT("options.loss_scaler.init_scale", FO_CKPT_F32, loss_scaler.init_scale),
    OPT("options.loss_scaler.growth_factor", FO_CKPT_F32, loss_scaler.growth_factor),
    OPT("options.loss_scaler.backoff_factor", FO_CKPT_F32, loss_scaler.backoff_factor),
    OPT("options.loss_scaler.growth_interval", FO_CKPT_INT, loss_scaler.growth_interval),
    OPT("options.loss_scaler.max_scale", FO_CKPT_F32, loss_scaler.max_scale),
    OPT("options.loss_scaler.hysteresis", FO_CKPT_INT, loss_scaler.hysteresis),
    NAMED("options.schedule.kind", schedule.kind, FO_CKPT_RECORDED, sched_names),
    OPT("options.schedule.warmup_steps", FO_CKPT_I64, schedule.warmup_steps),
    OPT("options.schedule.total_steps", FO_CKPT_I64, schedule.total_steps),
    OPT("options.schedule.step_size", FO_CKPT_I64, schedule.step_size),
    OPT("options.schedule.period", FO_CKPT_I64, schedule.period),
    OPT("options.schedule.period_mult", FO_CKPT_I64, schedule.period_mult),
    OPT("options.schedule.gamma", FO_CKPT_F32, schedule.gamma),
    OPT("options.schedule.min_ratio", FO_CKPT_F32, schedule.min_ratio),
    /* each group's hyper-parameters */
    GROUP(FO_CKPT_F32, lr, 0),
    GROUP(FO_CKPT_F32, weight_decay, 0),
    GROUP(FO_CKPT_F32, momentum, 0),
    GROUP(FO_CKPT_F32, dampening, 0),
    GROUP(FO_CKPT_INT, nesterov, 1),
    GROUP(FO_CKPT_F32, beta1, 0),
    GROUP(FO_CKPT_F32, beta2, 0),
    GROUP(FO_CKPT_F32, eps, 0),
    GROUP(FO_CKPT_INT, amsgrad, 1),
    GROUP(FO_CKPT_INT, maximize, 1),
    GROUP_OF(FO_CKPT_F32, lr_decay, 0, ALG(ADAGRAD)),
    GROUP_OF(FO_CKPT_F32, initial_accumulator_value, 0, ALG(ADAGRAD)),
    GROUP_OF(FO_CKPT_F32, alpha, 0, ALG(RMSPROP)),
    GROUP_OF(FO_CKPT_INT, centered, 1, ALG(RMSPROP)),
    GROUP_OF(FO_CKPT_F32, momentum_decay, 0, ALG(NADAM)),
    GROUP_OF(FO_CKPT_INT, decoupled_weight_decay, 1, ALG(NADAM)),
    GROUP_OF(FO_CKPT_F32, trust_coef, 0, ALG(LARS)),
    GROUP_OF(FO_CKPT_INT, layer_adaptation, 1, ALG(LAMB) | ALG(LARS)),
    /* each group's part of the step state: NAdam's running product of its
     * momentum coefficients (PyTorch's state "mu_product") */
    GROUP_STATE(FO_CKPT_F32, mu_product, ALG(NADAM)),
    /* the step state (FO_MAX_STEP, as fo_optimizer_set_step: a larger count
     * would overflow) */
    STATE("state.step", FO_CKPT_I64, step, FO_MAX_STEP),
    STATE("state.skipped", FO_CKPT_I64, skipped, FO_MAX_STEP),
    STATE("state.scale", FO_CKPT_F32, scale, 0),
    STATE("state.growth_tracker", FO_CKPT_INT, growth_tracker, INT32_MAX),
    STATE("state.hysteresis_left", FO_CKPT_INT, hysteresis_left, INT32_MAX),
    STATE("state.last_step_skipped", FO_CKPT_INT, skip, 1),
    STATE("state.grad_norm", FO_CKPT_F32, grad_norm, 0),
    STATE("state.grad_coef", FO_CKPT_F32, grad_coef, 0),
    STATE("state.lr_factor", FO_CKPT_F32, lr_factor, 0),
    /* a per-rank file's shard: elements [first, first + count) of total,
     * rank rank of size */
    SHARD("shard.size", FO_CKPT_INT, size, .lo = 1, .hi = INT32_MAX),
    SHARD("shard.rank", FO_CKPT_INT, rank, .hi_of = last_rank),
    SHARD("shard.total", FO_CKPT_I64, total, .hi = (int64_t)1 << 62),
    SHARD("shard.first", FO_CKPT_I64, first, .hi_of = shard_total),
    SHARD("shard.count", FO_CKPT_I64, count, .hi_of = shard_rest),
};
/* clang-format on */
const int fo_ckpt_num_fields = (int)(sizeof fo_ckpt_fields / sizeof fo_ckpt_fields[0]);

/* ------------------------------------------------------------ the codec */

static const void *at(const void *value, const fo_ckpt_field *f) {
  return (const char *)value + f->offset;
}

/* Group g's element of a per-group field. */
static const void *at_group(const void *value, const fo_ckpt_field *f, int g) {
  return (const char *)at(value, f) + (size_t)g * f->stride;
}

int64_t fo_ckpt_field_int(const fo_ckpt_field *f, const void *value) {
  const void *p = at(value, f);
  switch (f->type) {
    case FO_CKPT_INT:
    case FO_CKPT_NAME: return *(const int *)p;
    case FO_CKPT_I64: return *(const int64_t *)p;
    case FO_CKPT_U64: return (int64_t) * (const uint64_t *)p;
    default: return 0;
  }
}

/* "group.<g>.<name>" in a group, else the name. */
static const char *key_of(const fo_ckpt_field *f, int g, char k[96]) {
  if (f->scope != FO_CKPT_GROUP && f->scope != FO_CKPT_GROUP_STATE) return f->name;
  snprintf(k, 96, "group.%d.%s", g, f->name);
  return k;
}

void fo_ckpt_schema_write(fo_meta_list *l, fo_ckpt_scope scope, fo_algorithm alg, int g,
                          const void *value) {
  for (int i = 0; i < fo_ckpt_num_fields; i++) {
    const fo_ckpt_field *f = &fo_ckpt_fields[i];
    if (f->scope != scope || !fo_ckpt_field_held(f, alg)) continue;
    const void *p = at_group(value, f, g);
    char k[96], s[32];
    const char *v = s;
    switch (f->type) {
      case FO_CKPT_INT: snprintf(s, sizeof s, "%d", *(const int *)p); break;
      case FO_CKPT_I64: snprintf(s, sizeof s, "%lld", (long long)*(const int64_t *)p); break;
      case FO_CKPT_U64:
        snprintf(s, sizeof s, "%llu", (unsigned long long)*(const uint64_t *)p);
        break;
      case FO_CKPT_F32: fo_format_hex_float(*(const float *)p, s); break;
      case FO_CKPT_NAME: v = f->names[*(const int *)p]; break;
      case FO_CKPT_TEXT: v = *(const char *const *)p; break;
    }
    fo_meta_put(l, key_of(f, g, k), v);
  }
}

fo_status fo_ckpt_schema_read_field(const fo_meta_reader *r, const fo_ckpt_field *f, int g,
                                    void *value) {
  char k[96];
  const char *key = key_of(f, g, k);
  void *p = (char *)value + f->offset + (size_t)g * f->stride;
  int64_t v = 0, hi = f->hi_of ? f->hi_of(value) : f->hi;
  fo_status st;
  switch (f->type) {
    case FO_CKPT_F32: return fo_meta_get_float(r, key, p);
    case FO_CKPT_NAME: return fo_meta_get_enum(r, key, f->names, f->num_names, p);
    case FO_CKPT_INT:
      st = fo_meta_get_int(r, key, f->lo, hi, &v);
      if (st == FO_SUCCESS) *(int *)p = (int)v;
      return st;
    case FO_CKPT_I64:
      st = fo_meta_get_int(r, key, f->lo, hi, &v);
      if (st == FO_SUCCESS) *(int64_t *)p = v;
      return st;
    default: /* written only */
      return fo_fail(FO_ERR_INTERNAL, r->fn, "metadata \"%s\" is not read", key);
  }
}

fo_status fo_ckpt_schema_read(const fo_meta_reader *r, fo_ckpt_scope scope, fo_algorithm alg, int g,
                              void *value) {
  fo_status st = FO_SUCCESS;
  for (int i = 0; i < fo_ckpt_num_fields && st == FO_SUCCESS; i++) {
    const fo_ckpt_field *f = &fo_ckpt_fields[i];
    if (f->scope == scope && f->use == FO_CKPT_RESTORED && fo_ckpt_field_held(f, alg))
      st = fo_ckpt_schema_read_field(r, f, g, value);
  }
  return st;
}

uint32_t fo_ckpt_schema_fold(const fo_crc32 *c, uint32_t crc, fo_ckpt_scope scope, fo_algorithm alg,
                             int g, const void *value) {
  for (int i = 0; i < fo_ckpt_num_fields; i++) {
    const fo_ckpt_field *f = &fo_ckpt_fields[i];
    if (f->scope != scope || f->use != FO_CKPT_RESTORED || !fo_ckpt_field_held(f, alg)) continue;
    size_t n = f->type == FO_CKPT_I64 || f->type == FO_CKPT_U64 ? 8 : 4;
    crc = fo_crc32_update(c, crc, at_group(value, f, g), n);
  }
  return crc;
}

/* ----------------------------------------------------------------- roles */

int fo_ckpt_role_saved(const fo_optimizer *opt, fo_role role) {
  return role == FO_ROLE_PARAM || (fo_ckpt_is_state_role(role) && fo_role_kept(opt, role));
}

const char *fo_ckpt_role_suffix(fo_algorithm alg, fo_role role) {
  const char *s = fo_algorithm_state_suffix(alg, role);
  return s ? s : "";
}
