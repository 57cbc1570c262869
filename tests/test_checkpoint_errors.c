/*
 * test_checkpoint_errors.c -- bad checkpoint files get clear errors and
 * change nothing.
 *
 * Every case loads a bad file into an optimizer that has taken steps, and
 * checks: the status (FO_ERR_IO for the OS's failures, FO_ERR_CHECKPOINT
 * for content), a message that says what is wrong, and that the
 * optimizer's parameters, state buffers, step state and hyper-parameters
 * are bit-identical to before (and that it is not faulted).  The cases:
 *
 *   - the OS: a missing file, a directory;
 *   - the container: empty, shorter than the length field, truncated in
 *     the header or in the data, a foreign file (wrong magic), a header
 *     length past the end or past safetensors' limit, a header that is not
 *     an object, eleven kinds of malformed JSON, offsets out of range,
 *     overlapping, leaving a hole or trailing bytes, a size that does not
 *     match dtype x shape, an unknown dtype, a bad shape, non-string
 *     metadata;
 *   - fusedopt's layer: a plain safetensors file, a newer format version,
 *     edited metadata (checksum), corrupt tensor data (checksum), a
 *     tensor's dtype or shape edited in the header, metadata values that
 *     are missing or malformed or invalid (re-signed, so the value check
 *     itself is reached);
 *   - a valid file that does not fit: another algorithm, parameter dtype,
 *     master weights, loss scaling, number of groups or tensors, tensor
 *     names or sizes, AMSGrad state, and a scaler state this optimizer's
 *     options cannot continue.
 * All the messages are distinct.
 */
#define _POSIX_C_SOURCE 200809L

#include <criterion/criterion.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checkpoint_format.h" /* fo_st_parse and fo_crc32, to re-sign edits */
#include "ckpt_harness.h"

static const ck_cfg base_cfg = {.label = "adamw-bf16",
                                .alg = FO_ALG_ADAMW,
                                .pd = FO_DTYPE_BF16,
                                .gd = FO_DTYPE_BF16,
                                .master = 1,
                                .amsgrad = 1,
                                .scaler = 1,
                                .sched = 1,
                                .storage = FO_STORAGE_EXTERNAL,
                                .exec = FO_EXEC_CPU};

/* ---------------------------------------------------------------- files */

/* A safetensors file from a header text and data. */
static ck_bytes st_file(const char *header, const void *data, size_t n) {
  size_t h = strlen(header);
  ck_bytes b = {malloc(8 + h + n + 1), 8 + h + n};
  cr_assert_not_null(b.p);
  for (int i = 0; i < 8; i++) b.p[i] = (unsigned char)((uint64_t)h >> (8 * i));
  memcpy(b.p + 8, header, h);
  if (n) memcpy(b.p + 8 + h, data, n);
  return b;
}

static uint64_t header_len(const ck_bytes *b) {
  uint64_t n = 0;
  for (int i = 7; i >= 0; i--) n = n << 8 | b->p[i];
  return n;
}

/* Replace the first occurrence of old in the header by new (lengths may
 * differ: the length field is rewritten). */
static ck_bytes edit_header(const ck_bytes *b, const char *old, const char *new_text) {
  uint64_t h = header_len(b);
  char *hdr = malloc(h + 1);
  memcpy(hdr, b->p + 8, h);
  hdr[h] = '\0';
  char *at = strstr(hdr, old);
  cr_assert_not_null(at, "the header has no \"%s\"", old);
  size_t pre = (size_t)(at - hdr), no = strlen(old), nn = strlen(new_text);
  size_t h2 = h - no + nn, data = b->n - 8 - h;
  ck_bytes out = {malloc(8 + h2 + data + 1), 8 + h2 + data};
  for (int i = 0; i < 8; i++) out.p[i] = (unsigned char)((uint64_t)h2 >> (8 * i));
  memcpy(out.p + 8, hdr, pre);
  memcpy(out.p + 8 + pre, new_text, nn);
  memcpy(out.p + 8 + pre + nn, at + no, h - pre - no);
  memcpy(out.p + 8 + h2, b->p + 8 + h, data);
  free(hdr);
  return out;
}

