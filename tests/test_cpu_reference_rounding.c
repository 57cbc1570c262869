/*
 * test_cpu_reference_rounding.c -- rounding on the CPU executor against the
 * independent double-precision reference (tests/support/reference.c):
 * stochastic rounding (refused where it does not apply, reproducible,
 * seed-dependent, bracketing the exact value, unbiased), and the public
 * 16-bit conversions against the reference's own.
 */
#define _POSIX_C_SOURCE 200809L
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fusedopt.h"
#include "ref_harness.h"
#include "reference.h"
#include "testutil.h"

/* ---------------------------------------------------- stochastic rounding */

/* SR runs of every algorithm: each step's bf16 parameter must be one of the
 * two bf16 values bracketing the exact result (widened by the fp32
 * tolerance), and the reference then continues from the library's rounded
 * parameter, since SR's random bits are the library's own. */
Test(cpu_reference, sr_brackets_exact_value, .timeout = 60) {
  const fo_algorithm algs[] = {FO_ALG_SGD, FO_ALG_ADAM, FO_ALG_ADAMW, FO_ALG_LION};
  for (int a = 0; a < 4; ++a)
    for (int gi = 0; gi < 3; ++gi) {
      run_cfg c = {.alg = algs[a],
                   .f = {.momentum = 1, .wd = 1, .amsgrad = 1, .maximize = a % 2},
                   .pdt = FO_DTYPE_BF16,
                   .gdt = DTYPES[gi],
                   .master = 0,
                   .storage = gi == 1 ? FO_STORAGE_ARENA : FO_STORAGE_EXTERNAL,
                   .threads = 2,
                   .sr = 1,
                   .sr_seed = 77,
                   .seed = 5 + gi};
      char d[256], msg[1024];
      describe(&c, d, sizeof d);
      harness h;
      cr_assert(harness_init(&h, &c, MATRIX_SIZES, MATRIX_GROUPS, MATRIX_TENSORS, msg, sizeof msg),
                "%s: %s", d, msg);
      int64_t rounded_up = 0, rounded_down = 0;
      for (int s = 0; s < 10; ++s) {
        harness_grads(&h);
        cr_assert(harness_step(&h, msg, sizeof msg), "%s: %s", d, msg);
        cr_assert(harness_check(&h, s + 1, 0, msg, sizeof msg), "%s: %s", d,
                  msg); /* state only: parameters are checked here */
        for (int t = 0; t < h.nt; ++t) {
          int64_t n = h.numel[t];
          if (n == 0) continue;
          const ref_tensor *R = &h.ref->tensors[t];
          void *pp = param_ptr(&h, t);
          double *next = malloc((size_t)n * sizeof(double));
          cr_assert_not_null(next);
          for (int64_t i = 0; i < n; ++i) {
            double x = R->exact[i];
            double e = TOL_F32 * h.pscale[t][i];
            double lo, hi, lo2, hi2;
            ref_bracket(FO_DTYPE_BF16, x - e, &lo, &hi);
            ref_bracket(FO_DTYPE_BF16, x + e, &lo2, &hi2);
            double got = ref_load(FO_DTYPE_BF16, pp, i);
            cr_assert(got >= lo && got <= hi2,
                      "%s: step %d tensor %d [%lld]: %.9g is not a bf16 "
                      "neighbour of the exact %.9g ([%.9g, %.9g])",
                      d, s + 1, t, (long long)i, got, x, lo, hi2);
            if (got > x) ++rounded_up;
            if (got < x) ++rounded_down;
            next[i] = got;
          }
          ref_set_params(h.ref, t, next);
          free(next);
        }
      }
      /* both directions occur: it is not a directed rounding */
      cr_expect(rounded_up > 100 && rounded_down > 100, "%s: rounded up %lld, down %lld times", d,
                (long long)rounded_up, (long long)rounded_down);
      harness_free(&h);
    }
}

