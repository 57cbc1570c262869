/*
 * comm_mpi.c -- the library fusedopt_mpi (include/fusedopt_mpi.h): host
 * communicators over MPI, and NCCL communicators bootstrapped through MPI.
 *
 * Built apart from libfusedopt, against the public API only (so it keeps
 * libfusedopt free of an MPI link); errors reach fo_last_error() through
 * fo_set_last_error().
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mpi.h>

#include "fusedopt.h"
#include "fusedopt_mpi.h"

/* Elements per MPI call: MPI counts are ints. */
#define MPI_MAX_COUNT ((int64_t)1 << 30)
/* Elements a 16-bit sum widens at a time (on the stack). */
#define SUM_TILE 256

typedef struct mpi_ctx {
  MPI_Comm comm; /* our duplicate, with MPI_ERRORS_RETURN */
  MPI_Op sum_f16, sum_bf16;
} mpi_ctx;

/* "what: MPI's message for rc" into buf. */
static void mpi_message(int rc, const char *what, char *buf, size_t cap) {
  char s[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, s, &len) != MPI_SUCCESS) snprintf(s, sizeof s, "MPI error %d", rc);
  snprintf(buf, cap, "%s: %s", what, s);
}

static fo_status mpi_fail(const char *fn, const char *what, int rc) {
  char msg[512];
  mpi_message(rc, what, msg, sizeof msg);
  return fo_set_last_error(FO_ERR_COMM, fn, msg);
}

/* ------------------------------------------------------- 16-bit sums */

/* inout[i] = round(widen(in[i]) + widen(inout[i])) for n elements. */
static void sum16(const void *in, void *inout, int n, fo_dtype dtype) {
  float a[SUM_TILE], b[SUM_TILE];
  for (int at = 0; at < n; at += SUM_TILE) {
    int k = n - at < SUM_TILE ? n - at : SUM_TILE;
    uint16_t *io = (uint16_t *)inout + at;
    (void)fo_convert_to_f32(dtype, (const uint16_t *)in + at, a, k);
    (void)fo_convert_to_f32(dtype, io, b, k);
    for (int i = 0; i < k; i++) b[i] += a[i];
    (void)fo_convert_from_f32(dtype, b, io, k);
  }
}

static void op_sum_f16(void *in, void *inout, int *len, MPI_Datatype *type) {
  (void)type;
  sum16(in, inout, *len, FO_DTYPE_F16);
}

static void op_sum_bf16(void *in, void *inout, int *len, MPI_Datatype *type) {
  (void)type;
  sum16(in, inout, *len, FO_DTYPE_BF16);
}

/* ----------------------------------------------------------- the ops */

/* The MPI type and sum operation of a dtype. */
static void sum_of(const mpi_ctx *c, fo_dtype dtype, MPI_Datatype *type, MPI_Op *op) {
  *type = dtype == FO_DTYPE_F32 ? MPI_FLOAT : MPI_UINT16_T;
  *op = dtype == FO_DTYPE_F32 ? MPI_SUM : dtype == FO_DTYPE_F16 ? c->sum_f16 : c->sum_bf16;
}

static int mpi_allreduce(void *vctx, void *buf, int64_t count, fo_dtype dtype, char *err,
                         size_t err_cap) {
  const mpi_ctx *c = vctx;
  MPI_Datatype type;
  MPI_Op op;
  sum_of(c, dtype, &type, &op);
  size_t es = fo_dtype_size(dtype);
  for (int64_t at = 0; at < count; at += MPI_MAX_COUNT) {
    int n = (int)(count - at < MPI_MAX_COUNT ? count - at : MPI_MAX_COUNT);
    int rc = MPI_Allreduce(MPI_IN_PLACE, (char *)buf + (size_t)at * es, n, type, op, c->comm);
    if (rc != MPI_SUCCESS) {
      mpi_message(rc, "MPI_Allreduce", err, err_cap);
      return rc;
    }
  }
  return 0;
}

/* Rank r's part is reduced to rank r (MPI_Reduce, in place at the root):
 * a reduce-scatter with uneven parts of any size, int counts or not. */
static int mpi_reduce_scatter(void *vctx, void *buf, const int64_t *counts, fo_dtype dtype,
                              char *err, size_t err_cap) {
  const mpi_ctx *c = vctx;
  MPI_Datatype type;
  MPI_Op op;
  sum_of(c, dtype, &type, &op);
  size_t es = fo_dtype_size(dtype);
  int me = 0, size = 0;
  MPI_Comm_rank(c->comm, &me);
  MPI_Comm_size(c->comm, &size);
  char *part = buf;
  for (int root = 0; root < size; part += (size_t)counts[root] * es, root++) {
    for (int64_t at = 0; at < counts[root]; at += MPI_MAX_COUNT) {
      int n = (int)(counts[root] - at < MPI_MAX_COUNT ? counts[root] - at : MPI_MAX_COUNT);
      char *p = part + (size_t)at * es;
      int rc = MPI_Reduce(me == root ? MPI_IN_PLACE : p, p, n, type, op, root, c->comm);
      if (rc != MPI_SUCCESS) {
        mpi_message(rc, "MPI_Reduce", err, err_cap);
        return rc;
      }
    }
  }
  return 0;
}

