/*
 * test_reliability_threads.c -- the edges of issue #20 (reliability, round
 * 2) on the CPU executor, across threads and processes:
 *
 *   threads           a call made while another thread is inside a call on
 *                     the same optimizer fails at once and changes nothing;
 *                     two threads stepping and saving lose no step;
 *   fork              a forked child's step is refused, its save works.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ckpt_harness.h"
#include "reliability.h"
#include "testutil.h"

/* -------------------------------------------------------------- threads */

/* A one-rank host communicator whose all-reduce holds the calling thread
 * inside fo_optimizer_step until the test releases it: a deterministic
 * window in which another thread calls on the same optimizer. */
typedef struct gate {
  atomic_int inside, release;
} gate;

static int gate_allreduce(void *ctx, void *buf, int64_t count, fo_dtype dtype, char *err,
                          size_t cap) {
  (void)buf, (void)count, (void)dtype;
  gate *g = ctx;
  atomic_store(&g->inside, 1);
  const double t0 = tu_now();
  while (!atomic_load(&g->release)) {
    if (tu_now() - t0 > 20.0) {
      snprintf(err, cap, "the test never released the gate");
      return 1;
    }
    struct timespec ts = {0, 100000};
    nanosleep(&ts, NULL);
  }
  return 0;
}

typedef struct stepper {
  fo_optimizer *opt;
  fo_status st;
  char msg[256];
} stepper;

static void *step_thread(void *arg) {
  stepper *s = arg;
  s->st = fo_optimizer_step(s->opt, NULL);
  snprintf(s->msg, sizeof s->msg, "%s", fo_last_error());
  return NULL;
}

static void expect_busy(fo_status st, const char *call) {
  cr_expect_eq(st, FO_ERR_INVALID_STATE, "%s during another thread's step: %s (%s)", call,
               fo_status_string(st), fo_last_error());
  cr_expect_neq(strstr(fo_last_error(), "another thread is inside a call on this optimizer"), NULL,
                "%s: %s", call, fo_last_error());
}

/* NAdam, so that the per-group mu_product accessors are among the calls
 * refused; with loss scaling, so that the scaler's are. */
static const ck_cfg nadam_cfg = {.label = "nadam",
                                 .alg = FO_ALG_NADAM,
                                 .pd = FO_DTYPE_F32,
                                 .gd = FO_DTYPE_F32,
                                 .scaler = 1,
                                 .storage = FO_STORAGE_ARENA,
                                 .exec = FO_EXEC_CPU};

/* Every call that reads or writes the state, made while another thread is
 * inside fo_optimizer_step, fails at once and changes nothing; the step
 * itself applies exactly once. */
