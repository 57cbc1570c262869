/*
 * cuda_device.c -- the CUDA device layer (host/cuda_device.h).  Nothing
 * here knows about optimizers: devices, memory, streams, events.
 */
#include "cuda_device.h"

#include <cuda_runtime_api.h>

#include "launch.h"

/* ---------------------------------------------------------------- errors */

void fo_cuda_forget(int e) {
  if (e != (int)cudaSuccess && cudaPeekAtLastError() == (cudaError_t)e) (void)cudaGetLastError();
}

fo_status fo_cuda_fail(const char *fn, const char *what, int e) {
  const cudaError_t ce = (cudaError_t)e;
  fo_cuda_forget(e);
  fo_status st = ce == cudaErrorMemoryAllocation ? FO_ERR_OUT_OF_MEMORY : FO_ERR_CUDA;
  return fo_fail(st, fn, "%s: %s (%s)", what, cudaGetErrorName(ce), cudaGetErrorString(ce));
}

/* --------------------------------------------------------------- devices */

fo_status fo_cuda_enter(const char *fn, int device, int *prev) {
  cudaError_t e = cudaGetDevice(prev);
  if (e != cudaSuccess) return fo_cuda_fail(fn, "cudaGetDevice", e);
  if (*prev != device && (e = cudaSetDevice(device)) != cudaSuccess)
    return fo_cuda_fail(fn, "cudaSetDevice", e);
  return FO_SUCCESS;
}

void fo_cuda_leave(int device, int prev) {
  if (prev != device) (void)cudaSetDevice(prev);
}

/* Number of devices, 0 when there is no driver or no device; sets no error. */
static int devices_present(void) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    fo_cuda_forget(e);
    return 0;
  }
  return n;
}

fo_status fo_cuda_available(const char *fn, int device) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  fo_cuda_forget(e);
  if (e == cudaErrorInsufficientDriver)
    return fo_fail(FO_ERR_NO_DEVICE, fn,
                   "no usable CUDA driver: none is loaded, or it is older than the "
                   "CUDA runtime (%s)",
                   cudaGetErrorString(e));
  if (e == cudaErrorNoDevice || (e == cudaSuccess && n == 0))
    return fo_fail(FO_ERR_NO_DEVICE, fn, "the CUDA driver reports no CUDA device");
  if (e != cudaSuccess)
    return fo_fail(FO_ERR_NO_DEVICE, fn, "CUDA cannot be initialised: %s (%s)", cudaGetErrorName(e),
                   cudaGetErrorString(e));
  if (device >= n)
    return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "device = %d, but there are %d devices", device, n);
  return FO_SUCCESS;
}

fo_status fo_cuda_device_count(int *count) {
  static const char fn[] = "fo_cuda_device_count";
  if (!count) return fo_fail(FO_ERR_NULL_POINTER, fn, "count is NULL");
  fo_status st = fo_cuda_available(fn, 0);
  if (st != FO_SUCCESS) return st;
  return cudaGetDeviceCount(count) == cudaSuccess ? FO_SUCCESS
                                                  : fo_fail(FO_ERR_INTERNAL, fn, "device count");
}

/* PDL needs kernels compiled for sm_90 or newer, as the runtime runs them
 * on that device (fo_kernels_ptx_version): PTX 90 or newer runs only on a
 * device of compute capability 9.0 or newer, so that is checked too. */
int fo_cuda_supports_pdl(int device) {
  int prev;
  if (fo_cuda_enter("fo_cuda_supports_pdl", device, &prev) != FO_SUCCESS) return 0;
  const int ptx = fo_kernels_ptx_version();
  fo_cuda_leave(device, prev);
  return ptx >= 90;
}

/* ------------------------------------------------------------- arguments */

