/*
 * checkpoint.c -- fo_optimizer_save / _save_gathered / _load /
 * _load_shards: the files.
 *
 * Saving writes a temporary file next to the target, fsyncs it, renames it
 * over the target and fsyncs the directory, so the target is at every
 * moment either the old checkpoint or the complete new one.  The data
 * streams from the executor's memory (through a bounded host staging
 * buffer on CUDA) and is checksummed on the way; the header, whose length
 * does not depend on the checksums, is written first with zeros and
 * rewritten in place at the end.  A sharded state (ZeRO-1) saves its own
 * shard per rank, or -- collectively -- one whole checkpoint on a root
 * rank, its state gathered window by window (checkpoint_shard.c).
 *
 * Loading reads the whole file (or files) into host memory and checks all
 * of it (checkpoint_format.c) before it writes anything: a bad file
 * changes nothing.  On a sharded optimizer a load is collective: the
 * ranks agree that every one of them has a good file of one save before
 * any writes.  Only a failing copy into device memory after that can
 * leave the optimizer half-restored, and that marks it faulted
 * (checkpoint_fault.c).
 */
#define _POSIX_C_SOURCE 200809L

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "checkpoint_cuda.h"
#include "checkpoint_format.h"
#include "checkpoint_shard.h"

/* Host memory passes through write() in pieces of this size, and device
 * memory through a staging buffer of this size. */
#define IO_CHUNK ((size_t)16 << 20)

/* ------------------------------------------------------------------ I/O */

static fo_status io_fail(const char *fn, const char *what, const char *path, int err) {
  char msg[160];
  if (strerror_r(err, msg, sizeof msg) != 0) snprintf(msg, sizeof msg, "errno %d", err);
  return fo_fail(FO_ERR_IO, fn, "%s \"%.200s\": %s", what, path, msg);
}

/* A failure on the temporary file of a save names the path the caller
 * asked for first, then the temporary file. */
static fo_status tmp_fail(const char *fn, const char *what, const char *path, const char *tmp,
                          int err) {
  char msg[160];
  if (strerror_r(err, msg, sizeof msg) != 0) snprintf(msg, sizeof msg, "errno %d", err);
  return fo_fail(FO_ERR_IO, fn, "%s \"%.200s\" (through its temporary file \"%.240s\"): %s", what,
                 path, tmp, msg);
}

static fo_status write_all(const char *fn, int fd, const void *data, size_t n, const char *path,
                           const char *tmp) {
  const char *p = data;
  while (n > 0) {
    ssize_t k = write(fd, p, n < IO_CHUNK ? n : IO_CHUNK);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return tmp_fail(fn, "cannot write", path, tmp, k < 0 ? errno : EIO);
    p += k;
    n -= (size_t)k;
  }
  return FO_SUCCESS;
}

static fo_status pwrite_all(const char *fn, int fd, const void *data, size_t n, off_t at,
                            const char *path, const char *tmp) {
  const char *p = data;
  while (n > 0) {
    ssize_t k = pwrite(fd, p, n, at);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return tmp_fail(fn, "cannot write", path, tmp, k < 0 ? errno : EIO);
    p += k;
    at += k;
    n -= (size_t)k;
  }
  return FO_SUCCESS;
}

/* Open path for reading only if it is a regular file.  O_NONBLOCK makes
 * the open itself return at once: a plain open of a FIFO waits for a
 * writer, forever if none comes, before any check could run.  For a
 * regular file O_NONBLOCK means nothing; it is cleared anyway once fstat
 * has said what the file is. */
static fo_status open_regular(const char *fn, const char *path, int *out, struct stat *sb) {
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  if (fd < 0) return io_fail(fn, "cannot open", path, errno);
  fo_status st = FO_SUCCESS;
  int flags;
  if (fstat(fd, sb) != 0)
    st = io_fail(fn, "cannot stat", path, errno);
  else if (S_ISDIR(sb->st_mode))
    st = io_fail(fn, "cannot read", path, EISDIR);
  else if (!S_ISREG(sb->st_mode))
    st = fo_fail(FO_ERR_IO, fn,
                 "cannot read \"%.200s\": not a regular file (a FIFO, socket or device; a "
                 "checkpoint is a regular file)",
                 path);
  else if ((flags = fcntl(fd, F_GETFL)) < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0)
    st = io_fail(fn, "cannot read", path, errno);
  if (st != FO_SUCCESS) {
    close(fd);
    return st;
  }
  *out = fd;
  return FO_SUCCESS;
}

