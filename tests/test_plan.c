/*
 * test_plan.c -- the launch plan (host/plan.c), CPU tier.
 *
 * The plan decides which block covers which chunk of which tensor; a kernel
 * that trusts it touches exactly the elements it lists.  These tests check,
 * for thousands of random size lists and for the edge sizes, that
 * fo_plan_count_blocks() and fo_plan_fill_blocks() produce blocks that are
 * sorted, inside their tensors, tile each tensor with no gap and no
 * overlap, skip empty tensors, and that the count refuses to overflow.
 *
 * Coverage is proved by interval arithmetic (each block starts where the
 * previous block of its tensor ended, and the last one ends at numel), so
 * sizes past 2^31 and up to 2^40 need no buffer.  Small lists are also
 * checked element by element, as a second, independent proof.
 */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "launch.h"
#include "testutil.h"

/* A sentinel written after the last block: fill must not touch it. */
static const fo_plan_block SENTINEL = {-7, -7, -7, -7};

/* ceil(numel / chunk) in 128-bit arithmetic: the textbook formula, which
 * cannot overflow here, as an independent check of the library's. */
static unsigned __int128 blocks_of(int64_t numel, int64_t chunk) {
  return ((unsigned __int128)numel + (unsigned __int128)chunk - 1) /
         (unsigned __int128)chunk;
}

static unsigned __int128 expected_count(const fo_plan_tensor *t, int64_t n,
                                        int64_t chunk) {
  unsigned __int128 sum = 0;
  for (int64_t i = 0; i < n; i++) sum += blocks_of(t[i].numel, chunk);
  return sum;
}

static void set_sizes(fo_plan_tensor *t, const int64_t *numel, int64_t n) {
  memset(t, 0, (size_t)n * sizeof *t);
  for (int64_t i = 0; i < n; i++) {
    t[i].numel = numel[i];
    t[i].group = (int32_t)(i % 3);
  }
}

/* Check blocks[0..count) against the tensor list; fails the test with the
 * context in ctx. */
static void check_blocks(const fo_plan_tensor *t, int64_t n, int64_t chunk,
                         const fo_plan_block *blocks, int64_t count,
                         const char *ctx) {
  int64_t k = 0;
  for (int64_t i = 0; i < n; i++) {
    const int64_t numel = t[i].numel;
    int64_t covered = 0; /* elements [0, covered) of tensor i are covered */
    while (k < count && blocks[k].tensor == i) {
      const fo_plan_block b = blocks[k];
      cr_assert_eq(b.start, covered,
                   "%s: block %lld of tensor %lld starts at %lld, expected %lld "
                   "(gap, overlap or unsorted)",
                   ctx, (long long)k, (long long)i, (long long)b.start,
                   (long long)covered);
      cr_assert(b.start >= 0 && b.start < numel,
                "%s: block %lld start %lld outside tensor %lld of %lld elements", ctx,
                (long long)k, (long long)b.start, (long long)i, (long long)numel);
      cr_assert_eq(b.start % chunk, 0, "%s: block %lld start %lld is not a multiple of %lld",
                   ctx, (long long)k, (long long)b.start, (long long)chunk);
      /* the step reads its group's scalars by the block record's group */
      cr_assert(b.group == t[i].group && b.reserved == 0,
                "%s: block %lld has group %d (reserved %d); its tensor %lld is in group %d", ctx,
                (long long)k, (int)b.group, (int)b.reserved, (long long)i, (int)t[i].group);
      /* end = min(start + chunk, numel), without forming start + chunk */
      covered = numel - b.start <= chunk ? numel : b.start + chunk;
      k++;
    }
    cr_assert_eq(covered, numel,
                 "%s: tensor %lld of %lld elements is covered up to %lld only (next "
                 "block %lld has tensor %lld)",
                 ctx, (long long)i, (long long)numel, (long long)covered, (long long)k,
                 k < count ? (long long)blocks[k].tensor : -1LL);
  }
  cr_assert_eq(k, count, "%s: block %lld has tensor %lld: out of order or out of range",
               ctx, (long long)k, (long long)blocks[k].tensor);
}

/* Count, fill and check one size list; small totals are also checked by
 * counting every element's blocks.  Returns the block count. */
