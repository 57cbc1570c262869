/*
 * bench.h -- what the benchmark's files share: tensor lists, configurations,
 * the bytes model, the backend (CUDA or CPU) and the result of one row.
 *
 * The benchmark uses only the public API (include/fusedopt.h): it measures
 * what a user gets.  One row is (tensor list, algorithm, dtype
 * configuration); per row it times a reference copy of the counted bytes,
 * the fused step (eagerly, and replayed from a CUDA graph where asked), a
 * naive per-tensor per-operation step, and checks the fused result against
 * the naive one (run.c).  docs/performance.md describes the method.
 */
#ifndef BENCH_H
#define BENCH_H

#include <stddef.h>
#include <stdint.h>

#include "fusedopt.h"
#include "naive.h"

/* Exit with a message when a fusedopt call fails: a benchmark that goes on
 * after an error measures nothing. */
#define FO_CHECK(call) bench_fo_check((call), #call, __FILE__, __LINE__)
void bench_fo_check(fo_status st, const char *what, const char *file, int line);
/* Print to stderr and exit(1). */
void bench_die(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2), noreturn))
#endif
    ;

/* ------------------------------------------------------------ tensor lists */

typedef struct bench_tensor {
  int64_t numel;
  int group; /* 0: matrices (weight decay), 1: biases and norms (none) */
} bench_tensor;

typedef struct bench_list {
  char name[8];       /* "a" .. "d", "m" */
  char what[64];      /* "GPT-2 124M", "Llama-7B x 23 layers", ... */
  bench_tensor *tensors;
  int64_t count;
  int64_t params;     /* sum of numel */
  int num_groups;
} bench_list;

/* Element counts chosen from the command line or from the memory there is. */
typedef struct bench_sizes {
  int64_t huge_numel; /* list c */
  int llama_layers;   /* list b */
} bench_sizes;

/* Build list name ("a".."d", "m") into *out; returns 0, or -1 for an unknown
 * name.  Free with bench_list_free(). */
int bench_list_make(const char *name, const bench_sizes *sizes, bench_list *out);
void bench_list_free(bench_list *l);
/* Parameters of one Llama-7B-style decoder layer (list b). */
int64_t bench_llama_layer_params(void);

/* ----------------------------------------------- configurations and bytes */

typedef struct bench_config {
  const char *name; /* "fp32", "bf16-master", "bf16", "fp32-clip", "bf16-master-clip" */
  fo_dtype param;
  fo_dtype grad;
  int master; /* fp32 master weights */
  /* Global-norm clipping and dynamic loss scaling on: the step's pre-pass
   * reads every gradient once more (model.c) */
  int clip;
} bench_config;

extern const bench_config bench_configs[];
extern const int bench_num_configs;
extern const fo_algorithm bench_algs[];
extern const int bench_num_algs;
const char *bench_alg_name(fo_algorithm alg);

/* Bytes one step must move per parameter (each input read once, each
 * output written once): model.c has the formula. */
int64_t bench_bytes_per_param(fo_algorithm alg, const bench_config *c);
/* Bytes of memory one input set holds per parameter (params, grads, state). */
int64_t bench_footprint_per_param(fo_algorithm alg, const bench_config *c);
/* The benchmark's hyper-parameters of group g (PyTorch's defaults, lr 1e-3,
 * SGD momentum 0.9, no decay in group 1). */
void bench_hparams(fo_algorithm alg, int group, fo_hparams *out);
/* The naive step's per-group scalars for its step t (1-based). */
void bench_naive_scalars(fo_algorithm alg, const fo_hparams *h, int64_t t,
                         naive_scalars *out);

/* ----------------------------------------------------------------- backend */

/* What differs between the CUDA and the CPU benchmark.  Every function
 * exits with a message on failure (bench_die). */
