// SentencePiece (BPE or unigram) through the SentencePiece library, and training a model
// from a corpus through its trainer.
//
// Megatron's two SentencePiece tokenizer types (megatron/tokenizer/tokenizer.py):
// - SentencePieceTokenizer (`_SentencePieceTokenizer`): <CLS>, <SEP>, <EOD>, <MASK>, then the
//   model's pad, bos and eos pieces (<PAD>, <BOS>, <EOS> where the model has none) are special
//   tokens, each the model's piece of that name or a new id after the model's pieces, in that
//   order; EOD is <EOD> (for a model trained here, whose pieces are <unk> <s> </s> ...: the
//   vocabulary is the model's N pieces + 5, EOD = N + 2). A special token's text in the input
//   encodes to its id, the text between encoded on its own.
// - GPTSentencePieceTokenizer (`_GPTSentencePieceTokenizer`): the model's pieces alone, EOD its
//   </s>.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "data/tokenizer.h"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace llm {

class SentencePieceTokenizer final : public Tokenizer {
 public:
  enum class Variant { megatron, gpt };  // SentencePieceTokenizer, GPTSentencePieceTokenizer
  explicit SentencePieceTokenizer(const std::string& model_file, Variant variant = Variant::megatron);
  ~SentencePieceTokenizer() override;
  std::vector<int32_t> encode(std::string_view text) const override;
  std::string decode(std::span<const int32_t> ids) const override;
  std::string token_bytes(int32_t id) const override;
  int64_t vocab_size() const override;
  int32_t eod_id() const override;
  TokenizerIdentity identity() const override { return identity_; }
  // Whether encode() splits the text at newlines (see the .cpp); exposed for tests.
  bool splits_lines() const { return split_lines_; }
  // Encodes the whole text in one call, never splitting (the reference for the split path).
  std::vector<int32_t> encode_whole(std::string_view text) const;
  // The special tokens (Variant::megatron; empty for gpt), in Megatron's order, with their ids.
  const std::vector<std::pair<std::string, int32_t>>& special_tokens() const { return specials_; }
  int64_t model_pieces() const { return pieces_; }

 private:
  std::vector<int32_t> encode_pieces(std::string_view text) const;  // the model alone
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  TokenizerIdentity identity_;
  bool split_lines_ = false;
  int64_t pieces_ = 0;
  int32_t eod_ = -1;
  std::vector<std::pair<std::string, int32_t>> specials_;
  std::vector<std::string> added_;  // the names of ids pieces_, pieces_ + 1, ...
};

struct SentencePieceTrainOptions {
  std::vector<std::string> inputs;  // text files, one sentence (or document line) per line
  std::string model_prefix;         // writes <prefix>.model and <prefix>.vocab
  int64_t vocab_size = 8000;
  std::string model_type = "bpe";   // bpe | unigram
  bool byte_fallback = true;
  std::vector<std::string> user_defined_symbols;
  double character_coverage = 0.9995;
  int64_t input_sentence_size = 0;  // 0 = all lines
  int num_threads = 0;              // 0 = OpenMP's thread count
  int64_t max_sentence_length = 16384;
};

// Trains a model on text files (one sentence a line); throws ConfigError with SentencePiece's own
// message on failure. <prefix>.vocab and <prefix>.model are each written beside and renamed into
// place once the model loads (core/fsync.h's AtomicFile): a failed or killed training leaves an
// existing tokenizer of that name as it was. The same training gives the same bytes.
void train_sentencepiece(const SentencePieceTrainOptions& options);

// The same over documents (llm-tokenize's readers: text, .jsonl), their lines fed to the trainer
// as it reads sentences from a file, without a copy of the corpus on disk. `options.inputs` is
// ignored; an input without text is a ConfigError naming it.
struct InputOptions;
void train_sentencepiece_on_documents(const std::vector<std::string>& files, const InputOptions& input,
                                      const SentencePieceTrainOptions& options);

}  // namespace llm
