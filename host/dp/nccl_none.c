/*
 * nccl_none.c -- NCCL communicators in a build without NCCL
 * (FO_ENABLE_NCCL=OFF, always so without CUDA; docs/install.md): it
 * replaces nccl.c.  The arguments are checked as nccl.c checks
 * them; then creating or wrapping an NCCL communicator fails with
 * FO_ERR_NO_DEVICE when there is no usable CUDA device (or no CUDA in the
 * build), else with FO_ERR_UNSUPPORTED, the message saying NCCL was not
 * built in.  No FO_COMM_NCCL communicator can exist here, so the
 * collectives are unreachable.
 */
#include "comm_internal.h"

#define FO_NO_NCCL_MSG                                                                     \
  "this fusedopt was built without NCCL (FO_ENABLE_NCCL=OFF): NCCL communicators are not " \
  "available; host communicators (fo_comm_create_host, fusedopt_mpi) are"

static fo_status unreachable(const char *fn) {
  return fo_fail(FO_ERR_INTERNAL, fn, "an NCCL path was reached in a build without NCCL");
}

fo_status fo_nccl_get_id(fo_nccl_id *out) {
  static const char fn[] = "fo_nccl_get_id";
  if (!out) return fo_fail(FO_ERR_NULL_POINTER, fn, "out is NULL");
  return fo_fail(FO_ERR_UNSUPPORTED, fn, FO_NO_NCCL_MSG);
}

fo_status fo_comm_init_nccl(fo_comm **out, const fo_nccl_id *id, int rank, int size, int device) {
  static const char fn[] = "fo_comm_init_nccl";
  fo_status st = fo_nccl_check_init(fn, out, id, rank, size, device);
  if (st != FO_SUCCESS) return st;
  return fo_fail(FO_ERR_UNSUPPORTED, fn, FO_NO_NCCL_MSG);
}

fo_status fo_comm_wrap_nccl(fo_comm **out, fo_nccl_comm_t nccl) {
  static const char fn[] = "fo_comm_wrap_nccl";
  if (!out || !nccl) return fo_fail(FO_ERR_NULL_POINTER, fn, "%s is NULL", out ? "nccl" : "out");
  return fo_fail(FO_ERR_UNSUPPORTED, fn, FO_NO_NCCL_MSG);
}

void fo_nccl_release(fo_comm *c) {
  (void)c;
}

fo_status fo_nccl_sum(const char *fn, fo_comm *c, void *buf, int64_t count, fo_dtype dtype,
                      fo_stream_t stream) {
  (void)c, (void)buf, (void)count, (void)dtype, (void)stream;
  return unreachable(fn);
}

fo_status fo_nccl_reduce_scatter(const char *fn, fo_comm *c, void *buf, const int64_t *counts,
                                 fo_dtype dtype, fo_stream_t stream) {
  (void)c, (void)buf, (void)counts, (void)dtype, (void)stream;
  return unreachable(fn);
}

fo_status fo_nccl_all_gather(const char *fn, fo_comm *c, void *buf, const int64_t *bytes,
                             fo_stream_t stream) {
  (void)c, (void)buf, (void)bytes, (void)stream;
  return unreachable(fn);
}

fo_status fo_nccl_check_async(const char *fn, fo_comm *c) {
  (void)c;
  return unreachable(fn);
}
