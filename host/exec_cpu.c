/*
 * exec_cpu.c -- the CPU executor (host/exec.h): the same rules
 * (kernels/rules.h) applied to host memory, one plan block per OpenMP task.
 *
 * Each block is processed in tiles: the update loop runs over plain float
 * arrays (which the compiler vectorizes).  fp32 arrays (master weights,
 * fp32 parameters and gradients) are used where they are; only 16-bit ones
 * are widened into stack arrays and rounded back.  Every input is read once
 * and every output written once.
 */
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_device.h"

#define TILE 512
/* Below this many elements a step is done by the calling thread alone:
 * waking a team costs more than the work. */
#define PARALLEL_MIN_ELEMS (1 << 16)

/* The library is built for baseline x86-64, where these loops run on 4-lane
 * SSE and one core's arithmetic is as slow as memory.  With GCC on x86-64
 * the hot loops are also built for AVX2 and the loader picks a version once
 * (an ifunc).  Not "fma": contracting a*b+c would change the rounding and
 * break bit-identity with the reference (docs/numerics.md); AVX2 alone
 * only widens the same instructions.  Other compilers get the plain loops. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define FO_HOT_LOOP __attribute__((target_clones("avx2", "default")))
#else
#define FO_HOT_LOOP
#endif

/* Which pass of the step a block runs: the only one, or LAMB's and LARS's
 * norms pass and apply pass. */
typedef enum step_pass { PASS_UPDATE, PASS_NORMS, PASS_APPLY } step_pass;

typedef struct step_ctx {
  const fo_optimizer *opt;
  const fo_rule_scalars *scalars; /* per group, from the step state */
  int64_t t;                      /* 1-based number of this step */
  step_pass pass;
} step_ctx;

FO_HOT_LOOP static void widen(int dtype, const void *src, int64_t at, float *dst, int n) {
  if (dtype == FO_DTYPE_F32) {
    memcpy(dst, (const float *)src + at, (size_t)n * sizeof(float));
  } else if (dtype == FO_DTYPE_F16) {
    const uint16_t *s = (const uint16_t *)src + at;
    for (int i = 0; i < n; i++) dst[i] = fo_f16_to_f32(s[i]);
  } else {
    const uint16_t *s = (const uint16_t *)src + at;
    for (int i = 0; i < n; i++) dst[i] = fo_bf16_to_f32(s[i]);
  }
}

FO_HOT_LOOP static void narrow(int dtype, const float *src, void *dst, int64_t at, int n) {
  if (dtype == FO_DTYPE_F32) {
    memcpy((float *)dst + at, src, (size_t)n * sizeof(float));
  } else if (dtype == FO_DTYPE_F16) {
    uint16_t *d = (uint16_t *)dst + at;
    for (int i = 0; i < n; i++) d[i] = fo_f32_to_f16(src[i]);
  } else {
    uint16_t *d = (uint16_t *)dst + at;
    for (int i = 0; i < n; i++) d[i] = fo_f32_to_bf16(src[i]);
  }
}

/* bf16 without master weights, stochastically rounded: the random bits
 * depend only on (seed, step, tensor, element), as on the GPU. */
FO_HOT_LOOP static void narrow_bf16_sr(const float *src, uint16_t *dst, int64_t at, int n,
                                       uint64_t seed, int64_t t, int64_t tensor) {
  for (int i = 0; i < n; i++)
    dst[at + i] = fo_f32_to_bf16_sr(
        src[i], fo_sr_bits(seed, (uint64_t)t, (uint64_t)tensor, (uint64_t)(at + i)));
}

/* The update loop over one tile of float arrays.  Separate loops per
 * algorithm keep each one simple enough to vectorize.  The arrays may be
 * the caller's own buffers or stack tiles, never two views of one buffer
 * (the optimizer rejects overlapping tensors), so restrict holds. */
