/* hparams.c -- defaults, validation and the per-step scalars. */
#include <math.h>
#include <string.h>

#include "internal.h"

_Static_assert(FO_DTYPE_F32 == FO_RULE_F32 && FO_DTYPE_F16 == FO_RULE_F16 &&
                   FO_DTYPE_BF16 == FO_RULE_BF16,
               "dtype codes of rules.h must equal fo_dtype");
_Static_assert(FO_MAX_GROUPS == FO_PLAN_MAX_GROUPS, "group limits differ");
/* FO_LOSS_SCALE_MIN (a literal, for the public header) is FLT_MIN, the
 * floor the step applies (FO_RULE_LOSS_SCALE_MIN): a float comparison is
 * no integer constant expression for every compiler's _Static_assert, so
 * test_reliability checks that the scale backs off onto it exactly. */
_Static_assert(FO_MAX_STEP == FO_RULE_MAX_STEP, "step limits differ");

static int is_flag(int v) {
  return v == 0 || v == 1;
}

fo_status fo_validate_hparams(const char *func, fo_algorithm alg, int group, const fo_hparams *h) {
  /* A struct of another header version, or one not filled by
   * fo_hparams_default: refused before any field is read. */
  if (h->struct_size != sizeof(fo_hparams))
    return fo_fail(FO_ERR_INVALID_ARGUMENT, func,
                   "hparams[%d].struct_size = %zu, expected %zu (fill it with "
                   "fo_hparams_default)",
                   group, h->struct_size, sizeof(fo_hparams));
  for (size_t i = 0; i < sizeof h->reserved / sizeof h->reserved[0]; i++)
    if (h->reserved[i] != 0)
      return fo_fail(FO_ERR_INVALID_ARGUMENT, func,
                     "hparams[%d].reserved[%zu] is not zero (fill it with "
                     "fo_hparams_default)",
                     group, i);
  /* Every field must be finite, used or not: garbage in an unused field is
   * a sign of an uninitialised struct. */
  const struct {
    const char *name;
    float value;
  } fields[] = {{"lr", h->lr},
                {"weight_decay", h->weight_decay},
                {"momentum", h->momentum},
                {"dampening", h->dampening},
                {"beta1", h->beta1},
                {"beta2", h->beta2},
                {"eps", h->eps},
                {"lr_decay", h->lr_decay},
                {"initial_accumulator_value", h->initial_accumulator_value},
                {"alpha", h->alpha},
                {"momentum_decay", h->momentum_decay},
                {"trust_coef", h->trust_coef}};
  for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
    if (!isfinite(fields[i].value))
      return fo_fail(FO_ERR_INVALID_ARGUMENT, func, "hparams[%d].%s is not finite", group,
                     fields[i].name);
    if (fields[i].value < 0.0f)
      return fo_fail(FO_ERR_INVALID_ARGUMENT, func, "hparams[%d].%s = %g is negative", group,
                     fields[i].name, (double)fields[i].value);
  }
  const struct {
    const char *name;
    int value;
  } flags[] = {{"nesterov", h->nesterov},
               {"amsgrad", h->amsgrad},
               {"maximize", h->maximize},
               {"centered", h->centered},
               {"decoupled_weight_decay", h->decoupled_weight_decay},
               {"layer_adaptation", h->layer_adaptation}};
  for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++)
    if (!is_flag(flags[i].value))
      return fo_fail(FO_ERR_INVALID_ARGUMENT, func, "hparams[%d].%s = %d must be 0 or 1", group,
                     flags[i].name, flags[i].value);
  return fo_algorithm_check_hparams(func, alg, group, h);
}

_Static_assert(FO_SCHED_CONSTANT == FO_RULE_SCHED_CONSTANT &&
                   FO_SCHED_COSINE == FO_RULE_SCHED_COSINE && FO_SCHED_STEP == FO_RULE_SCHED_STEP &&
                   FO_SCHED_EXPONENTIAL == FO_RULE_SCHED_EXPONENTIAL &&
                   FO_SCHED_COSINE_RESTARTS == FO_RULE_SCHED_COSINE_RESTARTS &&
                   FO_SCHED_CYCLIC == FO_RULE_SCHED_CYCLIC,
               "schedule codes of step_state.h must equal fo_schedule_kind");

