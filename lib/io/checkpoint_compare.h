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
  int64_t nonfinite = 0;  // element pairs that differ with a NaN or an infinity on either side
  // max_abs / max_ref; infinite when any pair differs by a non-finite value (a NaN never matches,
  // not even a NaN)
  double relative() const;
};

struct CheckpointDifference {
  std::vector<TensorDifference> tensors;  // every tensor present in both
  std::vector<std::string> problems;      // a tensor missing on one side, or shapes that cannot be compared
  double worst(const std::string& category) const;  // largest relative difference in a category
};

// Reads every tensor of the categories "model" (and, with optimizer, "optimizer/exp_avg" and
// "optimizer/exp_avg_sq") from both checkpoints (directories or save roots) and compares them.
// `wte` may differ in its first dimension (the vocabulary padded for another tensor-parallel
// size): it is compared over the real vocabulary's rows where both record it (metadata.json's
// model.vocab_size; the padding rows are never looked up, and an export to Hugging Face drops
// them), else over the common leading rows. Any other shape difference, or two vocabulary sizes,
// is a problem.
CheckpointDifference compare_checkpoints(const std::string& a, const std::string& b, bool optimizer);

}  // namespace llm
