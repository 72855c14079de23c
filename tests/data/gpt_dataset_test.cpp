// Megatron GPT-dataset semantics over an in-memory document store.
#include <gtest/gtest.h>

#include <filesystem>
#include <numeric>
#include <algorithm>
#include <map>
#include <set>

#include "core/error.h"
#include "core/philox.h"
#include "data/gpt_dataset.h"
#include "data/hdf5_util.h"

using namespace llm;

namespace {

// Document d has length lengths[d]; token values encode (document, position) so a sample's
// provenance can be checked exactly.
class VectorStore final : public DocumentStore {
 public:
  explicit VectorStore(std::vector<int64_t> lengths) {
    offsets_.push_back(0);
    for (int64_t d = 0; d < static_cast<int64_t>(lengths.size()); ++d) {
      for (int64_t i = 0; i < lengths[d]; ++i) tokens_.push_back(static_cast<int32_t>(d * 1000 + i));
      offsets_.push_back(static_cast<int64_t>(tokens_.size()));
    }
  }
  int64_t num_documents() const override { return static_cast<int64_t>(offsets_.size()) - 1; }
  int64_t document_offset(int64_t d) const override { return offsets_.at(d); }
  void read_tokens(int64_t off, int64_t n, int32_t* out) const override {
    ASSERT_LE(off + n, static_cast<int64_t>(tokens_.size()));
    std::copy(tokens_.begin() + off, tokens_.begin() + off + n, out);
  }
  int64_t vocab_size() const override { return 1 << 20; }
  std::string describe() const override { return "memory"; }
  const std::vector<int32_t>& tokens() const { return tokens_; }
  const std::vector<int64_t>& offsets() const { return offsets_; }

 private:
  std::vector<int32_t> tokens_;
  std::vector<int64_t> offsets_;
};

std::shared_ptr<VectorStore> random_store(int docs, uint64_t seed, bool with_empty = false) {
  std::vector<int64_t> len;
  for (int d = 0; d < docs; ++d) {
    int64_t l = 1 + static_cast<int64_t>(philox_below(seed, 1, d, 40));
    if (with_empty && d % 7 == 3) l = 0;
    len.push_back(l);
  }
  return std::make_shared<VectorStore>(len);
}

}  // namespace

TEST(GPTDatasetSplit, MegatronRounding) {
  auto s = split_documents(1000, "949,50,1");
  EXPECT_EQ(s[0].begin, 0);
  EXPECT_EQ(s[0].end, 949);
  EXPECT_EQ(s[1].end, 999);
  EXPECT_EQ(s[2].end, 1000);
  s = split_documents(10, "1/1/1");
  EXPECT_EQ(s[0].size() + s[1].size() + s[2].size(), 10);
  EXPECT_EQ(s[2].end, 10);
  s = split_documents(7, "100");
  EXPECT_EQ(s[0].size(), 7);
  EXPECT_EQ(s[1].size(), 0);
  EXPECT_THROW(split_documents(10, "a,b"), ConfigError);
  EXPECT_THROW(split_documents(10, "0,0,0"), ConfigError);
  EXPECT_THROW(split_documents(10, "inf,1"), ConfigError);
  // halves round to even, as Python's round() in Megatron: 9.49, 0.5, 0.01 -> 9, 0, 0, then the
  // difference to 10 moves every boundary
  s = split_documents(10, "949,50,1");
  EXPECT_EQ(s[0].size(), 10);
  EXPECT_EQ(s[1].size(), 0);
  s = split_documents(10, "25,25,50");  // 2.5, 2.5, 5 -> 2, 2, 5, then +1
  EXPECT_EQ(s[0].size(), 3);
  EXPECT_EQ(s[1].size(), 2);
  EXPECT_EQ(s[2].size(), 5);
}

