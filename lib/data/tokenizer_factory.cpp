#include "data/tokenizer_factory.h"

#include <algorithm>
#include <array>

#include "core/error.h"
#include "data/gpt2_bpe.h"
#include "data/sentencepiece_tokenizer.h"
#include "data/simple_tokenizers.h"

namespace llm {

std::unique_ptr<Tokenizer> make_tokenizer(const TokenizerOptions& o) {
  if (o.type == "SentencePieceTokenizer" || o.type == "GPTSentencePieceTokenizer") {
    if (o.model.empty()) throw ConfigError("--tokenizer-type " + o.type + " needs --tokenizer-model");
    return std::make_unique<SentencePieceTokenizer>(o.model, o.type == "SentencePieceTokenizer"
                                                                 ? SentencePieceTokenizer::Variant::megatron
                                                                 : SentencePieceTokenizer::Variant::gpt);
  }
  if (o.type == "GPT2BPETokenizer") {
    if (o.vocab_file.empty() || o.merge_file.empty())
      throw ConfigError("--tokenizer-type GPT2BPETokenizer needs --vocab-file and --merge-file");
    return std::make_unique<GPT2BPETokenizer>(o.vocab_file, o.merge_file);
  }
  if (o.type == "NullTokenizer") {
    if (o.vocab_size <= 0) throw ConfigError("--tokenizer-type NullTokenizer needs --vocab-size");
    return std::make_unique<NullTokenizer>(o.vocab_size);
  }
  if (o.type == "ByteTokenizer") return std::make_unique<ByteTokenizer>();
  throw ConfigError("--tokenizer-type '" + o.type + "': expected " + tokenizer_types_phrase());
}

namespace {
constexpr std::array<const char*, 5> kTypes = {"SentencePieceTokenizer", "GPTSentencePieceTokenizer", "GPT2BPETokenizer",
                                               "NullTokenizer", "ByteTokenizer"};
}  // namespace

bool is_tokenizer_type(const std::string& type) {
  return std::find(kTypes.begin(), kTypes.end(), type) != kTypes.end();
}

const std::string& tokenizer_types_phrase() {
  static const std::string phrase = [] {
    std::string s;
    for (size_t i = 0; i < kTypes.size(); ++i) s += std::string(i == 0 ? "" : i + 1 == kTypes.size() ? " or " : ", ") + kTypes[i];
    return s;
  }();
  return phrase;
}

}  // namespace llm
