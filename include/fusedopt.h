/*
 * fusedopt.h -- fused optimizer steps for GPU training.
 *
 * This header is the library's reference manual: every type, constant and
 * function is documented where it is declared, and every function that can
 * fail lists the statuses it returns and when.  The sections follow the
 * order a user meets them:
 *
 *    1. version                        8. threads and processes
 *    2. status and errors              9. reading and changing an optimizer
 *    3. enums                         10. data parallelism (communicators)
 *    4. hyper-parameters and options  11. checkpoints
 *    5. tensors                       12. utilities
 *    6. create and destroy
 *    7. the step, and what a failed step leaves (faults)
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
 *   - Every function that can fail returns an fo_status.  The few that
 *     cannot return their value directly: fo_version_number,
 *     fo_version_string, fo_status_string, fo_algorithm_string,
 *     fo_last_error and fo_dtype_size.
 *   - On failure nothing the caller owns has changed (out-parameters
 *     included), and fo_last_error() holds a message with the detail, kept
 *     per thread until the next failing call on that thread.  The
 *     exceptions are work that fails once it has started -- a step, a
 *     zero_grad, a load's copies, a gradient reduction -- and each says
 *     what it leaves (see "Faults" next to fo_optimizer_step()).
 *   - Every function that launches device work takes an fo_stream_t (a
 *     cudaStream_t; NULL is the legacy default stream, and the handles
 *     cudaStreamLegacy and cudaStreamPerThread name the implicit streams of
 *     the optimizer's device, whichever device the calling thread has
 *     current).  On the CPU executor the stream must be NULL and the work
 *     is done before the call returns.
 *   - A step never waits for the host: no call that launches work
 *     synchronizes, unless its documentation says so.  A call that says
 *     it synchronizes waits for the whole device (and destroy frees device
 *     memory, which does too): CUDA refuses that while any stream of the
 *     device is being captured into a graph, by any thread and in any
 *     capture mode, relaxed included, and invalidates that capture; the
 *     call then fails with FO_ERR_CUDA.  Make such calls outside captures.
 *   - Sizes and offsets are 64-bit.
 *   - Destroying NULL (fo_optimizer_destroy, fo_comm_destroy) is a no-op.
 *   - Structs the caller fills (fo_options, fo_hparams, fo_dp_options,
 *     fo_comm_ops) start with struct_size, which must be the sizeof of the
 *     struct in this header: a program compiled against another version's
 *     header is refused (FO_ERR_INVALID_ARGUMENT) instead of misread.
 *     Their reserved words (fo_comm_ops has none) must be zero: they hold
 *     the place of fields a later version adds, so that it can add them
 *     without changing the struct's size or layout (no ABI break), a zero
 *     meaning "as before".  Fill such a struct with its _default()
 *     function (or copy one that was) and then set fields -- fo_comm_ops,
 *     which has none, is zeroed and given its struct_size -- never build
 *     one from nothing.
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

/* ============================================================ 1. version */

#define FO_VERSION_MAJOR 0
#define FO_VERSION_MINOR 4
#define FO_VERSION_PATCH 0
/** MAJOR*10000 + MINOR*100 + PATCH: compare with fo_version_number(). */
#define FO_VERSION_NUMBER (FO_VERSION_MAJOR * 10000 + FO_VERSION_MINOR * 100 + FO_VERSION_PATCH)

/** The version the library was built as, FO_VERSION_NUMBER's form.  While
 *  the major version is 0, a new minor version may change the ABI (the
 *  shared library's soname is libfusedopt.so.MAJOR.MINOR). */
FO_API unsigned fo_version_number(void);
/** The version as "MAJOR.MINOR.PATCH"; a static string. */
FO_API const char *fo_version_string(void);

/* ================================================= 2. status and errors */

/** What a function that can fail returns. */
typedef enum fo_status {
  FO_SUCCESS = 0,
  /** A required pointer argument was NULL. */
  FO_ERR_NULL_POINTER = 1,
  /** An argument is out of its range: a size, an index, a hyper-parameter
   *  that is NaN, negative or otherwise meaningless, an unknown enum value,
   *  a struct_size of another header or a non-zero reserved word. */
  FO_ERR_INVALID_ARGUMENT = 2,
  /** The arguments are each valid but not together (a combination the
   *  library does not support, for example stochastic rounding on fp16). */
  FO_ERR_UNSUPPORTED = 3,
  /** Two buffers that must be distinct overlap. */
  FO_ERR_OVERLAP = 4,
  /** The call does not fit the object's state or mode (for example asking
   *  for arena pointers of an optimizer over external tensors, or a step
   *  of a faulted optimizer), or breaks the rule of one thread at a time
   *  or the rule on fork() (section 8). */
  FO_ERR_INVALID_STATE = 5,
  /** Host or device memory could not be allocated. */
  FO_ERR_OUT_OF_MEMORY = 6,
  /** The CUDA executor was asked for and no usable device or driver is
   *  present, or the library was built without CUDA; the message says
   *  which. */
  FO_ERR_NO_DEVICE = 7,
  /** A pointer is in the wrong memory: host memory where device memory is
   *  needed or the reverse, or memory of another device; or it is not
   *  aligned to the size of its elements. */
  FO_ERR_BAD_POINTER = 8,
  /** A CUDA call failed; the message holds CUDA's error name and text. */
  FO_ERR_CUDA = 9,
  /** A communicator (NCCL or MPI) call failed; the message holds the
   *  back-end's own. */
  FO_ERR_COMM = 10,
  /** Reading or writing a file failed (the OS's reason is in the
   *  message): a missing file, a full disk, a failed fsync or rename. */
  FO_ERR_IO = 11,
  /** A checkpoint file is malformed, corrupt, of a newer format, or does
   *  not fit the optimizer; the message says which and where. */
  FO_ERR_CHECKPOINT = 12,
  /** The feature is declared but not built in this version. */
  FO_ERR_NOT_IMPLEMENTED = 13,
  /** An internal invariant failed: a bug in the library; please report.
   *  Any function may return it; the lists below do not repeat it. */
  FO_ERR_INTERNAL = 14,
  FO_STATUS_COUNT /**< number of status values; not a status */
} fo_status;

/** A short static description of a status ("invalid argument"); never NULL,
 *  "unknown status" for values outside the enum.  Cannot fail. */
FO_API const char *fo_status_string(fo_status status);

/** The detail of the last failing call on this thread ("fo_optimizer_create:
 *  hparams[2]: beta1 = 1.5 and beta2 = 0.999 must be in [0, 1)"), or "" if
 *  no call failed.  The
 *  string is thread-local and valid until the next failing call on this
 *  thread; successful calls leave it as it is.  Cannot fail; never NULL. */
FO_API const char *fo_last_error(void);

/* ============================================================== 3. enums */

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
  /** AdaGrad (Duchi et al. 2011): per-coordinate sums of squared
   *  gradients; optional learning-rate decay and initial accumulator. */
  FO_ALG_ADAGRAD = 4,
  /** RMSprop (Hinton 2012): a moving average of squared gradients;
   *  optional momentum and centering. */
  FO_ALG_RMSPROP = 5,
  /** NAdam (Dozat 2016): Adam with Nesterov momentum and the momentum
   *  decay schedule of torch.optim.NAdam; L2 or decoupled weight decay. */
  FO_ALG_NADAM = 6,
  /** LAMB (You et al. 2020): Adam's update scaled per tensor by the trust
   *  ratio ||w|| / ||update||. */
  FO_ALG_LAMB = 7,
  /** LARS (You et al. 2017): SGD momentum with a per-tensor local learning
   *  rate trust_coef * ||w|| / (||g|| + wd * ||w||). */
  FO_ALG_LARS = 8,
  FO_ALG_COUNT /**< number of algorithms; not an algorithm */
} fo_algorithm;

/** The algorithm's lower-case name, the one checkpoints record
 *  ("fusedopt.algorithm"): "sgd", "adam", "adamw", "lion", "adagrad",
 *  "rmsprop", "nadam", "lamb", "lars".  A static
 *  string, never NULL: "unknown" for a value outside the enum (a name no
 *  algorithm has, so that it never passes for one).  Cannot fail. */
FO_API const char *fo_algorithm_string(fo_algorithm algorithm);

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
  FO_ROLE_PARAM = 0,          /**< parameters, in the parameter dtype */
  FO_ROLE_GRAD = 1,           /**< gradients, in the gradient dtype */
  FO_ROLE_MASTER = 2,         /**< fp32 master weights (16-bit params only) */
  FO_ROLE_EXP_AVG = 3,        /**< first moment / momentum buffer (fp32) */
  FO_ROLE_EXP_AVG_SQ = 4,     /**< second moment (fp32): Adam, AdamW, NAdam,
                               *   LAMB; AdaGrad's sum; RMSprop's
                               *   square_avg */
  FO_ROLE_MAX_EXP_AVG_SQ = 5, /**< running max of the second moment
                               *   (AMSGrad); RMSprop's grad_avg
                               *   (centered) */
  FO_ROLE_COUNT               /**< number of roles; not a role */
} fo_role;

/* ======================================= 4. hyper-parameters and options */

