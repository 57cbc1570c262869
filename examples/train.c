/*
 * train.c -- the main job: train an MLP classifier on the 8x8 handwritten
 * digits (UCI, CC BY 4.0; data/README.md) with fusedopt's optimizers, or
 * minimise a quadratic bowl with them.  docs/train.md is the manual.
 *
 *   train [--opt adamw] [--layers 2 --hidden 128] [--epochs 30] ...
 *   train --compare                  every optimizer in turn, one table
 *   train --bowl --coeffs 1,10 --start 1,1 --opt sgd --lr 0.05 --steps 100
 *
 * Forward and backward run on the GPU (cuBLAS GEMMs and a few kernels,
 * train_gpu.cu) when one is usable, otherwise on the CPU (plain loops,
 * train_cpu.c); --device picks.  The optimizer step is always the
 * library's.  The last line of a run is machine-readable:
 *   RESULT opt=adamw device=cpu precision=fp32 ranks=1 ... val_acc=0.9750 ...
 *
 * Under mpirun -np N (a build with MPI) it trains data-parallel: every rank
 * takes its slice of each batch and the library averages the gradients
 * (train_world.c, docs/train.md "Several processes").
 */
#include "train.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int load_data(const train_config *cfg, data_split *out) {
  dataset all;
  memset(out, 0, sizeof *out);
  if (load_digits(cfg->data_path, &all)) return EXIT_TRAIN_FAILED;
  int rc = split_dataset(&all, cfg->val_frac, cfg->seed, out);
  dataset_free(&all);
  return rc ? EXIT_TRAIN_FAILED : 0;
}

static void print_net(const net_shape *net) {
  printf("MLP %d", net->dim[0]);
  for (int l = 1; l <= net->n_linear; l++) printf("-%d", net->dim[l]);
  /* --layers 0 is one linear layer: a linear classifier, no ReLU */
  printf("%s, %lld parameters", net->n_linear > 1 ? " (ReLU)" : "", (long long)net_num_params(net));
}

/* "1 process", or "4 processes (MPI), 16 rows of each batch per process"
 * (with "15 or 16" when the batch does not divide). */
static void print_world(const run_plan *p) {
  int n = p->world->size, b = (int)p->cfg->batch;
  if (n == 1) {
    printf("1 process");
    return;
  }
  printf("%d processes (MPI), ", n);
  if (b % n)
    printf("%d or %d", b / n, b / n + 1);
  else
    printf("%d", b / n);
  printf(" rows of each batch per process");
}

static void print_header(const run_plan *p) {
  const train_config *cfg = p->cfg;
  printf("fusedopt %s: 8x8 digits, %d train / %d validation images; ", fo_version_string(),
         p->data->train.n, p->data->val.n);
  print_net(&p->net);
  printf("\n%s, %s%s, batch %ld, %d steps/epoch, %ld epoch%s, %s schedule; ", p->engine->name,
         precision_name(cfg->precision), cfg->graph ? ", CUDA graph" : "", cfg->batch,
         p->steps_per_epoch, cfg->epochs, cfg->epochs == 1 ? "" : "s",
         schedule_name(cfg->schedule < 0 ? SCHED_COSINE : cfg->schedule));
  print_world(p);
  printf("\n");
}

static void print_optimizer(const run_plan *p) {
  const train_config *cfg = p->cfg;
  fo_hparams w, b;
  make_hparams(cfg, cfg->opt, &w, &b);
  printf("%s: lr %g, weight decay %g (none on biases)", opt_name(cfg->opt), (double)w.lr,
         (double)w.weight_decay);
  if (opt_has_momentum(cfg->opt))
    printf(", momentum %g", (double)w.momentum);
  else if (opt_has_betas(cfg->opt))
    printf(", betas %g, %g", (double)w.beta1, (double)w.beta2);
  printf(", warmup %lld steps", (long long)(cfg->warmup >= 0 ? cfg->warmup : default_warmup(p)));
  if (cfg->clip > 0) printf(", gradient norm clipped to %g", cfg->clip);
  printf("\n");
}

