/* step_adamw.cu -- the fused step's instantiations for AdamW (step_kernel.cuh). */
#include "step_kernel.cuh"

FO_DEFINE_STEP_LAUNCHER(fo_launch_step_adamw, FO_RULE_ADAMW)
