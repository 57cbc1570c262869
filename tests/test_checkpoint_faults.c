/*
 * test_checkpoint_faults.c -- faults during a step, a load or a save, on
 * the CPU executor, injected through the internal test hook
 * fo_inject_fault() (host/fault.c; built only into the FO_TESTING
 * library the tests link):
 *
 *   - a step that fails once its work has started (as a CUDA launch
 *     failure would) returns the error; the optimizer is then faulted:
 *     step, zero_grad, sync_master and save refuse with
 *     FO_ERR_INVALID_STATE and the original error, reads still work, and
 *     loading a checkpoint clears it, after which the run continues
 *     bit-identical to one that never failed;
 *   - the same for a failing zero_grad and a load whose copies fail
 *     halfway;
 *   - a save whose write fails (disk full) returns FO_ERR_IO, leaves the
 *     previous checkpoint byte-identical and no temporary file;
 *   - a process killed halfway through a save leaves the previous
 *     checkpoint intact and loadable (the half-written temporary file is
 *     never taken for a checkpoint);
 *   - a failing collective of a communicator does not fault the state:
 *     the gradients are refused until zero_grad (host/dp/buckets.c), the
 *     parameters never changed.
 */
#define _POSIX_C_SOURCE 200809L

#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ckpt_harness.h"
#include "internal.h" /* fo_inject_fault */

static const ck_cfg cfg = {.label = "adamw-bf16",
                           .alg = FO_ALG_ADAMW,
                           .pd = FO_DTYPE_BF16,
                           .gd = FO_DTYPE_BF16,
                           .master = 1,
                           .scaler = 1,
                           .sched = 1,
                           .storage = FO_STORAGE_ARENA,
                           .exec = FO_EXEC_CPU};

static void expect_faulted(fo_optimizer *opt, fo_status original, const char *original_msg) {
  fo_status f;
  char msg[400];
  CK_OK(fo_optimizer_get_fault(opt, &f, msg, sizeof msg));
  cr_expect_eq(f, original, "fault %s", fo_status_string(f));
  cr_expect_not_null(strstr(msg, original_msg), "fault message: %s", msg);
  /* a directory of its own: a save that wrongly succeeds leaves nothing
   * behind to fail later runs */
  ck_dir d;
  char never[512];
  ck_dir_make(&d);
  ck_dir_file(&d, "never_written.safetensors", never, sizeof never);
  const struct {
    const char *name;
    fo_status st;
  } calls[] = {{"step", fo_optimizer_step(opt, NULL)},
               {"zero_grad", fo_optimizer_zero_grad(opt, NULL)},
               {"sync_master", fo_optimizer_sync_master(opt, NULL)},
               {"save", fo_optimizer_save(opt, never, NULL)}};
  for (size_t i = 0; i < sizeof calls / sizeof calls[0]; i++)
    cr_expect_eq(calls[i].st, FO_ERR_INVALID_STATE, "%s on a faulted optimizer: %s", calls[i].name,
                 fo_status_string(calls[i].st));
  cr_expect_eq(access(never, F_OK), -1, "a faulted optimizer saved a file");
  cr_expect_eq(ck_dir_count(&d), 0, "a faulted optimizer's save left a file");
  ck_dir_remove(&d);
  /* the refusal names the original error and the way out */
  cr_expect_eq(fo_optimizer_step(opt, NULL), FO_ERR_INVALID_STATE);
  cr_expect_not_null(strstr(fo_last_error(), original_msg), "%s", fo_last_error());
  cr_expect_not_null(strstr(fo_last_error(), "fo_optimizer_load"), "%s", fo_last_error());
  fo_step_info info;
  CK_OK(fo_optimizer_get_info(opt, &info)); /* reads still work */
}

static void expect_healthy(fo_optimizer *opt) {
  fo_status f;
  CK_OK(fo_optimizer_get_fault(opt, &f, NULL, 0));
  cr_expect_eq(f, FO_SUCCESS);
}

/* Fault at step `at` (after saving before it); load; continue to the end:
 * the result equals a run without the fault. */