/* The whole file in one malloc'd buffer. */
static fo_status read_file(const char *fn, const char *path, unsigned char **out, size_t *len) {
  int fd = -1;
  struct stat sb;
  fo_status st = open_regular(fn, path, &fd, &sb);
  if (st != FO_SUCCESS) return st;
  if ((uint64_t)sb.st_size >= SIZE_MAX)
    st = fo_fail(FO_ERR_OUT_OF_MEMORY, fn, "\"%.200s\" is too large to read", path);
  size_t n = st == FO_SUCCESS ? (size_t)sb.st_size : 0, got = 0;
  unsigned char *buf = st == FO_SUCCESS ? malloc(n + 1) : NULL;
  if (st == FO_SUCCESS && !buf)
    st = fo_fail(FO_ERR_OUT_OF_MEMORY, fn, "no memory to read %zu bytes of \"%.200s\"", n, path);
  while (st == FO_SUCCESS && got < n) {
    ssize_t k = read(fd, buf + got, n - got < IO_CHUNK ? n - got : IO_CHUNK);
    if (k < 0 && errno == EINTR) continue;
    if (k < 0)
      st = io_fail(fn, "cannot read", path, errno);
    else if (k == 0)
      st = fo_fail(FO_ERR_IO, fn, "\"%.200s\" shrank while it was read", path);
    else
      got += (size_t)k;
  }
  close(fd);
  if (st != FO_SUCCESS) {
    free(buf);
    return st;
  }
  *out = buf;
  *len = n;
  return FO_SUCCESS;
}

/* ------------------------------------------------------- the temp file */

/* The temporary file of a save of "<dir>/<name>" is "<dir>/<stem>.tmp-<pid>-
 * <8 hex digits>", created exclusively next to path (so the rename stays
 * within one file system).  The stem is the name itself, or, when the
 * suffix would push the name past NAME_MAX (names of 232 bytes and more),
 * the name's first bytes, "~" and 16 hex digits of a hash of the whole
 * name: every save of one path uses one stem, and no other checkpoint's
 * stem is the same.  The suffix mixes the clock and the attempt: two savers
 * racing for one name both retry. */
#define TEMP_SUFFIX_MAX 24 /* ".tmp-" + a pid of up to 10 digits + "-" + 8 */
#define TEMP_HASH_LEN 17   /* "~" + 16 hex digits */
#ifndef NAME_MAX
#define NAME_MAX 255
#endif

static uint64_t name_hash(const char *s, size_t n) { /* FNV-1a */
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 0x100000001b3ull;
  return h;
}

/* "<dir>/<stem>" of path (malloc'd); *stem_at: where the stem starts. */
static char *temp_stem(const char *path, size_t *stem_at) {
  const char *slash = strrchr(path, '/');
  size_t dir_len = slash ? (size_t)(slash + 1 - path) : 0, name_len = strlen(path) - dir_len;
  char *out = malloc(dir_len + name_len + TEMP_HASH_LEN + 1);
  if (!out) return NULL;
  memcpy(out, path, dir_len + name_len + 1);
  *stem_at = dir_len;
  if (name_len + TEMP_SUFFIX_MAX <= NAME_MAX) return out;
  size_t keep = NAME_MAX - TEMP_SUFFIX_MAX - TEMP_HASH_LEN;
  /* cut at a character boundary: the stem stays as valid UTF-8 as the name */
  while (keep > 0 && ((unsigned char)path[dir_len + keep] & 0xC0) == 0x80) keep--;
  snprintf(out + dir_len + keep, TEMP_HASH_LEN + 1, "~%016llx",
           (unsigned long long)name_hash(path + dir_len, name_len));
  return out;
}

static fo_status open_temp(const char *fn, const char *path, char **tmp, int *fd) {
  size_t stem_at;
  char *stem = temp_stem(path, &stem_at);
  size_t n = stem ? strlen(stem) + TEMP_SUFFIX_MAX + 1 : 0;
  char *name = stem ? malloc(n) : NULL;
  if (!name) {
    free(stem);
    return fo_fail(FO_ERR_OUT_OF_MEMORY, fn, "no memory for a file name");
  }
  for (unsigned attempt = 0; attempt < 100; attempt++) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t h = ((uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 32)) * 0x9E3779B97F4A7C15ull;
    h ^= (uint64_t)attempt * 0xBF58476D1CE4E5B9ull + (uint64_t)(uintptr_t)&ts;
    snprintf(name, n, "%s.tmp-%ld-%08x", stem, (long)getpid(), (unsigned)(h >> 32));
    *fd = open(name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (*fd >= 0) {
      free(stem);
      *tmp = name;
      return FO_SUCCESS;
    }
    if (errno != EEXIST) break;
  }
  fo_status st = tmp_fail(fn, "cannot create", path, name, errno);
  free(stem);
  free(name);
  return st;
}

/* Whether entry is "<stem>.tmp-<pid>-<8 lowercase hex>" exactly (what
 * open_temp makes), and its pid. */
