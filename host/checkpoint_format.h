/*
 * checkpoint_format.h -- forwards to host/checkpoint/checkpoint_format.h, for the files
 * that include it with only host/ on their include path (the tests,
 * tests/CMakeLists.txt).  Remove once they have host/checkpoint too.
 */
#ifndef FO_CHECKPOINT_FORMAT_FORWARD_H
#define FO_CHECKPOINT_FORMAT_FORWARD_H

#include "checkpoint/checkpoint_format.h"

#endif /* FO_CHECKPOINT_FORMAT_FORWARD_H */
