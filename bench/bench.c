/*
 * bench.c -- fusedopt's benchmark: the fused step against a copy of the
 * same bytes (the memory-bandwidth limit) and against a naive per-tensor
 * step, over tensor lists from real models, for every algorithm and dtype
 * configuration; prints a table and writes CSV.  docs/performance.md has
 * the method, the bytes model and the figures.
 *
 *   bench [--list a,b,c,d|all]
 *         [--alg adamw,adam,sgd,lion,adagrad,rmsprop,nadam,lamb,lars|all]
 *         [--config fp32,bf16-master,bf16,fp32-clip,bf16-master-clip|all]
 *         [--reps N] [--warmup N]
 *         [--csv FILE] [--cpu [--threads N]] ...        (--help for all)
 *
 * Without --cpu it runs on CUDA device 0; without a usable device it says
 * so in one line and exits 0.  Exit status: 0, 1 on an error, 2 when a
 * correctness check failed.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

#define MIB ((int64_t)1 << 20)
/* Bytes per parameter of the largest input set of any configuration here
 * (fp32 or bf16 + master AdamW), for sizing lists b and c to the memory. */
#define MAX_FOOTPRINT 16

typedef struct args {
  const char *lists, *algs, *configs, *csv;
  bench_opts o;
  int cpu, threads, graph_all;
  int64_t huge;
  int layers;
} args;

void bench_die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "bench: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  exit(1);
}

void bench_fo_check(fo_status st, const char *what, const char *file, int line) {
  if (st != FO_SUCCESS)
    bench_die("%s:%d: %s: %s: %s", file, line, what, fo_status_string(st), fo_last_error());
}

/* ---------------------------------------------------------- arguments */

static void usage(FILE *f) {
  fprintf(f,
          "usage: bench [options]\n"
          "  --list L      tensor lists, comma-separated: a (GPT-2 124M), b (Llama-7B\n"
          "                layers), c (one huge tensor), d (4096 tiny tensors), m (a\n"
          "                4-tensor MLP: latency), or all (default: all on CUDA, c,a\n"
          "                with --cpu)\n"
          "  --alg A       adamw, adam, sgd (momentum 0.9), lion, adagrad, rmsprop\n"
          "                (momentum 0.9), nadam, lamb, lars, or all (default all)\n"
          "  --config C    fp32, bf16-master, bf16, fp32-clip, bf16-master-clip (clipping\n"
          "                and loss scaling on: one more read of the gradients), or all\n"
          "                (default all)\n"
          "  --reps N      timed steps per measurement, median reported (default 50,\n"
          "                10 with --cpu)\n"
          "  --warmup N    untimed steps first (default 5, 2 with --cpu)\n"
          "  --check-steps N  steps of the correctness check (default 4)\n"
          "  --sets N      input sets to rotate among (default: from the cache size)\n"
          "  --csv FILE    also write the rows as CSV\n"
          "  --cpu         benchmark the CPU executor instead of the CUDA one\n"
          "  --threads N   CPU executor threads (default: every core)\n"
          "  --huge N      elements of list c (default 256M on CUDA or what fits,\n"
          "                64M with --cpu)\n"
          "  --layers N    layers of list b (default: as many as fit, at most 32)\n"
          "  --graph       graph-replay rows for every list (default: list a only)\n"
          "  --no-naive    skip the naive baseline\n");
}

static int known(const char *name, const char *const *names, int n) {
  for (int i = 0; i < n; i++)
    if (!strcmp(name, names[i])) return 1;
  return !strcmp(name, "all");
}

/* Whether name is in the comma-separated spec ("all" selects everything). */
static int selected(const char *spec, const char *name) {
  char buf[256];
  snprintf(buf, sizeof buf, "%s", spec);
  for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
    if (!strcmp(tok, "all") || !strcmp(tok, name)) return 1;
  return 0;
}

/* Every name in spec must be one of names (or "all"). */
static void validate(const char *flag, const char *spec, const char *const *names, int n) {
  char buf[256];
  snprintf(buf, sizeof buf, "%s", spec);
  for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
    if (!known(tok, names, n)) bench_die("%s: unknown value '%s' (--help lists them)", flag, tok);
}

static long long int_arg(const char *flag, const char *v, long long min) {
  char *end = NULL;
  const long long x = v ? strtoll(v, &end, 10) : 0;
  if (!v || *end || x < min) bench_die("%s needs an integer >= %lld", flag, min);
  return x;
}

