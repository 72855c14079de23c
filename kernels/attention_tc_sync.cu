// The first tensor-core attention kernels (forward and backward), with synchronous tile loads:
// each K/V (forward, dQ) or Q/dO (dK/dV) tile is read from global memory into registers and
// stored to shared memory between two barriers, so no load overlaps the tensor-core work. The
// default kernels (attention_tc.cu, attention_tc_backward.cu) are the same tile walks with
// cp.async double buffering; these stay as the reference they are checked and benchmarked
// against (LLM_CUDA_ATTENTION=tc-sync).
//
// Forward, as first written:
// Causal flash attention forward on tensor cores (bf16/f16 in, fp32 accumulate), the
// FlashAttention-2 algorithm with mma.sync m16n8k16 (sm_80 and sm_90):
//
//   * one block = 64 queries of one (batch, head), 4 warps x 16 query rows; heaviest tiles first;
//   * the Q tile is loaded once into registers as A fragments (ldmatrix);
//   * for each key tile (64 keys, 32 for head dim 160) up to the diagonal: K and V go to shared
//     memory (rows padded by 16 bytes, so ldmatrix is conflict-free), S = Q K^T in fp32
//     registers, causal mask only on tiles that cross the diagonal or the sequence end, online
//     softmax in the exp2 domain (row max/sum reduced over the 4 lanes of a quad), P packed to
//     16-bit A fragments straight from the accumulators, O += P V with V through ldmatrix.trans;
//   * O / l written once, lse = m + log l saved for the backward.
// Memory is O(tile): no T x T matrix, so sequence length is only bounded by the grid.
// The SIMT kernel in attention.cu has the same tile walk in fp32 and is the host-model port;
// this kernel is checked against it and the CPU op (tests/backend/cuda_backend_test.cpp).
//
// Backward, as first written:
// Causal flash attention backward on tensor cores (bf16/f16, fp32 accumulate), FlashAttention-2
// with recomputation and no atomics (deterministic), as two kernels that mirror the forward:
//
//   dK/dV: a block owns 64 keys (4 warps x 16) of one (batch, head) and walks the 32-query tiles
//     at and below the diagonal: S^T = K Q^T and dP^T = V dO^T in registers, P^T = exp(S^T - lse),
//     dS^T = P^T (dP^T - D); then dV += P^T dO and dK += dS^T Q with P^T / dS^T packed straight
//     from the accumulators into A fragments and dO / Q read through ldmatrix.trans.
//   dQ: a block owns 64 queries (4 warps x 16) and walks the 32-key tiles up to the diagonal:
//     S = Q K^T, dP = dO V^T, dS = P (dP - D), dQ += dS K.
// The dQ kernel recomputes S and dP once more instead of accumulating dQ with atomics across key
// tiles (FlashAttention-2's choice): ~40% more tensor work in exchange for bit-reproducible
// gradients. D = rowsum(dO * O) is computed first by attention.cu (scratch).
#include <cfloat>

#include "backend/cuda/cuda_check.h"
#include "common.cuh"
#include "kernels.h"
#include "mma.cuh"

