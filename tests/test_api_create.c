/*
 * test_api_create.c -- fo_optimizer_create's argument validation: a table
 * of option, count, pointer, storage, scaler, schedule and overlap cases
 * with their exact statuses (and "on failure nothing the caller owns has
 * changed"), unknown enum values, the CUDA paths on a machine without a
 * GPU, and the choices the header leaves open.
 *
 * Written against include/fusedopt.h only; no library internals.
 */
#define _POSIX_C_SOURCE 200809L

#include <criterion/criterion.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "api_harness.h"
#include "fusedopt.h"

/* ================================================= create: option cases */

typedef struct create_case {
  const char *name;
  mutator mut;
  fo_status want;
  const char *arg; /* must appear in fo_last_error on failure; may be NULL */
} create_case;

/* pointers and counts */
MUT(m_none, (void)e)
MUT(m_out_null, e->out_null = 1)
MUT(m_options_null, e->po = NULL)
MUT(m_hparams_null, e->php = NULL)
MUT(m_tensors_null, e->pt = NULL)
MUT(m_param_null, e->t[1].param = NULL)
MUT(m_grad_null, e->t[0].grad = NULL)
MUT(m_nt_neg, e->nt = -1)
MUT(m_nt_min, e->nt = INT64_MIN)
MUT(m_ng_zero, e->ng = 0)
MUT(m_ng_neg, e->ng = -1)
MUT(m_ng_over, e->ng = FO_MAX_GROUPS + 1)
MUT(m_ng_max, e->ng = FO_MAX_GROUPS)
MUT(m_ng_int_max, e->ng = INT_MAX)
MUT(m_numel_neg, e->t[1].numel = -1)
MUT(m_numel_min, e->t[1].numel = INT64_MIN)
MUT(m_numel_over, e->t[1].numel = ((int64_t)1 << 62) + 1)
MUT(m_numel_max, e->t[1].numel = INT64_MAX)
MUT(m_numel_zero_null, e->t[1].numel = 0; e->t[1].param = e->t[1].grad = NULL)
MUT(m_numel_zero_ptrs, e->t[1].numel = 0)
MUT(m_group_neg, e->t[1].group = -1)
MUT(m_group_eq_ng, e->t[1].group = 2)
MUT(m_group_max, e->t[1].group = FO_MAX_GROUPS)
MUT(m_group_unused, e->ng = 3) /* group 2 has no tensor: allowed */
MUT(m_three_tensors, e->nt = 3)
/* options fields */
MUT(m_size_zero, e->o.struct_size = 0)
MUT(m_size_small, e->o.struct_size = sizeof(fo_options) - 1)
MUT(m_size_half, e->o.struct_size = sizeof(fo_options) / 2)
MUT(m_size_big, e->o.struct_size = sizeof(fo_options) + 8)
MUT(m_reserved0, e->o.reserved[0] = 1)
MUT(m_reserved_last, e->o.reserved[NRESERVED - 1] = UINT64_MAX)
MUT(m_master_2, e->o.master_weights = 2)
MUT(m_master_neg, e->o.master_weights = -1)
MUT(m_sr_2, e->o.stochastic_rounding = 2)
MUT(m_sr_neg, e->o.stochastic_rounding = -1)
MUT(m_threads_neg, e->o.num_threads = -1)
MUT(m_threads_1, e->o.num_threads = 1)
MUT(m_threads_max, e->o.num_threads = FO_MAX_THREADS)
MUT(m_threads_over, e->o.num_threads = FO_MAX_THREADS + 1)
MUT(m_seed, e->o.seed = UINT64_MAX)
/* dtype / master / stochastic-rounding combinations */
MUT(m_bf16, e->o.param_dtype = e->o.grad_dtype = FO_DTYPE_BF16)
MUT(m_f16, e->o.param_dtype = e->o.grad_dtype = FO_DTYPE_F16)
MUT(m_bf16_nomaster, m_bf16(e); e->o.master_weights = 0)
MUT(m_f16_nomaster, m_f16(e); e->o.master_weights = 0)
MUT(m_bf16_sr, m_bf16_nomaster(e); e->o.stochastic_rounding = 1)
MUT(m_f16_sr, m_f16_nomaster(e); e->o.stochastic_rounding = 1)
MUT(m_bf16_sr_master, m_bf16(e); e->o.stochastic_rounding = 1)
/* storage */
MUT(m_arena, set_arena(e))
MUT(m_arena_param, set_arena(e); e->t[0].param = at(e, 0))
MUT(m_arena_grad, set_arena(e); e->t[1].grad = at(e, 3 * SLOT_BYTES))
MUT(m_arena_huge, set_arena(e); e->nt = 1; e->t[0].numel = (int64_t)1 << 62)
MUT(m_arena_huge_sum, set_arena(e); e->t[0].numel = (int64_t)1 << 61;
    e->t[1].numel = (int64_t)1 << 61)