/** The hyper-parameters of one parameter group.  Fill with
 *  fo_hparams_default(), which sets struct_size and PyTorch's defaults for
 *  the algorithm, then change what you need; fields an algorithm does not
 *  use are ignored but must still be finite and non-negative (garbage
 *  there is a sign of an uninitialised struct).
 *
 *  Which algorithm reads which field (Ada = AdaGrad, RMS = RMSprop,
 *  NAd = NAdam; the update rules are in docs/numerics.md):
 *
 *  | field            |SGD|Adam|AdamW|Lion|Ada|RMS|NAd|LAMB|LARS| range    |
 *  |------------------|---|----|-----|----|---|---|---|----|----|----------|
 *  | lr               | x | x  |  x  | x  | x | x | x | x  | x  | >= 0     |
 *  | weight_decay     | x | x  |  x  | x  | x | x | x | x  | x  | >= 0     |
 *  | momentum         | x |    |     |    |   | x |   |    | x  | >= 0     |
 *  | dampening        | x |    |     |    |   |   |   |    | x  | [0, 1]   |
 *  | nesterov         | x |    |     |    |   |   |   |    | x  | 0 or 1   |
 *  | beta1            |   | x  |  x  | x  |   |   | x | x  |    | [0, 1)   |
 *  | beta2            |   | x  |  x  | x  |   |   | x | x  |    | [0, 1)   |
 *  | eps              |   | x  |  x  |    | x | x | x | x  |    | > 0      |
 *  | amsgrad          |   | x  |  x  |    |   |   |   |    |    | 0 or 1   |
 *  | maximize         | x | x  |  x  | x  | x | x | x | x  | x  | 0 or 1   |
 *  | lr_decay         |   |    |     |    | x |   |   |    |    | >= 0     |
 *  | initial_accumulator_value | | | |    | x |   |   |    |    | >= 0     |
 *  | alpha            |   |    |     |    |   | x |   |    |    | [0, 1)   |
 *  | centered         |   |    |     |    |   | x |   |    |    | 0 or 1   |
 *  | momentum_decay   |   |    |     |    |   |   | x |    |    | >= 0     |
 *  | decoupled_weight_decay | | |    |    |   |   | x |    |    | 0 or 1   |
 *  | trust_coef       |   |    |     |    |   |   |   |    | x  | > 0      |
 *  | layer_adaptation |   |    |     |    |   |   |   | x  | x  | 0 or 1   |
 *
 *  Every float must be finite.  momentum may be >= 1 (PyTorch allows it;
 *  so do we).  Nesterov needs momentum > 0 and dampening == 0, as in
 *  PyTorch.  Weight decay is L2 (added to the gradient) for SGD, Adam,
 *  AdaGrad, RMSprop, NAdam (unless decoupled_weight_decay) and LARS;
 *  decoupled (p *= 1 - lr*wd) for AdamW, Lion and NAdam with
 *  decoupled_weight_decay; LAMB adds wd*p to the update before the trust
 *  ratio, as the paper does.
 *
 *  Every function that takes hyper-parameters (fo_optimizer_create,
 *  fo_optimizer_set_hparams) refuses with FO_ERR_INVALID_ARGUMENT a struct
 *  whose struct_size is not sizeof(fo_hparams) or whose reserved words are
 *  not all zero, the message naming the group and saying to fill it with
 *  fo_hparams_default().  So a struct built from nothing (an initializer
 *  that leaves struct_size zero, or fields set one by one on stack
 *  garbage) is refused: start from fo_hparams_default(), or from a copy of
 *  one that was. */
typedef struct fo_hparams {
  /** Must be sizeof(fo_hparams); set by fo_hparams_default(). */
  size_t struct_size;
  float lr;           /**< learning rate */
  float weight_decay; /**< L2 or decoupled, by algorithm (above) */
  float momentum;     /**< SGD, RMSprop, LARS momentum factor; 0 disables
                       *   the buffer */
  float dampening;    /**< SGD, LARS: dampening of the gradient in the
                       *   buffer */
  int nesterov;       /**< SGD, LARS: use g + momentum*buf */
  float beta1;        /**< Adam/AdamW/NAdam/LAMB: first-moment decay; Lion:
                       *   interpolation factor of the update direction */
  float beta2;        /**< Adam/AdamW/NAdam/LAMB: second-moment decay; Lion:
                       *   momentum decay */
  float eps;          /**< added to the denominator's square root */
  int amsgrad;        /**< Adam/AdamW: use the running max of v */
  int maximize;       /**< ascend instead of descend (negate the gradient) */
  /* Since 0.4.0, in words that were reserved (the struct's size and the
   * offsets above are unchanged). */
  float lr_decay;                  /**< AdaGrad: lr / (1 + (t-1)*lr_decay) */
  float initial_accumulator_value; /**< AdaGrad: the sum's starting value,
                                    *   filled at create (as PyTorch does at
                                    *   construction; a later change fills
                                    *   nothing) */
  float alpha;                     /**< RMSprop: smoothing constant */
  int centered;                    /**< RMSprop: divide by the gradient's
                                    *   estimated standard deviation */
  float momentum_decay;            /**< NAdam: psi of mu_t = beta1 *
                                    *   (1 - 0.5 * 0.96^(t*psi)) */
  int decoupled_weight_decay;      /**< NAdam: decay as AdamW does */
  float trust_coef;                /**< LARS: eta of the local rate */
  int layer_adaptation;            /**< LAMB, LARS: apply the per-tensor
                                    *   trust ratio (1, the default); 0
                                    *   excludes the group (biases and
                                    *   norms, usually) */
  /** Must be zero (fo_hparams_default() zeroes them): room for the
   *  hyper-parameters of later algorithms without an ABI break. */
  uint64_t reserved[4];
} fo_hparams;

/** Fill *out with the defaults for alg, struct_size with sizeof(fo_hparams)
 *  and every reserved word with zero.  Where PyTorch has the algorithm these
 *  are torch.optim's defaults (torch 2.x):
 *  SGD lr 1e-3, momentum 0, dampening 0, wd 0, nesterov 0;
 *  Adam lr 1e-3, betas (0.9, 0.999), eps 1e-8, wd 0;
 *  AdamW the same with wd 1e-2;
 *  Lion lr 1e-4, betas (0.9, 0.99), wd 0;
 *  AdaGrad lr 1e-2, lr_decay 0, wd 0, initial_accumulator_value 0, eps 1e-10;
 *  RMSprop lr 1e-2, alpha 0.99, eps 1e-8, wd 0, momentum 0, centered 0;
 *  NAdam lr 2e-3, betas (0.9, 0.999), eps 1e-8, wd 0, momentum_decay 4e-3,
 *  decoupled_weight_decay 0;
 *  LAMB lr 1e-3, betas (0.9, 0.999), eps 1e-6, wd 1e-2, layer_adaptation 1;
 *  LARS lr 1, momentum 0.9, dampening 0, wd 0, trust_coef 1e-3,
 *  layer_adaptation 1 (the trust ratio already scales each tensor's step to
 *  about trust_coef * ||w||, so lr is a multiplier of that; a group with
 *  layer_adaptation 0 is plain SGD with momentum at lr, so give it an SGD
 *  rate of its own: lr 1 there steps by the whole gradient).
 *  Fields an algorithm does not read keep these values: betas (0.9, 0.999),
 *  eps 1e-8, alpha 0.99, momentum_decay 4e-3, trust_coef 1e-3,
 *  layer_adaptation 1, everything else 0.
 *  Statuses: FO_ERR_NULL_POINTER (out is NULL), FO_ERR_INVALID_ARGUMENT
 *  (alg is not an fo_algorithm; *out is left as it was). */
FO_API fo_status fo_hparams_default(fo_algorithm alg, fo_hparams *out);

/** Learning-rate schedules, evaluated on the device from the step counter.
 *  The learning rate of step k+1 (after k applied steps) is the group's lr
 *  times factor(k); closed forms in docs/numerics.md.  With warmup_steps W
 *  > 0, every kind starts with a linear warmup, factor(k) = (k+1)/W for
 *  k < W, and the kind's own curve then runs on j = k - W. */
typedef enum fo_schedule_kind {
  FO_SCHED_CONSTANT = 0,        /**< factor 1 (after the warmup, if any) */
  FO_SCHED_COSINE = 1,          /**< cosine from 1 down to min_ratio at total_steps
                                 *   (warmup included), min_ratio after */
  FO_SCHED_STEP = 2,            /**< gamma^floor(j / step_size) */
  FO_SCHED_EXPONENTIAL = 3,     /**< gamma^j */
  FO_SCHED_COSINE_RESTARTS = 4, /**< SGDR: cosine from 1 to min_ratio over
                                 *   period steps, restarting; each period
                                 *   is period_mult times the last */
  FO_SCHED_CYCLIC = 5,          /**< triangular: min_ratio up to 1 over step_size
                                 *   steps and back down over step_size */
  FO_SCHED_COUNT                /**< number of kinds; not a kind */
} fo_schedule_kind;

/** A schedule (a field of fo_options); fields a kind does not use are
 *  ignored, but every count and gamma must be >= 0 and min_ratio in [0, 1]
 *  whatever the kind. */
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

/** The smallest loss scale: the smallest normal float, FLT_MIN = 2^-126.
 *  Backing off never takes the scale below it (a run that keeps
 *  overflowing stays there, every step skipped, instead of reaching a
 *  subnormal or zero scale whose 1/scale is inf); init_scale below it is
 *  refused at create, and a checkpoint holding a scale below it at load. */
#define FO_LOSS_SCALE_MIN 1.17549435e-38f

/** Dynamic loss scaling (PyTorch GradScaler semantics; a field of
 *  fo_options).  The caller scales its loss by the current scale
 *  (fo_optimizer_loss_scale_ptr gives a pointer the backward pass can read
 *  on the device); the step divides the gradients by it inside the update.
 *  A step that sees an inf or NaN gradient changes nothing and the scale
 *  backs off, to no less than FO_LOSS_SCALE_MIN.  So does a step whose
 *  combined gradient coefficient (1/scale, clipping and the division by
 *  the ranks, fo_step_info's grad_coef) is not finite, or whose scale is
 *  below FO_LOSS_SCALE_MIN or NaN (written through
 *  fo_optimizer_loss_scale_ptr): applying it would write inf or NaN into
 *  every parameter. */
typedef struct fo_loss_scaler_options {
  int enabled;          /**< default 0 */
  float init_scale;     /**< default 65536; finite, >= FO_LOSS_SCALE_MIN */
  float growth_factor;  /**< > 1; default 2 */
  float backoff_factor; /**< in (0, 1); default 0.5 */
  int growth_interval;  /**< clean steps before growth, >= 1; default 2000 */
  float max_scale;      /**< 0 (default): no maximum but never inf;
                         *   else >= init_scale */
  int hysteresis;       /**< back off after this many consecutive
                         *   overflows, >= 1; default 1 (PyTorch) */
} fo_loss_scaler_options;

/** The optimizer's options.  Fill with fo_options_default() first, then
 *  change what you need; the defaults are documented per field. */
typedef struct fo_options {
  /** Must be sizeof(fo_options); set by fo_options_default(). */
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
  /** CPU executor: number of threads, at most FO_MAX_THREADS; 0 (default)
   *  uses every core. */
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
  /** Must be zero (fo_options_default() zeroes them): room for options of
   *  later versions without an ABI break. */
  uint64_t reserved[4];
} fo_options;

/** Fill *out with the defaults listed on each field of fo_options
 *  (struct_size included, the reserved words zero).
 *  Statuses: FO_ERR_NULL_POINTER (out is NULL). */
