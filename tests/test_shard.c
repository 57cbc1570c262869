/*
 * test_shard.c -- CPU tier of the sharded optimizer state (ZeRO-1), in one
 * process, over a fake host communicator (tests/support/fake_comm.h).
 *
 * The fake plays rank `rank` of `size` ranks that all hold this rank's
 * gradients.  Its reduce-scatter multiplies this rank's part by size (exact:
 * size is a power of two) and fills every other part with NaN, so a step
 * that read a gradient outside its shard would see a NaN; its all-gather
 * copies nothing in (the other ranks' parameters are not here), so the
 * elements outside the shard must come out of a step exactly as they went
 * in.  Inside the shard the parameters and the state must be bit-identical
 * to an optimizer without a communicator.  Real multi-rank runs are
 * tests/mpi's.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cr_status.h"
#include "fake_comm.h"
#include "fusedopt.h"
#include "internal.h"
#include "testutil.h"

/* --------------------------------------------------------------- ranges */

Test(shard, ranges_tile_the_arena_aligned_and_balanced) {
  static const int64_t totals[] = {0,          128,        256,        1280,     128 * 257,
                                   128 * 1000, 128 * 1001, 128 * 4097, 1LL << 40};
  /* more ranks than 128-element blocks too (a shard size rounded down
   * would leave the last blocks to no rank there) */
  static const int sizes[] = {1,   2,   3,   4,   5,   6,    7,    8,    9,
                              127, 128, 129, 200, 256, 1000, 4096, 65536};
  for (size_t t = 0; t < sizeof totals / sizeof totals[0]; t++)
    for (size_t z = 0; z < sizeof sizes / sizeof sizes[0]; z++) {
      const int size = sizes[z];
      int64_t next = 0, per = ((totals[t] + size - 1) / size + 127) / 128 * 128;
      for (int r = 0; r < size; r++) {
        int64_t first = -1, count = -1;
        fo_shard_range(totals[t], size, r, &first, &count);
        cr_assert(first == next && count >= 0 && count <= per && first % 128 == 0,
                  "total %lld size %d rank %d: [%lld, +%lld)", (long long)totals[t], size, r,
                  (long long)first, (long long)count);
        next = first + count;
      }
      cr_assert_eq(next, totals[t], "total %lld size %d: covered %lld", (long long)totals[t], size,
                   (long long)next);
    }
}

/* ------------------------------------------------------------- the rig */

#define NT 6
static const int64_t SIZES[NT] = {1000, 3, 0, 40970, 128, 7001};

typedef struct rig {
  fo_optimizer *opt;
  fo_options o;
} rig;

static fo_options options(fo_algorithm alg, fo_dtype pd, fo_dtype gd, int clip_scale) {
  fo_options o;
  fo_options_default(&o);
  o.algorithm = alg;
  o.storage = FO_STORAGE_ARENA;
  o.param_dtype = pd;
  o.grad_dtype = gd;
  o.num_threads = 2;
  if (clip_scale) {
    o.max_grad_norm = 1.0f;
    o.loss_scaler.enabled = 1;
    o.loss_scaler.init_scale = 1024.0f;
    o.loss_scaler.growth_interval = 2;
  }
  return o;
}

static void rig_make(rig *r, fo_options o) {
  fo_tensor_desc t[NT];
  memset(t, 0, sizeof t);
  for (int i = 0; i < NT; i++) t[i].numel = SIZES[i], t[i].group = i % 2;
  fo_hparams h[2];
  fo_hparams_default(o.algorithm, &h[0]);
  h[0].lr = 0.01f;
  if (o.algorithm == FO_ALG_SGD) h[0].momentum = 0.9f;
  h[1] = h[0];
  h[1].weight_decay = 0.0f;
  r->o = o;
  OK(fo_optimizer_create(&r->opt, &o, h, 2, t, NT));
}