/* Rank r's part is broadcast from rank r: an all-gather with uneven parts. */
static int mpi_all_gather(void *vctx, void *buf, const int64_t *bytes, char *err,
                          size_t err_cap) {
  const mpi_ctx *c = vctx;
  int size = 0;
  MPI_Comm_size(c->comm, &size);
  char *part = buf;
  for (int root = 0; root < size; part += bytes[root], root++) {
    for (int64_t at = 0; at < bytes[root]; at += MPI_MAX_COUNT) {
      int n = (int)(bytes[root] - at < MPI_MAX_COUNT ? bytes[root] - at : MPI_MAX_COUNT);
      int rc = MPI_Bcast(part + at, n, MPI_BYTE, root, c->comm);
      if (rc != MPI_SUCCESS) {
        mpi_message(rc, "MPI_Bcast", err, err_cap);
        return rc;
      }
    }
  }
  return 0;
}

static void mpi_release(void *vctx) {
  mpi_ctx *c = vctx;
  if (!c) return;
  int finalized = 1;
  MPI_Finalized(&finalized);
  if (!finalized) {
    if (c->sum_f16 != MPI_OP_NULL) MPI_Op_free(&c->sum_f16);
    if (c->sum_bf16 != MPI_OP_NULL) MPI_Op_free(&c->sum_bf16);
    if (c->comm != MPI_COMM_NULL) MPI_Comm_free(&c->comm);
  }
  free(c);
}

/* MPI is usable and comm names a communicator. */
static fo_status check_mpi(const char *fn, MPI_Comm comm) {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (!initialized || finalized)
    return fo_set_last_error(FO_ERR_INVALID_STATE, fn,
                             finalized ? "MPI has been finalised"
                                       : "MPI is not initialised (call MPI_Init first)");
  if (comm == MPI_COMM_NULL)
    return fo_set_last_error(FO_ERR_INVALID_ARGUMENT, fn, "comm is MPI_COMM_NULL");
  return FO_SUCCESS;
}

/* Our duplicate of comm, its error handler and the 16-bit operations. */
static fo_status ctx_init(const char *fn, MPI_Comm comm, mpi_ctx *c) {
  int rc = MPI_Comm_dup(comm, &c->comm);
  if (rc != MPI_SUCCESS) {
    c->comm = MPI_COMM_NULL;
    return mpi_fail(fn, "MPI_Comm_dup", rc);
  }
  rc = MPI_Comm_set_errhandler(c->comm, MPI_ERRORS_RETURN);
  if (rc != MPI_SUCCESS) return mpi_fail(fn, "MPI_Comm_set_errhandler", rc);
  rc = MPI_Op_create(op_sum_f16, 1, &c->sum_f16);
  if (rc != MPI_SUCCESS) return mpi_fail(fn, "MPI_Op_create", rc);
  rc = MPI_Op_create(op_sum_bf16, 1, &c->sum_bf16);
  if (rc != MPI_SUCCESS) return mpi_fail(fn, "MPI_Op_create", rc);
  return FO_SUCCESS;
}

/* The ranks' verdict on their own checks, before the first collective that
 * would wait for a rank that returned early: FO_SUCCESS on every rank, or
 * a failure on every rank.  A rank that failed keeps its own message; the
 * others return the lowest failing rank's status, naming it.  Only a rank
 * that cannot communicate at all (check_mpi) returns without this. */
static fo_status agree(const char *fn, MPI_Comm comm, fo_status local) {
  int rank = 0, size = 0;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  /* MPI_MINLOC compares the first int and carries the second: a failing
   * rank offers (its rank, its status), a passing one (size, 0), so the
   * result is the lowest failing rank and its status, or (size, 0). */
  struct {
    int key, status;
  } mine = {local == FO_SUCCESS ? size : rank, (int)local}, first = {0, 0};
  int rc = MPI_Allreduce(&mine, &first, 1, MPI_2INT, MPI_MINLOC, comm);
  if (rc != MPI_SUCCESS) return mpi_fail(fn, "MPI_Allreduce", rc);
  if (local != FO_SUCCESS) return local; /* our own reason is in fo_last_error() */
  if (first.key >= size) return FO_SUCCESS;
  char msg[160];
  snprintf(msg, sizeof msg, "rank %d of %d refused its call (see its message); no rank went on",
           first.key, size);
  fo_status theirs = (fo_status)first.status;
  return fo_set_last_error(theirs > FO_SUCCESS && theirs < FO_STATUS_COUNT ? theirs : FO_ERR_COMM,
                           fn, msg);
}

