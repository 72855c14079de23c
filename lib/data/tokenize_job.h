// The body of llm-tokenize for one process (or one rank's part): read documents in batches,
// encode each batch on all threads, append them in input order to a dataset part.
#pragma once
#include <functional>

#include "data/dataset.h"
#include "data/text_documents.h"
#include "data/tokenizer.h"

namespace llm {

struct TokenizeStats {
  InputStats input;
  int64_t tokens = 0;
  double seconds = 0;
};

struct TokenizeOptions {
  bool append_eod = false;
  size_t batch_bytes = size_t{8} << 20;
  // Called after every batch with the running totals (for progress bars).
  std::function<void(const TokenizeStats&)> progress;
};

TokenizeStats tokenize_documents(DocumentReader& reader, const Tokenizer& tokenizer,
                                 DatasetPartWriter& writer, const TokenizeOptions& options);

// Identity of a dataset's content (tokens and document boundaries), independent of how it is
// sharded: equal for datasets holding the same documents in the same order.
std::string dataset_content_hash(const Dataset& dataset);

}  // namespace llm
