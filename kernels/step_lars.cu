/* step_lars.cu -- the fused step's instantiations for LARS (step_kernel.cuh). */
#include "step_kernel.cuh"

FO_DEFINE_STEP_LAUNCHER(fo_launch_step_lars, FO_RULE_LARS)
