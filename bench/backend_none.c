/*
 * backend_none.c -- the CUDA benchmark of a CPU-only build (fusedopt built
 * with FO_ENABLE_CUDA=OFF; docs/install.md): it replaces backend_cuda.c
 * and naive.cu.  There is no CUDA backend: the reason is the library's,
 * and --cpu runs the CPU executor's benchmark.
 */
#include <string.h>

#include "bench.h"

int bench_backend_cuda(bench_backend *b, const char **why) {
  int count = 0;
  memset(b, 0, sizeof *b);
  (void)fo_cuda_device_count(&count);
  *why = fo_last_error()[0] ? fo_last_error() : "fusedopt was built without CUDA";
  return -1;
}
