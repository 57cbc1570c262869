/*
 * test_comm_api.c -- CPU tier of the communicators, in one process: the
 * host communicator API and the data-parallel options, over a fake
 * back-end (tests/support/fake_comm.h).
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm_internal.h" /* fo_comm_all_gather, fo_comm_reduce_scatter */
#include "comm_rig.h"
#include "cr_status.h"
#include "fake_comm.h"
#include "fusedopt.h"
#include "testutil.h"

/* ------------------------------------------------------ host comm API */

Test(comm_api, create_host_validates_and_releases_ctx_on_failure) {
  fake f;
  memset(&f, 0, sizeof f);
  fo_comm_ops ops = fake_ops();
  fo_comm *c = NULL;
  FAILS(fo_comm_create_host(NULL, &ops, &f, 0, 1), FO_ERR_NULL_POINTER);
  FAILS(fo_comm_create_host(&c, NULL, &f, 0, 1), FO_ERR_NULL_POINTER);
  FAILS(fo_comm_create_host(&c, &ops, &f, 2, 2), FO_ERR_INVALID_ARGUMENT);
  cr_expect(strstr(fo_last_error(), "fo_comm_create_host: rank = 2, size = 2"), "message: %s",
            fo_last_error());
  FAILS(fo_comm_create_host(&c, &ops, &f, -1, 2), FO_ERR_INVALID_ARGUMENT);
  FAILS(fo_comm_create_host(&c, &ops, &f, 0, 0), FO_ERR_INVALID_ARGUMENT);
  cr_expect_eq(f.released, 4, "release ran %d times", f.released);
  ops.struct_size = sizeof ops - 1;
  FAILS(fo_comm_create_host(&c, &ops, &f, 0, 1), FO_ERR_INVALID_ARGUMENT);
  ops = fake_ops();
  ops.allreduce_sum = NULL;
  FAILS(fo_comm_create_host(&c, &ops, &f, 0, 1), FO_ERR_NULL_POINTER);
  cr_expect_null(c);
}

Test(comm_api, accessors_and_destroy) {
  fake f;
  fo_comm *c = fake_comm(&f, 4);
  int rank = -1, size = -1;
  OK(fo_comm_get_rank(c, &rank, &size));
  cr_expect_eq(rank, 0);
  cr_expect_eq(size, 4);
  OK(fo_comm_get_rank(c, NULL, &size));
  FAILS(fo_comm_get_rank(NULL, &rank, &size), FO_ERR_NULL_POINTER);
  fo_comm_kind kind;
  OK(fo_comm_get_kind(c, &kind));
  cr_expect_eq(kind, FO_COMM_HOST);
  FAILS(fo_comm_get_kind(c, NULL), FO_ERR_NULL_POINTER);
  OK(fo_comm_destroy(NULL));
  OK(fo_comm_destroy(c));
  cr_expect_eq(f.released, 1);
}

Test(comm_api, allreduce_sum) {
  fake f;
  fo_comm *c = fake_comm(&f, 2);
  float x[3] = {1.0f, -2.5f, 3.0f};
  OK(fo_comm_allreduce_sum(c, x, 3, FO_DTYPE_F32, NULL));
  cr_expect(x[0] == 2.0f && x[1] == -5.0f && x[2] == 6.0f);
  OK(fo_comm_allreduce_sum(c, NULL, 0, FO_DTYPE_F32, NULL));
  cr_expect_eq(f.calls, 1, "a zero-length sum is no collective");
  FAILS(fo_comm_allreduce_sum(c, x, 3, FO_DTYPE_F32, (fo_stream_t)x), FO_ERR_INVALID_ARGUMENT);
  FAILS(fo_comm_allreduce_sum(c, x, -1, FO_DTYPE_F32, NULL), FO_ERR_INVALID_ARGUMENT);
  FAILS(fo_comm_allreduce_sum(c, x, 3, (fo_dtype)7, NULL), FO_ERR_INVALID_ARGUMENT);
  FAILS(fo_comm_allreduce_sum(c, NULL, 3, FO_DTYPE_F32, NULL), FO_ERR_NULL_POINTER);
  FAILS(fo_comm_allreduce_sum(NULL, x, 3, FO_DTYPE_F32, NULL), FO_ERR_NULL_POINTER);
  f.fail_at = 2;
  FAILS(fo_comm_allreduce_sum(c, x, 3, FO_DTYPE_F32, NULL), FO_ERR_COMM);
  cr_expect(strstr(fo_last_error(), "injected failure on call 2"), "message: %s", fo_last_error());
  cr_expect(strstr(fo_last_error(), "code 42"), "message: %s", fo_last_error());
  OK(fo_comm_destroy(c));
}

/* The library's reduce-scatter and all-gather over a host communicator
 * whose ops lack them (optional: only a sharded state needs them) refuse
 * with FO_ERR_UNSUPPORTED naming the op, instead of calling NULL, and
 * leave the buffer alone; with nothing to move there is no collective. */
