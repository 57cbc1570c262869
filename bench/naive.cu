/*
 * naive.cu -- the baseline CUDA step (naive.h): for every tensor, one
 * kernel launch per elementwise operation, one thread per element, fp32
 * arithmetic.  AdamW is 4 launches per tensor (decay, first moment, second
 * moment, bias-corrected update), plus one to round the fp32 master into a
 * bf16 parameter.  This is what the fused step saves: the launches (4-5 per
 * tensor instead of 2 per step) and the re-reads (the weights cross memory
 * three times, the gradient twice).
 *
 * Also the fill kernel that writes the benchmark's inputs (values.h).
 */
#include <cuda_runtime.h>
#include <stdint.h>

#include "naive.h"
#include "values.h"

#define NAIVE_THREADS 256

/* --------------------------------------------------- element access */

/* Weights and gradients are fp32 or bf16 (stored as uint16_t); every
 * operation loads to fp32 and rounds to nearest even on store. */
static __device__ __forceinline__ float ld(const float *p, int64_t i) { return p[i]; }
static __device__ __forceinline__ float ld(const uint16_t *p, int64_t i) {
  return bv_bf16_to_f32(p[i]);
}
static __device__ __forceinline__ void st(float *p, int64_t i, float x) { p[i] = x; }
static __device__ __forceinline__ void st(uint16_t *p, int64_t i, float x) {
  p[i] = bv_f32_to_bf16(x);
}

static __device__ __forceinline__ int64_t elem(void) {
  return (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
}

/* ---------------------------------------------------------- kernels */

/* w *= a (decoupled weight decay). */
template <class W>
__global__ void k_scale(W *w, int64_t n, float a) {
  const int64_t i = elem();
  if (i < n) st(w, i, ld(w, i) * a);
}

/* m = b*m + omb*d with d = g + l2*w (w is not read when l2 is 0). */
template <class G, class W>
__global__ void k_ema(float *m, const G *g, const W *w, int64_t n, float b, float omb,
                      float l2) {
  const int64_t i = elem();
  if (i >= n) return;
  float d = ld(g, i);
  if (l2 != 0.0f) d += l2 * ld(w, i);
  m[i] = b * m[i] + omb * d;
}

/* v = b*v + omb*d*d with d as in k_ema. */
template <class G, class W>
__global__ void k_ema_sq(float *v, const G *g, const W *w, int64_t n, float b, float omb,
                         float l2) {
  const int64_t i = elem();
  if (i >= n) return;
  float d = ld(g, i);
  if (l2 != 0.0f) d += l2 * ld(w, i);
  v[i] = b * v[i] + omb * d * d;
}

/* The bias-corrected Adam update: w -= step_size * m / (sqrt(v)/bc2_sqrt + eps). */
template <class W>
__global__ void k_adam(W *w, const float *m, const float *v, int64_t n, float step_size,
                       float bc2_sqrt, float eps) {
  const int64_t i = elem();
  if (i >= n) return;
  const float denom = sqrtf(v[i]) / bc2_sqrt + eps;
  st(w, i, ld(w, i) - step_size * (m[i] / denom));
}

/* SGD momentum buffer: buf = first ? d : mu*buf + omd*d, d = g + l2*w. */
template <class G, class W>
__global__ void k_sgd_buf(float *buf, const G *g, const W *w, int64_t n, float mu,
                          float omd, float l2, int first) {
  const int64_t i = elem();
  if (i >= n) return;
  float d = ld(g, i);
  if (l2 != 0.0f) d += l2 * ld(w, i);
  buf[i] = first ? d : mu * buf[i] + omd * d;
}

/* w += a*x */
template <class W>
__global__ void k_axpy(W *w, const float *x, int64_t n, float a) {
  const int64_t i = elem();
  if (i < n) st(w, i, ld(w, i) + a * x[i]);
}

/* Lion's update: w -= lr * sign(b1*m + omb1*g). */
template <class G, class W>
__global__ void k_lion(W *w, const float *m, const G *g, int64_t n, float lr, float b1,
                       float omb1) {
  const int64_t i = elem();
  if (i >= n) return;
  const float c = b1 * m[i] + omb1 * ld(g, i);
  const float sign = (float)((c > 0.0f) - (c < 0.0f));
  st(w, i, ld(w, i) - lr * sign);
}

/* The bf16 parameter from its fp32 master. */
__global__ void k_round(uint16_t *p, const float *w, int64_t n) {
  const int64_t i = elem();
  if (i < n) p[i] = bv_f32_to_bf16(w[i]);
}

template <class T>
__global__ void k_fill(T *dst, int64_t n, uint64_t seed, float scale) {
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = elem(); i < n; i += stride) st(dst, i, bv_value(seed, (uint64_t)i, scale));
}

