/*
 * test_gpu_kernels_device.c -- the GPU tier: what the CUDA executor does
 * beyond the matrix of test_gpu_kernels_matrix.c, against the CPU executor
 * where there is a result to compare (tests/support/gpu/gpu_matrix.h):
 *
 *   - zero-grad and sync-master;
 *   - stochastic rounding: reproducible, seed-dependent;
 *   - a tensor past 2^31 elements (64-bit indexing on the device);
 *   - an error the caller left pending is neither blamed nor cleared;
 *   - Programmatic Dependent Launch exactly on sm_90 and newer;
 *   - a step on a non-blocking stream right after create sees everything
 *     create did on the legacy stream (zero-filled state, master weights);
 *   - pointers in the wrong memory, or buffers too short for their dtype:
 *     FO_ERR_BAD_POINTER.
 *
 * Every test first asks fo_cuda_device_count(); without a usable device it
 * is skipped with the reason (never passed without running).
 *
 * Set FO_GPU_TEST_STAND_IN=cpu to run the same harness with a second CPU
 * optimizer over host memory in place of the device (a check of the test
 * itself on a machine without a GPU; the device-only tests still skip).
 */
#include <criterion/criterion.h>
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fusedopt.h"
#include "gpu_harness.h"
#include "gpu_matrix.h"
#include "internal.h"
#include "launch.h"
#include "reference.h"
#include "testutil.h"

/* sync_master writes exactly widen(param) into every master; zero_grad
 * zeroes every gradient and nothing else (external tensors: the kernel;
 * arena: one memset). */
Test(gpu, sync_master_and_zero_grad) {
  dev d = dev_open(require_device(0));
  const fo_dtype dts[] = {FO_DTYPE_F16, FO_DTYPE_BF16};
  for (int i = 0; i < 2; i++)
    for (int storage = 0; storage < 2; storage++) {
      cfg c = {FO_ALG_ADAMW,
               0,
               dts[i],
               dts[1 - i],
               1,
               0,
               (fo_storage)storage,
               tu_hash(99, (uint64_t)(i * 2 + storage))};
      char ctx[160];
      cfg_name(&c, ctx, sizeof ctx);
      const int64_t large[] = {40000};
      world w;
      mx_world_make(&w, c.pt, c.gt, large, 1, c.seed);
      size_t ps = fo_dtype_size(w.pt), gs = fo_dtype_size(w.gt);
      unsigned char *dp = NULL, *dg = NULL;
      fo_optimizer *opt;
      if (c.storage == FO_STORAGE_EXTERNAL) {
        dp = dev_alloc(&d, w.pbytes);
        dg = dev_alloc(&d, w.gbytes);
        dev_poison(&d, dp, w.pbytes);
        dev_poison(&d, dg, w.gbytes);
        opt = gpu_make_opt(&c, &w, d.cuda, dp, dg, 0);
      } else {
        opt = gpu_make_opt(&c, &w, d.cuda, NULL, NULL, 0);
      }
      /* new parameters and gradients, then sync_master and zero_grad */
      unsigned char *p = init_params(&w, c.seed + 1);
      unsigned char *g = init_params(&w, c.seed + 2); /* pt-sized; reused as bytes */
      for (int64_t t = 0; t < w.nt; t++) {
        void *q;
        OK(fo_optimizer_param_ptr(opt, t, &q));
        dev_put(&d, q, p + (size_t)w.hoff[t] * ps, (size_t)w.numel[t] * ps);
        OK(fo_optimizer_grad_ptr(opt, t, &q));
        dev_put(&d, q, g + (size_t)w.hoff[t] * gs, (size_t)w.numel[t] * gs);
      }
      OK(fo_optimizer_sync_master(opt, dev_stream(&d)));
      OK(fo_optimizer_zero_grad(opt, dev_stream(&d)));
      result r;
      gather(&d, opt, &w, &r);
      float *want = malloc((size_t)w.total * 4 + 4);
      cr_assert_not_null(want);
      OK(fo_convert_to_f32(w.pt, p, want, w.total));
      cr_assert(memcmp(want, r.state[0], (size_t)w.total * 4) == 0, "%s: master != widen(param)",
                ctx);
      cr_assert(memcmp(p, r.param, (size_t)w.total * ps) == 0, "%s: sync_master changed a param",
                ctx);
      for (int64_t t = 0; t < w.nt; t++) {
        void *q;
        OK(fo_optimizer_grad_ptr(opt, t, &q));
        unsigned char *hb = calloc((size_t)w.numel[t] * gs + 1, 1);
        unsigned char *zero = calloc((size_t)w.numel[t] * gs + 1, 1);
        cr_assert(hb && zero);
        dev_get(&d, hb, q, (size_t)w.numel[t] * gs);
        cr_assert(memcmp(hb, zero, (size_t)w.numel[t] * gs) == 0, "%s: tensor %lld not zeroed", ctx,
                  (long long)t);
        free(hb);
        free(zero);
      }
      if (dp) {
        mx_check_gaps(&d, &w, dp, w.pbytes, w.poff, ps, "parameter", ctx);
        mx_check_gaps(&d, &w, dg, w.gbytes, w.goff, gs, "gradient", ctx);
      }
      OK(fo_optimizer_destroy(opt));
      if (dp) dev_free(&d, dp);
      if (dg) dev_free(&d, dg);
      result_free(&r);
      free(want);
      free(p);
      free(g);
      world_free(&w);
    }
  dev_close(&d);
}

