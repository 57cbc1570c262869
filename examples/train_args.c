/*
 * train_args.c -- the command line of examples/train: one table of flags,
 * a parser that checks every value against it, and the checks that need
 * several flags at once.  Every problem is one line on stderr.
 */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train.h"

#ifndef FO_TRAIN_DEFAULT_DATA
#define FO_TRAIN_DEFAULT_DATA "data/digits.csv.gz"
#endif

enum { MODE_TRAIN = 1, MODE_BOWL = 2, MODE_BOTH = 3 };
enum { OPEN_LO = 1, OPEN_HI = 2 };

typedef enum flag_kind {
  FLAG_SWITCH, /* no value: stores (int)lo */
  FLAG_INT,    /* long in [lo, hi] */
  FLAG_U64,    /* any unsigned 64-bit integer */
  FLAG_REAL,   /* finite double between lo and hi (see open) */
  FLAG_TEXT,   /* a non-empty string */
  FLAG_CHOICE, /* one of choices, stored as its index */
  FLAG_LIST    /* comma-separated finite doubles between lo and hi (see open) */
} flag_kind;

typedef struct flag_spec {
  const char *name;
  flag_kind kind;
  unsigned modes;
  size_t offset;       /* of the field in train_config */
  size_t count_offset; /* FLAG_LIST: of its int count */
  double lo, hi;
  int open;                   /* OPEN_LO, OPEN_HI: the range excludes that end */
  const char *const *choices; /* FLAG_CHOICE: NULL-terminated */
  const char *metavar;        /* NULL for FLAG_CHOICE: metavar_of() lists the choices */
  const char *help;
} flag_spec;

static const char *const device_names[] = {"auto", "cpu", "cuda", NULL};
static const char *const opt_names[] = {"sgd",     "nesterov", "adam", "adamw", "lion", "adagrad",
                                        "rmsprop", "nadam",    "lamb", "lars",  NULL};
static const char *const schedule_names[] = {"constant", "cosine", "step", "exponential",
                                             "restarts", "cyclic", NULL};
static const char *const precision_names[] = {"fp32", "bf16", "fp16", NULL};

#define OFF(field) offsetof(train_config, field)

