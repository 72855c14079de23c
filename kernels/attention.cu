// Causal flash attention (FlashAttention-2 algorithm), SIMT path: fp32 arithmetic for any
// element type and any head dim up to 256. It is the port of the CPU op's tile structure
// (backend/cpu/attention.cpp) with 32x32 tiles: the exact path for f32 and the fallback for
// shapes the tensor-core kernels (attention_tc.cu) do not cover.
//
// Forward: one block per (32-query tile, head, batch), heaviest tiles first; 8 warps own 4
// query rows each, a lane owns one key of the 32-key tile for the scores and hd/32 output
// columns for P V. Online softmax (running max m and sum l per row); out = O / l and
// lse = m + log l at the end, so no [T, T] matrix ever exists.
// Backward (deterministic, no atomics): D = rowsum(dout * out); a dK/dV kernel owns a key tile
// and walks the query tiles at or below the diagonal; a dQ kernel owns a query tile and walks
// the key tiles up to the diagonal. Both recompute P = exp(S - lse) from the saved lse.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <initializer_list>
#include <string>
#include <utility>

#include "backend/cuda/cuda_check.h"
#include "common.cuh"
#include "kernels.h"
#include "sm90a/ws_schedule.h"

namespace llm::kernels {

namespace {

constexpr int kTile = 32;           // Br = Bc
constexpr int kWarps = 8;           // 256 threads
constexpr int kRowsPerWarp = kTile / kWarps;
constexpr int kMaxDimPerLane = 8;   // hd <= 256
constexpr int kMaxHeadDim = 32 * kMaxDimPerLane;

template <typename T>
__global__ void __launch_bounds__(256) attention_forward_simt(AttentionForwardArgs a, float scale) {
  extern __shared__ float smem[];
  const int hd = a.hd;
  float* Qs = smem;                 // [32][hd]
  float* Ks = Qs + kTile * hd;      // [32][hd + 1]
  float* Vs = Ks + kTile * (hd + 1);  // [32][hd]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int b = blockIdx.z, h = blockIdx.y;
  const int64_t i0 = int64_t(gridDim.x - 1 - blockIdx.x) * kTile;  // heaviest (longest) tiles first
  const int64_t Tk = a.q_pos0 + a.Tq;
  const T* q = static_cast<const T*>(a.q) + b * a.q_batch_stride + h * hd;
  const T* k = static_cast<const T*>(a.k) + b * a.kv_batch_stride + h * hd;
  const T* v = static_cast<const T*>(a.v) + b * a.kv_batch_stride + h * hd;

  for (int idx = threadIdx.x; idx < kTile * hd; idx += blockDim.x) {
    const int r = idx / hd, d = idx % hd;
    Qs[idx] = i0 + r < a.Tq ? to_float(q[(i0 + r) * a.q_row_stride + d]) : 0.0f;
  }
  float m[kRowsPerWarp], l[kRowsPerWarp], O[kRowsPerWarp][kMaxDimPerLane];
#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    m[rr] = -INFINITY;
    l[rr] = 0.0f;
#pragma unroll
    for (int e = 0; e < kMaxDimPerLane; ++e) O[rr][e] = 0.0f;
  }
  const int64_t last_q = a.q_pos0 + min(i0 + kTile, a.Tq) - 1;  // largest query position in the tile
  const int64_t key_end = min(last_q + 1, Tk);
  for (int64_t j0 = 0; j0 < key_end; j0 += kTile) {
    __syncthreads();  // previous tile's K/V fully used
    for (int idx = threadIdx.x; idx < kTile * hd; idx += blockDim.x) {
      const int r = idx / hd, d = idx % hd;
      const bool in = j0 + r < Tk;
      Ks[r * (hd + 1) + d] = in ? to_float(k[(j0 + r) * a.kv_row_stride + d]) : 0.0f;
      Vs[idx] = in ? to_float(v[(j0 + r) * a.kv_row_stride + d]) : 0.0f;
    }
    __syncthreads();
    float s[kRowsPerWarp];
#pragma unroll
    for (int rr = 0; rr < kRowsPerWarp; ++rr) s[rr] = 0.0f;
    const float* krow = Ks + lane * (hd + 1);
    for (int d = 0; d < hd; ++d) {
      const float kd = krow[d];
#pragma unroll
      for (int rr = 0; rr < kRowsPerWarp; ++rr) s[rr] += Qs[(warp * kRowsPerWarp + rr) * hd + d] * kd;
    }
    const int64_t kpos = j0 + lane;
    float p[kRowsPerWarp];
#pragma unroll
    for (int rr = 0; rr < kRowsPerWarp; ++rr) {
      const int64_t qpos = a.q_pos0 + i0 + warp * kRowsPerWarp + rr;
      const bool valid = kpos <= qpos && kpos < Tk;
      const float sv = valid ? s[rr] * scale : -INFINITY;
      const float m_new = fmaxf(m[rr], warp_max(sv));  // finite: key 0 is valid for every row
      p[rr] = valid ? expf(sv - m_new) : 0.0f;
      const float corr = expf(m[rr] - m_new);  // 0 on the first tile (m = -inf)
      l[rr] = l[rr] * corr + warp_sum(p[rr]);
      m[rr] = m_new;
#pragma unroll
      for (int e = 0; e < kMaxDimPerLane; ++e) O[rr][e] *= corr;
    }
    for (int j = 0; j < kTile; ++j) {
      float pj[kRowsPerWarp];
#pragma unroll
      for (int rr = 0; rr < kRowsPerWarp; ++rr) pj[rr] = __shfl_sync(0xffffffffu, p[rr], j);
#pragma unroll
      for (int e = 0; e < kMaxDimPerLane; ++e) {
        if (e * 32 >= hd) break;  // uniform across the warp
        const int d = lane + e * 32;
        const float vd = d < hd ? Vs[j * hd + d] : 0.0f;
#pragma unroll
        for (int rr = 0; rr < kRowsPerWarp; ++rr) O[rr][e] += pj[rr] * vd;
      }
    }
  }
  T* out = static_cast<T*>(a.out) + b * a.out_batch_stride + h * hd;
#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    const int64_t i = i0 + warp * kRowsPerWarp + rr;
    if (i >= a.Tq) continue;
    const float inv = 1.0f / l[rr];
#pragma unroll
    for (int e = 0; e < kMaxDimPerLane; ++e) {
      const int d = lane + e * 32;
      if (d < hd) out[i * a.out_row_stride + d] = from_float<T>(O[rr][e] * inv);
    }
    if (a.lse && lane == 0) a.lse[(int64_t(b) * a.NH + h) * a.Tq + i] = m[rr] + logf(l[rr]);
  }
}

