/*
 * checkpoint_text.c -- strings and numbers of a checkpoint's header
 * (checkpoint_text.h has the formats).
 */
#include "checkpoint_text.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h" /* fo_f32_bits */

/* ------------------------------------------------------- string buffer */

void fo_sb_put(fo_sbuf *b, const void *s, size_t n) {
  if (b->failed) return;
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + n + 1) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
      b->failed = 1;
      return;
    }
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = '\0';
}

void fo_sb_str(fo_sbuf *b, const char *s) {
  fo_sb_put(b, s, strlen(s));
}

void fo_sb_printf(fo_sbuf *b, const char *fmt, ...) {
  char tmp[160];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (n < 0 || (size_t)n >= sizeof tmp)
    b->failed = 1;
  else
    fo_sb_put(b, tmp, (size_t)n);
}

/* Names were checked to be UTF-8, so only the quote, the backslash and
 * control characters need escapes. */
void fo_sb_json(fo_sbuf *b, const char *s, size_t n) {
  fo_sb_put(b, "\"", 1);
  size_t run = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c >= 0x20 && c != '"' && c != '\\') continue;
    fo_sb_put(b, s + run, i - run);
    if (c == '"' || c == '\\') {
      char e[2] = {'\\', (char)c};
      fo_sb_put(b, e, 2);
    } else {
      fo_sb_printf(b, "\\u%04x", c);
    }
    run = i + 1;
  }
  fo_sb_put(b, s + run, n - run);
  fo_sb_put(b, "\"", 1);
}

/* ------------------------------------------------------- number formats */

int fo_hex_digit(int c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

void fo_format_hex_float(float f, char out[32]) {
  uint32_t b = fo_f32_bits(f), e = (b >> 23) & 0xFFu, m = b & 0x7FFFFFu;
  char *o = out;
  if (b >> 31) *o++ = '-';
  if (e == 0xFF || (e == 0 && m == 0)) { /* a NaN keeps its sign, not its payload */
    strcpy(o, e == 0xFF ? (m ? "nan" : "inf") : "0x0p+0");
    return;
  }
  int exp = (int)e - 127;
  uint32_t mant = m | 0x800000u;
  if (e == 0) { /* subnormal: normalize, as float.hex does for the double */
    exp = -126;
    mant = m;
    while (!(mant & 0x800000u)) {
      mant <<= 1;
      exp--;
    }
  }
  uint32_t frac = (mant & 0x7FFFFFu) << 1; /* 24 bits: six hex digits */
  char digits[8];
  int nd = 6;
  for (int i = 5; i >= 0; i--, frac >>= 4) digits[i] = "0123456789abcdef"[frac & 15u];
  while (nd > 0 && digits[nd - 1] == '0') nd--;
  digits[nd] = '\0';
  snprintf(o, 24, "0x1%s%sp%+d", nd ? "." : "", digits, exp);
}

int fo_parse_i64(const char *s, size_t n, int64_t *out) {
  size_t i = 0;
  int neg = n > 0 && s[0] == '-';
  i = (size_t)neg;
  if (i == n || (s[i] == '0' && n - i > 1) || (neg && s[i] == '0')) return 0;
  uint64_t v = 0, limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
  for (; i < n; i++) {
    if (s[i] < '0' || s[i] > '9') return 0;
    unsigned d = (unsigned)(s[i] - '0');
    if (v > (limit - d) / 10) return 0;
    v = v * 10 + d;
  }
  *out = neg ? (int64_t)(0 - v) : (int64_t)v;
  return 1;
}

/* The exponent part "p[+-]digits" of a hex float, bounded so the sum with
 * the mantissa's scale cannot overflow an int. */
static int parse_hex_exponent(const char *s, size_t n, size_t *i, int *exp) {
  if (*i >= n || (s[*i] != 'p' && s[*i] != 'P')) return 0;
  (*i)++;
  int sign = 1;
  if (*i < n && (s[*i] == '+' || s[*i] == '-')) sign = s[(*i)++] == '-' ? -1 : 1;
  if (*i >= n) return 0;
  int e = 0;
  for (; *i < n; (*i)++) {
    if (s[*i] < '0' || s[*i] > '9' || e > 100000) return 0;
    e = e * 10 + (s[*i] - '0');
  }
  *exp = sign * e;
  return 1;
}

int fo_parse_hex_float(const char *s, size_t n, float *out) {
  size_t i = 0;
  int neg = n > 0 && s[0] == '-';
  i = (size_t)neg;
  if (n - i == 3 && memcmp(s + i, "inf", 3) == 0) {
    *out = neg ? -INFINITY : INFINITY;
    return 1;
  }
  if (n - i == 3 && memcmp(s + i, "nan", 3) == 0) {
    *out = neg ? -NAN : NAN;
    return 1;
  }
  if (n - i < 2 || s[i] != '0' || (s[i + 1] != 'x' && s[i + 1] != 'X')) return 0;
  i += 2;
  uint64_t mant = 0;
  int scale = 0, digits = 0, point = 0;
  for (; i < n && (fo_hex_digit(s[i]) >= 0 || (s[i] == '.' && !point)); i++) {
    if (s[i] == '.') {
      point = 1;
      continue;
    }
    digits++;
    if (mant >> 49) return 0; /* more than 53 significant bits: not a float */
    mant = mant * 16 + (uint64_t)fo_hex_digit(s[i]);
    if (point) scale -= 4;
  }
  int exp;
  if (digits == 0 || !parse_hex_exponent(s, n, &i, &exp)) return 0;
  double d = ldexp((double)mant, scale + exp); /* exact while in double's range */
  float f = (float)d;
  if (isinf(d) || (double)f != d || (mant != 0 && d == 0.0)) return 0;
  *out = neg ? -f : f;
  return 1;
}

int fo_parse_crc(const char *s, size_t n, uint32_t *out) {
  if (n != 8) return 0;
  uint32_t v = 0;
  for (size_t i = 0; i < 8; i++) {
    int d = fo_hex_digit(s[i]);
    if (d < 0) return 0;
    v = v << 4 | (uint32_t)d;
  }
  *out = v;
  return 1;
}
