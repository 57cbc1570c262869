/*
 * comm.c -- the communicator object: host communicators (caller-supplied
 * collectives over host memory, e.g. fusedopt_mpi's MPI), the accessors,
 * and the dispatch of one collective to NCCL (nccl.c) or to the host
 * functions.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm_internal.h"
#include "cuda_device.h"

/* ---------------------------------------------------------------- create */

fo_status fo_comm_create_host(fo_comm **out, const fo_comm_ops *ops, void *ctx, int rank,
                              int size) {
  static const char fn[] = "fo_comm_create_host";
  fo_status st = FO_SUCCESS;
  if (!out || !ops) {
    st = fo_fail(FO_ERR_NULL_POINTER, fn, "%s is NULL", out ? "ops" : "out");
  } else if (ops->struct_size != sizeof(fo_comm_ops)) {
    st = fo_fail(FO_ERR_INVALID_ARGUMENT, fn,
                 "ops->struct_size = %zu, expected %zu (sizeof(fo_comm_ops))", ops->struct_size,
                 sizeof(fo_comm_ops));
  } else if (!ops->allreduce_sum) {
    st = fo_fail(FO_ERR_NULL_POINTER, fn, "ops->allreduce_sum is NULL");
  } else if (size < 1 || rank < 0 || rank >= size) {
    st = fo_fail(FO_ERR_INVALID_ARGUMENT, fn,
                 "rank = %d, size = %d: need size >= 1 and 0 <= rank < size", rank, size);
  }
  fo_comm *c = NULL;
  if (st == FO_SUCCESS && !(c = calloc(1, sizeof *c)))
    st = fo_fail(FO_ERR_OUT_OF_MEMORY, fn, "no memory for the communicator");
  if (st != FO_SUCCESS) {
    /* ctx was handed over: give it back to its owner's release */
    if (ops && ops->struct_size == sizeof(fo_comm_ops) && ops->release) ops->release(ctx);
    return st;
  }
  c->kind = FO_COMM_HOST;
  c->rank = rank;
  c->size = size;
  c->device = -1;
  c->ops = *ops;
  c->ctx = ctx;
  *out = c;
  return FO_SUCCESS;
}

fo_status fo_comm_destroy(fo_comm *comm) {
  static const char fn[] = "fo_comm_destroy";
  if (!comm) return FO_SUCCESS;
  if (comm->attached > 0)
    return fo_fail(FO_ERR_INVALID_STATE, fn,
                   "%d optimizer(s) still use the communicator: detach them "
                   "(fo_optimizer_set_comm with NULL) or destroy them first",
                   comm->attached);
  if (comm->kind == FO_COMM_NCCL)
    fo_nccl_release(comm);
  else if (comm->ops.release)
    comm->ops.release(comm->ctx);
  free(comm);
  return FO_SUCCESS;
}

/* ------------------------------------------------------------- accessors */

fo_status fo_comm_get_rank(const fo_comm *comm, int *rank, int *size) {
  if (!comm) return fo_fail(FO_ERR_NULL_POINTER, "fo_comm_get_rank", "comm is NULL");
  if (rank) *rank = comm->rank;
  if (size) *size = comm->size;
  return FO_SUCCESS;
}

fo_status fo_comm_get_kind(const fo_comm *comm, fo_comm_kind *out) {
  static const char fn[] = "fo_comm_get_kind";
  if (!comm || !out) return fo_fail(FO_ERR_NULL_POINTER, fn, "%s is NULL", comm ? "out" : "comm");
  *out = comm->kind;
  return FO_SUCCESS;
}

fo_status fo_set_last_error(fo_status status, const char *func, const char *message) {
  return fo_fail(status, func ? func : "(unknown)", "%s", message ? message : "");
}

/* -------------------------------------------------------------- dispatch */

/* A host op's failure as FO_ERR_COMM with the back-end's message. */
static fo_status host_failed(const char *fn, const char *what, int64_t n, const char *unit, int rc,
                             char *err, size_t cap) {
  err[cap - 1] = '\0';
  return fo_fail(FO_ERR_COMM, fn, "%s of %lld %s failed (code %d): %s", what, (long long)n, unit,
                 rc, err[0] ? err : "no message");
}

