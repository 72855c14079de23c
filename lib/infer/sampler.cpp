#include "infer/sampler.h"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <random>

#include "core/error.h"
#include "core/philox.h"

namespace llm {

void SamplerConfig::validate() const {
  auto fail = [](auto&&... parts) { throw ConfigError(detail::concat(parts...)); };
  if (!(temperature >= 0) || !std::isfinite(temperature))
    fail("--temperature ", temperature, " must be >= 0 (0 = greedy)");
  if (top_k < 0) fail("--top-k ", top_k, " must be >= 0 (0 = off)");
  if (!(top_p > 0 && top_p <= 1)) fail("--top-p ", top_p, " must be in (0, 1] (1 = off)");
  if (!(min_p >= 0 && min_p <= 1)) fail("--min-p ", min_p, " must be in [0, 1] (0 = off)");
  if (!(repeat_penalty > 0) || !std::isfinite(repeat_penalty))
    fail("--repeat-penalty ", repeat_penalty, " must be > 0 (1 = off)");
  if (!std::isfinite(frequency_penalty))
    fail("--frequency-penalty ", frequency_penalty, " must be finite (0 = off)");
  if (!std::isfinite(presence_penalty))
    fail("--presence-penalty ", presence_penalty, " must be finite (0 = off)");
  if (repeat_last_n < -1)
    fail("--repeat-last-n ", repeat_last_n, " must be >= -1 (-1 = whole history, 0 = off)");
}

uint64_t random_seed() {
  std::random_device rd;
  const uint64_t device = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  const auto now = static_cast<uint64_t>(std::chrono::system_clock::now().time_since_epoch().count());
  return device ^ (now * 0x9E3779B97F4A7C15ull);
}

uint64_t parse_seed(std::string_view text) {
  if (text == "-1") return random_seed();
  uint64_t v = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (text.empty() || text.front() == '+' || ec != std::errc() || end != text.data() + text.size())
    throw ConfigError(detail::concat("--seed ", text, " must be an integer in [0, 2^64) or -1 (a random seed)"));
  return v;
}

// ---- Candidates ----------------------------------------------------------------------------

void Candidates::assign(std::span<const float> logits) {
  if (logits.empty()) LLM_FAIL("sampler: empty logits (vocabulary size 0)");
  items.resize(logits.size());
  bool any_finite = false;
  for (size_t i = 0; i < logits.size(); ++i) {
    const float x = logits[i];
    // -inf is a masked token (probability 0); NaN and +inf mean the forward pass went wrong.
    if (std::isnan(x) || x == INFINITY)
      LLM_FAIL("sampler: logit of token ", i, " is ", x, " (vocabulary size ", logits.size(), ")");
    any_finite |= std::isfinite(x);
    items[i] = {static_cast<int32_t>(i), static_cast<double>(x)};
  }
  if (!any_finite) LLM_FAIL("sampler: every logit is -inf (vocabulary size ", logits.size(), ")");
  sorted = false;
}

void Candidates::sort() {
  if (!sorted) std::sort(items.begin(), items.end(), canonical_before);
  sorted = true;
}

double Candidates::max_logit() const {
  if (sorted) return items.front().logit;
  // Four independent running maxima: one would be a serial dependency chain (and GCC keeps it
  // in memory when the caller later calls exp), several times slower over 50k tokens.
  double m[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
  const size_t n = items.size();
  size_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (size_t k = 0; k < 4; ++k) m[k] = std::max(m[k], items[i + k].logit);
  for (; i < n; ++i) m[0] = std::max(m[0], items[i].logit);
  return std::max(std::max(m[0], m[1]), std::max(m[2], m[3]));
}

// ---- Stages --------------------------------------------------------------------------------

void BanStage::apply(Candidates& c) const {
  LLM_CHECK(!c.sorted, "the ban must come first (candidates in id order)");
  for (int32_t t : ids_) {
    if (t < 0 || static_cast<size_t>(t) >= c.items.size())
      LLM_FAIL("sampler: banned token ", t, " is outside the vocabulary (size ", c.items.size(), ")");
    c.items[static_cast<size_t>(t)].logit = -INFINITY;
  }
  for (const Candidate& x : c.items)
    if (std::isfinite(x.logit)) return;
  LLM_FAIL("sampler: every token is banned or masked (vocabulary size ", c.items.size(), ")");
}

void PenaltiesStage::apply(Candidates& c) const {
  if (last_n_ == 0 || history_.empty()) return;
  LLM_CHECK(!c.sorted, "the penalties need the candidates in id order (no stage before them sorts)");
  const size_t n = last_n_ < 0 ? history_.size()
                               : std::min(history_.size(), static_cast<size_t>(last_n_));
  std::vector<int32_t> window(history_.end() - static_cast<std::ptrdiff_t>(n), history_.end());
  std::sort(window.begin(), window.end());
  for (size_t i = 0; i < window.size();) {
    const int32_t t = window[i];
    size_t j = i + 1;
    while (j < window.size() && window[j] == t) ++j;
    const double count = static_cast<double>(j - i);
    i = j;
    if (t < 0 || static_cast<size_t>(t) >= c.items.size())
      LLM_FAIL("sampler: history token ", t, " is outside the vocabulary (size ", c.items.size(), ")");
    Candidate& x = c.items[static_cast<size_t>(t)];
    LLM_CHECK(x.id == t, "the penalties need the full candidate list in id order");
    if (repeat_ != 1.0) x.logit = x.logit <= 0 ? x.logit * repeat_ : x.logit / repeat_;
    x.logit -= count * frequency_ + presence_;  // a masked token (-inf) stays masked
  }
}

void TopKStage::apply(Candidates& c) const {
  auto& v = c.items;
  if (k_ <= 0 || static_cast<size_t>(k_) >= v.size()) return;
  const auto kth = v.begin() + k_;
  if (!c.sorted) {
    std::nth_element(v.begin(), kth, v.end(), canonical_before);
    std::sort(v.begin(), kth, canonical_before);
  }
  v.erase(kth, v.end());
  c.sorted = true;
}

void TopPStage::apply(Candidates& c) const {
  if (p_ >= 1.0) return;
  auto& v = c.items;
  const double mx = c.max_logit();

  if (c.sorted) {  // after top-k: a short sorted list, scan it
    double z = 0;
    for (const Candidate& x : v) z += std::exp(x.logit - mx);
    const double target = p_ * z;
    double cum = 0;
    for (size_t i = 0; i < v.size(); ++i) {
      cum += std::exp(v[i].logit - mx);
      if (cum >= target) {
        v.erase(v.begin() + static_cast<std::ptrdiff_t>(i + 1), v.end());
        return;
      }
    }
    return;  // rounding kept the sum below p: everything stays
  }

  // Weighted quickselect on a copy: partition [lo, hi) around a pivot, keep the side that holds
  // the boundary (the first canonical position where the cumulative mass reaches p), until a
  // block small enough to sort and scan. O(V) expected, whatever the size of the nucleus; the
  // list itself stays in id order and is filtered against the boundary candidate.
  struct Weighted {
    Candidate c;
    double w;
  };
  std::vector<Weighted> work(v.size());
  double z = 0;
  for (size_t i = 0; i < v.size(); ++i) {
    work[i] = {v[i], std::exp(v[i].logit - mx)};
    z += work[i].w;
  }
  const double target = p_ * z;  // cumulative unnormalised mass the nucleus must reach
  const auto before = [](const Weighted& a, const Weighted& b) { return canonical_before(a.c, b.c); };
  size_t lo = 0, hi = work.size();
  double acc = 0;  // mass of canonical positions [0, lo), all in the nucleus
  // Invariants: the boundary is in [lo, hi); work[0, lo) precede work[lo, hi) canonically.
  for (int round = 0; hi - lo > 64 && round < 64; ++round) {
    // Median of three fixed positions as pivot (deterministic), moved to hi - 1.
    size_t i0 = lo, i1 = lo + (hi - lo) / 2, i2 = hi - 1;
    if (before(work[i1], work[i0])) std::swap(i0, i1);
    if (before(work[i2], work[i1])) std::swap(i1, i2);
    if (before(work[i1], work[i0])) std::swap(i0, i1);
    std::swap(work[i1], work[hi - 1]);
    const Weighted pivot = work[hi - 1];
    const auto mid_it = std::partition(work.begin() + lo, work.begin() + hi - 1,
                                       [&](const Weighted& x) { return before(x, pivot); });
    const size_t m = static_cast<size_t>(mid_it - work.begin());
    std::swap(work[m], work[hi - 1]);  // pivot at its canonical position m
    double upper = 0;
    for (size_t i = lo; i < m; ++i) upper += work[i].w;
    if (acc + upper >= target) {
      hi = m;
    } else if (acc + upper + work[m].w >= target) {
      lo = m;  // the pivot is the boundary
      hi = m + 1;
      acc += upper;
    } else {
      acc += upper + work[m].w;
      lo = m + 1;
    }
  }
  std::sort(work.begin() + lo, work.begin() + hi, before);
  size_t last = hi - 1;  // if rounding never reaches p, the block's last candidate
  for (size_t i = lo; i < hi; ++i) {
    acc += work[i].w;
    if (acc >= target) {
      last = i;
      break;
    }
  }
  if (hi == work.size() && last == hi - 1) return;  // everything stays
  const Candidate boundary = work[last].c;
  std::erase_if(v, [&](const Candidate& x) {
    return !(x.id == boundary.id || canonical_before(x, boundary));
  });
}

void MinPStage::apply(Candidates& c) const {
  if (min_p_ <= 0) return;
  const double mx = c.max_logit();
  // p_i / p_max = exp(logit_i - max): no normalisation needed. The max itself always stays.
  std::erase_if(c.items, [&](const Candidate& x) { return !(std::exp(x.logit - mx) >= min_p_); });
}

void TemperatureStage::apply(Candidates& c) const {
  if (t_ == 1.0) return;
  const double inv_t = 1.0 / t_;  // a multiply: the division cost as much as the rest of the chain
  for (Candidate& x : c.items) x.logit *= inv_t;  // order-preserving for t > 0
}

std::vector<std::pair<int32_t, double>> softmax(const Candidates& c) {
  const double mx = c.max_logit();
  std::vector<std::pair<int32_t, double>> out(c.items.size());
  double z = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    const double e = std::exp(c.items[i].logit - mx);
    out[i] = {c.items[i].id, e};
    z += e;
  }
  const double inv_z = 1.0 / z;
  for (auto& [id, p] : out) p *= inv_z;
  return out;
}

// ---- Sampler -------------------------------------------------------------------------------

Sampler::Sampler(const SamplerConfig& config, uint64_t stream) : config_(config), stream_(stream) {
  config_.validate();
  if (!config_.banned.empty()) stages_.push_back(std::make_unique<BanStage>(config_.banned));
  const bool penalised = config_.repeat_penalty != 1.0 || config_.frequency_penalty != 0.0 ||
                         config_.presence_penalty != 0.0;
  if (penalised && config_.repeat_last_n != 0) {
    auto stage = std::make_unique<PenaltiesStage>(config_.repeat_penalty, config_.frequency_penalty,
                                                  config_.presence_penalty, config_.repeat_last_n);
    penalty_ = stage.get();
    stages_.push_back(std::move(stage));
  }
  if (config_.greedy()) return;  // truncations never remove the argmax; temperature 0 is argmax
  if (config_.top_k > 0) stages_.push_back(std::make_unique<TopKStage>(config_.top_k));
  if (config_.top_p < 1.0) stages_.push_back(std::make_unique<TopPStage>(config_.top_p));
  if (config_.min_p > 0.0) stages_.push_back(std::make_unique<MinPStage>(config_.min_p));
  if (config_.temperature != 1.0)
    stages_.push_back(std::make_unique<TemperatureStage>(config_.temperature));
}

std::vector<std::string> Sampler::stage_names() const {
  std::vector<std::string> names;
  for (const auto& s : stages_) names.push_back(s->name());
  return names;
}

void Sampler::run_chain(std::span<const float> logits, std::span<const int32_t> history) {
  candidates_.assign(logits);
  if (penalty_) penalty_->set_history(history);
  for (const auto& s : stages_) s->apply(candidates_);
  if (penalty_) penalty_->set_history({});
}

int32_t Sampler::argmax() const {
  // Strict '>' over the id-ordered list: ties go to the lowest id. A banned or masked token (-inf)
  // never wins: the chain left a finite logit.
  const Candidate* best = &candidates_.items.front();
  for (const Candidate& x : candidates_.items)
    if (x.logit > best->logit) best = &x;
  return best->id;
}

std::vector<std::pair<int32_t, double>> Sampler::distribution(std::span<const float> logits,
                                                              std::span<const int32_t> history) {
  run_chain(logits, history);
  if (config_.greedy()) return {{argmax(), 1.0}};
  return softmax(candidates_);
}

int32_t Sampler::sample(std::span<const float> logits, std::span<const int32_t> history,
                        uint64_t step) {
  run_chain(logits, history);
  if (config_.greedy()) return argmax();
  const auto dist = softmax(candidates_);
  // A 53-bit uniform in [0, 1) from one Philox block: probabilities far below 2^-23 (the
  // resolution of philox_uniform) still get their share.
  static const uint64_t kSampleStream = hash_name("llm-generate/sample");
  const PhiloxBlock b = philox4x32(config_.seed, kSampleStream + stream_, step);
  const uint64_t bits = ((static_cast<uint64_t>(b[0]) << 32) | b[1]) >> 11;
  const double u = static_cast<double>(bits) * 0x1p-53;
  double cum = 0;
  int32_t last_positive = dist.front().first;
  for (const auto& [id, p] : dist) {
    if (p <= 0) continue;  // a masked (-inf) token is never drawn
    cum += p;
    last_positive = id;
    if (u < cum) return id;
  }
  return last_positive;  // the probabilities summed to just under u by rounding
}

}  // namespace llm
