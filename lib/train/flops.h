// FLOP counts for one training iteration of the GPT model (global batch B, sequence s).
//
// megatron_flops: Narayanan et al. 2021 (the formula older Megatron-DeepSpeed logs printed),
//   24 * f * B s l h^2 (1 + s/(6h) + V/(16 l h)), f = 4 with full activation recompute
//   (forward counted twice), f = 3 without. It assumes ffn = 4h; its V/(16 l h) counts the
//   output layer at 3/4 of three passes (with f = 4: the layer is not recomputed).
// model_flops: the work the model needs, recompute excluded: 3x the forward, where the forward
//   is 2 * (every matmul's multiply-adds) + the attention score and value products
//   (4 B s^2 h l, counted dense as is customary). Uses the actual ffn and padded vocabulary.
//   Equal to Megatron-LM's num_floating_point_operations, and without recompute to current
//   Megatron-DeepSpeed's throughput_calculator (ALCF's [LM]TFLOPs and [DS]TFLOPs).
#pragma once
#include "model/config.h"

namespace llm {

double megatron_flops_per_iteration(const GPTConfig& c, int64_t global_batch, int64_t seq,
                                    bool recompute);
double model_flops_per_iteration(const GPTConfig& c, int64_t global_batch, int64_t seq);

}  // namespace llm