MUT(m_device_3, e->o.device = 3) /* ignored on the CPU */
/* clipping and loss scaling */
MUT(m_clip_neg, e->o.max_grad_norm = -1.0f)
MUT(m_clip_nan, e->o.max_grad_norm = NAN)
MUT(m_clip_ok, e->o.max_grad_norm = 1.0f)
MUT(m_unscaled_2, e->o.write_unscaled_grads = 2)
MUT(m_unscaled_1, e->o.write_unscaled_grads = 1)
MUT(m_ls_2, e->o.loss_scaler.enabled = 2)
MUT(m_ls_on, e->o.loss_scaler.enabled = 1)
MUT(m_ls_init_0, m_ls_on(e); e->o.loss_scaler.init_scale = 0.0f)
MUT(m_ls_init_neg, m_ls_on(e); e->o.loss_scaler.init_scale = -1.0f)
MUT(m_ls_init_nan, m_ls_on(e); e->o.loss_scaler.init_scale = NAN)
MUT(m_ls_init_inf, m_ls_on(e); e->o.loss_scaler.init_scale = INFINITY)
MUT(m_ls_init_subnormal, m_ls_on(e); e->o.loss_scaler.init_scale = 0x1p-127f)
MUT(m_ls_init_floor, m_ls_on(e); e->o.loss_scaler.init_scale = FO_LOSS_SCALE_MIN)
MUT(m_ls_growth_1, m_ls_on(e); e->o.loss_scaler.growth_factor = 1.0f)
MUT(m_ls_growth_nan, m_ls_on(e); e->o.loss_scaler.growth_factor = NAN)
MUT(m_ls_backoff_0, m_ls_on(e); e->o.loss_scaler.backoff_factor = 0.0f)
MUT(m_ls_backoff_1, m_ls_on(e); e->o.loss_scaler.backoff_factor = 1.0f)
MUT(m_ls_backoff_nan, m_ls_on(e); e->o.loss_scaler.backoff_factor = NAN)
MUT(m_ls_interval_0, m_ls_on(e); e->o.loss_scaler.growth_interval = 0)
MUT(m_ls_max_neg, m_ls_on(e); e->o.loss_scaler.max_scale = -1.0f)
MUT(m_ls_max_nan, m_ls_on(e); e->o.loss_scaler.max_scale = NAN)
MUT(m_ls_hyst_0, m_ls_on(e); e->o.loss_scaler.hysteresis = 0)
/* schedules */
MUT(m_sch_warm_neg, e->o.schedule.warmup_steps = -1)
MUT(m_sch_unused_neg, e->o.schedule.total_steps = -1)    /* CONSTANT */
MUT(m_sch_unused_gamma, e->o.schedule.gamma = -1.0f)     /* CONSTANT */
MUT(m_sch_unused_ratio, e->o.schedule.min_ratio = -0.5f) /* CONSTANT */
MUT(m_cos, e->o.schedule.kind = FO_SCHED_COSINE; e->o.schedule.total_steps = 100)
MUT(m_cos_warm, m_cos(e); e->o.schedule.warmup_steps = 10)
MUT(m_cos_total_0, m_cos(e); e->o.schedule.total_steps = 0)
MUT(m_cos_total_eq_warm, m_cos(e); e->o.schedule.warmup_steps = 100)
MUT(m_cos_ratio_big, m_cos(e); e->o.schedule.min_ratio = 1.5f)
MUT(m_cos_ratio_nan, m_cos(e); e->o.schedule.min_ratio = NAN)
MUT(m_step, e->o.schedule.kind = FO_SCHED_STEP; e->o.schedule.step_size = 10;
    e->o.schedule.gamma = 0.5f)
MUT(m_step_size_0, m_step(e); e->o.schedule.step_size = 0)
MUT(m_step_gamma_0, m_step(e); e->o.schedule.gamma = 0.0f)
MUT(m_step_gamma_big, m_step(e); e->o.schedule.gamma = 1.5f)
MUT(m_step_gamma_nan, m_step(e); e->o.schedule.gamma = NAN)
MUT(m_step_gamma_1, m_step(e); e->o.schedule.gamma = 1.0f)
MUT(m_exp, e->o.schedule.kind = FO_SCHED_EXPONENTIAL; e->o.schedule.gamma = 0.99f)
MUT(m_exp_gamma_0, m_exp(e); e->o.schedule.gamma = 0.0f)
MUT(m_sgdr, e->o.schedule.kind = FO_SCHED_COSINE_RESTARTS; e->o.schedule.period = 10;
    e->o.schedule.period_mult = 2)
