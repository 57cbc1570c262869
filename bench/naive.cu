/*
 * naive.cu -- the baseline CUDA step (naive.h): for every tensor, one
 * kernel launch per elementwise operation, one thread per element, fp32
 * arithmetic.  AdamW is 4 launches per tensor (decay, first moment, second
 * moment, bias-corrected update), plus one to round the fp32 master into a
 * bf16 parameter; LAMB and LARS add one reduction launch per norm (summing
 * in double) and one single-thread launch for the tensor's factor.  This
 * is what the fused step saves: the launches (4-5 per tensor instead of 2
 * per step) and the re-reads (the weights cross memory three times, the
 * gradient twice).
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

/* AdaGrad's sum: sum = (first ? init : sum) + d*d, d = g + l2*w. */
template <class G, class W>
__global__ void k_adagrad_sum(float *sum, const G *g, const W *w, int64_t n, float l2, float init,
                              int first) {
  const int64_t i = elem();
  if (i >= n) return;
  float d = ld(g, i);
  if (l2 != 0.0f) d += l2 * ld(w, i);
  sum[i] = (first ? init : sum[i]) + d * d;
}

/* AdaGrad's update: w -= clr * d / (sqrt(sum) + eps). */
template <class G, class W>
__global__ void k_adagrad(W *w, const float *sum, const G *g, int64_t n, float clr, float l2,
                          float eps) {
  const int64_t i = elem();
  if (i >= n) return;
  const float wi = ld(w, i);
  float d = ld(g, i);
  if (l2 != 0.0f) d += l2 * wi;
  st(w, i, wi - clr * (d / (sqrtf(sum[i]) + eps)));
}

/* RMSprop's denominator (ga: grad_avg when centered, else NULL). */
static __device__ __forceinline__ float rms_avg(const float *sq, const float *ga, int64_t i,
                                                float eps) {
  if (!ga) return sqrtf(sq[i]) + eps;
  const float var = sq[i] - ga[i] * ga[i];
  return sqrtf(var > 0.0f ? var : 0.0f) + eps;
}

/* RMSprop with momentum: buf = mu*buf + d/avg. */
template <class G, class W>
__global__ void k_rms_buf(float *buf, const float *sq, const float *ga, const G *g, const W *w,
                          int64_t n, float mu, float l2, float eps) {
  const int64_t i = elem();
  if (i >= n) return;
  float d = ld(g, i);
  if (l2 != 0.0f) d += l2 * ld(w, i);
  buf[i] = mu * buf[i] + d / rms_avg(sq, ga, i, eps);
}

/* RMSprop without momentum: w -= lr * d/avg. */
template <class G, class W>
__global__ void k_rms(W *w, const float *sq, const float *ga, const G *g, int64_t n, float lr,
                      float l2, float eps) {
  const int64_t i = elem();
  if (i >= n) return;
  const float wi = ld(w, i);
  float d = ld(g, i);
  if (l2 != 0.0f) d += l2 * wi;
  st(w, i, wi - lr * (d / rms_avg(sq, ga, i, eps)));
}

/* NAdam's two addcdiv passes: w -= c1 * d/denom, then w -= c2 * m/denom. */
template <class G, class W>
__global__ void k_nadam_grad(W *w, const float *v, const G *g, int64_t n, float c1, float l2,
                             float bc2_sqrt, float eps) {
  const int64_t i = elem();
  if (i >= n) return;
  const float wi = ld(w, i);
  float d = ld(g, i);
  if (l2 != 0.0f) d += l2 * wi;
  const float denom = sqrtf(v[i]) / bc2_sqrt + eps;
  st(w, i, wi - c1 * (d / denom));
}

template <class W>
__global__ void k_nadam_mom(W *w, const float *m, const float *v, int64_t n, float c2,
                            float bc2_sqrt, float eps) {
  const int64_t i = elem();
  if (i >= n) return;
  const float denom = sqrtf(v[i]) / bc2_sqrt + eps;
  st(w, i, ld(w, i) - c2 * (m[i] / denom));
}

/* One block's double sum into *out (atomically: the blocks of one
 * reduction add in any order). */
static __device__ void block_sum(double x, double *out) {
  __shared__ double part[NAIVE_THREADS];
  part[threadIdx.x] = x;
  __syncthreads();
  for (unsigned k = NAIVE_THREADS / 2; k > 0; k >>= 1) {
    if (threadIdx.x < k) part[threadIdx.x] += part[threadIdx.x + k];
    __syncthreads();
  }
  if (threadIdx.x == 0) atomicAdd(out, part[0]);
}

/* *out += sum of x^2 (a norm's reduction; grid-stride). */
template <class X>
__global__ void k_sumsq(const X *x, int64_t n, double *out) {
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  double acc = 0.0;
  for (int64_t i = elem(); i < n; i += stride) {
    const double e = ld(x, i);
    acc += e * e;
  }
  block_sum(acc, out);
}

