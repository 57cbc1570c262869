/*
 * comm_rig.h -- the optimizer rig of the communicator tests
 * (test_comm_*.c): AdamW over a few tensors in external or arena storage,
 * gradients per step, and the equivalence of a run with the fake
 * communicator (fake_comm.h) attached and one without.
 */
#ifndef FO_TEST_COMM_RIG_H
#define FO_TEST_COMM_RIG_H

#include <stddef.h>
#include <stdint.h>

#include "fusedopt.h"

/* ------------------------------------------------------------- the rig */

#define NT 7

/* The tensors: empty, tiny, odd, several buckets. */
extern const int64_t SIZES[NT];

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

/* An AdamW optimizer (two groups, clipping, loss scaling) over the
 * tensors, parameters random in [-1, 1]. */
void rig_make(rig *r, const config *c);
void rig_free(rig *r);

/* Gradients of step k (the same for every rig), times the loss scale. */
void rig_grads(rig *r, fo_dtype gd, int k, int inf_at);

/* Every parameter and state buffer of a and b holds the same bits. */
void expect_same(const rig *a, const rig *b, fo_dtype pd, const char *what);

/* K steps of a rig with the fake (4 ranks) and one without, the same
 * gradients: bit-identical, every step a clean one but the overflow step. */
void run_equivalence(const config *c, int overlap);

#endif /* FO_TEST_COMM_RIG_H */
