/*
 * block_work.cuh -- the work of ONE thread block of the step, sync-master and
 * zero-grad kernels, as plain functions of (launch arguments, block index,
 * thread index, thread count).
 *
 * Why a separate header: the __global__ kernels in step.cu are one-line
 * wrappers around these functions, and the same functions compile as host
 * C++ (g++), so the CPU test tier (tests/test_block_work_*.cpp) runs the exact
 * loop a kernel runs -- every block, every thread slot, the vector path, the
 * scalar path and the tails -- over host buffers and proves coverage and
 * results without a GPU (docs/design.md, "Testing the kernels on the
 * CPU").  Nothing here uses shared memory or warp intrinsics, so the
 * threads of a block are independent and may be run one after another.
 *
 * Shape of the work.  Block b owns elements [start, start + n) of tensor
 * blocks[b].tensor, n = min(chunk, numel - start).  fo_block_loop() hands
 * each thread its elements in groups:
 *   - vector path (the block's buffers are 16-byte aligned at its start):
 *     vectors of W elements, one access per array per vector: the step and
 *     sync-master use W = 4 (a float4 per fp32 array, 8 bytes per 16-bit
 *     array), the ops over gradients alone one 16-byte access.  A thread
 *     takes ILP vectors at a time, nthreads vectors apart, so that each
 *     access instruction of a warp covers contiguous memory in every array;
 *     the visitor loads all of them, then computes, then stores, so ILP
 *     independent loads per array are in flight per thread.
 *     The n % W elements left over go through the scalar path.
 *   - scalar path (misaligned buffers, or the vector tail): single elements,
 *     ILP_SCALAR at a time, nthreads apart.
 * The loop does no memory access itself: it calls a visitor with the block-
 * relative element offsets of one group.  The kernels pass the real
 * operation (fo_step_op, ...); the tests pass a recorder, or a spy that
 * records and forwards to the real operation.
 *
 * Every input is read once and every output written once: the step reads
 * the parameter (or the fp32 master when there is one), the gradient and the
 * state buffers the configuration uses, and writes the state, the master and
 * the rounded parameter.  All arithmetic is rules.h's, with the group's
 * scalars (from the device step state, step_state.h, or carried by value
 * in the launch), so the CUDA and CPU executors compute the same thing.
 */
#ifndef FO_BLOCK_WORK_CUH
#define FO_BLOCK_WORK_CUH

#include <stdint.h>
#include <string.h>

#include "launch.h"
#include "plan.h"
#include "rules.h"
#include "step_state.h"
#include "vec_io.cuh"

/* Wait until the kernel launched before this one on the stream has finished
 * and its writes are visible: a no-op unless this kernel was launched with
 * Programmatic Dependent Launch (grid.cuh, sm_90 and newer), and on the
 * host, where the CPU tier runs the kernels' block work. */
FO_BW_FN void fo_wait_for_prior_kernel() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  cudaGridDependencySynchronize();
#endif
}

/* ------------------------------------------------------------- the loop */

/* Hand thread tid of nthreads its elements of a block of n elements.
 * Visitor must have
 *   template <int N, int K> void operator()(const int64_t (&off)[K]);
 * which processes K groups of N consecutive elements starting at the
 * block-relative offsets off[k]; an offset of -1 marks an empty slot (the
 * thread's last round of a block).  N is W on the vector path and 1 on the
 * scalar path; K is ILP_VEC or ILP_SCALAR.  vec must only be true when
 * every buffer the visitor touches is 16-byte aligned at offset 0. */
template <int W, int ILP_VEC, int ILP_SCALAR, class Visitor>
FO_BW_FN void fo_block_loop(int64_t n, bool vec, int tid, int nthreads, Visitor &visit) {
  int64_t scalar_from = 0;
  if (vec) {
    const int64_t nvec = n / W;
    const int64_t stride = (int64_t)nthreads * ILP_VEC;
    for (int64_t base = tid; base < nvec; base += stride) {
      int64_t off[ILP_VEC];
      FO_BW_UNROLL
      for (int k = 0; k < ILP_VEC; k++) {
        const int64_t v = base + (int64_t)k * nthreads;
        off[k] = v < nvec ? v * W : -1;
      }
      visit.template operator()<W, ILP_VEC>(off);
    }
    scalar_from = nvec * W;
  }
  const int64_t stride = (int64_t)nthreads * ILP_SCALAR;
  for (int64_t base = scalar_from + tid; base < n; base += stride) {
    int64_t off[ILP_SCALAR];
    FO_BW_UNROLL
    for (int k = 0; k < ILP_SCALAR; k++) {
      const int64_t e = base + (int64_t)k * nthreads;
      off[k] = e < n ? e : -1;
    }
    visit.template operator()<1, ILP_SCALAR>(off);
  }
}