static void fault_then_recover(fo_fault_point where, const char *call) {
  ck_dir d;
  ck_dir_make(&d);
  char path[128];
  ck_dir_file(&d, "c.safetensors", path, sizeof path);
  ck_model ref, m;
  ck_model_create(&ref, &cfg, 1);
  for (int s = 0; s < 9; s++) ck_step(&ref, s);
  ck_snap want;
  ck_snapshot(&ref, &want);
  ck_model_destroy(&ref);

  ck_model_create(&m, &cfg, 1);
  for (int s = 0; s < 4; s++) ck_step(&m, s);
  CK_OK(fo_optimizer_save(m.opt, path, NULL));
  ck_step(&m, 4);
  CK_OK(fo_inject_fault(m.opt, where));
  ck_grads(&m, 5);
  fo_status st =
      where == FO_FAULT_STEP ? fo_optimizer_step(m.opt, NULL) : fo_optimizer_zero_grad(m.opt, NULL);
  cr_expect_eq(st, FO_ERR_CUDA, "%s with an injected fault: %s", call, fo_status_string(st));
  cr_expect_not_null(strstr(fo_last_error(), "injected fault"), "%s", fo_last_error());
  CK_OK(fo_inject_fault(m.opt, FO_FAULT_NONE));
  expect_faulted(m.opt, FO_ERR_CUDA, "injected fault");

  CK_OK(fo_optimizer_load(m.opt, path, NULL));
  expect_healthy(m.opt);
  for (int s = 4; s < 9; s++) ck_step(&m, s);
  ck_snap got;
  ck_snapshot(&m, &got);
  ck_snap_expect_equal(&want, &got, "recovered run vs a run without the fault");
  ck_snap_free(&want);
  ck_snap_free(&got);
  ck_model_destroy(&m);
  ck_dir_remove(&d);
}

Test(faults, failing_step_faults_until_load) {
  fault_then_recover(FO_FAULT_STEP, "step");
}

Test(faults, failing_zero_grad_faults_until_load) {
  fault_then_recover(FO_FAULT_ZERO_GRAD, "zero_grad");
}

Test(faults, argument_errors_do_not_fault) {
  ck_model m;
  ck_model_create(&m, &cfg, 1);
  fo_status f;
  cr_expect_eq(fo_optimizer_step(m.opt, (fo_stream_t)&f), FO_ERR_INVALID_ARGUMENT);
  expect_healthy(m.opt);
  ck_step(&m, 0);
  ck_model_destroy(&m);
}

Test(faults, load_failing_halfway_faults_until_a_load_succeeds) {
  ck_dir d;
  ck_dir_make(&d);
  char path[128];
  ck_dir_file(&d, "l.safetensors", path, sizeof path);
  ck_model m;
  ck_model_create(&m, &cfg, 1);
  for (int s = 0; s < 3; s++) ck_step(&m, s);
  CK_OK(fo_optimizer_save(m.opt, path, NULL));
  ck_snap saved;
  ck_snapshot(&m, &saved);
  for (int s = 3; s < 6; s++) ck_step(&m, s);
  CK_OK(fo_inject_fault(m.opt, FO_FAULT_LOAD_APPLY));
  cr_expect_eq(fo_optimizer_load(m.opt, path, NULL), FO_ERR_CUDA);
  CK_OK(fo_inject_fault(m.opt, FO_FAULT_NONE));
  expect_faulted(m.opt, FO_ERR_CUDA, "of the checkpoint's tensors failed");
  CK_OK(fo_optimizer_load(m.opt, path, NULL));
  expect_healthy(m.opt);
  ck_snap got;
  ck_snapshot(&m, &got);
  ck_snap_expect_equal(&saved, &got, "state after the second load");
  ck_snap_free(&saved);
  ck_snap_free(&got);
  ck_model_destroy(&m);
  ck_dir_remove(&d);
}

Test(faults, failing_write_keeps_the_previous_checkpoint) {
  ck_dir d;
  ck_dir_make(&d);
  char path[128];
  ck_dir_file(&d, "w.safetensors", path, sizeof path);
  ck_model m;
  ck_model_create(&m, &cfg, 1);
  ck_step(&m, 0);
  CK_OK(fo_optimizer_save(m.opt, path, NULL));
  ck_bytes before = ck_read(path);
  ck_step(&m, 1);
  CK_OK(fo_inject_fault(m.opt, FO_FAULT_SAVE_WRITE));
  fo_status st = fo_optimizer_save(m.opt, path, NULL);
  cr_expect_eq(st, FO_ERR_IO, "%s", fo_status_string(st));
  cr_expect_not_null(strstr(fo_last_error(), "No space left on device"), "%s", fo_last_error());
  ck_bytes after = ck_read(path);
  cr_expect(before.n == after.n && memcmp(before.p, after.p, before.n) == 0,
            "the previous checkpoint changed");
  cr_expect_eq(ck_dir_count(&d), 1, "the temporary file is removed");
  expect_healthy(m.opt); /* a failed save does not touch the state */
  CK_OK(fo_inject_fault(m.opt, FO_FAULT_NONE));
  CK_OK(fo_optimizer_save(m.opt, path, NULL));
  CK_OK(fo_checkpoint_verify(path));
  free(before.p);
  free(after.p);
  ck_model_destroy(&m);
  ck_dir_remove(&d);
}

