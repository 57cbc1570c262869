/*
 * gpu_comm_rig.c -- the rig of the GPU tier's communicator tests
 * (gpu_comm_rig.h).
 */
#include "gpu_comm_rig.h"

#include <criterion/criterion.h>
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cr_status.h"
#include "fusedopt.h"
#include "gpu_harness.h"
#include "testutil.h"

const int64_t GC_SIZES[GC_NT] = {1000, 3, 0, 70001, 128, 4097};

void gc_make(gc_rig *r, const gc_config *c, int device) {
  memset(r, 0, sizeof *r);
  r->pd = c->pd;
  r->gd = c->gd;
  r->device = device;
  CK(cudaSetDevice(device));
  fo_options o;
  OK(fo_options_default(&o));
  o.executor = FO_EXEC_CUDA;
  o.device = device;
  o.storage = c->storage;
  o.param_dtype = c->pd;
  o.grad_dtype = c->gd;
  o.max_grad_norm = 0.5f;
  o.loss_scaler.enabled = 1;
  o.loss_scaler.init_scale = 1024.0f;
  const fo_algorithm alg = c->layerwise ? (fo_algorithm)c->layerwise : FO_ALG_ADAMW;
  o.algorithm = alg;
  fo_hparams h[2];
  OK(fo_hparams_default(alg, &h[0]));
  /* LARS: a local rate of about trust_coef * ||w|| / ||g||, 1e-3 of lr */
  h[0].lr = alg == FO_ALG_LARS ? 5.0f : 0.0137f;
  h[1] = h[0];
  h[1].weight_decay = 0.0f;
  int64_t total = 0, off = 0;
  for (int i = 0; i < GC_NT; i++) total += GC_SIZES[i] + c->gap;
  int ext = c->storage == FO_STORAGE_EXTERNAL;
  if (ext) {
    CK(cudaMalloc(&r->pbuf, (size_t)total * 4));
    CK(cudaMalloc(&r->gbuf, (size_t)total * 4));
  }
  fo_tensor_desc t[GC_NT];
  for (int i = 0; i < GC_NT; i++) {
    t[i] = (fo_tensor_desc){
        GC_SIZES[i], i % 2, ext ? (char *)r->pbuf + (size_t)off * fo_dtype_size(c->pd) : NULL,
        ext ? (char *)r->gbuf + (size_t)off * fo_dtype_size(c->gd) : NULL, NULL};
    off += GC_SIZES[i] + c->gap;
  }
  OK(fo_optimizer_create(&r->opt, &o, h, 2, t, GC_NT));
  float *v = malloc(GC_NMAX * sizeof(float));
  uint16_t *h16 = malloc(GC_NMAX * sizeof(float));
  cr_assert(v && h16);
  tu_rng rng;
  tu_rng_seed(&rng, 3, 1);
  for (int i = 0; i < GC_NT; i++) {
    void *p;
    OK(fo_optimizer_param_ptr(r->opt, i, &p));
    for (int64_t e = 0; e < GC_SIZES[i]; e++) v[e] = (float)tu_rng_range(&rng, -1.0, 1.0);
    OK(fo_convert_from_f32(c->pd, v, h16, GC_SIZES[i]));
    if (GC_SIZES[i])
      CK(cudaMemcpy(p, h16, (size_t)GC_SIZES[i] * fo_dtype_size(c->pd), cudaMemcpyHostToDevice));
  }
  OK(fo_optimizer_sync_master(r->opt, NULL));
  CK(cudaDeviceSynchronize());
  free(v);
  free(h16);
}

void gc_free(gc_rig *r) {
  OK(fo_optimizer_destroy(r->opt));
  if (r->pbuf) CK(cudaFree(r->pbuf));
  if (r->gbuf) CK(cudaFree(r->gbuf));
}

/* v rounded to dtype, in place. */
static void round_to(fo_dtype dtype, float *v, int64_t n) {
  if (dtype == FO_DTYPE_F32 || n == 0) return;
  uint16_t *h = malloc((size_t)n * sizeof *h);
  cr_assert_not_null(h);
  OK(fo_convert_from_f32(dtype, v, h, n));
  OK(fo_convert_to_f32(dtype, h, v, n));
  free(h);
}

/* Every tensor's elements, back to back. */
static int64_t total_elements(void) {
  int64_t n = 0;
  for (int i = 0; i < GC_NT; i++) n += GC_SIZES[i];
  return n;
}

/* The loss scale r's next step expects (synchronizes r's device). */
static float loss_scale(gc_rig *r) {
  CK(cudaSetDevice(r->device));
  fo_step_info info;
  OK(fo_optimizer_get_info(r->opt, &info));
  return info.loss_scale;
}

/* Every tensor's gradients of step k for rank, times scale, back to back
 * into v, as rank holds them (in the gradient dtype). */
