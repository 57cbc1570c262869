/*
 * test_conversions.c -- fo_convert_from_f32 / fo_convert_to_f32: fp16 and
 * bf16 against hand-derived bit patterns (ties to even, subnormals,
 * overflow, NaN payloads), exhaustive round trips, and bad arguments.
 *
 * Written against include/fusedopt.h only; no library internals.
 */
#define _POSIX_C_SOURCE 200809L

#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "api_harness.h"
#include "fusedopt.h"

/* ============================================================= conversion */

/* f32 -> f16, each expected pattern derived by hand (sign | exponent+15 <<
 * 10 | 10-bit fraction; ties to even). */
static const struct {
  uint32_t f32;
  uint16_t f16;
  const char *why;
} k_to_f16[] = {
    {0x00000000u, 0x0000u, "+0"},
    {0x80000000u, 0x8000u, "-0 keeps its sign"},
    {0x3F800000u, 0x3C00u, "1.0: exp 0 -> 15<<10"},
    {0xC0000000u, 0xC000u, "-2.0: sign, exp 1 -> 16<<10"},
    {0x3F000000u, 0x3800u, "0.5: exp -1 -> 14<<10"},
    {0x3DCCCCCDu, 0x2E66u,
     "0.1f: exp -4 -> 11<<10; frac 0x4CCCCD>>13 = "
     "0x266, rest 0x0CCD < 0x1000 rounds down"},
    {0x477FE000u, 0x7BFFu, "65504 = (2-2^-10)*2^15: largest finite"},
    {0x477FEF00u, 0x7BFFu, "65519: below the tie 65520"},
    {0x477FF000u, 0x7C00u,
     "65520: tie 65504 (odd 0x3FF) / 65536 -> even, "
     "which is inf"},
    {0xC77FF000u, 0xFC00u, "-65520 -> -inf"},
    {0x49742400u, 0x7C00u, "1e6 overflows"},
    {0x7F7FFFFFu, 0x7C00u, "FLT_MAX overflows"},
    {0x7F800000u, 0x7C00u, "+inf"},
    {0xFF800000u, 0xFC00u, "-inf"},
    {0x38800000u, 0x0400u, "2^-14: smallest normal"},
    {0x387FC000u, 0x03FFu,
     "1023*2^-24 = (1+511/512)*2^-15: exp 112, frac "
     "511<<14: largest subnormal"},
    {0x387FD000u, 0x03FFu, "1023.25*2^-24: below the tie"},
    {0x387FE000u, 0x0400u,
     "1023.5*2^-24 (frac 1023<<13): tie 0x3FF (odd) "
     "/ 0x400 -> 0x400"},
    {0x33800000u, 0x0001u, "2^-24: smallest subnormal"},
    {0xB3800000u, 0x8001u, "-2^-24"},
    {0x33000000u, 0x0000u, "2^-25: tie 0 / 2^-24 -> even 0"},
    {0xB3000000u, 0x8000u, "-2^-25 -> -0"},
    {0x33000001u, 0x0001u, "just above 2^-25 rounds up"},
    {0x33C00000u, 0x0002u, "1.5*2^-24: tie 1 / 2 -> even 2"},
    {0x33400000u, 0x0001u, "0.75*2^-24: above the tie at 0.5 -> 1"},
    {0x33A00000u, 0x0001u, "1.25*2^-24: below tie -> 1"},
    {0x00000001u, 0x0000u, "fp32 subnormal underflows to +0"},
    {0x80000001u, 0x8000u, "negative fp32 subnormal to -0"},
    {0x3F801000u, 0x3C00u, "1+2^-11: tie 0x3C00 (even) / 0x3C01"},
    {0x3F801001u, 0x3C01u, "just above 1+2^-11 rounds up"},
    {0x3F803000u, 0x3C02u, "1+3*2^-11: tie 0x3C01 (odd) / 0x3C02 -> 0x3C02"},
    {0x44FFF000u, 0x6800u,
     "2047.5: tie 2047 (0x67FF, odd) / 2048 -> carry "
     "into the exponent, 0x6800"},
    {0x44FFE000u, 0x67FFu, "2047: exact"},
};

