/*
 * run.c -- one row of the benchmark: (tensor list, algorithm, config).
 *
 *   1. input sets: each its own parameter and gradient slabs (tensors
 *      carved at 128-element boundaries, as a framework's caching
 *      allocator places them) and its own optimizer over them, external
 *      storage; enough sets that the bytes touched between two uses of one
 *      set are at least 4x the last-level cache, so no timed step finds its
 *      inputs in cache;
 *   2. the timing of the reference copy, the fused step, the graph-replayed
 *      step where asked and the naive step on the same buffers: after
 *      warm-up, a mark between any two consecutive steps, never waiting in
 *      between; each figure is the median of its intervals.  On the CPU
 *      the modes are interleaved round by round, so that the copy and the
 *      steps see the machine (a shared host whose bandwidth drifts) in the
 *      same moments; on CUDA each mode runs its steps back to back
 *      (time_row);
 *   3. the check: from the same initial values and the same new gradients
 *      before every step, a few fused steps and a few naive steps, compared
 *      per tensor on windows of the weights, of the bf16 parameters rounded
 *      from a master, and of every state buffer; in -clip rows, the
 *      pre-pass's gradient norm and coefficient as well (check_mode).  The
 *      eager steps are checked before any graph capture; where graphs were
 *      timed, replays of the captured step are checked the same way after
 *      the timing.
 */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "values.h"

/* Tensors start at multiples of this many elements in their slab: 256 bytes
 * of bf16, 512 of fp32 (PyTorch's allocator rounds to 512 bytes). */
#define ALIGN_ELEMS 128
/* Seeds of the inputs; set i uses SEED + i. */
#define PARAM_SEED 1000
#define GRAD_SEED 2000
/* Initial weights in [-0.05, 0.05) (GPT-2's init has std 0.02), gradients
 * in [-1, 1). */
#define PARAM_SCALE 0.05f
#define GRAD_SCALE 1.0f
/* The bytes touched between two uses of one input set, over the cache. */
#define ROTATION_CACHES 4
#define MAX_SETS 64
/* Elements compared by the check, over all tensors. */
#define CHECK_BUDGET (3 << 20)
/* The -clip rows' gradient norm against the host's (check_norm). */
#define NORM_TOLERANCE 1e-6

typedef struct bench_set {
  void *param_slab, *grad_slab;
  fo_optimizer *opt;
  naive_tensor *nt;
  int64_t naive_t; /* naive steps since the last reset */
  void *graph;
} bench_set;

typedef struct row {
  const bench_backend *b;
  const bench_list *l;
  fo_algorithm alg;
  const bench_config *c;
  fo_hparams h[2];
  int64_t *offsets; /* element offset of each tensor in the slabs */
  int64_t slab_elems;
  bench_set *sets;
  int nsets;
  int64_t turn; /* steps taken, for the rotation */
  bench_copy copy;
} row;

/* ------------------------------------------------------------ sets */

static int64_t align_up(int64_t x) { return (x + ALIGN_ELEMS - 1) / ALIGN_ELEMS * ALIGN_ELEMS; }

static void layout(row *r) {
  r->offsets = malloc((size_t)r->l->count * sizeof *r->offsets);
  if (!r->offsets) bench_die("out of host memory");
  int64_t at = 0;
  for (int64_t i = 0; i < r->l->count; i++) {
    r->offsets[i] = at;
    at = align_up(at + r->l->tensors[i].numel);
  }
  r->slab_elems = at;
}

/* Sets to rotate among: enough that ROTATION_CACHES caches' worth of bytes
 * pass between two uses of a set, as many as fit in the memory the
 * reference copy left. */
