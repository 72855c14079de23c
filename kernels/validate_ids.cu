// Range check of token ids / targets on the device: the smallest offending index, so the
// backend can throw the same error the CPU backend does (which id, where) without first
// copying every id to the host.
#include "kernels.h"
#include "common.cuh"

namespace llm::kernels {

namespace {
__global__ void find_bad_ids_kernel(const int32_t* ids, int64_t n, int64_t lo, int64_t hi,
                                    unsigned long long* first_bad) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t v = ids[i];
    if (v < lo || v >= hi) atomicMin(first_bad, static_cast<unsigned long long>(i));
  }
}
}  // namespace

void find_bad_ids(const int32_t* ids, int64_t n, int64_t lo, int64_t hi, unsigned long long* first_bad,
                  cudaStream_t stream) {
  if (n == 0) return;
  find_bad_ids_kernel<<<grid_for(n), 256, 0, stream>>>(ids, n, lo, hi, first_bad);
}

}  // namespace llm::kernels