MUT(m_sgdr_period_0, m_sgdr(e); e->o.schedule.period = 0)
MUT(m_sgdr_mult_0, m_sgdr(e); e->o.schedule.period_mult = 0)
MUT(m_cyc, e->o.schedule.kind = FO_SCHED_CYCLIC; e->o.schedule.step_size = 5;
    e->o.schedule.min_ratio = 0.1f)
MUT(m_cyc_size_neg, m_cyc(e); e->o.schedule.step_size = -1)
MUT(m_cyc_ratio_neg, m_cyc(e); e->o.schedule.min_ratio = -0.1f)
MUT(m_ls_max_below_init, m_ls_on(e); e->o.loss_scaler.max_scale = 1024.0f) /* init 65536 */
MUT(m_ls_max_eq_init, m_ls_on(e); e->o.loss_scaler.max_scale = e->o.loss_scaler.init_scale)
MUT(m_sch_unused_gamma_nan, e->o.schedule.gamma = NAN)      /* CONSTANT */
MUT(m_sch_unused_gamma_inf, e->o.schedule.gamma = INFINITY) /* CONSTANT */
MUT(m_cos_ratio_1, m_cos(e); e->o.schedule.min_ratio = 1.0f)
MUT(m_cyc_size_huge, m_cyc(e); e->o.schedule.step_size = INT64_MAX / 2 + 1)
MUT(m_cyc_size_half_max, m_cyc(e); e->o.schedule.step_size = INT64_MAX / 2)
/* overlap (fp32: 64 bytes per buffer) */
MUT(m_ov_grad_is_param, e->t[0].grad = e->t[0].param)
MUT(m_ov_grad_in_param, e->t[0].grad = at(e, 32))
MUT(m_ov_last_elem, e->t[1].param = at(e, SLOT_BYTES - 4)) /* t0 grad too */
MUT(m_ov_shared_grad, e->t[1].grad = e->t[0].grad)
MUT(m_ov_param_is_other_grad, e->t[1].param = e->t[0].grad)
MUT(m_ov_low_into_high, e->t[0].param = at(e, 2 * SLOT_BYTES + 8))
MUT(m_ov_third_vs_first, e->nt = 3; e->t[2].grad = at(e, 8))
MUT(m_ov_grad_end_into_next, e->t[0].grad = at(e, SLOT_BYTES + 4)) /* into t1.param */
MUT(m_f16_touching, m_f16(e); e->t[0].grad = at(e, 32))            /* 16 x 2 bytes */
MUT(m_f16_one_over, m_f16(e); e->t[0].grad = at(e, 30))
MUT(m_bf16_touching, m_bf16(e); e->t[0].param = at(e, SLOT_BYTES - 32)) /* [32,64), grad at 64 */
/* alignment: buffers start on a multiple of their element size (slots 6
 * and 7 are free) */
MUT(m_mis_param_f32, e->t[1].param = at(e, 6 * SLOT_BYTES + 2))
MUT(m_mis_grad_odd, e->t[0].grad = at(e, 6 * SLOT_BYTES + 1))
MUT(m_f32_on_4, e->t[1].param = at(e, 6 * SLOT_BYTES + 4))
MUT(m_mis_param_bf16, m_bf16(e); e->t[1].param = at(e, 6 * SLOT_BYTES + 1))
MUT(m_mis_grad_f16, m_f16(e); e->t[1].grad = at(e, 6 * SLOT_BYTES + 3))
MUT(m_bf16_on_2, m_bf16(e); e->t[1].param = at(e, 6 * SLOT_BYTES + 2);
    e->t[1].grad = at(e, 7 * SLOT_BYTES + 6))

