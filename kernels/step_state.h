/*
 * step_state.h -- what a step decides before it touches a tensor, written
 * once for both executors (C and CUDA, like rules.h).
 *
 * Per step, in this order:
 *   1. the gradient pre-pass leaves one partial sum of squares per plan
 *      block (double; a non-finite gradient makes its partial non-finite);
 *   2. fo_prepare_step() folds the total into the norm, decides whether the
 *      step is skipped, computes the combined gradient coefficient (unscale,
 *      clip, average), the schedule's learning-rate factor and every group's
 *      scalars, advances the step counter and updates the loss scaler;
 *   3. the update reads the scalars from the state and does nothing when
 *      the state says the step is skipped.
 * On the CUDA executor the state lives in device memory and steps 1-3 are
 * three launches with no host synchronization; the CPU executor runs the
 * same functions on host memory.
 */
#ifndef FO_STEP_STATE_H
#define FO_STEP_STATE_H

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "plan.h"
#include "rules.h"

/* The loss scale's floor (FO_LOSS_SCALE_MIN of fusedopt.h): the smallest
 * normal float, 2^-126.  Its inverse, 2^126, still fits fp32 with room to
 * spare; below it the inverse soon overflows (from 2^-128 on), and a
 * subnormal or zero scale rounds the scaled gradients to zeros that the
 * overflow check cannot see. */
#define FO_RULE_LOSS_SCALE_MIN FLT_MIN

/* The largest step count (FO_MAX_STEP of fusedopt.h): the counters stop
 * here instead of overflowing int64 (undefined behaviour). */
#define FO_RULE_MAX_STEP ((int64_t)1 << 62)

/* Schedule kinds: equal to fo_schedule_kind. */
#define FO_RULE_SCHED_CONSTANT 0
#define FO_RULE_SCHED_COSINE 1
#define FO_RULE_SCHED_STEP 2
#define FO_RULE_SCHED_EXPONENTIAL 3
#define FO_RULE_SCHED_COSINE_RESTARTS 4
#define FO_RULE_SCHED_CYCLIC 5

/* Flag of fo_group_hparams.flags only: NAdam decays decoupled. */
#define FO_RULE_DECOUPLED 0x100u

/* A group's hyper-parameters as the prepare step reads them. */
typedef struct fo_group_hparams {
  float lr, weight_decay, momentum, dampening, beta1, beta2, eps;
  float lr_decay, alpha, momentum_decay, trust_coef;
  uint32_t flags; /* FO_RULE_AMSGRAD | NESTEROV | MAXIMIZE | CENTERED | TRUST | DECOUPLED */
} fo_group_hparams;

typedef struct fo_schedule_params {
  int32_t kind;
  int64_t warmup_steps, total_steps, step_size, period, period_mult;
  double gamma, min_ratio;
} fo_schedule_params;

typedef struct fo_scaler_params {
  int32_t enabled;
  int32_t growth_interval;
  int32_t hysteresis;
  float growth_factor, backoff_factor, max_scale; /* max_scale 0: none */
} fo_scaler_params;

/* What the prepare step needs that the host owns, but the groups. */
typedef struct fo_prepare_head {
  int32_t algorithm;
  int32_t num_groups;
  int32_t check_grads; /* a pre-pass ran: partials are valid */
  float max_grad_norm; /* 0: no clipping */
  float grad_divisor;  /* 1, or the world size of a data-parallel run */
  fo_scaler_params scaler;
  fo_schedule_params schedule;
} fo_prepare_head;

/* Everything the prepare step needs that the host owns; passed by value
 * (the prepare kernel's launch carries only the groups in use when there
 * are few: kernels/prestep.cu). */
typedef struct fo_prepare_args {
  fo_prepare_head head;
  fo_group_hparams groups[FO_PLAN_MAX_GROUPS];
} fo_prepare_args;

