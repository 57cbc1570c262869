/*
 * gpu_harness.h -- the one fixture of the GPU-tier tests (tests/test_gpu_*):
 * status-checking macros, the skip-or-stand-in decision, and memory and a
 * stream of the executor under test (device memory, or host memory when
 * FO_GPU_TEST_STAND_IN=cpu runs a test's plumbing against the CPU executor
 * on a machine without a GPU).
 *
 * Without a usable device every GPU test skips itself with the reason
 * (never passes without running); with FO_GPU_TEST_STAND_IN=cpu the tests
 * that allow it (require_device(0)) run against the CPU executor instead.
 *
 * Header-only (static inline): the GPU tests and tests/support/gpu include
 * it.
 */
#ifndef FO_GPU_HARNESS_H
#define FO_GPU_HARNESS_H

#include <criterion/criterion.h>
#include <cuda_runtime_api.h>
#include <stdlib.h>
#include <string.h>

#include "cr_status.h"
#include "fusedopt.h"
#include "testutil.h"

#define CK(call)                                                              \
  do {                                                                        \
    cudaError_t e_ = (call);                                                  \
    cr_assert_eq(e_, cudaSuccess, "%s: %s (%s)", #call, cudaGetErrorName(e_), \
                 cudaGetErrorString(e_));                                     \
  } while (0)

/* --------------------------------------------------------------- device */

/* 1: run on the CUDA device; 0: the stand-in (FO_GPU_TEST_STAND_IN=cpu).
 * device_only: no stand-in (the test needs real streams). */
static inline int require_device(int device_only) {
  const char *s = getenv("FO_GPU_TEST_STAND_IN");
  int n = 0;
  if (fo_cuda_device_count(&n) == FO_SUCCESS && n > 0) return 1;
  if (!device_only && s && strcmp(s, "cpu") == 0) return 0;
  cr_skip_test("no usable CUDA device: %s", fo_last_error());
}

/* The number of CUDA devices, at least `least` (no stand-in: the test
 * needs that many real devices). */
static inline int require_devices(int least) {
  int n = 0;
  if (fo_cuda_device_count(&n) != FO_SUCCESS || n == 0)
    cr_skip_test("no usable CUDA device: %s", fo_last_error());
  if (n < least) cr_skip_test("needs %d CUDA devices, found %d", least, n);
  return n;
}

/* Memory of the executor under test (device memory, or host memory for the
 * stand-in) and the stream its copies and steps use. */
typedef struct dev {
  int cuda;
  cudaStream_t stream;
} dev;

/* cuda: 1 for the device (with a stream of its own), 0 for the stand-in. */
static inline dev dev_open(int cuda) {
  dev d = {cuda, NULL};
  if (cuda) CK(cudaStreamCreate(&d.stream));
  return d;
}

static inline void dev_close(dev *d) {
  if (d->cuda) CK(cudaStreamDestroy(d->stream));
}

/* The stream to hand the library (NULL for the stand-in). */
static inline fo_stream_t dev_stream(const dev *d) {
  return d->cuda ? d->stream : NULL;
}

static inline void *dev_alloc(const dev *d, size_t bytes) {
  void *p = NULL;
  if (d->cuda)
    CK(cudaMalloc(&p, bytes ? bytes : 1));
  else
    p = malloc(bytes ? bytes : 1);
  cr_assert_not_null(p);
  return p;
}

static inline void dev_free(const dev *d, void *p) {
  if (d->cuda)
    CK(cudaFree(p));
  else
    free(p);
}

static inline void dev_put(const dev *d, void *dst, const void *src, size_t bytes) {
  if (!bytes) return;
  if (d->cuda)
    CK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, d->stream));
  else
    memcpy(dst, src, bytes);
}

static inline void dev_sync(const dev *d) {
  if (d->cuda) CK(cudaStreamSynchronize(d->stream));
}

static inline void dev_get(const dev *d, void *dst, const void *src, size_t bytes) {
  if (!bytes) return;
  if (d->cuda) {
    CK(cudaStreamSynchronize(d->stream));
    CK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
  } else {
    memcpy(dst, src, bytes);
  }
}

static inline void dev_poison(const dev *d, void *p, size_t bytes) {
  if (d->cuda)
    CK(cudaMemsetAsync(p, (int)TU_POISON, bytes, d->stream));
  else
    tu_poison(p, bytes);
}

/* A blocking device-to-host copy (for callbacks that take no dev). */
static inline void dev_download_cuda(void *dst, const void *src, size_t bytes) {
  CK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}

#endif /* FO_GPU_HARNESS_H */
