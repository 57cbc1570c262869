/*
 * gpu_mp.h -- the rig of test_gpu_mixed_precision_*.c: a world of 40
 * assorted tensor sizes (and tiny ones), host images of whole role buffers
 * (tensors at their offsets, every other byte poisoned), optimizers over
 * such buffers on the executor under test (the CUDA device, or the CPU
 * stand-in with FO_GPU_TEST_STAND_IN=cpu), and snapshots of everything a
 * run holds, compared bit for bit.
 */
#ifndef FO_TEST_GPU_MP_H
#define FO_TEST_GPU_MP_H

#include <stdint.h>

#include "fusedopt.h"
#include "gpu_harness.h"
#include "gpu_world.h"

/* ---------------------------------------------------------------- world */

/* The 40 base tensors (odd sizes, around vector widths, thread counts and
 * the CUDA chunk, an empty one) in a shuffled order, then n_tiny of 1..64
 * elements. */
void mp_world_make(world *w, fo_dtype pt, fo_dtype gt, int64_t n_tiny, uint64_t seed);
/* The index of the first tensor of numel elements. */
int64_t find_tensor(const world *w, int64_t numel);

/* ------------------------------------------------------- buffer images */

/* Host images of a whole role buffer (grad != 0: the gradient buffer):
 * tensors at their offsets, every other byte poisoned.  Values go in and
 * out through the reference's own conversions (tests/support). */
unsigned char *image_new(size_t bytes);
void img_store(const world *w, unsigned char *img, int grad, int64_t i, int64_t j, double x);
double img_load(const world *w, const unsigned char *img, int grad, int64_t i, int64_t j);
/* The tensors of an image back to back (total elements of the dtype). */
unsigned char *img_pack(const world *w, const unsigned char *img, int grad);
/* Every byte outside the tensors still poisoned. */
void mp_check_gaps(const world *w, const unsigned char *img, int grad, const char *ctx);

/* A fresh gradient value: ~2 % exact zeros, magnitudes in [2e-3, 2]. */
double mp_draw_grad(tu_rng *r);
/* Initial parameters: random in [-1, 1], no zeros, rounded to the dtype. */
unsigned char *param_image(const world *w, uint64_t seed);
/* Gradients mp_draw_grad() * mult, rounded to the gradient dtype. */
unsigned char *grad_image(const world *w, tu_rng *r, double mult);
/* The same from packed fp32 values. */
unsigned char *grad_image_from(const world *w, const float *packed);
/* sqrt(sum of g^2) / scale over every tensor of a gradient image, in
 * double: the norm the step must report. */
double image_norm(const world *w, const unsigned char *img, double scale);

/* ------------------------------------------------------------ options */

/* Master weights, loss scaling from 1024 growing every 1000 steps. */
void base_options(fo_options *o, fo_algorithm alg, fo_dtype pt, fo_dtype gt);
/* Two groups with "generic" values (docs/numerics.md); every kind of state
 * is kept. */
void hparams_for(fo_algorithm alg, fo_hparams h[2]);

/* ----------------------------------------------------------------- runs */

/* One optimizer of the executor in d over a world: external tensors at
 * their offsets in one buffer per role. */
typedef struct run {
  dev d;
  const world *w;
  unsigned char *dp, *dg;
  fo_optimizer *opt;
} run;

void run_open(run *r, const dev *d, const world *w, const fo_options *opts, const fo_hparams h[2],
              const unsigned char *pimg);
void run_close(run *r);
/* Upload a gradient image (on the run's stream). */
void run_grads(run *r, const unsigned char *gimg);
void run_step(run *r);
fo_step_info run_info(const run *r);
/* The loss scale as a backward pass would read it: through the pointer. */
float run_scale_at_ptr(const run *r);

/* Everything a run holds, on the host: both role buffers whole (gaps
 * included), the state buffers packed, the step info. */
typedef struct snap {
  unsigned char *param, *grad;
  float *state[4]; /* STATE_ROLES; NULL: not kept */
  fo_step_info info;
} snap;

void snap_take(const run *r, snap *s);
void snap_free(snap *s);
/* Two step infos the same, bit for bit. */
void info_identical(const fo_step_info *a, const fo_step_info *b, const char *what,
                    const char *ctx);
/* Two snapshots the same, byte for byte. */
void snap_identical(const world *w, const snap *a, const snap *b, const char *what,
                    const char *ctx);
/* "<alg> param <dtype> grad <dtype>[ extra]" into buf. */
void ctx_name(char *buf, size_t cap, fo_algorithm alg, fo_dtype pt, fo_dtype gt, const char *extra);

#endif /* FO_TEST_GPU_MP_H */
