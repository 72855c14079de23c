#include "infer/sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <set>
#include <string>
#include <tuple>

#include "core/error.h"
#include "core/philox.h"

using namespace llm;

namespace {

// Everything off: plain sampling from softmax(logits).
SamplerConfig plain() {
  SamplerConfig c;
  c.temperature = 1.0;
  c.top_k = 0;
  c.top_p = 1.0;
  c.min_p = 0.0;
  c.repeat_penalty = 1.0;
  c.frequency_penalty = 0.0;
  c.presence_penalty = 0.0;
  c.repeat_last_n = 64;
  c.seed = 7;
  return c;
}

std::vector<float> random_logits(size_t v, uint64_t seed, float scale = 2.0f) {
  std::vector<float> l(v);
  for (size_t i = 0; i < v; ++i) l[i] = scale * philox_normal(seed, 99, i);
  return l;
}

using Dist = std::map<int32_t, double>;

Dist to_map(const std::vector<std::pair<int32_t, double>>& d) {
  Dist m;
  for (auto [id, p] : d) {
    EXPECT_FALSE(m.count(id)) << "token " << id << " appears twice";
    m[id] = p;
  }
  return m;
}

// Independent float64 reference of the chain, written the obvious way: full sort, explicit
// softmax at each stage that needs probabilities. `margin` receives the smallest distance of
// any top-p / min-p decision from its threshold, so tests can tell a real disagreement from a
// decision that rounding could flip.
Dist reference(const std::vector<float>& logits, const std::vector<int32_t>& history,
               const SamplerConfig& c, double* margin = nullptr) {
  double m = INFINITY;
  std::vector<double> l(logits.begin(), logits.end());
  if (c.repeat_last_n != 0) {
    size_t n = c.repeat_last_n < 0 ? history.size()
                                   : std::min(history.size(), size_t(c.repeat_last_n));
    std::map<int32_t, int> count;
    for (size_t i = history.size() - n; i < history.size(); ++i) count[history[i]]++;
    for (auto [t, k] : count) {
      l[t] = l[t] > 0 ? l[t] / c.repeat_penalty : l[t] * c.repeat_penalty;
      l[t] -= k * c.frequency_penalty + c.presence_penalty;
    }
  }
  std::vector<int32_t> ids(l.size());
  std::iota(ids.begin(), ids.end(), 0);
  std::sort(ids.begin(), ids.end(),
            [&](int32_t a, int32_t b) { return l[a] > l[b] || (l[a] == l[b] && a < b); });
  if (c.temperature == 0) {
    if (margin) *margin = m;
    return {{ids[0], 1.0}};
  }
  auto probs = [&](const std::vector<int32_t>& keep) {
    double mx = -INFINITY, z = 0;
    for (int32_t t : keep) mx = std::max(mx, l[t]);
    std::vector<double> p;
    for (int32_t t : keep) p.push_back(std::exp(l[t] - mx));
    for (double x : p) z += x;
    for (double& x : p) x /= z;
    return p;
  };
  if (c.top_k > 0 && size_t(c.top_k) < ids.size()) ids.resize(c.top_k);
  if (c.top_p < 1) {
    auto p = probs(ids);
    double cum = 0;
    size_t keep = ids.size();
    for (size_t i = 0; i < ids.size(); ++i) {
      const double before = cum;
      cum += p[i];
      m = std::min(m, std::abs(cum - c.top_p));
      if (cum >= c.top_p) {
        keep = i + 1;
        m = std::min(m, std::abs(before - c.top_p));
        break;
      }
    }
    ids.resize(keep);
  }
  if (c.min_p > 0) {
    auto p = probs(ids);
    const double pmax = *std::max_element(p.begin(), p.end());
    std::vector<int32_t> kept;
    for (size_t i = 0; i < ids.size(); ++i) {
      if (p[i] < pmax) m = std::min(m, std::abs(p[i] - c.min_p * pmax) / pmax);  // max always stays
      if (p[i] >= c.min_p * pmax) kept.push_back(ids[i]);
    }
    ids = kept;
  }
  for (double& x : l) x /= c.temperature;
  auto p = probs(ids);
  Dist d;
  for (size_t i = 0; i < ids.size(); ++i) d[ids[i]] = p[i];
  if (margin) *margin = m;
  return d;
}

void expect_same(const Dist& got, const Dist& want, double tol = 1e-12) {
  ASSERT_EQ(got.size(), want.size());
  for (auto [id, p] : want) {
    ASSERT_TRUE(got.count(id)) << "missing token " << id;
    EXPECT_NEAR(got.at(id), p, tol * std::max(1.0, p)) << "token " << id;
  }
}

std::vector<int32_t> keys(const Dist& d) {
  std::vector<int32_t> k;
  for (auto& [id, p] : d) k.push_back(id);
  return k;
}

}  // namespace

