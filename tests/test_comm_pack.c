/*
 * test_comm_pack.c -- CPU tier of the reduction of scattered gradients:
 * every bucket costs one all-reduce, and the sums and the step are right.
 *
 * Four ranks as threads of one process (thread_ranks.h: a host
 * communicator whose all-reduce sums the ranks' buffers in rank order,
 * each partial sum rounded to the wire dtype, and counts its calls per
 * rank).  Each rank's optimizer (SGD, fp32 parameters) registers external
 * gradients at non-adjacent addresses, some not 16-byte aligned, with
 * poisoned gaps between them, in several buckets.  Each rank's gradients
 * are its own random values.  The test computes by hand what the ranks'
 * sum must be (the communicator's order and rounding, then the unpack's
 * round to nearest even) and what SGD must make of it (p - lr * (sum /
 * 4), every factor a power of two), and checks: one all-reduce per bucket
 * per step on every rank, the gradients after the reduction, the gaps,
 * and the parameters after the step -- for fp32, fp16 and bf16 gradients,
 * and fp16 and bf16 reduced in fp32.
 */
#define _POSIX_C_SOURCE 200809L /* mkdtemp, in ckpt_harness.h */

#include <criterion/criterion.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cr_status.h"
#include "fusedopt.h"
#include "testutil.h"
#include "thread_ranks.h"

#define NR 4  /* ranks: the divisor 4 is exact */
#define NTS 9 /* tensors */
static const int64_t TS[NTS] = {37, 1, 300, 16385, 8, 4099, 0, 77, 1000};
/* Elements of gap before each tensor: odd ones misalign what follows. */
static const int64_t GAPS[NTS] = {3, 8, 1, 16, 5, 2, 7, 9, 4};
#define LR 0.5f
#define POISON 0xC3

typedef struct rank_state {
  fo_optimizer *opt;
  fo_comm *comm;
  float *params;
  unsigned char *grads;     /* one buffer: gaps and tensors */
  int64_t at[NTS];          /* each tensor's element offset in grads */
  int64_t total;            /* elements of grads */
  float values[NTS][16385]; /* this step's gradients, as fp32 */
  int step_kind;            /* what the thread does: see rank_main */
  fo_status st;
  char msg[300];
} rank_state;

typedef struct world {
  tr_world w;
  rank_state r[NR];
  fo_dtype gd;
} world;

static void *at_elem(void *base, int64_t e, fo_dtype dt) {
  return (char *)base + (size_t)e * fo_dtype_size(dt);
}

static void world_make(world *x, fo_dtype gd, int reduce_in_f32, size_t bucket_bytes) {
  memset(x, 0, sizeof *x);
  x->gd = gd;
  tr_world_init(&x->w, NR);
  tu_rng rng;
  tu_rng_seed(&rng, 91, 1);
  int64_t np = 0;
  for (int i = 0; i < NTS; i++) np += TS[i];
  float *init = malloc((size_t)np * sizeof *init);
  cr_assert(init);
  for (int64_t e = 0; e < np; e++) init[e] = (float)tu_rng_nonzero(&rng, -1.0, 1.0);
  for (int q = 0; q < NR; q++) {
    rank_state *r = &x->r[q];
    r->params = malloc((size_t)np * sizeof(float));
    cr_assert(r->params);
    memcpy(r->params, init, (size_t)np * sizeof(float));
    int64_t off = 0;
    for (int i = 0; i < NTS; i++) {
      off += GAPS[i];
      r->at[i] = off;
      off += TS[i];
    }
    r->total = off + 5;
    r->grads = malloc((size_t)r->total * fo_dtype_size(gd));
    cr_assert(r->grads);
    memset(r->grads, POISON, (size_t)r->total * fo_dtype_size(gd));
    fo_options o;
    OK(fo_options_default(&o));
    o.algorithm = FO_ALG_SGD;
    o.storage = FO_STORAGE_EXTERNAL;
    o.param_dtype = FO_DTYPE_F32;
    o.grad_dtype = gd;
    o.num_threads = 1;
    fo_hparams h;
    OK(fo_hparams_default(FO_ALG_SGD, &h));
    h.lr = LR;
    fo_tensor_desc t[NTS];
    int64_t p = 0;
    for (int i = 0; i < NTS; i++) {
      t[i] = (fo_tensor_desc){TS[i], 0, r->params + p, at_elem(r->grads, r->at[i], gd), NULL};
      p += TS[i];
    }
    OK(fo_optimizer_create(&r->opt, &o, &h, 1, t, NTS));
    r->comm = tr_world_comm(&x->w, q);
    fo_dp_options d;
    OK(fo_dp_options_default(&d));
    d.bucket_bytes = bucket_bytes;
    d.reduce_in_f32 = reduce_in_f32;
    OK(fo_optimizer_set_comm(r->opt, r->comm, &d));
  }
  free(init);
}

