/*
 * test_mpi_dp.c -- the multi-rank tier: data-parallel training on the CPU
 * executor over MPI (fusedopt_mpi), run by CTest under mpirun -np 2 and
 * -np 4.
 *
 * A plain C program, not Criterion (which forks per test; MPI does not
 * survive a fork).  Every rank runs every check; a check passes when it
 * passes on every rank (MPI_Allreduce of the verdicts).  Rank 0 prints one
 * line per check and, last, "N passed, M failed"; the exit status is
 * non-zero when anything failed.  A rank that sees a failure prints why,
 * prefixed with its rank.
 *
 * What is shown:
 *   - averaged gradients equal the mean of the per-rank gradients: exactly
 *     for dyadic values (every dtype, arena and scattered external tensors,
 *     own-dtype and fp32 wire, one bucket or many reduced in reverse order
 *     as a backward pass would), and within fp32 summation error for random
 *     values; every rank holds the same bits;
 *   - after K steps (AdamW, SGD with momentum; loss scaling and clipping
 *     on) every rank holds bit-identical parameters, equal within the
 *     stated tolerance to a single-process run on the concatenated batch;
 *   - an overflow on one rank (inf, NaN, or a sum that overflows fp16)
 *     makes every rank skip the step: same skip count, same backed-off
 *     scale, parameters untouched, and training goes on in lock step;
 *   - fo_comm_allreduce_sum per dtype; NCCL bootstrap through MPI fails on
 *     every rank alike when there is no device (no hang).
 *
 * The sharded state (ZeRO-1) is test_mpi_shard.c's; what both share is
 * mpi_model.h.
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

/* ------------------------------------------------------ 1. the mean */

/* The step writes the averaged gradients back (write_unscaled_grads): with
 * dyadic per-rank gradients they must be exactly the mean. */
static void mean_case(fo_dtype gd, fo_storage storage, int64_t gap, size_t bucket, int f32,
                      int reversed) {
  model m;
  arrays g, want, got;
  memset(&m, 0, sizeof m);
  arrays_alloc(&g);
  arrays_alloc(&want);
  arrays_alloc(&got);
  fo_options o = cpu_options(FO_ALG_SGD, storage, FO_DTYPE_F32, gd);
  o.write_unscaled_grads = 1;
  fo_hparams h;
  fo_hparams_default(FO_ALG_SGD, &h);
  h.lr = 0.0f;
  OK(model_make(&m, o, &h, gap));
  OK(attach(&m, bucket, f32));
  for (int i = 0; i < NT; i++)
    for (int64_t e = 0; e < SIZES[i]; e++) {
      double sum = 0.0;
      for (int r = 0; r < g_size; r++) sum += dyadic((uint64_t)r, (uint64_t)i, (uint64_t)e);
      g.a[i][e] = dyadic((uint64_t)g_rank, (uint64_t)i, (uint64_t)e);
      want.a[i][e] = (float)(sum / g_size);
    }
  OK(put(&m, 1, g.a));
  if (reversed) OK(reduce_reversed(&m));
  OK(fo_optimizer_step(m.opt, NULL));
  OK(get(&m, 1, got.a));
  /* exact for 2 and 4 ranks (CTest's); any other count divides inexactly:
   * allow the rounding of the mean to the gradient dtype */
  int pow2 = (g_size & (g_size - 1)) == 0;
  double ulp = gd == FO_DTYPE_F32 ? 0x1.0p-23 : gd == FO_DTYPE_F16 ? 0x1.0p-10 : 0x1.0p-7;
  for (int i = 0; i < NT; i++)
    for (int64_t e = 0; e < SIZES[i]; e++)
      if (fabs((double)got.a[i][e] - (double)want.a[i][e]) >
          (pow2 ? 0.0 : ulp * fabs((double)want.a[i][e]))) {
        CHECK(0,
              "dtype %d storage %d gap %lld bucket %zu f32 %d: tensor %d [%lld] = %g, "
              "mean %g",
              (int)gd, (int)storage, (long long)gap, bucket, f32, i, (long long)e,
              (double)got.a[i][e], (double)want.a[i][e]);
        goto out;
      }
  CHECK(arrays_same_on_every_rank(&got), "ranks hold different gradients");
out:
  if (m.opt) fo_optimizer_set_comm(m.opt, NULL, NULL);
  model_free(&m);
  arrays_free(&g);
  arrays_free(&want);
  arrays_free(&got);
}

