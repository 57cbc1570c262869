/*
 * checkpoint_fit.h -- what the readers of one file (checkpoint_fit.c)
 * and of every rank's files (checkpoint_tiling.c) share, and the copy
 * list a valid file becomes (checkpoint_apply.c).  Not installed.
 */
#ifndef FO_CHECKPOINT_FIT_H
#define FO_CHECKPOINT_FIT_H

#include "checkpoint_format.h"
#include "checkpoint_meta.h"

/* The checks of one file up to its tensors: structure, groups, step
 * state, and whether it is a per-rank file (and of which shard), decoded
 * into out (out->version set by the caller). */
fo_status fo_ckpt_read_header(const fo_meta_reader *r, const fo_optimizer *opt,
                              fo_ckpt_restore *out);

/* Every buffer of plan p has its tensor in the file, with its dtype and
 * shape, and the file holds nothing else; then the checksums (they read
 * all the data, the other checks only the header), folding the
 * parameters' into *param_crc; then the copies into out (the parameters
 * only when take_params). */
fo_status fo_ckpt_match_tensors(const fo_meta_reader *r, const fo_optimizer *opt, const fo_crc32 *c,
                                const fo_ckpt_plan *p, int take_params, uint32_t *param_crc,
                                fo_ckpt_restore *out);

/* The CRC-32 over r's step state and its groups' hyper-parameters (the
 * schema's restored fields), continued from crc. */
uint32_t fo_ckpt_fingerprint(const fo_crc32 *c, uint32_t crc, const fo_ckpt_restore *r,
                             fo_algorithm alg, int groups);

/* Add the copies of one saved buffer (the elements [e->first, e->first +
 * e->numel) of its tensor, at src) into opt to out: the parameters whole;
 * a state buffer into the tensor's whole buffer, or with a sharded state
 * the part that falls in this rank's shard. */
fo_status fo_ckpt_add_copies(const char *func, const fo_optimizer *opt, const fo_ckpt_entry *e,
                             const unsigned char *src, fo_ckpt_restore *out);

#endif /* FO_CHECKPOINT_FIT_H */
