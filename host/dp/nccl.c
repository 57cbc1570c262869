/*
 * nccl.c -- NCCL communicators: create (from a unique id) or wrap,
 * one all-reduce, groups, asynchronous errors, release.  Every NCCL error
 * becomes FO_ERR_COMM with NCCL's error string and its last-error detail.
 * Calls that use a device make the communicator's device current and
 * restore the caller's.
 *
 * A non-blocking communicator (ncclConfig_t.blocking = 0, or
 * NCCL_COMM_BLOCKING=0 in the environment) answers ncclInProgress while a
 * call is still being carried out, and NCCL allows no other call on it
 * until ncclCommGetAsyncError says the state has left ncclInProgress.
 * fusedopt waits for that (settle) after each of its calls, so a
 * non-blocking communicator behaves as a blocking one inside the library.
 *
 * After an NCCL error other than a refused argument the communicator's
 * state is undefined (NCCL's user guide: abort it and create another); a
 * peer may already wait in the collective this rank failed to join.  The
 * communicator is then marked broken: every later collective is refused,
 * and fo_comm_destroy aborts one the library owns instead of destroying it
 * (a destroy would wait for the peers' work).
 *
 * NCCL is loaded when a call needs it (dlopen of libnccl.so.2), never
 * linked: a CUDA build of libfusedopt loads and runs the CPU executor, host
 * communicators and single-GPU steps on a machine without NCCL, and only a
 * call that needs NCCL fails there, saying so (docs/install.md).  Each
 * communicator holds its own handle of the library (the loader counts
 * them), so nothing global is kept; a program that links NCCL itself gets
 * the very library it already has.  The library is opened RTLD_NODELETE:
 * closing a handle never unmaps it, because NCCL leaves threads of its own
 * running in it (ncclGetUniqueId's bootstrap root waits for the ranks to
 * connect long after the call returns).
 */
#define _GNU_SOURCE /* RTLD_NODELETE */
#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <nccl.h>
#include <sched.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm_internal.h"
#include "cuda_device.h"

_Static_assert(FO_NCCL_ID_BYTES == NCCL_UNIQUE_ID_BYTES, "fo_nccl_id must match ncclUniqueId");
_Static_assert(sizeof(fo_nccl_id) == sizeof(ncclUniqueId), "fo_nccl_id must match ncclUniqueId");

/* ------------------------------------------------------------- loading */

/* The NCCL calls fusedopt makes, from one loaded copy of the library. */
struct fo_nccl_lib {
  void *handle;
  ncclResult_t (*get_unique_id)(ncclUniqueId *);
  ncclResult_t (*comm_init_rank)(ncclComm_t *, int, ncclUniqueId, int);
  ncclResult_t (*comm_destroy)(ncclComm_t);
  ncclResult_t (*comm_abort)(ncclComm_t);
  ncclResult_t (*comm_get_async_error)(ncclComm_t, ncclResult_t *);
  const char *(*get_error_string)(ncclResult_t);
  const char *(*get_last_error)(ncclComm_t);
  ncclResult_t (*comm_count)(ncclComm_t, int *);
  ncclResult_t (*comm_user_rank)(ncclComm_t, int *);
  ncclResult_t (*comm_cu_device)(ncclComm_t, int *);
  ncclResult_t (*all_reduce)(const void *, void *, size_t, ncclDataType_t, ncclRedOp_t, ncclComm_t,
                             cudaStream_t);
  ncclResult_t (*reduce)(const void *, void *, size_t, ncclDataType_t, ncclRedOp_t, int, ncclComm_t,
                         cudaStream_t);
  ncclResult_t (*broadcast)(const void *, void *, size_t, ncclDataType_t, int, ncclComm_t,
                            cudaStream_t);
  ncclResult_t (*group_start)(void);
  ncclResult_t (*group_end)(void);
};

