/*
 * emu_runtime.cpp -- the emulated device's CUDA runtime: the part of the
 * CUDA runtime API that libfusedopt and its GPU tests call, implemented on
 * the host, so that the CUDA executor's host code (host/exec_cuda.c,
 * host/cuda_device.c) and the GPU tier's tests run on a machine without a
 * GPU (docs/design.md, "The emulated device").
 *
 * What it keeps of a real device, because the host code depends on it:
 *   - memory: cudaMalloc returns memory the runtime knows (filled with 0xff,
 *     NaN in every float dtype, as freshly allocated device memory is
 *     anything), cudaPointerGetAttributes tells it from host memory, and
 *     every copy and memset must lie inside one allocation; the host cannot
 *     touch it (mapped without access, opened only while the device runs
 *     work or the runtime copies: Access in emu_device.h);
 *   - asynchrony: work enqueued on a stream runs only when something waits
 *     for it (a synchronize, a blocking copy, a free, a query) -- host code that
 *     reads device memory without waiting reads stale data, as it would on
 *     a device; a pageable copy to the device takes its source at once, one
 *     to the host waits for its stream, as CUDA's do;
 *   - graph capture: work enqueued on a capturing stream goes into the graph
 *     instead, streams join a capture through events, a replay enqueues the
 *     graph's nodes again in an order their dependencies allow, the last
 *     captured first (replay_order); the calls a capture forbids (an allocation, a
 *     free, a blocking copy, a synchronize, cudaStreamGetDevice or a query
 *     of the capturing stream, work on the legacy stream beside a blocking
 *     capturing stream, a wait for an event across the capture's boundary)
 *     fail and invalidate the capture, under the mode rules of
 *     cudaStreamCaptureModeGlobal / ThreadLocal / Relaxed; a capture that
 *     ends with a forked stream not joined back fails;
 *   - errors: each failed call sets the thread's last error, which
 *     cudaGetLastError clears and cudaPeekAtLastError does not.
 * Two devices (EMU_DEVICES), of compute capability 9.0, with 4 GiB of
 * memory each: each with its own legacy stream and memory; a stream, an
 * event and an allocation belong to the device current when they were
 * made; a kernel is launched on a stream of the current device and touches
 * that device's memory only (no peer access), so host code that forgets to
 * switch devices fails as on a machine with several GPUs.  Work runs on
 * the thread that waits for it, each operation after what it depends on,
 * and otherwise newest first (flush_device), a legal order on a device that
 * exposes a missing wait between streams.
 *
 * Test code only: the runtime's state is one object behind one lock
 * (emu_device.h).  This file: the queue, the capture rules, errors and
 * devices; emu_memory.cpp: memory and copies; emu_streams.cpp: streams,
 * events and graphs.
 */
#include <cuda_runtime_api.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "emu_device.h"