static void check_mean_exact(void) {
  fo_dtype dts[3] = {FO_DTYPE_F32, FO_DTYPE_F16, FO_DTYPE_BF16};
  for (int d = 0; d < 3; d++)
    for (int f32 = 0; f32 <= (d > 0); f32++) {
      mean_case(dts[d], FO_STORAGE_ARENA, 0, 0, f32, 0);
      mean_case(dts[d], FO_STORAGE_ARENA, 0, 3000, f32, 1);
      mean_case(dts[d], FO_STORAGE_EXTERNAL, 0, 0, f32, 0);  /* adjacent */
      mean_case(dts[d], FO_STORAGE_EXTERNAL, 21, 0, f32, 0); /* scattered */
      mean_case(dts[d], FO_STORAGE_EXTERNAL, 21, 1, f32, 1); /* a bucket per tensor */
    }
}

/* Random fp32 gradients: the reduced sum is within fp32 summation error
 * of the exact sum ((N-1) roundings: |err| <= (N-1) 2^-24 sum |g_r|), and
 * the same bits on every rank. */
static void check_sum_random(void) {
  model m;
  arrays g, got;
  memset(&m, 0, sizeof m);
  arrays_alloc(&g);
  arrays_alloc(&got);
  fo_options o = cpu_options(FO_ALG_SGD, FO_STORAGE_ARENA, FO_DTYPE_F32, FO_DTYPE_F32);
  fo_hparams h;
  fo_hparams_default(FO_ALG_SGD, &h);
  OK(model_make(&m, o, &h, 0));
  OK(attach(&m, 2048, 0));
  for (int i = 0; i < NT; i++)
    for (int64_t e = 0; e < SIZES[i]; e++)
      g.a[i][e] = (float)uniform(11, (uint64_t)g_rank, (uint64_t)(i * NMAX + e));
  OK(put(&m, 1, g.a));
  OK(reduce_reversed(&m));
  OK(get(&m, 1, got.a));
  double worst = 0.0;
  for (int i = 0; i < NT; i++)
    for (int64_t e = 0; e < SIZES[i]; e++) {
      double sum = 0.0, abs_sum = 0.0;
      for (int r = 0; r < g_size; r++) {
        double v = (double)(float)uniform(11, (uint64_t)r, (uint64_t)(i * NMAX + e));
        sum += v;
        abs_sum += fabs(v);
      }
      double err = fabs((double)got.a[i][e] - sum), tol = (g_size - 1) * 0x1.0p-24 * abs_sum;
      if (err / (tol + 1e-300) > worst) worst = err / (tol + 1e-300);
      CHECK(err <= tol, "tensor %d [%lld]: sum %.9g, exact %.9g", i, (long long)e,
            (double)got.a[i][e], sum);
      if (!g_ok) goto out;
    }
  CHECK(arrays_same_on_every_rank(&got), "ranks hold different sums");
  if (g_rank == 0) printf("  worst error / bound: %.3f\n", worst);
out:
  if (m.opt) fo_optimizer_set_comm(m.opt, NULL, NULL);
  model_free(&m);
  arrays_free(&g);
  arrays_free(&got);
}

static void check_allreduce_sum(void) {
  float f[5];
  uint16_t h[5];
  fo_dtype dts[3] = {FO_DTYPE_F32, FO_DTYPE_F16, FO_DTYPE_BF16};
  for (int d = 0; d < 3; d++) {
    for (int i = 0; i < 5; i++) f[i] = (float)(g_rank + 1) * (float)(i - 2) * 0.25f;
    void *buf = f;
    if (dts[d] != FO_DTYPE_F32) {
      OK(fo_convert_from_f32(dts[d], f, h, 5));
      buf = h;
    }
    OK(fo_comm_allreduce_sum(g_comm, buf, 5, dts[d], NULL));
    if (buf == h) OK(fo_convert_to_f32(dts[d], h, f, 5));
    float ranks = (float)(g_size * (g_size + 1) / 2);
    for (int i = 0; i < 5; i++)
      CHECK(f[i] == ranks * (float)(i - 2) * 0.25f, "dtype %d [%d] = %g", (int)dts[d], i,
            (double)f[i]);
  }
out:;
}

/* ----------------------------------------- 2. K steps vs one process */

/* Linear least squares: rank r holds rows r*B .. r*B+B-1 of the global
 * batch; loss = mean over rows of (x.w - y)^2 / 2 with w all the tensors'
 * parameters in order.  The per-rank gradient is the mean over its rows,
 * computed in double and rounded to fp32; the single-process reference
 * takes the mean over all N*B rows the same way. */
#define ROWS 6

static double feature(int64_t row, int tensor, int64_t e) {
  return uniform(77, (uint64_t)row, (uint64_t)(tensor * NMAX + e)) / 8.0;
}

