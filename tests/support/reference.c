/*
 * reference.c -- the independent double-precision reference (reference.h).
 *
 * Plain on purpose: one element at a time, the formulas as textbooks and
 * torch.optim's documentation write them, no vectorization, no shared code.
 */
#include "reference.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------ floating-point formats */

/* A binary floating-point format: precision in bits (the implicit bit
 * included), the exponent of the smallest normal and of the largest binade,
 * the exponent bias of its encoding, and its largest finite value,
 * (2 - 2^(1-precision)) * 2^emax. */
typedef struct ref_format {
  int precision;
  int emin;
  int emax;
  int bias;
  double largest;
} ref_format;

static const ref_format FMT_F32 = {24, -126, 127, 127, 0x1.fffffep127};
static const ref_format FMT_F16 = {11, -14, 15, 15, 65504.0};
static const ref_format FMT_BF16 = {8, -126, 127, 127, 0x1.fep127};

/* 2^e, exact, for the exponents these formats need; a table filled once
 * with ldexp (which is slow enough to dominate the tests otherwise). */
#define POW2_MIN (-200)
#define POW2_MAX 200
static double pow2_table[POW2_MAX - POW2_MIN + 1];
static int pow2_ready;

static double pow2(int e) {
  if (e < POW2_MIN || e > POW2_MAX) return ldexp(1.0, e);
  if (!pow2_ready) {
    for (int k = POW2_MIN; k <= POW2_MAX; ++k) pow2_table[k - POW2_MIN] = ldexp(1.0, k);
    pow2_ready = 1;
  }
  return pow2_table[e - POW2_MIN];
}

static const ref_format *format_of(fo_dtype dtype) {
  switch (dtype) {
    case FO_DTYPE_F16: return &FMT_F16;
    case FO_DTYPE_BF16: return &FMT_BF16;
    default: return &FMT_F32;
  }
}

/* The spacing of the format's values in the binade of a (a > 0 finite);
 * below the smallest normal, the subnormal spacing. */
static double quantum_of(const ref_format *f, double a) {
  int e = 0;
  (void)frexp(a, &e); /* a = frac * 2^e, frac in [0.5, 1) */
  int exp = e - 1;    /* a in [2^exp, 2^(exp+1)) */
  if (exp < f->emin) exp = f->emin;
  return pow2(exp - (f->precision - 1));
}

/* Round to nearest, ties to even: q is a non-negative double whose integer
 * part is below 2^53, so floor and the subtraction are exact. */
static double round_half_even(double q) {
  double fl = floor(q);
  double frac = q - fl;
  if (frac > 0.5) return fl + 1.0;
  if (frac < 0.5) return fl;
  return fmod(fl, 2.0) == 0.0 ? fl : fl + 1.0;
}

static double round_format(const ref_format *f, double x) {
  if (isnan(x) || isinf(x) || x == 0.0) return x;
  double a = fabs(x);
  double quantum = quantum_of(f, a);
  double r = round_half_even(a / quantum) * quantum; /* exact scalings */
  if (r > f->largest) r = INFINITY;
  return copysign(r, x);
}

double ref_round(fo_dtype dtype, double x) {
  /* C's conversion to float rounds to nearest even (IEEE 754, default
   * rounding mode): the same result as round_format, faster */
  if (dtype == FO_DTYPE_F32) return (double)(float)x;
  return round_format(format_of(dtype), x);
}

double ref_ulp(fo_dtype dtype, double x) {
  const ref_format *f = format_of(dtype);
  double a = fabs(x);
  if (a == 0.0 || isnan(a) || isinf(a)) return pow2(f->emin - (f->precision - 1));
  return quantum_of(f, a);
}

void ref_bracket(fo_dtype dtype, double x, double *lo, double *hi) {
  const ref_format *f = format_of(dtype);
  double a = fabs(x);
  if (a == 0.0) {
    *lo = *hi = x;
    return;
  }
  double quantum = quantum_of(f, a);
  double q = a / quantum;
  double fl = floor(q);
  double down = fl * quantum;
  double up = (fl == q) ? down : (fl + 1.0) * quantum;
  if (x > 0) {
    *lo = down;
    *hi = up;
  } else {
    *lo = -up;
    *hi = -down;
  }
}

