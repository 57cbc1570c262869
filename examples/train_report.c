/*
 * train_report.c -- what a run leaves behind: the curves as CSV, a gnuplot
 * script next to them, and a PNG when gnuplot is installed.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "train.h"

extern char **environ;

/* --------------------------------------------------------------- files */

int ensure_dir(const char *dir) {
  char path[TRAIN_PATH_BYTES];
  if (strlen(dir) + 1 + TRAIN_OUT_NAME_ROOM > sizeof path) {
    fprintf(stderr, "train: --out is too long (%zu bytes; at most %d): '%.40s...'\n", strlen(dir),
            (int)(sizeof path - 1 - TRAIN_OUT_NAME_ROOM), dir);
    return 1;
  }
  snprintf(path, sizeof path, "%s", dir);
  for (char *p = path + 1;; p++) { /* mkdir -p */
    int end = *p == '\0';
    if (*p != '/' && !end) continue;
    *p = '\0';
    if (mkdir(path, 0777) != 0 && errno != EEXIST) {
      fprintf(stderr, "train: cannot create the directory '%s': %s\n", path, strerror(errno));
      return 1;
    }
    if (end) break;
    *p = '/';
  }
  struct stat st;
  if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
    fprintf(stderr, "train: --out '%s' is not a directory\n", dir);
    return 1;
  }
  return 0;
}

static FILE *open_for_writing(const char *path) {
  FILE *f = fopen(path, "w");
  if (!f) fprintf(stderr, "train: cannot write '%s': %s\n", path, strerror(errno));
  return f;
}

static int close_written(FILE *f, const char *path) {
  int bad = ferror(f);
  if (fclose(f) != 0 || bad) {
    fprintf(stderr, "train: writing '%s' failed: %s\n", path, strerror(errno));
    return 1;
  }
  return 0;
}

int write_history_csv(const char *path, const run_result *r) {
  FILE *f = open_for_writing(path);
  if (!f) return 1;
  fprintf(f, "epoch,step,train_loss,val_acc,lr,loss_scale,skipped,samples_per_s\n");
  for (int i = 0; i < r->epochs; i++) {
    const epoch_record *e = &r->history[i];
    fprintf(f, "%d,%lld,%.6f,%.6f,%.6e,%g,%lld,%.1f\n", e->epoch, (long long)e->step, e->train_loss,
            e->val_acc, e->lr, e->loss_scale, (long long)e->skipped, e->samples_per_s);
  }
  return close_written(f, path);
}

int write_compare_csv(const char *path, const run_result *runs, int n) {
  FILE *f = open_for_writing(path);
  if (!f) return 1;
  fprintf(f, "optimizer,lr,weight_decay,final_loss,val_acc,seconds,skipped\n");
  for (int i = 0; i < n; i++) {
    const run_result *r = &runs[i];
    const epoch_record *last = &r->history[r->epochs - 1];
    fprintf(f, "%s,%g,%g,%.6f,%.6f,%.3f,%lld\n", opt_name(r->opt), r->lr, r->wd, last->train_loss,
            last->val_acc, r->seconds, (long long)last->skipped);
  }
  return close_written(f, path);
}

/* ---------------------------------------------------------------- plot */

/* Whether an executable called name is on PATH. */
static int on_path(const char *name) {
  const char *path = getenv("PATH");
  if (!path) return 0;
  char dir[TRAIN_PATH_BYTES];
  for (const char *p = path; *p;) {
    size_t len = strcspn(p, ":");
    int n = snprintf(dir, sizeof dir, "%.*s/%s", (int)len, p, name);
    if (len && n < (int)sizeof dir && access(dir, X_OK) == 0) return 1;
    p += len + (p[len] == ':');
  }
  return 0;
}

/* Runs "gnuplot script" and waits; 0 when it exits 0.  gnuplot's stderr
 * goes to /dev/null: a run of one epoch plots single points, for which it
 * warns of empty ranges on every success.  A failure is still reported
 * (its exit status), with the script to rerun by hand. */
