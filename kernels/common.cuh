// Device helpers shared by the kernels: element-type conversion, warp/block reductions, launch
// geometry and dtype dispatch.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <string>
#include <type_traits>
#include <unordered_map>

#include "backend/cuda/cuda_check.h"
#include "core/dtype.h"
#include "core/error.h"
#include "kernels.h"

namespace llm::kernels {

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// 16 bytes of elements (8 bf16/f16, 4 f32), for one 128-bit load or store.
template <typename T>
struct alignas(16) Pack {
  static constexpr int n = 16 / static_cast<int>(sizeof(T));
  T e[n];
};
inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }
// Whether the 16-byte-pack kernels may run for these buffers: all 16-byte aligned, and not
// switched off by LLM_CUDA_PACKS=0 (triage: the one-element kernels everywhere).
inline bool packs_enabled() {
  static const bool on = [] {
    const char* e = std::getenv("LLM_CUDA_PACKS");
    return !(e && std::string(e) == "0");
  }();
  return on;
}
template <typename... P>
inline bool packable(const P*... p) {
  return packs_enabled() && (aligned16(p) && ...);
}

// Element-wise loop over n elements: 16-byte packs when every pointer is 16-byte aligned, then
// the tail (or everything, unaligned) one element at a time. f(i) handles element i, g(k) pack
// k (elements k * Pack<T>::n ..); grid-stride, so any grid covers it.
template <typename T, typename F, typename G>
__device__ __forceinline__ void elementwise(int64_t n, bool packed, F&& f, G&& g) {
  constexpr int V = Pack<T>::n;
  const int64_t tid = blockIdx.x * int64_t(blockDim.x) + threadIdx.x, stride = int64_t(gridDim.x) * blockDim.x;
  int64_t done = 0;
  if (packed) {
    const int64_t packs = n / V;
    for (int64_t k = tid; k < packs; k += stride) g(k);
    done = packs * V;
  }
  for (int64_t i = done + tid; i < n; i += stride) f(i);
}

// Kernels needing more than 48 KiB of shared memory per block (static and dynamic together) must
// opt in, to at least the dynamic bytes of each launch. The opt-in is a per-kernel maximum, so it
// is raised whenever a launch needs more than the last one set: a kernel whose shared memory
// depends on a runtime value (the SIMT attention's head dim) launched first small then large
// would otherwise fail with an invalid argument.
// Per kernel and process (one device per process). Each time the opt-in is raised, the launch's
// dynamic bytes plus the kernel's static shared memory are checked against what a block may opt
// in to here (smem_optin_limit: the device's, or LLM_CUDA_SMEM_LIMIT's cap); a launch over it is
// refused with the numbers, before CUDA would answer "invalid argument".
template <typename K>
void allow_smem(K kernel, size_t bytes) {
  struct OptIn {
    bool known = false;
    size_t static_bytes = 0, dynamic_allowed = 0;
  };
  static std::mutex mu;
  static std::unordered_map<const void*, OptIn> kernels;
  const std::lock_guard<std::mutex> lock(mu);
  OptIn& k = kernels[reinterpret_cast<const void*>(kernel)];
  if (!k.known) {
    cudaFuncAttributes attr{};
    CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel), "the static shared memory of a kernel asking for ", bytes,
               " bytes of dynamic shared memory");
    k.static_bytes = attr.sharedSizeBytes, k.known = true;
  }
  if (bytes + k.static_bytes <= 48 * 1024 || bytes <= k.dynamic_allowed) return;
  if (const size_t limit = smem_optin_limit(), need = bytes + k.static_bytes; need > limit)
    LLM_FAIL("a kernel needs ", need, " bytes of shared memory per block",
             k.static_bytes ? detail::concat(" (", k.static_bytes, " of them static)") : std::string(),
             "; this device allows ", limit, smem_capped() ? " (LLM_CUDA_SMEM_LIMIT)" : "");
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)),
             "opting in to ", bytes, " bytes of shared memory");
  k.dynamic_allowed = bytes;
}

// Grid for a grid-stride loop over n elements with `threads` per block (capped: the loops stride).
inline unsigned grid_for(int64_t n, int threads = 256) {
  const int64_t blocks = ceil_div(n > 0 ? n : 1, threads);
  return static_cast<unsigned>(blocks < 65535 * 8 ? blocks : 65535 * 8);
}

// The activation dtype of a device element type (dispatch_float's inverse).
template <typename T>
constexpr DType dtype_of_element() {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>,
                "an activation element type (float, __half, __nv_bfloat16)");
  return std::is_same_v<T, float> ? DType::f32 : std::is_same_v<T, __half> ? DType::f16 : DType::bf16;
}

// Calls f(T{}) with T the C++ type of an activation dtype.
template <typename F>
void dispatch_float(DType t, const char* op, F&& f) {
  switch (t) {
    case DType::f32: f(float{}); return;
    case DType::bf16: f(__nv_bfloat16{}); return;
    case DType::f16: f(__half{}); return;
    default: LLM_FAIL(op, ": unsupported element type ", dtype_name(t), " (f32, bf16 or f16)");
  }
}

}  // namespace llm::kernels
