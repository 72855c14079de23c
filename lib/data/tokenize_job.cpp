#include "data/tokenize_job.h"

#include <omp.h>

#include <exception>

#include "core/error.h"
#include "core/timer.h"

namespace llm {

TokenizeStats tokenize_documents(DocumentReader& reader, const Tokenizer& tokenizer,
                                 DatasetPartWriter& writer, const TokenizeOptions& options) {
  TokenizeStats st;
  Timer timer;
  std::vector<RawDocument> batch;
  std::vector<std::vector<int32_t>> ids;
  std::vector<std::exception_ptr> errors;
  const int32_t eod = tokenizer.eod_id();
  int64_t encoded_empty = 0;
  bool more = true;
  while (more) {
    batch.clear();
    more = reader.next_batch(batch, options.batch_bytes);
    ids.resize(batch.size());
    errors.assign(batch.size(), nullptr);
    // Documents are independent: encode them on all threads, then append in input order. An
    // exception cannot leave the parallel region (it would end the process in std::terminate):
    // each document's is kept and the first, by input order, rethrown naming the document.
#pragma omp parallel for schedule(dynamic, 1)
    for (size_t i = 0; i < batch.size(); ++i) {
      try {
        ids[i] = tokenizer.encode(batch[i].text);
        if (options.append_eod && !ids[i].empty()) ids[i].push_back(eod);
      } catch (...) {
        errors[i] = std::current_exception();
      }
    }
    for (size_t i = 0; i < batch.size(); ++i) {
      if (!errors[i]) continue;
      try {
        std::rethrow_exception(errors[i]);
      } catch (const ConfigError& e) {
        throw ConfigError(batch[i].where + ": cannot tokenize the document: " + e.what());
      } catch (const std::exception& e) {
        throw Error(batch[i].where + ": cannot tokenize the document: " + e.what());
      }
    }
    for (size_t i = 0; i < batch.size(); ++i) {
      if (ids[i].empty()) {  // text that encodes to no token is no document (Megatron's preprocess_data.py)
        ++encoded_empty;
        continue;
      }
      writer.add_document(ids[i]);
      st.tokens += static_cast<int64_t>(ids[i].size());
    }
    st.input = reader.stats();
    st.input.documents -= encoded_empty;
    st.input.empty_skipped += encoded_empty;
    st.seconds = timer.seconds();
    if (options.progress) options.progress(st);
  }
  return st;
}

std::string dataset_content_hash(const Dataset& dataset) {
  // FNV-1a over the document offsets and then the tokens, streamed in blocks.
  uint64_t h = 1469598103934665603ull;
  auto mix = [&h](const void* p, size_t n) {
    const auto* b = static_cast<const unsigned char*>(p);
    for (size_t i = 0; i < n; ++i) {
      h ^= b[i];
      h *= 1099511628211ull;
    }
  };
  for (int64_t off : dataset.document_offsets()) mix(&off, sizeof off);
  std::vector<int32_t> block(size_t{1} << 20);
  for (int64_t pos = 0; pos < dataset.num_tokens(); pos += static_cast<int64_t>(block.size())) {
    const int64_t n = std::min<int64_t>(static_cast<int64_t>(block.size()), dataset.num_tokens() - pos);
    dataset.read(pos, n, block.data());
    mix(block.data(), static_cast<size_t>(n) * sizeof(int32_t));
  }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

}  // namespace llm
