/*
 * test_checkpoint_shard_files.c -- the files of a sharded
 * optimizer state (ZeRO-1), CPU tier, in one process.
 *
 * The ranks are threads of this process (tests/support/thread_ranks.h: a
 * host communicator whose collectives meet at a barrier), so N sharded
 * optimizers step, save and load exactly as N processes would (the MPI
 * tier, tests/mpi/test_mpi_ckpt.c, does it with processes); snapshots and
 * configurations are tests/support/shard_shots.h's.
 *
 * What is shown:
 *   - the gathered file is byte for byte the file of an unsharded run in
 *     the same state (through windows smaller than a tensor, too);
 *   - per-rank files of N ranks load into an unsharded optimizer and into
 *     a sharded run over another number of ranks, and those continue
 *     bit-identical to the N-rank run;
 *   - the per-rank file's layout (format version 2, the shard, pieces);
 *     Python's safetensors reads it and reassembles the whole state
 *     (checkpoint_python.py, when installed).
 */
#define _POSIX_C_SOURCE 200809L

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "checkpoint_shard.h" /* fo_ckpt_set_gather_window */
#include "ckpt_harness.h"
#include "shard_shots.h"
#include "thread_ranks.h"

#define TOTAL_STEPS 12

/* --------------------------------------- gathered = unsharded, resharding */

static void read_expect_same(const char *a, const char *b, const char *what) {
  ck_bytes x = ck_read(a), y = ck_read(b);
  cr_expect_eq(x.n, y.n, "%s: %zu vs %zu bytes", what, x.n, y.n);
  if (x.n == y.n) expect_same_bytes(x.p, y.p, x.n, what, -1);
  free(x.p);
  free(y.p);
}

/* n sharded ranks and n plain data-parallel ranks, fed the same
 * gradients, hold the same state (no pre-pass: the sums are the same
 * bits); the gathered file is the plain run's file, byte for byte. */
static void gathered_is_plain(int which, int n, int64_t window) {
  ck_cfg c = cfg_of(which);
  ck_dir d;
  ck_dir_make(&d);
  char g[160], p[160];
  ck_dir_file(&d, "gathered.safetensors", g, sizeof g);
  ck_dir_file(&d, "plain.safetensors", p, sizeof p);
  fo_ckpt_set_gather_window(window);
  fleet sh, pl;
  fleet_make(&sh, &c, n, 1, 1);
  fleet_make(&pl, &c, n, 0, 1);
  fleet_steps(&sh, 0, 6);
  fleet_steps(&pl, 0, 6);
  file_arg a = {NULL, g, 0, 0};
  fleet_run(&sh, phase_save_gathered, &a);
  fleet_expect_calls_ok(&sh, "gathered save");
  CK_OK(fo_optimizer_save(pl.r[0].opt, p, NULL));
  char what[96];
  snprintf(what, sizeof what, "%s over %d, window %lld: gathered vs plain file", c.label, n,
           (long long)window);
  read_expect_same(g, p, what);
  /* the plain fleet's gathered save is rank 0's own file too */
  a.root = n - 1;
  a.one = g;
  fleet_run(&pl, phase_save_gathered, &a);
  fleet_expect_calls_ok(&pl, "gathered save of a plain fleet");
  read_expect_same(g, p, "a plain fleet's gathered file");
  fo_ckpt_set_gather_window(0);
  fleet_free(&sh);
  fleet_free(&pl);
  ck_dir_remove(&d);
}

Test(shard_files, gathered_file_is_the_unsharded_file) {
  gathered_is_plain(3, 2, 0);
  gathered_is_plain(3, 3, 1000); /* windows smaller than a tensor, across shard boundaries */
  gathered_is_plain(4, 4, 0);
  gathered_is_plain(4, 4, 4099);
}

/* One rank: even with clipping and loss scaling the sharded optimizer is
 * the plain one, and so is its gathered file. */
