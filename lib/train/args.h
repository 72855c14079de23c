// Training arguments under Megatron's flag names. One table (train_options()) describes every
// option once: the tools register it with CLI11, YAML files are checked against it, and
// --help prints its defaults. Precedence: defaults < model file (--model) < --config < flags.
#pragma once
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "model/config.h"

namespace llm {

struct TrainArgs {
  // model
  std::string model;  // name in configs/models or a YAML path
  int64_t num_layers = 2;
  int64_t hidden_size = 128;
  int64_t num_attention_heads = 4;
  int64_t ffn_hidden_size = 0;
  int64_t max_position_embeddings = 0;
  int64_t seq_length = 128;
  int64_t vocab_size = 512;
  int64_t make_vocab_size_divisible_by = 128;
  double layernorm_epsilon = 1e-5;
  // batch
  int64_t micro_batch_size = 4;
  int64_t global_batch_size = 0;  // 0 = micro_batch_size * data_parallel_size
  // optimizer and schedule
  double lr = 3e-4;
  double min_lr = 0;                   // (Megatron's defaults here and below)
  std::string lr_decay_style = "linear";
  int64_t lr_warmup_iters = 0;
  double lr_warmup_fraction = 0;     // warmup over this fraction of the decay iterations (0 = --lr-warmup-iters)
  int64_t lr_decay_iters = 0;  // 0 = train_iters
  double weight_decay = 0.01;
  double adam_beta1 = 0.9;
  double adam_beta2 = 0.999;
  double adam_eps = 1e-8;
  double clip_grad = 1.0;
  // run
  int64_t train_iters = 100;
  int64_t seed = 1234;
  int64_t log_interval = 10;
  int64_t timing_log_level = 0;  // >= 1: Megatron's (min, max) timer block after each log line
  int64_t eval_interval = 0;  // 0 = only at the end
  int64_t eval_iters = 0;
  bool mock_data = false;
  // data (Megatron names)
  std::vector<std::string> data_path;  // PATH, or WEIGHT PATH WEIGHT PATH ... (blending)
  std::string split = "969,30,1";
  std::string data_cache_path;          // sample-index cache ("" = <first dataset>/index-cache)
  std::string tokenizer_type;           // when given, must match the dataset's tokenizer
  std::string tokenizer_model, vocab_file, merge_file;
  std::string output_dir = "runs/pretrain";
  // checkpoints (Megatron names)
  std::string save;                 // save root ("" = never save)
  std::string load;                 // checkpoint dir or save root with `latest`
  int64_t save_interval = 0;        // iterations between saves (0 = only at the end)
  bool finetune = false;            // load weights only; iteration and optimizer start fresh
  bool no_load_optim = false;
  bool exit_on_missing_checkpoint = false;  // --load without a checkpoint is an error, not a fresh start
  bool override_opt_param_scheduler = false;       // a resumed run takes this run's LR schedule
  bool use_checkpoint_opt_param_scheduler = false;  // ... or the checkpoint's (default: they must agree)
  bool no_load_rng = false;
  int64_t keep_last = 0;            // keep this many newest checkpoints (0 = all)
  int64_t exit_interval = 0;        // exit (after saving) when iteration % N == 0
  double exit_duration_in_mins = 0; // exit (after saving) once this much wall time has passed
  double distributed_timeout_minutes = 10;  // a collective (NCCL or MPI) unfinished this long ends the rank (0: never)
  std::string tflops_formula = "megatron";
  int64_t max_nan_iterations = 0;
  int64_t threads = 0;  // 0 = OMP_NUM_THREADS / all cores
  std::string backend = "cpu";  // cpu | cuda
  // parallel layout (Megatron / DeepSpeed names); data parallel = world / (tp x pp x sp)
  int64_t tensor_model_parallel_size = 1;
  int64_t pipeline_model_parallel_size = 1;
  int64_t ds_sequence_parallel_size = 1;
  bool sequence_parallel = false;
  int64_t zero_stage = 0;
  bool overlap_grad_reduce = false;     // Megatron-core DDP: bucketed gradient reduction during backward
  bool overlap_param_gather = false;    // ZeRO-1/2: post-step all-gather finished per layer; ZeRO-3: next-layer prefetch
  int64_t ddp_bucket_size = 0;          // elements per bucket (0 = max(40M, 1M x data-parallel size))
  // ZeRO-1/2 in mixed precision keep the f32 masters of their own shard only and gather the 16-bit
  // copy after the step (Megatron's distributed optimizer, DeepSpeed's ZeRO-1). false (no flag:
  // tests compare the two) keeps every rank's full masters and gathers those in f32.
  bool shard_masters = true;
  // mixed precision (Megatron's names): bf16 or f16 activations and compute weights, fp32 master
  // weights, gradients and optimizer state; fp16 with dynamic loss scaling
  bool bf16 = false;
  bool fp16 = false;
  double loss_scale = 0;             // fp16: a fixed scale (0 = dynamic)
  double initial_loss_scale = 4096;  // fp16 dynamic: 2^12
  double min_loss_scale = 1;
  int64_t loss_scale_window = 1000;  // good steps before the scale doubles
  int64_t hysteresis = 2;            // overflows tolerated before the scale halves
  DType compute_dtype() const { return bf16 ? DType::bf16 : fp16 ? DType::f16 : DType::f32; }
  // activation checkpointing
  std::string recompute_granularity;  // "" | full | selective
  bool checkpoint_activations = false;  // the older flag: = full
  bool full_recompute() const { return recompute_granularity == "full" || checkpoint_activations; }
  // The vocabulary projection and the loss this many tokens at a time (0: all at once)
  int64_t logits_chunk_tokens = 0;
  // Megatron's switches for its fused attention: ours is always flash-style (tiled, online
  // softmax, no T x T matrix), so they are accepted and change nothing.
  bool use_flash_attn = false, use_flash_attn_v2 = false;
  double init_method_std = 0.02;
  // Megatron(-DeepSpeed) flags that copied scripts pass and that change nothing here (fusions,
  // launcher and logging switches: OptionSpec::no_op), or that are accepted only at the one value
  // this toolkit implements (validate() refuses the others).
  bool no_pipeline_parallel = false, deepspeed = false, deepspeed_mpi = false, deepspeed_activation_checkpointing = false;
  bool no_bias_gelu_fusion = false, no_bias_dropout_fusion = false, no_masked_softmax_fusion = false;
  bool no_gradient_accumulation_fusion = false, no_async_tensor_model_parallel_allreduce = false;
  bool accumulate_allreduce_grads_in_fp32 = false, no_query_key_layer_scaling = false;
  bool use_flash_attn_v1 = false, use_flash_attn_triton = false;
  bool universal_checkpoint = false;
  bool exit_signal_handler = false, use_cpu_initialization = false, attention_softmax_in_fp32 = false;
  bool fp16_lm_cross_entropy = false, log_throughput = false, log_num_zeros_in_grad = false;
  bool log_timers_to_tensorboard = false, log_validation_ppl_to_tensorboard = false, log_memory_to_tensorboard = false;
  int64_t empty_unused_memory_level = 0;
  std::string dataloader_type = "single", wandb_project, wandb_exp_name;
  int64_t num_workers = 2, checkpoint_num_layers = 1;
  double hidden_dropout = 0, attention_dropout = 0;  // no dropout here: only 0 is accepted
  std::string distributed_backend = "nccl", optimizer = "adam", data_impl = "mmap", tensorboard_dir;
  std::string deepspeed_config;            // DeepSpeed's JSON: its ZeRO, precision, clipping and batch fields
  int64_t ds_gradient_accumulation_steps = 0;  // from it: checked against the batch sizes (0 = not given)
  // from it: train_batch_size without train_micro_batch_size_per_gpu (and no --micro-batch-size):
  // the micro-batch is derived as DeepSpeed does, train_batch_size / (accumulation steps x data parallel)
  bool ds_derive_micro_batch = false;