// ---- greedy --------------------------------------------------------------------------------

TEST(Sampler, GreedyIsArgmax) {
  SamplerConfig c = plain();
  c.temperature = 0;
  c.top_k = 5;  // ignored by greedy: truncation never removes the argmax
  Sampler s(c);
  for (uint64_t seed = 0; seed < 20; ++seed) {
    auto l = random_logits(1000, seed);
    const int32_t want = int32_t(std::max_element(l.begin(), l.end()) - l.begin());
    EXPECT_EQ(s.sample(l, {}, seed), want);
    auto d = s.distribution(l, {});
    ASSERT_EQ(d.size(), 1u);
    EXPECT_EQ(d[0].first, want);
    EXPECT_EQ(d[0].second, 1.0);
  }
}

TEST(Sampler, GreedyTiesGoToLowestId) {
  SamplerConfig c = plain();
  c.temperature = 0;
  Sampler s(c);
  std::vector<float> l = {1, 3, 0, 3, 2, 3};
  EXPECT_EQ(s.sample(l, {}, 0), 1);
  std::vector<float> m = {-INFINITY, 0.5f, 0.5f};
  EXPECT_EQ(s.sample(m, {}, 0), 1);
}

TEST(Sampler, GreedyAppliesRepeatPenalty) {
  SamplerConfig c = plain();
  c.temperature = 0;
  c.repeat_penalty = 1.1;
  Sampler s(c);
  std::vector<float> l = {5.0f, 4.9f};
  EXPECT_EQ(s.sample(l, std::vector<int32_t>{0}, 0), 1);  // 5 / 1.1 < 4.9
  EXPECT_EQ(s.sample(l, std::vector<int32_t>{1}, 0), 0);
  EXPECT_EQ(s.stage_names(), std::vector<std::string>{"penalties"});
}

// ---- single stages -------------------------------------------------------------------------

TEST(Sampler, TopKKeepsExactlyTheKLargest) {
  for (int64_t k : {1, 2, 10, 100}) {
    SamplerConfig c = plain();
    c.top_k = k;
    Sampler s(c);
    auto l = random_logits(5000, 100 + k);
    std::vector<int32_t> ids(l.size());
    std::iota(ids.begin(), ids.end(), 0);
    std::sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) { return l[a] > l[b]; });
    ids.resize(k);
    std::sort(ids.begin(), ids.end());
    Dist got = to_map(s.distribution(l, {}));
    EXPECT_EQ(keys(got), ids) << "k=" << k;
    expect_same(got, reference(l, {}, c));
  }
}

TEST(Sampler, TopKTiesAtTheBoundaryGoToLowerIds) {
  SamplerConfig c = plain();
  c.top_k = 2;
  Sampler s(c);
  std::vector<float> l = {1, 2, 0, 2, 2};
  EXPECT_EQ(keys(to_map(s.distribution(l, {}))), (std::vector<int32_t>{1, 3}));
  c.top_k = 10;  // more than the vocabulary: everything stays
  Sampler all(c);
  EXPECT_EQ(all.distribution(l, {}).size(), l.size());
}

