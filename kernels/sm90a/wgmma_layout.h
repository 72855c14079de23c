// The shared-memory side of Hopper warpgroup MMA (wgmma.cuh), as plain arithmetic that host
// code can call too: tests/backend/wgmma_layout_test.cpp decodes every descriptor below the way
// the PTX ISA defines the canonical layouts and checks it addresses what the loader stored.
//
// Tiles. A 16-bit [R rows][HD cols] tile (HD a multiple of 16) is stored in panels of W bytes per
// row, W the widest swizzle whose width in elements (W / 2) divides HD: 128 bytes (64 columns)
// for HD 64 and 128, 64 bytes (32 columns) for 96, 32 bytes (16 columns) for 48 and 80, as
// CUTLASS/FlashAttention-3 choose. Panel p holds columns p W/2 .. (p + 1) W/2 - 1 of all R rows,
// row r at r W. Inside a row, 16-byte chunk c sits at chunk c ^ ((r W / 128) % (W / 16)): the
// W-byte swizzle (address bits 4.. XOR bits 7..), which the hardware undoes on read as long as
// every panel starts 1024-byte aligned (R a multiple of 8). The same tile serves as a K-major
// operand (K = the HD columns: Q K^T) and as an MN-major one (K = the rows: P V), so one copy of
// K/V/Q/dO feeds every product of flash attention.
//
// Descriptors (64 bits): start address >> 4 in bits 0-13, leading byte offset >> 4 in 16-29,
// stride byte offset >> 4 in 32-45, base offset 0 (panels are 1024-aligned), layout type in bits
// 62-63 (1: 128-byte swizzle, 2: 64-byte, 3: 32-byte).
//   K-major, rows m .. m + 63 (or the whole N), k-step kk (16 columns = 32 bytes): start = panel
//     kk / (W / 32), row m, byte 32 (kk % (W / 32)); stride offset 8 W (next 8 rows); leading
//     offset unused (1).
//   MN-major (N = the HD columns), k-step kk (16 rows): start = row 16 kk of panel 0; stride
//     offset 8 W (next 8 rows along K); leading offset R W (the next panel along N).
#pragma once
#include <cstdint>

#ifdef __CUDACC__
#define LLM_WGMMA_HD __host__ __device__ __forceinline__
#else
#define LLM_WGMMA_HD inline
#endif

