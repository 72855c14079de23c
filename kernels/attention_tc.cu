// Causal flash attention forward on tensor cores (bf16/f16 in, fp32 accumulate), the
// FlashAttention-2 algorithm with mma.sync m16n8k16 (sm_80 and sm_90):
//
//   * one block = 64 queries of one (batch, head), 4 warps x 16 query rows; heaviest tiles first
//     (8 warps, 128 queries, measured 5-20% slower on an H200 and was dropped; 4 warps x 32 rows
//     is LLM_CUDA_ATTENTION=tc-m32, see the kernel);
//   * the Q tile is loaded once into registers as A fragments (ldmatrix), staged through the
//     second K/V buffer;
//   * K/V tiles (64 keys, 32 for head dim 160) are double-buffered in shared memory with cp.async:
//     tile j + 1 is in flight while tile j is computed (rows padded by 16 bytes, so ldmatrix is
//     conflict-free; rows past the sequence end are zero-filled by the copy);
//   * for each key tile up to the diagonal: S = Q K^T in fp32
//     registers, causal mask only on tiles that cross the diagonal or the sequence end, online
//     softmax in the exp2 domain (row max/sum reduced over the 4 lanes of a quad), P packed to
//     16-bit A fragments straight from the accumulators, O += P V with V through ldmatrix.trans;
//   * O / l written once, lse = m + log l saved for the backward.
// Memory is O(tile): no T x T matrix, so sequence length is only bounded by the grid.
// The SIMT kernel in attention.cu has the same tile walk in fp32 and is the host-model port;
// this kernel is checked against it and the CPU op (tests/backend/cuda_backend_test.cpp).
#include <cfloat>

#include "attention.cuh"
#include "block_order.h"
#include "backend/cuda/cuda_check.h"
#include "common.cuh"
#include "kernels.h"
#include "mma.cuh"

namespace llm::kernels {

namespace {

// MT m-tiles of 16 query rows per warp. MT = 1 (default): Q stays in registers as A fragments.
// MT = 2 (LLM_CUDA_ATTENTION=tc-m32): 32 rows per warp, FlashAttention-2's shape for head dims up
// to 128; each K/V fragment read from shared memory feeds two products, and Q's fragments are
// read from its own shared-memory tile per k-chunk (there are not registers for both).
template <typename T, int HD, int BC, int NW, int MT>
__global__ void __launch_bounds__(32 * NW) attention_forward_tc(AttentionForwardArgs a, float scale_log2) {
  constexpr int BR = 16 * MT * NW, NT = 32 * NW;
  constexpr int LD = HD + 8;   // shared-memory row stride in elements (+16 bytes: no ldmatrix bank conflicts)
  constexpr int KC = HD / 16;  // k-chunks of the Q K^T product
  constexpr int NB = BC / 8;   // n-blocks of S
  constexpr int ND = HD / 8;   // n-blocks of O
  constexpr int CH = HD / 8;   // 16-byte chunks per row
  constexpr bool kQRegs = MT == 1;
  constexpr int QOFF = kQRegs ? 0 : BR * LD;  // MT = 2: the Q tile has its own region before the K/V buffers
  static_assert(!kQRegs || BR <= 2 * BC, "the Q tile is staged in one K/V buffer (2 * BC rows)");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* const smem = reinterpret_cast<T*>(smem_raw);  // [Q [BR][LD] (MT = 2)][2 buffers][K | V][BC][LD]

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int lm = lane / 8, lr = lane % 8;  // ldmatrix: which 8x8 matrix this lane addresses, and its row
  const int64_t Tk = a.q_pos0 + a.Tq;
  const BlockTask task = block_task(Tk * HD * 4, a.block_order, kForwardL2MiB);  // heaviest blocks first (block_order.h); K and V re-read
  const int b = task.b(a.NH), h = task.h(a.NH);
  const int64_t i0 = int64_t(gridDim.x - 1 - task.rank) * BR;
  const T* q = static_cast<const T*>(a.q) + b * a.q_batch_stride + int64_t(h) * HD;
  const T* k = static_cast<const T*>(a.k) + b * a.kv_batch_stride + int64_t(h) * HD;
  const T* v = static_cast<const T*>(a.v) + b * a.kv_batch_stride + int64_t(h) * HD;

  // Issues the copies of key tile jt (rows jt * BC ..) into buffer jt % 2.
  // (K and V in one loop: two copy_tile_async calls cost registers here, up to spills.)
  auto load_kv = [&](int64_t jt) {
    T* Ks = smem + QOFF + (jt & 1) * 2 * BC * LD;
    T* Vs = Ks + BC * LD;
    const int64_t j0 = jt * BC;
    for (int idx = threadIdx.x; idx < BC * CH; idx += NT) {
      const int r = idx / CH, c = idx % CH;
      const bool ok = j0 + r < Tk;
      const int64_t row = ok ? j0 + r : 0;
      cp_async_16(Ks + r * LD + c * 8, k + row * a.kv_row_stride + c * 8, ok);
      cp_async_16(Vs + r * LD + c * 8, v + row * a.kv_row_stride + c * 8, ok);
    }
  };

  // Prologue: the Q tile (MT = 1: into buffer 1) and key tile 0 (buffer 0), one group.
  T* Qs = kQRegs ? smem + 2 * BC * LD : smem;
  copy_tile_async<NT, CH, BR>(Qs, q + i0 * a.q_row_stride, a.q_row_stride, a.Tq - i0, PaddedRows<T, LD>{});
  load_kv(0);
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();
  uint32_t qf[kQRegs ? KC : 1][4];
  if constexpr (kQRegs) {
#pragma unroll
    for (int kc = 0; kc < KC; ++kc)
      ldmatrix_x4(qf[kc], Qs + (warp * 16 + lr + (lm % 2) * 8) * LD + kc * 16 + (lm / 2) * 8);
  }

  float o[MT][ND][4];
  float m0[MT], m1[MT], l0[MT], l1[MT];  // rows g and g + 8 of each m-tile (per-lane partial l)
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int nd = 0; nd < ND; ++nd) o[mt][nd][0] = o[mt][nd][1] = o[mt][nd][2] = o[mt][nd][3] = 0.0f;
    m0[mt] = m1[mt] = -INFINITY, l0[mt] = l1[mt] = 0.0f;
  }
  const int64_t warp_row0 = i0 + warp * 16 * MT;  // first query row of this warp
  const int64_t warp_first_q = a.q_pos0 + warp_row0;
  const int64_t key_end = min(a.q_pos0 + min(i0 + BR, a.Tq), Tk);
  // The tile counter in 32 bits (a sequence of 2^31 tiles is out of reach): 64-bit counters cost
  // registers, and with them spills (ptxas: 44 bytes at MT = 1, hd 48 on sm_90).
  const int tiles = static_cast<int>((key_end + BC - 1) / BC);

