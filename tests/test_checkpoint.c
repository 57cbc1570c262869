/*
 * test_checkpoint.c -- CPU tier of fo_optimizer_save / fo_optimizer_load:
 *
 *   - exact resume: for every algorithm variant x dtype configuration
 *     (fp32; bf16 and fp16 with master weights; bf16 without master, with
 *     and without stochastic rounding; loss scaling, clipping, a schedule;
 *     external and arena storage) save after K steps, load into a fresh
 *     optimizer over tensors holding other values, run to K+M: parameters,
 *     every state buffer, the step state and the hyper-parameters are
 *     bit-identical to an uninterrupted run.  K takes three values so the
 *     loss scaler is saved mid-growth, mid-hysteresis and right after a
 *     skipped step;
 *   - the state right after a load equals the state that was saved;
 *   - a checkpoint loads into the other storage mode; save-load-save
 *     writes the same bytes; the file is safetensors with the documented
 *     names (and, when Python's safetensors is installed, Python reads it
 *     and recomputes every checksum: checkpoint_python.py);
 *   - saving replaces the old file and leaves no temporary file; names
 *     that cannot make a file are refused before anything is written;
 *   - argument checks of every new function.
 *
 * Bad files are in test_checkpoint_errors.c, faults in
 * test_checkpoint_faults.c, the CUDA executor in test_gpu_checkpoint.c.
 */
#define _POSIX_C_SOURCE 200809L

#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ckpt_harness.h"

#define TOTAL_STEPS 14

/* ------------------------------------------------------------ the matrix */

enum { N_ALGS = 11, N_DTYPES = 6 };

static ck_cfg matrix_cfg(int a, int d) {
  ck_cfg c;
  memset(&c, 0, sizeof c);
  static const fo_algorithm algs[N_ALGS] = {
      FO_ALG_SGD,     FO_ALG_SGD,     FO_ALG_ADAM,  FO_ALG_ADAMW, FO_ALG_ADAMW, FO_ALG_LION,
      FO_ALG_ADAGRAD, FO_ALG_RMSPROP, FO_ALG_NADAM, FO_ALG_LAMB,  FO_ALG_LARS};
  static const char *const alg_labels[N_ALGS] = {
      "sgd",           "sgd-nesterov", "adam-amsgrad", "adamw",
      "adamw-amsgrad", "lion",         "adagrad",      "rmsprop-centered-momentum",
      "nadam",         "lamb",         "lars-nesterov"};
  c.alg = algs[a];
  c.momentum = a == 1 || a == 7 || a == 10 ? 0.9f : 0.0f;
  c.nesterov = a == 1 || a == 10;
  c.centered = a == 7;
  c.amsgrad = a == 2 || a == 4;
  snprintf(c.label, sizeof c.label, "%s", alg_labels[a]);
  c.exec = FO_EXEC_CPU;
  c.sched = (a + d) % 2;
  switch (d) {
    case 0:
      c.pd = c.gd = FO_DTYPE_F32;
      c.clip = 0.5f;
      break;
    case 1:
      c.pd = c.gd = FO_DTYPE_BF16;
      c.master = 1;
      c.storage = FO_STORAGE_ARENA;
      break;
    case 2:
      c.pd = c.gd = FO_DTYPE_F16;
      c.master = 1;
      c.scaler = 1;
      break;
    case 3:
      c.pd = FO_DTYPE_BF16;
      c.gd = FO_DTYPE_F32;
      break;
    case 4:
      c.pd = c.gd = FO_DTYPE_BF16;
      c.sr = 1;
      c.storage = FO_STORAGE_ARENA;
      c.scaler = 1;
      break;
    default:
      c.pd = FO_DTYPE_F16;
      c.gd = FO_DTYPE_F32;
      c.master = 1;
      c.scaler = 1;
      c.clip = 3.0f;
      c.storage = FO_STORAGE_ARENA;
      break;
  }
  return c;
}

ParameterizedTestParameters(resume, bit_identical) {
  static ck_cfg params[N_ALGS * N_DTYPES];
  for (int a = 0; a < N_ALGS; a++)
    for (int d = 0; d < N_DTYPES; d++) params[a * N_DTYPES + d] = matrix_cfg(a, d);
  return cr_make_param_array(ck_cfg, params, N_ALGS * N_DTYPES);
}