fo_status fo_comm_create_mpi(fo_comm **out, MPI_Comm comm) {
  static const char fn[] = "fo_comm_create_mpi";
  fo_status st = check_mpi(fn, comm);
  if (st != FO_SUCCESS) return st;
  st = out ? FO_SUCCESS : fo_set_last_error(FO_ERR_NULL_POINTER, fn, "out is NULL");
  st = agree(fn, comm, st);
  if (st != FO_SUCCESS) return st;
  mpi_ctx *c = calloc(1, sizeof *c);
  if (!c) return fo_set_last_error(FO_ERR_OUT_OF_MEMORY, fn, "no memory for the context");
  c->comm = MPI_COMM_NULL;
  c->sum_f16 = c->sum_bf16 = MPI_OP_NULL;
  st = ctx_init(fn, comm, c);
  int rank = 0, size = 0;
  if (st == FO_SUCCESS) {
    MPI_Comm_rank(c->comm, &rank);
    MPI_Comm_size(c->comm, &size);
  }
  if (st != FO_SUCCESS) {
    mpi_release(c);
    return st;
  }
  fo_comm_ops ops;
  memset(&ops, 0, sizeof ops);
  ops.struct_size = sizeof ops;
  ops.allreduce_sum = mpi_allreduce;
  ops.reduce_scatter_sum = mpi_reduce_scatter;
  ops.all_gather = mpi_all_gather;
  ops.release = mpi_release;
  return fo_comm_create_host(out, &ops, c, rank, size); /* releases c on failure */
}

/* ------------------------------------------------------ NCCL over MPI */

/* The rank's index among the ranks of its node.  Collective over comm. */
static int local_rank(MPI_Comm comm) {
  int rank = 0, local = 0;
  MPI_Comm node = MPI_COMM_NULL;
  MPI_Comm_rank(comm, &rank);
  if (MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node) !=
      MPI_SUCCESS)
    return rank;
  MPI_Comm_rank(node, &local);
  MPI_Comm_free(&node);
  return local;
}

/* This rank's arguments and device: FO_SUCCESS with the device in *out,
 * or the reason (checked locally; agree() makes it every rank's). */
static fo_status check_nccl_args(const char *fn, fo_comm **out_comm, int device, int local,
                                 int *out) {
  if (!out_comm) return fo_set_last_error(FO_ERR_NULL_POINTER, fn, "out is NULL");
  if (device < -1) return fo_set_last_error(FO_ERR_INVALID_ARGUMENT, fn, "device must be >= -1");
  int ndev = 0;
  fo_status st = fo_cuda_device_count(&ndev);
  if (st != FO_SUCCESS) return st;
  int dev = device >= 0 ? device : (ndev > 0 ? local % ndev : 0);
  if (dev >= ndev) {
    char msg[128];
    snprintf(msg, sizeof msg, "device = %d, but this node has %d CUDA devices", dev, ndev);
    return fo_set_last_error(FO_ERR_INVALID_ARGUMENT, fn, msg);
  }
  *out = dev;
  return FO_SUCCESS;
}

fo_status fo_comm_create_nccl_mpi(fo_comm **out, MPI_Comm comm, int device) {
  static const char fn[] = "fo_comm_create_nccl_mpi";
  fo_status st = check_mpi(fn, comm);
  if (st != FO_SUCCESS) return st;
  int rank = 0, size = 0, dev = 0;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  /* local_rank is collective (MPI_Comm_split_type): every rank, first.
   * Then every rank checks its arguments and device, and the ranks agree
   * before NCCL starts, so that one rank's refusal cannot hang the rest. */
  const int local = local_rank(comm);
  st = agree(fn, comm, check_nccl_args(fn, out, device, local, &dev));
  if (st != FO_SUCCESS) return st;
  /* rank 0's id and whether it got one, so a failure cannot hang the rest */
  struct {
    int status;
    fo_nccl_id id;
  } msg;
  memset(&msg, 0, sizeof msg);
  if (rank == 0) msg.status = (int)fo_nccl_get_id(&msg.id);
  int rc = MPI_Bcast(&msg, (int)sizeof msg, MPI_BYTE, 0, comm);
  if (rc != MPI_SUCCESS) return mpi_fail(fn, "MPI_Bcast of the NCCL id", rc);
  if (msg.status != (int)FO_SUCCESS)
    return rank == 0 ? (fo_status)msg.status
                     : fo_set_last_error(FO_ERR_COMM, fn,
                                         "rank 0 could not create the NCCL id (see its "
                                         "message)");
  return fo_comm_init_nccl(out, &msg.id, rank, size, dev);
}
