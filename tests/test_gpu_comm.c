/*
 * test_gpu_comm.c -- the GPU tier of the communicators: the NCCL path.
 *
 * Every test first asks fo_cuda_device_count(); without a usable device it
 * is skipped with the reason.  NCCL refuses two ranks on one GPU, so on one
 * GPU the NCCL path runs with one rank: a sum over one rank is the
 * identity and the divisor is 1, so an optimizer with the communicator
 * attached must end bit-identical to one without -- through every path of
 * the reduction (the arena in place, scattered external tensors packed
 * into one collective per bucket, 16-bit gradients widened to fp32 and
 * back, buckets reduced on
 * a side stream with the step waiting on their events, a step captured in
 * a CUDA graph with its all-reduce, eager steps with a side stream before
 * and after such a capture; a step refused whose bucket was reduced
 * outside its capture; buckets reduced on one thread's per-thread stream
 * and the step on another's).  Several ranks, one per GPU, are
 * test_gpu_comm_ranks.c's.  The sums over processes, the agreement
 * on overflow and the comparison with one process on the whole batch are
 * the MPI tier's (tests/mpi, CPU); multi-process NCCL runs bootstrap
 * through MPI (fusedopt_mpi.h).
 */
#define _POSIX_C_SOURCE 200809L /* setenv */
#include <criterion/criterion.h>
#include <cuda_runtime_api.h>
#include <math.h>
#include <nccl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "exec.h"
#include "fusedopt.h"
#include "gpu_comm_rig.h"
#include "gpu_harness.h"
#include "testutil.h"