Test(threads, a_call_during_another_threads_step_is_refused_at_once) {
  ck_dir dir;
  ck_dir_make(&dir);
  char path[128], never[128];
  ck_dir_file(&dir, "good.safetensors", path, sizeof path);
  ck_dir_file(&dir, "never.safetensors", never, sizeof never);
  ck_model m, ref;
  ck_model_create(&m, &nadam_cfg, 1);
  ck_model_create(&ref, &nadam_cfg, 1);
  ck_step(&m, 0);
  ck_step(&ref, 0);
  CK_OK(fo_optimizer_save(m.opt, path, NULL));
  ck_grads(&m, 1);
  ck_grads(&ref, 1);
  gate g;
  atomic_init(&g.inside, 0);
  atomic_init(&g.release, 0);
  fo_comm_ops ops;
  memset(&ops, 0, sizeof ops);
  ops.struct_size = sizeof ops;
  ops.allreduce_sum = gate_allreduce;
  fo_comm *comm = NULL;
  CK_OK(fo_comm_create_host(&comm, &ops, &g, 0, 1));
  CK_OK(fo_optimizer_set_comm(m.opt, comm, NULL));

  /* a scaler state the refused set would change (the skipped count) */
  fo_scaler_state scaler;
  CK_OK(fo_optimizer_get_scaler_state(m.opt, &scaler));
  scaler.skipped_steps += 5;
  stepper s = {m.opt, FO_ERR_INTERNAL, ""};
  pthread_t th;
  cr_assert_eq(pthread_create(&th, NULL, step_thread, &s), 0);
  const double t0 = tu_now();
  while (!atomic_load(&g.inside)) {
    cr_assert(tu_now() - t0 < 20.0, "the step never reached the all-reduce");
    struct timespec ts = {0, 100000};
    nanosleep(&ts, NULL);
  }
  fo_step_info info;
  fo_hparams h;
  float lr = 0.0f;
  int64_t n = 0, first = 0, count = 0;
  fo_status fault = FO_SUCCESS;
  expect_busy(fo_optimizer_step(m.opt, NULL), "step");
  expect_busy(fo_optimizer_zero_grad(m.opt, NULL), "zero_grad");
  expect_busy(fo_optimizer_sync_master(m.opt, NULL), "sync_master");
  expect_busy(fo_optimizer_save(m.opt, never, NULL), "save");
  expect_busy(fo_optimizer_save_gathered(m.opt, never, 0, NULL), "save_gathered");
  expect_busy(fo_optimizer_load(m.opt, path, NULL), "load");
  const char *paths[1] = {path};
  expect_busy(fo_optimizer_load_shards(m.opt, paths, 1, NULL), "load_shards");
  expect_busy(fo_optimizer_get_info(m.opt, &info), "get_info");
  expect_busy(fo_optimizer_get_step(m.opt, &n), "get_step");
  expect_busy(fo_optimizer_set_step(m.opt, 100), "set_step");
  expect_busy(fo_optimizer_get_scaler_state(m.opt, &scaler), "get_scaler_state");
  expect_busy(fo_optimizer_set_scaler_state(m.opt, &scaler), "set_scaler_state");
  expect_busy(fo_optimizer_set_lr(m.opt, -1, 0.5f), "set_lr");
  expect_busy(fo_optimizer_get_lr(m.opt, 0, &lr), "get_lr");
  lr = -1.0f;
  expect_busy(fo_optimizer_get_next_lr(m.opt, 0, &lr), "get_next_lr");
  cr_expect_eq(lr, -1.0f, "a refused get_next_lr wrote its output");
  expect_busy(fo_optimizer_get_hparams(m.opt, 0, &h), "get_hparams");
  fo_hparams other[2];
  ck_hparams(&nadam_cfg, other);
  other[0].lr = 0.5f;
  expect_busy(fo_optimizer_set_hparams(m.opt, 0, &other[0]), "set_hparams");
  float mu = 0.0f;
  expect_busy(fo_optimizer_get_mu_product(m.opt, 0, &mu), "get_mu_product");
  expect_busy(fo_optimizer_set_mu_product(m.opt, 0, 0.5f), "set_mu_product");
  expect_busy(fo_optimizer_get_fault(m.opt, &fault, NULL, 0), "get_fault");
  expect_busy(fo_optimizer_set_comm(m.opt, NULL, NULL), "set_comm");
  expect_busy(fo_optimizer_reduce_grads(m.opt, NULL), "reduce_grads");
  expect_busy(fo_optimizer_reduce_bucket(m.opt, 0, NULL), "reduce_bucket");
  expect_busy(fo_optimizer_num_buckets(m.opt, &n), "num_buckets");
  expect_busy(fo_optimizer_bucket_tensors(m.opt, 0, &first, &count), "bucket_tensors");
  atomic_store(&g.release, 1);
  cr_assert_eq(pthread_join(th, NULL), 0);
  cr_expect_eq(s.st, FO_SUCCESS, "the step: %s", s.msg);

  /* the step applied once, and nothing else happened: the same state as a
   * run that made the one step alone (one rank: the sum is the gradient) */
  CK_OK(fo_optimizer_step(ref.opt, NULL));
  ck_snap a, b;
  ck_snapshot(&m, &a);
  ck_snapshot(&ref, &b);
  ck_snap_expect_equal(&b, &a, "one step beside refused calls");
  float mu_m = 0.0f, mu_ref = 1.0f;
  CK_OK(fo_optimizer_get_mu_product(m.opt, 0, &mu_m));
  CK_OK(fo_optimizer_get_mu_product(ref.opt, 0, &mu_ref));
  cr_expect(mu_m == mu_ref && mu_m < 1.0f, "mu_product %.9g after the step, %.9g alone", mu_m,
            mu_ref);
  cr_expect_eq(access(never, F_OK), -1, "a refused save wrote a file");
  CK_OK(fo_optimizer_set_comm(m.opt, NULL, NULL));
  CK_OK(fo_comm_destroy(comm));
  ck_snap_free(&a);
  ck_snap_free(&b);
  ck_model_destroy(&ref);
  ck_model_destroy(&m);
  ck_dir_remove(&dir);
}