TEST(GPTDatasetIndex, SamplesTileTheEpochStreamWithOneTokenOverlap) {
  for (bool with_empty : {false, true}) {
    auto store = random_store(50, 3, with_empty);
    const DocumentRange docs{5, 45};
    const int64_t seq = 16, want = 300;
    GPTIndex ix = build_gpt_index(*store, docs, seq, want, 42, "train");
    const int64_t per_epoch = store->document_offset(45) - store->document_offset(5);
    // Megatron's epoch rule: the fewest epochs with (tokens - 1) / seq >= samples
    EXPECT_GE((ix.num_epochs * per_epoch - 1) / seq, want);
    EXPECT_LT(((ix.num_epochs - 1) * per_epoch - 1) / seq, want);
    // every document of the split once per epoch
    ASSERT_EQ(ix.doc_idx.size(), static_cast<size_t>(ix.num_epochs * 40));
    std::map<int64_t, int64_t> count;
    for (int64_t d : ix.doc_idx) ++count[d];
    EXPECT_EQ(count.size(), 40u);
    EXPECT_EQ(count.begin()->first, 5);
    EXPECT_EQ(count.rbegin()->first, 44);
    for (auto [d, n] : count) EXPECT_EQ(n, ix.num_epochs) << "document " << d;
    // the epoch-ordered token stream
    std::vector<int32_t> stream;
    for (int64_t d : ix.doc_idx)
      stream.insert(stream.end(), store->tokens().begin() + store->offsets()[d],
                    store->tokens().begin() + store->offsets()[d + 1]);
    GPTDataset ds(store, docs, seq, want, 42, "train");
    ASSERT_EQ(ds.num_samples(), ix.shuffle_idx.size());
    std::vector<int32_t> got(seq + 1);
    std::set<int64_t> perm(ix.shuffle_idx.begin(), ix.shuffle_idx.end());
    EXPECT_EQ(perm.size(), ix.shuffle_idx.size());
    for (uint64_t i = 0; i < ds.num_samples(); ++i) {
      ds.sample(i, got.data());
      const int64_t j = ix.shuffle_idx[i];  // unshuffled sample j = stream[j*seq, j*seq+seq+1)
      ASSERT_TRUE(std::equal(got.begin(), got.end(), stream.begin() + j * seq)) << "sample " << i << " (j=" << j << ")";
    }
  }
}

// Megatron's _build_doc_idx / _build_shuffle_idx: a last epoch under 80% of an epoch's samples
// is kept apart (its documents, then its samples, after the full epochs'); otherwise every
// epoch's documents are shuffled together and so are all samples.
TEST(GPTDatasetIndex, LastEpochApartUnderEightyPercentAsMegatron) {
  auto store = random_store(30, 11);
  const int64_t seq = 8, D = 30;
  const int64_t tokens = store->document_offset(D);
  const int64_t per_epoch = (tokens - 1) / seq;
  struct Case {
    int64_t want;
    int64_t epochs;
    bool apart;
  };
  const int64_t before2 = (2 * tokens - 1) / seq;  // samples of two whole epochs
  for (const Case c : {Case{per_epoch / 2, 1, false},                      // one epoch: nothing apart
                       Case{per_epoch + per_epoch / 4, 2, true},           // 1.25 epochs
                       Case{before2 + per_epoch / 2, 3, true},             // 2.5 epochs
                       Case{before2 + (per_epoch * 9) / 10, 3, false}}) {  // 2.9 epochs
    SCOPED_TRACE("want " + std::to_string(c.want));
    const GPTIndex ix = build_gpt_index(*store, {0, D}, seq, c.want, 7, "train");
    ASSERT_EQ(ix.num_epochs, c.epochs);
    EXPECT_EQ(ix.separate_last_epoch, c.apart);
    const int64_t total = static_cast<int64_t>(ix.shuffle_idx.size());
    EXPECT_EQ(total, (c.epochs * tokens - 1) / seq);
    auto counts = [&](size_t from, size_t to) {
      std::map<int64_t, int64_t> n;
      for (size_t i = from; i < to; ++i) ++n[ix.doc_idx[i]];
      return n;
    };
    if (c.apart) {
      const int64_t first = ((c.epochs - 1) * tokens - 1) / seq;
      EXPECT_EQ(ix.samples_before_last_epoch, first);
      EXPECT_LT(c.want - first, static_cast<int64_t>(0.8 * static_cast<double>(per_epoch)));
      // the full epochs' documents, each (epochs - 1) times, then the last epoch's, each once
      const size_t split = static_cast<size_t>((c.epochs - 1) * D);
      for (auto [d, n] : counts(0, split)) EXPECT_EQ(n, c.epochs - 1) << "document " << d;
      EXPECT_EQ(counts(0, split).size(), static_cast<size_t>(D));
      EXPECT_EQ(counts(split, ix.doc_idx.size()).size(), static_cast<size_t>(D));
      // the full epochs' samples first, shuffled among themselves, then the last epoch's
      std::vector<int64_t> head(ix.shuffle_idx.begin(), ix.shuffle_idx.begin() + first);
      std::vector<int64_t> tail(ix.shuffle_idx.begin() + first, ix.shuffle_idx.end());
      std::sort(head.begin(), head.end());
      std::sort(tail.begin(), tail.end());
      for (int64_t i = 0; i < first; ++i) ASSERT_EQ(head[static_cast<size_t>(i)], i);
      for (int64_t i = first; i < total; ++i) ASSERT_EQ(tail[static_cast<size_t>(i - first)], i);
      EXPECT_NE(head, std::vector<int64_t>(ix.shuffle_idx.begin(), ix.shuffle_idx.begin() + first));
    } else {
      for (auto [d, n] : counts(0, ix.doc_idx.size())) EXPECT_EQ(n, c.epochs) << "document " << d;
      if (c.epochs > 1) {
        // shuffled together: some document repeats within the first epoch's length
        EXPECT_LT(counts(0, static_cast<size_t>(D)).size(), static_cast<size_t>(D));
        // and some sample of the last epoch is drawn among the first epoch's count
        const int64_t last_start = ((c.epochs - 1) * tokens - 1) / seq;
        EXPECT_TRUE(std::any_of(ix.shuffle_idx.begin(), ix.shuffle_idx.begin() + per_epoch,
                                [&](int64_t j) { return j >= last_start; }));
      }
      std::vector<int64_t> all = ix.shuffle_idx;
      std::sort(all.begin(), all.end());
      for (int64_t i = 0; i < total; ++i) ASSERT_EQ(all[static_cast<size_t>(i)], i);
    }
  }
}

