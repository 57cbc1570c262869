/*
 * test_comm_buckets.c -- CPU tier of the communicators, in one process: the
 * gradient buckets, averaging folded into the step and the reduce calls,
 * over a fake back-end (tests/support/fake_comm.h, tests/support/comm_rig.h).
 *
 * The fake plays N ranks that all hold this rank's gradients: its
 * all-reduce multiplies the buffer by N (in the wire dtype, exactly: N is
 * a power of two).  Averaging then gives back the gradients, so an
 * optimizer with the fake attached must end bit-identical to one without
 * -- which fails if a bucket is reduced twice or never, if a tensor is
 * missed or a packed copy goes back to the wrong place, or if the 1/N is
 * not folded into the coefficient.  It logs every call.  Real multi-rank
 * sums are tests/mpi's.
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

/* --------------------------------------------------------------- buckets */

/* Buckets cover every tensor once, in order, and close before the tensor
 * that would take them past the size. */
static void check_buckets(fo_optimizer *opt, size_t limit, size_t gs) {
  int64_t nb = 0, next = 0;
  OK(fo_optimizer_num_buckets(opt, &nb));
  for (int64_t b = 0; b < nb; b++) {
    int64_t first = -1, count = -1;
    OK(fo_optimizer_bucket_tensors(opt, b, &first, &count));
    cr_assert_eq(first, next, "bucket %lld starts at %lld, expected %lld", (long long)b,
                 (long long)first, (long long)next);
    cr_assert_gt(count, 0);
    size_t bytes = 0;
    for (int64_t i = first; i < first + count; i++) bytes += (size_t)SIZES[i] * gs;
    int64_t nonempty = 0;
    for (int64_t i = first; i < first + count; i++) nonempty += SIZES[i] > 0;
    if (limit)
      cr_assert(bytes <= limit || nonempty == 1, "bucket %lld: %zu bytes", (long long)b, bytes);
    if (limit && b + 1 < nb) /* it closed because the next tensor did not fit */
      cr_assert_gt(bytes + (size_t)SIZES[first + count] * gs, limit);
    next = first + count;
  }
  cr_assert_eq(next, NT, "buckets cover %lld of %d tensors", (long long)next, NT);
}

Test(comm_dp, buckets_cover_every_tensor_once_in_order) {
  size_t limits[] = {0, 1, 4096, 8000, 300000, (size_t)25 << 20};
  for (size_t l = 0; l < sizeof limits / sizeof limits[0]; l++) {
    for (int s = 0; s < 2; s++) {
      config c = {s ? FO_STORAGE_ARENA : FO_STORAGE_EXTERNAL,
                  FO_DTYPE_BF16,
                  FO_DTYPE_BF16,
                  s ? 0 : 5,
                  limits[l],
                  0};
      rig r;
      rig_make(&r, &c);
      fake f;
      fo_comm *comm = fake_comm(&f, 4);
      fo_dp_options o;
      OK(fo_dp_options_default(&o));
      o.bucket_bytes = limits[l];
      OK(fo_optimizer_set_comm(r.opt, comm, &o));
      check_buckets(r.opt, limits[l], 2);
      int64_t nb = 0, first, count;
      OK(fo_optimizer_num_buckets(r.opt, &nb));
      if (limits[l] == 0) cr_expect_eq(nb, 1);
      if (limits[l] == 1)
        cr_expect_eq(nb, 6, "one bucket per non-empty tensor (the empty one joins one)");
      FAILS(fo_optimizer_bucket_tensors(r.opt, nb, &first, &count), FO_ERR_INVALID_ARGUMENT);
      FAILS(fo_optimizer_bucket_tensors(r.opt, -1, &first, &count), FO_ERR_INVALID_ARGUMENT);
      FAILS(fo_optimizer_bucket_tensors(r.opt, 0, NULL, &count), FO_ERR_NULL_POINTER);
      rig_free(&r);
      OK(fo_comm_destroy(comm));
    }
  }
}

