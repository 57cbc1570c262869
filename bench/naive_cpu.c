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
    default: /* Lion */
      op_scale(w, wb, n, s->decay);
      op_lion(w, wb, t->m, t->grad, gb, n, s);
      op_ema(t->m, t->grad, gb, w, wb, n, s->b2, s->omb2, 0.0f, 0);
      break;
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
