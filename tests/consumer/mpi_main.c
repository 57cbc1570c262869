/* Links the installed MPI glue (fusedopt_mpi) and runs, on every rank of
 * MPI_COMM_WORLD, one data-parallel SGD step on the CPU through an MPI host
 * communicator.  Rank r's gradient is r + 1 (and its negation), so the
 * averaged step moves the parameters by the mean, (size + 1) / 2.  The
 * ranks agree on the outcome; rank 0 prints it. */
#include <fusedopt_mpi.h>
#include <stdio.h>

static int averaged_step(int rank, int size) {
  float p[2] = {1.0f, 2.0f}, g[2] = {(float)(rank + 1), -(float)(rank + 1)};
  fo_options o;
  fo_hparams h;
  fo_options_default(&o);
  o.algorithm = FO_ALG_SGD;
  fo_hparams_default(FO_ALG_SGD, &h);
  h.lr = 1.0f;
  fo_tensor_desc t = {2, 0, p, g, "p"};
  fo_comm *comm = NULL;
  fo_optimizer *opt = NULL;
  int ok = fo_comm_create_mpi(&comm, MPI_COMM_WORLD) == FO_SUCCESS &&
           fo_optimizer_create(&opt, &o, &h, 1, &t, 1) == FO_SUCCESS &&
           fo_optimizer_set_comm(opt, comm, NULL) == FO_SUCCESS &&
           fo_optimizer_step(opt, NULL) == FO_SUCCESS;
  if (!ok) fprintf(stderr, "consumer_mpi: rank %d: %s\n", rank, fo_last_error());
  fo_optimizer_destroy(opt);
  fo_comm_destroy(comm);
  float mean = (float)(size + 1) / 2.0f; /* exact for any small size */
  return ok && p[0] == 1.0f - mean && p[1] == 2.0f + mean;
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int rank, size;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  int ok = averaged_step(rank, size), all = 0;
  MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (rank == 0)
    printf("consumer_mpi: fusedopt %s, averaged SGD step over %d rank(s) %s\n", fo_version_string(),
           size, all ? "ok" : "WRONG");
  MPI_Finalize();
  return all ? 0 : 1;
}
