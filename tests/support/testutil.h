/*
 * testutil.h -- helpers the tests share: a seeded PRNG, random fills that
 * never produce zero, poisoned and guarded buffers, and comparison with a
 * tolerance that reports the worst element.
 */
#ifndef FO_TEST_TESTUTIL_H
#define FO_TEST_TESTUTIL_H

#include <stddef.h>
#include <stdint.h>

#include "fusedopt.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------ PRNG */

/* PCG32 (O'Neill): small, fast, and the same sequence on every machine. */
typedef struct tu_rng {
  uint64_t state;
  uint64_t inc;
} tu_rng;

/* Seed a generator; different streams give independent sequences. */
void tu_rng_seed(tu_rng *r, uint64_t seed, uint64_t stream);
uint32_t tu_rng_u32(tu_rng *r);
uint64_t tu_rng_u64(tu_rng *r);
/* Uniform in [0, 1) with 53 random bits. */
double tu_rng_uniform(tu_rng *r);
/* Uniform in [lo, hi). */
double tu_rng_range(tu_rng *r, double lo, double hi);
/* Magnitude uniform in [lo, hi] (lo > 0), random sign: never zero. */
double tu_rng_nonzero(tu_rng *r, double lo, double hi);
void tu_fill_range(tu_rng *r, double *dst, int64_t n, double lo, double hi);
void tu_fill_nonzero(tu_rng *r, double *dst, int64_t n, double lo, double hi);

/* Mix values into a seed (for seeds derived from a test configuration). */
uint64_t tu_hash(uint64_t a, uint64_t b);

/* --------------------------------------------------------------- buffers */

/* The poison byte: 0xFF bytes read as NaN in fp32, fp16 and bf16, so any
 * poisoned element that leaks into a result shows up. */
#define TU_POISON 0xFFu

/* buf[i] *= by for n elements of dtype, through fp32 (rounded back to
 * nearest-even): a fake collective's sum of identical ranks.  Returns the
 * conversions' status. */
fo_status tu_scale_buffer(void *buf, int64_t n, fo_dtype dtype, float by);

void tu_poison(void *p, size_t bytes);
/* 1 if every byte is the poison byte. */
int tu_is_poisoned(const void *p, size_t bytes);

/* A buffer with poisoned guard zones on both sides, to catch writes past
 * either end.  The data starts misalign bytes past a 64-byte boundary, so
 * a test can hand the library pointers that are not vector-aligned. */
typedef struct tu_buffer {
  unsigned char *block;
  size_t offset; /* of the data in block */
  size_t bytes;  /* of the data */
} tu_buffer;

#define TU_GUARD_BYTES 256

/* Allocate; the data is poisoned too.  Returns the data pointer (never NULL
 * unless out of memory, also for 0 bytes). */
void *tu_buffer_alloc(tu_buffer *b, size_t bytes, size_t misalign);
void *tu_buffer_data(const tu_buffer *b);
/* 1 if both guard zones still hold the poison. */
int tu_buffer_guards_intact(const tu_buffer *b);
void tu_buffer_free(tu_buffer *b);

/* ------------------------------------------------------------ comparison */

/* Element i passes when |got_i - want_i| <= atol + rtol*|want_i| +
 * ulps*ulp(ulp_dtype, want_i).  NaN or infinity in got where want is
 * finite always fails. */
typedef struct tu_tol {
  double atol;
  double rtol;
  double ulps;
  fo_dtype ulp_dtype;
} tu_tol;

typedef struct tu_report {
  int64_t n;
  int64_t bad;     /* elements outside the tolerance */
  int64_t inexact; /* elements that differ at all */
  int64_t worst;   /* index of the largest err/tol, -1 if n == 0 */
  double worst_got, worst_want, worst_err, worst_tol;
  double max_abs_err;
} tu_report;

/* Compare n elements of got (stored as got_dtype) with want.  Returns 1 when
 * every element passes. */
int tu_compare(tu_report *rep, const double *want, const void *got, fo_dtype got_dtype, int64_t n,
               tu_tol tol);

/* The same with a tolerance per element: |got_i - want_i| <= lim[i]. */
int tu_compare_limits(tu_report *rep, const double *want, const void *got, fo_dtype got_dtype,
                      int64_t n, const double *lim);

/* "label: 3 of 4099 outside tolerance; worst [17] got .. want .. |err| ..
 * tol ..; 5 inexact" into buf. */
void tu_report_format(const tu_report *rep, const char *label, char *buf, size_t cap);

/* ----------------------------------------------------------------- misc */

const char *tu_dtype_name(fo_dtype dtype);
const char *tu_alg_name(fo_algorithm alg);
/* Monotonic wall time in seconds. */
double tu_now(void);

#ifdef __cplusplus
}
#endif

#endif /* FO_TEST_TESTUTIL_H */