#define NC(call)                                                            \
  do {                                                                      \
    ncclResult_t r_ = (call);                                               \
    cr_assert_eq(r_, ncclSuccess, "%s: %s", #call, ncclGetErrorString(r_)); \
  } while (0)

/* K steps with and without a one-rank communicator: bit-identical.
 * side_stream: buckets reduced on another stream, last first. */
static void one_rank_case(const gc_config *c, int side_stream) {
  gc_rig dp, ref;
  gc_make(&dp, c, 0);
  gc_make(&ref, c, 0);
  fo_comm *comm = gc_one_rank_comm(0);
  const fo_dp_options o = gc_dp_options(c);
  cudaStream_t step_stream, comm_stream;
  CK(cudaStreamCreateWithFlags(&step_stream, cudaStreamNonBlocking));
  CK(cudaStreamCreateWithFlags(&comm_stream, cudaStreamNonBlocking));
  int64_t nb = 0;
  for (int k = 0; k < 6; k++) {
    gc_grads(&dp, k, 0);
    gc_grads(&ref, k, 0);
    if (k == 0) {
      /* attached with the first gradients in place, and the first step on
       * a non-blocking stream right after it: the attach must have waited
       * for what it copied on the legacy stream */
      OK(fo_optimizer_set_comm(dp.opt, comm, &o));
      OK(fo_optimizer_num_buckets(dp.opt, &nb));
    }
    if (side_stream)
      for (int64_t b = nb - 1; b >= 0; b--)
        OK(fo_optimizer_reduce_bucket(dp.opt, b, (fo_stream_t)comm_stream));
    OK(fo_optimizer_step(dp.opt, (fo_stream_t)step_stream));
    OK(fo_optimizer_step(ref.opt, (fo_stream_t)step_stream));
    fo_step_info a, b;
    OK(fo_optimizer_get_info(dp.opt, &a));
    OK(fo_optimizer_get_info(ref.opt, &b));
    cr_assert_eq(a.last_step_skipped, k == 3);
    cr_assert_eq(a.grad_norm, b.grad_norm);
    cr_assert_eq(a.grad_coef, b.grad_coef);
    gc_expect_same(&dp, &ref, "one rank");
  }
  CK(cudaStreamDestroy(step_stream));
  CK(cudaStreamDestroy(comm_stream));
  gc_pair_free(&dp, &ref, comm);
}

Test(gpu_comm, one_rank_arena_in_place, .timeout = 120) {
  require_devices(1);
  gc_config c = {FO_STORAGE_ARENA, FO_DTYPE_BF16, FO_DTYPE_BF16, 0, 0, 0, 0, 0};
  one_rank_case(&c, 0);
}

Test(gpu_comm, one_rank_buckets_on_a_side_stream, .timeout = 120) {
  require_devices(1);
  gc_config c = {FO_STORAGE_ARENA, FO_DTYPE_F32, FO_DTYPE_F32, 0, 8192, 0, 0, 0};
  one_rank_case(&c, 1);
}

Test(gpu_comm, one_rank_scattered_external_packed, .timeout = 120) {
  require_devices(1);
  gc_config c = {FO_STORAGE_EXTERNAL, FO_DTYPE_F16, FO_DTYPE_F16, 77, 0, 0, 0, 0};
  one_rank_case(&c, 0);
  gc_config b = {FO_STORAGE_EXTERNAL, FO_DTYPE_BF16, FO_DTYPE_BF16, 3, 8192, 0, 0, 0};
  one_rank_case(&b, 1);
}

/* cudaStreamPerThread is one handle on every thread but a different
 * stream on each: buckets reduced on one thread's and the step on
 * another's are two streams, and the step must wait for the buckets'
 * events as for any other stream's.  Thread A holds its per-thread stream
 * with a host function for 100 ms, then reduces every bucket behind it and
 * ends; the step on this thread's per-thread stream, waited for, must find
 * the hold over (a step that took the handles for one stream would finish
 * at once, ahead of the sums). */
typedef struct per_thread_job {
  fo_optimizer *opt;
  int64_t buckets;
  atomic_int held; /* set when the host function's hold ends */
  fo_status st;
  char msg[256];
} per_thread_job;

static void CUDART_CB hold_then_mark(void *arg) {
  per_thread_job *j = arg;
  struct timespec ts = {0, 100 * 1000 * 1000};
  nanosleep(&ts, NULL);
  atomic_store(&j->held, 1);
}

static void *reduce_on_own_stream(void *arg) {
  per_thread_job *j = arg;
  const fo_stream_t mine = (fo_stream_t)cudaStreamPerThread;
  cudaError_t e = cudaSetDevice(0);
  if (e == cudaSuccess) e = cudaLaunchHostFunc(cudaStreamPerThread, hold_then_mark, j);
  if (e != cudaSuccess) {
    j->st = FO_ERR_CUDA;
    snprintf(j->msg, sizeof j->msg, "holding the stream: %s", cudaGetErrorName(e));
    return NULL;
  }
  for (int64_t b = j->buckets - 1; b >= 0 && j->st == FO_SUCCESS; b--)
    j->st = fo_optimizer_reduce_bucket(j->opt, b, mine);
  if (j->st != FO_SUCCESS) snprintf(j->msg, sizeof j->msg, "%s", fo_last_error());
  return NULL;
}

static void per_thread_streams_case(const gc_config *c) {
  gc_rig dp, ref;
  fo_comm *comm = gc_pair_make(&dp, &ref, c);
  int64_t nb = 0;
  OK(fo_optimizer_num_buckets(dp.opt, &nb));
  cr_assert_gt(nb, 1, "several buckets");
  for (int k = 0; k < 3; k++) {
    gc_grads(&dp, k, 0);
    gc_grads(&ref, k, 0);
    per_thread_job j = {.opt = dp.opt, .buckets = nb, .st = FO_SUCCESS};
    atomic_init(&j.held, 0);
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, reduce_on_own_stream, &j), 0);
    cr_assert_eq(pthread_join(th, NULL), 0);
    cr_assert_eq(j.st, FO_SUCCESS, "the other thread's reductions: %s", j.msg);
    OK(fo_optimizer_step(dp.opt, (fo_stream_t)cudaStreamPerThread));
    CK(cudaStreamSynchronize(cudaStreamPerThread));
    cr_assert(atomic_load(&j.held),
              "step %d on this thread's per-thread stream finished before the buckets reduced "
              "on another thread's could (it did not wait for their events)",
              k);
    OK(fo_optimizer_step(ref.opt, NULL));
    gc_expect_same(&dp, &ref, "buckets on one thread's per-thread stream, the step on another's");
  }
  CK(cudaDeviceSynchronize());
  gc_pair_free(&dp, &ref, comm);
}

Test(gpu_comm, per_thread_streams_of_two_threads, .timeout = 120) {
  require_devices(1);
  /* in place, and packed through the scratch (which each bucket claims) */
  gc_config in_place = {FO_STORAGE_ARENA, FO_DTYPE_F32, FO_DTYPE_F32, 0, 8192, 0, 0, 0};
  per_thread_streams_case(&in_place);
  gc_config packed = {FO_STORAGE_EXTERNAL, FO_DTYPE_BF16, FO_DTYPE_BF16, 5, 8192, 1, 0, 0};
  per_thread_streams_case(&packed);
}

/* cudaStreamPerThread names the optimizer's device's per-thread stream,
 * whichever device the calling thread has current, so that is the stream
 * the library must ask whether it is being captured.  With device 1's
 * per-thread stream capturing and device 0 current, a bucket reduced there
 * goes into the capture; an eager step after it must then be refused (the
 * sum is in the graph only).  Asking device 0's stream instead, the
 * library would take the bucket for eager and step without its sum. */
