/*
 * checkpoint_gathered.h -- the collective save of one whole checkpoint
 * (host/checkpoint/checkpoint_gathered.c).  Not installed.
 */
#ifndef FO_CHECKPOINT_GATHERED_H
#define FO_CHECKPOINT_GATHERED_H

#include "internal.h"

/* fo_optimizer_save_gathered with opt claimed: every rank of opt's
 * communicator calls it; root writes path.  Without a communicator, an
 * ordinary save. */
fo_status fo_ckpt_save_gathered(const char *func, const fo_optimizer *opt, const char *path,
                                int root, fo_stream_t stream);

#endif /* FO_CHECKPOINT_GATHERED_H */
