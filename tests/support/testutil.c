/*
 * testutil.c -- shared test helpers (testutil.h).
 */
#define _POSIX_C_SOURCE 200809L
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "reference.h"

/* ------------------------------------------------------------------ PRNG */

void tu_rng_seed(tu_rng *r, uint64_t seed, uint64_t stream) {
  r->state = 0u;
  r->inc = (stream << 1u) | 1u;
  (void)tu_rng_u32(r);
  r->state += seed;
  (void)tu_rng_u32(r);
}

uint32_t tu_rng_u32(tu_rng *r) {
  uint64_t old = r->state;
  r->state = old * 6364136223846793005ull + r->inc;
  uint32_t xorshifted = (uint32_t)(((old >> 18u) ^ old) >> 27u);
  uint32_t rot = (uint32_t)(old >> 59u);
  return (xorshifted >> rot) | (xorshifted << ((-rot) & 31u));
}

uint64_t tu_rng_u64(tu_rng *r) {
  uint64_t hi = tu_rng_u32(r);
  return (hi << 32) | tu_rng_u32(r);
}

double tu_rng_uniform(tu_rng *r) {
  return (double)(tu_rng_u64(r) >> 11) * 0x1.0p-53;
}

double tu_rng_range(tu_rng *r, double lo, double hi) {
  return lo + (hi - lo) * tu_rng_uniform(r);
}

double tu_rng_nonzero(tu_rng *r, double lo, double hi) {
  uint32_t bits = tu_rng_u32(r);
  double mag = lo + (hi - lo) * ((double)(bits >> 1) * 0x1.0p-31);
  return (bits & 1u) ? -mag : mag;
}

void tu_fill_range(tu_rng *r, double *dst, int64_t n, double lo, double hi) {
  for (int64_t i = 0; i < n; ++i) dst[i] = tu_rng_range(r, lo, hi);
}

void tu_fill_nonzero(tu_rng *r, double *dst, int64_t n, double lo, double hi) {
  for (int64_t i = 0; i < n; ++i) dst[i] = tu_rng_nonzero(r, lo, hi);
}

uint64_t tu_hash(uint64_t a, uint64_t b) {
  /* Murmur3's 64-bit finalizer over a combination of the two. */
  uint64_t h = a * 0xff51afd7ed558ccdull ^ (b + 0x2545f4914f6cdd1dull);
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ull;
  h ^= h >> 33;
  return h;
}

/* --------------------------------------------------------------- buffers */

void tu_poison(void *p, size_t bytes) {
  if (bytes) memset(p, (int)TU_POISON, bytes);
}

fo_status tu_scale_buffer(void *buf, int64_t n, fo_dtype dtype, float by) {
  float tmp[256];
  size_t es = fo_dtype_size(dtype);
  for (int64_t at = 0; at < n; at += 256) {
    int64_t k = n - at < 256 ? n - at : 256;
    char *p = (char *)buf + (size_t)at * es;
    fo_status st = fo_convert_to_f32(dtype, p, tmp, k);
    for (int64_t i = 0; i < k && st == FO_SUCCESS; i++) tmp[i] *= by;
    if (st == FO_SUCCESS) st = fo_convert_from_f32(dtype, tmp, p, k);
    if (st != FO_SUCCESS) return st;
  }
  return FO_SUCCESS;
}

int tu_is_poisoned(const void *p, size_t bytes) {
  const unsigned char *c = p;
  for (size_t i = 0; i < bytes; ++i)
    if (c[i] != TU_POISON) return 0;
  return 1;
}

void *tu_buffer_alloc(tu_buffer *b, size_t bytes, size_t misalign) {
  misalign %= 64u;
  size_t total = 64u + TU_GUARD_BYTES + misalign + bytes + TU_GUARD_BYTES;
  b->block = malloc(total);
  if (!b->block) return NULL;
  uintptr_t start = (uintptr_t)b->block + TU_GUARD_BYTES;
  uintptr_t aligned = (start + 63u) & ~(uintptr_t)63u;
  b->offset = (size_t)(aligned - (uintptr_t)b->block) + misalign;
  b->bytes = bytes;
  tu_poison(b->block, total);
  return b->block + b->offset;
}

