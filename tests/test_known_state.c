/*
 * test_known_state.c -- the steps the host decides alone (host/known.c).
 *
 * The CUDA executor carries an eager step's scalars by value in the step
 * launch when the host can compute them (no pre-pass, at most
 * FO_KNOWN_GROUPS groups) instead of launching the prepare kernel.  That is
 * only right while the host's copy of the step state equals the device's.
 * These tests hold the copy's arithmetic and bookkeeping to the CPU
 * executor, whose state is host memory and whose steps run the prepare
 * step itself:
 *
 *   - before every step, fo_known_next() predicts the whole state the
 *     step leaves, byte for byte, for all nine algorithms, every schedule,
 *     one to FO_KNOWN_GROUPS groups of different hyper-parameters, and a
 *     learning rate changed between steps;
 *   - a step the device decided makes the copy unknown until the state is
 *     next written whole (fo_optimizer_set_step, a load), which makes it
 *     right again;
 *   - what the host must not decide: a pre-pass (clipping, loss scaling),
 *     too many groups, an exhausted step count, FUSEDOPT_HOST_SCALARS=0,
 *     and an optimizer once captured into a CUDA graph.
 *
 * The launch side (the blocks read the carried scalars and never the
 * state; block 0 publishes them) is tests/test_block_work_step.cpp's.
 */
#define _POSIX_C_SOURCE 200809L

#include <criterion/criterion.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "testutil.h"

#define NT 6
#define NUMEL 37

typedef struct rig {
  fo_optimizer *opt;
  float param[NT][NUMEL], grad[NT][NUMEL];
  tu_rng rng;
} rig;

static void fill_grads(rig *r) {
  for (int t = 0; t < NT; t++)
    for (int i = 0; i < NUMEL; i++) r->grad[t][i] = (float)tu_rng_nonzero(&r->rng, -1.0, 1.0);
}

/* groups with hyper-parameters drawn per group; tensors spread over them */
static fo_status rig_make(rig *r, fo_algorithm alg, int groups, const fo_options *base,
                          uint64_t seed) {
  memset(r, 0, sizeof *r);
  tu_rng_seed(&r->rng, seed, 1);
  fo_options o = *base;
  o.algorithm = alg;
  o.executor = FO_EXEC_CPU;
  fo_hparams h[FO_MAX_GROUPS];
  for (int g = 0; g < groups; g++) {
    cr_assert_eq(fo_hparams_default(alg, &h[g]), FO_SUCCESS);
    h[g].lr *= (float)tu_rng_range(&r->rng, 0.5, 2.0);
    h[g].weight_decay = g % 2 ? 0.0f : (float)tu_rng_range(&r->rng, 0.01, 0.1);
    if (alg == FO_ALG_SGD || alg == FO_ALG_LARS || alg == FO_ALG_RMSPROP)
      h[g].momentum = g == 1 ? 0.0f : 0.9f;
    if (alg == FO_ALG_SGD) h[g].nesterov = g == 2;
    if (alg == FO_ALG_ADAGRAD) h[g].lr_decay = 0.01f * (float)g;
    if (alg == FO_ALG_NADAM) h[g].decoupled_weight_decay = g % 2;
    if (alg == FO_ALG_LAMB || alg == FO_ALG_LARS) h[g].layer_adaptation = g != 1;
    if (alg == FO_ALG_ADAM || alg == FO_ALG_ADAMW) h[g].amsgrad = g == 2;
  }
  fo_tensor_desc d[NT];
  for (int t = 0; t < NT; t++) {
    for (int i = 0; i < NUMEL; i++) r->param[t][i] = (float)tu_rng_range(&r->rng, -1.0, 1.0);
    d[t] = (fo_tensor_desc){NUMEL, t % groups, r->param[t], r->grad[t], NULL};
  }
  return fo_optimizer_create(&r->opt, &o, h, groups, d, NT);
}

/* The host's prediction of the next step (1 when it makes one). */
static int predict(rig *r, fo_known_step *k, fo_step_state *next) {
  fo_prepare_args pa;
  fo_prepare_args_fill(r->opt, &pa);
  return fo_known_next(r->opt, &pa, k, next);
}

/* One step on the CPU executor, which must leave exactly the predicted
 * state; the prediction then becomes the host's copy, as the CUDA
 * executor commits it after its launch. */
