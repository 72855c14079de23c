// Causal flash attention on Hopper warpgroup MMA (wgmma, sm_90a), forward and backward, for head
// dims 48, 64, 80, 96 and 128 in bf16/f16 with fp32 accumulation: LLM_CUDA_ATTENTION=wgmma (160
// stays on the mma.sync kernels: dK and dV alone would hold 160 registers per thread). The
// algorithm is the one of the mma.sync kernels (attention_tc.cu, attention_tc_backward.cu:
// FlashAttention-2, online softmax in the exp2 domain, backward recomputation, no atomics but in
// the opt-in fused backward); what changes is the instruction and the shapes it allows:
//
//   * a block is 2 warpgroups (256 threads); each warpgroup owns 64 rows of the resident tile and
//     issues m64nNk16 products on it, with both operands read by the tensor cores from shared
//     memory ("SS": Q K^T, dO V^T, K Q^T, V dO^T) or A from registers ("RS": P V, dS K, P^T dO,
//     dS^T Q, where P / dS come straight from the previous product's accumulators);
//   * tiles live in shared memory in the swizzled panel layout of wgmma_layout.h, copied with
//     cp.async and double-buffered (next_tile<true>: the copy of tile j + 1 is in flight while
//     tile j is computed), so each tile is copied once and read by every product that needs it,
//     K-major or MN-major;
//   * forward: 128 queries per block, key tiles of 128; dQ: 128 queries, key tiles of 64;
//     dK/dV: 128 keys, query tiles of 64 (S^T and dP^T issued as two groups: P^T is computed while
//     dP^T is still in flight).
// Score products start by overwriting their accumulators (product_ss); causal masks are int32
// per-row limits applied on the diagonal and last tiles only (attention_mask.h). The forward's
// ping-pong form (kPingPong, LLM_CUDA_ATTENTION=wgmma-pp) offsets the two warpgroups within each
// tile. The warp-specialised forward (LLM_CUDA_ATTENTION=wgmma-ws, -ws-pp with the consumers in
// ping-pong) has FlashAttention-3's structure: TMA copies by a producer warpgroup, mbarrier-tracked
// stages, register reallocation, and the next tile's Q K^T issued before this tile's softmax.
// The backward's fused form (LLM_CUDA_ATTENTION=wgmma-atomic) stages dS^T in shared memory and
// adds dQ with atomics from the dK/dV kernel, the warpgroups splitting dQ's columns: five
// products instead of seven, software-pipelined up to hd 64. The seven-product backward is
// software-pipelined (the next tile's scores issued before this tile's gradient products: the dQ
// kernel at every head dim, dK/dV at 48-96, and at 128 its S^T only). The fused form also comes
// warp-specialised (LLM_CUDA_ATTENTION=wgmma-ws-atomic: a TMA producer warpgroup, two consumers at
// 240 registers, not pipelined within a warpgroup: the registers leave no room for it).
//
// Built for sm_90a only (kernels/CMakeLists.txt), so it runs on compute capability 9.0 devices
// (H100, H200); attention.cu falls back to the mma.sync kernels everywhere else.
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <string>
#include <type_traits>
#include <utility>

#include "attention.cuh"
#include "block_order.h"
#include "backend/cuda/cuda_check.h"
#include "common.cuh"
#include "kernels.h"
#include "mma.cuh"
#include "sm90a/tma.cuh"
#include "sm90a/wgmma.cuh"
#include "sm90a/ws_schedule.h"

#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#error "attention_wgmma.cu is compiled for sm_90a only"
#endif

namespace llm::kernels {

namespace {

using namespace sm90a;

constexpr int kThreads = 256;  // two warpgroups
constexpr float kLog2e = 1.4426950408889634f;

// The first 1024-byte aligned address of the dynamic shared memory (swizzled panels need it;
// every launch asks for 1 KiB more than its tiles).
__device__ __forceinline__ unsigned char* align_1024(unsigned char* p) {
  return p + ((1024u - (smem_addr(p) & 1023u)) & 1023u);
}

// Issues the copies of an R x HD tile (rows of `row_stride` elements from src) into the swizzled
// layout at `tile`; rows at or past `valid` are zero-filled (src itself must be addressable).
template <typename T, int R, int HD>
__device__ __forceinline__ void load_swizzled(unsigned char* tile, const T* src, int64_t row_stride, int64_t valid) {
  copy_tile_async<kThreads, HD / 8, R>(tile, src, row_stride, valid,
                                    [](int r, int c) { return swizzled_offset<R, HD>(r, c); });
}

// 16-bit A fragments (k-steps of 16 columns) from an fp32 accumulator of N columns.
template <typename T, int N>
__device__ __forceinline__ void pack_a(uint32_t (&f)[N / 16][4], const float (&d)[N / 2]) {
#pragma unroll
  for (int kk = 0; kk < N / 16; ++kk) {
    f[kk][0] = pack2<T>(d[8 * kk + 0], d[8 * kk + 1]);
    f[kk][1] = pack2<T>(d[8 * kk + 2], d[8 * kk + 3]);
    f[kk][2] = pack2<T>(d[8 * kk + 4], d[8 * kk + 5]);
    f[kk][3] = pack2<T>(d[8 * kk + 6], d[8 * kk + 7]);
  }
}

// The pipelined backward kernels' copies of their streamed tiles (PipeRing, ws_schedule.h; `load`
// issues tile i's cp.async copies into stage PipeRing::stage(i)). pipe_start: the caller has
// issued tile 0 (with what stays for the whole block, one group); tile 1 goes in flight too, and
// tile 0 has landed on return. pipe_advance(it): at iteration it, once every warp is past
// iteration it - 1's products (the first barrier), tile prefetch(it) goes to the stage they read,
// and tile it + 1 has landed on return (next_tile in mma.cuh is the two-stage form, which waits
// for tile it itself).
template <typename F>
__device__ __forceinline__ void pipe_start(int64_t tiles, F&& load) {
  if (tiles > 1) load(1);
  cp_async_commit();
  cp_async_wait<1>();
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
  __syncthreads();
}
template <typename F>
__device__ __forceinline__ void pipe_advance(int64_t it, int64_t tiles, F&& load) {
  __syncthreads();
  if (PipeRing::prefetch(it) < tiles) load(PipeRing::prefetch(it));
  cp_async_commit();
  cp_async_wait<1>();
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
  __syncthreads();
}

// The 16-bit A fragments (k-steps of 16 columns) of rows `row` and row + 8 of an R-row swizzled
// tile, as wgmma's RS form reads them (the layout pack_a writes): quad lane t holds columns
// 16 kk + 2t (+1) and 16 kk + 8 + 2t (+1).
template <int R, int HD>
__device__ __forceinline__ void load_a_fragments(uint32_t (&f)[HD / 16][4], const unsigned char* tile, int row, int t) {
#pragma unroll
  for (int kk = 0; kk < HD / 16; ++kk)
#pragma unroll
    for (int j = 0; j < 4; ++j) f[kk][j] = *reinterpret_cast<const uint32_t*>(tile + a_fragment_offset<R, HD>(row, kk, j, t));
}

// d = A B^T over the HD columns, A from registers (load_a_fragments), B the whole NB-row K-major
// tile at b; the first k-step overwrites d.
template <typename T, int NB, int HD>
__device__ __forceinline__ void product_rs(float (&d)[NB / 2], const uint32_t (&a)[HD / 16][4], uint32_t b) {
  wgmma_rs_kb_overwrite<T, NB>(d, a[0], desc_k_major<NB, HD>(b, 0, 0));
#pragma unroll
  for (int kk = 1; kk < HD / 16; ++kk) wgmma_rs_kb<T, NB>(d, a[kk], desc_k_major<NB, HD>(b, 0, kk));
}

// d = A B^T over the HD columns (both K-major tiles): A rows row_a .. row_a + 63 of the MA-row
// tile at shared address a, B the whole NB-row tile at b. The first k-step overwrites d, so d
// needs no zeroing.
template <typename T, int MA, int NB, int HD>
__device__ __forceinline__ void product_ss(float (&d)[NB / 2], uint32_t a, int row_a, uint32_t b) {
  wgmma_ss_overwrite<T, NB>(d, desc_k_major<MA, HD>(a, row_a, 0), desc_k_major<NB, HD>(b, 0, 0));
#pragma unroll
  for (int kk = 1; kk < HD / 16; ++kk)
    wgmma_ss<T, NB>(d, desc_k_major<MA, HD>(a, row_a, kk), desc_k_major<NB, HD>(b, 0, kk));
}

template <int N>
__device__ __forceinline__ void zero(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) d[i] = 0.0f;
}

// Stores rows `row` and `row + 8` (this lane's two rows of the accumulator) of a 64 x HD result,
// times `scale`, at out + row * ld (row < rows only).
template <typename T, int HD>
__device__ __forceinline__ void store_rows(T* out, int64_t ld, int64_t row, int64_t rows, const float (&d)[HD / 2],
                                           float scale0, float scale1) {
  const int t = threadIdx.x % 4;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int64_t r = row + 8 * half;
    if (r >= rows) continue;
    const float sc = half ? scale1 : scale0;
#pragma unroll
    for (int nd = 0; nd < HD / 8; ++nd)
      *reinterpret_cast<uint32_t*>(out + r * ld + nd * 8 + 2 * t) =
          pack2<T>(d[4 * nd + 2 * half] * sc, d[4 * nd + 2 * half + 1] * sc);
  }
}

// ---- forward ---------------------------------------------------------------------------------

// One key tile's online-softmax step on this lane's raw scores s (rows qpos0 and qpos1 = qpos0 +
// 8, key tile from j0): the causal mask only on the diagonal and the last, partial tile; the
// running maxima m (log2 domain: raw maxima times scale_log2, the positive scale folded into the
// exponent's FMA) and sums l; P = exp2(s scale_log2 - m) left in s; c the factors that rescale
// the earlier output rows.
template <int BC>
__device__ __forceinline__ void online_softmax(float (&s)[BC / 2], int t, int64_t j0, int64_t Tk, int64_t warp_first_q,
                                               int64_t qpos0, int64_t qpos1, float scale_log2, float& m0, float& m1,
                                               float& l0, float& l1, float& c0, float& c1) {
  if (j0 + BC - 1 > warp_first_q || j0 + BC > Tk)
    mask_past(s, t, keys_visible_end(qpos0, j0, Tk, BC), keys_visible_end(qpos1, j0, Tk, BC));
  float mx0 = -INFINITY, mx1 = -INFINITY;
  row_max(s, mx0, mx1);
  const float mn0 = fmaxf(m0, mx0 * scale_log2), mn1 = fmaxf(m1, mx1 * scale_log2);
  const float base0 = mn0 == -INFINITY ? 0.0f : mn0, base1 = mn1 == -INFINITY ? 0.0f : mn1;
  c0 = exp2f(m0 - base0), c1 = exp2f(m1 - base1);
  m0 = mn0, m1 = mn1;
  float sum0 = 0.0f, sum1 = 0.0f;
#pragma unroll
  for (int i = 0; i < BC / 2; ++i) {
    s[i] = exp2f(fmaf(s[i], scale_log2, (i & 2) ? -base1 : -base0));
    if (i & 2) sum1 += s[i];
    else sum0 += s[i];
  }
  l0 = l0 * c0 + sum0;
  l1 = l1 * c1 + sum1;
}

// The end of a forward: this lane's rows row0 and row0 + 8 of O (normalised by the row sums l,
// reduced over the quad here) to out, their log-sum-exp (natural log) to lse when it is wanted.
template <typename T, int HD>
__device__ __forceinline__ void store_forward(const AttentionForwardArgs& a, int b, int h, int64_t row0, int t,
                                              const float (&o)[HD / 2], float m0, float m1, float l0, float l1) {
#pragma unroll
  for (int off = 1; off <= 2; off <<= 1) {
    l0 += __shfl_xor_sync(0xffffffffu, l0, off);
    l1 += __shfl_xor_sync(0xffffffffu, l1, off);
  }
  T* out = static_cast<T*>(a.out) + b * a.out_batch_stride + int64_t(h) * HD;
  store_rows<T, HD>(out, a.out_row_stride, row0, a.Tq, o, l0 > 0.0f ? 1.0f / l0 : 0.0f, l1 > 0.0f ? 1.0f / l1 : 0.0f);
  if (a.lse && t == 0) {
    constexpr float kLn2 = 0.6931471805599453f;
    float* lse = a.lse + (int64_t(b) * a.NH + h) * a.Tq;
    if (row0 < a.Tq) lse[row0] = (m0 + log2f(l0)) * kLn2;
    if (row0 + 8 < a.Tq) lse[row0 + 8] = (m1 + log2f(l1)) * kLn2;
  }
}

