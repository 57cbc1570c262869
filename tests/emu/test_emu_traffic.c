/*
 * test_emu_traffic.c -- the bytes a step moves are the bytes the benchmark
 * divides by.
 *
 * The benchmark reports bandwidth as the bytes model of bench/model.c over
 * the measured time, and compares it with a copy of as many bytes; if the
 * kernels moved more than the model says (a buffer read twice, a state
 * buffer loaded on a step whose rule ignores it, a gradient read by a pass
 * that does not use it), the reported fraction of copy would flatter them,
 * and nothing on the device would show it.  Here the emulated device
 * (tests/emu) counts every element load and store the kernels' block work
 * makes (kernels/vec_io.cuh's FO_BW_TRACE hook, emu_traffic.cpp), over the
 * library's whole step through the public API -- pre-pass, norms and apply
 * passes included -- and the test holds each step of every benchmarked
 * algorithm and configuration to the model, to the byte:
 *
 *   total   == bench_bytes_per_param(alg, config) * parameters
 *   stored  == (the weights each parameter's step writes + 4 per state
 *               buffer) * parameters: every output written once, by one
 *               pass
 *
 * SGD's and LARS's first step set the momentum buffer without reading it
 * (4 bytes less per parameter); the model counts a later step, and so does
 * the benchmark, which warms up first.  The tensors are packed back to back
 * in two slabs, as the benchmark's are, so both the vector and the scalar
 * paths run, and the two groups carry the benchmark's hyper-parameters.
 */
#include <criterion/criterion.h>
#include <cuda_runtime_api.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "fusedopt.h"
#include "gpu_harness.h" /* CK */
#include "testutil.h"

/* emu_traffic.cpp */
void fo_emu_traffic_start(void);
void fo_emu_traffic_stop(uint64_t *loaded, uint64_t *stored);

/* bench/model.c's error exits, as the test's failures. */
void bench_fo_check(fo_status st, const char *what, const char *file, int line) {
  if (st != FO_SUCCESS) cr_assert_fail("%s:%d: %s: %s", file, line, what, fo_last_error());
}

void bench_die(const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  cr_assert_fail("%s", msg);
  abort();
}

/* Sizes off every vector and chunk boundary, a one-element bias, and
 * tensors that span several chunks; back to back in a slab, so most start
 * off a 16-byte boundary and take the scalar path. */
static const int64_t SIZES[] = {4099, 1, 70001, 7, 65536, 1027, 3, 131075};
#define NT ((int64_t)(sizeof SIZES / sizeof SIZES[0]))

/* The state buffers the benchmark's hyper-parameters keep per parameter,
 * from the footprint model (parameter, gradient, master, 4 per buffer). */
static int64_t state_buffers(fo_algorithm alg, const bench_config *c) {
  const int64_t p = (int64_t)fo_dtype_size(c->param), g = (int64_t)fo_dtype_size(c->grad);
  return (bench_footprint_per_param(alg, c) - p - g - (c->master ? 4 : 0)) / 4;
}

/* n random values in [-1, 1) of dtype, never zero, uploaded to dst. */
static void upload_random(tu_rng *rng, void *dst, fo_dtype dtype, int64_t n) {
  float *f = malloc((size_t)n * sizeof *f);
  unsigned char *bytes = malloc((size_t)n * fo_dtype_size(dtype));
  cr_assert(f && bytes, "out of host memory");
  for (int64_t i = 0; i < n; i++) f[i] = (float)tu_rng_nonzero(rng, 1e-3, 1.0);
  cr_assert_eq(fo_convert_from_f32(dtype, f, bytes, n), FO_SUCCESS);
  CK(cudaMemcpy(dst, bytes, (size_t)n * fo_dtype_size(dtype), cudaMemcpyHostToDevice));
  free(bytes);
  free(f);
}

/* One (algorithm, configuration) with the groups' hyper-parameters h and
 * state buffers state[g] per parameter of group g, and with
 * write_unscaled_grads when unscaled (a pass after the update that reads
 * and writes each gradient: + 2G): three steps, each counted. */