static void scratch_file(ck_dir *d, char *path, size_t cap, const char *name) {
  ck_dir_make(d);
  ck_dir_file(d, name, path, cap);
}

/* Run to K, save, load into a fresh optimizer (other initial values), run
 * to the end, compare with the uninterrupted run's final snapshot. */
static void resume_at(const ck_cfg *c, int k, const ck_snap *want, const char *path) {
  ck_model m;
  ck_model_create(&m, c, 1);
  for (int s = 0; s < k; s++) ck_step(&m, s);
  ck_snap saved;
  ck_snapshot(&m, &saved);
  CK_OK(fo_optimizer_save(m.opt, path, NULL));
  ck_model_destroy(&m);

  ck_model fresh;
  ck_model_create(&fresh, c, 99);
  CK_OK(fo_optimizer_load(fresh.opt, path, NULL));
  ck_snap loaded;
  ck_snapshot(&fresh, &loaded);
  char what[96];
  snprintf(what, sizeof what, "%s pd%d gd%d: state loaded at K=%d", c->label, c->pd, c->gd, k);
  ck_snap_expect_equal(&saved, &loaded, what);
  for (int s = k; s < TOTAL_STEPS; s++) ck_step(&fresh, s);
  ck_snap got;
  ck_snapshot(&fresh, &got);
  snprintf(what, sizeof what, "%s pd%d gd%d: resumed at K=%d", c->label, c->pd, c->gd, k);
  ck_snap_expect_equal(want, &got, what);
  ck_snap_free(&saved);
  ck_snap_free(&loaded);
  ck_snap_free(&got);
  ck_model_destroy(&fresh);
}

ParameterizedTest(ck_cfg *c, resume, bit_identical) {
  ck_model ref;
  ck_model_create(&ref, c, 1);
  for (int s = 0; s < TOTAL_STEPS; s++) ck_step(&ref, s);
  ck_snap want;
  ck_snapshot(&ref, &want);
  if (c->scaler) cr_expect_eq(want.info.skipped_steps, 2, "the run skips two steps");
  ck_model_destroy(&ref);

  ck_dir d;
  char path[128];
  scratch_file(&d, path, sizeof path, "opt.safetensors");
  /* K = 5: mid-growth; 7: right after an overflow, hysteresis half spent;
   * 8: mid-growth after it */
  const int ks[] = {5, 7, 8};
  for (size_t i = 0; i < sizeof ks / sizeof ks[0]; i++) resume_at(c, ks[i], &want, path);
  ck_snap_free(&want);
  ck_dir_remove(&d);
}

/* --------------------------------------------------- files and storage */

static const ck_cfg adamw_bf16 = {.label = "adamw-bf16",
                                  .alg = FO_ALG_ADAMW,
                                  .pd = FO_DTYPE_BF16,
                                  .gd = FO_DTYPE_BF16,
                                  .master = 1,
                                  .amsgrad = 1,
                                  .scaler = 1,
                                  .sched = 1,
                                  .storage = FO_STORAGE_EXTERNAL,
                                  .exec = FO_EXEC_CPU};

Test(files, external_and_arena_load_each_other) {
  ck_dir d;
  char path[128];
  scratch_file(&d, path, sizeof path, "a.safetensors");
  ck_cfg ext = adamw_bf16, arena = adamw_bf16;
  arena.storage = FO_STORAGE_ARENA;
  ck_model a, b;
  ck_model_create(&a, &ext, 1);
  for (int s = 0; s < 5; s++) ck_step(&a, s);
  CK_OK(fo_optimizer_save(a.opt, path, NULL));
  ck_model_create(&b, &arena, 2);
  CK_OK(fo_optimizer_load(b.opt, path, NULL));
  for (int s = 5; s < 9; s++) {
    ck_step(&a, s);
    ck_step(&b, s);
  }
  ck_snap x, y;
  ck_snapshot(&a, &x);
  ck_snapshot(&b, &y);
  ck_snap_expect_equal(&x, &y, "external run vs arena run resumed from it");
  ck_snap_free(&x);
  ck_snap_free(&y);
  ck_model_destroy(&a);
  ck_model_destroy(&b);
  ck_dir_remove(&d);
}

