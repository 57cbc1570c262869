/*
 * checkpoint_shard.h -- what the checkpoints of a data-parallel optimizer
 * need of its communicator (host/checkpoint/checkpoint_shard.c): the ranks' agreement
 * on the outcome of a collective save or load, and the gathering of a
 * sharded state, window by window.  Not installed.
 */
#ifndef FO_CHECKPOINT_SHARD_H
#define FO_CHECKPOINT_SHARD_H

#include <stdint.h>

#include "internal.h"

/* This rank's index and the number of ranks of opt's communicator (0 and
 * 1 without one). */
void fo_ckpt_comm_shape(const fo_optimizer *opt, int *rank, int *size);

/* Every rank of opt's communicator (one must be attached) calls this with
 * its own outcome `local` (its fo_last_error() holds the message of a
 * failure), and, when `compare`, the step and fingerprint of what it
 * loaded.  Every rank returns the same: FO_SUCCESS when every rank
 * succeeded (and the fingerprints are all rank 0's), else the status of
 * the lowest failing rank with fo_last_error() set to "func: rank r of N:
 * <its message>" on every rank (FO_ERR_CHECKPOINT when the fingerprints
 * differ).  One all-gather of a 512-byte record per rank (on FO_EXEC_CUDA
 * through device memory, enqueued on stream, waited for).  A failing
 * exchange returns its FO_ERR_COMM, on the ranks where it fails. */
fo_status fo_ckpt_agree(const char *func, const fo_optimizer *opt, fo_status local, int64_t step,
                        uint32_t fingerprint, int compare, fo_stream_t stream);

/* Gathering a sharded state, window by window. */
typedef struct fo_ckpt_gather fo_ckpt_gather;

/* Buffers for windows of `window` elements (0: the default) of a sharded
 * opt (in the executor's memory; with want_host on FO_EXEC_CUDA a host
 * copy too). */
fo_status fo_ckpt_gather_open(const char *func, const fo_optimizer *opt, fo_stream_t stream,
                              int want_host, int64_t window, fo_ckpt_gather **out);
/* The window a gathered save uses: 4 Mi elements (16 MiB of fp32); in the
 * test suite's build (FO_TESTING), what fo_ckpt_set_gather_window set. */
int64_t fo_ckpt_gather_window_size(void);
void fo_ckpt_gather_close(fo_ckpt_gather *g);
/* The most elements one window holds. */
int64_t fo_ckpt_gather_cap(const fo_ckpt_gather *g);

/* Every rank calls this with the same role and arena elements [at, at +
 * n), n <= the cap: each copies in the part of its shard (copy_in 0: a
 * rank that already failed takes part without copying) and the window is
 * all-gathered.  *host (want_host): the n gathered floats in host memory,
 * valid until the next call.  A failure with *fatal set is the
 * collective's own (FO_ERR_COMM): the caller must stop, the ranks may
 * disagree on what comes next.  Otherwise a failure is one of this rank's
 * copies: the caller goes on taking part, and reports it when the ranks
 * agree on the outcome. */
fo_status fo_ckpt_gather_window(fo_ckpt_gather *g, fo_role role, int64_t at, int64_t n, int copy_in,
                                const void **host, int *fatal);

#ifdef FO_TESTING
/* The test suite's build only: the window of later gathered saves, in
 * elements, in every thread; 0 restores the default. */
void fo_ckpt_set_gather_window(int64_t elems);
#endif

#endif /* FO_CHECKPOINT_SHARD_H */