Test(gpu_comm, per_thread_stream_captured_on_the_optimizers_device, .timeout = 120) {
  require_devices(2);
  /* packed: the bucket's pack kernel is captured whatever NCCL does with
   * an all-reduce over one rank */
  gc_config c = {FO_STORAGE_EXTERNAL, FO_DTYPE_BF16, FO_DTYPE_BF16, 5, 8192, 1, 0, 0};
  gc_rig r;
  gc_make(&r, &c, 1);
  fo_comm *comm = gc_one_rank_comm(1);
  const fo_dp_options o = gc_dp_options(&c);
  OK(fo_optimizer_set_comm(r.opt, comm, &o));
  gc_grads(&r, 0, 0);
  const fo_stream_t per_thread = (fo_stream_t)cudaStreamPerThread;
  CK(cudaSetDevice(1));
  CK(cudaStreamBeginCapture(cudaStreamPerThread, cudaStreamCaptureModeThreadLocal));
  CK(cudaSetDevice(0));
  OK(fo_optimizer_reduce_bucket(r.opt, 0, per_thread));
  CK(cudaSetDevice(1));
  cudaGraph_t graph;
  CK(cudaStreamEndCapture(cudaStreamPerThread, &graph));
  size_t nodes = 0;
  CK(cudaGraphGetNodes(graph, NULL, &nodes));
  cr_assert_gt(nodes, 0, "the reduction did not go into device 1's capture");
  CK(cudaSetDevice(0));
  cr_assert_eq(fo_optimizer_step(r.opt, per_thread), FO_ERR_INVALID_STATE, "%s", fo_last_error());
  cr_assert(strstr(fo_last_error(), "the bucket reduced in a capture, the stream not capturing"),
            "%s", fo_last_error());
  CK(cudaGraphDestroy(graph));
  OK(fo_optimizer_zero_grad(r.opt, NULL)); /* forgets the captured reduction */
  OK(fo_optimizer_step(r.opt, per_thread));
  CK(cudaSetDevice(1));
  CK(cudaDeviceSynchronize());
  gc_free(&r);
  OK(fo_comm_destroy(comm));
}

/* Scattered gradients (odd gaps, several buckets) reduced over one rank:
 * packed, summed, unpacked, they come back bit for bit (a sum over one
 * rank is the identity; bf16 -> fp32 -> bf16 is exact), and the poisoned
 * gaps between them stay as they were. */
Test(gpu_comm, one_rank_scattered_gradients_come_back, .timeout = 120) {
  require_devices(1);
  for (int f32 = 0; f32 < 2; f32++) {
    gc_config c = {FO_STORAGE_EXTERNAL, FO_DTYPE_BF16, FO_DTYPE_BF16, 5, 8192, f32, 0, 0};
    gc_rig r;
    gc_make(&r, &c, 0);
    size_t total = 0;
    for (int i = 0; i < GC_NT; i++) total += (size_t)(GC_SIZES[i] + c.gap) * 2;
    CK(cudaMemset(r.gbuf, 0xC3, total));
    gc_grads(&r, 1, 0);
    unsigned char *before = malloc(total), *after = malloc(total);
    cr_assert(before && after);
    CK(cudaMemcpy(before, r.gbuf, total, cudaMemcpyDeviceToHost));
    fo_comm *comm = gc_one_rank_comm(0);
    fo_dp_options o;
    OK(fo_dp_options_default(&o));
    o.bucket_bytes = c.bucket_bytes;
    o.reduce_in_f32 = f32;
    OK(fo_optimizer_set_comm(r.opt, comm, &o));
    int64_t nb = 0;
    OK(fo_optimizer_num_buckets(r.opt, &nb));
    cr_assert_gt(nb, 2);
    OK(fo_optimizer_reduce_grads(r.opt, NULL));
    CK(cudaDeviceSynchronize());
    CK(cudaMemcpy(after, r.gbuf, total, cudaMemcpyDeviceToHost));
    cr_assert(memcmp(before, after, total) == 0, "reduce_in_f32 = %d: gradients or gaps changed",
              f32);
    free(before);
    free(after);
    gc_free(&r);
    OK(fo_comm_destroy(comm));
  }
}

/* The CUDA executor's pack op itself, over a table of scattered device
 * segments (some misaligned, one several chunks long): the packed buffer
 * holds the host conversion of every segment and its padding keeps its
 * poison; unpacking fresh fp32 values rounds them as the host does and
 * leaves the guard bytes between the segments alone. */
