/*
 * checkpoint_format.h -- the checkpoint file format, as pure functions over
 * memory buffers (no file I/O, no CUDA, no communicator): what
 * host/checkpoint.c calls and what the fuzz target (tests/fuzz/) drives
 * directly.  Not installed.
 *
 * A checkpoint is a safetensors file (docs/reliability.md has the layout):
 *   8 bytes   little-endian u64 N, the header's length;
 *   N bytes   a JSON object: "__metadata__" (string -> string) and, per
 *             tensor, {"dtype", "shape", "data_offsets"}, padded with
 *             spaces so that the data starts at a multiple of 8;
 *   the data  every tensor's bytes, back to back, no holes.
 * fusedopt's own state (format version, algorithm, options, per-group
 * hyper-parameters, step state, a CRC-32 per tensor and one over its own
 * metadata) lives in "__metadata__" under keys "fusedopt.*".
 *
 * Two kinds of file.  A whole checkpoint (format version 1) holds every
 * buffer whole.  A per-rank file of a sharded state (ZeRO-1, format
 * version 2) holds the parameters whole and, of each state buffer, only
 * the piece of each tensor that falls in the rank's shard of the arena,
 * under the same key; "fusedopt.shard.*" names the shard (rank, size,
 * first, count, total) and each piece's first element in its tensor.
 */
#ifndef FO_CHECKPOINT_FORMAT_H
#define FO_CHECKPOINT_FORMAT_H

#include <stddef.h>
#include <stdint.h>

#include "checkpoint_json.h"
#include "internal.h"

/* The newest format this library reads (every older one it reads too). */
#define FO_CKPT_FORMAT_VERSION 2
/* The version written: a whole state keeps version 1, which every reader
 * loads; a per-rank file of a sharded state needs version 2 (a version-1
 * reader refuses it as newer instead of misreading its pieces). */
#define FO_CKPT_FORMAT_WHOLE 1
#define FO_CKPT_FORMAT_SHARD 2
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

/* -------------------------------------------------------- fusedopt level */

/* A rank's shard of the arena, as a per-rank file records it: the
 * elements [first, first + count) of total, rank rank of size ranks. */
typedef struct fo_ckpt_shard {
  int rank, size;
  int64_t first, count, total;
} fo_ckpt_shard;

/* One copy of a load: bytes from the file buffer into executor memory. */
typedef struct fo_ckpt_copy {
  void *dst;
  const unsigned char *src;
  size_t bytes;
} fo_ckpt_copy;

/* What a valid checkpoint restores, decoded and checked against an
 * optimizer, before anything is written. */
typedef struct fo_ckpt_restore {
  int version;
  fo_hparams hparams[FO_MAX_GROUPS];
  fo_step_state state; /* the saved fields; per-step scalars zero */
  /* The copies that write the saved buffers into the optimizer (its whole
   * buffers, or with a sharded state its shard's slice of the state
   * buffers), pointing into the caller's file buffers. */
  fo_ckpt_copy *copies;
  int64_t num_copies, cap_copies;
  /* CRC-32 over the step state, the hyper-parameters and the parameters'
   * checksums: equal for every file of one save (the ranks compare it). */
  uint32_t fingerprint;
  int sharded_file;    /* the file was a per-rank file ... */
  fo_ckpt_shard shard; /* ... of this shard */
} fo_ckpt_restore;

/* Check a checkpoint in memory on its own: the container, the format
 * version, the metadata checksum and every tensor's checksum. */
fo_status fo_ckpt_verify(const char *func, const unsigned char *buf, size_t len);

/* Everything fo_ckpt_verify checks, and that the checkpoint fits opt: the
 * algorithm and the options that decide what state exists, the groups,
 * every tensor's name, dtype and shape, hyper-parameters that
 * fo_optimizer_set_hparams would accept, a step state the loss scaler can
 * continue from.  A whole checkpoint fits any optimizer (a sharded one
 * takes its shard's slice of the state); a per-rank file fits only a
 * sharded optimizer of the same shard (rank, size, first, count, total).
 * Reads opt, never writes it. */
fo_status fo_ckpt_validate(const char *func, const fo_optimizer *opt, const unsigned char *buf,
                           size_t len, fo_ckpt_restore *out);

