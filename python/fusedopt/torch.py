"""fusedopt.torch: torch.optim.Optimizer subclasses over libfusedopt.

    import fusedopt.torch
    opt = fusedopt.torch.AdamW(model.parameters(), lr=1e-3)   # was torch.optim.AdamW

Each class takes PyTorch's constructor arguments and defaults, keeps
param groups with their own hyper-parameters (a change of group["lr"] or
any other hyper-parameter between steps is pushed to the library before
the next step), and reads and writes state dicts in PyTorch's layout.  The
step itself is the library's fused step over every tensor: its CPU
executor for CPU tensors, its CUDA executor on
torch.cuda.current_stream() for CUDA tensors.

Differences from torch.optim (docs/python.md):
  - The optimizer owns the gradient memory: one flat buffer per optimizer
    (one device, one dtype), each p.grad a view of it.  zero_grad() zeroes
    it in place whatever set_to_none says.  A p.grad replaced by user code
    is copied into the buffer at the next step (and p.grad set back to the
    view).
  - One fused step covers every parameter.  A parameter without a
    gradient (frozen, or p.grad None) is an error (missing_grad="error",
    the default), kept as it is by copying it and its state back after the
    step (missing_grad="skip"), or stepped with a zero gradient
    (missing_grad="zero").  A parameter that requires a gradient but got
    none from backward (unused in the forward) has a zero gradient after
    opt.zero_grad() and is stepped with it, as torch.optim steps it after
    zero_grad(set_to_none=False).  The state lives in the library, so
    opt.state is empty: use state_dict().
  - Parameters must not move: p.data replaced, or the model moved to
    another device after the optimizer was created, is refused at the next
    step.
  - fp16/bf16 parameters get fp32 master weights in the optimizer
    (master_weights=True); loss_scale=True turns on the library's dynamic
    loss scaler (opt.loss_scale is a one-element fp32 tensor on the
    parameters' device; opt.scale_loss(loss) multiplies by it, no host
    synchronization).
"""

import ctypes
import importlib
import numbers
import operator
import threading
import warnings

import torch
import torch.utils.dlpack

from . import _ctypes as C
from . import _library
from .core import _algorithm_index, _c_path, _call_live, _check_int, _take_handle
from .errors import InvalidState

__all__ = ["FusedOptimizer", "SGD", "Adam", "AdamW", "Lion", "Adagrad", "RMSprop", "NAdam",
           "LAMB", "LARS"]

_DTYPES = {torch.float32: C.FO_DTYPE_F32, torch.float16: C.FO_DTYPE_F16,
           torch.bfloat16: C.FO_DTYPE_BF16}
_FO_MAX_STEP = 1 << 62  # fusedopt.h's FO_MAX_STEP
_FLT_MIN = 2.0 ** -126  # FO_LOSS_SCALE_MIN
_FLT_MAX = float.fromhex("0x1.fffffep127")
_ALIGN_BYTES = 256  # each gradient view starts on a 256-byte boundary

# What torch's own wrapper of an optimizer's step serves (torch 2.x's
# optimizer module; empty dicts for torch 1.x): the global step hooks,
# registered into these dicts in place, and the profiler's range.
_torch_optimizer_module = importlib.import_module("torch.optim.optimizer")
_GLOBAL_STEP_PRE_HOOKS = getattr(_torch_optimizer_module, "_global_optimizer_pre_hooks", {})
_GLOBAL_STEP_POST_HOOKS = getattr(_torch_optimizer_module, "_global_optimizer_post_hooks", {})
_profiler_enabled = torch.autograd._profiler_enabled
_TORCH_KEYS = ("foreach", "fused", "capturable", "differentiable")
_SCALER_KEYS = ("init_scale", "growth_factor", "backoff_factor", "growth_interval",
                "max_scale", "hysteresis")


def _is_real(x):
    return not isinstance(x, bool) and isinstance(x, numbers.Real)


def _as_float(value, where):
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_complex():
            raise TypeError("%s must be a real number or a one-element tensor; got a tensor "
                            "of shape %s" % (where, tuple(value.shape)))
        if value.is_cuda and torch.cuda.is_current_stream_capturing():
            # .item() would synchronize, which CUDA refuses inside a capture
            # (and invalidates it): refuse first, the capture intact
            raise RuntimeError("%s is a CUDA tensor, which cannot be read inside a CUDA graph "
                               "capture (it would synchronize); give a Python number or a CPU "
                               "tensor" % where)
        value = value.item()
    if not _is_real(value):
        raise TypeError("%s must be a real number; got %r" % (where, value))
    return float(value) + 0.0  # -0.0 becomes 0.0: equal values, equal bits


def _as_flag(value, where):
    if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
        return int(value)
    raise TypeError("%s must be a bool; got %r" % (where, value))


class _Absent:
    """A key a param group does not have."""


_ABSENT = _Absent()
# The types whose values cannot change in place: a group whose watched
# values are all of these (or tuples of them) is compared, not converted,
# at each step.
_FROZEN_TYPES = frozenset((float, int, bool, _Absent))
_grad_of = operator.attrgetter("grad")
_requires_grad_of = operator.attrgetter("requires_grad")


def _missing_message(frozen, missing):
    what = []
    if frozen:
        what.append("parameter(s) %s are frozen (requires_grad=False)" % frozen[:10])
    if missing:
        what.append("parameter(s) %s have no gradient (p.grad is None)" % missing[:10])
    return ("fusedopt: %s.  fusedopt's fused step covers every parameter it holds, so it "
            "cannot skip them as torch.optim does by default.  Leave frozen parameters out "
            "of the optimizer ([p for p in model.parameters() if p.requires_grad]); call "
            "opt.zero_grad() rather than setting p.grad = None (model.zero_grad() does); "
            "or pass missing_grad='skip' (such parameters and their state stay as they "
            "are, at the cost of copying them each step) or missing_grad='zero' (they "
            "are stepped with a zero gradient: weight decay and momentum still move "
            "them).  A frozen parameter's gradient assigned with p.grad = g counts; one "
            "written into p.grad in place cannot be told from zero_grad()'s zeros" %
            " and ".join(what))


def _values_key(group, keys):
    """What the library's copy of a group is made from: the group's values
    of keys and their types (a tuple's elements' too: True == 1 == 1.0,
    but only some of them are valid for a given key)."""
    vals = tuple(map(group.get, keys, (_ABSENT,) * len(keys)))
    # types first: a key of other types compares unequal without comparing
    # its values (a tensor's or an array's == is elementwise, and bool() of
    # it raises for more than one element)
    return tuple([type(v) if type(v) is not tuple else tuple(map(type, v)) for v in vals]), vals


def _frozen(key):
    """key if none of its values can change in place, else None (a tensor
    or a list can change without the group changing: such a group is
    converted at every step)."""
    for t in key[0]:
        if type(t) is tuple:
            if not all(e in _FROZEN_TYPES for e in t):
                return None
        elif t not in _FROZEN_TYPES:
            return None
    return key


def _stream_of(device):
    if device.type == "cuda":
        return ctypes.c_void_p(torch.cuda.current_stream(device).cuda_stream)
    return None


# A tensor over library memory without numpy: torch.as_tensor of a
# __cuda_array_interface__ parses its typestr with numpy ("Numpy is not
# available" where torch was installed without it).  DLPack is torch's own
# importer: a DLManagedTensor (dlpack.h, the unversioned "dltensor"
# capsule) in one malloc'd block with its shape and strides, whose deleter
# is libc's free, so the block lives exactly as long as the tensor and no
# Python code runs when torch releases it.
class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", _DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


class _DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p),
                ("deleter", ctypes.c_void_p)]


class _DLBlock(ctypes.Structure):
    _fields_ = [("managed", _DLManagedTensor), ("shape", ctypes.c_int64),
                ("stride", ctypes.c_int64)]


