/* step_adam.cu -- the fused step's instantiations for Adam (step_kernel.cuh). */
#include "step_kernel.cuh"

FO_DEFINE_STEP_LAUNCHER(fo_launch_step_adam, FO_RULE_ADAM)
