#include "train/args.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <limits>
#include <map>
#include <cstdlib>
#include <filesystem>
#include <sstream>

#include "core/error.h"
#include "core/fsync.h"
#include "core/threads.h"
#include "data/tokenizer_factory.h"

namespace llm {

namespace {

[[noreturn]] void bad(const std::string& source, const std::string& why) {
  throw ConfigError(source + ": " + why);
}

// Value parsers throw the bare reason; apply_option prefixes the source and key.
[[noreturn]] void bad_value(const std::string& why) { throw ConfigError(why); }

int64_t parse_int(const std::string& v) {
  int64_t out = 0;
  auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
  if (ec != std::errc() || p != v.data() + v.size()) bad_value("expected an integer, got '" + v + "'");
  return out;
}

double parse_double(const std::string& v) {
  char* end = nullptr;
  double out = std::strtod(v.c_str(), &end);
  if (v.empty() || end != v.c_str() + v.size()) bad_value("expected a number, got '" + v + "'");
  // (every FLOAT option is a rate, size or scale: inf or nan would only reach the checkpoint's
  // metadata, which JSON cannot hold)
  if (!std::isfinite(out)) bad_value("expected a finite number, got '" + v + "'");
  return out;
}

bool parse_bool(const std::string& v) {
  if (v == "true" || v == "1" || v == "yes" || v == "on" || v.empty()) return true;
  if (v == "false" || v == "0" || v == "no" || v == "off") return false;
  bad_value("expected true or false, got '" + v + "'");
}

std::string fmt(double v) {
  std::string s = detail::concat(v);
  return s;
}

OptionSpec aliased(OptionSpec o, std::string alias) {
  o.alias = std::move(alias);
  return o;
}

OptionSpec no_op(OptionSpec o) {
  o.no_op = true;
  return o;
}

template <typename T>
OptionSpec opt(std::string name, T TrainArgs::*field, std::string help) {
  OptionSpec o;
  o.name = std::move(name);
  o.help = std::move(help);
  if constexpr (std::is_same_v<T, int64_t>) {
    o.type = "INT";
    o.set = [field](TrainArgs& a, const std::string& v) { a.*field = parse_int(v); };
    o.get = [field](const TrainArgs& a) { return std::to_string(a.*field); };
  } else if constexpr (std::is_same_v<T, double>) {
    o.type = "FLOAT";
    o.set = [field](TrainArgs& a, const std::string& v) { a.*field = parse_double(v); };
    o.get = [field](const TrainArgs& a) { return fmt(a.*field); };
  } else if constexpr (std::is_same_v<T, bool>) {
    o.is_flag = true;
    o.set = [field](TrainArgs& a, const std::string& v) { a.*field = parse_bool(v); };
    o.get = [field](const TrainArgs& a) { return std::string(a.*field ? "true" : "false"); };
  } else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
    o.multi = true;
    o.set = [field](TrainArgs& a, const std::string& v) {
      (a.*field).clear();
      std::istringstream in(v);
      for (std::string w; in >> w;) (a.*field).push_back(w);
    };
    o.get = [field](const TrainArgs& a) {
      std::string out;
      for (const std::string& w : a.*field) out += (out.empty() ? "" : " ") + w;
      return out;
    };
  } else {
    o.set = [field](TrainArgs& a, const std::string& v) { a.*field = v; };
    o.get = [field](const TrainArgs& a) { return a.*field; };
  }
  return o;
}

std::vector<OptionSpec> make_options() {
  using A = TrainArgs;
  return {
      opt("model", &A::model, "model config: a name in configs/models (GPT125M, GPT1_5B, ...) or a YAML file"),
      opt("num-layers", &A::num_layers, "number of transformer layers"),
      opt("hidden-size", &A::hidden_size, "hidden size"),
      opt("num-attention-heads", &A::num_attention_heads, "number of attention heads"),
      opt("ffn-hidden-size", &A::ffn_hidden_size, "MLP hidden size (0 = 4 * hidden-size)"),
      opt("max-position-embeddings", &A::max_position_embeddings, "position table size (0 = seq-length)"),
      opt("seq-length", &A::seq_length, "sequence length"),
      opt("vocab-size", &A::vocab_size, "vocabulary size (mock data; datasets record their own)"),
      opt("make-vocab-size-divisible-by", &A::make_vocab_size_divisible_by, "pad the vocabulary to a multiple of this (times TP)"),
      opt("layernorm-epsilon", &A::layernorm_epsilon, "LayerNorm epsilon"),
      opt("micro-batch-size", &A::micro_batch_size, "samples per micro-batch per data-parallel rank"),
      opt("global-batch-size", &A::global_batch_size, "samples per optimizer step (0 = micro-batch-size x DP); the rest is gradient accumulation"),
      opt("lr", &A::lr, "peak learning rate"),
      opt("min-lr", &A::min_lr, "learning rate at the end of decay"),
      opt("lr-decay-style", &A::lr_decay_style, "cosine | linear | constant | inverse-square-root"),
      opt("lr-warmup-iters", &A::lr_warmup_iters, "linear warmup iterations"),
      opt("lr-warmup-fraction", &A::lr_warmup_fraction, "warmup over this fraction of the decay iterations, instead of --lr-warmup-iters"),
      opt("lr-decay-iters", &A::lr_decay_iters, "iterations to decay over (0 = train-iters)"),
      opt("weight-decay", &A::weight_decay, "decoupled weight decay (not applied to biases and LayerNorm)"),
      opt("adam-beta1", &A::adam_beta1, "AdamW beta1"),
      opt("adam-beta2", &A::adam_beta2, "AdamW beta2"),
      opt("adam-eps", &A::adam_eps, "AdamW epsilon"),
      opt("clip-grad", &A::clip_grad, "clip the global gradient norm to this (0 = off)"),
      opt("train-iters", &A::train_iters, "optimizer steps to run"),
      opt("seed", &A::seed, "random seed (weights and data order)"),
      opt("log-interval", &A::log_interval, "iterations between log lines"),
      opt("timing-log-level", &A::timing_log_level, "1: print the (min, max) time across ranks of each phase after the log line"),
      opt("eval-interval", &A::eval_interval, "iterations between validation runs (0 = only at the end); none without --eval-iters"),
      opt("eval-iters", &A::eval_iters, "validation iterations per evaluation, each a global batch split over the data-parallel replicas as in training; the same batches every evaluation (0 = no validation)"),
      opt("mock-data", &A::mock_data, "train on the deterministic synthetic stream"),
      opt("data-path", &A::data_path, "dataset directory from llm-tokenize, or WEIGHT DIR WEIGHT DIR ... to blend"),
      opt("split", &A::split, "train,valid,test proportions of each dataset's documents"),
      opt("data-cache-path", &A::data_cache_path, "directory for the sample-index cache (default: <dataset>/index-cache)"),
      opt("tokenizer-type", &A::tokenizer_type, "the model's tokenizer (checked against the dataset's): SentencePieceTokenizer | GPT2BPETokenizer | NullTokenizer | ByteTokenizer"),
      opt("tokenizer-model", &A::tokenizer_model, "SentencePiece model file"),
      opt("vocab-file", &A::vocab_file, "GPT-2 vocabulary file"),
      opt("merge-file", &A::merge_file, "GPT-2 merges file"),
      opt("output-dir", &A::output_dir, "run directory (metrics.jsonl goes here)"),
      opt("save", &A::save, "directory to save checkpoints to (iter_NNNNNNN/ + latest)"),
      opt("load", &A::load, "checkpoint to resume from: an iter_NNNNNNN directory or a --save directory"),
      opt("save-interval", &A::save_interval, "iterations between checkpoints (0 = only at the end)"),
      opt("finetune", &A::finetune, "load only the weights from --load; iteration, data and optimizer start fresh"),
      opt("no-load-optim", &A::no_load_optim, "do not load the optimizer state from --load"),
      opt("exit-on-missing-checkpoint", &A::exit_on_missing_checkpoint,
          "a --load directory without a checkpoint is an error (by default: a note, and training starts from scratch)"),
      aliased(opt("override-opt-param-scheduler", &A::override_opt_param_scheduler,
                  "resuming: follow this run's learning-rate schedule where it differs from the checkpoint's"),
              "override-opt_param-scheduler"),
      aliased(opt("use-checkpoint-opt-param-scheduler", &A::use_checkpoint_opt_param_scheduler,
                  "resuming: follow the checkpoint's learning-rate schedule whatever this run's flags say"),
              "use-checkpoint-opt_param-scheduler"),
      opt("no-load-rng", &A::no_load_rng, "do not restore the seed from --load: this run's --seed orders the data from the restored position"),
      opt("keep-last", &A::keep_last, "keep only this many newest checkpoints (0 = all)"),
      opt("exit-interval", &A::exit_interval, "save and exit when the iteration is a multiple of this"),
      opt("exit-duration-in-mins", &A::exit_duration_in_mins, "save and exit after this many minutes"),
      opt("distributed-timeout-minutes", &A::distributed_timeout_minutes,
          "a collective or transfer still unfinished this many minutes after it was called (a rank never joined) "
          "ends the job with exit status 1, naming it (0: wait forever). On every backend MPI's blocking calls and "
          "waits (on GPUs the world communicator's and the host-side calls beside NCCL), and on GPUs NCCL's "
          "operations and set-up (checked by the NCCL watchdog, so not with LLM_NCCL_WATCHDOG_MS=0); not the data "
          "index's build or a checkpoint's publication, which rank 0 alone does while the others wait"),
      opt("tflops-formula", &A::tflops_formula, "TFLOPs in the log line: megatron (Narayanan et al. 2021, with recompute factor) | model (model FLOPs)"),
      opt("max-nan-iterations", &A::max_nan_iterations, "non-finite iterations to skip before stopping (0 = stop at the first)"),
      opt("threads", &A::threads, "CPU threads (0 = OMP_NUM_THREADS or all cores)"),
      opt("backend", &A::backend, "compute backend: cpu | cuda (one GPU per rank, chosen from the launcher's local rank; collectives over NCCL)"),
      opt("tensor-model-parallel-size", &A::tensor_model_parallel_size, "tensor-parallel group size"),
      opt("pipeline-model-parallel-size", &A::pipeline_model_parallel_size, "pipeline stages"),
      opt("ds-sequence-parallel-size", &A::ds_sequence_parallel_size, "Ulysses sequence-parallel group size"),
      opt("sequence-parallel", &A::sequence_parallel, "Megatron sequence parallelism within the tensor-parallel group"),
      opt("zero-stage", &A::zero_stage, "ZeRO stage 0-3 (0 = replicated optimizer state)"),
      opt("overlap-grad-reduce", &A::overlap_grad_reduce, "reduce gradients over the data-parallel group in buckets while the last micro-batch's backward runs (ZeRO-2/3: each layer's reduce-scatter while the next layer's backward runs)"),
      opt("overlap-param-gather", &A::overlap_param_gather, "ZeRO-1/2: the parameters' all-gather after the step finished layer by layer in the next forward; ZeRO-3: the next layer's gathered while this one computes (at the cost of one more layer of parameters and of their 16-bit copy)"),
      opt("ddp-bucket-size", &A::ddp_bucket_size, "gradient elements per bucket with --overlap-grad-reduce (0 = max(40M, 1M x data-parallel size)); buckets are whole layers"),
      opt("bf16", &A::bf16, "bf16 activations and compute weights; fp32 master weights, gradients and optimizer state"),
      opt("fp16", &A::fp16, "fp16 activations and compute weights with dynamic loss scaling; fp32 master weights, gradients and optimizer state"),
      opt("loss-scale", &A::loss_scale, "fp16: a fixed loss scale (0 = dynamic)"),
      opt("initial-loss-scale", &A::initial_loss_scale, "fp16: the dynamic loss scale to start from"),
      opt("min-loss-scale", &A::min_loss_scale, "fp16: the dynamic loss scale never goes below this"),
      opt("loss-scale-window", &A::loss_scale_window, "fp16: iterations without overflow before the loss scale doubles"),
      opt("hysteresis", &A::hysteresis, "fp16: overflowing iterations tolerated before the loss scale halves"),
      opt("recompute-granularity", &A::recompute_granularity, "full: keep only each layer's output and recompute the layer in backward; selective: recompute the attention core (our flash attention never stores it, so this is the default behaviour)"),
      opt("checkpoint-activations", &A::checkpoint_activations, "same as --recompute-granularity full"),
      opt("logits-chunk-tokens", &A::logits_chunk_tokens, "run the output layer and the loss this many tokens at a time, holding one chunk's logits instead of every token's (the largest activation at long sequences with a large vocabulary); each chunk's backward runs in its forward, so nothing is recomputed; 0: all at once"),
      opt("use-flash-attn", &A::use_flash_attn, "accepted for Megatron scripts: attention is always flash-style here"),
      opt("use-flash-attn-v2", &A::use_flash_attn_v2, "accepted for Megatron-DeepSpeed scripts: attention is always flash-style (the FlashAttention-2 algorithm) here"),
      opt("init-method-std", &A::init_method_std, "standard deviation of the weights' normal initialisation (the output projections' divided by sqrt(2 x layers))"),
      // Megatron(-DeepSpeed) flags of copied scripts that change nothing here
      no_op(opt("use-flash-attn-v1", &A::use_flash_attn_v1, "accepted for Megatron-DeepSpeed scripts: attention is always flash-style here")),
      no_op(opt("use-flash-attn-triton", &A::use_flash_attn_triton, "accepted for Megatron-DeepSpeed scripts: attention is always flash-style here")),
      no_op(opt("no-pipeline-parallel", &A::no_pipeline_parallel, "accepted for DeepSpeed scripts (needs --pipeline-model-parallel-size 1)")),
      no_op(opt("deepspeed", &A::deepspeed, "accepted for Megatron-DeepSpeed scripts: ZeRO, precision and clipping come from the flags here")),
      no_op(aliased(opt("deepspeed-mpi", &A::deepspeed_mpi, "accepted for Megatron-DeepSpeed scripts: ranks always come from MPI here"), "deepspeed_mpi")),
      no_op(opt("deepspeed-activation-checkpointing", &A::deepspeed_activation_checkpointing,
                "accepted for Megatron-DeepSpeed scripts: recompute is --checkpoint-activations / --recompute-granularity")),
      no_op(opt("checkpoint-num-layers", &A::checkpoint_num_layers, "accepted at 1 (each layer is its own recompute unit)")),
      no_op(opt("no-bias-gelu-fusion", &A::no_bias_gelu_fusion,
                "accepted for Megatron scripts: the GELU stays the tanh approximation (Megatron's fused bias-GELU), "
                "where in Megatron this flag selects the exact erf GELU (within 4.7e-4 of it)")),
      no_op(opt("no-bias-dropout-fusion", &A::no_bias_dropout_fusion, "accepted for Megatron scripts (a kernel fusion choice)")),
      no_op(opt("no-masked-softmax-fusion", &A::no_masked_softmax_fusion, "accepted for Megatron scripts (a kernel fusion choice)")),
      no_op(opt("no-gradient-accumulation-fusion", &A::no_gradient_accumulation_fusion, "accepted for Megatron scripts (a kernel fusion choice)")),
      no_op(opt("no-async-tensor-model-parallel-allreduce", &A::no_async_tensor_model_parallel_allreduce,
                "accepted for Megatron scripts (an overlap choice)")),
      no_op(opt("accumulate-allreduce-grads-in-fp32", &A::accumulate_allreduce_grads_in_fp32,
                "accepted for Megatron scripts: gradients are always fp32 here")),
      no_op(opt("no-query-key-layer-scaling", &A::no_query_key_layer_scaling,
                "accepted for Megatron scripts: attention scores are 1/sqrt(head dim) in fp32 accumulation here")),
      no_op(opt("num-workers", &A::num_workers, "accepted for Megatron scripts: samples are read on the training thread")),
      no_op(opt("data-impl", &A::data_impl, "accepted for Megatron scripts at mmap or infer (datasets are llm-tokenize's HDF5)")),
      no_op(opt("distributed-backend", &A::distributed_backend, "accepted for Megatron scripts (nccl, gloo, ccl, mpi): the collectives are MPI on the CPU, NCCL on GPUs")),
      no_op(opt("optimizer", &A::optimizer, "accepted for Megatron scripts at adam or adamw (AdamW with decoupled weight decay)")),
      no_op(opt("tensorboard-dir", &A::tensorboard_dir, "accepted for Megatron scripts; the metrics go to --output-dir/metrics.jsonl")),
      no_op(opt("log-timers-to-tensorboard", &A::log_timers_to_tensorboard, "accepted for Megatron scripts; the metrics go to --output-dir/metrics.jsonl")),
      no_op(opt("log-validation-ppl-to-tensorboard", &A::log_validation_ppl_to_tensorboard, "accepted for Megatron scripts; the metrics go to --output-dir/metrics.jsonl")),
      no_op(opt("log-memory-to-tensorboard", &A::log_memory_to_tensorboard, "accepted for Megatron scripts; the metrics go to --output-dir/metrics.jsonl")),
      no_op(opt("wandb-project", &A::wandb_project, "accepted for Megatron scripts; the metrics go to --output-dir/metrics.jsonl")),
      no_op(opt("wandb-exp-name", &A::wandb_exp_name, "accepted for Megatron scripts; the metrics go to --output-dir/metrics.jsonl")),
      no_op(opt("log-throughput", &A::log_throughput, "accepted for Megatron scripts: the log line always has the throughput")),
      no_op(opt("log-num-zeros-in-grad", &A::log_num_zeros_in_grad, "accepted for Megatron scripts (not counted here)")),
      no_op(opt("exit-signal-handler", &A::exit_signal_handler, "accepted for Megatron scripts: SIGTERM and SIGINT always save (with --save) and exit at the iteration's end")),
      no_op(opt("universal-checkpoint", &A::universal_checkpoint,
                "accepted for Megatron-DeepSpeed scripts: libllm's checkpoints load under any parallel layout")),
      no_op(opt("use-cpu-initialization", &A::use_cpu_initialization, "accepted for Megatron scripts: the weights are always initialised on the host, the same for every layout")),
      no_op(opt("attention-softmax-in-fp32", &A::attention_softmax_in_fp32, "accepted for Megatron scripts: the attention softmax is always fp32 here")),
      no_op(opt("fp16-lm-cross-entropy", &A::fp16_lm_cross_entropy, "accepted for Megatron scripts: the cross-entropy is always fp32 here")),
      no_op(opt("empty-unused-memory-level", &A::empty_unused_memory_level, "accepted for Megatron scripts (the caching allocator keeps its blocks)")),
      no_op(opt("dataloader-type", &A::dataloader_type, "accepted for Megatron scripts at single or cyclic (samples come in the dataset's shuffled order)")),
      aliased(opt("deepspeed-config", &A::deepspeed_config,
                  "DeepSpeed's JSON config: its ZeRO stage, fp16/bf16 and loss scaler, gradient clipping and batch "
                  "sizes set those options (or must agree with them where given)"),
              "deepspeed_config"),
      opt("hidden-dropout", &A::hidden_dropout, "accepted at 0 (the model has no dropout)"),
      opt("attention-dropout", &A::attention_dropout, "accepted at 0 (the model has no dropout)"),
  };
}

}  // namespace

