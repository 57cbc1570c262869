/*
 * emu_step_layerwise.cpp -- the emulated step kernel for LAMB and LARS, two passes each
 * (emu_step.h).
 */
#include "emu_step.h"

namespace emu {

int step_lamb(const fo_step_launch &a, void *stream) {
  return step_alg<FO_RULE_LAMB>(a, stream);
}

int step_lars(const fo_step_launch &a, void *stream) {
  return step_alg<FO_RULE_LARS>(a, stream);
}

}  // namespace emu
