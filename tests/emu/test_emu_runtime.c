/*
 * test_emu_runtime.c -- the emulated device's own rules (docs/design.md,
 * "The emulated device"): the GPU tier on it is only as strict as these.
 * Each case builds the mistake the rule is there to expose -- a missing
 * wait between streams, eager or inside a graph, a capture left unjoined,
 * a wait across a capture's boundary, a whole-device wait during a
 * capture, a host read of device memory -- and
 * checks that it shows, beside the correct program, which must not.
 */
#include <criterion/criterion.h>
#include <cuda_runtime_api.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>

#define BYTES 256
#define OLD 0x11
#define NEW 0x22

#define CHECK(call) cr_assert_eq((call), cudaSuccess, "%s", #call)

/* emu_test_kernel.cpp: a kernel that writes value to *p on stream. */
int emu_test_write(void *stream, unsigned char *p, unsigned char value);

/* Two device buffers (b holds OLD, c zero) and two non-blocking streams. */
typedef struct {
  unsigned char *b, *c;
  cudaStream_t main, side;
} rig;

static rig rig_make(void) {
  rig r;
  CHECK(cudaMalloc((void **)&r.b, BYTES));
  CHECK(cudaMalloc((void **)&r.c, BYTES));
  CHECK(cudaStreamCreateWithFlags(&r.main, cudaStreamNonBlocking));
  CHECK(cudaStreamCreateWithFlags(&r.side, cudaStreamNonBlocking));
  CHECK(cudaMemset(r.b, OLD, BYTES));
  CHECK(cudaMemset(r.c, 0, BYTES));
  CHECK(cudaDeviceSynchronize());
  return r;
}

static void rig_free(rig *r) {
  CHECK(cudaStreamDestroy(r->main));
  CHECK(cudaStreamDestroy(r->side));
  CHECK(cudaFree(r->b));
  CHECK(cudaFree(r->c));
}

/* Every byte of c, read back after the device has finished. */
static void expect_c(const rig *r, int value) {
  unsigned char host[BYTES];
  memset(host, 0xa5, sizeof host);
  CHECK(cudaMemcpy(host, r->c, BYTES, cudaMemcpyDeviceToHost));
  for (int i = 0; i < BYTES; i++)
    cr_assert_eq(host[i], value, "c[%d] = %#x, not %#x", i, host[i], value);
}

/* main writes NEW into b; side copies b into c, after waiting for main's
 * write when wait is set.  The events order side after main's earlier work
 * in both cases. */
static void write_then_copy(rig *r, int wait, cudaEvent_t before, cudaEvent_t written) {
  CHECK(cudaEventRecord(before, r->main));
  CHECK(cudaStreamWaitEvent(r->side, before, 0));
  CHECK(cudaMemsetAsync(r->b, NEW, BYTES, r->main));
  if (wait) {
    CHECK(cudaEventRecord(written, r->main));
    CHECK(cudaStreamWaitEvent(r->side, written, 0));
  }
  CHECK(cudaMemcpyAsync(r->c, r->b, BYTES, cudaMemcpyDeviceToDevice, r->side));
}

static void eager_case(int wait) {
  rig r = rig_make();
  cudaEvent_t before, written;
  CHECK(cudaEventCreateWithFlags(&before, cudaEventDisableTiming));
  CHECK(cudaEventCreateWithFlags(&written, cudaEventDisableTiming));
  write_then_copy(&r, wait, before, written);
  CHECK(cudaDeviceSynchronize());
  expect_c(&r, wait ? NEW : OLD);
  CHECK(cudaEventDestroy(before));
  CHECK(cudaEventDestroy(written));
  rig_free(&r);
}

Test(emu_streams, a_missing_wait_between_eager_streams_shows) {
  eager_case(0);
}

Test(emu_streams, the_wait_orders_eager_streams) {
  eager_case(1);
}

/* The same program captured (side forked from main and joined back), then
 * replayed once. */
