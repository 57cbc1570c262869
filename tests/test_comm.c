/*
 * test_comm.c -- CPU tier of the communicators, in one process: the host
 * communicator API, the gradient buckets, averaging folded into the step,
 * and errors, over a fake back-end.
 *
 * The fake plays N ranks that all hold this rank's gradients: its
 * all-reduce multiplies the buffer by N (in the wire dtype, exactly: N is
 * a power of two).  Averaging then gives back the gradients, so an
 * optimizer with the fake attached must end bit-identical to one without
 * -- which fails if a bucket is reduced twice or never, if a tensor is
 * missed or a packed copy goes back to the wrong place, or if the 1/N is
 * not folded into the coefficient.  It logs every call, and fails the
 * k-th call on request.  Real multi-rank sums are tests/mpi's.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fusedopt.h"
#include "cr_status.h"
#include "testutil.h"

/* ------------------------------------------------------------- the fake */

#define FAKE_LOG 64

typedef struct fake {
  int size;    /* simulated ranks */
  int fail_at; /* 1-based call that fails; 0: none */
  int calls;
  int released;
  int64_t elems; /* summed over every call */
  int64_t count[FAKE_LOG];
  fo_dtype dtype[FAKE_LOG];
  void *buf[FAKE_LOG];
} fake;

static int fake_allreduce(void *ctx, void *buf, int64_t count, fo_dtype dtype, char *err,
                          size_t cap) {
  fake *f = ctx;
  int k = f->calls++;
  if (k < FAKE_LOG) {
    f->count[k] = count;
    f->dtype[k] = dtype;
    f->buf[k] = buf;
  }
  f->elems += count;
  if (f->calls == f->fail_at) {
    /* a collective that died half way: half the buffer is garbage */
    memset(buf, 0x7f, (size_t)(count / 2) * fo_dtype_size(dtype));
    snprintf(err, cap, "injected failure on call %d", f->calls);
    return 42;
  }
  cr_assert_eq(tu_scale_buffer(buf, count, dtype, (float)f->size), FO_SUCCESS);
  return 0;
}

static void fake_release(void *ctx) { ((fake *)ctx)->released++; }

static fo_comm_ops fake_ops(void) {
  fo_comm_ops ops;
  memset(&ops, 0, sizeof ops);
  ops.struct_size = sizeof ops;
  ops.allreduce_sum = fake_allreduce;
  ops.release = fake_release;
  return ops;
}

static fo_comm *fake_comm(fake *f, int size) {
  memset(f, 0, sizeof *f);
  f->size = size;
  fo_comm_ops ops = fake_ops();
  fo_comm *c = NULL;
  OK(fo_comm_create_host(&c, &ops, f, 0, size));
  return c;
}

/* ------------------------------------------------------------- the rig */

#define NT 7
static const int64_t SIZES[NT] = {1000, 3, 0, 4097, 128, 70000, 5};

/* External storage lays the tensors out in one buffer per role, adjacent
 * (GAP 0) or with gaps; the arena lays them out itself. */
typedef struct config {
  fo_storage storage;
  fo_dtype param_dtype, grad_dtype;
  int64_t gap; /* elements between external tensors */
  size_t bucket_bytes;
  int reduce_in_f32;
} config;

typedef struct rig {
  fo_optimizer *opt;
  void *pbuf, *gbuf;
} rig;

static void *at(void *base, int64_t elem, fo_dtype dtype) {
  return (char *)base + (size_t)elem * fo_dtype_size(dtype);
}

