/*
 * rules.h -- the per-element update rules, written once.
 *
 * Compiles as C11 (the CPU executor) and as CUDA C++ device code (the
 * kernels): one rule, two compilers (docs/design.md).  Everything here is arithmetic on registers;
 * no memory layout, no threads.  All math is fp32.
 *
 * The per-step scalars (bias corrections, 1 - lr*wd, ...) are computed once
 * per step per group on the host in double precision and rounded to float,
 * so that every element sees the same values on every executor.
 */
#ifndef FO_RULES_H
#define FO_RULES_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__)
#define FO_HD static inline __host__ __device__
#else
#define FO_HD static inline
#endif

/* Algorithm codes: equal to fo_algorithm's values (checked in host/). */
#define FO_RULE_SGD 0
#define FO_RULE_ADAM 1
#define FO_RULE_ADAMW 2
#define FO_RULE_LION 3
#define FO_RULE_ADAGRAD 4
#define FO_RULE_RMSPROP 5
#define FO_RULE_NADAM 6
#define FO_RULE_LAMB 7
#define FO_RULE_LARS 8
#define FO_RULE_ALG_COUNT 9

/* Dtype codes: equal to fo_dtype's values. */
#define FO_RULE_F32 0
#define FO_RULE_F16 1
#define FO_RULE_BF16 2

/* Flags of fo_rule_scalars.flags. */
#define FO_RULE_AMSGRAD 1u
#define FO_RULE_NESTEROV 2u
#define FO_RULE_MAXIMIZE 4u
#define FO_RULE_MOMENTUM 8u /* SGD keeps a momentum buffer */
#define FO_RULE_FIRST_STEP 16u /* SGD, LARS: buffer = gradient */
#define FO_RULE_CENTERED 32u /* RMSprop keeps the gradient's average */
#define FO_RULE_TRUST 64u    /* LAMB, LARS: the group uses trust ratios */

/* The scalars one group's elements need for one step. */
typedef struct fo_rule_scalars {
  float lr;
  float weight_decay;
  float beta1;        /* Adam/Lion/NAdam/LAMB beta1; SGD, RMSprop, LARS
                       * momentum */
  float beta2;        /* Adam/Lion/NAdam/LAMB beta2; RMSprop alpha */
  float one_minus_b1; /* 1 - beta1; SGD, LARS: 1 - dampening */
  float one_minus_b2; /* 1 - beta2; RMSprop: 1 - alpha */
  float eps;
  float step_size;   /* Adam: lr / (1 - beta1^t); NAdam: the first
                      * moment's coefficient; LAMB: 1 / (1 - beta1^t) */
  float step_size_g; /* NAdam: the gradient's coefficient */
  float bc2_sqrt;    /* Adam, NAdam, LAMB: sqrt(1 - beta2^t) */
  float decay;       /* AdamW, Lion, decoupled NAdam: 1 - lr*wd; else 1 */
  float grad_coef;   /* multiplies every gradient (unscale, clip, 1/N) */
  float trust_coef;  /* LARS: eta */
  uint32_t flags;
} fo_rule_scalars;

/* ------------------------------------------------------------ bit casts */

FO_HD uint32_t fo_f32_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
#endif
}

FO_HD float fo_bits_f32(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
#endif
}

/* ---------------------------------------------------- 16-bit conversions */

FO_HD float fo_bf16_to_f32(uint16_t h) {
  return fo_bits_f32((uint32_t)h << 16);
}

/* Round to nearest even; NaN stays a quiet NaN with its sign. */
FO_HD uint16_t fo_f32_to_bf16(float f) {
  uint32_t u = fo_f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

/* Stochastic rounding: add 16 random bits below the kept ones and
 * truncate, so the result rounds up with probability equal to the dropped
 * fraction.  Inf and NaN are kept as they are; any finite value whose sum
 * would carry into the all-ones exponent (inf) is clamped to the largest
 * finite bf16 of its sign instead -- SR never overflows a finite value
 * (docs/numerics.md). */
FO_HD uint16_t fo_f32_to_bf16_sr(float f, uint32_t rnd) {
  uint32_t u = fo_f32_bits(f);
  if ((u & 0x7f800000u) == 0x7f800000u) return fo_f32_to_bf16(f);
  uint32_t r = u + (rnd & 0xffffu);
  if ((r & 0x7f800000u) == 0x7f800000u) r = (u & 0x80000000u) | 0x7f7f0000u;
  return (uint16_t)(r >> 16);
}

FO_HD float fo_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0) {
    /* zero or subnormal: mant * 2^-24, exact in fp32 */
    float v = (float)mant * 5.9604644775390625e-08f;
    return fo_bits_f32(fo_f32_bits(v) | sign);
  }
  if (exp == 31) return fo_bits_f32(sign | 0x7f800000u | (mant << 13));
  return fo_bits_f32(sign | ((exp + 112u) << 23) | (mant << 13));
}

