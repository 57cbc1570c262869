/*
 * emu_step_layerwise.cpp -- the emulated step kernel for LAMB and LARS, two passes each: its
 * instantiations (emu_step.h).
 */
#include "emu_step.h"

namespace emu {

template int step_alg<FO_RULE_LAMB>(const fo_step_launch &, void *);
template int step_alg<FO_RULE_LARS>(const fo_step_launch &, void *);

}  // namespace emu