/* Random parameters (the same for every rig: seeded), and master = them. */
static void rig_params(rig *r) {
  void *p = NULL;
  size_t bytes = 0;
  OK(fo_optimizer_arena(r->opt, FO_ROLE_PARAM, &p, &bytes));
  int64_t n = (int64_t)(bytes / fo_dtype_size(r->o.param_dtype));
  float *v = malloc((size_t)n * sizeof *v);
  tu_rng g;
  tu_rng_seed(&g, 11, 1);
  for (int64_t i = 0; i < n; i++) v[i] = (float)tu_rng_nonzero(&g, 0.01, 1.0);
  OK(fo_convert_from_f32(r->o.param_dtype, v, p, n));
  free(v);
  OK(fo_optimizer_sync_master(r->opt, NULL));
}

/* Step k's gradients, times the rig's loss scale. */
static void rig_grads(rig *r, int k) {
  void *p = NULL;
  size_t bytes = 0;
  OK(fo_optimizer_arena(r->opt, FO_ROLE_GRAD, &p, &bytes));
  int64_t n = (int64_t)(bytes / fo_dtype_size(r->o.grad_dtype));
  float *v = malloc((size_t)n * sizeof *v), s = 1.0f, *sp = NULL;
  if (fo_optimizer_loss_scale_ptr(r->opt, &sp) == FO_SUCCESS) s = *sp;
  tu_rng g;
  tu_rng_seed(&g, 12, (uint64_t)k);
  for (int64_t i = 0; i < n; i++) v[i] = (float)tu_rng_nonzero(&g, 1e-3, 0.5) * s;
  OK(fo_convert_from_f32(r->o.grad_dtype, v, p, n));
  free(v);
}

static void *arena(const rig *r, fo_role role, size_t *bytes) {
  void *p = NULL;
  size_t b = 0;
  OK(fo_optimizer_arena(r->opt, role, &p, &b));
  if (bytes) *bytes = b;
  return p;
}

/* ------------------------------------------------------ equal to plain */

static void shard_equals_plain(fo_algorithm alg, fo_dtype pd, fo_dtype gd, int clip_scale, int rank,
                               int size, size_t bucket) {
  fo_options o = options(alg, pd, gd, clip_scale);
  rig plain, sh;
  rig_make(&plain, o);
  rig_make(&sh, o);
  rig_params(&plain);
  rig_params(&sh);
  size_t pbytes = 0;
  unsigned char *before = malloc(1), *p0 = arena(&sh, FO_ROLE_PARAM, &pbytes);
  before = realloc(before, pbytes);
  memcpy(before, p0, pbytes);
  fake f;
  fo_comm *c = fake_shard_comm(&f, rank, size, 1);
  fo_dp_options d;
  OK(fo_dp_options_default(&d));
  d.shard_state = 1;
  d.bucket_bytes = bucket;
  OK(fo_optimizer_set_comm(sh.opt, c, &d));
  int64_t first = -1, count = -1;
  OK(fo_optimizer_get_shard(sh.opt, &first, &count));
  for (int k = 0; k < 6; k++) {
    rig_grads(&plain, k);
    rig_grads(&sh, k);
    OK(fo_optimizer_step(plain.opt, NULL));
    OK(fo_optimizer_step(sh.opt, NULL));
    fo_step_info a, b;
    OK(fo_optimizer_get_info(plain.opt, &a));
    OK(fo_optimizer_get_info(sh.opt, &b));
    if (size == 1) /* one rank: the whole norm */
      cr_assert(memcmp(&a, &b, sizeof a) == 0, "step %d: the step state differs", k);
    cr_assert(!b.last_step_skipped, "step %d was skipped: a gradient outside the shard leaked", k);
  }
  size_t ps = fo_dtype_size(pd);
  const unsigned char *pp = arena(&plain, FO_ROLE_PARAM, NULL),
                      *sp = arena(&sh, FO_ROLE_PARAM, NULL);
  cr_assert(memcmp(pp + first * ps, sp + first * ps, (size_t)count * ps) == 0,
            "the shard's parameters differ from the plain run's");
  cr_assert(memcmp(before, sp, (size_t)first * ps) == 0, "a parameter before the shard changed");
  size_t after = (size_t)(first + count) * ps;
  cr_assert(memcmp(before + after, sp + after, pbytes - after) == 0,
            "a parameter after the shard changed");
  for (int role = FO_ROLE_MASTER; role < FO_ROLE_COUNT; role++) {
    void *a = NULL, *b = NULL;
    size_t na = 0, nb = 0;
    fo_status st = fo_optimizer_arena(plain.opt, (fo_role)role, &a, &na);
    cr_assert_eq(fo_optimizer_arena(sh.opt, (fo_role)role, &b, &nb), st);
    if (st != FO_SUCCESS) continue;
    cr_assert_eq(nb, (size_t)count * 4, "role %d keeps %zu bytes for %lld elements", role, nb,
                 (long long)count);
    cr_assert(memcmp((float *)a + first, b, nb) == 0, "role %d: the shard's state differs", role);
  }
  int64_t steps = 6;
  cr_assert_eq(f.ag_bytes, steps * (int64_t)(size * (clip_scale ? 8 : 0)) + steps * (int64_t)pbytes,
               "all-gathered %lld bytes", (long long)f.ag_bytes);
  OK(fo_optimizer_destroy(sh.opt));
  OK(fo_optimizer_destroy(plain.opt));
  OK(fo_comm_destroy(c));
  free(before);
}

