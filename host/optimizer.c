/*
 * optimizer.c -- the optimizer object: its options, create and destroy.
 * The step is conducted in step.c, the accessors are in accessors.c and
 * the state's layout in layout.c.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint_format.h"
#include "dp.h"
#include "exec.h"
#include "launch.h"

#define FO_MAX_NUMEL ((int64_t)1 << 62)

/* ------------------------------------------------------------ validation */

static fo_status validate_options(const char *fn, const fo_options *o) {
  if (o->struct_size != sizeof(fo_options))
    return fo_fail(FO_ERR_INVALID_ARGUMENT, fn,
                   "options->struct_size = %zu, expected %zu (fill it with "
                   "fo_options_default)",
                   o->struct_size, sizeof(fo_options));
  if ((int)o->algorithm < 0 || o->algorithm >= FO_ALG_COUNT)
    return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "unknown algorithm %d", (int)o->algorithm);
  if ((int)o->executor < 0 || o->executor >= FO_EXEC_COUNT)
    return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "unknown executor %d", (int)o->executor);
  if ((int)o->storage < 0 || o->storage >= FO_STORAGE_COUNT)
    return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "unknown storage %d", (int)o->storage);
  if (!fo_dtype_valid((int)o->param_dtype))
    return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "unknown param_dtype %d", (int)o->param_dtype);
  if (!fo_dtype_valid((int)o->grad_dtype))
    return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "unknown grad_dtype %d", (int)o->grad_dtype);
  if (o->master_weights != 0 && o->master_weights != 1)
    return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "master_weights = %d must be 0 or 1",
                   o->master_weights);
  if (o->stochastic_rounding != 0 && o->stochastic_rounding != 1)
    return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "stochastic_rounding = %d must be 0 or 1",
                   o->stochastic_rounding);
  if (o->device < 0)
    return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "device = %d is negative", o->device);
  /* OpenMP creates what it is asked for: a million threads crash the
   * runtime at the first step, INT_MAX makes it exit the process */
  if (o->num_threads < 0 || o->num_threads > FO_MAX_THREADS)
    return fo_fail(FO_ERR_INVALID_ARGUMENT, fn,
                   "num_threads = %d is outside [0, FO_MAX_THREADS = %d]", o->num_threads,
                   FO_MAX_THREADS);
  for (size_t i = 0; i < sizeof o->reserved / sizeof o->reserved[0]; i++)
    if (o->reserved[i] != 0)
      return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "options->reserved[%zu] is not zero", i);
  fo_status st = fo_validate_step_options(fn, o);
  if (st != FO_SUCCESS) return st;
  if (o->stochastic_rounding && (o->param_dtype != FO_DTYPE_BF16 || o->master_weights))
    return fo_fail(FO_ERR_UNSUPPORTED, fn,
                   "stochastic rounding needs bf16 parameters without master "
                   "weights");
  return FO_SUCCESS;
}

/* A buffer must start on a multiple of its element size.  The CUDA kernels
 * read and write elements with aligned instructions (16-byte vectors only
 * where a whole run is 16-byte aligned, single elements elsewhere), and a
 * misaligned one faults the device: a sticky error that leaves the
 * caller's whole CUDA context unusable.  C forbids it on the host too. */
static fo_status check_element_aligned(const char *fn, int64_t i, const char *what, const void *ptr,
                                       fo_dtype dtype) {
  char name[64];
  snprintf(name, sizeof name, "tensors[%lld].%s", (long long)i, what);
  return fo_check_aligned(fn, name, ptr, fo_dtype_size(dtype));
}