_KDL_CPU, _KDL_CUDA, _KDL_FLOAT = 1, 2, 2
_DLTENSOR = b"dltensor"  # the capsule's name: must outlive the capsule
_libc = ctypes.CDLL(None)
_libc.malloc.restype = ctypes.c_void_p
_libc.malloc.argtypes = [ctypes.c_size_t]
_LIBC_FREE = ctypes.cast(_libc.free, ctypes.c_void_p).value
_capsule_new = ctypes.pythonapi.PyCapsule_New
_capsule_new.restype = ctypes.py_object
_capsule_new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]


def _dlpack_view(ptr, numel, device):
    """A float32 tensor aliasing numel floats at ptr on device (CPU or CUDA),
    imported through DLPack."""
    size = ctypes.sizeof(_DLBlock)
    addr = _libc.malloc(size)
    if not addr:
        raise MemoryError("fusedopt: malloc(%d) for a DLPack header failed" % size)
    ctypes.memset(addr, 0, size)
    block = _DLBlock.from_address(addr)
    block.shape, block.stride = numel, 1
    t = block.managed.dl_tensor
    t.data = ptr
    if device.type == "cuda":
        t.device.device_type = _KDL_CUDA
        t.device.device_id = device.index if device.index is not None \
            else torch.cuda.current_device()
    else:
        t.device.device_type, t.device.device_id = _KDL_CPU, 0
    t.ndim = 1
    t.dtype.code, t.dtype.bits, t.dtype.lanes = _KDL_FLOAT, 32, 1
    t.shape = ctypes.cast(addr + _DLBlock.shape.offset, ctypes.POINTER(ctypes.c_int64))
    t.strides = ctypes.cast(addr + _DLBlock.stride.offset, ctypes.POINTER(ctypes.c_int64))
    block.managed.deleter = _LIBC_FREE
    return torch.utils.dlpack.from_dlpack(_capsule_new(addr, _DLTENSOR, None))


def _float_view(ptr, numel, device):
    """A float32 tensor over numel floats of the library's memory at ptr
    (device memory on CUDA).  Valid while the optimizer lives."""
    if numel == 0 or not ptr:
        return torch.empty(0, dtype=torch.float32, device=device)
    if device.type == "cuda":
        return _dlpack_view(ptr, numel, device)
    arr = (ctypes.c_float * numel).from_address(ptr)
    return torch.frombuffer(arr, dtype=torch.float32, count=numel)