static fo_status validate_schedule(const char *fn, const fo_schedule *s) {
  if ((int)s->kind < 0 || s->kind >= FO_SCHED_COUNT)
    return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "unknown schedule kind %d", (int)s->kind);
  const struct {
    const char *name;
    int64_t value;
  } counts[] = {{"warmup_steps", s->warmup_steps},
                {"total_steps", s->total_steps},
                {"step_size", s->step_size},
                {"period", s->period},
                {"period_mult", s->period_mult}};
  for (size_t i = 0; i < sizeof counts / sizeof counts[0]; i++)
    if (counts[i].value < 0)
      return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "schedule.%s = %lld is negative", counts[i].name,
                     (long long)counts[i].value);
  if (!isfinite(s->gamma) || s->gamma < 0.0f)
    return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "schedule.gamma = %g must be finite and >= 0",
                   (double)s->gamma);
  if (!isfinite(s->min_ratio) || s->min_ratio < 0.0f || s->min_ratio > 1.0f)
    return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "schedule.min_ratio = %g must be in [0, 1]",
                   (double)s->min_ratio);
  switch (s->kind) {
    case FO_SCHED_COSINE:
      if (s->total_steps <= s->warmup_steps)
        return fo_fail(FO_ERR_INVALID_ARGUMENT, fn,
                       "cosine schedule: total_steps = %lld must exceed warmup_steps = %lld",
                       (long long)s->total_steps, (long long)s->warmup_steps);
      break;
    case FO_SCHED_STEP:
    case FO_SCHED_EXPONENTIAL:
      if (!(s->gamma > 0.0f && s->gamma <= 1.0f))
        return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "schedule.gamma = %g must be in (0, 1]",
                       (double)s->gamma);
      if (s->kind == FO_SCHED_STEP && s->step_size <= 0)
        return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "step schedule: step_size must be > 0");
      break;
    case FO_SCHED_COSINE_RESTARTS:
      if (s->period <= 0 || s->period_mult < 1)
        return fo_fail(FO_ERR_INVALID_ARGUMENT, fn,
                       "cosine-restarts schedule: period must be > 0 and period_mult >= 1");
      break;
    case FO_SCHED_CYCLIC:
      if (s->step_size <= 0 || s->step_size > INT64_MAX / 2)
        return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "cyclic schedule: step_size must be > 0");
      break;
    default: break;
  }
  return FO_SUCCESS;
}

static fo_status validate_scaler(const char *fn, const fo_loss_scaler_options *l) {
  if (l->enabled != 0 && l->enabled != 1)
    return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "loss_scaler.enabled must be 0 or 1");
  if (!(isfinite(l->init_scale) && l->init_scale >= FO_LOSS_SCALE_MIN))
    return fo_fail(FO_ERR_INVALID_ARGUMENT, fn,
                   "loss_scaler.init_scale = %g must be finite and >= FO_LOSS_SCALE_MIN (%g, "
                   "the smallest normal float)",
                   (double)l->init_scale, (double)FO_LOSS_SCALE_MIN);
  if (!(isfinite(l->growth_factor) && l->growth_factor > 1.0f))
    return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "loss_scaler.growth_factor = %g must be > 1",
                   (double)l->growth_factor);
  if (!(l->backoff_factor > 0.0f && l->backoff_factor < 1.0f))
    return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "loss_scaler.backoff_factor = %g must be in (0, 1)",
                   (double)l->backoff_factor);
  if (l->growth_interval < 1 || l->hysteresis < 1)
    return fo_fail(FO_ERR_INVALID_ARGUMENT, fn,
                   "loss_scaler.growth_interval and hysteresis must be >= 1");
  if (!(isfinite(l->max_scale) && l->max_scale >= 0.0f))
    return fo_fail(FO_ERR_INVALID_ARGUMENT, fn,
                   "loss_scaler.max_scale = %g must be finite and >= 0", (double)l->max_scale);
  if (l->max_scale > 0.0f && l->max_scale < l->init_scale)
    return fo_fail(FO_ERR_INVALID_ARGUMENT, fn,
                   "loss_scaler.max_scale = %g is below init_scale = %g", (double)l->max_scale,
                   (double)l->init_scale);
  return FO_SUCCESS;
}

fo_status fo_validate_step_options(const char *fn, const fo_options *o) {
  if (!(isfinite(o->max_grad_norm) && o->max_grad_norm >= 0.0f))
    return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "max_grad_norm = %g must be finite and >= 0",
                   (double)o->max_grad_norm);
  if (o->write_unscaled_grads != 0 && o->write_unscaled_grads != 1)
    return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "write_unscaled_grads must be 0 or 1");
  fo_status st = validate_scaler(fn, &o->loss_scaler);
  if (st != FO_SUCCESS) return st;
  return validate_schedule(fn, &o->schedule);
}

void fo_prepare_args_fill(const fo_optimizer *opt, fo_prepare_args *a) {
  const fo_options *o = &opt->options;
  memset(a, 0, sizeof *a);
  a->head.algorithm = (int32_t)o->algorithm;
  a->head.num_groups = opt->num_groups;
  a->head.check_grads = opt->check_grads;
  a->head.max_grad_norm = o->max_grad_norm;
  a->head.grad_divisor = opt->grad_divisor;
  a->head.scaler.enabled = o->loss_scaler.enabled;
  a->head.scaler.growth_interval = o->loss_scaler.growth_interval;
  a->head.scaler.hysteresis = o->loss_scaler.hysteresis;
  a->head.scaler.growth_factor = o->loss_scaler.growth_factor;
  a->head.scaler.backoff_factor = o->loss_scaler.backoff_factor;
  a->head.scaler.max_scale = o->loss_scaler.max_scale;
  const fo_schedule *s = &o->schedule;
  a->head.schedule = (fo_schedule_params){(int32_t)s->kind, s->warmup_steps,     s->total_steps,
                                          s->step_size,     s->period,           s->period_mult,
                                          (double)s->gamma, (double)s->min_ratio};
  for (int g = 0; g < opt->num_groups; g++) {
    const fo_hparams *h = &opt->hparams[g];
    fo_group_hparams *d = &a->groups[g];
    d->lr = h->lr;
    d->weight_decay = h->weight_decay;
    d->momentum = h->momentum;
    d->dampening = h->dampening;
    d->beta1 = h->beta1;
    d->beta2 = h->beta2;
    d->eps = h->eps;
    d->lr_decay = h->lr_decay;
    d->alpha = h->alpha;
    d->momentum_decay = h->momentum_decay;
    d->trust_coef = h->trust_coef;
    d->flags = (h->amsgrad ? FO_RULE_AMSGRAD : 0u) | (h->nesterov ? FO_RULE_NESTEROV : 0u) |
               (h->maximize ? FO_RULE_MAXIMIZE : 0u) | (h->centered ? FO_RULE_CENTERED : 0u) |
               (h->layer_adaptation ? FO_RULE_TRUST : 0u) |
               (h->decoupled_weight_decay ? FO_RULE_DECOUPLED : 0u);
  }
}