static fo_status validate_tensors(const char *fn, const fo_options *o, int num_groups,
                                  const fo_tensor_desc *t, int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    if (t[i].numel < 0 || t[i].numel > FO_MAX_NUMEL)
      return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "tensors[%lld].numel = %lld is outside [0, 2^62]",
                     (long long)i, (long long)t[i].numel);
    if (t[i].group < 0 || t[i].group >= num_groups)
      return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "tensors[%lld].group = %d is outside [0, %d)",
                     (long long)i, t[i].group, num_groups);
    if (o->storage == FO_STORAGE_ARENA && (t[i].param || t[i].grad))
      return fo_fail(FO_ERR_INVALID_ARGUMENT, fn,
                     "tensors[%lld]: param and grad must be NULL with arena "
                     "storage (the library allocates them)",
                     (long long)i);
    if (o->storage == FO_STORAGE_EXTERNAL && t[i].numel > 0 && (!t[i].param || !t[i].grad))
      return fo_fail(FO_ERR_NULL_POINTER, fn, "tensors[%lld].%s is NULL", (long long)i,
                     t[i].param ? "grad" : "param");
    if (o->storage == FO_STORAGE_EXTERNAL && t[i].numel > 0) {
      fo_status st = check_element_aligned(fn, i, "param", t[i].param, o->param_dtype);
      if (st == FO_SUCCESS) st = check_element_aligned(fn, i, "grad", t[i].grad, o->grad_dtype);
      if (st != FO_SUCCESS) return st;
    }
  }
  return FO_SUCCESS;
}

/* A byte range of a caller's buffer, for the overlap check. */
typedef struct span {
  uintptr_t begin, end;
  int64_t tensor;
  int is_grad;
} span;

static int span_cmp(const void *a, const void *b) {
  const span *x = a, *y = b;
  return (x->begin > y->begin) - (x->begin < y->begin);
}

/* No parameter or gradient buffer may share a byte with another: the step
 * would update it twice or read a gradient it has just overwritten. */
static fo_status check_overlap(const char *fn, const fo_options *o, const fo_tensor_desc *t,
                               int64_t n) {
  size_t ps = fo_dtype_size(o->param_dtype), gs = fo_dtype_size(o->grad_dtype);
  span *s = malloc((size_t)(2 * n + 1) * sizeof *s);
  if (!s) return fo_fail(FO_ERR_OUT_OF_MEMORY, fn, "no memory for the check");
  size_t k = 0;
  for (int64_t i = 0; i < n; i++) {
    if (t[i].numel == 0) continue;
    uintptr_t p = (uintptr_t)t[i].param, g = (uintptr_t)t[i].grad;
    s[k++] = (span){p, p + (uintptr_t)t[i].numel * ps, i, 0};
    s[k++] = (span){g, g + (uintptr_t)t[i].numel * gs, i, 1};
  }
  qsort(s, k, sizeof *s, span_cmp);
  fo_status st = FO_SUCCESS;
  for (size_t j = 1; j < k; j++) {
    /* sorted by start: an overlap always shows between neighbours of the
     * running maximum end, so keep the widest span seen */
    if (s[j].begin < s[j - 1].end) {
      st = fo_fail(FO_ERR_OVERLAP, fn, "tensors[%lld].%s overlaps tensors[%lld].%s",
                   (long long)s[j - 1].tensor, s[j - 1].is_grad ? "grad" : "param",
                   (long long)s[j].tensor, s[j].is_grad ? "grad" : "param");
      break;
    }
    if (s[j].end < s[j - 1].end) s[j] = s[j - 1];
  }
  free(s);
  return st;
}

static fo_status check_external_pointers(const char *fn, const fo_options *o, const fo_exec_ops *x,
                                         const fo_tensor_desc *t, int64_t n) {
  char what[64];
  for (int64_t i = 0; i < n; i++) {
    if (t[i].numel == 0) continue;
    fo_status st;
    snprintf(what, sizeof what, "tensors[%lld].param", (long long)i);
    st = x->check_pointer(fn, what, t[i].param, (size_t)t[i].numel * fo_dtype_size(o->param_dtype),
                          o->device);
    if (st != FO_SUCCESS) return st;
    snprintf(what, sizeof what, "tensors[%lld].grad", (long long)i);
    st = x->check_pointer(fn, what, t[i].grad, (size_t)t[i].numel * fo_dtype_size(o->grad_dtype),
                          o->device);
    if (st != FO_SUCCESS) return st;
  }
  return FO_SUCCESS;
}

