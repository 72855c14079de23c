#include "io/checkpoint_compare.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "io/checkpoint.h"

namespace llm {

double CheckpointDifference::worst(const std::string& category) const {
  double w = 0;
  for (const TensorDifference& t : tensors)
    if (t.category == category) w = std::max(w, t.relative());
  return w;
}

CheckpointDifference compare_checkpoints(const std::string& a_path, const std::string& b_path, bool optimizer) {
  const CheckpointReader a = CheckpointReader::open(a_path), b = CheckpointReader::open(b_path);
  CheckpointDifference out;
  std::vector<std::string> categories{"model"};
  if (optimizer) categories.insert(categories.end(), {"optimizer/exp_avg", "optimizer/exp_avg_sq"});
  for (const std::string& cat : categories) {
    for (const std::string& name : a.names(cat)) {
      if (!b.has(cat, name)) {
        out.problems.push_back(detail::concat(cat, "/", name, ": only in ", a.dir()));
        continue;
      }
      const Shape sa = a.global_shape(cat, name), sb = b.global_shape(cat, name);
      bool comparable = sa.size() == sb.size() && !sa.empty();
      for (size_t d = 1; comparable && d < sa.size(); ++d) comparable = sa[d] == sb[d];
      if (!comparable) {
        out.problems.push_back(detail::concat(cat, "/", name, ": shapes ", shape_str(sa), " and ", shape_str(sb)));
        continue;
      }
      const Tensor ta = a.read_whole(cat, name), tb = b.read_whole(cat, name);
      const int64_t inner = ta.numel() / sa[0], rows = std::min(sa[0], sb[0]);
      TensorDifference d{cat, name};
      const float* pa = ta.data<float>();
      const float* pb = tb.data<float>();
      for (int64_t i = 0; i < rows * inner; ++i) {
        d.max_abs = std::max(d.max_abs, std::fabs(static_cast<double>(pa[i]) - static_cast<double>(pb[i])));
        d.max_ref = std::max(d.max_ref, std::fabs(static_cast<double>(pa[i])));
      }
      d.compared = rows * inner;
      out.tensors.push_back(d);
    }
    for (const std::string& name : b.names(cat))
      if (!a.has(cat, name)) out.problems.push_back(detail::concat(cat, "/", name, ": only in ", b.dir()));
  }
  return out;
}

}  // namespace llm
