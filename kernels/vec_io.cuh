/*
 * vec_io.cuh -- the element access of the kernels' block work
 * (block_work.cuh, pack_work.cuh): alignment tests, and loads and stores of
 * N consecutive elements of a dtype, widened to or rounded from fp32.
 *
 * On the device an access of N elements is one vector instruction where N
 * elements make 8 or 16 bytes (16-bit) or 16 bytes (fp32), with streaming
 * cache hints: every byte is touched once per step.  On the host (g++, the
 * CPU tier) it is a memcpy, so the tests run the same arithmetic.
 */
#ifndef FO_VEC_IO_CUH
#define FO_VEC_IO_CUH

#include <stdint.h>
#include <string.h>

#include "rules.h"

#if defined(__CUDACC__)
#define FO_BW_FN __host__ __device__ __forceinline__
#else
#define FO_BW_FN inline
#endif
/* Full unrolling of the fixed-size register loops; only the device compiler
 * knows the pragma (g++ unrolls them by itself at -O2). */
#if defined(__CUDA_ARCH__)
#define FO_BW_UNROLL _Pragma("unroll")
#else
#define FO_BW_UNROLL
#endif

/* True when p is 16-byte aligned, so 16-byte vector accesses from it are
 * legal. */
FO_BW_FN bool fo_aligned16(const void *p) {
  return ((uintptr_t)p & 15u) == 0;
}

/* True when p is aligned to the bytes of W elements of its type (W * size
 * a power of two, at most 16): one vector access of W elements at p is one
 * aligned load or store. */
template <int W, class T>
FO_BW_FN bool fo_aligned_vec(const T *p) {
  static_assert(W * sizeof(T) <= 16 && ((W * sizeof(T)) & (W * sizeof(T) - 1)) == 0,
                "a vector is one aligned access of at most 16 bytes");
  return ((uintptr_t)p & (uintptr_t)(W * sizeof(T) - 1)) == 0;
}

/* A count of the bytes the block work moves (the emulated device's,
 * tests/emu): a host build may define FO_BW_TRACE as the name of a
 * function that every element load (store 0) and store (store 1) of the
 * accessors below then reports to, so a test can hold the step's traffic
 * to the bytes model the benchmark divides by (bench/model.c).  The device
 * build never calls it. */
#if !defined(__CUDA_ARCH__) && defined(FO_BW_TRACE)
void FO_BW_TRACE(const void *p, size_t bytes, int store);
#define FO_BW_TRACED(p, bytes, store) FO_BW_TRACE((p), (bytes), (store))
#else
#define FO_BW_TRACED(p, bytes, store) ((void)0)
#endif

/* ------------------------------------------------- loads and stores */

/* The storage type of a dtype code. */
template <int DT>
struct fo_elem {
  typedef uint16_t type;
};
template <>
struct fo_elem<FO_RULE_F32> {
  typedef float type;
};

/* Bytes of one element of a dtype code. */
template <int DT>
struct fo_elem_size {
  static constexpr int value = DT == FO_RULE_F32 ? 4 : 2;
};

/* N consecutive fp32 values.  On the device, 16-byte streaming loads
 * (__ldcs: every byte is touched once per step, so do not let it evict
 * what the caller's next kernel needs from L2); on the host, memcpy. */
template <int N>
FO_BW_FN void fo_ld_f32(const float *p, float (&x)[N]) {
#if defined(__CUDA_ARCH__)
  if constexpr (N % 4 == 0) {
    FO_BW_UNROLL
    for (int q = 0; q < N / 4; q++) {
      const float4 v = __ldcs(reinterpret_cast<const float4 *>(p) + q);
      x[4 * q + 0] = v.x;
      x[4 * q + 1] = v.y;
      x[4 * q + 2] = v.z;
      x[4 * q + 3] = v.w;
    }
  } else {
    FO_BW_UNROLL
    for (int j = 0; j < N; j++) x[j] = __ldcs(p + j);
  }
#else
  memcpy(x, p, sizeof x);
  FO_BW_TRACED(p, sizeof x, 0);
#endif
}

template <int N>
FO_BW_FN void fo_st_f32(float *p, const float (&x)[N]) {
#if defined(__CUDA_ARCH__)
  if constexpr (N % 4 == 0) {
    FO_BW_UNROLL
    for (int q = 0; q < N / 4; q++)
      __stcs(reinterpret_cast<float4 *>(p) + q,
             make_float4(x[4 * q], x[4 * q + 1], x[4 * q + 2], x[4 * q + 3]));
  } else {
    FO_BW_UNROLL
    for (int j = 0; j < N; j++) __stcs(p + j, x[j]);
  }
#else
  memcpy(p, x, sizeof x);
  FO_BW_TRACED(p, sizeof x, 1);
#endif
}

