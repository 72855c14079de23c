// LayerNorm over the last dimension: one warp per row (two passes over the row for mean and
// variance, as the CPU op), saving mean and 1/std. Backward: dinp (+=) per warp-row; dweight
// and dbias (+=) through the deterministic column reduction. Forward and backward read 16-byte
// packs when the rows are 16-byte aligned and C a multiple of the pack (8 bf16/f16, 4 f32).
#include "column_sums.cuh"
#include "kernels.h"

namespace llm::kernels {

namespace {
constexpr int kWarpsPerBlock = 8;

template <typename T>
__global__ void layernorm_forward_kernel(T* out, float* mean, float* rstd, const T* inp, const float* w,
                                         const float* b, int64_t N, int64_t C, float eps) {
  const int64_t row = blockIdx.x * int64_t(kWarpsPerBlock) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= N) return;
  const T* x = inp + row * C;
  float sum = 0.0f;
  for (int64_t c = lane; c < C; c += 32) sum += to_float(x[c]);
  const float m = warp_sum(sum) / static_cast<float>(C);
  float var = 0.0f;
  for (int64_t c = lane; c < C; c += 32) {
    const float d = to_float(x[c]) - m;
    var += d * d;
  }
  const float s = 1.0f / sqrtf(warp_sum(var) / static_cast<float>(C) + eps);
  T* o = out + row * C;
  for (int64_t c = lane; c < C; c += 32) o[c] = from_float<T>((to_float(x[c]) - m) * s * w[c] + b[c]);
  if (lane == 0) {
    mean[row] = m;
    rstd[row] = s;
  }
}

// The forward reading and writing 16-byte packs (rows 16-byte aligned, C a multiple of the pack).
template <typename T>
__global__ void layernorm_forward_packed_kernel(T* out, float* mean, float* rstd, const T* inp, const float* w,
                                                const float* b, int64_t N, int64_t C, float eps) {
  constexpr int V = Pack<T>::n;
  const int64_t row = blockIdx.x * int64_t(kWarpsPerBlock) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= N) return;
  const Pack<T>* x = reinterpret_cast<const Pack<T>*>(inp + row * C);
  const int64_t packs = C / V;
  float sum = 0.0f;
#pragma unroll 4
  for (int64_t k = lane; k < packs; k += 32) {
    const Pack<T> xv = x[k];
#pragma unroll
    for (int e = 0; e < V; ++e) sum += to_float(xv.e[e]);
  }
  const float m = warp_sum(sum) / static_cast<float>(C);
  float var = 0.0f;
#pragma unroll 4
  for (int64_t k = lane; k < packs; k += 32) {
    const Pack<T> xv = x[k];
#pragma unroll
    for (int e = 0; e < V; ++e) {
      const float d = to_float(xv.e[e]) - m;
      var += d * d;
    }
  }
  const float s = 1.0f / sqrtf(warp_sum(var) / static_cast<float>(C) + eps);
  Pack<T>* o = reinterpret_cast<Pack<T>*>(out + row * C);
#pragma unroll 4
  for (int64_t k = lane; k < packs; k += 32) {
    const Pack<T> xv = x[k];
    Pack<T> ov;
#pragma unroll
    for (int e = 0; e < V; ++e) ov.e[e] = from_float<T>((to_float(xv.e[e]) - m) * s * w[k * V + e] + b[k * V + e]);
    o[k] = ov;
  }
  if (lane == 0) {
    mean[row] = m;
    rstd[row] = s;
  }
}

template <typename T>
__global__ void layernorm_backward_dinp_kernel(T* dinp, const T* dout, const T* inp, const float* w,
                                               const float* mean, const float* rstd, int64_t N, int64_t C) {
  const int64_t row = blockIdx.x * int64_t(kWarpsPerBlock) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= N) return;
  const T* x = inp + row * C;
  const T* d = dout + row * C;
  const float m = mean[row], s = rstd[row];
  float sum_dn = 0.0f, sum_dn_n = 0.0f;
  for (int64_t c = lane; c < C; c += 32) {
    const float n = (to_float(x[c]) - m) * s;
    const float dn = w[c] * to_float(d[c]);
    sum_dn += dn;
    sum_dn_n += dn * n;
  }
  const float mdn = warp_sum(sum_dn) / static_cast<float>(C);
  const float mdnn = warp_sum(sum_dn_n) / static_cast<float>(C);
  T* di = dinp + row * C;
  for (int64_t c = lane; c < C; c += 32) {
    const float n = (to_float(x[c]) - m) * s;
    const float dn = w[c] * to_float(d[c]);
    di[c] = from_float<T>(to_float(di[c]) + (dn - mdn - n * mdnn) * s);
  }
}