FO_API fo_status fo_options_default(fo_options *out);

/* ============================================================ 5. tensors */

/** One parameter tensor and its gradient. */
typedef struct fo_tensor_desc {
  /** Number of elements; 0 is allowed (the tensor is registered and never
   *  touched).  At most 2^62. */
  int64_t numel;
  /** Index of its parameter group in the hparams array. */
  int group;
  /** FO_STORAGE_EXTERNAL: the caller's parameter buffer (numel elements of
   *  param_dtype, starting on a multiple of the element size), device
   *  memory for FO_EXEC_CUDA, host memory for FO_EXEC_CPU.  Buffers that
   *  start on 16 bytes are stepped with 16-byte vector accesses, others
   *  one element at a time.  Read once at create to initialise master
   *  weights.
   *  FO_STORAGE_ARENA: must be NULL. */
  void *param;
  /** The gradient buffer, same rules as param.  Must not overlap any
   *  parameter or gradient buffer. */
  void *grad;
  /** Optional name (copied); may be NULL. */
  const char *name;
} fo_tensor_desc;

/* ================================================= 6. create and destroy */

/** An optimizer: registered tensors, their state, the launch plan. */
typedef struct fo_optimizer fo_optimizer;

/** A CUDA stream; the same type as cudaStream_t, so a cudaStream_t passes
 *  without a cast and this header needs no CUDA header. */
typedef struct CUstream_st *fo_stream_t;

/** The largest number of parameter groups one optimizer takes. */
#define FO_MAX_GROUPS 64

/** The largest fo_options.num_threads: OpenMP creates as many threads as
 *  it is asked for, and a runtime asked for millions crashes or exits the
 *  process at the first step. */
#define FO_MAX_THREADS 1024

/** Create an optimizer over num_tensors tensors in num_groups groups
 *  (hparams[0 .. num_groups-1], one per group).
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
 *  Tensor names must be ones a checkpoint can hold (fo_optimizer_save()):
 *  the keys a save writes -- each name ("tensor.<i>" when it has none) and
 *  its state's "<name>.master", ".exp_avg", ... -- must be distinct (no
 *  two tensors "w", no "w" with master weights beside a tensor
 *  "w.master"), none may be "__metadata__", and names must be UTF-8.
 *
 *  Statuses (*out is set only on success):
 *    FO_ERR_NULL_POINTER     out, options or hparams is NULL; tensors is
 *                            NULL with num_tensors > 0; an external
 *                            tensor of numel > 0 has a NULL param or grad.
 *    FO_ERR_INVALID_ARGUMENT num_tensors < 0 or too large; num_groups
 *                            outside [1, FO_MAX_GROUPS]; an option out of
 *                            its range or an unknown enum value; an
 *                            fo_options or fo_hparams with the wrong
 *                            struct_size or a non-zero reserved word; a
 *                            hyper-parameter out of its range (the table
 *                            at fo_hparams); a tensor's numel or group out
 *                            of range; param or grad not NULL with arena
 *                            storage; more than 2^62 elements in all; a
 *                            name a checkpoint cannot hold; FO_EXEC_CUDA
 *                            with a device ordinal the machine lacks.
 *    FO_ERR_UNSUPPORTED      stochastic rounding without bf16 parameters
 *                            or with master weights.
 *    FO_ERR_OVERLAP          two parameter or gradient buffers overlap.
 *    FO_ERR_BAD_POINTER      a buffer in the wrong memory for the executor
 *                            (host memory for FO_EXEC_CUDA, another
 *                            device's memory, device memory for
 *                            FO_EXEC_CPU), or one not aligned to the
 *                            size of its elements.
 *    FO_ERR_NO_DEVICE        FO_EXEC_CUDA without a usable driver or
 *                            device, or in a build without CUDA
 *                            (FO_ENABLE_CUDA=OFF); the message says which.
 *    FO_ERR_OUT_OF_MEMORY    host or device memory for the state, the
 *                            arena or the plan.
 *    FO_ERR_CUDA             FO_EXEC_CUDA: a copy, upload or the final
 *                            synchronization failed. */
FO_API fo_status fo_optimizer_create(fo_optimizer **out, const fo_options *options,
                                     const fo_hparams *hparams, int num_groups,
                                     const fo_tensor_desc *tensors, int64_t num_tensors);

/** Free the optimizer and everything it allocated (the arena included),
 *  and detach it from its communicator, if any.  NULL is a no-op
 *  (FO_SUCCESS).  On FO_EXEC_CUDA it first waits for the device to finish
 *  the optimizer's pending work.
 *  Statuses: FO_ERR_CUDA (FO_EXEC_CUDA: waiting for the device failed;
 *  the optimizer is freed all the same and opt must not be used again).
 *  Not safe against a concurrent call on opt (section 8). */
FO_API fo_status fo_optimizer_destroy(fo_optimizer *opt);

/* ============================================================== 7. step */

/** The largest step count, 2^62: fo_optimizer_set_step() and
 *  fo_optimizer_load() refuse larger counts (of steps or of skipped
 *  steps), and a step that could take either past it is refused, so the
 *  64-bit counters never overflow. */
#define FO_MAX_STEP ((int64_t)1 << 62)

/** Apply one step to every registered tensor with the current gradients.
 *  With a communicator, the gradients not yet reduced are summed over the
 *  ranks first (fo_optimizer_reduce_grads()).  With clipping or loss
 *  scaling on, a pre-pass then reads every gradient once for the global
 *  norm and the non-finite check.  A step is skipped (nothing changes but
 *  the scaler, and fo_step_info.skipped_steps counts it) when a gradient is
 *  inf or NaN, or when the combined gradient coefficient is not finite;
 *  otherwise the step count is incremented.  stream must be NULL for
 *  FO_EXEC_CPU.  On FO_EXEC_CUDA the call only enqueues work (no host
 *  synchronization), so a stream capture of it is a replayable CUDA graph;
 *  a replay runs without this call, and a replay past FO_MAX_STEP is
 *  skipped on the device instead of refused.  An eager CUDA step without
 *  clipping or loss scaling (and with at most 4 groups) has no prepare
 *  launch: the host computes its per-step scalars and carries them in the
 *  step's launch, so it is one kernel launch for every algorithm but LAMB
 *  and LARS (whose norms take passes of their own), without
 *  write_unscaled_grads.  Once a step of opt has been captured, every later step computes
 *  them on the device (a small prepare kernel first), since the graph's
 *  replays advance the step count where the host cannot see them; so does
 *  every step of an optimizer created with the environment variable
 *  FUSEDOPT_HOST_SCALARS=0.  The results agree either way within the
 *  1-ulp contract of the per-step scalars (docs/numerics.md).
 *
 *  Statuses:
 *    FO_ERR_NULL_POINTER     opt is NULL.
 *    FO_ERR_INVALID_ARGUMENT a non-NULL stream on FO_EXEC_CPU; on
 *                            FO_EXEC_CUDA, not a valid stream or a stream
 *                            of another device, or the legacy default
 *                            stream (NULL, cudaStreamLegacy) while a
 *                            blocking stream of the device is being
 *                            captured (its work would depend on the
 *                            capture, which CUDA refuses mid-step).
 *    FO_ERR_INVALID_STATE    the optimizer is faulted (below); arena master
 *                            weights were never set
 *                            (fo_optimizer_sync_master()); the step count
 *                            or the skipped count has reached FO_MAX_STEP;
 *                            another thread is inside a call on opt; this
 *                            process is a fork of the one that created opt;
 *                            data parallelism: a bucket of this step was
 *                            reduced on the other side of a CUDA graph
 *                            capture's boundary from the step (see
 *                            fo_optimizer_reduce_bucket).
 *                            Each changes nothing.
 *    FO_ERR_COMM             data parallelism: the gradients are poisoned
 *                            by an earlier failed reduction, or this
 *                            step's reduction (or a sharded step's
 *                            agreement on the norm) failed; parameters and
 *                            state are untouched (see
 *                            fo_optimizer_reduce_bucket).  A sharded step
 *                            whose all-gather of the updated parameters
 *                            fails is different: the parameters are then
 *                            partly gathered, and the optimizer faulted;
 *                            so is a sharded LAMB or LARS step whose
 *                            all-gather of the per-tensor norms fails (the
 *                            moments and the count have moved by then).
 *    FO_ERR_CUDA             FO_EXEC_CUDA: asking CUDA about the stream
 *                            failed (a sticky error of earlier work, say:
 *                            nothing changed); or the step's work failed
 *                            once it had started: the optimizer is now
 *                            faulted.
 *
 *  Faults.  When work already under way fails -- a step whose kernels hit
 *  a CUDA error (FO_ERR_CUDA), a zero_grad or sync_master that fails on the
 *  device, a load whose copies to the device fail -- part of the state may
 *  have been updated and part not.  The failing call returns its error;
 *  from then on the optimizer is faulted: fo_optimizer_step, _zero_grad,
 *  _sync_master, fo_optimizer_save and fo_optimizer_save_gathered refuse
 *  with FO_ERR_INVALID_STATE and the original error in the message, so no
 *  step ever runs on (and no checkpoint ever records) a half-updated
 *  state.  Reading calls still work.  To recover, fo_optimizer_load() a
 *  checkpoint: a successful load clears the fault (so does destroying the
 *  optimizer).  After a sticky CUDA error such as an illegal address the
 *  CUDA context itself is unusable: the process must reset the device,
 *  create a new optimizer and load.  A failed gradient reduction of a
 *  communicator leaves only the gradients partly summed and is handled
 *  there (see fo_optimizer_reduce_bucket): it does not fault the state;
 *  only a sharded step's failed all-gather of the parameters does. */
FO_API fo_status fo_optimizer_step(fo_optimizer *opt, fo_stream_t stream);

/** Set every registered gradient to zero, and clear a poisoning of the
 *  gradients by a failed reduction (fo_optimizer_reduce_bucket()).
 *  Statuses: FO_ERR_NULL_POINTER (opt is NULL); FO_ERR_INVALID_ARGUMENT
 *  (a bad stream, as for fo_optimizer_step); FO_ERR_INVALID_STATE
 *  (faulted; another thread is inside a call on opt; a forked process);
 *  FO_ERR_CUDA (the device work failed: the optimizer is now faulted). */