namespace llm::kernels {

namespace {

constexpr int kBr = 64;
constexpr int kThreadsTc = 128;

template <typename T, int HD, int BC>
__global__ void __launch_bounds__(kThreadsTc) attention_forward_tc(AttentionForwardArgs a, float scale_log2) {
  constexpr int LD = HD + 8;  // shared-memory row stride in elements (+16 bytes: no ldmatrix bank conflicts)
  constexpr int KC = HD / 16;  // k-chunks of the Q K^T product
  constexpr int NB = BC / 8;   // n-blocks of S
  constexpr int ND = HD / 8;   // n-blocks of O
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* Qs = reinterpret_cast<T*>(smem_raw);  // [kBr][LD]
  T* Ks = Qs + kBr * LD;                   // [BC][LD]
  T* Vs = Ks + BC * LD;                    // [BC][LD]

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int lm = lane / 8, lr = lane % 8;  // ldmatrix: which 8x8 matrix this lane addresses, and its row
  const int b = blockIdx.z, h = blockIdx.y;
  const int64_t i0 = int64_t(gridDim.x - 1 - blockIdx.x) * kBr;
  const int64_t Tk = a.q_pos0 + a.Tq;
  const T* q = static_cast<const T*>(a.q) + b * a.q_batch_stride + int64_t(h) * HD;
  const T* k = static_cast<const T*>(a.k) + b * a.kv_batch_stride + int64_t(h) * HD;
  const T* v = static_cast<const T*>(a.v) + b * a.kv_batch_stride + int64_t(h) * HD;

  // Q tile -> shared -> A fragments in registers.
  for (int idx = threadIdx.x; idx < kBr * (HD / 8); idx += kThreadsTc) {
    const int r = idx / (HD / 8), c = idx % (HD / 8);
    uint4 val = make_uint4(0, 0, 0, 0);
    if (i0 + r < a.Tq) val = *reinterpret_cast<const uint4*>(q + (i0 + r) * a.q_row_stride + c * 8);
    *reinterpret_cast<uint4*>(Qs + r * LD + c * 8) = val;
  }
  __syncthreads();
  uint32_t qf[KC][4];
#pragma unroll
  for (int kc = 0; kc < KC; ++kc)
    ldmatrix_x4(qf[kc], Qs + (warp * 16 + lr + (lm % 2) * 8) * LD + kc * 16 + (lm / 2) * 8);

  float o[ND][4];
#pragma unroll
  for (int nd = 0; nd < ND; ++nd) o[nd][0] = o[nd][1] = o[nd][2] = o[nd][3] = 0.0f;
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;  // rows g and g + 8 (per-lane partial l)
  const int64_t row0 = i0 + warp * 16 + g;                     // query index of row g
  const int64_t qpos0 = a.q_pos0 + row0, qpos1 = qpos0 + 8;
  const int64_t warp_first_q = a.q_pos0 + i0 + warp * 16;
  const int64_t key_end = min(a.q_pos0 + min(i0 + kBr, a.Tq), Tk);

  for (int64_t j0 = 0; j0 < key_end; j0 += BC) {
    __syncthreads();  // everyone is done with the previous K/V tile
    for (int idx = threadIdx.x; idx < BC * (HD / 8); idx += kThreadsTc) {
      const int r = idx / (HD / 8), c = idx % (HD / 8);
      uint4 kv = make_uint4(0, 0, 0, 0), vv = make_uint4(0, 0, 0, 0);
      if (j0 + r < Tk) {
        kv = *reinterpret_cast<const uint4*>(k + (j0 + r) * a.kv_row_stride + c * 8);
        vv = *reinterpret_cast<const uint4*>(v + (j0 + r) * a.kv_row_stride + c * 8);
      }
      *reinterpret_cast<uint4*>(Ks + r * LD + c * 8) = kv;
      *reinterpret_cast<uint4*>(Vs + r * LD + c * 8) = vv;
    }
    __syncthreads();
    if (j0 > warp_first_q + 15) continue;  // every key of the tile is in this warp's future

    float s[NB][4];
#pragma unroll
    for (int nb = 0; nb < NB; ++nb) s[nb][0] = s[nb][1] = s[nb][2] = s[nb][3] = 0.0f;
#pragma unroll
    for (int kc = 0; kc < KC; ++kc)
#pragma unroll
      for (int nb2 = 0; nb2 < NB / 2; ++nb2) {
        uint32_t kb[4];
        ldmatrix_x4(kb, Ks + (nb2 * 16 + lr + (lm / 2) * 8) * LD + kc * 16 + (lm % 2) * 8);
        mma_16816<T>(s[2 * nb2], qf[kc], kb[0], kb[1]);
        mma_16816<T>(s[2 * nb2 + 1], qf[kc], kb[2], kb[3]);
      }

    const bool need_mask = j0 + BC - 1 > warp_first_q || j0 + BC > Tk;
    float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
    for (int nb = 0; nb < NB; ++nb)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float x = s[nb][e] * scale_log2;
        if (need_mask) {
          const int64_t key = j0 + nb * 8 + 2 * t + (e & 1);
          const int64_t qp = e < 2 ? qpos0 : qpos1;
          if (key > qp || key >= Tk) x = -INFINITY;
        }
        s[nb][e] = x;
        if (e < 2) mx0 = fmaxf(mx0, x);
        else mx1 = fmaxf(mx1, x);
      }
#pragma unroll
    for (int off = 1; off <= 2; off <<= 1) {
      mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, off));
      mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, off));
    }
    const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
    const float base0 = mn0 == -INFINITY ? 0.0f : mn0, base1 = mn1 == -INFINITY ? 0.0f : mn1;
    const float c0 = exp2f(m0 - base0), c1 = exp2f(m1 - base1);
    m0 = mn0, m1 = mn1;
    float sum0 = 0.0f, sum1 = 0.0f;
