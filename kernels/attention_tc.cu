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

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

}  // namespace

bool attention_forward_tensor_cores(DType t, const AttentionForwardArgs& a, cudaStream_t stream) {
  // 16-byte vector loads/stores: every row start must be 16-byte aligned.
  const bool aligned = aligned16(a.q) && aligned16(a.k) && aligned16(a.v) && aligned16(a.out) &&
                       a.q_row_stride % 8 == 0 && a.kv_row_stride % 8 == 0 && a.out_row_stride % 8 == 0 &&
                       a.q_batch_stride % 8 == 0 && a.kv_batch_stride % 8 == 0 && a.out_batch_stride % 8 == 0;
  if (!aligned) return false;
  if (t == DType::bf16) return launch_for_head_dim<__nv_bfloat16>(a, stream);
  if (t == DType::f16) return launch_for_head_dim<__half>(a, stream);
  return false;
}

}  // namespace llm::kernels
