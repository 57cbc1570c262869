/*
 * comm_internal.h -- what the data-parallel wing's files share (host/dp/:
 * comm.c, nccl.c, buckets.c, shard.c): the communicator object, the
 * data-parallel attachment of an optimizer, and the back-end calls.  Not
 * installed; the step sees the wing through dp.h.  The checkpoint code's
 * collective saves and loads use the communicator calls below.
 */
#ifndef FO_COMM_INTERNAL_H
#define FO_COMM_INTERNAL_H

#include "dp.h"

/* Room for a back-end's error message. */
#define FO_COMM_ERR_CAP 256

/* NCCL's calls, loaded on demand (nccl.c). */
typedef struct fo_nccl_lib fo_nccl_lib;

struct fo_comm {
  fo_comm_kind kind;
  int rank, size;
  int attached; /* optimizers attached: destroy refuses while > 0 */
  /* FO_COMM_NCCL */
  fo_nccl_comm_t nccl;
  int owns_nccl;    /* created by fo_comm_init_nccl: destroyed with us */
  fo_nccl_lib *lib; /* the loaded NCCL library (nccl.c) */
  int device;       /* the NCCL communicator's CUDA device */
  int broken;       /* an NCCL error left it unusable: refuse, and abort it */
  /* FO_COMM_HOST */
  fo_comm_ops ops;
  void *ctx;
};

/* A run of gradient memory that one collective covers. */
typedef struct fo_dp_segment {
  void *grad;        /* first element, in the executor's memory */
  int64_t count;     /* elements of the gradient dtype */
  int64_t packed_at; /* element offset in the bucket's packed buffer */
} fo_dp_segment;

/* Consecutive tensors whose gradients are reduced together. */
typedef struct fo_dp_bucket {
  int64_t first_tensor, num_tensors;
  int64_t first_seg, num_segs;
  int64_t count;  /* elements over all segments */
  int64_t packed; /* elements of its packed buffer: count and the padding */
  /* Its blocks of the pack table (fo_dp.d_blocks; a bucket that is not
   * packed has none). */
  int64_t first_block, num_blocks;
} fo_dp_bucket;

/* An optimizer's data-parallel attachment. */
typedef struct fo_dp fo_dp;
struct fo_dp {
  fo_comm *comm;
  fo_dp_options options;
  fo_dtype wire; /* dtype on the wire: the gradient dtype, or fp32 */
  int64_t num_buckets, num_segs;
  fo_dp_bucket *buckets;
  fo_dp_segment *segs;
  unsigned char *reduced; /* per bucket: reduced since the last step (1; 2 in a
                           * step: by an earlier call, buckets.c) */
  /* The packed (or widened) bucket, in the executor's memory; NULL when
   * every bucket is reduced in place. */
  void *scratch;
  size_t scratch_bytes;
  /* Per bucket, an event recorded after its reduction, the stream it was
   * enqueued on (the step's stream waits for it; no-ops on the CPU) and
   * the CUDA graph capture that stream was in (fo_exec_ops.capture_of). */
  void **events;
  fo_stream_t *streams;
  uint64_t *captures;
  int64_t last_packed; /* the bucket that last used the scratch, or -1 */
  /* The packed buckets' pack table (plan.h), built at attach and kept in
   * the executor's memory, where the pack op reads it: a step copies
   * nothing to the device.  NULL when no bucket is packed. */
  fo_pack_block *d_blocks;
  /* A sharded state: one sum of squares per rank, in executor memory, for
   * the pre-pass's agreement (fo_dp_agree_sumsq). */
  double *sumsq;
  int64_t *counts; /* per rank: a reduce-scatter's parts (sharded) */
};

/* ---------------------------------------------------------------- shard.c */

/* Make opt's state sharded over comm's ranks (set_comm with shard_state):
 * all or nothing. */
fo_status fo_shard_attach(const char *func, fo_optimizer *opt, fo_comm *comm);
/* Sum the gradient elements [at, at + count) of the arena (buf holds them,
 * in dtype: the arena itself or a packed copy) so that this rank's part
 * holds the sum: a reduce-scatter along the shard boundaries.  counts:
 * room for one count per rank. */
fo_status fo_shard_reduce(const char *func, fo_optimizer *opt, void *buf, int64_t at, int64_t count,
                          fo_dtype dtype, int64_t *counts, fo_stream_t stream);
/* The part of [at, at + count) that lies in this rank's shard:
 * [*lo, *hi) (empty when *lo == *hi). */
void fo_shard_clip(const fo_optimizer *opt, int64_t at, int64_t count, int64_t *lo, int64_t *hi);

/* ---------------------------------------------------- comm.c (dispatch) */

/* Sum count elements of dtype in buf over the ranks (one collective). */
fo_status fo_comm_sum(const char *func, fo_comm *c, void *buf, int64_t count, fo_dtype dtype,
                      fo_stream_t stream);
/* Reduce-scatter with uneven parts (counts per rank, in place; only the
 * own part is defined afterwards) and all-gather with uneven parts (bytes
 * per rank, in place): one NCCL group of ncclReduce / ncclBroadcast calls,
 * or the host ops. */
fo_status fo_comm_reduce_scatter(const char *func, fo_comm *c, void *buf, const int64_t *counts,
                                 fo_dtype dtype, fo_stream_t stream);
fo_status fo_comm_all_gather(const char *func, fo_comm *c, void *buf, const int64_t *bytes,
                             fo_stream_t stream);
/* Whether the communicator can carry a sharded state. */
int fo_comm_can_shard(const fo_comm *c);
/* FO_ERR_COMM when the communicator reports an asynchronous error (a
 * collective that failed after it was enqueued: NCCL). */
fo_status fo_comm_check_async(const char *func, fo_comm *c);

/* ---------------------------------------------------------------- nccl.c */

/* fo_comm_init_nccl's argument checks, the same with or without NCCL
 * (nccl.c, nccl_none.c): the pointers, the rank in [0, size), a usable
 * device. */
static inline fo_status fo_nccl_check_init(const char *fn, fo_comm *const *out,
                                           const fo_nccl_id *id, int rank, int size, int device) {
  if (!out || !id) return fo_fail(FO_ERR_NULL_POINTER, fn, "%s is NULL", out ? "id" : "out");
  if (size < 1 || rank < 0 || rank >= size)
    return fo_fail(FO_ERR_INVALID_ARGUMENT, fn,
                   "rank = %d, size = %d: need size >= 1 and 0 <= rank < size", rank, size);
  if (device < 0) return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "device = %d is negative", device);
  return fo_cuda_available(fn, device);
}

fo_status fo_nccl_sum(const char *func, fo_comm *c, void *buf, int64_t count, fo_dtype dtype,
                      fo_stream_t stream);
fo_status fo_nccl_reduce_scatter(const char *func, fo_comm *c, void *buf, const int64_t *counts,
                                 fo_dtype dtype, fo_stream_t stream);
fo_status fo_nccl_all_gather(const char *func, fo_comm *c, void *buf, const int64_t *bytes,
                             fo_stream_t stream);
fo_status fo_nccl_check_async(const char *func, fo_comm *c);
/* Destroy the NCCL communicator when owned (abort it after an error). */
void fo_nccl_release(fo_comm *c);

#endif /* FO_COMM_INTERNAL_H */
