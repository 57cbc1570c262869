/*
 * test_block_work.cpp -- the kernels' own index arithmetic and arithmetic,
 * run on the CPU (DESIGN.md, "The kernels' own index arithmetic on the
 * CPU").
 *
 * kernels/block_work.cuh holds the whole work of one thread block of the
 * step, sync-master and zero-grad kernels; the __global__ kernels only call
 * it.  Here g++ compiles the same header and the tests run it for every
 * block of a plan and every thread slot (FO_CUDA_THREADS of them), over host
 * buffers with poisoned guard zones:
 *
 *   (a) coverage: a spy wraps the kernel's own visitor and records, for
 *       every access the loop makes, the (block, thread) and the elements;
 *       each element must be touched exactly once, inside its block, and
 *       every vector access must be at 16-byte aligned addresses of every
 *       buffer it touches (on the host a misaligned vector access would go
 *       unnoticed; on the GPU it faults).  Guard zones must stay poisoned.
 *   (b) results: for every algorithm x parameter dtype x gradient dtype x
 *       master x stochastic-rounding combination, the block work gives the
 *       same bits as the CPU executor through the public API
 *       (fo_optimizer_step with FO_EXEC_CPU) on identical inputs, step after
 *       step, for parameters, master weights and every moment, with the
 *       scalars taken from the step state (as the library launches) or by
 *       value; a step the state marks as skipped changes nothing.
 *
 * Bit-identity is expected, not a tolerance: both executors call the same
 * rules.h functions with the same scalars (the CPU executor's step state),
 * in fp32, and
 * on x86-64 g++ and gcc emit no fused multiply-add at the default -march
 * (nothing to contract), so each operation rounds the same way.  A build
 * for a target where the compiler contracts a*b+c into an FMA by default
 * (aarch64 in GNU C++ mode) could differ in the last bit; there this test
 * would say so rather than hide it.
 *
 * Layouts: each tensor gets one of four layouts of its buffers: all 16-byte
 * aligned (the vector path), aligned but vector_ok cleared (the scalar path
 * by the host's choice), parameter and gradient misaligned by a few
 * elements (offset views; the scalar path), and state buffers misaligned
 * while vector_ok says yes (the block work must notice and go scalar).
 */
#include <criterion/criterion.h>

#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "block_work.cuh"
extern "C" {
#include "internal.h"
}
#include "testutil.h"

namespace {

const int NT = FO_CUDA_THREADS;

/* ------------------------------------------------------------ coverage */

/* Who touched what, for one run over a plan. */
struct Coverage {
  std::vector<std::vector<uint8_t>> hits;         /* per tensor, per element */
  std::vector<std::vector<int64_t>> owner_block;  /* the block that touched it */
  std::vector<std::vector<int16_t>> owner_thread; /* and the thread */
  std::vector<int64_t> vector_visits;             /* per tensor */
  std::vector<int64_t> scalar_visits;
  /* The test's own model of the buffers a kernel touches in each tensor
   * (base pointer, element size): every vector access must be 16-byte
   * aligned in each of them.  Independent of the op's aligned_at(), which
   * is checked too. */
  struct Touch {
    const void *base;
    size_t elem;
  };
  std::vector<std::vector<Touch>> touches;

  explicit Coverage(const std::vector<int64_t> &numel) {
    for (int64_t n : numel) {
      hits.emplace_back((size_t)n, (uint8_t)0);
      owner_block.emplace_back((size_t)n, (int64_t)-1);
      owner_thread.emplace_back((size_t)n, (int16_t)-1);
    }
    vector_visits.assign(numel.size(), 0);
    scalar_visits.assign(numel.size(), 0);
    touches.resize(numel.size());
  }

  void touch(size_t tensor, const void *base, size_t elem) {
    if (base) touches[tensor].push_back(Touch{base, elem});
  }

  bool model_aligned(size_t tensor, int64_t elem) const {
    for (const Touch &t : touches[tensor])
      if (((uintptr_t)t.base + (uintptr_t)elem * t.elem) & 15u) return false;
    return true;
  }

  /* Every element of every tensor touched exactly once. */
  void check_exactly_once(const char *ctx) const {
    for (size_t i = 0; i < hits.size(); i++)
      for (size_t e = 0; e < hits[i].size(); e++)
        if (hits[i][e] != 1)
          cr_assert_fail("%s: element %zu of tensor %zu (numel %zu) touched %d times", ctx, e,
                         i, hits[i].size(), (int)hits[i][e]);
  }
};

/* Wraps the kernel's visitor Op: the same shape, n and vec, so fo_run_block
 * runs the kernel's loop; records every access, checks it, forwards it. */
template <class Op>
struct Spy {
  static constexpr int W = Op::W;
  static constexpr int ILP_VEC = Op::ILP_VEC;
  static constexpr int ILP_SCALAR = Op::ILP_SCALAR;
  const Op &op;
  int64_t n;
  bool vec;
  Coverage *cov;
  int64_t block, tensor, start;
  int tid;
  const char *ctx;

  Spy(const Op &o, Coverage *c, const fo_block_range &r, int64_t b, int t, const char *x)
      : op(o), n(o.n), vec(o.vec), cov(c), block(b), tensor(r.tensor), start(r.start),
        tid(t), ctx(x) {}

