/*
 * test_checkpoint_shard_faults.c -- failures in the checkpoints
 * of a sharded optimizer state (ZeRO-1), CPU tier, in one process.
 *
 * The ranks are threads of this process (tests/support/thread_ranks.h: a
 * host communicator whose collectives meet at a barrier), so N sharded
 * optimizers step, save and load exactly as N processes would (the MPI
 * tier, tests/mpi/test_mpi_ckpt.c, does it with processes); snapshots and
 * configurations are tests/support/shard_shots.h's.
 *
 * What is shown:
 *   - failures of a gathered save (root's directory missing, root's disk
 *     full, a faulted rank, a communicator without all_gather) and of a
 *     load's copies on one rank reach every rank alike;
 *   - argument checks of the new functions.
 */
#define _POSIX_C_SOURCE 200809L

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt_harness.h"
#include "internal.h" /* fo_inject_fault */
#include "shard_shots.h"
#include "thread_ranks.h"

#define TOTAL_STEPS 12

/* -------------------------------------------------------------- faults */

static void phase_save_gathered_root0(fleet *f, int rank, const void *arg) {
  const char *path = arg;
  rk_record(&f->r[rank], fo_optimizer_save_gathered(f->r[rank].opt, path, 0, NULL));
}

Test(shard_faults, gathered_save_failures_reach_every_rank) {
  ck_cfg c = cfg_of(0);
  ck_dir d;
  ck_dir_make(&d);
  char path[160], nodir[200];
  ck_dir_file(&d, "g.safetensors", path, sizeof path);
  snprintf(nodir, sizeof nodir, "%s/no/such/dir/g.safetensors", d.path);
  fleet f;
  fleet_make(&f, &c, 3, 1, 1);
  fleet_steps(&f, 0, 2);
  fleet_run(&f, phase_save_gathered_root0, path);
  fleet_expect_calls_ok(&f, "gathered save");
  ck_bytes old = ck_read(path);
  fleet_steps(&f, 2, 3);

  fleet_run(&f, phase_save_gathered_root0, nodir);
  fleet_expect_calls_failed(&f, FO_ERR_IO, "rank 0 of 3: cannot create", "root's directory");

  fleet_run(&f, phase_save_gathered_root0, "");
  fleet_expect_calls_failed(&f, FO_ERR_INVALID_ARGUMENT, "rank 0 of 3: path is empty",
                            "root's empty path");

  CK_OK(fo_inject_fault(f.r[0].opt, FO_FAULT_SAVE_WRITE));
  fleet_run(&f, phase_save_gathered_root0, path);
  fleet_expect_calls_failed(&f, FO_ERR_IO, "rank 0 of 3: cannot write (injected fault)",
                            "root's disk full");
  CK_OK(fo_inject_fault(f.r[0].opt, FO_FAULT_NONE));
  ck_bytes now = ck_read(path);
  cr_expect(now.n == old.n && memcmp(now.p, old.p, old.n) == 0, "the old file changed");
  free(now.p);
  cr_expect_eq(ck_dir_count(&d), 1, "a temporary file was left behind");

  /* rank 2's step fails after its work started: it is faulted */
  CK_OK(fo_inject_fault(f.r[2].opt, FO_FAULT_STEP));
  steps_arg one = {3, 4};
  fleet_run(&f, phase_steps, &one);
  cr_expect(strstr(f.r[2].failure, "injected fault"), "%s", f.r[2].failure);
  CK_OK(fo_inject_fault(f.r[2].opt, FO_FAULT_NONE));
  fleet_run(&f, phase_save_gathered_root0, path);
  fleet_expect_calls_failed(&f, FO_ERR_INVALID_STATE, "rank 2 of 3: the optimizer's state may be",
                            "a faulted rank");
  now = ck_read(path);
  cr_expect(now.n == old.n && memcmp(now.p, old.p, old.n) == 0, "the old file changed");
  free(now.p);
  free(old.p);
  cr_expect_eq(ck_dir_count(&d), 1, "a temporary file was left behind");
  fleet_free(&f);
  ck_dir_remove(&d);
}

