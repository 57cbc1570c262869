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
 */
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mpi.h>

#include "fusedopt.h"
#include "fusedopt_mpi.h"
#include "mpi_check.h"


/* ---------------------------------------------------------------- data */

/* A value that depends only on (seed, a, b): every rank can compute every
 * other rank's data. */
static uint64_t mix(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  return x ^ (x >> 33);
}

static double uniform(uint64_t seed, uint64_t a, uint64_t b) { /* [-1, 1) */
  uint64_t h = mix(seed * 0x9e3779b97f4a7c15ull ^ mix(a * 0x632be59bd9b4e019ull + b));
  return (double)(h >> 11) * 0x1.0p-52 - 1.0;
}

/* A dyadic value k/16, k in [-4, 4]: sums of up to 4 of them, and their
 * means, are exact in fp32, fp16 and bf16. */
static float dyadic(uint64_t seed, uint64_t a, uint64_t b) {
  return (float)(int)(mix(seed ^ mix(a * 31 + b)) % 9 - 4) / 16.0f;
}

/* ------------------------------------------------------------ the model */

#define NT 5
static const int64_t SIZES[NT] = {37, 1000, 0, 4099, 260};
#define NMAX 4099

/* Tensors in one optimizer: arena, or external with gaps between tensors
 * (scattered: packed on the CPU) or without (adjacent: one segment). */
typedef struct model {
  fo_optimizer *opt;
  void *pbuf, *gbuf;
  fo_options o;
} model;

static fo_status model_make(model *m, fo_options o, const fo_hparams *h, int64_t gap) {
  memset(m, 0, sizeof *m);
  m->o = o;
  fo_tensor_desc t[NT];
  int64_t total = 0, off = 0;
  for (int i = 0; i < NT; i++) total += SIZES[i] + gap;
  int ext = o.storage == FO_STORAGE_EXTERNAL;
  if (ext) {
    m->pbuf = calloc((size_t)total, 4);
    m->gbuf = calloc((size_t)total, 4);
    if (!m->pbuf || !m->gbuf) return FO_ERR_OUT_OF_MEMORY;
  }
  size_t ps = fo_dtype_size(o.param_dtype), gs = fo_dtype_size(o.grad_dtype);
  for (int i = 0; i < NT; i++) {
    t[i] = (fo_tensor_desc){SIZES[i], i % 2, ext ? (char *)m->pbuf + (size_t)off * ps : NULL,
                            ext ? (char *)m->gbuf + (size_t)off * gs : NULL, NULL};
    off += SIZES[i] + gap;
  }
  fo_hparams groups[2] = {*h, *h};
  groups[1].weight_decay = 0.0f;
  return fo_optimizer_create(&m->opt, &o, groups, 2, t, NT);
}

static void model_free(model *m) {
  fo_optimizer_destroy(m->opt);
  free(m->pbuf);
  free(m->gbuf);
  m->opt = NULL;
}

/* Write values (fp32, one array per tensor) into the role's buffers. */
static fo_status put(const model *m, int grad, float *const vals[NT]) {
  for (int i = 0; i < NT; i++) {
    void *dst = NULL;
    fo_status st = grad ? fo_optimizer_grad_ptr(m->opt, i, &dst)
                        : fo_optimizer_param_ptr(m->opt, i, &dst);
    if (st == FO_SUCCESS)
      st = fo_convert_from_f32(grad ? m->o.grad_dtype : m->o.param_dtype, vals[i], dst,
                               SIZES[i]);
    if (st != FO_SUCCESS) return st;
  }
  return FO_SUCCESS;
}

static fo_status get(const model *m, int grad, float *vals[NT]) {
  for (int i = 0; i < NT; i++) {
    void *src = NULL;
    fo_status st = grad ? fo_optimizer_grad_ptr(m->opt, i, &src)
                        : fo_optimizer_param_ptr(m->opt, i, &src);
    if (st == FO_SUCCESS)
      st = fo_convert_to_f32(grad ? m->o.grad_dtype : m->o.param_dtype, src, vals[i],
                             SIZES[i]);
    if (st != FO_SUCCESS) return st;
  }
  return FO_SUCCESS;
}

typedef struct arrays {
  float *a[NT];
} arrays;

static void arrays_alloc(arrays *x) {
  for (int i = 0; i < NT; i++) x->a[i] = calloc((size_t)SIZES[i] + 1, sizeof(float));
}

