/*
 * model.c -- the configurations, the bytes model and the hyper-parameters.
 *
 * Bytes a step must move per parameter (DESIGN.md, "Performance model":
 * each input read once per pass that needs it, each output written once).
 * With P and G the parameter and gradient element sizes and S the fp32
 * state buffers of the algorithm (Adam, AdamW, NAdam, LAMB: m and v,
 * S = 2; SGD momentum, Lion, AdaGrad, LARS: one buffer, S = 1; RMSprop:
 * square_avg, + the momentum buffer, + grad_avg when centered):
 *
 *   weights   without master: read and write the parameter      2P
 *             with fp32 master: read and write the master, write
 *             the rounded parameter                              8 + P
 *   gradient  read                                               G
 *   state     read and write each buffer                         8S
 *
 * The two-pass rules (docs/performance.md) read more: LAMB's second pass
 * reads the weights (P, or 4 with a master) and m and v (8) again; LARS's
 * first pass reads the weights and the gradient, its second reads them
 * again (P or 4, and G).
 *
 *   config        P  G  master | AdamW, Adam, NAdam | SGD, Lion, AdaGrad | RMSprop  | LAMB | LARS
 *   fp32          4  4  no     | 28                 | 20                 | 28 (S=2) | 40   | 28
 *   bf16-master   2  2  yes    | 28                 | 20                 | 28       | 40   | 26
 *   bf16          2  2  no     | 22                 | 14                 | 22       | 32   | 18
 *   -clip: + G (one more read of the gradient)
 *
 * The -clip configurations (fp32-clip, bf16-master-clip) turn on
 * global-norm clipping and dynamic loss scaling: the pre-pass reads every
 * gradient once more, + G (fp32 AdamW 32, bf16-master AdamW 30).  The
 * bench sets the clipping threshold out of the gradients' reach and the
 * loss scale to 1 for good (row_options in run.c): the pre-pass, the
 * skip decision and the coefficient run as in training, and the
 * coefficient is exactly 1, so the plain naive step stays the check's
 * reference (its time has no norm pass: "vs naive" understates there).
 *
 * The benchmark's RMSprop has momentum 0.9 and is not centered (S = 2);
 * the counts follow bench_hparams(), so another choice there counts its
 * own bytes.  (SGD's and LARS's first steps, which set the buffer without
 * reading it, 4 B less, are never timed: warm-up runs first.  AdaGrad's
 * first step reads its sum, which starts at initial_accumulator_value.)
 * tests/emu/test_emu_traffic.c holds the kernels to these counts, byte
 * for byte, on the emulated device.
 */
#include <math.h>
#include <string.h>

#include "bench.h"

const bench_config bench_configs[] = {
    {"fp32", FO_DTYPE_F32, FO_DTYPE_F32, 0, 0},
    {"bf16-master", FO_DTYPE_BF16, FO_DTYPE_BF16, 1, 0},
    {"bf16", FO_DTYPE_BF16, FO_DTYPE_BF16, 0, 0},
    {"fp32-clip", FO_DTYPE_F32, FO_DTYPE_F32, 0, 1},
    {"bf16-master-clip", FO_DTYPE_BF16, FO_DTYPE_BF16, 1, 1},
};
const int bench_num_configs = (int)(sizeof bench_configs / sizeof bench_configs[0]);

const fo_algorithm bench_algs[] = {FO_ALG_ADAMW, FO_ALG_ADAM,    FO_ALG_SGD,
                                   FO_ALG_LION,  FO_ALG_ADAGRAD, FO_ALG_RMSPROP,
                                   FO_ALG_NADAM, FO_ALG_LAMB,    FO_ALG_LARS};
const int bench_num_algs = (int)(sizeof bench_algs / sizeof bench_algs[0]);

/* The name a run is selected and reported by: the library's own. */
const char *bench_alg_name(fo_algorithm alg) {
  return fo_algorithm_string(alg);
}

static int64_t state_buffers(fo_algorithm alg) {
  switch (alg) {
    case FO_ALG_ADAM:
    case FO_ALG_ADAMW:
    case FO_ALG_NADAM:
    case FO_ALG_LAMB: return 2;
    case FO_ALG_RMSPROP: {
      fo_hparams h;
      bench_hparams(alg, 0, &h);
      return 1 + (h.momentum != 0.0f) + (h.centered != 0);
    }
    default: return 1; /* SGD momentum, Lion, AdaGrad, LARS */
  }
}

