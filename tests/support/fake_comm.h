/*
 * fake_comm.h -- a fake host communicator back-end for the CPU tier of the
 * communicators, in one process (test_comm_*.c, test_shard.c).
 *
 * The fake plays N ranks that all hold this rank's gradients: its
 * all-reduce multiplies the buffer by N (in the wire dtype, exactly: N is
 * a power of two), so averaging gives back the gradients.  It logs every
 * all-reduce, and fails the k-th on request.
 *
 * The sharded variant (fake_shard_comm) refuses to all-reduce (a sharded
 * state never all-reduces its gradients); its reduce-scatter multiplies
 * this rank's part by N and fills the others with NaN; its all-gather
 * counts the bytes and leaves the buffer alone.  Either fails its k-th
 * call on request.  Real multi-rank sums are tests/mpi's.
 */
#ifndef FO_TEST_FAKE_COMM_H
#define FO_TEST_FAKE_COMM_H

#include <stdint.h>

#include "fusedopt.h"

#define FAKE_LOG 64

typedef struct fake {
  int rank, size; /* size: simulated ranks */
  /* all-reduce */
  int fail_at; /* 1-based call that fails; 0: none */
  int calls;
  int released;
  int64_t elems; /* summed over every call */
  int64_t count[FAKE_LOG];
  fo_dtype dtype[FAKE_LOG];
  void *buf[FAKE_LOG];
  /* reduce-scatter and all-gather */
  int fail_rs, fail_ag; /* 1-based reduce-scatter / all-gather call that fails */
  int rs_calls, ag_calls;
  int64_t ag_bytes; /* over every all-gather */
} fake;

/* The all-reduce back-end's operations (with release), ctx a fake. */
fo_comm_ops fake_ops(void);
/* Rank 0 of size over f (cleared first). */
fo_comm *fake_comm(fake *f, int size);
/* Rank rank of size over f (cleared first), refusing to all-reduce; with
 * the reduce-scatter and all-gather operations when with_shard_ops is 1,
 * the reduce-scatter alone when it is 2. */
fo_comm *fake_shard_comm(fake *f, int rank, int size, int with_shard_ops);

#endif /* FO_TEST_FAKE_COMM_H */
