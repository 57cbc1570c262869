/*
 * checkpoint_safetensors.h -- the safetensors container a checkpoint is
 * (host/checkpoint/checkpoint_safetensors.c): CRC-32, dtypes, and the
 * parser that checks a file's header and layout.  Pure functions over
 * memory; docs/reliability.md has the layout.  Not installed.
 */
#ifndef FO_CHECKPOINT_SAFETENSORS_H
#define FO_CHECKPOINT_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "checkpoint_json.h"
#include "internal.h"

/* safetensors' own limit on the header (100 MB): a larger header is a
 * corrupt length, not a real file. */
#define FO_ST_MAX_HEADER ((uint64_t)100000000)

/* ------------------------------------------------------------------ CRC */

/* CRC-32 of IEEE 802.3 (zlib's crc32, Python's zlib.crc32), slicing by 8.
 * The tables are built per call site (8 KiB, microseconds) rather than
 * kept in a global. */
typedef struct fo_crc32 {
  uint32_t t[8][256];
} fo_crc32;

void fo_crc32_init(fo_crc32 *c);
/* Continue crc (0 to start) over n bytes. */
uint32_t fo_crc32_update(const fo_crc32 *c, uint32_t crc, const void *data, size_t n);

/* ----------------------------------------------------------- safetensors */

/* safetensors dtypes; fusedopt writes only F32, F16 and BF16, but reads
 * the names of all so a foreign file gets a precise message. */
int fo_st_dtype_size(int dtype);
const char *fo_st_dtype_name(int dtype);
/* The safetensors dtype of an fo_dtype. */
int fo_st_dtype_of(fo_dtype d);

typedef struct fo_st_tensor {
  const char *name; /* decoded, NUL-terminated */
  size_t name_len;
  int dtype;
  int64_t numel;       /* product of the shape */
  int64_t shape_value; /* index of the shape array in the JSON document */
  uint64_t begin, end; /* data_offsets, relative to the data section */
} fo_st_tensor;

typedef struct fo_st_meta {
  const char *key, *value; /* decoded, NUL-terminated */
  size_t key_len, value_len;
} fo_st_meta;

typedef struct fo_st_file {
  fo_json_doc doc;
  fo_st_tensor *tensors; /* sorted by name */
  int64_t num_tensors;
  fo_st_meta *meta; /* sorted by key; NULL when there is no __metadata__ */
  int64_t num_meta;
  const unsigned char *data; /* the data section, inside the caller's buffer */
  uint64_t data_len;
} fo_st_file;

/* Parse and check the container: header length, JSON, every tensor entry,
 * and that the tensors tile the data section exactly (no overlap, no hole,
 * nothing out of range or missing).  Does not read the data.  *out points
 * into buf, which must outlive it. */
fo_status fo_st_parse(const char *func, const unsigned char *buf, size_t len, fo_st_file *out);
void fo_st_free(fo_st_file *f);

/* Lookups by exact (binary) name; NULL when absent. */
const fo_st_tensor *fo_st_find(const fo_st_file *f, const char *name, size_t len);
const fo_st_meta *fo_st_find_meta(const fo_st_file *f, const char *key, size_t len);

/* Write "[d0, d1, ...]" of a tensor's shape into out (for messages). */
void fo_st_shape_string(const fo_st_file *f, const fo_st_tensor *t, char *out, size_t cap);

#endif /* FO_CHECKPOINT_SAFETENSORS_H */