FO_HOT_LOOP static void update_tile(int alg, float *restrict p, float *restrict m,
                                    float *restrict v, float *restrict vmax,
                                    const float *restrict g, int n, const fo_rule_scalars *sp) {
  /* A local copy: the compiler then knows no store in the loop changes
   * the scalars, and hoists them and the flag tests out of it. */
  const fo_rule_scalars copy = *sp, *s = &copy;
  switch (alg) {
    case FO_RULE_SGD:
      for (int i = 0; i < n; i++) fo_update_sgd(&p[i], &m[i], g[i], s);
      break;
    case FO_RULE_ADAM:
      if (s->flags & FO_RULE_AMSGRAD)
        for (int i = 0; i < n; i++) fo_update_adam_x(0, 1, &p[i], &m[i], &v[i], &vmax[i], g[i], s);
      else
        for (int i = 0; i < n; i++) fo_update_adam_x(0, 0, &p[i], &m[i], &v[i], &vmax[i], g[i], s);
      break;
    case FO_RULE_ADAMW:
      if (s->flags & FO_RULE_AMSGRAD)
        for (int i = 0; i < n; i++) fo_update_adam_x(1, 1, &p[i], &m[i], &v[i], &vmax[i], g[i], s);
      else
        for (int i = 0; i < n; i++) fo_update_adam_x(1, 0, &p[i], &m[i], &v[i], &vmax[i], g[i], s);
      break;
    case FO_RULE_ADAGRAD:
      for (int i = 0; i < n; i++) fo_update_adagrad(&p[i], &v[i], g[i], s);
      break;
    case FO_RULE_RMSPROP:
      for (int i = 0; i < n; i++) fo_update_rmsprop(&p[i], &m[i], &v[i], &vmax[i], g[i], s);
      break;
    case FO_RULE_NADAM:
      for (int i = 0; i < n; i++) fo_update_nadam(&p[i], &m[i], &v[i], g[i], s);
      break;
    default:
      for (int i = 0; i < n; i++) fo_update_lion(&p[i], &m[i], g[i], s);
      break;
  }
}

/* Independent double accumulators of norms_tile: lane k sums the elements
 * i with i % NORM_LANES == k, so the squares vectorize (one fixed order,
 * the same whatever the thread count). */
#define NORM_LANES 8

/* Add the squares of x[0..n) to *acc: NORM_LANES partial sums in a fixed
 * order, then the lanes from 0 up. */
FO_HOT_LOOP static void sum_squares(const float *restrict x, int n, double *acc) {
  double lane[NORM_LANES] = {0.0};
  int i = 0;
  for (; i + NORM_LANES <= n; i += NORM_LANES)
    for (int k = 0; k < NORM_LANES; k++) lane[k] += (double)x[i + k] * (double)x[i + k];
  for (; i < n; i++) lane[i % NORM_LANES] += (double)x[i] * (double)x[i];
  double sum = *acc;
  for (int k = 0; k < NORM_LANES; k++) sum += lane[k];
  *acc = sum;
}

/* LAMB and LARS, first pass over one tile: the squared norms of the
 * weights and of LAMB's direction u (advancing the moments) or of LARS's
 * gradient, added to acc[0] and acc[1].  The direction is formed in its
 * own loop and summed in another: a double accumulation in the loop that
 * advances the moments kept it scalar (0.3 of copy for LAMB on list a). */
FO_HOT_LOOP static void norms_tile(int alg, const float *restrict p, float *restrict m,
                                   float *restrict v, const float *restrict g, int n,
                                   const fo_rule_scalars *sp, double acc[2]) {
  const fo_rule_scalars copy = *sp, *s = &copy;
  float x[TILE];
  if (alg == FO_RULE_LAMB)
    for (int i = 0; i < n; i++) x[i] = fo_lamb_moments(p[i], &m[i], &v[i], g[i], s);
  else
    for (int i = 0; i < n; i++) x[i] = fo_rule_grad(g[i], s);
  sum_squares(p, n, &acc[0]);
  sum_squares(x, n, &acc[1]);
}

