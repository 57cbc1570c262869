/*
 * test_block_work_step.cpp -- the kernels' own arithmetic, run on the CPU
 * (docs/gpu-verification.md; the rig: tests/support/block_work_rig.hpp).
 *
 * kernels/block_work.cuh holds the whole work of one thread block of the
 * step, sync-master and zero-grad kernels; the __global__ kernels only call
 * it.  Here g++ compiles the same header and the tests run it for every
 * block of a plan and every thread slot (FO_CUDA_THREADS of them), over host
 * buffers with poisoned guard zones:
 *
 *   results: for every algorithm x parameter dtype x gradient dtype x
 *       master x stochastic-rounding combination, the block work gives the
 *       same bits as the CPU executor through the public API
 *       (fo_optimizer_step with FO_EXEC_CPU) on identical inputs, step after
 *       step, for parameters, master weights and every moment, with the
 *       scalars taken from the step state (as after the prepare kernel)
 *       or carried by value (as in an eager step the host decided, which
 *       block 0 alone then publishes into the state); a step the state
 *       marks as skipped changes nothing.
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
 * Layouts: tests/support/block_work_rig.hpp.
 */
#include <criterion/criterion.h>

#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "block_work_rig.hpp"

namespace {

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
    run_spied<fo_step_op<ALG, PT, GT, MASTER, SR>>(a, a.blocks, a.tensors, a.num_blocks, a.chunk,
                                                   cov, ctx);
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
      run_spied<fo_sync_master_op<FO_RULE_BF16>>(pa, pa.blocks, pa.tensors, nb, chunk, &cov, ctx);
    cov.check_exactly_once(ctx);
  }

  /* A launch of this combination over the plan (tensor records t), with
   * no step state and nothing carried yet. */
  auto plan_launch = [&](const fo_plan_tensor *t) {
    fo_step_launch l;
    memset(&l, 0, sizeof l);
    l.blocks = blocks.data();
    l.tensors = t;
    l.num_blocks = nb;
    l.chunk = chunk;
    l.algorithm = (int32_t)c.alg;
    l.param_dtype = (int32_t)c.pt;
    l.grad_dtype = (int32_t)c.gt;
    l.master = c.master && c.pt != FO_DTYPE_F32;
    l.stochastic = c.sr;
    l.num_groups = 2;
    return l;
  };

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

    fo_step_launch a = plan_launch(tensors.data());
    a.seed = o.seed;
    /* odd steps: the scalars from the step state, as a step after the
     * prepare kernel reads them (the carried copy is poisoned and must be
     * ignored); even steps: carried by value, as the host decides an eager
     * step, with a state that is poison but for what the launch publishes
     * into it (the blocks must not read it) */
    fo_step_state published;
    memset(&published, 0xa5, sizeof published);
    const fo_step_state poison = published;
    if (step % 2) {
      a.state = opt->state;
      memset(&a.k, 0xff, sizeof a.k);
    } else {
      a.state = &published;
      a.known = 1;
      fo_known_from_state(st, 2, &a.k);
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
        const int W =
            fo_step_shape<FO_RULE_SGD, FO_RULE_F32, FO_RULE_F32>::W; /* 4 for every dtype */
        if (layout[i] == ALIGNED && chunk % W == 0 && numel[i] >= W)
          cr_assert_gt(cov.vector_visits[i], 0,
                       "%s: aligned tensor %" PRId64 " (numel %" PRId64
                       ") never took the vector path",
                       sctx, i, numel[i]);
        if (layout[i] == NO_VECTOR || layout[i] == MISALIGNED_PG)
          cr_assert_eq(cov.vector_visits[i], 0, "%s: tensor %" PRId64 " (%s) took the vector path",
                       sctx, i, layout_name(layout[i]));
      }
    } else {
      run_step(a, nullptr, sctx);
    }

    /* the kernel's entry publishes a carried step from block 0, thread 0
     * only: exactly the fields an applied step sets, the rest untouched */
    for (int64_t b = 0; b < nb; b++)
      for (int tid : {0, 1, 255})
        if (b || tid) fo_publish_known_block(a, b, tid);
    cr_assert(memcmp(&published, &poison, sizeof poison) == 0,
              "%s: a block or thread other than block 0's thread 0 published", sctx);
    fo_publish_known_block(a, 0, 0);
    if (a.known) {
      cr_assert_eq(published.step, st->step, "%s", sctx);
      cr_assert_eq(published.skipped, st->skipped, "%s", sctx);
      cr_assert_eq(published.skip, 0, "%s", sctx);
      cr_assert(memcmp(&published.grad_norm, &st->grad_norm, 3 * sizeof(float)) == 0,
                "%s: norm, coefficient, lr factor", sctx);
      cr_assert(memcmp(published.groups, st->groups, 2 * sizeof st->groups[0]) == 0,
                "%s: the groups' scalars", sctx);
      cr_assert(memcmp(published.mu_product, st->mu_product, 2 * sizeof(float)) == 0, "%s", sctx);
      cr_assert(memcmp(&published.scale, &poison.scale, 3 * sizeof(int32_t)) == 0,
                "%s: the scaler's fields were written", sctx);
      cr_assert(memcmp(&published.groups[2], &poison.groups[2],
                       (FO_PLAN_MAX_GROUPS - 2) * sizeof st->groups[0]) == 0,
                "%s: a group past the carried ones was written", sctx);
      cr_assert(memcmp(&published.mu_product[2], &poison.mu_product[2],
                       (FO_PLAN_MAX_GROUPS - 2) * sizeof(float)) == 0,
                "%s", sctx);
    }

    /* compare every buffer with the CPU executor, bit for bit */
    for (int64_t i = 0; i < nt; i++) {
      const int64_t n = numel[i];
      int64_t d = first_diff(param[i].data, cpu_param[i].data(), n, ps);
      if (d >= 0)
        cr_assert_fail("%s: tensor %" PRId64 " (numel %" PRId64 ", %s) param[%" PRId64
                       "] = %.9g, CPU executor %.9g",
                       sctx, i, n, layout_name(layout[i]), d, element_value(c.pt, param[i].data, d),
                       element_value(c.pt, cpu_param[i].data(), d));
      for (int r = 0; r < 4; r++) {
        float *want = nullptr;
        if (fo_optimizer_state_ptr(opt, i, STATE_ROLES[r], &want) != FO_SUCCESS || n == 0) continue;
        const float *got = (const float *)state[(size_t)(i * 4 + r)].data;
        d = first_diff(got, want, n, 4);
        if (d >= 0)
          cr_assert_fail("%s: tensor %" PRId64 " (numel %" PRId64 ", %s) state role %d [%" PRId64
                         "] = %.9g, CPU executor %.9g",
                         sctx, i, n, layout_name(layout[i]), (int)STATE_ROLES[r], d, (double)got[d],
                         (double)want[d]);
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
    fo_step_launch a = plan_launch(tensors.data());
    a.state = &skipped;
    memset(&a.k, 0xff, sizeof a.k);
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

  /* A broken plan does nothing where it is broken, rather than fault or
   * write garbage: a carried launch whose blocks name a group past the
   * carried ones (the slot poisoned), and a master-weight step over a
   * tensor whose master is missing. */
  for (int broken = 0; broken < 2; broken++) {
    const bool masters = c.master && c.pt != FO_DTYPE_F32;
    if (broken == 1 && !masters) continue;
    std::vector<fo_plan_tensor> bt = tensors;
    int64_t victim = -1; /* broken == 1: the tensor without its master */
    for (int64_t i = 0; i < nt && broken == 1 && victim < 0; i++)
      if (numel[i] > 0) victim = i;
    if (victim >= 0) bt[(size_t)victim].master = nullptr;
    fo_step_state sink;
    memset(&sink, 0xa5, sizeof sink);
    fo_step_launch a = plan_launch(bt.data());
    a.state = &sink;
    a.known = 1;
    memset(&a.k, 0xff, sizeof a.k);
    fo_known_from_state(opt->state, broken == 0 ? 1 : 2, &a.k);
    if (broken == 0) memset(&a.k.groups[1], 0xff, sizeof a.k.groups[1]); /* past the carried */
    std::vector<std::vector<unsigned char>> before;
    for (int64_t i = 0; i < nt; i++) {
      before.emplace_back((unsigned char *)param[i].data,
                          (unsigned char *)param[i].data + param[i].bytes);
      for (int r = 0; r < 4; r++) {
        const Buf &b = state[(size_t)(i * 4 + r)];
        before.emplace_back((unsigned char *)b.data, (unsigned char *)b.data + b.bytes);
      }
    }
    Coverage cov = step_coverage();
    char bctx[256];
    snprintf(bctx, sizeof bctx, "%s, %s", ctx,
             broken == 0 ? "a block of a group past the carried ones" : "a missing master");
    run_step(a, &cov, bctx);
    int64_t spared = 0;
    for (int64_t i = 0; i < nt; i++) {
      const bool untouched = broken == 0 ? tensors[(size_t)i].group >= 1 : i == victim;
      if (!untouched || numel[i] == 0) continue;
      spared++;
      for (uint8_t hit : cov.hits[(size_t)i])
        cr_assert_eq(hit, 0, "%s: tensor %" PRId64 " was visited", bctx, i);
      cr_assert(memcmp(before[(size_t)(i * 5)].data(), param[i].data, param[i].bytes) == 0,
                "%s: tensor %" PRId64 "'s parameter changed", bctx, i);
      for (int r = 0; r < 4; r++) {
        const Buf &b = state[(size_t)(i * 4 + r)];
        cr_assert(
            b.bytes == 0 || memcmp(before[(size_t)(i * 5 + 1 + r)].data(), b.data, b.bytes) == 0,
            "%s: tensor %" PRId64 "'s state %d changed", bctx, i, r);
      }
    }
    cr_assert_gt(spared, 0, "%s: no tensor to spare", bctx);
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

}  // namespace

Test(block_work, step_matches_cpu_executor_sgd) {
  run_algorithm(FO_ALG_SGD);
}
Test(block_work, step_matches_cpu_executor_adam) {
  run_algorithm(FO_ALG_ADAM);
}
Test(block_work, step_matches_cpu_executor_adamw) {
  run_algorithm(FO_ALG_ADAMW);
}
Test(block_work, step_matches_cpu_executor_lion) {
  run_algorithm(FO_ALG_LION);
}
