/*
 * test_block_work_shapes.cpp -- the step's block work in other shapes
 * gives the library's bits (the rig: tests/support/block_work_rig.hpp).
 *
 * bench/step_variants.cu times the step kernel with other ILPs (vectors in
 * flight per thread), thread counts and chunk sizes on the device, and
 * checks there that each leaves the same bits as the library's kernel.
 * Here the same block work runs on the CPU in those shapes, every block
 * and every thread slot through the spy: every element is touched exactly
 * once, every vector access is one aligned access in every buffer, no guard
 * zone is written, and every output buffer equals, bit for bit, what the
 * library's shape (fo_step_shape, FO_CUDA_THREADS threads, FO_CUDA_CHUNK)
 * wrote from the same inputs.  A shape is a schedule: it must never change
 * a result.
 */
#include <criterion/criterion.h>

#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "block_work_rig.hpp"

namespace {

/* fo_step_shape's vector width with another ILP on both paths. */
template <int ILP>
struct shape_ilp {
  static constexpr int W = 4;
  static constexpr int ILP_VEC = ILP;
  static constexpr int ILP_SCALAR = ILP;
};

/* One configuration's tensors: guarded host buffers in the four layouts. */
struct Tensors {
  std::vector<int64_t> numel;
  std::vector<fo_plan_tensor> plan;
  std::vector<Buf> bufs; /* 6 per tensor: param, grad, master, m, v, vmax */
  size_t pbytes = 0, gbytes = 0;
};

const int ROLES = 6;

float **state_slot(fo_plan_tensor &t, int r) {
  float **slots[4] = {&t.master, &t.exp_avg, &t.exp_avg_sq, &t.max_exp_avg_sq};
  return slots[r - 2];
}

/* Tensors of every tail size and a few random ones; the state buffers the
 * algorithm keeps (vmax for Adam only: its group 1 runs AMSGrad). */
void make_tensors(Tensors &ts, int alg, fo_dtype pt, fo_dtype gt, bool master, tu_rng *rng) {
  ts.numel.assign(std::begin(CORE_SIZES), std::end(CORE_SIZES));
  for (int i = 0; i < 4; i++) ts.numel.push_back(1 + (int64_t)(tu_rng_u32(rng) % 9000));
  const size_t nt = ts.numel.size();
  ts.pbytes = fo_dtype_size(pt);
  ts.gbytes = fo_dtype_size(gt);
  ts.plan.assign(nt, fo_plan_tensor{});
  ts.bufs = std::vector<Buf>(nt * ROLES);
  for (size_t i = 0; i < nt; i++) {
    const int64_t n = ts.numel[i];
    const int l = (int)(i % 4);
    fo_plan_tensor &t = ts.plan[i];
    memset(&t, 0, sizeof t);
    t.numel = n;
    t.index = (int64_t)i;
    t.group = (int32_t)(i % 2);
    const size_t mp = l == MISALIGNED_PG ? ts.pbytes * (1 + i % 3) : 0;
    const size_t mg = l == MISALIGNED_PG ? ts.gbytes * (1 + (i + 1) % 3) : 0;
    const size_t ms = l == MISALIGNED_STATE ? 4 * (1 + i % 3) : 0;
    ts.bufs[i * ROLES].alloc((size_t)n * ts.pbytes, mp);
    ts.bufs[i * ROLES + 1].alloc((size_t)n * ts.gbytes, mg);
    t.param = ts.bufs[i * ROLES].data;
    t.grad = ts.bufs[i * ROLES + 1].data;
    const bool keeps[4] = {master, true, alg != FO_RULE_SGD && alg != FO_RULE_LION,
                           alg == FO_RULE_ADAM};
    for (int r = 2; r < ROLES; r++) {
      if (!keeps[r - 2]) continue;
      ts.bufs[i * ROLES + r].alloc((size_t)n * 4, ms);
      *state_slot(t, r) = (float *)ts.bufs[i * ROLES + r].data;
    }
    t.vector_ok = l != NO_VECTOR && (((uintptr_t)t.param | (uintptr_t)t.grad) & 15u) == 0;
  }
}

/* Random inputs in every buffer (moments of their own signs and sizes). */
void fill_inputs(Tensors &ts, fo_dtype pt, fo_dtype gt, tu_rng *rng) {
  for (size_t i = 0; i < ts.numel.size(); i++) {
    const int64_t n = ts.numel[i];
    for (int r = 0; r < ROLES; r++) {
      Buf &b = ts.bufs[i * ROLES + (size_t)r];
      if (!b.data || n == 0) continue;
      const fo_dtype d = r == 0 ? pt : r == 1 ? gt : FO_DTYPE_F32;
      const double mag = r == 1 ? 2.0 : r >= 4 ? 1e-3 : 1.0;
      std::vector<unsigned char> v = random_bytes(rng, d, n, mag);
      if (r >= 4) /* second moments and their max are non-negative */
        for (int64_t e = 0; e < n; e++) ((unsigned char *)v.data())[e * 4 + 3] &= 0x7f;
      memcpy(b.data, v.data(), (size_t)n * fo_dtype_size(d));
    }
  }
}

std::vector<std::vector<unsigned char>> snapshot(const Tensors &ts) {
  std::vector<std::vector<unsigned char>> out;
  for (const Buf &b : ts.bufs)
    out.emplace_back((const unsigned char *)b.data, (const unsigned char *)b.data + b.bytes);
  return out;
}

void restore(Tensors &ts, const std::vector<std::vector<unsigned char>> &s, bool master) {
  for (size_t k = 0; k < ts.bufs.size(); k++)
    if (ts.bufs[k].bytes) memcpy(ts.bufs[k].data, s[k].data(), ts.bufs[k].bytes);
  /* with master weights the parameter is only written: poison it */
  if (master)
    for (size_t i = 0; i < ts.numel.size(); i++)
      tu_poison(ts.bufs[i * ROLES].data, ts.bufs[i * ROLES].bytes);
}

/* Which buffers the step touches in tensor i (the test's own reading). */
Coverage coverage_of(const Tensors &ts, int alg, bool master) {
  Coverage cov(ts.numel);
  for (size_t i = 0; i < ts.numel.size(); i++) {
    const fo_plan_tensor &t = ts.plan[i];
    cov.touch(i, t.param, ts.pbytes);
    cov.touch(i, t.grad, ts.gbytes);
    if (master) cov.touch(i, t.master, 4);
    cov.touch(i, t.exp_avg, 4);
    cov.touch(i, t.exp_avg_sq, 4);
    if (alg == FO_RULE_ADAM && t.group == 1) cov.touch(i, t.max_exp_avg_sq, 4);
  }
  return cov;
}

/* The shapes tried: (ILP, threads); the library's shape comes first. */
struct Shape {
  int ilp, threads;
};
const Shape SHAPES[] = {{0, NT}, {1, 128}, {2, 256}, {2, 96}, {3, 64}, {4, 512}};

template <int ALG, int PT, int GT, bool MASTER, int K>
using shaped = fo_step_op<ALG, PT, GT, MASTER, false, FO_PASS_UPDATE, shape_ilp<K>>;

template <class Op>
void spied(const Shape &s, const fo_step_launch &a, Coverage *cov, const char *ctx) {
  run_spied<Op>(a, a.blocks, a.tensors, a.num_blocks, a.chunk, cov, ctx, s.threads);
}

template <int ALG, int PT, int GT, bool MASTER>
void run_shape(const Shape &s, const fo_step_launch &a, Coverage *cov, const char *ctx) {
  switch (s.ilp) {
    case 0: spied<fo_step_op<ALG, PT, GT, MASTER, false>>(s, a, cov, ctx); break;
    case 1: spied<shaped<ALG, PT, GT, MASTER, 1>>(s, a, cov, ctx); break;
    case 2: spied<shaped<ALG, PT, GT, MASTER, 2>>(s, a, cov, ctx); break;
    case 3: spied<shaped<ALG, PT, GT, MASTER, 3>>(s, a, cov, ctx); break;
    case 4: spied<shaped<ALG, PT, GT, MASTER, 4>>(s, a, cov, ctx); break;
    default: cr_assert_fail("no shape with ILP %d", s.ilp);
  }
}

/* One configuration: the library's shape at FO_CUDA_CHUNK writes the
 * reference; every other shape, and the library's shape at other chunks,
 * must write the same bytes. */
template <int ALG, int PT, int GT, bool MASTER>
void check_shapes(const char *name, uint64_t seed) {
  tu_rng rng;
  tu_rng_seed(&rng, seed, 11u);
  Tensors ts;
  make_tensors(ts, ALG, (fo_dtype)PT, (fo_dtype)GT, MASTER, &rng);
  fill_inputs(ts, (fo_dtype)PT, (fo_dtype)GT, &rng);
  const auto inputs = snapshot(ts);
  const int64_t nt = (int64_t)ts.numel.size();

  /* two groups, step 2 (past SGD's first step), scalars by value */
  fo_rule_scalars groups[2];
  for (int g = 0; g < 2; g++) {
    fo_group_hparams h;
    memset(&h, 0, sizeof h);
    h.lr = g ? 3e-3f : 1e-2f;
    h.weight_decay = g ? 0.0f : 0.1f;
    h.momentum = 0.9f;
    h.beta1 = 0.9f;
    h.beta2 = 0.99f;
    h.eps = 1e-8f;
    h.flags = g == 1 && ALG == FO_RULE_ADAM ? FO_RULE_AMSGRAD : 0u;
    float mu = 1.0f;
    fo_group_scalars(ALG, &h, 2, h.lr, 0.5f, &mu, &groups[g]);
  }

  std::vector<std::vector<unsigned char>> want;
  const int64_t chunks[] = {FO_CUDA_CHUNK, 16384, 65536, 4096 + 4};
  for (int64_t chunk : chunks)
    for (const Shape &s : SHAPES) {
      if (chunk != FO_CUDA_CHUNK && s.ilp != 0) continue; /* chunks: the library's shape */
      char ctx[160];
      snprintf(ctx, sizeof ctx, "%s, ILP %d, %d threads, chunk %" PRId64, name, s.ilp, s.threads,
               chunk);
      const int64_t nb = fo_plan_count_blocks(ts.plan.data(), nt, chunk);
      std::vector<fo_plan_block> blocks((size_t)nb);
      fo_plan_fill_blocks(ts.plan.data(), nt, chunk, blocks.data());
      fo_step_launch a;
      memset(&a, 0, sizeof a);
      a.blocks = blocks.data();
      a.tensors = ts.plan.data();
      a.num_blocks = nb;
      a.chunk = chunk;
      a.algorithm = ALG;
      a.param_dtype = PT;
      a.grad_dtype = GT;
      a.master = MASTER;
      a.num_groups = 2;
      a.known = 1;
      a.k.step = 2;
      a.k.num_groups = 2;
      memcpy(a.k.groups, groups, sizeof groups);
      a.pass = FO_PASS_UPDATE;
      restore(ts, inputs, MASTER);
      Coverage cov = coverage_of(ts, ALG, MASTER);
      run_shape<ALG, PT, GT, MASTER>(s, a, &cov, ctx);
      cov.check_exactly_once(ctx);
      for (const Buf &b : ts.bufs) cr_assert(b.guards_ok(), "%s: a guard zone was written", ctx);
      const auto got = snapshot(ts);
      if (want.empty()) {
        want = got;
        /* the reference itself moved: the parameters changed */
        bool moved = false;
        for (size_t i = 0; i < ts.numel.size() && !moved; i++)
          moved =
              ts.bufs[i * ROLES].bytes && memcmp(got[i * ROLES].data(), inputs[i * ROLES].data(),
                                                 ts.bufs[i * ROLES].bytes) != 0;
        cr_assert(moved, "%s: the step changed no parameter", ctx);
        continue;
      }
      for (size_t k = 0; k < got.size(); k++)
        if (got[k] != want[k]) {
          const int64_t d = first_diff(got[k].data(), want[k].data(), (int64_t)got[k].size(), 1);
          cr_assert_fail("%s: tensor %zu buffer %zu (numel %" PRId64
                         ", %s) differs from the "
                         "library's shape at byte %" PRId64,
                         ctx, k / ROLES, k % ROLES, ts.numel[k / ROLES],
                         layout_name((int)((k / ROLES) % 4)), d);
        }
    }
}

}  // namespace

Test(block_work_shapes, adamw_fp32) {
  check_shapes<FO_RULE_ADAMW, FO_RULE_F32, FO_RULE_F32, false>("adamw fp32", 1);
}
Test(block_work_shapes, adamw_bf16_master) {
  check_shapes<FO_RULE_ADAMW, FO_RULE_BF16, FO_RULE_BF16, true>("adamw bf16 master", 2);
}
Test(block_work_shapes, adam_amsgrad_fp16_fp32_grad) {
  check_shapes<FO_RULE_ADAM, FO_RULE_F16, FO_RULE_F32, false>("adam fp16/fp32 amsgrad", 3);
}
Test(block_work_shapes, lion_bf16_fp32_grad) {
  check_shapes<FO_RULE_LION, FO_RULE_BF16, FO_RULE_F32, false>("lion bf16/fp32", 4);
}
Test(block_work_shapes, sgd_momentum_fp32) {
  check_shapes<FO_RULE_SGD, FO_RULE_F32, FO_RULE_F32, false>("sgd fp32", 5);
}
