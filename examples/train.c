/*
 * train.c -- the main job for now: train a small classifier with every
 * optimizer of the library and print what happened.
 *
 * A two-layer perceptron (2 -> hidden -> 3, tanh) learns three interleaved
 * spirals, generated here from a fixed seed.  The forward and backward
 * passes are plain loops on the CPU; the optimizer step is fusedopt's (the
 * CPU executor, or the CUDA executor with --cuda when a GPU is present).
 * Each optimizer trains the same network from the same start, with weight
 * decay on the weights and none on the biases (two parameter groups).
 *
 *   train [--steps N] [--hidden H] [--seed S] [--cuda]
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fusedopt.h"

#ifdef FO_EXAMPLE_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

#define CLASSES 3
#define POINTS_PER_CLASS 400
#define N_POINTS (CLASSES * POINTS_PER_CLASS)

typedef struct dataset {
  float x[N_POINTS][2];
  int y[N_POINTS];
  int n_train; /* the first n_train points train; the rest validate */
} dataset;

typedef struct config {
  int steps;
  int hidden;
  uint64_t seed;
  int cuda;
} config;

/* The network's four tensors, as float arrays the passes read. */
enum { W1, B1, W2, B2, N_TENSORS };

static uint64_t rng_next(uint64_t *s) {
  *s += 0x9e3779b97f4a7c15ull;
  uint64_t z = *s;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static float rng_uniform(uint64_t *s) { return (float)((rng_next(s) >> 40) * 0x1.0p-24); }

static float rng_normal(uint64_t *s) {
  float u = rng_uniform(s) + 1e-7f, v = rng_uniform(s);
  return sqrtf(-2.0f * logf(u)) * cosf(6.2831853f * v);
}

static void make_spirals(dataset *d, uint64_t seed) {
  uint64_t s = seed;
  for (int c = 0; c < CLASSES; c++)
    for (int i = 0; i < POINTS_PER_CLASS; i++) {
      float r = (float)i / POINTS_PER_CLASS;
      float a = 4.0f * r + 2.0944f * (float)c + 0.1f * rng_normal(&s);
      int k = c * POINTS_PER_CLASS + i;
      d->x[k][0] = r * cosf(a);
      d->x[k][1] = r * sinf(a);
      d->y[k] = c;
    }
  for (int i = N_POINTS - 1; i > 0; i--) { /* shuffle, then split 80/20 */
    int j = (int)(rng_next(&s) % (uint64_t)(i + 1));
    float tx0 = d->x[i][0], tx1 = d->x[i][1];
    int ty = d->y[i];
    d->x[i][0] = d->x[j][0], d->x[i][1] = d->x[j][1], d->y[i] = d->y[j];
    d->x[j][0] = tx0, d->x[j][1] = tx1, d->y[j] = ty;
  }
  d->n_train = N_POINTS * 4 / 5;
}

/* Forward pass over points [lo, hi); returns the mean cross-entropy and
 * counts correct predictions.  With grads non-NULL, accumulates the
 * gradient of the mean loss into them. */
static float forward_backward(const dataset *d, int lo, int hi, int hidden,
                              float *const w[N_TENSORS], float *const grads[N_TENSORS],
                              int *correct) {
  float h[256], logits[CLASSES], dh[256];
  double loss = 0.0;
  int right = 0, n = hi - lo;
  for (int k = lo; k < hi; k++) {
    for (int j = 0; j < hidden; j++)
      h[j] = tanhf(w[W1][2 * j] * d->x[k][0] + w[W1][2 * j + 1] * d->x[k][1] + w[B1][j]);
    int best = 0;
    for (int c = 0; c < CLASSES; c++) {
      float z = w[B2][c];
      for (int j = 0; j < hidden; j++) z += w[W2][c * hidden + j] * h[j];
      logits[c] = z;
      if (z > logits[best]) best = c;
    }
    float mx = logits[best], sum = 0.0f;
    for (int c = 0; c < CLASSES; c++) {
      logits[c] = expf(logits[c] - mx);
      sum += logits[c];
    }
    right += best == d->y[k];
    loss -= log(logits[d->y[k]] / sum);
    if (!grads) continue;
    memset(dh, 0, sizeof(float) * (size_t)hidden);
    for (int c = 0; c < CLASSES; c++) {
      float dz = (logits[c] / sum - (c == d->y[k])) / (float)n;
      grads[B2][c] += dz;
      for (int j = 0; j < hidden; j++) {
        grads[W2][c * hidden + j] += dz * h[j];
        dh[j] += dz * w[W2][c * hidden + j];
      }
    }
    for (int j = 0; j < hidden; j++) {
      float da = dh[j] * (1.0f - h[j] * h[j]);
      grads[W1][2 * j] += da * d->x[k][0];
      grads[W1][2 * j + 1] += da * d->x[k][1];
      grads[B1][j] += da;
    }
  }
  *correct = right;
  return (float)(loss / n);
}

typedef struct run_spec {
  const char *label;
  fo_algorithm alg;
  float lr;
  float momentum;
  int nesterov;
  fo_dtype param_dtype;
} run_spec;

typedef struct run_result {
  float first_loss, final_loss, val_acc;
  double ms_per_step;
} run_result;

#define CHECK(call)                                                          \
  do {                                                                       \
    fo_status st_ = (call);                                                  \
    if (st_ != FO_SUCCESS) {                                                 \
      fprintf(stderr, "train: %s failed: %s: %s\n", #call, fo_status_string(st_), \
              fo_last_error());                                              \
      goto done;                                                             \
    }                                                                        \
  } while (0)

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

/* Train one network with one optimizer; 0 on success. */
static int train_one(const dataset *d, const config *cfg, const run_spec *spec,
                     run_result *res) {
  int H = cfg->hidden, rc = 1;
  int64_t numel[N_TENSORS] = {2 * H, H, CLASSES * H, CLASSES};
  float *w[N_TENSORS] = {0}, *g[N_TENSORS] = {0};
  fo_optimizer *opt = NULL;
  size_t psize = fo_dtype_size(spec->param_dtype);

  fo_options o;
  fo_options_default(&o);
  o.algorithm = spec->alg;
  o.storage = FO_STORAGE_ARENA; /* the library owns params and grads */
  o.param_dtype = spec->param_dtype;
  o.executor = cfg->cuda ? FO_EXEC_CUDA : FO_EXEC_CPU;
  fo_hparams hp[2];
  CHECK(fo_hparams_default(spec->alg, &hp[0]));
  hp[0].lr = spec->lr;
  hp[0].momentum = spec->momentum;
  hp[0].nesterov = spec->nesterov;
  hp[0].weight_decay = spec->alg == FO_ALG_LION ? 0.01f : 1e-4f;
  hp[1] = hp[0];
  hp[1].weight_decay = 0.0f; /* no decay on biases */
  fo_tensor_desc t[N_TENSORS];
  memset(t, 0, sizeof t);
  static const char *names[N_TENSORS] = {"w1", "b1", "w2", "b2"};
  for (int i = 0; i < N_TENSORS; i++) {
    t[i].numel = numel[i];
    t[i].group = (i == B1 || i == B2);
    t[i].name = names[i];
  }
  CHECK(fo_optimizer_create(&opt, &o, hp, 2, t, N_TENSORS));

  /* Initial weights: the same for every run (seeded), scaled 1/sqrt(fan_in). */
  uint64_t s = cfg->seed;
  for (int i = 0; i < N_TENSORS; i++) {
    w[i] = calloc((size_t)numel[i], sizeof(float));
    g[i] = calloc((size_t)numel[i], sizeof(float));
    if (!w[i] || !g[i]) goto done;
    float scale = (i == W1) ? 1.5f : (i == W2) ? 1.0f / sqrtf((float)H) : 0.0f;
    for (int64_t k = 0; k < numel[i]; k++) w[i][k] = scale * rng_normal(&s);
  }
  void *dev_p[N_TENSORS], *dev_g[N_TENSORS];
  for (int i = 0; i < N_TENSORS; i++) {
    CHECK(fo_optimizer_param_ptr(opt, i, &dev_p[i]));
    CHECK(fo_optimizer_grad_ptr(opt, i, &dev_g[i]));
  }
  /* Write the weights into the optimizer's parameter buffers. */
  unsigned char stage[4 * 4096];
  for (int i = 0; i < N_TENSORS; i++) {
    CHECK(fo_convert_from_f32(spec->param_dtype, w[i], cfg->cuda ? (void *)stage : dev_p[i],
                              numel[i]));
#ifdef FO_EXAMPLE_HAVE_CUDA
    if (cfg->cuda) cudaMemcpy(dev_p[i], stage, (size_t)numel[i] * psize, cudaMemcpyHostToDevice);
#endif
  }
  CHECK(fo_optimizer_sync_master(opt, NULL));

  double t0 = now_ms();
  int correct;
  for (int step = 0; step < cfg->steps; step++) {
    for (int i = 0; i < N_TENSORS; i++) {
      memset(g[i], 0, sizeof(float) * (size_t)numel[i]);
#ifdef FO_EXAMPLE_HAVE_CUDA
      if (cfg->cuda) {
        cudaMemcpy(stage, dev_p[i], (size_t)numel[i] * psize, cudaMemcpyDeviceToHost);
        CHECK(fo_convert_to_f32(spec->param_dtype, stage, w[i], numel[i]));
        continue;
      }
#endif
      CHECK(fo_convert_to_f32(spec->param_dtype, dev_p[i], w[i], numel[i]));
    }
    float loss = forward_backward(d, 0, d->n_train, H, w, g, &correct);
    if (step == 0) res->first_loss = loss;
    for (int i = 0; i < N_TENSORS; i++) {
#ifdef FO_EXAMPLE_HAVE_CUDA
      if (cfg->cuda) {
        cudaMemcpy(dev_g[i], g[i], (size_t)numel[i] * sizeof(float), cudaMemcpyHostToDevice);
        continue;
      }
#endif
      memcpy(dev_g[i], g[i], sizeof(float) * (size_t)numel[i]);
    }
    CHECK(fo_optimizer_step(opt, NULL));
  }
  res->ms_per_step = (now_ms() - t0) / cfg->steps;
  for (int i = 0; i < N_TENSORS; i++) {
#ifdef FO_EXAMPLE_HAVE_CUDA
    if (cfg->cuda) {
      cudaMemcpy(stage, dev_p[i], (size_t)numel[i] * psize, cudaMemcpyDeviceToHost);
      CHECK(fo_convert_to_f32(spec->param_dtype, stage, w[i], numel[i]));
      continue;
    }
#endif
    CHECK(fo_convert_to_f32(spec->param_dtype, dev_p[i], w[i], numel[i]));
  }
  res->final_loss = forward_backward(d, 0, d->n_train, H, w, NULL, &correct);
  forward_backward(d, d->n_train, N_POINTS, H, w, NULL, &correct);
  res->val_acc = (float)correct / (float)(N_POINTS - d->n_train);
  rc = 0;
done:
  fo_optimizer_destroy(opt);
  for (int i = 0; i < N_TENSORS; i++) free(w[i]), free(g[i]);
  (void)psize;
  return rc;
}

static int parse_args(int argc, char **argv, config *cfg) {
  cfg->steps = 600;
  cfg->hidden = 64;
  cfg->seed = 42;
  cfg->cuda = 0;
  for (int i = 1; i < argc; i++) {
    char *end = NULL;
    if (!strcmp(argv[i], "--cuda")) {
      cfg->cuda = 1;
    } else if (!strcmp(argv[i], "--steps") && i + 1 < argc) {
      long v = strtol(argv[++i], &end, 10);
      if (*end || v < 1 || v > 1000000) {
        fprintf(stderr, "train: --steps wants an integer in [1, 1000000], got '%s'\n", argv[i]);
        return 1;
      }
      cfg->steps = (int)v;
    } else if (!strcmp(argv[i], "--hidden") && i + 1 < argc) {
      long v = strtol(argv[++i], &end, 10);
      if (*end || v < 1 || v > 256) {
        fprintf(stderr, "train: --hidden wants an integer in [1, 256], got '%s'\n", argv[i]);
        return 1;
      }
      cfg->hidden = (int)v;
    } else if (!strcmp(argv[i], "--seed") && i + 1 < argc) {
      unsigned long long v = strtoull(argv[++i], &end, 10);
      if (*end) {
        fprintf(stderr, "train: --seed wants an integer, got '%s'\n", argv[i]);
        return 1;
      }
      cfg->seed = v;
    } else {
      fprintf(stderr, "train: unknown or incomplete argument '%s'\n"
                      "usage: train [--steps N] [--hidden H] [--seed S] [--cuda]\n",
              argv[i]);
      return 1;
    }
  }
  return 0;
}

int main(int argc, char **argv) {
  config cfg;
  if (parse_args(argc, argv, &cfg)) return 2;
#ifndef FO_EXAMPLE_HAVE_CUDA
  if (cfg.cuda) {
    fprintf(stderr, "train: built without the CUDA runtime; --cuda is unavailable\n");
    return 2;
  }
#endif
  if (cfg.cuda) {
    int n;
    if (fo_cuda_device_count(&n) != FO_SUCCESS) {
      fprintf(stderr, "train: --cuda: %s\n", fo_last_error());
      return 2;
    }
  }
  static dataset d;
  make_spirals(&d, cfg.seed);
  static const run_spec runs[] = {
      {"SGD", FO_ALG_SGD, 0.5f, 0.0f, 0, FO_DTYPE_F32},
      {"SGD momentum 0.9", FO_ALG_SGD, 0.1f, 0.9f, 0, FO_DTYPE_F32},
      {"SGD Nesterov 0.9", FO_ALG_SGD, 0.1f, 0.9f, 1, FO_DTYPE_F32},
      {"Adam", FO_ALG_ADAM, 0.01f, 0.0f, 0, FO_DTYPE_F32},
      {"AdamW", FO_ALG_ADAMW, 0.01f, 0.0f, 0, FO_DTYPE_F32},
      {"AdamW bf16+master", FO_ALG_ADAMW, 0.01f, 0.0f, 0, FO_DTYPE_BF16},
      {"AdamW fp16+master", FO_ALG_ADAMW, 0.01f, 0.0f, 0, FO_DTYPE_F16},
      {"Lion", FO_ALG_LION, 0.003f, 0.0f, 0, FO_DTYPE_F32},
  };
  printf("fusedopt %s: 2-layer MLP (2-%d-3, tanh) on 3 spirals, %d train / %d validation "
         "points,\n%d full-batch steps per optimizer, executor %s\n\n",
         fo_version_string(), cfg.hidden, d.n_train, N_POINTS - d.n_train, cfg.steps,
         cfg.cuda ? "CUDA" : "CPU");
  printf("%-20s %10s %10s %9s %10s\n", "optimizer", "loss@0", "loss@end", "val acc",
         "ms/step");
  int failures = 0;
  for (size_t i = 0; i < sizeof runs / sizeof runs[0]; i++) {
    run_result r;
    if (train_one(&d, &cfg, &runs[i], &r)) {
      failures++;
      continue;
    }
    printf("%-20s %10.4f %10.4f %8.1f%% %10.3f\n", runs[i].label, r.first_loss, r.final_loss,
           100.0f * r.val_acc, r.ms_per_step);
  }
  printf("\nChance is 33.3%%; every optimizer should reach well above 90%% validation "
         "accuracy.\n");
  return failures ? 1 : 0;
}
