/*
 * test_reliability.c -- the edges of issue #20 (reliability, round 2) on the
 * CPU executor:
 *
 *   scale_floor       200 consecutive overflows end at FO_LOSS_SCALE_MIN,
 *                     with the parameters and state untouched and a
 *                     checkpoint that verifies and loads; a scale of 0, a
 *                     subnormal or NaN written through the scale pointer
 *                     (a scale below the floor, a non-finite gradient
 *                     coefficient) skips the step;
 *   step_limit        set_step, load and step keep the counters at or
 *                     below FO_MAX_STEP;
 *   not_regular       load and verify of a FIFO (no writer) return at once;
 *   threads           a call made while another thread is inside a call on
 *                     the same optimizer fails at once and changes nothing;
 *                     two threads stepping and saving lose no step;
 *   fork              a forked child's step is refused, its save works;
 *   header_limit      the largest header the writer makes loads; one byte
 *                     more is refused by the save, nothing written;
 *   temp_files        a save removes dead saves' temporaries of its path
 *                     and nothing else; names up to NAME_MAX save and load;
 *   crafted_header    a 40 MB header of tiny JSON values is refused by its
 *                     length before parsing (memory and time bounded by the
 *                     registered tensors);
 *
 * The GPU tier of the scale floor is in test_gpu_mixed_precision.c.
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

#include "checkpoint_format.h" /* fo_ckpt_header: the writer's header */
#include "ckpt_harness.h"
#include "internal.h" /* fo_inject_fault */

/* fp16 parameters with master weights and fp32 gradients, loss scaling
 * from 2^16 with hysteresis 1: after 142 backoffs the scale would be
 * subnormal without a floor, 0 after 166. */
static const ck_cfg fp16_cfg = {.label = "adamw-fp16",
                                .alg = FO_ALG_ADAMW,
                                .pd = FO_DTYPE_F16,
                                .gd = FO_DTYPE_F32,
                                .master = 1,
                                .amsgrad = 1,
                                .scaler = 1,
                                .init_scale = 65536.0f,
                                .hysteresis = 1,
                                .storage = FO_STORAGE_EXTERNAL,
                                .exec = FO_EXEC_CPU};

static fo_step_info info_of(fo_optimizer *opt) {
  fo_step_info i;
  CK_OK(fo_optimizer_get_info(opt, &i));
  return i;
}

/* Gradients of step s times the current scale; with overflow, one element
 * inf (as an fp16 backward pass that overflowed would leave it). */
static void grads_scaled(ck_model *m, int s, int overflow) {
  const float scale = info_of(m->opt).loss_scale;
  for (int i = 0; i < CK_TENSORS; i++)
    if (ck_sizes[i] > 0)
      ck_fill(m->cfg.gd, m->g[i], ck_sizes[i], 4242, (uint64_t)s + 1, (uint64_t)i, scale);
  if (overflow) {
    const float inf = (s % 2) ? INFINITY : -INFINITY;
    CK_OK(fo_convert_from_f32(m->cfg.gd, &inf, (char *)m->g[2] + 4 * (size_t)(s % 1000), 1));
  }
}

/* Every parameter, master weight and moment is finite. */
static void expect_all_finite(const ck_snap *s, const char *what) {
  for (int i = 0; i < CK_TENSORS; i++)
    for (int r = 0; r < FO_ROLE_COUNT; r++) {
      if (!s->bytes[i][r]) continue;
      size_t n = r == FO_ROLE_PARAM ? s->bytes[i][r] / 2 : s->bytes[i][r] / 4;
      for (size_t k = 0; k < n; k++) {
        float v;
        if (r == FO_ROLE_PARAM)
          CK_OK(fo_convert_to_f32(FO_DTYPE_F16, (const uint16_t *)s->buf[i][r] + k, &v, 1));
        else
          v = ((const float *)s->buf[i][r])[k];
        cr_assert(isfinite(v), "%s: tensor %d role %d element %zu is %g", what, i, r, k, (double)v);
      }
    }
}

/* The buffers and hyper-parameters of a and b are bit-identical (the step
 * info is compared by the caller). */
static void expect_same_buffers(const ck_snap *a, const ck_snap *b, const char *what) {
  ck_snap x = *a;
  x.info = b->info;
  ck_snap_expect_equal(&x, b, what);
}

