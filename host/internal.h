/*
 * internal.h -- what host/ files share: the optimizer object, error
 * reporting, the plan builder and the two executors.  Not installed.
 */
#ifndef FO_INTERNAL_H
#define FO_INTERNAL_H

#include <stdint.h>

#ifndef __cplusplus
#include <stdatomic.h>
#endif

#include "fusedopt.h"
#include "plan.h"
#include "rules.h"
#include "step_state.h"

#ifdef __cplusplus
extern "C" { /* the C++ tests of the kernels' block work call the plan */
#endif

/* Alignment of every tensor inside a role buffer, in elements: 128 elements
 * are 256 bytes of a 16-bit dtype and 512 of fp32, so every tensor starts on
 * a 256-byte boundary in every role. */
#define FO_TENSOR_ALIGN_ELEMS 128
/* Elements per block of the CPU executor (a unit of work for one thread). */
#define FO_CPU_CHUNK 16384

/* ---------------------------------------------------------------- errors */

/* Record a failure: sets the thread-local message "<func>: <detail>" and
 * returns status, so that `return fo_fail(...)` reads naturally. */
fo_status fo_fail(fo_status status, const char *func, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* Propagate a failing status to a cleanup label (NCCLCHECK style). */
#define FO_TRY(call)                 \
  do {                               \
    st = (call);                     \
    if (st != FO_SUCCESS) goto done; \
  } while (0)

/* ------------------------------------------------------------- optimizer */

/* Which state roles the optimizer keeps. */
typedef struct fo_state_flags {
  int master;
  int exp_avg;
  int exp_avg_sq;
  int max_exp_avg_sq;
} fo_state_flags;

/* A sharded state (ZeRO-1): with on set, this rank (rank of size) keeps
 * master weights and moments only for the arena elements [first, first +
 * count), and the state buffers in arena[] hold just those; shard_sumsq:
 * one partial sum of squares per rank, in executor memory, for the
 * pre-pass's agreement.  on is 0 without, and first/count then cover the
 * whole arena. */
typedef struct fo_shard_layout {
  int on;
  int rank, size;
  int64_t first, count;
} fo_shard_layout;

struct fo_optimizer {
  fo_options options;
  fo_hparams hparams[FO_MAX_GROUPS];
  int num_groups;
  fo_state_flags keeps;
  /* A pre-pass over the gradients runs before each step (clipping or loss
   * scaling is on). */
  int check_grads;
  /* The step kernel is launched with Programmatic Dependent Launch after
   * the prepare kernel (CUDA executor on a device of compute capability 9.0
   * or newer; kernels/launch.h). */
  int pdl;
  /* Gradients are divided by this inside the update (the number of ranks
   * whose gradients were summed; 1 without a communicator). */
  float grad_divisor;
  /* Data parallelism (host/comm_dp.c): the attached communicator and its
   * gradient buckets, NULL without one.  grads_poisoned: a collective over
   * the gradients failed and left them partly summed, so every step refuses
   * (FO_ERR_COMM) until fo_optimizer_zero_grad() clears it. */
  struct fo_dp *dp;
  int grads_poisoned;
  /* Faults (host/checkpoint_fault.c, docs/reliability.md): FO_SUCCESS while
   * the state is sound.  When work on the executor fails past a call's
   * argument checks, the state may be half-updated: fault keeps that
   * failure's status and fault_msg its message, and every later call that
   * would run on the state refuses until fo_optimizer_load() succeeds.
   * inject: a fault point armed by a test through fo_inject_fault(). */
  fo_status fault;
  char fault_msg[320];
  int inject;
  /* Arena storage with master weights: the master weights are zero until
   * fo_optimizer_sync_master() (or a load) sets them from the parameters
   * the caller wrote; until then every step refuses (FO_ERR_INVALID_STATE)
   * rather than throw the initial parameters away. */
  int master_unset;
  /* A sharded state (ZeRO-1, host/comm_shard.c): see fo_shard_layout. */
  fo_shard_layout shard;
  double *shard_sumsq;

  /* Step calls left before the step count or the skipped count could pass
   * FO_MAX_STEP: FO_MAX_STEP - max(step, skipped), kept on the host (each
   * step call adds one to exactly one of them) so that a step is refused
   * without reading device memory. */
  int64_t steps_left;

  /* Per-step state and the pre-pass's partial sums, in the executor's
   * memory (device memory on CUDA). */
  fo_step_state *state;
  double *partials; /* one per plan block */

  int64_t num_tensors;
  char **names;            /* per tensor, may hold NULLs */
  int64_t *offsets;        /* element offset of each tensor in the role buffers */
  int64_t total_elems;     /* elements in each role buffer, padding included */
  fo_plan_tensor *tensors; /* host copy of the plan's tensor table */

  /* Role buffers in the executor's memory; NULL for roles not kept (and
   * for PARAM/GRAD with external storage). */
  void *arena[FO_ROLE_COUNT];

  /* The tensor table the step's plan indexes: tensors above, or with a
   * sharded state (ZeRO-1, host/comm_shard.c) the pieces of them that
   * fall in this rank's shard, whose state pointers point into the
   * shard-sized state buffers.  num_run_tensors entries. */
  fo_plan_tensor *run_tensors;
  int64_t num_run_tensors;

  /* The step's plan over run_tensors: host copy, and device copies (of
   * the blocks and of run_tensors) for the CUDA executor. */
  int64_t chunk;
  int64_t num_blocks;
  fo_plan_block *blocks;
  fo_plan_block *d_blocks;
  fo_plan_tensor *d_tensors;

  /* host/guard.c: the process that created the optimizer, and the flag a
   * call claims (1 while a thread is inside a call on it).  Last, and a
   * plain int to C++, whose translation units (tests of the plan) never
   * touch it. */
  long creator_pid;
#ifdef __cplusplus
  int busy;
#else
  atomic_int busy;
#endif
};

/* --------------------------------------------------------------- helpers */

int fo_dtype_valid(int dtype);
/* Which state roles an optimizer with these options and groups keeps: the
 * one rule the optimizer (allocation) and the checkpoint code (what a file
 * must hold) share. */
fo_state_flags fo_state_needed(const fo_options *o, const fo_hparams *h, int num_groups);
/* Whether the optimizer keeps a buffer of role (PARAM and GRAD: with arena
 * storage). */
int fo_role_kept(const fo_optimizer *opt, fo_role role);
/* Zero-filled memory of the optimizer's executor (256-byte aligned host
 * memory, or device memory), and its release (NULL is a no-op). */
fo_status fo_exec_alloc(const char *func, const fo_optimizer *opt, size_t bytes, void **out);
void fo_exec_free(const fo_optimizer *opt, void *p);
size_t fo_role_elem_size(const fo_optimizer *opt, fo_role role);

/* Validate one group's hyper-parameters for alg; on failure the message
 * names func and "hparams[group]". */
fo_status fo_validate_hparams(const char *func, fo_algorithm alg, int group, const fo_hparams *h);

/* Validate the schedule, loss-scaler and clipping options. */
fo_status fo_validate_step_options(const char *func, const fo_options *o);

/* FO_ERR_INVALID_STATE (under func's name) while arena master weights were
 * never set (fo_optimizer::master_unset): steps and saves refuse. */
fo_status fo_master_check(const char *func, const fo_optimizer *opt);

/* The prepare step's arguments from the optimizer's current settings. */
void fo_prepare_args_fill(const fo_optimizer *opt, fo_prepare_args *out);

/* The state of a fresh optimizer: step 0, the initial loss scale. */
void fo_step_state_init(const fo_options *o, fo_step_state *out);

/* Set opt->steps_left from counters now in the state. */
void fo_steps_left_reset(fo_optimizer *opt, const fo_step_state *s);

/* ------------------------------------------------------------------ plan */

/* Number of blocks that cover n tensors with chunks of chunk elements, or
 * -1 if the count overflows int64 or an argument is invalid. */
int64_t fo_plan_count_blocks(const fo_plan_tensor *t, int64_t n, int64_t chunk);
/* Write the fo_plan_count_blocks() blocks, tensor by tensor, in order. */
void fo_plan_fill_blocks(const fo_plan_tensor *t, int64_t n, int64_t chunk, fo_plan_block *out);

/* ------------------------------------------------------------- executors */

/* CPU executor (host/cpu_exec.c). */
fo_status fo_cpu_step(fo_optimizer *opt);
fo_status fo_cpu_sync_master(fo_optimizer *opt);
fo_status fo_cpu_zero_grad(fo_optimizer *opt);

/* CUDA executor (host/cuda_exec.c). */
fo_status fo_cuda_available(const char *func, int device);
/* Forget error e (a cudaError_t) if it is the one the runtime now holds as
 * its last error: a failed call of ours is reported by its status, and the
 * caller's own pending error, if any other, is left alone. */
void fo_cuda_forget(int e);
/* Check that ptr .. ptr+bytes is memory the executor may use: device memory
 * of device (cuda != 0) or host memory (cuda == 0). */
fo_status fo_cuda_check_pointer(const char *func, const char *what, const void *ptr, size_t bytes,
                                int cuda, int device);
fo_status fo_cuda_check_stream(const char *func, fo_stream_t stream, int device);
fo_status fo_cuda_alloc_zeroed(const char *func, int device, size_t bytes, void **out);
void fo_cuda_free(int device, void *p);
fo_status fo_cuda_upload_plan(const char *func, fo_optimizer *opt);
/* Allocate bytes of device memory and copy src (host) there. */
fo_status fo_cuda_upload(const char *func, int device, const void *src, size_t bytes, void **dst);
fo_status fo_cuda_step(fo_optimizer *opt, fo_stream_t stream);
/* Copy the step state between the device and host (synchronizes). */
fo_status fo_cuda_read_state(const char *func, const fo_optimizer *opt, fo_step_state *out);
fo_status fo_cuda_write_state(const char *func, fo_optimizer *opt, const fo_step_state *in);
fo_status fo_cuda_sync_master(fo_optimizer *opt, fo_stream_t stream);
fo_status fo_cuda_zero_grad(fo_optimizer *opt, fo_stream_t stream);
fo_status fo_cuda_synchronize(int device);
/* Copy bytes between two buffers of device's memory (waits). */
fo_status fo_cuda_copy(const char *func, int device, void *dst, const void *src, size_t bytes);

/* Data parallelism (host/comm_dp.c).  before_step refuses poisoned
 * gradients and reduces the buckets not yet reduced; zero_grad clears the
 * poison and the per-step bucket marks; free detaches the communicator. */
fo_status fo_dp_before_step(const char *func, fo_optimizer *opt, fo_stream_t stream);
void fo_dp_zero_grad(fo_optimizer *opt);
void fo_dp_free(fo_optimizer *opt);

/* Sharded state (host/comm_shard.c).  agree_sumsq: the pre-pass's sum of
 * squares over every rank's shard, the same bits on every rank; on the CPU
 * *total holds this rank's partial on entry and the agreed total on
 * return; on CUDA this rank's partial is already in shard_sumsq[rank] and
 * the call all-gathers the others (enqueued on stream), total unused.  A
 * failure poisons the gradients (nothing else has changed yet).
 * after_step: all-gather the updated parameters (a failure leaves ranks
 * with different parameters: the caller marks the optimizer faulted).
 * free: the shard's own allocations. */
fo_status fo_dp_agree_sumsq(const char *func, fo_optimizer *opt, double *total, fo_stream_t stream);
fo_status fo_dp_after_step(const char *func, fo_optimizer *opt, fo_stream_t stream);
void fo_shard_free(fo_optimizer *opt);
/* Rank rank's shard of total elements over size ranks: 128-aligned parts
 * of ceil(total / size) elements, the last ones shorter or empty. */
void fo_shard_range(int64_t total, int size, int rank, int64_t *first, int64_t *count);

/* ----------------------------------------------------------------- guard */

/* Claim opt for the calling thread for one call (host/guard.c): FO_SUCCESS,
 * or FO_ERR_INVALID_STATE when another thread is inside a call on it.
 * Every successful claim is paired with a release, which returns status
 * so that a call ends `return fo_release(opt, body(...))`. */
fo_status fo_claim(const char *func, const fo_optimizer *opt);
fo_status fo_release(const fo_optimizer *opt, fo_status status);
/* A fresh optimizer: not claimed, created by this process.  Then refuse
 * (FO_ERR_INVALID_STATE) in a forked child work that runs kernels or
 * OpenMP teams (runs_kernels), or that touches a CUDA executor's device at
 * all. */
void fo_guard_init(fo_optimizer *opt);
fo_status fo_check_process(const char *func, const fo_optimizer *opt, int runs_kernels);

/* ---------------------------------------------------------------- faults */

/* Where a test can make the library fail (fo_inject_fault); never armed
 * outside tests.  Each stays armed until FO_FAULT_NONE is injected. */
typedef enum fo_fault_point {
  FO_FAULT_NONE = 0,
  FO_FAULT_STEP,       /* the executor's step runs, then reports FO_ERR_CUDA */
  FO_FAULT_ZERO_GRAD,  /* zero_grad runs, then reports FO_ERR_CUDA */
  FO_FAULT_SAVE_WRITE, /* a write of the checkpoint's data fails (ENOSPC) */
  FO_FAULT_SAVE_CRASH, /* the process is killed halfway through the data */
  FO_FAULT_LOAD_APPLY, /* copying the validated state in fails halfway */
  FO_FAULT_COUNT
} fo_fault_point;

#ifdef FO_TESTING
/* Arm (or with FO_FAULT_NONE disarm) a fault point.  Only in the test
 * suite's build (FO_TESTING, library fusedopt_testing): the shipped
 * libraries hold neither this nor the armed checks. */
fo_status fo_inject_fault(fo_optimizer *opt, fo_fault_point where);
/* Whether the fault point is armed. */
int fo_fault_armed(const fo_optimizer *opt, fo_fault_point where);
#else
#define fo_fault_armed(opt, where) ((void)(opt), (void)(where), 0)
#endif
/* FO_SUCCESS when the state is sound, else FO_ERR_INVALID_STATE with the
 * original failure in the message, under func's name. */
fo_status fo_fault_check(const char *func, const fo_optimizer *opt);
/* Pass status through; a failure marks the state as unusable (keeping
 * fo_last_error()'s message).  The injected fault of where, when armed,
 * turns a success into FO_ERR_CUDA first. */
fo_status fo_fault_after(const char *func, fo_optimizer *opt, fo_fault_point where,
                         fo_status status);
/* The state is sound again (a checkpoint was loaded). */
void fo_fault_clear(fo_optimizer *opt);

#ifdef __cplusplus
}
#endif

#endif /* FO_INTERNAL_H */
