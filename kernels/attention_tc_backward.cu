// Causal flash attention backward on tensor cores (bf16/f16, fp32 accumulate), FlashAttention-2
// with recomputation and no atomics (deterministic), as two kernels that mirror the forward:
//
//   dK/dV: a block owns 64 keys (4 warps x 16) of one (batch, head) and walks the 32-query tiles
//     at and below the diagonal: S^T = K Q^T and dP^T = V dO^T in registers, P^T = exp(S^T - lse),
//     dS^T = P^T (dP^T - D); then dV += P^T dO and dK += dS^T Q with P^T / dS^T packed straight
//     from the accumulators into A fragments and dO / Q read through ldmatrix.trans. (The fused
//     form below also comes 8 warps wide: 128 keys, 64-query tiles.)
//   dQ: a block owns 64 queries (4 warps x 16) and walks the 32-key tiles up to the diagonal:
//     S = Q K^T, dP = dO V^T, dS = P (dP - D), dQ += dS K.
// Tiles stream through shared memory double-buffered with cp.async (dK/dV: the Q, dO, lse and D
// tiles; dQ: the K and V tiles), so the next tile's copy overlaps this tile's tensor work; K/V
// (dK/dV) and Q/dO (dQ) are copied once. Rows past the sequence end are zero-filled by the copy.
// The dQ kernel recomputes S and dP once more instead of accumulating dQ with atomics across key
// tiles (FlashAttention-2's choice): ~40% more tensor work in exchange for bit-reproducible
// gradients (LLM_CUDA_ATTENTION=tc-atomic fuses dQ into the dK/dV kernel with atomics instead:
// see the kernel). D = rowsum(dO * O) is computed first by attention.cu (scratch).
#include "attention.cuh"
#include "block_order.h"
#include "backend/cuda/cuda_check.h"
#include "common.cuh"
#include "kernels.h"
#include "mma.cuh"
#include "sm90a/ws_schedule.h"
#include "tc_dq_split.h"

