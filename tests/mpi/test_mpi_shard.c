/*
 * test_mpi_shard.c -- the multi-rank tier: a sharded optimizer state
 * (ZeRO-1) on the CPU executor over MPI (fusedopt_mpi), run by CTest under
 * mpirun -np 2 and -np 4.
 *
 * A plain C program, not Criterion (which forks per test; MPI does not
 * survive a fork), reporting as test_mpi_dp.c does (mpi_check.h): every
 * rank runs every check; a check passes when it passes on every rank.
 * Rank 0 prints one line per check and, last, "N passed, M failed"; the
 * exit status is non-zero when anything failed.
 *
 * What is shown: the shards tile the arena and the state kept per rank is
 * its shard alone; a sharded run is bit-identical to a plain one for
 * dyadic gradients and within the fp32-summation tolerance for random
 * ones; external storage cannot be sharded, and nothing changes.
 */
#include <math.h>
#include <mpi.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fusedopt.h"
#include "fusedopt_mpi.h"
#include "mpi_check.h"
#include "mpi_model.h"

/* ------------------------------------------------ 5. a sharded state */

/* Two optimizers on every rank, one plain and one sharded (ZeRO-1), fed
 * the same per-rank gradients for K steps.  Dyadic gradients make every
 * sum exact whatever its order (reduce-scatter and all-reduce may add in
 * different orders), and their squares too, so the sharded run must be
 * bit-identical to the plain one: parameters on every rank, and each
 * rank's shard of the state equal to the plain state's slice. */
typedef struct shard_config {
  fo_algorithm alg;
  fo_dtype pd, gd;
  size_t bucket;
  int f32_wire, clip_scale, amsgrad;
  /* random fp32 gradients: sums depend on their order, so the sharded run
   * is only within the fp32-summation tolerance of the plain one */
  int random;
} shard_config;

static void shard_grads(arrays *g, int k, float scale, int random) {
  for (int i = 0; i < NT; i++)
    for (int64_t e = 0; e < SIZES[i]; e++)
      g->a[i][e] =
          scale * (random
                       ? (float)uniform(11, (uint64_t)(g_rank * 64 + k), (uint64_t)(i * NMAX + e))
                       : dyadic((uint64_t)(100 + k), (uint64_t)g_rank, (uint64_t)(i * NMAX + e)));
}

/* Within TOL_ABS + TOL_REL |w| of the plain run; prints the worst. */
static void expect_close(const arrays *plain, const arrays *sharded) {
  double worst = 0.0;
  for (int i = 0; i < NT; i++)
    for (int64_t e = 0; e < SIZES[i] && g_ok; e++) {
      double d = fabs((double)plain->a[i][e] - (double)sharded->a[i][e]);
      double tol = TOL_ABS + TOL_REL * fabs((double)plain->a[i][e]);
      if (d / tol > worst) worst = d / tol;
      CHECK(d <= tol, "tensor %d [%lld]: sharded %.9g vs plain %.9g", i, (long long)e,
            (double)sharded->a[i][e], (double)plain->a[i][e]);
    }
  if (g_rank == 0) printf("  sharded vs plain, random fp32: worst |d| / tol = %.4f\n", worst);
}

/* This rank's shard of every state role equals the plain state's slice. */
static int state_matches(const model *plain, const model *sharded) {
  int64_t first = -1, count = -1;
  if (fo_optimizer_get_shard(sharded->opt, &first, &count) != FO_SUCCESS) return 0;
  int same = 1;
  for (int r = FO_ROLE_MASTER; r < FO_ROLE_COUNT; r++) {
    void *a = NULL, *b = NULL;
    size_t na = 0, nb = 0;
    fo_status sa = fo_optimizer_arena(plain->opt, (fo_role)r, &a, &na);
    fo_status sb = fo_optimizer_arena(sharded->opt, (fo_role)r, &b, &nb);
    if (sa != sb) return 0;
    if (sa != FO_SUCCESS) continue; /* a role neither keeps */
    same &= nb == (size_t)count * 4 && memcmp((const float *)a + first, b, (size_t)count * 4) == 0;
  }
  return same;
}

