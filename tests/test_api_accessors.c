/*
 * test_api_accessors.c -- the optimizer's calls other than the step: NULL
 * pointers everywhere, the learning rate, indices out of range, the loss
 * scale pointer and the step info, state pointers per role, and the arena.
 *
 * Written against include/fusedopt.h only; no library internals.
 */
#define _POSIX_C_SOURCE 200809L

#include <criterion/criterion.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "api_harness.h"
#include "fusedopt.h"

/* ======================================= optimizer calls: NULL and modes */

Test(api_optimizer, null_pointers) {
  cenv e;
  fo_optimizer *opt = make_opt(&e, FO_ALG_ADAMW);
  int64_t i64 = SENT_I64;
  float f = SENT_F32;
  void *vp = SENT_PTR;
  float *fp = (float *)SENT_PTR;
  size_t sz = SENT_SIZE;
  fo_options o;

  CHECK(FO_SUCCESS, NULL, fo_optimizer_destroy, NULL);
  CHECK(FO_ERR_NULL_POINTER, "opt", fo_optimizer_step, NULL, NULL);
  CHECK(FO_ERR_NULL_POINTER, "opt", fo_optimizer_zero_grad, NULL, NULL);
  CHECK(FO_ERR_NULL_POINTER, "opt", fo_optimizer_sync_master, NULL, NULL);
  CHECK(FO_ERR_NULL_POINTER, "opt", fo_optimizer_get_step, NULL, &i64);
  CHECK(FO_ERR_NULL_POINTER, "out", fo_optimizer_get_step, opt, NULL);
  CHECK(FO_ERR_NULL_POINTER, "opt", fo_optimizer_set_step, NULL, 1);
  CHECK(FO_ERR_NULL_POINTER, "opt", fo_optimizer_set_lr, NULL, 0, 0.1f);
  CHECK(FO_ERR_NULL_POINTER, "opt", fo_optimizer_get_lr, NULL, 0, &f);
  CHECK(FO_ERR_NULL_POINTER, "out", fo_optimizer_get_lr, opt, 0, NULL);
  CHECK(FO_ERR_NULL_POINTER, "opt", fo_optimizer_get_options, NULL, &o);
  CHECK(FO_ERR_NULL_POINTER, "out", fo_optimizer_get_options, opt, NULL);
  CHECK(FO_ERR_NULL_POINTER, "opt", fo_optimizer_num_tensors, NULL, &i64);
  CHECK(FO_ERR_NULL_POINTER, "out", fo_optimizer_num_tensors, opt, NULL);
  CHECK(FO_ERR_NULL_POINTER, "opt", fo_optimizer_param_ptr, NULL, 0, &vp);
  CHECK(FO_ERR_NULL_POINTER, "out", fo_optimizer_param_ptr, opt, 0, NULL);
  CHECK(FO_ERR_NULL_POINTER, "opt", fo_optimizer_grad_ptr, NULL, 0, &vp);
  CHECK(FO_ERR_NULL_POINTER, "out", fo_optimizer_grad_ptr, opt, 0, NULL);
  CHECK(FO_ERR_NULL_POINTER, "opt", fo_optimizer_state_ptr, NULL, 0, FO_ROLE_EXP_AVG, &fp);
  CHECK(FO_ERR_NULL_POINTER, "out", fo_optimizer_state_ptr, opt, 0, FO_ROLE_EXP_AVG, NULL);
  CHECK(FO_ERR_NULL_POINTER, "opt", fo_optimizer_arena, NULL, FO_ROLE_PARAM, &vp, &sz);
  CHECK(FO_ERR_NULL_POINTER, "base", fo_optimizer_arena, opt, FO_ROLE_PARAM, NULL, &sz);
  CHECK(FO_ERR_NULL_POINTER, "bytes", fo_optimizer_arena, opt, FO_ROLE_PARAM, &vp, NULL);
  fo_step_info info;
  CHECK(FO_ERR_NULL_POINTER, "opt", fo_optimizer_get_info, NULL, &info);
  CHECK(FO_ERR_NULL_POINTER, "out", fo_optimizer_get_info, opt, NULL);
  CHECK(FO_ERR_NULL_POINTER, "opt", fo_optimizer_loss_scale_ptr, NULL, &fp);
  CHECK(FO_ERR_NULL_POINTER, "out", fo_optimizer_loss_scale_ptr, opt, NULL);
  CHECK(FO_ERR_NULL_POINTER, "count", fo_cuda_device_count, NULL);
  cr_expect(i64 == SENT_I64 && f == SENT_F32 && vp == SENT_PTR && fp == (float *)SENT_PTR &&
                sz == SENT_SIZE,
            "a failing call wrote an out-parameter");
  fo_optimizer_destroy(opt);
}

