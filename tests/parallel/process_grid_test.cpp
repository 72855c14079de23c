#include <gtest/gtest.h>

#include <set>

#include "core/error.h"
#include "parallel/process_grid.h"

using namespace llm;

namespace {
std::string error_of(const ParallelLayout& l, const LayoutConstraints& c) {
  try {
    validate_layout(l, c);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST(ProcessGrid, MegatronRankOrderTpFastestThenDpThenPp) {
  const ParallelLayout l{16, 2, 2, 1};  // dp = 4
  EXPECT_EQ(l.dp(), 4);
  std::set<std::tuple<int64_t, int64_t, int64_t>> seen;
  for (int64_t r = 0; r < 16; ++r) {
    const GridCoordinates g = grid_coordinates(l, r);
    EXPECT_EQ(r, g.tp_rank + l.tp * (g.dp_rank + l.dp() * g.pp_rank)) << r;
    seen.insert({g.tp_rank, g.dp_rank, g.pp_rank});
  }
  EXPECT_EQ(seen.size(), 16u);
  EXPECT_EQ(grid_coordinates(l, 1).tp_rank, 1);
  EXPECT_EQ(grid_coordinates(l, 2).dp_rank, 1);
  EXPECT_EQ(grid_coordinates(l, 8).pp_rank, 1);
}

// With Ulysses: tp fastest, then sp, dp, pp (Megatron-DeepSpeed's order): a tensor-parallel group
// is consecutive ranks, and so is each replica's tp x sp block.
TEST(ProcessGrid, UlyssesRanksComeAfterTensorParallelOnes) {
  const ParallelLayout l{24, 2, 2, 3};  // tp 2, pp 2, sp 3: dp 2
  ASSERT_EQ(l.dp(), 2);
  std::set<std::tuple<int64_t, int64_t, int64_t, int64_t>> seen;
  for (int64_t r = 0; r < 24; ++r) {
    const GridCoordinates g = grid_coordinates(l, r);
    EXPECT_EQ(r, g.tp_rank + l.tp * (g.sp_rank + l.sp * (g.dp_rank + l.dp() * g.pp_rank))) << r;
    seen.insert({g.tp_rank, g.sp_rank, g.dp_rank, g.pp_rank});
  }
  EXPECT_EQ(seen.size(), 24u);
  EXPECT_EQ(grid_coordinates(l, 1).tp_rank, 1);
  EXPECT_EQ(grid_coordinates(l, 2).sp_rank, 1);
  EXPECT_EQ(grid_coordinates(l, 6).dp_rank, 1);
  EXPECT_EQ(grid_coordinates(l, 12).pp_rank, 1);
}

TEST(ProcessGrid, ValidationNamesTheFailingConstraint) {
  const LayoutConstraints ok{24, 16, 2048, 1, 64, false};
  EXPECT_EQ(error_of({8, 2, 2, 1}, ok), "");
  EXPECT_NE(error_of({6, 4, 1, 1}, ok).find("world size 6 is not divisible"), std::string::npos);
  EXPECT_NE(error_of({6, 3, 1, 1}, ok).find("--num-attention-heads 16 is not divisible by --tensor-model-parallel-size 3"),
            std::string::npos);
  LayoutConstraints layers = ok;
  layers.num_layers = 25;
  EXPECT_NE(error_of({4, 1, 2, 1}, layers).find("--num-layers 25"), std::string::npos);
  LayoutConstraints seq = ok;
  seq.seq_length = 1000;
  EXPECT_NE(error_of({16, 1, 1, 16}, seq).find("--seq-length 1000 is not divisible"), std::string::npos);
  LayoutConstraints both = ok;
  both.megatron_sp = true;
  EXPECT_NE(error_of({4, 2, 1, 2}, both).find("exclude each other"), std::string::npos);
  LayoutConstraints batch = ok;
  batch.global_batch = 6;
  EXPECT_NE(error_of({4, 1, 1, 1}, batch).find("--global-batch-size 6 is not divisible by --micro-batch-size 1 x data-parallel size 4"),
            std::string::npos);
  // 4 heads over tp 2 and Ulysses 4: each alone divides them, together they do not
  LayoutConstraints heads = ok;
  heads.num_heads = 4;
  EXPECT_NE(error_of({8, 2, 1, 4}, heads).find("--num-attention-heads 4 is not divisible by --tensor-model-parallel-size 2 x "
                                               "--ds-sequence-parallel-size 4 = 8"),
            std::string::npos)
      << error_of({8, 2, 1, 4}, heads);
  EXPECT_EQ(error_of({8, 2, 1, 2}, heads), "");
  // Megatron SP splits a micro-batch's tokens over TP
  LayoutConstraints rows = ok;
  rows.megatron_sp = true;
  rows.seq_length = 127;
  EXPECT_NE(error_of({2, 2, 1, 1}, rows).find("--sequence-parallel: --micro-batch-size 1 x --seq-length 127 = 127 tokens are "
                                              "not divisible by --tensor-model-parallel-size 2"),
            std::string::npos)
      << error_of({2, 2, 1, 1}, rows);
  rows.micro_batch = 2;
  EXPECT_EQ(error_of({2, 2, 1, 1}, rows), "");
}
