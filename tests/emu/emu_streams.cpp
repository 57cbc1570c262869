/*
 * emu_streams.cpp -- the emulated device's streams, events and graphs
 * (emu_runtime.cpp has the queue they feed and the capture rules;
 * docs/design.md, "The emulated device").
 */
#include <cstring>

#include "emu_device.h"

using namespace fo_emu;

extern "C" {

/* ------------------------------------------------------------- streams */

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned int flags) {
  LOCK;
  if (!stream) return fail(cudaErrorInvalidValue);
  Stream *s = new Stream();
  s->flags = flags;
  s->device = current_device;
  dev().streams.insert(s);
  *stream = (cudaStream_t)s;
  return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t *stream) {
  return cudaStreamCreateWithFlags(stream, cudaStreamDefault);
}

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  LOCK;
  Stream *s = stream_of(stream);
  if (!s || s->legacy || s->per_thread) return fail(cudaErrorInvalidResourceHandle);
  if (s->cap) return fail(refuse_in_capture(s));
  flush(s); /* its work still runs */
  dev().streams.erase(s);
  delete s;
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  LOCK;
  Stream *s = stream_of(stream);
  if (!s) return fail(cudaErrorInvalidResourceHandle);
  if (s->cap) return fail(refuse_in_capture(s));
  if (s->legacy) {
    const cudaError_t e = check_legacy(s->device, true);
    if (e != cudaSuccess) return fail(e);
    flush_legacy(s->device); /* the legacy stream waits for every blocking stream */
  }
  flush(s);
  return cudaSuccess;
}

cudaError_t cudaStreamQuery(cudaStream_t stream) {
  LOCK;
  Stream *s = stream_of(stream);
  if (!s) return fail(cudaErrorInvalidResourceHandle);
  if (s->cap) return fail(refuse_in_capture(s));
  if (s->legacy) {
    const cudaError_t e = check_legacy(s->device, true);
    if (e != cudaSuccess) return fail(e);
  }
  /* the device makes progress up to the first host function, which may be
   * waiting for the program that asks */
  make_progress();
  return s->pending > 0 ? cudaErrorNotReady : cudaSuccess;
}

cudaError_t cudaStreamGetDevice(cudaStream_t stream, int *device) {
  LOCK;
  Stream *s = stream_of(stream);
  if (!s) return fail(cudaErrorInvalidResourceHandle);
  if (!device) return fail(cudaErrorInvalidValue);
  /* as CUDA 13.0 on an H200: refused during a capture, which it invalidates */
  if (s->cap) return fail(refuse_in_capture(s));
  *device = s->device;
  return cudaSuccess;
}

cudaError_t cudaStreamIsCapturing(cudaStream_t stream, enum cudaStreamCaptureStatus *status) {
  LOCK;
  Stream *s = stream_of(stream);
  if (!s) return fail(cudaErrorInvalidResourceHandle);
  if (!status) return fail(cudaErrorInvalidValue);
  if (s->legacy) {
    const cudaError_t e = check_legacy(s->device, false);
    if (e != cudaSuccess) return fail(e);
  }
  *status = !s->cap           ? cudaStreamCaptureStatusNone
            : s->cap->invalid ? cudaStreamCaptureStatusInvalidated
                              : cudaStreamCaptureStatusActive;
  return cudaSuccess;
}

/* The status and the capture's id; the graph and its dependencies are not
 * emulated.  CUDA 12's form (cudaStreamGetCaptureInfo_v2 under the
 * header's macro) has no edge data. */
