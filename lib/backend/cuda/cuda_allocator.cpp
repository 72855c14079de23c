#include "backend/cuda/cuda_allocator.h"

#include "backend/cuda/cuda_check.h"

namespace llm::cuda {

size_t CachingAllocator::round_size(size_t n) {
  constexpr size_t kSmall = 512, kLarge = size_t(2) << 20, kSplit = size_t(1) << 20;
  return n < kSplit ? (n + kSmall - 1) / kSmall * kSmall : (n + kLarge - 1) / kLarge * kLarge;
}

void* CachingAllocator::allocate(size_t nbytes) {
  if (nbytes == 0) return nullptr;
  const size_t size = round_size(nbytes);
  std::lock_guard<std::mutex> lock(mu_);
  auto it = free_.lower_bound(size);
  if (it != free_.end() && it->first <= 2 * size) {
    void* p = it->second;
    const size_t got = it->first;
    free_.erase(it);
    stats_.cached -= got;
    live_.emplace(p, got);
    stats_.in_use += got;
    stats_.peak_in_use = std::max(stats_.peak_in_use, stats_.in_use);
    ++stats_.cache_hits;
    return p;
  }
  CUDA_CHECK(cudaSetDevice(device_), "allocate");
  void* p = nullptr;
  cudaError_t e = cudaMalloc(&p, size);
  if (e == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();  // out of memory is not sticky: clear it, free the cache and retry
    free_cached_locked();
    e = cudaMalloc(&p, size);
  }
  // Anything else (an earlier kernel's fault, which cudaMalloc reports too) is not memory: it
  // goes out as what it is, with the request that met it.
  if (e != cudaSuccess && e != cudaErrorMemoryAllocation)
    throw_cuda_error(e, "cudaMalloc", __FILE__, __LINE__,
                     detail::concat("allocating ", nbytes, " bytes on cuda:", device_,
                                    " (an error of an earlier asynchronous op shows here too)"));
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    (void)cudaMemGetInfo(&free_b, &total_b);
    throw Error(detail::concat("CUDA out of memory on cuda:", device_, ": allocating ", nbytes, " bytes (", size,
                               " rounded) with ", stats_.in_use, " in use by tensors; device has ", free_b,
                               " of ", total_b, " bytes free (", cudaGetErrorString(e), ")"));
  }
  ++stats_.driver_mallocs;
  live_.emplace(p, size);
  stats_.in_use += size;
  stats_.peak_in_use = std::max(stats_.peak_in_use, stats_.in_use);
  return p;
}

void CachingAllocator::release(void* p) noexcept {
  if (!p) return;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = live_.find(p);
  if (it == live_.end()) return;  // not ours: never free foreign memory
  free_.emplace(it->second, p);
  stats_.in_use -= it->second;
  stats_.cached += it->second;
  live_.erase(it);
}

void CachingAllocator::free_cached_locked() noexcept {
  for (auto& [size, p] : free_) (void)cudaFree(p);
  free_.clear();
  stats_.cached = 0;
}

void CachingAllocator::empty_cache() noexcept {
  std::lock_guard<std::mutex> lock(mu_);
  free_cached_locked();
}

AllocatorStats CachingAllocator::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

std::string CachingAllocator::report() const {
  const AllocatorStats s = stats();
  auto mib = [](size_t b) { return static_cast<double>(b) / (1 << 20); };
  return detail::concat("cuda:", device_, " memory: ", mib(s.in_use), " MiB in use, ", mib(s.cached), " MiB cached, ",
                        mib(s.peak_in_use), " MiB peak, ", s.driver_mallocs, " cudaMalloc calls, ", s.cache_hits,
                        " cache hits");
}

}  // namespace llm::cuda
