/*
 * step.c -- the conductor: fo_optimizer_step and its siblings (zero_grad,
 * sync_master).  One function, run_step, reads as the step's order; each
 * part is the executor's (host/exec.h) or the data-parallel wing's
 * (host/dp/dp.h), and neither calls the other's.
 */
#include "dp.h"
#include "exec.h"

/* The step in order.  Past the reduction a failure may leave the state
 * half-updated: the caller records it as a fault -- except a failed
 * collective of the agreement, which comes before any change and poisons
 * the gradients. */
static fo_status run_step(const char *fn, fo_optimizer *opt, fo_stream_t stream, int *faulted) {
  const fo_exec_ops *x = opt->exec;
  *faulted = 0;
  /* 1. reduce the gradients over the ranks */
  fo_status st = fo_dp_reduce_for_step(fn, opt, stream);
  if (st != FO_SUCCESS) return st;
  opt->steps_left--; /* the step adds one to the step count or the skipped count */
  /* 2. pre-pass: sums of squares for clipping and the overflow check */
  const double *sums = NULL;
  int64_t n = 0;
  if (opt->check_grads) {
    *faulted = 1;
    st = x->prepass(opt, stream);
    if (st != FO_SUCCESS) return st;
    sums = opt->run.partials;
    n = opt->run.num_blocks;
    /* 3. agree across ranks: a sharded state saw only its shard */
    if (opt->shard.on) {
      st = fo_dp_agree_sumsq(fn, opt, &sums, &n, stream);
      /* a failed collective changed nothing and poisoned the gradients:
       * the step it was for did not happen, nor count against the limit */
      if (st != FO_SUCCESS) *faulted = !opt->grads_poisoned;
      if (st != FO_SUCCESS && opt->grads_poisoned) opt->steps_left++;
      if (st != FO_SUCCESS) return st;
    }
  }
  *faulted = 1;
  /* 4. update: the step's scalars, then every tensor */
  st = x->update(opt, sums, n, stream);
  if (st != FO_SUCCESS) return st;
  /* 4b. LAMB, LARS: the norms pass left each tensor's sums of squares;
   * a shard's ranks gather them (the ranks skip alike), then the second
   * pass applies each tensor's factor */
  if (fo_algorithm_has_tensor_norms(opt->options.algorithm)) {
    if (opt->shard.on && !x->skipped(opt)) st = fo_dp_gather_tensor_sums(fn, opt, stream);
    if (st == FO_SUCCESS) st = x->apply(opt, stream);
    if (st != FO_SUCCESS) return st;
  }
  /* 5. gather the parameters each rank updated (the ranks skip alike) */
  if (opt->shard.on && !x->skipped(opt)) st = fo_dp_gather_params(fn, opt, stream);
  return st;
}

/* What every call that runs work on the state checks first. */
static fo_status check_runnable(const char *fn, const fo_optimizer *opt, fo_stream_t stream) {
  fo_status st = fo_check_process(fn, opt, 1);
  if (st == FO_SUCCESS) st = fo_fault_check(fn, opt);
  if (st == FO_SUCCESS) st = fo_exec_check_stream(fn, opt, stream);
  return st;
}

static fo_status step_claimed(const char *fn, fo_optimizer *opt, fo_stream_t stream) {
  fo_status st = check_runnable(fn, opt, stream);
  if (st == FO_SUCCESS) st = fo_master_check(fn, opt);
  if (st == FO_SUCCESS && opt->steps_left <= 0)
    st = fo_fail(FO_ERR_INVALID_STATE, fn,
                 "the step count (or the count of skipped steps) has reached FO_MAX_STEP "
                 "(2^62): set a smaller one with fo_optimizer_set_step or load a checkpoint");
  if (st != FO_SUCCESS) return st;
  int faulted = 0;
  st = run_step(fn, opt, stream, &faulted);
  if (st != FO_SUCCESS && !faulted) return st;
  return fo_fault_after(fn, opt, FO_FAULT_STEP, st);
}

fo_status fo_optimizer_step(fo_optimizer *opt, fo_stream_t stream) {
  static const char fn[] = "fo_optimizer_step";
  if (!opt) return fo_fail(FO_ERR_NULL_POINTER, fn, "opt is NULL");
  fo_status st = fo_claim(fn, opt);
  return st != FO_SUCCESS ? st : fo_release(opt, step_claimed(fn, opt, stream));
}

static fo_status zero_grad_claimed(const char *fn, fo_optimizer *opt, fo_stream_t stream) {
  fo_status st = check_runnable(fn, opt, stream);
  if (st != FO_SUCCESS) return st;
  st = fo_fault_after(fn, opt, FO_FAULT_ZERO_GRAD, opt->exec->zero_grad(opt, stream));
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
  fo_status st = check_runnable(fn, opt, stream);
  if (st != FO_SUCCESS || !opt->keeps.master) return st;
  st = fo_fault_after(fn, opt, FO_FAULT_NONE, opt->exec->sync_master(opt, stream));
  if (st == FO_SUCCESS) opt->master_unset = 0;
  return st;
}

fo_status fo_optimizer_sync_master(fo_optimizer *opt, fo_stream_t stream) {
  static const char fn[] = "fo_optimizer_sync_master";
  if (!opt) return fo_fail(FO_ERR_NULL_POINTER, fn, "opt is NULL");
  fo_status st = fo_claim(fn, opt);
  return st != FO_SUCCESS ? st : fo_release(opt, sync_master_claimed(fn, opt, stream));
}
