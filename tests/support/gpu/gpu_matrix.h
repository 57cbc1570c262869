/*
 * gpu_matrix.h -- the comparison rig of test_gpu_kernels_*.c: one
 * configuration (algorithm, option set, dtypes, master weights, stochastic
 * rounding, storage) run on the CPU executor and on the executor under test
 * (the CUDA device, or the CPU stand-in with FO_GPU_TEST_STAND_IN=cpu) over
 * the same world and gradients, and the results compared.
 *
 * Tolerances against the CPU executor.  The kernels call the same rules.h
 * functions, and neither compiler contracts a*b + c (gcc in ISO C mode,
 * nvcc with --fmad=false), but the per-step scalars come from double pow()
 * and cos(), whose device versions may differ from glibc's in the last bit
 * (docs/numerics.md).  The bounds below are those of an FMA-contracted
 * build, kept so the tier also holds for a build without --fmad=false: at
 * most ~8 skipped roundings per element and step, six steps, <= ~50 u ~ 3e-6
 * of the magnitudes involved.  Hence:
 *   - fp32 values (fp32 parameters, master weights, moments): |d| <= 1e-5 x
 *     the buffer's largest magnitude + 1e-5 x |value|;
 *   - 16-bit parameters with master: that plus 1 ulp of the 16-bit type
 *     (the masters may lie on either side of a rounding boundary), and the
 *     parameter is exactly RNE(the GPU's own master);
 *   - 16-bit parameters without master (and stochastic rounding): that plus
 *     2 ulps, and at most 1 % of the elements differ at all (a flip is fed
 *     back and persists; a systematic error would touch far more);
 *   - the state of such parameters under L2 decay (SGD, Adam) inherits
 *     wd x the parameter's difference: at most 1 % of its elements may
 *     exceed the fp32 tolerance, none by more than wd x 4 ulps x (2 + 1/(1 -
 *     momentum)) x max(1, 2 |d|max).
 * Where the device's eager steps take their scalars from the host (no
 * pre-pass; result.host_scalars) and no per-tensor norm is summed
 * (neither LAMB nor LARS), at most 1 in 1000 values may differ at all
 * (the same scalars, the same arithmetic: docs/numerics.md).
 * Discontinuities are avoided by choosing the data, as in docs/numerics.md:
 * gradients are redrawn where Lion's c = b1*m + (1-b1)*d or Adam's
 * L2-decayed gradient d cancels to below 1e-3 of its terms.
 *
 */
#ifndef FO_TEST_GPU_MATRIX_H
#define FO_TEST_GPU_MATRIX_H

#include <stdint.h>

#include "fusedopt.h"
#include "gpu_harness.h"
#include "gpu_world.h"

#define K_STEPS 6
#define OVERFLOW_STEP 4 /* option set 2 injects an inf gradient here */

/* One configuration of the matrix. */
typedef struct cfg {
  fo_algorithm alg;
  int set; /* 0: hparams A; 1: hparams B; 2: A + clipping, schedule, loss scaler */
  fo_dtype pt, gt;
  int master, sr;
  fo_storage storage;
  uint64_t seed;
} cfg;

/* What a run leaves: every buffer, packed, on the host. */
typedef struct result {
  unsigned char *param;
  float *state[4]; /* STATE_ROLES; NULL: not kept */
  fo_step_info info;
  /* every step's scalars came from the host's libm, as the CPU executor's
   * do (an eager CUDA step without a pre-pass, FUSEDOPT_HOST_SCALARS not
   * 0; the CPU stand-in) */
  int host_scalars;
} result;

/* How the run under test steps. */
enum { EAGER = 0, GRAPH = 1 };

/* The odd sizes (around vectors, thread counts and the chunk), 151 small
 * tensors, then the n_extra sizes of extra. */
void mx_world_make(world *w, fo_dtype pt, fo_dtype gt, const int64_t *extra, int n_extra,
                   uint64_t seed);
/* Every byte of a buffer of d outside the tensors still poisoned. */
void mx_check_gaps(const dev *d, const world *w, const void *buf, size_t bytes, const size_t *off,
                   size_t elem, const char *what, const char *ctx);

void cfg_name(const cfg *c, char *buf, size_t cap);
/* Two groups' hyper-parameters of the configuration's option set. */
void cfg_hparams(const cfg *c, fo_hparams h[2]);
/* An optimizer of the CPU (cuda 0) or CUDA executor over the world:
 * external tensors at their offsets in pbuf/gbuf (packed back to back when
 * packed != 0), or an arena. */
fo_optimizer *gpu_make_opt(const cfg *c, const world *w, int cuda, unsigned char *pbuf,
                           unsigned char *gbuf, int packed);
/* Every buffer of opt, packed, on the host. */
void gather(const dev *d, fo_optimizer *opt, const world *w, result *r);
void result_free(result *r);

/* Element i of buf (dtype dt), widened. */
double widen1(fo_dtype dt, const void *buf, int64_t i);
/* A fresh gradient value: ~2 % exact zeros, magnitudes in [2e-3, 2]. */
float mx_draw_grad(tu_rng *r);

/* The CPU executor over packed host tensors: draws the gradients of every
 * step (stored in grads[step-1], packed) and steps. */
void cpu_run(const cfg *c, const world *w, unsigned char *const *grads,
             const unsigned char *init_param, result *out);
/* The executor under test over the world with the given gradients (mode
 * EAGER or GRAPH: step 1 eager, then one captured step replayed). */
void dev_run(const dev *d, const cfg *c, const world *w, unsigned char *const *grads,
             const unsigned char *init_param, int mode, result *out, const char *ctx);
/* got against the CPU executor's want, with the tolerances above. */
void compare(const cfg *c, const world *w, const result *want, const result *got, const char *ctx);
/* Two results bit for bit the same. */
void results_identical(const world *w, fo_dtype pt, const result *a, const result *b,
                       const char *what, const char *ctx);

/* Initial parameters: random in [-1, 1] (no zeros), rounded to the dtype. */
unsigned char *init_params(const world *w, uint64_t seed);
/* K_STEPS packed gradient buffers. */
unsigned char **alloc_grads(const world *w);
void free_grads(unsigned char **g);
/* One configuration: the CPU executor draws and steps; the executor under
 * test runs the same gradients; compare.  repeat: a second run must give
 * the same bits; graph: so must a run replayed from a captured graph. */
void run_cfg(const dev *d, const cfg *c, const int64_t *extra, int n_extra, int repeat, int graph);

#endif /* FO_TEST_GPU_MATRIX_H */
