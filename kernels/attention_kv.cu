// Attention against a KV cache (generation): the new tokens' keys and values are appended to
// the cache, then the flash forward kernel runs the new queries (at positions past..) against
// the cache rows [0, position].
#include "common.cuh"
#include "kernels.h"

namespace llm::kernels {

namespace {
template <typename T>
__global__ void kv_cache_append_kernel(T* kc, T* vc, const T* qkv, int64_t Tn, int64_t C, int64_t maxT, int64_t past,
                                       int64_t total) {
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = idx % C, bt = idx / C, t = bt % Tn, b = bt / Tn;
    const T* row = qkv + bt * 3 * C;
    const int64_t dst = (b * maxT + past + t) * C + c;
    kc[dst] = row[C + c];
    vc[dst] = row[2 * C + c];
  }
}
}  // namespace

void attention_kv_forward(DType t, void* out, const void* qkv, void* k_cache, void* v_cache, int B, int64_t Tn,
                          int64_t C, int64_t maxT, int64_t past, int NH, cudaStream_t stream) {
  const int64_t total = int64_t(B) * Tn * C;
  if (total == 0) return;
  // Checked before the cache is written: a call refused leaves it as it was.
  check_attention_head_dim(static_cast<int>(C / NH), "attention_kv_forward");
  dispatch_float(t, "attention_kv_forward", [&](auto tag) {
    using E = decltype(tag);
    kv_cache_append_kernel<E><<<grid_for(total), 256, 0, stream>>>(static_cast<E*>(k_cache), static_cast<E*>(v_cache),
                                                                  static_cast<const E*>(qkv), Tn, C, maxT, past, total);
  });
  AttentionForwardArgs a;
  a.q = qkv;
  a.k = k_cache;
  a.v = v_cache;
  a.out = out;
  a.lse = nullptr;
  a.q_batch_stride = Tn * 3 * C;
  a.q_row_stride = 3 * C;
  a.kv_batch_stride = maxT * C;
  a.kv_row_stride = C;
  a.out_batch_stride = Tn * C;
  a.out_row_stride = C;
  a.B = B;
  a.NH = NH;
  a.hd = static_cast<int>(C / NH);
  a.Tq = Tn;
  a.q_pos0 = past;
  attention_forward(t, a, stream);
}

}  // namespace llm::kernels