// Megatron's _num_epochs and num_samples_from_epochs_minus_one at an epoch of exactly a multiple
// of the sequence length (100 tokens, seq 10), where the "- 1" of both formulas decides: a
// sample takes seq + 1 tokens, the last one shared with the next sample, so one epoch gives
// (100 - 1) / 10 = 9 samples, not 10, and two give 19.
TEST(GPTDatasetIndex, EpochsAtAnExactMultipleOfTheSequenceLength) {
  const VectorStore store(std::vector<int64_t>(10, 10));  // 10 documents of 10 tokens
  const GPTIndex one = build_gpt_index(store, {0, 10}, 10, 9, 3, "train");
  EXPECT_EQ(one.num_epochs, 1);
  EXPECT_EQ(one.shuffle_idx.size(), 9u);
  const GPTIndex two = build_gpt_index(store, {0, 10}, 10, 10, 3, "train");  // one more than an epoch holds
  ASSERT_EQ(two.num_epochs, 2);
  EXPECT_EQ(two.shuffle_idx.size(), 19u);
  ASSERT_TRUE(two.separate_last_epoch);  // 10 - 9 = 1 sample of the last epoch, under 80% of 9
  EXPECT_EQ(two.samples_before_last_epoch, 9);
  std::vector<int64_t> head(two.shuffle_idx.begin(), two.shuffle_idx.begin() + 9);
  std::sort(head.begin(), head.end());
  for (int64_t i = 0; i < 9; ++i) EXPECT_EQ(head[static_cast<size_t>(i)], i) << "the first epoch's samples come first";
}

TEST(GPTDatasetIndex, DeterministicAndSeeded) {
  auto store = random_store(30, 9);
  GPTIndex a = build_gpt_index(*store, {0, 30}, 8, 100, 1, "train");
  GPTIndex b = build_gpt_index(*store, {0, 30}, 8, 100, 1, "train");
  GPTIndex c = build_gpt_index(*store, {0, 30}, 8, 100, 2, "train");
  GPTIndex v = build_gpt_index(*store, {0, 30}, 8, 100, 1, "valid");
  EXPECT_EQ(a.doc_idx, b.doc_idx);
  EXPECT_EQ(a.shuffle_idx, b.shuffle_idx);
  EXPECT_NE(a.shuffle_idx, c.shuffle_idx);
  EXPECT_NE(a.doc_idx, v.doc_idx);
}

TEST(GPTDatasetIndex, ClearErrorsForEmptySplits) {
  auto store = random_store(5, 1);
  EXPECT_THROW(build_gpt_index(*store, {3, 3}, 8, 10, 1, "valid"), ConfigError);
  auto tiny = std::make_shared<VectorStore>(std::vector<int64_t>{1});
  EXPECT_THROW(build_gpt_index(*tiny, {0, 1}, 8, 10, 1, "train"), ConfigError);
}