static const create_case k_create_cases[] = {
    {"baseline", m_none, FO_SUCCESS, NULL},
    /* NULL pointers */
    {"out NULL", m_out_null, FO_ERR_NULL_POINTER, "out"},
    {"options NULL", m_options_null, FO_ERR_NULL_POINTER, "options"},
    {"hparams NULL", m_hparams_null, FO_ERR_NULL_POINTER, "hparams"},
    {"tensors NULL", m_tensors_null, FO_ERR_NULL_POINTER, "tensors"},
    {"external tensors[1].param NULL", m_param_null, FO_ERR_NULL_POINTER, "param"},
    {"external tensors[0].grad NULL", m_grad_null, FO_ERR_NULL_POINTER, "grad"},
    /* counts and sizes */
    {"num_tensors -1", m_nt_neg, FO_ERR_INVALID_ARGUMENT, "num_tensors"},
    {"num_tensors INT64_MIN", m_nt_min, FO_ERR_INVALID_ARGUMENT, "num_tensors"},
    {"num_groups 0", m_ng_zero, FO_ERR_INVALID_ARGUMENT, "num_groups"},
    {"num_groups -1", m_ng_neg, FO_ERR_INVALID_ARGUMENT, "num_groups"},
    {"num_groups FO_MAX_GROUPS+1", m_ng_over, FO_ERR_INVALID_ARGUMENT, "num_groups"},
    {"num_groups INT_MAX", m_ng_int_max, FO_ERR_INVALID_ARGUMENT, "num_groups"},
    {"num_groups FO_MAX_GROUPS", m_ng_max, FO_SUCCESS, NULL},
    {"group without tensors", m_group_unused, FO_SUCCESS, NULL},
    {"three tensors", m_three_tensors, FO_SUCCESS, NULL},
    {"numel -1", m_numel_neg, FO_ERR_INVALID_ARGUMENT, "numel"},
    {"numel INT64_MIN", m_numel_min, FO_ERR_INVALID_ARGUMENT, "numel"},
    {"numel 2^62+1", m_numel_over, FO_ERR_INVALID_ARGUMENT, "numel"},
    {"numel INT64_MAX", m_numel_max, FO_ERR_INVALID_ARGUMENT, "numel"},
    {"numel 0, NULL param and grad", m_numel_zero_null, FO_SUCCESS, NULL},
    {"numel 0 with pointers", m_numel_zero_ptrs, FO_SUCCESS, NULL},
    {"group -1", m_group_neg, FO_ERR_INVALID_ARGUMENT, "group"},
    {"group == num_groups", m_group_eq_ng, FO_ERR_INVALID_ARGUMENT, "group"},
    {"group FO_MAX_GROUPS", m_group_max, FO_ERR_INVALID_ARGUMENT, "group"},
    /* options */
    {"struct_size 0", m_size_zero, FO_ERR_INVALID_ARGUMENT, "struct_size"},
    {"struct_size -1", m_size_small, FO_ERR_INVALID_ARGUMENT, "struct_size"},
    {"struct_size half", m_size_half, FO_ERR_INVALID_ARGUMENT, "struct_size"},
    {"struct_size +8", m_size_big, FO_ERR_INVALID_ARGUMENT, "struct_size"},
    {"reserved[0] = 1", m_reserved0, FO_ERR_INVALID_ARGUMENT, "reserved"},
    {"reserved[last] = ~0", m_reserved_last, FO_ERR_INVALID_ARGUMENT, "reserved"},
    {"master_weights 2", m_master_2, FO_ERR_INVALID_ARGUMENT, "master_weights"},
    {"master_weights -1", m_master_neg, FO_ERR_INVALID_ARGUMENT, "master_weights"},
    {"stochastic_rounding 2", m_sr_2, FO_ERR_INVALID_ARGUMENT, "stochastic_rounding"},
    {"stochastic_rounding -1", m_sr_neg, FO_ERR_INVALID_ARGUMENT, "stochastic_rounding"},
    {"num_threads -1", m_threads_neg, FO_ERR_INVALID_ARGUMENT, "num_threads"},
    {"num_threads 1", m_threads_1, FO_SUCCESS, NULL},
    {"num_threads FO_MAX_THREADS", m_threads_max, FO_SUCCESS, NULL},
    {"num_threads FO_MAX_THREADS + 1", m_threads_over, FO_ERR_INVALID_ARGUMENT, "num_threads"},
    {"seed ~0", m_seed, FO_SUCCESS, NULL},
    {"device 3 on the CPU executor (ignored)", m_device_3, FO_SUCCESS, NULL},
    /* clipping, loss scaling */
    {"max_grad_norm -1", m_clip_neg, IA, "max_grad_norm"},
    {"max_grad_norm NaN", m_clip_nan, IA, "max_grad_norm"},
    {"max_grad_norm 1", m_clip_ok, OK, NULL},
    {"write_unscaled_grads 2", m_unscaled_2, IA, "write_unscaled_grads"},
    {"write_unscaled_grads 1", m_unscaled_1, OK, NULL},
    {"loss_scaler.enabled 2", m_ls_2, IA, "enabled"},
    {"loss_scaler on", m_ls_on, OK, NULL},
    {"init_scale 0", m_ls_init_0, IA, "init_scale"},
    {"init_scale -1", m_ls_init_neg, IA, "init_scale"},
    {"init_scale NaN", m_ls_init_nan, IA, "init_scale"},
    {"init_scale inf", m_ls_init_inf, IA, "init_scale"},
    {"init_scale subnormal", m_ls_init_subnormal, IA, "FO_LOSS_SCALE_MIN"},
    {"init_scale FO_LOSS_SCALE_MIN", m_ls_init_floor, OK, NULL},
    {"growth_factor 1", m_ls_growth_1, IA, "growth_factor"},
    {"growth_factor NaN", m_ls_growth_nan, IA, "growth_factor"},
    {"backoff_factor 0", m_ls_backoff_0, IA, "backoff_factor"},
    {"backoff_factor 1", m_ls_backoff_1, IA, "backoff_factor"},
    {"backoff_factor NaN", m_ls_backoff_nan, IA, "backoff_factor"},
    {"growth_interval 0", m_ls_interval_0, IA, "growth_interval"},
    {"max_scale -1", m_ls_max_neg, IA, "max_scale"},
    {"max_scale NaN", m_ls_max_nan, IA, "max_scale"},
    {"hysteresis 0", m_ls_hyst_0, IA, "hysteresis"},
    /* schedules */
    {"warmup_steps -1", m_sch_warm_neg, IA, "warmup_steps"},
    {"CONSTANT, unused total_steps -1", m_sch_unused_neg, IA, "total_steps"},
    {"CONSTANT, unused gamma -1", m_sch_unused_gamma, IA, "gamma"},
    {"CONSTANT, unused min_ratio -0.5", m_sch_unused_ratio, IA, "min_ratio"},
    {"COSINE 100", m_cos, OK, NULL},
    {"COSINE 100, warmup 10", m_cos_warm, OK, NULL},
    {"COSINE total 0", m_cos_total_0, IA, "total_steps"},
    {"COSINE total == warmup", m_cos_total_eq_warm, IA, "total_steps"},
    {"COSINE min_ratio 1.5", m_cos_ratio_big, IA, "min_ratio"},
    {"COSINE min_ratio NaN", m_cos_ratio_nan, IA, "min_ratio"},
    {"STEP 10 x0.5", m_step, OK, NULL},
    {"STEP step_size 0", m_step_size_0, IA, "step_size"},
    {"STEP gamma 0", m_step_gamma_0, IA, "gamma"},
    {"STEP gamma 1.5", m_step_gamma_big, IA, "gamma"},
    {"STEP gamma NaN", m_step_gamma_nan, IA, "gamma"},
    {"STEP gamma 1", m_step_gamma_1, OK, NULL},
    {"EXPONENTIAL 0.99", m_exp, OK, NULL},
    {"EXPONENTIAL gamma 0", m_exp_gamma_0, IA, "gamma"},
    {"COSINE_RESTARTS 10 x2", m_sgdr, OK, NULL},
    {"COSINE_RESTARTS period 0", m_sgdr_period_0, IA, "period"},
    {"COSINE_RESTARTS period_mult 0", m_sgdr_mult_0, IA, "period_mult"},
    {"CYCLIC 5", m_cyc, OK, NULL},
    {"CYCLIC step_size -1", m_cyc_size_neg, IA, "step_size"},
    {"CYCLIC min_ratio -0.1", m_cyc_ratio_neg, IA, "min_ratio"},
    {"max_scale below init_scale", m_ls_max_below_init, IA, "max_scale"},
    {"max_scale == init_scale", m_ls_max_eq_init, OK, NULL},
    {"CONSTANT, unused gamma NaN", m_sch_unused_gamma_nan, IA, "gamma"},
    {"CONSTANT, unused gamma inf", m_sch_unused_gamma_inf, IA, "gamma"},
    {"COSINE min_ratio 1", m_cos_ratio_1, OK, NULL},
    {"CYCLIC step_size INT64_MAX/2+1 (2*step_size overflows)", m_cyc_size_huge, IA, "step_size"},
    {"CYCLIC step_size INT64_MAX/2", m_cyc_size_half_max, OK, NULL},
    /* dtypes, master weights, stochastic rounding */
    {"bf16 + master", m_bf16, FO_SUCCESS, NULL},
    {"f16 + master", m_f16, FO_SUCCESS, NULL},
    {"bf16 no master", m_bf16_nomaster, FO_SUCCESS, NULL},
    {"f16 no master", m_f16_nomaster, FO_SUCCESS, NULL},
    {"bf16 no master + SR", m_bf16_sr, FO_SUCCESS, NULL},
    {"f16 + SR", m_f16_sr, FO_ERR_UNSUPPORTED, "stochastic_rounding"},
    {"bf16 + master + SR", m_bf16_sr_master, FO_ERR_UNSUPPORTED, "stochastic_rounding"},
    /* storage */
    {"arena", m_arena, FO_SUCCESS, NULL},
    {"arena with tensors[0].param", m_arena_param, FO_ERR_INVALID_ARGUMENT, "param"},
    {"arena with tensors[1].grad", m_arena_grad, FO_ERR_INVALID_ARGUMENT, "grad"},
    {"arena numel 2^62 (2^64 bytes)", m_arena_huge, FO_ERR_OUT_OF_MEMORY, NULL},
    {"arena 2 x 2^61 (sum 2^64 bytes)", m_arena_huge_sum, FO_ERR_OUT_OF_MEMORY, NULL},
    /* overlap */
    {"grad == own param", m_ov_grad_is_param, FO_ERR_OVERLAP, NULL},
    {"grad inside own param", m_ov_grad_in_param, FO_ERR_OVERLAP, NULL},
    {"param shares one element", m_ov_last_elem, FO_ERR_OVERLAP, NULL},
    {"two tensors share a grad", m_ov_shared_grad, FO_ERR_OVERLAP, NULL},
    {"param == other tensor's grad", m_ov_param_is_other_grad, FO_ERR_OVERLAP, NULL},
    {"tensors[0].param inside tensors[1].param", m_ov_low_into_high, FO_ERR_OVERLAP, NULL},
    {"tensors[2].grad inside tensors[0].param", m_ov_third_vs_first, FO_ERR_OVERLAP, NULL},
    {"grad end runs into the next param", m_ov_grad_end_into_next, FO_ERR_OVERLAP, NULL},
    {"f16 param/grad touching", m_f16_touching, FO_SUCCESS, NULL},
    {"f16 param/grad one element over", m_f16_one_over, FO_ERR_OVERLAP, NULL},
    {"bf16 param ends where its grad starts", m_bf16_touching, FO_SUCCESS, NULL},
    /* alignment */
    {"f32 param on 2 bytes", m_mis_param_f32, FO_ERR_BAD_POINTER, "aligned"},
    {"f32 grad on an odd address", m_mis_grad_odd, FO_ERR_BAD_POINTER, "tensors[0].grad"},
    {"f32 buffers on 4 bytes, not 16", m_f32_on_4, FO_SUCCESS, NULL},
    {"bf16 param on an odd address", m_mis_param_bf16, FO_ERR_BAD_POINTER, "tensors[1].param"},
    {"f16 grad on an odd address", m_mis_grad_f16, FO_ERR_BAD_POINTER, "aligned"},
    {"bf16 buffers on 2 bytes, not 4", m_bf16_on_2, FO_SUCCESS, NULL},
};