Test(cpu_reference, sr_reproducible_and_seeded, .timeout = 60) {
  const fo_algorithm algs[] = {FO_ALG_SGD, FO_ALG_ADAMW, FO_ALG_LION};
  for (int a = 0; a < 3; ++a) {
    run_cfg c = {.alg = algs[a],
                 .f = {.momentum = 1, .wd = 1, .amsgrad = 0, .maximize = 0},
                 .pdt = FO_DTYPE_BF16,
                 .gdt = FO_DTYPE_F32,
                 .master = 0,
                 .storage = FO_STORAGE_EXTERNAL,
                 .threads = 2,
                 .sr = 1,
                 .sr_seed = 42,
                 .seed = 3};
    size_t n1, n2, n3;
    unsigned char *r1 = snapshot_run(&c, 3, &n1);
    unsigned char *r2 = snapshot_run(&c, 3, &n2);
    c.sr_seed = 43;
    unsigned char *r3 = snapshot_run(&c, 3, &n3);
    cr_expect(n1 == n2 && memcmp(r1, r2, n1) == 0, "%s: the same seed gave different results",
              tu_alg_name(c.alg));
    /* count the 2-byte units of the snapshots that differ */
    size_t differ = 0;
    for (size_t i = 0; i + 1 < n1 && i + 1 < n3; i += 2) differ += memcmp(r1 + i, r3 + i, 2) != 0;
    cr_expect(n1 == n3 && differ > 100, "%s: seeds 42 and 43 differ in only %zu values",
              tu_alg_name(c.alg), differ);
    free(r1);
    free(r2);
    free(r3);
  }
}

/* Stochastic rounding is for bf16 parameters without master weights only
 * (docs/numerics.md); anything else is refused, not silently ignored. */
Test(cpu_reference, sr_only_bf16_without_master) {
  static const struct {
    fo_dtype p;
    int master;
  } bad[] = {{FO_DTYPE_F16, 0}, {FO_DTYPE_F32, 0}, {FO_DTYPE_BF16, 1}};
  float p32[4] = {0}, g32[4] = {0};
  for (size_t k = 0; k < sizeof bad / sizeof bad[0]; ++k) {
    fo_options o;
    cr_assert_eq(fo_options_default(&o), FO_SUCCESS);
    o.algorithm = FO_ALG_SGD;
    o.param_dtype = bad[k].p;
    o.master_weights = bad[k].master;
    o.stochastic_rounding = 1;
    fo_hparams hp;
    cr_assert_eq(fo_hparams_default(FO_ALG_SGD, &hp), FO_SUCCESS);
    fo_tensor_desc d = {.numel = 4, .param = p32, .grad = g32};
    fo_optimizer *opt = NULL;
    fo_status st = fo_optimizer_create(&opt, &o, &hp, 1, &d, 1);
    cr_expect_eq(st, FO_ERR_UNSUPPORTED, "stochastic rounding with %s parameters, master %d: %s",
                 tu_dtype_name(bad[k].p), bad[k].master, fo_status_string(st));
    fo_optimizer_destroy(opt);
  }
}

/* SGD over bf16 parameters without master weights, fp32 gradients. */
static fo_options sgd_bf16_options(int sr, uint64_t seed) {
  fo_options o;
  cr_assert_eq(fo_options_default(&o), FO_SUCCESS);
  o.algorithm = FO_ALG_SGD;
  o.param_dtype = FO_DTYPE_BF16;
  o.grad_dtype = FO_DTYPE_F32;
  o.master_weights = 0;
  o.stochastic_rounding = sr;
  o.seed = seed;
  return o;
}

/* A result past the largest finite bf16 (0x7f7f, ~3.39e38) but finite in
 * fp32: round-to-nearest gives inf from 0x7f7f8000 up, stochastic rounding
 * would with probability equal to the dropped fraction (~0.8 here); the
 * library clamps it to the largest finite bf16 instead (docs/numerics.md),
 * on both signs, and a value just below stays one of its two neighbours. */
