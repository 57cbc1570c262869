/*
 * known.c -- the step state as the host knows it without asking the device.
 *
 * An eager step without a pre-pass (no clipping, no loss scaling) depends
 * on nothing the device computes: its scalars follow from the step count,
 * the hyper-parameters and the schedule.  The host keeps a copy of the
 * step state (opt->known), runs the prepare step on it itself, and the
 * CUDA executor carries the result by value in the step launch
 * (fo_known_step, kernels/step_state.h) instead of launching the prepare
 * kernel: one launch per eager step instead of two, and no wait on the
 * device for a kernel of one block.  The first block of the launch writes
 * the result into the device's state, which therefore stays what a step
 * through the prepare kernel would have left (docs/performance.md).
 *
 * The copy is exact only while every change to the device's state goes
 * through the host: writes of the whole state (create, fo_optimizer_set_step,
 * _set_scaler_state, _set_mu_product, a load) set it, a step the device
 * decides makes it unknown until the next such write, and a step captured
 * into a CUDA graph turns the scheme off for the optimizer's life (the
 * graph's replays advance the device's count where the host cannot see
 * them).
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

void fo_known_init(fo_optimizer *opt) {
  /* FUSEDOPT_HOST_SCALARS=0: every step through the prepare kernel, as
   * before (for comparisons and benchmarks: docs/api.md, "Environment") */
  const char *env = getenv("FUSEDOPT_HOST_SCALARS");
  opt->known.off = env && strcmp(env, "0") == 0;
  opt->known.valid = 0;
}

void fo_known_set(fo_optimizer *opt, const fo_step_state *s) {
  opt->known.state = *s;
  opt->known.valid = 1;
}

void fo_known_forget(fo_optimizer *opt, int for_good) {
  opt->known.valid = 0;
  if (for_good) opt->known.off = 1;
}

int fo_known_next(const fo_optimizer *opt, const fo_prepare_args *pa, fo_known_step *out,
                  fo_step_state *next) {
  if (opt->known.off || !opt->known.valid) return 0;
  /* a pre-pass's sums, and with them the skip decision, are the device's */
  if (pa->head.check_grads || pa->head.scaler.enabled) return 0;
  if (pa->head.num_groups > FO_KNOWN_GROUPS) return 0;
  *next = opt->known.state;
  /* the prepare step itself, with the sum of squares the prepare kernel
   * folds when no pre-pass ran */
  fo_prepare_step(pa, 0.0, next);
  if (next->skip) return 0; /* the count is exhausted: the device path says so */
  fo_known_from_state(next, pa->head.num_groups, out);
  return 1;
}