Test(api_optimizer, learning_rate) {
  cenv e;
  fo_optimizer *opt = make_opt(&e, FO_ALG_ADAMW);
  float lr0 = SENT_F32, lr1 = SENT_F32, f = SENT_F32;
  CHECK(FO_SUCCESS, NULL, fo_optimizer_set_lr, opt, 0, 0.25f);
  CHECK(FO_SUCCESS, NULL, fo_optimizer_set_lr, opt, 1, 0.5f);
  const float bad_lr[] = {-1e-3f, NAN, INFINITY, -INFINITY};
  for (size_t i = 0; i < sizeof bad_lr / sizeof bad_lr[0]; ++i) {
    CHECK(FO_ERR_INVALID_ARGUMENT, "lr", fo_optimizer_set_lr, opt, 0, bad_lr[i]);
    CHECK(FO_ERR_INVALID_ARGUMENT, "lr", fo_optimizer_set_lr, opt, -1,
          bad_lr[i]); /* all groups: none may change */
  }
  const int bad_group[] = {2, -2, FO_MAX_GROUPS, INT_MAX, INT_MIN};
  for (size_t i = 0; i < sizeof bad_group / sizeof bad_group[0]; ++i) {
    CHECK(FO_ERR_INVALID_ARGUMENT, "group", fo_optimizer_set_lr, opt, bad_group[i], 1.0f);
    f = SENT_F32;
    CHECK(FO_ERR_INVALID_ARGUMENT, "group", fo_optimizer_get_lr, opt, bad_group[i], &f);
    cr_expect(f == SENT_F32, "get_lr(group %d) failed but wrote *out", bad_group[i]);
  }
  f = SENT_F32;
  CHECK(FO_ERR_INVALID_ARGUMENT, "group", fo_optimizer_get_lr, opt, -1, &f);
  cr_expect(f == SENT_F32, "get_lr(-1) failed but wrote *out");
  cr_expect_eq(fo_optimizer_get_lr(opt, 0, &lr0), FO_SUCCESS);
  cr_expect_eq(fo_optimizer_get_lr(opt, 1, &lr1), FO_SUCCESS);
  cr_expect(lr0 == 0.25f && lr1 == 0.5f, "failing set_lr changed the lr: %g %g", lr0, lr1);
  fo_hparams h;
  cr_expect_eq(fo_optimizer_get_hparams(opt, 1, &h), FO_SUCCESS);
  cr_expect(h.lr == 0.5f, "get_hparams.lr %g disagrees with set_lr", h.lr);
  CHECK(FO_SUCCESS, NULL, fo_optimizer_set_lr, opt, -1, 0.125f);
  cr_expect_eq(fo_optimizer_get_lr(opt, 0, &lr0), FO_SUCCESS);
  cr_expect_eq(fo_optimizer_get_lr(opt, 1, &lr1), FO_SUCCESS);
  cr_expect(lr0 == 0.125f && lr1 == 0.125f, "set_lr(-1): %g %g", lr0, lr1);
  CHECK(FO_SUCCESS, NULL, fo_optimizer_set_lr, opt, 0, 0.0f);
  fo_optimizer_destroy(opt);
}

Test(api_optimizer, index_out_of_range) {
  cenv e;
  fo_optimizer *opt = make_opt(&e, FO_ALG_ADAMW);
  const int64_t bad[] = {-1, 2, INT64_MAX, INT64_MIN};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; ++i) {
    void *vp = SENT_PTR;
    float *fp = (float *)SENT_PTR;
    CHECK(FO_ERR_INVALID_ARGUMENT, "index", fo_optimizer_param_ptr, opt, bad[i], &vp);
    CHECK(FO_ERR_INVALID_ARGUMENT, "index", fo_optimizer_grad_ptr, opt, bad[i], &vp);
    CHECK(FO_ERR_INVALID_ARGUMENT, "index", fo_optimizer_state_ptr, opt, bad[i], FO_ROLE_EXP_AVG,
          &fp);
    cr_expect(vp == SENT_PTR && fp == (float *)SENT_PTR, "index %lld: a failing call wrote *out",
              (long long)bad[i]);
  }
  fo_optimizer_destroy(opt);
}