class FusedOptimizer(torch.optim.Optimizer):
    """The base of fusedopt's torch optimizers: a torch.optim.Optimizer
    whose step is one call of libfusedopt over every parameter.

    Subclasses set: algorithm (the library's name), _hparam_keys (the
    group keys that map to fo_hparams fields; "betas" maps to beta1 and
    beta2) and _state_layout(group) (PyTorch's state names of a parameter
    in that group, each with the library's role).

    Options every class takes (keyword-only):
      master_weights  fp32 master weights for fp16/bf16 parameters (True).
      loss_scale      False (default), True, or a dict of the library's
                      loss-scaler options (init_scale, growth_factor,
                      backoff_factor, growth_interval, max_scale,
                      hysteresis): dynamic loss scaling inside the step.
      max_grad_norm   clip the global gradient norm inside the step (0: off).
      num_threads     CPU executor threads (0: every core).
      missing_grad    what a step does with a parameter that has no
                      gradient (frozen: requires_grad=False, or p.grad
                      None): "error" (default) raises, changing nothing;
                      "skip" leaves it and its state as they are (torch's
                      behaviour; costs a copy of them per step); "zero"
                      steps it with a zero gradient.
    """

    algorithm = None
    _hparam_keys = ()
    # Adam and AdamW: the decoupled_weight_decay the class stands for
    # (None: the class takes no such key)
    _decoupled = None

    def __init__(self, params, defaults, *, master_weights=True, loss_scale=False,
                 max_grad_norm=0.0, num_threads=0, missing_grad="error"):
        self._handle = None
        # calls in flight on other threads (ctypes releases the GIL): close()
        # must not destroy the optimizer under them
        self._guard = threading.Lock()
        self._inflight = 0
        self._lib = _library.load()
        self._alg = _algorithm_index(self.algorithm)
        # what the library's copy of a group is made from (_push_hparams)
        self._watched_keys = tuple(self._hparam_keys) + ("differentiable",) + (
            ("decoupled_weight_decay",) if self._decoupled is not None else ())
        self._master_weights = _as_flag(master_weights, "master_weights")
        self._scaler = self._scaler_options(loss_scale)
        self._max_grad_norm = _as_float(max_grad_norm, "max_grad_norm")
        num_threads = _check_int(num_threads, "num_threads")
        if num_threads < 0:
            raise ValueError("num_threads must be >= 0; got %r" % (num_threads,))
        self._num_threads = num_threads
        if missing_grad not in ("error", "zero", "skip"):
            raise ValueError("missing_grad must be 'error', 'zero' or 'skip'; got %r"
                             % (missing_grad,))
        self._missing_grad = missing_grad
        self._warned_copy = False
        self._loaded_state = False
        for key in _TORCH_KEYS:
            defaults.setdefault(key, None if key in ("foreach", "fused") else False)
        super().__init__(params, defaults)
        self._build()

    # ------------------------------------------------------------ options
    @staticmethod
    def _scaler_options(loss_scale):
        if loss_scale is False or loss_scale is None:
            return None
        if loss_scale is True:
            return {}
        if isinstance(loss_scale, dict):
            unknown = set(loss_scale) - set(_SCALER_KEYS)
            if unknown:
                raise TypeError("loss_scale: unknown option(s) %s (known: %s)"
                                % (", ".join(sorted(unknown)), ", ".join(_SCALER_KEYS)))
            out = {}
            for k, v in loss_scale.items():
                if k in ("growth_interval", "hysteresis"):
                    out[k] = _check_int(v, "loss_scale: " + k)
                else:
                    out[k] = _as_float(v, "loss_scale: " + k)
            return out
        raise TypeError("loss_scale must be a bool or a dict of loss-scaler options; got %r"
                        % (loss_scale,))

    # ------------------------------------------------------------ groups
    def _hparams_of(self, group, where):
        """An FoHparams from a group dict (types checked here, ranges by
        the library)."""
        hp = C.FoHparams()
        _library.check(self._lib.fo_hparams_default(self._alg, ctypes.byref(hp)),
                       "fo_hparams_default")
        for key in self._hparam_keys:
            if key not in group:
                continue
            value = group[key]
            if key == "betas":
                if not (isinstance(value, (tuple, list)) and len(value) == 2):
                    raise TypeError("%s: betas must be a pair (beta1, beta2); got %r"
                                    % (where, value))
                hp.beta1 = _as_float(value[0], where + ": betas[0]")
                hp.beta2 = _as_float(value[1], where + ": betas[1]")
            elif key in C.HPARAM_FLAGS:
                setattr(hp, key, _as_flag(value, "%s: %s" % (where, key)))
            else:
                setattr(hp, key, _as_float(value, "%s: %s" % (where, key)))
        if group.get("differentiable"):
            raise ValueError("%s: differentiable=True is not supported by fusedopt (the step "
                             "runs outside autograd)" % where)
        wanted = group.get("decoupled_weight_decay")
        if self._decoupled is not None and wanted is not None \
                and bool(wanted) != self._decoupled:
            other = "Adam" if self._decoupled else "AdamW"
            raise ValueError("%s: decoupled_weight_decay=%s is %s's weight decay: use "
                             "fusedopt.torch.%s (a state dict of torch's %s?)"
                             % (where, wanted, other, other, other))
        return hp

    def add_param_group(self, param_group):
        """torch's add_param_group, with fusedopt's checks: parameters of
        float32, float16 or bfloat16, dense, contiguous, on one device, of
        one dtype.  After the first step a new group is refused (the
        library registers its tensors once)."""
        if not isinstance(param_group, dict):
            raise TypeError("param_group must be a dict; got %s" % type(param_group).__name__)
        params = param_group.get("params")
        if isinstance(params, torch.Tensor):
            params = [params]
        elif params is not None and not isinstance(params, set):
            params = list(params)
        if isinstance(params, list):
            where = "param group %d" % len(self.param_groups)
            existing = [p for g in self.param_groups for p in g["params"]]
            first = existing[0] if existing else None
            seen = set()
            for j, p in enumerate(params):
                # torch 2.6 and newer also take (name, tensor) pairs
                # (named_parameters()): check the tensor all the same
                if isinstance(p, tuple) and len(p) == 2 and isinstance(p[1], torch.Tensor):
                    p = p[1]
                if not isinstance(p, torch.Tensor):
                    continue  # torch's own message
                what = "%s, parameter %d" % (where, j)
                if id(p) in seen:
                    raise ValueError("%s appears twice in the group: fusedopt steps each "
                                     "tensor once (torch would step it twice)" % what)
                seen.add(id(p))
                if p.dtype not in _DTYPES:
                    raise TypeError("%s has dtype %s: fusedopt steps float32, float16 and "
                                    "bfloat16 parameters (not complex, integer or float64)"
                                    % (what, p.dtype))
                if p.layout != torch.strided:
                    raise ValueError("%s is %s: fusedopt steps dense tensors" % (what, p.layout))
                if not p.is_contiguous():
                    raise ValueError("%s is not contiguous: fusedopt steps contiguous tensors "
                                     "(the library reads and writes flat memory)" % what)
                # torch refuses a non-leaf unless it retains its gradient;
                # fusedopt steps leaves only (an intermediate's .grad is
                # rewritten by every backward, never accumulated in place)
                if not p.is_leaf:
                    raise ValueError("%s is a non-leaf tensor: fusedopt steps leaf tensors "
                                     "(model parameters)" % what)
                if first is None:
                    first = p
                if p.device != first.device:
                    raise ValueError("%s is on %s, another parameter on %s: one fusedopt "
                                     "optimizer steps tensors on one device (make one "
                                     "optimizer per device)" % (what, p.device, first.device))
                if p.device.type not in ("cpu", "cuda"):
                    raise ValueError("%s is on %s: fusedopt steps CPU and CUDA tensors"
                                     % (what, p.device))
                if p.dtype != first.dtype:
                    raise TypeError("%s is %s, another parameter %s: one fusedopt optimizer "
                                    "steps one dtype (make one optimizer per dtype)"
                                    % (what, p.dtype, first.dtype))
            # torch keeps the caller's dict itself: a group dict the caller
            # holds on to and changes later (g["lr"] = ...) is the
            # optimizer's group
            param_group["params"] = params
        if self._handle is not None and not self._pristine():
            raise RuntimeError("fusedopt: add_param_group after the first step (or a skipped "
                               "step, or a loaded state) is not supported: the library "
                               "registers its tensors once; create the optimizer with every "
                               "group")
        if len(self.param_groups) >= C.FO_MAX_GROUPS:
            raise ValueError("fusedopt: at most %d parameter groups" % C.FO_MAX_GROUPS)
        n_before = len(self.param_groups)
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            self._hparams_of(group, "param group %d" % n_before)
            if self._handle is not None:
                self._rebuild()
        except BaseException:
            del self.param_groups[n_before:]
            raise

    # ------------------------------------------------------------ building
    def _params(self):
        return [p for g in self.param_groups for p in g["params"]]

    def _build(self, groups=None):
        """Create the library's optimizer over the parameters, with the
        hyper-parameters of groups (default: param_groups), and replace the
        current one; on failure nothing changes."""
        params = self._params()
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        device, dtype = params[0].device, params[0].dtype
        esize = torch.tensor([], dtype=dtype).element_size()
        align = _ALIGN_BYTES // esize
        offsets, total = [], 0
        for p in params:
            offsets.append(total)
            total += (p.numel() + align - 1) // align * align
        flat = torch.zeros(max(total, 1), dtype=dtype, device=device)
        views = [flat[o:o + p.numel()].view_as(p) for o, p in zip(offsets, params)]
        group_of = [gi for gi, g in enumerate(self.param_groups) for _ in g["params"]]
        hps = [self._hparams_of(g, "param group %d" % gi)
               for gi, g in enumerate(groups if groups is not None else self.param_groups)]

        descs = (C.FoTensorDesc * len(params))()
        for i, (p, v) in enumerate(zip(params, views)):
            descs[i].numel = p.numel()
            descs[i].group = group_of[i]
            descs[i].param = p.data_ptr() if p.numel() else None
            descs[i].grad = v.data_ptr() if p.numel() else None
            descs[i].name = None
        opts = C.FoOptions()
        _library.check(self._lib.fo_options_default(ctypes.byref(opts)), "fo_options_default")
        opts.algorithm = self._alg
        opts.executor = C.FO_EXEC_CUDA if device.type == "cuda" else C.FO_EXEC_CPU
        if device.type == "cuda":
            opts.device = (device.index if device.index is not None
                           else torch.cuda.current_device())
        opts.storage = C.FO_STORAGE_EXTERNAL
        opts.param_dtype = _DTYPES[dtype]
        opts.grad_dtype = _DTYPES[dtype]
        opts.master_weights = self._master_weights
        opts.num_threads = self._num_threads
        opts.max_grad_norm = self._max_grad_norm
        if self._scaler is not None:
            opts.loss_scaler.enabled = 1
            for k, v in self._scaler.items():
                setattr(opts.loss_scaler, k, v)
        harr = (C.FoHparams * len(hps))(*hps)
        handle = C.fo_optimizer_p()
        if device.type == "cuda":
            # The parameters' initial values must be written before create
            # reads them (master weights) on its own stream.
            torch.cuda.current_stream(device).synchronize()
        _library.check(self._lib.fo_optimizer_create(ctypes.byref(handle), ctypes.byref(opts),
                                                     harr, len(hps), descs, len(params)),
                       "fo_optimizer_create")
        # Committed: from here on nothing fails.
        old = self._handle
        self._handle = handle
        if old is not None:
            self._lib.fo_optimizer_destroy(old)
        for p, v in zip(params, views):
            if p.grad is not None and p.grad is not v:
                with torch.no_grad():
                    v.copy_(p.grad)
            p.grad = v
        self._device, self._dtype = device, dtype
        self._flat, self._views, self._offsets = flat, views, offsets
        self._group_of = group_of
        # where each view points: p.grad.data = t (or p.grad.set_(t)) keeps
        # the view object but moves it off the buffer
        self._gptrs = [v.data_ptr() for v in views]
        # Hold the parameters' storage: a p.data replaced by user code
        # cannot free memory the library still points to.
        self._pdata = [p.detach() for p in params]
        self._pptrs = [p.data_ptr() for p in params]
        self._pshapes = [p.shape for p in params]
        self._vstrides = [v.stride() for v in views]
        self._pnumels = [p.numel() for p in params]
        self._pushed_all(hps)
        # The loss scale's view, made once: scale_loss() then runs no
        # library call and creates no tensor header per step (nothing but
        # the multiplication is enqueued, inside a graph capture too).
        ptr = ctypes.POINTER(ctypes.c_float)()
        self._call("fo_optimizer_loss_scale_ptr", ctypes.byref(ptr))
        self._loss_scale = _float_view(ctypes.cast(ptr, ctypes.c_void_p).value, 1, device)
        # Fresh state that is not zero, as torch's optimizer shows it before
        # the first step (AdaGrad's accumulator: the library fills it at
        # create from the same values; load_state_dict refills it for the
        # parameters a loaded state dict has no state for)
        with torch.no_grad():
            self._init_state(params, groups)
        if device.type == "cuda":
            # the first step may run on another stream: the fill is done
            torch.cuda.current_stream(device).synchronize()

    def _rebuild(self):
        self._build()

    def _pristine(self):
        """Nothing has happened to the library's state yet: no step applied
        or skipped, no state loaded.  Such an optimizer can be created
        again (new groups, hyper-parameters that need other state buffers)
        without losing anything."""
        if self._loaded_state:
            return False
        info = self.info()
        return info.step == 0 and info.skipped_steps == 0

    def _live(self):
        if self._handle is None:
            raise ValueError("the optimizer is closed")
        return self._handle

    def _call(self, function, *args):
        _call_live(self, function, args)

    def _step_count_lib(self):
        out = ctypes.c_int64()
        self._call("fo_optimizer_get_step", ctypes.byref(out))
        return out.value

    def _state_view(self, index, role):
        ptr = ctypes.POINTER(ctypes.c_float)()
        self._call("fo_optimizer_state_ptr", index, role, ctypes.byref(ptr))
        addr = ctypes.cast(ptr, ctypes.c_void_p).value
        return _float_view(addr, self._pdata[index].numel(), self._device)

    # ------------------------------------------------------------ the step
    def _grads_are_views(self, params):
        """Every p.grad is still its view, and every view still points into
        the buffer (one C-level pass each, no Python loop per parameter):
        user code can keep the view object and move it off the buffer
        (p.grad.data = t, p.grad.set_(t))."""
        return (all(map(operator.is_, map(_grad_of, params), self._views))
                and list(map(torch.Tensor.data_ptr, self._views)) == self._gptrs)

    def _grads_in_place(self, params):
        """The common case, checked without a Python loop per parameter
        (the loop cost GPT-2's 148 tensors 60 us a step on a CPU): every
        p.grad is its view, every parameter requires a gradient, and no
        parameter's memory moved or changed size (p.data = p.data[:1] keeps
        the address, and autograd broadcasts its (1, n) gradient into the
        (k, n) view without complaint).  A reshape of the same size is left
        to the loop: the library steps the same memory, and autograd
        refuses a gradient of the new shape."""
        return (len(params) == len(self._views)
                and self._grads_are_views(params)
                and all(map(_requires_grad_of, params))
                and list(map(torch.Tensor.data_ptr, params)) == self._pptrs
                and list(map(torch.Tensor.numel, params)) == self._pnumels)

    def _view(self, i, p):
        """Parameter i's view of the buffer, made again if user code moved
        the old one off it (p.grad.data = t)."""
        v = self._views[i]
        if (v.data_ptr() != self._gptrs[i] or v.shape != self._pshapes[i]
                or v.stride() != self._vstrides[i]):
            o = self._offsets[i]
            v = self._views[i] = self._flat[o:o + p.numel()].view_as(p)
        return v

    def _check_grads(self):
        """Check every p.grad before the step; copy replaced ones into the
        owned buffer.  Raises (changing nothing) on a moved parameter, a
        sparse or mismatched gradient, or a parameter without a gradient
        (frozen, or p.grad None) under missing_grad="error".  Returns the
        parameters the step must leave as they are (missing_grad="skip")."""
        params = self._params()
        if self._grads_in_place(params):
            return ()
        if len(params) != len(self._views):
            raise RuntimeError("fusedopt: the param groups' parameters changed (%d registered, "
                               "%d now): create a new optimizer" % (len(self._views), len(params)))
        copies, frozen, missing = [], [], []
        for i, (p, v) in enumerate(zip(params, self._views)):
            if p.data_ptr() != self._pptrs[i] or p.shape != self._pshapes[i]:
                raise RuntimeError(
                    "fusedopt: parameter %d moved (p.data was replaced, or the model was moved "
                    "to another device or dtype, after the optimizer was created): the library "
                    "steps the memory it registered; create the optimizer after moving the "
                    "model" % i)
            g = p.grad
            if g is None:
                missing.append(i)
                continue
            in_place = (g.layout == torch.strided and g.data_ptr() == self._gptrs[i]
                        and g.shape == p.shape and g.stride() == self._vstrides[i])
            if in_place and not p.requires_grad:
                # frozen: no backward writes its view, which holds zero_grad's
                # zeros (torch skips it: its p.grad stays None).  A gradient
                # user code assigned to it is a gradient, as for torch.
                frozen.append(i)
                continue
            if in_place:
                if g is not v:
                    self._views[i] = g  # another tensor over the same memory
                continue
            if g.is_sparse or g.layout != torch.strided:
                raise RuntimeError("fusedopt: parameter %d has a sparse gradient: fusedopt "
                                   "steps dense gradients" % i)
            if g.shape != p.shape or g.dtype != p.dtype or g.device != p.device:
                raise RuntimeError("fusedopt: parameter %d's gradient is %s %s on %s, the "
                                   "parameter %s %s on %s" % (i, g.dtype, tuple(g.shape),
                                                              g.device, p.dtype,
                                                              tuple(p.shape), p.device))
            copies.append((i, g))
        if (frozen or missing) and self._missing_grad == "error":
            raise RuntimeError(_missing_message(frozen, missing))
        with torch.no_grad():
            # A source inside the buffer (p.grad set to another parameter's
            # view, two swapped) is read before any view is written.
            lo = self._flat.data_ptr()
            hi = lo + self._flat.numel() * self._flat.element_size()
            copies = [(i, g.clone() if lo <= g.data_ptr() < hi else g) for i, g in copies]
            for i, g in copies:
                if not self._warned_copy:
                    self._warned_copy = True
                    warnings.warn(
                        "fusedopt: p.grad was replaced by a tensor the optimizer does not own "
                        "(model.zero_grad(set_to_none=True), or an assignment to p.grad or "
                        "p.grad.data): it is copied into the optimizer's gradient buffer at "
                        "each step, an extra pass over the gradients.  Use opt.zero_grad() to "
                        "keep them in place.", RuntimeWarning, stacklevel=4)
                v = self._view(i, params[i])
                v.copy_(g)
                params[i].grad = v
            # a missing gradient is zero; a frozen parameter's view keeps
            # what is in it ("zero": stepped with it, "skip": ignored)
            for i in missing:
                v = self._view(i, params[i])
                v.zero_()
                params[i].grad = v
        return tuple(sorted(frozen + missing)) if self._missing_grad == "skip" else ()

    def _snapshot(self, indices):
        """Copies of what a step writes for parameters indices (the
        parameter, its state tensors, its master weights): _restore puts
        them back after the step, so that it leaves those parameters as
        they were (missing_grad="skip").  Stream-ordered on CUDA."""
        params, kept = self._params(), []
        master = self._dtype != torch.float32 and self._master_weights
        with torch.no_grad():
            for i in indices:
                group = self.param_groups[self._group_of[i]]
                roles = [r for _, r in self._state_layout(group) if r is not None]
                if master:
                    roles.append(C.FO_ROLE_MASTER)
                for dst in [params[i]] + [self._state_view(i, r) for r in roles]:
                    kept.append((dst, dst.detach().clone()))
        return kept

    @staticmethod
    def _restore(kept):
        with torch.no_grad():
            for dst, src in kept:
                dst.copy_(src)

    def _pushed_all(self, hps):
        """The library now holds hps, one per group: nothing seen yet."""
        self._pushed = [bytes(h) for h in hps]
        self._seen = [None] * len(hps)

    def _pushed_one(self, gi, raw, key=None):
        """The library now holds raw for group gi, made from the group's
        values key (_values_key; None: not known, convert at the next step)."""
        self._pushed[gi] = raw
        self._seen[gi] = _frozen(key) if key is not None else None

    def _push_hparams(self):
        """Push every group whose hyper-parameters changed since the last
        push (fo_optimizer_set_hparams; the library checks the ranges).
        All groups are checked before any is pushed."""
        todo = []
        for gi, g in enumerate(self.param_groups):
            # A group whose values are those last pushed (and cannot have
            # changed in place) is not converted again.
            key = _values_key(g, self._watched_keys)
            if key == self._seen[gi]:
                continue
            hp = self._hparams_of(g, "param group %d" % gi)
            raw = bytes(hp)
            if raw != self._pushed[gi]:
                todo.append((gi, hp, raw, key))
            else:
                self._pushed_one(gi, raw, key)  # the same bytes, now known by its values
        done = []
        try:
            for gi, hp, raw, _ in todo:
                self._call("fo_optimizer_set_hparams", gi, ctypes.byref(hp))
                done.append(gi)
        except InvalidState as e:
            # A value that needs a state buffer the library was created
            # without (momentum on an SGD made with momentum=0, as
            # OneCycleLR's cycle_momentum sets it; amsgrad; centered):
            # before anything happened to the state, create it again with
            # the groups' values, as torch creates state lazily.
            self._undo_pushes(done)
            if "state buffer" not in str(e) or not self._pristine():
                raise
            self._build()
            return
        except BaseException:
            self._undo_pushes(done)
            raise
        for gi, hp, raw, key in todo:
            self._pushed_one(gi, raw, key)

    def _undo_pushes(self, groups):
        for gi in groups:  # back to what the library had
            old = C.FoHparams.from_buffer_copy(self._pushed[gi])
            self._lib.fo_optimizer_set_hparams(self._handle, gi, ctypes.byref(old))

    def step(self, closure=None):
        """One fused step of every parameter; closure (optional) is called
        first with gradients enabled and its value returned.

        torch wraps every optimizer class's step in a profiler range and its
        step hooks, which costs several microseconds a call whether or not
        anything observes it (a third of a small model's step).  This class's
        step is marked as wrapped already (below the class), and goes
        through torch's wrapper only when something observes it: a profiler,
        or a step hook (the optimizer's own or a global one).  A subclass
        that overrides step is wrapped by torch as usual."""
        if type(self).step is FusedOptimizer.step and (
                _profiler_enabled() or _GLOBAL_STEP_PRE_HOOKS or _GLOBAL_STEP_POST_HOOKS
                or getattr(self, "_optimizer_step_pre_hooks", None)
                or getattr(self, "_optimizer_step_post_hooks", None)):
            # the arguments as given, as torch's wrapper passes them to hooks
            return _observed_step(self) if closure is None else _observed_step(self, closure)
        return self._step(closure)

    def _step(self, closure=None):
        self._live()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        skip = self._check_grads()
        self._push_hparams()
        kept = self._snapshot(skip) if skip else None
        self._call("fo_optimizer_step", _stream_of(self._device))
        if kept:
            self._restore(kept)
        return loss

    def zero_grad(self, set_to_none=True):
        """Zero the gradient buffer in place and point every p.grad back at
        its view.  set_to_none is accepted for torch's signature and has no
        effect: the gradient memory is the optimizer's and stays put."""
        self._live()
        self._flat.zero_()
        params = self._params()
        if self._grads_are_views(params):
            return
        for i, p in enumerate(params):
            v = self._view(i, p)
            if p.grad is not v:
                p.grad = v

    # ------------------------------------------------------------ reading
    @property
    def loss_scale(self):
        """The library's current loss scale: a one-element float32 tensor
        over its memory (device memory for CUDA parameters), updated by
        each step.  1 when loss scaling is off.  Reading its value
        (.item()) synchronizes; multiplying by it does not."""
        self._live()
        return self._loss_scale

    def scale_loss(self, loss):
        """loss times the current loss scale (no host synchronization)."""
        self._live()
        return loss * self._loss_scale[0]

    def info(self):
        """fusedopt.StepInfo: step count, skipped steps, loss scale, gradient
        norm... (synchronizes on CUDA)."""
        from .core import StepInfo
        out = C.FoStepInfo()
        self._call("fo_optimizer_get_info", ctypes.cast(ctypes.byref(out), ctypes.c_void_p))
        return StepInfo(out.step, out.skipped_steps, bool(out.last_step_skipped),
                        out.loss_scale, out.grad_norm, out.grad_coef, out.lr_factor,
                        out.growth_tracker)

    @property
    def step_count(self):
        """The number of steps applied (skipped ones not counted)."""
        return self._step_count_lib()

    def sync_master(self):
        """Copy the 16-bit parameters into the fp32 master weights, after
        writing new parameter values (model.load_state_dict, say)."""
        self._call("fo_optimizer_sync_master", _stream_of(self._device))

    # ------------------------------------------------------------ state dicts
    def _state_layout(self, group):
        """[(PyTorch's state name, library role)] of a parameter in group;
        role None for "step" and other scalars."""
        raise NotImplementedError

    def _has_step(self):
        return True

    def _scalar_state(self, name, step, gi):
        if name == "step":
            return torch.tensor(float(step), dtype=torch.float32)
        raise KeyError(name)

    def _export_state(self):
        return self._step_count_lib() > 0 or self._loaded_state

    def state_dict(self):
        """The state dict (below), through torch 2.x's state-dict hooks
        (register_state_dict_pre_hook / _post_hook; none in torch 1.x)."""
        for hook in _hooks(self, "_optimizer_state_dict_pre_hooks"):
            hook(self)
        state_dict = self._state_dict()
        for hook in _hooks(self, "_optimizer_state_dict_post_hooks"):
            result = hook(self, state_dict)
            if result is not None:
                state_dict = result
        return state_dict

    def load_state_dict(self, state_dict):
        """Load a state dict (below), through torch 2.x's load-state-dict
        hooks: a pre-hook gets a shallow copy and may return another."""
        if isinstance(state_dict, dict):
            state_dict = state_dict.copy()
        for hook in _hooks(self, "_optimizer_load_state_dict_pre_hooks"):
            result = hook(self, state_dict)
            if result is not None:
                state_dict = result
        self._load_state_dict(state_dict)
        for hook in _hooks(self, "_optimizer_load_state_dict_post_hooks"):
            hook(self)

    def _state_dict(self):
        """PyTorch's layout: {"state": {index: {name: tensor}}, "param_groups":
        [{hyper-parameters..., "params": [indices]}]}, state names as
        torch.optim's (step, exp_avg, exp_avg_sq, max_exp_avg_sq,
        momentum_buffer, sum, square_avg, grad_avg, mu_product), fp32
        tensors on the parameters' device; 16-bit parameters with master
        weights add "master" (the fp32 master copy)."""
        self._live()
        if self._device.type == "cuda":
            torch.cuda.current_stream(self._device).synchronize()
        step = self._step_count_lib()
        state, groups, index = {}, [], 0
        export = self._export_state()
        for gi, g in enumerate(self.param_groups):
            ids = []
            # the per-step scalars once per group (each may read the device)
            scalars = {name: self._scalar_state(name, step, gi) for name, role
                       in self._state_layout(g) if role is None} if export else {}
            for p in g["params"]:
                if export:
                    st = {}
                    for name, role in self._state_layout(g):
                        if role is None:
                            st[name] = scalars[name].clone()
                        else:
                            st[name] = self._state_view(index, role).clone().view(p.shape)
                    if self._dtype != torch.float32 and self._master_weights:
                        st["master"] = self._state_view(index, C.FO_ROLE_MASTER).clone() \
                            .view(p.shape)
                    state[index] = st
                ids.append(index)
                index += 1
            groups.append(dict({k: v for k, v in g.items() if k != "params"}, params=ids))
        out = {"state": state, "param_groups": groups}
        if self._scaler is not None:
            # torch's layout has no place for it (torch.amp.GradScaler has
            # its own state_dict); torch's load_state_dict ignores the key
            ss = self._scaler_state()
            out["fusedopt"] = {"loss_scale": float(ss.scale),
                               "growth_tracker": int(ss.growth_tracker),
                               "hysteresis_left": int(ss.hysteresis_left),
                               "skipped_steps": int(ss.skipped_steps)}
        return out

    def _scaler_state(self):
        out = C.FoScalerState()
        self._call("fo_optimizer_get_scaler_state", ctypes.byref(out))
        return out

    def _scaler_entry(self, state_dict):
        """The loss scaler's state a state dict carries ("fusedopt"), as a
        FoScalerState; None when it has none or this optimizer scales no
        loss.  Checked here as the library checks it
        (fo_optimizer_set_scaler_state), so that a load that must create
        the optimizer again fails before it does."""
        entry = state_dict.get("fusedopt")
        if entry is None or self._scaler is None:
            return None
        keys = ("loss_scale", "growth_tracker", "hysteresis_left", "skipped_steps")
        if not isinstance(entry, dict) or set(entry) != set(keys):
            raise ValueError("loaded state dict's 'fusedopt' entry must be a dict of %s"
                             % ", ".join(keys))
        scale = _as_float(entry["loss_scale"], "fusedopt.loss_scale")
        vals = {}
        for k in keys[1:]:
            v = entry[k]
            if isinstance(v, torch.Tensor) and v.numel() == 1:
                v = v.item()
            vals[k] = _check_int(v, "loaded state dict's fusedopt." + k, 64)
        opts = C.FoOptions()
        _library.check(self._lib.fo_options_default(ctypes.byref(opts)), "fo_options_default")
        interval = self._scaler.get("growth_interval", opts.loss_scaler.growth_interval)
        hysteresis = self._scaler.get("hysteresis", opts.loss_scaler.hysteresis)
        bad = []
        if not _FLT_MIN <= scale <= _FLT_MAX:  # NaN fails too
            bad.append("loss_scale = %r (a finite float32, at least 2^-126)" % scale)
        if not 0 <= vals["growth_tracker"] < interval:
            bad.append("growth_tracker = %d (in [0, growth_interval = %d))"
                       % (vals["growth_tracker"], interval))
        if not 1 <= vals["hysteresis_left"] <= hysteresis:
            bad.append("hysteresis_left = %d (in [1, hysteresis = %d])"
                       % (vals["hysteresis_left"], hysteresis))
        if not 0 <= vals["skipped_steps"] <= _FO_MAX_STEP:
            bad.append("skipped_steps = %d (in [0, 2^62])" % vals["skipped_steps"])
        if bad:
            raise ValueError("loaded state dict's fusedopt entry is out of range for this "
                             "optimizer's loss scaler: " + "; ".join(bad))
        ss = C.FoScalerState()
        ss.scale = scale
        ss.growth_tracker = vals["growth_tracker"]
        ss.hysteresis_left = vals["hysteresis_left"]
        ss.skipped_steps = vals["skipped_steps"]
        return ss

    def _load_state_dict(self, state_dict):
        """Load a state dict of PyTorch's layout (from this class or from the
        matching torch.optim optimizer) on the same parameters.  Everything
        is checked before anything changes: the groups and their sizes,
        every state tensor's name (another algorithm's state is refused)
        and shape, one step count, the hyper-parameters' ranges."""
        self._live()
        if not isinstance(state_dict, dict) or "state" not in state_dict \
                or "param_groups" not in state_dict:
            raise ValueError("not an optimizer state dict (no 'state' and 'param_groups')")
        saved_groups = state_dict["param_groups"]
        saved_state = state_dict["state"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups "
                             "(%d, this optimizer %d)" % (len(saved_groups),
                                                         len(self.param_groups)))
        ids, new_groups = [], []
        for gi, (g, sg) in enumerate(zip(self.param_groups, saved_groups)):
            if len(sg["params"]) != len(g["params"]):
                raise ValueError("loaded state dict contains a parameter group that doesn't "
                                 "match the size of optimizer's group (group %d: %d "
                                 "parameters saved, %d here)" % (gi, len(sg["params"]),
                                                                 len(g["params"])))
            foreign = (set(sg) & _all_hparam_keys()) - set(self._watched_keys)
            if foreign:
                raise ValueError("loaded param group %d has %s, which %s does not take: a "
                                 "state dict of another algorithm?"
                                 % (gi, ", ".join(sorted(foreign)), type(self).__name__))
            # every torch version's groups of this algorithm have these (but
            # maximize and decoupled_weight_decay, which came later)
            lacking = set(self._hparam_keys) - {"maximize", "decoupled_weight_decay"} - set(sg)
            if lacking:
                raise ValueError("loaded param group %d lacks %s, which %s's groups have: a "
                                 "state dict of another algorithm?"
                                 % (gi, ", ".join(sorted(lacking)), type(self).__name__))
            ids.extend(sg["params"])
            ng = dict({k: v for k, v in sg.items() if k != "params"}, params=g["params"])
            for k, v in g.items():  # keys the saved group lacks (another torch version)
                ng.setdefault(k, v)
            new_groups.append(ng)
        params = self._params()
        hps = [self._hparams_of(ng, "loaded param group %d" % gi)
               for gi, ng in enumerate(new_groups)]

        # The state: names, shapes, one step, one mu_product per group.
        writes, steps, present = [], set(), 0
        mus = [set() for _ in new_groups]
        index = 0
        for gi, ng in enumerate(new_groups):
            layout = self._state_layout(ng)
            for p in ng["params"]:
                sid = ids[index]
                st = saved_state.get(sid)
                if st is None:
                    st = saved_state.get(str(sid))
                if st:
                    present += 1
                    extra = {k for k, v in st.items() if v is not None} - \
                        {n for n, _ in layout} - {"master"}
                    if extra:
                        raise ValueError(
                            "loaded state of parameter %d holds %s, which %s does not keep "
                            "(it keeps %s): a state dict of another algorithm or settings?"
                            % (sid, ", ".join(sorted(extra)), type(self).__name__,
                               ", ".join(n for n, _ in layout) or "nothing"))
                    for name, role in layout:
                        if role is None:
                            if name == "step" and name in st:
                                steps.add(int(round(_as_float(st[name], "step"))))
                            elif name == "mu_product" and st.get(name) is not None:
                                mus[gi].add(_as_float(st[name], "mu_product"))
                            continue
                        t = st.get(name)
                        if t is None:
                            raise ValueError(
                                "loaded state of parameter %d has no %r (it holds %s): a "
                                "state dict of another algorithm or settings?"
                                % (sid, name, ", ".join(sorted(st)) or "nothing"))
                        writes.append((index, role, self._state_tensor(t, p, sid, name)))
                    if "master" in st and self._dtype != torch.float32 and self._master_weights:
                        writes.append((index, C.FO_ROLE_MASTER,
                                       self._state_tensor(st["master"], p, sid, "master")))
                index += 1
        if present not in (0, len(params)):
            raise ValueError("loaded state covers %d of %d parameters: fusedopt keeps one step "
                             "count for all of them (a state dict of another model?)"
                             % (present, len(params)))
        if len(steps) > 1:
            raise ValueError("loaded state has different step counts %s: fusedopt keeps one "
                             "for every parameter" % sorted(steps))
        if steps:
            step = steps.pop()
        else:
            step = 1 if present and not self._has_step() else 0
        if step < 0:
            raise ValueError("loaded step count %d is negative" % step)
        unused = set(saved_state) - set(ids) - {str(i) for i in ids}
        if unused:
            raise ValueError("loaded state holds parameter ids %s that no group lists"
                             % sorted(map(str, unused))[:10])

        if step > _FO_MAX_STEP:
            raise ValueError("loaded step count %d is larger than FO_MAX_STEP" % step)
        for gi, m in enumerate(mus):
            if len(m) > 1:
                raise ValueError("loaded param group %d has different mu_product values %s: "
                                 "fusedopt keeps one per group" % (gi, sorted(m)))
        mus = [m.pop() if m else None for m in mus]
        for gi, mu in enumerate(mus):
            if mu is not None and not 0.0 <= mu <= 1.0:
                raise ValueError("loaded param group %d's mu_product %r is not in [0, 1]"
                                 % (gi, mu))
        scaler = self._scaler_entry(state_dict)

        # Commit: hyper-parameters (rolled back on failure), or a new
        # optimizer (the old one kept on failure); then step, scaler,
        # mu_products and the state tensors, all checked and converted
        # above, so only the device can fail there.
        old, rebuilt = [], False
        kept = self._step_state()
        try:
            for gi, hp in enumerate(hps):
                cur = C.FoHparams()
                self._call("fo_optimizer_get_hparams", gi, ctypes.byref(cur))
                old.append(cur)
                self._call("fo_optimizer_set_hparams", gi, ctypes.byref(hp))
        except InvalidState as e:
            # Settings that need state buffers this optimizer was created
            # without (a state saved with amsgrad, momentum or centered):
            # the load replaces the whole state, so create the optimizer
            # again with them (the loss scaler's state carried over unless
            # the state dict has one), as torch creates state lazily.
            self._undo_hparams(old)
            old = []
            if "state buffer" not in str(e):
                raise
            self._build(new_groups)
            rebuilt = True
            if scaler is None:
                scaler = kept[1]
        except BaseException:
            self._undo_hparams(old)
            raise
        try:
            self._call("fo_optimizer_set_step", step)
            if scaler is not None:
                self._call("fo_optimizer_set_scaler_state", ctypes.byref(scaler))
            for gi, mu in enumerate(mus):
                if mu is not None:
                    self._call("fo_optimizer_set_mu_product", gi, mu)
            with torch.no_grad():
                if self._device.type == "cuda":
                    torch.cuda.current_stream(self._device).synchronize()
                for index in range(len(params)):
                    for name, role in self._all_roles():
                        try:
                            view = self._state_view(index, role)
                        except InvalidState:
                            continue  # a role this optimizer does not keep
                        view.zero_()
                self._init_state(params, new_groups)
                has_master = any(r == C.FO_ROLE_MASTER for _, r, _ in writes)
                if self._dtype != torch.float32 and self._master_weights and not has_master:
                    self.sync_master()
                for index, role, t in writes:
                    self._state_view(index, role).copy_(t)
                if self._device.type == "cuda":
                    torch.cuda.current_stream(self._device).synchronize()
        except BaseException:
            self._undo_hparams(old)
            if not rebuilt:
                self._set_step_state(kept)
            raise
        for g, ng in zip(self.param_groups, new_groups):
            g.clear()
            g.update(ng)
        self._pushed_all(hps)
        self._loaded_state = present > 0

    def _undo_hparams(self, old):
        for gi, cur in enumerate(old):
            self._lib.fo_optimizer_set_hparams(self._handle, gi, ctypes.byref(cur))

    def _step_state(self):
        """(step, scaler state, mu_products): what a load sets besides the
        hyper-parameters and the state tensors."""
        mus = []
        if self.algorithm == "nadam":
            for gi in range(len(self.param_groups)):
                out = ctypes.c_float()
                self._call("fo_optimizer_get_mu_product", gi, ctypes.byref(out))
                mus.append(out.value)
        return self._step_count_lib(), self._scaler_state(), mus

    def _set_step_state(self, kept):
        step, scaler, mus = kept
        self._lib.fo_optimizer_set_step(self._handle, step)
        self._lib.fo_optimizer_set_scaler_state(self._handle, ctypes.byref(scaler))
        for gi, mu in enumerate(mus):
            self._lib.fo_optimizer_set_mu_product(self._handle, gi, mu)

    def _state_tensor(self, t, p, sid, name):
        """A loaded state tensor checked and made what the copy into the
        library reads (flat fp32 on the optimizer's device), before
        anything changes: one that cannot be read (a meta or sparse
        tensor) is refused here, not half-way through the load."""
        self._check_state_tensor(t, p, sid, name)
        if t.layout != torch.strided:
            raise ValueError("loaded state %r of parameter %d is %s: a dense tensor is needed"
                             % (name, sid, t.layout))
        try:
            return t.detach().to(device=self._device, dtype=torch.float32).reshape(-1)
        except (RuntimeError, NotImplementedError) as e:
            raise ValueError("loaded state %r of parameter %d cannot be read onto %s: %s"
                             % (name, sid, self._device, e)) from None

    def _check_state_tensor(self, t, p, sid, name):
        if not isinstance(t, torch.Tensor):
            raise TypeError("loaded state %r of parameter %d is %s, not a tensor"
                            % (name, sid, type(t).__name__))
        if t.numel() != p.numel() or (t.dim() and tuple(t.shape) != tuple(p.shape)):
            raise ValueError("loaded state %r of parameter %d has shape %s, the parameter %s: "
                             "a state dict of another model?" % (name, sid, tuple(t.shape),
                                                                 tuple(p.shape)))
        if t.is_complex() or not t.is_floating_point():
            raise TypeError("loaded state %r of parameter %d is %s" % (name, sid, t.dtype))

    def _all_roles(self):
        return [("exp_avg", C.FO_ROLE_EXP_AVG), ("exp_avg_sq", C.FO_ROLE_EXP_AVG_SQ),
                ("max_exp_avg_sq", C.FO_ROLE_MAX_EXP_AVG_SQ)]

    def _init_state(self, params, groups=None):
        """Fresh-state values other than zero (AdaGrad's accumulator), from
        groups' values (default: param_groups)."""

    # ------------------------------------------------------------ checkpoints
    def save(self, path):
        """The library's safetensors checkpoint (atomic): parameters, state,
        hyper-parameters, step and loss-scaler state."""
        if self._device.type == "cuda":
            torch.cuda.current_stream(self._device).synchronize()
        self._push_hparams()  # the groups' current values are what is saved
        self._call("fo_optimizer_save", _c_path(path),
                   _stream_of(self._device))

    def load(self, path):
        """Restore a save(): the parameters (written in place), the state,
        every group's hyper-parameters (copied into param_groups) and the
        step count."""
        if self._device.type == "cuda":
            torch.cuda.current_stream(self._device).synchronize()
        self._call("fo_optimizer_load", _c_path(path),
                   _stream_of(self._device))
        for gi, g in enumerate(self.param_groups):
            hp = C.FoHparams()
            self._call("fo_optimizer_get_hparams", gi, ctypes.byref(hp))
            for key in self._hparam_keys:
                if key == "betas":
                    g["betas"] = (float(hp.beta1), float(hp.beta2))
                elif key in C.HPARAM_FLAGS:
                    g[key] = bool(getattr(hp, key))
                else:
                    g[key] = float(getattr(hp, key))
            self._pushed_one(gi, bytes(self._hparams_of(g, "param group %d" % gi)))
        self._loaded_state = True

    # ------------------------------------------------------------ lifetime
    def close(self):
        """Destroy the library's optimizer (also done on garbage collection).
        Raises InvalidState, changing nothing, while another thread is
        inside a call on it."""
        if getattr(self, "_guard", None) is None:  # __init__ failed before anything
            return
        handle = _take_handle(self)
        if handle is not None:
            _library.check(self._lib.fo_optimizer_destroy(handle), "fo_optimizer_destroy")

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __getstate__(self):
        raise TypeError("%s cannot be pickled or deep-copied (it holds the library's "
                        "optimizer): use state_dict() / load_state_dict() or save() / load()"
                        % type(self).__name__)

    def __repr__(self):
        return "fusedopt." + super().__repr__()


