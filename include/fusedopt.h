/*
 * fusedopt.h -- fused optimizer steps for GPU training.
 *
 * This header is the library's reference manual: every type, constant and
 * function is documented where it is declared.
 *
 * Model of use
 * ------------
 *   1. Fill an fo_options with fo_options_default(), choose the algorithm,
 *      where the step runs (FO_EXEC_CPU or FO_EXEC_CUDA), the dtypes and the
 *      tensor storage mode.
 *   2. Fill one fo_hparams per parameter group with fo_hparams_default() and
 *      adjust it (the usual split: no weight decay on biases and norms).
 *   3. Describe every tensor with an fo_tensor_desc and call
 *      fo_optimizer_create().  The optimizer allocates its state (moments,
 *      momentum buffers, fp32 master weights) and builds its launch plan once.
 *   4. Every training step: produce the gradients, call fo_optimizer_step(),
 *      then fo_optimizer_zero_grad() (or let the backward pass overwrite them).
 *   5. fo_optimizer_destroy() when done.
 *
 * Conventions
 * -----------
 *   - Every function returns an fo_status.  On failure nothing the caller owns
 *     has changed, and fo_last_error() holds a message with the detail, kept
 *     per thread until the next failing call on that thread.
 *   - Every function that launches device work takes an fo_stream_t (a
 *     cudaStream_t; NULL is the legacy default stream).  On the CPU executor
 *     the stream must be NULL and the work is done before the call returns.
 *   - A step never waits for the host: no call that launches work
 *     synchronizes, unless its documentation says so.
 *   - Sizes and offsets are 64-bit.
 *   - fo_optimizer_destroy(NULL) is a no-op.
 *
 * Numerics follow PyTorch's torch.optim (see docs/numerics.md): arithmetic is
 * fp32, 16-bit values are widened on load and rounded to nearest-even on
 * store (or stochastically, when asked).
 */
#ifndef FUSEDOPT_H
#define FUSEDOPT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- export */

#if defined(_WIN32)
#define FO_API __declspec(dllexport)
#elif defined(__GNUC__)
#define FO_API __attribute__((visibility("default")))
#else
#define FO_API
#endif

/* --------------------------------------------------------------- version */

#define FO_VERSION_MAJOR 0
#define FO_VERSION_MINOR 1
#define FO_VERSION_PATCH 0
/** MAJOR*10000 + MINOR*100 + PATCH: compare with fo_version_number(). */
#define FO_VERSION_NUMBER \
  (FO_VERSION_MAJOR * 10000 + FO_VERSION_MINOR * 100 + FO_VERSION_PATCH)

/** The version the library was built as, FO_VERSION_NUMBER's form. */
FO_API unsigned fo_version_number(void);
/** The version as "MAJOR.MINOR.PATCH"; a static string. */
FO_API const char *fo_version_string(void);

/* ---------------------------------------------------------------- status */

/** Every function returns one of these. */
typedef enum fo_status {
  FO_SUCCESS = 0,
  /** A required pointer argument was NULL. */
  FO_ERR_NULL_POINTER = 1,
  /** An argument is out of its range: a size, an index, a hyper-parameter
   *  that is NaN, negative or otherwise meaningless, an unknown enum value. */
  FO_ERR_INVALID_ARGUMENT = 2,
  /** The arguments are each valid but not together (a combination the
   *  library does not support, for example stochastic rounding on fp16). */
  FO_ERR_UNSUPPORTED = 3,
  /** Two buffers that must be distinct overlap. */
  FO_ERR_OVERLAP = 4,
  /** The call does not fit the object's state or mode (for example asking
   *  for arena pointers of an optimizer over external tensors). */
  FO_ERR_INVALID_STATE = 5,
  /** Host or device memory could not be allocated. */
  FO_ERR_OUT_OF_MEMORY = 6,
  /** The CUDA executor was asked for and no usable device or driver is
   *  present; the message says which is missing. */
  FO_ERR_NO_DEVICE = 7,
  /** A pointer is in the wrong memory: host memory where device memory is
   *  needed or the reverse, or memory of another device. */
  FO_ERR_BAD_POINTER = 8,
  /** A CUDA call failed; the message holds CUDA's error name and text. */
  FO_ERR_CUDA = 9,
  /** Reserved: a communicator (NCCL or MPI) call failed. */
  FO_ERR_COMM = 10,
  /** Reserved: reading or writing a file failed. */
  FO_ERR_IO = 11,
  /** Reserved: a checkpoint file is malformed or does not match. */
  FO_ERR_CHECKPOINT = 12,
  /** The feature is declared but not built in this version. */
  FO_ERR_NOT_IMPLEMENTED = 13,
  /** An internal invariant failed: a bug in the library; please report. */
  FO_ERR_INTERNAL = 14,
  FO_STATUS_COUNT /**< number of status values; not a status */
} fo_status;

