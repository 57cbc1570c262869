/*
 * test_checkpoint_shard_resume.c -- exact resume of a sharded
 * optimizer state (ZeRO-1), CPU tier, in one process.
 *
 * The ranks are threads of this process (tests/support/thread_ranks.h: a
 * host communicator whose collectives meet at a barrier), so N sharded
 * optimizers step, save and load exactly as N processes would (the MPI
 * tier, tests/mpi/test_mpi_ckpt.c, does it with processes); snapshots and
 * configurations are tests/support/shard_shots.h's.
 *
 * What is shown: exact resume, N = 1..4 ranks, four configurations
 * (clipping, loss scaling with skipped steps, a schedule, master weights,
 * AMSGrad, SGD with Nesterov): per-rank files, a gathered file, and the
 * per-rank files through fo_optimizer_load_shards, each loaded into a fresh
 * sharded run over other initial values: parameters, every shard of the
 * state, the step state and the hyper-parameters equal the uninterrupted
 * run's, right after the load and after more steps; the same with a rank
 * whose shard is empty.
 */
#define _POSIX_C_SOURCE 200809L

#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt_harness.h"
#include "shard_shots.h"
#include "thread_ranks.h"

#define TOTAL_STEPS 12

/* ------------------------------------------------------------ resume */

typedef struct resume_case {
  int cfg, n;
} resume_case;

ParameterizedTestParameters(shard_resume, bit_identical) {
  static resume_case cases[4 * 4];
  for (int c = 0; c < 4; c++)
    for (int n = 1; n <= 4; n++) cases[c * 4 + n - 1] = (resume_case){c, n};
  return cr_make_param_array(resume_case, cases, 16);
}

/* Load into a fresh sharded run (other initial values) the way `how`
 * says; its state right after equals `at_k`, and after the rest of the
 * steps it equals `want`. */
static void resume_from(const ck_cfg *c, int n, int k, const file_arg *how, const fleet_shot *at_k,
                        const fleet_shot *want, const char *what) {
  fleet f;
  fleet_make(&f, c, n, 1, 99);
  fleet_run(&f, phase_load, how);
  fleet_expect_calls_ok(&f, what);
  fleet_shot got;
  char w[160];
  fleet_take(&f, &got);
  snprintf(w, sizeof w, "%s: right after the load at K=%d", what, k);
  fleet_shot_expect(at_k, &got, w);
  fleet_shot_free(&got);
  fleet_steps(&f, k, TOTAL_STEPS);
  fleet_take(&f, &got);
  snprintf(w, sizeof w, "%s: resumed at K=%d", what, k);
  fleet_shot_expect(want, &got, w);
  fleet_shot_free(&got);
  fleet_free(&f);
}

ParameterizedTest(resume_case *rc, shard_resume, bit_identical) {
  ck_cfg c = cfg_of(rc->cfg);
  ck_dir d;
  ck_dir_make(&d);
  const int ks[2] = {5, 7}; /* mid-growth; right after an overflow */
  paths files[2];
  char gathered[2][160];
  fleet_shot at[2], want;
  fleet ref;
  fleet_make(&ref, &c, rc->n, 1, 1);
  int done = 0;
  for (int i = 0; i < 2; i++) {
    fleet_steps(&ref, done, ks[i]);
    done = ks[i];
    char stem[32];
    snprintf(stem, sizeof stem, "k%d", ks[i]);
    paths_make(&files[i], &d, stem, rc->n);
    snprintf(stem, sizeof stem, "g%d.safetensors", ks[i]);
    ck_dir_file(&d, stem, gathered[i], sizeof gathered[i]);
    file_arg save = {&files[i], gathered[i], rc->n - 1, 0};
    fleet_run(&ref, phase_save, &save);
    fleet_expect_calls_ok(&ref, "per-rank save");
    fleet_run(&ref, phase_save_gathered, &save);
    fleet_expect_calls_ok(&ref, "gathered save");
    fleet_take(&ref, &at[i]);
  }
  fleet_steps(&ref, done, TOTAL_STEPS);
  fleet_take(&ref, &want);
  fleet_free(&ref);
  if (c.scaler) cr_expect_eq(want.s[0].info.skipped_steps, 2, "the run skips two steps");
  cr_expect_eq(ck_dir_count(&d), 2 * rc->n + 2, "only the checkpoints are in the directory");

  char what[96];
  for (int i = 0; i < 2; i++) {
    file_arg own = {&files[i], NULL, 0, 0}, one = {NULL, gathered[i], 0, 0},
             all = {&files[i], NULL, 0, rc->n};
    snprintf(what, sizeof what, "%s over %d: per-rank files", c.label, rc->n);
    resume_from(&c, rc->n, ks[i], &own, &at[i], &want, what);
    snprintf(what, sizeof what, "%s over %d: gathered file", c.label, rc->n);
    resume_from(&c, rc->n, ks[i], &one, &at[i], &want, what);
    snprintf(what, sizeof what, "%s over %d: load_shards", c.label, rc->n);
    resume_from(&c, rc->n, ks[i], &all, &at[i], &want, what);
    fleet_shot_free(&at[i]);
  }
  fleet_shot_free(&want);
  ck_dir_remove(&d);
}

/* A tiny arena (two tensors: 256 elements) over 3 ranks: rank 2's shard
 * is empty.  Its file holds the parameters alone; every way still
 * resumes exactly, and the gathered file is the one-rank run's. */
Test(shard_resume, a_rank_with_an_empty_shard) {
  g_nt = 2;
  ck_cfg c = cfg_of(3);
  ck_dir d;
  ck_dir_make(&d);
  paths files;
  paths_make(&files, &d, "t", 3);
  char g[160];
  ck_dir_file(&d, "g.safetensors", g, sizeof g);
  fleet ref;
  fleet_make(&ref, &c, 3, 1, 1);
  int64_t first = -1, count = -1;
  CK_OK(fo_optimizer_get_shard(ref.r[2].opt, &first, &count));
  cr_assert(first == 256 && count == 0, "rank 2's shard [%lld, +%lld)", (long long)first,
            (long long)count);
  fleet_steps(&ref, 0, 4);
  file_arg save = {&files, g, 2, 0};
  fleet_run(&ref, phase_save, &save);
  fleet_expect_calls_ok(&ref, "per-rank save");
  fleet_run(&ref, phase_save_gathered, &save);
  fleet_expect_calls_ok(&ref, "gathered save from the empty shard's rank");
  ck_bytes b = ck_read(files.p[2]);
  char *h = header_text(&b);
  cr_expect_null(strstr(h, ".exp_avg\""), "the empty shard's file holds state: %s", h);
  cr_expect_not_null(strstr(h, "\"embed.weight\":{\"dtype\":\"F32\",\"shape\":[1],"), "%s", h);
  free(h);
  free(b.p);
  fleet_shot at, want;
  fleet_take(&ref, &at);
  fleet_steps(&ref, 4, TOTAL_STEPS);
  fleet_take(&ref, &want);
  fleet_free(&ref);
  file_arg own = {&files, NULL, 0, 0}, whole = {NULL, g, 0, 0}, all = {&files, NULL, 0, 3};
  resume_from(&c, 3, 4, &own, &at, &want, "tiny: per-rank files");
  resume_from(&c, 3, 4, &whole, &at, &want, "tiny: gathered file");
  resume_from(&c, 3, 4, &all, &at, &want, "tiny: load_shards");
  fleet_shot_free(&at);
  fleet_shot_free(&want);
  ck_dir_remove(&d);
}