# ---------------------------------------------------------------- classes


class SGD(FusedOptimizer):
    """torch.optim.SGD over libfusedopt (state: momentum_buffer)."""
    algorithm = "sgd"
    _hparam_keys = ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize")

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0,
                 nesterov=False, *, maximize=False, foreach=None, differentiable=False,
                 fused=None, **options):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening,
                        weight_decay=weight_decay, nesterov=nesterov, maximize=maximize,
                        foreach=foreach, differentiable=differentiable, fused=fused)
        super().__init__(params, defaults, **options)

    def _state_layout(self, group):
        return [("momentum_buffer", C.FO_ROLE_EXP_AVG)] if group["momentum"] != 0 else []

    def _has_step(self):
        return False


def _unwrapped_step(self, closure=None):
    """The step itself, looked up on the instance (a subclass's _step)."""
    return self._step(closure)


def _profiled_step(self, closure=None):
    """torch 1.x's wrapper: the profiler's range only (no step hooks)."""
    with torch.autograd.profiler.record_function("Optimizer.step#%s.step"
                                                 % type(self).__name__):
        return self._step(closure)


# torch 2.x's own wrapper (profiler range, pre and post hooks, the
# profiler's _optimizer_step_code) around the unwrapped step
_observed_step = (torch.optim.Optimizer.profile_hook_step(_unwrapped_step)
                  if hasattr(torch.optim.Optimizer, "profile_hook_step") else _profiled_step)