// kPingPong (LLM_CUDA_ATTENTION=wgmma-pp): warpgroup 1 issues a tile's Q K^T only once warpgroup
// 0's has completed (named barrier 1), so its products overlap warpgroup 0's softmax and its
// softmax warpgroup 0's P V, instead of both warpgroups computing the softmax while the tensor
// cores idle (FlashAttention-3's ping-pong, here within each tile: the tile barrier realigns them).
template <typename T, int HD, bool kPingPong>
__global__ void __launch_bounds__(kThreads) attention_forward_wgmma(AttentionForwardArgs a, float scale_log2) {
  constexpr int BR = 128, BC = 128;
  constexpr int QBYTES = tile_bytes<BR, HD>(), KVBYTES = tile_bytes<BC, HD>();
  extern __shared__ __align__(16) unsigned char smem_raw[];
  unsigned char* const smem = align_1024(smem_raw);  // [Q][2 buffers][K | V]
  const uint32_t smem_s = smem_addr(smem);

  const int wg = threadIdx.x / 128, warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int64_t Tk = a.q_pos0 + a.Tq;
  const BlockTask task = block_task(Tk * HD * 4, a.block_order, kForwardL2MiB);  // heaviest blocks first; K and V re-read
  const int b = task.b(a.NH), h = task.h(a.NH);
  const int64_t i0 = int64_t(gridDim.x - 1 - task.rank) * BR;
  const T* q = static_cast<const T*>(a.q) + b * a.q_batch_stride + int64_t(h) * HD;
  const T* k = static_cast<const T*>(a.k) + b * a.kv_batch_stride + int64_t(h) * HD;
  const T* v = static_cast<const T*>(a.v) + b * a.kv_batch_stride + int64_t(h) * HD;

  auto load_kv = [&](int64_t jt) {
    unsigned char* Ks = smem + QBYTES + (jt & 1) * 2 * KVBYTES;
    const int64_t j0 = jt * BC;
    load_swizzled<T, BC, HD>(Ks, k + j0 * a.kv_row_stride, a.kv_row_stride, Tk - j0);
    load_swizzled<T, BC, HD>(Ks + KVBYTES, v + j0 * a.kv_row_stride, a.kv_row_stride, Tk - j0);
  };
  load_swizzled<T, BR, HD>(smem, q + i0 * a.q_row_stride, a.q_row_stride, a.Tq - i0);
  load_kv(0);
  cp_async_commit();  // Q and key tile 0: waited for at the first next_tile

  float o[HD / 2];
  zero(o);
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;  // rows g and g + 8 (per-lane partial l)
  const int64_t wg_first_q = a.q_pos0 + i0 + wg * 64, warp_first_q = wg_first_q + warp * 16;
  const int64_t qpos0 = warp_first_q + g, qpos1 = qpos0 + 8;
  const int64_t key_end = min(a.q_pos0 + min(i0 + BR, a.Tq), Tk);
  const int64_t tiles = (key_end + BC - 1) / BC;

  for (int64_t jt = 0; jt < tiles; ++jt) {
    next_tile<true>(jt, tiles, load_kv);
    const int64_t j0 = jt * BC;
    // (Ping-pong: one barrier generation per tile, skipped tiles included; warpgroup 1 never
    // skips a tile warpgroup 0 computes, its queries being later.)
    if (kPingPong && wg == 1) named_barrier_sync(1, kThreads);
    if (j0 > wg_first_q + 63) {  // every key of the tile is in this warpgroup's future
      if (kPingPong && wg == 0) named_barrier_arrive(1, kThreads);
      continue;
    }
    const uint32_t Ks = smem_s + QBYTES + uint32_t(jt & 1) * 2 * KVBYTES, Vs = Ks + KVBYTES;

    float s[BC / 2];
    fence_operands(s);
    wgmma_fence();
    product_ss<T, BR, BC, HD>(s, smem_s, wg * 64, Ks);
    wgmma_commit();
    wgmma_wait<0>();
    fence_operands(s);
    if (kPingPong && wg == 0) named_barrier_arrive(1, kThreads);

    float c0, c1;
    online_softmax<BC>(s, t, j0, Tk, warp_first_q, qpos0, qpos1, scale_log2, m0, m1, l0, l1, c0, c1);
#pragma unroll
    for (int i = 0; i < HD / 2; ++i) o[i] *= (i & 2) ? c1 : c0;

    uint32_t pa[BC / 16][4];
    pack_a<T, BC>(pa, s);
    fence_operands(o);  // the rescale and P are written before the fence, not sunk past it
    fence_operands(pa);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < BC / 16; ++kk) wgmma_rs<T, HD>(o, pa[kk], desc_mn_major<BC, HD>(Vs, kk));
    wgmma_commit();
    wgmma_wait<0>();
    fence_operands(o);
    fence_operands(pa);  // the product read them asynchronously: keep them until it is done
  }

  store_forward<T, HD>(a, b, h, i0 + wg * 64 + warp * 16 + g, t, o, m0, m1, l0, l1);
}

// ---- forward, warp-specialised (LLM_CUDA_ATTENTION=wgmma-ws) -----------------------------------

// FlashAttention-3's forward structure: a block is three warpgroups. Warpgroup 0 is the producer:
// it gives its registers back (setmaxnreg 24) and one thread issues TMA copies of Q and of each
// key tile's K and V into a two-stage ring, each stage with a "full" barrier (the copy's bytes
// landed) and an "empty" one (both consumer warpgroups are done reading). Warpgroups 1 and 2
// (setmaxnreg 240) own 64 query rows each and never copy; per key tile j they issue S_j = Q K_j^T,
// then P_{j-1} V_{j-1} on the previous tile's probabilities, and compute tile j's softmax while
// that product runs (intra-warpgroup overlap), rescaling O and packing P_j to 16 bits once it has
// landed (ptxas serialises the products if P_j's registers are written while P_{j-1}'s are being
// read, warning C7513; -Xptxas=-v shows none here). The arithmetic per
// output element is the plain kernel's, in the same order (O *= c_j, then O += P_j V_j), so the
// outputs are equal bit for bit (CudaBackend.WgmmaAttentionMatchesTheCpuOp).
// kConsumers 3 (LLM_CUDA_ATTENTION=wgmma-ws3, head dims up to 64: FlashAttention-3's 192-row
// forward tile there): three consumer warpgroups of 64 rows (setmaxnreg 160), their ping-pong a
// ring of three, the same K/V stream feeding 1.5x the rows. At 80 and 96 the 160 registers
// spill (ptxas), so those stay at two.
constexpr int kWsThreads = 384;  // producer + two consumer warpgroups
template <int kConsumers>
constexpr int ws_consumer_registers() { return kConsumers == 2 ? 240 : 160; }  // 64K - 128 x 24, shared
template <int HD>
constexpr bool ws_three_consumers() { return HD <= 64; }

template <typename T, int HD, bool kPingPong, int kConsumers>
__global__ void __launch_bounds__(128 * (1 + kConsumers), 1)
    attention_forward_wgmma_ws(const __grid_constant__ CUtensorMap tm_q, const __grid_constant__ CUtensorMap tm_k,
                               const __grid_constant__ CUtensorMap tm_v, AttentionForwardArgs a, float scale_log2) {
  constexpr int BR = 64 * kConsumers, BC = 128, COLS = panel_columns(HD), PANELS = HD / COLS;
  constexpr int QBYTES = tile_bytes<BR, HD>(), KVBYTES = tile_bytes<BC, HD>();
  extern __shared__ __align__(16) unsigned char smem_raw[];
  // Barriers: Q full; K full, V full, K empty, V empty for stages 0 and 1.
  __shared__ __align__(8) uint64_t bars[9];
  unsigned char* const smem = align_1024(smem_raw);  // [Q][K stage 0][K stage 1][V stage 0][V stage 1]
  const uint32_t smem_s = smem_addr(smem), bar = smem_addr(bars);
  const uint32_t q_full = bar;
  const auto k_full = [bar](int st) { return bar + 8u * uint32_t(1 + st); };
  const auto v_full = [bar](int st) { return bar + 8u * uint32_t(3 + st); };
  const auto k_empty = [bar](int st) { return bar + 8u * uint32_t(5 + st); };
  const auto v_empty = [bar](int st) { return bar + 8u * uint32_t(7 + st); };
  const auto k_tile = [smem_s](int st) { return smem_s + uint32_t(QBYTES + st * KVBYTES); };
  const auto v_tile = [smem_s](int st) { return smem_s + uint32_t(QBYTES + (2 + st) * KVBYTES); };

  const int wg = threadIdx.x / 128;
  const int64_t Tk = a.q_pos0 + a.Tq;
  const BlockTask task = block_task(Tk * HD * 4, a.block_order, kForwardL2MiB);  // heaviest blocks first; K and V re-read
  const int b = task.b(a.NH), h = task.h(a.NH);
  const int64_t i0 = int64_t(gridDim.x - 1 - task.rank) * BR;
  const int64_t key_end = min(a.q_pos0 + min(i0 + BR, a.Tq), Tk);
  const int tiles = int((key_end + BC - 1) / BC);

  if (threadIdx.x == 0) {
    mbarrier_init(q_full, 1);
    for (int st = 0; st < 2; ++st) {
      mbarrier_init(k_full(st), 1);
      mbarrier_init(v_full(st), 1);
      mbarrier_init(k_empty(st), kConsumers * 128);  // every consumer thread arrives
      mbarrier_init(v_empty(st), kConsumers * 128);
    }
    mbarrier_init_fence();
  }
  __syncthreads();

  if (wg == 0) {  // the producer
    setmaxnreg_dec<24>();
    if (threadIdx.x == 0) {
      mbarrier_arrive_expect_tx(q_full, QBYTES);
#pragma unroll
      for (int p = 0; p < PANELS; ++p)
        tma_load_4d(smem_s + panel_offset<BR, HD>(p), &tm_q, p * COLS, h, int(i0), b, q_full);
      for (int jt = 0; jt < tiles; ++jt) {
        const int st = WsRing::stage(jt);
        const uint32_t free_parity = WsRing::free_parity(jt);  // the stage's previous use
        if (WsRing::needs_free(jt)) mbarrier_wait<true>(k_empty(st), free_parity);
        mbarrier_arrive_expect_tx(k_full(st), KVBYTES);
#pragma unroll
        for (int p = 0; p < PANELS; ++p)
          tma_load_4d(k_tile(st) + panel_offset<BC, HD>(p), &tm_k, p * COLS, h, jt * BC, b, k_full(st));
        if (WsRing::needs_free(jt)) mbarrier_wait<true>(v_empty(st), free_parity);
        mbarrier_arrive_expect_tx(v_full(st), KVBYTES);
#pragma unroll
        for (int p = 0; p < PANELS; ++p)
          tma_load_4d(v_tile(st) + panel_offset<BC, HD>(p), &tm_v, p * COLS, h, jt * BC, b, v_full(st));
      }
    }
    return;
  }

  setmaxnreg_inc<ws_consumer_registers<kConsumers>()>();
  const int cw = wg - 1, warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
  // Ping-pong: consumer cw issues its products only after the previous consumer (in a ring) has
  // issued its own (named barrier 2 + cw, which that one arrives at), so one warpgroup's softmax
  // runs while another's products occupy the tensor cores. Consumer 0 goes first (the last
  // consumer's arrival ahead of the loop); the last consumer skips its arrival after its last
  // issue, leaving no barrier half-arrived.
  const auto issue_begin = [cw]() {
    if (kPingPong) named_barrier_sync(WsPingPong::barrier(cw), 256);
  };
  const auto issue_end = [cw](bool last) {
    if (kPingPong && WsPingPong::arrives_after_issue(cw, last, kConsumers))
      named_barrier_arrive(WsPingPong::next_barrier(cw, kConsumers), 256);
  };
  if (kPingPong && WsPingPong::arrives_first(cw, kConsumers))
    named_barrier_arrive(WsPingPong::next_barrier(cw, kConsumers), 256);
  const int g = lane / 4, t = lane % 4;
  const int64_t warp_first_q = a.q_pos0 + i0 + cw * 64 + warp * 16;
  const int64_t qpos0 = warp_first_q + g, qpos1 = qpos0 + 8;
  float o[HD / 2];
  zero(o);
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f, c0, c1;
  float s[BC / 2];
  uint32_t pa[BC / 16][4];

  // Tile 0: S, softmax, P (O is zero: nothing to rescale).
  mbarrier_wait(q_full, 0);
  mbarrier_wait(k_full(WsRing::stage(0)), WsRing::full_parity(0));
  issue_begin();
  fence_operands(s);
  wgmma_fence();
  product_ss<T, BR, BC, HD>(s, smem_s, cw * 64, k_tile(0));
  wgmma_commit();
  issue_end(false);
  wgmma_wait<0>();
  fence_operands(s);
  mbarrier_arrive(k_empty(0));
  online_softmax<BC>(s, t, 0, Tk, warp_first_q, qpos0, qpos1, scale_log2, m0, m1, l0, l1, c0, c1);
  pack_a<T, BC>(pa, s);

  for (int jt = 1; jt < tiles; ++jt) {
    const int st = WsRing::stage(jt), prev = WsRing::stage(jt - 1);
    // (V_{j-1} landed with or before K_j; waiting for both first keeps the two products' issue
    // free of branches, which ptxas would otherwise answer by serialising them.)
    mbarrier_wait(k_full(st), WsRing::full_parity(jt));
    mbarrier_wait(v_full(prev), WsRing::full_parity(jt - 1));
    issue_begin();
    fence_operands(s, o, pa);
    wgmma_fence();
    product_ss<T, BR, BC, HD>(s, smem_s, cw * 64, k_tile(st));  // S_j
    wgmma_commit();
#pragma unroll
    for (int kk = 0; kk < BC / 16; ++kk) wgmma_rs<T, HD>(o, pa[kk], desc_mn_major<BC, HD>(v_tile(prev), kk));
    wgmma_commit();  // O += P_{j-1} V_{j-1}
    issue_end(false);
    wgmma_wait<1>();  // S_j has landed; the P V product may still run
    fence_operands(s);
    mbarrier_arrive(k_empty(st));
    online_softmax<BC>(s, t, int64_t(jt) * BC, Tk, warp_first_q, qpos0, qpos1, scale_log2, m0, m1, l0, l1, c0, c1);
    wgmma_wait<0>();
    fence_operands(o);
    fence_operands(pa);  // read by the product until here
    mbarrier_arrive(v_empty(prev));
#pragma unroll
    for (int i = 0; i < HD / 2; ++i) o[i] *= (i & 2) ? c1 : c0;
    pack_a<T, BC>(pa, s);
  }

  // The last tile's P V (its stage is not reused: no release).
  const int last = tiles - 1;
  mbarrier_wait(v_full(WsRing::stage(last)), WsRing::full_parity(last));
  issue_begin();
  fence_operands(o, pa);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < BC / 16; ++kk)
    wgmma_rs<T, HD>(o, pa[kk], desc_mn_major<BC, HD>(v_tile(WsRing::stage(last)), kk));
  wgmma_commit();
  issue_end(true);
  wgmma_wait<0>();
  fence_operands(o, pa);
  store_forward<T, HD>(a, b, h, i0 + cw * 64 + warp * 16 + g, t, o, m0, m1, l0, l1);
}

// ---- backward: dQ ----------------------------------------------------------------------------

