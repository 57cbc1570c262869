"""fusedopt.Optimizer: the library's CPU executor over Python float32
buffers (array.array('f'), a writable memoryview, a numpy float32 array,
anything exposing a writable, contiguous buffer of format 'f')."""

import array
import ctypes
import dataclasses
import numbers
import operator
import os
import threading
from collections.abc import Mapping

from . import _ctypes as C
from . import _library

_ROLES = {
    "master": C.FO_ROLE_MASTER,
    "exp_avg": C.FO_ROLE_EXP_AVG,
    "momentum_buffer": C.FO_ROLE_EXP_AVG,
    "exp_avg_sq": C.FO_ROLE_EXP_AVG_SQ,
    "max_exp_avg_sq": C.FO_ROLE_MAX_EXP_AVG_SQ,
    "sum": C.FO_ROLE_EXP_AVG_SQ,             # AdaGrad
    "square_avg": C.FO_ROLE_EXP_AVG_SQ,      # RMSprop
    "grad_avg": C.FO_ROLE_MAX_EXP_AVG_SQ,    # RMSprop, centered
}
_FLOAT_FORMATS = ("f", "<f", "=f", "@f")


def algorithms():
    """The library's algorithm names, in fo_algorithm order ("sgd", "adam",
    "adamw", "lion", "adagrad", "rmsprop", "nadam", "lamb", "lars")."""
    lib = _library.load()
    names = []
    for i in range(256):
        name = lib.fo_algorithm_string(i).decode()
        if name == "unknown":
            break
        names.append(name)
    return names


def _algorithm_index(name):
    if not isinstance(name, str):
        raise TypeError("algorithm must be a str, one of %s; got %r" % (algorithms(), name))
    names = algorithms()
    key = name.lower()
    if key not in names:
        raise ValueError("unknown algorithm %r: the library has %s" % (name, ", ".join(names)))
    return names.index(key)


def default_hparams(algorithm):
    """The library's defaults (fo_hparams_default) for an algorithm, as a dict."""
    lib = _library.load()
    hp = C.FoHparams()
    _library.check(lib.fo_hparams_default(_algorithm_index(algorithm), ctypes.byref(hp)),
                   "fo_hparams_default")
    return _hparams_dict(hp)


def _hparams_dict(hp):
    return {f: (bool(getattr(hp, f)) if f in C.HPARAM_FLAGS else getattr(hp, f))
            for f in C.HPARAM_FIELDS}


def _apply_hparams(hp, overrides, where):
    """Set the fields of an FoHparams by name; refuses unknown names and
    values of the wrong type (ranges are the library's to check)."""
    overrides = dict(overrides)
    if "betas" in overrides:
        betas = overrides.pop("betas")
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise TypeError("%s: betas must be a pair (beta1, beta2); got %r" % (where, betas))
        overrides.setdefault("beta1", betas[0])
        overrides.setdefault("beta2", betas[1])
    for key, value in overrides.items():
        if key not in C.HPARAM_FIELDS:
            raise TypeError("%s: unknown hyper-parameter %r (known: %s, betas)"
                            % (where, key, ", ".join(C.HPARAM_FIELDS)))
        if key in C.HPARAM_FLAGS:
            if not isinstance(value, (bool, int)) or value not in (0, 1):
                raise TypeError("%s: %s must be a bool; got %r" % (where, key, value))
            setattr(hp, key, int(value))
        else:
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError("%s: %s must be a real number; got %r" % (where, key, value))
            setattr(hp, key, float(value))


def _float_buffer(obj, what):
    """(memoryview, ctypes array over it or None, numel) for a writable,
    contiguous float32 buffer; TypeError/ValueError otherwise."""
    try:
        mv = memoryview(obj)
    except TypeError:
        raise TypeError("%s must expose the buffer protocol (array.array('f'), a float32 "
                        "numpy array, ...); got %s" % (what, type(obj).__name__)) from None
    if mv.format not in _FLOAT_FORMATS or mv.itemsize != 4:
        fmt = mv.format
        mv.release()
        raise TypeError("%s must hold float32 (buffer format 'f'); got format %r"
                        % (what, fmt))
    if mv.readonly:
        mv.release()
        raise ValueError("%s is read-only: the optimizer writes into it" % what)
    if not mv.c_contiguous:
        mv.release()
        raise ValueError("%s is not contiguous" % what)
    flat = mv.cast("B")
    nbytes = flat.nbytes
    # The ctypes array holds an export of the buffer: while it lives, an
    # array.array cannot be resized (and so cannot move).
    carr = (ctypes.c_char * nbytes).from_buffer(flat) if nbytes else None
    return flat, carr, nbytes // 4, mv


