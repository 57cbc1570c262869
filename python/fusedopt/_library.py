"""Finding and loading libfusedopt, checking its version and the ctypes
mirrors' layout against it, and turning its statuses into exceptions.

Search order (docs/python.md):
  1. FUSEDOPT_LIBRARY: a file, or a directory holding libfusedopt.so*.
     When set it is the only candidate: a library the user named and that
     fails to load is an error, never silently replaced by another one.
  2. libfusedopt.so* next to the package (inside the fusedopt directory).
  3. The install prefixes: sys.prefix/lib, sys.base_prefix/lib,
     /usr/local/lib, /usr/lib (and lib64, and the multiarch directory).
  4. The dynamic loader's own search: ctypes.util.find_library, then the
     sonames libfusedopt.so.MAJOR.MINOR and libfusedopt.so.
A candidate whose version is not the package's MAJOR.MINOR is skipped
(the error names both versions when no other candidate loads).
"""

import ctypes
import ctypes.util
import glob
import os
import sys
import sysconfig

from . import _ctypes as C
from . import _version
from .errors import (LayoutMismatchError, LibraryNotFoundError, VersionMismatchError,
                     error_for)

ENV_VAR = "FUSEDOPT_LIBRARY"
_lib = None


def package_major_minor(version=None):
    """(MAJOR, MINOR) of a "MAJOR.MINOR.PATCH" version string (the
    package's by default)."""
    version = _version.__version__ if version is None else version
    parts = version.split(".")
    return int(parts[0]), int(parts[1])


def _soname():
    major, minor = package_major_minor()
    return "libfusedopt.so.%d.%d" % (major, minor)


def _in_dir(directory):
    """Candidate files in a directory: the soname first, then libfusedopt.so,
    then any other libfusedopt.so.* (a full version, say)."""
    names = [_soname(), "libfusedopt.so"]
    found = [os.path.join(directory, n) for n in names]
    for path in sorted(glob.glob(os.path.join(directory, "libfusedopt.so.*"))):
        if path not in found:
            found.append(path)
    return found


def prefix_dirs():
    """The install-prefix directories searched (step 3), without repeats."""
    dirs = []
    prefixes = [sys.prefix, getattr(sys, "base_prefix", sys.prefix), "/usr/local", "/usr"]
    multiarch = sysconfig.get_config_var("MULTIARCH")
    for prefix in prefixes:
        for sub in ("lib", "lib64") + (("lib/" + multiarch,) if multiarch else ()):
            d = os.path.join(prefix, sub)
            if d not in dirs:
                dirs.append(d)
    return dirs


def candidates(environ=None, package_dir=None, dirs=None):
    """The ordered list of (kind, path): kind "file" for a path to open,
    "loader" for a name handed to the dynamic loader's search."""
    environ = os.environ if environ is None else environ
    explicit = environ.get(ENV_VAR)
    if explicit:
        # a name without a slash would go to the loader's search, not to
        # the file the existence check found in the working directory
        explicit = os.path.abspath(explicit)
        if os.path.isdir(explicit):
            return [("file", p) for p in _in_dir(explicit)]
        return [("file", explicit)]
    package_dir = os.path.dirname(os.path.abspath(__file__)) if package_dir is None else package_dir
    dirs = prefix_dirs() if dirs is None else dirs
    out = [("file", p) for p in _in_dir(package_dir)]
    for d in dirs:
        out.extend(("file", p) for p in _in_dir(d))
    found = ctypes.util.find_library("fusedopt")
    if found:
        out.append(("loader", found))
    out.append(("loader", _soname()))
    out.append(("loader", "libfusedopt.so"))
    return out


def check_version(lib, package_version=None):
    """Raise VersionMismatchError unless the library's MAJOR.MINOR is the
    package's."""
    package_version = _version.__version__ if package_version is None else package_version
    number = lib.fo_version_number()
    lib_major, lib_minor = number // 10000, (number // 100) % 100
    if (lib_major, lib_minor) != package_major_minor(package_version):
        raise VersionMismatchError(
            "libfusedopt %s (fo_version_number %d) does not match the fusedopt package %s: "
            "the package needs a library of version %d.%d.x" %
            (lib.fo_version_string().decode(), number, package_version,
             *package_major_minor(package_version)))


def _open(path):
    """Load one candidate: returns the CDLL with prototypes set, or raises
    OSError / AttributeError / VersionMismatchError."""
    lib = ctypes.CDLL(path)
    try:
        lib.fo_version_number
    except AttributeError:
        raise AttributeError("not a fusedopt library (no symbol fo_version_number)") from None
    lib.fo_version_number.restype = ctypes.c_uint
    lib.fo_version_number.argtypes = []
    lib.fo_version_string.restype = ctypes.c_char_p
    lib.fo_version_string.argtypes = []
    check_version(lib)
    C.declare(lib)
    return lib


