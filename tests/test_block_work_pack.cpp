/*
 * test_block_work_pack.cpp -- CPU tier of the bucket pack and unpack
 * kernels (kernels/pack.cu): g++ compiles their block work
 * (kernels/pack_work.cuh) and this runs it for every block of a bucket's
 * pack table and every thread slot (FO_PACK_THREADS), over host buffers.
 *
 * A bucket here is a dozen segments scattered through one gradient buffer
 * (sizes from one element to a few chunks, some 16-byte aligned, some
 * not), with guard bytes between them; the table is the library's
 * (fo_pack_cut, the packed layout of host/dp/buckets.c: each segment at a
 * 16-byte boundary of the wire).  For every (gradient, wire) dtype pair:
 *   - every packed element is written exactly once, by one (block,
 *     thread), and the padding never; every vector access is one aligned access;
 *     both paths (vector and scalar) run;
 *   - pack equals the library's CPU conversion bit for bit (a plain copy
 *     for one dtype, exact widening to fp32), and so does unpack (round to
 *     nearest even), and the CPU executor's pack op writes the same bytes;
 *   - unpack inverts pack;
 *   - guard bytes around the segments and the wire's padding stay as they
 *     were, and the side that is read is not written.
 */
#include "block_work_rig.hpp"
#include "pack_work.cuh"
extern "C" {
#include "exec.h"
}

namespace {

const int NTH = FO_PACK_THREADS;
const unsigned char GUARD = 0xA5, POISON = 0xC3;

/* Segment sizes (elements) and their misalignment (elements; 0: 16-byte
 * aligned): one element, tails of a vector, exactly a chunk, a chunk and
 * one, several chunks. */
const int64_t COUNTS[] = {
    1, 3, 7, 8, 9, 100, 4101, FO_PACK_CHUNK, FO_PACK_CHUNK + 1, 1000, 2 * FO_PACK_CHUNK + 37, 5};
const int64_t SKEW[] = {0, 1, 0, 2, 0, 3, 0, 0, 1, 0, 0, 1};
const int NSEG = (int)(sizeof COUNTS / sizeof COUNTS[0]);

/* A scattered bucket: its gradient buffer (guards between segments), its
 * pack table, its packed buffer. */
struct Bucket {
  size_t gs, ws;
  std::vector<unsigned char> grads;  /* 16-byte aligned storage below */
  std::vector<int64_t> seg_byte;     /* each segment's byte offset in grads */
  std::vector<int64_t> seg_packed;   /* and its packed element offset */
  std::vector<fo_pack_block> blocks; /* the table */
  std::vector<int64_t> block_seg;    /* each block's segment */
  int64_t packed = 0;                /* the packed buffer's elements */
  std::vector<unsigned char> wire;

