/* optimizer.c -- the optimizer object: create, destroy, step, accessors. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint_format.h"
#include "internal.h"
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
  if (o->num_threads < 0)
    return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "num_threads = %d is negative", o->num_threads);
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

static fo_status check_external_pointers(const char *fn, const fo_options *o,
                                         const fo_tensor_desc *t, int64_t n) {
  int cuda = o->executor == FO_EXEC_CUDA;
  char what[64];
  for (int64_t i = 0; i < n; i++) {
    if (t[i].numel == 0) continue;
    fo_status st;
    snprintf(what, sizeof what, "tensors[%lld].param", (long long)i);
    st = fo_cuda_check_pointer(fn, what, t[i].param,
                               (size_t)t[i].numel * fo_dtype_size(o->param_dtype), cuda, o->device);
    if (st != FO_SUCCESS) return st;
    snprintf(what, sizeof what, "tensors[%lld].grad", (long long)i);
    st = fo_cuda_check_pointer(fn, what, t[i].grad,
                               (size_t)t[i].numel * fo_dtype_size(o->grad_dtype), cuda, o->device);
    if (st != FO_SUCCESS) return st;
  }
  return FO_SUCCESS;
}

/* Which state the algorithm and the groups need. */
fo_state_flags fo_state_needed(const fo_options *o, const fo_hparams *h, int num_groups) {
  fo_state_flags k = {0, 0, 0, 0};
  fo_algorithm alg = o->algorithm;
  k.master = o->param_dtype != FO_DTYPE_F32 && o->master_weights;
  k.exp_avg = alg != FO_ALG_SGD;
  k.exp_avg_sq = alg == FO_ALG_ADAM || alg == FO_ALG_ADAMW;
  for (int g = 0; g < num_groups; g++) {
    if (alg == FO_ALG_SGD && h[g].momentum != 0.0f) k.exp_avg = 1;
    if (k.exp_avg_sq && h[g].amsgrad) k.max_exp_avg_sq = 1;
  }
  return k;
}

/* ------------------------------------------------------------ allocation */

size_t fo_role_elem_size(const fo_optimizer *opt, fo_role role) {
  if (role == FO_ROLE_PARAM) return fo_dtype_size(opt->options.param_dtype);
  if (role == FO_ROLE_GRAD) return fo_dtype_size(opt->options.grad_dtype);
  return sizeof(float);
}

int fo_role_kept(const fo_optimizer *opt, fo_role role) {
  switch (role) {
    case FO_ROLE_PARAM:
    case FO_ROLE_GRAD: return opt->options.storage == FO_STORAGE_ARENA;
    case FO_ROLE_MASTER: return opt->keeps.master;
    case FO_ROLE_EXP_AVG: return opt->keeps.exp_avg;
    case FO_ROLE_EXP_AVG_SQ: return opt->keeps.exp_avg_sq;
    case FO_ROLE_MAX_EXP_AVG_SQ: return opt->keeps.max_exp_avg_sq;
    default: return 0;
  }
}

fo_status fo_exec_alloc(const char *fn, const fo_optimizer *opt, size_t bytes, void **out) {
  if (opt->options.executor == FO_EXEC_CUDA)
    return fo_cuda_alloc_zeroed(fn, opt->options.device, bytes, out);
  size_t rounded = bytes ? (bytes + 255) & ~(size_t)255 : 256; /* never 0 */
  void *p = aligned_alloc(256, rounded);
  if (!p)
    return fo_fail(FO_ERR_OUT_OF_MEMORY, fn, "cannot allocate %zu bytes of host memory", bytes);
  memset(p, 0, rounded);
  *out = p;
  return FO_SUCCESS;
}

void fo_exec_free(const fo_optimizer *opt, void *p) {
  if (!p) return;
  if (opt->options.executor == FO_EXEC_CUDA)
    fo_cuda_free(opt->options.device, p);
  else
    free(p);
}

static void free_optimizer(fo_optimizer *opt) {
  fo_dp_free(opt);
  fo_shard_free(opt);
  for (int r = 0; r < FO_ROLE_COUNT; r++) fo_exec_free(opt, opt->arena[r]);
  fo_exec_free(opt, opt->state);
  fo_exec_free(opt, opt->partials);
  if (opt->d_blocks) fo_cuda_free(opt->options.device, opt->d_blocks);
  if (opt->d_tensors) fo_cuda_free(opt->options.device, opt->d_tensors);
  if (opt->names)
    for (int64_t i = 0; i < opt->num_tensors; i++) free(opt->names[i]);
  free(opt->names);
  free(opt->offsets);
  free(opt->tensors);
  free(opt->blocks);
  free(opt);
}

