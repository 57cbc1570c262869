/*
 * test_gpu_scalars.c -- the per-step scalars on the device against the same
 * function on the CPU (kernels/step_state.h, fo_prepare_step).
 *
 * The contract (docs/numerics.md, "Per-step scalars on the two executors"):
 * both executors evaluate the same double-precision formulas, but `pow` and
 * `cos` come from CUDA's libdevice on the device and from glibc on the CPU,
 * which may differ in the last double ulp; after the single rounding to
 * float, every scalar agrees within 1 fp32 ulp, and most agree bit for bit.
 * The test asserts the ulp bound for every float field of the step state,
 * every group, every schedule and all nine algorithms, over 300 steps, and
 * for each algorithm once with 64 groups (the prepare kernel computes each
 * group on a thread of its own; the CPU one after another); it also
 * asserts that the integer fields (step, flags) are identical, and reports
 * how many floats were not bit-identical.
 */
#include <criterion/criterion.h>
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "gpu_harness.h"
#include "launch.h"
#include "step_state.h"
#include "testutil.h"

#define STEPS 300
#define GROUPS 3
/* The prepare kernel computes each group on a thread of its own: one case
 * per algorithm runs the most groups a launch carries. */
#define MANY_GROUPS FO_PLAN_MAX_GROUPS
#define MANY_STEPS 40

/* |a - b| in fp32 ulps (0 when bit-identical, large on a sign or NaN
 * mismatch). */
static int64_t ulps_apart(float a, float b) {
  if (isnan(a) || isnan(b)) return isnan(a) && isnan(b) ? 0 : INT64_MAX;
  int32_t ia, ib;
  memcpy(&ia, &a, 4);
  memcpy(&ib, &b, 4);
  if ((ia < 0) != (ib < 0)) return a == b ? 0 : INT64_MAX; /* +0 / -0 */
  return ia > ib ? (int64_t)ia - ib : (int64_t)ib - ia;
}

static void random_args(tu_rng *r, int alg, int sched, int groups, fo_prepare_args *a) {
  memset(a, 0, sizeof *a);
  a->head.algorithm = alg;
  a->head.num_groups = groups;
  a->head.grad_divisor = 1.0f;
  a->head.schedule.kind = sched;
  a->head.schedule.warmup_steps = sched ? 7 : 0;
  a->head.schedule.total_steps = 250;
  a->head.schedule.step_size = 13;
  a->head.schedule.period = 29;
  a->head.schedule.period_mult = 2;
  a->head.schedule.gamma = tu_rng_range(r, 0.9, 0.999);
  a->head.schedule.min_ratio = tu_rng_range(r, 0.0, 0.2);
  for (int g = 0; g < groups; g++) {
    fo_group_hparams *h = &a->groups[g];
    h->lr = (float)tu_rng_range(r, 1e-5, 1e-1);
    h->weight_decay = (float)tu_rng_range(r, 0.0, 0.2);
    h->momentum = (float)tu_rng_range(r, 0.5, 0.99);
    h->dampening = (float)tu_rng_range(r, 0.0, 0.5);
    h->beta1 = (float)tu_rng_range(r, 0.8, 0.95);
    h->beta2 = (float)tu_rng_range(r, 0.95, 0.9999);
    h->eps = 1e-8f;
    h->lr_decay = (float)tu_rng_range(r, 0.0, 0.05);
    h->alpha = (float)tu_rng_range(r, 0.9, 0.999);
    h->momentum_decay = (float)tu_rng_range(r, 1e-3, 1e-2);
    h->trust_coef = (float)tu_rng_range(r, 1e-3, 2e-2);
    /* every flag a rule reads, on some groups */
    h->flags = (g % 3 == 1 ? FO_RULE_NESTEROV : 0u) | (g % 4 == 2 ? FO_RULE_AMSGRAD : 0u) |
               (g % 5 == 3 ? FO_RULE_CENTERED : 0u) | (g % 2 ? FO_RULE_DECOUPLED : 0u) |
               (g % 3 != 2 ? FO_RULE_TRUST : 0u);
  }
}