/* Each case with AdamW (moments to allocate) and plain SGD (no state). */
Test(api_create, table) {
  static const fo_algorithm algs[] = {FO_ALG_ADAMW, FO_ALG_SGD};
  for (size_t i = 0; i < sizeof k_create_cases / sizeof k_create_cases[0]; ++i) {
    const create_case *c = &k_create_cases[i];
    for (size_t a = 0; a < sizeof algs / sizeof algs[0]; ++a) {
      cenv e;
      char label[160];
      env_init(&e, algs[a]);
      c->mut(&e);
      snprintf(label, sizeof label, "%s, %s", c->name, algs[a] == FO_ALG_SGD ? "SGD" : "AdamW");
      run_create(&e, label, c->want, c->arg, NULL);
    }
  }
}

/* Unknown enum values in every enum field of fo_options. */
Test(api_create, unknown_enums) {
  static const struct {
    const char *field;
    size_t offset;
    int count;
  } fields[] = {
      {"algorithm", offsetof(fo_options, algorithm), FO_ALG_COUNT},
      {"executor", offsetof(fo_options, executor), FO_EXEC_COUNT},
      {"storage", offsetof(fo_options, storage), FO_STORAGE_COUNT},
      {"param_dtype", offsetof(fo_options, param_dtype), FO_DTYPE_COUNT},
      {"grad_dtype", offsetof(fo_options, grad_dtype), FO_DTYPE_COUNT},
      {"kind", offsetof(fo_options, schedule.kind), FO_SCHED_COUNT},
  };
  cr_assert_eq(sizeof(fo_algorithm), sizeof(int));
  for (size_t f = 0; f < sizeof fields / sizeof fields[0]; ++f) {
    const int bad[] = {fields[f].count, -1, 99, INT_MAX, INT_MIN};
    for (size_t b = 0; b < sizeof bad / sizeof bad[0]; ++b) {
      cenv e;
      char label[96];
      env_init(&e, FO_ALG_ADAMW);
      memcpy((unsigned char *)&e.o + fields[f].offset, &bad[b], sizeof(int));
      snprintf(label, sizeof label, "options.%s = %d", fields[f].field, bad[b]);
      run_create(&e, label, FO_ERR_INVALID_ARGUMENT, fields[f].field, NULL);
    }
  }
}