# torch's Optimizer.__init__ wraps a class's step unless it is marked so
FusedOptimizer.step.hooked = True


class Adam(FusedOptimizer):
    """torch.optim.Adam over libfusedopt (state: step, exp_avg, exp_avg_sq,
    max_exp_avg_sq with amsgrad)."""
    algorithm = "adam"
    _hparam_keys = ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize")
    _default_wd = 0.0
    # torch 2.x's Adam(decoupled_weight_decay=True) is AdamW: the class
    # decides, and a group (or a loaded state dict) saying otherwise is refused
    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=None,
                 amsgrad=False, *, foreach=None, maximize=False, capturable=False,
                 differentiable=False, fused=None, decoupled_weight_decay=None, **options):
        if weight_decay is None:
            weight_decay = self._default_wd
        if decoupled_weight_decay is None:
            decoupled_weight_decay = self._decoupled
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        amsgrad=amsgrad, maximize=maximize, foreach=foreach,
                        capturable=capturable, differentiable=differentiable, fused=fused,
                        decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults, **options)

    def _state_layout(self, group):
        out = [("step", None), ("exp_avg", C.FO_ROLE_EXP_AVG),
               ("exp_avg_sq", C.FO_ROLE_EXP_AVG_SQ)]
        if group.get("amsgrad"):
            out.append(("max_exp_avg_sq", C.FO_ROLE_MAX_EXP_AVG_SQ))
        return out