/* The optimizer's per-step state; in the executor's memory. */
typedef struct fo_step_state {
  int64_t step;            /* applied steps */
  int64_t skipped;         /* steps skipped for a non-finite gradient */
  float scale;             /* the loss scale the next backward pass should use */
  int32_t growth_tracker;  /* clean steps since the scale last changed */
  int32_t hysteresis_left; /* overflows still tolerated before a backoff */
  int32_t skip;            /* the current step is skipped */
  float grad_norm;         /* global L2 norm of the unscaled gradients */
  float grad_coef;         /* what the update multiplies gradients by */
  float lr_factor;         /* the schedule's factor of the current step */
  int32_t pad;
  fo_rule_scalars groups[FO_PLAN_MAX_GROUPS];
  /* NAdam: each group's running product of its momentum coefficients
   * mu_1 ... mu_t (1 before the first step), in fp32 as PyTorch keeps it. */
  float mu_product[FO_PLAN_MAX_GROUPS];
} fo_step_state;

/* ------------------------------------------------------------ schedules */

/* The learning-rate factor after k completed steps (the step about to run
 * is number k+1).  Closed forms, documented in docs/numerics.md. */
FO_HD double fo_schedule_factor(const fo_schedule_params *s, int64_t k) {
  const double pi = 3.14159265358979323846;
  if (s->warmup_steps > 0 && k < s->warmup_steps) return (double)(k + 1) / (double)s->warmup_steps;
  int64_t j = k - (s->warmup_steps > 0 ? s->warmup_steps : 0); /* steps after warmup */
  switch (s->kind) {
    case FO_RULE_SCHED_COSINE: {
      int64_t span = s->total_steps - (s->warmup_steps > 0 ? s->warmup_steps : 0);
      double p = span > 0 ? (double)j / (double)span : 1.0;
      if (p > 1.0) p = 1.0;
      return s->min_ratio + (1.0 - s->min_ratio) * 0.5 * (1.0 + cos(pi * p));
    }
    case FO_RULE_SCHED_STEP: return pow(s->gamma, (double)(j / s->step_size));
    case FO_RULE_SCHED_EXPONENTIAL: return pow(s->gamma, (double)j);
    case FO_RULE_SCHED_COSINE_RESTARTS: {
      int64_t len = s->period, pos = j;
      while (pos >= len) { /* at most ~62 rounds when period_mult >= 2 */
        pos -= len;
        if (s->period_mult > 1) {
          if (len > INT64_MAX / s->period_mult) {
            len = INT64_MAX; /* a period longer than any step count: the last */
            break;
          }
          len *= s->period_mult;
        } else {
          pos %= len; /* equal periods: jump straight to the last one */
        }
      }
      double p = (double)pos / (double)len;
      return s->min_ratio + (1.0 - s->min_ratio) * 0.5 * (1.0 + cos(pi * p));
    }
    case FO_RULE_SCHED_CYCLIC: {
      double x = (double)(j % (2 * s->step_size)) / (double)s->step_size; /* [0, 2) */
      double tri = x <= 1.0 ? x : 2.0 - x;                                /* 0 -> 1 -> 0 */
      return s->min_ratio + (1.0 - s->min_ratio) * tri;
    }
    default: return 1.0;
  }
}

/* The most groups whose scalars a step launch can carry by value
 * (fo_known_step). */
#define FO_KNOWN_GROUPS 4

/* A step decided on the host, carried by value in the step launch
 * (kernels/launch.h) instead of written by the prepare kernel: what the
 * prepare step would have left in the step state for a step without a
 * pre-pass, for the first num_groups groups.  The CUDA executor uses it
 * for eager steps whose outcome the host can compute without the device
 * (host/known.c); block 0 of the launch then writes it into the state
 * (fo_known_publish) for the passes and readers that come after. */
typedef struct fo_known_step {
  int64_t step;    /* the step being applied, 1-based: the count after it */
  int64_t skipped; /* the skipped count, unchanged by an applied step */
  float grad_norm, grad_coef, lr_factor;
  int32_t num_groups;
  fo_rule_scalars groups[FO_KNOWN_GROUPS];
  float mu_product[FO_KNOWN_GROUPS]; /* NAdam's products after this step */
} fo_known_step;

/* ------------------------------------------------------------- scalars */