Test(scale_floor, two_hundred_overflows_end_at_a_valid_scale_with_nothing_changed) {
  cr_assert_eq(FO_LOSS_SCALE_MIN, FLT_MIN, "the documented floor is the smallest normal float");
  ck_dir dir;
  ck_dir_make(&dir);
  char path[128];
  ck_dir_file(&dir, "floor.safetensors", path, sizeof path);
  ck_model m;
  ck_model_create(&m, &fp16_cfg, 3);
  for (int s = 0; s < 3; s++) { /* clean steps: every moment non-zero */
    grads_scaled(&m, s, 0);
    CK_OK(fo_optimizer_step(m.opt, NULL));
  }
  ck_snap before;
  ck_snapshot(&m, &before);
  cr_assert_eq(before.info.step, 3);

  float last = before.info.loss_scale;
  for (int s = 3; s < 203; s++) {
    grads_scaled(&m, s, 1);
    CK_OK(fo_optimizer_step(m.opt, NULL));
    const fo_step_info i = info_of(m.opt);
    cr_assert(i.last_step_skipped, "overflow %d was not skipped", s - 2);
    cr_assert(isnormal(i.loss_scale) && i.loss_scale >= FO_LOSS_SCALE_MIN,
              "after overflow %d the scale is %a", s - 2, (double)i.loss_scale);
    cr_assert(i.loss_scale == FO_LOSS_SCALE_MIN || i.loss_scale == last * 0.5f,
              "overflow %d: %a after %a", s - 2, (double)i.loss_scale, (double)last);
    last = i.loss_scale;
  }
  ck_snap after;
  ck_snapshot(&m, &after);
  cr_expect_eq(after.info.loss_scale, FO_LOSS_SCALE_MIN, "scale %a", (double)after.info.loss_scale);
  cr_expect_eq(after.info.step, 3);
  cr_expect_eq(after.info.skipped_steps, 200);
  expect_same_buffers(&before, &after, "after 200 overflows");

  /* whatever save writes, load accepts: the file verifies and resumes */
  CK_OK(fo_optimizer_save(m.opt, path, NULL));
  CK_OK(fo_checkpoint_verify(path));
  ck_model fresh;
  ck_model_create(&fresh, &fp16_cfg, 99);
  CK_OK(fo_optimizer_load(fresh.opt, path, NULL));
  ck_snap loaded;
  ck_snapshot(&fresh, &loaded);
  ck_snap_expect_equal(&after, &loaded, "loaded after 200 overflows");

  /* the next clean step at the floor applies, and writes no NaN */
  for (ck_model *x = &m; x; x = x == &m ? &fresh : NULL) {
    grads_scaled(x, 300, 0);
    CK_OK(fo_optimizer_step(x->opt, NULL));
    const fo_step_info i = info_of(x->opt);
    cr_expect_eq(i.step, 4);
    cr_expect(!i.last_step_skipped);
    cr_expect(isfinite(i.grad_coef) && i.grad_coef > 0.0f, "coef %g", (double)i.grad_coef);
    ck_snap now;
    ck_snapshot(x, &now);
    expect_all_finite(&now, "the clean step at the floor");
    ck_snap_free(&now);
  }
  ck_snap_free(&before);
  ck_snap_free(&after);
  ck_snap_free(&loaded);
  ck_model_destroy(&fresh);
  ck_model_destroy(&m);
  ck_dir_remove(&dir);
}

/* A scale that is 0, subnormal or NaN (written through the pointer, as a
 * buggy caller might) makes 1/scale non-finite: the step must be skipped
 * like an overflow, the scale restart at the floor, and the next step
 * apply. */