static int is_temp_of(const char *entry, const char *stem, long *pid) {
  size_t sl = strlen(stem);
  if (strncmp(entry, stem, sl) != 0 || strncmp(entry + sl, ".tmp-", 5) != 0) return 0;
  const char *p = entry + sl + 5;
  long v = 0;
  int digits = 0;
  for (; *p >= '0' && *p <= '9' && digits < 10; p++, digits++) v = v * 10 + (*p - '0');
  if (digits == 0 || *p != '-') return 0;
  for (int i = 1; i <= 8; i++)
    if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'a' && p[i] <= 'f'))) return 0;
  if (p[9] != '\0') return 0;
  *pid = v;
  return 1;
}

/* After a save of path has succeeded: remove the temporary files earlier
 * saves of path left behind when their process died (a crash mid-save
 * leaves a full-size one).  Only regular files named by open_temp's
 * pattern for this very path, of a process that no longer exists (kill(pid,
 * 0) says ESRCH; this process's own and live processes' saves may still be
 * running) are removed.  Best effort: a failure here does not fail the
 * save that already succeeded. */
static void remove_stale_temps(const char *path) {
  size_t stem_at;
  char *stem = temp_stem(path, &stem_at);
  if (!stem) return;
  char *dir_path = stem_at ? strndup(stem, stem_at) : strdup(".");
  DIR *dir = dir_path ? opendir(dir_path) : NULL;
  const long self = (long)getpid();
  for (struct dirent *e; dir && (e = readdir(dir));) {
    long pid;
    struct stat sb;
    if (!is_temp_of(e->d_name, stem + stem_at, &pid) || pid == self || pid <= 0) continue;
    if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue;
    if (fstatat(dirfd(dir), e->d_name, &sb, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(sb.st_mode))
      continue;
    (void)unlinkat(dirfd(dir), e->d_name, 0);
  }
  if (dir) closedir(dir);
  free(dir_path);
  free(stem);
}

/* fsync the directory holding path, so the rename itself is durable.
 * File systems that cannot sync a directory say EINVAL: nothing to do. */
static fo_status sync_dir(const char *fn, const char *path) {
  const char *slash = strrchr(path, '/');
  size_t n = slash ? (size_t)(slash - path) : 1;
  char *dir = malloc(n + 2);
  if (!dir) return fo_fail(FO_ERR_OUT_OF_MEMORY, fn, "no memory for a file name");
  if (!slash)
    strcpy(dir, ".");
  else if (n == 0)
    strcpy(dir, "/");
  else {
    memcpy(dir, path, n);
    dir[n] = '\0';
  }
  fo_status st = FO_SUCCESS;
  int fd = open(dir, O_RDONLY | O_CLOEXEC);
  if (fd < 0 || (fsync(fd) != 0 && errno != EINVAL && errno != ENOTSUP))
    st = fo_fail(FO_ERR_IO, fn,
                 "the checkpoint was renamed into place, but syncing its directory \"%.200s\" "
                 "failed (%d): it may not survive a power loss",
                 dir, errno);
  if (fd >= 0) close(fd);
  free(dir);
  return st;
}

/* --------------------------------------------------------------- saving */

typedef struct saver {
  const char *fn;
  const fo_optimizer *opt;
  int fd;           /* -1 on a rank that writes nothing (a gathered save) */
  const char *path; /* the file asked for */
  const char *tmp;  /* the temporary file's name */
  fo_crc32 crc;
  unsigned char *staging; /* CUDA: IO_CHUNK bytes of host memory */
  uint64_t written, total;
  char *hdr;   /* the header with zero checksums, until it is written */
  size_t hlen; /* the header's length */
} saver;

/* The test hooks of a save: a failing write or a killed process once half
 * of the data is written. */
static fo_status save_fault(saver *s) {
  if (s->written < s->total / 2) return FO_SUCCESS;
  if (fo_fault_armed(s->opt, FO_FAULT_SAVE_CRASH)) raise(SIGKILL);
  if (fo_fault_armed(s->opt, FO_FAULT_SAVE_WRITE))
    return tmp_fail(s->fn, "cannot write (injected fault)", s->path, s->tmp, ENOSPC);
  return FO_SUCCESS;
}

/* One piece of host memory: checksum it, write it. */
static fo_status save_piece(saver *s, fo_ckpt_entry *e, const void *p, size_t n) {
  fo_status st = save_fault(s);
  if (st != FO_SUCCESS) return st;
  e->crc = fo_crc32_update(&s->crc, e->crc, p, n);
  st = write_all(s->fn, s->fd, p, n, s->path, s->tmp);
  s->written += n;
  return st;
}

/* An entry whose buffer this rank holds (fo_ckpt_entry_src). */
static fo_status save_entry(saver *s, fo_ckpt_entry *e) {
  const unsigned char *src = fo_ckpt_entry_src(s->opt, e);
  int cuda = s->opt->options.executor == FO_EXEC_CUDA;
  e->crc = 0;
  if (!src && e->bytes > 0)
    return fo_fail(FO_ERR_INTERNAL, s->fn, "no buffer for \"%.80s\"", e->key);
  for (uint64_t at = 0; at < e->bytes;) {
    size_t n = e->bytes - at < IO_CHUNK ? (size_t)(e->bytes - at) : IO_CHUNK;
    const void *piece = src + at;
    if (cuda) {
      fo_status st = fo_ckpt_cuda_copy(s->fn, s->opt->options.device, s->staging, piece, n, 0);
      if (st != FO_SUCCESS) return st;
      piece = s->staging;
    }
    fo_status st = save_piece(s, e, piece, n);
    if (st != FO_SUCCESS) return st;
    at += n;
  }
  return FO_SUCCESS;
}

/* The header with zero checksums, built before the file is created: a
 * header the reader would refuse (fo_ckpt_header checks its limit) fails
 * the save with nothing written. */
static fo_status build_header(saver *s, const fo_step_state *state, const fo_ckpt_plan *plan) {
  return fo_ckpt_header(s->fn, s->opt, state, plan, &s->hdr, &s->hlen);
}

/* The length field and the header built by build_header. */
static fo_status save_header(saver *s) {
  unsigned char len8[8];
  for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)s->hlen >> (8 * i));
  fo_status st = write_all(s->fn, s->fd, len8, 8, s->path, s->tmp);
  if (st == FO_SUCCESS) st = write_all(s->fn, s->fd, s->hdr, s->hlen, s->path, s->tmp);
  free(s->hdr);
  s->hdr = NULL;
  return st;
}

