/*
 * test_cpu_reference_matrix.c -- the CPU executor against the independent
 * double-precision reference (tests/support/reference.c), through the
 * harness of tests/support/ref_harness.h.
 *
 * The matrix: every algorithm x option (SGD momentum / dampening / Nesterov,
 * weight decay, AMSGrad, maximize; AdaGrad learning-rate decay and initial
 * accumulator; RMSprop centering and momentum; NAdam's L2 or decoupled
 * decay; LAMB and LARS with layer adaptation off in one group; LARS
 * momentum / dampening / Nesterov) x parameter dtype x gradient dtype x
 * master weights (16-bit parameters) x storage mode, over tensors of odd
 * sizes (empty ones included) in two parameter groups with different
 * hyper-parameters, fresh random non-zero gradients every step, the learning
 * rate changed twice along the way, 20 steps.  After steps 1-3, 5, 8, 10,
 * 14, 15 and 20 the parameters, the master weights and every state buffer
 * are compared with the reference (checked_step()).  Then: options that
 * differ between the groups of one optimizer.
 *
 * The tolerances are the named constants of ref_harness.h; docs/numerics.md
 * explains each.  Set FO_TEST_VERBOSE=1 to print the worst error/tolerance
 * ratio seen per category.
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

static void run_matrix(fo_algorithm alg) {
  opt_flags flags[MAX_FLAGS];
  int nf = flag_list(alg, flags);
  int runs = 0, failures = 0;
  double t0 = tu_now();
  for (int k = 0; k < nf; ++k)
    for (int pi = 0; pi < 3; ++pi)
      for (int gi = 0; gi < 3; ++gi)
        for (int master = 1; master >= (DTYPES[pi] == FO_DTYPE_F32 ? 1 : 0); --master)
          for (int sto = 0; sto < 2; ++sto) {
            run_cfg c = {0};
            c.alg = alg;
            c.f = flags[k];
            c.pdt = DTYPES[pi];
            c.gdt = DTYPES[gi];
            c.master = master;
            c.storage = sto ? FO_STORAGE_ARENA : FO_STORAGE_EXTERNAL;
            c.threads = 1;
            c.seed = tu_hash(tu_hash((uint64_t)alg, (uint64_t)k),
                             (uint64_t)(pi * 100 + gi * 10 + master));
            char msg[1024];
            ++runs;
            if (!run_case(&c, msg, sizeof msg)) {
              ++failures;
              if (failures <= max_reported()) {
                char d[256];
                describe(&c, d, sizeof d);
                cr_expect(0, "%s: %s", d, msg);
              }
            }
          }
  char what[64];
  snprintf(what, sizeof what, "%s: %d runs, %.2f s", tu_alg_name(alg), runs, tu_now() - t0);
  print_stats(what);
  cr_expect_eq(failures, 0, "%s: %d of %d configurations failed", tu_alg_name(alg), failures, runs);
}

Test(cpu_reference, sgd, .timeout = 120) {
  run_matrix(FO_ALG_SGD);
}
Test(cpu_reference, adam, .timeout = 120) {
  run_matrix(FO_ALG_ADAM);
}
Test(cpu_reference, adamw, .timeout = 120) {
  run_matrix(FO_ALG_ADAMW);
}
Test(cpu_reference, lion, .timeout = 120) {
  run_matrix(FO_ALG_LION);
}
Test(cpu_reference, adagrad, .timeout = 120) {
  run_matrix(FO_ALG_ADAGRAD);
}
Test(cpu_reference, rmsprop, .timeout = 120) {
  run_matrix(FO_ALG_RMSPROP);
}
Test(cpu_reference, nadam, .timeout = 120) {
  run_matrix(FO_ALG_NADAM);
}
Test(cpu_reference, lamb, .timeout = 120) {
  run_matrix(FO_ALG_LAMB);
}
Test(cpu_reference, lars, .timeout = 120) {
  run_matrix(FO_ALG_LARS);
}

/* An algorithm with different options in its two groups. */
typedef struct option_mix {
  fo_algorithm alg;
  opt_flags g0, g1;
} option_mix;

/* Each mix over four dtype combinations and both storage modes; seeds
 * from seed_base. */
