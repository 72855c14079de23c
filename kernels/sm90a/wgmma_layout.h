// The shared-memory side of Hopper warpgroup MMA (wgmma.cuh), as plain arithmetic that host
// code can call too: tests/backend/wgmma_layout_test.cpp decodes every descriptor below the way
// the PTX ISA defines the canonical layouts and checks it addresses what the loader stored.
//
// Tiles. A 16-bit [R rows][HD cols] tile (HD a multiple of 16) is stored as ceil(HD / 64) panels
// of R rows x 128 bytes; panel p holds columns 64p .. 64p + 63 (the last one only its first
// HD - 64p: a 16-column k-step never crosses a panel, and an N of HD ends inside one). Inside a panel, 16-byte chunk c of
// row r sits at r * 128 + ((c ^ (r % 8)) * 16): the 128-byte swizzle, which the hardware undoes
// on read as long as every panel starts 1024-byte aligned (R a multiple of 8). The same tile
// serves as a K-major operand (K = the HD columns: Q K^T) and as an MN-major one (K = the rows:
// P V), so one copy of K/V/Q/dO feeds every product of flash attention.
//
// Descriptors (64 bits): start address >> 4 in bits 0-13, leading byte offset >> 4 in 16-29,
// stride byte offset >> 4 in 32-45, base offset 0 (panels are 1024-aligned), layout 1 (128-byte
// swizzle) in bits 62-63.
//   K-major, rows m .. m + 63 (or the whole N), k-step kk (16 columns): start = panel kk / 4,
//     row m, byte 32 * (kk % 4); stride offset 1024 (next 8 rows); leading offset unused (1).
//   MN-major (N = the HD columns), k-step kk (16 rows): start = row 16 * kk of panel 0; stride
//     offset 1024 (next 8 rows along K); leading offset R * 128 (next 64 columns along N).
#pragma once
#include <cstdint>

#ifdef __CUDACC__
#define LLM_WGMMA_HD __host__ __device__ __forceinline__
#else
#define LLM_WGMMA_HD inline
#endif

namespace llm::kernels::sm90a {

// Byte offset of 16-byte chunk c (0 .. HD / 8 - 1) of row r in an R-row swizzled tile.
template <int R>
LLM_WGMMA_HD constexpr uint32_t swizzled_offset(int r, int c) {
  return uint32_t((c / 8) * R * 128 + r * 128 + (((c % 8) ^ (r % 8)) << 4));
}

// Bytes of an R-row tile of HD columns (whole panels).
template <int R>
LLM_WGMMA_HD constexpr int tile_bytes(int hd) {
  return R * 128 * ((hd + 63) / 64);
}

constexpr uint64_t kSwizzle128 = uint64_t(1) << 62;

// K-major operand: rows from `row0` of an R-row tile at shared address `tile`, k-step kk.
template <int R>
LLM_WGMMA_HD constexpr uint64_t desc_k_major(uint32_t tile, int row0, int kk) {
  const uint32_t start = tile + uint32_t((kk / 4) * R * 128 + row0 * 128 + (kk % 4) * 32);
  return kSwizzle128 | (uint64_t(1024 >> 4) << 32) | (uint64_t(1) << 16) | uint64_t((start >> 4) & 0x3FFF);
}

// MN-major operand (N along the tile's columns, K along its rows): k-step kk = rows 16kk ..
template <int R>
LLM_WGMMA_HD constexpr uint64_t desc_mn_major(uint32_t tile, int kk) {
  const uint32_t start = tile + uint32_t(kk * 16 * 128);
  return kSwizzle128 | (uint64_t(1024 >> 4) << 32) | (uint64_t((R * 128) >> 4) << 16) | uint64_t((start >> 4) & 0x3FFF);
}

}  // namespace llm::kernels::sm90a

#undef LLM_WGMMA_HD
