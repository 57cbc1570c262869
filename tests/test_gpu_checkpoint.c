/*
 * test_gpu_checkpoint.c -- the GPU tier of checkpoints: the CUDA executor's
 * save (device buffers through host staging) and load.
 *
 * Every test first asks fo_cuda_device_count(); without a usable device it
 * is skipped with the reason.  With one:
 *
 *   - exact resume on the device: every algorithm x {fp32; bf16 and fp16
 *     with master weights; bf16 with stochastic rounding}, with loss
 *     scaling, clipping and a schedule in some: save after K steps (K = 5,
 *     7, 8: mid-growth, mid-hysteresis, after a skipped step), load into a
 *     fresh CUDA optimizer over device tensors holding other values, run
 *     to the end: every buffer, the step state and the hyper-parameters are
 *     bit-identical to an uninterrupted CUDA run;
 *   - across executors: a checkpoint saved on the device loads into a CPU
 *     optimizer (and the reverse) with every buffer and the step state
 *     bit-identical to what was saved;
 *   - save waits for steps still queued on a non-blocking stream.
 *
 * Set FO_GPU_TEST_STAND_IN=cpu to run the same harness with the CPU
 * executor standing in for the device (a check of the test itself on a
 * machine without a GPU).
 */
#define _POSIX_C_SOURCE 200809L

#include <criterion/criterion.h>
#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ckpt_harness.h"
#include "gpu_harness.h"

#define TOTAL_STEPS 14

/* ----------------------------------------------------- a device model */

/* ck_model's twin over executor memory: external storage, one allocation
 * per buffer (device memory on CUDA, host memory for the stand-in). */
typedef struct gmodel {
  ck_cfg cfg;
  dev d; /* the default stream: the steps run on NULL */
  fo_optimizer *opt;
  void *p[CK_TENSORS], *g[CK_TENSORS];
} gmodel;

/* A blocking upload (the host buffer is freed right after). */
static void put(const gmodel *m, void *dst, const void *src, size_t n) {
  dev_put(&m->d, dst, src, n);
  dev_sync(&m->d);
}

/* Fill dst (executor memory) with values of (seed, step, tensor). */
static void fill(const gmodel *m, fo_dtype d, void *dst, int i, uint64_t seed, uint64_t step,
                 float scale) {
  int64_t n = ck_sizes[i];
  if (!n) return;
  void *h = malloc((size_t)n * 4);
  cr_assert_not_null(h);
  ck_fill(d, h, n, seed, step, (uint64_t)i, scale);
  put(m, dst, h, (size_t)n * fo_dtype_size(d));
  free(h);
}

static void g_create(gmodel *m, const ck_cfg *c, int cuda, uint64_t seed) {
  memset(m, 0, sizeof *m);
  m->cfg = *c;
  m->cfg.exec = cuda ? FO_EXEC_CUDA : FO_EXEC_CPU;
  m->cfg.storage = FO_STORAGE_EXTERNAL;
  m->d = (dev){cuda, NULL};
  fo_options o = ck_options(&m->cfg);
  fo_hparams h[2];
  ck_hparams(&m->cfg, h);
  fo_tensor_desc t[CK_TENSORS];
  for (int i = 0; i < CK_TENSORS; i++) {
    m->p[i] = dev_alloc(&m->d, (size_t)ck_sizes[i] * fo_dtype_size(c->pd) + 16);
    m->g[i] = dev_alloc(&m->d, (size_t)ck_sizes[i] * fo_dtype_size(c->gd) + 16);
    fill(m, c->pd, m->p[i], i, seed, 0, 1.0f);
    t[i] = (fo_tensor_desc){ck_sizes[i], i % 2, m->p[i], m->g[i], ck_names[i]};
  }
  CK_OK(fo_optimizer_create(&m->opt, &o, h, 2, t, CK_TENSORS));
}

static void g_destroy(gmodel *m) {
  CK_OK(fo_optimizer_destroy(m->opt));
  for (int i = 0; i < CK_TENSORS; i++) {
    dev_free(&m->d, m->p[i]);
    dev_free(&m->d, m->g[i]);
  }
}

