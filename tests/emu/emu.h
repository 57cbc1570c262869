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

#include <cstdint>
#include <functional>

/* Launch a kernel: enqueue fn on stream (a cudaStream_t, NULL for the
 * current device's legacy stream), which must be the current device's, or
 * add it to the graph being captured there; the launch's cudaError_t.  fn
 * may touch the memory of the stream's device only. */
extern "C" int fo_emu_launch(void *stream, std::function<void()> fn);

/* For the emulated NCCL (emu_nccl.cpp, a shared library, which finds these
 * in the test program that exports them): enqueue fn, which may touch any
 * device's memory, on stream, on any device; *seq (when not NULL) its place
 * in the queue, 0 when it went into a graph or failed.  The stream a
 * handle names now (NULL: the current device's legacy stream;
 * cudaStreamPerThread: the calling thread's own stream of that device),
 * which names itself whatever device and thread are current later, and
 * its device; NULL when it names none.  Run stream's work before seq, with what that work
 * waits for (from a collective's fn: another rank's work before its
 * part). */
extern "C" int fo_emu_enqueue(void *stream, std::function<void()> fn, uint64_t *seq);
extern "C" void *fo_emu_stream(void *stream, int *device);
extern "C" void fo_emu_run_before(void *stream, uint64_t seq);

#endif /* FO_TEST_EMU_H */