// D[b, h, t] = sum_d dout * out (one warp per row).
template <typename T>
__global__ void attention_backward_rowdot(float* D, const T* out, const T* dout, int B, int NH, int hd, int64_t T_) {
  const int64_t row = blockIdx.x * int64_t(kWarps) + threadIdx.x / 32;  // over (b, h, t)
  const int lane = threadIdx.x % 32;
  if (row >= int64_t(B) * NH * T_) return;
  const int64_t t = row % T_, bh = row / T_;
  const int64_t h = bh % NH, b = bh / NH;
  const int64_t C = int64_t(NH) * hd;
  const T* o = out + (b * T_ + t) * C + h * hd;
  const T* g = dout + (b * T_ + t) * C + h * hd;
  float acc = 0.0f;
  for (int d = lane; d < hd; d += 32) acc += to_float(o[d]) * to_float(g[d]);
  acc = warp_sum(acc);
  if (lane == 0) D[row] = acc;
}

// The same with 16-byte packs (every row and head 16-byte aligned: hd and C multiples of the pack):
// a block takes `rows` consecutive tokens of one batch row, its threads read whole [rows, C] slabs
// of out and dout in packs (coalesced), keep each pack's dot product in shared memory, then sum a
// head's packs per output, so D's writes run along t. One warp per (b, h, t) row read 2-byte
// elements 128 bytes apart and did ~30 instructions of index arithmetic per element pair: 137 us
// for 16384 tokens of hidden 2048 on an H100 (run 17's profile), 30% of its DRAM bandwidth.
template <typename T>
__global__ void __launch_bounds__(256) attention_backward_rowdot_packed(float* D, const T* out, const T* dout, int NH,
                                                                       int hd, int64_t T_, int rows) {
  constexpr int V = Pack<T>::n;
  extern __shared__ float part[];  // [rows][C / V + 1]
  const int packs = NH * hd / V, stride = packs + 1, b = blockIdx.y;
  const int64_t t0 = int64_t(blockIdx.x) * rows, C = int64_t(NH) * hd;
  const int n = rows * packs;
  for (int idx = threadIdx.x; idx < n; idx += blockDim.x) {
    const int r = idx / packs, k = idx - r * packs;
    float acc = 0.0f;
    if (t0 + r < T_) {
      const int64_t off = (b * T_ + t0 + r) * C + int64_t(k) * V;
      const Pack<T> o = *reinterpret_cast<const Pack<T>*>(out + off);
      const Pack<T> g = *reinterpret_cast<const Pack<T>*>(dout + off);
#pragma unroll
      for (int e = 0; e < V; ++e) acc += to_float(o.e[e]) * to_float(g.e[e]);
    }
    part[r * stride + k] = acc;
  }
  __syncthreads();
  const int per_head = hd / V;
  for (int idx = threadIdx.x; idx < NH * rows; idx += blockDim.x) {
    const int h = idx / rows, r = idx - h * rows;
    if (t0 + r >= T_) continue;
    const float* p = part + r * stride + h * per_head;
    float acc = 0.0f;
    for (int k = 0; k < per_head; ++k) acc += p[k];
    D[(int64_t(b) * NH + h) * T_ + t0 + r] = acc;
  }
}

