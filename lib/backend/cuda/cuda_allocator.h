// Caching device allocator. cudaMalloc/cudaFree synchronise the device and cost tens of
// microseconds, so freed blocks are kept by size class and handed out again. All work runs on
// the backend's one stream, so a block freed by the host while kernels still use it is only
// reused by work queued after them: stream order makes the reuse safe without events.
//
// Size classes: requests round up to 512 B below 1 MiB and to 2 MiB above; a cached block is
// reused for a request of at least half its size. When cudaMalloc fails the cache is returned
// to the driver and the allocation retried; the error then names the request and the usage.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>

namespace llm::cuda {

struct AllocatorStats {
  size_t in_use = 0;          // bytes handed out (rounded)
  size_t cached = 0;          // bytes held in free blocks
  size_t peak_in_use = 0;
  int64_t driver_mallocs = 0;  // cudaMalloc calls
  int64_t cache_hits = 0;
};

class CachingAllocator {
 public:
  explicit CachingAllocator(int device) : device_(device) {}
  CachingAllocator(const CachingAllocator&) = delete;
  CachingAllocator& operator=(const CachingAllocator&) = delete;

  // nbytes == 0 returns nullptr.
  void* allocate(size_t nbytes);
  void release(void* p) noexcept;
  // Returns every cached block to the driver.
  void empty_cache() noexcept;
  AllocatorStats stats() const;
  std::string report() const;

  static size_t round_size(size_t nbytes);

 private:
  void free_cached_locked() noexcept;
  int device_;
  mutable std::mutex mu_;
  std::unordered_map<void*, size_t> live_;
  std::multimap<size_t, void*> free_;
  AllocatorStats stats_;
};

}  // namespace llm::cuda
