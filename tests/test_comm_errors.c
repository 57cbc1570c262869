/*
 * test_comm_errors.c -- CPU tier of the communicators, in one process: a
 * collective that fails (the fake back-end of tests/support/fake_comm.h
 * fails the k-th call on request) leaves the parameters and the state
 * untouched and poisons the optimizer until zero_grad.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm_rig.h"
#include "cr_status.h"
#include "fake_comm.h"
#include "fusedopt.h"
#include "testutil.h"

/* --------------------------------------------------------------- errors */

typedef struct snapshot {
  unsigned char *bytes[NT];
  int64_t step;
} snapshot;

static void snap(const rig *r, fo_dtype pd, snapshot *s) {
  for (int i = 0; i < NT; i++) {
    void *p;
    float *m;
    size_t pb = (size_t)SIZES[i] * fo_dtype_size(pd), mb = (size_t)SIZES[i] * 4;
    OK(fo_optimizer_param_ptr(r->opt, i, &p));
    OK(fo_optimizer_state_ptr(r->opt, i, FO_ROLE_EXP_AVG, &m));
    s->bytes[i] = malloc(pb + mb + 1);
    cr_assert(s->bytes[i]);
    memcpy(s->bytes[i], p, pb);
    memcpy(s->bytes[i] + pb, m, mb);
  }
  OK(fo_optimizer_get_step(r->opt, &s->step));
}

static void expect_unchanged(const rig *r, fo_dtype pd, const snapshot *s) {
  for (int i = 0; i < NT; i++) {
    void *p;
    float *m;
    size_t pb = (size_t)SIZES[i] * fo_dtype_size(pd), mb = (size_t)SIZES[i] * 4;
    OK(fo_optimizer_param_ptr(r->opt, i, &p));
    OK(fo_optimizer_state_ptr(r->opt, i, FO_ROLE_EXP_AVG, &m));
    cr_assert(memcmp(s->bytes[i], p, pb) == 0, "tensor %d: parameters changed", i);
    cr_assert(memcmp(s->bytes[i] + pb, m, mb) == 0, "tensor %d: state changed", i);
  }
  int64_t step;
  OK(fo_optimizer_get_step(r->opt, &step));
  cr_assert_eq(step, s->step);
}

static void snap_free(snapshot *s) {
  for (int i = 0; i < NT; i++) free(s->bytes[i]);
}

/* A collective that fails, in the step or in an early bucket: FO_ERR_COMM
 * with the back-end's message, the parameters and state untouched, every
 * later step and reduce refused until zero_grad; then training goes on. */
static void failing_collective(int fail_at, int early) {
  config c = {FO_STORAGE_EXTERNAL, FO_DTYPE_F32, FO_DTYPE_F32, 2, 1, 0};
  rig r;
  rig_make(&r, &c);
  fake f;
  fo_comm *comm = fake_comm(&f, 4);
  fo_dp_options o;
  OK(fo_dp_options_default(&o));
  o.bucket_bytes = 1; /* a bucket per tensor: failures part way through */
  OK(fo_optimizer_set_comm(r.opt, comm, &o));
  rig_grads(&r, c.grad_dtype, 0, 0);
  OK(fo_optimizer_step(r.opt, NULL));
  snapshot s;
  snap(&r, c.param_dtype, &s);
  rig_grads(&r, c.grad_dtype, 1, 0);
  f.fail_at = f.calls + fail_at;
  if (early) {
    for (int b = 0; b < fail_at - 1; b++) OK(fo_optimizer_reduce_bucket(r.opt, b, NULL));
    FAILS(fo_optimizer_reduce_bucket(r.opt, fail_at - 1, NULL), FO_ERR_COMM);
    cr_expect(strstr(fo_last_error(), "fo_optimizer_reduce_bucket"), "%s", fo_last_error());
  } else {
    FAILS(fo_optimizer_step(r.opt, NULL), FO_ERR_COMM);
    cr_expect(strstr(fo_last_error(), "fo_optimizer_step"), "%s", fo_last_error());
  }
  cr_expect(strstr(fo_last_error(), "injected failure"), "%s", fo_last_error());
  expect_unchanged(&r, c.param_dtype, &s);
  int calls = f.calls;
  FAILS(fo_optimizer_step(r.opt, NULL), FO_ERR_COMM);
  cr_expect(strstr(fo_last_error(), "earlier all-reduce"), "%s", fo_last_error());
  FAILS(fo_optimizer_reduce_grads(r.opt, NULL), FO_ERR_COMM);
  FAILS(fo_optimizer_reduce_bucket(r.opt, NT - 1, NULL), FO_ERR_COMM);
  cr_expect_eq(f.calls, calls, "no collective after the failure");
  expect_unchanged(&r, c.param_dtype, &s);
  OK(fo_optimizer_zero_grad(r.opt, NULL));
  rig_grads(&r, c.grad_dtype, 1, 0);
  OK(fo_optimizer_step(r.opt, NULL));
  int64_t step;
  OK(fo_optimizer_get_step(r.opt, &step));
  cr_expect_eq(step, s.step + 1);
  snap_free(&s);
  OK(fo_optimizer_set_comm(r.opt, NULL, NULL));
  rig_free(&r);
  OK(fo_comm_destroy(comm));
}

Test(comm_errors, failure_in_the_step_never_steps) {
  failing_collective(3, 0);
}
Test(comm_errors, failure_in_the_first_collective) {
  failing_collective(1, 0);
}
Test(comm_errors, failure_in_an_early_bucket) {
  failing_collective(2, 1);
}

Test(comm_errors, a_poisoned_optimizer_still_refuses_after_detaching) {
  config c = {FO_STORAGE_ARENA, FO_DTYPE_F32, FO_DTYPE_F32, 0, 0, 0};
  rig r;
  rig_make(&r, &c);
  fake f;
  fo_comm *comm = fake_comm(&f, 4);
  OK(fo_optimizer_set_comm(r.opt, comm, NULL));
  f.fail_at = 1;
  FAILS(fo_optimizer_step(r.opt, NULL), FO_ERR_COMM);
  OK(fo_optimizer_set_comm(r.opt, NULL, NULL));
  FAILS(fo_optimizer_step(r.opt, NULL), FO_ERR_COMM);
  OK(fo_optimizer_zero_grad(r.opt, NULL));
  OK(fo_optimizer_step(r.opt, NULL));
  rig_free(&r);
  OK(fo_comm_destroy(comm));
}
