/*
 * train_gpu_none.c -- the CUDA engine of a CPU-only build (fusedopt built
 * with FO_ENABLE_CUDA=OFF; docs/install.md): there the library reports no
 * CUDA device, so resolve_engine() never picks this engine and --device
 * cuda exits EXIT_TRAIN_NO_GPU with the library's reason.  Should it be
 * created anyway, it says why it cannot run.
 */
#include <stdio.h>

#include "train.h"

static int none_create(const engine_setup *s, void **out) {
  (void)s;
  *out = NULL;
  fprintf(stderr, "train: this build has no CUDA engine (fusedopt built without CUDA)\n");
  return EXIT_TRAIN_NO_GPU;
}

const engine_ops gpu_engine_ops = {"cuda", none_create, NULL, NULL, NULL, NULL, NULL, NULL};
