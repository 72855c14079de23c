// Sharded HDF5 token datasets: round trips, shard layout, atomic publishing, multi-rank
// assembly, and corrupt inputs (each error must name the file at fault).
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <csignal>

#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <regex>
#include <sstream>

#include "core/error.h"
#include "core/fsync.h"
#include "data/dataset.h"
#include "data/gpt_dataset.h"
#include "data/hdf5_util.h"
#include "support/scratch_dir.h"

using namespace llm;
namespace fs = std::filesystem;

namespace {

class TempDir : public llm::testing::ScratchDir {
 public:
  TempDir() : ScratchDir("llm-dataset-test") {}
};

DatasetInfo make_info(int64_t vocab, std::string hash = "00112233deadbeef") {
  return DatasetInfo{{"NullTokenizer", std::move(hash)}, vocab, static_cast<int32_t>(vocab - 1)};
}

using Docs = std::vector<std::vector<int32_t>>;

// Random documents of 0..max_len tokens (empty ones included).
Docs random_docs(int n, int64_t vocab, int max_len, uint32_t seed) {
  std::mt19937 rng(seed);
  Docs docs(static_cast<size_t>(n));
  for (auto& d : docs) {
    d.resize(rng() % static_cast<uint32_t>(max_len + 1));
    for (auto& t : d) t = static_cast<int32_t>(rng() % static_cast<uint64_t>(vocab));
  }
  return docs;
}

std::vector<int32_t> concat(const Docs& docs) {
  std::vector<int32_t> all;
  for (const auto& d : docs) all.insert(all.end(), d.begin(), d.end());
  return all;
}

void write_dataset(const std::string& dir, const DatasetInfo& info, const Docs& docs, int64_t shard_tokens,
                   bool overwrite = false) {
  DatasetWriter w(dir, info, shard_tokens, overwrite);
  for (const auto& d : docs) w.add_document(d);
  w.finish();
}

// The ConfigError message f throws ("" when none; other exception types fail the test).
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const ConfigError& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected ConfigError, got: " << e.what();
    return e.what();
  }
  return "";
}

void expect_same_documents(const Dataset& ds, const Docs& docs) {
  ASSERT_EQ(ds.num_documents(), static_cast<int64_t>(docs.size()));
  const auto all = concat(docs);
  ASSERT_EQ(ds.num_tokens(), static_cast<int64_t>(all.size()));
  for (size_t i = 0; i < docs.size(); ++i) {
    EXPECT_EQ(ds.document_length(static_cast<int64_t>(i)), static_cast<int64_t>(docs[i].size())) << "document " << i;
    EXPECT_EQ(ds.document(static_cast<int64_t>(i)), docs[i]) << "document " << i;
  }
  std::vector<int32_t> stream(all.size());
  ds.read(0, static_cast<int64_t>(stream.size()), stream.data());
  EXPECT_EQ(stream, all);
}

std::string read_text(const std::string& path) { return read_whole_file(path, "test file"); }

void write_text(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

}  // namespace

// ---- Round trips ----------------------------------------------------------------------------

TEST(Dataset, RoundTripAcrossShards) {
  TempDir tmp;
  const auto info = make_info(1000);
  const Docs docs = random_docs(60, 1000, 40, 1);
  write_dataset(tmp / "ds", info, docs, 100);
  EXPECT_EQ(tmp.entries(), std::vector<std::string>{"ds"});  // no staging directory left

  const Dataset ds = Dataset::open(tmp / "ds");
  EXPECT_EQ(ds.info(), info);
  EXPECT_GT(ds.num_shards(), 5);
  expect_same_documents(ds, docs);
  EXPECT_EQ(ds.document_offsets().size(), docs.size() + 1);
  EXPECT_NE(ds.describe().find(tmp / "ds"), std::string::npos);

  // The manifest is plain JSON with the documented keys.
  const std::string manifest = read_text(tmp / "ds/manifest.json");
  for (const char* key : {"\"format\": \"libllm-token-dataset\"", "\"version\": 1", "\"kind\": \"NullTokenizer\"",
                          "\"dtype\": \"uint16\"", "\"file\": \"shard_00000.h5\""})
    EXPECT_NE(manifest.find(key), std::string::npos) << key;
}

