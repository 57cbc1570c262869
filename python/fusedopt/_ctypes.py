"""ctypes mirrors of include/fusedopt.h's structs, and the prototypes of the
functions this package calls.

Each mirror is field for field the C struct; _library.check_layouts()
compares them with the loaded library before any of them is used.
"""

import ctypes
from ctypes import (POINTER, c_char_p, c_float, c_int, c_int64, c_size_t, c_uint, c_uint64,
                    c_void_p)

# enum values (include/fusedopt.h section 3); C enums are ints here.
FO_SUCCESS = 0
FO_EXEC_CPU = 0
FO_EXEC_CUDA = 1
FO_STORAGE_EXTERNAL = 0
FO_DTYPE_F32 = 0
FO_DTYPE_F16 = 1
FO_DTYPE_BF16 = 2
FO_ROLE_MASTER = 2
FO_ROLE_EXP_AVG = 3
FO_ROLE_EXP_AVG_SQ = 4
FO_ROLE_MAX_EXP_AVG_SQ = 5
FO_MAX_GROUPS = 64

fo_status = c_int
fo_optimizer_p = c_void_p  # opaque fo_optimizer *
fo_stream_t = c_void_p     # cudaStream_t; NULL (None) on the CPU executor


class FoHparams(ctypes.Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("lr", c_float),
        ("weight_decay", c_float),
        ("momentum", c_float),
        ("dampening", c_float),
        ("nesterov", c_int),
        ("beta1", c_float),
        ("beta2", c_float),
        ("eps", c_float),
        ("amsgrad", c_int),
        ("maximize", c_int),
        ("lr_decay", c_float),
        ("initial_accumulator_value", c_float),
        ("alpha", c_float),
        ("centered", c_int),
        ("momentum_decay", c_float),
        ("decoupled_weight_decay", c_int),
        ("trust_coef", c_float),
        ("layer_adaptation", c_int),
        ("reserved", c_uint64 * 4),
    ]


# The hyper-parameters a caller may set, by name (struct_size and reserved
# are the library's), and which of them are flags (0 or 1).
HPARAM_FIELDS = ("lr", "weight_decay", "momentum", "dampening", "nesterov", "beta1", "beta2",
                 "eps", "amsgrad", "maximize", "lr_decay", "initial_accumulator_value", "alpha",
                 "centered", "momentum_decay", "decoupled_weight_decay", "trust_coef",
                 "layer_adaptation")
HPARAM_FLAGS = frozenset(("nesterov", "amsgrad", "maximize", "centered", "decoupled_weight_decay",
                          "layer_adaptation"))


class FoLossScalerOptions(ctypes.Structure):
    _fields_ = [
        ("enabled", c_int),
        ("init_scale", c_float),
        ("growth_factor", c_float),
        ("backoff_factor", c_float),
        ("growth_interval", c_int),
        ("max_scale", c_float),
        ("hysteresis", c_int),
    ]


class FoSchedule(ctypes.Structure):
    _fields_ = [
        ("kind", c_int),
        ("warmup_steps", c_int64),
        ("total_steps", c_int64),
        ("step_size", c_int64),
        ("period", c_int64),
        ("period_mult", c_int64),
        ("gamma", c_float),
        ("min_ratio", c_float),
    ]


class FoOptions(ctypes.Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("algorithm", c_int),
        ("executor", c_int),
        ("device", c_int),
        ("storage", c_int),
        ("param_dtype", c_int),
        ("grad_dtype", c_int),
        ("master_weights", c_int),
        ("stochastic_rounding", c_int),
        ("seed", c_uint64),
        ("num_threads", c_int),
        ("max_grad_norm", c_float),
        ("write_unscaled_grads", c_int),
        ("loss_scaler", FoLossScalerOptions),
        ("schedule", FoSchedule),
        ("reserved", c_uint64 * 4),
    ]


class FoTensorDesc(ctypes.Structure):
    _fields_ = [
        ("numel", c_int64),
        ("group", c_int),
        ("param", c_void_p),
        ("grad", c_void_p),
        ("name", c_char_p),
    ]


class FoStepInfo(ctypes.Structure):
    _fields_ = [
        ("step", c_int64),
        ("skipped_steps", c_int64),
        ("last_step_skipped", c_int),
        ("loss_scale", c_float),
        ("grad_norm", c_float),
        ("grad_coef", c_float),
        ("lr_factor", c_float),
        ("growth_tracker", c_int),
    ]