/* LAMB and LARS, second pass over one tile, with the tensor's factor. */
FO_HOT_LOOP static void apply_tile(int alg, float *restrict p, float *restrict m,
                                   const float *restrict v, const float *restrict g, int n,
                                   float factor, const fo_rule_scalars *sp) {
  const fo_rule_scalars copy = *sp, *s = &copy;
  if (alg == FO_RULE_LAMB)
    for (int i = 0; i < n; i++) fo_update_lamb(&p[i], m[i], v[i], factor, s);
  else
    for (int i = 0; i < n; i++) fo_update_lars(&p[i], &m[i], g[i], factor, s);
}

static void step_block(const step_ctx *c, int64_t bi) {
  const fo_plan_block *b = &c->opt->run.blocks[bi];
  const fo_optimizer *opt = c->opt;
  const fo_plan_tensor *t = &opt->run.tensors[b->tensor];
  const fo_rule_scalars *s = &c->scalars[t->group];
  int pd = (int)opt->options.param_dtype, gd = (int)opt->options.grad_dtype;
  int sr = opt->options.stochastic_rounding;
  int64_t end = t->numel - b->start < opt->run.chunk ? t->numel : b->start + opt->run.chunk;
  /* The fp32 weights the rule updates (the master, else fp32 parameters)
   * and fp32 gradients are used in place: copying them through the tile
   * and back took a quarter of the step.  NULL: 16-bit, tiled. */
  float *w32 = t->master ? t->master : pd == FO_DTYPE_F32 ? (float *)t->param : NULL;
  float *g32 = gd == FO_DTYPE_F32 ? (float *)t->grad : NULL;
  /* Buffers the optimizer does not keep are never read by the rules for
   * this configuration; they point at scratch so the loops stay uniform. */
  float tile_p[TILE], tile_g[TILE], scratch_m[TILE], scratch_v[TILE], scratch_x[TILE];
  double acc[2] = {0.0, 0.0};
  const int alg = (int)opt->options.algorithm;
  for (int64_t at = b->start; at < end; at += TILE) {
    int n = end - at < TILE ? (int)(end - at) : TILE;
    float *p = w32 ? w32 + at : tile_p;
    float *g = g32 ? g32 + at : tile_g;
    if (!w32) widen(pd, t->param, at, tile_p, n);
    if (!g32) widen(gd, t->grad, at, tile_g, n);
    float *m = t->exp_avg ? t->exp_avg + at : scratch_m;
    float *v = t->exp_avg_sq ? t->exp_avg_sq + at : scratch_v;
    float *x = t->max_exp_avg_sq ? t->max_exp_avg_sq + at : scratch_x;
    if (c->pass == PASS_NORMS) { /* reads and the moments only */
      norms_tile(alg, p, m, v, g, n, s, acc);
      continue;
    }
    if (c->pass == PASS_APPLY)
      apply_tile(alg, p, m, v, g, n, opt->run.tensor_factors[b->tensor], s);
    else
      update_tile(alg, p, m, v, x, g, n, s);
    /* After the update, which has read every gradient of the tile: an fp32
     * gradient is scaled where it is, a 16-bit one rounded back. */
    if (opt->options.write_unscaled_grads) {
      const float coef = s->grad_coef; /* g may be the caller's: no reload */
      for (int i = 0; i < n; i++) g[i] *= coef;
      if (!g32) narrow(gd, tile_g, t->grad, at, n);
    }
    /* fp32 parameters were updated in place; 16-bit ones are rounded from
     * the updated master or tile, once. */
    if (sr)
      narrow_bf16_sr(p, (uint16_t *)t->param, at, n, opt->options.seed, c->t, b->tensor);
    else if (pd != FO_DTYPE_F32)
      narrow(pd, p, t->param, at, n);
  }
  if (c->pass == PASS_NORMS) {
    opt->run.norm_partials[2 * bi] = acc[0];
    opt->run.norm_partials[2 * bi + 1] = acc[1];
  }
}

static int thread_count(const fo_optimizer *opt) {
  return opt->options.num_threads > 0 ? opt->options.num_threads : omp_get_max_threads();
}

static int run_parallel(const fo_optimizer *opt) {
  return opt->run.num_blocks > 1 && opt->total_elems >= PARALLEL_MIN_ELEMS;
}

