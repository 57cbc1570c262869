/*
 * cr_status.h -- Criterion assertions on library statuses, shared by the
 * Criterion tests: OK(call) must succeed; FAILS(call, status) must return
 * exactly status.  Both print the call, the status and fo_last_error().
 *
 * Include after <criterion/criterion.h>.
 */
#ifndef FO_CR_STATUS_H
#define FO_CR_STATUS_H

#include "fusedopt.h"

#define OK(call)                                                                          \
  do {                                                                                    \
    fo_status s_ = (call);                                                                \
    cr_assert_eq(s_, FO_SUCCESS, "%s: %s (%s)", #call, fo_status_string(s_),             \
                 fo_last_error());                                                        \
  } while (0)

#define FAILS(call, status)                                                               \
  do {                                                                                    \
    fo_status s_ = (call);                                                                \
    cr_assert_eq(s_, status, "%s returned %s, expected %s (%s)", #call,                  \
                 fo_status_string(s_), fo_status_string(status), fo_last_error());        \
  } while (0)

#endif /* FO_CR_STATUS_H */
