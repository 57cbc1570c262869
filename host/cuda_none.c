/*
 * cuda_none.c -- the CUDA executor of a CPU-only build (FO_ENABLE_CUDA=OFF,
 * docs/install.md): it replaces cuda_exec.c, checkpoint_cuda.c and
 * comm_cuda.c, so that the library needs neither the CUDA toolkit to build
 * nor the CUDA runtime to run.  Asking for FO_EXEC_CUDA (or a device count)
 * fails with FO_ERR_NO_DEVICE, as on a machine without a GPU, and the
 * message says why: a program that falls back to the CPU when there is no
 * device works unchanged.  No optimizer on FO_EXEC_CUDA can exist here, so
 * every other function is unreachable and reports an internal error.
 */
#include <stddef.h>

#include "checkpoint_cuda.h"
#include "comm_internal.h"
#include "internal.h"

#define FO_NO_CUDA_MSG                                                                  \
  "no CUDA device: this fusedopt was built without CUDA (FO_ENABLE_CUDA=OFF), so only " \
  "FO_EXEC_CPU is available; FO_EXEC_CUDA needs a build with the CUDA toolkit"

static fo_status unreachable(const char *fn) {
  return fo_fail(FO_ERR_INTERNAL, fn, "a CUDA path was reached in a build without CUDA");
}

fo_status fo_cuda_available(const char *fn, int device) {
  (void)device;
  return fo_fail(FO_ERR_NO_DEVICE, fn, FO_NO_CUDA_MSG);
}

fo_status fo_cuda_device_count(int *count) {
  static const char fn[] = "fo_cuda_device_count";
  if (!count) return fo_fail(FO_ERR_NULL_POINTER, fn, "count is NULL");
  return fo_cuda_available(fn, 0);
}

void fo_cuda_forget(int e) {
  (void)e;
}

/* Without CUDA every pointer is host memory. */
fo_status fo_cuda_check_pointer(const char *fn, const char *what, const void *ptr, size_t bytes,
                                int cuda, int device) {
  (void)what, (void)ptr, (void)bytes, (void)device;
  return cuda ? fo_cuda_available(fn, device) : FO_SUCCESS;
}

fo_status fo_cuda_check_stream(const char *fn, fo_stream_t stream, int device) {
  if (!stream) return FO_SUCCESS;
  (void)device;
  return fo_fail(FO_ERR_INVALID_ARGUMENT, fn,
                 "stream %p is not a valid CUDA stream: this fusedopt was built without CUDA",
                 (void *)stream);
}

fo_status fo_cuda_alloc_zeroed(const char *fn, int device, size_t bytes, void **out) {
  (void)device, (void)bytes, (void)out;
  return unreachable(fn);
}

void fo_cuda_free(int device, void *p) {
  (void)device, (void)p;
}

fo_status fo_cuda_upload_plan(const char *fn, fo_optimizer *opt) {
  (void)opt;
  return unreachable(fn);
}

fo_status fo_cuda_upload(const char *fn, int device, const void *src, size_t bytes, void **dst) {
  (void)device, (void)src, (void)bytes, (void)dst;
  return unreachable(fn);
}

fo_status fo_cuda_step(fo_optimizer *opt, fo_stream_t stream) {
  (void)opt, (void)stream;
  return unreachable("fo_optimizer_step");
}

fo_status fo_cuda_read_state(const char *fn, const fo_optimizer *opt, fo_step_state *out) {
  (void)opt, (void)out;
  return unreachable(fn);
}

fo_status fo_cuda_write_state(const char *fn, fo_optimizer *opt, const fo_step_state *in) {
  (void)opt, (void)in;
  return unreachable(fn);
}

fo_status fo_cuda_sync_master(fo_optimizer *opt, fo_stream_t stream) {
  (void)opt, (void)stream;
  return unreachable("fo_optimizer_sync_master");
}

fo_status fo_cuda_zero_grad(fo_optimizer *opt, fo_stream_t stream) {
  (void)opt, (void)stream;
  return unreachable("fo_optimizer_zero_grad");
}

fo_status fo_cuda_synchronize(int device) {
  (void)device;
  return unreachable("fo_cuda_synchronize");
}

fo_status fo_cuda_copy(const char *fn, int device, void *dst, const void *src, size_t bytes) {
  (void)device, (void)dst, (void)src, (void)bytes;
  return unreachable(fn);
}

/* ------------------------------------------------------------ checkpoints */

fo_status fo_ckpt_cuda_wait(const char *fn, int device) {
  (void)device;
  return unreachable(fn);
}

fo_status fo_ckpt_cuda_copy(const char *fn, int device, void *dst, const void *src, size_t bytes,
                            int to_device) {
  (void)device, (void)dst, (void)src, (void)bytes, (void)to_device;
  return unreachable(fn);
}

fo_status fo_ckpt_cuda_copy_in(void *ctx, void *dst, const void *src, size_t bytes) {
  const fo_ckpt_cuda_ctx *c = ctx;
  (void)dst, (void)src, (void)bytes;
  return unreachable(c->fn);
}

/* ---------------------------------------------------- data parallelism */

fo_status fo_dp_cuda_convert(const char *fn, int device, const void *src, fo_dtype from, void *dst,
                             fo_dtype to, int64_t n, fo_stream_t stream) {
  (void)device, (void)src, (void)from, (void)dst, (void)to, (void)n, (void)stream;
  return unreachable(fn);
}

fo_status fo_dp_cuda_events_create(const char *fn, int device, void **events, int64_t n) {
  (void)device, (void)events, (void)n;
  return unreachable(fn);
}

void fo_dp_cuda_events_destroy(int device, void **events, int64_t n) {
  (void)device, (void)events, (void)n;
}

fo_status fo_dp_cuda_record(const char *fn, int device, void *event, fo_stream_t stream) {
  (void)device, (void)event, (void)stream;
  return unreachable(fn);
}

fo_status fo_dp_cuda_wait(const char *fn, int device, fo_stream_t stream, void *event) {
  (void)device, (void)stream, (void)event;
  return unreachable(fn);
}
