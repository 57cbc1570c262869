/*
 * pack_work.cuh -- the work of ONE thread block of the bucket pack and
 * unpack kernels (kernels/pack.cu), as plain functions of (launch
 * arguments, block index, thread index, thread count), compiled by nvcc
 * for the kernel and by g++ for the CPU tier (tests/test_block_work_pack.cpp
 * runs every block and thread slot over host buffers), like the step's
 * block work (block_work.cuh, whose loop and loads and stores this reuses).
 *
 * Block b of a launch copies fo_pack_block blocks[b]: its n gradient
 * elements (dtype GT) at grad and elements [packed_at, packed_at + n) of
 * the packed buffer (dtype WT), one way or the other.  Widening (16-bit to
 * fp32) is exact; narrowing rounds to nearest even (rules.h, as the CPU
 * executor's conversion); the same dtype is a bit copy, NaN payloads
 * included.
 */
#ifndef FO_PACK_WORK_CUH
#define FO_PACK_WORK_CUH

#include "block_work.cuh"

/* Threads per block of the pack kernels. */
#define FO_PACK_THREADS FO_CUDA_THREADS /* fo_launch_grid launches that many */

/* Everything one pack or unpack launch needs, passed by value. */
struct fo_pack_launch {
  const fo_pack_block *blocks; /* device memory: the bucket's first block */
  int64_t num_blocks;
  void *wire; /* the packed buffer */
};

/* N values at src (dtype FROM) to dst (dtype TO), K groups at the offsets
 * off[k] (-1: an empty slot).  Every load of the round first, then every
 * store, so K 16-byte loads are in flight per thread on the vector path. */
template <int FROM, int TO, int N, int K>
FO_BW_FN void fo_pack_move(const typename fo_elem<FROM>::type *src, typename fo_elem<TO>::type *dst,
                           const int64_t (&off)[K]) {
  if constexpr (FROM == TO && FROM != FO_RULE_F32) { /* 16-bit: the bits */
    uint16_t h[K][N];
    FO_BW_UNROLL
    for (int k = 0; k < K; k++)
      if (off[k] >= 0) fo_ld_u16<N>(src + off[k], h[k]);
    FO_BW_UNROLL
    for (int k = 0; k < K; k++)
      if (off[k] >= 0) fo_st_u16<N>(dst + off[k], h[k]);
  } else { /* fp32 to fp32 is a bit copy through the float registers too */
    float x[K][N];
    FO_BW_UNROLL
    for (int k = 0; k < K; k++)
      if (off[k] >= 0) fo_ld_widen<FROM, N>(src + off[k], x[k]);
    FO_BW_UNROLL
    for (int k = 0; k < K; k++)
      if (off[k] >= 0) fo_st_round<TO, N>(dst + off[k], x[k]);
  }
}

/* One block of a pack (UNPACK false: gradients to the packed buffer) or
 * an unpack, as a visitor of fo_block_loop.  GT: the gradients' dtype, WT:
 * the wire's. */
template <int GT, int WT, bool UNPACK>
struct fo_pack_op {
  typedef typename fo_elem<GT>::type grad_t;
  typedef typename fo_elem<WT>::type wire_t;
  /* one access per array per vector, at most 16 bytes: vectors of 4 when
   * an array is fp32 (a float4; 8 bytes of a 16-bit array), so that each
   * instruction of a warp covers contiguous memory (block_work.cuh); 16
   * elements in flight per thread either way */
  static constexpr int W = (GT == FO_RULE_F32 || WT == FO_RULE_F32) ? 4 : 8;
  static constexpr int ILP_VEC = 16 / W;
  static constexpr int ILP_SCALAR = 4;

  grad_t *grad;
  wire_t *wire;
  int64_t n;
  bool vec;

  FO_BW_FN fo_pack_op(const fo_pack_launch &a, int64_t b) {
    const fo_pack_block blk = a.blocks[b];
    grad = (grad_t *)blk.grad;
    wire = a.wire ? (wire_t *)a.wire + blk.packed_at : nullptr;
    /* a broken table (no memory, a negative or oversized count) does
     * nothing rather than fault */
    n = grad && wire && blk.n > 0 && blk.n <= FO_PACK_CHUNK ? blk.n : 0;
    vec = aligned_at(0);
  }

  /* Both arrays aligned to one vector's bytes at block-relative element
   * off. */
  FO_BW_FN bool aligned_at(int64_t off) const {
    return fo_aligned_vec<W>(grad + off) && fo_aligned_vec<W>(wire + off);
  }

  template <int N, int K>
  FO_BW_FN void operator()(const int64_t (&off)[K]) const {
    if constexpr (UNPACK)
      fo_pack_move<WT, GT, N, K>(wire, grad, off);
    else
      fo_pack_move<GT, WT, N, K>(grad, wire, off);
  }
};

/* Block b, thread tid of nthreads: what the kernel runs, and what the CPU
 * tier runs for every (b, tid). */
template <int GT, int WT, bool UNPACK>
FO_BW_FN void fo_pack_block_work(const fo_pack_launch &a, int64_t b, int tid, int nthreads) {
  fo_run_block(fo_pack_op<GT, WT, UNPACK>(a, b), tid, nthreads);
}

#endif /* FO_PACK_WORK_CUH */