#pragma unroll
    for (int nb = 0; nb < NB; ++nb) {
      s[nb][0] = exp2f(s[nb][0] - base0);
      s[nb][1] = exp2f(s[nb][1] - base0);
      s[nb][2] = exp2f(s[nb][2] - base1);
      s[nb][3] = exp2f(s[nb][3] - base1);
      sum0 += s[nb][0] + s[nb][1];
      sum1 += s[nb][2] + s[nb][3];
    }
    l0 = l0 * c0 + sum0;
    l1 = l1 * c1 + sum1;
#pragma unroll
    for (int nd = 0; nd < ND; ++nd) {
      o[nd][0] *= c0, o[nd][1] *= c0;
      o[nd][2] *= c1, o[nd][3] *= c1;
    }
#pragma unroll
    for (int kk = 0; kk < BC / 16; ++kk) {
      uint32_t pa[4];
      pa[0] = pack2<T>(s[2 * kk][0], s[2 * kk][1]);
      pa[1] = pack2<T>(s[2 * kk][2], s[2 * kk][3]);
      pa[2] = pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      pa[3] = pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
      for (int nd2 = 0; nd2 < ND / 2; ++nd2) {
        uint32_t vb[4];
        ldmatrix_x4_trans(vb, Vs + (kk * 16 + lr + (lm % 2) * 8) * LD + nd2 * 16 + (lm / 2) * 8);
        mma_16816<T>(o[2 * nd2], pa, vb[0], vb[1]);
        mma_16816<T>(o[2 * nd2 + 1], pa, vb[2], vb[3]);
      }
    }
  }

#pragma unroll
  for (int off = 1; off <= 2; off <<= 1) {
    l0 += __shfl_xor_sync(0xffffffffu, l0, off);
    l1 += __shfl_xor_sync(0xffffffffu, l1, off);
  }
  const float inv0 = l0 > 0.0f ? 1.0f / l0 : 0.0f, inv1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
  T* out = static_cast<T*>(a.out) + b * a.out_batch_stride + int64_t(h) * HD;
  constexpr float kLn2 = 0.6931471805599453f;
  if (row0 < a.Tq) {
#pragma unroll
    for (int nd = 0; nd < ND; ++nd)
      *reinterpret_cast<uint32_t*>(out + row0 * a.out_row_stride + nd * 8 + 2 * t) = pack2<T>(o[nd][0] * inv0, o[nd][1] * inv0);
    if (a.lse && t == 0) a.lse[(int64_t(b) * a.NH + h) * a.Tq + row0] = (m0 + log2f(l0)) * kLn2;
  }
  if (row0 + 8 < a.Tq) {
#pragma unroll
    for (int nd = 0; nd < ND; ++nd)
      *reinterpret_cast<uint32_t*>(out + (row0 + 8) * a.out_row_stride + nd * 8 + 2 * t) =
          pack2<T>(o[nd][2] * inv1, o[nd][3] * inv1);
    if (a.lse && t == 0) a.lse[(int64_t(b) * a.NH + h) * a.Tq + row0 + 8] = (m1 + log2f(l1)) * kLn2;
  }
}

