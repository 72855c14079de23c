// The shared-memory layout of the Hopper (wgmma) attention kernels, checked on the host: every
// descriptor they build (kernels/sm90a/wgmma_layout.h) is decoded the way the PTX ISA defines
// wgmma's canonical 128-byte-swizzled layouts, and each (row, k) element the tensor cores would
// read must be the element the tile loader stored there. A GPU run then only has to confirm the
// instruction semantics (CudaBackend.WgmmaTileProductsAreExact), not this arithmetic.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "sm90a/wgmma_layout.h"

namespace {

using namespace llm::kernels::sm90a;

struct Desc {
  uint32_t start, lbo, sbo, base_offset, layout;
};
Desc decode(uint64_t d) {
  return {uint32_t(d & 0x3FFF) << 4, uint32_t((d >> 16) & 0x3FFF) << 4, uint32_t((d >> 32) & 0x3FFF) << 4,
          uint32_t((d >> 49) & 7), uint32_t(d >> 62)};
}
// The 128-byte swizzle on a shared-memory byte address: bits 4-6 ^= bits 7-9.
uint32_t swizzle128(uint32_t addr) { return addr ^ (((addr >> 7) & 7u) << 4); }

// Byte address the hardware reads for element (mn, k), k < 16, of a 16-bit operand.
// K-major:  ((8, m), (8, 2)) : ((128 B, SBO), (2 B, 16 B))            (rows of 128 bytes)
// MN-major: ((8, 8, m), (8, k)) : ((2 B, 16 B, LBO), (128 B, SBO))    (64 elements along MN)
uint32_t k_major_address(const Desc& d, int mn, int k) {
  return swizzle128(d.start + uint32_t(mn / 8) * d.sbo + uint32_t(mn % 8) * 128 + uint32_t(k) * 2);
}
uint32_t mn_major_address(const Desc& d, int mn, int k) {
  return swizzle128(d.start + uint32_t(mn / 64) * d.lbo + uint32_t(mn % 64) * 2 + uint32_t(k % 8) * 128 +
                    uint32_t(k / 8) * d.sbo);
}

// Where the loader put element (row, col) of an R-row tile at `base`.
template <int R>
uint32_t stored_at(uint32_t base, int row, int col) {
  return base + swizzled_offset<R>(row, col / 8) + uint32_t(col % 8) * 2;
}

// Every element of an R x hd tile lies inside its tile_bytes, and no two share a byte.
template <int R>
void check_footprint(int hd) {
  std::vector<int> used(static_cast<size_t>(tile_bytes<R>(hd)), 0);
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < hd; ++c) {
      const uint32_t at = stored_at<R>(0, r, c);
      ASSERT_LT(at + 1, used.size()) << "R " << R << " hd " << hd << ": (" << r << ", " << c << ") outside the tile";
      EXPECT_EQ(++used[at], 1);
      EXPECT_EQ(++used[at + 1], 1);
    }
}

template <int R>
void check_tile(int hd, uint32_t base) {
  SCOPED_TRACE("R=" + std::to_string(R) + " hd=" + std::to_string(hd));
  int bad = 0;
  // K-major: the warpgroup's 64 rows from row0 (A operands) or all R rows (B operands).
  for (int row0 : {0, R - 64})
    for (int rows : {64, R}) {
      if (row0 + rows > R) continue;
      for (int kk = 0; kk < hd / 16; ++kk) {
        const Desc d = decode(desc_k_major<R>(base, row0, kk));
        EXPECT_EQ(d.layout, 1u) << "128-byte swizzle";
        EXPECT_EQ(d.base_offset, 0u);
        for (int mn = 0; mn < rows; ++mn)
          for (int k = 0; k < 16; ++k)
            if (k_major_address(d, mn, k) != stored_at<R>(base, row0 + mn, kk * 16 + k) && bad++ < 5)
              ADD_FAILURE() << "K-major row0 " << row0 << " kk " << kk << ": element (" << mn << ", " << k << ")";
      }
    }
  // MN-major: N = the hd columns, K = 16 rows per step.
  for (int kk = 0; kk < R / 16; ++kk) {
    const Desc d = decode(desc_mn_major<R>(base, kk));
    EXPECT_EQ(d.layout, 1u);
    EXPECT_EQ(d.base_offset, 0u);
    for (int n = 0; n < hd; ++n)
      for (int k = 0; k < 16; ++k)
        if (mn_major_address(d, n, k) != stored_at<R>(base, kk * 16 + k, n) && bad++ < 5)
          ADD_FAILURE() << "MN-major kk " << kk << ": element (n " << n << ", k " << k << ")";
  }
  EXPECT_EQ(bad, 0);
}

TEST(WgmmaLayout, DescriptorsReadWhatTheLoaderStored) {
  // Tile bases as the kernels place them: 1024-aligned, past other tiles.
  for (uint32_t base : {0u, 1024u * 40, 1024u * 144})
    for (int hd : {48, 64, 80, 96, 128}) {  // 48, 80, 96: the last panel is partly used
      check_tile<64>(hd, base);
      check_tile<128>(hd, base);
    }
}

TEST(WgmmaLayout, TilesFitTheirBytes) {
  for (int hd : {48, 64, 80, 96, 128}) {
    check_footprint<64>(hd);
    check_footprint<128>(hd);
  }
  EXPECT_EQ(tile_bytes<128>(64), 128 * 64 * 2);
  EXPECT_EQ(tile_bytes<128>(80), 128 * 128 * 2);  // two panels, the second partly used
}

TEST(WgmmaLayout, TheSwizzleIsAPermutationOfEachPanel) {
  // Every (row, chunk) of a 128-row, 2-panel tile lands on its own 16-byte slot inside the tile.
  std::vector<int> hits(2 * 128 * 8, 0);
  for (int r = 0; r < 128; ++r)
    for (int c = 0; c < 16; ++c) {
      const uint32_t off = swizzled_offset<128>(r, c);
      ASSERT_EQ(off % 16, 0u);
      ASSERT_LT(off / 16, hits.size());
      ++hits[off / 16];
      EXPECT_EQ(off / (128 * 128), uint32_t(c / 8)) << "chunk " << c << " must stay in panel " << c / 8;
    }
  for (int h : hits) EXPECT_EQ(h, 1);
}

}  // namespace