/* Sum of squares of one block's gradients, in double: a finite fp32 value
 * squared cannot overflow it, so the sum is non-finite exactly when a
 * gradient is. */
static double block_sumsq(const fo_optimizer *opt, const fo_plan_block *b) {
  const fo_plan_tensor *t = &opt->run.tensors[b->tensor];
  int64_t end = t->numel - b->start < opt->run.chunk ? t->numel : b->start + opt->run.chunk;
  int gd = (int)opt->options.grad_dtype;
  float tile_g[TILE];
  double sum = 0.0;
  for (int64_t at = b->start; at < end; at += TILE) {
    int n = end - at < TILE ? (int)(end - at) : TILE;
    /* fp32 gradients are read where they are, 16-bit ones widened */
    const float *g = gd == FO_DTYPE_F32 ? (const float *)t->grad + at : tile_g;
    if (gd != FO_DTYPE_F32) widen(gd, t->grad, at, tile_g, n);
    for (int i = 0; i < n; i++) sum += (double)g[i] * (double)g[i];
  }
  return sum;
}

static fo_status prepass(fo_optimizer *opt, fo_stream_t stream) {
  (void)stream;
  int64_t nb = opt->run.num_blocks;
#pragma omp parallel for schedule(dynamic, 1) num_threads(thread_count(opt)) if (run_parallel(opt))
  for (int64_t b = 0; b < nb; b++) opt->run.partials[b] = block_sumsq(opt, &opt->run.blocks[b]);
  return FO_SUCCESS;
}

/* In a fixed order, the same on every run and every rank. */
static double sum_in_order(const double *v, int64_t n) {
  double total = 0.0;
  for (int64_t i = 0; i < n; i++) total += v[i];
  return total;
}

static fo_status sum_partials(fo_optimizer *opt, double *out, fo_stream_t stream) {
  (void)stream;
  *out = sum_in_order(opt->run.partials, opt->run.num_blocks);
  return FO_SUCCESS;
}

static void run_blocks(const step_ctx *c) {
  const fo_optimizer *opt = c->opt;
  int64_t nb = opt->run.num_blocks;
#pragma omp parallel for schedule(dynamic, 1) num_threads(thread_count(opt)) if (run_parallel(opt))
  for (int64_t b = 0; b < nb; b++) step_block(c, b);
}

/* This rank's slot of the tensors' sums: each piece's blocks' partial
 * norms added in block order (a tensor's blocks are next to each other in
 * the plan), under the whole tensor's index; 0 for tensors without a
 * piece here. */
static void piece_sums(const fo_optimizer *opt) {
  const fo_run_plan *r = &opt->run;
  double *slot = r->tensor_sums + (size_t)r->slot * (size_t)r->all_tensors * 2;
  memset(slot, 0, (size_t)r->all_tensors * 2 * sizeof(double));
  for (int64_t b = 0; b < r->num_blocks;) {
    int64_t t = r->blocks[b].tensor;
    double w = 0.0, x = 0.0;
    for (; b < r->num_blocks && r->blocks[b].tensor == t; b++) {
      w += r->norm_partials[2 * b];
      x += r->norm_partials[2 * b + 1];
    }
    slot[2 * r->tensors[t].index] = w;
    slot[2 * r->tensors[t].index + 1] = x;
  }
}

/* Each piece's factor from its whole tensor's sums, the slots added in
 * rank order. */
static void tensor_factors(const fo_optimizer *opt) {
  const fo_run_plan *r = &opt->run;
  for (int64_t i = 0; i < r->num_tensors; i++) {
    const double *s = r->tensor_sums + 2 * r->tensors[i].index;
    double w = 0.0, x = 0.0;
    for (int k = 0; k < r->slots; k++, s += 2 * r->all_tensors) {
      w += s[0];
      x += s[1];
    }
    r->tensor_factors[i] = fo_trust_factor((int)opt->options.algorithm, w, x,
                                           &opt->state->groups[r->tensors[i].group]);
  }
}

