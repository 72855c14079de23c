#include "train/memory_check.h"

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "sweep/perf_model.h"
#include "sweep/point.h"

namespace llm {

namespace {

// The first number in a one-line file ("max" and unreadable files: -1).
double number_in(const std::string& path) {
  std::ifstream in(path);
  std::string word;
  if (!(in >> word) || word == "max") return -1;
  char* end = nullptr;
  const double v = std::strtod(word.c_str(), &end);
  return end != word.c_str() ? v : -1;
}

}  // namespace

double available_host_bytes(const std::string& proc, const std::string& cgroup) {
  double available = -1;
  std::ifstream meminfo(proc + "/meminfo");
  for (std::string line; std::getline(meminfo, line);) {
    std::istringstream fields(line);
    std::string key;
    double kib = 0;
    if (fields >> key >> kib && key == "MemAvailable:") available = kib * 1024.0;
  }
  // cgroup v2: this process's group ("0::/path" in /proc/self/cgroup) and its ancestors
  std::ifstream self(proc + "/self/cgroup");
  for (std::string line; std::getline(self, line);) {
    if (line.rfind("0::", 0) != 0) continue;
    for (std::filesystem::path group = line.substr(3);; group = group.parent_path()) {
      const std::string dir = cgroup + (group.string() == "/" ? std::string() : group.string());
      const double limit = number_in(dir + "/memory.max"), used = number_in(dir + "/memory.current");
      if (limit > 0 && used >= 0) {
        double cache = 0;  // reclaimable: MemAvailable leaves it out too
        std::ifstream stat(dir + "/memory.stat");
        for (std::string key; stat >> key;) {
          double v = 0;
          if (!(stat >> v)) break;
          if (key == "inactive_file") cache = v;
        }
        const double left = std::max(0.0, limit - std::max(0.0, used - cache));
        if (available < 0 || left < available) available = left;
      }
      if (!group.has_relative_path()) break;  // "/" done
    }
  }
  return std::max(0.0, available);
}

HostMemoryVerdict check_host_memory(const TrainArgs& args, const ParallelLayout& layout, double available) {
  HostMemoryVerdict v;
  sweep::SweepPoint p;
  p.seq_length = args.seq_length;
  p.micro_batch = args.micro_batch_size;
  p.grad_accum = std::max<int64_t>(1, args.micro_batches());
  p.dp = layout.dp(), p.tp = layout.tp, p.pp = layout.pp;
  if (layout.sp > 1) {
    p.sp = layout.sp, p.sp_type = "ds";
  } else if (args.sequence_parallel && layout.tp > 1) {
    p.sp = layout.tp, p.sp_type = "megatron";
  }
  p.zero_stage = args.zero_stage;
  p.recompute = args.full_recompute();
  p.overlap = args.overlap_grad_reduce;
  const DType t = args.compute_dtype();
  p.dtype = t == DType::bf16 ? "bf16" : t == DType::f16 ? "fp16" : "fp32";
  p.backend = "cpu";
  p.logits_chunk = args.logits_chunk_tokens;
  sweep::ClusterSpec c;  // the CPU backend: what GPT keeps per token, layer and hidden unit
  c.dtype = p.dtype;
  c.peak_tflops = 1;  // (times are not asked for)
  c.activation_bytes_per_hidden = 18.0 * static_cast<double>(dtype_size(t));  // configs/clusters/cpu-2core.yaml
  GPTConfig m = args.model_config();
  const sweep::Prediction r = sweep::predict(p, m, c);
  if (!r.problem.empty() || available <= 0) return v;
  v.predicted = r.total_memory, v.states = r.states.total(), v.activations = r.activations + r.workspace;
  v.logits = r.logits;
  if (v.predicted <= available) return v;
  constexpr double GiB = 1073741824.0;
  const std::string figures = detail::concat(
      "about ", v.predicted / GiB, " GiB per rank (the performance model: model states ", v.states / GiB, ", activations ",
      v.activations / GiB, ", logits ", v.logits / GiB, " GiB) and this node leaves each of its ranks ", available / GiB,
      " GiB; lower --micro-batch-size or --seq-length, or use --recompute-granularity full, --logits-chunk-tokens, "
      "ZeRO (--zero-stage) or more ranks");
  if (v.predicted > 4.0 * available)
    throw ConfigError("out of host memory (predicted before allocating): this run needs " + figures);
  v.warning = "this run may not fit: it needs " + figures;
  return v;
}

}  // namespace llm
