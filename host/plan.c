/* plan.c -- the launch plan: which block covers which chunk of which
 * tensor.  Pure arithmetic on sizes, so the CPU tier can check it for any
 * size list, sizes past 2^31 included, without a buffer or a GPU. */
#include "internal.h"

int64_t fo_plan_count_blocks(const fo_plan_tensor *t, int64_t n, int64_t chunk) {
  if (n < 0 || chunk <= 0 || (n > 0 && !t)) return -1;
  int64_t blocks = 0;
  for (int64_t i = 0; i < n; i++) {
    if (t[i].numel < 0) return -1;
    /* ceil(numel / chunk) without forming numel + chunk - 1 */
    int64_t b = t[i].numel / chunk + (t[i].numel % chunk != 0);
    if (b > INT64_MAX - blocks) return -1;
    blocks += b;
  }
  return blocks;
}

void fo_plan_fill_blocks(const fo_plan_tensor *t, int64_t n, int64_t chunk,
                         fo_plan_block *out) {
  int64_t k = 0;
  for (int64_t i = 0; i < n; i++)
    for (int64_t start = 0; start < t[i].numel; start += chunk)
      out[k++] = (fo_plan_block){i, start};
}
