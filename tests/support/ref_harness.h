/*
 * ref_harness.h -- the harness of test_cpu_reference_*.c: one optimizer
 * of the CPU executor and the independent double-precision reference
 * (reference.h) run side by side over guarded buffers, fed the same fresh
 * random gradients, and compared after chosen steps with the tolerances
 * below (docs/numerics.md explains each).  Set FO_TEST_VERBOSE=1 to print
 * the worst error/tolerance ratio seen per category.
 */
#ifndef FO_TEST_REF_HARNESS_H
#define FO_TEST_REF_HARNESS_H

#include <stddef.h>
#include <stdint.h>

#include "fusedopt.h"
#include "reference.h"
#include "testutil.h"

/* ------------------------------------------------------------ tolerances */

/* fp32 quantities (fp32 parameters, master weights, moments, momentum
 * buffers) against the fp64 reference: element i passes when
 *   |got - want| <= TOL_F32 * scale_i,
 * where scale_i is the largest magnitude that element (or, for a moment,
 * the gradient feeding it) has had so far.  The library rounds every
 * operation to fp32 (unit roundoff u = 2^-24 ~ 6e-8).  One step is at most
 * ~8 roundings per element, each an error of at most u times a magnitude
 * bounded by scale_i; over NUM_STEPS = 20 steps they add up to at most
 * ~160u ~ 1e-5 of scale_i.  The running maximum (not the final value) is
 * the right scale because an element that has shrunk or crossed zero
 * carries the absolute error of the larger values it was computed from.
 * The step scalars (lr, betas, 1 - lr*wd, bias corrections) are fp32
 * roundings of the exact values, another u each.  Observed worst errors
 * are well below this bound (FO_TEST_VERBOSE=1 prints them); a wrong
 * formula (eps placement, a bias correction one step off, a missing
 * dampening) gives errors of 1e-3 and more. */
#define TOL_F32 1e-5

/* 16-bit parameters with master weights: the parameter is the rounding of
 * the master weight, so it may differ from round16(reference master) by
 * one ulp of the 16-bit type where the master lies within the fp32 error of
 * a rounding boundary.  Separately, every 16-bit parameter must be exactly
 * RNE(library's own master weight). */
#define TOL_16_MASTER_ULPS 1.0

/* 16-bit parameters without master weights: the stored value is fed back,
 * so a rounding that lands within fp32 error of a tie (probability ~ fp32
 * error / 16-bit ulp, 1e-5 to 1e-4 per element and step) makes the library
 * and the reference differ by one 16-bit ulp from then on.  Two such events
 * in one element are rare but possible over 20 steps: 2 ulps.  A systematic
 * rounding error (truncation, double rounding, wrong tie rule) would touch a
 * large fraction of the elements, so the fraction of elements that differ
 * at all is bounded too. */
#define TOL_16_NOMASTER_ULPS 2.0 /* at the element's largest magnitude */

#define TOL_16_FLIP_FRACTION 0.01

/* Gradients are drawn with magnitude in [GRAD_MIN, GRAD_MAX], random sign,
 * fresh every step, and redrawn while the reference's sensitivity (Adam:
 * the gradient after L2 decay; Lion: the interpolation c whose sign is the
 * update) is below SENS_MIN: near zero those are ill-conditioned (the first
 * Adam step is lr*d/(|d|+eps); sign(c) flips), and fp32 against fp64 would
 * legitimately disagree there.  SENS_MIN is 1e5 times the fp32 error of
 * these quantities. */
#define GRAD_MIN 0.05

#define GRAD_MAX 1.0

#define SENS_MIN 0.01

#define PARAM_INIT 1.0

#define NUM_STEPS 20

#define MAX_TENSORS 16

#define MAX_REPORTED 12

/* The matrix's tensors: odd sizes, empty ones, two groups. */
#define MATRIX_TENSORS 7

extern const int64_t MATRIX_SIZES[MATRIX_TENSORS];
extern const int MATRIX_GROUPS[MATRIX_TENSORS];

/* ------------------------------------------------------- configurations */

/* The options of one group.  The first four fields are the original
 * algorithms' (positional initializers {momentum, wd, amsgrad, maximize}
 * stay valid); the others are zero unless an algorithm uses them. */
typedef struct opt_flags {
  int momentum; /* SGD, LARS: 0 none, 1 plain, 2 with dampening, 3 Nesterov;
                 * RMSprop: 0 or 1 */
  int wd;       /* weight decay; NAdam: 1 L2, 2 decoupled */
  int amsgrad;
  int maximize;
  int lr_decay; /* AdaGrad */
  int init_acc; /* AdaGrad: a non-zero initial_accumulator_value */
  int centered; /* RMSprop */
  int no_adapt; /* LAMB, LARS: layer_adaptation off in group 1 */
} opt_flags;

typedef struct run_cfg {
  fo_algorithm alg;
  opt_flags f; /* options of group 0, and of group 1 unless mixed */
  int mixed;
  opt_flags f1; /* options of group 1 when mixed */
  fo_dtype pdt, gdt;
  int master;
  fo_storage storage;
  int threads;
  int sr;
  uint64_t sr_seed;
  uint64_t seed;
} run_cfg;

void describe_flags(fo_algorithm alg, const opt_flags *f, char *buf, size_t cap);

