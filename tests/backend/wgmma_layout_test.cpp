// The shared-memory layout of the Hopper (wgmma) attention kernels, checked on the host: every
// descriptor they build (kernels/sm90a/wgmma_layout.h) is decoded the way the PTX ISA defines
// wgmma's canonical 128-byte-swizzled layouts, and each (row, k) element the tensor cores would
// read must be the element the tile loader stored there. A GPU run then only has to confirm the
// instruction semantics (CudaBackend.WgmmaTileProductsAreExact), not this arithmetic.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "sm90a/wgmma_layout.h"

namespace {

using namespace llm::kernels::sm90a;

struct Desc {
  uint32_t start, lbo, sbo, base_offset, layout;
  uint32_t swizzle_bytes() const { return layout == 1 ? 128 : layout == 2 ? 64 : layout == 3 ? 32 : 0; }
};
Desc decode(uint64_t d) {
  return {uint32_t(d & 0x3FFF) << 4, uint32_t((d >> 16) & 0x3FFF) << 4, uint32_t((d >> 32) & 0x3FFF) << 4,
          uint32_t((d >> 49) & 7), uint32_t(d >> 62)};
}
// The W-byte swizzle on a shared-memory byte address (CUTLASS's Swizzle<log2(W / 16), 4, 3>): the
// log2(W / 16) bits from bit 4 up are XORed with as many bits from bit 7 up.
uint32_t swizzle(uint32_t addr, uint32_t w) { return addr ^ (((addr >> 7) & (w / 16 - 1)) << 4); }

// Byte address the hardware reads for element (mn, k), k < 16, of a 16-bit operand under a
// W-byte swizzle (T = 8 elements = 16 bytes, rows of W bytes):
// K-major:  ((8, m), (8, 2)) : ((W, SBO), (2 B, 16 B))
// MN-major: ((8, W / 16, m), (8, k)) : ((2 B, 16 B, LBO), (W, SBO))
uint32_t k_major_address(const Desc& d, int mn, int k) {
  const uint32_t w = d.swizzle_bytes();
  return swizzle(d.start + uint32_t(mn / 8) * d.sbo + uint32_t(mn % 8) * w + uint32_t(k) * 2, w);
}
uint32_t mn_major_address(const Desc& d, int mn, int k) {
  const uint32_t w = d.swizzle_bytes(), e = w / 2;  // elements per panel row
  return swizzle(d.start + uint32_t(mn) / e * d.lbo + uint32_t(mn) % e * 2 + uint32_t(k % 8) * w + uint32_t(k / 8) * d.sbo, w);
}

// Where the loader put element (row, col) of an R-row tile at `base`.
template <int R, int HD>
uint32_t stored_at(uint32_t base, int row, int col) {
  return base + swizzled_offset<R, HD>(row, col / 8) + uint32_t(col % 8) * 2;
}

// Every element of an R x HD tile lies inside its tile_bytes, and no two share a byte.
template <int R, int HD>
void check_footprint() {
  std::vector<int> used(static_cast<size_t>(tile_bytes<R, HD>()), 0);
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < HD; ++c) {
      const uint32_t at = stored_at<R, HD>(0, r, c);
      ASSERT_LT(at + 1, used.size()) << "R " << R << " hd " << HD << ": (" << r << ", " << c << ") outside the tile";
      EXPECT_EQ(++used[at], 1);
      EXPECT_EQ(++used[at + 1], 1);
    }
}