// The dQ kernel's software pipeline (as the dK/dV kernel's, kPipelined there): three K/V stages,
// key tile jt + 1's S and dP issued before tile jt's dQ += dS K, dS of tile jt + 1 computed while
// that runs, packed after the wait. A key tile wholly after a warpgroup's queries is computed
// masked to zero.
//
// kRsScores (separate_dq_rs, LLM_CUDA_ATTENTION=wgmma-rs; head dims up to 96, where the registers
// allow): the warpgroup's 64 rows of Q and dO, the same for every key tile, are loaded into A
// fragments once, and S and dP become RS products: per k-step the tensor cores read only the K
// or V panel from shared memory, half the SS form's bytes.
template <int HD>
constexpr bool dq_pipelined() { return HD <= 128; }
template <int HD>
constexpr bool dq_rs_scores() { return HD <= 96; }
template <int HD>
constexpr size_t dq_smem_bytes() {  // Q, dO, and the K/V stages
  return 1024 + size_t(tile_bytes<128, HD>()) * 2 + size_t(tile_bytes<64, HD>()) * 2 * (dq_pipelined<HD>() ? PipeRing::kStages : 2);
}

template <typename T, int HD, bool kRsScores>
__global__ void __launch_bounds__(kThreads) attention_backward_dq_wgmma(AttentionBackwardArgs a, float scale) {
  constexpr int BR = 128, BC = 64;
  constexpr int QBYTES = tile_bytes<BR, HD>(), KVBYTES = tile_bytes<BC, HD>();
  constexpr bool kPipelined = dq_pipelined<HD>();
  static_assert(PipeRing::kStages == 3, "the pipelined prologues (here and in the dK/dV kernel) copy tiles 0 and 1");
  static_assert(!kRsScores || (kPipelined && dq_rs_scores<HD>()), "RS scores: the pipelined form, head dims <= 96");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  unsigned char* const smem = align_1024(smem_raw);  // [Q][dO][2 or 3 stages][K | V]
  const uint32_t smem_s = smem_addr(smem);
  const auto stage = [](int64_t jt) { return kPipelined ? PipeRing::stage(jt) : int(jt & 1); };

  const int wg = threadIdx.x / 128, warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  // Heaviest blocks first; K and V re-read.
  const auto this_task = [&] { return block_task(a.T * HD * 4, a.block_order, kForwardL2MiB); };
  const BlockTask task = this_task();
  const int b = task.b(a.NH), h = task.h(a.NH);
  const int64_t i0 = int64_t(gridDim.x - 1 - task.rank) * BR;
  const BackwardHead<T, HD> head(a, b, h);
  const int64_t T_ = head.len, C = head.C, ld = head.ld;
  const T *qkv = head.qkv, *dout = head.dout;
  const float *lse = head.lse, *Dg = head.D;
  const float scale_log2 = scale * kLog2e;

  auto load_kv = [&](int64_t jt) {
    unsigned char* Ks = smem + 2 * QBYTES + stage(jt) * 2 * KVBYTES;
    const int64_t j0 = jt * BC;
    load_swizzled<T, BC, HD>(Ks, qkv + j0 * ld + C, ld, T_ - j0);
    load_swizzled<T, BC, HD>(Ks + KVBYTES, qkv + j0 * ld + 2 * C, ld, T_ - j0);
  };
  load_swizzled<T, BR, HD>(smem, qkv + i0 * ld, ld, T_ - i0);
  load_swizzled<T, BR, HD>(smem + QBYTES, dout + i0 * C, C, T_ - i0);
  load_kv(0);
  cp_async_commit();

  const int64_t row0 = i0 + wg * 64 + warp * 16 + g;  // this lane's queries: row0 and row0 + 8
  const float L0 = row0 < T_ ? lse[row0] * kLog2e : 0.0f, L1 = row0 + 8 < T_ ? lse[row0 + 8] * kLog2e : 0.0f;
  const float D0 = row0 < T_ ? Dg[row0] : 0.0f, D1 = row0 + 8 < T_ ? Dg[row0 + 8] : 0.0f;
  float dq[HD / 2];
  zero(dq);
  const int64_t wg_first = i0 + wg * 64;
  const int64_t tiles = (min(i0 + BR, T_) + BC - 1) / BC;

  if constexpr (kPipelined) {
    const auto k_tile = [&](int64_t jt) { return smem_s + 2 * QBYTES + uint32_t(stage(jt)) * 2 * KVBYTES; };
    float s[BC / 2], dp[BC / 2];  // S and dP of a key tile, then dS in s
    uint32_t sa[BC / 16][4];
    uint32_t qa[kRsScores ? HD / 16 : 1][4], da[kRsScores ? HD / 16 : 1][4];  // kRsScores: Q, dO rows
    const auto issue_scores = [&](int64_t jt) {  // one group
      if constexpr (kRsScores) {
        product_rs<T, BC, HD>(s, qa, k_tile(jt));
        product_rs<T, BC, HD>(dp, da, k_tile(jt) + KVBYTES);
      } else {
        product_ss<T, BR, BC, HD>(s, smem_s, wg * 64, k_tile(jt));
        product_ss<T, BR, BC, HD>(dp, smem_s + QBYTES, wg * 64, k_tile(jt) + KVBYTES);
      }
      wgmma_commit();
    };
    const auto score_grads = [&](int64_t jt) {  // S and dP have landed: s = dS
      const int64_t j0 = jt * BC;
      if (j0 + BC - 1 > wg_first || j0 + BC > T_ || wg_first + 63 >= T_)
        mask_past(s, t, keys_visible_end_bwd(row0, j0, T_, BC), keys_visible_end_bwd(row0 + 8, j0, T_, BC));
#pragma unroll
      for (int i = 0; i < BC / 2; ++i) {
        const float p = exp2f(fmaf(s[i], scale_log2, (i & 2) ? -L1 : -L0));
        s[i] = p * (dp[i] - ((i & 2) ? D1 : D0));
      }
    };
    const auto issue_dq = [&](int64_t jt) {  // one group
#pragma unroll
      for (int kk = 0; kk < BC / 16; ++kk) wgmma_rs<T, HD>(dq, sa[kk], desc_mn_major<BC, HD>(k_tile(jt), kk));
      wgmma_commit();
    };
    pipe_start(tiles, load_kv);  // Q, dO and key tile 0 were issued above
    if constexpr (kRsScores) {
      load_a_fragments<BR, HD>(qa, smem, wg * 64 + warp * 16 + g, t);
      load_a_fragments<BR, HD>(da, smem + QBYTES, wg * 64 + warp * 16 + g, t);
      fence_operands(qa, da);
    }
    fence_operands(s, dp);
    wgmma_fence();
    issue_scores(0);
    wgmma_wait<0>();
    fence_operands(s, dp);
    score_grads(0);
    pack_a<T, BC>(sa, s);
    for (int64_t jt = 0; jt + 1 < tiles; ++jt) {
      pipe_advance(jt, tiles, load_kv);
      fence_operands(s, dp, dq, sa);
      wgmma_fence();
      issue_scores(jt + 1);  // runs first: its dS is computed while tile jt's dQ product runs
      issue_dq(jt);
      wgmma_wait<1>();
      fence_operands(s, dp);
      score_grads(jt + 1);
      wgmma_wait<0>();
      fence_operands(dq, sa, s);
      pack_a<T, BC>(sa, s);
    }
    fence_operands(dq, sa);
    wgmma_fence();
    issue_dq(tiles - 1);
    wgmma_wait<0>();
    fence_operands(dq, sa);
  } else {
    for (int64_t jt = 0; jt < tiles; ++jt) {
      next_tile<true>(jt, tiles, load_kv);
      const int64_t j0 = jt * BC;
      if (j0 > wg_first + 63) continue;
      const uint32_t Ks = smem_s + 2 * QBYTES + uint32_t(jt & 1) * 2 * KVBYTES, Vs = Ks + KVBYTES;

      float s[BC / 2], dp[BC / 2];
      fence_operands(s, dp);
      wgmma_fence();
      product_ss<T, BR, BC, HD>(s, smem_s, wg * 64, Ks);
      product_ss<T, BR, BC, HD>(dp, smem_s + QBYTES, wg * 64, Vs);
      wgmma_commit();
      wgmma_wait<0>();
      fence_operands(s, dp);
      // Masked (to p = 0) only on the diagonal tiles and past the end of the sequence.
      if (j0 + BC - 1 > wg_first || j0 + BC > T_ || wg_first + 63 >= T_)
        mask_past(s, t, keys_visible_end_bwd(row0, j0, T_, BC), keys_visible_end_bwd(row0 + 8, j0, T_, BC));
#pragma unroll
      for (int i = 0; i < BC / 2; ++i) {
        const float p = exp2f(fmaf(s[i], scale_log2, (i & 2) ? -L1 : -L0));
        s[i] = p * (dp[i] - ((i & 2) ? D1 : D0));  // dS
      }
      uint32_t sa[BC / 16][4];
      pack_a<T, BC>(sa, s);
      fence_operands(dq, sa);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < BC / 16; ++kk) wgmma_rs<T, HD>(dq, sa[kk], desc_mn_major<BC, HD>(Ks, kk));
      wgmma_commit();
      wgmma_wait<0>();
      fence_operands(dq, sa);
    }
  }
  const BlockTask done = this_task();  // again, not kept live (block_order.h)
  T* dqkv = static_cast<T*>(a.dqkv) + done.b(a.NH) * T_ * ld + int64_t(done.h(a.NH)) * HD;
  store_rows<T, HD>(dqkv, ld, row0, T_, dq, scale, scale);
}

// ---- backward: dK, dV ------------------------------------------------------------------------

// The 16-bit tile of dS^T (128 keys x BR queries, the block's; swizzled like every other tile)
// the fused backward stores for the dQ product that reads it from shared memory.
template <int BR = 64>
constexpr int score_tile_bytes() { return tile_bytes<128, BR>(); }
constexpr int kScoreTileBytes = score_tile_bytes<64>();

// Stores this lane's fragments of a warpgroup's 64 x BR accumulator (rows `row` and row + 8 of
// the tile, the BR columns) into the 128 x BR score tile at `tile`, as 16-bit values.
template <typename T, int BR = 64>
__device__ __forceinline__ void store_score_rows(unsigned char* tile, int row, int t, const float (&d)[BR / 2]) {
#pragma unroll
  for (int nb = 0; nb < BR / 8; ++nb) {
    *reinterpret_cast<uint32_t*>(tile + swizzled_offset<128, BR>(row, nb) + 4 * t) = pack2<T>(d[4 * nb], d[4 * nb + 1]);
    *reinterpret_cast<uint32_t*>(tile + swizzled_offset<128, BR>(row + 8, nb) + 4 * t) =
        pack2<T>(d[4 * nb + 2], d[4 * nb + 3]);
  }
}

// Adds this lane's fragments of a warpgroup's 64 x N slice of dQ (rows `row` and row + 8 of the
// query tile, columns 8 nb + 2t and + 1 of the slice) to the fp32 accumulator at dq_row (row
// `row`, the slice's column 2t), as float2 atomics; rows at or past `rows` are not added.
template <int N>
__device__ __forceinline__ void add_dq_rows(float* dq_row, int64_t ld, int64_t row, int64_t rows, const float (&dq)[N / 2]) {
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    if (row + 8 * half >= rows) continue;
#pragma unroll
    for (int nb = 0; nb < N / 8; ++nb)
      atomicAdd(reinterpret_cast<float2*>(dq_row + 8 * half * ld + 8 * nb), make_float2(dq[4 * nb + 2 * half], dq[4 * nb + 2 * half + 1]));
  }
}

// The same adds as 16-byte reductions (red.global.add.v4.f32, sm_90; LLM_CUDA_DQ_RED=v4): lanes
// t and t ^ 1 of a quad trade halves (one shuffle per float), so the even lane holds four
// consecutive columns 8 nb + 2t .. + 3 of row `row` and the odd one columns 8 nb + 2t - 2 .. + 1
// of row + 8: half the reduction instructions for the same bytes. Every lane shuffles before its
// row is checked.
template <int N>
__device__ __forceinline__ void add_dq_rows_v4(float* dq_row, int64_t ld, int64_t row, int64_t rows, const float (&dq)[N / 2]) {
  const bool odd = threadIdx.x & 1;  // t = lane % 4, and lane = threadIdx.x % 32
  float* const dst = odd ? dq_row + 8 * ld - 2 : dq_row;
  const bool in = (odd ? row + 8 : row) < rows;
#pragma unroll
  for (int nb = 0; nb < N / 8; ++nb) {
    const float x = odd ? dq[4 * nb] : dq[4 * nb + 2], y = odd ? dq[4 * nb + 1] : dq[4 * nb + 3];
    const float rx = __shfl_xor_sync(0xffffffffu, x, 1), ry = __shfl_xor_sync(0xffffffffu, y, 1);
    const float4 v = odd ? make_float4(rx, ry, dq[4 * nb + 2], dq[4 * nb + 3]) : make_float4(dq[4 * nb], dq[4 * nb + 1], rx, ry);
    if (in) atomicAdd(reinterpret_cast<float4*>(dst + 8 * nb), v);
  }
}

// Calls f(integral_constant<int, dq_split_cols(HD, wg)>): the fused backward's dQ slice width of
// this warpgroup, a compile-time N; one call site when both widths agree, else one per warpgroup
// (a warpgroup-uniform branch around the whole loop: inside a batch of products a branch makes
// ptxas serialise them).
template <int HD, typename F>
__device__ __forceinline__ void with_dq_slice(int wg, F&& f) {
  constexpr int N0 = dq_split_cols(HD, 0), N1 = dq_split_cols(HD, 1);
  if constexpr (N0 == N1) f(std::integral_constant<int, N0>{});
  else if (wg == 0) f(std::integral_constant<int, N0>{});
  else f(std::integral_constant<int, N1>{});
}

// One query tile of the fused backward (below) for one warpgroup: its 64 keys are rows kv_row ..
// kv_row + 63 of the K and V tiles.
struct FusedTile {
  uint32_t k_s, v_s, q_s, do_s;  // shared addresses: K and V (128 rows), the query tile's Q and dO
  const float *lse, *D;          // the tile's lse (natural log) and D, in shared memory
  unsigned char* dst;            // the dS^T tile both warpgroups store their rows into
  uint32_t kb;                   // BR 64: K's columns of this warpgroup's dQ slice (column_offset)
  float* dq;                     // the accumulator at this lane's first dQ row and column
  int kv_row, score_row, t;
  int64_t i0, first_key, key0, len, ld_dq, dq_row;  // dq_row: the lane's first query (< len: added)
  float scale_log2;
};

