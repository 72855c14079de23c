// Megatron's GPT dataset semantics over a store of documents.
//
// The documents [begin, end) of one split, repeated for as many epochs as the requested number
// of samples needs, are shuffled and concatenated; samples are windows of seq_length + 1 tokens
// that cross document boundaries, consecutive samples sharing one token (the last target of one
// is the first input of the next); the samples are then shuffled. As in Megatron, a last epoch
// that contributes fewer than 80% of an epoch's samples is kept apart: its documents shuffled
// on their own after the others', its samples shuffled on their own after the others' (so every
// sample of the full epochs comes first). The permutations are ours (Philox), not numpy's: the
// structure is Megatron's, the order is not. Everything is a
// pure function of (seed, split name, documents, seq_length, num_samples), so every rank builds
// the same index, and the index is cached in an HDF5 file keyed by that description.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "data/sample_source.h"

namespace llm {

// Where documents come from: a token dataset on disk, or memory in tests.
class DocumentStore {
 public:
  virtual ~DocumentStore() = default;
  virtual int64_t num_documents() const = 0;
  // Global token offset of document `doc`; document_offset(num_documents()) = total tokens.
  virtual int64_t document_offset(int64_t doc) const = 0;
  virtual void read_tokens(int64_t offset, int64_t n, int32_t* out) const = 0;
  virtual int64_t vocab_size() const = 0;
  // Identifies the content for the index cache (path + content hash or similar).
  virtual std::string describe() const = 0;
};

struct DocumentRange {
  int64_t begin = 0, end = 0;
  int64_t size() const { return end - begin; }
};

// Megatron's --split "949,50,1": proportional document ranges for train/valid/test, rounded
// like Megatron (each boundary rounded, the last pinned to num_documents).
std::vector<DocumentRange> split_documents(int64_t num_documents, const std::string& split);

struct GPTIndex {
  std::vector<int64_t> doc_idx;     // documents of every epoch, shuffled (the last epoch apart if separate)
  std::vector<int64_t> sample_idx;  // (position in doc_idx, token offset) pairs, num_samples+1
  std::vector<int64_t> shuffle_idx; // sample permutation
  int64_t num_epochs = 0;
  // Megatron's separate_last_epoch, and the samples of the epochs before the last (> 1 epoch).
  bool separate_last_epoch = false;
  int64_t samples_before_last_epoch = 0;
};

// Builds the index (no caching).
GPTIndex build_gpt_index(const DocumentStore& store, DocumentRange docs, int64_t seq_length,
                         int64_t num_samples, uint64_t seed, const std::string& name);

struct IndexCacheOptions {
  std::string dir;                     // empty: no cache
  bool is_builder = true;              // the one rank that builds a missing index
  std::function<void()> barrier = [] {};  // all ranks call it; non-builders read afterwards
};

class GPTDataset final : public SampleSource {
 public:
  GPTDataset(std::shared_ptr<const DocumentStore> store, DocumentRange docs, int64_t seq_length,
             int64_t num_samples, uint64_t seed, std::string name, const IndexCacheOptions& cache = {});
  int64_t vocab_size() const override { return store_->vocab_size(); }
  int64_t seq_length() const override { return seq_; }
  uint64_t num_samples() const override { return static_cast<uint64_t>(index_.shuffle_idx.size()); }
  void sample(uint64_t index, int32_t* out) const override;
  std::string describe() const override;
  const GPTIndex& index() const { return index_; }
  bool loaded_from_cache() const { return from_cache_; }
  // The cache key text (what built the index).
  std::string cache_description() const;

 private:
  std::shared_ptr<const DocumentStore> store_;
  DocumentRange docs_;
  int64_t seq_, requested_;
  uint64_t seed_;
  std::string name_;
  GPTIndex index_;
  bool from_cache_ = false;
};

// Megatron's blending: sample i goes to the dataset whose count lags weight * max(i, 1) the most
// (greedy, the first on ties), so the ratios hold at every prefix of the stream.
class BlendedDataset final : public SampleSource {
 public:
  BlendedDataset(std::vector<double> weights, std::vector<std::shared_ptr<const SampleSource>> sources,
                 int64_t num_samples);
  int64_t vocab_size() const override;
  int64_t seq_length() const override { return sources_.front()->seq_length(); }
  uint64_t num_samples() const override { return dataset_index_.size(); }
  void sample(uint64_t index, int32_t* out) const override;
  std::string describe() const override;
  // Fraction of samples drawn from each source.
  std::vector<double> achieved_ratios() const;
  const std::vector<double>& weights() const { return weights_; }
  // The source of each sample, in order.
  const std::vector<uint8_t>& dataset_index() const { return dataset_index_; }

 private:
  std::vector<double> weights_;
  std::vector<std::shared_ptr<const SampleSource>> sources_;
  std::vector<uint8_t> dataset_index_;
  std::vector<int64_t> dataset_sample_index_;
};

}  // namespace llm
