#include "train/data_setup.h"

#include <cmath>
#include <filesystem>

#include "core/error.h"
#include "data/dataset.h"
#include "data/mock_data.h"
#include "data/tokenizer_factory.h"

namespace llm {

namespace {

struct WeightedPath {
  double weight;
  std::string path;
};

std::vector<WeightedPath> parse_data_path(const std::vector<std::string>& words) {
  if (words.size() == 1) return {{1.0, words[0]}};
  if (words.size() % 2)
    throw ConfigError("--data-path: expected one directory, or pairs of WEIGHT DIRECTORY (got " +
                      std::to_string(words.size()) + " values)");
  std::vector<WeightedPath> out;
  for (size_t i = 0; i < words.size(); i += 2) {
    char* end = nullptr;
    const double w = std::strtod(words[i].c_str(), &end);
    if (*end || !(w > 0) || !std::isfinite(w)) throw ConfigError("--data-path: '" + words[i] + "' is not a positive weight (before " + words[i + 1] + ")");
    out.push_back({w, words[i + 1]});
  }
  return out;
}

}  // namespace

TrainingData build_training_data(TrainArgs& args, IndexCacheOptions cache) {
  TrainingData td;
  const uint64_t seed = static_cast<uint64_t>(args.seed);
  if (args.mock_data) {
    if (!args.data_path.empty()) throw ConfigError("--mock-data and --data-path exclude each other");
    td.vocab_size = args.vocab_size;
    auto train = std::make_shared<MockDataSource>(args.vocab_size, args.seq_length, seed, "train");
    td.summary = train->describe();
    td.train = train;
    if (args.eval_iters > 0) td.valid = std::make_shared<MockDataSource>(args.vocab_size, args.seq_length, seed, "valid");
    return td;
  }
  if (args.data_path.empty())
    throw ConfigError("no training data: pass --data-path DIR (from llm-tokenize) or --mock-data");
  const auto paths = parse_data_path(args.data_path);

  std::vector<std::shared_ptr<const Dataset>> sets;
  for (const WeightedPath& p : paths) sets.push_back(std::make_shared<const Dataset>(Dataset::open(p.path)));
  const DatasetInfo& first = sets.front()->info();
  for (size_t i = 1; i < sets.size(); ++i)
    if (!(sets[i]->info().tokenizer == first.tokenizer))
      throw ConfigError("--data-path: " + paths[i].path + " was tokenized with " + sets[i]->info().tokenizer.str() +
                        " but " + paths[0].path + " with " + first.tokenizer.str());
  if (!args.tokenizer_type.empty()) {
    TokenizerOptions to{args.tokenizer_type, args.tokenizer_model, args.vocab_file, args.merge_file, 0};
    if (args.tokenizer_type == "NullTokenizer") to.vocab_size = first.vocab_size - 1;
    const TokenizerIdentity mine = make_tokenizer(to)->identity();
    const bool spm = args.tokenizer_type == "SentencePieceTokenizer" || args.tokenizer_type == "GPTSentencePieceTokenizer";
    const std::string from = spm ? "--tokenizer-type " + args.tokenizer_type + " --tokenizer-model " + args.tokenizer_model
                             : args.tokenizer_type == "GPT2BPETokenizer"    ? "--vocab-file / --merge-file"
                                                                            : "--tokenizer-type " + args.tokenizer_type;
    if (!(mine == first.tokenizer))
      throw ConfigError("the model's tokenizer (" + mine.str() + ", from " + from + ") differs from " + paths[0].path +
                        "'s (" + first.tokenizer.str() + ")");
  }
  td.tokenizer = first.tokenizer;
  td.vocab_size = first.vocab_size;
  for (auto& s : sets) td.vocab_size = std::max(td.vocab_size, s->info().vocab_size);
  // The vocabulary is the data's: a --vocab-size flag that says otherwise would be dropped unsaid.
  // (Megatron's NullTokenizer takes --vocab-size without its end-of-document id, one more.)
  const bool null_tokens = first.tokenizer.kind == "NullTokenizer";
  if (const auto it = args.option_sources.find("vocab-size");
      it != args.option_sources.end() && it->second == "--vocab-size" &&
      args.vocab_size != td.vocab_size - (null_tokens ? 1 : 0))
    throw ConfigError(detail::concat("--vocab-size ", args.vocab_size, ": the vocabulary comes from --data-path (", paths[0].path,
                                     ": ", td.vocab_size, " tokens",
                                     "); drop the flag",
                                     null_tokens ? detail::concat(", or pass NullTokenizer's --vocab-size ", td.vocab_size - 1) : ""));
  args.vocab_size = td.vocab_size;

  if (cache.dir.empty())
    cache.dir = args.data_cache_path.empty() ? (std::filesystem::path(paths[0].path) / "index-cache").string()
                                             : args.data_cache_path;
  const int64_t train_samples = args.train_iters * args.global_batch_size;
  const int64_t valid_samples = args.eval_iters * args.global_batch_size;  // the same batches every evaluation
  double weight_sum = 0;
  for (const WeightedPath& p : paths) weight_sum += p.weight;

  std::vector<std::shared_ptr<const SampleSource>> train_parts, valid_parts;
  std::vector<double> weights;
  for (size_t i = 0; i < sets.size(); ++i) {
    const auto ranges = split_documents(sets[i]->num_documents(), args.split);
    const double share = paths[i].weight / weight_sum;
    // Megatron asks each blended dataset for 0.5% more than its share, so rounding never runs
    // dry; a single dataset for exactly what training takes.
    auto need = [&](int64_t total) {
      if (sets.size() == 1) return std::max<int64_t>(1, total);
      return std::max<int64_t>(1, static_cast<int64_t>(std::ceil(share * static_cast<double>(total) * 1.005)));
    };
    if (ranges[0].size() == 0)
      throw ConfigError(paths[i].path + ": the train split is empty (--split " + args.split + ")");
    train_parts.push_back(std::make_shared<GPTDataset>(sets[i], ranges[0], args.seq_length, need(train_samples), seed,
                                                       "train", cache));
    if (valid_samples > 0) {
      if (ranges[1].size() == 0)
        throw ConfigError(detail::concat(paths[i].path, ": --eval-iters ", args.eval_iters,
                                         " needs validation documents, but the valid split is empty (--split ",
                                         args.split, ", ", sets[i]->num_documents(), " documents)"));
      valid_parts.push_back(std::make_shared<GPTDataset>(sets[i], ranges[1], args.seq_length, need(valid_samples),
                                                         seed, "valid", cache));
    }
    weights.push_back(paths[i].weight);
  }
  if (sets.size() == 1) {
    td.train = train_parts[0];
    if (!valid_parts.empty()) td.valid = valid_parts[0];
  } else {
    auto blend = std::make_shared<BlendedDataset>(weights, train_parts, std::max<int64_t>(train_samples, 1));
    td.train = blend;
    if (!valid_parts.empty())
      td.valid = std::make_shared<BlendedDataset>(weights, valid_parts, std::max<int64_t>(valid_samples, 1));
  }
  td.summary = "train: " + td.train->describe();
  if (td.valid) td.summary += "\n> valid: " + td.valid->describe();
  return td;
}

}  // namespace llm
