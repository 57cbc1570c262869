/*
 * plan.h -- the launch plan as the kernels read it (C and CUDA).
 *
 * A plan is a table of tensors and a table of blocks.  Block b processes
 * elements [start, min(start + chunk, numel)) of tensor blocks[b].tensor, so
 * one launch of num_blocks blocks covers every element of every tensor
 * exactly once.  Built once on the host (host/plan.c) when the optimizer is
 * created and uploaded once; a step passes only scalars.
 */
#ifndef FO_PLAN_H
#define FO_PLAN_H

#include <stddef.h>
#include <stdint.h>

/* The most parameter groups one launch carries (== FO_MAX_GROUPS). */
#define FO_PLAN_MAX_GROUPS 64

/* One tensor as the kernels see it: every buffer of its roles.  A buffer
 * the optimizer does not keep is NULL. */
typedef struct fo_plan_tensor {
  void *param;           /* param_dtype, numel elements */
  void *grad;            /* grad_dtype */
  float *master;         /* fp32 master weights, or NULL */
  float *exp_avg;        /* first moment / momentum buffer, or NULL */
  float *exp_avg_sq;     /* second moment, or NULL */
  float *max_exp_avg_sq; /* AMSGrad running max, or NULL */
  int64_t numel;
  /* The tensor's index among the optimizer's tensors; a shard's piece of a
   * tensor keeps it (LAMB's and LARS's norms add the pieces up by it). */
  int64_t index;
  int32_t group;
  /* Non-zero when every buffer above is aligned to 16 bytes, so the
   * vector path may run over whole vectors from the tensor's start. */
  int32_t vector_ok;
} fo_plan_tensor;

/* One block's chunk. */
typedef struct fo_plan_block {
  int64_t tensor; /* index into the tensor table */
  int64_t start;  /* first element; a multiple of the chunk size */
  /* The tensor's group (tensors[tensor].group): a step's block reads its
   * group's scalars from the step state while its tensor record is still
   * in flight, one dependent load fewer before the data (issue #15). */
  int32_t group;
  int32_t reserved; /* 0 */
} fo_plan_block;

/* Number of blocks that cover n tensors with chunks of chunk elements, or
 * -1 if the count overflows int64 or an argument is invalid.  Pure
 * arithmetic on sizes, so the CPU tier checks it for any size list, sizes
 * past 2^31 included (tests/test_plan.c). */
static inline int64_t fo_plan_count_blocks(const fo_plan_tensor *t, int64_t n, int64_t chunk) {
  if (n < 0 || chunk <= 0 || (n > 0 && !t)) return -1;
  int64_t blocks = 0;
  for (int64_t i = 0; i < n; i++) {
    if (t[i].numel < 0) return -1;
    /* ceil(numel / chunk) without forming numel + chunk - 1 */
    int64_t b = t[i].numel / chunk + (t[i].numel % chunk != 0);
    if (b > INT64_MAX - blocks) return -1;
    blocks += b;
  }
  return blocks;
}

/* Write the fo_plan_count_blocks() blocks, tensor by tensor, in order. */
static inline void fo_plan_fill_blocks(const fo_plan_tensor *t, int64_t n, int64_t chunk,
                                       fo_plan_block *out) {
  int64_t k = 0;
  for (int64_t i = 0; i < n; i++)
    for (int64_t start = 0; start < t[i].numel; start += chunk, k++) {
      out[k].tensor = i;
      out[k].start = start;
      out[k].group = t[i].group;
      out[k].reserved = 0;
    }
}

/* ------------------------------------------------ a bucket's pack table */

/* Elements of one pack block at most (kernels/pack.cu, one CUDA block of
 * FO_PACK_THREADS threads each; the CPU executor takes one block at a
 * time).  A multiple of 8, so every block of a segment starts at the same
 * 16-byte alignment as the segment itself. */
#define FO_PACK_CHUNK 16384

/* One block of a gradient bucket's pack (host/dp/buckets.c): the n <=
 * FO_PACK_CHUNK gradient elements from grad are elements [packed_at,
 * packed_at + n) of the packed (wire) buffer.
 *
 * Why a table of blocks, built at attach and uploaded once, rather than a
 * binary search of each block's place in the segments' prefix offsets: a
 * large segment is cut into many blocks that spread over every SM, and a
 * small one (a bias, a norm's weight) costs one block, never a block's
 * share of a search or a tail loop over several segments; each block has
 * one source and one destination, so its 16-byte vector path is decided
 * once from two pointers; and the kernel reads one 24-byte record per
 * block, no dependent loads before its first gradient load.  The table is
 * small (a 124M-parameter model: about 7,700 records of bf16 chunks). */
typedef struct fo_pack_block {
  void *grad;        /* the block's first gradient element */
  int64_t packed_at; /* its element offset in the packed buffer */
  int64_t n;         /* elements, 1 .. FO_PACK_CHUNK */
} fo_pack_block;

/* Cut a segment of count gradient elements (gs bytes each) at grad,
 * packed from element packed_at, into blocks of FO_PACK_CHUNK: writes them
 * to out (when not NULL) and returns how many there are. */
static inline int64_t fo_pack_cut(void *grad, size_t gs, int64_t count, int64_t packed_at,
                                  fo_pack_block *out) {
  int64_t k = 0;
  for (int64_t start = 0; start < count; start += FO_PACK_CHUNK, k++) {
    if (!out) continue;
    const int64_t left = count - start;
    out[k].grad = (char *)grad + (size_t)start * gs;
    out[k].packed_at = packed_at + start;
    out[k].n = left < FO_PACK_CHUNK ? left : FO_PACK_CHUNK;
  }
  return k;
}

#endif /* FO_PLAN_H */