static void check_steps(fo_algorithm alg, const bench_config *c, const fo_hparams h[2],
                        const int64_t state[2], int unscaled, const char *ctx, uint64_t seed) {
  tu_rng rng;
  tu_rng_seed(&rng, seed, 3u);

  int64_t params = 0;
  for (int64_t i = 0; i < NT; i++) params += SIZES[i];
  const size_t ps = fo_dtype_size(c->param), gs = fo_dtype_size(c->grad);
  unsigned char *param_slab = NULL, *grad_slab = NULL;
  CK(cudaMalloc((void **)&param_slab, (size_t)params * ps));
  CK(cudaMalloc((void **)&grad_slab, (size_t)params * gs));
  upload_random(&rng, param_slab, c->param, params);

  fo_tensor_desc desc[NT];
  int64_t at = 0;
  for (int64_t i = 0; i < NT; i++) {
    memset(&desc[i], 0, sizeof desc[i]);
    desc[i].numel = SIZES[i];
    desc[i].group = (int)(i % 2); /* 0: matrices, 1: biases and norms */
    desc[i].param = param_slab + (size_t)at * ps;
    desc[i].grad = grad_slab + (size_t)at * gs;
    at += SIZES[i];
  }
  /* the benchmark's options (bench/run.c, row_options) */
  fo_options o;
  cr_assert_eq(fo_options_default(&o), FO_SUCCESS);
  o.algorithm = alg;
  o.executor = FO_EXEC_CUDA;
  o.param_dtype = c->param;
  o.grad_dtype = c->grad;
  o.master_weights = c->master;
  if (c->clip) {
    o.max_grad_norm = 3.4e38f;
    o.loss_scaler.enabled = 1;
    o.loss_scaler.init_scale = 1.0f;
    o.loss_scaler.growth_interval = 1 << 30;
  }
  o.write_unscaled_grads = unscaled;
  fo_optimizer *opt = NULL;
  cr_assert_eq(fo_optimizer_create(&opt, &o, h, 2, desc, NT), FO_SUCCESS, "%s: %s", ctx,
               fo_last_error());
  CK(cudaDeviceSynchronize());

  /* the model's bytes, and the outputs', each tensor with its group's
   * state buffers in place of the benchmark's */
  const int64_t bench_state = state_buffers(alg, c);
  const int64_t weights_written = c->master ? 4 + (int64_t)ps : (int64_t)ps;
  int64_t model = 0, writes = 0, momentum = 0;
  for (int64_t i = 0; i < NT; i++) {
    const int64_t s = state[desc[i].group];
    model += (bench_bytes_per_param(alg, c) + 8 * (s - bench_state)) * SIZES[i];
    writes += (weights_written + 4 * s + (unscaled ? (int64_t)gs : 0)) * SIZES[i];
    model += (unscaled ? 2 * (int64_t)gs : 0) * SIZES[i];
    momentum += s * SIZES[i];
  }
  for (int step = 1; step <= 3; step++) {
    upload_random(&rng, grad_slab, c->grad, params);
    CK(cudaDeviceSynchronize());
    uint64_t loaded = 0, stored = 0;
    fo_emu_traffic_start();
    const fo_status st = fo_optimizer_step(opt, NULL);
    const cudaError_t e = cudaDeviceSynchronize(); /* the emulated work runs here */
    fo_emu_traffic_stop(&loaded, &stored);
    cr_assert_eq(st, FO_SUCCESS, "%s, step %d: %s", ctx, step, fo_last_error());
    CK(e);
    fo_step_info info;
    cr_assert_eq(fo_optimizer_get_info(opt, &info), FO_SUCCESS);
    cr_assert(info.step == step && !info.last_step_skipped, "%s, step %d: not applied", ctx, step);

    /* SGD's and LARS's first step set the buffer without reading it */
    const int64_t unread =
        step == 1 && (alg == FO_ALG_SGD || alg == FO_ALG_LARS) ? 4 * momentum : 0;
    const int64_t want = model - unread;
    cr_assert_eq((int64_t)(loaded + stored), want,
                 "%s, step %d: the kernels moved %" PRIu64 " bytes (%.3f per parameter: %" PRIu64
                 " loaded, %" PRIu64 " stored), the benchmark's model says %" PRId64
                 " (%.3f per parameter)",
                 ctx, step, loaded + stored, (double)(loaded + stored) / (double)params, loaded,
                 stored, want, (double)want / (double)params);
    cr_assert_eq((int64_t)stored, writes,
                 "%s, step %d: %" PRIu64 " bytes stored (%.3f per parameter), want %" PRId64
                 " (each output written once)",
                 ctx, step, stored, (double)stored / (double)params, writes);
  }
  cr_assert_eq(fo_optimizer_destroy(opt), FO_SUCCESS);
  CK(cudaFree(param_slab));
  CK(cudaFree(grad_slab));
}

/* Every configuration of the benchmark for one algorithm, with its
 * hyper-parameters. */