static void compare(const fo_step_state *c, const fo_step_state *d, int num_groups,
                    const char *what, int64_t *floats, int64_t *differ) {
  cr_assert_eq(c->step, d->step, "%s: step %lld vs %lld", what, (long long)c->step,
               (long long)d->step);
  cr_assert_eq(c->skip, d->skip, "%s: skip", what);
  const float fc[] = {c->grad_coef, c->lr_factor}, fd[] = {d->grad_coef, d->lr_factor};
  for (int i = 0; i < 2; i++) {
    int64_t u = ulps_apart(fc[i], fd[i]);
    cr_assert_leq(u, 1, "%s: field %d: CPU %.9g, GPU %.9g (%lld ulps)", what, i, fc[i], fd[i],
                  (long long)u);
    *floats += 1;
    *differ += u != 0;
  }
  for (int g = 0; g < num_groups; g++) {
    const fo_rule_scalars *a = &c->groups[g], *b = &d->groups[g];
    cr_assert_eq(a->flags, b->flags, "%s: group %d flags %u vs %u", what, g, a->flags, b->flags);
    const float fa[] = {a->lr,           a->weight_decay, a->beta1, a->beta2,
                        a->one_minus_b1, a->one_minus_b2, a->eps,   a->step_size,
                        a->step_size_g,  a->bc2_sqrt,     a->decay, a->grad_coef,
                        a->trust_coef,   c->mu_product[g]};
    const float fb[] = {b->lr,           b->weight_decay, b->beta1, b->beta2,
                        b->one_minus_b1, b->one_minus_b2, b->eps,   b->step_size,
                        b->step_size_g,  b->bc2_sqrt,     b->decay, b->grad_coef,
                        b->trust_coef,   d->mu_product[g]};
    for (int k = 0; k < (int)(sizeof fa / sizeof fa[0]); k++) {
      int64_t u = ulps_apart(fa[k], fb[k]);
      cr_assert_leq(u, 1, "%s: group %d scalar %d: CPU %.9g, GPU %.9g (%lld ulps)", what, g, k,
                    fa[k], fb[k], (long long)u);
      *floats += 1;
      *differ += u != 0;
    }
  }
}

/* A fresh step state (step 0, the given scale and hysteresis, every NAdam
 * product 1) in *cpu and, copied, in the device's dstate. */
static void start_both(fo_step_state *cpu, fo_step_state *dstate, float scale, int hysteresis) {
  memset(cpu, 0, sizeof *cpu);
  cpu->scale = scale;
  cpu->hysteresis_left = hysteresis;
  for (int g = 0; g < FO_PLAN_MAX_GROUPS; g++) cpu->mu_product[g] = 1.0f;
  CK(cudaMemcpy(dstate, cpu, sizeof *cpu, cudaMemcpyHostToDevice));
}

/* steps prepare steps of a on the CPU and on the device, from the same
 * state, compared after each. */
static void run_case(fo_step_state *dstate, const fo_prepare_args *a, int steps, int64_t *floats,
                     int64_t *differ) {
  fo_step_state cpu, gpu;
  start_both(&cpu, dstate, 1.0f, 0);
  for (int s = 0; s < steps; s++) {
    fo_prepare_step(a, 0.0, &cpu);
    CK(cudaMemset(dstate->groups, 0xff, sizeof dstate->groups)); /* poison: written each step */
    CK((cudaError_t)fo_launch_prepare(a, NULL, 0, dstate, NULL));
    CK(cudaMemcpy(&gpu, dstate, sizeof gpu, cudaMemcpyDeviceToHost));
    char what[96];
    snprintf(what, sizeof what, "alg %d schedule %d, %d groups, step %d", a->head.algorithm,
             a->head.schedule.kind, a->head.num_groups, s + 1);
    compare(&cpu, &gpu, a->head.num_groups, what, floats, differ);
  }
}

Test(gpu_scalars, within_one_ulp_of_the_cpu_for_every_schedule_and_algorithm) {
  require_device(1);
  fo_step_state *dstate = NULL;
  CK(cudaMalloc((void **)&dstate, sizeof *dstate));
  tu_rng r;
  tu_rng_seed(&r, 2026, 12);
  int64_t floats = 0, differ = 0;
  for (int alg = FO_RULE_SGD; alg <= FO_RULE_LARS; alg++) {
    for (int sched = FO_RULE_SCHED_CONSTANT; sched <= FO_RULE_SCHED_CYCLIC; sched++) {
      fo_prepare_args a;
      random_args(&r, alg, sched, GROUPS, &a);
      run_case(dstate, &a, STEPS, &floats, &differ);
    }
    /* one thread per group on the device; 5 groups: just past the launch
     * that carries only a few groups' hyper-parameters (prestep.cu) */
    fo_prepare_args many, five;
    random_args(&r, alg, FO_RULE_SCHED_COSINE, MANY_GROUPS, &many);
    run_case(dstate, &many, MANY_STEPS, &floats, &differ);
    random_args(&r, alg, FO_RULE_SCHED_STEP, 5, &five);
    run_case(dstate, &five, MANY_STEPS, &floats, &differ);
  }
  CK(cudaFree(dstate));
  cr_log_info("%lld of %lld per-step floats not bit-identical (each within 1 ulp)",
              (long long)differ, (long long)floats);
  printf("gpu_scalars: %lld of %lld per-step floats not bit-identical (each within 1 ulp)\n",
         (long long)differ, (long long)floats);
}

/* The fields a pre-pass and the loss scaler decide: the skip, the counts
 * and the scaler's state identical, the norm within 1 ulp. */