typedef struct bench_backend {
  const char *name;    /* "cuda" or "cpu" */
  char device[192];    /* "NVIDIA H100 80GB HBM3", "2 threads, AMD EPYC" */
  fo_executor executor;
  fo_stream_t stream;  /* what steps run on; NULL on the CPU */
  size_t cache_bytes;  /* last-level cache (GPU L2), for the rotation */
  size_t free_bytes;   /* memory free for the benchmark's buffers */
  int threads;         /* CPU executor threads (0 on CUDA) */
  int interleave;      /* time the modes round by round (run.c) */

  void *(*alloc)(size_t bytes);
  void (*release)(void *p);
  /* n values of dtype at dst, uniform in [-scale, scale), a function of
   * (seed, index) only (values.h), identical on both backends. */
  void (*fill)(void *dst, fo_dtype dtype, int64_t n, uint64_t seed, float scale);
  void (*zero)(void *p, size_t bytes);
  /* Copy to host memory; waits for the work queued before it. */
  void (*download)(void *host, const void *src, size_t bytes);
  /* The reference copy of bytes (enqueued on the stream on CUDA). */
  void (*copy)(void *dst, const void *src, size_t bytes);
  void (*naive_step)(const naive_tensor *t, int64_t n, const naive_step_args *a);
  void (*sync)(void);

  /* Timing: timer_begin(n) prepares n marks, timer_mark(i) takes mark i in
   * stream order, timer_read(us, n - 1) waits and writes the n - 1 intervals
   * between consecutive marks in microseconds. */
  void (*timer_begin)(int marks);
  void (*timer_mark)(int i);
  void (*timer_read)(double *us, int intervals);

  /* CUDA only (NULL on the CPU): capture one fo_optimizer_step into a
   * graph, replay it, destroy it. */
  void *(*graph_capture)(fo_optimizer *opt);
  void (*graph_launch)(void *graph);
  void (*graph_destroy)(void *graph);
} bench_backend;

/* Fill *b for the CUDA benchmark; returns 0, or -1 with *why set when no
 * usable device exists (no driver, driver too old, no device). */
int bench_backend_cuda(bench_backend *b, const char **why);
/* Fill *b for the CPU executor with `threads` threads (0: every core). */
void bench_backend_cpu(bench_backend *b, int threads);

/* ------------------------------------------------------------------- rows */

typedef struct bench_opts {
  int reps;
  int warmup;
  int check_steps; /* steps of the correctness comparison */
  int sets;        /* input sets to rotate among; 0: from the cache size */
  int graph;       /* also time a graph-replayed step (CUDA) */
  int naive;       /* also time the naive step */
} bench_opts;

/* What one row measured; times are medians in microseconds, 0 when not
 * measured. */
typedef struct bench_result {
  const bench_list *list;
  fo_algorithm alg;
  const bench_config *config;
  int64_t bytes;      /* counted bytes per step */
  int sets;           /* input sets rotated among */
  int64_t copy_bytes; /* bytes the reference copy moved (read + written) */
  double copy_us;
  double fused_us;
  double graph_us;
  double naive_us;
  /* The largest ||fused - naive|| / ||naive - initial|| over tensors and
   * compared buffers (run.c's check_row) */
  double check_err;
  double check_tol;
  int check_ok; /* also 0 when bf16 parameters or a -clip row's norm differ */
} bench_result;

/* The reference copy (copy.c): a copy of half a row's counted bytes (so it
 * reads and writes them), rotating among `sets` buffer pairs. */
typedef struct bench_copy {
  char *buf;
  int64_t side; /* bytes copied per run */
  int sets;
  int64_t turn;
} bench_copy;
void bench_copy_init(const bench_backend *b, int64_t bytes, bench_copy *c);
void bench_copy_next(const bench_backend *b, bench_copy *c); /* one copy */
void bench_copy_free(const bench_backend *b, bench_copy *c);

/* Measure one row. */
void bench_run_row(const bench_backend *b, const bench_list *l, fo_algorithm alg,
                   const bench_config *c, const bench_opts *o, bench_result *out);

/* ---------------------------------------------------------------- report */

double bench_median(double *x, int n); /* sorts x */
void bench_table_header(const bench_backend *b, const bench_opts *o);
void bench_table_row(const bench_result *r);
/* CSV: one header line, then one line per row; NULL file: no CSV. */
void bench_csv_open(const char *path, const bench_backend *b);
void bench_csv_row(const bench_backend *b, const bench_result *r);
void bench_csv_close(void);

#endif /* BENCH_H */