/* Encode into a 16-bit format with precision-1 stored mantissa bits and
 * 16-precision exponent bits. */
static uint16_t encode16(const ref_format *f, double x) {
  int mbits = f->precision - 1;
  uint32_t emask = (1u << (16 - f->precision)) - 1u;
  uint32_t sign = signbit(x) ? 0x8000u : 0u;
  if (isnan(x)) return (uint16_t)(sign | (emask << mbits) | (1u << (mbits - 1)));
  double a = fabs(round_format(f, x));
  if (isinf(a)) return (uint16_t)(sign | (emask << mbits));
  if (a == 0.0) return (uint16_t)sign;
  int e = 0;
  (void)frexp(a, &e);
  int exp = e - 1;
  if (exp < f->emin) {
    /* subnormal: a = mant * 2^(emin - mbits), exponent field 0 */
    double mant = a / pow2(f->emin - mbits);
    return (uint16_t)(sign | (uint32_t)mant);
  }
  double mant = (a / pow2(exp) - 1.0) * pow2(mbits);
  return (uint16_t)(sign | ((uint32_t)(exp + f->bias) << mbits) | (uint32_t)mant);
}

static double decode16(const ref_format *f, uint16_t bits) {
  int mbits = f->precision - 1;
  uint32_t emask = (1u << (16 - f->precision)) - 1u;
  double sign = (bits & 0x8000u) ? -1.0 : 1.0;
  uint32_t field = ((uint32_t)bits >> mbits) & emask;
  uint32_t mant = (uint32_t)bits & ((1u << mbits) - 1u);
  if (field == emask) return mant ? NAN : sign * INFINITY;
  if (field == 0) return sign * (double)mant * pow2(f->emin - mbits);
  return sign * (1.0 + (double)mant * pow2(-mbits)) * pow2((int)field - f->bias);
}

uint16_t ref_f16_bits(double x) {
  return encode16(&FMT_F16, x);
}
double ref_f16_value(uint16_t bits) {
  return decode16(&FMT_F16, bits);
}
uint16_t ref_bf16_bits(double x) {
  return encode16(&FMT_BF16, x);
}
double ref_bf16_value(uint16_t bits) {
  return decode16(&FMT_BF16, bits);
}

void ref_store(fo_dtype dtype, void *buf, int64_t i, double x) {
  switch (dtype) {
    case FO_DTYPE_F16: ((uint16_t *)buf)[i] = ref_f16_bits(x); break;
    case FO_DTYPE_BF16: ((uint16_t *)buf)[i] = ref_bf16_bits(x); break;
    default: ((float *)buf)[i] = (float)x; break;
  }
}

double ref_load(fo_dtype dtype, const void *buf, int64_t i) {
  switch (dtype) {
    case FO_DTYPE_F16: return ref_f16_value(((const uint16_t *)buf)[i]);
    case FO_DTYPE_BF16: return ref_bf16_value(((const uint16_t *)buf)[i]);
    default: return (double)((const float *)buf)[i];
  }
}

/* ------------------------------------------------------------ optimizer */

ref_optimizer *ref_create(fo_algorithm alg, fo_dtype param_dtype, int master_weights,
                          const fo_hparams *groups, int num_groups, const int64_t *numel,
                          const int *group, int num_tensors) {
  if (num_groups < 1 || num_groups > FO_MAX_GROUPS || num_tensors < 0) return NULL;
  ref_optimizer *r = calloc(1, sizeof *r);
  if (!r) return NULL;
  r->alg = alg;
  r->param_dtype = param_dtype;
  r->master_weights = param_dtype != FO_DTYPE_F32 && master_weights;
  r->num_groups = num_groups;
  memcpy(r->groups, groups, (size_t)num_groups * sizeof *groups);
  for (int g = 0; g < FO_MAX_GROUPS; ++g) r->mu_product[g] = 1.0;
  r->num_tensors = num_tensors;
  r->tensors = calloc(num_tensors > 0 ? (size_t)num_tensors : 1, sizeof *r->tensors);
  if (!r->tensors) {
    free(r);
    return NULL;
  }
  for (int t = 0; t < num_tensors; ++t) {
    ref_tensor *T = &r->tensors[t];
    size_t n = numel[t] > 0 ? (size_t)numel[t] : 1;
    T->numel = numel[t];
    T->group = group[t];
    T->w = calloc(n, sizeof(double));
    T->param = calloc(n, sizeof(double));
    T->exact = calloc(n, sizeof(double));
    T->m = calloc(n, sizeof(double));
    T->v = calloc(n, sizeof(double));
    T->vmax = calloc(n, sizeof(double));
    T->gavg = calloc(n, sizeof(double));
    T->feed = calloc(n, sizeof(double));
    T->ratio = 1.0;
    if (!T->w || !T->param || !T->exact || !T->m || !T->v || !T->vmax || !T->gavg || !T->feed) {
      ref_destroy(r);
      return NULL;
    }
    /* torch.optim.Adagrad fills its sums at construction */
    if (alg == FO_ALG_ADAGRAD && T->group >= 0 && T->group < num_groups)
      for (int64_t i = 0; i < T->numel; ++i) T->v[i] = groups[T->group].initial_accumulator_value;
  }
  return r;
}

