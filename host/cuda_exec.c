/*
 * cuda_exec.c -- the CUDA executor's host side: device checks, memory,
 * the plan upload, and the per-step scalars handed to the launchers in
 * kernels/launch.h.  Nothing here waits for the device except create and
 * destroy.
 *
 * Every function that touches the device makes the optimizer's device
 * current and restores the caller's device before it returns.
 */
#include <cuda_runtime_api.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"
#include "launch.h"

void fo_cuda_forget(int e) {
  if (e != (int)cudaSuccess && cudaPeekAtLastError() == (cudaError_t)e) (void)cudaGetLastError();
}

static fo_status cuda_fail(const char *fn, const char *what, cudaError_t e) {
  fo_cuda_forget(e);
  fo_status st = e == cudaErrorMemoryAllocation ? FO_ERR_OUT_OF_MEMORY : FO_ERR_CUDA;
  return fo_fail(st, fn, "%s: %s (%s)", what, cudaGetErrorName(e), cudaGetErrorString(e));
}

/* Make device current; *prev receives the caller's device. */
static fo_status enter_device(const char *fn, int device, int *prev) {
  cudaError_t e = cudaGetDevice(prev);
  if (e != cudaSuccess) return cuda_fail(fn, "cudaGetDevice", e);
  if (*prev != device && (e = cudaSetDevice(device)) != cudaSuccess)
    return cuda_fail(fn, "cudaSetDevice", e);
  return FO_SUCCESS;
}

