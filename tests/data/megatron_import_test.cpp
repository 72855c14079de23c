// Megatron .bin/.idx import: exact round trips for each integer dtype, and corrupt inputs whose
// errors name the file and the offending index. The test writes its own MMIDIDX files.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>

#include "core/error.h"
#include "data/dataset.h"
#include "data/megatron_import.h"
#include "support/scratch_dir.h"

using namespace llm;
namespace fs = std::filesystem;

namespace {

class TempDir : public llm::testing::ScratchDir {
 public:
  TempDir() : ScratchDir("llm-megatron-test") {}
};

// A document is a list of sequences of token ids.
using MegatronDocs = std::vector<std::vector<std::vector<int64_t>>>;

template <typename T>
void put(std::string& out, T v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof v);
}

// Writes PREFIX.idx / PREFIX.bin exactly as Megatron's IndexedDatasetBuilder does.
void write_megatron(const std::string& prefix, int dtype_code, const MegatronDocs& docs) {
  std::string bin;
  std::vector<int32_t> sizes;
  std::vector<int64_t> doc_idx{0};
  for (const auto& doc : docs) {
    for (const auto& seq : doc) {
      for (int64_t t : seq) {
        switch (dtype_code) {
          case 1: put<uint8_t>(bin, static_cast<uint8_t>(t)); break;
          case 2: put<int8_t>(bin, static_cast<int8_t>(t)); break;
          case 3: put<int16_t>(bin, static_cast<int16_t>(t)); break;
          case 4: put<int32_t>(bin, static_cast<int32_t>(t)); break;
          case 5: put<int64_t>(bin, t); break;
          case 8: put<uint16_t>(bin, static_cast<uint16_t>(t)); break;
          default: FAIL() << "test writer: dtype " << dtype_code;
        }
      }
      sizes.push_back(static_cast<int32_t>(seq.size()));
    }
    doc_idx.push_back(static_cast<int64_t>(sizes.size()));
  }
  const int64_t elt = dtype_code == 1 || dtype_code == 2 ? 1 : dtype_code == 3 || dtype_code == 8 ? 2 : dtype_code == 4 ? 4 : 8;
  std::string idx("MMIDIDX\0\0", 9);
  put<uint64_t>(idx, 1);
  put<uint8_t>(idx, static_cast<uint8_t>(dtype_code));
  put<uint64_t>(idx, sizes.size());
  put<uint64_t>(idx, doc_idx.size());
  for (int32_t s : sizes) put<int32_t>(idx, s);
  int64_t ptr = 0;
  for (int32_t s : sizes) {
    put<int64_t>(idx, ptr);
    ptr += s * elt;
  }
  for (int64_t d : doc_idx) put<int64_t>(idx, d);
  std::ofstream(prefix + ".bin", std::ios::binary) << bin;
  std::ofstream(prefix + ".idx", std::ios::binary) << idx;
}

// Overwrites bytes of a file in place.
template <typename T>
void patch(const std::string& path, int64_t offset, T value) {
  std::fstream f(path, std::ios::binary | std::ios::in | std::ios::out);
  f.seekp(offset);
  f.write(reinterpret_cast<const char*>(&value), sizeof value);
}

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

DatasetInfo info_for(int64_t vocab) { return DatasetInfo{{"GPT2BPETokenizer", "0123456789abcdef"}, vocab, 0}; }

// Three sequences in document 0, an empty sequence, an empty document, a long one.
MegatronDocs sample_docs(int64_t vocab) {
  MegatronDocs docs{{{1, 2, 3}, {4}, {5, 6}}, {{}}, {}, {{vocab - 1, 0}}};
  std::vector<int64_t> longer;
  for (int64_t i = 0; i < 300; ++i) longer.push_back((i * 7919) % vocab);
  docs.push_back({longer, {9, 9}});
  return docs;
}

std::vector<int32_t> flatten(const std::vector<std::vector<int64_t>>& doc) {
  std::vector<int32_t> out;
  for (const auto& seq : doc)
    for (int64_t t : seq) out.push_back(static_cast<int32_t>(t));
  return out;
}

// Byte offset of doc_idx[i] in an .idx with S sequences.
int64_t doc_idx_offset(int64_t seqs, int64_t i) { return 34 + 12 * seqs + 8 * i; }

}  // namespace