/* Run one thread of one block: the single entry of every kernel's block
 * work.  Op is a visitor of fo_block_loop that also carries its shape
 * (static W, ILP_VEC, ILP_SCALAR) and the block's size n and path vec.  The
 * tests pass a spy with the same members that records each access and
 * forwards it to the real op, so what they check is this loop with the
 * kernel's own n and vec. */
template <class Op>
FO_BW_FN void fo_run_block(const Op &op, int tid, int nthreads) {
  fo_block_loop<Op::W, Op::ILP_VEC, Op::ILP_SCALAR>(op.n, op.vec, tid, nthreads, op);
}

/* The block's tensor and its element range; n <= 0 means nothing to do
 * (a plan never produces that; the guard makes a bad plan harmless). */
struct fo_block_range {
  fo_plan_tensor t;
  int64_t tensor; /* index into the tensor table */
  int64_t start;  /* first element of the block in its tensor */
  int64_t n;      /* elements in the block */
};

FO_BW_FN fo_block_range fo_block_range_at(const fo_plan_block &blk, const fo_plan_tensor *tensors,
                                          int64_t chunk) {
  fo_block_range r;
  r.tensor = blk.tensor;
  r.start = blk.start;
  r.t = tensors[blk.tensor];
  const int64_t left = r.t.numel - r.start;
  r.n = left < chunk ? left : chunk;
  return r;
}

FO_BW_FN fo_block_range fo_block_range_of(const fo_plan_block *blocks,
                                          const fo_plan_tensor *tensors, int64_t chunk, int64_t b) {
  return fo_block_range_at(blocks[b], tensors, chunk);
}

/* ------------------------------------------------------------ the step */

/* Vectors in flight per thread in the step of algorithm alg: 2 where the
 * update holds the most per element (Adam, AdamW, NAdam, RMSprop, LAMB: two
 * moments, or a moment and an average; at 4 vectors their kernels need
 * 113-117 registers, 2 blocks of 256 threads per SM), so that 3 or 4
 * blocks fit (fo_step_min_blocks, below) with the same bytes in
 * flight per SM; 4 for the others, which fit 3 blocks at 4 vectors.  More
 * resident blocks run more blocks' chains of plan look-ups at once, which
 * a list of small tensors waits on: on an H200, list d (4096 tensors of
 * 1..4096 elements) took about 5 us per wave of resident blocks whatever
 * the algorithm (SGD and Lion at 3 blocks per SM 0.91 of copy, AdamW at 2
 * 0.79; docs/performance.md, issue #15). */
constexpr int fo_step_ilp(int alg) {
  return alg == FO_RULE_ADAM || alg == FO_RULE_ADAMW || alg == FO_RULE_NADAM ||
                 alg == FO_RULE_RMSPROP || alg == FO_RULE_LAMB
             ? 2
             : 4;
}

/* The blocks of FO_CUDA_THREADS the step kernel of algorithm alg keeps
 * resident per SM at the least (its __launch_bounds__, step_kernel.cuh),
 * set with fo_step_ilp: the most at which every variant of its update fits
 * without spilling, by ptxas for sm_80 and sm_90.  4 (at most 64
 * registers) for Adam, AdamW, NAdam and LAMB at 2 vectors per thread
 * (57-64); 3 (at most 80) for RMSprop at 2 vectors (66-80; at 4 blocks it
 * spills) and for SGD, Lion, AdaGrad and LARS at 4 (64-80). */
constexpr int fo_step_min_blocks(int alg) {
  return alg == FO_RULE_ADAM || alg == FO_RULE_ADAMW || alg == FO_RULE_NADAM || alg == FO_RULE_LAMB
             ? 4
             : 3;
}