static void free_optimizer(fo_optimizer *opt) {
  fo_dp_free(opt);
  fo_run_plan_free(opt, &opt->run);
  for (int r = 0; r < FO_ROLE_COUNT; r++) fo_exec_free(opt, opt->arena[r]);
  fo_exec_free(opt, opt->state);
  if (opt->names)
    for (int64_t i = 0; i < opt->num_tensors; i++) free(opt->names[i]);
  free(opt->names);
  free(opt->offsets);
  free(opt->tensors);
  free(opt);
}

/* The step state in executor memory: step 0, the initial loss scale. */
static fo_status alloc_step_state(const char *fn, fo_optimizer *opt) {
  fo_step_state init;
  fo_step_state_init(&opt->options, &init);
  fo_status st = fo_exec_alloc(fn, opt, sizeof init, (void **)&opt->state);
  if (st != FO_SUCCESS) return st;
  fo_steps_left_reset(opt, &init);
  return fo_exec_write_state(fn, opt, &init);
}

static char *copy_name(const char *s) {
  size_t n = strlen(s) + 1;
  char *c = malloc(n);
  if (c) memcpy(c, s, n);
  return c;
}

/* Every tensor must be one a checkpoint can hold: the keys a save would
 * write (the tensor's name, "tensor.<i>" without one, and its state's
 * "<name>.master", ".exp_avg", ...) distinct, none "__metadata__", every
 * name UTF-8.  The save's own rule (checkpoint_format.c), checked at
 * create rather than at the first save, hours later. */
static fo_status check_names(const char *fn, const fo_optimizer *opt) {
  fo_ckpt_plan plan;
  fo_status st = fo_ckpt_plan_build_for(fn, opt, NULL, &plan);
  if (st == FO_SUCCESS) {
    fo_ckpt_plan_free(&plan);
    return st;
  }
  if (st != FO_ERR_INVALID_STATE) return st;
  /* the detail stays the plan's; the status becomes an argument's */
  char detail[512];
  snprintf(detail, sizeof detail, "%s", fo_last_error());
  const char *d = strncmp(detail, fn, strlen(fn)) == 0 && detail[strlen(fn)] == ':'
                      ? detail + strlen(fn) + 2
                      : detail;
  return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "%s (every tensor must be one a checkpoint can hold)",
                 d);
}

/* --------------------------------------------------------------- create */