/* The arena: one collective per bucket, over the arena itself (no copy).
 * Adjacent external tensors: the same, over the caller's memory. */
Test(comm_dp, contiguous_buckets_are_reduced_in_place_with_one_collective) {
  for (int s = 0; s < 2; s++) {
    config c = {s ? FO_STORAGE_ARENA : FO_STORAGE_EXTERNAL, FO_DTYPE_F32, FO_DTYPE_F32, 0, 0, 0};
    rig r;
    rig_make(&r, &c);
    fake f;
    fo_comm *comm = fake_comm(&f, 4);
    fo_dp_options o;
    OK(fo_dp_options_default(&o));
    o.bucket_bytes = 0;
    OK(fo_optimizer_set_comm(r.opt, comm, &o));
    rig_grads(&r, c.grad_dtype, 0, 0);
    OK(fo_optimizer_reduce_grads(r.opt, NULL));
    cr_assert_eq(f.calls, 1);
    void *g0, *glast;
    OK(fo_optimizer_grad_ptr(r.opt, 0, &g0));
    OK(fo_optimizer_grad_ptr(r.opt, NT - 1, &glast));
    cr_expect_eq(f.buf[0], g0, "summed in place, from the first gradient");
    cr_expect_eq(f.count[0], (int64_t)(((char *)glast - (char *)g0) / 4) + SIZES[NT - 1],
                 "from the first gradient to the end of the last");
    cr_expect_eq(f.dtype[0], FO_DTYPE_F32);
    OK(fo_optimizer_step(r.opt, NULL));
    cr_expect_eq(f.calls, 1, "the step reduces nothing twice");
    rig_free(&r);
    OK(fo_comm_destroy(comm));
  }
}

/* Scattered external tensors on the CPU: packed, one collective per
 * bucket over their elements, each tensor's packed copy starting at a
 * 16-byte boundary (8 fp16 elements). */
Test(comm_dp, scattered_tensors_are_packed) {
  config c = {FO_STORAGE_EXTERNAL, FO_DTYPE_F16, FO_DTYPE_F16, 33, 0, 0};
  rig r;
  rig_make(&r, &c);
  fake f;
  fo_comm *comm = fake_comm(&f, 4);
  fo_dp_options o;
  OK(fo_dp_options_default(&o));
  o.bucket_bytes = 0;
  OK(fo_optimizer_set_comm(r.opt, comm, &o));
  OK(fo_optimizer_reduce_grads(r.opt, NULL));
  int64_t total = 0;
  for (int i = 0; i < NT; i++)
    if (SIZES[i]) total = (total + 7) / 8 * 8 + SIZES[i];
  cr_assert_eq(f.calls, 1);
  cr_expect_eq(f.count[0], total);
  cr_expect_eq(f.dtype[0], FO_DTYPE_F16);
  void *g0;
  OK(fo_optimizer_grad_ptr(r.opt, 0, &g0));
  cr_expect_neq(f.buf[0], g0, "a packed buffer");
  rig_free(&r);
  OK(fo_comm_destroy(comm));
}

Test(comm_dp, reduce_in_f32_puts_fp32_on_the_wire) {
  config c = {FO_STORAGE_ARENA, FO_DTYPE_BF16, FO_DTYPE_BF16, 0, 4096, 1};
  rig r;
  rig_make(&r, &c);
  fake f;
  fo_comm *comm = fake_comm(&f, 4);
  fo_dp_options o;
  OK(fo_dp_options_default(&o));
  o.bucket_bytes = 4096;
  o.reduce_in_f32 = 1;
  OK(fo_optimizer_set_comm(r.opt, comm, &o));
  OK(fo_optimizer_reduce_grads(r.opt, NULL));
  cr_assert_gt(f.calls, 1);
  for (int k = 0; k < f.calls && k < FAKE_LOG; k++) cr_expect_eq(f.dtype[k], FO_DTYPE_F32);
  rig_free(&r);
  OK(fo_comm_destroy(comm));
}