/** A short static description of a status ("invalid argument"); never NULL,
 *  "unknown status" for values outside the enum. */
FO_API const char *fo_status_string(fo_status status);

/** The detail of the last failing call on this thread ("fo_optimizer_create:
 *  hparams[2].beta1 = 1.5 is outside [0, 1)"), or "" if no call failed.  The
 *  string is thread-local and valid until the next failing call on this
 *  thread. */
FO_API const char *fo_last_error(void);

/* ----------------------------------------------------------------- enums */

/** The update rule.  Semantics follow torch.optim; see docs/numerics.md. */
typedef enum fo_algorithm {
  /** SGD with optional momentum, dampening, Nesterov and L2 weight decay. */
  FO_ALG_SGD = 0,
  /** Adam: L2 weight decay added to the gradient; optional AMSGrad. */
  FO_ALG_ADAM = 1,
  /** AdamW: decoupled weight decay p -= lr*wd*p; optional AMSGrad. */
  FO_ALG_ADAMW = 2,
  /** Lion (Chen et al. 2023): sign of an interpolated momentum. */
  FO_ALG_LION = 3,
  FO_ALG_COUNT /**< number of algorithms; not an algorithm */
} fo_algorithm;

/** Element type of parameters and gradients.  Optimizer state is fp32. */
typedef enum fo_dtype {
  FO_DTYPE_F32 = 0,  /**< IEEE binary32 */
  FO_DTYPE_F16 = 1,  /**< IEEE binary16 */
  FO_DTYPE_BF16 = 2, /**< bfloat16: binary32's upper 16 bits */
  FO_DTYPE_COUNT     /**< number of dtypes; not a dtype */
} fo_dtype;

/** Where the step runs. */
typedef enum fo_executor {
  /** Host memory, multi-threaded on the CPU (optimizer offload, machines
   *  without a GPU).  Streams must be NULL. */
  FO_EXEC_CPU = 0,
  /** Device memory of one CUDA device, fused multi-tensor kernels. */
  FO_EXEC_CUDA = 1,
  FO_EXEC_COUNT /**< number of executors; not an executor */
} fo_executor;

/** Who owns the parameter and gradient buffers. */
typedef enum fo_storage {
  /** The caller owns them (for example a framework's tensors) and passes
   *  their addresses in fo_tensor_desc.  They must stay valid and not move
   *  for the optimizer's lifetime. */
  FO_STORAGE_EXTERNAL = 0,
  /** The library allocates one contiguous buffer per role (parameters,
   *  gradients, master weights, moments) and hands out per-tensor pointers
   *  (fo_optimizer_param_ptr / fo_optimizer_grad_ptr).  Each tensor starts
   *  on a 256-byte boundary. */
  FO_STORAGE_ARENA = 1,
  FO_STORAGE_COUNT /**< number of storage modes; not a mode */
} fo_storage;

/** A buffer role inside the arena, for fo_optimizer_arena(). */
typedef enum fo_role {
  FO_ROLE_PARAM = 0,  /**< parameters, in the parameter dtype */
  FO_ROLE_GRAD = 1,   /**< gradients, in the gradient dtype */
  FO_ROLE_MASTER = 2, /**< fp32 master weights (16-bit params only) */
  FO_ROLE_EXP_AVG = 3, /**< first moment / momentum buffer (fp32) */
  FO_ROLE_EXP_AVG_SQ = 4, /**< second moment (fp32; Adam, AdamW) */
  FO_ROLE_MAX_EXP_AVG_SQ = 5, /**< running max of the second moment
                               *   (AMSGrad) */
  FO_ROLE_COUNT /**< number of roles; not a role */
} fo_role;

/* ------------------------------------------------------- hyper-parameters */