TEST(Dataset, ShardsCloseAtTheFirstDocumentBoundaryPastShardTokens) {
  TempDir tmp;
  const Docs docs = random_docs(80, 500, 30, 2);
  write_dataset(tmp / "ds", make_info(500), docs, 64);
  const Dataset ds = Dataset::open(tmp / "ds");
  // Re-derive the expected layout: a new shard starts when the current one has >= 64 tokens.
  std::vector<int64_t> expected{0};
  bool open = false;
  int64_t docs_in_shard = 0;
  for (const auto& d : docs) {
    if (open && expected.back() >= 64) {
      expected.push_back(0);
      docs_in_shard = 0;
    }
    open = true;
    expected.back() += static_cast<int64_t>(d.size());
    ++docs_in_shard;
  }
  ASSERT_EQ(ds.num_shards(), static_cast<int64_t>(expected.size()));
  for (size_t s = 0; s < expected.size(); ++s) {
    char name[32];
    std::snprintf(name, sizeof name, "shard_%05zu.h5", s);
    const h5::File f = h5::File::open(tmp / ("ds/" + std::string(name)));
    EXPECT_EQ(f.read_int64_attribute("num_tokens"), expected[s]) << name;
    EXPECT_EQ(f.read_string_attribute("tokenizer_kind"), "NullTokenizer");
    EXPECT_EQ(f.read_int64_attribute("format_version"), 1);
    const auto offsets = f.open_dataset("doc_offsets").read_all<uint64_t>();
    EXPECT_EQ(offsets.front(), 0u);
    EXPECT_EQ(offsets.back(), static_cast<uint64_t>(expected[s]));
  }
}

// A shard that reaches --shard-tokens exactly is closed: the next document starts the next one.
TEST(Dataset, AShardExactlyAtShardTokensIsClosed) {
  TempDir tmp;
  const Docs docs{{1, 2, 3, 4}, {5, 6, 7, 8}, {9, 10, 11, 12}, {13}};
  write_dataset(tmp / "ds", make_info(100), docs, 8);
  const Dataset ds = Dataset::open(tmp / "ds");
  ASSERT_EQ(ds.num_shards(), 2);
  EXPECT_EQ(h5::File::open(tmp / "ds/shard_00000.h5").read_int64_attribute("num_tokens"), 8);
  EXPECT_EQ(h5::File::open(tmp / "ds/shard_00001.h5").read_int64_attribute("num_tokens"), 5);
  expect_same_documents(ds, docs);
}

TEST(Dataset, TokenTypeFollowsVocabSize) {
  TempDir tmp;
  const Docs small{{0, 65535, 7}, {65535}};
  write_dataset(tmp / "u16", make_info(65536), small, 1000);
  const Docs large{{0, 65536, 7}, {2147483647}};
  write_dataset(tmp / "u32", make_info(int64_t{1} << 31), large, 1000);
  // The first vocabulary that needs 32 bits: its last id, 65536, is one past uint16.
  const Docs edge{{65536, 0, 65535}, {65536}};
  write_dataset(tmp / "edge", make_info(65537), edge, 1000);
  EXPECT_TRUE(h5::File::open(tmp / "edge/shard_00000.h5").open_dataset("tokens").type().equals(H5T_STD_U32LE));
  expect_same_documents(Dataset::open(tmp / "edge"), edge);

  EXPECT_NE(read_text(tmp / "u16/manifest.json").find("\"dtype\": \"uint16\""), std::string::npos);
  EXPECT_NE(read_text(tmp / "u32/manifest.json").find("\"dtype\": \"uint32\""), std::string::npos);
  EXPECT_TRUE(h5::File::open(tmp / "u16/shard_00000.h5").open_dataset("tokens").type().equals(H5T_STD_U16LE));
  EXPECT_TRUE(h5::File::open(tmp / "u32/shard_00000.h5").open_dataset("tokens").type().equals(H5T_STD_U32LE));
  expect_same_documents(Dataset::open(tmp / "u16"), small);
  expect_same_documents(Dataset::open(tmp / "u32"), large);
}

TEST(Dataset, ReadsAnyWindowAcrossShardBoundaries) {
  TempDir tmp;
  const Docs docs = random_docs(30, 300, 12, 3);
  write_dataset(tmp / "ds", make_info(300), docs, 16);
  const auto all = concat(docs);
  // Few open files at once: windows also exercise the reopen path.
  const Dataset ds = Dataset::open(tmp / "ds", 2);
  ASSERT_GT(ds.num_shards(), 4);
  const int64_t total = ds.num_tokens();
  std::vector<int32_t> buf;
  for (int64_t off = 0; off < total; ++off) {
    for (int64_t n : {int64_t{0}, int64_t{1}, int64_t{7}, int64_t{33}}) {
      if (off + n > total) continue;
      buf.assign(static_cast<size_t>(n), -1);
      ds.read(off, n, buf.data());
      ASSERT_TRUE(std::equal(buf.begin(), buf.end(), all.begin() + off)) << "offset " << off << " n " << n;
    }
  }
  EXPECT_THROW(ds.read(total - 1, 2, buf.data()), Error);
}

TEST(Dataset, EmptyDocumentsAndEmptyDatasetsAreKept) {
  TempDir tmp;
  const Docs docs{{}, {5, 6}, {}, {}, {7}};
  write_dataset(tmp / "a", make_info(10), docs, 1);
  expect_same_documents(Dataset::open(tmp / "a"), docs);

  write_dataset(tmp / "none", make_info(10), {}, 100);
  const Dataset none = Dataset::open(tmp / "none");
  EXPECT_EQ(none.num_documents(), 0);
  EXPECT_EQ(none.num_tokens(), 0);
  EXPECT_EQ(none.num_shards(), 0);
}