Test(files, save_load_save_writes_the_same_bytes) {
  ck_dir d;
  char p1[128], p2[128];
  scratch_file(&d, p1, sizeof p1, "1.safetensors");
  ck_dir_file(&d, "2.safetensors", p2, sizeof p2);
  ck_model a, b;
  ck_model_create(&a, &adamw_bf16, 1);
  for (int s = 0; s < 4; s++) ck_step(&a, s);
  CK_OK(fo_optimizer_save(a.opt, p1, NULL));
  ck_model_create(&b, &adamw_bf16, 3);
  CK_OK(fo_optimizer_load(b.opt, p1, NULL));
  CK_OK(fo_optimizer_save(b.opt, p2, NULL));
  ck_bytes x = ck_read(p1), y = ck_read(p2);
  cr_assert_eq(x.n, y.n);
  cr_expect(memcmp(x.p, y.p, x.n) == 0, "the second save differs");
  free(x.p);
  free(y.p);
  CK_OK(fo_checkpoint_verify(p1));
  ck_model_destroy(&a);
  ck_model_destroy(&b);
  ck_dir_remove(&d);
}

/* The header text, for looking at names. */
static char *header_of(const ck_bytes *b) {
  cr_assert_geq(b->n, 8u);
  uint64_t n = 0;
  for (int i = 7; i >= 0; i--) n = n << 8 | b->p[i];
  cr_assert_leq(n, b->n - 8);
  cr_expect_eq((8 + n) % 8, 0u, "the data section starts at a multiple of 8");
  char *h = malloc(n + 1);
  memcpy(h, b->p + 8, n);
  h[n] = '\0';
  return h;
}

Test(files, layout_is_safetensors_with_documented_names) {
  ck_dir d;
  char path[128];
  scratch_file(&d, path, sizeof path, "n.safetensors");
  ck_cfg c = adamw_bf16;
  ck_model m;
  ck_model_create(&m, &c, 1);
  ck_step(&m, 0);
  CK_OK(fo_optimizer_save(m.opt, path, NULL));
  ck_bytes b = ck_read(path);
  char *h = header_of(&b);
  cr_expect_eq(h[0], '{');
  const char *names[] = {"\"__metadata__\"",
                         "\"embed.weight\":{\"dtype\":\"BF16\",\"shape\":[1],",
                         "\"embed.weight.master\":{\"dtype\":\"F32\"",
                         "\"tensor.1\"",
                         "\"tensor.4.exp_avg_sq\"",
                         "\"fc1.bias.max_exp_avg_sq\"",
                         "\"empty\":{\"dtype\":\"BF16\",\"shape\":[0],",
                         "\"fusedopt.format_version\":\"1\"",
                         "\"fusedopt.algorithm\":\"adamw\"",
                         "\"fusedopt.crc32.fc1.weight.exp_avg\"",
                         "\"fusedopt.metadata_crc32\"",
                         "\"fusedopt.group.1.lr\"",
                         "\"fusedopt.state.scale\":\"0x1p+10\""};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    cr_expect_not_null(strstr(h, names[i]), "the header lacks %s", names[i]);
  cr_expect_null(strstr(h, "momentum_buffer"));
  free(h);
  free(b.p);
  ck_model_destroy(&m);
  ck_dir_remove(&d);
}

Test(files, sgd_momentum_is_saved_as_momentum_buffer) {
  ck_dir d;
  char path[128];
  scratch_file(&d, path, sizeof path, "s.safetensors");
  ck_cfg c = matrix_cfg(1, 0);
  ck_model m;
  ck_model_create(&m, &c, 1);
  CK_OK(fo_optimizer_save(m.opt, path, NULL));
  ck_bytes b = ck_read(path);
  char *h = header_of(&b);
  cr_expect_not_null(
      strstr(h, "\"fc1.weight.momentum_buffer\":{\"dtype\":\"F32\",\"shape\":[1000]"));
  cr_expect_null(strstr(h, "exp_avg"));
  cr_expect_null(strstr(h, ".master\":{"), "fp32 parameters have no master weights");
  free(h);
  free(b.p);
  ck_model_destroy(&m);
  ck_dir_remove(&d);
}

