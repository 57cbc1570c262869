/*
 * accessors.c -- reading and changing an optimizer between steps: the step
 * count, the step's report, the loss scaler's state and NAdam's products,
 * learning rates and hyper-parameters, and the buffers a caller may read
 * and write.
 */
#include <math.h>
#include <string.h>

#include "exec.h"

/* A copy of the step state, wherever it lives. */
static fo_status read_state(const char *fn, const fo_optimizer *opt, fo_step_state *out) {
  fo_status st = fo_check_process(fn, opt, 0);
  if (st != FO_SUCCESS) return st;
  return fo_exec_read_state(fn, opt, out);
}

/* The step state as get_info and get_scaler_state report it.  With loss
 * scaling off a value written through loss_scale_ptr is ignored, here as
 * by the steps and a save, so that set_scaler_state takes back what
 * get_scaler_state gives. */
static fo_status read_reported_state(const char *fn, const fo_optimizer *opt, fo_step_state *out) {
  fo_status st = fo_claim(fn, opt);
  if (st == FO_SUCCESS) st = fo_release(opt, read_state(fn, opt, out));
  if (st == FO_SUCCESS) fo_scaler_fields_unused(&opt->options, out);
  return st;
}

fo_status fo_optimizer_get_step(const fo_optimizer *opt, int64_t *out) {
  static const char fn[] = "fo_optimizer_get_step";
  if (!opt || !out) return fo_fail(FO_ERR_NULL_POINTER, fn, "%s is NULL", opt ? "out" : "opt");
  fo_step_state s;
  fo_status st = fo_claim(fn, opt);
  if (st != FO_SUCCESS) return st;
  st = fo_release(opt, read_state(fn, opt, &s));
  if (st == FO_SUCCESS) *out = s.step;
  return st;
}

static fo_status set_step_claimed(const char *fn, fo_optimizer *opt, int64_t step) {
  fo_step_state s;
  fo_status st = read_state(fn, opt, &s);
  if (st != FO_SUCCESS) return st;
  s.step = step;
  /* NAdam's products of momentum coefficients follow the step count */
  if (opt->options.algorithm == FO_ALG_NADAM) {
    fo_prepare_args a;
    fo_prepare_args_fill(opt, &a);
    for (int g = 0; g < opt->num_groups; g++)
      s.mu_product[g] = fo_nadam_mu_product(&a.groups[g], step);
  }
  st = fo_exec_write_state(fn, opt, &s);
  if (st == FO_SUCCESS) fo_steps_left_reset(opt, &s);
  return st;
}

fo_status fo_optimizer_set_step(fo_optimizer *opt, int64_t step) {
  static const char fn[] = "fo_optimizer_set_step";
  if (!opt) return fo_fail(FO_ERR_NULL_POINTER, fn, "opt is NULL");
  if (step < 0 || step > FO_MAX_STEP)
    return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "step = %lld is outside [0, FO_MAX_STEP = 2^62]",
                   (long long)step);
  fo_status st = fo_claim(fn, opt);
  return st != FO_SUCCESS ? st : fo_release(opt, set_step_claimed(fn, opt, step));
}

fo_status fo_optimizer_get_info(const fo_optimizer *opt, fo_step_info *out) {
  static const char fn[] = "fo_optimizer_get_info";
  if (!opt || !out) return fo_fail(FO_ERR_NULL_POINTER, fn, "%s is NULL", opt ? "out" : "opt");
  fo_step_state s;
  fo_status st = read_reported_state(fn, opt, &s);
  if (st != FO_SUCCESS) return st;
  memset(out, 0, sizeof *out);
  out->step = s.step;
  out->skipped_steps = s.skipped;
  out->last_step_skipped = s.skip;
  out->loss_scale = s.scale;
  out->grad_norm = s.grad_norm;
  out->grad_coef = s.grad_coef;
  out->lr_factor = s.lr_factor;
  out->growth_tracker = s.growth_tracker;
  return FO_SUCCESS;
}