static void graph_case(int wait) {
  rig r = rig_make();
  cudaEvent_t before, written, joined;
  CHECK(cudaEventCreateWithFlags(&before, cudaEventDisableTiming));
  CHECK(cudaEventCreateWithFlags(&written, cudaEventDisableTiming));
  CHECK(cudaEventCreateWithFlags(&joined, cudaEventDisableTiming));
  CHECK(cudaStreamBeginCapture(r.main, cudaStreamCaptureModeGlobal));
  write_then_copy(&r, wait, before, written);
  CHECK(cudaEventRecord(joined, r.side));
  CHECK(cudaStreamWaitEvent(r.main, joined, 0));
  cudaGraph_t graph;
  CHECK(cudaStreamEndCapture(r.main, &graph));
  size_t nodes = 0;
  CHECK(cudaGraphGetNodes(graph, NULL, &nodes));
  cr_assert_eq(nodes, 2, "the write and the copy: %zu nodes", nodes);
  expect_c(&r, 0); /* captured, not run */

  cudaGraphExec_t exec;
  CHECK(cudaGraphInstantiate(&exec, graph, 0));
  CHECK(cudaGraphLaunch(exec, r.main));
  CHECK(cudaStreamSynchronize(r.main));
  expect_c(&r, wait ? NEW : OLD);

  CHECK(cudaGraphExecDestroy(exec));
  CHECK(cudaGraphDestroy(graph));
  CHECK(cudaEventDestroy(before));
  CHECK(cudaEventDestroy(written));
  CHECK(cudaEventDestroy(joined));
  rig_free(&r);
}

/* Capture order would run main's write first and hide the missing wait. */
Test(emu_graphs, a_missing_wait_inside_a_capture_shows_on_replay) {
  graph_case(0);
}

Test(emu_graphs, the_wait_orders_a_replay) {
  graph_case(1);
}

Test(emu_graphs, a_fork_not_joined_back_is_refused) {
  rig r = rig_make();
  cudaEvent_t fork;
  CHECK(cudaEventCreateWithFlags(&fork, cudaEventDisableTiming));
  CHECK(cudaStreamBeginCapture(r.main, cudaStreamCaptureModeGlobal));
  CHECK(cudaEventRecord(fork, r.main));
  CHECK(cudaStreamWaitEvent(r.side, fork, 0));
  CHECK(cudaMemsetAsync(r.c, NEW, BYTES, r.side));
  cudaGraph_t graph = (cudaGraph_t)&r; /* poison: must come back NULL */
  cr_assert_eq(cudaStreamEndCapture(r.main, &graph), cudaErrorStreamCaptureUnjoined);
  cr_assert_null(graph);
  cr_assert_eq(cudaGetLastError(), cudaErrorStreamCaptureUnjoined);
  CHECK(cudaDeviceSynchronize());
  expect_c(&r, 0); /* the side stream's captured work never ran */
  CHECK(cudaEventDestroy(fork));
  rig_free(&r);
}

Test(emu_graphs, a_wait_across_a_captures_boundary_is_refused) {
  rig r = rig_make();
  cudaEvent_t outside;
  CHECK(cudaEventCreateWithFlags(&outside, cudaEventDisableTiming));
  CHECK(cudaEventRecord(outside, r.side));
  CHECK(cudaStreamBeginCapture(r.main, cudaStreamCaptureModeGlobal));
  cr_assert_eq(cudaStreamWaitEvent(r.main, outside, 0), cudaErrorStreamCaptureIsolation);
  /* the capture is invalidated: later work is refused, and so is its end */
  cr_assert_eq(cudaMemsetAsync(r.c, NEW, BYTES, r.main), cudaErrorStreamCaptureInvalidated);
  cudaGraph_t graph;
  cr_assert_eq(cudaStreamEndCapture(r.main, &graph), cudaErrorStreamCaptureInvalidated);
  cr_assert_null(graph);
  (void)cudaGetLastError();
  CHECK(cudaEventDestroy(outside));
  rig_free(&r);
}

/* A whole-device wait while a stream of the device is captured in relaxed
 * mode, which permits the capturing thread's own unsafe calls: CUDA still
 * refuses to synchronize the device (or free, which synchronizes it), and
 * the capture is invalidated. */
