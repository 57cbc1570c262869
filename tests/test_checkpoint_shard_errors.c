/*
 * test_checkpoint_shard_errors.c -- refusals of the checkpoints
 * of a sharded optimizer state (ZeRO-1), CPU tier, in one process.
 *
 * The ranks are threads of this process (tests/support/thread_ranks.h: a
 * host communicator whose collectives meet at a barrier), so N sharded
 * optimizers step, save and load exactly as N processes would (the MPI
 * tier, tests/mpi/test_mpi_ckpt.c, does it with processes); snapshots and
 * configurations are tests/support/shard_shots.h's.
 *
 * What is shown: refusals, each with every rank's status and message equal
 * and nothing changed: an unsharded optimizer and a per-rank file, another
 * rank's file, a missing file on one rank, files of two saves, edited and
 * corrupt per-rank files, incomplete or mixed sets of files.
 */
#define _POSIX_C_SOURCE 200809L

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint_format.h" /* fo_st_parse and fo_crc32, to re-sign edits */
#include "ckpt_harness.h"
#include "shard_shots.h"
#include "thread_ranks.h"

#define TOTAL_STEPS 12

/* ------------------------------------------------------------- refusals */

Test(shard_errors, loads_refused_alike_on_every_rank) {
  bad_fx x;
  bad_open(&x, 3);
  per_rank_paths a;
  char missing[160];
  ck_dir_file(&x.d, "nope.safetensors", missing, sizeof missing);

  for (int k = 0; k < 3; k++) a.p[k] = x.files.p[(k + 1) % 3];
  fleet_run(&x.f, phase_load_each, &a);
  bad_expect(&x, FO_ERR_CHECKPOINT, "rank 0 of 3: \"", "another rank's file");
  cr_expect(strstr(x.f.r[0].msg,
                   "holds the shard of rank 1 of 3 (elements [8576, +8576) of "
                   "25600); this optimizer is rank 0 of 3 (elements [0, +8576)"),
            "%s", x.f.r[0].msg);

  for (int k = 0; k < 3; k++) a.p[k] = k == 1 ? missing : x.files.p[k];
  fleet_run(&x.f, phase_load_each, &a);
  bad_expect(&x, FO_ERR_IO, "rank 1 of 3: cannot open", "a missing file on rank 1");
  cr_expect(strstr(x.f.r[2].msg, "No such file or directory"), "%s", x.f.r[2].msg);

  for (int k = 0; k < 3; k++) a.p[k] = k == 2 ? x.later.p[k] : x.files.p[k];
  fleet_run(&x.f, phase_load_each, &a);
  bad_expect(&x, FO_ERR_CHECKPOINT,
             "the ranks loaded different saves: rank 2's checkpoint holds step 5, rank 0's step 3",
             "files of two saves");

  for (int k = 0; k < 3; k++) a.p[k] = k == 0 ? x.whole : x.files.p[k]; /* mixing is fine */
  fleet_run(&x.f, phase_load_each, &a);
  fleet_expect_calls_ok(&x.f, "the gathered file on rank 0, per-rank files elsewhere");
  bad_close(&x);
}

Test(shard_errors, an_unsharded_optimizer_refuses_a_per_rank_file) {
  bad_fx x;
  bad_open(&x, 2);
  rk one = {.opt = rk_make_opt(&x.c, 3), .cfg = x.c};
  shot before, after;
  shot_take(one.opt, &before);
  fo_status st = fo_optimizer_load(one.opt, x.files.p[1], NULL);
  cr_expect_eq(st, FO_ERR_CHECKPOINT, "%s", fo_last_error());
  cr_expect(strstr(fo_last_error(),
                   "is rank 1's file of a state sharded over 2 ranks; this "
                   "optimizer's state is not sharded: assemble every rank's "
                   "file with fo_optimizer_load_shards()"),
            "%s", fo_last_error());
  shot_take(one.opt, &after);
  shot_expect(&before, &after, 0, "after the refused load");
  shot_free(&after);
  /* assembled, they load */
  CK_OK(fo_optimizer_load_shards(one.opt, x.files.v, 2, NULL));
  shot_free(&before);
  CK_OK(fo_optimizer_destroy(one.opt));
  bad_close(&x);
}

/* load_shards into one optimizer: files must be every rank's of one save. */
static void expect_set_refused(fo_optimizer *opt, const shot *before, const char *const *v, int n,
                               fo_status status, const char *want, const char *what) {
  fo_status st = fo_optimizer_load_shards(opt, v, n, NULL);
  cr_expect_eq(st, status, "%s: %s (%s)", what, fo_status_string(st), fo_last_error());
  cr_expect(strstr(fo_last_error(), want), "%s: \"%s\" lacks \"%s\"", what, fo_last_error(), want);
  cr_expect(strstr(fo_last_error(), "fo_optimizer_load_shards: "), "%s", fo_last_error());
  if (getenv("FO_CKPT_PRINT")) printf("%-30s %s\n", what, fo_last_error());
  shot after;
  shot_take(opt, &after);
  shot_expect(before, &after, 0, what);
  shot_free(&after);
}

