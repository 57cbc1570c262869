/*
 * model.c -- the configurations, the bytes model and the hyper-parameters.
 *
 * Bytes a step must move per parameter (DESIGN.md, "Performance model":
 * each input read once, each output written once).  With P and G the
 * parameter and gradient element sizes and S the fp32 state buffers of the
 * algorithm (Adam, AdamW: m and v, S = 2; SGD momentum, Lion: one buffer,
 * S = 1):
 *
 *   weights   without master: read and write the parameter      2P
 *             with fp32 master: read and write the master, write
 *             the rounded parameter                              8 + P
 *   gradient  read                                               G
 *   state     read and write each buffer                         8S
 *
 *   config        P  G  master | AdamW/Adam (S=2) | SGD, Lion (S=1)
 *   fp32          4  4  no     | 28              | 20
 *   bf16-master   2  2  yes    | 28              | 20
 *   bf16          2  2  no     | 22              | 14
 *
 * (SGD's first step, which sets the buffer without reading it, is never
 * timed: warm-up runs first.)
 */
#include <math.h>
#include <string.h>

#include "bench.h"

const bench_config bench_configs[] = {
    {"fp32", FO_DTYPE_F32, FO_DTYPE_F32, 0},
    {"bf16-master", FO_DTYPE_BF16, FO_DTYPE_BF16, 1},
    {"bf16", FO_DTYPE_BF16, FO_DTYPE_BF16, 0},
};
const int bench_num_configs = (int)(sizeof bench_configs / sizeof bench_configs[0]);

const fo_algorithm bench_algs[] = {FO_ALG_ADAMW, FO_ALG_ADAM, FO_ALG_SGD, FO_ALG_LION};
const int bench_num_algs = (int)(sizeof bench_algs / sizeof bench_algs[0]);

/* The name a run is selected and reported by: the library's own. */
const char *bench_alg_name(fo_algorithm alg) {
  return fo_algorithm_string(alg);
}

static int64_t state_buffers(fo_algorithm alg) {
  return alg == FO_ALG_ADAM || alg == FO_ALG_ADAMW ? 2 : 1;
}

int64_t bench_bytes_per_param(fo_algorithm alg, const bench_config *c) {
  const int64_t p = (int64_t)fo_dtype_size(c->param), g = (int64_t)fo_dtype_size(c->grad);
  const int64_t weights = c->master ? 8 + p : 2 * p;
  return weights + g + 8 * state_buffers(alg);
}

int64_t bench_footprint_per_param(fo_algorithm alg, const bench_config *c) {
  const int64_t p = (int64_t)fo_dtype_size(c->param), g = (int64_t)fo_dtype_size(c->grad);
  return p + g + (c->master ? 4 : 0) + 4 * state_buffers(alg);
}

void bench_hparams(fo_algorithm alg, int group, fo_hparams *out) {
  FO_CHECK(fo_hparams_default(alg, out));
  /* lr 1e-3 for every rule: Lion's default 1e-4 moves a bf16 weight of
   * 0.05 (ulp 2.4e-4) by less than an ulp, and the correctness check could
   * not tell a working step from a no-op. */
  out->lr = 1e-3f;
  if (alg == FO_ALG_SGD) out->momentum = 0.9f;
  if (alg == FO_ALG_LION) out->weight_decay = 1e-2f;
  if (group == 1) out->weight_decay = 0.0f;
}

void bench_naive_scalars(fo_algorithm alg, const fo_hparams *h, int64_t t, naive_scalars *out) {
  naive_scalars s;
  memset(&s, 0, sizeof s);
  const double lr = h->lr, wd = h->weight_decay;
  const int decoupled = alg == FO_ALG_ADAMW || alg == FO_ALG_LION;
  s.lr = h->lr;
  s.l2 = decoupled ? 0.0f : h->weight_decay;
  s.decay = decoupled ? (float)(1.0 - lr * wd) : 1.0f;
  s.eps = h->eps;
  if (alg == FO_ALG_SGD) {
    s.b1 = h->momentum;
    s.omb1 = (float)(1.0 - (double)h->dampening);
    s.first = t == 1;
  } else {
    s.b1 = h->beta1;
    s.b2 = h->beta2;
    s.omb1 = (float)(1.0 - (double)h->beta1);
    s.omb2 = (float)(1.0 - (double)h->beta2);
    s.step_size = (float)(lr / (1.0 - pow((double)h->beta1, (double)t)));
    s.bc2_sqrt = (float)sqrt(1.0 - pow((double)h->beta2, (double)t));
  }
  *out = s;
}
