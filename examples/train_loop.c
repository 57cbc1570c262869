/*
 * train_loop.c -- the training loop shared by both engines: the MLP's
 * shape, the optimizer's creation (two groups: weights with decay, biases
 * without), the seeded initial weights, the epochs, and what is printed
 * per epoch.
 *
 * With several ranks (train_world.c) every rank runs this same loop from
 * the same seed -- the same split, initial weights and batch order -- and
 * takes its own slice of each batch; the library averages the gradients
 * (the optimizer's communicator), so every rank steps to the same
 * parameters.  The loss and the validation counts are summed over the
 * ranks before they are printed.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "train.h"

/* Clean steps before the loss scale grows: PyTorch's 2000 would never be
 * reached in a run of a few hundred steps. */
#define SCALER_GROWTH_INTERVAL 100

/* ---------------------------------------------------------------- net */

int net_num_tensors(const net_shape *net) {
  return 2 * net->n_linear;
}

int64_t net_tensor_numel(const net_shape *net, int tensor) {
  int l = tensor / 2;
  return (int64_t)net->dim[l + 1] * (tensor % 2 ? 1 : net->dim[l]);
}

int64_t net_num_params(const net_shape *net) {
  int64_t n = 0;
  for (int i = 0; i < net_num_tensors(net); i++) n += net_tensor_numel(net, i);
  return n;
}

int net_max_width(const net_shape *net) {
  int w = 0;
  for (int l = 0; l <= net->n_linear; l++) w = net->dim[l] > w ? net->dim[l] : w;
  return w;
}

static void make_net(const train_config *cfg, net_shape *net) {
  net->n_linear = (int)cfg->layers + 1;
  net->dim[0] = TRAIN_FEATURES;
  for (int l = 1; l < net->n_linear; l++) net->dim[l] = (int)cfg->hidden;
  net->dim[net->n_linear] = TRAIN_CLASSES;
}

int get_arena_layout(fo_optimizer *opt, fo_role role, fo_dtype dtype, int num_tensors,
                     arena_layout *out) {
  size_t bytes, size = fo_dtype_size(dtype);
  if (train_failed(fo_optimizer_arena(opt, role, &out->base, &bytes), "fo_optimizer_arena"))
    return 1;
  out->elems = (int64_t)(bytes / size);
  for (int i = 0; i < num_tensors; i++) {
    void *p;
    fo_status st = role == FO_ROLE_PARAM ? fo_optimizer_param_ptr(opt, i, &p)
                                         : fo_optimizer_grad_ptr(opt, i, &p);
    if (train_failed(st, "fo_optimizer_param_ptr/grad_ptr")) return 1;
    out->offset[i] = (int64_t)(((char *)p - (char *)out->base) / (ptrdiff_t)size);
  }
  return 0;
}

int find_loss_scale(fo_optimizer *opt, const float **out) {
  fo_options o;
  float *scale = NULL;
  *out = NULL;
  if (train_failed(fo_optimizer_get_options(opt, &o), "fo_optimizer_get_options")) return 1;
  if (!o.loss_scaler.enabled) return 0;
  if (train_failed(fo_optimizer_loss_scale_ptr(opt, &scale), "fo_optimizer_loss_scale_ptr"))
    return 1;
  *out = scale;
  return 0;
}

/* ------------------------------------------------------------- set-up */

/* Every rank of a node needs a device of its own (NCCL refuses two ranks
 * on one GPU): rank i of the node takes device i.  The ranks agree, so
 * that all of them run the same engine. */
int resolve_engine(const train_config *cfg, train_world *w, const engine_ops **out) {
  char why[512] = ""; /* why this rank cannot run the CUDA engine */
  int count = 0;
  *out = &cpu_engine_ops;
  w->device = 0;
  if (cfg->device == DEVICE_CPU) return 0;
  if (fo_cuda_device_count(&count) != FO_SUCCESS || count == 0)
    snprintf(why, sizeof why, "no CUDA device: %s", fo_last_error());
  else if (w->local_size > count)
    snprintf(why, sizeof why, "%d processes on this node share %d CUDA device%s", w->local_size,
             count, count == 1 ? "" : "s");
  int usable = !why[0];
  if (world_all(w, usable)) {
    *out = &gpu_engine_ops;
    w->device = w->local_rank;
    return 0;
  }
  if (cfg->device == DEVICE_CUDA || cfg->graph) {
    if (!usable) /* the ranks that lack a device say why */
      fprintf(stderr, "train: %s needs a usable CUDA device%s: %s\n",
              cfg->graph ? "--graph" : "--device cuda", w->size > 1 ? " per process" : "",
              count == 0 ? fo_last_error() : why);
    return EXIT_TRAIN_NO_GPU;
  }
  printf("device: cpu (%s)\n", usable ? "another process has no CUDA device of its own" : why);
  return 0;
}