TEST(Sampler, TopPKeepsSmallestPrefixReachingP) {
  // probabilities 0.5, 0.3, 0.2 (ids shuffled)
  std::vector<float> l = {float(std::log(0.3)), float(std::log(0.2)), float(std::log(0.5))};
  auto run = [&](double p) {
    SamplerConfig c = plain();
    c.top_p = p;
    Sampler s(c);
    return to_map(s.distribution(l, {}));
  };
  Dist one = run(0.4);
  EXPECT_EQ(keys(one), std::vector<int32_t>{2});
  EXPECT_NEAR(one[2], 1.0, 1e-15);
  Dist two = run(0.75);
  EXPECT_EQ(keys(two), (std::vector<int32_t>{0, 2}));
  EXPECT_NEAR(two[2], 0.625, 1e-7);  // logits were rounded to float
  EXPECT_NEAR(two[0], 0.375, 1e-7);
  EXPECT_EQ(run(0.85).size(), 3u);

  // Random vocabularies, large and small nuclei (the block-wise sort grows past 64, 128, ...).
  int checked = 0;
  for (uint64_t seed = 0; seed < 6; ++seed) {
    for (double p : {0.05, 0.3, 0.7, 0.9, 0.99, 0.9999}) {
      SamplerConfig c = plain();
      c.top_p = p;
      Sampler s(c);
      auto l2 = random_logits(seed % 2 ? 3000 : 50257, 200 + seed, seed < 3 ? 1.0f : 4.0f);
      double margin;
      Dist want = reference(l2, {}, c, &margin);
      if (margin < 1e-9) continue;  // a decision rounding could flip: not a fair comparison
      expect_same(to_map(s.distribution(l2, {})), want);
      ++checked;
    }
  }
  EXPECT_GE(checked, 34);
}

// Small vocabularies of integer logits: many exact ties, so the selection's partitions must
// break them by id exactly as the canonical order does, and every branch of the weighted
// quickselect (boundary left, right, at the pivot) is taken somewhere.
TEST(Sampler, TopPWithManyTiesMatchesReference) {
  int checked = 0;
  for (uint64_t trial = 0; trial < 300; ++trial) {
    const size_t vocab = 65 + philox_below(31, trial, 0, 400);
    std::vector<float> l(vocab);
    for (size_t i = 0; i < vocab; ++i) l[i] = float(int(philox_below(32, trial, i, 7)) - 3);
    if (trial % 5 == 0) l[philox_below(33, trial, 0, vocab)] = -INFINITY;
    SamplerConfig c = plain();
    c.top_p = 0.02 + 0.97 * philox_uniform(34, trial, 0);
    if (trial % 3 == 0) c.top_k = int64_t(1 + philox_below(35, trial, 0, vocab));
    double margin;
    Dist want = reference(l, {}, c, &margin);
    if (margin < 1e-9) continue;
    Sampler s(c);
    expect_same(to_map(s.distribution(l, {})), want);
    ++checked;
  }
  EXPECT_GE(checked, 250);
}

// The nucleus is the smallest prefix whose mass reaches p, the prefix that reaches it exactly
// included (llama.cpp's `cum >= p`). Equal logits make the masses exact integers, so the
// boundary case is exact: 4 of 8 equal tokens at p = 0.5, on both paths: the scan after top-k,
// and the weighted quickselect over more than 64 candidates (128 equal tokens, p = 0.5: the
// first pivot sits exactly at the boundary). Ties keep the lowest ids.
TEST(Sampler, TopPKeepsThePrefixThatReachesPExactly) {
  for (auto [vocab, top_k, want] : std::vector<std::tuple<size_t, int64_t, size_t>>{
           {8, 0, 4}, {9, 8, 4}, {128, 0, 64}, {200, 128, 64}, {130, 0, 65}}) {
    SCOPED_TRACE("vocab " + std::to_string(vocab) + ", top-k " + std::to_string(top_k));
    std::vector<float> l(vocab, 1.5f);
    if (top_k > 0) std::fill(l.begin() + top_k, l.end(), -2.0f);  // outside the top-k
    SamplerConfig c = plain();
    c.top_k = top_k;
    c.top_p = 0.5;
    Sampler s(c);
    const Dist d = to_map(s.distribution(l, {}));
    ASSERT_EQ(d.size(), want);
    EXPECT_EQ(d.begin()->first, 0);
    EXPECT_EQ(d.rbegin()->first, static_cast<int32_t>(want - 1));
    for (auto [id, p] : d) EXPECT_NEAR(p, 1.0 / static_cast<double>(want), 1e-15) << "token " << id;
  }
}