static int64_t run_plan(const int64_t *numel, int64_t n, int64_t chunk, const char *ctx) {
  fo_plan_tensor *t = calloc((size_t)n + 1, sizeof *t);
  cr_assert_not_null(t);
  set_sizes(t, numel, n);
  const int64_t count = fo_plan_count_blocks(t, n, chunk);
  const unsigned __int128 want = expected_count(t, n, chunk);
  cr_assert(want <= INT64_MAX, "%s: the test's list overflows", ctx);
  cr_assert_eq(count, (int64_t)want, "%s: %lld blocks, expected %lld", ctx,
               (long long)count, (long long)want);

  fo_plan_block *blocks = malloc(((size_t)count + 1) * sizeof *blocks);
  cr_assert_not_null(blocks, "%s: no memory for %lld blocks", ctx, (long long)count);
  for (int64_t k = 0; k <= count; k++) blocks[k] = SENTINEL;
  fo_plan_fill_blocks(t, n, chunk, blocks);
  cr_assert(blocks[count].tensor == SENTINEL.tensor && blocks[count].start == SENTINEL.start &&
                blocks[count].group == SENTINEL.group,
            "%s: fill wrote past its %lld blocks", ctx, (long long)count);
  check_blocks(t, n, chunk, blocks, count, ctx);

  /* Second proof for small lists: every element's number of covering
   * blocks, counted one by one, is exactly 1. */
  int64_t total = 0;
  for (int64_t i = 0; i < n; i++) total += numel[i] < (1 << 21) ? numel[i] : (1 << 21);
  if (total <= (1 << 20)) {
    int64_t *base = calloc((size_t)n + 1, sizeof *base);
    cr_assert_not_null(base);
    for (int64_t i = 0; i < n; i++) base[i + 1] = base[i] + numel[i];
    unsigned char *hits = calloc((size_t)base[n] + 1, 1);
    cr_assert_not_null(hits);
    for (int64_t k = 0; k < count; k++) {
      const fo_plan_block b = blocks[k];
      for (int64_t e = b.start; e < b.start + chunk && e < numel[b.tensor]; e++)
        hits[base[b.tensor] + e]++;
    }
    for (int64_t i = 0; i < n; i++)
      for (int64_t e = 0; e < numel[i]; e++)
        cr_assert_eq(hits[base[i] + e], 1, "%s: element %lld of tensor %lld covered %d times",
                     ctx, (long long)e, (long long)i, hits[base[i] + e]);
    free(hits);
    free(base);
  }
  free(blocks);
  free(t);
  return count;
}

static const int64_t PRIMES[] = {2,    3,    5,     7,     11,    13,     31,      127,
                                 509,  4093, 8191,  16381, 32749, 32771,  65521,   65537,
                                 99991, 131071, 524287, 1000003, 2147483647LL};

/* One random size relative to chunk, within a budget of blocks. */
static int64_t random_size(tu_rng *r, int64_t chunk, int64_t budget) {
  int64_t s;
  switch (tu_rng_u32(r) % 8) {
    case 0: s = 0; break;
    case 1: s = 1; break;
    case 2: s = PRIMES[tu_rng_u32(r) % (sizeof PRIMES / sizeof PRIMES[0])]; break;
    case 3: /* around a chunk boundary: k*chunk - 1, k*chunk, k*chunk + 1 */
      s = (int64_t)(1 + tu_rng_u32(r) % 4) * chunk + (int64_t)(tu_rng_u32(r) % 3) - 1;
      break;
    case 4: s = (int64_t)(tu_rng_u32(r) % 8) * chunk; break;
    case 5: /* past 2^31 elements, up to 2^40 */
      s = ((int64_t)1 << 31) - 2 +
          (int64_t)(tu_rng_u64(r) % (((uint64_t)1 << 40) - ((uint64_t)1 << 31)));
      break;
    default: s = 1 + (int64_t)(tu_rng_u64(r) % (uint64_t)(5 * chunk + 7)); break;
  }
  if (s < 0) s = 0;
  /* keep the plan's memory small: a size past the budget shrinks */
  if ((int64_t)blocks_of(s, chunk) > budget) s = (int64_t)(tu_rng_u32(r) % 3);
  return s;
}

Test(plan, empty_list_and_empty_tensors) {
  cr_assert_eq(fo_plan_count_blocks(NULL, 0, 32768), 0);
  const int64_t zeros[] = {0, 0, 0};
  cr_assert_eq(run_plan(zeros, 3, 32768, "three empty tensors"), 0);
  const int64_t mixed[] = {0, 5, 0, 0, 70000, 0};
  cr_assert_eq(run_plan(mixed, 6, 32768, "empty tensors between"), 4);
}

