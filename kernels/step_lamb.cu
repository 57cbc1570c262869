/* step_lamb.cu -- the fused step's instantiations for LAMB (step_kernel.cuh). */
#include "step_kernel.cuh"

FO_DEFINE_STEP_LAUNCHER(fo_launch_step_lamb, FO_RULE_LAMB)