  for (int jt = 0; jt < tiles; ++jt) {
    next_tile(jt, tiles, load_kv);  // (MT = 1: the first copy overwrites the Q staging)
    const int64_t j0 = jt * BC;  // < key_end: no overflow in 32 bits
    if (j0 > warp_first_q + 16 * MT - 1) continue;  // every key of the tile is in this warp's future
    const T* Ks = smem + QOFF + (jt & 1) * 2 * BC * LD;
    const T* Vs = Ks + BC * LD;

    float s[MT][NB][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nb = 0; nb < NB; ++nb) s[mt][nb][0] = s[mt][nb][1] = s[mt][nb][2] = s[mt][nb][3] = 0.0f;
#pragma unroll
    for (int kc = 0; kc < KC; ++kc) {
      uint32_t qa[MT][4];
      if constexpr (!kQRegs) {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
          ldmatrix_x4(qa[mt], Qs + (warp * 16 * MT + mt * 16 + lr + (lm % 2) * 8) * LD + kc * 16 + (lm / 2) * 8);
      }
#pragma unroll
      for (int nb2 = 0; nb2 < NB / 2; ++nb2) {
        uint32_t kb[4];
        ldmatrix_x4(kb, Ks + (nb2 * 16 + lr + (lm / 2) * 8) * LD + kc * 16 + (lm % 2) * 8);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          const uint32_t(&af)[4] = kQRegs ? qf[kQRegs ? kc : 0] : qa[mt];
          mma_16816<T>(s[mt][2 * nb2], af, kb[0], kb[1]);
          mma_16816<T>(s[mt][2 * nb2 + 1], af, kb[2], kb[3]);
        }
      }
    }

#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      const int64_t tile_first_q = warp_first_q + mt * 16;
      const int64_t qpos0 = tile_first_q + g, qpos1 = qpos0 + 8;
      // Only the diagonal and the last, partial tile mask; the raw scores' row maxima (the scale,
      // positive, is folded into the exponent's FMA).
      const bool need_mask = j0 + BC - 1 > tile_first_q || j0 + BC > Tk;
      if constexpr (MT == 1) {
        if (need_mask)
          mask_past(flat(s[mt]), t, keys_visible_end(qpos0, j0, Tk, BC), keys_visible_end(qpos1, j0, Tk, BC));
      } else {
        // 32 rows per warp: the same int32 limits, applied to every tile (BC where nothing is
        // masked) instead of behind a tile-level branch. ptxas (CUDA 13.0), spill bytes at hd 128 /
        // 96 / 80 / 64 on sm_80: 44 / 0 / 0 / 0 this way, 104 / 32 / 0 / 0 behind the branch, and
        // 152 / 100 / 160 / 60 for the per-element int64 compares used until 2026-11-27 (sm_90:
        // 56 / 0 / 12 / 0 against 204 / 176 / 76 / 0).
        const int end0 = need_mask ? keys_visible_end(qpos0, j0, Tk, BC) : BC;
        const int end1 = need_mask ? keys_visible_end(qpos1, j0, Tk, BC) : BC;
        mask_past(flat(s[mt]), t, end0, end1);
      }
      float mx0 = -INFINITY, mx1 = -INFINITY;
      row_max(flat(s[mt]), mx0, mx1);
      const float mn0 = fmaxf(m0[mt], mx0 * scale_log2), mn1 = fmaxf(m1[mt], mx1 * scale_log2);
      const float base0 = mn0 == -INFINITY ? 0.0f : mn0, base1 = mn1 == -INFINITY ? 0.0f : mn1;
      const float c0 = exp2f(m0[mt] - base0), c1 = exp2f(m1[mt] - base1);
      m0[mt] = mn0, m1[mt] = mn1;
      float sum0 = 0.0f, sum1 = 0.0f;
#pragma unroll
      for (int nb = 0; nb < NB; ++nb) {
        s[mt][nb][0] = exp2f(fmaf(s[mt][nb][0], scale_log2, -base0));
        s[mt][nb][1] = exp2f(fmaf(s[mt][nb][1], scale_log2, -base0));
        s[mt][nb][2] = exp2f(fmaf(s[mt][nb][2], scale_log2, -base1));
        s[mt][nb][3] = exp2f(fmaf(s[mt][nb][3], scale_log2, -base1));
        sum0 += s[mt][nb][0] + s[mt][nb][1];
        sum1 += s[mt][nb][2] + s[mt][nb][3];
      }
      l0[mt] = l0[mt] * c0 + sum0;
      l1[mt] = l1[mt] * c1 + sum1;
#pragma unroll
      for (int nd = 0; nd < ND; ++nd) {
        o[mt][nd][0] *= c0, o[mt][nd][1] *= c0;
        o[mt][nd][2] *= c1, o[mt][nd][3] *= c1;
      }
    }
