// Deterministic column reductions (sums over rows of per-channel terms), used for LayerNorm's
// dweight/dbias and the linear bias gradient: blocks of 32 channels x 8 row lanes walk their
// rows in a fixed order, reduce the 8 lanes in a fixed order, and write one partial per row
// block; a second kernel adds the partials in row-block order. No atomics, so the result has
// the same bits on every run. Where rows are 16-byte aligned and the width a multiple of 8 bf16
// (4 f32), each thread reads 16-byte packs of 8 (4) channels instead of one element.
#pragma once
#include "common.cuh"

namespace llm::kernels {

inline constexpr int kColumnRowLanes = 8;
inline constexpr int64_t kColumnMaxRowBlocks = 32;

inline int64_t column_row_blocks(int64_t N) {
  const int64_t g = ceil_div(N > 0 ? N : 1, kColumnRowLanes);
  return g < kColumnMaxRowBlocks ? g : kColumnMaxRowBlocks;
}

// dst0[w] += sum_g partial[g, w] for w < w0; dst1[w - w0] += ... for w >= w0.
static __global__ void column_sums_finalize(float* dst0, float* dst1, const float* partial, int64_t groups,
                                            int64_t width, int64_t w0) {
  const int64_t w = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (w >= width) return;
  float acc = 0.0f;
  for (int64_t g = 0; g < groups; ++g) acc += partial[g * width + w];
  if (w < w0)
    dst0[w] += acc;
  else
    dst1[w - w0] += acc;
}

// Reduces the kColumnRowLanes partial values of each of the 32 channels of a block
// (s[lane][channel] in shared memory) and stores the result for row block blockIdx.y.
__device__ inline void column_block_store(float (*s)[33], float v, float* partial, int64_t width, int64_t w) {
  s[threadIdx.y][threadIdx.x] = v;
  __syncthreads();
  if (threadIdx.y == 0) {
    float acc = 0.0f;
    for (int r = 0; r < kColumnRowLanes; ++r) acc += s[r][threadIdx.x];
    if (w < width) partial[blockIdx.y * width + w] = acc;
  }
  __syncthreads();
}

// Row-lane partials of 32 x Pack<T>::n channels per block, for 16-byte aligned rows whose width
// is a multiple of the pack: thread (x, y) owns channels c0 = (blockIdx.x * 32 + x) * n .. + n and
// walks rows y, y + 8 * gridDim.y, ... of row block blockIdx.y; v[e] is its partial for channel
// c0 + e. Reduces the 8 row lanes in a fixed order and stores partial[blockIdx.y, base + c0 + e].
// Every thread of the block must call it (it synchronises).
template <int N>
__device__ inline void column_pack_store(float (&v)[N], float* partial, int64_t width, int64_t base, int64_t c0,
                                         bool active) {
  __shared__ float s[kColumnRowLanes][32 * 8 + 1];  // N <= 8
#pragma unroll
  for (int e = 0; e < N; ++e) s[threadIdx.y][threadIdx.x * N + e] = v[e];
  __syncthreads();
  // Thread (x, y) finishes channels x * N + e for e = y, y + 8, ... (N <= 8: at most one).
  for (int e = threadIdx.y; e < N; e += kColumnRowLanes) {
    float acc = 0.0f;
    for (int r = 0; r < kColumnRowLanes; ++r) acc += s[r][threadIdx.x * N + e];
    if (active) partial[blockIdx.y * width + base + c0 + e] = acc;
  }
  __syncthreads();
}

}  // namespace llm::kernels
