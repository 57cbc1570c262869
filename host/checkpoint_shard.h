/*
 * checkpoint_shard.h -- forwards to host/checkpoint/checkpoint_shard.h, for the files
 * that include it with only host/ on their include path (the tests,
 * tests/CMakeLists.txt).  Remove once they have host/checkpoint too.
 */
#ifndef FO_CHECKPOINT_SHARD_FORWARD_H
#define FO_CHECKPOINT_SHARD_FORWARD_H

#include "checkpoint/checkpoint_shard.h"

#endif /* FO_CHECKPOINT_SHARD_FORWARD_H */