  GPTConfig model_config() const;
  // Fills the "0 = derived" defaults (global batch, decay iterations). Call before validate().
  void resolve_defaults();
  // Cross-option checks (batch divisibility, schedule, formula names); throws ConfigError.
  void validate() const;
  int64_t data_parallel_size = 1;  // set by the launcher/grid, not a flag
  int64_t micro_batches() const { return global_batch_size / (micro_batch_size * data_parallel_size); }
  // Where each option was last set (apply_option's source: "--lr", or a YAML file's "run.yaml:12"),
  // so that validate() names the file and line of a value it refuses.
  std::map<std::string, std::string> option_sources;
};

struct OptionSpec {
  std::string name;  // flag without "--", also the YAML key
  std::string alias;  // Megatron's spelling where it mixes '_' into the flag (also accepted)
  bool no_op = false;  // accepted for Megatron scripts and without effect here (llm-pretrain says so)
  std::string help;
  bool is_flag = false;  // boolean switch
  std::string type = "TEXT";  // INT | FLOAT | TEXT, for --help
  bool multi = false;         // takes several values (stored joined by single spaces)
  std::function<void(TrainArgs&, const std::string&)> set;
  std::function<std::string(const TrainArgs&)> get;
};

const std::vector<OptionSpec>& train_options();
const OptionSpec* find_option(const std::string& name);

// The command line (without argv[0]) as Megatron's argparse reads it: an option given more than
// once takes its last occurrence, values and all (a script that appends an override, a repeated
// --data-path list); `repeated` (may be null) gets those options' names. An option that is
// neither an OptionSpec's name or alias (either spelling of '_' and '-') nor one of `extra`
// ("config", "help") is a ConfigError naming the closest known option. "-h" is --help.
std::vector<std::string> last_occurrences(const std::vector<std::string>& args, const std::vector<std::string>& extra,
                                          std::vector<std::string>* repeated);
// Levenshtein distance (insertions, deletions, substitutions) between two names.
size_t edit_distance(const std::string& a, const std::string& b);
// The known option closest to `name` (edit distance, at most a third of its length), or "".
std::string closest_option(const std::string& name, const std::vector<std::string>& extra);

// Sets one option from text; `source` ("--lr", "run.yaml:12") prefixes any error.
void apply_option(TrainArgs& args, const std::string& name, const std::string& value,
                  const std::string& source);
// Reads a YAML mapping of option names to scalars; unknown keys, non-scalars and bad values
// are ConfigErrors naming file, line and key. Returns the keys it set.
std::vector<std::string> apply_yaml_file(TrainArgs& args, const std::string& path);
// Resolves --model NAME|PATH: a path as is, else <dir>/NAME.yaml for dir in $LLM_CONFIG_DIR/models,
// <exe dir>/../configs/models, <source dir>/configs/models.
std::string resolve_model_file(const std::string& model, const std::string& exe_dir);

}  // namespace llm