/* Recompute fusedopt.metadata_crc32 after an edit, the way the format
 * defines it (written here from docs/reliability.md, not shared with the
 * library): CRC-32 over the sorted fusedopt.* entries but itself, each as
 * key NUL value NUL. */
static ck_bytes resign(const ck_bytes *b) {
  fo_st_file f;
  cr_assert_eq(fo_st_parse("test", b->p, b->n, &f), FO_SUCCESS, "%s", fo_last_error());
  fo_crc32 c;
  fo_crc32_init(&c);
  uint32_t crc = 0;
  char old[64] = "";
  for (int64_t i = 0; i < f.num_meta; i++) {
    const fo_st_meta *m = &f.meta[i];
    if (strncmp(m->key, "fusedopt.", 9) != 0) continue;
    if (strcmp(m->key, "fusedopt.metadata_crc32") == 0) {
      snprintf(old, sizeof old, "\"fusedopt.metadata_crc32\":\"%s\"", m->value);
      continue;
    }
    crc = fo_crc32_update(&c, crc, m->key, m->key_len + 1);
    crc = fo_crc32_update(&c, crc, m->value, m->value_len + 1);
  }
  fo_st_free(&f);
  char now[64];
  snprintf(now, sizeof now, "\"fusedopt.metadata_crc32\":\"%08x\"", (unsigned)crc);
  return edit_header(b, old, now);
}

/* -------------------------------------------------------------- fixture */

typedef struct fixture {
  ck_dir dir;
  char good[128], bad[128];
  ck_bytes file; /* the good checkpoint's bytes */
  ck_model m;    /* the optimizer the bad files are loaded into */
  ck_snap before;
} fixture;

/* A checkpoint after 5 steps, and an optimizer 3 steps further on (so a
 * load that wrote anything would show). */
static void fixture_open(fixture *fx, const ck_cfg *c) {
  ck_dir_make(&fx->dir);
  ck_dir_file(&fx->dir, "good.safetensors", fx->good, sizeof fx->good);
  ck_dir_file(&fx->dir, "bad.safetensors", fx->bad, sizeof fx->bad);
  ck_model_create(&fx->m, c, 1);
  for (int s = 0; s < 5; s++) ck_step(&fx->m, s);
  CK_OK(fo_optimizer_save(fx->m.opt, fx->good, NULL));
  for (int s = 5; s < 8; s++) ck_step(&fx->m, s);
  fx->file = ck_read(fx->good);
  ck_snapshot(&fx->m, &fx->before);
}

static void fixture_close(fixture *fx) {
  ck_snap_free(&fx->before);
  ck_model_destroy(&fx->m);
  free(fx->file.p);
  ck_dir_remove(&fx->dir);
}

/* Load path; expect status and a message holding want; nothing changed.
 * Returns the message (static storage of the last few calls). */
static const char *expect_refused_path(fixture *fx, const char *path, fo_status status,
                                       const char *want, const char *label) {
  static char kept[64][400];
  static int next;
  fo_status st = fo_optimizer_load(fx->m.opt, path, NULL);
  char *msg = kept[next++ % 64]; /* a copy: the snapshot below makes failing probes */
  snprintf(msg, 400, "%s", fo_last_error());
  cr_expect_eq(st, status, "%s: status %s, expected %s (%s)", label, fo_status_string(st),
               fo_status_string(status), msg);
  cr_expect_not_null(strstr(msg, want), "%s: message \"%s\" lacks \"%s\"", label, msg, want);
  if (getenv("FO_CKPT_PRINT")) printf("%-28s %s\n", label, msg);
  cr_expect_not_null(strstr(msg, "fo_optimizer_load: "), "%s: %s", label, msg);
  ck_snap after;
  ck_snapshot(&fx->m, &after);
  char what[128];
  snprintf(what, sizeof what, "%s: state after the failed load", label);
  ck_snap_expect_equal(&fx->before, &after, what);
  ck_snap_free(&after);
  fo_status fault;
  CK_OK(fo_optimizer_get_fault(fx->m.opt, &fault, NULL, 0));
  cr_expect_eq(fault, FO_SUCCESS, "%s: a bad file must not fault the optimizer", label);
  return msg;
}

