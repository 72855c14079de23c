// SentencePiece training/encoding through the library, the byte and null tokenizers, and
// tokenizer identities.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "core/philox.h"
#include "data/sentencepiece_tokenizer.h"
#include "data/simple_tokenizers.h"
#include "support/scratch_dir.h"

using namespace llm;
namespace fs = std::filesystem;

namespace {

// This process's files: ctest runs each test of this binary as its own process, in parallel, so
// fixed names under TempDir() had two processes training the same model file at once.
const llm::testing::ScratchDir& scratch() {
  static const llm::testing::ScratchDir dir("llm-tokenizer-test");
  return dir;
}

// A small corpus with a fixed vocabulary of words and some punctuation and numbers.
std::string corpus_file() {
  static const std::string path = [] {
    const std::string p = scratch() / "spm-corpus.txt";
    const char* words[] = {"the", "king", "said", "unto", "them", "and", "light", "was", "good",
                           "earth", "water", "heaven", "day", "night", "firmament", "waters", "made",
                           "God", "created", "beginning", "form", "void", "darkness", "deep", "spirit"};
    std::ofstream out(p);
    for (int line = 0; line < 3000; ++line) {
      const int n = 5 + static_cast<int>(philox_below(1, 1, line, 12));
      for (int w = 0; w < n; ++w) out << (w ? " " : "") << words[philox_below(1, 2, line * 100 + w, 25)];
      out << (line % 3 ? "." : ", 42;") << "\n";
    }
    return p;
  }();
  return path;
}

std::string trained_model(const std::string& type, const std::vector<std::string>& user = {},
                          int64_t vocab = 400) {
  SentencePieceTrainOptions o;
  o.inputs = {corpus_file()};
  o.model_prefix = scratch() / ("spm-" + type + (user.empty() ? "" : "-user"));
  o.vocab_size = vocab;  // 256 byte-fallback pieces + 3 specials + learned pieces
  o.model_type = type;
  o.user_defined_symbols = user;
  o.num_threads = 2;
  train_sentencepiece(o);
  return o.model_prefix + ".model";
}

}  // namespace

TEST(SentencePiece, TrainBpeEncodeDecodeRoundTrip) {
  SentencePieceTokenizer tok(trained_model("bpe"), SentencePieceTokenizer::Variant::gpt);
  EXPECT_EQ(tok.vocab_size(), 400);
  EXPECT_EQ(tok.eod_id(), 2);  // </s>
  EXPECT_EQ(tok.identity().kind, "GPTSentencePieceTokenizer");
  const std::string text = "the king said unto them, 42; light was good.";
  auto ids = tok.encode(text);
  EXPECT_LT(ids.size(), text.size() / 2);  // words merge into few pieces
  EXPECT_EQ(tok.decode(ids), text);
  // token_bytes concatenation reproduces the text (minus SentencePiece's leading space)
  std::string cat;
  for (int32_t id : ids) cat += tok.token_bytes(id);
  EXPECT_EQ(cat, " " + text);
  // byte fallback: characters never seen still round-trip, as raw bytes
  const std::string unseen = "naïve 😀 Ω";
  EXPECT_EQ(tok.decode(tok.encode(unseen)), unseen);
  std::string bytes;
  for (int32_t id : tok.encode("😀")) bytes += tok.token_bytes(id);
  EXPECT_EQ(bytes, " 😀");
  // control pieces (<s>, and </s>: the end of a document) stream as nothing, as Decode prints them
  EXPECT_EQ(tok.token_bytes(1), "");
  EXPECT_EQ(tok.token_bytes(2), "");
  EXPECT_EQ(tok.decode(std::vector<int32_t>{1, 2}), "");
}

// Megatron's _SentencePieceTokenizer over a model trained here (<unk> <s> </s> + 397 pieces, no
// pad piece): <CLS> 400, <SEP> 401, <EOD> 402, <MASK> 403, <PAD> 404, then <s> and </s> are the
// model's 1 and 2; a vocabulary of 405. A special's text encodes to its id, the text on either
// side encoded on its own; decoding writes it back with a space either side.
TEST(SentencePiece, MegatronSpecialTokensFollowTheModelsPieces) {
  const std::string model = trained_model("bpe");
  SentencePieceTokenizer tok(model);
  SentencePieceTokenizer gpt(model, SentencePieceTokenizer::Variant::gpt);
  EXPECT_EQ(tok.model_pieces(), 400);
  EXPECT_EQ(tok.vocab_size(), 405);
  EXPECT_EQ(tok.eod_id(), 402);
  const std::vector<std::pair<std::string, int32_t>> want{{"<CLS>", 400}, {"<SEP>", 401}, {"<EOD>", 402}, {"<MASK>", 403},
                                                         {"<PAD>", 404}, {"<s>", 1},     {"</s>", 2}};
  EXPECT_EQ(tok.special_tokens(), want);
  EXPECT_EQ(tok.identity().kind, "SentencePieceTokenizer");
  EXPECT_NE(tok.identity(), gpt.identity());  // the same file, two tokenizers
  const std::vector<int32_t> a = gpt.encode("the king"), b = gpt.encode("said unto them");
  std::vector<int32_t> want_ids = a;
  want_ids.push_back(402);
  want_ids.insert(want_ids.end(), b.begin(), b.end());
  want_ids.push_back(2);
  EXPECT_EQ(tok.encode("the king<EOD>said unto them</s>"), want_ids);
  // the earliest special first; plain text is the model's encoding
  EXPECT_EQ(tok.encode("light was good"), gpt.encode("light was good"));
  EXPECT_EQ(gpt.encode("a<EOD>b"), gpt.encode_whole("a<EOD>b"));  // GPTSentencePieceTokenizer: no specials
  EXPECT_EQ(tok.decode(want_ids), "the king <EOD> said unto them </s> ");
  EXPECT_EQ(tok.token_bytes(402), "<EOD>");
  EXPECT_EQ(tok.token_bytes(404), "<PAD>");
  EXPECT_THROW(tok.token_bytes(405), Error);
}