TEST(Sampler, MinPKeepsTokensAboveFractionOfMax) {
  std::vector<float> l = {float(std::log(0.15)), float(std::log(0.5)), float(std::log(0.05)),
                          float(std::log(0.3))};
  SamplerConfig c = plain();
  c.min_p = 0.2;  // threshold 0.1
  Sampler s(c);
  Dist d = to_map(s.distribution(l, {}));
  EXPECT_EQ(keys(d), (std::vector<int32_t>{0, 1, 3}));
  EXPECT_NEAR(d[1], 0.5 / 0.95, 1e-7);

  for (double mp : {0.01, 0.05, 0.3, 1.0}) {
    c.min_p = mp;
    Sampler r(c);
    auto l2 = random_logits(2000, 300);
    double margin;
    Dist want = reference(l2, {}, c, &margin);
    ASSERT_GT(margin, 1e-9);
    expect_same(to_map(r.distribution(l2, {})), want);
  }
}

TEST(Sampler, TemperatureMatchesSoftmaxOfScaledLogits) {
  auto l = random_logits(50, 400);
  for (double t : {0.3, 0.7, 1.0, 1.5, 10.0}) {
    SamplerConfig c = plain();
    c.temperature = t;
    Sampler s(c);
    double mx = -INFINITY, z = 0;
    for (float x : l) mx = std::max(mx, x / t);
    for (float x : l) z += std::exp(x / t - mx);
    Dist d = to_map(s.distribution(l, {}));
    ASSERT_EQ(d.size(), l.size());
    for (size_t i = 0; i < l.size(); ++i)
      EXPECT_NEAR(d[int32_t(i)], std::exp(l[i] / t - mx) / z, 1e-14) << "T=" << t;
  }
}

TEST(Sampler, RepeatPenaltyDividesPositiveMultipliesNegativeInWindowOnly) {
  std::vector<float> l = {2.0f, -1.0f, 0.5f, 3.0f, -2.0f};
  auto run = [&](int64_t last_n, std::vector<int32_t> history) {
    SamplerConfig c = plain();
    c.repeat_penalty = 1.5;
    c.repeat_last_n = last_n;
    Sampler s(c);
    return to_map(s.distribution(l, history));
  };
  auto softmax_of = [](std::vector<double> x) {
    double z = 0;
    for (double v : x) z += std::exp(v);
    Dist d;
    for (size_t i = 0; i < x.size(); ++i) d[int32_t(i)] = std::exp(x[i]) / z;
    return d;
  };
  // Window = last 3 of {3, 0, 1, 0} = {0, 1, 0}: token 0 (twice, penalised once) and 1; token 3
  // is outside the window.
  expect_same(run(3, {3, 0, 1, 0}), softmax_of({2.0 / 1.5, -1.0 * 1.5, 0.5, 3.0, -2.0}));
  // Whole history.
  expect_same(run(-1, {3, 0, 1, 0}), softmax_of({2.0 / 1.5, -1.0 * 1.5, 0.5, 3.0 / 1.5, -2.0}));
  // Window longer than the history.
  expect_same(run(100, {4}), softmax_of({2.0, -1.0, 0.5, 3.0, -2.0 * 1.5}));
  // Off.
  expect_same(run(0, {0, 1, 2, 3, 4}), softmax_of({2.0, -1.0, 0.5, 3.0, -2.0}));
  // A history token outside the vocabulary is a caller bug.
  EXPECT_THROW(run(3, {7}), Error);
}