static const char *expect_refused(fixture *fx, ck_bytes b, const char *want, const char *label) {
  ck_write(fx->bad, b.p, b.n);
  free(b.p);
  return expect_refused_path(fx, fx->bad, FO_ERR_CHECKPOINT, want, label);
}

/* fo_checkpoint_verify on file b: want, and on failure a message holding
 * msg. */
static void expect_verify(fixture *fx, ck_bytes b, fo_status want, const char *msg,
                          const char *label) {
  ck_write(fx->bad, b.p, b.n);
  free(b.p);
  fo_status st = fo_checkpoint_verify(fx->bad);
  cr_expect_eq(st, want, "verify, %s: %s, expected %s (%s)", label, fo_status_string(st),
               fo_status_string(want), fo_last_error());
  if (want != FO_SUCCESS)
    cr_expect_not_null(strstr(fo_last_error(), msg), "verify, %s: \"%s\" lacks \"%s\"", label,
                       fo_last_error(), msg);
}

static ck_bytes copy_of(const ck_bytes *b) {
  ck_bytes c = {malloc(b->n + 1), b->n};
  memcpy(c.p, b->p, b->n);
  return c;
}

/* ------------------------------------------------------------ the OS */

Test(errors, missing_file_and_directory_are_io_errors) {
  fixture fx;
  fixture_open(&fx, &base_cfg);
  char missing[160];
  ck_dir_file(&fx.dir, "nope.safetensors", missing, sizeof missing);
  expect_refused_path(&fx, missing, FO_ERR_IO, "No such file or directory", "missing file");
  expect_refused_path(&fx, fx.dir.path, FO_ERR_IO, "Is a directory", "a directory");
  cr_expect_eq(fo_checkpoint_verify(missing), FO_ERR_IO);
  fixture_close(&fx);
}

/* ------------------------------------------------------ the container */

typedef struct json_case {
  const char *label, *header, *want;
} json_case;

Test(errors, container) {
  fixture fx;
  fixture_open(&fx, &base_cfg);
  const ck_bytes *g = &fx.file;
  uint64_t h = header_len(g);
  const char *msgs[32];
  int n = 0;

  msgs[n++] = expect_refused(&fx, (ck_bytes){malloc(1), 0}, "truncated: the file has 0 bytes",
                             "empty file");
  ck_bytes seven = copy_of(g);
  seven.n = 7;
  msgs[n++] = expect_refused(&fx, seven, "fewer than the 8-byte header length", "7 bytes");
  ck_bytes cut_header = copy_of(g);
  cut_header.n = 8 + h / 2;
  msgs[n++] = expect_refused(&fx, cut_header, "runs past the end of the file", "cut in the header");
  ck_bytes cut_data = copy_of(g);
  cut_data.n -= 100;
  msgs[n++] = expect_refused(&fx, cut_data, "truncated: the header describes", "cut in the data");
  static const unsigned char png[] =
      "\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x10\0\0\0\x10\x08\x06\0\0\0";
  ck_bytes foreign = {malloc(sizeof png), sizeof png};
  memcpy(foreign.p, png, sizeof png);
  expect_refused(&fx, foreign, "runs past the end of the file", "a PNG file (wrong magic)");
  ck_bytes past = copy_of(g);
  uint64_t too_long = past.n - 7;
  for (int i = 0; i < 8; i++) past.p[i] = (unsigned char)(too_long >> (8 * i));
  expect_refused(&fx, past, "runs past the end of the file", "header length past the end");
  msgs[n++] = expect_refused(&fx, st_file("[1, 2, 3]", NULL, 0), "does not start with '{'",
                             "header not an object");
  msgs[n++] = expect_refused(&fx, st_file("{}  x", NULL, 0),
                             "unexpected text after the top-level value", "text after the object");
  cr_assert_lt(n, 32);
  for (int i = 0; i < n; i++)
    for (int j = 0; j < i; j++)
      cr_expect_str_neq(msgs[i], msgs[j], "cases %d and %d share a message", i, j);
  fixture_close(&fx);
}