/* ============================================================ CUDA paths */

Test(api_cuda, device_count) {
  int n = -7;
  prime_error("fo_cuda_device_count");
  fo_status st = fo_cuda_device_count(&n);
  if (st == FO_SUCCESS) {
    cr_expect(n >= 1, "FO_SUCCESS with %d devices", n);
    return;
  }
  const char *m = fo_last_error();
  cr_expect(st == FO_ERR_NO_DEVICE, "fo_cuda_device_count: %s; \"%s\"", st_name(st), m);
  cr_expect(n == -7, "failed but set *count = %d", n);
  cr_expect(contains_ci(m, "driver") || contains_ci(m, "device"),
            "reason \"%s\" names neither driver nor device", m);
  cr_expect(strstr(m, "fo_cuda_device_count") != NULL, "\"%s\"", m);
}

Test(api_cuda, create_without_gpu) {
  int n = 0;
  if (fo_cuda_device_count(&n) == FO_SUCCESS) {
    fprintf(stderr,
            "skipped: %d CUDA device(s) present, so FO_EXEC_CUDA "
            "create cannot fail with FO_ERR_NO_DEVICE here\n",
            n);
    cr_skip_test("%d CUDA device(s) present", n);
  }
  cenv e;
  env_init(&e, FO_ALG_ADAMW);
  set_arena(&e); /* no pointers needed */
  e.o.executor = FO_EXEC_CUDA;
  run_create(&e, "FO_EXEC_CUDA without a GPU", FO_ERR_NO_DEVICE, NULL, NULL);
  const char *m = fo_last_error();
  cr_expect(contains_ci(m, "driver") || contains_ci(m, "device"),
            "reason \"%s\" names neither driver nor device", m);
#if !FO_TEST_CUDA_BUILT
  cr_expect(strstr(m, "built without CUDA") && strstr(m, "FO_ENABLE_CUDA=OFF"),
            "a build without CUDA must say so: \"%s\"", m);
#endif
}

