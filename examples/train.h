/*
 * train.h -- the pieces of examples/train: flags, the digits data set, the
 * MLP's shape, the processes of a data-parallel run, the two compute
 * engines (CPU loops, CUDA + cuBLAS), the training loop, the quadratic
 * bowl, and the report (CSV, gnuplot).
 *
 * Conventions: a function that can fail returns 0 on success and non-zero
 * on failure, after printing one line "train: ..." to stderr.  Nothing here
 * keeps global mutable state; everything lives in the structs below.
 */
#ifndef FO_TRAIN_H
#define FO_TRAIN_H

#include <stddef.h>
#include <stdint.h>

#include "fusedopt.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------ limits */

#define TRAIN_FEATURES 64 /* 8x8 pixels */
#define TRAIN_CLASSES 10  /* digits 0..9 */
#define TRAIN_MAX_HIDDEN_LAYERS 8
#define TRAIN_MAX_LINEAR (TRAIN_MAX_HIDDEN_LAYERS + 1)
#define TRAIN_MAX_TENSORS (2 * TRAIN_MAX_LINEAR) /* a weight and a bias each */
#define TRAIN_MAX_WIDTH 4096
#define BOWL_MAX_DIM 64

/* Exit statuses. */
enum {
  EXIT_TRAIN_OK = 0,
  EXIT_TRAIN_FAILED = 1, /* a run-time failure: data file, library, CUDA */
  EXIT_TRAIN_USAGE = 2,  /* a bad flag or value */
  EXIT_TRAIN_NO_GPU = 3  /* --device cuda (or --graph) without a usable GPU */
};

/* ------------------------------------------------------------- flags */

typedef enum train_device { DEVICE_AUTO = 0, DEVICE_CPU = 1, DEVICE_CUDA = 2 } train_device;

/* The optimizers of --opt; nesterov is SGD with Nesterov momentum. */
typedef enum opt_kind {
  OPT_SGD = 0,
  OPT_NESTEROV,
  OPT_ADAM,
  OPT_ADAMW,
  OPT_LION,
  OPT_ADAGRAD,
  OPT_RMSPROP,
  OPT_NADAM,
  OPT_LAMB,
  OPT_LARS,
  OPT_COUNT
} opt_kind;

/* The schedules of --schedule, in fo_schedule_kind's order. */
typedef enum sched_choice {
  SCHED_CONSTANT = 0,
  SCHED_COSINE,
  SCHED_STEP,
  SCHED_EXPONENTIAL,
  SCHED_RESTARTS,
  SCHED_CYCLIC
} sched_choice;

typedef enum precision_choice { PREC_FP32 = 0, PREC_BF16, PREC_FP16 } precision_choice;

/* Everything the command line sets.  Optional numbers not given are NaN
 * (floats) or -1 (integers); the defaults are filled in where used. */
typedef struct train_config {
  int bowl, compare, graph, plot;
  int zero;      /* several processes: shard the optimizer state (ZeRO-1) */
  int device;    /* train_device */
  int opt;       /* opt_kind */
  int schedule;  /* sched_choice */
  int precision; /* precision_choice */
  const char *data_path, *out_dir, *trajectory_path;
  long layers, hidden, epochs, batch, warmup, steps;
  uint64_t seed;
  double val_frac;
  double lr, wd, momentum, beta1, beta2, clip;
  int n_coeffs, n_start;
  double coeffs[BOWL_MAX_DIM], start[BOWL_MAX_DIM];
} train_config;

/* Parses argv into *cfg.  Returns 0, EXIT_TRAIN_USAGE after printing one
 * line, or -1 after printing the help (exit 0). */
int parse_args(int argc, char **argv, train_config *cfg);

const char *opt_name(int opt);
const char *precision_name(int precision);
const char *schedule_name(int schedule);
fo_dtype precision_dtype(int precision);

/* ---------------------------------------------------------- optimizer */

/* Prints "train: <call>: <status>: <fo_last_error()>" and returns 1 when
 * st is a failure; 0 otherwise. */
int train_failed(fo_status st, const char *call);

fo_algorithm opt_algorithm(int opt);
/* Whether the optimizer reads momentum (SGD, Nesterov, LARS) or betas. */
int opt_has_momentum(int opt);
int opt_has_betas(int opt);
/* The hyper-parameters of the weights' group from the flags and the
 * optimizer's defaults (which differ for the bowl); the biases' group is
 * the same without weight decay. */
void make_hparams(const train_config *cfg, int opt, fo_hparams *weights, fo_hparams *biases);
/* The schedule from --schedule and --warmup over total_steps steps;
 * default_warmup when --warmup is not given.  Returns 0 or EXIT_TRAIN_USAGE
 * after printing why. */
int make_schedule(const train_config *cfg, int64_t total_steps, int64_t default_warmup,
                  fo_schedule *out);