void describe(const run_cfg *c, char *buf, size_t cap);

/* The hyper-parameters of group g (0 or 1): the two groups differ in every
 * numeric value.  The learning rates and decays are "generic" floats (not
 * 0.05 or 0.01): an fp32 constant close to a short decimal times a 16-bit
 * gradient often lands within fp32 rounding of a 16-bit tie, and fp32
 * arithmetic followed by RNE then legitimately differs by one 16-bit ulp
 * from rounding the exact value (docs/numerics.md, "double rounding"); such
 * data would turn a rare event into a common one.  Group 1's eps is large
 * enough (comparable to sqrt(v_hat)) that its placement matters. */
void make_hparams(fo_algorithm alg, const opt_flags *f, int g, fo_hparams *h);

/* Every option combination of alg (at most MAX_FLAGS). */
#define MAX_FLAGS 64
int flag_list(fo_algorithm alg, opt_flags *out);

/* ---------------------------------------------------------------- stats */

/* With FO_TEST_VERBOSE=1: the worst ratios seen so far, under what. */
void print_stats(const char *what);

/* --------------------------------------------------------------- harness */

typedef struct harness {
  run_cfg c;
  int nt;
  int64_t numel[MAX_TENSORS];
  int group[MAX_TENSORS];
  fo_hparams hp[2];
  ref_optimizer *ref;
  fo_optimizer *opt;
  tu_buffer pbuf[MAX_TENSORS], gbuf[MAX_TENSORS];
  double *gval[MAX_TENSORS];
  /* running maxima of |parameter| and of |m| (SGD buffer), |v| per element:
   * the magnitudes the tolerances scale with */
  double *pscale[MAX_TENSORS], *mscale[MAX_TENSORS], *vscale[MAX_TENSORS];
  /* the algorithms of issue #17 (AdaGrad .. LARS): the running maximum of
   * what entered m (the reference's feed); with 16-bit parameters without
   * master weights, the gradient after decay before the step (dabs), the
   * running maximum of its relative perturbation by the parameter's
   * tolerance (rel), the running maximum of the perturbation of what
   * entered m (ebound), and LARS's relative perturbation of ||w|| (qw) */
  double *fscale[MAX_TENSORS], *dabs[MAX_TENSORS], *rel[MAX_TENSORS], *ebound[MAX_TENSORS];
  double qw[MAX_TENSORS];
  double *lim; /* scratch: per-element tolerances */
  tu_rng rng;
} harness;

void *param_ptr(const harness *h, int t);

void *grad_ptr(const harness *h, int t);

void harness_free(harness *h);

/* Build the reference and the library optimizer over the same random
 * initial parameters.  Returns 1, or 0 with msg set. */
int harness_init(harness *h, const run_cfg *c, const int64_t *sizes, const int *groups, int nt,
                 char *msg, size_t cap);

/* Fresh random non-zero gradients, rounded to the gradient dtype, drawn so
 * that the reference's sensitivity is not tiny; written to the library's
 * gradient buffers and kept in gval for the reference. */
void harness_grads(harness *h);

int harness_step(harness *h, char *msg, size_t cap);

/* Compare everything after step `step` (1-based). */
int harness_check(harness *h, int step, int final, char *msg, size_t cap);

/* Change the learning rate of one group, then of all, in both. */
int harness_set_lr(harness *h, int step, char *msg, size_t cap);

int harness_guards(const harness *h, char *msg, size_t cap);

/* Whether the matrix compares everything after step (1-based): the first
 * steps (SGD's first-step rule, bias corrections at their largest), the
 * steps right after each learning-rate change, every fifth, the last. */
int checked_step(int step);

/* One configuration of the matrix, NUM_STEPS steps. */
int run_case(const run_cfg *c, char *msg, size_t cap);

/* ---------------------------------------------- inside the harness */

/* The tolerance of a parameter that has had magnitude up to scale. */
double harness_param_tol(const run_cfg *c, double scale, double want);

/* Compare one fp32 state buffer of tensor t with the reference's, against
 * the per-element limits in h->lim. */
int harness_check_state(harness *h, int t, fo_role role, const char *name, const double *want,
                        int step, char *msg, size_t cap);

/* ref_harness_new.c: the algorithms of issue #17 (the original four keep
 * the harness's own tolerances); whether a group's weight decay is L2,
 * added to the gradient; the perturbations a 16-bit parameter without
 * master weights brings into the state, noted before and after each step;
 * and the comparison of tensor t's state. */
int harness_is_new_alg(fo_algorithm alg);
int harness_l2_coupled(fo_algorithm alg, const fo_hparams *hp);
void harness_perturbation_before(harness *h);
void harness_perturbation_after(harness *h);
int harness_check_new_state(harness *h, int t, int step, char *msg, size_t cap);

/* FO_TEST_MAX_REPORTED overrides how many failing configurations are
 * printed per test. */
int max_reported(void);

/* The dtypes of the matrix. */
extern const fo_dtype DTYPES[3];

/* Run c for steps steps over tensors past the CPU executor's block size
 * (one tensor split between threads) and return the bytes of every
 * parameter and state buffer, concatenated (malloc; *len bytes). */
unsigned char *snapshot_run(const run_cfg *c, int steps, size_t *len);

#endif /* FO_TEST_REF_HARNESS_H */