/* --------------------------------------------------------- launching */

/* One thread per element. */
template <class... P, class... A>
static void launch(void (*kernel)(P...), int64_t n, cudaStream_t s, A... args) {
  const unsigned grid = (unsigned)((n + NAIVE_THREADS - 1) / NAIVE_THREADS);
  kernel<<<grid, NAIVE_THREADS, 0, s>>>(args...);
}

/* One tensor's step; W is the type of the weights the update acts on (the
 * fp32 master, or the parameter itself), G the gradient's. */
template <class W, class G>
static void step_tensor(int alg, const naive_tensor &t, W *w, const naive_scalars &s,
                        cudaStream_t st) {
  const int64_t n = t.numel;
  const G *g = (const G *)t.grad;
  switch (alg) {
    case NAIVE_SGD:
      launch(k_sgd_buf<G, W>, n, st, t.m, g, (const W *)w, n, s.b1, s.omb1, s.l2, s.first);
      launch(k_axpy<W>, n, st, w, (const float *)t.m, n, -s.lr);
      break;
    case NAIVE_ADAM:
    case NAIVE_ADAMW:
      if (alg == NAIVE_ADAMW) launch(k_scale<W>, n, st, w, n, s.decay);
      launch(k_ema<G, W>, n, st, t.m, g, (const W *)w, n, s.b1, s.omb1, s.l2);
      launch(k_ema_sq<G, W>, n, st, t.v, g, (const W *)w, n, s.b2, s.omb2, s.l2);
      launch(k_adam<W>, n, st, w, (const float *)t.m, (const float *)t.v, n, s.step_size,
             s.bc2_sqrt, s.eps);
      break;
    default: /* Lion */
      launch(k_scale<W>, n, st, w, n, s.decay);
      launch(k_lion<G, W>, n, st, w, (const float *)t.m, g, n, s.lr, s.b1, s.omb1);
      launch(k_ema<G, W>, n, st, t.m, g, (const W *)nullptr, n, s.b2, s.omb2, 0.0f);
      break;
  }
}

extern "C" int naive_step_cuda(const naive_tensor *t, int64_t n, const naive_step_args *a,
                               void *stream) {
  cudaStream_t st = (cudaStream_t)stream;
  for (int64_t i = 0; i < n; i++) {
    const naive_tensor &x = t[i];
    if (x.numel == 0) continue;
    const naive_scalars &s = a->groups[x.group];
    if (a->master) {
      if (a->grad_dtype == NAIVE_F32)
        step_tensor<float, float>(a->alg, x, x.master, s, st);
      else
        step_tensor<float, uint16_t>(a->alg, x, x.master, s, st);
      launch(k_round, x.numel, st, (uint16_t *)x.param, (const float *)x.master, x.numel);
    } else if (a->param_dtype == NAIVE_F32) {
      step_tensor<float, float>(a->alg, x, (float *)x.param, s, st);
    } else {
      step_tensor<uint16_t, uint16_t>(a->alg, x, (uint16_t *)x.param, s, st);
    }
  }
  return (int)cudaGetLastError();
}

extern "C" int bench_fill_cuda(void *dst, int dtype, int64_t n, uint64_t seed, float scale,
                               void *stream) {
  if (n <= 0) return 0;
  int64_t blocks = (n + NAIVE_THREADS - 1) / NAIVE_THREADS;
  if (blocks > 65536) blocks = 65536;
  cudaStream_t st = (cudaStream_t)stream;
  if (dtype == NAIVE_F32)
    k_fill<float><<<(unsigned)blocks, NAIVE_THREADS, 0, st>>>((float *)dst, n, seed, scale);
  else
    k_fill<uint16_t><<<(unsigned)blocks, NAIVE_THREADS, 0, st>>>((uint16_t *)dst, n, seed,
                                                                 scale);
  return (int)cudaGetLastError();
}
