// DeepSpeed's JSON config (`--deepspeed_config`) as Megatron-DeepSpeed runs take it. The fields
// that decide what a run trains with set the matching llm-pretrain options: ZeRO stage, fp16 /
// bf16 and the loss scaler, gradient clipping, micro-batch and global batch (and gradient
// accumulation, checked). Where an option was also given (flag or YAML) the two must agree:
// a difference is an error naming the file, the key and the flag. Blocks that would change the
// training here and have no equivalent (DeepSpeed's own optimizer or scheduler) are refused;
// the rest (offload, logging, profiling, communication tuning) change no numbers and are listed
// for the run's header.
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