Test(files, saving_replaces_the_file_and_leaves_no_temporary) {
  ck_dir d;
  char path[128];
  scratch_file(&d, path, sizeof path, "r.safetensors");
  ck_model m;
  ck_model_create(&m, &adamw_bf16, 1);
  CK_OK(fo_optimizer_save(m.opt, path, NULL));
  ck_bytes before = ck_read(path);
  for (int s = 0; s < 3; s++) ck_step(&m, s);
  CK_OK(fo_optimizer_save(m.opt, path, NULL));
  ck_bytes after = ck_read(path);
  cr_expect(before.n != after.n || memcmp(before.p, after.p, before.n) != 0);
  cr_expect_eq(ck_dir_count(&d), 1, "only the checkpoint is left in the directory");
  CK_OK(fo_checkpoint_verify(path));
  free(before.p);
  free(after.p);
  ck_model_destroy(&m);
  ck_dir_remove(&d);
}

Test(files, saving_into_the_current_directory) {
  ck_dir d;
  ck_dir_make(&d);
  char cwd[512];
  cr_assert_not_null(getcwd(cwd, sizeof cwd));
  cr_assert_eq(chdir(d.path), 0);
  ck_model m;
  ck_model_create(&m, &adamw_bf16, 1);
  CK_OK(fo_optimizer_save(m.opt, "plain-name.safetensors", NULL));
  CK_OK(fo_optimizer_load(m.opt, "plain-name.safetensors", NULL));
  ck_model_destroy(&m);
  cr_assert_eq(chdir(cwd), 0);
  cr_expect_eq(ck_dir_count(&d), 1);
  ck_dir_remove(&d);
}

/* A loss scale written through fo_optimizer_loss_scale_ptr.  With loss
 * scaling on, one a load would refuse (zero, subnormal, NaN, inf) fails the
 * save with nothing written, and a valid one is saved and loaded; with it
 * off the steps ignore the scale, and so do the save (it writes the
 * created 1) and the load: whatever a save writes, a load accepts. */
Test(files, a_scale_written_through_the_pointer) {
  ck_dir d;
  char path[128];
  scratch_file(&d, path, sizeof path, "s.safetensors");
  const float bad[] = {0.0f, 0x1p-127f, NAN, INFINITY};
  for (int on = 0; on < 2; on++) {
    ck_cfg c = adamw_bf16;
    c.scaler = on;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
      ck_model m, twin;
      ck_model_create(&m, &c, 1);
      for (int s = 0; s < 2; s++) ck_step(&m, s);
      float *scale = NULL;
      CK_OK(fo_optimizer_loss_scale_ptr(m.opt, &scale));
      const float kept = *scale;
      *scale = bad[i];
      fo_status st = fo_optimizer_save(m.opt, path, NULL);
      ck_model_create(&twin, &c, 2);
      if (on) {
        cr_expect_eq(st, FO_ERR_INVALID_STATE, "scale %g: %s", (double)bad[i], fo_last_error());
        cr_expect_not_null(strstr(fo_last_error(), "fo_optimizer_loss_scale_ptr"), "%s",
                           fo_last_error());
        cr_expect_eq(ck_dir_count(&d), 0, "scale %g: a refused save left a file", (double)bad[i]);
        *scale = 512.0f; /* a valid one is saved and loaded */
        CK_OK(fo_optimizer_save(m.opt, path, NULL));
        CK_OK(fo_optimizer_load(twin.opt, path, NULL));
        fo_scaler_state ss;
        CK_OK(fo_optimizer_get_scaler_state(twin.opt, &ss));
        cr_expect_eq(ss.scale, 512.0f);
      } else {
        cr_expect_eq(st, FO_SUCCESS, "scale %g, scaling off: %s", (double)bad[i], fo_last_error());
        CK_OK(fo_checkpoint_verify(path));
        CK_OK(fo_optimizer_load(twin.opt, path, NULL));
        fo_scaler_state ss;
        CK_OK(fo_optimizer_get_scaler_state(twin.opt, &ss));
        cr_expect(ss.scale == 1.0f && ss.growth_tracker == 0, "loaded scale %g, tracker %d",
                  (double)ss.scale, ss.growth_tracker);
        *scale = kept; /* the same runs from here on */
      }
      for (int s = 2; s < 4; s++) {
        ck_step(&m, s);
        ck_step(&twin, s);
      }
      ck_snap x, y;
      ck_snapshot(&m, &x);
      ck_snapshot(&twin, &y);
      ck_snap_expect_equal(&x, &y, "the saving run vs the run resumed from its file");
      ck_snap_free(&x);
      ck_snap_free(&y);
      ck_model_destroy(&m);
      ck_model_destroy(&twin);
      unlink(path);
    }
  }
  ck_dir_remove(&d);
}