Test(comm_api, missing_shard_ops_are_refused_not_called) {
  fake f;
  fo_comm *c = fake_comm(&f, 4); /* allreduce_sum only */
  tu_rng g;
  tu_rng_seed(&g, 31, 3);
  float buf[4 * 9], copy[4 * 9];
  for (int i = 0; i < 4 * 9; i++) buf[i] = (float)tu_rng_nonzero(&g, 0.01, 2.0);
  memcpy(copy, buf, sizeof buf);
  const int64_t counts[4] = {9, 9, 9, 9}, bytes[4] = {36, 36, 36, 36}, none[4] = {0};
  FAILS(fo_comm_all_gather("my_caller", c, buf, bytes, NULL), FO_ERR_UNSUPPORTED);
  cr_expect(strstr(fo_last_error(), "my_caller: "), "%s", fo_last_error());
  cr_expect(strstr(fo_last_error(), "all_gather"), "%s", fo_last_error());
  FAILS(fo_comm_reduce_scatter("my_caller", c, buf, counts, FO_DTYPE_F32, NULL),
        FO_ERR_UNSUPPORTED);
  cr_expect(strstr(fo_last_error(), "reduce_scatter_sum"), "%s", fo_last_error());
  cr_expect(memcmp(buf, copy, sizeof buf) == 0, "the buffer changed");
  OK(fo_comm_all_gather("my_caller", c, buf, none, NULL));
  OK(fo_comm_reduce_scatter("my_caller", c, buf, none, FO_DTYPE_F32, NULL));
  cr_expect_eq(f.calls, 0, "%d all-reduces", f.calls);
  OK(fo_comm_destroy(c));
}

Test(comm_api, set_last_error_for_backends) {
  cr_expect_eq(fo_set_last_error(FO_ERR_COMM, "my_backend", "it broke"), FO_ERR_COMM);
  cr_expect_str_eq(fo_last_error(), "my_backend: it broke");
  cr_expect_eq(fo_set_last_error(FO_ERR_IO, NULL, NULL), FO_ERR_IO);
}

Test(comm_api, nccl_arguments_are_checked_without_a_device) {
  fo_comm *c = NULL;
  fo_nccl_id id;
  memset(&id, 0, sizeof id);
  FAILS(fo_comm_init_nccl(NULL, &id, 0, 1, 0), FO_ERR_NULL_POINTER);
  FAILS(fo_comm_init_nccl(&c, NULL, 0, 1, 0), FO_ERR_NULL_POINTER);
  FAILS(fo_comm_init_nccl(&c, &id, 1, 1, 0), FO_ERR_INVALID_ARGUMENT);
  FAILS(fo_comm_init_nccl(&c, &id, 0, 1, -1), FO_ERR_INVALID_ARGUMENT);
  FAILS(fo_comm_wrap_nccl(&c, NULL), FO_ERR_NULL_POINTER);
  FAILS(fo_comm_wrap_nccl(NULL, NULL), FO_ERR_NULL_POINTER);
  FAILS(fo_nccl_get_id(NULL), FO_ERR_NULL_POINTER);
  int n = 0;
  if (fo_cuda_device_count(&n) != FO_SUCCESS) /* here: no device, no NCCL comm */
    FAILS(fo_comm_init_nccl(&c, &id, 0, 1, 0), FO_ERR_NO_DEVICE);
  cr_expect_null(c);
}

/* ------------------------------------------------------------ options */

Test(comm_dp, options_default_and_validation) {
  fo_dp_options o;
  FAILS(fo_dp_options_default(NULL), FO_ERR_NULL_POINTER);
  OK(fo_dp_options_default(&o));
  cr_expect_eq(o.struct_size, sizeof o);
  cr_expect_eq(o.bucket_bytes, (size_t)25 << 20);
  cr_expect_eq(o.reduce_in_f32, 0);
  config c = {FO_STORAGE_ARENA, FO_DTYPE_F32, FO_DTYPE_F32, 0, 0, 0};
  rig r;
  rig_make(&r, &c);
  fake f;
  fo_comm *comm = fake_comm(&f, 4);
  FAILS(fo_optimizer_set_comm(NULL, comm, NULL), FO_ERR_NULL_POINTER);
  o.struct_size = 8;
  FAILS(fo_optimizer_set_comm(r.opt, comm, &o), FO_ERR_INVALID_ARGUMENT);
  OK(fo_dp_options_default(&o));
  o.reduce_in_f32 = 2;
  FAILS(fo_optimizer_set_comm(r.opt, comm, &o), FO_ERR_INVALID_ARGUMENT);
  OK(fo_dp_options_default(&o));
  o.reserved[3] = 1;
  FAILS(fo_optimizer_set_comm(r.opt, comm, &o), FO_ERR_INVALID_ARGUMENT);
  int64_t nb = -1;
  OK(fo_optimizer_num_buckets(r.opt, &nb));
  cr_expect_eq(nb, 0, "nothing attached after failures");
  OK(fo_optimizer_set_comm(r.opt, comm, NULL));
  OK(fo_optimizer_num_buckets(r.opt, &nb));
  cr_expect_eq(nb, 1, "the defaults: 25 MiB buckets, one here");
  rig_free(&r);
  OK(fo_comm_destroy(comm));
}
