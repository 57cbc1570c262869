/*
 * mpi_check.h -- the multi-rank tier's reporting, shared by its programs
 * (one translation unit each, so the state is plain statics): a check runs
 * on every rank, CHECK and OK record this rank's verdict, and run() agrees
 * on the verdict over MPI_COMM_WORLD and prints it on rank 0.  Every rank
 * must reach run()'s all-reduce: a check that gives up early on one rank
 * must still return (OK jumps to the function's `out:` label).
 */
#ifndef FO_MPI_CHECK_H
#define FO_MPI_CHECK_H

#include <mpi.h>
#include <stdarg.h>
#include <stdio.h>

#include "fusedopt.h"
#include "fusedopt_mpi.h"

static int g_rank, g_size;
static int g_ok; /* the verdict of the running check on this rank */
static int g_passed, g_failed;

static void fail_here(const char *file, int line, const char *fmt, ...) {
  char msg[600];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (g_ok) fprintf(stderr, "  rank %d: %s:%d: %s\n", g_rank, file, line, msg);
  g_ok = 0;
}

#define CHECK(cond, ...)                                     \
  do {                                                       \
    if (!(cond)) fail_here(__FILE__, __LINE__, __VA_ARGS__); \
  } while (0)

/* A library call that must succeed; on failure the check fails and the
 * function goes to its `out:` label. */
#define OK(call)                                                                                  \
  do {                                                                                            \
    fo_status s_ = (call);                                                                        \
    if (s_ != FO_SUCCESS) {                                                                       \
      fail_here(__FILE__, __LINE__, "%s: %s (%s)", #call, fo_status_string(s_), fo_last_error()); \
      goto out;                                                                                   \
    }                                                                                             \
  } while (0)

static void run(const char *name, void (*check)(void)) {
  g_ok = 1;
  check();
  int all = 0;
  MPI_Allreduce(&g_ok, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (all)
    g_passed++;
  else
    g_failed++;
  if (g_rank == 0) printf("[%s] %s (np %d)\n", all ? "PASS" : "FAIL", name, g_size);
  fflush(stdout);
}

/* MPI up, g_rank and g_size set, and a host communicator over
 * MPI_COMM_WORLD (every rank aborts if it cannot be made). */
static fo_comm *begin(int *argc, char ***argv) {
  MPI_Init(argc, argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_size);
  fo_comm *comm = NULL;
  if (fo_comm_create_mpi(&comm, MPI_COMM_WORLD) != FO_SUCCESS) {
    fprintf(stderr, "rank %d: fo_comm_create_mpi: %s\n", g_rank, fo_last_error());
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  return comm;
}

/* The communicator destroyed (a failure counts), "N passed, M failed" on
 * rank 0, MPI down; the program's exit status. */
static int finish(fo_comm *comm) {
  if (fo_comm_destroy(comm) != FO_SUCCESS) {
    fprintf(stderr, "rank %d: fo_comm_destroy: %s\n", g_rank, fo_last_error());
    g_failed++;
  }
  if (g_rank == 0) printf("%d passed, %d failed\n", g_passed, g_failed);
  MPI_Finalize();
  return g_failed ? 1 : 0;
}

#endif /* FO_MPI_CHECK_H */