static void world_free(world *x) {
  for (int q = 0; q < NR; q++) {
    OK(fo_optimizer_destroy(x->r[q].opt));
    OK(fo_comm_destroy(x->r[q].comm));
    free(x->r[q].params);
    free(x->r[q].grads);
  }
  tr_world_destroy(&x->w);
}

/* What one rank does on its thread: reduce everything (0), reduce the
 * buckets last first (1), or step (2). */
static void *rank_main(void *arg) {
  rank_state *r = arg;
  fo_status st = FO_SUCCESS;
  if (r->step_kind == 0) {
    st = fo_optimizer_reduce_grads(r->opt, NULL);
  } else if (r->step_kind == 1) {
    int64_t nb = 0;
    st = fo_optimizer_num_buckets(r->opt, &nb);
    for (int64_t b = nb - 1; b >= 0 && st == FO_SUCCESS; b--)
      st = fo_optimizer_reduce_bucket(r->opt, b, NULL);
  } else {
    st = fo_optimizer_step(r->opt, NULL);
  }
  r->st = st;
  snprintf(r->msg, sizeof r->msg, "%s", st == FO_SUCCESS ? "" : fo_last_error());
  return NULL;
}

static void run_ranks(world *x, int kind) {
  pthread_t th[NR];
  for (int q = 0; q < NR; q++) {
    x->r[q].step_kind = kind;
    cr_assert_eq(pthread_create(&th[q], NULL, rank_main, &x->r[q]), 0);
  }
  for (int q = 0; q < NR; q++) cr_assert_eq(pthread_join(th[q], NULL), 0);
  for (int q = 0; q < NR; q++) cr_assert_eq(x->r[q].st, FO_SUCCESS, "rank %d: %s", q, x->r[q].msg);
}

/* Fresh, nonzero gradients of step k on every rank, rounded to the
 * gradient dtype (values keeps what each rank holds, as fp32). */
static void fill(world *x, int k) {
  for (int q = 0; q < NR; q++) {
    rank_state *r = &x->r[q];
    tu_rng rng;
    tu_rng_seed(&rng, 500 + (uint64_t)k, 1 + (uint64_t)q);
    for (int i = 0; i < NTS; i++) {
      for (int64_t e = 0; e < TS[i]; e++) r->values[i][e] = (float)tu_rng_nonzero(&rng, -1.0, 1.0);
      void *g = at_elem(r->grads, r->at[i], x->gd);
      OK(fo_convert_from_f32(x->gd, r->values[i], g, TS[i]));
      OK(fo_convert_to_f32(x->gd, g, r->values[i], TS[i]));
    }
  }
}

/* x rounded to dtype and back. */
static float round_to(fo_dtype dt, float v) {
  unsigned char h[4];
  OK(fo_convert_from_f32(dt, &v, h, 1));
  float out;
  OK(fo_convert_to_f32(dt, h, &out, 1));
  return out;
}

/* The ranks' sum of element e of tensor i, by hand: rank order, each
 * partial sum rounded to the wire dtype (the communicator's), then to the
 * gradient dtype (the unpack). */
static float hand_sum(const world *x, fo_dtype wire, int i, int64_t e) {
  float acc = x->r[0].values[i][e];
  for (int q = 1; q < NR; q++) acc = round_to(wire, acc + x->r[q].values[i][e]);
  return round_to(x->gd, acc);
}

/* One collective per bucket per step on every rank, so far steps. */
static void expect_calls(const world *x, int steps) {
  int64_t nb = 0;
  OK(fo_optimizer_num_buckets(x->r[0].opt, &nb));
  for (int q = 0; q < NR; q++)
    cr_assert_eq(x->w.allreduce_calls[q], steps * (int)nb,
                 "rank %d: %d all-reduces for %lld buckets x %d steps", q, x->w.allreduce_calls[q],
                 (long long)nb, steps);
}