// llama.cpp's penalties sampler: per distinct token of the window, seen `count` times, the
// repetition penalty first, then logit -= count * frequency + presence (presence once, whatever
// the count). Order matters: 2 / 2 - 1 = 0, where (2 - 1) / 2 would be 0.5.
TEST(Sampler, FrequencyAndPresencePenaltiesFollowTheRepetitionPenalty) {
  std::vector<float> l = {2.0f, -1.0f, 0.5f, 3.0f, -INFINITY};
  auto run = [&](double repeat, double freq, double presence, int64_t last_n, std::vector<int32_t> history) {
    SamplerConfig c = plain();
    c.repeat_penalty = repeat;
    c.frequency_penalty = freq;
    c.presence_penalty = presence;
    c.repeat_last_n = last_n;
    Sampler s(c);
    return to_map(s.distribution(l, history));
  };
  auto softmax_of = [](std::vector<double> x) {
    double mx = -INFINITY, z = 0;
    for (double v : x) mx = std::max(mx, v);
    for (double v : x) z += std::exp(v - mx);
    Dist d;
    for (size_t i = 0; i < x.size(); ++i) d[int32_t(i)] = std::exp(x[i] - mx) / z;
    return d;
  };
  const double ninf = -INFINITY;
  // Window {0, 1, 0, 3} (the last 4 of 5): token 0 twice, 1 and 3 once; token 2 only before it.
  const std::vector<int32_t> h = {2, 0, 1, 0, 3};
  expect_same(run(1.0, 0.25, 0.0, 4, h), softmax_of({2.0 - 0.5, -1.0 - 0.25, 0.5, 3.0 - 0.25, ninf}));
  expect_same(run(1.0, 0.0, 0.75, 4, h), softmax_of({2.0 - 0.75, -1.0 - 0.75, 0.5, 3.0 - 0.75, ninf}));
  expect_same(run(2.0, 1.0, 0.0, 4, h), softmax_of({2.0 / 2 - 2.0, -1.0 * 2 - 1.0, 0.5, 3.0 / 2 - 1.0, ninf}));
  expect_same(run(2.0, 0.5, 0.5, -1, h),
              softmax_of({2.0 / 2 - 1.5, -1.0 * 2 - 1.0, 0.5 / 2 - 1.0, 3.0 / 2 - 1.0, ninf}));
  // Negative values reward repetition (OpenAI's range is [-2, 2]); a masked token stays masked.
  expect_same(run(1.0, -0.5, -1.0, 4, {4, 0, 4}), softmax_of({2.0 + 1.5, -1.0, 0.5, 3.0, ninf}));
  // Greedy sees them too: token 3 leads token 0 by 1; one sighting of 3 costs it 0.6, two 1.2.
  SamplerConfig g = plain();
  g.temperature = 0;
  g.frequency_penalty = 0.6;
  EXPECT_EQ(Sampler(g).sample(l, std::vector<int32_t>{3}, 0), 3);
  EXPECT_EQ(Sampler(g).sample(l, std::vector<int32_t>{3, 3}, 0), 0);
}

// ---- the chain -----------------------------------------------------------------------------

TEST(Sampler, StageOrder) {
  SamplerConfig c = plain();
  c.repeat_penalty = 1.2;
  c.top_k = 40;
  c.top_p = 0.9;
  c.min_p = 0.05;
  c.temperature = 0.8;
  EXPECT_EQ(Sampler(c).stage_names(), (std::vector<std::string>{"penalties", "top-k",
                                                                "top-p", "min-p", "temperature"}));
  EXPECT_TRUE(Sampler(plain()).stage_names().empty());
  // The frequency or presence penalty alone is the same stage; a window of 0 turns all off.
  c = plain();
  c.frequency_penalty = 0.5;
  EXPECT_EQ(Sampler(c).stage_names(), std::vector<std::string>{"penalties"});
  c.frequency_penalty = 0;
  c.presence_penalty = -0.5;
  EXPECT_EQ(Sampler(c).stage_names(), std::vector<std::string>{"penalties"});
  c.repeat_last_n = 0;
  EXPECT_TRUE(Sampler(c).stage_names().empty());
}

