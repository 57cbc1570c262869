/*
 * report.c -- the median, the table (nccl-tests style: one line per row,
 * fixed columns, '#' before everything that is not a row) and the CSV.
 *
 * Effective bandwidth = counted bytes / time; "of copy" is that over the
 * reference copy's bandwidth measured in the same row; speed-up is the
 * naive step's time over the fused step's.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

static int cmp_double(const void *a, const void *b) {
  const double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

double bench_median(double *x, int n) {
  if (n <= 0) return 0.0;
  qsort(x, (size_t)n, sizeof *x, cmp_double);
  return n % 2 ? x[n / 2] : 0.5 * (x[n / 2 - 1] + x[n / 2]);
}

/* GB/s of bytes in us microseconds; 0 when not measured. */
static double gbps(int64_t bytes, double us) { return us > 0.0 ? bytes / us * 1e-3 : 0.0; }

static double copy_gbps(const bench_result *r) { return gbps(r->copy_bytes, r->copy_us); }

static double of_copy(const bench_result *r, double us) {
  const double c = copy_gbps(r);
  return c > 0.0 && us > 0.0 ? gbps(r->bytes, us) / c : 0.0;
}

void bench_table_header(const bench_backend *b, const bench_opts *o) {
  printf("# fusedopt bench: %s executor on %s\n", b->name, b->device);
  printf("# median of %d steps after %d warm-up steps; inputs rotate among sets of "
         "buffers (sets column); check: %d fused vs %d naive steps\n",
         o->reps, o->warmup, o->check_steps, o->check_steps);
  printf("#\n");
  printf(
      "# %-4s %-7s %-16s %7s %11s %10s %4s | %8s | %10s %8s %7s | %10s %8s %7s | %10s %8s | %s\n",
      "list", "alg", "config", "tensors", "params", "bytes(MB)", "sets", "copyGB/s", "fused(us)",
      "GB/s", "ofcopy", "graph(us)", "GB/s", "ofcopy", "naive(us)", "speedup", "check");
}

/* A time column: blank when not measured. */
static void print_time(double us, int64_t bytes, double ratio) {
  if (us > 0.0)
    printf(" | %10.1f %8.1f %7.3f", us, gbps(bytes, us), ratio);
  else
    printf(" | %10s %8s %7s", "-", "-", "-");
}

void bench_table_row(const bench_result *r) {
  printf("  %-4s %-7s %-16s %7lld %11lld %10.1f %4d | %8.1f", r->list->name, bench_alg_name(r->alg),
         r->config->name, (long long)r->list->count, (long long)r->list->params, r->bytes / 1e6,
         r->sets, copy_gbps(r));
  print_time(r->fused_us, r->bytes, of_copy(r, r->fused_us));
  print_time(r->graph_us, r->bytes, of_copy(r, r->graph_us));
  if (r->naive_us > 0.0)
    printf(" | %10.1f %8.2f", r->naive_us, r->naive_us / r->fused_us);
  else
    printf(" | %10s %8s", "-", "-");
  printf(" | %s %.1e\n", r->check_ok ? "ok" : "FAIL", r->check_err);
  fflush(stdout);
}

/* ------------------------------------------------------------------ CSV */

static FILE *csv;
static char csv_device[192];

void bench_csv_open(const char *path, const bench_backend *b) {
  if (!path) return;
  csv = fopen(path, "w");
  if (!csv) bench_die("cannot write %s", path);
  /* the device's name goes in a CSV field: no commas */
  snprintf(csv_device, sizeof csv_device, "%s", b->device);
  for (char *c = csv_device; *c; c++)
    if (*c == ',') *c = ';';
  fprintf(csv, "backend,device,list,what,alg,config,label,tensors,params,bytes,sets,"
               "copy_bytes,copy_us,copy_gbps,fused_us,fused_gbps,fused_of_copy,"
               "graph_us,graph_gbps,graph_of_copy,naive_us,naive_gbps,speedup,"
               "check_err,check_tol,check\n");
}

/* A measured value, or an empty field. */
static void csv_value(double x, const char *fmt) {
  fputc(',', csv);
  if (x > 0.0) fprintf(csv, fmt, x);
}

void bench_csv_row(const bench_backend *b, const bench_result *r) {
  if (!csv) return;
  fprintf(csv, "%s,%s,%s,%s,%s,%s,%s/%s/%s,%lld,%lld,%lld,%d,%lld", b->name, csv_device,
          r->list->name, r->list->what, bench_alg_name(r->alg), r->config->name,
          r->list->name, bench_alg_name(r->alg), r->config->name, (long long)r->list->count,
          (long long)r->list->params, (long long)r->bytes, r->sets, (long long)r->copy_bytes);
  csv_value(r->copy_us, "%.2f");
  csv_value(copy_gbps(r), "%.2f");
  csv_value(r->fused_us, "%.2f");
  csv_value(gbps(r->bytes, r->fused_us), "%.2f");
  csv_value(of_copy(r, r->fused_us), "%.4f");
  csv_value(r->graph_us, "%.2f");
  csv_value(gbps(r->bytes, r->graph_us), "%.2f");
  csv_value(of_copy(r, r->graph_us), "%.4f");
  csv_value(r->naive_us, "%.2f");
  csv_value(gbps(r->bytes, r->naive_us), "%.2f");
  csv_value(r->naive_us > 0.0 ? r->naive_us / r->fused_us : 0.0, "%.3f");
  fprintf(csv, ",%.3e,%.1e,%s\n", r->check_err, r->check_tol, r->check_ok ? "ok" : "FAIL");
  fflush(csv);
}

void bench_csv_close(void) {
  if (csv) fclose(csv);
  csv = NULL;
}
