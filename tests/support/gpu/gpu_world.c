/*
 * gpu_world.c -- the GPU tier's tensor lists (gpu_world.h).
 */
#include "gpu_world.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

const fo_role STATE_ROLES[4] = {FO_ROLE_MASTER, FO_ROLE_EXP_AVG, FO_ROLE_EXP_AVG_SQ,
                                FO_ROLE_MAX_EXP_AVG_SQ};
const char *const ROLE_NAMES[4] = {"master", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"};

/* phase 0: the parameters' buffer, 1: the gradients'.  Tensor i is
 * 256-byte aligned in both when i % 3 == 0 (the vector path: the step
 * loads 16 bytes at a time only when a tensor's parameter and gradient are
 * both 16-byte aligned, host/layout.c), only its gradient is when
 * i % 3 == 1, only its parameter when i % 3 == 2; the one off is 1..7
 * elements off (for 4-byte elements, 4 off is aligned again). */
static size_t layout(world *w, size_t *off, size_t elem, int phase) {
  size_t cursor = 0;
  for (int64_t i = 0; i < w->nt; i++) {
    cursor = (cursor + GAP + 255) & ~(size_t)255;
    int64_t k = i % 3 == 1 + phase ? 1 + (i * 5 + phase) % 7 : 0;
    off[i] = cursor + (size_t)k * elem;
    cursor = off[i] + (size_t)w->numel[i] * elem;
  }
  return cursor + GAP;
}

void world_init(world *w, fo_dtype pt, fo_dtype gt, const int64_t *numel, int64_t nt) {
  w->nt = nt;
  w->numel = calloc((size_t)w->nt, sizeof *w->numel);
  w->hoff = calloc((size_t)w->nt + 1, sizeof *w->hoff);
  w->group = calloc((size_t)w->nt, sizeof *w->group);
  w->poff = calloc((size_t)w->nt, sizeof *w->poff);
  w->goff = calloc((size_t)w->nt, sizeof *w->goff);
  cr_assert(w->numel && w->hoff && w->group && w->poff && w->goff);
  for (int64_t i = 0; i < w->nt; i++) {
    w->numel[i] = numel[i];
    w->group[i] = (int)(i % 2);
    w->hoff[i + 1] = w->hoff[i] + w->numel[i];
  }
  w->total = w->hoff[w->nt];
  w->pt = pt;
  w->gt = gt;
  w->pbytes = layout(w, w->poff, fo_dtype_size(pt), 0);
  w->gbytes = layout(w, w->goff, fo_dtype_size(gt), 1);
}

void world_free(world *w) {
  free(w->numel);
  free(w->hoff);
  free(w->group);
  free(w->poff);
  free(w->goff);
}

double max_abs(const double *x, int64_t n) {
  double m = 0.0;
  for (int64_t i = 0; i < n; i++)
    if (isfinite(x[i]) && fabs(x[i]) > m) m = fabs(x[i]);
  return m;
}

void expect_report(int ok, const tu_report *rep, const char *label, const char *ctx) {
  char msg[512];
  tu_report_format(rep, label, msg, sizeof msg);
  cr_assert(ok, "%s: %s", ctx, msg);
}
