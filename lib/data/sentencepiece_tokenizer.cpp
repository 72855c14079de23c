#include "data/sentencepiece_tokenizer.h"

#include <omp.h>
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "core/fsync.h"
#include "data/text_documents.h"

namespace llm {

SentencePieceTokenizer::SentencePieceTokenizer(const std::string& model_file)
    : sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {
  if (!std::filesystem::exists(model_file))
    throw ConfigError(model_file + ": SentencePiece model not found");
  const auto status = sp_->Load(model_file);
  if (!status.ok()) throw ConfigError(model_file + ": not a SentencePiece model (" + status.ToString() + ")");
  if (sp_->eos_id() < 0) throw ConfigError(model_file + ": the model has no </s> piece to use as end-of-document");
  identity_ = {"SentencePieceTokenizer", hash_file(model_file)};
  // SentencePiece's encoder slows down on long inputs (a 1 MB line encodes ~3.5x slower per
  // byte than the same text as lines), and documents are often many lines. With the usual
  // settings (newline normalised to a space, pieces never spanning whitespace, a dummy "▁"
  // prefix standing in for the space) encoding line by line gives exactly the same ids. Use it
  // only when the model shows that on probes and has no piece containing a newline.
  bool newline_piece = false;
  for (int id = 0; id < sp_->GetPieceSize() && !newline_piece; ++id)
    newline_piece = sp_->IdToPiece(id).find('\n') != std::string::npos;
  split_lines_ = !newline_piece;
  for (const char* probe : {"In the beginning\nGod created", "a\n\nb", " x \n y ", "foo.\nBar, baz\n", "\nlead",
                            "tail\n\n", "1\n2 3\n\t4"}) {
    if (!split_lines_) break;
    split_lines_ = encode(probe) == encode_whole(probe);
  }
}

SentencePieceTokenizer::~SentencePieceTokenizer() = default;

std::vector<int32_t> SentencePieceTokenizer::encode(std::string_view text) const {
  if (!split_lines_) return encode_whole(text);
  std::vector<int32_t> out;
  std::vector<int> ids;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    if (end > start) {
      const auto status = sp_->Encode(text.substr(start, end - start), &ids);
      LLM_CHECK(status.ok(), "SentencePiece encode failed: ", status.ToString());
      out.insert(out.end(), ids.begin(), ids.end());
    }
    start = end + 1;
  }
  return out;
}

std::vector<int32_t> SentencePieceTokenizer::encode_whole(std::string_view text) const {
  std::vector<int> ids;
  const auto status = sp_->Encode(text, &ids);
  LLM_CHECK(status.ok(), "SentencePiece encode failed: ", status.ToString());
  return {ids.begin(), ids.end()};
}

std::string SentencePieceTokenizer::decode(std::span<const int32_t> ids) const {
  std::vector<int> v(ids.begin(), ids.end());
  std::string out;
  const auto status = sp_->Decode(v, &out);
  LLM_CHECK(status.ok(), "SentencePiece decode failed: ", status.ToString());
  return out;
}

std::string SentencePieceTokenizer::token_bytes(int32_t id) const {
  LLM_CHECK(id >= 0 && id < sp_->GetPieceSize(), "token id ", id, " outside the vocabulary");
  if (sp_->IsControl(id)) return "";
  if (sp_->IsByte(id)) {
    // byte-fallback pieces are spelled <0xAB>
    const std::string piece = sp_->IdToPiece(id);
    return std::string(1, static_cast<char>(std::stoi(piece.substr(3, 2), nullptr, 16)));
  }
  if (sp_->IsUnknown(id)) return " \xE2\x81\x87 ";  // what Decode prints for <unk>
  std::string piece = sp_->IdToPiece(id);
  // U+2581 (lower one-eighth block) stands for a space
  std::string out;
  for (size_t i = 0; i < piece.size();) {
    if (piece.compare(i, 3, "\xE2\x96\x81") == 0) {
      out += ' ';
      i += 3;
    } else {
      out += piece[i++];
    }
  }
  return out;
}

int64_t SentencePieceTokenizer::vocab_size() const { return sp_->GetPieceSize(); }
int32_t SentencePieceTokenizer::eod_id() const { return sp_->eos_id(); }