/* -------------------------------------------------------------- data */

typedef struct dataset {
  int n;    /* rows */
  float *x; /* n x TRAIN_FEATURES, in [0, 1] */
  int *y;   /* n labels in [0, TRAIN_CLASSES) */
} dataset;

typedef struct data_split {
  dataset train, val;
} data_split;

/* Reads the digits CSV (gzip or plain): 64 integers 0..16 and a label per
 * line. */
int load_digits(const char *path, dataset *out);
/* A seeded shuffle, then the last round(n * val_frac) rows validate. */
int split_dataset(const dataset *all, double val_frac, uint64_t seed, data_split *out);
void dataset_free(dataset *d);

/* splitmix64: the program's only random numbers, always from an explicit
 * state. */
uint64_t rng_next(uint64_t *state);
float rng_normal(uint64_t *state);
void shuffle_ints(int *v, int n, uint64_t *state);

/* ------------------------------------------------------------- world */

/* The processes of a run (train_world.c).  Built with MPI (FO_TRAIN_MPI)
 * and started by an MPI launcher (mpirun -np N), the world is
 * MPI_COMM_WORLD: every rank takes its share of each batch, the library
 * averages the gradients through comm, and only rank 0 prints (the other
 * ranks' stdout goes to /dev/null) and writes files.  Otherwise it is one
 * process, rank 0 of 1, and MPI is never initialised. */
typedef struct train_world {
  int rank, size;             /* in MPI_COMM_WORLD; 0 and 1 without MPI */
  int local_rank, local_size; /* among the ranks on this node */
  int mpi;                    /* MPI_Init was called (MPI_Finalize is due) */
  int device;                 /* the GPU engine's CUDA device */
  int saved_stderr;           /* world_quiet's copy of fd 2, or -1 */
  fo_comm *comm;              /* averages the gradients; NULL in one process */
} train_world;

/* Initialises MPI when started by an MPI launcher and the build has MPI.
 * Returns 0 or an exit status after printing why. */
int world_init(int *argc, char ***argv, train_world *w);
void world_finalize(train_world *w);
/* On ranks other than 0, sends stderr to /dev/null (on) or back (off):
 * around the steps that fail alike on every rank (the flags, the plan), so
 * that a usage error is one line, not one per rank. */
void world_quiet(train_world *w, int on);
/* The largest of every rank's rc: every rank then takes the same branch. */
int world_agree(const train_world *w, int rc);
/* Whether ok is non-zero on every rank. */
int world_all(const train_world *w, int ok);
/* Sums v[0..n) over the ranks, in place. */
void world_sum(const train_world *w, double *v, int n);
/* Whether every rank passed the same value. */
int world_same(const train_world *w, uint64_t v);
/* The CPU executor's threads for one rank: the CPUs this process may run
 * on, shared by the ranks of its node; 0 (every core) in one process. */
int world_cpu_threads(const train_world *w);
/* Creates w->comm when there are several ranks: over MPI for the CPU
 * executor, NCCL bootstrapped through MPI on w->device for the CUDA one.
 * Collective.  Returns 0 or EXIT_TRAIN_FAILED after printing why. */
int world_create_comm(train_world *w, int cuda);
void world_destroy_comm(train_world *w);
/* After a failure on this rank when the others may be waiting in a
 * collective: ends every rank with status rc (MPI_Abort).  Returns in one
 * process. */
void world_abort(const train_world *w, int rc);

/* --------------------------------------------------------------- net */

/* A stack of linear layers: dim[0] = 64 inputs, dim[n_linear] = 10 logits,
 * ReLU between them.  Tensor 2l is layer l's weight (dim[l+1] x dim[l],
 * row-major, as torch.nn.Linear), tensor 2l+1 its bias. */
typedef struct net_shape {
  int n_linear;
  int dim[TRAIN_MAX_LINEAR + 1];
} net_shape;

int64_t net_tensor_numel(const net_shape *net, int tensor);
int net_num_tensors(const net_shape *net);
int64_t net_num_params(const net_shape *net);
/* The largest layer width, inputs included. */
int net_max_width(const net_shape *net);

/* Element offsets of every tensor inside one arena role, and the arena's
 * length in elements, so one buffer of that many floats mirrors the arena
 * with the same layout. */
typedef struct arena_layout {
  void *base;
  int64_t elems;
  int64_t offset[TRAIN_MAX_TENSORS];
} arena_layout;

int get_arena_layout(fo_optimizer *opt, fo_role role, fo_dtype dtype, int num_tensors,
                     arena_layout *out);

/* The optimizer's loss-scale pointer (executor memory), or NULL when loss
 * scaling is off. */
int find_loss_scale(fo_optimizer *opt, const float **out);

/* ----------------------------------------------------------- engines */