/* f32 -> bf16: the upper 16 bits, rounded to nearest even on the lower 16
 * (each pattern by hand: lower > 0x8000 up, < down, == tie to even). */
static const struct {
  uint32_t f32;
  uint16_t bf16;
  const char *why;
} k_to_bf16[] = {
    {0x00000000u, 0x0000u, "+0"},
    {0x80000000u, 0x8000u, "-0"},
    {0x3F800000u, 0x3F80u, "1.0"},
    {0x3F808000u, 0x3F80u, "1+2^-8: tie, 0x3F80 even"},
    {0x3F818000u, 0x3F82u, "1+3*2^-8: tie, 0x3F81 odd -> 0x3F82"},
    {0x3F808001u, 0x3F81u, "just above the tie"},
    {0x3F807FFFu, 0x3F80u, "just below the tie"},
    {0xBF818000u, 0xBF82u, "negative tie to even"},
    {0x477FE000u, 0x4780u, "65504: lower 0xE000 > 0x8000 -> 65536"},
    {0x477FF000u, 0x4780u, "65520 -> 65536"},
    {0x7F7FFFFFu, 0x7F80u, "FLT_MAX rounds up to inf"},
    {0x7F7F8000u, 0x7F80u, "tie above the largest bf16 (0x7F7F odd) -> inf"},
    {0x7F7E8000u, 0x7F7Eu, "tie, 0x7F7E even"},
    {0x7F800000u, 0x7F80u, "+inf"},
    {0xFF800000u, 0xFF80u, "-inf"},
    {0x00000001u, 0x0000u, "smallest fp32 subnormal -> +0"},
    {0x00008000u, 0x0000u, "subnormal tie to even 0"},
    {0x00018000u, 0x0002u, "subnormal tie 1 (odd) -> 2"},
    {0x00008001u, 0x0001u, "subnormal above tie"},
    {0x807FFFFFu, 0x8080u,
     "largest negative subnormal carries into the "
     "exponent: -2^-126"},
    {0x00010000u, 0x0001u, "bf16 subnormal exact (no flush to zero)"},
};

static int f16_is_nan(uint16_t h) {
  return (h & 0x7C00u) == 0x7C00u && (h & 0x03FFu) != 0;
}
static int bf16_is_nan(uint16_t h) {
  return (h & 0x7F80u) == 0x7F80u && (h & 0x007Fu) != 0;
}

/* NaN inputs that a truncating or naive rounding conversion turns into inf
 * or zero: 0x7F800001 (payload only in the low bits), 0xFFFFFFFF (rounding
 * the upper half up would wrap to 0). */
static const uint32_t k_nans[] = {0x7FC00000u, 0xFFC00000u, 0x7F800001u, 0xFF800001u,
                                  0x7FFFFFFFu, 0xFFFFFFFFu, 0x7F801000u};

Test(api_convert, f16_from_f32_bit_patterns) {
  enum { N = sizeof k_to_f16 / sizeof k_to_f16[0] };
  float src[N];
  uint16_t dst[N];
  for (int i = 0; i < N; ++i) src[i] = u2f(k_to_f16[i].f32);
  cr_assert_eq(fo_convert_from_f32(FO_DTYPE_F16, src, dst, N), FO_SUCCESS);
  for (int i = 0; i < N; ++i)
    cr_expect(dst[i] == k_to_f16[i].f16, "f32 0x%08X -> f16 0x%04X, want 0x%04X (%s)",
              k_to_f16[i].f32, dst[i], k_to_f16[i].f16, k_to_f16[i].why);

  enum { NN = sizeof k_nans / sizeof k_nans[0] };
  float nsrc[NN];
  uint16_t ndst[NN];
  for (int i = 0; i < NN; ++i) nsrc[i] = u2f(k_nans[i]);
  cr_assert_eq(fo_convert_from_f32(FO_DTYPE_F16, nsrc, ndst, NN), FO_SUCCESS);
  for (int i = 0; i < NN; ++i)
    cr_expect(f16_is_nan(ndst[i]), "NaN 0x%08X -> f16 0x%04X is not NaN", k_nans[i], ndst[i]);
}