/* Stochastic rounding on the device: the same seed gives the same bits
 * (covered by repeatable_and_graph_replay too), another seed other bits,
 * and the CPU and CUDA executors agree within the no-master tolerance
 * (the matrix). */
Test(gpu, stochastic_rounding_seeded) {
  dev d = dev_open(require_device(0));
  cfg c = {FO_ALG_ADAMW, 0, FO_DTYPE_BF16, FO_DTYPE_BF16, 0, 1, FO_STORAGE_EXTERNAL, 1234};
  char ctx[160];
  cfg_name(&c, ctx, sizeof ctx);
  const int64_t large[] = {1 << 18};
  world w;
  mx_world_make(&w, c.pt, c.gt, large, 1, 5);
  unsigned char *init = init_params(&w, 5);
  unsigned char **grads = alloc_grads(&w);
  result want, a, b, other;
  cpu_run(&c, &w, grads, init, &want);
  dev_run(&d, &c, &w, grads, init, EAGER, &a, ctx);
  dev_run(&d, &c, &w, grads, init, EAGER, &b, ctx);
  results_identical(&w, c.pt, &a, &b, "same seed", ctx);
  cfg c2 = c;
  c2.seed = 4321;
  dev_run(&d, &c2, &w, grads, init, EAGER, &other, ctx);
  int64_t differ = 0;
  for (int64_t e = 0; e < w.total; e++)
    differ += memcmp(a.param + 2 * e, other.param + 2 * e, 2) != 0;
  cr_assert_gt(differ, w.total / 100, "%s: another seed changed only %lld of %lld parameters", ctx,
               (long long)differ, (long long)w.total);
  compare(&c, &w, &want, &a, ctx);
  result_free(&want);
  result_free(&a);
  result_free(&b);
  result_free(&other);
  free_grads(grads);
  free(init);
  world_free(&w);
  dev_close(&d);
}

/* n random bf16 values (params: [1e-3, 1]; else gradients), converted in
 * slices so that no fp32 copy of the whole array is needed. */
