/*
 * train_bowl.c -- the quadratic bowl f(x) = 1/2 sum_i a_i x_i^2, whose
 * gradient is a_i x_i, minimised with the library's step (CPU executor,
 * fp32, one tensor over the caller's own buffers).  Small enough to check
 * an optimizer against closed forms: plain SGD gives
 * x_i(T) = (1 - lr a_i)^T x_i(0).
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "train.h"

typedef struct bowl {
  int n;
  float a[BOWL_MAX_DIM], x[BOWL_MAX_DIM], g[BOWL_MAX_DIM];
} bowl;

static double bowl_loss(const bowl *b) {
  double f = 0.0;
  for (int i = 0; i < b->n; i++) f += 0.5 * (double)b->a[i] * (double)b->x[i] * (double)b->x[i];
  return f;
}

static void bowl_gradient(bowl *b) {
  for (int i = 0; i < b->n; i++) b->g[i] = b->a[i] * b->x[i];
}

static void print_vector(FILE *f, const char *sep, const float *v, int n) {
  for (int i = 0; i < n; i++) fprintf(f, "%s%.9g", i ? sep : "", (double)v[i]);
}

static void write_trajectory_row(FILE *f, long step, const bowl *b) {
  fprintf(f, "%ld,%.9g,", step, bowl_loss(b));
  print_vector(f, ",", b->x, b->n);
  fprintf(f, "\n");
}

static FILE *open_trajectory(const char *path, int n) {
  FILE *f = fopen(path, "w");
  if (!f) {
    fprintf(stderr, "train: cannot write the trajectory '%s': %s\n", path, strerror(errno));
    return NULL;
  }
  fprintf(f, "step,loss");
  for (int i = 0; i < n; i++) fprintf(f, ",x%d", i + 1);
  fprintf(f, "\n");
  return f;
}

static int create_bowl_optimizer(const train_config *cfg, bowl *b, fo_optimizer **out) {
  fo_options o;
  fo_options_default(&o);
  o.algorithm = opt_algorithm(cfg->opt);
  o.executor = FO_EXEC_CPU;
  o.num_threads = 1;
  o.max_grad_norm = (float)cfg->clip;
  int rc = make_schedule(cfg, cfg->steps, 0, &o.schedule);
  if (rc) return rc;
  fo_hparams hp, unused;
  make_hparams(cfg, cfg->opt, &hp, &unused);
  fo_tensor_desc t = {b->n, 0, b->x, b->g, "x"};
  return train_failed(fo_optimizer_create(out, &o, &hp, 1, &t, 1), "fo_optimizer_create");
}

static int print_bowl_header(const train_config *cfg, const bowl *b, const fo_optimizer *opt) {
  fo_hparams hp;
  if (train_failed(fo_optimizer_get_hparams(opt, 0, &hp), "fo_optimizer_get_hparams")) return 1;
  printf("bowl: f(x) = 1/2 sum a_i x_i^2, a = (");
  print_vector(stdout, ", ", b->a, b->n);
  printf("), x0 = (");
  print_vector(stdout, ", ", b->x, b->n);
  printf(")\n      %s, lr %g", opt_name(cfg->opt), (double)hp.lr);
  if (opt_has_momentum(cfg->opt))
    printf(", momentum %g", (double)hp.momentum);
  else if (opt_has_betas(cfg->opt))
    printf(", betas %g, %g", (double)hp.beta1, (double)hp.beta2);
  if (hp.weight_decay > 0.0f) printf(", weight decay %g", (double)hp.weight_decay);
  int kind = cfg->schedule < 0 ? SCHED_CONSTANT : cfg->schedule;
  printf(", %s schedule, %ld steps\n", schedule_name(kind), cfg->steps);
  return 0;
}

/* Steps the optimizer, writing each point to traj (may be NULL). */
static int descend(const train_config *cfg, bowl *b, fo_optimizer *opt, FILE *traj) {
  for (long step = 0;; step++) {
    if (traj) write_trajectory_row(traj, step, b);
    if (step == cfg->steps) return 0;
    bowl_gradient(b);
    if (train_failed(fo_optimizer_step(opt, NULL), "fo_optimizer_step")) return 1;
  }
}

static void print_bowl_result(const train_config *cfg, const bowl *b) {
  printf("final loss %.9e at x = (", bowl_loss(b));
  print_vector(stdout, ", ", b->x, b->n);
  printf(")\n");
  if (cfg->trajectory_path) printf("trajectory: %s\n", cfg->trajectory_path);
  printf("RESULT mode=bowl opt=%s steps=%ld loss=%.9e x=", opt_name(cfg->opt), cfg->steps,
         bowl_loss(b));
  print_vector(stdout, ",", b->x, b->n);
  printf("\n");
}

/* As for training (train.c): exit 0, with a word on stderr. */
static void warn_bowl_diverged(const train_config *cfg, const bowl *b, const fo_optimizer *opt) {
  fo_hparams hp;
  if (fo_optimizer_get_hparams(opt, 0, &hp) == FO_SUCCESS)
    warn_if_diverged(cfg->opt, "loss", bowl_loss(b), (double)hp.lr);
}

int run_bowl(const train_config *cfg) {
  bowl b;
  fo_optimizer *opt = NULL;
  FILE *traj = NULL;
  memset(&b, 0, sizeof b);
  b.n = cfg->n_coeffs;
  for (int i = 0; i < b.n; i++) b.a[i] = (float)cfg->coeffs[i], b.x[i] = (float)cfg->start[i];
  int rc = create_bowl_optimizer(cfg, &b, &opt);
  if (!rc && cfg->trajectory_path && !(traj = open_trajectory(cfg->trajectory_path, b.n)))
    rc = EXIT_TRAIN_FAILED;
  if (!rc) {
    rc = print_bowl_header(cfg, &b, opt) ? EXIT_TRAIN_FAILED : descend(cfg, &b, opt, traj);
  }
  if (traj && (ferror(traj) | fclose(traj)) && !rc) {
    fprintf(stderr, "train: writing the trajectory '%s' failed\n", cfg->trajectory_path);
    rc = EXIT_TRAIN_FAILED;
  }
  if (!rc) print_bowl_result(cfg, &b);
  if (!rc) warn_bowl_diverged(cfg, &b, opt);
  fo_optimizer_destroy(opt);
  return rc;
}