TEST(Megatron, RoundTripEveryIntegerDtype) {
  for (int code : {1, 2, 3, 4, 5, 8}) {
    TempDir tmp;
    const int64_t vocab = code == 1 ? 256 : code == 2 ? 128 : code == 3 ? 32768 : code == 8 ? 65536 : 100000;
    const MegatronDocs docs = sample_docs(vocab);
    write_megatron(tmp / "corpus_text_document", code, docs);

    const MegatronReader reader(tmp / "corpus_text_document");
    EXPECT_EQ(reader.index().dtype_code, code);
    EXPECT_EQ(reader.num_documents(), static_cast<int64_t>(docs.size()));

    const auto stats = import_megatron(tmp / "corpus_text_document", tmp / "ds", info_for(vocab), 4);
    const Dataset ds = Dataset::open(tmp / "ds");
    EXPECT_EQ(ds.info(), info_for(vocab));
    ASSERT_EQ(ds.num_documents(), static_cast<int64_t>(docs.size())) << "dtype " << code;
    EXPECT_EQ(stats.documents, ds.num_documents());
    EXPECT_EQ(stats.tokens, ds.num_tokens());
    EXPECT_EQ(stats.tokens, reader.index().num_tokens());
    for (size_t d = 0; d < docs.size(); ++d)
      EXPECT_EQ(ds.document(static_cast<int64_t>(d)), flatten(docs[d])) << "dtype " << code << " document " << d;
    EXPECT_GT(ds.num_shards(), 1);
  }
}

