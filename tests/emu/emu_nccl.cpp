/*
 * emu_nccl.cpp -- NCCL on the emulated devices (emu.h): libnccl.so.2 of the
 * emulated GPU tier, so that host/dp/nccl.c, which loads NCCL with dlopen,
 * and tests/test_gpu_comm.c, which calls it, run on a machine without a GPU.
 *
 * A communicator made by ncclCommInitRank has one rank (a one-rank
 * collective copies its input to its output, in stream order, or into the
 * graph being captured).  ncclCommInitAll makes one rank per device of the
 * emulated machine, all driven by one thread, as NCCL allows: rank r's k-th
 * collective is enqueued on its stream at once, and the first rank's part
 * to run waits for every other rank's work before its own part (a rank
 * whose part runs before every rank has called it would wait for ever on a
 * device: the emulator says so and aborts), then computes the result for
 * all of them -- sums in fp32 in rank order, rounded once to the dtype --
 * and the other parts find it done.  Collectives over several ranks are not
 * captured (refused: ncclInvalidUsage).  The sums over several processes
 * are the MPI tier's (tests/mpi).
 *
 * Non-blocking communicators (ncclCommInitRankConfig with blocking = 0,
 * or NCCL_COMM_BLOCKING=0 in the environment, as in NCCL): each call that
 * succeeds answers ncclInProgress, and ncclCommGetAsyncError says
 * ncclInProgress twice before the call's outcome; any other call on the
 * communicator before then is refused (ncclInvalidUsage, said on stderr):
 * NCCL's rule, which a real NCCL need not enforce.
 *
 * Faults, for the tests of what the library does after NCCL fails:
 * FO_EMU_NCCL_FAIL="N:sync" makes the process's N-th collective call
 * (ncclAllReduce, ncclReduce, ncclBroadcast; from 1) return
 * ncclSystemError, "N:async" lets it run and then reports ncclRemoteError
 * from ncclCommGetAsyncError.  fo_emu_nccl_aborts() counts ncclCommAbort's
 * calls.
 */
#include <cuda_runtime_api.h>
#include <nccl.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <vector>

#include "emu.h"

namespace {

enum Kind { ALL_REDUCE, REDUCE, BROADCAST };

/* One rank's call of a collective. */
struct Part {
  const void *send = nullptr;
  void *recv = nullptr;
  cudaStream_t stream = nullptr;
  uint64_t seq = 0;
};

struct Collective {
  Kind kind;
  size_t count;
  ncclDataType_t type;
  ncclRedOp_t op;
  int root;
  std::vector<Part> parts;
  int arrived = 0;
  bool done = false;
};

/* The ranks of one ncclCommInitAll. */
struct Clique {
  int size;
  int alive;
  std::vector<uint64_t> calls;                             /* per rank */
  std::map<uint64_t, std::shared_ptr<Collective>> pending; /* by number */
};

}  // namespace

struct ncclComm {
  int device;
  int rank;
  Clique *clique; /* NULL: a one-rank communicator */
  bool nonblocking = false;
  int busy = 0;                     /* polls before the call in progress is done */
  ncclResult_t async = ncclSuccess; /* what ncclCommGetAsyncError reports then */
};