class AdamW(Adam):
    """torch.optim.AdamW over libfusedopt (decoupled weight decay, default
    1e-2)."""
    algorithm = "adamw"
    _default_wd = 1e-2
    _decoupled = True


class Lion(FusedOptimizer):
    """Lion (Chen et al. 2023; torch has none): lr 1e-4, betas (0.9, 0.99);
    state exp_avg, as lion-pytorch names it."""
    algorithm = "lion"
    _hparam_keys = ("lr", "betas", "weight_decay", "maximize")

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, *,
                 maximize=False, **options):
        defaults = dict(lr=lr, betas=betas, weight_decay=weight_decay, maximize=maximize)
        super().__init__(params, defaults, **options)

    def _state_layout(self, group):
        return [("exp_avg", C.FO_ROLE_EXP_AVG)]

    def _has_step(self):
        return False


class Adagrad(FusedOptimizer):
    """torch.optim.Adagrad over libfusedopt (state: step, sum)."""
    algorithm = "adagrad"
    _hparam_keys = ("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps",
                    "maximize")

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0,
                 initial_accumulator_value=0, eps=1e-10, foreach=None, *, maximize=False,
                 differentiable=False, fused=None, **options):
        defaults = dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, eps=eps,
                        foreach=foreach, maximize=maximize, differentiable=differentiable,
                        fused=fused)
        super().__init__(params, defaults, **options)

    def _state_layout(self, group):
        return [("step", None), ("sum", C.FO_ROLE_EXP_AVG_SQ)]

    def _export_state(self):
        return True  # torch.optim.Adagrad creates its state in __init__

    def _all_roles(self):
        return [("sum", C.FO_ROLE_EXP_AVG_SQ)]

    def _init_state(self, params, groups=None):
        index = 0
        for g in groups if groups is not None else self.param_groups:
            for _ in g["params"]:
                self._state_view(index, C.FO_ROLE_EXP_AVG_SQ).fill_(
                    float(g["initial_accumulator_value"]))
                index += 1


