/*
 * test_checkpoint_corpus.c -- the fuzz target's committed seed corpus
 * (tests/fuzz/corpus) stays in step with the format:
 *
 *   - every valid-<config>.safetensors loads into an optimizer of that
 *     configuration (tests/fuzz/fuzz_configs.h) built through the public
 *     API, so the fuzzer starts from inputs that reach its deepest paths;
 *   - every invalid-*.safetensors is refused by fo_checkpoint_verify.
 *
 * FO_REGEN_CORPUS=1 rewrites the corpus first (after a format change):
 *   FO_REGEN_CORPUS=1 build/tests/test_checkpoint_corpus
 */
#define _POSIX_C_SOURCE 200809L

#include <criterion/criterion.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt_harness.h"
#include "fuzz/fuzz_configs.h"

#define CORPUS FO_GOLDEN_DIR "/../fuzz/corpus"

typedef struct fz_model {
  fo_optimizer *opt;
  float *p, *g; /* all tensors back to back; 16-bit dtypes use half */
} fz_model;

static void fz_create(fz_model *m, const fz_config *c, uint64_t seed) {
  fo_options o;
  fo_options_default(&o);
  fz_apply_options(c, &o);
  fo_hparams h[2];
  for (int g = 0; g < c->num_groups; g++) {
    fo_hparams_default(c->alg, &h[g]);
    fz_apply_hparams(c, g, &h[g]);
  }
  int64_t total = 0;
  for (int i = 0; i < c->num_tensors; i++) total += c->sizes[i];
  m->p = calloc((size_t)total + 1, sizeof(float));
  m->g = calloc((size_t)total + 1, sizeof(float));
  cr_assert(m->p && m->g);
  fo_tensor_desc t[FZ_MAX_TENSORS];
  size_t ps = fo_dtype_size(c->pd), gs = fo_dtype_size(c->gd);
  int64_t at = 0;
  for (int i = 0; i < c->num_tensors; i++) {
    char *p = (char *)m->p + (size_t)at * ps, *g = (char *)m->g + (size_t)at * gs;
    ck_fill(c->pd, p, c->sizes[i], seed, 0, (uint64_t)i, 1.0f);
    t[i] = (fo_tensor_desc){c->sizes[i], i % c->num_groups, p, g, c->names[i]};
    at += c->sizes[i];
  }
  CK_OK(fo_optimizer_create(&m->opt, &o, h, c->num_groups, t, c->num_tensors));
}

static void fz_destroy(fz_model *m) {
  fo_optimizer_destroy(m->opt);
  free(m->p);
  free(m->g);
}

/* ------------------------------------------------------------ regenerate */

static void seed_path(char *out, size_t cap, const char *name) {
  snprintf(out, cap, "%s/%s.safetensors", CORPUS, name);
}

static void write_valid(const fz_config *c) {
  fz_model m;
  fz_create(&m, c, 1);
  int64_t total = 0;
  for (int i = 0; i < c->num_tensors; i++) total += c->sizes[i];
  for (int s = 0; s < c->steps; s++) {
    if (total) ck_fill(c->gd, m.g, total, 5, (uint64_t)s + 1, 0, c->scaler ? 64.0f : 1.0f);
    CK_OK(fo_optimizer_step(m.opt, NULL));
  }
  char path[512], name[64];
  snprintf(name, sizeof name, "valid-%s", c->name);
  seed_path(path, sizeof path, name);
  CK_OK(fo_optimizer_save(m.opt, path, NULL));
  fz_destroy(&m);
}

static void write_seed(const char *name, const void *p, size_t n) {
  char path[512];
  seed_path(path, sizeof path, name);
  ck_write(path, p, n);
}

/* A safetensors file from a header text and n zero bytes of data. */
static void write_st(const char *name, const char *header, size_t n) {
  size_t h = strlen(header);
  unsigned char *b = calloc(8 + h + n + 1, 1);
  for (int i = 0; i < 8; i++) b[i] = (unsigned char)((uint64_t)h >> (8 * i));
  memcpy(b + 8, header, h);
  write_seed(name, b, 8 + h + n);
  free(b);
}

