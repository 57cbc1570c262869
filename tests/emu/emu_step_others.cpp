/*
 * emu_step_others.cpp -- the emulated step kernel for SGD, Lion, AdaGrad and RMSprop: its
 * instantiations (emu_step.h).
 */
#include "emu_step.h"

namespace emu {

template int step_alg<FO_RULE_SGD>(const fo_step_launch &, void *);
template int step_alg<FO_RULE_LION>(const fo_step_launch &, void *);
template int step_alg<FO_RULE_ADAGRAD>(const fo_step_launch &, void *);
template int step_alg<FO_RULE_RMSPROP>(const fo_step_launch &, void *);

}  // namespace emu