/* Vector width and ILP of the step, for every algorithm and (param, grad)
 * dtype pair: vectors of 4 elements, fo_step_ilp of them in flight per
 * thread (8 or 16 elements per round; the chunk is a multiple of W *
 * nthreads * ILP, so every round but a tensor's last block's is full).  W
 * is set by the fp32 arrays, which every
 * step has (master, moments, or the parameter): one float4 each, so a warp's
 * load of an fp32 array is 512 contiguous bytes.  A 16-bit array is then
 * one 8-byte access per vector (256 contiguous bytes per warp).  Vectors of
 * 8, one 16-byte access per 16-bit array, would read each fp32 array as two
 * float4 per thread at a 32-byte stride: every instruction half of each
 * sector it touches (issue #15; docs/performance.md). */
template <int ALG, int PT, int GT>
struct fo_step_shape {
  static constexpr int W = 4;
  static constexpr int ILP_VEC = fo_step_ilp(ALG);
  static constexpr int ILP_SCALAR = 4;
};

/* A launch that carries its step by value (known) and names the state:
 * block 0's thread 0 writes the step into the state, so the passes and
 * readers after this launch on the stream find it there.  No block of the
 * launch reads the state, so when it is written does not matter. */
FO_BW_FN void fo_publish_known_block(const fo_step_launch &a, int64_t b, int tid) {
  if (a.known && a.state && b == 0 && tid == 0) fo_known_publish(&a.k, a.state);
}

/* The update of one block, as a visitor of fo_block_loop.  ALG is the rule,
 * PT and GT the parameter and gradient dtypes; MASTER: fp32 master weights
 * are read and written and the parameter is only written; SR: the bf16
 * parameter (no master) is rounded stochastically.  PASS (launch.h): the
 * step of one pass, or LAMB's and LARS's norms pass (reads, LAMB's moments,
 * two sums of squares into *acc; no parameter is written) and apply pass
 * (the tensor's factor from the launch's tensor_factors).  Shape: W and the
 * ILPs, fo_step_shape's unless a harness times others (bench/step_variants.cu);
 * the updates do not depend on it (the norms pass's sums of squares do, in
 * their last bits: each thread adds other elements). */
template <int ALG, int PT, int GT, bool MASTER, bool SR, int PASS = FO_PASS_UPDATE,
          class Shape = fo_step_shape<ALG, PT, GT>>
struct fo_step_op {
  typedef typename fo_elem<PT>::type param_t;
  typedef typename fo_elem<GT>::type grad_t;
  typedef Shape shape;
  static constexpr int W = shape::W;
  static constexpr int ILP_VEC = shape::ILP_VEC;
  static constexpr int ILP_SCALAR = shape::ILP_SCALAR;
  static_assert(!SR || (PT == FO_RULE_BF16 && !MASTER),
                "stochastic rounding is for bf16 parameters without master");
  static_assert(!MASTER || PT != FO_RULE_F32, "fp32 parameters keep no master");
  static constexpr bool TWO_PASS = ALG == FO_RULE_LAMB || ALG == FO_RULE_LARS;
  static_assert(TWO_PASS == (PASS != FO_PASS_UPDATE), "LAMB and LARS run two passes, the rest one");
  static constexpr bool NORMS = PASS == FO_PASS_NORMS;
  /* LAMB's apply pass updates from the moments its norms pass stored: the
   * gradient is not read again (bench/model.c counts it once). */
  static constexpr bool READS_GRAD = !(ALG == FO_RULE_LAMB && PASS == FO_PASS_APPLY);

  /* The block's buffers, offset to its first element. */
  param_t *param;
  const grad_t *grad;
  float *master;
  float *m;    /* exp_avg / momentum buffer */
  float *v;    /* exp_avg_sq */
  float *vmax; /* max_exp_avg_sq */
  /* Which state this block touches: a buffer is used when the tensor has it
   * and the group's flags need it (a group without momentum or AMSGrad in
   * an optimizer that keeps the buffer for another group leaves it alone).
   * load_m is false on SGD's first step, which sets the buffer without
   * reading it. */
  bool use_m, load_m, use_v, use_vmax;
  bool store_m, store_v; /* the apply pass of LAMB reads the moments only */
  fo_rule_scalars s;
  float factor; /* the apply pass: the tensor's fo_trust_factor */
  double *acc;  /* the norms pass: this thread's sums of squares, [2] */
  uint64_t seed, step, tensor, start;
  int64_t n;
  bool vec;

