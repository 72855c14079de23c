// Causal masking of one score tile, as int32 arithmetic relative to the tile (the kernels keep
// positions in int64; every offset inside a tile fits int32): for each of a lane's rows, the
// columns [begin, end) that are visible. The kernels compute these limits once per row and tile,
// test them only on tiles that need it (the diagonal and the last, partial tiles), and compare one
// int32 column index per element, instead of int64 positions per element on every tile.
// Plain C++, so tests/backend/attention_mask_test.cpp checks the limits against the predicates
// they replace on the host.
#pragma once
#include <cstdint>

#ifdef __CUDACC__
#define LLM_MASK_HD __host__ __device__ __forceinline__
#else
#define LLM_MASK_HD inline
#endif

namespace llm::kernels {

LLM_MASK_HD int clamp_to_tile(int64_t x, int n) { return x < 0 ? 0 : x > n ? n : static_cast<int>(x); }

// A query row over key columns col0 + [0, n): visible keys are <= query and < key_end
// (the forward: key <= qpos && key < Tk). Returns end (begin is 0).
LLM_MASK_HD int keys_visible_end(int64_t query, int64_t col0, int64_t key_end, int n) {
  return clamp_to_tile((query < key_end ? query + 1 : key_end) - col0, n);
}

// The backward's query row (dQ): visible keys are <= query and < T, and none when the query is
// past T (key <= query && query < T && key < T).
LLM_MASK_HD int keys_visible_end_bwd(int64_t query, int64_t col0, int64_t T, int n) {
  return query < T ? clamp_to_tile(query + 1 - col0, n) : 0;
}

// The backward's key row (dK/dV) over query columns col0 + [0, n): visible queries are >= key
// and < T, none when the key is past T (key <= query && query < T && key < T).
struct ColumnRange {
  int begin = 0, end = 0;
};
LLM_MASK_HD ColumnRange queries_visible(int64_t key, int64_t col0, int64_t T, int n) {
  if (key >= T) return {0, 0};
  return {clamp_to_tile(key - col0, n), clamp_to_tile(T - col0, n)};
}

// Column of accumulator element i for lane quad index t, in the layout of mma.sync m16n8 and
// wgmma m64nN fragments (pairs of columns 2t, 2t + 1 in each 8-column block; elements with
// i & 2 belong to the lane's second row, g + 8).
LLM_MASK_HD int fragment_column(int i, int t) { return (i / 4) * 8 + 2 * t + (i & 1); }

}  // namespace llm::kernels