/* After the data: the header again, with the real checksums; fsync. */
static fo_status save_finish(saver *s, const fo_step_state *state, const fo_ckpt_plan *plan) {
  char *hdr = NULL;
  size_t hlen2 = 0;
  fo_status st = save_fault(s); /* a crash after the last byte, too */
  if (st == FO_SUCCESS) st = fo_ckpt_header(s->fn, s->opt, state, plan, &hdr, &hlen2);
  if (st == FO_SUCCESS && hlen2 != s->hlen)
    st = fo_fail(FO_ERR_INTERNAL, s->fn, "the checkpoint header changed length (%zu, %zu)", s->hlen,
                 hlen2);
  if (st == FO_SUCCESS) st = pwrite_all(s->fn, s->fd, hdr, s->hlen, 8, s->path, s->tmp);
  free(hdr);
  if (st == FO_SUCCESS && fsync(s->fd) != 0)
    st = tmp_fail(s->fn, "cannot fsync", s->path, s->tmp, errno);
  return st;
}

/* Header (with zero checksums), data, header again (with the real ones). */
static fo_status save_contents(saver *s, const fo_step_state *state, fo_ckpt_plan *plan) {
  fo_status st = save_header(s);
  for (int64_t k = 0; k < plan->n && st == FO_SUCCESS; k++) st = save_entry(s, &plan->e[k]);
  if (st == FO_SUCCESS) st = save_finish(s, state, plan);
  return st;
}

static fo_status check_stream(const char *fn, const fo_optimizer *opt, fo_stream_t stream) {
  if (opt->options.executor == FO_EXEC_CUDA)
    return fo_cuda_check_stream(fn, stream, opt->options.device);
  if (stream)
    return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "stream must be NULL for the CPU executor");
  return FO_SUCCESS;
}

/* The step state, after every step enqueued so far has finished. */
static fo_status read_step_state(const char *fn, const fo_optimizer *opt, fo_step_state *out) {
  if (opt->options.executor == FO_EXEC_CUDA) return fo_cuda_read_state(fn, opt, out);
  *out = *opt->state;
  return FO_SUCCESS;
}

static fo_status check_path(const char *fn, const char *what, const char *path) {
  if (!path) return fo_fail(FO_ERR_NULL_POINTER, fn, "%s is NULL", what);
  if (!path[0]) return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "%s is empty", what);
  return FO_SUCCESS;
}

static fo_status check_args(const char *fn, const fo_optimizer *opt, const char *path,
                            fo_stream_t stream) {
  if (!opt) return fo_fail(FO_ERR_NULL_POINTER, fn, "opt is NULL");
  fo_status st = check_path(fn, "path", path);
  return st == FO_SUCCESS ? check_stream(fn, opt, stream) : st;
}

