/*
 * checkpoint_format.c -- fusedopt's layer of the checkpoint format: the
 * tensor names, the "fusedopt.*" metadata, the header a save writes, and
 * the checks a load makes before it writes anything.
 *
 * Numbers in the metadata are strings (safetensors metadata maps strings
 * to strings).  Integers are plain decimal.  Floats are hexadecimal
 * ("0x1.99999ap-4", as C's "%a" and Python's float.hex() write them, or
 * "inf", "-inf", "nan", "-nan"): exact, and formatted and parsed here without the
 * C library, whose "%a" and strtod follow the caller's locale.
 */
#include "checkpoint_format.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The fuzz build (tests/fuzz) accepts a checksum mismatch, as fuzzing
 * builds customarily do, so that mutated values reach the checks behind
 * the checksums; tests/test_checkpoint_errors.c covers the mismatch. */
#ifdef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
#define CRC_DIFFERS(got, want) ((void)(got), (void)(want), 0)
#else
#define CRC_DIFFERS(got, want) ((got) != (want))
#endif

#define META_PREFIX "fusedopt."
#define META_CRC_KEY "fusedopt.metadata_crc32"
#define META_VERSION_KEY "fusedopt.format_version"
#define TENSOR_CRC_PREFIX "fusedopt.crc32."
/* Each tensor's parameter group, under its parameters' key; a load refuses
 * to move a tensor to another group.  Files written before it was
 * recorded load without the check. */
#define GROUP_OF_PREFIX "fusedopt.group_of."
/* A per-rank file (version 2): its shard, and each state piece's first
 * element in its tensor. */
#define SHARD_SIZE_KEY "fusedopt.shard.size"
#define PIECE_OFFSET_PREFIX "fusedopt.shard.offset."

static const char *const alg_names[FO_ALG_COUNT] = {"sgd", "adam", "adamw", "lion"};
static const char *const dtype_names[FO_DTYPE_COUNT] = {"f32", "f16", "bf16"};
static const char *const exec_names[FO_EXEC_COUNT] = {"cpu", "cuda"};
static const char *const storage_names[FO_STORAGE_COUNT] = {"external", "arena"};
static const char *const sched_names[FO_SCHED_COUNT] = {"constant",    "cosine",          "step",
                                                        "exponential", "cosine_restarts", "cyclic"};

/* ------------------------------------------------------- string buffer */

typedef struct sbuf {
  char *p;
  size_t len, cap;
  int failed; /* an allocation failed: everything after is dropped */
} sbuf;

static void sb_put(sbuf *b, const void *s, size_t n) {
  if (b->failed) return;
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + n + 1) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
      b->failed = 1;
      return;
    }
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = '\0';
}

static void sb_str(sbuf *b, const char *s) {
  sb_put(b, s, strlen(s));
}

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static void
sb_printf(sbuf *b, const char *fmt, ...) {
  char tmp[160]; /* only numbers and short fixed words come through here */
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (n < 0 || (size_t)n >= sizeof tmp)
    b->failed = 1;
  else
    sb_put(b, tmp, (size_t)n);
}

/* s as a JSON string literal.  Names were checked to be UTF-8, so only
 * the quote, the backslash and control characters need escapes. */
static void sb_json(sbuf *b, const char *s, size_t n) {
  sb_put(b, "\"", 1);
  size_t run = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c >= 0x20 && c != '"' && c != '\\') continue;
    sb_put(b, s + run, i - run);
    if (c == '"' || c == '\\') {
      char e[2] = {'\\', (char)c};
      sb_put(b, e, 2);
    } else {
      sb_printf(b, "\\u%04x", c);
    }
    run = i + 1;
  }
  sb_put(b, s + run, n - run);
  sb_put(b, "\"", 1);
}

/* ------------------------------------------------------- number formats */

/* A float as "[-]0x1.hhhhhhp[+-]d" (trailing zero digits dropped), the
 * form C99's "%a" and Python's float.hex() use, or [-]inf, [-]nan. */