void ref_destroy(ref_optimizer *r) {
  if (!r) return;
  for (int t = 0; t < r->num_tensors; ++t) {
    ref_tensor *T = &r->tensors[t];
    free(T->w);
    free(T->param);
    free(T->exact);
    free(T->m);
    free(T->v);
    free(T->vmax);
    free(T->gavg);
    free(T->feed);
  }
  free(r->tensors);
  free(r);
}

void ref_set_params(ref_optimizer *r, int t, const double *values) {
  ref_tensor *T = &r->tensors[t];
  for (int64_t i = 0; i < T->numel; ++i) {
    double p = ref_round(r->param_dtype, values[i]);
    T->param[i] = p;
    T->exact[i] = p;
    T->w[i] = p;
  }
}

void ref_set_lr(ref_optimizer *r, int group, float lr) {
  for (int k = 0; k < r->num_groups; ++k)
    if (group < 0 || group == k) r->groups[k].lr = lr;
}

static double sign_of(double x) {
  return x > 0.0 ? 1.0 : (x < 0.0 ? -1.0 : 0.0);
}

/* Keep element i's result w: in double for fp32 parameters and master
 * weights, else rounded to the parameter's type and fed back. */
static void store_result(const ref_optimizer *r, ref_tensor *T, int64_t i, double w) {
  T->exact[i] = w;
  if (r->param_dtype == FO_DTYPE_F32) {
    T->w[i] = w;
    T->param[i] = w;
  } else if (r->master_weights) {
    T->w[i] = w;
    T->param[i] = ref_round(r->param_dtype, w);
  } else {
    double p = ref_round(r->param_dtype, w);
    T->w[i] = p;
    T->param[i] = p;
  }
}

/* The Euclidean norm of n values, summed in double. */
static double norm_of(const double *x, int64_t n) {
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) s += x[i] * x[i];
  return sqrt(s);
}

/* torch.optim.SGD's momentum on the (decayed) gradient d of one element:
 * the buffer is d itself at the first step; returns the step's direction. */
static double sgd_momentum(const fo_hparams *h, double *buf, double d, int first) {
  double mu = h->momentum;
  if (mu == 0.0) return d;
  if (first)
    *buf = d;
  else
    *buf = mu * *buf + (1.0 - (double)h->dampening) * d;
  return h->nesterov ? d + mu * *buf : *buf;
}

/* LAMB over one tensor (You et al. 2020, with Adam's bias corrections):
 * u = m_hat / (sqrt(v_hat) + eps) + wd*w, then w -= lr * r * u with the
 * trust ratio r = ||w|| / ||u|| of the whole tensor (1 when either norm is
 * 0 or the group is not adapted). */