namespace {

size_t dtype_size(ncclDataType_t t) {
  switch (t) {
    case ncclInt8:
    case ncclUint8:
    case ncclFloat8e4m3:
    case ncclFloat8e5m2: return 1;
    case ncclFloat16:
    case ncclBfloat16: return 2;
    case ncclInt32:
    case ncclUint32:
    case ncclFloat32: return 4;
    case ncclInt64:
    case ncclUint64:
    case ncclFloat64: return 8;
    default: return 0;
  }
}

/* recv = send (count elements of t) on stream, for a one-rank collective
 * (its arguments checked by collective()). */
ncclResult_t copy(const void *send, void *recv, size_t count, ncclDataType_t t,
                  cudaStream_t stream) {
  const size_t bytes = count * dtype_size(t);
  if (!bytes || send == recv) return ncclSuccess;
  const int e = fo_emu_enqueue(
      stream, [send, recv, bytes]() { memmove(recv, send, bytes); }, nullptr);
  return e == 0 ? ncclSuccess : ncclUnhandledCudaError;
}

/* A non-blocking communicator's call that succeeded: in progress now. */
ncclResult_t started(ncclComm_t comm, ncclResult_t r) {
  if (r != ncclSuccess || !comm->nonblocking) return r;
  comm->busy = 2;
  return ncclInProgress;
}

/* A call on a communicator whose last call is still in progress. */
bool busy(ncclComm_t comm) {
  if (!comm || !comm->busy) return false;
  fprintf(stderr,
          "emulated NCCL: a call on a non-blocking communicator while its last call is "
          "in progress (poll ncclCommGetAsyncError first)\n");
  return true;
}

/* NCCL_COMM_BLOCKING=0: every communicator is non-blocking, as in NCCL. */
bool blocking_by_default() {
  const char *e = getenv("NCCL_COMM_BLOCKING");
  return !(e && strcmp(e, "0") == 0);
}

/* The fault FO_EMU_NCCL_FAIL asks of the process's next collective call:
 * 0 none, 1 sync, 2 async. */
int next_fault() {
  static uint64_t calls = 0;
  calls++;
  const char *e = getenv("FO_EMU_NCCL_FAIL");
  unsigned long long n = 0;
  char kind[8] = "";
  if (!e || sscanf(e, "%llu:%7s", &n, kind) != 2 || n != calls) return 0;
  return strcmp(kind, "sync") == 0 ? 1 : strcmp(kind, "async") == 0 ? 2 : 0;
}

/* On the current device, as ncclCommInitRank. */
ncclResult_t one_rank(ncclComm_t *comm, int nranks, int rank, bool blocking) {
  if (!comm) return ncclInvalidArgument;
  if (nranks != 1 || rank != 0) return ncclInvalidUsage; /* one rank per process */
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return ncclUnhandledCudaError;
  *comm = new ncclComm{device, 0, nullptr};
  (*comm)->nonblocking = !blocking;
  return started(*comm, ncclSuccess);
}

/* ------------------------------------------------- several ranks' sums */

float load(const void *p, size_t i, ncclDataType_t t) {
  uint32_t bits = 0;
  float f;
  switch (t) {
    case ncclFloat32: memcpy(&f, (const char *)p + 4 * i, 4); return f;
    case ncclBfloat16:
      memcpy(&bits, (const char *)p + 2 * i, 2);
      bits <<= 16;
      memcpy(&f, &bits, 4);
      return f;
    default: { /* ncclFloat16 */
      uint16_t h;
      memcpy(&h, (const char *)p + 2 * i, 2);
      const int e = (h >> 10) & 31, m = h & 1023;
      f = e == 0    ? std::ldexp((float)m, -24)
          : e == 31 ? (m ? NAN : INFINITY)
                    : std::ldexp((float)(m | 1024), e - 25);
      return (h & 0x8000) ? -f : f;
    }
  }
}

/* Round to nearest even, as a device's conversions do. */
void store(void *p, size_t i, ncclDataType_t t, float f) {
  uint32_t bits;
  memcpy(&bits, &f, 4);
  if (t == ncclFloat32) {
    memcpy((char *)p + 4 * i, &f, 4);
  } else if (t == ncclBfloat16) {
    const uint16_t h = std::isnan(f) ? (uint16_t)((bits >> 16) | 64)
                                     : (uint16_t)((bits + 0x7fff + ((bits >> 16) & 1)) >> 16);
    memcpy((char *)p + 2 * i, &h, 2);
  } else { /* ncclFloat16 */
    const uint16_t sign = (uint16_t)((bits >> 16) & 0x8000);
    const float a = std::fabs(f);
    uint16_t h;
    if (std::isnan(f)) {
      h = 0x7e00;
    } else if (a >= 65520.0f) {
      h = 0x7c00;
    } else if (a < std::ldexp(1.0f, -14)) { /* subnormal: units of 2^-24 */
      h = (uint16_t)std::nearbyint(std::ldexp(a, 24));
    } else {
      int e;
      const float m = std::frexp(a, &e);                     /* a = m * 2^e, m in [0.5, 1) */
      const float units = std::nearbyint(std::ldexp(m, 11)); /* 1024..2048 */
      const int mant = (int)units;
      h = mant == 2048 ? (uint16_t)((e + 15) << 10) : (uint16_t)(((e + 14) << 10) | (mant - 1024));
    }
    h |= sign;
    memcpy((char *)p + 2 * i, &h, 2);
  }
}

void compute(Collective &c) {
  const int n = (int)c.parts.size();
  const size_t size = dtype_size(c.type);
  if (c.kind == BROADCAST) {
    const Part &root = c.parts[(size_t)c.root];
    for (int r = 0; r < n; r++)
      if (c.parts[(size_t)r].recv != root.send)
        memmove(c.parts[(size_t)r].recv, root.send, c.count * size);
    return;
  }
  std::vector<float> sum(c.count, 0.0f);
  for (int r = 0; r < n; r++)
    for (size_t i = 0; i < c.count; i++) sum[i] += load(c.parts[(size_t)r].send, i, c.type);
  if (c.op == ncclAvg)
    for (float &v : sum) v /= (float)n;
  for (int r = 0; r < n; r++) {
    if (c.kind == REDUCE && r != c.root) continue; /* recv is the root's only */
    for (size_t i = 0; i < c.count; i++) store(c.parts[(size_t)r].recv, i, c.type, sum[i]);
  }
}

/* Rank's part, when its stream reaches it. */
void run_part(const std::shared_ptr<Collective> &c, int rank) {
  if (c->done) return;
  if (c->arrived < (int)c->parts.size()) {
    fprintf(stderr,
            "emulated NCCL: rank %d's collective ran before every rank had called it "
            "(on a device it would wait for ever)\n",
            rank);
    abort();
  }
  for (size_t r = 0; r < c->parts.size(); r++)
    if ((int)r != rank) fo_emu_run_before(c->parts[r].stream, c->parts[r].seq);
  compute(*c);
  c->done = true;
}

/* Rank comm's part of its next collective: enqueued on stream (resolved),
 * counted once it is. */
ncclResult_t issue(const Collective &call, const void *send, void *recv, ncclComm_t comm,
                   void *stream) {
  Clique *q = comm->clique;
  const int rank = comm->rank;
  const uint64_t k = q->calls[(size_t)rank];
  std::shared_ptr<Collective> c = q->pending[k];
  if (!c) {
    c = q->pending[k] = std::make_shared<Collective>(call);
    c->parts.assign((size_t)q->size, Part());
  } else if (c->kind != call.kind || c->count != call.count || c->type != call.type ||
             c->root != call.root || (call.kind != BROADCAST && c->op != call.op)) {
    fprintf(stderr, "emulated NCCL: rank %d's collective %llu differs from another rank's\n", rank,
            (unsigned long long)k);
    return ncclInvalidUsage;
  }
  uint64_t seq = 0;
  if (fo_emu_enqueue(
          stream, [c, rank]() { run_part(c, rank); }, &seq) != 0 ||
      !seq) {
    if (!c->arrived) q->pending.erase(k);
    return ncclUnhandledCudaError;
  }
  c->parts[(size_t)rank] = Part{send, recv, (cudaStream_t)stream, seq};
  q->calls[(size_t)rank]++;
  if (++c->arrived == q->size) q->pending.erase(k);
  return ncclSuccess;
}

/* As NCCL: inside ncclGroupStart/End a collective is only recorded, and
 * its work goes on its stream at the outermost ncclGroupEnd -- after any
 * work the program enqueued on that stream in between. */
thread_local int group_depth = 0;
thread_local std::vector<std::pair<ncclComm_t, std::function<ncclResult_t()>>> grouped;

ncclResult_t collective(Kind kind, const void *send, void *recv, size_t count, ncclDataType_t t,
                        ncclRedOp_t op, int root, ncclComm_t comm, cudaStream_t stream) {
  if (!comm || !dtype_size(t) || (count && (!send || !recv))) return ncclInvalidArgument;
  if (busy(comm)) return ncclInvalidUsage;
  const int fault = next_fault();
  if (fault == 1) return ncclSystemError;
  if (fault == 2) comm->async = ncclRemoteError;
  if (root < 0 || root >= (comm->clique ? comm->clique->size : 1)) return ncclInvalidArgument;
  int device = -1;
  void *s = fo_emu_stream(stream, &device);
  /* NCCL launches on stream with the communicator's device current */
  if (!s || device != comm->device) return ncclUnhandledCudaError;
  std::function<ncclResult_t()> work;
  if (!comm->clique) {
    work = [=]() { return copy(send, recv, count, t, (cudaStream_t)s); };
  } else {
    if (kind != BROADCAST && ((op != ncclSum && op != ncclAvg) ||
                              (t != ncclFloat32 && t != ncclFloat16 && t != ncclBfloat16)))
      return ncclInvalidUsage; /* not emulated */
    cudaStreamCaptureStatus capturing;
    if (cudaStreamIsCapturing((cudaStream_t)s, &capturing) != cudaSuccess)
      return ncclUnhandledCudaError;
    if (capturing != cudaStreamCaptureStatusNone) return ncclInvalidUsage; /* not emulated */
    if (!group_depth) {
      fprintf(stderr,
              "emulated NCCL: a collective over %d ranks outside ncclGroupStart/End (one "
              "thread drives them all: on a device it would wait for calls it has not made)\n",
              comm->clique->size);
      return ncclInvalidUsage;
    }
    const Collective call{kind, count, t, op, root, {}};
    work = [=]() { return issue(call, send, recv, comm, s); };
  }
  if (!group_depth) return started(comm, work());
  grouped.emplace_back(comm, std::move(work));
  return ncclSuccess;
}

}  // namespace

