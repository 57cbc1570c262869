/*
 * shard_shots.h -- snapshots of sharded optimizer states and the
 * configurations of the shard checkpoint tests (test_checkpoint_shard_*.c):
 * what a resumed run must reproduce, taken on every rank of a fleet
 * (thread_ranks.h) and compared bit for bit, shard against shard or a
 * whole state against every rank's shard.
 */
#ifndef FO_TEST_SHARD_SHOTS_H
#define FO_TEST_SHARD_SHOTS_H

#include <stddef.h>
#include <stdint.h>

#include "ckpt_harness.h"
#include "fusedopt.h"
#include "thread_ranks.h"

/* ------------------------------------------------------------- snapshots */

/* Everything a resumed run must reproduce: the step state, the
 * hyper-parameters, the parameter arena and each state role's buffer (the
 * shard, or the whole arena of an unsharded optimizer). */
typedef struct shot {
  fo_step_info info;
  fo_hparams h[2];
  unsigned char *buf[FO_ROLE_COUNT];
  size_t bytes[FO_ROLE_COUNT];
  int64_t first, count;
} shot;

void shot_take(fo_optimizer *opt, shot *s);
void shot_free(shot *s);

/* n bytes of a and b equal (an expectation naming the first difference). */
void expect_same_bytes(const void *a, const void *b, size_t n, const char *what, int role);

/* b (a shard, or whole) equals a (whole, or the same shard): step state
 * (grad_coef too unless skip_coef: it holds 1 / N), hyper-parameters,
 * parameters, and b's slice of every state role. */
void shot_expect(const shot *a, const shot *b, int skip_coef, const char *what);

typedef struct fleet_shot {
  shot s[MAXR];
  int n;
} fleet_shot;

/* Every rank's shot. */
void fleet_take(fleet *f, fleet_shot *x);
void fleet_shot_free(fleet_shot *x);
/* Rank by rank equal. */
void fleet_shot_expect(const fleet_shot *a, const fleet_shot *b, const char *what);

/* A whole state (one unsharded optimizer) against every rank's shard. */
void whole_expect_fleet(const shot *whole, const fleet_shot *b, int skip_coef, const char *what);

/* A safetensors file's JSON header, NUL-terminated (malloc). */
char *header_text(const ck_bytes *b);

/* ------------------------------------------------------------ configs */

/* The configurations of the shard tests: 0 mixed precision with
 * everything on (AdamW, AMSGrad, bf16 with master weights, loss scaling,
 * a schedule, clipping); 1 SGD with Nesterov, fp32, clipping; 2 Lion,
 * fp16 with master weights, loss scaling; 3 Adam, fp32, a schedule (no
 * pre-pass: exact across shardings); 4 AdamW, AMSGrad, bf16 with master
 * weights (no pre-pass, 16-bit). */
ck_cfg cfg_of(int which);

/* ------------------------------------------------------------- refusals */

/* A fleet three steps past its checkpoint, so a load that wrote anything
 * would show.  Step 3 of the run is skipped (an overflow), so the files
 * taken after 4 and 6 step calls hold steps 3 and 5. */
typedef struct bad_fx {
  ck_dir d;
  ck_cfg c;
  paths files; /* per-rank files after 4 steps */
  paths later; /* and after 6 */
  char whole[160];
  fleet f;
  fleet_shot before;
} bad_fx;

/* A fleet of n ranks of cfg_of(0), its files saved after 4 and 6 steps. */
void bad_open(bad_fx *x, int n);

void bad_close(bad_fx *x);
/* Every rank refused alike and nothing changed, nothing faulted. */
void bad_expect(bad_fx *x, fo_status status, const char *want, const char *what);

/* Each rank loads the file the table names for it. */
typedef struct per_rank_paths {
  const char *p[MAXR];
} per_rank_paths;

/* A phase over a per_rank_paths. */
void phase_load_each(fleet *f, int rank, const void *arg);

#endif /* FO_TEST_SHARD_SHOTS_H */
