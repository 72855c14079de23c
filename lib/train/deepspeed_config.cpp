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

}  // namespace

std::vector<std::string> apply_deepspeed_config(TrainArgs& a, const std::string& path, const std::set<std::string>& given) {
  const json::Value root = json::parse_file(path);
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
      if (!value.is_object()) throw ConfigError(detail::concat(path, ":", value.line(), ": 'zero_optimization' must be an object"));
      for (const auto& [zk, zv] : value.as_object()) {
        if (zk == "stage") {
          if (const json::Value* v = f.number(value, "stage", "zero_optimization."))
            f.set<int64_t>(a.zero_stage, v->as_int(), "zero-stage", *v, "zero_optimization.stage");
        } else {
          ignored.push_back("zero_optimization." + zk);  // offload, buckets, overlap: memory and speed only
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
    } else {
      ignored.push_back(key);  // logging, profiling, communication and checkpoint tuning
    }
  }
  // DeepSpeed clips only when the JSON says so (its default is 0): Megatron's --clip-grad default
  // does not reach a DeepSpeed run
  if (!root.find("gradient_clipping") && !given.count("clip-grad")) a.clip_grad = 0;
  if (a.fp16 && a.bf16)
    throw ConfigError(path + ": fp16 and bf16 are both enabled (between this file and the flags); choose one");
  return ignored;
}

}  // namespace llm
