/*
 * fault.c -- whether the optimizer's state is sound enough to run on: the
 * fault after a failure past a call's argument checks
 * (docs/reliability.md), and master weights never set.
 *
 * A CUDA step is three launches; if one fails (or reports an earlier
 * asynchronous error), some of the update may have run.  The CPU executor
 * cannot fail that way today, but the optimizer cannot tell a half-updated
 * state from a whole one either, so the rule is the same for both: the
 * optimizer remembers the failure and refuses every call that would run on
 * its state (step, zero_grad, sync_master, save) with FO_ERR_INVALID_STATE
 * and the original message, until fo_optimizer_load() restores a
 * checkpoint.  Reads (get_info, get_step, ...) still work.
 */
#include <stdio.h>
#include <string.h>

#include "internal.h"

#ifdef FO_TESTING
fo_status fo_inject_fault(fo_optimizer *opt, fo_fault_point where) {
  static const char fn[] = "fo_inject_fault";
  if (!opt) return fo_fail(FO_ERR_NULL_POINTER, fn, "opt is NULL");
  if ((int)where < 0 || where >= FO_FAULT_COUNT)
    return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "unknown fault point %d", (int)where);
  opt->inject = (int)where;
  return FO_SUCCESS;
}

int fo_fault_armed(const fo_optimizer *opt, fo_fault_point where) {
  return where != FO_FAULT_NONE && opt->inject == (int)where;
}
#endif

fo_status fo_fault_check(const char *fn, const fo_optimizer *opt) {
  if (opt->fault == FO_SUCCESS) return FO_SUCCESS;
  return fo_fail(FO_ERR_INVALID_STATE, fn,
                 "the optimizer's state may be half-updated after an earlier failure (%s: "
                 "%s); restore it with fo_optimizer_load()",
                 fo_status_string(opt->fault), opt->fault_msg);
}

fo_status fo_fault_after(const char *fn, fo_optimizer *opt, fo_fault_point where,
                         fo_status status) {
  if (status == FO_SUCCESS && fo_fault_armed(opt, where))
    status = fo_fail(FO_ERR_CUDA, fn,
                     "injected fault: cudaErrorLaunchFailure (unspecified launch failure)");
  if (status != FO_SUCCESS) { /* the latest failure: the one the caller just saw */
    opt->fault = status;
    snprintf(opt->fault_msg, sizeof opt->fault_msg, "%s", fo_last_error());
  }
  return status;
}

fo_status fo_master_check(const char *fn, const fo_optimizer *opt) {
  if (!opt->master_unset) return FO_SUCCESS;
  return fo_fail(FO_ERR_INVALID_STATE, fn,
                 "the fp32 master weights were never set: with arena storage, write the initial "
                 "parameters through fo_optimizer_param_ptr(), then call "
                 "fo_optimizer_sync_master() (or fo_optimizer_load()) before the first step or "
                 "save; a step would start from zero master weights and overwrite the "
                 "parameters");
}

void fo_fault_clear(fo_optimizer *opt) {
  opt->fault = FO_SUCCESS;
  opt->fault_msg[0] = '\0';
}
