/*
 * checkpoint_header_read.c -- opening a checkpoint: the container, the
 * format version, the checksums of the metadata and of each tensor, and
 * the bound on a header's length; fo_ckpt_verify, which checks a file on
 * its own.
 */
#include <stdlib.h>
#include <string.h>

#include "checkpoint_format.h"
#include "checkpoint_header.h"
#include "checkpoint_schema.h"

/* The fuzz build (tests/fuzz) accepts a checksum mismatch, as fuzzing
 * builds customarily do, so that mutated values reach the checks behind
 * the checksums; tests/test_checkpoint_errors.c covers the mismatch. */
#ifdef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
#define CRC_DIFFERS(got, want) ((void)(got), (void)(want), 0)
#else
#define CRC_DIFFERS(got, want) ((got) != (want))
#endif

static fo_status check_version(const fo_meta_reader *r, int *version) {
  const fo_st_meta *m = fo_st_find_meta(r->f, FO_META_VERSION_KEY, strlen(FO_META_VERSION_KEY));
  if (!m)
    return fo_fail(FO_ERR_CHECKPOINT, r->fn,
                   "not a fusedopt checkpoint: the header's __metadata__ has no \"%s\" (a "
                   "plain safetensors file?)",
                   FO_META_VERSION_KEY);
  int64_t v;
  if (!fo_parse_i64(m->value, m->value_len, &v) || v < 1)
    return fo_meta_bad_value(r, m, "a positive integer");
  if (v > FO_CKPT_FORMAT_VERSION)
    return fo_fail(FO_ERR_CHECKPOINT, r->fn,
                   "the checkpoint's format version %lld is newer than this library reads "
                   "(%d): load it with a newer fusedopt",
                   (long long)v, FO_CKPT_FORMAT_VERSION);
  *version = (int)v;
  return FO_SUCCESS;
}

static fo_status check_meta_crc(const fo_meta_reader *r, const fo_crc32 *c) {
  const fo_st_meta *m = fo_st_find_meta(r->f, FO_META_CRC_KEY, strlen(FO_META_CRC_KEY));
  if (!m) return fo_fail(FO_ERR_CHECKPOINT, r->fn, "the metadata lacks \"%s\"", FO_META_CRC_KEY);
  uint32_t want;
  if (!fo_parse_crc(m->value, m->value_len, &want)) return fo_meta_bad_value(r, m, "8 hex digits");
  uint32_t got = fo_meta_crc(c, r->f->meta, r->f->num_meta);
  if (CRC_DIFFERS(got, want))
    return fo_fail(FO_ERR_CHECKPOINT, r->fn,
                   "metadata checksum mismatch (stored %08x, computed %08x): the header was "
                   "modified or is corrupt",
                   (unsigned)want, (unsigned)got);
  return FO_SUCCESS;
}

fo_status fo_ckpt_check_tensor_crc(const fo_meta_reader *r, const fo_crc32 *c,
                                   const fo_st_tensor *t, uint32_t *out) {
  const fo_st_meta *m = NULL;
  fo_status st = fo_meta_find_per_tensor(r, FO_CKPT_CRC_PREFIX, t->name, t->name_len, &m);
  if (st != FO_SUCCESS) return st;
  if (!m)
    return fo_fail(FO_ERR_CHECKPOINT, r->fn, "the metadata lacks the checksum of tensor \"%.80s\"",
                   t->name);
  uint32_t want;
  if (!fo_parse_crc(m->value, m->value_len, &want)) return fo_meta_bad_value(r, m, "8 hex digits");
  uint32_t got = fo_crc32_update(c, 0, r->f->data + t->begin, (size_t)(t->end - t->begin));
  if (out) *out = got;
  if (CRC_DIFFERS(got, want))
    return fo_fail(FO_ERR_CHECKPOINT, r->fn,
                   "tensor \"%.80s\": checksum mismatch (stored %08x, computed %08x): its data "
                   "is corrupt",
                   t->name, (unsigned)want, (unsigned)got);
  return FO_SUCCESS;
}