/* LAMB's update direction u = (m/bc1) / (sqrt(v)/bc2_sqrt + eps) + wd*w. */
static __device__ __forceinline__ float lamb_u(float m, float v, float w, float bc1, float bc2_sqrt,
                                               float eps, float wd) {
  return (m / bc1) / (sqrtf(v) / bc2_sqrt + eps) + wd * w;
}

/* *out += sum of u^2, u recomputed from m, v and w. */
template <class W>
__global__ void k_lamb_sumsq_u(const float *m, const float *v, const W *w, int64_t n, float bc1,
                               float bc2_sqrt, float eps, float wd, double *out) {
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  double acc = 0.0;
  for (int64_t i = elem(); i < n; i += stride) {
    const double u = lamb_u(m[i], v[i], ld(w, i), bc1, bc2_sqrt, eps, wd);
    acc += u * u;
  }
  block_sum(acc, out);
}

/* LAMB's lr * ||w|| / ||u|| (lr when a norm is 0 or the group does not
 * adapt), one thread. */
__global__ void k_lamb_factor(const double *sums, float *factor, float lr, int adapt) {
  const double wn = sqrt(sums[0]), un = sqrt(sums[1]);
  const double r = adapt && wn > 0.0 && un > 0.0 ? wn / un : 1.0;
  *factor = (float)((double)lr * r);
}

/* w -= factor * u */
template <class W>
__global__ void k_lamb_apply(W *w, const float *m, const float *v, int64_t n, const float *factor,
                             float bc1, float bc2_sqrt, float eps, float wd) {
  const int64_t i = elem();
  if (i >= n) return;
  const float wi = ld(w, i);
  st(w, i, wi - *factor * lamb_u(m[i], v[i], wi, bc1, bc2_sqrt, eps, wd));
}

/* LARS's local rate trust * ||w|| / (||g|| + wd*||w||) (1 when a norm is 0
 * or the group does not adapt), one thread. */
__global__ void k_lars_factor(const double *sums, float *factor, float trust, float wd, int adapt) {
  const double wn = sqrt(sums[0]), gn = sqrt(sums[1]);
  *factor = !adapt || wn <= 0.0 || gn <= 0.0 ? 1.0f
                                             : (float)((double)trust * wn / (gn + (double)wd * wn));
}