static double target(int64_t row) {
  return uniform(78, (uint64_t)row, 0);
}

static void batch_grads(const arrays *w, int64_t row0, int64_t rows, float scale, arrays *g,
                        double *buf[NT]) {
  for (int i = 0; i < NT; i++) memset(buf[i], 0, (size_t)(SIZES[i] + 1) * sizeof(double));
  for (int64_t r = row0; r < row0 + rows; r++) {
    double pred = 0.0;
    for (int i = 0; i < NT; i++)
      for (int64_t e = 0; e < SIZES[i]; e++) pred += feature(r, i, e) * (double)w->a[i][e];
    double res = pred - target(r);
    for (int i = 0; i < NT; i++)
      for (int64_t e = 0; e < SIZES[i]; e++) buf[i][e] += res * feature(r, i, e);
  }
  for (int i = 0; i < NT; i++)
    for (int64_t e = 0; e < SIZES[i]; e++)
      g->a[i][e] = (float)(buf[i][e] / (double)rows * (double)scale);
}

/* The tolerance against the single process: TOL_ABS and TOL_REL
 * (mpi_model.h). */

static void steps_case(fo_algorithm alg, size_t bucket, int clip_scale) {
  model dp, ref;
  arrays w, g, wr, gr;
  double *buf[NT];
  memset(&dp, 0, sizeof dp);
  memset(&ref, 0, sizeof ref);
  arrays_alloc(&w);
  arrays_alloc(&g);
  arrays_alloc(&wr);
  arrays_alloc(&gr);
  for (int i = 0; i < NT; i++) buf[i] = calloc((size_t)SIZES[i] + 1, sizeof(double));
  fo_options o = cpu_options(alg, FO_STORAGE_ARENA, FO_DTYPE_F32, FO_DTYPE_F32);
  if (clip_scale) {
    o.max_grad_norm = 0.05f;
    o.loss_scaler.enabled = 1;
    o.loss_scaler.init_scale = 256.0f;
    o.loss_scaler.growth_interval = 5; /* grows during the run */
  }
  fo_hparams h;
  fo_hparams_default(alg, &h);
  h.lr = 0.01f;
  if (alg == FO_ALG_SGD) h.momentum = 0.9f, h.lr = 0.05f;
  OK(model_make(&dp, o, &h, 0));
  OK(model_make(&ref, o, &h, 0));
  OK(attach(&dp, bucket, 0));
  for (int i = 0; i < NT; i++)
    for (int64_t e = 0; e < SIZES[i]; e++)
      w.a[i][e] = (float)uniform(5, (uint64_t)i, (uint64_t)e) * 0.1f;
  OK(put(&dp, 0, w.a));
  OK(put(&ref, 0, w.a));
  double worst = 0.0;
  for (int k = 0; k < K_STEPS; k++) {
    OK(get(&dp, 0, w.a));
    OK(get(&ref, 0, wr.a));
    batch_grads(&w, (int64_t)g_rank * ROWS, ROWS, loss_scale(&dp), &g, buf);
    batch_grads(&wr, 0, (int64_t)g_size * ROWS, loss_scale(&ref), &gr, buf);
    OK(put(&dp, 1, g.a));
    OK(put(&ref, 1, gr.a));
    OK(reduce_reversed(&dp));
    OK(fo_optimizer_step(dp.opt, NULL));
    OK(fo_optimizer_step(ref.opt, NULL));
    fo_step_info a, b;
    OK(fo_optimizer_get_info(dp.opt, &a));
    OK(fo_optimizer_get_info(ref.opt, &b));
    CHECK(same_on_every_rank(&a, sizeof a), "step %d: ranks disagree on the step state", k);
    CHECK(a.step == b.step && a.loss_scale == b.loss_scale && !a.last_step_skipped,
          "step %d: step %lld/%lld scale %g/%g skipped %d", k, (long long)a.step, (long long)b.step,
          (double)a.loss_scale, (double)b.loss_scale, a.last_step_skipped);
    if (clip_scale)
      CHECK(fabs((double)a.grad_norm - (double)b.grad_norm) <= 1e-5 * (double)b.grad_norm,
            "step %d: norm %g vs %g", k, (double)a.grad_norm, (double)b.grad_norm);
    if (!g_ok) goto out;
  }
  OK(get(&dp, 0, w.a));
  OK(get(&ref, 0, wr.a));
  CHECK(arrays_same_on_every_rank(&w), "ranks hold different parameters after %d steps", K_STEPS);
  for (int i = 0; i < NT; i++)
    for (int64_t e = 0; e < SIZES[i]; e++) {
      double d = fabs((double)w.a[i][e] - (double)wr.a[i][e]);
      double tol = TOL_ABS + TOL_REL * fabs((double)wr.a[i][e]);
      if (d / tol > worst) worst = d / tol;
      CHECK(d <= tol, "alg %d: tensor %d [%lld]: %.9g vs single process %.9g", (int)alg, i,
            (long long)e, (double)w.a[i][e], (double)wr.a[i][e]);
      if (!g_ok) goto out;
    }
  if (g_rank == 0)
    printf("  alg %d bucket %zu clip+scale %d: worst |d| / tol = %.4f\n", (int)alg, bucket,
           clip_scale, worst);
out:
  if (dp.opt) fo_optimizer_set_comm(dp.opt, NULL, NULL);
  model_free(&dp);
  model_free(&ref);
  arrays_free(&w);
  arrays_free(&g);
  arrays_free(&wr);
  arrays_free(&gr);
  for (int i = 0; i < NT; i++) free(buf[i]);
}

