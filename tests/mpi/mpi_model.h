/*
 * mpi_model.h -- what the data-parallel programs of the multi-rank tier
 * share (test_mpi_dp.c, test_mpi_shard.c): values every rank can compute
 * for every other rank, a small model of tensors in one optimizer, arrays
 * of per-tensor values, and the communicator over MPI_COMM_WORLD.
 */
#ifndef FO_MPI_MODEL_H
#define FO_MPI_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "fusedopt.h"

/* ---------------------------------------------------------------- data */

double uniform(uint64_t seed, uint64_t a, uint64_t b);

/* A dyadic value k/16, k in [-4, 4]: sums of up to 4 of them, and their
 * means, are exact in fp32, fp16 and bf16. */
float dyadic(uint64_t seed, uint64_t a, uint64_t b);

/* ------------------------------------------------------------ the model */

#define NT 5

extern const int64_t SIZES[NT];

#define NMAX 4099

/* Tensors in one optimizer: arena, or external with gaps between tensors
 * (scattered: packed on the CPU) or without (adjacent: one segment). */
typedef struct model {
  fo_optimizer *opt;
  void *pbuf, *gbuf;
  fo_options o;
} model;

fo_status model_make(model *m, fo_options o, const fo_hparams *h, int64_t gap);

void model_free(model *m);

/* Write values (fp32, one array per tensor) into the role's buffers. */
fo_status put(const model *m, int grad, float *const vals[NT]);

fo_status get(const model *m, int grad, float *vals[NT]);

typedef struct arrays {
  float *a[NT];
} arrays;

void arrays_alloc(arrays *x);

void arrays_free(arrays *x);

/* Rank 0's bits of buf, compared on every rank: 1 when they match. */
int same_on_every_rank(const void *buf, size_t bytes);

int arrays_same_on_every_rank(const arrays *x);

/* CPU executor options, one thread (several ranks share the cores). */
fo_options cpu_options(fo_algorithm alg, fo_storage storage, fo_dtype pd, fo_dtype gd);

extern fo_comm *g_comm; /* over MPI_COMM_WORLD, made by main */

/* Attach g_comm to m's optimizer: data parallelism with these buckets and
 * wire dtype, the state sharded (ZeRO-1) when shard != 0. */
fo_status attach_ex(model *m, size_t bucket_bytes, int reduce_in_f32, int shard);
/* attach_ex without sharding. */
fo_status attach(model *m, size_t bucket_bytes, int reduce_in_f32);

/* Reduce every bucket, last first (as a backward pass produces them). */
fo_status reduce_reversed(model *m);

/* The steps of the multi-step checks. */
#define K_STEPS 25

/* Tolerance against a run with other sums (the single process; a sharded
 * state over random gradients): the two runs differ only in how the fp32
 * gradients are summed (per-rank means rounded to fp32, then an fp32 sum,
 * vs one mean over all rows), a few fp32 ulps of the gradient per step.
 * Adam normalises the update, so the difference of parameters stays near K
 * x lr x (relative gradient difference); measured worst at np 4 well below
 * 1e-5 of the parameters' scale (printed), checked at
 * |d| <= 1e-5 + 1e-5 |w|. */
#define TOL_ABS 1e-5

#define TOL_REL 1e-5

/* The current loss scale (1 without a scaler). */
float loss_scale(const model *m);

#endif /* FO_MPI_MODEL_H */