static void rig_make(rig *r, const config *c) {
  memset(r, 0, sizeof *r);
  fo_options o;
  OK(fo_options_default(&o));
  o.algorithm = FO_ALG_ADAMW;
  o.storage = c->storage;
  o.param_dtype = c->param_dtype;
  o.grad_dtype = c->grad_dtype;
  o.num_threads = 1;
  o.max_grad_norm = 0.5f;
  o.loss_scaler.enabled = 1;
  o.loss_scaler.init_scale = 1024.0f;
  fo_hparams h[2];
  OK(fo_hparams_default(FO_ALG_ADAMW, &h[0]));
  h[0].lr = 0.0137f;
  h[1] = h[0];
  h[1].weight_decay = 0.0f;
  fo_tensor_desc t[NT];
  int64_t total = 0;
  for (int i = 0; i < NT; i++) total += SIZES[i] + c->gap;
  if (c->storage == FO_STORAGE_EXTERNAL) {
    r->pbuf = calloc((size_t)total, 4);
    r->gbuf = calloc((size_t)total, 4);
    cr_assert(r->pbuf && r->gbuf);
  }
  int64_t off = 0;
  tu_rng rng;
  tu_rng_seed(&rng, 7, 1);
  float init[70000];
  for (int i = 0; i < NT; i++) {
    int ext = c->storage == FO_STORAGE_EXTERNAL;
    t[i] = (fo_tensor_desc){SIZES[i], i % 2, ext ? at(r->pbuf, off, c->param_dtype) : NULL,
                            ext ? at(r->gbuf, off, c->grad_dtype) : NULL, NULL};
    off += SIZES[i] + c->gap;
  }
  OK(fo_optimizer_create(&r->opt, &o, h, 2, t, NT));
  for (int i = 0; i < NT; i++) {
    void *p;
    OK(fo_optimizer_param_ptr(r->opt, i, &p));
    for (int64_t k = 0; k < SIZES[i]; k++) init[k] = (float)tu_rng_range(&rng, -1.0, 1.0);
    OK(fo_convert_from_f32(c->param_dtype, init, p, SIZES[i]));
  }
  OK(fo_optimizer_sync_master(r->opt, NULL));
}

static void rig_free(rig *r) {
  OK(fo_optimizer_destroy(r->opt));
  free(r->pbuf);
  free(r->gbuf);
}

/* Gradients of step k (the same for every rig), times the loss scale. */
static void rig_grads(rig *r, fo_dtype gd, int k, int inf_at) {
  tu_rng rng;
  tu_rng_seed(&rng, 100 + (uint64_t)k, 2);
  float scale = 1.0f, *g = malloc(70000 * sizeof(float));
  cr_assert(g);
  float *sp;
  if (fo_optimizer_loss_scale_ptr(r->opt, &sp) == FO_SUCCESS) scale = *sp;
  for (int i = 0; i < NT; i++) {
    void *dst;
    OK(fo_optimizer_grad_ptr(r->opt, i, &dst));
    for (int64_t e = 0; e < SIZES[i]; e++) g[e] = scale * (float)tu_rng_range(&rng, -0.02, 0.02);
    if (inf_at && i == 3) g[17] = INFINITY;
    OK(fo_convert_from_f32(gd, g, dst, SIZES[i]));
  }
  free(g);
}

/* Every parameter and state buffer of a and b holds the same bits. */
static void expect_same(const rig *a, const rig *b, fo_dtype pd, const char *what) {
  for (int i = 0; i < NT; i++) {
    void *pa, *pb;
    OK(fo_optimizer_param_ptr(a->opt, i, &pa));
    OK(fo_optimizer_param_ptr(b->opt, i, &pb));
    cr_assert(memcmp(pa, pb, (size_t)SIZES[i] * fo_dtype_size(pd)) == 0,
              "%s: tensor %d parameters differ", what, i);
    float *ma, *mb;
    OK(fo_optimizer_state_ptr(a->opt, i, FO_ROLE_EXP_AVG_SQ, &ma));
    OK(fo_optimizer_state_ptr(b->opt, i, FO_ROLE_EXP_AVG_SQ, &mb));
    cr_assert(memcmp(ma, mb, (size_t)SIZES[i] * 4) == 0, "%s: tensor %d exp_avg_sq differs",
              what, i);
  }
}

/* K steps of a rig with the fake (4 ranks) and one without, the same
 * gradients: bit-identical, every step a clean one but the overflow step. */
