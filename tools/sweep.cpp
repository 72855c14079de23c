// llm-sweep: throughput tables. Measures short real trainings (llm-pretrain on mock data, one
// child process per point, mpiexec for several ranks) over lists of sequence lengths, batch
// sizes, models and layouts, or predicts them for a described cluster (--simulate), and finds
// the largest trainable sequence (--find-max-seq-len). Markdown on stdout; CSV, JSON and SVG
// plots in --output-dir; one progress line per point on stderr.
#include <omp.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>
#include <thread>

#include "comm/mpi_session.h"
#include "core/error.h"
#include "core/threads.h"
#include "sweep/calibrate.h"
#include "sweep/measure.h"
#include "sweep/peak.h"
#include "sweep/perf_model.h"
#include "sweep/range.h"
#include "sweep/report.h"

using namespace llm;
using namespace llm::sweep;

namespace {

std::string exe_dir() {
  std::error_code ec;
  auto p = std::filesystem::canonical("/proc/self/exe", ec);
  return ec ? std::string(".") : p.parent_path().string();
}

double machine_memory_gib() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  double kb = 0;
  while (in >> key >> kb)
    if (key == "MemTotal:") return kb / 1048576.0;
  return 0;
}

std::vector<bool> parse_on_off(const std::string& flag, const std::string& text) {
  std::vector<bool> out;
  for (const std::string& w : parse_word_list(flag, text, {"off", "on", "0", "1"})) out.push_back(w == "on" || w == "1");
  return out;
}

void progress(size_t i, size_t n, const PointResult& r, bool simulated) {
  std::string what;
  char buf[256];
  if (r.status == Status::ok) {
    std::snprintf(buf, sizeof buf, "ok %.1f ms/iter%s, %.4g TFLOPS, %.0f MiB", r.ms_per_iteration.median,
                  simulated ? " (predicted)" : "", r.tflops_megatron,
                  (simulated ? r.predicted_memory_bytes : static_cast<double>(r.peak_memory_bytes)) / 1048576.0);
    what = buf;
  } else {
    what = std::string(status_name(r.status)) + ": " + r.message;
  }
  std::fprintf(stderr, "[%zu/%zu] %s: %s\n", i + 1, n, r.point.label().c_str(), what.c_str());
  std::fflush(stderr);
}

// Open MPI's mpiexec says "Open MPI" / "OpenRTE" in --version; MPICH's Hydra does not.
bool mpiexec_is_open_mpi(const std::string& mpiexec) {
  const std::string cmd = "'" + mpiexec + "' --version 2>&1";
  FILE* f = ::popen(cmd.c_str(), "r");
  if (!f) return true;
  std::string out;
  char buf[256];
  while (std::fgets(buf, sizeof buf, f)) out += buf;
  ::pclose(f);
  return out.find("Open MPI") != std::string::npos || out.find("OpenRTE") != std::string::npos ||
         out.find("open-mpi") != std::string::npos || out.find("Open-MPI") != std::string::npos;
}

PointResult simulated_result(const SweepPoint& p, const GPTConfig& m, const ClusterSpec& c, double peak) {
  PointResult r;
  r.point = p;
  const Prediction pr = predict(p, m, c, peak);
  if (!pr.problem.empty()) {
    r.status = Status::skipped;
    r.message = pr.problem;
    return r;
  }
  r.predicted_ms = pr.iteration_s * 1e3;
  r.predicted_memory_bytes = pr.total_memory;
  if (!pr.fits) {
    r.status = Status::oom;
    char buf[160];
    std::snprintf(buf, sizeof buf, "predicted %.2f GiB per device > %.2f GiB", pr.total_memory / 1073741824.0, c.memory_gib);
    r.message = buf;
    return r;
  }
  r.ms_per_iteration.median = r.ms_per_iteration.min = r.ms_per_iteration.max = r.predicted_ms;
  r.samples_per_second = pr.samples_per_second;
  r.tokens_per_device_per_second = pr.tokens_per_device_per_second;
  r.tokens_per_second = pr.tokens_per_device_per_second * static_cast<double>(p.world());
  r.tflops_megatron = pr.tflops_megatron;
  r.tflops_model = pr.tflops_model;
  r.mfu = pr.mfu;
  r.peak_memory_bytes = static_cast<int64_t>(pr.total_memory);
  return r;
}

