/*
 * train_opt.c -- from the flags to the library's hyper-parameters and
 * schedule, with each optimizer's defaults in one table.
 */
#include <math.h>
#include <stdio.h>

#include "train.h"

typedef struct opt_defaults {
  float lr, wd, momentum;
} opt_defaults;

/* Training the MLP (tuned on the digits; see docs/train.md). */
static const opt_defaults train_defaults[OPT_COUNT] = {
    [OPT_SGD] = {0.2f, 5e-4f, 0.0f},     [OPT_NESTEROV] = {0.05f, 5e-4f, 0.9f},
    [OPT_ADAM] = {2e-3f, 0.0f, 0.0f},    [OPT_ADAMW] = {2e-3f, 0.05f, 0.0f},
    [OPT_LION] = {5e-4f, 0.1f, 0.0f},    [OPT_ADAGRAD] = {0.05f, 0.0f, 0.0f},
    [OPT_RMSPROP] = {1e-3f, 0.0f, 0.0f}, [OPT_NADAM] = {2e-3f, 0.0f, 0.0f},
    [OPT_LAMB] = {5e-3f, 0.01f, 0.0f},   [OPT_LARS] = {2.0f, 5e-4f, 0.9f},
};

/* The quadratic bowl: no weight decay, lr 0.05 but for the two that it
 * hardly moves in 100 steps: AdaGrad (its step shrinks as the squared
 * gradients add up) and LARS (its trust ratio scales the step to about
 * 1e-3 lr ||x||).  docs/train.md lists them. */
static const opt_defaults bowl_defaults[OPT_COUNT] = {
    [OPT_SGD] = {0.05f, 0.0f, 0.0f},     [OPT_NESTEROV] = {0.05f, 0.0f, 0.9f},
    [OPT_ADAM] = {0.05f, 0.0f, 0.0f},    [OPT_ADAMW] = {0.05f, 0.0f, 0.0f},
    [OPT_LION] = {0.05f, 0.0f, 0.0f},    [OPT_ADAGRAD] = {0.5f, 0.0f, 0.0f},
    [OPT_RMSPROP] = {0.05f, 0.0f, 0.0f}, [OPT_NADAM] = {0.05f, 0.0f, 0.0f},
    [OPT_LAMB] = {0.05f, 0.0f, 0.0f},    [OPT_LARS] = {50.0f, 0.0f, 0.9f},
};

int train_failed(fo_status st, const char *call) {
  if (st == FO_SUCCESS) return 0;
  fprintf(stderr, "train: %s: %s: %s\n", call, fo_status_string(st), fo_last_error());
  return 1;
}

fo_algorithm opt_algorithm(int opt) {
  switch (opt) {
    case OPT_ADAM: return FO_ALG_ADAM;
    case OPT_ADAMW: return FO_ALG_ADAMW;
    case OPT_LION: return FO_ALG_LION;
    case OPT_ADAGRAD: return FO_ALG_ADAGRAD;
    case OPT_RMSPROP: return FO_ALG_RMSPROP;
    case OPT_NADAM: return FO_ALG_NADAM;
    case OPT_LAMB: return FO_ALG_LAMB;
    case OPT_LARS: return FO_ALG_LARS;
    default: return FO_ALG_SGD;
  }
}

int opt_has_momentum(int opt) {
  return opt == OPT_SGD || opt == OPT_NESTEROV || opt == OPT_LARS;
}

int opt_has_betas(int opt) {
  return opt == OPT_ADAM || opt == OPT_ADAMW || opt == OPT_LION || opt == OPT_NADAM ||
         opt == OPT_LAMB;
}

static float given_or(double value, float fallback) {
  return isnan(value) ? fallback : (float)value;
}

void make_hparams(const train_config *cfg, int opt, fo_hparams *weights, fo_hparams *biases) {
  const opt_defaults *d = cfg->bowl ? &bowl_defaults[opt] : &train_defaults[opt];
  fo_hparams_default(opt_algorithm(opt), weights); /* PyTorch's betas and eps */
  weights->lr = given_or(cfg->lr, d->lr);
  weights->weight_decay = given_or(cfg->wd, d->wd);
  if (opt_has_momentum(opt)) {
    weights->momentum = given_or(cfg->momentum, d->momentum);
    weights->nesterov = opt == OPT_NESTEROV;
  }
  weights->beta1 = given_or(cfg->beta1, weights->beta1);
  weights->beta2 = given_or(cfg->beta2, weights->beta2);
  *biases = *weights;
  biases->weight_decay = 0.0f;
  biases->layer_adaptation = 0; /* LAMB, LARS: biases keep the plain step */
}

/* The kinds' own lengths, as fractions of the steps after the warmup. */
/* The periods round up: the decay's steps are 0 .. decay_steps - 1, so a
 * period of decay_steps / 3 rounded down would start a fourth (a restart,
 * a third x0.1) in the last steps. */
static int64_t ceil_div(int64_t a, int64_t b) {
  return a > 0 ? (a + b - 1) / b : 1;
}

static void fill_schedule_shape(fo_schedule *s, int64_t decay_steps) {
  const int64_t third = ceil_div(decay_steps, 3);
  switch (s->kind) {
    case FO_SCHED_STEP: /* x0.1 twice */
      s->step_size = third;
      s->gamma = 0.1f;
      break;
    case FO_SCHED_EXPONENTIAL: /* down to 1% at the end */
      s->gamma = decay_steps > 0 ? (float)pow(0.01, 1.0 / (double)decay_steps) : 1.0f;
      break;
    case FO_SCHED_COSINE_RESTARTS: /* three equal periods */
      s->period = third;
      s->period_mult = 1;
      break;
    case FO_SCHED_CYCLIC: /* two triangles between 10% and 100% */
      s->step_size = ceil_div(decay_steps, 4);
      s->min_ratio = 0.1f;
      break;
    default: break;
  }
}

int make_schedule(const train_config *cfg, int64_t total_steps, int64_t default_warmup,
                  fo_schedule *out) {
  fo_options defaults;
  fo_options_default(&defaults);
  *out = defaults.schedule;
  int kind = cfg->schedule >= 0 ? cfg->schedule : cfg->bowl ? SCHED_CONSTANT : SCHED_COSINE;
  out->kind = (fo_schedule_kind)kind; /* sched_choice follows fo_schedule_kind */
  out->warmup_steps = cfg->warmup >= 0 ? cfg->warmup : default_warmup;
  if (out->warmup_steps >= total_steps && kind != SCHED_CONSTANT) {
    if (cfg->warmup >= 0) /* name the flag the user gave */
      fprintf(stderr, "train: --warmup %lld leaves nothing of the %lld steps for the %s schedule\n",
              (long long)out->warmup_steps, (long long)total_steps, schedule_name(kind));
    else
      fprintf(stderr, "train: the %s schedule needs more than %lld steps, and %s gives %lld\n",
              schedule_name(kind), (long long)out->warmup_steps, cfg->bowl ? "--steps" : "--epochs",
              (long long)total_steps);
    return EXIT_TRAIN_USAGE;
  }
  out->total_steps = total_steps;
  fill_schedule_shape(out, total_steps - out->warmup_steps);
  return 0;
}