FO_API fo_status fo_optimizer_zero_grad(fo_optimizer *opt, fo_stream_t stream);

/** Copy the current 16-bit parameters into the fp32 master weights (after
 *  the caller has written new parameter values).  A no-op without master
 *  weights.  With FO_STORAGE_ARENA and master weights it is required once
 *  after writing the initial parameters: until it (or fo_optimizer_load())
 *  has run, fo_optimizer_step() and the saves refuse with
 *  FO_ERR_INVALID_STATE, since the master weights are still zero.
 *  Statuses: as fo_optimizer_zero_grad(). */
FO_API fo_status fo_optimizer_sync_master(fo_optimizer *opt, fo_stream_t stream);

/** Whether the optimizer is faulted (see "Faults" at fo_optimizer_step):
 *  sets *status to FO_SUCCESS when it is usable, else to the status of the
 *  failure that faulted it, and copies that failure's message into message
 *  (capacity bytes, NUL-terminated, truncated if need be; message may be
 *  NULL when capacity is 0).
 *  Statuses: FO_ERR_NULL_POINTER (opt or status is NULL; message is NULL
 *  with capacity > 0); FO_ERR_INVALID_STATE (another thread is inside a
 *  call on opt). */
FO_API fo_status fo_optimizer_get_fault(const fo_optimizer *opt, fo_status *status, char *message,
                                        size_t capacity);

/* ============================================ 8. threads and processes */

/* One thread at a time.  An optimizer is used by one thread at a time; any
 * number of optimizers may be used in parallel, each by one thread at a
 * time (the library keeps no global state but the per-thread error
 * message).  A call on an optimizer made while another thread is inside a
 * call on the same optimizer fails at once with FO_ERR_INVALID_STATE
 * ("another thread is inside a call on this optimizer") and changes
 * nothing: an atomic flag detects the race, so that it costs a clear error
 * rather than lost steps or a checkpoint of a state no step produced.  It
 * is a detector, not a lock -- callers must still serialise -- and it
 * cannot make fo_optimizer_destroy safe against a concurrent call.  Calls
 * that only return what create fixed, or what fo_optimizer_set_comm fixed
 * when it sharded the state (fo_optimizer_get_options, _num_tensors,
 * _param_ptr, _grad_ptr, _state_ptr, _arena, _get_shard, _loss_scale_ptr),
 * are not checked: no step changes what they return.  Communicators
 * follow the same rule, and it
 * binds the optimizers attached to one communicator together: a step, a
 * reduction or a gathered save of one of them drives the communicator, so
 * they and it are used from one thread at a time (see fo_comm; the flag
 * above does not detect a race between two of them).
 *
 * fork().  A child process must not step an optimizer its parent created.
 * OpenMP's worker threads (and a CUDA context) do not survive fork(), and
 * the child's first parallel step would hang in the OpenMP runtime.  The
 * optimizer records the process that created it: fo_optimizer_step,
 * _zero_grad and _sync_master in another process fail with
 * FO_ERR_INVALID_STATE, as does every call of an FO_EXEC_CUDA optimizer
 * that reaches the device.  On FO_EXEC_CPU the rest works in the child,
 * fo_optimizer_save included (a checkpoint written by a forked child is an
 * ordinary one).  A child that must train creates its own optimizer and
 * loads a checkpoint. */

/* ============================== 9. reading and changing an optimizer */

/** The number of steps applied so far.  With loss scaling or clipping on
 *  FO_EXEC_CUDA the count lives on the device (a step may be skipped) and
 *  this call synchronizes, like fo_optimizer_get_info().
 *  Statuses: FO_ERR_NULL_POINTER (opt or out is NULL);
 *  FO_ERR_INVALID_STATE (another thread is inside a call on opt;
 *  FO_EXEC_CUDA in a forked process); FO_ERR_CUDA (reading the device). */
FO_API fo_status fo_optimizer_get_step(const fo_optimizer *opt, int64_t *out);

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
  float lr_factor;       /**< the schedule's factor of the last applied step:
                          *   its learning rate was each group's lr times
                          *   this.  1 before the first step (no step has
                          *   applied one, even during a warmup) and
                          *   unchanged by a skipped step, and by
                          *   fo_optimizer_set_step() (which changes the
                          *   count only: the report stays the last
                          *   step's); fo_optimizer_get_next_lr() gives
                          *   the rate the next step will use */
  int growth_tracker;    /**< clean steps since the scale last changed */
} fo_step_info;

/** Read the step state.  On FO_EXEC_CUDA this waits until the device is
 *  idle (it synchronizes): call it for logging, not inside the step loop.
 *  Statuses: as fo_optimizer_get_step(). */
FO_API fo_status fo_optimizer_get_info(const fo_optimizer *opt, fo_step_info *out);

/** A pointer to the current loss scale (one float in the executor's memory:
 *  device memory on FO_EXEC_CUDA), for a backward pass that scales the loss
 *  gradient without a host synchronization.  The step updates it.  With
 *  loss scaling off it points to a scale that stays 1, so one training
 *  loop serves both (a value written there is ignored: by the steps, by a
 *  save, which writes 1, by a load, and by fo_optimizer_get_info() and
 *  fo_optimizer_get_scaler_state(), which read 1).  Writing through it changes the
 *  scale the next step uses (hence a non-const opt); with loss scaling on,
 *  a scale a load would refuse (not finite, or below FO_LOSS_SCALE_MIN)
 *  makes fo_optimizer_save() refuse until a valid one is written.
 *  Statuses: FO_ERR_NULL_POINTER (opt or out is NULL). */
FO_API fo_status fo_optimizer_loss_scale_ptr(fo_optimizer *opt, float **out);

/** Set the step count (for resuming); bias corrections, the schedule,
 *  AdaGrad's lr_decay and SGD's first-step rule use it (AdaGrad's sums
 *  are state, not count: they started at initial_accumulator_value at
 *  create and stay as they are).  On FO_EXEC_CUDA it is written to the
 *  device in stream order of the legacy default stream (it synchronizes).
 *  NAdam: every group's mu_product is recomputed as if steps 1 .. step had
 *  run with the group's current hyper-parameters (bit for bit, rounded
 *  at each step as the steps round it, unless beta1 is so close to 1
 *  that the product neither underflows nor settles within 2^24 steps of
 *  a constant mu_t: the steps past those are then one power, rounded
 *  once, from which the steps' own roundings drift by up to half an ulp
 *  each, about 3e-8 relative); a caller that changed
 *  beta1 or momentum_decay along the way restores the real products with
 *  fo_optimizer_set_mu_product() after this call.  The loss scaler's state
 *  is left as it is (fo_optimizer_set_scaler_state()).
 *  Statuses: FO_ERR_NULL_POINTER (opt is NULL); FO_ERR_INVALID_ARGUMENT
 *  (step outside [0, FO_MAX_STEP]); FO_ERR_INVALID_STATE (another thread
 *  is inside a call on opt; FO_EXEC_CUDA in a forked process);
 *  FO_ERR_CUDA. */
FO_API fo_status fo_optimizer_set_step(fo_optimizer *opt, int64_t step);

/** The dynamic loss scaler's state, and the count of skipped steps: the
 *  parts of the step state that fo_optimizer_set_step() does not set
 *  (fo_optimizer_get_scaler_state(), fo_optimizer_set_scaler_state()),
 *  for a caller that saves and restores the state itself instead of
 *  through a checkpoint.  No padding inside; the 4 bytes at the end are
 *  padding (the getter zeroes them). */
typedef struct fo_scaler_state {
  int64_t skipped_steps; /**< steps skipped for a non-finite gradient (or
                          *   a non-finite gradient coefficient), in
                          *   [0, FO_MAX_STEP]; counted with loss scaling
                          *   off too, whenever clipping runs a pre-pass */
  float scale;           /**< the loss scale for the next backward pass: 1
                          *   with loss scaling off */
  int growth_tracker;    /**< clean steps since the scale last changed: 0
                          *   with loss scaling off */
  int hysteresis_left;   /**< overflows still tolerated before the next
                          *   back-off: loss_scaler.hysteresis after a clean
                          *   step, and always with loss scaling off */
} fo_scaler_state;

/** Read the loss scaler's state (fields as in fo_scaler_state; the scale
 *  and the growth tracker are also in fo_step_info).  On FO_EXEC_CUDA it
 *  lives on the device and this call synchronizes, like
 *  fo_optimizer_get_info().
 *  Statuses: FO_ERR_NULL_POINTER (opt or out is NULL);
 *  FO_ERR_INVALID_STATE (another thread is inside a call on opt;
 *  FO_EXEC_CUDA in a forked process); FO_ERR_CUDA (reading the device).
 *  On failure *out is not written. */
FO_API fo_status fo_optimizer_get_scaler_state(const fo_optimizer *opt, fo_scaler_state *out);

/** Set the loss scaler's state and the skipped count, as if the steps had
 *  left them there: the next step scales, backs off, grows and counts on
 *  from these values exactly as it would from a state reached by stepping
 *  (the step count, the last step's report and everything else stay as
 *  they are).  Accepted are the states the steps can produce, the rule
 *  fo_optimizer_load() applies to a checkpoint: skipped_steps in
 *  [0, FO_MAX_STEP]; scale finite and at least FO_LOSS_SCALE_MIN; with
 *  loss scaling on, growth_tracker in [0, loss_scaler.growth_interval) and
 *  hysteresis_left in [1, loss_scaler.hysteresis] (of opt's options).  With
 *  loss scaling off the step never changes the scaler's fields, so only the
 *  values it keeps are accepted: scale 1, growth_tracker 0 and
 *  hysteresis_left equal to loss_scaler.hysteresis (what
 *  fo_optimizer_get_scaler_state() reads there); skipped_steps is free, as
 *  steps are skipped without a scaler too.  The scale is the one
 *  fo_optimizer_loss_scale_ptr() points to.  On FO_EXEC_CUDA the state is
 *  written to the device as fo_optimizer_set_step() writes it (it
 *  synchronizes).
 *  Statuses: FO_ERR_NULL_POINTER (opt or state is NULL);
 *  FO_ERR_INVALID_ARGUMENT (a value outside the ranges above, NaN or inf
 *  included); FO_ERR_INVALID_STATE (another thread is inside a call on
 *  opt; FO_EXEC_CUDA in a forked process); FO_ERR_CUDA.  Each but
 *  FO_ERR_CUDA changes nothing. */
