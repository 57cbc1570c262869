/*
 * checkpoint_header.h -- a checkpoint's header between writing and
 * reading (host/checkpoint/checkpoint_header_write.c, _header_read.c):
 * what the reading files share beyond checkpoint_format.h.  Not
 * installed.
 */
#ifndef FO_CHECKPOINT_HEADER_H
#define FO_CHECKPOINT_HEADER_H

#include "checkpoint_format.h"
#include "checkpoint_meta.h"

/* fo_ckpt_header without its limit: the header's text, whatever its
 * length. */
fo_status fo_ckpt_header_text(const char *func, const fo_optimizer *opt, const fo_step_state *state,
                              const fo_ckpt_plan *plan, char **text, size_t *len);

/* Parse buf, then the checks every reader makes first: the format version
 * (before anything whose meaning a newer version may change) and the
 * metadata's checksum (before any value in it is believed).  *f is the
 * caller's to free on success. */
fo_status fo_ckpt_open(const char *func, const unsigned char *buf, size_t len, fo_st_file *f,
                       const fo_crc32 *c, int *version);

/* A tensor's data against its "fusedopt.crc32.<name>"; *out (may be NULL)
 * receives the checksum. */
fo_status fo_ckpt_check_tensor_crc(const fo_meta_reader *r, const fo_crc32 *c,
                                   const fo_st_tensor *t, uint32_t *out);

/* The largest header a checkpoint of opt's tensors can have, and the
 * refusal of a longer one before it is parsed (see checkpoint_header_read.c). */
uint64_t fo_ckpt_header_bound(const char *func, const fo_optimizer *opt);
fo_status fo_ckpt_check_header_bound(const char *func, const fo_optimizer *opt,
                                     const unsigned char *buf, size_t len, uint64_t bound);

#endif /* FO_CHECKPOINT_HEADER_H */