fo_status fo_ckpt_open(const char *fn, const unsigned char *buf, size_t len, fo_st_file *f,
                       const fo_crc32 *c, int *version) {
  fo_status st = fo_st_parse(fn, buf, len, f);
  if (st != FO_SUCCESS) return st;
  fo_meta_reader r = {fn, f};
  st = check_version(&r, version);
  if (st == FO_SUCCESS) st = check_meta_crc(&r, c);
  if (st != FO_SUCCESS) fo_st_free(f);
  return st;
}

/* The bound: twice the header of opt's own whole checkpoint (a per-rank
 * file adds one offset per state piece, less than doubling it; values of
 * other hyper-parameters and steps differ by bytes), plus 1 MiB of
 * metadata other tools may add; never more than safetensors' limit.  A
 * longer header is no checkpoint of this model, and refusing it before
 * parsing bounds a load's memory and time by the registered tensors
 * instead of the 100 MB limit (a crafted header of small JSON values
 * costs about 44 bytes of memory per byte).  Built from a fresh step
 * state: opt's own may be in device memory. */
uint64_t fo_ckpt_header_bound(const char *fn, const fo_optimizer *opt) {
  fo_ckpt_plan plan;
  fo_step_state s;
  fo_step_state_init(&opt->options, &s);
  if (fo_ckpt_plan_build_for(fn, opt, NULL, &plan) != FO_SUCCESS) return FO_ST_MAX_HEADER;
  char *text = NULL;
  size_t n = 0;
  fo_status st = fo_ckpt_header_text(fn, opt, &s, &plan, &text, &n);
  free(text);
  fo_ckpt_plan_free(&plan);
  if (st != FO_SUCCESS) return FO_ST_MAX_HEADER;
  uint64_t bound = 2 * (uint64_t)n + ((uint64_t)1 << 20);
  return bound < FO_ST_MAX_HEADER ? bound : FO_ST_MAX_HEADER;
}

/* Headers that run past the file or past safetensors' limit are left to
 * the container check, which names those faults. */
fo_status fo_ckpt_check_header_bound(const char *fn, const fo_optimizer *opt,
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

/* What fusedopt writes for every tensor: a 1-D array of F32, F16 or BF16.
 * The header's tensor entries are under no checksum (format versions 1
 * and 2 checksum the metadata and each tensor's bytes), so this is what
 * verify can say of them without an optimizer. */
static fo_status check_tensor_entry(const fo_meta_reader *r, const fo_st_tensor *t) {
  const int d = t->dtype;
  if (d != fo_st_dtype_of(FO_DTYPE_F32) && d != fo_st_dtype_of(FO_DTYPE_F16) &&
      d != fo_st_dtype_of(FO_DTYPE_BF16))
    return fo_fail(FO_ERR_CHECKPOINT, r->fn,
                   "tensor \"%.80s\" has dtype %s; fusedopt writes only F32, F16 and BF16", t->name,
                   fo_st_dtype_name(d));
  if (r->f->doc.values[t->shape_value].count != 1) {
    char shape[96];
    fo_st_shape_string(r->f, t, shape, sizeof shape);
    return fo_fail(FO_ERR_CHECKPOINT, r->fn,
                   "tensor \"%.80s\" has shape %s; fusedopt writes only 1-D arrays", t->name,
                   shape);
  }
  return FO_SUCCESS;
}

fo_status fo_ckpt_verify(const char *fn, const unsigned char *buf, size_t len) {
  fo_crc32 *c = malloc(sizeof *c);
  if (!c) return fo_fail(FO_ERR_OUT_OF_MEMORY, fn, "no memory for the CRC tables");
  fo_crc32_init(c);
  fo_st_file f;
  int version;
  fo_status st = fo_ckpt_open(fn, buf, len, &f, c, &version);
  if (st == FO_SUCCESS) {
    fo_meta_reader r = {fn, &f};
    for (int64_t i = 0; i < f.num_tensors && st == FO_SUCCESS; i++) {
      st = check_tensor_entry(&r, &f.tensors[i]);
      if (st == FO_SUCCESS) st = fo_ckpt_check_tensor_crc(&r, c, &f.tensors[i], NULL);
    }
    fo_st_free(&f);
  }
  free(c);
  return st;
}