/** The hyper-parameters of one parameter group.  Fill with
 *  fo_hparams_default(), which sets PyTorch's defaults for the algorithm;
 *  fields an algorithm does not use are ignored but must still be finite
 *  and non-negative (garbage there is a sign of an uninitialised struct).
 *
 *  | field        | SGD | Adam | AdamW | Lion | range               |
 *  |--------------|-----|------|-------|------|---------------------|
 *  | lr           |  x  |  x   |   x   |  x   | >= 0, finite        |
 *  | weight_decay |  x  |  x   |   x   |  x   | >= 0, finite        |
 *  | momentum     |  x  |      |       |      | >= 0, finite        |
 *  | dampening    |  x  |      |       |      | [0, 1]              |
 *  | nesterov     |  x  |      |       |      | 0 or 1              |
 *  | beta1        |     |  x   |   x   |  x   | [0, 1)              |
 *  | beta2        |     |  x   |   x   |  x   | [0, 1)              |
 *  | eps          |     |  x   |   x   |      | > 0, finite         |
 *  | amsgrad      |     |  x   |   x   |      | 0 or 1              |
 *  | maximize     |  x  |  x   |   x   |  x   | 0 or 1              |
 *
 *  momentum is >= 0 and finite (PyTorch allows momentum >= 1; so do we).
 *  Nesterov needs momentum > 0 and dampening == 0, as in PyTorch. */
typedef struct fo_hparams {
  float lr;           /**< learning rate */
  float weight_decay; /**< L2 (SGD, Adam) or decoupled (AdamW, Lion) */
  float momentum;     /**< SGD momentum factor; 0 disables the buffer */
  float dampening;    /**< SGD dampening of the gradient in the buffer */
  int nesterov;       /**< SGD: use g + momentum*buf */
  float beta1;        /**< Adam/AdamW: first-moment decay; Lion: interpolation
                       *   factor of the update direction */
  float beta2;        /**< Adam/AdamW: second-moment decay; Lion: momentum
                       *   decay */
  float eps;          /**< Adam/AdamW: added to sqrt(v_hat) */
  int amsgrad;        /**< Adam/AdamW: use the running max of v */
  int maximize;       /**< ascend instead of descend (negate the gradient) */
} fo_hparams;

/** Fill *out with PyTorch's defaults for alg (torch 2.x):
 *  SGD lr 1e-3, momentum 0, dampening 0, wd 0, nesterov 0;
 *  Adam lr 1e-3, betas (0.9, 0.999), eps 1e-8, wd 0;
 *  AdamW the same with wd 1e-2;
 *  Lion lr 1e-4, betas (0.9, 0.99), wd 0. */
FO_API fo_status fo_hparams_default(fo_algorithm alg, fo_hparams *out);

/* ---------------------------------------------- schedules, scaler, clip */

/** Learning-rate schedules, evaluated on the device from the step counter.
 *  The learning rate of step k+1 (after k applied steps) is the group's lr
 *  times factor(k); closed forms in docs/numerics.md.  With warmup_steps W
 *  > 0, every kind starts with a linear warmup, factor(k) = (k+1)/W for
 *  k < W, and the kind's own curve then runs on j = k - W. */
typedef enum fo_schedule_kind {
  FO_SCHED_CONSTANT = 0,    /**< factor 1 (after the warmup, if any) */
  FO_SCHED_COSINE = 1,      /**< cosine from 1 down to min_ratio at total_steps
                             *   (warmup included), min_ratio after */
  FO_SCHED_STEP = 2,        /**< gamma^floor(j / step_size) */
  FO_SCHED_EXPONENTIAL = 3, /**< gamma^j */
  FO_SCHED_COSINE_RESTARTS = 4, /**< SGDR: cosine from 1 to min_ratio over
                                 *   period steps, restarting; each period
                                 *   is period_mult times the last */
  FO_SCHED_CYCLIC = 5,      /**< triangular: min_ratio up to 1 over step_size
                             *   steps and back down over step_size */
  FO_SCHED_COUNT            /**< number of kinds; not a kind */
} fo_schedule_kind;

/** A schedule; fields a kind does not use are ignored, but every count and
 *  gamma must be >= 0 and min_ratio in [0, 1] whatever the kind. */
typedef struct fo_schedule {
  fo_schedule_kind kind; /**< default FO_SCHED_CONSTANT */
  int64_t warmup_steps;  /**< linear warmup length; 0 (default): none */
  int64_t total_steps;   /**< COSINE: > warmup_steps */
  int64_t step_size;     /**< STEP: decay interval; CYCLIC: half period; > 0 */
  int64_t period;        /**< COSINE_RESTARTS: first period, > 0 */
  int64_t period_mult;   /**< COSINE_RESTARTS: >= 1 (default 1) */
  float gamma;           /**< STEP, EXPONENTIAL: in (0, 1] (default 0.1) */
  float min_ratio;       /**< COSINE, COSINE_RESTARTS, CYCLIC: floor, a
                          *   fraction of lr in [0, 1] (default 0) */
} fo_schedule;