  FO_BW_FN fo_step_op(const fo_step_launch &a, int64_t b, double *sums = nullptr) : acc(sums) {
    /* The plan's records are written once at create: look them up while
     * the prepare kernel may still run (a PDL launch), then wait for it.
     * The block record names the group, so the group's scalars below are
     * read while the tensor record is still on its way. */
    const fo_plan_block blk = a.blocks[b];
    const fo_block_range r = fo_block_range_at(blk, a.tensors, a.chunk);
    fo_wait_for_prior_kernel();
    /* The scalars, the step number and the skip decision: from the step
     * state the prepare kernel wrote (device memory, so a captured graph
     * replays correctly), or carried by value in a launch the host decided
     * (never a skipped step; a group past the carried ones is a broken
     * plan: nothing to do). */
    const fo_rule_scalars *group;
    if (a.known) {
      const bool carried = blk.group >= 0 && blk.group < a.k.num_groups;
      group = &a.k.groups[carried ? blk.group : 0];
      step = (uint64_t)a.k.step;
      n = carried ? r.n : 0;
    } else {
      const fo_step_state *st = a.state;
      group = &st->groups[blk.group];
      step = (uint64_t)st->step;
      n = st->skip ? 0 : r.n;
    }
    s = *group; /* one load path, from the launch's parameter or the state */
    tensor = (uint64_t)r.tensor;
    start = (uint64_t)r.start;
    seed = a.seed;
    param = r.t.param ? (param_t *)r.t.param + r.start : nullptr;
    grad = r.t.grad ? (const grad_t *)r.t.grad + r.start : nullptr;
    master = MASTER && r.t.master ? r.t.master + r.start : nullptr;
    m = r.t.exp_avg ? r.t.exp_avg + r.start : nullptr;
    v = r.t.exp_avg_sq ? r.t.exp_avg_sq + r.start : nullptr;
    vmax = r.t.max_exp_avg_sq ? r.t.max_exp_avg_sq + r.start : nullptr;
    /* which state this rule reads (load_*) and writes (use_*) */
    const bool momentum = (s.flags & FO_RULE_MOMENTUM) != 0;
    factor = PASS == FO_PASS_APPLY && a.tensor_factors ? a.tensor_factors[r.tensor] : 1.0f;
    switch (ALG) {
      case FO_RULE_SGD:
      case FO_RULE_LARS:
        use_m = m && momentum && PASS != FO_PASS_NORMS;
        load_m = use_m && !(s.flags & FO_RULE_FIRST_STEP);
        use_v = use_vmax = false;
        break;
      case FO_RULE_ADAGRAD: /* the sum, read on every step (it starts at
                               initial_accumulator_value) */
        use_m = load_m = use_vmax = false;
        use_v = v != nullptr;
        break;
      case FO_RULE_RMSPROP:
        use_m = load_m = m && momentum;
        use_v = v != nullptr;
        use_vmax = vmax && (s.flags & FO_RULE_CENTERED);
        break;
      case FO_RULE_LION:
        use_m = load_m = m != nullptr;
        use_v = use_vmax = false;
        break;
      default: /* Adam, AdamW, NAdam, LAMB */
        use_m = load_m = m != nullptr;
        use_v = v != nullptr;
        use_vmax =
            ALG != FO_RULE_NADAM && ALG != FO_RULE_LAMB && vmax && (s.flags & FO_RULE_AMSGRAD);
        break;
    }
    store_m = use_m && !(ALG == FO_RULE_LAMB && PASS == FO_PASS_APPLY);
    store_v = use_v && !(ALG == FO_RULE_LAMB && PASS == FO_PASS_APPLY);
    if (!use_m) m = nullptr;
    if (!use_v) v = nullptr;
    if (!use_vmax) vmax = nullptr;
    /* A block whose master (when MASTER) or parameter or gradient is missing
     * is a broken plan: do nothing rather than fault. */
    if (!param || !grad || (MASTER && !master)) n = 0;
    vec = r.t.vector_ok && aligned_at(0);
  }

  /* True when every buffer this block touches is aligned to one vector's
   * bytes (16 for fp32, 8 for 16-bit) at block-relative element off: the
   * condition of a vector access there (checked by the CPU tier at every
   * vector access it runs). */
  FO_BW_FN bool aligned_at(int64_t off) const {
    return fo_aligned_vec<W>(param + off) && fo_aligned_vec<W>(grad + off) &&
           (!master || fo_aligned_vec<W>(master + off)) && (!m || fo_aligned_vec<W>(m + off)) &&
           (!v || fo_aligned_vec<W>(v + off)) && (!vmax || fo_aligned_vec<W>(vmax + off));
  }