// partial[g, c] = sum over the block's rows of dout * xhat, partial[g, C + c] = of dout.
template <typename T>
__global__ void layernorm_param_partials_kernel(float* partial, const T* dout, const T* inp, const float* mean,
                                                const float* rstd, int64_t N, int64_t C) {
  __shared__ float s[kColumnRowLanes][33];
  const int64_t c = blockIdx.x * 32 + threadIdx.x;
  float dw = 0.0f, db = 0.0f;
  if (c < C)
    for (int64_t r = blockIdx.y * kColumnRowLanes + threadIdx.y; r < N; r += int64_t(gridDim.y) * kColumnRowLanes) {
      const float d = to_float(dout[r * C + c]);
      dw += d * (to_float(inp[r * C + c]) - mean[r]) * rstd[r];
      db += d;
    }
  // Channels past C store nothing: slot c of a thread with C <= c < 2C is dbias's slot c - C,
  // another block's (C > 32 and not a multiple of 32 raced it with 0).
  column_block_store(s, dw, partial, 2 * C, c < C ? c : 2 * C);
  column_block_store(s, db, partial, 2 * C, c < C ? C + c : 2 * C);
}

// The same two kernels reading 16-byte packs (rows 16-byte aligned, C a multiple of the pack).
template <typename T>
__global__ void layernorm_backward_dinp_packed_kernel(T* dinp, const T* dout, const T* inp, const float* w,
                                                      const float* mean, const float* rstd, int64_t N, int64_t C) {
  constexpr int V = Pack<T>::n;
  const int64_t row = blockIdx.x * int64_t(kWarpsPerBlock) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= N) return;
  const Pack<T>* x = reinterpret_cast<const Pack<T>*>(inp + row * C);
  const Pack<T>* d = reinterpret_cast<const Pack<T>*>(dout + row * C);
  Pack<T>* di = reinterpret_cast<Pack<T>*>(dinp + row * C);
  const int64_t packs = C / V;
  const float m = mean[row], s = rstd[row];
  float sum_dn = 0.0f, sum_dn_n = 0.0f;
#pragma unroll 4
  for (int64_t k = lane; k < packs; k += 32) {
    const Pack<T> xv = x[k], dv = d[k];
#pragma unroll
    for (int e = 0; e < V; ++e) {
      const float n = (to_float(xv.e[e]) - m) * s;
      const float dn = w[k * V + e] * to_float(dv.e[e]);
      sum_dn += dn;
      sum_dn_n += dn * n;
    }
  }
  const float mdn = warp_sum(sum_dn) / static_cast<float>(C);
  const float mdnn = warp_sum(sum_dn_n) / static_cast<float>(C);
#pragma unroll 4
  for (int64_t k = lane; k < packs; k += 32) {
    const Pack<T> xv = x[k], dv = d[k];
    Pack<T> o = di[k];
#pragma unroll
    for (int e = 0; e < V; ++e) {
      const float n = (to_float(xv.e[e]) - m) * s;
      const float dn = w[k * V + e] * to_float(dv.e[e]);
      o.e[e] = from_float<T>(to_float(o.e[e]) + (dn - mdn - n * mdnn) * s);
    }
    di[k] = o;
  }
}