TEST(Sampler, CombinedChainsMatchFloat64Reference) {
  struct Case {
    double temperature;
    int64_t top_k;
    double top_p, min_p, penalty;
    int64_t last_n;
    double frequency = 0, presence = 0;
  };
  const std::vector<Case> cases = {
      {0.8, 40, 0.95, 0.05, 1.0, 64},   // llama.cpp defaults
      {1.3, 0, 0.9, 0.0, 1.3, 16},      {0.5, 200, 1.0, 0.1, 1.1, -1},
      {2.0, 1000, 0.8, 0.02, 0.9, 32},  {1.0, 5, 0.5, 0.5, 1.5, 8},
      {0.7, 0, 1.0, 0.0, 1.2, 64},      {0.0, 10, 0.9, 0.1, 1.3, 64},
      {0.8, 40, 0.95, 0.05, 1.1, 64, 0.3, 0.5},  {1.0, 0, 0.9, 0.0, 1.0, -1, 0.1, -0.4},
  };
  int checked = 0;
  for (size_t ci = 0; ci < cases.size(); ++ci) {
    for (uint64_t seed = 0; seed < 4; ++seed) {
      const Case& k = cases[ci];
      SamplerConfig c = plain();
      c.temperature = k.temperature;
      c.top_k = k.top_k;
      c.top_p = k.top_p;
      c.min_p = k.min_p;
      c.repeat_penalty = k.penalty;
      c.repeat_last_n = k.last_n;
      c.frequency_penalty = k.frequency;
      c.presence_penalty = k.presence;
      Sampler s(c);
      const size_t vocab = seed % 2 ? 50257 : 1000;
      auto l = random_logits(vocab, 500 + seed, 3.0f);
      // History heavy on the likely tokens so the penalty changes the nucleus.
      std::vector<int32_t> history;
      for (uint64_t i = 0; i < 100; ++i) {
        int32_t t = int32_t(philox_below(seed, 7, i, vocab));
        if (i % 3 == 0) t = int32_t(std::max_element(l.begin(), l.end()) - l.begin());
        history.push_back(t);
      }
      double margin;
      Dist want = reference(l, history, c, &margin);
      if (margin < 1e-9) continue;
      auto got = s.distribution(l, history);
      expect_same(to_map(got), want);
      // The draw's order is canonical: ascending id or (probability desc, id asc).
      bool by_id = true, by_prob = true;
      for (size_t i = 1; i < got.size(); ++i) {
        by_id &= got[i - 1].first < got[i].first;
        by_prob &= got[i - 1].second > got[i].second ||
                   (got[i - 1].second == got[i].second && got[i - 1].first < got[i].first);
      }
      EXPECT_TRUE(by_id || by_prob) << "case " << ci;
      // sample() draws from that distribution.
      const int32_t t = s.sample(l, history, seed);
      EXPECT_TRUE(want.count(t)) << "case " << ci << " drew " << t;
      ++checked;
    }
  }
  EXPECT_GE(checked, 36);
}

// ---- the draw ------------------------------------------------------------------------------

namespace {

double chi_square(const std::vector<int>& counts, const std::vector<double>& p, int n) {
  double x = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    const double e = n * p[i];
    x += (counts[i] - e) * (counts[i] - e) / e;
  }
  return x;
}

}  // namespace

TEST(Sampler, DrawFrequenciesMatchDistribution) {
  std::vector<double> p = {0.3, 0.2, 0.15, 0.1, 0.08, 0.07, 0.05, 0.03, 0.015, 0.005};
  std::vector<float> l;
  for (double x : p) l.push_back(float(std::log(x)));
  SamplerConfig c = plain();
  c.seed = 2024;
  Sampler s(c);
  Dist d = to_map(s.distribution(l, {}));
  std::vector<double> q;  // exact probabilities of the float logits
  for (auto& [id, prob] : d) q.push_back(prob);
  const int n = 20000;
  std::vector<int> counts(p.size());
  for (int step = 0; step < n; ++step) counts[s.sample(l, {}, step)]++;
  // 9 degrees of freedom: P(chi2 > 40) ~ 5e-6. The seed is fixed, so this cannot fail by chance
  // once it passes; a wrong distribution gives hundreds (checked below).
  EXPECT_LT(chi_square(counts, q, n), 40.0);
  std::vector<double> wrong = q;
  std::swap(wrong[2], wrong[3]);  // 0.15 <-> 0.1
  EXPECT_GT(chi_square(counts, wrong, n), 200.0);
  std::vector<double> off = q;  // 0.005 -> 0.01, paid by the largest
  off[9] += 0.005;
  off[0] -= 0.005;
  EXPECT_GT(chi_square(counts, off, n), 40.0);
}