  template <int N, int K>
  FO_BW_FN void operator()(const int64_t (&off)[K]) const {
    /* Unused state stays 0 in registers: the rules never read it for this
     * configuration (rules.h: m, v, vmax may point at dummies). */
    float p[K][N], g[K][N], mm[K][N], vv[K][N], xx[K][N];
    FO_BW_UNROLL
    for (int k = 0; k < K; k++) {
      FO_BW_UNROLL
      for (int j = 0; j < N; j++) mm[k][j] = vv[k][j] = xx[k][j] = 0.0f;
    }
    /* 1. every load of the group, so they are all in flight at once */
    FO_BW_UNROLL
    for (int k = 0; k < K; k++) {
      if (off[k] < 0) continue;
      const int64_t e = off[k];
      if constexpr (MASTER)
        fo_ld_f32<N>(master + e, p[k]);
      else
        fo_ld_widen<PT, N>(param + e, p[k]);
      if constexpr (READS_GRAD) fo_ld_widen<GT, N>(grad + e, g[k]);
      if (load_m) fo_ld_f32<N>(m + e, mm[k]);
      if (use_v) fo_ld_f32<N>(v + e, vv[k]);
      if (use_vmax) fo_ld_f32<N>(vmax + e, xx[k]);
    }
    /* 2. the arithmetic, rules.h's */
    if constexpr (NORMS) {
      double ws = acc[0], xs = acc[1];
      FO_BW_UNROLL
      for (int k = 0; k < K; k++) {
        if (off[k] < 0) continue;
        FO_BW_UNROLL
        for (int j = 0; j < N; j++) {
          const float x = ALG == FO_RULE_LAMB
                              ? fo_lamb_moments(p[k][j], &mm[k][j], &vv[k][j], g[k][j], &s)
                              : fo_rule_grad(g[k][j], &s);
          ws += (double)p[k][j] * (double)p[k][j];
          xs += (double)x * (double)x;
        }
      }
      acc[0] = ws;
      acc[1] = xs;
    } else {
      FO_BW_UNROLL
      for (int k = 0; k < K; k++) {
        if (off[k] < 0) continue;
        FO_BW_UNROLL
        for (int j = 0; j < N; j++) {
          if constexpr (ALG == FO_RULE_LAMB)
            fo_update_lamb(&p[k][j], mm[k][j], vv[k][j], factor, &s);
          else if constexpr (ALG == FO_RULE_LARS)
            fo_update_lars(&p[k][j], &mm[k][j], g[k][j], factor, &s);
          else
            fo_update_element(ALG, &p[k][j], &mm[k][j], &vv[k][j], &xx[k][j], g[k][j], &s);
        }
      }
    }
    /* 3. every store */
    FO_BW_UNROLL
    for (int k = 0; k < K; k++) {
      if (off[k] < 0) continue;
      const int64_t e = off[k];
      if (store_m) fo_st_f32<N>(m + e, mm[k]);
      if (store_v) fo_st_f32<N>(v + e, vv[k]);
      if (use_vmax) fo_st_f32<N>(vmax + e, xx[k]);
      if constexpr (NORMS) continue; /* the parameters are the apply pass's */
      if constexpr (MASTER) fo_st_f32<N>(master + e, p[k]);
      if constexpr (SR) {
        uint16_t h[N];
        FO_BW_UNROLL
        for (int j = 0; j < N; j++)
          h[j] =
              fo_f32_to_bf16_sr(p[k][j], fo_sr_bits(seed, step, tensor, start + (uint64_t)(e + j)));
        fo_st_u16<N>(param + e, h);
      } else {
        fo_st_round<PT, N>(param + e, p[k]);
      }
    }
  }
};

/* The step's work for block b, thread tid of nthreads: what the kernel
 * runs, and what the CPU tier runs for every (b, tid). */
template <int ALG, int PT, int GT, bool MASTER, bool SR, int PASS = FO_PASS_UPDATE>
FO_BW_FN void fo_step_block(const fo_step_launch &a, int64_t b, int tid, int nthreads) {
  fo_run_block(fo_step_op<ALG, PT, GT, MASTER, SR, PASS>(a, b), tid, nthreads);
}

/* The norms pass of LAMB and LARS for block b, thread tid: this thread's
 * share of the two sums of squares, added to sums[0] and sums[1]. */
