/*
 * nccl.c -- NCCL communicators: create (from a unique id) or wrap,
 * one all-reduce, groups, asynchronous errors, release.  Every NCCL error
 * becomes FO_ERR_COMM with NCCL's error string and its last-error detail.
 * Calls that use a device make the communicator's device current and
 * restore the caller's.
 */
#include <cuda_runtime_api.h>
#include <nccl.h>
#include <stdlib.h>
#include <string.h>

#include "comm_internal.h"
#include "cuda_device.h"

_Static_assert(FO_NCCL_ID_BYTES == NCCL_UNIQUE_ID_BYTES, "fo_nccl_id must match ncclUniqueId");
_Static_assert(sizeof(fo_nccl_id) == sizeof(ncclUniqueId), "fo_nccl_id must match ncclUniqueId");

static fo_status nccl_fail(const char *fn, const char *what, ncclResult_t r, ncclComm_t comm) {
  const char *detail = ncclGetLastError(comm);
  int has = detail && detail[0];
  return fo_fail(FO_ERR_COMM, fn, "%s: %s (ncclResult %d)%s%s", what, ncclGetErrorString(r), (int)r,
                 has ? ": " : "", has ? detail : "");
}

#define NCCL_TRY(fn, what, call, comm)    \
  do {                                    \
    ncclResult_t r_ = (call);             \
    if (r_ != ncclSuccess) {              \
      st = nccl_fail(fn, what, r_, comm); \
      goto done;                          \
    }                                     \
  } while (0)

/* -------------------------------------------------------------- create */

fo_status fo_nccl_get_id(fo_nccl_id *out) {
  static const char fn[] = "fo_nccl_get_id";
  if (!out) return fo_fail(FO_ERR_NULL_POINTER, fn, "out is NULL");
  ncclUniqueId id;
  ncclResult_t r = ncclGetUniqueId(&id);
  if (r != ncclSuccess) return nccl_fail(fn, "ncclGetUniqueId", r, NULL);
  memcpy(out->internal, id.internal, sizeof out->internal);
  return FO_SUCCESS;
}

static fo_status new_nccl_comm(const char *fn, ncclComm_t nccl, int owns, int rank, int size,
                               int device, fo_comm **out) {
  fo_comm *c = calloc(1, sizeof *c);
  if (!c) return fo_fail(FO_ERR_OUT_OF_MEMORY, fn, "no memory for the communicator");
  c->kind = FO_COMM_NCCL;
  c->nccl = nccl;
  c->owns_nccl = owns;
  c->rank = rank;
  c->size = size;
  c->device = device;
  *out = c;
  return FO_SUCCESS;
}

fo_status fo_comm_init_nccl(fo_comm **out, const fo_nccl_id *id, int rank, int size, int device) {
  static const char fn[] = "fo_comm_init_nccl";
  if (!out || !id) return fo_fail(FO_ERR_NULL_POINTER, fn, "%s is NULL", out ? "id" : "out");
  if (size < 1 || rank < 0 || rank >= size)
    return fo_fail(FO_ERR_INVALID_ARGUMENT, fn,
                   "rank = %d, size = %d: need size >= 1 and 0 <= rank < size", rank, size);
  if (device < 0) return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "device = %d is negative", device);
  fo_status st = fo_cuda_available(fn, device);
  if (st != FO_SUCCESS) return st;
  ncclUniqueId uid;
  memcpy(uid.internal, id->internal, sizeof uid.internal);
  ncclComm_t nccl = NULL;
  int prev = device;
  st = fo_cuda_enter(fn, device, &prev);
  if (st != FO_SUCCESS) return st;
  ncclResult_t r = ncclCommInitRank(&nccl, size, uid, rank);
  fo_cuda_leave(device, prev);
  if (r != ncclSuccess) return nccl_fail(fn, "ncclCommInitRank", r, NULL);
  st = new_nccl_comm(fn, nccl, 1, rank, size, device, out);
  if (st != FO_SUCCESS) (void)ncclCommDestroy(nccl);
  return st;
}

fo_status fo_comm_wrap_nccl(fo_comm **out, fo_nccl_comm_t nccl) {
  static const char fn[] = "fo_comm_wrap_nccl";
  if (!out || !nccl) return fo_fail(FO_ERR_NULL_POINTER, fn, "%s is NULL", out ? "nccl" : "out");
  fo_status st = FO_SUCCESS;
  int rank = 0, size = 0, device = 0;
  NCCL_TRY(fn, "ncclCommCount", ncclCommCount(nccl, &size), nccl);
  NCCL_TRY(fn, "ncclCommUserRank", ncclCommUserRank(nccl, &rank), nccl);
  NCCL_TRY(fn, "ncclCommCuDevice", ncclCommCuDevice(nccl, &device), nccl);
  st = new_nccl_comm(fn, nccl, 0, rank, size, device, out);
done:
  return st;
}