static void check_steps_match_single_process(void) {
  steps_case(FO_ALG_ADAMW, 0, 0);
  steps_case(FO_ALG_ADAMW, 4096, 1);
  steps_case(FO_ALG_SGD, 1, 1);
}

/* ------------------------------------------------ 3. overflow agreement */

/* Rank N-1 alone sees a bad gradient at step 2 (kind 0: inf, 1: NaN;
 * kind 2: every rank has 40000 in one fp16 element, finite, but the sum
 * overflows fp16).  Every rank must skip that step alike. */
static void overflow_case(int kind, fo_dtype gd, int shard) {
  model m;
  arrays g, before, after;
  memset(&m, 0, sizeof m);
  arrays_alloc(&g);
  arrays_alloc(&before);
  arrays_alloc(&after);
  fo_options o = cpu_options(FO_ALG_ADAMW, FO_STORAGE_ARENA, FO_DTYPE_F32, gd);
  o.loss_scaler.enabled = 1;
  o.loss_scaler.init_scale = 1024.0f;
  fo_hparams h;
  fo_hparams_default(FO_ALG_ADAMW, &h);
  OK(model_make(&m, o, &h, 0));
  OK(attach_ex(&m, 3000, 0, shard));
  for (int k = 0; k < 5; k++) {
    for (int i = 0; i < NT; i++)
      for (int64_t e = 0; e < SIZES[i]; e++)
        g.a[i][e] = (float)uniform(9, (uint64_t)(g_rank * 16 + k), (uint64_t)(i * NMAX + e));
    int bad = k == 2 && (kind == 2 || g_rank == g_size - 1);
    if (bad) g.a[3][100] = kind == 0 ? INFINITY : kind == 1 ? NAN : 40000.0f;
    OK(put(&m, 1, g.a));
    OK(get(&m, 0, before.a));
    fo_step_info prev, info;
    OK(fo_optimizer_get_info(m.opt, &prev));
    OK(fo_optimizer_step(m.opt, NULL));
    OK(fo_optimizer_get_info(m.opt, &info));
    OK(get(&m, 0, after.a));
    CHECK(same_on_every_rank(&info, sizeof info), "step %d: ranks disagree on the state", k);
    int skip = k == 2;
    CHECK(info.last_step_skipped == skip, "step %d: skipped = %d", k, info.last_step_skipped);
    CHECK(info.skipped_steps == (k >= 2), "step %d: %lld skipped", k,
          (long long)info.skipped_steps);
    if (skip) {
      CHECK(info.loss_scale == prev.loss_scale * 0.5f, "scale %g after %g", (double)info.loss_scale,
            (double)prev.loss_scale);
      CHECK(info.step == prev.step, "the step count moved");
      for (int i = 0; i < NT; i++)
        CHECK(memcmp(before.a[i], after.a[i], (size_t)SIZES[i] * 4) == 0,
              "tensor %d changed on a skipped step", i);
    }
    CHECK(arrays_same_on_every_rank(&after), "step %d: ranks hold different parameters", k);
    if (!g_ok) goto out;
    OK(fo_optimizer_zero_grad(m.opt, NULL));
  }
out:
  if (m.opt) fo_optimizer_set_comm(m.opt, NULL, NULL);
  model_free(&m);
  arrays_free(&g);
  arrays_free(&before);
  arrays_free(&after);
}

static void check_overflow_on_one_rank_skips_everywhere(void) {
  for (int shard = 0; shard < 2; shard++) {
    overflow_case(0, FO_DTYPE_F32, shard);
    overflow_case(1, FO_DTYPE_BF16, shard);
    overflow_case(0, FO_DTYPE_F16, shard);
  }
}

