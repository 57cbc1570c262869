/* step_rmsprop.cu -- the fused step's instantiations for RMSprop (step_kernel.cuh). */
#include "step_kernel.cuh"

FO_DEFINE_STEP_LAUNCHER(fo_launch_step_rmsprop, FO_RULE_RMSPROP)