/* Round to nearest even, overflow to inf, NaN to a quiet NaN. */
FO_HD uint16_t fo_f32_to_f16(float f) {
  uint32_t u = fo_f32_bits(f);
  uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
  u &= 0x7fffffffu;
  if (u >= 0x7f800000u) return (uint16_t)(sign | (u > 0x7f800000u ? 0x7e00u : 0x7c00u));
  if (u >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* >= 65520 */
  if (u < 0x38800000u) {
    /* below 2^-14: add 0.5, whose ulp is 2^-24 (the fp16 subnormal step),
     * and let the fp32 adder round to nearest even */
    float v = fo_bits_f32(u) + 0.5f;
    return (uint16_t)(sign | (uint16_t)(fo_f32_bits(v) - 0x3f000000u));
  }
  uint32_t odd = (u >> 13) & 1u;
  u += 0xc8000fffu + odd; /* rebias exponent 127 -> 15, round to even */
  return (uint16_t)(sign | (uint16_t)(u >> 13));
}

/* ----------------------------------------------------------- randomness */

FO_HD uint64_t fo_mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/* Random bits for stochastic rounding of one element at one step: a pure
 * function of its arguments, so runs are reproducible on any executor. */
FO_HD uint32_t fo_sr_bits(uint64_t seed, uint64_t step, uint64_t tensor, uint64_t element) {
  uint64_t h = fo_mix64(seed ^ 0x9e3779b97f4a7c15ull);
  h = fo_mix64(h ^ step);
  h = fo_mix64(h ^ (tensor * 0x9e3779b97f4a7c15ull));
  h = fo_mix64(h ^ element);
  return (uint32_t)(h >> 32);
}

/* ------------------------------------------------------------- updates */

FO_HD float fo_signf(float x) {
  return (float)((x > 0.0f) - (x < 0.0f));
}

/* SGD, as torch.optim.SGD: L2 decay into the gradient; the first step sets
 * the buffer to the gradient; later steps buf = mu*buf + (1-damp)*g;
 * Nesterov steps along g + mu*buf; lr multiplies the velocity. */
FO_HD void fo_update_sgd(float *p, float *buf, float g, const fo_rule_scalars *s) {
  float d = g * s->grad_coef;
  if (s->flags & FO_RULE_MAXIMIZE) d = -d;
  d += s->weight_decay * *p;
  if (s->flags & FO_RULE_MOMENTUM) {
    float b = (s->flags & FO_RULE_FIRST_STEP) ? d : s->beta1 * *buf + s->one_minus_b1 * d;
    *buf = b;
    d = (s->flags & FO_RULE_NESTEROV) ? d + s->beta1 * b : b;
  }
  *p = *p - s->lr * d;
}

/* Adam (L2 decay into the gradient) and AdamW (decoupled decay), as
 * torch.optim: denom = sqrt(v or vmax) / sqrt(1-b2^t) + eps,
 * p -= lr/(1-b1^t) * m/denom; AMSGrad keeps the max of the raw v.
 * amsgrad is an argument rather than read from the flags so that a caller
 * can make it a constant: a loop then has no conditional store and
 * vectorizes. */
FO_HD void fo_update_adam_x(int decoupled, int amsgrad, float *p, float *m, float *v, float *vmax,
                            float g, const fo_rule_scalars *s) {
  float d = g * s->grad_coef;
  if (s->flags & FO_RULE_MAXIMIZE) d = -d;
  float w = *p;
  if (decoupled)
    w = w * s->decay;
  else
    d += s->weight_decay * w;
  float mm = s->beta1 * *m + s->one_minus_b1 * d;
  float vv = s->beta2 * *v + s->one_minus_b2 * d * d;
  *m = mm;
  *v = vv;
  if (amsgrad) {
    vv = fmaxf(*vmax, vv);
    *vmax = vv;
  }
  float denom = sqrtf(vv) / s->bc2_sqrt + s->eps;
  *p = w - s->step_size * (mm / denom);
}

FO_HD void fo_update_adam(int decoupled, float *p, float *m, float *v, float *vmax, float g,
                          const fo_rule_scalars *s) {
  fo_update_adam_x(decoupled, (s->flags & FO_RULE_AMSGRAD) != 0, p, m, v, vmax, g, s);
}

/* Lion: c = b1*m + (1-b1)*g; p = p*(1-lr*wd) - lr*sign(c);
 * m = b2*m + (1-b2)*g; sign(0) = 0. */
FO_HD void fo_update_lion(float *p, float *m, float g, const fo_rule_scalars *s) {
  float d = g * s->grad_coef;
  if (s->flags & FO_RULE_MAXIMIZE) d = -d;
  float c = s->beta1 * *m + s->one_minus_b1 * d;
  *p = *p * s->decay - s->lr * fo_signf(c);
  *m = s->beta2 * *m + s->one_minus_b2 * d;
}

/* The gradient as the rules use it: unscaled, clipped, averaged, negated
 * for maximize. */
FO_HD float fo_rule_grad(float g, const fo_rule_scalars *s) {
  float d = g * s->grad_coef;
  return (s->flags & FO_RULE_MAXIMIZE) ? -d : d;
}

/* AdaGrad, as torch.optim.Adagrad: L2 decay into the gradient;
 * sum += d^2 (the sum starts at initial_accumulator_value, filled at
 * create); p -= clr * d / (sqrt(sum) + eps) with the decayed rate
 * clr = lr / (1 + (t-1)*lr_decay) in s->lr. */
FO_HD void fo_update_adagrad(float *p, float *sum, float g, const fo_rule_scalars *s) {
  float d = fo_rule_grad(g, s) + s->weight_decay * *p;
  float acc = *sum + d * d;
  *sum = acc;
  *p = *p - s->lr * (d / (sqrtf(acc) + s->eps));
}

/* RMSprop, as torch.optim.RMSprop: L2 decay into the gradient;
 * sq = alpha*sq + (1-alpha)*d^2; centered: ga = alpha*ga + (1-alpha)*d and
 * the denominator is sqrt(sq - ga^2) + eps (sq - ga^2 >= 0 in exact
 * arithmetic; clamped at 0 against rounding, where PyTorch would take the
 * root of a negative), else sqrt(sq) + eps; with momentum
 * buf = momentum*buf + d/denom and p -= lr*buf, else p -= lr*d/denom. */
FO_HD void fo_update_rmsprop(float *p, float *buf, float *sq, float *gavg, float g,
                             const fo_rule_scalars *s) {
  float d = fo_rule_grad(g, s) + s->weight_decay * *p;
  float a = s->beta2 * *sq + s->one_minus_b2 * d * d;
  *sq = a;
  if (s->flags & FO_RULE_CENTERED) {
    float ga = s->beta2 * *gavg + s->one_minus_b2 * d;
    *gavg = ga;
    a = fmaxf(a - ga * ga, 0.0f);
  }
  float step = d / (sqrtf(a) + s->eps);
  if (s->flags & FO_RULE_MOMENTUM) {
    step = s->beta1 * *buf + step;
    *buf = step;
  }
  *p = *p - s->lr * step;
}

/* NAdam, as torch.optim.NAdam: L2 decay into the gradient, or decoupled
 * (decay = 1 - lr*wd); Adam's moments; denom = sqrt(v)/sqrt(1-b2^t) + eps;
 * p -= step_size_g * d/denom + step_size * m/denom, the two coefficients
 * lr(1-mu_t)/(1-prod mu) and lr mu_{t+1}/(1-prod mu * mu_{t+1}) computed
 * per step (step_state.h). */
FO_HD void fo_update_nadam(float *p, float *m, float *v, float g, const fo_rule_scalars *s) {
  float w = *p * s->decay;
  float d = fo_rule_grad(g, s) + s->weight_decay * w;
  float mm = s->beta1 * *m + s->one_minus_b1 * d;
  float vv = s->beta2 * *v + s->one_minus_b2 * d * d;
  *m = mm;
  *v = vv;
  float denom = sqrtf(vv) / s->bc2_sqrt + s->eps;
  *p = w - s->step_size_g * (d / denom) - s->step_size * (mm / denom);
}

/* ---------------------------------------- LAMB and LARS: two passes */

/* LAMB's update direction from the (updated) moments and the weight:
 * u = (m / (1-b1^t)) / (sqrt(v)/sqrt(1-b2^t) + eps) + wd*w.  Both passes
 * compute it with these same operations, so they see the same u. */
FO_HD float fo_lamb_direction(float w, float m, float v, const fo_rule_scalars *s) {
  return (m * s->step_size) / (sqrtf(v) / s->bc2_sqrt + s->eps) + s->weight_decay * w;
}

/* LAMB, first pass: advance the moments and return u. */
FO_HD float fo_lamb_moments(float w, float *m, float *v, float g, const fo_rule_scalars *s) {
  float d = fo_rule_grad(g, s);
  float mm = s->beta1 * *m + s->one_minus_b1 * d;
  float vv = s->beta2 * *v + s->one_minus_b2 * d * d;
  *m = mm;
  *v = vv;
  return fo_lamb_direction(w, mm, vv, s);
}

/* LAMB, second pass: p -= rate * u, rate = lr * trust ratio of the tensor
 * (the norms pass's result). */
FO_HD void fo_update_lamb(float *p, float m, float v, float rate, const fo_rule_scalars *s) {
  *p = *p - rate * fo_lamb_direction(*p, m, v, s);
}

/* LARS, second pass: the gradient plus L2 decay, scaled by the tensor's
 * local rate, then SGD with momentum exactly as fo_update_sgd. */
FO_HD void fo_update_lars(float *p, float *buf, float g, float local, const fo_rule_scalars *s) {
  float d = (fo_rule_grad(g, s) + s->weight_decay * *p) * local;
  if (s->flags & FO_RULE_MOMENTUM) {
    float b = (s->flags & FO_RULE_FIRST_STEP) ? d : s->beta1 * *buf + s->one_minus_b1 * d;
    *buf = b;
    d = (s->flags & FO_RULE_NESTEROV) ? d + s->beta1 * b : b;
  }
  *p = *p - s->lr * d;
}

/* The per-tensor factor of the second pass from the tensor's squared
 * norms (in double, summed over the whole tensor) -- LAMB: lr * ||w|| /
 * ||u||, LARS: eta * ||w|| / (||g|| + wd * ||w||); the ratio is 1 where a
 * norm is 0 or the group leaves trust ratios out (layer_adaptation 0). */
FO_HD float fo_trust_factor(int alg, double w_sq, double x_sq, const fo_rule_scalars *s) {
  double wn = sqrt(w_sq), xn = sqrt(x_sq);
  int adapt = (s->flags & FO_RULE_TRUST) && wn > 0.0 && xn > 0.0;
  if (alg == FO_RULE_LAMB) return (float)((double)s->lr * (adapt ? wn / xn : 1.0));
  return adapt ? (float)((double)s->trust_coef * wn / (xn + (double)s->weight_decay * wn)) : 1.0f;
}

/* One element of an algorithm of one pass (every algorithm but LAMB and
 * LARS).  alg is a compile-time constant in the kernels and loop-invariant
 * on the CPU, so the switch costs nothing.  m, v and vmax may point at
 * dummies when the algorithm does not use them. */
FO_HD void fo_update_element(int alg, float *p, float *m, float *v, float *vmax, float g,
                             const fo_rule_scalars *s) {
  switch (alg) {
    case FO_RULE_SGD: fo_update_sgd(p, m, g, s); break;
    case FO_RULE_ADAM: fo_update_adam(0, p, m, v, vmax, g, s); break;
    case FO_RULE_ADAMW: fo_update_adam(1, p, m, v, vmax, g, s); break;
    case FO_RULE_ADAGRAD: fo_update_adagrad(p, v, g, s); break;
    case FO_RULE_RMSPROP: fo_update_rmsprop(p, m, v, vmax, g, s); break;
    case FO_RULE_NADAM: fo_update_nadam(p, m, v, g, s); break;
    default: fo_update_lion(p, m, g, s); break;
  }
}

#endif /* FO_RULES_H */