FO_API fo_status fo_optimizer_set_scaler_state(fo_optimizer *opt, const fo_scaler_state *state);

/** NAdam: group's running product of momentum coefficients,
 *  mu_1 * ... * mu_t over the steps applied so far (PyTorch's per-parameter
 *  state "mu_product"; 1 before the first step), in fp32.  On FO_EXEC_CUDA
 *  it lives on the device and this call synchronizes, like
 *  fo_optimizer_get_info().
 *  Statuses: FO_ERR_NULL_POINTER (opt or out is NULL);
 *  FO_ERR_INVALID_ARGUMENT (group outside [0, num_groups));
 *  FO_ERR_INVALID_STATE (opt is not NAdam, which alone keeps the product;
 *  another thread is inside a call on opt; FO_EXEC_CUDA in a forked
 *  process); FO_ERR_CUDA (reading the device).  On failure *out is not
 *  written. */
FO_API fo_status fo_optimizer_get_mu_product(const fo_optimizer *opt, int group, float *out);

/** NAdam: set group's product of momentum coefficients; the next step
 *  multiplies it by its mu_t, as if the steps so far had left it there.
 *  fo_optimizer_set_step() recomputes every group's product from the step
 *  count (with the current beta1 and momentum_decay), so when both are
 *  restored this call comes after it.  value must be in [0, 1] (what the
 *  steps can produce: 1 before the first step, 0 once it underflows).  On
 *  FO_EXEC_CUDA it is written to the device as fo_optimizer_set_step()
 *  writes it (it synchronizes).
 *  Statuses: FO_ERR_NULL_POINTER (opt is NULL); FO_ERR_INVALID_ARGUMENT
 *  (group outside [0, num_groups); value NaN or outside [0, 1]);
 *  FO_ERR_INVALID_STATE (opt is not NAdam; another thread is inside a call
 *  on opt; FO_EXEC_CUDA in a forked process); FO_ERR_CUDA.  Each but
 *  FO_ERR_CUDA changes nothing. */
FO_API fo_status fo_optimizer_set_mu_product(fo_optimizer *opt, int group, float value);

/** Set the base learning rate of one group, or of every group when group is
 *  -1; the next step uses it (times the schedule's factor).  A step
 *  captured in a CUDA graph keeps the hyper-parameters it was captured
 *  with; the schedule still advances on the device.
 *  Statuses: FO_ERR_NULL_POINTER (opt is NULL); FO_ERR_INVALID_ARGUMENT
 *  (group is neither -1 nor in [0, num_groups); lr negative or not
 *  finite); FO_ERR_INVALID_STATE (another thread is inside a call on
 *  opt). */
FO_API fo_status fo_optimizer_set_lr(fo_optimizer *opt, int group, float lr);

/** Read the base learning rate of one group: its hparams lr, as created,
 *  set or loaded, without the schedule's factor.
 *  Statuses: FO_ERR_NULL_POINTER (opt or out is NULL);
 *  FO_ERR_INVALID_ARGUMENT (group outside [0, num_groups));
 *  FO_ERR_INVALID_STATE (another thread is inside a call on opt). */
FO_API fo_status fo_optimizer_get_lr(const fo_optimizer *opt, int group, float *out);

/** The learning rate the next step will apply to one group: its base rate
 *  times the schedule's factor at the current step count, rounded to float
 *  as the step rounds it (the same bits).  Before the first step with a
 *  warmup of W steps, that is lr / W.  (A skipped step leaves it as it
 *  was.  AdaGrad's lr_decay is not in it: the rule divides this rate by
 *  1 + lr_decay * (step - 1) itself.)  Reads the step count: on
 *  FO_EXEC_CUDA it synchronizes, like fo_optimizer_get_info().
 *  Statuses: FO_ERR_NULL_POINTER (opt or out is NULL);
 *  FO_ERR_INVALID_ARGUMENT (group outside [0, num_groups));
 *  FO_ERR_INVALID_STATE (another thread is inside a call on opt;
 *  FO_EXEC_CUDA in a forked process); FO_ERR_CUDA (reading the device). */
FO_API fo_status fo_optimizer_get_next_lr(const fo_optimizer *opt, int group, float *out);

/** Replace every hyper-parameter of one group, validated as at create
 *  (struct_size and reserved included: start from fo_hparams_default() or
 *  from fo_optimizer_get_hparams()).
 *  Statuses: FO_ERR_NULL_POINTER (opt or hparams is NULL);
 *  FO_ERR_INVALID_ARGUMENT (group outside [0, num_groups); a wrong
 *  struct_size, a non-zero reserved word or a value out of its range);
 *  FO_ERR_INVALID_STATE (switching on amsgrad, momentum (SGD, RMSprop,
 *  LARS) or RMSprop's centered, which need state the optimizer was created
 *  without; another thread is inside a
 *  call on opt).  On failure the group keeps its hyper-parameters. */
FO_API fo_status fo_optimizer_set_hparams(fo_optimizer *opt, int group, const fo_hparams *hparams);

/** Read the hyper-parameters of one group (struct_size and reserved as
 *  fo_hparams_default() sets them, so *out can be changed and passed back
 *  to fo_optimizer_set_hparams()).
 *  Statuses: FO_ERR_NULL_POINTER (opt or out is NULL);
 *  FO_ERR_INVALID_ARGUMENT (group outside [0, num_groups));
 *  FO_ERR_INVALID_STATE (another thread is inside a call on opt). */
FO_API fo_status fo_optimizer_get_hparams(const fo_optimizer *opt, int group, fo_hparams *out);

/** Read the options the optimizer was created with.
 *  Statuses: FO_ERR_NULL_POINTER (opt or out is NULL). */
FO_API fo_status fo_optimizer_get_options(const fo_optimizer *opt, fo_options *out);

/** The number of registered tensors.
 *  Statuses: FO_ERR_NULL_POINTER (opt or out is NULL). */
FO_API fo_status fo_optimizer_num_tensors(const fo_optimizer *opt, int64_t *out);

/* The pointer getters below hand out writable pointers into the
 * optimizer's buffers, so they take a non-const optimizer: a const handle
 * gives no way to change what it points to. */

/** FO_STORAGE_ARENA: the parameter buffer of tensor index (in the
 *  executor's memory).  FO_STORAGE_EXTERNAL: the caller's own pointer.
 *  Statuses: FO_ERR_NULL_POINTER (opt or out is NULL);
 *  FO_ERR_INVALID_ARGUMENT (index outside [0, num_tensors)). */
FO_API fo_status fo_optimizer_param_ptr(fo_optimizer *opt, int64_t index, void **out);

/** The gradient buffer of tensor index; as fo_optimizer_param_ptr. */
FO_API fo_status fo_optimizer_grad_ptr(fo_optimizer *opt, int64_t index, void **out);

/** A state buffer of tensor index: FO_ROLE_MASTER, FO_ROLE_EXP_AVG,
 *  FO_ROLE_EXP_AVG_SQ or FO_ROLE_MAX_EXP_AVG_SQ (fp32, numel elements, in
 *  the executor's memory), for inspection and checkpoints.
 *  Statuses: FO_ERR_NULL_POINTER (opt or out is NULL);
 *  FO_ERR_INVALID_ARGUMENT (index outside [0, num_tensors); an unknown
 *  role, or FO_ROLE_PARAM / FO_ROLE_GRAD); FO_ERR_INVALID_STATE (the
 *  optimizer keeps no such state, or keeps it sharded over ranks: use
 *  fo_optimizer_arena and fo_optimizer_get_shard then). */
FO_API fo_status fo_optimizer_state_ptr(fo_optimizer *opt, int64_t index, fo_role role,
                                        float **out);

/** FO_STORAGE_ARENA: the whole contiguous buffer of a role and its size in
 *  bytes (for one collective over all gradients, say); with a sharded
 *  state, a state role's buffer holds only this rank's shard
 *  (fo_optimizer_get_shard).
 *  Statuses: FO_ERR_NULL_POINTER (opt, base or bytes is NULL);
 *  FO_ERR_INVALID_ARGUMENT (an unknown role); FO_ERR_INVALID_STATE
 *  (external storage, or a role the optimizer does not keep). */
FO_API fo_status fo_optimizer_arena(fo_optimizer *opt, fo_role role, void **base, size_t *bytes);

/* ===================================== 10. data parallelism: communicators */

/** A communicator: the N ranks of a data-parallel run, one process (and,
 *  on FO_EXEC_CUDA, one GPU) per rank.  Attached to an optimizer with
 *  fo_optimizer_set_comm(), it makes the optimizer sum every gradient over
 *  the ranks before each step; the division by N is folded into the step's
 *  gradient coefficient (clip / (loss_scale * N)), so averaging costs no
 *  extra pass over memory.  The pre-pass (norm, non-finite check) then runs
 *  on the summed gradients, which are the same on every rank: the norm, the
 *  skip decision and the loss scale agree across ranks with no extra
 *  communication and no host synchronization.
 *
 *  Two kinds:
 *    - FO_COMM_NCCL, for FO_EXEC_CUDA: fo_comm_wrap_nccl() wraps an
 *      ncclComm_t the caller already has; fo_comm_init_nccl() creates one
 *      from an id the caller hands to every rank (fusedopt_mpi.h's
 *      fo_comm_create_nccl_mpi() does this through MPI);
 *    - FO_COMM_HOST, for FO_EXEC_CPU: fo_comm_create_host() takes a table
 *      of collective functions over host memory; fusedopt_mpi.h's
 *      fo_comm_create_mpi() fills it with MPI_Allreduce (and MPI_Reduce /
 *      MPI_Bcast for a sharded state).  libfusedopt does
 *      not link MPI: the MPI glue is the separate library fusedopt_mpi.
 *
 *  Every rank must register the same tensors with the same options and
 *  issue the same collectives in the same order (the same buckets, in the
 *  same order, then the step).  A communicator must outlive the optimizers
 *  attached to it, and it and they are used from one thread at a time.
 *
 *  NCCL communicators may be non-blocking (ncclConfig_t.blocking = 0, or
 *  NCCL_COMM_BLOCKING=0): the library waits (polls ncclCommGetAsyncError)
 *  until each of its NCCL calls is done.  After an NCCL error other than a
 *  refused argument the communicator is broken (NCCL leaves its state
 *  undefined): every later reduction through it fails with FO_ERR_COMM;
 *  destroy it (fo_comm_destroy aborts an owned one) and attach another.
 *  See docs/data-parallel.md. */
