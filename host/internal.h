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

typedef struct fo_exec_ops fo_exec_ops;

/* The plan a step runs: the tensor table it indexes, its blocks (chunk
 * elements of one tensor each, a tensor's blocks next to each other in
 * element order), the executor's copies of both (CUDA; NULL on the CPU,
 * which reads the host tables) and one pre-pass partial sum per block
 * (executor memory; NULL without a pre-pass).  pdl: the step
 * kernel may be launched with Programmatic Dependent Launch (CUDA, compute
 * capability 9.0 or newer; kernels/launch.h). */
typedef struct fo_run_plan {
  fo_plan_tensor *tensors;
  int64_t num_tensors;
  int owns_tensors; /* tensors was allocated for the plan (a shard's) */
  int64_t chunk;
  int64_t num_blocks;
  fo_plan_block *blocks;
  fo_plan_block *d_blocks;
  fo_plan_tensor *d_tensors;
  double *partials;
  /* LAMB, LARS (fo_algorithm_has_tensor_norms): the norms pass's two
   * partial sums of squares per block (norm_partials[2b], [2b+1]), and
   * the second pass's factor per tensor (fo_trust_factor); executor
   * memory, NULL for the other algorithms. */
  double *norm_partials;
  float *tensor_factors;
  /* ... and the sums of the whole tensors: slots x all_tensors x 2 doubles,
   * indexed by fo_plan_tensor.index.  This rank writes slot `slot` (the
   * others are 0 for tensors it has no piece of); a sharded state has one
   * slot per rank, which the ranks all-gather, and the factors add the
   * slots up in rank order. */
  double *tensor_sums;
  int64_t all_tensors;
  int slots, slot;
  int pdl;
} fo_run_plan;

/* A sharded state (ZeRO-1): with on set, this rank (rank of size) keeps
 * master weights and moments only for the arena elements [first, first +
 * count), and the state buffers in arena[] hold just those.  on is 0
 * without.  The data-parallel attachment (host/dp/) keeps what the
 * shard needs to talk to the other ranks. */
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
  /* The executor every call goes through (host/exec.h). */
  const fo_exec_ops *exec;
  /* Gradients are divided by this inside the update (the number of ranks
   * whose gradients were summed; 1 without a communicator). */
  float grad_divisor;
  /* Data parallelism (host/dp/buckets.c): the attached communicator and its
   * gradient buckets, NULL without one.  grads_poisoned: a collective over
   * the gradients failed and left them partly summed, so every step refuses
   * (FO_ERR_COMM) until fo_optimizer_zero_grad() clears it. */
  struct fo_dp *dp;
  int grads_poisoned;
  /* Faults (host/fault.c, docs/reliability.md): FO_SUCCESS while
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
  /* A sharded state (ZeRO-1, host/dp/shard.c): see fo_shard_layout. */
  fo_shard_layout shard;

  /* Step calls left before the step count or the skipped count could pass
   * FO_MAX_STEP: FO_MAX_STEP - max(step, skipped), kept on the host (each
   * step call adds one to exactly one of them) so that a step is refused
   * without reading device memory. */
  int64_t steps_left;

  /* Per-step state, in the executor's memory (device memory on CUDA). */
  fo_step_state *state;
  /* host/known.c: a copy of *state the host keeps for the steps it can
   * decide alone.  valid: equal to *state once the work enqueued so far has
   * run.  off: never again (FUSEDOPT_HOST_SCALARS=0 at create, or a step
   * was captured into a CUDA graph).  Only the CUDA executor reads and
   * advances it; every executor's whole-state writes set it (exec.c), so
   * on the CPU it is stale after the first step, and never read. */
  struct {
    fo_step_state state;
    int valid, off;
  } known;

  int64_t num_tensors;
  char **names;            /* per tensor, may hold NULLs */
  int64_t *offsets;        /* element offset of each tensor in the role buffers */
  int64_t total_elems;     /* elements in each role buffer, padding included */
  fo_plan_tensor *tensors; /* host copy of the plan's tensor table */

  /* Role buffers in the executor's memory; NULL for roles not kept (and
   * for PARAM/GRAD with external storage). */
  void *arena[FO_ROLE_COUNT];

  /* The plan the step runs (host/plan.c): over tensors above, or with a
   * sharded state over the pieces of them in this rank's shard. */
  fo_run_plan run;

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