Test(shard, one_rank_is_bit_identical_to_no_communicator) {
  shard_equals_plain(FO_ALG_ADAMW, FO_DTYPE_BF16, FO_DTYPE_BF16, 1, 0, 1, 0);
  shard_equals_plain(FO_ALG_SGD, FO_DTYPE_F32, FO_DTYPE_F32, 0, 0, 1, 4096);
}

Test(shard, each_rank_updates_exactly_its_shard) {
  shard_equals_plain(FO_ALG_ADAMW, FO_DTYPE_F32, FO_DTYPE_F32, 0, 1, 4, 0);
  shard_equals_plain(FO_ALG_ADAM, FO_DTYPE_F16, FO_DTYPE_F16, 0, 3, 4, 20000);
  shard_equals_plain(FO_ALG_LION, FO_DTYPE_BF16, FO_DTYPE_F32, 0, 0, 2, 1);
  shard_equals_plain(FO_ALG_SGD, FO_DTYPE_BF16, FO_DTYPE_BF16, 0, 1, 2, 0);
}

/* ---------------------------------------------------------- refusals */

Test(shard, refusals_change_nothing) {
  fake f;
  fo_dp_options d;
  OK(fo_dp_options_default(&d));
  d.shard_state = 2;
  rig r;
  rig_make(&r, options(FO_ALG_ADAMW, FO_DTYPE_F32, FO_DTYPE_F32, 0));
  fo_comm *plain_ops = fake_shard_comm(&f, 0, 2, 0);
  FAILS(fo_optimizer_set_comm(r.opt, plain_ops, &d), FO_ERR_INVALID_ARGUMENT);
  d.shard_state = 1;
  FAILS(fo_optimizer_set_comm(r.opt, plain_ops, &d), FO_ERR_UNSUPPORTED);
  cr_assert(strstr(fo_last_error(), "reduce_scatter_sum"), "%s", fo_last_error());
  int64_t first = -1, count = -1, nb = -1;
  OK(fo_optimizer_get_shard(r.opt, &first, &count));
  OK(fo_optimizer_num_buckets(r.opt, &nb));
  size_t bytes = 0;
  arena(&r, FO_ROLE_EXP_AVG, &bytes);
  cr_assert(first == 0 && (size_t)count * 4 == bytes && nb == 0, "a refusal changed the state");
  FAILS(fo_optimizer_get_shard(NULL, &first, &count), FO_ERR_NULL_POINTER);
  OK(fo_comm_destroy(plain_ops));
  fake half; /* one shard op of the two is not enough */
  fo_comm *half_ops = fake_shard_comm(&half, 0, 2, 2);
  FAILS(fo_optimizer_set_comm(r.opt, half_ops, &d), FO_ERR_UNSUPPORTED);
  OK(fo_comm_destroy(half_ops));

  fake g;
  fo_comm *c = fake_shard_comm(&g, 1, 2, 1);
  OK(fo_optimizer_set_comm(r.opt, c, &d));
  FAILS(fo_optimizer_set_comm(r.opt, NULL, NULL), FO_ERR_INVALID_STATE);
  FAILS(fo_optimizer_set_comm(r.opt, c, &d), FO_ERR_INVALID_STATE);
  float *sp = NULL;
  FAILS(fo_optimizer_state_ptr(r.opt, 0, FO_ROLE_EXP_AVG, &sp), FO_ERR_INVALID_STATE);
  FAILS(fo_comm_destroy(c), FO_ERR_INVALID_STATE);
  OK(fo_optimizer_destroy(r.opt));
  OK(fo_comm_destroy(c));

  fo_options o = options(FO_ALG_ADAMW, FO_DTYPE_BF16, FO_DTYPE_BF16, 0);
  o.master_weights = 0;
  o.stochastic_rounding = 1;
  rig_make(&r, o);
  c = fake_shard_comm(&g, 0, 2, 1);
  FAILS(fo_optimizer_set_comm(r.opt, c, &d), FO_ERR_UNSUPPORTED);
  OK(fo_optimizer_destroy(r.opt));

  fo_tensor_desc t = {16, 0, NULL, NULL, NULL};
  float pbuf[16] = {1}, gbuf[16] = {1};
  t.param = pbuf, t.grad = gbuf;
  o = options(FO_ALG_ADAMW, FO_DTYPE_F32, FO_DTYPE_F32, 0);
  o.storage = FO_STORAGE_EXTERNAL;
  fo_hparams h;
  fo_hparams_default(FO_ALG_ADAMW, &h);
  fo_optimizer *ext = NULL;
  OK(fo_optimizer_create(&ext, &o, &h, 1, &t, 1));
  FAILS(fo_optimizer_set_comm(ext, c, &d), FO_ERR_UNSUPPORTED);
  OK(fo_optimizer_destroy(ext));
  OK(fo_comm_destroy(c));
}

