#include "data/tokenizer_factory.h"

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
  throw ConfigError("--tokenizer-type '" + o.type +
                    "': expected SentencePieceTokenizer, GPTSentencePieceTokenizer, GPT2BPETokenizer, NullTokenizer or ByteTokenizer");
}

}  // namespace llm
