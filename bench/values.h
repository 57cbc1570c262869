/*
 * values.h -- the benchmark's input values and its bf16 conversions, for
 * host C and CUDA device code alike, so both backends fill identical
 * buffers and the naive steps round alike.
 *
 * Inputs are never zeros (zeros can hide unwritten outputs and run faster
 * than real data): value i of a buffer is a hash of (seed, i) mapped to
 * [-scale, scale).
 */
#ifndef BENCH_VALUES_H
#define BENCH_VALUES_H

#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__)
#define BV_FN static inline __host__ __device__
#else
#define BV_FN static inline
#endif

BV_FN uint64_t bv_mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/* Uniform in [-scale, scale): 24 random bits, exact in fp32. */
BV_FN float bv_value(uint64_t seed, uint64_t i, float scale) {
  uint64_t h = bv_mix(bv_mix(seed + 0x9e3779b97f4a7c15ull) ^ i);
  float u = (float)(h >> 40) * (1.0f / 16777216.0f); /* [0, 1) */
  return (2.0f * u - 1.0f) * scale;
}

BV_FN uint32_t bv_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

BV_FN float bv_bf16_to_f32(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

/* Round to nearest even (inputs here are finite). */
BV_FN uint16_t bv_f32_to_bf16(float f) {
  uint32_t u = bv_bits(f);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

#endif /* BENCH_VALUES_H */