/* ------------------------------------------------------------ failures */

typedef struct snapshot {
  unsigned char *param, *exp_avg;
  size_t pbytes, sbytes;
  fo_step_info info;
} snapshot;

static void snap(const rig *r, snapshot *s) {
  void *p = arena(r, FO_ROLE_PARAM, &s->pbytes), *m = arena(r, FO_ROLE_EXP_AVG, &s->sbytes);
  s->param = malloc(s->pbytes);
  s->exp_avg = malloc(s->sbytes);
  memcpy(s->param, p, s->pbytes);
  memcpy(s->exp_avg, m, s->sbytes);
  OK(fo_optimizer_get_info(r->opt, &s->info));
}

static void expect_unchanged(const rig *r, const snapshot *s) {
  fo_step_info now;
  OK(fo_optimizer_get_info(r->opt, &now));
  cr_assert(memcmp(s->param, arena(r, FO_ROLE_PARAM, NULL), s->pbytes) == 0, "a parameter changed");
  cr_assert(memcmp(s->exp_avg, arena(r, FO_ROLE_EXP_AVG, NULL), s->sbytes) == 0,
            "the state changed");
  cr_assert(now.step == s->info.step && now.loss_scale == s->info.loss_scale,
            "the step state changed");
  free(s->param);
  free(s->exp_avg);
}

/* Rank 1 of 2 of a sharded AdamW with clipping and loss scaling (a
 * pre-pass, so a norm agreement) over the fake communicator f, one
 * reduce-scatter per step; its communicator. */
static fo_comm *sharded_adamw(rig *r, fake *f) {
  rig_make(r, options(FO_ALG_ADAMW, FO_DTYPE_F32, FO_DTYPE_F32, 1));
  rig_params(r);
  fo_comm *c = fake_shard_comm(f, 1, 2, 1);
  fo_dp_options d;
  OK(fo_dp_options_default(&d));
  d.shard_state = 1;
  d.bucket_bytes = 0;
  OK(fo_optimizer_set_comm(r->opt, c, &d));
  return c;
}

