"""fusedopt: fused optimizer steps from Python, over libfusedopt (ctypes).

Importing the package loads the library (FUSEDOPT_LIBRARY, next to the
package, the install prefix, the loader's path), refuses one of another
MAJOR.MINOR and checks the ctypes mirrors against it.  See docs/python.md.
"""

from ._version import __version__
from . import _library
from .errors import (BadPointer, CheckpointError, CommError, CudaError, FusedoptError,
                     InternalError, InvalidArgument, InvalidState, IOFailure,
                     LayoutMismatchError, LibraryNotFoundError, NoDevice,
                     NotImplementedByLibrary, NullPointer, OutOfMemory, Overlap, Unsupported,
                     VersionMismatchError)

_library.load()

from .core import Optimizer, StepInfo, algorithms, default_hparams  # noqa: E402


def library_version():
    """The loaded library's fo_version_string() ("0.4.0")."""
    return _library.load().fo_version_string().decode()


def library_path():
    """The path of the loaded libfusedopt."""
    return _library.load()._name


__all__ = ["__version__", "Optimizer", "StepInfo", "algorithms", "default_hparams",
           "library_version", "library_path", "FusedoptError", "NullPointer",
           "InvalidArgument", "Unsupported", "Overlap", "InvalidState", "OutOfMemory",
           "NoDevice", "BadPointer", "CudaError", "CommError", "IOFailure", "CheckpointError",
           "NotImplementedByLibrary", "InternalError", "LibraryNotFoundError",
           "VersionMismatchError", "LayoutMismatchError"]