static fo_status save_to_temp(saver *s, const char *path, char **tmp) {
  fo_step_state state;
  fo_ckpt_plan plan;
  fo_status st = read_step_state(s->fn, s->opt, &state);
  if (st != FO_SUCCESS) return st;
  if ((st = fo_ckpt_plan_build(s->fn, s->opt, &plan)) != FO_SUCCESS) return st;
  s->total = plan.data_len;
  if (s->opt->options.executor == FO_EXEC_CUDA && !(s->staging = malloc(IO_CHUNK)))
    st = fo_fail(FO_ERR_OUT_OF_MEMORY, s->fn, "no memory for the staging buffer");
  if (st == FO_SUCCESS) st = build_header(s, &state, &plan);
  if (st == FO_SUCCESS) st = open_temp(s->fn, path, tmp, &s->fd);
  if (st == FO_SUCCESS) {
    s->tmp = *tmp;
    s->path = path;
    fo_crc32_init(&s->crc);
    st = save_contents(s, &state, &plan);
    if (close(s->fd) != 0 && st == FO_SUCCESS)
      st = tmp_fail(s->fn, "cannot close", path, *tmp, errno);
    s->fd = -1;
  }
  free(s->staging);
  s->staging = NULL;
  free(s->hdr);
  s->hdr = NULL;
  fo_ckpt_plan_free(&plan);
  return st;
}

/* Rename the complete temporary file over path (removing it if that
 * fails), then make the rename durable. */
static fo_status commit_file(const char *fn, const char *tmp, const char *path) {
  if (rename(tmp, path) != 0) {
    fo_status st = io_fail(fn, "cannot rename the checkpoint onto", path, errno);
    unlink(tmp);
    return st;
  }
  fo_status st = sync_dir(fn, path);
  remove_stale_temps(path);
  return st;
}

/* This rank's file: the whole state, or with a sharded state its shard. */
static fo_status save_file(const char *fn, const fo_optimizer *opt, const char *path) {
  saver *s = calloc(1, sizeof *s); /* the CRC tables are 8 KiB: not on the stack */
  if (!s) return fo_fail(FO_ERR_OUT_OF_MEMORY, fn, "no memory to save");
  s->fn = fn;
  s->opt = opt;
  s->fd = -1;
  char *tmp = NULL;
  fo_status st = save_to_temp(s, path, &tmp);
  free(s);
  if (st == FO_SUCCESS)
    st = commit_file(fn, tmp, path);
  else if (tmp)
    unlink(tmp); /* the old checkpoint, if any, is untouched */
  free(tmp);
  return st;
}

static fo_status save_claimed(const char *fn, const fo_optimizer *opt, const char *path,
                              fo_stream_t stream) {
  fo_status st = fo_check_process(fn, opt, 0);
  if (st == FO_SUCCESS) st = check_args(fn, opt, path, stream);
  if (st == FO_SUCCESS) st = fo_fault_check(fn, opt); /* never save a half-updated state */
  if (st == FO_SUCCESS) st = fo_master_check(fn, opt);
  if (st != FO_SUCCESS) return st;
  return save_file(fn, opt, path);
}

fo_status fo_optimizer_save(const fo_optimizer *opt, const char *path, fo_stream_t stream) {
  static const char fn[] = "fo_optimizer_save";
  if (!opt) return fo_fail(FO_ERR_NULL_POINTER, fn, "opt is NULL");
  fo_status st = fo_claim(fn, opt);
  return st != FO_SUCCESS ? st : fo_release(opt, save_claimed(fn, opt, path, stream));
}

/* ------------------------------------------------------ a gathered save */

/* A state entry of a sharded optimizer, gathered window by window; the
 * root writes it.  A rank whose *local already failed keeps taking part
 * (so that no rank waits for it) without copying or writing; a failing
 * collective (*fatal) ends the save. */
static fo_status gather_entry(saver *s, fo_ckpt_gather *g, fo_ckpt_entry *e, fo_status *local,
                              int *fatal) {
  int64_t off = s->opt->offsets[e->tensor], cap = fo_ckpt_gather_cap(g);
  int writes = s->fd >= 0;
  e->crc = 0;
  for (int64_t at = 0; at < e->numel; at += cap) {
    int64_t n = e->numel - at < cap ? e->numel - at : cap;
    const void *piece = NULL;
    int ok = *local == FO_SUCCESS;
    fo_status st = fo_ckpt_gather_window(g, e->role, off + e->first + at, n, ok,
                                         writes && ok ? &piece : NULL, fatal);
    if (*fatal) return st;
    if (st != FO_SUCCESS && *local == FO_SUCCESS) *local = st;
    if (writes && *local == FO_SUCCESS) *local = save_piece(s, e, piece, (size_t)n * sizeof(float));
  }
  return FO_SUCCESS;
}