template <int R, int HD>
void check_tile(uint32_t base) {
  SCOPED_TRACE("R=" + std::to_string(R) + " hd=" + std::to_string(HD));
  int bad = 0;
  // K-major: the warpgroup's 64 rows from row0 (A operands) or all R rows (B operands).
  for (int row0 : {0, R - 64})
    for (int rows : {64, R}) {
      if (row0 + rows > R) continue;
      for (int kk = 0; kk < HD / 16; ++kk) {
        const Desc d = decode(desc_k_major<R, HD>(base, row0, kk));
        EXPECT_EQ(d.swizzle_bytes(), uint32_t(swizzle_bytes(HD)));
        EXPECT_EQ(d.base_offset, 0u);
        for (int mn = 0; mn < rows; ++mn)
          for (int k = 0; k < 16; ++k)
            if (k_major_address(d, mn, k) != stored_at<R, HD>(base, row0 + mn, kk * 16 + k) && bad++ < 5)
              ADD_FAILURE() << "K-major row0 " << row0 << " kk " << kk << ": element (" << mn << ", " << k << ")";
      }
    }
  // MN-major: N = the HD columns, K = 16 rows per step.
  for (int kk = 0; kk < R / 16; ++kk) {
    const Desc d = decode(desc_mn_major<R, HD>(base, kk));
    EXPECT_EQ(d.swizzle_bytes(), uint32_t(swizzle_bytes(HD)));
    EXPECT_EQ(d.base_offset, 0u);
    for (int n = 0; n < HD; ++n)
      for (int k = 0; k < 16; ++k)
        if (mn_major_address(d, n, k) != stored_at<R, HD>(base, kk * 16 + k, n) && bad++ < 5)
          ADD_FAILURE() << "MN-major kk " << kk << ": element (n " << n << ", k " << k << ")";
  }
  EXPECT_EQ(bad, 0);
}

template <int HD>
void check_both_tile_heights(uint32_t base) {
  check_tile<64, HD>(base);
  check_tile<128, HD>(base);
}

TEST(WgmmaLayout, DescriptorsReadWhatTheLoaderStored) {
  // Tile bases as the kernels place them: 1024-aligned, past other tiles.
  for (uint32_t base : {0u, 1024u * 40, 1024u * 144}) {
    check_both_tile_heights<48>(base);
    check_both_tile_heights<64>(base);
    check_both_tile_heights<80>(base);
    check_both_tile_heights<96>(base);
    check_both_tile_heights<128>(base);
  }
}

TEST(WgmmaLayout, SwizzleWidthsDivideTheHeadDim) {
  // Each operand's extent along a panel is a whole number of swizzle atoms (CUTLASS's canonical
  // layouts need it; an MN-major N of 80 over 64-column atoms would not be one).
  EXPECT_EQ(swizzle_bytes(48), 32);
  EXPECT_EQ(swizzle_bytes(64), 128);
  EXPECT_EQ(swizzle_bytes(80), 32);
  EXPECT_EQ(swizzle_bytes(96), 64);
  EXPECT_EQ(swizzle_bytes(128), 128);
  for (int hd : {48, 64, 80, 96, 128}) EXPECT_EQ(hd % (swizzle_bytes(hd) / 2), 0) << hd;
}

TEST(WgmmaLayout, TilesFitTheirBytes) {
  check_footprint<64, 48>();
  check_footprint<128, 48>();
  check_footprint<64, 80>();
  check_footprint<128, 96>();
  check_footprint<128, 128>();
  EXPECT_EQ((tile_bytes<128, 64>() % 1024), 0);  // the next tile starts aligned
  EXPECT_EQ((tile_bytes<64, 48>() % 1024), 0);
}

TEST(WgmmaLayout, TheSwizzleIsAPermutationOfEachPanel) {
  // Every (row, chunk) of a 128-row tile lands on its own 16-byte slot inside its panel.
  const auto check = [](auto hd_tag) {
    constexpr int HD = decltype(hd_tag)::value, W = swizzle_bytes(HD);
    std::vector<int> hits(size_t(128) * HD / 8, 0);
    for (int r = 0; r < 128; ++r)
      for (int c = 0; c < HD / 8; ++c) {
        const uint32_t off = swizzled_offset<128, HD>(r, c);
        ASSERT_EQ(off % 16, 0u);
        ASSERT_LT(off / 16, hits.size());
        ++hits[off / 16];
        EXPECT_EQ(off / (128 * W), uint32_t(c / (W / 16))) << "hd " << HD << " chunk " << c;
      }
    for (int h : hits) EXPECT_EQ(h, 1);
  };
  check(std::integral_constant<int, 48>{});
  check(std::integral_constant<int, 96>{});
  check(std::integral_constant<int, 128>{});
}