/* A collective fails during step 2: which = 0 the gradients' reduce-scatter,
 * 1 the norm's all-gather, 2 the parameters' all-gather. */
static void failing(int which) {
  rig r;
  fake f;
  fo_comm *c = sharded_adamw(&r, &f);
  rig_grads(&r, 0);
  OK(fo_optimizer_step(r.opt, NULL));
  /* step 2: reduce-scatter call 2; all-gathers 3 (norm) and 4 (params) */
  if (which == 0)
    f.fail_rs = 2;
  else
    f.fail_ag = which == 1 ? 3 : 4;
  rig_grads(&r, 1);
  snapshot s;
  snap(&r, &s);
  FAILS(fo_optimizer_step(r.opt, NULL), FO_ERR_COMM);
  cr_assert(strstr(fo_last_error(), "injected"), "%s", fo_last_error());
  if (which < 2) {
    expect_unchanged(&r, &s);
    FAILS(fo_optimizer_step(r.opt, NULL), FO_ERR_COMM); /* the gradients are poisoned */
    OK(fo_optimizer_zero_grad(r.opt, NULL));
    rig_grads(&r, 1);
    OK(fo_optimizer_step(r.opt, NULL));
  } else {
    free(s.param);
    free(s.exp_avg);
    /* the shards were updated but not gathered: refuse until a load */
    FAILS(fo_optimizer_step(r.opt, NULL), FO_ERR_INVALID_STATE);
    /* the refusal names the original failure's status and message */
    cr_assert(
        strstr(fo_last_error(), "(communicator error: ") && strstr(fo_last_error(), "injected"),
        "%s", fo_last_error());
    FAILS(fo_optimizer_zero_grad(r.opt, NULL), FO_ERR_INVALID_STATE);
  }
  OK(fo_optimizer_destroy(r.opt));
  OK(fo_comm_destroy(c));
}

Test(shard_errors, reduce_scatter_failure_changes_nothing) {
  failing(0);
}
Test(shard_errors, norm_agreement_failure_changes_nothing) {
  failing(1);
}
Test(shard_errors, parameter_gather_failure_marks_the_state_faulted) {
  failing(2);
}

/* A failed norm agreement returns the step it was for to the FO_MAX_STEP
 * budget (it used to keep it): at step count FO_MAX_STEP - 1, a few failed
 * steps, each redone after zero_grad, leave the one step that is left,
 * and exactly one. */
Test(shard_errors, norm_agreement_failure_keeps_the_step_budget) {
  rig r;
  fake f;
  fo_comm *c = sharded_adamw(&r, &f);
  OK(fo_optimizer_set_step(r.opt, FO_MAX_STEP - 1));
  for (int k = 0; k < 3; k++) {
    rig_grads(&r, 20 + k);
    snapshot s;
    snap(&r, &s);
    int rs = f.rs_calls;
    f.fail_ag = f.ag_calls + 1; /* the step's first all-gather: the norm's */
    FAILS(fo_optimizer_step(r.opt, NULL), FO_ERR_COMM);
    cr_assert(strstr(fo_last_error(), "injected all-gather failure"), "%s", fo_last_error());
    cr_assert_eq(f.rs_calls, rs + 1, "the gradients were reduced before the agreement failed");
    expect_unchanged(&r, &s);
    OK(fo_optimizer_zero_grad(r.opt, NULL));
  }
  rig_grads(&r, 23);
  OK(fo_optimizer_step(r.opt, NULL));
  fo_step_info info;
  OK(fo_optimizer_get_info(r.opt, &info));
  cr_assert(info.step == FO_MAX_STEP && !info.last_step_skipped, "step %lld, skipped %d",
            (long long)info.step, info.last_step_skipped);
  rig_grads(&r, 24);
  FAILS(fo_optimizer_step(r.opt, NULL), FO_ERR_INVALID_STATE);
  cr_assert(strstr(fo_last_error(), "has reached FO_MAX_STEP"), "%s", fo_last_error());
  OK(fo_optimizer_destroy(r.opt));
  OK(fo_comm_destroy(c));
}
