/*
 * emu_memory.cpp -- the emulated devices' memory (docs/design.md, "The
 * emulated device"): allocations the host cannot touch, opened per device
 * while work runs, and the runtime's allocation, copy and memset calls.
 * emu_runtime.cpp has the queue that runs the work; emu_device.h the
 * state they share.
 */
#include <cuda_runtime_api.h>
#include <sys/mman.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#else
#define ASAN_POISON_MEMORY_REGION(p, n) ((void)(p), (void)(n))
#define ASAN_UNPOISON_MEMORY_REGION(p, n) ((void)(p), (void)(n))
#endif

#include <cstdlib>
#include <cstring>

#include "emu_device.h"

namespace fo_emu {

/* -------------------------------------------------------- host access */

static size_t page_size() {
  static const size_t page = (size_t)sysconf(_SC_PAGESIZE);
  return page;
}

size_t mapped_bytes(size_t bytes) {
  return ((bytes ? bytes : 1) + page_size() - 1) / page_size() * page_size();
}

static void protect(uintptr_t lo, uintptr_t hi, int prot) {
  if (mprotect((void *)lo, hi - lo, prot) != 0) abort();
}

/* An allocation's pages: from the page holding its first byte, whole. */
static void protect_alloc(uintptr_t start, size_t bytes, int prot) {
  const uintptr_t lo = start / page_size() * page_size();
  protect(lo, lo + mapped_bytes(bytes), prot);
}

/* The allocations of the devices in mask, opened or closed (a device
 * without memory in use costs nothing: most programs use one). */
static void set_access(unsigned mask, int prot) {
  for (int i = 0; i < EMU_DEVICES; i++)
    if (!dev().used[i]) mask &= ~(1u << i);
  if (!mask) return;
  for (const auto &a : dev().allocs)
    if (mask & (1u << a.second.home)) protect_alloc(a.first, a.second.bytes, prot);
}

void reach(unsigned mask) {
  Device &d = dev();
  if (d.opened == mask) return;
  set_access(d.opened & ~mask, PROT_NONE);
  set_access(mask & ~d.opened, PROT_READ | PROT_WRITE);
  d.opened = mask;
}

/* Between two guard pages that are never opened, and ending as near the
 * second as CUDA's 256-byte alignment allows, so that a kernel (the block
 * work run on the host) reading or writing past either end faults; under
 * AddressSanitizer the slack beside it is poisoned too, so it reports any
 * byte out of bounds.  Open at once when work running now may touch it. */
static void *map_device(size_t bytes, int device) {
  const size_t data = mapped_bytes(bytes), used = ((bytes ? bytes : 1) + 255) / 256 * 256;
  char *base = (char *)mmap(nullptr, data + 2 * page_size(), PROT_NONE,
                            MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (base == (char *)MAP_FAILED) return nullptr;
  char *lo = base + page_size(), *start = lo + (data - used);
  protect((uintptr_t)lo, (uintptr_t)(lo + data), PROT_READ | PROT_WRITE);
  memset(start, 0xff, bytes);
  if (!(dev().opened & (1u << device))) protect((uintptr_t)lo, (uintptr_t)(lo + data), PROT_NONE);
  ASAN_POISON_MEMORY_REGION(lo, (size_t)(start - lo));
  ASAN_POISON_MEMORY_REGION(start + bytes, (size_t)(lo + data - start - bytes));
  return start;
}

static void unmap_device(void *start, size_t bytes) {
  char *lo = (char *)((uintptr_t)start / page_size() * page_size());
  ASAN_UNPOISON_MEMORY_REGION(lo, mapped_bytes(bytes));
  munmap(lo - page_size(), mapped_bytes(bytes) + 2 * page_size());
}

Access::Access() {
  dev().open++;
}

/* A copy by the runtime: the range's pages, unless its device's memory is
 * open already. */
Access::Access(const void *p, size_t n) : single(true) {
  auto it = find_alloc(p, n);
  if (it == dev().allocs.end() || (dev().opened & (1u << it->second.home))) return;
  lo = (uintptr_t)p / page_size() * page_size();
  hi = ((uintptr_t)p + n + page_size() - 1) / page_size() * page_size();
  protect(lo, hi, PROT_READ | PROT_WRITE);
}

Access::~Access() {
  if (single && lo < hi) protect(lo, hi, PROT_NONE);
  if (!single && --dev().open == 0) reach(0);
}

Hidden::Hidden() : was_open(dev().open), was_opened(dev().opened) {
  reach(0);
  dev().open = 0;
}

Hidden::~Hidden() {
  dev().open = was_open;
  reach(was_opened);
}

/* ------------------------------------------------------------- lookups */

/* The allocation holding [p, p + n), or allocs.end(). */
std::map<uintptr_t, Alloc>::iterator find_alloc(const void *p, size_t n) {
  Device &d = dev();
  const uintptr_t a = (uintptr_t)p;
  auto it = d.allocs.upper_bound(a);
  if (it == d.allocs.begin()) return d.allocs.end();
  --it;
  const size_t size = it->second.bytes ? it->second.bytes : 1;
  if (a < it->first || a - it->first >= size || n > size - (a - it->first)) return d.allocs.end();
  return it;
}

bool on_device(const void *p) {
  return find_alloc(p, 1) != dev().allocs.end();
}

/* Both ends of a copy where its kind says: device memory wholly inside one
 * allocation (of any device: copies between devices are legal), host
 * memory not device memory. */
cudaError_t check_copy(void *dst, const void *src, size_t n, cudaMemcpyKind *kind) {
  const Device &d = dev();
  if (!dst || !src) return cudaErrorInvalidValue;
  if (*kind == cudaMemcpyDefault) {
    const bool ds = on_device(src), dd = on_device(dst);
    *kind = ds ? (dd ? cudaMemcpyDeviceToDevice : cudaMemcpyDeviceToHost)
               : (dd ? cudaMemcpyHostToDevice : cudaMemcpyHostToHost);
  }
  const bool src_dev = *kind == cudaMemcpyDeviceToHost || *kind == cudaMemcpyDeviceToDevice;
  const bool dst_dev = *kind == cudaMemcpyHostToDevice || *kind == cudaMemcpyDeviceToDevice;
  if (src_dev ? find_alloc(src, n) == d.allocs.end() : on_device(src)) return cudaErrorInvalidValue;
  if (dst_dev ? find_alloc(dst, n) == d.allocs.end() : on_device(dst)) return cudaErrorInvalidValue;
  return cudaSuccess;
}

}  // namespace fo_emu

using namespace fo_emu;

extern "C" {

/* -------------------------------------------------------------- memory */

cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total) {
  LOCK;
  if (!free_bytes || !total) return fail(cudaErrorInvalidValue);
  *total = EMU_MEMORY;
  *free_bytes = EMU_MEMORY - dev().used[current_device];
  return cudaSuccess;
}

/* On the current device. */
cudaError_t cudaMalloc(void **ptr, size_t bytes) {
  LOCK;
  if (!ptr) return fail(cudaErrorInvalidValue);
  cudaError_t e = check_unsafe();
  if (e != cudaSuccess) return fail(e);
  Device &d = dev();
  const int home = current_device;
  if (bytes > EMU_MEMORY - d.used[home]) return fail(cudaErrorMemoryAllocation);
  void *p = map_device(bytes, home);
  if (!p) return fail(cudaErrorMemoryAllocation);
  d.allocs[(uintptr_t)p] = Alloc{bytes, home};
  d.used[home] += bytes;
  *ptr = p;
  return cudaSuccess;
}

cudaError_t cudaFree(void *ptr) {
  LOCK;
  if (!ptr) return cudaSuccess;
  cudaError_t e = check_unsafe();
  if (e != cudaSuccess) return fail(e);
  Device &d = dev();
  auto it = d.allocs.find((uintptr_t)ptr);
  if (it == d.allocs.end()) return fail(cudaErrorInvalidValue);
  e = check_device_wait(it->second.home);
  if (e != cudaSuccess) return fail(e);
  flush_device(it->second.home); /* cudaFree waits for the device */
  d.used[it->second.home] -= it->second.bytes;
  unmap_device(ptr, it->second.bytes);
  d.allocs.erase(it);
  return cudaSuccess;
}

cudaError_t cudaPointerGetAttributes(struct cudaPointerAttributes *a, const void *ptr) {
  LOCK;
  if (!a) return fail(cudaErrorInvalidValue);
  memset(a, 0, sizeof *a);
  auto it = ptr ? find_alloc(ptr, 1) : dev().allocs.end();
  if (it != dev().allocs.end()) {
    a->type = cudaMemoryTypeDevice;
    a->device = it->second.home;
    a->devicePointer = (void *)ptr;
  } else {
    a->type = cudaMemoryTypeUnregistered;
    a->device = -2;
    a->hostPointer = (void *)ptr;
  }
  return cudaSuccess;
}

/* On the current device's legacy stream. */
cudaError_t cudaMemcpy(void *dst, const void *src, size_t count, enum cudaMemcpyKind kind) {
  LOCK;
  if (count == 0) return cudaSuccess;
  const int device = current_device;
  cudaError_t e = check_copy(dst, src, count, &kind);
  if (e == cudaSuccess) e = check_unsafe();
  if (e == cudaSuccess) e = check_legacy(device, true);
  if (e != cudaSuccess) return fail(e);
  Stream *legacy = &dev().legacy[device];
  if (kind == cudaMemcpyHostToDevice) {
    /* from pageable memory CUDA synchronizes the legacy stream, stages the
     * source and returns before the data lands: the copy is the legacy
     * stream's, and work on a non-blocking stream may run before it */
    flush_legacy(device);
    std::vector<unsigned char> copy((const unsigned char *)src, (const unsigned char *)src + count);
    return fail(enqueue(legacy, [dst, copy]() { memcpy(dst, copy.data(), copy.size()); }));
  }
  if (kind == cudaMemcpyDeviceToDevice) /* may return before it is done */
    return fail(enqueue(legacy, [dst, src, count]() { memmove(dst, src, count); }));
  flush_legacy(device); /* to the host: returns once the data is there */
  Access open(src, count);
  memmove(dst, src, count);
  return cudaSuccess;
}

/* A copy may go on a stream of another device than the current one. */
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t count, enum cudaMemcpyKind kind,
                            cudaStream_t stream) {
  LOCK;
  Stream *s = stream_of(stream);
  if (!s) return fail(cudaErrorInvalidResourceHandle);
  if (count == 0) return cudaSuccess;
  cudaError_t e = check_copy(dst, src, count, &kind);
  if (e != cudaSuccess) return fail(e);
  if (kind == cudaMemcpyHostToDevice && !s->cap) {
    /* pageable memory: the source is taken now, the caller may reuse it */
    std::vector<unsigned char> copy((const unsigned char *)src, (const unsigned char *)src + count);
    return fail(enqueue(s, [dst, copy]() { memcpy(dst, copy.data(), copy.size()); }));
  }
  if (kind == cudaMemcpyDeviceToHost && !s->cap) {
    /* to pageable memory: returns once the data is there */
    if (s->legacy && (e = check_legacy(s->device, true)) != cudaSuccess) return fail(e);
    if (s->legacy)
      flush_legacy(s->device);
    else
      flush(s);
    Access open(src, count);
    memcpy(dst, src, count);
    return cudaSuccess;
  }
  return fail(enqueue(s, [dst, src, count]() { memmove(dst, src, count); }));
}

cudaError_t cudaMemset(void *ptr, int value, size_t count) {
  LOCK;
  if (count == 0) return cudaSuccess;
  if (find_alloc(ptr, count) == dev().allocs.end()) return fail(cudaErrorInvalidValue);
  const int device = current_device;
  cudaError_t e = check_unsafe();
  if (e == cudaSuccess) e = check_legacy(device, true);
  if (e != cudaSuccess) return fail(e);
  /* on device memory CUDA's memset may return before it is done: the
   * legacy stream's work */
  return fail(enqueue(&dev().legacy[device], [ptr, value, count]() { memset(ptr, value, count); }));
}

cudaError_t cudaMemsetAsync(void *ptr, int value, size_t count, cudaStream_t stream) {
  LOCK;
  Stream *s = stream_of(stream);
  if (!s) return fail(cudaErrorInvalidResourceHandle);
  if (count == 0) return cudaSuccess;
  if (find_alloc(ptr, count) == dev().allocs.end()) return fail(cudaErrorInvalidValue);
  return fail(enqueue(s, [ptr, value, count]() { memset(ptr, value, count); }));
}

}  // extern "C"