void *tu_buffer_data(const tu_buffer *b) {
  return b->block + b->offset;
}

int tu_buffer_guards_intact(const tu_buffer *b) {
  return tu_is_poisoned(b->block + b->offset - TU_GUARD_BYTES, TU_GUARD_BYTES) &&
         tu_is_poisoned(b->block + b->offset + b->bytes, TU_GUARD_BYTES);
}

void tu_buffer_free(tu_buffer *b) {
  free(b->block);
  b->block = NULL;
}

/* ------------------------------------------------------------ comparison */

static double limit_of(const tu_tol *tol, const double *lim, int64_t i, double want) {
  if (lim) return lim[i];
  double l = tol->atol + tol->rtol * fabs(want);
  if (tol->ulps > 0) l += tol->ulps * ref_ulp(tol->ulp_dtype, want);
  return l;
}

static int compare(tu_report *rep, const double *want, const void *got, fo_dtype got_dtype,
                   int64_t n, const tu_tol *tol, const double *lim) {
  memset(rep, 0, sizeof *rep);
  rep->n = n;
  rep->worst = -1;
  double worst_ratio = -1.0;
  for (int64_t i = 0; i < n; ++i) {
    double g = ref_load(got_dtype, got, i);
    double w = want[i];
    double l = limit_of(tol, lim, i, w);
    double err;
    if (g == w)
      err = 0.0; /* equal infinities included */
    else if (isnan(g) || isnan(w) || isinf(g) || isinf(w))
      err = INFINITY;
    else
      err = fabs(g - w);
    if (err != 0.0) rep->inexact++;
    if (!(err <= l)) rep->bad++;
    if (isfinite(err) && err > rep->max_abs_err) rep->max_abs_err = err;
    double ratio = l > 0 ? err / l : (err > 0 ? INFINITY : 0.0);
    if (ratio > worst_ratio) {
      worst_ratio = ratio;
      rep->worst = i;
      rep->worst_got = g;
      rep->worst_want = w;
      rep->worst_err = err;
      rep->worst_tol = l;
    }
  }
  return rep->bad == 0;
}

int tu_compare(tu_report *rep, const double *want, const void *got, fo_dtype got_dtype, int64_t n,
               tu_tol tol) {
  return compare(rep, want, got, got_dtype, n, &tol, NULL);
}

int tu_compare_limits(tu_report *rep, const double *want, const void *got, fo_dtype got_dtype,
                      int64_t n, const double *lim) {
  return compare(rep, want, got, got_dtype, n, NULL, lim);
}

void tu_report_format(const tu_report *rep, const char *label, char *buf, size_t cap) {
  if (rep->worst < 0) {
    snprintf(buf, cap, "%s: empty", label);
    return;
  }
  snprintf(buf, cap,
           "%s: %lld of %lld outside tolerance; worst [%lld] got %.9g want "
           "%.9g |err| %.3g tol %.3g; %lld inexact",
           label, (long long)rep->bad, (long long)rep->n, (long long)rep->worst, rep->worst_got,
           rep->worst_want, rep->worst_err, rep->worst_tol, (long long)rep->inexact);
}

/* ----------------------------------------------------------------- misc */

const char *tu_dtype_name(fo_dtype dtype) {
  switch (dtype) {
    case FO_DTYPE_F32: return "f32";
    case FO_DTYPE_F16: return "f16";
    case FO_DTYPE_BF16: return "bf16";
    default: return "?";
  }
}

const char *tu_alg_name(fo_algorithm alg) {
  return fo_algorithm_string(alg);
}

double tu_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
