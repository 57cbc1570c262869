/*
 * test_gpu_devices.c -- an optimizer on a second device, driven while the
 * first device is current: every call that touches its memory, reads its
 * state or launches its work does so on its own device and leaves the
 * caller's current device as it was, and the results equal those of the
 * same optimizer on the first device bit for bit.  A call that used the
 * current device instead would launch onto a stream of another device
 * (refused), read its state before its device finished, or save a
 * checkpoint from a device it did not wait for.
 *
 * Needs two devices: a lent one-GPU machine skips it (with the reason);
 * the emulated machine of the CI (tests/emu, two devices) runs it.
 */
#define _POSIX_C_SOURCE 200809L

#include <criterion/criterion.h>
#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fusedopt.h"
#include "gpu_harness.h"
#include "testutil.h"

#define NT 4
static const int64_t SIZES[NT] = {3000, 17, 40001, 256};
#define NMAX 40001
#define STEPS 4

static int current(void) {
  int d = -1;
  CK(cudaGetDevice(&d));
  return d;
}

/* A library call made with device 0 current: it succeeds and leaves
 * device 0 current. */
#define ON0(call)                                                              \
  do {                                                                         \
    OK(call);                                                                  \
    cr_assert_eq(current(), 0, "%s left device %d current", #call, current()); \
  } while (0)

/* The test's own copies: on the buffer's device, waited for, then back to
 * device 0. */
static void put(int device, void *dst, const void *src, size_t bytes) {
  CK(cudaSetDevice(device));
  CK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
  CK(cudaDeviceSynchronize());
  CK(cudaSetDevice(0));
}

static void get(int device, void *dst, const void *src, size_t bytes) {
  CK(cudaSetDevice(device));
  CK(cudaDeviceSynchronize());
  CK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
  CK(cudaSetDevice(0));
}

/* bf16 parameters with fp32 master weights, AdamW, clipping and dynamic
 * loss scaling: the step's pre-pass, its update and the conversions. */
static fo_optimizer *make(int device) {
  fo_options o;
  OK(fo_options_default(&o));
  o.executor = FO_EXEC_CUDA;
  o.device = device;
  o.storage = FO_STORAGE_ARENA;
  o.param_dtype = FO_DTYPE_BF16;
  o.grad_dtype = FO_DTYPE_BF16;
  o.master_weights = 1;
  o.max_grad_norm = 0.25f;
  o.loss_scaler.enabled = 1;
  o.loss_scaler.init_scale = 256.0f;
  fo_hparams h;
  OK(fo_hparams_default(FO_ALG_ADAMW, &h));
  h.lr = 0.011f;
  fo_tensor_desc t[NT];
  for (int i = 0; i < NT; i++) t[i] = (fo_tensor_desc){SIZES[i], 0, NULL, NULL, NULL};
  fo_optimizer *opt = NULL;
  ON0(fo_optimizer_create(&opt, &o, &h, 1, t, NT));
  return opt;
}

/* Tensor i's values of role (bf16 parameters, fp32 state), from one seed
 * for both twins. */
static void fill(fo_optimizer *opt, int device, fo_role role, uint64_t seed, float scale) {
  float *v = malloc(NMAX * sizeof(float));
  uint16_t *b = malloc(NMAX * sizeof(uint16_t));
  cr_assert(v && b);
  tu_rng rng;
  tu_rng_seed(&rng, seed, (uint64_t)role);
  for (int i = 0; i < NT; i++) {
    for (int64_t e = 0; e < SIZES[i]; e++) v[e] = scale * (float)tu_rng_range(&rng, -1.0, 1.0);
    void *p;
    if (role == FO_ROLE_PARAM)
      ON0(fo_optimizer_param_ptr(opt, i, &p));
    else
      ON0(fo_optimizer_grad_ptr(opt, i, &p));
    OK(fo_convert_from_f32(FO_DTYPE_BF16, v, b, SIZES[i]));
    put(device, p, b, (size_t)SIZES[i] * 2);
  }
  free(v);
  free(b);
}

/* Every parameter and master weight of opt, on the host. */
static unsigned char *snapshot(fo_optimizer *opt, int device, size_t *bytes) {
  size_t total = 0;
  for (int i = 0; i < NT; i++) total += (size_t)SIZES[i] * (2 + 4);
  unsigned char *h = malloc(total), *at = h;
  cr_assert_not_null(h);
  for (int i = 0; i < NT; i++) {
    void *p;
    float *m;
    ON0(fo_optimizer_param_ptr(opt, i, &p));
    ON0(fo_optimizer_state_ptr(opt, i, FO_ROLE_MASTER, &m));
    get(device, at, p, (size_t)SIZES[i] * 2);
    at += (size_t)SIZES[i] * 2;
    get(device, at, m, (size_t)SIZES[i] * 4);
    at += (size_t)SIZES[i] * 4;
  }
  *bytes = total;
  return h;
}

static unsigned char *read_file(const char *path, size_t *bytes) {
  FILE *f = fopen(path, "rb");
  cr_assert_not_null(f, "%s", path);
  cr_assert_eq(fseek(f, 0, SEEK_END), 0);
  long n = ftell(f);
  cr_assert(n > 0);
  rewind(f);
  unsigned char *h = malloc((size_t)n);
  cr_assert_not_null(h);
  cr_assert_eq(fread(h, 1, (size_t)n, f), (size_t)n);
  fclose(f);
  *bytes = (size_t)n;
  return h;
}

static void expect_same(const unsigned char *a, size_t na, const unsigned char *b, size_t nb,
                        const char *what) {
  cr_assert_eq(na, nb, "%s: %zu bytes against %zu", what, na, nb);
  cr_assert(memcmp(a, b, na) == 0, "%s: the optimizer on device 1 differs from device 0's", what);
}

Test(gpu_devices, an_optimizer_on_another_device_than_the_current_one, .timeout = 300) {
  require_devices(2);
  CK(cudaSetDevice(0));
  fo_optimizer *opt[2] = {make(0), make(1)};
  cudaStream_t s[2];
  for (int d = 0; d < 2; d++) {
    CK(cudaSetDevice(d));
    CK(cudaStreamCreateWithFlags(&s[d], cudaStreamNonBlocking));
  }
  CK(cudaSetDevice(0));
  for (int d = 0; d < 2; d++) {
    fill(opt[d], d, FO_ROLE_PARAM, 11, 1.0f);
    ON0(fo_optimizer_sync_master(opt[d], NULL)); /* the legacy stream of its device */
  }

  for (int k = 0; k < STEPS; k++) {
    fo_step_info info[2];
    for (int d = 0; d < 2; d++) {
      ON0(fo_optimizer_get_info(opt[d], &info[d])); /* waits for its device */
      fill(opt[d], d, FO_ROLE_GRAD, 100 + (uint64_t)k, 0.05f * info[d].loss_scale);
      ON0(fo_optimizer_step(opt[d], (fo_stream_t)s[d]));
      if (k == 1) ON0(fo_optimizer_zero_grad(opt[d], (fo_stream_t)s[d]));
    }
    cr_assert_eq(info[0].loss_scale, info[1].loss_scale, "step %d", k);
  }

  /* checkpoints saved at once, the last step still queued: through host
   * staging on each one's device, after its stream; the two files are the
   * same bytes */
  char dir[] = "/tmp/fo_devices_XXXXXX", path[2][64];
  cr_assert_not_null(mkdtemp(dir));
  for (int d = 0; d < 2; d++) {
    snprintf(path[d], sizeof path[d], "%s/device%d.fo", dir, d);
    ON0(fo_optimizer_save(opt[d], path[d], (fo_stream_t)s[d]));
  }
  size_t f0, f1;
  unsigned char *file0 = read_file(path[0], &f0), *file1 = read_file(path[1], &f1);
  expect_same(file0, f0, file1, f1, "the checkpoint files");

  fo_step_info info[2];
  int64_t step[2];
  for (int d = 0; d < 2; d++) {
    ON0(fo_optimizer_get_info(opt[d], &info[d]));
    ON0(fo_optimizer_get_step(opt[d], &step[d]));
  }
  cr_assert_eq(step[1], STEPS - info[1].skipped_steps);
  cr_assert_eq(step[0], step[1]);
  cr_assert_eq(info[0].grad_norm, info[1].grad_norm, "the last step's gradient norm");
  size_t n0, n1;
  unsigned char *p0 = snapshot(opt[0], 0, &n0), *p1 = snapshot(opt[1], 1, &n1);
  expect_same(p0, n0, p1, n1, "parameters and master weights");

  /* device 1's checkpoint loads into a fresh optimizer on device 1 */
  fo_optimizer *back = make(1);
  fill(back, 1, FO_ROLE_PARAM, 12, 1.0f); /* other values, overwritten by the load */
  ON0(fo_optimizer_load(back, path[1], (fo_stream_t)s[1]));
  size_t nb;
  unsigned char *pb = snapshot(back, 1, &nb);
  expect_same(p1, n1, pb, nb, "the loaded checkpoint");

  for (int d = 0; d < 2; d++) {
    unlink(path[d]);
    ON0(fo_optimizer_destroy(opt[d]));
    CK(cudaSetDevice(d));
    CK(cudaStreamDestroy(s[d]));
    CK(cudaSetDevice(0));
  }
  ON0(fo_optimizer_destroy(back));
  rmdir(dir);
  free(p0);
  free(p1);
  free(pb);
  free(file0);
  free(file1);
}
