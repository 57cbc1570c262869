/*
 * emu_nccl.cpp -- NCCL on the emulated device (emu.h): libnccl.so.2 of the
 * emulated GPU tier, so that host/dp/nccl.c, which loads NCCL with dlopen,
 * and tests/test_gpu_comm.c, which calls it, run on a machine without a GPU.
 *
 * The emulated machine has one device, and NCCL allows one rank per device:
 * every communicator has one rank.  A collective over one rank copies its
 * input to its output (a sum or average of one value is that value), in
 * stream order, or into the graph being captured.  That is what the GPU
 * tier needs from it: the host code's buckets, packing, events, side
 * streams and captures around the collectives; the sums over several ranks
 * are the MPI tier's (tests/mpi).
 */
#include <cuda_runtime_api.h>
#include <nccl.h>

#include <cstdint>
#include <cstring>

#include "emu.h"

struct ncclComm {
  int device;
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

/* recv = send (count elements of t) on stream, for a one-rank collective. */
ncclResult_t copy(const void *send, void *recv, size_t count, ncclDataType_t t, ncclComm_t comm,
                  cudaStream_t stream) {
  const size_t size = dtype_size(t);
  if (!comm || !size || (count && (!send || !recv))) return ncclInvalidArgument;
  const size_t bytes = count * size;
  if (!bytes || send == recv) return ncclSuccess;
  const int e = fo_emu_enqueue(stream, [send, recv, bytes]() { memmove(recv, send, bytes); });
  return e == 0 ? ncclSuccess : ncclUnhandledCudaError;
}

ncclResult_t one_rank(ncclComm_t *comm, int nranks, int rank) {
  if (!comm) return ncclInvalidArgument;
  if (nranks != 1 || rank != 0) return ncclInvalidUsage; /* one device, one rank */
  *comm = new ncclComm{0};
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
  return one_rank(comm, nranks, rank);
}

ncclResult_t ncclCommInitAll(ncclComm_t *comms, int ndev, const int *devlist) {
  if (devlist && ndev == 1 && devlist[0] != 0) return ncclInvalidArgument;
  return one_rank(comms, ndev, 0);
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  delete comm;
  return ncclSuccess;
}

ncclResult_t ncclCommAbort(ncclComm_t comm) {
  delete comm;
  return ncclSuccess;
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t *error) {
  if (!comm || !error) return ncclInvalidArgument;
  *error = ncclSuccess;
  return ncclSuccess;
}

const char *ncclGetErrorString(ncclResult_t r) {
  switch (r) {
    case ncclSuccess: return "no error (emulated NCCL)";
    case ncclInvalidArgument: return "invalid argument (emulated NCCL)";
    case ncclInvalidUsage: return "invalid usage: one rank per device (emulated NCCL)";
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
  *count = 1;
  return ncclSuccess;
}

ncclResult_t ncclCommUserRank(const ncclComm_t comm, int *rank) {
  if (!comm || !rank) return ncclInvalidArgument;
  *rank = 0;
  return ncclSuccess;
}

ncclResult_t ncclCommCuDevice(const ncclComm_t comm, int *device) {
  if (!comm || !device) return ncclInvalidArgument;
  *device = comm->device;
  return ncclSuccess;
}

ncclResult_t ncclAllReduce(const void *send, void *recv, size_t count, ncclDataType_t t,
                           ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
  (void)op;
  return copy(send, recv, count, t, comm, stream);
}

ncclResult_t ncclReduce(const void *send, void *recv, size_t count, ncclDataType_t t,
                        ncclRedOp_t op, int root, ncclComm_t comm, cudaStream_t stream) {
  (void)op;
  if (root != 0) return ncclInvalidArgument;
  return copy(send, recv, count, t, comm, stream);
}

ncclResult_t ncclBroadcast(const void *send, void *recv, size_t count, ncclDataType_t t, int root,
                           ncclComm_t comm, cudaStream_t stream) {
  if (root != 0) return ncclInvalidArgument;
  return copy(send, recv, count, t, comm, stream);
}

ncclResult_t ncclGroupStart(void) {
  return ncclSuccess;
}

ncclResult_t ncclGroupEnd(void) {
  return ncclSuccess;
}

}  // extern "C"