static void lamb_tensor(const ref_optimizer *r, ref_tensor *T, const fo_hparams *h,
                        const double *grad, double t) {
  double lr = h->lr, wd = h->weight_decay, b1 = h->beta1, b2 = h->beta2, eps = h->eps;
  double bc1 = 1.0 - pow(b1, t), bc2 = 1.0 - pow(b2, t);
  int64_t n = T->numel;
  double *u = malloc((size_t)(n > 0 ? n : 1) * sizeof(double));
  if (!u) abort();
  for (int64_t i = 0; i < n; ++i) {
    double d = h->maximize ? -grad[i] : grad[i];
    T->m[i] = b1 * T->m[i] + (1.0 - b1) * d;
    T->v[i] = b2 * T->v[i] + (1.0 - b2) * d * d;
    u[i] = (T->m[i] / bc1) / (sqrt(T->v[i] / bc2) + eps) + wd * T->w[i];
    T->feed[i] = fabs(d);
  }
  double wn = norm_of(T->w, n), un = norm_of(u, n);
  double ratio = (h->layer_adaptation && wn > 0.0 && un > 0.0) ? wn / un : 1.0;
  T->ratio = ratio;
  for (int64_t i = 0; i < n; ++i) store_result(r, T, i, T->w[i] - lr * ratio * u[i]);
  free(u);
}

/* LARS over one tensor (You et al. 2017): the local learning rate
 * trust_coef * ||w|| / (||d|| + wd*||w||) from the tensor's weights and
 * gradient before the step (1 when either norm is 0 or the group is not
 * adapted) scales the decayed gradient, and SGD's momentum runs on that. */
static void lars_tensor(const ref_optimizer *r, ref_tensor *T, const fo_hparams *h,
                        const double *grad, int first) {
  double lr = h->lr, wd = h->weight_decay;
  int64_t n = T->numel;
  double wn = norm_of(T->w, n), gn = norm_of(grad, n); /* ||-g|| = ||g|| */
  double local = 1.0;
  if (h->layer_adaptation && wn > 0.0 && gn > 0.0)
    local = (double)h->trust_coef * wn / (gn + wd * wn);
  T->ratio = local;
  for (int64_t i = 0; i < n; ++i) {
    double d = h->maximize ? -grad[i] : grad[i];
    double w = T->w[i];
    double e = (d + wd * w) * local;
    T->feed[i] = local * (fabs(d) + wd * fabs(w));
    store_result(r, T, i, w - lr * sgd_momentum(h, &T->m[i], e, first));
  }
}