#if CUDART_VERSION >= 13000
cudaError_t cudaStreamGetCaptureInfo(cudaStream_t stream, enum cudaStreamCaptureStatus *status,
                                     unsigned long long *id, cudaGraph_t *graph,
                                     const cudaGraphNode_t **deps, const cudaGraphEdgeData **edges,
                                     size_t *num_deps) {
#else
cudaError_t cudaStreamGetCaptureInfo(cudaStream_t stream, enum cudaStreamCaptureStatus *status,
                                     unsigned long long *id, cudaGraph_t *graph,
                                     const cudaGraphNode_t **deps, size_t *num_deps) {
  const void *edges = nullptr;
#endif
  LOCK;
  if (graph || deps || edges || num_deps) return fail(cudaErrorNotSupported);
  const cudaError_t e = cudaStreamIsCapturing(stream, status);
  if (e != cudaSuccess) return e;
  if (id && *status != cudaStreamCaptureStatusNone) *id = stream_of(stream)->cap->id;
  return cudaSuccess;
}

cudaError_t cudaStreamBeginCapture(cudaStream_t stream, enum cudaStreamCaptureMode mode) {
  LOCK;
  Stream *s = stream_of(stream);
  if (!s) return fail(cudaErrorInvalidResourceHandle);
  if (s->legacy) return fail(cudaErrorStreamCaptureUnsupported);
  if (s->cap) return fail(cudaErrorIllegalState);
  Capture *c = new Capture();
  c->id = ++dev().captures_begun;
  c->origin = s;
  c->mode = mode;
  c->owner = std::this_thread::get_id();
  c->members.push_back(s);
  s->cap = c;
  dev().captures.insert(c);
  return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t *graph) {
  LOCK;
  Stream *s = stream_of(stream);
  if (!s) return fail(cudaErrorInvalidResourceHandle);
  if (!graph) return fail(cudaErrorInvalidValue);
  Capture *c = s->cap;
  if (!c) return fail(cudaErrorIllegalState);
  if (c->origin != s) {
    c->invalid = true;
    return fail(cudaErrorStreamCaptureUnmatched);
  }
  /* every stream forked into the capture must have been joined back */
  const bool loose = !c->invalid && unjoined(c);
  forget_capture(c);
  *graph = nullptr;
  cudaError_t e = loose ? cudaErrorStreamCaptureUnjoined : cudaErrorStreamCaptureInvalidated;
  if (!c->invalid && !loose) {
    Graph *g = new Graph();
    g->ops = replay_order(std::move(c->ops));
    dev().graphs.insert(g);
    *graph = (cudaGraph_t)g;
    e = cudaSuccess;
  }
  delete c;
  return fail(e);
}

cudaError_t cudaLaunchHostFunc(cudaStream_t stream, cudaHostFn_t fn, void *data) {
  LOCK;
  Stream *s = stream_of(stream);
  if (!s) return fail(cudaErrorInvalidResourceHandle);
  if (!fn) return fail(cudaErrorInvalidValue);
  return fail(enqueue(
      s, [fn, data]() { fn(data); }, true));
}

/* -------------------------------------------------------------- events */

cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned int flags) {
  LOCK;
  (void)flags;
  if (!event) return fail(cudaErrorInvalidValue);
  Event *e = new Event();
  e->device = current_device;
  dev().events.insert(e);
  *event = (cudaEvent_t)e;
  return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
  LOCK;
  Event *e = (Event *)event;
  if (!dev().events.erase(e)) return fail(cudaErrorInvalidResourceHandle);
  delete e;
  return cudaSuccess;
}

/* An event recorded on a stream marks its work so far, which a wait on
 * another stream then runs first (enqueue_wait); one recorded into a
 * capture marks the captured work its stream knows of, which a stream that
 * waits for it then knows of too -- joining the capture if it was not in
 * it (a fork), or joining its work back (a join). */
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  LOCK;
  Stream *s = stream_of(stream);
  Event *e = (Event *)event;
  if (!s || !dev().events.count(e)) return fail(cudaErrorInvalidResourceHandle);
  /* "will fail if the input event and input stream are associated to
   * different devices" */
  if (e->device != s->device) return fail(cudaErrorInvalidResourceHandle);
  if (s->cap && s->cap->invalid) return fail(cudaErrorStreamCaptureInvalidated);
  if (s->legacy) {
    const cudaError_t err = check_legacy(s->device, true);
    if (err != cudaSuccess) return fail(err);
  }
  e->cap = s->cap;
  e->clock = s->cap ? s->cap->knows[s] : Clock();
  e->stale = false;
  e->s = s->cap ? nullptr : s;
  e->seq = dev().seq;
  return cudaSuccess;
}