/* Check one address: device memory of device (cuda != 0) or host memory. */
static fo_status check_address(const char *fn, const char *what, const void *ptr, int cuda,
                               int device) {
  struct cudaPointerAttributes a;
  cudaError_t e = cudaPointerGetAttributes(&a, ptr);
  if (e != cudaSuccess) {
    fo_cuda_forget(e);
    if (!cuda) return FO_SUCCESS;
    return fo_fail(FO_ERR_BAD_POINTER, fn, "%s = %p is not memory CUDA knows (%s)", what, ptr,
                   cudaGetErrorName(e));
  }
  int on_device = a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged;
  if (cuda && !on_device)
    return fo_fail(FO_ERR_BAD_POINTER, fn,
                   "%s = %p is host memory; the CUDA executor needs device memory", what, ptr);
  if (cuda && a.type == cudaMemoryTypeDevice && a.device != device)
    return fo_fail(FO_ERR_BAD_POINTER, fn,
                   "%s = %p is memory of device %d; the optimizer runs on device %d", what, ptr,
                   a.device, device);
  if (!cuda && a.type == cudaMemoryTypeDevice)
    return fo_fail(FO_ERR_BAD_POINTER, fn,
                   "%s = %p is device memory; the CPU executor needs host memory", what, ptr);
  return FO_SUCCESS;
}

fo_status fo_cuda_check_pointer(const char *fn, const char *what, const void *ptr, size_t bytes,
                                int cuda, int device) {
  if (!cuda && devices_present() == 0) return FO_SUCCESS; /* no driver: host memory */
  fo_status st = check_address(fn, what, ptr, cuda, device);
  /* The last byte too: a buffer that runs off its allocation into host
   * memory (or another device's) would be written out of bounds. */
  if (st == FO_SUCCESS && bytes > 1)
    st = check_address(fn, what, (const char *)ptr + (bytes - 1), cuda, device);
  return st;
}

/* The legacy default stream (NULL) takes no work while a blocking stream
 * of its device is being captured, by any thread: the work would depend
 * implicitly on the capture, which CUDA refuses with
 * cudaErrorStreamCaptureImplicit at the first launch -- after the step has
 * begun, invalidating the caller's capture and faulting the optimizer.
 * cudaStreamIsCapturing asks without invalidating anything, so a call is
 * refused before any work instead. */
static fo_status check_legacy_usable(const char *fn, int device) {
  int prev;
  fo_status st = fo_cuda_enter(fn, device, &prev);
  if (st != FO_SUCCESS) return st;
  enum cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  const cudaError_t e = cudaStreamIsCapturing(cudaStreamLegacy, &capture);
  fo_cuda_leave(device, prev);
  if (e == cudaSuccess) return FO_SUCCESS;
  if (e != cudaErrorStreamCaptureImplicit) return fo_cuda_fail(fn, "cudaStreamIsCapturing", e);
  fo_cuda_forget(e);
  return fo_fail(FO_ERR_INVALID_ARGUMENT, fn,
                 "the legacy default stream (NULL) of device %d cannot take work while a "
                 "blocking stream of that device is being captured "
                 "(cudaErrorStreamCaptureImplicit): pass the capturing stream, or another",
                 device);
}

