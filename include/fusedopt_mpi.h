/*
 * fusedopt_mpi.h -- MPI glue for fusedopt's communicators: the library
 * fusedopt_mpi (link fusedopt::fusedopt_mpi, which brings MPI::MPI_C).
 *
 * libfusedopt itself never links MPI.  A host communicator is a table of
 * collective functions (fo_comm_ops in fusedopt.h); this library fills it
 * with MPI_Allreduce (and, for a sharded state, reduce-scatter and
 * all-gather as one MPI_Reduce / MPI_Bcast per rank), and bootstraps NCCL communicators through
 * MPI.  It must be built against the MPI implementation the program uses (MPI has no common ABI).
 * Both functions are collective over comm: every rank must call them.  MPI must be initialised, and
 * stay so until the communicator is destroyed.  Every rank checks its own arguments, and the ranks
 * agree (one MPI_Allreduce) before anything else that would wait for the others: a refusal on one
 * rank (out NULL, a bad device, no device) makes every rank fail, and return, with that rank's
 * status (the lowest such rank's, named in the others' fo_last_error()).  Only a rank that cannot
 * communicate at all (MPI not initialised or finalised, comm MPI_COMM_NULL) returns at once: pass
 * every rank the same comm.
 */
#ifndef FUSEDOPT_MPI_H
#define FUSEDOPT_MPI_H

#include <mpi.h>

#include "fusedopt.h"

#ifdef __cplusplus
extern "C" {
#endif

/** A host communicator (FO_COMM_HOST, for FO_EXEC_CPU) over the ranks of
 *  comm.  The library works on its own duplicate of comm (MPI_Comm_dup),
 *  so its traffic never matches the caller's messages, with
 *  MPI_ERRORS_RETURN on the duplicate, so that an MPI error becomes
 *  FO_ERR_COMM with MPI's message instead of an abort.  fp32 is summed
 *  with MPI_SUM over MPI_FLOAT; fp16 and bf16 with a user operation over
 *  MPI_UINT16_T that widens both operands to fp32, adds, and rounds to
 *  nearest-even (each partial sum is rounded, as NCCL does).  Buffers of
 *  more than 2^30 elements go as several calls.  fo_comm_destroy() frees
 *  the duplicate (unless MPI has been finalised by then). */
FO_API fo_status fo_comm_create_mpi(fo_comm **out, MPI_Comm comm);

/** An NCCL communicator (FO_COMM_NCCL, for FO_EXEC_CUDA) over the ranks of
 *  comm, one GPU per rank: device >= 0 names the CUDA device; -1 takes the
 *  rank's index among the ranks on its node (MPI_COMM_TYPE_SHARED) modulo
 *  the node's device count.  Every rank first checks its device and the
 *  ranks agree (MPI_Allreduce) before NCCL starts, so a rank without a
 *  device makes every rank fail (FO_ERR_NO_DEVICE) rather than hang.  Rank
 *  0 then creates the NCCL id and broadcasts it (MPI_Bcast), and every
 *  rank calls fo_comm_init_nccl().  NCCL refuses two ranks on one GPU.
 *  Not covered by the agreement: a rank that fails inside
 *  fo_comm_init_nccl() before NCCL's own initialisation starts (no
 *  libnccl.so.2 on its node alone; its device held by another process in
 *  exclusive compute mode) returns its error while the other ranks wait
 *  in NCCL's bootstrap for it, as with ncclCommInitRank itself: a job
 *  launcher's timeout ends them. */
FO_API fo_status fo_comm_create_nccl_mpi(fo_comm **out, MPI_Comm comm, int device);

#ifdef __cplusplus
}
#endif

#endif /* FUSEDOPT_MPI_H */
