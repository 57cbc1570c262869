/*
 * gpu_comm_rig.h -- the rig of the GPU tier's communicator tests
 * (test_gpu_comm*.c): an AdamW (or LAMB, LARS) optimizer on a CUDA device
 * over six tensors
 * (one empty), with clipping and dynamic loss scaling, its gradients drawn
 * per step and rank, and its parameters read back.
 *
 * Include after <criterion/criterion.h>.
 */
#ifndef FO_TEST_GPU_COMM_RIG_H
#define FO_TEST_GPU_COMM_RIG_H

#include <stddef.h>
#include <stdint.h>

#include "fusedopt.h"

#define GC_NT 6
extern const int64_t GC_SIZES[GC_NT];
#define GC_NMAX 70001

typedef struct gc_rig {
  fo_optimizer *opt;
  void *pbuf, *gbuf; /* external storage: one device buffer per role */
  fo_dtype pd, gd;
  int device;
} gc_rig;

typedef struct gc_config {
  fo_storage storage;
  fo_dtype pd, gd;
  int64_t gap;
  size_t bucket_bytes;
  int reduce_in_f32;
  int shard_state; /* ZeRO-1 over one rank: the shard is the whole arena */
  /* FO_ALG_LAMB or FO_ALG_LARS in place of AdamW (0): per-tensor norms,
   * and a sharded plan without the empty tensor, so its tensor indices
   * are not the optimizer's */
  int layerwise;
} gc_config;

/* An optimizer of config c on device (gc_make), its parameters drawn. */
void gc_make(gc_rig *r, const gc_config *c, int device);
void gc_free(gc_rig *r);
/* The scaled gradients of step k for rank (gc_grads), or the mean of ranks
 * 0 .. ranks-1's as the all-reduce and the step make it (gc_grads_mean):
 * their sum in the gradient dtype, in rank order, times 1 / ranks. */
void gc_grads(gc_rig *r, int k, int rank);
void gc_grads_mean(gc_rig *r, int k, int ranks);
/* Every parameter on the host, in the parameter dtype (malloc'ed). */
unsigned char *gc_params(const gc_rig *r, size_t *bytes);
void gc_expect_same(const gc_rig *a, const gc_rig *b, const char *what);
/* A communicator of one rank on device. */
fo_comm *gc_one_rank_comm(int device);
fo_dp_options gc_dp_options(const gc_config *c);
/* Two rigs of config c on device 0, a one-rank communicator attached to dp;
 * ref steps without one. */
fo_comm *gc_pair_make(gc_rig *dp, gc_rig *ref, const gc_config *c);
void gc_pair_free(gc_rig *dp, gc_rig *ref, fo_comm *comm);

#endif /* FO_TEST_GPU_COMM_RIG_H */