static const flag_spec flags[] = {
    {"--device", FLAG_CHOICE, MODE_TRAIN, OFF(device), 0, 0, 0, 0, device_names, NULL,
     "where forward, backward and the step run; auto: CUDA when a GPU is usable"},
    {"--data", FLAG_TEXT, MODE_TRAIN, OFF(data_path), 0, 0, 0, 0, NULL, "PATH",
     "the digits CSV, gzip or plain (default: the repository's data/digits.csv.gz)"},
    {"--layers", FLAG_INT, MODE_TRAIN, OFF(layers), 0, 0, TRAIN_MAX_HIDDEN_LAYERS, 0, NULL, "N",
     "hidden layers, 0..8 (default 2)"},
    {"--hidden", FLAG_INT, MODE_TRAIN, OFF(hidden), 0, 1, TRAIN_MAX_WIDTH, 0, NULL, "N",
     "width of every hidden layer, 1..4096 (default 128)"},
    {"--epochs", FLAG_INT, MODE_TRAIN, OFF(epochs), 0, 1, 100000, 0, NULL, "N",
     "passes over the training set (default 30)"},
    {"--batch", FLAG_INT, MODE_TRAIN, OFF(batch), 0, 1, 1 << 20, 0, NULL, "N",
     "rows per step (default 64); the last partial batch of an epoch is dropped"},
    {"--val-frac", FLAG_REAL, MODE_TRAIN, OFF(val_frac), 0, 0, 0.9, OPEN_LO, NULL, "F",
     "held-out validation fraction, in (0, 0.9] (default 0.2)"},
    {"--seed", FLAG_U64, MODE_TRAIN, OFF(seed), 0, 0, 0, 0, NULL, "S",
     "seeds the split, the initial weights and the batch order (default 42)"},
    {"--opt", FLAG_CHOICE, MODE_BOTH, OFF(opt), 0, 0, 0, 0, opt_names, NULL,
     "the optimizer (default adamw)"},
    {"--lr", FLAG_REAL, MODE_BOTH, OFF(lr), 0, 0, 1e6, OPEN_LO, NULL, "X",
     "base learning rate, > 0 (default per optimizer, see docs/train.md)"},
    {"--wd", FLAG_REAL, MODE_BOTH, OFF(wd), 0, 0, 1e6, 0, NULL, "X",
     "weight decay of the weights, >= 0 (biases get none; default per optimizer)"},
    {"--momentum", FLAG_REAL, MODE_BOTH, OFF(momentum), 0, 0, 1e3, 0, NULL, "X",
     "SGD, LARS momentum, >= 0 (default 0 for sgd, 0.9 for nesterov and lars)"},
    {"--beta1", FLAG_REAL, MODE_BOTH, OFF(beta1), 0, 0, 1, OPEN_HI, NULL, "X",
     "Adam/AdamW/Lion/NAdam/LAMB beta1, in [0, 1) (default 0.9)"},
    {"--beta2", FLAG_REAL, MODE_BOTH, OFF(beta2), 0, 0, 1, OPEN_HI, NULL, "X",
     "Adam/AdamW/Lion/NAdam/LAMB beta2, in [0, 1) (default 0.999; Lion 0.99)"},
    {"--clip", FLAG_REAL, MODE_BOTH, OFF(clip), 0, 0, 1e30, 0, NULL, "X",
     "clip the global gradient norm to X; 0: off (default 0)"},
    {"--schedule", FLAG_CHOICE, MODE_BOTH, OFF(schedule), 0, 0, 0, 0, schedule_names, NULL,
     "learning-rate schedule after the warmup (default cosine; bowl: constant)"},
    {"--warmup", FLAG_INT, MODE_BOTH, OFF(warmup), 0, 0, 1e9, 0, NULL, "N",
     "linear warmup steps (default one epoch; bowl: 0)"},
    {"--precision", FLAG_CHOICE, MODE_TRAIN, OFF(precision), 0, 0, 0, 0, precision_names, NULL,
     "parameter and gradient dtype; 16-bit adds fp32 master weights and dynamic loss scaling"},
    {"--graph", FLAG_SWITCH, MODE_TRAIN, OFF(graph), 0, 1, 0, 0, NULL, NULL,
     "GPU: capture the whole training step as a CUDA graph and replay it"},
    {"--zero", FLAG_SWITCH, MODE_TRAIN, OFF(zero), 0, 1, 0, 0, NULL, NULL,
     "several processes: shard the optimizer state over them (ZeRO stage 1)"},
    {"--compare", FLAG_SWITCH, MODE_TRAIN, OFF(compare), 0, 1, 0, 0, NULL, NULL,
     "train with every optimizer in turn; one table, one plot"},
    {"--out", FLAG_TEXT, MODE_TRAIN, OFF(out_dir), 0, 0, 0, 0, NULL, "DIR",
     "where the CSV curves and plots go (default out)"},
    {"--no-plot", FLAG_SWITCH, MODE_TRAIN, OFF(plot), 0, 0, 0, 0, NULL, NULL,
     "write the CSV and the gnuplot script, but do not run gnuplot"},
    {"--bowl", FLAG_SWITCH, MODE_BOTH, OFF(bowl), 0, 1, 0, 0, NULL, NULL,
     "minimise f(x) = 1/2 sum a_i x_i^2 instead of training"},
    {"--coeffs", FLAG_LIST, MODE_BOWL, OFF(coeffs), OFF(n_coeffs), 0, 1e6, OPEN_LO, NULL,
     "A1,A2,..", "curvatures a_i > 0 (default 1,10)"},
    {"--start", FLAG_LIST, MODE_BOWL, OFF(start), OFF(n_start), -1e6, 1e6, 0, NULL, "X1,X2,..",
     "starting point (default all ones, one per a_i)"},
    {"--steps", FLAG_INT, MODE_BOWL, OFF(steps), 0, 0, 10000000, 0, NULL, "N",
     "steps (default 100)"},
    {"--trajectory", FLAG_TEXT, MODE_BOWL, OFF(trajectory_path), 0, 0, 0, 0, NULL, "FILE",
     "write the trajectory (step, loss, x) as CSV"},
};

#define N_FLAGS ((int)(sizeof flags / sizeof flags[0]))

const char *opt_name(int opt) {
  return opt >= 0 && opt < OPT_COUNT ? opt_names[opt] : "?";
}
const char *precision_name(int precision) {
  return precision_names[precision];
}
const char *schedule_name(int schedule) {
  return schedule_names[schedule];
}

fo_dtype precision_dtype(int precision) {
  return precision == PREC_BF16   ? FO_DTYPE_BF16
         : precision == PREC_FP16 ? FO_DTYPE_F16
                                  : FO_DTYPE_F32;
}

