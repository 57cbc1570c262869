/*
 * checkpoint_load.h -- loading checkpoints (host/checkpoint/
 * checkpoint_load.c).  Not installed.
 */
#ifndef FO_CHECKPOINT_LOAD_H
#define FO_CHECKPOINT_LOAD_H

#include "internal.h"

/* Load paths[0 .. n) into opt (claimed; process and stream checked): one
 * whole or per-rank file (shards 0), or every rank's per-rank file of one
 * save (shards 1).  On a sharded optimizer every rank does, and the ranks
 * agree twice: that every rank's files are good and of one save (before
 * anything is written), and that every rank wrote them (else every rank
 * is faulted: their states may now differ). */
fo_status fo_ckpt_load(const char *func, fo_optimizer *opt, const char *const *paths, int n,
                       int shards, fo_stream_t stream);

#endif /* FO_CHECKPOINT_LOAD_H */
