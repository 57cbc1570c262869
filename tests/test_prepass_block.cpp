/*
 * test_prepass_block.cpp -- CPU tier of the gradient pre-pass and the
 * unscale write-back: runs the kernels' own block work (block_work.cuh) for
 * every block and every thread slot over host buffers.
 *
 *   - the per-thread sums of squares of a block add up to the block's sum
 *     of squares computed plainly here, for every gradient dtype, aligned
 *     and misaligned buffers, odd sizes;
 *   - a single inf or NaN anywhere makes exactly its block's partial
 *     non-finite;
 *   - unscale multiplies every element once by grad_coef (bit-exact against
 *     a plain loop), touches nothing outside the tensors, and does nothing
 *     when the state says the step was skipped.
 */
#include <criterion/criterion.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "block_work.cuh"
#include "internal.h"

namespace {

const int64_t kChunk = 4096;
const int kThreads = FO_CUDA_THREADS;
const int64_t kSizes[] = {1, 7, 4095, 4096, 4097, 10007, 0, 33, 8192 + 3};
const int kNumTensors = sizeof kSizes / sizeof kSizes[0];

uint64_t rng = 0x1234;
float next_value() { /* (-4, 4), never 0 */
  rng = rng * 6364136223846793005ull + 1442695040888963407ull;
  float u = (float)((rng >> 40) + 1) * 0x1.0p-24f;
  return 8.0f * u - 4.0f + 0x1.0p-20f;
}

/* One buffer holding every tensor's gradients, each tensor starting
 * `skew` elements past a 16-byte boundary (skew != 0: the scalar path). */
struct grads {
  int dtype;
  size_t esize;
  std::vector<unsigned char> bytes;
  std::vector<int64_t> offset; /* element offset of each tensor */
  std::vector<fo_plan_tensor> tensors;
  std::vector<fo_plan_block> blocks;

  grads(int dt, int skew) : dtype(dt), esize(dt == FO_RULE_F32 ? 4 : 2) {
    int64_t at = 64; /* guard zone before the first tensor */
    for (int i = 0; i < kNumTensors; i++) {
      offset.push_back(at + skew);
      at += kSizes[i] + 64 + skew;
      at = (at + 7) / 8 * 8;
    }
    bytes.assign((size_t)(at + 64) * esize + 16, 0xA5);
    unsigned char *base = aligned_base();
    for (int i = 0; i < kNumTensors; i++) {
      fo_plan_tensor t;
      memset(&t, 0, sizeof t);
      t.grad = base + (size_t)offset[i] * esize;
      t.numel = kSizes[i];
      t.vector_ok = skew == 0;
      tensors.push_back(t);
      for (int64_t k = 0; k < kSizes[i]; k++) set(i, k, next_value());
    }
    int64_t nb = fo_plan_count_blocks(tensors.data(), kNumTensors, kChunk);
    blocks.resize((size_t)nb);
    fo_plan_fill_blocks(tensors.data(), kNumTensors, kChunk, blocks.data());
  }
  unsigned char *aligned_base() {
    uintptr_t p = (uintptr_t)bytes.data();
    return (unsigned char *)((p + 15) & ~(uintptr_t)15);
  }
  float get(int i, int64_t k) const {
    const void *p = (const unsigned char *)tensors[i].grad + (size_t)k * esize;
    if (dtype == FO_RULE_F32) {
      float f;
      memcpy(&f, p, 4);
      return f;
    }
    uint16_t h;
    memcpy(&h, p, 2);
    return dtype == FO_RULE_F16 ? fo_f16_to_f32(h) : fo_bf16_to_f32(h);
  }
  void set(int i, int64_t k, float x) {
    void *p = (unsigned char *)tensors[i].grad + (size_t)k * esize;
    if (dtype == FO_RULE_F32) {
      memcpy(p, &x, 4);
      return;
    }
    uint16_t h = dtype == FO_RULE_F16 ? fo_f32_to_f16(x) : fo_f32_to_bf16(x);
    memcpy(p, &h, 2);
  }
  fo_plan_args args() const {
    return fo_plan_args{blocks.data(), tensors.data(), (int64_t)blocks.size(), kChunk};
  }
};

/* The block's partial as the kernel computes it: each thread's share, in
 * thread order (the device then reduces the shares in its own tree). */
double block_partial(const grads &g, int64_t b) {
  const fo_plan_args a = g.args();
  double sum = 0.0;
  for (int tid = 0; tid < kThreads; tid++) {
    switch (g.dtype) {
      case FO_RULE_F32: sum += fo_grad_sumsq_block<FO_RULE_F32>(a, b, tid, kThreads); break;
      case FO_RULE_F16: sum += fo_grad_sumsq_block<FO_RULE_F16>(a, b, tid, kThreads); break;
      default: sum += fo_grad_sumsq_block<FO_RULE_BF16>(a, b, tid, kThreads); break;
    }
  }
  return sum;
}

double plain_partial(const grads &g, int64_t b) {
  const fo_plan_block blk = g.blocks[(size_t)b];
  const int i = (int)blk.tensor;
  const int64_t end = std::min(kSizes[i], blk.start + kChunk);
  double sum = 0.0;
  for (int64_t k = blk.start; k < end; k++) sum += (double)g.get(i, k) * g.get(i, k);
  return sum;
}

void unscale_all(const grads &g, const fo_step_state &st) {
  const fo_plan_args a = g.args();
  for (int64_t b = 0; b < (int64_t)g.blocks.size(); b++)
    for (int tid = 0; tid < kThreads; tid++) switch (g.dtype) {
        case FO_RULE_F32: fo_unscale_block<FO_RULE_F32>(a, &st, b, tid, kThreads); break;
        case FO_RULE_F16: fo_unscale_block<FO_RULE_F16>(a, &st, b, tid, kThreads); break;
        default: fo_unscale_block<FO_RULE_BF16>(a, &st, b, tid, kThreads); break;
      }
}

const int kDtypes[] = {FO_RULE_F32, FO_RULE_F16, FO_RULE_BF16};

}  // namespace

