/*
 * emu_test_kernel.cpp -- a kernel for test_emu_runtime.c, which is C: a
 * launch through the emulated device's launcher (emu.h) that writes one
 * byte of device memory.
 */
#include "emu.h"

extern "C" int emu_test_write(void *stream, unsigned char *p, unsigned char value) {
  return fo_emu_launch(stream, [p, value]() { *p = value; });
}
