// The Generator's conversation rules, on models whose next-token logits are known: the final
// LayerNorm's gain is zeroed, so every position's head input is its bias, and the logits are the
// same whatever the context (bias = scale * row / |row|^2 for the embedding row of a chosen token:
// that token's logit is `scale`, the others about scale / 8 at most for random rows of width 64).
#include "infer/generator.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/simple_tokenizers.h"
#include "model/gpt.h"

using namespace llm;

namespace {

GPTConfig tiny_config() {
  GPTConfig c;
  c.name = "generator";
  c.num_layers = 2;
  c.hidden_size = 64;
  c.num_heads = 4;
  c.vocab_size = 90;  // NullTokenizer(89): ids 0..88 in prompts, 89 the end of document
  c.vocab_divisible_by = 32;
  c.max_position_embeddings = 48;
  return c;
}

constexpr int32_t kEod = 89;

// A randomly initialised model whose logits, at every position, favour `target`.
struct FixedLogitsModel {
  GPTConfig config = tiny_config();
  GPT model{config, cpu_backend(), 11, config.max_position_embeddings};
  NullTokenizer tok{config.vocab_size - 1};

  FixedLogitsModel(int32_t target, float scale) {
    ParameterSet& ps = model.parameters();
    const int64_t C = config.hidden_size;
    float* g = ps.param("ln_f.weight").data<float>();
    float* b = ps.param("ln_f.bias").data<float>();
    const float* row = ps.param("wte").data<float>() + static_cast<int64_t>(target) * C;
    double norm2 = 0;
    for (int64_t i = 0; i < C; ++i) norm2 += double(row[i]) * row[i];
    for (int64_t i = 0; i < C; ++i) {
      g[i] = 0.0f;
      b[i] = static_cast<float>(scale * row[i] / norm2);
    }
  }

  // The logits of the real vocabulary (the same at every position).
  std::vector<float> logits() {
    KVCache cache = model.make_kv_cache(1, 4);
    Tensor one = Tensor::empty({1, 1}, DType::i32);
    one.data<int32_t>()[0] = 0;
    const float* l = model.forward_cached(one, cache).data<float>();
    return std::vector<float>(l, l + config.vocab_size);
  }
};

bool has_token(const std::string& text, int32_t id) {
  const std::string t = std::to_string(id) + " ";
  return text.rfind(t, 0) == 0 || text.find(" " + t) != std::string::npos;
}

}  // namespace

// --ignore-eod (llama.cpp's --ignore-eos) bans the end-of-document token: never drawn, printed or
// fed, greedy or sampled, even when the model all but insists on it.
TEST(Generator, IgnoreEodBansTheEndOfDocumentToken) {
  FixedLogitsModel m(kEod, 40.0f);
  std::vector<float> l = m.logits();
  ASSERT_NEAR(l[kEod], 40.0f, 1e-3);
  l[kEod] = -INFINITY;
  ASSERT_LT(*std::max_element(l.begin(), l.end()), 20.0f);  // the end of document: p > 1 - 1e-7
  for (double t : {0.0, 1.0}) {
    GenerateOptions go;
    go.max_new_tokens = 10;
    go.sampler.temperature = t;
    go.sampler.seed = 5;
    Generator stops(m.model, m.tok, m.config.max_position_embeddings);
    const GenerateStats a = stops.generate("1 2 3", go, {});
    EXPECT_EQ(a.stop_reason, "eod") << "T=" << t;
    EXPECT_EQ(a.new_tokens, 0);
    EXPECT_EQ(a.text, "");

    go.stop_at_eod = false;
    Generator ignores(m.model, m.tok, m.config.max_position_embeddings);
    const GenerateStats b = ignores.generate("1 2 3", go, {});
    EXPECT_EQ(b.stop_reason, "max-new-tokens") << "T=" << t;
    EXPECT_EQ(b.new_tokens, 10);
    EXPECT_FALSE(has_token(b.text, kEod)) << "T=" << t << ": " << b.text;
    EXPECT_EQ(ignores.used(), 3 + 10);
  }
}

