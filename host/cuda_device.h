/*
 * cuda_device.h -- the CUDA device layer (host/cuda_device.c): the one
 * place that makes a device current and gives the caller's back, turns a
 * CUDA error into a status, and allocates, copies, waits and orders work
 * on a device.  Every other file that needs the device goes through it
 * (the CUDA executor, NCCL communicators, checkpoints).
 *
 * Each function that takes a device makes it current for its work and
 * restores the caller's current device before it returns, whatever
 * happens.  Errors: FO_ERR_OUT_OF_MEMORY for a failed allocation,
 * FO_ERR_CUDA for every other CUDA error, under the caller's function name
 * with CUDA's error name and string.  A failed call of ours is forgotten
 * from CUDA's last-error slot; a pending error of the caller's is left.
 *
 * Without CUDA in the build (FO_ENABLE_CUDA=OFF) host/cuda_none.c gives
 * the argument checks and fo_cuda_available; nothing else is reachable.
 */
#ifndef FO_CUDA_DEVICE_H
#define FO_CUDA_DEVICE_H

#include "exec.h"

/* Forget error e (a cudaError_t) if it is the one the runtime now holds as
 * its last error. */
void fo_cuda_forget(int e);
/* The status of CUDA error e (a cudaError_t) of the call what, recorded
 * under func. */
fo_status fo_cuda_fail(const char *func, const char *what, int e);

/* Make device current; *prev receives the caller's device.  Pair every
 * success with fo_cuda_leave. */
fo_status fo_cuda_enter(const char *func, int device, int *prev);
void fo_cuda_leave(int device, int prev);

/* Check that ptr .. ptr + bytes is memory the executor may use: device
 * memory of device (cuda != 0) or host memory (cuda == 0; always so when
 * there is no driver). */
fo_status fo_cuda_check_pointer(const char *func, const char *what, const void *ptr, size_t bytes,
                                int cuda, int device);
/* A stream of device, or NULL (its default stream).  A stream being
 * captured into a graph is accepted as is (the capture forbids the query;
 * the eager calls before it checked the stream). */
fo_status fo_cuda_check_stream(const char *func, fo_stream_t stream, int device);
/* 1 when work enqueued on stream now goes into a CUDA graph (or when the
 * runtime cannot say); 0 for the legacy default stream, which cannot be
 * captured. */
int fo_cuda_stream_capturing(fo_stream_t stream);
/* The capture sequence that work enqueued on stream now goes into: 0 when
 * none (the legacy default stream never), FO_CAPTURE_UNKNOWN when the
 * runtime cannot say, else the capture's process-unique id plus one. */
uint64_t fo_cuda_capture_of(fo_stream_t stream);
/* The same for a stream of device, asked with device current (so that
 * cudaStreamPerThread names device's per-thread stream, as when work is
 * enqueued there), from a thread whose current device may be another. */
uint64_t fo_cuda_capture_on(int device, fo_stream_t stream);
/* 1 when a and b name one stream on every thread (fo_exec_ops.same_stream):
 * equal handles other than cudaStreamPerThread. */
int fo_cuda_same_stream(fo_stream_t a, fo_stream_t b);

/* Zero-filled device memory (bytes may be 0), and its release. */
fo_status fo_cuda_alloc_zeroed(const char *func, int device, size_t bytes, void **out);
void fo_cuda_free(int device, void *p);
/* Allocate bytes of device memory holding a copy of src (host). */
fo_status fo_cuda_upload(const char *func, int device, const void *src, size_t bytes, void **dst);
/* A synchronous copy (the data has landed when it returns). */
fo_status fo_cuda_memcpy(const char *func, int device, void *dst, const void *src, size_t bytes,
                         fo_copy_dir dir);
/* Wait for everything enqueued on device. */
fo_status fo_cuda_synchronize(const char *func, int device);

/* Events that order work between streams (timing disabled). */
fo_status fo_cuda_events_create(const char *func, int device, void **events, int64_t n);
void fo_cuda_events_destroy(int device, void **events, int64_t n);
fo_status fo_cuda_record(const char *func, int device, void *event, fo_stream_t stream);
fo_status fo_cuda_wait(const char *func, int device, fo_stream_t stream, void *event);

/* Convert n elements between dtypes in device memory, on stream
 * (kernels/convert.cu). */
fo_status fo_cuda_convert(const char *func, int device, const void *src, fo_dtype from, void *dst,
                          fo_dtype to, int64_t n, fo_stream_t stream);

/* Whether device supports Programmatic Dependent Launch (compute
 * capability 9.0 or newer); 0 when it cannot be asked. */
int fo_cuda_supports_pdl(int device);

/* Run expr (a cudaError_t, or a launcher's int) with device current and
 * return its status from the calling function. */
#define FO_CUDA_RETURN(func, device, what, expr)                \
  do {                                                          \
    int prev_;                                                  \
    fo_status st_ = fo_cuda_enter(func, device, &prev_);        \
    if (st_ != FO_SUCCESS) return st_;                          \
    int e_ = (int)(expr);                                       \
    fo_cuda_leave(device, prev_);                               \
    return e_ == 0 ? FO_SUCCESS : fo_cuda_fail(func, what, e_); \
  } while (0)

#endif /* FO_CUDA_DEVICE_H */