/* NAdam's momentum coefficient of step t: beta1 * (1 - 0.5 * 0.96^(t*psi)). */
FO_HD double fo_nadam_mu(const fo_group_hparams *h, int64_t t) {
  return (double)h->beta1 * (1.0 - 0.5 * pow(0.96, (double)t * (double)h->momentum_decay));
}

/* Does an L2-decaying algorithm (weight decay added to the gradient)? */
FO_HD int fo_rule_l2_decay(int alg, uint32_t flags) {
  switch (alg) {
    case FO_RULE_SGD:
    case FO_RULE_ADAM:
    case FO_RULE_ADAGRAD:
    case FO_RULE_RMSPROP:
    case FO_RULE_LAMB: /* wd*p joins the update u, not the gradient: the rule knows */
    case FO_RULE_LARS: return 1;
    case FO_RULE_NADAM: return !(flags & FO_RULE_DECOUPLED);
    default: return 0;
  }
}

/* One group's scalars for step t (1-based) with learning rate lr.
 * *mu_product is the group's NAdam product, advanced here (NAdam only). */
FO_HD void fo_group_scalars(int alg, const fo_group_hparams *h, int64_t t, double lr,
                            float grad_coef, float *mu_product, fo_rule_scalars *out) {
  fo_rule_scalars s;
  s.lr = (float)lr;
  int l2 = fo_rule_l2_decay(alg, h->flags);
  s.weight_decay = l2 ? h->weight_decay : 0.0f;
  s.eps = h->eps;
  s.grad_coef = grad_coef;
  s.flags = h->flags & (FO_RULE_MAXIMIZE | FO_RULE_CENTERED | FO_RULE_TRUST);
  /* the decoupled decays: p *= 1 - lr*wd */
  s.decay = l2 ? 1.0f : (float)(1.0 - lr * (double)h->weight_decay);
  s.beta2 = s.one_minus_b2 = s.step_size = s.step_size_g = s.bc2_sqrt = 0.0f;
  s.trust_coef = h->trust_coef;
  /* Products and powers in double, rounded once, as PyTorch computes its
   * Python-side scalars. */
  switch (alg) {
    case FO_RULE_SGD:
    case FO_RULE_LARS:
      s.beta1 = h->momentum;
      s.one_minus_b1 = (float)(1.0 - (double)h->dampening);
      if (h->momentum != 0.0f) s.flags |= FO_RULE_MOMENTUM;
      s.flags |= h->flags & FO_RULE_NESTEROV;
      if (t == 1) s.flags |= FO_RULE_FIRST_STEP;
      break;
    case FO_RULE_ADAGRAD: /* the sums start filled (fo_layout_fill_initial_sums) */
      s.beta1 = s.one_minus_b1 = 0.0f;
      s.lr = (float)(lr / (1.0 + (double)(t - 1) * (double)h->lr_decay));
      break;
    case FO_RULE_RMSPROP:
      s.beta1 = h->momentum;
      s.one_minus_b1 = 0.0f;
      s.beta2 = h->alpha;
      s.one_minus_b2 = (float)(1.0 - (double)h->alpha);
      if (h->momentum != 0.0f) s.flags |= FO_RULE_MOMENTUM;
      break;
    default: { /* Adam, AdamW, Lion, NAdam, LAMB */
      s.beta1 = h->beta1;
      s.beta2 = h->beta2;
      s.one_minus_b1 = (float)(1.0 - (double)h->beta1);
      s.one_minus_b2 = (float)(1.0 - (double)h->beta2);
      double bc1 = 1.0 - pow((double)h->beta1, (double)t);
      double bc2 = 1.0 - pow((double)h->beta2, (double)t);
      s.bc2_sqrt = (float)sqrt(bc2);
      s.step_size = (float)(lr / bc1);
      s.flags |= h->flags & FO_RULE_AMSGRAD;
      if (alg == FO_RULE_LAMB) s.step_size = (float)(1.0 / bc1);
      if (alg == FO_RULE_NADAM) {
        /* torch.optim.NAdam: the gradient's and the first moment's
         * coefficients from mu_t, mu_{t+1} and the running product */
        double mu = fo_nadam_mu(h, t), mu_next = fo_nadam_mu(h, t + 1);
        double prod = (double)*mu_product * mu;
        *mu_product = (float)prod;
        prod = (double)*mu_product;
        s.step_size_g = (float)(lr * (1.0 - mu) / (1.0 - prod));
        s.step_size = (float)(lr * mu_next / (1.0 - prod * mu_next));
      }
      break;
    }
  }
  *out = s;
}