static int rotation_sets(const row *r, const bench_opts *o) {
  const int64_t footprint = r->slab_elems * bench_footprint_per_param(r->alg, r->c);
  int64_t n = o->sets;
  if (n <= 0) n = ((int64_t)r->b->cache_bytes * ROTATION_CACHES + footprint - 1) / footprint;
  if (n > MAX_SETS) n = MAX_SETS;
  const int64_t copy_bytes = 2 * r->copy.side * r->copy.sets;
  const int64_t fit = ((int64_t)(r->b->free_bytes / 10 * 9) - copy_bytes) / footprint;
  if (n > fit) n = fit;
  if (n < 1)
    bench_die("list %s (%s) needs %.1f GB per input set and the copy %.1f GB; %.1f GB are "
              "free", r->l->name, r->l->what, footprint / 1e9, copy_bytes / 1e9,
              r->b->free_bytes / 1e9);
  return (int)n;
}

static fo_options row_options(const row *r) {
  fo_options o;
  FO_CHECK(fo_options_default(&o));
  o.algorithm = r->alg;
  o.executor = r->b->executor;
  o.param_dtype = r->c->param;
  o.grad_dtype = r->c->grad;
  o.master_weights = r->c->master;
  o.num_threads = r->b->threads;
  if (r->c->clip) {
    /* the pre-pass and the coefficient as in training, the coefficient
     * exactly 1 (model.c): a threshold no gradient norm here reaches, a
     * loss scale of 1 that never grows within a run */
    o.max_grad_norm = FLT_MAX;
    o.loss_scaler.enabled = 1;
    o.loss_scaler.init_scale = 1.0f;
    o.loss_scaler.growth_interval = 1 << 30;
  }
  return o;
}

/* Check step k's gradient seed; k < 0: set 0's own (set_create). */
static uint64_t grad_seed(int k) {
  return k < 0 ? GRAD_SEED : GRAD_SEED + 7919u * (uint64_t)(k + 1);
}

static void fill_params(const row *r, bench_set *s, int index) {
  r->b->fill(s->param_slab, r->c->param, r->slab_elems, PARAM_SEED + (uint64_t)index,
             PARAM_SCALE);
}

/* A state buffer of tensor i, or NULL when the optimizer keeps none of
 * that role (FO_ERR_INVALID_STATE); any other failure is an error. */
static float *state_or_null(fo_optimizer *opt, int64_t i, fo_role role) {
  float *p = NULL;
  const fo_status st = fo_optimizer_state_ptr(opt, i, role, &p);
  if (st == FO_ERR_INVALID_STATE) return NULL;
  FO_CHECK(st);
  return p;
}

/* The naive step's view of the set: the optimizer's own state buffers,
 * whichever the algorithm keeps (naive.h says which role holds what). */
static void naive_table(const row *r, bench_set *s, const fo_tensor_desc *d) {
  const int64_t n = r->l->count;
  s->nt = calloc((size_t)n, sizeof *s->nt);
  if (!s->nt) bench_die("out of host memory");
  for (int64_t i = 0; i < n; i++) {
    naive_tensor *t = &s->nt[i];
    t->param = d[i].param;
    t->grad = d[i].grad;
    t->numel = d[i].numel;
    t->group = d[i].group;
    t->m = state_or_null(s->opt, i, FO_ROLE_EXP_AVG);
    t->v = state_or_null(s->opt, i, FO_ROLE_EXP_AVG_SQ);
    t->a = state_or_null(s->opt, i, FO_ROLE_MAX_EXP_AVG_SQ);
    if (r->c->master) FO_CHECK(fo_optimizer_state_ptr(s->opt, i, FO_ROLE_MASTER, &t->master));
  }
}

static void set_create(const row *r, bench_set *s, int index) {
  const bench_backend *b = r->b;
  const size_t ps = fo_dtype_size(r->c->param), gs = fo_dtype_size(r->c->grad);
  memset(s, 0, sizeof *s);
  s->param_slab = b->alloc((size_t)r->slab_elems * ps);
  s->grad_slab = b->alloc((size_t)r->slab_elems * gs);
  fill_params(r, s, index);
  b->fill(s->grad_slab, r->c->grad, r->slab_elems, GRAD_SEED + (uint64_t)index, GRAD_SCALE);
  b->sync(); /* create reads the parameters into the master weights */

  const int64_t n = r->l->count;
  fo_tensor_desc *d = calloc((size_t)n, sizeof *d);
  if (!d) bench_die("out of host memory");
  for (int64_t i = 0; i < n; i++) {
    d[i].numel = r->l->tensors[i].numel;
    d[i].group = r->l->tensors[i].group;
    d[i].param = (char *)s->param_slab + (size_t)r->offsets[i] * ps;
    d[i].grad = (char *)s->grad_slab + (size_t)r->offsets[i] * gs;
  }
  const fo_options o = row_options(r);
  FO_CHECK(fo_optimizer_create(&s->opt, &o, r->h, r->l->num_groups, d, n));
  naive_table(r, s, d);
  free(d);
}