static void set_defaults(train_config *cfg) {
  memset(cfg, 0, sizeof *cfg);
  cfg->plot = 1;
  cfg->device = DEVICE_AUTO;
  cfg->opt = -1;      /* adamw; -1 until then tells --compare whether --opt was given */
  cfg->schedule = -1; /* cosine when training, constant for the bowl */
  cfg->precision = PREC_FP32;
  cfg->data_path = FO_TRAIN_DEFAULT_DATA;
  cfg->out_dir = "out";
  cfg->layers = 2;
  cfg->hidden = 128;
  cfg->epochs = 30;
  cfg->batch = 64;
  cfg->warmup = -1;
  cfg->steps = 100;
  cfg->seed = 42;
  cfg->val_frac = 0.2;
  cfg->lr = cfg->wd = cfg->momentum = cfg->beta1 = cfg->beta2 = NAN;
  cfg->clip = 0.0;
}

/* The value a flag takes, in words: its metavar, or a choice's choices
 * joined by '|' from the table the parser reads, so that the help and the
 * messages cannot fall behind the choices.  NULL for a switch. */
static const char *metavar_of(const flag_spec *f, char *buf, size_t size) {
  if (f->kind != FLAG_CHOICE) return f->metavar;
  size_t used = 0;
  buf[0] = '\0';
  for (int i = 0; f->choices[i] && used < size; i++)
    used += (size_t)snprintf(buf + used, size - used, "%s%s", i ? "|" : "", f->choices[i]);
  return buf;
}

enum { HELP_COLUMN = 22 };

static void print_help(void) {
  printf(
      "usage: train [flags]                 train an MLP on the 8x8 digits\n"
      "       train --compare [flags]       ... with every optimizer in turn\n"
      "       train --bowl [bowl flags]     minimise a quadratic bowl\n\nflags:\n");
  for (int i = 0; i < N_FLAGS; i++) {
    char lhs[160], choices[128];
    const char *metavar = metavar_of(&flags[i], choices, sizeof choices);
    int n = snprintf(lhs, sizeof lhs, "%s%s%s", flags[i].name, metavar ? " " : "",
                     metavar ? metavar : "");
    if (n > HELP_COLUMN) /* a long list of choices: the text goes below it */
      printf("  %s\n  %-*s", lhs, HELP_COLUMN, "");
    else
      printf("  %-*s", HELP_COLUMN, lhs);
    printf(" %s%s\n", flags[i].modes == MODE_BOWL ? "bowl: " : "", flags[i].help);
  }
  printf("  %-22s %s\n\nSee docs/train.md.\n", "--help", "this text");
}

static const flag_spec *find_flag(const char *name, size_t len) {
  for (int i = 0; i < N_FLAGS; i++)
    if (strlen(flags[i].name) == len && !strncmp(flags[i].name, name, len)) return &flags[i];
  return NULL;
}

/* "[lo, hi]", with a parenthesis at an open end. */
static void describe_bounds(const flag_spec *f, char *buf, size_t size) {
  snprintf(buf, size, "%c%g, %g%c", f->open & OPEN_LO ? '(' : '[', f->lo, f->hi,
           f->open & OPEN_HI ? ')' : ']');
}

static void describe_range(const flag_spec *f, char *buf, size_t size) {
  if (f->kind == FLAG_INT) {
    snprintf(buf, size, "an integer in [%.0f, %.0f]", f->lo, f->hi);
    return;
  }
  char bounds[64];
  describe_bounds(f, bounds, sizeof bounds);
  snprintf(buf, size, "a number in %s", bounds);
}

static int in_range(const flag_spec *f, double v) {
  return isfinite(v) && (f->open & OPEN_LO ? v > f->lo : v >= f->lo) &&
         (f->open & OPEN_HI ? v < f->hi : v <= f->hi);
}

/* One finite double; *end is where parsing stopped. */
static int parse_double(const char *s, double *out, char **end) {
  errno = 0;
  *out = strtod(s, end);
  return *end != s && errno == 0 && isfinite(*out);
}

static int bad_value(const flag_spec *f, const char *value) {
  char range[96];
  describe_range(f, range, sizeof range);
  fprintf(stderr, "train: %s wants %s, got '%s'\n", f->name, range, value);
  return EXIT_TRAIN_USAGE;
}

static int parse_int_value(const flag_spec *f, const char *value, train_config *cfg) {
  char *end;
  errno = 0;
  long v = strtol(value, &end, 10);
  if (end == value || *end || errno || !in_range(f, (double)v)) return bad_value(f, value);
  *(long *)((char *)cfg + f->offset) = v;
  return 0;
}

