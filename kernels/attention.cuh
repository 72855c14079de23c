// What the tensor-core attention kernels (attention_tc.cu, attention_tc_backward.cu,
// sm90a/attention_wgmma.cu) share beyond the tile helpers of mma.cuh.
#pragma once
#include <type_traits>

#include "attention_mask.h"
#include "common.cuh"
#include "kernels.h"

namespace llm::kernels {

// Whether every row the kernels touch starts 16-byte aligned (they copy and store 16-byte chunks):
// the forward's q/k/v/out rows, the backward's qkv/dqkv/dout rows.
inline bool attention_rows_aligned(const AttentionForwardArgs& a) {
  return aligned16(a.q) && aligned16(a.k) && aligned16(a.v) && aligned16(a.out) && a.q_row_stride % 8 == 0 &&
         a.kv_row_stride % 8 == 0 && a.out_row_stride % 8 == 0 && a.q_batch_stride % 8 == 0 &&
         a.kv_batch_stride % 8 == 0 && a.out_batch_stride % 8 == 0;
}
inline bool attention_rows_aligned(const AttentionBackwardArgs& a) {
  return aligned16(a.qkv) && aligned16(a.dqkv) && aligned16(a.dout) && (int64_t(a.NH) * a.hd) % 8 == 0;
}

// The fused-dQ backwards (tc-atomic, wgmma-atomic, wgmma-ws-*; attention_tc_backward.cu):
// a.dq_accum ([B, T, C] fp32) and a.dq_count (when set) zeroed before the kernel that adds into
// them, unless a.dq_clean (a persistent workspace, zero already), and dqkv's q part = dq_accum *
// scale after it (t: dqkv's element type), zeroing the sums again when a.dq_clean.
void attention_dq_accum_zero(const AttentionBackwardArgs& a, cudaStream_t stream);
void attention_dq_from_accum(const AttentionBackwardArgs& a, DType t, cudaStream_t stream);

// Calls f(std::integral_constant<int, HD>{}) with hd as the compile-time HD when it is a head dim
// the mma.sync kernels are built for (the model table's: 48, 64, 80, 96, 128, 160); returns
// whether it was.
template <typename F>
bool with_tc_head_dim(int hd, F&& f) {
  switch (hd) {
    case 48: f(std::integral_constant<int, 48>{}); return true;
    case 64: f(std::integral_constant<int, 64>{}); return true;
    case 80: f(std::integral_constant<int, 80>{}); return true;
    case 96: f(std::integral_constant<int, 96>{}); return true;
    case 128: f(std::integral_constant<int, 128>{}); return true;
    case 160: f(std::integral_constant<int, 160>{}); return true;
    default: return false;
  }
}

#ifdef __CUDACC__
// One (batch b, head h) of the backward kernels: the sequence length, the row strides of qkv
// ([B, T, 3C]) and dout ([B, T, C]), and where this head's qkv, dout, lse and D begin.
template <typename T, int HD>
struct BackwardHead {
  int64_t len, C, ld;  // len: the sequence length T
  const T* qkv;
  const T* dout;
  const float* lse;
  const float* D;
  __device__ __forceinline__ BackwardHead(const AttentionBackwardArgs& a, int b, int h)
      : len(a.T), C(int64_t(a.NH) * HD), ld(3 * C),
        qkv(static_cast<const T*>(a.qkv) + b * len * ld + int64_t(h) * HD),
        dout(static_cast<const T*>(a.dout) + b * len * C + int64_t(h) * HD),
        lse(a.lse + (int64_t(b) * a.NH + h) * len),
        D(a.scratch + (int64_t(b) * a.NH + h) * len) {}
};

// Score fragments of one lane (N accumulator elements: element i in column fragment_column(i, t)
// of the lane's first row when !(i & 2), of its second row otherwise; the layout of mma.sync
// m16n8 and of wgmma m64nN, flattened).

// Sets to -inf the scores at or past each row's visible end (end0: first row, end1: second).
template <int N>
__device__ __forceinline__ void mask_past(float (&s)[N], int t, int end0, int end1) {
#pragma unroll
  for (int i = 0; i < N; ++i)
    if (fragment_column(i, t) >= ((i & 2) ? end1 : end0)) s[i] = -INFINITY;
}
// Sets to -inf the scores outside each row's visible columns.
template <int N>
__device__ __forceinline__ void mask_outside(float (&s)[N], int t, ColumnRange r0, ColumnRange r1) {
#pragma unroll
  for (int i = 0; i < N; ++i) {
    const int c = fragment_column(i, t);
    const ColumnRange& r = (i & 2) ? r1 : r0;
    if (c < r.begin || c >= r.end) s[i] = -INFINITY;
  }
}
// The maxima of the lane's two rows over the whole quad (the four lanes sharing them).
template <int N>
__device__ __forceinline__ void row_max(const float (&s)[N], float& mx0, float& mx1) {
#pragma unroll
  for (int i = 0; i < N; ++i) {
    if (i & 2) mx1 = fmaxf(mx1, s[i]);
    else mx0 = fmaxf(mx0, s[i]);
  }
#pragma unroll
  for (int off = 1; off <= 2; off <<= 1) {
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, off));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, off));
  }
}
// The mma.sync kernels' [blocks of 8 columns][4] form of the same fragments.
template <int NB>
__device__ __forceinline__ float (&flat(float (&s)[NB][4]))[NB * 4] {
  return *reinterpret_cast<float(*)[NB * 4]>(&s);
}
#endif

}  // namespace llm::kernels
