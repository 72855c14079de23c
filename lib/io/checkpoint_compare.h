// Comparing two checkpoints tensor by tensor, whatever layouts wrote them: the check that a run
// under one parallel layout saved the same global tensors as another (llm-ckpt diff).
#pragma once
#include <string>
#include <vector>

namespace llm {

struct TensorDifference {
  std::string category, name;
  double max_abs = 0;    // largest |a - b| over the compared elements
  double max_ref = 0;    // largest |a|: the scale the difference is relative to
  int64_t compared = 0;  // elements compared (the common rows where the padded vocabulary differs)
  double relative() const { return max_ref > 0 ? max_abs / max_ref : max_abs; }
};

struct CheckpointDifference {
  std::vector<TensorDifference> tensors;  // every tensor present in both
  std::vector<std::string> problems;      // a tensor missing on one side, or shapes that cannot be compared
  double worst(const std::string& category) const;  // largest relative difference in a category
};

// Reads every tensor of the categories "model" (and, with optimizer, "optimizer/exp_avg" and
// "optimizer/exp_avg_sq") from both checkpoints (directories or save roots) and compares them.
// Tensors whose first dimension differs (vocabulary padded for another tensor-parallel size) are
// compared over their common leading rows.
CheckpointDifference compare_checkpoints(const std::string& a, const std::string& b, bool optimizer);

}  // namespace llm
