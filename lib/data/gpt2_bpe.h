// GPT-2's byte-level BPE tokenizer (OpenAI's encoder.py, as used by Megatron's
// GPT2BPETokenizer): the text is split by GPT-2's pre-tokenisation regex, each piece's UTF-8
// bytes are merged by rank, and the ids are those of encoder.json/vocab.json. The end-of-document
// id is that of "<|endoftext|>" (50256 in GPT-2's files), which is never produced from text:
// "<|endoftext|>" in the text is encoded as ordinary characters, as every reference does.
// Ids match the JavaScript port of encoder.py (npm gpt-3-encoder) on any text; Python's encoder
// differs from it only in taking U+0085 rather than U+FEFF for whitespace (see gpt2_bpe.cpp).
//
// Text that is not valid UTF-8 is repaired first: each maximal ill-formed subsequence becomes
// U+FFFD (what JavaScript's TextDecoder does), so the ids are those of the repaired text and
// decode(encode(text)) == text holds for valid UTF-8 only.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "data/tokenizer.h"

namespace llm {

class GPT2BPETokenizer final : public Tokenizer {
 public:
  // vocab_path: encoder.json / vocab.json (token -> id); merges_path: vocab.bpe / merges.txt.
  // Throws ConfigError naming the file (and line) for anything unreadable or inconsistent.
  GPT2BPETokenizer(const std::string& vocab_path, const std::string& merges_path);
  ~GPT2BPETokenizer() override;
  GPT2BPETokenizer(const GPT2BPETokenizer&) = delete;
  GPT2BPETokenizer& operator=(const GPT2BPETokenizer&) = delete;

  // Thread-safe: concurrent calls share the read-only tables and keep per-thread caches.
  std::vector<int32_t> encode(std::string_view text) const override;
  // Appends the ids of `text` to `out`, so callers can reuse one buffer across documents.
  void encode_append(std::string_view text, std::vector<int32_t>& out) const;
  std::string decode(std::span<const int32_t> ids) const override;
  std::string token_bytes(int32_t id) const override;
  int64_t vocab_size() const override;
  int32_t eod_id() const override;
  // kind "GPT2BPETokenizer", hash = hash_bytes(hash_file(vocab) + hash_file(merges)).
  TokenizerIdentity identity() const override;

  // The pre-tokenisation alone: the regex's matches in order (their concatenation is the
  // repaired text). For tests and for inspecting how a text is split. regex_only bypasses the
  // ASCII fast path that encode() uses, so tests can check that both agree.
  std::vector<std::string> pretokenize(std::string_view text, bool regex_only = false) const;

 private:
  struct Tables;
  std::unique_ptr<const Tables> tables_;
};

}  // namespace llm
