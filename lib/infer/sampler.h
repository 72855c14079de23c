// Next-token sampling for llm-generate: a chain of small stages over a candidate list, in
// llama.cpp's default order (common_params_sampling::samplers) without the stages not built here
// (DRY, top-n-sigma, typical-p, XTC; nor mirostat): those are off in llama.cpp's defaults too
//
//   ban -> penalties -> top-k -> top-p -> min-p -> temperature -> softmax -> draw
//
// The ban (llama.cpp's logit bias of -inf, which its --ignore-eos adds for the end-of-generation
// tokens) sets the logits of tokens that must never be drawn to -inf before anything else, so no
// stage, greedy included, can pick them.
// The penalties are llama.cpp's penalties sampler: over the last n tokens of the history, the
// repetition penalty then the frequency and presence penalties.
//
// Why this order: the penalties change logits, so they come before anything that selects by
// logit. The three truncations then act on the model's own (penalised) distribution, so the set
// of tokens that may be drawn does not depend on the temperature: raising the temperature
// flattens what survived but can never let the long tail back in (the reason min-p and a high
// temperature combine well). top-k first because it is the cheapest cut (nth_element, O(V)) and
// leaves top-p a short sorted list; min-p after top-p because it needs no sort and keeps order.
// Temperature 0 is greedy: the ban and the penalties still apply, then the argmax is taken, ties
// to the lowest id (no truncation can remove the argmax, so they are skipped).
//
// The draw is a pure function of (seed, step): the uniform comes from Philox at
// (seed, stream, step) and the candidates are accumulated in a canonical order (token id, or
// logit descending with ties by id), so the same seed gives the same text on any machine. It is
// not llama.cpp's draw (std::mt19937 seeded with a 32-bit seed): the same seed gives other tokens.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace llm {

// The command-line options, named as in llama.cpp. The sampling defaults are llama.cpp's
// (common_params_sampling: temperature, top-k, top-p, min-p and the three penalties with their
// window); the seed's is not (below), and llm-generate's --max-new-tokens (GenerateOptions) is 256
// where llama.cpp's -n is unlimited.
struct SamplerConfig {
  double temperature = 0.8;      // --temperature: logits / T; 0 = greedy (argmax)
  int64_t top_k = 40;            // --top-k: keep the k most likely; 0 = off
  double top_p = 0.95;           // --top-p: keep the smallest set with probability >= p; 1 = off
  double min_p = 0.05;           // --min-p: keep p >= min_p * p_max; 0 = off
  double repeat_penalty = 1.0;   // --repeat-penalty: divide positive / multiply negative logits
                                 // of tokens seen in the window; 1 = off
  double frequency_penalty = 0;  // --frequency-penalty: logit -= count in the window * this; 0 = off
  double presence_penalty = 0;   // --presence-penalty: logit -= this for a token in the window;
                                 // 0 = off
  int64_t repeat_last_n = 64;    // --repeat-last-n: the window of all three penalties (last n
                                 // history tokens); 0 = off, -1 = the whole history
  uint64_t seed = 1234;          // --seed (-1 = random). llm-generate's default is a random seed,
                                 // drawn once per run and printed, as llama.cpp's; this fixed
                                 // default keeps library callers reproducible. The draw is
                                 // Philox's, not llama.cpp's std::mt19937: the same seed does not
                                 // give llama.cpp's tokens.
  std::vector<int32_t> banned;   // token ids never drawn (logit -inf first): llm-generate's
                                 // --ignore-eod bans the end-of-document token

  // Throws ConfigError naming the flag, e.g. "--top-p 1.5 must be in (0, 1]".
  void validate() const;
  bool greedy() const { return temperature == 0.0; }
};

// --seed's value: "-1" draws a random seed (random_seed()), as llama.cpp's -1; otherwise a decimal
// integer in [0, 2^64). Throws ConfigError naming the flag.
uint64_t parse_seed(std::string_view text);
// A fresh 64-bit seed: std::random_device mixed with the clock (a random_device that is a fixed
// pseudo-random generator on some platforms would give every run the same seed).
uint64_t random_seed();

// One entry of the candidate list. Logits are kept in double so that every stage, and the
// probabilities the draw uses, match a float64 reference to rounding.
struct Candidate {
  int32_t id;
  double logit;
};

// The list the stages edit. Invariant: `items` is either in token-id order (sorted == false) or
// in canonical order, logit descending with ties by ascending id (sorted == true); stages that
// reorder restore one of the two, so the draw's accumulation order is always well defined.
struct Candidates {
  std::vector<Candidate> items;
  bool sorted = false;

  // Resets to every token of `logits`, in id order.
  void assign(std::span<const float> logits);
  // Sorts the whole list canonically (no-op when already sorted).
  void sort();
  // Largest logit (the list is never empty).
  double max_logit() const;
};

// Canonical order: larger logit first, ties to the lower id.
inline bool canonical_before(const Candidate& a, const Candidate& b) {
  return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
}

