// LLM_NCCL_SHARED_GPU: whether ranks may share a GPU, and the NCCL host id that lets them.
// Plain C++ (no NCCL, no MPI), so its rules are tested in every build; the NCCL communicator
// applies them before its first NCCL call.
//
// NCCL refuses two ranks of one communicator on the same GPU of the same host ("Duplicate GPU
// detected"). With LLM_NCCL_SHARED_GPU=1 each process names itself a host of its own
// (NCCL_HOSTID = "<hostname>:llm-rank-<world rank>", unless the user set NCCL_HOSTID), so NCCL
// connects the ranks through its network transport (sockets on one machine) and never sees a
// GPU twice on one host: a correctness run of a multi-rank layout on fewer GPUs, not a fast one.
#pragma once
#include <optional>
#include <string>

namespace llm {

// The setting's value: unset, empty or "0" off, "1" on; anything else throws naming the variable.
bool nccl_shared_gpu_setting(const char* value);

// The NCCL_HOSTID this process should set, if any: only when sharing is on and the user gave none.
std::optional<std::string> nccl_shared_gpu_host_id(bool shared, const char* user_host_id, const std::string& hostname,
                                                   int world_rank);

}  // namespace llm