static void print_result_line(const run_plan *p, const run_result *r) {
  const epoch_record *first = &r->history[0], *last = &r->history[r->epochs - 1];
  printf(
      "RESULT opt=%s device=%s precision=%s ranks=%d epochs=%d steps=%lld first_loss=%.6f "
      "final_loss=%.6f val_acc=%.4f seconds=%.3f skipped=%lld loss_scale=%g\n",
      opt_name(r->opt), p->engine->name, precision_name(p->cfg->precision), p->world->size,
      r->epochs, (long long)last->step, first->train_loss, last->train_loss, last->val_acc,
      r->seconds, (long long)last->skipped, last->loss_scale);
}

/* A diverged run's word on stderr, once: from rank 0, which holds the
 * same losses as the others. */
static void warn_run_diverged(const run_plan *p, const run_result *r) {
  if (p->world->rank == 0)
    warn_if_diverged(r->opt, "training loss", r->history[r->epochs - 1].train_loss, r->lr);
}

/* Files are rank 0's to write (the other ranks hold the same results). */
static int save_curves(const run_plan *p, const run_result *r) {
  char csv[TRAIN_PATH_BYTES];
  if (p->world->rank != 0) return 0;
  snprintf(csv, sizeof csv, "%s/train_%s.csv", p->cfg->out_dir, opt_name(r->opt));
  if (write_history_csv(csv, r)) return 1;
  if (p->verbose) printf("curves: %s\n", csv);
  return 0;
}

static int train_single(const run_plan *p) {
  run_result r;
  print_optimizer(p);
  int rc = train_run(p, p->cfg->opt, &r);
  if (!rc) {
    const epoch_record *last = &r.history[r.epochs - 1];
    printf(
        "done: %s reached %.2f%% validation accuracy (%d/%d), training loss %.4f, in %d "
        "epoch%s (%lld steps, %.2f s, %lld skipped)\n",
        opt_name(r.opt), 100.0 * last->val_acc, r.correct, r.n_val, last->train_loss, r.epochs,
        r.epochs == 1 ? "" : "s", (long long)last->step, r.seconds, (long long)last->skipped);
    rc = save_curves(p, &r);
    if (!rc && p->world->rank == 0) plot_run(p->cfg->out_dir, &r, p->cfg->plot);
    if (!rc) print_result_line(p, &r);
    if (!rc) warn_run_diverged(p, &r);
  }
  run_result_free(&r);
  return rc;
}

static void print_compare_table(const run_result *runs, int n) {
  printf("\n%-9s %9s %8s %11s %9s %8s %8s\n", "optimizer", "lr", "wd", "final loss", "val acc",
         "time s", "skipped");
  for (int i = 0; i < n; i++) {
    const run_result *r = &runs[i];
    const epoch_record *last = &r->history[r->epochs - 1];
    printf("%-9s %9g %8g %11.4f %8.2f%% %8.2f %8lld\n", opt_name(r->opt), r->lr, r->wd,
           last->train_loss, 100.0 * last->val_acc, r->seconds, (long long)last->skipped);
  }
  printf("\n");
}

