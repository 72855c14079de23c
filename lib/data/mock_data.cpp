#include "data/mock_data.h"

#include <cmath>
#include <numeric>

#include "core/error.h"
#include "core/philox.h"

namespace llm {

MockDataSource::MockDataSource(int64_t vocab_size, int64_t seq_length, uint64_t seed,
                               std::string split, float noise)
    : vocab_(vocab_size), seq_(seq_length), seed_(seed), noise_(noise), split_(std::move(split)) {
  if (vocab_ < 2) throw ConfigError(detail::concat("--mock-data needs --vocab-size >= 2, got ", vocab_));
  if (seq_ < 1) throw ConfigError(detail::concat("--seq-length must be >= 1, got ", seq_));
  // The permutation is shared by every split (it is "the language"); the samples are not.
  next_.resize(static_cast<size_t>(vocab_));
  std::iota(next_.begin(), next_.end(), 0);
  const uint64_t perm_stream = hash_name("mock-data/permutation");
  for (int64_t i = vocab_ - 1; i > 0; --i) {
    int64_t j = static_cast<int64_t>(philox_below(seed_, perm_stream, i, static_cast<uint64_t>(i + 1)));
    std::swap(next_[i], next_[j]);
  }
  stream_ = hash_name("mock-data/" + split_);
}

void MockDataSource::sample(uint64_t index, int32_t* out) const {
  const uint64_t base = index * static_cast<uint64_t>(seq_ + 1);
  out[0] = static_cast<int32_t>(philox_below(seed_, stream_, base, vocab_));
  for (int64_t k = 1; k <= seq_; ++k) {
    PhiloxBlock r = philox4x32(seed_, stream_, base + k);
    const float u = (static_cast<float>(r[0] >> 8) + 0.5f) / 16777216.0f;
    out[k] = u < noise_ ? static_cast<int32_t>(r[1] % static_cast<uint32_t>(vocab_)) : next_[out[k - 1]];
  }
}

std::string MockDataSource::describe() const {
  return detail::concat("mock data (", split_, "): permutation walk over ", vocab_, " tokens, noise ",
                        noise_, ", entropy ", entropy(), " nats/token");
}

double MockDataSource::entropy() const {
  const double V = static_cast<double>(vocab_), p_rand = noise_ / V, p_next = 1.0 - noise_ + p_rand;
  return -(p_next * std::log(p_next) + (V - 1) * p_rand * std::log(p_rand));
}

}  // namespace llm