// S^T and dP^T (SS), P^T and dS^T, then each product as soon as its operands exist
// (FlashAttention-3's backward order): dV += P^T dO once P^T is packed (dS^T's arithmetic runs
// under it), dK += dS^T Q once dS^T is (its store and publish() run under it), dQ after
// publish() (both warpgroups' dS^T rows visible to the tensor cores), done_reading() once every
// product has finished reading shared memory, then add_dq(dq): the atomic adds (add_dq_rows) or
// wgmma-ws-tma's staging. BR, the query tile: 64 (dQ
// = the tile's 64 queries, this warpgroup's DQN-column slice over the 128 keys) or 128 (at hd
// <= 64 in the warp-specialised kernel, FlashAttention-3's hd-64 tile: dQ = this warpgroup's 64
// of the 128 queries, all HD columns, over the 128 keys; DQN = HD).
// kDqFirst (wgmma-ws-tma): FlashAttention-3's order after dV instead: dS^T stored and published
// under dV, then dQ issued before dK, so that add_dq runs while dK's product does (the
// tensor pipe no longer idles through dQ's adds); the stage is released after dK.
template <typename T, int HD, int DQN, int BR = 64, bool kDqFirst = false, typename Publish, typename DoneReading,
          typename AddDq>
__device__ __forceinline__ void fused_tile(float (&dk)[HD / 2], float (&dv)[HD / 2], const FusedTile& f,
                                           Publish&& publish, DoneReading&& done_reading, AddDq&& add_dq) {
  constexpr int BC = 128;
  static_assert(BR == 64 || (BR == 128 && DQN == HD), "query tiles of 64, or of 128 with dQ split by rows");
  float st[BR / 2], dpt[BR / 2];  // S^T and dP^T: rows are keys, columns the tile's queries
  uint32_t pa[BR / 16][4], sa[BR / 16][4];
  fence_operands(st, dpt);
  wgmma_fence();
  product_ss<T, BC, BR, HD>(st, f.k_s, f.kv_row, f.q_s);
  wgmma_commit();
  product_ss<T, BC, BR, HD>(dpt, f.v_s, f.kv_row, f.do_s);
  wgmma_commit();
  wgmma_wait<1>();  // S^T is done; dP^T may still run
  fence_operands(st);
  // Masked (to p = 0) only on the diagonal tiles and past the end of the sequence; a tile all
  // before the warpgroup's keys is computed masked to zero (dQ sums both warpgroups' keys).
  if (f.first_key + 63 > f.i0 || f.i0 + BR > f.len || f.first_key + 63 >= f.len)
    mask_outside(st, f.t, queries_visible(f.key0, f.i0, f.len, BR), queries_visible(f.key0 + 8, f.i0, f.len, BR));
#pragma unroll
  for (int i = 0; i < BR / 2; ++i) st[i] = exp2f(fmaf(st[i], f.scale_log2, -f.lse[fragment_column(i, f.t)] * kLog2e));
  pack_a<T, BR>(pa, st);
  fence_operands(dv, pa);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < BR / 16; ++kk) wgmma_rs<T, HD>(dv, pa[kk], desc_mn_major<BR, HD>(f.do_s, kk));
  wgmma_commit();
  wgmma_wait<1>();  // dP^T is done; dV may still run
  fence_operands(dpt);
#pragma unroll
  for (int i = 0; i < BR / 2; ++i) dpt[i] = st[i] * (dpt[i] - f.D[(i / 4) * 8 + 2 * f.t + (i & 1)]);  // dS^T
  pack_a<T, BR>(sa, dpt);
  const auto issue_dk = [&] {
#pragma unroll
    for (int kk = 0; kk < BR / 16; ++kk) wgmma_rs<T, HD>(dk, sa[kk], desc_mn_major<BR, HD>(f.q_s, kk));
    wgmma_commit();
  };
  if constexpr (!kDqFirst) {
    fence_operands(dk, sa);
    wgmma_fence();
    issue_dk();
  }
  store_score_rows<T, BR>(f.dst, f.score_row, f.t, dpt);
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");  // the stores, for wgmma's reads
  publish();
  const uint32_t dsts = smem_addr(f.dst);
  float dq[DQN / 2];
  zero(dq);
  if constexpr (kDqFirst) fence_operands(dq, dk, sa);  // dK's operands, issued after dQ
  else fence_operands(dq);
  wgmma_fence();
  if constexpr (BR == 64) {
#pragma unroll
    for (int kk = 0; kk < BC / 16; ++kk)
      wgmma_ss_tt<T, DQN>(dq, desc_mn_major<BC, 64>(dsts, kk), desc_mn_major<BC, HD>(f.kb, kk));
  } else {  // this warpgroup's 64 queries: panel kv_row / 64 of the [128 keys][128 queries] tile
    const uint32_t panel = dsts + panel_offset<BC, BR>(f.kv_row / 64);
#pragma unroll
    for (int kk = 0; kk < BC / 16; ++kk)
      wgmma_ss_tt<T, HD>(dq, desc_mn_major<BC, BR>(panel, kk), desc_mn_major<BC, HD>(f.k_s, kk));
  }
  wgmma_commit();
  if constexpr (kDqFirst) {
    issue_dk();
    wgmma_wait<1>();  // dV and dQ are done; dK runs under dQ's adds
    fence_operands(dq);
    add_dq(dq);
    wgmma_wait<0>();
    fence_operands(dv, dk, pa, sa);
    done_reading();
  } else {
    wgmma_wait<0>();
    fence_operands(dv, dk, dq, pa, sa);
    done_reading();
    add_dq(dq);
  }
}

// kForm == atomic_dq (LLM_CUDA_ATTENTION=wgmma-atomic): FlashAttention-2's five products instead
// of seven. dS^T goes to shared memory (store_score_rows) and dQ += dS K (both operands
// transposed: dS from the stored dS^T) is added with fp32 atomics into a.dq_accum (zeroed before,
// scaled into dqkv after), so the dQ kernel does not run. The warpgroups split dQ's columns
// (dq_split_cols, wgmma_layout.h: whole panels of the K tile, or halves of hd 64's one panel),
// each over all 128 keys, so both warpgroups' dS^T rows are stored first and every dQ element is
// added once per key block. (Runs 14-15 split the keys below hd 128: every element added twice,
// twice the atomic traffic per product of hd 128's, where the fused form won. dQ is not
// bit-reproducible: the order of the adds varies. Run 14 measured the adds as TMA bulk reductions
// from shared memory, cp.reduce.async.bulk: no faster, 0.96-1.03x; commit 14c7d39.)
// dV += P^T dO and dK += dS^T Q are RS products on P^T and dS^T packed in registers, as in the
// seven-product form (until the session after run 15, P^T was stored too and both read from
// shared memory, SS with B transposed: 16 KiB more shared-memory reads per warpgroup and tile).
// Pipelined (dkdv_pipelined: up to hd 64, where dQ's accumulators fit next to the seven-product
// pipeline's), dS^T alternates between two score tiles (tile it + 1's is stored while the other
// warpgroup's dQ product may still read tile it's); unpipelined at hd 80-128.
//
// kPipelined (the seven-product form at every head dim): three Q/dO stages, and tile it + 1's
// S^T and dP^T are issued before tile it's dV and dK products, so P^T and dS^T of tile it + 1
// are computed while those run (packed to 16 bits after the wait: packing A registers of the
// same batch in flight serialises the products, ptxas C7513); the tensor cores idle only for the
// packing. Warpgroup 1's first query tile, all before its keys, is computed masked to zero.
template <int HD, WgmmaBackward kForm>
constexpr bool dkdv_pipelined() { return kForm == WgmmaBackward::atomic_dq ? HD <= 64 : HD <= 128; }
// Whether the pipeline issues the next tile's dP^T early too (up to 96): at 128 its accumulators
// would spill, so there only S^T goes first (P^T computed during the gradient products), and
// dP^T follows them.
template <int HD>
constexpr bool dkdv_early_dp() { return HD <= 96; }
// kRsScores (wgmma-rs, as the dQ kernel's): the warpgroup's 64 keys of K and V, the same for every
// query tile, held as A fragments, so S^T = K Q^T and dP^T = V dO^T read only Q or dO from shared
// memory; the head dims where the pipelined kernel has the registers for them.
template <int HD>
constexpr bool dkdv_rs_scores() { return HD <= 80; }
// Shared memory of the dK/dV kernel: K, V, the Q/dO stages and their lse/D (padded to 1 KiB),
// and the fused form's dS^T tile (two in the pipelined form).
template <int HD, WgmmaBackward kForm>
constexpr int dkdv_stages() {  // of the Q/dO tiles
  return dkdv_pipelined<HD, kForm>() ? PipeRing::kStages : 2;
}
template <int HD, WgmmaBackward kForm>
constexpr size_t dkdv_stats_bytes() {
  return 1024 * size_t((dkdv_stages<HD, kForm>() + 1) / 2);
}
template <int HD, WgmmaBackward kForm>
constexpr size_t dkdv_smem_bytes() {
  constexpr int stages = dkdv_stages<HD, kForm>();
  return 1024 + size_t(tile_bytes<128, HD>()) * 2 + size_t(tile_bytes<64, HD>()) * 2 * stages + dkdv_stats_bytes<HD, kForm>() +
         (kForm == WgmmaBackward::atomic_dq ? size_t(dkdv_pipelined<HD, kForm>() ? 2 : 1) * kScoreTileBytes : 0);
}