static void set_destroy(const row *r, bench_set *s) {
  if (s->graph) r->b->graph_destroy(s->graph);
  FO_CHECK(fo_optimizer_destroy(s->opt));
  r->b->release(s->param_slab);
  r->b->release(s->grad_slab);
  free(s->nt);
  memset(s, 0, sizeof *s);
}

/* Back to the state right after create: initial weights, zero state
 * buffers, step 0 (NAdam's mu_product back to 1).  Gradients are never
 * written by either step; the check refills them (fill_grads). */
static void set_reset(const row *r, bench_set *s, int index) {
  const bench_backend *b = r->b;
  b->sync();
  fill_params(r, s, index);
  for (int64_t i = 0; i < r->l->count; i++) {
    const naive_tensor *t = &s->nt[i];
    const size_t bytes = (size_t)t->numel * sizeof(float);
    if (t->m) b->zero(t->m, bytes);
    if (t->v) b->zero(t->v, bytes);
    if (t->a) b->zero(t->a, bytes);
  }
  if (r->c->master) FO_CHECK(fo_optimizer_sync_master(s->opt, b->stream));
  b->sync();
  FO_CHECK(fo_optimizer_set_step(s->opt, 0));
  s->naive_t = 0;
}

/* ------------------------------------------------------------ steps */

static bench_set *next_set(row *r) { return &r->sets[r->turn++ % r->nsets]; }

static void fused_step(row *r, bench_set *s) {
  FO_CHECK(fo_optimizer_step(s->opt, r->b->stream));
}

/* The naive step computes its scalars on the host every step, as an eager
 * framework does. */
static void naive_step(row *r, bench_set *s) {
  naive_scalars sc[2];
  s->naive_t++;
  for (int g = 0; g < r->l->num_groups; g++)
    bench_naive_scalars(r->alg, &r->h[g], s->naive_t, &sc[g]);
  naive_step_args a = {(int)r->alg, (int)r->c->param, (int)r->c->grad, r->c->master, sc};
  r->b->naive_step(s->nt, r->l->count, &a);
}

/* What the timing loop runs; the column each fills. */
enum { M_COPY, M_FUSED, M_GRAPH, M_NAIVE, M_COUNT };

static void run_mode(row *r, int mode) {
  switch (mode) {
    case M_COPY: bench_copy_next(r->b, &r->copy); break;
    case M_FUSED: fused_step(r, next_set(r)); break;
    case M_GRAPH: r->b->graph_launch(next_set(r)->graph); break;
    default: naive_step(r, next_set(r)); break;
  }
}

/* Capture one step of every set; 0 when a capture failed (the backend
 * said why). */
static int capture_graphs(row *r) {
  int ok = 1;
  for (int i = 0; i < r->nsets; i++) {
    r->sets[i].graph = r->b->graph_capture(r->sets[i].opt);
    ok = ok && r->sets[i].graph;
  }
  return ok;
}

/* The modes of the row, in the order one round runs them.  The graphs are
 * captured here only when the modes interleave; in blocks, just before the
 * graph block (time_row), so that the eager steps are timed first: a
 * captured optimizer computes every later step's scalars on the device
 * (docs/api.md), and the eager rows must time the eager step a training
 * loop gets. */
