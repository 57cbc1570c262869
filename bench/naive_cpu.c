/*
 * naive_cpu.c -- the baseline CPU step (naive.h): for every tensor, one
 * plain scalar loop per elementwise operation, on the calling thread, in
 * the same order as the CUDA baseline (naive.cu).  It is what a
 * straightforward C port of an eager framework's per-tensor optimizer
 * does; the fused CPU executor is measured against it.
 */
#include <math.h>

#include "naive.h"
#include "values.h"

/* Weights and gradients are fp32 or bf16; bf16 says which.  The test on a
 * loop-invariant flag is predictable: the loops stay memory-bound. */
static inline float ld(const void *p, int bf16, int64_t i) {
  return bf16 ? bv_bf16_to_f32(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

static inline void st(void *p, int bf16, int64_t i, float x) {
  if (bf16)
    ((uint16_t *)p)[i] = bv_f32_to_bf16(x);
  else
    ((float *)p)[i] = x;
}

/* w *= a */
static void op_scale(void *w, int wb, int64_t n, float a) {
  for (int64_t i = 0; i < n; i++) st(w, wb, i, ld(w, wb, i) * a);
}

/* m = b*m + omb*d (sq: d*d), d = g + l2*w */
static void op_ema(float *m, const void *g, int gb, const void *w, int wb, int64_t n,
                   float b, float omb, float l2, int sq) {
  for (int64_t i = 0; i < n; i++) {
    float d = ld(g, gb, i);
    if (l2 != 0.0f) d += l2 * ld(w, wb, i);
    m[i] = b * m[i] + omb * (sq ? d * d : d);
  }
}

/* w -= step_size * m / (sqrt(v)/bc2_sqrt + eps) */
static void op_adam(void *w, int wb, const float *m, const float *v, int64_t n,
                    const naive_scalars *s) {
  for (int64_t i = 0; i < n; i++) {
    float denom = sqrtf(v[i]) / s->bc2_sqrt + s->eps;
    st(w, wb, i, ld(w, wb, i) - s->step_size * (m[i] / denom));
  }
}

/* buf = first ? d : mu*buf + omd*d, d = g + l2*w */
static void op_sgd_buf(float *buf, const void *g, int gb, const void *w, int wb, int64_t n,
                       const naive_scalars *s) {
  for (int64_t i = 0; i < n; i++) {
    float d = ld(g, gb, i);
    if (s->l2 != 0.0f) d += s->l2 * ld(w, wb, i);
    buf[i] = s->first ? d : s->b1 * buf[i] + s->omb1 * d;
  }
}

/* w += a*x */
static void op_axpy(void *w, int wb, const float *x, int64_t n, float a) {
  for (int64_t i = 0; i < n; i++) st(w, wb, i, ld(w, wb, i) + a * x[i]);
}

/* w -= lr * sign(b1*m + omb1*g) */
static void op_lion(void *w, int wb, const float *m, const void *g, int gb, int64_t n,
                    const naive_scalars *s) {
  for (int64_t i = 0; i < n; i++) {
    float c = s->b1 * m[i] + s->omb1 * ld(g, gb, i);
    float sign = (float)((c > 0.0f) - (c < 0.0f));
    st(w, wb, i, ld(w, wb, i) - s->lr * sign);
  }
}

/* sum = (first ? init : sum) + d*d, d = g + l2*w (AdaGrad) */
static void op_adagrad_sum(float *sum, const void *g, int gb, const void *w, int wb, int64_t n,
                           const naive_scalars *s) {
  for (int64_t i = 0; i < n; i++) {
    float d = ld(g, gb, i);
    if (s->l2 != 0.0f) d += s->l2 * ld(w, wb, i);
    sum[i] = (s->first ? s->init : sum[i]) + d * d;
  }
}

/* w -= clr * d / (sqrt(sum) + eps), d = g + l2*w (AdaGrad; s->lr is clr) */
static void op_adagrad(void *w, int wb, const float *sum, const void *g, int gb, int64_t n,
                       const naive_scalars *s) {
  for (int64_t i = 0; i < n; i++) {
    const float wi = ld(w, wb, i);
    float d = ld(g, gb, i);
    if (s->l2 != 0.0f) d += s->l2 * wi;
    st(w, wb, i, wi - s->lr * (d / (sqrtf(sum[i]) + s->eps)));
  }
}

/* RMSprop's denominator: sqrt(sq) + eps, centered sqrt(max(sq - ga^2, 0)) + eps */
static inline float rms_avg(const float *sq, const float *ga, int64_t i, float eps) {
  if (!ga) return sqrtf(sq[i]) + eps;
  const float var = sq[i] - ga[i] * ga[i];
  return sqrtf(var > 0.0f ? var : 0.0f) + eps;
}

/* buf = mu*buf + d/avg, d = g + l2*w (RMSprop with momentum) */
static void op_rms_buf(float *buf, const float *sq, const float *ga, const void *g, int gb,
                       const void *w, int wb, int64_t n, const naive_scalars *s) {
  for (int64_t i = 0; i < n; i++) {
    float d = ld(g, gb, i);
    if (s->l2 != 0.0f) d += s->l2 * ld(w, wb, i);
    buf[i] = s->b1 * buf[i] + d / rms_avg(sq, ga, i, s->eps);
  }
}

/* w -= lr * d/avg, d = g + l2*w (RMSprop without momentum) */
static void op_rms(void *w, int wb, const float *sq, const float *ga, const void *g, int gb,
                   int64_t n, const naive_scalars *s) {
  for (int64_t i = 0; i < n; i++) {
    const float wi = ld(w, wb, i);
    float d = ld(g, gb, i);
    if (s->l2 != 0.0f) d += s->l2 * wi;
    st(w, wb, i, wi - s->lr * (d / rms_avg(sq, ga, i, s->eps)));
  }
}

/* w -= c * x / (sqrt(v)/bc2_sqrt + eps), x = g + l2*w (grad) or m (NAdam's
 * two addcdiv passes) */
static void op_nadam_grad(void *w, int wb, const float *v, const void *g, int gb, int64_t n,
                          const naive_scalars *s) {
  for (int64_t i = 0; i < n; i++) {
    const float wi = ld(w, wb, i);
    float d = ld(g, gb, i);
    if (s->l2 != 0.0f) d += s->l2 * wi;
    const float denom = sqrtf(v[i]) / s->bc2_sqrt + s->eps;
    st(w, wb, i, wi - s->c1 * (d / denom));
  }
}

static void op_nadam_mom(void *w, int wb, const float *m, const float *v, int64_t n,
                         const naive_scalars *s) {
  for (int64_t i = 0; i < n; i++) {
    const float denom = sqrtf(v[i]) / s->bc2_sqrt + s->eps;
    st(w, wb, i, ld(w, wb, i) - s->c2 * (m[i] / denom));
  }
}

/* Sum of squares, in double, eight running sums (a reduction as a
 * framework's vectorised sum does it, not one serial chain). */
static double op_sumsq(const void *x, int xb, int64_t n) {
  double acc[8] = {0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; k++) {
      const double e = ld(x, xb, i + k);
      acc[k] += e * e;
    }
  for (; i < n; i++) {
    const double e = ld(x, xb, i);
    acc[0] += e * e;
  }
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/* LAMB's update direction u = (m/bc1) / (sqrt(v)/bc2_sqrt + eps) + wd*w. */
static inline float lamb_u(const float *m, const float *v, float w, int64_t i,
                           const naive_scalars *s) {
  return (m[i] / s->bc1) / (sqrtf(v[i]) / s->bc2_sqrt + s->eps) + s->wd * w;
}

static double op_lamb_sumsq_u(const float *m, const float *v, const void *w, int wb, int64_t n,
                              const naive_scalars *s) {
  double acc[8] = {0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; k++) {
      const double u = lamb_u(m, v, ld(w, wb, i + k), i + k, s);
      acc[k] += u * u;
    }
  for (; i < n; i++) {
    const double u = lamb_u(m, v, ld(w, wb, i), i, s);
    acc[0] += u * u;
  }
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/* w -= f * u, f = lr * trust ratio */
static void op_lamb_apply(void *w, int wb, const float *m, const float *v, int64_t n, float f,
                          const naive_scalars *s) {
  for (int64_t i = 0; i < n; i++) {
    const float wi = ld(w, wb, i);
    st(w, wb, i, wi - f * lamb_u(m, v, wi, i, s));
  }
}

/* buf = first ? e : mu*buf + omd*e, e = (g + l2*w) * local (LARS) */
static void op_lars_buf(float *buf, const void *g, int gb, const void *w, int wb, int64_t n,
                        float local, const naive_scalars *s) {
  for (int64_t i = 0; i < n; i++) {
    float d = ld(g, gb, i);
    if (s->l2 != 0.0f) d += s->l2 * ld(w, wb, i);
    const float e = d * local;
    buf[i] = s->first ? e : s->b1 * buf[i] + s->omb1 * e;
  }
}

/* LAMB: lr * ||w|| / ||u||, lr when a norm is 0 or the group does not adapt. */
static float lamb_factor(double w2, double u2, const naive_scalars *s) {
  const double wn = sqrt(w2), un = sqrt(u2);
  const double r = s->adapt && wn > 0.0 && un > 0.0 ? wn / un : 1.0;
  return (float)((double)s->lr * r);
}

/* LARS: trust * ||w|| / (||g|| + wd*||w||), 1 when a norm is 0 or the group
 * does not adapt. */
static float lars_local(double w2, double g2, const naive_scalars *s) {
  const double wn = sqrt(w2), gn = sqrt(g2);
  if (!s->adapt || wn <= 0.0 || gn <= 0.0) return 1.0f;
  return (float)((double)s->trust * wn / (gn + (double)s->wd * wn));
}

static void step_tensor(const naive_tensor *t, const naive_step_args *a, void *w, int wb) {
  const naive_scalars *s = &a->groups[t->group];
  const int gb = a->grad_dtype == NAIVE_BF16;
  const int64_t n = t->numel;
  switch (a->alg) {
    case NAIVE_SGD:
      op_sgd_buf(t->m, t->grad, gb, w, wb, n, s);
      op_axpy(w, wb, t->m, n, -s->lr);
      break;
    case NAIVE_ADAM:
    case NAIVE_ADAMW:
      if (a->alg == NAIVE_ADAMW) op_scale(w, wb, n, s->decay);
      op_ema(t->m, t->grad, gb, w, wb, n, s->b1, s->omb1, s->l2, 0);
      op_ema(t->v, t->grad, gb, w, wb, n, s->b2, s->omb2, s->l2, 1);
      op_adam(w, wb, t->m, t->v, n, s);
      break;
    case NAIVE_LION:
      op_scale(w, wb, n, s->decay);
      op_lion(w, wb, t->m, t->grad, gb, n, s);
      op_ema(t->m, t->grad, gb, w, wb, n, s->b2, s->omb2, 0.0f, 0);
      break;
    case NAIVE_ADAGRAD:
      op_adagrad_sum(t->v, t->grad, gb, w, wb, n, s);
      op_adagrad(w, wb, t->v, t->grad, gb, n, s);
      break;
    case NAIVE_RMSPROP:
      op_ema(t->v, t->grad, gb, w, wb, n, s->b2, s->omb2, s->l2, 1);
      if (s->centered) op_ema(t->a, t->grad, gb, w, wb, n, s->b2, s->omb2, s->l2, 0);
      if (t->m) {
        op_rms_buf(t->m, t->v, s->centered ? t->a : NULL, t->grad, gb, w, wb, n, s);
        op_axpy(w, wb, t->m, n, -s->lr);
      } else {
        op_rms(w, wb, t->v, s->centered ? t->a : NULL, t->grad, gb, n, s);
      }
      break;
    case NAIVE_NADAM:
      if (s->decay != 1.0f) op_scale(w, wb, n, s->decay);
      op_ema(t->m, t->grad, gb, w, wb, n, s->b1, s->omb1, s->l2, 0);
      op_ema(t->v, t->grad, gb, w, wb, n, s->b2, s->omb2, s->l2, 1);
      op_nadam_grad(w, wb, t->v, t->grad, gb, n, s);
      op_nadam_mom(w, wb, t->m, t->v, n, s);
      break;
    case NAIVE_LAMB: {
      op_ema(t->m, t->grad, gb, w, wb, n, s->b1, s->omb1, 0.0f, 0);
      op_ema(t->v, t->grad, gb, w, wb, n, s->b2, s->omb2, 0.0f, 1);
      const double w2 = op_sumsq(w, wb, n);
      const double u2 = op_lamb_sumsq_u(t->m, t->v, w, wb, n, s);
      op_lamb_apply(w, wb, t->m, t->v, n, lamb_factor(w2, u2, s), s);
      break;
    }
    default: { /* LARS */
      const double w2 = op_sumsq(w, wb, n);
      const double g2 = op_sumsq(t->grad, gb, n);
      op_lars_buf(t->m, t->grad, gb, w, wb, n, lars_local(w2, g2, s), s);
      op_axpy(w, wb, t->m, n, -s->lr);
      break;
    }
  }
}

void naive_step_cpu(const naive_tensor *t, int64_t n, const naive_step_args *a) {
  for (int64_t i = 0; i < n; i++) {
    const naive_tensor *x = &t[i];
    if (a->master) {
      step_tensor(x, a, x->master, 0);
      uint16_t *p = (uint16_t *)x->param;
      for (int64_t j = 0; j < x->numel; j++) p[j] = bv_f32_to_bf16(x->master[j]);
    } else {
      step_tensor(x, a, x->param, a->param_dtype == NAIVE_BF16);
    }
  }
}