TEST(Dataset, ServesAsTheDocumentStoreOfAGPTDataset) {
  TempDir tmp;
  const Docs docs = random_docs(40, 100, 20, 4);
  write_dataset(tmp / "ds", make_info(100), docs, 50);
  auto store = std::make_shared<Dataset>(Dataset::open(tmp / "ds"));
  const GPTDataset gpt(store, {0, store->num_documents()}, 8, 20, 1234, "train");
  const auto all = concat(docs);
  std::vector<int32_t> sample(9);
  for (uint64_t i = 0; i < gpt.num_samples(); ++i) {
    gpt.sample(i, sample.data());  // windows of the shuffled document order; ids come from the files
    for (int32_t t : sample) EXPECT_TRUE(t >= 0 && t < 100);
  }
  EXPECT_EQ(store->vocab_size(), 100);
}

// ---- Writer input checks and atomic publishing ----------------------------------------------

TEST(Dataset, RejectsIdsOutsideTheVocabularyNamingTheDocument) {
  TempDir tmp;
  DatasetWriter w(tmp / "ds", make_info(50), 100);
  w.add_document(std::vector<int32_t>{1, 2});
  w.add_document(std::vector<int32_t>{3});
  std::string e = error_of([&] { w.add_document(std::vector<int32_t>{4, 50}); });
  EXPECT_NE(e.find("document 2"), std::string::npos) << e;
  EXPECT_NE(e.find("token id 50"), std::string::npos) << e;
  e = error_of([&] { w.add_document(std::vector<int32_t>{-1}); });
  EXPECT_NE(e.find("document 2"), std::string::npos) << e;
  w.add_document(std::vector<int32_t>{9});  // the rejected documents left no trace
  w.finish();
  expect_same_documents(Dataset::open(tmp / "ds"), Docs{{1, 2}, {3}, {9}});

  EXPECT_NE(error_of([&] { DatasetWriter(tmp / "x", make_info(0), 10); }).find("vocab_size"), std::string::npos);
  EXPECT_NE(error_of([&] { DatasetWriter(tmp / "x", DatasetInfo{{"k", "h"}, 10, 10}, 10); }).find("eod_id"),
            std::string::npos);
}

// A Megatron script's --data-path is a .bin/.idx prefix: the error says how to convert it.
TEST(Dataset, AMegatronPrefixIsNamedWithItsConversion) {
  TempDir tmp;
  std::ofstream(tmp / "corpus_text_document.bin") << "x";
  std::ofstream(tmp / "corpus_text_document.idx") << "x";
  try {
    (void)Dataset::open(tmp / "corpus_text_document");
    ADD_FAILURE() << "opened a Megatron prefix as a dataset";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("a Megatron .bin/.idx dataset; convert it once with `llm-tokenize --from-megatron"),
              std::string::npos)
        << e.what();
  }
  EXPECT_THROW((void)Dataset::open(tmp / "nothing"), ConfigError);
}

// Megatron's output name for a dataset llm-tokenize wrote as PREFIX: the error names PREFIX.
TEST(Dataset, AMegatronStyleNameOfADatasetMadeHereNamesIt) {
  TempDir tmp;
  {
    DatasetWriter w(tmp / "corpus", DatasetInfo{{"ByteTokenizer", "256"}, 257, 256}, 100);
    w.add_document(std::vector<int32_t>{1, 2, 3});
    w.finish();
  }
  try {
    (void)Dataset::open(tmp / "corpus_text_document");
    ADD_FAILURE() << "opened a missing dataset";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("is the dataset llm-tokenize wrote for that --output-prefix"), std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("pass " + (tmp / "corpus")), std::string::npos) << e.what();
  }
}

TEST(Dataset, WriterDestroyedWithoutFinishLeavesNothing) {
  TempDir tmp;
  {
    DatasetWriter w(tmp / "ds", make_info(100), 10);
    for (const auto& d : random_docs(20, 100, 10, 5)) w.add_document(d);
    EXPECT_TRUE(fs::is_directory(w.staging_dir()));
    EXPECT_EQ(fs::path(w.staging_dir()).parent_path(), tmp.path());
  }
  EXPECT_TRUE(tmp.entries().empty());
}