template <typename T, int HD>
void launch(const AttentionForwardArgs& a, cudaStream_t stream) {
  constexpr int BC = HD <= 128 ? 64 : 32;
  constexpr size_t smem = sizeof(T) * (kBr + 2 * BC) * (HD + 8);
  static bool configured = false;  // one device per process: set the opt-in once
  if (!configured) {
    if (smem > 48 * 1024)
      CUDA_CHECK(cudaFuncSetAttribute(attention_forward_tc<T, HD, BC>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)), "opting in to shared memory");
    configured = true;
  }
  const float scale_log2 = 1.4426950408889634f / sqrtf(static_cast<float>(HD));
  const dim3 grid(static_cast<unsigned>(ceil_div(a.Tq, kBr)), static_cast<unsigned>(a.NH), static_cast<unsigned>(a.B));
  attention_forward_tc<T, HD, BC><<<grid, kThreadsTc, smem, stream>>>(a, scale_log2);
}

template <typename T>
bool launch_for_head_dim(const AttentionForwardArgs& a, cudaStream_t stream) {
  switch (a.hd) {
    case 48: launch<T, 48>(a, stream); return true;
    case 64: launch<T, 64>(a, stream); return true;
    case 80: launch<T, 80>(a, stream); return true;
    case 96: launch<T, 96>(a, stream); return true;
    case 128: launch<T, 128>(a, stream); return true;
    case 160: launch<T, 160>(a, stream); return true;
    default: return false;
  }
}


}  // namespace

bool attention_forward_tensor_cores_sync(DType t, const AttentionForwardArgs& a, cudaStream_t stream) {
  // 16-byte vector loads/stores: every row start must be 16-byte aligned.
  const bool aligned = aligned16(a.q) && aligned16(a.k) && aligned16(a.v) && aligned16(a.out) &&
                       a.q_row_stride % 8 == 0 && a.kv_row_stride % 8 == 0 && a.out_row_stride % 8 == 0 &&
                       a.q_batch_stride % 8 == 0 && a.kv_batch_stride % 8 == 0 && a.out_batch_stride % 8 == 0;
  if (!aligned) return false;
  if (t == DType::bf16) return launch_for_head_dim<__nv_bfloat16>(a, stream);
  if (t == DType::f16) return launch_for_head_dim<__half>(a, stream);
  return false;
}

// ---- backward ------------------------------------------------------------------------------

