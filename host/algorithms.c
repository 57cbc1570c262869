/*
 * algorithms.c -- what the host knows about each update rule, in one
 * place: its name, its defaults, the checks of its hyper-parameters that
 * only it has, which state buffers it keeps, and what a checkpoint calls
 * them.  The arithmetic is kernels/rules.h's; the per-step scalars are
 * kernels/step_state.h's.  Adding an algorithm: a row here, a rule, its
 * scalars, a kernel instantiation (docs/design.md, "Adding an algorithm").
 */
#include <string.h>

#include "internal.h"

_Static_assert(FO_ALG_SGD == FO_RULE_SGD && FO_ALG_ADAM == FO_RULE_ADAM &&
                   FO_ALG_ADAMW == FO_RULE_ADAMW && FO_ALG_LION == FO_RULE_LION &&
                   FO_ALG_ADAGRAD == FO_RULE_ADAGRAD && FO_ALG_RMSPROP == FO_RULE_RMSPROP &&
                   FO_ALG_NADAM == FO_RULE_NADAM && FO_ALG_LAMB == FO_RULE_LAMB &&
                   FO_ALG_LARS == FO_RULE_LARS && FO_ALG_COUNT == FO_RULE_ALG_COUNT,
               "algorithm codes of rules.h must equal fo_algorithm");

/* The names checkpoints record ("fusedopt.algorithm"). */
const char *const fo_algorithm_names[FO_ALG_COUNT] = {
    [FO_ALG_SGD] = "sgd",     [FO_ALG_ADAM] = "adam",       [FO_ALG_ADAMW] = "adamw",
    [FO_ALG_LION] = "lion",   [FO_ALG_ADAGRAD] = "adagrad", [FO_ALG_RMSPROP] = "rmsprop",
    [FO_ALG_NADAM] = "nadam", [FO_ALG_LAMB] = "lamb",       [FO_ALG_LARS] = "lars",
};

/* The state roles, as a checkpoint names them after the tensor's name
 * (PyTorch's state names); NULL where the algorithm never keeps the role. */
typedef struct state_names {
  const char *exp_avg, *exp_avg_sq, *max_exp_avg_sq;
} state_names;

static const state_names rows[FO_ALG_COUNT] = {
    [FO_ALG_SGD] = {".momentum_buffer", NULL, NULL},
    [FO_ALG_ADAM] = {".exp_avg", ".exp_avg_sq", ".max_exp_avg_sq"},
    [FO_ALG_ADAMW] = {".exp_avg", ".exp_avg_sq", ".max_exp_avg_sq"},
    [FO_ALG_LION] = {".exp_avg", NULL, NULL},
    [FO_ALG_ADAGRAD] = {NULL, ".sum", NULL},
    [FO_ALG_RMSPROP] = {".momentum_buffer", ".square_avg", ".grad_avg"},
    [FO_ALG_NADAM] = {".exp_avg", ".exp_avg_sq", NULL},
    [FO_ALG_LAMB] = {".exp_avg", ".exp_avg_sq", NULL},
    [FO_ALG_LARS] = {".momentum_buffer", NULL, NULL},
};

static int known(fo_algorithm alg) {
  return (int)alg >= 0 && alg < FO_ALG_COUNT;
}

const char *fo_algorithm_string(fo_algorithm algorithm) {
  return known(algorithm) ? fo_algorithm_names[algorithm] : "unknown";
}

const char *fo_algorithm_state_suffix(fo_algorithm alg, fo_role role) {
  if (!known(alg)) return NULL;
  switch (role) {
    case FO_ROLE_MASTER: return ".master";
    case FO_ROLE_EXP_AVG: return rows[alg].exp_avg;
    case FO_ROLE_EXP_AVG_SQ: return rows[alg].exp_avg_sq;
    case FO_ROLE_MAX_EXP_AVG_SQ: return rows[alg].max_exp_avg_sq;
    default: return NULL;
  }
}

int fo_algorithm_uses_betas(fo_algorithm alg) {
  return alg == FO_ALG_ADAM || alg == FO_ALG_ADAMW || alg == FO_ALG_LION || alg == FO_ALG_NADAM ||
         alg == FO_ALG_LAMB;
}

int fo_algorithm_has_tensor_norms(fo_algorithm alg) {
  return alg == FO_ALG_LAMB || alg == FO_ALG_LARS;
}

/* ------------------------------------------------------------- defaults */