static void step_as_predicted(rig *r, const char *ctx, int s) {
  fo_known_step k;
  fo_step_state next;
  memset(&next, 0x5a, sizeof next);
  cr_assert_eq(predict(r, &k, &next), 1, "%s, step %d: not decided on the host", ctx, s);
  fill_grads(r);
  cr_assert_eq(fo_optimizer_step(r->opt, NULL), FO_SUCCESS, "%s: %s", ctx, fo_last_error());
  const fo_step_state *st = r->opt->state;
  cr_assert(memcmp(&next, st, sizeof next) == 0,
            "%s, step %d: the host's prediction differs from the CPU executor's state (step "
            "%lld/%lld, lr_factor %.9g/%.9g, group 0 step_size %.9g/%.9g)",
            ctx, s, (long long)next.step, (long long)st->step, (double)next.lr_factor,
            (double)st->lr_factor, (double)next.groups[0].step_size,
            (double)st->groups[0].step_size);
  /* what the launch carries is what the state holds */
  fo_known_step want;
  fo_known_from_state(st, r->opt->num_groups, &want);
  cr_assert(memcmp(&k, &want, sizeof k) == 0, "%s, step %d: the carried step", ctx, s);
  cr_assert_eq(k.step, s);
  fo_known_set(r->opt, &next);
}

static const fo_algorithm ALGS[] = {FO_ALG_SGD,   FO_ALG_ADAM,    FO_ALG_ADAMW,
                                    FO_ALG_LION,  FO_ALG_ADAGRAD, FO_ALG_RMSPROP,
                                    FO_ALG_NADAM, FO_ALG_LAMB,    FO_ALG_LARS};
#define NALGS ((int)(sizeof ALGS / sizeof ALGS[0]))

static void schedule_of(int kind, fo_schedule *s) {
  s->kind = (fo_schedule_kind)kind;
  s->warmup_steps = kind % 2 ? 3 : 0;
  s->total_steps = 30;
  s->step_size = 4;
  s->period = 5;
  s->period_mult = 2;
  s->gamma = 0.7f;
  s->min_ratio = 0.1f;
}

/* Whatever the environment the suite runs in: the host decides. */
static void host_scalars_on(void) {
  cr_assert_eq(unsetenv("FUSEDOPT_HOST_SCALARS"), 0);
}

Test(known_state, predicts_every_step_of_every_algorithm_and_schedule, .init = host_scalars_on) {
  const int kinds[] = {FO_SCHED_CONSTANT,    FO_SCHED_COSINE,          FO_SCHED_STEP,
                       FO_SCHED_EXPONENTIAL, FO_SCHED_COSINE_RESTARTS, FO_SCHED_CYCLIC};
  for (int a = 0; a < NALGS; a++)
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
      const int groups = 1 + (int)((a + k) % FO_KNOWN_GROUPS);
      fo_options o;
      cr_assert_eq(fo_options_default(&o), FO_SUCCESS);
      schedule_of(kinds[k], &o.schedule);
      rig r;
      cr_assert_eq(rig_make(&r, ALGS[a], groups, &o, tu_hash((uint64_t)a, k)), FO_SUCCESS, "%s",
                   fo_last_error());
      char ctx[96];
      snprintf(ctx, sizeof ctx, "algorithm %d, schedule %d, %d groups", (int)ALGS[a], kinds[k],
               groups);
      for (int s = 1; s <= 40; s++) {
        /* a learning rate changed between steps reaches the next one */
        if (s == 17) cr_assert_eq(fo_optimizer_set_lr(r.opt, groups - 1, 3e-3f), FO_SUCCESS);
        step_as_predicted(&r, ctx, s);
      }
      cr_assert_eq(fo_optimizer_destroy(r.opt), FO_SUCCESS);
    }
}

/* After a step the device decided, nothing is predicted until the state is
 * written whole again; then the predictions are right from the new count
 * (NAdam: the products of momentum coefficients follow it). */
Test(known_state, unknown_after_a_device_step_until_the_state_is_written, .init = host_scalars_on) {
  for (int a = 0; a < NALGS; a++) {
    fo_options o;
    cr_assert_eq(fo_options_default(&o), FO_SUCCESS);
    schedule_of(FO_SCHED_COSINE, &o.schedule);
    rig r;
    cr_assert_eq(rig_make(&r, ALGS[a], 2, &o, tu_hash(99, (uint64_t)a)), FO_SUCCESS);
    for (int s = 1; s <= 3; s++) step_as_predicted(&r, "before", s);
    /* the device decides a step (the prepare kernel): the copy is stale */
    fo_known_forget(r.opt, 0);
    fill_grads(&r);
    cr_assert_eq(fo_optimizer_step(r.opt, NULL), FO_SUCCESS);
    fo_known_step k;
    fo_step_state next;
    cr_assert_eq(predict(&r, &k, &next), 0, "algorithm %d: predicted from a stale copy", a);
    cr_assert_eq(fo_optimizer_set_step(r.opt, 11), FO_SUCCESS);
    for (int s = 12; s <= 15; s++) step_as_predicted(&r, "after set_step", s);

    /* a load writes the state whole: right again from the saved count */
    char path[] = "/tmp/fo_known_XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    close(fd);
    cr_assert_eq(fo_optimizer_save(r.opt, path, NULL), FO_SUCCESS, "%s", fo_last_error());
    fo_known_forget(r.opt, 0);
    fill_grads(&r);
    cr_assert_eq(fo_optimizer_step(r.opt, NULL), FO_SUCCESS);
    cr_assert_eq(predict(&r, &k, &next), 0);
    cr_assert_eq(fo_optimizer_load(r.opt, path, NULL), FO_SUCCESS, "%s", fo_last_error());
    unlink(path);
    for (int s = 16; s <= 18; s++) step_as_predicted(&r, "after a load", s);
    cr_assert_eq(fo_optimizer_destroy(r.opt), FO_SUCCESS);
  }
}