static void check_algorithm(fo_algorithm alg) {
  for (int k = 0; k < bench_num_configs; k++) {
    const bench_config *c = &bench_configs[k];
    fo_hparams h[2];
    bench_hparams(alg, 0, &h[0]);
    bench_hparams(alg, 1, &h[1]);
    const int64_t state[2] = {state_buffers(alg, c), state_buffers(alg, c)};
    char ctx[96];
    snprintf(ctx, sizeof ctx, "%s %s", bench_alg_name(alg), c->name);
    check_steps(alg, c, h, state, 0, ctx, tu_hash((uint64_t)alg, (uint64_t)k));
  }
}

/* A buffer that only some groups' options use is touched only in those
 * groups' tensors, though the optimizer keeps it for every tensor: the
 * benchmark's hyper-parameters changed by g0 in group 0 and g1 in group 1
 * (either may be NULL), s0 and s1 state buffers per parameter. */
static void check_mixed(fo_algorithm alg, const char *what, void (*g0)(fo_hparams *), int64_t s0,
                        void (*g1)(fo_hparams *), int64_t s1) {
  for (int k = 0; k < 2; k++) { /* fp32, bf16-master */
    const bench_config *c = &bench_configs[k];
    fo_hparams h[2];
    bench_hparams(alg, 0, &h[0]);
    bench_hparams(alg, 1, &h[1]);
    if (g0) g0(&h[0]);
    if (g1) g1(&h[1]);
    const int64_t state[2] = {s0, s1};
    char ctx[128];
    snprintf(ctx, sizeof ctx, "%s %s, %s", bench_alg_name(alg), c->name, what);
    check_steps(alg, c, h, state, 0, ctx, tu_hash(99u + (uint64_t)alg, (uint64_t)k));
  }
}

static void amsgrad_on(fo_hparams *h) {
  h->amsgrad = 1;
}

static void centered(fo_hparams *h) {
  h->centered = 1;
}

static void momentum_off(fo_hparams *h) {
  h->momentum = 0.0f;
}

Test(traffic, options_of_one_group) {
  check_mixed(FO_ALG_ADAM, "AMSGrad in group 0 only", amsgrad_on, 3, NULL, 2);
  check_mixed(FO_ALG_ADAMW, "AMSGrad in group 0 only", amsgrad_on, 3, NULL, 2);
  check_mixed(FO_ALG_RMSPROP, "group 0 centered, group 1 without momentum", centered, 3,
              momentum_off, 1);
  check_mixed(FO_ALG_SGD, "group 1 without momentum", NULL, 1, momentum_off, 0);
  check_mixed(FO_ALG_LARS, "group 1 without momentum", NULL, 1, momentum_off, 0);
}

/* write_unscaled_grads costs one pass over the gradients, after the
 * update (fusedopt.h: "saves a pass over memory" when off): each gradient
 * read and written once more, with clipping and loss scaling on or off. */
Test(traffic, unscaled_gradients_written_back) {
  const fo_algorithm algs[] = {FO_ALG_ADAMW, FO_ALG_SGD, FO_ALG_LAMB, FO_ALG_LARS};
  for (size_t a = 0; a < sizeof algs / sizeof algs[0]; a++)
    for (int k = 0; k < bench_num_configs; k++) {
      const bench_config *c = &bench_configs[k];
      fo_hparams h[2];
      bench_hparams(algs[a], 0, &h[0]);
      bench_hparams(algs[a], 1, &h[1]);
      const int64_t state[2] = {state_buffers(algs[a], c), state_buffers(algs[a], c)};
      char ctx[96];
      snprintf(ctx, sizeof ctx, "%s %s, write_unscaled_grads", bench_alg_name(algs[a]), c->name);
      check_steps(algs[a], c, h, state, 1, ctx, tu_hash(7u + (uint64_t)algs[a], (uint64_t)k));
    }
}

/* The benchmark's algorithms are the library's: one test each. */
Test(traffic, algorithms_benchmarked) {
  cr_assert_eq(bench_num_algs, FO_ALG_COUNT, "a library algorithm the benchmark does not time");
}

#define TRAFFIC_TEST(name, alg) \
  Test(traffic, name) {         \
    check_algorithm(alg);       \
  }

TRAFFIC_TEST(adamw, FO_ALG_ADAMW)
TRAFFIC_TEST(adam, FO_ALG_ADAM)
TRAFFIC_TEST(sgd_momentum, FO_ALG_SGD)
TRAFFIC_TEST(lion, FO_ALG_LION)
TRAFFIC_TEST(adagrad, FO_ALG_ADAGRAD)
TRAFFIC_TEST(rmsprop, FO_ALG_RMSPROP)
TRAFFIC_TEST(nadam, FO_ALG_NADAM)
TRAFFIC_TEST(lamb, FO_ALG_LAMB)
TRAFFIC_TEST(lars, FO_ALG_LARS)