/* ------------------------------------------- algorithms (algorithms.c) */

/* The names checkpoints record, indexed by fo_algorithm. */
extern const char *const fo_algorithm_names[FO_ALG_COUNT];
/* What a checkpoint appends to a tensor's name for state role of alg
 * (".exp_avg", ".sum", ...); NULL where alg never keeps the role. */
const char *fo_algorithm_state_suffix(fo_algorithm alg, fo_role role);
/* Whether alg reads beta1 and beta2. */
int fo_algorithm_uses_betas(fo_algorithm alg);
/* Whether alg scales each tensor's update by norms of the whole tensor
 * (LAMB, LARS): a step of two passes (host/exec.h). */
int fo_algorithm_has_tensor_norms(fo_algorithm alg);
/* The checks of one group's hyper-parameters that depend on alg. */
fo_status fo_algorithm_check_hparams(const char *func, fo_algorithm alg, int group,
                                     const fo_hparams *h);
/* Which state roles an optimizer with these options and groups keeps: the
 * one rule the optimizer (allocation) and the checkpoint code (what a file
 * must hold) share. */
fo_state_flags fo_state_needed(const fo_options *o, const fo_hparams *h, int num_groups);

/* --------------------------------------------------------------- helpers */

int fo_dtype_valid(int dtype);
/* FO_ERR_BAD_POINTER naming what (as "what = %p") unless ptr starts on a
 * multiple of size, the size of its elements. */
fo_status fo_check_aligned(const char *func, const char *what, const void *ptr, size_t size);
size_t fo_role_elem_size(const fo_optimizer *opt, fo_role role);

/* Validate one group's hyper-parameters for alg; on failure the message
 * names func and "hparams[group]". */
fo_status fo_validate_hparams(const char *func, fo_algorithm alg, int group, const fo_hparams *h);

/* Validate the schedule, loss-scaler and clipping options. */
fo_status fo_validate_step_options(const char *func, const fo_options *o);

/* The prepare step's arguments from the optimizer's current settings. */
void fo_prepare_args_fill(const fo_optimizer *opt, fo_prepare_args *out);

/* The state of a fresh optimizer: step 0, the initial loss scale. */
void fo_step_state_init(const fo_options *o, fo_step_state *out);
/* With loss scaling off, the scaler's fields of s set as create left them
 * (no step reads or writes them there); returns whether scaling is off. */
int fo_scaler_fields_unused(const fo_options *o, fo_step_state *s);

/* NAdam's product of the momentum coefficients of steps 1 .. steps, as the
 * steps would have left it (fo_optimizer_set_step). */
float fo_nadam_mu_product(const fo_group_hparams *h, int64_t steps);

/* The loss scaler's part of a step state against the optimizer's
 * loss_scaler options, held to what the steps can leave there: a scale
 * finite and at least FO_LOSS_SCALE_MIN and, with loss scaling on, a
 * growth tracker in [0, growth_interval) and a hysteresis count in
 * [1, hysteresis].  One rule for a load and fo_optimizer_set_scaler_state:
 * a failure is status code under fn, its message naming the values
 * "<whose> loss scale" and so on ("the checkpoint's" for a load). */
fo_status fo_check_scaler_fields(const char *fn, fo_status code, const char *whose,
                                 const fo_loss_scaler_options *ls, float scale, int growth_tracker,
                                 int hysteresis_left);

/* Whether p can be NAdam's product of momentum coefficients: in [0, 1]
 * (1 before the first step, 0 once it underflowed; not NaN). */
int fo_mu_product_valid(float p);

/* Set opt->steps_left from counters now in the state. */
void fo_steps_left_reset(fo_optimizer *opt, const fo_step_state *s);

/* ------------------------------------------- the host's copy (known.c) */

/* At create, before the state is first written: FUSEDOPT_HOST_SCALARS. */
void fo_known_init(fo_optimizer *opt);
/* The executor's state was just written with *s (fo_exec_write_state). */
void fo_known_set(fo_optimizer *opt, const fo_step_state *s);
/* The device decides the state from here on: until the next write, or
 * (for_good) for the optimizer's life. */
void fo_known_forget(fo_optimizer *opt, int for_good);
/* When the host can decide the next step alone (its copy is valid, no
 * pre-pass, at most FO_KNOWN_GROUPS groups, not skipped): 1, with *out the
 * step to carry in the launch and *next the state after it (fo_known_set
 * it once the launch is enqueued).  Otherwise 0. */
