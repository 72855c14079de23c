// Text generation over a GPT with a KV cache: the prompt is prefilled in one pass, then tokens
// are decoded one at a time through the sampler chain and streamed as text that never splits a
// UTF-8 character. A Generator holds one conversation: later prompts continue it (the cache
// keeps the earlier turns) until reset(). Between turns it follows llama.cpp's main: a reply
// that ended with the end-of-document token keeps it in the context (decoded in front of the next
// prompt), and the penalties' window restarts at each prompt (llama.cpp resets its sampler at
// each user turn). The draws' step count runs on through the conversation (llama.cpp's reset also
// reseeds its RNG: with a fixed seed every turn would reuse the first turn's random numbers).
#pragma once
#include <atomic>
#include <functional>
#include <string>
#include <vector>

#include "data/tokenizer.h"
#include "infer/sampler.h"
#include "model/gpt.h"

namespace llm {

struct GenerateOptions {
  SamplerConfig sampler;
  int64_t max_new_tokens = 256;   // -1: no limit (until the end of document or a full context);
                                  // llama.cpp's -n defaults to -1, ours to 256
  std::vector<std::string> stop;  // stop strings (not printed)
  // true: the end-of-document token ends the reply. false (--ignore-eod, llama.cpp's
  // --ignore-eos): it is banned from sampling (logit -inf), so it is never drawn, printed or fed.
  bool stop_at_eod = true;
  bool truncate_prompt = false;   // drop the oldest prompt tokens when the prompt does not fit

  // Throws ConfigError naming the flag (the sampler's, or --max-new-tokens below -1).
  void validate() const;
};

struct GenerateStats {
  int64_t prompt_tokens = 0, new_tokens = 0;  // prompt_tokens: those prefilled (with the previous
                                              // reply's end-of-document token when it had one)
  double prefill_seconds = 0, decode_seconds = 0;
  std::string stop_reason;  // "eod" | "max-new-tokens" | "stop-string" | "context-full" | "cancelled"
  std::string text;         // everything streamed
};

class Generator {
 public:
  // context: the positions available (<= the model's position table).
  Generator(GPT& model, const Tokenizer& tokenizer, int64_t context);
  // Generates a continuation of `prompt` (appended to the conversation). on_text receives the
  // printable text as it is produced; `cancel` (optional) is polled before every token; warnings
  // (e.g. truncation) go to on_warning.
  GenerateStats generate(const std::string& prompt, const GenerateOptions& options,
                         const std::function<void(const std::string&)>& on_text,
                         const std::atomic<bool>* cancel = nullptr,
                         const std::function<void(const std::string&)>& on_warning = {});
  void reset();
  int64_t context() const { return context_; }
  int64_t used() const { return cache_.length; }  // positions in the cache (a pending end of
                                                  // document not yet among them)
  int64_t cache_bytes() const { return cache_.bytes(); }

 private:
  GPT& model_;
  const Tokenizer& tok_;
  int64_t context_;
  KVCache cache_;
  bool eod_pending_ = false;  // the last reply ended with the end-of-document token, not yet decoded
  uint64_t step_ = 0;
};

}  // namespace llm