TEST(Sampler, DrawFrequenciesAfterTruncation) {
  std::vector<float> l = random_logits(10, 600, 1.0f);
  SamplerConfig c = plain();
  c.top_k = 4;
  c.temperature = 0.7;
  Sampler s(c);
  auto dist = s.distribution(l, {});
  ASSERT_EQ(dist.size(), 4u);
  std::map<int32_t, int> counts;
  const int n = 20000;
  for (int step = 0; step < n; ++step) counts[s.sample(l, {}, step)]++;
  EXPECT_EQ(counts.size(), 4u);  // nothing outside the top 4
  std::vector<int> cv;
  std::vector<double> pv;
  for (auto [id, prob] : dist) {
    cv.push_back(counts[id]);
    pv.push_back(prob);
  }
  EXPECT_LT(chi_square(cv, pv, n), 25.0);  // 3 dof: P(> 25) ~ 1.6e-5
}

TEST(Sampler, MaskedTokensAreNeverDrawn) {
  std::vector<float> l = {-INFINITY, 0.0f, -INFINITY, 0.0f, -INFINITY};
  Sampler s(plain());
  for (int step = 0; step < 2000; ++step) {
    const int32_t t = s.sample(l, {}, step);
    EXPECT_TRUE(t == 1 || t == 3) << t;
  }
}

// --ignore-eod's ban (llama.cpp's --ignore-eos: a logit bias of -inf): the banned token is never
// drawn, not even when it is the argmax by far, greedy or sampled; the others keep their relative
// probabilities.
TEST(Sampler, BannedTokensAreNeverDrawnGreedyToo) {
  std::vector<float> l = {0.0f, 1.0f, 30.0f, 0.5f};  // token 2: probability ~1 unbanned
  for (double t : {0.0, 1.0}) {
    SamplerConfig c = plain();
    c.temperature = t;
    c.repeat_penalty = 3.0;
    c.banned = {2};
    Sampler s(c);
    EXPECT_EQ(s.stage_names().front(), "ban");
    for (int step = 0; step < 500; ++step) EXPECT_NE(s.sample(l, std::vector<int32_t>{1}, step), 2) << "T=" << t;
    if (t == 0) {
      EXPECT_EQ(s.sample(l, std::vector<int32_t>{3}, 0), 1);
      EXPECT_EQ(s.sample(l, std::vector<int32_t>{1}, 0), 3);  // 1 / 3 < 0.5: then the penalty decides
    } else {
      Dist d = to_map(s.distribution(l, {}));
      EXPECT_EQ(d[2], 0.0);
      const double z = std::exp(0.0) + std::exp(1.0) + std::exp(0.5);
      EXPECT_NEAR(d[1], std::exp(1.0) / z, 1e-12);
    }
  }
  // Banning every finite token, or a token outside the vocabulary, is an error.
  SamplerConfig c = plain();
  c.banned = {0, 1, 3};
  EXPECT_THROW(Sampler(c).sample(std::vector<float>{0.0f, 1.0f, -INFINITY, 2.0f}, {}, 0), Error);
  c.banned = {4};
  EXPECT_THROW(Sampler(c).sample(l, {}, 0), Error);
}

TEST(Sampler, SameSeedSameSequenceDifferentSeedDifferent) {
  auto l = random_logits(1000, 700, 1.0f);
  auto draw = [&](uint64_t seed, uint64_t stream) {
    SamplerConfig c = plain();
    c.seed = seed;
    c.top_k = 100;
    Sampler s(c, stream);
    std::vector<int32_t> out;
    for (uint64_t step = 0; step < 200; ++step) out.push_back(s.sample(l, {}, step));
    return out;
  };
  const auto a = draw(1, 0);
  EXPECT_EQ(a, draw(1, 0));
  EXPECT_NE(a, draw(2, 0));
  EXPECT_NE(a, draw(1, 1));
  // A draw is a pure function of (seed, step): no state carried between calls.
  SamplerConfig c = plain();
  c.seed = 1;
  c.top_k = 100;
  Sampler fresh(c);
  EXPECT_EQ(fresh.sample(l, {}, 150), a[150]);
  EXPECT_EQ(fresh.sample(l, {}, 3), a[3]);
}