TEST(Megatron, ChoosesUint32StorageForLargeVocabularies) {
  TempDir tmp;
  const MegatronDocs docs{{{70000, 1}}, {{99999}}};
  write_megatron(tmp / "c", 4, docs);
  import_megatron(tmp / "c", tmp / "ds", info_for(100000));
  std::ifstream in(tmp / "ds/manifest.json");
  std::string m((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NE(m.find("\"dtype\": \"uint32\""), std::string::npos);
  EXPECT_EQ(Dataset::open(tmp / "ds").document(0), (std::vector<int32_t>{70000, 1}));
}

class MegatronCorruption : public ::testing::Test {
 protected:
  void SetUp() override {
    docs_ = sample_docs(1000);
    write_megatron(prefix(), 8, docs_);
    for (const auto& d : docs_) seqs_ += static_cast<int64_t>(d.size());
  }
  std::string prefix() const { return tmp_ / "c"; }
  std::string idx() const { return prefix() + ".idx"; }
  std::string bin() const { return prefix() + ".bin"; }
  // Import error; also checks that nothing was left in the directory besides the inputs.
  std::string import_error(int64_t vocab = 1000) {
    const std::string e = error_of([&] { import_megatron(prefix(), tmp_ / "ds", info_for(vocab)); });
    EXPECT_EQ(tmp_.num_entries(), 2u) << "an output or staging directory was left behind";
    return e;
  }
  TempDir tmp_;
  MegatronDocs docs_;
  int64_t seqs_ = 0;
};

TEST_F(MegatronCorruption, BadMagic) {
  patch<char>(idx(), 0, 'X');
  const std::string e = import_error();
  EXPECT_NE(e.find(idx()), std::string::npos) << e;
  EXPECT_NE(e.find("magic"), std::string::npos) << e;
}

TEST_F(MegatronCorruption, BadVersionAndDtype) {
  patch<uint64_t>(idx(), 9, 2);
  std::string e = import_error();
  EXPECT_NE(e.find(idx()), std::string::npos) << e;
  EXPECT_NE(e.find("version 2"), std::string::npos) << e;
  patch<uint64_t>(idx(), 9, 1);
  patch<uint8_t>(idx(), 17, 7);
  e = import_error();
  EXPECT_NE(e.find("float32"), std::string::npos) << e;
  patch<uint8_t>(idx(), 17, 42);
  e = import_error();
  EXPECT_NE(e.find("unknown dtype code 42"), std::string::npos) << e;
}

TEST_F(MegatronCorruption, TruncatedBin) {
  fs::resize_file(bin(), fs::file_size(bin()) - 2);
  const std::string e = import_error();
  EXPECT_NE(e.find(bin()), std::string::npos) << e;
  EXPECT_NE(e.find("truncated"), std::string::npos) << e;
}

TEST_F(MegatronCorruption, TruncatedIdx) {
  fs::resize_file(idx(), fs::file_size(idx()) - 8);
  std::string e = import_error();
  EXPECT_NE(e.find(idx()), std::string::npos) << e;
  fs::resize_file(idx(), 20);
  e = import_error();
  EXPECT_NE(e.find("truncated header"), std::string::npos) << e;
}

TEST_F(MegatronCorruption, DocIdxNotEndingAtTheSequenceCount) {
  const int64_t entries = static_cast<int64_t>(docs_.size()) + 1;
  patch<int64_t>(idx(), doc_idx_offset(seqs_, entries - 1), seqs_ - 1);
  const std::string e = import_error();
  EXPECT_NE(e.find(idx()), std::string::npos) << e;
  EXPECT_NE(e.find("doc_idx[" + std::to_string(entries - 1) + "]"), std::string::npos) << e;
  EXPECT_NE(e.find("sequence count"), std::string::npos) << e;
}

// Older Megatron's merge tool wrote doc_idx = [0] alone: every sequence is a document then.
TEST_F(MegatronCorruption, ADocumentIndexOfTheLeadingZeroAloneMakesEachSequenceADocument) {
  const MegatronDocs& docs = docs_;
  std::string idx_bytes;
  {
    std::ifstream f(idx(), std::ios::binary);
    idx_bytes.assign(std::istreambuf_iterator<char>(f), {});
  }
  const int64_t entries = static_cast<int64_t>(docs.size()) + 1;
  idx_bytes.resize(static_cast<size_t>(doc_idx_offset(seqs_, 1)));  // keep doc_idx[0] = 0 only
  const uint64_t one = 1;
  std::memcpy(idx_bytes.data() + 26, &one, sizeof one);
  std::ofstream(idx(), std::ios::binary | std::ios::trunc) << idx_bytes;
  const MegatronIndex ix = read_megatron_index(prefix());
  EXPECT_TRUE(ix.documents_from_sequences);
  ASSERT_EQ(ix.num_documents(), seqs_);
  MegatronReader reader(prefix());
  int64_t s = 0;
  for (const auto& doc : docs)
    for (const auto& seq : doc) {
      const std::vector<int64_t> got = reader.document(s++);
      EXPECT_EQ(got, seq) << "sequence " << s - 1;
    }
  EXPECT_GT(entries, 2);  // the file had documents of several sequences
}

// The legacy (non-mmap) index is named as such.
TEST_F(MegatronCorruption, LegacyIndexIsNamed) {
  std::fstream f(idx(), std::ios::binary | std::ios::in | std::ios::out);
  f.write("TNTIDX\0\0", 8);
  f.close();
  const std::string e = error_of([&] { read_megatron_index(prefix()); });
  EXPECT_NE(e.find("legacy index (TNTIDX"), std::string::npos) << e;
}

TEST_F(MegatronCorruption, DocIdxGoingBackwards) {
  patch<int64_t>(idx(), doc_idx_offset(seqs_, 2), 0);
  const std::string e = import_error();
  EXPECT_NE(e.find("doc_idx[2]"), std::string::npos) << e;
}

TEST_F(MegatronCorruption, InconsistentPointer) {
  patch<int64_t>(idx(), 34 + 4 * seqs_ + 8 * 1, 12345);  // pointers[1]
  const std::string e = import_error();
  EXPECT_NE(e.find(idx()), std::string::npos) << e;
  EXPECT_NE(e.find("sequence 1 "), std::string::npos) << e;
}

TEST_F(MegatronCorruption, NegativeSize) {
  patch<int32_t>(idx(), 34 + 4 * 2, -3);  // sizes[2]
  const std::string e = import_error();
  EXPECT_NE(e.find("sequence 2 has negative size"), std::string::npos) << e;
}

TEST_F(MegatronCorruption, TokenOutsideTheVocabulary) {
  std::string e = import_error(200);  // sample_docs(1000) has ids up to 999
  EXPECT_NE(e.find(bin()), std::string::npos) << e;
  EXPECT_NE(e.find("document 3"), std::string::npos) << e;
  EXPECT_NE(e.find("outside the vocabulary"), std::string::npos) << e;
  // the boundary: id 999 in a vocabulary of 999, named at the Megatron file, not at our writer
  e = import_error(999);
  EXPECT_NE(e.find(bin() + ": document 3"), std::string::npos) << e;
  EXPECT_NE(e.find("token id 999"), std::string::npos) << e;
}

TEST_F(MegatronCorruption, TrailingDataInTheBin) {
  std::ofstream(bin(), std::ios::app | std::ios::binary) << "xy";
  const std::string e = import_error();
  EXPECT_NE(e.find(bin()), std::string::npos) << e;
  EXPECT_NE(e.find("trailing data"), std::string::npos) << e;
}

TEST_F(MegatronCorruption, MissingFiles) {
  fs::remove(bin());
  EXPECT_NE(error_of([&] { read_megatron_index(prefix()); }).find(bin()), std::string::npos);
  EXPECT_NE(error_of([&] { read_megatron_index(tmp_ / "nothing"); }).find("nothing.idx"), std::string::npos);
}
