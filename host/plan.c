/* plan.c -- the run plan a step executes (host/internal.h): the blocks
 * (kernels/plan.h's fo_plan_count_blocks and fo_plan_fill_blocks, shared
 * with bench/step_variants.cu), their executor copies and scratch. */
#include <stdlib.h>
#include <string.h>

#include "exec.h"

void fo_run_plan_free(const fo_optimizer *opt, fo_run_plan *plan) {
  fo_exec_free(opt, plan->d_blocks);
  fo_exec_free(opt, plan->d_tensors);
  fo_exec_free(opt, plan->partials);
  fo_exec_free(opt, plan->norm_partials);
  fo_exec_free(opt, plan->tensor_factors);
  fo_exec_free(opt, plan->tensor_sums);
  free(plan->blocks);
  if (plan->owns_tensors) free(plan->tensors);
  memset(plan, 0, sizeof *plan);
}

fo_status fo_run_plan_norm_slots(const char *fn, const fo_optimizer *opt, fo_run_plan *plan,
                                 int slots, int slot) {
  double *sums = NULL;
  int64_t all = opt->num_tensors;
  size_t bytes = ((size_t)slots * (size_t)all * 2 + 2) * sizeof(double);
  fo_status st = fo_exec_alloc(fn, opt, bytes, (void **)&sums);
  if (st != FO_SUCCESS) return st;
  fo_exec_free(opt, plan->tensor_sums);
  plan->tensor_sums = sums;
  plan->all_tensors = all;
  plan->slots = slots;
  plan->slot = slot;
  return FO_SUCCESS;
}

fo_status fo_run_plan_build(const char *fn, const fo_optimizer *opt, fo_plan_tensor *tensors,
                            int64_t n, fo_run_plan *out) {
  fo_run_plan p;
  memset(&p, 0, sizeof p);
  p.tensors = tensors;
  p.num_tensors = n;
  p.chunk = opt->exec->chunk;
  p.num_blocks = fo_plan_count_blocks(tensors, n, p.chunk);
  if (p.num_blocks < 0) return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "the launch plan overflows");
  fo_status st = FO_SUCCESS;
  p.blocks = malloc((size_t)(p.num_blocks + 1) * sizeof *p.blocks);
  if (!p.blocks) {
    st = fo_fail(FO_ERR_OUT_OF_MEMORY, fn, "no memory for %lld plan blocks",
                 (long long)p.num_blocks);
    goto done;
  }
  fo_plan_fill_blocks(tensors, n, p.chunk, p.blocks);
  FO_TRY(opt->exec->upload_plan(fn, opt->options.device, &p));
  if (opt->check_grads)
    FO_TRY(
        fo_exec_alloc(fn, opt, (size_t)(p.num_blocks + 1) * sizeof(double), (void **)&p.partials));
  if (fo_algorithm_has_tensor_norms(opt->options.algorithm)) {
    FO_TRY(fo_exec_alloc(fn, opt, (size_t)(2 * p.num_blocks + 2) * sizeof(double),
                         (void **)&p.norm_partials));
    FO_TRY(fo_exec_alloc(fn, opt, (size_t)(n + 1) * sizeof(float), (void **)&p.tensor_factors));
    FO_TRY(fo_run_plan_norm_slots(fn, opt, &p, 1, 0));
  }
done:
  if (st != FO_SUCCESS) {
    fo_run_plan_free(opt, &p);
    return st;
  }
  *out = p;
  return FO_SUCCESS;
}