static char *copy_name(const char *s) {
  size_t n = strlen(s) + 1;
  char *c = malloc(n);
  if (c) memcpy(c, s, n);
  return c;
}

/* Lay the tensors out in the role buffers and fill the plan's tensor
 * table with every role's pointer for each tensor. */
static fo_status layout_tensors(const char *fn, fo_optimizer *opt, const fo_tensor_desc *t) {
  int64_t total = 0;
  for (int64_t i = 0; i < opt->num_tensors; i++) {
    opt->offsets[i] = total;
    int64_t padded =
        (t[i].numel + FO_TENSOR_ALIGN_ELEMS - 1) / FO_TENSOR_ALIGN_ELEMS * FO_TENSOR_ALIGN_ELEMS;
    if (padded > FO_MAX_NUMEL - total)
      return fo_fail(FO_ERR_INVALID_ARGUMENT, fn,
                     "the tensors hold more than 2^62 elements in all");
    total += padded;
  }
  opt->total_elems = total;
  if ((uint64_t)total > SIZE_MAX / 4)
    return fo_fail(FO_ERR_OUT_OF_MEMORY, fn, "%lld elements do not fit in memory",
                   (long long)total);
  for (int r = 0; r < FO_ROLE_COUNT; r++) {
    if (!fo_role_kept(opt, (fo_role)r) || total == 0) continue;
    fo_status st =
        fo_exec_alloc(fn, opt, (size_t)total * fo_role_elem_size(opt, (fo_role)r), &opt->arena[r]);
    if (st != FO_SUCCESS) return st;
  }
  for (int64_t i = 0; i < opt->num_tensors; i++) {
    fo_plan_tensor *p = &opt->tensors[i];
    char *at[FO_ROLE_COUNT];
    for (int r = 0; r < FO_ROLE_COUNT; r++)
      at[r] = opt->arena[r] ? (char *)opt->arena[r] +
                                  (size_t)opt->offsets[i] * fo_role_elem_size(opt, (fo_role)r)
                            : NULL;
    int ext = opt->options.storage == FO_STORAGE_EXTERNAL;
    p->param = ext ? t[i].param : at[FO_ROLE_PARAM];
    p->grad = ext ? t[i].grad : at[FO_ROLE_GRAD];
    p->master = (float *)at[FO_ROLE_MASTER];
    p->exp_avg = (float *)at[FO_ROLE_EXP_AVG];
    p->exp_avg_sq = (float *)at[FO_ROLE_EXP_AVG_SQ];
    p->max_exp_avg_sq = (float *)at[FO_ROLE_MAX_EXP_AVG_SQ];
    p->numel = t[i].numel;
    p->group = t[i].group;
    uintptr_t bits = (uintptr_t)p->param | (uintptr_t)p->grad;
    p->vector_ok = (bits & 15u) == 0;
  }
  return FO_SUCCESS;
}

static fo_status build_plan(const char *fn, fo_optimizer *opt) {
  opt->run_tensors = opt->tensors;
  opt->num_run_tensors = opt->num_tensors;
  opt->chunk = opt->options.executor == FO_EXEC_CUDA ? FO_CUDA_CHUNK : FO_CPU_CHUNK;
  opt->num_blocks = fo_plan_count_blocks(opt->tensors, opt->num_tensors, opt->chunk);
  if (opt->num_blocks < 0) return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "the launch plan overflows");
  opt->blocks = malloc((size_t)(opt->num_blocks + 1) * sizeof *opt->blocks);
  if (!opt->blocks)
    return fo_fail(FO_ERR_OUT_OF_MEMORY, fn, "no memory for %lld plan blocks",
                   (long long)opt->num_blocks);
  fo_plan_fill_blocks(opt->tensors, opt->num_tensors, opt->chunk, opt->blocks);
  if (opt->options.executor == FO_EXEC_CUDA) return fo_cuda_upload_plan(fn, opt);
  return FO_SUCCESS;
}

