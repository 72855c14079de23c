// The rank grid, Megatron(-DeepSpeed)'s order: world = pp x dp x sp x tp with tp varying
// fastest, then the Ulysses sequence-parallel rank, then dp, then pp
// (rank = tp_rank + tp * (sp_rank + sp * (dp_rank + dp * pp_rank))). The whole layout is validated before
// anything is allocated, with a message naming the constraint that fails.
#pragma once
#include <cstdint>
#include <string>

namespace llm {

struct ParallelLayout {
  int64_t world = 1, tp = 1, pp = 1, sp = 1;  // sp: Ulysses sequence parallel size
  int64_t dp() const { return world / (tp * pp * sp); }
};

struct LayoutConstraints {
  int64_t num_layers = 1, num_heads = 1, seq_length = 1, micro_batch = 1, global_batch = 1;
  bool megatron_sp = false;  // --sequence-parallel
};

// Throws ConfigError naming what fails (world % (tp*pp*sp), heads % tp, layers % pp, seq % sp,
// global batch % (micro x dp), Megatron SP with Ulysses SP, ...).
void validate_layout(const ParallelLayout& layout, const LayoutConstraints& c);

struct GridCoordinates {
  int64_t tp_rank = 0, dp_rank = 0, pp_rank = 0, sp_rank = 0;
};
GridCoordinates grid_coordinates(const ParallelLayout& layout, int64_t rank);

}  // namespace llm