/* n ranks of plain data parallelism over host communicators with
 * allreduce_sum only (all_gather NULL): enough to step. */
static void fleet_make_allreduce_only(fleet *f, const ck_cfg *c, int n, uint64_t seed) {
  memset(f, 0, sizeof *f);
  tr_world_init(&f->w, n);
  f->n = n;
  for (int k = 0; k < n; k++) {
    f->r[k].cfg = *c;
    f->r[k].opt = rk_make_opt(c, seed);
    f->r[k].comm = tr_world_comm_allreduce_only(&f->w, k);
    CK_OK(fo_optimizer_set_comm(f->r[k].opt, f->r[k].comm, NULL));
  }
}

/* The ranks agree on a gathered save's outcome through all_gather, which a
 * host communicator of plain data parallelism need not have: every rank
 * refuses alike before any collective (it used to call the NULL op), at
 * every root, writes nothing, changes nothing; the ranks step on, and
 * fo_optimizer_save on one rank is the way out. */
Test(shard_faults, gathered_save_without_all_gather_is_refused_on_every_rank) {
  ck_cfg c = cfg_of(0);
  ck_dir d;
  ck_dir_make(&d);
  char path[160], own[160];
  ck_dir_file(&d, "g.safetensors", path, sizeof path);
  ck_dir_file(&d, "own.safetensors", own, sizeof own);
  fleet f;
  fleet_make_allreduce_only(&f, &c, 3, 29);
  fleet_steps(&f, 0, 3);
  fleet_shot before, after;
  fleet_take(&f, &before);
  int calls[MAXR];
  memcpy(calls, f.w.allreduce_calls, sizeof calls);
  for (int root = 0; root < 3; root++) {
    file_arg a = {NULL, path, root, 0};
    fleet_run(&f, phase_save_gathered, &a);
    fleet_expect_calls_failed(&f, FO_ERR_UNSUPPORTED, "all_gather", "no all_gather");
    cr_expect(strstr(f.r[0].msg, "fo_optimizer_save_gathered: "), "%s", f.r[0].msg);
    cr_expect(memcmp(calls, f.w.allreduce_calls, sizeof calls) == 0,
              "root %d: a collective ran before the refusal", root);
    cr_expect_eq(ck_dir_count(&d), 0, "root %d: a file or a temporary file was left", root);
  }
  fleet_take(&f, &after);
  fleet_shot_expect(&before, &after, "after the refused saves");
  fleet_shot_free(&after);
  fleet_shot_free(&before);
  CK_OK(fo_optimizer_save(f.r[1].opt, own, NULL));
  cr_expect_eq(ck_dir_count(&d), 1, "fo_optimizer_save wrote %d files", ck_dir_count(&d));
  fleet_steps(&f, 3, 5); /* nothing poisoned, nothing faulted */
  fleet_free(&f);
  ck_dir_remove(&d);
}

Test(shard_faults, a_failed_copy_on_one_rank_faults_every_rank) {
  bad_fx x;
  bad_open(&x, 3);
  CK_OK(fo_inject_fault(x.f.r[1].opt, FO_FAULT_LOAD_APPLY));
  file_arg own = {&x.files, NULL, 0, 0};
  fleet_run(&x.f, phase_load, &own);
  fleet_expect_calls_failed(&x.f, FO_ERR_CUDA, "rank 1 of 3: injected fault: copy",
                            "a failed copy on rank 1");
  for (int k = 0; k < 3; k++) {
    fo_status fault;
    char msg[320];
    CK_OK(fo_optimizer_get_fault(x.f.r[k].opt, &fault, msg, sizeof msg));
    cr_expect_eq(fault, FO_ERR_CUDA, "rank %d: %s", k, msg);
    /* rank 1 keeps its own failure; the others rank 1's */
    cr_expect(strstr(msg, k == 1 ? "injected fault: copy" : "rank 1 of 3: injected fault"),
              "rank %d: %s", k, msg);
  }
  CK_OK(fo_inject_fault(x.f.r[1].opt, FO_FAULT_NONE));
  fleet_run(&x.f, phase_load, &own); /* a load clears it everywhere */
  fleet_expect_calls_ok(&x.f, "the second load");
  for (int k = 0; k < 3; k++) {
    fo_status fault;
    CK_OK(fo_optimizer_get_fault(x.f.r[k].opt, &fault, NULL, 0));
    cr_expect_eq(fault, FO_SUCCESS, "rank %d still faulted", k);
  }
  fleet_steps(&x.f, 4, 5);
  bad_close(&x);
}