/* ------------------------------------------------------------- scaler */

/* A backed-off scale, kept inside [FO_RULE_LOSS_SCALE_MIN, FLT_MAX]: a
 * scale that falls below the floor stops there, and one that is not a
 * number at all (written through fo_optimizer_loss_scale_ptr, say)
 * restarts from an end of the range instead of staying stuck. */
FO_HD float fo_scaler_backoff(float scale, float backoff_factor) {
  float s = scale * backoff_factor;
  if (s > FLT_MAX) return FLT_MAX;                                 /* +inf */
  return s >= FO_RULE_LOSS_SCALE_MIN ? s : FO_RULE_LOSS_SCALE_MIN; /* NaN too */
}

/* PyTorch GradScaler's update, plus an optional maximum, hysteresis and a
 * floor: an overflow backs off only after `hysteresis` consecutive
 * overflows, never below FO_RULE_LOSS_SCALE_MIN; a clean step restores the
 * hysteresis; growth_interval consecutive clean steps multiply the scale by
 * growth_factor unless that would reach inf or pass max_scale. */
FO_HD void fo_scaler_update(const fo_scaler_params *p, fo_step_state *st, int overflow) {
  if (overflow) {
    st->growth_tracker = 0;
    if (--st->hysteresis_left <= 0) {
      st->scale = fo_scaler_backoff(st->scale, p->backoff_factor);
      st->hysteresis_left = p->hysteresis;
    }
    return;
  }
  st->hysteresis_left = p->hysteresis;
  if (++st->growth_tracker < p->growth_interval) return;
  st->growth_tracker = 0;
  float grown = st->scale * p->growth_factor;
  if (isfinite(grown) && (p->max_scale <= 0.0f || grown <= p->max_scale))
    st->scale = grown;
  else if (isfinite(p->max_scale) && p->max_scale > 0.0f && st->scale < p->max_scale)
    st->scale = p->max_scale;
}

/* -------------------------------------------------------------- prepare */

/* Decide the step from the total sum of squares of the (scaled, summed
 * over ranks) gradients: the norm, the coefficient, the skip decision, the
 * scaler, and for a step that applies (returns 1) the schedule's factor.
 * Runs on one thread; then fo_prepare_group() for every group (on the
 * device one thread each) and the step count goes up (fo_prepare_step()
 * is the three in order).
 *
 * A step is skipped -- nothing but the scaler and the skip count changes --
 * when a gradient is not finite, and also when the combined coefficient
 * the update would multiply the gradients by is not, or the loss scale is
 * below its floor: a scale of zero or a subnormal (written through the
 * scale pointer) makes 1/scale inf, or nearly, while the scaled gradients
 * look clean, and applying that would turn every parameter into NaN.  Such
 * a step counts as an overflow, so the scale backs off onto the floor and
 * the next step can apply.
 *
 * The counters never pass FO_RULE_MAX_STEP: the host refuses a step that
 * could take them there, and a step replayed from a CUDA graph past it is
 * skipped here instead of overflowing. */
