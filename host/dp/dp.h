/*
 * dp.h -- what the data-parallel wing (host/dp/) offers the rest of
 * host/: the parts of a step that talk to the other ranks, called by the
 * conductor (host/step.c) in the step's order, and the attachment's
 * lifetime.  The communicator object and the wing's own calls are in
 * comm_internal.h.
 */
#ifndef FO_DP_H
#define FO_DP_H

#include "internal.h"

/* 1. Before the pre-pass: refuse poisoned gradients (FO_ERR_COMM), reduce
 * the buckets not yet reduced for this step, and make stream wait for the
 * ones reduced on other streams.  Nothing to do without a communicator. */
fo_status fo_dp_reduce_for_step(const char *func, fo_optimizer *opt, fo_stream_t stream);

/* 3. A sharded state: this rank's pre-pass partials are added into its
 * slot of the per-rank sums, which the ranks all-gather (the same bits on
 * every rank); *sums and *n then name the per-rank sums for the update.
 * A failed all-gather poisons the gradients (nothing else has changed
 * yet); a failed addition is the executor's failure, and leaves them
 * unpoisoned. */
fo_status fo_dp_agree_sumsq(const char *func, fo_optimizer *opt, const double **sums, int64_t *n,
                            fo_stream_t stream);

/* 4b. A sharded state of LAMB or LARS: all-gather each rank's slot of the
 * tensors' sums of squares (fo_run_plan.tensor_sums) between the two
 * passes (a failure comes after the moments moved: the caller marks the
 * optimizer faulted). */
fo_status fo_dp_gather_tensor_sums(const char *func, fo_optimizer *opt, fo_stream_t stream);

/* 5. A sharded state: all-gather the updated parameters (a failure leaves
 * the ranks with different parameters: the caller marks the optimizer
 * faulted). */
fo_status fo_dp_gather_params(const char *func, fo_optimizer *opt, fo_stream_t stream);

/* After zero_grad: the gradients are fresh (poison and bucket marks go). */
void fo_dp_zero_grad(fo_optimizer *opt);
/* Detach and free the attachment (destroy). */
void fo_dp_free(fo_optimizer *opt);

#endif /* FO_DP_H */