static void merge(Clock &into, const Clock &from) {
  for (const auto &kv : from)
    if (into[kv.first] < kv.second) into[kv.first] = kv.second;
}

/* A wait never crosses a capture's boundary: a capturing stream may wait
 * only for an event recorded into its own capture ("It is invalid to wait
 * on a non-captured event from a stream which is being captured" without
 * cudaEventWaitExternal, which is not emulated), another stream for one
 * recorded into a capture under way only by joining it, and nobody for one
 * recorded into a capture that has ended (its work is a graph's now). */
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int flags) {
  LOCK;
  Stream *s = stream_of(stream);
  Event *e = (Event *)event;
  if (!s || !dev().events.count(e)) return fail(cudaErrorInvalidResourceHandle);
  if (flags)
    return fail(flags == cudaEventWaitExternal ? cudaErrorNotSupported : cudaErrorInvalidValue);
  if (s->cap && s->cap->invalid) return fail(cudaErrorStreamCaptureInvalidated);
  if (s->legacy) {
    const cudaError_t err = check_legacy(s->device, true);
    if (err != cudaSuccess) return fail(err);
  }
  if (e->cap == s->cap && s->cap) { /* a join inside the capture */
    merge(s->cap->knows[s], e->clock);
    return cudaSuccess;
  }
  if (e->cap && !s->cap && !s->legacy) { /* a fork: s joins the capture */
    s->cap = e->cap;
    e->cap->members.push_back(s);
    merge(e->cap->knows[s], e->clock);
    return cudaSuccess;
  }
  if (s->cap || e->cap) { /* across the boundary of a capture */
    if (s->cap) s->cap->invalid = true;
    return fail(cudaErrorStreamCaptureIsolation);
  }
  if (e->stale) return fail(cudaErrorCapturedEvent);
  return fail(enqueue_wait(s, e)); /* eager: in stream order */
}

/* -------------------------------------------------------------- graphs */

cudaError_t cudaGraphGetNodes(cudaGraph_t graph, cudaGraphNode_t *nodes, size_t *count) {
  LOCK;
  Graph *g = (Graph *)graph;
  if (!dev().graphs.count(g) || !count) return fail(cudaErrorInvalidValue);
  if (nodes) return fail(cudaErrorNotSupported); /* only the count is emulated */
  *count = g->ops.size();
  return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t *exec, cudaGraph_t graph,
                                 unsigned long long flags) {
  LOCK;
  (void)flags;
  Graph *g = (Graph *)graph;
  if (!exec || !dev().graphs.count(g)) return fail(cudaErrorInvalidValue);
  Graph *x = new Graph(*g);
  dev().graphs.insert(x);
  *exec = (cudaGraphExec_t)x;
  return cudaSuccess;
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream) {
  LOCK;
  Stream *s = stream_of(stream);
  Graph *x = (Graph *)exec;
  if (!s) return fail(cudaErrorInvalidResourceHandle);
  if (!dev().graphs.count(x)) return fail(cudaErrorInvalidValue);
  for (const Node &n : x->ops) {
    const cudaError_t e = enqueue(s, n.fn, n.host, n.reach);
    if (e != cudaSuccess) return fail(e);
  }
  return cudaSuccess;
}

static cudaError_t destroy_graph(void *graph) {
  LOCK;
  Graph *g = (Graph *)graph;
  if (!dev().graphs.erase(g)) return fail(cudaErrorInvalidValue);
  delete g;
  return cudaSuccess;
}

cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
  return destroy_graph(graph);
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
  return destroy_graph(exec);
}

}  // extern "C"