FO_HD int fo_prepare_decide(const fo_prepare_head *a, double sumsq, fo_step_state *st,
                            double *factor) {
  int nonfinite = a->check_grads && !isfinite(sumsq);
  float scale = a->scaler.enabled ? st->scale : 1.0f;
  /* 1/scale and 1/world in double, rounded once */
  double unscale = 1.0 / ((double)scale * (double)a->grad_divisor);
  double norm = a->check_grads ? sqrt(sumsq) * unscale : 0.0;
  double clip = 1.0;
  if (a->max_grad_norm > 0.0f && !nonfinite) {
    double c = (double)a->max_grad_norm / (norm + 1e-6);
    if (c < 1.0) clip = c;
  }
  st->grad_norm = (float)norm;
  st->grad_coef = (float)(unscale * clip);
  /* a scale below the floor (or NaN) can only have been written from
   * outside; 1/scale may still be finite, but it is far past any useful
   * multiplier */
  int bad_coef =
      !isfinite(st->grad_coef) || (a->scaler.enabled && !(st->scale >= FO_RULE_LOSS_SCALE_MIN));
  int exhausted = st->step >= FO_RULE_MAX_STEP;
  st->skip = nonfinite || bad_coef || exhausted;
  if (a->scaler.enabled && !exhausted) fo_scaler_update(&a->scaler, st, nonfinite || bad_coef);
  if (st->skip) {
    if (st->skipped < FO_RULE_MAX_STEP) st->skipped++;
    return 0;
  }
  *factor = fo_schedule_factor(&a->schedule, st->step);
  st->lr_factor = (float)*factor;
  return 1;
}

/* Group g's scalars (algorithm alg, hyper-parameters groups[g]) for the
 * step being applied (t = st->step + 1), with the schedule's factor from
 * fo_prepare_decide.  Groups touch only their own slots, so one thread per
 * group may run these side by side. */
FO_HD void fo_prepare_group(int alg, const fo_group_hparams *groups, fo_step_state *st, int g,
                            double factor) {
  fo_group_scalars(alg, &groups[g], st->step + 1, (double)groups[g].lr * factor, st->grad_coef,
                   &st->mu_product[g], &st->groups[g]);
}

/* The whole prepare step on one thread: decide, every group, count it. */
FO_HD void fo_prepare_step(const fo_prepare_args *a, double sumsq, fo_step_state *st) {
  double factor = 1.0;
  if (!fo_prepare_decide(&a->head, sumsq, st, &factor)) return;
  for (int g = 0; g < a->head.num_groups; g++)
    fo_prepare_group(a->head.algorithm, a->groups, st, g, factor);
  st->step += 1;
}

/* ---------------------------------------------------------- known steps */

/* The fields of st that an applied step without a pre-pass sets (the
 * scaler's fields are not among them: it needs a pre-pass), for
 * min(num_groups, FO_KNOWN_GROUPS) groups. */
FO_HD void fo_known_from_state(const fo_step_state *st, int num_groups, fo_known_step *out) {
  const int n = num_groups < FO_KNOWN_GROUPS ? num_groups : FO_KNOWN_GROUPS;
  out->step = st->step;
  out->skipped = st->skipped;
  out->grad_norm = st->grad_norm;
  out->grad_coef = st->grad_coef;
  out->lr_factor = st->lr_factor;
  out->num_groups = n;
  for (int g = 0; g < FO_KNOWN_GROUPS; g++) {
    if (g < n) {
      out->groups[g] = st->groups[g];
      out->mu_product[g] = st->mu_product[g];
    } else {
      /* unused slots zeroed, so equal steps compare equal byte for byte */
      memset(&out->groups[g], 0, sizeof out->groups[g]);
      out->mu_product[g] = 0.0f;
    }
  }
}

/* Write a known step into the state, as the prepare kernel would have:
 * exactly the fields fo_known_from_state reads, and skip = 0.  The loss
 * scale, its tracker and hysteresis are left alone (a caller may have
 * written the scale through fo_optimizer_loss_scale_ptr). */
FO_HD void fo_known_publish(const fo_known_step *k, fo_step_state *st) {
  st->step = k->step;
  st->skipped = k->skipped;
  st->skip = 0;
  st->grad_norm = k->grad_norm;
  st->grad_coef = k->grad_coef;
  st->lr_factor = k->lr_factor;
  for (int g = 0; g < k->num_groups && g < FO_KNOWN_GROUPS; g++) {
    st->groups[g] = k->groups[g];
    st->mu_product[g] = k->mu_product[g];
  }
}

#endif /* FO_STEP_STATE_H */