fo_status fo_optimizer_loss_scale_ptr(fo_optimizer *opt, float **out) {
  static const char fn[] = "fo_optimizer_loss_scale_ptr";
  if (!opt || !out) return fo_fail(FO_ERR_NULL_POINTER, fn, "%s is NULL", opt ? "out" : "opt");
  /* Without loss scaling the state's scale is 1 and nothing writes it, so
   * one loop serves both: the backward pass multiplies by 1. */
  *out = &opt->state->scale;
  return FO_SUCCESS;
}

static fo_status check_group(const char *fn, const fo_optimizer *opt, int group) {
  if (group < 0 || group >= opt->num_groups)
    return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "group = %d is outside [0, %d)", group,
                   opt->num_groups);
  return FO_SUCCESS;
}

/* The parts of the step state set_step leaves alone: the loss scaler's
 * and NAdam's.  The setters write the whole state back, like set_step, so
 * that the host's copy (known.c) and steps_left follow them. */

fo_status fo_optimizer_get_scaler_state(const fo_optimizer *opt, fo_scaler_state *out) {
  static const char fn[] = "fo_optimizer_get_scaler_state";
  if (!opt || !out) return fo_fail(FO_ERR_NULL_POINTER, fn, "%s is NULL", opt ? "out" : "opt");
  fo_step_state s;
  fo_status st = read_reported_state(fn, opt, &s);
  if (st != FO_SUCCESS) return st;
  memset(out, 0, sizeof *out); /* the padding too */
  out->skipped_steps = s.skipped;
  out->scale = s.scale;
  out->growth_tracker = s.growth_tracker;
  out->hysteresis_left = s.hysteresis_left;
  return FO_SUCCESS;
}

/* What a step can leave in the scaler's fields (a load's rule), and with
 * loss scaling off what the step keeps there: it never writes them. */
static fo_status check_scaler_state(const char *fn, const fo_optimizer *opt,
                                    const fo_scaler_state *in) {
  if (in->skipped_steps < 0 || in->skipped_steps > FO_MAX_STEP)
    return fo_fail(FO_ERR_INVALID_ARGUMENT, fn,
                   "state->skipped_steps = %lld is outside [0, FO_MAX_STEP = 2^62]",
                   (long long)in->skipped_steps);
  const fo_loss_scaler_options *ls = &opt->options.loss_scaler;
  fo_status st = fo_check_scaler_fields(fn, FO_ERR_INVALID_ARGUMENT, "state's", ls, in->scale,
                                        in->growth_tracker, in->hysteresis_left);
  if (st != FO_SUCCESS || ls->enabled) return st;
  if (in->scale != 1.0f || in->growth_tracker != 0 || in->hysteresis_left != ls->hysteresis)
    return fo_fail(FO_ERR_INVALID_ARGUMENT, fn,
                   "loss scaling is off, so the scaler's fields stay as created: scale 1, "
                   "growth_tracker 0, hysteresis_left %d (loss_scaler.hysteresis); state has "
                   "%g, %d, %d",
                   ls->hysteresis, (double)in->scale, in->growth_tracker, in->hysteresis_left);
  return FO_SUCCESS;
}

static fo_status set_scaler_claimed(const char *fn, fo_optimizer *opt, const fo_scaler_state *in) {
  fo_step_state s;
  fo_status st = read_state(fn, opt, &s);
  if (st != FO_SUCCESS) return st;
  s.skipped = in->skipped_steps;
  s.scale = in->scale;
  s.growth_tracker = in->growth_tracker;
  s.hysteresis_left = in->hysteresis_left;
  st = fo_exec_write_state(fn, opt, &s);
  /* the skipped count bounds the steps left, as the step count does */
  if (st == FO_SUCCESS) fo_steps_left_reset(opt, &s);
  return st;
}