static void parse(int argc, char **argv, args *a) {
  memset(a, 0, sizeof *a);
  a->algs = a->configs = "all";
  a->o = (bench_opts){.reps = -1, .warmup = -1, .check_steps = 4, .naive = 1};
  for (int i = 1; i < argc; i++) {
    const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(f, "--help") || !strcmp(f, "-h")) usage(stdout), exit(0);
    else if (!strcmp(f, "--cpu")) a->cpu = 1;
    else if (!strcmp(f, "--graph")) a->graph_all = 1;
    else if (!strcmp(f, "--no-naive")) a->o.naive = 0;
    else if (!v) bench_die("unknown option or missing value: %s", f);
    else if (!strcmp(f, "--list")) a->lists = v, i++;
    else if (!strcmp(f, "--alg")) a->algs = v, i++;
    else if (!strcmp(f, "--config")) a->configs = v, i++;
    else if (!strcmp(f, "--csv")) a->csv = v, i++;
    else if (!strcmp(f, "--reps")) a->o.reps = (int)int_arg(f, v, 1), i++;
    else if (!strcmp(f, "--warmup")) a->o.warmup = (int)int_arg(f, v, 0), i++;
    else if (!strcmp(f, "--check-steps")) a->o.check_steps = (int)int_arg(f, v, 1), i++;
    else if (!strcmp(f, "--sets")) a->o.sets = (int)int_arg(f, v, 1), i++;
    else if (!strcmp(f, "--threads")) a->threads = (int)int_arg(f, v, 1), i++;
    else if (!strcmp(f, "--huge")) a->huge = int_arg(f, v, 1), i++;
    else if (!strcmp(f, "--layers")) a->layers = (int)int_arg(f, v, 1), i++;
    else bench_die("unknown option: %s (--help lists them)", f);
  }
  if (!a->lists) a->lists = a->cpu ? "c,a" : "all";
  if (a->o.reps < 0) a->o.reps = a->cpu ? 10 : 50;
  if (a->o.warmup < 0) a->o.warmup = a->cpu ? 2 : 5;
  static const char *const lists[] = {"a", "b", "c", "d", "m"};
  static const char *const configs[] = {"fp32", "bf16-master", "bf16", "fp32-clip",
                                        "bf16-master-clip"};
  const char *algs[FO_ALG_COUNT]; /* the library's own names */
  for (int i = 0; i < FO_ALG_COUNT; i++) algs[i] = fo_algorithm_string((fo_algorithm)i);
  validate("--list", a->lists, lists, 5);
  validate("--alg", a->algs, algs, FO_ALG_COUNT);
  validate("--config", a->configs, configs, 5);
}

/* ------------------------------------------------------------ the run */

/* Lists b and c as large as asked, or as fit in 85% of the free memory
 * (the rest for the plan, the copy's rotation and the runtime). */
static bench_sizes choose_sizes(const bench_backend *b, const args *a) {
  bench_sizes s;
  const int64_t usable = (int64_t)(b->free_bytes / 100 * 85);
  s.huge_numel = a->huge > 0 ? a->huge : (a->cpu ? 64 : 256) * MIB;
  if (a->huge <= 0 && s.huge_numel * MAX_FOOTPRINT > usable)
    s.huge_numel = usable / MAX_FOOTPRINT / MIB * MIB;
  int64_t layers = usable / (MAX_FOOTPRINT * bench_llama_layer_params());
  s.llama_layers = a->layers > 0 ? a->layers : (int)(layers > 32 ? 32 : layers);
  return s;
}

/* Every selected (alg, config) row of one list; returns the failed checks. */
static int run_list(const bench_backend *b, const bench_list *l, const args *a) {
  bench_opts o = a->o;
  o.graph = a->graph_all || !strcmp(l->name, "a");
  int failed = 0;
  printf("# list %s: %s, %lld tensors, %lld parameters\n", l->name, l->what,
         (long long)l->count, (long long)l->params);
  for (int i = 0; i < bench_num_algs; i++) {
    if (!selected(a->algs, bench_alg_name(bench_algs[i]))) continue;
    for (int j = 0; j < bench_num_configs; j++) {
      if (!selected(a->configs, bench_configs[j].name)) continue;
      bench_result r;
      bench_run_row(b, l, bench_algs[i], &bench_configs[j], &o, &r);
      bench_table_row(&r);
      bench_csv_row(b, &r);
      failed += !r.check_ok;
    }
  }
  return failed;
}

static int run_all(const bench_backend *b, const args *a) {
  const bench_sizes sizes = choose_sizes(b, a);
  static const char *const names[] = {"a", "b", "c", "d", "m"};
  int failed = 0;
  for (int i = 0; i < 5; i++) {
    if (!selected(a->lists, names[i])) continue;
    if (!strcmp(names[i], "b") && sizes.llama_layers < 1) {
      printf("# list b skipped: not one Llama-7B layer (%.1f GB) fits\n",
             bench_llama_layer_params() * MAX_FOOTPRINT / 1e9);
      continue;
    }
    bench_list l;
    if (bench_list_make(names[i], &sizes, &l)) bench_die("unknown list %s", names[i]);
    failed += run_list(b, &l, a);
    bench_list_free(&l);
  }
  return failed;
}

int main(int argc, char **argv) {
  args a;
  parse(argc, argv, &a);
  bench_backend b;
  if (a.cpu) {
    bench_backend_cpu(&b, a.threads);
  } else {
    const char *why = "";
    if (bench_backend_cuda(&b, &why)) {
      printf("bench: no usable CUDA device (%s): CUDA benchmark skipped; --cpu runs the "
             "CPU executor's\n", why);
      return 0;
    }
  }
  bench_table_header(&b, &a.o);
  bench_csv_open(a.csv, &b);
  const int failed = run_all(&b, &a);
  bench_csv_close();
  if (failed) printf("# %d correctness checks FAILED\n", failed);
  return failed ? 2 : 0;
}
