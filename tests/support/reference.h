/*
 * reference.h -- an independent, deliberately plain reference of the
 * optimizer steps, in double precision.
 *
 * Written from the textbook formulas (torch.optim's documentation for SGD,
 * Adam, AdamW, Adagrad, RMSprop and NAdam; the Lion, LAMB and LARS papers
 * for those), one element at a time, with no
 * code shared with the library: nothing from host/ or kernels/ is included.
 * fusedopt.h is used only for its enums and the fo_hparams struct.  Not
 * thread-safe (a table is filled on first use): call it from one thread.
 *
 * The reference also owns its own fp16 and bf16 conversions (exact
 * arithmetic on frexp/ldexp, no bit tricks), so that it can model what a
 * 16-bit parameter stores:
 *   - fp32 parameters, and the master weights of 16-bit parameters, are kept
 *     in double: the textbook value;
 *   - a 16-bit parameter with master weights is round16(master) after every
 *     step;
 *   - a 16-bit parameter without master weights is rounded to its type
 *     after every step, and that rounded value is what the next step sees.
 */
#ifndef FO_TEST_REFERENCE_H
#define FO_TEST_REFERENCE_H

#include <stdint.h>

#include "fusedopt.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------ floating-point formats */

/* Round x to the nearest value of dtype, ties to even; values past the
 * largest finite round to infinity (as IEEE round-to-nearest does), NaN
 * stays NaN.  FO_DTYPE_F32 rounds to binary32. */
double ref_round(fo_dtype dtype, double x);

/* The spacing of dtype's values at |x|: the ulp of the binade holding x
 * (the subnormal spacing below the smallest normal). */
double ref_ulp(fo_dtype dtype, double x);

/* The two values of dtype that bracket x: *lo <= x <= *hi, equal when x is
 * representable.  x must be finite and inside dtype's finite range. */
void ref_bracket(fo_dtype dtype, double x, double *lo, double *hi);

/* Encode x (rounded to nearest even first) as the 16 bits of fp16 / bf16,
 * and decode 16 bits to their exact value. */
uint16_t ref_f16_bits(double x);
double ref_f16_value(uint16_t bits);
uint16_t ref_bf16_bits(double x);
double ref_bf16_value(uint16_t bits);

/* Store x rounded to dtype at element i of buf (an array of dtype), and
 * load element i of buf as a double (exact). */
void ref_store(fo_dtype dtype, void *buf, int64_t i, double x);
double ref_load(fo_dtype dtype, const void *buf, int64_t i);

/* ------------------------------------------------------------ optimizer */

/* One registered tensor of the reference optimizer. */
typedef struct ref_tensor {
  int64_t numel;
  int group;
  double *w;     /* the value the update works on: the master weight (or
                  * the fp32 parameter) in double; for a 16-bit parameter
                  * without master weights, the stored 16-bit value */
  double *param; /* the parameter as stored in param_dtype */
  double *exact; /* the last step's result before it was rounded to
                  * param_dtype (equal to w unless the parameter is 16-bit
                  * without master weights): what stochastic rounding
                  * brackets */
  double *m;     /* SGD, RMSprop and LARS momentum buffer; Adam, AdamW,
                  * Lion, NAdam and LAMB first moment */
  double *v;     /* Adam, AdamW, NAdam and LAMB second moment; AdaGrad's
                  * sum; RMSprop's square_avg */
  double *vmax;  /* AMSGrad running max of v */
  double *gavg;  /* RMSprop (centered): grad_avg */
  double *feed;  /* the last step's magnitude of what entered m, as the sum
                  * of the absolute values of its terms (|g| + wd*|w| with
                  * L2 decay, |g| without; RMSprop: that over avg; LARS:
                  * local*(|g| + wd*|w|)): the scale of m's rounding
                  * errors, for tolerances */
  double ratio;  /* LAMB: the last step's trust ratio; LARS: its local
                  * learning rate (1 when not adapted) */
} ref_tensor;

typedef struct ref_optimizer {
  fo_algorithm alg;
  fo_dtype param_dtype;
  int master_weights; /* 16-bit parameters only: w kept in double */
  int num_groups;
  fo_hparams groups[FO_MAX_GROUPS];
  int64_t step; /* steps applied so far */
  /* NAdam: the product of mu_1 .. mu_step per group (1 before the first
   * step) */
  double mu_product[FO_MAX_GROUPS];
  int num_tensors;
  ref_tensor *tensors;
} ref_optimizer;

/* Create a reference optimizer; parameters start at zero and the state is
 * zero.  master_weights is ignored for fp32 parameters.  Returns NULL when
 * out of memory. */
ref_optimizer *ref_create(fo_algorithm alg, fo_dtype param_dtype, int master_weights,
                          const fo_hparams *groups, int num_groups, const int64_t *numel,
                          const int *group, int num_tensors);
void ref_destroy(ref_optimizer *r);

/* Set tensor t's parameters (rounded to param_dtype; the master weights,
 * when kept, take the rounded value, as fo_optimizer_sync_master does). */
void ref_set_params(ref_optimizer *r, int t, const double *values);

/* Set one group's learning rate, or every group's when group is -1. */
void ref_set_lr(ref_optimizer *r, int group, float lr);

/* Apply one step: grads[t] holds tensor t's gradient values exactly as the
 * library sees them (already rounded to the gradient dtype). */
void ref_step(ref_optimizer *r, const double *const *grads);

/* The quantity near whose zero one element's next update is ill-conditioned
 * in fp32 against fp64, for a candidate gradient g of tensor t, element i:
 *   Adam, AdamW: the gradient after maximize and L2 decay (the first step's
 *     update is lr * d / (|d| + eps), which turns on |d| ~ eps);
 *   Lion: c = beta1*m + (1-beta1)*g (its sign is the update);
 *   NAdam: as Adam (L2 decay unless decoupled);
 *   AdaGrad, RMSprop: the gradient after maximize and L2 decay (the first
 *     step's update is ~ d/(|d| + eps): AdaGrad's sqrt(sum) is |d| without
 *     an initial accumulator, RMSprop's sqrt(square_avg) is
 *     sqrt(1-alpha)*|d|, and a momentum buffer or later step carries it);
 *   SGD, LAMB, LARS: +infinity (every elementwise operation is
 *     well-conditioned; LAMB adds no decay to the gradient, and LAMB's and
 *     LARS's per-tensor norms are sums of squares).
 * Tests draw gradients so that this is not tiny. */
double ref_sensitivity(const ref_optimizer *r, int t, int64_t i, double g);

#ifdef __cplusplus
}
#endif

#endif /* FO_TEST_REFERENCE_H */
