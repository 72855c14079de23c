#include <gtest/gtest.h>

#include <fstream>

#include "core/error.h"
#include "core/philox.h"
#include "data/dataset.h"
#include "data/simple_tokenizers.h"
#include "data/text_documents.h"
#include "data/tokenize_job.h"
#include "support/scratch_dir.h"
#include "support/config_error.h"

using namespace llm;

namespace {

std::string write(const std::string& name, const std::string& text) {
  const std::string p = ::testing::TempDir() + "/" + name;
  std::ofstream(p, std::ios::binary) << text;
  return p;
}

std::vector<std::string> read_all(const std::vector<std::string>& files, const InputOptions& o, int rank = 0,
                                  int world = 1, InputStats* stats = nullptr, size_t batch = 1 << 20) {
  DocumentReader r(files, o, rank, world);
  std::vector<std::string> docs;
  std::vector<RawDocument> out;
  while (r.next_batch(out, batch)) {
    for (auto& d : out) docs.push_back(d.text);
    out.clear();
  }
  for (auto& d : out) docs.push_back(d.text);
  if (stats) *stats = r.stats();
  return docs;
}

using llm::testing::error_of;

// A text of n paragraphs with varying line counts, blank-line runs and CRLF here and there.
std::string paragraphs(int n, uint64_t seed) {
  std::string s;
  for (int p = 0; p < n; ++p) {
    const int lines = 1 + static_cast<int>(philox_below(seed, 1, p, 4));
    for (int l = 0; l < lines; ++l) s += "para " + std::to_string(p) + " line " + std::to_string(l) + (p % 5 == 2 ? "\r\n" : "\n");
    s += std::string(1 + philox_below(seed, 2, p, 3), '\n');
  }
  return s;
}

}  // namespace

TEST(DocumentReader, BlankLineLineAndFileModes) {
  const std::string f = write("docs.txt", "\n\nfirst para\nstill first\n\n \n\t\nsecond\n\n\nthird\n");
  InputOptions o;
  o.boundary = DocumentBoundary::blank_line;
  EXPECT_EQ(read_all({f}, o), (std::vector<std::string>{"first para\nstill first", "second", "third"}));
  o.boundary = DocumentBoundary::line;
  InputStats st;
  EXPECT_EQ(read_all({f}, o, 0, 1, &st), (std::vector<std::string>{"first para", "still first", "second", "third"}));
  EXPECT_EQ(st.empty_skipped, 7);  // the blank and whitespace-only lines
  o.boundary = DocumentBoundary::file;
  const std::string g = write("docs2.txt", "another file\n");
  auto docs = read_all({f, g}, o);
  ASSERT_EQ(docs.size(), 2u);
  EXPECT_EQ(docs[1], "another file\n");
}

// Windows line ends: CRLF ends a line as LF does; no document keeps the '\r' of its last line.
TEST(DocumentReader, CrlfLineEndsAreStripped) {
  const std::string f = write("crlf.txt", "first para\r\nstill first\r\n\r\nsecond\r\n");
  InputOptions o;
  o.boundary = DocumentBoundary::line;
  EXPECT_EQ(read_all({f}, o), (std::vector<std::string>{"first para", "still first", "second"}));
  o.boundary = DocumentBoundary::blank_line;
  const std::vector<std::string> paras = read_all({f}, o);
  ASSERT_EQ(paras.size(), 2u);
  EXPECT_EQ(paras[1], "second");
  EXPECT_EQ(paras[0].back(), 't') << paras[0];
}

TEST(DocumentReader, JsonLinesWithKeysAndBadLines) {
  const std::string f = write("docs.jsonl",
                              "{\"text\": \"hello\\nworld\", \"id\": 1}\n"
                              "not json\n"
                              "{\"id\": 2}\n"
                              "\n"
                              "{\"text\": \"caf\\u00e9 \\ud83d\\ude00\", \"title\": \"T\"}\n"
                              "[1, 2]\n");
  InputOptions o;
  o.format = InputFormat::jsonl;
  InputStats st;
  EXPECT_EQ(read_all({f}, o, 0, 1, &st), (std::vector<std::string>{"hello\nworld", "caf\xC3\xA9 \xF0\x9F\x98\x80"}));
  EXPECT_EQ(st.bad_json_skipped, 3);
  o.fail_on_bad_json = true;
  std::string e = error_of([&] { read_all({f}, o); });
  EXPECT_NE(e.find("docs.jsonl:2"), std::string::npos) << e;
  o.fail_on_bad_json = false;
  o.json_keys = {"title", "text"};
  EXPECT_EQ(read_all({f}, o), (std::vector<std::string>{"T", "caf\xC3\xA9 \xF0\x9F\x98\x80"}));
}