namespace llm::kernels {

namespace {

constexpr int kThreadsBw = 128;  // the dQ kernel's, and the 4-warp dK/dV kernel's
constexpr float kLog2e = 1.4426950408889634f;

// Issues the copies of an R x HD tile of a [.., row_stride] matrix into shared memory (row
// stride LD) by NT threads; rows at or past `valid` are zero-filled.
template <typename T, int HD, int LD, int R, int NT = kThreadsBw>
__device__ __forceinline__ void load_tile_async(T* dst, const T* src, int64_t row_stride, int64_t valid) {
  copy_tile_async<NT, HD / 8, R>(dst, src, row_stride, valid, PaddedRows<T, LD>{});
}

// The dK/dV kernel's shape: NW warps of 16 keys each (a block owns BC = 16 NW keys) walking query
// tiles of BR rows. 4 x 32 (64 keys): the seven-product form, and the fused one where the wide
// shape does not fit. 8 x 64 (128 keys; the fused form, LLM_CUDA_ATTENTION=tc-atomic, at head
// dims up to 128 where the block may opt in to its shared memory: at hd 128 158,720 bytes, which
// an A100's 166,912 holds and the 99 KiB of sm_86/sm_89 do not): FlashAttention-2's sm_80
// backward tile (kBlockN 128, kBlockM 64, 8 warps). Each Q/dO tile copied feeds twice the keys,
// dQ's product reduces over 128 keys instead of 64 (half the atomic adds per flop), and the block
// meets its three barriers per tile a quarter as often per flop. Per warp the arithmetic is the
// narrow shape's with twice the query columns: P^T and dS^T still go from the accumulators
// straight into the dV/dK products' A fragments (FlashAttention-2 stages both in shared memory).
template <int HD>
constexpr bool tc_backward_wide_available() { return HD <= 128; }  // hd 160: dK/dV alone hold 160 registers
// Dynamic shared memory of the dK/dV kernel: K and V [BC][LD], two stages of Q and dO [BR][LD]
// with their lse and D [BR], and for the fused form dS^T [BC][BR + 8].
template <typename T, int HD, int NW, int BR, bool kDQ>
constexpr size_t dkdv_tc_smem() {
  constexpr size_t LD = HD + 8, BC = 16 * NW;
  return sizeof(T) * (2 * BC + 2 * 2 * BR) * LD + 2 * 2 * BR * sizeof(float) + (kDQ ? sizeof(T) * BC * (BR + 8) : 0);
}
static_assert(dkdv_tc_smem<__nv_bfloat16, 128, 8, 64, true>() <= 166912, "the wide fused backward fits an A100's opt-in at hd 128");

// kDQ (LLM_CUDA_ATTENTION=tc-atomic): the same kernel also computes dQ, FlashAttention-2's way:
// dS^T of the tile goes to shared memory and dQ[tile] += dS K is added into an fp32 accumulator
// with atomics (a.dq_accum, [B, T, C], zeroed before; converted into dqkv after), so the dQ
// kernel and its recomputation of S and dP are not needed (5 products instead of 7), at the price
// of run-to-run bit differences in dQ.
// NW x BR: the shape above (4 x 32, or 8 x 64 with kDQ).
template <typename T, int HD, bool kDQ, int NW = 4, int BR = 32>
__global__ void __launch_bounds__(32 * NW) attention_backward_dkdv_tc(AttentionBackwardArgs a, float scale) {
  constexpr int NT = 32 * NW, BC = 16 * NW, LD = HD + 8, KC = HD / 16, ND = HD / 8;
  // dS^T row stride (BR 32: 80 bytes, 64: 144; 16-byte aligned rows, no ldmatrix bank conflicts)
  constexpr int LDS = BR + 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr int STAGE = 2 * BR * LD * int(sizeof(T)) + 2 * BR * int(sizeof(float));  // bytes: Q, dO, lse, D
  T* Ks = reinterpret_cast<T*>(smem_raw);  // [BC][LD]
  T* Vs = Ks + BC * LD;                    // [BC][LD]
  unsigned char* stages = reinterpret_cast<unsigned char*>(Vs + BC * LD);  // 2 x {Q [BR][LD], dO [BR][LD], lse [BR], D [BR]}
  T* dsT = reinterpret_cast<T*>(stages + 2 * STAGE);                       // kDQ: [BC][LDS]

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4, lm = lane / 8, lr = lane % 8;
  // Heaviest blocks first (block_order.h); Q and dO re-read, and the fp32 dQ sums when fused.
  const auto this_task = [&] { return block_task(a.T * HD * (kDQ ? 8 : 4), a.block_order, kBackwardL2MiB); };
  const BlockTask task = this_task();
  const int b = task.b(a.NH), h = task.h(a.NH);
  const int64_t j0 = int64_t(task.rank) * BC;
  const BackwardHead<T, HD> head(a, b, h);
  const int64_t T_ = head.len, C = head.C, ld = head.ld;
  const T *qkv = head.qkv, *dout = head.dout;
  const float *lse = head.lse, *Dg = head.D;
  const float scale_log2 = scale * kLog2e;

  // Issues the copies of query tile it (rows j0 + it * BR ..) into stage it % 2.
  auto load_q_tile = [&](int64_t it) {
    unsigned char* stage = stages + (it & 1) * STAGE;
    T* Qs = reinterpret_cast<T*>(stage);
    T* dOs = Qs + BR * LD;
    float* Ls = reinterpret_cast<float*>(dOs + BR * LD);
    const int64_t i0 = j0 + it * BR;
    load_tile_async<T, HD, LD, BR, NT>(Qs, qkv + i0 * ld, ld, T_ - i0);
    load_tile_async<T, HD, LD, BR, NT>(dOs, dout + i0 * C, C, T_ - i0);
    if (threadIdx.x < BR) {
      const bool in = i0 + threadIdx.x < T_;
      const int64_t r = in ? i0 + threadIdx.x : 0;
      cp_async_4(Ls + threadIdx.x, lse + r, in);
      cp_async_4(Ls + BR + threadIdx.x, Dg + r, in);
    }
  };
  load_tile_async<T, HD, LD, BC, NT>(Ks, qkv + j0 * ld + C, ld, T_ - j0);
  load_tile_async<T, HD, LD, BC, NT>(Vs, qkv + j0 * ld + 2 * C, ld, T_ - j0);
  load_q_tile(0);
  cp_async_commit();
  const int64_t tiles = (T_ - j0 + BR - 1) / BR;

  float dk[ND][4], dv[ND][4];
#pragma unroll
  for (int nd = 0; nd < ND; ++nd)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[nd][e] = dv[nd][e] = 0.0f;
  const int64_t key0 = j0 + warp * 16 + g;  // this lane's keys: key0 (e < 2) and key0 + 8

  for (int64_t it = 0; it < tiles; ++it) {
    next_tile(it, tiles, load_q_tile);
    const int64_t i0 = j0 + it * BR;
    const bool active = i0 + BR - 1 >= j0 + warp * 16;  // else every query of the tile precedes this warp's keys
    if (!kDQ && !active) continue;
    const unsigned char* stage = stages + (it & 1) * STAGE;
    const T* Qs = reinterpret_cast<const T*>(stage);
    const T* dOs = Qs + BR * LD;
    const float* Ls = reinterpret_cast<const float*>(dOs + BR * LD);  // natural-log lse
    const float* Ds = Ls + BR;

    if (active) {
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
      // P^T and dS^T: rows are keys (key0, key0 + 8), columns are queries. Masked (to p = 0) only
      // on the diagonal tiles and past the end of the sequence.
      const int64_t warp_first_key = j0 + warp * 16;
      if (warp_first_key + 15 > i0 || i0 + BR > T_ || warp_first_key + 15 >= T_)
        mask_outside(flat(st), t, queries_visible(key0, i0, T_, BR), queries_visible(key0 + 8, i0, T_, BR));
#pragma unroll
      for (int nb = 0; nb < BR / 8; ++nb)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int col = nb * 8 + 2 * t + (e & 1);
          const float p = exp2f(fmaf(st[nb][e], scale_log2, -Ls[col] * kLog2e));
          st[nb][e] = p;
          dpt[nb][e] = p * (dpt[nb][e] - Ds[col]);
        }
      if constexpr (kDQ) {  // dS^T (16-bit, as the products use it) for the dQ product below
#pragma unroll
        for (int nb = 0; nb < BR / 8; ++nb) {
          *reinterpret_cast<uint32_t*>(dsT + (warp * 16 + g) * LDS + nb * 8 + 2 * t) = pack2<T>(dpt[nb][0], dpt[nb][1]);
          *reinterpret_cast<uint32_t*>(dsT + (warp * 16 + g + 8) * LDS + nb * 8 + 2 * t) = pack2<T>(dpt[nb][2], dpt[nb][3]);
        }
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
    } else if constexpr (kDQ) {  // no key of this warp sees the tile: its dS^T rows are zero
#pragma unroll
      for (int nb = 0; nb < BR / 8; ++nb) {
        *reinterpret_cast<uint32_t*>(dsT + (warp * 16 + g) * LDS + nb * 8 + 2 * t) = 0u;
        *reinterpret_cast<uint32_t*>(dsT + (warp * 16 + g + 8) * LDS + nb * 8 + 2 * t) = 0u;
      }
    }
    if constexpr (kDQ) {
      // dQ[i0 .. i0 + BR) += dS K over this block's BC keys, split over the warps as TcDqSplit
      // says (tc_dq_split.h: query rows of group qw, the pairs of 16 head-dim columns of pair()).
      __syncthreads();  // every warp's dS^T rows are in shared memory
      using Split = TcDqSplit<NW, BR, HD>;
      constexpr int NP = Split::NP;
      const int qw = Split::query_group(warp);
      float dq[2 * NP][4];
#pragma unroll
      for (int n = 0; n < 2 * NP; ++n) dq[n][0] = dq[n][1] = dq[n][2] = dq[n][3] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < BC / 16; ++kk) {
        uint32_t sa[4];  // A = dS (queries x keys) from the key-major dS^T: ldmatrix.trans
        ldmatrix_x4_trans(sa, dsT + (kk * 16 + lr + (lm / 2) * 8) * LDS + qw * 16 + (lm % 2) * 8);
#pragma unroll
        for (int pp = 0; pp < NP; ++pp) {
          const int p = Split::pair(warp, pp);
          if (p < Split::PAIRS) {
            uint32_t kb[4];
            ldmatrix_x4_trans(kb, Ks + (kk * 16 + lr + (lm % 2) * 8) * LD + p * 16 + (lm / 2) * 8);
            mma_16816<T>(dq[2 * pp], sa, kb[0], kb[1]);
            mma_16816<T>(dq[2 * pp + 1], sa, kb[2], kb[3]);
          }
        }
      }
      // Elements 0, 1 at row(.., 0), columns column(.., 0) and + 1; elements 2, 3 at row(.., 2):
      // the rows and column computed once (a per-element form spills at hd 128: ptxas-tc).
      float* dqa = a.dq_accum + b * T_ * C + int64_t(h) * HD;
      const int64_t q0 = i0 + Split::row(warp, lane, 0), q1 = i0 + Split::row(warp, lane, 2);
#pragma unroll
      for (int pp = 0; pp < NP; ++pp) {
        const int p = Split::pair(warp, pp);
        if (p >= Split::PAIRS) continue;
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int col = Split::column(p, half, lane, 0);
          if (q0 < T_) {
            atomicAdd(dqa + q0 * C + col, dq[2 * pp + half][0]);
            atomicAdd(dqa + q0 * C + col + 1, dq[2 * pp + half][1]);
          }
          if (q1 < T_) {
            atomicAdd(dqa + q1 * C + col, dq[2 * pp + half][2]);
            atomicAdd(dqa + q1 * C + col + 1, dq[2 * pp + half][3]);
          }
        }
      }
    }
  }
  const BlockTask done = this_task();  // again, not kept live (block_order.h)
  T* dqkv = static_cast<T*>(a.dqkv) + done.b(a.NH) * T_ * ld + int64_t(done.h(a.NH)) * HD;
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
  T* kv = dOs + BR * LD;                   // 2 x {K [BC][LD], V [BC][LD]}

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4, lm = lane / 8, lr = lane % 8;
  // Heaviest blocks first (block_order.h); K and V re-read.
  const auto this_task = [&] { return block_task(a.T * HD * 4, a.block_order, kForwardL2MiB); };
  const BlockTask task = this_task();
  const int b = task.b(a.NH), h = task.h(a.NH);
  const int64_t i0 = int64_t(gridDim.x - 1 - task.rank) * BR;
  const BackwardHead<T, HD> head(a, b, h);
  const int64_t T_ = head.len, C = head.C, ld = head.ld;
  const T *qkv = head.qkv, *dout = head.dout;
  const float *lse = head.lse, *Dg = head.D;
  const float scale_log2 = scale * kLog2e;

