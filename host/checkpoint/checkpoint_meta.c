/*
 * checkpoint_meta.c -- building and reading a checkpoint's metadata
 * (checkpoint_meta.h).
 */
#include "checkpoint_meta.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------- building */

void fo_meta_add(fo_meta_list *l, const char *key, size_t key_len, const char *value) {
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
  fo_sb_put(&l->text, key, key_len);
  fo_sb_put(&l->text, "", 1);
  l->off[2 * l->n + 1] = l->text.len;
  fo_sb_str(&l->text, value);
  fo_sb_put(&l->text, "", 1);
  l->n++;
}

void fo_meta_put(fo_meta_list *l, const char *name, const char *value) {
  char k[96];
  snprintf(k, sizeof k, FO_META_PREFIX "%s", name);
  fo_meta_add(l, k, strlen(k), value);
}

static int meta_cmp(const void *x, const void *y) {
  const fo_st_meta *a = x, *b = y;
  int c = memcmp(a->key, b->key, a->key_len < b->key_len ? a->key_len : b->key_len);
  if (c) return c;
  return (a->key_len > b->key_len) - (a->key_len < b->key_len);
}

int fo_meta_finish(fo_meta_list *l) {
  if (l->text.failed) return 0;
  free(l->sorted);
  l->sorted = malloc((size_t)(l->n + 1) * sizeof *l->sorted);
  if (!l->sorted) return 0;
  for (int64_t i = 0; i < l->n; i++) {
    const char *k = l->text.p + l->off[2 * i], *v = l->text.p + l->off[2 * i + 1];
    l->sorted[i] = (fo_st_meta){k, v, l->off[2 * i + 1] - l->off[2 * i] - 1, strlen(v)};
  }
  qsort(l->sorted, (size_t)l->n, sizeof *l->sorted, meta_cmp);
  return 1;
}

void fo_meta_free(fo_meta_list *l) {
  free(l->text.p);
  free(l->off);
  free(l->sorted);
}

uint32_t fo_meta_crc(const fo_crc32 *c, const fo_st_meta *m, int64_t n) {
  uint32_t crc = 0;
  size_t plen = strlen(FO_META_PREFIX);
  for (int64_t i = 0; i < n; i++) {
    if (m[i].key_len < plen || memcmp(m[i].key, FO_META_PREFIX, plen) != 0) continue;
    if (m[i].key_len == strlen(FO_META_CRC_KEY) &&
        memcmp(m[i].key, FO_META_CRC_KEY, m[i].key_len) == 0)
      continue;
    crc = fo_crc32_update(c, crc, m[i].key, m[i].key_len + 1);
    crc = fo_crc32_update(c, crc, m[i].value, m[i].value_len + 1);
  }
  return crc;
}

/* -------------------------------------------------------------- reading */

fo_status fo_meta_find(const fo_meta_reader *r, const char *name, const fo_st_meta **out) {
  char k[128];
  snprintf(k, sizeof k, FO_META_PREFIX "%s", name);
  *out = fo_st_find_meta(r->f, k, strlen(k));
  if (!*out) return fo_fail(FO_ERR_CHECKPOINT, r->fn, "the metadata lacks \"%s\"", k);
  return FO_SUCCESS;
}

fo_status fo_meta_bad_value(const fo_meta_reader *r, const fo_st_meta *m, const char *what) {
  return fo_fail(FO_ERR_CHECKPOINT, r->fn, "metadata \"%s\" = \"%.40s\" is not %s", m->key,
                 m->value, what);
}

fo_status fo_meta_get_int(const fo_meta_reader *r, const char *name, int64_t lo, int64_t hi,
                          int64_t *out) {
  const fo_st_meta *m;
  fo_status st = fo_meta_find(r, name, &m);
  if (st != FO_SUCCESS) return st;
  int64_t v;
  if (!fo_parse_i64(m->value, m->value_len, &v))
    return fo_meta_bad_value(r, m, "a decimal integer");
  if (v < lo || v > hi) {
    char what[96];
    snprintf(what, sizeof what, "in [%lld, %lld]", (long long)lo, (long long)hi);
    return fo_meta_bad_value(r, m, what);
  }
  *out = v;
  return FO_SUCCESS;
}

fo_status fo_meta_get_float(const fo_meta_reader *r, const char *name, float *out) {
  const fo_st_meta *m;
  fo_status st = fo_meta_find(r, name, &m);
  if (st != FO_SUCCESS) return st;
  if (!fo_parse_hex_float(m->value, m->value_len, out))
    return fo_meta_bad_value(r, m, "an exact float32 in hexadecimal (as float.hex() writes it)");
  return FO_SUCCESS;
}

fo_status fo_meta_get_enum(const fo_meta_reader *r, const char *name, const char *const *names,
                           int n, int *out) {
  const fo_st_meta *m;
  fo_status st = fo_meta_find(r, name, &m);
  if (st != FO_SUCCESS) return st;
  for (int i = 0; i < n; i++)
    if (strlen(names[i]) == m->value_len && memcmp(names[i], m->value, m->value_len) == 0) {
      *out = i;
      return FO_SUCCESS;
    }
  return fo_meta_bad_value(r, m, "a known name");
}

fo_status fo_meta_find_per_tensor(const fo_meta_reader *r, const char *prefix, const char *key,
                                  size_t key_len, const fo_st_meta **out) {
  fo_sbuf k = {0};
  fo_sb_str(&k, prefix);
  fo_sb_put(&k, key, key_len);
  if (k.failed) return fo_fail(FO_ERR_OUT_OF_MEMORY, r->fn, "no memory for a metadata key");
  *out = fo_st_find_meta(r->f, k.p, k.len);
  free(k.p);
  return FO_SUCCESS;
}