static int row_modes(row *r, const bench_opts *o, int *modes) {
  int n = 0;
  modes[n++] = M_COPY;
  modes[n++] = M_FUSED;
  if (o->graph && r->b->graph_capture && (!r->b->interleave || capture_graphs(r)))
    modes[n++] = M_GRAPH;
  if (o->naive) modes[n++] = M_NAIVE;
  return n;
}

/* Timed marks around `rounds` rounds of the nm modes; us gets rounds * nm
 * intervals, round-major. */
static void timed_rounds(row *r, const int *modes, int nm, int rounds, double *us) {
  const bench_backend *b = r->b;
  b->sync();
  b->timer_begin(rounds * nm + 1);
  b->timer_mark(0);
  for (int i = 0, k = 0; i < rounds; i++)
    for (int m = 0; m < nm; m++) {
      run_mode(r, modes[m]);
      b->timer_mark(++k);
    }
  b->timer_read(us, rounds * nm);
}

/* Warm-up, then the timed steps; med[mode] = median microseconds (0 for
 * modes not run).  Interleaved (the CPU): rounds of every mode, so that
 * the copy and the steps see the machine in the same moments.  In blocks
 * (CUDA, a machine of our own): each mode's steps back to back, so the
 * device queue stays full as in a training loop and no step pays for the
 * one before it leaving the device idle. */
static void time_row(row *r, const bench_opts *o, double med[M_COUNT]) {
  int modes[M_COUNT];
  const int nm = row_modes(r, o, modes);
  double *us = malloc((size_t)o->reps * nm * sizeof *us), *one = malloc((size_t)o->reps * sizeof *one);
  if (!us || !one) bench_die("out of host memory");
  for (int m = 0; m < M_COUNT; m++) med[m] = 0.0;
  if (r->b->interleave) {
    for (int i = 0; i < o->warmup; i++)
      for (int m = 0; m < nm; m++) run_mode(r, modes[m]);
    timed_rounds(r, modes, nm, o->reps, us);
    for (int m = 0; m < nm; m++) {
      for (int i = 0; i < o->reps; i++) one[i] = us[i * nm + m];
      med[modes[m]] = bench_median(one, o->reps);
    }
  } else {
    for (int m = 0; m < nm; m++) {
      if (modes[m] == M_GRAPH && !capture_graphs(r)) continue; /* no graph column */
      for (int i = 0; i < o->warmup; i++) run_mode(r, modes[m]);
      timed_rounds(r, &modes[m], 1, o->reps, us);
      med[modes[m]] = bench_median(us, o->reps);
    }
  }
  free(one);
  free(us);
}

/* ------------------------------------------------------------ check */

/* Windows of the check: the head, the middle and the tail of every tensor,
 * each up to h elements (whole tensors when they are small). */
typedef struct window {
  int64_t tensor, start, count;
} window;

static int64_t windows_of(const bench_list *l, window *w) {
  int64_t h = CHECK_BUDGET / (3 * l->count), n = 0;
  if (h < 1) h = 1;
  for (int64_t i = 0; i < l->count; i++) {
    const int64_t numel = l->tensors[i].numel;
    if (numel <= 3 * h) {
      w[n++] = (window){i, 0, numel};
      continue;
    }
    w[n++] = (window){i, 0, h};
    w[n++] = (window){i, numel / 2 - h / 2, h};
    w[n++] = (window){i, numel - h, h};
  }
  return n;
}

/* What the check compares on every window: the weights the update acts
 * on (the master when there is one); in rows with a master, the bf16
 * parameters rounded from it as well; and each state buffer the algorithm
 * keeps (naive.h says which role holds what). */
enum { Q_WEIGHT, Q_PARAM, Q_M, Q_V, Q_A, Q_COUNT };
static const char *const q_name[Q_COUNT] = {"weights", "bf16 parameters", "state m", "state v",
                                            "state a"};

