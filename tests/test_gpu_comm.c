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
 * outside its capture).  With two or more GPUs, one rank per
 * GPU from this one thread (ncclCommInitAll, the reductions in one NCCL
 * group): the ranks end bit-identical.  The sums themselves, the agreement
 * on overflow and the comparison with one process on the whole batch are
 * the MPI tier's (tests/mpi, CPU); multi-process NCCL runs bootstrap
 * through MPI (fusedopt_mpi.h).
 */
#include <criterion/criterion.h>
#include <cuda_runtime_api.h>
#include <math.h>
#include <nccl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "exec.h"
#include "fusedopt.h"
#include "gpu_harness.h"
#include "testutil.h"

#define NC(call)                                                            \
  do {                                                                      \
    ncclResult_t r_ = (call);                                               \
    cr_assert_eq(r_, ncclSuccess, "%s: %s", #call, ncclGetErrorString(r_)); \
  } while (0)

/* --------------------------------------------------------------- the rig */

#define NT 6
static const int64_t SIZES[NT] = {1000, 3, 0, 70001, 128, 4097};
#define NMAX 70001

typedef struct rig {
  fo_optimizer *opt;
  void *pbuf, *gbuf; /* external storage: one device buffer per role */
  fo_dtype pd, gd;
  int device;
} rig;

typedef struct config {
  fo_storage storage;
  fo_dtype pd, gd;
  int64_t gap;
  size_t bucket_bytes;
  int reduce_in_f32;
  int shard_state; /* ZeRO-1 over one rank: the shard is the whole arena */
} config;

static void rig_make(rig *r, const config *c, int device) {
  memset(r, 0, sizeof *r);
  r->pd = c->pd;
  r->gd = c->gd;
  r->device = device;
  CK(cudaSetDevice(device));
  fo_options o;
  OK(fo_options_default(&o));
  o.executor = FO_EXEC_CUDA;
  o.device = device;
  o.storage = c->storage;
  o.param_dtype = c->pd;
  o.grad_dtype = c->gd;
  o.max_grad_norm = 0.5f;
  o.loss_scaler.enabled = 1;
  o.loss_scaler.init_scale = 1024.0f;
  fo_hparams h[2];
  OK(fo_hparams_default(FO_ALG_ADAMW, &h[0]));
  h[0].lr = 0.0137f;
  h[1] = h[0];
  h[1].weight_decay = 0.0f;
  int64_t total = 0, off = 0;
  for (int i = 0; i < NT; i++) total += SIZES[i] + c->gap;
  int ext = c->storage == FO_STORAGE_EXTERNAL;
  if (ext) {
    CK(cudaMalloc(&r->pbuf, (size_t)total * 4));
    CK(cudaMalloc(&r->gbuf, (size_t)total * 4));
  }
  fo_tensor_desc t[NT];
  for (int i = 0; i < NT; i++) {
    t[i] = (fo_tensor_desc){
        SIZES[i], i % 2, ext ? (char *)r->pbuf + (size_t)off * fo_dtype_size(c->pd) : NULL,
        ext ? (char *)r->gbuf + (size_t)off * fo_dtype_size(c->gd) : NULL, NULL};
    off += SIZES[i] + c->gap;
  }
  OK(fo_optimizer_create(&r->opt, &o, h, 2, t, NT));
  float *v = malloc(NMAX * sizeof(float));
  uint16_t *h16 = malloc(NMAX * sizeof(float));
  cr_assert(v && h16);
  tu_rng rng;
  tu_rng_seed(&rng, 3, 1);
  for (int i = 0; i < NT; i++) {
    void *p;
    OK(fo_optimizer_param_ptr(r->opt, i, &p));
    for (int64_t e = 0; e < SIZES[i]; e++) v[e] = (float)tu_rng_range(&rng, -1.0, 1.0);
    OK(fo_convert_from_f32(c->pd, v, h16, SIZES[i]));
    if (SIZES[i])
      CK(cudaMemcpy(p, h16, (size_t)SIZES[i] * fo_dtype_size(c->pd), cudaMemcpyHostToDevice));
  }
  OK(fo_optimizer_sync_master(r->opt, NULL));
  CK(cudaDeviceSynchronize());
  free(v);
  free(h16);
}

static void rig_free(rig *r) {
  OK(fo_optimizer_destroy(r->opt));
  if (r->pbuf) CK(cudaFree(r->pbuf));
  if (r->gbuf) CK(cudaFree(r->gbuf));
}

/* The scaled gradients of step k for rank, written with a blocking copy. */
static void rig_grads(rig *r, int k, int rank) {
  CK(cudaSetDevice(r->device));
  fo_step_info info;
  OK(fo_optimizer_get_info(r->opt, &info)); /* synchronizes */
  float *v = malloc(NMAX * sizeof(float));
  uint16_t *h16 = malloc(NMAX * sizeof(float));
  cr_assert(v && h16);
  tu_rng rng;
  tu_rng_seed(&rng, 1000 + (uint64_t)k, 2 + (uint64_t)rank);
  for (int i = 0; i < NT; i++) {
    void *g;
    OK(fo_optimizer_grad_ptr(r->opt, i, &g));
    for (int64_t e = 0; e < SIZES[i]; e++)
      v[e] = info.loss_scale * (float)tu_rng_range(&rng, -0.02, 0.02);
    if (k == 3 && i == 3) v[5] = INFINITY; /* an overflow step */
    OK(fo_convert_from_f32(r->gd, v, h16, SIZES[i]));
    if (SIZES[i])
      CK(cudaMemcpy(g, h16, (size_t)SIZES[i] * fo_dtype_size(r->gd), cudaMemcpyHostToDevice));
  }
  CK(cudaDeviceSynchronize()); /* a pageable copy may still be in flight */
  free(v);
  free(h16);
}

/* The parameters of every tensor, on the host, in the parameter dtype. */
static unsigned char *rig_params(const rig *r, size_t *bytes) {
  size_t total = 0, es = fo_dtype_size(r->pd);
  for (int i = 0; i < NT; i++) total += (size_t)SIZES[i] * es;
  unsigned char *h = malloc(total + 1), *at = h;
  cr_assert(h);
  CK(cudaSetDevice(r->device));
  CK(cudaDeviceSynchronize());
  for (int i = 0; i < NT; i++) {
    void *p;
    OK(fo_optimizer_param_ptr(r->opt, i, &p));
    if (SIZES[i]) CK(cudaMemcpy(at, p, (size_t)SIZES[i] * es, cudaMemcpyDeviceToHost));
    at += (size_t)SIZES[i] * es;
  }
  *bytes = total;
  return h;
}

static void expect_same_params(const rig *a, const rig *b, const char *what) {
  size_t na, nb;
  unsigned char *pa = rig_params(a, &na), *pb = rig_params(b, &nb);
  cr_assert_eq(na, nb);
  cr_assert(memcmp(pa, pb, na) == 0, "%s: parameters differ", what);
  free(pa);
  free(pb);
}

static fo_comm *one_rank_comm(int device) {
  fo_nccl_id id;
  OK(fo_nccl_get_id(&id));
  fo_comm *c = NULL;
  OK(fo_comm_init_nccl(&c, &id, 0, 1, device));
  int rank = -1, size = -1;
  OK(fo_comm_get_rank(c, &rank, &size));
  cr_assert(rank == 0 && size == 1);
  return c;
}

/* The communicator options of config c. */
static fo_dp_options dp_options(const config *c) {
  fo_dp_options o;
  OK(fo_dp_options_default(&o));
  o.bucket_bytes = c->bucket_bytes;
  o.reduce_in_f32 = c->reduce_in_f32;
  o.shard_state = c->shard_state;
  return o;
}

/* Two rigs of config c, a one-rank communicator attached to dp; ref steps
 * without one. */
static fo_comm *pair_make(rig *dp, rig *ref, const config *c) {
  rig_make(dp, c, 0);
  rig_make(ref, c, 0);
  fo_comm *comm = one_rank_comm(0);
  const fo_dp_options o = dp_options(c);
  OK(fo_optimizer_set_comm(dp->opt, comm, &o));
  return comm;
}

static void pair_free(rig *dp, rig *ref, fo_comm *comm) {
  rig_free(dp);
  OK(fo_comm_destroy(comm));
  rig_free(ref);
}

/* K steps with and without a one-rank communicator: bit-identical.
 * side_stream: buckets reduced on another stream, last first. */
static void one_rank_case(const config *c, int side_stream) {
  rig dp, ref;
  rig_make(&dp, c, 0);
  rig_make(&ref, c, 0);
  fo_comm *comm = one_rank_comm(0);
  const fo_dp_options o = dp_options(c);
  cudaStream_t step_stream, comm_stream;
  CK(cudaStreamCreateWithFlags(&step_stream, cudaStreamNonBlocking));
  CK(cudaStreamCreateWithFlags(&comm_stream, cudaStreamNonBlocking));
  int64_t nb = 0;
  for (int k = 0; k < 6; k++) {
    rig_grads(&dp, k, 0);
    rig_grads(&ref, k, 0);
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
    expect_same_params(&dp, &ref, "one rank");
  }
  CK(cudaStreamDestroy(step_stream));
  CK(cudaStreamDestroy(comm_stream));
  pair_free(&dp, &ref, comm);
}

Test(gpu_comm, one_rank_arena_in_place, .timeout = 120) {
  require_devices(1);
  config c = {FO_STORAGE_ARENA, FO_DTYPE_BF16, FO_DTYPE_BF16, 0, 0, 0, 0};
  one_rank_case(&c, 0);
}

Test(gpu_comm, one_rank_buckets_on_a_side_stream, .timeout = 120) {
  require_devices(1);
  config c = {FO_STORAGE_ARENA, FO_DTYPE_F32, FO_DTYPE_F32, 0, 8192, 0, 0};
  one_rank_case(&c, 1);
}

Test(gpu_comm, one_rank_scattered_external_packed, .timeout = 120) {
  require_devices(1);
  config c = {FO_STORAGE_EXTERNAL, FO_DTYPE_F16, FO_DTYPE_F16, 77, 0, 0, 0};
  one_rank_case(&c, 0);
  config b = {FO_STORAGE_EXTERNAL, FO_DTYPE_BF16, FO_DTYPE_BF16, 3, 8192, 0, 0};
  one_rank_case(&b, 1);
}

/* Scattered gradients (odd gaps, several buckets) reduced over one rank:
 * packed, summed, unpacked, they come back bit for bit (a sum over one
 * rank is the identity; bf16 -> fp32 -> bf16 is exact), and the poisoned
 * gaps between them stay as they were. */
Test(gpu_comm, one_rank_scattered_gradients_come_back, .timeout = 120) {
  require_devices(1);
  for (int f32 = 0; f32 < 2; f32++) {
    config c = {FO_STORAGE_EXTERNAL, FO_DTYPE_BF16, FO_DTYPE_BF16, 5, 8192, f32, 0};
    rig r;
    rig_make(&r, &c, 0);
    size_t total = 0;
    for (int i = 0; i < NT; i++) total += (size_t)(SIZES[i] + c.gap) * 2;
    CK(cudaMemset(r.gbuf, 0xC3, total));
    rig_grads(&r, 1, 0);
    unsigned char *before = malloc(total), *after = malloc(total);
    cr_assert(before && after);
    CK(cudaMemcpy(before, r.gbuf, total, cudaMemcpyDeviceToHost));
    fo_comm *comm = one_rank_comm(0);
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
    rig_free(&r);
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
  config c = {FO_STORAGE_EXTERNAL, FO_DTYPE_BF16, FO_DTYPE_BF16, 5, 4096, 1, 0};
  one_rank_case(&c, 1);
  config a = {FO_STORAGE_ARENA, FO_DTYPE_F32, FO_DTYPE_F16, 0, 0, 1, 0};
  one_rank_case(&a, 0);
}

/* A sharded state over one rank: reduce-scatter (grouped ncclReduce), the
 * norm's all-gather and the parameters' (grouped ncclBroadcast) run, and
 * the result stays bit-identical. */
Test(gpu_comm, one_rank_sharded_state, .timeout = 120) {
  require_devices(1);
  config c = {FO_STORAGE_ARENA, FO_DTYPE_BF16, FO_DTYPE_BF16, 0, 8192, 0, 1};
  one_rank_case(&c, 1);
  config f = {FO_STORAGE_ARENA, FO_DTYPE_F16, FO_DTYPE_F16, 0, 0, 1, 1};
  one_rank_case(&f, 0);
}

/* A step captured with its all-reduce replays like eager steps. */
static void graph_capture_case(const config *c) {
  rig dp, ref;
  fo_comm *comm = pair_make(&dp, &ref, c);
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
    rig_grads(&dp, k, 0);
    rig_grads(&ref, k, 0);
    CK(cudaGraphLaunch(exec, s));
    OK(fo_optimizer_step(ref.opt, (fo_stream_t)s));
    CK(cudaStreamSynchronize(s));
    expect_same_params(&dp, &ref, "graph replay");
  }
  CK(cudaGraphExecDestroy(exec));
  CK(cudaGraphDestroy(graph));
  CK(cudaStreamDestroy(s));
  pair_free(&dp, &ref, comm);
}

/* The arena's in-place all-reduce, and scattered bf16 gradients packed,
 * widened to fp32, summed and unpacked: the pack table is in device memory
 * since attach, so the captured kernels replay alike.  A sharded state's
 * step (reduce-scatter, the norm's agreement, the parameters' all-gather)
 * is captured whole too. */
Test(gpu_comm, one_rank_graph_capture, .timeout = 120) {
  require_devices(1);
  config c = {FO_STORAGE_ARENA, FO_DTYPE_F32, FO_DTYPE_F32, 0, 0, 0, 0};
  graph_capture_case(&c);
  config x = {FO_STORAGE_EXTERNAL, FO_DTYPE_BF16, FO_DTYPE_BF16, 5, 8192, 1, 0};
  graph_capture_case(&x);
  config z = {FO_STORAGE_ARENA, FO_DTYPE_BF16, FO_DTYPE_BF16, 0, 8192, 1, 1};
  graph_capture_case(&z);
}

/* Half the buckets reduced on a side stream forked from the step's (and
 * joined back), the rest by the step.  Across a capture's boundary CUDA
 * allows no wait for an event (nor does the emulated device), so the
 * scratch buffer's wait for its last user on another stream must not cross
 * one, either way. */
static void fork_reduce_step(rig *r, int64_t nb, cudaStream_t step, cudaStream_t side,
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
static void side_stream_capture_case(const config *c) {
  rig dp, ref;
  fo_comm *comm = pair_make(&dp, &ref, c);
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
    rig_grads(&dp, k, 0);
    rig_grads(&ref, k, 0);
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
    expect_same_params(&dp, &ref,
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
  pair_free(&dp, &ref, comm);
}

Test(gpu_comm, one_rank_side_stream_buckets_eager_then_captured, .timeout = 120) {
  require_devices(1);
  config x = {FO_STORAGE_EXTERNAL, FO_DTYPE_BF16, FO_DTYPE_BF16, 5, 8192, 1, 0};
  side_stream_capture_case(&x);
  config a = {FO_STORAGE_ARENA, FO_DTYPE_F32, FO_DTYPE_F32, 0, 8192, 0, 0};
  side_stream_capture_case(&a);
  config z = {FO_STORAGE_ARENA, FO_DTYPE_BF16, FO_DTYPE_BF16, 0, 8192, 1, 1}; /* sharded */
  side_stream_capture_case(&z);
}

/* A bucket reduced eagerly, then the rest and the step captured: the graph
 * would replay the step without that reduction.  Each call refused before
 * it enqueues anything, the capture left intact; an eager step then
 * reduces the rest. */
Test(gpu_comm, a_bucket_reduced_outside_the_steps_capture_is_refused, .timeout = 120) {
  require_devices(1);
  config c = {FO_STORAGE_EXTERNAL, FO_DTYPE_BF16, FO_DTYPE_BF16, 5, 8192, 1, 0};
  rig dp, ref;
  fo_comm *comm = pair_make(&dp, &ref, &c);
  cudaStream_t s;
  CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  rig_grads(&dp, 0, 0);
  rig_grads(&ref, 0, 0);
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
  expect_same_params(&dp, &ref, "after the refusal");
  OK(fo_optimizer_step(dp.opt, (fo_stream_t)s));
  OK(fo_optimizer_step(ref.opt, (fo_stream_t)s));
  expect_same_params(&dp, &ref, "the eager step after the refusal");
  CK(cudaStreamDestroy(s));
  pair_free(&dp, &ref, comm);
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

/* ------------------------------------------------- one rank per GPU */

#define MAX_GPUS 8

/* Ranks on devices 0 .. n-1 driven by one thread: every rank's
 * collectives of a reduction or a step are one NCCL group, as NCCL
 * requires of a thread that drives several devices.  Five steps (the
 * fourth overflows on every rank); after each, every rank holds the same
 * parameters. */
static void one_rank_per_gpu_case(const config *c, int n) {
  int devs[MAX_GPUS];
  for (int i = 0; i < n; i++) devs[i] = i;
  ncclComm_t nccl[MAX_GPUS];
  NC(ncclCommInitAll(nccl, n, devs));
  rig r[MAX_GPUS];
  fo_comm *comm[MAX_GPUS];
  cudaStream_t s[MAX_GPUS];
  const fo_dp_options o = dp_options(c);
  for (int i = 0; i < n; i++) {
    rig_make(&r[i], c, i);
    OK(fo_comm_wrap_nccl(&comm[i], nccl[i]));
    OK(fo_optimizer_set_comm(r[i].opt, comm[i], &o));
    CK(cudaSetDevice(i));
    CK(cudaStreamCreateWithFlags(&s[i], cudaStreamNonBlocking));
  }
  for (int k = 0; k < 5; k++) {
    for (int i = 0; i < n; i++) rig_grads(&r[i], k, i);
    NC(ncclGroupStart());
    for (int i = 0; i < n; i++) OK(fo_optimizer_reduce_grads(r[i].opt, (fo_stream_t)s[i]));
    NC(ncclGroupEnd());
    NC(ncclGroupStart()); /* a sharded step gathers the parameters */
    for (int i = 0; i < n; i++) OK(fo_optimizer_step(r[i].opt, (fo_stream_t)s[i]));
    NC(ncclGroupEnd());
    size_t b0, bi;
    unsigned char *p0 = rig_params(&r[0], &b0);
    for (int i = 1; i < n; i++) {
      unsigned char *pi = rig_params(&r[i], &bi);
      cr_assert(b0 == bi && memcmp(p0, pi, b0) == 0, "step %d: rank %d differs from rank 0", k, i);
      free(pi);
    }
    free(p0);
  }
  for (int i = 0; i < n; i++) {
    CK(cudaSetDevice(i));
    CK(cudaStreamDestroy(s[i]));
    rig_free(&r[i]);
    OK(fo_comm_destroy(comm[i]));
    NC(ncclCommDestroy(nccl[i]));
  }
}

Test(gpu_comm, one_rank_per_gpu, .timeout = 300) {
  int n = require_devices(2);
  if (n > MAX_GPUS) n = MAX_GPUS;
  const config c[] = {
      {FO_STORAGE_ARENA, FO_DTYPE_F32, FO_DTYPE_F32, 0, 16384, 0, 0},
      {FO_STORAGE_EXTERNAL, FO_DTYPE_BF16, FO_DTYPE_BF16, 5, 8192, 1, 0}, /* packed, f32 wire */
      {FO_STORAGE_ARENA, FO_DTYPE_BF16, FO_DTYPE_BF16, 0, 8192, 0, 1},    /* sharded state */
  };
  for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) one_rank_per_gpu_case(&c[i], n);
}