/* LARS's buffer: buf = first ? e : mu*buf + omd*e, e = (g + l2*w) * local. */
template <class G, class W>
__global__ void k_lars_buf(float *buf, const G *g, const W *w, int64_t n, const float *local,
                           float mu, float omd, float l2, int first) {
  const int64_t i = elem();
  if (i >= n) return;
  float d = ld(g, i);
  if (l2 != 0.0f) d += l2 * ld(w, i);
  const float e = d * *local;
  buf[i] = first ? e : mu * buf[i] + omd * e;
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

/* A reduction: one thread per element up to this many blocks, then
 * grid-stride. */
#define NAIVE_REDUCE_BLOCKS 1024

template <class... P, class... A>
static void launch_reduce(void (*kernel)(P...), int64_t n, cudaStream_t s, A... args) {
  int64_t blocks = (n + NAIVE_THREADS - 1) / NAIVE_THREADS;
  if (blocks > NAIVE_REDUCE_BLOCKS) blocks = NAIVE_REDUCE_BLOCKS;
  kernel<<<(unsigned)blocks, NAIVE_THREADS, 0, s>>>(args...);
}

/* The LAMB and LARS steps' own device memory: two double sums and one
 * float factor per tensor, grown as needed and kept for the process (as a
 * framework's caching allocator keeps the small tensors of its norms). */
static double *g_sums;
static float *g_factors;
static int64_t g_capacity;

static int reserve_scratch(int64_t n) {
  if (n <= g_capacity) return 0;
  cudaFree(g_sums);
  cudaFree(g_factors);
  g_sums = nullptr;
  g_factors = nullptr;
  g_capacity = 0;
  cudaError_t e = cudaMalloc((void **)&g_sums, (size_t)n * 2 * sizeof(double));
  if (e == cudaSuccess) e = cudaMalloc((void **)&g_factors, (size_t)n * sizeof(float));
  if (e != cudaSuccess) return (int)e;
  g_capacity = n;
  return 0;
}

/* One tensor's step; W is the type of the weights the update acts on (the
 * fp32 master, or the parameter itself), G the gradient's.  sums and
 * factor: the tensor's scratch (LAMB, LARS). */
template <class W, class G>
static void step_tensor(int alg, const naive_tensor &t, W *w, const naive_scalars &s, double *sums,
                        float *factor, cudaStream_t st) {
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
    case NAIVE_LION:
      launch(k_scale<W>, n, st, w, n, s.decay);
      launch(k_lion<G, W>, n, st, w, (const float *)t.m, g, n, s.lr, s.b1, s.omb1);
      launch(k_ema<G, W>, n, st, t.m, g, (const W *)nullptr, n, s.b2, s.omb2, 0.0f);
      break;
    case NAIVE_ADAGRAD:
      launch(k_adagrad_sum<G, W>, n, st, t.v, g, (const W *)w, n, s.l2, s.init, s.first);
      launch(k_adagrad<G, W>, n, st, w, (const float *)t.v, g, n, s.lr, s.l2, s.eps);
      break;
    case NAIVE_RMSPROP: {
      const float *ga = s.centered ? (const float *)t.a : nullptr;
      launch(k_ema_sq<G, W>, n, st, t.v, g, (const W *)w, n, s.b2, s.omb2, s.l2);
      if (s.centered) launch(k_ema<G, W>, n, st, t.a, g, (const W *)w, n, s.b2, s.omb2, s.l2);
      if (t.m) {
        launch(k_rms_buf<G, W>, n, st, t.m, (const float *)t.v, ga, g, (const W *)w, n, s.b1, s.l2,
               s.eps);
        launch(k_axpy<W>, n, st, w, (const float *)t.m, n, -s.lr);
      } else {
        launch(k_rms<G, W>, n, st, w, (const float *)t.v, ga, g, n, s.lr, s.l2, s.eps);
      }
      break;
    }
    case NAIVE_NADAM:
      if (s.decay != 1.0f) launch(k_scale<W>, n, st, w, n, s.decay);
      launch(k_ema<G, W>, n, st, t.m, g, (const W *)w, n, s.b1, s.omb1, s.l2);
      launch(k_ema_sq<G, W>, n, st, t.v, g, (const W *)w, n, s.b2, s.omb2, s.l2);
      launch(k_nadam_grad<G, W>, n, st, w, (const float *)t.v, g, n, s.c1, s.l2, s.bc2_sqrt, s.eps);
      launch(k_nadam_mom<W>, n, st, w, (const float *)t.m, (const float *)t.v, n, s.c2, s.bc2_sqrt,
             s.eps);
      break;
    case NAIVE_LAMB:
      launch(k_ema<G, W>, n, st, t.m, g, (const W *)nullptr, n, s.b1, s.omb1, 0.0f);
      launch(k_ema_sq<G, W>, n, st, t.v, g, (const W *)nullptr, n, s.b2, s.omb2, 0.0f);
      launch_reduce(k_sumsq<W>, n, st, (const W *)w, n, sums);
      launch_reduce(k_lamb_sumsq_u<W>, n, st, (const float *)t.m, (const float *)t.v, (const W *)w,
                    n, s.bc1, s.bc2_sqrt, s.eps, s.wd, sums + 1);
      k_lamb_factor<<<1, 1, 0, st>>>(sums, factor, s.lr, s.adapt);
      launch(k_lamb_apply<W>, n, st, w, (const float *)t.m, (const float *)t.v, n,
             (const float *)factor, s.bc1, s.bc2_sqrt, s.eps, s.wd);
      break;
    default: /* LARS */
      launch_reduce(k_sumsq<W>, n, st, (const W *)w, n, sums);
      launch_reduce(k_sumsq<G>, n, st, g, n, sums + 1);
      k_lars_factor<<<1, 1, 0, st>>>(sums, factor, s.trust, s.wd, s.adapt);
      launch(k_lars_buf<G, W>, n, st, t.m, g, (const W *)w, n, (const float *)factor, s.b1, s.omb1,
             s.l2, s.first);
      launch(k_axpy<W>, n, st, w, (const float *)t.m, n, -s.lr);
      break;
  }
}

extern "C" int naive_step_cuda(const naive_tensor *t, int64_t n, const naive_step_args *a,
                               void *stream) {
  cudaStream_t st = (cudaStream_t)stream;
  const int norms = a->alg == NAIVE_LAMB || a->alg == NAIVE_LARS;
  if (norms) {
    const int e = reserve_scratch(n);
    if (e) return e;
    const cudaError_t z = cudaMemsetAsync(g_sums, 0, (size_t)n * 2 * sizeof(double), st);
    if (z != cudaSuccess) return (int)z;
  }
  for (int64_t i = 0; i < n; i++) {
    const naive_tensor &x = t[i];
    if (x.numel == 0) continue;
    const naive_scalars &s = a->groups[x.group];
    double *sums = norms ? g_sums + 2 * i : nullptr;
    float *factor = norms ? g_factors + i : nullptr;
    if (a->master) {
      if (a->grad_dtype == NAIVE_F32)
        step_tensor<float, float>(a->alg, x, x.master, s, sums, factor, st);
      else
        step_tensor<float, uint16_t>(a->alg, x, x.master, s, sums, factor, st);
      launch(k_round, x.numel, st, (uint16_t *)x.param, (const float *)x.master, x.numel);
    } else if (a->param_dtype == NAIVE_F32) {
      step_tensor<float, float>(a->alg, x, (float *)x.param, s, sums, factor, st);
    } else {
      step_tensor<uint16_t, uint16_t>(a->alg, x, (uint16_t *)x.param, s, sums, factor, st);
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