static const struct {
  const char *name;
  size_t at;
} nccl_symbols[] = {
    {"ncclGetUniqueId", offsetof(fo_nccl_lib, get_unique_id)},
    {"ncclCommInitRank", offsetof(fo_nccl_lib, comm_init_rank)},
    {"ncclCommDestroy", offsetof(fo_nccl_lib, comm_destroy)},
    {"ncclCommAbort", offsetof(fo_nccl_lib, comm_abort)},
    {"ncclCommGetAsyncError", offsetof(fo_nccl_lib, comm_get_async_error)},
    {"ncclGetErrorString", offsetof(fo_nccl_lib, get_error_string)},
    {"ncclGetLastError", offsetof(fo_nccl_lib, get_last_error)},
    {"ncclCommCount", offsetof(fo_nccl_lib, comm_count)},
    {"ncclCommUserRank", offsetof(fo_nccl_lib, comm_user_rank)},
    {"ncclCommCuDevice", offsetof(fo_nccl_lib, comm_cu_device)},
    {"ncclAllReduce", offsetof(fo_nccl_lib, all_reduce)},
    {"ncclReduce", offsetof(fo_nccl_lib, reduce)},
    {"ncclBroadcast", offsetof(fo_nccl_lib, broadcast)},
    {"ncclGroupStart", offsetof(fo_nccl_lib, group_start)},
    {"ncclGroupEnd", offsetof(fo_nccl_lib, group_end)},
};

/* The sonames tried, in order: NCCL 2's, then the development link. */
static const char *const nccl_sonames[] = {"libnccl.so.2", "libnccl.so"};

static void unload(fo_nccl_lib *lib) {
  if (!lib) return;
  if (lib->handle) dlclose(lib->handle);
  free(lib);
}