Test(api_convert, bf16_from_f32_bit_patterns) {
  enum { N = sizeof k_to_bf16 / sizeof k_to_bf16[0] };
  float src[N];
  uint16_t dst[N];
  for (int i = 0; i < N; ++i) src[i] = u2f(k_to_bf16[i].f32);
  cr_assert_eq(fo_convert_from_f32(FO_DTYPE_BF16, src, dst, N), FO_SUCCESS);
  for (int i = 0; i < N; ++i)
    cr_expect(dst[i] == k_to_bf16[i].bf16, "f32 0x%08X -> bf16 0x%04X, want 0x%04X (%s)",
              k_to_bf16[i].f32, dst[i], k_to_bf16[i].bf16, k_to_bf16[i].why);

  enum { NN = sizeof k_nans / sizeof k_nans[0] };
  float nsrc[NN];
  uint16_t ndst[NN];
  for (int i = 0; i < NN; ++i) nsrc[i] = u2f(k_nans[i]);
  cr_assert_eq(fo_convert_from_f32(FO_DTYPE_BF16, nsrc, ndst, NN), FO_SUCCESS);
  for (int i = 0; i < NN; ++i)
    cr_expect(bf16_is_nan(ndst[i]), "NaN 0x%08X -> bf16 0x%04X is not NaN", k_nans[i], ndst[i]);
}

/* Widening, by hand: f16 value = (-1)^s * 2^(e-15) * (1 + f/1024), or
 * 2^-24 * f for e == 0. */
Test(api_convert, f16_to_f32_bit_patterns) {
  static const struct {
    uint16_t f16;
    uint32_t f32;
  } k[] = {
      {0x0000u, 0x00000000u}, {0x8000u, 0x80000000u}, /* +-0 */
      {0x0001u, 0x33800000u},                         /* 2^-24 */
      {0x8001u, 0xB3800000u},                         /* -2^-24 */
      {0x03FFu, 0x387FC000u},                         /* 1023*2^-24 */
      {0x0400u, 0x38800000u},                         /* 2^-14 */
      {0x3C00u, 0x3F800000u},                         /* 1 */
      {0x3C01u, 0x3F802000u},                         /* 1+2^-10 */
      {0xC000u, 0xC0000000u},                         /* -2 */
      {0x7BFFu, 0x477FE000u},                         /* 65504 */
      {0x7C00u, 0x7F800000u}, {0xFC00u, 0xFF800000u}, /* +-inf */
  };
  enum { N = sizeof k / sizeof k[0] };
  uint16_t src[N];
  float dst[N];
  for (int i = 0; i < N; ++i) src[i] = k[i].f16;
  cr_assert_eq(fo_convert_to_f32(FO_DTYPE_F16, src, dst, N), FO_SUCCESS);
  for (int i = 0; i < N; ++i)
    cr_expect(f2u(dst[i]) == k[i].f32, "f16 0x%04X -> 0x%08X, want 0x%08X", k[i].f16, f2u(dst[i]),
              k[i].f32);
  const uint16_t nans[] = {0x7E00u, 0x7C01u, 0xFFFFu, 0xFC01u};
  float nd[4];
  cr_assert_eq(fo_convert_to_f32(FO_DTYPE_F16, nans, nd, 4), FO_SUCCESS);
  for (int i = 0; i < 4; ++i) cr_expect(isnan(nd[i]), "f16 NaN 0x%04X -> %g", nans[i], nd[i]);
}

/* Every f16 pattern: widening then narrowing gives the pattern back (NaN
 * stays NaN), and the exact midpoint between two neighbouring finite
 * values (representable in fp32: 12 significant bits) rounds to the one
 * with the even fraction. */
