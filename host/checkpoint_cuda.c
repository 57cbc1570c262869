/*
 * checkpoint_cuda.c -- the device side of checkpoints: waiting for the
 * device and copying buffers between device memory and host staging.
 * Every function makes the optimizer's device current and restores the
 * caller's device before it returns.
 */
#include "checkpoint_cuda.h"

#include <cuda_runtime_api.h>

static fo_status cuda_fail(const char *fn, const char *what, cudaError_t e) {
  fo_cuda_forget(e);
  return fo_fail(FO_ERR_CUDA, fn, "%s: %s (%s)", what, cudaGetErrorName(e), cudaGetErrorString(e));
}

/* Run on device: make it current, remember the caller's. */
static cudaError_t enter(int device, int *prev) {
  cudaError_t e = cudaGetDevice(prev);
  if (e == cudaSuccess && *prev != device) e = cudaSetDevice(device);
  return e;
}

static void leave(int device, int prev) {
  if (prev != device) (void)cudaSetDevice(prev);
}

fo_status fo_ckpt_cuda_wait(const char *fn, int device) {
  int prev = device;
  cudaError_t e = enter(device, &prev);
  if (e == cudaSuccess) e = cudaDeviceSynchronize();
  leave(device, prev);
  return e == cudaSuccess ? FO_SUCCESS : cuda_fail(fn, "waiting for the device", e);
}

fo_status fo_ckpt_cuda_copy(const char *fn, int device, void *dst, const void *src, size_t bytes,
                            int to_device) {
  int prev = device;
  cudaError_t e = enter(device, &prev);
  if (e == cudaSuccess)
    e = cudaMemcpy(dst, src, bytes, to_device ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost);
  leave(device, prev);
  return e == cudaSuccess ? FO_SUCCESS
                          : cuda_fail(fn,
                                      to_device ? "copying the checkpoint to the device"
                                                : "copying the state from the device",
                                      e);
}

fo_status fo_ckpt_cuda_copy_in(void *ctx, void *dst, const void *src, size_t bytes) {
  const fo_ckpt_cuda_ctx *c = ctx;
  return fo_ckpt_cuda_copy(c->fn, c->device, dst, src, bytes, 1);
}