static void fill_bf16(tu_rng *r, uint16_t *dst, int64_t n, int params) {
  enum { SLICE = 1 << 20 };
  float *f = malloc(SLICE * sizeof *f);
  cr_assert_not_null(f);
  for (int64_t at = 0; at < n; at += SLICE) {
    int64_t k = n - at < SLICE ? n - at : SLICE;
    for (int64_t i = 0; i < k; i++)
      f[i] = params ? (float)tu_rng_nonzero(r, 1e-3, 1.0) : mx_draw_grad(r);
    OK(fo_convert_from_f32(FO_DTYPE_BF16, f, dst + at, k));
  }
  free(f);
}

/* One tensor past 2^31 elements (bf16, SGD with momentum, no master: 17 GB
 * on the device), after a small one: the kernels' 64-bit element
 * arithmetic.  Two steps, compared with the CPU executor. */
Test(gpu, tensor_past_2_31_elements, .timeout = 600) {
  require_device(1);
  const int64_t big = ((int64_t)1 << 31) + 4099, small = 1000;
  size_t free_b = 0, total_b = 0;
  CK(cudaMemGetInfo(&free_b, &total_b));
  const size_t need = (size_t)(big + small) * (2 + 2 + 4) + ((size_t)1 << 28);
  if (free_b < need) cr_skip_test("needs %zu bytes of device memory, %zu free", need, free_b);
  const int64_t numel[2] = {small, big};
  const int64_t total = small + big;
  uint16_t *hp = malloc((size_t)total * 2), *hg = malloc((size_t)total * 2);
  uint16_t *back = malloc((size_t)total * 2);
  cr_assert(hp && hg && back, "needs ~13 GB of host memory");
  tu_rng r;
  tu_rng_seed(&r, 31, 31);
  fill_bf16(&r, hp, total, 1);
  /* the big tensor's elements past 2^31 (the buffer's last 4099), before
   * the steps */
  const int64_t tail = big - ((int64_t)1 << 31);
  uint16_t *tail0 = malloc((size_t)tail * 2);
  cr_assert_not_null(tail0);
  memcpy(tail0, hp + total - tail, (size_t)tail * 2);
  uint16_t *dp = NULL, *dg = NULL;
  CK(cudaMalloc((void **)&dp, (size_t)total * 2));
  CK(cudaMalloc((void **)&dg, (size_t)total * 2));
  CK(cudaMemcpy(dp, hp, (size_t)total * 2, cudaMemcpyHostToDevice));
  fo_hparams h;
  OK(fo_hparams_default(FO_ALG_SGD, &h));
  h.lr = 0.517f; /* large enough to move most bf16 values */
  h.momentum = 0.9f;
  fo_options o;
  OK(fo_options_default(&o));
  o.algorithm = FO_ALG_SGD;
  o.param_dtype = o.grad_dtype = FO_DTYPE_BF16;
  o.master_weights = 0;
  fo_tensor_desc tc[2], tg[2];
  for (int i = 0; i < 2; i++) {
    int64_t at = i ? small : 0;
    tc[i] = (fo_tensor_desc){numel[i], 0, hp + at, hg + at, NULL};
    tg[i] = (fo_tensor_desc){numel[i], 0, dp + at, dg + at, NULL};
  }
  fo_optimizer *cpu = NULL, *gpu = NULL;
  OK(fo_optimizer_create(&cpu, &o, &h, 1, tc, 2));
  o.executor = FO_EXEC_CUDA;
  OK(fo_optimizer_create(&gpu, &o, &h, 1, tg, 2));
  for (int s = 0; s < 2; s++) {
    fill_bf16(&r, hg, total, 0);
    CK(cudaMemcpy(dg, hg, (size_t)total * 2, cudaMemcpyHostToDevice));
    OK(fo_optimizer_step(gpu, NULL));
    OK(fo_optimizer_step(cpu, NULL));
  }
  CK(cudaMemcpy(back, dp, (size_t)total * 2, cudaMemcpyDeviceToHost));
  /* 1 bf16 ulp (the fp32 results differ by contraction; a flip at a
   * rounding boundary), at most 1 % of the elements differing at all, over
   * the whole buffer and over the elements past 2^31 alone (which the
   * whole buffer's 1 % would hide), and those updated like the rest */
  int64_t differ = 0, bad = 0, changed_tail = 0, differ_tail = 0;
  for (int64_t e = 0; e < total; e++) {
    if (back[e] == hp[e]) continue;
    differ++;
    differ_tail += e >= total - tail;
    double a = widen1(FO_DTYPE_BF16, back, e), b = widen1(FO_DTYPE_BF16, hp, e);
    if (fabs(a - b) > ref_ulp(FO_DTYPE_BF16, b)) bad++;
  }
  for (int64_t e = 0; e < tail; e++) changed_tail += back[total - tail + e] != tail0[e];
  cr_assert_eq(bad, 0, "%lld elements differ by more than 1 ulp", (long long)bad);
  cr_assert(differ <= total / 100, "%lld of %lld elements differ", (long long)differ,
            (long long)total);
  cr_assert(differ_tail <= tail / 100, "%lld of the %lld elements past 2^31 differ",
            (long long)differ_tail, (long long)tail);
  cr_assert_gt(changed_tail, tail / 2, "only %lld of the %lld elements past 2^31 were updated",
               (long long)changed_tail, (long long)tail);
  free(tail0);
  OK(fo_optimizer_destroy(gpu));
  OK(fo_optimizer_destroy(cpu));
  CK(cudaFree(dp));
  CK(cudaFree(dg));
  free(hp);
  free(hg);
  free(back);
}

