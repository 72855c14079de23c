// Tokenizers without vocabulary files, for tests and synthetic data.
//  ByteTokenizer: every byte is its own id (0..255), EOD = 256, vocabulary 257.
//  NullTokenizer (Megatron's): text is whitespace-separated integer ids < vocab_size;
//    EOD = vocab_size, so the vocabulary is vocab_size + 1.
#pragma once
#include "data/tokenizer.h"

namespace llm {

class ByteTokenizer final : public Tokenizer {
 public:
  std::vector<int32_t> encode(std::string_view text) const override;
  std::string decode(std::span<const int32_t> ids) const override;
  std::string token_bytes(int32_t id) const override;
  int64_t vocab_size() const override { return 257; }
  int32_t eod_id() const override { return 256; }
  TokenizerIdentity identity() const override { return {"ByteTokenizer", "256"}; }
};

class NullTokenizer final : public Tokenizer {
 public:
  explicit NullTokenizer(int64_t vocab_size);
  std::vector<int32_t> encode(std::string_view text) const override;
  std::string decode(std::span<const int32_t> ids) const override;
  std::string token_bytes(int32_t id) const override;
  int64_t vocab_size() const override { return vocab_ + 1; }
  int32_t eod_id() const override { return static_cast<int32_t>(vocab_); }
  TokenizerIdentity identity() const override { return {"NullTokenizer", std::to_string(vocab_)}; }

 private:
  int64_t vocab_;
};

}  // namespace llm
