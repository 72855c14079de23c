#include "comm/nccl_shared_gpu.h"

#include "core/error.h"

namespace llm {

bool nccl_shared_gpu_setting(const char* value) {
  const std::string s = value ? value : "";
  LLM_CHECK(s.empty() || s == "0" || s == "1", "LLM_NCCL_SHARED_GPU='", s,
            "': expected 1 (ranks may share a GPU: each its own NCCL host) or 0");
  return s == "1";
}

std::optional<std::string> nccl_shared_gpu_host_id(bool shared, const char* user_host_id, const std::string& hostname,
                                                   int world_rank) {
  if (!shared || (user_host_id && *user_host_id)) return std::nullopt;
  return detail::concat(hostname, ":llm-rank-", world_rank);
}

}  // namespace llm