  template <int N, int K>
  void operator()(const int64_t (&off)[K]) const {
    for (int k = 0; k < K; k++) {
      const int64_t o = off[k];
      if (o == -1) continue;
      if (o < 0 || o + N > n)
        cr_assert_fail("%s: block %" PRId64 " thread %d: access [%" PRId64 ", %" PRId64
                       ") outside the block's %" PRId64 " elements",
                       ctx, block, tid, o, o + N, n);
      if (N > 1) {
        if (N != W || !vec || o % W != 0)
          cr_assert_fail("%s: block %" PRId64 " thread %d: vector access of %d at %" PRId64
                         " (W %d, vec %d)",
                         ctx, block, tid, N, o, W, (int)vec);
        if (!op.aligned_at(o) || !cov->model_aligned((size_t)tensor, start + o))
          cr_assert_fail("%s: block %" PRId64 " thread %d: vector access at %" PRId64
                         " is not 16-byte aligned in every buffer it touches",
                         ctx, block, tid, o);
        cov->vector_visits[(size_t)tensor]++;
      } else {
        cov->scalar_visits[(size_t)tensor]++;
      }
      for (int j = 0; j < N; j++) {
        const size_t e = (size_t)(start + o + j);
        uint8_t &h = cov->hits[(size_t)tensor][e];
        if (h != 0)
          cr_assert_fail("%s: element %zu of tensor %" PRId64 " touched again by block %" PRId64
                         " thread %d (first by block %" PRId64 " thread %d)",
                         ctx, e, tensor, block, tid, cov->owner_block[(size_t)tensor][e],
                         (int)cov->owner_thread[(size_t)tensor][e]);
        h = 1;
        cov->owner_block[(size_t)tensor][e] = block;
        cov->owner_thread[(size_t)tensor][e] = (int16_t)tid;
      }
    }
    op.template operator()<N, K>(off);
  }
};

/* Run Op over every block and thread of a plan, through the spy. */
template <class Op, class Args>
void run_spied(const Args &a, const fo_plan_block *blocks, const fo_plan_tensor *tensors,
               int64_t num_blocks, int64_t chunk, Coverage *cov, const char *ctx) {
  for (int64_t b = 0; b < num_blocks; b++) {
    const fo_block_range r = fo_block_range_of(blocks, tensors, chunk, b);
    for (int tid = 0; tid < NT; tid++) {
      const Op op(a, b); /* as each GPU thread constructs its own */
      fo_run_block(Spy<Op>(op, cov, r, b, tid, ctx), tid, NT);
    }
  }
}

/* -------------------------------------------------------------- buffers */

/* One guarded host buffer (testutil's: poisoned guard zones both sides). */
struct Buf {
  tu_buffer tb;
  void *data = nullptr;
  size_t bytes = 0;
  Buf() { memset(&tb, 0, sizeof tb); }
  Buf(const Buf &) = delete;
  Buf &operator=(const Buf &) = delete;
  ~Buf() {
    if (tb.block) tu_buffer_free(&tb);
  }
  void alloc(size_t nbytes, size_t misalign) {
    data = tu_buffer_alloc(&tb, nbytes, misalign);
    bytes = nbytes;
    cr_assert_not_null(data, "out of host memory");
  }
  bool guards_ok() const { return !tb.block || tu_buffer_guards_intact(&tb); }
};

/* The four layouts of a tensor's buffers (see the file comment). */
enum Layout { ALIGNED = 0, NO_VECTOR = 1, MISALIGNED_PG = 2, MISALIGNED_STATE = 3 };

const char *layout_name(int l) {
  static const char *names[] = {"aligned", "vector_ok=0", "misaligned param/grad",
                                "misaligned state"};
  return names[l];
}

/* Random fp32 values in [-lo_hi, lo_hi] with about 2% exact zeros (sign(0)
 * and zero gradients matter to Lion and SGD), rounded to dtype's bytes. */
std::vector<unsigned char> random_bytes(tu_rng *r, fo_dtype dtype, int64_t n, double mag) {
  std::vector<float> f((size_t)n);
  for (auto &x : f) {
    const uint32_t pick = tu_rng_u32(r) % 100;
    x = pick < 2 ? 0.0f : (float)tu_rng_nonzero(r, mag * 1e-3, mag);
  }
  std::vector<unsigned char> out((size_t)n * fo_dtype_size(dtype) + 1);
  if (n > 0)
    cr_assert_eq(fo_convert_from_f32(dtype, f.data(), out.data(), n), FO_SUCCESS, "%s",
                 fo_last_error());
  return out;
}

/* First differing element of two arrays of elem-byte elements, or -1. */
int64_t first_diff(const void *a, const void *b, int64_t n, size_t elem) {
  const unsigned char *x = (const unsigned char *)a, *y = (const unsigned char *)b;
  if (n <= 0 || memcmp(x, y, (size_t)n * elem) == 0) return -1;
  for (int64_t i = 0; i < n; i++)
    if (memcmp(x + (size_t)i * elem, y + (size_t)i * elem, elem) != 0) return i;
  return -1;
}

double element_value(fo_dtype dtype, const void *p, int64_t i) {
  float f;
  if (dtype == FO_DTYPE_F32)
    memcpy(&f, (const float *)p + i, 4);
  else
    fo_convert_to_f32(dtype, (const uint16_t *)p + i, &f, 1);
  return (double)f;
}

/* ------------------------------------------------------------ the matrix */

struct Combo {
  fo_algorithm alg;
  int variant; /* which hyper-parameter set */
  fo_dtype pt, gt;
  int master, sr;
};

std::string combo_name(const Combo &c) {
  char buf[160];
  snprintf(buf, sizeof buf, "%s/v%d param %s grad %s%s%s", tu_alg_name(c.alg), c.variant,
           tu_dtype_name(c.pt), tu_dtype_name(c.gt),
           c.pt == FO_DTYPE_F32 ? "" : (c.master ? " master" : " no-master"),
           c.sr ? " stochastic" : "");
  return buf;
}

/* Two groups per optimizer, so group indexing is exercised; each variant
 * turns different options on (momentum/Nesterov/dampening, AMSGrad in one
 * group only, maximize, weight decay in one group only). */
void combo_hparams(const Combo &c, fo_hparams h[2]) {
  for (int g = 0; g < 2; g++) cr_assert_eq(fo_hparams_default(c.alg, &h[g]), FO_SUCCESS);
  switch (c.alg) {
    case FO_ALG_SGD:
      if (c.variant == 0) {
        h[0].lr = 0.05f, h[0].momentum = 0.9f, h[0].dampening = 0.1f, h[0].weight_decay = 0.01f;
        h[1].lr = 0.02f; /* no momentum: its tensors' buffers stay untouched */
      } else {
        h[0].lr = 0.03f, h[0].momentum = 0.9f, h[0].nesterov = 1, h[0].weight_decay = 1e-3f;
        h[0].maximize = 1;
        h[1].lr = 0.1f, h[1].momentum = 0.5f;
      }
      break;
    case FO_ALG_ADAM:
    case FO_ALG_ADAMW:
      if (c.variant == 0) {
        h[0].lr = 1e-2f, h[0].weight_decay = 0.1f;
        h[1].lr = 3e-3f, h[1].amsgrad = 1, h[1].weight_decay = 0.0f;
      } else {
        h[0].lr = 2e-2f, h[0].amsgrad = 1, h[0].maximize = 1, h[0].eps = 1e-6f;
        h[0].beta1 = 0.8f, h[0].beta2 = 0.95f;
        h[1].lr = 5e-3f;
      }
      break;
    default:
      if (c.variant == 0) {
        h[0].lr = 1e-3f, h[0].weight_decay = 0.1f;
        h[1].lr = 3e-4f;
      } else {
        h[0].lr = 2e-3f, h[0].maximize = 1, h[0].beta1 = 0.95f, h[0].beta2 = 0.98f;
        h[1].lr = 1e-3f, h[1].weight_decay = 0.5f;
      }
      break;
  }
}

/* The block work for a runtime combination: the launcher's dispatch
 * (step.cu), with the spy when cov is given, else fo_step_block itself. */
template <int ALG, int PT, int GT, bool MASTER, bool SR>
void run_step_t(const fo_step_launch &a, Coverage *cov, const char *ctx) {
  if (cov) {
    run_spied<fo_step_op<ALG, PT, GT, MASTER, SR>>(a, a.blocks, a.tensors, a.num_blocks,
                                                   a.chunk, cov, ctx);
    return;
  }
  for (int64_t b = 0; b < a.num_blocks; b++)
    for (int tid = 0; tid < NT; tid++) fo_step_block<ALG, PT, GT, MASTER, SR>(a, b, tid, NT);
}

template <int ALG, int PT, int GT>
void run_step_mode(const fo_step_launch &a, Coverage *cov, const char *ctx) {
  if constexpr (PT == FO_RULE_F32) {
    run_step_t<ALG, PT, GT, false, false>(a, cov, ctx);
  } else {
    if (a.master)
      run_step_t<ALG, PT, GT, true, false>(a, cov, ctx);
    else if constexpr (PT == FO_RULE_BF16) {
      if (a.stochastic)
        run_step_t<ALG, PT, GT, false, true>(a, cov, ctx);
      else
        run_step_t<ALG, PT, GT, false, false>(a, cov, ctx);
    } else {
      run_step_t<ALG, PT, GT, false, false>(a, cov, ctx);
    }
  }
}

template <int ALG, int PT>
void run_step_grad(const fo_step_launch &a, Coverage *cov, const char *ctx) {
  switch (a.grad_dtype) {
    case FO_RULE_F32: run_step_mode<ALG, PT, FO_RULE_F32>(a, cov, ctx); break;
    case FO_RULE_F16: run_step_mode<ALG, PT, FO_RULE_F16>(a, cov, ctx); break;
    default: run_step_mode<ALG, PT, FO_RULE_BF16>(a, cov, ctx); break;
  }
}

template <int ALG>
void run_step_param(const fo_step_launch &a, Coverage *cov, const char *ctx) {
  switch (a.param_dtype) {
    case FO_RULE_F32: run_step_grad<ALG, FO_RULE_F32>(a, cov, ctx); break;
    case FO_RULE_F16: run_step_grad<ALG, FO_RULE_F16>(a, cov, ctx); break;
    default: run_step_grad<ALG, FO_RULE_BF16>(a, cov, ctx); break;
  }
}

void run_step(const fo_step_launch &a, Coverage *cov, const char *ctx) {
  switch (a.algorithm) {
    case FO_RULE_SGD: run_step_param<FO_RULE_SGD>(a, cov, ctx); break;
    case FO_RULE_ADAM: run_step_param<FO_RULE_ADAM>(a, cov, ctx); break;
    case FO_RULE_ADAMW: run_step_param<FO_RULE_ADAMW>(a, cov, ctx); break;
    default: run_step_param<FO_RULE_LION>(a, cov, ctx); break;
  }
}

/* Sizes that hit every tail: below W, W +- 1, nthreads*W +- 1, the chunk
 * +- 1, several chunks plus a ragged end, and an empty tensor. */
const int64_t CORE_SIZES[] = {1,    2,    3,    5,    7,    8,    9,
                              15,   16,   17,   31,   33,   255,  256,
                              257,  1023, 4095, 4097, 4111, 0,    FO_CUDA_CHUNK - 1,
                              FO_CUDA_CHUNK + 1, 2 * FO_CUDA_CHUNK + 13};

const fo_role STATE_ROLES[] = {FO_ROLE_MASTER, FO_ROLE_EXP_AVG, FO_ROLE_EXP_AVG_SQ,
                               FO_ROLE_MAX_EXP_AVG_SQ};

/* One combination: a CPU optimizer over external host tensors, and the
 * block work over its own guarded copies; several steps, fresh gradients
 * each step, every buffer compared bit for bit after every step. */
void run_combo(const Combo &c, uint64_t seed, int64_t chunk) {
  const std::string name = combo_name(c);
  const char *ctx = name.c_str();
  tu_rng rng;
  tu_rng_seed(&rng, seed, 7u);

  std::vector<int64_t> numel(std::begin(CORE_SIZES), std::end(CORE_SIZES));
  for (int i = 0; i < 3; i++) numel.push_back(1 + (int64_t)(tu_rng_u32(&rng) % 20000));
  const int64_t nt = (int64_t)numel.size();
  const size_t ps = fo_dtype_size(c.pt), gs = fo_dtype_size(c.gt);

  /* --- the CPU executor, through the public API */
  fo_hparams h[2];
  combo_hparams(c, h);
  std::vector<std::vector<unsigned char>> cpu_param(nt), cpu_grad(nt);
  std::vector<fo_tensor_desc> desc((size_t)nt);
  std::vector<int> layout((size_t)nt);
  for (int64_t i = 0; i < nt; i++) {
    cpu_param[i] = random_bytes(&rng, c.pt, numel[i], 1.0);
    cpu_grad[i].assign((size_t)numel[i] * gs + 1, 0);
    desc[i].numel = numel[i];
    desc[i].group = (int)(i % 2);
    desc[i].param = cpu_param[i].data();
    desc[i].grad = cpu_grad[i].data();
    desc[i].name = nullptr;
    layout[i] = (int)((i + seed) % 4);
  }
  fo_options o;
  cr_assert_eq(fo_options_default(&o), FO_SUCCESS);
  o.algorithm = c.alg;
  o.executor = FO_EXEC_CPU;
  o.param_dtype = c.pt;
  o.grad_dtype = c.gt;
  o.master_weights = c.master;
  o.stochastic_rounding = c.sr;
  o.seed = seed * 0x9e3779b97f4a7c15ull + 1;
  o.num_threads = 1;
  if (c.variant == 1) {
    /* clipping makes grad_coef != 1; a schedule makes lr vary per step */
    o.max_grad_norm = 1.0f;
    o.schedule.kind = FO_SCHED_COSINE;
    o.schedule.warmup_steps = 1;
    o.schedule.total_steps = 5;
  }
  fo_optimizer *opt = nullptr;
  cr_assert_eq(fo_optimizer_create(&opt, &o, h, 2, desc.data(), nt), FO_SUCCESS, "%s: %s", ctx,
               fo_last_error());

  /* --- the block work's buffers: same initial bytes, own state */
  std::vector<Buf> param(nt), grad(nt), state(nt * 4);
  std::vector<fo_plan_tensor> tensors((size_t)nt);
  for (int64_t i = 0; i < nt; i++) {
    const int l = layout[i];
    /* offset views: whole elements, never a 16-byte multiple */
    const size_t mp = l == MISALIGNED_PG ? ps * (1 + (size_t)(i % 3)) : 0;
    const size_t mg = l == MISALIGNED_PG ? gs * (1 + (size_t)((i + 1) % 3)) : 0;
    const size_t ms = l == MISALIGNED_STATE ? 4 * (1 + (size_t)(i % 3)) : 0;
    param[i].alloc((size_t)numel[i] * ps, mp);
    grad[i].alloc((size_t)numel[i] * gs, mg);
    memcpy(param[i].data, cpu_param[i].data(), (size_t)numel[i] * ps);
    fo_plan_tensor &t = tensors[(size_t)i];
    memset(&t, 0, sizeof t);
    t.param = param[i].data;
    t.grad = grad[i].data;
    t.numel = numel[i];
    t.group = desc[i].group;
    float **slot[4] = {&t.master, &t.exp_avg, &t.exp_avg_sq, &t.max_exp_avg_sq};
    for (int r = 0; r < 4; r++) {
      float *kept = nullptr;
      if (fo_optimizer_state_ptr(opt, i, STATE_ROLES[r], &kept) != FO_SUCCESS) continue;
      Buf &s = state[(size_t)(i * 4 + r)];
      s.alloc((size_t)numel[i] * 4, ms);
      if (numel[i] > 0) memset(s.data, 0, (size_t)numel[i] * 4); /* zeroed moments */
      *slot[r] = (float *)s.data;
    }
    /* the host's rule: parameter and gradient both 16-byte aligned */
    t.vector_ok = l != NO_VECTOR && (((uintptr_t)t.param | (uintptr_t)t.grad) & 15u) == 0;
  }
  const int64_t nb = fo_plan_count_blocks(tensors.data(), nt, chunk);
  cr_assert_gt(nb, 0);
  std::vector<fo_plan_block> blocks((size_t)nb);
  fo_plan_fill_blocks(tensors.data(), nt, chunk, blocks.data());

  /* master weights: the block work's own sync-master, checked against the
   * master the CPU optimizer initialised at create */
  const fo_plan_args pa = {blocks.data(), tensors.data(), nb, chunk};
  if (c.master && c.pt != FO_DTYPE_F32) {
    for (int64_t i = 0; i < nt; i++)
      if (tensors[i].master) tu_poison(tensors[i].master, (size_t)numel[i] * 4);
    Coverage cov(numel);
    for (int64_t i = 0; i < nt; i++) {
      cov.touch((size_t)i, tensors[i].param, ps);
      cov.touch((size_t)i, tensors[i].master, 4);
    }
    if (c.pt == FO_DTYPE_F16)
      run_spied<fo_sync_master_op<FO_RULE_F16>>(pa, pa.blocks, pa.tensors, nb, chunk, &cov, ctx);
    else
      run_spied<fo_sync_master_op<FO_RULE_BF16>>(pa, pa.blocks, pa.tensors, nb, chunk, &cov,
                                                 ctx);
    cov.check_exactly_once(ctx);
  }

  /* Which buffers the step touches, by the test's own reading of the
   * rules: SGD's buffer only in groups with momentum, the second moment for
   * Adam(W), its running max only in AMSGrad groups. */
  auto step_coverage = [&]() {
    Coverage cov(numel);
    const bool adam = c.alg == FO_ALG_ADAM || c.alg == FO_ALG_ADAMW;
    for (int64_t i = 0; i < nt; i++) {
      const fo_plan_tensor &t = tensors[(size_t)i];
      const fo_hparams &hg = h[t.group];
      cov.touch((size_t)i, t.param, ps);
      cov.touch((size_t)i, t.grad, gs);
      if (c.master && c.pt != FO_DTYPE_F32) cov.touch((size_t)i, t.master, 4);
      if (c.alg != FO_ALG_SGD || hg.momentum != 0.0f) cov.touch((size_t)i, t.exp_avg, 4);
      if (adam) cov.touch((size_t)i, t.exp_avg_sq, 4);
      if (adam && hg.amsgrad) cov.touch((size_t)i, t.max_exp_avg_sq, 4);
    }
    return cov;
  };

  const int steps = 3;
  for (int step = 1; step <= steps; step++) {
    /* fresh gradients, the same bytes on both sides */
    for (int64_t i = 0; i < nt; i++) {
      std::vector<unsigned char> g = random_bytes(&rng, c.gt, numel[i], 2.0);
      memcpy(cpu_grad[i].data(), g.data(), (size_t)numel[i] * gs);
      memcpy(grad[i].data, g.data(), (size_t)numel[i] * gs);
    }
    /* poison what the step only writes: the parameter when there are
     * master weights, SGD's momentum buffer on the first step */
    for (int64_t i = 0; i < nt; i++) {
      if (tensors[i].master) tu_poison(param[i].data, param[i].bytes);
      if (c.alg == FO_ALG_SGD && step == 1 && tensors[i].exp_avg &&
          h[tensors[i].group].momentum != 0.0f)
        tu_poison(tensors[i].exp_avg, (size_t)numel[i] * 4);
    }

    cr_assert_eq(fo_optimizer_step(opt, nullptr), FO_SUCCESS, "%s: %s", ctx, fo_last_error());
    int64_t t = 0;
    cr_assert_eq(fo_optimizer_get_step(opt, &t), FO_SUCCESS);
    cr_assert_eq(t, step);
    /* the CPU executor's step state (host memory): the scalars, the step
     * number and the skip flag its update used */
    const fo_step_state *st = opt->state;
    cr_assert_eq(st->step, t);
    cr_assert_eq(st->skip, 0);

    fo_step_launch a;
    fo_rule_scalars by_value[FO_PLAN_MAX_GROUPS];
    memset(&a, 0, sizeof a);
    a.blocks = blocks.data();
    a.tensors = tensors.data();
    a.num_blocks = nb;
    a.chunk = chunk;
    a.algorithm = (int32_t)c.alg;
    a.param_dtype = (int32_t)c.pt;
    a.grad_dtype = (int32_t)c.gt;
    a.master = c.master && c.pt != FO_DTYPE_F32;
    a.stochastic = c.sr;
    a.num_groups = 2;
    a.seed = o.seed;
    /* odd steps: the scalars from the step state, as the library launches
     * (the by-value copies are poisoned and must be ignored); even steps:
     * by value, without a state */
    if (step % 2) {
      a.state = st;
      memset(by_value, 0xff, sizeof by_value);
      a.groups = by_value;
      a.step = -1;
    } else {
      a.state = nullptr;
      memcpy(by_value, st->groups, sizeof by_value);
      a.groups = by_value;
      a.step = st->step;
    }

    /* odd steps through the spy (coverage), even steps through
     * fo_step_block itself, the kernel's exact entry */
    char sctx[256];
    snprintf(sctx, sizeof sctx, "%s, chunk %" PRId64 ", step %d", ctx, chunk, step);
    if (step % 2) {
      Coverage cov = step_coverage();
      run_step(a, &cov, sctx);
      cov.check_exactly_once(sctx);
      for (int64_t i = 0; i < nt; i++) {
        const int W = (c.pt == FO_DTYPE_F32 && c.gt == FO_DTYPE_F32) ? 4 : 8;
        if (layout[i] == ALIGNED && chunk % W == 0 && numel[i] >= W)
          cr_assert_gt(cov.vector_visits[i], 0, "%s: aligned tensor %" PRId64
                       " (numel %" PRId64 ") never took the vector path", sctx, i, numel[i]);
        if (layout[i] == NO_VECTOR || layout[i] == MISALIGNED_PG)
          cr_assert_eq(cov.vector_visits[i], 0, "%s: tensor %" PRId64 " (%s) took the vector path",
                       sctx, i, layout_name(layout[i]));
      }
    } else {
      run_step(a, nullptr, sctx);
    }

    /* compare every buffer with the CPU executor, bit for bit */
    for (int64_t i = 0; i < nt; i++) {
      const int64_t n = numel[i];
      int64_t d = first_diff(param[i].data, cpu_param[i].data(), n, ps);
      if (d >= 0)
        cr_assert_fail("%s: tensor %" PRId64 " (numel %" PRId64 ", %s) param[%" PRId64
                       "] = %.9g, CPU executor %.9g",
                       sctx, i, n, layout_name(layout[i]), d,
                       element_value(c.pt, param[i].data, d),
                       element_value(c.pt, cpu_param[i].data(), d));
      for (int r = 0; r < 4; r++) {
        float *want = nullptr;
        if (fo_optimizer_state_ptr(opt, i, STATE_ROLES[r], &want) != FO_SUCCESS || n == 0)
          continue;
        const float *got = (const float *)state[(size_t)(i * 4 + r)].data;
        d = first_diff(got, want, n, 4);
        if (d >= 0)
          cr_assert_fail("%s: tensor %" PRId64 " (numel %" PRId64 ", %s) state role %d [%" PRId64
                         "] = %.9g, CPU executor %.9g",
                         sctx, i, n, layout_name(layout[i]), (int)STATE_ROLES[r], d,
                         (double)got[d], (double)want[d]);
      }
      /* the step never writes the gradient */
      d = first_diff(grad[i].data, cpu_grad[i].data(), n, gs);
      cr_assert_eq(d, -1, "%s: tensor %" PRId64 " gradient [%" PRId64 "] changed", sctx, i, d);
    }
    for (auto &b : param) cr_assert(b.guards_ok(), "%s: a parameter guard zone was written", sctx);
    for (auto &b : grad) cr_assert(b.guards_ok(), "%s: a gradient guard zone was written", sctx);
    for (auto &b : state) cr_assert(b.guards_ok(), "%s: a state guard zone was written", sctx);
  }

  /* a step the state marks as skipped (non-finite gradients) changes
   * nothing, not even a poisoned write-only output */
  {
    fo_step_state skipped = *opt->state;
    skipped.skip = 1;
    fo_step_launch a;
    memset(&a, 0, sizeof a);
    a.blocks = blocks.data();
    a.tensors = tensors.data();
    a.num_blocks = nb;
    a.chunk = chunk;
    a.algorithm = (int32_t)c.alg;
    a.param_dtype = (int32_t)c.pt;
    a.grad_dtype = (int32_t)c.gt;
    a.master = c.master && c.pt != FO_DTYPE_F32;
    a.stochastic = c.sr;
    a.num_groups = 2;
    a.state = &skipped;
    std::vector<std::vector<unsigned char>> before;
    for (auto *set : {&param, &grad, &state})
      for (auto &b : *set)
        before.emplace_back((unsigned char *)b.data, (unsigned char *)b.data + b.bytes);
    Coverage cov = step_coverage();
    run_step(a, &cov, ctx);
    size_t k = 0;
    for (auto *set : {&param, &grad, &state})
      for (auto &b : *set) {
        cr_assert(b.bytes == 0 || memcmp(before[k].data(), b.data, b.bytes) == 0,
                  "%s: a skipped step changed buffer %zu", ctx, k);
        k++;
      }
    for (auto &hits : cov.hits)
      for (uint8_t hit : hits) cr_assert_eq(hit, 0, "%s: a skipped step visited an element", ctx);
  }
  cr_assert_eq(fo_optimizer_destroy(opt), FO_SUCCESS);
}

/* Every dtype combination of one algorithm, both hyper-parameter variants;
 * the chunk varies so that some blocks start off a vector boundary. */
void run_algorithm(fo_algorithm alg) {
  struct Mode {
    fo_dtype pt;
    int master, sr;
  };
  const Mode modes[] = {{FO_DTYPE_F32, 1, 0},  {FO_DTYPE_F16, 1, 0},  {FO_DTYPE_F16, 0, 0},
                        {FO_DTYPE_BF16, 1, 0}, {FO_DTYPE_BF16, 0, 0}, {FO_DTYPE_BF16, 0, 1}};
  const fo_dtype grads[] = {FO_DTYPE_F32, FO_DTYPE_F16, FO_DTYPE_BF16};
  const int64_t chunks[] = {FO_CUDA_CHUNK, FO_CUDA_CHUNK, 4096, 777};
  uint64_t k = 0;
  for (int variant = 0; variant < 2; variant++)
    for (const Mode &m : modes)
      for (fo_dtype gt : grads) {
        Combo c = {alg, variant, m.pt, gt, m.master, m.sr};
        run_combo(c, tu_hash((uint64_t)alg, k), chunks[k % 4]);
        k++;
      }
}

/* ------------------------------------------------- sync-master, zero-grad */

/* A plan over guarded buffers of one role for the coverage-only kernels. */
struct SimplePlan {
  std::vector<int64_t> numel;
  std::vector<int> layout;
  std::vector<Buf> a, b; /* param/master or grad */
  std::vector<fo_plan_tensor> tensors;
  std::vector<fo_plan_block> blocks;
  int64_t chunk;
};

void make_sizes(tu_rng *r, SimplePlan *p) {
  p->numel.assign(std::begin(CORE_SIZES), std::end(CORE_SIZES));
  for (int i = 0; i < 6; i++) p->numel.push_back((int64_t)(tu_rng_u32(r) % 70000));
}

/* The loop alone, for shapes and thread counts the kernels do not use
 * today: coverage must not depend on nthreads dividing anything. */
struct Recorder {
  std::vector<uint8_t> *hits;
  int64_t n;
  template <int N, int K>
  void operator()(const int64_t (&off)[K]) const {
    for (int k = 0; k < K; k++) {
      if (off[k] == -1) continue;
      if (off[k] < 0 || off[k] + N > n)
        cr_assert_fail("access [%" PRId64 ", +%d) of %" PRId64, off[k], N, n);
      for (int j = 0; j < N; j++) (*hits)[(size_t)(off[k] + j)]++;
    }
  }
};

template <int W, int IV, int IS>
void loop_alone(int64_t n, bool vec, int nthreads) {
  std::vector<uint8_t> hits((size_t)n, 0);
  Recorder rec = {&hits, n};
  for (int tid = 0; tid < nthreads; tid++) fo_block_loop<W, IV, IS>(n, vec, tid, nthreads, rec);
  for (int64_t e = 0; e < n; e++)
    if (hits[(size_t)e] != 1)
      cr_assert_fail("W %d ILP %d/%d n %" PRId64 " vec %d nthreads %d: element %" PRId64
                     " touched %d times",
                     W, IV, IS, n, (int)vec, nthreads, e, (int)hits[(size_t)e]);
}

}  // namespace