TEST(Dataset, ExistingDirectoryIsRefusedUnlessOverwrite) {
  TempDir tmp;
  const Docs a = random_docs(10, 100, 10, 6), b = random_docs(7, 100, 10, 7);
  write_dataset(tmp / "ds", make_info(100), a, 20);
  const std::string e = error_of([&] { DatasetWriter(tmp / "ds", make_info(100), 20); });
  EXPECT_NE(e.find(tmp / "ds"), std::string::npos) << e;
  EXPECT_NE(e.find("already exists"), std::string::npos) << e;

  // An overwrite that is interrupted keeps the old dataset.
  {
    DatasetWriter w(tmp / "ds", make_info(100), 20, true);
    w.add_document(b[0]);
  }
  expect_same_documents(Dataset::open(tmp / "ds"), a);

  write_dataset(tmp / "ds/", make_info(100), b, 20, true);  // trailing slash: still a sibling staging dir
  expect_same_documents(Dataset::open(tmp / "ds"), b);
  EXPECT_EQ(tmp.entries(), std::vector<std::string>{"ds"});

  // Overwrite never replaces something that is not a dataset; an empty directory is fine.
  fs::create_directories(tmp / "notes");
  write_text(tmp / "notes/todo.txt", "keep me");
  EXPECT_NE(error_of([&] { write_dataset(tmp / "notes", make_info(100), b, 20, true); }).find("not a libllm token dataset"),
            std::string::npos);
  EXPECT_EQ(read_text(tmp / "notes/todo.txt"), "keep me");
  fs::create_directories(tmp / "empty");
  write_dataset(tmp / "empty", make_info(100), b, 20, true);
  expect_same_documents(Dataset::open(tmp / "empty"), b);
}

// ---- Corrupt datasets: each error names the file at fault -----------------------------------

class DatasetCorruption : public ::testing::Test {
 protected:
  void SetUp() override {
    docs_ = random_docs(40, 1000, 30, 8);
    write_dataset(dir(), make_info(1000), docs_, 100);
    ASSERT_GE(Dataset::open(dir()).num_shards(), 3);
  }
  std::string dir() const { return tmp_ / "ds"; }
  std::string file(const std::string& name) const { return dir() + "/" + name; }
  std::string open_error() const {
    return error_of([&] { Dataset::open(dir()); });
  }
  TempDir tmp_;
  Docs docs_;
};

TEST_F(DatasetCorruption, TruncatedShard) {
  for (uintmax_t cut : {uintmax_t{1}, uintmax_t{600}}) {
    const std::string path = file("shard_00001.h5");
    const std::string backup = path + ".bak";
    fs::copy_file(path, backup);
    fs::resize_file(path, fs::file_size(path) - cut);
    const std::string e = open_error();
    EXPECT_NE(e.find("shard_00001.h5"), std::string::npos) << e;
    fs::rename(backup, path);
  }
  EXPECT_EQ(open_error(), "");
}

TEST_F(DatasetCorruption, ManifestCountDisagreesWithShard) {
  // Self-consistent manifest (entry and total both changed), but shard 1 holds other counts.
  std::string m = read_text(file("manifest.json"));
  std::smatch entry, total;
  ASSERT_TRUE(std::regex_search(m, entry, std::regex(R"("shard_00001.h5", "num_tokens": (\d+))")));
  ASSERT_TRUE(std::regex_search(m, total, std::regex(R"(\n  "num_tokens": (\d+))")));
  const long long t1 = std::stoll(entry[1]), tt = std::stoll(total[1]);
  m = std::regex_replace(m, std::regex(R"("shard_00001.h5", "num_tokens": \d+)"),
                         "\"shard_00001.h5\", \"num_tokens\": " + std::to_string(t1 + 1));
  m = std::regex_replace(m, std::regex(R"(\n  "num_tokens": \d+)"), "\n  \"num_tokens\": " + std::to_string(tt + 1));
  write_text(file("manifest.json"), m);
  std::string e = open_error();
  EXPECT_NE(e.find("shard_00001.h5"), std::string::npos) << e;
  EXPECT_NE(e.find("num_tokens"), std::string::npos) << e;

  // Only the total changed: the manifest contradicts itself.
  m = std::regex_replace(m, std::regex(R"(\n  "num_tokens": \d+)"), "\n  \"num_tokens\": " + std::to_string(tt + 5));
  write_text(file("manifest.json"), m);
  e = open_error();
  EXPECT_NE(e.find("manifest.json"), std::string::npos) << e;
  EXPECT_NE(e.find("num_tokens"), std::string::npos) << e;
}

TEST_F(DatasetCorruption, ShardAttributeDisagreesWithManifest) {
  h5::File::open(file("shard_00002.h5"), true).write_int64_attribute("num_documents", 1);
  const std::string e = open_error();
  EXPECT_NE(e.find("shard_00002.h5"), std::string::npos) << e;
  EXPECT_NE(e.find("num_documents"), std::string::npos) << e;
}

TEST_F(DatasetCorruption, ShardWithAnotherTokenizer) {
  h5::File::open(file("shard_00002.h5"), true).write_string_attribute("tokenizer_hash", "ffffffffffffffff");
  const std::string e = open_error();
  EXPECT_NE(e.find("shard_00002.h5"), std::string::npos) << e;
  EXPECT_NE(e.find("ffffffffffffffff"), std::string::npos) << e;
  EXPECT_NE(e.find("00112233deadbeef"), std::string::npos) << e;
  EXPECT_NE(e.find("shard_00000.h5"), std::string::npos) << e;  // the shard it differs from
}

