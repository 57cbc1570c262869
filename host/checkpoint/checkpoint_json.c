/* checkpoint_json.c -- the strict JSON parser of checkpoint headers. */
#include "checkpoint_json.h"

#include <stdlib.h>
#include <string.h>

#include "checkpoint_text.h"
#include "internal.h"

typedef struct parser {
  const char *fn;
  const unsigned char *s;
  size_t len, pos, base;
  int depth;
  fo_json_doc *doc;
} parser;

static fo_status syntax(const parser *p, const char *what) {
  return fo_fail(FO_ERR_CHECKPOINT, p->fn, "malformed JSON in the header at byte %zu: %s",
                 p->base + p->pos, what);
}

static void skip_ws(parser *p) {
  while (p->pos < p->len) {
    unsigned char c = p->s[p->pos];
    if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
    p->pos++;
  }
}

/* Append a value; its index goes to *idx.  The table grows by doubling;
 * values are addressed by index, so growth invalidates nothing. */
static fo_status new_value(parser *p, fo_json_type type, int64_t *idx) {
  fo_json_doc *d = p->doc;
  if (d->count == d->cap) {
    int64_t cap = d->cap ? 2 * d->cap : 64;
    fo_json_value *v = realloc(d->values, (size_t)cap * sizeof *v);
    if (!v) return fo_fail(FO_ERR_OUT_OF_MEMORY, p->fn, "no memory for the JSON header");
    d->values = v;
    d->cap = cap;
  }
  fo_json_value *v = &d->values[d->count];
  memset(v, 0, sizeof *v);
  v->type = type;
  v->offset = p->base + p->pos;
  v->first = v->next = -1;
  *idx = d->count++;
  return FO_SUCCESS;
}

/* ---------------------------------------------------------------- strings */

/* Four hex digits at p->pos; -1 if they are not. */
static long read_hex4(parser *p) {
  if (p->len - p->pos < 4) return -1;
  long v = 0;
  for (int i = 0; i < 4; i++) {
    int d = fo_hex_digit(p->s[p->pos + (size_t)i]);
    if (d < 0) return -1;
    v = v * 16 + d;
  }
  p->pos += 4;
  return v;
}

static size_t put_utf8(char *out, unsigned long cp) {
  if (cp < 0x80) {
    out[0] = (char)cp;
    return 1;
  }
  if (cp < 0x800) {
    out[0] = (char)(0xC0 | (cp >> 6));
    out[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
  }
  if (cp < 0x10000) {
    out[0] = (char)(0xE0 | (cp >> 12));
    out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[2] = (char)(0x80 | (cp & 0x3F));
    return 3;
  }
  out[0] = (char)(0xF0 | (cp >> 18));
  out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
  out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
  out[3] = (char)(0x80 | (cp & 0x3F));
  return 4;
}

/* An escape after the backslash; writes its UTF-8 to out, *n bytes.
 * Surrogates must come as a high-low pair of \u escapes. */
static fo_status read_escape(parser *p, char *out, size_t *n) {
  if (p->pos >= p->len) return syntax(p, "unterminated string");
  unsigned char c = p->s[p->pos++];
  static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
  const char *simple = c ? strchr(from, c) : NULL;
  if (simple) {
    out[0] = to[simple - from];
    *n = 1;
    return FO_SUCCESS;
  }
  if (c != 'u') return syntax(p, "unknown escape in a string");
  long cp = read_hex4(p);
  if (cp < 0) return syntax(p, "\\u needs four hex digits");
  if (cp >= 0xDC00 && cp <= 0xDFFF) return syntax(p, "lone low surrogate escape");
  if (cp >= 0xD800 && cp <= 0xDBFF) {
    if (p->len - p->pos < 2 || p->s[p->pos] != '\\' || p->s[p->pos + 1] != 'u')
      return syntax(p, "high surrogate escape without its low half");
    p->pos += 2;
    long lo = read_hex4(p);
    if (lo < 0xDC00 || lo > 0xDFFF) return syntax(p, "high surrogate escape without its low half");
    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
  }
  *n = put_utf8(out, (unsigned long)cp);
  return FO_SUCCESS;
}

/* Length of the valid UTF-8 sequence at s[0..avail), 0 if invalid
 * (RFC 3629: no overlong forms, no surrogates, nothing past U+10FFFF). */
static size_t utf8_len(const unsigned char *s, size_t avail) {
  unsigned char c = s[0];
  size_t n;
  unsigned char lo = 0x80, hi = 0xBF; /* range of the second byte */
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF)
    n = 2;
  else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  if (avail < n || s[1] < lo || s[1] > hi) return 0;
  for (size_t i = 2; i < n; i++)
    if ((s[i] & 0xC0) != 0x80) return 0;
  return n;
}

