/*
 * naive.h -- the baseline the fused step is measured against: one pass over
 * memory per tensor per elementwise operation, as an eager framework's
 * per-tensor loop does it (PyTorch's single-tensor Adam: m.lerp_, v.mul_
 * .addcmul_, p.addcdiv_ ...).  The CUDA version (naive.cu) launches one
 * kernel per operation per tensor; the CPU version (naive_cpu.c) runs one
 * plain loop per operation per tensor.  Both are written from the formulas
 * in docs/numerics.md, not from the library's rules, so the comparison of
 * results (run.c) is a check of the library's arithmetic too.
 *
 * LAMB and LARS scale each tensor's update by norms of the whole tensor:
 * per tensor, one reduction pass per norm (||w|| and ||u||, LAMB's update
 * direction recomputed from m, v and w rather than kept in a temporary;
 * LARS: ||w|| and ||g||), the factor, then the elementwise passes.  Sums of
 * squares are formed in double.  NAdam's mu_product is the host's, in
 * double, per group (model.c).
 *
 * Plain C: included by C files and by naive.cu.
 */
#ifndef BENCH_NAIVE_H
#define BENCH_NAIVE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Algorithm codes, equal to fo_algorithm's values. */
#define NAIVE_SGD 0
#define NAIVE_ADAM 1
#define NAIVE_ADAMW 2
#define NAIVE_LION 3
#define NAIVE_ADAGRAD 4
#define NAIVE_RMSPROP 5
#define NAIVE_NADAM 6
#define NAIVE_LAMB 7
#define NAIVE_LARS 8

/* Dtype codes, equal to fo_dtype's values (fp16 is not benchmarked). */
#define NAIVE_F32 0
#define NAIVE_BF16 2

/* One tensor's buffers: the optimizer's own state buffers, read through
 * fo_optimizer_state_ptr, so the naive step needs no memory of its own
 * (but for the CUDA LAMB and LARS steps' per-tensor sums and factors, a
 * few bytes per tensor kept by naive.cu).  A buffer the algorithm does not
 * keep is NULL. */
typedef struct naive_tensor {
  void *param;       /* param dtype */
  const void *grad;  /* grad dtype */
  float *master;     /* fp32 master weights, or NULL */
  float *m;          /* exp_avg / momentum buffer (RMSprop: with momentum) */
  float *v;          /* exp_avg_sq; AdaGrad's sum; RMSprop's square_avg */
  float *a;          /* RMSprop's grad_avg (centered), or NULL */
  int64_t numel;
  int group;
} naive_tensor;

/* One group's scalars for one step, computed on the host in double and
 * rounded once (as PyTorch computes its Python-side scalars). */
typedef struct naive_scalars {
  float lr;       /* AdaGrad: lr / (1 + (t-1)*lr_decay) */
  float l2;       /* SGD, Adam, AdaGrad, RMSprop, NAdam (L2), LARS: weight
                   * decay added to the gradient */
  float decay;    /* AdamW, Lion, NAdam (decoupled): 1 - lr*wd (1 otherwise) */
  float b1, omb1; /* beta1 and 1 - beta1; SGD, LARS: momentum and
                   * 1 - dampening; RMSprop: momentum */
  float b2, omb2; /* beta2 and 1 - beta2; RMSprop: alpha and 1 - alpha */
  float eps;
  float step_size; /* Adam: lr / (1 - beta1^t) */
  float bc1;       /* LAMB: 1 - beta1^t */
  float bc2_sqrt;  /* Adam, NAdam, LAMB: sqrt(1 - beta2^t) */
  float c1, c2;    /* NAdam: lr (1 - mu_t) / (1 - mu_product) and
                    * lr mu_{t+1} / (1 - mu_product mu_{t+1}) */
  float init;      /* AdaGrad: initial_accumulator_value */
  float wd;        /* LAMB: wd of u = ... + wd*w; LARS: wd of the local rate */
  float trust;     /* LARS: trust_coef */
  int adapt;       /* LAMB, LARS: layer_adaptation */
  int centered;    /* RMSprop */
  int first;       /* SGD, LARS: first step, the buffer is set to the
                    * gradient; AdaGrad: the sum starts at init */
} naive_scalars;

typedef struct naive_step_args {
  int alg;
  int param_dtype;
  int grad_dtype;
  int master;
  const naive_scalars *groups; /* indexed by naive_tensor.group */
} naive_step_args;

/* One naive step over n tensors on stream (a cudaStream_t); returns the
 * first launch error (a cudaError_t value, 0 on success). */
int naive_step_cuda(const naive_tensor *t, int64_t n, const naive_step_args *a,
                    void *stream);
/* The same on host memory. */
void naive_step_cpu(const naive_tensor *t, int64_t n, const naive_step_args *a);

/* Fill n elements of dtype at dst (device memory) with values.h's values. */
int bench_fill_cuda(void *dst, int dtype, int64_t n, uint64_t seed, float scale,
                    void *stream);

#ifdef __cplusplus
}
#endif

#endif /* BENCH_NAIVE_H */
