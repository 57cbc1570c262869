/*
 * reliability.c -- what the reliability tests share (reliability.h).
 */
#define _GNU_SOURCE

#include "reliability.h"

#include <criterion/criterion.h>

const ck_cfg sgd_cfg = {.label = "sgd",
                        .alg = FO_ALG_SGD,
                        .pd = FO_DTYPE_F32,
                        .gd = FO_DTYPE_F32,
                        .momentum = 0.9f,
                        .scaler = 1,
                        .storage = FO_STORAGE_ARENA,
                        .exec = FO_EXEC_CPU};

fo_step_info info_of(fo_optimizer *opt) {
  fo_step_info i;
  CK_OK(fo_optimizer_get_info(opt, &i));
  return i;
}
