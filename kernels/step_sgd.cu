/* step_sgd.cu -- the fused step's instantiations for SGD (step_kernel.cuh). */
#include "step_kernel.cuh"

FO_DEFINE_STEP_LAUNCHER(fo_launch_step_sgd, FO_RULE_SGD)