TEST(SentencePiece, UnigramAndUserDefinedSymbols) {
  SentencePieceTokenizer uni(trained_model("unigram", {}, 300));
  const std::string text = "God created the heaven and the earth.";
  EXPECT_EQ(uni.decode(uni.encode(text)), text);
  SentencePieceTokenizer user(trained_model("bpe", {"<|user|>", "<|assistant|>"}));
  auto ids = user.encode("<|user|> hello <|assistant|>");
  int specials = 0;
  for (int32_t id : ids) specials += user.token_bytes(id) == "<|user|>" || user.token_bytes(id) == "<|assistant|>";
  EXPECT_EQ(specials, 2);
  EXPECT_NE(uni.identity(), user.identity());
  EXPECT_EQ(uni.identity().kind, "SentencePieceTokenizer");
  EXPECT_EQ(SentencePieceTokenizer(trained_model("unigram", {}, 300)).identity(), uni.identity());
}

TEST(SentencePiece, ClearErrors) {
  EXPECT_THROW(SentencePieceTokenizer("/nonexistent.model"), ConfigError);
  const std::string junk = scratch() / "junk.model";
  std::ofstream(junk) << "not a model";
  try {
    SentencePieceTokenizer t(junk);
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("junk.model"), std::string::npos);
  }
  SentencePieceTrainOptions o;
  o.inputs = {"/nonexistent.txt"};
  o.model_prefix = scratch() / "x";
  EXPECT_THROW(train_sentencepiece(o), ConfigError);
  o.inputs = {corpus_file()};
  o.model_type = "wordpiece";
  EXPECT_THROW(train_sentencepiece(o), ConfigError);
  // flags out of SentencePiece's range are named (its own message was an internal check)
  o.model_type = "bpe";
  auto message = [&] {
    try {
      train_sentencepiece(o);
    } catch (const ConfigError& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  for (int64_t v : {int64_t{0}, int64_t{-5}, int64_t{99999999999}}) {
    o.vocab_size = v;
    EXPECT_EQ(message(), "train-tokenizer: --vocab-size must be in [1, 2^31), got " + std::to_string(v));
  }
  o.vocab_size = 300;
  o.character_coverage = 2;
  EXPECT_NE(message().find("train-tokenizer: --character-coverage must be in [0.98, 1] (SentencePiece's range), got 2"),
            std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(o.model_prefix + ".model"));
}

TEST(SimpleTokenizers, ByteAndNull) {
  ByteTokenizer b;
  const std::string s = std::string("a\0b\xff", 4);
  auto ids = b.encode(s);
  EXPECT_EQ(ids, (std::vector<int32_t>{97, 0, 98, 255}));
  EXPECT_EQ(b.decode(ids), s);
  EXPECT_EQ(b.eod_id(), 256);
  NullTokenizer n(1000);
  EXPECT_EQ(n.encode(" 1 22\n333 "), (std::vector<int32_t>{1, 22, 333}));
  EXPECT_EQ(n.vocab_size(), 1001);
  EXPECT_EQ(n.eod_id(), 1000);
  EXPECT_THROW(n.encode("1 1000"), ConfigError);
  EXPECT_THROW(n.encode("1 x"), ConfigError);
  EXPECT_NE(NullTokenizer(5).identity(), NullTokenizer(6).identity());
}

// Line-by-line encoding (the fast path) must give exactly the ids of encoding the whole text.
TEST(SentencePiece, LineSplitEncodingEqualsWholeEncoding) {
  SentencePieceTokenizer tok(trained_model("bpe"));
  EXPECT_TRUE(tok.splits_lines());
  std::string text;
  for (int i = 0; i < 400; ++i) {
    const uint64_t r = philox_below(9, 1, i, 6);
    text += r == 0 ? "\n" : r == 1 ? "  \n " : r == 2 ? "\t" : r == 3 ? " the king, " : r == 4 ? "light\n\n" : "X\xC3\xA9 42.";
  }
  EXPECT_EQ(tok.encode(text), tok.encode_whole(text));
  SentencePieceTokenizer uni(trained_model("unigram", {}, 300));
  EXPECT_EQ(uni.encode(text), uni.encode_whole(text));
  for (const char* s : {"", "\n", "\n\n\n", " \n ", "a\n", "\na"}) EXPECT_EQ(tok.encode(s), tok.encode_whole(s)) << s;
}
