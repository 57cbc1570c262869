/*
 * comm_cuda.c -- the CUDA side of gradient averaging: the events that
 * order a bucket's reduction before the step on another stream, and the
 * fp32 widening of 16-bit buckets (kernels/convert.cu).  Nothing here
 * waits for the device.  Each call makes the optimizer's device current
 * and restores the caller's.
 */
#include <cuda_runtime_api.h>

#include "comm_internal.h"
#include "launch.h"

static fo_status cuda_fail(const char *fn, const char *what, cudaError_t e) {
  fo_cuda_forget(e);
  return fo_fail(e == cudaErrorMemoryAllocation ? FO_ERR_OUT_OF_MEMORY : FO_ERR_CUDA, fn,
                 "%s: %s (%s)", what, cudaGetErrorName(e), cudaGetErrorString(e));
}

/* Make device current; *prev receives the caller's device. */
static cudaError_t on_device(int device, int *prev) {
  cudaError_t e = cudaGetDevice(prev);
  if (e == cudaSuccess && *prev != device) e = cudaSetDevice(device);
  return e;
}

static void off_device(int device, int prev) {
  if (prev != device) (void)cudaSetDevice(prev);
}

/* Return the status of expr (a cudaError_t) run with device current; the
 * caller's device is restored whatever happens. */
#define ON_DEVICE(fn, device, what, expr)                  \
  do {                                                     \
    int prev_ = device;                                    \
    cudaError_t e_ = on_device(device, &prev_);            \
    if (e_ == cudaSuccess) e_ = (cudaError_t)(expr);       \
    off_device(device, prev_);                             \
    if (e_ != cudaSuccess) return cuda_fail(fn, what, e_); \
    return FO_SUCCESS;                                     \
  } while (0)

fo_status fo_dp_cuda_convert(const char *fn, int device, const void *src, fo_dtype from, void *dst,
                             fo_dtype to, int64_t n, fo_stream_t stream) {
  ON_DEVICE(fn, device, "dtype conversion kernel",
            fo_launch_convert(src, (int32_t)from, dst, (int32_t)to, n, stream));
}

static cudaError_t create_all(void **events, int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    cudaEvent_t ev = NULL;
    cudaError_t e = cudaEventCreateWithFlags(&ev, cudaEventDisableTiming);
    if (e != cudaSuccess) return e;
    events[i] = ev;
  }
  return cudaSuccess;
}

fo_status fo_dp_cuda_events_create(const char *fn, int device, void **events, int64_t n) {
  ON_DEVICE(fn, device, "cudaEventCreateWithFlags", create_all(events, n));
}

void fo_dp_cuda_events_destroy(int device, void **events, int64_t n) {
  if (!events) return;
  int prev = device;
  cudaError_t e = on_device(device, &prev);
  if (e == cudaSuccess)
    for (int64_t i = 0; i < n; i++)
      if (events[i]) {
        const cudaError_t d = cudaEventDestroy((cudaEvent_t)events[i]);
        if (d != cudaSuccess) e = d;
      }
  off_device(device, prev);
  fo_cuda_forget(e);
}

fo_status fo_dp_cuda_record(const char *fn, int device, void *event, fo_stream_t stream) {
  ON_DEVICE(fn, device, "cudaEventRecord",
            cudaEventRecord((cudaEvent_t)event, (cudaStream_t)stream));
}

fo_status fo_dp_cuda_wait(const char *fn, int device, fo_stream_t stream, void *event) {
  ON_DEVICE(fn, device, "cudaStreamWaitEvent",
            cudaStreamWaitEvent((cudaStream_t)stream, (cudaEvent_t)event, 0));
}