Test(gpu_comm, pack_op_on_the_device, .timeout = 120) {
  require_devices(1);
  enum { NS = 5 };
  const int64_t counts[NS] = {3, 40000, 1, 16384, 777};
  const int64_t skew[NS] = {1, 0, 3, 0, 2}; /* elements off 16 bytes */
  int64_t byte_at[NS], packed_at[NS], packed = 0, bytes = 0, nblocks = 0;
  for (int s = 0; s < NS; s++) {
    bytes = (bytes + 64 + 15) / 16 * 16 + skew[s] * 2;
    byte_at[s] = bytes;
    bytes += counts[s] * 2;
    packed = (packed + 3) / 4 * 4; /* fp32 wire: 16 bytes */
    packed_at[s] = packed;
    packed += counts[s];
  }
  bytes += 64;
  unsigned char *dg, *dw, *hg = malloc((size_t)bytes), *hw = malloc((size_t)packed * 4);
  fo_pack_block *table = malloc(sizeof *table * 16), *dt;
  cr_assert(hg && hw && table);
  CK(cudaMalloc((void **)&dg, (size_t)bytes));
  CK(cudaMalloc((void **)&dw, (size_t)packed * 4));
  for (int s = 0; s < NS; s++)
    nblocks += fo_pack_cut(dg + byte_at[s], 2, counts[s], packed_at[s], table + nblocks);
  cr_assert_leq(nblocks, 16);
  CK(cudaMalloc((void **)&dt, sizeof *table * (size_t)nblocks));
  CK(cudaMemcpy(dt, table, sizeof *table * (size_t)nblocks, cudaMemcpyHostToDevice));
  tu_rng rng;
  tu_rng_seed(&rng, 77, 3);
  memset(hg, 0xA5, (size_t)bytes);
  float *v = malloc(40000 * sizeof *v), *w = malloc(40000 * sizeof *w);
  cr_assert(v && w);
  for (int s = 0; s < NS; s++) {
    for (int64_t e = 0; e < counts[s]; e++) v[e] = (float)tu_rng_nonzero(&rng, -3.0, 3.0);
    OK(fo_convert_from_f32(FO_DTYPE_BF16, v, hg + byte_at[s], counts[s]));
  }
  CK(cudaMemcpy(dg, hg, (size_t)bytes, cudaMemcpyHostToDevice));
  CK(cudaMemset(dw, 0xC3, (size_t)packed * 4));
  const fo_exec_ops *ops = fo_exec_cuda_ops();
  OK(ops->pack("test", 0, dt, nblocks, dw, FO_DTYPE_BF16, FO_DTYPE_F32, 0, NULL));
  CK(cudaDeviceSynchronize());
  CK(cudaMemcpy(hw, dw, (size_t)packed * 4, cudaMemcpyDeviceToHost));
  int64_t next = 0;
  for (int s = 0; s < NS; s++) {
    for (int64_t e = next * 4; e < packed_at[s] * 4; e++) cr_assert_eq(hw[e], 0xC3);
    OK(fo_convert_to_f32(FO_DTYPE_BF16, hg + byte_at[s], v, counts[s]));
    cr_assert(memcmp(hw + packed_at[s] * 4, v, (size_t)counts[s] * 4) == 0, "segment %d packed", s);
    next = packed_at[s] + counts[s];
  }
  /* unpack fresh sums: fp32 values that need rounding */
  unsigned char *want = malloc((size_t)bytes);
  cr_assert(want);
  memcpy(want, hg, (size_t)bytes);
  for (int s = 0; s < NS; s++) {
    for (int64_t e = 0; e < counts[s]; e++) w[e] = (float)tu_rng_nonzero(&rng, -3.0, 3.0);
    memcpy(hw + packed_at[s] * 4, w, (size_t)counts[s] * 4);
    OK(fo_convert_from_f32(FO_DTYPE_BF16, w, want + byte_at[s], counts[s]));
  }
  CK(cudaMemcpy(dw, hw, (size_t)packed * 4, cudaMemcpyHostToDevice));
  for (int s = 0; s < NS; s++) CK(cudaMemset(dg + byte_at[s], 0xC3, (size_t)counts[s] * 2));
  OK(ops->pack("test", 0, dt, nblocks, dw, FO_DTYPE_BF16, FO_DTYPE_F32, 1, NULL));
  CK(cudaDeviceSynchronize());
  CK(cudaMemcpy(hg, dg, (size_t)bytes, cudaMemcpyDeviceToHost));
  cr_assert(memcmp(hg, want, (size_t)bytes) == 0, "unpacked gradients or guards differ");
  CK(cudaFree(dg));
  CK(cudaFree(dw));
  CK(cudaFree(dt));
  free(hg);
  free(hw);
  free(want);
  free(table);
  free(v);
  free(w);
}

