/*
 * train_data.c -- the 8x8 digits: reading the CSV through zlib, checking
 * every field, the seeded train/validation split, and the random numbers.
 *
 * Each line of the file is 64 pixel counts (integers 0..16, an 8x8 image
 * read row by row) and the digit (0..9).  Pixels are scaled to [0, 1].
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "train.h"

#define MAX_PIXEL 16

/* ------------------------------------------------------------ random */

uint64_t rng_next(uint64_t *state) {
  uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static double rng_uniform_open(uint64_t *state) { /* in (0, 1) */
  return ((double)(rng_next(state) >> 11) + 0.5) * 0x1.0p-53;
}

float rng_normal(uint64_t *state) { /* Box-Muller */
  double u = rng_uniform_open(state), v = rng_uniform_open(state);
  return (float)(sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v));
}

void shuffle_ints(int *v, int n, uint64_t *state) {
  for (int i = n - 1; i > 0; i--) {
    int j = (int)(rng_next(state) % (uint64_t)(i + 1));
    int t = v[i];
    v[i] = v[j];
    v[j] = t;
  }
}

/* ----------------------------------------------------------- reading */

#define MAX_FILE_BYTES (64u << 20)

/* Reads everything gz gives (at most MAX_FILE_BYTES) into a malloc'ed
 * buffer; 0, or 1 after printing why. */
static int slurp(gzFile gz, const char *path, char **out, size_t *out_len) {
  size_t cap = 1u << 20, len = 0;
  char *buf = malloc(cap + 1);
  int got = 0;
  while (buf && (got = gzread(gz, buf + len, (unsigned)(cap - len))) > 0) {
    len += (size_t)got;
    if (len < cap) continue;
    if (cap >= MAX_FILE_BYTES) break;
    char *bigger = realloc(buf, 2 * cap + 1);
    if (!bigger) {
      free(buf);
      buf = NULL;
      break;
    }
    buf = bigger;
    cap *= 2;
  }
  if (!buf) {
    fprintf(stderr, "train: out of memory reading '%s'\n", path);
    return 1;
  }
  int err = Z_OK;
  const char *msg = gzerror(gz, &err);
  if (got < 0 || err != Z_OK || len == cap) {
    if (err == Z_BUF_ERROR) /* zlib's word for a gzip stream cut short */
      fprintf(stderr, "train: the data file '%s' ends in the middle of its gzip stream\n", path);
    else if (got < 0 || err != Z_OK)
      fprintf(stderr, "train: cannot read the data file '%s': %s\n", path, msg);
    else
      fprintf(stderr, "train: the data file '%s' is larger than %u MiB\n", path,
              MAX_FILE_BYTES >> 20);
    free(buf);
    return 1;
  }
  buf[len] = '\0';
  *out = buf;
  *out_len = len;
  return 0;
}

/* The whole file, decompressed when it is gzip (zlib reads plain text as
 * it is), NUL-terminated, into *out (malloc'ed). */
static int read_whole_file(const char *path, char **out) {
  int fd = open(path, O_RDONLY);
  struct stat st;
  if (fd >= 0 && fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
    close(fd);
    fd = -1;
    errno = EISDIR;
  }
  if (fd < 0) {
    fprintf(stderr, "train: cannot open the data file '%s': %s (--data PATH)\n", path,
            strerror(errno));
    return 1;
  }
  gzFile gz = gzdopen(fd, "rb");
  if (!gz) {
    close(fd);
    fprintf(stderr, "train: out of memory reading '%s'\n", path);
    return 1;
  }
  size_t len;
  int rc = slurp(gz, path, out, &len);
  gzclose(gz);
  if (!rc && strlen(*out) != len) {
    fprintf(stderr, "train: the data file '%s' holds binary data, not CSV text\n", path);
    free(*out);
    rc = 1;
  }
  return rc;
}

static int data_error(const char *path, long line, const char *what) {
  fprintf(stderr, "train: %s line %ld: %s\n", path, line, what);
  return 1;
}

/* One integer field in [0, max] ending at a ',' (or the end of the line
 * when last). */
static int parse_field(const char **s, int max, int last, int *out) {
  const char *p = *s;
  if (*p < '0' || *p > '9') return 1;
  long v = 0;
  while (*p >= '0' && *p <= '9' && v <= max) v = v * 10 + (*p++ - '0');
  if (v > max || (last ? *p != '\0' : *p != ',')) return 1;
  *out = (int)v;
  *s = last ? p : p + 1;
  return 0;
}