Test(shard_files, one_rank_gathered_file_is_the_plain_file) {
  ck_cfg c = cfg_of(0);
  ck_dir d;
  ck_dir_make(&d);
  char g[160], p[160];
  ck_dir_file(&d, "g.safetensors", g, sizeof g);
  ck_dir_file(&d, "p.safetensors", p, sizeof p);
  fleet sh;
  fleet_make(&sh, &c, 1, 1, 1);
  rk plain = {.opt = rk_make_opt(&c, 1), .cfg = c};
  fleet_steps(&sh, 0, 8);
  for (int s = 0; s < 8; s++) rk_step(&plain, 0, 1, s);
  cr_assert(!plain.failure[0], "%s", plain.failure);
  file_arg a = {NULL, g, 0, 0};
  fleet_run(&sh, phase_save_gathered, &a);
  fleet_expect_calls_ok(&sh, "gathered save");
  CK_OK(fo_optimizer_save(plain.opt, p, NULL));
  read_expect_same(g, p, "one rank: gathered vs plain");
  /* without a communicator, save_gathered is save */
  CK_OK(fo_optimizer_save_gathered(plain.opt, g, 0, NULL));
  read_expect_same(g, p, "no communicator: save_gathered vs save");
  CK_OK(fo_optimizer_destroy(plain.opt));
  fleet_free(&sh);
  ck_dir_remove(&d);
}

typedef struct reshard_arg {
  int from, to, world_n; /* steps; the run's ranks, whose mean each rank is fed */
} reshard_arg;

/* Every rank of another sharding is fed the mean of the original run's
 * world_n ranks: its sum over its own ranks, / its ranks, is that mean
 * again (exact: powers of two), so it continues the original run. */
static void phase_mean_steps(fleet *f, int rank, const void *arg) {
  const reshard_arg *a = arg;
  for (int s = a->from; s < a->to; s++) rk_step(&f->r[rank], -1, a->world_n, s);
}

/* Per-rank files of a 4-rank run, loaded into an unsharded optimizer and
 * into 2- and 1-rank sharded runs (and the gathered file likewise), which
 * continue bit-identical to the 4-rank run. */
static void reshard(int which) {
  ck_cfg c = cfg_of(which);
  const int n = 4, k = 5;
  ck_dir d;
  ck_dir_make(&d);
  paths files;
  paths_make(&files, &d, "r", n);
  char g[160];
  ck_dir_file(&d, "g.safetensors", g, sizeof g);
  fleet ref;
  fleet_make(&ref, &c, n, 1, 1);
  fleet_steps(&ref, 0, k);
  file_arg save = {&files, g, 1, 0};
  fleet_run(&ref, phase_save, &save);
  fleet_expect_calls_ok(&ref, "per-rank save");
  fleet_run(&ref, phase_save_gathered, &save);
  fleet_expect_calls_ok(&ref, "gathered save");
  fleet_shot at, want;
  fleet_take(&ref, &at);
  fleet_steps(&ref, k, TOTAL_STEPS);
  fleet_take(&ref, &want);
  fleet_free(&ref);

  char what[128];
  for (int via = 0; via < 2; via++) { /* the per-rank files; the gathered file */
    const char *how = via ? "gathered file" : "per-rank files";
    rk one = {.opt = rk_make_opt(&c, 7), .cfg = c};
    fo_status st = via ? fo_optimizer_load(one.opt, g, NULL)
                       : fo_optimizer_load_shards(one.opt, files.v, n, NULL);
    cr_assert_eq(st, FO_SUCCESS, "%s: %s", how, fo_last_error());
    shot s;
    shot_take(one.opt, &s);
    snprintf(what, sizeof what, "%s %s into one unsharded optimizer, right after", c.label, how);
    whole_expect_fleet(&s, &at, 0, what);
    shot_free(&s);
    for (int step = k; step < TOTAL_STEPS; step++) rk_step(&one, -1, n, step);
    cr_assert(!one.failure[0], "%s", one.failure);
    shot_take(one.opt, &s);
    snprintf(what, sizeof what, "%s %s into one unsharded optimizer, resumed", c.label, how);
    whole_expect_fleet(&s, &want, 1, what);

    for (int m = 1; m <= 2; m++) { /* another sharding; compared with the unsharded run */
      fleet f;
      fleet_make(&f, &c, m, 1, 8);
      file_arg load = {&files, via ? g : NULL, 0, via ? 0 : n};
      fleet_run(&f, phase_load, &load);
      fleet_expect_calls_ok(&f, "load into another sharding");
      reshard_arg steps = {k, TOTAL_STEPS, n};
      fleet_run(&f, phase_mean_steps, &steps);
      fleet_expect_ok(&f, "steps");
      fleet_shot got;
      fleet_take(&f, &got);
      snprintf(what, sizeof what, "%s %s into %d ranks, resumed", c.label, how, m);
      whole_expect_fleet(&s, &got, 1, what);
      fleet_shot_free(&got);
      fleet_free(&f);
    }
    shot_free(&s);
    CK_OK(fo_optimizer_destroy(one.opt));
  }
  fleet_shot_free(&at);
  fleet_shot_free(&want);
  ck_dir_remove(&d);
}