Test(gpu_comm, one_rank_bf16_reduced_in_f32, .timeout = 120) {
  require_devices(1);
  gc_config c = {FO_STORAGE_EXTERNAL, FO_DTYPE_BF16, FO_DTYPE_BF16, 5, 4096, 1, 0, 0};
  one_rank_case(&c, 1);
  gc_config a = {FO_STORAGE_ARENA, FO_DTYPE_F32, FO_DTYPE_F16, 0, 0, 1, 0, 0};
  one_rank_case(&a, 0);
}

/* A sharded state over one rank: reduce-scatter (grouped ncclReduce), the
 * norm's all-gather and the parameters' (grouped ncclBroadcast) run, and
 * the result stays bit-identical.  LAMB and LARS add the per-tensor norms'
 * sums; the shard's plan leaves the empty tensor out, so a trust factor
 * looked up by the optimizer's tensor index instead of the plan's would
 * land on the next tensor. */
Test(gpu_comm, one_rank_sharded_state, .timeout = 120) {
  require_devices(1);
  gc_config c = {FO_STORAGE_ARENA, FO_DTYPE_BF16, FO_DTYPE_BF16, 0, 8192, 0, 1, 0};
  one_rank_case(&c, 1);
  gc_config f = {FO_STORAGE_ARENA, FO_DTYPE_F16, FO_DTYPE_F16, 0, 0, 1, 1, 0};
  one_rank_case(&f, 0);
  gc_config lamb = {FO_STORAGE_ARENA, FO_DTYPE_BF16, FO_DTYPE_BF16, 0, 8192, 0, 1, FO_ALG_LAMB};
  one_rank_case(&lamb, 0);
  gc_config lars = {FO_STORAGE_ARENA, FO_DTYPE_F32, FO_DTYPE_F32, 0, 0, 0, 1, FO_ALG_LARS};
  one_rank_case(&lars, 1);
}

/* A step captured with its all-reduce replays like eager steps. */
static void graph_capture_case(const gc_config *c) {
  gc_rig dp, ref;
  fo_comm *comm = gc_pair_make(&dp, &ref, c);
  cudaStream_t s;
  CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  OK(fo_optimizer_step(dp.opt, (fo_stream_t)s));
  CK(cudaStreamEndCapture(s, &graph));
  CK(cudaGraphInstantiate(&exec, graph, 0));
  for (int k = 0; k < 5; k++) {
    if (k == 3) continue; /* rig_grads' overflow step: covered above */
    gc_grads(&dp, k, 0);
    gc_grads(&ref, k, 0);
    CK(cudaGraphLaunch(exec, s));
    OK(fo_optimizer_step(ref.opt, (fo_stream_t)s));
    CK(cudaStreamSynchronize(s));
    gc_expect_same(&dp, &ref, "graph replay");
  }
  CK(cudaGraphExecDestroy(exec));
  CK(cudaGraphDestroy(graph));
  CK(cudaStreamDestroy(s));
  gc_pair_free(&dp, &ref, comm);
}

/* The arena's in-place all-reduce, and scattered bf16 gradients packed,
 * widened to fp32, summed and unpacked: the pack table is in device memory
 * since attach, so the captured kernels replay alike.  A sharded state's
 * step (reduce-scatter, the norm's agreement, the parameters' all-gather)
 * is captured whole too. */
Test(gpu_comm, one_rank_graph_capture, .timeout = 120) {
  require_devices(1);
  gc_config c = {FO_STORAGE_ARENA, FO_DTYPE_F32, FO_DTYPE_F32, 0, 0, 0, 0, 0};
  graph_capture_case(&c);
  gc_config x = {FO_STORAGE_EXTERNAL, FO_DTYPE_BF16, FO_DTYPE_BF16, 5, 8192, 1, 0, 0};
  graph_capture_case(&x);
  gc_config z = {FO_STORAGE_ARENA, FO_DTYPE_BF16, FO_DTYPE_BF16, 0, 8192, 1, 1, 0};
  graph_capture_case(&z);
}

/* Half the buckets reduced on a side stream forked from the step's (and
 * joined back), the rest by the step.  Across a capture's boundary CUDA
 * allows no wait for an event (nor does the emulated device), so the
 * scratch buffer's wait for its last user on another stream must not cross
 * one, either way. */