// -n -1 (llama.cpp's default): no limit, so the reply runs until the context is full; below -1 is
// refused naming the flag.
TEST(Generator, NoTokenLimitRunsUntilTheContextIsFull) {
  FixedLogitsModel m(5, 40.0f);
  GenerateOptions go;
  go.max_new_tokens = -1;
  go.sampler.temperature = 0;
  Generator gen(m.model, m.tok, m.config.max_position_embeddings);
  const GenerateStats st = gen.generate("1 2 3", go, {});
  EXPECT_EQ(st.stop_reason, "context-full");
  EXPECT_EQ(st.new_tokens, m.config.max_position_embeddings - 3);
  EXPECT_EQ(gen.used(), m.config.max_position_embeddings);
  go.max_new_tokens = -2;
  try {
    gen.generate("1", go, {});
    ADD_FAILURE() << "-n -2 accepted";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()), "--max-new-tokens -2 must be >= 0, or -1 for no limit (until the context is full)");
  }
}

// Interactive turns, as llama.cpp's main: a reply that ends with the end-of-document token keeps it
// in the context, decoded in front of the next prompt (before, it was dropped: the model never saw
// that the document had ended); /reset (reset()) drops it with the rest.
TEST(Generator, EodEndingAReplyIsDecodedAtTheNextTurn) {
  FixedLogitsModel m(kEod, 40.0f);
  GenerateOptions go;
  go.max_new_tokens = 5;
  go.sampler.temperature = 0;
  Generator gen(m.model, m.tok, m.config.max_position_embeddings);
  const GenerateStats a = gen.generate("1 2 3", go, {});
  EXPECT_EQ(a.stop_reason, "eod");
  EXPECT_EQ(a.new_tokens, 0);
  EXPECT_EQ(a.prompt_tokens, 3);
  EXPECT_EQ(gen.used(), 3);  // the end of document waits for the next turn
  const GenerateStats b = gen.generate("4 5", go, {});
  EXPECT_EQ(b.prompt_tokens, 1 + 2);
  EXPECT_EQ(gen.used(), 3 + 1 + 2);
  EXPECT_EQ(b.text, "");
  gen.reset();
  const GenerateStats c = gen.generate("4 5", go, {});
  EXPECT_EQ(c.prompt_tokens, 2);
  EXPECT_EQ(gen.used(), 2);
  // The carried token takes a position: after a 1-token turn, 46 tokens would leave one position
  // to generate into, but the end of document takes it.
  std::string fill;
  for (int64_t i = 0; i < m.config.max_position_embeddings - 2; ++i) fill += "7 ";
  Generator full(m.model, m.tok, m.config.max_position_embeddings);
  full.generate("1", go, {});  // ends with the end of document: 1 position used, 1 pending
  try {
    full.generate(fill, go, {});
    ADD_FAILURE() << "the prompt fitted beside the pending end of document";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("tokens but only 45 of the 48-token context are free"), std::string::npos)
        << e.what();
  }
}

// The penalties' window restarts at each turn, as llama.cpp's sampler reset at each user turn:
// the new prompt and its reply only, not the earlier turns (before, the whole conversation).
TEST(Generator, PenaltyWindowRestartsAtEachTurn) {
  constexpr int32_t kFavourite = 7;
  FixedLogitsModel m(kFavourite, 40.0f);
  GenerateOptions go;
  go.max_new_tokens = 1;
  go.sampler.temperature = 0;
  go.sampler.presence_penalty = 100;  // a token in the window: -100, far below every other
  go.sampler.repeat_last_n = -1;
  go.stop_at_eod = false;
  Generator gen(m.model, m.tok, m.config.max_position_embeddings);
  const GenerateStats a = gen.generate("7 7", go, {});
  EXPECT_NE(a.text, "7 ") << "the prompt's own token is penalised";
  const GenerateStats b = gen.generate("1", go, {});
  EXPECT_EQ(b.text, "7 ") << "the earlier turn's tokens are out of the window";
  // Within a turn the window is the prompt and the reply so far: no token twice.
  go.max_new_tokens = 4;
  const GenerateStats c = gen.generate("2", go, {});
  EXPECT_EQ(c.text.substr(0, 2), "7 ");
  std::vector<std::string> words;
  for (size_t i = 0; i < c.text.size();) {
    const size_t j = c.text.find(' ', i);
    words.push_back(c.text.substr(i, j - i));
    i = j + 1;
  }
  ASSERT_EQ(words.size(), 4u);
  std::sort(words.begin(), words.end());
  EXPECT_EQ(std::unique(words.begin(), words.end()), words.end()) << c.text;
  EXPECT_EQ(std::count(words.begin(), words.end(), "2"), 0) << c.text;
}