Test(api_optimizer, loss_scale_ptr_and_info) {
  cenv e;
  fo_optimizer *opt = make_opt(&e, FO_ALG_ADAMW);
  /* scaling off: a scale that stays 1, for one loop that serves both */
  float *fp = (float *)SENT_PTR;
  CHECK(FO_SUCCESS, NULL, fo_optimizer_loss_scale_ptr, opt, &fp);
  cr_assert(fp != (float *)SENT_PTR && fp != NULL, "loss_scale_ptr gave no pointer");
  cr_expect(*fp == 1.0f, "scale without scaling %g", *fp);
  fo_step_info info;
  memset(&info, 0x5A, sizeof info);
  CHECK(FO_SUCCESS, NULL, fo_optimizer_get_info, opt, &info);
  cr_expect(info.step == 0 && info.skipped_steps == 0 && info.last_step_skipped == 0 &&
                info.loss_scale == 1.0f,
            "fresh info: step %lld skipped %lld last %d scale %g", (long long)info.step,
            (long long)info.skipped_steps, info.last_step_skipped, info.loss_scale);
  for (int s = 0; s < 3; s++) CHECK(FO_SUCCESS, NULL, fo_optimizer_step, opt, NULL);
  cr_expect(*fp == 1.0f, "scale without scaling after 3 steps %g", *fp);
  /* A value written there is ignored by the getters too, so that what
   * get_scaler_state gives, set_scaler_state takes back. */
  *fp = 3.0f;
  CHECK(FO_SUCCESS, NULL, fo_optimizer_get_info, opt, &info);
  cr_expect(info.loss_scale == 1.0f, "info.loss_scale %g after writing 3, scaling off",
            info.loss_scale);
  fo_scaler_state ss;
  memset(&ss, 0x5A, sizeof ss);
  CHECK(FO_SUCCESS, NULL, fo_optimizer_get_scaler_state, opt, &ss);
  cr_expect(ss.scale == 1.0f && ss.growth_tracker == 0, "scaler state %g, %d after writing 3",
            (double)ss.scale, ss.growth_tracker);
  CHECK(FO_SUCCESS, NULL, fo_optimizer_set_scaler_state, opt, &ss);
  fo_optimizer_destroy(opt);

  env_init(&e, FO_ALG_ADAMW);
  e.o.loss_scaler.enabled = 1;
  cr_assert_eq(run_create(&e, "loss scaler", FO_SUCCESS, NULL, &opt), FO_SUCCESS);
  fp = NULL;
  CHECK(FO_SUCCESS, NULL, fo_optimizer_loss_scale_ptr, opt, &fp);
  cr_expect(fp != NULL && *fp == 65536.0f, "initial scale %g", fp ? *fp : -1.0);
  CHECK(FO_SUCCESS, NULL, fo_optimizer_get_info, opt, &info);
  cr_expect(info.loss_scale == 65536.0f, "info.loss_scale %g", info.loss_scale);
  fo_optimizer_destroy(opt);
}

/* state_ptr: which roles each configuration keeps. */
typedef struct state_case {
  const char *name;
  fo_algorithm alg;
  mutator mut;
  int role;
  fo_status want;
} state_case;

MUT(m_none, (void)e)
MUT(m_bf16, e->o.param_dtype = e->o.grad_dtype = FO_DTYPE_BF16)
MUT(m_f16, e->o.param_dtype = e->o.grad_dtype = FO_DTYPE_F16)
MUT(m_bf16_nomaster, m_bf16(e); e->o.master_weights = 0)
MUT(m_amsgrad, e->hp[0].amsgrad = e->hp[1].amsgrad = 1)
MUT(m_momentum, e->hp[0].momentum = e->hp[1].momentum = 0.9f)