/* The step state and the pre-pass's partial sums, in executor memory. */
static fo_status alloc_step_state(const char *fn, fo_optimizer *opt) {
  fo_step_state init;
  fo_step_state_init(&opt->options, &init);
  fo_status st = fo_exec_alloc(fn, opt, sizeof init, (void **)&opt->state);
  if (st != FO_SUCCESS) return st;
  if (opt->check_grads) {
    st = fo_exec_alloc(fn, opt, (size_t)(opt->num_blocks + 1) * sizeof(double),
                       (void **)&opt->partials);
    if (st != FO_SUCCESS) return st;
  }
  fo_steps_left_reset(opt, &init);
  if (opt->options.executor == FO_EXEC_CUDA) return fo_cuda_write_state(fn, opt, &init);
  *opt->state = init;
  return FO_SUCCESS;
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
  if (options->executor == FO_EXEC_CUDA) {
    st = fo_cuda_available(fn, options->device);
    if (st != FO_SUCCESS) return st;
  }
  if (options->storage == FO_STORAGE_EXTERNAL) {
    st = check_external_pointers(fn, options, tensors, num_tensors);
    if (st != FO_SUCCESS) return st;
  }

  fo_optimizer *opt = calloc(1, sizeof *opt);
  if (!opt) return fo_fail(FO_ERR_OUT_OF_MEMORY, fn, "no memory for the optimizer");
  fo_guard_init(opt);
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
  FO_TRY(layout_tensors(fn, opt, tensors));
  FO_TRY(build_plan(fn, opt));
  FO_TRY(alloc_step_state(fn, opt));
  if (opt->keeps.master && options->storage == FO_STORAGE_EXTERNAL)
    FO_TRY(options->executor == FO_EXEC_CUDA ? fo_cuda_sync_master(opt, NULL)
                                             : fo_cpu_sync_master(opt));
  opt->master_unset =
      opt->keeps.master && options->storage == FO_STORAGE_ARENA && opt->total_elems > 0;
  /* The zero-fills, uploads and master copy above ran on the legacy default
   * stream; wait for them, so a caller's non-blocking stream sees them. */
  if (options->executor == FO_EXEC_CUDA) FO_TRY(fo_cuda_synchronize(options->device));
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
  fo_status st = FO_SUCCESS;
  if (opt->options.executor == FO_EXEC_CUDA) st = fo_cuda_synchronize(opt->options.device);
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

/* ------------------------------------------------------------------ step */

fo_status fo_master_check(const char *fn, const fo_optimizer *opt) {
  if (!opt->master_unset) return FO_SUCCESS;
  return fo_fail(FO_ERR_INVALID_STATE, fn,
                 "the fp32 master weights were never set: with arena storage, write the initial "
                 "parameters through fo_optimizer_param_ptr(), then call "
                 "fo_optimizer_sync_master() (or fo_optimizer_load()) before the first step or "
                 "save; a step would start from zero master weights and overwrite the "
                 "parameters");
}

/* The stream argument of a call that launches work: NULL on the CPU, a
 * stream of the optimizer's device on CUDA. */
static fo_status check_stream(const char *fn, const fo_optimizer *opt, fo_stream_t stream) {
  if (opt->options.executor == FO_EXEC_CPU) {
    if (stream)
      return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "stream must be NULL for the CPU executor");
    return FO_SUCCESS;
  }
  return fo_cuda_check_stream(fn, stream, opt->options.device);
}

static fo_status step_claimed(const char *fn, fo_optimizer *opt, fo_stream_t stream) {
  fo_status st = fo_check_process(fn, opt, 1);
  if (st == FO_SUCCESS) st = fo_fault_check(fn, opt);
  if (st == FO_SUCCESS) st = check_stream(fn, opt, stream);
  if (st == FO_SUCCESS) st = fo_master_check(fn, opt);
  if (st == FO_SUCCESS && opt->steps_left <= 0)
    st = fo_fail(FO_ERR_INVALID_STATE, fn,
                 "the step count (or the count of skipped steps) has reached FO_MAX_STEP "
                 "(2^62): set a smaller one with fo_optimizer_set_step or load a checkpoint");
  if (st == FO_SUCCESS) st = fo_dp_before_step(fn, opt, stream);
  if (st != FO_SUCCESS) return st;
  opt->steps_left--; /* the step adds one to the step count or the skipped count */
  /* past this point a failure may leave the state half-updated */
  st = opt->options.executor == FO_EXEC_CUDA ? fo_cuda_step(opt, stream) : fo_cpu_step(opt);
  /* a sharded step's agreement on the norm failed before anything changed */
  if (st == FO_ERR_COMM && opt->grads_poisoned) return st;
  if (st == FO_SUCCESS) st = fo_dp_after_step(fn, opt, stream);
  return fo_fault_after(fn, opt, FO_FAULT_STEP, st);
}

fo_status fo_optimizer_step(fo_optimizer *opt, fo_stream_t stream) {
  static const char fn[] = "fo_optimizer_step";
  if (!opt) return fo_fail(FO_ERR_NULL_POINTER, fn, "opt is NULL");
  fo_status st = fo_claim(fn, opt);
  return st != FO_SUCCESS ? st : fo_release(opt, step_claimed(fn, opt, stream));
}