// A rank past the first starts after a seek, where line numbers are unknown: a bad record is
// named by its byte offset and column, never as line 1 of the file.
TEST(DocumentReader, JsonLineErrorsNameTheRecordOnEveryRank) {
  std::string jl;
  for (int i = 0; i < 40; ++i) jl += "{\"text\": \"doc " + std::to_string(i) + "\"}\n";
  const size_t bad_at = jl.size();
  jl += "{\"text\": oops}\n";
  for (int i = 0; i < 3; ++i) jl += "{\"text\": \"tail\"}\n";
  const std::string f = write("ranked.jsonl", jl);
  InputOptions o;
  o.format = InputFormat::jsonl;
  o.fail_on_bad_json = true;
  const std::string one = error_of([&] { read_all({f}, o); });
  EXPECT_NE(one.find("ranked.jsonl:41 (byte " + std::to_string(bad_at) + "), column 10: "), std::string::npos) << one;
  const std::string two = error_of([&] { read_all({f}, o, 1, 2); });
  EXPECT_NE(two.find("ranked.jsonl (byte " + std::to_string(bad_at) + "), column 10: "), std::string::npos) << two;
  EXPECT_EQ(two.find(":1:"), std::string::npos) << two;
  // a record without the key is named the same way
  const std::string g = write("nokey.jsonl", jl.substr(0, bad_at) + "{\"id\": 3}\n");
  const std::string e = error_of([&] { read_all({g}, o, 1, 2); });
  EXPECT_NE(e.find("nokey.jsonl (byte " + std::to_string(bad_at) + "): no key 'text'"), std::string::npos) << e;
}

// A document the tokenizer refuses is one clear error naming its file and line (an exception
// inside the parallel encoding loop used to end the process in std::terminate).
TEST(TokenizeJob, ATokenizerErrorNamesTheDocument) {
  const llm::testing::ScratchDir tmp("tokenize-job");
  const std::string f = tmp / "ids.txt";
  std::ofstream(f) << "1 2 3\n4 5\n6 abc\n7\n";
  InputOptions o;
  o.boundary = DocumentBoundary::line;
  DocumentReader reader({f}, o);
  NullTokenizer tok(100);
  const DatasetInfo info{tok.identity(), tok.vocab_size(), tok.eod_id()};
  DatasetPartWriter writer(tmp / "staging", 0, info);
  const std::string e = error_of([&] { tokenize_documents(reader, tok, writer, TokenizeOptions{}); });
  EXPECT_NE(e.find("ids.txt:3 (byte 10): cannot tokenize the document: NullTokenizer: expected an integer id"),
            std::string::npos)
      << e;
}

TEST(DocumentReader, InvalidUtf8IsRepairedOrRefusedWithItsLocation) {
  const std::string f = write("bad-utf8.txt", "good line\nbad \xFF byte\n");
  InputOptions o;
  o.boundary = DocumentBoundary::line;
  InputStats st;
  auto docs = read_all({f}, o, 0, 1, &st);
  EXPECT_EQ(docs[1], "bad \xEF\xBF\xBD byte");
  EXPECT_EQ(st.utf8_replaced, 1);
  o.fail_on_invalid_utf8 = true;
  std::string e = error_of([&] { read_all({f}, o); });
  // the byte's own line and file offset (10 + 4), as an editor goes to it
  EXPECT_NE(e.find("bad-utf8.txt:2 (byte 14): invalid UTF-8 (in the document from line 2)"), std::string::npos) << e;
  // in a paragraph: its line, and the line the paragraph starts on
  const std::string para = write("bad-para.txt", "intro\n\nfirst line\nsecond \xFF line\n");
  o.boundary = DocumentBoundary::blank_line;
  e = error_of([&] { read_all({para}, o); });
  EXPECT_NE(e.find("bad-para.txt:4 (byte 25): invalid UTF-8 (in the document from line 3)"), std::string::npos) << e;
  EXPECT_NE(error_of([&] { read_all({"/nonexistent/input.txt"}, o); }).find("/nonexistent/input.txt"), std::string::npos);
}

// Ranks read disjoint parts; concatenated in rank order they are exactly the single-process
// documents, for every mode and several world sizes and batch sizes.
TEST(DocumentReader, RankPartsConcatenateToTheWhole) {
  const std::string a = write("part-a.txt", paragraphs(37, 1)), b = write("part-b.txt", paragraphs(23, 2));
  std::string jl;
  for (int i = 0; i < 61; ++i) jl += "{\"text\": \"doc " + std::to_string(i) + std::string(i % 7, 'x') + "\"}\n";
  const std::string j = write("part.jsonl", jl);
  struct Case {
    InputOptions o;
    std::vector<std::string> files;
  };
  std::vector<Case> cases;
  InputOptions o;
  o.boundary = DocumentBoundary::blank_line;
  cases.push_back({o, {a, b}});
  o.boundary = DocumentBoundary::line;
  cases.push_back({o, {a, b}});
  o.boundary = DocumentBoundary::file;
  cases.push_back({o, {a, b, a}});
  o.format = InputFormat::jsonl;
  cases.push_back({o, {j, j}});
  for (const Case& c : cases) {
    const auto whole = read_all(c.files, c.o);
    ASSERT_FALSE(whole.empty());
    for (int world : {2, 3, 5, 16}) {
      for (size_t batch : {size_t{1}, size_t{1} << 20}) {
        std::vector<std::string> joined;
        for (int r = 0; r < world; ++r) {
          auto part = read_all(c.files, c.o, r, world, nullptr, batch);
          joined.insert(joined.end(), part.begin(), part.end());
        }
        EXPECT_EQ(joined, whole) << "world " << world << " mode " << static_cast<int>(c.o.boundary)
                                 << " format " << static_cast<int>(c.o.format);
      }
    }
  }
}