static void fork_reduce_step(gc_rig *r, int64_t nb, cudaStream_t step, cudaStream_t side,
                             cudaEvent_t fork, cudaEvent_t join) {
  CK(cudaEventRecord(fork, step));
  CK(cudaStreamWaitEvent(side, fork, 0));
  for (int64_t b = nb - 1; b >= nb / 2; b--)
    OK(fo_optimizer_reduce_bucket(r->opt, b, (fo_stream_t)side));
  CK(cudaEventRecord(join, side));
  CK(cudaStreamWaitEvent(step, join, 0));
  OK(fo_optimizer_step(r->opt, (fo_stream_t)step));
}

/* Two eager steps, the third captured and replayed (k == 3: rig_grads'
 * overflow, covered above), then eager steps again: all like a plain
 * optimizer stepping eagerly. */
static void side_stream_capture_case(const gc_config *c) {
  gc_rig dp, ref;
  fo_comm *comm = gc_pair_make(&dp, &ref, c);
  int64_t nb = 0;
  OK(fo_optimizer_num_buckets(dp.opt, &nb));
  cr_assert_gt(nb, 1);
  cudaStream_t step, side;
  CK(cudaStreamCreateWithFlags(&step, cudaStreamNonBlocking));
  CK(cudaStreamCreateWithFlags(&side, cudaStreamNonBlocking));
  cudaEvent_t fork, join;
  CK(cudaEventCreateWithFlags(&fork, cudaEventDisableTiming));
  CK(cudaEventCreateWithFlags(&join, cudaEventDisableTiming));
  cudaGraph_t graph = NULL;
  cudaGraphExec_t exec = NULL;
  for (int k = 0; k < 8; k++) {
    if (k == 3) continue;
    gc_grads(&dp, k, 0);
    gc_grads(&ref, k, 0);
    if (k == 2) {
      CK(cudaStreamBeginCapture(step, cudaStreamCaptureModeThreadLocal));
      fork_reduce_step(&dp, nb, step, side, fork, join);
      CK(cudaStreamEndCapture(step, &graph));
      CK(cudaGraphInstantiate(&exec, graph, 0));
    }
    if (k == 2 || k == 4 || k == 5)
      CK(cudaGraphLaunch(exec, step));
    else
      fork_reduce_step(&dp, nb, step, side, fork, join);
    OK(fo_optimizer_step(ref.opt, (fo_stream_t)step));
    CK(cudaStreamSynchronize(step));
    gc_expect_same(&dp, &ref,
                   k < 2   ? "eager before the capture"
                   : k < 6 ? "graph replay"
                           : "eager after the replays");
  }
  CK(cudaGraphExecDestroy(exec));
  CK(cudaGraphDestroy(graph));
  CK(cudaEventDestroy(fork));
  CK(cudaEventDestroy(join));
  CK(cudaStreamDestroy(step));
  CK(cudaStreamDestroy(side));
  gc_pair_free(&dp, &ref, comm);
}

Test(gpu_comm, one_rank_side_stream_buckets_eager_then_captured, .timeout = 120) {
  require_devices(1);
  gc_config x = {FO_STORAGE_EXTERNAL, FO_DTYPE_BF16, FO_DTYPE_BF16, 5, 8192, 1, 0, 0};
  side_stream_capture_case(&x);
  gc_config a = {FO_STORAGE_ARENA, FO_DTYPE_F32, FO_DTYPE_F32, 0, 8192, 0, 0, 0};
  side_stream_capture_case(&a);
  gc_config z = {FO_STORAGE_ARENA, FO_DTYPE_BF16, FO_DTYPE_BF16, 0, 8192, 1, 1, 0}; /* sharded */
  side_stream_capture_case(&z);
}

/* A bucket reduced eagerly, then the rest and the step captured: the graph
 * would replay the step without that reduction.  Each call refused before
 * it enqueues anything, the capture left intact; an eager step then
 * reduces the rest. */
