/*
 * checkpoint_save.h -- writing one checkpoint file (host/checkpoint/
 * checkpoint_save.c), which a gathered save (checkpoint_gathered.c) does
 * piece by piece.  Not installed.
 *
 * The data streams from the executor's memory (through a bounded host
 * staging buffer on CUDA) and is checksummed on the way; the header,
 * whose length does not depend on the checksums, is written first with
 * zeros and rewritten in place at the end.
 */
#ifndef FO_CHECKPOINT_SAVE_H
#define FO_CHECKPOINT_SAVE_H

#include "checkpoint_format.h"

/* A file being written. */
typedef struct fo_ckpt_saver {
  const char *fn;
  const fo_optimizer *opt;
  int fd;           /* -1 on a rank that writes nothing (a gathered save) */
  const char *path; /* the file asked for */
  const char *tmp;  /* the temporary file's name */
  fo_crc32 crc;
  unsigned char *staging; /* CUDA: FO_CKPT_IO_CHUNK bytes of host memory */
  uint64_t written, total;
  char *hdr;   /* the header with zero checksums, until it is written */
  size_t hlen; /* the header's length */
} fo_ckpt_saver;

/* The step state a save writes (read from the executor): with loss scaling
 * off the scaler's fields as created, whatever was written through
 * fo_optimizer_loss_scale_ptr (the steps ignore it, and so does a load);
 * with it on, a scale a load would refuse fails the save with
 * FO_ERR_INVALID_STATE before any file is made. */
fo_status fo_ckpt_saved_state(const char *fn, const fo_optimizer *opt, fo_step_state *state);

/* The header with zero checksums (s->hdr), built before the file is
 * created: a header the reader would refuse (fo_ckpt_header checks its
 * limit) fails the save with nothing written. */
fo_status fo_ckpt_save_build_header(fo_ckpt_saver *s, const fo_step_state *state,
                                    const fo_ckpt_plan *plan);
/* The length field and the header built by fo_ckpt_save_build_header. */
fo_status fo_ckpt_save_header(fo_ckpt_saver *s);
/* One piece of host memory of entry e: checksum it, write it. */
fo_status fo_ckpt_save_piece(fo_ckpt_saver *s, fo_ckpt_entry *e, const void *p, size_t n);
/* An entry whose buffer this rank holds (fo_ckpt_entry_src). */
fo_status fo_ckpt_save_entry(fo_ckpt_saver *s, fo_ckpt_entry *e);
/* After the data: the header again, with the real checksums; fsync. */
fo_status fo_ckpt_save_finish(fo_ckpt_saver *s, const fo_step_state *state,
                              const fo_ckpt_plan *plan);

/* This rank's file at path: the whole state, or with a sharded state its
 * shard; written through a temporary file and renamed into place (opt
 * claimed, arguments checked). */
fo_status fo_ckpt_save_file(const char *func, const fo_optimizer *opt, const char *path);

#endif /* FO_CHECKPOINT_SAVE_H */
