/*
 * fake_comm.c -- a fake host communicator back-end (fake_comm.h).
 */
#include "fake_comm.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "cr_status.h"
#include "testutil.h"

static int fake_allreduce(void *ctx, void *buf, int64_t count, fo_dtype dtype, char *err,
                          size_t cap) {
  fake *f = ctx;
  int k = f->calls++;
  if (k < FAKE_LOG) {
    f->count[k] = count;
    f->dtype[k] = dtype;
    f->buf[k] = buf;
  }
  f->elems += count;
  if (f->calls == f->fail_at) {
    /* a collective that died half way: half the buffer is garbage */
    memset(buf, 0x7f, (size_t)(count / 2) * fo_dtype_size(dtype));
    snprintf(err, cap, "injected failure on call %d", f->calls);
    return 42;
  }
  cr_assert_eq(tu_scale_buffer(buf, count, dtype, (float)f->size), FO_SUCCESS);
  return 0;
}

static void fake_release(void *ctx) {
  ((fake *)ctx)->released++;
}

fo_comm_ops fake_ops(void) {
  fo_comm_ops ops;
  memset(&ops, 0, sizeof ops);
  ops.struct_size = sizeof ops;
  ops.allreduce_sum = fake_allreduce;
  ops.release = fake_release;
  return ops;
}

fo_comm *fake_comm(fake *f, int size) {
  memset(f, 0, sizeof *f);
  f->size = size;
  fo_comm_ops ops = fake_ops();
  fo_comm *c = NULL;
  OK(fo_comm_create_host(&c, &ops, f, 0, size));
  return c;
}

/* ---------------------------------------------------------- sharded */

static int refuse_allreduce(void *ctx, void *buf, int64_t count, fo_dtype dtype, char *err,
                            size_t cap) {
  (void)ctx, (void)buf, (void)count, (void)dtype;
  snprintf(err, cap, "a sharded state never all-reduces its gradients");
  return 1;
}

static int fake_reduce_scatter(void *ctx, void *buf, const int64_t *counts, fo_dtype dtype,
                               char *err, size_t cap) {
  fake *f = ctx;
  if (++f->rs_calls == f->fail_rs) {
    snprintf(err, cap, "injected reduce-scatter failure");
    return 7;
  }
  size_t es = fo_dtype_size(dtype);
  char *p = buf;
  for (int r = 0; r < f->size; p += (size_t)counts[r] * es, r++) {
    if (r == f->rank)
      cr_assert_eq(tu_scale_buffer(p, counts[r], dtype, (float)f->size), FO_SUCCESS);
    else
      memset(p, 0xff, (size_t)counts[r] * es); /* NaN in every float dtype */
  }
  return 0;
}

static int fake_all_gather(void *ctx, void *buf, const int64_t *bytes, char *err, size_t cap) {
  fake *f = ctx;
  (void)buf;
  if (++f->ag_calls == f->fail_ag) {
    snprintf(err, cap, "injected all-gather failure");
    return 8;
  }
  for (int r = 0; r < f->size; r++) f->ag_bytes += bytes[r];
  return 0;
}

fo_comm *fake_shard_comm(fake *f, int rank, int size, int with_shard_ops) {
  memset(f, 0, sizeof *f);
  f->rank = rank;
  f->size = size;
  fo_comm_ops ops;
  memset(&ops, 0, sizeof ops);
  ops.struct_size = sizeof ops;
  ops.allreduce_sum = refuse_allreduce;
  if (with_shard_ops) {
    ops.reduce_scatter_sum = fake_reduce_scatter;
    if (with_shard_ops != 2) ops.all_gather = fake_all_gather; /* 2: reduce-scatter only */
  }
  fo_comm *c = NULL;
  OK(fo_comm_create_host(&c, &ops, f, rank, size));
  return c;
}