/* Values at the edges of the float formats come back bit for bit: the
 * smallest subnormal, the largest finite float, -0, and a negative NaN
 * norm from a skipped step (its sign is kept; a NaN payload is not). */
Test(files, edge_values_round_trip_exactly) {
  ck_dir d;
  char path[128];
  scratch_file(&d, path, sizeof path, "e.safetensors");
  ck_model a, b;
  ck_model_create(&a, &adamw_bf16, 1);
  fo_hparams h;
  CK_OK(fo_optimizer_get_hparams(a.opt, 0, &h));
  h.lr = 0x1p-149f;
  h.weight_decay = 0x1.fffffep+127f;
  h.momentum = -0.0f * 0.0f; /* +0 */
  h.eps = 0x1p-126f;
  h.beta1 = 0x1.fffffep-1f;
  CK_OK(fo_optimizer_set_hparams(a.opt, 0, &h));
  ck_step(&a, 0);
  ck_grads(&a, 2);
  uint32_t neg_nan = 0xFFC00000u;
  float nan_f;
  memcpy(&nan_f, &neg_nan, sizeof nan_f);
  CK_OK(fo_convert_from_f32(FO_DTYPE_BF16, &nan_f, a.g[2], 1));
  CK_OK(fo_optimizer_step(a.opt, NULL));
  ck_snap x, y;
  ck_snapshot(&a, &x);
  cr_expect(x.info.last_step_skipped && isnan(x.info.grad_norm) && signbit(x.info.grad_norm),
            "the step saw a negative NaN (norm %g)", (double)x.info.grad_norm);
  CK_OK(fo_optimizer_save(a.opt, path, NULL));
  ck_model_create(&b, &adamw_bf16, 2);
  CK_OK(fo_optimizer_load(b.opt, path, NULL));
  ck_snapshot(&b, &y);
  ck_snap_expect_equal(&x, &y, "edge values");
  ck_snap_free(&x);
  ck_snap_free(&y);
  ck_model_destroy(&a);
  ck_model_destroy(&b);
  ck_dir_remove(&d);
}

/* ---------------------------------------------- names that cannot save */

/* Names a checkpoint cannot hold are refused at create (not at the first
 * save, hours later): FO_ERR_INVALID_ARGUMENT, *out untouched, the
 * message naming the cause. */
static void expect_unsaveable_as(fo_dtype dtype, const char *n0, const char *n1, const char *why) {
  float p[4] = {1, 2, 3, 4}, g[4] = {0.5f, -0.25f, 1, 2};
  uint16_t p16[4], g16[4];
  CK_OK(fo_convert_from_f32(FO_DTYPE_BF16, p, p16, 4));
  CK_OK(fo_convert_from_f32(FO_DTYPE_BF16, g, g16, 4));
  int half = dtype != FO_DTYPE_F32;
  void *pp = half ? (void *)p16 : (void *)p, *gp = half ? (void *)g16 : (void *)g;
  size_t es = fo_dtype_size(dtype);
  fo_tensor_desc t[2] = {{2, 0, pp, gp, n0}, {2, 0, (char *)pp + 2 * es, (char *)gp + 2 * es, n1}};
  fo_options o;
  fo_options_default(&o);
  o.param_dtype = o.grad_dtype = dtype;
  fo_hparams h;
  fo_hparams_default(FO_ALG_ADAMW, &h);
  fo_optimizer *opt = (fo_optimizer *)p;
  fo_status st = fo_optimizer_create(&opt, &o, &h, 1, t, 2);
  cr_expect_eq(st, FO_ERR_INVALID_ARGUMENT, "%s: %s", why, fo_last_error());
  cr_expect(opt == (fo_optimizer *)p, "%s: a failed create set *out", why);
  cr_expect(strncmp(fo_last_error(), "fo_optimizer_create: ", 21) == 0, "%s: %s", why,
            fo_last_error());
  if (st == FO_SUCCESS) fo_optimizer_destroy(opt);
}