TEST_F(DatasetCorruption, ShardWithAnotherVocabulary) {
  h5::File::open(file("shard_00001.h5"), true).write_int64_attribute("vocab_size", 70000);
  const std::string e = open_error();
  EXPECT_NE(e.find("shard_00001.h5"), std::string::npos) << e;
  EXPECT_NE(e.find("vocab_size"), std::string::npos) << e;
}

TEST_F(DatasetCorruption, MissingShard) {
  fs::remove(file("shard_00001.h5"));
  const std::string e = open_error();
  EXPECT_NE(e.find("shard_00001.h5"), std::string::npos) << e;
  EXPECT_NE(e.find("missing"), std::string::npos) << e;
}

TEST_F(DatasetCorruption, ManifestIsNotJson) {
  for (const char* text : {"this is not json\n", "{\"format\": \"libllm-token-dataset\", \"version\": [1,\n", ""}) {
    write_text(file("manifest.json"), text);
    const std::string e = open_error();
    EXPECT_NE(e.find("manifest.json"), std::string::npos) << e;
  }
  fs::remove(file("manifest.json"));
  EXPECT_NE(open_error().find("manifest.json"), std::string::npos);
}

TEST_F(DatasetCorruption, ManifestMissingOrBadKey) {
  const std::string good = read_text(file("manifest.json"));
  write_text(file("manifest.json"), std::regex_replace(good, std::regex(R"(\n  "vocab_size": \d+,)"), ""));
  std::string e = open_error();
  EXPECT_NE(e.find("manifest.json"), std::string::npos) << e;
  EXPECT_NE(e.find("'vocab_size'"), std::string::npos) << e;

  write_text(file("manifest.json"), std::regex_replace(good, std::regex(R"("version": 1)"), "\"version\": 2"));
  e = open_error();
  EXPECT_NE(e.find("'version'"), std::string::npos) << e;

  write_text(file("manifest.json"), std::regex_replace(good, std::regex(R"("dtype": "uint16")"), "\"dtype\": \"uint32\""));
  e = open_error();
  EXPECT_NE(e.find("'dtype'"), std::string::npos) << e;

  write_text(file("manifest.json"), std::regex_replace(good, std::regex(R"("shard_00001.h5")"), "\"../shard_00001.h5\""));
  e = open_error();
  EXPECT_NE(e.find("plain file name"), std::string::npos) << e;
}

TEST_F(DatasetCorruption, DocumentOffsetsNotMonotone) {
  {
    h5::File f = h5::File::open(file("shard_00000.h5"), true);
    h5::Dataset d = f.open_dataset("doc_offsets");
    const uint64_t big = 1u << 20;
    d.write<uint64_t>(1, std::span<const uint64_t>(&big, 1));
  }
  const std::string e = open_error();
  EXPECT_NE(e.find("shard_00000.h5"), std::string::npos) << e;
  EXPECT_NE(e.find("doc_offsets"), std::string::npos) << e;
}

TEST_F(DatasetCorruption, DocumentOffsetsEndingShortOfTheTokens) {
  {  // still non-decreasing, but the last document ends one token early
    h5::File f = h5::File::open(file("shard_00001.h5"), true);
    h5::Dataset d = f.open_dataset("doc_offsets");
    std::vector<uint64_t> off = d.read_all<uint64_t>();
    ASSERT_GE(off.size(), 2u);
    const uint64_t shorter = off.back() - 1;
    ASSERT_GE(shorter, off[off.size() - 2]);
    d.write<uint64_t>(static_cast<int64_t>(off.size()) - 1, std::span<const uint64_t>(&shorter, 1));
  }
  const std::string e = open_error();
  EXPECT_NE(e.find("shard_00001.h5"), std::string::npos) << e;
  EXPECT_NE(e.find("last entry"), std::string::npos) << e;
}

TEST_F(DatasetCorruption, ManifestListingAShardTwice) {
  const std::string good = read_text(file("manifest.json"));
  write_text(file("manifest.json"), std::regex_replace(good, std::regex(R"("shard_00001.h5")"), "\"shard_00000.h5\""));
  const std::string e = open_error();
  EXPECT_NE(e.find("manifest.json"), std::string::npos) << e;
  EXPECT_NE(e.find("'shard_00000.h5' is listed twice"), std::string::npos) << e;
}

TEST_F(DatasetCorruption, ManifestWithTokensInNoDocuments) {
  const std::string good = read_text(file("manifest.json"));
  std::smatch m;
  ASSERT_TRUE(std::regex_search(good, m, std::regex(R"("shard_00001.h5", "num_tokens": (\d+), "num_documents": \d+)")));
  write_text(file("manifest.json"),
             std::regex_replace(good, std::regex(R"(("shard_00001.h5", "num_tokens": \d+, "num_documents": )\d+)"), "$010"));
  const std::string e = open_error();
  EXPECT_NE(e.find("manifest.json"), std::string::npos) << e;
  EXPECT_NE(e.find("shards[1]"), std::string::npos) << e;
  EXPECT_NE(e.find(m[1].str() + " tokens in 0 documents"), std::string::npos) << e;
}