namespace {

constexpr int kThreadsBw = 128;
constexpr float kLog2e = 1.4426950408889634f;

// rows x HD tile of a [.., row_stride] matrix into shared memory (row stride LD), zero-filled past `valid`.
template <typename T, int HD, int LD>
__device__ __forceinline__ void load_tile(T* dst, const T* src, int64_t row_stride, int rows, int64_t valid) {
  for (int idx = threadIdx.x; idx < rows * (HD / 8); idx += kThreadsBw) {
    const int r = idx / (HD / 8), c = idx % (HD / 8);
    uint4 v = make_uint4(0, 0, 0, 0);
    if (r < valid) v = *reinterpret_cast<const uint4*>(src + r * row_stride + c * 8);
    *reinterpret_cast<uint4*>(dst + r * LD + c * 8) = v;
  }
}

template <typename T, int HD>
__global__ void __launch_bounds__(kThreadsBw) attention_backward_dkdv_tc(AttentionBackwardArgs a, float scale) {
  constexpr int BC = 64, BR = 32, LD = HD + 8, KC = HD / 16, ND = HD / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* Ks = reinterpret_cast<T*>(smem_raw);  // [BC][LD]
  T* Vs = Ks + BC * LD;                    // [BC][LD]
  T* Qs = Vs + BC * LD;                    // [BR][LD]
  T* dOs = Qs + BR * LD;                   // [BR][LD]
  float* Ls = reinterpret_cast<float*>(dOs + BR * LD);  // [BR] lse in log2 units
  float* Ds = Ls + BR;                                  // [BR]

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4, lm = lane / 8, lr = lane % 8;
  const int b = blockIdx.z, h = blockIdx.y;
  const int64_t T_ = a.T, C = int64_t(a.NH) * HD, ld = 3 * C;
  const int64_t j0 = int64_t(blockIdx.x) * BC;
  const T* qkv = static_cast<const T*>(a.qkv) + b * T_ * ld + int64_t(h) * HD;
  const T* dout = static_cast<const T*>(a.dout) + b * T_ * C + int64_t(h) * HD;
  const float* lse = a.lse + (int64_t(b) * a.NH + h) * T_;
  const float* Dg = a.scratch + (int64_t(b) * a.NH + h) * T_;
  const float scale_log2 = scale * kLog2e;

  load_tile<T, HD, LD>(Ks, qkv + j0 * ld + C, ld, BC, T_ - j0);
  load_tile<T, HD, LD>(Vs, qkv + j0 * ld + 2 * C, ld, BC, T_ - j0);

  float dk[ND][4], dv[ND][4];
#pragma unroll
  for (int nd = 0; nd < ND; ++nd)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[nd][e] = dv[nd][e] = 0.0f;
  const int64_t key0 = j0 + warp * 16 + g;  // this lane's keys: key0 (e < 2) and key0 + 8

  for (int64_t i0 = j0; i0 < T_; i0 += BR) {
    __syncthreads();
    load_tile<T, HD, LD>(Qs, qkv + i0 * ld, ld, BR, T_ - i0);
    load_tile<T, HD, LD>(dOs, dout + i0 * C, C, BR, T_ - i0);
    if (threadIdx.x < BR) {
      const bool in = i0 + threadIdx.x < T_;
      Ls[threadIdx.x] = in ? lse[i0 + threadIdx.x] * kLog2e : 0.0f;
      Ds[threadIdx.x] = in ? Dg[i0 + threadIdx.x] : 0.0f;
    }
    __syncthreads();
    if (i0 + BR - 1 < j0 + warp * 16) continue;  // every query of the tile precedes this warp's keys

    float st[BR / 8][4], dpt[BR / 8][4];
#pragma unroll
    for (int nb = 0; nb < BR / 8; ++nb)
#pragma unroll
      for (int e = 0; e < 4; ++e) st[nb][e] = dpt[nb][e] = 0.0f;
#pragma unroll
    for (int kc = 0; kc < KC; ++kc) {
      uint32_t ka[4], va[4];
      ldmatrix_x4(ka, Ks + (warp * 16 + lr + (lm % 2) * 8) * LD + kc * 16 + (lm / 2) * 8);
      ldmatrix_x4(va, Vs + (warp * 16 + lr + (lm % 2) * 8) * LD + kc * 16 + (lm / 2) * 8);
#pragma unroll
      for (int nb2 = 0; nb2 < BR / 16; ++nb2) {
        uint32_t qb[4], ob[4];
        ldmatrix_x4(qb, Qs + (nb2 * 16 + lr + (lm / 2) * 8) * LD + kc * 16 + (lm % 2) * 8);
        ldmatrix_x4(ob, dOs + (nb2 * 16 + lr + (lm / 2) * 8) * LD + kc * 16 + (lm % 2) * 8);
        mma_16816<T>(st[2 * nb2], ka, qb[0], qb[1]);
        mma_16816<T>(st[2 * nb2 + 1], ka, qb[2], qb[3]);
        mma_16816<T>(dpt[2 * nb2], va, ob[0], ob[1]);
        mma_16816<T>(dpt[2 * nb2 + 1], va, ob[2], ob[3]);
      }
    }
    // P^T and dS^T: rows are keys (key0, key0 + 8), columns are queries.
#pragma unroll
    for (int nb = 0; nb < BR / 8; ++nb)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = nb * 8 + 2 * t + (e & 1);
        const int64_t query = i0 + col, key = e < 2 ? key0 : key0 + 8;
        const bool valid = key <= query && query < T_ && key < T_;
        const float p = valid ? exp2f(st[nb][e] * scale_log2 - Ls[col]) : 0.0f;
        st[nb][e] = p;
        dpt[nb][e] = p * (dpt[nb][e] - Ds[col]);
      }
#pragma unroll
    for (int kk = 0; kk < BR / 16; ++kk) {
      uint32_t pa[4], sa[4];
      pa[0] = pack2<T>(st[2 * kk][0], st[2 * kk][1]);
      pa[1] = pack2<T>(st[2 * kk][2], st[2 * kk][3]);
      pa[2] = pack2<T>(st[2 * kk + 1][0], st[2 * kk + 1][1]);
      pa[3] = pack2<T>(st[2 * kk + 1][2], st[2 * kk + 1][3]);
      sa[0] = pack2<T>(dpt[2 * kk][0], dpt[2 * kk][1]);
      sa[1] = pack2<T>(dpt[2 * kk][2], dpt[2 * kk][3]);
      sa[2] = pack2<T>(dpt[2 * kk + 1][0], dpt[2 * kk + 1][1]);
      sa[3] = pack2<T>(dpt[2 * kk + 1][2], dpt[2 * kk + 1][3]);
#pragma unroll
      for (int nd2 = 0; nd2 < ND / 2; ++nd2) {
        uint32_t ob[4], qb[4];
        ldmatrix_x4_trans(ob, dOs + (kk * 16 + lr + (lm % 2) * 8) * LD + nd2 * 16 + (lm / 2) * 8);
        ldmatrix_x4_trans(qb, Qs + (kk * 16 + lr + (lm % 2) * 8) * LD + nd2 * 16 + (lm / 2) * 8);
        mma_16816<T>(dv[2 * nd2], pa, ob[0], ob[1]);
        mma_16816<T>(dv[2 * nd2 + 1], pa, ob[2], ob[3]);
        mma_16816<T>(dk[2 * nd2], sa, qb[0], qb[1]);
        mma_16816<T>(dk[2 * nd2 + 1], sa, qb[2], qb[3]);
      }
    }
  }
  T* dqkv = static_cast<T*>(a.dqkv) + b * T_ * ld + int64_t(h) * HD;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int64_t key = key0 + half * 8;
    if (key >= T_) continue;
#pragma unroll
    for (int nd = 0; nd < ND; ++nd) {
      *reinterpret_cast<uint32_t*>(dqkv + key * ld + C + nd * 8 + 2 * t) =
          pack2<T>(dk[nd][2 * half] * scale, dk[nd][2 * half + 1] * scale);
      *reinterpret_cast<uint32_t*>(dqkv + key * ld + 2 * C + nd * 8 + 2 * t) =
          pack2<T>(dv[nd][2 * half], dv[nd][2 * half + 1]);
    }
  }
}