/** Dynamic loss scaling (PyTorch GradScaler semantics).  The caller scales
 *  its loss by the current scale (fo_optimizer_loss_scale_ptr gives a
 *  pointer the backward pass can read on the device); the step divides the
 *  gradients by it inside the update.  A step that sees an inf or NaN
 *  gradient changes nothing and the scale backs off. */
typedef struct fo_loss_scaler_options {
  int enabled;          /**< default 0 */
  float init_scale;     /**< default 65536 */
  float growth_factor;  /**< > 1; default 2 */
  float backoff_factor; /**< in (0, 1); default 0.5 */
  int growth_interval;  /**< clean steps before growth, >= 1; default 2000 */
  float max_scale;      /**< 0 (default): no maximum but never inf */
  int hysteresis;       /**< back off after this many consecutive
                         *   overflows, >= 1; default 1 (PyTorch) */
} fo_loss_scaler_options;

/* --------------------------------------------------------------- options */

/** The optimizer's options.  Fill with fo_options_default() first, then
 *  change what you need; the defaults are documented per field. */
typedef struct fo_options {
  /** Must be sizeof(fo_options); set by fo_options_default().  Lets a later
   *  library version accept structs compiled against this header. */
  size_t struct_size;
  fo_algorithm algorithm; /**< default FO_ALG_ADAMW */
  fo_executor executor;   /**< default FO_EXEC_CPU */
  /** CUDA device ordinal for FO_EXEC_CUDA; default 0.  The caller's
   *  current device is left as it was by every call. */
  int device;
  fo_storage storage;   /**< default FO_STORAGE_EXTERNAL */
  fo_dtype param_dtype; /**< dtype of every parameter; default FO_DTYPE_F32 */
  fo_dtype grad_dtype;  /**< dtype of every gradient; default FO_DTYPE_F32 */
  /** Keep fp32 master weights for 16-bit parameters (default 1).  The step
   *  updates the master and writes its rounding back to the parameter.
   *  Ignored for fp32 parameters. */
  int master_weights;
  /** Round bf16 parameters kept without master weights stochastically
   *  (default 0): unbiased, so small updates are not lost.  Reproducible:
   *  the random bits are a hash of (seed, step, tensor, element). */
  int stochastic_rounding;
  uint64_t seed; /**< seed of stochastic rounding; default 0 */
  /** CPU executor: number of threads; 0 (default) uses every core. */
  int num_threads;
  /** Clip the global L2 norm of the (unscaled) gradients to this value:
   *  gradients are multiplied by min(1, max_grad_norm / (norm + 1e-6)) inside
   *  the update.  0 (default): no clipping.  Needs one extra read of the
   *  gradients per step (shared with the loss scaler's overflow check). */
  float max_grad_norm;
  /** Write the unscaled (and clipped) gradients back into the gradient
   *  buffers after a step that was not skipped (default 0: gradients are
   *  never written, which saves a pass over memory). */
  int write_unscaled_grads;
  fo_loss_scaler_options loss_scaler; /**< default: disabled */
  fo_schedule schedule;               /**< default: constant */
  /** Reserved for communicators and checkpoints of later versions; must be
   *  zero. */
  uint64_t reserved[4];
} fo_options;

/** Fill *out with the defaults listed on each field of fo_options. */
FO_API fo_status fo_options_default(fo_options *out);

/* --------------------------------------------------------------- tensors */

/** One parameter tensor and its gradient. */
typedef struct fo_tensor_desc {
  /** Number of elements; 0 is allowed (the tensor is registered and never
   *  touched).  At most 2^62. */
  int64_t numel;
  /** Index of its parameter group in the hparams array. */
  int group;
  /** FO_STORAGE_EXTERNAL: the caller's parameter buffer (numel elements of
   *  param_dtype), device memory for FO_EXEC_CUDA, host memory for
   *  FO_EXEC_CPU.  Read once at create to initialise master weights.
   *  FO_STORAGE_ARENA: must be NULL. */
  void *param;
  /** The gradient buffer, same rules as param.  Must not overlap any
   *  parameter or gradient buffer. */
  void *grad;
  /** Optional name (copied); may be NULL. */
  const char *name;
} fo_tensor_desc;