TEST(BlendedDataset, GreedyRatiosHoldAtEveryPrefix) {
  auto s1 = std::make_shared<GPTDataset>(random_store(20, 1), DocumentRange{0, 20}, 8, 500, 1, "a");
  auto s2 = std::make_shared<GPTDataset>(random_store(20, 2), DocumentRange{0, 20}, 8, 500, 1, "b");
  auto s3 = std::make_shared<GPTDataset>(random_store(20, 3), DocumentRange{0, 20}, 8, 500, 1, "c");
  BlendedDataset blend({0.5, 0.3, 0.2}, {s1, s2, s3}, 1000);
  auto r = blend.achieved_ratios();
  EXPECT_NEAR(r[0], 0.5, 1e-3);
  EXPECT_NEAR(r[1], 0.3, 1e-3);
  EXPECT_NEAR(r[2], 0.2, 1e-3);
  // the blend's sample i is the component's next unused sample, in order
  std::vector<int32_t> got(9), want(9);
  std::vector<int64_t> next(3, 0);
  const std::shared_ptr<GPTDataset> parts[3] = {s1, s2, s3};
  for (uint64_t i = 0; i < 1000; ++i) {
    blend.sample(i, got.data());
    // identify the component by trying each one's next sample
    int matched = -1;
    for (int d = 0; d < 3; ++d) {
      parts[d]->sample(static_cast<uint64_t>(next[d]), want.data());
      if (got == want) { matched = d; break; }
    }
    ASSERT_GE(matched, 0) << "sample " << i;
    ++next[matched];
    const double n = static_cast<double>(i + 1);
    EXPECT_LE(std::abs(next[0] - 0.5 * n), 1.0);
    EXPECT_LE(std::abs(next[1] - 0.3 * n), 1.0);
    EXPECT_LE(std::abs(next[2] - 0.2 * n), 1.0);
  }
  // Megatron's build_blending_indices, worked by hand for these weights: the target after i
  // samples is w * max(i, 1), the first dataset on ties. (A target of w * (i + 1) gives
  // 0 1 2 0 0 1 0 2 ... instead.)
  const std::vector<uint8_t> want_first{0, 1, 2, 0, 1, 0, 2, 0, 1, 0, 0, 1};
  EXPECT_EQ(std::vector<uint8_t>(blend.dataset_index().begin(), blend.dataset_index().begin() + 12), want_first);
  // The largest weight second: the first sample is already its dataset's (the target after 0
  // samples is w * 1; with w * 0 every dataset ties and the first would win). By hand for 0.3,
  // 0.7: errors (0.3, 0.7) -> 1; (0.3, -0.3) -> 0; (-0.4, 0.4) -> 1; (-0.1, 0.1) -> 1; ...
  BlendedDataset second({3.0, 7.0}, {s1, s2}, 10);
  EXPECT_EQ(second.dataset_index(), (std::vector<uint8_t>{1, 0, 1, 1, 0, 1, 1, 0, 1, 1}));
  EXPECT_THROW(BlendedDataset({1.0}, {s1, s2}, 10), ConfigError);
  EXPECT_THROW(BlendedDataset({1.0, -1.0}, {s1, s2}, 10), ConfigError);
}

// An entry's file is named by a hash of its description (store, split, sequence, samples, seed)
// and holds the description itself: a file under another entry's name (copied there, or a hash
// collision) is rebuilt, not read as that entry.
TEST(GPTDatasetIndex, ACacheFileUnderAnotherEntrysNameIsNotTrusted) {
  namespace fs = std::filesystem;
  const std::string dir = ::testing::TempDir() + "/gpt-index-cache-renamed";
  fs::remove_all(dir);
  auto store = random_store(40, 5);
  IndexCacheOptions cache;
  cache.dir = dir;
  GPTDataset three(store, {0, 40}, 8, 200, 3, "train", cache);
  const fs::path three_file = fs::directory_iterator(dir)->path();
  GPTDataset four(store, {0, 40}, 8, 200, 4, "train", cache);
  ASSERT_NE(three.index().shuffle_idx, four.index().shuffle_idx);
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path() != three_file) fs::copy_file(three_file, e.path(), fs::copy_options::overwrite_existing);
  GPTDataset again(store, {0, 40}, 8, 200, 4, "train", cache);
  EXPECT_FALSE(again.loaded_from_cache());
  EXPECT_EQ(again.index().shuffle_idx, four.index().shuffle_idx);
}