static void expect_unsaveable(const char *n0, const char *n1, const char *why) {
  expect_unsaveable_as(FO_DTYPE_F32, n0, n1, why);
}

Test(names, refused_when_they_would_collide_or_cannot_be_written) {
  expect_unsaveable("w", "w", "two tensors named w");
  cr_expect(strstr(fo_last_error(), "tensors 0 and 1 would both be saved as \"w\""), "%s",
            fo_last_error());
  expect_unsaveable("w.exp_avg", "w", "a name that ends like a role");
  expect_unsaveable("tensor.1", NULL, "a name equal to another's default");
  expect_unsaveable("__metadata__", "b", "the safetensors metadata key");
  cr_expect(strstr(fo_last_error(), "reserved"), "%s", fo_last_error());
  expect_unsaveable("caf\xe9", "b", "Latin-1, not UTF-8");
  cr_expect(strstr(fo_last_error(), "UTF-8"), "%s", fo_last_error());
  /* "w" with master weights is saved with "w.master" beside it */
  expect_unsaveable_as(FO_DTYPE_BF16, "w.master", "w", "w beside w.master (bf16, master weights)");
  cr_expect(strstr(fo_last_error(), "\"w.master\""), "%s", fo_last_error());
}

/* The same two names are fine where no key collides: fp32 parameters keep
 * no master weights, so "w" and "w.master" save and load. */
Test(names, w_beside_w_master_without_master_weights) {
  ck_dir d;
  char path[128];
  scratch_file(&d, path, sizeof path, "m.safetensors");
  float p[4] = {1, 2, 3, 4}, g[4] = {0.5f, 0.25f, -1, 1}, q[4] = {0};
  fo_tensor_desc t[2] = {{2, 0, p, g, "w.master"}, {2, 0, p + 2, g + 2, "w"}};
  fo_tensor_desc t2[2] = {{2, 0, q, g, "w.master"}, {2, 0, q + 2, g + 2, "w"}};
  fo_options o;
  fo_options_default(&o);
  fo_hparams h;
  fo_hparams_default(FO_ALG_SGD, &h);
  o.algorithm = FO_ALG_SGD;
  fo_optimizer *a, *b;
  CK_OK(fo_optimizer_create(&a, &o, &h, 1, t, 2));
  CK_OK(fo_optimizer_create(&b, &o, &h, 1, t2, 2));
  CK_OK(fo_optimizer_step(a, NULL));
  CK_OK(fo_optimizer_save(a, path, NULL));
  CK_OK(fo_optimizer_load(b, path, NULL));
  cr_expect(memcmp(p, q, sizeof p) == 0, "parameters restored");
  fo_optimizer_destroy(a);
  fo_optimizer_destroy(b);
  ck_dir_remove(&d);
}

Test(names, utf8_and_quotes_round_trip) {
  ck_dir d;
  char path[128];
  scratch_file(&d, path, sizeof path, "u.safetensors");
  float p[4] = {1, 2, 3, 4}, g[4] = {0.5f, 0.25f, 1, 1}, q[4] = {0};
  const char *n0 = "caf\xc3\xa9 \"quoted\" \\ \t\x01 \xf0\x9f\x98\x80", *n1 = "b";
  fo_tensor_desc t[2] = {{2, 0, p, g, n0}, {2, 0, p + 2, g + 2, n1}};
  fo_tensor_desc t2[2] = {{2, 0, q, g, n0}, {2, 0, q + 2, g + 2, n1}};
  fo_options o;
  fo_options_default(&o);
  fo_hparams h;
  fo_hparams_default(FO_ALG_ADAMW, &h);
  fo_optimizer *a, *b;
  CK_OK(fo_optimizer_create(&a, &o, &h, 1, t, 2));
  CK_OK(fo_optimizer_create(&b, &o, &h, 1, t2, 2));
  CK_OK(fo_optimizer_step(a, NULL));
  CK_OK(fo_optimizer_save(a, path, NULL));
  CK_OK(fo_optimizer_load(b, path, NULL));
  cr_expect(memcmp(p, q, sizeof p) == 0, "parameters restored");
  fo_optimizer_destroy(a);
  fo_optimizer_destroy(b);
  ck_dir_remove(&d);
}