fo_status fo_optimizer_set_scaler_state(fo_optimizer *opt, const fo_scaler_state *state) {
  static const char fn[] = "fo_optimizer_set_scaler_state";
  if (!opt || !state) return fo_fail(FO_ERR_NULL_POINTER, fn, "%s is NULL", opt ? "state" : "opt");
  fo_status st = check_scaler_state(fn, opt, state);
  if (st == FO_SUCCESS) st = fo_claim(fn, opt);
  return st != FO_SUCCESS ? st : fo_release(opt, set_scaler_claimed(fn, opt, state));
}

/* A group whose NAdam product exists: only NAdam keeps one, as only the
 * roles an optimizer keeps have a state pointer (check_role). */
static fo_status check_nadam_group(const char *fn, const fo_optimizer *opt, int group) {
  fo_status st = check_group(fn, opt, group);
  if (st == FO_SUCCESS && opt->options.algorithm != FO_ALG_NADAM)
    st = fo_fail(FO_ERR_INVALID_STATE, fn, "the optimizer runs %s: only NAdam keeps a mu_product",
                 fo_algorithm_names[opt->options.algorithm]);
  return st;
}

fo_status fo_optimizer_get_mu_product(const fo_optimizer *opt, int group, float *out) {
  static const char fn[] = "fo_optimizer_get_mu_product";
  if (!opt || !out) return fo_fail(FO_ERR_NULL_POINTER, fn, "%s is NULL", opt ? "out" : "opt");
  fo_step_state s;
  fo_status st = check_nadam_group(fn, opt, group);
  if (st == FO_SUCCESS) st = fo_claim(fn, opt);
  if (st == FO_SUCCESS) st = fo_release(opt, read_state(fn, opt, &s));
  if (st == FO_SUCCESS) *out = s.mu_product[group];
  return st;
}

static fo_status set_mu_claimed(const char *fn, fo_optimizer *opt, int group, float value) {
  fo_step_state s;
  fo_status st = read_state(fn, opt, &s);
  if (st != FO_SUCCESS) return st;
  s.mu_product[group] = value;
  return fo_exec_write_state(fn, opt, &s);
}

fo_status fo_optimizer_set_mu_product(fo_optimizer *opt, int group, float value) {
  static const char fn[] = "fo_optimizer_set_mu_product";
  if (!opt) return fo_fail(FO_ERR_NULL_POINTER, fn, "opt is NULL");
  fo_status st = check_nadam_group(fn, opt, group);
  if (st != FO_SUCCESS) return st;
  /* what the steps can produce (a load's rule): products of mu_t in [0, 1) */
  if (!fo_mu_product_valid(value))
    return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "mu_product = %g is not in [0, 1]", (double)value);
  st = fo_claim(fn, opt);
  return st != FO_SUCCESS ? st : fo_release(opt, set_mu_claimed(fn, opt, group, value));
}

fo_status fo_optimizer_set_lr(fo_optimizer *opt, int group, float lr) {
  static const char fn[] = "fo_optimizer_set_lr";
  if (!opt) return fo_fail(FO_ERR_NULL_POINTER, fn, "opt is NULL");
  if (group != -1) {
    fo_status st = check_group(fn, opt, group);
    if (st != FO_SUCCESS) return st;
  }
  if (!isfinite(lr) || lr < 0.0f)
    return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "lr = %g must be finite and >= 0", (double)lr);
  fo_status st = fo_claim(fn, opt);
  if (st != FO_SUCCESS) return st;
  for (int g = 0; g < opt->num_groups; g++)
    if (group == -1 || g == group) opt->hparams[g].lr = lr;
  return fo_release(opt, FO_SUCCESS);
}

fo_status fo_optimizer_get_lr(const fo_optimizer *opt, int group, float *out) {
  static const char fn[] = "fo_optimizer_get_lr";
  if (!opt || !out) return fo_fail(FO_ERR_NULL_POINTER, fn, "%s is NULL", opt ? "out" : "opt");
  fo_status st = check_group(fn, opt, group);
  if (st == FO_SUCCESS) st = fo_claim(fn, opt);
  if (st != FO_SUCCESS) return st;
  *out = opt->hparams[group].lr;
  return fo_release(opt, FO_SUCCESS);
}

