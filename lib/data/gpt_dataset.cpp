#include "data/gpt_dataset.h"

#include <cmath>
#include <numeric>
#include <sstream>

#include "core/error.h"
#include "core/philox.h"
#include "data/index_cache.h"

namespace llm {

std::vector<DocumentRange> split_documents(int64_t num_documents, const std::string& split) {
  std::vector<double> parts;
  std::string text = split;
  for (char& c : text)
    if (c == '/') c = ',';  // Megatron accepts 949,50,1 and 949/50/1
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    char* end = nullptr;
    const double v = std::strtod(item.c_str(), &end);
    if (item.empty() || *end || !(v >= 0) || !std::isfinite(v))
      throw ConfigError("--split '" + split + "': expected numbers like 949,50,1");
    parts.push_back(v);
  }
  while (parts.size() < 3) parts.push_back(0.0);
  if (parts.size() > 3) throw ConfigError("--split '" + split + "': at most three parts (train,valid,test)");
  const double total = parts[0] + parts[1] + parts[2];
  if (!(total > 0)) throw ConfigError("--split '" + split + "': parts sum to zero");
  std::vector<int64_t> idx{0};
  // Python's round(), as Megatron's get_train_valid_test_split_: halves to even
  for (double p : parts)
    idx.push_back(idx.back() + static_cast<int64_t>(std::nearbyint(p / total * static_cast<double>(num_documents))));
  const int64_t diff = idx.back() - num_documents;
  for (size_t i = 1; i < idx.size(); ++i) idx[i] -= diff;
  std::vector<DocumentRange> out;
  for (int i = 0; i < 3; ++i) out.push_back({std::max<int64_t>(0, idx[i]), std::max<int64_t>(0, idx[i + 1])});
  return out;
}

namespace {

void philox_shuffle(std::vector<int64_t>& v, uint64_t seed, uint64_t stream) {
  for (int64_t i = static_cast<int64_t>(v.size()) - 1; i > 0; --i) {
    const auto j = static_cast<int64_t>(philox_below(seed, stream, static_cast<uint64_t>(i), static_cast<uint64_t>(i + 1)));
    std::swap(v[i], v[j]);
  }
}

}  // namespace

