#include "train/metrics.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "core/error.h"

namespace llm {

namespace {
template <typename... Args>
std::string format(const char* f, Args... args) {
  char buf[256];
  std::snprintf(buf, sizeof buf, f, args...);
  return buf;
}
}  // namespace

std::string megatron_log_line(const LogRecord& r) {
  std::string s;
  s += format(" iteration %8lld/%8lld |", static_cast<long long>(r.iteration), static_cast<long long>(r.train_iters));
  s += format(" consumed samples: %12lld |", static_cast<long long>(r.consumed_samples));
  s += format(" consumed tokens: %12lld |", static_cast<long long>(r.consumed_tokens));
  s += format(" elapsed time per iteration (ms): %.1f |", r.elapsed_ms_per_iteration);
  s += format(" learning rate: %.3E |", r.learning_rate);
  s += format(" global batch size: %5lld |", static_cast<long long>(r.global_batch_size));
  s += format(" lm loss: %.6E |", r.lm_loss);
  s += format(" loss scale: %.1f |", r.loss_scale);
  s += format(" grad norm: %.3f |", r.grad_norm);
  s += format(" actual seqlen: %5lld |", static_cast<long long>(r.seq_length));
  s += format(" number of skipped iterations: %3lld |", static_cast<long long>(r.skipped_iterations));
  s += format(" number of nan iterations: %3lld |", static_cast<long long>(r.nan_iterations));
  s += format(" samples per second: %.3f |", r.samples_per_second);
  s += format(" tokens per gpu per second (tgs): %.3f |", r.tokens_per_gpu_per_second);
  s += format(" TFLOPs: %.2f |", r.tflops_formula == "model" ? r.tflops_model : r.tflops_megatron);
  return s;
}

std::string metrics_json(const LogRecord& r) {
  auto num = [](double v) { return std::isfinite(v) ? format("%.9g", v) : std::string("null"); };
  std::string s = "{";
  // (appending piecewise also sidesteps GCC 12's bogus -Wrestrict on "literal" + string)
  auto field = [&](const char* name, double v) {
    s += '"';
    s += name;
    s += "\": ";
    s += num(v);
    s += ", ";
  };
  s += format("\"iteration\": %lld, \"train_iters\": %lld, ", static_cast<long long>(r.iteration),
              static_cast<long long>(r.train_iters));
  s += format("\"consumed_samples\": %lld, \"consumed_tokens\": %lld, ",
              static_cast<long long>(r.consumed_samples), static_cast<long long>(r.consumed_tokens));
  field("elapsed_ms_per_iteration", r.elapsed_ms_per_iteration);
  field("data_ms_per_iteration", r.data_ms_per_iteration);
  field("learning_rate", r.learning_rate);
  s += format("\"global_batch_size\": %lld, ", static_cast<long long>(r.global_batch_size));
  field("lm_loss", r.lm_loss);
  field("loss_scale", r.loss_scale);
  field("grad_norm", r.grad_norm);
  s += format("\"seq_length\": %lld, \"skipped_iterations\": %lld, \"nan_iterations\": %lld, ",
              static_cast<long long>(r.seq_length), static_cast<long long>(r.skipped_iterations),
              static_cast<long long>(r.nan_iterations));
  field("samples_per_second", r.samples_per_second);
  field("tokens_per_gpu_per_second", r.tokens_per_gpu_per_second);
  field("tflops_megatron", r.tflops_megatron);
  field("tflops_model", r.tflops_model);
  if (r.memory_max_allocated_mib >= 0) {
    field("memory_allocated_mib", r.memory_allocated_mib);
    field("memory_max_allocated_mib", r.memory_max_allocated_mib);
    field("memory_reserved_mib", r.memory_reserved_mib);
  }
  s += "\"tflops_formula\": \"";
  s += r.tflops_formula;
  s += "\"}";
  return s;
}

std::string memory_report_line(int rank, int64_t iteration, double allocated_mib, double max_allocated_mib,
                               double reserved_mib) {
  return format("[Rank %d] (after %lld iterations) memory (MB) | allocated: %.1f | max allocated: %.1f | reserved: %.1f",
                rank, static_cast<long long>(iteration), allocated_mib, max_allocated_mib, reserved_mib);
}

std::string activation_report(double activation_mib, double logits_mib, int64_t logits_chunk) {
  std::string s = format("activation buffers per rank: %.1f MB, the logits %.1f MB of them", activation_mib, logits_mib);
  if (logits_chunk > 0)
    s += format(" (in chunks of %lld tokens)", static_cast<long long>(logits_chunk));
  else if (logits_mib * 4.0 >= activation_mib && logits_mib > 0)
    s += " (every token's: --logits-chunk-tokens N would hold N tokens' at a time)";
  return s;
}

std::string validation_report(const std::string& where, double loss) {
  const double ppl = std::exp(std::min(20.0, loss));
  std::string body = " validation loss at ";
  body += where;
  body += " | ";
  body += format("lm loss value: %.6E | ", loss);
  body += format("lm loss PPL: %.6E | ", ppl);
  const std::string rule(body.size() + 1, '-');
  std::string out = rule;
  out += '\n';
  out += body;
  out += '\n';
  out += rule;
  return out;
}

std::string timers_block(const std::vector<TimerRow>& rows) {
  std::string s = "(min, max) time across ranks (ms):";
  for (const TimerRow& r : rows) {
    std::string name = "    " + r.name + " ";
    while (name.size() < 52) name += '.';
    s += "\n" + name + format(": (%.2f, %.2f)", r.min_ms, r.max_ms);
  }
  return s;
}

void LogAccumulator::add(double loss, bool finite, bool applied, double seconds, double grad_norm, double lr,
                         double data_seconds) {
  ++iterations_;
  seconds_ += seconds;
  data_seconds_ += data_seconds;
  last_lr_ = lr;
  if (!finite) {
    ++nan_;
  } else if (!applied) {
    skipped_loss_sum_ += loss;  // an fp16 overflow: the forward's loss is finite
    ++skipped_finite_;
  }
  // As Megatron's training_log: the loss averages the iterations whose update was applied (an
  // fp16 overflow's finite loss is left out with it).
  if (applied) {
    ++applied_;
    loss_sum_ += loss;
    last_grad_norm_ = grad_norm;
  } else {
    ++skipped_;
  }
}

void LogAccumulator::flush_into(LogRecord& r, int64_t global_batch, int64_t seq_length, int world_size,
                                double flops_megatron, double flops_model) {
  const double per_iter = iterations_ ? seconds_ / static_cast<double>(iterations_) : 0.0;
  r.elapsed_ms_per_iteration = per_iter * 1000.0;
  r.data_ms_per_iteration = iterations_ ? data_seconds_ / static_cast<double>(iterations_) * 1000.0 : 0.0;
  r.learning_rate = last_lr_;
  r.global_batch_size = global_batch;
  // An interval of fp16 overflows alone (Megatron prints no loss then) gives their forwards'
  // mean; NaN only when no iteration had a finite loss.
  r.lm_loss = applied_          ? loss_sum_ / static_cast<double>(applied_)
              : skipped_finite_ ? skipped_loss_sum_ / static_cast<double>(skipped_finite_)
                                : NAN;
  r.grad_norm = last_grad_norm_;
  r.seq_length = seq_length;
  r.nan_iterations = nan_;
  r.skipped_iterations = skipped_;
  r.samples_per_second = per_iter > 0 ? static_cast<double>(global_batch) / per_iter : 0.0;
  r.tokens_per_gpu_per_second = r.samples_per_second * static_cast<double>(seq_length) / world_size;
  r.tflops_megatron = per_iter > 0 ? flops_megatron / (per_iter * world_size * 1e12) : 0.0;
  r.tflops_model = per_iter > 0 ? flops_model / (per_iter * world_size * 1e12) : 0.0;
  *this = LogAccumulator{};
}

MetricsWriter::MetricsWriter(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw ConfigError("--output-dir " + dir + ": cannot create directory: " + ec.message());
  path_ = (std::filesystem::path(dir) / "metrics.jsonl").string();
  out_.open(path_, std::ios::app);
  if (!out_) throw ConfigError("cannot open " + path_ + " for writing");
  size_ = std::filesystem::file_size(path_, ec);
}

void MetricsWriter::append(std::ofstream& out, const std::string& path, uintmax_t& size, const std::string& line,
                           int64_t iteration) {
  errno = 0;
  out << line;
  out.flush();
  if (out) {
    size += line.size();
    return;
  }
  // Half a record would end the file (a reader takes its last line): cut back to the whole ones.
  const std::string why = errno ? std::strerror(errno) : "write error";
  out_.close();
  validation_.close();
  std::error_code ec;
  std::filesystem::resize_file(path, size, ec);
  error_ = detail::concat(path, ": writing the record of iteration ", iteration, " failed (", why,
                          "); the records before it are kept, none after it were written");
  std::fprintf(stderr, "[warning] %s; training goes on, the run will exit with an error\n", error_.c_str());
  std::fflush(stderr);
}

void MetricsWriter::write_validation(int64_t iteration, double loss) {
  if (!out_.is_open()) return;
  if (!validation_.is_open()) {
    validation_path_ = (std::filesystem::path(path_).parent_path() / "validation.jsonl").string();
    validation_.open(validation_path_, std::ios::app);
    if (!validation_) throw ConfigError("cannot open " + validation_path_ + " for writing");
    std::error_code ec;
    validation_size_ = std::filesystem::file_size(validation_path_, ec);
  }
  auto num = [](double v) { return std::isfinite(v) ? format("%.9g", v) : std::string("null"); };
  append(validation_, validation_path_, validation_size_,
         "{\"iteration\": " + std::to_string(iteration) + ", \"lm_loss\": " + num(loss) +
             ", \"lm_loss_ppl\": " + num(std::exp(std::min(loss, 20.0))) + "}\n",
         iteration);
}

void MetricsWriter::write(const LogRecord& r) {
  if (!out_.is_open()) return;
  append(out_, path_, size_, metrics_json(r) + '\n', r.iteration);
}

}  // namespace llm