  // Issues the copies of key tile jt (rows jt * BC ..) into buffer jt % 2.
  auto load_kv = [&](int64_t jt) {
    T* Ks = kv + (jt & 1) * 2 * BC * LD;
    const int64_t j0 = jt * BC;
    load_tile_async<T, HD, LD, BC>(Ks, qkv + j0 * ld + C, ld, T_ - j0);
    load_tile_async<T, HD, LD, BC>(Ks + BC * LD, qkv + j0 * ld + 2 * C, ld, T_ - j0);
  };
  load_tile_async<T, HD, LD, BR>(Qs, qkv + i0 * ld, ld, T_ - i0);
  load_tile_async<T, HD, LD, BR>(dOs, dout + i0 * C, C, T_ - i0);
  load_kv(0);
  cp_async_commit();
  cp_async_wait<0>();
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

  const int64_t tiles = (key_end + BC - 1) / BC;

  for (int64_t jt = 0; jt < tiles; ++jt) {
    next_tile(jt, tiles, load_kv);
    const int64_t j0 = jt * BC;
    if (j0 > warp_first + 15) continue;
    const T* Ks = kv + (jt & 1) * 2 * BC * LD;
    const T* Vs = Ks + BC * LD;

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
    // Masked (to p = 0) only on the diagonal tiles and past the end of the sequence.
    if (j0 + BC - 1 > warp_first || j0 + BC > T_ || warp_first + 15 >= T_)
      mask_past(flat(s), t, keys_visible_end_bwd(row0, j0, T_, BC), keys_visible_end_bwd(row0 + 8, j0, T_, BC));
#pragma unroll
    for (int nb = 0; nb < BC / 8; ++nb)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float p = exp2f(fmaf(s[nb][e], scale_log2, e < 2 ? -L0 : -L1));
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
  const BlockTask done = this_task();  // again, not kept live (block_order.h)
  T* dqkv = static_cast<T*>(a.dqkv) + done.b(a.NH) * T_ * ld + int64_t(done.h(a.NH)) * HD;
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

// dqkv's q part = dq_accum * scale (the atomic variant's last step); zero: the sums are zeroed
// after they are read (a persistent workspace, AttentionBackwardArgs::dq_clean).
template <typename T>
__global__ void dq_from_accum_kernel(T* dqkv, float* acc, int64_t rows, int64_t C, float scale, bool zero) {
  const int64_t n = rows * C;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / C, c = i - r * C;
    dqkv[r * 3 * C + c] = from_float<T>(acc[i] * scale);
    if (zero) acc[i] = 0.0f;
  }
}

// The same in 16-byte packs of dqkv (C a multiple of the pack, both buffers 16-byte aligned, fewer
// than 2^31 packs): per thread and pack, the pack's floats in 16-byte loads and one 16-byte store,
// its row from one 32-bit division. The one-element loop above does a 64-bit division and a
// 2-byte store per element: issue-bound, as the one-warp-per-row D kernel was (137 us for 16384
// tokens of hidden 2048 on an H100, 30% of DRAM bandwidth, before its packed form).
template <typename T>
__global__ void __launch_bounds__(256) dq_from_accum_packed(T* dqkv, float* acc, uint32_t packs, uint32_t row_packs,
                                                            float scale, bool zero) {
  constexpr int V = Pack<T>::n, F = V / 4;  // elements per pack, float4 loads per pack
  const uint32_t stride = gridDim.x * blockDim.x;
  for (uint32_t k = blockIdx.x * blockDim.x + threadIdx.x; k < packs; k += stride) {
    const uint32_t r = k / row_packs, c = k - r * row_packs;
    float4* src = reinterpret_cast<float4*>(acc) + int64_t(k) * F;
    Pack<T> out;
#pragma unroll
    for (int q = 0; q < F; ++q) {
      const float4 v = src[q];
      if (zero) src[q] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      out.e[4 * q] = from_float<T>(v.x * scale);
      out.e[4 * q + 1] = from_float<T>(v.y * scale);
      out.e[4 * q + 2] = from_float<T>(v.z * scale);
      out.e[4 * q + 3] = from_float<T>(v.w * scale);
    }
    // Row r of dqkv starts 3 C = 3 row_packs V elements after row r - 1.
    *reinterpret_cast<Pack<T>*>(dqkv + (int64_t(r) * 3 * row_packs + c) * V) = out;
  }
}

// warps: 0 the wide fused shape where it fits (tc_backward_wide_available, and the block may opt
// in to its shared memory), else the narrow one; 4 or 8 that shape (false when 8 does not fit).
template <typename T, int HD>
bool launch_backward(const AttentionBackwardArgs& a, bool atomic_dq, int warps, cudaStream_t stream) {
  constexpr int LD = HD + 8;
  constexpr size_t smem_kv = dkdv_tc_smem<T, HD, 4, 32, false>(), smem_fused = dkdv_tc_smem<T, HD, 4, 32, true>();
  constexpr size_t smem_wide = dkdv_tc_smem<T, HD, 8, 64, true>();
  constexpr size_t smem_q = sizeof(T) * (2 * 64 + 2 * 2 * 32) * LD;  // Q, dO + 2 K/V buffers
  const bool wide_fits = tc_backward_wide_available<HD>() && smem_optin_limit() >= smem_wide;
  if (warps == 8 && !(atomic_dq && wide_fits)) return false;
  const bool wide = atomic_dq && wide_fits && warps != 4;
  const float scale = 1.0f / sqrtf(static_cast<float>(HD));
  const auto grid = [&](int keys) {
    return dim3(static_cast<unsigned>(ceil_div(a.T, keys)), static_cast<unsigned>(a.NH), static_cast<unsigned>(a.B));
  };
  if (atomic_dq) {
    attention_dq_accum_zero(a, stream);
    if constexpr (tc_backward_wide_available<HD>()) {
      if (wide) {
        allow_smem(attention_backward_dkdv_tc<T, HD, true, 8, 64>, smem_wide);
        attention_backward_dkdv_tc<T, HD, true, 8, 64><<<grid(128), 256, smem_wide, stream>>>(a, scale);
      }
    }
    if (!wide) {
      allow_smem(attention_backward_dkdv_tc<T, HD, true>, smem_fused);
      attention_backward_dkdv_tc<T, HD, true><<<grid(64), kThreadsBw, smem_fused, stream>>>(a, scale);
    }
    attention_dq_from_accum(a, dtype_of_element<T>(), stream);
  } else {
    allow_smem(attention_backward_dkdv_tc<T, HD, false>, smem_kv);
    allow_smem(attention_backward_dq_tc<T, HD>, smem_q);
    attention_backward_dkdv_tc<T, HD, false><<<grid(64), kThreadsBw, smem_kv, stream>>>(a, scale);
    attention_backward_dq_tc<T, HD><<<grid(64), kThreadsBw, smem_q, stream>>>(a, scale);
  }
  return true;
}

template <typename T>
bool backward_for_head_dim(const AttentionBackwardArgs& a, bool atomic_dq, int warps, cudaStream_t stream) {
  bool launched = false;
  with_tc_head_dim(a.hd, [&](auto d) { launched = launch_backward<T, decltype(d)::value>(a, atomic_dq, warps, stream); });
  return launched;
}

}  // namespace