fo_status fo_cuda_check_stream(const char *fn, fo_stream_t stream, int device) {
  /* NULL: the legacy default stream of the optimizer's device */
  if (!stream || (cudaStream_t)stream == cudaStreamLegacy) return check_legacy_usable(fn, device);
  /* cudaStreamPerThread (as cudaStreamLegacy) names an implicit stream of
   * whichever device is current when work is enqueued, which is the
   * optimizer's (every call switches to it); cudaStreamGetDevice would
   * answer with the caller's current device instead. */
  if ((cudaStream_t)stream == cudaStreamPerThread) return FO_SUCCESS;
  /* cudaStreamGetDevice is one of the calls a stream capture forbids: it
   * fails with cudaErrorStreamCaptureUnsupported and invalidates the
   * capture (seen on an H200, CUDA 13.0).  cudaStreamIsCapturing is
   * allowed, so ask it first; a stream being captured is checked for its
   * device by the eager calls before the capture, not during it. */
  enum cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  cudaError_t e = cudaStreamIsCapturing((cudaStream_t)stream, &capture);
  int d = -1;
  if (e == cudaSuccess && capture != cudaStreamCaptureStatusNone) return FO_SUCCESS;
  if (e == cudaSuccess) e = cudaStreamGetDevice((cudaStream_t)stream, &d);
  /* a bad handle is the caller's argument; anything else (a sticky error
   * of earlier work on the device, say) is CUDA's to report */
  if (e != cudaSuccess && e != cudaErrorInvalidResourceHandle && e != cudaErrorInvalidValue &&
      e != cudaErrorContextIsDestroyed)
    return fo_cuda_fail(fn, "cudaStreamIsCapturing / cudaStreamGetDevice", e);
  if (e != cudaSuccess) {
    fo_cuda_forget(e);
    return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "stream %p is not a valid CUDA stream (%s)",
                   (void *)stream, cudaGetErrorName(e));
  }
  if (d != device)
    return fo_fail(FO_ERR_INVALID_ARGUMENT, fn,
                   "stream %p belongs to device %d; the optimizer runs on device %d",
                   (void *)stream, d, device);
  return FO_SUCCESS;
}

int fo_cuda_stream_capturing(fo_stream_t stream) {
  return fo_cuda_capture_of(stream) != 0; /* cannot tell: assume the worst */
}

uint64_t fo_cuda_capture_of(fo_stream_t stream) {
  /* the legacy default stream (NULL, or named) cannot be captured */
  if (!stream || (cudaStream_t)stream == cudaStreamLegacy) return 0;
  enum cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  unsigned long long id = 0;
#if CUDART_VERSION >= 13000
  cudaError_t e =
      cudaStreamGetCaptureInfo((cudaStream_t)stream, &capture, &id, NULL, NULL, NULL, NULL);
#else
  cudaError_t e = cudaStreamGetCaptureInfo((cudaStream_t)stream, &capture, &id, NULL, NULL, NULL);
#endif
  if (e != cudaSuccess) {
    fo_cuda_forget(e);
    return FO_CAPTURE_UNKNOWN;
  }
  return capture == cudaStreamCaptureStatusNone ? 0 : (uint64_t)id + 1;
}

uint64_t fo_cuda_capture_on(int device, fo_stream_t stream) {
  int prev;
  if (fo_cuda_enter("fo_cuda_capture_on", device, &prev) != FO_SUCCESS)
    return FO_CAPTURE_UNKNOWN; /* the caller's message replaces enter's */
  const uint64_t capture = fo_cuda_capture_of(stream);
  fo_cuda_leave(device, prev);
  return capture;
}

int fo_cuda_same_stream(fo_stream_t a, fo_stream_t b) {
  /* cudaStreamPerThread has one value on every thread and names each
   * thread's own stream: buckets reduced on one thread's and a step on
   * another's are not ordered unless the step waits for their events */
  return a == b && (cudaStream_t)a != cudaStreamPerThread;
}

/* ---------------------------------------------------------------- memory */

fo_status fo_cuda_alloc_zeroed(const char *fn, int device, size_t bytes, void **out) {
  int prev;
  fo_status st = fo_cuda_enter(fn, device, &prev);
  if (st != FO_SUCCESS) return st;
  void *p = NULL;
  cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
  if (e == cudaSuccess) {
    e = cudaMemset(p, 0, bytes);
    if (e != cudaSuccess) (void)cudaFree(p);
  }
  fo_cuda_leave(device, prev);
  if (e != cudaSuccess) return fo_cuda_fail(fn, "cudaMalloc", e);
  *out = p;
  return FO_SUCCESS;
}