/* ------------------------------------------------------------- optimizer */

/** An optimizer: registered tensors, their state, the launch plan. */
typedef struct fo_optimizer fo_optimizer;

/** A CUDA stream; the same type as cudaStream_t, so a cudaStream_t passes
 *  without a cast and this header needs no CUDA header. */
typedef struct CUstream_st *fo_stream_t;

/** The largest number of parameter groups one optimizer takes. */
#define FO_MAX_GROUPS 64

/** Create an optimizer over num_tensors tensors in num_groups groups.
 *
 *  Allocates the optimizer state (zeroed moments; master weights copied from
 *  the parameters for 16-bit parameters with master weights) in the
 *  executor's memory and builds the launch plan.  With FO_STORAGE_ARENA it
 *  also allocates the parameter and gradient buffers, zero-filled: write the
 *  initial parameters through fo_optimizer_param_ptr() and then call
 *  fo_optimizer_sync_master().
 *
 *  On FO_EXEC_CUDA, create synchronizes with the device once (allocation
 *  and the upload of the plan); steps never do.
 *
 *  Fails with FO_ERR_NULL_POINTER, FO_ERR_INVALID_ARGUMENT (bad option,
 *  hyper-parameter, group index, size), FO_ERR_UNSUPPORTED, FO_ERR_OVERLAP
 *  (parameter and gradient buffers overlap), FO_ERR_BAD_POINTER,
 *  FO_ERR_NO_DEVICE, FO_ERR_OUT_OF_MEMORY.  *out is set only on success. */
FO_API fo_status fo_optimizer_create(fo_optimizer **out,
                                     const fo_options *options,
                                     const fo_hparams *hparams, int num_groups,
                                     const fo_tensor_desc *tensors,
                                     int64_t num_tensors);

/** Free the optimizer and everything it allocated (the arena included).
 *  NULL is a no-op.  On FO_EXEC_CUDA it waits for the optimizer's pending
 *  work before freeing. */
FO_API fo_status fo_optimizer_destroy(fo_optimizer *opt);

/** Apply one step to every registered tensor with the current gradients.
 *  With clipping or loss scaling on, a pre-pass first reads every gradient
 *  once for the global norm and the non-finite check; a non-finite gradient
 *  skips the step (nothing changes but the scaler).  Otherwise increments
 *  the step count.  stream must be NULL for FO_EXEC_CPU.  On FO_EXEC_CUDA
 *  the call only enqueues work (no host synchronization), so a stream
 *  capture of it is a replayable CUDA graph. */
FO_API fo_status fo_optimizer_step(fo_optimizer *opt, fo_stream_t stream);

/** Set every registered gradient to zero. */
FO_API fo_status fo_optimizer_zero_grad(fo_optimizer *opt, fo_stream_t stream);

/** Copy the current 16-bit parameters into the fp32 master weights (after
 *  the caller has written new parameter values).  A no-op without master
 *  weights. */
FO_API fo_status fo_optimizer_sync_master(fo_optimizer *opt,
                                          fo_stream_t stream);

/** The number of steps applied so far.  With loss scaling or clipping on
 *  FO_EXEC_CUDA the count lives on the device (a step may be skipped) and
 *  this call synchronizes, like fo_optimizer_get_info(). */
FO_API fo_status fo_optimizer_get_step(const fo_optimizer *opt,
                                       int64_t *out);

/** What the last step did, read back from the executor's memory. */
typedef struct fo_step_info {
  int64_t step;          /**< steps applied so far */
  int64_t skipped_steps; /**< steps skipped for a non-finite gradient */
  int last_step_skipped; /**< the last step call was skipped */
  float loss_scale;      /**< the scale for the next backward (1 without
                          *   loss scaling) */
  float grad_norm;       /**< global L2 norm of the unscaled gradients seen
                          *   by the last step (inf or NaN if non-finite; 0
                          *   when neither clipping nor loss scaling is on) */
  float grad_coef;       /**< what the last step multiplied gradients by */
  float lr_factor;       /**< the schedule's factor at the last applied step */
  int growth_tracker;    /**< clean steps since the scale last changed */
} fo_step_info;

/** Read the step state.  On FO_EXEC_CUDA this waits until the device is
 *  idle (it synchronizes): call it for logging, not inside the step loop. */
FO_API fo_status fo_optimizer_get_info(const fo_optimizer *opt, fo_step_info *out);