template <int ALG, int PT, int GT, bool MASTER, bool SR>
FO_BW_FN void fo_norms_block(const fo_step_launch &a, int64_t b, int tid, int nthreads,
                             double *sums) {
  fo_run_block(fo_step_op<ALG, PT, GT, MASTER, SR, FO_PASS_NORMS>(a, b, sums), tid, nthreads);
}

/* ------------------------------------------- LAMB's and LARS's pieces */

/* The first of n sorted keys (key_of(0 .. n-1)) that is >= key. */
template <class Key>
FO_BW_FN int64_t fo_lower_bound(int64_t n, int64_t key, Key key_of) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (key_of(mid) < key)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

/* The plan blocks [*lo, *hi) of the plan's piece of the optimizer's tensor
 * k (fo_plan_tensor.index; pieces are in index order and a piece's blocks
 * consecutive), found by binary searches; empty when the plan has no piece
 * of k.  norms.cu's per-tensor sums, one warp per tensor. */
FO_BW_FN void fo_piece_blocks(const fo_plan_block *blocks, const fo_plan_tensor *tensors,
                              int64_t num_blocks, int64_t num_tensors, int64_t k, int64_t *lo,
                              int64_t *hi) {
  *lo = *hi = 0;
  const int64_t i = fo_lower_bound(num_tensors, k, [&](int64_t j) { return tensors[j].index; });
  if (i >= num_tensors || tensors[i].index != k) return;
  *lo = fo_lower_bound(num_blocks, i, [&](int64_t b) { return (int64_t)blocks[b].tensor; });
  *hi = fo_lower_bound(num_blocks, i + 1, [&](int64_t b) { return (int64_t)blocks[b].tensor; });
}

/* --------------------------------------------------- sync-master, zero */

/* Plan arguments shared by the sync-master and zero-grad launches. */
struct fo_plan_args {
  const fo_plan_block *blocks;
  const fo_plan_tensor *tensors;
  int64_t num_blocks;
  int64_t chunk;
};

/* master = widen(param) for one block; PT is the parameter dtype.  W is one
 * float4 of the master, as in the step. */
template <int PT>
struct fo_sync_master_op {
  typedef typename fo_elem<PT>::type param_t;
  static constexpr int W = 4;
  static constexpr int ILP_VEC = 4;
  static constexpr int ILP_SCALAR = 4;

  const param_t *param;
  float *master;
  int64_t n;
  bool vec;

  FO_BW_FN fo_sync_master_op(const fo_plan_args &a, int64_t b) {
    const fo_block_range r = fo_block_range_of(a.blocks, a.tensors, a.chunk, b);
    param = r.t.param ? (const param_t *)r.t.param + r.start : nullptr;
    master = r.t.master ? r.t.master + r.start : nullptr;
    n = param && master ? r.n : 0;
    vec = r.t.vector_ok && aligned_at(0);
  }

  FO_BW_FN bool aligned_at(int64_t off) const {
    return fo_aligned_vec<W>(param + off) && fo_aligned_vec<W>(master + off);
  }

  template <int N, int K>
  FO_BW_FN void operator()(const int64_t (&off)[K]) const {
    float x[K][N];
    FO_BW_UNROLL
    for (int k = 0; k < K; k++)
      if (off[k] >= 0) fo_ld_widen<PT, N>(param + off[k], x[k]);
    FO_BW_UNROLL
    for (int k = 0; k < K; k++)
      if (off[k] >= 0) fo_st_f32<N>(master + off[k], x[k]);
  }
};

template <int PT>
FO_BW_FN void fo_sync_master_block(const fo_plan_args &a, int64_t b, int tid, int nthreads) {
  fo_run_block(fo_sync_master_op<PT>(a, b), tid, nthreads);
}

/* What the ops over one block's gradients alone share (zero, sum of
 * squares, unscale): the gradient pointer, the element count (0 when the
 * tensor has no gradient or run is false), the vector decision and the
 * loop shape.  GT is the gradient dtype. */
template <int GT>
struct fo_grad_block_op {
  typedef typename fo_elem<GT>::type grad_t;
  static constexpr int W = 16 / fo_elem_size<GT>::value;
  static constexpr int ILP_VEC = 2;
  static constexpr int ILP_SCALAR = 4;

  grad_t *grad;
  int64_t n;
  bool vec;