int run(int argc, char** argv) {
  // one process: it starts mpiexec itself for multi-rank points
  require_single_process("llm-sweep");
  CLI::App app{"llm-sweep: throughput/TFLOPS/memory tables over sequence length, batch, model and layout"};
  app.footer(
      "Lists: comma-separated values or ranges FIRST:LAST (doubling), FIRST:LAST:xF, FIRST:LAST:+S;\n"
      "k suffix = x1024, m = x1048576. Every combination of the lists is one point.\n\n"
      "Examples:\n"
      "  llm-sweep --models small --seq-lens 128:1024 --threads 2                # measure here\n"
      "  llm-sweep --models small --seq-lens 128:1024 --cluster configs/clusters/cpu-2core.yaml  # + prediction error\n"
      "  llm-sweep --simulate --cluster configs/clusters/polaris.yaml --models GPT25B \\\n"
      "      --seq-lens 2k:256k --tp 4 --sp 1,4 --sp-type ds --recompute off,on --dtype bf16\n"
      "  llm-sweep --find-max-seq-len --simulate --cluster configs/clusters/polaris.yaml \\\n"
      "      --models GPT33B --seq-lens 1k:1m --tp 4 --pp 4 --sp 8 --dtype bf16 --recompute on");
  std::string models = "tiny", seqs = "128", mbs = "1", gas = "1", dps = "1", tps = "1", pps = "1", sps = "1";
  std::string sp_types = "ds", zeros = "0", recomputes = "off", overlaps = "off", dtypes = "fp32", backends = "cpu";
  int64_t vocab = 0, logits_chunk = 0, warmup = 2, iters = 5, threads = 0, baseline = 0, seq_multiple = 0;
  double mem_limit_gib = 0, timeout = 600;
  std::string output_dir = "outputs/sweep", name = "sweep", cluster_file, device = "cpu", pretrain, mpiexec = "mpiexec";
  bool simulate = false, find_max = false, no_plots = false, fit = false;
  app.add_option("--models", models, "model keys (configs/models) or YAML paths")->capture_default_str();
  app.add_option("--seq-lens", seqs, "sequence lengths")->capture_default_str();
  app.add_option("--micro-batches", mbs, "micro-batch sizes")->capture_default_str();
  app.add_option("--gas", gas, "gradient accumulation steps (micro-batches per rank per iteration)")->capture_default_str();
  app.add_option("--dp", dps, "data-parallel sizes")->capture_default_str();
  app.add_option("--tp", tps, "tensor-parallel sizes")->capture_default_str();
  app.add_option("--pp", pps, "pipeline-parallel sizes")->capture_default_str();
  app.add_option("--sp", sps, "sequence-parallel sizes")->capture_default_str();
  app.add_option("--sp-type", sp_types, "ds (DeepSpeed-Ulysses) | megatron (sp must equal tp)")->capture_default_str();
  app.add_option("--zero", zeros, "ZeRO stages")->capture_default_str();
  app.add_option("--recompute", recomputes, "full activation recompute: off | on")->capture_default_str();
  app.add_option("--overlap", overlaps,
                 "data-parallel collectives overlapped with compute: off | on (--overlap-grad-reduce, and under ZeRO 1-3 "
                 "--overlap-param-gather)")
      ->capture_default_str();
  CLI::Option* dtype_opt = app.add_option("--dtype", dtypes, "fp32 | bf16 | fp16 (--simulate: the cluster's)")->capture_default_str();
  CLI::Option* backend_opt = app.add_option("--backend", backends, "cpu | cuda (--simulate: cuda unless the cluster's device is cpu)")->capture_default_str();
  app.add_option("--vocab-size", vocab, "vocabulary (0 = the model file's, else llm-pretrain's default)")->capture_default_str();
  app.add_option("--logits-chunk-tokens", logits_chunk, "llm-pretrain's: the output layer and loss this many tokens at a time (0 = all at once)")->capture_default_str();
  app.add_option("--warmup", warmup, "warm-up iterations per point (not counted)")->capture_default_str();
  app.add_option("--iters", iters, "timed iterations per point")->capture_default_str();
  app.add_option("--threads", threads, "threads per point, split over its ranks (0 = OMP_NUM_THREADS or all cores)")->capture_default_str();
  CLI::Option* mem_opt = app.add_option("--mem-limit-gib", mem_limit_gib, "resident memory cap per rank; above it the point is out of memory (0 = machine RAM; with --simulate: replaces the cluster's memory-gib)")->capture_default_str();
  app.add_option("--timeout", timeout, "seconds per point before it is killed (an error row)")->capture_default_str();
  app.add_option("--output-dir", output_dir, "CSV, JSON, markdown, plots and runs/ go here")->capture_default_str();
  app.add_option("--name", name, "file name prefix in --output-dir")->capture_default_str();
  app.add_option("--baseline", baseline, "1-based point index of the 100% row (0 = first ok point)")->capture_default_str();
  app.add_option("--cluster", cluster_file, "cluster YAML (configs/clusters): --simulate's machine, or predictions next to measurements");
  app.add_flag("--simulate", simulate, "predict with the performance model instead of measuring");
  app.add_flag("--fit", fit, "fit --cluster's efficiencies to the measured points; writes <name>-fitted-cluster.yaml");
  app.add_flag("--find-max-seq-len", find_max, "largest trainable sequence per configuration, searched within the --seq-lens bounds");
  app.add_option("--seq-multiple", seq_multiple, "--find-max-seq-len: sequence lengths are multiples of this (0 = 64 x the ranks the sequence is split over)")->capture_default_str();
  app.add_option("--device", device, "MFU peak: cpu (measured sgemm) or a datasheet device (A100-40GB, H100-SXM, ...)")->capture_default_str();
  app.add_option("--pretrain", pretrain, "llm-pretrain to run (default: next to llm-sweep)");
  app.add_option("--mpiexec", mpiexec, "MPI launcher for multi-rank points")->capture_default_str();
  app.add_flag("--no-plots", no_plots, "skip the gnuplot SVGs");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }

  // Everything the sweep needs is checked before the first point runs.
  SweepGrid g;
  g.models = parse_word_list("--models", models);
  g.seq_lengths = parse_int_list("--seq-lens", seqs);
  g.micro_batches = parse_int_list("--micro-batches", mbs);
  g.grad_accums = parse_int_list("--gas", gas);
  g.dps = parse_int_list("--dp", dps);
  g.tps = parse_int_list("--tp", tps);
  g.pps = parse_int_list("--pp", pps);
  g.sps = parse_int_list("--sp", sps);
  g.sp_types = parse_word_list("--sp-type", sp_types, {"ds", "megatron"});
  g.zero_stages.clear();
  for (const std::string& z : parse_word_list("--zero", zeros, {"0", "1", "2", "3"})) g.zero_stages.push_back(std::stoll(z));
  g.recomputes = parse_on_off("--recompute", recomputes);
  g.overlaps = parse_on_off("--overlap", overlaps);
  g.dtypes = parse_word_list("--dtype", dtypes, {"fp32", "bf16", "fp16"});
  g.backends = parse_word_list("--backend", backends, {"cpu", "cuda"});
  g.vocab_size = vocab;
  if (logits_chunk < 0) throw ConfigError("--logits-chunk-tokens must be >= 0 (0 = all at once)");
  g.logits_chunk = logits_chunk;
  if (warmup < 0 || iters < 1) throw ConfigError("--warmup must be >= 0 and --iters >= 1");
  const std::string here = exe_dir();
  std::map<std::string, GPTConfig> model_of;
  for (const std::string& m : g.models) {
    SweepPoint probe;
    probe.model = m;
    probe.vocab_size = vocab;
    model_of[m] = point_model(probe, here);  // unknown key: ConfigError naming it
  }
  ClusterSpec cluster;
  const bool have_cluster = !cluster_file.empty();
  if (have_cluster) cluster = load_cluster(cluster_file);
  if (simulate && !have_cluster) throw ConfigError("--simulate needs --cluster FILE (configs/clusters/*.yaml)");
  if (fit && (simulate || !have_cluster)) throw ConfigError("--fit needs measured points and --cluster FILE (not --simulate)");
  if (simulate && !dtype_opt->count()) g.dtypes = {cluster.dtype};
  if (simulate && !backend_opt->count()) g.backends = {cluster.device == "cpu" ? "cpu" : "cuda"};
  if (!simulate) {  // one MFU peak per sweep: the CPU's measured sgemm, or a GPU's datasheet
    const bool cuda = std::find(g.backends.begin(), g.backends.end(), "cuda") != g.backends.end();
    const bool cpu = std::find(g.backends.begin(), g.backends.end(), "cpu") != g.backends.end();
    if (cuda && device == "cpu")
      throw ConfigError("--backend cuda needs --device (a datasheet peak: H100-SXM, A100-40GB, ...); the CPU's sgemm "
                        "ceiling is no GPU's");
    if (cuda && cpu) throw ConfigError("--backend: one sweep measures one kind of device (cpu or cuda), not both");
    if (!cuda && device != "cpu")
      throw ConfigError("--device " + device + " is a GPU's datasheet peak: give it with --backend cuda (a CPU sweep "
                        "measures its own sgemm ceiling)");
    if (cuda)
      for (const std::string& dt : g.dtypes) (void)datasheet_peak(device, dt);  // an unknown pair is named now
  }
  if (pretrain.empty()) pretrain = here + "/llm-pretrain";
  if (!simulate && ::access(pretrain.c_str(), X_OK) != 0)
    throw ConfigError("--pretrain: no executable llm-pretrain at '" + pretrain + "'");
  // A launcher that is not there would make every multi-rank point an error row: named now.
  const auto most = [](const std::vector<int64_t>& v) { return v.empty() ? 1 : *std::max_element(v.begin(), v.end()); };
  if (!simulate && most(g.dps) * most(g.tps) * most(g.pps) * most(g.sps) > 1) {
    bool found = mpiexec.find('/') != std::string::npos && ::access(mpiexec.c_str(), X_OK) == 0;
    if (mpiexec.find('/') == std::string::npos)
      if (const char* path = std::getenv("PATH"))
        for (std::string dirs = path; !found && !dirs.empty();) {
          const size_t c = dirs.find(':');
          const std::string dir = dirs.substr(0, c);
          dirs = c == std::string::npos ? "" : dirs.substr(c + 1);
          found = ::access(((dir.empty() ? "." : dir) + "/" + mpiexec).c_str(), X_OK) == 0;
        }
    if (!found)
      throw ConfigError("--mpiexec " + mpiexec + ": no such executable (on PATH), and points of several ranks need it");
  }
  check_cpu_threads(threads, "--threads");  // (each point's llm-pretrain is given it)
  if (threads <= 0) {
    const char* env = std::getenv("OMP_NUM_THREADS");
    threads = env && std::atoi(env) > 0 ? std::atoi(env) : static_cast<int64_t>(std::thread::hardware_concurrency());
  }
  if (simulate && mem_opt->count() && mem_limit_gib > 0) cluster.memory_gib = mem_limit_gib;
  if (mem_limit_gib <= 0) mem_limit_gib = machine_memory_gib();
  std::string command;
  for (int i = 0; i < argc; ++i) command += (i ? " " : "") + std::string(argv[i]);

  // The peak MFU is measured against.
  double peak_total = 0, peak_device = 0;
  std::string peak_source;
  char buf[256];
  const bool need_measured_peak = (!simulate && device == "cpu") || (have_cluster && cluster.peak_tflops == 0);
  if (need_measured_peak) {
    omp_set_num_threads(static_cast<int>(threads));
    const double gf = measured_sgemm_gflops();
    peak_total = peak_device = gf / 1e3;
    std::snprintf(buf, sizeof buf, "measured OpenBLAS sgemm 2048^3, %lld threads: %.1f GFLOP/s", static_cast<long long>(threads), gf);
    peak_source = buf;
    std::fprintf(stderr, "llm-sweep: MFU peak = %s%s\n", buf, simulate ? "" : " (measured again after the sweep; the better one is used)");
  }
  if (simulate) {
    if (cluster.peak_tflops > 0) peak_device = cluster.peak_tflops;
    std::snprintf(buf, sizeof buf, "%s (%s %s): %.4g TFLOPS per device", cluster.name.c_str(), cluster.device.c_str(),
                  cluster.dtype.c_str(), peak_device);
    peak_source = buf;
  } else if (device != "cpu") {
    const DevicePeak& d = datasheet_peak(device, g.dtypes.front());
    peak_device = d.tflops;
    peak_source = d.device + " datasheet dense peak per device, each point at its dtype's:";
    for (const std::string& dt : g.dtypes) {
      std::snprintf(buf, sizeof buf, " %s %g TFLOPS", dt.c_str(), datasheet_peak(device, dt).tflops);
      peak_source += buf;
    }
  }

  std::filesystem::create_directories(output_dir);
  const std::string prefix = (std::filesystem::path(output_dir) / name).string();
  MeasureOptions mo;
  mo.launch.pretrain = pretrain;
  mo.launch.mpiexec = mpiexec;
  mo.launch.warmup_iters = warmup;
  mo.launch.timed_iters = iters;
  mo.launch.threads = threads;
  mo.launch.as_root = ::geteuid() == 0;
  mo.launch.open_mpi = mpiexec_is_open_mpi(mpiexec);
  mo.runs_root = (std::filesystem::path(output_dir) / (name + "-runs")).string();
  mo.mem_limit_bytes = static_cast<int64_t>(mem_limit_gib * 1073741824.0);
  mo.timeout_seconds = timeout;
  if (!simulate)
    std::fprintf(stderr, "llm-sweep: measuring with %s, %lld threads per point, %d+%d iterations, cap %.2f GiB per rank\n",
                 pretrain.c_str(), static_cast<long long>(threads), static_cast<int>(warmup), static_cast<int>(iters), mem_limit_gib);

  int counter = 0;
  auto evaluate = [&](const SweepPoint& p) {
    const GPTConfig mp = point_model(p, here);
    PointResult r;
    if (simulate) {
      r = simulated_result(p, mp, cluster, peak_device);
    } else {
      const double peak_for_point =
          device == "cpu" ? cpu_point_peak(peak_total, p.world(), threads,
                                           static_cast<int64_t>(std::thread::hardware_concurrency()))
                          : datasheet_peak(device, p.dtype).tflops * static_cast<double>(p.world());
      mo.peak_tflops_total = peak_for_point;
      r = measure_point(p, mp, mo, ++counter);
      if (have_cluster && r.status != Status::skipped) {
        const Prediction pr = predict(p, mp, cluster, cluster.peak_tflops > 0 ? 0 : peak_device);
        if (pr.problem.empty()) r.predicted_ms = pr.iteration_s * 1e3, r.predicted_memory_bytes = pr.total_memory;
      }
    }
    return r;
  };

  const std::vector<SweepPoint> points = expand(g);
  std::vector<PointResult> results;
  ReportContext ctx;
  ctx.simulated = simulate;
  ctx.peak_source = peak_source;
  ctx.command = command;
  ctx.variable = swept_variable(g);
  if (find_max) {
    // One search per configuration: the grid with the sequence list collapsed to its bounds.
    const int64_t lo = *std::min_element(g.seq_lengths.begin(), g.seq_lengths.end());
    const int64_t hi = *std::max_element(g.seq_lengths.begin(), g.seq_lengths.end());
    SweepGrid one = g;
    one.seq_lengths = {lo};
    const std::vector<SweepPoint> configs = expand(one);
    std::printf("| configuration | largest sequence length | status there |\n|---|---:|---|\n");
    std::vector<PointResult> found;
    for (size_t ci = 0; ci < configs.size(); ++ci) {
      SweepPoint base = configs[ci];
      // Ulysses splits the sequence over its sp ranks (64 tokens each), Megatron SP over the tp ranks.
      const int64_t megatron_split = base.sp_type == "megatron" && base.sp > 1 ? base.tp : 1;
      const int64_t multiple = seq_multiple > 0 ? seq_multiple : std::lcm<int64_t>(64 * base.ulysses(), megatron_split);
      std::map<int64_t, PointResult> tried;
      auto fits = [&](int64_t s) {
        SweepPoint p = base;
        p.seq_length = s;
        PointResult r = evaluate(p);
        std::fprintf(stderr, "  search %s: seq %lld -> %s%s%s\n", base.label_without("seq").c_str(), static_cast<long long>(s),
                     status_name(r.status), r.message.empty() ? "" : ": ", r.message.c_str());
        tried[s] = r;
        return r.status == Status::ok;
      };
      const int64_t best = find_max_fitting(lo, hi, multiple, fits);
      std::string where = best == 0 ? "none fits from " + std::to_string(lo) : "ok";
      if (best == 0 && tried.empty())  // (lo and hi round past each other: nothing was run)
        where = detail::concat("no multiple of ", multiple, " (the layout's sequence split) within ", lo, "-", hi);
      if (best > 0) {
        found.push_back(tried[best]);
        if (best == hi) where += " (the upper bound: search further with a larger --seq-lens)";
      } else if (!tried.empty()) {
        where += ": " + std::string(status_name(tried.begin()->second.status)) + " " + tried.begin()->second.message;
      }
      std::printf("| %s | %lld | %s |\n", base.label_without("seq").c_str(), static_cast<long long>(best), where.c_str());
      std::fflush(stdout);
    }
    results = found;
    ctx.variable = "seq";
    std::printf("\n");
  } else {
    for (size_t i = 0; i < points.size(); ++i) {
      results.push_back(evaluate(points[i]));
      progress(i, points.size(), results.back(), simulate);
    }
  }
  if (need_measured_peak && !simulate && device == "cpu") {  // (else the MFU peak is a datasheet's)
    // A shared machine can slow one measurement: the ceiling is the better of before and after,
    // and the MFU and predictions that used the first one are redone with it.
    const double again = measured_sgemm_gflops() / 1e3;
    if (again > peak_device) {
      for (PointResult& r : results) {
        r.mfu *= peak_device / again;
        if (r.predicted_ms > 0) {
          const Prediction pr = predict(r.point, point_model(r.point, here), cluster, cluster.peak_tflops > 0 ? 0 : again);
          if (pr.problem.empty()) r.predicted_ms = pr.iteration_s * 1e3;
        }
      }
      peak_total = peak_device = again;
    }
    std::snprintf(buf, sizeof buf, "measured OpenBLAS sgemm 2048^3, %lld threads: %.1f GFLOP/s (better of before and after the sweep)",
                  static_cast<long long>(threads), peak_device * 1e3);
    ctx.peak_source = buf;
    std::fprintf(stderr, "llm-sweep: MFU peak = %s\n", buf);
  }
  if (baseline > static_cast<int64_t>(results.size())) throw ConfigError("--baseline " + std::to_string(baseline) + ": there are only " + std::to_string(results.size()) + " points");
  ctx.baseline = baseline > 0 ? static_cast<int>(baseline - 1) : first_ok(results);
  const std::string md = markdown_table(results, ctx);
  std::printf("%s", md.c_str());
  std::ofstream(prefix + ".md") << md;
  std::ofstream(prefix + ".csv") << csv_table(results, ctx);
  std::ofstream(prefix + ".json") << json_report(results, ctx);
  std::string files = prefix + ".md, .csv, .json";
  if (!no_plots && !results.empty()) {
    const std::string why = write_plots(results, ctx, prefix);
    if (why.empty()) files += ", -tflops.svg, -memory.svg";
    else std::fprintf(stderr, "llm-sweep: no plots: %s\n", why.c_str());
  }
  if (fit) {
    const FitResult f = fit_efficiencies(results, cluster, cluster.peak_tflops > 0 ? 0 : peak_device,
                                         [&](const SweepPoint& p) { return point_model(p, here); });
    std::snprintf(buf, sizeof buf,
                  "fitted on %d measured points: matmul-efficiency %g, matmul-half-tokens %g, attention-efficiency %g; "
                  "median error %.1f%% with %s, %.1f%% fitted (max %.1f%%)",
                  f.points, f.cluster.matmul_efficiency, f.cluster.matmul_half_tokens, f.cluster.attention_efficiency,
                  100 * f.error_before, cluster_file.c_str(), 100 * f.error_after, 100 * f.max_error_after);
    std::printf("\nperformance model %s\n", buf);
    std::ofstream(prefix + "-fitted-cluster.yaml") << cluster_yaml(f.cluster, std::string(buf) + "; by: " + command);
    files += ", -fitted-cluster.yaml";
  }
  std::fprintf(stderr, "llm-sweep: wrote %s\n", files.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const ConfigError& e) {
    std::fprintf(stderr, "llm-sweep: error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "llm-sweep: error: %s\n", e.what());
    return 1;
  }
}
