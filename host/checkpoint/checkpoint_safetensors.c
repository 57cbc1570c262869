/*
 * checkpoint_safetensors.c -- the safetensors container: CRC-32, dtypes,
 * and the parser that checks a file's header and layout before anything
 * reads its data.
 */
#include "checkpoint_safetensors.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "checkpoints store host memory as little-endian safetensors data"
#endif

/* ------------------------------------------------------------------ CRC */

void fo_crc32_init(fo_crc32 *c) {
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t r = i;
    for (int k = 0; k < 8; k++) r = (r >> 1) ^ (0xEDB88320u & (0u - (r & 1u)));
    c->t[0][i] = r;
  }
  for (uint32_t i = 0; i < 256; i++)
    for (int s = 1; s < 8; s++) c->t[s][i] = (c->t[s - 1][i] >> 8) ^ c->t[0][c->t[s - 1][i] & 0xFF];
}

uint32_t fo_crc32_update(const fo_crc32 *c, uint32_t crc, const void *data, size_t n) {
  const unsigned char *p = data;
  uint32_t r = ~crc;
  /* eight bytes per round: two table lookups per byte fewer than the
   * bytewise loop, about 3x faster */
  while (n >= 8) {
    uint32_t lo =
        r ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
    uint32_t hi =
        (uint32_t)p[4] | (uint32_t)p[5] << 8 | (uint32_t)p[6] << 16 | (uint32_t)p[7] << 24;
    r = c->t[7][lo & 0xFF] ^ c->t[6][(lo >> 8) & 0xFF] ^ c->t[5][(lo >> 16) & 0xFF] ^
        c->t[4][lo >> 24] ^ c->t[3][hi & 0xFF] ^ c->t[2][(hi >> 8) & 0xFF] ^
        c->t[1][(hi >> 16) & 0xFF] ^ c->t[0][hi >> 24];
    p += 8;
    n -= 8;
  }
  while (n--) r = (r >> 8) ^ c->t[0][(r ^ *p++) & 0xFF];
  return ~r;
}

/* --------------------------------------------------------------- dtypes */

static const struct {
  const char *name;
  int size;
} st_dtypes[] = {{"F32", 4}, {"F16", 2}, {"BF16", 2}, {"F64", 8},     {"I64", 8},
                 {"U64", 8}, {"I32", 4}, {"U32", 4},  {"I16", 2},     {"U16", 2},
                 {"I8", 1},  {"U8", 1},  {"BOOL", 1}, {"F8_E5M2", 1}, {"F8_E4M3", 1}};
#define ST_NUM_DTYPES ((int)(sizeof st_dtypes / sizeof st_dtypes[0]))

int fo_st_dtype_size(int dtype) {
  return dtype >= 0 && dtype < ST_NUM_DTYPES ? st_dtypes[dtype].size : 0;
}

const char *fo_st_dtype_name(int dtype) {
  return dtype >= 0 && dtype < ST_NUM_DTYPES ? st_dtypes[dtype].name : "?";
}

int fo_st_dtype_of(fo_dtype d) {
  /* the first three entries of the table are F32, F16, BF16: fo_dtype's order */
  return (int)d;
}

static int st_dtype_parse(const char *s, size_t n) {
  for (int i = 0; i < ST_NUM_DTYPES; i++)
    if (strlen(st_dtypes[i].name) == n && memcmp(st_dtypes[i].name, s, n) == 0) return i;
  return -1;
}

/* ---------------------------------------------------------------- parse */

static int name_cmp(const char *a, size_t an, const char *b, size_t bn) {
  int c = memcmp(a, b, an < bn ? an : bn);
  if (c) return c;
  return (an > bn) - (an < bn);
}

static int tensor_cmp(const void *x, const void *y) {
  const fo_st_tensor *a = x, *b = y;
  return name_cmp(a->name, a->name_len, b->name, b->name_len);
}

static int meta_cmp(const void *x, const void *y) {
  const fo_st_meta *a = x, *b = y;
  return name_cmp(a->key, a->key_len, b->key, b->key_len);
}

