#include "train/flops.h"

namespace llm {

double megatron_flops_per_iteration(const GPTConfig& c, int64_t global_batch, int64_t seq, bool recompute) {
  const double B = static_cast<double>(global_batch), s = static_cast<double>(seq);
  const double l = static_cast<double>(c.num_layers), h = static_cast<double>(c.hidden_size);
  const double V = static_cast<double>(c.padded_vocab_size());
  const double f = recompute ? 4.0 : 3.0;
  return 24.0 * f * B * s * l * h * h * (1.0 + s / (6.0 * h) + V / (16.0 * l * h));
}

double model_flops_per_iteration(const GPTConfig& c, int64_t global_batch, int64_t seq) {
  const double B = static_cast<double>(global_batch), s = static_cast<double>(seq);
  const double l = static_cast<double>(c.num_layers), h = static_cast<double>(c.hidden_size);
  const double F = static_cast<double>(c.ffn()), V = static_cast<double>(c.padded_vocab_size());
  const double matmul_params = l * (4.0 * h * h + 2.0 * h * F) + V * h;
  const double forward = 2.0 * B * s * matmul_params + 4.0 * B * s * s * h * l;
  return 3.0 * forward;
}

}  // namespace llm
