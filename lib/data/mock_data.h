// --mock-data: a deterministic, learnable synthetic token stream.
//
// Each sample is a walk of a fixed random permutation pi of the vocabulary: x[k+1] = pi(x[k])
// with probability 1 - noise, else a uniform random token. A model that learns pi drives the
// loss from ln(V) towards the stream's entropy (about noise * ln(V / noise) nats), so a falling
// loss is meaningful. Everything is a pure function of (seed, split, sample index).
#pragma once
#include <vector>

#include "data/sample_source.h"

namespace llm {

class MockDataSource final : public SampleSource {
 public:
  MockDataSource(int64_t vocab_size, int64_t seq_length, uint64_t seed, std::string split = "train",
                 float noise = 0.15f);
  int64_t vocab_size() const override { return vocab_; }
  int64_t seq_length() const override { return seq_; }
  uint64_t num_samples() const override { return ~0ull; }
  void sample(uint64_t index, int32_t* out) const override;
  std::string describe() const override;
  // The entropy rate of the stream in nats per token: the best achievable loss.
  double entropy() const;

 private:
  int64_t vocab_, seq_;
  uint64_t seed_, stream_;
  float noise_;
  std::string split_;
  std::vector<int32_t> next_;  // the permutation
};

}  // namespace llm