// The fused backward (wgmma-atomic) splits dQ's columns between its warpgroups (dq_split_cols):
// warpgroup w's B operand is columns col0 .. col0 + N - 1 of the 128-row K tile, read MN-major
// from column_offset(col0): whole panels from a panel's start (the leading offset steps to the
// next panel), or at hd 64 half of the one 128-byte panel (a start 64 bytes into the swizzled
// row, as K-major k-steps start 32 bytes apart). Every element must be the one the loader stored,
// the two slices must cover the head dim, and each N must be one wgmma.cuh instantiates.
template <int HD>
void check_dq_slices(uint32_t base) {
  SCOPED_TRACE("hd=" + std::to_string(HD));
  const int n0 = dq_split_cols(HD, 0), n1 = dq_split_cols(HD, 1);
  EXPECT_EQ(n0 + n1, HD);
  EXPECT_GE(n0, n1);  // warpgroup 0 takes the larger half
  int bad = 0;
  for (int w = 0; w < 2; ++w) {
    const int col0 = w == 0 ? 0 : n0, n_cols = w == 0 ? n0 : n1;
    EXPECT_TRUE(n_cols == 16 || n_cols == 32 || n_cols == 48 || n_cols == 64) << "N " << n_cols;
    for (int kk = 0; kk < 128 / 16; ++kk) {
      const Desc d = decode(desc_mn_major<128, HD>(base + column_offset<128, HD>(col0), kk));
      EXPECT_EQ(d.base_offset, 0u);
      for (int n = 0; n < n_cols; ++n)
        for (int k = 0; k < 16; ++k)
          if (mn_major_address(d, n, k) != stored_at<128, HD>(base, kk * 16 + k, col0 + n) && bad++ < 5)
            ADD_FAILURE() << "warpgroup " << w << " kk " << kk << ": element (n " << n << ", k " << k << ")";
    }
  }
  EXPECT_EQ(bad, 0);
}

TEST(WgmmaLayout, TheFusedBackwardsDqSlicesAreMnMajorOperands) {
  for (uint32_t base : {0u, 1024u * 40}) {
    check_dq_slices<48>(base);
    check_dq_slices<64>(base);
    check_dq_slices<80>(base);
    check_dq_slices<96>(base);
    check_dq_slices<128>(base);
  }
  // The same rule read as the split it names.
  EXPECT_EQ(dq_split_cols(128, 0), 64);
  EXPECT_EQ(dq_split_cols(96, 1), 32);
  EXPECT_EQ(dq_split_cols(80, 0), 48);
  EXPECT_EQ(dq_split_cols(64, 1), 32);
  EXPECT_EQ(dq_split_cols(48, 1), 16);
}

// The warp-specialised forward (wgmma-ws) copies its tiles with TMA instead of the loader: for
// each panel p, one box of panel_columns(HD) columns by R rows, starting at column p *
// panel_columns(HD), to panel_offset<R, HD>(p) past the tile's base. TMA writes a box densely
// (row y at y * W bytes, element x at 2x) and applies the map's W-byte swizzle to the shared
// address; every element must land where the loader stores it, so the same descriptors read it.
template <int R, int HD>
void check_tma_boxes(uint32_t base) {
  constexpr int W = swizzle_bytes(HD), cols = panel_columns(HD);
  static_assert(cols * 2 == W, "a box row is one swizzle span (the TMA limit for a swizzled box)");
  int bad = 0;
  for (int p = 0; p < HD / cols; ++p) {
    const uint32_t box = base + panel_offset<R, HD>(p);
    EXPECT_EQ(box % 1024, 0u) << "hd " << HD << " panel " << p;  // the swizzle repeats every 1024 bytes
    for (int y = 0; y < R; ++y)
      for (int x = 0; x < cols; ++x)
        if (swizzle(box + uint32_t(y * W + 2 * x), W) != stored_at<R, HD>(base, y, p * cols + x) && bad++ < 5)
          ADD_FAILURE() << "R " << R << " hd " << HD << ": box " << p << " element (" << x << ", row " << y << ")";
  }
  EXPECT_EQ(bad, 0);
}

TEST(WgmmaLayout, TmaBoxesFillThePanels) {
  for (uint32_t base : {0u, 1024u * 33, 1024u * 160}) {
    check_tma_boxes<128, 48>(base);
    check_tma_boxes<128, 64>(base);
    check_tma_boxes<128, 80>(base);
    check_tma_boxes<128, 96>(base);
    check_tma_boxes<128, 128>(base);
  }
}