static void rank_grads(const gc_rig *r, int k, int rank, float scale, float *v) {
  tu_rng rng;
  tu_rng_seed(&rng, 1000 + (uint64_t)k, 2 + (uint64_t)rank);
  float *at = v;
  for (int i = 0; i < GC_NT; i++) {
    for (int64_t e = 0; e < GC_SIZES[i]; e++)
      at[e] = scale * (float)tu_rng_range(&rng, -0.02, 0.02);
    if (k == 3 && i == 3) at[5] = INFINITY; /* an overflow step */
    at += GC_SIZES[i];
  }
  round_to(r->gd, v, total_elements());
}

/* v (every tensor back to back) as r's gradients, with a blocking copy. */
static void put_grads(gc_rig *r, const float *v) {
  uint16_t *h16 = malloc(GC_NMAX * sizeof(float));
  cr_assert_not_null(h16);
  const float *at = v;
  for (int i = 0; i < GC_NT; i++) {
    void *g;
    OK(fo_optimizer_grad_ptr(r->opt, i, &g));
    OK(fo_convert_from_f32(r->gd, at, h16, GC_SIZES[i]));
    if (GC_SIZES[i])
      CK(cudaMemcpy(g, h16, (size_t)GC_SIZES[i] * fo_dtype_size(r->gd), cudaMemcpyHostToDevice));
    at += GC_SIZES[i];
  }
  CK(cudaDeviceSynchronize()); /* a pageable copy may still be in flight */
  free(h16);
}

void gc_grads(gc_rig *r, int k, int rank) {
  float *v = malloc((size_t)total_elements() * sizeof(float));
  cr_assert_not_null(v);
  rank_grads(r, k, rank, loss_scale(r), v);
  put_grads(r, v);
  free(v);
}

void gc_grads_mean(gc_rig *r, int k, int ranks) {
  const int64_t n = total_elements();
  const float scale = loss_scale(r);
  float *sum = malloc((size_t)n * sizeof(float)), *v = malloc((size_t)n * sizeof(float));
  cr_assert(sum && v);
  rank_grads(r, k, 0, scale, sum);
  for (int q = 1; q < ranks; q++) {
    rank_grads(r, k, q, scale, v);
    for (int64_t e = 0; e < n; e++) sum[e] += v[e];
  }
  round_to(r->gd, sum, n);                                /* the all-reduce's sum, in rank order */
  for (int64_t e = 0; e < n; e++) sum[e] /= (float)ranks; /* the step's */
  put_grads(r, sum);
  free(sum);
  free(v);
}

/* The parameters of every tensor, on the host, in the parameter dtype. */
unsigned char *gc_params(const gc_rig *r, size_t *bytes) {
  size_t total = 0, es = fo_dtype_size(r->pd);
  for (int i = 0; i < GC_NT; i++) total += (size_t)GC_SIZES[i] * es;
  unsigned char *h = malloc(total + 1), *at = h;
  cr_assert(h);
  CK(cudaSetDevice(r->device));
  CK(cudaDeviceSynchronize());
  for (int i = 0; i < GC_NT; i++) {
    void *p;
    OK(fo_optimizer_param_ptr(r->opt, i, &p));
    if (GC_SIZES[i]) CK(cudaMemcpy(at, p, (size_t)GC_SIZES[i] * es, cudaMemcpyDeviceToHost));
    at += (size_t)GC_SIZES[i] * es;
  }
  *bytes = total;
  return h;
}

void gc_expect_same(const gc_rig *a, const gc_rig *b, const char *what) {
  size_t na, nb;
  unsigned char *pa = gc_params(a, &na), *pb = gc_params(b, &nb);
  cr_assert_eq(na, nb);
  cr_assert(memcmp(pa, pb, na) == 0, "%s: parameters differ", what);
  free(pa);
  free(pb);
}

fo_comm *gc_one_rank_comm(int device) {
  fo_nccl_id id;
  OK(fo_nccl_get_id(&id));
  fo_comm *c = NULL;
  OK(fo_comm_init_nccl(&c, &id, 0, 1, device));
  int rank = -1, size = -1;
  OK(fo_comm_get_rank(c, &rank, &size));
  cr_assert(rank == 0 && size == 1);
  return c;
}

/* The communicator options of config c. */
fo_dp_options gc_dp_options(const gc_config *c) {
  fo_dp_options o;
  OK(fo_dp_options_default(&o));
  o.bucket_bytes = c->bucket_bytes;
  o.reduce_in_f32 = c->reduce_in_f32;
  o.shard_state = c->shard_state;
  return o;
}

/* Two rigs of config c, a one-rank communicator attached to dp; ref steps
 * without one. */
fo_comm *gc_pair_make(gc_rig *dp, gc_rig *ref, const gc_config *c) {
  gc_make(dp, c, 0);
  gc_make(ref, c, 0);
  fo_comm *comm = gc_one_rank_comm(0);
  const fo_dp_options o = gc_dp_options(c);
  OK(fo_optimizer_set_comm(dp->opt, comm, &o));
  return comm;
}

void gc_pair_free(gc_rig *dp, gc_rig *ref, fo_comm *comm) {
  gc_free(dp);
  OK(fo_comm_destroy(comm));
  gc_free(ref);
}