Test(prepass_block, partials_equal_the_plain_sum_of_squares) {
  for (int dt : kDtypes)
    for (int skew : {0, 1, 3}) {
      grads g(dt, skew);
      cr_assert_gt(g.blocks.size(), (size_t)kNumTensors);
      for (int64_t b = 0; b < (int64_t)g.blocks.size(); b++) {
        double got = block_partial(g, b), want = plain_partial(g, b);
        /* same squares, different order of addition: a few ulps of a double */
        cr_assert(std::fabs(got - want) <= 1e-12 * want, "dtype %d skew %d block %lld: %.17g vs %.17g",
                  dt, skew, (long long)b, got, want);
        cr_assert_gt(got, 0.0);
      }
    }
}

Test(prepass_block, one_non_finite_gradient_poisons_exactly_its_block) {
  for (int dt : kDtypes)
    for (float bad : {INFINITY, -INFINITY, NAN}) {
      grads g(dt, dt == FO_RULE_F32 ? 0 : 1);
      const int victim = 5;           /* 10007 elements: 3 blocks */
      const int64_t elem = 4096 + 17; /* in the tensor's second block */
      g.set(victim, elem, bad);
      for (int64_t b = 0; b < (int64_t)g.blocks.size(); b++) {
        const fo_plan_block blk = g.blocks[(size_t)b];
        const bool poisoned = blk.tensor == victim && blk.start == 4096;
        cr_assert_eq(!std::isfinite(block_partial(g, b)), poisoned,
                     "dtype %d: block %lld (tensor %lld at %lld)", dt, (long long)b,
                     (long long)blk.tensor, (long long)blk.start);
      }
    }
}

Test(prepass_block, unscale_multiplies_every_element_once) {
  for (int dt : kDtypes)
    for (int skew : {0, 1}) {
      grads g(dt, skew);
      std::vector<unsigned char> before = g.bytes;
      std::vector<std::vector<float>> want(kNumTensors);
      fo_step_state st;
      memset(&st, 0, sizeof st);
      st.grad_coef = 0.3f; /* not a power of two: rounding is exercised */
      for (int i = 0; i < kNumTensors; i++)
        for (int64_t k = 0; k < kSizes[i]; k++) {
          float x = g.get(i, k) * st.grad_coef;
          /* what one rounding to the gradient dtype gives */
          if (dt == FO_RULE_F16) x = fo_f16_to_f32(fo_f32_to_f16(x));
          if (dt == FO_RULE_BF16) x = fo_bf16_to_f32(fo_f32_to_bf16(x));
          want[(size_t)i].push_back(x);
        }
      unscale_all(g, st);
      for (int i = 0; i < kNumTensors; i++)
        for (int64_t k = 0; k < kSizes[i]; k++)
          cr_assert_eq(g.get(i, k), want[(size_t)i][(size_t)k], "dtype %d tensor %d elem %lld", dt,
                       i, (long long)k);
      /* nothing outside the tensors moved: compare every byte that is not
       * a tensor element */
      std::vector<bool> inside(g.bytes.size(), false);
      const size_t base = (size_t)(g.aligned_base() - g.bytes.data());
      for (int i = 0; i < kNumTensors; i++)
        for (size_t k = 0; k < (size_t)kSizes[i] * g.esize; k++)
          inside[base + (size_t)g.offset[(size_t)i] * g.esize + k] = true;
      for (size_t k = 0; k < g.bytes.size(); k++)
        if (!inside[k]) cr_assert_eq(g.bytes[k], before[k], "byte %zu outside the tensors", k);
    }
}

Test(prepass_block, unscale_does_nothing_after_a_skipped_step) {
  grads g(FO_RULE_BF16, 0);
  std::vector<unsigned char> before = g.bytes;
  fo_step_state st;
  memset(&st, 0, sizeof st);
  st.grad_coef = 0.5f;
  st.skip = 1;
  unscale_all(g, st);
  cr_assert_eq(memcmp(g.bytes.data(), before.data(), before.size()), 0);
}