static void run_equivalence(const config *c, int overlap) {
  rig dp, ref;
  rig_make(&dp, c);
  rig_make(&ref, c);
  fake f;
  fo_comm *comm = fake_comm(&f, 4);
  fo_dp_options o;
  OK(fo_dp_options_default(&o));
  o.bucket_bytes = c->bucket_bytes;
  o.reduce_in_f32 = c->reduce_in_f32;
  OK(fo_optimizer_set_comm(dp.opt, comm, &o));
  int64_t nb = 0;
  OK(fo_optimizer_num_buckets(dp.opt, &nb));
  for (int k = 0; k < 6; k++) {
    int inf = k == 3;
    rig_grads(&dp, c->grad_dtype, k, inf);
    rig_grads(&ref, c->grad_dtype, k, inf);
    if (overlap) /* as a backward pass would: last bucket first */
      for (int64_t b = nb - 1; b >= 0; b--) OK(fo_optimizer_reduce_bucket(dp.opt, b, NULL));
    OK(fo_optimizer_step(dp.opt, NULL));
    OK(fo_optimizer_step(ref.opt, NULL));
    fo_step_info a, b;
    OK(fo_optimizer_get_info(dp.opt, &a));
    OK(fo_optimizer_get_info(ref.opt, &b));
    cr_assert_eq(a.last_step_skipped, inf, "step %d skipped %d", k, a.last_step_skipped);
    cr_assert_eq(b.last_step_skipped, inf);
    cr_assert_eq(a.grad_norm, b.grad_norm, "step %d: norm %g vs %g", k, (double)a.grad_norm,
                 (double)b.grad_norm);
    cr_assert_eq(a.loss_scale, b.loss_scale);
    if (!inf) cr_assert_eq(a.grad_coef, b.grad_coef / 4.0f);
    expect_same(&dp, &ref, c->param_dtype, "after a step");
  }
  cr_assert_eq(f.calls, 6 * (int)nb - 0, "%d collectives for %lld buckets x 6 steps", f.calls,
               (long long)nb);
  OK(fo_optimizer_set_comm(dp.opt, NULL, NULL));
  OK(fo_comm_destroy(comm));
  cr_assert_eq(f.released, 1);
  rig_free(&dp);
  rig_free(&ref);
}

/* ------------------------------------------------------ host comm API */

Test(comm_api, create_host_validates_and_releases_ctx_on_failure) {
  fake f;
  memset(&f, 0, sizeof f);
  fo_comm_ops ops = fake_ops();
  fo_comm *c = NULL;
  FAILS(fo_comm_create_host(NULL, &ops, &f, 0, 1), FO_ERR_NULL_POINTER);
  FAILS(fo_comm_create_host(&c, NULL, &f, 0, 1), FO_ERR_NULL_POINTER);
  FAILS(fo_comm_create_host(&c, &ops, &f, 2, 2), FO_ERR_INVALID_ARGUMENT);
  cr_expect(strstr(fo_last_error(), "fo_comm_create_host: rank = 2, size = 2"),
            "message: %s", fo_last_error());
  FAILS(fo_comm_create_host(&c, &ops, &f, -1, 2), FO_ERR_INVALID_ARGUMENT);
  FAILS(fo_comm_create_host(&c, &ops, &f, 0, 0), FO_ERR_INVALID_ARGUMENT);
  cr_expect_eq(f.released, 4, "release ran %d times", f.released);
  ops.struct_size = sizeof ops - 1;
  FAILS(fo_comm_create_host(&c, &ops, &f, 0, 1), FO_ERR_INVALID_ARGUMENT);
  ops = fake_ops();
  ops.allreduce_sum = NULL;
  FAILS(fo_comm_create_host(&c, &ops, &f, 0, 1), FO_ERR_NULL_POINTER);
  cr_expect_null(c);
}

