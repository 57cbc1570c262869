/*
 * checkpoint_meta.h -- a checkpoint's "__metadata__", the string-to-string
 * map that holds fusedopt's own state under "fusedopt.*" keys
 * (host/checkpoint/checkpoint_meta.c): the list a save builds, the
 * checksum over it, and the typed lookups a load makes, with messages
 * that name the key.  Not installed.
 */
#ifndef FO_CHECKPOINT_META_H
#define FO_CHECKPOINT_META_H

#include <stddef.h>
#include <stdint.h>

#include "checkpoint_safetensors.h"
#include "checkpoint_text.h"

#define FO_META_PREFIX "fusedopt."
#define FO_META_CRC_KEY "fusedopt.metadata_crc32"
#define FO_META_VERSION_KEY "fusedopt.format_version"

/* ------------------------------------------------------------- building */

/* Metadata being written: keys and values in one buffer (offsets, since
 * the buffer moves while it grows), then sorted entries.  Zero-initialize;
 * after a failed allocation text.failed is set and nothing more is added. */
typedef struct fo_meta_list {
  fo_sbuf text;
  size_t *off; /* key offset, value offset, per entry */
  int64_t n, cap;
  fo_st_meta *sorted; /* by fo_meta_finish */
} fo_meta_list;

void fo_meta_add(fo_meta_list *l, const char *key, size_t key_len, const char *value);
/* "fusedopt.<name>" = value. */
void fo_meta_put(fo_meta_list *l, const char *name, const char *value);
/* Sort, once the text no longer moves; 0 when memory ran out. */
int fo_meta_finish(fo_meta_list *l);
void fo_meta_free(fo_meta_list *l);

/* The CRC over every "fusedopt.*" entry of m (sorted by key) but the
 * checksum itself, each as key NUL value NUL: Python recomputes it with
 * zlib.crc32 (docs/reliability.md).  Other keys are left out so tools may
 * add metadata of their own. */
uint32_t fo_meta_crc(const fo_crc32 *c, const fo_st_meta *m, int64_t n);

/* -------------------------------------------------------------- reading */

/* A parsed file being read; fn starts every message. */
typedef struct fo_meta_reader {
  const char *fn;
  const fo_st_file *f;
} fo_meta_reader;

/* The entry "fusedopt.<name>"; FO_ERR_CHECKPOINT when it is missing. */
fo_status fo_meta_find(const fo_meta_reader *r, const char *name, const fo_st_meta **out);
/* FO_ERR_CHECKPOINT: m's value "is not <what>". */
fo_status fo_meta_bad_value(const fo_meta_reader *r, const fo_st_meta *m, const char *what);
/* "fusedopt.<name>" as a decimal integer in [lo, hi]. */
fo_status fo_meta_get_int(const fo_meta_reader *r, const char *name, int64_t lo, int64_t hi,
                          int64_t *out);
/* "fusedopt.<name>" as an exact float32 in hexadecimal. */
fo_status fo_meta_get_float(const fo_meta_reader *r, const char *name, float *out);
/* "fusedopt.<name>" as one of names[0 .. n): its index. */
fo_status fo_meta_get_enum(const fo_meta_reader *r, const char *name, const char *const *names,
                           int n, int *out);
/* The entry "<prefix><key>" (a per-tensor entry), NULL when missing;
 * FO_ERR_OUT_OF_MEMORY when the key cannot be built. */
fo_status fo_meta_find_per_tensor(const fo_meta_reader *r, const char *prefix, const char *key,
                                  size_t key_len, const fo_st_meta **out);

#endif /* FO_CHECKPOINT_META_H */
