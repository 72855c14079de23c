// FLOP counts for one training iteration of the GPT model (global batch B, sequence s).
//
// megatron_flops: Narayanan et al. 2021 (the Megatron-LM / Megatron-DeepSpeed log formula),
//   24 * f * B s l h^2 (1 + s/(6h) + V/(16 l h)), f = 4 with full activation recompute
//   (forward counted twice), f = 3 without. It assumes ffn = 4h.
// model_flops: the work the model needs, recompute excluded: 3x the forward, where the forward
//   is 2 * (every matmul's multiply-adds) + the attention score and value products
//   (4 B s^2 h l, counted dense as is customary). Uses the actual ffn and padded vocabulary.
#pragma once
#include "model/config.h"

namespace llm {

double megatron_flops_per_iteration(const GPTConfig& c, int64_t global_batch, int64_t seq,
                                    bool recompute);
double model_flops_per_iteration(const GPTConfig& c, int64_t global_batch, int64_t seq);

}  // namespace llm