// A shard replaced after the dataset was opened (kept open for one shard, so the others are
// opened when read): its token count no longer the manifest's, named, not read past its end.
TEST_F(DatasetCorruption, AShardReplacedAfterOpeningIsNamedOnRead) {
  const Dataset ds = Dataset::open(dir(), 1);
  const int64_t n1 = h5::File::open(file("shard_00001.h5")).read_int64_attribute("num_tokens");
  ASSERT_NE(h5::File::open(file("shard_00002.h5")).read_int64_attribute("num_tokens"), n1);
  fs::copy_file(file("shard_00002.h5"), file("shard_00001.h5"), fs::copy_options::overwrite_existing);
  std::vector<int32_t> all(static_cast<size_t>(ds.num_tokens()));
  const std::string e = error_of([&] { ds.read(0, ds.num_tokens(), all.data()); });
  EXPECT_NE(e.find("shard_00001.h5"), std::string::npos) << e;
  EXPECT_NE(e.find("changed after the dataset was opened"), std::string::npos) << e;
}

TEST_F(DatasetCorruption, TokenOutsideTheVocabularyIsCaughtOnRead) {
  {
    h5::File f = h5::File::open(file("shard_00001.h5"), true);
    const uint16_t bad = 1000;
    f.open_dataset("tokens").write<uint16_t>(0, std::span<const uint16_t>(&bad, 1));
  }
  const Dataset ds = Dataset::open(dir());
  std::vector<int32_t> all(static_cast<size_t>(ds.num_tokens()));
  const std::string e = error_of([&] { ds.read(0, ds.num_tokens(), all.data()); });
  EXPECT_NE(e.find("shard_00001.h5"), std::string::npos) << e;
  EXPECT_NE(e.find("outside the vocabulary"), std::string::npos) << e;
}

// ---- Several ranks writing parts ------------------------------------------------------------

namespace {

// Simulates `ranks` ranks: rank r writes the r-th contiguous slice of the documents.
void write_by_ranks(const std::string& final_dir, const DatasetInfo& info, const Docs& docs, int ranks,
                    int64_t shard_tokens) {
  const std::string staging = staging_dir_path(final_dir, staging_tag());
  // Ranks finish in any order; the result depends only on the part index.
  for (int r = ranks - 1; r >= 0; --r) {
    const size_t begin = docs.size() * static_cast<size_t>(r) / static_cast<size_t>(ranks);
    const size_t end = docs.size() * static_cast<size_t>(r + 1) / static_cast<size_t>(ranks);
    DatasetPartWriter w(staging, r, info, shard_tokens);
    for (size_t i = begin; i < end; ++i) w.add_document(docs[i]);
    w.finish();
  }
  publish_dataset(staging, final_dir, info, ranks);
}

// Part `part` of a multi-rank write, finished, holding one document: [1, 2, 3].
void finish_part(const std::string& staging, int part, const DatasetInfo& info) {
  DatasetPartWriter w(staging, part, info, 10);
  w.add_document(std::vector<int32_t>{1, 2, 3});
  w.finish();
}

}  // namespace

TEST(DatasetRanks, SameLogicalDatasetForAnyNumberOfRanks) {
  TempDir tmp;
  const auto info = make_info(40000);
  const Docs docs = random_docs(50, 40000, 30, 9);
  write_dataset(tmp / "single", info, docs, 120);
  const Dataset single = Dataset::open(tmp / "single");
  for (int ranks : {1, 2, 3, 64}) {  // 64 > documents: some parts are empty
    const std::string dir = tmp / ("ranks" + std::to_string(ranks));
    write_by_ranks(dir, info, docs, ranks, 120);
    const Dataset ds = Dataset::open(dir);
    EXPECT_EQ(ds.info(), info);
    expect_same_documents(ds, docs);
    EXPECT_TRUE(std::equal(ds.document_offsets().begin(), ds.document_offsets().end(), single.document_offsets().begin(),
                           single.document_offsets().end()));
    if (ranks == 1) {
      EXPECT_EQ(read_text(dir + "/manifest.json"), read_text(tmp / "single/manifest.json"));
    }
  }
  // Only the datasets remain: no staging directories, markers or part files.
  EXPECT_EQ(tmp.entries(), (std::vector<std::string>{"ranks1", "ranks2", "ranks3", "ranks64", "single"}));
  for (const auto& e : fs::directory_iterator(tmp / "ranks3"))
    EXPECT_TRUE(e.path().filename() == "manifest.json" || e.path().filename().string().rfind("shard_", 0) == 0)
        << e.path();
}