#pragma unroll
    for (int kk = 0; kk < BC / 16; ++kk) {
      uint32_t pa[MT][4];  // P of the 16-key chunk as 16-bit A fragments, straight from the accumulators
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        pa[mt][0] = pack2<T>(s[mt][2 * kk][0], s[mt][2 * kk][1]);
        pa[mt][1] = pack2<T>(s[mt][2 * kk][2], s[mt][2 * kk][3]);
        pa[mt][2] = pack2<T>(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
        pa[mt][3] = pack2<T>(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
      }
#pragma unroll
      for (int nd2 = 0; nd2 < ND / 2; ++nd2) {
        uint32_t vb[4];
        ldmatrix_x4_trans(vb, Vs + (kk * 16 + lr + (lm % 2) * 8) * LD + nd2 * 16 + (lm / 2) * 8);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma_16816<T>(o[mt][2 * nd2], pa[mt], vb[0], vb[1]);
          mma_16816<T>(o[mt][2 * nd2 + 1], pa[mt], vb[2], vb[3]);
        }
      }
    }
  }

  T* out = static_cast<T*>(a.out) + b * a.out_batch_stride + int64_t(h) * HD;
  constexpr float kLn2 = 0.6931471805599453f;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    float L0 = l0[mt], L1 = l1[mt];