template <typename T>
__global__ void layernorm_param_partials_packed_kernel(float* partial, const T* dout, const T* inp, const float* mean,
                                                       const float* rstd, int64_t N, int64_t C) {
  constexpr int V = Pack<T>::n;
  const int64_t c0 = (blockIdx.x * int64_t(32) + threadIdx.x) * V;
  const bool active = c0 < C;
  float dw[V] = {}, db[V] = {};
  if (active) {
#pragma unroll 4
    for (int64_t r = blockIdx.y * kColumnRowLanes + threadIdx.y; r < N; r += int64_t(gridDim.y) * kColumnRowLanes) {
      const Pack<T> dv = *reinterpret_cast<const Pack<T>*>(dout + r * C + c0);
      const Pack<T> xv = *reinterpret_cast<const Pack<T>*>(inp + r * C + c0);
      const float m = mean[r], s = rstd[r];
#pragma unroll
      for (int e = 0; e < V; ++e) {
        const float dd = to_float(dv.e[e]);
        dw[e] += dd * (to_float(xv.e[e]) - m) * s;
        db[e] += dd;
      }
    }
  }
  column_pack_store<V>(dw, partial, 2 * C, 0, c0, active);
  column_pack_store<V>(db, partial, 2 * C, C, c0, active);
}
}  // namespace

void layernorm_forward(DType t, void* out, float* mean, float* rstd, const void* inp, const float* weight,
                       const float* bias, int64_t N, int64_t C, float eps, cudaStream_t stream) {
  if (N == 0) return;
  const unsigned grid = static_cast<unsigned>(ceil_div(N, kWarpsPerBlock));
  dispatch_float(t, "layernorm_forward", [&](auto tag) {
    using E = decltype(tag);
    if (packable(out, inp) && C % Pack<E>::n == 0)
      layernorm_forward_packed_kernel<E><<<grid, 32 * kWarpsPerBlock, 0, stream>>>(
          static_cast<E*>(out), mean, rstd, static_cast<const E*>(inp), weight, bias, N, C, eps);
    else
      layernorm_forward_kernel<E><<<grid, 32 * kWarpsPerBlock, 0, stream>>>(
          static_cast<E*>(out), mean, rstd, static_cast<const E*>(inp), weight, bias, N, C, eps);
  });
}

void layernorm_backward(DType t, void* dinp, float* dweight, float* dbias, const void* dout, const void* inp,
                        const float* weight, const float* mean, const float* rstd, int64_t N, int64_t C,
                        float* scratch, cudaStream_t stream) {
  if (N == 0) return;
  const int64_t G = column_row_blocks(N);
  dispatch_float(t, "layernorm_backward", [&](auto tag) {
    using E = decltype(tag);
    const unsigned rows = static_cast<unsigned>(ceil_div(N, kWarpsPerBlock));
    if (packable(dinp, dout, inp) && C % Pack<E>::n == 0) {
      layernorm_backward_dinp_packed_kernel<E><<<rows, 32 * kWarpsPerBlock, 0, stream>>>(
          static_cast<E*>(dinp), static_cast<const E*>(dout), static_cast<const E*>(inp), weight, mean, rstd, N, C);
      const dim3 grid(static_cast<unsigned>(ceil_div(C, 32 * Pack<E>::n)), static_cast<unsigned>(G));
      layernorm_param_partials_packed_kernel<E><<<grid, dim3(32, kColumnRowLanes), 0, stream>>>(
          scratch, static_cast<const E*>(dout), static_cast<const E*>(inp), mean, rstd, N, C);
    } else {
      layernorm_backward_dinp_kernel<E><<<rows, 32 * kWarpsPerBlock, 0, stream>>>(
          static_cast<E*>(dinp), static_cast<const E*>(dout), static_cast<const E*>(inp), weight, mean, rstd, N, C);
      const dim3 grid(static_cast<unsigned>(ceil_div(C, 32)), static_cast<unsigned>(G));
      layernorm_param_partials_kernel<E><<<grid, dim3(32, kColumnRowLanes), 0, stream>>>(
          scratch, static_cast<const E*>(dout), static_cast<const E*>(inp), mean, rstd, N, C);
    }
  });
  column_sums_finalize<<<static_cast<unsigned>(ceil_div(2 * C, 256)), 256, 0, stream>>>(dweight, dbias, scratch, G,
                                                                                       2 * C, C);
}

}  // namespace llm::kernels