Test(scale_floor, a_non_finite_coefficient_skips_the_step) {
  const float bad[4] = {0.0f, 0x1p-127f, 0x1p-149f, NAN};
  for (int b = 0; b < 4; b++) {
    ck_model m;
    ck_model_create(&m, &fp16_cfg, 5 + (uint64_t)b);
    for (int s = 0; s < 2; s++) {
      grads_scaled(&m, s, 0);
      CK_OK(fo_optimizer_step(m.opt, NULL));
    }
    float *scale = NULL;
    CK_OK(fo_optimizer_loss_scale_ptr(m.opt, &scale));
    *scale = bad[b];
    /* a backward pass with this scale: the gradients times 0 (or tiny) */
    for (int i = 0; i < CK_TENSORS; i++)
      if (ck_sizes[i] > 0)
        ck_fill(m.cfg.gd, m.g[i], ck_sizes[i], 4242, 9, (uint64_t)i, b == 0 ? 0.0f : 1e-3f);
    ck_snap before;
    ck_snapshot(&m, &before);
    CK_OK(fo_optimizer_step(m.opt, NULL));
    ck_snap after;
    ck_snapshot(&m, &after);
    cr_expect(after.info.last_step_skipped, "scale %a: the step was applied", (double)bad[b]);
    if (!(1.0f / bad[b] <= FLT_MAX)) /* 2^-127 still has a finite inverse */
      cr_expect(!isfinite(after.info.grad_coef), "scale %a: coef %g", (double)bad[b],
                (double)after.info.grad_coef);
    cr_expect_eq(after.info.step, 2, "scale %a", (double)bad[b]);
    cr_expect_eq(after.info.skipped_steps, 1, "scale %a", (double)bad[b]);
    cr_expect_eq(after.info.loss_scale, FO_LOSS_SCALE_MIN, "scale %a became %a", (double)bad[b],
                 (double)after.info.loss_scale);
    expect_same_buffers(&before, &after, "a skipped non-finite coefficient");
    grads_scaled(&m, 10, 0);
    CK_OK(fo_optimizer_step(m.opt, NULL));
    cr_expect_eq(info_of(m.opt).step, 3, "scale %a: the next step", (double)bad[b]);
    ck_snap next;
    ck_snapshot(&m, &next);
    expect_all_finite(&next, "the step after");
    ck_snap_free(&before);
    ck_snap_free(&after);
    ck_snap_free(&next);
    ck_model_destroy(&m);
  }
}

/* ------------------------------------------------------------ step limit */

static const ck_cfg sgd_cfg = {.label = "sgd",
                               .alg = FO_ALG_SGD,
                               .pd = FO_DTYPE_F32,
                               .gd = FO_DTYPE_F32,
                               .momentum = 0.9f,
                               .scaler = 1,
                               .storage = FO_STORAGE_ARENA,
                               .exec = FO_EXEC_CPU};

Test(step_limit, set_step_refuses_counts_past_the_maximum) {
  ck_model m;
  ck_model_create(&m, &sgd_cfg, 1);
  ck_step(&m, 0);
  const int64_t bad[3] = {INT64_MAX, FO_MAX_STEP + 1, -1};
  for (int b = 0; b < 3; b++) {
    cr_expect_eq(fo_optimizer_set_step(m.opt, bad[b]), FO_ERR_INVALID_ARGUMENT, "set_step(%lld)",
                 (long long)bad[b]);
    cr_expect_neq(strstr(fo_last_error(), "FO_MAX_STEP"), NULL, "%s", fo_last_error());
    cr_expect_eq(info_of(m.opt).step, 1, "a refused set_step(%lld) changed the count",
                 (long long)bad[b]);
  }
  /* the largest count is accepted, and the step that would pass it is
   * refused without changing anything */
  CK_OK(fo_optimizer_set_step(m.opt, FO_MAX_STEP - 1));
  ck_step(&m, 1);
  cr_expect_eq(info_of(m.opt).step, FO_MAX_STEP);
  ck_snap before, after;
  ck_snapshot(&m, &before);
  ck_grads(&m, 2);
  cr_expect_eq(fo_optimizer_step(m.opt, NULL), FO_ERR_INVALID_STATE);
  cr_expect_neq(strstr(fo_last_error(), "FO_MAX_STEP"), NULL, "%s", fo_last_error());
  ck_snapshot(&m, &after);
  ck_snap_expect_equal(&before, &after, "a refused step");
  /* and it is usable again once the count is set back */
  CK_OK(fo_optimizer_set_step(m.opt, 7));
  ck_step(&m, 2);
  cr_expect_eq(info_of(m.opt).step, 8);
  ck_snap_free(&before);
  ck_snap_free(&after);
  ck_model_destroy(&m);
}