fo_status fo_optimizer_get_next_lr(const fo_optimizer *opt, int group, float *out) {
  static const char fn[] = "fo_optimizer_get_next_lr";
  if (!opt || !out) return fo_fail(FO_ERR_NULL_POINTER, fn, "%s is NULL", opt ? "out" : "opt");
  fo_status st = check_group(fn, opt, group);
  if (st == FO_SUCCESS) st = fo_claim(fn, opt);
  if (st != FO_SUCCESS) return st;
  /* under the claim: a step on another thread would tear the step count
   * read here, as a set_lr would the rate */
  fo_step_state s;
  float lr = 0.0f;
  st = read_state(fn, opt, &s);
  if (st == FO_SUCCESS) {
    fo_prepare_args pa;
    fo_prepare_args_fill(opt, &pa);
    /* exactly the prepare step's arithmetic (fo_prepare_step) */
    lr = (float)((double)opt->hparams[group].lr * fo_schedule_factor(&pa.head.schedule, s.step));
  }
  st = fo_release(opt, st);
  if (st == FO_SUCCESS) *out = lr;
  return st;
}

fo_status fo_optimizer_set_hparams(fo_optimizer *opt, int group, const fo_hparams *hparams) {
  static const char fn[] = "fo_optimizer_set_hparams";
  if (!opt || !hparams)
    return fo_fail(FO_ERR_NULL_POINTER, fn, "%s is NULL", opt ? "hparams" : "opt");
  fo_status st = check_group(fn, opt, group);
  if (st != FO_SUCCESS) return st;
  st = fo_validate_hparams(fn, opt->options.algorithm, group, hparams);
  if (st != FO_SUCCESS) return st;
  /* the new values must not need a buffer the optimizer was created
   * without (momentum, AMSGrad, centering) */
  fo_state_flags need = fo_state_needed(&opt->options, hparams, 1);
  if ((need.exp_avg && !opt->keeps.exp_avg) || (need.exp_avg_sq && !opt->keeps.exp_avg_sq) ||
      (need.max_exp_avg_sq && !opt->keeps.max_exp_avg_sq))
    return fo_fail(FO_ERR_INVALID_STATE, fn,
                   "hparams[%d] need a state buffer the optimizer was created without (%s)", group,
                   need.max_exp_avg_sq && !opt->keeps.max_exp_avg_sq
                       ? (hparams->centered ? "centered" : "amsgrad")
                       : "momentum");
  st = fo_claim(fn, opt);
  if (st != FO_SUCCESS) return st;
  opt->hparams[group] = *hparams;
  return fo_release(opt, FO_SUCCESS);
}

fo_status fo_optimizer_get_hparams(const fo_optimizer *opt, int group, fo_hparams *out) {
  static const char fn[] = "fo_optimizer_get_hparams";
  if (!opt || !out) return fo_fail(FO_ERR_NULL_POINTER, fn, "%s is NULL", opt ? "out" : "opt");
  fo_status st = check_group(fn, opt, group);
  if (st == FO_SUCCESS) st = fo_claim(fn, opt);
  if (st != FO_SUCCESS) return st;
  *out = opt->hparams[group];
  return fo_release(opt, FO_SUCCESS);
}

fo_status fo_optimizer_get_options(const fo_optimizer *opt, fo_options *out) {
  static const char fn[] = "fo_optimizer_get_options";
  if (!opt || !out) return fo_fail(FO_ERR_NULL_POINTER, fn, "%s is NULL", opt ? "out" : "opt");
  *out = opt->options;
  return FO_SUCCESS;
}

fo_status fo_optimizer_num_tensors(const fo_optimizer *opt, int64_t *out) {
  static const char fn[] = "fo_optimizer_num_tensors";
  if (!opt || !out) return fo_fail(FO_ERR_NULL_POINTER, fn, "%s is NULL", opt ? "out" : "opt");
  *out = opt->num_tensors;
  return FO_SUCCESS;
}

