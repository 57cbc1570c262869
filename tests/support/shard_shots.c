/*
 * shard_shots.c -- snapshots of sharded states (shard_shots.h).
 */
#define _POSIX_C_SOURCE 200809L

#include "shard_shots.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------- snapshots */

void shot_take(fo_optimizer *opt, shot *s) {
  memset(s, 0, sizeof *s);
  CK_OK(fo_optimizer_get_info(opt, &s->info));
  for (int g = 0; g < 2; g++) CK_OK(fo_optimizer_get_hparams(opt, g, &s->h[g]));
  CK_OK(fo_optimizer_get_shard(opt, &s->first, &s->count));
  for (int r = 0; r < FO_ROLE_COUNT; r++) {
    if (r == FO_ROLE_GRAD) continue;
    void *p = NULL;
    size_t n = 0;
    if (fo_optimizer_arena(opt, (fo_role)r, &p, &n) != FO_SUCCESS) continue;
    s->buf[r] = malloc(n + 1);
    memcpy(s->buf[r], p, n);
    s->bytes[r] = n;
  }
}

void shot_free(shot *s) {
  for (int r = 0; r < FO_ROLE_COUNT; r++) free(s->buf[r]);
  memset(s, 0, sizeof *s);
}

void expect_same_bytes(const void *a, const void *b, size_t n, const char *what, int role) {
  const unsigned char *p = a, *q = b;
  size_t k = 0;
  while (k < n && p[k] == q[k]) k++;
  cr_expect_eq(k, n, "%s: role %d differs first at byte %zu of %zu", what, role, k, n);
}

void shot_expect(const shot *a, const shot *b, int skip_coef, const char *what) {
  const fo_step_info *x = &a->info, *y = &b->info;
  cr_expect(x->step == y->step && x->skipped_steps == y->skipped_steps &&
                x->last_step_skipped == y->last_step_skipped &&
                x->growth_tracker == y->growth_tracker,
            "%s: step %lld/%lld skipped %lld/%lld", what, (long long)x->step, (long long)y->step,
            (long long)x->skipped_steps, (long long)y->skipped_steps);
  cr_expect(ck_bits_equal(x->loss_scale, y->loss_scale) &&
                ck_bits_equal(x->grad_norm, y->grad_norm) &&
                ck_bits_equal(x->lr_factor, y->lr_factor) &&
                (skip_coef || ck_bits_equal(x->grad_coef, y->grad_coef)),
            "%s: the step state differs (scale %g/%g norm %g/%g coef %g/%g)", what,
            (double)x->loss_scale, (double)y->loss_scale, (double)x->grad_norm,
            (double)y->grad_norm, (double)x->grad_coef, (double)y->grad_coef);
  cr_expect(memcmp(a->h, b->h, sizeof a->h) == 0, "%s: hyper-parameters differ", what);
  for (int r = 0; r < FO_ROLE_COUNT; r++) {
    cr_expect_eq(!a->buf[r], !b->buf[r], "%s: role %d kept by one only", what, r);
    if (!a->buf[r] || !b->buf[r]) continue;
    if (r == FO_ROLE_PARAM) {
      cr_expect_eq(a->bytes[r], b->bytes[r], "%s: parameter bytes", what);
      expect_same_bytes(a->buf[r], b->buf[r], a->bytes[r], what, r);
      continue;
    }
    /* b's elements [b->first, +b->count) inside a's [a->first, +a->count) */
    cr_assert(b->first >= a->first && b->first + b->count <= a->first + a->count,
              "%s: shard [%lld, +%lld) not inside [%lld, +%lld)", what, (long long)b->first,
              (long long)b->count, (long long)a->first, (long long)a->count);
    cr_assert_eq(b->bytes[r], (size_t)b->count * 4, "%s: role %d holds %zu bytes", what, r,
                 b->bytes[r]);
    expect_same_bytes(a->buf[r] + (size_t)(b->first - a->first) * 4, b->buf[r], b->bytes[r], what,
                      r);
  }
}

void fleet_take(fleet *f, fleet_shot *x) {
  x->n = f->n;
  for (int k = 0; k < f->n; k++) shot_take(f->r[k].opt, &x->s[k]);
}

void fleet_shot_free(fleet_shot *x) {
  for (int k = 0; k < x->n; k++) shot_free(&x->s[k]);
}

void fleet_shot_expect(const fleet_shot *a, const fleet_shot *b, const char *what) {
  cr_assert_eq(a->n, b->n);
  char w[160];
  for (int k = 0; k < a->n; k++) {
    snprintf(w, sizeof w, "%s, rank %d of %d", what, k, a->n);
    shot_expect(&a->s[k], &b->s[k], 0, w);
  }
}