template <typename T, int HD>
__global__ void __launch_bounds__(kThreadsBw) attention_backward_dq_tc(AttentionBackwardArgs a, float scale) {
  constexpr int BR = 64, BC = 32, LD = HD + 8, KC = HD / 16, ND = HD / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* Qs = reinterpret_cast<T*>(smem_raw);  // [BR][LD] (staging for the fragments)
  T* dOs = Qs + BR * LD;                   // [BR][LD]
  T* Ks = dOs + BR * LD;                   // [BC][LD]
  T* Vs = Ks + BC * LD;                    // [BC][LD]

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4, lm = lane / 8, lr = lane % 8;
  const int b = blockIdx.z, h = blockIdx.y;
  const int64_t T_ = a.T, C = int64_t(a.NH) * HD, ld = 3 * C;
  const int64_t i0 = int64_t(gridDim.x - 1 - blockIdx.x) * BR;
  const T* qkv = static_cast<const T*>(a.qkv) + b * T_ * ld + int64_t(h) * HD;
  const T* dout = static_cast<const T*>(a.dout) + b * T_ * C + int64_t(h) * HD;
  const float* lse = a.lse + (int64_t(b) * a.NH + h) * T_;
  const float* Dg = a.scratch + (int64_t(b) * a.NH + h) * T_;
  const float scale_log2 = scale * kLog2e;

  load_tile<T, HD, LD>(Qs, qkv + i0 * ld, ld, BR, T_ - i0);
  load_tile<T, HD, LD>(dOs, dout + i0 * C, C, BR, T_ - i0);
  __syncthreads();
  uint32_t qf[KC][4], of[KC][4];
#pragma unroll
  for (int kc = 0; kc < KC; ++kc) {
    ldmatrix_x4(qf[kc], Qs + (warp * 16 + lr + (lm % 2) * 8) * LD + kc * 16 + (lm / 2) * 8);
    ldmatrix_x4(of[kc], dOs + (warp * 16 + lr + (lm % 2) * 8) * LD + kc * 16 + (lm / 2) * 8);
  }
  const int64_t row0 = i0 + warp * 16 + g;  // this lane's queries: row0 (e < 2) and row0 + 8
  const float L0 = row0 < T_ ? lse[row0] * kLog2e : 0.0f, L1 = row0 + 8 < T_ ? lse[row0 + 8] * kLog2e : 0.0f;
  const float D0 = row0 < T_ ? Dg[row0] : 0.0f, D1 = row0 + 8 < T_ ? Dg[row0 + 8] : 0.0f;
  float dq[ND][4];
#pragma unroll
  for (int nd = 0; nd < ND; ++nd) dq[nd][0] = dq[nd][1] = dq[nd][2] = dq[nd][3] = 0.0f;
  const int64_t warp_first = i0 + warp * 16;
  const int64_t key_end = min(i0 + BR, T_);

  for (int64_t j0 = 0; j0 < key_end; j0 += BC) {
    __syncthreads();
    load_tile<T, HD, LD>(Ks, qkv + j0 * ld + C, ld, BC, T_ - j0);
    load_tile<T, HD, LD>(Vs, qkv + j0 * ld + 2 * C, ld, BC, T_ - j0);
    __syncthreads();
    if (j0 > warp_first + 15) continue;

    float s[BC / 8][4], dp[BC / 8][4];
#pragma unroll
    for (int nb = 0; nb < BC / 8; ++nb)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[nb][e] = dp[nb][e] = 0.0f;
#pragma unroll
    for (int kc = 0; kc < KC; ++kc)
#pragma unroll
      for (int nb2 = 0; nb2 < BC / 16; ++nb2) {
        uint32_t kb[4], vb[4];
        ldmatrix_x4(kb, Ks + (nb2 * 16 + lr + (lm / 2) * 8) * LD + kc * 16 + (lm % 2) * 8);
        ldmatrix_x4(vb, Vs + (nb2 * 16 + lr + (lm / 2) * 8) * LD + kc * 16 + (lm % 2) * 8);
        mma_16816<T>(s[2 * nb2], qf[kc], kb[0], kb[1]);
        mma_16816<T>(s[2 * nb2 + 1], qf[kc], kb[2], kb[3]);
        mma_16816<T>(dp[2 * nb2], of[kc], vb[0], vb[1]);
        mma_16816<T>(dp[2 * nb2 + 1], of[kc], vb[2], vb[3]);
      }
#pragma unroll
    for (int nb = 0; nb < BC / 8; ++nb)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t key = j0 + nb * 8 + 2 * t + (e & 1), query = e < 2 ? row0 : row0 + 8;
        const bool valid = key <= query && query < T_ && key < T_;
        const float p = valid ? exp2f(s[nb][e] * scale_log2 - (e < 2 ? L0 : L1)) : 0.0f;
        s[nb][e] = p * (dp[nb][e] - (e < 2 ? D0 : D1));  // dS
      }
#pragma unroll
    for (int kk = 0; kk < BC / 16; ++kk) {
      uint32_t sa[4];
      sa[0] = pack2<T>(s[2 * kk][0], s[2 * kk][1]);
      sa[1] = pack2<T>(s[2 * kk][2], s[2 * kk][3]);
      sa[2] = pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      sa[3] = pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
      for (int nd2 = 0; nd2 < ND / 2; ++nd2) {
        uint32_t kb[4];
        ldmatrix_x4_trans(kb, Ks + (kk * 16 + lr + (lm % 2) * 8) * LD + nd2 * 16 + (lm / 2) * 8);
        mma_16816<T>(dq[2 * nd2], sa, kb[0], kb[1]);
        mma_16816<T>(dq[2 * nd2 + 1], sa, kb[2], kb[3]);
      }
    }
  }
  T* dqkv = static_cast<T*>(a.dqkv) + b * T_ * ld + int64_t(h) * HD;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int64_t row = row0 + half * 8;
    if (row >= T_) continue;