/* The 8-byte length and the header's bounds. */
static fo_status check_frame(const char *fn, const unsigned char *buf, size_t len,
                             uint64_t *header_len) {
  if (len < 8)
    return fo_fail(FO_ERR_CHECKPOINT, fn,
                   "truncated: the file has %zu bytes, fewer than the 8-byte header length "
                   "a safetensors file starts with",
                   len);
  uint64_t n = 0;
  for (int i = 7; i >= 0; i--) n = n << 8 | buf[i];
  if (n > len - 8)
    return fo_fail(FO_ERR_CHECKPOINT, fn,
                   "the header length %llu runs past the end of the file (%zu bytes): not a "
                   "safetensors file, or truncated inside the header",
                   (unsigned long long)n, len);
  if (n > FO_ST_MAX_HEADER)
    return fo_fail(FO_ERR_CHECKPOINT, fn,
                   "the header length %llu exceeds safetensors' limit of %llu",
                   (unsigned long long)n, (unsigned long long)FO_ST_MAX_HEADER);
  if (n < 2 || buf[8] != '{')
    return fo_fail(FO_ERR_CHECKPOINT, fn,
                   "the header does not start with '{': not a safetensors file");
  *header_len = n;
  return FO_SUCCESS;
}

/* Whether v's key is exactly word (keys may hold escaped NULs). */
static int key_is(const fo_json_value *v, const char *word) {
  return v->key_len == strlen(word) && memcmp(v->key, word, v->key_len) == 0;
}

static fo_status tensor_fail(const char *fn, const fo_st_tensor *t, const char *what) {
  return fo_fail(FO_ERR_CHECKPOINT, fn, "tensor \"%.80s\": %s", t->name, what);
}

/* The numel of a shape array: non-negative integers whose product stays
 * below 2^62 (the library's limit on a tensor). */
static fo_status read_shape(const char *fn, const fo_json_doc *d, const fo_json_value *shape,
                            fo_st_tensor *t) {
  if (!shape || shape->type != FO_JSON_ARRAY)
    return tensor_fail(fn, t, "\"shape\" is missing or not an array");
  uint64_t numel = 1;
  for (int64_t c = shape->first; c >= 0; c = d->values[c].next) {
    const fo_json_value *v = &d->values[c];
    if (v->type != FO_JSON_NUMBER || !v->is_uint)
      return tensor_fail(fn, t, "\"shape\" holds something other than a non-negative integer");
    if (v->u != 0 && numel > ((uint64_t)1 << 62) / v->u)
      return tensor_fail(fn, t, "the shape's product exceeds 2^62 elements");
    numel *= v->u;
  }
  t->numel = (int64_t)numel;
  t->shape_value = shape - d->values;
  return FO_SUCCESS;
}

static fo_status read_offsets(const char *fn, const fo_json_doc *d, const fo_json_value *off,
                              fo_st_tensor *t) {
  if (!off || off->type != FO_JSON_ARRAY || off->count != 2)
    return tensor_fail(fn, t, "\"data_offsets\" is missing or not an array of two integers");
  const fo_json_value *b = &d->values[off->first], *e = &d->values[b->next];
  if (b->type != FO_JSON_NUMBER || !b->is_uint || e->type != FO_JSON_NUMBER || !e->is_uint)
    return tensor_fail(fn, t, "\"data_offsets\" must be two non-negative integers");
  t->begin = b->u;
  t->end = e->u;
  if (t->begin > t->end)
    return fo_fail(FO_ERR_CHECKPOINT, fn,
                   "tensor \"%.80s\": data_offsets [%llu, %llu] end before they begin", t->name,
                   (unsigned long long)t->begin, (unsigned long long)t->end);
  uint64_t size = (uint64_t)fo_st_dtype_size(t->dtype);
  if ((uint64_t)t->numel > UINT64_MAX / size)
    return tensor_fail(fn, t, "its size in bytes overflows 64 bits");
  uint64_t need = (uint64_t)t->numel * size;
  if (t->end - t->begin != need)
    return fo_fail(FO_ERR_CHECKPOINT, fn,
                   "tensor \"%.80s\": data_offsets [%llu, %llu] span %llu bytes; its dtype and "
                   "shape need %llu",
                   t->name, (unsigned long long)t->begin, (unsigned long long)t->end,
                   (unsigned long long)(t->end - t->begin), (unsigned long long)need);
  return FO_SUCCESS;
}

/* One {"dtype", "shape", "data_offsets"} entry, nothing more. */
static fo_status read_tensor(const char *fn, const fo_json_doc *d, const fo_json_value *v,
                             fo_st_tensor *t) {
  t->name = v->key;
  t->name_len = v->key_len;
  if (v->type != FO_JSON_OBJECT) return tensor_fail(fn, t, "the entry is not an object");
  for (int64_t c = v->first; c >= 0; c = d->values[c].next) {
    const fo_json_value *m = &d->values[c];
    if (!key_is(m, "dtype") && !key_is(m, "shape") && !key_is(m, "data_offsets"))
      return fo_fail(FO_ERR_CHECKPOINT, fn, "tensor \"%.80s\": unknown field \"%.40s\"", t->name,
                     m->key);
  }
  const fo_json_value *dt = fo_json_member(d, v, "dtype");
  if (!dt || dt->type != FO_JSON_STRING)
    return tensor_fail(fn, t, "\"dtype\" is missing or not a string");
  t->dtype = st_dtype_parse(dt->str, dt->len);
  if (t->dtype < 0)
    return fo_fail(FO_ERR_CHECKPOINT, fn, "tensor \"%.80s\": unknown dtype \"%.20s\"", t->name,
                   dt->str);
  fo_status st = read_shape(fn, d, fo_json_member(d, v, "shape"), t);
  if (st != FO_SUCCESS) return st;
  return read_offsets(fn, d, fo_json_member(d, v, "data_offsets"), t);
}