// D for the backward: the packed kernel where the rows allow it, else one warp per row.
template <typename T>
void launch_rowdot(float* D, const T* out, const T* dout, int B, int NH, int hd, int64_t T_, cudaStream_t stream) {
  constexpr int V = Pack<T>::n;
  const int64_t packs = int64_t(NH) * hd / V;
  if (hd % V == 0 && packs <= 8192 && packable(out, dout)) {
    // Up to 32 tokens per block, their partial sums within 32 KiB of shared memory.
    const int rows = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(32, 8192 / (packs + 1))));
    const size_t smem = sizeof(float) * size_t(rows) * size_t(packs + 1);
    const dim3 grid(static_cast<unsigned>(ceil_div(T_, rows)), static_cast<unsigned>(B));
    attention_backward_rowdot_packed<T><<<grid, 256, smem, stream>>>(D, out, dout, NH, hd, T_, rows);
    return;
  }
  const int64_t rows = int64_t(B) * NH * T_;
  attention_backward_rowdot<T><<<static_cast<unsigned>(ceil_div(rows, kWarps)), 256, 0, stream>>>(D, out, dout, B, NH,
                                                                                                  hd, T_);
}

// dK, dV for one key tile: warps own 4 keys, a lane owns one query of the query tile.
template <typename T>
__global__ void __launch_bounds__(256) attention_backward_dkdv(AttentionBackwardArgs a, float scale) {
  extern __shared__ float smem[];
  const int hd = a.hd;
  float* Ks = smem;                    // [32][hd]
  float* Vs = Ks + kTile * hd;         // [32][hd]
  float* Qs = Vs + kTile * hd;         // [32][hd + 1]
  float* dOs = Qs + kTile * (hd + 1);  // [32][hd + 1]
  float* Ls = dOs + kTile * (hd + 1);  // [32]
  float* Ds = Ls + kTile;              // [32]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int b = blockIdx.z, h = blockIdx.y;
  const int64_t T_ = a.T, C = int64_t(a.NH) * hd, ld = 3 * C;
  const int64_t j0 = int64_t(blockIdx.x) * kTile;
  const T* qkv = static_cast<const T*>(a.qkv) + b * T_ * ld + h * hd;
  const T* dout = static_cast<const T*>(a.dout) + b * T_ * C + h * hd;
  const float* lse = a.lse + (int64_t(b) * a.NH + h) * T_;
  const float* Dg = a.scratch + (int64_t(b) * a.NH + h) * T_;
  for (int idx = threadIdx.x; idx < kTile * hd; idx += blockDim.x) {
    const int r = idx / hd, d = idx % hd;
    const bool in = j0 + r < T_;
    Ks[idx] = in ? to_float(qkv[(j0 + r) * ld + C + d]) : 0.0f;
    Vs[idx] = in ? to_float(qkv[(j0 + r) * ld + 2 * C + d]) : 0.0f;
  }
  float dK[kRowsPerWarp][kMaxDimPerLane], dV[kRowsPerWarp][kMaxDimPerLane];
#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; ++rr)
#pragma unroll
    for (int e = 0; e < kMaxDimPerLane; ++e) dK[rr][e] = dV[rr][e] = 0.0f;

  for (int64_t i0 = j0; i0 < T_; i0 += kTile) {
    __syncthreads();
    for (int idx = threadIdx.x; idx < kTile * hd; idx += blockDim.x) {
      const int r = idx / hd, d = idx % hd;
      const bool in = i0 + r < T_;
      Qs[r * (hd + 1) + d] = in ? to_float(qkv[(i0 + r) * ld + d]) : 0.0f;
      dOs[r * (hd + 1) + d] = in ? to_float(dout[(i0 + r) * C + d]) : 0.0f;
    }
    if (threadIdx.x < kTile) {
      const bool in = i0 + threadIdx.x < T_;
      Ls[threadIdx.x] = in ? lse[i0 + threadIdx.x] : 0.0f;
      Ds[threadIdx.x] = in ? Dg[i0 + threadIdx.x] : 0.0f;
    }
    __syncthreads();
    float s[kRowsPerWarp], dp[kRowsPerWarp];
#pragma unroll
    for (int rr = 0; rr < kRowsPerWarp; ++rr) s[rr] = dp[rr] = 0.0f;
    const float* qrow = Qs + lane * (hd + 1);
    const float* orow = dOs + lane * (hd + 1);
    for (int d = 0; d < hd; ++d) {
      const float qd = qrow[d], od = orow[d];
#pragma unroll
      for (int rr = 0; rr < kRowsPerWarp; ++rr) {
        s[rr] += qd * Ks[(warp * kRowsPerWarp + rr) * hd + d];
        dp[rr] += od * Vs[(warp * kRowsPerWarp + rr) * hd + d];
      }
    }
    const int64_t i = i0 + lane;
    float P[kRowsPerWarp], dS[kRowsPerWarp];
#pragma unroll
    for (int rr = 0; rr < kRowsPerWarp; ++rr) {
      const int64_t j = j0 + warp * kRowsPerWarp + rr;
      const bool valid = j <= i && i < T_ && j < T_;
      P[rr] = valid ? expf(s[rr] * scale - Ls[lane]) : 0.0f;
      dS[rr] = P[rr] * (dp[rr] - Ds[lane]);
    }
    for (int r = 0; r < kTile; ++r) {
      float pr[kRowsPerWarp], sr[kRowsPerWarp];
#pragma unroll
      for (int rr = 0; rr < kRowsPerWarp; ++rr) {
        pr[rr] = __shfl_sync(0xffffffffu, P[rr], r);
        sr[rr] = __shfl_sync(0xffffffffu, dS[rr], r);
      }
#pragma unroll
      for (int e = 0; e < kMaxDimPerLane; ++e) {
        if (e * 32 >= hd) break;
        const int d = lane + e * 32;
        const float od = d < hd ? dOs[r * (hd + 1) + d] : 0.0f;
        const float qd = d < hd ? Qs[r * (hd + 1) + d] : 0.0f;
#pragma unroll
        for (int rr = 0; rr < kRowsPerWarp; ++rr) {
          dV[rr][e] += pr[rr] * od;
          dK[rr][e] += sr[rr] * qd;
        }
      }
    }
  }
  T* dqkv = static_cast<T*>(a.dqkv) + b * T_ * ld + h * hd;
#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    const int64_t j = j0 + warp * kRowsPerWarp + rr;
    if (j >= T_) continue;
#pragma unroll
    for (int e = 0; e < kMaxDimPerLane; ++e) {
      const int d = lane + e * 32;
      if (d >= hd) continue;
      dqkv[j * ld + C + d] = from_float<T>(dK[rr][e] * scale);
      dqkv[j * ld + 2 * C + d] = from_float<T>(dV[rr][e]);
    }
  }
}