void attention_dq_accum_zero(const AttentionBackwardArgs& a, cudaStream_t stream) {
  if (a.dq_clean) return;  // a persistent workspace, left zero by the last backward
  const size_t n = size_t(a.B) * size_t(a.T) * size_t(a.NH) * size_t(a.hd);
  CUDA_CHECK(cudaMemsetAsync(a.dq_accum, 0, sizeof(float) * n, stream), "zeroing the dQ accumulator (", n, " floats)");
  if (a.dq_count) {  // the fused conversion's counters
    const size_t c = size_t(sm90a::WsDqSignal::counters(a.B, a.NH, a.T));
    CUDA_CHECK(cudaMemsetAsync(a.dq_count, 0, sizeof(int) * c, stream), "zeroing the dQ counters (", c, " ints)");
  }
}

void attention_dq_from_accum(const AttentionBackwardArgs& a, DType t, cudaStream_t stream) {
  const int64_t rows = int64_t(a.B) * a.T, C = int64_t(a.NH) * a.hd;
  const float scale = 1.0f / sqrtf(static_cast<float>(a.hd));
  dispatch_float(t, "attention_dq_from_accum", [&](auto tag) {
    using E = decltype(tag);
    constexpr int V = Pack<E>::n;
    E* dqkv = static_cast<E*>(a.dqkv);
    if (C % V == 0 && rows * (C / V) < (int64_t(1) << 31) && packable(dqkv, a.dq_accum)) {
      const int64_t packs = rows * (C / V);
      dq_from_accum_packed<E>
          <<<grid_for(packs), 256, 0, stream>>>(dqkv, a.dq_accum, uint32_t(packs), uint32_t(C / V), scale, a.dq_clean);
      return;
    }
    dq_from_accum_kernel<E><<<grid_for(rows * C), 256, 0, stream>>>(dqkv, a.dq_accum, rows, C, scale, a.dq_clean);
  });
}

size_t attention_backward_tc_wide_smem(int hd) {
  size_t bytes = 0;
  with_tc_head_dim(hd, [&](auto d) {
    constexpr int HD = decltype(d)::value;
    if constexpr (tc_backward_wide_available<HD>()) bytes = dkdv_tc_smem<__nv_bfloat16, HD, 8, 64, true>();  // f16: the same
  });
  return bytes;
}

bool attention_backward_tensor_cores(DType t, const AttentionBackwardArgs& a, bool atomic_dq, cudaStream_t stream,
                                     int warps) {
  if (!attention_rows_aligned(a)) return false;  // 16-byte copies and stores
  if (atomic_dq && !a.dq_accum) return false;
  if (t == DType::bf16) return backward_for_head_dim<__nv_bfloat16>(a, atomic_dq, warps, stream);
  if (t == DType::f16) return backward_for_head_dim<__half>(a, atomic_dq, warps, stream);
  return false;
}

}  // namespace llm::kernels