Test(shard_errors, load_shards_wants_every_rank_of_one_save) {
  bad_fx x;
  bad_open(&x, 3);
  rk one = {.opt = rk_make_opt(&x.c, 3), .cfg = x.c};
  shot before;
  shot_take(one.opt, &before);
  const char *v[4];
  expect_set_refused(one.opt, &before, x.files.v, 2, FO_ERR_CHECKPOINT,
                     "the file is rank 0's of 3 ranks, but 2 files were given", "a missing rank");
  v[0] = x.files.p[0], v[1] = x.files.p[1], v[2] = x.files.p[1];
  expect_set_refused(one.opt, &before, v, 3, FO_ERR_CHECKPOINT, "rank 1's shard, which",
                     "a rank twice");
  v[2] = x.later.p[1];
  expect_set_refused(one.opt, &before, v, 3, FO_ERR_CHECKPOINT, "rank 1's shard, which",
                     "a rank twice, of two saves");
  v[0] = x.files.p[0], v[1] = x.files.p[1], v[2] = x.later.p[2];
  expect_set_refused(one.opt, &before, v, 3, FO_ERR_CHECKPOINT,
                     "rank 2's file holds step 5, rank 0's", "two saves");
  v[2] = x.whole;
  expect_set_refused(one.opt, &before, v, 3, FO_ERR_CHECKPOINT,
                     "not a per-rank file of a sharded state", "a whole file among them");
  char missing[160];
  ck_dir_file(&x.d, "nope.safetensors", missing, sizeof missing);
  v[2] = missing;
  expect_set_refused(one.opt, &before, v, 3, FO_ERR_IO, "cannot open", "a missing file");
  v[2] = NULL;
  expect_set_refused(one.opt, &before, v, 3, FO_ERR_NULL_POINTER, "paths[2] is NULL",
                     "a NULL path");
  expect_set_refused(one.opt, &before, NULL, 3, FO_ERR_NULL_POINTER, "paths is NULL", "NULL paths");
  expect_set_refused(one.opt, &before, x.files.v, 0, FO_ERR_INVALID_ARGUMENT, "no files",
                     "no files");
  /* files of other tensors */
  ck_cfg other = x.c;
  other.sched = 0;
  fo_options o = ck_options(&other);
  fo_hparams h[2];
  ck_hparams(&other, h);
  fo_tensor_desc t[CK_TENSORS];
  for (int i = 0; i < CK_TENSORS; i++)
    t[i] = (fo_tensor_desc){ck_sizes[i] + (i == 3 ? 200 : 0), i % 2, NULL, NULL, ck_names[i]};
  fo_optimizer *bigger = NULL;
  CK_OK(fo_optimizer_create(&bigger, &o, h, 2, t, CK_TENSORS));
  cr_expect_eq(fo_optimizer_load_shards(bigger, x.files.v, 3, NULL), FO_ERR_CHECKPOINT);
  cr_expect(strstr(fo_last_error(),
                   "the shards cover an arena of 25600 elements; this "
                   "optimizer's holds 25856"),
            "%s", fo_last_error());
  CK_OK(fo_optimizer_destroy(bigger));
  /* and all of them, in any order, load */
  v[0] = x.files.p[2], v[1] = x.files.p[0], v[2] = x.files.p[1];
  CK_OK(fo_optimizer_load_shards(one.opt, v, 3, NULL));
  shot_free(&before);
  CK_OK(fo_optimizer_destroy(one.opt));
  bad_close(&x);
}

/* Re-sign the metadata checksum after an edit (the format's definition). */
static ck_bytes resign(const ck_bytes *b) {
  fo_st_file f;
  cr_assert_eq(fo_st_parse("test", b->p, b->n, &f), FO_SUCCESS, "%s", fo_last_error());
  fo_crc32 c;
  fo_crc32_init(&c);
  uint32_t crc = 0;
  for (int64_t i = 0; i < f.num_meta; i++) {
    const fo_st_meta *m = &f.meta[i];
    if (strncmp(m->key, "fusedopt.", 9) != 0 || strcmp(m->key, "fusedopt.metadata_crc32") == 0)
      continue;
    crc = fo_crc32_update(&c, crc, m->key, m->key_len + 1);
    crc = fo_crc32_update(&c, crc, m->value, m->value_len + 1);
  }
  fo_st_free(&f);
  ck_bytes out = {malloc(b->n + 1), b->n};
  memcpy(out.p, b->p, b->n);
  char *at = strstr((char *)out.p + 8, "\"fusedopt.metadata_crc32\":\"");
  cr_assert_not_null(at);
  char v[9];
  snprintf(v, sizeof v, "%08x", (unsigned)crc);
  memcpy(at + strlen("\"fusedopt.metadata_crc32\":\""), v, 8);
  return out;
}