Test(cpu_reference, sr_clamps_past_the_largest_bf16) {
  enum { N = 4096 };
  static uint16_t p[N];
  static float g[N];
  fo_options o = sgd_bf16_options(1, 77);
  fo_hparams hp;
  cr_assert_eq(fo_hparams_default(FO_ALG_SGD, &hp), FO_SUCCESS);
  hp.lr = 1.0f;
  /* i % 4: +max pushed up, -max pushed down (both past the largest by
   * ~0.8 ulp), +max - 1 ulp pushed up by ~0.5 ulp, and an ordinary value */
  const float push = 1.05e36f; /* ~0.79 of the bf16 ulp 2^120 there */
  for (int i = 0; i < N; ++i) {
    switch (i % 4) {
      case 0: p[i] = 0x7f7f, g[i] = -push; break;
      case 1: p[i] = 0xff7f, g[i] = push; break;
      case 2: p[i] = 0x7f7e, g[i] = -0x1p119f; break;
      default: p[i] = ref_bf16_bits(1.5), g[i] = 0x1p-10f; break;
    }
  }
  fo_tensor_desc d = {.numel = N, .group = 0, .param = p, .grad = g};
  fo_optimizer *opt = NULL;
  cr_assert_eq(fo_optimizer_create(&opt, &o, &hp, 1, &d, 1), FO_SUCCESS, "%s", fo_last_error());
  cr_assert_eq(fo_optimizer_step(opt, NULL), FO_SUCCESS, "%s", fo_last_error());
  int up = 0; /* case 2 elements that rounded up: SR still picks both */
  for (int i = 0; i < N; ++i) {
    switch (i % 4) {
      case 0: cr_assert_eq(p[i], 0x7f7f, "[%d] +max pushed up became 0x%04x", i, p[i]); break;
      case 1: cr_assert_eq(p[i], 0xff7f, "[%d] -max pushed down became 0x%04x", i, p[i]); break;
      case 2:
        cr_assert(p[i] == 0x7f7e || p[i] == 0x7f7f, "[%d] max - 1 ulp became 0x%04x", i, p[i]);
        up += p[i] == 0x7f7f;
        break;
      default: {
        double v = ref_bf16_value(p[i]), want = 1.5 - 0x1p-10;
        cr_assert(v >= 1.5 - 0x1p-7 && v <= 1.5 && fabs(v - want) < 0x1p-7, "[%d] 1.5 became %g", i,
                  v);
      }
    }
  }
  cr_expect(up > N / 16 && up < 3 * N / 16, "max - 1 ulp + 0.5 ulp rounded up %d of %d times", up,
            N / 4);
  fo_optimizer_destroy(opt);
}

/* Many tiny SGD updates, each far below half a bf16 ulp: round-to-nearest
 * loses every one of them, stochastic rounding accumulates them in
 * expectation.  The mean over N elements of (final - initial + sum of
 * updates) has mean 0 and standard deviation at most
 * sqrt(STEPS) * ulp / 2 / sqrt(N) under SR. */
#define SR_N 16384
#define SR_STEPS 200

static double sr_drift(int sr, double *mean_err, double *expected_drift) {
  fo_options o = sgd_bf16_options(sr, 2024);
  o.num_threads = 2;
  fo_hparams hp;
  cr_assert_eq(fo_hparams_default(FO_ALG_SGD, &hp), FO_SUCCESS);
  hp.lr = 0x1p-14f; /* updates <= 1.5 * 2^-14 ~ 9e-5 << 2^-9 / 2 */
  hp.momentum = 0.0f;
  hp.weight_decay = 0.0f;
  uint16_t *p = malloc(SR_N * sizeof *p);
  float *g = malloc(SR_N * sizeof *g);
  double *p0 = malloc(SR_N * sizeof *p0);
  double *sum = calloc(SR_N, sizeof *sum);
  cr_assert(p && g && p0 && sum);
  tu_rng rng;
  tu_rng_seed(&rng, 11, 1);
  for (int i = 0; i < SR_N; ++i) {
    p[i] = ref_bf16_bits(tu_rng_range(&rng, 0.5, 2.0));
    p0[i] = ref_bf16_value(p[i]);
  }
  fo_tensor_desc d = {.numel = SR_N, .group = 0, .param = p, .grad = g};
  fo_optimizer *opt = NULL;
  cr_assert_eq(fo_optimizer_create(&opt, &o, &hp, 1, &d, 1), FO_SUCCESS, "%s", fo_last_error());
  for (int s = 0; s < SR_STEPS; ++s) {
    for (int i = 0; i < SR_N; ++i) {
      g[i] = (float)tu_rng_range(&rng, 0.5, 1.5);
      sum[i] += (double)hp.lr * (double)g[i];
    }
    cr_assert_eq(fo_optimizer_step(opt, NULL), FO_SUCCESS);
  }
  double err = 0.0, drift = 0.0, moved = 0.0;
  for (int i = 0; i < SR_N; ++i) {
    double pf = ref_bf16_value(p[i]);
    err += pf - (p0[i] - sum[i]);
    drift += sum[i];
    moved += p0[i] - pf;
  }
  fo_optimizer_destroy(opt);
  free(p);
  free(g);
  free(p0);
  free(sum);
  *mean_err = err / SR_N;
  *expected_drift = drift / SR_N;
  return moved / SR_N;
}

