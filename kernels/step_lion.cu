/* step_lion.cu -- the fused step's instantiations for Lion (step_kernel.cuh). */
#include "step_kernel.cuh"

FO_DEFINE_STEP_LAUNCHER(fo_launch_step_lion, FO_RULE_LION)