static int parse_u64_value(const flag_spec *f, const char *value, train_config *cfg) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(value, &end, 10);
  /* digits only: strtoull would skip a leading space and wrap " -1" */
  if (!isdigit((unsigned char)value[0]) || *end || errno) {
    fprintf(stderr, "train: %s wants a non-negative integer, got '%s'\n", f->name, value);
    return EXIT_TRAIN_USAGE;
  }
  *(uint64_t *)((char *)cfg + f->offset) = (uint64_t)v;
  return 0;
}

static int parse_real_value(const flag_spec *f, const char *value, train_config *cfg) {
  char *end;
  double v;
  if (!parse_double(value, &v, &end) || *end || !in_range(f, v)) return bad_value(f, value);
  *(double *)((char *)cfg + f->offset) = v;
  return 0;
}

static int parse_choice_value(const flag_spec *f, const char *value, train_config *cfg) {
  for (int i = 0; f->choices[i]; i++)
    if (!strcmp(value, f->choices[i])) {
      *(int *)((char *)cfg + f->offset) = i;
      return 0;
    }
  char choices[128];
  fprintf(stderr, "train: %s wants one of %s, got '%s'\n", f->name,
          metavar_of(f, choices, sizeof choices), value);
  return EXIT_TRAIN_USAGE;
}

static int parse_list_value(const flag_spec *f, const char *value, train_config *cfg) {
  double *out = (double *)((char *)cfg + f->offset);
  int n = 0;
  const char *s = value;
  for (;;) {
    char *end;
    double v;
    if (n == BOWL_MAX_DIM) {
      fprintf(stderr, "train: %s takes at most %d values\n", f->name, BOWL_MAX_DIM);
      return EXIT_TRAIN_USAGE;
    }
    if (!parse_double(s, &v, &end) || !in_range(f, v) || (*end && *end != ',')) {
      char bounds[64];
      describe_bounds(f, bounds, sizeof bounds);
      fprintf(stderr, "train: %s wants comma-separated numbers in %s, got '%s'\n", f->name, bounds,
              value);
      return EXIT_TRAIN_USAGE;
    }
    out[n++] = v;
    if (!*end) break;
    s = end + 1;
  }
  *(int *)((char *)cfg + f->count_offset) = n;
  return 0;
}

static int parse_value(const flag_spec *f, const char *value, train_config *cfg) {
  switch (f->kind) {
    case FLAG_INT: return parse_int_value(f, value, cfg);
    case FLAG_U64: return parse_u64_value(f, value, cfg);
    case FLAG_REAL: return parse_real_value(f, value, cfg);
    case FLAG_CHOICE: return parse_choice_value(f, value, cfg);
    case FLAG_LIST: return parse_list_value(f, value, cfg);
    case FLAG_TEXT:
      if (!*value) {
        fprintf(stderr, "train: %s wants a non-empty %s\n", f->name, f->metavar);
        return EXIT_TRAIN_USAGE;
      }
      *(const char **)((char *)cfg + f->offset) = value;
      return 0;
    case FLAG_SWITCH: break;
  }
  *(int *)((char *)cfg + f->offset) = (int)f->lo;
  return 0;
}

/* Each flag given must belong to the mode (training or --bowl). */
static int check_modes(const train_config *cfg, const int *seen) {
  unsigned mode = cfg->bowl ? MODE_BOWL : MODE_TRAIN;
  for (int i = 0; i < N_FLAGS; i++) {
    if (!seen[i] || (flags[i].modes & mode)) continue;
    fprintf(stderr, "train: %s %s\n", flags[i].name,
            cfg->bowl ? "does not apply to --bowl" : "needs --bowl");
    return EXIT_TRAIN_USAGE;
  }
  return 0;
}

static int usage_error(const char *msg) {
  fprintf(stderr, "train: %s\n", msg);
  return EXIT_TRAIN_USAGE;
}

/* --compare picks the optimizers and their hyper-parameters itself. */
static int check_compare_flags(const train_config *cfg) {
  if (!cfg->compare) return 0;
  if (cfg->opt >= 0)
    return usage_error("--compare trains with every optimizer in turn; drop --opt");
  if (!(isnan(cfg->lr) && isnan(cfg->wd) && isnan(cfg->momentum) && isnan(cfg->beta1) &&
        isnan(cfg->beta2)))
    return usage_error(
        "--compare uses each optimizer's own defaults; "
        "drop --lr, --wd, --momentum, --beta1 and --beta2");
  return 0;
}