/* ------------------------------------------------------------ arguments */

Test(shard_arguments, the_new_functions_check_their_own) {
  ck_cfg c = cfg_of(3);
  fo_optimizer *opt = rk_make_opt(&c, 1);
  int s;
  const char *one[1] = {"/nonexistent/fo_ckpt_x"};
  char x[128];
  ck_dir none; /* a refused call writes nothing there */
  ck_dir_make(&none);
  ck_dir_file(&none, "x", x, sizeof x);
  cr_expect_eq(fo_optimizer_save_gathered(NULL, x, 0, NULL), FO_ERR_NULL_POINTER);
  cr_expect_eq(fo_optimizer_save_gathered(opt, x, 1, NULL), FO_ERR_INVALID_ARGUMENT);
  cr_expect(strstr(fo_last_error(), "root = 1 is not a rank of the communicator (1 rank)"), "%s",
            fo_last_error());
  cr_expect_eq(fo_optimizer_save_gathered(opt, x, -1, NULL), FO_ERR_INVALID_ARGUMENT);
  cr_expect_eq(fo_optimizer_save_gathered(opt, x, 0, (fo_stream_t)&s), FO_ERR_INVALID_ARGUMENT);
  cr_expect_eq(fo_optimizer_save_gathered(opt, NULL, 0, NULL), FO_ERR_NULL_POINTER);
  cr_expect_eq(fo_optimizer_save_gathered(opt, "", 0, NULL), FO_ERR_INVALID_ARGUMENT);
  cr_expect_eq(fo_optimizer_load_shards(NULL, one, 1, NULL), FO_ERR_NULL_POINTER);
  cr_expect_eq(fo_optimizer_load_shards(opt, NULL, 1, NULL), FO_ERR_NULL_POINTER);
  cr_expect_eq(fo_optimizer_load_shards(opt, one, 0, NULL), FO_ERR_INVALID_ARGUMENT);
  cr_expect_eq(fo_optimizer_load_shards(opt, one, 1, (fo_stream_t)&s), FO_ERR_INVALID_ARGUMENT);
  cr_expect(strstr(fo_last_error(), "stream must be NULL"), "%s", fo_last_error());
  cr_expect_eq(fo_optimizer_load_shards(opt, one, 1, NULL), FO_ERR_IO);
  CK_OK(fo_optimizer_destroy(opt));
  cr_expect_eq(ck_dir_count(&none), 0);
  ck_dir_remove(&none);

  /* sharded: argument errors that can differ between ranks are agreed on */
  ck_dir d;
  ck_dir_make(&d);
  paths files;
  paths_make(&files, &d, "a", 2);
  fleet f;
  fleet_make(&f, &c, 2, 1, 1);
  fleet_run(&f, phase_save_gathered_root0, NULL);
  fleet_expect_calls_failed(&f, FO_ERR_NULL_POINTER, "rank 0 of 2: path is NULL",
                            "root's NULL path");
  file_arg save = {&files, NULL, 0, 0};
  fleet_run(&f, phase_save, &save);
  fleet_expect_calls_ok(&f, "per-rank save");
  per_rank_paths a = {{files.p[0], NULL}};
  fleet_run(&f, phase_load_each, &a);
  fleet_expect_calls_failed(&f, FO_ERR_NULL_POINTER, "rank 1 of 2: path is NULL",
                            "a NULL path on rank 1");
  a.p[1] = "";
  fleet_run(&f, phase_load_each, &a);
  fleet_expect_calls_failed(&f, FO_ERR_INVALID_ARGUMENT, "rank 1 of 2: path is empty",
                            "an empty path on rank 1");
  fleet_free(&f);
  ck_dir_remove(&d);
}
