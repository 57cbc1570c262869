/*
 * checkpoint_save.c -- writing one checkpoint file (checkpoint_save.h):
 * the header with zero checksums, the data checksummed on the way, the
 * header again with the checksums, through a temporary file renamed into
 * place (checkpoint_io.c).
 */
#define _POSIX_C_SOURCE 200809L

#include "checkpoint_save.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include "checkpoint_io.h"
#include "exec.h"

/* The test hooks of a save (the test suite's build only, FO_TESTING): a
 * failing write or a killed process once half of the data is written. */
static fo_status save_fault(fo_ckpt_saver *s) {
#ifdef FO_TESTING
  if (s->written < s->total / 2) return FO_SUCCESS;
  if (fo_fault_armed(s->opt, FO_FAULT_SAVE_CRASH)) raise(SIGKILL);
  if (fo_fault_armed(s->opt, FO_FAULT_SAVE_WRITE))
    return fo_ckpt_tmp_fail(s->fn, "cannot write (injected fault)", s->path, s->tmp, ENOSPC);
#else
  (void)s;
#endif
  return FO_SUCCESS;
}

fo_status fo_ckpt_save_piece(fo_ckpt_saver *s, fo_ckpt_entry *e, const void *p, size_t n) {
  fo_status st = save_fault(s);
  if (st != FO_SUCCESS) return st;
  e->crc = fo_crc32_update(&s->crc, e->crc, p, n);
  st = fo_ckpt_write_all(s->fn, s->fd, p, n, s->path, s->tmp);
  s->written += n;
  return st;
}

fo_status fo_ckpt_save_entry(fo_ckpt_saver *s, fo_ckpt_entry *e) {
  const unsigned char *src = fo_ckpt_entry_src(s->opt, e);
  int staged = !s->opt->exec->host_memory;
  e->crc = 0;
  if (!src && e->bytes > 0)
    return fo_fail(FO_ERR_INTERNAL, s->fn, "no buffer for \"%.80s\"", e->key);
  for (uint64_t at = 0; at < e->bytes;) {
    size_t n = e->bytes - at < FO_CKPT_IO_CHUNK ? (size_t)(e->bytes - at) : FO_CKPT_IO_CHUNK;
    const void *piece = src + at;
    if (staged) {
      fo_status st = fo_exec_copy(s->fn, s->opt, s->staging, piece, n, FO_COPY_TO_HOST);
      if (st != FO_SUCCESS) return st;
      piece = s->staging;
    }
    fo_status st = fo_ckpt_save_piece(s, e, piece, n);
    if (st != FO_SUCCESS) return st;
    at += n;
  }
  return FO_SUCCESS;
}

fo_status fo_ckpt_save_build_header(fo_ckpt_saver *s, const fo_step_state *state,
                                    const fo_ckpt_plan *plan) {
  return fo_ckpt_header(s->fn, s->opt, state, plan, &s->hdr, &s->hlen);
}

fo_status fo_ckpt_save_header(fo_ckpt_saver *s) {
  unsigned char len8[8];
  for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)s->hlen >> (8 * i));
  fo_status st = fo_ckpt_write_all(s->fn, s->fd, len8, 8, s->path, s->tmp);
  if (st == FO_SUCCESS) st = fo_ckpt_write_all(s->fn, s->fd, s->hdr, s->hlen, s->path, s->tmp);
  free(s->hdr);
  s->hdr = NULL;
  return st;
}

fo_status fo_ckpt_save_finish(fo_ckpt_saver *s, const fo_step_state *state,
                              const fo_ckpt_plan *plan) {
  char *hdr = NULL;
  size_t hlen2 = 0;
  fo_status st = save_fault(s); /* a crash after the last byte, too */
  if (st == FO_SUCCESS) st = fo_ckpt_header(s->fn, s->opt, state, plan, &hdr, &hlen2);
  if (st == FO_SUCCESS && hlen2 != s->hlen)
    st = fo_fail(FO_ERR_INTERNAL, s->fn, "the checkpoint header changed length (%zu, %zu)", s->hlen,
                 hlen2);
  if (st == FO_SUCCESS) st = fo_ckpt_pwrite_all(s->fn, s->fd, hdr, s->hlen, 8, s->path, s->tmp);
  free(hdr);
  if (st == FO_SUCCESS && fsync(s->fd) != 0)
    st = fo_ckpt_tmp_fail(s->fn, "cannot fsync", s->path, s->tmp, errno);
  return st;
}