/* The per-rank files of one save of a sharded state, every rank's once,
 * in any order (bufs[k] of lens[k] bytes, read from paths[k], which the
 * messages name after func), assembled for opt: unsharded (the whole
 * state) or sharded over any number of ranks (its own shard's slice).
 * Each file is checked as fo_ckpt_validate checks one; besides, the files
 * must tile the arena in rank order and hold one step state, one set of
 * hyper-parameters and the same parameters (taken from rank 0's file).
 * Reads opt, never writes it. */
fo_status fo_ckpt_validate_shards(const char *func, const fo_optimizer *opt, int n,
                                  const unsigned char *const *bufs, const size_t *lens,
                                  const char *const *paths, fo_ckpt_restore *out);
void fo_ckpt_restore_free(fo_ckpt_restore *r);

/* Copy bytes into the executor's memory; 0 on success. */
typedef fo_status (*fo_ckpt_copy_fn)(void *ctx, void *dst, const void *src, size_t bytes);

/* Run the restore's copies into opt's buffers with copy (memcpy for host
 * memory); hyper-parameters and the step state are the caller's to set.
 * Stops at the first failing copy (the caller then treats the optimizer as
 * half-restored).  stop_after >= 0: fail as injected after that many
 * copies (the test hook of fo_inject_fault). */
fo_status fo_ckpt_apply_tensors(const char *func, fo_optimizer *opt, const fo_ckpt_restore *r,
                                fo_ckpt_copy_fn copy, void *ctx, int64_t stop_after);

/* The host copy function for fo_ckpt_apply_tensors. */
fo_status fo_ckpt_copy_host(void *ctx, void *dst, const void *src, size_t bytes);

/* ---------------------------------------------------------------- saving */

/* One tensor of a checkpoint being written. */
typedef struct fo_ckpt_entry {
  const char *key; /* inside the plan's key storage */
  int64_t tensor;
  fo_role role;
  int dtype; /* safetensors dtype */
  /* The tensor's elements [first, first + numel): the whole tensor, or a
   * state buffer's piece in a per-rank file. */
  int64_t first, numel;
  uint64_t bytes, begin;
  uint32_t crc; /* filled in while the data is written */
} fo_ckpt_entry;

typedef struct fo_ckpt_plan {
  fo_ckpt_entry *e;
  int64_t n;
  char *keys;
  uint64_t data_len;
  int sharded;         /* a per-rank file's plan ... */
  fo_ckpt_shard shard; /* ... of this shard */
} fo_ckpt_plan;

/* Name, order and place every buffer of opt's own file: the per-rank file
 * of its shard with a sharded state, else the whole checkpoint.  Fails
 * (FO_ERR_INVALID_STATE) when two keys would be equal or a name is not
 * valid UTF-8. */
fo_status fo_ckpt_plan_build(const char *func, const fo_optimizer *opt, fo_ckpt_plan *out);
/* The same for the whole checkpoint of opt's state (shard NULL; what a
 * gathered save writes), or for the per-rank file of shard, a shard of
 * opt's arena (opt->total_elems == shard->total). */
fo_status fo_ckpt_plan_build_for(const char *func, const fo_optimizer *opt,
                                 const fo_ckpt_shard *shard, fo_ckpt_plan *out);
void fo_ckpt_plan_free(fo_ckpt_plan *p);

/* The executor-memory address of an entry's buffer: the parameters, or
 * the state it names -- for a sharded optimizer only a piece inside its
 * own shard (NULL otherwise). */
const void *fo_ckpt_entry_src(const fo_optimizer *opt, const fo_ckpt_entry *e);

/* The JSON header for opt, its step state and the plan (with the CRCs
 * now in the entries; a per-rank plan adds its shard and version 2),
 * padded so that 8 + *len is a multiple of 8.  Its
 * length does not depend on the CRC values, so a header written with
 * zeros first can be overwritten in place once the data is written.
 * *text is malloc'd. */
fo_status fo_ckpt_header(const char *func, const fo_optimizer *opt, const fo_step_state *state,
                         const fo_ckpt_plan *plan, char **text, size_t *len);

#endif /* FO_CHECKPOINT_FORMAT_H */
