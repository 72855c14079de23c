// What the tensor-core attention kernels (attention_tc.cu, attention_tc_backward.cu,
// sm90a/attention_wgmma.cu) share beyond the tile helpers of mma.cuh.
#pragma once
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

}  // namespace llm::kernels