Test(block_work, sync_master_covers_and_widens) {
  const fo_dtype dts[] = {FO_DTYPE_F16, FO_DTYPE_BF16, FO_DTYPE_F32};
  tu_rng rng;
  tu_rng_seed(&rng, 11, 3);
  for (fo_dtype pt : dts)
    for (int64_t chunk : {(int64_t)FO_CUDA_CHUNK, (int64_t)777}) {
      SimplePlan p;
      p.chunk = chunk;
      make_sizes(&rng, &p);
      const int64_t nt = (int64_t)p.numel.size();
      const size_t ps = fo_dtype_size(pt);
      p.a = std::vector<Buf>(nt);
      p.b = std::vector<Buf>(nt);
      p.tensors.assign((size_t)nt, fo_plan_tensor());
      std::vector<std::vector<unsigned char>> src(nt);
      for (int64_t i = 0; i < nt; i++) {
        const int l = (int)(i % 4);
        p.a[i].alloc((size_t)p.numel[i] * ps, l == MISALIGNED_PG ? ps : 0);
        p.b[i].alloc((size_t)p.numel[i] * 4, l == MISALIGNED_STATE ? 8 : 0);
        src[i] = random_bytes(&rng, pt, p.numel[i], 3.0);
        memcpy(p.a[i].data, src[i].data(), (size_t)p.numel[i] * ps);
        fo_plan_tensor &t = p.tensors[(size_t)i];
        t.param = p.a[i].data;
        t.master = (float *)p.b[i].data;
        t.numel = p.numel[i];
        t.vector_ok = l != NO_VECTOR;
      }
      const int64_t nb = fo_plan_count_blocks(p.tensors.data(), nt, chunk);
      p.blocks.resize((size_t)nb);
      fo_plan_fill_blocks(p.tensors.data(), nt, chunk, p.blocks.data());
      const fo_plan_args pa = {p.blocks.data(), p.tensors.data(), nb, chunk};
      char ctx[96];
      snprintf(ctx, sizeof ctx, "sync-master %s chunk %" PRId64, tu_dtype_name(pt), chunk);
      Coverage cov(p.numel);
      for (int64_t i = 0; i < nt; i++) {
        cov.touch((size_t)i, p.tensors[i].param, ps);
        cov.touch((size_t)i, p.tensors[i].master, 4);
      }
      if (pt == FO_DTYPE_F16)
        run_spied<fo_sync_master_op<FO_RULE_F16>>(pa, pa.blocks, pa.tensors, nb, chunk, &cov, ctx);
      else if (pt == FO_DTYPE_BF16)
        run_spied<fo_sync_master_op<FO_RULE_BF16>>(pa, pa.blocks, pa.tensors, nb, chunk, &cov,
                                                   ctx);
      else
        run_spied<fo_sync_master_op<FO_RULE_F32>>(pa, pa.blocks, pa.tensors, nb, chunk, &cov, ctx);
      cov.check_exactly_once(ctx);
      for (int64_t i = 0; i < nt; i++) {
        const int64_t n = p.numel[i];
        std::vector<float> want((size_t)n + 1);
        if (n) cr_assert_eq(fo_convert_to_f32(pt, src[i].data(), want.data(), n), FO_SUCCESS);
        cr_assert_eq(first_diff(p.b[i].data, want.data(), n, 4), -1, "%s: tensor %" PRId64, ctx, i);
        cr_assert_eq(first_diff(p.a[i].data, src[i].data(), n, ps), -1,
                     "%s: tensor %" PRId64 " parameter changed", ctx, i);
        cr_assert(p.a[i].guards_ok() && p.b[i].guards_ok(), "%s: guard zone written", ctx);
        if (i % 4 == ALIGNED && chunk % (16 / (int64_t)ps) == 0 && n >= 16 / (int64_t)ps)
          cr_assert_gt(cov.vector_visits[i], 0, "%s: tensor %" PRId64 " never vectorized", ctx, i);
        if (i % 4 != ALIGNED) cr_assert_eq(cov.vector_visits[i], 0, "%s: tensor %" PRId64, ctx, i);
      }
    }
}

