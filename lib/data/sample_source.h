// Where training samples come from. A sample is seq_length + 1 token ids (inputs are the first
// seq_length, targets the last seq_length), addressed by a global sample index so that the same
// seed gives the same global batch order under any data-parallel size.
#pragma once
#include <cstdint>
#include <string>

namespace llm {

class SampleSource {
 public:
  virtual ~SampleSource() = default;
  virtual int64_t vocab_size() const = 0;
  virtual int64_t seq_length() const = 0;
  // Number of distinct samples (the index wraps modulo this; mock data is unbounded).
  virtual uint64_t num_samples() const = 0;
  // Writes seq_length() + 1 ids of sample `index` into out.
  virtual void sample(uint64_t index, int32_t* out) const = 0;
  virtual std::string describe() const = 0;
};

// Global sample index of row `row` of micro-batch `micro` for data-parallel rank `dp_rank`,
// in the global batch that starts at `consumed` samples. Each rank owns a contiguous slice of
// the global batch, so the global batch is the same set and order for any DP size.
inline uint64_t global_sample_index(uint64_t consumed, int64_t dp_rank, int64_t micro_batches,
                                    int64_t micro_batch_size, int64_t micro, int64_t row) {
  return consumed + static_cast<uint64_t>(dp_rank * micro_batches * micro_batch_size +
                                          micro * micro_batch_size + row);
}

}  // namespace llm