static void format_float(float f, char out[32]) {
  uint32_t b = fo_f32_bits(f), e = (b >> 23) & 0xFFu, m = b & 0x7FFFFFu;
  char *o = out;
  if (b >> 31) *o++ = '-';
  if (e == 0xFF || (e == 0 && m == 0)) { /* a NaN keeps its sign, not its payload */
    strcpy(o, e == 0xFF ? (m ? "nan" : "inf") : "0x0p+0");
    return;
  }
  int exp = (int)e - 127;
  uint32_t mant = m | 0x800000u;
  if (e == 0) { /* subnormal: normalize, as float.hex does for the double */
    exp = -126;
    mant = m;
    while (!(mant & 0x800000u)) {
      mant <<= 1;
      exp--;
    }
  }
  uint32_t frac = (mant & 0x7FFFFFu) << 1; /* 24 bits: six hex digits */
  char digits[8];
  int nd = 6;
  for (int i = 5; i >= 0; i--, frac >>= 4) digits[i] = "0123456789abcdef"[frac & 15u];
  while (nd > 0 && digits[nd - 1] == '0') nd--;
  digits[nd] = '\0';
  snprintf(o, 24, "0x1%s%sp%+d", nd ? "." : "", digits, exp);
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* A decimal int64: optional '-', digits, no leading zeros, no '+'. */
static int parse_i64(const char *s, size_t n, int64_t *out) {
  size_t i = 0;
  int neg = n > 0 && s[0] == '-';
  i = (size_t)neg;
  if (i == n || (s[i] == '0' && n - i > 1) || (neg && s[i] == '0')) return 0;
  uint64_t v = 0, limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
  for (; i < n; i++) {
    if (s[i] < '0' || s[i] > '9') return 0;
    unsigned d = (unsigned)(s[i] - '0');
    if (v > (limit - d) / 10) return 0;
    v = v * 10 + d;
  }
  *out = neg ? (int64_t)(0 - v) : (int64_t)v;
  return 1;
}

/* The exponent part "p[+-]digits" of a hex float, bounded so the sum with
 * the mantissa's scale cannot overflow an int. */
static int parse_hex_exponent(const char *s, size_t n, size_t *i, int *exp) {
  if (*i >= n || (s[*i] != 'p' && s[*i] != 'P')) return 0;
  (*i)++;
  int sign = 1;
  if (*i < n && (s[*i] == '+' || s[*i] == '-')) sign = s[(*i)++] == '-' ? -1 : 1;
  if (*i >= n) return 0;
  int e = 0;
  for (; *i < n; (*i)++) {
    if (s[*i] < '0' || s[*i] > '9' || e > 100000) return 0;
    e = e * 10 + (s[*i] - '0');
  }
  *exp = sign * e;
  return 1;
}

/* A hex float that is exactly a float32 ("0x1.8p+1", "-0x0p+0", any
 * number of digits as long as the value is exact), or [-]inf, [-]nan. */
static int parse_float(const char *s, size_t n, float *out) {
  size_t i = 0;
  int neg = n > 0 && s[0] == '-';
  i = (size_t)neg;
  if (n - i == 3 && memcmp(s + i, "inf", 3) == 0) {
    *out = neg ? -INFINITY : INFINITY;
    return 1;
  }
  if (n - i == 3 && memcmp(s + i, "nan", 3) == 0) {
    *out = neg ? -NAN : NAN;
    return 1;
  }
  if (n - i < 2 || s[i] != '0' || (s[i + 1] != 'x' && s[i + 1] != 'X')) return 0;
  i += 2;
  uint64_t mant = 0;
  int scale = 0, digits = 0, point = 0;
  for (; i < n && (hexval(s[i]) >= 0 || (s[i] == '.' && !point)); i++) {
    if (s[i] == '.') {
      point = 1;
      continue;
    }
    digits++;
    if (mant >> 49) return 0; /* more than 53 significant bits: not a float */
    mant = mant * 16 + (uint64_t)hexval(s[i]);
    if (point) scale -= 4;
  }
  int exp;
  if (digits == 0 || !parse_hex_exponent(s, n, &i, &exp)) return 0;
  double d = ldexp((double)mant, scale + exp); /* exact while in double's range */
  float f = (float)d;
  if (isinf(d) || (double)f != d || (mant != 0 && d == 0.0)) return 0;
  *out = neg ? -f : f;
  return 1;
}

/* -------------------------------------------------------- metadata list */

/* Metadata being written: keys and values in one buffer (offsets, since
 * the buffer moves while it grows), then sorted pointers. */
typedef struct meta_list {
  sbuf text;
  size_t *off; /* key offset, value offset, per entry */
  int64_t n, cap;
  fo_st_meta *sorted;
} meta_list;

static void meta_add(meta_list *l, const char *key, size_t key_len, const char *value) {
  if (l->text.failed) return;
  if (l->n == l->cap) {
    int64_t cap = l->cap ? 2 * l->cap : 128;
    size_t *p = realloc(l->off, (size_t)cap * 2 * sizeof *p);
    if (!p) {
      l->text.failed = 1;
      return;
    }
    l->off = p;
    l->cap = cap;
  }
  l->off[2 * l->n] = l->text.len;
  sb_put(&l->text, key, key_len);
  sb_put(&l->text, "", 1);
  l->off[2 * l->n + 1] = l->text.len;
  sb_str(&l->text, value);
  sb_put(&l->text, "", 1);
  l->n++;
}

static void meta_str(meta_list *l, const char *key, const char *value) {
  char k[96];
  snprintf(k, sizeof k, META_PREFIX "%s", key);
  meta_add(l, k, strlen(k), value);
}

static void meta_int(meta_list *l, const char *key, long long v) {
  char s[32];
  snprintf(s, sizeof s, "%lld", v);
  meta_str(l, key, s);
}

static void meta_float(meta_list *l, const char *key, float v) {
  char s[32];
  format_float(v, s);
  meta_str(l, key, s);
}

static int meta_cmp(const void *x, const void *y) {
  const fo_st_meta *a = x, *b = y;
  int c = memcmp(a->key, b->key, a->key_len < b->key_len ? a->key_len : b->key_len);
  if (c) return c;
  return (a->key_len > b->key_len) - (a->key_len < b->key_len);
}

/* Sort once the text no longer moves. */
static int meta_finish(meta_list *l) {
  if (l->text.failed) return 0;
  l->sorted = malloc((size_t)(l->n + 1) * sizeof *l->sorted);
  if (!l->sorted) return 0;
  for (int64_t i = 0; i < l->n; i++) {
    const char *k = l->text.p + l->off[2 * i], *v = l->text.p + l->off[2 * i + 1];
    l->sorted[i] = (fo_st_meta){k, v, l->off[2 * i + 1] - l->off[2 * i] - 1, strlen(v)};
  }
  qsort(l->sorted, (size_t)l->n, sizeof *l->sorted, meta_cmp);
  return 1;
}

static void meta_free(meta_list *l) {
  free(l->text.p);
  free(l->off);
  free(l->sorted);
}

/* The CRC over every "fusedopt.*" entry but itself, in key order, each as
 * key NUL value NUL: Python recomputes it with zlib.crc32 (reliability.md).
 * Other keys are left out so tools may add metadata of their own. */
static uint32_t meta_crc(const fo_crc32 *c, const fo_st_meta *m, int64_t n) {
  uint32_t crc = 0;
  size_t plen = strlen(META_PREFIX);
  for (int64_t i = 0; i < n; i++) {
    if (m[i].key_len < plen || memcmp(m[i].key, META_PREFIX, plen) != 0) continue;
    if (m[i].key_len == strlen(META_CRC_KEY) && memcmp(m[i].key, META_CRC_KEY, m[i].key_len) == 0)
      continue;
    crc = fo_crc32_update(c, crc, m[i].key, m[i].key_len + 1);
    crc = fo_crc32_update(c, crc, m[i].value, m[i].value_len + 1);
  }
  return crc;
}

/* --------------------------------------------------------------- naming */

/* The suffix of a role's key after the tensor's name; SGD's buffer takes
 * PyTorch's name for it. */
static const char *role_suffix(fo_algorithm alg, fo_role r) {
  switch (r) {
    case FO_ROLE_MASTER: return ".master";
    case FO_ROLE_EXP_AVG: return alg == FO_ALG_SGD ? ".momentum_buffer" : ".exp_avg";
    case FO_ROLE_EXP_AVG_SQ: return ".exp_avg_sq";
    case FO_ROLE_MAX_EXP_AVG_SQ: return ".max_exp_avg_sq";
    default: return "";
  }
}

static int role_saved(const fo_optimizer *opt, fo_role r) {
  switch (r) {
    case FO_ROLE_PARAM: return 1;
    case FO_ROLE_MASTER: return opt->keeps.master;
    case FO_ROLE_EXP_AVG: return opt->keeps.exp_avg;
    case FO_ROLE_EXP_AVG_SQ: return opt->keeps.exp_avg_sq;
    case FO_ROLE_MAX_EXP_AVG_SQ: return opt->keeps.max_exp_avg_sq;
    default: return 0;
  }
}

static int is_state_role(fo_role r) {
  return r >= FO_ROLE_MASTER && r < FO_ROLE_COUNT;
}

/* A whole state buffer of tensor t (an unsharded optimizer's). */
static float *whole_state(const fo_plan_tensor *t, fo_role r) {
  switch (r) {
    case FO_ROLE_MASTER: return t->master;
    case FO_ROLE_EXP_AVG: return t->exp_avg;
    case FO_ROLE_EXP_AVG_SQ: return t->exp_avg_sq;
    case FO_ROLE_MAX_EXP_AVG_SQ: return t->max_exp_avg_sq;
    default: return NULL;
  }
}

/* The part of tensor i's elements that lies in a shard [first, first +
 * count) of the arena: [*lo, *hi), tensor-local (empty when *lo == *hi). */
static void piece_of(const fo_optimizer *opt, int64_t i, int64_t first, int64_t count, int64_t *lo,
                     int64_t *hi) {
  int64_t off = opt->offsets[i], n = opt->tensors[i].numel;
  int64_t a = off > first ? off : first, b = off + n < first + count ? off + n : first + count;
  *lo = a - off;
  *hi = b > a ? b - off : a - off;
}

const void *fo_ckpt_entry_src(const fo_optimizer *opt, const fo_ckpt_entry *e) {
  const fo_plan_tensor *t = &opt->tensors[e->tensor];
  if (e->role == FO_ROLE_PARAM) return t->param;
  if (!is_state_role(e->role)) return NULL;
  if (!opt->shard.on) {
    const float *base = whole_state(t, e->role);
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
        if (r == FO_ROLE_GRAD || !role_saved(opt, (fo_role)r)) continue;
        int dt = entry_dtype(opt, (fo_role)r);
        if ((fo_st_dtype_size(dt) == 4) != (pass == 0)) continue;
        int64_t lo = 0, hi = opt->tensors[i].numel;
        if (sh && r != FO_ROLE_PARAM) {
          piece_of(opt, i, sh->first, sh->count, &lo, &hi);
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
    total += strlen(b) + strlen(role_suffix(opt->options.algorithm, p->e[k].role)) + 1;
  }
  p->keys = malloc(total + 1);
  if (!p->keys) return fo_fail(FO_ERR_OUT_OF_MEMORY, fn, "no memory for the tensor names");
  char *at = p->keys;
  for (int64_t k = 0; k < p->n; k++) {
    const char *b = base_name(opt, p->e[k].tensor, tmp);
    const char *suffix = role_suffix(opt->options.algorithm, p->e[k].role);
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

/* ---------------------------------------------------------- the header */

static void meta_options(meta_list *l, const fo_options *o) {
  meta_str(l, "algorithm", alg_names[o->algorithm]);
  meta_str(l, "executor", exec_names[o->executor]);
  meta_str(l, "storage", storage_names[o->storage]);
  meta_str(l, "options.param_dtype", dtype_names[o->param_dtype]);
  meta_str(l, "options.grad_dtype", dtype_names[o->grad_dtype]);
  meta_int(l, "options.master_weights", o->master_weights);
  meta_int(l, "options.stochastic_rounding", o->stochastic_rounding);
  char seed[32];
  snprintf(seed, sizeof seed, "%llu", (unsigned long long)o->seed);
  meta_str(l, "options.seed", seed);
  meta_float(l, "options.max_grad_norm", o->max_grad_norm);
  meta_int(l, "options.write_unscaled_grads", o->write_unscaled_grads);
  const fo_loss_scaler_options *s = &o->loss_scaler;
  meta_int(l, "options.loss_scaler.enabled", s->enabled);
  meta_float(l, "options.loss_scaler.init_scale", s->init_scale);
  meta_float(l, "options.loss_scaler.growth_factor", s->growth_factor);
  meta_float(l, "options.loss_scaler.backoff_factor", s->backoff_factor);
  meta_int(l, "options.loss_scaler.growth_interval", s->growth_interval);
  meta_float(l, "options.loss_scaler.max_scale", s->max_scale);
  meta_int(l, "options.loss_scaler.hysteresis", s->hysteresis);
  const fo_schedule *c = &o->schedule;
  meta_str(l, "options.schedule.kind", sched_names[c->kind]);
  meta_int(l, "options.schedule.warmup_steps", (long long)c->warmup_steps);
  meta_int(l, "options.schedule.total_steps", (long long)c->total_steps);
  meta_int(l, "options.schedule.step_size", (long long)c->step_size);
  meta_int(l, "options.schedule.period", (long long)c->period);
  meta_int(l, "options.schedule.period_mult", (long long)c->period_mult);
  meta_float(l, "options.schedule.gamma", c->gamma);
  meta_float(l, "options.schedule.min_ratio", c->min_ratio);
}

static void meta_group(meta_list *l, int g, const fo_hparams *h) {
  char k[64];
#define GROUP_KEY(field) (snprintf(k, sizeof k, "group.%d." field, g), k)
  meta_float(l, GROUP_KEY("lr"), h->lr);
  meta_float(l, GROUP_KEY("weight_decay"), h->weight_decay);
  meta_float(l, GROUP_KEY("momentum"), h->momentum);
  meta_float(l, GROUP_KEY("dampening"), h->dampening);
  meta_int(l, GROUP_KEY("nesterov"), h->nesterov);
  meta_float(l, GROUP_KEY("beta1"), h->beta1);
  meta_float(l, GROUP_KEY("beta2"), h->beta2);
  meta_float(l, GROUP_KEY("eps"), h->eps);
  meta_int(l, GROUP_KEY("amsgrad"), h->amsgrad);
  meta_int(l, GROUP_KEY("maximize"), h->maximize);
#undef GROUP_KEY
}

static void meta_state(meta_list *l, const fo_step_state *s) {
  meta_int(l, "state.step", (long long)s->step);
  meta_int(l, "state.skipped", (long long)s->skipped);
  meta_float(l, "state.scale", s->scale);
  meta_int(l, "state.growth_tracker", s->growth_tracker);
  meta_int(l, "state.hysteresis_left", s->hysteresis_left);
  meta_int(l, "state.last_step_skipped", s->skip);
  meta_float(l, "state.grad_norm", s->grad_norm);
  meta_float(l, "state.grad_coef", s->grad_coef);
  meta_float(l, "state.lr_factor", s->lr_factor);
}

/* "<prefix><tensor key>" = value, for every entry (pieces_only: every
 * state piece of a per-rank file, with its first element as the value). */
/* What meta_per_entry writes per entry. */
enum { PER_ENTRY_CRC, PER_ENTRY_PIECE_FIRST, PER_ENTRY_GROUP };

static void meta_per_entry(meta_list *l, const fo_optimizer *opt, const fo_ckpt_plan *p,
                           const char *prefix, int what) {
  sbuf key = {0};
  for (int64_t k = 0; k < p->n; k++) {
    if (what == PER_ENTRY_PIECE_FIRST && !is_state_role(p->e[k].role)) continue;
    if (what == PER_ENTRY_GROUP && p->e[k].role != FO_ROLE_PARAM) continue;
    char v[32];
    key.len = 0;
    sb_str(&key, prefix);
    sb_str(&key, p->e[k].key);
    if (what == PER_ENTRY_PIECE_FIRST)
      snprintf(v, sizeof v, "%lld", (long long)p->e[k].first);
    else if (what == PER_ENTRY_GROUP)
      snprintf(v, sizeof v, "%d", opt->tensors[p->e[k].tensor].group);
    else
      snprintf(v, sizeof v, "%08x", (unsigned)p->e[k].crc);
    if (key.failed)
      l->text.failed = 1;
    else
      meta_add(l, key.p, key.len, v);
  }
  free(key.p);
}

static void meta_shard(meta_list *l, const fo_optimizer *opt, const fo_ckpt_plan *p) {
  meta_int(l, "shard.rank", p->shard.rank);
  meta_int(l, "shard.size", p->shard.size);
  meta_int(l, "shard.first", (long long)p->shard.first);
  meta_int(l, "shard.count", (long long)p->shard.count);
  meta_int(l, "shard.total", (long long)p->shard.total);
  meta_per_entry(l, opt, p, PIECE_OFFSET_PREFIX, PER_ENTRY_PIECE_FIRST);
}

/* All metadata of a save, sorted, with its own CRC. */
static int build_meta(const fo_optimizer *opt, const fo_step_state *state, const fo_ckpt_plan *plan,
                      meta_list *l) {
  meta_int(l, "format_version", plan->sharded ? FO_CKPT_FORMAT_SHARD : FO_CKPT_FORMAT_WHOLE);
  meta_str(l, "library_version", fo_version_string());
  meta_options(l, &opt->options);
  meta_int(l, "num_groups", opt->num_groups);
  meta_int(l, "num_tensors", (long long)opt->num_tensors);
  for (int g = 0; g < opt->num_groups; g++) meta_group(l, g, &opt->hparams[g]);
  meta_state(l, state);
  if (plan->sharded) meta_shard(l, opt, plan);
  meta_per_entry(l, opt, plan, TENSOR_CRC_PREFIX, PER_ENTRY_CRC);
  meta_per_entry(l, opt, plan, GROUP_OF_PREFIX, PER_ENTRY_GROUP);
  if (!meta_finish(l)) return 0;
  fo_crc32 c;
  fo_crc32_init(&c);
  char v[16];
  snprintf(v, sizeof v, "%08x", (unsigned)meta_crc(&c, l->sorted, l->n));
  free(l->sorted);
  l->sorted = NULL;
  meta_add(l, META_CRC_KEY, strlen(META_CRC_KEY), v);
  return meta_finish(l);
}

static void header_json(sbuf *b, const meta_list *l, const fo_ckpt_plan *p) {
  sb_str(b, "{\"__metadata__\":{");
  for (int64_t i = 0; i < l->n; i++) {
    if (i) sb_str(b, ",");
    sb_json(b, l->sorted[i].key, l->sorted[i].key_len);
    sb_str(b, ":");
    sb_json(b, l->sorted[i].value, l->sorted[i].value_len);
  }
  sb_str(b, "}");
  for (int64_t k = 0; k < p->n; k++) {
    const fo_ckpt_entry *e = &p->e[k];
    sb_str(b, ",");
    sb_json(b, e->key, strlen(e->key));
    sb_printf(b, ":{\"dtype\":\"%s\",\"shape\":[%llu],\"data_offsets\":[%llu,%llu]}",
              fo_st_dtype_name(e->dtype),
              (unsigned long long)(e->bytes / (uint64_t)fo_st_dtype_size(e->dtype)),
              (unsigned long long)e->begin, (unsigned long long)(e->begin + e->bytes));
  }
  sb_str(b, "}");
  while ((8 + b->len) % 8 != 0) sb_str(b, " ");
}

/* The header's text, whatever its length. */
static fo_status header_text(const char *fn, const fo_optimizer *opt, const fo_step_state *state,
                             const fo_ckpt_plan *plan, char **text, size_t *len) {
  meta_list l;
  memset(&l, 0, sizeof l);
  sbuf b = {0};
  if (build_meta(opt, state, plan, &l)) header_json(&b, &l, plan);
  int ok = !l.text.failed && l.sorted && !b.failed;
  meta_free(&l);
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
  sbuf b = {0};
  fo_status st = header_text(fn, opt, state, plan, &b.p, &b.len);
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

/* ============================================================= reading */

/* The metadata of a parsed file, with messages that name the key. */
typedef struct reader {
  const char *fn;
  const fo_st_file *f;
} reader;

static fo_status meta_value(const reader *r, const char *key, const fo_st_meta **out) {
  char k[128];
  snprintf(k, sizeof k, META_PREFIX "%s", key);
  *out = fo_st_find_meta(r->f, k, strlen(k));
  if (!*out) return fo_fail(FO_ERR_CHECKPOINT, r->fn, "the metadata lacks \"%s\"", k);
  return FO_SUCCESS;
}

static fo_status bad_value(const reader *r, const fo_st_meta *m, const char *what) {
  return fo_fail(FO_ERR_CHECKPOINT, r->fn, "metadata \"%s\" = \"%.40s\" is not %s", m->key,
                 m->value, what);
}

static fo_status get_int(const reader *r, const char *key, int64_t lo, int64_t hi, int64_t *out) {
  const fo_st_meta *m;
  fo_status st = meta_value(r, key, &m);
  if (st != FO_SUCCESS) return st;
  int64_t v;
  if (!parse_i64(m->value, m->value_len, &v)) return bad_value(r, m, "a decimal integer");
  if (v < lo || v > hi) {
    char what[96];
    snprintf(what, sizeof what, "in [%lld, %lld]", (long long)lo, (long long)hi);
    return bad_value(r, m, what);
  }
  *out = v;
  return FO_SUCCESS;
}

static fo_status get_i32(const reader *r, const char *key, int lo, int hi, int *out) {
  int64_t v;
  fo_status st = get_int(r, key, lo, hi, &v);
  if (st == FO_SUCCESS) *out = (int)v;
  return st;
}

static fo_status get_float(const reader *r, const char *key, float *out) {
  const fo_st_meta *m;
  fo_status st = meta_value(r, key, &m);
  if (st != FO_SUCCESS) return st;
  if (!parse_float(m->value, m->value_len, out))
    return bad_value(r, m, "an exact float32 in hexadecimal (as float.hex() writes it)");
  return FO_SUCCESS;
}

static fo_status get_enum(const reader *r, const char *key, const char *const *names, int n,
                          int *out) {
  const fo_st_meta *m;
  fo_status st = meta_value(r, key, &m);
  if (st != FO_SUCCESS) return st;
  for (int i = 0; i < n; i++)
    if (strlen(names[i]) == m->value_len && memcmp(names[i], m->value, m->value_len) == 0) {
      *out = i;
      return FO_SUCCESS;
    }
  return bad_value(r, m, "a known name");
}

/* ------------------------------------------------- version and checksum */

static fo_status check_version(const reader *r, int *version) {
  const fo_st_meta *m = fo_st_find_meta(r->f, META_VERSION_KEY, strlen(META_VERSION_KEY));
  if (!m)
    return fo_fail(FO_ERR_CHECKPOINT, r->fn,
                   "not a fusedopt checkpoint: the header's __metadata__ has no \"%s\" (a "
                   "plain safetensors file?)",
                   META_VERSION_KEY);
  int64_t v;
  if (!parse_i64(m->value, m->value_len, &v) || v < 1) return bad_value(r, m, "a positive integer");
  if (v > FO_CKPT_FORMAT_VERSION)
    return fo_fail(FO_ERR_CHECKPOINT, r->fn,
                   "the checkpoint's format version %lld is newer than this library reads "
                   "(%d): load it with a newer fusedopt",
                   (long long)v, FO_CKPT_FORMAT_VERSION);
  *version = (int)v;
  return FO_SUCCESS;
}

static int parse_crc(const char *s, size_t n, uint32_t *out) {
  if (n != 8) return 0;
  uint32_t v = 0;
  for (size_t i = 0; i < 8; i++) {
    int d = hexval(s[i]);
    if (d < 0) return 0;
    v = v << 4 | (uint32_t)d;
  }
  *out = v;
  return 1;
}

static fo_status check_meta_crc(const reader *r, const fo_crc32 *c) {
  const fo_st_meta *m = fo_st_find_meta(r->f, META_CRC_KEY, strlen(META_CRC_KEY));
  if (!m) return fo_fail(FO_ERR_CHECKPOINT, r->fn, "the metadata lacks \"%s\"", META_CRC_KEY);
  uint32_t want;
  if (!parse_crc(m->value, m->value_len, &want)) return bad_value(r, m, "8 hex digits");
  uint32_t got = meta_crc(c, r->f->meta, r->f->num_meta);
  if (CRC_DIFFERS(got, want))
    return fo_fail(FO_ERR_CHECKPOINT, r->fn,
                   "metadata checksum mismatch (stored %08x, computed %08x): the header was "
                   "modified or is corrupt",
                   (unsigned)want, (unsigned)got);
  return FO_SUCCESS;
}

/* A tensor's data against its "fusedopt.crc32.<name>"; *out (may be NULL)
 * receives the checksum. */
static fo_status check_tensor_crc(const reader *r, const fo_crc32 *c, const fo_st_tensor *t,
                                  uint32_t *out) {
  sbuf key = {0};
  sb_str(&key, TENSOR_CRC_PREFIX);
  sb_put(&key, t->name, t->name_len);
  if (key.failed) return fo_fail(FO_ERR_OUT_OF_MEMORY, r->fn, "no memory for a metadata key");
  const fo_st_meta *m = fo_st_find_meta(r->f, key.p, key.len);
  free(key.p);
  if (!m)
    return fo_fail(FO_ERR_CHECKPOINT, r->fn, "the metadata lacks the checksum of tensor \"%.80s\"",
                   t->name);
  uint32_t want;
  if (!parse_crc(m->value, m->value_len, &want)) return bad_value(r, m, "8 hex digits");
  uint32_t got = fo_crc32_update(c, 0, r->f->data + t->begin, (size_t)(t->end - t->begin));
  if (out) *out = got;
  if (CRC_DIFFERS(got, want))
    return fo_fail(FO_ERR_CHECKPOINT, r->fn,
                   "tensor \"%.80s\": checksum mismatch (stored %08x, computed %08x): its data "
                   "is corrupt",
                   t->name, (unsigned)want, (unsigned)got);
  return FO_SUCCESS;
}

/* Parse, then the checks every reader makes first: the version (before
 * anything whose meaning a newer version may change) and the metadata's
 * checksum (before any value in it is believed). */
static fo_status open_file(const char *fn, const unsigned char *buf, size_t len, fo_st_file *f,
                           const fo_crc32 *c, int *version) {
  fo_status st = fo_st_parse(fn, buf, len, f);
  if (st != FO_SUCCESS) return st;
  reader r = {fn, f};
  st = check_version(&r, version);
  if (st == FO_SUCCESS) st = check_meta_crc(&r, c);
  if (st != FO_SUCCESS) fo_st_free(f);
  return st;
}

/* The largest header a checkpoint of opt's tensors can have: twice the
 * header of opt's own whole checkpoint (a per-rank file adds one offset
 * per state piece, less than doubling it; values of other hyper-parameters
 * and steps differ by bytes), plus 1 MiB of metadata other tools may add;
 * never more than safetensors' limit.  A longer header is no checkpoint of
 * this model, and refusing it before parsing bounds a load's memory and
 * time by the registered tensors instead of the 100 MB limit (a crafted
 * header of small JSON values costs about 44 bytes of memory per byte).
 * Built from a fresh step state: opt's own may be in device memory. */
static uint64_t header_bound(const char *fn, const fo_optimizer *opt) {
  fo_ckpt_plan plan;
  fo_step_state s;
  fo_step_state_init(&opt->options, &s);
  if (fo_ckpt_plan_build_for(fn, opt, NULL, &plan) != FO_SUCCESS) return FO_ST_MAX_HEADER;
  char *text = NULL;
  size_t n = 0;
  fo_status st = header_text(fn, opt, &s, &plan, &text, &n);
  free(text);
  fo_ckpt_plan_free(&plan);
  if (st != FO_SUCCESS) return FO_ST_MAX_HEADER;
  uint64_t bound = 2 * (uint64_t)n + ((uint64_t)1 << 20);
  return bound < FO_ST_MAX_HEADER ? bound : FO_ST_MAX_HEADER;
}

/* Refuse a header longer than bound before it is parsed.  Headers that
 * run past the file or past safetensors' limit are left to the container
 * check, which names those faults. */
static fo_status check_header_bound(const char *fn, const fo_optimizer *opt,
                                    const unsigned char *buf, size_t len, uint64_t bound) {
  if (len < 8) return FO_SUCCESS;
  uint64_t n = 0;
  for (int i = 7; i >= 0; i--) n = n << 8 | buf[i];
  if (n > len - 8 || n > FO_ST_MAX_HEADER || n <= bound) return FO_SUCCESS;
  return fo_fail(FO_ERR_CHECKPOINT, fn,
                 "the header is %llu bytes; a checkpoint of this optimizer's %lld tensors has "
                 "about %llu (at most %llu are read): not a checkpoint of this model",
                 (unsigned long long)n, (long long)opt->num_tensors,
                 (unsigned long long)((bound - ((uint64_t)1 << 20)) / 2),
                 (unsigned long long)bound);
}

fo_status fo_ckpt_verify(const char *fn, const unsigned char *buf, size_t len) {
  fo_crc32 *c = malloc(sizeof *c);
  if (!c) return fo_fail(FO_ERR_OUT_OF_MEMORY, fn, "no memory for the CRC tables");
  fo_crc32_init(c);
  fo_st_file f;
  int version;
  fo_status st = open_file(fn, buf, len, &f, c, &version);
  if (st == FO_SUCCESS) {
    reader r = {fn, &f};
    for (int64_t i = 0; i < f.num_tensors && st == FO_SUCCESS; i++)
      st = check_tensor_crc(&r, c, &f.tensors[i], NULL);
    fo_st_free(&f);
  }
  free(c);
  return st;
}

/* ------------------------------------------- the optimizer's structure */

static fo_status mismatch_int(const reader *r, const char *what, long long file, long long opt) {
  return fo_fail(FO_ERR_CHECKPOINT, r->fn, "the checkpoint has %s = %lld; this optimizer has %lld",
                 what, file, opt);
}

/* What must agree for the saved state to mean the same thing here: the
 * update rule, the parameters' dtype, which buffers exist, whether the
 * scale in the step state is a loss scale.  Everything else (schedule,
 * scaler constants, clipping, gradient dtype, executor, storage) is the
 * loading optimizer's own choice; the file records the saver's. */
static fo_status check_structure(const reader *r, const fo_optimizer *opt) {
  const fo_options *o = &opt->options;
  int alg = 0, pd = 0, sr = 0, ls = 0, mw = 0; /* set by get_* on success; GCC cannot tell */
  int64_t groups, tensors;
  fo_status st = get_enum(r, "algorithm", alg_names, FO_ALG_COUNT, &alg);
  if (st != FO_SUCCESS) return st;
  if (alg != (int)o->algorithm)
    return fo_fail(FO_ERR_CHECKPOINT, r->fn,
                   "the checkpoint holds %s state; this optimizer runs %s", alg_names[alg],
                   alg_names[o->algorithm]);
  if ((st = get_enum(r, "options.param_dtype", dtype_names, FO_DTYPE_COUNT, &pd)) != FO_SUCCESS)
    return st;
  if (pd != (int)o->param_dtype)
    return fo_fail(FO_ERR_CHECKPOINT, r->fn,
                   "the checkpoint's parameters are %s; this optimizer's are %s", dtype_names[pd],
                   dtype_names[o->param_dtype]);
  if ((st = get_i32(r, "options.master_weights", 0, 1, &mw)) != FO_SUCCESS) return st;
  if ((pd != FO_DTYPE_F32 && mw) != opt->keeps.master)
    return fo_fail(
        FO_ERR_CHECKPOINT, r->fn, "the checkpoint %s fp32 master weights; this optimizer %s",
        opt->keeps.master ? "has no" : "has", opt->keeps.master ? "keeps them" : "keeps none");
  if ((st = get_i32(r, "options.stochastic_rounding", 0, 1, &sr)) != FO_SUCCESS) return st;
  if (sr != o->stochastic_rounding)
    return mismatch_int(r, "stochastic_rounding", sr, o->stochastic_rounding);
  if ((st = get_i32(r, "options.loss_scaler.enabled", 0, 1, &ls)) != FO_SUCCESS) return st;
  if (ls != o->loss_scaler.enabled)
    return mismatch_int(r, "loss_scaler.enabled", ls, o->loss_scaler.enabled);
  if ((st = get_int(r, "num_groups", 1, FO_MAX_GROUPS, &groups)) != FO_SUCCESS) return st;
  if (groups != opt->num_groups) return mismatch_int(r, "num_groups", groups, opt->num_groups);
  if ((st = get_int(r, "num_tensors", 0, INT64_MAX, &tensors)) != FO_SUCCESS) return st;
  if (tensors != opt->num_tensors) return mismatch_int(r, "num_tensors", tensors, opt->num_tensors);
  return FO_SUCCESS;
}

static fo_status read_group(const reader *r, int g, fo_hparams *h) {
  char k[64];
  fo_status st = FO_SUCCESS;
#define GET_F(field)    \
  if (st == FO_SUCCESS) \
  st = get_float(r, (snprintf(k, sizeof k, "group.%d." #field, g), k), &h->field)
#define GET_I(field)    \
  if (st == FO_SUCCESS) \
  st = get_i32(r, (snprintf(k, sizeof k, "group.%d." #field, g), k), 0, 1, &h->field)
  GET_F(lr);
  GET_F(weight_decay);
  GET_F(momentum);
  GET_F(dampening);
  GET_I(nesterov);
  GET_F(beta1);
  GET_F(beta2);
  GET_F(eps);
  GET_I(amsgrad);
  GET_I(maximize);
#undef GET_F
#undef GET_I
  return st;
}

/* The groups' hyper-parameters, held to what fo_optimizer_set_hparams
 * accepts: valid values, and no AMSGrad or momentum the optimizer has no
 * buffer for. */
static fo_status check_groups(const reader *r, const fo_optimizer *opt, fo_hparams *out) {
  fo_algorithm alg = opt->options.algorithm;
  for (int g = 0; g < opt->num_groups; g++) {
    fo_hparams *h = &out[g];
    *h = opt->hparams[g]; /* struct_size and reserved: the optimizer's own */
    fo_status st = read_group(r, g, h);
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
    if (alg == FO_ALG_SGD && h->momentum != 0.0f && !opt->keeps.exp_avg)
      return fo_fail(FO_ERR_CHECKPOINT, r->fn,
                     "group %d uses momentum in the checkpoint; this optimizer was created "
                     "without a momentum buffer",
                     g);
    if (alg != FO_ALG_SGD && h->amsgrad && !opt->keeps.max_exp_avg_sq)
      return fo_fail(FO_ERR_CHECKPOINT, r->fn,
                     "group %d uses AMSGrad in the checkpoint; this optimizer was created "
                     "without AMSGrad state",
                     g);
  }
  return FO_SUCCESS;
}

/* The step state, and that the loss scaler can continue from it. */
static fo_status check_state(const reader *r, const fo_optimizer *opt, fo_step_state *s) {
  int64_t step, skipped;
  /* FO_MAX_STEP, as fo_optimizer_set_step: a larger count would overflow */
  fo_status st = get_int(r, "state.step", 0, FO_MAX_STEP, &step);
  if (st == FO_SUCCESS) st = get_int(r, "state.skipped", 0, FO_MAX_STEP, &skipped);
  if (st == FO_SUCCESS) st = get_float(r, "state.scale", &s->scale);
  if (st == FO_SUCCESS) st = get_i32(r, "state.growth_tracker", 0, INT32_MAX, &s->growth_tracker);
  if (st == FO_SUCCESS) st = get_i32(r, "state.hysteresis_left", 0, INT32_MAX, &s->hysteresis_left);
  if (st == FO_SUCCESS) st = get_i32(r, "state.last_step_skipped", 0, 1, &s->skip);
  if (st == FO_SUCCESS) st = get_float(r, "state.grad_norm", &s->grad_norm);
  if (st == FO_SUCCESS) st = get_float(r, "state.grad_coef", &s->grad_coef);
  if (st == FO_SUCCESS) st = get_float(r, "state.lr_factor", &s->lr_factor);
  if (st != FO_SUCCESS) return st;
  s->step = step;
  s->skipped = skipped;
  const fo_loss_scaler_options *ls = &opt->options.loss_scaler;
  /* what the scaler can produce (fo_scaler_backoff keeps it in range): a
   * subnormal or zero scale would make the next clean step's 1/scale inf */
  if (!(isfinite(s->scale) && s->scale >= FO_LOSS_SCALE_MIN))
    return fo_fail(FO_ERR_CHECKPOINT, r->fn,
                   "the checkpoint's loss scale %g is not finite and at least FO_LOSS_SCALE_MIN "
                   "(%g)",
                   (double)s->scale, (double)FO_LOSS_SCALE_MIN);
  if (ls->enabled && s->growth_tracker >= ls->growth_interval)
    return fo_fail(FO_ERR_CHECKPOINT, r->fn,
                   "the checkpoint's growth tracker %d is not below this optimizer's "
                   "loss_scaler.growth_interval %d",
                   s->growth_tracker, ls->growth_interval);
  if (ls->enabled && (s->hysteresis_left < 1 || s->hysteresis_left > ls->hysteresis))
    return fo_fail(FO_ERR_CHECKPOINT, r->fn,
                   "the checkpoint's hysteresis count %d is outside [1, %d], this optimizer's "
                   "loss_scaler.hysteresis",
                   s->hysteresis_left, ls->hysteresis);
  return FO_SUCCESS;
}

/* ---------------------------------------------------------------- shards */

/* A version-2 file with "fusedopt.shard.size" is a per-rank file of a
 * sharded state: read its shard (*is_shard stays 0 for a whole one). */
static fo_status read_shard(const reader *r, int version, int *is_shard, fo_ckpt_shard *sh) {
  *is_shard = 0;
  if (version < FO_CKPT_FORMAT_SHARD ||
      !fo_st_find_meta(r->f, SHARD_SIZE_KEY, strlen(SHARD_SIZE_KEY)))
    return FO_SUCCESS;
  int64_t size, rank, total, first, count;
  fo_status st = get_int(r, "shard.size", 1, INT32_MAX, &size);
  if (st == FO_SUCCESS) st = get_int(r, "shard.rank", 0, size - 1, &rank);
  if (st == FO_SUCCESS) st = get_int(r, "shard.total", 0, (int64_t)1 << 62, &total);
  if (st == FO_SUCCESS) st = get_int(r, "shard.first", 0, total, &first);
  if (st == FO_SUCCESS) st = get_int(r, "shard.count", 0, total - first, &count);
  if (st != FO_SUCCESS) return st;
  *sh = (fo_ckpt_shard){(int)rank, (int)size, first, count, total};
  *is_shard = 1;
  return FO_SUCCESS;
}

static fo_status shard_does_not_fit(const reader *r, const fo_optimizer *opt,
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
static fo_status check_group_of(const reader *r, const fo_optimizer *opt, const fo_ckpt_entry *e) {
  sbuf key = {0};
  sb_str(&key, GROUP_OF_PREFIX);
  sb_str(&key, e->key);
  if (key.failed) return fo_fail(FO_ERR_OUT_OF_MEMORY, r->fn, "no memory for a metadata key");
  const fo_st_meta *m = fo_st_find_meta(r->f, key.p, key.len);
  free(key.p);
  if (!m) return FO_SUCCESS;
  int64_t g = -1;
  if (!parse_i64(m->value, m->value_len, &g) || g < 0 || g >= FO_MAX_GROUPS)
    return bad_value(r, m, "a group index");
  int want = opt->tensors[e->tensor].group;
  if (g != want)
    return fo_fail(FO_ERR_CHECKPOINT, r->fn,
                   "tensor \"%.80s\" is in parameter group %lld in the checkpoint, but the "
                   "registered tensor %lld is in group %d: a load does not move a tensor to "
                   "another group (register it in group %lld, or start from fresh state)",
                   e->key, (long long)g, (long long)e->tensor, want, (long long)g);
  return FO_SUCCESS;
}

static fo_status match_entry(const reader *r, const fo_optimizer *opt, const fo_ckpt_plan *p,
                             const fo_ckpt_entry *e, const fo_st_tensor **out) {
  const fo_st_tensor *t = fo_st_find(r->f, e->key, strlen(e->key));
  if (!t)
    return fo_fail(
        FO_ERR_CHECKPOINT, r->fn, "the checkpoint has no tensor \"%.80s\" (tensor %lld's %s)",
        e->key, (long long)e->tensor,
        e->role == FO_ROLE_PARAM ? "parameters" : role_suffix(opt->options.algorithm, e->role) + 1);
  if (t->dtype != e->dtype)
    return fo_fail(FO_ERR_CHECKPOINT, r->fn,
                   "tensor \"%.80s\" has dtype %s in the checkpoint; this optimizer holds it as %s",
                   e->key, fo_st_dtype_name(t->dtype), fo_st_dtype_name(e->dtype));
  int piece = p->sharded && is_state_role(e->role);
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
    sbuf key = {0};
    sb_str(&key, PIECE_OFFSET_PREFIX);
    sb_str(&key, e->key);
    if (key.failed) return fo_fail(FO_ERR_OUT_OF_MEMORY, r->fn, "no memory for a metadata key");
    const fo_st_meta *m = fo_st_find_meta(r->f, key.p, key.len);
    free(key.p);
    int64_t v = -1;
    if (!m)
      return fo_fail(FO_ERR_CHECKPOINT, r->fn,
                     "the metadata lacks the first element of piece \"%.80s\"", e->key);
    if (!parse_i64(m->value, m->value_len, &v)) return bad_value(r, m, "a decimal integer");
    if (v != e->first)
      return fo_fail(FO_ERR_CHECKPOINT, r->fn,
                     "piece \"%.80s\" starts at element %lld of its tensor in the checkpoint; "
                     "the shard's piece starts at element %lld",
                     e->key, (long long)v, (long long)e->first);
  }
  *out = t;
  return FO_SUCCESS;
}

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

/* The copies of one saved buffer (the elements [e->first, e->first +
 * e->numel) of its tensor, at src) into opt: the parameters whole; a
 * state buffer into the tensor's whole buffer, or with a sharded state
 * the part that falls in this rank's shard. */
static fo_status add_copies(const char *fn, const fo_optimizer *opt, const fo_ckpt_entry *e,
                            const unsigned char *src, fo_ckpt_restore *out) {
  const fo_plan_tensor *t = &opt->tensors[e->tensor];
  size_t es = (size_t)fo_st_dtype_size(e->dtype);
  if (e->role == FO_ROLE_PARAM) return add_copy(fn, out, t->param, src, (size_t)e->numel * es);
  int64_t dlo = 0, dhi = t->numel; /* the tensor's elements this optimizer keeps */
  float *dst;
  if (opt->shard.on) {
    piece_of(opt, e->tensor, opt->shard.first, opt->shard.count, &dlo, &dhi);
    if (dhi == dlo) return FO_SUCCESS;
    dst = (float *)opt->arena[e->role] + (opt->offsets[e->tensor] + dlo - opt->shard.first);
  } else {
    dst = whole_state(t, e->role);
  }
  int64_t lo = dlo > e->first ? dlo : e->first;
  int64_t hi = dhi < e->first + e->numel ? dhi : e->first + e->numel;
  if (hi <= lo) return FO_SUCCESS;
  return add_copy(fn, out, dst + (lo - dlo), src + (size_t)(lo - e->first) * es,
                  (size_t)(hi - lo) * es);
}

/* Every buffer of plan p has its tensor in the file, with its dtype and
 * shape, and the file holds nothing else; then the checksums (they read
 * all the data, the other checks only the header), folding the
 * parameters' into *param_crc; then the copies (the parameters only when
 * take_params). */
static fo_status match_tensors(const reader *r, const fo_optimizer *opt, const fo_crc32 *c,
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
    st = check_tensor_crc(r, c, found[k], &crc);
    if (st == FO_SUCCESS && p->e[k].role == FO_ROLE_PARAM) {
      unsigned char le[4] = {(unsigned char)crc, (unsigned char)(crc >> 8),
                             (unsigned char)(crc >> 16), (unsigned char)(crc >> 24)};
      *param_crc = fo_crc32_update(c, *param_crc, le, 4);
    }
  }
  for (int64_t k = 0; k < p->n && st == FO_SUCCESS; k++)
    if (take_params || p->e[k].role != FO_ROLE_PARAM)
      st = add_copies(r->fn, opt, &p->e[k], r->f->data + found[k]->begin, out);
  free(found);
  return st;
}

/* ------------------------------------------------------------ one file */

/* A CRC-32 over the decoded step state and hyper-parameters, continued
 * from crc. */
static uint32_t state_crc(const fo_crc32 *c, uint32_t crc, const fo_ckpt_restore *r, int groups) {
  const fo_step_state *s = &r->state;
#define FOLD(x) crc = fo_crc32_update(c, crc, &(x), sizeof(x))
  FOLD(s->step);
  FOLD(s->skipped);
  FOLD(s->scale);
  FOLD(s->growth_tracker);
  FOLD(s->hysteresis_left);
  FOLD(s->skip);
  FOLD(s->grad_norm);
  FOLD(s->grad_coef);
  FOLD(s->lr_factor);
  for (int g = 0; g < groups; g++) FOLD(r->hparams[g]);
#undef FOLD
  return crc;
}

/* The checks of one file up to its tensors: structure, groups, step
 * state, and whether it is a per-rank file (and of which shard). */
static fo_status read_header(const reader *r, const fo_optimizer *opt, fo_ckpt_restore *out) {
  fo_status st = check_structure(r, opt);
  if (st == FO_SUCCESS) st = check_groups(r, opt, out->hparams);
  if (st == FO_SUCCESS) st = check_state(r, opt, &out->state);
  if (st == FO_SUCCESS) st = read_shard(r, out->version, &out->sharded_file, &out->shard);
  return st;
}

static fo_status validate_file(const reader *r, const fo_optimizer *opt, const fo_crc32 *c,
                               fo_ckpt_restore *out) {
  fo_status st = read_header(r, opt, out);
  if (st != FO_SUCCESS) return st;
  const fo_ckpt_shard *sh = out->sharded_file ? &out->shard : NULL;
  if (sh && (!opt->shard.on || sh->rank != opt->shard.rank || sh->size != opt->shard.size ||
             sh->first != opt->shard.first || sh->count != opt->shard.count ||
             sh->total != opt->total_elems))
    return shard_does_not_fit(r, opt, sh);
  fo_ckpt_plan p;
  if ((st = fo_ckpt_plan_build_for(r->fn, opt, sh, &p)) != FO_SUCCESS) return st;
  uint32_t params = 0;
  st = match_tensors(r, opt, c, &p, 1, &params, out);
  fo_ckpt_plan_free(&p);
  if (st == FO_SUCCESS) out->fingerprint = state_crc(c, params, out, opt->num_groups);
  return st;
}

fo_status fo_ckpt_validate(const char *fn, const fo_optimizer *opt, const unsigned char *buf,
                           size_t len, fo_ckpt_restore *out) {
  fo_ckpt_restore res;
  memset(&res, 0, sizeof res);
  fo_crc32 *c = malloc(sizeof *c);
  fo_status st = FO_SUCCESS;
  if (!c) st = fo_fail(FO_ERR_OUT_OF_MEMORY, fn, "no memory to read the checkpoint");
  if (st == FO_SUCCESS) st = check_header_bound(fn, opt, buf, len, header_bound(fn, opt));
  fo_st_file f;
  if (st == FO_SUCCESS) {
    fo_crc32_init(c);
    st = open_file(fn, buf, len, &f, c, &res.version);
  }
  if (st == FO_SUCCESS) {
    reader r = {fn, &f};
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

/* ----------------------------------------------------- every rank's file */

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
  uint32_t want = state_crc(c, 0, &a->head, opt->num_groups);
  for (int r = 1; r < n; r++) {
    const shard_file *b = &sf[by_rank[r]];
    if (state_crc(c, 0, &b->head, opt->num_groups) == want) continue;
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
  const uint64_t bound = header_bound(sf[0].where, opt);
  for (int k = 0; k < n && st == FO_SUCCESS; k++) {
    st = check_header_bound(sf[k].where, opt, bufs[k], lens[k], bound);
    if (st == FO_SUCCESS)
      st = open_file(sf[k].where, bufs[k], lens[k], &sf[k].f, c, &sf[k].head.version);
    if (st != FO_SUCCESS) break;
    sf[k].open = 1;
    reader r = {sf[k].where, &sf[k].f};
    st = read_header(&r, opt, &sf[k].head);
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
    reader rd = {x->where, &x->f};
    fo_ckpt_plan p;
    if ((st = fo_ckpt_plan_build_for(x->where, opt, &x->head.shard, &p)) != FO_SUCCESS) break;
    uint32_t params = 0; /* parameters from rank 0's file; the others' must equal them */
    st = match_tensors(&rd, opt, c, &p, r == 0, &params, out);
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
    out->fingerprint = state_crc(c, params0, out, opt->num_groups);
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

void fo_ckpt_restore_free(fo_ckpt_restore *r) {
  free(r->copies);
  r->copies = NULL;
  r->num_copies = r->cap_copies = 0;
}

/* ------------------------------------------------------------ applying */

fo_status fo_ckpt_copy_host(void *ctx, void *dst, const void *src, size_t bytes) {
  (void)ctx;
  memcpy(dst, src, bytes);
  return FO_SUCCESS;
}

fo_status fo_ckpt_apply_tensors(const char *fn, fo_optimizer *opt, const fo_ckpt_restore *r,
                                fo_ckpt_copy_fn copy, void *ctx, int64_t stop_after) {
  (void)opt; /* the copies already point into it */
  for (int64_t k = 0; k < r->num_copies; k++) {
    if (stop_after >= 0 && k == stop_after)
      return fo_fail(FO_ERR_CUDA, fn,
                     "injected fault: copy %lld of the checkpoint's tensors failed", (long long)k);
    fo_status st = copy(ctx, r->copies[k].dst, r->copies[k].src, r->copies[k].bytes);
    if (st != FO_SUCCESS) return st;
  }
  return FO_SUCCESS;
}