class FoScalerState(ctypes.Structure):
    _fields_ = [
        ("skipped_steps", c_int64),
        ("scale", c_float),
        ("growth_tracker", c_int),
        ("hysteresis_left", c_int),
    ]


class FoDpOptions(ctypes.Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("bucket_bytes", c_size_t),
        ("reduce_in_f32", c_int),
        ("shard_state", c_int),
        ("reserved", c_uint64 * 4),
    ]


_opt = fo_optimizer_p
# name: (restype, argtypes).  Every function the package calls is here.
PROTOTYPES = {
    "fo_version_number": (c_uint, []),
    "fo_version_string": (c_char_p, []),
    "fo_status_string": (c_char_p, [fo_status]),
    "fo_last_error": (c_char_p, []),
    "fo_algorithm_string": (c_char_p, [c_int]),
    # Filled through void * so that the layout check can pass a buffer
    # larger than the mirror (a too-small mirror is never overrun).
    "fo_hparams_default": (fo_status, [c_int, c_void_p]),
    "fo_options_default": (fo_status, [c_void_p]),
    "fo_dp_options_default": (fo_status, [c_void_p]),
    "fo_optimizer_create": (fo_status, [POINTER(_opt), POINTER(FoOptions), POINTER(FoHparams),
                                        c_int, POINTER(FoTensorDesc), c_int64]),
    "fo_optimizer_destroy": (fo_status, [_opt]),
    "fo_optimizer_step": (fo_status, [_opt, fo_stream_t]),
    "fo_optimizer_zero_grad": (fo_status, [_opt, fo_stream_t]),
    "fo_optimizer_get_step": (fo_status, [_opt, POINTER(c_int64)]),
    "fo_optimizer_get_info": (fo_status, [_opt, c_void_p]),
    "fo_optimizer_set_lr": (fo_status, [_opt, c_int, c_float]),
    "fo_optimizer_get_lr": (fo_status, [_opt, c_int, POINTER(c_float)]),
    "fo_optimizer_get_hparams": (fo_status, [_opt, c_int, POINTER(FoHparams)]),
    "fo_optimizer_set_hparams": (fo_status, [_opt, c_int, POINTER(FoHparams)]),
    "fo_optimizer_num_tensors": (fo_status, [_opt, POINTER(c_int64)]),
    "fo_optimizer_param_ptr": (fo_status, [_opt, c_int64, POINTER(c_void_p)]),
    "fo_optimizer_grad_ptr": (fo_status, [_opt, c_int64, POINTER(c_void_p)]),
    "fo_optimizer_state_ptr": (fo_status, [_opt, c_int64, c_int, POINTER(POINTER(c_float))]),
    "fo_optimizer_save": (fo_status, [_opt, c_char_p, fo_stream_t]),
    "fo_optimizer_load": (fo_status, [_opt, c_char_p, fo_stream_t]),
    "fo_checkpoint_verify": (fo_status, [c_char_p]),
    "fo_optimizer_set_step": (fo_status, [_opt, c_int64]),
    "fo_optimizer_sync_master": (fo_status, [_opt, fo_stream_t]),
    "fo_optimizer_loss_scale_ptr": (fo_status, [_opt, POINTER(POINTER(c_float))]),
    # Read through void * like fo_optimizer_get_info (the layout check's
    # buffer); set through the mirror.
    "fo_optimizer_get_scaler_state": (fo_status, [_opt, c_void_p]),
    "fo_optimizer_set_scaler_state": (fo_status, [_opt, POINTER(FoScalerState)]),
    "fo_optimizer_get_mu_product": (fo_status, [_opt, c_int, POINTER(c_float)]),
    "fo_optimizer_set_mu_product": (fo_status, [_opt, c_int, c_float]),
}

__all__ = ["FoHparams", "FoLossScalerOptions", "FoSchedule", "FoOptions", "FoTensorDesc",
           "FoStepInfo", "FoScalerState", "FoDpOptions", "PROTOTYPES", "HPARAM_FIELDS",
           "HPARAM_FLAGS", "declare"]


def declare(lib):
    """Set restype and argtypes of every function in PROTOTYPES on lib.
    Raises AttributeError naming a missing symbol."""
    for name, (restype, argtypes) in PROTOTYPES.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
