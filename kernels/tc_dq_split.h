// The mma.sync fused backward's dQ product (attention_tc_backward.cu, LLM_CUDA_ATTENTION=tc-atomic):
// per query tile of BR rows, the block's NW warps compute dQ[BR][HD] += dS K over its 16 NW keys
// and add it with atomics. Warp w takes the query rows of group w % QG (16 each) and the head
// dim's 16-column pairs w / QG, w / QG + CG, ... (CG = NW / QG column groups); in each pair its
// lane (g, t) holds the m16n8 accumulator fragments of two 8-column blocks: rows g and g + 8,
// columns 2t and 2t + 1. (4 x 32: QG = CG = 2; 8 x 64: QG 4, CG 2.)
// Plain C++ (host and device), so tests/backend/tc_dq_split_test.cpp checks on the host that the
// warps and lanes add every dQ element of the tile exactly once.
#pragma once
#ifdef __CUDACC__
#define LLM_SPLIT_HD __host__ __device__ __forceinline__
#else
#define LLM_SPLIT_HD inline
#endif
namespace llm::kernels {
template <int NW, int BR, int HD>
struct TcDqSplit {
  static constexpr int QG = BR / 16, CG = NW / QG;
  static constexpr int PAIRS = HD / 16;                // 16-column pairs of the head dim
  static constexpr int NP = (PAIRS + CG - 1) / CG;     // pairs per warp (the last may be past PAIRS)
  static_assert(BR % 16 == 0 && NW % (BR / 16) == 0, "BR / 16 query groups, NW / (BR / 16) warps each");
  static_assert(HD % 16 == 0, "head dims in 16-column pairs");
  LLM_SPLIT_HD static constexpr int query_group(int warp) { return warp % QG; }
  // Warp w's pp-th pair of columns (columns 16 pair .. + 15); none when it is PAIRS or past.
  LLM_SPLIT_HD static constexpr int pair(int warp, int pp) { return CG * pp + warp / QG; }
  // The tile row (0 .. BR - 1) of accumulator element e (0 .. 3) of lane (g = lane / 4).
  LLM_SPLIT_HD static constexpr int row(int warp, int lane, int e) { return query_group(warp) * 16 + lane / 4 + (e >= 2 ? 8 : 0); }
  // The head-dim column of element e of the half-th 8-column block of pair p (t = lane % 4).
  LLM_SPLIT_HD static constexpr int column(int p, int half, int lane, int e) { return (2 * p + half) * 8 + 2 * (lane % 4) + (e & 1); }
};
}  // namespace llm::kernels