/* An error the caller's own work left pending in the CUDA runtime is not
 * the library's: create, step, sync_master and zero_grad succeed, the
 * parameters move, and the caller still finds its error afterwards. */
Test(gpu, caller_pending_error_is_neither_blamed_nor_cleared) {
  require_device(1);
  enum { N = 5000 };
  tu_rng r;
  tu_rng_seed(&r, 77, 1);
  float hp[N], hg[N], back[N];
  for (int i = 0; i < N; i++)
    hp[i] = (float)tu_rng_nonzero(&r, 1e-2, 1.0), hg[i] = mx_draw_grad(&r);
  float *dp = NULL, *dg = NULL;
  CK(cudaMalloc((void **)&dp, sizeof hp));
  CK(cudaMalloc((void **)&dg, sizeof hg));
  CK(cudaMemcpy(dp, hp, sizeof hp, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dg, hg, sizeof hg, cudaMemcpyHostToDevice));
  /* the caller's mistake: an allocation far past any device (not sticky) */
  void *huge = NULL;
  cr_assert_eq(cudaMalloc(&huge, (size_t)1 << 62), cudaErrorMemoryAllocation);
  fo_hparams h;
  OK(fo_hparams_default(FO_ALG_ADAMW, &h));
  fo_options o;
  OK(fo_options_default(&o));
  o.executor = FO_EXEC_CUDA;
  fo_tensor_desc t = {N, 0, dp, dg, "w"};
  fo_optimizer *opt = NULL;
  OK(fo_optimizer_create(&opt, &o, &h, 1, &t, 1));
  OK(fo_optimizer_step(opt, NULL));
  OK(fo_optimizer_zero_grad(opt, NULL));
  cr_assert_eq(cudaPeekAtLastError(), cudaErrorMemoryAllocation,
               "the caller's pending error was cleared or replaced: %s",
               cudaGetErrorName(cudaPeekAtLastError()));
  (void)cudaGetLastError();
  CK(cudaMemcpy(back, dp, sizeof back, cudaMemcpyDeviceToHost));
  int moved = 0;
  for (int i = 0; i < N; i++) moved += back[i] != hp[i];
  cr_assert_gt(moved, N / 2, "only %d of %d parameters moved", moved, N);
  CK(cudaMemcpy(back, dg, sizeof back, cudaMemcpyDeviceToHost));
  for (int i = 0; i < N; i++) cr_assert_eq(back[i], 0.0f, "gradient %d not zeroed", i);
  OK(fo_optimizer_destroy(opt));
  CK(cudaFree(dp));
  CK(cudaFree(dg));
}