/* What a gathered save holds while it runs. */
typedef struct gathered {
  saver *s;
  fo_ckpt_plan plan;
  fo_step_state state;
  fo_ckpt_gather *g;
  char *tmp;
  int root, rank;
} gathered;

/* Before any data moves: on every rank the state, the plan and the
 * gathering's buffers; on the root the temporary file and its header. */
static fo_status gathered_prepare(gathered *x, const char *path, fo_stream_t stream) {
  saver *s = x->s;
  const fo_optimizer *opt = s->opt;
  int here = x->rank == x->root;
  fo_status st = here ? check_path(s->fn, "path", path) : FO_SUCCESS;
  if (st == FO_SUCCESS) st = fo_fault_check(s->fn, opt);
  if (st == FO_SUCCESS) st = fo_master_check(s->fn, opt);
  if (st == FO_SUCCESS) st = read_step_state(s->fn, opt, &x->state);
  if (st == FO_SUCCESS) st = fo_ckpt_plan_build_for(s->fn, opt, NULL, &x->plan);
  if (st != FO_SUCCESS) return st;
  s->total = x->plan.data_len;
  if (here && opt->options.executor == FO_EXEC_CUDA && !(s->staging = malloc(IO_CHUNK)))
    return fo_fail(FO_ERR_OUT_OF_MEMORY, s->fn, "no memory for the staging buffer");
  if (opt->shard.on && (st = fo_ckpt_gather_open(s->fn, opt, stream, here, &x->g)) != FO_SUCCESS)
    return st;
  if (!here) return FO_SUCCESS;
  if ((st = build_header(s, &x->state, &x->plan)) != FO_SUCCESS) return st;
  if ((st = open_temp(s->fn, path, &x->tmp, &s->fd)) != FO_SUCCESS) return st;
  s->tmp = x->tmp;
  s->path = path;
  fo_crc32_init(&s->crc);
  return save_header(s);
}

/* Every entry in the file's order: parameters from the root's own
 * memory, state gathered (sharded) or the root's own (not sharded).
 * Returns a failed collective; this rank's own failures go to *local. */
static fo_status gathered_data(gathered *x, fo_status *local) {
  saver *s = x->s;
  int here = x->rank == x->root;
  for (int64_t k = 0; k < x->plan.n; k++) {
    fo_ckpt_entry *e = &x->plan.e[k];
    if (x->g && e->role != FO_ROLE_PARAM) {
      int fatal = 0;
      fo_status st = gather_entry(s, x->g, e, local, &fatal);
      if (fatal) return st;
    } else if (here && *local == FO_SUCCESS) {
      *local = save_entry(s, e);
    }
  }
  if (here && *local == FO_SUCCESS) *local = save_finish(s, &x->state, &x->plan);
  if (s->fd >= 0 && close(s->fd) != 0 && *local == FO_SUCCESS)
    *local = tmp_fail(s->fn, "cannot close", s->path, x->tmp, errno);
  s->fd = -1;
  return FO_SUCCESS;
}

/* The collective save of a communicator's ranks (see the header). */
static fo_status save_gathered(gathered *x, const char *path, fo_stream_t stream) {
  saver *s = x->s;
  const fo_optimizer *opt = s->opt;
  fo_status local = gathered_prepare(x, path, stream);
  fo_status st = fo_ckpt_agree(s->fn, opt, local, 0, 0, 0, stream);
  if (st != FO_SUCCESS) return st;
  st = gathered_data(x, &local);
  if (st != FO_SUCCESS) return st; /* a collective failed: no agreement is possible */
  st = fo_ckpt_agree(s->fn, opt, local, 0, 0, 0, stream);
  if (st != FO_SUCCESS) return st;
  if (x->rank == x->root) {
    local = commit_file(s->fn, x->tmp, path);
    free(x->tmp); /* renamed, or removed by commit_file */
    x->tmp = NULL;
  }
  return fo_ckpt_agree(s->fn, opt, local, 0, 0, 0, stream);
}