def find_and_load(environ=None, package_dir=None, dirs=None):
    """Search the candidates in order and return the first library that
    loads and has the package's version, without caching it.  Raises
    LibraryNotFoundError (or VersionMismatchError when the only libraries
    found had another version) listing every path tried and why it failed."""
    environ = os.environ if environ is None else environ
    tried = []
    mismatch = False
    for kind, path in candidates(environ, package_dir, dirs):
        if kind == "file" and not os.path.exists(path):
            tried.append((path, "no such file"))
            continue
        try:
            return _open(path)
        except VersionMismatchError as e:
            mismatch = True
            tried.append((path, str(e)))
        except (OSError, AttributeError) as e:
            tried.append((path, str(e)))
    lines = ["  %s: %s" % (p, why) for p, why in tried]
    where = ("%s=%s" % (ENV_VAR, environ[ENV_VAR]) if environ.get(ENV_VAR)
             else "the package directory, the install prefixes and the loader's path")
    head = ("no libfusedopt with the package's version %s could be loaded from %s"
            % (_version.__version__, where))
    advice = ("Build and install the C library (cmake --install), or set %s to the path "
              "of libfusedopt.so." % ENV_VAR)
    cls = VersionMismatchError if mismatch else LibraryNotFoundError
    raise cls(head + "; tried:\n" + "\n".join(lines) + "\n" + advice)


def _extent(fill, call, capacity=4096):
    """Fill a buffer of capacity bytes with fill, let call write into it, and
    return one past the last byte that no longer holds fill."""
    buf = (ctypes.c_ubyte * capacity)(*([fill] * capacity))
    call(ctypes.cast(buf, ctypes.c_void_p))
    last = 0
    for i in range(capacity):
        if buf[i] != fill:
            last = i + 1
    return last, bytes(buf)


def _written_size(call):
    """How many bytes call writes at most (two fill patterns, so a field
    that happens to hold one of them is still seen)."""
    a, _ = _extent(0xAB, call)
    b, _ = _extent(0x5C, call)
    return max(a, b)