/* On a device of compute capability 9.0 or newer, with kernels compiled for
 * it (PTX 90 or newer: the default build's sm_90), the step kernel is
 * launched with Programmatic Dependent Launch after the prepare kernel (and
 * waits for it before reading the step state); otherwise it is not.  The
 * other tests of this file check the results either way. */
Test(gpu, step_uses_pdl_exactly_on_sm90_and_newer) {
  require_device(1);
  int major = 0;
  CK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0));
  float *dp = NULL, *dg = NULL;
  CK(cudaMalloc((void **)&dp, 1024 * sizeof(float)));
  CK(cudaMalloc((void **)&dg, 1024 * sizeof(float)));
  CK(cudaMemset(dp, 0, 1024 * sizeof(float)));
  CK(cudaMemset(dg, 0, 1024 * sizeof(float)));
  fo_hparams h;
  OK(fo_hparams_default(FO_ALG_ADAMW, &h));
  fo_options o;
  OK(fo_options_default(&o));
  o.executor = FO_EXEC_CUDA;
  fo_tensor_desc t = {1024, 0, dp, dg, "w"};
  fo_optimizer *opt = NULL;
  OK(fo_optimizer_create(&opt, &o, &h, 1, &t, 1));
  const int ptx = fo_kernels_ptx_version();
  cr_assert_eq(opt->run.pdl, major >= 9 && ptx >= 90, "compute capability %d.x, PTX %d, pdl %d",
               major, ptx, opt->run.pdl);
  OK(fo_optimizer_destroy(opt));
  CK(cudaFree(dp));
  CK(cudaFree(dg));
}

/* Device memory that the next allocations will likely reuse, filled with
 * NaN bytes (0xFF) and freed: memory that create failed to zero-fill (or
 * that a step read before the fill landed) is then NaN, where a fresh
 * allocation would be zero by chance. */
static void leave_nan_memory_behind(size_t bytes) {
  void *junk = NULL;
  CK(cudaMalloc(&junk, bytes));
  CK(cudaMemset(junk, 0xFF, bytes));
  CK(cudaDeviceSynchronize());
  CK(cudaFree(junk));
}

/* create's zero-fills, uploads and master-weight copy run on the legacy
 * stream, which a non-blocking stream does not wait for: create waits for
 * them, so a step at once on such a stream reads finite moments and master
 * weights and moves the bf16 parameters as the CPU executor does (within a
 * bf16 ulp: the same fp32 arithmetic, contracted differently).  A million
 * elements, in memory left NaN: a fill still queued when the step starts
 * shows. */