  FO_BW_FN fo_grad_block_op(const fo_plan_args &a, int64_t b, bool run) {
    const fo_block_range r = fo_block_range_of(a.blocks, a.tensors, a.chunk, b);
    grad = r.t.grad ? (grad_t *)r.t.grad + r.start : nullptr;
    n = grad && run ? r.n : 0;
    vec = r.t.vector_ok && aligned_at(0);
  }

  FO_BW_FN bool aligned_at(int64_t off) const { return fo_aligned16(grad + off); }
};

/* grad = 0 for one block.  Zero is all-zero bits in every dtype, so the
 * store needs no conversion. */
template <int GT>
struct fo_zero_grad_op : fo_grad_block_op<GT> {
  FO_BW_FN fo_zero_grad_op(const fo_plan_args &a, int64_t b) : fo_grad_block_op<GT>(a, b, true) {}

  template <int N, int K>
  FO_BW_FN void operator()(const int64_t (&off)[K]) const {
    float zero[N];
    FO_BW_UNROLL
    for (int j = 0; j < N; j++) zero[j] = 0.0f;
    FO_BW_UNROLL
    for (int k = 0; k < K; k++)
      if (off[k] >= 0) fo_st_round<GT, N>(this->grad + off[k], zero);
  }
};

template <int GT>
FO_BW_FN void fo_zero_grad_block(const fo_plan_args &a, int64_t b, int tid, int nthreads) {
  fo_run_block(fo_zero_grad_op<GT>(a, b), tid, nthreads);
}

/* ------------------------------------ the gradient pre-pass and unscale */

/* Sum of squares of one block's gradients, for the global norm and the
 * non-finite check (step_state.h).  Each square is formed in double, so a
 * finite gradient cannot overflow it.  sum is the calling thread's own
 * accumulator; GT is the gradient dtype. */
template <int GT>
struct fo_grad_sumsq_op : fo_grad_block_op<GT> {
  double *sum;

  FO_BW_FN fo_grad_sumsq_op(const fo_plan_args &a, int64_t b, double *acc)
      : fo_grad_block_op<GT>(a, b, true), sum(acc) {}

  template <int N, int K>
  FO_BW_FN void operator()(const int64_t (&off)[K]) const {
    float g[K][N];
    FO_BW_UNROLL
    for (int k = 0; k < K; k++)
      if (off[k] >= 0) fo_ld_widen<GT, N>(this->grad + off[k], g[k]);
    double s = *sum;
    FO_BW_UNROLL
    for (int k = 0; k < K; k++) {
      if (off[k] < 0) continue;
      FO_BW_UNROLL
      for (int j = 0; j < N; j++) s += (double)g[k][j] * (double)g[k][j];
    }
    *sum = s;
  }
};

/* Thread tid's share of block b's sum of squares. */
template <int GT>
FO_BW_FN double fo_grad_sumsq_block(const fo_plan_args &a, int64_t b, int tid, int nthreads) {
  double sum = 0.0;
  fo_run_block(fo_grad_sumsq_op<GT>(a, b, &sum), tid, nthreads);
  return sum;
}

/* g = g * grad_coef for one block, rounded to the gradient dtype: the
 * optional write-back of unscaled (clipped, averaged) gradients after a
 * step that was not skipped. */
template <int GT>
struct fo_unscale_op : fo_grad_block_op<GT> {
  float coef;

  FO_BW_FN fo_unscale_op(const fo_plan_args &a, const fo_step_state *st, int64_t b)
      : fo_grad_block_op<GT>(a, b, !st->skip), coef(st->grad_coef) {}

  template <int N, int K>
  FO_BW_FN void operator()(const int64_t (&off)[K]) const {
    float g[K][N];
    FO_BW_UNROLL
    for (int k = 0; k < K; k++)
      if (off[k] >= 0) fo_ld_widen<GT, N>(this->grad + off[k], g[k]);
    FO_BW_UNROLL
    for (int k = 0; k < K; k++) {
      if (off[k] < 0) continue;
      FO_BW_UNROLL
      for (int j = 0; j < N; j++) g[k][j] *= coef;
      fo_st_round<GT, N>(this->grad + off[k], g[k]);
    }
  }
};

template <int GT>
FO_BW_FN void fo_unscale_block(const fo_plan_args &a, const fo_step_state *st, int64_t b, int tid,
                               int nthreads) {
  fo_run_block(fo_unscale_op<GT>(a, st, b), tid, nthreads);
}

#endif /* FO_BLOCK_WORK_CUH */
