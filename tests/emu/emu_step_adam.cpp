/*
 * emu_step_adam.cpp -- the emulated step kernel for Adam, AdamW and NAdam (emu_step.h).
 */
#include "emu_step.h"

namespace emu {

int step_adam(const fo_step_launch &a, void *stream) {
  return step_alg<FO_RULE_ADAM>(a, stream);
}

int step_adamw(const fo_step_launch &a, void *stream) {
  return step_alg<FO_RULE_ADAMW>(a, stream);
}

int step_nadam(const fo_step_launch &a, void *stream) {
  return step_alg<FO_RULE_NADAM>(a, stream);
}

}  // namespace emu