int64_t bench_bytes_per_param(fo_algorithm alg, const bench_config *c) {
  const int64_t p = (int64_t)fo_dtype_size(c->param), g = (int64_t)fo_dtype_size(c->grad);
  /* Passes that read the weights, passes that read the gradient, and the
   * state bytes read again by a second pass. */
  const int64_t w_reads = alg == FO_ALG_LAMB || alg == FO_ALG_LARS ? 2 : 1;
  const int64_t g_reads = (alg == FO_ALG_LARS ? 2 : 1) + (c->clip ? 1 : 0);
  const int64_t state_rereads = alg == FO_ALG_LAMB ? 8 : 0;
  const int64_t weights = c->master ? 4 * w_reads + 4 + p : p * w_reads + p;
  return weights + g * g_reads + 8 * state_buffers(alg) + state_rereads;
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
  /* RMSprop: momentum 0.9, not centered (28 B per fp32 parameter). */
  if (alg == FO_ALG_RMSPROP) out->momentum = 0.9f;
  /* LAMB and LARS move each tensor by about lr * ||w|| (LARS: lr *
   * trust_coef * ||w||) per step: at lr 1e-3 (LARS: 1 with trust_coef
   * 1e-3) a bf16 weight would not move by an ulp (0.4 % of it), so the
   * check could not tell a step from a no-op.  LAMB lr 1e-2; LARS lr 10
   * (the paper's eta 1e-3, its large-batch rates) and weight decay 5e-4. */
  if (alg == FO_ALG_LAMB) out->lr = 1e-2f;
  if (alg == FO_ALG_LARS) {
    out->lr = 10.0f;
    out->weight_decay = 5e-4f;
  }
  if (group == 1) {
    out->weight_decay = 0.0f;
    /* Biases and norms: no trust ratio for LAMB (NVIDIA's FusedLAMB
     * applies it only where weight decay is). */
    if (alg == FO_ALG_LAMB) out->layer_adaptation = 0;
  }
}

/* NAdam's mu_t = beta1 * (1 - 0.5 * 0.96^(t * momentum_decay)). */
static double nadam_mu(const fo_hparams *h, int64_t t) {
  return (double)h->beta1 * (1.0 - 0.5 * pow(0.96, (double)t * (double)h->momentum_decay));
}

void bench_naive_scalars(fo_algorithm alg, const fo_hparams *h, int64_t t, naive_scalars *out) {
  naive_scalars s;
  memset(&s, 0, sizeof s);
  const double lr = h->lr, wd = h->weight_decay;
  const int decoupled = alg == FO_ALG_ADAMW || alg == FO_ALG_LION ||
                        (alg == FO_ALG_NADAM && h->decoupled_weight_decay);
  s.lr = h->lr;
  s.l2 = decoupled || alg == FO_ALG_LAMB ? 0.0f : h->weight_decay;
  s.decay = decoupled ? (float)(1.0 - lr * wd) : 1.0f;
  s.eps = h->eps;
  s.first = t == 1;
  switch (alg) {
    case FO_ALG_SGD:
    case FO_ALG_LARS:
      s.b1 = h->momentum;
      s.omb1 = (float)(1.0 - (double)h->dampening);
      s.wd = h->weight_decay;
      s.trust = h->trust_coef;
      s.adapt = h->layer_adaptation;
      break;
    case FO_ALG_ADAGRAD:
      s.lr = (float)(lr / (1.0 + (double)(t - 1) * (double)h->lr_decay));
      s.init = h->initial_accumulator_value;
      break;
    case FO_ALG_RMSPROP:
      s.b1 = h->momentum;
      s.b2 = h->alpha;
      s.omb2 = (float)(1.0 - (double)h->alpha);
      s.centered = h->centered;
      break;
    default: /* Adam, AdamW, Lion, NAdam, LAMB */
      s.b1 = h->beta1;
      s.b2 = h->beta2;
      s.omb1 = (float)(1.0 - (double)h->beta1);
      s.omb2 = (float)(1.0 - (double)h->beta2);
      s.step_size = (float)(lr / (1.0 - pow((double)h->beta1, (double)t)));
      s.bc1 = (float)(1.0 - pow((double)h->beta1, (double)t));
      s.bc2_sqrt = (float)sqrt(1.0 - pow((double)h->beta2, (double)t));
      s.wd = h->weight_decay;
      s.adapt = h->layer_adaptation;
      break;
  }
  if (alg == FO_ALG_NADAM) {
    /* mu_product over steps 1..t, in double: the naive step keeps no
     * state of its own between steps, so it is recomputed each step. */
    double prod = 1.0;
    for (int64_t k = 1; k <= t; k++) prod *= nadam_mu(h, k);
    const double mu = nadam_mu(h, t), mu_next = nadam_mu(h, t + 1);
    s.c1 = (float)(lr * (1.0 - mu) / (1.0 - prod));
    s.c2 = (float)(lr * mu_next / (1.0 - prod * mu_next));
  }
  *out = s;
}
