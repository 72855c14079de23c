// kernels/tc_dq_split.h: the mma.sync fused backward's dQ split over warps and lanes adds every
// element of a query tile's dQ [BR][HD] exactly once, in both block shapes (4 warps x 32-query
// tiles, 8 warps x 64) at every head dim of the model table, and a warp's pairs past the head dim
// are the only ones it skips.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tc_dq_split.h"

using llm::kernels::TcDqSplit;

namespace {

template <int NW, int R, int HD>
void check_split() {
  using S = TcDqSplit<NW, R, HD>;
  SCOPED_TRACE(std::to_string(NW) + " warps x " + std::to_string(R) + " queries, hd " + std::to_string(HD));
  std::vector<int> adds(static_cast<size_t>(R * HD), 0);
  int skipped = 0;
  for (int warp = 0; warp < NW; ++warp)
    for (int pp = 0; pp < S::NP; ++pp) {
      const int p = S::pair(warp, pp);
      if (p >= S::PAIRS) {
        ++skipped;
        continue;
      }
      for (int lane = 0; lane < 32; ++lane)
        for (int half = 0; half < 2; ++half)
          for (int e = 0; e < 4; ++e) {
            const int r = S::row(warp, lane, e), c = S::column(p, half, lane, e);
            ASSERT_TRUE(r >= 0 && r < R && c >= 0 && c < HD) << "row " << r << " column " << c;
            ++adds[size_t(r) * HD + c];
          }
    }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < HD; ++c) ASSERT_EQ(adds[size_t(r) * HD + c], 1) << "row " << r << " column " << c;
  // Only the rounding of PAIRS up to a multiple of CG leaves pairs unused.
  EXPECT_EQ(skipped, (S::NP * S::CG - S::PAIRS) * S::QG);
}

template <int NW, int R>
void check_head_dims() {
  check_split<NW, R, 48>();
  check_split<NW, R, 64>();
  check_split<NW, R, 80>();
  check_split<NW, R, 96>();
  check_split<NW, R, 128>();
  check_split<NW, R, 160>();
}

TEST(TcDqSplit, EveryElementOfTheTileIsAddedOnceByTheNarrowShape) { check_head_dims<4, 32>(); }
TEST(TcDqSplit, EveryElementOfTheTileIsAddedOnceByTheWideShape) { check_head_dims<8, 64>(); }

// The split names the same rows the dS^T tile's ldmatrix reads for the A fragments: query group
// w % QG of 16 rows, so the narrow shape's warps 0 and 2 share rows 0-15, the wide shape's warps
// 0 and 4.
TEST(TcDqSplit, WarpsOfAQueryGroupShareItsRows) {
  using Narrow = TcDqSplit<4, 32, 64>;
  using Wide = TcDqSplit<8, 64, 128>;
  EXPECT_EQ(Narrow::QG, 2);
  EXPECT_EQ(Narrow::CG, 2);
  EXPECT_EQ(Wide::QG, 4);
  EXPECT_EQ(Wide::CG, 2);
  EXPECT_EQ(Narrow::row(2, 0, 0), Narrow::row(0, 0, 0));
  EXPECT_EQ(Wide::row(4, 5, 3), Wide::row(0, 5, 3));
  EXPECT_EQ(Wide::row(7, 31, 3), 63);
  EXPECT_NE(Wide::pair(4, 0), Wide::pair(0, 0));
}

}  // namespace
