/*
 * test_shard_tensor_norms.c -- LAMB and LARS over a sharded state
 * (ZeRO-1), CPU tier, ranks as threads (tests/support/thread_ranks.h).
 *
 * Their updates scale each tensor by norms of the whole tensor, which a
 * shard cuts: each rank sums its pieces' squares, the ranks all-gather
 * those per-tensor sums and add them in rank order (docs/data-parallel.md).
 * What is shown, over the checkpoint harness's model (a tensor split
 * between ranks, an empty tensor in the middle, two groups, the second
 * without trust ratios):
 *   - N = 2 and 3 sharded ranks equal the plain data-parallel run (every
 *     rank a whole state) within the rounding of the norms' order of
 *     addition: parameters and every shard of the state;
 *   - one sharded rank is bit-identical to the plain run (the same blocks,
 *     the same sums);
 *   - a sharded run repeated is bit-identical, on every rank.
 * A rank that used only its own pieces' norms would be off by far more
 * than the tolerance on the split tensor.
 */
#define _POSIX_C_SOURCE 200809L

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "ckpt_harness.h"
#include "shard_shots.h"
#include "thread_ranks.h"

#define STEPS 6

static ck_cfg cfg_for(fo_algorithm alg) {
  ck_cfg c;
  memset(&c, 0, sizeof c);
  snprintf(c.label, sizeof c.label, "%s-f32", fo_algorithm_string(alg));
  c.alg = alg;
  c.exec = FO_EXEC_CPU;
  c.storage = FO_STORAGE_ARENA;
  c.pd = c.gd = FO_DTYPE_F32;
  c.momentum = alg == FO_ALG_LARS ? 0.9f : 0.0f;
  c.nesterov = alg == FO_ALG_LARS;
  c.clip = 0.7f; /* the pre-pass too */
  return c;
}

/* A run of n ranks, sharded or not, STEPS steps; every rank's shot. */
static void run(const ck_cfg *c, int n, int shard, fleet_shot *out) {
  fleet f;
  fleet_make(&f, c, n, shard, 77);
  /* ck_hparams leaves group 1 without trust ratios; the tensor the ranks
   * split is in group 1: give it its ratio */
  for (int k = 0; k < n; k++) {
    fo_hparams h;
    CK_OK(fo_optimizer_get_hparams(f.r[k].opt, 1, &h));
    h.layer_adaptation = 1;
    CK_OK(fo_optimizer_set_hparams(f.r[k].opt, 1, &h));
  }
  fleet_steps(&f, 0, STEPS);
  fleet_take(&f, out);
  fleet_free(&f);
}

/* float arrays a[0..n) and b[0..n) agree within rel * magnitude. */
static void expect_close(const float *a, const float *b, int64_t n, double rel, const char *what) {
  for (int64_t i = 0; i < n; i++) {
    double d = fabs((double)a[i] - (double)b[i]);
    double m = fmax(fabs((double)a[i]), fabs((double)b[i]));
    cr_assert(d <= rel * m + 1e-12, "%s: element %lld: %.9g vs %.9g", what, (long long)i,
              (double)a[i], (double)b[i]);
  }
}

/* Every rank of the sharded run against rank 0 of the plain one. */
static void expect_near_plain(const fleet_shot *plain, const fleet_shot *sh, const char *label) {
  const shot *w = &plain->s[0];
  for (int k = 0; k < sh->n; k++) {
    const shot *s = &sh->s[k];
    char what[160];
    cr_assert_eq(s->info.step, w->info.step, "%s rank %d: step count", label, k);
    snprintf(what, sizeof what, "%s rank %d parameters", label, k);
    cr_assert_eq(s->bytes[FO_ROLE_PARAM], w->bytes[FO_ROLE_PARAM]);
    expect_close((const float *)w->buf[FO_ROLE_PARAM], (const float *)s->buf[FO_ROLE_PARAM],
                 (int64_t)(w->bytes[FO_ROLE_PARAM] / 4), 2e-6, what);
    for (int r = FO_ROLE_MASTER; r < FO_ROLE_COUNT; r++) {
      if (!w->buf[r]) continue;
      cr_assert(s->buf[r] != NULL, "%s rank %d: role %d missing", label, k, r);
      cr_assert_eq(s->bytes[r], (size_t)s->count * 4);
      snprintf(what, sizeof what, "%s rank %d role %d", label, k, r);
      expect_close((const float *)w->buf[r] + s->first, (const float *)s->buf[r], s->count, 2e-6,
                   what);
    }
  }
}

static void check(fo_algorithm alg) {
  ck_cfg c = cfg_for(alg);
  fleet_shot plain1, one;
  run(&c, 1, 0, &plain1);
  run(&c, 1, 1, &one);
  whole_expect_fleet(&plain1.s[0], &one, 0, "one sharded rank against the plain run");
  fleet_shot_free(&one);
  fleet_shot_free(&plain1);
  for (int n = 2; n <= 3; n++) {
    fleet_shot plain, a, b;
    char label[64];
    snprintf(label, sizeof label, "%s, %d ranks", c.label, n);
    run(&c, n, 0, &plain);
    run(&c, n, 1, &a);
    run(&c, n, 1, &b);
    expect_near_plain(&plain, &a, label);
    fleet_shot_expect(&a, &b, "a sharded run repeated");
    fleet_shot_free(&plain);
    fleet_shot_free(&a);
    fleet_shot_free(&b);
  }
}

Test(shard_tensor_norms, lamb_sharded_equals_plain) {
  check(FO_ALG_LAMB);
}

Test(shard_tensor_norms, lars_sharded_equals_plain) {
  check(FO_ALG_LARS);
}