GPTIndex build_gpt_index(const DocumentStore& store, DocumentRange docs, int64_t seq_length,
                         int64_t num_samples, uint64_t seed, const std::string& name) {
  if (docs.size() <= 0) throw ConfigError(store.describe() + ": the " + name + " split has no documents");
  LLM_CHECK(seq_length >= 1 && num_samples >= 1, "bad GPT index request");
  auto length = [&](int64_t d) { return store.document_offset(d + 1) - store.document_offset(d); };
  const int64_t tokens_per_epoch = store.document_offset(docs.end) - store.document_offset(docs.begin);
  if (tokens_per_epoch < 2)
    throw ConfigError(detail::concat(store.describe(), ": the ", name, " split has ", tokens_per_epoch,
                                     " tokens; a sample needs at least 2"));
  GPTIndex ix;
  // Megatron's _num_epochs: enough epochs that (tokens - 1) / seq_length >= num_samples.
  int64_t total = 0;
  do {
    ++ix.num_epochs;
    total += tokens_per_epoch;
  } while ((total - 1) / seq_length < num_samples);

  // Megatron's epochs: when more than one is needed and the last one contributes fewer than 80%
  // of an epoch's samples, that epoch is kept apart (its documents shuffled on their own and
  // placed last, its samples shuffled on their own after the others'), so that every sample of
  // the full epochs is drawn before any of the partial one; otherwise all epochs' documents are
  // shuffled together, and so are all samples.
  const int64_t samples_per_epoch = (tokens_per_epoch - 1) / seq_length;
  if (ix.num_epochs > 1) {
    ix.samples_before_last_epoch = ((ix.num_epochs - 1) * tokens_per_epoch - 1) / seq_length;
    const int64_t last_epoch_samples = num_samples - ix.samples_before_last_epoch;
    ix.separate_last_epoch =
        last_epoch_samples < static_cast<int64_t>(0.80 * static_cast<double>(samples_per_epoch));
  }
  const uint64_t stream = hash_name("gpt-dataset/" + name);
  auto shuffled_epochs = [&](int64_t epochs, uint64_t part) {
    std::vector<int64_t> d(static_cast<size_t>(epochs * docs.size()));
    for (size_t i = 0; i < d.size(); ++i) d[i] = docs.begin + static_cast<int64_t>(i) % docs.size();
    philox_shuffle(d, seed ^ (0x9E3779B97F4A7C15ull * part), stream);
    ix.doc_idx.insert(ix.doc_idx.end(), d.begin(), d.end());
  };
  if (ix.separate_last_epoch) {
    shuffled_epochs(ix.num_epochs - 1, 1);
    shuffled_epochs(1, 2);
  } else {
    shuffled_epochs(ix.num_epochs, 1);
  }

  // Walk the concatenation: sample k spans seq_length + 1 tokens starting where sample k-1
  // ended (sharing that token).
  const int64_t samples_available = (total - 1) / seq_length;
  ix.sample_idx.reserve(static_cast<size_t>(2 * (samples_available + 1)));
  int64_t pos = 0, offset = 0;
  ix.sample_idx.push_back(0);
  ix.sample_idx.push_back(0);
  for (int64_t s = 0; s < samples_available; ++s) {
    int64_t remaining = seq_length + 1;
    while (remaining != 0) {
      const int64_t doc_len = length(ix.doc_idx[pos]) - offset;
      remaining -= doc_len;
      if (remaining <= 0) {
        offset += remaining + doc_len - 1;
        remaining = 0;
      } else {
        ++pos;
        offset = 0;
      }
    }
    ix.sample_idx.push_back(pos);
    ix.sample_idx.push_back(offset);
  }
  const int64_t first = ix.separate_last_epoch ? ix.samples_before_last_epoch : samples_available;
  std::vector<int64_t> head(static_cast<size_t>(first)), tail(static_cast<size_t>(samples_available - first));
  std::iota(head.begin(), head.end(), 0);
  std::iota(tail.begin(), tail.end(), first);
  philox_shuffle(head, seed, stream ^ 0x5bd1e995ull);
  philox_shuffle(tail, seed ^ 0x9E3779B97F4A7C15ull, stream ^ 0x5bd1e995ull);
  ix.shuffle_idx = std::move(head);
  ix.shuffle_idx.insert(ix.shuffle_idx.end(), tail.begin(), tail.end());
  return ix;
}

GPTDataset::GPTDataset(std::shared_ptr<const DocumentStore> store, DocumentRange docs, int64_t seq_length,
                       int64_t num_samples, uint64_t seed, std::string name, const IndexCacheOptions& cache)
    : store_(std::move(store)), docs_(docs), seq_(seq_length), requested_(num_samples), seed_(seed),
      name_(std::move(name)) {
  if (cache.dir.empty()) {
    index_ = build_gpt_index(*store_, docs_, seq_, requested_, seed_, name_);
    return;
  }
  from_cache_ = load_or_build_index(cache, cache_description(), index_, [&] {
    return build_gpt_index(*store_, docs_, seq_, requested_, seed_, name_);
  });
}

std::string GPTDataset::cache_description() const {
  return detail::concat("GPTDataset v2 | store ", store_->describe(), " | split ", name_, " documents [",
                        docs_.begin, ", ", docs_.end, ") | seq_length ", seq_, " | num_samples ", requested_,
                        " | seed ", seed_);
}