void ref_step(ref_optimizer *r, const double *const *grads) {
  double t = (double)(r->step + 1); /* this step's number, 1-based */
  int first = r->step == 0;
  /* NAdam's momentum schedule mu_t and mu_{t+1}, and the product of the
   * mu's up to this step, per group */
  double mu_t[FO_MAX_GROUPS], mu_next[FO_MAX_GROUPS];
  for (int g = 0; g < r->num_groups; ++g) {
    double b1 = r->groups[g].beta1, psi = r->groups[g].momentum_decay;
    mu_t[g] = b1 * (1.0 - 0.5 * pow(0.96, t * psi));
    mu_next[g] = b1 * (1.0 - 0.5 * pow(0.96, (t + 1.0) * psi));
    if (r->alg == FO_ALG_NADAM) r->mu_product[g] *= mu_t[g];
  }
  for (int k = 0; k < r->num_tensors; ++k) {
    ref_tensor *T = &r->tensors[k];
    const fo_hparams *h = &r->groups[T->group];
    if (r->alg == FO_ALG_LAMB) {
      lamb_tensor(r, T, h, grads[k], t);
      continue;
    }
    if (r->alg == FO_ALG_LARS) {
      lars_tensor(r, T, h, grads[k], first);
      continue;
    }
    double lr = h->lr, wd = h->weight_decay, mu = h->momentum;
    double b1 = h->beta1, b2 = h->beta2, eps = h->eps;
    double bc1 = 1.0 - pow(b1, t);
    double bc2 = 1.0 - pow(b2, t);
    for (int64_t i = 0; i < T->numel; ++i) {
      double g = grads[k][i];
      double d = h->maximize ? -g : g;
      double w = T->w[i];
      switch (r->alg) {
        case FO_ALG_SGD:
          if (wd != 0.0) d = d + wd * w;
          T->feed[i] = fabs(g) + wd * fabs(w);
          w = w - lr * sgd_momentum(h, &T->m[i], d, first);
          break;
        case FO_ALG_ADAM:
        case FO_ALG_ADAMW: {
          T->feed[i] = fabs(g) + (r->alg == FO_ALG_ADAM ? wd * fabs(w) : 0.0);
          if (r->alg == FO_ALG_ADAMW)
            w = w * (1.0 - lr * wd);
          else if (wd != 0.0)
            d = d + wd * w;
          T->m[i] = b1 * T->m[i] + (1.0 - b1) * d;
          T->v[i] = b2 * T->v[i] + (1.0 - b2) * d * d;
          double vv = T->v[i];
          if (h->amsgrad) {
            if (T->v[i] > T->vmax[i]) T->vmax[i] = T->v[i];
            vv = T->vmax[i];
          }
          double denom = sqrt(vv) / sqrt(bc2) + eps;
          w = w - (lr / bc1) * (T->m[i] / denom);
          break;
        }
        case FO_ALG_LION: {
          double c = b1 * T->m[i] + (1.0 - b1) * d;
          w = w * (1.0 - lr * wd) - lr * sign_of(c);
          T->feed[i] = fabs(g);
          T->m[i] = b2 * T->m[i] + (1.0 - b2) * d;
          break;
        }
        case FO_ALG_ADAGRAD: {
          /* torch.optim.Adagrad (the sum filled at create) */
          if (wd != 0.0) d = d + wd * w;
          double clr = lr / (1.0 + (t - 1.0) * (double)h->lr_decay);
          T->v[i] = T->v[i] + d * d;
          T->feed[i] = fabs(g) + wd * fabs(w);
          w = w - clr * d / (sqrt(T->v[i]) + eps);
          break;
        }
        case FO_ALG_RMSPROP: {
          /* torch.optim.RMSprop; the centered variance is clamped at 0 */
          double alpha = h->alpha, avg;
          if (wd != 0.0) d = d + wd * w;
          T->v[i] = alpha * T->v[i] + (1.0 - alpha) * d * d;
          if (h->centered) {
            T->gavg[i] = alpha * T->gavg[i] + (1.0 - alpha) * d;
            double var = T->v[i] - T->gavg[i] * T->gavg[i];
            avg = sqrt(var > 0.0 ? var : 0.0) + eps;
          } else {
            avg = sqrt(T->v[i]) + eps;
          }
          T->feed[i] = (fabs(g) + wd * fabs(w)) / avg;
          if (mu > 0.0) {
            T->m[i] = mu * T->m[i] + d / avg; /* from 0: no first-step rule */
            w = w - lr * T->m[i];
          } else {
            w = w - lr * d / avg;
          }
          break;
        }
        case FO_ALG_NADAM: {
          /* torch.optim.NAdam */
          T->feed[i] = fabs(g) + (h->decoupled_weight_decay ? 0.0 : wd * fabs(w));
          if (h->decoupled_weight_decay)
            w = w * (1.0 - lr * wd);
          else if (wd != 0.0)
            d = d + wd * w;
          double mt = mu_t[T->group], mn = mu_next[T->group];
          double prod = r->mu_product[T->group]; /* mu_1 * .. * mu_t */
          T->m[i] = b1 * T->m[i] + (1.0 - b1) * d;
          T->v[i] = b2 * T->v[i] + (1.0 - b2) * d * d;
          double denom = sqrt(T->v[i] / bc2) + eps;
          w = w - lr * (1.0 - mt) / (1.0 - prod) * (d / denom) -
              lr * mn / (1.0 - prod * mn) * (T->m[i] / denom);
          break;
        }
        default: break;
      }
      store_result(r, T, i, w);
    }
  }
  r->step += 1;
}

double ref_sensitivity(const ref_optimizer *r, int t, int64_t i, double g) {
  const ref_tensor *T = &r->tensors[t];
  const fo_hparams *h = &r->groups[T->group];
  double d = h->maximize ? -g : g;
  switch (r->alg) {
    case FO_ALG_ADAM:
    case FO_ALG_ADAGRAD:
    case FO_ALG_RMSPROP: return h->weight_decay != 0.0 ? d + (double)h->weight_decay * T->w[i] : d;
    case FO_ALG_NADAM:
      return h->weight_decay != 0.0 && !h->decoupled_weight_decay
                 ? d + (double)h->weight_decay * T->w[i]
                 : d;
    case FO_ALG_ADAMW: return d;
    case FO_ALG_LION: return (double)h->beta1 * T->m[i] + (1.0 - (double)h->beta1) * d;
    default: return INFINITY;
  }
}
