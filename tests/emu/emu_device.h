/*
 * emu_device.h -- the emulated device's state and the internal functions
 * its runtime's files share (emu_runtime.cpp: the queue, capture rules,
 * errors and devices; emu_memory.cpp: memory and copies; emu_streams.cpp:
 * streams, events and graphs).
 * docs/design.md, "The emulated device".
 */
#ifndef FO_TEST_EMU_DEVICE_H
#define FO_TEST_EMU_DEVICE_H

#include <cuda_runtime_api.h>

#include <cstdint>
#include <list>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "emu.h"

namespace fo_emu {

typedef std::function<void()> Work;

const size_t EMU_MEMORY = (size_t)4 << 30; /* per device */
/* Two devices, so that the host code's device switching and NCCL over one
 * rank per device run too; a program that uses only device 0 sees a
 * machine with one device in use, as on a lent GPU. */
const int EMU_DEVICES = 2;
/* The memory an operation may touch (Queued::reach): every device's (the
 * runtime's copies and NCCL's collectives), or a bitmask of devices (a
 * kernel: its stream's device, peer access not being emulated). */
const unsigned EVERY_DEVICE = (1u << EMU_DEVICES) - 1;

struct Capture;

struct Stream {
  unsigned flags = 0;
  int device = 0;
  bool legacy = false;
  bool per_thread = false; /* a thread's cudaStreamPerThread (stream_of) */
  Capture *cap = nullptr; /* the capture this stream's work goes into */
  long pending = 0;       /* its operations in the queue */
};

/* What a stream in a capture knows: per member stream, how many of its
 * captured operations come before this stream's next one (a vector
 * clock: a stream knows its own operations, and those of the streams whose
 * events it has waited for, transitively). */
typedef std::map<const Stream *, uint64_t> Clock;

/* A captured operation: a graph's node.  Its dependencies are what its
 * stream knew when it was captured (after: every operation of each member
 * stream below that count), its own stream's earlier operations among them. */
struct Node {
  Work fn;
  bool host = false; /* cudaLaunchHostFunc's */
  unsigned reach = EVERY_DEVICE;
  const Stream *s = nullptr;
  Clock after;
};

struct Capture {
  uint64_t id = 0; /* unique over the process, as cudaStreamGetCaptureInfo's */
  Stream *origin = nullptr;
  cudaStreamCaptureMode mode = cudaStreamCaptureModeGlobal;
  std::thread::id owner;
  std::vector<Node> ops; /* in capture order */
  std::vector<Stream *> members;
  std::map<const Stream *, Clock> knows; /* per member */
  bool invalid = false;
};

struct Event {
  int device = 0;
  Capture *cap = nullptr; /* recorded into this capture, under way ... */
  Clock clock;            /* ... knowing what its stream knew then */
  bool stale = false;     /* recorded into a capture that has ended */
  Stream *s = nullptr;    /* else recorded on s ... */
  uint64_t seq = 0;       /* ... after its operations up to seq */
};

/* A captured graph and an instantiated one: both their nodes in the order
 * a launch runs them (replay_order). */
struct Graph {
  std::vector<Node> ops;
};

/* An operation in the queue.  A wait for an event is one too: it holds
 * its stream until the event's stream has run up to the event. */
struct Queued {
  uint64_t seq;
  Stream *s;
  Work fn;
  bool host = false;             /* cudaLaunchHostFunc: may wait for the program */
  unsigned reach = EVERY_DEVICE; /* the devices whose memory it may touch */
  bool busy = false;             /* running what it depends on */
  Stream *after = nullptr;       /* a wait: the event's stream ... */
  uint64_t after_seq = 0;        /* ... up to this operation */
};

struct Alloc {
  size_t bytes;
  int home; /* its device */
};

struct Device {
  std::recursive_mutex mu;
  std::map<uintptr_t, Alloc> allocs; /* by base */
  size_t used[EMU_DEVICES] = {};
  std::list<Queued> queue; /* in enqueue order */
  uint64_t seq = 0;
  Stream legacy[EMU_DEVICES]; /* each device's */
  std::set<Stream *> streams;
  std::set<Capture *> captures;
  std::set<Event *> events;
  std::set<Graph *> graphs;
  uint64_t captures_begun = 0;
  int open = 0;        /* Access objects alive */
  unsigned opened = 0; /* while one is: the devices whose memory is open */
  Device() {
    for (int i = 0; i < EMU_DEVICES; i++) {
      legacy[i].legacy = true;
      legacy[i].device = i;
    }
  }
};
/* The emulated machine; every runtime call holds its lock (LOCK). */
Device &dev();
#define LOCK std::lock_guard<std::recursive_mutex> lock_(fo_emu::dev().mu)

extern thread_local cudaError_t last_error;
extern thread_local int current_device;

/* Record e (unless cudaSuccess) as the thread's last error; return it. */
cudaError_t fail(cudaError_t e);
/* The stream s names (NULL and the special handles: the current device's
 * legacy stream; a Stream * of ours, a device's legacy stream among them,
 * names itself), or NULL when it is no stream of ours. */
Stream *stream_of(cudaStream_t s);

/* Device memory is mapped without access for the host: code that reads or
 * writes it directly, which on a device would fault or read another
 * address space, faults here too.  It opens while an Access lives: while
 * the device runs work (the flushes below), each operation's reach of it
 * (reach), and while the runtime copies. */
struct Access {
  Access();                        /* work runs: each operation opens its reach */
  Access(const void *p, size_t n); /* the pages of [p, p + n) of one allocation */
  ~Access();
  bool single = false;
  uintptr_t lo = 0, hi = 0;
  Access(const Access &) = delete;
  Access &operator=(const Access &) = delete;
};
/* Device memory closed again while one lives (a host function runs). */
struct Hidden {
  Hidden();
  ~Hidden();
  Hidden(const Hidden &) = delete;
  Hidden &operator=(const Hidden &) = delete;
  int was_open;
  unsigned was_opened;
};
/* Open the memory of the devices in mask, and only theirs (an Access
 * lives). */
void reach(unsigned mask);
/* The bytes an allocation of bytes maps: whole pages. */
size_t mapped_bytes(size_t bytes);

/* Run stream s's queued work (and what it depends on); the work a blocking
 * call on device's legacy stream waits for; a device's work. */
void flush(Stream *s);
void flush_legacy(int device);
void flush_device(int device);
/* Run stream s's work before its operation seq (for the emulated NCCL). */
void run_before(Stream *s, uint64_t seq);
/* Run queued work in order up to the first host function. */
void make_progress();

/* The capture rules: a call a capture forbids (check_unsafe); a wait for
 * a whole device while any of its streams is captured (check_device_wait);
 * work on or a
 * wait for the legacy stream beside a blocking capturing stream
 * (check_legacy); a call on a capturing stream it cannot hold. */
cudaError_t check_unsafe();
cudaError_t check_device_wait(int device);
cudaError_t check_legacy(int device, bool invalidate);
cudaError_t refuse_in_capture(Stream *s);
/* End capture c: its streams leave it, its events become stale. */
void forget_capture(Capture *c);
/* Whether a stream of capture c other than its origin has captured work
 * the origin has not waited for (cudaErrorStreamCaptureUnjoined). */
bool unjoined(const Capture *c);
/* Capture c's nodes in the order a launch of its graph runs them: each after
 * its dependencies, and otherwise the one captured last first -- a legal
 * order that a missing wait between two captured streams cannot survive,
 * where capture order would hide it (as flush_device for eager work). */
std::vector<Node> replay_order(std::vector<Node> ops);

/* Enqueue fn on s, or add it to s's capture (reach: the devices whose
 * memory it touches); a wait of s for event e. */
cudaError_t enqueue(Stream *s, Work fn, bool host = false, unsigned reach = EVERY_DEVICE);
cudaError_t enqueue_wait(Stream *s, const Event *e);

/* The allocation holding [p, p + n), or dev().allocs.end(); whether p is
 * device memory; a copy's two ends checked against its kind (resolving
 * cudaMemcpyDefault). */
std::map<uintptr_t, Alloc>::iterator find_alloc(const void *p, size_t n);
bool on_device(const void *p);
cudaError_t check_copy(void *dst, const void *src, size_t n, cudaMemcpyKind *kind);

}  // namespace fo_emu

#endif /* FO_TEST_EMU_DEVICE_H */
