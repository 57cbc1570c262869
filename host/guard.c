/*
 * guard.c -- the two rules of use the library checks instead of trusting
 * (include/fusedopt.h, "Threads and processes"; docs/reliability.md):
 *
 *   - one thread at a time per optimizer.  Every call that reads or writes
 *     the optimizer's state claims it with an atomic exchange and releases
 *     it on return; a call that finds it claimed fails at once with
 *     FO_ERR_INVALID_STATE and changes nothing, where two unsynchronised
 *     calls would lose steps or save a state no step produced.  It is a
 *     detector, not a lock: nothing ever waits.
 *   - no step in a forked child.  OpenMP's thread pool and CUDA's context do
 *     not survive fork(): a child's first parallel step hangs in the OpenMP
 *     runtime.  The optimizer remembers the process that created it, and
 *     work that would need those refuses in any other.
 */
#define _POSIX_C_SOURCE 200809L

#include <stdatomic.h>
#include <unistd.h>

#include "internal.h"

/* The flag is declared as a plain int for C++ translation units (which
 * never touch it): the two must be laid out alike. */
_Static_assert(sizeof(atomic_int) == sizeof(int) && _Alignof(atomic_int) == _Alignof(int),
               "atomic_int is not laid out as int");

fo_status fo_claim(const char *fn, const fo_optimizer *opt) {
  /* The optimizer is never defined const (fo_optimizer_create allocates
   * it), so the flag may be written through a const handle. */
  fo_optimizer *o = (fo_optimizer *)opt;
  if (atomic_exchange_explicit(&o->busy, 1, memory_order_acquire) == 0) return FO_SUCCESS;
  return fo_fail(FO_ERR_INVALID_STATE, fn,
                 "another thread is inside a call on this optimizer: an optimizer is used by "
                 "one thread at a time (nothing was done; serialise the calls, or give each "
                 "thread its own optimizer)");
}

fo_status fo_release(const fo_optimizer *opt, fo_status status) {
  atomic_store_explicit(&((fo_optimizer *)opt)->busy, 0, memory_order_release);
  return status;
}

void fo_guard_init(fo_optimizer *opt) {
  opt->creator_pid = (long)getpid();
  atomic_init(&opt->busy, 0);
}

fo_status fo_check_process(const char *fn, const fo_optimizer *opt, int runs_kernels) {
  if (!runs_kernels && opt->options.executor != FO_EXEC_CUDA) return FO_SUCCESS;
  long pid = (long)getpid();
  if (pid == opt->creator_pid) return FO_SUCCESS;
  return fo_fail(FO_ERR_INVALID_STATE, fn,
                 "this process (%ld) is a fork of the one that created the optimizer (%ld): "
                 "%s do not survive fork(), so a forked child must not step it (save it, on "
                 "the CPU executor, or create an optimizer of its own and load a checkpoint)",
                 pid, opt->creator_pid,
                 opt->options.executor == FO_EXEC_CUDA ? "the CUDA context and OpenMP's threads"
                                                       : "OpenMP's threads");
}
