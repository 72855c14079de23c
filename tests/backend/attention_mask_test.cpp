// The int32 tile limits of kernels/attention_mask.h against the int64 predicates the attention
// kernels used per element before (forward: key <= qpos && key < Tk; backward: key <= query &&
// query < T && key < T), over every row and column of tiles at every offset around the diagonal
// and the sequence end, and the fragment column map against the mma/wgmma accumulator layout.
#include <gtest/gtest.h>

#include "attention_mask.h"

using namespace llm::kernels;

namespace {
constexpr int kTile = 64;

// The backward's sweep: sequences around the tile size, tiles starting every 16 positions up to
// past the end, and every row (a query or a key) up to 70 past the end; f(T, col0, row). Stops at
// the first fatal failure.
template <typename F>
void for_each_backward_row(F&& f) {
  for (int64_t T : {1, 63, 64, 65, 130, 333})
    for (int64_t col0 = 0; col0 < T + kTile; col0 += 16)
      for (int64_t row = 0; row < T + 70; ++row) {
        f(T, col0, row);
        if (::testing::Test::HasFatalFailure()) return;
      }
}
}  // namespace

TEST(AttentionTileMask, ForwardLimitsMatchTheCausalPredicate) {
  int64_t checked = 0, masked = 0;
  for (int64_t Tk : {1, 63, 64, 65, 130, 333})
    for (int64_t col0 = 0; col0 < Tk + kTile; col0 += 16)
      for (int64_t q = 0; q < Tk + 8; ++q) {  // rows past Tk: the padded query rows of a last tile
        const int end = keys_visible_end(q, col0, Tk, kTile);
        for (int c = 0; c < kTile; ++c) {
          const int64_t key = col0 + c;
          const bool want = key <= q && key < Tk;
          ASSERT_EQ(c < end, want) << "Tk " << Tk << " col0 " << col0 << " query " << q << " column " << c;
          ++checked;
          masked += !want;
        }
      }
  EXPECT_GT(masked, checked / 4);  // both outcomes are exercised
}

TEST(AttentionTileMask, BackwardQueryRowLimitsMatchTheCausalPredicate) {
  for_each_backward_row([](int64_t T, int64_t col0, int64_t q) {
    const int end = keys_visible_end_bwd(q, col0, T, kTile);
    for (int c = 0; c < kTile; ++c) {
      const int64_t key = col0 + c;
      ASSERT_EQ(c < end, key <= q && q < T && key < T) << "T " << T << " col0 " << col0 << " query " << q << " column " << c;
    }
  });
}

TEST(AttentionTileMask, BackwardKeyRowLimitsMatchTheCausalPredicate) {
  for_each_backward_row([](int64_t T, int64_t col0, int64_t key) {
    const ColumnRange r = queries_visible(key, col0, T, kTile);
    for (int c = 0; c < kTile; ++c) {
      const int64_t q = col0 + c;
      ASSERT_EQ(c >= r.begin && c < r.end, key <= q && q < T && key < T)
          << "T " << T << " col0 " << col0 << " key " << key << " column " << c;
    }
  });
}

TEST(AttentionTileMask, FragmentColumnsCoverEachRowOnce) {
  // Per 8-column block, lane quad t holds columns 2t and 2t + 1 of each of its two rows: over the
  // four lanes of a quad, every column of a row appears once (elements 0, 1 and 4, 5, ...: row g;
  // 2, 3, ...: row g + 8).
  constexpr int N = 32;  // elements per lane for a 64-column tile
  for (int half = 0; half < 2; ++half) {
    int seen[2 * N] = {};
    for (int t = 0; t < 4; ++t)
      for (int i = 0; i < N; ++i)
        if (((i & 2) != 0) == (half == 1)) ++seen[fragment_column(i, t)];
    for (int c = 0; c < 2 * N; ++c) EXPECT_EQ(seen[c], 1) << "row half " << half << " column " << c;
  }
  EXPECT_EQ(fragment_column(5, 3), 8 + 6 + 1);
}