/* A string at p->pos (on its opening quote), decoded into the document's
 * string buffer, which is as large as the whole text: a decoded string
 * plus its NUL is never longer than the quoted original. */
static fo_status read_string(parser *p, const char **str, size_t *len) {
  fo_json_doc *d = p->doc;
  char *out = d->strings + d->used;
  size_t n = 0;
  p->pos++; /* the opening quote */
  for (;;) {
    if (p->pos >= p->len) return syntax(p, "unterminated string");
    unsigned char c = p->s[p->pos];
    if (c == '"') break;
    if (c < 0x20) return syntax(p, "raw control character in a string");
    if (c == '\\') {
      p->pos++;
      size_t k = 0;
      fo_status st = read_escape(p, out + n, &k);
      if (st != FO_SUCCESS) return st;
      n += k;
      continue;
    }
    size_t k = utf8_len(p->s + p->pos, p->len - p->pos);
    if (k == 0) return syntax(p, "invalid UTF-8 in a string");
    memcpy(out + n, p->s + p->pos, k);
    n += k;
    p->pos += k;
  }
  p->pos++; /* the closing quote */
  out[n] = '\0';
  d->used += n + 1;
  *str = out;
  *len = n;
  return FO_SUCCESS;
}

/* ---------------------------------------------------------------- numbers */

static int is_digit(const parser *p) {
  return p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9';
}

static fo_status read_number(parser *p, fo_json_value *v) {
  size_t start = p->pos;
  int negative = 0, integral = 1, fits = 1;
  uint64_t u = 0;
  if (p->s[p->pos] == '-') {
    negative = 1;
    p->pos++;
  }
  if (!is_digit(p)) return syntax(p, "a number needs a digit");
  if (p->s[p->pos] == '0') {
    p->pos++;
    if (is_digit(p)) return syntax(p, "leading zero in a number");
  } else {
    while (is_digit(p)) {
      unsigned d = (unsigned)(p->s[p->pos++] - '0');
      if (u > (UINT64_MAX - d) / 10)
        fits = 0;
      else
        u = u * 10 + d;
    }
  }
  if (p->pos < p->len && p->s[p->pos] == '.') {
    integral = 0;
    p->pos++;
    if (!is_digit(p)) return syntax(p, "a fraction needs a digit");
    while (is_digit(p)) p->pos++;
  }
  if (p->pos < p->len && (p->s[p->pos] == 'e' || p->s[p->pos] == 'E')) {
    integral = 0;
    p->pos++;
    if (p->pos < p->len && (p->s[p->pos] == '+' || p->s[p->pos] == '-')) p->pos++;
    if (!is_digit(p)) return syntax(p, "an exponent needs a digit");
    while (is_digit(p)) p->pos++;
  }
  v->is_uint = !negative && integral && fits;
  v->u = v->is_uint ? u : 0;
  v->str = (const char *)p->s + start;
  v->len = p->pos - start;
  return FO_SUCCESS;
}

/* --------------------------------------------------------------- literals */

