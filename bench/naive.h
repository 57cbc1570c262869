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

/* Dtype codes, equal to fo_dtype's values (fp16 is not benchmarked). */
#define NAIVE_F32 0
#define NAIVE_BF16 2

/* One tensor's buffers: the optimizer's own state buffers, read through
 * fo_optimizer_state_ptr, so the naive step needs no memory of its own. */
typedef struct naive_tensor {
  void *param;       /* param dtype */
  const void *grad;  /* grad dtype */
  float *master;     /* fp32 master weights, or NULL */
  float *m;          /* exp_avg / momentum buffer */
  float *v;          /* exp_avg_sq, or NULL */
  int64_t numel;
  int group;
} naive_tensor;

/* One group's scalars for one step, computed on the host in double and
 * rounded once (as PyTorch computes its Python-side scalars). */
typedef struct naive_scalars {
  float lr;
  float l2;        /* SGD, Adam: weight decay added to the gradient */
  float decay;     /* AdamW, Lion: 1 - lr*wd (1 otherwise) */
  float b1, omb1;  /* beta1 and 1 - beta1; SGD: momentum and 1 - dampening */
  float b2, omb2;  /* beta2 and 1 - beta2 */
  float eps;
  float step_size; /* Adam: lr / (1 - beta1^t) */
  float bc2_sqrt;  /* Adam: sqrt(1 - beta2^t) */
  int first;       /* SGD: first step, the buffer is set to the gradient */
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