void fo_nccl_release(fo_comm *c) {
  if (!c->owns_nccl || !c->nccl) return;
  /* A communicator with an error may wait forever for peers that are
   * gone: abort it.  Otherwise destroy it (which flushes its work). */
  ncclResult_t async = ncclSuccess;
  if (ncclCommGetAsyncError(c->nccl, &async) != ncclSuccess ||
      (async != ncclSuccess && async != ncclInProgress))
    (void)ncclCommAbort(c->nccl);
  else
    (void)ncclCommDestroy(c->nccl);
  c->nccl = NULL;
}

/* ---------------------------------------------------------- collectives */

static ncclDataType_t nccl_type(fo_dtype dtype) {
  switch (dtype) {
    case FO_DTYPE_F16: return ncclFloat16;
    case FO_DTYPE_BF16: return ncclBfloat16;
    default: return ncclFloat32;
  }
}

fo_status fo_nccl_sum(const char *fn, fo_comm *c, void *buf, int64_t count, fo_dtype dtype,
                      fo_stream_t stream) {
  int prev = c->device;
  fo_status st = fo_cuda_enter(fn, c->device, &prev);
  if (st != FO_SUCCESS) return st;
  ncclResult_t r = ncclAllReduce(buf, buf, (size_t)count, nccl_type(dtype), ncclSum, c->nccl,
                                 (cudaStream_t)stream);
  fo_cuda_leave(c->device, prev);
  return r == ncclSuccess ? FO_SUCCESS : nccl_fail(fn, "ncclAllReduce", r, c->nccl);
}

/* Uneven reduce-scatter and all-gather as one group of rooted calls, the
 * way NCCL's documentation builds the "v" variants: part r is reduced to,
 * or broadcast from, rank r.  In place: ncclReduce and ncclBroadcast take
 * the same buffer for send and receive. */
static fo_status rooted_group(const char *fn, fo_comm *c, char *buf, const int64_t *parts,
                              size_t unit, ncclDataType_t type, int reduce, fo_stream_t stream) {
  int prev = c->device;
  fo_status st = fo_cuda_enter(fn, c->device, &prev);
  if (st != FO_SUCCESS) return st;
  ncclResult_t r = ncclGroupStart();
  const char *what = "ncclGroupStart";
  for (int k = 0; k < c->size && r == ncclSuccess; k++) {
    if (parts[k] > 0) {
      what = reduce ? "ncclReduce" : "ncclBroadcast";
      r = reduce
              ? ncclReduce(buf, buf, (size_t)parts[k], type, ncclSum, k, c->nccl,
                           (cudaStream_t)stream)
              : ncclBroadcast(buf, buf, (size_t)parts[k], type, k, c->nccl, (cudaStream_t)stream);
    }
    buf += (size_t)parts[k] * unit;
  }
  /* the group must be closed even when a call inside it failed */
  ncclResult_t end = ncclGroupEnd();
  if (r == ncclSuccess && end != ncclSuccess) {
    r = end;
    what = "ncclGroupEnd";
  }
  fo_cuda_leave(c->device, prev);
  return r == ncclSuccess ? FO_SUCCESS : nccl_fail(fn, what, r, c->nccl);
}

fo_status fo_nccl_reduce_scatter(const char *fn, fo_comm *c, void *buf, const int64_t *counts,
                                 fo_dtype dtype, fo_stream_t stream) {
  return rooted_group(fn, c, buf, counts, fo_dtype_size(dtype), nccl_type(dtype), 1, stream);
}

fo_status fo_nccl_all_gather(const char *fn, fo_comm *c, void *buf, const int64_t *bytes,
                             fo_stream_t stream) {
  return rooted_group(fn, c, buf, bytes, 1, ncclUint8, 0, stream);
}

fo_status fo_nccl_group_start(const char *fn) {
  ncclResult_t r = ncclGroupStart();
  return r == ncclSuccess ? FO_SUCCESS : nccl_fail(fn, "ncclGroupStart", r, NULL);
}

fo_status fo_nccl_group_end(const char *fn) {
  ncclResult_t r = ncclGroupEnd();
  return r == ncclSuccess ? FO_SUCCESS : nccl_fail(fn, "ncclGroupEnd", r, NULL);
}

fo_status fo_nccl_check_async(const char *fn, fo_comm *c) {
  ncclResult_t async = ncclSuccess;
  ncclResult_t r = ncclCommGetAsyncError(c->nccl, &async);
  if (r != ncclSuccess) return nccl_fail(fn, "ncclCommGetAsyncError", r, c->nccl);
  if (async != ncclSuccess && async != ncclInProgress)
    return nccl_fail(fn, "the communicator reports an earlier asynchronous error", async, c->nccl);
  return FO_SUCCESS;
}
