#include "sweep/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>

#include "data/json.h"

namespace llm::sweep {

namespace {

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

double mib(double bytes) { return bytes / 1048576.0; }

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

std::string md_cell(std::string s) {
  for (char& c : s)
    if (c == '|' || c == '\n') c = c == '|' ? '/' : ' ';
  return s;
}

const char* variable_title(const std::string& v) {
  if (v == "seq") return "sequence length";
  if (v == "mb") return "micro-batch";
  if (v == "gas") return "gradient accumulation";
  if (v == "dp") return "data parallel";
  if (v == "tp") return "tensor parallel";
  if (v == "pp") return "pipeline parallel";
  if (v == "sp") return "sequence parallel";
  if (v == "zero") return "ZeRO stage";
  return "value";
}

// The per-point TFLOPS and memory shown: measured, or predicted in a simulation.
double shown_tflops(const PointResult& r) { return r.tflops_megatron; }

}  // namespace

int first_ok(const std::vector<PointResult>& rs) {
  for (size_t i = 0; i < rs.size(); ++i)
    if (rs[i].status == Status::ok) return static_cast<int>(i);
  return -1;
}

double median_prediction_error(const std::vector<PointResult>& rs) {
  std::vector<double> e;
  for (const PointResult& r : rs)
    if (r.status == Status::ok && r.predicted_ms > 0 && r.ms_per_iteration.median > 0)
      e.push_back(std::fabs(r.predicted_ms - r.ms_per_iteration.median) / r.ms_per_iteration.median);
  if (e.empty()) return -1;
  return stats_of(e).median;
}

std::string markdown_table(const std::vector<PointResult>& rs, const ReportContext& ctx) {
  const std::string var = ctx.variable;
  int64_t smallest = 0;
  for (const PointResult& r : rs) {
    const int64_t v = r.point.swept_value(var);
    if (smallest == 0 || v < smallest) smallest = v;
  }
  const PointResult* base = ctx.baseline >= 0 && ctx.baseline < static_cast<int>(rs.size()) &&
                                    rs[ctx.baseline].status == Status::ok
                                ? &rs[ctx.baseline]
                                : nullptr;
  const std::string what = ctx.simulated ? "predicted " : "";
  std::string s = "| name | " + std::string(variable_title(var)) + " | ratio to smallest | " + what +
                  "TFLOPS (Megatron) | % of baseline |\n|---|---:|---:|---:|---:|\n";
  for (const PointResult& r : rs) {
    const int64_t v = r.point.swept_value(var);
    s += "| " + md_cell(r.point.label_without(var)) + " | " + std::to_string(v) + " | " +
         fmt("%g", static_cast<double>(v) / static_cast<double>(smallest)) + " | ";
    if (r.status == Status::ok) {
      s += fmt("%.3g", shown_tflops(r)) + " | " +
           (base ? fmt("%.1f%%", 100.0 * shown_tflops(r) / shown_tflops(*base)) : std::string("-")) + " |\n";
    } else {
      s += std::string(r.status == Status::oom ? "OOM" : r.status == Status::skipped ? "skipped" : "error") + " | - |\n";
    }
  }
  if (base) s += "\nbaseline (100%): " + base->point.label() + "\n";
  s += "\n| # | point | status | ms/iter median (spread, n) | samples/s | tokens/s | tokens/device/s | "
       "TFLOPS Megatron | TFLOPS model | MFU | peak MiB/rank |";
  const bool have_pred = !ctx.simulated && std::any_of(rs.begin(), rs.end(), [](const PointResult& r) { return r.predicted_ms > 0; });
  if (have_pred) s += " predicted ms | error | predicted MiB |";
  s += "\n|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|";
  if (have_pred) s += "---:|---:|---:|";
  s += "\n";
  for (size_t i = 0; i < rs.size(); ++i) {
    const PointResult& r = rs[i];
    s += "| " + std::to_string(i + 1) + " | " + md_cell(r.point.label()) + " | " + status_name(r.status);
    if (!r.message.empty()) s += ": " + md_cell(r.message);
    if (r.status == Status::ok) {
      s += " | " + fmt("%.1f", r.ms_per_iteration.median) +
           (ctx.simulated ? std::string(" (predicted)")
                          : " (±" + fmt("%.1f%%", 50.0 * r.ms_per_iteration.spread()) + ", " +
                                std::to_string(r.ms_per_iteration.n) + ")") +
           " | " + fmt("%.2f", r.samples_per_second) + " | " + fmt("%.0f", r.tokens_per_second) + " | " +
           fmt("%.0f", r.tokens_per_device_per_second) + " | " + fmt("%.4g", r.tflops_megatron) + " | " +
           fmt("%.4g", r.tflops_model) + " | " + (r.mfu > 0 ? fmt("%.1f%%", 100 * r.mfu) : std::string("-")) + " | ";
    } else {
      s += " | - | - | - | - | - | - | - | ";
    }
    s += r.peak_memory_bytes > 0 ? fmt("%.0f", mib(static_cast<double>(r.peak_memory_bytes))) : std::string("-");
    s += " |";
    if (have_pred) {
      if (r.predicted_ms > 0) {
        s += " " + fmt("%.1f", r.predicted_ms) + " | " +
             (r.status == Status::ok ? fmt("%+.0f%%", 100.0 * (r.predicted_ms - r.ms_per_iteration.median) / r.ms_per_iteration.median)
                                     : std::string("-")) +
             " | " + fmt("%.0f", mib(r.predicted_memory_bytes)) + " |";
      } else {
        s += " - | - | - |";
      }
    }
    s += "\n";
  }
  if (have_pred) {
    const double e = median_prediction_error(rs);
    if (e >= 0) s += "\nperformance model: median |predicted - measured| / measured iteration time = " + fmt("%.1f%%", 100 * e) + "\n";
  }
  if (!ctx.peak_source.empty()) s += "\nMFU peak: " + ctx.peak_source + "\n";
  return s;
}

std::string csv_table(const std::vector<PointResult>& rs, const ReportContext& ctx) {
  std::string s =
      "index,label,model,seq_length,micro_batch,grad_accum,global_batch,dp,tp,pp,sp,sp_type,zero_stage,recompute,"
      "overlap,logits_chunk,dtype,backend,world,status,message,ms_median,ms_min,ms_max,timed_iters,samples_per_s,tokens_per_s,"
      "tokens_per_device_per_s,tflops_megatron,tflops_model,mfu,peak_memory_mib,predicted_ms,predicted_memory_mib,"
      "simulated\n";
  for (size_t i = 0; i < rs.size(); ++i) {
    const PointResult& r = rs[i];
    const SweepPoint& p = r.point;
    auto n = [](double v) { return fmt("%.6g", v); };
    s += std::to_string(i + 1) + "," + csv_field(p.label()) + "," + csv_field(p.model) + "," +
         std::to_string(p.seq_length) + "," + std::to_string(p.micro_batch) + "," + std::to_string(p.grad_accum) +
         "," + std::to_string(p.global_batch()) + "," + std::to_string(p.dp) + "," + std::to_string(p.tp) + "," +
         std::to_string(p.pp) + "," + std::to_string(p.sp) + "," + p.sp_type + "," + std::to_string(p.zero_stage) +
         "," + (p.recompute ? "1" : "0") + "," + (p.overlap ? "1" : "0") + "," + std::to_string(p.logits_chunk) + "," + p.dtype + "," + p.backend +
         "," + std::to_string(p.world()) + "," + csv_field(status_name(r.status)) + "," + csv_field(r.message) + "," +
         n(r.ms_per_iteration.median) + "," +
         n(r.ms_per_iteration.min) + "," + n(r.ms_per_iteration.max) + "," + std::to_string(r.ms_per_iteration.n) +
         "," + n(r.samples_per_second) + "," + n(r.tokens_per_second) + "," + n(r.tokens_per_device_per_second) + "," +
         n(r.tflops_megatron) + "," + n(r.tflops_model) + "," + n(r.mfu) + "," +
         n(mib(static_cast<double>(r.peak_memory_bytes))) + "," + n(r.predicted_ms) + "," +
         n(mib(r.predicted_memory_bytes)) + "," + (ctx.simulated ? "1" : "0") + "\n";
  }
  return s;
}

std::string json_report(const std::vector<PointResult>& rs, const ReportContext& ctx) {
  auto n = [](double v) { return std::isfinite(v) ? fmt("%.9g", v) : std::string("null"); };
  std::string s = "{\n  \"command\": " + json::quote(ctx.command) + ",\n  \"simulated\": " +
                  (ctx.simulated ? "true" : "false") + ",\n  \"variable\": " + json::quote(ctx.variable) +
                  ",\n  \"peak\": " + json::quote(ctx.peak_source) + ",\n  \"baseline\": " +
                  std::to_string(ctx.baseline + 1) + ",\n  \"points\": [";
  for (size_t i = 0; i < rs.size(); ++i) {
    const PointResult& r = rs[i];
    const SweepPoint& p = r.point;
    s += i ? ",\n    {" : "\n    {";
    s += "\"index\": " + std::to_string(i + 1) + ", \"label\": " + json::quote(p.label()) +
         ", \"model\": " + json::quote(p.model) + ", \"seq_length\": " + std::to_string(p.seq_length) +
         ", \"micro_batch\": " + std::to_string(p.micro_batch) + ", \"grad_accum\": " + std::to_string(p.grad_accum) +
         ", \"global_batch\": " + std::to_string(p.global_batch()) + ", \"dp\": " + std::to_string(p.dp) +
         ", \"tp\": " + std::to_string(p.tp) + ", \"pp\": " + std::to_string(p.pp) + ", \"sp\": " +
         std::to_string(p.sp) + ", \"sp_type\": " + json::quote(p.sp_type) + ", \"zero_stage\": " +
         std::to_string(p.zero_stage) + ", \"recompute\": " + (p.recompute ? "true" : "false") +
         ", \"overlap\": " + (p.overlap ? "true" : "false") +
         ", \"logits_chunk\": " + std::to_string(p.logits_chunk) + ", \"dtype\": " + json::quote(p.dtype) +
         ", \"backend\": " + json::quote(p.backend) +
         ", \"world\": " + std::to_string(p.world()) + ", \"status\": " + json::quote(status_name(r.status)) +
         ", \"message\": " + json::quote(r.message) + ", \"ms_per_iteration\": {\"median\": " +
         n(r.ms_per_iteration.median) + ", \"min\": " + n(r.ms_per_iteration.min) + ", \"max\": " +
         n(r.ms_per_iteration.max) + ", \"n\": " + std::to_string(r.ms_per_iteration.n) + "}" +
         ", \"samples_per_second\": " + n(r.samples_per_second) + ", \"tokens_per_second\": " +
         n(r.tokens_per_second) + ", \"tokens_per_device_per_second\": " + n(r.tokens_per_device_per_second) +
         ", \"tflops_megatron\": " + n(r.tflops_megatron) + ", \"tflops_model\": " + n(r.tflops_model) +
         ", \"mfu\": " + n(r.mfu) + ", \"peak_memory_bytes\": " + std::to_string(r.peak_memory_bytes) +
         ", \"predicted_ms\": " + n(r.predicted_ms) + ", \"predicted_memory_bytes\": " +
         n(r.predicted_memory_bytes) + ", \"run_dir\": " + json::quote(r.run_dir) + "}";
  }
  s += "\n  ]\n}\n";
  return s;
}

std::string write_plots(const std::vector<PointResult>& rs, const ReportContext& ctx, const std::string& prefix) {
  // One data block per series (gnuplot's index), ok points only, in sweep order.
  std::vector<std::string> series;
  std::map<std::string, std::vector<const PointResult*>> by_series;
  for (const PointResult& r : rs) {
    const std::string key = r.point.label_without(ctx.variable);
    if (!by_series.count(key)) series.push_back(key);
    if (r.status == Status::ok) by_series[key].push_back(&r);
  }
  const std::string dat = prefix + "-plot.dat", gp = prefix + "-plot.gp";
  {
    std::ofstream d(dat);
    for (const std::string& k : series) {
      d << "# " << k << "\n";
      d << "# x tflops_megatron memory_mib\n";
      for (const PointResult* r : by_series[k]) {
        const double mem = ctx.simulated ? r->predicted_memory_bytes : static_cast<double>(r->peak_memory_bytes);
        d << r->point.swept_value(ctx.variable) << " " << r->tflops_megatron << " " << mib(mem) << "\n";
      }
      if (by_series[k].empty()) d << "nan nan nan\n";
      d << "\n\n";
    }
  }
  {
    std::ofstream g(gp);
    const std::string x = variable_title(ctx.variable);
    const std::string pre = ctx.simulated ? "predicted " : "";
    g << "set terminal svg size 900,540 dynamic background rgb 'white'\n"
      << "set key outside right top\nset grid\nset xlabel '" << x << "'\n";
    if (ctx.variable == "seq") g << "set logscale x 2\n";
    auto plot = [&](const char* file_suffix, const char* ylabel, int column) {
      g << "set output '" << prefix << file_suffix << "'\nset ylabel '" << pre << ylabel << "'\nplot ";
      for (size_t i = 0; i < series.size(); ++i) {
        std::string title = series[i];
        std::replace(title.begin(), title.end(), '\'', ' ');
        std::replace(title.begin(), title.end(), '_', '-');
        g << (i ? ", " : "") << "'" << dat << "' index " << i << " using 1:" << column << " with linespoints title '"
          << title << "'";
      }
      g << "\n";
    };
    plot("-tflops.svg", "TFLOPS per device (Megatron formula)", 2);
    plot("-memory.svg", ctx.simulated ? "memory per device (MiB)" : "peak resident memory per rank (MiB)", 3);
  }
  if (std::system("command -v gnuplot > /dev/null 2>&1") != 0)
    return "gnuplot not found (apt-get install gnuplot-nox); wrote " + dat + " and " + gp + " only";
  const std::string cmd = "gnuplot '" + gp + "' 2> '" + prefix + "-plot.log'";
  if (std::system(cmd.c_str()) != 0) return "gnuplot failed (see " + prefix + "-plot.log)";
  return "";
}

}  // namespace llm::sweep