  Bucket(size_t g, size_t w) : gs(g), ws(w) {
    int64_t at = 0, p = 0;
    const int64_t align = 16 / (int64_t)ws;
    for (int s = 0; s < NSEG; s++) {
      at = (at + 64 + 15) / 16 * 16 + SKEW[s] * (int64_t)gs; /* a guard gap, then the skew */
      seg_byte.push_back(at);
      at += COUNTS[s] * (int64_t)gs;
      p = (p + align - 1) / align * align;
      seg_packed.push_back(p);
      p += COUNTS[s];
    }
    packed = p;
    grads.assign((size_t)at + 64 + 16, GUARD);
    wire.assign((size_t)packed * ws + 16, POISON);
    for (int s = 0; s < NSEG; s++) {
      int64_t k = fo_pack_cut(grad(s), gs, COUNTS[s], seg_packed[s], nullptr);
      size_t first = blocks.size();
      blocks.resize(first + (size_t)k);
      block_seg.resize(first + (size_t)k, s);
      cr_assert_eq(fo_pack_cut(grad(s), gs, COUNTS[s], seg_packed[s], &blocks[first]), k);
    }
  }
  /* 16-byte aligned bases (vectors' data are only 8- or 16-aligned by
   * chance otherwise) */
  unsigned char *gbase() {
    return (unsigned char *)(((uintptr_t)grads.data() + 15) & ~(uintptr_t)15);
  }
  unsigned char *wbase() {
    return (unsigned char *)(((uintptr_t)wire.data() + 15) & ~(uintptr_t)15);
  }
  void *grad(int s) { return gbase() + seg_byte[(size_t)s]; }
  void *packed_at(int s) { return wbase() + (size_t)seg_packed[(size_t)s] * ws; }
  fo_pack_launch launch() { return fo_pack_launch{blocks.data(), (int64_t)blocks.size(), wbase()}; }
};

/* Random bits for a dtype, never a NaN (a NaN need not survive a round
 * trip through another dtype), never all zeros. */
void fill_random(tu_rng *r, void *dst, int64_t n, size_t es) {
  for (int64_t i = 0; i < n; i++) {
    if (es == 4) {
      uint32_t u;
      do u = tu_rng_u32(r);
      while ((u & 0x7f800000u) == 0x7f800000u && (u & 0x7fffffu));
      memcpy((char *)dst + 4 * i, &u, 4);
    } else {
      uint16_t h;
      do h = (uint16_t)tu_rng_u32(r);
      while (h == 0);
      memcpy((char *)dst + 2 * i, &h, 2);
    }
  }
}

/* 16-bit: drop NaNs of that dtype (bf16: exponent 0xff, f16: 0x1f). */
void drop_nans16(void *p, int64_t n, int dt) {
  uint16_t *h = (uint16_t *)p;
  for (int64_t i = 0; i < n; i++) {
    bool nan = dt == FO_RULE_BF16 ? (h[i] & 0x7f80) == 0x7f80 && (h[i] & 0x7f)
                                  : (h[i] & 0x7c00) == 0x7c00 && (h[i] & 0x3ff);
    if (nan) h[i] = (uint16_t)(h[i] & 0x83ff); /* a finite value */
  }
}

/* Run every block and thread slot of a pack (or unpack) over the bucket
 * under the rig's spy (each segment one "tensor" of its Coverage, each
 * block's range the block's part of its segment): every element of every
 * segment touched exactly once, vector accesses 16-byte aligned in the
 * gradients and the wire; the spy keeps accesses inside the block, so the
 * padding is never touched.  Both paths must run. */
template <int GT, int WT, bool UNPACK>
void run_all(Bucket &bk) {
  typedef fo_pack_op<GT, WT, UNPACK> Op;
  Coverage cov(std::vector<int64_t>(COUNTS, COUNTS + NSEG));
  for (int s = 0; s < NSEG; s++) {
    cov.touch((size_t)s, bk.grad(s), bk.gs);
    cov.touch((size_t)s, bk.packed_at(s), bk.ws);
  }
  const fo_pack_launch a = bk.launch();
  for (int64_t b = 0; b < a.num_blocks; b++) {
    const Op op(a, b);
    cr_assert_eq(op.n, a.blocks[b].n);
    fo_block_range r;
    memset(&r, 0, sizeof r);
    r.tensor = bk.block_seg[(size_t)b];
    r.start = a.blocks[b].packed_at - bk.seg_packed[(size_t)r.tensor];
    r.n = op.n;
    for (int t = 0; t < NTH; t++) {
      Spy<Op> spy(op, &cov, r, b, t, UNPACK ? "unpack" : "pack");
      fo_run_block(spy, t, NTH);
    }
  }
  cov.check_exactly_once(UNPACK ? "unpack" : "pack");
  int64_t vec = 0, scalar = 0;
  for (int s = 0; s < NSEG; s++) {
    vec += cov.vector_visits[(size_t)s];
    scalar += cov.scalar_visits[(size_t)s];
  }
  cr_assert(vec > 0 && scalar > 0, "vector path %lld, scalar path %lld groups", (long long)vec,
            (long long)scalar);
}

/* The gradient buffer outside the segments still holds the guard. */
void expect_guards(Bucket &bk, const char *what) {
  std::vector<uint8_t> in(bk.grads.size(), 0);
  size_t lead = (size_t)(bk.gbase() - bk.grads.data());
  for (int s = 0; s < NSEG; s++)
    memset(&in[lead + (size_t)bk.seg_byte[(size_t)s]], 1, (size_t)COUNTS[s] * bk.gs);
  for (size_t i = 0; i < in.size(); i++)
    if (!in[i]) cr_assert_eq(bk.grads[i], GUARD, "%s: guard byte %zu overwritten", what, i);
}

/* The wire outside the segments' packed ranges still holds the poison. */
void expect_padding(Bucket &bk, const char *what) {
  std::vector<uint8_t> in(bk.wire.size(), 0);
  size_t lead = (size_t)(bk.wbase() - bk.wire.data());
  for (int s = 0; s < NSEG; s++)
    memset(&in[lead + (size_t)bk.seg_packed[(size_t)s] * bk.ws], 1, (size_t)COUNTS[s] * bk.ws);
  for (size_t i = 0; i < in.size(); i++)
    if (!in[i]) cr_assert_eq(bk.wire[i], POISON, "%s: wire padding byte %zu written", what, i);
}

/* What the library's CPU conversion makes of count elements from (dtype
 * from) in dtype to. */
std::vector<unsigned char> convert(const void *src, int from, int to, int64_t count) {
  size_t ts = to == FO_RULE_F32 ? 4 : 2, fs = from == FO_RULE_F32 ? 4 : 2;
  std::vector<unsigned char> out((size_t)count * ts + 1);
  if (from == to)
    memcpy(out.data(), src, (size_t)count * fs);
  else if (to == FO_RULE_F32)
    cr_assert_eq(fo_convert_to_f32((fo_dtype)from, src, (float *)out.data(), count), FO_SUCCESS);
  else
    cr_assert_eq(fo_convert_from_f32((fo_dtype)to, (const float *)src, out.data(), count),
                 FO_SUCCESS);
  return out;
}

template <int GT, int WT>
void run_case(uint64_t seed) {
  const size_t gs = GT == FO_RULE_F32 ? 4 : 2, ws = WT == FO_RULE_F32 ? 4 : 2;
  const fo_exec_ops *cpu = fo_exec_cpu_ops();
  tu_rng rng;
  tu_rng_seed(&rng, seed, 11);
  Bucket bk(gs, ws), ref(gs, ws);
  for (int s = 0; s < NSEG; s++) {
    fill_random(&rng, bk.grad(s), COUNTS[s], gs);
    if (GT != FO_RULE_F32 && WT != GT) drop_nans16(bk.grad(s), COUNTS[s], GT);
    memcpy(ref.grad(s), bk.grad(s), (size_t)COUNTS[s] * gs);
  }
  const std::vector<unsigned char> grads0 = bk.grads;

  /* 1. pack: exactly once, the library's conversion, nothing else
   * written, and the CPU executor's op writes the same bytes */
  run_all<GT, WT, false>(bk);
  cr_assert(bk.grads == grads0, "pack wrote the gradients");
  expect_padding(bk, "pack");
  for (int s = 0; s < NSEG; s++) {
    std::vector<unsigned char> want = convert(bk.grad(s), GT, WT, COUNTS[s]);
    cr_assert(memcmp(bk.packed_at(s), want.data(), (size_t)COUNTS[s] * ws) == 0,
              "segment %d: packed bytes differ from the CPU conversion", s);
  }
  cr_assert_eq(cpu->pack("test", 0, ref.blocks.data(), (int64_t)ref.blocks.size(), ref.wbase(),
                         (fo_dtype)GT, (fo_dtype)WT, 0, NULL),
               FO_SUCCESS);
  cr_assert(memcmp(ref.wbase(), bk.wbase(), (size_t)bk.packed * ws) == 0,
            "the CPU executor's pack differs");

  /* 2. unpack inverts pack: poison the segments, unpack */
  for (int s = 0; s < NSEG; s++) memset(bk.grad(s), POISON, (size_t)COUNTS[s] * gs);
  const std::vector<unsigned char> wire0 = bk.wire;
  run_all<GT, WT, true>(bk);
  cr_assert(bk.grads == grads0, "unpack(pack(g)) != g");
  cr_assert(bk.wire == wire0, "unpack wrote the wire");
  expect_guards(bk, "unpack");

  /* 3. unpack of fresh wire values (a sum: fp32 values that must be
   * rounded): the library's conversion, bit for bit, and the CPU op's */
  for (int s = 0; s < NSEG; s++) {
    fill_random(&rng, bk.packed_at(s), COUNTS[s], ws);
    if (WT == FO_RULE_F32 && COUNTS[s] > 4) { /* bf16 ties, to even both ways */
      const uint32_t ties[4] = {0x3f808000u, 0x3f818000u, 0xbf808000u, 0x477fff00u};
      memcpy(bk.packed_at(s), ties, sizeof ties);
    }
    memset(bk.grad(s), POISON, (size_t)COUNTS[s] * gs);
    memcpy(ref.packed_at(s), bk.packed_at(s), (size_t)COUNTS[s] * ws);
    memset(ref.grad(s), POISON, (size_t)COUNTS[s] * gs);
  }
  run_all<GT, WT, true>(bk);
  expect_guards(bk, "unpack of fresh values");
  cr_assert_eq(cpu->pack("test", 0, ref.blocks.data(), (int64_t)ref.blocks.size(), ref.wbase(),
                         (fo_dtype)GT, (fo_dtype)WT, 1, NULL),
               FO_SUCCESS);
  for (int s = 0; s < NSEG; s++) {
    std::vector<unsigned char> want = convert(bk.packed_at(s), WT, GT, COUNTS[s]);
    cr_assert(memcmp(bk.grad(s), want.data(), (size_t)COUNTS[s] * gs) == 0,
              "segment %d: unpacked bytes differ from the CPU conversion", s);
    cr_assert(memcmp(ref.grad(s), want.data(), (size_t)COUNTS[s] * gs) == 0,
              "segment %d: the CPU executor's unpack differs", s);
  }
  expect_guards(ref, "the CPU executor's unpack");
}

}  // namespace

