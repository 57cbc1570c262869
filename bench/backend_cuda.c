/*
 * backend_cuda.c -- the CUDA benchmark: device memory, one non-blocking
 * stream for everything timed, CUDA events as marks, cudaMemcpyAsync as
 * the reference, graph capture of one fo_optimizer_step.
 *
 * Plain C over the CUDA runtime API; the kernels of the baseline and the
 * fill are in naive.cu.
 */
#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

static cudaStream_t stream;
static cudaEvent_t *events;
static int nevents;

#define CUDA_CHECK(call) cuda_check((call), #call, __FILE__, __LINE__)

static void cuda_check(cudaError_t e, const char *what, const char *file, int line) {
  if (e != cudaSuccess)
    bench_die("%s:%d: %s: %s (%s)", file, line, what, cudaGetErrorName(e),
              cudaGetErrorString(e));
}

static void *gpu_alloc(size_t bytes) {
  void *p = NULL;
  CUDA_CHECK(cudaMalloc(&p, bytes ? bytes : 1));
  return p;
}

static void gpu_release(void *p) { CUDA_CHECK(cudaFree(p)); }

static void gpu_fill(void *dst, fo_dtype dtype, int64_t n, uint64_t seed, float scale) {
  CUDA_CHECK((cudaError_t)bench_fill_cuda(dst, (int)dtype, n, seed, scale, stream));
}

static void gpu_zero(void *p, size_t bytes) {
  CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, stream));
}

/* The stream is non-blocking: cudaMemcpy on the legacy stream would not
 * wait for it. */
static void gpu_download(void *host, const void *src, size_t bytes) {
  CUDA_CHECK(cudaStreamSynchronize(stream));
  CUDA_CHECK(cudaMemcpy(host, src, bytes, cudaMemcpyDeviceToHost));
}

static void gpu_copy(void *dst, const void *src, size_t bytes) {
  CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream));
}

static void gpu_naive(const naive_tensor *t, int64_t n, const naive_step_args *a) {
  CUDA_CHECK((cudaError_t)naive_step_cuda(t, n, a, stream));
}

static void gpu_sync(void) { CUDA_CHECK(cudaDeviceSynchronize()); }

static void gpu_timer_begin(int n) {
  if (n <= nevents) return;
  for (int i = 0; i < nevents; i++) CUDA_CHECK(cudaEventDestroy(events[i]));
  free(events);
  events = malloc((size_t)n * sizeof *events);
  if (!events) bench_die("out of host memory");
  for (int i = 0; i < n; i++) CUDA_CHECK(cudaEventCreate(&events[i]));
  nevents = n;
}

static void gpu_timer_mark(int i) { CUDA_CHECK(cudaEventRecord(events[i], stream)); }

static void gpu_timer_read(double *us, int n) {
  CUDA_CHECK(cudaEventSynchronize(events[n]));
  for (int i = 0; i < n; i++) {
    float ms = 0.0f;
    CUDA_CHECK(cudaEventElapsedTime(&ms, events[i], events[i + 1]));
    us[i] = ms * 1e3;
  }
}

/* One step captured into a graph.  A failure is reported and leaves the
 * row without its graph column rather than ending the run: the eager
 * figures are still worth having. */
static void *gpu_graph_capture(fo_optimizer *opt) {
  cudaGraph_t graph = NULL;
  cudaGraphExec_t exec = NULL;
  CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  const fo_status st = fo_optimizer_step(opt, stream);
  const char *msg = st != FO_SUCCESS ? fo_last_error() : "";
  cudaError_t e = cudaStreamEndCapture(stream, &graph);
  if (e == cudaSuccess && st == FO_SUCCESS) e = cudaGraphInstantiate(&exec, graph, 0);
  if (graph) (void)cudaGraphDestroy(graph);
  if (st == FO_SUCCESS && e == cudaSuccess) return exec;
  fprintf(stderr, "# graph capture failed: %s %s\n", msg,
          e != cudaSuccess ? cudaGetErrorString(e) : "");
  (void)cudaGetLastError();
  return NULL;
}

static void gpu_graph_launch(void *g) {
  CUDA_CHECK(cudaGraphLaunch((cudaGraphExec_t)g, stream));
}

static void gpu_graph_destroy(void *g) { CUDA_CHECK(cudaGraphExecDestroy((cudaGraphExec_t)g)); }

static void describe(bench_backend *b) {
  struct cudaDeviceProp prop;
  size_t free_b = 0, total_b = 0;
  CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  b->cache_bytes = (size_t)prop.l2CacheSize;
  b->free_bytes = free_b;
  snprintf(b->device, sizeof b->device, "%.100s (%d SMs, L2 %.0f MB, %.1f of %.1f GB free)",
           prop.name, prop.multiProcessorCount, prop.l2CacheSize / 1e6, free_b / 1e9,
           total_b / 1e9);
}

int bench_backend_cuda(bench_backend *b, const char **why) {
  int count = 0;
  memset(b, 0, sizeof *b);
  if (fo_cuda_device_count(&count) != FO_SUCCESS || count < 1) {
    *why = count < 1 && fo_last_error()[0] == '\0' ? "no CUDA device" : fo_last_error();
    return -1;
  }
  CUDA_CHECK(cudaSetDevice(0));
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  describe(b);
  b->name = "cuda";
  b->executor = FO_EXEC_CUDA;
  b->stream = stream;
  b->alloc = gpu_alloc;
  b->release = gpu_release;
  b->fill = gpu_fill;
  b->zero = gpu_zero;
  b->download = gpu_download;
  b->copy = gpu_copy;
  b->naive_step = gpu_naive;
  b->sync = gpu_sync;
  b->timer_begin = gpu_timer_begin;
  b->timer_mark = gpu_timer_mark;
  b->timer_read = gpu_timer_read;
  b->graph_capture = gpu_graph_capture;
  b->graph_launch = gpu_graph_launch;
  b->graph_destroy = gpu_graph_destroy;
  return 0;
}