static void check_overflow_of_the_sum_skips_everywhere(void) {
  if (g_size < 2) return;
  overflow_case(2, FO_DTYPE_F16, 0); /* 2 x 40000 > 65504 */
  overflow_case(2, FO_DTYPE_F16, 1);
}

/* ------------------------------------------------------- 4. NCCL + MPI */

/* Without a usable device every rank must fail alike, and return. */
static void check_nccl_bootstrap_agrees(void) {
  int n = 0;
  if (fo_cuda_device_count(&n) == FO_SUCCESS && n > 0) {
    if (g_rank == 0) printf("  a CUDA device is present: see tests/test_gpu_comm.c\n");
    return;
  }
  fo_comm *c = NULL;
  fo_status st = fo_comm_create_nccl_mpi(&c, MPI_COMM_WORLD, -1);
  CHECK(st == FO_ERR_NO_DEVICE, "fo_comm_create_nccl_mpi: %s (%s)", fo_status_string(st),
        fo_last_error());
  CHECK(c == NULL, "a communicator came back");
  st = fo_comm_create_mpi(NULL, MPI_COMM_WORLD);
  CHECK(st == FO_ERR_NULL_POINTER, "NULL out: %s", fo_status_string(st));
  st = fo_comm_create_mpi(&c, MPI_COMM_NULL);
  CHECK(st == FO_ERR_INVALID_ARGUMENT, "MPI_COMM_NULL: %s", fo_status_string(st));
}

/* A refusal on one rank (a bad argument) fails every rank, which returns:
 * neither create may leave the other ranks waiting in a collective. */
static void check_one_rank_refusal_fails_everywhere(void) {
  if (g_size < 2) return;
  fo_comm *c = NULL;
  fo_status st = fo_comm_create_mpi(g_rank == 1 ? NULL : &c, MPI_COMM_WORLD);
  CHECK(st == FO_ERR_NULL_POINTER, "fo_comm_create_mpi, NULL out on rank 1: %s (%s)",
        fo_status_string(st), fo_last_error());
  CHECK(c == NULL, "a communicator came back");
  if (g_rank != 1)
    CHECK(strstr(fo_last_error(), "rank 1 of"), "the message names rank 1: %s", fo_last_error());
  int n = 0;
  if (fo_cuda_device_count(&n) == FO_SUCCESS && n > 0) return; /* see tests/test_gpu_comm.c */
  /* rank 1's device is out of range; the others choose theirs (-1) */
  st = fo_comm_create_nccl_mpi(&c, MPI_COMM_WORLD, g_rank == 1 ? -5 : -1);
  CHECK(st == (g_rank == 1 ? FO_ERR_INVALID_ARGUMENT : FO_ERR_NO_DEVICE),
        "fo_comm_create_nccl_mpi, device -5 on rank 1: %s (%s)", fo_status_string(st),
        fo_last_error());
  /* ranks naming their device beside ranks that let it be chosen */
  st = fo_comm_create_nccl_mpi(&c, MPI_COMM_WORLD, g_rank == 0 ? 0 : -1);
  CHECK(st == FO_ERR_NO_DEVICE, "fo_comm_create_nccl_mpi, device 0 and -1: %s (%s)",
        fo_status_string(st), fo_last_error());
  CHECK(c == NULL, "a communicator came back");
}

static void check_comm_shape(void) {
  int rank = -1, size = -1;
  fo_comm_kind kind = FO_COMM_NCCL;
  OK(fo_comm_get_rank(g_comm, &rank, &size));
  OK(fo_comm_get_kind(g_comm, &kind));
  CHECK(rank == g_rank && size == g_size && kind == FO_COMM_HOST, "rank %d size %d kind %d", rank,
        size, (int)kind);
out:;
}

int main(int argc, char **argv) {
  g_comm = begin(&argc, &argv);
  run("communicator rank and size", check_comm_shape);
  run("fo_comm_allreduce_sum per dtype", check_allreduce_sum);
  run("averaged gradients are exactly the mean (dyadic)", check_mean_exact);
  run("random fp32 sums within summation error, same bits", check_sum_random);
  run("K steps: identical ranks, equal to one process", check_steps_match_single_process);
  run("overflow on one rank: every rank skips", check_overflow_on_one_rank_skips_everywhere);
  run("overflow of the fp16 sum: every rank skips", check_overflow_of_the_sum_skips_everywhere);
  run("NCCL bootstrap without a device fails alike", check_nccl_bootstrap_agrees);
  run("one rank's refusal fails every rank, none waits", check_one_rank_refusal_fails_everywhere);
  return finish(g_comm);
}
