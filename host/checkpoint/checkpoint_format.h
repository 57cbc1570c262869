/*
 * checkpoint_format.h -- the checkpoint file format, as pure functions over
 * memory buffers (no file I/O, no CUDA, no communicator): what the saves
 * and loads (checkpoint_save.c, checkpoint_load.c) call and what the fuzz
 * target (tests/fuzz/) drives directly.  Not installed.
 *
 * Where it is implemented (all in host/checkpoint/):
 *   checkpoint_json.c, _safetensors.c  the container: JSON, CRC-32, layout;
 *   checkpoint_text.c                  strings and numbers of the header;
 *   checkpoint_meta.c                  the "__metadata__" map, typed;
 *   checkpoint_schema.c                the table of what a file holds;
 *   checkpoint_naming.c                tensor keys, order, places (the plan);
 *   checkpoint_header_write.c          the header a save writes;
 *   checkpoint_header_read.c           opening a file, checksums, fo_ckpt_verify;
 *   checkpoint_fit.c                   does a file fit an optimizer;
 *   checkpoint_tiling.c                every rank's files of one save;
 *   checkpoint_apply.c                 the copies a valid file becomes.
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

#include "checkpoint_safetensors.h"
#include "internal.h"

/* The newest format this library reads (every older one it reads too). */
#define FO_CKPT_FORMAT_VERSION 2
/* The version written: a whole state keeps version 1, which every reader
 * loads; a per-rank file of a sharded state needs version 2 (a version-1
 * reader refuses it as newer instead of misreading its pieces). */
#define FO_CKPT_FORMAT_WHOLE 1
#define FO_CKPT_FORMAT_SHARD 2

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

/* Run the restore's copies into opt's buffers, through its executor
 * (host/exec.h: a memcpy on the CPU); hyper-parameters and the step state are the caller's to set.
 * Stops at the first failing copy (the caller then treats the optimizer as
 * half-restored).  stop_after >= 0: fail as injected after that many
 * copies (the test hook of fo_inject_fault). */
fo_status fo_ckpt_apply_tensors(const char *func, fo_optimizer *opt, const fo_ckpt_restore *r,
                                int64_t stop_after);

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

/* Tensor t's whole buffer of a state role (an unsharded optimizer's). */
float *fo_ckpt_whole_state(const fo_plan_tensor *t, fo_role r);
/* The part of tensor i's elements that lies in a shard [first, first +
 * count) of opt's arena: [*lo, *hi), tensor-local (empty when *lo == *hi). */
void fo_ckpt_piece_of(const fo_optimizer *opt, int64_t i, int64_t first, int64_t count, int64_t *lo,
                      int64_t *hi);

/* The JSON header for opt, its step state and the plan (with the CRCs
 * now in the entries; a per-rank plan adds its shard and version 2),
 * padded so that 8 + *len is a multiple of 8.  Its
 * length does not depend on the CRC values, so a header written with
 * zeros first can be overwritten in place once the data is written.
 * *text is malloc'd. */
fo_status fo_ckpt_header(const char *func, const fo_optimizer *opt, const fo_step_state *state,
                         const fo_ckpt_plan *plan, char **text, size_t *len);

#endif /* FO_CHECKPOINT_FORMAT_H */