template <typename T, int HD, WgmmaBackward kForm, bool kRsScores = false>
__global__ void __launch_bounds__(kThreads) attention_backward_dkdv_wgmma(AttentionBackwardArgs a, float scale) {
  constexpr int BC = 128, BR = 64;
  constexpr int KBYTES = tile_bytes<BC, HD>(), QBYTES = tile_bytes<BR, HD>();
  constexpr bool kFusedDQ = kForm == WgmmaBackward::atomic_dq;
  constexpr bool kPipelined = dkdv_pipelined<HD, kForm>();
  constexpr int kStages = dkdv_stages<HD, kForm>();
  static_assert(!kRsScores || (kPipelined && !kFusedDQ && dkdv_rs_scores<HD>()), "RS scores: the pipelined seven-product form");
  static_assert(kFusedDQ || kPipelined, "the seven-product form is pipelined at every head dim");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  // [K][V][kStages][Q | dO][kStages][lse | D] (padded to whole KiB), then (fused) the dS^T tile(s)
  unsigned char* const smem = align_1024(smem_raw);
  const uint32_t smem_s = smem_addr(smem);
  float* const stats = reinterpret_cast<float*>(smem + 2 * KBYTES + 2 * kStages * QBYTES);
  unsigned char* const score_tiles = reinterpret_cast<unsigned char*>(stats) + dkdv_stats_bytes<HD, kForm>();
  const auto stage = [](int64_t it) { return kPipelined ? PipeRing::stage(it) : int(it & 1); };

  const int wg = threadIdx.x / 128, warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  // Heaviest blocks first; Q and dO re-read, and the fp32 dQ sums when fused.
  // Heaviest blocks first (block_order.h), but at hd 96 in the pipelined seven-product form: at 255
  // registers it has none to spare for the task and spills 4 bytes with it (the launch order,
  // head by head, there).
  constexpr bool kReorder = !(HD == 96 && kPipelined && !kFusedDQ);
  const int64_t order_bytes = a.T * HD * (kFusedDQ ? 8 : 4);
  const BlockTask task = block_task_if<kReorder>(order_bytes, a.block_order, kBackwardL2MiB);
  const int b = task.b(a.NH), h = task.h(a.NH);
  // The block's first key, and the keys derived from it, re-read from shared memory where used
  // instead of kept in registers through the loop (blockIdx was rematerialised for free: the
  // pipelined forms spill otherwise).
  __shared__ BlockTask shared_task;
  if constexpr (kReorder) {
    if (threadIdx.x == 0) shared_task = task;
    __syncthreads();
  }
  const auto j0 = [&] {
    if constexpr (kReorder) return int64_t(reread(shared_task).rank) * BC;
    else return int64_t(blockIdx.x) * BC;
  };
  const BackwardHead<T, HD> head(a, b, h);
  const int64_t T_ = head.len, C = head.C, ld = head.ld;
  const T *qkv = head.qkv, *dout = head.dout;
  const float *lse = head.lse, *Dg = head.D;
  const float scale_log2 = scale * kLog2e;

  auto load_q_tile = [&](int64_t it) {
    unsigned char* Qs = smem + 2 * KBYTES + stage(it) * 2 * QBYTES;
    float* Ls = stats + stage(it) * 2 * BR;
    const int64_t i0 = j0() + it * BR;
    load_swizzled<T, BR, HD>(Qs, qkv + i0 * ld, ld, T_ - i0);
    load_swizzled<T, BR, HD>(Qs + QBYTES, dout + i0 * C, C, T_ - i0);
    if (threadIdx.x < BR) {
      const bool in = i0 + threadIdx.x < T_;
      const int64_t r = in ? i0 + threadIdx.x : 0;
      cp_async_4(Ls + threadIdx.x, lse + r, in);
      cp_async_4(Ls + BR + threadIdx.x, Dg + r, in);
    }
  };
  load_swizzled<T, BC, HD>(smem, qkv + j0() * ld + C, ld, T_ - j0());
  load_swizzled<T, BC, HD>(smem + KBYTES, qkv + j0() * ld + 2 * C, ld, T_ - j0());
  load_q_tile(0);
  cp_async_commit();
  const int tiles = int((T_ - j0() + BR - 1) / BR);

  float dk[HD / 2], dv[HD / 2];
  zero(dk);
  zero(dv);
  const auto wg_first_key = [&] { return j0() + wg * 64; };
  const auto key0 = [&] { return wg_first_key() + warp * 16 + g; };  // this lane's keys: key0 and key0 + 8
  const int score_row = wg * 64 + warp * 16 + g;      // and their rows in the block's score tiles
  // The fused form's dQ rows: the tile's queries 16 warp + g (+ 8), from column 2t of the slice.
  const int64_t dq_row0 = warp * 16 + g;
  float* const dq_lane = a.dq_accum ? a.dq_accum + (b * T_ + dq_row0) * C + int64_t(h) * HD + 2 * t : nullptr;

  if constexpr (kPipelined) {
    const auto q_tile = [&](int64_t it) { return smem_s + 2 * KBYTES + uint32_t(stage(it)) * 2 * QBYTES; };
    float st[BR / 2], dpt[BR / 2];  // S^T and dP^T of a tile, then P^T and dS^T in place
    uint32_t pa[BR / 16][4], sa[BR / 16][4];
    uint32_t ka[kRsScores ? HD / 16 : 1][4], va[kRsScores ? HD / 16 : 1][4];  // kRsScores: K, V rows
    const auto issue_s = [&](int64_t it) {  // S^T: one group
      if constexpr (kRsScores) product_rs<T, BR, HD>(st, ka, q_tile(it));
      else product_ss<T, BC, BR, HD>(st, smem_s, wg * 64, q_tile(it));
      wgmma_commit();
    };
    const auto issue_dp = [&](int64_t it) {  // dP^T: one group
      if constexpr (kRsScores) product_rs<T, BR, HD>(dpt, va, q_tile(it) + QBYTES);
      else product_ss<T, BC, BR, HD>(dpt, smem_s + KBYTES, wg * 64, q_tile(it) + QBYTES);
      wgmma_commit();
    };
    const auto issue_scores = [&](int64_t it) {  // two groups: S^T, then dP^T
      issue_s(it);
      issue_dp(it);
    };
    const auto probabilities = [&](int64_t it) {  // S^T has landed: st = P^T
      const int64_t i0 = j0() + it * BR;
      const float* Ls = stats + stage(it) * 2 * BR;
      if (wg_first_key() + 63 > i0 || i0 + BR > T_ || wg_first_key() + 63 >= T_)
        mask_outside(st, t, queries_visible(key0(), i0, T_, BR), queries_visible(key0() + 8, i0, T_, BR));
#pragma unroll
      for (int i = 0; i < BR / 2; ++i) st[i] = exp2f(fmaf(st[i], scale_log2, -Ls[fragment_column(i, t)] * kLog2e));
    };
    const auto score_grads = [&](int64_t it) {  // dP^T has landed: dpt = dS^T
      const float* Ds = stats + stage(it) * 2 * BR + BR;
#pragma unroll
      for (int i = 0; i < BR / 2; ++i) dpt[i] = st[i] * (dpt[i] - Ds[(i / 4) * 8 + 2 * t + (i & 1)]);
    };
    // Tile it's dV += P^T dO and dK += dS^T Q: one group.
    const auto issue_grads = [&](int64_t it) {
      const uint32_t Qs = q_tile(it), dOs = Qs + QBYTES;
#pragma unroll
      for (int kk = 0; kk < BR / 16; ++kk) wgmma_rs<T, HD>(dv, pa[kk], desc_mn_major<BR, HD>(dOs, kk));
#pragma unroll
      for (int kk = 0; kk < BR / 16; ++kk) wgmma_rs<T, HD>(dk, sa[kk], desc_mn_major<BR, HD>(Qs, kk));
      wgmma_commit();
    };
    pipe_start(tiles, load_q_tile);  // K, V and tile 0 were issued above
    if constexpr (kRsScores) {
      load_a_fragments<BC, HD>(ka, smem, score_row, t);
      load_a_fragments<BC, HD>(va, smem + KBYTES, score_row, t);
      fence_operands(ka, va);
    }
    fence_operands(st, dpt);
    wgmma_fence();
    issue_scores(0);
    wgmma_wait<1>();
    fence_operands(st);
    probabilities(0);
    wgmma_wait<0>();
    fence_operands(dpt);
    score_grads(0);
    pack_a<T, BR>(pa, st);
    pack_a<T, BR>(sa, dpt);
    if constexpr (kFusedDQ) {
      static_assert(dkdv_early_dp<HD>(), "the fused pipeline issues both score products early");
      const auto dst_tile = [&](int64_t it) { return score_tiles + ScoreTilePair::buffer(it) * kScoreTileBytes; };
      with_dq_slice<HD>(wg, [&](auto n) {
        constexpr int DQN = decltype(n)::value;
        const int col0 = wg == 0 ? 0 : dq_split_cols(HD, 0);
        const uint32_t kb = smem_s + column_offset<BC, HD>(col0);  // K's columns of this slice
        float dq[DQN / 2];
        // Tile it's dQ slice over the block's 128 keys (both warpgroups' dS^T rows): one group.
        const auto issue_dq = [&](int64_t it) {
          const uint32_t dsts = smem_addr(dst_tile(it));
#pragma unroll
          for (int kk = 0; kk < BC / 16; ++kk)
            wgmma_ss_tt<T, DQN>(dq, desc_mn_major<BC, 64>(dsts, kk), desc_mn_major<BC, HD>(kb, kk));
          wgmma_commit();
        };
        const auto add_dq = [&](int64_t it) {
          const int64_t i0 = j0() + it * BR;
          add_dq_rows<DQN>(dq_lane + i0 * C + col0, C, i0 + dq_row0, T_, dq);
        };
        store_score_rows<T>(dst_tile(0), score_row, t, dpt);
        for (int64_t it = 0; it + 1 < tiles; ++it) {
          pipe_advance(it, tiles, load_q_tile);  // its fence and barrier publish dS^T of tile it, both warpgroups'
          zero(dq);
          fence_operands(st, dpt, dv, dk, dq, pa, sa);
          wgmma_fence();
          issue_scores(it + 1);  // runs first: tile it + 1's scores land while tile it's products run
          issue_grads(it);
          issue_dq(it);
          wgmma_wait<3>();
          fence_operands(st);
          probabilities(it + 1);
          wgmma_wait<2>();
          fence_operands(dpt);
          score_grads(it + 1);
          wgmma_wait<0>();
          fence_operands(dv, dk, dq, pa, sa, st, dpt);
          add_dq(it);
          pack_a<T, BR>(pa, st);
          pack_a<T, BR>(sa, dpt);
          // The other score tile: its last reader, tile it - 1's dQ products, finished before
          // this iteration's first barrier.
          store_score_rows<T>(dst_tile(it + 1), score_row, t, dpt);
        }
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");  // the last dS^T rows, for wgmma
        __syncthreads();
        zero(dq);
        fence_operands(dv, dk, dq, pa, sa);
        wgmma_fence();
        issue_grads(tiles - 1);  // its tile landed in the last advance (or before the loop)
        issue_dq(tiles - 1);
        wgmma_wait<0>();
        fence_operands(dv, dk, dq, pa, sa);
        add_dq(tiles - 1);
      });
    } else {
      for (int64_t it = 0; it + 1 < tiles; ++it) {
        pipe_advance(it, tiles, load_q_tile);
        fence_operands(st, dpt, dv, dk, pa, sa);
        wgmma_fence();
        if constexpr (dkdv_early_dp<HD>()) {
          issue_scores(it + 1);  // runs first: tile it + 1's scores land while tile it's products run
          issue_grads(it);
          wgmma_wait<2>();
          fence_operands(st);
          probabilities(it + 1);
          wgmma_wait<1>();
          fence_operands(dpt);
          score_grads(it + 1);
          wgmma_wait<0>();
          fence_operands(dv, dk, pa, sa, st, dpt);
          pack_a<T, BR>(pa, st);
          pack_a<T, BR>(sa, dpt);
        } else {
          issue_s(it + 1);  // P^T of tile it + 1 is computed while tile it's products run
          issue_grads(it);
          wgmma_wait<1>();
          fence_operands(st);
          probabilities(it + 1);
          wgmma_wait<0>();
          fence_operands(dv, dk, pa, sa, st);
          pack_a<T, BR>(pa, st);
          fence_operands(pa, dpt);
          wgmma_fence();
          issue_dp(it + 1);
          wgmma_wait<0>();
          fence_operands(dpt);
          score_grads(it + 1);
          pack_a<T, BR>(sa, dpt);
        }
      }
      fence_operands(dv, dk, pa, sa);
      wgmma_fence();
      issue_grads(tiles - 1);  // its tile landed in the last advance (or before the loop)
      wgmma_wait<0>();
      fence_operands(dv, dk, pa, sa);
    }
  } else {  // the fused form, unpipelined (hd 80-128)
    with_dq_slice<HD>(wg, [&](auto n) {
      constexpr int DQN = decltype(n)::value;
      const int col0 = wg == 0 ? 0 : dq_split_cols(HD, 0);
      for (int64_t it = 0; it < tiles; ++it) {
        next_tile<true>(it, tiles, load_q_tile);
        const int64_t i0 = j0() + it * BR;
        const uint32_t Qs = smem_s + 2 * KBYTES + uint32_t(it & 1) * 2 * QBYTES;
        const float* Ls = stats + (it & 1) * 2 * BR;
        // (One dS^T tile: its next store follows the next tile's barrier, which every warp
        // reaches only after its dQ product has finished.)
        const FusedTile f{smem_s, smem_s + KBYTES, Qs, Qs + QBYTES, Ls, Ls + BR, score_tiles,
                          smem_s + column_offset<BC, HD>(col0), dq_lane + i0 * C + col0, wg * 64, score_row, t,
                          i0, wg_first_key(), key0(), T_, C, i0 + dq_row0, scale_log2};
        fused_tile<T, HD, DQN>(dk, dv, f, [] { __syncthreads(); }, [] {},
                               [&](const float (&dq)[DQN / 2]) { add_dq_rows<DQN>(f.dq, f.ld_dq, f.dq_row, f.len, dq); });
      }
    });
  }
  const BlockTask done = kReorder ? reread(shared_task) : block_task_if<false>(0, 0, 0);
  T* dqkv = static_cast<T*>(a.dqkv) + done.b(a.NH) * T_ * ld + int64_t(done.h(a.NH)) * HD;
  store_rows<T, HD>(dqkv + C, ld, key0(), T_, dk, scale, scale);
  store_rows<T, HD>(dqkv + 2 * C, ld, key0(), T_, dv, 1.0f, 1.0f);
}

// ---- backward, warp-specialised (LLM_CUDA_ATTENTION=wgmma-ws-atomic) ---------------------------

// The fused five-product backward with FlashAttention-3's structure: a block owns 128 keys and is
// three warpgroups. Warpgroup 0 is the producer: it gives its registers back (setmaxnreg 24), one
// thread copies K and V once and each query tile's Q and dO with TMA into a two-stage ring
// (WsRing, as the warp-specialised forward's), and its first warp copies the tile's lse and D
// with ordinary loads into the stage's shared floats; the stage's "full" barrier completes when
// the TMA bytes have landed and the 32 lanes have arrived (their stores released to the
// consumers), its "empty" one when all 256 consumer threads released it. Warpgroups 1 and 2
// (setmaxnreg 240) own 64 keys each and never copy; per query tile they run fused_tile (the
// unpipelined fused form's products, in FlashAttention-3's order), publishing their dS^T rows to
// each other on named barrier 1 instead of the whole block's barrier, into two score tiles
// (ScoreTilePair: the next tile's rows may be stored while the other consumer's dQ product still
// reads this tile's), and release the stage once their products have read it. dQ's adds are the
// fp32 atomics of wgmma-atomic (dq_split_cols), so the result is the same up to their order.

// The query tile of the warp-specialised backward: 128 rows at hd <= 64 (FlashAttention-3's
// hd-64 shape: S^T and dP^T m64n128 products, ~43 flop per shared-memory byte instead of ~32, dQ
// split by the warpgroups' query rows), 64 above (the registers).
template <int HD>
constexpr int ws_backward_rows() { return HD <= 64 ? 128 : 64; }
template <int HD>
constexpr size_t ws_backward_stats_bytes() {  // two stages of lse and D
  return size_t(1024) * ((2 * 2 * ws_backward_rows<HD>() * 4 + 1023) / 1024);
}
// K, V, two Q/dO stages, their lse/D, two dS^T tiles; with kTmaDq the dQ staging tile after them
// (BR x HD fp32, 1024-byte aligned: at hd 128 198656 bytes in all, at hd 64 199680), with
// kConvert a tile of the same size where the fused conversion gathers a finished dQ tile.
template <int HD, bool kTmaDq = false, bool kConvert = false>
constexpr size_t ws_backward_smem_bytes() {
  constexpr int BR = ws_backward_rows<HD>();
  return 1024 + size_t(tile_bytes<128, HD>()) * 2 + size_t(tile_bytes<BR, HD>()) * 2 * WsRing::kStages +
         ws_backward_stats_bytes<HD>() + 2 * size_t(score_tile_bytes<BR>()) +
         (kTmaDq || kConvert ? size_t(dq_staging_bytes<BR, HD>()) : 0);
}
static_assert(ws_backward_smem_bytes<48, false, true>() <= 227 * 1024 && ws_backward_smem_bytes<64, false, true>() <= 227 * 1024 &&
                  ws_backward_smem_bytes<80, false, true>() <= 227 * 1024 &&
                  ws_backward_smem_bytes<96, false, true>() <= 227 * 1024 &&
                  ws_backward_smem_bytes<128, false, true>() <= 227 * 1024,
              "the fused conversion's tile fits next to the backward's at every head dim");

