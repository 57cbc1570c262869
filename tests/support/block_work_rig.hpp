/*
 * block_work_rig.hpp -- what the tests of the kernels' block work run on
 * the CPU share (test_block_work_*.cpp): g++ compiles kernels/block_work.cuh
 * and these run it for every block of a plan and every thread slot
 * (FO_CUDA_THREADS of them), over host buffers with poisoned guard zones.
 * A spy wraps a kernel's own visitor and records, for every access the
 * loop makes, the (block, thread) and the elements (Coverage).
 *
 * Layouts: each tensor gets one of four layouts of its buffers: all 16-byte
 * aligned (the vector path), aligned but vector_ok cleared (the scalar path
 * by the host's choice), parameter and gradient misaligned by a few
 * elements (offset views; the scalar path), and state buffers misaligned
 * while vector_ok says yes (the block work must notice and go scalar).
 *
 * A header (C++ templates and an anonymous namespace): each test program
 * includes it once.
 */
#ifndef FO_TEST_BLOCK_WORK_RIG_HPP
#define FO_TEST_BLOCK_WORK_RIG_HPP

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
   * (base pointer, element size): every vector access of w elements must
   * be one aligned access of at most 16 bytes in each of them (w times the
   * element size, a power of two).  Independent of the op's aligned_at(),
   * which is checked too. */
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

  bool model_aligned(size_t tensor, int64_t elem, int w) const {
    for (const Touch &t : touches[tensor]) {
      const uintptr_t bytes = (uintptr_t)w * t.elem;
      if (bytes > 16 || (bytes & (bytes - 1)) != 0) return false;
      if (((uintptr_t)t.base + (uintptr_t)elem * t.elem) & (bytes - 1)) return false;
    }
    return true;
  }

  /* Every element of every tensor touched exactly once. */
  void check_exactly_once(const char *ctx) const {
    for (size_t i = 0; i < hits.size(); i++)
      for (size_t e = 0; e < hits[i].size(); e++)
        if (hits[i][e] != 1)
          cr_assert_fail("%s: element %zu of tensor %zu (numel %zu) touched %d times", ctx, e, i,
                         hits[i].size(), (int)hits[i][e]);
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
      : op(o),
        n(o.n),
        vec(o.vec),
        cov(c),
        block(b),
        tensor(r.tensor),
        start(r.start),
        tid(t),
        ctx(x) {}

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
        if (!op.aligned_at(o) || !cov->model_aligned((size_t)tensor, start + o, W))
          cr_assert_fail("%s: block %" PRId64 " thread %d: vector access at %" PRId64
                         " is not one aligned access (at most 16 bytes) in every buffer it "
                         "touches",
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
               int64_t num_blocks, int64_t chunk, Coverage *cov, const char *ctx,
               int nthreads = NT) {
  for (int64_t b = 0; b < num_blocks; b++) {
    const fo_block_range r = fo_block_range_of(blocks, tensors, chunk, b);
    for (int tid = 0; tid < nthreads; tid++) {
      const Op op(a, b); /* as each GPU thread constructs its own */
      fo_run_block(Spy<Op>(op, cov, r, b, tid, ctx), tid, nthreads);
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

inline const char *layout_name(int l) {
  static const char *names[] = {"aligned", "vector_ok=0", "misaligned param/grad",
                                "misaligned state"};
  return names[l];
}

/* Random fp32 values in [-lo_hi, lo_hi] with about 2% exact zeros (sign(0)
 * and zero gradients matter to Lion and SGD), rounded to dtype's bytes. */
inline std::vector<unsigned char> random_bytes(tu_rng *r, fo_dtype dtype, int64_t n, double mag) {
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
inline int64_t first_diff(const void *a, const void *b, int64_t n, size_t elem) {
  const unsigned char *x = (const unsigned char *)a, *y = (const unsigned char *)b;
  if (n <= 0 || memcmp(x, y, (size_t)n * elem) == 0) return -1;
  for (int64_t i = 0; i < n; i++)
    if (memcmp(x + (size_t)i * elem, y + (size_t)i * elem, elem) != 0) return i;
  return -1;
}

inline double element_value(fo_dtype dtype, const void *p, int64_t i) {
  float f;
  if (dtype == FO_DTYPE_F32)
    memcpy(&f, (const float *)p + i, 4);
  else
    fo_convert_to_f32(dtype, (const uint16_t *)p + i, &f, 1);
  return (double)f;
}

/* Sizes that hit every tail: below W, W +- 1, nthreads*W +- 1, the chunk
 * +- 1, several chunks plus a ragged end, and an empty tensor. */
const int64_t CORE_SIZES[] = {1,
                              2,
                              3,
                              5,
                              7,
                              8,
                              9,
                              15,
                              16,
                              17,
                              31,
                              33,
                              255,
                              256,
                              257,
                              1023,
                              4095,
                              4097,
                              4111,
                              0,
                              FO_CUDA_CHUNK - 1,
                              FO_CUDA_CHUNK + 1,
                              2 * FO_CUDA_CHUNK + 13};

}  // namespace

#endif /* FO_TEST_BLOCK_WORK_RIG_HPP */
