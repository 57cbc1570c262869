/*
 * reliability.h -- what the reliability tests (test_reliability_*.c, the
 * edges of issue #20 on the CPU executor) share: the SGD configuration most
 * of them run, and the step info of an optimizer.  The model is
 * ckpt_harness.h's.
 */
#ifndef FO_TEST_RELIABILITY_H
#define FO_TEST_RELIABILITY_H

#include "ckpt_harness.h"
#include "fusedopt.h"

/* SGD with momentum, fp32, loss scaling, arena storage, CPU executor. */
extern const ck_cfg sgd_cfg;

/* fo_optimizer_get_info, asserted to succeed. */
fo_step_info info_of(fo_optimizer *opt);

#endif /* FO_TEST_RELIABILITY_H */
