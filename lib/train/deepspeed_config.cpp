#include "train/deepspeed_config.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>

#include "core/error.h"
#include "data/json.h"
#include "train/args.h"

namespace llm {

namespace {

// One field of the config and the option it stands for.
struct Field {
  const std::string& path;
  const std::set<std::string>& given;
  std::map<std::string, std::string>& sources;  // TrainArgs::option_sources
  // A number (or "auto", which leaves the option as it is); nullptr when absent.
  const json::Value* number(const json::Value& obj, const char* key, const std::string& where) const {
    const json::Value* v = obj.find(key);
    if (!v || (v->is_string() && v->as_string() == "auto")) return nullptr;
    if (!v->is_number())
      throw ConfigError(detail::concat(path, ":", v->line(), ": '", where, key, "' must be a number or \"auto\""));
    return v;
  }
  // An integer in [lo, hi] (or "auto", which leaves the option as it is); nullptr when absent.
  // DeepSpeed asserts its batch sizes and accumulation steps are positive; a fraction or a number
  // past int64 is no count.
  const json::Value* integer(const json::Value& obj, const char* key, const std::string& where, int64_t lo,
                             int64_t hi = std::numeric_limits<int64_t>::max()) const {
    const json::Value* v = number(obj, key, where);
    if (v && (!v->is_integer() || v->as_int() < lo || v->as_int() > hi)) {
      const std::string range = hi == std::numeric_limits<int64_t>::max() ? detail::concat(">= ", lo) : detail::concat("from ", lo, " to ", hi);
      throw ConfigError(detail::concat(path, ":", v->line(), ": '", where, key, "' must be an integer ", range,
                                       " (or \"auto\"), got ", v->is_integer() ? std::to_string(v->as_int()) : number_text(*v)));
    }
    return v;
  }
  static std::string number_text(const json::Value& v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.17g", v.as_double());
    return buf;
  }
  template <typename T>
  void set(T& option, T value, const char* flag, const json::Value& v, const std::string& key) const {
    if (given.count(flag) && option != value)
      throw ConfigError(detail::concat(path, ":", v.line(), ": '", key, "' is ", value, " but --", flag, " is ", option,
                                       " (give one, or the same value in both)"));
    option = value;
    sources[flag] = detail::concat(path, ":", v.line(), " ('", key, "')");
  }
};

// The block's "enabled": 1 true, 0 false, -1 absent or "auto".
int enabled(const json::Value& block, const std::string& path, const std::string& name) {
  const json::Value* e = block.find("enabled");
  if (!e || (e->is_string() && e->as_string() == "auto")) return -1;
  if (!e->is_bool()) throw ConfigError(detail::concat(path, ":", e->line(), ": '", name, ".enabled' must be true or false"));
  return e->as_bool() ? 1 : 0;
}

// A precision block: enabled sets the flag; disabled contradicts a flag that enables it.
void precision(const json::Value& block, const std::string& path, const std::string& name, bool& flag, const char* flag_name,
               const std::set<std::string>& given) {
  const int e = enabled(block, path, name);
  if (e == 1) flag = true;
  if (e == 0 && flag && given.count(flag_name))
    throw ConfigError(detail::concat(path, ":", block.line(), ": '", name, ".enabled' is false but --", flag_name, " is given"));
}

// A setting DeepSpeed would honour and this trainer cannot: refused, naming the file, the key and why.
[[noreturn]] void refuse(const std::string& path, const json::Value& v, const std::string& key, const std::string& why) {
  throw ConfigError(detail::concat(path, ":", v.line(), ": '", key, "' ", why));
}

bool is_true(const json::Value* v) { return v && v->is_bool() && v->as_bool(); }

// Some "enabled": true at any depth (compression_training's blocks each have their own).
bool any_enabled(const json::Value& v) {
  if (v.is_object()) {
    for (const auto& [k, sub] : v.as_object())
      if ((k == "enabled" && is_true(&sub)) || any_enabled(sub)) return true;
  } else if (v.is_array()) {
    for (const json::Value& sub : v.as_array())
      if (any_enabled(sub)) return true;
  }
  return false;
}

// The keys DeepSpeed reads (deepspeed/runtime/config.py and constants.py, ZeRO's and the precision
// blocks' models), for telling a misspelling from a setting this trainer leaves alone.
const std::vector<std::string>& deepspeed_keys(const std::string& block) {
  static const std::map<std::string, std::vector<std::string>> keys = {
      {"", {"train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "steps_per_print",
            "dump_state", "disable_allgather", "communication_data_type", "seq_parallel_comm_data_type",
            "prescale_gradients", "gradient_predivide_factor", "sparse_gradients", "zero_optimization",
            "zero_allow_untested_optimizer", "zero_force_ds_cpu_optimizer", "activation_checkpointing", "comms_logger",
            "tensorboard", "wandb", "csv_monitor", "comet", "flops_profiler", "gradient_clipping", "graph_harvesting",
            "fp16", "bf16", "bfloat16", "amp", "optimizer", "scheduler", "wall_clock_breakdown", "memory_breakdown",
            "eigenvalue", "progressive_layer_drop", "curriculum_learning", "data_efficiency", "sparse_attention",
            "pipeline", "vocabulary_size", "elasticity", "checkpoint", "data_types", "dataloader_drop_last", "aio",
            "nebula", "autotuning", "compression_training", "quantize_training", "weight_quantization",
            "hybrid_engine", "compile", "timers", "use_data_before_expert_parallelism", "torch_autocast",
            "tensor_parallel", "zenflow"}},
      {"zero_optimization.",
       {"stage", "contiguous_gradients", "reduce_scatter", "reduce_bucket_size", "use_multi_rank_bucket_allreduce",
        "allgather_partitions", "allgather_bucket_size", "allgather_size", "overlap_comm", "load_from_fp32_weights",
        "elastic_checkpoint", "offload_param", "offload_optimizer", "zenflow", "sub_group_size", "cpu_offload_param",
        "cpu_offload_params", "cpu_offload_use_pin_memory", "cpu_offload", "stage3_prefetch_bucket_size",
        "prefetch_bucket_size", "stage3_param_persistence_threshold", "param_persistence_threshold",
        "stage3_model_persistence_threshold", "model_persistence_threshold", "stage3_max_live_parameters",
        "max_live_parameters", "stage3_max_reuse_distance", "max_reuse_distance",
        "stage3_gather_16bit_weights_on_model_save", "gather_16bit_weights_on_model_save",
        "stage3_module_granularity_threshold", "module_granularity_threshold", "stage3_use_all_reduce_for_fetch_params",
        "use_all_reduce_for_fetch_params", "stage3_allgather_sequential", "allgather_sequential",
        "stage3_partition_stream_chunk_size", "partition_stream_chunk_size", "stage3_gather_fp16_weights_on_model_save",
        "ignore_unused_parameters", "legacy_stage1", "round_robin_gradients", "zero_hpz_partition_size",
        "zero_quantized_weights", "zero_quantized_nontrainable_weights", "zero_quantized_gradients",
        "zeropp_loco_param", "mics_shard_size", "mics_hierarchical_params_gather", "memory_efficient_linear",
        "pipeline_loading_checkpoint", "override_module_apply", "log_trace_cache_warnings", "enable_sanity_checks",
        "save_muon_momentum_buffer_in_memory", "leaf_module"}},
      {"fp16.",
       {"enabled", "auto_cast", "loss_scale", "initial_scale_power", "loss_scale_window", "hysteresis",
        "consecutive_hysteresis", "min_loss_scale", "fused_mode", "fp16_master_weights_and_grads"}},
      {"bf16.", {"enabled", "immediate_grad_update", "check_grad_overflow", "bf16_master_weights_and_grads",
                 "bf16_optimizer_states"}},
  };
  return keys.at(block == "bfloat16." ? "bf16." : block);
}

// A key DeepSpeed does not know but that is a letter or two from one it does is a misspelling:
// left alone, "zero_optimisation" or a bf16 block's "enable" would silently train without the
// setting. Refused naming the key DeepSpeed reads. Keys far from all of them are left alone, as
// DeepSpeed leaves them (a newer DeepSpeed's settings among them).
void refuse_misspelling(const std::string& path, const json::Value& v, const std::string& block, const std::string& key) {
  const std::vector<std::string>& known = deepspeed_keys(block);
  if (std::find(known.begin(), known.end(), key) != known.end()) return;
  const size_t limit = std::clamp<size_t>(key.size() / 5, 1, 2);
  for (const std::string& k : known)
    if (edit_distance(key, k) <= limit)
      throw ConfigError(detail::concat(path, ":", v.line(), ": '", block, key, "' is not a DeepSpeed setting; did you mean '",
                                       block, k, "'?"));
}

// Top-level blocks that, enabled, change what DeepSpeed trains (data order and lengths, layers,
// batch size, precision, weights), with what stands in their way here.
const char* training_block(const std::string& key) {
  static const std::map<std::string, const char*> blocks = {
      {"data_efficiency", "(curriculum learning / random-LTD data sampling and routing) is not implemented here"},
      {"curriculum_learning", "(DeepSpeed's sequence-length curriculum) is not implemented here: every sample has --seq-length tokens"},
      {"progressive_layer_drop", "(stochastic layer skipping) is not implemented here"},
      {"elasticity", "(DeepSpeed chooses the batch sizes for the world size) is not implemented here; give the batch sizes"},
      {"amp", "(NVIDIA Apex AMP) is not implemented here; use fp16 or bf16"},
      {"quantize_training", "(quantized weights during training) is not implemented here"},
      {"compression_training", "(quantization / pruning during training) is not implemented here"},
      {"sparse_attention", "(block-sparse attention) is not implemented here: attention is dense"},
  };
  const auto it = blocks.find(key);
  return it == blocks.end() ? nullptr : it->second;
}

}  // namespace

std::vector<std::string> apply_deepspeed_config(TrainArgs& a, const std::string& path, const std::set<std::string>& given) {
  const json::Value root = json::parse_hjson_file(path);  // DeepSpeed reads its config with hjson
  if (!root.is_object()) throw ConfigError(path + ": a DeepSpeed config must be a JSON object");
  const Field f{path, given, a.option_sources};
  // A file none of whose keys DeepSpeed reads is no DeepSpeed config (a model's YAML, say: Hjson
  // reads "key: value" lines as an object)
  {
    const json::Object& members = root.as_object();
    for (const auto& [key, value] : members) refuse_misspelling(path, value, "", key);
    const std::vector<std::string>& known = deepspeed_keys("");
    if (!members.empty() && std::none_of(members.begin(), members.end(), [&](const auto& m) {
          return std::find(known.begin(), known.end(), m.first) != known.end();
        }))
      throw ConfigError(detail::concat(path, ": none of its keys is a DeepSpeed setting (the first is '", members[0].first,
                                       "', line ", members[0].second.line(), "): is it a DeepSpeed config?"));
  }
  std::vector<std::string> ignored;
  for (const auto& [key, value] : root.as_object()) {
    if (key == "train_micro_batch_size_per_gpu") {
      if (const json::Value* v = f.integer(root, key.c_str(), "", 1))
        f.set<int64_t>(a.micro_batch_size, v->as_int(), "micro-batch-size", *v, key);
    } else if (key == "train_batch_size") {
      if (const json::Value* v = f.integer(root, key.c_str(), "", 1))
        f.set<int64_t>(a.global_batch_size, v->as_int(), "global-batch-size", *v, key);
    } else if (key == "gradient_accumulation_steps") {
      if (const json::Value* v = f.integer(root, key.c_str(), "", 1)) a.ds_gradient_accumulation_steps = v->as_int();
    } else if (key == "gradient_clipping") {
      if (const json::Value* v = f.number(root, key.c_str(), "")) f.set<double>(a.clip_grad, v->as_double(), "clip-grad", *v, key);
    } else if (key == "zero_optimization") {
      if (value.is_bool()) {  // DeepSpeed's deprecated form: true is stage 1, false stage 0
        f.set<int64_t>(a.zero_stage, value.as_bool() ? 1 : 0, "zero-stage", value, "zero_optimization");
        continue;
      }
      if (!value.is_object()) throw ConfigError(detail::concat(path, ":", value.line(), ": 'zero_optimization' must be an object"));
      for (const auto& [zk, zv] : value.as_object()) {
        const std::string name = "zero_optimization." + zk;
        refuse_misspelling(path, zv, "zero_optimization.", zk);
        if (zk == "stage") {
          if (const json::Value* v = f.integer(value, "stage", "zero_optimization.", 0, 3))
            f.set<int64_t>(a.zero_stage, v->as_int(), "zero-stage", *v, "zero_optimization.stage");
        } else if (zk == "offload_optimizer" || zk == "offload_param") {
          // "device": "none" (ALCF's stage-3 config) is no offload
          const json::Value* d = zv.is_object() ? zv.find("device") : nullptr;
          if (d && !(d->is_string() && (d->as_string() == "none" || d->as_string() == "auto")))
            refuse(path, *d, name + ".device",
                   detail::concat("is ", d->is_string() ? d->as_string() : "not a string", ": offloading to the CPU or NVMe is not implemented here (the ",
                                  zk == "offload_optimizer" ? "optimizer state stays" : "parameters stay",
                                  " in device memory, sharded by the ZeRO stage); remove the block or give \"device\": \"none\""));
          ignored.push_back(name);
        } else if (zk == "cpu_offload" || zk == "cpu_offload_param" || zk == "cpu_offload_params") {  // DeepSpeed's older spelling of the above
          if (is_true(&zv))
            refuse(path, zv, name, "is true: offloading to the CPU is not implemented here; remove it or give false");
          ignored.push_back(name);
        } else if (zk == "zero_quantized_weights" || zk == "zero_quantized_gradients" ||
                   zk == "zero_quantized_nontrainable_weights") {  // ZeRO++: int8/int4 communication changes the numbers
          if (is_true(&zv)) refuse(path, zv, name, "is true: ZeRO++ quantized communication is not implemented here (it is exact)");
          ignored.push_back(name);
        } else {
          ignored.push_back(name);  // buckets, overlap, prefetch, MiCS groups: memory and speed only
        }
      }
    } else if (key == "fp16") {
      if (!value.is_object()) throw ConfigError(detail::concat(path, ":", value.line(), ": 'fp16' must be an object"));
      precision(value, path, "fp16", a.fp16, "fp16", given);
      for (const auto& [fk, fv] : value.as_object()) {
        refuse_misspelling(path, fv, "fp16.", fk);
        if (fk != "enabled" && fk != "loss_scale" && fk != "initial_scale_power" && fk != "loss_scale_window" &&
            fk != "hysteresis" && fk != "min_loss_scale")
          ignored.push_back("fp16." + fk);
      }
      if (a.fp16) {
        // DeepSpeed's consecutive_hysteresis refills the hysteresis after every good step; the scaler
        // here refills it when the scale grows (DeepSpeed's default, false)
        if (const json::Value* v = value.find("consecutive_hysteresis"); is_true(v))
          refuse(path, *v, "fp16.consecutive_hysteresis",
                 "is true: the loss scaler here refills the hysteresis only when the scale grows (DeepSpeed's false)");
        if (const json::Value* v = value.find("fp16_master_weights_and_grads"); is_true(v))
          refuse(path, *v, "fp16.fp16_master_weights_and_grads", "is true: the master weights and gradients are fp32 here");
        // DeepSpeed's default initial scale is 2^16 (ours, without the JSON, 2^12)
        if (!value.find("initial_scale_power") && !given.count("initial-loss-scale")) a.initial_loss_scale = 65536.0;
        if (const json::Value* v = f.number(value, "loss_scale", "fp16."))
          f.set<double>(a.loss_scale, v->as_double(), "loss-scale", *v, "fp16.loss_scale");  // 0 = dynamic
        if (const json::Value* v = f.integer(value, "initial_scale_power", "fp16.", 0, 127))
          f.set<double>(a.initial_loss_scale, std::ldexp(1.0, static_cast<int>(v->as_int())), "initial-loss-scale", *v,
                        "fp16.initial_scale_power (as 2^power)");
        if (const json::Value* v = f.integer(value, "loss_scale_window", "fp16.", 1))
          f.set<int64_t>(a.loss_scale_window, v->as_int(), "loss-scale-window", *v, "fp16.loss_scale_window");
        if (const json::Value* v = f.integer(value, "hysteresis", "fp16.", 1))
          f.set<int64_t>(a.hysteresis, v->as_int(), "hysteresis", *v, "fp16.hysteresis");
        if (const json::Value* v = f.number(value, "min_loss_scale", "fp16."))
          f.set<double>(a.min_loss_scale, v->as_double(), "min-loss-scale", *v, "fp16.min_loss_scale");
      }
    } else if (key == "bf16" || key == "bfloat16") {
      if (!value.is_object()) throw ConfigError(detail::concat(path, ":", value.line(), ": '", key, "' must be an object"));
      for (const auto& [bk, bv] : value.as_object()) refuse_misspelling(path, bv, key + ".", bk);
      precision(value, path, key, a.bf16, "bf16", given);
    } else if (key == "optimizer" || key == "scheduler") {
      throw ConfigError(detail::concat(path, ":", value.line(), ": DeepSpeed's own '", key,
                                       "' block would replace the flags' ", key == "optimizer" ? "AdamW settings" : "learning-rate schedule",
                                       "; give them as flags (--lr, --adam-beta1/2, --adam-eps, --weight-decay, "
                                       "--lr-decay-style, --lr-warmup-iters, ...) instead"));
    } else if (const char* why = training_block(key)) {
      const bool on = key == "sparse_attention" ? value.is_object()
                      : key == "compression_training" ? any_enabled(value)
                      : value.is_object() && enabled(value, path, key) == 1;
      if (on) refuse(path, value, key, detail::concat("is enabled: it would change the training, and ", why));
      ignored.push_back(key);
    } else if (key == "data_types") {
      // gradients accumulate in fp32 here; DeepSpeed's 16-bit accumulation would round each micro-batch's sum
      const json::Value* g = value.is_object() ? value.find("grad_accum_dtype") : nullptr;
      if (g && !g->is_null() && !(g->is_string() && (g->as_string() == "fp32" || g->as_string() == "float32")))
        refuse(path, *g, "data_types.grad_accum_dtype",
               "is not fp32: gradients accumulate in fp32 here; give \"fp32\" or leave it out");
      ignored.push_back(key);
    } else {
      ignored.push_back(key);  // logging, profiling, communication and checkpoint tuning
    }
  }
  // DeepSpeed derives the micro-batch from train_batch_size when the file does not give it (and
  // no flag or YAML did): resolve_defaults divides by the accumulation steps and data parallel
  {
    const json::Value* tb = root.find("train_batch_size");
    const json::Value* mb = root.find("train_micro_batch_size_per_gpu");
    a.ds_derive_micro_batch = tb && tb->is_number() && (!mb || (mb->is_string() && mb->as_string() == "auto")) &&
                              !a.option_sources.count("micro-batch-size") && !given.count("micro-batch-size");
  }
  // DeepSpeed clips only when the JSON says so (its default is 0): Megatron's --clip-grad default
  // does not reach a DeepSpeed run
  if (!root.find("gradient_clipping") && !given.count("clip-grad")) a.clip_grad = 0;
  if (a.fp16 && a.bf16)
    throw ConfigError(path + ": fp16 and bf16 are both enabled (between this file and the flags); choose one");
  return ignored;
}

}  // namespace llm