// dQ for one query tile: warps own 4 queries, a lane owns one key of the key tile.
template <typename T>
__global__ void __launch_bounds__(256) attention_backward_dq(AttentionBackwardArgs a, float scale) {
  extern __shared__ float smem[];
  const int hd = a.hd;
  float* Qs = smem;                   // [32][hd]
  float* dOs = Qs + kTile * hd;       // [32][hd]
  float* Ks = dOs + kTile * hd;       // [32][hd + 1]
  float* Vs = Ks + kTile * (hd + 1);  // [32][hd + 1]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int b = blockIdx.z, h = blockIdx.y;
  const int64_t T_ = a.T, C = int64_t(a.NH) * hd, ld = 3 * C;
  const int64_t i0 = int64_t(gridDim.x - 1 - blockIdx.x) * kTile;
  const T* qkv = static_cast<const T*>(a.qkv) + b * T_ * ld + h * hd;
  const T* dout = static_cast<const T*>(a.dout) + b * T_ * C + h * hd;
  const float* lse = a.lse + (int64_t(b) * a.NH + h) * T_;
  const float* Dg = a.scratch + (int64_t(b) * a.NH + h) * T_;
  for (int idx = threadIdx.x; idx < kTile * hd; idx += blockDim.x) {
    const int r = idx / hd, d = idx % hd;
    const bool in = i0 + r < T_;
    Qs[idx] = in ? to_float(qkv[(i0 + r) * ld + d]) : 0.0f;
    dOs[idx] = in ? to_float(dout[(i0 + r) * C + d]) : 0.0f;
  }
  float L[kRowsPerWarp], Dr[kRowsPerWarp], dQ[kRowsPerWarp][kMaxDimPerLane];
#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    const int64_t i = i0 + warp * kRowsPerWarp + rr;
    L[rr] = i < T_ ? lse[i] : 0.0f;
    Dr[rr] = i < T_ ? Dg[i] : 0.0f;
#pragma unroll
    for (int e = 0; e < kMaxDimPerLane; ++e) dQ[rr][e] = 0.0f;
  }
  const int64_t key_end = min(i0 + kTile, T_);
  for (int64_t j0 = 0; j0 < key_end; j0 += kTile) {
    __syncthreads();
    for (int idx = threadIdx.x; idx < kTile * hd; idx += blockDim.x) {
      const int r = idx / hd, d = idx % hd;
      const bool in = j0 + r < T_;
      Ks[r * (hd + 1) + d] = in ? to_float(qkv[(j0 + r) * ld + C + d]) : 0.0f;
      Vs[r * (hd + 1) + d] = in ? to_float(qkv[(j0 + r) * ld + 2 * C + d]) : 0.0f;
    }
    __syncthreads();
    float s[kRowsPerWarp], dp[kRowsPerWarp];
#pragma unroll
    for (int rr = 0; rr < kRowsPerWarp; ++rr) s[rr] = dp[rr] = 0.0f;
    const float* krow = Ks + lane * (hd + 1);
    const float* vrow = Vs + lane * (hd + 1);
    for (int d = 0; d < hd; ++d) {
      const float kd = krow[d], vd = vrow[d];
#pragma unroll
      for (int rr = 0; rr < kRowsPerWarp; ++rr) {
        s[rr] += Qs[(warp * kRowsPerWarp + rr) * hd + d] * kd;
        dp[rr] += dOs[(warp * kRowsPerWarp + rr) * hd + d] * vd;
      }
    }
    const int64_t j = j0 + lane;
    float dS[kRowsPerWarp];
#pragma unroll
    for (int rr = 0; rr < kRowsPerWarp; ++rr) {
      const int64_t i = i0 + warp * kRowsPerWarp + rr;
      const bool valid = j <= i && i < T_ && j < T_;
      const float P = valid ? expf(s[rr] * scale - L[rr]) : 0.0f;
      dS[rr] = P * (dp[rr] - Dr[rr]);
    }
    for (int c = 0; c < kTile; ++c) {
      float sc[kRowsPerWarp];
#pragma unroll
      for (int rr = 0; rr < kRowsPerWarp; ++rr) sc[rr] = __shfl_sync(0xffffffffu, dS[rr], c);
#pragma unroll
      for (int e = 0; e < kMaxDimPerLane; ++e) {
        if (e * 32 >= hd) break;
        const int d = lane + e * 32;
        const float kd = d < hd ? Ks[c * (hd + 1) + d] : 0.0f;
#pragma unroll
        for (int rr = 0; rr < kRowsPerWarp; ++rr) dQ[rr][e] += sc[rr] * kd;
      }
    }
  }
  T* dqkv = static_cast<T*>(a.dqkv) + b * T_ * ld + h * hd;