/* A build without CUDA (FO_ENABLE_CUDA=OFF, docs/install.md): every CUDA
 * and NCCL entry point checks its arguments as usual, then fails with
 * FO_ERR_NO_DEVICE (NCCL's id: FO_ERR_UNSUPPORTED) and says the build has
 * no CUDA; a stream is refused; the CPU executor works. */
Test(api_cuda, build_without_cuda_says_so) {
#if FO_TEST_CUDA_BUILT
  cr_skip_test("this build has CUDA (FO_ENABLE_CUDA=ON)");
#else
  int n = -3;
  cr_expect_eq(fo_cuda_device_count(&n), FO_ERR_NO_DEVICE);
  cr_expect_eq(n, -3, "failed but set *count = %d", n);
  cr_expect(strstr(fo_last_error(), "built without CUDA") != NULL, "\"%s\"", fo_last_error());
  fo_nccl_id id;
  memset(&id, 0x5a, sizeof id);
  fo_comm *c = (fo_comm *)&n;
  cr_expect_eq(fo_comm_init_nccl(&c, &id, 0, 1, 0), FO_ERR_NO_DEVICE);
  cr_expect(c == (fo_comm *)&n, "a failed init set *out");
  cr_expect(strstr(fo_last_error(), "fo_comm_init_nccl") && strstr(fo_last_error(), "without CUDA"),
            "\"%s\"", fo_last_error());
  cr_expect_eq(fo_comm_init_nccl(&c, &id, 2, 1, 0), FO_ERR_INVALID_ARGUMENT);
  cr_expect_eq(fo_nccl_get_id(&id), FO_ERR_UNSUPPORTED);
  cr_expect(strstr(fo_last_error(), "without NCCL") != NULL, "\"%s\"", fo_last_error());
  cr_expect_eq(fo_comm_wrap_nccl(&c, (fo_nccl_comm_t)&id), FO_ERR_UNSUPPORTED);
  /* the CPU executor: a stream is not a CUDA stream here either */
  cenv e;
  env_init(&e, FO_ALG_ADAMW);
  set_arena(&e);
  fo_optimizer *opt = NULL;
  cr_assert_eq(fo_optimizer_create(&opt, &e.o, e.hp, e.ng, e.t, e.nt), FO_SUCCESS, "%s",
               fo_last_error());
  cr_expect_eq(fo_optimizer_step(opt, (fo_stream_t)&n), FO_ERR_INVALID_ARGUMENT);
  fo_optimizer_destroy(opt);
#endif
}

