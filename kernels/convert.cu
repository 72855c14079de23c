// Element type conversion between f32 and bf16/f16 (round to nearest even): fp32 master
// weights -> low-precision working copies, low-precision gradients -> fp32 buffers.
#include "common.cuh"
#include "kernels.h"

namespace llm::kernels {

namespace {
template <typename D, typename S>
__global__ void convert_kernel(D* dst, const S* src, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = from_float<D>(to_float(src[i]));
}
}  // namespace

void convert(DType dst_type, void* dst, DType src_type, const void* src, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  dispatch_float(dst_type, "convert", [&](auto dtag) {
    dispatch_float(src_type, "convert", [&](auto stag) {
      using D = decltype(dtag);
      using S = decltype(stag);
      convert_kernel<D, S><<<grid_for(n), 256, 0, stream>>>(static_cast<D*>(dst), static_cast<const S*>(src), n);
    });
  });
}

}  // namespace llm::kernels