static fo_status save_gathered_claimed(const char *fn, const fo_optimizer *opt, const char *path,
                                       int root, fo_stream_t stream) {
  fo_status st = fo_check_process(fn, opt, 0);
  if (st == FO_SUCCESS) st = check_stream(fn, opt, stream);
  if (st != FO_SUCCESS) return st;
  int rank, size;
  fo_ckpt_comm_shape(opt, &rank, &size);
  if (root < 0 || root >= size)
    return fo_fail(FO_ERR_INVALID_ARGUMENT, fn,
                   "root = %d is not a rank of the communicator (%d rank%s)", root, size,
                   size == 1 ? "" : "s");
  if (!opt->dp) { /* one process: an ordinary save */
    st = check_path(fn, "path", path);
    if (st == FO_SUCCESS) st = fo_fault_check(fn, opt);
    if (st == FO_SUCCESS) st = fo_master_check(fn, opt);
    return st == FO_SUCCESS ? save_file(fn, opt, path) : st;
  }
  gathered x;
  memset(&x, 0, sizeof x);
  x.root = root;
  x.rank = rank;
  if (!(x.s = calloc(1, sizeof *x.s))) st = fo_fail(FO_ERR_OUT_OF_MEMORY, fn, "no memory to save");
  if (x.s) {
    x.s->fn = fn;
    x.s->opt = opt;
    x.s->fd = -1;
    st = save_gathered(&x, path, stream);
    if (x.s->fd >= 0) close(x.s->fd);
    free(x.s->staging);
    free(x.s->hdr);
  } else { /* still take part, so that no rank waits for this one */
    st = fo_ckpt_agree(fn, opt, st, 0, 0, 0, stream);
  }
  if (x.tmp) unlink(x.tmp); /* not renamed: the old checkpoint, if any, is untouched */
  free(x.tmp);
  fo_ckpt_gather_close(x.g);
  fo_ckpt_plan_free(&x.plan);
  free(x.s);
  return st;
}

fo_status fo_optimizer_save_gathered(const fo_optimizer *opt, const char *path, int root,
                                     fo_stream_t stream) {
  static const char fn[] = "fo_optimizer_save_gathered";
  if (!opt) return fo_fail(FO_ERR_NULL_POINTER, fn, "opt is NULL");
  fo_status st = fo_claim(fn, opt);
  return st != FO_SUCCESS ? st
                          : fo_release(opt, save_gathered_claimed(fn, opt, path, root, stream));
}

/* -------------------------------------------------------------- loading */

/* Write a validated checkpoint into the optimizer.  Only a failing device
 * copy can stop this halfway; the optimizer is then marked faulted. */
static fo_status apply(const char *fn, fo_optimizer *opt, const fo_ckpt_restore *r) {
  int cuda = opt->options.executor == FO_EXEC_CUDA;
  int64_t stop = -1;
  if (fo_fault_armed(opt, FO_FAULT_LOAD_APPLY)) stop = r->num_copies / 2;
  fo_ckpt_cuda_ctx ctx = {fn, opt->options.device};
  fo_status st = FO_SUCCESS;
  if (cuda) st = fo_ckpt_cuda_wait(fn, opt->options.device); /* no step still writing */
  if (st == FO_SUCCESS)
    st = fo_ckpt_apply_tensors(fn, opt, r, cuda ? fo_ckpt_cuda_copy_in : fo_ckpt_copy_host, &ctx,
                               stop);
  if (st == FO_SUCCESS && cuda) st = fo_cuda_write_state(fn, opt, &r->state);
  if (st == FO_SUCCESS && cuda) st = fo_ckpt_cuda_wait(fn, opt->options.device);
  if (st != FO_SUCCESS) return fo_fault_after(fn, opt, FO_FAULT_NONE, st);
  if (!cuda) *opt->state = r->state;
  fo_steps_left_reset(opt, &r->state);
  memcpy(opt->hparams, r->hparams, (size_t)opt->num_groups * sizeof *opt->hparams);
  opt->master_unset = 0; /* the master weights came from the file */
  fo_fault_clear(opt);
  return FO_SUCCESS;
}

/* A load's files in memory and what they restore (its copies point into
 * the files). */
typedef struct loaded {
  fo_ckpt_restore r;
  unsigned char **bufs;
  int n;
} loaded;

/* Read every file and check it against opt. */
static fo_status read_and_check(const char *fn, const fo_optimizer *opt, const char *const *paths,
                                int n, int shards, loaded *out) {
  if (!paths) return fo_fail(FO_ERR_NULL_POINTER, fn, "paths is NULL");
  if (n < 1) return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "n = %d: no files", n);
  for (int k = 0; k < n; k++) {
    char what[32] = "path";
    if (shards) snprintf(what, sizeof what, "paths[%d]", k);
    fo_status st = check_path(fn, what, paths[k]);
    if (st != FO_SUCCESS) return st;
  }
  unsigned char **bufs = calloc((size_t)n, sizeof *bufs);
  size_t *lens = calloc((size_t)n, sizeof *lens);
  fo_status st = FO_SUCCESS;
  out->bufs = bufs;
  out->n = n;
  if (!bufs || !lens) st = fo_fail(FO_ERR_OUT_OF_MEMORY, fn, "no memory for %d files", n);
  for (int k = 0; k < n && st == FO_SUCCESS; k++) st = read_file(fn, paths[k], &bufs[k], &lens[k]);
  if (st == FO_SUCCESS && !shards) {
    char where[240]; /* content errors name the file, as the OS's errors do */
    snprintf(where, sizeof where, "%s: \"%.200s\"", fn, paths[0]);
    st = fo_ckpt_validate(where, opt, bufs[0], lens[0], &out->r);
  } else if (st == FO_SUCCESS) {
    st = fo_ckpt_validate_shards(fn, opt, n, (const unsigned char *const *)bufs, lens, paths,
                                 &out->r);
  }
  free(lens);
  return st;
}

