"""Exceptions: one class per fo_status, under FusedoptError, and the
ImportError-derived ones raised when the library cannot be loaded."""


class LibraryNotFoundError(ImportError):
    """No libfusedopt could be loaded; the message lists every path tried
    and why each failed."""


class VersionMismatchError(ImportError):
    """A libfusedopt was found but its MAJOR.MINOR is not the package's."""


class LayoutMismatchError(ImportError):
    """A ctypes mirror's size or layout differs from the loaded library's."""


class FusedoptError(Exception):
    """A library call returned a status other than FO_SUCCESS.

    Attributes: status (the fo_status value), status_name (its
    fo_status_string), function (the C function called) and message (the
    library's fo_last_error() detail)."""

    def __init__(self, status, status_name, function, message):
        self.status = status
        self.status_name = status_name
        self.function = function
        self.message = message
        super().__init__("%s failed: %s (%d): %s" % (function, status_name, status, message))

    def __reduce__(self):
        # args holds only the formatted message: rebuild from the fields,
        # so that an error pickles (a worker process's reaches its parent)
        # and copies
        return (type(self), (self.status, self.status_name, self.function, self.message))


class NullPointer(FusedoptError):
    """FO_ERR_NULL_POINTER."""


class InvalidArgument(FusedoptError, ValueError):
    """FO_ERR_INVALID_ARGUMENT: an argument out of its range."""


class Unsupported(FusedoptError):
    """FO_ERR_UNSUPPORTED: valid arguments the library does not combine."""


class Overlap(FusedoptError, ValueError):
    """FO_ERR_OVERLAP: buffers that must be distinct overlap."""


class InvalidState(FusedoptError):
    """FO_ERR_INVALID_STATE: the call does not fit the optimizer's state."""


class OutOfMemory(FusedoptError, MemoryError):
    """FO_ERR_OUT_OF_MEMORY."""


class NoDevice(FusedoptError):
    """FO_ERR_NO_DEVICE: no usable CUDA device, or a build without CUDA."""


class BadPointer(FusedoptError):
    """FO_ERR_BAD_POINTER: a buffer in the wrong memory."""


class CudaError(FusedoptError):
    """FO_ERR_CUDA."""


class CommError(FusedoptError):
    """FO_ERR_COMM."""


class IOFailure(FusedoptError):
    """FO_ERR_IO: reading or writing a file failed."""


class CheckpointError(FusedoptError):
    """FO_ERR_CHECKPOINT: a malformed, corrupt or unfitting checkpoint."""


class NotImplementedByLibrary(FusedoptError):
    """FO_ERR_NOT_IMPLEMENTED: declared but not built in this version."""


class InternalError(FusedoptError):
    """FO_ERR_INTERNAL: a bug in the library."""


# fo_status value -> class (include/fusedopt.h section 2).
STATUS_CLASSES = {
    1: NullPointer,
    2: InvalidArgument,
    3: Unsupported,
    4: Overlap,
    5: InvalidState,
    6: OutOfMemory,
    7: NoDevice,
    8: BadPointer,
    9: CudaError,
    10: CommError,
    11: IOFailure,
    12: CheckpointError,
    13: NotImplementedByLibrary,
    14: InternalError,
}


def error_for(status, status_name, function, message):
    """The exception for a failed call (FusedoptError for an unknown status)."""
    cls = STATUS_CLASSES.get(status, FusedoptError)
    return cls(status, status_name, function, message)