static fo_status host_sum(const char *fn, fo_comm *c, void *buf, int64_t count, fo_dtype dtype) {
  char err[FO_COMM_ERR_CAP];
  err[0] = '\0';
  int rc = c->ops.allreduce_sum(c->ctx, buf, count, dtype, err, sizeof err);
  return rc == 0 ? FO_SUCCESS
                 : host_failed(fn, "all-reduce", count, "elements", rc, err, sizeof err);
}

fo_status fo_comm_sum(const char *fn, fo_comm *c, void *buf, int64_t count, fo_dtype dtype,
                      fo_stream_t stream) {
  if (count == 0) return FO_SUCCESS;
  if (c->kind == FO_COMM_NCCL) return fo_nccl_sum(fn, c, buf, count, dtype, stream);
  return host_sum(fn, c, buf, count, dtype);
}

int fo_comm_can_shard(const fo_comm *c) {
  return c->kind == FO_COMM_NCCL || (c->ops.reduce_scatter_sum && c->ops.all_gather);
}

/* The elements (or bytes) of all parts together. */
static int64_t parts_total(const fo_comm *c, const int64_t *parts) {
  int64_t n = 0;
  for (int r = 0; r < c->size; r++) n += parts[r];
  return n;
}

fo_status fo_comm_reduce_scatter(const char *fn, fo_comm *c, void *buf, const int64_t *counts,
                                 fo_dtype dtype, fo_stream_t stream) {
  int64_t n = parts_total(c, counts);
  if (n == 0) return FO_SUCCESS;
  if (c->kind == FO_COMM_NCCL) return fo_nccl_reduce_scatter(fn, c, buf, counts, dtype, stream);
  if (!c->ops.reduce_scatter_sum)
    return fo_fail(FO_ERR_UNSUPPORTED, fn,
                   "the host communicator has no reduce_scatter_sum op (it is NULL in its "
                   "fo_comm_ops)");
  char err[FO_COMM_ERR_CAP];
  err[0] = '\0';
  int rc = c->ops.reduce_scatter_sum(c->ctx, buf, counts, dtype, err, sizeof err);
  return rc == 0 ? FO_SUCCESS
                 : host_failed(fn, "reduce-scatter", n, "elements", rc, err, sizeof err);
}

fo_status fo_comm_all_gather(const char *fn, fo_comm *c, void *buf, const int64_t *bytes,
                             fo_stream_t stream) {
  int64_t n = parts_total(c, bytes);
  if (n == 0) return FO_SUCCESS;
  if (c->kind == FO_COMM_NCCL) return fo_nccl_all_gather(fn, c, buf, bytes, stream);
  if (!c->ops.all_gather)
    return fo_fail(FO_ERR_UNSUPPORTED, fn,
                   "the host communicator has no all_gather op (it is NULL in its fo_comm_ops)");
  char err[FO_COMM_ERR_CAP];
  err[0] = '\0';
  int rc = c->ops.all_gather(c->ctx, buf, bytes, err, sizeof err);
  return rc == 0 ? FO_SUCCESS : host_failed(fn, "all-gather", n, "bytes", rc, err, sizeof err);
}

fo_status fo_comm_check_async(const char *fn, fo_comm *c) {
  return c->kind == FO_COMM_NCCL ? fo_nccl_check_async(fn, c) : FO_SUCCESS;
}

fo_status fo_comm_allreduce_sum(fo_comm *comm, void *buf, int64_t count, fo_dtype dtype,
                                fo_stream_t stream) {
  static const char fn[] = "fo_comm_allreduce_sum";
  if (!comm) return fo_fail(FO_ERR_NULL_POINTER, fn, "comm is NULL");
  if (!buf && count > 0) return fo_fail(FO_ERR_NULL_POINTER, fn, "buf is NULL");
  if (count < 0)
    return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "count = %lld is negative", (long long)count);
  if (!fo_dtype_valid((int)dtype))
    return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "unknown dtype %d", (int)dtype);
  if (comm->kind == FO_COMM_HOST && stream)
    return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "stream must be NULL for a host communicator");
  if (comm->kind == FO_COMM_NCCL) {
    fo_status st = fo_cuda_check_stream(fn, stream, comm->device);
    if (st == FO_SUCCESS) st = fo_comm_check_async(fn, comm);
    if (st != FO_SUCCESS) return st;
  }
  return fo_comm_sum(fn, comm, buf, count, dtype, stream);
}