// The fused dQ conversion (kConvert, LLM_CUDA_DQ_CONVERT=fused: the atomic forms only), run by
// warp 1 of the producer warpgroup (idle otherwise) while the consumers compute. Per query tile the
// block visits (WsDqSignal, ws_schedule.h): wait until both consumers arrived on done after their
// atomic adds, then lane 0 counts the block's contribution in the tile's counter (a.dq_count) and
// frees the slot. Ordering (PTX memory model): the consumers' adds precede their arrival
// (mbarrier.arrive: release at CTA scope), which the wait acquires; lane 0's fence.acq_rel.gpu then
// makes the increment a release at GPU scope that covers them (CUTLASS's semaphores rely on the
// same cumulativity after a bar.sync). The block whose increment completes the count (fence
// again: acquire) converts the tile: each lane copies its 8-element packs' sums from L2 into the
// staging tile (cp.async.cg, all in flight at once: 24 registers leave no room for loads in
// flight), then writes dq = sum * scale as 16-byte packs of dqkv's q columns (the same rounding
// as dq_from_accum_packed) and, with a.dq_clean (a persistent workspace), zeros the sums and the
// counter, so the next backward finds them zero and no memset runs.
// The producer has 24 registers: what lives through the loop is the tile (it, i0), the head
// (b NH + h) and the barriers (done0; free0 = done0 + 16); the rest is recomputed where used, and
// offsets within a tile are 32-bit (ptxas -v: no spills, tests/cuda/ptxas_report_test.sh).
template <typename T, int HD, int BR>
__device__ __forceinline__ void convert_finished_dq_tiles(const AttentionBackwardArgs& a, int head, int j0, float scale,
                                                          const unsigned char* stage_p, uint32_t done0) {
  constexpr int PR = HD / 8, PACKS = BR * PR;  // 8-element packs per row, per tile
  const int lane = threadIdx.x % 32;
  for (int it = 0, i0 = j0; i0 < a.T; ++it, i0 += BR) {  // WsDqSignal::query_tiles(a.T, j0, BR) tiles
    const uint32_t slot = uint32_t(WsRing::stage(it));
    // No watchdog here: its counter spills in these 24 registers (ptxas-sm90a); a hang is bounded
    // by the process's timeout in gpu_validation.sh, each attention test in its own process.
    mbarrier_wait(done0 + 8u * slot, WsRing::full_parity(it));
    int last = 0;
    if (lane == 0) {
      int* const count = a.dq_count + head * WsDqSignal::count_stride(a.T) + WsDqSignal::count_index(i0);
      asm volatile("fence.acq_rel.gpu;\n" ::: "memory");  // release: the consumers' adds before the count
      const int before = atomicAdd(count, 1);
      mbarrier_arrive(done0 + 16u + 8u * slot);  // free
      last = before + 1 == WsDqSignal::contributors(i0);
      if (last) {
        asm volatile("fence.acq_rel.gpu;\n" ::: "memory");  // acquire: every block's adds
        if (a.dq_clean) *count = 0;  // no block adds to the tile any more
      }
    }
    if (!__shfl_sync(0xffffffffu, last, 0)) continue;
    __syncwarp();  // lane 0's acquire, for the other lanes' reads
    // 32-bit offsets from the tile's first element (the producer has 24 registers).
    const int rows = int(a.T - i0 < BR ? a.T - i0 : BR), C = a.NH * HD, b = head / a.NH, h = head - b * a.NH;
    const uint32_t stage = smem_addr(stage_p);
    float* const acc = a.dq_accum + (int64_t(b) * a.T + i0) * C + h * HD;
    for (int p = lane; p < PACKS; p += 32) {
      const int r = p / PR, off = r * C + (p - r * PR) * 8;
      if (r >= rows) break;
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(stage + 32u * p), "l"(acc + off) : "memory");
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(stage + 32u * p + 16u), "l"(acc + off + 4) : "memory");
    }
    cp_async_commit();
    cp_async_wait<0>();  // this lane's copies landed: it reads only its own packs below
    if (a.dq_clean) {  // the sums back to zero for the next backward (this lane's: its copies landed); acc is dead after
      for (int p = lane; p < PACKS; p += 32) {
        const int r = p / PR;
        if (r >= rows) break;
        float4* const sums = reinterpret_cast<float4*>(acc + r * C + (p - r * PR) * 8);
        sums[0] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        sums[1] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      }
    }
    T* const dq = static_cast<T*>(a.dqkv) + (int64_t(b) * a.T + i0) * 3 * C + h * HD;
    for (int p = lane; p < PACKS; p += 32) {  // each half pack: 4 sums in, 4 elements (8 bytes) out
      const int r = p / PR, c = (p - r * PR) * 8;
      if (r >= rows) break;
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        float x, y, z, w;
        asm volatile("ld.shared.v4.f32 {%0, %1, %2, %3}, [%4];\n"
                     : "=f"(x), "=f"(y), "=f"(z), "=f"(w)
                     : "r"(stage + 32u * p + 16u * half));
        *reinterpret_cast<uint2*>(dq + r * 3 * C + c + 4 * half) =
            make_uint2(pack2<T>(x * scale, y * scale), pack2<T>(z * scale, w * scale));
      }
    }
  }
}

// kTmaDq (wgmma-ws-tma): FlashAttention-3's dQ path instead of the atomics. Each consumer stores
// its dQ fragments into the staging tile (dq_staging_offset: the layout TMA reads), fences them for
// the async proxy and arrives on dq_full; thread 32 of the producer (warp 1, idle otherwise) waits
// for both, issues one TMA reduction (cp.reduce.async.bulk.tensor .add) per box of tm_dq over the
// fp32 accumulator, waits until they have read the tile, and arrives on dq_empty, which the
// consumers wait for before storing the next tile's (WsDqStage; WsSchedule.TheDqStaging*). Rows
// past the sequence are clipped by the map. One buffer: the next store follows a tile of products.
// How the warp-specialised fused backward adds dQ: per-thread atomics after dK's and dQ's
// products (wgmma-ws-atomic), the same atomics with dQ's product before dK's and the adds under
// dK's (wgmma-ws-dqfirst, fused_tile's kDqFirst), or that order with the TMA staging above
// (wgmma-ws-tma).
enum class WsDq { atomic, atomic_dq_first, tma };

// kRedV4 (LLM_CUDA_DQ_RED=v4; wgmma-ws-atomic and wgmma-ws-dqfirst at hd 48, 80, 96, 128: at 64,
// whose 128-row tiles give each thread all 64 dQ columns, the trade spills): the adds as 16-byte
// reductions (add_dq_rows_v4). A template choice, as a runtime branch around the adds spills at
// hd 64-128.
template <int HD>
constexpr bool ws_red_v4_available() { return HD != 64; }

template <typename T, int HD, WsDq kDq, bool kConvert = false, bool kRedV4 = false>
__global__ void __launch_bounds__(kWsThreads, 1)
    attention_backward_wgmma_ws(const __grid_constant__ CUtensorMap tm_q, const __grid_constant__ CUtensorMap tm_k,
                                const __grid_constant__ CUtensorMap tm_v, const __grid_constant__ CUtensorMap tm_do,
                                const __grid_constant__ CUtensorMap tm_dq, AttentionBackwardArgs a, float scale) {
  constexpr int BC = 128, BR = ws_backward_rows<HD>(), COLS = panel_columns(HD), PANELS = HD / COLS;
  constexpr int KBYTES = tile_bytes<BC, HD>(), QBYTES = tile_bytes<BR, HD>(), SBYTES = score_tile_bytes<BR>();
  constexpr bool kTmaDq = kDq == WsDq::tma, kDqFirst = kDq != WsDq::atomic;
  static_assert(!(kTmaDq && kConvert), "the fused conversion counts per-thread atomic adds");
  static_assert(!kRedV4 || (kDq != WsDq::tma && ws_red_v4_available<HD>()),
                "16-byte reductions: the atomic forms (wgmma-ws-atomic, wgmma-ws-dqfirst), hd != 64");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  // Barriers: K and V full; Q/dO full and empty for stages 0 and 1; with kTmaDq the dQ staging's
  // full and empty; with kConvert the conversion's done and free per slot.
  __shared__ __align__(8) uint64_t bars[11];
  // The block's task (block_order.h), which the consumers re-read per tile and in the epilogue
  // instead of keeping it and the keys derived from it in registers (blockIdx was rematerialised
  // for free).
  __shared__ BlockTask shared_task;
  unsigned char* const smem = align_1024(smem_raw);  // [K][V][2 stages][Q | dO][2 stages][lse | D][2 x dS^T]
  const uint32_t smem_s = smem_addr(smem), bar = smem_addr(bars);
  float* const stats = reinterpret_cast<float*>(smem + 2 * KBYTES + 2 * WsRing::kStages * QBYTES);
  unsigned char* const score_tiles = reinterpret_cast<unsigned char*>(stats) + ws_backward_stats_bytes<HD>();
  unsigned char* const dq_stage = score_tiles + 2 * SBYTES;  // kTmaDq, kConvert; 1024-byte aligned (every part above is)
  const uint32_t kv_full = bar;
  const uint32_t dq_full = bar + 8u * 5, dq_empty = bar + 8u * 6;
  const uint32_t dq_done0 = bar + 8u * 7, dq_free0 = dq_done0 + 16u;  // kConvert: + 8 slot
  const auto q_full = [bar](int st) { return bar + 8u * uint32_t(1 + st); };
  const auto q_empty = [bar](int st) { return bar + 8u * uint32_t(3 + st); };
  const auto q_tile = [smem_s](int st) { return smem_s + uint32_t(2 * KBYTES + st * 2 * QBYTES); };

  const int wg = threadIdx.x / 128;
  const BlockTask task = block_task(a.T * HD * 8, a.block_order, kBackwardL2MiB);  // heaviest blocks first; Q, dO and the dQ sums re-read
  const int b = task.b(a.NH), h = task.h(a.NH);
  const int64_t j0 = int64_t(task.rank) * BC;
  const BackwardHead<T, HD> head(a, b, h);
  const int64_t T_ = head.len, C = head.C;
  const int tiles = WsDqSignal::query_tiles(T_, j0, BR);

  if (threadIdx.x == 0) {
    shared_task = task;
    mbarrier_init(kv_full, 1);
    for (int st = 0; st < WsRing::kStages; ++st) {
      mbarrier_init(q_full(st), 1 + 32);  // the TMA thread's expect_tx, then the 32 lanes' lse/D stores
      mbarrier_init(q_empty(st), 2 * 128);  // every consumer thread arrives
    }
    if constexpr (kTmaDq) {
      mbarrier_init(dq_full, 2 * 128);  // every consumer thread, after its stores
      mbarrier_init(dq_empty, 1);       // the thread that issued the reductions, once they read the tile
    }
    if constexpr (kConvert) {
      for (int s = 0; s < WsRing::kStages; ++s) {
        mbarrier_init(dq_done0 + 8u * uint32_t(s), 2 * 128);  // every consumer thread, after its adds
        mbarrier_init(dq_free0 + 8u * uint32_t(s), 1);        // the conversion warp's lane 0, once it counted
      }
    }
    mbarrier_init_fence();
  }
  __syncthreads();

  if (wg == 0) {  // the producer
    setmaxnreg_dec<24>();
    const int lane = threadIdx.x % 32;
    if (threadIdx.x < 32) {
      if (lane == 0) {
        mbarrier_arrive_expect_tx(kv_full, 2 * KBYTES);
#pragma unroll
        for (int p = 0; p < PANELS; ++p) {
          tma_load_4d(smem_s + panel_offset<BC, HD>(p), &tm_k, p * COLS, h, int(j0), b, kv_full);
          tma_load_4d(smem_s + KBYTES + panel_offset<BC, HD>(p), &tm_v, p * COLS, h, int(j0), b, kv_full);
        }
      }
      for (int it = 0; it < tiles; ++it) {
        const int st = WsRing::stage(it);
        const int64_t i0 = j0 + int64_t(it) * BR;
        if (WsRing::needs_free(it)) mbarrier_wait<true>(q_empty(st), WsRing::free_parity(it));
        if (lane == 0) {
          mbarrier_arrive_expect_tx(q_full(st), 2 * QBYTES);
#pragma unroll
          for (int p = 0; p < PANELS; ++p) {
            tma_load_4d(q_tile(st) + panel_offset<BR, HD>(p), &tm_q, p * COLS, h, int(i0), b, q_full(st));
            tma_load_4d(q_tile(st) + QBYTES + panel_offset<BR, HD>(p), &tm_do, p * COLS, h, int(i0), b, q_full(st));
          }
        }
        float* Ls = stats + st * 2 * BR;
#pragma unroll
        for (int r = lane; r < BR; r += 32) {
          const bool in = i0 + r < T_;
          Ls[r] = in ? head.lse[i0 + r] : 0.0f;
          Ls[BR + r] = in ? head.D[i0 + r] : 0.0f;
        }
        mbarrier_arrive(q_full(st));
      }
    } else if (kTmaDq && threadIdx.x == 32) {  // dQ's reductions
      const uint32_t staging = smem_addr(dq_stage);
      constexpr int BOX = dq_box_columns(HD);
      for (int it = 0; it < tiles; ++it) {
        mbarrier_wait<true>(dq_full, WsDqStage::full_parity(it));
        const int i0 = int(j0) + it * BR;
#pragma unroll
        for (int p = 0; p < HD / BOX; ++p)
          tma_reduce_add_4d(staging + panel_offset<BR, 2 * HD>(p), &tm_dq, p * BOX, h, i0, b);
        tma_commit_group();
        tma_wait_group_read<0>();  // the staging tile is free again
        mbarrier_arrive(dq_empty);
      }
      tma_wait_group<0>();  // the adds are complete before the block's shared memory goes
    } else if (kConvert && threadIdx.x / 32 == 1) {
      convert_finished_dq_tiles<T, HD, BR>(a, b * a.NH + h, int(j0), scale, dq_stage, dq_done0);
    }
    return;
  }

  setmaxnreg_inc<240>();
  const int cw = wg - 1, warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  // This warpgroup's first key and the lane's key (row g of its warp's 16), from a fresh read.
  const auto keys = [&] {
    const int64_t first = int64_t(reread(shared_task).rank) * BC + cw * 64;
    return std::pair<int64_t, int64_t>{first, first + warp * 16 + g};
  };
  const int score_row = cw * 64 + warp * 16 + g;
  // dQ's rows: the tile's queries 16 warp + g (+ 8) (BR 64), or this warpgroup's 64 of them (128).
  const int dq_row0 = (BR == 128 ? cw * 64 : 0) + warp * 16 + g;
  float* const dq_lane = a.dq_accum + (b * T_ + dq_row0) * C + int64_t(h) * HD + 2 * t;
  const float scale_log2 = scale * kLog2e;
  float dk[HD / 2], dv[HD / 2];
  zero(dk);
  zero(dv);
  mbarrier_wait(kv_full, 0);
  const auto run = [&](auto n) {
    constexpr int DQN = decltype(n)::value;
    const int col0 = BR == 128 || cw == 0 ? 0 : dq_split_cols(HD, 0);
    for (int it = 0; it < tiles; ++it) {
      const int st = WsRing::stage(it);
      mbarrier_wait(q_full(st), WsRing::full_parity(it));
      const auto [first_key, key0] = keys();
      const int64_t i0 = first_key - cw * 64 + int64_t(it) * BR;
      const float* Ls = stats + st * 2 * BR;
      const FusedTile f{smem_s, smem_s + KBYTES, q_tile(st), q_tile(st) + QBYTES, Ls, Ls + BR,
                        score_tiles + ScoreTilePair::buffer(it) * SBYTES, smem_s + column_offset<BC, HD>(col0),
                        dq_lane + i0 * C + col0, cw * 64, score_row, t, i0, first_key, key0, T_, C, i0 + dq_row0,
                        scale_log2};
      const auto publish = [] { named_barrier_sync(1, 256); };
      const auto release = [&] { mbarrier_arrive(q_empty(st)); };
      if constexpr (kTmaDq) {
        // This warpgroup's fragments into the staging tile: rows dq_row0 (+ 8) of the tile, its
        // slice's columns from col0 (BR 64) or all columns of its own 64 rows (BR 128).
        const int row = int(dq_row0);
        fused_tile<T, HD, DQN, BR, kDqFirst>(dk, dv, f, publish, release, [&](const float (&dq)[DQN / 2]) {
          if (WsDqStage::needs_empty(it)) mbarrier_wait(dq_empty, WsDqStage::empty_parity(it));
#pragma unroll
          for (int nb = 0; nb < DQN / 8; ++nb)
#pragma unroll
            for (int half = 0; half < 2; ++half)
              *reinterpret_cast<float2*>(dq_stage + dq_staging_offset<BR, HD>(row + 8 * half, col0 + 8 * nb + 2 * t)) =
                  make_float2(dq[4 * nb + 2 * half], dq[4 * nb + 2 * half + 1]);
          asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");  // the stores, for TMA's reads
          mbarrier_arrive(dq_full);
        });
      } else {
        fused_tile<T, HD, DQN, BR, kDqFirst>(dk, dv, f, publish, release, [&](const float (&dq)[DQN / 2]) {
          if constexpr (kRedV4) add_dq_rows_v4<DQN>(f.dq, f.ld_dq, f.dq_row, f.len, dq);
          else add_dq_rows<DQN>(f.dq, f.ld_dq, f.dq_row, f.len, dq);
          if constexpr (kConvert) {  // the adds, for the conversion warp (convert_finished_dq_tiles); slot st
            if (WsRing::needs_free(it)) mbarrier_wait(dq_free0 + 8u * uint32_t(st), WsRing::free_parity(it));
            mbarrier_arrive(dq_done0 + 8u * uint32_t(st));
          }
        });
      }
    }
  };
  if constexpr (BR == 128) run(std::integral_constant<int, HD>{});
  else with_dq_slice<HD>(cw, run);
  const BlockTask done = reread(shared_task);
  T* dqkv = static_cast<T*>(a.dqkv) + done.b(a.NH) * T_ * head.ld + int64_t(done.h(a.NH)) * HD;
  const int64_t key0 = keys().second;
  store_rows<T, HD>(dqkv + C, head.ld, key0, T_, dk, scale, scale);
  store_rows<T, HD>(dqkv + 2 * C, head.ld, key0, T_, dv, 1.0f, 1.0f);
}