/* Two threads hammer one optimizer (steps, and saves on one of them) until
 * each has made `want` successful calls: every call either succeeds or
 * fails with FO_ERR_INVALID_STATE, the step count equals the number of
 * successful steps (without the flag, concurrent steps lose increments),
 * and the last save verifies and loads.  A refused thread yields, so that
 * both get their turns. */
typedef struct hammer {
  fo_optimizer *opt;
  const char *path; /* NULL: steps only */
  int want;
  int ok_steps, ok_saves, busy, other;
  fo_status other_status;
} hammer;

static void *hammer_thread(void *arg) {
  hammer *h = arg;
  const double t0 = tu_now();
  for (int i = 0; h->ok_steps + h->ok_saves < h->want && tu_now() - t0 < 20.0; i++) {
    const int save = h->path && i % 8 == 7;
    fo_status st =
        save ? fo_optimizer_save(h->opt, h->path, NULL) : fo_optimizer_step(h->opt, NULL);
    if (st == FO_SUCCESS) {
      save ? h->ok_saves++ : h->ok_steps++;
    } else if (st == FO_ERR_INVALID_STATE && strstr(fo_last_error(), "another thread")) {
      h->busy++;
      sched_yield();
    } else {
      h->other++, h->other_status = st;
    }
  }
  return NULL;
}

Test(threads, two_threads_on_one_optimizer_lose_no_step) {
  ck_dir dir;
  ck_dir_make(&dir);
  char path[128];
  ck_dir_file(&dir, "hammer.safetensors", path, sizeof path);
  ck_cfg c = sgd_cfg;
  c.scaler = 0; /* every step applies: the count is the number of steps */
  ck_model m;
  ck_model_create(&m, &c, 1);
  ck_grads(&m, 0);
  hammer h[2] = {{m.opt, NULL, 1500, 0, 0, 0, 0, FO_SUCCESS},
                 {m.opt, path, 1500, 0, 0, 0, 0, FO_SUCCESS}};
  pthread_t th[2];
  for (int k = 0; k < 2; k++) cr_assert_eq(pthread_create(&th[k], NULL, hammer_thread, &h[k]), 0);
  for (int k = 0; k < 2; k++) cr_assert_eq(pthread_join(th[k], NULL), 0);
  for (int k = 0; k < 2; k++)
    cr_expect_eq(h[k].other, 0, "thread %d: %d calls failed otherwise (%s)", k, h[k].other,
                 fo_status_string(h[k].other_status));
  for (int k = 0; k < 2; k++)
    cr_expect_eq(h[k].ok_steps + h[k].ok_saves, h[k].want, "thread %d: %d + %d calls in 20 s", k,
                 h[k].ok_steps, h[k].ok_saves);
  const fo_step_info i = info_of(m.opt);
  cr_expect_eq(i.step, h[0].ok_steps + h[1].ok_steps,
               "%lld steps counted, %d + %d succeeded (%d + %d refused)", (long long)i.step,
               h[0].ok_steps, h[1].ok_steps, h[0].busy, h[1].busy);
  cr_log_info("threads: %d + %d steps and %d saves succeeded, %d + %d calls refused", h[0].ok_steps,
              h[1].ok_steps, h[1].ok_saves, h[0].busy, h[1].busy);
  if (h[1].ok_saves > 0) { /* the last one written */
    CK_OK(fo_checkpoint_verify(path));
    ck_model fresh;
    ck_model_create(&fresh, &c, 2);
    CK_OK(fo_optimizer_load(fresh.opt, path, NULL));
    ck_model_destroy(&fresh);
  }
  ck_model_destroy(&m);
  ck_dir_remove(&dir);
}