static void device_wait_in_relaxed_capture(int use_free) {
  rig r = rig_make();
  void *spare;
  CHECK(cudaMalloc(&spare, BYTES));
  CHECK(cudaStreamBeginCapture(r.main, cudaStreamCaptureModeRelaxed));
  CHECK(cudaMemsetAsync(r.c, NEW, BYTES, r.main));
  cr_assert_eq(use_free ? cudaFree(spare) : cudaDeviceSynchronize(),
               cudaErrorStreamCaptureUnsupported);
  cudaGraph_t graph;
  cr_assert_eq(cudaStreamEndCapture(r.main, &graph), cudaErrorStreamCaptureInvalidated);
  cr_assert_null(graph);
  (void)cudaGetLastError();
  CHECK(cudaDeviceSynchronize());
  expect_c(&r, 0); /* the captured memset never ran */
  CHECK(cudaFree(spare));
  rig_free(&r);
}

Test(emu_graphs, a_device_synchronize_during_a_relaxed_capture_is_refused) {
  device_wait_in_relaxed_capture(0);
}

Test(emu_graphs, a_free_during_a_relaxed_capture_is_refused) {
  device_wait_in_relaxed_capture(1);
}

/* On a device the host cannot dereference device memory; here it faults
 * too (the test's environment turns ASan's SEGV handler off). */
Test(emu_memory, a_host_read_of_device_memory_faults, .signal = SIGSEGV) {
  unsigned char *p;
  CHECK(cudaMalloc((void **)&p, BYTES));
  CHECK(cudaMemset(p, NEW, BYTES));
  CHECK(cudaDeviceSynchronize());
  volatile unsigned char v = *(volatile unsigned char *)p;
  cr_log_error("read %#x from device memory on the host", v);
}

/* ------------------------------------------------------- two devices */

Test(emu_devices, each_device_has_its_memory_streams_and_events) {
  int count = 0, device = -1;
  CHECK(cudaGetDeviceCount(&count));
  cr_assert_eq(count, 2);
  size_t free0, free1, total;
  CHECK(cudaMemGetInfo(&free0, &total));
  CHECK(cudaSetDevice(1));
  unsigned char *p;
  cudaStream_t s;
  cudaEvent_t e;
  CHECK(cudaMalloc((void **)&p, 1 << 20));
  CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  CHECK(cudaMemGetInfo(&free1, &total));
  cr_assert_eq(free0 - free1, 1 << 20, "device 1's allocation counted on device 1");
  CHECK(cudaSetDevice(0));
  CHECK(cudaMemGetInfo(&free1, &total));
  cr_assert_eq(free1, free0, "device 0's memory unchanged");

  struct cudaPointerAttributes a;
  CHECK(cudaPointerGetAttributes(&a, p));
  cr_assert_eq(a.device, 1);
  CHECK(cudaStreamGetDevice(s, &device));
  cr_assert_eq(device, 1);
  /* an event and the stream it is recorded on share a device; a wait may
   * cross devices */
  cudaEvent_t here;
  CHECK(cudaEventCreateWithFlags(&here, cudaEventDisableTiming));
  cr_assert_eq(cudaEventRecord(here, s), cudaErrorInvalidResourceHandle);
  (void)cudaGetLastError();
  CHECK(cudaEventRecord(e, s));
  CHECK(cudaStreamWaitEvent(NULL, e, 0));
  CHECK(cudaDeviceSynchronize());

  CHECK(cudaEventDestroy(here));
  CHECK(cudaEventDestroy(e));
  CHECK(cudaStreamDestroy(s));
  CHECK(cudaFree(p));
}

static void CUDART_CB set_flag(void *flag) {
  *(volatile int *)flag = 1;
}

/* cudaDeviceSynchronize waits for the current device's work only: a
 * program that synchronizes the wrong device sees the other's not done. */
Test(emu_devices, a_device_synchronize_waits_for_its_own_device_only) {
  int flag = 0;
  cudaStream_t s;
  CHECK(cudaSetDevice(1));
  CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  CHECK(cudaLaunchHostFunc(s, set_flag, &flag));
  CHECK(cudaSetDevice(0));
  CHECK(cudaDeviceSynchronize());
  cr_assert_eq(flag, 0, "device 0's synchronize ran device 1's work");
  CHECK(cudaSetDevice(1));
  CHECK(cudaDeviceSynchronize());
  cr_assert_eq(flag, 1, "device 1's synchronize did not run its work");
  CHECK(cudaStreamDestroy(s));
}