extern "C" {

ncclResult_t ncclGetUniqueId(ncclUniqueId *id) {
  if (!id) return ncclInvalidArgument;
  memset(id, 0, sizeof *id);
  memcpy(id->internal, "emulated", 8);
  return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank) {
  (void)id;
  return one_rank(comm, nranks, rank, blocking_by_default());
}

ncclResult_t ncclCommInitRankConfig(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank,
                                    ncclConfig_t *config) {
  (void)id;
  const bool blocking = !config || config->blocking == NCCL_CONFIG_UNDEF_INT
                            ? blocking_by_default()
                            : config->blocking != 0;
  return one_rank(comm, nranks, rank, blocking);
}

/* One rank per device, devices distinct (devlist NULL: 0 .. ndev - 1). */
ncclResult_t ncclCommInitAll(ncclComm_t *comms, int ndev, const int *devlist) {
  int count = 0;
  if (!comms || ndev < 1 || cudaGetDeviceCount(&count) != cudaSuccess || ndev > count)
    return ncclInvalidArgument;
  std::vector<bool> taken((size_t)count, false);
  for (int r = 0; r < ndev; r++) {
    const int d = devlist ? devlist[r] : r;
    if (d < 0 || d >= count || taken[(size_t)d]) return ncclInvalidArgument;
    taken[(size_t)d] = true;
  }
  Clique *q =
      ndev > 1 ? new Clique{ndev, ndev, std::vector<uint64_t>((size_t)ndev, 0), {}} : nullptr;
  for (int r = 0; r < ndev; r++) comms[r] = new ncclComm{devlist ? devlist[r] : r, r, q};
  return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  if (comm && comm->clique && --comm->clique->alive == 0) delete comm->clique;
  delete comm;
  return ncclSuccess;
}

static int aborts = 0;

/* The process's ncclCommAbort calls (tests/test_gpu_comm.c). */
int fo_emu_nccl_aborts(void) {
  return aborts;
}

ncclResult_t ncclCommAbort(ncclComm_t comm) {
  aborts++;
  return ncclCommDestroy(comm);
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t *error) {
  if (!comm || !error) return ncclInvalidArgument;
  if (comm->busy) {
    comm->busy--;
    *error = ncclInProgress;
  } else {
    *error = comm->async;
  }
  return ncclSuccess;
}

const char *ncclGetErrorString(ncclResult_t r) {
  switch (r) {
    case ncclSuccess: return "no error (emulated NCCL)";
    case ncclInvalidArgument: return "invalid argument (emulated NCCL)";
    case ncclInvalidUsage: return "invalid usage, or not emulated (emulated NCCL)";
    case ncclUnhandledCudaError: return "unhandled cuda error (emulated NCCL)";
    default: return "error (emulated NCCL)";
  }
}

const char *ncclGetLastError(ncclComm_t comm) {
  (void)comm;
  return "";
}

ncclResult_t ncclCommCount(const ncclComm_t comm, int *count) {
  if (!comm || !count) return ncclInvalidArgument;
  if (busy(comm)) return ncclInvalidUsage;
  *count = comm->clique ? comm->clique->size : 1;
  return ncclSuccess;
}

ncclResult_t ncclCommUserRank(const ncclComm_t comm, int *rank) {
  if (!comm || !rank) return ncclInvalidArgument;
  if (busy(comm)) return ncclInvalidUsage;
  *rank = comm->rank;
  return ncclSuccess;
}

ncclResult_t ncclCommCuDevice(const ncclComm_t comm, int *device) {
  if (!comm || !device) return ncclInvalidArgument;
  if (busy(comm)) return ncclInvalidUsage;
  *device = comm->device;
  return ncclSuccess;
}

ncclResult_t ncclAllReduce(const void *send, void *recv, size_t count, ncclDataType_t t,
                           ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
  return collective(ALL_REDUCE, send, recv, count, t, op, 0, comm, stream);
}

ncclResult_t ncclReduce(const void *send, void *recv, size_t count, ncclDataType_t t,
                        ncclRedOp_t op, int root, ncclComm_t comm, cudaStream_t stream) {
  return collective(REDUCE, send, recv, count, t, op, root, comm, stream);
}

ncclResult_t ncclBroadcast(const void *send, void *recv, size_t count, ncclDataType_t t, int root,
                           ncclComm_t comm, cudaStream_t stream) {
  return collective(BROADCAST, send, recv, count, t, ncclSum, root, comm, stream);
}

ncclResult_t ncclGroupStart(void) {
  group_depth++;
  return ncclSuccess;
}

ncclResult_t ncclGroupEnd(void) {
  if (!group_depth) return ncclInvalidUsage;
  if (--group_depth) return ncclSuccess;
  ncclResult_t r = ncclSuccess;
  std::vector<std::pair<ncclComm_t, std::function<ncclResult_t()>>> work;
  work.swap(grouped);
  bool nonblocking = false;
  for (const auto &w : work) {
    const ncclResult_t e = w.second();
    if (r == ncclSuccess) r = e;
    nonblocking = nonblocking || w.first->nonblocking;
  }
  /* a group of non-blocking communicators is in progress on each of them */
  if (r == ncclSuccess && nonblocking) {
    for (const auto &w : work)
      if (w.first->nonblocking) w.first->busy = 2;
    return ncclInProgress;
  }
  return r;
}

}  // extern "C"