#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    const int64_t i = i0 + warp * kRowsPerWarp + rr;
    if (i >= T_) continue;
#pragma unroll
    for (int e = 0; e < kMaxDimPerLane; ++e) {
      const int d = lane + e * 32;
      if (d < hd) dqkv[i * ld + d] = from_float<T>(dQ[rr][e] * scale);
    }
  }
}

// LLM_CUDA_ATTENTION unset (or auto): per pass and head dim, the kernels measured fastest on an
// H100 (docs/gpu-validation.md, run 16: bench-cuda-attention under each choice, hd 48-128 at 4k and
// 16k). Forward: the warp-specialised ping-pong, with three consumer warpgroups (192 query rows) at
// head dim <= 64 (wgmma-ws3: 1.00-1.05x the two-consumer one there; above hd 64 it is the
// two-consumer kernel). Backward: the warp-specialised fused five-product form at every head dim
// (wgmma-ws-atomic: 1.00-1.19x the best other backward in run 16); under LLM_CUDA_DETERMINISTIC=1
// the pipelined seven-product form, which adds no atomics. Off compute capability 9.0 the wgmma
// kernels do not run: tc, without atomics, and for the forward at hd 128 tc-m32 (32 query rows
// per warp: FlashAttention-2's 128 x 64 tile on sm_80; 1.25x tc's forward on an H200 in run 12)
// where the block may opt in to its 104448 bytes (an A100; not the 99 KiB of sm_86/sm_89).
// The wgmma kernels cover head dims 48-128 (sm90a/attention_wgmma.cu); at any other (160) auto is
// tc on sm_90 too: naming a wgmma form there would fall back to tc-atomic's backward for its
// atomics, the slower and non-reproducible one (run 7).
AttentionKernels automatic_kernels(int hd, bool backward) {
  if (wgmma_unavailable()) {
    if (!backward && hd == 128 && smem_optin_limit() >= attention_forward_tc_smem(128, true))
      return AttentionKernels::tc_m32;
    return AttentionKernels::tc;
  }
  if (!wgmma_head_dim(hd)) return AttentionKernels::tc;
  // Backward: the warp-specialised fused form with dQ through shared memory and TMA bulk
  // reductions (run 20, H200: fwd+bwd 1.02-1.26x cuDNN at hd 48-128, seq 2k-16k; the atomic form
  // before it 0.84-1.09x).
  if (backward) return deterministic_kernels() ? AttentionKernels::wgmma : AttentionKernels::wgmma_ws_tma;
  return AttentionKernels::wgmma_ws3;
}


