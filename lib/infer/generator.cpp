#include "infer/generator.h"

#include "core/error.h"
#include "core/timer.h"
#include "infer/text_stream.h"

namespace llm {

void GenerateOptions::validate() const {
  sampler.validate();
  if (max_new_tokens < -1)
    throw ConfigError(detail::concat("--max-new-tokens ", max_new_tokens,
                                     " must be >= 0, or -1 for no limit (until the context is full)"));
}

Generator::Generator(GPT& model, const Tokenizer& tokenizer, int64_t context)
    : model_(model), tok_(tokenizer), context_(context) {
  if (tokenizer.vocab_size() > model.config().vocab_size)
    throw ConfigError(detail::concat("the tokenizer has ", tokenizer.vocab_size(), " tokens but the model only ",
                                     model.config().vocab_size));
  cache_ = model_.make_kv_cache(1, context_);
}

void Generator::reset() {
  cache_.length = 0;
  eod_pending_ = false;
  step_ = 0;  // draws are a function of (seed, step): a reset request draws as a fresh run does
}

GenerateStats Generator::generate(const std::string& prompt, const GenerateOptions& o,
                                  const std::function<void(const std::string&)>& on_text,
                                  const std::atomic<bool>* cancel,
                                  const std::function<void(const std::string&)>& on_warning) {
  o.validate();
  // Everything that can refuse the request does so before it touches the conversation.
  SamplerConfig sc = o.sampler;
  if (!o.stop_at_eod) sc.banned.push_back(tok_.eod_id());  // llama.cpp's --ignore-eos: never drawn
  Sampler sampler(sc);
  TextStream stream(o.stop);
  GenerateStats st;
  std::vector<int32_t> ids = tok_.encode(prompt);
  if (ids.empty()) throw ConfigError("the prompt encodes to no tokens");
  // The previous reply's end-of-document token, drawn but not yet decoded, goes in first, as in
  // llama.cpp's main at the next turn: the model sees that the document ended there.
  const int64_t carried = eod_pending_ ? 1 : 0;
  const int64_t free = context_ - cache_.length - carried;  // for this prompt and its reply
  const int64_t room = free - 1;                             // keep one position to generate into
  if (static_cast<int64_t>(ids.size()) > room) {
    if (!o.truncate_prompt || room <= 0)
      throw ConfigError(detail::concat("the prompt is ", ids.size(), " tokens but only ", std::max<int64_t>(room, 0),
                                       " of the ", context_, "-token context are free",
                                       cache_.length ? " (/reset starts a new conversation)" : "",
                                       " (--truncate-prompt keeps the end of the prompt)"));
    // What is kept leaves room for the tokens asked for, up to half the free context (the
    // prompt keeps at least the other half; no limit asks for all of it).
    const int64_t wanted = o.max_new_tokens < 0 ? free : std::max<int64_t>(o.max_new_tokens, 1);
    const int64_t keep = std::min(room, std::max<int64_t>(free - wanted, free / 2));
    if (on_warning)
      on_warning(detail::concat("prompt truncated from the left: ", ids.size(), " -> ", keep, " tokens (room for ",
                                free - keep, " new)"));
    ids.erase(ids.begin(), ids.end() - keep);
  }
  // The penalties' window restarts at each turn, as llama.cpp resets its sampler at each user
  // turn: this prompt (without the carried end of document) and the reply so far.
  std::vector<int32_t> window(ids.begin(), ids.end());
  if (eod_pending_) ids.insert(ids.begin(), tok_.eod_id());
  st.prompt_tokens = static_cast<int64_t>(ids.size());
  const int64_t V = tok_.vocab_size();

  Timer prefill;
  Tensor input = Tensor::empty({1, static_cast<int64_t>(ids.size())}, DType::i32);
  std::copy(ids.begin(), ids.end(), input.data<int32_t>());
  const Tensor* logits = &model_.forward_cached(input, cache_);
  model_.backend().synchronize();
  eod_pending_ = false;
  st.prefill_seconds = prefill.seconds();

  Timer decode;
  Tensor one = Tensor::empty({1, 1}, DType::i32);
  auto emit = [&](const std::string& s) {
    if (s.empty()) return;
    st.text += s;
    if (on_text) on_text(s);
  };
  while (true) {
    if (cancel && cancel->load()) {
      st.stop_reason = "cancelled";
      break;
    }
    if (o.max_new_tokens >= 0 && st.new_tokens >= o.max_new_tokens) {
      st.stop_reason = "max-new-tokens";
      break;
    }
    // (the cached forward's logits are fp32 whatever the model's precision: data<float> checks)
    const Tensor host = logits->device().is_cpu() ? *logits : model_.backend().download(*logits);
    const int32_t next = sampler.sample({host.data<float>(), static_cast<size_t>(V)}, window, step_++);
    if (next == tok_.eod_id()) {  // only when stop_at_eod: else it is banned
      st.stop_reason = "eod";
      eod_pending_ = true;  // not printed; decoded before the next prompt of the conversation
      break;
    }
    if (cache_.length >= context_) {
      st.stop_reason = "context-full";
      break;
    }
    // Every emitted token also enters the cache, so a later prompt continues the conversation.
    ++st.new_tokens;
    window.push_back(next);
    one.data<int32_t>()[0] = next;
    logits = &model_.forward_cached(one, cache_);
    emit(stream.push(tok_.token_bytes(next)));
    if (stream.stopped()) {
      st.stop_reason = "stop-string";
      break;
    }
  }
  if (!stream.stopped()) emit(stream.flush());
  model_.backend().synchronize();
  st.decode_seconds = decode.seconds();
  return st;
}

}  // namespace llm