/* Rank r's share of n rows: [n r / N, n (r + 1) / N); the N shares differ
 * by at most one row and cover the n rows once. */
static void share(int n, const train_world *w, int *first, int *count) {
  *first = (int)((int64_t)n * w->rank / w->size);
  *count = (int)((int64_t)n * (w->rank + 1) / w->size) - *first;
}

int plan_run(const train_config *cfg, const data_split *data, const engine_ops *engine,
             const train_world *world, run_plan *out) {
  memset(out, 0, sizeof *out);
  if (cfg->batch > data->train.n) {
    fprintf(stderr, "train: --batch %ld is larger than the %d training rows\n", cfg->batch,
            data->train.n);
    return EXIT_TRAIN_USAGE;
  }
  if (cfg->batch < world->size) {
    fprintf(stderr, "train: --batch %ld is smaller than the %d processes: each needs a row\n",
            cfg->batch, world->size);
    return EXIT_TRAIN_USAGE;
  }
  out->cfg = cfg;
  out->data = data;
  out->engine = engine;
  out->world = world;
  make_net(cfg, &out->net);
  out->steps_per_epoch = data->train.n / (int)cfg->batch;
  out->verbose = !cfg->compare;
  share((int)cfg->batch, world, &out->shard_start, &out->shard_rows);
  int first;
  share(data->val.n, world, &first, &out->val_shard.n);
  out->val_shard.x = data->val.x + (size_t)first * TRAIN_FEATURES;
  out->val_shard.y = data->val.y + first;
  /* A schedule the flags make impossible fails alike on every rank and for
   * every optimizer: say so now, not after the first run. */
  fo_schedule unused;
  return make_schedule(cfg, (int64_t)cfg->epochs * out->steps_per_epoch, default_warmup(out),
                       &unused);
}

int64_t default_warmup(const run_plan *p) {
  int64_t total = p->cfg->epochs * p->steps_per_epoch;
  return p->steps_per_epoch < total / 5 ? p->steps_per_epoch : total / 5;
}

static int make_options(const run_plan *p, int opt, fo_options *o) {
  const train_config *cfg = p->cfg;
  fo_options_default(o);
  o->algorithm = opt_algorithm(opt);
  o->executor = p->engine == &gpu_engine_ops ? FO_EXEC_CUDA : FO_EXEC_CPU;
  o->device = p->world->device;
  if (o->executor == FO_EXEC_CPU) o->num_threads = world_cpu_threads(p->world);
  o->storage = FO_STORAGE_ARENA; /* the library owns parameters and gradients */
  o->param_dtype = o->grad_dtype = precision_dtype(cfg->precision);
  o->max_grad_norm = (float)cfg->clip;
  if (o->param_dtype != FO_DTYPE_F32) { /* master weights are on by default */
    o->loss_scaler.enabled = 1;
    o->loss_scaler.growth_interval = SCALER_GROWTH_INTERVAL;
  }
  int64_t total = (int64_t)cfg->epochs * p->steps_per_epoch;
  return make_schedule(cfg, total, default_warmup(p), &o->schedule);
}

static int create_optimizer(const run_plan *p, int opt, fo_optimizer **out, double *lr,
                            double *wd) {
  static const char *const kinds[2] = {"weight", "bias"};
  fo_options o;
  int rc = make_options(p, opt, &o);
  if (rc) return rc;
  fo_hparams groups[2];
  make_hparams(p->cfg, opt, &groups[0], &groups[1]);
  *lr = groups[0].lr;
  *wd = groups[0].weight_decay;
  fo_tensor_desc t[TRAIN_MAX_TENSORS];
  char names[TRAIN_MAX_TENSORS][24];
  memset(t, 0, sizeof t);
  for (int i = 0; i < net_num_tensors(&p->net); i++) {
    snprintf(names[i], sizeof names[i], "fc%d.%s", i / 2 + 1, kinds[i % 2]);
    t[i].numel = net_tensor_numel(&p->net, i);
    t[i].group = i % 2; /* group 1: biases, no weight decay */
    t[i].name = names[i];
  }
  if (train_failed(fo_optimizer_create(out, &o, groups, 2, t, net_num_tensors(&p->net)),
                   "fo_optimizer_create"))
    return 1;
  /* Several ranks: the step sums the gradients over the ranks (one
   * all-reduce of the gradient arena per bucket, default 25 MiB buckets:
   * one here) and divides by their number; with --zero each rank keeps
   * the optimizer state of its shard only (reduce-scatter, step the
   * shard, all-gather the parameters). */
  fo_dp_options dp;
  fo_dp_options_default(&dp);
  dp.shard_state = p->cfg->zero;
  return p->world->comm &&
         train_failed(fo_optimizer_set_comm(*out, p->world->comm, &dp), "fo_optimizer_set_comm");
}