Test(faults, crash_halfway_through_a_save_keeps_the_previous_checkpoint) {
  ck_dir d;
  ck_dir_make(&d);
  char path[128];
  ck_dir_file(&d, "k.safetensors", path, sizeof path);
  ck_model m;
  ck_model_create(&m, &cfg, 1);
  ck_step(&m, 0);
  CK_OK(fo_optimizer_save(m.opt, path, NULL));
  ck_bytes before = ck_read(path);
  ck_snap saved;
  ck_snapshot(&m, &saved);
  ck_step(&m, 1);
  fflush(NULL);
  pid_t pid = fork();
  cr_assert_geq(pid, 0);
  if (pid == 0) { /* the saver that dies halfway */
    fo_inject_fault(m.opt, FO_FAULT_SAVE_CRASH);
    fo_optimizer_save(m.opt, path, NULL);
    _exit(3); /* not reached when the fault fires */
  }
  int status = 0;
  cr_assert_eq(waitpid(pid, &status, 0), pid);
  cr_expect(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "the saver was not killed (%d)",
            status);
  ck_bytes after = ck_read(path);
  cr_expect(before.n == after.n && memcmp(before.p, after.p, before.n) == 0,
            "the previous checkpoint changed");
  cr_expect_eq(ck_dir_count(&d), 2, "the killed saver left its temporary file");
  CK_OK(fo_checkpoint_verify(path));
  /* the previous checkpoint restores what it held */
  ck_model fresh;
  ck_model_create(&fresh, &cfg, 7);
  CK_OK(fo_optimizer_load(fresh.opt, path, NULL));
  ck_snap got;
  ck_snapshot(&fresh, &got);
  ck_snap_expect_equal(&saved, &got, "loaded after the crash");
  ck_snap_free(&saved);
  ck_snap_free(&got);
  ck_model_destroy(&fresh);
  free(before.p);
  free(after.p);
  ck_model_destroy(&m);
  ck_dir_remove(&d);
}

/* ------------------------------------------------- communicator faults */

static int failing_allreduce(void *ctx, void *buf, int64_t count, fo_dtype dtype, char *err,
                             size_t cap) {
  int *calls = ctx;
  (*calls)++;
  /* half the buffer summed, as a collective that died midway would */
  if (dtype == FO_DTYPE_F32 && count > 0) ((float *)buf)[0] *= 2.0f;
  snprintf(err, cap, "injected: peer rank 1 unreachable");
  return 5;
}

Test(faults, failing_collective_refuses_the_gradients_not_the_state) {
  float p[8] = {1, 2, 3, 4, 5, 6, 7, 8}, g[8] = {1, 1, 1, 1, 1, 1, 1, 1}, p0[8];
  memcpy(p0, p, sizeof p);
  fo_tensor_desc t[1] = {{8, 0, p, g, "w"}};
  fo_options o;
  fo_options_default(&o);
  fo_hparams h;
  fo_hparams_default(FO_ALG_ADAMW, &h);
  fo_optimizer *opt;
  CK_OK(fo_optimizer_create(&opt, &o, &h, 1, t, 1));
  int calls = 0;
  fo_comm_ops ops;
  memset(&ops, 0, sizeof ops);
  ops.struct_size = sizeof ops;
  ops.allreduce_sum = failing_allreduce;
  fo_comm *comm;
  CK_OK(fo_comm_create_host(&comm, &ops, &calls, 0, 2));
  CK_OK(fo_optimizer_set_comm(opt, comm, NULL));
  cr_expect_eq(fo_optimizer_step(opt, NULL), FO_ERR_COMM);
  cr_expect_not_null(strstr(fo_last_error(), "peer rank 1 unreachable"), "%s", fo_last_error());
  cr_expect(memcmp(p, p0, sizeof p) == 0, "parameters changed");
  expect_healthy(opt); /* only the gradients are partly summed */
  cr_expect_eq(fo_optimizer_step(opt, NULL), FO_ERR_COMM, "the gradients are refused");
  cr_expect(memcmp(p, p0, sizeof p) == 0, "parameters changed");
  CK_OK(fo_optimizer_zero_grad(opt, NULL));
  CK_OK(fo_optimizer_set_comm(opt, NULL, NULL));
  CK_OK(fo_optimizer_step(opt, NULL));
  fo_optimizer_destroy(opt);
  fo_comm_destroy(comm);
}
