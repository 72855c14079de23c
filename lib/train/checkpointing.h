// Saving and restoring a training run through the checkpoint format (io/checkpoint.h):
// parameters under "model/<name>", AdamW moments under "optimizer/exp_avg/<name>" and
// "optimizer/exp_avg_sq/<name>", and metadata: model config, tokenizer (identity and files),
// the layout it was written under, iteration, consumed samples/tokens, LR schedule, optimizer
// hyper-parameters and step, seed and data position, and every option of the run.
#pragma once
#include <map>
#include <string>

#include "comm/mpi_session.h"
#include "data/tokenizer.h"
#include "data/tokenizer_factory.h"
#include "io/checkpoint.h"
#include "model/config.h"
#include "train/trainer.h"

namespace llm {

struct TokenizerRecord {
  TokenizerIdentity identity;
  std::map<std::string, std::string> files;  // role ("model", "vocab", "merges") -> source path
};

// The parameters and AdamW moments of every tensor-parallel rank, on the host, for the writer:
// row r of params/m/v is rank r's flat buffer, laid out by specs[r].
// The whole model's training state on one rank, as the (pipeline stage, tensor-parallel rank)
// pieces that hold it: each part's specs and its flat host buffers.
struct ShardedState {
  struct Part {
    int tp_rank = 0;  // replicated tensors are stored from tensor-parallel rank 0's part
    std::vector<ParamSpec> specs;
    Tensor params, m, v;  // [n] each
  };
  std::vector<Part> parts;
};
// Collective: every rank of the tensor-parallel group, of the pipeline (whose stages send their
// parts to the first) and of the data-parallel group under ZeRO-1 (whose moment shards are
// gathered first) must call it. The first stage's first tensor-parallel rank ends up with every
// part; other ranks get what they gathered on the way.
ShardedState gather_training_state(Trainer& trainer);

// Parallel save, collective over the world: every rank writes the range [n*g/G, n*(g+1)/G) of
// its (stage, tensor-parallel rank) flat buffers (g, G: its gradient group rank and size; under
// ZeRO that is exactly the shard it owns) to its own shard file in rank 0's staging directory,
// as boxes of the global tensors (replicated tensors from tensor-parallel rank 0 only); rank 0
// merges the ranks' piece indexes, writes metadata.json and publishes. No rank ever holds more
// than its own state. Returns the directory on rank 0, "" elsewhere.
std::string save_training_checkpoint_parallel(const std::string& save_root, const TrainArgs& args, Trainer& trainer,
                                              const TokenizerRecord& tokenizer, int keep_last, const MpiSession& mpi);
// The boxes of the global tensor that elements [begin, end) of a parameter's local flat tensor
// are (a partial row, whole rows, a partial row; split at tensor-parallel chunks), each with its
// start and length in the local flat tensor.
struct RangePiece {
  Box box;
  int64_t flat_begin = 0, length = 0;
};
std::vector<RangePiece> range_pieces(const ParamSpec& spec, int64_t begin, int64_t end);

// Writes <save_root>/iter_NNNNNNN for the trainer's current state; returns its path. Each
// tensor-parallel shard is stored as pieces (boxes) of the global tensors, replicated tensors
// once, so the checkpoint loads under any layout.
std::string save_training_checkpoint(const std::string& save_root, const TrainArgs& args, const Trainer& trainer,
                                     const ShardedState& state, const TokenizerRecord& tokenizer, int keep_last);

// Whose learning-rate schedule a resumed run follows (Megatron's flags): by default the two must
// agree; --use-checkpoint-opt_param-scheduler takes the checkpoint's, --override-opt_param-scheduler
// this run's.
enum class SchedulerSource { must_match, checkpoint, this_run };

struct LoadOptions {
  bool load_optimizer = true;
  bool restore_position = true;  // iteration and consumed samples
  bool finetune = false;         // weights only
  SchedulerSource scheduler = SchedulerSource::must_match;
};

struct LoadResult {
  std::string dir;
  int64_t iteration = 0, consumed_samples = 0;
};

// Loads a checkpoint into the trainer's model (and optimizer / position per options). The
// checkpoint's model config must equal the model's: a difference is a ConfigError naming the
// key and both values.
LoadResult load_training_checkpoint(const std::string& path, Trainer& trainer, const LoadOptions& options);

// Writes a weights-only checkpoint (no optimizer state; iteration and consumed samples as given,
// e.g. 0 for an imported model): what `llm-ckpt import` produces. Load it with --finetune or
// --no-load-optim.
std::string save_model_checkpoint(const std::string& save_root, int64_t iteration, const GPTConfig& config,
                                  const ParameterSet& params, const TokenizerRecord& tokenizer,
                                  const std::string& extra_fields = "");

// The model config recorded in a checkpoint (for llm-generate and llm-ckpt).
GPTConfig checkpoint_model_config(const CheckpointReader& ckpt);
// What keeps the checkpoint from loading into the model its config describes, one line each: a
// parameter it lacks or holds at another global shape, a tensor no parameter has, and likewise
// for each AdamW moment when it stores any (a weights-only checkpoint stores none). Empty when
// complete; reads metadata only (CheckpointReader::verify checks the data).
std::vector<std::string> checkpoint_completeness_problems(const CheckpointReader& ckpt);
// Loads only the parameters into a model built from checkpoint_model_config(): host parameters
// directly; a device model's (`backend`, the model's) tensor by tensor through a host copy. An
// inference model's 16-bit weights are rounded on the host, tensor by tensor, so no f32 copy of
// the whole model exists anywhere (the f32_op tensors also keep their f32 values).
void load_model_parameters(const CheckpointReader& ckpt, ParameterSet& params);
void load_model_parameters(const CheckpointReader& ckpt, ParameterSet& params, Backend& backend);
// The tokenizer recorded in a checkpoint: identity, and the files' paths inside it.
TokenizerRecord checkpoint_tokenizer(const CheckpointReader& ckpt);
// The factory options for a recorded tokenizer (type = its kind, files by role).
TokenizerOptions tokenizer_options(const TokenizerRecord& record);

}  // namespace llm