void GPTDataset::sample(uint64_t index, int32_t* out) const {
  const int64_t n = static_cast<int64_t>(index_.shuffle_idx.size());
  const int64_t j = index_.shuffle_idx[static_cast<size_t>(static_cast<int64_t>(index % static_cast<uint64_t>(n)))];
  int64_t pos = index_.sample_idx[2 * j], off = index_.sample_idx[2 * j + 1];
  const int64_t last_pos = index_.sample_idx[2 * j + 2], last_off = index_.sample_idx[2 * j + 3];
  int64_t written = 0;
  while (true) {
    const int64_t doc = index_.doc_idx[static_cast<size_t>(pos)];
    const int64_t start = store_->document_offset(doc);
    const int64_t stop = pos == last_pos ? start + last_off + 1 : store_->document_offset(doc + 1);
    const int64_t count = stop - (start + off);
    if (count > 0) store_->read_tokens(start + off, count, out + written);
    written += std::max<int64_t>(count, 0);
    if (pos == last_pos) break;
    ++pos;
    off = 0;
  }
  LLM_CHECK(written == seq_ + 1, "sample ", index, " of ", store_->describe(), " has ", written,
            " tokens, expected ", seq_ + 1);
}

std::string GPTDataset::describe() const {
  return detail::concat(store_->describe(), " [", name_, ": documents ", docs_.begin, "-", docs_.end, ", ",
                        index_.shuffle_idx.size(), " samples, ", index_.num_epochs, " epoch(s)",
                        index_.separate_last_epoch ? ", the last one apart" : "", "]");
}

BlendedDataset::BlendedDataset(std::vector<double> weights, std::vector<std::shared_ptr<const SampleSource>> sources,
                               int64_t num_samples)
    : weights_(std::move(weights)), sources_(std::move(sources)) {
  if (weights_.size() != sources_.size() || sources_.empty())
    throw ConfigError("--data-path: expected pairs of weight and path");
  if (sources_.size() > 255) throw ConfigError("--data-path: at most 255 blended datasets");
  double sum = 0;
  for (double w : weights_) {
    if (!(w > 0)) throw ConfigError("--data-path: weights must be positive");
    sum += w;
  }
  for (double& w : weights_) w /= sum;
  for (auto& s : sources_)
    if (s->seq_length() != sources_.front()->seq_length())
      throw ConfigError("--data-path: blended datasets have different sequence lengths");
  dataset_index_.resize(static_cast<size_t>(num_samples));
  dataset_sample_index_.resize(static_cast<size_t>(num_samples));
  std::vector<int64_t> current(sources_.size(), 0);
  for (int64_t i = 0; i < num_samples; ++i) {
    size_t best = 0;
    double best_err = -1e300;
    for (size_t d = 0; d < sources_.size(); ++d) {
      // Megatron's build_blending_indices: the target after i samples is weight * max(i, 1).
      const double err = weights_[d] * static_cast<double>(std::max<int64_t>(i, 1)) - static_cast<double>(current[d]);
      if (err > best_err) {
        best_err = err;
        best = d;
      }
    }
    dataset_index_[static_cast<size_t>(i)] = static_cast<uint8_t>(best);
    dataset_sample_index_[static_cast<size_t>(i)] = current[best]++;
  }
}

int64_t BlendedDataset::vocab_size() const {
  int64_t v = 0;
  for (auto& s : sources_) v = std::max(v, s->vocab_size());
  return v;
}

void BlendedDataset::sample(uint64_t index, int32_t* out) const {
  const size_t i = static_cast<size_t>(index % dataset_index_.size());
  sources_[dataset_index_[i]]->sample(static_cast<uint64_t>(dataset_sample_index_[i]), out);
}

std::string BlendedDataset::describe() const {
  std::string s = "blend of " + std::to_string(sources_.size()) + " datasets:";
  const auto ratios = achieved_ratios();
  for (size_t d = 0; d < sources_.size(); ++d)
    s += detail::concat("\n    weight ", weights_[d], " achieved ", ratios[d], "  ", sources_[d]->describe());
  return s;
}

std::vector<double> BlendedDataset::achieved_ratios() const {
  std::vector<double> r(sources_.size(), 0.0);
  for (uint8_t d : dataset_index_) r[d] += 1.0;
  for (double& x : r) x /= static_cast<double>(dataset_index_.size());
  return r;
}

}  // namespace llm