Test(errors, header_length_past_safetensors_limit) {
  fixture fx;
  fixture_open(&fx, &base_cfg);
  /* a sparse file of 100 MB + 9 bytes whose length field says 100 MB + 1 */
  int fd = open(fx.bad, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  cr_assert_geq(fd, 0);
  uint64_t n = 100000001;
  unsigned char len8[8];
  for (int i = 0; i < 8; i++) len8[i] = (unsigned char)(n >> (8 * i));
  cr_assert_eq(write(fd, len8, 8), 8);
  cr_assert_eq(ftruncate(fd, (off_t)(8 + n)), 0);
  close(fd);
  expect_refused_path(&fx, fx.bad, FO_ERR_CHECKPOINT, "exceeds safetensors' limit", "huge header");
  fixture_close(&fx);
}

Test(errors, malformed_json) {
  fixture fx;
  fixture_open(&fx, &base_cfg);
  char deep[200];
  memset(deep, '[', 100);
  strcpy(deep + 100, "]");
  char deep_obj[220] = "{\"a\":";
  strcat(deep_obj, deep);
  strcat(deep_obj, "}");
  const json_case cases[] = {
      {"trailing comma", "{\"a\":1,}", "expected a string key"},
      {"missing colon", "{\"a\" 1}", "expected ':' after a key"},
      {"missing comma", "{\"a\":1 \"b\":2}", "expected ',' or '}' in an object"},
      {"unterminated string", "{\"a", "unterminated string"},
      {"unknown escape", "{\"\\q\":1}", "unknown escape"},
      {"short \\u", "{\"\\u12\":1}", "four hex digits"},
      {"lone low surrogate", "{\"\\udc00\":1}", "lone low surrogate"},
      {"unpaired high surrogate", "{\"\\ud800x\":1}", "without its low half"},
      {"invalid UTF-8", "{\"\xc3\x28\":1}", "invalid UTF-8"},
      {"overlong UTF-8", "{\"\xc0\xaf\":1}", "invalid UTF-8"},
      {"UTF-16 surrogate in UTF-8", "{\"\xed\xa0\x80\":1}", "invalid UTF-8"},
      {"raw control character", "{\"a\tb\":1}", "raw control character"},
      {"leading zero", "{\"a\":01}", "leading zero"},
      {"bare minus", "{\"a\":-}", "a number needs a digit"},
      {"empty fraction", "{\"a\":1.}", "a fraction needs a digit"},
      {"empty exponent", "{\"a\":1e}", "an exponent needs a digit"},
      {"bad literal", "{\"a\":nul}", "expected a value"},
      {"single quotes", "{'a':1}", "expected a string key"},
      {"comment", "{/* x */}", "expected a string key"},
      {"unclosed array", "{\"a\":[1,2", "expected ',' or ']'"},
      {"nested too deeply", deep_obj, "nested too deeply"},
      {"duplicate key", "{\"a\":1,\"b\":2,\"a\":3}", "duplicate key \"a\""},
  };
  const char *msgs[sizeof cases / sizeof cases[0]];
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    msgs[i] = expect_refused(&fx, st_file(cases[i].header, NULL, 0), cases[i].want, cases[i].label);
    cr_expect_not_null(strstr(msgs[i], "malformed JSON in the header at byte "), "%s", msgs[i]);
  }
  fixture_close(&fx);
}