static void arrays_free(arrays *x) {
  for (int i = 0; i < NT; i++) free(x->a[i]);
}

/* Rank 0's bits of buf, compared on every rank: 1 when they match. */
static int same_on_every_rank(const void *buf, size_t bytes) {
  unsigned char *root = malloc(bytes + 1);
  if (!root) return 0;
  if (g_rank == 0) memcpy(root, buf, bytes);
  MPI_Bcast(root, (int)bytes, MPI_BYTE, 0, MPI_COMM_WORLD);
  int same = memcmp(root, buf, bytes) == 0;
  free(root);
  return same;
}

static int arrays_same_on_every_rank(const arrays *x) {
  int same = 1;
  for (int i = 0; i < NT; i++) same &= same_on_every_rank(x->a[i], (size_t)SIZES[i] * 4);
  return same;
}

static fo_options cpu_options(fo_algorithm alg, fo_storage storage, fo_dtype pd, fo_dtype gd) {
  fo_options o;
  fo_options_default(&o);
  o.algorithm = alg;
  o.storage = storage;
  o.param_dtype = pd;
  o.grad_dtype = gd;
  o.num_threads = 1; /* several ranks share the cores */
  return o;
}

static fo_comm *g_comm; /* over MPI_COMM_WORLD */

static fo_status attach_ex(model *m, size_t bucket_bytes, int reduce_in_f32, int shard) {
  fo_dp_options d;
  fo_dp_options_default(&d);
  d.bucket_bytes = bucket_bytes;
  d.reduce_in_f32 = reduce_in_f32;
  d.shard_state = shard;
  return fo_optimizer_set_comm(m->opt, g_comm, &d);
}

static fo_status attach(model *m, size_t bucket_bytes, int reduce_in_f32) {
  return attach_ex(m, bucket_bytes, reduce_in_f32, 0);
}