Test(plan, invalid_arguments) {
  fo_plan_tensor t[2];
  const int64_t sizes[] = {10, 20};
  set_sizes(t, sizes, 2);
  cr_assert_eq(fo_plan_count_blocks(t, 2, 0), -1, "chunk 0");
  cr_assert_eq(fo_plan_count_blocks(t, 2, -5), -1, "negative chunk");
  cr_assert_eq(fo_plan_count_blocks(t, -1, 8), -1, "negative tensor count");
  cr_assert_eq(fo_plan_count_blocks(NULL, 2, 8), -1, "NULL table");
  t[1].numel = -1;
  cr_assert_eq(fo_plan_count_blocks(t, 2, 8), -1, "negative numel");
}

Test(plan, sizes_around_chunk_boundaries) {
  const int64_t chunks[] = {1, 2, 3, 7, 8, 128, 1000, FO_CPU_CHUNK, FO_CUDA_CHUNK};
  for (size_t c = 0; c < sizeof chunks / sizeof chunks[0]; c++) {
    const int64_t ch = chunks[c];
    int64_t sizes[64];
    int64_t n = 0;
    sizes[n++] = 0;
    sizes[n++] = 1;
    for (int64_t k = 1; k <= 4; k++) {
      sizes[n++] = k * ch - 1;
      sizes[n++] = k * ch;
      sizes[n++] = k * ch + 1;
    }
    sizes[n++] = 17 * ch;
    for (size_t p = 0; p < 12; p++) sizes[n++] = PRIMES[p];
    char ctx[64];
    snprintf(ctx, sizeof ctx, "boundaries, chunk %lld", (long long)ch);
    run_plan(sizes, n, ch, ctx);
    /* and each size alone */
    for (int64_t i = 0; i < n; i++) {
      snprintf(ctx, sizeof ctx, "size %lld alone, chunk %lld", (long long)sizes[i],
               (long long)ch);
      run_plan(&sizes[i], 1, ch, ctx);
    }
  }
}

Test(plan, random_size_lists) {
  const int64_t chunks[] = {1,    2,    3,           5,           8,       64,      127,
                            128,  1000, FO_CPU_CHUNK, FO_CUDA_CHUNK, 1 << 17, 1 << 20, 1 << 24};
  tu_rng r;
  tu_rng_seed(&r, 20261123u, 1u);
  for (int list = 0; list < 3000; list++) {
    int64_t chunk = (list % 5 == 4) ? 1 + (int64_t)(tu_rng_u32(&r) % 100000)
                                     : chunks[tu_rng_u32(&r) % (sizeof chunks / sizeof chunks[0])];
    int64_t n = (int64_t)(tu_rng_u32(&r) % 49);
    int64_t sizes[48];
    int64_t budget = 70000;
    for (int64_t i = 0; i < n; i++) {
      sizes[i] = random_size(&r, chunk, budget);
      budget -= (int64_t)blocks_of(sizes[i], chunk);
    }
    char ctx[96];
    snprintf(ctx, sizeof ctx, "list %d (%lld tensors, chunk %lld)", list, (long long)n,
             (long long)chunk);
    run_plan(sizes, n, chunk, ctx);
  }
}

Test(plan, sizes_past_2_31_by_arithmetic) {
  /* Filled and checked: up to ~70K blocks each. */
  const int64_t two31 = (int64_t)1 << 31;
  const int64_t big[] = {two31 - 1, two31, two31 + 1, 3 * two31 + 12345, 0, 7};
  run_plan(big, 6, FO_CUDA_CHUNK * 4, "around 2^31, chunk 4*CUDA_CHUNK");
  const int64_t one31[] = {two31 + 1};
  cr_assert_eq(run_plan(one31, 1, FO_CUDA_CHUNK, "2^31 + 1, CUDA chunk"),
               (two31 / FO_CUDA_CHUNK) + 1);
  const int64_t two40[] = {((int64_t)1 << 40), ((int64_t)1 << 40) - 1, ((int64_t)1 << 40) + 1};
  run_plan(two40, 3, (int64_t)1 << 24, "2^40, chunk 2^24");

  /* Counted only (the fill would need gigabytes): 2^40 elements with the
   * CUDA chunk are 2^25 blocks, past the 2^31 - 1 grid limit only beyond
   * 2^46 elements. */
  fo_plan_tensor t[3];
  const int64_t sizes[] = {(int64_t)1 << 40, ((int64_t)1 << 46) + 1, (int64_t)1 << 62};
  set_sizes(t, sizes, 3);
  cr_assert_eq(fo_plan_count_blocks(t, 1, FO_CUDA_CHUNK), (int64_t)1 << 25);
  cr_assert_eq(fo_plan_count_blocks(t + 1, 1, FO_CUDA_CHUNK), ((int64_t)1 << 31) + 1);
  cr_assert_eq(fo_plan_count_blocks(t, 3, FO_CUDA_CHUNK),
               (int64_t)expected_count(t, 3, FO_CUDA_CHUNK));
}