void whole_expect_fleet(const shot *whole, const fleet_shot *b, int skip_coef, const char *what) {
  char w[160];
  for (int k = 0; k < b->n; k++) {
    snprintf(w, sizeof w, "%s, rank %d of %d", what, k, b->n);
    shot_expect(whole, &b->s[k], skip_coef, w);
  }
}

char *header_text(const ck_bytes *b) {
  uint64_t n = 0;
  for (int i = 7; i >= 0; i--) n = n << 8 | b->p[i];
  cr_assert_leq(n, b->n - 8);
  char *h = malloc(n + 1);
  memcpy(h, b->p + 8, n);
  h[n] = '\0';
  return h;
}

/* ------------------------------------------------------------ configs */

ck_cfg cfg_of(int which) {
  ck_cfg c;
  memset(&c, 0, sizeof c);
  c.exec = FO_EXEC_CPU;
  c.storage = FO_STORAGE_ARENA;
  switch (which) {
    case 0: /* mixed precision with everything on */
      snprintf(c.label, sizeof c.label, "adamw-ams-bf16");
      c.alg = FO_ALG_ADAMW;
      c.pd = c.gd = FO_DTYPE_BF16;
      c.master = c.amsgrad = c.scaler = c.sched = 1;
      c.clip = 3.0f;
      break;
    case 1:
      snprintf(c.label, sizeof c.label, "sgd-nesterov-f32");
      c.alg = FO_ALG_SGD;
      c.pd = c.gd = FO_DTYPE_F32;
      c.momentum = 0.9f;
      c.nesterov = 1;
      c.clip = 0.5f;
      break;
    case 2:
      snprintf(c.label, sizeof c.label, "lion-f16");
      c.alg = FO_ALG_LION;
      c.pd = FO_DTYPE_F16;
      c.gd = FO_DTYPE_F32;
      c.master = c.scaler = 1;
      break;
    case 3: /* no pre-pass: exact across shardings */
      snprintf(c.label, sizeof c.label, "adam-f32");
      c.alg = FO_ALG_ADAM;
      c.pd = c.gd = FO_DTYPE_F32;
      c.sched = 1;
      break;
    default: /* no pre-pass, 16-bit */
      snprintf(c.label, sizeof c.label, "adamw-ams-bf16-plain");
      c.alg = FO_ALG_ADAMW;
      c.pd = c.gd = FO_DTYPE_BF16;
      c.master = c.amsgrad = 1;
      break;
  }
  return c;
}

/* ------------------------------------------------------------- refusals */

void bad_open(bad_fx *x, int n) {
  x->c = cfg_of(0);
  ck_dir_make(&x->d);
  paths_make(&x->files, &x->d, "k4", n);
  paths_make(&x->later, &x->d, "k6", n);
  ck_dir_file(&x->d, "whole.safetensors", x->whole, sizeof x->whole);
  fleet_make(&x->f, &x->c, n, 1, 1);
  fleet_steps(&x->f, 0, 4);
  file_arg s = {&x->files, x->whole, 0, 0};
  fleet_run(&x->f, phase_save, &s);
  fleet_expect_calls_ok(&x->f, "save");
  fleet_run(&x->f, phase_save_gathered, &s);
  fleet_expect_calls_ok(&x->f, "gathered save");
  fleet_steps(&x->f, 4, 6);
  s.per_rank = &x->later;
  fleet_run(&x->f, phase_save, &s);
  fleet_expect_calls_ok(&x->f, "save");
  fleet_steps(&x->f, 6, 7);
  fleet_take(&x->f, &x->before);
}

void bad_close(bad_fx *x) {
  fleet_shot_free(&x->before);
  fleet_free(&x->f);
  ck_dir_remove(&x->d);
}

void bad_expect(bad_fx *x, fo_status status, const char *want, const char *what) {
  fleet_expect_calls_failed(&x->f, status, want, what);
  fleet_shot now;
  fleet_take(&x->f, &now);
  char w[128];
  snprintf(w, sizeof w, "%s: the state after the refused load", what);
  fleet_shot_expect(&x->before, &now, w);
  fleet_shot_free(&now);
  for (int k = 0; k < x->f.n; k++) {
    fo_status fault;
    CK_OK(fo_optimizer_get_fault(x->f.r[k].opt, &fault, NULL, 0));
    cr_expect_eq(fault, FO_SUCCESS, "%s: rank %d faulted", what, k);
  }
}

void phase_load_each(fleet *f, int rank, const void *arg) {
  const per_rank_paths *a = arg;
  rk_record(&f->r[rank], fo_optimizer_load(f->r[rank].opt, a->p[rank], NULL));
}