static int predicts(rig *r) {
  fo_known_step k;
  fo_step_state next;
  return predict(r, &k, &next);
}

Test(known_state, what_the_host_does_not_decide, .init = host_scalars_on) {
  fo_options o;
  rig r;
  /* a pre-pass: clipping, then loss scaling (the device's sums decide) */
  cr_assert_eq(fo_options_default(&o), FO_SUCCESS);
  o.max_grad_norm = 1.0f;
  cr_assert_eq(rig_make(&r, FO_ALG_ADAMW, 1, &o, 1), FO_SUCCESS);
  cr_assert_eq(predicts(&r), 0, "clipping");
  cr_assert_eq(fo_optimizer_destroy(r.opt), FO_SUCCESS);
  cr_assert_eq(fo_options_default(&o), FO_SUCCESS);
  o.loss_scaler.enabled = 1;
  cr_assert_eq(rig_make(&r, FO_ALG_ADAMW, 1, &o, 2), FO_SUCCESS);
  cr_assert_eq(predicts(&r), 0, "loss scaling");
  cr_assert_eq(fo_optimizer_destroy(r.opt), FO_SUCCESS);

  /* more groups than a launch carries */
  cr_assert_eq(fo_options_default(&o), FO_SUCCESS);
  cr_assert_eq(rig_make(&r, FO_ALG_ADAMW, FO_KNOWN_GROUPS + 1, &o, 3), FO_SUCCESS);
  cr_assert_eq(predicts(&r), 0, "%d groups", FO_KNOWN_GROUPS + 1);
  cr_assert_eq(fo_optimizer_destroy(r.opt), FO_SUCCESS);

  /* an exhausted count: the skip is the device path's to record */
  cr_assert_eq(rig_make(&r, FO_ALG_ADAMW, 1, &o, 4), FO_SUCCESS);
  cr_assert_eq(predicts(&r), 1);
  cr_assert_eq(fo_optimizer_set_step(r.opt, FO_MAX_STEP), FO_SUCCESS);
  cr_assert_eq(predicts(&r), 0, "step count FO_MAX_STEP");
  cr_assert_eq(fo_optimizer_set_step(r.opt, FO_MAX_STEP - 1), FO_SUCCESS);
  cr_assert_eq(predicts(&r), 1, "one step left");

  /* once captured into a graph: never again, whatever is written */
  fo_known_forget(r.opt, 1);
  cr_assert_eq(predicts(&r), 0);
  cr_assert_eq(fo_optimizer_set_step(r.opt, 5), FO_SUCCESS);
  cr_assert_eq(predicts(&r), 0, "after a capture and set_step");
  cr_assert_eq(fo_optimizer_destroy(r.opt), FO_SUCCESS);

  /* FUSEDOPT_HOST_SCALARS=0 at create: never; other values: as usual */
  cr_assert_eq(setenv("FUSEDOPT_HOST_SCALARS", "0", 1), 0);
  cr_assert_eq(rig_make(&r, FO_ALG_ADAMW, 1, &o, 5), FO_SUCCESS);
  cr_assert_eq(predicts(&r), 0, "FUSEDOPT_HOST_SCALARS=0");
  cr_assert_eq(fo_optimizer_destroy(r.opt), FO_SUCCESS);
  cr_assert_eq(setenv("FUSEDOPT_HOST_SCALARS", "1", 1), 0);
  cr_assert_eq(rig_make(&r, FO_ALG_ADAMW, 1, &o, 6), FO_SUCCESS);
  cr_assert_eq(predicts(&r), 1, "FUSEDOPT_HOST_SCALARS=1");
  cr_assert_eq(fo_optimizer_destroy(r.opt), FO_SUCCESS);
  cr_assert_eq(unsetenv("FUSEDOPT_HOST_SCALARS"), 0);
}