Test(api_convert, f16_exhaustive_round_trip_and_ties) {
  static uint16_t all[65536], back[65536], mid16[65536];
  static float wide[65536], mid[65536];
  for (int i = 0; i < 65536; ++i) all[i] = (uint16_t)i;
  cr_assert_eq(fo_convert_to_f32(FO_DTYPE_F16, all, wide, 65536), FO_SUCCESS);
  cr_assert_eq(fo_convert_from_f32(FO_DTYPE_F16, wide, back, 65536), FO_SUCCESS);
  int bad = 0;
  for (int i = 0; i < 65536 && bad < 10; ++i) {
    int ok = f16_is_nan(all[i]) ? (isnan(wide[i]) && f16_is_nan(back[i])) : back[i] == all[i];
    if (!ok) {
      ++bad;
      cr_expect(0, "f16 0x%04X -> %a -> 0x%04X", i, (double)wide[i], back[i]);
    }
  }
  /* midpoints between h and h+1 for h = 0..0x7BFE (positive finite) */
  int nm = 0;
  for (int h = 0; h < 0x7BFF; ++h) mid[nm++] = (float)(((double)wide[h] + (double)wide[h + 1]) / 2);
  cr_assert_eq(fo_convert_from_f32(FO_DTYPE_F16, mid, mid16, nm), FO_SUCCESS);
  bad = 0;
  for (int h = 0; h < nm && bad < 10; ++h) {
    uint16_t want = (uint16_t)((h & 1) ? h + 1 : h);
    if (mid16[h] != want) {
      ++bad;
      cr_expect(0, "midpoint %a of 0x%04X/0x%04X -> 0x%04X, want 0x%04X", (double)mid[h], h, h + 1,
                mid16[h], want);
    }
  }
}

/* Every bf16 pattern: widening is the 16-bit shift (NaN stays NaN), and
 * narrowing gives the pattern back. */
Test(api_convert, bf16_exhaustive_round_trip) {
  static uint16_t all[65536], back[65536];
  static float wide[65536];
  for (int i = 0; i < 65536; ++i) all[i] = (uint16_t)i;
  cr_assert_eq(fo_convert_to_f32(FO_DTYPE_BF16, all, wide, 65536), FO_SUCCESS);
  cr_assert_eq(fo_convert_from_f32(FO_DTYPE_BF16, wide, back, 65536), FO_SUCCESS);
  int bad = 0;
  for (int i = 0; i < 65536 && bad < 10; ++i) {
    int nan = bf16_is_nan(all[i]);
    int ok = nan ? (isnan(wide[i]) && bf16_is_nan(back[i]))
                 : (f2u(wide[i]) == (uint32_t)i << 16 && back[i] == all[i]);
    if (!ok) {
      ++bad;
      cr_expect(0, "bf16 0x%04X -> 0x%08X -> 0x%04X", i, f2u(wide[i]), back[i]);
    }
  }
}