static int parse_row(const char *path, long line_no, const char *line, float *x, int *y) {
  const char *s = line;
  for (int j = 0; j < TRAIN_FEATURES; j++) {
    int v;
    if (parse_field(&s, MAX_PIXEL, 0, &v)) {
      char msg[160];
      snprintf(msg, sizeof msg,
               "field %d is not a pixel count 0..16 followed by a comma "
               "(want 64 pixels and a label per line)",
               j + 1);
      return data_error(path, line_no, msg);
    }
    x[j] = (float)v / MAX_PIXEL;
  }
  if (parse_field(&s, TRAIN_CLASSES - 1, 1, y))
    return data_error(path, line_no, "field 65 is not a label 0..9 ending the line");
  return 0;
}

static int grow(dataset *d, int *cap) {
  int c = *cap ? 2 * *cap : 2048;
  float *x = realloc(d->x, (size_t)c * TRAIN_FEATURES * sizeof *x);
  if (x) d->x = x;
  int *y = realloc(d->y, (size_t)c * sizeof *y);
  if (y) d->y = y;
  if (!x || !y) {
    fprintf(stderr, "train: out of memory reading the data\n");
    return 1;
  }
  *cap = c;
  return 0;
}

/* Splits text into lines in place (CRLF or LF) and parses each non-blank
 * one. */
static int parse_rows(const char *path, char *text, dataset *d) {
  int cap = 0;
  long line_no = 0;
  for (char *line = text; *line;) {
    char *nl = strchr(line, '\n'), *next = nl ? nl + 1 : line + strlen(line);
    if (nl) *nl = '\0';
    size_t len = strlen(line);
    if (len && line[len - 1] == '\r') line[len - 1] = '\0';
    line_no++;
    if (line[0]) {
      if (d->n == cap && grow(d, &cap)) return 1;
      if (parse_row(path, line_no, line, d->x + (size_t)d->n * TRAIN_FEATURES, &d->y[d->n]))
        return 1;
      d->n++;
    }
    line = next;
  }
  return 0;
}

int load_digits(const char *path, dataset *out) {
  char *text;
  memset(out, 0, sizeof *out);
  if (read_whole_file(path, &text)) return 1;
  int rc = parse_rows(path, text, out);
  free(text);
  if (!rc && out->n < 2) {
    fprintf(stderr, "train: '%s' holds %d rows; the digits data set has 1797\n", path, out->n);
    rc = 1;
  }
  if (rc) dataset_free(out);
  return rc;
}

void dataset_free(dataset *d) {
  free(d->x);
  free(d->y);
  memset(d, 0, sizeof *d);
}

/* ------------------------------------------------------------- split */

static int alloc_dataset(dataset *d, int n) {
  d->n = n;
  d->x = malloc((size_t)n * TRAIN_FEATURES * sizeof *d->x);
  d->y = malloc((size_t)n * sizeof *d->y);
  return !d->x || !d->y;
}

static void copy_rows(const dataset *src, const int *order, dataset *dst) {
  for (int i = 0; i < dst->n; i++) {
    memcpy(dst->x + (size_t)i * TRAIN_FEATURES, src->x + (size_t)order[i] * TRAIN_FEATURES,
           TRAIN_FEATURES * sizeof *dst->x);
    dst->y[i] = src->y[order[i]];
  }
}

int split_dataset(const dataset *all, double val_frac, uint64_t seed, data_split *out) {
  memset(out, 0, sizeof *out);
  int n_val = (int)lround(all->n * val_frac);
  if (n_val < 1) n_val = 1;
  if (n_val > all->n - 1) n_val = all->n - 1;
  int *order = malloc((size_t)all->n * sizeof *order);
  if (!order || alloc_dataset(&out->train, all->n - n_val) || alloc_dataset(&out->val, n_val)) {
    free(order);
    dataset_free(&out->train);
    dataset_free(&out->val);
    fprintf(stderr, "train: out of memory splitting the data\n");
    return 1;
  }
  for (int i = 0; i < all->n; i++) order[i] = i;
  uint64_t state = seed ^ 0x5eed5eed5eed5eedull;
  shuffle_ints(order, all->n, &state);
  copy_rows(all, order, &out->train);
  copy_rows(all, order + out->train.n, &out->val);
  free(order);
  return 0;
}
