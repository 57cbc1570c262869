/*
 * emu_step_others.cpp -- the emulated step kernel for SGD, Lion, AdaGrad and RMSprop (emu_step.h).
 */
#include "emu_step.h"

namespace emu {

int step_sgd(const fo_step_launch &a, void *stream) {
  return step_alg<FO_RULE_SGD>(a, stream);
}

int step_lion(const fo_step_launch &a, void *stream) {
  return step_alg<FO_RULE_LION>(a, stream);
}

int step_adagrad(const fo_step_launch &a, void *stream) {
  return step_alg<FO_RULE_ADAGRAD>(a, stream);
}

int step_rmsprop(const fo_step_launch &a, void *stream) {
  return step_alg<FO_RULE_RMSPROP>(a, stream);
}

}  // namespace emu
