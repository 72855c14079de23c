#include "sweep/measure.h"

#include <algorithm>
#include <cmath>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "data/json.h"

namespace llm::sweep {

namespace {

bool mentions_memory(const std::string& s) {
  for (const char* m : {"out of host memory", "bad_alloc", "Cannot allocate memory", "out of memory", "Out of memory",
                        "cannot allocate"})
    if (s.find(m) != std::string::npos) return true;
  return false;
}

// The most telling line of a failed run: llm-pretrain's own "error:" line, else the last line.
std::string error_line(const std::string& text) {
  std::istringstream in(text);
  std::string line, first_error, last;
  while (std::getline(in, line)) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    if (line.find_first_not_of("-=* \t\r") == std::string::npos) continue;  // mpirun's rules around its notes
    if (line.rfind("Run with --help", 0) == 0) continue;  // CLI11's hint after the real message
    last = line;
    if (first_error.empty() && line.find("error:") != std::string::npos) first_error = line;
  }
  std::string s = first_error.empty() ? last : first_error;
  const size_t p = s.find("error: ");
  if (p != std::string::npos) s = s.substr(p + 7);
  if (s.size() > 300) s = s.substr(0, 297) + "...";
  return s;
}

std::string slug(const std::string& label) {
  std::string s;
  for (char c : label) s += (std::isalnum(static_cast<unsigned char>(c)) ? c : '_');
  return s;
}

}  // namespace

void classify(PointResult& r, const ChildResult& c, const std::string& err, double timeout_seconds,
              int64_t mem_limit_bytes) {
  if (c.timed_out) {
    r.status = Status::error;
    r.message = detail::concat("timed out after ", timeout_seconds, " s");
  } else if (c.over_memory) {
    r.status = Status::oom;
    r.message = detail::concat("a rank's resident memory passed the cap of ", mem_limit_bytes / 1048576,
                               " MiB (--mem-limit-gib); killed");
  } else if (c.exec_failed) {
    r.status = Status::error;
    r.message = "could not start the command: " + error_line(err);
  } else if (c.signal != 0 || (c.exit_code > 128 && c.exit_code <= 128 + 64)) {
    // A signal, or a rank's signal as mpiexec reports it (exit code 128 + N, its own note after)
    const int sig = c.signal != 0 ? c.signal : c.exit_code - 128;
    const bool oom = sig == SIGKILL || mentions_memory(err);
    r.status = oom ? Status::oom : Status::error;
    r.message = detail::concat(c.signal != 0 ? "killed by signal " : "a process was killed by signal ", sig, " (",
                               ::strsignal(sig), ")", oom && sig == SIGKILL ? ": the kernel's OOM killer" : "");
    const std::string line = error_line(err);
    if (!line.empty() && !(oom && sig == SIGKILL)) r.message += ": " + line;
  } else if (c.exit_code != 0) {
    r.status = mentions_memory(err) ? Status::oom : Status::error;
    r.message = error_line(err);
    if (r.message.empty()) r.message = detail::concat("exit code ", c.exit_code);
  } else {
    r.status = Status::ok;
  }
}

RunMetrics read_run_metrics(const std::string& path, int64_t warmup) {
  std::ifstream in(path);
  RunMetrics m;
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (line.empty()) continue;
    const json::Value v = json::parse(line, path + ":" + std::to_string(n));
    const json::Value* it = v.find("iteration");
    const json::Value* t = v.find("elapsed_ms_per_iteration");
    if (!it || !t || !t->is_number()) throw Error(path + ":" + std::to_string(n) + ": no elapsed_ms_per_iteration");
    if (it->as_int() > warmup) m.ms.push_back(t->as_double());
    const json::Value* peak = v.find("memory_max_allocated_mib");
    if (peak && peak->is_number())
      m.device_peak_bytes = std::max(m.device_peak_bytes, static_cast<int64_t>(std::llround(peak->as_double() * 1048576.0)));
  }
  return m;
}

PointResult measure_point(const SweepPoint& p, const GPTConfig& model, const MeasureOptions& o, int index) {
  PointResult r;
  r.point = p;
  const std::string problem = layout_problem(p, model);
  if (!problem.empty()) {
    r.status = Status::skipped;
    r.message = "impossible layout: " + problem;
    return r;
  }
  namespace fs = std::filesystem;
  char prefix[16];
  std::snprintf(prefix, sizeof prefix, "%03d-", index);
  const fs::path dir = fs::path(o.runs_root) / (prefix + slug(p.label()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  r.run_dir = dir.string();
  LaunchOptions lo = o.launch;
  lo.output_dir = dir.string();
  ChildOptions co;
  co.stdout_path = (dir / "stdout.txt").string();
  co.stderr_path = (dir / "stderr.txt").string();
  co.mem_limit_bytes = o.mem_limit_bytes;
  co.timeout_seconds = o.timeout_seconds;
  if (lo.threads > 0) co.env.push_back("OMP_NUM_THREADS=" + std::to_string(threads_per_rank(p, lo.threads)));
  if (lo.as_root) co.env.insert(co.env.end(), {"OMPI_ALLOW_RUN_AS_ROOT=1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1"});
  const std::vector<std::string> cmd = pretrain_command(p, lo);
  {
    std::ofstream c(dir / "command.txt");
    for (const std::string& a : cmd) c << a << ' ';
    c << '\n';
  }
  const ChildResult c = run_child(cmd, co);
  r.peak_memory_bytes = c.max_rss_bytes;
  std::ifstream ef(co.stderr_path);
  const std::string err((std::istreambuf_iterator<char>(ef)), std::istreambuf_iterator<char>());
  classify(r, c, err, o.timeout_seconds, o.mem_limit_bytes);
  if (r.status != Status::ok) return r;
  std::vector<double> ms;
  try {
    RunMetrics m = read_run_metrics((dir / "metrics.jsonl").string(), lo.warmup_iters);
    ms = std::move(m.ms);
    if (m.device_peak_bytes >= 0) r.peak_memory_bytes = m.device_peak_bytes;  // a GPU run: the device's
  } catch (const Error& e) {
    r.status = Status::error;
    r.message = e.what();
    return r;
  }
  if (ms.empty()) {
    r.status = Status::error;
    r.message = "no timed iterations in " + (dir / "metrics.jsonl").string();
    return r;
  }
  r.ms_per_iteration = stats_of(ms);
  derive_rates(r, model, o.peak_tflops_total);
  return r;
}

}  // namespace llm::sweep