/* Every rank's gradients hold the hand sum; the gaps their poison. */
static void expect_sums(const world *x, fo_dtype wire) {
  size_t gs = fo_dtype_size(x->gd);
  for (int q = 0; q < NR; q++) {
    const rank_state *r = &x->r[q];
    int64_t next = 0;
    for (int i = 0; i < NTS; i++) {
      for (int64_t e = next; e < r->at[i]; e++)
        for (size_t b = 0; b < gs; b++)
          cr_assert_eq(r->grads[(size_t)e * gs + b], POISON, "rank %d: gap element %lld written", q,
                       (long long)e);
      float got[16385];
      OK(fo_convert_to_f32(x->gd, at_elem(r->grads, r->at[i], x->gd), got, TS[i]));
      for (int64_t e = 0; e < TS[i]; e++) {
        float want = hand_sum(x, wire, i, e);
        cr_assert(memcmp(&got[e], &want, 4) == 0,
                  "rank %d tensor %d element %lld: %.9g, by hand %.9g", q, i, (long long)e,
                  (double)got[e], (double)want);
      }
      next = r->at[i] + TS[i];
    }
    for (size_t b = (size_t)next * gs; b < (size_t)r->total * gs; b++)
      cr_assert_eq(r->grads[b], POISON, "rank %d: the last gap written", q);
  }
}

/* SGD over the hand sum: p - lr * (sum * 1/4) on every rank, from before
 * (the parameters before the step). */
static void expect_step(const world *x, fo_dtype wire, const float *before) {
  for (int q = 0; q < NR; q++) {
    int64_t p = 0;
    for (int i = 0; i < NTS; i++)
      for (int64_t e = 0; e < TS[i]; e++, p++) {
        float d = hand_sum(x, wire, i, e) * 0.25f;
        float want = before[p] - LR * d;
        cr_assert(memcmp(&x->r[q].params[p], &want, 4) == 0,
                  "rank %d tensor %d element %lld: %.9g, by hand %.9g", q, i, (long long)e,
                  (double)x->r[q].params[p], (double)want);
      }
  }
}

static void run_case(fo_dtype gd, int reduce_in_f32) {
  static world x; /* large: not on the stack */
  world_make(&x, gd, reduce_in_f32, 8000);
  fo_dtype wire = reduce_in_f32 ? FO_DTYPE_F32 : gd;
  int64_t nb = 0, multi = 0;
  OK(fo_optimizer_num_buckets(x.r[0].opt, &nb));
  for (int64_t b = 0; b < nb; b++) {
    int64_t first, count;
    OK(fo_optimizer_bucket_tensors(x.r[0].opt, b, &first, &count));
    multi += count > 1;
  }
  cr_assert(nb >= 3 && multi >= 2, "%lld buckets, %lld of several tensors", (long long)nb,
            (long long)multi);
  int64_t np = 0;
  for (int i = 0; i < NTS; i++) np += TS[i];
  float *before = malloc((size_t)np * sizeof *before);
  cr_assert(before);
  for (int k = 0; k < 3; k++) {
    fill(&x, k);
    memcpy(before, x.r[0].params, (size_t)np * sizeof *before);
    if (k < 2) { /* reduced before the step, all at once or last first */
      run_ranks(&x, k);
      expect_calls(&x, k + 1);
      expect_sums(&x, wire);
    }
    run_ranks(&x, 2); /* step 2 reduces inside the step */
    expect_calls(&x, k + 1);
    expect_sums(&x, wire);
    expect_step(&x, wire, before);
    for (int q = 1; q < NR; q++)
      cr_assert(memcmp(x.r[q].params, x.r[0].params, (size_t)np * 4) == 0);
    for (int q = 0; q < NR; q++) OK(fo_optimizer_zero_grad(x.r[q].opt, NULL));
  }
  free(before);
  world_free(&x);
}

Test(comm_pack, f32_gradients) {
  run_case(FO_DTYPE_F32, 0);
}

Test(comm_pack, f16_gradients) {
  run_case(FO_DTYPE_F16, 0);
}

Test(comm_pack, bf16_gradients) {
  run_case(FO_DTYPE_BF16, 0);
}

Test(comm_pack, f16_reduced_in_f32) {
  run_case(FO_DTYPE_F16, 1);
}

Test(comm_pack, bf16_reduced_in_f32) {
  run_case(FO_DTYPE_BF16, 1);
}
