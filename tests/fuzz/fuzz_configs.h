/*
 * fuzz_configs.h -- the optimizer configurations the fuzz target checks
 * its inputs against, shared with the test that writes and checks the
 * seed corpus (tests/test_checkpoint_corpus.c), so that the valid seeds
 * are checkpoints of exactly these optimizers.
 */
#ifndef FO_FUZZ_CONFIGS_H
#define FO_FUZZ_CONFIGS_H

#include <stdint.h>

#include "fusedopt.h"

#define FZ_MAX_TENSORS 4

typedef struct fz_config {
  const char *name; /* the seed is corpus/valid-<name>.safetensors */
  fo_algorithm alg;
  fo_dtype pd, gd;
  int master, sr, scaler, amsgrad;
  float momentum;
  int num_groups;
  int num_tensors;
  int64_t sizes[FZ_MAX_TENSORS];
  const char *names[FZ_MAX_TENSORS];
  int steps; /* taken before the seed is saved */
} fz_config;

#define FZ_NUM_CONFIGS 3

/* AdamW with AMSGrad over fp32 (an empty tensor and an unnamed one);
 * SGD with momentum over bf16 with master weights and loss scaling; Lion
 * over bf16 with stochastic rounding. */
static const fz_config fz_configs[FZ_NUM_CONFIGS] = {
    {"adamw",
     FO_ALG_ADAMW,
     FO_DTYPE_F32,
     FO_DTYPE_F32,
     0,
     0,
     0,
     1,
     0.0f,
     2,
     3,
     {5, 0, 17, 0},
     {"w", NULL, "b", NULL},
     3},
    {"sgd",
     FO_ALG_SGD,
     FO_DTYPE_BF16,
     FO_DTYPE_BF16,
     1,
     0,
     1,
     0,
     0.9f,
     1,
     2,
     {3, 8, 0, 0},
     {"layer.weight", "layer.bias", NULL, NULL},
     4},
    {"lion",
     FO_ALG_LION,
     FO_DTYPE_BF16,
     FO_DTYPE_F32,
     0,
     1,
     0,
     0,
     0.0f,
     1,
     1,
     {4, 0, 0, 0},
     {NULL, NULL, NULL, NULL},
     2},
};

/* The loss scaler of the configurations that scale. */
#define FZ_GROWTH_INTERVAL 3
#define FZ_HYSTERESIS 2

/* The options fields a checkpoint is checked against, on top of o's
 * defaults. */
static inline void fz_apply_options(const fz_config *c, fo_options *o) {
  o->algorithm = c->alg;
  o->param_dtype = c->pd;
  o->grad_dtype = c->gd;
  o->master_weights = c->master;
  o->stochastic_rounding = c->sr;
  o->loss_scaler.enabled = c->scaler;
  o->loss_scaler.growth_interval = FZ_GROWTH_INTERVAL;
  o->loss_scaler.hysteresis = FZ_HYSTERESIS;
}

/* Group g's hyper-parameters on top of the algorithm's defaults. */
static inline void fz_apply_hparams(const fz_config *c, int g, fo_hparams *h) {
  h->momentum = c->momentum;
  h->amsgrad = c->amsgrad;
  h->weight_decay = g == 0 ? 0.01f : 0.0f;
}

#endif /* FO_FUZZ_CONFIGS_H */