TEST(DatasetRanks, PublishNeedsEveryPart) {
  TempDir tmp;
  const auto info = make_info(100);
  const std::string staging = staging_dir_path(tmp / "ds", "test");
  for (int r : {0, 2}) finish_part(staging, r, info);
  {  // rank 1 failed: its destructor removes what it wrote
    DatasetPartWriter w(staging, 1, info, 2);
    for (int i = 0; i < 5; ++i) w.add_document(std::vector<int32_t>{4, 5, 6});
  }
  for (const auto& e : fs::directory_iterator(staging)) EXPECT_EQ(e.path().filename().string().find("part_00001"), std::string::npos);
  const std::string e = error_of([&] { publish_dataset(staging, tmp / "ds", info, 3); });
  EXPECT_NE(e.find("part 1"), std::string::npos) << e;
  EXPECT_FALSE(fs::exists(tmp / "ds"));
  discard_staging_dir(staging);
  EXPECT_TRUE(tmp.entries().empty());
}

// A part's marker whose totals disagree with its own shard list (a damaged or hand-edited
// marker) stops the publication, naming the marker; nothing is published.
TEST(DatasetRanks, PublishChecksEachMarkersTotals) {
  TempDir tmp;
  const auto info = make_info(100);
  const std::string staging = staging_dir_path(tmp / "ds", "test");
  for (int r : {0, 1}) finish_part(staging, r, info);
  const std::string marker = staging + "/part_00001.done";
  const std::string good = read_text(marker);
  ASSERT_NE(good.find("\n  \"num_tokens\": 3,"), std::string::npos) << good;
  write_text(marker, std::regex_replace(good, std::regex(R"(\n  "num_tokens": 3,)"), "\n  \"num_tokens\": 4,"));
  const std::string e = error_of([&] { publish_dataset(staging, tmp / "ds", info, 2); });
  EXPECT_NE(e.find("part_00001.done"), std::string::npos) << e;
  EXPECT_NE(e.find("totals disagree"), std::string::npos) << e;
  EXPECT_FALSE(fs::exists(tmp / "ds"));
  discard_staging_dir(staging);
}

TEST(DatasetRanks, PublishChecksTheShardsAgainstTheInfo) {
  TempDir tmp;
  const std::string staging = staging_dir_path(tmp / "ds", "test");
  finish_part(staging, 0, make_info(100, "aaaaaaaaaaaaaaaa"));
  const std::string e = error_of([&] { publish_dataset(staging, tmp / "ds", make_info(100, "bbbbbbbbbbbbbbbb"), 1); });
  EXPECT_NE(e.find("shard_00000.h5"), std::string::npos) << e;
  EXPECT_FALSE(fs::exists(tmp / "ds"));
}

// ---- The HDF5 wrappers ----------------------------------------------------------------------