bool forward_tensor_cores(DType t, const AttentionForwardArgs& a, cudaStream_t stream) {
  if (t == DType::f32) return false;
  // The wgmma forms fall back to tc where wgmma does not cover the shape or device.
  const auto wgmma = [&](WgmmaForward form) {
    return attention_forward_wgmma(t, a, stream, form) || attention_forward_tensor_cores(t, a, false, stream);
  };
  switch (attention_kernels_for(a.hd, false)) {
    case AttentionKernels::automatic: break;
    case AttentionKernels::tc:
    case AttentionKernels::tc_atomic: return attention_forward_tensor_cores(t, a, false, stream);
    case AttentionKernels::tc_m32: return attention_forward_tensor_cores(t, a, true, stream);
    case AttentionKernels::wgmma:
    case AttentionKernels::wgmma_atomic:
    case AttentionKernels::wgmma_rs: return wgmma(WgmmaForward::plain);
    case AttentionKernels::wgmma_pp: return wgmma(WgmmaForward::ping_pong);
    case AttentionKernels::wgmma_ws: return wgmma(WgmmaForward::warp_specialized);
    case AttentionKernels::wgmma_ws_pp:
    case AttentionKernels::wgmma_ws_atomic: return wgmma(WgmmaForward::warp_specialized_ping_pong);
    case AttentionKernels::wgmma_ws3:
    case AttentionKernels::wgmma_ws_dqfirst:
    case AttentionKernels::wgmma_ws_tma: return wgmma(WgmmaForward::warp_specialized_3);
    case AttentionKernels::simt: return false;
  }
  return false;
}

bool backward_tensor_cores(DType t, const AttentionBackwardArgs& a, cudaStream_t stream) {
  if (t == DType::f32) return false;
  // The wgmma forms fall back to tc (with atomics for the fused form) where wgmma does not run.
  const auto wgmma = [&](WgmmaBackward form) {
    return attention_backward_wgmma(t, a, stream, form) ||
           attention_backward_tensor_cores(t, a,
                                           form == WgmmaBackward::atomic_dq || form == WgmmaBackward::ws_atomic_dq ||
                                               form == WgmmaBackward::ws_atomic_dq_first ||
                                               form == WgmmaBackward::ws_tma_dq,
                                           stream);
  };
  switch (attention_kernels_for(a.hd, true)) {
    case AttentionKernels::automatic: break;
    case AttentionKernels::tc:
    case AttentionKernels::tc_m32: return attention_backward_tensor_cores(t, a, false, stream);
    case AttentionKernels::tc_atomic: return attention_backward_tensor_cores(t, a, true, stream);
    case AttentionKernels::wgmma:
    case AttentionKernels::wgmma_pp:
    case AttentionKernels::wgmma_ws:
    case AttentionKernels::wgmma_ws_pp:
    case AttentionKernels::wgmma_ws3: return wgmma(WgmmaBackward::separate_dq);
    case AttentionKernels::wgmma_atomic: return wgmma(WgmmaBackward::atomic_dq);
    case AttentionKernels::wgmma_rs: return wgmma(WgmmaBackward::separate_dq_rs);
    case AttentionKernels::wgmma_ws_atomic: return wgmma(WgmmaBackward::ws_atomic_dq);
    case AttentionKernels::wgmma_ws_dqfirst: return wgmma(WgmmaBackward::ws_atomic_dq_first);
    case AttentionKernels::wgmma_ws_tma: return wgmma(WgmmaBackward::ws_tma_dq);
    case AttentionKernels::simt: return false;
  }
  return false;
}

}  // namespace

AttentionKernels attention_kernels() {
  static const AttentionKernels v = [] {
    const char* e = std::getenv("LLM_CUDA_ATTENTION");
    const std::string s = e ? e : "";
    if (s.empty() || s == "auto") return AttentionKernels::automatic;
    if (s == "tc") return AttentionKernels::tc;
    if (s == "tc-atomic") return AttentionKernels::tc_atomic;
    if (s == "tc-m32") return AttentionKernels::tc_m32;
    if (s == "wgmma") return AttentionKernels::wgmma;
    if (s == "wgmma-pp") return AttentionKernels::wgmma_pp;
    if (s == "wgmma-ws") return AttentionKernels::wgmma_ws;
    if (s == "wgmma-ws-pp") return AttentionKernels::wgmma_ws_pp;
    if (s == "wgmma-ws3") return AttentionKernels::wgmma_ws3;
    if (s == "wgmma-atomic") return AttentionKernels::wgmma_atomic;
    if (s == "wgmma-rs") return AttentionKernels::wgmma_rs;
    if (s == "wgmma-ws-atomic") return AttentionKernels::wgmma_ws_atomic;
    if (s == "wgmma-ws-dqfirst") return AttentionKernels::wgmma_ws_dqfirst;
    if (s == "wgmma-ws-tma") return AttentionKernels::wgmma_ws_tma;
    if (s == "simt") return AttentionKernels::simt;
    LLM_FAIL("LLM_CUDA_ATTENTION='", s, "': expected auto, tc, tc-m32, tc-atomic, wgmma, wgmma-pp, wgmma-ws, wgmma-ws-pp, wgmma-ws3, wgmma-atomic, wgmma-rs, wgmma-ws-atomic, wgmma-ws-dqfirst, wgmma-ws-tma or simt");
  }();
  LLM_CHECK(!deterministic_kernels() || !adds_with_atomics(v),
            "LLM_CUDA_ATTENTION='", std::getenv("LLM_CUDA_ATTENTION"),
            "' adds dQ with atomics, which is not bit-reproducible, and LLM_CUDA_DETERMINISTIC=1 asks for "
            "reproducible results: choose another (auto, wgmma, tc, ...) or unset one of the two");
  return v;
}

