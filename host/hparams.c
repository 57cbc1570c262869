/* hparams.c -- defaults, validation and the per-step scalars. */
#include <math.h>
#include <string.h>

#include "internal.h"

_Static_assert(FO_ALG_SGD == FO_RULE_SGD && FO_ALG_ADAM == FO_RULE_ADAM &&
                   FO_ALG_ADAMW == FO_RULE_ADAMW && FO_ALG_LION == FO_RULE_LION,
               "algorithm codes of rules.h must equal fo_algorithm");
_Static_assert(FO_DTYPE_F32 == FO_RULE_F32 && FO_DTYPE_F16 == FO_RULE_F16 &&
                   FO_DTYPE_BF16 == FO_RULE_BF16,
               "dtype codes of rules.h must equal fo_dtype");
_Static_assert(FO_MAX_GROUPS == FO_PLAN_MAX_GROUPS, "group limits differ");

fo_status fo_hparams_default(fo_algorithm alg, fo_hparams *out) {
  static const char fn[] = "fo_hparams_default";
  if (!out) return fo_fail(FO_ERR_NULL_POINTER, fn, "out is NULL");
  if ((int)alg < 0 || alg >= FO_ALG_COUNT)
    return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "unknown algorithm %d", (int)alg);
  fo_hparams h;
  memset(&h, 0, sizeof h);
  h.lr = 1e-3f;
  h.beta1 = 0.9f;
  h.beta2 = 0.999f;
  h.eps = 1e-8f;
  if (alg == FO_ALG_ADAMW) h.weight_decay = 1e-2f;
  if (alg == FO_ALG_LION) {
    h.lr = 1e-4f;
    h.beta2 = 0.99f;
  }
  *out = h;
  return FO_SUCCESS;
}

static int is_flag(int v) { return v == 0 || v == 1; }

fo_status fo_validate_hparams(const char *func, fo_algorithm alg, int group,
                              const fo_hparams *h) {
  /* Every field must be finite, used or not: garbage in an unused field is
   * a sign of an uninitialised struct. */
  const struct {
    const char *name;
    float value;
  } fields[] = {{"lr", h->lr},         {"weight_decay", h->weight_decay},
                {"momentum", h->momentum}, {"dampening", h->dampening},
                {"beta1", h->beta1},   {"beta2", h->beta2},
                {"eps", h->eps}};
  for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
    if (!isfinite(fields[i].value))
      return fo_fail(FO_ERR_INVALID_ARGUMENT, func, "hparams[%d].%s is not finite",
                     group, fields[i].name);
    if (fields[i].value < 0.0f)
      return fo_fail(FO_ERR_INVALID_ARGUMENT, func, "hparams[%d].%s = %g is negative",
                     group, fields[i].name, (double)fields[i].value);
  }
  if (!is_flag(h->nesterov) || !is_flag(h->amsgrad) || !is_flag(h->maximize))
    return fo_fail(FO_ERR_INVALID_ARGUMENT, func,
                   "hparams[%d]: nesterov, amsgrad and maximize must be 0 or 1",
                   group);
  if (h->dampening > 1.0f)
    return fo_fail(FO_ERR_INVALID_ARGUMENT, func, "hparams[%d].dampening = %g is above 1",
                   group, (double)h->dampening);
  if (alg == FO_ALG_SGD && h->nesterov && (h->momentum <= 0.0f || h->dampening != 0.0f))
    return fo_fail(FO_ERR_INVALID_ARGUMENT, func,
                   "hparams[%d]: Nesterov needs momentum > 0 and dampening 0", group);
  if (alg != FO_ALG_SGD) {
    if (h->beta1 >= 1.0f || h->beta2 >= 1.0f)
      return fo_fail(FO_ERR_INVALID_ARGUMENT, func,
                     "hparams[%d]: beta1 = %g and beta2 = %g must be in [0, 1)", group,
                     (double)h->beta1, (double)h->beta2);
  }
  if ((alg == FO_ALG_ADAM || alg == FO_ALG_ADAMW) && !(h->eps > 0.0f))
    return fo_fail(FO_ERR_INVALID_ARGUMENT, func, "hparams[%d].eps = %g must be > 0",
                   group, (double)h->eps);
  return FO_SUCCESS;
}

void fo_step_scalars(const fo_optimizer *opt, int64_t t, fo_rule_scalars *out) {
  fo_algorithm alg = opt->options.algorithm;
  for (int g = 0; g < opt->num_groups; g++) {
    const fo_hparams *h = &opt->hparams[g];
    fo_rule_scalars s;
    memset(&s, 0, sizeof s);
    s.lr = h->lr;
    s.weight_decay = h->weight_decay;
    s.eps = h->eps;
    s.grad_coef = 1.0f;
    /* Products and powers in double, rounded once, as PyTorch computes its
     * Python-side scalars. */
    s.decay = (float)(1.0 - (double)h->lr * (double)h->weight_decay);
    if (alg == FO_ALG_SGD) {
      s.beta1 = h->momentum;
      s.one_minus_b1 = (float)(1.0 - (double)h->dampening);
      if (h->momentum != 0.0f) s.flags |= FO_RULE_MOMENTUM;
      if (h->nesterov) s.flags |= FO_RULE_NESTEROV;
      if (t == 1) s.flags |= FO_RULE_FIRST_STEP;
    } else {
      s.beta1 = h->beta1;
      s.beta2 = h->beta2;
      s.one_minus_b1 = (float)(1.0 - (double)h->beta1);
      s.one_minus_b2 = (float)(1.0 - (double)h->beta2);
      double bc1 = 1.0 - pow((double)h->beta1, (double)t);
      double bc2 = 1.0 - pow((double)h->beta2, (double)t);
      s.step_size = (float)((double)h->lr / bc1);
      s.bc2_sqrt = (float)sqrt(bc2);
      if (h->amsgrad) s.flags |= FO_RULE_AMSGRAD;
    }
    /* AdamW and Lion decay decoupled; SGD and Adam add wd*p to the
     * gradient (rules.h reads weight_decay for that). */
    if (alg == FO_ALG_ADAMW || alg == FO_ALG_LION) s.weight_decay = 0.0f;
    if (alg == FO_ALG_SGD || alg == FO_ALG_ADAM) s.decay = 1.0f;
    if (h->maximize) s.flags |= FO_RULE_MAXIMIZE;
    out[g] = s;
  }
}