TEST(GPTDatasetIndex, CacheRoundTripAndKeying) {
  const std::string dir = ::testing::TempDir() + "/gpt-index-cache-test";
  std::filesystem::remove_all(dir);
  auto store = random_store(40, 5);
  IndexCacheOptions cache;
  cache.dir = dir;
  GPTDataset a(store, {0, 40}, 8, 200, 3, "train", cache);
  EXPECT_FALSE(a.loaded_from_cache());
  GPTDataset b(store, {0, 40}, 8, 200, 3, "train", cache);
  EXPECT_TRUE(b.loaded_from_cache());
  EXPECT_EQ(a.index().shuffle_idx, b.index().shuffle_idx);
  EXPECT_EQ(a.index().sample_idx, b.index().sample_idx);
  EXPECT_EQ(a.index().doc_idx, b.index().doc_idx);
  GPTDataset c(store, {0, 40}, 8, 200, 4, "train", cache);  // other seed: other entry
  EXPECT_FALSE(c.loaded_from_cache());
  // a non-builder rank reads what the builder published
  IndexCacheOptions reader = cache;
  reader.is_builder = false;
  GPTDataset d(store, {0, 40}, 8, 200, 3, "train", reader);
  EXPECT_TRUE(d.loaded_from_cache());
  IndexCacheOptions missing = reader;
  // (a node-local cache, or other data under the same path: a ConfigError naming the way out)
  EXPECT_THROW(GPTDataset(store, {0, 40}, 9, 200, 3, "train", missing), ConfigError);
  // a truncated cache file is rebuilt, not trusted
  for (auto& e : std::filesystem::directory_iterator(dir)) std::filesystem::resize_file(e.path(), 100);
  GPTDataset f(store, {0, 40}, 8, 200, 3, "train", cache);
  EXPECT_FALSE(f.loaded_from_cache());
  EXPECT_EQ(f.index().shuffle_idx, a.index().shuffle_idx);
  size_t files = 0;
  for (auto& e : std::filesystem::directory_iterator(dir)) files += e.path().extension() == ".h5";
  EXPECT_EQ(files, 2u);  // no temporaries left behind
  // A well-formed file whose contents are not the index (blocks a crash zeroed after the rename
  // reached the disk; an older file without a checksum) is rebuilt, not trusted.
  for (const bool keep_checksum : {true, false}) {
    for (auto& e : std::filesystem::directory_iterator(dir)) {
      std::string description, checksum;
      std::vector<int64_t> doc, smp, shf, ep, last;
      try {  // (seed 4's entry is still the truncated one)
        const h5::File in = h5::File::open(e.path().string());
        description = in.read_string_attribute("description");
        if (in.has_attribute("checksum")) checksum = in.read_string_attribute("checksum");
        doc = in.open_dataset("doc_idx").read_all<int64_t>();
        smp = in.open_dataset("sample_idx").read_all<int64_t>();
        shf = in.open_dataset("shuffle_idx").read_all<int64_t>();
        ep = in.open_dataset("num_epochs").read_all<int64_t>();
        last = in.open_dataset("last_epoch").read_all<int64_t>();
      } catch (const Error&) {
        continue;
      }
      std::fill(shf.begin(), shf.end(), 0);
      h5::File out = h5::File::create(e.path().string(), true);
      out.write_string_attribute("description", description);
      if (keep_checksum) out.write_string_attribute("checksum", checksum);
      out.write_dataset<int64_t>("doc_idx", H5T_STD_I64LE, doc);
      out.write_dataset<int64_t>("sample_idx", H5T_STD_I64LE, smp);
      out.write_dataset<int64_t>("shuffle_idx", H5T_STD_I64LE, shf);
      out.write_dataset<int64_t>("num_epochs", H5T_STD_I64LE, ep);
      out.write_dataset<int64_t>("last_epoch", H5T_STD_I64LE, last);
      out.close();
    }
    GPTDataset g(store, {0, 40}, 8, 200, 3, "train", cache);
    EXPECT_FALSE(g.loaded_from_cache()) << (keep_checksum ? "zeroed shuffle_idx" : "no checksum");
    EXPECT_EQ(g.index().shuffle_idx, a.index().shuffle_idx);
  }
}