Test(block_work_pack, f32_copy) {
  run_case<FO_RULE_F32, FO_RULE_F32>(1);
}

Test(block_work_pack, f16_copy) {
  run_case<FO_RULE_F16, FO_RULE_F16>(2);
}

Test(block_work_pack, bf16_copy) {
  run_case<FO_RULE_BF16, FO_RULE_BF16>(3);
}

Test(block_work_pack, f16_reduced_in_f32) {
  run_case<FO_RULE_F16, FO_RULE_F32>(4);
}

Test(block_work_pack, bf16_reduced_in_f32) {
  run_case<FO_RULE_BF16, FO_RULE_F32>(5);
}

/* A broken table does nothing rather than fault: no gradient memory, a
 * count past the chunk, a negative count. */
Test(block_work_pack, broken_blocks_do_nothing) {
  const size_t room = FO_PACK_CHUNK + 64;
  std::vector<float> wire(room, 1.0f), g(room, 5.0f);
  const fo_pack_block blocks[3] = {
      {nullptr, 0, 4}, {g.data(), 0, FO_PACK_CHUNK + 1}, {g.data(), 0, -1}};
  const fo_pack_launch a = {blocks, 3, wire.data()};
  for (int64_t b = 0; b < 3; b++)
    for (int t = 0; t < NTH; t++) fo_pack_block_work<FO_RULE_F32, FO_RULE_F32, false>(a, b, t, NTH);
  for (size_t i = 0; i < room; i++)
    cr_assert(wire[i] == 1.0f && g[i] == 5.0f, "element %zu written", i);
}