/* -------------------------------------------------------------- Python */

/* Python's own safetensors reads the file: names, dtypes, shapes, values,
 * and every checksum recomputed with zlib.crc32.  Skipped (with the reason)
 * where no Python has safetensors and numpy (ck_find_python). */
Test(files, python_safetensors_reads_it) {
  const char *py = ck_find_python();
  if (!py) cr_skip_test("no Python with safetensors and numpy (set FO_PYTHON to one)");
  ck_dir d;
  char path[128];
  scratch_file(&d, path, sizeof path, "py.safetensors");
  ck_model m;
  ck_model_create(&m, &adamw_bf16, 1);
  for (int s = 0; s < 3; s++) ck_step(&m, s);
  CK_OK(fo_optimizer_save(m.opt, path, NULL));
  /* the expected values, as the script prints them: parameter 2, element 7 */
  void *p2;
  CK_OK(fo_optimizer_param_ptr(m.opt, 2, &p2));
  float v;
  CK_OK(fo_convert_to_f32(FO_DTYPE_BF16, (const uint16_t *)p2 + 7, &v, 1));
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "%s %s/../checkpoint_python.py %s %a", py, FO_GOLDEN_DIR, path,
           (double)v);
  int rc = system(cmd);
  cr_expect(rc != -1 && WIFEXITED(rc) && WEXITSTATUS(rc) == 0, "%s failed (%d)", cmd, rc);
  ck_model_destroy(&m);
  ck_dir_remove(&d);
}

/* ------------------------------------------------------------ arguments */

Test(arguments, every_new_function_checks_its_own) {
  ck_model m;
  ck_model_create(&m, &adamw_bf16, 1);
  fo_status f;
  char msg[64], x[128];
  ck_dir d; /* a refused call writes nothing there */
  ck_dir_make(&d);
  ck_dir_file(&d, "x", x, sizeof x);
  cr_expect_eq(fo_optimizer_save(NULL, x, NULL), FO_ERR_NULL_POINTER);
  cr_expect_eq(fo_optimizer_save(m.opt, NULL, NULL), FO_ERR_NULL_POINTER);
  cr_expect_eq(fo_optimizer_save(m.opt, "", NULL), FO_ERR_INVALID_ARGUMENT);
  cr_expect_eq(fo_optimizer_save(m.opt, x, (fo_stream_t)&f), FO_ERR_INVALID_ARGUMENT);
  cr_expect(strstr(fo_last_error(), "stream must be NULL"), "%s", fo_last_error());
  cr_expect_eq(fo_optimizer_load(NULL, x, NULL), FO_ERR_NULL_POINTER);
  cr_expect_eq(fo_optimizer_load(m.opt, NULL, NULL), FO_ERR_NULL_POINTER);
  cr_expect_eq(fo_optimizer_load(m.opt, "", NULL), FO_ERR_INVALID_ARGUMENT);
  cr_expect_eq(fo_optimizer_load(m.opt, x, (fo_stream_t)&f), FO_ERR_INVALID_ARGUMENT);
  cr_expect_eq(fo_checkpoint_verify(NULL), FO_ERR_NULL_POINTER);
  cr_expect_eq(fo_optimizer_get_fault(NULL, &f, NULL, 0), FO_ERR_NULL_POINTER);
  cr_expect_eq(fo_optimizer_get_fault(m.opt, NULL, NULL, 0), FO_ERR_NULL_POINTER);
  cr_expect_eq(fo_optimizer_get_fault(m.opt, &f, NULL, 4), FO_ERR_NULL_POINTER);
  f = FO_ERR_INTERNAL;
  msg[0] = 'x';
  CK_OK(fo_optimizer_get_fault(m.opt, &f, msg, sizeof msg));
  cr_expect_eq(f, FO_SUCCESS);
  cr_expect_eq(msg[0], '\0');
  CK_OK(fo_optimizer_get_fault(m.opt, &f, NULL, 0));
  cr_expect_eq(ck_dir_count(&d), 0);
  ck_dir_remove(&d);
  ck_model_destroy(&m);
}