/* ----------------------------------------------------------------- fork */

/* A step in a forked child is refused (OpenMP's threads are not there);
 * a save in the child works and is an ordinary checkpoint.  The child runs
 * under an alarm, so a hang fails the test instead of stalling it. */
Test(fork, a_forked_child_cannot_step_but_can_save) {
  ck_dir dir;
  ck_dir_make(&dir);
  char path[128];
  ck_dir_file(&dir, "child.safetensors", path, sizeof path);
  /* one tensor of 100003 elements over 2 threads: the step runs an OpenMP
   * team, whose pool a forked child does not inherit */
  const int64_t n = 100003;
  float *p = malloc((size_t)n * sizeof *p), *g = malloc((size_t)n * sizeof *g);
  cr_assert(p && g);
  ck_fill(FO_DTYPE_F32, p, n, 11, 0, 0, 1.0f);
  ck_fill(FO_DTYPE_F32, g, n, 12, 1, 0, 1.0f);
  fo_tensor_desc t = {n, 0, p, g, "w"};
  fo_options o;
  fo_options_default(&o);
  o.num_threads = 2;
  fo_hparams hp;
  fo_hparams_default(FO_ALG_ADAMW, &hp);
  fo_optimizer *opt = NULL;
  CK_OK(fo_optimizer_create(&opt, &o, &hp, 1, &t, 1));
  CK_OK(fo_optimizer_step(opt, NULL));
  pid_t child = fork();
  cr_assert_neq(child, -1);
  if (child == 0) {
    alarm(20);
    int bad = 0;
    if (fo_optimizer_step(opt, NULL) != FO_ERR_INVALID_STATE || !strstr(fo_last_error(), "fork"))
      bad |= 1;
    if (fo_optimizer_sync_master(opt, NULL) != FO_ERR_INVALID_STATE) bad |= 2;
    if (fo_optimizer_zero_grad(opt, NULL) != FO_ERR_INVALID_STATE) bad |= 4;
    if (fo_optimizer_save(opt, path, NULL) != FO_SUCCESS) bad |= 8;
    int64_t s = -1;
    if (fo_optimizer_get_step(opt, &s) != FO_SUCCESS || s != 1) bad |= 16;
    _exit(bad);
  }
  int status = 0;
  cr_assert_eq(waitpid(child, &status, 0), child);
  cr_assert(WIFEXITED(status), "the child hung or died (signal %d)",
            WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  cr_expect_eq(WEXITSTATUS(status), 0, "failed checks (bits): %d", WEXITSTATUS(status));
  /* the child's checkpoint is the parent's state; the parent steps on */
  float *q = malloc((size_t)n * sizeof *q), *gq = calloc((size_t)n, sizeof *gq);
  cr_assert(q && gq);
  ck_fill(FO_DTYPE_F32, q, n, 13, 0, 0, 1.0f);
  fo_tensor_desc t2 = {n, 0, q, gq, "w"};
  fo_optimizer *fresh = NULL;
  CK_OK(fo_optimizer_create(&fresh, &o, &hp, 1, &t2, 1));
  CK_OK(fo_optimizer_load(fresh, path, NULL));
  cr_expect(memcmp(p, q, (size_t)n * sizeof *p) == 0, "the child's checkpoint differs");
  CK_OK(fo_optimizer_step(opt, NULL));
  cr_expect_eq(info_of(opt).step, 2);
  fo_optimizer_destroy(fresh);
  fo_optimizer_destroy(opt);
  free(p), free(g), free(q), free(gq);
  ck_dir_remove(&dir);
}