Test(comm_api, accessors_and_destroy) {
  fake f;
  fo_comm *c = fake_comm(&f, 4);
  int rank = -1, size = -1;
  OK(fo_comm_get_rank(c, &rank, &size));
  cr_expect_eq(rank, 0);
  cr_expect_eq(size, 4);
  OK(fo_comm_get_rank(c, NULL, &size));
  FAILS(fo_comm_get_rank(NULL, &rank, &size), FO_ERR_NULL_POINTER);
  fo_comm_kind kind;
  OK(fo_comm_get_kind(c, &kind));
  cr_expect_eq(kind, FO_COMM_HOST);
  FAILS(fo_comm_get_kind(c, NULL), FO_ERR_NULL_POINTER);
  OK(fo_comm_destroy(NULL));
  OK(fo_comm_destroy(c));
  cr_expect_eq(f.released, 1);
}

Test(comm_api, allreduce_sum) {
  fake f;
  fo_comm *c = fake_comm(&f, 2);
  float x[3] = {1.0f, -2.5f, 3.0f};
  OK(fo_comm_allreduce_sum(c, x, 3, FO_DTYPE_F32, NULL));
  cr_expect(x[0] == 2.0f && x[1] == -5.0f && x[2] == 6.0f);
  OK(fo_comm_allreduce_sum(c, NULL, 0, FO_DTYPE_F32, NULL));
  cr_expect_eq(f.calls, 1, "a zero-length sum is no collective");
  FAILS(fo_comm_allreduce_sum(c, x, 3, FO_DTYPE_F32, (fo_stream_t)x), FO_ERR_INVALID_ARGUMENT);
  FAILS(fo_comm_allreduce_sum(c, x, -1, FO_DTYPE_F32, NULL), FO_ERR_INVALID_ARGUMENT);
  FAILS(fo_comm_allreduce_sum(c, x, 3, (fo_dtype)7, NULL), FO_ERR_INVALID_ARGUMENT);
  FAILS(fo_comm_allreduce_sum(c, NULL, 3, FO_DTYPE_F32, NULL), FO_ERR_NULL_POINTER);
  FAILS(fo_comm_allreduce_sum(NULL, x, 3, FO_DTYPE_F32, NULL), FO_ERR_NULL_POINTER);
  f.fail_at = 2;
  FAILS(fo_comm_allreduce_sum(c, x, 3, FO_DTYPE_F32, NULL), FO_ERR_COMM);
  cr_expect(strstr(fo_last_error(), "injected failure on call 2"), "message: %s",
            fo_last_error());
  cr_expect(strstr(fo_last_error(), "code 42"), "message: %s", fo_last_error());
  OK(fo_comm_destroy(c));
}

Test(comm_api, set_last_error_for_backends) {
  cr_expect_eq(fo_set_last_error(FO_ERR_COMM, "my_backend", "it broke"), FO_ERR_COMM);
  cr_expect_str_eq(fo_last_error(), "my_backend: it broke");
  cr_expect_eq(fo_set_last_error(FO_ERR_IO, NULL, NULL), FO_ERR_IO);
}

Test(comm_api, nccl_arguments_are_checked_without_a_device) {
  fo_comm *c = NULL;
  fo_nccl_id id;
  memset(&id, 0, sizeof id);
  FAILS(fo_comm_init_nccl(NULL, &id, 0, 1, 0), FO_ERR_NULL_POINTER);
  FAILS(fo_comm_init_nccl(&c, NULL, 0, 1, 0), FO_ERR_NULL_POINTER);
  FAILS(fo_comm_init_nccl(&c, &id, 1, 1, 0), FO_ERR_INVALID_ARGUMENT);
  FAILS(fo_comm_init_nccl(&c, &id, 0, 1, -1), FO_ERR_INVALID_ARGUMENT);
  FAILS(fo_comm_wrap_nccl(&c, NULL), FO_ERR_NULL_POINTER);
  FAILS(fo_comm_wrap_nccl(NULL, NULL), FO_ERR_NULL_POINTER);
  FAILS(fo_nccl_get_id(NULL), FO_ERR_NULL_POINTER);
  int n = 0;
  if (fo_cuda_device_count(&n) != FO_SUCCESS) /* here: no device, no NCCL comm */
    FAILS(fo_comm_init_nccl(&c, &id, 0, 1, 0), FO_ERR_NO_DEVICE);
  cr_expect_null(c);
}