static const state_case k_state_cases[] = {
    {"AdamW f32", FO_ALG_ADAMW, m_none, FO_ROLE_EXP_AVG, OK},
    {"AdamW f32", FO_ALG_ADAMW, m_none, FO_ROLE_EXP_AVG_SQ, OK},
    {"AdamW f32", FO_ALG_ADAMW, m_none, FO_ROLE_MAX_EXP_AVG_SQ, IS},
    {"AdamW f32", FO_ALG_ADAMW, m_none, FO_ROLE_MASTER, IS},
    {"AdamW f32 amsgrad", FO_ALG_ADAMW, m_amsgrad, FO_ROLE_MAX_EXP_AVG_SQ, OK},
    {"Adam amsgrad", FO_ALG_ADAM, m_amsgrad, FO_ROLE_MAX_EXP_AVG_SQ, OK},
    {"Adam bf16 master", FO_ALG_ADAM, m_bf16, FO_ROLE_MASTER, OK},
    {"Adam f16 master", FO_ALG_ADAM, m_f16, FO_ROLE_MASTER, OK},
    {"Adam bf16 no master", FO_ALG_ADAM, m_bf16_nomaster, FO_ROLE_MASTER, IS},
    {"SGD", FO_ALG_SGD, m_none, FO_ROLE_EXP_AVG, IS},
    {"SGD", FO_ALG_SGD, m_none, FO_ROLE_EXP_AVG_SQ, IS},
    {"SGD", FO_ALG_SGD, m_none, FO_ROLE_MAX_EXP_AVG_SQ, IS},
    {"SGD", FO_ALG_SGD, m_none, FO_ROLE_MASTER, IS},
    {"SGD momentum", FO_ALG_SGD, m_momentum, FO_ROLE_EXP_AVG, OK},
    {"SGD momentum", FO_ALG_SGD, m_momentum, FO_ROLE_EXP_AVG_SQ, IS},
    {"Lion", FO_ALG_LION, m_none, FO_ROLE_EXP_AVG, OK},
    {"Lion", FO_ALG_LION, m_none, FO_ROLE_EXP_AVG_SQ, IS},
    {"Lion", FO_ALG_LION, m_none, FO_ROLE_MAX_EXP_AVG_SQ, IS},
    /* not a state role, or not a role at all */
    {"AdamW param role", FO_ALG_ADAMW, m_none, FO_ROLE_PARAM, IA},
    {"AdamW grad role", FO_ALG_ADAMW, m_none, FO_ROLE_GRAD, IA},
    {"AdamW role COUNT", FO_ALG_ADAMW, m_none, FO_ROLE_COUNT, IA},
    {"AdamW role -1", FO_ALG_ADAMW, m_none, -1, IA},
    {"AdamW role 99", FO_ALG_ADAMW, m_none, 99, IA},
};

Test(api_optimizer, state_ptr_roles) {
  for (size_t i = 0; i < sizeof k_state_cases / sizeof k_state_cases[0]; ++i) {
    const state_case *c = &k_state_cases[i];
    cenv e;
    fo_optimizer *opt = NULL;
    char label[96];
    env_init(&e, c->alg);
    c->mut(&e);
    snprintf(label, sizeof label, "%s, role %d", c->name, c->role);
    cr_assert_eq(run_create(&e, label, FO_SUCCESS, NULL, &opt), FO_SUCCESS);
    float *fp = (float *)SENT_PTR;
    prime_error("fo_optimizer_state_ptr");
    fo_status st = fo_optimizer_state_ptr(opt, 0, (fo_role)c->role, &fp);
    cr_expect(st == c->want, "state_ptr [%s]: %s, want %s; \"%s\"", label, st_name(st),
              st_name(c->want), fo_last_error());
    if (st == FO_SUCCESS) {
      cr_expect(fp != NULL && fp != (float *)SENT_PTR, "state_ptr [%s]: no pointer", label);
    } else {
      cr_expect(fp == (float *)SENT_PTR, "state_ptr [%s]: wrote *out", label);
      cr_expect(strstr(fo_last_error(), "fo_optimizer_state_ptr") != NULL, "state_ptr [%s]: \"%s\"",
                label, fo_last_error());
    }
    if (st == FO_SUCCESS && c->role == FO_ROLE_MASTER) {
      /* master weights start as the widened parameters */
      float want[SLOT_ELEMS];
      cr_assert_eq(fo_convert_to_f32(e.o.param_dtype, e.t[0].param, want, SLOT_ELEMS), FO_SUCCESS);
      for (int k = 0; k < SLOT_ELEMS; ++k)
        cr_expect(f2u(fp[k]) == f2u(want[k]), "state_ptr [%s]: master[%d] = %g, param widened = %g",
                  label, k, fp[k], want[k]);
    } else if (st == FO_SUCCESS) {
      for (int k = 0; k < SLOT_ELEMS; ++k)
        cr_expect(fp[k] == 0.0f, "state_ptr [%s]: [%d] = %g, not zeroed", label, k, fp[k]);
    }
    fo_optimizer_destroy(opt);
  }
}