Test(gpu, create_then_step_at_once_on_a_non_blocking_stream) {
  require_device(1);
  enum { M = 1 << 20 };
  static float hf[M], gf[M], got[M], want[M];
  static uint16_t hp[M], hg[M], cp[M], back[M];
  tu_rng r;
  tu_rng_seed(&r, 5, 5);
  for (int i = 0; i < M; i++) {
    hf[i] = (float)tu_rng_nonzero(&r, 1e-2, 1.0);
    gf[i] = (float)tu_rng_nonzero(&r, -1.0, 1.0);
  }
  OK(fo_convert_from_f32(FO_DTYPE_BF16, hf, hp, M));
  OK(fo_convert_from_f32(FO_DTYPE_BF16, gf, hg, M));
  memcpy(cp, hp, sizeof cp);
  uint16_t *dp = NULL, *dg = NULL;
  CK(cudaMalloc((void **)&dp, sizeof hp));
  CK(cudaMalloc((void **)&dg, sizeof hg));
  CK(cudaMemcpy(dp, hp, sizeof hp, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dg, hg, sizeof hg, cudaMemcpyHostToDevice));
  CK(cudaDeviceSynchronize()); /* the test's own copies have landed */
  leave_nan_memory_behind((size_t)M * 3 * sizeof(float)); /* master, exp_avg, exp_avg_sq */
  fo_hparams h;
  OK(fo_hparams_default(FO_ALG_ADAMW, &h));
  h.lr = 0.05f; /* a step that moves bf16 values */
  fo_options o;
  OK(fo_options_default(&o));
  o.algorithm = FO_ALG_ADAMW;
  o.param_dtype = o.grad_dtype = FO_DTYPE_BF16;
  o.master_weights = 1;
  fo_tensor_desc tg = {M, 0, dp, dg, "w"}, tc = {M, 0, cp, hg, "w"};
  fo_optimizer *gpu = NULL, *cpu = NULL;
  cudaStream_t s;
  CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  o.executor = FO_EXEC_CUDA;
  OK(fo_optimizer_create(&gpu, &o, &h, 1, &tg, 1));
  OK(fo_optimizer_step(gpu, s)); /* nothing waited for in between */
  o.executor = FO_EXEC_CPU;
  OK(fo_optimizer_create(&cpu, &o, &h, 1, &tc, 1));
  OK(fo_optimizer_step(cpu, NULL));
  CK(cudaStreamSynchronize(s));
  CK(cudaMemcpy(back, dp, sizeof back, cudaMemcpyDeviceToHost));
  OK(fo_convert_to_f32(FO_DTYPE_BF16, back, got, M));
  OK(fo_convert_to_f32(FO_DTYPE_BF16, cp, want, M));
  int moved = 0;
  for (int i = 0; i < M; i++) {
    cr_assert(isfinite(got[i]) && fabsf(got[i] - want[i]) <= 0x1p-7f * fabsf(want[i]),
              "parameter %d = %.9g, CPU %.9g", i, (double)got[i], (double)want[i]);
    moved += back[i] != hp[i];
  }
  cr_assert_gt(moved, M / 2, "only %d of %d parameters moved", moved, M);
  OK(fo_optimizer_destroy(gpu));
  OK(fo_optimizer_destroy(cpu));
  CK(cudaStreamDestroy(s));
  CK(cudaFree(dp));
  CK(cudaFree(dg));
}

/* Pointers in the wrong memory are refused at create. */
Test(gpu, bad_pointers) {
  require_device(1);
  float *host = calloc(64, sizeof *host), *hostg = calloc(64, sizeof *hostg);
  float *dev_p = NULL, *dev_g = NULL;
  CK(cudaMalloc((void **)&dev_p, 64 * sizeof(float)));
  CK(cudaMalloc((void **)&dev_g, 64 * sizeof(float)));
  fo_hparams h;
  OK(fo_hparams_default(FO_ALG_ADAMW, &h));
  fo_options o;
  OK(fo_options_default(&o));
  fo_optimizer *opt = NULL;
  const struct {
    fo_executor ex;
    void *p, *g;
    const char *what;
  } cases[] = {{FO_EXEC_CUDA, host, dev_g, "host parameter, CUDA executor"},
               {FO_EXEC_CUDA, dev_p, hostg, "host gradient, CUDA executor"},
               {FO_EXEC_CPU, dev_p, hostg, "device parameter, CPU executor"},
               {FO_EXEC_CPU, host, dev_g, "device gradient, CPU executor"}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    o.executor = cases[i].ex;
    fo_tensor_desc t = {64, 0, cases[i].p, cases[i].g, "t"};
    fo_status st = fo_optimizer_create(&opt, &o, &h, 1, &t, 1);
    cr_assert_eq(st, FO_ERR_BAD_POINTER, "%s: %s (%s)", cases[i].what, fo_status_string(st),
                 fo_last_error());
    cr_assert_null(opt);
  }
  CK(cudaFree(dev_p));
  CK(cudaFree(dev_g));
  free(host);
  free(hostg);
}