const std::vector<OptionSpec>& train_options() {
  static const std::vector<OptionSpec> options = make_options();
  return options;
}

const OptionSpec* find_option(const std::string& name) {
  std::string key = name;
  for (char& c : key)
    if (c == '_') c = '-';
  for (const OptionSpec& o : train_options())
    if (o.name == key) return &o;
  return nullptr;
}

namespace {
std::string dashed(std::string s) {
  for (char& c : s)
    if (c == '_') c = '-';
  return s;
}
}  // namespace

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

// Megatron flags that this toolkit does not implement, with what to do instead: refused by name
// rather than as unknown options with a look-alike suggested.
static const std::map<std::string, std::string>& unsupported_megatron_flags() {
  static const std::map<std::string, std::string> m = {
      {"train-samples", "runs are counted in iterations: give --train-iters (the samples / --global-batch-size)"},
      {"lr-warmup-samples", "give --lr-warmup-iters (the samples / --global-batch-size) or --lr-warmup-fraction"},
      {"lr-decay-samples", "give --lr-decay-iters (the samples / --global-batch-size)"},
      {"rampup-batch-size", "the global batch is fixed (--global-batch-size)"},
      {"cpu-optimizer", "the optimizer runs where the model does (ZeRO shards its state: --zero-stage)"},
      {"no-save-optim", "checkpoints keep the optimizer's state; llm-ckpt convert --no-optimizer writes one without it"},
      {"no-save-rng", "checkpoints keep the seed; --no-load-rng ignores it on resume"},
      {"ckpt-step", "load one iteration by its directory: --load DIR/iter_NNNNNNN"},
      {"use-mics", "DeepSpeed's MiCS (ZeRO-3 within sub-groups) is not built; --zero-stage 3 shards over the data-parallel group"},
      {"load-tag", "DeepSpeed's tags are not read; load one iteration of a libllm checkpoint with --load DIR/iter_NNNNNNN"},
      {"use-dist-ckpt", "checkpoints are libllm's sharded HDF5, which any parallel layout loads"},
      {"async-save", "saves are synchronous (every rank writes its own pieces, in parallel)"},
      {"non-persistent-save-interval", "give --save-interval (with --keep-last to bound the disk)"},
      {"no-load-lr-state", "give --override-opt_param-scheduler (this run's schedule flags, not the checkpoint's)"},
      {"swiglu", "the models are GPT-2/GPT-3's (GELU MLP, LayerNorm, learned positions); no Llama switches"},
      {"use-rotary-position-embeddings", "the models are GPT-2/GPT-3's (learned positions); no Llama switches"},
      {"position-embedding-type", "the models are GPT-2/GPT-3's (learned absolute positions)"},
      {"normalization", "the models are GPT-2/GPT-3's (LayerNorm); no Llama switches"},
      {"untie-embeddings-and-output-weights", "the output layer shares the input embedding (GPT-2/GPT-3)"},
      {"group-query-attention", "attention is multi-head (GPT-2/GPT-3)"},
      {"num-key-value-heads", "attention is multi-head (GPT-2/GPT-3)"},
      {"num-query-groups", "attention is multi-head (GPT-2/GPT-3)"},
  };
  return m;
}

