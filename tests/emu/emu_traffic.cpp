/*
 * emu_traffic.cpp -- the bytes the emulated kernels move: every element
 * load and store of the block work reports here (kernels/vec_io.cuh's
 * FO_BW_TRACE hook, which this target defines as fo_emu_trace), and is
 * counted between fo_emu_traffic_start() and fo_emu_traffic_stop()
 * (test_emu_traffic.c holds a step's traffic to the benchmark's bytes
 * model).  Plan records, step state and norm partials are not element
 * accesses and are not counted: per step they are a few bytes per block,
 * not per parameter.
 */
#include <atomic>
#include <cstddef>
#include <cstdint>

namespace {

/* Off by default: the rest of the emulated tier pays one relaxed load per
 * access.  Atomic because threads that stand for ranks run their devices'
 * work at the same time. */
std::atomic<bool> counting{false};
std::atomic<uint64_t> moved[2]; /* loaded, stored */

}  // namespace

void fo_emu_trace(const void *, size_t bytes, int store) {
  if (counting.load(std::memory_order_relaxed))
    moved[store ? 1 : 0].fetch_add(bytes, std::memory_order_relaxed);
}

extern "C" void fo_emu_traffic_start(void) {
  moved[0].store(0);
  moved[1].store(0);
  counting.store(true);
}

/* Stop counting; the bytes loaded and stored since the start. */
extern "C" void fo_emu_traffic_stop(uint64_t *loaded, uint64_t *stored) {
  counting.store(false);
  *loaded = moved[0].load();
  *stored = moved[1].load();
}
