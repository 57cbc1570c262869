/*
 * test_reliability_files.c -- the edges of issue #20 (reliability, round 2)
 * on the CPU executor, in checkpoint files:
 *
 *   not_regular       load and verify of a FIFO (no writer) return at once;
 *   header_limit      the largest header the writer makes loads; one byte
 *                     more is refused by the save, nothing written;
 *   temp_files        a save removes dead saves' temporaries of its path
 *                     and nothing else; names up to NAME_MAX save and load;
 *   crafted_header    a 40 MB header of tiny JSON values is refused by its
 *                     length before parsing (memory and time bounded by the
 *                     registered tensors).
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "checkpoint_format.h" /* fo_ckpt_header: the writer's header */
#include "ckpt_harness.h"
#include "internal.h" /* fo_inject_fault */
#include "reliability.h"
#include "testutil.h"

/* ---------------------------------------------------------- not regular */

/* A FIFO nobody writes: a blocking open would wait forever.  The calls run
 * in a child with an alarm, so that a regression fails the test (the
 * child dies of SIGALRM) instead of hanging it. */
Test(not_regular, load_and_verify_of_a_fifo_return_at_once) {
  ck_dir dir;
  ck_dir_make(&dir);
  char fifo[128];
  ck_dir_file(&dir, "pipe.safetensors", fifo, sizeof fifo);
  cr_assert_eq(mkfifo(fifo, 0600), 0, "mkfifo: %s", strerror(errno));
  ck_model m;
  ck_model_create(&m, &sgd_cfg, 1);
  ck_step(&m, 0);
  ck_snap before;
  ck_snapshot(&m, &before);
  pid_t child = fork();
  cr_assert_neq(child, -1);
  if (child == 0) {
    alarm(10);
    int bad = 0;
    double t0 = tu_now();
    fo_status st = fo_checkpoint_verify(fifo);
    if (st != FO_ERR_IO || !strstr(fo_last_error(), "not a regular file")) bad |= 1;
    st = fo_optimizer_load(m.opt, fifo, NULL);
    if (st != FO_ERR_IO || !strstr(fo_last_error(), "not a regular file")) bad |= 2;
    const char *paths[1] = {fifo};
    st = fo_optimizer_load_shards(m.opt, paths, 1, NULL);
    if (st != FO_ERR_IO) bad |= 4;
    if (tu_now() - t0 > 2.0) bad |= 8;
    _exit(bad);
  }
  int status = 0;
  cr_assert_eq(waitpid(child, &status, 0), child);
  cr_assert(WIFEXITED(status), "the child hung on the FIFO (signal %d)",
            WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  cr_expect_eq(WEXITSTATUS(status), 0, "failed checks (bits): %d", WEXITSTATUS(status));
  /* and in this process, the message and nothing changed */
  cr_expect_eq(fo_checkpoint_verify(fifo), FO_ERR_IO);
  cr_expect_neq(strstr(fo_last_error(), "pipe.safetensors"), NULL, "%s", fo_last_error());
  cr_expect_eq(fo_optimizer_load(m.opt, fifo, NULL), FO_ERR_IO);
  ck_snap after;
  ck_snapshot(&m, &after);
  ck_snap_expect_equal(&before, &after, "a refused FIFO");
  /* /dev/null is a character device: refused too */
  cr_expect_eq(fo_checkpoint_verify("/dev/null"), FO_ERR_IO);
  ck_snap_free(&before);
  ck_snap_free(&after);
  ck_model_destroy(&m);
  ck_dir_remove(&dir);
}

/* A save writes a temporary file and renames it over path: a FIFO, a
 * device node, a directory or a symbolic link there would be replaced
 * (the link with the file instead of written through), so each is refused
 * before anything is written. */
Test(not_regular, save_refuses_what_its_rename_would_replace) {
  ck_dir dir;
  ck_dir_make(&dir);
  char fifo[128], link[128], target[128], sub[128];
  ck_dir_file(&dir, "pipe.safetensors", fifo, sizeof fifo);
  ck_dir_file(&dir, "link.safetensors", link, sizeof link);
  ck_dir_file(&dir, "target.safetensors", target, sizeof target);
  ck_dir_file(&dir, "sub.safetensors", sub, sizeof sub);
  cr_assert_eq(mkfifo(fifo, 0600), 0, "mkfifo: %s", strerror(errno));
  cr_assert_eq(mkdir(sub, 0700), 0, "mkdir: %s", strerror(errno));
  FILE *f = fopen(target, "wb");
  cr_assert_not_null(f);
  fputs("not a checkpoint", f);
  fclose(f);
  cr_assert_eq(symlink("target.safetensors", link), 0, "symlink: %s", strerror(errno));
  ck_model m;
  ck_model_create(&m, &sgd_cfg, 1);
  ck_step(&m, 0);
  const char *paths[3] = {fifo, link, sub};
  const char *says[3] = {"FIFO", "symbolic link", "directory"};
  for (int i = 0; i < 3; i++) {
    cr_expect_eq(fo_optimizer_save(m.opt, paths[i], NULL), FO_ERR_IO, "%s", paths[i]);
    cr_expect_neq(strstr(fo_last_error(), says[i]), NULL, "%s", fo_last_error());
  }
  struct stat sb;
  cr_expect(lstat(fifo, &sb) == 0 && S_ISFIFO(sb.st_mode), "the FIFO was replaced");
  cr_expect(lstat(link, &sb) == 0 && S_ISLNK(sb.st_mode), "the link was replaced");
  cr_expect(lstat(sub, &sb) == 0 && S_ISDIR(sb.st_mode), "the directory was replaced");
  cr_expect(lstat(target, &sb) == 0 && sb.st_size == 16, "the link's target was written");
  cr_expect_eq(ck_dir_count(&dir), 4, "a temporary file was left");
  /* a regular file there is replaced, as before */
  CK_OK(fo_optimizer_save(m.opt, target, NULL));
  CK_OK(fo_checkpoint_verify(target));
  ck_model_destroy(&m);
  rmdir(sub);
  ck_dir_remove(&dir);
}

/* A save that replaces a file keeps its permission bits, whatever the
 * umask: a checkpoint made private stays private, one made group-readable
 * under a strict umask stays so.  A new file gets 0666 less the umask. */
Test(not_regular, a_replacing_save_keeps_the_permissions) {
  ck_dir dir;
  ck_dir_make(&dir);
  char path[128];
  ck_dir_file(&dir, "ck.safetensors", path, sizeof path);
  ck_model m;
  ck_model_create(&m, &sgd_cfg, 1);
  ck_step(&m, 0);
  const mode_t old_mask = umask(022);
  CK_OK(fo_optimizer_save(m.opt, path, NULL));
  struct stat sb;
  cr_assert_eq(stat(path, &sb), 0);
  cr_expect_eq(sb.st_mode & 0777, 0644, "a new file: %o", (unsigned)(sb.st_mode & 0777));
  const struct {
    mode_t mode, mask;
  } cases[] = {{0600, 022}, {0640, 022}, {0644, 077}, {0400, 022}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    cr_assert_eq(chmod(path, cases[i].mode), 0);
    umask(cases[i].mask);
    ck_step(&m, (int)i + 1);
    CK_OK(fo_optimizer_save(m.opt, path, NULL));
    cr_assert_eq(stat(path, &sb), 0);
    cr_expect_eq(sb.st_mode & 0777, cases[i].mode, "mode %o under umask %o became %o",
                 (unsigned)cases[i].mode, (unsigned)cases[i].mask, (unsigned)(sb.st_mode & 0777));
    CK_OK(fo_checkpoint_verify(path));
  }
  umask(old_mask);
  ck_model_destroy(&m);
  ck_dir_remove(&dir);
}

/* ------------------------------------------------------- header limit */

/* An optimizer of one fp32 SGD tensor (no state: only the parameters are
 * saved) whose name is len bytes of 'n'. */
typedef struct named {
  fo_optimizer *opt;
  char *name;
  float p[3], g[3];
} named;

static void named_create(named *x, size_t len, uint64_t seed) {
  x->name = malloc(len + 1);
  cr_assert_not_null(x->name);
  memset(x->name, 'n', len);
  x->name[len] = '\0';
  for (int k = 0; k < 3; k++) x->p[k] = ck_value(seed, 0, 0, (uint64_t)k);
  for (int k = 0; k < 3; k++) x->g[k] = ck_value(seed, 1, 0, (uint64_t)k);
  fo_tensor_desc t = {3, 0, x->p, x->g, x->name};
  fo_options o;
  fo_options_default(&o);
  o.algorithm = FO_ALG_SGD;
  fo_hparams h;
  fo_hparams_default(FO_ALG_SGD, &h);
  CK_OK(fo_optimizer_create(&x->opt, &o, &h, 1, &t, 1));
}

static void named_destroy(named *x) {
  fo_optimizer_destroy(x->opt);
  free(x->name);
}

/* The header a save of an optimizer with a name of len bytes writes, or 0
 * when the writer refuses it as too large. */
static size_t header_len(size_t len) {
  named x;
  named_create(&x, len, 1);
  fo_ckpt_plan plan;
  CK_OK(fo_ckpt_plan_build("test", x.opt, &plan));
  char *text = NULL;
  size_t n = 0;
  fo_status st = fo_ckpt_header("test", x.opt, x.opt->state, &plan, &text, &n);
  cr_assert(st == FO_SUCCESS || st == FO_ERR_INVALID_STATE, "%s", fo_last_error());
  free(text);
  fo_ckpt_plan_free(&plan);
  named_destroy(&x);
  return st == FO_SUCCESS ? n : 0;
}

static uint64_t file_header_len(const char *path) {
  unsigned char b[8];
  FILE *f = fopen(path, "rb");
  cr_assert_not_null(f);
  cr_assert_eq(fread(b, 1, 8, f), 8u);
  fclose(f);
  uint64_t n = 0;
  for (int i = 7; i >= 0; i--) n = n << 8 | b[i];
  return n;
}

/* The largest header the writer makes is one the reader takes: the save
 * with the longest name that fits loads, and one byte more is refused by
 * the save itself, before anything is written. */
Test(header_limit, the_largest_state_save_accepts_loads) {
  const size_t limit = 100000000; /* safetensors' limit, the reader's */
  const size_t h0 = header_len(1000), h1 = header_len(2000);
  cr_assert(h1 > h0 && h0 > 0);
  /* The header grows by the name's count of appearances per byte of it,
   * give or take its padding: start from that estimate, then bisect
   * between a name that fits and one that does not (each probe builds a
   * ~100 MB header, so a search byte by byte would take minutes, and a
   * wide window seconds more under the sanitizers). */
  const size_t per_byte = (h1 - h0 + 500) / 1000;
  size_t lo = 1000 + (limit - h0) / per_byte - 32, hi = lo + 64;
  cr_assert(header_len(lo) != 0 && header_len(hi) == 0, "the estimate [%zu, %zu] misses", lo, hi);
  while (hi - lo > 1) {
    const size_t mid = lo + (hi - lo) / 2;
    if (header_len(mid) != 0)
      lo = mid;
    else
      hi = mid;
  }
  const size_t len = lo;
  const size_t largest = header_len(len);
  cr_assert(largest <= limit && largest > limit - 64, "header %zu for a %zu-byte name", largest,
            len);

  ck_dir dir;
  ck_dir_make(&dir);
  char path[128];
  ck_dir_file(&dir, "large.safetensors", path, sizeof path);
  named x, y, z;
  named_create(&x, len, 1);
  CK_OK(fo_optimizer_step(x.opt, NULL));
  CK_OK(fo_optimizer_save(x.opt, path, NULL));
  cr_expect_eq(file_header_len(path), largest);
  CK_OK(fo_checkpoint_verify(path));
  named_create(&y, len, 2);
  CK_OK(fo_optimizer_load(y.opt, path, NULL));
  cr_expect(memcmp(x.p, y.p, sizeof x.p) == 0, "the loaded parameters differ");

  /* one byte more: refused by the save, the old file untouched, no
   * temporary file */
  ck_bytes before = ck_read(path);
  named_create(&z, len + 1, 3);
  cr_expect_eq(fo_optimizer_save(z.opt, path, NULL), FO_ERR_INVALID_STATE);
  cr_expect_neq(strstr(fo_last_error(), "more than the 100000000"), NULL, "%s", fo_last_error());
  ck_bytes after = ck_read(path);
  cr_expect(before.n == after.n && memcmp(before.p, after.p, before.n) == 0,
            "a refused save changed the file");
  cr_expect_eq(ck_dir_count(&dir), 1, "a refused save left a file behind");
  free(before.p);
  free(after.p);
  named_destroy(&x);
  named_destroy(&y);
  named_destroy(&z);
  ck_dir_remove(&dir);
}

/* ------------------------------------------------------ temporary files */

/* A process that has exited (and been reaped): its pid names no process. */
static pid_t dead_pid(void) {
  pid_t c = fork();
  cr_assert_neq(c, -1);
  if (c == 0) _exit(0);
  cr_assert_eq(waitpid(c, NULL, 0), c);
  return c;
}

static void touch(const char *dir, const char *name) {
  char f[1280];
  snprintf(f, sizeof f, "%s/%s", dir, name);
  ck_write(f, "stale", 5);
}

static int exists(const char *dir, const char *name) {
  char f[1280];
  struct stat sb;
  snprintf(f, sizeof f, "%s/%s", dir, name);
  return lstat(f, &sb) == 0;
}

/* A save removes the temporary files that dead processes' saves of the
 * same path left, and nothing else. */
Test(temp_files, a_save_removes_stale_temporaries_of_its_path_only) {
  ck_dir dir;
  ck_dir_make(&dir);
  char path[128], outside[128];
  ck_dir_file(&dir, "ck.safetensors", path, sizeof path);
  snprintf(outside, sizeof outside, "%s.outside", dir.path);
  ck_write(outside, "keep", 4);
  ck_model m;
  ck_model_create(&m, &sgd_cfg, 1);
  ck_step(&m, 0);
  CK_OK(fo_optimizer_save(m.opt, path, NULL));
  const long dead = (long)dead_pid(), self = (long)getpid();
  char gone[2][96], kept[12][96];
  snprintf(gone[0], 96, "ck.safetensors.tmp-%ld-deadbeef", dead);
  snprintf(gone[1], 96, "ck.safetensors.tmp-%ld-0123abcd", dead);
  snprintf(kept[0], 96, "ck.safetensors.tmp-%ld-deadbeef", self); /* this process */
  snprintf(kept[1], 96, "ck.safetensors.tmp-%d-deadbeef", 1);     /* alive */
  snprintf(kept[2], 96, "ck.safetensors.tmp-%ld-deadbeeg", dead); /* not hex */
  snprintf(kept[3], 96, "ck.safetensors.tmp-%ld-DEADBEEF", dead); /* not ours */
  snprintf(kept[4], 96, "ck.safetensors.tmp-%ld-deadbee", dead);  /* 7 digits */
  snprintf(kept[5], 96, "ck.safetensors.tmp-%ld-deadbeef.bak", dead);
  snprintf(kept[6], 96, "other.safetensors.tmp-%ld-deadbeef", dead); /* another path */
  snprintf(kept[7], 96, "ck.safetensors.tmp-notes");
  snprintf(kept[8], 96, "ck.safetensors.tmp-%ld-12345678", dead); /* a directory */
  snprintf(kept[9], 96, "ck.safetensors.tmp-%ld-87654321", dead); /* a symlink */
  /* not as the library prints a pid: a leading zero; a value past pid_t
   * that kill() would see wrapped to the dead pid */
  snprintf(kept[10], 96, "ck.safetensors.tmp-0%ld-deadbeef", dead);
  snprintf(kept[11], 96, "ck.safetensors.tmp-%lld-deadbeef", (long long)dead + (1ll << 32));
  for (int i = 0; i < 2; i++) touch(dir.path, gone[i]);
  for (int i = 0; i < 8; i++) touch(dir.path, kept[i]);
  touch(dir.path, kept[10]);
  touch(dir.path, kept[11]);
  char f[1200];
  snprintf(f, sizeof f, "%s/%s", dir.path, kept[8]);
  cr_assert_eq(mkdir(f, 0700), 0);
  snprintf(f, sizeof f, "%s/%s", dir.path, kept[9]);
  cr_assert_eq(symlink(outside, f), 0);

  ck_step(&m, 1);
  CK_OK(fo_optimizer_save(m.opt, path, NULL));
  for (int i = 0; i < 2; i++) cr_expect(!exists(dir.path, gone[i]), "%s was left", gone[i]);
  for (int i = 0; i < 12; i++) cr_expect(exists(dir.path, kept[i]), "%s was removed", kept[i]);
  cr_expect_eq(access(outside, F_OK), 0, "the symlink's target was removed");
  CK_OK(fo_checkpoint_verify(path));
  snprintf(f, sizeof f, "%s/%s", dir.path, kept[8]);
  rmdir(f);
  unlink(outside);
  ck_model_destroy(&m);
  ck_dir_remove(&dir);
}

/* Save into path in a child killed halfway through the data (the
 * injected crash): it leaves its temporary file. */
static void crash_a_save(ck_model *m, const char *path) {
  pid_t c = fork();
  cr_assert_neq(c, -1);
  if (c == 0) {
    fo_inject_fault(m->opt, FO_FAULT_SAVE_CRASH);
    fo_optimizer_save(m->opt, path, NULL);
    _exit(1); /* not reached: the save kills the process */
  }
  int status = 0;
  cr_assert_eq(waitpid(c, &status, 0), c);
  cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
}

/* The real case: a save killed halfway leaves its temporary file; the next
 * save of the path removes it.  For names whose temporary name needs the
 * hashed stem (232 bytes and more, up to NAME_MAX) too: such names save,
 * verify and load. */
Test(temp_files, crashed_saves_are_cleaned_and_long_names_save) {
  const size_t lens[6] = {20, 231, 237, 250, 254, 255};
  for (int k = 0; k < 6; k++) {
    ck_dir dir;
    ck_dir_make(&dir);
    char name[300], path[400];
    /* multi-byte UTF-8 around the cut, so the stem must not split one */
    size_t n = 0;
    while (n < lens[k]) {
      if (n % 3 == 0 && n + 2 <= lens[k]) {
        name[n++] = (char)0xC3;
        name[n++] = (char)0xA9; /* é */
      } else {
        name[n++] = 'x';
      }
    }
    name[n] = '\0';
    cr_assert_eq(strlen(name), lens[k]);
    ck_dir_file(&dir, name, path, sizeof path);
    ck_model m;
    ck_model_create(&m, &sgd_cfg, 1);
    ck_step(&m, 0);
    CK_OK(fo_optimizer_save(m.opt, path, NULL));
    cr_expect_eq(ck_dir_count(&dir), 1, "%zu-byte name: %d files", lens[k], ck_dir_count(&dir));
    crash_a_save(&m, path);
    cr_expect_eq(ck_dir_count(&dir), 2, "%zu-byte name: the crash left no temporary", lens[k]);
    CK_OK(fo_checkpoint_verify(path)); /* the old checkpoint */
    ck_step(&m, 1);
    CK_OK(fo_optimizer_save(m.opt, path, NULL));
    cr_expect_eq(ck_dir_count(&dir), 1, "%zu-byte name: the stale temporary is still there",
                 lens[k]);
    ck_model fresh;
    ck_model_create(&fresh, &sgd_cfg, 2);
    CK_OK(fo_optimizer_load(fresh.opt, path, NULL));
    ck_snap a, b;
    ck_snapshot(&m, &a);
    ck_snapshot(&fresh, &b);
    ck_snap_expect_equal(&a, &b, "a long name's checkpoint");
    ck_snap_free(&a);
    ck_snap_free(&b);
    ck_model_destroy(&fresh);
    ck_model_destroy(&m);
    ck_dir_remove(&dir);
  }
}

/* ------------------------------------------------------- crafted header */

/* A 40 MB header of small JSON values (every one costs the parser a table
 * entry) under the 100 MB limit: a load into an optimizer of six small
 * tensors refuses it by its length, before parsing, so the loading process
 * stays small and quick; the optimizer is unchanged. */
Test(crafted_header, a_load_is_bounded_by_the_registered_tensors) {
  ck_dir dir;
  ck_dir_make(&dir);
  char path[128];
  ck_dir_file(&dir, "crafted.safetensors", path, sizeof path);
  const size_t n = 40000000; /* header bytes */
  unsigned char *file = malloc(8 + n);
  cr_assert_not_null(file);
  for (int i = 0; i < 8; i++) file[i] = (unsigned char)((uint64_t)n >> (8 * i));
  memset(file + 8, ' ', n); /* what follows the closing brace: padding */
  const char head[] = "{\"__metadata__\":{\"a\":\"b\"},\"x\":[";
  memcpy(file + 8, head, sizeof head - 1);
  size_t at = 8 + sizeof head - 1;
  while (at < 8 + n - 16) {
    file[at++] = '0';
    file[at++] = ',';
  }
  memcpy(file + at, "0]}", 3);
  ck_write(path, file, 8 + n);
  free(file);

  ck_model m;
  ck_model_create(&m, &sgd_cfg, 1);
  ck_step(&m, 0);
  ck_snap before;
  ck_snapshot(&m, &before);
  pid_t child = fork();
  cr_assert_neq(child, -1);
  if (child == 0) {
    alarm(60);
    fo_status st = fo_optimizer_load(m.opt, path, NULL);
    int ok = st == FO_ERR_CHECKPOINT && strstr(fo_last_error(), "not a checkpoint of this model");
    const char *paths[1] = {path};
    st = fo_optimizer_load_shards(m.opt, paths, 1, NULL);
    ok = ok && st == FO_ERR_CHECKPOINT && strstr(fo_last_error(), "not a checkpoint of this model");
    _exit(ok ? 0 : 1);
  }
  int status = 0;
  struct rusage ru;
  const double t0 = tu_now();
  cr_assert_eq(wait4(child, &status, 0, &ru), child);
  const double took = tu_now() - t0;
  cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the crafted header was not refused");
  /* the file itself is 40 MB; parsing it would need about 1.8 GB */
  cr_expect_lt(ru.ru_maxrss, 300L * 1024, "the refusing load used %ld KiB", ru.ru_maxrss);
  cr_log_info("crafted header: refused in %.2f s, %ld KiB at most", took, ru.ru_maxrss);
  /* the message, in this process, and nothing changed */
  cr_expect_eq(fo_optimizer_load(m.opt, path, NULL), FO_ERR_CHECKPOINT);
  cr_expect_neq(strstr(fo_last_error(), "the header is 40000000 bytes"), NULL, "%s",
                fo_last_error());
  ck_snap after;
  ck_snapshot(&m, &after);
  ck_snap_expect_equal(&before, &after, "a refused crafted header");
  /* a real checkpoint still loads (its header is well inside the bound) */
  char good[128];
  ck_dir_file(&dir, "good.safetensors", good, sizeof good);
  CK_OK(fo_optimizer_save(m.opt, good, NULL));
  CK_OK(fo_optimizer_load(m.opt, good, NULL));
  ck_snap_free(&before);
  ck_snap_free(&after);
  ck_model_destroy(&m);
  ck_dir_remove(&dir);
}