/* Buffer q of tensor t and its dtype; NULL when the row keeps none. */
static const void *buffer_of(const row *r, const naive_tensor *t, int q, fo_dtype *dt) {
  *dt = FO_DTYPE_F32;
  switch (q) {
    case Q_WEIGHT:
      if (r->c->master) return t->master;
      *dt = r->c->param;
      return t->param;
    case Q_PARAM: *dt = r->c->param; return r->c->master ? t->param : NULL;
    case Q_M: return t->m;
    case Q_V: return t->v;
    default: return t->a;
  }
}

/* Every buffer the check compares, widened to fp32, window after window:
 * buffer q's n values at out + q * n (zeros where the row keeps none). */
static void sample(const row *r, const bench_set *s, const window *w, int64_t nw, int64_t n,
                   float *out) {
  for (int q = 0; q < Q_COUNT; q++) {
    float *o = out + q * n;
    for (int64_t k = 0; k < nw; k++) {
      fo_dtype dt;
      const char *src = buffer_of(r, &s->nt[w[k].tensor], q, &dt);
      const size_t es = fo_dtype_size(dt);
      if (src) {
        void *tmp = malloc((size_t)w[k].count * es);
        if (!tmp) bench_die("out of host memory");
        r->b->download(tmp, src + (size_t)w[k].start * es, (size_t)w[k].count * es);
        FO_CHECK(fo_convert_to_f32(dt, tmp, o, w[k].count));
        free(tmp);
      } else {
        memset(o, 0, (size_t)w[k].count * sizeof *o);
      }
      o += w[k].count;
    }
  }
}

/* Tolerances of the relative error, the largest over tensors and buffers.
 * fp32 weights and state differ only by rounding order (fma contraction;
 * 2.1e-6 at most in one tensor, LAMB over 2 steps of new gradients, CPU;
 * 1e-5 still catches NAdam with mu_t for mu_{t+1}, 2.3e-5).  bf16 weights
 * without a master round after every step, and the naive step also rounds
 * between its operations (AdamW's decay before its update, NAdam between
 * its two addcdiv passes), so one-ulp differences in a few elements are
 * expected, and weigh most in small tensors: up to 3.7e-2 (AdamW, list d),
 * NAdam 0.22 (list d) and 0.11 (a 768-element tensor of list a).  A tensor
 * left unstepped is an error of 1, or infinite (docs/performance.md). */
static double check_tolerance(fo_algorithm alg, const bench_config *c) {
  if (c->master || c->param == FO_DTYPE_F32) return 1e-5;
  return alg == FO_ALG_NADAM ? 0.5 : 0.15;
}

/* The relative error of buffer q in every tensor that has it,
 * ||fused - naive|| / ||naive - initial|| over its windows (relative to what
 * the steps changed: the values themselves would hide it; a tensor whose
 * buffer the naive run left as it was fails), and the largest; *worst gets
 * its tensor. */
static double max_rel_error(const row *r, const window *w, int64_t nw, const float *p0,
                            const float *pf, const float *pn, int q, int64_t *worst) {
  double max = 0.0, num = 0.0, den = 0.0;
  for (int64_t k = 0, at = 0; k < nw; k++) {
    fo_dtype dt;
    const int has = buffer_of(r, &r->sets[0].nt[w[k].tensor], q, &dt) != NULL;
    for (int64_t i = at; has && i < at + w[k].count; i++) {
      const double e = (double)pf[i] - pn[i], d = (double)pn[i] - p0[i];
      num += e * e;
      den += d * d;
    }
    at += w[k].count;
    if (!has || (k + 1 < nw && w[k + 1].tensor == w[k].tensor)) continue;
    /* inf or NaN when den is 0; a NaN becomes the maximum */
    const double err = sqrt(num) / sqrt(den);
    if (!(err <= max)) {
      max = err;
      *worst = w[k].tensor;
    }
    num = den = 0.0;
  }
  return max;
}

/* Elements whose bf16 parameter (pf, pn) differs, bit for bit, between the
 * runs where their masters (mf, mn) are bitwise equal.  Where the masters
 * differ by their rounding order (LAMB's norms: 7 of 2.9M elements on list
 * d), the parameters rounded from them may too. */