/* 1 when CUDA reports the byte at p as no device memory: a buffer whose
 * last element would lie there runs off its allocation, and create can see
 * it.  (A real device may map the next allocation right behind a small
 * one; the emulated device never does.) */
static int past_allocation(const void *p) {
  struct cudaPointerAttributes a;
  if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
    (void)cudaGetLastError(); /* this probe's own error, not the caller's */
    return 1;
  }
  return a.type != cudaMemoryTypeDevice && a.type != cudaMemoryTypeManaged;
}

/* Each buffer is checked for numel elements of its own dtype: a gradient
 * of fp32 beside bf16 parameters spans twice the parameter's bytes, and
 * one allocated for the parameter's dtype is refused, as is a parameter
 * buffer too short for its dtype beside 16-bit gradients. */
Test(gpu, buffers_sized_by_their_own_dtype) {
  require_device(1);
  enum { N = 4096 };
  unsigned char *p2 = NULL, *p4 = NULL, *g2 = NULL, *g4 = NULL;
  CK(cudaMalloc((void **)&p2, N * 2));
  CK(cudaMalloc((void **)&p4, N * 4));
  CK(cudaMalloc((void **)&g2, N * 2));
  CK(cudaMalloc((void **)&g4, N * 4));
  fo_hparams h;
  OK(fo_hparams_default(FO_ALG_ADAMW, &h));
  const struct {
    fo_dtype pt, gt;
    void *p, *g;
    const char *short_one; /* NULL: both buffers are exactly their size */
  } cases[] = {{FO_DTYPE_BF16, FO_DTYPE_F32, p2, g4, NULL},
               {FO_DTYPE_F32, FO_DTYPE_BF16, p4, g2, NULL},
               {FO_DTYPE_BF16, FO_DTYPE_F32, p2, g2, "grad"},
               {FO_DTYPE_F32, FO_DTYPE_BF16, p2, g2, "param"}};
  int refusals = 0;
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    fo_options o;
    OK(fo_options_default(&o));
    o.executor = FO_EXEC_CUDA;
    o.param_dtype = cases[i].pt;
    o.grad_dtype = cases[i].gt;
    fo_tensor_desc t = {N, 0, cases[i].p, cases[i].g, "t"};
    fo_optimizer *opt = NULL;
    fo_status st = fo_optimizer_create(&opt, &o, &h, 1, &t, 1);
    if (!cases[i].short_one) {
      cr_assert_eq(st, FO_SUCCESS, "case %zu: %s", i, fo_last_error());
      OK(fo_optimizer_destroy(opt));
      continue;
    }
    const unsigned char *buf = strcmp(cases[i].short_one, "grad") == 0 ? cases[i].g : cases[i].p;
    if (!past_allocation(buf + (size_t)N * 4 - 1)) {
      cr_log_info(
          "case %zu: the device maps memory right behind a %d-byte buffer; "
          "an overrun there cannot be seen",
          i, N * 2);
      if (st == FO_SUCCESS) OK(fo_optimizer_destroy(opt));
      continue;
    }
    refusals++;
    cr_assert_eq(st, FO_ERR_BAD_POINTER, "case %zu: %s (%s)", i, fo_status_string(st),
                 fo_last_error());
    cr_assert_null(opt);
    char want[32];
    snprintf(want, sizeof want, "tensors[0].%s", cases[i].short_one);
    cr_assert(strstr(fo_last_error(), want), "case %zu: %s", i, fo_last_error());
  }
  cr_log_info("%d short buffers could be checked", refusals);
  if (getenv("FO_GPU_TEST_EMULATED")) /* the emulated device maps nothing behind a buffer */
    cr_assert_eq(refusals, 2, "the emulated device checked %d short buffers of 2", refusals);
  CK(cudaFree(p2));
  CK(cudaFree(p4));
  CK(cudaFree(g2));
  CK(cudaFree(g4));
}
