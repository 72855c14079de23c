// Rewriting checkpoints: change the stored dtype, re-shard every tensor into N pieces (along
// its first dimension, one shard file per piece index: a generic layout that any loader must
// resolve by box intersection), merge everything into one file, or drop the optimizer state.
#pragma once
#include <string>

#include "core/dtype.h"
#include "io/checkpoint.h"

namespace llm {

struct ConvertOptions {
  DType dtype = DType::f32;  // stored dtype of the model tensors (the optimizer moments stay f32)
  int shards = 1;            // 1 = merge into a single file with whole tensors
  bool keep_optimizer = true;
  int keep_last = 0;
};

// Writes the checkpoint at `src` (a directory or a save root) as a new checkpoint of the same
// iteration under `dst_root`, with the same metadata and tokenizer files. Returns its path.
std::string convert_checkpoint(const std::string& src, const std::string& dst_root, const ConvertOptions& options);

// Refuses (ConfigError naming both) an output directory at or inside the checkpoint directory
// `source_dir`: convert and export would write into the checkpoint they read (however either path
// is spelled: both are resolved, the output as far as it exists).
void refuse_output_inside(const std::string& output, const std::string& source_dir);

// Serialises a JSON value (compact, deterministic member order as parsed).
std::string to_json(const json::Value& v);

}  // namespace llm
