/*
 * train_world.c -- the processes of a data-parallel run.
 *
 * With MPI (FO_TRAIN_MPI: CMake found MPI and built fusedopt_mpi) and
 * started by an MPI launcher (mpirun -np N: the launcher's variables are in
 * the environment), the world is MPI_COMM_WORLD, and the gradients are
 * averaged through the library's communicator: fo_comm_create_mpi for the
 * CPU executor, fo_comm_create_nccl_mpi for the CUDA one.  The program's
 * own reductions (the loss to print, the validation counts, the check that
 * every rank holds the same parameters) are plain MPI_Allreduce calls on
 * MPI_COMM_WORLD: host scalars, whichever engine runs.
 *
 * Started without a launcher, the program is one process and never calls
 * MPI_Init (Open MPI's singleton start costs about 0.4 s and runs a daemon
 * for nothing); without MPI in the build, it is always one process and
 * refuses to run as one of several.
 */
#define _GNU_SOURCE /* sched_getaffinity */
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "train.h"

#ifdef FO_TRAIN_MPI
#include <mpi.h>

#include "fusedopt_mpi.h"
#endif

/* Variables MPI launchers set in the processes they start: Open MPI
 * (mpirun, and Open MPI 5's PMIx), MPICH and Intel MPI (Hydra's PMI),
 * MVAPICH; Slurm's srun sets PMI_* or PMIX_* with its MPI plugins. */
static const char *const launcher_vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMI_RANK",
                                            "PMIX_RANK", "MV2_COMM_WORLD_SIZE"};
#define N_LAUNCHER_VARS ((int)(sizeof launcher_vars / sizeof launcher_vars[0]))

static int started_by_launcher(void) {
  for (int i = 0; i < N_LAUNCHER_VARS; i++)
    if (getenv(launcher_vars[i])) return 1;
  return 0;
}

#ifndef FO_TRAIN_MPI
/* The number of processes the launcher says it started; 1 when it does not
 * say. */
static long launched_processes(void) {
  static const char *const size_vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE",
                                          "MV2_COMM_WORLD_SIZE"};
  for (int i = 0; i < 3; i++) {
    const char *v = getenv(size_vars[i]);
    if (v && atol(v) > 1) return atol(v);
  }
  return 1;
}
#endif

int world_init(int *argc, char ***argv, train_world *w) {
  memset(w, 0, sizeof *w);
  w->size = w->local_size = 1;
  w->saved_stderr = -1;
  if (!started_by_launcher()) return 0;
#ifdef FO_TRAIN_MPI
  if (MPI_Init(argc, argv) != MPI_SUCCESS) {
    fprintf(stderr, "train: MPI_Init failed\n");
    return EXIT_TRAIN_FAILED;
  }
  w->mpi = 1; /* MPI's default handler aborts every rank on an MPI error */
  MPI_Comm_rank(MPI_COMM_WORLD, &w->rank);
  MPI_Comm_size(MPI_COMM_WORLD, &w->size);
  MPI_Comm node;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
  MPI_Comm_rank(node, &w->local_rank);
  MPI_Comm_size(node, &w->local_size);
  MPI_Comm_free(&node);
  /* One voice: progress, tables and the RESULT lines are rank 0's. */
  if (w->rank > 0 && !freopen("/dev/null", "w", stdout)) {
    fprintf(stderr, "train: rank %d cannot silence its stdout\n", w->rank);
    return EXIT_TRAIN_FAILED;
  }
  return 0;
#else
  (void)argc, (void)argv;
  long n = launched_processes();
  if (n > 1) {
    fprintf(stderr,
            "train: started as one of %ld processes, but this build has no MPI (FO_WITH_MPI "
            "off, or CMake found none); run it as one process, or rebuild with MPI\n",
            n);
    return EXIT_TRAIN_USAGE;
  }
  return 0;
#endif
}

void world_finalize(train_world *w) {
  world_destroy_comm(w);
  world_quiet(w, 0);
#ifdef FO_TRAIN_MPI
  if (w->mpi) {
    fflush(stdout);
    MPI_Finalize();
    w->mpi = 0;
  }
#endif
}

void world_quiet(train_world *w, int on) {
  if (w->rank == 0) return;
  fflush(stderr);
  if (on && w->saved_stderr < 0) {
    int null = open("/dev/null", O_WRONLY);
    if (null < 0) return;
    w->saved_stderr = dup(STDERR_FILENO);
    if (w->saved_stderr >= 0) dup2(null, STDERR_FILENO);
    close(null);
  } else if (!on && w->saved_stderr >= 0) {
    dup2(w->saved_stderr, STDERR_FILENO);
    close(w->saved_stderr);
    w->saved_stderr = -1;
  }
}

int world_agree(const train_world *w, int rc) {
#ifdef FO_TRAIN_MPI
  if (w->mpi && w->size > 1) {
    int most = rc;
    MPI_Allreduce(&rc, &most, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    return most;
  }
#endif
  (void)w;
  return rc;
}

int world_all(const train_world *w, int ok) {
#ifdef FO_TRAIN_MPI
  if (w->mpi && w->size > 1) {
    int mine = ok != 0, least = mine;
    MPI_Allreduce(&mine, &least, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    return least;
  }
#endif
  (void)w;
  return ok != 0;
}

void world_sum(const train_world *w, double *v, int n) {
#ifdef FO_TRAIN_MPI
  if (w->mpi && w->size > 1) MPI_Allreduce(MPI_IN_PLACE, v, n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
#endif
  (void)w, (void)v, (void)n;
}

int world_same(const train_world *w, uint64_t v) {
#ifdef FO_TRAIN_MPI
  if (w->mpi && w->size > 1) { /* max(v) and max(~v) = ~min(v), in one call */
    uint64_t both[2] = {v, ~v};
    MPI_Allreduce(MPI_IN_PLACE, both, 2, MPI_UINT64_T, MPI_MAX, MPI_COMM_WORLD);
    return both[0] == ~both[1];
  }
#endif
  (void)w, (void)v;
  return 1;
}

int world_cpu_threads(const train_world *w) {
  if (w->size == 1) return 0;
  cpu_set_t set;
  int cpus = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
  int n = cpus / w->local_size;
  return n > 1 ? n : 1;
}

int world_create_comm(train_world *w, int cuda) {
  w->comm = NULL;
  if (w->size == 1) return 0;
#ifdef FO_TRAIN_MPI
  fo_status st = cuda ? fo_comm_create_nccl_mpi(&w->comm, MPI_COMM_WORLD, w->device)
                      : fo_comm_create_mpi(&w->comm, MPI_COMM_WORLD);
  if (train_failed(st, cuda ? "fo_comm_create_nccl_mpi" : "fo_comm_create_mpi")) {
    w->comm = NULL;
    return EXIT_TRAIN_FAILED;
  }
#endif
  (void)cuda;
  return 0;
}

void world_destroy_comm(train_world *w) {
  if (!w->comm) return;
  train_failed(fo_comm_destroy(w->comm), "fo_comm_destroy");
  w->comm = NULL;
}

void world_abort(const train_world *w, int rc) {
#ifdef FO_TRAIN_MPI
  if (w->mpi && w->size > 1) {
    fflush(stdout);
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, rc);
  }
#endif
  (void)w, (void)rc;
}