/* He-normal weights for the ReLU layers, 1/sqrt(fan_in) for the logits,
 * zero biases: the same for every optimizer of a seed. */
static float **make_initial_weights(const run_plan *p) {
  int n = net_num_tensors(&p->net);
  float **init = calloc((size_t)n, sizeof *init);
  uint64_t state = p->cfg->seed;
  for (int i = 0; init && i < n; i++) {
    int64_t numel = net_tensor_numel(&p->net, i), fan_in = p->net.dim[i / 2];
    float sd = i % 2 ? 0.0f : sqrtf((i / 2 + 1 < p->net.n_linear ? 2.0f : 1.0f) / (float)fan_in);
    if (!(init[i] = malloc((size_t)numel * sizeof(float)))) {
      for (int j = 0; j < i; j++) free(init[j]);
      free(init);
      return NULL;
    }
    for (int64_t k = 0; k < numel; k++) init[i][k] = sd * rng_normal(&state);
  }
  return init;
}

static void free_initial_weights(float **init, int n) {
  for (int i = 0; init && i < n; i++) free(init[i]);
  free(init);
}

/* ------------------------------------------------------------- epochs */

static double now_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Everything one training run holds while it runs. */
typedef struct run_state {
  const run_plan *plan;
  fo_optimizer *opt;
  void *engine;
  int *order;     /* the training rows, reshuffled every epoch */
  float *batch_x; /* batch rows gathered for the engine */
  int *batch_y;
  uint64_t rng;
} run_state;

/* This rank's slice of the step's batch. */
static void gather_batch(run_state *s, int step) {
  const dataset *train = &s->plan->data->train;
  int first = step * (int)s->plan->cfg->batch + s->plan->shard_start;
  for (int r = 0; r < s->plan->shard_rows; r++) {
    int row = s->order[first + r];
    memcpy(s->batch_x + (size_t)r * TRAIN_FEATURES, train->x + (size_t)row * TRAIN_FEATURES,
           TRAIN_FEATURES * sizeof(float));
    s->batch_y[r] = train->y[row];
  }
}

/* One pass over the shuffled training rows; fills the loss and speed. */
static int run_epoch(run_state *s, epoch_record *rec) {
  const run_plan *p = s->plan;
  const engine_ops *ops = p->engine;
  double t0 = now_seconds(), loss_sum;
  shuffle_ints(s->order, p->data->train.n, &s->rng);
  for (int step = 0; step < p->steps_per_epoch; step++) {
    gather_batch(s, step);
    if (ops->train_step(s->engine, s->batch_x, s->batch_y)) return 1;
  }
  if (ops->take_loss_sum(s->engine, &loss_sum)) return 1; /* waits for the device */
  world_sum(p->world, &loss_sum, 1);                      /* every rank's rows */
  double rows = (double)p->steps_per_epoch * (double)p->cfg->batch;
  rec->samples_per_s = rows / (now_seconds() - t0);
  rec->train_loss = loss_sum / rows;
  return 0;
}

/* The validation accuracy and the optimizer's state after an epoch. */
static int inspect(run_state *s, double base_lr, int *correct, epoch_record *rec) {
  fo_step_info info;
  if (s->plan->engine->evaluate(s->engine, correct)) return 1;
  double count = *correct; /* this rank's validation rows; then all of them */
  world_sum(s->plan->world, &count, 1);
  *correct = (int)count;
  if (train_failed(fo_optimizer_get_info(s->opt, &info), "fo_optimizer_get_info")) return 1;
  rec->val_acc = (double)*correct / (double)s->plan->data->val.n;
  rec->step = info.step;
  rec->lr = base_lr * (double)info.lr_factor;
  rec->loss_scale = info.loss_scale;
  rec->skipped = info.skipped_steps;
  return 0;
}

static void print_epoch(const run_plan *p, const epoch_record *r) {
  printf(
      "epoch %3d/%ld  loss %.4f  val acc %6.2f%%  lr %.3e  scale %-11.9g  skipped %lld  "
      "%.0f samples/s\n",
      r->epoch, p->cfg->epochs, r->train_loss, 100.0 * r->val_acc, r->lr, r->loss_scale,
      (long long)r->skipped, r->samples_per_s);
  fflush(stdout);
}

static int run_epochs(run_state *s, run_result *out) {
  const run_plan *p = s->plan;
  for (int ep = 0; ep < (int)p->cfg->epochs; ep++) {
    epoch_record *rec = &out->history[ep];
    double t0 = now_seconds();
    rec->epoch = ep + 1;
    if (run_epoch(s, rec)) return 1;
    out->seconds += now_seconds() - t0;
    if (inspect(s, out->lr, &out->correct, rec)) return 1;
    out->epochs = ep + 1;
    if (p->verbose) print_epoch(p, rec);
  }
  return 0;
}