static int train_every_optimizer(const run_plan *p) {
  run_result runs[OPT_COUNT];
  int done = 0, rc = 0;
  for (int opt = 0; opt < OPT_COUNT && !rc; opt++) {
    printf("training with %-8s ... ", opt_name(opt));
    fflush(stdout);
    rc = train_run(p, opt, &runs[opt]);
    if (rc) {
      printf("failed\n");
      run_result_free(&runs[opt]);
      break;
    }
    done++;
    const epoch_record *last = &runs[opt].history[runs[opt].epochs - 1];
    printf("%.2f%% in %.2f s\n", 100.0 * last->val_acc, runs[opt].seconds);
    warn_run_diverged(p, &runs[opt]);
    rc = save_curves(p, &runs[opt]);
  }
  if (!rc) {
    char csv[TRAIN_PATH_BYTES];
    print_compare_table(runs, done);
    if (p->world->size > 1) /* each run checked it (train_run), quietly here */
      printf("ranks: every optimizer's parameters%s bit-identical on all %d processes\n",
             p->cfg->zero ? " (state sharded)" : " and optimizer state", p->world->size);
    snprintf(csv, sizeof csv, "%s/compare.csv", p->cfg->out_dir);
    if (p->world->rank == 0) rc = write_compare_csv(csv, runs, done);
    if (!rc) printf("table: %s; curves: %s/train_<optimizer>.csv\n", csv, p->cfg->out_dir);
    if (!rc && p->world->rank == 0) plot_compare(p->cfg->out_dir, runs, done, p->cfg->plot);
    for (int i = 0; i < done && !rc; i++) print_result_line(p, &runs[i]);
  }
  for (int i = 0; i < done; i++) run_result_free(&runs[i]);
  return rc;
}

/* Every step of the set-up ends with the same verdict on every rank
 * (world_agree), so that no rank goes on into a collective the others
 * never reach; a failure during training ends every rank (world_abort). */
static int train_digits(const train_config *cfg, train_world *w) {
  data_split data;
  const engine_ops *engine = NULL;
  run_plan plan;
  int rc = world_agree(w, load_data(cfg, &data));
  if (!rc) rc = resolve_engine(cfg, w, &engine);
  if (!rc) { /* the same verdict on every rank: one line, rank 0's */
    world_quiet(w, 1);
    rc = plan_run(cfg, &data, engine, w, &plan);
    world_quiet(w, 0);
  }
  if (!rc) rc = world_agree(w, w->rank == 0 && ensure_dir(cfg->out_dir) ? EXIT_TRAIN_FAILED : 0);
  if (!rc) rc = world_agree(w, world_create_comm(w, engine == &gpu_engine_ops));
  if (!rc) {
    print_header(&plan);
    rc = cfg->compare ? train_every_optimizer(&plan) : train_single(&plan);
    if (rc) world_abort(w, rc);
  }
  world_destroy_comm(w);
  dataset_free(&data.train);
  dataset_free(&data.val);
  return rc;
}

/* The bowl has no data to share out: it runs in one process. */
static int bowl_alone(const train_config *cfg, const train_world *w) {
  if (w->size == 1) return run_bowl(cfg);
  if (w->rank == 0)
    fprintf(stderr,
            "train: --bowl runs in one process; start it without mpirun (this is one of %d)\n",
            w->size);
  return EXIT_TRAIN_USAGE;
}

/* One process has nothing to shard its state over: --zero would change
 * nothing, which a user who asked for it should hear rather than guess. */
static int train_alone_or_sharded(const train_config *cfg, train_world *w) {
  if (cfg->zero && w->size == 1) {
    fprintf(stderr,
            "train: --zero shards the optimizer state over several processes; "
            "this run is one (start it with mpirun -np N)\n");
    return EXIT_TRAIN_USAGE;
  }
  return train_digits(cfg, w);
}

int main(int argc, char **argv) {
  train_world world;
  train_config cfg;
  int rc = world_init(&argc, &argv, &world);
  if (!rc) { /* every rank parses the same flags: one line, rank 0's */
    world_quiet(&world, 1);
    rc = parse_args(argc, argv, &cfg);
    world_quiet(&world, 0);
    if (!rc) rc = cfg.bowl ? bowl_alone(&cfg, &world) : train_alone_or_sharded(&cfg, &world);
  } else {
    world_abort(&world, rc);
  }
  world_finalize(&world);
  /* The RESULT lines are what scripts read: a run whose output was lost
   * (a full disk, a closed pipe) did not succeed. */
  if (fflush(stdout) != 0 || ferror(stdout)) {
    fprintf(stderr, "train: writing the standard output failed\n");
    if (rc <= 0) rc = EXIT_TRAIN_FAILED;
  }
  return rc < 0 ? EXIT_TRAIN_OK : rc;
}