class RMSprop(FusedOptimizer):
    """torch.optim.RMSprop over libfusedopt (state: step, square_avg,
    momentum_buffer with momentum, grad_avg when centered)."""
    algorithm = "rmsprop"
    _hparam_keys = ("lr", "alpha", "eps", "weight_decay", "momentum", "centered", "maximize")

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0,
                 centered=False, capturable=False, foreach=None, maximize=False,
                 differentiable=False, **options):
        defaults = dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                        momentum=momentum, centered=centered, capturable=capturable,
                        foreach=foreach, maximize=maximize, differentiable=differentiable)
        super().__init__(params, defaults, **options)

    def _state_layout(self, group):
        out = [("step", None), ("square_avg", C.FO_ROLE_EXP_AVG_SQ)]
        if group.get("momentum", 0) > 0:
            out.append(("momentum_buffer", C.FO_ROLE_EXP_AVG))
        if group.get("centered"):
            out.append(("grad_avg", C.FO_ROLE_MAX_EXP_AVG_SQ))
        return out


class NAdam(FusedOptimizer):
    """torch.optim.NAdam over libfusedopt (state: step, mu_product,
    exp_avg, exp_avg_sq; mu_product is one per group, the library's)."""
    algorithm = "nadam"
    _hparam_keys = ("lr", "betas", "eps", "weight_decay", "momentum_decay",
                    "decoupled_weight_decay", "maximize")

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 momentum_decay=4e-3, decoupled_weight_decay=False, *, foreach=None,
                 maximize=False, capturable=False, differentiable=False, **options):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        momentum_decay=momentum_decay,
                        decoupled_weight_decay=decoupled_weight_decay, foreach=foreach,
                        maximize=maximize, capturable=capturable,
                        differentiable=differentiable)
        super().__init__(params, defaults, **options)

    def _state_layout(self, group):
        return [("step", None), ("mu_product", None), ("exp_avg", C.FO_ROLE_EXP_AVG),
                ("exp_avg_sq", C.FO_ROLE_EXP_AVG_SQ)]

    def _scalar_state(self, name, step, gi):
        if name == "mu_product":
            # the library's running product (a beta1 changed between steps
            # is in it), one per group
            out = ctypes.c_float()
            self._call("fo_optimizer_get_mu_product", gi, ctypes.byref(out))
            return torch.tensor(out.value, dtype=torch.float32)
        return super()._scalar_state(name, step, gi)