/* A checkpoint at the maximum loads (save writes it, so load takes it),
 * and the loaded optimizer refuses the step past it; one that would need
 * more is refused by load (test_checkpoint_errors: "step past FO_MAX_STEP"). */
Test(step_limit, a_checkpoint_at_the_maximum_loads_and_refuses_the_next_step) {
  ck_dir dir;
  ck_dir_make(&dir);
  char path[128];
  ck_dir_file(&dir, "max.safetensors", path, sizeof path);
  ck_model m, fresh;
  ck_model_create(&m, &sgd_cfg, 1);
  ck_step(&m, 0);
  CK_OK(fo_optimizer_set_step(m.opt, FO_MAX_STEP));
  CK_OK(fo_optimizer_save(m.opt, path, NULL));
  ck_model_create(&fresh, &sgd_cfg, 2);
  CK_OK(fo_optimizer_load(fresh.opt, path, NULL));
  cr_expect_eq(info_of(fresh.opt).step, FO_MAX_STEP);
  ck_grads(&fresh, 1);
  cr_expect_eq(fo_optimizer_step(fresh.opt, NULL), FO_ERR_INVALID_STATE, "%s", fo_last_error());
  cr_expect_eq(info_of(fresh.opt).step, FO_MAX_STEP);
  /* a load of an earlier checkpoint makes it usable again */
  CK_OK(fo_optimizer_set_step(m.opt, 5));
  CK_OK(fo_optimizer_save(m.opt, path, NULL));
  CK_OK(fo_optimizer_load(fresh.opt, path, NULL));
  CK_OK(fo_optimizer_step(fresh.opt, NULL));
  cr_expect_eq(info_of(fresh.opt).step, 6);
  ck_model_destroy(&fresh);
  ck_model_destroy(&m);
  ck_dir_remove(&dir);
}

/* ---------------------------------------------------------- not regular */

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* A FIFO nobody writes: a blocking open would wait forever.  The calls run
 * in a child with an alarm, so that a regression fails the test (the
 * child dies of SIGALRM) instead of hanging it. */