static void run_mixes(const option_mix *mixes, size_t n, uint64_t seed_base) {
  static const struct {
    fo_dtype p, g;
    int master;
  } dts[] = {{FO_DTYPE_F32, FO_DTYPE_F32, 1},
             {FO_DTYPE_BF16, FO_DTYPE_BF16, 1},
             {FO_DTYPE_F16, FO_DTYPE_F32, 0},
             {FO_DTYPE_BF16, FO_DTYPE_F16, 0}};
  int failures = 0, runs = 0;
  for (size_t k = 0; k < n; ++k)
    for (size_t d = 0; d < sizeof dts / sizeof dts[0]; ++d)
      for (int sto = 0; sto < 2; ++sto) {
        run_cfg c = {0};
        c.alg = mixes[k].alg;
        c.f = mixes[k].g0;
        c.mixed = 1;
        c.f1 = mixes[k].g1;
        c.pdt = dts[d].p;
        c.gdt = dts[d].g;
        c.master = dts[d].master;
        c.storage = sto ? FO_STORAGE_ARENA : FO_STORAGE_EXTERNAL;
        c.threads = 1;
        c.seed = tu_hash(seed_base + k, d * 2 + (size_t)sto);
        char msg[1024], desc[256];
        ++runs;
        if (!run_case(&c, msg, sizeof msg)) {
          describe(&c, desc, sizeof desc);
          if (++failures <= max_reported()) cr_expect(0, "%s: %s", desc, msg);
        }
      }
  cr_expect_eq(failures, 0, "%d of %d mixed-option configurations failed", failures, runs);
}

/* The boolean options are per group: the two groups of one optimizer differ
 * in them (momentum on in one, off in the other; AMSGrad in one; maximize
 * in one; Nesterov against dampening). */
Test(cpu_reference, mixed_group_options, .timeout = 60) {
  static const option_mix mixes[] = {
      {FO_ALG_SGD,
       {.momentum = 3, .wd = 1, .amsgrad = 0, .maximize = 0},
       {.momentum = 0, .wd = 0, .amsgrad = 0, .maximize = 1}},
      {FO_ALG_SGD,
       {.momentum = 0, .wd = 1, .amsgrad = 0, .maximize = 0},
       {.momentum = 2, .wd = 0, .amsgrad = 0, .maximize = 1}},
      {FO_ALG_SGD,
       {.momentum = 1, .wd = 0, .amsgrad = 0, .maximize = 1},
       {.momentum = 3, .wd = 1, .amsgrad = 0, .maximize = 0}},
      {FO_ALG_ADAM,
       {.momentum = 0, .wd = 1, .amsgrad = 1, .maximize = 0},
       {.momentum = 0, .wd = 0, .amsgrad = 0, .maximize = 1}},
      {FO_ALG_ADAM,
       {.momentum = 0, .wd = 0, .amsgrad = 0, .maximize = 1},
       {.momentum = 0, .wd = 1, .amsgrad = 1, .maximize = 0}},
      {FO_ALG_ADAMW,
       {.momentum = 0, .wd = 1, .amsgrad = 1, .maximize = 1},
       {.momentum = 0, .wd = 1, .amsgrad = 0, .maximize = 0}},
      {FO_ALG_ADAMW,
       {.momentum = 0, .wd = 0, .amsgrad = 0, .maximize = 0},
       {.momentum = 0, .wd = 1, .amsgrad = 1, .maximize = 1}},
      {FO_ALG_LION,
       {.momentum = 0, .wd = 1, .amsgrad = 0, .maximize = 1},
       {.momentum = 0, .wd = 0, .amsgrad = 0, .maximize = 0}},
  };
  run_mixes(mixes, sizeof mixes / sizeof mixes[0], 1000);
}

/* The same for the algorithms of issue #17: RMSprop centered and with
 * momentum in one group only; NAdam's decay L2 in one group, decoupled in
 * the other; AdaGrad's learning-rate decay and initial accumulator in one
 * group; LARS's Nesterov against dampening, layer adaptation in one group
 * (no_adapt turns it off in group 1); LAMB with maximize in one group. */
Test(cpu_reference, mixed_group_options_new, .timeout = 60) {
  static const option_mix mixes[] = {
      {FO_ALG_RMSPROP, {.momentum = 1, .wd = 1, .centered = 1}, {.maximize = 1}},
      {FO_ALG_RMSPROP, {.wd = 1, .maximize = 1}, {.momentum = 1, .centered = 1}},
      {FO_ALG_NADAM, {.wd = 1}, {.wd = 2, .maximize = 1}},
      {FO_ALG_NADAM, {.wd = 2}, {.wd = 0}},
      {FO_ALG_ADAGRAD, {.lr_decay = 1, .init_acc = 1, .wd = 1}, {.maximize = 1}},
      {FO_ALG_LARS, {.momentum = 3, .wd = 1}, {.momentum = 2, .no_adapt = 1, .maximize = 1}},
      {FO_ALG_LARS, {.momentum = 0, .maximize = 1}, {.momentum = 1, .wd = 1}},
      {FO_ALG_LAMB, {.wd = 1, .maximize = 1}, {.no_adapt = 1}},
  };
  run_mixes(mixes, sizeof mixes / sizeof mixes[0], 2000);
}
