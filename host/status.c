/* status.c -- status and algorithm strings, the thread-local last error, the
 * version. */
#include <stdarg.h>
#include <stdio.h>

#include "internal.h"

#define FO_STR2(x) #x
#define FO_STR(x) FO_STR2(x)

/* The only mutable state outside an optimizer: one message per thread. */
static _Thread_local char fo_last_error_buf[512];

unsigned fo_version_number(void) {
  return FO_VERSION_NUMBER;
}

const char *fo_version_string(void) {
  return FO_STR(FO_VERSION_MAJOR) "." FO_STR(FO_VERSION_MINOR) "." FO_STR(FO_VERSION_PATCH);
}

const char *fo_status_string(fo_status status) {
  switch (status) {
    case FO_SUCCESS: return "success";
    case FO_ERR_NULL_POINTER: return "null pointer";
    case FO_ERR_INVALID_ARGUMENT: return "invalid argument";
    case FO_ERR_UNSUPPORTED: return "unsupported combination";
    case FO_ERR_OVERLAP: return "overlapping buffers";
    case FO_ERR_INVALID_STATE: return "invalid state";
    case FO_ERR_OUT_OF_MEMORY: return "out of memory";
    case FO_ERR_NO_DEVICE: return "no usable CUDA device";
    case FO_ERR_BAD_POINTER: return "pointer in the wrong memory";
    case FO_ERR_CUDA: return "CUDA error";
    case FO_ERR_COMM: return "communicator error";
    case FO_ERR_IO: return "I/O error";
    case FO_ERR_CHECKPOINT: return "bad checkpoint";
    case FO_ERR_NOT_IMPLEMENTED: return "not implemented";
    case FO_ERR_INTERNAL: return "internal error";
    case FO_STATUS_COUNT: break;
  }
  return "unknown status";
}

const char *fo_last_error(void) {
  return fo_last_error_buf;
}

fo_status fo_fail(fo_status status, const char *func, const char *fmt, ...) {
  int n = snprintf(fo_last_error_buf, sizeof fo_last_error_buf, "%s: ", func);
  if (n < 0 || (size_t)n >= sizeof fo_last_error_buf) return status;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(fo_last_error_buf + n, sizeof fo_last_error_buf - (size_t)n, fmt, ap);
  va_end(ap);
  return status;
}