static void shard_case(const shard_config *c) {
  model plain, sharded;
  arrays g, wp, ws;
  memset(&plain, 0, sizeof plain);
  memset(&sharded, 0, sizeof sharded);
  arrays_alloc(&g);
  arrays_alloc(&wp);
  arrays_alloc(&ws);
  int master = c->pd != FO_DTYPE_F32;
  fo_options o = cpu_options(c->alg, FO_STORAGE_ARENA, c->pd, c->gd);
  o.master_weights = master;
  if (c->clip_scale) {
    o.max_grad_norm = 0.5f;
    o.loss_scaler.enabled = 1;
    o.loss_scaler.init_scale = 64.0f;
    o.loss_scaler.growth_interval = 3;
  }
  fo_hparams h;
  fo_hparams_default(c->alg, &h);
  h.lr = 0.01f;
  if (c->alg == FO_ALG_SGD) h.momentum = 0.9f, h.nesterov = 1;
  if (c->amsgrad) h.amsgrad = 1;
  OK(model_make(&plain, o, &h, 0));
  OK(model_make(&sharded, o, &h, 0));
  for (int i = 0; i < NT; i++)
    for (int64_t e = 0; e < SIZES[i]; e++) wp.a[i][e] = (float)uniform(6, (uint64_t)i, (uint64_t)e);
  OK(put(&plain, 0, wp.a));
  OK(put(&sharded, 0, wp.a));
  OK(fo_optimizer_sync_master(plain.opt, NULL));
  OK(fo_optimizer_sync_master(sharded.opt, NULL));
  OK(attach_ex(&plain, c->bucket, c->f32_wire, 0));
  OK(attach_ex(&sharded, c->bucket, c->f32_wire, 1));
  for (int k = 0; k < K_STEPS; k++) {
    shard_grads(&g, k, loss_scale(&plain), c->random);
    OK(put(&plain, 1, g.a));
    OK(put(&sharded, 1, g.a));
    OK(reduce_reversed(&sharded));
    OK(fo_optimizer_step(plain.opt, NULL));
    OK(fo_optimizer_step(sharded.opt, NULL));
    OK(fo_optimizer_zero_grad(plain.opt, NULL));
    OK(fo_optimizer_zero_grad(sharded.opt, NULL));
    fo_step_info a, b;
    OK(fo_optimizer_get_info(plain.opt, &a));
    OK(fo_optimizer_get_info(sharded.opt, &b));
    if (c->random) /* the norm is summed in another order */
      a.grad_norm = b.grad_norm, a.grad_coef = b.grad_coef;
    CHECK(memcmp(&a, &b, sizeof a) == 0, "step %d: step %lld/%lld norm %.9g/%.9g scale %g/%g", k,
          (long long)a.step, (long long)b.step, (double)a.grad_norm, (double)b.grad_norm,
          (double)a.loss_scale, (double)b.loss_scale);
    if (!g_ok) goto out;
  }
  OK(get(&plain, 0, wp.a));
  OK(get(&sharded, 0, ws.a));
  CHECK(arrays_same_on_every_rank(&ws), "ranks hold different parameters");
  if (c->random) {
    expect_close(&wp, &ws);
    goto out;
  }
  for (int i = 0; i < NT; i++)
    CHECK(memcmp(wp.a[i], ws.a[i], (size_t)SIZES[i] * 4) == 0,
          "alg %d pd %d: tensor %d differs from the plain run", (int)c->alg, (int)c->pd, i);
  CHECK(state_matches(&plain, &sharded), "alg %d pd %d: the shard's state differs", (int)c->alg,
        (int)c->pd);
out:
  model_free(&plain);
  model_free(&sharded);
  arrays_free(&g);
  arrays_free(&wp);
  arrays_free(&ws);
}

static void check_sharded_random_close_to_plain(void) {
  static const shard_config c = {FO_ALG_ADAMW, FO_DTYPE_F32, FO_DTYPE_F32, 4096, 0, 1, 0, 1};
  shard_case(&c);
}

static void check_sharded_equals_plain(void) {
  static const shard_config cases[] = {
      {FO_ALG_ADAMW, FO_DTYPE_F32, FO_DTYPE_F32, 0, 0, 0, 0, 0},
      {FO_ALG_ADAMW, FO_DTYPE_BF16, FO_DTYPE_BF16, 3000, 0, 1, 0, 0},
      {FO_ALG_ADAM, FO_DTYPE_F16, FO_DTYPE_F16, 1, 1, 1, 1, 0},
      {FO_ALG_SGD, FO_DTYPE_F32, FO_DTYPE_F32, 5000, 0, 1, 0, 0},
      {FO_ALG_LION, FO_DTYPE_BF16, FO_DTYPE_F32, 0, 0, 0, 0, 0},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0] && g_ok; i++) shard_case(&cases[i]);
}