/* What an engine is built from.  The optimizer owns the parameters and
 * gradients (arena storage, in the engine's memory); the engine owns the
 * activations, the fp32 mirrors of 16-bit arenas and the validation set. */
typedef struct engine_setup {
  const net_shape *net;
  fo_optimizer *opt;
  fo_dtype dtype; /* of the parameters and gradients */
  int batch;      /* this rank's rows of every training step */
  /* The loss gradient of each row is weighted (loss scale x ranks) /
   * global_batch: the library divides the sum over the ranks by ranks, so
   * the step sees the mean over the global batch (1 / batch in one
   * process). */
  int ranks, global_batch;
  int device;         /* CUDA device (GPU only) */
  int graph;          /* capture the step as a CUDA graph (GPU only) */
  const dataset *val; /* this rank's validation rows */
} engine_setup;

/* A compute engine: forward, backward (into the optimizer's gradients)
 * and the optimizer's step.  The handle is the engine's own struct. */
typedef struct engine_ops {
  const char *name;
  int (*create)(const engine_setup *setup, void **out);
  /* Writes the initial fp32 values of every tensor into the parameters
   * (and the master weights). */
  int (*write_params)(void *engine, float *const init[]);
  /* One training step on a batch of setup->batch rows (host memory). */
  int (*train_step)(void *engine, const float *x, const int *y);
  /* The sum of the per-sample training losses since the last call. */
  int (*take_loss_sum)(void *engine, double *sum);
  /* Correct predictions on the validation rows with the current weights. */
  int (*evaluate)(void *engine, int *correct);
  /* Copies bytes of the engine's memory (an arena of the optimizer's) to
   * the host. */
  int (*read_back)(void *engine, void *host, const void *src, size_t bytes);
  void (*destroy)(void *engine);
} engine_ops;

extern const engine_ops cpu_engine_ops;
extern const engine_ops gpu_engine_ops;

/* ------------------------------------------------------------- train */

/* One line of the curves: the state at the end of an epoch. */
typedef struct epoch_record {
  int epoch;
  int64_t step;
  double train_loss, val_acc, lr, loss_scale, samples_per_s;
  int64_t skipped;
} epoch_record;

typedef struct run_result {
  int opt;
  double lr, wd;
  int epochs;
  epoch_record *history; /* epochs records */
  int correct, n_val;
  double seconds; /* training time, evaluation excluded */
} run_result;

/* The resolved parts of a run that the flags leave open. */
typedef struct run_plan {
  const train_config *cfg;
  const data_split *data;
  const engine_ops *engine;
  const train_world *world;
  net_shape net;
  int steps_per_epoch;
  int shard_start, shard_rows; /* this rank's slice of every batch */
  dataset val_shard;           /* this rank's slice of the validation set */
  int verbose;                 /* print a line per epoch */
} run_plan;

/* Checks the flags against the data and the world (every rank reaches the
 * same verdict) and splits batches and the validation set over the ranks. */
int plan_run(const train_config *cfg, const data_split *data, const engine_ops *engine,
             const train_world *world, run_plan *out);
/* The warmup without --warmup: one epoch, at most a fifth of the run. */
int64_t default_warmup(const run_plan *p);
/* Trains the MLP with one optimizer; out->history is malloc'ed. */
int train_run(const run_plan *plan, int opt, run_result *out);
void run_result_free(run_result *r);

/* Picks the engine for --device, the same on every rank (the CUDA engine
 * needs a device for each rank of a node), and w->device; prints why when
 * it falls back to the CPU.  Returns 0 or an exit status. */
int resolve_engine(const train_config *cfg, train_world *w, const engine_ops **out);

/* The quadratic bowl (--bowl). */
int run_bowl(const train_config *cfg);

/* ------------------------------------------------------------ report */

/* The size of every path the program builds under --out, and the room a
 * name needs in it: ensure_dir refuses an --out that leaves less, so no
 * file name is ever cut short ("train_nesterov.csv", "compare.gp", ...). */
#define TRAIN_PATH_BYTES 4096
#define TRAIN_OUT_NAME_ROOM 64

/* Creates dir and its parents; 1 after printing why it cannot. */
int ensure_dir(const char *dir);
int write_history_csv(const char *path, const run_result *r);
int write_compare_csv(const char *path, const run_result *runs, int n);
/* Writes a gnuplot script next to the CSVs and runs gnuplot on it when it
 * is installed; prints where the plot or the CSV is. */
void plot_run(const char *out_dir, const run_result *r, int want_plot);
void plot_compare(const char *out_dir, const run_result *runs, int n, int want_plot);
/* A run whose final loss (what: "training loss", "loss") is not finite
 * still did as asked (exit 0; its CSV and RESULT line show it), but gets
 * one line on stderr, after what stdout printed. */
void warn_if_diverged(int opt, const char *what, double loss, double lr);

#ifdef __cplusplus
}
#endif

#endif /* FO_TRAIN_H */