/* ------------------------------------------------- averaging in the step */

Test(comm_dp, averaging_equals_the_unreplicated_step) {
  fo_dtype dts[3] = {FO_DTYPE_F32, FO_DTYPE_F16, FO_DTYPE_BF16};
  for (int s = 0; s < 2; s++)
    for (int d = 0; d < 3; d++)
      for (int f32 = 0; f32 < 2; f32++)
        for (int overlap = 0; overlap < 2; overlap++) {
          config c = {s ? FO_STORAGE_ARENA : FO_STORAGE_EXTERNAL,
                      dts[d],
                      dts[d],
                      s ? 0 : (d == 1 ? 0 : 9),
                      overlap ? 6000 : 0,
                      f32 && d > 0};
          run_equivalence(&c, overlap);
        }
}

Test(comm_dp, fp32_params_with_bf16_grads) {
  config c = {FO_STORAGE_EXTERNAL, FO_DTYPE_F32, FO_DTYPE_BF16, 3, 8000, 0};
  run_equivalence(&c, 1);
}

Test(comm_dp, divisor_follows_the_attachment) {
  config c = {FO_STORAGE_ARENA, FO_DTYPE_F32, FO_DTYPE_F32, 0, 0, 0};
  rig r;
  rig_make(&r, &c);
  fake f4, f2;
  fo_comm *c4 = fake_comm(&f4, 4), *c2 = fake_comm(&f2, 2);
  fo_step_info info;
  OK(fo_optimizer_set_comm(r.opt, c4, NULL));
  OK(fo_optimizer_step(r.opt, NULL));
  OK(fo_optimizer_get_info(r.opt, &info));
  float c0 = info.grad_coef;
  FAILS(fo_comm_destroy(c4), FO_ERR_INVALID_STATE);
  cr_expect(strstr(fo_last_error(), "still use"), "message: %s", fo_last_error());
  OK(fo_optimizer_set_comm(r.opt, c2, NULL)); /* replaces: c4 is free again */
  OK(fo_comm_destroy(c4));
  OK(fo_optimizer_step(r.opt, NULL));
  OK(fo_optimizer_get_info(r.opt, &info));
  cr_expect_eq(info.grad_coef, 2.0f * c0, "1/2 instead of 1/4: %g vs %g", (double)info.grad_coef,
               (double)c0);
  OK(fo_optimizer_set_comm(r.opt, NULL, NULL));
  OK(fo_optimizer_step(r.opt, NULL));
  OK(fo_optimizer_get_info(r.opt, &info));
  cr_expect_eq(info.grad_coef, 4.0f * c0);
  cr_expect_eq(f2.calls, 1);
  OK(fo_comm_destroy(c2));
  rig_free(&r);
}

Test(comm_dp, destroying_the_optimizer_releases_the_comm) {
  config c = {FO_STORAGE_ARENA, FO_DTYPE_F32, FO_DTYPE_F32, 0, 0, 0};
  rig r;
  rig_make(&r, &c);
  fake f;
  fo_comm *comm = fake_comm(&f, 4);
  OK(fo_optimizer_set_comm(r.opt, comm, NULL));
  rig_free(&r);
  OK(fo_comm_destroy(comm));
}

Test(comm_dp, no_tensors) {
  fo_options o;
  fo_hparams h;
  OK(fo_options_default(&o));
  OK(fo_hparams_default(o.algorithm, &h));
  fo_optimizer *opt = NULL;
  OK(fo_optimizer_create(&opt, &o, &h, 1, NULL, 0));
  fake f;
  fo_comm *comm = fake_comm(&f, 2);
  OK(fo_optimizer_set_comm(opt, comm, NULL));
  int64_t nb = -1;
  OK(fo_optimizer_num_buckets(opt, &nb));
  cr_expect_eq(nb, 0);
  OK(fo_optimizer_step(opt, NULL));
  cr_expect_eq(f.calls, 0);
  OK(fo_optimizer_destroy(opt));
  OK(fo_comm_destroy(comm));
}