/* Header (with zero checksums), data, header again (with the real ones). */
static fo_status save_contents(fo_ckpt_saver *s, const fo_step_state *state, fo_ckpt_plan *plan) {
  fo_status st = fo_ckpt_save_header(s);
  for (int64_t k = 0; k < plan->n && st == FO_SUCCESS; k++) st = fo_ckpt_save_entry(s, &plan->e[k]);
  if (st == FO_SUCCESS) st = fo_ckpt_save_finish(s, state, plan);
  return st;
}

fo_status fo_ckpt_saved_state(const char *fn, const fo_optimizer *opt, fo_step_state *state) {
  fo_status st = fo_exec_read_state(fn, opt, state);
  if (st != FO_SUCCESS) return st;
  if (fo_scaler_fields_unused(&opt->options, state)) return FO_SUCCESS;
  /* Only a write through fo_optimizer_loss_scale_ptr gets the scale out of
   * range (the scaler's own back-off keeps it in; the tracker and the
   * hysteresis count have no pointer): whatever a save writes, a load
   * accepts. */
  if (!(isfinite(state->scale) && state->scale >= FO_LOSS_SCALE_MIN))
    return fo_fail(FO_ERR_INVALID_STATE, fn,
                   "the loss scale %g is not finite and at least FO_LOSS_SCALE_MIN (%g), so "
                   "a load would refuse the file: write a valid scale through "
                   "fo_optimizer_loss_scale_ptr first",
                   (double)state->scale, (double)FO_LOSS_SCALE_MIN);
  return FO_SUCCESS;
}

static fo_status save_to_temp(fo_ckpt_saver *s, const char *path, char **tmp) {
  fo_step_state state;
  fo_ckpt_plan plan;
  fo_status st = fo_ckpt_saved_state(s->fn, s->opt, &state);
  if (st != FO_SUCCESS) return st;
  if ((st = fo_ckpt_plan_build(s->fn, s->opt, &plan)) != FO_SUCCESS) return st;
  s->total = plan.data_len;
  if (!s->opt->exec->host_memory && !(s->staging = malloc(FO_CKPT_IO_CHUNK)))
    st = fo_fail(FO_ERR_OUT_OF_MEMORY, s->fn, "no memory for the staging buffer");
  if (st == FO_SUCCESS) st = fo_ckpt_save_build_header(s, &state, &plan);
  if (st == FO_SUCCESS) st = fo_ckpt_open_temp(s->fn, path, tmp, &s->fd);
  if (st == FO_SUCCESS) {
    s->tmp = *tmp;
    s->path = path;
    fo_crc32_init(&s->crc);
    st = save_contents(s, &state, &plan);
    if (close(s->fd) != 0 && st == FO_SUCCESS)
      st = fo_ckpt_tmp_fail(s->fn, "cannot close", path, *tmp, errno);
    s->fd = -1;
  }
  free(s->staging);
  s->staging = NULL;
  free(s->hdr);
  s->hdr = NULL;
  fo_ckpt_plan_free(&plan);
  return st;
}

fo_status fo_ckpt_save_file(const char *fn, const fo_optimizer *opt, const char *path) {
  fo_ckpt_saver *s = calloc(1, sizeof *s); /* the CRC tables are 8 KiB: not on the stack */
  if (!s) return fo_fail(FO_ERR_OUT_OF_MEMORY, fn, "no memory to save");
  s->fn = fn;
  s->opt = opt;
  s->fd = -1;
  char *tmp = NULL;
  fo_status st = save_to_temp(s, path, &tmp);
  free(s);
  if (st == FO_SUCCESS)
    st = fo_ckpt_commit(fn, tmp, path);
  else if (tmp)
    unlink(tmp); /* the old checkpoint, if any, is untouched */
  free(tmp);
  return st;
}
