/*
 * test_block_work_coverage.cpp -- the kernels' own index arithmetic, run
 * on the CPU (docs/gpu-verification.md; the rig:
 * tests/support/block_work_rig.hpp).
 *
 * kernels/block_work.cuh holds the whole work of one thread block of the
 * step, sync-master and zero-grad kernels; the __global__ kernels only call
 * it.  Here g++ compiles the same header and the tests run it for every
 * block of a plan and every thread slot (FO_CUDA_THREADS of them), over host
 * buffers with poisoned guard zones:
 *
 *   coverage: a spy wraps the kernel's own visitor and records, for
 *       every access the loop makes, the (block, thread) and the elements;
 *       each element must be touched exactly once, inside its block, and
 *       every vector access must be one aligned access of at most 16 bytes
 *       in every buffer it touches (on the host a misaligned vector access
 *       would go unnoticed; on the GPU it faults; a wider one would be
 *       several loads at a stride, which wastes half of each sector per
 *       instruction).  Guard zones must stay poisoned.
 *   The sync-master and zero-grad kernels over a plan, and the loop alone
 *   for shapes and thread counts the kernels do not use today.
 *   fo_piece_blocks, which LAMB's and LARS's per-tensor sums use to find
 *   the blocks of the optimizer's tensor k in a plan that may hold only
 *   some tensors (a shard's), against a linear scan.
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
  int64_t by_vector = 0, by_scalar = 0; /* elements each path visited */
  template <int N, int K>
  void operator()(const int64_t (&off)[K]) {
    for (int k = 0; k < K; k++) {
      if (off[k] == -1) continue;
      if (off[k] < 0 || off[k] + N > n)
        cr_assert_fail("access [%" PRId64 ", +%d) of %" PRId64, off[k], N, n);
      for (int j = 0; j < N; j++) (*hits)[(size_t)(off[k] + j)]++;
      (N > 1 ? by_vector : by_scalar) += N;
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
  /* every whole vector on the vector path, only the tail of n % W on the
   * scalar one (a last whole vector sent to the scalar path is correct but
   * slow, and misses the vector path's own checks) */
  const int64_t want_vec = vec && W > 1 ? n / W * W : 0;
  if (rec.by_vector != want_vec || rec.by_scalar != n - want_vec)
    cr_assert_fail("W %d ILP %d/%d n %" PRId64 " vec %d nthreads %d: %" PRId64
                   " elements by vectors, %" PRId64 " one at a time; want %" PRId64 " and %" PRId64,
                   W, IV, IS, n, (int)vec, nthreads, rec.by_vector, rec.by_scalar, want_vec,
                   n - want_vec);
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
        run_spied<fo_sync_master_op<FO_RULE_BF16>>(pa, pa.blocks, pa.tensors, nb, chunk, &cov, ctx);
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

/* A shard's plan holds pieces of some of the optimizer's tensors only (in
 * index order, an empty tensor among them here too): for every tensor k,
 * fo_piece_blocks gives exactly the blocks of k's piece, and an empty range
 * for a tensor the plan does not hold (whose sums must stay 0: another
 * tensor's blocks there would add its norms to k's across the ranks). */
Test(block_work, piece_blocks_find_each_piece) {
  tu_rng rng;
  tu_rng_seed(&rng, 11, 3);
  for (int rep = 0; rep < 200; rep++) {
    const int64_t all = 1 + (int64_t)(tu_rng_u32(&rng) % 12); /* the optimizer's tensors */
    const int64_t chunk = 1 + (int64_t)(tu_rng_u32(&rng) % 700);
    std::vector<fo_plan_tensor> tensors;
    for (int64_t k = 0; k < all; k++) {
      if (tu_rng_u32(&rng) % 3 == 0) continue; /* not in this plan */
      fo_plan_tensor t;
      memset(&t, 0, sizeof t);
      t.index = k;
      t.numel = tu_rng_u32(&rng) % 5 == 0 ? 0 : 1 + (int64_t)(tu_rng_u32(&rng) % 3000);
      tensors.push_back(t);
    }
    const int64_t nt = (int64_t)tensors.size();
    const int64_t nb = fo_plan_count_blocks(tensors.data(), nt, chunk);
    std::vector<fo_plan_block> blocks((size_t)nb + 1);
    fo_plan_fill_blocks(tensors.data(), nt, chunk, blocks.data());
    for (int64_t k = -1; k <= all; k++) {
      int64_t want_lo = -1, want_hi = -1, count = 0;
      for (int64_t b = 0; b < nb; b++)
        if (tensors[(size_t)blocks[(size_t)b].tensor].index == k) {
          if (want_lo < 0) want_lo = b;
          want_hi = b + 1;
          count++;
        }
      int64_t lo = -7, hi = -7;
      fo_piece_blocks(blocks.data(), tensors.data(), nb, nt, k, &lo, &hi);
      if (count == 0) {
        cr_assert_eq(lo, hi,
                     "rep %d: tensor %" PRId64 " is not in the plan, but blocks [%" PRId64
                     ", %" PRId64 ") were found",
                     rep, k, lo, hi);
      } else {
        cr_assert_eq(want_hi - want_lo, count, "the plan's blocks of a tensor are consecutive");
        cr_assert(lo == want_lo && hi == want_hi,
                  "rep %d: tensor %" PRId64 ": blocks [%" PRId64 ", %" PRId64 "), want [%" PRId64
                  ", %" PRId64 ")",
                  rep, k, lo, hi, want_lo, want_hi);
      }
    }
  }
}