Test(block_work, zero_grad_covers_and_zeroes) {
  const fo_dtype dts[] = {FO_DTYPE_F32, FO_DTYPE_F16, FO_DTYPE_BF16};
  tu_rng rng;
  tu_rng_seed(&rng, 12, 3);
  for (fo_dtype gt : dts)
    for (int64_t chunk : {(int64_t)FO_CUDA_CHUNK, (int64_t)1000}) {
      SimplePlan p;
      make_sizes(&rng, &p);
      const int64_t nt = (int64_t)p.numel.size();
      const size_t gs = fo_dtype_size(gt);
      p.a = std::vector<Buf>(nt);
      p.tensors.assign((size_t)nt, fo_plan_tensor());
      for (int64_t i = 0; i < nt; i++) {
        const int l = (int)(i % 3); /* aligned, vector_ok=0, misaligned */
        p.a[i].alloc((size_t)p.numel[i] * gs, l == MISALIGNED_PG ? gs * 3 : 0);
        std::vector<unsigned char> g = random_bytes(&rng, gt, p.numel[i], 1.0);
        memcpy(p.a[i].data, g.data(), (size_t)p.numel[i] * gs);
        fo_plan_tensor &t = p.tensors[(size_t)i];
        t.grad = p.a[i].data;
        t.numel = p.numel[i];
        t.vector_ok = l != NO_VECTOR;
      }
      const int64_t nb = fo_plan_count_blocks(p.tensors.data(), nt, chunk);
      p.blocks.resize((size_t)nb);
      fo_plan_fill_blocks(p.tensors.data(), nt, chunk, p.blocks.data());
      const fo_plan_args pa = {p.blocks.data(), p.tensors.data(), nb, chunk};
      char ctx[96];
      snprintf(ctx, sizeof ctx, "zero-grad %s chunk %" PRId64, tu_dtype_name(gt), chunk);
      Coverage cov(p.numel);
      for (int64_t i = 0; i < nt; i++) cov.touch((size_t)i, p.tensors[i].grad, gs);
      if (gt == FO_DTYPE_F32)
        run_spied<fo_zero_grad_op<FO_RULE_F32>>(pa, pa.blocks, pa.tensors, nb, chunk, &cov, ctx);
      else if (gt == FO_DTYPE_F16)
        run_spied<fo_zero_grad_op<FO_RULE_F16>>(pa, pa.blocks, pa.tensors, nb, chunk, &cov, ctx);
      else
        run_spied<fo_zero_grad_op<FO_RULE_BF16>>(pa, pa.blocks, pa.tensors, nb, chunk, &cov, ctx);
      cov.check_exactly_once(ctx);
      for (int64_t i = 0; i < nt; i++) {
        const size_t bytes = (size_t)p.numel[i] * gs;
        std::vector<unsigned char> zero(bytes + 1, 0);
        cr_assert(bytes == 0 || memcmp(p.a[i].data, zero.data(), bytes) == 0,
                  "%s: tensor %" PRId64 " not zeroed", ctx, i);
        cr_assert(p.a[i].guards_ok(), "%s: tensor %" PRId64 " guard zone written", ctx, i);
        if (i % 3 == MISALIGNED_PG || i % 3 == NO_VECTOR)
          cr_assert_eq(cov.vector_visits[i], 0, "%s: tensor %" PRId64, ctx, i);
      }
    }
}


Test(block_work, loop_covers_every_shape) {
  tu_rng rng;
  tu_rng_seed(&rng, 5, 5);
  const int threads[] = {1, 2, 31, 32, 33, 64, 256, 1024};
  for (int nthreads : threads)
    for (int rep = 0; rep < 40; rep++) {
      const int64_t n = rep < 20 ? rep : (int64_t)(tu_rng_u32(&rng) % 50000);
      for (int vec = 0; vec < 2; vec++) {
        loop_alone<4, 4, 4>(n, vec, nthreads);
        loop_alone<8, 2, 4>(n, vec, nthreads);
        loop_alone<8, 3, 1>(n, vec, nthreads);
        loop_alone<1, 1, 1>(n, vec, nthreads);
      }
    }
}

Test(block_work, step_matches_cpu_executor_sgd) { run_algorithm(FO_ALG_SGD); }
Test(block_work, step_matches_cpu_executor_adam) { run_algorithm(FO_ALG_ADAM); }
Test(block_work, step_matches_cpu_executor_adamw) { run_algorithm(FO_ALG_ADAMW); }
Test(block_work, step_matches_cpu_executor_lion) { run_algorithm(FO_ALG_LION); }
