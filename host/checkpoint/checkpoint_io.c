/*
 * checkpoint_io.c -- the files of checkpoints (checkpoint_io.h): reading a
 * whole file, writing through a temporary file next to the target, and
 * renaming it into place durably.
 */
#define _POSIX_C_SOURCE 200809L

#include "checkpoint_io.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h> /* kill(pid, 0) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------ I/O */

fo_status fo_ckpt_io_fail(const char *fn, const char *what, const char *path, int err) {
  char msg[160];
  if (strerror_r(err, msg, sizeof msg) != 0) snprintf(msg, sizeof msg, "errno %d", err);
  return fo_fail(FO_ERR_IO, fn, "%s \"%.200s\": %s", what, path, msg);
}

/* A failure on the temporary file of a save names the path the caller
 * asked for first, then the temporary file. */
fo_status fo_ckpt_tmp_fail(const char *fn, const char *what, const char *path, const char *tmp,
                           int err) {
  char msg[160];
  if (strerror_r(err, msg, sizeof msg) != 0) snprintf(msg, sizeof msg, "errno %d", err);
  return fo_fail(FO_ERR_IO, fn, "%s \"%.200s\" (through its temporary file \"%.240s\"): %s", what,
                 path, tmp, msg);
}

fo_status fo_ckpt_write_all(const char *fn, int fd, const void *data, size_t n, const char *path,
                            const char *tmp) {
  const char *p = data;
  while (n > 0) {
    ssize_t k = write(fd, p, n < FO_CKPT_IO_CHUNK ? n : FO_CKPT_IO_CHUNK);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return fo_ckpt_tmp_fail(fn, "cannot write", path, tmp, k < 0 ? errno : EIO);
    p += k;
    n -= (size_t)k;
  }
  return FO_SUCCESS;
}