namespace fo_emu {

/* Never destroyed: LeakSanitizer, at exit, still sees what it holds. */
Device &dev() {
  static Device *d = new Device();
  return *d;
}

/* Device memory still allocated when the program ends: a leak LeakSanitizer
 * cannot see (the table above holds it).  Each test runs in a process of
 * its own, so the line names a test's leak; CTest fails the test on it
 * (tests/emu/CMakeLists.txt). */
__attribute__((destructor)) static void report_leaks() {
  const Device &d = dev();
  if (d.allocs.empty()) return;
  size_t bytes = 0;
  for (const auto &a : d.allocs) bytes += a.second.bytes;
  fprintf(stderr, "emulated device: %zu allocations (%zu bytes) never freed\n", d.allocs.size(),
          bytes);
}

thread_local cudaError_t last_error = cudaSuccess;
thread_local int current_device = 0;

cudaError_t fail(cudaError_t e) {
  if (e != cudaSuccess) last_error = e;
  return e;
}

/* The calling thread's per-thread default stream of the current device
 * (cudaStreamPerThread: one handle, each thread's own stream), made on
 * first use: blocking, so ordered with the legacy stream as CUDA's is, and
 * capturable.  It outlives its thread (work left on it runs when something
 * waits for the device) and cannot be destroyed. */
static Stream *per_thread_stream() {
  static thread_local Stream *mine[EMU_DEVICES];
  Stream *&s = mine[current_device];
  if (!s) {
    s = new Stream();
    s->device = current_device;
    s->per_thread = true;
    dev().streams.insert(s);
  }
  return s;
}

Stream *stream_of(cudaStream_t s) {
  Device &d = dev();
  if (s == cudaStreamPerThread) return per_thread_stream();
  if (s == nullptr || s == cudaStreamLegacy) return &d.legacy[current_device];
  Stream *p = (Stream *)s;
  for (Stream &legacy : d.legacy)
    if (p == &legacy) return p;
  return d.streams.count(p) ? p : nullptr;
}

/* ------------------------------------------------------------ the queue */

bool blocking(const Stream *s) {
  return !s->legacy && !(s->flags & cudaStreamNonBlocking);
}

/* A blocking stream of device's: what its legacy stream orders itself with. */
static auto blocking_on(int device) {
  return [device](const Stream *s) { return blocking(s) && s->device == device; };
}

/* The first queued operation of a stream that pick() accepts, with seq up
 * to limit, or end(). */
template <class Pick>
std::list<Queued>::iterator first_of(uint64_t limit, Pick pick) {
  std::list<Queued> &q = dev().queue;
  auto it = q.begin();
  while (it != q.end() && it->seq <= limit && !pick(it->s)) ++it;
  return it != q.end() && it->seq <= limit ? it : q.end();
}

void run_stream(Stream *s, uint64_t limit);

/* The legacy stream's implicit order for an operation of s at seq: legacy
 * work waits for every blocking stream's earlier work on its device, and a
 * blocking stream's work for its device's legacy stream's. */
static void run_implicit(Stream *s, uint64_t seq) {
  std::list<Queued> &q = dev().queue;
  if (s->legacy) {
    for (;;) {
      auto b = first_of(seq - 1, blocking_on(s->device));
      if (b == q.end()) break;
      run_stream(b->s, seq - 1);
    }
  } else if (blocking(s)) {
    run_stream(&dev().legacy[s->device], seq - 1);
  }
}

/* Run stream s's operations up to seq limit, in order, each after what it
 * depends on (an event it waits for, the legacy stream's implicit order),
 * each with its reach of device memory open (a kernel: its device's).  The
 * device may run any stream's work once its dependencies have run, so the
 * work of a stream nobody waits for stays behind -- and a program that
 * reads its results without waiting reads stale memory, as it could on a
 * device.  An operation whose dependencies lead back to it (a collective
 * whose other ranks wait for work after it) would hang a device: abort. */
void run_stream(Stream *s, uint64_t limit) {
  std::list<Queued> &q = dev().queue;
  for (;;) {
    auto it = first_of(limit, [s](const Stream *x) { return x == s; });
    if (it == q.end()) return;
    if (it->busy) {
      fprintf(stderr, "emulated device: operations wait for each other (a device would hang)\n");
      abort();
    }
    it->busy = true; /* so nothing it depends on runs it, or erases it */
    const uint64_t seq = it->seq;
    run_implicit(s, seq);
    if (it->after) run_stream(it->after, it->after_seq);
    /* what ran above was earlier work of other streams: it is still here */
    Queued op = std::move(*it);
    q.erase(it);
    s->pending--;
    if (op.fn && op.host) {
      Hidden closed; /* a host function is host code */
      op.fn();
    } else if (op.fn) {
      reach(op.reach);
      op.fn();
    }
  }
}

void run_before(Stream *s, uint64_t seq) {
  const unsigned opened = dev().opened;
  run_stream(s, seq - 1);
  run_implicit(s, seq);
  reach(opened);
}

void flush(Stream *s) {
  if (!s->pending) return;
  Access open;
  run_stream(s, UINT64_MAX);
}

/* What a blocking call on device's legacy stream waits for: that stream
 * and every blocking stream of the device (not those created
 * cudaStreamNonBlocking). */
void flush_legacy(int device) {
  if (dev().queue.empty()) return;
  Access open;
  flush(&dev().legacy[device]);
  for (;;) {
    auto it = first_of(UINT64_MAX, blocking_on(device));
    if (it == dev().queue.end()) return;
    run_stream(it->s, it->seq);
  }
}

/* Newest first: the device's last operation enqueued runs as soon as what
 * it depends on has, ahead of older work of other streams that it does
 * not wait for -- a legal order that a missing wait for another stream's
 * work cannot survive, where running in enqueue order would hide it. */
void flush_device(int device) {
  if (dev().queue.empty()) return;
  Access open;
  std::list<Queued> &q = dev().queue;
  for (;;) {
    auto it = q.rbegin();
    while (it != q.rend() && it->s->device != device) ++it;
    if (it == q.rend()) return;
    run_stream(it->s, it->seq);
  }
}

/* ------------------------------------------------------------- captures */

void forget_capture(Capture *c) {
  Device &d = dev();
  for (Stream *m : c->members) m->cap = nullptr;
  for (Event *e : d.events)
    if (e->cap == c) {
      e->cap = nullptr;
      e->clock.clear();
      e->stale = true;
    }
  d.captures.erase(c);
}

/* How many of stream of's captured operations stream who knows of. */
static uint64_t known(const Capture *c, const Stream *who, const Stream *of) {
  auto clock = c->knows.find(who);
  if (clock == c->knows.end()) return 0;
  auto n = clock->second.find(of);
  return n == clock->second.end() ? 0 : n->second;
}

bool unjoined(const Capture *c) {
  for (const Stream *m : c->members)
    if (m != c->origin && known(c, m, m) > known(c, c->origin, m)) return true;
  return false;
}

/* Each stream's nodes run in its order, so the candidates are each stream's
 * next node; a candidate is ready when every stream has run as many nodes
 * as it must have run before it.  The first node in capture order not yet
 * run is always ready (its dependencies were all captured before it). */
std::vector<Node> replay_order(std::vector<Node> ops) {
  std::map<const Stream *, std::vector<size_t>> of; /* per stream, in its order */
  for (size_t i = 0; i < ops.size(); i++) of[ops[i].s].push_back(i);
  std::map<const Stream *, uint64_t> ran;
  std::vector<Node> order;
  while (order.size() < ops.size()) {
    size_t pick = ops.size();
    for (const auto &stream : of) {
      const uint64_t next = ran[stream.first];
      if (next == stream.second.size()) continue;
      const size_t i = stream.second[next];
      bool ready = true;
      for (const auto &need : ops[i].after)
        if (ran[need.first] < need.second) ready = false;
      if (ready && (pick == ops.size() || i > pick)) pick = i;
    }
    ran[ops[pick].s]++;
    order.push_back(std::move(ops[pick]));
  }
  return order;
}

/* A call a capture forbids: cudaErrorStreamCaptureUnsupported, and the
 * captures it concerns are invalidated.  A thread in the default mode
 * (global) may not make it while it captures in global or thread-local
 * mode itself, or while another thread captures in global mode. */
cudaError_t check_unsafe() {
  const std::thread::id me = std::this_thread::get_id();
  cudaError_t e = cudaSuccess;
  for (Capture *c : dev().captures) {
    const bool mine = c->owner == me && c->mode != cudaStreamCaptureModeRelaxed;
    const bool global = c->owner != me && c->mode == cudaStreamCaptureModeGlobal;
    if (mine || global) {
      c->invalid = true;
      e = cudaErrorStreamCaptureUnsupported;
    }
  }
  return e;
}

/* A call that waits for a whole device (cudaDeviceSynchronize; cudaFree,
 * which synchronizes it): CUDA refuses it while any stream of the device is
 * being captured, in any mode and from any thread, and invalidates those
 * captures (Programming Guide, "Prohibited and Unhandled Operations": a
 * device handle may not be synchronized while an associated stream is in
 * capture mode), beyond what check_unsafe's per-mode rule forbids. */
cudaError_t check_device_wait(int device) {
  cudaError_t e = cudaSuccess;
  for (Capture *c : dev().captures)
    for (Stream *m : c->members)
      if (m->device == device) {
        c->invalid = true;
        e = cudaErrorStreamCaptureUnsupported;
        break;
      }
  return e;
}

/* Work on a device's legacy stream waits for every blocking stream of the
 * device: beside one that is capturing, that is an implicit dependency the
 * capture cannot hold. */
cudaError_t check_legacy(int device, bool invalidate) {
  cudaError_t e = cudaSuccess;
  for (Capture *c : dev().captures)
    for (Stream *m : c->members)
      if (!(m->flags & cudaStreamNonBlocking) && m->device == device) {
        if (invalidate) c->invalid = true;
        e = cudaErrorStreamCaptureImplicit;
      }
  return e;
}

/* A call on a capturing stream that a capture cannot hold. */
cudaError_t refuse_in_capture(Stream *s) {
  s->cap->invalid = true;
  return cudaErrorStreamCaptureUnsupported;
}

cudaError_t enqueue(Stream *s, Work fn, bool host, unsigned reach) {
  if (s->cap) {
    if (s->cap->invalid) return cudaErrorStreamCaptureInvalidated;
    Node n;
    n.fn = std::move(fn);
    n.host = host;
    n.reach = reach;
    n.s = s;
    n.after = s->cap->knows[s]; /* its own earlier operations included */
    s->cap->ops.push_back(std::move(n));
    s->cap->knows[s][s]++;
    return cudaSuccess;
  }
  if (s->legacy) {
    const cudaError_t e = check_legacy(s->device, true);
    if (e != cudaSuccess) return e;
  }
  Device &d = dev();
  Queued op;
  op.seq = ++d.seq;
  op.s = s;
  op.fn = std::move(fn);
  op.host = host;
  op.reach = reach;
  d.queue.push_back(std::move(op));
  s->pending++;
  return cudaSuccess;
}

/* Stream s waits (in stream order) for e's stream to reach e. */
cudaError_t enqueue_wait(Stream *s, const Event *e) {
  if (!e->s) return cudaSuccess; /* never recorded: nothing to wait for */
  Device &d = dev();
  Queued op;
  op.seq = ++d.seq;
  op.s = s;
  op.host = false;
  op.after = e->s;
  op.after_seq = e->seq;
  d.queue.push_back(std::move(op));
  s->pending++;
  return cudaSuccess;
}

void make_progress() {
  if (dev().queue.empty()) return;
  Access open;
  Device &d = dev();
  while (!d.queue.empty() && !d.queue.front().host)
    run_stream(d.queue.front().s, d.queue.front().seq);
}

}  // namespace fo_emu