Test(errors, layout) {
  fixture fx;
  fixture_open(&fx, &base_cfg);
  unsigned char data[64] = {0};
  const struct {
    const char *label, *header;
    size_t n;
    const char *want;
  } cases[] = {
      {"out of range",
       "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
       "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[100,108]}}",
       16, "lie outside the data section"},
      {"overlap",
       "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
       "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
       12, "overlap"},
      {"hole",
       "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
       "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]}}",
       20, "belong to no tensor"},
      {"trailing bytes", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 12,
       "follow the last tensor"},
      {"size mismatch", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4,
       "span 4 bytes; its dtype and shape need 8"},
      {"reversed offsets", "{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,0]}}", 8,
       "end before they begin"},
      {"unknown dtype", "{\"a\":{\"dtype\":\"F17\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
       "unknown dtype \"F17\""},
      {"negative dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8,
       "\"shape\" holds something other than a non-negative integer"},
      {"huge shape",
       "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],"
       "\"data_offsets\":[0,8]}}",
       8, "exceeds 2^62"},
      {"offsets not integers", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8.0]}}",
       8, "must be two non-negative integers"},
      {"three offsets", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4,8]}}", 8,
       "not an array of two integers"},
      {"missing dtype", "{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
       "\"dtype\" is missing"},
      {"extra field", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],\"x\":1}}", 8,
       "unknown field \"x\""},
      {"entry not an object", "{\"a\":[1]}", 0, "the entry is not an object"},
      {"metadata not strings", "{\"__metadata__\":{\"k\":1}}", 0, "is not a string"},
      {"metadata not an object", "{\"__metadata__\":\"x\"}", 0,
       "\"__metadata__\" is not an object"},
  };
  const char *msgs[sizeof cases / sizeof cases[0]];
  size_t nc = sizeof cases / sizeof cases[0];
  for (size_t i = 0; i < nc; i++)
    msgs[i] = expect_refused(&fx, st_file(cases[i].header, data, cases[i].n), cases[i].want,
                             cases[i].label);
  for (size_t i = 0; i < nc; i++)
    for (size_t j = 0; j < i; j++)
      cr_expect_str_neq(msgs[i], msgs[j], "%s / %s", cases[i].label, cases[j].label);
  fixture_close(&fx);
}

/* ----------------------------------------------------- fusedopt's layer */

Test(errors, fusedopt_layer) {
  fixture fx;
  fixture_open(&fx, &base_cfg);
  const ck_bytes *g = &fx.file;
  unsigned char four[4] = {0};

  expect_refused(
      &fx, st_file("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", four, 4),
      "not a fusedopt checkpoint", "plain safetensors");
  expect_refused(
      &fx, edit_header(g, "\"fusedopt.format_version\":\"1\"", "\"fusedopt.format_version\":\"3\""),
      "format version 3 is newer than this library reads (2)", "newer version");
  expect_refused(
      &fx,
      edit_header(g, "\"fusedopt.format_version\":\"1\"", "\"fusedopt.format_version\":\"one\""),
      "\"fusedopt.format_version\" = \"one\" is not a positive integer", "bad version");
  /* an edited value without re-signing: the metadata checksum */
  expect_refused(&fx,
                 edit_header(g, "\"fusedopt.state.step\":\"4\"", "\"fusedopt.state.step\":\"5\""),
                 "metadata checksum mismatch", "edited step count");
  expect_refused(
      &fx, edit_header(g, "\"fusedopt.metadata_crc32\":\"", "\"fusedopt.metadata_crc32x\":\""),
      "the metadata lacks \"fusedopt.metadata_crc32\"", "no metadata checksum");
  /* a flipped byte in the data: that tensor's checksum */
  ck_bytes flip = copy_of(g);
  flip.p[flip.n - 3] ^= 0x10;
  expect_refused(&fx, flip, "checksum mismatch (stored", "corrupt data");
  /* tensor entries are outside the metadata checksum, but checked against
   * the optimizer */
  expect_refused(
      &fx,
      edit_header(g, "\"fc1.weight\":{\"dtype\":\"BF16\"", "\"fc1.weight\":{\"dtype\":\"F16\""),
      "tensor \"fc1.weight\" has dtype F16 in the checkpoint; this optimizer holds it as BF16",
      "dtype edited");
  expect_refused(&fx,
                 edit_header(g, "\"fc1.weight.exp_avg\":{\"dtype\":\"F32\",\"shape\":[1000]",
                             "\"fc1.weight.exp_avg\":{\"dtype\":\"F32\",\"shape\":[10,100]"),
                 "has shape [10, 100] in the checkpoint; the registered tensor 2 has shape [1000]",
                 "shape edited");
  expect_refused(&fx,
                 edit_header(g, "\"fc1.weight.exp_avg\":{\"dtype\":\"F32\"",
                             "\"fc1.weight.exp_avg\":{\"dtype\":\"I32\""),
                 "has dtype I32 in the checkpoint", "state dtype edited to I32");
  /* verify, without an optimizer, sees what fusedopt never writes: another
   * dtype family or more than one dimension; BF16 for F16 only a load can
   * tell (the header says so) */
  expect_verify(&fx, copy_of(g), FO_SUCCESS, NULL, "the file as saved");
  expect_verify(&fx,
                edit_header(g, "\"fc1.weight.exp_avg\":{\"dtype\":\"F32\"",
                            "\"fc1.weight.exp_avg\":{\"dtype\":\"I32\""),
                FO_ERR_CHECKPOINT, "\"fc1.weight.exp_avg\" has dtype I32; fusedopt writes only",
                "I32");
  expect_verify(&fx,
                edit_header(g, "\"fc1.weight.exp_avg\":{\"dtype\":\"F32\",\"shape\":[1000]",
                            "\"fc1.weight.exp_avg\":{\"dtype\":\"F32\",\"shape\":[10,100]"),
                FO_ERR_CHECKPOINT, "has shape [10, 100]; fusedopt writes only 1-D arrays", "2-D");
  expect_verify(
      &fx,
      edit_header(g, "\"fc1.weight\":{\"dtype\":\"BF16\"", "\"fc1.weight\":{\"dtype\":\"F16\""),
      FO_SUCCESS, NULL, "BF16 edited to F16");
  fixture_close(&fx);
}