typedef struct fo_comm fo_comm;

/** What carries a communicator's collectives. */
typedef enum fo_comm_kind {
  FO_COMM_NCCL = 0,  /**< NCCL over device memory (FO_EXEC_CUDA) */
  FO_COMM_HOST = 1,  /**< caller-supplied functions over host memory
                      *   (FO_EXEC_CPU), e.g. MPI through fusedopt_mpi */
  FO_COMM_KIND_COUNT /**< number of kinds; not a kind */
} fo_comm_kind;

/** NCCL's communicator handle: the same type as ncclComm_t, so one passes
 *  without a cast and this header needs no NCCL header. */
typedef struct ncclComm *fo_nccl_comm_t;

/** The size of NCCL's unique id (NCCL_UNIQUE_ID_BYTES). */
#define FO_NCCL_ID_BYTES 128

/** NCCL's unique id (ncclUniqueId), as plain bytes to send to every rank. */
typedef struct fo_nccl_id {
  char internal[FO_NCCL_ID_BYTES];
} fo_nccl_id;

/** ncclGetUniqueId: one rank (rank 0) calls this and sends the bytes to
 *  every other rank before they all call fo_comm_init_nccl().
 *  Statuses: FO_ERR_NULL_POINTER (out is NULL); FO_ERR_COMM (NCCL failed;
 *  its message); FO_ERR_UNSUPPORTED (a build without NCCL,
 *  FO_ENABLE_NCCL=OFF, always so without CUDA: "built without NCCL"; or
 *  NCCL 2.13 or newer cannot be loaded: libnccl.so.2 is not on the
 *  loader's path, the message says the loader's error). */
FO_API fo_status fo_nccl_get_id(fo_nccl_id *out);

/** Create an NCCL communicator for rank rank of size ranks on CUDA device
 *  device (ncclCommInitRank; a collective call: every rank must make it).
 *  The communicator owns the NCCL communicator and destroys it.
 *  Statuses: FO_ERR_NULL_POINTER (out or id is NULL);
 *  FO_ERR_INVALID_ARGUMENT (size < 1, rank outside [0, size), device
 *  negative or not present); FO_ERR_NO_DEVICE (no usable driver or
 *  device, or a build without CUDA); FO_ERR_CUDA (selecting the device);
 *  FO_ERR_COMM (NCCL failed; its message); FO_ERR_OUT_OF_MEMORY;
 *  FO_ERR_UNSUPPORTED (a build without NCCL but with a usable device, or
 *  NCCL cannot be loaded, as for fo_nccl_get_id). */
FO_API fo_status fo_comm_init_nccl(fo_comm **out, const fo_nccl_id *id, int rank, int size,
                                   int device);

/** Wrap an NCCL communicator the caller created; fo_comm_destroy() leaves it
 *  alone.  Its rank, size and device are read from NCCL.
 *  Statuses: FO_ERR_NULL_POINTER (out or nccl is NULL); FO_ERR_COMM (NCCL
 *  failed to report them, or the communicator is in error); FO_ERR_OUT_OF_MEMORY;
 *  FO_ERR_UNSUPPORTED (a build without NCCL, or NCCL cannot be loaded, as
 *  for fo_nccl_get_id). */
FO_API fo_status fo_comm_wrap_nccl(fo_comm **out, fo_nccl_comm_t nccl);

/** The collective functions of an FO_COMM_HOST communicator.  Fill with
 *  zeros, set struct_size = sizeof(fo_comm_ops) and the functions. */
typedef struct fo_comm_ops {
  size_t struct_size; /**< sizeof(fo_comm_ops) */
  /** Required.  Sum count elements of dtype in buf (host memory) over every
   *  rank, in place; every rank must end with the same bits.  16-bit
   *  dtypes are summed in their own type (widened to fp32 for each
   *  addition and rounded to nearest-even after it, as NCCL does).  Return
   *  0 on success; on failure a nonzero code, with a message written into
   *  err (err_cap bytes, NUL-terminated). */
  int (*allreduce_sum)(void *ctx, void *buf, int64_t count, fo_dtype dtype, char *err,
                       size_t err_cap);
  /** Optional; needed by a sharded optimizer state (fo_dp_options
   *  .shard_state).  A reduce-scatter with uneven parts, in place: buf holds
   *  counts[0] + ... + counts[size - 1] elements of dtype, rank r's part
   *  after the parts of the ranks before it (a count may be 0).  On return
   *  this rank's part holds the sum of that part over every rank (summed as
   *  allreduce_sum sums); the other parts hold unspecified values.  Return
   *  codes and err as allreduce_sum. */
  int (*reduce_scatter_sum)(void *ctx, void *buf, const int64_t *counts, fo_dtype dtype, char *err,
                            size_t err_cap);
  /** Optional; needed by a sharded optimizer state and by
   *  fo_optimizer_save_gathered() (FO_ERR_UNSUPPORTED without it).  An
   *  all-gather with uneven parts, in place, in bytes: buf holds bytes[0] +
   *  ... + bytes[size - 1] bytes, rank r's part after the ranks before it.
   *  On entry this rank's part holds its data; on return every part holds
   *  its owner's data, on every rank. */
  int (*all_gather)(void *ctx, void *buf, const int64_t *bytes, char *err, size_t err_cap);
  /** Optional (may be NULL): called once by fo_comm_destroy() with ctx. */
  void (*release)(void *ctx);
} fo_comm_ops;

/** Create an FO_COMM_HOST communicator for rank rank of size ranks (0 <=
 *  rank < size) whose collectives are ops' functions called with ctx.
 *  *ops is copied; ctx belongs to the caller until ops->release is called
 *  with it: by fo_comm_destroy, or by this function when it fails (unless
 *  ops itself is NULL or has the wrong struct_size).
 *  Statuses: FO_ERR_NULL_POINTER (out, ops or ops->allreduce_sum is NULL);
 *  FO_ERR_INVALID_ARGUMENT (ops->struct_size is not sizeof(fo_comm_ops);
 *  size < 1 or rank outside [0, size)); FO_ERR_OUT_OF_MEMORY. */
FO_API fo_status fo_comm_create_host(fo_comm **out, const fo_comm_ops *ops, void *ctx, int rank,
                                     int size);

/** Destroy a communicator.  NULL is a no-op (FO_SUCCESS).  An NCCL
 *  communicator the library created (fo_comm_init_nccl,
 *  fo_comm_create_nccl_mpi) is destroyed with ncclCommDestroy, which waits
 *  for its work and, since NCCL 2.14, may wait for the other ranks: every
 *  rank destroys its communicator.  One that NCCL reported an error on is
 *  aborted (ncclCommAbort), which waits for nobody.  A wrapped one is left
 *  to its owner.
 *  Statuses: FO_ERR_INVALID_STATE (an optimizer is still attached to it:
 *  nothing is destroyed). */
FO_API fo_status fo_comm_destroy(fo_comm *comm);

/** This rank's index and the number of ranks; either out may be NULL.
 *  Statuses: FO_ERR_NULL_POINTER (comm is NULL). */
FO_API fo_status fo_comm_get_rank(const fo_comm *comm, int *rank, int *size);

/** The communicator's kind.
 *  Statuses: FO_ERR_NULL_POINTER (comm or out is NULL). */
FO_API fo_status fo_comm_get_kind(const fo_comm *comm, fo_comm_kind *out);

/** Sum count elements of dtype in buf over every rank, in place: device
 *  memory enqueued on stream for FO_COMM_NCCL, host memory and a blocking
 *  call (stream NULL) for FO_COMM_HOST.  For the caller's own reductions
 *  (a loss to log, say).  A collective call.
 *  Statuses: FO_ERR_NULL_POINTER (comm is NULL; buf is NULL with count >
 *  0); FO_ERR_INVALID_ARGUMENT (count < 0; an unknown dtype; a non-NULL
 *  stream for FO_COMM_HOST; an invalid stream or one of another device
 *  for FO_COMM_NCCL); FO_ERR_COMM (the collective failed, now or
 *  asynchronously before; the back-end's message). */
FO_API fo_status fo_comm_allreduce_sum(fo_comm *comm, void *buf, int64_t count, fo_dtype dtype,
                                       fo_stream_t stream);

/** How an optimizer averages its gradients; fill with
 *  fo_dp_options_default(). */
typedef struct fo_dp_options {
  size_t struct_size; /**< sizeof(fo_dp_options); set by the default */
  /** Gradient bytes per bucket (default 25 MiB, PyTorch DDP's): buckets are
   *  runs of consecutive tensors; a bucket closes before the tensor that
   *  would take it past this size (a larger tensor is a bucket of its
   *  own).  0: one bucket for everything. */
  size_t bucket_bytes;
  /** Reduce 16-bit gradients in fp32 (default 0: in their own dtype): each
   *  bucket is widened into an fp32 buffer, summed, and rounded back once.
   *  Costs twice the traffic and a bucket-sized fp32 buffer. */
  int reduce_in_f32;
  /** Shard the optimizer state over the ranks, ZeRO stage 1 (default 0):
   *  needs FO_STORAGE_ARENA, no stochastic rounding, and (for a host
   *  communicator) reduce_scatter_sum and all_gather in its ops, as
   *  fusedopt_mpi's has; else FO_ERR_UNSUPPORTED.  Rank r keeps master
   *  weights and moments only for its shard of the arena, the elements
   *  [first, first + count) that fo_optimizer_get_shard() reports (about
   *  1/N of them, 128-aligned); parameters and gradients stay whole.  Each
   *  step then reduce-scatters the gradients (bucketed like the
   *  all-reduce), updates the own shard, and all-gathers the parameters.
   *  The results equal the unsharded ones (up to the summation order of
   *  the gradient sums).  After a reduction only the own shard of the
   *  gradient arena holds the summed gradients; the rest holds unspecified
   *  values (write_unscaled_grads also writes only the own shard).
   *  Attaching copies the rank's slice of the current state and frees the
   *  rest, so every rank must hold the same state then (a fresh optimizer,
   *  or one loaded from the same checkpoint).  A sharded optimizer keeps
   *  its communicator until it is destroyed (fo_optimizer_set_comm refuses
   *  with FO_ERR_INVALID_STATE). */
  int shard_state;
  /** Must be zero (fo_dp_options_default() zeroes them): room for options
   *  of later versions without an ABI break. */
  uint64_t reserved[4];
} fo_dp_options;