static fo_status check_index(const char *fn, const fo_optimizer *opt, int64_t index,
                             const void *out) {
  if (!opt || !out) return fo_fail(FO_ERR_NULL_POINTER, fn, "%s is NULL", opt ? "out" : "opt");
  if (index < 0 || index >= opt->num_tensors)
    return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "index = %lld is outside [0, %lld)",
                   (long long)index, (long long)opt->num_tensors);
  return FO_SUCCESS;
}

fo_status fo_optimizer_param_ptr(fo_optimizer *opt, int64_t index, void **out) {
  fo_status st = check_index("fo_optimizer_param_ptr", opt, index, out);
  if (st == FO_SUCCESS) *out = opt->tensors[index].param;
  return st;
}

fo_status fo_optimizer_grad_ptr(fo_optimizer *opt, int64_t index, void **out) {
  fo_status st = check_index("fo_optimizer_grad_ptr", opt, index, out);
  if (st == FO_SUCCESS) *out = opt->tensors[index].grad;
  return st;
}

static fo_status check_role(const char *fn, const fo_optimizer *opt, fo_role role) {
  if ((int)role < 0 || role >= FO_ROLE_COUNT)
    return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "unknown role %d", (int)role);
  if (!fo_role_kept(opt, role))
    return fo_fail(FO_ERR_INVALID_STATE, fn, "the optimizer keeps no buffer of role %d", (int)role);
  return FO_SUCCESS;
}

fo_status fo_optimizer_state_ptr(fo_optimizer *opt, int64_t index, fo_role role, float **out) {
  static const char fn[] = "fo_optimizer_state_ptr";
  fo_status st = check_index(fn, opt, index, out);
  if (st != FO_SUCCESS) return st;
  if (role == FO_ROLE_PARAM || role == FO_ROLE_GRAD)
    return fo_fail(FO_ERR_INVALID_ARGUMENT, fn,
                   "role %d is not a state role; use param_ptr or grad_ptr", (int)role);
  st = check_role(fn, opt, role);
  if (st != FO_SUCCESS) return st;
  if (opt->shard.on)
    return fo_fail(FO_ERR_INVALID_STATE, fn,
                   "the state is sharded over the ranks: this rank keeps only the arena "
                   "elements of fo_optimizer_get_shard (fo_optimizer_arena)");
  const fo_plan_tensor *t = &opt->tensors[index];
  float *p = role == FO_ROLE_MASTER       ? t->master
             : role == FO_ROLE_EXP_AVG    ? t->exp_avg
             : role == FO_ROLE_EXP_AVG_SQ ? t->exp_avg_sq
                                          : t->max_exp_avg_sq;
  *out = p;
  return FO_SUCCESS;
}

fo_status fo_optimizer_arena(fo_optimizer *opt, fo_role role, void **base, size_t *bytes) {
  static const char fn[] = "fo_optimizer_arena";
  if (!opt || !base || !bytes)
    return fo_fail(FO_ERR_NULL_POINTER, fn, "%s is NULL", !opt ? "opt" : !base ? "base" : "bytes");
  if ((int)role < 0 || role >= FO_ROLE_COUNT)
    return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "unknown role %d", (int)role);
  if (opt->options.storage != FO_STORAGE_ARENA)
    return fo_fail(FO_ERR_INVALID_STATE, fn, "the optimizer was created with external storage");
  fo_status st = check_role(fn, opt, role);
  if (st != FO_SUCCESS) return st;
  int shard = opt->shard.on && role != FO_ROLE_PARAM && role != FO_ROLE_GRAD;
  *base = opt->arena[role];
  *bytes = (size_t)(shard ? opt->shard.count : opt->total_elems) * fo_role_elem_size(opt, role);
  return FO_SUCCESS;
}
