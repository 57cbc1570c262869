/*
 * emu_step_adam.cpp -- the emulated step kernel for Adam, AdamW and NAdam: its
 * instantiations (emu_step.h).
 */
#include "emu_step.h"

namespace emu {

template int step_alg<FO_RULE_ADAM>(const fo_step_launch &, void *);
template int step_alg<FO_RULE_ADAMW>(const fo_step_launch &, void *);
template int step_alg<FO_RULE_NADAM>(const fo_step_launch &, void *);

}  // namespace emu