/* ===================================================== ambiguous contract */

/* Cases the header leaves open; the choice made here is the sensible one,
 * listed in the report for the library author to confirm. */
Test(api_ambiguous, choices) {
  cenv e;
  /* stochastic rounding with fp32 parameters: nothing to round */
  env_init(&e, FO_ALG_ADAMW);
  e.o.stochastic_rounding = 1;
  run_create(&e, "[ambiguous] fp32 + SR", FO_ERR_UNSUPPORTED, "stochastic_rounding", NULL);
  /* unused hyper-parameters that are finite and non-negative but out of
   * their algorithm's range are ignored ("ignored but must still be finite
   * and non-negative"); a negative one is refused */
  env_init(&e, FO_ALG_SGD);
  e.hp[1].beta1 = 1.5f;
  e.hp[1].eps = 0.0f;
  run_create(&e, "[ambiguous] SGD beta1 1.5, eps 0 (unused)", FO_SUCCESS, NULL, NULL);
  env_init(&e, FO_ALG_LION);
  e.hp[1].eps = 0.0f;
  e.hp[1].dampening = 2.0f;
  run_create(&e, "[ambiguous] Lion eps 0, dampening 2 (unused)", FO_SUCCESS, NULL, NULL);
  env_init(&e, FO_ALG_LION);
  e.hp[1].eps = -1.0f;
  run_create(&e, "Lion eps -1 (unused but negative)", FO_ERR_INVALID_ARGUMENT, "eps", NULL);
  /* a zero-size tensor occupies no bytes, so it overlaps nothing */
  env_init(&e, FO_ALG_ADAMW);
  e.nt = 3;
  e.t[2].numel = 0;
  e.t[2].param = at(&e, 4);
  e.t[2].grad = at(&e, 4);
  run_create(&e, "[ambiguous] numel 0 inside another buffer", FO_SUCCESS, NULL, NULL);
  /* each tensor at most 2^62 (documented), their total more than 2^62 */
  env_init(&e, FO_ALG_ADAMW);
  set_arena(&e);
  e.t[0].numel = (int64_t)1 << 62;
  run_create(&e, "[ambiguous] total numel 2^62 + 16", FO_ERR_INVALID_ARGUMENT, "2^62", NULL);
  /* an external fp32 tensor of 2^62 elements spans 2^64 bytes: no such
   * buffer exists (and p + bytes wraps); create must not succeed, whatever
   * the status (SGD without momentum allocates no state to fail on) */
  static const fo_algorithm algs[] = {FO_ALG_SGD, FO_ALG_ADAMW};
  for (size_t a = 0; a < 2; ++a) {
    env_init(&e, algs[a]);
    e.nt = 1;
    e.t[0].numel = (int64_t)1 << 62;
    fo_optimizer *opt = SENT_OPT;
    fo_status st = fo_optimizer_create(&opt, &e.o, e.hp, e.ng, e.t, e.nt);
    cr_expect(st == FO_ERR_INVALID_ARGUMENT || st == FO_ERR_OVERLAP || st == FO_ERR_OUT_OF_MEMORY,
              "[ambiguous] external fp32 numel 2^62, alg %d: %s", algs[a], st_name(st));
    if (st == FO_SUCCESS) fo_optimizer_destroy(opt);
  }
  /* num_tensors 0: an optimizer over nothing */
  env_init(&e, FO_ALG_ADAMW);
  e.nt = 0;
  run_create(&e, "[ambiguous] num_tensors 0", FO_SUCCESS, NULL, NULL);
  env_init(&e, FO_ALG_ADAMW);
  e.nt = 0;
  e.pt = NULL;
  run_create(&e, "[ambiguous] num_tensors 0, tensors NULL", FO_SUCCESS, NULL, NULL);
}
