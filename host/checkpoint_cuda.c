/*
 * checkpoint_cuda.c -- the device side of checkpoints, on the device layer
 * (host/cuda_device.h): waiting for the device and copying buffers between
 * device memory and host staging.
 */
#include "checkpoint_cuda.h"

#include "cuda_device.h"

fo_status fo_ckpt_cuda_wait(const char *fn, int device) {
  return fo_cuda_synchronize(fn, device);
}

fo_status fo_ckpt_cuda_copy(const char *fn, int device, void *dst, const void *src, size_t bytes,
                            int to_device) {
  return fo_cuda_memcpy(fn, device, dst, src, bytes,
                        to_device ? FO_COPY_FROM_HOST : FO_COPY_TO_HOST);
}

fo_status fo_ckpt_cuda_copy_in(void *ctx, void *dst, const void *src, size_t bytes) {
  const fo_ckpt_cuda_ctx *c = ctx;
  return fo_ckpt_cuda_copy(c->fn, c->device, dst, src, bytes, 1);
}

fo_status fo_cuda_read_state(const char *fn, const fo_optimizer *opt, fo_step_state *out) {
  return fo_exec_read_state(fn, opt, out);
}

fo_status fo_cuda_write_state(const char *fn, fo_optimizer *opt, const fo_step_state *in) {
  return fo_exec_write_state(fn, opt, in);
}

fo_status fo_cuda_copy(const char *fn, int device, void *dst, const void *src, size_t bytes) {
  return fo_cuda_memcpy(fn, device, dst, src, bytes, FO_COPY_WITHIN);
}