static int64_t bits_differ(const float *mf, const float *mn, const float *pf, const float *pn,
                           int64_t n) {
  int64_t d = 0;
  for (int64_t i = 0; i < n; i++)
    d += !memcmp(&mf[i], &mn[i], sizeof *mf) && memcmp(&pf[i], &pn[i], sizeof *pf);
  return d;
}

/* The gradients of check step k, set 0's own seed for k < 0: every check
 * step gets new ones, the same in the fused and the naive run (a constant
 * gradient makes Adam's update independent of its betas and moments, and
 * Lion's of its momentum). */
static void fill_grads(const row *r, bench_set *s, int k) {
  r->b->sync();
  r->b->fill(s->grad_slab, r->c->grad, r->slab_elems, grad_seed(k), GRAD_SCALE);
  r->b->sync();
}

/* The -clip rows: the pre-pass must have run over the last step's
 * gradients, and applied a coefficient of 1 (row_options).  Its norm,
 * accumulated in double on the device and rounded to fp32 once, against
 * the host's over the same values. */
static int check_norm(const row *r, int k) {
  fo_step_info info;
  FO_CHECK(fo_optimizer_get_info(r->sets[0].opt, &info));
  const uint64_t seed = grad_seed(k);
  const int bf16 = r->c->grad == FO_DTYPE_BF16;
  double ss = 0.0;
  for (int64_t i = 0; i < r->l->count; i++) {
    const int64_t base = r->offsets[i], numel = r->l->tensors[i].numel;
#pragma omp parallel for reduction(+ : ss) schedule(static)
    for (int64_t j = 0; j < numel; j++) {
      float g = bv_value(seed, (uint64_t)(base + j), GRAD_SCALE);
      if (bf16) g = bv_bf16_to_f32(bv_f32_to_bf16(g));
      ss += (double)g * g;
    }
  }
  const double rel = fabs((double)info.grad_norm - sqrt(ss)) / sqrt(ss);
  if (info.grad_coef == 1.0f && rel <= NORM_TOLERANCE) return 1; /* false for NaN */
  printf(
      "# check FAILED (%s %s %s): the pre-pass's gradient norm %.9g, the host's %.9g "
      "(relative difference %.1e), coefficient %.9g (want 1)\n",
      r->l->name, bench_alg_name(r->alg), r->c->name, info.grad_norm, sqrt(ss), rel,
      info.grad_coef);
  return 0;
}

/* What the check keeps from before the timing to after it: the windows
 * and three snapshots of every compared value, nq values each: before the
 * steps, after the naive steps, after the steps being checked. */
typedef struct check_run {
  window *w;
  int64_t nw, n, nq;
  float *p;
} check_run;

typedef void (*step_fn)(row *r, bench_set *s);

static void graph_step(row *r, bench_set *s) {
  r->b->graph_launch(s->graph);
}

/* The windows, the initial values and the naive steps' results. */
static void check_begin(row *r, const bench_opts *o, check_run *c) {
  const bench_list *l = r->l;
  c->w = malloc((size_t)l->count * 3 * sizeof *c->w);
  if (!c->w) bench_die("out of host memory");
  c->nw = windows_of(l, c->w);
  c->n = 0;
  for (int64_t k = 0; k < c->nw; k++) c->n += c->w[k].count;
  c->nq = Q_COUNT * c->n;
  c->p = malloc((size_t)c->nq * 3 * sizeof *c->p);
  if (!c->p) bench_die("out of host memory");
  bench_set *s = &r->sets[0];
  set_reset(r, s, 0);
  sample(r, s, c->w, c->nw, c->n, c->p);
  for (int k = 0; k < o->check_steps; k++) {
    fill_grads(r, s, k);
    naive_step(r, s);
  }
  sample(r, s, c->w, c->nw, c->n, c->p + c->nq);
}

static void check_end(check_run *c) {
  free(c->p);
  free(c->w);
}

/* The steps of one timed mode (`step`: the eager step, or a replay of set
 * 0's captured graph) from the same initial values and gradients as the
 * naive run, compared with it; the outcome is added to out's check (the
 * largest error; ok only if every mode checked is). */