/* A bucket segment whose byte offsets pass 2^31 (2^29 + 40000 fp32
 * elements): every pack block's address and packed offset in 64 bits.
 * Only arithmetic on a made-up address; nothing is dereferenced. */
Test(plan, pack_cut_past_2_31_bytes) {
  char *const base = (char *)(uintptr_t)0x10000;
  const int64_t count = ((int64_t)1 << 29) + 40000, packed_at = 7;
  const int64_t k = fo_pack_cut(base, 4, count, packed_at, NULL);
  cr_assert_eq(k, (count + FO_PACK_CHUNK - 1) / FO_PACK_CHUNK);
  fo_pack_block *out = malloc((size_t)k * sizeof *out);
  cr_assert_not_null(out);
  cr_assert_eq(fo_pack_cut(base, 4, count, packed_at, out), k);
  for (int64_t b = 0; b < k; b++) {
    const int64_t start = b * FO_PACK_CHUNK;
    cr_assert_eq((uintptr_t)out[b].grad, (uintptr_t)base + (uintptr_t)start * 4u, "block %lld",
                 (long long)b);
    cr_assert_eq(out[b].packed_at, packed_at + start, "block %lld", (long long)b);
    const int64_t left = count - start;
    cr_assert_eq(out[b].n, left < FO_PACK_CHUNK ? left : FO_PACK_CHUNK, "block %lld", (long long)b);
  }
  free(out);
}

Test(plan, count_overflow_returns_minus_one) {
  fo_plan_tensor t[4];
  const int64_t max = INT64_MAX;
  /* INT64_MAX blocks fit exactly; one more block does not. */
  int64_t a[] = {max};
  set_sizes(t, a, 1);
  cr_assert_eq(fo_plan_count_blocks(t, 1, 1), max);
  int64_t b[] = {max, 1};
  set_sizes(t, b, 2);
  cr_assert_eq(fo_plan_count_blocks(t, 2, 1), -1, "INT64_MAX + 1 blocks");
  int64_t c[] = {1, max};
  set_sizes(t, c, 2);
  cr_assert_eq(fo_plan_count_blocks(t, 2, 1), -1, "1 + INT64_MAX blocks");
  /* numel + chunk - 1 would overflow: the count must not. */
  set_sizes(t, a, 1);
  cr_assert_eq(fo_plan_count_blocks(t, 1, 2), ((int64_t)1 << 62));
  cr_assert_eq(fo_plan_count_blocks(t, 1, max), 1);
  cr_assert_eq(fo_plan_count_blocks(t, 1, max - 1), 2);
  /* four tensors of 2^62 elements, chunk 1: 2^64 blocks */
  int64_t d[] = {(int64_t)1 << 62, (int64_t)1 << 62, (int64_t)1 << 62, (int64_t)1 << 62};
  set_sizes(t, d, 4);
  cr_assert_eq(fo_plan_count_blocks(t, 2, 1), -1, "2^63 blocks");
  cr_assert_eq(fo_plan_count_blocks(t, 4, 1), -1, "2^64 blocks");
  cr_assert_eq(fo_plan_count_blocks(t, 4, 4), ((int64_t)1 << 62), "2^62 blocks fit");
}

/* vector_ok (the kernels' 16-byte vector path) is set only where both the
 * parameter and the gradient start on a 16-byte boundary: an 8-byte
 * aligned buffer must take the scalar path. */
Test(plan, vector_ok_needs_16_byte_aligned_param_and_grad) {
  _Alignas(16) float buf[64] = {0};
  fo_tensor_desc t[3] = {
      {4, 0, buf, buf + 32, NULL},      /* both on 16 bytes */
      {4, 0, buf + 10, buf + 48, NULL}, /* param on 8 bytes only */
      {4, 0, buf + 16, buf + 42, NULL}, /* grad on 8 bytes only */
  };
  fo_options o;
  fo_options_default(&o);
  o.algorithm = FO_ALG_SGD;
  fo_hparams h;
  fo_hparams_default(FO_ALG_SGD, &h);
  fo_optimizer *opt = NULL;
  cr_assert_eq(fo_optimizer_create(&opt, &o, &h, 1, t, 3), FO_SUCCESS, "%s", fo_last_error());
  cr_expect_eq(opt->tensors[0].vector_ok, 1);
  cr_expect_eq(opt->tensors[1].vector_ok, 0, "param at 8 bytes past a 16-byte boundary");
  cr_expect_eq(opt->tensors[2].vector_ok, 0, "grad at 8 bytes past a 16-byte boundary");
  fo_optimizer_destroy(opt);
}
