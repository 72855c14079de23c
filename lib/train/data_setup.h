// Turns the data flags (--mock-data, or --data-path with --split, blending weights and the
// tokenizer flags) into the training and validation sample streams.
#pragma once
#include <memory>
#include <string>

#include "data/gpt_dataset.h"
#include "data/tokenizer.h"
#include "train/args.h"

namespace llm {

struct TrainingData {
  std::shared_ptr<const SampleSource> train, valid;  // valid is null without --eval-iters
  TokenizerIdentity tokenizer;                       // empty kind for mock data
  int64_t vocab_size = 0;
  std::string summary;                               // lines for the tool to print
};

// Opens and checks the datasets (tokenizer identity against each other and against
// --tokenizer-type when given), splits documents, builds or loads the cached sample indices.
// Sets args.vocab_size from the data. `cache` says who builds missing indices under MPI.
TrainingData build_training_data(TrainArgs& args, IndexCacheOptions cache = {});

}  // namespace llm