Test(api_convert, bad_arguments) {
  float src[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  uint16_t dst[8], dst0[8];
  float fdst[8], fdst0[8];
  memset(dst, 0x5A, sizeof dst);
  memcpy(dst0, dst, sizeof dst);
  memset(fdst, 0x5A, sizeof fdst);
  memcpy(fdst0, fdst, sizeof fdst);
  const int bad_dtype[] = {FO_DTYPE_COUNT, -1, 99};
  for (size_t i = 0; i < 3; ++i) {
    CHECK(FO_ERR_INVALID_ARGUMENT, "dtype", fo_convert_from_f32, (fo_dtype)bad_dtype[i], src, dst,
          8);
    CHECK(FO_ERR_INVALID_ARGUMENT, "dtype", fo_convert_to_f32, (fo_dtype)bad_dtype[i], dst0, fdst,
          8);
  }
  CHECK(FO_ERR_INVALID_ARGUMENT, "n", fo_convert_from_f32, FO_DTYPE_F16, src, dst, -1);
  CHECK(FO_ERR_INVALID_ARGUMENT, "n", fo_convert_to_f32, FO_DTYPE_BF16, dst0, fdst, INT64_MIN);
  CHECK(FO_ERR_NULL_POINTER, "src", fo_convert_from_f32, FO_DTYPE_F16, NULL, dst, 8);
  CHECK(FO_ERR_NULL_POINTER, "dst", fo_convert_from_f32, FO_DTYPE_F16, src, NULL, 8);
  CHECK(FO_ERR_NULL_POINTER, "src", fo_convert_to_f32, FO_DTYPE_BF16, NULL, fdst, 8);
  CHECK(FO_ERR_NULL_POINTER, "dst", fo_convert_to_f32, FO_DTYPE_BF16, dst0, NULL, 8);
  cr_expect(memcmp(dst, dst0, sizeof dst) == 0 && memcmp(fdst, fdst0, sizeof fdst) == 0,
            "a failing conversion wrote its destination");

  /* overlap: allowed only for src == dst with FO_DTYPE_F32 */
  float buf[16];
  for (int i = 0; i < 16; ++i) buf[i] = (float)i + 0.5f;
  float buf0[16];
  memcpy(buf0, buf, sizeof buf);
  CHECK(FO_SUCCESS, NULL, fo_convert_from_f32, FO_DTYPE_F32, buf, buf, 16);
  CHECK(FO_SUCCESS, NULL, fo_convert_to_f32, FO_DTYPE_F32, buf, buf, 16);
  cr_expect(memcmp(buf, buf0, sizeof buf) == 0, "in-place f32 copy changed");
  CHECK(FO_ERR_OVERLAP, NULL, fo_convert_from_f32, FO_DTYPE_F16, buf, buf, 8);
  CHECK(FO_ERR_OVERLAP, NULL, fo_convert_from_f32, FO_DTYPE_BF16, buf, (uint16_t *)(void *)buf + 3,
        8);
  CHECK(FO_ERR_OVERLAP, NULL, fo_convert_to_f32, FO_DTYPE_F16, (uint16_t *)(void *)buf + 8, buf, 8);
  CHECK(FO_ERR_OVERLAP, NULL, fo_convert_from_f32, FO_DTYPE_F32, buf, buf + 1, 8);
  CHECK(FO_ERR_OVERLAP, NULL, fo_convert_to_f32, FO_DTYPE_F32, buf + 1, buf, 8);
  cr_expect(memcmp(buf, buf0, sizeof buf) == 0,
            "a refused overlapping conversion wrote its destination");
  /* touching but disjoint: 8 floats then 8 halves right after them */
  CHECK(FO_SUCCESS, NULL, fo_convert_from_f32, FO_DTYPE_F16, buf, buf + 8, 8);
  /* n == 0 does nothing, whatever the pointers */
  CHECK(FO_SUCCESS, NULL, fo_convert_from_f32, FO_DTYPE_F16, src, dst, 0);
}

/* An array must start on a multiple of its element size: floats on 4
 * bytes, 16-bit values on 2.  A refused call writes nothing. */
Test(api_convert, misaligned_arrays) {
  float src[4] = {1.5f, -2.25f, 3.0f, 0.125f};
  _Alignas(16) unsigned char raw[64], raw0[64];
  for (size_t i = 0; i < sizeof raw; ++i) raw[i] = (unsigned char)(0x5A + 7 * i);
  memcpy(raw0, raw, sizeof raw);
  float fdst[4] = {9, 9, 9, 9};
  const void *odd = raw + 1, *two = raw + 2, *four = raw + 4;
  CHECK(FO_ERR_BAD_POINTER, "src", fo_convert_from_f32, FO_DTYPE_F16, (const float *)two, raw + 32,
        4);
  CHECK(FO_ERR_BAD_POINTER, "dst", fo_convert_from_f32, FO_DTYPE_BF16, src, raw + 33, 4);
  CHECK(FO_ERR_BAD_POINTER, "dst", fo_convert_from_f32, FO_DTYPE_F32, src, raw + 34, 4);
  CHECK(FO_ERR_BAD_POINTER, "src", fo_convert_to_f32, FO_DTYPE_F16, odd, fdst, 4);
  CHECK(FO_ERR_BAD_POINTER, "src", fo_convert_to_f32, FO_DTYPE_F32, two, fdst, 4);
  CHECK(FO_ERR_BAD_POINTER, "dst", fo_convert_to_f32, FO_DTYPE_BF16, four, (float *)(raw + 42), 4);
  cr_expect(memcmp(raw, raw0, sizeof raw) == 0, "a refused conversion wrote its destination");
  cr_expect(fdst[0] == 9 && fdst[3] == 9, "a refused conversion wrote its destination");
  /* 16-bit arrays on 2 bytes (not 4 or 16) are fine, and round-trip */
  CHECK(FO_SUCCESS, NULL, fo_convert_from_f32, FO_DTYPE_BF16, src, raw + 34, 4);
  CHECK(FO_SUCCESS, NULL, fo_convert_to_f32, FO_DTYPE_BF16, raw + 34, fdst, 4);
  cr_expect(memcmp(fdst, src, sizeof src) == 0, "bf16 round trip through raw + 34 changed values");
}