static fo_status update(fo_optimizer *opt, const double *sums, int64_t n, fo_stream_t stream) {
  (void)stream;
  fo_prepare_args args;
  fo_prepare_args_fill(opt, &args);
  fo_prepare_step(&args, sums ? sum_in_order(sums, n) : 0.0, opt->state);
  if (opt->state->skip) return FO_SUCCESS;
  step_ctx c = {opt, opt->state->groups, opt->state->step, PASS_UPDATE};
  if (fo_algorithm_has_tensor_norms(opt->options.algorithm)) {
    c.pass = PASS_NORMS;
    run_blocks(&c);
    piece_sums(opt);
    return FO_SUCCESS; /* apply() follows */
  }
  run_blocks(&c);
  return FO_SUCCESS;
}

static fo_status apply(fo_optimizer *opt, fo_stream_t stream) {
  (void)stream;
  if (opt->state->skip) return FO_SUCCESS;
  tensor_factors(opt);
  step_ctx c = {opt, opt->state->groups, opt->state->step, PASS_APPLY};
  run_blocks(&c);
  return FO_SUCCESS;
}

static int skipped(const fo_optimizer *opt) {
  return opt->state->skip;
}

static fo_status sync_master(fo_optimizer *opt, fo_stream_t stream) {
  (void)stream;
  int64_t nb = opt->run.num_blocks;
#pragma omp parallel for schedule(dynamic, 1) num_threads(thread_count(opt)) if (run_parallel(opt))
  for (int64_t b = 0; b < nb; b++) {
    const fo_plan_block *blk = &opt->run.blocks[b];
    const fo_plan_tensor *t = &opt->run.tensors[blk->tensor];
    int64_t n = t->numel - blk->start < opt->run.chunk ? t->numel - blk->start : opt->run.chunk;
    widen((int)opt->options.param_dtype, t->param, blk->start, t->master + blk->start, (int)n);
  }
  return FO_SUCCESS;
}

static fo_status zero_grad(fo_optimizer *opt, fo_stream_t stream) {
  (void)stream;
  size_t gs = fo_dtype_size(opt->options.grad_dtype);
  if (opt->arena[FO_ROLE_GRAD]) {
    memset(opt->arena[FO_ROLE_GRAD], 0, (size_t)opt->total_elems * gs);
    return FO_SUCCESS;
  }
  for (int64_t i = 0; i < opt->num_tensors; i++)
    if (opt->tensors[i].numel > 0)
      memset(opt->tensors[i].grad, 0, (size_t)opt->tensors[i].numel * gs);
  return FO_SUCCESS;
}

/* ---------------------------------------------------------------- memory */

static fo_status host_alloc(const char *fn, int device, size_t bytes, void **out) {
  (void)device;
  size_t rounded = bytes ? (bytes + 255) & ~(size_t)255 : 256; /* never 0 */
  void *p = aligned_alloc(256, rounded);
  if (!p)
    return fo_fail(FO_ERR_OUT_OF_MEMORY, fn, "cannot allocate %zu bytes of host memory", bytes);
  memset(p, 0, rounded);
  *out = p;
  return FO_SUCCESS;
}

static void host_release(int device, void *p) {
  (void)device;
  free(p);
}

static fo_status host_copy(const char *fn, int device, void *dst, const void *src, size_t bytes,
                           fo_copy_dir dir) {
  (void)fn, (void)device, (void)dir;
  if (bytes) memcpy(dst, src, bytes);
  return FO_SUCCESS;
}

static fo_status host_convert(const char *fn, int device, const void *src, fo_dtype from, void *dst,
                              fo_dtype to, int64_t n, fo_stream_t stream) {
  (void)fn, (void)device, (void)stream;
  if (from == to) return host_copy(fn, device, dst, src, (size_t)n * fo_dtype_size(from), 0);
  return from == FO_DTYPE_F32 ? fo_convert_from_f32(to, (const float *)src, dst, n)
                              : fo_convert_to_f32(from, src, (float *)dst, n);
}

