// range_pieces(): any flat range of a parameter's local tensor maps to boxes of the global tensor
// that, over a partition of the tensor into ranges, put every local element exactly where
// local_boxes() says it belongs (tensor-parallel chunks, column shards, vectors).
#include <gtest/gtest.h>

#include <map>

#include "model/gpt.h"
#include "train/checkpointing.h"

using namespace llm;

namespace {

// The global index each local element lands at, by local_boxes (the reference) ...
std::map<int64_t, int64_t> by_local_boxes(const ParamSpec& s) {
  std::map<int64_t, int64_t> out;  // local flat index -> global flat index
  const int64_t gcols = s.global_shape.size() == 2 ? s.global_shape[1] : 1, lcols = s.shape.size() == 2 ? s.shape[1] : 1;
  for (const LocalBox& b : local_boxes(s)) {
    const int64_t rows = b.extent[0], cols = b.extent.size() == 2 ? b.extent[1] : 1;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) {
        const int64_t lr = b.local_offset[0] + r, lc = (b.local_offset.size() == 2 ? b.local_offset[1] : 0) + c;
        const int64_t gr = b.global_offset[0] + r, gc = (b.global_offset.size() == 2 ? b.global_offset[1] : 0) + c;
        out[lr * lcols + lc] = gr * gcols + gc;
      }
  }
  return out;
}

// ... and by the range pieces of a partition of [0, n) at the given cuts.
std::map<int64_t, int64_t> by_ranges(const ParamSpec& s, const std::vector<int64_t>& cuts, int* pieces) {
  std::map<int64_t, int64_t> out;
  const int64_t gcols = s.global_shape.size() == 2 ? s.global_shape[1] : 1;
  for (size_t k = 0; k + 1 < cuts.size(); ++k)
    for (const RangePiece& p : range_pieces(s, cuts[k], cuts[k + 1])) {
      ++*pieces;
      const int64_t rows = p.box.extent[0], cols = p.box.extent.size() == 2 ? p.box.extent[1] : 1;
      EXPECT_EQ(rows * cols, p.length);
      for (int64_t i = 0; i < p.length; ++i) {
        const int64_t gr = p.box.offset[0] + i / cols;
        const int64_t gc = (p.box.offset.size() == 2 ? p.box.offset[1] : 0) + i % cols;
        EXPECT_TRUE(out.emplace(p.flat_begin + i, gr * gcols + gc).second) << s.name << ": element stored twice";
      }
    }
  return out;
}

}  // namespace

TEST(RangePieces, PartitionsMapEveryElementWhereLocalBoxesDo) {
  GPTConfig c;
  c.num_layers = 1;
  c.hidden_size = 32;
  c.num_heads = 4;
  c.vocab_size = 100;
  c.vocab_divisible_by = 16;
  c.tensor_parallel = 2;
  int checked = 0;
  for (int rank : {0, 1}) {
    const ParameterSet ps = gpt_parameters(c, 16, rank, 2, false);
    for (const ParamSpec& s : ps.specs()) {
      const int64_t n = numel(s.shape);
      // Cuts inside rows, at row ends, and across the chunk boundaries.
      for (const std::vector<int64_t>& cuts :
           {std::vector<int64_t>{0, n}, std::vector<int64_t>{0, 1, n / 3 + 5, n - 7, n}, std::vector<int64_t>{0, n / 2, n}}) {
        if (cuts[1] > n || cuts[cuts.size() - 2] < 0) continue;
        int pieces = 0;
        const auto want = by_local_boxes(s), got = by_ranges(s, cuts, &pieces);
        EXPECT_EQ(got.size(), static_cast<size_t>(n)) << s.name;
        EXPECT_EQ(got, want) << s.name << " (rank " << rank << ", " << cuts.size() - 1 << " ranges)";
        ++checked;
      }
    }
  }
  EXPECT_GT(checked, 20);
}