static void leave_device(int device, int prev) {
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

fo_status fo_cuda_check_stream(const char *fn, fo_stream_t stream, int device) {
  if (!stream) return FO_SUCCESS; /* the default stream of the optimizer's device */
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

fo_status fo_cuda_alloc_zeroed(const char *fn, int device, size_t bytes, void **out) {
  int prev;
  fo_status st = enter_device(fn, device, &prev);
  if (st != FO_SUCCESS) return st;
  void *p = NULL;
  cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
  if (e == cudaSuccess) {
    e = cudaMemset(p, 0, bytes);
    if (e != cudaSuccess) (void)cudaFree(p);
  }
  leave_device(device, prev);
  if (e != cudaSuccess) return cuda_fail(fn, "cudaMalloc", e);
  *out = p;
  return FO_SUCCESS;
}

void fo_cuda_free(int device, void *p) {
  int prev;
  if (!p || enter_device("fo_cuda_free", device, &prev) != FO_SUCCESS) return;
  (void)cudaFree(p);
  leave_device(device, prev);
}

fo_status fo_cuda_upload(const char *fn, int device, const void *src, size_t bytes, void **dst) {
  fo_status st = fo_cuda_alloc_zeroed(fn, device, bytes, dst);
  if (st != FO_SUCCESS || bytes == 0) return st;
  int prev;
  st = enter_device(fn, device, &prev);
  if (st != FO_SUCCESS) return st;
  cudaError_t e = cudaMemcpy(*dst, src, bytes, cudaMemcpyHostToDevice);
  leave_device(device, prev);
  return e == cudaSuccess ? FO_SUCCESS : cuda_fail(fn, "cudaMemcpy of the plan", e);
}

/* Programmatic Dependent Launch needs compute capability 9.0 (Hopper) or
 * newer; older devices get plain launches. */
static int supports_pdl(int device) {
  int major = 0;
  const cudaError_t e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  if (e != cudaSuccess) {
    fo_cuda_forget(e);
    return 0;
  }
  return major >= 9;
}

fo_status fo_cuda_upload_plan(const char *fn, fo_optimizer *opt) {
  int dev = opt->options.device;
  opt->pdl = supports_pdl(dev);
  fo_status st = fo_cuda_upload(fn, dev, opt->blocks, (size_t)opt->num_blocks * sizeof *opt->blocks,
                                (void **)&opt->d_blocks);
  if (st != FO_SUCCESS) return st;
  return fo_cuda_upload(fn, dev, opt->run_tensors,
                        (size_t)opt->num_run_tensors * sizeof *opt->run_tensors,
                        (void **)&opt->d_tensors);
}

/* Run launch() on the optimizer's device and turn its error into a status. */
#define FO_CUDA_LAUNCH(fn, opt, what, launch_expr)                   \
  do {                                                               \
    int prev_;                                                       \
    fo_status st_ = enter_device(fn, (opt)->options.device, &prev_); \
    if (st_ != FO_SUCCESS) return st_;                               \
    cudaError_t e_ = (cudaError_t)(launch_expr);                     \
    leave_device((opt)->options.device, prev_);                      \
    if (e_ != cudaSuccess) return cuda_fail(fn, what, e_);           \
    return FO_SUCCESS;                                               \
  } while (0)

/* Enqueue the prepare kernel (over sums of squares partials[0..n), NULL
 * without a pre-pass) and the fused update (and the optional
 * unscaled-gradient write) on stream, without waiting. */
static int enqueue_update(fo_optimizer *opt, fo_stream_t stream, const double *partials,
                          int64_t n) {
  fo_prepare_args pa;
  fo_prepare_args_fill(opt, &pa);
  int e = fo_launch_prepare(&pa, partials, n, opt->state, stream);
  if (e) return e;
  fo_step_launch a;
  memset(&a, 0, sizeof a);
  a.blocks = opt->d_blocks;
  a.tensors = opt->d_tensors;
  a.num_blocks = opt->num_blocks;
  a.chunk = opt->chunk;
  a.algorithm = (int32_t)opt->options.algorithm;
  a.param_dtype = (int32_t)opt->options.param_dtype;
  a.grad_dtype = (int32_t)opt->options.grad_dtype;
  a.master = opt->keeps.master;
  a.stochastic = opt->options.stochastic_rounding;
  a.num_groups = opt->num_groups;
  a.pdl = opt->pdl;
  a.seed = opt->options.seed;
  a.state = opt->state;
  e = fo_launch_step(&a, stream);
  if (e || !opt->options.write_unscaled_grads) return e;
  return fo_launch_unscale_grads(opt->d_blocks, opt->d_tensors, opt->num_blocks, opt->chunk,
                                 (int32_t)opt->options.grad_dtype, opt->state, stream);
}

/* The pre-pass leaves one partial per plan block; with a sharded state
 * this rank's total goes to shard_sumsq[rank] and the ranks all-gather
 * theirs, so the prepare kernel adds one partial per rank instead. */
fo_status fo_cuda_step(fo_optimizer *opt, fo_stream_t stream) {
  static const char fn[] = "fo_optimizer_step";
  int prev, dev = opt->options.device;
  fo_status st = enter_device(fn, dev, &prev);
  if (st != FO_SUCCESS) return st;
  const double *partials = NULL;
  int64_t n = 0;
  int e = 0;
  if (opt->check_grads) {
    e = fo_launch_grad_sumsq(opt->d_blocks, opt->d_tensors, opt->num_blocks, opt->chunk,
                             (int32_t)opt->options.grad_dtype, opt->partials, stream);
    partials = opt->partials;
    n = opt->num_blocks;
    if (!e && opt->shard.on) {
      e = fo_launch_sum_doubles(opt->partials, opt->num_blocks, opt->shard_sumsq + opt->shard.rank,
                                stream);
      if (!e) st = fo_dp_agree_sumsq(fn, opt, NULL, stream);
      partials = opt->shard_sumsq;
      n = opt->shard.size;
    }
  }
  if (!e && st == FO_SUCCESS) e = enqueue_update(opt, stream, partials, n);
  leave_device(dev, prev);
  if (st != FO_SUCCESS) return st;
  return e ? cuda_fail(fn, "step launch", (cudaError_t)e) : FO_SUCCESS;
}

fo_status fo_cuda_read_state(const char *fn, const fo_optimizer *opt, fo_step_state *out) {
  int prev, dev = opt->options.device;
  fo_status st = enter_device(fn, dev, &prev);
  if (st != FO_SUCCESS) return st;
  cudaError_t e = cudaDeviceSynchronize();
  if (e == cudaSuccess) e = cudaMemcpy(out, opt->state, sizeof *out, cudaMemcpyDeviceToHost);
  leave_device(dev, prev);
  return e == cudaSuccess ? FO_SUCCESS : cuda_fail(fn, "reading the step state", e);
}

fo_status fo_cuda_write_state(const char *fn, fo_optimizer *opt, const fo_step_state *in) {
  int prev, dev = opt->options.device;
  fo_status st = enter_device(fn, dev, &prev);
  if (st != FO_SUCCESS) return st;
  cudaError_t e = cudaDeviceSynchronize();
  if (e == cudaSuccess) e = cudaMemcpy(opt->state, in, sizeof *in, cudaMemcpyHostToDevice);
  /* A copy from pageable memory may return before the data has landed:
   * wait, so a step on any stream (non-blocking ones too) reads it. */
  if (e == cudaSuccess) e = cudaDeviceSynchronize();
  leave_device(dev, prev);
  return e == cudaSuccess ? FO_SUCCESS : cuda_fail(fn, "writing the step state", e);
}

fo_status fo_cuda_sync_master(fo_optimizer *opt, fo_stream_t stream) {
  FO_CUDA_LAUNCH("fo_optimizer_sync_master", opt, "sync-master kernel",
                 fo_launch_sync_master(opt->d_blocks, opt->d_tensors, opt->num_blocks, opt->chunk,
                                       (int32_t)opt->options.param_dtype, stream));
}

fo_status fo_cuda_zero_grad(fo_optimizer *opt, fo_stream_t stream) {
  void *arena = opt->arena[FO_ROLE_GRAD];
  size_t bytes = (size_t)opt->total_elems * fo_dtype_size(opt->options.grad_dtype);
  if (arena)
    FO_CUDA_LAUNCH("fo_optimizer_zero_grad", opt, "cudaMemsetAsync",
                   cudaMemsetAsync(arena, 0, bytes, (cudaStream_t)stream));
  FO_CUDA_LAUNCH("fo_optimizer_zero_grad", opt, "zero-grad kernel",
                 fo_launch_zero_grad(opt->d_blocks, opt->d_tensors, opt->num_blocks, opt->chunk,
                                     (int32_t)opt->options.grad_dtype, stream));
}

fo_status fo_cuda_copy(const char *fn, int device, void *dst, const void *src, size_t bytes) {
  int prev;
  fo_status st = enter_device(fn, device, &prev);
  if (st != FO_SUCCESS) return st;
  cudaError_t e = cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice);
  leave_device(device, prev);
  return e == cudaSuccess ? FO_SUCCESS : cuda_fail(fn, "cudaMemcpy", e);
}

fo_status fo_cuda_synchronize(int device) {
  static const char fn[] = "fo_cuda_synchronize";
  int prev;
  fo_status st = enter_device(fn, device, &prev);
  if (st != FO_SUCCESS) return st;
  cudaError_t e = cudaDeviceSynchronize();
  leave_device(device, prev);
  return e == cudaSuccess ? FO_SUCCESS : cuda_fail(fn, "cudaDeviceSynchronize", e);
}
