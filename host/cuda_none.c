/*
 * cuda_none.c -- the CUDA side of a CPU-only build (FO_ENABLE_CUDA=OFF,
 * docs/install.md): it replaces cuda_device.c and exec_cuda.c, so that
 * the library needs neither the CUDA toolkit to build nor the CUDA runtime
 * to run.  Asking for FO_EXEC_CUDA (or a device
 * count) fails with FO_ERR_NO_DEVICE, as on a machine without a GPU, and
 * the message says why: a program that falls back to the CPU when there
 * is no device works unchanged.  No optimizer on FO_EXEC_CUDA can exist
 * here (fo_exec_cuda_ops() is NULL).
 */
#include <stddef.h>

#include "cuda_device.h"

#define FO_NO_CUDA_MSG                                                                  \
  "no CUDA device: this fusedopt was built without CUDA (FO_ENABLE_CUDA=OFF), so only " \
  "FO_EXEC_CPU is available; FO_EXEC_CUDA needs a build with the CUDA toolkit"

const fo_exec_ops *fo_exec_cuda_ops(void) {
  return NULL;
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
