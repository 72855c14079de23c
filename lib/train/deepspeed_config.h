// DeepSpeed's JSON config (`--deepspeed_config`) as Megatron-DeepSpeed runs take it. The fields
// that decide what a run trains with set the matching llm-pretrain options: ZeRO stage, fp16 /
// bf16 and the loss scaler, gradient clipping, micro-batch and global batch (and gradient
// accumulation, checked). Where an option was also given (flag or YAML) the two must agree:
// a difference is an error naming the file, the key and the flag. Settings that would change the
// training (or where the state lives) and have no equivalent here are refused, naming the key:
// DeepSpeed's own optimizer or scheduler, CPU/NVMe offload, enabled data-efficiency / curriculum /
// layer-drop / elasticity / AMP / compression blocks, ZeRO++ quantized communication, fp16's
// consecutive_hysteresis, 16-bit gradient accumulation. The rest (buckets, overlap, logging,
// profiling, communication tuning) change no numbers and are listed for the run's header.
// train_batch_size without train_micro_batch_size_per_gpu derives the micro-batch as DeepSpeed
// does (TrainArgs::resolve_defaults).
#pragma once
#include <set>
#include <string>
#include <vector>

#include "train/args.h"

namespace llm {

// `given`: the option names (without "--") set by flags or YAML. Returns the keys accepted
// without effect. Throws ConfigError naming the file and key.
std::vector<std::string> apply_deepspeed_config(TrainArgs& args, const std::string& path,
                                                const std::set<std::string>& given);

}  // namespace llm