def _hooks(optimizer, name):
    """The hooks torch 2.x keeps in optimizer.<name> (an OrderedDict), in
    order; none in torch 1.x."""
    hooks = getattr(optimizer, name, None)
    return list(hooks.values()) if hooks else []


def _all_hparam_keys():
    """Every hyper-parameter key of every fusedopt class: a loaded group
    with one that this class does not take is another algorithm's."""
    keys = set()
    stack = [FusedOptimizer]
    while stack:
        cls = stack.pop()
        keys.update(cls._hparam_keys)
        stack.extend(cls.__subclasses__())
    return keys


class LAMB(FusedOptimizer):
    """LAMB (You et al. 2020; torch has none): state step, exp_avg,
    exp_avg_sq.  layout_adaptation=False excludes a group from the trust
    ratio (biases and norms)."""
    algorithm = "lamb"
    _hparam_keys = ("lr", "betas", "eps", "weight_decay", "layer_adaptation", "maximize")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=1e-2, *,
                 layer_adaptation=True, maximize=False, **options):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        layer_adaptation=layer_adaptation, maximize=maximize)
        super().__init__(params, defaults, **options)

    def _state_layout(self, group):
        return [("step", None), ("exp_avg", C.FO_ROLE_EXP_AVG),
                ("exp_avg_sq", C.FO_ROLE_EXP_AVG_SQ)]


class LARS(FusedOptimizer):
    """LARS (You et al. 2017; torch has none): SGD momentum with the local
    rate trust_coef * ||w|| / (||g|| + wd ||w||); state step,
    momentum_buffer."""
    algorithm = "lars"
    _hparam_keys = ("lr", "momentum", "dampening", "weight_decay", "nesterov", "trust_coef",
                    "layer_adaptation", "maximize")

    def __init__(self, params, lr=1.0, momentum=0.9, dampening=0, weight_decay=0,
                 nesterov=False, *, trust_coef=1e-3, layer_adaptation=True, maximize=False,
                 **options):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening,
                        weight_decay=weight_decay, nesterov=nesterov, trust_coef=trust_coef,
                        layer_adaptation=layer_adaptation, maximize=maximize)
        super().__init__(params, defaults, **options)

    def _state_layout(self, group):
        out = [("step", None)]
        if group["momentum"] != 0:
            out.append(("momentum_buffer", C.FO_ROLE_EXP_AVG))
        return out