fo_status fo_hparams_default(fo_algorithm alg, fo_hparams *out) {
  static const char fn[] = "fo_hparams_default";
  if (!out) return fo_fail(FO_ERR_NULL_POINTER, fn, "out is NULL");
  if (!known(alg)) return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "unknown algorithm %d", (int)alg);
  fo_hparams h;
  memset(&h, 0, sizeof h); /* the reserved words included */
  h.struct_size = sizeof h;
  h.lr = 1e-3f;
  h.beta1 = 0.9f;
  h.beta2 = 0.999f;
  h.eps = 1e-8f;
  h.alpha = 0.99f;
  h.momentum_decay = 4e-3f;
  h.trust_coef = 1e-3f;
  h.layer_adaptation = 1;
  switch (alg) {
    case FO_ALG_ADAMW: h.weight_decay = 1e-2f; break;
    case FO_ALG_LION:
      h.lr = 1e-4f;
      h.beta2 = 0.99f;
      break;
    case FO_ALG_ADAGRAD:
      h.lr = 1e-2f;
      h.eps = 1e-10f;
      break;
    case FO_ALG_RMSPROP: h.lr = 1e-2f; break;
    case FO_ALG_NADAM: h.lr = 2e-3f; break;
    case FO_ALG_LAMB:
      h.eps = 1e-6f;
      h.weight_decay = 1e-2f;
      break;
    case FO_ALG_LARS:
      h.lr = 1.0f;
      h.momentum = 0.9f;
      break;
    default: break;
  }
  *out = h;
  return FO_SUCCESS;
}

/* ----------------------------------------------------------- validation */

/* The checks that depend on the algorithm; fo_validate_hparams has done
 * the common ones (finite, non-negative, flags 0 or 1). */
fo_status fo_algorithm_check_hparams(const char *func, fo_algorithm alg, int group,
                                     const fo_hparams *h) {
  int sgd_like = alg == FO_ALG_SGD || alg == FO_ALG_LARS;
  if (sgd_like && h->dampening > 1.0f)
    return fo_fail(FO_ERR_INVALID_ARGUMENT, func, "hparams[%d].dampening = %g is above 1", group,
                   (double)h->dampening);
  if (sgd_like && h->nesterov && (h->momentum <= 0.0f || h->dampening != 0.0f))
    return fo_fail(FO_ERR_INVALID_ARGUMENT, func,
                   "hparams[%d]: Nesterov needs momentum > 0 and dampening 0", group);
  if (fo_algorithm_uses_betas(alg) && (h->beta1 >= 1.0f || h->beta2 >= 1.0f))
    return fo_fail(FO_ERR_INVALID_ARGUMENT, func,
                   "hparams[%d]: beta1 = %g and beta2 = %g must be in [0, 1)", group,
                   (double)h->beta1, (double)h->beta2);
  int uses_eps = alg != FO_ALG_SGD && alg != FO_ALG_LION && alg != FO_ALG_LARS;
  if (uses_eps && !(h->eps > 0.0f))
    return fo_fail(FO_ERR_INVALID_ARGUMENT, func, "hparams[%d].eps = %g must be > 0", group,
                   (double)h->eps);
  if (alg == FO_ALG_RMSPROP && h->alpha >= 1.0f)
    return fo_fail(FO_ERR_INVALID_ARGUMENT, func, "hparams[%d].alpha = %g must be in [0, 1)", group,
                   (double)h->alpha);
  if (alg == FO_ALG_LARS && !(h->trust_coef > 0.0f))
    return fo_fail(FO_ERR_INVALID_ARGUMENT, func, "hparams[%d].trust_coef = %g must be > 0", group,
                   (double)h->trust_coef);
  return FO_SUCCESS;
}

/* ---------------------------------------------------------------- state */

fo_state_flags fo_state_needed(const fo_options *o, const fo_hparams *h, int num_groups) {
  fo_state_flags k = {0, 0, 0, 0};
  fo_algorithm alg = o->algorithm;
  k.master = o->param_dtype != FO_DTYPE_F32 && o->master_weights;
  switch (alg) {
    case FO_ALG_ADAM:
    case FO_ALG_ADAMW:
      k.exp_avg = k.exp_avg_sq = 1;
      for (int g = 0; g < num_groups; g++) k.max_exp_avg_sq |= h[g].amsgrad != 0;
      break;
    case FO_ALG_LION: k.exp_avg = 1; break;
    case FO_ALG_NADAM:
    case FO_ALG_LAMB: k.exp_avg = k.exp_avg_sq = 1; break;
    case FO_ALG_ADAGRAD: k.exp_avg_sq = 1; break;
    case FO_ALG_RMSPROP:
      k.exp_avg_sq = 1;
      for (int g = 0; g < num_groups; g++) {
        k.exp_avg |= h[g].momentum != 0.0f;
        k.max_exp_avg_sq |= h[g].centered != 0;
      }
      break;
    default: /* SGD, LARS: a momentum buffer when a group has momentum */
      for (int g = 0; g < num_groups; g++) k.exp_avg |= h[g].momentum != 0.0f;
      break;
  }
  return k;
}