bool adds_with_atomics(AttentionKernels k) {
  return k == AttentionKernels::tc_atomic || k == AttentionKernels::wgmma_atomic || k == AttentionKernels::wgmma_ws_atomic ||
         k == AttentionKernels::wgmma_ws_dqfirst || k == AttentionKernels::wgmma_ws_tma;
}

namespace {
// The value of the first of `names` that environment variable `var` spells (unset or empty: the
// first name's); anything else is an error naming the variable, its value and `expected`.
int named_setting(const char* var, std::initializer_list<std::pair<const char*, int>> names, const char* expected) {
  const char* e = std::getenv(var);
  const std::string s = e ? e : "";
  if (s.empty()) return names.begin()->second;
  for (const auto& [name, value] : names)
    if (s == name) return value;
  LLM_FAIL(var, "='", s, "': expected ", expected);
}
}  // namespace

bool deterministic_kernels() {
  static const bool v = named_setting("LLM_CUDA_DETERMINISTIC", {{"0", 0}, {"1", 1}},
                                      "1 (bit-reproducible kernels only) or 0") != 0;
  return v;
}

int block_order_setting() {
  static const int v = [] {
    const char* e = std::getenv("LLM_CUDA_BLOCK_ORDER");
    const std::string s = e ? e : "";
    if (s.empty() || s == "heaviest") return 0;
    if (s == "launch") return -1;
    if (s.rfind("heaviest:", 0) == 0) {
      const std::string n = s.substr(9);
      char* end = nullptr;
      const long mib = n.empty() ? 0 : std::strtol(n.c_str(), &end, 10);
      if (end && *end == '\0' && mib >= 1 && mib <= 1024) return static_cast<int>(mib);
    }
    LLM_FAIL("LLM_CUDA_BLOCK_ORDER='", s,
             "': expected heaviest (longest work first across heads, the default), heaviest:N (N MiB of L2 per group of "
             "heads, 1-1024) or launch");
  }();
  return v;
}

int dq_convert_setting() {
  static const int v = named_setting("LLM_CUDA_DQ_CONVERT", {{"kernel", 1}, {"fused", 2}},
                                     "kernel (a conversion kernel after the backward, the default) or fused (inside "
                                     "the warp-specialised atomic backwards)");
  return v;
}

int dq_red_setting() {
  static const int v = named_setting("LLM_CUDA_DQ_RED", {{"v2", 2}, {"v4", 4}},
                                     "v2 (8-byte dQ reductions, the default) or v4 (16-byte ones)");
  return v;
}

AttentionKernels attention_kernels_for(int hd, bool backward) {
  const AttentionKernels k = attention_kernels();
  return k == AttentionKernels::automatic ? automatic_kernels(hd, backward) : k;
}

#ifndef LLM_HAVE_SM90A
// Built without sm_90a (kernels/sm90a/ needs 90 in CMAKE_CUDA_ARCHITECTURES): nothing is covered.
const char* wgmma_unavailable() {
  return "built without the sm_90a kernels (CMAKE_CUDA_ARCHITECTURES has no 90, or CUDA is older than 12.3)";
}
bool attention_forward_wgmma(DType, const AttentionForwardArgs&, cudaStream_t, WgmmaForward) { return false; }
bool attention_backward_wgmma(DType, const AttentionBackwardArgs&, cudaStream_t, WgmmaBackward) { return false; }
bool wgmma_tile_check(DType, int, const void*, const void*, float*, float*, float*, float*, float*, float*,
                      cudaStream_t) {
  return false;
}
#endif

namespace {
// Whether the backward adds dQ into an fp32 accumulator in the scratch for this dtype and head
// dim: the atomic choices on bf16/f16, chosen or picked by auto.
bool atomic_dq(DType t, int hd) { return t != DType::f32 && adds_with_atomics(attention_kernels_for(hd, true)); }
// The accumulator follows D (one float per row) at the next 256-byte boundary: its float2 and
// float4 reductions (LLM_CUDA_DQ_RED=v4) and the fused conversion's 16-byte copies need 8- and
// 16-byte alignment whatever the number of rows.
int64_t dq_accum_offset(int64_t rows) { return (rows + 63) / 64 * 64; }

// The fp32 dQ sums [B, T, C] and, after them, the counters of the fused conversion.
int64_t dq_sums(int B, int NH, int hd, int64_t T) { return int64_t(B) * T * NH * hd; }
int64_t dq_sums_and_counts(int B, int NH, int hd, int64_t T) {
  return dq_sums(B, NH, hd, T) + sm90a::WsDqSignal::counters(B, NH, T);
}
}  // namespace