static void check_mode(row *r, const bench_opts *o, check_run *c, step_fn step, const char *mode,
                       bench_result *out) {
  const bench_list *l = r->l;
  const int64_t n = c->n, nq = c->nq;
  bench_set *s = &r->sets[0];
  set_reset(r, s, 0);
  for (int k = 0; k < o->check_steps; k++) {
    fill_grads(r, s, k);
    step(r, s);
  }
  r->b->sync();
  float *stepped = c->p + 2 * nq;
  sample(r, s, c->w, c->nw, n, stepped);
  int ok = !r->c->clip || check_norm(r, o->check_steps - 1);
  fill_grads(r, s, -1); /* the timed steps' gradients again */

  out->check_tol = check_tolerance(r->alg, r->c);
  for (int q = 0; q < Q_COUNT; q++) {
    const float *p0 = c->p + q * n, *pn = p0 + nq, *pf = pn + nq;
    if (q == Q_PARAM) { /* rounded from masters that agree: bit for bit */
      const int64_t d = r->c->master ? bits_differ(stepped, c->p + nq, pf, pn, n) : 0;
      if (d)
        printf("# check FAILED (%s %s %s, %s): %lld of %lld sampled bf16 parameters differ\n",
               l->name, bench_alg_name(r->alg), r->c->name, mode, (long long)d, (long long)n);
      ok = ok && !d;
      continue;
    }
    int64_t worst = 0;
    const double e = max_rel_error(r, c->w, c->nw, p0, pf, pn, q, &worst);
    if (!(e <= out->check_tol))
      printf("# check FAILED (%s %s %s, %s): %s of tensor %lld, relative error %.2e\n", l->name,
             bench_alg_name(r->alg), r->c->name, mode, q_name[q], (long long)worst, e);
    if (!(e <= out->check_err)) out->check_err = e; /* NaN too */
  }
  /* false for NaN */
  out->check_ok = out->check_ok && ok && out->check_err <= out->check_tol;
}

/* ------------------------------------------------------------ the row */

void bench_run_row(const bench_backend *b, const bench_list *l, fo_algorithm alg,
                   const bench_config *c, const bench_opts *o, bench_result *out) {
  row r;
  memset(&r, 0, sizeof r);
  memset(out, 0, sizeof *out);
  r.b = b;
  r.l = l;
  r.alg = alg;
  r.c = c;
  for (int g = 0; g < 2; g++) bench_hparams(alg, g, &r.h[g]);
  layout(&r);
  out->list = l;
  out->alg = alg;
  out->config = c;
  out->bytes = bench_bytes_per_param(alg, c) * l->params;

  bench_copy_init(b, out->bytes, &r.copy);
  out->copy_bytes = 2 * r.copy.side;
  r.nsets = rotation_sets(&r, o);
  out->sets = r.nsets;
  r.sets = calloc((size_t)r.nsets, sizeof *r.sets);
  if (!r.sets) bench_die("out of host memory");
  for (int i = 0; i < r.nsets; i++) set_create(&r, &r.sets[i], i);

  /* the check of the eager steps first: they are the ones the fused
   * column times (after a capture, an optimizer's steps take the prepare
   * kernel); the graph's replays after the timing, which captured it */
  check_run cr;
  check_begin(&r, o, &cr);
  out->check_ok = 1;
  check_mode(&r, o, &cr, fused_step, "eager", out);
  double med[M_COUNT];
  time_row(&r, o, med);
  if (r.sets[0].graph) check_mode(&r, o, &cr, graph_step, "graph", out);
  check_end(&cr);
  out->copy_us = med[M_COPY];
  out->fused_us = med[M_FUSED];
  out->graph_us = med[M_GRAPH];
  out->naive_us = med[M_NAIVE];

  for (int i = 0; i < r.nsets; i++) set_destroy(&r, &r.sets[i]);
  free(r.sets);
  free(r.offsets);
  bench_copy_free(b, &r.copy);
}