int fo_known_next(const fo_optimizer *opt, const fo_prepare_args *pa, fo_known_step *out,
                  fo_step_state *next);

/* ----------------------------------------------- executor (exec.h, exec.c) */

/* Direction of a synchronous copy. */
typedef enum fo_copy_dir {
  FO_COPY_WITHIN = 0, /* executor memory to executor memory */
  FO_COPY_TO_HOST,    /* executor memory to host memory */
  FO_COPY_FROM_HOST   /* host memory to executor memory */
} fo_copy_dir;

/* Shorthands over opt->exec (the table is in exec.h): the memory, the
 * stream check and the step state of the optimizer's executor. */
fo_status fo_exec_alloc(const char *fn, const fo_optimizer *opt, size_t bytes, void **out);
void fo_exec_free(const fo_optimizer *opt, void *p);
fo_status fo_exec_copy(const char *fn, const fo_optimizer *opt, void *dst, const void *src,
                       size_t bytes, fo_copy_dir dir);
fo_status fo_exec_synchronize(const char *fn, const fo_optimizer *opt);
fo_status fo_exec_check_stream(const char *fn, const fo_optimizer *opt, fo_stream_t stream);
fo_status fo_exec_read_state(const char *fn, const fo_optimizer *opt, fo_step_state *out);
fo_status fo_exec_write_state(const char *fn, fo_optimizer *opt, const fo_step_state *in);

/* ---------------------------------------------------- layout (layout.c) */

/* Whether the optimizer keeps a buffer of role (PARAM and GRAD: with arena
 * storage). */
int fo_role_kept(const fo_optimizer *opt, fo_role role);
/* Lay the tensors out in the role buffers (allocated here) and fill
 * opt->tensors with every role's pointer for each tensor. */
fo_status fo_layout_tensors(const char *func, fo_optimizer *opt, const fo_tensor_desc *t);
/* AdaGrad: each tensor's sum filled with its group's
 * initial_accumulator_value (after fo_layout_tensors). */
fo_status fo_layout_fill_initial_sums(const char *func, fo_optimizer *opt);
/* Make the optimizer's state sharded: the state buffers become state[]
 * (shard-sized, one per state role, NULL for roles not kept) and the plan
 * becomes run; the whole ones are released.  Cannot fail. */
void fo_layout_adopt_shard(fo_optimizer *opt, const fo_shard_layout *shard,
                           void *const state[FO_ROLE_COUNT], fo_run_plan *run);

/* Rank rank's shard of total elements over size ranks: 128-aligned parts
 * of ceil(total / size) elements, the last ones shorter or empty. */
void fo_shard_range(int64_t total, int size, int rank, int64_t *first, int64_t *count);

/* FO_ERR_INVALID_STATE (under func's name) while arena master weights were
 * never set (fo_optimizer::master_unset): steps and saves refuse. */
fo_status fo_master_check(const char *func, const fo_optimizer *opt);

/* ------------------------------------------------------ plan (plan.c) */

/* The run plan over tensors[0..n) (not copied: the plan refers to them)
 * for opt's executor: blocks, their executor copies and, with a pre-pass,
 * the partial sums.  A failure leaves *out empty. */
/* Give plan's tensor_sums `slots` slots, this rank writing `slot` (a
 * sharded state: one per rank); the old buffer goes only on success. */
fo_status fo_run_plan_norm_slots(const char *func, const fo_optimizer *opt, fo_run_plan *plan,
                                 int slots, int slot);
fo_status fo_run_plan_build(const char *func, const fo_optimizer *opt, fo_plan_tensor *tensors,
                            int64_t n, fo_run_plan *out);
/* Release what fo_run_plan_build allocated (and tensors, when the plan
 * owns them); leaves *plan empty. */
void fo_run_plan_free(const fo_optimizer *opt, fo_run_plan *plan);

/* ------------------------------------------- the step (step.c, dp/) */

/* The step in order: reduce the gradients, pre-pass, agree across ranks,
 * update, gather.  opt claimed, arguments checked. */
fo_status fo_step_run(const char *func, fo_optimizer *opt, fo_stream_t stream);

/* CUDA helpers other files need without the device layer's header. */
fo_status fo_cuda_available(const char *func, int device);

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
