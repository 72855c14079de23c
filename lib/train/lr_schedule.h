// Megatron's learning-rate schedule: linear warmup from 0, then cosine or linear decay from
// lr to min_lr over decay_iters (or lr sqrt(warmup / updates) down to min_lr: inverse-square-root),
// then constant min_lr.
#pragma once
#include <cstdint>
#include <string>

namespace llm {

struct LRSchedule {
  double lr = 3e-4, min_lr = 0.0;
  double warmup_iters = 0;  // fractional under --lr-warmup-fraction
  int64_t decay_iters = 0;
  std::string style = "cosine";  // cosine | linear | constant | inverse-square-root
  // Samples per update (the global batch): Megatron counts inverse-square-root's steps in
  // samples, which only shows without warmup (its floor of one sample).
  int64_t samples_per_update = 1;
  // The rate after `updates` applied updates (Megatron's get_lr at num_steps = updates): update
  // updates + 1 runs at it (0 for the first one under warmup), and Megatron's log line after
  // update `updates` shows it.
  double at(int64_t updates) const;
};

}  // namespace llm