fo_status fo_ckpt_pwrite_all(const char *fn, int fd, const void *data, size_t n, off_t at,
                             const char *path, const char *tmp) {
  const char *p = data;
  while (n > 0) {
    ssize_t k = pwrite(fd, p, n, at);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return fo_ckpt_tmp_fail(fn, "cannot write", path, tmp, k < 0 ? errno : EIO);
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
  if (fd < 0) return fo_ckpt_io_fail(fn, "cannot open", path, errno);
  fo_status st = FO_SUCCESS;
  int flags;
  if (fstat(fd, sb) != 0)
    st = fo_ckpt_io_fail(fn, "cannot stat", path, errno);
  else if (S_ISDIR(sb->st_mode))
    st = fo_ckpt_io_fail(fn, "cannot read", path, EISDIR);
  else if (!S_ISREG(sb->st_mode))
    st = fo_fail(FO_ERR_IO, fn,
                 "cannot read \"%.200s\": not a regular file (a FIFO, socket or device; a "
                 "checkpoint is a regular file)",
                 path);
  else if ((flags = fcntl(fd, F_GETFL)) < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0)
    st = fo_ckpt_io_fail(fn, "cannot read", path, errno);
  if (st != FO_SUCCESS) {
    close(fd);
    return st;
  }
  *out = fd;
  return FO_SUCCESS;
}

/* The whole file in one malloc'd buffer. */
fo_status fo_ckpt_read_file(const char *fn, const char *path, unsigned char **out, size_t *len) {
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
    ssize_t k = read(fd, buf + got, n - got < FO_CKPT_IO_CHUNK ? n - got : FO_CKPT_IO_CHUNK);
    if (k < 0 && errno == EINTR) continue;
    if (k < 0)
      st = fo_ckpt_io_fail(fn, "cannot read", path, errno);
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

/* What a save's rename may replace: nothing, or a regular file.  The
 * rename would replace a FIFO, socket or device node (/dev/null, as root)
 * with a regular file, and a symbolic link with the file instead of
 * writing where it points; a load refuses those paths too.  *mode: the
 * permission bits of the file replaced, -1 when there is none. */
static fo_status check_replaceable(const char *fn, const char *path, int *mode) {
  struct stat sb;
  *mode = -1;
  if (lstat(path, &sb) != 0) return FO_SUCCESS; /* absent; other errors: the open says */
  if (S_ISREG(sb.st_mode)) {
    *mode = (int)(sb.st_mode & 0777);
    return FO_SUCCESS;
  }
  return fo_fail(FO_ERR_IO, fn,
                 "cannot save to \"%.200s\": it is %s, which the save's rename would replace "
                 "with a regular file (save to a regular file's path%s)",
                 path,
                 S_ISLNK(sb.st_mode)   ? "a symbolic link"
                 : S_ISDIR(sb.st_mode) ? "a directory"
                                       : "not a regular file (a FIFO, socket or device)",
                 S_ISLNK(sb.st_mode) ? ", the link's target" : "");
}

fo_status fo_ckpt_open_temp(const char *fn, const char *path, char **tmp, int *fd) {
  int mode;
  fo_status replaceable = check_replaceable(fn, path, &mode);
  if (replaceable != FO_SUCCESS) return replaceable;
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
    /* A file that replaces another keeps its permissions: a checkpoint
     * made private (0600) stays private.  Created with at most those bits
     * (the umask may take more), then set to exactly them; a file system
     * without permissions refuses the fchmod, leaving the narrower mode. */
    *fd = open(name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode < 0 ? 0666 : (mode_t)mode);
    if (*fd >= 0) {
      if (mode >= 0) (void)fchmod(*fd, (mode_t)mode);
      free(stem);
      *tmp = name;
      return FO_SUCCESS;
    }
    if (errno != EEXIST) break;
  }
  fo_status st = fo_ckpt_tmp_fail(fn, "cannot create", path, name, errno);
  free(stem);
  free(name);
  return st;
}

/* Whether entry is "<stem>.tmp-<pid>-<8 lowercase hex>" exactly as
 * open_temp makes it (the pid as "%ld" prints a pid_t: no leading zero, no
 * sign, a value a pid_t holds), and its pid.  Any other name is not ours to
 * remove, nor one whose pid kill() would see wrapped to another process. */
static int is_temp_of(const char *entry, const char *stem, long *pid) {
  size_t sl = strlen(stem);
  if (strncmp(entry, stem, sl) != 0 || strncmp(entry + sl, ".tmp-", 5) != 0) return 0;
  const char *p = entry + sl + 5;
  long v = 0;
  int digits = 0;
  if (*p == '0') return 0;
  for (; *p >= '0' && *p <= '9' && digits < 10; p++, digits++) v = v * 10 + (*p - '0');
  if (digits == 0 || *p != '-' || (long)(pid_t)v != v) return 0;
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
  if (fd < 0 || (fsync(fd) != 0 && errno != EINVAL && errno != ENOTSUP)) {
    char msg[160];
    if (strerror_r(errno, msg, sizeof msg) != 0) snprintf(msg, sizeof msg, "errno %d", errno);
    st = fo_fail(FO_ERR_IO, fn,
                 "the checkpoint \"%.200s\" was renamed into place, but syncing its directory "
                 "\"%.200s\" failed: %s; it may not survive a power loss",
                 path, dir, msg);
  }
  if (fd >= 0) close(fd);
  free(dir);
  return st;
}

/* Rename the complete temporary file over path (removing it if that
 * fails), then make the rename durable. */
fo_status fo_ckpt_commit(const char *fn, const char *tmp, const char *path) {
  if (rename(tmp, path) != 0) {
    fo_status st = fo_ckpt_tmp_fail(fn, "cannot rename the checkpoint onto", path, tmp, errno);
    unlink(tmp);
    return st;
  }
  fo_status st = sync_dir(fn, path);
  remove_stale_temps(path);
  return st;
}

fo_status fo_ckpt_check_path(const char *fn, const char *what, const char *path) {
  if (!path) return fo_fail(FO_ERR_NULL_POINTER, fn, "%s is NULL", what);
  if (!path[0]) return fo_fail(FO_ERR_INVALID_ARGUMENT, fn, "%s is empty", what);
  return FO_SUCCESS;
}