def check_layouts(lib):
    """Compare every mirror with the library: struct_size where the struct
    has one (filled through a 4 KiB buffer, so a too-small mirror is never
    overrun), the extent the library writes where it has none, and the
    default values at their offsets.  Raises LayoutMismatchError."""
    problems = []

    def check_struct_size(name, cls, call):
        _, raw = _extent(0, lambda p: _checked(lib, call(p), name))
        lib_size = ctypes.c_size_t.from_buffer_copy(raw[:ctypes.sizeof(ctypes.c_size_t)]).value
        if lib_size != ctypes.sizeof(cls):
            problems.append("%s: the library's struct_size is %d, the mirror %s is %d bytes"
                            % (name, lib_size, cls.__name__, ctypes.sizeof(cls)))
            return None
        return cls.from_buffer_copy(raw[:ctypes.sizeof(cls)])

    opts = check_struct_size("fo_options_default", C.FoOptions, lib.fo_options_default)
    hp = check_struct_size("fo_hparams_default", C.FoHparams,
                           lambda p: lib.fo_hparams_default(2, p))  # FO_ALG_ADAMW
    check_struct_size("fo_dp_options_default", C.FoDpOptions, lib.fo_dp_options_default)

    # Default values at the mirror's offsets (header: fo_options, fo_hparams).
    if opts is not None:
        ls, sc = opts.loss_scaler, opts.schedule
        if not (opts.algorithm == 2 and opts.executor == 0 and opts.master_weights == 1
                and ls.init_scale == 65536.0 and ls.growth_factor == 2.0
                and ls.backoff_factor == 0.5 and ls.growth_interval == 2000
                and ls.hysteresis == 1 and sc.kind == 0 and sc.period_mult == 1
                and abs(sc.gamma - 0.1) < 1e-7 and list(opts.reserved) == [0] * 4):
            problems.append("fo_options: the defaults read through the mirror are not the "
                            "header's (a field is misplaced)")
    if hp is not None:
        if not (abs(hp.lr - 1e-3) < 1e-9 and abs(hp.weight_decay - 1e-2) < 1e-9
                and abs(hp.beta1 - 0.9) < 1e-7 and abs(hp.beta2 - 0.999) < 1e-7
                and abs(hp.eps - 1e-8) < 1e-14 and hp.nesterov == 0 and hp.amsgrad == 0
                and abs(hp.alpha - 0.99) < 1e-7 and abs(hp.momentum_decay - 4e-3) < 1e-9
                and abs(hp.trust_coef - 1e-3) < 1e-9 and hp.layer_adaptation == 1
                and list(hp.reserved) == [0] * 4):
            problems.append("fo_hparams: AdamW's defaults read through the mirror are not "
                            "the header's (a field is misplaced)")

    # fo_tensor_desc, fo_step_info and fo_scaler_state have no struct_size:
    # a one-tensor optimizer must report our buffers back at the right
    # index, fo_optimizer_get_info must write exactly sizeof(FoStepInfo)
    # bytes and fo_optimizer_get_scaler_state sizeof(FoScalerState), the
    # fresh optimizer's values at the mirror's offsets.
    if opts is not None and hp is not None:
        opts.num_threads = 1
        param = (ctypes.c_float * 2)()
        grad = (ctypes.c_float * 2)()
        descs = (C.FoTensorDesc * 1)()
        descs[0].numel = 2
        descs[0].group = 0
        descs[0].param = ctypes.addressof(param)
        descs[0].grad = ctypes.addressof(grad)
        descs[0].name = b"probe"
        handle = C.fo_optimizer_p()
        _checked(lib, lib.fo_optimizer_create(ctypes.byref(handle), ctypes.byref(opts),
                                              ctypes.byref(hp), 1, descs, 1),
                 "fo_optimizer_create")
        try:
            got_p, got_g = ctypes.c_void_p(), ctypes.c_void_p()
            _checked(lib, lib.fo_optimizer_param_ptr(handle, 0, ctypes.byref(got_p)),
                     "fo_optimizer_param_ptr")
            _checked(lib, lib.fo_optimizer_grad_ptr(handle, 0, ctypes.byref(got_g)),
                     "fo_optimizer_grad_ptr")
            if (got_p.value, got_g.value) != (ctypes.addressof(param), ctypes.addressof(grad)):
                problems.append("fo_tensor_desc: the library read other param/grad pointers "
                                "than the mirror wrote")
            size = _written_size(lambda p: _checked(lib, lib.fo_optimizer_get_info(handle, p),
                                                    "fo_optimizer_get_info"))
            if size != ctypes.sizeof(C.FoStepInfo):
                problems.append("fo_step_info: the library writes %d bytes, the mirror "
                                "FoStepInfo is %d" % (size, ctypes.sizeof(C.FoStepInfo)))
            size = _written_size(lambda p: _checked(
                lib, lib.fo_optimizer_get_scaler_state(handle, p),
                "fo_optimizer_get_scaler_state"))
            if size != ctypes.sizeof(C.FoScalerState):
                problems.append("fo_scaler_state: the library writes %d bytes, the mirror "
                                "FoScalerState is %d" % (size, ctypes.sizeof(C.FoScalerState)))
            else:
                ss = C.FoScalerState()
                _checked(lib, lib.fo_optimizer_get_scaler_state(handle, ctypes.byref(ss)),
                         "fo_optimizer_get_scaler_state")
                # loss scaling off (the defaults): scale 1, hysteresis 1
                if not (ss.skipped_steps == 0 and ss.scale == 1.0 and ss.growth_tracker == 0
                        and ss.hysteresis_left == opts.loss_scaler.hysteresis):
                    problems.append("fo_scaler_state: a fresh optimizer's state read through "
                                    "the mirror is not the header's (a field is misplaced)")
        finally:
            lib.fo_optimizer_destroy(handle)
    if problems:
        raise LayoutMismatchError("the fusedopt package's ctypes mirrors do not match "
                                  "libfusedopt %s: %s" % (lib.fo_version_string().decode(),
                                                          "; ".join(problems)))


def _checked(lib, status, function):
    if status != C.FO_SUCCESS:
        raise error_for(status, lib.fo_status_string(status).decode(), function,
                        lib.fo_last_error().decode("utf-8", "replace"))
    return status


def load():
    """The library, loaded, version-checked and layout-checked once per
    process."""
    global _lib
    if _lib is None:
        lib = find_and_load()
        check_layouts(lib)
        _lib = lib
    return _lib


def check(status, function):
    """Raise the FusedoptError subclass for a failed call of function."""
    if status != C.FO_SUCCESS:
        lib = load()
        raise error_for(status, lib.fo_status_string(status).decode(), function,
                        lib.fo_last_error().decode("utf-8", "replace"))