/** Fill *out with the defaults listed on each field of fo_dp_options.
 *  Statuses: FO_ERR_NULL_POINTER (out is NULL). */
FO_API fo_status fo_dp_options_default(fo_dp_options *out);

/** Attach comm to opt (options NULL: the defaults), or detach with comm
 *  NULL.  From now on the optimizer's gradients are summed over the ranks
 *  before every step and divided by the number of ranks inside it.
 *  Buckets already reduced for the coming step are forgotten.  On
 *  FO_EXEC_CUDA, replacing or detaching a communicator waits for the
 *  device.  On failure the optimizer keeps the communicator it had.
 *  Statuses: FO_ERR_NULL_POINTER (opt is NULL); FO_ERR_INVALID_ARGUMENT
 *  (options with a wrong struct_size, a non-zero reserved word, or a flag
 *  not 0 or 1; an NCCL communicator of another device than the
 *  optimizer's); FO_ERR_UNSUPPORTED (the kind does not match the
 *  executor -- FO_EXEC_CUDA needs FO_COMM_NCCL, FO_EXEC_CPU FO_COMM_HOST
 *  -- or shard_state without what it needs, listed at shard_state);
 *  FO_ERR_INVALID_STATE (the optimizer's state is already sharded;
 *  another thread is inside a call on opt); FO_ERR_OUT_OF_MEMORY;
 *  FO_ERR_CUDA (FO_EXEC_CUDA: allocating or copying the buckets' buffers
 *  or the shard). */
FO_API fo_status fo_optimizer_set_comm(fo_optimizer *opt, fo_comm *comm,
                                       const fo_dp_options *options);

/** This rank's shard of the arena with a sharded state
 *  (fo_dp_options.shard_state): the elements [*first, *first + *count) of
 *  every role buffer, the only ones whose master weights and moments it
 *  keeps (fo_optimizer_arena() of a state role returns just them, *count
 *  elements).  Without sharding: the whole arena (0 and its element
 *  count).  Either out may be NULL.
 *  Statuses: FO_ERR_NULL_POINTER (opt is NULL). */
FO_API fo_status fo_optimizer_get_shard(const fo_optimizer *opt, int64_t *first, int64_t *count);

/** The number of gradient buckets (0 without a communicator).
 *  Statuses: FO_ERR_NULL_POINTER (opt or out is NULL);
 *  FO_ERR_INVALID_STATE (another thread is inside a call on opt). */
FO_API fo_status fo_optimizer_num_buckets(const fo_optimizer *opt, int64_t *out);

/** The tensors of bucket: indices first .. first + count - 1.  A bucket is
 *  ready to be reduced once the backward pass has produced all of them.
 *  Statuses: FO_ERR_NULL_POINTER (opt, first or count is NULL);
 *  FO_ERR_INVALID_ARGUMENT (bucket outside [0, num_buckets));
 *  FO_ERR_INVALID_STATE (no communicator; another thread is inside a call
 *  on opt). */
FO_API fo_status fo_optimizer_bucket_tensors(const fo_optimizer *opt, int64_t bucket,
                                             int64_t *first, int64_t *count);

/** Sum one bucket's gradients over the ranks now, so that communication
 *  overlaps the rest of the backward pass.  FO_EXEC_CUDA: enqueued on
 *  stream, which must be the stream that produced the bucket's gradients
 *  or one ordered after it; the next step's stream waits for it (an event,
 *  no host synchronization).  FO_EXEC_CPU: blocking, stream NULL.  Each
 *  bucket is reduced at most once per step.  One thread driving several
 *  GPUs wraps every rank's reductions in one ncclGroupStart/End and steps
 *  on the same streams (neither reduce_in_f32 nor external gradients at
 *  non-adjacent addresses work inside such a group: their buckets are
 *  packed and unpacked around the collective, which the group defers).
 *  CUDA graphs: a captured step's buckets are reduced inside its capture
 *  (on the capturing stream, or on a stream forked from it by an event and
 *  joined back), an eager step's outside any capture; a reduction or step
 *  that would mix them is refused (FO_ERR_INVALID_STATE, nothing
 *  enqueued).  The library orders its own work between streams with
 *  events, but CUDA allows no wait across a capture's boundary: the caller
 *  orders a graph's replay after the eager step before it, and the next
 *  eager step's work (its reductions included) after the replay, as the
 *  gradients and parameters they share require anyway.
 *
 *  A reduction that fails leaves the gradients partly summed: the
 *  optimizer then refuses to step or reduce (FO_ERR_COMM) until
 *  fo_optimizer_zero_grad(); parameters and state are never touched.
 *  Statuses: FO_ERR_NULL_POINTER (opt is NULL); FO_ERR_INVALID_ARGUMENT
 *  (bucket outside [0, num_buckets); a bad stream, as for
 *  fo_optimizer_step); FO_ERR_INVALID_STATE (no communicator; the bucket
 *  was already reduced for this step; a bucket of this step was reduced
 *  on the other side of a CUDA graph capture's boundary from stream;
 *  another thread is inside a call on opt; FO_EXEC_CUDA in a forked
 *  process); FO_ERR_COMM (the collective
 *  failed, or an earlier one did and the gradients are poisoned);
 *  FO_ERR_CUDA (the conversion or event work around the collective). */
FO_API fo_status fo_optimizer_reduce_bucket(fo_optimizer *opt, int64_t bucket, fo_stream_t stream);

/** Reduce every bucket not reduced since the last step, in bucket order.
 *  fo_optimizer_step() calls it itself, so a caller who does not overlap
 *  needs neither call.
 *  Statuses: as fo_optimizer_reduce_bucket(), without the bucket's. */
FO_API fo_status fo_optimizer_reduce_grads(fo_optimizer *opt, fo_stream_t stream);

/** For communicator back-ends built outside the library (fusedopt_mpi):
 *  record "func: message" as this thread's fo_last_error() and return
 *  status, whatever it is (func and message may be NULL). */
FO_API fo_status fo_set_last_error(fo_status status, const char *func, const char *message);

/* ======================================================= 11. checkpoints */

/** The newest checkpoint format version this library reads (every older
 *  one it reads too) and writes.  A whole checkpoint is written as version
 *  1, which every fusedopt reads; a per-rank file of a sharded state as
 *  version 2 (a reader of version 1 refuses it as newer). */
#define FO_CHECKPOINT_FORMAT_VERSION 2

/** Save the optimizer's whole state to the file path: the parameters (in
 *  their dtype), the fp32 master weights, the moments, momentum buffers and
 *  AMSGrad maxima, every group's hyper-parameters, the step state (step
 *  count, skipped steps, loss scale, growth tracker, hysteresis) and the
 *  options, so that fo_optimizer_load() into a fresh optimizer created with
 *  the same options and tensors resumes bit for bit.  Gradients are not
 *  saved.
 *
 *  The file is safetensors (Python's safetensors, numpy and torch open it):
 *  the parameters under each tensor's fo_tensor_desc.name ("tensor.<i>"
 *  when it has none), state as "<name>.master", ".exp_avg", ".exp_avg_sq",
 *  ".max_exp_avg_sq" (SGD: ".momentum_buffer"), and fusedopt's metadata,
 *  with a CRC-32 of every tensor and of the metadata, in "__metadata__"
 *  (docs/reliability.md has the layout).  The algorithm is recorded by
 *  its fo_algorithm_string() name.  The file records each tensor's
 *  parameter group ("fusedopt.group_of.<name>"); fo_optimizer_load()
 *  refuses to move a tensor to another group.
 *
 *  The file is written as a temporary file next to path, flushed, fsynced
 *  and renamed over path, and the directory is fsynced: at every moment
 *  path holds either the previous file or the complete new one, and a
 *  failure (or a crash) leaves the previous one intact.  (Only when the
 *  final fsync of the directory fails is the new file already in place:
 *  the FO_ERR_IO message says so.)  A file that replaces another keeps
 *  its permission bits (0600 stays 0600, whatever the umask); a new one
 *  gets 0666 less the umask.  The temporary file is
 *  "<path>.tmp-<pid>-<8 hex digits>"; for a file name of 232 bytes or more
 *  (up to NAME_MAX), whose suffix would not fit, "<the name's first bytes>~
 *  <16 hex digits of a hash of the name>.tmp-<pid>-<8 hex digits>".  A
 *  crash can leave one behind; nothing reads it, and the next successful
 *  save of the same path removes it: every regular file in path's
 *  directory named exactly by this pattern for this path whose process no
 *  longer exists (never another checkpoint's, another process's still
 *  running, a directory or a symbolic link).
 *
 *  On FO_EXEC_CUDA the call waits until the device is idle and copies the
 *  state through host memory (it synchronizes); stream is checked as for a
 *  step.  On FO_EXEC_CPU stream must be NULL.  Host memory use is bounded
 *  (16 MiB of staging), whatever the model's size.
 *
 *  A sharded state (fo_dp_options.shard_state) saves this rank's own file:
 *  not a collective call; every rank passes its own path (rank r's file
 *  holds rank r's shard).  It is the same format with the parameters
 *  whole and, of every state buffer, only the piece of each tensor that
 *  lies in the rank's shard, under the tensor's usual key (shape [piece
 *  length]); "fusedopt.shard.*" metadata records the rank, the number of
 *  ranks, the shard's first element, its count and the arena's total, and
 *  each piece's first element within its tensor.  Such a file has format
 *  version 2.  Pieces of a tensor concatenated in rank order make the
 *  whole buffer.  fo_optimizer_save_gathered() writes one whole
 *  checkpoint instead.
 *
 *  Statuses:
 *    FO_ERR_NULL_POINTER     opt or path is NULL.
 *    FO_ERR_INVALID_ARGUMENT path is empty; a bad stream (as for a step).
 *    FO_ERR_INVALID_STATE    the optimizer is faulted; its arena master
 *                            weights were never set; the header would pass
 *                            safetensors' 100 MB limit (about 99,000
 *                            tensors with 48-byte names, or names of tens
 *                            of megabytes: every limit of the reader is
 *                            the writer's), found before the file is
 *                            created; with loss scaling on, a scale
 *                            written through fo_optimizer_loss_scale_ptr()
 *                            that a load would refuse (not finite, or
 *                            below FO_LOSS_SCALE_MIN); another thread is
 *                            inside a call on opt; FO_EXEC_CUDA in a
 *                            forked process.
 *    FO_ERR_IO               the message names path, then the temporary
 *                            file the failure happened on, and the OS's
 *                            reason; or path exists and is not a regular
 *                            file (a directory, FIFO, socket, device node
 *                            or symbolic link, which the rename would
 *                            replace: save to a link's target), refused
 *                            before anything is written.
 *    FO_ERR_CUDA             copying the state from the device.
 *    FO_ERR_OUT_OF_MEMORY    the staging buffer or the header.
 *  (Names a checkpoint cannot hold were refused at create.) */