/* As ck_grads/ck_step: gradients of step s times the current loss scale,
 * overflows at steps 3 and 6, group 1's lr changed after step 1. */
static void g_step(gmodel *m, int s) {
  fo_step_info info;
  CK_OK(fo_optimizer_get_info(m->opt, &info));
  float scale = m->cfg.scaler ? info.loss_scale : 1.0f;
  for (int i = 0; i < CK_TENSORS; i++) fill(m, m->cfg.gd, m->g[i], i, 777, (uint64_t)s + 1, scale);
  if (m->cfg.scaler && (s == 3 || s == 6)) {
    uint16_t h16[2];
    float inf = INFINITY;
    CK_OK(fo_convert_from_f32(m->cfg.gd, &inf, h16, 1));
    put(m, m->g[4], m->cfg.gd == FO_DTYPE_F32 ? (const void *)&inf : h16, fo_dtype_size(m->cfg.gd));
  }
  CK_OK(fo_optimizer_step(m->opt, NULL));
  if (s == 1) CK_OK(fo_optimizer_set_lr(m->opt, 1, 0.0191f));
}

static void g_snapshot(const gmodel *m, ck_snap *s) {
  if (m->d.cuda) CK(cudaDeviceSynchronize());
  ck_snapshot_with(m->opt, m->cfg.pd, s, m->d.cuda ? dev_download_cuda : ck_download_host);
}

/* ------------------------------------------------------------- configs */

static ck_cfg gpu_cfg(fo_algorithm alg, int variant) {
  ck_cfg c;
  memset(&c, 0, sizeof c);
  snprintf(c.label, sizeof c.label, "alg%d-v%d", (int)alg, variant);
  c.alg = alg;
  c.amsgrad = alg == FO_ALG_ADAM || alg == FO_ALG_ADAMW;
  c.momentum = alg == FO_ALG_SGD ? 0.9f : 0.0f;
  c.sched = variant % 2;
  switch (variant) {
    case 0:
      c.pd = c.gd = FO_DTYPE_F32;
      c.clip = 0.5f;
      break;
    case 1:
      c.pd = c.gd = FO_DTYPE_BF16;
      c.master = 1;
      break;
    case 2:
      c.pd = c.gd = FO_DTYPE_F16;
      c.master = 1;
      c.scaler = 1;
      c.clip = 3.0f;
      break;
    default:
      c.pd = c.gd = FO_DTYPE_BF16;
      c.sr = 1;
      c.scaler = 1;
      break;
  }
  return c;
}

static void tmp_path(ck_dir *d, char *path, size_t cap) {
  ck_dir_make(d);
  ck_dir_file(d, "gpu.safetensors", path, cap);
}

/* ------------------------------------------------------------- resume */

static void resume_matrix(fo_algorithm alg) {
  int cuda = require_device(0);
  ck_dir d;
  char path[128];
  tmp_path(&d, path, sizeof path);
  for (int v = 0; v < 4; v++) {
    ck_cfg c = gpu_cfg(alg, v);
    gmodel ref;
    g_create(&ref, &c, cuda, 1);
    for (int s = 0; s < TOTAL_STEPS; s++) g_step(&ref, s);
    ck_snap want;
    g_snapshot(&ref, &want);
    g_destroy(&ref);
    const int ks[] = {5, 7, 8};
    for (size_t k = 0; k < 3; k++) {
      gmodel a, b;
      g_create(&a, &c, cuda, 1);
      for (int s = 0; s < ks[k]; s++) g_step(&a, s);
      CK_OK(fo_optimizer_save(a.opt, path, NULL));
      g_destroy(&a);
      g_create(&b, &c, cuda, 99);
      CK_OK(fo_optimizer_load(b.opt, path, NULL));
      for (int s = ks[k]; s < TOTAL_STEPS; s++) g_step(&b, s);
      ck_snap got;
      g_snapshot(&b, &got);
      char what[96];
      snprintf(what, sizeof what, "%s resumed at K=%d", c.label, ks[k]);
      ck_snap_expect_equal(&want, &got, what);
      ck_snap_free(&got);
      g_destroy(&b);
    }
    ck_snap_free(&want);
  }
  ck_dir_remove(&d);
}

