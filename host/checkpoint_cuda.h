/*
 * checkpoint_cuda.h -- what host/checkpoint.c needs of the device
 * (host/checkpoint_cuda.c).  Not installed.
 */
#ifndef FO_CHECKPOINT_CUDA_H
#define FO_CHECKPOINT_CUDA_H

#include <stddef.h>

#include "internal.h"

/* Wait until the device is idle: every step enqueued on any stream has
 * written its results (synchronizes). */
fo_status fo_ckpt_cuda_wait(const char *func, int device);

/* A synchronous copy between device memory and host memory. */
fo_status fo_ckpt_cuda_copy(const char *func, int device, void *dst, const void *src, size_t bytes,
                            int to_device);

/* The context of fo_ckpt_cuda_copy_in, an fo_ckpt_copy_fn. */
typedef struct fo_ckpt_cuda_ctx {
  const char *fn;
  int device;
} fo_ckpt_cuda_ctx;

fo_status fo_ckpt_cuda_copy_in(void *ctx, void *dst, const void *src, size_t bytes);

#endif /* FO_CHECKPOINT_CUDA_H */