static char *find(unsigned char *hay, size_t n, const char *needle) {
  size_t k = strlen(needle);
  for (size_t i = 0; i + k <= n; i++)
    if (memcmp(hay + i, needle, k) == 0) return (char *)hay + i;
  return NULL;
}

/* Small invalid files, one per kind of damage, derived from the valid
 * seeds or written out. */
static void write_invalid(void) {
  char path[512];
  seed_path(path, sizeof path, "valid-adamw");
  ck_bytes v = ck_read(path);
  write_seed("invalid-truncated-data", v.p, v.n - 9);
  write_seed("invalid-truncated-header", v.p, 40);
  v.p[v.n - 1] ^= 1;
  write_seed("invalid-crc", v.p, v.n);
  v.p[v.n - 1] ^= 1;
  char *at = find(v.p, v.n, "\"fusedopt.format_version\":\"1\"");
  cr_assert_not_null(at);
  at[27] = (char)('0' + FO_CHECKPOINT_FORMAT_VERSION + 1); /* newer than any reader */
  write_seed("invalid-version", v.p, v.n);
  at[27] = '1';
  at = find(v.p, v.n, "\"fusedopt.state.step\":\"3\"");
  cr_assert_not_null(at);
  at[23] = '4';
  write_seed("invalid-metadata", v.p, v.n);
  free(v.p);
  write_seed("invalid-empty", "", 0);
  write_st("invalid-json", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},}", 4);
  write_st("invalid-overlap",
           "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
           "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
           12);
  write_st("invalid-plain",
           "{\"__metadata__\":{\"format\":\"pt\"},\"x\\u00e9\\ud83d\\ude00\":"
           "{\"dtype\":\"BF16\",\"shape\":[2,1],\"data_offsets\":[0,4]}}",
           4);
}

static void maybe_regenerate(void) {
  if (!getenv("FO_REGEN_CORPUS")) return;
  for (int k = 0; k < FZ_NUM_CONFIGS; k++) write_valid(&fz_configs[k]);
  write_invalid();
}

/* ----------------------------------------------------------------- check */

static void check_valid_seeds(void) {
  for (int k = 0; k < FZ_NUM_CONFIGS; k++) {
    char path[512], name[64];
    snprintf(name, sizeof name, "valid-%s", fz_configs[k].name);
    seed_path(path, sizeof path, name);
    fz_model m;
    fz_create(&m, &fz_configs[k], 2);
    fo_status st = fo_optimizer_load(m.opt, path, NULL);
    cr_expect_eq(st, FO_SUCCESS, "%s: %s (regenerate with FO_REGEN_CORPUS=1 after a format change)",
                 name, fo_last_error());
    fo_step_info info;
    CK_OK(fo_optimizer_get_info(m.opt, &info));
    cr_expect_gt(info.step, 0, "%s: the seed holds steps", name);
    fz_destroy(&m);
  }
}

static void check_invalid_seeds(void) {
  DIR *d = opendir(CORPUS);
  cr_assert_not_null(d, "%s", CORPUS);
  int n = 0;
  for (struct dirent *e; (e = readdir(d));) {
    if (strncmp(e->d_name, "invalid-", 8) != 0) continue;
    char path[768];
    snprintf(path, sizeof path, "%s/%s", CORPUS, e->d_name);
    fo_status st = fo_checkpoint_verify(path);
    cr_expect_eq(st, FO_ERR_CHECKPOINT, "%s: %s", e->d_name, fo_status_string(st));
    n++;
  }
  closedir(d);
  cr_expect_geq(n, 8, "the corpus holds its invalid seeds");
}

/* One test, so that a regeneration finishes before either check reads. */
Test(corpus, seeds_match_the_format) {
  maybe_regenerate();
  check_valid_seeds();
  check_invalid_seeds();
}