// ---- the tile check --------------------------------------------------------------------------

// One warpgroup: S = Q K^T (SS, K-major, N = 128) and O = bf16/f16(S) K three ways: RS (K as an
// MN-major operand, N = HD), SS with B transposed (S stored as a K-major [64][128] tile: the fused
// backward's dV and dK products up to run 15) and SS with both transposed (S^T stored as [128][64], read
// MN-major: its dQ product), the last once more in the fused backward's two dQ column slices
// (N = dq_split_cols, B from column_offset), each written out in full; exact for small-integer
// inputs.
template <typename T, int HD>
__global__ void __launch_bounds__(kThreads) wgmma_tile_check_kernel(const T* q, const T* k, float* s_out, float* o_out,
                                                                    float* o_bt_out, float* o_tt_out, float* o_split_out) {
  constexpr int M = 64, N = 128, N_KEYS = N;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  unsigned char* const smem = align_1024(smem_raw);  // [Q 64 x HD][K 128 x HD][S 64 x 128][S^T 128 x 64]
  const uint32_t smem_s = smem_addr(smem);
  unsigned char* const s_tile = smem + tile_bytes<M, HD>() + tile_bytes<N, HD>();
  unsigned char* const st_tile = s_tile + tile_bytes<M, N>();
  load_swizzled<T, M, HD>(smem, q, HD, M);
  load_swizzled<T, N, HD>(smem + tile_bytes<M, HD>(), k, HD, N);
  cp_async_commit();
  next_tile<true>(0, 1, [](int64_t) {});
  if (threadIdx.x >= 128) return;  // one warpgroup computes
  const int warp = threadIdx.x / 32, g = (threadIdx.x % 32) / 4, t = threadIdx.x % 4;
  const uint32_t Ks = smem_s + tile_bytes<M, HD>();
  float s[N / 2];
  // NaN in the accumulators: the first k-step must overwrite them (scale-d 0), or S is NaN.
#pragma unroll
  for (int i = 0; i < N / 2; ++i) s[i] = __int_as_float(0x7fc00000);
  fence_operands(s);
  wgmma_fence();
  product_ss<T, M, N, HD>(s, smem_s, 0, Ks);
  wgmma_commit();
  wgmma_wait<0>();
  fence_operands(s);
  const int row = warp * 16 + g;
#pragma unroll
  for (int i = 0; i < N / 2; ++i) {
    const int r = row + ((i & 2) ? 8 : 0), c = (i / 4) * 8 + 2 * t + (i & 1);
    s_out[r * N + c] = s[i];
    const T v = from_float<T>(s[i]);
    *reinterpret_cast<T*>(s_tile + swizzled_offset<M, N>(r, c / 8) + (c % 8) * 2) = v;
    *reinterpret_cast<T*>(st_tile + swizzled_offset<N, M>(c, r / 8) + (r % 8) * 2) = v;
  }
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
  named_barrier_sync(1, 128);
  uint32_t pa[N / 16][4];
  pack_a<T, N>(pa, s);
  float o[HD / 2], o_bt[HD / 2], o_tt[HD / 2];
  zero(o);
  zero(o_bt);
  zero(o_tt);
  fence_operands(o, o_bt, o_tt, pa);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < N / 16; ++kk) wgmma_rs<T, HD>(o, pa[kk], desc_mn_major<N, HD>(Ks, kk));
  const uint32_t s_s = smem_addr(s_tile), st_s = smem_addr(st_tile);
#pragma unroll
  for (int kk = 0; kk < N / 16; ++kk)
    wgmma_ss_bt<T, HD>(o_bt, desc_k_major<M, N>(s_s, 0, kk), desc_mn_major<N, HD>(Ks, kk));
#pragma unroll
  for (int kk = 0; kk < N / 16; ++kk) wgmma_ss_tt<T, HD>(o_tt, desc_mn_major<N, M>(st_s, kk), desc_mn_major<N, HD>(Ks, kk));
  wgmma_commit();
  wgmma_wait<0>();
  fence_operands(o, o_bt, o_tt, pa);
#pragma unroll
  for (int i = 0; i < HD / 2; ++i) {
    const int at = (row + ((i & 2) ? 8 : 0)) * HD + (i / 4) * 8 + 2 * t + (i & 1);
    o_out[at] = o[i];
    o_bt_out[at] = o_bt[i];
    o_tt_out[at] = o_tt[i];
  }
  // The fused backward's dQ products: N = the slice's columns, B from column col0 of K.
  const auto slice = [&](auto n, int col0) {
    constexpr int N = decltype(n)::value;
    float d[N / 2];
    zero(d);
    fence_operands(d);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < N_KEYS / 16; ++kk)
      wgmma_ss_tt<T, N>(d, desc_mn_major<N_KEYS, M>(st_s, kk), desc_mn_major<N_KEYS, HD>(Ks + column_offset<N_KEYS, HD>(col0), kk));
    wgmma_commit();
    wgmma_wait<0>();
    fence_operands(d);
#pragma unroll
    for (int i = 0; i < N / 2; ++i)
      o_split_out[(row + ((i & 2) ? 8 : 0)) * HD + col0 + (i / 4) * 8 + 2 * t + (i & 1)] = d[i];
  };
  slice(std::integral_constant<int, dq_split_cols(HD, 0)>{}, 0);
  slice(std::integral_constant<int, dq_split_cols(HD, 1)>{}, dq_split_cols(HD, 0));
}

// S = Q K^T as wgmma-rs computes its scores: Q's rows as A fragments loaded from the swizzled
// tile (load_a_fragments), K K-major (wgmma_rs_kb); its own kernel (next to the one above, hd
// 128 would spill).
template <typename T, int HD>
__global__ void __launch_bounds__(kThreads) wgmma_rs_scores_check_kernel(const T* q, const T* k, float* s_rs_out) {
  constexpr int M = 64, N = 128;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  unsigned char* const smem = align_1024(smem_raw);  // [Q 64 x HD][K 128 x HD]
  load_swizzled<T, M, HD>(smem, q, HD, M);
  load_swizzled<T, N, HD>(smem + tile_bytes<M, HD>(), k, HD, N);
  cp_async_commit();
  next_tile<true>(0, 1, [](int64_t) {});
  if (threadIdx.x >= 128) return;  // one warpgroup computes
  const int warp = threadIdx.x / 32, g = (threadIdx.x % 32) / 4, t = threadIdx.x % 4, row = warp * 16 + g;
  uint32_t qa[HD / 16][4];
  load_a_fragments<M, HD>(qa, smem, row, t);
  float s[N / 2];
  fence_operands(qa, s);
  wgmma_fence();
  product_rs<T, N, HD>(s, qa, smem_addr(smem) + tile_bytes<M, HD>());
  wgmma_commit();
  wgmma_wait<0>();
  fence_operands(s, qa);
#pragma unroll
  for (int i = 0; i < N / 2; ++i) s_rs_out[(row + ((i & 2) ? 8 : 0)) * N + (i / 4) * 8 + 2 * t + (i & 1)] = s[i];
}

// ---- host ------------------------------------------------------------------------------------

// Every kernel here: one block per block_rows rows (queries in the forward, keys in the
// backward; 128 but in the three-consumer forward), head and sequence. The softmax scale is 1 /
// sqrt(HD); the forwards take it times log2(e) (exp2).
dim3 block_grid(int64_t rows, int NH, int B, int block_rows = 128) {
  return dim3(static_cast<unsigned>(ceil_div(rows, block_rows)), static_cast<unsigned>(NH), static_cast<unsigned>(B));
}
template <int HD>
float softmax_scale() {
  return 1.0f / sqrtf(static_cast<float>(HD));
}
template <int HD>
float forward_scale_log2() {
  return kLog2e / sqrtf(static_cast<float>(HD));
}

template <typename T, int HD, bool kPingPong>
void launch_forward(const AttentionForwardArgs& a, cudaStream_t stream) {
  constexpr size_t smem = 1024 + size_t(tile_bytes<128, HD>()) * 5;  // Q, 2 x (K, V)
  allow_smem(attention_forward_wgmma<T, HD, kPingPong>, smem);
  const float scale_log2 = forward_scale_log2<HD>();
  const dim3 grid = block_grid(a.Tq, a.NH, a.B);
  attention_forward_wgmma<T, HD, kPingPong><<<grid, kThreads, smem, stream>>>(a, scale_log2);
}

// cuTensorMapEncodeTiled, a driver entry point, through the runtime (libllm links no libcuda).
PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 f = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found{};
#if CUDART_VERSION >= 12050  // the versioned lookup (CUDA 13 has only this one)
    CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found),
               "looking up cuTensorMapEncodeTiled (attention, LLM_CUDA_ATTENTION=wgmma-ws)");
#else  // CUDA 12.3 and 12.4 (kernels/CMakeLists.txt builds these kernels from 12.3 on)
    CUDA_CHECK(cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", &fn, cudaEnableDefault, &found),
               "looking up cuTensorMapEncodeTiled (attention, LLM_CUDA_ATTENTION=wgmma-ws)");
#endif
    LLM_CHECK(found == cudaDriverEntryPointSuccess && fn,
              "attention (LLM_CUDA_ATTENTION=wgmma-ws): the driver has no cuTensorMapEncodeTiled (CUDA 12.0+ driver needed)");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  return f;
}