@dataclasses.dataclass(frozen=True)
class StepInfo:
    """fo_step_info: what the last step did."""
    step: int
    skipped_steps: int
    last_step_skipped: bool
    loss_scale: float
    grad_norm: float
    grad_coef: float
    lr_factor: float
    growth_tracker: int


class Optimizer:
    """A fusedopt optimizer on the CPU executor over external float32 buffers.

    params: a sequence of buffers, or a mapping name -> buffer (the names go
    into checkpoints).  grads: None (the optimizer allocates one zeroed
    array.array('f') per parameter, exposed as .grads) or a sequence of
    buffers of the same lengths.  groups: None (one group) or a list of
    dicts, one per parameter group, each {"params": [indices into params],
    hyper-parameter overrides...}; every parameter in exactly one group.
    **hparams: overrides of fo_hparams_default(algorithm) for every group
    (lr, weight_decay, momentum, dampening, nesterov, beta1, beta2, betas,
    eps, amsgrad, maximize).  num_threads: 0 uses every core.
    max_grad_norm: clip the global gradient norm (0: off).

    The optimizer keeps every buffer alive (the library holds raw
    pointers) until close(), which the with-statement and garbage
    collection also call."""

    def __init__(self, params, algorithm="adamw", groups=None, *, grads=None, num_threads=0,
                 max_grad_norm=0.0, **hparams):
        self._handle = None
        # calls in flight on other threads (ctypes releases the GIL): close()
        # must not destroy the optimizer under them
        self._guard = threading.Lock()
        self._inflight = 0
        self._lib = _library.load()
        self._exports = []
        alg = _algorithm_index(algorithm)
        self.algorithm = algorithms()[alg]

        if isinstance(params, Mapping):
            names = list(params.keys())
            params = list(params.values())
            for n in names:
                if not isinstance(n, str):
                    raise TypeError("parameter names must be str; got %r" % (n,))
        else:
            if isinstance(params, (str, bytes)) or not hasattr(params, "__iter__"):
                raise TypeError("params must be a sequence of float32 buffers or a mapping "
                                "name -> buffer")
            params = list(params)
            names = None
        n = len(params)
        num_threads = _check_int(num_threads, "num_threads")
        if not 0 <= num_threads <= _INT_MAX:
            raise ValueError("num_threads must be in [0, %d]; got %d" % (_INT_MAX, num_threads))
        if isinstance(max_grad_norm, bool) or not isinstance(max_grad_norm, numbers.Real):
            raise TypeError("max_grad_norm must be a real number")

        # Hyper-parameters per group.
        base = C.FoHparams()
        _library.check(self._lib.fo_hparams_default(alg, ctypes.byref(base)),
                       "fo_hparams_default")
        _apply_hparams(base, hparams, "Optimizer")
        group_of = [0] * n
        if groups is None:
            group_hps = [base]
        else:
            if isinstance(groups, Mapping) or not hasattr(groups, "__iter__"):
                raise TypeError("groups must be a list of dicts")
            groups = list(groups)
            if not groups:
                raise ValueError("groups is empty: give at least one group")
            if len(groups) > C.FO_MAX_GROUPS:
                raise ValueError("%d groups: at most %d" % (len(groups), C.FO_MAX_GROUPS))
            seen = [None] * n
            group_hps = []
            for g, spec in enumerate(groups):
                if not isinstance(spec, Mapping) or "params" not in spec:
                    raise TypeError("groups[%d] must be a dict with a 'params' list of "
                                    "parameter indices" % g)
                hp = C.FoHparams.from_buffer_copy(base)
                _apply_hparams(hp, {k: v for k, v in spec.items() if k != "params"},
                               "groups[%d]" % g)
                group_hps.append(hp)
                for i in spec["params"]:
                    if isinstance(i, bool) or not hasattr(type(i), "__index__"):
                        raise TypeError("groups[%d]['params'] holds %r: give indices into "
                                        "params" % (g, i))
                    i = operator.index(i)
                    if not 0 <= i < n:
                        raise ValueError("groups[%d]['params'] holds %d, outside [0, %d)"
                                         % (g, i, n))
                    if seen[i] is not None:
                        raise ValueError("parameter %d is in groups %d and %d" % (i, seen[i], g))
                    seen[i] = g
            missing = [i for i, g in enumerate(seen) if g is None]
            if missing:
                raise ValueError("parameters %s are in no group" % missing)
            group_of = seen

        # Buffers.
        if grads is not None:
            grads = list(grads)
            if len(grads) != n:
                raise ValueError("%d gradient buffers for %d parameters" % (len(grads), n))
        descs = (C.FoTensorDesc * max(n, 1))()
        self._params, self._grads, self._names = [], [], []
        try:
            for i, p in enumerate(params):
                pc, numel = self._export(p, "params[%d]" % i)
                g = array.array("f", bytes(4 * numel)) if grads is None else grads[i]
                gc, gnumel = self._export(g, "grads[%d]" % i)
                if gnumel != numel:
                    raise ValueError("grads[%d] has %d elements, params[%d] %d"
                                     % (i, gnumel, i, numel))
                self._params.append(p)
                self._grads.append(g)
                name = names[i].encode("utf-8") if names is not None else None
                if name is not None and b"\0" in name:
                    raise ValueError("parameter name %r has an embedded null byte" % names[i])
                self._names.append(name)
                descs[i].numel = numel
                descs[i].group = group_of[i]
                descs[i].param = ctypes.addressof(pc) if pc is not None else None
                descs[i].grad = ctypes.addressof(gc) if gc is not None else None
                descs[i].name = name
            self._numels = [descs[i].numel for i in range(n)]

            opts = C.FoOptions()
            _library.check(self._lib.fo_options_default(ctypes.byref(opts)),
                           "fo_options_default")
            opts.algorithm = alg
            opts.executor = C.FO_EXEC_CPU
            opts.storage = C.FO_STORAGE_EXTERNAL
            opts.param_dtype = C.FO_DTYPE_F32
            opts.grad_dtype = C.FO_DTYPE_F32
            opts.num_threads = num_threads
            opts.max_grad_norm = float(max_grad_norm)
            hps = (C.FoHparams * len(group_hps))(*group_hps)
            handle = C.fo_optimizer_p()
            self._call("fo_optimizer_create", ctypes.byref(handle), ctypes.byref(opts), hps,
                       len(group_hps), descs, n, handle_first=False)
            self._handle = handle
        except BaseException:
            self._release_exports()
            raise
        self.num_groups = len(group_hps)

    # -- plumbing
    def _export(self, obj, what):
        """Validate a buffer and export it for the optimizer's lifetime:
        (ctypes array over it or None when empty, numel)."""
        flat, carr, numel, mv = _float_buffer(obj, what)
        self._exports.append((carr, flat, mv))
        return carr, numel

    def _release_exports(self):
        while self._exports:
            carr, flat, mv = self._exports.pop()
            del carr  # the ctypes array's export of flat goes with it
            try:
                flat.release()
                mv.release()
            except BufferError:
                pass  # still exported elsewhere: released when that goes

    def _call(self, function, *args, handle_first=True):
        if not handle_first:
            _library.check(getattr(self._lib, function)(*args), function)
            return
        _call_live(self, function, args)

    def _live(self):
        if self._handle is None:
            raise ValueError("the optimizer is closed")
        return self._handle

    # -- the step
    def step(self):
        """Apply one step with the current gradients."""
        self._call("fo_optimizer_step", None)

    def zero_grad(self):
        """Set every gradient buffer to zero, in place."""
        self._call("fo_optimizer_zero_grad", None)

    # -- reading and changing
    @property
    def params(self):
        """The parameter buffers, in registration order."""
        return list(self._params)

    @property
    def grads(self):
        """The gradient buffers: write each step's gradients into them."""
        return list(self._grads)

    @property
    def step_count(self):
        """The number of steps applied so far."""
        out = ctypes.c_int64()
        self._call("fo_optimizer_get_step", ctypes.byref(out))
        return out.value

    def info(self):
        """fo_step_info as a StepInfo."""
        out = C.FoStepInfo()
        self._call("fo_optimizer_get_info", ctypes.cast(ctypes.byref(out), ctypes.c_void_p))
        return StepInfo(out.step, out.skipped_steps, bool(out.last_step_skipped),
                        out.loss_scale, out.grad_norm, out.grad_coef, out.lr_factor,
                        out.growth_tracker)

    def get_lr(self, group=0):
        """The base learning rate of a group."""
        group = _check_int(group, "group")
        out = ctypes.c_float()
        self._call("fo_optimizer_get_lr", group, ctypes.byref(out))
        return out.value

    def set_lr(self, lr, group=-1):
        """Set the learning rate of one group, or of every group (-1)."""
        group = _check_int(group, "group")
        if isinstance(lr, bool) or not isinstance(lr, numbers.Real):
            raise TypeError("lr must be a real number; got %r" % (lr,))
        self._call("fo_optimizer_set_lr", group, float(lr))

    def get_hparams(self, group=0):
        """A group's hyper-parameters as a dict."""
        group = _check_int(group, "group")
        hp = C.FoHparams()
        self._call("fo_optimizer_get_hparams", group, ctypes.byref(hp))
        return _hparams_dict(hp)

    def set_hparams(self, group=0, **hparams):
        """Change some hyper-parameters of a group (the others kept)."""
        group = _check_int(group, "group")
        hp = C.FoHparams()
        self._call("fo_optimizer_get_hparams", group, ctypes.byref(hp))
        _apply_hparams(hp, hparams, "set_hparams")
        self._call("fo_optimizer_set_hparams", group, ctypes.byref(hp))

    def state(self, index, name):
        """A copy (array.array('f')) of a state buffer of tensor index: "exp_avg",
        "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer" or "master"."""
        index = _check_int(index, "index", 64)
        if name not in _ROLES:
            raise ValueError("unknown state %r: one of %s" % (name, ", ".join(_ROLES)))
        ptr = ctypes.POINTER(ctypes.c_float)()
        self._call("fo_optimizer_state_ptr", index, _ROLES[name], ctypes.byref(ptr))
        out = array.array("f")
        numel = self._numels[index]
        if numel:
            out.frombytes(ctypes.string_at(ptr, 4 * numel))
        return out

    # -- checkpoints
    def save(self, path):
        """Write the whole state to a safetensors checkpoint (atomically)."""
        self._call("fo_optimizer_save", _c_path(path), None)

    def load(self, path):
        """Restore a checkpoint of an optimizer of the same algorithm and
        tensors: parameters (written into the buffers), state,
        hyper-parameters and step count."""
        self._call("fo_optimizer_load", _c_path(path), None)

    # -- lifetime
    def close(self):
        """Destroy the library's optimizer and let go of the buffers.
        Raises InvalidState, changing nothing, while another thread is
        inside a call on it (destroying it then would pull its memory from
        under that call)."""
        handle = _take_handle(self)
        if handle is not None:
            status = self._lib.fo_optimizer_destroy(handle)
            self._release_exports()
            _library.check(status, "fo_optimizer_destroy")

    @property
    def closed(self):
        return self._handle is None

    def __enter__(self):
        self._live()
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __del__(self):
        try:
            if getattr(self, "_handle", None) is not None:
                self.close()
        except Exception:
            pass

    def __len__(self):
        return len(self._params)

    def __repr__(self):
        state = "closed" if self._handle is None else "%d groups" % self.num_groups
        return "<fusedopt.Optimizer %s, %d tensors, %s>" % (self.algorithm, len(self._params),
                                                           state)