Test(gpu_comm, a_bucket_reduced_outside_the_steps_capture_is_refused, .timeout = 120) {
  require_devices(1);
  gc_config c = {FO_STORAGE_EXTERNAL, FO_DTYPE_BF16, FO_DTYPE_BF16, 5, 8192, 1, 0, 0};
  gc_rig dp, ref;
  fo_comm *comm = gc_pair_make(&dp, &ref, &c);
  cudaStream_t s;
  CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  gc_grads(&dp, 0, 0);
  gc_grads(&ref, 0, 0);
  OK(fo_optimizer_reduce_bucket(dp.opt, 0, (fo_stream_t)s));
  CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  cr_assert_eq(fo_optimizer_reduce_bucket(dp.opt, 1, (fo_stream_t)s), FO_ERR_INVALID_STATE);
  cr_assert_eq(fo_optimizer_reduce_grads(dp.opt, (fo_stream_t)s), FO_ERR_INVALID_STATE);
  cr_assert_eq(fo_optimizer_step(dp.opt, (fo_stream_t)s), FO_ERR_INVALID_STATE);
  cr_assert(strstr(fo_last_error(), "the bucket reduced eagerly, the stream capturing"), "%s",
            fo_last_error());
  cudaGraph_t graph;
  CK(cudaStreamEndCapture(s, &graph)); /* not invalidated */
  size_t nodes = 1;
  CK(cudaGraphGetNodes(graph, NULL, &nodes));
  cr_assert_eq(nodes, 0, "the refused step captured %zu operations", nodes);
  CK(cudaGraphDestroy(graph));
  gc_expect_same(&dp, &ref, "after the refusal");
  OK(fo_optimizer_step(dp.opt, (fo_stream_t)s));
  OK(fo_optimizer_step(ref.opt, (fo_stream_t)s));
  gc_expect_same(&dp, &ref, "the eager step after the refusal");
  CK(cudaStreamDestroy(s));
  gc_pair_free(&dp, &ref, comm);
}

Test(gpu_comm, wrap_and_kinds, .timeout = 60) {
  require_devices(1);
  int dev0 = 0;
  ncclComm_t nccl;
  NC(ncclCommInitAll(&nccl, 1, &dev0));
  fo_comm *c = NULL;
  OK(fo_comm_wrap_nccl(&c, nccl));
  fo_comm_kind kind;
  OK(fo_comm_get_kind(c, &kind));
  cr_expect_eq(kind, FO_COMM_NCCL);
  /* a CPU optimizer cannot use NCCL */
  float p[4] = {0}, g[4] = {0};
  fo_options o;
  fo_hparams h;
  OK(fo_options_default(&o));
  OK(fo_hparams_default(o.algorithm, &h));
  fo_tensor_desc t = {4, 0, p, g, NULL};
  fo_optimizer *cpu = NULL;
  OK(fo_optimizer_create(&cpu, &o, &h, 1, &t, 1));
  cr_expect_eq(fo_optimizer_set_comm(cpu, c, NULL), FO_ERR_UNSUPPORTED, "%s", fo_last_error());
  OK(fo_optimizer_destroy(cpu));
  /* the caller's own sum, on the device */
  float *d, host[3] = {1.0f, 2.0f, 3.0f};
  CK(cudaMalloc((void **)&d, sizeof host));
  CK(cudaMemcpy(d, host, sizeof host, cudaMemcpyHostToDevice));
  OK(fo_comm_allreduce_sum(c, d, 3, FO_DTYPE_F32, NULL));
  CK(cudaMemcpy(host, d, sizeof host, cudaMemcpyDeviceToHost));
  cr_expect(host[0] == 1.0f && host[1] == 2.0f && host[2] == 3.0f);
  CK(cudaFree(d));
  OK(fo_comm_destroy(c)); /* leaves the caller's NCCL communicator alone */
  NC(ncclCommDestroy(nccl));
}

/* ------------------------------------------ non-blocking and failed NCCL */

/* NCCL_COMM_BLOCKING=0 makes every communicator non-blocking: init and
 * each collective may answer ncclInProgress, and nothing else may be asked
 * of the communicator until ncclCommGetAsyncError says the call is done.
 * The library waits for that, so the steps are the blocking ones'.  (Set
 * in this test's own process, before it first loads NCCL.) */
Test(gpu_comm, one_rank_non_blocking_communicator, .timeout = 120) {
  require_devices(1);
  cr_assert_eq(setenv("NCCL_COMM_BLOCKING", "0", 1), 0);
  gc_config in_place = {FO_STORAGE_ARENA, FO_DTYPE_F32, FO_DTYPE_F32, 0, 8192, 0, 0, 0};
  one_rank_case(&in_place, 1);
  gc_config packed = {FO_STORAGE_EXTERNAL, FO_DTYPE_BF16, FO_DTYPE_BF16, 3, 0, 0, 0, 0};
  one_rank_case(&packed, 0);
  gc_config sharded = {FO_STORAGE_ARENA, FO_DTYPE_BF16, FO_DTYPE_BF16, 0, 8192, 0, 1, 0};
  one_rank_case(&sharded, 0); /* grouped ncclReduce / ncclBroadcast */
}

/* A caller's non-blocking communicator, wrapped while it may still be
 * initialising. */