Test(gpu_checkpoint, resume_sgd) {
  resume_matrix(FO_ALG_SGD);
}
Test(gpu_checkpoint, resume_adam) {
  resume_matrix(FO_ALG_ADAM);
}
Test(gpu_checkpoint, resume_adamw) {
  resume_matrix(FO_ALG_ADAMW);
}
Test(gpu_checkpoint, resume_lion) {
  resume_matrix(FO_ALG_LION);
}

/* ------------------------------------------------------ across executors */

static void across(int from_cuda, int to_cuda) {
  ck_dir d;
  char path[128];
  tmp_path(&d, path, sizeof path);
  for (int v = 0; v < 4; v++) {
    ck_cfg c = gpu_cfg(FO_ALG_ADAMW, v);
    gmodel a, b;
    g_create(&a, &c, from_cuda, 1);
    for (int s = 0; s < 8; s++) g_step(&a, s);
    ck_snap saved, loaded;
    g_snapshot(&a, &saved);
    CK_OK(fo_optimizer_save(a.opt, path, NULL));
    g_destroy(&a);
    g_create(&b, &c, to_cuda, 42);
    CK_OK(fo_optimizer_load(b.opt, path, NULL));
    g_snapshot(&b, &loaded);
    char what[96];
    snprintf(what, sizeof what, "%s saved on %s, loaded on %s", c.label, from_cuda ? "cuda" : "cpu",
             to_cuda ? "cuda" : "cpu");
    ck_snap_expect_equal(&saved, &loaded, what);
    ck_snap_free(&saved);
    ck_snap_free(&loaded);
    g_destroy(&b);
  }
  ck_dir_remove(&d);
}

Test(gpu_checkpoint, device_to_host) {
  int cuda = require_device(0);
  across(cuda, 0);
}

Test(gpu_checkpoint, host_to_device) {
  int cuda = require_device(0);
  across(0, cuda);
}

/* ----------------------------------------------------- stream ordering */

/* A host function that holds its stream for 200 ms. */
static void CUDART_CB hold_the_stream(void *unused) {
  (void)unused;
  const struct timespec t = {0, 200 * 1000 * 1000};
  nanosleep(&t, NULL);
}

/* Steps queued on a non-blocking stream behind 200 ms of a host function,
 * so still queued when the save begins: the save must see their results
 * (it waits for the device). */
Test(gpu_checkpoint, save_waits_for_queued_steps) {
  int cuda = require_device(0);
  if (!cuda) cr_skip_test("stand-in: stream ordering needs a CUDA device");
  ck_dir d;
  char path[128];
  tmp_path(&d, path, sizeof path);
  ck_cfg c = gpu_cfg(FO_ALG_ADAMW, 1);
  gmodel a, b;
  g_create(&a, &c, 1, 1);
  cudaStream_t st;
  CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  for (int i = 0; i < CK_TENSORS; i++) fill(&a, c.gd, a.g[i], i, 3, 3, 1.0f);
  CK(cudaLaunchHostFunc(st, hold_the_stream, NULL));
  for (int s = 0; s < 20; s++) CK_OK(fo_optimizer_step(a.opt, (fo_stream_t)st));
  CK_OK(fo_optimizer_save(a.opt, path, (fo_stream_t)st));
  ck_snap after, loaded;
  g_snapshot(&a, &after);
  g_create(&b, &c, 1, 2);
  CK_OK(fo_optimizer_load(b.opt, path, (fo_stream_t)st));
  g_snapshot(&b, &loaded);
  cr_expect_eq(loaded.info.step, 20);
  ck_snap_expect_equal(&after, &loaded, "saved while 20 steps were queued");
  ck_snap_free(&after);
  ck_snap_free(&loaded);
  CK(cudaStreamDestroy(st));
  g_destroy(&a);
  g_destroy(&b);
  ck_dir_remove(&d);
}