/* A plain loop over the bucket's blocks, through the same conversions as
 * convert (the CUDA kernel's block work is checked against them). */
static fo_status host_pack(const char *fn, int device, const fo_pack_block *blocks,
                           int64_t num_blocks, void *wire_buf, fo_dtype grad, fo_dtype wire,
                           int unpack, fo_stream_t stream) {
  size_t ws = fo_dtype_size(wire);
  for (int64_t b = 0; b < num_blocks; b++) {
    void *packed = (char *)wire_buf + (size_t)blocks[b].packed_at * ws;
    fo_status st =
        unpack ? host_convert(fn, device, packed, wire, blocks[b].grad, grad, blocks[b].n, stream)
               : host_convert(fn, device, blocks[b].grad, grad, packed, wire, blocks[b].n, stream);
    if (st != FO_SUCCESS) return st;
  }
  return FO_SUCCESS;
}

/* Nothing runs behind the caller's back: every call has finished its work
 * when it returns. */
static fo_status nothing_to_wait_for(const char *fn, int device) {
  (void)fn, (void)device;
  return FO_SUCCESS;
}

static fo_status check_stream(const char *fn, fo_stream_t stream, int device) {
  (void)device;
  if (stream)
    return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "stream must be NULL for the CPU executor");
  return FO_SUCCESS;
}

/* Host memory; with a CUDA driver, device memory is told apart and refused. */
static fo_status check_pointer(const char *fn, const char *what, const void *ptr, size_t bytes,
                               int device) {
  return fo_cuda_check_pointer(fn, what, ptr, bytes, 0, device);
}

/* The kernels read the host tables. */
static fo_status upload_plan(const char *fn, int device, fo_run_plan *plan) {
  (void)fn, (void)device, (void)plan;
  return FO_SUCCESS;
}

static fo_status read_state(const char *fn, const fo_optimizer *opt, fo_step_state *out) {
  (void)fn;
  *out = *opt->state;
  return FO_SUCCESS;
}

static fo_status write_state(const char *fn, fo_optimizer *opt, const fo_step_state *in) {
  (void)fn;
  *opt->state = *in;
  return FO_SUCCESS;
}

/* Work runs in call order: no events are needed to order it. */
static fo_status no_events(const char *fn, int device, void **events, int64_t n) {
  (void)fn, (void)device, (void)events, (void)n;
  return FO_SUCCESS;
}

static void no_events_destroy(int device, void **events, int64_t n) {
  (void)device, (void)events, (void)n;
}

static fo_status no_record(const char *fn, int device, void *event, fo_stream_t stream) {
  (void)fn, (void)device, (void)event, (void)stream;
  return FO_SUCCESS;
}

static fo_status no_wait(const char *fn, int device, fo_stream_t stream, void *event) {
  (void)fn, (void)device, (void)stream, (void)event;
  return FO_SUCCESS;
}

static uint64_t never_captured(int device, fo_stream_t stream) {
  (void)device, (void)stream;
  return 0;
}

static int same_stream(fo_stream_t a, fo_stream_t b) {
  return a == b;
}

static const fo_exec_ops cpu_ops = {
    .chunk = FO_CPU_CHUNK,
    .host_memory = 1,
    .kind = FO_EXEC_CPU,
    .alloc = host_alloc,
    .release = host_release,
    .copy = host_copy,
    .convert = host_convert,
    .pack = host_pack,
    .synchronize = nothing_to_wait_for,
    .check_stream = check_stream,
    .check_pointer = check_pointer,
    .upload_plan = upload_plan,
    .prepass = prepass,
    .sum_partials = sum_partials,
    .update = update,
    .apply = apply,
    .skipped = skipped,
    .zero_grad = zero_grad,
    .sync_master = sync_master,
    .read_state = read_state,
    .write_state = write_state,
    .events_create = no_events,
    .events_destroy = no_events_destroy,
    .record = no_record,
    .wait = no_wait,
    .capture_of = never_captured,
    .same_stream = same_stream,
};

const fo_exec_ops *fo_exec_cpu_ops(void) {
  return &cpu_ops;
}