// The TMA map of one attention operand: rows of HD elements of T at `base`, `rows` per sequence,
// heads HD elements apart in a row, rows row_stride and sequences batch_stride elements apart.
// Dimensions innermost first (head-dim column, head, row, sequence: the strides ascend); boxes
// of one swizzle panel (panel_columns(HD) columns) by box_rows rows of one head, zero-filled
// past the sequence's rows.
template <typename T, int HD>
CUtensorMap make_tile_map(const char* what, const void* base, int64_t rows, int NH, int B, int64_t row_stride,
                          int64_t batch_stride, int box_rows) {
  constexpr int W = swizzle_bytes(HD);
  const cuuint64_t dims[4] = {cuuint64_t(HD), cuuint64_t(NH), cuuint64_t(rows), cuuint64_t(B)};
  const cuuint64_t strides[3] = {cuuint64_t(HD) * sizeof(T), cuuint64_t(row_stride) * sizeof(T),
                                 cuuint64_t(B > 1 ? batch_stride : rows * row_stride) * sizeof(T)};
  const cuuint32_t box[4] = {cuuint32_t(panel_columns(HD)), 1, cuuint32_t(box_rows), 1};
  const cuuint32_t element_strides[4] = {1, 1, 1, 1};
  const CUtensorMapSwizzle swizzle =
      W == 128 ? CU_TENSOR_MAP_SWIZZLE_128B : W == 64 ? CU_TENSOR_MAP_SWIZZLE_64B : CU_TENSOR_MAP_SWIZZLE_32B;
  const CUtensorMapDataType type =
      std::is_same_v<T, __half> ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
  CUtensorMap map;
  const CUresult r = tensor_map_encoder()(&map, type, 4, const_cast<void*>(base), dims, strides, box, element_strides,
                                          CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle, CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
                                          CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  LLM_CHECK(r == CUDA_SUCCESS, "attention (wgmma-ws): cuTensorMapEncodeTiled failed (CUresult ", int(r), ") for ", what,
            ": ", B, " x ", rows, " rows x ", NH, " heads x ", HD, ", row stride ", row_stride, ", batch stride ",
            batch_stride, " elements");
  return map;
}

// The TMA map of the fused backward's fp32 dQ accumulator ([B, T, C], C = NH HD) for
// wgmma-ws-tma's reductions: dimensions as make_tile_map's, boxes of dq_box_columns(HD) fp32
// columns by box_rows rows under the swizzle of the 16-bit tile of 2 HD columns (the staging
// tile's layout, wgmma_layout.h); rows past T are not written.
template <int HD>
CUtensorMap make_dq_map(float* base, int64_t rows, int NH, int B, int box_rows) {
  constexpr int W = swizzle_bytes(2 * HD);
  const int64_t C = int64_t(NH) * HD;
  const cuuint64_t dims[4] = {cuuint64_t(HD), cuuint64_t(NH), cuuint64_t(rows), cuuint64_t(B)};
  const cuuint64_t strides[3] = {cuuint64_t(HD) * 4, cuuint64_t(C) * 4, cuuint64_t(rows * C) * 4};
  const cuuint32_t box[4] = {cuuint32_t(dq_box_columns(HD)), 1, cuuint32_t(box_rows), 1};
  const cuuint32_t element_strides[4] = {1, 1, 1, 1};
  const CUtensorMapSwizzle swizzle =
      W == 128 ? CU_TENSOR_MAP_SWIZZLE_128B : W == 64 ? CU_TENSOR_MAP_SWIZZLE_64B : CU_TENSOR_MAP_SWIZZLE_32B;
  CUtensorMap map;
  const CUresult r = tensor_map_encoder()(&map, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 4, base, dims, strides, box,
                                          element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle,
                                          CU_TENSOR_MAP_L2_PROMOTION_L2_128B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  LLM_CHECK(r == CUDA_SUCCESS, "attention (wgmma-ws-tma): cuTensorMapEncodeTiled failed (CUresult ", int(r),
            ") for the dQ accumulator: ", B, " x ", rows, " rows x ", NH, " heads x ", HD, " fp32");
  return map;
}

template <typename T, int HD, bool kPingPong, int kConsumers = 2>
void launch_forward_ws(const AttentionForwardArgs& a, cudaStream_t stream) {
  constexpr int BR = 64 * kConsumers;
  constexpr size_t smem = 1024 + size_t(tile_bytes<BR, HD>()) + size_t(tile_bytes<128, HD>()) * 4;  // Q, 2 x K, 2 x V
  allow_smem(attention_forward_wgmma_ws<T, HD, kPingPong, kConsumers>, smem);
  const int64_t Tk = a.q_pos0 + a.Tq;
  const CUtensorMap q = make_tile_map<T, HD>("q", a.q, a.Tq, a.NH, a.B, a.q_row_stride, a.q_batch_stride, BR);
  const CUtensorMap k = make_tile_map<T, HD>("k", a.k, Tk, a.NH, a.B, a.kv_row_stride, a.kv_batch_stride, 128);
  const CUtensorMap v = make_tile_map<T, HD>("v", a.v, Tk, a.NH, a.B, a.kv_row_stride, a.kv_batch_stride, 128);
  const float scale_log2 = forward_scale_log2<HD>();
  const dim3 grid = block_grid(a.Tq, a.NH, a.B, BR);
  attention_forward_wgmma_ws<T, HD, kPingPong, kConsumers>
      <<<grid, 128 * (1 + kConsumers), smem, stream>>>(q, k, v, a, scale_log2);
}

template <typename T, int HD>
void launch_backward(const AttentionBackwardArgs& a, WgmmaBackward form, cudaStream_t stream) {
  constexpr bool rs = dq_rs_scores<HD>();
  constexpr size_t smem_dq = dq_smem_bytes<HD>();
  const float scale = softmax_scale<HD>();
  const dim3 grid = block_grid(a.T, a.NH, a.B);
  if (form == WgmmaBackward::ws_atomic_dq || form == WgmmaBackward::ws_atomic_dq_first ||
      form == WgmmaBackward::ws_tma_dq) {
    const int64_t C = int64_t(a.NH) * HD, ld = 3 * C;
    const T* qkv = static_cast<const T*>(a.qkv);
    constexpr int BR = ws_backward_rows<HD>();
    const CUtensorMap q = make_tile_map<T, HD>("q (backward)", qkv, a.T, a.NH, a.B, ld, a.T * ld, BR);
    const CUtensorMap k = make_tile_map<T, HD>("k (backward)", qkv + C, a.T, a.NH, a.B, ld, a.T * ld, 128);
    const CUtensorMap v = make_tile_map<T, HD>("v (backward)", qkv + 2 * C, a.T, a.NH, a.B, ld, a.T * ld, 128);
    const CUtensorMap dout = make_tile_map<T, HD>("dout (backward)", a.dout, a.T, a.NH, a.B, C, a.T * C, BR);
    // The fused conversion (LLM_CUDA_DQ_CONVERT=fused or a.dq_convert 2): the atomic forms, with
    // counters.
    // Its stores are 8 bytes (4 elements of dQ): a dqkv that is not 8-byte aligned takes the
    // separate conversion kernel, which checks for itself.
    const bool convert = form != WgmmaBackward::ws_tma_dq && a.dq_count != nullptr &&
                         reinterpret_cast<uintptr_t>(a.dqkv) % 8 == 0 &&
                         (a.dq_convert == 0 ? dq_convert_setting() : a.dq_convert) == 2;
    const bool v4 = ws_red_v4_available<HD>() && (a.dq_red == 0 ? dq_red_setting() : a.dq_red) == 4;
    attention_dq_accum_zero(a, stream);
    if (form == WgmmaBackward::ws_tma_dq) {
      constexpr size_t smem = ws_backward_smem_bytes<HD, true>();
      allow_smem(attention_backward_wgmma_ws<T, HD, WsDq::tma>, smem);
      const CUtensorMap dq = make_dq_map<HD>(a.dq_accum, a.T, a.NH, a.B, BR);
      attention_backward_wgmma_ws<T, HD, WsDq::tma><<<grid, kWsThreads, smem, stream>>>(q, k, v, dout, dq, a, scale);
    } else {  // atomics: the dout map stands in for the unused dQ map
      const auto launch = [&](auto kernel, size_t smem) {
        allow_smem(kernel, smem);
        kernel<<<grid, kWsThreads, smem, stream>>>(q, k, v, dout, dout, a, scale);
      };
      constexpr size_t smem = ws_backward_smem_bytes<HD, false>(), smem_convert = ws_backward_smem_bytes<HD, false, true>();
      // The adds' order (dK's product first, or dQ's) x the conversion x the reductions' width.
      const auto by_order = [&](auto dq) {
        constexpr WsDq kDq = decltype(dq)::value;
        if constexpr (ws_red_v4_available<HD>()) {
          if (convert && v4) launch(attention_backward_wgmma_ws<T, HD, kDq, true, true>, smem_convert);
          else if (convert) launch(attention_backward_wgmma_ws<T, HD, kDq, true>, smem_convert);
          else if (v4) launch(attention_backward_wgmma_ws<T, HD, kDq, false, true>, smem);
          else launch(attention_backward_wgmma_ws<T, HD, kDq>, smem);
        } else {
          if (convert) launch(attention_backward_wgmma_ws<T, HD, kDq, true>, smem_convert);
          else launch(attention_backward_wgmma_ws<T, HD, kDq>, smem);
        }
      };
      if (form == WgmmaBackward::ws_atomic_dq_first) by_order(std::integral_constant<WsDq, WsDq::atomic_dq_first>{});
      else by_order(std::integral_constant<WsDq, WsDq::atomic>{});
    }
    if (!convert) attention_dq_from_accum(a, dtype_of_element<T>(), stream);
    return;
  }
  if (form == WgmmaBackward::atomic_dq) {
    constexpr size_t smem = dkdv_smem_bytes<HD, WgmmaBackward::atomic_dq>();
    allow_smem(attention_backward_dkdv_wgmma<T, HD, WgmmaBackward::atomic_dq>, smem);
    attention_dq_accum_zero(a, stream);
    attention_backward_dkdv_wgmma<T, HD, WgmmaBackward::atomic_dq><<<grid, kThreads, smem, stream>>>(a, scale);
    attention_dq_from_accum(a, dtype_of_element<T>(), stream);
    return;
  }
  constexpr size_t smem_dkdv = dkdv_smem_bytes<HD, WgmmaBackward::separate_dq>();
  constexpr bool rs_kv = dkdv_rs_scores<HD>();
  if (rs_kv && form == WgmmaBackward::separate_dq_rs) {
    allow_smem(attention_backward_dkdv_wgmma<T, HD, WgmmaBackward::separate_dq, rs_kv>, smem_dkdv);
    attention_backward_dkdv_wgmma<T, HD, WgmmaBackward::separate_dq, rs_kv><<<grid, kThreads, smem_dkdv, stream>>>(a, scale);
  } else {
    allow_smem(attention_backward_dkdv_wgmma<T, HD, WgmmaBackward::separate_dq>, smem_dkdv);
    attention_backward_dkdv_wgmma<T, HD, WgmmaBackward::separate_dq><<<grid, kThreads, smem_dkdv, stream>>>(a, scale);
  }
  if (rs && form == WgmmaBackward::separate_dq_rs) {
    allow_smem(attention_backward_dq_wgmma<T, HD, rs>, smem_dq);
    attention_backward_dq_wgmma<T, HD, rs><<<grid, kThreads, smem_dq, stream>>>(a, scale);
  } else {
    allow_smem(attention_backward_dq_wgmma<T, HD, false>, smem_dq);
    attention_backward_dq_wgmma<T, HD, false><<<grid, kThreads, smem_dq, stream>>>(a, scale);
  }
}

// Calls f(type tag, head-dim constant) for the covered (dtype, head dim) pairs; false otherwise.
template <typename F>
bool dispatch(DType t, int hd, F&& f) {
  if (wgmma_unavailable() || (t != DType::bf16 && t != DType::f16)) return false;
  if (!wgmma_head_dim(hd)) return false;
  const auto by_dim = [&](auto tag) {
    switch (hd) {
      case 48: f(tag, std::integral_constant<int, 48>{}); break;
      case 64: f(tag, std::integral_constant<int, 64>{}); break;
      case 80: f(tag, std::integral_constant<int, 80>{}); break;
      case 96: f(tag, std::integral_constant<int, 96>{}); break;
      default: f(tag, std::integral_constant<int, 128>{}); break;
    }
  };
  if (t == DType::bf16) by_dim(__nv_bfloat16{});
  else by_dim(__half{});
  return true;
}

}  // namespace

const char* wgmma_unavailable() {
  static const std::string reason = []() -> std::string {
    int dev = 0, major = 0, minor = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess) {
      (void)cudaGetLastError();  // not left for the next launch check to blame on its kernel
      return "no CUDA device";
    }
    if (major != 9 || minor != 0)
      return "the device is sm_" + std::to_string(major) + std::to_string(minor) + "; the wgmma kernels are built for sm_90a";
    // A cap below the device's own shared memory stands in for a smaller card, which has no wgmma.
    if (smem_capped())
      return "LLM_CUDA_SMEM_LIMIT caps shared memory at " + std::to_string(smem_limit_setting()) +
             " bytes per block, standing in for a smaller card, which has no wgmma";
    return "";
  }();
  return reason.empty() ? nullptr : reason.c_str();
}

bool attention_forward_wgmma(DType t, const AttentionForwardArgs& a, cudaStream_t stream, WgmmaForward form) {
  if (!attention_rows_aligned(a)) return false;
  return dispatch(t, a.hd, [&](auto tag, auto hd) {
    using T = decltype(tag);
    constexpr int HD = decltype(hd)::value;
    switch (form) {
      case WgmmaForward::plain: launch_forward<T, HD, false>(a, stream); break;
      case WgmmaForward::ping_pong: launch_forward<T, HD, true>(a, stream); break;
      case WgmmaForward::warp_specialized: launch_forward_ws<T, HD, false>(a, stream); break;
      case WgmmaForward::warp_specialized_ping_pong: launch_forward_ws<T, HD, true>(a, stream); break;
      case WgmmaForward::warp_specialized_3:
        if constexpr (ws_three_consumers<HD>()) launch_forward_ws<T, HD, true, 3>(a, stream);
        else launch_forward_ws<T, HD, true>(a, stream);
        break;
    }
  });
}

bool attention_backward_wgmma(DType t, const AttentionBackwardArgs& a, cudaStream_t stream, WgmmaBackward form) {
  if (!attention_rows_aligned(a)) return false;
  if ((form == WgmmaBackward::atomic_dq || form == WgmmaBackward::ws_atomic_dq ||
       form == WgmmaBackward::ws_atomic_dq_first || form == WgmmaBackward::ws_tma_dq) &&
      !a.dq_accum)
    return false;
  return dispatch(t, a.hd,
                  [&](auto tag, auto hd) { launch_backward<decltype(tag), decltype(hd)::value>(a, form, stream); });
}

bool wgmma_tile_check(DType t, int hd, const void* q, const void* k, float* s, float* o, float* o_bt, float* o_tt,
                      float* o_split, float* s_rs, cudaStream_t stream) {
  return dispatch(t, hd, [&](auto tag, auto dim) {
    using T = decltype(tag);
    constexpr int HD = decltype(dim)::value;
    constexpr size_t smem = 1024 + size_t(tile_bytes<64, HD>() + tile_bytes<128, HD>() + 2 * tile_bytes<64, 128>());
    allow_smem(wgmma_tile_check_kernel<T, HD>, smem);
    wgmma_tile_check_kernel<T, HD><<<1, kThreads, smem, stream>>>(static_cast<const T*>(q), static_cast<const T*>(k), s, o,
                                                                  o_bt, o_tt, o_split);
    constexpr size_t smem_rs = 1024 + size_t(tile_bytes<64, HD>() + tile_bytes<128, HD>());
    allow_smem(wgmma_rs_scores_check_kernel<T, HD>, smem_rs);
    wgmma_rs_scores_check_kernel<T, HD><<<1, kThreads, smem_rs, stream>>>(static_cast<const T*>(q), static_cast<const T*>(k), s_rs);
  });
}

}  // namespace llm::kernels
