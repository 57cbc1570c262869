/*
 * backend_cpu.c -- the CPU benchmark (bench --cpu): host memory, the CPU
 * executor, wall-clock marks, and a memcpy split over as many threads as
 * the executor uses as the reference (the executor's bandwidth comes from
 * all of its threads, so the limit it is held to must too).
 */
#define _POSIX_C_SOURCE 200809L
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench.h"
#include "values.h"

#define PAGE 4096

static int cpu_threads;
static double *marks;
static int nmarks;

static void *cpu_alloc(size_t bytes) {
  const size_t rounded = (bytes + PAGE - 1) / PAGE * PAGE;
  void *p = aligned_alloc(PAGE, rounded ? rounded : PAGE);
  if (!p) bench_die("out of host memory (%.2f GB)", bytes / 1e9);
  return p;
}

static void cpu_release(void *p) { free(p); }

/* Filled in parallel: the first touch of a page is then also spread over
 * the threads that will use it. */
static void cpu_fill(void *dst, fo_dtype dtype, int64_t n, uint64_t seed, float scale) {
  if (dtype == FO_DTYPE_F32) {
    float *d = dst;
#pragma omp parallel for schedule(static) num_threads(cpu_threads)
    for (int64_t i = 0; i < n; i++) d[i] = bv_value(seed, (uint64_t)i, scale);
  } else {
    uint16_t *d = dst;
#pragma omp parallel for schedule(static) num_threads(cpu_threads)
    for (int64_t i = 0; i < n; i++) d[i] = bv_f32_to_bf16(bv_value(seed, (uint64_t)i, scale));
  }
}

static void cpu_zero(void *p, size_t bytes) { memset(p, 0, bytes); }

static void cpu_download(void *host, const void *src, size_t bytes) {
  memcpy(host, src, bytes);
}

/* One contiguous slice per thread, on 64-byte boundaries. */
static void cpu_copy(void *dst, const void *src, size_t bytes) {
#pragma omp parallel num_threads(cpu_threads)
  {
    const size_t t = (size_t)omp_get_thread_num(), nt = (size_t)omp_get_num_threads();
    const size_t per = (bytes / nt + 63) / 64 * 64;
    const size_t lo = t * per < bytes ? t * per : bytes;
    const size_t hi = lo + per < bytes ? lo + per : bytes;
    if (hi > lo) memcpy((char *)dst + lo, (const char *)src + lo, hi - lo);
  }
}

static void cpu_naive(const naive_tensor *t, int64_t n, const naive_step_args *a) {
  naive_step_cpu(t, n, a);
}

static void cpu_sync(void) {}

static double now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e6 + ts.tv_nsec * 1e-3;
}

static void cpu_timer_begin(int n) {
  if (n > nmarks) {
    free(marks);
    marks = malloc((size_t)n * sizeof *marks);
    if (!marks) bench_die("out of host memory");
    nmarks = n;
  }
}

static void cpu_timer_mark(int i) { marks[i] = now_us(); }

static void cpu_timer_read(double *us, int n) {
  for (int i = 0; i < n; i++) us[i] = marks[i + 1] - marks[i];
}

/* ---------------------------------------------------- the machine */

/* The last-level cache from sysfs (index3 is L3 on x86), else 32 MiB. */
static size_t llc_bytes(void) {
  FILE *f = fopen("/sys/devices/system/cpu/cpu0/cache/index3/size", "r");
  unsigned long kb = 0;
  if (f) {
    if (fscanf(f, "%luK", &kb) != 1) kb = 0;
    fclose(f);
  }
  return kb ? (size_t)kb * 1024 : (size_t)32 << 20;
}

/* MemAvailable from /proc/meminfo (free memory plus what the page cache
 * would give back), else 4 GiB. */
static size_t available_bytes(void) {
  FILE *f = fopen("/proc/meminfo", "r");
  char line[256];
  unsigned long kb = 0;
  while (f && fgets(line, sizeof line, f))
    if (sscanf(line, "MemAvailable: %lu kB", &kb) == 1) break;
  if (f) fclose(f);
  return kb ? (size_t)kb * 1024 : (size_t)4 << 30;
}

static void cpu_model(char *out, size_t size) {
  FILE *f = fopen("/proc/cpuinfo", "r");
  char line[256];
  snprintf(out, size, "unknown CPU");
  while (f && fgets(line, sizeof line, f)) {
    char *colon = strchr(line, ':');
    if (strncmp(line, "model name", 10) || !colon) continue;
    snprintf(out, size, "%s", colon + 2);
    out[strcspn(out, "\n")] = '\0';
    break;
  }
  if (f) fclose(f);
}

void bench_backend_cpu(bench_backend *b, int threads) {
  char model[96];
  memset(b, 0, sizeof *b);
  cpu_threads = threads > 0 ? threads : omp_get_max_threads();
  cpu_model(model, sizeof model);
  b->name = "cpu";
  snprintf(b->device, sizeof b->device, "%s, %d thread%s", model, cpu_threads,
           cpu_threads == 1 ? "" : "s");
  b->executor = FO_EXEC_CPU;
  b->stream = NULL;
  b->cache_bytes = llc_bytes();
  b->free_bytes = available_bytes();
  b->threads = cpu_threads;
  b->interleave = 1;
  b->alloc = cpu_alloc;
  b->release = cpu_release;
  b->fill = cpu_fill;
  b->zero = cpu_zero;
  b->download = cpu_download;
  b->copy = cpu_copy;
  b->naive_step = cpu_naive;
  b->sync = cpu_sync;
  b->timer_begin = cpu_timer_begin;
  b->timer_mark = cpu_timer_mark;
  b->timer_read = cpu_timer_read;
}
