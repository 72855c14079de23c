// Builds a tokenizer from Megatron-style options (--tokenizer-type and its files).
#pragma once
#include <memory>
#include <string>

#include "data/tokenizer.h"

namespace llm {

struct TokenizerOptions {
  std::string type;        // SentencePieceTokenizer | GPT2BPETokenizer | NullTokenizer | ByteTokenizer
  std::string model;       // --tokenizer-model (SentencePiece)
  std::string vocab_file;  // --vocab-file (GPT-2 encoder.json / vocab.json)
  std::string merge_file;  // --merge-file (GPT-2 vocab.bpe / merges.txt)
  int64_t vocab_size = 0;  // --vocab-size (NullTokenizer)
};

std::unique_ptr<Tokenizer> make_tokenizer(const TokenizerOptions& options);

// Whether make_tokenizer builds `type`, and its types as a phrase for messages ("A, B ... or E").
bool is_tokenizer_type(const std::string& type);
const std::string& tokenizer_types_phrase();

}  // namespace llm