/* Metadata values that are missing, malformed or invalid, re-signed so the
 * checks behind the checksum are reached. */
Test(errors, metadata_values) {
  fixture fx;
  fixture_open(&fx, &base_cfg);
  const ck_bytes *g = &fx.file;
  const struct {
    const char *label, *old, *new_text, *want;
  } cases[] = {
      {"lr not hex", "\"fusedopt.group.0.lr\":\"", "\"fusedopt.group.0.lr\":\"0.001\",\"x\":\"",
       "is not an exact float32 in hexadecimal"},
      {"lr missing", "\"fusedopt.group.0.lr\":\"", "\"fusedopt.group.0.lrx\":\"",
       "the metadata lacks \"fusedopt.group.0.lr\""},
      {"lr negative", "\"fusedopt.group.0.lr\":\"", "\"fusedopt.group.0.lr\":\"-",
       "hyper-parameters are invalid (hparams[0].lr = -0.0213 is negative)"},
      {"beta1 = 1", "\"fusedopt.group.1.beta1\":\"",
       "\"fusedopt.group.1.beta1\":\"0x1p+0\",\"y\":\"", "beta1 = 1 and beta2"},
      {"amsgrad 2", "\"fusedopt.group.0.amsgrad\":\"1\"", "\"fusedopt.group.0.amsgrad\":\"2\"",
       "\"fusedopt.group.0.amsgrad\" = \"2\" is not in [0, 1]"},
      {"step not a number", "\"fusedopt.state.step\":\"4\"", "\"fusedopt.state.step\":\"04\"",
       "is not a decimal integer"},
      {"negative step", "\"fusedopt.state.step\":\"4\"", "\"fusedopt.state.step\":\"-4\"",
       "\"fusedopt.state.step\" = \"-4\" is not in [0, "},
      {"step past FO_MAX_STEP", "\"fusedopt.state.step\":\"4\"",
       "\"fusedopt.state.step\":\"4611686018427387905\"",
       "\"fusedopt.state.step\" = \"4611686018427387905\" is not in [0, 4611686018427387904]"},
      {"skipped count INT64_MAX", "\"fusedopt.state.skipped\":\"",
       "\"fusedopt.state.skipped\":\"9223372036854775807\",\"w\":\"",
       "\"fusedopt.state.skipped\" = \"9223372036854775807\" is not in [0, 4611686018427387904]"},
      {"zero scale", "\"fusedopt.state.scale\":\"", "\"fusedopt.state.scale\":\"0x0p+0\",\"z\":\"",
       "loss scale 0 is not finite and at least FO_LOSS_SCALE_MIN"},
      {"subnormal scale", "\"fusedopt.state.scale\":\"",
       "\"fusedopt.state.scale\":\"0x1p-127\",\"z\":\"",
       "loss scale 5.87747e-39 is not finite and at least FO_LOSS_SCALE_MIN"},
      {"not exact", "\"fusedopt.state.grad_coef\":\"",
       "\"fusedopt.state.grad_coef\":\"0x1.0000000001p+0\",\"z\":\"",
       "\"fusedopt.state.grad_coef\" = \"0x1.0000000001p+0\" is not an exact float32"},
      {"algorithm unknown", "\"fusedopt.algorithm\":\"adamw\"",
       "\"fusedopt.algorithm\":\"adabelief\"",
       "\"fusedopt.algorithm\" = \"adabelief\" is not a known name"},
      {"tensor checksum missing", "\"fusedopt.crc32.fc1.bias\":", "\"fusedopt.crc32.fc1.biax\":",
       "the metadata lacks the checksum of tensor \"fc1.bias\""},
      {"tensor checksum not hex", "\"fusedopt.crc32.fc1.bias\":\"",
       "\"fusedopt.crc32.fc1.bias\":\"g", "\"fusedopt.crc32.fc1.bias\" = \"g"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    ck_bytes e = edit_header(g, cases[i].old, cases[i].new_text);
    ck_bytes s = resign(&e);
    free(e.p);
    expect_refused(&fx, s, cases[i].want, cases[i].label);
  }
  fixture_close(&fx);
}

/* ------------------------------------------------ valid but not fitting */

/* Save from an optimizer of config a; load into one of config b. */
static void expect_misfit(const ck_cfg *a, const ck_cfg *b, const char *want, const char *label) {
  fixture fx;
  fixture_open(&fx, b);
  ck_model other;
  ck_model_create(&other, a, 5);
  for (int s = 10; s < 15; s++) ck_step(&other, s); /* five clean steps */
  CK_OK(fo_optimizer_save(other.opt, fx.bad, NULL));
  ck_model_destroy(&other);
  expect_refused_path(&fx, fx.bad, FO_ERR_CHECKPOINT, want, label);
  fixture_close(&fx);
}

Test(misfit, other_algorithm_dtype_master_scaler) {
  ck_cfg c = base_cfg;
  c.alg = FO_ALG_LION;
  c.amsgrad = 0;
  expect_misfit(&c, &base_cfg, "the checkpoint holds lion state; this optimizer runs adamw",
                "algorithm");
  c = base_cfg;
  c.pd = FO_DTYPE_F16;
  expect_misfit(&c, &base_cfg, "the checkpoint's parameters are f16; this optimizer's are bf16",
                "param dtype");
  c = base_cfg;
  c.master = 0;
  expect_misfit(&c, &base_cfg,
                "the checkpoint has no fp32 master weights; this optimizer keeps them",
                "no master");
  expect_misfit(&base_cfg, &c, "the checkpoint has fp32 master weights; this optimizer keeps none",
                "master");
  c = base_cfg;
  c.scaler = 0;
  expect_misfit(&c, &base_cfg, "the checkpoint has loss_scaler.enabled = 0; this optimizer has 1",
                "scaler");
  c = base_cfg;
  c.master = 0;
  c.sr = 1;
  ck_cfg d = c;
  d.sr = 0;
  expect_misfit(&c, &d, "the checkpoint has stochastic_rounding = 1; this optimizer has 0",
                "rounding");
}

Test(misfit, amsgrad_state) {
  ck_cfg plain = base_cfg;
  plain.amsgrad = 0;
  expect_misfit(
      &base_cfg, &plain,
      "group 0 uses AMSGrad in the checkpoint; this optimizer was created without its state",
      "AMSGrad in the file");
  expect_misfit(&plain, &base_cfg, "the checkpoint has no tensor \"embed.weight.max_exp_avg_sq\"",
                "AMSGrad in the optimizer");
}

/* A file whose groups no longer use AMSGrad but which still holds the
 * buffers (set_hparams switched it off): extra tensors for an optimizer
 * created without them. */
Test(misfit, unexpected_tensor) {
  fixture fx;
  ck_cfg plain = base_cfg;
  plain.amsgrad = 0;
  fixture_open(&fx, &plain);
  ck_model other;
  ck_model_create(&other, &base_cfg, 5);
  for (int g = 0; g < 2; g++) {
    fo_hparams h;
    CK_OK(fo_optimizer_get_hparams(other.opt, g, &h));
    h.amsgrad = 0;
    CK_OK(fo_optimizer_set_hparams(other.opt, g, &h));
  }
  CK_OK(fo_optimizer_save(other.opt, fx.bad, NULL));
  ck_model_destroy(&other);
  const char *msg =
      expect_refused_path(&fx, fx.bad, FO_ERR_CHECKPOINT, "unexpected tensor \"", "extra tensors");
  cr_expect_not_null(strstr(msg, ".max_exp_avg_sq\" in the checkpoint"), "%s", msg);
  fixture_close(&fx);
}

/* Optimizers over hand-made tensor lists (sizes, names, counts, groups). */
static fo_optimizer *make_opt(int groups, int64_t n, const int64_t *sizes, const char *const *names,
                              float *p, float *g) {
  fo_tensor_desc t[8];
  int64_t at = 0;
  for (int64_t i = 0; i < n; i++) {
    t[i] = (fo_tensor_desc){sizes[i], (int)(i % groups), p + at, g + at, names ? names[i] : NULL};
    at += sizes[i];
  }
  fo_options o;
  fo_options_default(&o);
  fo_hparams h[2];
  fo_hparams_default(FO_ALG_ADAMW, &h[0]);
  h[1] = h[0];
  fo_optimizer *opt;
  CK_OK(fo_optimizer_create(&opt, &o, h, groups, t, n));
  return opt;
}

Test(misfit, groups_tensors_names_sizes) {
  ck_dir d;
  ck_dir_make(&d);
  char path[128];
  ck_dir_file(&d, "t.safetensors", path, sizeof path);
  static float p[64], g[64], q[64];
  const int64_t sizes[3] = {4, 5, 6}, sizes2[3] = {4, 7, 6};
  const char *names[3] = {"a", "b", "c"}, *names2[3] = {"a", "B", "c"};
  fo_optimizer *src = make_opt(2, 3, sizes, names, p, g);
  CK_OK(fo_optimizer_save(src, path, NULL));
  const struct {
    int groups;
    int64_t n;
    const int64_t *sizes;
    const char *const *names;
    const char *want;
  } cases[] = {
      {1, 3, sizes, names, "the checkpoint has num_groups = 2; this optimizer has 1"},
      {2, 2, sizes, names, "the checkpoint has num_tensors = 3; this optimizer has 2"},
      {2, 3, sizes, names2, "the checkpoint has no tensor \"B\" (tensor 1's parameters)"},
      {2, 3, sizes, NULL, "the checkpoint has no tensor \"tensor.0\""},
      {2, 3, sizes2, names,
       "tensor \"b\" has shape [5] in the checkpoint; the registered tensor 1 has shape [7]"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    for (int k = 0; k < 64; k++) q[k] = (float)k;
    fo_optimizer *dst = make_opt(cases[i].groups, cases[i].n, cases[i].sizes, cases[i].names, q, g);
    fo_status st = fo_optimizer_load(dst, path, NULL);
    cr_expect_eq(st, FO_ERR_CHECKPOINT, "case %zu: %s", i, fo_last_error());
    cr_expect_not_null(strstr(fo_last_error(), cases[i].want), "case %zu: %s", i, fo_last_error());
    for (int k = 0; k < 64; k++)
      cr_expect_eq(q[k], (float)k, "case %zu: parameter %d changed", i, k);
    fo_optimizer_destroy(dst);
  }
  fo_optimizer_destroy(src);
  ck_dir_remove(&d);
}

/* The scaler state must be one this optimizer's scaler can continue: a
 * saver with a growth interval of 10, five clean steps into it, cannot
 * resume under an interval of 3. */
Test(misfit, scaler_state_outside_these_options) {
  ck_cfg longer = base_cfg;
  longer.growth_interval = 10;
  expect_misfit(&longer, &base_cfg,
                "growth tracker 5 is not below this optimizer's loss_scaler.growth_interval 3",
                "growth tracker");
}