using namespace fo_emu;

/* A kernel: launched on a stream of the current device ("a kernel launch
 * will fail if it is issued to a stream that is not associated to the
 * current device"), it touches that device's memory only. */
extern "C" int fo_emu_launch(void *stream, std::function<void()> fn) {
  LOCK;
  Stream *s = stream_of((cudaStream_t)stream);
  if (!s || s->device != current_device) return fail(cudaErrorInvalidResourceHandle);
  return fail(enqueue(s, std::move(fn), false, 1u << s->device));
}

extern "C" int fo_emu_enqueue(void *stream, std::function<void()> fn, uint64_t *seq) {
  LOCK;
  if (seq) *seq = 0;
  Stream *s = stream_of((cudaStream_t)stream);
  if (!s) return fail(cudaErrorInvalidResourceHandle);
  const cudaError_t e = fail(enqueue(s, std::move(fn)));
  if (seq && e == cudaSuccess && !s->cap) *seq = dev().seq;
  return e;
}

extern "C" void *fo_emu_stream(void *stream, int *device) {
  LOCK;
  Stream *s = stream_of((cudaStream_t)stream);
  if (s && device) *device = s->device;
  return s;
}

extern "C" void fo_emu_run_before(void *stream, uint64_t seq) {
  LOCK;
  Stream *s = stream_of((cudaStream_t)stream);
  if (s && seq) run_before(s, seq);
}

