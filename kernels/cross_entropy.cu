// Fused softmax cross-entropy over the (vocab-parallel, padded) logits: one block per row.
// Forward keeps a running (max, sum) per thread (online softmax), combines the threads in a
// fixed order and saves the row log-sum-exp; backward rewrites logits into dlogits in place
// (each element is read and written by the same thread, so dlogits may alias logits).
#include <cfloat>

#include "common.cuh"
#include "kernels.h"

namespace llm::kernels {

namespace {
constexpr int kThreads = 512;

// (m, s) <- (m, s) combined with (m2, s2): s is a sum of exp(x - m).
__device__ __forceinline__ void combine(float& m, float& s, float m2, float s2) {
  if (m2 == -INFINITY) return;
  if (m == -INFINITY) {
    m = m2;
    s = s2;
    return;
  }
  const float M = fmaxf(m, m2);
  s = s * expf(m - M) + s2 * expf(m2 - M);
  m = M;
}

template <typename T>
__global__ void cross_entropy_forward_kernel(float* losses, float* lse, const T* logits, const int32_t* targets,
                                             int64_t Vp, int64_t Vr, int64_t vocab_begin) {
  __shared__ float sm[kThreads / 32], ss[kThreads / 32];
  const int64_t row = blockIdx.x;
  const T* x = logits + row * Vp;
  float m = -INFINITY, s = 0.0f;
  bool nonfinite = false;  // a NaN or +inf: the online form would drop a NaN met first (v > m fails)
  for (int64_t c = threadIdx.x; c < Vr; c += kThreads) {
    const float v = to_float(x[c]);
    nonfinite |= !(v <= FLT_MAX);
    if (v > m) {
      s = (m == -INFINITY ? 0.0f : s * expf(m - v)) + 1.0f;
      m = v;
    } else {
      s += expf(v - m);
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
    combine(m, s, m2, s2);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    sm[warp] = m;
    ss[warp] = s;
  }
  // (also the barrier before thread 0 reads the warps' partials)
  const bool row_nonfinite = __syncthreads_or(nonfinite);
  if (threadIdx.x == 0) {
    float M = sm[0], S = ss[0];
    for (int w = 1; w < kThreads / 32; ++w) combine(M, S, sm[w], ss[w]);
    // As the CPU's exp(x - max) sum: NaN for a NaN or +inf among the real columns, or all -inf.
    const float l = row_nonfinite || M == -INFINITY ? NAN : M + logf(S);
    lse[row] = l;
    const int64_t t = targets[row];
    const int64_t col = t - vocab_begin;
    losses[row] = t < 0 ? 0.0f : l - (col >= 0 && col < Vr ? to_float(x[col]) : 0.0f);
  }
}

template <typename T>
__global__ void cross_entropy_backward_kernel(T* dlogits, const T* logits, const float* lse, const int32_t* targets,
                                              float dloss, int64_t Vp, int64_t Vr, int64_t vocab_begin) {
  const int64_t row = blockIdx.x;  // rows on x: gridDim.y is limited to 65535
  const int64_t t = targets[row];
  const int64_t col = t - vocab_begin;
  const float l = lse[row];
  const T* x = logits + row * Vp;
  T* d = dlogits + row * Vp;
  for (int64_t c = blockIdx.y * int64_t(blockDim.x) + threadIdx.x; c < Vp; c += int64_t(gridDim.y) * blockDim.x) {
    float g = 0.0f;
    if (t >= 0 && c < Vr) g = expf(to_float(x[c]) - l) * dloss - (c == col ? dloss : 0.0f);
    d[c] = from_float<T>(g);
  }
}
__global__ void cross_entropy_combine_kernel(float* losses, float* lse, const float* shard_lse,
                                             const float* shard_losses, const int32_t* targets, int64_t P, int64_t N,
                                             int64_t Vl) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= N) return;
  double m = -INFINITY;
  for (int64_t r = 0; r < P; ++r) m = fmax(m, static_cast<double>(shard_lse[r * N + i]));
  double acc = 0;
  for (int64_t r = 0; r < P; ++r) acc += exp(static_cast<double>(shard_lse[r * N + i]) - m);
  const double g = m + log(acc);
  lse[i] = static_cast<float>(g);
  const int64_t t = targets[i];
  if (t < 0) {
    losses[i] = 0.0f;
    return;
  }
  const int64_t o = t / Vl;
  losses[i] = o < P ? static_cast<float>(g - (static_cast<double>(shard_lse[o * N + i]) -
                                              static_cast<double>(shard_losses[o * N + i])))
                    : NAN;
}
}  // namespace

void cross_entropy_combine(float* losses, float* lse, const float* shard_lse, const float* shard_losses,
                           const int32_t* targets, int64_t P, int64_t N, int64_t Vl, cudaStream_t stream) {
  if (N == 0) return;
  constexpr int threads = 256;
  LLM_CHECK(ceil_div(N, int64_t(threads)) < (int64_t(1) << 31), "cross_entropy_combine: ", N, " rows");
  cross_entropy_combine_kernel<<<static_cast<unsigned>(ceil_div(N, int64_t(threads))), threads, 0, stream>>>(
      losses, lse, shard_lse, shard_losses, targets, P, N, Vl);
}

void cross_entropy_forward(DType t, float* losses, float* lse, const void* logits, const int32_t* targets, int64_t N,
                           int64_t Vp, int64_t Vr, int64_t vocab_begin, cudaStream_t stream) {
  if (N == 0) return;
  LLM_CHECK(N < (int64_t(1) << 31), "cross_entropy_forward: ", N, " rows (one block each) pass the grid's 2^31 - 1");
  dispatch_float(t, "cross_entropy_forward", [&](auto tag) {
    using E = decltype(tag);
    cross_entropy_forward_kernel<E><<<static_cast<unsigned>(N), kThreads, 0, stream>>>(
        losses, lse, static_cast<const E*>(logits), targets, Vp, Vr, vocab_begin);
  });
}

void cross_entropy_backward(DType t, void* dlogits, const void* logits, const float* lse, const int32_t* targets,
                            float dloss, int64_t N, int64_t Vp, int64_t Vr, int64_t vocab_begin, cudaStream_t stream) {
  if (N == 0) return;
  LLM_CHECK(N < (int64_t(1) << 31), "cross_entropy_backward: ", N, " rows (one block each) pass the grid's 2^31 - 1");
  const int64_t chunks = ceil_div(Vp, 256 * 8);  // ~8 elements per thread
  const dim3 grid(static_cast<unsigned>(N), static_cast<unsigned>(chunks < 65535 ? chunks : 65535));
  dispatch_float(t, "cross_entropy_backward", [&](auto tag) {
    using E = decltype(tag);
    cross_entropy_backward_kernel<E><<<grid, 256, 0, stream>>>(static_cast<E*>(dlogits), static_cast<const E*>(logits),
                                                               lse, targets, dloss, Vp, Vr, vocab_begin);
  });
}

}  // namespace llm::kernels