std::string closest_option(const std::string& name, const std::vector<std::string>& extra) {
  const std::string key = dashed(name);
  std::string best;
  size_t best_d = std::max<size_t>(1, key.size() / 3) + 1;
  auto consider = [&](const std::string& n) {
    const size_t d = edit_distance(key, n);
    if (d < best_d) best_d = d, best = n;
  };
  for (const OptionSpec& o : train_options()) consider(o.name);
  for (const std::string& e : extra) consider(e);
  return best;
}

std::vector<std::string> last_occurrences(const std::vector<std::string>& args, const std::vector<std::string>& extra,
                                          std::vector<std::string>* repeated) {
  struct Occurrence {
    std::string name;  // canonical; "" for tokens before the first option
    std::vector<std::string> tokens;
  };
  std::vector<Occurrence> occ;
  for (const std::string& t : args) {
    const bool option = (t.size() > 2 && t.rfind("--", 0) == 0) || t == "-h";
    if (!option) {
      if (occ.empty()) occ.push_back({"", {}});
      occ.back().tokens.push_back(t);
      continue;
    }
    const std::string spelled = t == "-h" ? "help" : t.substr(2, t.find('=') == std::string::npos ? std::string::npos : t.find('=') - 2);
    std::string name = dashed(spelled);
    if (const auto u = unsupported_megatron_flags().find(name); u != unsupported_megatron_flags().end())
      throw ConfigError("--" + spelled + " (Megatron's) is not supported here: " + u->second);
    if (!find_option(name) && std::find(extra.begin(), extra.end(), name) == extra.end()) {
      const std::string hint = closest_option(name, extra);
      throw ConfigError("unknown option --" + spelled + (hint.empty() ? "" : " (did you mean --" + hint + "?)") +
                        "; --help lists them");
    }
    std::string token = t;
    if (const OptionSpec* o = find_option(name)) {  // spelled as CLI11 knows it
      name = o->name;
      token = "--" + name + (t.find('=') == std::string::npos ? "" : t.substr(t.find('=')));
    }
    occ.push_back({name, {token}});
  }
  std::map<std::string, size_t> last, count;
  for (size_t i = 0; i < occ.size(); ++i) last[occ[i].name] = i, ++count[occ[i].name];
  std::vector<std::string> out;
  // Tokens an occurrence may hold, itself included: a dropped occurrence with more had a stray
  // argument, which CLI11 would have refused had it stayed.
  auto takes = [](const Occurrence& o) -> size_t {
    if (o.tokens[0].find('=') != std::string::npos || o.name == "help") return 1;
    const OptionSpec* spec = find_option(o.name);
    if (!spec) return 2;  // --config FILE
    return spec->is_flag ? 1 : spec->multi ? std::numeric_limits<size_t>::max() : 2;
  };
  for (size_t i = 0; i < occ.size(); ++i) {
    if (!occ[i].name.empty() && last[occ[i].name] != i) {
      if (occ[i].tokens.size() > takes(occ[i]))
        throw ConfigError("unexpected argument '" + occ[i].tokens[takes(occ[i])] + "' after " + occ[i].tokens[0]);
      continue;
    }
    out.insert(out.end(), occ[i].tokens.begin(), occ[i].tokens.end());
  }
  if (repeated)
    for (const auto& [name, n] : count)
      if (!name.empty() && n > 1) repeated->push_back(name);
  return out;
}