// A stage edits the candidate list: changes logits or removes candidates. It never empties the
// list (every truncation keeps at least the most likely token).
class SamplerStage {
 public:
  virtual ~SamplerStage() = default;
  virtual std::string name() const = 0;
  virtual void apply(Candidates& c) const = 0;
};

// Sets the logits of the banned tokens to -inf (a masked token: probability 0, never the argmax).
// Throws Error for an id outside the vocabulary, or when no finite logit is left.
class BanStage final : public SamplerStage {
 public:
  explicit BanStage(std::vector<int32_t> ids) : ids_(std::move(ids)) {}
  std::string name() const override { return "ban"; }
  void apply(Candidates& c) const override;

 private:
  std::vector<int32_t> ids_;
};

// llama.cpp's penalties sampler: for each distinct token among the last `last_n` history tokens,
// seen `count` times there, first the repetition penalty,
//   logit = logit <= 0 ? logit * repeat : logit / repeat,
// then the frequency and presence penalties,
//   logit -= count * frequency + presence.
// Needs the list in id order (no stage before it reorders), with candidate i being token i.
class PenaltiesStage final : public SamplerStage {
 public:
  PenaltiesStage(double repeat, double frequency, double presence, int64_t last_n)
      : repeat_(repeat), frequency_(frequency), presence_(presence), last_n_(last_n) {}
  void set_history(std::span<const int32_t> history) { history_ = history; }
  std::string name() const override { return "penalties"; }
  void apply(Candidates& c) const override;

 private:
  double repeat_, frequency_, presence_;
  int64_t last_n_;
  std::span<const int32_t> history_;
};

// Keeps the k candidates first in canonical order (ties at the boundary go to the lower ids);
// leaves the list sorted. O(V + k log k).
class TopKStage final : public SamplerStage {
 public:
  explicit TopKStage(int64_t k) : k_(k) {}
  std::string name() const override { return "top-k"; }
  void apply(Candidates& c) const override;

 private:
  int64_t k_;
};

// Nucleus: keeps the shortest canonical prefix whose softmax probability sums to >= p. Never
// sorts the vocabulary: a weighted quickselect (nth_element halvings, O(V) expected) finds the
// boundary candidate, then the list is filtered against it in place, so it keeps its order
// (a sorted list, e.g. after top-k, is simply scanned).
class TopPStage final : public SamplerStage {
 public:
  explicit TopPStage(double p) : p_(p) {}
  std::string name() const override { return "top-p"; }
  void apply(Candidates& c) const override;

 private:
  double p_;
};

// Keeps candidates with p >= min_p * p_max, i.e. exp(logit - max_logit) >= min_p. Keeps order.
class MinPStage final : public SamplerStage {
 public:
  explicit MinPStage(double min_p) : min_p_(min_p) {}
  std::string name() const override { return "min-p"; }
  void apply(Candidates& c) const override;

 private:
  double min_p_;
};

// logit / T for T > 0.
class TemperatureStage final : public SamplerStage {
 public:
  explicit TemperatureStage(double t) : t_(t) {}
  std::string name() const override { return "temperature"; }
  void apply(Candidates& c) const override;

 private:
  double t_;
};

// softmax over the list in double, in list order (the order the draw accumulates in).
std::vector<std::pair<int32_t, double>> softmax(const Candidates& c);

// The chain built from a SamplerConfig (stages that are off are left out). Not thread-safe: it
// reuses one candidate buffer; use one Sampler per generating thread.
class Sampler {
 public:
  // `stream` separates independent sequences that share a seed (e.g. the prompts of a batch).
  explicit Sampler(const SamplerConfig& config, uint64_t stream = 0);

  // The next token for `logits` (exactly the real vocabulary: the caller strips padding),
  // given the tokens so far (`history`: prompt + generated, for the penalties) and the
  // step number that keys the random draw. Throws Error on an empty vocabulary, a NaN or +inf
  // logit, no finite logit (after the ban), or a history or banned token outside the vocabulary.
  int32_t sample(std::span<const float> logits, std::span<const int32_t> history, uint64_t step);

  // The candidates and probabilities the draw uses, in the order it accumulates them. Greedy
  // gives the argmax with probability 1.
  std::vector<std::pair<int32_t, double>> distribution(std::span<const float> logits,
                                                       std::span<const int32_t> history);

  // Stage names in order, e.g. {"ban", "penalties", "top-k", "temperature"}.
  std::vector<std::string> stage_names() const;
  const SamplerConfig& config() const { return config_; }

 private:
  void run_chain(std::span<const float> logits, std::span<const int32_t> history);
  int32_t argmax() const;

  SamplerConfig config_;
  uint64_t stream_;
  PenaltiesStage* penalty_ = nullptr;  // owned by stages_; null when off
  std::vector<std::unique_ptr<SamplerStage>> stages_;
  Candidates candidates_;
};

}  // namespace llm
