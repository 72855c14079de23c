// Megatron's learning-rate schedule: linear warmup from 0, then cosine or linear decay from
// lr to min_lr over decay_iters, then constant min_lr.
#pragma once
#include <cstdint>
#include <string>

namespace llm {

struct LRSchedule {
  double lr = 3e-4, min_lr = 0.0;
  int64_t warmup_iters = 0, decay_iters = 0;
  std::string style = "cosine";  // cosine | linear | constant
  // Learning rate used by optimizer step `iteration` (1-based).
  double at(int64_t iteration) const;
};

}  // namespace llm
