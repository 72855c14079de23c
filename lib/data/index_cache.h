// The GPT sample-index cache: an HDF5 file per index, named by a hash of the text describing
// what built it (and holding that text, checked on load). One rank builds a missing index and
// publishes it atomically (write to a temporary name, rename); the others wait at the barrier
// and then read it — many ranks starting at once never see a half-written file.
#pragma once
#include <functional>
#include <string>

#include "data/gpt_dataset.h"

namespace llm {

// Returns true when the index came from the cache.
bool load_or_build_index(const IndexCacheOptions& cache, const std::string& description, GPTIndex& index,
                         const std::function<GPTIndex()>& build);

}  // namespace llm