/* cudaStreamPerThread is one handle and a different stream on each thread
 * (of each device): another thread's synchronize of "the" per-thread
 * stream does not run this thread's work on its own, while a synchronize
 * of the legacy stream does (the per-thread stream is a blocking stream);
 * it cannot be destroyed. */
static void *sync_per_thread(void *arg) {
  (void)arg;
  return (void *)(intptr_t)cudaStreamSynchronize(cudaStreamPerThread);
}

Test(emu_streams, each_thread_has_its_own_per_thread_stream) {
  int flag = 0;
  CHECK(cudaLaunchHostFunc(cudaStreamPerThread, set_flag, &flag));
  pthread_t th;
  void *ret = NULL;
  cr_assert_eq(pthread_create(&th, NULL, sync_per_thread, NULL), 0);
  cr_assert_eq(pthread_join(th, &ret), 0);
  cr_assert_eq((cudaError_t)(intptr_t)ret, cudaSuccess);
  cr_assert_eq(flag, 0, "another thread's per-thread stream ran this thread's work");
  CHECK(cudaStreamSynchronize(cudaStreamLegacy));
  cr_assert_eq(flag, 1, "the legacy stream did not wait for a per-thread stream");
  cr_assert_eq(cudaStreamDestroy(cudaStreamPerThread), cudaErrorInvalidResourceHandle);
  cr_assert_eq(cudaGetLastError(), cudaErrorInvalidResourceHandle);
}

/* A kernel goes on a stream of the current device, and touches its own
 * device's memory. */
Test(emu_devices, a_kernel_runs_on_the_current_devices_streams) {
  unsigned char *p, host = 0;
  cudaStream_t s;
  CHECK(cudaSetDevice(1));
  CHECK(cudaMalloc((void **)&p, BYTES));
  CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  CHECK(cudaSetDevice(0));
  cr_assert_eq(emu_test_write(s, p, NEW), cudaErrorInvalidResourceHandle);
  cr_assert_eq(cudaGetLastError(), cudaErrorInvalidResourceHandle);
  CHECK(cudaSetDevice(1));
  CHECK(emu_test_write(s, p, NEW));
  CHECK(cudaStreamSynchronize(s));
  CHECK(cudaMemcpy(&host, p, 1, cudaMemcpyDeviceToHost));
  cr_assert_eq(host, NEW);
  CHECK(cudaStreamDestroy(s));
  CHECK(cudaFree(p));
  CHECK(cudaSetDevice(0));
}

/* Without peer access a kernel that reads or writes another device's
 * memory faults (on a device: an illegal address). */
Test(emu_devices, a_kernel_touching_another_devices_memory_faults, .signal = SIGSEGV) {
  unsigned char *p;
  CHECK(cudaSetDevice(1));
  CHECK(cudaMalloc((void **)&p, BYTES));
  CHECK(cudaSetDevice(0));
  unsigned char *q;
  CHECK(cudaMalloc((void **)&q, BYTES)); /* device 0 has memory in use too */
  CHECK(emu_test_write(NULL, q, NEW));
  CHECK(emu_test_write(NULL, p, NEW));
  CHECK(cudaDeviceSynchronize());
  cr_log_error("a kernel on device 0 wrote device 1's memory");
}

static void CUDART_CB read_device_memory(void *p) {
  cr_log_error("a host function read %#x from device memory", *(volatile unsigned char *)p);
}

/* A host function is host code: device memory is closed to it even while
 * the device runs the work around it. */
Test(emu_memory, a_host_function_reading_device_memory_faults, .signal = SIGSEGV) {
  unsigned char *p;
  CHECK(cudaMalloc((void **)&p, BYTES));
  CHECK(emu_test_write(NULL, p, NEW));
  CHECK(cudaLaunchHostFunc(NULL, read_device_memory, p));
  CHECK(cudaDeviceSynchronize());
}