FO_API fo_status fo_optimizer_save(const fo_optimizer *opt, const char *path, fo_stream_t stream);

/** Save one whole checkpoint of a data-parallel optimizer's state on rank
 *  root of its communicator: the file fo_optimizer_save() would write for
 *  an unsharded optimizer in the same state (byte for byte), which loads
 *  into any optimizer of the same tensors, sharded or not, over any
 *  number of ranks.  A collective call: every rank of the communicator
 *  makes it, with the same root; only root's path is used (the others may
 *  pass NULL) and only root writes.  A sharded state is gathered through
 *  the communicator, one state buffer at a time, through a window of 16
 *  MiB in the executor's memory on every rank (FO_EXEC_CUDA: device
 *  memory, the collectives enqueued on stream; the call waits for them).
 *  Without sharding, root writes its own state.  Without a communicator
 *  this is fo_optimizer_save() (root must be 0).
 *
 *  Every rank returns the same status: a failure on any rank (root's
 *  disk, another rank's faulted state) is reported by every rank, with the
 *  failing rank's message ("rank r of N: ...") in fo_last_error(); the
 *  file is then not written (path keeps its previous content), except
 *  when only the final fsync of the directory fails, as for
 *  fo_optimizer_save().  A failing collective (FO_ERR_COMM) ends the call
 *  on the ranks where it fails; what the other ranks see is the
 *  communicator's matter.  Argument errors found before any
 *  communication -- opt NULL, a bad stream, root out of range, a host
 *  communicator without all_gather -- return at once on the rank that
 *  makes them.  The ranks agree on the outcome through all_gather, so a
 *  host communicator needs it (fo_comm_ops) even without sharding.
 *
 *  Statuses: those of fo_optimizer_save() (path is checked on root only),
 *  and FO_ERR_INVALID_ARGUMENT (root is not a rank of the communicator),
 *  FO_ERR_UNSUPPORTED (a host communicator whose ops have no all_gather),
 *  FO_ERR_COMM (a collective failed). */
FO_API fo_status fo_optimizer_save_gathered(const fo_optimizer *opt, const char *path, int root,
                                            fo_stream_t stream);

/** Restore a checkpoint written by fo_optimizer_save() into opt, which must
 *  have been created with the same algorithm, parameter dtype, master
 *  weights, stochastic rounding and loss scaling on or off, the same number
 *  of groups, and the same tensors (count, names, sizes, and each in the
 *  group it was saved in, when the file records it), each checked with its
 *  own message naming the tensor.  The file may come from the other
 *  executor and the other storage mode.  Restored: the parameters (written
 *  into the caller's buffers with external storage), the state buffers,
 *  every group's hyper-parameters and the step state.  Not restored:
 *  options, which stay the loading optimizer's own (schedule, scaler
 *  constants, clipping, seed, gradient dtype); resuming is exact when they
 *  are equal.  This is also how a faulted optimizer recovers (see "Faults"
 *  at fo_optimizer_step): a successful load clears the fault.
 *
 *  Everything is read and checked before anything is written: the
 *  container (header length, strict JSON, offsets in range, no overlap, no
 *  hole), the format version (a newer one is refused), the metadata's and
 *  every tensor's CRC-32, the fit with opt, the hyper-parameters (as
 *  fo_optimizer_set_hparams() checks them) and the loss-scaler state.  The
 *  step state must be one the optimizer can continue from: a loss scale of
 *  at least FO_LOSS_SCALE_MIN, step and skipped counts of at most
 *  FO_MAX_STEP.  A failed load changes nothing, except as said for
 *  FO_ERR_CUDA below.  On FO_EXEC_CUDA the call waits for the device
 *  before and after the copies (it synchronizes).  Needs host memory for
 *  the whole file.
 *
 *  A sharded optimizer loads either a whole checkpoint (fo_optimizer_save
 *  of an unsharded optimizer, or fo_optimizer_save_gathered; it takes its
 *  shard's slice of the state) or its own rank's per-rank file, of the
 *  same sharding (rank, number of ranks, shard and arena size must match,
 *  else FO_ERR_CHECKPOINT).  For a sharded optimizer the call is
 *  collective: every rank of its communicator makes it, each with its own
 *  path, and the ranks agree before anything is written -- every rank's
 *  file must be good, and all must hold the same save (the same step
 *  state, hyper-parameters and parameters) -- so that every rank loads or
 *  none does, and every rank returns the same status, with the failing
 *  rank's message ("rank r of N: ...").  (Should a copy into device memory
 *  fail on one rank after that, or the ranks' last agreement -- that every
 *  rank loaded -- itself fail, every rank that loaded is left faulted: the
 *  ranks may no longer hold one state.)  An
 *  unsharded optimizer loading a per-rank file gets FO_ERR_CHECKPOINT;
 *  fo_optimizer_load_shards() assembles the ranks' files.
 *
 *  Statuses:
 *    FO_ERR_NULL_POINTER     opt or path is NULL.
 *    FO_ERR_INVALID_ARGUMENT path is empty; a bad stream (as for a step).
 *    FO_ERR_IO               the OS's failures: a missing or unreadable
 *                            file; a path that is not a regular file (a
 *                            FIFO, a socket, a device), refused at once
 *                            without waiting for a writer.
 *    FO_ERR_CHECKPOINT       the file's content: malformed, corrupt, of a
 *                            newer format, not fitting opt, or holding
 *                            invalid hyper-parameters or step state; the
 *                            detail in fo_last_error().
 *    FO_ERR_INVALID_STATE    another thread is inside a call on opt;
 *                            FO_EXEC_CUDA in a forked process.
 *    FO_ERR_OUT_OF_MEMORY    no memory to read the file.
 *    FO_ERR_COMM             a sharded optimizer: the ranks' agreement
 *                            failed (after this rank loaded: faulted).
 *    FO_ERR_CUDA             FO_EXEC_CUDA: a copy into device memory
 *                            failed part-way; the optimizer is now
 *                            faulted. */
FO_API fo_status fo_optimizer_load(fo_optimizer *opt, const char *path, fo_stream_t stream);

/** Load a sharded state saved as per-rank files (fo_optimizer_save() on
 *  every rank of a sharded optimizer): paths[0 .. n-1] must be the files
 *  of every rank of one save, each once, in any order.  opt may be
 *  unsharded (it gets the whole state) or sharded over any number of
 *  ranks (each rank takes its own shard's slice): a run can resume on
 *  another number of ranks, or without data parallelism.  Every file is
 *  checked as fo_optimizer_load() checks one, and the set too: the files
 *  must tile the arena in rank order and hold the same step state,
 *  hyper-parameters and parameters (FO_ERR_CHECKPOINT naming the file
 *  otherwise).  Nothing is written unless everything is good.  Collective
 *  on a sharded optimizer, as fo_optimizer_load() is.  Needs host memory
 *  for all the files (each holds the parameters whole).
 *  Statuses: those of fo_optimizer_load(), and FO_ERR_NULL_POINTER (paths
 *  or one of its paths is NULL), FO_ERR_INVALID_ARGUMENT (n < 1). */
FO_API fo_status fo_optimizer_load_shards(fo_optimizer *opt, const char *const *paths, int n,
                                          fo_stream_t stream);

/** Check a checkpoint file on its own, without an optimizer: the container,
 *  the format version, every checksum (the metadata's and each tensor's
 *  bytes), and that each tensor is a 1-D array of F32, F16 or BF16 (a whole
 *  checkpoint or a per-rank file).  FO_SUCCESS if all of that holds.
 *  Whether the file fits a given optimizer (names, sizes, which dtype each
 *  tensor must have) only a load can tell: the header's tensor entries are
 *  under no checksum, so an F16 entry edited to BF16 passes here and is
 *  refused by fo_optimizer_load().
 *  Statuses: FO_ERR_NULL_POINTER (path is NULL); FO_ERR_IO and
 *  FO_ERR_CHECKPOINT as for fo_optimizer_load() (a FIFO or other file
 *  that is not a regular one: FO_ERR_IO at once); FO_ERR_OUT_OF_MEMORY
 *  (no memory to read the file). */
FO_API fo_status fo_checkpoint_verify(const char *path);

/* ========================================================= 12. utilities */

/** Size in bytes of one element of dtype, 0 for an unknown dtype.  Cannot
 *  fail. */
FO_API size_t fo_dtype_size(fo_dtype dtype);

/** Convert n floats to dtype (round to nearest even) and back: helpers for
 *  callers that fill 16-bit buffers on the host.  src and dst must not
 *  overlap unless they are equal and dtype is FO_DTYPE_F32.
 *  Statuses: FO_ERR_NULL_POINTER (src or dst is NULL);
 *  FO_ERR_INVALID_ARGUMENT (an unknown dtype; n negative or too large);
 *  FO_ERR_BAD_POINTER (src or dst not aligned to the size of its
 *  elements); FO_ERR_OVERLAP (src and dst overlap). */
FO_API fo_status fo_convert_from_f32(fo_dtype dtype, const float *src, void *dst, int64_t n);
FO_API fo_status fo_convert_to_f32(fo_dtype dtype, const void *src, float *dst, int64_t n);

/** Whether a usable CUDA device exists: FO_SUCCESS with *count set to the
 *  number of devices.
 *  Statuses: FO_ERR_NULL_POINTER (count is NULL); FO_ERR_NO_DEVICE (no
 *  driver, a driver too old, no device, or a library built without CUDA,
 *  FO_ENABLE_CUDA=OFF: the reason in fo_last_error()). */
FO_API fo_status fo_cuda_device_count(int *count);

#ifdef __cplusplus
}
#endif

#endif /* FUSEDOPT_H */