static fo_status read_meta(const char *fn, fo_st_file *f, const fo_json_value *v) {
  if (v->type != FO_JSON_OBJECT)
    return fo_fail(FO_ERR_CHECKPOINT, fn, "\"__metadata__\" is not an object");
  f->meta = malloc((size_t)(v->count + 1) * sizeof *f->meta);
  if (!f->meta) return fo_fail(FO_ERR_OUT_OF_MEMORY, fn, "no memory for the metadata");
  for (int64_t c = v->first; c >= 0; c = f->doc.values[c].next) {
    const fo_json_value *m = &f->doc.values[c];
    if (m->type != FO_JSON_STRING)
      return fo_fail(FO_ERR_CHECKPOINT, fn,
                     "\"__metadata__\" entry \"%.80s\" is not a string (safetensors metadata "
                     "maps strings to strings)",
                     m->key);
    f->meta[f->num_meta++] = (fo_st_meta){m->key, m->str, m->key_len, m->len};
  }
  qsort(f->meta, (size_t)f->num_meta, sizeof *f->meta, meta_cmp);
  return FO_SUCCESS;
}

static int begin_cmp(const void *x, const void *y) {
  const fo_st_tensor *a = *(const fo_st_tensor *const *)x, *b = *(const fo_st_tensor *const *)y;
  if (a->begin != b->begin) return (a->begin > b->begin) - (a->begin < b->begin);
  return (a->end > b->end) - (a->end < b->end);
}

/* Tensors must tile [0, data_len) exactly, as safetensors requires: an
 * overlap would let two tensors alias, a hole or trailing bytes would hide
 * data no reader checks. */
static fo_status check_tiling_sorted(const char *fn, const fo_st_file *f,
                                     const fo_st_tensor *const *s) {
  uint64_t at = 0, extent = 0;
  int contiguous = 1;
  for (int64_t i = 0; i < f->num_tensors; i++) {
    if (i > 0 && s[i]->begin < s[i - 1]->end)
      return fo_fail(FO_ERR_CHECKPOINT, fn,
                     "tensors \"%.60s\" [%llu, %llu] and \"%.60s\" [%llu, %llu] overlap",
                     s[i - 1]->name, (unsigned long long)s[i - 1]->begin,
                     (unsigned long long)s[i - 1]->end, s[i]->name, (unsigned long long)s[i]->begin,
                     (unsigned long long)s[i]->end);
    if (s[i]->begin != at) contiguous = 0;
    at = s[i]->end;
    if (at > extent) extent = at;
  }
  if (contiguous && extent > f->data_len)
    return fo_fail(FO_ERR_CHECKPOINT, fn,
                   "truncated: the header describes %llu bytes of tensor data, the file holds "
                   "%llu",
                   (unsigned long long)extent, (unsigned long long)f->data_len);
  for (int64_t i = 0; i < f->num_tensors; i++)
    if (s[i]->end > f->data_len)
      return fo_fail(FO_ERR_CHECKPOINT, fn,
                     "tensor \"%.80s\": data_offsets [%llu, %llu] lie outside the data section "
                     "(%llu bytes)",
                     s[i]->name, (unsigned long long)s[i]->begin, (unsigned long long)s[i]->end,
                     (unsigned long long)f->data_len);
  at = 0;
  for (int64_t i = 0; i < f->num_tensors; i++) {
    if (s[i]->begin != at)
      return fo_fail(FO_ERR_CHECKPOINT, fn,
                     "bytes [%llu, %llu) of the data section belong to no tensor",
                     (unsigned long long)at, (unsigned long long)s[i]->begin);
    at = s[i]->end;
  }
  if (at != f->data_len)
    return fo_fail(FO_ERR_CHECKPOINT, fn,
                   "%llu bytes follow the last tensor's data (the data section has %llu)",
                   (unsigned long long)(f->data_len - at), (unsigned long long)f->data_len);
  return FO_SUCCESS;
}

