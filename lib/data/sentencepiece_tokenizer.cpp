#include "data/sentencepiece_tokenizer.h"

#include <omp.h>
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>

#include "core/error.h"
#include "core/fsync.h"
#include "data/text_documents.h"

namespace llm {

SentencePieceTokenizer::SentencePieceTokenizer(const std::string& model_file, Variant variant)
    : sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {
  if (std::error_code ec; !std::filesystem::exists(model_file, ec))
    throw ConfigError(model_file + ": SentencePiece model not found");
  if (std::error_code ec; std::filesystem::is_directory(model_file, ec))
    throw ConfigError(model_file + ": is a directory, not a SentencePiece model");
  const auto status = sp_->Load(model_file);
  if (!status.ok()) throw ConfigError(model_file + ": not a SentencePiece model (" + status.ToString() + ")");
  pieces_ = sp_->GetPieceSize();
  if (variant == Variant::gpt) {
    if (sp_->eos_id() < 0)
      throw ConfigError(model_file + ": the model has no </s> piece, which GPTSentencePieceTokenizer takes as end-of-document");
    eod_ = sp_->eos_id();
    identity_ = {"GPTSentencePieceTokenizer", hash_file(model_file)};
  } else {
    // Megatron's _SentencePieceTokenizer._initalize: each special the model's piece of that name,
    // or the next id after the model's pieces and the specials added before it.
    auto add = [&](const std::string& name) {
      int32_t id = sp_->PieceToId(name);
      if (id == sp_->unk_id() && name != sp_->IdToPiece(sp_->unk_id())) {  // (not a piece: PieceToId gives <unk>)
        const auto it = std::find(added_.begin(), added_.end(), name);
        id = static_cast<int32_t>(pieces_ + (it - added_.begin()));
        if (it == added_.end()) added_.push_back(name);
      }
      specials_.emplace_back(name, id);
      return id;
    };
    auto piece_or = [&](int id, const char* fallback) {
      return id >= 0 && id < sp_->GetPieceSize() ? sp_->IdToPiece(id) : std::string(fallback);
    };
    add("<CLS>");
    add("<SEP>");
    eod_ = add("<EOD>");
    add("<MASK>");
    add(piece_or(sp_->pad_id(), "<PAD>"));
    add(piece_or(sp_->bos_id(), "<BOS>"));
    add(piece_or(sp_->eos_id(), "<EOS>"));
    // The same model file names another tokenizer than GPTSentencePieceTokenizer's (other ids).
    identity_ = {"SentencePieceTokenizer", hash_bytes(hash_file(model_file) + "/megatron-specials")};
  }
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
    split_lines_ = encode_pieces(probe) == encode_whole(probe);
  }
}

SentencePieceTokenizer::~SentencePieceTokenizer() = default;

std::vector<int32_t> SentencePieceTokenizer::encode(std::string_view text) const {
  if (specials_.empty()) return encode_pieces(text);
  // Megatron's _SentencePieceTokenizer.tokenize: the earliest special token's text (the first in
  // the specials' order on a tie) becomes its id; the text before it is encoded on its own.
  std::vector<int32_t> out;
  size_t at = 0;
  while (true) {
    size_t best = std::string_view::npos;
    const std::pair<std::string, int32_t>* which = nullptr;
    for (const auto& sp : specials_) {
      const size_t f = text.find(sp.first, at);
      if (f < best) best = f, which = &sp;
    }
    if (!which) break;
    const std::vector<int32_t> before = encode_pieces(text.substr(at, best - at));
    out.insert(out.end(), before.begin(), before.end());
    out.push_back(which->second);
    at = best + which->first.size();
  }
  const std::vector<int32_t> rest = encode_pieces(text.substr(at));
  out.insert(out.end(), rest.begin(), rest.end());
  return out;
}

std::vector<int32_t> SentencePieceTokenizer::encode_pieces(std::string_view text) const {
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
  auto pieces = [&](std::span<const int32_t> run) {
    std::vector<int> v(run.begin(), run.end());
    std::string out;
    const auto status = sp_->Decode(v, &out);
    LLM_CHECK(status.ok(), "SentencePiece decode failed: ", status.ToString());
    return out;
  };
  if (specials_.empty()) return pieces(ids);
  // Megatron's detokenize: each special token as its text, a space either side of it.
  std::string out;
  size_t last = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    const std::pair<std::string, int32_t>* which = nullptr;
    for (const auto& sp : specials_)
      if (sp.second == ids[i]) which = which ? which : &sp;
    if (!which) continue;
    out += pieces(ids.subspan(last, i - last)) + " " + which->first + " ";
    last = i + 1;
  }
  return out + pieces(ids.subspan(last));
}