TEST(DatasetHdf5, AttributesDatasetsAndErrors) {
  TempDir tmp;
  const std::string path = tmp / "x.h5";
  {
    h5::File f = h5::File::create(path);
    f.write_string_attribute("name", "tiny \"gpt\"");
    f.write_string_attribute("empty", "");
    f.write_int64_attribute("step", -5);
    f.write_int64_attribute("step", int64_t{1} << 40);  // replaces
    f.write_double_attribute("lr", 2.5e-4);
    h5::Group g = f.create_group("model/h.0");
    const std::vector<float> w{1.5f, -2.0f, 3.25f};
    h5::Dataset d = g.write_dataset<float>("weight", H5T_IEEE_F32LE, w);
    d.write_string_attribute("layout", "[out, in]");
    h5::Dataset grow = f.create_dataset("grow", H5T_STD_I32LE, 0, {4, true});
    for (int32_t i = 0; i < 10; ++i) {
      grow.set_extent(i + 1);
      grow.write<int32_t>(i, std::span<const int32_t>(&i, 1));
    }
    // A variable-length string attribute, as h5py writes them.
    h5::Id type(H5Tcopy(H5T_C_S1), H5Tclose);
    H5Tset_size(type.get(), H5T_VARIABLE);
    h5::Space space = h5::Space::scalar();
    h5::Id a(H5Acreate2(f.id(), "vlen", type.get(), space.id(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
    const char* text = "variable";
    ASSERT_GE(H5Awrite(a.get(), type.get(), &text), 0);
  }
  const h5::File f = h5::File::open(path);
  EXPECT_EQ(f.read_string_attribute("name"), "tiny \"gpt\"");
  EXPECT_EQ(f.read_string_attribute("empty"), "");
  EXPECT_EQ(f.read_string_attribute("vlen"), "variable");
  EXPECT_EQ(f.read_int64_attribute("step"), int64_t{1} << 40);
  EXPECT_DOUBLE_EQ(f.read_double_attribute("lr"), 2.5e-4);
  EXPECT_TRUE(f.has("model/h.0/weight"));
  EXPECT_FALSE(f.has("model/h.1/weight"));
  const h5::Dataset d = f.open_group("model").open_group("h.0").open_dataset("weight");
  EXPECT_EQ(d.where(), path + ":/model/h.0/weight");
  EXPECT_EQ(d.read_all<float>(), (std::vector<float>{1.5f, -2.0f, 3.25f}));
  EXPECT_EQ(d.read_string_attribute("layout"), "[out, in]");
  std::vector<int32_t> part(4);
  f.open_dataset("grow").read<int32_t>(3, 4, part.data());
  EXPECT_EQ(part, (std::vector<int32_t>{3, 4, 5, 6}));
  std::vector<double> widened(3);  // HDF5 converts on read
  d.read<double>(0, 3, widened.data());
  EXPECT_EQ(widened[2], 3.25);

  // Errors name the file and what was asked for.
  std::string e = error_of([&] { f.read_int64_attribute("nope"); });
  EXPECT_NE(e.find(path), std::string::npos) << e;
  EXPECT_NE(e.find("'nope'"), std::string::npos) << e;
  e = error_of([&] { f.read_int64_attribute("name"); });
  EXPECT_NE(e.find("not an integer"), std::string::npos) << e;
  e = error_of([&] { f.open_dataset("model/h.0/bias"); });
  EXPECT_NE(e.find(path + ":/model/h.0/bias"), std::string::npos) << e;
  e = error_of([&] { h5::File::open(tmp / "missing.h5"); });
  EXPECT_NE(e.find("missing.h5"), std::string::npos) << e;
  write_text(tmp / "text.h5", "not hdf5 at all");
  e = error_of([&] { h5::File::open(tmp / "text.h5"); });
  EXPECT_NE(e.find("text.h5"), std::string::npos) << e;
  EXPECT_THROW(h5::File::create(path), Error);  // exists; no truncate
  EXPECT_THROW(f.open_dataset("grow").read<int32_t>(8, 4, part.data()), Error);
}

// A close that fails (a full disk) is an error naming the file, and the process still ends as it
// chooses: HDF5's own exit handler used to close the failed file once more and crash (SIGSEGV in
// H5F__close_cb, under exit()) after the error had been reported. Nothing may be written past
// its first 64 bytes (RLIMIT_FSIZE, SIGXFSZ ignored: writes past it fail with EFBIG), so the
// metadata written at close cannot be.
namespace {
// Writes a dataset to `path`, then closes the file with no room left; returns the error.
std::string close_without_room(const std::string& path) {
  std::string message;
  try {
    h5::File f = h5::File::create(path, true);
    const std::vector<float> data(size_t{1} << 18, 1.0f);
    f.write_dataset<float>("x", H5T_IEEE_F32LE, data);
    ::signal(SIGXFSZ, SIG_IGN);
    struct rlimit lim;
    ::getrlimit(RLIMIT_FSIZE, &lim);
    struct rlimit low = lim;
    low.rlim_cur = 64;  // not even the object headers fit below it
    ::setrlimit(RLIMIT_FSIZE, &low);
    try {
      f.close();
    } catch (const Error& e) {
      message = e.what();
    }
    ::setrlimit(RLIMIT_FSIZE, &lim);  // (the death test's stderr is a file too)
  } catch (const Error& e) {
    message = std::string("before the close: ") + e.what();
  }
  return message;
}
}  // namespace

TEST(Hdf5File, AFailedCloseIsAnErrorAndTheProcessStillExitsCleanly) {
  const llm::testing::ScratchDir dir("hdf5-close");
  const std::string path = dir / "full.h5";
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        const std::string message = close_without_room(path);
        std::fprintf(stderr, "%s\n", message.c_str());
        std::exit(message.find("full.h5: closing the file failed") != std::string::npos ? 0 : 3);
      },
      ::testing::ExitedWithCode(0), "full.h5: closing the file failed \\(HDF5: File too large\\)");
}

// A directory where a dataset's file belongs is named as one: the manifest read as 'not a JSON
// object', a shard as 'no such file'.
TEST(Dataset, ADirectoryWhereAFileBelongsIsNamedSo) {
  TempDir tmp;
  write_dataset(tmp / "ds", make_info(100), random_docs(5, 100, 10, 3), 1000);
  std::filesystem::remove(tmp / "ds/shard_00000.h5");
  std::filesystem::create_directory(tmp / "ds/shard_00000.h5");
  std::string e = error_of([&] { Dataset::open(tmp / "ds"); });
  EXPECT_NE(e.find("shard_00000.h5: is a directory, not an HDF5 file"), std::string::npos) << e;
  std::filesystem::remove(tmp / "ds/manifest.json");
  std::filesystem::create_directory(tmp / "ds/manifest.json");
  e = error_of([&] { Dataset::open(tmp / "ds"); });
  EXPECT_NE(e.find("manifest.json: is a directory, not a dataset manifest (JSON)"), std::string::npos) << e;
}
