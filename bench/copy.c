/*
 * copy.c -- the reference every row is measured against: a copy of the
 * row's counted bytes (cudaMemcpyAsync device to device, or a memcpy split
 * over the CPU executor's threads), timed in the same run and the same way
 * as the steps (run.c).
 *
 * A copy of N bytes reads N and writes N, so copying half the counted bytes
 * moves the counted bytes.  Past COPY_CAP a side the copy is capped: its
 * bandwidth is flat long before that (the step of list b moves over 100 GB,
 * which no second buffer could hold), and the rate, not the size, is what
 * the row compares with.  Like the steps' inputs, the copy rotates among
 * enough buffer pairs that it never finds its source in cache.
 */
#include "bench.h"

#define COPY_CAP ((int64_t)2 << 30)
#define COPY_SEED 3000
#define ROTATION_CACHES 4
#define MAX_SETS 64

/* Pairs of buffers to rotate among, as for the steps (run.c). */
static int copy_sets(const bench_backend *b, int64_t pair_bytes) {
  int64_t n = ((int64_t)b->cache_bytes * ROTATION_CACHES + pair_bytes - 1) / pair_bytes;
  if (n > MAX_SETS) n = MAX_SETS;
  const int64_t fit = (int64_t)(b->free_bytes / 10 * 9) / pair_bytes;
  if (n > fit) n = fit;
  if (n < 1) bench_die("no memory for a %.1f GB reference copy", pair_bytes / 1e9);
  return (int)n;
}

void bench_copy_init(const bench_backend *b, int64_t bytes, bench_copy *c) {
  int64_t side = bytes / 2;
  if (side > COPY_CAP) side = COPY_CAP;
  c->side = side < 16 ? 16 : side / 16 * 16; /* whole 16-byte vectors */
  c->sets = copy_sets(b, 2 * c->side);
  c->turn = 0;
  c->buf = b->alloc((size_t)(2 * c->side * c->sets));
  /* Real values, and every page touched before the timing. */
  b->fill(c->buf, FO_DTYPE_F32, 2 * c->side * c->sets / 4, COPY_SEED, 1.0f);
}

void bench_copy_next(const bench_backend *b, bench_copy *c) {
  char *src = c->buf + 2 * (c->turn % c->sets) * c->side;
  b->copy(src + c->side, src, (size_t)c->side);
  c->turn++;
}

void bench_copy_free(const bench_backend *b, bench_copy *c) {
  b->release(c->buf);
  c->buf = NULL;
}