std::string SentencePieceTokenizer::token_bytes(int32_t id) const {
  LLM_CHECK(id >= 0 && id < vocab_size(), "token id ", id, " outside the vocabulary");
  if (id >= pieces_) return added_[static_cast<size_t>(id - pieces_)];  // a special token after the model's
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

int64_t SentencePieceTokenizer::vocab_size() const { return pieces_ + static_cast<int64_t>(added_.size()); }
int32_t SentencePieceTokenizer::eod_id() const { return eod_; }

namespace {

// The lines of documents, one sentence each, as SentencePiece's trainer would read them from a
// file holding each document's text and a newline: no copy of the corpus on disk.
class DocumentLines final : public sentencepiece::SentenceIterator {
 public:
  DocumentLines(const std::vector<std::string>& files, const InputOptions& input) : reader_(files, input) { advance(); }
  bool done() const override { return done_; }
  void Next() override { advance(); }
  const std::string& value() const override { return line_; }
  sentencepiece::util::Status status() const override {
    return error_ ? sentencepiece::util::Status(sentencepiece::util::StatusCode::kInternal, "reading the --input files failed")
                  : sentencepiece::util::Status();
  }
  std::exception_ptr error() const { return error_; }
  size_t text_bytes() const { return text_; }

 private:
  void advance() {
    try {
      while (next_ == lines_.size()) {
        if (exhausted_) {
          done_ = true;
          return;
        }
        lines_.clear(), next_ = 0;
        std::vector<RawDocument> batch;
        exhausted_ = !reader_.next_batch(batch, size_t{8} << 20);
        for (const RawDocument& d : batch) {
          text_ += d.text.size();
          for (size_t b = 0;;) {
            const size_t e = d.text.find('\n', b);
            lines_.push_back(d.text.substr(b, e == std::string::npos ? std::string::npos : e - b));
            if (e == std::string::npos) break;
            b = e + 1;
          }
        }
      }
      line_ = std::move(lines_[next_++]);
    } catch (...) {
      error_ = std::current_exception();
      done_ = true;
    }
  }
  DocumentReader reader_;
  std::vector<std::string> lines_;
  size_t next_ = 0, text_ = 0;
  std::string line_;
  bool exhausted_ = false, done_ = false;
  std::exception_ptr error_;
};

// SentencePiece's trainer over `kw` (and `lines`, if given), its model then published as
// <prefix>.model and <prefix>.vocab (AtomicFile each: a failed or killed training leaves an
// existing tokenizer of that name as it was). The model records no file name of ours, so the same
// training gives the same bytes (the tokenizer's identity) wherever it is written.
void train_and_publish(std::unordered_map<std::string, std::string> kw, const std::string& prefix, DocumentLines* lines,
                       const std::function<void()>& check_input = {}) {
  // The outputs first: a directory, device or unwritable place is refused before the training.
  AtomicFile vocab(prefix + ".vocab"), model(prefix + ".model");
  std::string proto;  // (the trainer takes no model_prefix then)
  const auto status = sentencepiece::SentencePieceTrainer::Train(kw, lines, &proto);
  if (lines && lines->error()) std::rethrow_exception(lines->error());
  if (check_input) check_input();
  if (!status.ok())
    throw ConfigError("SentencePiece training of " + prefix + ".model failed (" + prefix +
                      ".model is unchanged): " + status.ToString());
  sentencepiece::SentencePieceProcessor sp;
  const auto loaded = sp.LoadFromSerializedProto(proto);
  if (!loaded.ok()) throw Error("SentencePiece training of " + prefix + ".model gave a model that does not load: " + loaded.ToString());
  // The vocabulary as SentencePiece writes it: each piece and its score, a tab between.
  for (int id = 0; id < sp.GetPieceSize(); ++id) {
    char score[32];
    std::snprintf(score, sizeof score, "%g", static_cast<double>(sp.GetScore(id)));
    vocab.stream() << sp.IdToPiece(id) << '\t' << score << '\n';
  }
  model.stream().write(proto.data(), static_cast<std::streamsize>(proto.size()));
  vocab.commit();
  model.commit();  // the model last: it is what readers open
}

std::unordered_map<std::string, std::string> trainer_arguments(const SentencePieceTrainOptions& o) {
  if (o.model_type != "bpe" && o.model_type != "unigram")
    throw ConfigError("train-tokenizer: --model-type must be bpe or unigram, got '" + o.model_type + "'");
  // (SentencePiece's own checks name neither flag: "Internal: trainer_interface.cc(56) [vocab_size > 0]")
  if (o.vocab_size < 1 || o.vocab_size > INT32_MAX)
    throw ConfigError("train-tokenizer: --vocab-size must be in [1, 2^31), got " + std::to_string(o.vocab_size));
  if (!(o.character_coverage >= 0.98 && o.character_coverage <= 1))
    throw ConfigError("train-tokenizer: --character-coverage must be in [0.98, 1] (SentencePiece's range), got " +
                      std::to_string(o.character_coverage));
  std::unordered_map<std::string, std::string> kw;
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
  // ids: <unk>=0 <s>=1 </s>=2 (GPTSentencePieceTokenizer's EOD), no padding piece (SentencePiece's
  // defaults; SentencePieceTokenizer adds <CLS> <SEP> <EOD> <MASK> <PAD> after the pieces)
  return kw;
}

}  // namespace

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
  std::unordered_map<std::string, std::string> kw = trainer_arguments(o);
  std::string inputs;
  for (const std::string& f : o.inputs) inputs += (inputs.empty() ? "" : ",") + f;
  kw["input"] = inputs;
  train_and_publish(std::move(kw), o.model_prefix, nullptr);
}

void train_sentencepiece_on_documents(const std::vector<std::string>& files, const InputOptions& input,
                                      const SentencePieceTrainOptions& options) {
  // One pass over the input (stdin cannot be read twice); an input without text is said so by
  // name, instead of the trainer's own words for it.
  std::unordered_map<std::string, std::string> kw = trainer_arguments(options);  // (its refusals first)
  DocumentLines lines(files, input);
  train_and_publish(std::move(kw), options.model_prefix, &lines, [&] {
    const std::string first = files.empty() || files[0] == "-" ? std::string("<stdin>") : files[0];
    if (lines.text_bytes() == 0)
      throw ConfigError("train-tokenizer: " +
                        (files.size() > 1 ? "the --input files (" + first + ", ...) hold" : "--input " + first + " holds") +
                        " no text to learn a vocabulary from");
  });
}

}  // namespace llm