void train_sentencepiece(const SentencePieceTrainOptions& o) {
  if (o.inputs.empty()) throw ConfigError("train-tokenizer: no --input files");
  bool any_text = false;
  for (const std::string& f : o.inputs) {
    std::error_code ec;
    if (!std::filesystem::exists(f, ec)) throw ConfigError(f + ": input file not found");
    any_text = any_text || std::filesystem::file_size(f, ec) > 0 || ec;  // (a pipe has no size: let it through)
  }
  if (!any_text)
    throw ConfigError("train-tokenizer: the --input files are empty (" + o.inputs[0] + (o.inputs.size() > 1 ? ", ..." : "") +
                      "): no text to learn a vocabulary from");
  if (o.model_type != "bpe" && o.model_type != "unigram")
    throw ConfigError("train-tokenizer: --model-type must be bpe or unigram, got '" + o.model_type + "'");
  std::unordered_map<std::string, std::string> kw;
  std::string inputs;
  for (const std::string& f : o.inputs) inputs += (inputs.empty() ? "" : ",") + f;
  kw["input"] = inputs;
  const std::string staging = o.model_prefix + ".tmp-" + std::to_string(::getpid());
  kw["model_prefix"] = staging;
  kw["vocab_size"] = std::to_string(o.vocab_size);
  kw["model_type"] = o.model_type;
  kw["byte_fallback"] = o.byte_fallback ? "true" : "false";
  kw["character_coverage"] = std::to_string(o.character_coverage);
  kw["num_threads"] = std::to_string(o.num_threads > 0 ? o.num_threads : omp_get_max_threads());
  kw["max_sentence_length"] = std::to_string(o.max_sentence_length);
  if (o.input_sentence_size > 0) {
    kw["input_sentence_size"] = std::to_string(o.input_sentence_size);
    kw["shuffle_input_sentence"] = "true";
  }
  if (!o.user_defined_symbols.empty()) {
    std::string s;
    for (const std::string& u : o.user_defined_symbols) s += (s.empty() ? "" : ",") + u;
    kw["user_defined_symbols"] = s;
  }
  kw["minloglevel"] = "2";  // the trainer's per-step chatter goes to stderr otherwise
  // ids: <unk>=0 <s>=1 </s>=2 (EOD), no padding piece (Megatron's defaults)
  struct Staged {  // the staged files go whatever happens, once renamed or not
    std::string prefix;
    ~Staged() {
      std::error_code ec;
      std::filesystem::remove(prefix + ".model", ec);
      std::filesystem::remove(prefix + ".vocab", ec);
    }
  } staged{staging};
  const auto status = sentencepiece::SentencePieceTrainer::Train(kw);
  if (!status.ok())
    throw ConfigError("SentencePiece training of " + o.model_prefix + ".model failed (writing " + staging +
                      ".model and .vocab; " + o.model_prefix + ".model is unchanged): " + status.ToString());
  SentencePieceTokenizer check(staging + ".model");  // what it wrote loads, or nothing is published
  for (const char* ext : {".vocab", ".model"}) {  // the model last: it is what readers open
    const std::string from = staging + ext, to = o.model_prefix + ext;
    fsync_path(from);
    std::error_code ec;
    std::filesystem::rename(from, to, ec);
    if (ec) throw ConfigError(to + ": cannot replace it with the trained tokenizer: " + ec.message());
  }
  const std::filesystem::path dir = std::filesystem::path(o.model_prefix).parent_path();
  fsync_path(dir.empty() ? std::filesystem::path(".") : dir);
}

void train_sentencepiece_on_documents(const std::vector<std::string>& files, const InputOptions& input,
                                      SentencePieceTrainOptions options) {
  const std::string lines = options.model_prefix + ".tmp-" + std::to_string(::getpid()) + ".train-input.txt";
  struct Remove {
    std::string path;
    ~Remove() {
      std::error_code ec;
      std::filesystem::remove(path, ec);
    }
  } remove{lines};
  {
    DocumentReader reader(files, input);
    std::ofstream out(lines, std::ios::binary | std::ios::trunc);
    if (!out) throw ConfigError(lines + ": cannot write the training text (next to --model-prefix)");
    std::vector<RawDocument> batch;
    bool more = true;
    size_t text = 0;
    while (more) {
      more = reader.next_batch(batch, size_t{8} << 20);
      for (const RawDocument& d : batch) out << d.text << '\n', text += d.text.size();
      batch.clear();
    }
    out.flush();
    if (!out) throw ConfigError(lines + ": cannot write the training text (is the disk full?)");
    if (text == 0)
      throw ConfigError("train-tokenizer: the --input files hold no text (" + (files.empty() ? std::string() : files[0]) +
                        (files.size() > 1 ? ", ..." : "") + "): no text to learn a vocabulary from");
  }
  options.inputs = {lines};
  train_sentencepiece(options);
}

}  // namespace llm
