/*
 * test_gpu_kernels_matrix.c -- the GPU tier: the CUDA executor through the
 * public API, against the CPU executor run on identical inputs
 * (tests/support/gpu/gpu_matrix.h: the rig and its tolerances).
 *
 * Every test first asks fo_cuda_device_count(); without a usable device it
 * is skipped with the reason (never passed without running).  With one:
 *
 *   - the matrix: every algorithm x option set x parameter dtype x gradient
 *     dtype x master/no-master/stochastic rounding, six steps, over many
 *     small tensors, odd sizes and a few large ones, as offset views into
 *     one cudaMalloc buffer per role (misaligned for some tensors), the gaps
 *     between tensors poisoned and checked afterwards;
 *   - repeated runs: bit-identical; graph replay: bit-identical to an eager
 *     run whose scalars also came from the prepare kernel
 *     (FUSEDOPT_HOST_SCALARS=0);
 *   - arena storage.
 *
 * FO_GPU_TEST_QUICK set (the CI's sanitized run of the emulated device,
 * where the kernels' block work runs under ASan and UBSan) makes the work
 * smaller, not the paths fewer: the matrix leaves its largest tensor out
 * and runs each mode, under each option set, with one gradient dtype,
 * rotated so that every mode still meets every gradient dtype (every kernel
 * instantiation runs) and every option set meets every gradient dtype; the
 * replay test's large tensor spans 5 chunks instead of 33, except for
 * LAMB's and LARS's first option set (their norms' path past 32 chunks).
 * The plain emulated run and the device keep the whole.
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

/* FO_GPU_TEST_QUICK: the emulated device under the sanitizers. */
static int quick_run(void) {
  return getenv("FO_GPU_TEST_QUICK") != NULL;
}

/* Every option set and dtype combination of one algorithm. */
static void run_matrix(fo_algorithm alg) {
  dev d = dev_open(require_device(0));
  const struct {
    fo_dtype pt;
    int master, sr;
  } modes[] = {{FO_DTYPE_F32, 1, 0},  {FO_DTYPE_F16, 1, 0},  {FO_DTYPE_F16, 0, 0},
               {FO_DTYPE_BF16, 1, 0}, {FO_DTYPE_BF16, 0, 0}, {FO_DTYPE_BF16, 0, 1}};
  const fo_dtype grads[] = {FO_DTYPE_F32, FO_DTYPE_F16, FO_DTYPE_BF16};
  const int64_t large[] = {3 * 32768 + 5, (1 << 18) + 3};
  /* FO_GPU_TEST_QUICK (the emulated device under the sanitizers): the
   * first large tensor only, which spans chunks as the second does, and
   * gradient dtype (set + m) % 3 only: over the three sets each mode
   * meets all three */
  const int quick = quick_run();
  uint64_t k = 0;
  for (int set = 0; set < 3; set++)
    for (size_t m = 0; m < sizeof modes / sizeof modes[0]; m++)
      for (size_t g = 0; g < 3; g++, k++) {
        if (quick && g != (set + m) % 3) continue;
        cfg c = {alg,
                 set,
                 modes[m].pt,
                 grads[g],
                 modes[m].master,
                 modes[m].sr,
                 FO_STORAGE_EXTERNAL,
                 tu_hash((uint64_t)alg * 1000 + 7, k)};
        run_cfg(&d, &c, large, quick ? 1 : 2, 0, 0);
      }
  dev_close(&d);
}

Test(gpu, matrix_sgd) {
  run_matrix(FO_ALG_SGD);
}
Test(gpu, matrix_adam) {
  run_matrix(FO_ALG_ADAM);
}
Test(gpu, matrix_adamw) {
  run_matrix(FO_ALG_ADAMW);
}
Test(gpu, matrix_lion) {
  run_matrix(FO_ALG_LION);
}
Test(gpu, matrix_adagrad) {
  run_matrix(FO_ALG_ADAGRAD);
}
Test(gpu, matrix_rmsprop) {
  run_matrix(FO_ALG_RMSPROP);
}
Test(gpu, matrix_nadam) {
  run_matrix(FO_ALG_NADAM);
}
/* LAMB and LARS: the per-tensor norms over many tensors (the matrix's
 * small ones and two large ones of several blocks each) */
Test(gpu, matrix_lamb) {
  run_matrix(FO_ALG_LAMB);
}
Test(gpu, matrix_lars) {
  run_matrix(FO_ALG_LARS);
}

/* The same inputs twice give the same bits, and a step captured in a CUDA
 * graph and replayed gives the same bits as eager steps through the
 * prepare kernel (the scalars, step counter, schedule and loss scaler live
 * on the device). */
Test(gpu, repeatable_and_graph_replay) {
  dev d = dev_open(require_device(0));
  const fo_algorithm algs[] = {FO_ALG_SGD,   FO_ALG_ADAM,    FO_ALG_ADAMW,
                               FO_ALG_LION,  FO_ALG_ADAGRAD, FO_ALG_RMSPROP,
                               FO_ALG_NADAM, FO_ALG_LAMB,    FO_ALG_LARS};
  const int quick = quick_run();
  for (int a = 0; a < (int)(sizeof algs / sizeof algs[0]); a++)
    for (int set = 0; set < 3; set++) {
      /* 33 chunks of the CUDA executor's 32768 elements: one more than a
       * warp's lanes, so LAMB's and LARS's per-tensor norms (a warp over
       * the tensor's blocks) take a second block in a lane.  Under
       * FO_GPU_TEST_QUICK (the emulated kernels' block work under the
       * sanitizers) only they need it, in one option set; 5 chunks take
       * every other path. */
      const int layerwise = algs[a] == FO_ALG_LAMB || algs[a] == FO_ALG_LARS;
      const int64_t large[] = {quick && !(layerwise && set == 0) ? 4 * 32768 + 1 : (1 << 20) + 1};
      cfg c = {algs[a],  set,      FO_DTYPE_BF16,       FO_DTYPE_BF16,
               set != 1, set == 1, FO_STORAGE_EXTERNAL, tu_hash(77, (uint64_t)(a * 3 + set))};
      run_cfg(&d, &c, large, 1, 1, 1);
      cfg f = c;
      f.pt = f.gt = FO_DTYPE_F32;
      f.sr = 0;
      run_cfg(&d, &f, large, 1, 1, 1);
    }
  dev_close(&d);
}

/* Arena storage: parameters written through param_ptr, sync_master, the
 * step over the flat buffers. */
Test(gpu, arena) {
  dev d = dev_open(require_device(0));
  const int64_t large[] = {70001};
  const fo_dtype pts[] = {FO_DTYPE_F32, FO_DTYPE_BF16, FO_DTYPE_F16};
  for (int a = 0; a < 4; a++)
    for (int i = 0; i < 3; i++) {
      cfg c = {(fo_algorithm)a,
               a % 3,
               pts[i],
               i == 0 ? FO_DTYPE_F32 : FO_DTYPE_BF16,
               1,
               0,
               FO_STORAGE_ARENA,
               tu_hash(88, (uint64_t)(a * 3 + i))};
      run_cfg(&d, &c, large, 1, 0, d.cuda);
    }
  dev_close(&d);
}