/* The header edited in place (same length), re-signed or not. */
static ck_bytes edited(const ck_bytes *b, const char *old, const char *new_text, int sign) {
  cr_assert_eq(strlen(old), strlen(new_text));
  ck_bytes c = {malloc(b->n + 1), b->n};
  memcpy(c.p, b->p, b->n);
  char *hdr = malloc(b->n + 1);
  memcpy(hdr, c.p, b->n);
  hdr[b->n] = '\0';
  char *at = strstr(hdr + 8, old);
  cr_assert_not_null(at, "no %s", old);
  memcpy(c.p + (at - hdr), new_text, strlen(new_text));
  free(hdr);
  if (!sign) return c;
  ck_bytes s = resign(&c);
  free(c.p);
  return s;
}

Test(shard_errors, damaged_per_rank_files) {
  bad_fx x;
  bad_open(&x, 2);
  ck_bytes good = ck_read(x.files.p[1]);
  struct {
    ck_bytes b;
    const char *want, *what;
  } cases[] = {
      {edited(&good, "\"fusedopt.shard.rank\":\"1\"", "\"fusedopt.shard.rank\":\"2\"", 1),
       "\"fusedopt.shard.rank\" = \"2\" is not in [0, 1]", "rank out of range"},
      {edited(&good, "\"fusedopt.shard.rank\":\"1\"", "\"fusedopt.shard.rank\":\"0\"", 1),
       "rank 0's shard, which", "another rank's shard named"},
      {edited(&good, "\"fusedopt.shard.first\":\"12800\"", "\"fusedopt.shard.first\":\"12672\"", 1),
       "rank 1's shard starts at element 12672, where rank 0's ended (12800)", "another shard"},
      {edited(&good, "\"fusedopt.shard.count\":\"12800\"", "\"fusedopt.shard.count\":\"12801\"", 1),
       "\"fusedopt.shard.count\" = \"12801\" is not in [0, 12800]", "a shard past the end"},
      {edited(&good, "\"fusedopt.shard.offset.fc1.bias.exp_avg\":\"7296\"",
              "\"fusedopt.shard.offset.fc1.bias.exp_avg\":\"7297\"", 1),
       "piece \"fc1.bias.exp_avg\" starts at element 7297 of its tensor in the checkpoint; the "
       "shard's piece starts at element 7296",
       "a piece's offset"},
      {edited(&good, "\"fusedopt.shard.offset.fc1.bias.exp_avg\":\"7296\"",
              "\"fusedopt.shard.offset.fc1.bias.exp_avg\":\"7297\"", 0),
       "metadata checksum mismatch", "an unsigned edit"},
      {edited(&good, "\"fusedopt.shard.offset.fc1.bias.exp_avg\":\"7296\"",
              "\"fusedopt.shard.offsex.fc1.bias.exp_avg\":\"7296\"", 1),
       "the metadata lacks the first element of piece \"fc1.bias.exp_avg\"", "a missing offset"},
      {edited(&good, "\"fusedopt.format_version\":\"2\"", "\"fusedopt.format_version\":\"1\"", 1),
       "not a per-rank file of a sharded state: it holds the whole state",
       "version 1: a whole file"},
  };
  fo_optimizer *opt = x.f.r[1].opt;
  shot before;
  shot_take(opt, &before);
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    /* load_shards into an unsharded optimizer needs no other rank */
    rk one = {.opt = rk_make_opt(&x.c, 3), .cfg = x.c};
    char bad[160];
    ck_dir_file(&x.d, "bad.safetensors", bad, sizeof bad);
    ck_write(bad, cases[i].b.p, cases[i].b.n);
    free(cases[i].b.p);
    const char *v[2] = {x.files.p[0], bad};
    fo_status st = fo_optimizer_load_shards(one.opt, v, 2, NULL);
    cr_expect_eq(st, FO_ERR_CHECKPOINT, "%s: %s", cases[i].what, fo_last_error());
    cr_expect(strstr(fo_last_error(), cases[i].want), "%s: \"%s\" lacks \"%s\"", cases[i].what,
              fo_last_error(), cases[i].want);
    if (getenv("FO_CKPT_PRINT")) printf("%-30s %s\n", cases[i].what, fo_last_error());
    CK_OK(fo_optimizer_destroy(one.opt));
  }
  /* a flipped data byte on rank 1: every rank refuses */
  good.p[good.n - 5] ^= 0x10;
  char bad[160];
  ck_dir_file(&x.d, "bad.safetensors", bad, sizeof bad);
  ck_write(bad, good.p, good.n);
  per_rank_paths a = {{x.files.p[0], bad}};
  fleet_run(&x.f, phase_load_each, &a);
  bad_expect(&x, FO_ERR_CHECKPOINT, "rank 1 of 2: \"", "a flipped byte on rank 1");
  cr_expect(strstr(x.f.r[0].msg, "checksum mismatch"), "%s", x.f.r[0].msg);
  free(good.p);
  shot_free(&before);
  bad_close(&x);
}
