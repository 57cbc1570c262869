/*
 * api_harness.h -- what the public-API tests (tests/test_api_*.c,
 * tests/test_conversions.c) share: exact-status checks with the message's
 * contents, sentinels for out-parameters a failing call must not write, and
 * the create fixture (an environment of options, hyper-parameters and
 * tensors in one pool, and create run on it with every "nothing changed on
 * failure" check).
 *
 * Written against include/fusedopt.h only; no library internals.  The
 * functions report through Criterion (cr_expect / cr_assert), so they are
 * called from inside a Test.
 */
#ifndef FO_TEST_API_HARNESS_H
#define FO_TEST_API_HARNESS_H

#include <stddef.h>
#include <stdint.h>

#include "fusedopt.h"

/* ----------------------------------------------------------- bits, names */

uint32_t f2u(float f);
float u2f(uint32_t u);
const char *st_name(fo_status s);

/* Case-insensitive strstr that also treats '_' and ' ' as the same
 * character, so "stochastic rounding" names stochastic_rounding. */
int contains_ci(const char *hay, const char *needle);

/* ----------------------------------------------------------------- CHECK */

/* Set fo_last_error() to a message that names neither fn nor anything a
 * following check looks for, so a failing call that forgets to set its own
 * message is caught (instead of passing on a stale message). */
void prime_error(const char *fn);

/* One call, its exact expected status, and (on failure) a message that
 * names the function and, if arg is not NULL, the offending argument. */
void check_status(fo_status got, fo_status want, const char *fn, const char *arg, const char *call,
                  int line);

#define CHECK(want, arg, fn, ...)                                                          \
  do {                                                                                     \
    prime_error(#fn);                                                                      \
    check_status(fn(__VA_ARGS__), (want), #fn, (arg), #fn "(" #__VA_ARGS__ ")", __LINE__); \
  } while (0)

/* Short names of the statuses the case tables use most. */
#define IA FO_ERR_INVALID_ARGUMENT
#define OK FO_SUCCESS
#define IS FO_ERR_INVALID_STATE

/* Values we put into out-parameters before a call that must fail: the call
 * must leave them as they are. */
#define SENT_PTR ((void *)(uintptr_t)0x5e17e1u)
#define SENT_OPT ((fo_optimizer *)(uintptr_t)0x5e17e1u)
#define SENT_I64 ((int64_t)0x5e17e15e17e1)
#define SENT_F32 (-1234.5f)
#define SENT_SIZE ((size_t)0x5e17e1u)

/* Number of reserved words in fo_options and fo_hparams (the header has
 * changed them before). */
#define NRESERVED (sizeof(((fo_options *)0)->reserved) / sizeof(uint64_t))
#define NRESERVED_HP (sizeof(((fo_hparams *)0)->reserved) / sizeof(uint64_t))

/* A non-NULL stream handle: must be refused by the CPU executor. */
#define SOME_STREAM ((fo_stream_t)(uintptr_t)0x1000u)

/* ------------------------------------------------------ the create fixture */

/* Every buffer the tests hand the library lives in one pool, in 64-byte
 * slots: tensor k's param is slot 2k, its grad slot 2k+1 (16 fp32 elements,
 * or 16 16-bit elements in the first half of the slot).  Overlap cases move
 * pointers around inside the pool; the whole pool is compared byte by byte
 * before and after each call. */
enum { SLOT_ELEMS = 16, SLOT_BYTES = 64, NUM_SLOTS = 8, MAX_T = 3 };

typedef struct cenv {
  fo_options o;
  fo_hparams hp[FO_MAX_GROUPS + 1];
  int ng;
  fo_tensor_desc t[MAX_T];
  int64_t nt;
  /* what create gets (the NULL-pointer cases clear these) */
  int out_null;
  const fo_options *po;
  const fo_hparams *php;
  const fo_tensor_desc *pt;
  _Alignas(256) unsigned char pool[NUM_SLOTS * SLOT_BYTES];
} cenv;

/* The pool's byte at byte_offset. */
void *at(cenv *e, size_t byte_offset);

/* Baseline: algorithm alg, default options (CPU, external, fp32), two groups
 * (the second without weight decay), two tensors of 16 elements, one per
 * group.  t[2] is prepared (group 0, slots 4/5) for cases that set nt = 3. */
void env_init(cenv *e, fo_algorithm alg);

/* Arena storage: the tensors' pointers cleared. */
void set_arena(cenv *e);

/* Run create on the fixture and check: the exact status; on failure *out is
 * still the sentinel and fo_last_error names fo_optimizer_create and `arg`;
 * always: the caller's buffers and the const arguments are byte-identical.
 * On success the optimizer is returned (or destroyed when keep is NULL). */
fo_status run_create(cenv *e, const char *label, fo_status want, const char *arg,
                     fo_optimizer **keep);

/* A valid optimizer over the baseline fixture of alg (asserts success). */
fo_optimizer *make_opt(cenv *e, fo_algorithm alg);

/* A change to the fixture, for case tables: MUT(name, statements) defines
 * one. */
typedef void (*mutator)(cenv *e);
#define MUT(fn, ...)        \
  static void fn(cenv *e) { \
    __VA_ARGS__;            \
  }

#endif /* FO_TEST_API_HARNESS_H */
