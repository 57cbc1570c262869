/* plan.c -- the launch plan: which block covers which chunk of which
 * tensor, and the run plan a step executes (host/internal.h).  The block
 * arithmetic is pure arithmetic on sizes, so the CPU tier can check it for
 * any size list, sizes past 2^31 included, without a buffer or a GPU. */
#include <stdlib.h>
#include <string.h>

#include "exec.h"

int64_t fo_plan_count_blocks(const fo_plan_tensor *t, int64_t n, int64_t chunk) {
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

void fo_plan_fill_blocks(const fo_plan_tensor *t, int64_t n, int64_t chunk, fo_plan_block *out) {
  int64_t k = 0;
  for (int64_t i = 0; i < n; i++)
    for (int64_t start = 0; start < t[i].numel; start += chunk)
      out[k++] = (fo_plan_block){i, start, t[i].group, 0};
}

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
