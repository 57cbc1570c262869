/*
 * test_cpu_reference_threads.c -- the CPU executor on 1 thread against
 * many: bit-identical (tests/support/ref_harness.h).
 */
#define _POSIX_C_SOURCE 200809L
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fusedopt.h"
#include "ref_harness.h"
#include "reference.h"
#include "testutil.h"

/* -------------------------------------------------- threads: bit-identical */

/* Each configuration on 1 thread, then on 2, 4 and the default: the bytes of
 * every parameter and state buffer after 4 steps must be identical. */
static void check_threads(const run_cfg *base, size_t n, uint64_t seed) {
  const int thread_counts[] = {2, 4, 0};
  for (size_t k = 0; k < n; ++k) {
    run_cfg c = base[k];
    c.seed = seed + k;
    c.threads = 1;
    size_t n1 = 0;
    unsigned char *one = snapshot_run(&c, 4, &n1);
    for (size_t j = 0; j < sizeof thread_counts / sizeof thread_counts[0]; ++j) {
      c.threads = thread_counts[j];
      size_t nm = 0;
      unsigned char *many = snapshot_run(&c, 4, &nm);
      char d[256];
      describe(&c, d, sizeof d);
      cr_expect(n1 == nm && memcmp(one, many, n1) == 0, "%s: results differ from num_threads=1", d);
      free(many);
    }
    free(one);
  }
}

Test(cpu_reference, threads_bit_identical, .timeout = 120) {
  const run_cfg base[] = {
      {.alg = FO_ALG_SGD,
       .f = {.momentum = 3, .wd = 1, .amsgrad = 0, .maximize = 0},
       .pdt = FO_DTYPE_F32,
       .gdt = FO_DTYPE_F32,
       .master = 1,
       .storage = FO_STORAGE_EXTERNAL},
      {.alg = FO_ALG_SGD,
       .f = {.momentum = 2, .wd = 1, .amsgrad = 0, .maximize = 1},
       .pdt = FO_DTYPE_F16,
       .gdt = FO_DTYPE_BF16,
       .master = 0,
       .storage = FO_STORAGE_ARENA},
      {.alg = FO_ALG_ADAM,
       .f = {.momentum = 0, .wd = 1, .amsgrad = 1, .maximize = 0},
       .pdt = FO_DTYPE_BF16,
       .gdt = FO_DTYPE_F16,
       .master = 1,
       .storage = FO_STORAGE_EXTERNAL},
      {.alg = FO_ALG_ADAMW,
       .f = {.momentum = 0, .wd = 1, .amsgrad = 1, .maximize = 1},
       .pdt = FO_DTYPE_F16,
       .gdt = FO_DTYPE_F32,
       .master = 0,
       .storage = FO_STORAGE_ARENA},
      {.alg = FO_ALG_ADAMW,
       .f = {.momentum = 0, .wd = 1, .amsgrad = 0, .maximize = 0},
       .pdt = FO_DTYPE_BF16,
       .gdt = FO_DTYPE_BF16,
       .master = 0,
       .storage = FO_STORAGE_EXTERNAL,
       .sr = 1,
       .sr_seed = 1234},
      {.alg = FO_ALG_LION,
       .f = {.momentum = 0, .wd = 1, .amsgrad = 0, .maximize = 1},
       .pdt = FO_DTYPE_BF16,
       .gdt = FO_DTYPE_F32,
       .master = 1,
       .storage = FO_STORAGE_ARENA},
  };
  check_threads(base, sizeof base / sizeof base[0], 99);
}

/* The algorithms of issue #17; LAMB's and LARS's per-tensor norms over
 * tensors split between threads must not depend on the split. */
Test(cpu_reference, threads_bit_identical_new, .timeout = 120) {
  const run_cfg base[] = {
      {.alg = FO_ALG_ADAGRAD,
       .f = {.wd = 1, .lr_decay = 1, .init_acc = 1},
       .pdt = FO_DTYPE_BF16,
       .gdt = FO_DTYPE_F16,
       .master = 1,
       .storage = FO_STORAGE_EXTERNAL},
      {.alg = FO_ALG_RMSPROP,
       .f = {.momentum = 1, .wd = 1, .centered = 1, .maximize = 1},
       .pdt = FO_DTYPE_F16,
       .gdt = FO_DTYPE_F32,
       .master = 0,
       .storage = FO_STORAGE_ARENA},
      {.alg = FO_ALG_NADAM,
       .f = {.wd = 2},
       .pdt = FO_DTYPE_F32,
       .gdt = FO_DTYPE_F32,
       .master = 1,
       .storage = FO_STORAGE_EXTERNAL},
      {.alg = FO_ALG_LAMB,
       .f = {.wd = 1, .no_adapt = 1},
       .pdt = FO_DTYPE_F32,
       .gdt = FO_DTYPE_BF16,
       .master = 1,
       .storage = FO_STORAGE_ARENA},
      {.alg = FO_ALG_LAMB,
       .f = {.wd = 1, .maximize = 1},
       .pdt = FO_DTYPE_BF16,
       .gdt = FO_DTYPE_BF16,
       .master = 0,
       .storage = FO_STORAGE_EXTERNAL,
       .sr = 1,
       .sr_seed = 77},
      {.alg = FO_ALG_LARS,
       .f = {.momentum = 3, .wd = 1},
       .pdt = FO_DTYPE_F32,
       .gdt = FO_DTYPE_F32,
       .master = 1,
       .storage = FO_STORAGE_EXTERNAL},
      {.alg = FO_ALG_LARS,
       .f = {.momentum = 2, .wd = 1, .no_adapt = 1, .maximize = 1},
       .pdt = FO_DTYPE_BF16,
       .gdt = FO_DTYPE_F16,
       .master = 1,
       .storage = FO_STORAGE_ARENA},
  };
  check_threads(base, sizeof base / sizeof base[0], 199);
}
