// LLM_REQUIRE_CUDA=1 (set by tests/cuda/gpu_validation.sh on a GPU machine): a CUDA test without a
// device fails instead of reporting itself skipped, so a device that did not come up cannot pass
// as a run of skips.
#pragma once
#include <cstdlib>
#include <string>

namespace llm::testing {

inline bool cuda_required() {
  const char* e = std::getenv("LLM_REQUIRE_CUDA");
  return e && std::string(e) == "1";
}

}  // namespace llm::testing
