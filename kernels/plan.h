/*
 * plan.h -- the launch plan as the kernels read it (C and CUDA).
 *
 * A plan is a table of tensors and a table of blocks.  Block b processes
 * elements [start, min(start + chunk, numel)) of tensor blocks[b].tensor, so
 * one launch of num_blocks blocks covers every element of every tensor
 * exactly once.  Built once on the host (host/plan.c) when the optimizer is
 * created and uploaded once; a step passes only scalars.
 */
#ifndef FO_PLAN_H
#define FO_PLAN_H

#include <stdint.h>

/* The most parameter groups one launch carries (== FO_MAX_GROUPS). */
#define FO_PLAN_MAX_GROUPS 64

/* One tensor as the kernels see it: every buffer of its roles.  A buffer
 * the optimizer does not keep is NULL. */
typedef struct fo_plan_tensor {
  void *param;           /* param_dtype, numel elements */
  void *grad;            /* grad_dtype */
  float *master;         /* fp32 master weights, or NULL */
  float *exp_avg;        /* first moment / momentum buffer, or NULL */
  float *exp_avg_sq;     /* second moment, or NULL */
  float *max_exp_avg_sq; /* AMSGrad running max, or NULL */
  int64_t numel;
  /* The tensor's index among the optimizer's tensors; a shard's piece of a
   * tensor keeps it (LAMB's and LARS's norms add the pieces up by it). */
  int64_t index;
  int32_t group;
  /* Non-zero when every buffer above is aligned to 16 bytes, so the
   * vector path may run over whole vectors from the tensor's start. */
  int32_t vector_ok;
} fo_plan_tensor;

/* One block's chunk. */
typedef struct fo_plan_block {
  int64_t tensor; /* index into the tensor table */
  int64_t start;  /* first element; a multiple of the chunk size */
} fo_plan_block;

#endif /* FO_PLAN_H */