Test(not_regular, load_and_verify_of_a_fifo_return_at_once) {
  ck_dir dir;
  ck_dir_make(&dir);
  char fifo[128];
  ck_dir_file(&dir, "pipe.safetensors", fifo, sizeof fifo);
  cr_assert_eq(mkfifo(fifo, 0600), 0, "mkfifo: %s", strerror(errno));
  ck_model m;
  ck_model_create(&m, &sgd_cfg, 1);
  ck_step(&m, 0);
  ck_snap before;
  ck_snapshot(&m, &before);
  pid_t child = fork();
  cr_assert_neq(child, -1);
  if (child == 0) {
    alarm(10);
    int bad = 0;
    double t0 = now_s();
    fo_status st = fo_checkpoint_verify(fifo);
    if (st != FO_ERR_IO || !strstr(fo_last_error(), "not a regular file")) bad |= 1;
    st = fo_optimizer_load(m.opt, fifo, NULL);
    if (st != FO_ERR_IO || !strstr(fo_last_error(), "not a regular file")) bad |= 2;
    const char *paths[1] = {fifo};
    st = fo_optimizer_load_shards(m.opt, paths, 1, NULL);
    if (st != FO_ERR_IO) bad |= 4;
    if (now_s() - t0 > 2.0) bad |= 8;
    _exit(bad);
  }
  int status = 0;
  cr_assert_eq(waitpid(child, &status, 0), child);
  cr_assert(WIFEXITED(status), "the child hung on the FIFO (signal %d)",
            WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  cr_expect_eq(WEXITSTATUS(status), 0, "failed checks (bits): %d", WEXITSTATUS(status));
  /* and in this process, the message and nothing changed */
  cr_expect_eq(fo_checkpoint_verify(fifo), FO_ERR_IO);
  cr_expect_neq(strstr(fo_last_error(), "pipe.safetensors"), NULL, "%s", fo_last_error());
  cr_expect_eq(fo_optimizer_load(m.opt, fifo, NULL), FO_ERR_IO);
  ck_snap after;
  ck_snapshot(&m, &after);
  ck_snap_expect_equal(&before, &after, "a refused FIFO");
  /* /dev/null is a character device: refused too */
  cr_expect_eq(fo_checkpoint_verify("/dev/null"), FO_ERR_IO);
  ck_snap_free(&before);
  ck_snap_free(&after);
  ck_model_destroy(&m);
  ck_dir_remove(&dir);
}

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
  const double t0 = now_s();
  while (!atomic_load(&g->release)) {
    if (now_s() - t0 > 20.0) {
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
  ck_model_create(&m, &sgd_cfg, 1);
  ck_model_create(&ref, &sgd_cfg, 1);
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

  stepper s = {m.opt, FO_ERR_INTERNAL, ""};
  pthread_t th;
  cr_assert_eq(pthread_create(&th, NULL, step_thread, &s), 0);
  const double t0 = now_s();
  while (!atomic_load(&g.inside)) {
    cr_assert(now_s() - t0 < 20.0, "the step never reached the all-reduce");
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
  expect_busy(fo_optimizer_set_lr(m.opt, -1, 0.5f), "set_lr");
  expect_busy(fo_optimizer_get_lr(m.opt, 0, &lr), "get_lr");
  expect_busy(fo_optimizer_get_hparams(m.opt, 0, &h), "get_hparams");
  fo_hparams other[2];
  ck_hparams(&sgd_cfg, other);
  other[0].lr = 0.5f;
  expect_busy(fo_optimizer_set_hparams(m.opt, 0, &other[0]), "set_hparams");
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
  const double t0 = now_s();
  for (int i = 0; h->ok_steps + h->ok_saves < h->want && now_s() - t0 < 20.0; i++) {
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

/* ------------------------------------------------------- header limit */

/* An optimizer of one fp32 SGD tensor (no state: only the parameters are
 * saved) whose name is len bytes of 'n'. */
typedef struct named {
  fo_optimizer *opt;
  char *name;
  float p[3], g[3];
} named;

static void named_create(named *x, size_t len, uint64_t seed) {
  x->name = malloc(len + 1);
  cr_assert_not_null(x->name);
  memset(x->name, 'n', len);
  x->name[len] = '\0';
  for (int k = 0; k < 3; k++) x->p[k] = ck_value(seed, 0, 0, (uint64_t)k);
  for (int k = 0; k < 3; k++) x->g[k] = ck_value(seed, 1, 0, (uint64_t)k);
  fo_tensor_desc t = {3, 0, x->p, x->g, x->name};
  fo_options o;
  fo_options_default(&o);
  o.algorithm = FO_ALG_SGD;
  fo_hparams h;
  fo_hparams_default(FO_ALG_SGD, &h);
  CK_OK(fo_optimizer_create(&x->opt, &o, &h, 1, &t, 1));
}

static void named_destroy(named *x) {
  fo_optimizer_destroy(x->opt);
  free(x->name);
}

/* The header a save of an optimizer with a name of len bytes writes, or 0
 * when the writer refuses it as too large. */
static size_t header_len(size_t len) {
  named x;
  named_create(&x, len, 1);
  fo_ckpt_plan plan;
  CK_OK(fo_ckpt_plan_build("test", x.opt, &plan));
  char *text = NULL;
  size_t n = 0;
  fo_status st = fo_ckpt_header("test", x.opt, x.opt->state, &plan, &text, &n);
  cr_assert(st == FO_SUCCESS || st == FO_ERR_INVALID_STATE, "%s", fo_last_error());
  free(text);
  fo_ckpt_plan_free(&plan);
  named_destroy(&x);
  return st == FO_SUCCESS ? n : 0;
}

static uint64_t file_header_len(const char *path) {
  unsigned char b[8];
  FILE *f = fopen(path, "rb");
  cr_assert_not_null(f);
  cr_assert_eq(fread(b, 1, 8, f), 8u);
  fclose(f);
  uint64_t n = 0;
  for (int i = 7; i >= 0; i--) n = n << 8 | b[i];
  return n;
}

/* The largest header the writer makes is one the reader takes: the save
 * with the longest name that fits loads, and one byte more is refused by
 * the save itself, before anything is written. */
Test(header_limit, the_largest_state_save_accepts_loads) {
  const size_t limit = 100000000; /* safetensors' limit, the reader's */
  const size_t h0 = header_len(1000), h1 = header_len(2000);
  cr_assert(h1 > h0 && h0 > 0);
  /* The header grows linearly with the name (it appears more than once):
   * start from the linear estimate, then bisect between a name that fits
   * and one that does not (each probe builds a ~100 MB header, so a search
   * byte by byte would take minutes). */
  const size_t per_1000 = h1 - h0;
  size_t lo = 1000 + (limit - h0) / per_1000 * 1000 - 2000, hi = lo + 4000;
  cr_assert(header_len(lo) != 0 && header_len(hi) == 0, "the estimate [%zu, %zu] misses", lo, hi);
  while (hi - lo > 1) {
    const size_t mid = lo + (hi - lo) / 2;
    if (header_len(mid) != 0)
      lo = mid;
    else
      hi = mid;
  }
  const size_t len = lo;
  const size_t largest = header_len(len);
  cr_assert(largest <= limit && largest > limit - 64, "header %zu for a %zu-byte name", largest,
            len);

  ck_dir dir;
  ck_dir_make(&dir);
  char path[128];
  ck_dir_file(&dir, "large.safetensors", path, sizeof path);
  named x, y, z;
  named_create(&x, len, 1);
  CK_OK(fo_optimizer_step(x.opt, NULL));
  CK_OK(fo_optimizer_save(x.opt, path, NULL));
  cr_expect_eq(file_header_len(path), largest);
  CK_OK(fo_checkpoint_verify(path));
  named_create(&y, len, 2);
  CK_OK(fo_optimizer_load(y.opt, path, NULL));
  cr_expect(memcmp(x.p, y.p, sizeof x.p) == 0, "the loaded parameters differ");

  /* one byte more: refused by the save, the old file untouched, no
   * temporary file */
  ck_bytes before = ck_read(path);
  named_create(&z, len + 1, 3);
  cr_expect_eq(fo_optimizer_save(z.opt, path, NULL), FO_ERR_INVALID_STATE);
  cr_expect_neq(strstr(fo_last_error(), "more than the 100000000"), NULL, "%s", fo_last_error());
  ck_bytes after = ck_read(path);
  cr_expect(before.n == after.n && memcmp(before.p, after.p, before.n) == 0,
            "a refused save changed the file");
  cr_expect_eq(ck_dir_count(&dir), 1, "a refused save left a file behind");
  free(before.p);
  free(after.p);
  named_destroy(&x);
  named_destroy(&y);
  named_destroy(&z);
  ck_dir_remove(&dir);
}

/* ------------------------------------------------------ temporary files */

/* A process that has exited (and been reaped): its pid names no process. */
static pid_t dead_pid(void) {
  pid_t c = fork();
  cr_assert_neq(c, -1);
  if (c == 0) _exit(0);
  cr_assert_eq(waitpid(c, NULL, 0), c);
  return c;
}

static void touch(const char *dir, const char *name) {
  char f[1200];
  snprintf(f, sizeof f, "%s/%s", dir, name);
  ck_write(f, "stale", 5);
}

static int exists(const char *dir, const char *name) {
  char f[1200];
  struct stat sb;
  snprintf(f, sizeof f, "%s/%s", dir, name);
  return lstat(f, &sb) == 0;
}

/* A save removes the temporary files that dead processes' saves of the
 * same path left, and nothing else. */
Test(temp_files, a_save_removes_stale_temporaries_of_its_path_only) {
  ck_dir dir;
  ck_dir_make(&dir);
  char path[128], outside[128];
  ck_dir_file(&dir, "ck.safetensors", path, sizeof path);
  snprintf(outside, sizeof outside, "%s.outside", dir.path);
  ck_write(outside, "keep", 4);
  ck_model m;
  ck_model_create(&m, &sgd_cfg, 1);
  ck_step(&m, 0);
  CK_OK(fo_optimizer_save(m.opt, path, NULL));
  const long dead = (long)dead_pid(), self = (long)getpid();
  char gone[2][96], kept[10][96];
  snprintf(gone[0], 96, "ck.safetensors.tmp-%ld-deadbeef", dead);
  snprintf(gone[1], 96, "ck.safetensors.tmp-%ld-0123abcd", dead);
  snprintf(kept[0], 96, "ck.safetensors.tmp-%ld-deadbeef", self); /* this process */
  snprintf(kept[1], 96, "ck.safetensors.tmp-%d-deadbeef", 1);     /* alive */
  snprintf(kept[2], 96, "ck.safetensors.tmp-%ld-deadbeeg", dead); /* not hex */
  snprintf(kept[3], 96, "ck.safetensors.tmp-%ld-DEADBEEF", dead); /* not ours */
  snprintf(kept[4], 96, "ck.safetensors.tmp-%ld-deadbee", dead);  /* 7 digits */
  snprintf(kept[5], 96, "ck.safetensors.tmp-%ld-deadbeef.bak", dead);
  snprintf(kept[6], 96, "other.safetensors.tmp-%ld-deadbeef", dead); /* another path */
  snprintf(kept[7], 96, "ck.safetensors.tmp-notes");
  snprintf(kept[8], 96, "ck.safetensors.tmp-%ld-12345678", dead); /* a directory */
  snprintf(kept[9], 96, "ck.safetensors.tmp-%ld-87654321", dead); /* a symlink */
  for (int i = 0; i < 2; i++) touch(dir.path, gone[i]);
  for (int i = 0; i < 8; i++) touch(dir.path, kept[i]);
  char f[1200];
  snprintf(f, sizeof f, "%s/%s", dir.path, kept[8]);
  cr_assert_eq(mkdir(f, 0700), 0);
  snprintf(f, sizeof f, "%s/%s", dir.path, kept[9]);
  cr_assert_eq(symlink(outside, f), 0);

  ck_step(&m, 1);
  CK_OK(fo_optimizer_save(m.opt, path, NULL));
  for (int i = 0; i < 2; i++) cr_expect(!exists(dir.path, gone[i]), "%s was left", gone[i]);
  for (int i = 0; i < 10; i++) cr_expect(exists(dir.path, kept[i]), "%s was removed", kept[i]);
  cr_expect_eq(access(outside, F_OK), 0, "the symlink's target was removed");
  CK_OK(fo_checkpoint_verify(path));
  snprintf(f, sizeof f, "%s/%s", dir.path, kept[8]);
  rmdir(f);
  unlink(outside);
  ck_model_destroy(&m);
  ck_dir_remove(&dir);
}

/* Save into path in a child killed halfway through the data (the
 * injected crash): it leaves its temporary file. */
static void crash_a_save(ck_model *m, const char *path) {
  pid_t c = fork();
  cr_assert_neq(c, -1);
  if (c == 0) {
    fo_inject_fault(m->opt, FO_FAULT_SAVE_CRASH);
    fo_optimizer_save(m->opt, path, NULL);
    _exit(1); /* not reached: the save kills the process */
  }
  int status = 0;
  cr_assert_eq(waitpid(c, &status, 0), c);
  cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
}

/* The real case: a save killed halfway leaves its temporary file; the next
 * save of the path removes it.  For names whose temporary name needs the
 * hashed stem (232 bytes and more, up to NAME_MAX) too: such names save,
 * verify and load. */
Test(temp_files, crashed_saves_are_cleaned_and_long_names_save) {
  const size_t lens[6] = {20, 231, 237, 250, 254, 255};
  for (int k = 0; k < 6; k++) {
    ck_dir dir;
    ck_dir_make(&dir);
    char name[300], path[400];
    /* multi-byte UTF-8 around the cut, so the stem must not split one */
    size_t n = 0;
    while (n < lens[k]) {
      if (n % 3 == 0 && n + 2 <= lens[k]) {
        name[n++] = (char)0xC3;
        name[n++] = (char)0xA9; /* é */
      } else {
        name[n++] = 'x';
      }
    }
    name[n] = '\0';
    cr_assert_eq(strlen(name), lens[k]);
    ck_dir_file(&dir, name, path, sizeof path);
    ck_model m;
    ck_model_create(&m, &sgd_cfg, 1);
    ck_step(&m, 0);
    CK_OK(fo_optimizer_save(m.opt, path, NULL));
    cr_expect_eq(ck_dir_count(&dir), 1, "%zu-byte name: %d files", lens[k], ck_dir_count(&dir));
    crash_a_save(&m, path);
    cr_expect_eq(ck_dir_count(&dir), 2, "%zu-byte name: the crash left no temporary", lens[k]);
    CK_OK(fo_checkpoint_verify(path)); /* the old checkpoint */
    ck_step(&m, 1);
    CK_OK(fo_optimizer_save(m.opt, path, NULL));
    cr_expect_eq(ck_dir_count(&dir), 1, "%zu-byte name: the stale temporary is still there",
                 lens[k]);
    ck_model fresh;
    ck_model_create(&fresh, &sgd_cfg, 2);
    CK_OK(fo_optimizer_load(fresh.opt, path, NULL));
    ck_snap a, b;
    ck_snapshot(&m, &a);
    ck_snapshot(&fresh, &b);
    ck_snap_expect_equal(&a, &b, "a long name's checkpoint");
    ck_snap_free(&a);
    ck_snap_free(&b);
    ck_model_destroy(&fresh);
    ck_model_destroy(&m);
    ck_dir_remove(&dir);
  }
}

/* ------------------------------------------------------- crafted header */

/* A 40 MB header of small JSON values (every one costs the parser a table
 * entry) under the 100 MB limit: a load into an optimizer of six small
 * tensors refuses it by its length, before parsing, so the loading process
 * stays small and quick; the optimizer is unchanged. */
Test(crafted_header, a_load_is_bounded_by_the_registered_tensors) {
  ck_dir dir;
  ck_dir_make(&dir);
  char path[128];
  ck_dir_file(&dir, "crafted.safetensors", path, sizeof path);
  const size_t n = 40000000; /* header bytes */
  unsigned char *file = malloc(8 + n);
  cr_assert_not_null(file);
  for (int i = 0; i < 8; i++) file[i] = (unsigned char)((uint64_t)n >> (8 * i));
  memset(file + 8, ' ', n); /* what follows the closing brace: padding */
  const char head[] = "{\"__metadata__\":{\"a\":\"b\"},\"x\":[";
  memcpy(file + 8, head, sizeof head - 1);
  size_t at = 8 + sizeof head - 1;
  while (at < 8 + n - 16) {
    file[at++] = '0';
    file[at++] = ',';
  }
  memcpy(file + at, "0]}", 3);
  ck_write(path, file, 8 + n);
  free(file);

  ck_model m;
  ck_model_create(&m, &sgd_cfg, 1);
  ck_step(&m, 0);
  ck_snap before;
  ck_snapshot(&m, &before);
  pid_t child = fork();
  cr_assert_neq(child, -1);
  if (child == 0) {
    alarm(60);
    fo_status st = fo_optimizer_load(m.opt, path, NULL);
    int ok = st == FO_ERR_CHECKPOINT && strstr(fo_last_error(), "not a checkpoint of this model");
    const char *paths[1] = {path};
    st = fo_optimizer_load_shards(m.opt, paths, 1, NULL);
    ok = ok && st == FO_ERR_CHECKPOINT && strstr(fo_last_error(), "not a checkpoint of this model");
    _exit(ok ? 0 : 1);
  }
  int status = 0;
  struct rusage ru;
  const double t0 = now_s();
  cr_assert_eq(wait4(child, &status, 0, &ru), child);
  const double took = now_s() - t0;
  cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the crafted header was not refused");
  /* the file itself is 40 MB; parsing it would need about 1.8 GB */
  cr_expect_lt(ru.ru_maxrss, 300L * 1024, "the refusing load used %ld KiB", ru.ru_maxrss);
  cr_log_info("crafted header: refused in %.2f s, %ld KiB at most", took, ru.ru_maxrss);
  /* the message, in this process, and nothing changed */
  cr_expect_eq(fo_optimizer_load(m.opt, path, NULL), FO_ERR_CHECKPOINT);
  cr_expect_neq(strstr(fo_last_error(), "the header is 40000000 bytes"), NULL, "%s",
                fo_last_error());
  ck_snap after;
  ck_snapshot(&m, &after);
  ck_snap_expect_equal(&before, &after, "a refused crafted header");
  /* a real checkpoint still loads (its header is well inside the bound) */
  char good[128];
  ck_dir_file(&dir, "good.safetensors", good, sizeof good);
  CK_OK(fo_optimizer_save(m.opt, good, NULL));
  CK_OK(fo_optimizer_load(m.opt, good, NULL));
  ck_snap_free(&before);
  ck_snap_free(&after);
  ck_model_destroy(&m);
  ck_dir_remove(&dir);
}