namespace llm::kernels::sm90a {

// Swizzle width in bytes for a tile of hd columns (hd a multiple of 16).
constexpr int swizzle_bytes(int hd) { return hd % 64 == 0 ? 128 : hd % 32 == 0 ? 64 : 32; }
// The descriptor's layout type for it.
constexpr uint64_t layout_type(int w) { return w == 128 ? 1 : w == 64 ? 2 : 3; }

// Bytes of an R-row tile of HD columns.
template <int R, int HD>
LLM_WGMMA_HD constexpr int tile_bytes() {
  static_assert(HD % 16 == 0, "wgmma tiles need a multiple of 16 columns");
  return R * HD * 2;
}

// Byte offset of 16-byte chunk c (0 .. HD / 8 - 1) of row r in an R-row tile.
template <int R, int HD>
LLM_WGMMA_HD constexpr uint32_t swizzled_offset(int r, int c) {
  constexpr int W = swizzle_bytes(HD), CPR = W / 16;  // chunks per panel row
  return uint32_t((c / CPR) * R * W + r * W + (((c % CPR) ^ ((r * W / 128) % CPR)) << 4));
}

// TMA (tma.cuh): panel p of an R-row tile starts at byte panel_offset<R, HD>(p), and one box of
// panel_columns(HD) columns by R rows, copied under the swizzle_bytes(HD) swizzle to that
// (1024-byte aligned) address, fills it: the hardware swizzles on the shared address bits.
constexpr int panel_columns(int hd) { return swizzle_bytes(hd) / 2; }
template <int R, int HD>
LLM_WGMMA_HD constexpr uint32_t panel_offset(int p) {
  return uint32_t(p * R * swizzle_bytes(HD));
}

// Byte offset of column `col` (a multiple of 8) of an R-row tile: an MN-major operand whose N
// columns start there is that tile's columns col .. col + N - 1, provided they lie in whole
// panels from a panel's start or inside one panel (the descriptor steps panels by R W bytes).
template <int R, int HD>
LLM_WGMMA_HD constexpr uint32_t column_offset(int col) {
  return swizzled_offset<R, HD>(0, col / 8);
}

// The warp-specialised backward's dQ staging tile (LLM_CUDA_ATTENTION=wgmma-ws-tma): R rows of
// HD fp32 columns, laid out byte for byte as the 16-bit tile of 2 HD columns, so one TMA box of
// dq_box_columns(HD) fp32 columns (a swizzle span) by R rows under the swizzle_bytes(2 HD) swizzle
// covers each panel, as the tile loads' boxes do (WgmmaLayout.TheDqStagingTileIsTheTmaBoxes).
constexpr int dq_box_columns(int hd) { return swizzle_bytes(2 * hd) / 4; }
template <int R, int HD>
LLM_WGMMA_HD constexpr uint32_t dq_staging_offset(int row, int col) {  // col: an fp32 column
  return swizzled_offset<R, 2 * HD>(row, col / 4) + uint32_t(col % 4) * 4;
}
template <int R, int HD>
LLM_WGMMA_HD constexpr int dq_staging_bytes() {
  return R * HD * 4;
}

// The fused backward's split of dQ (64 queries x hd) between its two warpgroups by columns, each
// over all the block's keys: warpgroup 0 takes the first dq_split_cols(hd, 0) columns, warpgroup 1
// the rest; whole panels of the K tile (the first warpgroup the larger half), or halves of the
// one panel of hd 64. 64/64 at hd 128, 64/32 at 96, 48/32 at 80, 32/32 at 64, 32/16 at 48.
constexpr int dq_split_cols(int hd, int w) {
  const int pc = panel_columns(hd), panels = hd / pc;
  return panels == 1 ? hd / 2 : (w == 0 ? (panels + 1) / 2 : panels / 2) * pc;
}

// Register A operand (wgmma's RS form) loaded from a tile: register j (0..3) of k-step kk for
// quad lane t holds the two 16-bit elements at row `row` + 8 (j & 1), columns 16 kk + 8 (j >> 1) +
// 2t and + 1 (the accumulator layout, so pack_a and this agree); their byte offset in the tile.
template <int R, int HD>
LLM_WGMMA_HD constexpr uint32_t a_fragment_offset(int row, int kk, int j, int t) {
  return swizzled_offset<R, HD>(row + 8 * (j & 1), 2 * kk + (j >> 1)) + uint32_t(4 * t);
}

// K-major operand: rows from `row0` of an R-row tile at shared address `tile`, k-step kk.
template <int R, int HD>
LLM_WGMMA_HD constexpr uint64_t desc_k_major(uint32_t tile, int row0, int kk) {
  constexpr int W = swizzle_bytes(HD), KS = W / 32;  // k-steps per panel
  const uint32_t start = tile + uint32_t((kk / KS) * R * W + row0 * W + (kk % KS) * 32);
  return (layout_type(W) << 62) | (uint64_t((8 * W) >> 4) << 32) | (uint64_t(1) << 16) |
         uint64_t((start >> 4) & 0x3FFF);
}

// MN-major operand (N along the tile's columns, K along its rows): k-step kk = rows 16kk ..
template <int R, int HD>
LLM_WGMMA_HD constexpr uint64_t desc_mn_major(uint32_t tile, int kk) {
  constexpr int W = swizzle_bytes(HD);
  const uint32_t start = tile + uint32_t(kk * 16 * W);
  return (layout_type(W) << 62) | (uint64_t((8 * W) >> 4) << 32) | (uint64_t((R * W) >> 4) << 16) |
         uint64_t((start >> 4) & 0x3FFF);
}

}  // namespace llm::kernels::sm90a

#undef LLM_WGMMA_HD
