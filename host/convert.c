/* convert.c -- dtype sizes and the public 16-bit conversion helpers. */
#include <string.h>

#include "internal.h"

int fo_dtype_valid(int dtype) {
  return dtype >= 0 && dtype < FO_DTYPE_COUNT;
}

size_t fo_dtype_size(fo_dtype dtype) {
  switch (dtype) {
    case FO_DTYPE_F32: return 4;
    case FO_DTYPE_F16:
    case FO_DTYPE_BF16: return 2;
    default: return 0;
  }
}

static fo_status check_convert_args(const char *func, fo_dtype dtype, const void *src,
                                    const void *dst, int64_t n) {
  if (!src || !dst) return fo_fail(FO_ERR_NULL_POINTER, func, "%s is NULL", src ? "dst" : "src");
  if (!fo_dtype_valid((int)dtype))
    return fo_fail(FO_ERR_INVALID_ARGUMENT, func, "unknown dtype %d", (int)dtype);
  if (n < 0) return fo_fail(FO_ERR_INVALID_ARGUMENT, func, "n = %lld is negative", (long long)n);
  if ((uint64_t)n > (uint64_t)(SIZE_MAX / 4))
    return fo_fail(FO_ERR_INVALID_ARGUMENT, func, "n = %lld is too large", (long long)n);
  return FO_SUCCESS;
}

/* An array of size-byte elements must start on a multiple of size. */
fo_status fo_check_aligned(const char *func, const char *what, const void *ptr, size_t size) {
  if ((uintptr_t)ptr % size == 0) return FO_SUCCESS;
  return fo_fail(FO_ERR_BAD_POINTER, func, "%s = %p is not aligned to its %zu-byte elements", what,
                 ptr, size);
}

/* True when [a, a+an) and [b, b+bn) share a byte. */
static int bytes_overlap(const void *a, size_t an, const void *b, size_t bn) {
  uintptr_t x = (uintptr_t)a, y = (uintptr_t)b;
  return an && bn && x < y + bn && y < x + an;
}

fo_status fo_convert_from_f32(fo_dtype dtype, const float *src, void *dst, int64_t n) {
  static const char fn[] = "fo_convert_from_f32";
  fo_status st = check_convert_args(fn, dtype, src, dst, n);
  if (st == FO_SUCCESS) st = fo_check_aligned(fn, "src", src, 4);
  if (st == FO_SUCCESS) st = fo_check_aligned(fn, "dst", dst, fo_dtype_size(dtype));
  if (st != FO_SUCCESS) return st;
  size_t count = (size_t)n;
  if ((const void *)src != dst && bytes_overlap(src, count * 4, dst, count * fo_dtype_size(dtype)))
    return fo_fail(FO_ERR_OVERLAP, fn, "src and dst overlap");
  if (dtype == FO_DTYPE_F32) {
    if ((const void *)src != dst) memcpy(dst, src, count * 4);
    return FO_SUCCESS;
  }
  if (count && (const void *)src == dst) return fo_fail(FO_ERR_OVERLAP, fn, "src and dst overlap");
  uint16_t *out = (uint16_t *)dst;
  for (size_t i = 0; i < count; i++)
    out[i] = dtype == FO_DTYPE_F16 ? fo_f32_to_f16(src[i]) : fo_f32_to_bf16(src[i]);
  return FO_SUCCESS;
}

fo_status fo_convert_to_f32(fo_dtype dtype, const void *src, float *dst, int64_t n) {
  static const char fn[] = "fo_convert_to_f32";
  fo_status st = check_convert_args(fn, dtype, src, dst, n);
  if (st == FO_SUCCESS) st = fo_check_aligned(fn, "src", src, fo_dtype_size(dtype));
  if (st == FO_SUCCESS) st = fo_check_aligned(fn, "dst", dst, 4);
  if (st != FO_SUCCESS) return st;
  size_t count = (size_t)n;
  if (src != (const void *)dst && bytes_overlap(src, count * fo_dtype_size(dtype), dst, count * 4))
    return fo_fail(FO_ERR_OVERLAP, fn, "src and dst overlap");
  if (dtype == FO_DTYPE_F32) {
    if (src != (const void *)dst) memcpy(dst, src, count * 4);
    return FO_SUCCESS;
  }
  if (count && src == (const void *)dst) return fo_fail(FO_ERR_OVERLAP, fn, "src and dst overlap");
  const uint16_t *in = (const uint16_t *)src;
  for (size_t i = 0; i < count; i++)
    dst[i] = dtype == FO_DTYPE_F16 ? fo_f16_to_f32(in[i]) : fo_bf16_to_f32(in[i]);
  return FO_SUCCESS;
}