/** A pointer to the current loss scale (one float in the executor's memory:
 *  device memory on FO_EXEC_CUDA), for a backward pass that scales the loss
 *  gradient without a host synchronization.  The step updates it.  Fails
 *  with FO_ERR_INVALID_STATE when loss scaling is off. */
FO_API fo_status fo_optimizer_loss_scale_ptr(const fo_optimizer *opt, float **out);

/** Set the step count (for resuming); bias corrections, the schedule and
 *  SGD's first-step rule use it.  Must be >= 0.  On FO_EXEC_CUDA it is
 *  written to the device in stream order of the legacy default stream
 *  (it synchronizes). */
FO_API fo_status fo_optimizer_set_step(fo_optimizer *opt, int64_t step);

/** Set the base learning rate of one group, or of every group when group is
 *  -1; the next step uses it (times the schedule's factor).  Must be >= 0
 *  and finite.  A step captured in a CUDA graph keeps the hyper-parameters
 *  it was captured with; the schedule still advances on the device. */
FO_API fo_status fo_optimizer_set_lr(fo_optimizer *opt, int group, float lr);

/** Read the learning rate of one group. */
FO_API fo_status fo_optimizer_get_lr(const fo_optimizer *opt, int group,
                                     float *out);

/** Replace every hyper-parameter of one group (validated as at create).
 *  Switching amsgrad or momentum on needs state the optimizer was not
 *  created with: that fails with FO_ERR_INVALID_STATE. */
FO_API fo_status fo_optimizer_set_hparams(fo_optimizer *opt, int group,
                                          const fo_hparams *hparams);

/** Read the hyper-parameters of one group. */
FO_API fo_status fo_optimizer_get_hparams(const fo_optimizer *opt, int group,
                                          fo_hparams *out);

/** Read the options the optimizer was created with. */
FO_API fo_status fo_optimizer_get_options(const fo_optimizer *opt,
                                          fo_options *out);

/** The number of registered tensors. */
FO_API fo_status fo_optimizer_num_tensors(const fo_optimizer *opt,
                                          int64_t *out);

/** FO_STORAGE_ARENA: the parameter buffer of tensor index (in the
 *  executor's memory).  FO_STORAGE_EXTERNAL: the caller's own pointer. */
FO_API fo_status fo_optimizer_param_ptr(const fo_optimizer *opt,
                                        int64_t index, void **out);

/** The gradient buffer of tensor index; as fo_optimizer_param_ptr. */
FO_API fo_status fo_optimizer_grad_ptr(const fo_optimizer *opt, int64_t index,
                                       void **out);

/** A state buffer of tensor index: FO_ROLE_MASTER, FO_ROLE_EXP_AVG,
 *  FO_ROLE_EXP_AVG_SQ or FO_ROLE_MAX_EXP_AVG_SQ (fp32, numel elements, in
 *  the executor's memory), for inspection and checkpoints.  Fails with
 *  FO_ERR_INVALID_STATE when the optimizer keeps no such state. */
FO_API fo_status fo_optimizer_state_ptr(const fo_optimizer *opt,
                                        int64_t index, fo_role role,
                                        float **out);

/** FO_STORAGE_ARENA: the whole contiguous buffer of a role and its size in
 *  bytes (for one collective over all gradients, say).  Fails with
 *  FO_ERR_INVALID_STATE for external storage or a role the optimizer does
 *  not keep. */
FO_API fo_status fo_optimizer_arena(const fo_optimizer *opt, fo_role role,
                                    void **base, size_t *bytes);

/* -------------------------------------------------------------- utilities */

/** Size in bytes of one element of dtype, 0 for an unknown dtype. */
FO_API size_t fo_dtype_size(fo_dtype dtype);

/** Convert n floats to dtype (round to nearest even) and back: helpers for
 *  callers that fill 16-bit buffers on the host.  src and dst must not
 *  overlap unless they are equal and dtype is FO_DTYPE_F32. */
FO_API fo_status fo_convert_from_f32(fo_dtype dtype, const float *src,
                                     void *dst, int64_t n);
FO_API fo_status fo_convert_to_f32(fo_dtype dtype, const void *src,
                                   float *dst, int64_t n);

/** Whether a usable CUDA device exists: returns FO_SUCCESS and sets *count
 *  to the number of devices, or FO_ERR_NO_DEVICE with the reason (no
 *  driver, driver too old, no device) in fo_last_error(). */
FO_API fo_status fo_cuda_device_count(int *count);

#ifdef __cplusplus
}
#endif

#endif /* FUSEDOPT_H */