Test(shard_files, per_rank_files_load_into_any_sharding) {
  reshard(3);
  reshard(4);
}

/* ------------------------------------------------------------- layout */

/* Rank 1 of 3: version 2, its shard, whole parameters, pieces of the
 * state named like the whole buffers, each with its first element; the
 * shards of 25600 arena elements are [0, 8576), [8576, 17152), [17152,
 * 25600): tensor 4 (4099 elements at 1280) lies in rank 0's shard and
 * tensor 5 (20000 at 5504) spans all three. */
Test(shard_format, per_rank_file_layout) {
  ck_cfg c = cfg_of(0);
  ck_dir d;
  ck_dir_make(&d);
  paths files;
  paths_make(&files, &d, "rank", 3);
  char g[160];
  ck_dir_file(&d, "whole.safetensors", g, sizeof g);
  fleet f;
  fleet_make(&f, &c, 3, 1, 1);
  fleet_steps(&f, 0, 3);
  file_arg save = {&files, g, 0, 0};
  fleet_run(&f, phase_save, &save);
  fleet_expect_calls_ok(&f, "per-rank save");
  fleet_run(&f, phase_save_gathered, &save);
  fleet_expect_calls_ok(&f, "gathered save");
  for (int k = 0; k < 3; k++) CK_OK(fo_checkpoint_verify(files.p[k]));
  ck_bytes b = ck_read(files.p[1]);
  char *h = header_text(&b);
  const char *has[] = {"\"fusedopt.format_version\":\"2\"",
                       "\"fusedopt.shard.rank\":\"1\"",
                       "\"fusedopt.shard.size\":\"3\"",
                       "\"fusedopt.shard.first\":\"8576\"",
                       "\"fusedopt.shard.count\":\"8576\"",
                       "\"fusedopt.shard.total\":\"25600\"",
                       "\"fusedopt.shard.offset.fc1.bias.exp_avg\":\"3072\"",
                       "\"fc1.bias\":{\"dtype\":\"BF16\",\"shape\":[20000],",
                       "\"fc1.bias.master\":{\"dtype\":\"F32\",\"shape\":[8576],",
                       "\"fc1.bias.max_exp_avg_sq\":{\"dtype\":\"F32\",\"shape\":[8576],",
                       "\"embed.weight\":{\"dtype\":\"BF16\",\"shape\":[1],",
                       "\"tensor.4\":{\"dtype\":\"BF16\",\"shape\":[4099],",
                       "\"fusedopt.crc32.fc1.bias.exp_avg_sq\""};
  for (size_t i = 0; i < sizeof has / sizeof has[0]; i++)
    cr_expect_not_null(strstr(h, has[i]), "rank 1's header lacks %s", has[i]);
  const char *lacks[] = {"\"tensor.4.exp_avg\"", "\"embed.weight.master\"", "\"empty.exp_avg\"",
                         "\"fc1.weight.exp_avg\""};
  for (size_t i = 0; i < sizeof lacks / sizeof lacks[0]; i++)
    cr_expect_null(strstr(h, lacks[i]), "rank 1's header holds %s", lacks[i]);
  free(h);
  free(b.p);
  b = ck_read(files.p[0]);
  h = header_text(&b);
  cr_expect_not_null(strstr(h, "\"tensor.4.exp_avg\":{\"dtype\":\"F32\",\"shape\":[4099],"));
  cr_expect_not_null(strstr(h, "\"fusedopt.shard.offset.fc1.bias.exp_avg\":\"0\""));
  cr_expect_not_null(strstr(h, "\"fc1.bias.exp_avg\":{\"dtype\":\"F32\",\"shape\":[3072],"));
  free(h);
  free(b.p);
  b = ck_read(g);
  h = header_text(&b);
  cr_expect_not_null(strstr(h, "\"fusedopt.format_version\":\"1\""), "a whole file is version 1");
  cr_expect_null(strstr(h, "fusedopt.shard"), "a whole file names no shard");
  free(h);
  free(b.p);
  fleet_free(&f);

  const char *py = ck_find_python();
  if (py) { /* Python reassembles the whole state from the pieces */
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s %s/../checkpoint_python.py --shards %s %s %s %s", py,
             FO_GOLDEN_DIR, g, files.p[2], files.p[0], files.p[1]);
    int rc = system(cmd);
    cr_expect(rc != -1 && WIFEXITED(rc) && WEXITSTATUS(rc) == 0, "%s failed (%d)", cmd, rc);
  }
  ck_dir_remove(&d);
  if (!py) cr_skip_test("no Python with safetensors and numpy for the Python half (FO_PYTHON)");
}