extern "C" {

/* ------------------------------------------------------------- errors */

cudaError_t cudaGetLastError(void) {
  const cudaError_t e = last_error;
  last_error = cudaSuccess;
  return e;
}

cudaError_t cudaPeekAtLastError(void) {
  return last_error;
}

#define FO_EMU_ERRORS(X)                                                                          \
  X(cudaSuccess, "no error")                                                                      \
  X(cudaErrorInvalidValue, "invalid argument")                                                    \
  X(cudaErrorMemoryAllocation, "out of memory")                                                   \
  X(cudaErrorInvalidDevice, "invalid device ordinal")                                             \
  X(cudaErrorInvalidResourceHandle, "invalid resource handle")                                    \
  X(cudaErrorNotReady, "device not ready")                                                        \
  X(cudaErrorNoDevice, "no CUDA-capable device is detected")                                      \
  X(cudaErrorInsufficientDriver, "CUDA driver version is insufficient")                           \
  X(cudaErrorNotSupported, "operation not supported")                                             \
  X(cudaErrorIllegalState, "the operation is not permitted in the current state")                 \
  X(cudaErrorLaunchFailure, "unspecified launch failure")                                         \
  X(cudaErrorIllegalAddress, "an illegal memory access was encountered")                          \
  X(cudaErrorStreamCaptureUnsupported, "operation not permitted when stream is capturing")        \
  X(cudaErrorStreamCaptureInvalidated, "operation failed due to a previous error during capture") \
  X(cudaErrorStreamCaptureUnmatched, "capture was not ended in the same stream")                  \
  X(cudaErrorStreamCaptureIsolation, "dependency created on uncaptured work in another stream")   \
  X(cudaErrorStreamCaptureUnjoined, "capture unjoined")                                           \
  X(cudaErrorCapturedEvent,                                                                       \
    "operation not permitted on an event last recorded in a capturing "                           \
    "stream")                                                                                     \
  X(cudaErrorStreamCaptureImplicit,                                                               \
    "operation would make the legacy stream depend on a capturing blocking stream")

const char *cudaGetErrorName(cudaError_t e) {
#define FO_EMU_NAME(code, text) \
  if (e == code) return #code;
  FO_EMU_ERRORS(FO_EMU_NAME)
#undef FO_EMU_NAME
  return "cudaErrorUnknown";
}

const char *cudaGetErrorString(cudaError_t e) {
#define FO_EMU_TEXT(code, text) \
  if (e == code) return text " (emulated device)";
  FO_EMU_ERRORS(FO_EMU_TEXT)
#undef FO_EMU_TEXT
  return "unknown error (emulated device)";
}

/* ------------------------------------------------------------- devices */

cudaError_t cudaGetDeviceCount(int *count) {
  if (!count) return fail(cudaErrorInvalidValue);
  *count = EMU_DEVICES;
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int *device) {
  if (!device) return fail(cudaErrorInvalidValue);
  *device = current_device;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  if (device < 0 || device >= EMU_DEVICES) return fail(cudaErrorInvalidDevice);
  current_device = device;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int *value, enum cudaDeviceAttr attr, int device) {
  if (!value) return fail(cudaErrorInvalidValue);
  if (device < 0 || device >= EMU_DEVICES) return fail(cudaErrorInvalidDevice);
  switch (attr) {
    case cudaDevAttrComputeCapabilityMajor: *value = 9; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; return cudaSuccess;
    case cudaDevAttrMultiProcessorCount: *value = 132; return cudaSuccess;
    default: return fail(cudaErrorInvalidValue);
  }
}

cudaError_t cudaDeviceSynchronize(void) {
  LOCK;
  cudaError_t e = check_unsafe();
  if (e == cudaSuccess) e = check_device_wait(current_device);
  if (e != cudaSuccess) return fail(e);
  flush_device(current_device); /* the current device's work only */
  return cudaSuccess;
}

}  // extern "C"
