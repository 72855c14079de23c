// Megatron's per-iteration log line, its validation report, and the JSON-lines metrics file.
#pragma once
#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

namespace llm {

struct LogRecord {
  int64_t iteration = 0, train_iters = 0;
  int64_t consumed_samples = 0, consumed_tokens = 0;
  double elapsed_ms_per_iteration = 0;  // mean over the log interval
  double learning_rate = 0;
  int64_t global_batch_size = 0;
  double lm_loss = 0;                   // mean over the log interval's applied iterations
  double loss_scale = 1.0;
  double grad_norm = 0;                 // of the last iteration
  int64_t seq_length = 0;
  int64_t skipped_iterations = 0, nan_iterations = 0;  // within the interval
  double samples_per_second = 0, tokens_per_gpu_per_second = 0;
  double tflops_megatron = 0, tflops_model = 0;  // per GPU (per process on CPU)
  double data_ms_per_iteration = 0;              // sample reading inside the step (JSON only)
  std::string tflops_formula = "megatron";       // which one the line shows
  // Device memory (MiB, the largest rank's; JSON only, absent when < 0: a CPU run).
  double memory_allocated_mib = -1, memory_max_allocated_mib = -1, memory_reserved_mib = -1;
};

// " iteration       10/     100 | consumed samples: ... | TFLOPs: 1.23 |"
std::string megatron_log_line(const LogRecord& r);
// One JSON object (no newline) with every field, both TFLOPS figures included.
std::string metrics_json(const LogRecord& r);
// Megatron's memory report after the first log line:
// "[Rank 0] (after 1 iterations) memory (MB) | allocated: ... | max allocated: ... | reserved: ..."
std::string memory_report_line(int rank, int64_t iteration, double allocated_mib, double max_allocated_mib,
                               double reserved_mib);
// Our line after the first iteration: the model's activation buffers per rank (the largest
// rank's) and the logits' share, with a hint at --logits-chunk-tokens when the whole logits are
// at least a quarter of them: "activation buffers per rank: 31.6 MB, the logits 25.8 MB of them
// (...)". logits_chunk: the flag's value (0: whole).
std::string activation_report(double activation_mib, double logits_mib, int64_t logits_chunk);
// Megatron's three-line validation block ("validation loss at iteration 10 | lm loss value:
// ... | lm loss PPL: ... |" between dashed rules).
std::string validation_report(const std::string& where, double loss);

// Megatron's timer block printed after a log line:
//   (min, max) time across ranks (ms):
//       forward-backward ...............................: (1234.56, 1240.12)
// rows: (name, min ms, max ms), each the per-iteration mean over the log interval.
struct TimerRow {
  std::string name;
  double min_ms = 0, max_ms = 0;
};
std::string timers_block(const std::vector<TimerRow>& rows);

// Accumulates iterations between log lines.
class LogAccumulator {
 public:
  // finite: the loss was finite; applied: the update was applied (an iteration that is not is
  // skipped: non-finite, or an fp16 overflow). The loss is the applied ones' mean (Megatron's
  // "advanced iterations"; with none applied, the finite skipped ones' mean, else NaN); the grad
  // norm the last applied one's; lr as the log line shows it.
  void add(double loss, bool finite, bool applied, double seconds, double grad_norm, double lr,
           double data_seconds = 0);
  bool empty() const { return iterations_ == 0; }
  // Fills the interval fields of r (time, loss, grad norm, lr, counts, rates) and resets.
  void flush_into(LogRecord& r, int64_t global_batch, int64_t seq_length, int world_size,
                  double flops_megatron_per_iter, double flops_model_per_iter);

 private:
  int64_t iterations_ = 0, applied_ = 0, nan_ = 0, skipped_ = 0, skipped_finite_ = 0;
  double skipped_loss_sum_ = 0, loss_sum_ = 0, seconds_ = 0, data_seconds_ = 0, last_grad_norm_ = 0, last_lr_ = 0;
};

class MetricsWriter {
 public:
  MetricsWriter() = default;
  // Creates the directory; appends to <dir>/metrics.jsonl.
  explicit MetricsWriter(const std::string& dir);
  void write(const LogRecord& r);
  // Appends {"iteration": N, "lm_loss": x, "lm_loss_ppl": exp(x)} to <dir>/validation.jsonl (a
  // file of its own, so metrics.jsonl stays one record per logged training iteration).
  void write_validation(int64_t iteration, double loss);
  const std::string& path() const { return path_; }
  // A record that could not be written (a full disk, a quota): the file is cut back to the
  // records before it, a warning names it, no more are written (the training goes on), and this
  // says what failed, for the run's exit status. Empty while every record was written.
  const std::string& error() const { return error_; }

 private:
  // Appends `line` to `out` (the file at `path`, `size` bytes of whole records so far).
  void append(std::ofstream& out, const std::string& path, uintmax_t& size, const std::string& line, int64_t iteration);

  std::string path_, validation_path_, error_;
  std::ofstream out_, validation_;
  uintmax_t size_ = 0, validation_size_ = 0;
};

}  // namespace llm
