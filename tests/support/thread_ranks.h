/*
 * thread_ranks.h -- ranks as threads of one process, for the data-parallel
 * checkpoint tests (test_checkpoint_shard_*.c) and the reduction of
 * scattered gradients (test_comm_pack.c, which counts the all-reduces).
 *
 * A "thread world" is a host communicator whose collectives meet at a
 * barrier and read each other's buffers (sums in rank order, each partial
 * sum rounded to the dtype), so N sharded optimizers in one process step,
 * save and load exactly as N processes would (the MPI tier,
 * tests/mpi/test_mpi_ckpt.c, does it with processes).  A barrier that
 * waits 20 s breaks the world: every collective then fails, so a rank that
 * skipped one fails the test instead of hanging it.  Criterion's asserts
 * run on the main thread only; the ranks record (rk), and a fleet (the
 * ranks of one run) runs phases on every rank at once and checks what
 * they recorded.  The model is ckpt_harness.h's.
 */
#ifndef FO_TEST_THREAD_RANKS_H
#define FO_TEST_THREAD_RANKS_H

#include <pthread.h>
#include <stdint.h>

#include "ckpt_harness.h"
#include "fusedopt.h"

#define MAXR 8

/* ------------------------------------------------------- the thread world */

typedef struct tr_world tr_world;

typedef struct tr_peer {
  tr_world *w;
  int rank;
} tr_peer;

struct tr_world {
  int size;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int arrived, broken;
  unsigned gen;
  void *bufs[MAXR];
  tr_peer peers[MAXR];
  int allreduce_calls[MAXR]; /* per rank, written by that rank's thread only */
};

/* A world of size ranks (1..MAXR). */
void tr_world_init(tr_world *w, int size);
/* Rank rank's host communicator over the world (allreduce_sum,
 * reduce_scatter_sum, all_gather). */
fo_comm *tr_world_comm(tr_world *w, int rank);
/* The same with allreduce_sum only (reduce_scatter_sum and all_gather
 * NULL, as a back-end without them may pass): enough for plain data
 * parallelism, not for a sharded state. */
fo_comm *tr_world_comm_allreduce_only(tr_world *w, int rank);
void tr_world_destroy(tr_world *w);

/* --------------------------------------------------------------- ranks */

/* One rank: its optimizer and what its calls returned.  Ranks run on
 * threads, so they record instead of asserting. */
typedef struct rk {
  fo_optimizer *opt;
  fo_comm *comm;
  ck_cfg cfg;
  char failure[400]; /* the first unexpected failure */
  fo_status last;    /* the last call a phase checks */
  char msg[400];     /* and its message */
} rk;

/* Note the first unexpected failure (printf-style). */
void rk_note(rk *r, const char *fmt, ...);

#define RK_OK(r, call)                                                                             \
  do {                                                                                             \
    fo_status s_ = (call);                                                                         \
    if (s_ != FO_SUCCESS) rk_note(r, "%s: %s (%s)", #call, fo_status_string(s_), fo_last_error()); \
  } while (0)

/* Record a checked call's status and message. */
void rk_record(rk *r, fo_status st);

/* The model's first g_nt tensors of ckpt_harness.h (a test may take
 * fewer, for a tiny arena). */
extern int g_nt;

/* Step s of a run over n ranks; rank -1: one process fed the mean. */
void rk_step(rk *r, int rank, int n, int s);

/* An optimizer over fresh tensors whose parameters come from seed (main
 * thread). */
fo_optimizer *rk_make_opt(const ck_cfg *c, uint64_t seed);

/* --------------------------------------------------------------- fleets */

/* n ranks of one run: sharded (ZeRO-1) or plain data parallelism. */
typedef struct fleet {
  tr_world w;
  rk r[MAXR];
  int n, shard;
} fleet;

/* n ranks over a thread world, each an optimizer of c (parameters from
 * seed) with the communicator attached, sharded when shard != 0. */
void fleet_make(fleet *f, const ck_cfg *c, int n, int shard, uint64_t seed);
void fleet_free(fleet *f);

/* What one rank does in a phase (on its own thread). */
typedef void (*phase_fn)(fleet *f, int rank, const void *arg);

/* Run fn on every rank at once, one thread each. */
void fleet_run(fleet *f, phase_fn fn, const void *arg);

/* No rank noted a failure. */
void fleet_expect_ok(fleet *f, const char *what);
/* A phase: steps [from, to) of a steps_arg (each rank its own gradients). */
typedef struct steps_arg {
  int from, to;
} steps_arg;
void phase_steps(fleet *f, int rank, const void *arg);

/* Steps [from, to) on every rank, expected to succeed. */
void fleet_steps(fleet *f, int from, int to);

/* Per-rank paths: "<dir>/<stem>-<rank>.safetensors". */
typedef struct paths {
  char p[MAXR][160];
  const char *v[MAXR];
} paths;

void paths_make(paths *x, const ck_dir *d, const char *stem, int n);

/* What a phase of file calls does on each rank. */
typedef struct file_arg {
  const paths *per_rank; /* rank k's own file */
  const char *one;       /* one file for every rank */
  int root;
  int shards; /* load_shards over per_rank->v[0 .. shards-1] */
} file_arg;

/* Phases over a file_arg, each recording its call: save to the rank's
 * own file; save_gathered to one file at root; load the rank's own file,
 * the one file, or load_shards over the first shards files. */
void phase_save(fleet *f, int rank, const void *arg);
void phase_save_gathered(fleet *f, int rank, const void *arg);
void phase_load(fleet *f, int rank, const void *arg);

/* Every rank's last call succeeded. */
void fleet_expect_calls_ok(fleet *f, const char *what);

/* Every rank's last call failed alike: status, and the one message,
 * which names the failing rank and holds want. */
void fleet_expect_calls_failed(fleet *f, fo_status status, const char *want, const char *what);

#endif /* FO_TEST_THREAD_RANKS_H */