/* The shards tile the arena: disjoint, in rank order, 128-aligned, none
 * larger than ceil(total / N) rounded up to 128; the state kept per rank
 * is its shard alone. */
static void check_shards_tile_the_arena(void) {
  model m;
  memset(&m, 0, sizeof m);
  fo_hparams h;
  fo_hparams_default(FO_ALG_ADAMW, &h);
  OK(model_make(&m, cpu_options(FO_ALG_ADAMW, FO_STORAGE_ARENA, FO_DTYPE_BF16, FO_DTYPE_BF16), &h,
                0));
  void *base = NULL;
  size_t full = 0, mine = 0;
  OK(fo_optimizer_arena(m.opt, FO_ROLE_EXP_AVG, &base, &full));
  OK(attach_ex(&m, 0, 0, 1));
  int64_t sh[2] = {-1, -1};
  OK(fo_optimizer_get_shard(m.opt, &sh[0], &sh[1]));
  OK(fo_optimizer_arena(m.opt, FO_ROLE_EXP_AVG, &base, &mine));
  int64_t total = (int64_t)(full / 4), per = (total + g_size - 1) / g_size;
  per = (per + 127) / 128 * 128;
  int64_t *all = malloc((size_t)g_size * sizeof sh);
  MPI_Allgather(sh, 2, MPI_INT64_T, all, 2, MPI_INT64_T, MPI_COMM_WORLD);
  int64_t next = 0;
  for (int r = 0; r < g_size; r++) {
    CHECK(all[2 * r] == next && all[2 * r] % 128 == 0 && all[2 * r + 1] <= per,
          "rank %d's shard [%lld, +%lld) (expected to start at %lld, at most %lld)", r,
          (long long)all[2 * r], (long long)all[2 * r + 1], (long long)next, (long long)per);
    next = all[2 * r] + all[2 * r + 1];
  }
  free(all);
  CHECK(next == total, "the shards cover %lld of %lld elements", (long long)next, (long long)total);
  CHECK(mine == (size_t)sh[1] * 4, "the state keeps %zu bytes for a %lld-element shard", mine,
        (long long)sh[1]);
  float *p = NULL;
  fo_status st = fo_optimizer_state_ptr(m.opt, 0, FO_ROLE_EXP_AVG, &p);
  CHECK(st == FO_ERR_INVALID_STATE, "state_ptr on a sharded state: %s", fo_status_string(st));
  st = fo_optimizer_set_comm(m.opt, NULL, NULL);
  CHECK(st == FO_ERR_INVALID_STATE, "detaching a sharded state: %s", fo_status_string(st));
  if (g_rank == 0)
    printf("  state per rank: %zu of %zu bytes per role (np %d)\n", mine, full, g_size);
out:
  model_free(&m);
}

/* External storage cannot be sharded; nothing changes. */
static void check_shard_refusals(void) {
  model m;
  memset(&m, 0, sizeof m);
  fo_hparams h;
  fo_hparams_default(FO_ALG_ADAMW, &h);
  OK(model_make(&m, cpu_options(FO_ALG_ADAMW, FO_STORAGE_EXTERNAL, FO_DTYPE_F32, FO_DTYPE_F32), &h,
                0));
  fo_status st = attach_ex(&m, 0, 0, 1);
  CHECK(st == FO_ERR_UNSUPPORTED, "external storage: %s", fo_status_string(st));
  int64_t nb = -1;
  OK(fo_optimizer_num_buckets(m.opt, &nb));
  CHECK(nb == 0, "a failed attach left %lld buckets", (long long)nb);
out:
  model_free(&m);
}

int main(int argc, char **argv) {
  g_comm = begin(&argc, &argv);
  run("sharded state: shards tile the arena, state / N", check_shards_tile_the_arena);
  run("sharded state: bit-identical to plain (dyadic)", check_sharded_equals_plain);
  run("sharded state: random fp32 close to plain", check_sharded_random_close_to_plain);
  run("sharded state: refusals change nothing", check_shard_refusals);
  return finish(g_comm);
}