static int alloc_run_state(run_state *s, const run_plan *p) {
  int n = p->data->train.n;
  s->order = malloc((size_t)n * sizeof *s->order);
  s->batch_x = malloc((size_t)p->cfg->batch * TRAIN_FEATURES * sizeof *s->batch_x);
  s->batch_y = malloc((size_t)p->cfg->batch * sizeof *s->batch_y);
  if (!s->order || !s->batch_x || !s->batch_y) {
    fprintf(stderr, "train: out of memory\n");
    return 1;
  }
  for (int i = 0; i < n; i++) s->order[i] = i;
  s->rng = p->cfg->seed ^ 0xba7c4ba7c4ba7c4bull;
  return 0;
}

static void free_run_state(run_state *s) {
  if (s->engine) s->plan->engine->destroy(s->engine);
  train_failed(fo_optimizer_destroy(s->opt), "fo_optimizer_destroy");
  free(s->order);
  free(s->batch_x);
  free(s->batch_y);
}

/* Creates the optimizer and the engine and writes the initial weights. */
static int start_run(run_state *s, int opt, run_result *out) {
  const run_plan *p = s->plan;
  int rc = create_optimizer(p, opt, &s->opt, &out->lr, &out->wd);
  if (rc) return rc;
  engine_setup setup;
  memset(&setup, 0, sizeof setup);
  setup.net = &p->net;
  setup.opt = s->opt;
  setup.dtype = precision_dtype(p->cfg->precision);
  setup.batch = p->shard_rows;
  setup.ranks = p->world->size;
  setup.global_batch = (int)p->cfg->batch;
  setup.device = p->world->device;
  setup.graph = p->cfg->graph;
  setup.val = &p->val_shard;
  if (p->engine->create(&setup, &s->engine)) return 1;
  float **init = make_initial_weights(p);
  if (!init) {
    fprintf(stderr, "train: out of memory\n");
    return 1;
  }
  rc = p->engine->write_params(s->engine, init);
  free_initial_weights(init, net_num_tensors(&p->net));
  return rc;
}

/* FNV-1a, 64 bits. */
static uint64_t hash_bytes(uint64_t h, const unsigned char *p, size_t n) {
  for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}

/* Several ranks: every rank must end with the same parameters and
 * optimizer state, bit for bit -- the library sums the gradients into the
 * same bits on every rank and steps identically from there.  Compares a
 * hash of the parameter arena and every state arena over the ranks. */
static int check_ranks_agree(run_state *s) {
  static const fo_role roles[] = {FO_ROLE_PARAM, FO_ROLE_MASTER, FO_ROLE_EXP_AVG,
                                  FO_ROLE_EXP_AVG_SQ};
  const run_plan *p = s->plan;
  if (p->world->size == 1) return 0;
  uint64_t h = 0xcbf29ce484222325ull;
  /* a sharded state differs from rank to rank by design: parameters only */
  size_t nroles = p->cfg->zero ? 1 : sizeof roles / sizeof roles[0];
  for (size_t i = 0; i < nroles; i++) {
    void *base;
    size_t bytes;
    if (fo_optimizer_arena(s->opt, roles[i], &base, &bytes) != FO_SUCCESS) continue; /* not kept */
    unsigned char *host = malloc(bytes ? bytes : 1);
    int rc = !host || p->engine->read_back(s->engine, host, base, bytes);
    if (!rc) h = hash_bytes(h, host, bytes);
    free(host);
    if (rc) {
      fprintf(stderr, "train: cannot read the optimizer's state back to compare the ranks\n");
      return 1;
    }
  }
  if (!world_same(p->world, h)) {
    if (p->world->rank == 0)
      fprintf(stderr, "train: the %d processes hold different parameters after training\n",
              p->world->size);
    return 1;
  }
  if (p->verbose)
    printf("ranks: parameters%s bit-identical on all %d processes\n",
           p->cfg->zero ? " (state sharded)" : " and optimizer state", p->world->size);
  return 0;
}

int train_run(const run_plan *plan, int opt, run_result *out) {
  run_state s;
  memset(&s, 0, sizeof s);
  memset(out, 0, sizeof *out);
  s.plan = plan;
  out->opt = opt;
  out->n_val = plan->data->val.n;
  out->history = calloc((size_t)plan->cfg->epochs, sizeof *out->history);
  if (!out->history) {
    fprintf(stderr, "train: out of memory\n");
    return 1;
  }
  int rc = alloc_run_state(&s, plan);
  if (!rc) rc = start_run(&s, opt, out);
  if (!rc) rc = run_epochs(&s, out);
  if (!rc) rc = check_ranks_agree(&s);
  free_run_state(&s);
  return rc;
}

void run_result_free(run_result *r) {
  free(r->history);
  r->history = NULL;
}
