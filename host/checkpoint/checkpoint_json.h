/*
 * checkpoint_json.h -- a small strict JSON parser (RFC 8259) for the
 * headers of checkpoint files.  Not installed.
 *
 * Strict means: exactly one value and whitespace; no comments, trailing
 * commas, single quotes, NaN literals or leading zeros; strings are valid
 * UTF-8 without raw control characters and without lone surrogate escapes;
 * no object has two members with the same key; nesting is at most
 * FO_JSON_MAX_DEPTH deep.  Anything else is a checkpoint error whose
 * message gives the byte offset.
 *
 * The parser is a pure function over a memory buffer (no I/O, no global
 * state), so the fuzz target can drive it directly.
 */
#ifndef FO_CHECKPOINT_JSON_H
#define FO_CHECKPOINT_JSON_H

#include <stddef.h>
#include <stdint.h>

#include "fusedopt.h"

#define FO_JSON_MAX_DEPTH 64

typedef enum fo_json_type {
  FO_JSON_NULL = 0,
  FO_JSON_BOOL,
  FO_JSON_NUMBER,
  FO_JSON_STRING,
  FO_JSON_ARRAY,
  FO_JSON_OBJECT
} fo_json_type;

/* One value.  Children of an array or object are a linked list of indices
 * into the document's value table, in document order. */
typedef struct fo_json_value {
  fo_json_type type;
  int boolean; /* BOOL */
  /* NUMBER: non-zero when the number is a non-negative integer without
   * fraction or exponent that fits in 64 bits; u is then its value. */
  int is_uint;
  uint64_t u;
  /* STRING: the decoded UTF-8 (NUL-terminated; may hold escaped NULs).
   * NUMBER: the lexeme as written (not terminated). */
  const char *str;
  size_t len;
  /* For a member of an object: its decoded key (NUL-terminated). */
  const char *key;
  size_t key_len;
  size_t offset; /* of the value's first byte, counted from base */
  int64_t first; /* first child, -1 if none */
  int64_t next;  /* next sibling, -1 if none */
  int64_t count; /* number of children */
} fo_json_value;

typedef struct fo_json_doc {
  fo_json_value *values; /* values[0] is the root */
  int64_t count, cap;
  char *strings; /* decoded strings, one allocation of the text's size */
  size_t used;
} fo_json_doc;

/* Parse len bytes of text.  base is added to every offset in messages and
 * in fo_json_value.offset (the header's position in the file).  On success
 * *out holds the document (free with fo_json_free); on failure nothing is
 * allocated and the status is FO_ERR_CHECKPOINT (or FO_ERR_OUT_OF_MEMORY)
 * with the message under func's name. */
fo_status fo_json_parse(const char *func, const char *text, size_t len, size_t base,
                        fo_json_doc *out);
void fo_json_free(fo_json_doc *doc);

/* Whether s[0..n) is valid UTF-8 (RFC 3629). */
int fo_json_utf8_valid(const char *s, size_t n);

/* The member of object value obj whose key is key (key_len bytes), or NULL. */
const fo_json_value *fo_json_member(const fo_json_doc *doc, const fo_json_value *obj,
                                    const char *key);

#endif /* FO_CHECKPOINT_JSON_H */