static fo_status check_tiling(const char *fn, const fo_st_file *f) {
  const fo_st_tensor **s = malloc((size_t)(f->num_tensors + 1) * sizeof *s);
  if (!s) return fo_fail(FO_ERR_OUT_OF_MEMORY, fn, "no memory for the tensor table");
  for (int64_t i = 0; i < f->num_tensors; i++) s[i] = &f->tensors[i];
  qsort(s, (size_t)f->num_tensors, sizeof *s, begin_cmp);
  fo_status st = check_tiling_sorted(fn, f, s);
  free(s);
  return st;
}

static fo_status read_entries(const char *fn, fo_st_file *f) {
  const fo_json_value *root = &f->doc.values[0];
  f->tensors = malloc((size_t)(root->count + 1) * sizeof *f->tensors);
  if (!f->tensors) return fo_fail(FO_ERR_OUT_OF_MEMORY, fn, "no memory for the tensor table");
  for (int64_t c = root->first; c >= 0; c = f->doc.values[c].next) {
    const fo_json_value *v = &f->doc.values[c];
    fo_status st;
    if (key_is(v, "__metadata__"))
      st = read_meta(fn, f, v);
    else
      st = read_tensor(fn, &f->doc, v, &f->tensors[f->num_tensors++]);
    if (st != FO_SUCCESS) return st;
  }
  qsort(f->tensors, (size_t)f->num_tensors, sizeof *f->tensors, tensor_cmp);
  return FO_SUCCESS;
}

fo_status fo_st_parse(const char *fn, const unsigned char *buf, size_t len, fo_st_file *out) {
  uint64_t hl = 0;
  fo_status st = check_frame(fn, buf, len, &hl);
  if (st != FO_SUCCESS) return st;
  fo_st_file f;
  memset(&f, 0, sizeof f);
  st = fo_json_parse(fn, (const char *)buf + 8, (size_t)hl, 8, &f.doc);
  if (st != FO_SUCCESS) return st;
  f.data = buf + 8 + hl;
  f.data_len = (uint64_t)len - 8 - hl;
  if (f.doc.values[0].type != FO_JSON_OBJECT)
    st = fo_fail(FO_ERR_CHECKPOINT, fn, "the header is not a JSON object");
  if (st == FO_SUCCESS) st = read_entries(fn, &f);
  if (st == FO_SUCCESS) st = check_tiling(fn, &f);
  if (st != FO_SUCCESS) {
    fo_st_free(&f);
    return st;
  }
  *out = f;
  return FO_SUCCESS;
}

void fo_st_free(fo_st_file *f) {
  fo_json_free(&f->doc);
  free(f->tensors);
  free(f->meta);
  memset(f, 0, sizeof *f);
}

/* Binary search of n records of `size` bytes at base, sorted by the name
 * each holds at name_at (a const char *) with its length at len_at (a
 * size_t); NULL when none is name. */
static const void *find_sorted(const void *base, int64_t n, size_t size, size_t name_at,
                               size_t len_at, const char *name, size_t len) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    int64_t mid = lo + (hi - lo) / 2;
    const char *rec = (const char *)base + (size_t)mid * size;
    const char *rec_name;
    size_t rec_len;
    memcpy(&rec_name, rec + name_at, sizeof rec_name);
    memcpy(&rec_len, rec + len_at, sizeof rec_len);
    int c = name_cmp(rec_name, rec_len, name, len);
    if (c == 0) return rec;
    if (c < 0)
      lo = mid + 1;
    else
      hi = mid;
  }
  return NULL;
}

const fo_st_tensor *fo_st_find(const fo_st_file *f, const char *name, size_t len) {
  return find_sorted(f->tensors, f->num_tensors, sizeof *f->tensors, offsetof(fo_st_tensor, name),
                     offsetof(fo_st_tensor, name_len), name, len);
}

const fo_st_meta *fo_st_find_meta(const fo_st_file *f, const char *key, size_t len) {
  return find_sorted(f->meta, f->num_meta, sizeof *f->meta, offsetof(fo_st_meta, key),
                     offsetof(fo_st_meta, key_len), key, len);
}

void fo_st_shape_string(const fo_st_file *f, const fo_st_tensor *t, char *out, size_t cap) {
  const fo_json_value *s = &f->doc.values[t->shape_value];
  size_t n = (size_t)snprintf(out, cap, "[");
  for (int64_t c = s->first; c >= 0 && n < cap; c = f->doc.values[c].next)
    n += (size_t)snprintf(out + n, cap - n, "%s%llu", c == s->first ? "" : ", ",
                          (unsigned long long)f->doc.values[c].u);
  if (n < cap) snprintf(out + n, cap - n, "]");
}