Test(api_optimizer, arena_calls) {
  /* external storage: every valid role is the wrong mode */
  cenv e;
  fo_optimizer *opt = make_opt(&e, FO_ALG_ADAMW);
  for (int r = 0; r < FO_ROLE_COUNT; ++r) {
    void *base = SENT_PTR;
    size_t bytes = SENT_SIZE;
    CHECK(FO_ERR_INVALID_STATE, NULL, fo_optimizer_arena, opt, (fo_role)r, &base, &bytes);
    cr_expect(base == SENT_PTR && bytes == SENT_SIZE, "arena(external, role %d) wrote outputs", r);
  }
  void *vp = NULL;
  cr_expect_eq(fo_optimizer_param_ptr(opt, 1, &vp), FO_SUCCESS);
  cr_expect(vp == e.t[1].param, "external param_ptr is not the caller's");
  cr_expect_eq(fo_optimizer_grad_ptr(opt, 0, &vp), FO_SUCCESS);
  cr_expect(vp == e.t[0].grad, "external grad_ptr is not the caller's");
  fo_optimizer_destroy(opt);

  /* arena storage */
  env_init(&e, FO_ALG_ADAMW);
  set_arena(&e);
  e.t[1].numel = 5; /* not a multiple of the alignment */
  e.nt = 3;
  cr_assert_eq(run_create(&e, "arena", FO_SUCCESS, NULL, &opt), FO_SUCCESS);
  static const struct {
    int role;
    fo_status want;
    size_t elem;
  } roles[] = {
      {FO_ROLE_PARAM, OK, 4},
      {FO_ROLE_GRAD, OK, 4},
      {FO_ROLE_MASTER, IS, 4},
      {FO_ROLE_EXP_AVG, OK, 4},
      {FO_ROLE_EXP_AVG_SQ, OK, 4},
      {FO_ROLE_MAX_EXP_AVG_SQ, IS, 4},
      {FO_ROLE_COUNT, IA, 0},
      {-1, IA, 0},
      {99, IA, 0},
  };
  for (size_t i = 0; i < sizeof roles / sizeof roles[0]; ++i) {
    void *base = SENT_PTR;
    size_t bytes = SENT_SIZE;
    prime_error("fo_optimizer_arena");
    fo_status st = fo_optimizer_arena(opt, (fo_role)roles[i].role, &base, &bytes);
    cr_expect(st == roles[i].want, "arena(role %d): %s, want %s; \"%s\"", roles[i].role,
              st_name(st), st_name(roles[i].want), fo_last_error());
    if (st != FO_SUCCESS) {
      cr_expect(base == SENT_PTR && bytes == SENT_SIZE, "arena(role %d) failed but wrote outputs",
                roles[i].role);
      continue;
    }
    cr_expect(base != NULL && bytes >= (16 + 5 + 16) * roles[i].elem,
              "arena(role %d): base %p bytes %zu", roles[i].role, base, bytes);
    if (roles[i].role > FO_ROLE_GRAD) continue;
    for (int64_t k = 0; k < 3; ++k) {
      void *p = NULL;
      fo_status s2 = roles[i].role == FO_ROLE_PARAM ? fo_optimizer_param_ptr(opt, k, &p)
                                                    : fo_optimizer_grad_ptr(opt, k, &p);
      cr_expect_eq(s2, FO_SUCCESS);
      unsigned char *pc = p, *bc = base;
      cr_expect(pc >= bc && pc + e.t[k].numel * 4 <= bc + bytes,
                "role %d tensor %lld: %p outside the arena", roles[i].role, (long long)k, p);
      cr_expect(((uintptr_t)p & 255u) == 0, "role %d tensor %lld: %p not 256-byte aligned",
                roles[i].role, (long long)k, p);
      for (int64_t j = 0; j < e.t[k].numel; ++j)
        cr_expect(((float *)p)[j] == 0.0f && !signbit(((float *)p)[j]),
                  "role %d tensor %lld [%lld] not zero-filled", roles[i].role, (long long)k,
                  (long long)j);
    }
  }
  fo_optimizer_destroy(opt);
}
