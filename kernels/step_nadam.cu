/* step_nadam.cu -- the fused step's instantiations for NAdam (step_kernel.cuh). */
#include "step_kernel.cuh"

FO_DEFINE_STEP_LAUNCHER(fo_launch_step_nadam, FO_RULE_NADAM)