void apply_option(TrainArgs& args, const std::string& name, const std::string& value,
                  const std::string& source) {
  const OptionSpec* o = find_option(name);
  if (!o) bad(source, "unknown option '" + name + "'");
  try {
    o->set(args, value);
  } catch (const ConfigError& e) {
    const bool is_flag = source.rfind("--", 0) == 0;  // a flag names itself; a file line does not
    bad(source, (is_flag ? std::string() : "key '" + o->name + "': ") + e.what());
  }
  args.option_sources[o->name] = source;
}

std::vector<std::string> apply_yaml_file(TrainArgs& args, const std::string& path) {
  YAML::Node root;
  const std::string text = read_whole_file(path, "YAML config");
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    bad(detail::concat(path, ":", e.mark.line + 1), "YAML syntax error: " + e.msg);
  }
  std::vector<std::string> keys;
  if (root.IsNull()) return keys;
  if (!root.IsMap()) bad(path, "expected a mapping of option names to values");
  std::map<std::string, int> seen;  // option name -> line (YAML takes a repeated key silently)
  for (auto it = root.begin(); it != root.end(); ++it) {
    const std::string key = it->first.as<std::string>();
    const int line = it->first.Mark().line + 1;
    const std::string where = detail::concat(path, ":", line);
    if (!find_option(key)) bad(where, "unknown key '" + key + "'");
    if (const auto [s, fresh] = seen.emplace(find_option(key)->name, line); !fresh)
      bad(where, detail::concat("key '", key, "' is given twice (also at line ", s->second, "): one value each"));
    std::string value;
    if (it->second.IsSequence() && find_option(key)->multi) {
      for (std::size_t k = 0; k < it->second.size(); ++k) {
        const YAML::Node item = it->second[k];
        if (!item.IsScalar()) bad(where, "key '" + key + "' must be a list of plain values");
        value += (value.empty() ? "" : " ") + item.as<std::string>();
      }
    } else if (!it->second.IsScalar()) {
      bad(where, "key '" + key + "' must have a single value");
    } else {
      value = it->second.as<std::string>();
    }
    apply_option(args, key, value, where);
    keys.push_back(find_option(key)->name);
  }
  return keys;
}