/* ----------------------------------------------------- reduce calls */

Test(comm_dp, reduce_calls_validate) {
  config c = {FO_STORAGE_ARENA, FO_DTYPE_F32, FO_DTYPE_F32, 0, 0, 0};
  rig r;
  rig_make(&r, &c);
  FAILS(fo_optimizer_reduce_bucket(r.opt, 0, NULL), FO_ERR_INVALID_STATE);
  FAILS(fo_optimizer_reduce_grads(r.opt, NULL), FO_ERR_INVALID_STATE);
  int64_t first, count;
  FAILS(fo_optimizer_bucket_tensors(r.opt, 0, &first, &count), FO_ERR_INVALID_STATE);
  fake f;
  fo_comm *comm = fake_comm(&f, 4);
  fo_dp_options o;
  OK(fo_dp_options_default(&o));
  o.bucket_bytes = 1;
  OK(fo_optimizer_set_comm(r.opt, comm, &o));
  FAILS(fo_optimizer_reduce_bucket(NULL, 0, NULL), FO_ERR_NULL_POINTER);
  FAILS(fo_optimizer_reduce_grads(NULL, NULL), FO_ERR_NULL_POINTER);
  FAILS(fo_optimizer_reduce_bucket(r.opt, 99, NULL), FO_ERR_INVALID_ARGUMENT);
  FAILS(fo_optimizer_reduce_bucket(r.opt, 0, (fo_stream_t)&f), FO_ERR_INVALID_ARGUMENT);
  FAILS(fo_optimizer_num_buckets(NULL, &first), FO_ERR_NULL_POINTER);
  OK(fo_optimizer_reduce_bucket(r.opt, 2, NULL));
  FAILS(fo_optimizer_reduce_bucket(r.opt, 2, NULL), FO_ERR_INVALID_STATE);
  cr_expect(strstr(fo_last_error(), "already reduced"), "message: %s", fo_last_error());
  OK(fo_optimizer_reduce_grads(r.opt, NULL)); /* the rest */
  int before = f.calls;
  OK(fo_optimizer_reduce_grads(r.opt, NULL)); /* nothing left */
  cr_expect_eq(f.calls, before);
  OK(fo_optimizer_step(r.opt, NULL));
  cr_expect_eq(f.calls, before, "all reduced before the step");
  OK(fo_optimizer_reduce_bucket(r.opt, 2, NULL)); /* a new step: allowed again */
  OK(fo_optimizer_zero_grad(r.opt, NULL));        /* forgets the marks */
  OK(fo_optimizer_reduce_bucket(r.opt, 2, NULL));
  rig_free(&r);
  OK(fo_comm_destroy(comm));
}

/* A tensor that fills its bucket exactly (bytes + size == bucket_bytes)
 * joins it: bf16, limit (1000 + 3) * 2 bytes holds tensors 0 and 1 (and the
 * empty tensor 2, which never opens a bucket). */
Test(comm_dp, a_tensor_that_fills_the_bucket_exactly_joins_it) {
  config c = {FO_STORAGE_ARENA, FO_DTYPE_BF16, FO_DTYPE_BF16, 0, 0, 0};
  rig r;
  rig_make(&r, &c);
  fake f;
  fo_comm *comm = fake_comm(&f, 4);
  fo_dp_options o;
  OK(fo_dp_options_default(&o));
  o.bucket_bytes = (size_t)(SIZES[0] + SIZES[1]) * 2;
  OK(fo_optimizer_set_comm(r.opt, comm, &o));
  int64_t first = -1, count = -1;
  OK(fo_optimizer_bucket_tensors(r.opt, 0, &first, &count));
  cr_expect_eq(first, 0);
  cr_expect_eq(count, 3, "bucket 0 holds %lld tensors, expected 3", (long long)count);
  rig_free(&r);
  OK(fo_comm_destroy(comm));
}