fo_status fo_optimizer_create(fo_optimizer **out, const fo_options *options,
                              const fo_hparams *hparams, int num_groups,
                              const fo_tensor_desc *tensors, int64_t num_tensors) {
  static const char fn[] = "fo_optimizer_create";
  if (!out) return fo_fail(FO_ERR_NULL_POINTER, fn, "out is NULL");
  if (!options) return fo_fail(FO_ERR_NULL_POINTER, fn, "options is NULL");
  if (!hparams) return fo_fail(FO_ERR_NULL_POINTER, fn, "hparams is NULL");
  if (!tensors && num_tensors != 0) return fo_fail(FO_ERR_NULL_POINTER, fn, "tensors is NULL");
  if (num_tensors < 0 || (uint64_t)num_tensors > SIZE_MAX / (4 * sizeof(span)))
    return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "num_tensors = %lld is out of range",
                   (long long)num_tensors);
  if (num_groups < 1 || num_groups > FO_MAX_GROUPS)
    return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "num_groups = %d is outside [1, %d]", num_groups,
                   FO_MAX_GROUPS);
  fo_status st = validate_options(fn, options);
  if (st != FO_SUCCESS) return st;
  for (int g = 0; g < num_groups; g++) {
    st = fo_validate_hparams(fn, options->algorithm, g, &hparams[g]);
    if (st != FO_SUCCESS) return st;
  }
  st = validate_tensors(fn, options, num_groups, tensors, num_tensors);
  if (st != FO_SUCCESS) return st;
  if (options->storage == FO_STORAGE_EXTERNAL) {
    st = check_overlap(fn, options, tensors, num_tensors);
    if (st != FO_SUCCESS) return st;
  }
  const fo_exec_ops *exec = NULL;
  st = fo_exec_select(fn, options, &exec);
  if (st != FO_SUCCESS) return st;
  if (options->storage == FO_STORAGE_EXTERNAL) {
    st = check_external_pointers(fn, options, exec, tensors, num_tensors);
    if (st != FO_SUCCESS) return st;
  }

  fo_optimizer *opt = calloc(1, sizeof *opt);
  if (!opt) return fo_fail(FO_ERR_OUT_OF_MEMORY, fn, "no memory for the optimizer");
  fo_guard_init(opt);
  opt->exec = exec;
  opt->options = *options;
  memcpy(opt->hparams, hparams, (size_t)num_groups * sizeof *hparams);
  opt->num_groups = num_groups;
  opt->keeps = fo_state_needed(options, hparams, num_groups);
  opt->check_grads = options->max_grad_norm > 0.0f || options->loss_scaler.enabled;
  opt->grad_divisor = 1.0f;
  opt->num_tensors = num_tensors;
  size_t n1 = (size_t)num_tensors + 1; /* never malloc(0) */
  opt->names = calloc(n1, sizeof *opt->names);
  opt->offsets = calloc(n1, sizeof *opt->offsets);
  opt->tensors = calloc(n1, sizeof *opt->tensors);
  if (!opt->names || !opt->offsets || !opt->tensors) {
    st = fo_fail(FO_ERR_OUT_OF_MEMORY, fn, "no memory for %lld tensors", (long long)num_tensors);
    goto done;
  }
  for (int64_t i = 0; i < num_tensors; i++) {
    opt->tensors[i].numel = tensors[i].numel;
    opt->tensors[i].group = tensors[i].group;
    if (!tensors[i].name) continue;
    opt->names[i] = copy_name(tensors[i].name);
    if (!opt->names[i]) {
      st = fo_fail(FO_ERR_OUT_OF_MEMORY, fn, "no memory for tensor names");
      goto done;
    }
  }
  FO_TRY(check_names(fn, opt));
  FO_TRY(fo_layout_tensors(fn, opt, tensors));
  FO_TRY(fo_layout_fill_initial_sums(fn, opt));
  FO_TRY(fo_run_plan_build(fn, opt, opt->tensors, opt->num_tensors, &opt->run));
  fo_known_init(opt);
  FO_TRY(alloc_step_state(fn, opt));
  if (opt->keeps.master && options->storage == FO_STORAGE_EXTERNAL)
    FO_TRY(exec->sync_master(opt, NULL));
  opt->master_unset =
      opt->keeps.master && options->storage == FO_STORAGE_ARENA && opt->total_elems > 0;
  /* The zero-fills, uploads and master copy above ran on the legacy default
   * stream; wait for them, so a caller's non-blocking stream sees them. */
  FO_TRY(fo_exec_synchronize(fn, opt));
done:
  if (st != FO_SUCCESS) {
    free_optimizer(opt);
    return st;
  }
  *out = opt;
  return FO_SUCCESS;
}

fo_status fo_optimizer_destroy(fo_optimizer *opt) {
  if (!opt) return FO_SUCCESS;
  fo_status st = fo_exec_synchronize("fo_optimizer_destroy", opt);
  free_optimizer(opt);
  return st;
}

fo_status fo_options_default(fo_options *out) {
  if (!out) return fo_fail(FO_ERR_NULL_POINTER, "fo_options_default", "out is NULL");
  memset(out, 0, sizeof *out);
  out->struct_size = sizeof *out;
  out->algorithm = FO_ALG_ADAMW;
  out->executor = FO_EXEC_CPU;
  out->storage = FO_STORAGE_EXTERNAL;
  out->param_dtype = FO_DTYPE_F32;
  out->grad_dtype = FO_DTYPE_F32;
  out->master_weights = 1;
  out->loss_scaler.init_scale = 65536.0f;
  out->loss_scaler.growth_factor = 2.0f;
  out->loss_scaler.backoff_factor = 0.5f;
  out->loss_scaler.growth_interval = 2000;
  out->loss_scaler.hysteresis = 1;
  out->schedule.kind = FO_SCHED_CONSTANT;
  out->schedule.period_mult = 1;
  out->schedule.gamma = 0.1f;
  return FO_SUCCESS;
}