static fo_status load(const char *fn, fo_nccl_lib **out) {
  fo_nccl_lib *lib = calloc(1, sizeof *lib);
  if (!lib) return fo_fail(FO_ERR_OUT_OF_MEMORY, fn, "no memory for the NCCL library");
  /* the first soname's error, copied: the next dlopen frees dlerror's */
  char why[256] = "libnccl.so.2 not found";
  for (size_t i = 0; i < sizeof nccl_sonames / sizeof *nccl_sonames && !lib->handle; i++) {
    lib->handle = dlopen(nccl_sonames[i], RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
    const char *e = lib->handle ? NULL : dlerror();
    if (i == 0 && e) snprintf(why, sizeof why, "%s", e);
  }
  if (!lib->handle) {
    free(lib);
    return fo_fail(FO_ERR_UNSUPPORTED, fn,
                   "NCCL is not available: %s (install NCCL 2, or put libnccl.so.2 on the "
                   "loader's path: LD_LIBRARY_PATH or ld.so.conf; host communicators need no "
                   "NCCL)",
                   why);
  }
  for (size_t i = 0; i < sizeof nccl_symbols / sizeof *nccl_symbols; i++) {
    void *sym = dlsym(lib->handle, nccl_symbols[i].name);
    if (!sym) {
      unload(lib);
      return fo_fail(FO_ERR_UNSUPPORTED, fn,
                     "the NCCL library found has no %s: fusedopt needs NCCL 2.13 or newer",
                     nccl_symbols[i].name);
    }
    memcpy((char *)lib + nccl_symbols[i].at, &sym, sizeof sym);
  }
  *out = lib;
  return FO_SUCCESS;
}

/* -------------------------------------------------------------- errors */

/* r, or once a non-blocking communicator's call in progress is done, its
 * outcome: ncclCommGetAsyncError is polled until it leaves ncclInProgress
 * (NCCL's rule before any other call on the communicator). */
static ncclResult_t settle(const fo_nccl_lib *lib, ncclComm_t comm, ncclResult_t r) {
  while (r == ncclInProgress && comm) {
    ncclResult_t state = ncclInProgress;
    ncclResult_t q = lib->comm_get_async_error(comm, &state);
    if (q != ncclSuccess) return q;
    r = state;
    if (r == ncclInProgress) sched_yield();
  }
  return r;
}

/* A failure that leaves the communicator usable: NCCL refused the call's
 * arguments before doing anything. */
static int refused_before_work(ncclResult_t r) {
  return r == ncclInvalidArgument || r == ncclInvalidUsage;
}

/* FO_ERR_COMM: what failed, NCCL's words for r and its last error, then
 * `after`. */
static fo_status nccl_fail_then(const char *fn, const fo_nccl_lib *lib, const char *what,
                                ncclResult_t r, ncclComm_t comm, const char *after) {
  const char *detail = lib->get_last_error(comm);
  int has = detail && detail[0];
  return fo_fail(FO_ERR_COMM, fn, "%s: %s (ncclResult %d)%s%s%s", what, lib->get_error_string(r),
                 (int)r, has ? ": " : "", has ? detail : "", after);
}

static fo_status nccl_fail(const char *fn, const fo_nccl_lib *lib, const char *what, ncclResult_t r,
                           ncclComm_t comm) {
  return nccl_fail_then(fn, lib, what, r, comm, "");
}

#define NCCL_TRY(fn, lib, what, call, comm)    \
  do {                                         \
    ncclResult_t r_ = (call);                  \
    if (r_ != ncclSuccess) {                   \
      st = nccl_fail(fn, lib, what, r_, comm); \
      goto done;                               \
    }                                          \
  } while (0)

/* -------------------------------------------------------------- create */

fo_status fo_nccl_get_id(fo_nccl_id *out) {
  static const char fn[] = "fo_nccl_get_id";
  if (!out) return fo_fail(FO_ERR_NULL_POINTER, fn, "out is NULL");
  fo_nccl_lib *lib = NULL;
  fo_status st = load(fn, &lib);
  if (st != FO_SUCCESS) return st;
  ncclUniqueId id;
  ncclResult_t r = lib->get_unique_id(&id);
  if (r == ncclSuccess)
    memcpy(out->internal, id.internal, sizeof out->internal);
  else
    st = nccl_fail(fn, lib, "ncclGetUniqueId", r, NULL);
  unload(lib);
  return st;
}

static fo_status new_nccl_comm(const char *fn, fo_nccl_lib *lib, ncclComm_t nccl, int owns,
                               int rank, int size, int device, fo_comm **out) {
  fo_comm *c = calloc(1, sizeof *c);
  if (!c) return fo_fail(FO_ERR_OUT_OF_MEMORY, fn, "no memory for the communicator");
  c->kind = FO_COMM_NCCL;
  c->lib = lib;
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
  fo_status st = fo_nccl_check_init(fn, out, id, rank, size, device);
  if (st != FO_SUCCESS) return st;
  fo_nccl_lib *lib = NULL;
  st = load(fn, &lib);
  if (st != FO_SUCCESS) return st;
  ncclUniqueId uid;
  memcpy(uid.internal, id->internal, sizeof uid.internal);
  ncclComm_t nccl = NULL;
  int prev = device;
  st = fo_cuda_enter(fn, device, &prev);
  if (st == FO_SUCCESS) {
    ncclResult_t r = lib->comm_init_rank(&nccl, size, uid, rank);
    r = settle(lib, nccl, r); /* NCCL_COMM_BLOCKING=0: still initialising */
    fo_cuda_leave(device, prev);
    if (r != ncclSuccess) {
      st = nccl_fail(fn, lib, "ncclCommInitRank", r, nccl);
      /* a communicator NCCL handed back in error would wait for peers */
      if (nccl) (void)lib->comm_abort(nccl);
      nccl = NULL;
    }
  }
  if (st == FO_SUCCESS) {
    st = new_nccl_comm(fn, lib, nccl, 1, rank, size, device, out);
    if (st != FO_SUCCESS) (void)lib->comm_destroy(nccl);
  }
  if (st != FO_SUCCESS) unload(lib);
  return st;
}

fo_status fo_comm_wrap_nccl(fo_comm **out, fo_nccl_comm_t nccl) {
  static const char fn[] = "fo_comm_wrap_nccl";
  if (!out || !nccl) return fo_fail(FO_ERR_NULL_POINTER, fn, "%s is NULL", out ? "nccl" : "out");
  fo_nccl_lib *lib = NULL;
  fo_status st = load(fn, &lib);
  if (st != FO_SUCCESS) return st;
  int rank = 0, size = 0, device = 0;
  /* a non-blocking communicator may still be initialising: wait for it,
   * and refuse one already in error */
  NCCL_TRY(fn, lib, "the communicator's state (ncclCommGetAsyncError)",
           settle(lib, nccl, ncclInProgress), nccl);
  NCCL_TRY(fn, lib, "ncclCommCount", lib->comm_count(nccl, &size), nccl);
  NCCL_TRY(fn, lib, "ncclCommUserRank", lib->comm_user_rank(nccl, &rank), nccl);
  NCCL_TRY(fn, lib, "ncclCommCuDevice", lib->comm_cu_device(nccl, &device), nccl);
  st = new_nccl_comm(fn, lib, nccl, 0, rank, size, device, out);
done:
  if (st != FO_SUCCESS) unload(lib);
  return st;
}

void fo_nccl_release(fo_comm *c) {
  fo_nccl_lib *lib = c->lib;
  if (c->owns_nccl && c->nccl) {
    /* A communicator with an error may wait forever for peers that are
     * gone: abort it.  Otherwise destroy it (which flushes its work). */
    ncclResult_t async = ncclSuccess;
    if (c->broken || lib->comm_get_async_error(c->nccl, &async) != ncclSuccess ||
        (async != ncclSuccess && async != ncclInProgress))
      (void)lib->comm_abort(c->nccl);
    else
      (void)lib->comm_destroy(c->nccl);
  }
  c->nccl = NULL;
  unload(lib);
  c->lib = NULL;
}

/* ---------------------------------------------------------- collectives */

#define BROKEN_ADVICE                                                                 \
  "; the NCCL communicator cannot be used again: destroy it (fo_comm_destroy aborts " \
  "one fusedopt created) and attach another"

/* A collective's failure: the communicator is broken unless NCCL refused
 * the call before doing anything (see the top of this file). */
static fo_status collective_failed(const char *fn, fo_comm *c, const char *what, ncclResult_t r) {
  if (!refused_before_work(r)) c->broken = 1;
  return nccl_fail_then(fn, c->lib, what, r, c->nccl, c->broken ? BROKEN_ADVICE : "");
}

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
  ncclResult_t r = c->lib->all_reduce(buf, buf, (size_t)count, nccl_type(dtype), ncclSum, c->nccl,
                                      (cudaStream_t)stream);
  r = settle(c->lib, c->nccl, r);
  fo_cuda_leave(c->device, prev);
  return r == ncclSuccess ? FO_SUCCESS : collective_failed(fn, c, "ncclAllReduce", r);
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
  const fo_nccl_lib *lib = c->lib;
  ncclResult_t r = lib->group_start();
  const char *what = "ncclGroupStart";
  for (int k = 0; k < c->size && r == ncclSuccess; k++) {
    if (parts[k] > 0) {
      what = reduce ? "ncclReduce" : "ncclBroadcast";
      r = reduce
              ? lib->reduce(buf, buf, (size_t)parts[k], type, ncclSum, k, c->nccl,
                            (cudaStream_t)stream)
              : lib->broadcast(buf, buf, (size_t)parts[k], type, k, c->nccl, (cudaStream_t)stream);
    }
    buf += (size_t)parts[k] * unit;
  }
  /* the group must be closed even when a call inside it failed */
  ncclResult_t end = settle(lib, c->nccl, lib->group_end());
  if (r == ncclSuccess && end != ncclSuccess) {
    r = end;
    what = "ncclGroupEnd";
  }
  fo_cuda_leave(c->device, prev);
  return r == ncclSuccess ? FO_SUCCESS : collective_failed(fn, c, what, r);
}

fo_status fo_nccl_reduce_scatter(const char *fn, fo_comm *c, void *buf, const int64_t *counts,
                                 fo_dtype dtype, fo_stream_t stream) {
  return rooted_group(fn, c, buf, counts, fo_dtype_size(dtype), nccl_type(dtype), 1, stream);
}

fo_status fo_nccl_all_gather(const char *fn, fo_comm *c, void *buf, const int64_t *bytes,
                             fo_stream_t stream) {
  return rooted_group(fn, c, buf, bytes, 1, ncclUint8, 0, stream);
}

fo_status fo_nccl_check_async(const char *fn, fo_comm *c) {
  if (c->broken)
    return fo_fail(FO_ERR_COMM, fn, "the NCCL communicator failed earlier%s", BROKEN_ADVICE);
  ncclResult_t async = settle(c->lib, c->nccl, ncclInProgress);
  if (async != ncclSuccess) {
    c->broken = 1; /* whatever its code: an asynchronous error came after work began */
    return collective_failed(fn, c, "the communicator reports an earlier asynchronous error",
                             async);
  }
  return FO_SUCCESS;
}
