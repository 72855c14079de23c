#include "train/lr_schedule.h"

#include <algorithm>
#include <cmath>

namespace llm {

double LRSchedule::at(int64_t it) const {
  if (warmup_iters > 0 && static_cast<double>(it) <= warmup_iters) return lr * static_cast<double>(it) / warmup_iters;
  if (style == "constant") return lr;
  if (it > decay_iters) return min_lr;
  if (style == "inverse-square-root") {  // Megatron's, in samples: lr sqrt(warmup / seen), at least min_lr
    const double g = static_cast<double>(std::max<int64_t>(samples_per_update, 1));
    const double w = std::max(warmup_iters * g, 1.0), n = std::max(static_cast<double>(it) * g, 1.0);
    return std::max(min_lr, lr * std::sqrt(w) / std::sqrt(n));
  }
  const double span = static_cast<double>(decay_iters) - warmup_iters;
  const double ratio = span > 0 ? (static_cast<double>(it) - warmup_iters) / span : 1.0;
  const double coeff = style == "linear" ? 1.0 - ratio : 0.5 * (std::cos(M_PI * ratio) + 1.0);
  return min_lr + coeff * (lr - min_lr);
}

}  // namespace llm