static void release(loaded *x) {
  for (int k = 0; x->bufs && k < x->n; k++) free(x->bufs[k]);
  free(x->bufs);
  fo_ckpt_restore_free(&x->r);
}

/* Load the files; on a sharded optimizer every rank does, and the ranks
 * agree twice: that every rank's files are good and of one save (before
 * anything is written), and that every rank wrote them (else every rank
 * is faulted: their states may now differ). */
static fo_status load(const char *fn, fo_optimizer *opt, const char *const *paths, int n,
                      int shards, fo_stream_t stream) {
  loaded x;
  memset(&x, 0, sizeof x);
  fo_status st = read_and_check(fn, opt, paths, n, shards, &x);
  if (opt->shard.on) st = fo_ckpt_agree(fn, opt, st, x.r.state.step, x.r.fingerprint, 1, stream);
  if (st == FO_SUCCESS) {
    st = apply(fn, opt, &x.r);
    if (opt->shard.on) {
      fo_status all = fo_ckpt_agree(fn, opt, st, 0, 0, 0, stream);
      if (all != FO_SUCCESS && st == FO_SUCCESS) fo_fault_after(fn, opt, FO_FAULT_NONE, all);
      st = all;
    }
  }
  release(&x);
  return st;
}

static fo_status load_claimed(const char *fn, fo_optimizer *opt, const char *path,
                              fo_stream_t stream) {
  fo_status st = fo_check_process(fn, opt, 0);
  if (st == FO_SUCCESS && !opt->shard.on) st = check_path(fn, "path", path);
  if (st == FO_SUCCESS) st = check_stream(fn, opt, stream);
  if (st != FO_SUCCESS) return st;
  return load(fn, opt, &path, 1, 0, stream);
}

fo_status fo_optimizer_load(fo_optimizer *opt, const char *path, fo_stream_t stream) {
  static const char fn[] = "fo_optimizer_load";
  if (!opt) return fo_fail(FO_ERR_NULL_POINTER, fn, "opt is NULL");
  fo_status st = fo_claim(fn, opt);
  return st != FO_SUCCESS ? st : fo_release(opt, load_claimed(fn, opt, path, stream));
}

static fo_status load_shards_claimed(const char *fn, fo_optimizer *opt, const char *const *paths,
                                     int n, fo_stream_t stream) {
  fo_status st = fo_check_process(fn, opt, 0);
  if (st == FO_SUCCESS) st = check_stream(fn, opt, stream);
  if (st != FO_SUCCESS) return st;
  return load(fn, opt, paths, n, 1, stream);
}

fo_status fo_optimizer_load_shards(fo_optimizer *opt, const char *const *paths, int n,
                                   fo_stream_t stream) {
  static const char fn[] = "fo_optimizer_load_shards";
  if (!opt) return fo_fail(FO_ERR_NULL_POINTER, fn, "opt is NULL");
  fo_status st = fo_claim(fn, opt);
  return st != FO_SUCCESS ? st : fo_release(opt, load_shards_claimed(fn, opt, paths, n, stream));
}

fo_status fo_checkpoint_verify(const char *path) {
  static const char fn[] = "fo_checkpoint_verify";
  if (!path) return fo_fail(FO_ERR_NULL_POINTER, fn, "path is NULL");
  unsigned char *buf = NULL;
  size_t len = 0;
  fo_status st = read_file(fn, path, &buf, &len);
  if (st != FO_SUCCESS) return st;
  char where[240];
  snprintf(where, sizeof where, "%s: \"%.200s\"", fn, path);
  st = fo_ckpt_verify(where, buf, len);
  free(buf);
  return st;
}

fo_status fo_optimizer_get_fault(const fo_optimizer *opt, fo_status *status, char *message,
                                 size_t capacity) {
  static const char fn[] = "fo_optimizer_get_fault";
  if (!opt || !status)
    return fo_fail(FO_ERR_NULL_POINTER, fn, "%s is NULL", opt ? "status" : "opt");
  if (!message && capacity > 0)
    return fo_fail(FO_ERR_NULL_POINTER, fn, "message is NULL with capacity %zu", capacity);
  fo_status st = fo_claim(fn, opt);
  if (st != FO_SUCCESS) return st;
  *status = opt->fault;
  if (capacity > 0) snprintf(message, capacity, "%s", opt->fault_msg);
  return fo_release(opt, FO_SUCCESS);
}