#pragma unroll
    for (int off = 1; off <= 2; off <<= 1) {
      L0 += __shfl_xor_sync(0xffffffffu, L0, off);
      L1 += __shfl_xor_sync(0xffffffffu, L1, off);
    }
    const float inv0 = L0 > 0.0f ? 1.0f / L0 : 0.0f, inv1 = L1 > 0.0f ? 1.0f / L1 : 0.0f;
    const int64_t row0 = warp_row0 + mt * 16 + g;  // query index of row g
    if (row0 < a.Tq) {
#pragma unroll
      for (int nd = 0; nd < ND; ++nd)
        *reinterpret_cast<uint32_t*>(out + row0 * a.out_row_stride + nd * 8 + 2 * t) =
            pack2<T>(o[mt][nd][0] * inv0, o[mt][nd][1] * inv0);
      if (a.lse && t == 0) a.lse[(int64_t(b) * a.NH + h) * a.Tq + row0] = (m0[mt] + log2f(L0)) * kLn2;
    }
    if (row0 + 8 < a.Tq) {
#pragma unroll
      for (int nd = 0; nd < ND; ++nd)
        *reinterpret_cast<uint32_t*>(out + (row0 + 8) * a.out_row_stride + nd * 8 + 2 * t) =
            pack2<T>(o[mt][nd][2] * inv1, o[mt][nd][3] * inv1);
      if (a.lse && t == 0) a.lse[(int64_t(b) * a.NH + h) * a.Tq + row0 + 8] = (m1[mt] + log2f(L1)) * kLn2;
    }
  }
}

constexpr int kForwardWarps = 4;
template <int HD>
constexpr int forward_key_tile() { return HD <= 128 ? 64 : 32; }
// Two K/V buffers of 16-bit elements (MT = 1 stages the Q tile in one of them; MT = 2 keeps it in
// its own region).
template <int HD, int MT>
constexpr size_t forward_smem() {
  return 2 * (4 * forward_key_tile<HD>() + (MT == 1 ? 0 : 16 * MT * kForwardWarps)) * (HD + 8);
}
static_assert(forward_smem<128, 2>() == 104448 && forward_smem<160, 1>() == 43008, "the documented sizes");

template <typename T, int HD, int MT>
void launch(const AttentionForwardArgs& a, cudaStream_t stream) {
  static_assert(sizeof(T) == 2, "16-bit elements");
  constexpr int NW = kForwardWarps, BC = forward_key_tile<HD>(), BR = 16 * MT * NW;
  constexpr size_t smem = forward_smem<HD, MT>();
  allow_smem(attention_forward_tc<T, HD, BC, NW, MT>, smem);
  const float scale_log2 = 1.4426950408889634f / sqrtf(static_cast<float>(HD));
  const dim3 grid(static_cast<unsigned>(ceil_div(a.Tq, BR)), static_cast<unsigned>(a.NH), static_cast<unsigned>(a.B));
  attention_forward_tc<T, HD, BC, NW, MT><<<grid, 32 * NW, smem, stream>>>(a, scale_log2);
}

template <typename T>
bool launch_for_head_dim(const AttentionForwardArgs& a, bool m32, cudaStream_t stream) {
  return with_tc_head_dim(a.hd, [&](auto d) {
    constexpr int HD = decltype(d)::value;
    if constexpr (HD == 160) launch<T, HD, 1>(a, stream);  // 32 rows per warp: not registers enough
    else m32 ? launch<T, HD, 2>(a, stream) : launch<T, HD, 1>(a, stream);
  });
}

}  // namespace

size_t attention_forward_tc_smem(int hd, bool m32) {
  size_t bytes = 0;
  with_tc_head_dim(hd, [&](auto d) {
    constexpr int HD = decltype(d)::value;
    if constexpr (HD == 160) bytes = forward_smem<HD, 1>();  // one row block per warp only (launch_for_head_dim)
    else bytes = m32 ? forward_smem<HD, 2>() : forward_smem<HD, 1>();
  });
  return bytes;
}

bool attention_forward_tensor_cores(DType t, const AttentionForwardArgs& a, bool m32, cudaStream_t stream) {
  if (!attention_rows_aligned(a)) return false;  // 16-byte copies and stores
  if (t == DType::bf16) return launch_for_head_dim<__nv_bfloat16>(a, m32, stream);
  if (t == DType::f16) return launch_for_head_dim<__half>(a, m32, stream);
  return false;
}

}  // namespace llm::kernels
