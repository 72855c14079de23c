#include "train/deepspeed_config.h"

#include <cmath>
#include <map>

#include "core/error.h"
#include "data/json.h"

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
  std::vector<std::string> ignored;
  for (const auto& [key, value] : root.as_object()) {
    if (key == "train_micro_batch_size_per_gpu") {
      if (const json::Value* v = f.number(root, key.c_str(), ""))
        f.set<int64_t>(a.micro_batch_size, v->as_int(), "micro-batch-size", *v, key);
    } else if (key == "train_batch_size") {
      if (const json::Value* v = f.number(root, key.c_str(), ""))
        f.set<int64_t>(a.global_batch_size, v->as_int(), "global-batch-size", *v, key);
    } else if (key == "gradient_accumulation_steps") {
      if (const json::Value* v = f.number(root, key.c_str(), "")) a.ds_gradient_accumulation_steps = v->as_int();
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
        if (zk == "stage") {
          if (const json::Value* v = f.number(value, "stage", "zero_optimization."))
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
        } else if (zk == "cpu_offload" || zk == "cpu_offload_params") {  // DeepSpeed's older spelling of the above
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
      for (const auto& [fk, fv] : value.as_object())
        if (fk != "enabled" && fk != "loss_scale" && fk != "initial_scale_power" && fk != "loss_scale_window" &&
            fk != "hysteresis" && fk != "min_loss_scale")
          ignored.push_back("fp16." + fk);
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
        if (const json::Value* v = f.number(value, "initial_scale_power", "fp16."))
          f.set<double>(a.initial_loss_scale, std::ldexp(1.0, static_cast<int>(v->as_int())), "initial-loss-scale", *v,
                        "fp16.initial_scale_power (as 2^power)");
        if (const json::Value* v = f.number(value, "loss_scale_window", "fp16."))
          f.set<int64_t>(a.loss_scale_window, v->as_int(), "loss-scale-window", *v, "fp16.loss_scale_window");
        if (const json::Value* v = f.number(value, "hysteresis", "fp16."))
          f.set<int64_t>(a.hysteresis, v->as_int(), "hysteresis", *v, "fp16.hysteresis");
        if (const json::Value* v = f.number(value, "min_loss_scale", "fp16."))
          f.set<double>(a.min_loss_scale, v->as_double(), "min-loss-scale", *v, "fp16.min_loss_scale");
      }
    } else if (key == "bf16" || key == "bfloat16") {
      if (!value.is_object()) throw ConfigError(detail::concat(path, ":", value.line(), ": '", key, "' must be an object"));
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
