/*
 * emu.h -- the emulated device of the test suite (tests/emu, docs/design.md,
 * "The emulated device"): what its CUDA runtime (emu_runtime.cpp) offers its
 * kernel launchers (emu_kernels.cpp).
 *
 * A launcher does not run its kernel: it hands the runtime a closure that
 * holds the launch's arguments by value, and the runtime runs it in stream
 * order when something waits for the stream -- or keeps it in the graph a
 * capture is building.  So the host code under test sees a device that is
 * asynchronous, as a real one is.
 */
#ifndef FO_TEST_EMU_H
#define FO_TEST_EMU_H

#include <functional>

/* Enqueue fn on stream (a cudaStream_t, NULL for the legacy stream), or add
 * it to the graph being captured there; the launch's cudaError_t.  C
 * linkage: the emulated NCCL (emu_nccl.cpp, a shared library) finds it in
 * the test program, which exports it. */
extern "C" int fo_emu_enqueue(void *stream, std::function<void()> fn);

#endif /* FO_TEST_EMU_H */