Test(cpu_reference, sr_unbiased_where_rne_loses_updates, .timeout = 60) {
  double err, want;
  double moved = sr_drift(0, &err, &want);
  cr_expect_eq(moved, 0.0,
               "round-to-nearest: tiny updates should all be lost, but the "
               "parameters moved by %g on average",
               moved);
  moved = sr_drift(1, &err, &want);
  /* per element the SR error has variance <= SR_STEPS * (2^-7)^2 / 4 */
  double sigma = sqrt((double)SR_STEPS) * 0x1p-7 / 2.0 / sqrt((double)SR_N);
  cr_expect(fabs(err) <= 5.0 * sigma,
            "stochastic rounding is biased: mean error %g (5 sigma = %g), "
            "moved %g of %g",
            err, 5.0 * sigma, moved, want);
  cr_expect(moved > 0.9 * want, "SR moved the parameters by %g, want %g", moved, want);
}

/* -------------------------------------------------- conversions (API) */

Test(cpu_reference, conversions_match_reference) {
  static uint16_t bits[65536];
  static float wide[65536];
  for (int dt = FO_DTYPE_F16; dt <= FO_DTYPE_BF16; ++dt) {
    for (uint32_t b = 0; b < 65536; ++b) bits[b] = (uint16_t)b;
    cr_assert_eq(fo_convert_to_f32((fo_dtype)dt, bits, wide, 65536), FO_SUCCESS);
    for (uint32_t b = 0; b < 65536; ++b) {
      double want = dt == FO_DTYPE_F16 ? ref_f16_value((uint16_t)b) : ref_bf16_value((uint16_t)b);
      cr_assert(wide[b] == want || (isnan(wide[b]) && isnan(want)),
                "%s 0x%04x widened to %.9g, want %.9g", tu_dtype_name((fo_dtype)dt), b,
                (double)wide[b], want);
    }
  }
  /* random fp32 bit patterns, the exact midpoints between 16-bit values
   * (ties) and their fp32 neighbours, overflow thresholds */
  enum { N = 1 << 16 };
  static float src[N];
  static uint16_t out[N];
  tu_rng rng;
  tu_rng_seed(&rng, 123, 0);
  for (int dt = FO_DTYPE_F16; dt <= FO_DTYPE_BF16; ++dt) {
    for (int i = 0; i < N; ++i) {
      int kind = i % 4;
      uint32_t u = tu_rng_u32(&rng);
      float f;
      if (kind == 0) {
        memcpy(&f, &u, sizeof f);
        if (isnan(f)) f = 1.0f;
      } else {
        /* a midpoint of two consecutive 16-bit values, nudged by 0 or +-1
         * fp32 ulp */
        uint16_t h = (uint16_t)(u & 0x7bffu);
        double a = dt == FO_DTYPE_F16 ? ref_f16_value(h) : ref_bf16_value(h);
        double b = dt == FO_DTYPE_F16 ? ref_f16_value((uint16_t)(h + 1))
                                      : ref_bf16_value((uint16_t)(h + 1));
        if (!isfinite(a) || !isfinite(b)) a = b = 1.0;
        f = (float)((a + b) / 2.0);
        if (kind == 2) f = nextafterf(f, INFINITY);
        if (kind == 3) f = nextafterf(f, -INFINITY);
        if (u & 0x80000000u) f = -f;
      }
      src[i] = f;
    }
    src[0] = 65519.99f;
    src[1] = 65520.0f;
    src[2] = 3.3895314e38f;
    src[3] = -0.0f;
    cr_assert_eq(fo_convert_from_f32((fo_dtype)dt, src, out, N), FO_SUCCESS);
    for (int i = 0; i < N; ++i) {
      uint16_t want = dt == FO_DTYPE_F16 ? ref_f16_bits(src[i]) : ref_bf16_bits(src[i]);
      cr_assert_eq(out[i], want, "%s: %a rounded to 0x%04x, want 0x%04x",
                   tu_dtype_name((fo_dtype)dt), (double)src[i], out[i], want);
    }
  }
}