_INT_MAX = 2**31 - 1


def _check_int(value, what, bits=32):
    """value as a Python int, checked to fit the C parameter (int, or
    int64_t with bits=64): ctypes would wrap a larger one silently (group
    2**32 - 1 would become -1, every group).  Any integer type counts
    (numpy's included, through __index__); bool and float do not."""
    if isinstance(value, bool):
        raise TypeError("%s must be an int; got %r" % (what, value))
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError("%s must be an int; got %r" % (what, value)) from None
    limit = 2**(bits - 1)
    if not -limit <= value < limit:
        raise ValueError("%s = %d does not fit a %d-bit C integer" % (what, value, bits))
    return value


def _call_live(owner, function, args):
    """owner's library call function(handle, *args), its status checked.
    Shared by Optimizer and fusedopt.torch's classes (owner has _lib,
    _live(), _guard, _inflight): ctypes releases the GIL inside the call,
    so it is counted in flight, and close() on another thread refuses
    rather than destroy the optimizer under it (_take_handle)."""
    with owner._guard:
        handle = owner._live()
        owner._inflight += 1
    try:
        status = getattr(owner._lib, function)(handle, *args)
    finally:
        with owner._guard:
            owner._inflight -= 1
    _library.check(status, function)


def _take_handle(owner):
    """owner's handle, given up for destroying (None when closed already);
    InvalidState, changing nothing, while another thread is inside a call."""
    with owner._guard:
        if owner._inflight:
            from .errors import InvalidState
            raise InvalidState(5, "invalid state", "close",
                               "another thread is inside a call on this optimizer")
        handle, owner._handle = owner._handle, None
    return handle


def _c_path(path):
    """path (checked) as the bytes the library opens."""
    raw = os.fsencode(_check_path(path))
    if b"\0" in raw:
        raise ValueError("path has an embedded null byte")
    return raw


def _check_path(path):
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError("path must be a str, bytes or os.PathLike; got %r" % (path,))
    if not os.fspath(path):
        raise ValueError("path is empty")
    return path
