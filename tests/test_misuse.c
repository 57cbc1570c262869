/*
 * test_misuse.c -- the mistakes the library refuses instead of letting them
 * pass in silence (issue 19, docs/install.md "No silent misuse"):
 *
 *   - arena master weights never set from the written parameters: the
 *     first step (and any save) refuses, changing nothing, until
 *     fo_optimizer_sync_master() or a load;
 *   - a load that would move a tensor to another parameter group is
 *     refused, naming the tensor, changing nothing;
 *   - fo_optimizer_get_next_lr() is the rate the next step applies (the
 *     same bits), and lr_factor reads 1 before the first step;
 *   - a failed save names the path asked for, then the temporary file.
 *
 * (Names a checkpoint cannot hold, refused at create, are in
 * test_checkpoint.c; the loss-scale pointer without scaling in test_api_accessors.c.)
 */
#define _POSIX_C_SOURCE 200809L

#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fusedopt.h"
#include "internal.h"
#include "testutil.h"

#define OK(call)                                                                               \
  do {                                                                                         \
    fo_status s_ = (call);                                                                     \
    cr_assert_eq(s_, FO_SUCCESS, "%s: %s (%s)", #call, fo_status_string(s_), fo_last_error()); \
  } while (0)

#define NT 3
static const int64_t sizes[NT] = {5, 300, 17};

static uint64_t fresh_seed(void) {
  return (uint64_t)getpid() * 0x9E3779B97F4A7C15ull ^ (uint64_t)tu_now();
}

/* Fresh random values in [-1, 1] without a zero, as bf16. */
static void fill_bf16(tu_rng *r, uint16_t *dst, int64_t n) {
  float *f = malloc((size_t)n * sizeof *f);
  cr_assert_not_null(f);
  for (int64_t i = 0; i < n; i++) f[i] = (float)tu_rng_nonzero(r, -1.0, 1.0);
  OK(fo_convert_from_f32(FO_DTYPE_BF16, f, dst, n));
  free(f);
}

/* A bf16 AdamW optimizer over arena storage with master weights. */
static fo_optimizer *arena_bf16(void) {
  fo_options o;
  OK(fo_options_default(&o));
  o.storage = FO_STORAGE_ARENA;
  o.param_dtype = o.grad_dtype = FO_DTYPE_BF16;
  fo_hparams h;
  OK(fo_hparams_default(FO_ALG_ADAMW, &h));
  fo_tensor_desc t[NT];
  static const char *const names[NT] = {"a", "b", "c"};
  for (int i = 0; i < NT; i++) t[i] = (fo_tensor_desc){sizes[i], 0, NULL, NULL, names[i]};
  fo_optimizer *opt = NULL;
  OK(fo_optimizer_create(&opt, &o, &h, 1, t, NT));
  return opt;
}

/* Write fresh parameters and gradients into the arena; *params gets a copy
 * of the parameter arena. */
static void write_arena(fo_optimizer *opt, tu_rng *r, uint16_t **params, size_t *bytes) {
  void *p, *g;
  size_t pb, gb;
  OK(fo_optimizer_arena(opt, FO_ROLE_PARAM, &p, &pb));
  OK(fo_optimizer_arena(opt, FO_ROLE_GRAD, &g, &gb));
  fill_bf16(r, p, (int64_t)(pb / 2));
  fill_bf16(r, g, (int64_t)(gb / 2));
  *params = malloc(pb);
  cr_assert_not_null(*params);
  memcpy(*params, p, pb);
  *bytes = pb;
}

static void scratch(char *dir, size_t cap) {
  snprintf(dir, cap, "/tmp/fo_misuse_XXXXXX");
  cr_assert_not_null(mkdtemp(dir));
}

Test(misuse, arena_master_never_synced_is_refused) {
  tu_rng r;
  tu_rng_seed(&r, fresh_seed(), 1);
  fo_optimizer *opt = arena_bf16();
  uint16_t *before;
  size_t pb;
  write_arena(opt, &r, &before, &pb);
  void *p;
  size_t n;
  OK(fo_optimizer_arena(opt, FO_ROLE_PARAM, &p, &n));

  /* the step refuses, saying what to do, and changes nothing */
  fo_status st = fo_optimizer_step(opt, NULL);
  cr_expect_eq(st, FO_ERR_INVALID_STATE, "%s", fo_last_error());
  cr_expect(strstr(fo_last_error(), "fo_optimizer_step: ") == fo_last_error() &&
                strstr(fo_last_error(), "fo_optimizer_sync_master()"),
            "%s", fo_last_error());
  cr_expect(memcmp(p, before, pb) == 0, "a refused step changed the parameters");
  int64_t step = -1;
  OK(fo_optimizer_get_step(opt, &step));
  cr_expect_eq(step, 0);

  /* so does a save: nothing is written */
  char dir[64], path[128];
  scratch(dir, sizeof dir);
  snprintf(path, sizeof path, "%s/never.safetensors", dir);
  st = fo_optimizer_save(opt, path, NULL);
  cr_expect_eq(st, FO_ERR_INVALID_STATE, "%s", fo_last_error());
  cr_expect(access(path, F_OK) != 0, "a refused save wrote %s", path);
  st = fo_optimizer_save_gathered(opt, path, 0, NULL);
  cr_expect_eq(st, FO_ERR_INVALID_STATE, "%s", fo_last_error());

  /* sync_master sets the master weights from the written parameters */
  OK(fo_optimizer_sync_master(opt, NULL));
  float *m;
  OK(fo_optimizer_state_ptr(opt, 1, FO_ROLE_MASTER, &m));
  float *want = malloc((size_t)sizes[1] * sizeof *want);
  void *p1;
  OK(fo_optimizer_param_ptr(opt, 1, &p1));
  OK(fo_convert_to_f32(FO_DTYPE_BF16, p1, want, sizes[1]));
  cr_expect(memcmp(m, want, (size_t)sizes[1] * sizeof *m) == 0, "master != widened parameters");
  OK(fo_optimizer_step(opt, NULL));
  OK(fo_optimizer_get_step(opt, &step));
  cr_expect_eq(step, 1);
  /* the step moved the parameters by about lr, not to zero: Adam's first
   * update is lr * sign(g) (+ decay), so each value stays within 2 lr */
  OK(fo_convert_to_f32(FO_DTYPE_BF16, p1, want, sizes[1]));
  float *orig = malloc((size_t)sizes[1] * sizeof *orig);
  OK(fo_convert_to_f32(FO_DTYPE_BF16, (const char *)before + ((const char *)p1 - (const char *)p),
                       orig, sizes[1]));
  for (int64_t i = 0; i < sizes[1]; i++)
    cr_assert(want[i] - orig[i] < 0.02f && orig[i] - want[i] < 0.02f,
              "element %lld went from %g to %g", (long long)i, orig[i], want[i]);
  OK(fo_optimizer_save(opt, path, NULL));

  /* a load sets the master weights too */
  fo_optimizer *b = arena_bf16();
  cr_expect_eq(fo_optimizer_step(b, NULL), FO_ERR_INVALID_STATE);
  OK(fo_optimizer_load(b, path, NULL));
  OK(fo_optimizer_step(b, NULL));
  fo_optimizer_destroy(b);
  fo_optimizer_destroy(opt);
  unlink(path);
  rmdir(dir);
  free(want);
  free(orig);
  free(before);
}

/* Without master weights (fp32 parameters, or bf16 without) there is
 * nothing to set: the arena steps at once. */
Test(misuse, arena_without_master_weights_steps_at_once) {
  for (int k = 0; k < 2; k++) {
    fo_options o;
    OK(fo_options_default(&o));
    o.storage = FO_STORAGE_ARENA;
    if (k) {
      o.param_dtype = o.grad_dtype = FO_DTYPE_BF16;
      o.master_weights = 0;
    }
    fo_hparams h;
    OK(fo_hparams_default(FO_ALG_ADAMW, &h));
    fo_tensor_desc t = {64, 0, NULL, NULL, "w"};
    fo_optimizer *opt = NULL;
    OK(fo_optimizer_create(&opt, &o, &h, 1, &t, 1));
    OK(fo_optimizer_step(opt, NULL));
    fo_optimizer_destroy(opt);
  }
}

/* A two-group optimizer over external fp32 tensors. */
typedef struct model {
  fo_optimizer *opt;
  float *p[NT], *g[NT];
} model;

static void model_create(model *m, tu_rng *r, const int groups[NT]) {
  fo_options o;
  OK(fo_options_default(&o));
  fo_hparams h[2];
  OK(fo_hparams_default(FO_ALG_ADAMW, &h[0]));
  h[1] = h[0];
  h[1].weight_decay = 0.0f;
  h[1].lr = (float)tu_rng_range(r, 1e-4, 1e-2);
  static const char *const names[NT] = {"embed", "fc.weight", "fc.bias"};
  fo_tensor_desc t[NT];
  for (int i = 0; i < NT; i++) {
    m->p[i] = malloc((size_t)sizes[i] * sizeof(float));
    m->g[i] = malloc((size_t)sizes[i] * sizeof(float));
    cr_assert(m->p[i] && m->g[i]);
    for (int64_t k = 0; k < sizes[i]; k++) {
      m->p[i][k] = (float)tu_rng_nonzero(r, -1.0, 1.0);
      m->g[i][k] = (float)tu_rng_nonzero(r, -1.0, 1.0);
    }
    t[i] = (fo_tensor_desc){sizes[i], groups[i], m->p[i], m->g[i], names[i]};
  }
  OK(fo_optimizer_create(&m->opt, &o, h, 2, t, NT));
}

static void model_destroy(model *m) {
  fo_optimizer_destroy(m->opt);
  for (int i = 0; i < NT; i++) {
    free(m->p[i]);
    free(m->g[i]);
  }
}

Test(misuse, load_refuses_to_move_a_tensor_to_another_group) {
  tu_rng r;
  tu_rng_seed(&r, fresh_seed(), 2);
  static const int saved_groups[NT] = {0, 0, 1};
  static const int moved_groups[NT] = {0, 1, 1}; /* fc.weight moved to group 1 */
  model a, b, c;
  model_create(&a, &r, saved_groups);
  OK(fo_optimizer_step(a.opt, NULL));
  char dir[64], path[128];
  scratch(dir, sizeof dir);
  snprintf(path, sizeof path, "%s/groups.safetensors", dir);
  OK(fo_optimizer_save(a.opt, path, NULL));

  model_create(&b, &r, moved_groups);
  float *keep = malloc((size_t)sizes[1] * sizeof *keep);
  memcpy(keep, b.p[1], (size_t)sizes[1] * sizeof *keep);
  fo_status st = fo_optimizer_load(b.opt, path, NULL);
  cr_expect_eq(st, FO_ERR_CHECKPOINT, "%s", fo_last_error());
  const char *msg = fo_last_error();
  cr_expect(strstr(msg, "fo_optimizer_load: ") == msg && strstr(msg, "\"fc.weight\"") &&
                strstr(msg, "group 0") && strstr(msg, "group 1"),
            "the message must name the tensor and both groups: %s", msg);
  cr_expect(memcmp(keep, b.p[1], (size_t)sizes[1] * sizeof *keep) == 0,
            "a refused load changed the parameters");
  int64_t step = -1;
  OK(fo_optimizer_get_step(b.opt, &step));
  cr_expect_eq(step, 0, "a refused load changed the step count");

  /* the same groups load */
  model_create(&c, &r, saved_groups);
  OK(fo_optimizer_load(c.opt, path, NULL));
  for (int i = 0; i < NT; i++)
    cr_expect(memcmp(a.p[i], c.p[i], (size_t)sizes[i] * sizeof(float)) == 0, "tensor %d", i);
  model_destroy(&a);
  model_destroy(&b);
  model_destroy(&c);
  free(keep);
  unlink(path);
  rmdir(dir);
}

/* fo_optimizer_get_next_lr: the rate the next step applies, the same bits,
 * through a warmup and a cosine decay; lr_factor is 1 before the first
 * step, then the factor of the last applied step. */
Test(misuse, next_lr_is_the_rate_the_step_applies) {
  tu_rng r;
  tu_rng_seed(&r, fresh_seed(), 3);
  fo_options o;
  OK(fo_options_default(&o));
  o.schedule.kind = FO_SCHED_COSINE;
  o.schedule.warmup_steps = 3;
  o.schedule.total_steps = 9;
  o.schedule.min_ratio = (float)tu_rng_range(&r, 0.05, 0.5);
  fo_hparams h[2];
  OK(fo_hparams_default(FO_ALG_ADAMW, &h[0]));
  h[0].lr = (float)tu_rng_range(&r, 1e-4, 1e-1);
  h[1] = h[0];
  h[1].lr = (float)tu_rng_range(&r, 1e-4, 1e-1);
  float p[8], g[8];
  for (int i = 0; i < 8; i++) {
    p[i] = (float)tu_rng_nonzero(&r, -1, 1);
    g[i] = (float)tu_rng_nonzero(&r, -1, 1);
  }
  fo_tensor_desc t[2] = {{4, 0, p, g, "x"}, {4, 1, p + 4, g + 4, "y"}};
  fo_optimizer *opt = NULL;
  OK(fo_optimizer_create(&opt, &o, h, 2, t, 2));
  fo_step_info info;
  OK(fo_optimizer_get_info(opt, &info));
  cr_expect_eq(info.lr_factor, 1.0f, "lr_factor before the first step: %g", info.lr_factor);
  float next = -1.0f, base = -1.0f;
  OK(fo_optimizer_get_next_lr(opt, 1, &next));
  cr_expect_eq(next, (float)((double)h[1].lr / 3.0), "first warmup step: %g", next);
  OK(fo_optimizer_get_lr(opt, 1, &base));
  cr_expect_eq(base, h[1].lr, "get_lr is the base rate");
  for (int s = 0; s < 12; s++) {
    float want[2];
    for (int k = 0; k < 2; k++) OK(fo_optimizer_get_next_lr(opt, k, &want[k]));
    OK(fo_optimizer_step(opt, NULL));
    for (int k = 0; k < 2; k++)
      cr_expect(opt->state->groups[k].lr == want[k], "step %d group %d: applied %a, said %a", s + 1,
                k, (double)opt->state->groups[k].lr, (double)want[k]);
    OK(fo_optimizer_get_info(opt, &info));
    cr_expect(info.lr_factor > 0.0f && (float)((double)h[0].lr * info.lr_factor) != 0.0f);
  }
  cr_expect_eq(fo_optimizer_get_next_lr(opt, 2, &next), FO_ERR_INVALID_ARGUMENT);
  cr_expect_eq(fo_optimizer_get_next_lr(opt, 0, NULL), FO_ERR_NULL_POINTER);
  cr_expect_eq(fo_optimizer_get_next_lr(NULL, 0, &next), FO_ERR_NULL_POINTER);
  fo_optimizer_destroy(opt);
}

/* A failed save names the path the caller asked for first, then the
 * temporary file. */
Test(misuse, failed_save_names_the_path_asked_for) {
  tu_rng r;
  tu_rng_seed(&r, fresh_seed(), 4);
  static const int groups[NT] = {0, 1, 0};
  model a;
  model_create(&a, &r, groups);
  char dir[64], path[160];
  scratch(dir, sizeof dir);
  /* a directory that does not exist: the temporary file cannot be made */
  snprintf(path, sizeof path, "%s/missing/ck.safetensors", dir);
  fo_status st = fo_optimizer_save(a.opt, path, NULL);
  cr_expect_eq(st, FO_ERR_IO, "%s", fo_last_error());
  char want[256];
  snprintf(want, sizeof want, "fo_optimizer_save: cannot create \"%s\" (through its temporary file",
           path);
  cr_expect(strncmp(fo_last_error(), want, strlen(want)) == 0, "\"%s\"", fo_last_error());
  cr_expect(strstr(fo_last_error(), "No such file or directory"), "%s", fo_last_error());
  /* a failed write (injected: a full disk) too */
  snprintf(path, sizeof path, "%s/ck.safetensors", dir);
  OK(fo_inject_fault(a.opt, FO_FAULT_SAVE_WRITE));
  st = fo_optimizer_save(a.opt, path, NULL);
  OK(fo_inject_fault(a.opt, FO_FAULT_NONE));
  cr_expect_eq(st, FO_ERR_IO, "%s", fo_last_error());
  snprintf(want, sizeof want, "fo_optimizer_save: cannot write (injected fault) \"%s\" (through",
           path);
  cr_expect(strncmp(fo_last_error(), want, strlen(want)) == 0, "\"%s\"", fo_last_error());
  cr_expect(access(path, F_OK) != 0, "a failed save left %s", path);
  model_destroy(&a);
  rmdir(dir);
}

/* Cosine with restarts whose next period would not fit int64 (period x
 * period_mult past 2^63): that period never ends, so the rate stays near
 * its start instead of wrapping through the cosine again. */
Test(misuse, restarts_whose_next_period_overflows_never_end) {
  fo_options o;
  OK(fo_options_default(&o));
  o.schedule.kind = FO_SCHED_COSINE_RESTARTS;
  o.schedule.period = 1000;
  o.schedule.period_mult = (int64_t)1 << 54; /* 1000 x 2^54 > 2^63 */
  fo_hparams h;
  OK(fo_hparams_default(FO_ALG_SGD, &h));
  h.lr = 0.25f;
  float p[4] = {1, 2, 3, 4}, g[4] = {0.5f, -0.5f, 0.25f, 1};
  fo_tensor_desc t = {4, 0, p, g, NULL};
  fo_optimizer *opt = NULL;
  OK(fo_optimizer_create(&opt, &o, &h, 1, &t, 1));
  float next = -1.0f;
  OK(fo_optimizer_set_step(opt, 500)); /* mid first period: half the rate */
  OK(fo_optimizer_get_next_lr(opt, 0, &next));
  cr_expect(fabsf(next - 0.125f) < 0.002f, "step 501: %g", (double)next);
  static const int64_t steps[] = {1000, 1500, 1999, 2500, 3000, (int64_t)1 << 50};
  for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
    OK(fo_optimizer_set_step(opt, steps[i]));
    OK(fo_optimizer_get_next_lr(opt, 0, &next));
    cr_expect(next > 0.2499f && next <= 0.25f,
              "after %lld steps: %g (the second period "
              "is endless)",
              (long long)steps[i], (double)next);
  }
  fo_optimizer_destroy(opt);
}
