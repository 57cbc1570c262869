/*
 * checkpoint.c -- the public entry points of checkpoints:
 * fo_optimizer_save, _save_gathered, _load, _load_shards and
 * fo_checkpoint_verify (include/fusedopt.h documents them, and
 * docs/reliability.md the guarantees).  Each claims the optimizer, checks
 * its arguments and hands over to the file that does the work:
 *
 *   checkpoint_save.c      one file (this rank's: the whole state, or its
 *                          shard), through a temporary file;
 *   checkpoint_gathered.c  one whole file of a communicator's ranks;
 *   checkpoint_load.c      reading, checking and applying;
 *   checkpoint_io.c        the files themselves.
 *
 * The format lives in checkpoint_format.h and the files it names.
 */
#include <stdio.h>
#include <stdlib.h>

#include "checkpoint_gathered.h"
#include "checkpoint_io.h"
#include "checkpoint_load.h"
#include "checkpoint_save.h"

/* --------------------------------------------------------------- saving */

static fo_status check_args(const char *fn, const fo_optimizer *opt, const char *path,
                            fo_stream_t stream) {
  if (!opt) return fo_fail(FO_ERR_NULL_POINTER, fn, "opt is NULL");
  fo_status st = fo_ckpt_check_path(fn, "path", path);
  return st == FO_SUCCESS ? fo_exec_check_stream(fn, opt, stream) : st;
}

static fo_status save_claimed(const char *fn, const fo_optimizer *opt, const char *path,
                              fo_stream_t stream) {
  fo_status st = fo_check_process(fn, opt, 0);
  if (st == FO_SUCCESS) st = check_args(fn, opt, path, stream);
  if (st == FO_SUCCESS) st = fo_fault_check(fn, opt); /* never save a half-updated state */
  if (st == FO_SUCCESS) st = fo_master_check(fn, opt);
  if (st != FO_SUCCESS) return st;
  return fo_ckpt_save_file(fn, opt, path);
}

fo_status fo_optimizer_save(const fo_optimizer *opt, const char *path, fo_stream_t stream) {
  static const char fn[] = "fo_optimizer_save";
  if (!opt) return fo_fail(FO_ERR_NULL_POINTER, fn, "opt is NULL");
  fo_status st = fo_claim(fn, opt);
  return st != FO_SUCCESS ? st : fo_release(opt, save_claimed(fn, opt, path, stream));
}

fo_status fo_optimizer_save_gathered(const fo_optimizer *opt, const char *path, int root,
                                     fo_stream_t stream) {
  static const char fn[] = "fo_optimizer_save_gathered";
  if (!opt) return fo_fail(FO_ERR_NULL_POINTER, fn, "opt is NULL");
  fo_status st = fo_claim(fn, opt);
  return st != FO_SUCCESS ? st
                          : fo_release(opt, fo_ckpt_save_gathered(fn, opt, path, root, stream));
}

/* -------------------------------------------------------------- loading */

static fo_status load_claimed(const char *fn, fo_optimizer *opt, const char *path,
                              fo_stream_t stream) {
  fo_status st = fo_check_process(fn, opt, 0);
  if (st == FO_SUCCESS && !opt->shard.on) st = fo_ckpt_check_path(fn, "path", path);
  if (st == FO_SUCCESS) st = fo_exec_check_stream(fn, opt, stream);
  if (st != FO_SUCCESS) return st;
  return fo_ckpt_load(fn, opt, &path, 1, 0, stream);
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
  if (st == FO_SUCCESS) st = fo_exec_check_stream(fn, opt, stream);
  if (st != FO_SUCCESS) return st;
  return fo_ckpt_load(fn, opt, paths, n, 1, stream);
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
  fo_status st = fo_ckpt_read_file(fn, path, &buf, &len);
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