/* Reduce every bucket, last first (as a backward pass produces them). */
static fo_status reduce_reversed(model *m) {
  int64_t nb = 0;
  fo_status st = fo_optimizer_num_buckets(m->opt, &nb);
  for (int64_t b = nb - 1; b >= 0 && st == FO_SUCCESS; b--)
    st = fo_optimizer_reduce_bucket(m->opt, b, NULL);
  return st;
}

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
        CHECK(0, "dtype %d storage %d gap %lld bucket %zu f32 %d: tensor %d [%lld] = %g, "
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
      mean_case(dts[d], FO_STORAGE_EXTERNAL, 0, 0, f32, 0);   /* adjacent */
      mean_case(dts[d], FO_STORAGE_EXTERNAL, 21, 0, f32, 0);  /* scattered */
      mean_case(dts[d], FO_STORAGE_EXTERNAL, 21, 1, f32, 1);  /* a bucket per tensor */
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
#define K_STEPS 25

static double feature(int64_t row, int tensor, int64_t e) {
  return uniform(77, (uint64_t)row, (uint64_t)(tensor * NMAX + e)) / 8.0;
}

static double target(int64_t row) { return uniform(78, (uint64_t)row, 0); }

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

static float loss_scale(const model *m) {
  float *s = NULL;
  return fo_optimizer_loss_scale_ptr(m->opt, &s) == FO_SUCCESS ? *s : 1.0f;
}

/* Tolerance against the single process: the two runs differ only in how
 * the fp32 gradients are summed (per-rank means rounded to fp32, then an
 * fp32 sum, vs one mean over all rows), a few fp32 ulps of the gradient
 * per step.  Adam normalises the update, so the difference of parameters
 * stays near K x lr x (relative gradient difference); measured worst at np
 * 4 well below 1e-5 of the parameters' scale (printed), checked at
 * |d| <= 1e-5 + 1e-5 |w|. */
#define TOL_ABS 1e-5
#define TOL_REL 1e-5

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
    for (int64_t e = 0; e < SIZES[i]; e++) w.a[i][e] = (float)uniform(5, (uint64_t)i, (uint64_t)e) * 0.1f;
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
          "step %d: step %lld/%lld scale %g/%g skipped %d", k, (long long)a.step,
          (long long)b.step, (double)a.loss_scale, (double)b.loss_scale, a.last_step_skipped);
    if (clip_scale)
      CHECK(fabs((double)a.grad_norm - (double)b.grad_norm) <= 1e-5 * (double)b.grad_norm,
            "step %d: norm %g vs %g", k, (double)a.grad_norm, (double)b.grad_norm);
    if (!g_ok) goto out;
  }
  OK(get(&dp, 0, w.a));
  OK(get(&ref, 0, wr.a));
  CHECK(arrays_same_on_every_rank(&w), "ranks hold different parameters after %d steps",
        K_STEPS);
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
      CHECK(info.loss_scale == prev.loss_scale * 0.5f, "scale %g after %g",
            (double)info.loss_scale, (double)prev.loss_scale);
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
          scale * (random ? (float)uniform(11, (uint64_t)(g_rank * 64 + k), (uint64_t)(i * NMAX + e))
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
    same &= nb == (size_t)count * 4 &&
            memcmp((const float *)a + first, b, (size_t)count * 4) == 0;
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
    for (int64_t e = 0; e < SIZES[i]; e++)
      wp.a[i][e] = (float)uniform(6, (uint64_t)i, (uint64_t)e);
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
    CHECK(memcmp(&a, &b, sizeof a) == 0,
          "step %d: step %lld/%lld norm %.9g/%.9g scale %g/%g", k, (long long)a.step,
          (long long)b.step, (double)a.grad_norm, (double)b.grad_norm, (double)a.loss_scale,
          (double)b.loss_scale);
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
  CHECK(state_matches(&plain, &sharded), "alg %d pd %d: the shard's state differs",
        (int)c->alg, (int)c->pd);
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
  OK(model_make(&m, cpu_options(FO_ALG_ADAMW, FO_STORAGE_ARENA, FO_DTYPE_BF16, FO_DTYPE_BF16),
                &h, 0));
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
  CHECK(next == total, "the shards cover %lld of %lld elements", (long long)next,
        (long long)total);
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
  OK(model_make(&m, cpu_options(FO_ALG_ADAMW, FO_STORAGE_EXTERNAL, FO_DTYPE_F32, FO_DTYPE_F32),
                &h, 0));
  fo_status st = attach_ex(&m, 0, 0, 1);
  CHECK(st == FO_ERR_UNSUPPORTED, "external storage: %s", fo_status_string(st));
  int64_t nb = -1;
  OK(fo_optimizer_num_buckets(m.opt, &nb));
  CHECK(nb == 0, "a failed attach left %lld buckets", (long long)nb);
out:
  model_free(&m);
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

static void check_comm_shape(void) {
  int rank = -1, size = -1;
  fo_comm_kind kind = FO_COMM_NCCL;
  OK(fo_comm_get_rank(g_comm, &rank, &size));
  OK(fo_comm_get_kind(g_comm, &kind));
  CHECK(rank == g_rank && size == g_size && kind == FO_COMM_HOST, "rank %d size %d kind %d",
        rank, size, (int)kind);
out:;
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_size);
  if (fo_comm_create_mpi(&g_comm, MPI_COMM_WORLD) != FO_SUCCESS) {
    fprintf(stderr, "rank %d: fo_comm_create_mpi: %s\n", g_rank, fo_last_error());
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  run("communicator rank and size", check_comm_shape);
  run("fo_comm_allreduce_sum per dtype", check_allreduce_sum);
  run("averaged gradients are exactly the mean (dyadic)", check_mean_exact);
  run("random fp32 sums within summation error, same bits", check_sum_random);
  run("K steps: identical ranks, equal to one process", check_steps_match_single_process);
  run("overflow on one rank: every rank skips", check_overflow_on_one_rank_skips_everywhere);
  run("overflow of the fp16 sum: every rank skips", check_overflow_of_the_sum_skips_everywhere);
  run("NCCL bootstrap without a device fails alike", check_nccl_bootstrap_agrees);
  run("sharded state: shards tile the arena, state / N", check_shards_tile_the_arena);
  run("sharded state: bit-identical to plain (dyadic)", check_sharded_equals_plain);
  run("sharded state: random fp32 close to plain", check_sharded_random_close_to_plain);
  run("sharded state: refusals change nothing", check_shard_refusals);
  if (fo_comm_destroy(g_comm) != FO_SUCCESS) {
    fprintf(stderr, "rank %d: fo_comm_destroy: %s\n", g_rank, fo_last_error());
    g_failed++;
  }
  if (g_rank == 0) printf("%d passed, %d failed\n", g_passed, g_failed);
  MPI_Finalize();
  return g_failed ? 1 : 0;
}