std::string resolve_model_file(const std::string& model, const std::string& exe_dir) {
  namespace fs = std::filesystem;
  if (model.find('/') != std::string::npos || model.ends_with(".yaml")) {
    if (!fs::exists(model)) throw ConfigError("--model: no such file '" + model + "'");
    return model;
  }
  std::vector<fs::path> dirs;
  if (const char* env = std::getenv("LLM_CONFIG_DIR")) dirs.push_back(fs::path(env) / "models");
  if (!exe_dir.empty()) dirs.push_back(fs::path(exe_dir) / ".." / "configs" / "models");
  dirs.push_back(fs::path(LLM_SOURCE_DIR) / "configs" / "models");
  std::string tried;
  for (const fs::path& d : dirs) {
    fs::path p = d / (model + ".yaml");
    if (fs::exists(p)) return p.lexically_normal().string();
    tried += " " + p.lexically_normal().string();
  }
  throw ConfigError("--model: no model config named '" + model + "' (looked for" + tried + ")");
}

GPTConfig TrainArgs::model_config() const {
  GPTConfig c;
  c.name = model.empty() ? "custom" : model;
  c.num_layers = num_layers;
  c.hidden_size = hidden_size;
  c.num_heads = num_attention_heads;
  c.ffn_hidden_size = ffn_hidden_size;
  c.max_position_embeddings = max_position_embeddings;
  c.vocab_size = vocab_size;
  c.vocab_divisible_by = make_vocab_size_divisible_by;
  c.layernorm_eps = static_cast<float>(layernorm_epsilon);
  c.tensor_parallel = tensor_model_parallel_size;
  c.init_std = static_cast<float>(init_method_std);
  return c;
}

