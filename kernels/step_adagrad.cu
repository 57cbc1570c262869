/* step_adagrad.cu -- the fused step's instantiations for AdaGrad (step_kernel.cuh). */
#include "step_kernel.cuh"

FO_DEFINE_STEP_LAUNCHER(fo_launch_step_adagrad, FO_RULE_ADAGRAD)
