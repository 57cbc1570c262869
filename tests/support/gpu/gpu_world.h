/*
 * gpu_world.h -- the tensor lists of the GPU tier's comparison tests
 * (test_gpu_kernels_*.c, test_gpu_mixed_precision_*.c): a list of tensors
 * packed back to back on the host and laid out in one buffer per role
 * (poisoned gaps between tensors, some tensors misaligned), the state roles
 * a run reads back, and the reports of a comparison.
 *
 * Include after <criterion/criterion.h>.
 */
#ifndef FO_TEST_GPU_WORLD_H
#define FO_TEST_GPU_WORLD_H

#include <stddef.h>
#include <stdint.h>

#include "fusedopt.h"
#include "testutil.h"

/* Poisoned bytes at least between two tensors. */
#define GAP 96

/* A list of tensors: sizes, groups (alternating), the host packing
 * (tensors back to back) and the layout in one buffer per role. */
typedef struct world {
  int64_t nt, total;
  int64_t *numel, *hoff; /* host: element offset of each tensor */
  int *group;
  size_t *poff, *goff; /* buffers: byte offset of each tensor */
  size_t pbytes, gbytes;
  fo_dtype pt, gt;
} world;

/* A world of nt tensors of the given sizes: tensor i in group i % 2; one
 * tensor in three 256-byte aligned in each role buffer, the others 1..7
 * elements off, at least GAP bytes apart. */
void world_init(world *w, fo_dtype pt, fo_dtype gt, const int64_t *numel, int64_t nt);
void world_free(world *w);

/* The state buffers a run reads back, in this order; a result keeps NULL
 * for those its configuration does not keep. */
extern const fo_role STATE_ROLES[4];
extern const char *const ROLE_NAMES[4];

/* The largest finite |x[i]|. */
double max_abs(const double *x, int64_t n);

/* Assert ok, with the report formatted under label, in context ctx. */
void expect_report(int ok, const tu_report *rep, const char *label, const char *ctx);

#endif /* FO_TEST_GPU_WORLD_H */
