/*
 * test_gpu_comm_ranks.c -- the GPU tier of the NCCL path over several
 * ranks: one rank per GPU, all driven by this one thread (ncclCommInitAll,
 * every rank's reduction in one NCCL group, then the steps).  Needs two
 * GPUs: a lent one-GPU machine skips it (with the reason); the emulated
 * machine of two devices (tests/emu) runs it in CI.  After every step the
 * ranks hold the same parameters, and they are those of one optimizer
 * stepped with the ranks' mean gradients.  One thread driving several GPUs
 * can use only the arena summed in place (docs/data-parallel.md,
 * "Limits"); the sums over processes are the MPI tier's (tests/mpi).
 */
#include <criterion/criterion.h>
#include <cuda_runtime_api.h>
#include <math.h>
#include <nccl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fusedopt.h"
#include "gpu_comm_rig.h"
#include "gpu_harness.h"
#include "testutil.h"

#define NC(call)                                                            \
  do {                                                                      \
    ncclResult_t r_ = (call);                                               \
    cr_assert_eq(r_, ncclSuccess, "%s: %s", #call, ncclGetErrorString(r_)); \
  } while (0)

#define MAX_GPUS 8

/* dp's parameters within 2 units in the last place of ref's (in the
 * parameter dtype): the all-reduce's sums and the step's mean come out as
 * the mean computed on the host, up to the order of the norm's sums. */
static void expect_close_params(const gc_rig *dp, const gc_rig *ref, int step) {
  size_t bytes, es = fo_dtype_size(dp->pd), n;
  unsigned char *a = gc_params(dp, &bytes), *b = gc_params(ref, &n);
  cr_assert_eq(bytes, n);
  n = bytes / es;
  float *fa = malloc(n * sizeof(float) + 1), *fb = malloc(n * sizeof(float) + 1);
  cr_assert(fa && fb);
  OK(fo_convert_to_f32(dp->pd, a, fa, (int64_t)n));
  OK(fo_convert_to_f32(dp->pd, b, fb, (int64_t)n));
  const double ulp = dp->pd == FO_DTYPE_F32 ? 0x1p-23 : dp->pd == FO_DTYPE_BF16 ? 0x1p-7 : 0x1p-10;
  for (size_t i = 0; i < n; i++)
    cr_assert(fabs((double)fa[i] - fb[i]) <= 2 * ulp * fabs((double)fb[i]) + 1e-30,
              "step %d: parameter %zu is %.9g on rank 0, %.9g as the mean's step", step, i,
              (double)fa[i], (double)fb[i]);
  free(a);
  free(b);
  free(fa);
  free(fb);
}

/* Ranks on devices 0 .. n-1 driven by one thread: every rank's reduction
 * in one NCCL group, as NCCL requires of a thread that drives several
 * devices, then the steps.  Five steps (the fourth overflows on every
 * rank); after each, every rank holds the same parameters, and rank 0's
 * are those of one optimizer stepped with the ranks' mean gradients. */
static void one_rank_per_gpu_case(const gc_config *c, int n) {
  int devs[MAX_GPUS];
  for (int i = 0; i < n; i++) devs[i] = i;
  ncclComm_t nccl[MAX_GPUS];
  NC(ncclCommInitAll(nccl, n, devs));
  gc_rig r[MAX_GPUS];
  fo_comm *comm[MAX_GPUS];
  cudaStream_t s[MAX_GPUS];
  const fo_dp_options o = gc_dp_options(c);
  gc_rig ref; /* one rank, no communicator, the ranks' mean gradients */
  gc_config alone = *c;
  alone.shard_state = 0;
  gc_make(&ref, &alone, 0);
  for (int i = 0; i < n; i++) {
    gc_make(&r[i], c, i);
    OK(fo_comm_wrap_nccl(&comm[i], nccl[i]));
    OK(fo_optimizer_set_comm(r[i].opt, comm[i], &o));
    CK(cudaSetDevice(i));
    CK(cudaStreamCreateWithFlags(&s[i], cudaStreamNonBlocking));
  }
  for (int k = 0; k < 5; k++) {
    for (int i = 0; i < n; i++) gc_grads(&r[i], k, i);
    NC(ncclGroupStart());
    for (int i = 0; i < n; i++) OK(fo_optimizer_reduce_grads(r[i].opt, (fo_stream_t)s[i]));
    NC(ncclGroupEnd());
    for (int i = 0; i < n; i++) OK(fo_optimizer_step(r[i].opt, (fo_stream_t)s[i]));
    gc_grads_mean(&ref, k, n);
    OK(fo_optimizer_step(ref.opt, NULL));
    size_t b0, bi;
    unsigned char *p0 = gc_params(&r[0], &b0);
    for (int i = 1; i < n; i++) {
      unsigned char *pi = gc_params(&r[i], &bi);
      cr_assert(b0 == bi && memcmp(p0, pi, b0) == 0, "step %d: rank %d differs from rank 0", k, i);
      free(pi);
    }
    free(p0);
    expect_close_params(&r[0], &ref, k);
  }
  gc_free(&ref);
  for (int i = 0; i < n; i++) {
    CK(cudaSetDevice(i));
    CK(cudaStreamDestroy(s[i]));
    gc_free(&r[i]);
    OK(fo_comm_destroy(comm[i]));
    NC(ncclCommDestroy(nccl[i]));
  }
}

Test(gpu_comm, one_rank_per_gpu, .timeout = 300) {
  int n = require_devices(2);
  if (n > MAX_GPUS) n = MAX_GPUS;
  /* the arena, summed in place: what one thread driving several GPUs can
   * use (docs/data-parallel.md, "Limits") */
  const gc_config c[] = {
      {FO_STORAGE_ARENA, FO_DTYPE_F32, FO_DTYPE_F32, 0, 16384, 0, 0, 0},
      {FO_STORAGE_ARENA, FO_DTYPE_BF16, FO_DTYPE_BF16, 0, 8192, 0, 0, 0},
  };
  for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) one_rank_per_gpu_case(&c[i], n);
}