int64_t attention_backward_scratch(DType t, int B, int NH, int hd, int64_t T, bool with_workspace) {
  const int64_t d = int64_t(B) * NH * T;
  return atomic_dq(t, hd) && !with_workspace ? dq_accum_offset(d) + dq_sums_and_counts(B, NH, hd, T) : d;
}

int64_t attention_backward_workspace(DType t, int B, int NH, int hd, int64_t T) {
  return atomic_dq(t, hd) && dq_convert_setting() == 2 ? dq_sums_and_counts(B, NH, hd, T) : 0;
}

void check_attention_head_dim(int hd, const char* op) {
  LLM_CHECK(hd >= 1 && hd <= kMaxHeadDim, op, ": head dim ", hd, " outside [1, ", kMaxHeadDim, "]");
}

void attention_forward(DType t, const AttentionForwardArgs& a, cudaStream_t stream) {
  check_attention_head_dim(a.hd, "attention_forward");
  if (a.Tq == 0 || a.B == 0) return;
  AttentionForwardArgs tc = a;
  tc.block_order = a.block_order != 0 ? a.block_order : block_order_setting();
  if (forward_tensor_cores(t, tc, stream)) return;
  const float scale = 1.0f / sqrtf(static_cast<float>(a.hd));
  const size_t smem = sizeof(float) * (kTile * a.hd * 2 + kTile * (a.hd + 1));
  const dim3 grid(static_cast<unsigned>(ceil_div(a.Tq, kTile)), static_cast<unsigned>(a.NH), static_cast<unsigned>(a.B));
  dispatch_float(t, "attention_forward", [&](auto tag) {
    using E = decltype(tag);
    allow_smem(attention_forward_simt<E>, smem);
    attention_forward_simt<E><<<grid, 256, smem, stream>>>(a, scale);
  });
}

void attention_backward(DType t, const AttentionBackwardArgs& a, cudaStream_t stream) {
  LLM_CHECK(a.hd >= 1 && a.hd <= kMaxHeadDim, "attention_backward: head dim ", a.hd, " outside [1, ", kMaxHeadDim, "]");
  if (a.T == 0 || a.B == 0) return;
  const float scale = 1.0f / sqrtf(static_cast<float>(a.hd));
  const int64_t rows = int64_t(a.B) * a.NH * a.T;
  const dim3 grid(static_cast<unsigned>(ceil_div(a.T, kTile)), static_cast<unsigned>(a.NH), static_cast<unsigned>(a.B));
  const size_t smem_kv = sizeof(float) * (kTile * a.hd * 2 + kTile * (a.hd + 1) * 2 + 2 * kTile);
  const size_t smem_q = sizeof(float) * (kTile * a.hd * 2 + kTile * (a.hd + 1) * 2);
  dispatch_float(t, "attention_backward", [&](auto tag) {
    using E = decltype(tag);
    launch_rowdot<E>(a.scratch, static_cast<const E*>(a.out), static_cast<const E*>(a.dout), a.B, a.NH, a.hd, a.T,
                     stream);
    AttentionBackwardArgs tc = a;
    tc.block_order = a.block_order != 0 ? a.block_order : block_order_setting();
    if (atomic_dq(t, a.hd)) {
      tc.dq_clean = a.dq_workspace != nullptr;
      tc.dq_accum = tc.dq_clean ? a.dq_workspace : a.scratch + dq_accum_offset(rows);
      // Its 16-byte reductions, copies and TMA map need it; the allocator's blocks are 256-byte aligned.
      LLM_CHECK(reinterpret_cast<uintptr_t>(tc.dq_accum) % 16 == 0, "attention_backward: the dQ sums at ",
                static_cast<const void*>(tc.dq_accum), " (", tc.dq_clean ? "the workspace" : "the scratch",
                ") are not 16-byte aligned");
      tc.dq_count = reinterpret_cast<int*>(tc.dq_accum + dq_sums(a.B, a.NH, a.hd, a.T));
    }
    if (backward_tensor_cores(t, tc, stream)) return;
    allow_smem(attention_backward_dkdv<E>, smem_kv);
    attention_backward_dkdv<E><<<grid, 256, smem_kv, stream>>>(a, scale);
    allow_smem(attention_backward_dq<E>, smem_q);
    attention_backward_dq<E><<<grid, 256, smem_q, stream>>>(a, scale);
  });
}

}  // namespace llm::kernels