void fo_step_state_init(const fo_options *o, fo_step_state *out) {
  memset(out, 0, sizeof *out);
  out->scale = o->loss_scaler.enabled ? o->loss_scaler.init_scale : 1.0f;
  out->hysteresis_left = o->loss_scaler.hysteresis;
  out->grad_coef = 1.0f;
  out->lr_factor = 1.0f;
  for (int g = 0; g < FO_PLAN_MAX_GROUPS; g++) out->mu_product[g] = 1.0f;
}

int fo_scaler_fields_unused(const fo_options *o, fo_step_state *s) {
  if (o->loss_scaler.enabled) return 0;
  s->scale = 1.0f;
  s->growth_tracker = 0;
  s->hysteresis_left = o->loss_scaler.hysteresis;
  return 1;
}

float fo_nadam_mu_product(const fo_group_hparams *h, int64_t steps) {
  /* Multiplied and rounded to float step by step, as the steps do, so the
   * product is theirs bit for bit.  Once mu_t stops changing in double
   * (0.96^(t*psi) below its resolution, or psi 0) the product still does,
   * until it underflows to 0 or rounds back to itself; only past 2^24 such
   * steps (beta1 within about 2^-20 of 1) is the rest one power, rounded
   * once.  The steps' roundings drift from that power by up to half an ulp
   * per step past the cap (262 ulps after 4096 steps with beta1 = 1 -
   * 2^-18, test_api_step_state.c): there set_step agrees with stepping to
   * about 3e-8 relative per step past the cap, not bit for bit. */
  const int64_t cap = (int64_t)1 << 24;
  float p = 1.0f;
  int64_t t = 1, constant = 0;
  for (; t <= steps; t++) {
    double mu = fo_nadam_mu(h, t);
    float next = (float)((double)p * mu);
    if (next == 0.0f) return 0.0f; /* underflowed: it stays 0 */
    int settled = mu == fo_nadam_mu(h, t + 1);
    if (settled && next == p) return p; /* a fixed point: it stays there */
    p = next;
    if (settled && ++constant == cap) break;
  }
  if (t >= steps) return p;
  return (float)((double)p * pow(fo_nadam_mu(h, t), (double)(steps - t)));
}

fo_status fo_check_scaler_fields(const char *fn, fo_status code, const char *whose,
                                 const fo_loss_scaler_options *ls, float scale, int growth_tracker,
                                 int hysteresis_left) {
  /* what the scaler can produce (fo_scaler_backoff keeps it in range): a
   * subnormal or zero scale would make the next clean step's 1/scale inf */
  if (!(isfinite(scale) && scale >= FO_LOSS_SCALE_MIN))
    return fo_fail(code, fn, "%s loss scale %g is not finite and at least FO_LOSS_SCALE_MIN (%g)",
                   whose, (double)scale, (double)FO_LOSS_SCALE_MIN);
  if (!ls->enabled) return FO_SUCCESS;
  if (growth_tracker < 0)
    return fo_fail(code, fn, "%s growth tracker %d is negative", whose, growth_tracker);
  if (growth_tracker >= ls->growth_interval)
    return fo_fail(code, fn,
                   "%s growth tracker %d is not below this optimizer's "
                   "loss_scaler.growth_interval %d",
                   whose, growth_tracker, ls->growth_interval);
  if (hysteresis_left < 1 || hysteresis_left > ls->hysteresis)
    return fo_fail(code, fn,
                   "%s hysteresis count %d is outside [1, %d], this optimizer's "
                   "loss_scaler.hysteresis",
                   whose, hysteresis_left, ls->hysteresis);
  return FO_SUCCESS;
}

int fo_mu_product_valid(float p) {
  return p >= 0.0f && p <= 1.0f; /* NaN fails both */
}

void fo_steps_left_reset(fo_optimizer *opt, const fo_step_state *s) {
  int64_t used = s->step > s->skipped ? s->step : s->skipped;
  opt->steps_left = used < FO_MAX_STEP ? FO_MAX_STEP - used : 0;
}