#pragma unroll
    for (int nd = 0; nd < ND; ++nd)
      *reinterpret_cast<uint32_t*>(dqkv + row * ld + nd * 8 + 2 * t) =
          pack2<T>(dq[nd][2 * half] * scale, dq[nd][2 * half + 1] * scale);
  }
}

template <typename T, int HD>
void launch_backward(const AttentionBackwardArgs& a, cudaStream_t stream) {
  constexpr int LD = HD + 8;
  constexpr size_t smem_kv = sizeof(T) * (2 * 64 + 2 * 32) * LD + 2 * 32 * sizeof(float);
  constexpr size_t smem_q = sizeof(T) * (2 * 64 + 2 * 32) * LD;
  static bool configured = false;
  if (!configured) {
    if (smem_kv > 48 * 1024)
      CUDA_CHECK(cudaFuncSetAttribute(attention_backward_dkdv_tc<T, HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem_kv)), "opting in to shared memory");
    if (smem_q > 48 * 1024)
      CUDA_CHECK(cudaFuncSetAttribute(attention_backward_dq_tc<T, HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem_q)), "opting in to shared memory");
    configured = true;
  }
  const float scale = 1.0f / sqrtf(static_cast<float>(HD));
  const dim3 grid(static_cast<unsigned>(ceil_div(a.T, 64)), static_cast<unsigned>(a.NH), static_cast<unsigned>(a.B));
  attention_backward_dkdv_tc<T, HD><<<grid, kThreadsBw, smem_kv, stream>>>(a, scale);
  attention_backward_dq_tc<T, HD><<<grid, kThreadsBw, smem_q, stream>>>(a, scale);
}

template <typename T>
bool backward_for_head_dim(const AttentionBackwardArgs& a, cudaStream_t stream) {
  switch (a.hd) {
    case 48: launch_backward<T, 48>(a, stream); return true;
    case 64: launch_backward<T, 64>(a, stream); return true;
    case 80: launch_backward<T, 80>(a, stream); return true;
    case 96: launch_backward<T, 96>(a, stream); return true;
    case 128: launch_backward<T, 128>(a, stream); return true;
    case 160: launch_backward<T, 160>(a, stream); return true;
    default: return false;
  }
}

}  // namespace

bool attention_backward_tensor_cores_sync(DType t, const AttentionBackwardArgs& a, cudaStream_t stream) {
  const auto aligned = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; };
  // Rows of qkv (3C), out/dout (C) and the head offsets must allow 16-byte vector access.
  if (!aligned(a.qkv) || !aligned(a.dqkv) || !aligned(a.dout) || (int64_t(a.NH) * a.hd) % 8 != 0) return false;
  if (t == DType::bf16) return backward_for_head_dim<__nv_bfloat16>(a, stream);
  if (t == DType::f16) return backward_for_head_dim<__half>(a, stream);
  return false;
}

}  // namespace llm::kernels