void fo_cuda_free(int device, void *p) {
  int prev;
  if (!p || fo_cuda_enter("fo_cuda_free", device, &prev) != FO_SUCCESS) return;
  (void)cudaFree(p);
  fo_cuda_leave(device, prev);
}

fo_status fo_cuda_memcpy(const char *fn, int device, void *dst, const void *src, size_t bytes,
                         fo_copy_dir dir) {
  static const enum cudaMemcpyKind kind[] = {cudaMemcpyDeviceToDevice, cudaMemcpyDeviceToHost,
                                             cudaMemcpyHostToDevice};
  static const char *const what[] = {"cudaMemcpy", "copying from the device",
                                     "copying to the device"};
  if (bytes == 0) return FO_SUCCESS;
  int prev;
  fo_status st = fo_cuda_enter(fn, device, &prev);
  if (st != FO_SUCCESS) return st;
  cudaError_t e = cudaMemcpy(dst, src, bytes, kind[dir]);
  /* A copy from pageable memory may return before the data has landed,
   * and one on the legacy stream is not ordered before a non-blocking
   * stream's work: wait, so that any later step sees it. */
  if (e == cudaSuccess && dir != FO_COPY_TO_HOST) e = cudaDeviceSynchronize();
  fo_cuda_leave(device, prev);
  return e == cudaSuccess ? FO_SUCCESS : fo_cuda_fail(fn, what[dir], e);
}

fo_status fo_cuda_upload(const char *fn, int device, const void *src, size_t bytes, void **dst) {
  void *p = NULL;
  fo_status st = fo_cuda_alloc_zeroed(fn, device, bytes, &p);
  if (st == FO_SUCCESS) st = fo_cuda_memcpy(fn, device, p, src, bytes, FO_COPY_FROM_HOST);
  if (st != FO_SUCCESS) {
    fo_cuda_free(device, p);
    return st;
  }
  *dst = p;
  return FO_SUCCESS;
}

fo_status fo_cuda_synchronize(const char *fn, int device) {
  FO_CUDA_RETURN(fn, device, "cudaDeviceSynchronize", cudaDeviceSynchronize());
}

/* ---------------------------------------------------------------- events */

static cudaError_t create_all(void **events, int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    cudaEvent_t ev = NULL;
    cudaError_t e = cudaEventCreateWithFlags(&ev, cudaEventDisableTiming);
    if (e != cudaSuccess) return e;
    events[i] = ev;
  }
  return cudaSuccess;
}

fo_status fo_cuda_events_create(const char *fn, int device, void **events, int64_t n) {
  FO_CUDA_RETURN(fn, device, "cudaEventCreateWithFlags", create_all(events, n));
}

void fo_cuda_events_destroy(int device, void **events, int64_t n) {
  int prev;
  if (!events || fo_cuda_enter("fo_cuda_events_destroy", device, &prev) != FO_SUCCESS) return;
  for (int64_t i = 0; i < n; i++)
    if (events[i]) fo_cuda_forget(cudaEventDestroy((cudaEvent_t)events[i]));
  fo_cuda_leave(device, prev);
}

fo_status fo_cuda_record(const char *fn, int device, void *event, fo_stream_t stream) {
  FO_CUDA_RETURN(fn, device, "cudaEventRecord",
                 cudaEventRecord((cudaEvent_t)event, (cudaStream_t)stream));
}

fo_status fo_cuda_wait(const char *fn, int device, fo_stream_t stream, void *event) {
  FO_CUDA_RETURN(fn, device, "cudaStreamWaitEvent",
                 cudaStreamWaitEvent((cudaStream_t)stream, (cudaEvent_t)event, 0));
}

fo_status fo_cuda_convert(const char *fn, int device, const void *src, fo_dtype from, void *dst,
                          fo_dtype to, int64_t n, fo_stream_t stream) {
  FO_CUDA_RETURN(fn, device, "dtype conversion kernel",
                 fo_launch_convert(src, (int32_t)from, dst, (int32_t)to, n, stream));
}
