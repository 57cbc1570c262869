/*
 * comm_rig.c -- the optimizer rig of the communicator tests (comm_rig.h).
 */
#include "comm_rig.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cr_status.h"
#include "fake_comm.h"
#include "testutil.h"

/* ------------------------------------------------------------- the rig */

const int64_t SIZES[NT] = {1000, 3, 0, 4097, 128, 70000, 5};

static void *at(void *base, int64_t elem, fo_dtype dtype) {
  return (char *)base + (size_t)elem * fo_dtype_size(dtype);
}

void rig_make(rig *r, const config *c) {
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

void rig_free(rig *r) {
  OK(fo_optimizer_destroy(r->opt));
  free(r->pbuf);
  free(r->gbuf);
}

void rig_grads(rig *r, fo_dtype gd, int k, int inf_at) {
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

void expect_same(const rig *a, const rig *b, fo_dtype pd, const char *what) {
  for (int i = 0; i < NT; i++) {
    void *pa, *pb;
    OK(fo_optimizer_param_ptr(a->opt, i, &pa));
    OK(fo_optimizer_param_ptr(b->opt, i, &pb));
    cr_assert(memcmp(pa, pb, (size_t)SIZES[i] * fo_dtype_size(pd)) == 0,
              "%s: tensor %d parameters differ", what, i);
    float *ma, *mb;
    OK(fo_optimizer_state_ptr(a->opt, i, FO_ROLE_EXP_AVG_SQ, &ma));
    OK(fo_optimizer_state_ptr(b->opt, i, FO_ROLE_EXP_AVG_SQ, &mb));
    cr_assert(memcmp(ma, mb, (size_t)SIZES[i] * 4) == 0, "%s: tensor %d exp_avg_sq differs", what,
              i);
  }
}

void run_equivalence(const config *c, int overlap) {
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