static fo_status read_literal(parser *p, fo_json_value *v) {
  static const struct {
    const char *word;
    fo_json_type type;
    int boolean;
  } words[] = {{"true", FO_JSON_BOOL, 1}, {"false", FO_JSON_BOOL, 0}, {"null", FO_JSON_NULL, 0}};
  for (size_t i = 0; i < sizeof words / sizeof words[0]; i++) {
    size_t n = strlen(words[i].word);
    if (p->len - p->pos >= n && memcmp(p->s + p->pos, words[i].word, n) == 0) {
      v->type = words[i].type;
      v->boolean = words[i].boolean;
      p->pos += n;
      return FO_SUCCESS;
    }
  }
  return syntax(p, "expected a value");
}

/* ------------------------------------------------------- objects, arrays */

static fo_status read_value(parser *p, int64_t *idx);

typedef struct key_ref {
  const char *key;
  size_t len;
  size_t offset;
} key_ref;

static int key_cmp(const void *a, const void *b) {
  const key_ref *x = a, *y = b;
  size_t n = x->len < y->len ? x->len : y->len;
  int c = memcmp(x->key, y->key, n);
  if (c) return c;
  return (x->len > y->len) - (x->len < y->len);
}

/* Two members with one key are refused: which one a reader takes differs
 * between JSON libraries, so a file could mean two things. */
static fo_status check_duplicate_keys(parser *p, int64_t obj) {
  const fo_json_doc *d = p->doc;
  int64_t n = d->values[obj].count;
  if (n < 2) return FO_SUCCESS;
  key_ref *k = malloc((size_t)n * sizeof *k);
  if (!k) return fo_fail(FO_ERR_OUT_OF_MEMORY, p->fn, "no memory for the JSON header");
  int64_t i = 0;
  for (int64_t c = d->values[obj].first; c >= 0; c = d->values[c].next, i++)
    k[i] = (key_ref){d->values[c].key, d->values[c].key_len, d->values[c].offset};
  qsort(k, (size_t)n, sizeof *k, key_cmp);
  fo_status st = FO_SUCCESS;
  for (i = 1; i < n; i++) {
    if (key_cmp(&k[i - 1], &k[i]) == 0) {
      size_t at = k[i].offset > k[i - 1].offset ? k[i].offset : k[i - 1].offset;
      st = fo_fail(FO_ERR_CHECKPOINT, p->fn,
                   "malformed JSON in the header at byte %zu: duplicate key \"%.64s\"", at,
                   k[i].key);
      break;
    }
  }
  free(k);
  return st;
}

/* Link child after *last under parent. */
static void link_child(fo_json_doc *d, int64_t parent, int64_t *last, int64_t child) {
  if (*last < 0)
    d->values[parent].first = child;
  else
    d->values[*last].next = child;
  *last = child;
  d->values[parent].count++;
}

static fo_status read_object(parser *p, int64_t obj) {
  int64_t last = -1;
  p->pos++; /* '{' */
  skip_ws(p);
  if (p->pos < p->len && p->s[p->pos] == '}') {
    p->pos++;
    return FO_SUCCESS;
  }
  for (;;) {
    skip_ws(p);
    if (p->pos >= p->len || p->s[p->pos] != '"') return syntax(p, "expected a string key");
    const char *key;
    size_t key_len;
    fo_status st = read_string(p, &key, &key_len);
    if (st != FO_SUCCESS) return st;
    skip_ws(p);
    if (p->pos >= p->len || p->s[p->pos] != ':') return syntax(p, "expected ':' after a key");
    p->pos++;
    skip_ws(p);
    int64_t child;
    st = read_value(p, &child);
    if (st != FO_SUCCESS) return st;
    p->doc->values[child].key = key;
    p->doc->values[child].key_len = key_len;
    link_child(p->doc, obj, &last, child);
    skip_ws(p);
    if (p->pos < p->len && p->s[p->pos] == ',') {
      p->pos++;
      continue;
    }
    if (p->pos < p->len && p->s[p->pos] == '}') {
      p->pos++;
      return check_duplicate_keys(p, obj);
    }
    return syntax(p, "expected ',' or '}' in an object");
  }
}