// --seed: -1 is a random seed (llama.cpp's default and its -1), any other value the seed itself;
// what is not a seed is refused naming the flag (before, -1 was silently 2^64 - 1).
TEST(Sampler, ParseSeedMinusOneIsRandom) {
  EXPECT_EQ(parse_seed("0"), 0u);
  EXPECT_EQ(parse_seed("1234"), 1234u);
  EXPECT_EQ(parse_seed("18446744073709551615"), UINT64_MAX);
  std::set<uint64_t> drawn;
  for (int i = 0; i < 8; ++i) drawn.insert(parse_seed("-1"));
  EXPECT_EQ(drawn.size(), 8u) << "-1 must draw a fresh seed each time";
  EXPECT_FALSE(drawn.count(UINT64_MAX));
  for (const char* bad : {"-2", "", "1.5", "seven", "12x", "+3", "18446744073709551616"}) {
    try {
      parse_seed(bad);
      ADD_FAILURE() << "accepted --seed '" << bad << "'";
    } catch (const ConfigError& e) {
      EXPECT_EQ(std::string(e.what()).rfind("--seed " + std::string(bad) + " must be", 0), 0u) << e.what();
    }
  }
}

// ---- errors --------------------------------------------------------------------------------

TEST(Sampler, ValidateNamesTheFlag) {
  auto message = [](auto edit) {
    SamplerConfig c;
    edit(c);
    try {
      c.validate();
    } catch (const ConfigError& e) {
      EXPECT_THROW(Sampler{c}, ConfigError);
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(message([](SamplerConfig& c) { c.top_p = 1.5; }), "--top-p 1.5 must be in (0, 1] (1 = off)");
  EXPECT_NE(message([](SamplerConfig& c) { c.top_p = 0; }).find("--top-p 0 "), std::string::npos);
  EXPECT_NE(message([](SamplerConfig& c) { c.temperature = -1; }).find("--temperature -1"), std::string::npos);
  EXPECT_NE(message([](SamplerConfig& c) { c.temperature = NAN; }).find("--temperature"), std::string::npos);
  EXPECT_NE(message([](SamplerConfig& c) { c.top_k = -3; }).find("--top-k -3"), std::string::npos);
  EXPECT_NE(message([](SamplerConfig& c) { c.min_p = 1.2; }).find("--min-p 1.2"), std::string::npos);
  EXPECT_NE(message([](SamplerConfig& c) { c.repeat_penalty = 0; }).find("--repeat-penalty 0"), std::string::npos);
  EXPECT_NE(message([](SamplerConfig& c) { c.repeat_last_n = -2; }).find("--repeat-last-n -2"), std::string::npos);
  EXPECT_NE(message([](SamplerConfig& c) { c.frequency_penalty = NAN; }).find("--frequency-penalty nan must be finite"),
            std::string::npos);
  EXPECT_NE(message([](SamplerConfig& c) { c.presence_penalty = INFINITY; }).find("--presence-penalty inf must be"),
            std::string::npos);
  EXPECT_EQ(message([](SamplerConfig& c) { c.frequency_penalty = -1.5; c.presence_penalty = 2; }), "no error");
  EXPECT_EQ(message([](SamplerConfig&) {}), "no error");
  EXPECT_EQ(message([](SamplerConfig& c) { c.top_p = 1; c.min_p = 1; c.temperature = 0; }), "no error");
}

TEST(Sampler, BadLogitsThrow) {
  Sampler s(plain());
  EXPECT_THROW(s.sample(std::vector<float>{}, {}, 0), Error);
  EXPECT_THROW(s.sample(std::vector<float>{0.0f, NAN}, {}, 0), Error);
  EXPECT_THROW(s.sample(std::vector<float>{0.0f, INFINITY}, {}, 0), Error);
  EXPECT_THROW(s.sample(std::vector<float>{-INFINITY, -INFINITY}, {}, 0), Error);
}
