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

/* The CUDA executor's step state and stream check, and a copy within
 * device memory, for the checkpoint code (host/exec.h has the general
 * forms). */
fo_status fo_cuda_read_state(const char *func, const fo_optimizer *opt, fo_step_state *out);
fo_status fo_cuda_write_state(const char *func, fo_optimizer *opt, const fo_step_state *in);
fo_status fo_cuda_check_stream(const char *func, fo_stream_t stream, int device);
fo_status fo_cuda_copy(const char *func, int device, void *dst, const void *src, size_t bytes);

#endif /* FO_CHECKPOINT_CUDA_H */