static void compare_decision(const fo_step_state *c, const fo_step_state *d, const char *what) {
  cr_assert_eq(c->skipped, d->skipped, "%s: skipped %lld vs %lld", what, (long long)c->skipped,
               (long long)d->skipped);
  cr_assert_eq(c->growth_tracker, d->growth_tracker, "%s: growth tracker", what);
  cr_assert_eq(c->hysteresis_left, d->hysteresis_left, "%s: hysteresis", what);
  cr_assert(c->scale == d->scale, "%s: scale %a vs %a", what, (double)c->scale, (double)d->scale);
  cr_assert_leq(ulps_apart(c->grad_norm, d->grad_norm), 1, "%s: norm %.9g vs %.9g", what,
                (double)c->grad_norm, (double)d->grad_norm);
}

/* With a pre-pass: more partial sums than the prepare kernel has threads
 * (some non-finite, past the first 1024), clipping, a divisor, and the
 * loss scaler growing, holding and backing off.  The CPU gets the
 * partials' sum; the device folds them itself. */
Test(gpu_scalars, pre_pass_scaler_and_clipping_within_one_ulp_of_the_cpu) {
  require_device(1);
  enum { PARTIALS = 1500, SCALED_STEPS = 120 };
  fo_step_state *dstate = NULL;
  double *dpartials = NULL;
  CK(cudaMalloc((void **)&dstate, sizeof *dstate));
  CK(cudaMalloc((void **)&dpartials, PARTIALS * sizeof *dpartials));
  static double partials[PARTIALS];
  tu_rng r;
  tu_rng_seed(&r, 2026, 20);
  int64_t floats = 0, differ = 0, skips = 0, changes = 0;
  const float divisors[3] = {1.0f, 3.0f, 8.0f};
  for (int alg = FO_RULE_SGD; alg <= FO_RULE_LARS; alg++) {
    fo_prepare_args a;
    random_args(&r, alg, FO_RULE_SCHED_COSINE, GROUPS, &a);
    a.head.check_grads = 1;
    a.head.max_grad_norm = alg % 2 ? (float)tu_rng_range(&r, 0.5, 5.0) : 0.0f;
    a.head.grad_divisor = divisors[alg % 3];
    a.head.scaler =
        (fo_scaler_params){1, 2 + alg % 3, 1 + alg % 2, 2.0f, 0.5f, alg % 4 == 0 ? 0x1p20f : 0.0f};
    fo_step_state cpu, gpu;
    start_both(&cpu, dstate, 0x1p16f, a.head.scaler.hysteresis);
    for (int s = 0; s < SCALED_STEPS; s++) {
      /* the scaled gradients' sums of squares: about scale^2 each */
      const double sq = (double)cpu.scale * (double)cpu.scale;
      for (int i = 0; i < PARTIALS; i++) partials[i] = sq * tu_rng_range(&r, 1e-6, 1e-3);
      const uint32_t dice = tu_rng_u32(&r) % 10;
      if (dice == 0) partials[1024 + tu_rng_u32(&r) % (PARTIALS - 1024)] = INFINITY;
      if (dice == 1) partials[1100] = NAN;
      double sumsq = 0.0;
      for (int i = 0; i < PARTIALS; i++) sumsq += partials[i];
      const float scale_before = cpu.scale;
      fo_prepare_step(&a, sumsq, &cpu);
      CK(cudaMemcpy(dpartials, partials, sizeof partials, cudaMemcpyHostToDevice));
      CK(cudaMemset(dstate->groups, 0xff, sizeof dstate->groups)); /* written each step */
      CK((cudaError_t)fo_launch_prepare(&a, dpartials, PARTIALS, dstate, NULL));
      CK(cudaMemcpy(&gpu, dstate, sizeof gpu, cudaMemcpyDeviceToHost));
      char what[96];
      snprintf(what, sizeof what, "alg %d, pre-pass, step %d (partials %s)", alg, s + 1,
               dice == 0   ? "with inf"
               : dice == 1 ? "with NaN"
                           : "finite");
      cr_assert_eq(cpu.skip, dice <= 1, "%s: the CPU's own skip decision", what);
      compare_decision(&cpu, &gpu, what);
      if (!cpu.skip) compare(&cpu, &gpu, a.head.num_groups, what, &floats, &differ);
      skips += cpu.skip;
      changes += cpu.scale != scale_before;
    }
  }
  /* the sequence exercised what it is for */
  cr_assert_gt(skips, 20, "only %lld skipped steps", (long long)skips);
  cr_assert_gt(changes, 40, "the scale changed only %lld times", (long long)changes);
  CK(cudaFree(dpartials));
  CK(cudaFree(dstate));
  printf(
      "gpu_scalars (pre-pass): %lld of %lld per-step floats not bit-identical; %lld skips, "
      "%lld scale changes\n",
      (long long)differ, (long long)floats, (long long)skips, (long long)changes);
}