static int run_gnuplot(const char *script) {
  char prog[] = "gnuplot";
  char *argv[] = {prog, (char *)script, NULL};
  posix_spawn_file_actions_t quiet;
  if (posix_spawn_file_actions_init(&quiet) != 0) return 1;
  pid_t pid;
  int status,
      rc = posix_spawn_file_actions_addopen(&quiet, STDERR_FILENO, "/dev/null", O_WRONLY, 0);
  if (rc == 0) rc = posix_spawnp(&pid, "gnuplot", &quiet, NULL, argv, environ);
  posix_spawn_file_actions_destroy(&quiet);
  if (rc != 0 || waitpid(pid, &status, 0) != pid) return 1;
  return !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/* gnuplot strings are single-quoted here: a path with a quote or a line
 * break cannot go in. */
static int quotable(const char *s) {
  return !strpbrk(s, "'\n\r");
}

static void write_plot_header(FILE *f, const char *png, const char *title) {
  fprintf(f,
          "# Written by examples/train; run `gnuplot <this file>` to redraw.\n"
          "if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) {\n"
          "  set terminal pngcairo size 1100,450 noenhanced\n"
          "} else {\n"
          "  set terminal png size 1100,450 noenhanced\n"
          "}\n"
          "set output '%s'\n"
          "set datafile separator comma\n"
          "set grid\n"
          "set key top right\n"
          "set multiplot layout 1,2 title '%s'\n"
          "set xlabel 'epoch'\n",
          png, title);
}

/* Writes the script; runs gnuplot when wanted and installed; says where
 * things are.  Plotting is never an error: the CSV is the result. */
static void finish_plot(const char *script, const char *png, int want_plot) {
  if (!want_plot) {
    printf("plot: skipped (--no-plot); gnuplot script: %s\n", script);
  } else if (!on_path("gnuplot")) {
    printf(
        "plot: skipped, gnuplot is not installed (apt-get install gnuplot-nox, then run "
        "`gnuplot %s`)\n",
        script);
  } else if (run_gnuplot(script)) {
    printf("plot: gnuplot failed on %s (run it by hand to see why); the CSV is complete\n", script);
  } else {
    printf("plot: %s\n", png);
  }
}

/* out_dir/name with the extension ext. */
static void out_path(char *buf, size_t size, const char *out_dir, const char *name,
                     const char *ext) {
  snprintf(buf, size, "%s/%s.%s", out_dir, name, ext);
}

void plot_run(const char *out_dir, const run_result *r, int want_plot) {
  char name[64], csv[TRAIN_PATH_BYTES], png[TRAIN_PATH_BYTES], script[TRAIN_PATH_BYTES], title[128];
  snprintf(name, sizeof name, "train_%s", opt_name(r->opt));
  out_path(csv, sizeof csv, out_dir, name, "csv");
  out_path(png, sizeof png, out_dir, name, "png");
  out_path(script, sizeof script, out_dir, name, "gp");
  FILE *f = quotable(out_dir) ? fopen(script, "w") : NULL;
  if (!f) {
    printf("plot: skipped, cannot write a gnuplot script into '%s'\n", out_dir);
    return;
  }
  snprintf(title, sizeof title, "%s, lr %g: %.2f%% validation accuracy", opt_name(r->opt), r->lr,
           100.0 * r->history[r->epochs - 1].val_acc);
  write_plot_header(f, png, title);
  fprintf(f,
          "set ylabel 'training loss'\nset logscale y\n"
          "plot '%s' using 'epoch':'train_loss' with linespoints title 'training loss'\n"
          "unset logscale y\nset ylabel 'validation accuracy (%%)'\nset key bottom right\n"
          "plot '%s' using 'epoch':(100*column('val_acc')) with linespoints "
          "title 'validation accuracy'\n"
          "unset multiplot\n",
          csv, csv);
  if (close_written(f, script)) return;
  finish_plot(script, png, want_plot);
}

/* One colour per optimizer (gnuplot's own cycle has 8, and --compare
 * draws 10 lines), dashed after the first 10. */
static const char *const line_colors[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                          "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};
#define N_LINE_COLORS ((int)(sizeof line_colors / sizeof line_colors[0]))

static void plot_all(FILE *f, const char *out_dir, const run_result *runs, int n,
                     const char *ycol) {
  fprintf(f, "plot ");
  for (int i = 0; i < n; i++)
    fprintf(f, "%s'%s/train_%s.csv' using 'epoch':%s with lines lw 2 lc rgb '%s' dt %d title '%s'",
            i ? ", \\\n     " : "", out_dir, opt_name(runs[i].opt), ycol,
            line_colors[i % N_LINE_COLORS], 1 + i / N_LINE_COLORS, opt_name(runs[i].opt));
  fprintf(f, "\n");
}

void plot_compare(const char *out_dir, const run_result *runs, int n, int want_plot) {
  char png[TRAIN_PATH_BYTES], script[TRAIN_PATH_BYTES];
  out_path(png, sizeof png, out_dir, "compare", "png");
  out_path(script, sizeof script, out_dir, "compare", "gp");
  FILE *f = quotable(out_dir) ? fopen(script, "w") : NULL;
  if (!f) {
    printf("plot: skipped, cannot write a gnuplot script into '%s'\n", out_dir);
    return;
  }
  write_plot_header(f, png, "every optimizer on the 8x8 digits");
  /* ten entries: beside the first panel (they serve both) rather than over
   * the curves */
  fprintf(f, "set key outside right top\nset ylabel 'training loss'\nset logscale y\n");
  plot_all(f, out_dir, runs, n, "'train_loss'");
  fprintf(f, "unset logscale y\nset ylabel 'validation accuracy (%%)'\nunset key\n");
  plot_all(f, out_dir, runs, n, "(100*column('val_acc'))");
  fprintf(f, "unset multiplot\n");
  if (close_written(f, script)) return;
  finish_plot(script, png, want_plot);
}

void warn_if_diverged(int opt, const char *what, double loss, double lr) {
  if (isfinite(loss)) return;
  fflush(stdout);
  fprintf(stderr, "train: the run diverged: %s's final %s is %g (lr %g; try a smaller --lr)\n",
          opt_name(opt), what, loss, lr);
}
