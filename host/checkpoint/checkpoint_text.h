/*
 * checkpoint_text.h -- the text a checkpoint's header is made of
 * (host/checkpoint/checkpoint_text.c): a growing string, JSON string
 * literals, and the numbers of the "fusedopt.*" metadata.  Not installed.
 *
 * Numbers in the metadata are strings (safetensors metadata maps strings
 * to strings).  Integers are plain decimal.  Floats are hexadecimal
 * ("0x1.99999ap-4", as C's "%a" and Python's float.hex() write them, or
 * "inf", "-inf", "nan", "-nan"): exact, and formatted and parsed here
 * without the C library, whose "%a" and strtod follow the caller's locale.
 * Checksums are 8 lowercase hex digits.
 */
#ifndef FO_CHECKPOINT_TEXT_H
#define FO_CHECKPOINT_TEXT_H

#include <stddef.h>
#include <stdint.h>

/* A growing NUL-terminated string.  Zero-initialize; free p.  After a
 * failed allocation everything appended is dropped and failed is set. */
typedef struct fo_sbuf {
  char *p;
  size_t len, cap;
  int failed;
} fo_sbuf;

void fo_sb_put(fo_sbuf *b, const void *s, size_t n);
void fo_sb_str(fo_sbuf *b, const char *s);
/* Only for numbers and short fixed words: at most 159 characters. */
void fo_sb_printf(fo_sbuf *b, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
/* s (n bytes of valid UTF-8) as a JSON string literal. */
void fo_sb_json(fo_sbuf *b, const char *s, size_t n);

/* The value of a hex digit, or -1. */
int fo_hex_digit(int c);

/* A float as "[-]0x1.hhhhhhp[+-]d" (trailing zero digits dropped), the
 * form C99's "%a" and Python's float.hex() use, or [-]inf, [-]nan. */
void fo_format_hex_float(float f, char out[32]);
/* A hex float that is exactly a float32 ("0x1.8p+1", "-0x0p+0", any
 * number of digits as long as the value is exact), or [-]inf, [-]nan;
 * 0 when s is none. */
int fo_parse_hex_float(const char *s, size_t n, float *out);
/* A decimal int64: optional '-', digits, no leading zeros, no '+'; 0 when
 * s is none. */
int fo_parse_i64(const char *s, size_t n, int64_t *out);
/* A checksum: exactly 8 hex digits; 0 when s is none. */
int fo_parse_crc(const char *s, size_t n, uint32_t *out);

#endif /* FO_CHECKPOINT_TEXT_H */