// wgmma-ws-tma's dQ staging tile: the consumers store fp32 dQ at dq_staging_offset, and the TMA
// reductions read it as boxes of dq_box_columns(HD) fp32 columns by R rows, one per panel of the
// 16-bit tile of 2 HD columns, under that tile's swizzle; every element the box reads must be the
// one the consumers stored there.
template <int R, int HD>
void check_dq_staging(uint32_t base) {
  using llm::kernels::sm90a::dq_box_columns;
  using llm::kernels::sm90a::dq_staging_bytes;
  using llm::kernels::sm90a::dq_staging_offset;
  constexpr int W = swizzle_bytes(2 * HD), cols = dq_box_columns(HD);
  static_assert(cols * 4 == W, "a box row is one swizzle span");
  int bad = 0;
  for (int p = 0; p < HD / cols; ++p) {
    const uint32_t box = base + panel_offset<R, 2 * HD>(p);
    EXPECT_EQ(box % 1024, 0u) << "hd " << HD << " panel " << p;
    for (int y = 0; y < R; ++y)
      for (int x = 0; x < cols; ++x) {
        const uint32_t stored = base + dq_staging_offset<R, HD>(y, p * cols + x);
        if ((swizzle(box + uint32_t(y * W + 4 * x), W) != stored || stored - base >= uint32_t(dq_staging_bytes<R, HD>())) &&
            bad++ < 5)
          ADD_FAILURE() << "R " << R << " hd " << HD << ": box " << p << " element (" << x << ", row " << y << ")";
      }
  }
  EXPECT_EQ(HD % cols, 0) << "whole boxes";
  EXPECT_EQ(bad, 0);
}

TEST(WgmmaLayout, TheDqStagingTileIsTheTmaBoxes) {
  for (uint32_t base : {0u, 1024u * 37}) {  // the ws backward's query tiles: 128 rows up to hd 64, 64 above
    check_dq_staging<128, 48>(base);
    check_dq_staging<128, 64>(base);
    check_dq_staging<64, 80>(base);
    check_dq_staging<64, 96>(base);
    check_dq_staging<64, 128>(base);
  }
  // The consumers' dQ column slices start on box boundaries (each slice is whole boxes).
  for (int hd : {80, 96, 128}) EXPECT_EQ(dq_split_cols(hd, 0) % llm::kernels::sm90a::dq_box_columns(hd), 0) << hd;
}


// wgmma-rs's dQ kernel loads Q and dO rows from their swizzled tiles into RS A fragments
// (a_fragment_offset): each register must hold the two elements the accumulator layout puts there
// (pack_a's mapping, fragment_column in attention_mask.h: register j of k-step kk is accumulator
// elements 8 kk + 2 j and + 1), for every row, k-step and lane of a 128-row tile.
template <int HD>
void check_a_fragments() {
  constexpr int R = 128;
  std::vector<int> at(size_t(R) * HD * 2, -1);  // byte -> element index r * HD + c, low byte of each pair
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < HD; ++c) {
      const uint32_t off = llm::kernels::sm90a::swizzled_offset<R, HD>(r, c / 8) + uint32_t(2 * (c % 8));
      at[off] = r * HD + c;
    }
  for (int row = 0; row < R; row += 16)
    for (int g = 0; g < 8; ++g)
      for (int kk = 0; kk < HD / 16; ++kk)
        for (int j = 0; j < 4; ++j)
          for (int t = 0; t < 4; ++t) {
            const uint32_t off = llm::kernels::sm90a::a_fragment_offset<R, HD>(row + g, kk, j, t);
            // the accumulator layout: element i = 8 kk + 2 j (+1) is at row g (+8 when i & 2),
            // column (i / 4) * 8 + 2t (+ (i & 1))
            const int i = 8 * kk + 2 * j, r = row + g + ((i & 2) ? 8 : 0), c = (i / 4) * 8 + 2 * t;
            ASSERT_EQ(at[off], r * HD + c) << "hd " << HD << " row " << row + g << " kk " << kk << " j " << j << " t " << t;
            ASSERT_EQ(at[off + 2], r * HD + c + 1) << "hd " << HD << " row " << row + g << " kk " << kk << " j " << j;
          }
}

TEST(WgmmaLayout, RegisterFragmentsHoldTheAccumulatorLayout) {
  check_a_fragments<48>();
  check_a_fragments<64>();
  check_a_fragments<80>();
  check_a_fragments<96>();
  check_a_fragments<128>();
}

}  // namespace