static fo_status read_array(parser *p, int64_t arr) {
  int64_t last = -1;
  p->pos++; /* '[' */
  skip_ws(p);
  if (p->pos < p->len && p->s[p->pos] == ']') {
    p->pos++;
    return FO_SUCCESS;
  }
  for (;;) {
    skip_ws(p);
    int64_t child;
    fo_status st = read_value(p, &child);
    if (st != FO_SUCCESS) return st;
    link_child(p->doc, arr, &last, child);
    skip_ws(p);
    if (p->pos < p->len && p->s[p->pos] == ',') {
      p->pos++;
      continue;
    }
    if (p->pos < p->len && p->s[p->pos] == ']') {
      p->pos++;
      return FO_SUCCESS;
    }
    return syntax(p, "expected ',' or ']' in an array");
  }
}

static fo_status read_value(parser *p, int64_t *idx) {
  if (p->pos >= p->len) return syntax(p, "expected a value, found the end of the header");
  unsigned char c = p->s[p->pos];
  fo_json_type type = c == '{'                               ? FO_JSON_OBJECT
                      : c == '['                             ? FO_JSON_ARRAY
                      : c == '"'                             ? FO_JSON_STRING
                      : (c == '-' || (c >= '0' && c <= '9')) ? FO_JSON_NUMBER
                                                             : FO_JSON_NULL;
  fo_status st = new_value(p, type, idx);
  if (st != FO_SUCCESS) return st;
  int64_t i = *idx;
  switch (type) {
    case FO_JSON_OBJECT:
    case FO_JSON_ARRAY:
      if (++p->depth > FO_JSON_MAX_DEPTH) return syntax(p, "nested too deeply");
      st = type == FO_JSON_OBJECT ? read_object(p, i) : read_array(p, i);
      p->depth--;
      return st;
    case FO_JSON_STRING: {
      const char *s;
      size_t n;
      st = read_string(p, &s, &n);
      if (st == FO_SUCCESS) {
        p->doc->values[i].str = s;
        p->doc->values[i].len = n;
      }
      return st;
    }
    case FO_JSON_NUMBER: return read_number(p, &p->doc->values[i]);
    default: return read_literal(p, &p->doc->values[i]);
  }
}

/* ------------------------------------------------------------------ API */

fo_status fo_json_parse(const char *func, const char *text, size_t len, size_t base,
                        fo_json_doc *out) {
  fo_json_doc d;
  memset(&d, 0, sizeof d);
  d.strings = malloc(len + 1);
  if (!d.strings) return fo_fail(FO_ERR_OUT_OF_MEMORY, func, "no memory for the JSON header");
  parser p = {func, (const unsigned char *)text, len, 0, base, 0, &d};
  skip_ws(&p);
  int64_t root;
  fo_status st = read_value(&p, &root);
  if (st == FO_SUCCESS) {
    skip_ws(&p);
    if (p.pos != len) st = syntax(&p, "unexpected text after the top-level value");
  }
  if (st != FO_SUCCESS) {
    fo_json_free(&d);
    return st;
  }
  *out = d;
  return FO_SUCCESS;
}

void fo_json_free(fo_json_doc *doc) {
  free(doc->values);
  free(doc->strings);
  memset(doc, 0, sizeof *doc);
}

int fo_json_utf8_valid(const char *s, size_t n) {
  const unsigned char *u = (const unsigned char *)s;
  for (size_t i = 0; i < n;) {
    size_t k = utf8_len(u + i, n - i);
    if (k == 0) return 0;
    i += k;
  }
  return 1;
}

const fo_json_value *fo_json_member(const fo_json_doc *doc, const fo_json_value *obj,
                                    const char *key) {
  size_t n = strlen(key);
  for (int64_t c = obj->first; c >= 0; c = doc->values[c].next) {
    const fo_json_value *v = &doc->values[c];
    if (v->key_len == n && memcmp(v->key, key, n) == 0) return v;
  }
  return NULL;
}