void TrainArgs::resolve_defaults() {
  if (ds_derive_micro_batch && global_batch_size > 0) {
    const int64_t steps = std::max<int64_t>(1, ds_gradient_accumulation_steps);
    if (global_batch_size % (steps * data_parallel_size) != 0)
      throw ConfigError(detail::concat(deepspeed_config, ": train_batch_size ", global_batch_size,
                                       " is not divisible by gradient_accumulation_steps ", steps, " x data-parallel size ",
                                       data_parallel_size, ", which DeepSpeed divides it by for the micro-batch (the file "
                                       "has no train_micro_batch_size_per_gpu; --micro-batch-size gives one)"));
    micro_batch_size = global_batch_size / (steps * data_parallel_size);
  }
  // (DeepSpeed's JSON may give gradient_accumulation_steps alone: global = micro x steps x dp)
  if (global_batch_size == 0)
    global_batch_size = micro_batch_size * std::max<int64_t>(1, ds_gradient_accumulation_steps) * data_parallel_size;
  if (lr_decay_iters == 0) lr_decay_iters = train_iters;
}

void TrainArgs::validate() const {
  // A refused value set in a file is named there too: every option the message names ("--lr")
  // whose value came from a YAML line gets it appended.
  auto fail = [this](auto&&... parts) {
    std::string msg = detail::concat(parts...), from;
    for (const auto& [name, source] : option_sources) {
      if (source.rfind("--", 0) == 0) continue;
      const std::string flag = "--" + name;
      for (size_t p = msg.find(flag); p != std::string::npos; p = msg.find(flag, p + 1)) {
        const size_t e = p + flag.size();
        if (e == msg.size() || !(std::isalnum(static_cast<unsigned char>(msg[e])) || msg[e] == '-' || msg[e] == '_')) {
          from += (from.empty() ? "" : ", ") + flag + " from " + source;
          break;
        }
      }
    }
    throw ConfigError(from.empty() ? msg : msg + " (" + from + ")");
  };
  if (micro_batch_size < 1) fail("--micro-batch-size must be >= 1, got ", micro_batch_size);
  if (zero_stage < 0 || zero_stage > 3) fail("--zero-stage must be 0, 1, 2 or 3, got ", zero_stage);
  if (global_batch_size < 0) fail("--global-batch-size must be >= 0, got ", global_batch_size);
  if (global_batch_size % (micro_batch_size * data_parallel_size))
    fail("--global-batch-size ", global_batch_size, " is not divisible by --micro-batch-size ",
         micro_batch_size, " x data-parallel size ", data_parallel_size);
  if (seq_length < 1) fail("--seq-length must be >= 1, got ", seq_length);
  if (train_iters < 0) fail("--train-iters must be >= 0, got ", train_iters);
  if (log_interval < 1) fail("--log-interval must be >= 1, got ", log_interval);
  if (eval_interval < 0 || eval_iters < 0) fail("--eval-interval and --eval-iters must be >= 0");
  if (lr_decay_style != "cosine" && lr_decay_style != "linear" && lr_decay_style != "constant" &&
      lr_decay_style != "inverse-square-root")
    fail("--lr-decay-style must be cosine, linear, constant or inverse-square-root, got '", lr_decay_style, "'");
  if (lr < 0 || min_lr < 0 || min_lr > lr) fail("need 0 <= --min-lr <= --lr, got ", min_lr, " and ", lr);
  if (lr_warmup_iters < 0 || lr_decay_iters < 0) fail("--lr-warmup-iters and --lr-decay-iters must be >= 0");
  if (!(lr_warmup_fraction >= 0 && lr_warmup_fraction <= 1))
    fail("--lr-warmup-fraction must be in [0, 1], got ", lr_warmup_fraction);
  if (lr_warmup_fraction > 0 && lr_warmup_iters > 0)
    fail("give one of --lr-warmup-fraction and --lr-warmup-iters, not both");
  if (weight_decay < 0) fail("--weight-decay must be >= 0");
  if (!(adam_beta1 >= 0 && adam_beta1 < 1 && adam_beta2 >= 0 && adam_beta2 < 1))
    fail("--adam-beta1 and --adam-beta2 must be in [0, 1)");
  if (clip_grad < 0) fail("--clip-grad must be >= 0");
  // AdamW divides by sqrt(v) + eps: a negative eps can make that 0 or flip the update's sign, and
  // 0 gives 0/0 for a parameter whose gradient is zero (the padded vocabulary's rows).
  if (!(adam_eps > 0)) fail("--adam-eps must be > 0, got ", adam_eps);
  if (tflops_formula != "megatron" && tflops_formula != "model")
    fail("--tflops-formula must be megatron or model, got '", tflops_formula, "'");
  if (threads < 0 || threads > kMaxThreads) fail("--threads must be in [0, ", kMaxThreads, "] (0: OMP_NUM_THREADS or all cores), got ", threads);
  if (max_nan_iterations < 0) fail("--max-nan-iterations must be >= 0 (0: stop at the first), got ", max_nan_iterations);
  if (!recompute_granularity.empty() && recompute_granularity != "full" && recompute_granularity != "selective")
    fail("--recompute-granularity must be full or selective, got '", recompute_granularity, "'");
  if (logits_chunk_tokens < 0) fail("--logits-chunk-tokens must be >= 0 (0: all at once), got ", logits_chunk_tokens);
  if (save_interval < 0 || keep_last < 0 || exit_interval < 0 || exit_duration_in_mins < 0)
    fail("--save-interval, --keep-last, --exit-interval and --exit-duration-in-mins must be >= 0");
  if (!(distributed_timeout_minutes >= 0) || !std::isfinite(distributed_timeout_minutes))
    fail("--distributed-timeout-minutes ", distributed_timeout_minutes, ": minutes >= 0 (0: no timeout)");
  if (zero_stage == 3 && overlap_grad_reduce && !overlap_param_gather)
    fail("--overlap-grad-reduce under --zero-stage 3 needs --overlap-param-gather: the layers' gathers share the "
         "data-parallel communicator with the reduce-scatters, whose operations NCCL runs in order, so each backward "
         "gather would wait for the previous layer's reduction and nothing would overlap");
  if (save_interval > 0 && save.empty()) fail("--save-interval needs --save");
  if (finetune && load.empty()) fail("--finetune needs --load");
  if (ds_gradient_accumulation_steps > 0 && micro_batches() != ds_gradient_accumulation_steps)
    fail(deepspeed_config, ": gradient_accumulation_steps is ", ds_gradient_accumulation_steps, " but the batch sizes give ",
         micro_batches(), " (global ", global_batch_size, " / (micro ", micro_batch_size, " x data-parallel ",
         data_parallel_size, "))");
  // Megatron flags accepted only at the value implemented here
  if (!(init_method_std > 0)) fail("--init-method-std must be > 0, got ", init_method_std);
  if (hidden_dropout != 0 || attention_dropout != 0)
    fail("--hidden-dropout and --attention-dropout: the model has no dropout, so only 0 is accepted (got ", hidden_dropout,
         " and ", attention_dropout, ")");
  if (no_pipeline_parallel && pipeline_model_parallel_size > 1)
    fail("--no-pipeline-parallel with --pipeline-model-parallel-size ", pipeline_model_parallel_size);
  if (checkpoint_num_layers != 1) fail("--checkpoint-num-layers: only 1 (each layer recomputed on its own), got ", checkpoint_num_layers);
  if (!tokenizer_type.empty() && !is_tokenizer_type(tokenizer_type))
    fail("--tokenizer-type '", tokenizer_type, "': ", tokenizer_types_phrase());
  if (dataloader_type != "single" && dataloader_type != "cyclic")
    fail("--dataloader-type '", dataloader_type, "': single or cyclic (samples come in the dataset's shuffled order)");
  if (data_impl != "mmap" && data_impl != "infer")
    fail("--data-impl '", data_impl, "': datasets are llm-tokenize's HDF5 (mmap and infer are accepted)");
  if (distributed_backend != "nccl" && distributed_backend != "gloo" && distributed_backend != "ccl" && distributed_backend != "mpi")
    fail("--distributed-backend '", distributed_backend, "': nccl, gloo, ccl or mpi (the collectives are MPI on the CPU, NCCL on GPUs)");
  if (optimizer != "adam" && optimizer != "adamw") fail("--optimizer '", optimizer, "': adam or adamw (AdamW) only");
  if (override_opt_param_scheduler && use_checkpoint_opt_param_scheduler)
    fail("give one of --override-opt_param-scheduler and --use-checkpoint-opt_param-scheduler, not both");
  if (bf16 && fp16) fail("--bf16 and --fp16 exclude each other");
  if (loss_scale < 0) fail("--loss-scale must be >= 0 (0 = dynamic), got ", loss_scale);
  if (!(initial_loss_scale > 0 && min_loss_scale > 0 && min_loss_scale <= initial_loss_scale))
    fail("need 0 < --min-loss-scale <= --initial-loss-scale, got ", min_loss_scale, " and ", initial_loss_scale);
  if (loss_scale_window < 1 || hysteresis < 1) fail("--loss-scale-window and --hysteresis must be >= 1");
  // The scaled loss is an fp32 value: from 2^128 on (past FLT_MAX) every step overflows, and a
  // dynamic scale of 2^1000 (DeepSpeed's initial_scale_power 1000) skipped ~1800 iterations
  // halving itself before the first update.
  constexpr double kMaxScale = 0x1p128;
  if (loss_scale >= kMaxScale) fail("--loss-scale must be < 2^128 (the fp32 range), got ", loss_scale);
  if (initial_loss_scale >= kMaxScale)
    fail("--initial-loss-scale must be < 2^128 (the fp32 range), got ", initial_loss_scale);
  model_config().validate(seq_length);
}

}  // namespace llm
