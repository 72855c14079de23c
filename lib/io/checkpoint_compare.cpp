#include "io/checkpoint_compare.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "data/json.h"
#include "io/checkpoint.h"

namespace llm {

double TensorDifference::relative() const {
  if (nonfinite > 0) return std::numeric_limits<double>::infinity();
  return max_ref > 0 ? max_abs / max_ref : max_abs;
}

double CheckpointDifference::worst(const std::string& category) const {
  double w = 0;
  for (const TensorDifference& t : tensors)
    if (t.category == category) w = std::max(w, t.relative());
  return w;
}

namespace {
// The model's real vocabulary size from metadata.json, or -1 where it records none.
int64_t vocab_of(const CheckpointReader& r) {
  const json::Value* m = r.metadata().find("model");
  const json::Value* v = m && m->is_object() ? m->find("vocab_size") : nullptr;
  return v && v->is_integer() ? v->as_int() : -1;
}
}  // namespace

CheckpointDifference compare_checkpoints(const std::string& a_path, const std::string& b_path, bool optimizer) {
  const CheckpointReader a = CheckpointReader::open(a_path), b = CheckpointReader::open(b_path);
  CheckpointDifference out;
  const int64_t va = vocab_of(a), vb = vocab_of(b);
  if (va > 0 && vb > 0 && va != vb)
    out.problems.push_back(detail::concat("the vocabularies differ: ", va, " tokens in ", a.dir(), ", ", vb, " in ", b.dir()));
  std::vector<std::string> categories{"model"};
  if (optimizer) categories.insert(categories.end(), {"optimizer/exp_avg", "optimizer/exp_avg_sq"});
  for (const std::string& cat : categories) {
    for (const std::string& name : a.names(cat)) {
      if (!b.has(cat, name)) {
        out.problems.push_back(detail::concat(cat, "/", name, ": only in ", a.dir()));
        continue;
      }
      const Shape sa = a.global_shape(cat, name), sb = b.global_shape(cat, name);
      bool comparable = sa.size() == sb.size() && !sa.empty() && (sa[0] == sb[0] || name == "wte");
      for (size_t d = 1; comparable && d < sa.size(); ++d) comparable = sa[d] == sb[d];
      if (!comparable) {
        out.problems.push_back(detail::concat(cat, "/", name, ": shapes ", shape_str(sa), " and ", shape_str(sb)));
        continue;
      }
      const Tensor ta = a.read_whole(cat, name), tb = b.read_whole(cat, name);
      // wte: the real vocabulary's rows (the padding rows past it are never looked up, and an
      // export drops them), else the common ones.
      int64_t rows = std::min(sa[0], sb[0]);
      if (name == "wte" && va > 0 && vb > 0) rows = std::min({rows, va, vb});
      const int64_t inner = ta.numel() / sa[0];
      TensorDifference d{cat, name};
      const float* pa = ta.data<float>();
      const float* pb = tb.data<float>();
      for (int64_t i = 0; i < rows * inner; ++i) {
        const double x = pa[i], y = pb[i];
        if (x == y) {  // equal infinities too
          if (std::isfinite(x)) d.max_ref = std::max(d.max_ref, std::fabs(x));
          continue;
        }
        if (!std::isfinite(x) || !std::isfinite(y)) {  // a NaN, or an infinity against anything else
          ++d.nonfinite;
          continue;
        }
        d.max_abs = std::max(d.max_abs, std::fabs(x - y));
        d.max_ref = std::max(d.max_ref, std::fabs(x));
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