/* ------------------------------------------------------------ options */

Test(comm_dp, options_default_and_validation) {
  fo_dp_options o;
  FAILS(fo_dp_options_default(NULL), FO_ERR_NULL_POINTER);
  OK(fo_dp_options_default(&o));
  cr_expect_eq(o.struct_size, sizeof o);
  cr_expect_eq(o.bucket_bytes, (size_t)25 << 20);
  cr_expect_eq(o.reduce_in_f32, 0);
  config c = {FO_STORAGE_ARENA, FO_DTYPE_F32, FO_DTYPE_F32, 0, 0, 0};
  rig r;
  rig_make(&r, &c);
  fake f;
  fo_comm *comm = fake_comm(&f, 4);
  FAILS(fo_optimizer_set_comm(NULL, comm, NULL), FO_ERR_NULL_POINTER);
  o.struct_size = 8;
  FAILS(fo_optimizer_set_comm(r.opt, comm, &o), FO_ERR_INVALID_ARGUMENT);
  OK(fo_dp_options_default(&o));
  o.reduce_in_f32 = 2;
  FAILS(fo_optimizer_set_comm(r.opt, comm, &o), FO_ERR_INVALID_ARGUMENT);
  OK(fo_dp_options_default(&o));
  o.reserved[3] = 1;
  FAILS(fo_optimizer_set_comm(r.opt, comm, &o), FO_ERR_INVALID_ARGUMENT);
  int64_t nb = -1;
  OK(fo_optimizer_num_buckets(r.opt, &nb));
  cr_expect_eq(nb, 0, "nothing attached after failures");
  OK(fo_optimizer_set_comm(r.opt, comm, NULL));
  OK(fo_optimizer_num_buckets(r.opt, &nb));
  cr_expect_eq(nb, 1, "the defaults: 25 MiB buckets, one here");
  rig_free(&r);
  OK(fo_comm_destroy(comm));
}

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
    if (limit) cr_assert(bytes <= limit || nonempty == 1, "bucket %lld: %zu bytes", (long long)b, bytes);
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
      config c = {s ? FO_STORAGE_ARENA : FO_STORAGE_EXTERNAL, FO_DTYPE_BF16, FO_DTYPE_BF16,
                  s ? 0 : 5, limits[l], 0};
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
      if (limits[l] == 1) cr_expect_eq(nb, 6, "one bucket per non-empty tensor (the empty one joins one)");
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
    config c = {s ? FO_STORAGE_ARENA : FO_STORAGE_EXTERNAL, FO_DTYPE_F32, FO_DTYPE_F32, 0, 0,
                0};
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
 * bucket over exactly their elements. */
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
  for (int i = 0; i < NT; i++) total += SIZES[i];
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
          config c = {s ? FO_STORAGE_ARENA : FO_STORAGE_EXTERNAL, dts[d], dts[d],
                      s ? 0 : (d == 1 ? 0 : 9), overlap ? 6000 : 0, f32 && d > 0};
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
  cr_expect_eq(info.grad_coef, 2.0f * c0, "1/2 instead of 1/4: %g vs %g",
               (double)info.grad_coef, (double)c0);
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
  OK(fo_optimizer_zero_grad(r.opt, NULL));         /* forgets the marks */
  OK(fo_optimizer_reduce_bucket(r.opt, 2, NULL));
  rig_free(&r);
  OK(fo_comm_destroy(comm));
}

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

Test(comm_errors, failure_in_the_step_never_steps) { failing_collective(3, 0); }
Test(comm_errors, failure_in_the_first_collective) { failing_collective(1, 0); }
Test(comm_errors, failure_in_an_early_bucket) { failing_collective(2, 1); }

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