static fo_status zero_grad_claimed(const char *fn, fo_optimizer *opt, fo_stream_t stream) {
  fo_status st = fo_check_process(fn, opt, 1);
  if (st == FO_SUCCESS) st = fo_fault_check(fn, opt);
  if (st == FO_SUCCESS) st = check_stream(fn, opt, stream);
  if (st != FO_SUCCESS) return st;
  st = opt->options.executor == FO_EXEC_CUDA ? fo_cuda_zero_grad(opt, stream)
                                             : fo_cpu_zero_grad(opt);
  st = fo_fault_after(fn, opt, FO_FAULT_ZERO_GRAD, st);
  if (st == FO_SUCCESS) fo_dp_zero_grad(opt);
  return st;
}

fo_status fo_optimizer_zero_grad(fo_optimizer *opt, fo_stream_t stream) {
  static const char fn[] = "fo_optimizer_zero_grad";
  if (!opt) return fo_fail(FO_ERR_NULL_POINTER, fn, "opt is NULL");
  fo_status st = fo_claim(fn, opt);
  return st != FO_SUCCESS ? st : fo_release(opt, zero_grad_claimed(fn, opt, stream));
}

static fo_status sync_master_claimed(const char *fn, fo_optimizer *opt, fo_stream_t stream) {
  fo_status st = fo_check_process(fn, opt, 1);
  if (st == FO_SUCCESS) st = fo_fault_check(fn, opt);
  if (st == FO_SUCCESS) st = check_stream(fn, opt, stream);
  if (st != FO_SUCCESS || !opt->keeps.master) return st;
  st = opt->options.executor == FO_EXEC_CUDA ? fo_cuda_sync_master(opt, stream)
                                             : fo_cpu_sync_master(opt);
  st = fo_fault_after(fn, opt, FO_FAULT_NONE, st);
  if (st == FO_SUCCESS) opt->master_unset = 0;
  return st;
}

fo_status fo_optimizer_sync_master(fo_optimizer *opt, fo_stream_t stream) {
  static const char fn[] = "fo_optimizer_sync_master";
  if (!opt) return fo_fail(FO_ERR_NULL_POINTER, fn, "opt is NULL");
  fo_status st = fo_claim(fn, opt);
  return st != FO_SUCCESS ? st : fo_release(opt, sync_master_claimed(fn, opt, stream));
}

/* ------------------------------------------------------------- accessors */

/* A copy of the step state, wherever it lives. */
static fo_status read_state(const char *fn, const fo_optimizer *opt, fo_step_state *out) {
  fo_status st = fo_check_process(fn, opt, 0);
  if (st != FO_SUCCESS) return st;
  if (opt->options.executor == FO_EXEC_CUDA) return fo_cuda_read_state(fn, opt, out);
  *out = *opt->state;
  return FO_SUCCESS;
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
  if (opt->options.executor == FO_EXEC_CUDA)
    st = fo_cuda_write_state(fn, opt, &s);
  else
    opt->state->step = step;
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
  fo_status st = fo_claim(fn, opt);
  if (st == FO_SUCCESS) st = fo_release(opt, read_state(fn, opt, &s));
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
  if (st != FO_SUCCESS) return st;
  fo_step_state s;
  st = read_state(fn, opt, &s);
  if (st != FO_SUCCESS) return st;
  fo_prepare_args pa;
  fo_prepare_args_fill(opt, &pa);
  /* exactly the prepare step's arithmetic (fo_prepare_step) */
  *out = (float)((double)opt->hparams[group].lr * fo_schedule_factor(&pa.schedule, s.step));
  return FO_SUCCESS;
}

fo_status fo_optimizer_set_hparams(fo_optimizer *opt, int group, const fo_hparams *hparams) {
  static const char fn[] = "fo_optimizer_set_hparams";
  if (!opt || !hparams)
    return fo_fail(FO_ERR_NULL_POINTER, fn, "%s is NULL", opt ? "hparams" : "opt");
  fo_status st = check_group(fn, opt, group);
  if (st != FO_SUCCESS) return st;
  st = fo_validate_hparams(fn, opt->options.algorithm, group, hparams);
  if (st != FO_SUCCESS) return st;
  fo_algorithm alg = opt->options.algorithm;
  if (alg == FO_ALG_SGD && hparams->momentum != 0.0f && !opt->keeps.exp_avg)
    return fo_fail(FO_ERR_INVALID_STATE, fn,
                   "momentum needs a buffer the optimizer was created without");
  if ((alg == FO_ALG_ADAM || alg == FO_ALG_ADAMW) && hparams->amsgrad && !opt->keeps.max_exp_avg_sq)
    return fo_fail(FO_ERR_INVALID_STATE, fn,
                   "amsgrad needs state the optimizer was created without");
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
