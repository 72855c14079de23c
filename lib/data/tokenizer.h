// Tokenizers: text <-> token ids. Every tokenizer has an identity (kind + a hash of the files
// that define it) that datasets and checkpoints record, so training can refuse a dataset made
// with a different tokenizer than the model's.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace llm {

struct TokenizerIdentity {
  std::string kind;  // "SentencePieceTokenizer" | "GPTSentencePieceTokenizer" | "GPT2BPETokenizer" | ...
  std::string hash;  // hex digest of the defining files (or of the parameters for Null)
  std::string str() const { return kind + ":" + hash; }
  bool operator==(const TokenizerIdentity&) const = default;
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::vector<int32_t> encode(std::string_view text) const = 0;
  virtual std::string decode(std::span<const int32_t> ids) const = 0;
  // The raw bytes token `id` stands for (may be a partial UTF-8 character); used by streaming
  // decoders that must not split characters.
  virtual std::string token_bytes(int32_t id) const = 0;
  virtual int64_t vocab_size() const = 0;
  virtual int32_t eod_id() const = 0;
  virtual TokenizerIdentity identity() const = 0;
};

// 64-bit FNV-1a of the file's bytes, as 16 hex digits; throws naming the file if unreadable.
std::string hash_file(const std::string& path);
std::string hash_bytes(std::string_view bytes);

}  // namespace llm