static int check_optimizer_flags(train_config *cfg) {
  int rc = check_compare_flags(cfg);
  if (rc) return rc;
  if (cfg->opt < 0) cfg->opt = OPT_ADAMW;
  int momentum = opt_has_momentum(cfg->opt), betas = opt_has_betas(cfg->opt);
  if (!momentum && !isnan(cfg->momentum))
    return usage_error("--momentum applies to --opt sgd, nesterov and lars only");
  if (!betas && !(isnan(cfg->beta1) && isnan(cfg->beta2)))
    return usage_error("--beta1 and --beta2 apply to --opt adam, adamw, lion, nadam and lamb only");
  if (cfg->opt == OPT_NESTEROV && cfg->momentum == 0.0)
    return usage_error("--opt nesterov needs --momentum > 0");
  return 0;
}

/* The bowl's defaults: a = (1, 10), and x0 all ones, as long as a. */
static int check_bowl_flags(train_config *cfg) {
  if (!cfg->n_coeffs && cfg->n_start && cfg->n_start != 2) {
    fprintf(stderr,
            "train: --start has %d values but the default --coeffs 1,10 has 2; "
            "give --coeffs too, one value per dimension\n",
            cfg->n_start);
    return EXIT_TRAIN_USAGE;
  }
  if (!cfg->n_coeffs) {
    cfg->n_coeffs = 2;
    cfg->coeffs[0] = 1.0, cfg->coeffs[1] = 10.0;
  }
  if (!cfg->n_start) {
    cfg->n_start = cfg->n_coeffs;
    for (int i = 0; i < cfg->n_start; i++) cfg->start[i] = 1.0;
  }
  if (cfg->n_coeffs != cfg->n_start) {
    fprintf(stderr, "train: --coeffs has %d values but --start has %d; give one per dimension\n",
            cfg->n_coeffs, cfg->n_start);
    return EXIT_TRAIN_USAGE;
  }
  return 0;
}

static int check_combinations(train_config *cfg) {
  int rc = check_optimizer_flags(cfg);
  if (rc) return rc;
  if (cfg->bowl) return check_bowl_flags(cfg);
  if (cfg->graph && cfg->device == DEVICE_CPU)
    return usage_error("--graph captures the GPU step; it needs --device cuda or auto");
  return 0;
}

/* The value of flag f, after '=' (eq) or as the next argument (which *i
 * then steps over); none for a switch. */
static int take_value(const flag_spec *f, const char *eq, int argc, char **argv, int *i,
                      const char **value) {
  if (f->kind == FLAG_SWITCH) {
    if (!eq) return 0;
    fprintf(stderr, "train: %s takes no value\n", f->name);
    return EXIT_TRAIN_USAGE;
  }
  *value = eq ? eq + 1 : (*i + 1 < argc ? argv[++*i] : NULL);
  if (*value) return 0;
  char choices[128];
  fprintf(stderr, "train: %s needs a value (%s)\n", f->name,
          metavar_of(f, choices, sizeof choices));
  return EXIT_TRAIN_USAGE;
}

/* A flag the others leave without effect is refused, as a flag of the
 * other mode is: --hidden widens hidden layers, and --layers 0 has none. */
static int check_dead_flags(const train_config *cfg, const int *seen) {
  const flag_spec *hidden = find_flag("--hidden", strlen("--hidden"));
  if (!cfg->bowl && cfg->layers == 0 && hidden && seen[hidden - flags])
    return usage_error("--hidden sets the width of hidden layers, and --layers 0 has none");
  return 0;
}

int parse_args(int argc, char **argv, train_config *cfg) {
  int seen[N_FLAGS] = {0};
  set_defaults(cfg);
  for (int i = 1; i < argc; i++) {
    const char *arg = argv[i], *eq = strchr(arg, '=');
    if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
      print_help();
      return -1;
    }
    const flag_spec *f = find_flag(arg, eq ? (size_t)(eq - arg) : strlen(arg));
    if (!f) {
      fprintf(stderr, "train: unknown argument '%s' (train --help lists the flags)\n", arg);
      return EXIT_TRAIN_USAGE;
    }
    seen[f - flags] = 1;
    const char *value = NULL;
    int rc = take_value(f, eq, argc, argv, &i, &value);
    if (!rc) rc = parse_value(f, value, cfg);
    if (rc) return rc;
  }
  int rc = check_modes(cfg, seen);
  if (!rc) rc = check_dead_flags(cfg, seen);
  return rc ? rc : check_combinations(cfg);
}