/* N consecutive 16-bit values: one 16-byte load per 8 on the device, or
 * one 8-byte load per 4 (the step's vectors of 4, which keep every fp32
 * array of a mixed-dtype step one float4 per thread: see fo_step_shape). */
template <int N>
FO_BW_FN void fo_ld_u16(const uint16_t *p, uint16_t (&h)[N]) {
#if defined(__CUDA_ARCH__)
  if constexpr (N == 4) {
    const uint2 v = __ldcs(reinterpret_cast<const uint2 *>(p));
    h[0] = (uint16_t)(v.x & 0xffffu);
    h[1] = (uint16_t)(v.x >> 16);
    h[2] = (uint16_t)(v.y & 0xffffu);
    h[3] = (uint16_t)(v.y >> 16);
  } else if constexpr (N % 8 == 0) {
    FO_BW_UNROLL
    for (int q = 0; q < N / 8; q++) {
      const uint4 v = __ldcs(reinterpret_cast<const uint4 *>(p) + q);
      const uint32_t w[4] = {v.x, v.y, v.z, v.w};
      FO_BW_UNROLL
      for (int i = 0; i < 4; i++) {
        h[8 * q + 2 * i] = (uint16_t)(w[i] & 0xffffu);
        h[8 * q + 2 * i + 1] = (uint16_t)(w[i] >> 16);
      }
    }
  } else {
    FO_BW_UNROLL
    for (int j = 0; j < N; j++) h[j] = __ldcs(reinterpret_cast<const unsigned short *>(p) + j);
  }
#else
  memcpy(h, p, sizeof h);
  FO_BW_TRACED(p, sizeof h, 0);
#endif
}

template <int N>
FO_BW_FN void fo_st_u16(uint16_t *p, const uint16_t (&h)[N]) {
#if defined(__CUDA_ARCH__)
  if constexpr (N == 4) {
    __stcs(reinterpret_cast<uint2 *>(p), make_uint2((uint32_t)h[0] | ((uint32_t)h[1] << 16),
                                                    (uint32_t)h[2] | ((uint32_t)h[3] << 16)));
  } else if constexpr (N % 8 == 0) {
    FO_BW_UNROLL
    for (int q = 0; q < N / 8; q++) {
      uint32_t w[4];
      FO_BW_UNROLL
      for (int i = 0; i < 4; i++)
        w[i] = (uint32_t)h[8 * q + 2 * i] | ((uint32_t)h[8 * q + 2 * i + 1] << 16);
      __stcs(reinterpret_cast<uint4 *>(p) + q, make_uint4(w[0], w[1], w[2], w[3]));
    }
  } else {
    FO_BW_UNROLL
    for (int j = 0; j < N; j++)
      __stcs(reinterpret_cast<unsigned short *>(p) + j, (unsigned short)h[j]);
  }
#else
  memcpy(p, h, sizeof h);
  FO_BW_TRACED(p, sizeof h, 1);
#endif
}

/* N values of dtype DT at p, widened to fp32. */
template <int DT, int N>
FO_BW_FN void fo_ld_widen(const typename fo_elem<DT>::type *p, float (&x)[N]) {
  if constexpr (DT == FO_RULE_F32) {
    fo_ld_f32<N>(p, x);
  } else {
    uint16_t h[N];
    fo_ld_u16<N>(p, h);
    FO_BW_UNROLL
    for (int j = 0; j < N; j++)
      x[j] = DT == FO_RULE_BF16 ? fo_bf16_to_f32(h[j]) : fo_f16_to_f32(h[j]);
  }
}

/* N fp32 values rounded to nearest even into dtype DT at p. */
template <int DT, int N>
FO_BW_FN void fo_st_round(typename fo_elem<DT>::type *p, const float (&x)[N]) {
  if constexpr (DT == FO_RULE_F32) {
    fo_st_f32<N>(p, x);
  } else {
    uint16_t h[N];
    FO_BW_UNROLL
    for (int j = 0; j < N; j++)
      h[j] = DT == FO_RULE_BF16 ? fo_f32_to_bf16(x[j]) : fo_f32_to_f16(x[j]);
    fo_st_u16<N>(p, h);
  }
}

#endif /* FO_VEC_IO_CUH */
