/*
 * fuzz_checkpoint.c -- libFuzzer target of the checkpoint reader.
 *
 * The reader is a set of pure functions over a memory buffer
 * (host/checkpoint/checkpoint_format.h), compiled straight into this
 * program with the library's CPU side -- no CUDA, no library build.  Each
 * input is:
 *
 *   1. verified on its own (container, version, every checksum);
 *   2. validated against each optimizer of fuzz_configs.h (built here by
 *      hand over host buffers, as the CPU executor holds them);
 *   3. when valid, applied as a load applies it, then saved again in
 *      memory by the writer and validated once more: a checkpoint the
 *      reader accepts must survive a round trip.
 *
 * Anything but a clean status -- a crash, a leak, undefined behaviour, an
 * out-of-bounds read of the exactly-sized input -- is a finding (built
 * with -fsanitize=fuzzer,address,undefined).  Run (tests/fuzz/README.md):
 *   fuzz_checkpoint -runs=20000 work/ tests/fuzz/corpus/
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint_format.h"
#include "exec.h"
#include "fuzz_configs.h"

/* --------------------------------------------------- hand-built optimizers */

static void *xcalloc(size_t n, size_t size) {
  void *p = calloc(n ? n : 1, size);
  if (!p) abort();
  return p;
}

static char *xstrdup(const char *s) {
  char *c = xcalloc(strlen(s) + 1, 1);
  memcpy(c, s, strlen(s));
  return c;
}

/* An optimizer object as fo_optimizer_create would leave it for the CPU
 * executor, without the plan (the reader never looks at it). */
static fo_optimizer *fixture(const fz_config *c) {
  fo_optimizer *o = xcalloc(1, sizeof *o);
  o->options.struct_size = sizeof o->options;
  o->options.executor = FO_EXEC_CPU;
  o->exec = fo_exec_cpu_ops();
  o->options.storage = FO_STORAGE_EXTERNAL;
  fz_apply_options(c, &o->options);
  o->num_groups = c->num_groups;
  for (int g = 0; g < c->num_groups; g++) {
    fo_hparams_default(c->alg, &o->hparams[g]);
    fz_apply_hparams(c, g, &o->hparams[g]);
  }
  o->keeps = fo_state_needed(&o->options, o->hparams, o->num_groups);
  o->num_tensors = c->num_tensors;
  o->names = xcalloc((size_t)c->num_tensors, sizeof *o->names);
  o->tensors = xcalloc((size_t)c->num_tensors, sizeof *o->tensors);
  o->state = xcalloc(1, sizeof *o->state);
  for (int i = 0; i < c->num_tensors; i++) {
    fo_plan_tensor *t = &o->tensors[i];
    size_t n = (size_t)c->sizes[i];
    if (c->names[i]) o->names[i] = xstrdup(c->names[i]);
    t->numel = c->sizes[i];
    t->group = i % c->num_groups;
    t->param = xcalloc(n, (size_t)fo_st_dtype_size(fo_st_dtype_of(c->pd)));
    if (o->keeps.master) t->master = xcalloc(n, sizeof(float));
    if (o->keeps.exp_avg) t->exp_avg = xcalloc(n, sizeof(float));
    if (o->keeps.exp_avg_sq) t->exp_avg_sq = xcalloc(n, sizeof(float));
    if (o->keeps.max_exp_avg_sq) t->max_exp_avg_sq = xcalloc(n, sizeof(float));
  }
  return o;
}

/* --------------------------------------------------------------- checks */

/* The writer's output for o, in memory: what fo_optimizer_save writes. */
static unsigned char *save_to_memory(const fo_optimizer *o, size_t *len) {
  fo_ckpt_plan plan;
  if (fo_ckpt_plan_build("fuzz", o, &plan) != FO_SUCCESS) abort();
  fo_crc32 *crc = xcalloc(1, sizeof *crc);
  fo_crc32_init(crc);
  for (int64_t k = 0; k < plan.n; k++)
    plan.e[k].crc =
        fo_crc32_update(crc, 0, fo_ckpt_entry_src(o, &plan.e[k]), (size_t)plan.e[k].bytes);
  char *hdr;
  size_t hlen;
  if (fo_ckpt_header("fuzz", o, o->state, &plan, &hdr, &hlen) != FO_SUCCESS) abort();
  *len = 8 + hlen + (size_t)plan.data_len;
  unsigned char *buf = xcalloc(*len, 1);
  for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
  memcpy(buf + 8, hdr, hlen);
  for (int64_t k = 0; k < plan.n; k++)
    if (plan.e[k].bytes)
      memcpy(buf + 8 + hlen + plan.e[k].begin, fo_ckpt_entry_src(o, &plan.e[k]),
             (size_t)plan.e[k].bytes);
  free(hdr);
  free(crc);
  fo_ckpt_plan_free(&plan);
  return buf;
}

/* Validate against o; when valid, apply and round-trip. */
static void against(fo_optimizer *o, const uint8_t *data, size_t size) {
  fo_ckpt_restore r;
  if (fo_ckpt_validate("fuzz", o, data, size, &r) != FO_SUCCESS) return;
  if (fo_ckpt_apply_tensors("fuzz", o, &r, -1) != FO_SUCCESS) abort();
  memcpy(o->hparams, r.hparams, (size_t)o->num_groups * sizeof *o->hparams);
  *o->state = r.state;
  fo_ckpt_restore_free(&r);
  size_t len;
  unsigned char *again = save_to_memory(o, &len);
  fo_ckpt_restore r2;
  if (fo_ckpt_validate("fuzz", o, again, len, &r2) != FO_SUCCESS) {
    fprintf(stderr, "round trip refused: %s\n", fo_last_error());
    abort();
  }
  fo_ckpt_restore_free(&r2);
  free(again);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  /* built once and reused: a valid input overwrites their buffers, which
   * is exactly what a load does */
  static fo_optimizer *opts[FZ_NUM_CONFIGS];
  if (!opts[0])
    for (int k = 0; k < FZ_NUM_CONFIGS; k++) opts[k] = fixture(&fz_configs[k]);
  (void)fo_ckpt_verify("fuzz", data, size);
  for (int k = 0; k < FZ_NUM_CONFIGS; k++) against(opts[k], data, size);
  return 0;
}