Test(gpu_comm, wrap_a_non_blocking_communicator, .timeout = 60) {
  require_devices(1);
  ncclUniqueId id;
  NC(ncclGetUniqueId(&id));
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclComm_t nccl = NULL;
  CK(cudaSetDevice(0));
  ncclResult_t r = ncclCommInitRankConfig(&nccl, 1, id, 0, &config);
  cr_assert(r == ncclSuccess || r == ncclInProgress, "ncclCommInitRankConfig: %s",
            ncclGetErrorString(r));
  fo_comm *c = NULL;
  OK(fo_comm_wrap_nccl(&c, nccl));
  int rank = -1, size = -1;
  OK(fo_comm_get_rank(c, &rank, &size));
  cr_assert(rank == 0 && size == 1, "rank %d of %d", rank, size);
  float *d, host[3] = {1.5f, -2.0f, 3.25f};
  CK(cudaMalloc((void **)&d, sizeof host));
  CK(cudaMemcpy(d, host, sizeof host, cudaMemcpyHostToDevice));
  OK(fo_comm_allreduce_sum(c, d, 3, FO_DTYPE_F32, NULL));
  OK(fo_comm_allreduce_sum(c, d, 3, FO_DTYPE_F32, NULL)); /* after the first is done */
  float back[3];
  CK(cudaMemcpy(back, d, sizeof back, cudaMemcpyDeviceToHost));
  cr_assert(memcmp(back, host, sizeof host) == 0, "a sum over one rank changed the values");
  CK(cudaFree(d));
  OK(fo_comm_destroy(c));
  ncclResult_t state = ncclInProgress;
  while (state == ncclInProgress) NC(ncclCommGetAsyncError(nccl, &state));
  NC(state);
  r = ncclCommDestroy(nccl);
  cr_assert(r == ncclSuccess || r == ncclInProgress, "ncclCommDestroy: %s", ncclGetErrorString(r));
}

/* The emulated NCCL's count of ncclCommAbort calls (tests/emu/emu_nccl.cpp;
 * absent with a real NCCL). */
extern int fo_emu_nccl_aborts(void) __attribute__((weak));

/* After NCCL fails (kind "sync": the all-reduce returns an error; "async":
 * it is enqueued and the communicator then reports an asynchronous error)
 * the communicator cannot be used again: the step that sees the failure
 * and every later one are refused, after zero_grad too, and nothing is
 * stepped; fo_comm_destroy aborts it.  Only the emulated NCCL can fail on
 * request (FO_EMU_NCCL_FAIL). */
static void failed_collective_case(const char *kind) {
  if (!getenv("FO_GPU_TEST_EMULATED") || !fo_emu_nccl_aborts)
    cr_skip_test("making NCCL fail needs the emulated NCCL (emu_test_gpu_comm)");
  const int async = strcmp(kind, "async") == 0;
  cr_assert_eq(setenv("FO_EMU_NCCL_FAIL", async ? "1:async" : "1:sync", 1), 0);
  gc_config c = {FO_STORAGE_ARENA, FO_DTYPE_F32, FO_DTYPE_F32, 0, 0, 0, 0, 0};
  gc_rig dp, ref;
  fo_comm *comm = gc_pair_make(&dp, &ref, &c);
  int k = 0;
  if (async) { /* the failing all-reduce itself returns success */
    gc_grads(&dp, k, 0);
    gc_grads(&ref, k, 0);
    OK(fo_optimizer_step(dp.opt, NULL));
    OK(fo_optimizer_step(ref.opt, NULL));
    k++;
  }
  gc_grads(&dp, k, 0);
  fo_status st = fo_optimizer_step(dp.opt, NULL);
  cr_assert_eq(st, FO_ERR_COMM, "%s: %s", fo_status_string(st), fo_last_error());
  cr_assert(strstr(fo_last_error(), "cannot be used again"), "%s", fo_last_error());
  for (int again = 0; again < 2; again++) {
    OK(fo_optimizer_zero_grad(dp.opt, NULL));
    gc_grads(&dp, k + 1 + again, 0);
    st = fo_optimizer_step(dp.opt, NULL);
    cr_assert_eq(st, FO_ERR_COMM, "retry %d: %s", again, fo_status_string(st));
    cr_assert(strstr(fo_last_error(), "failed earlier"), "%s", fo_last_error());
  }
  gc_expect_same(&dp, &ref, "the steps refused after NCCL failed");
  const int aborts = fo_emu_nccl_aborts();
  gc_pair_free(&dp, &ref, comm);
  cr_assert_eq(fo_emu_nccl_aborts(), aborts + 1, "fo_comm_destroy did not abort the communicator");
}

Test(gpu_comm, a_failed_all_reduce_breaks_the_communicator, .timeout = 60) {
  require_devices(1);
  failed_collective_case("sync");
}

Test(gpu_comm, an_asynchronous_nccl_error_breaks_the_communicator, .timeout = 60) {
  require_devices(1);
  failed_collective_case("async");
}
