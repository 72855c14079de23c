// Collectives over NCCL for tensors on the CUDA backend's device, behind the same Communicator
// interface as MPI, so every parallel feature runs on GPUs unchanged. Built only when nccl.h
// and libnccl are found (LLM_HAVE_NCCL; CMake hint LLM_NCCL_ROOT).
//
// Bootstrap: rank 0 of the group creates the NCCL unique id and broadcasts it over MPI, then
// every rank joins with ncclCommInitRank on the backend's device (one GPU per rank, chosen from
// the node-local rank: see cuda::local_device). Device tensors go through NCCL on the
// backend's stream (ordered with the ops, no host synchronisation); host tensors, scalars and
// barriers go through an MPI communicator over the same ranks.
//
// An operation still unfinished a timeout after it was queued (a peer that never joined it)
// ends the rank through the watchdog (comm/watchdog.h): exit status 1, naming the communicator
// and the operation, so the job ends instead of waiting until its wall time.
//
// Ranks sharing a GPU are refused with the reason, unless LLM_NCCL_SHARED_GPU=1: then each
// process is its own NCCL host (NCCL_HOSTID per rank), so a multi-rank layout can be checked for
// correctness on a machine with fewer GPUs than ranks (slowly: NCCL goes through sockets).
#pragma once
#include <memory>

#include "comm/communicator.h"

namespace llm {

namespace cuda {
class CudaBackend;
}

// Over all of MPI_COMM_WORLD, or over the ranks with the same color (MPI_Comm_split order by key).
std::unique_ptr<Communicator> nccl_world_communicator(cuda::CudaBackend& backend);
std::unique_ptr<Communicator> nccl_split_communicator(cuda::CudaBackend& backend, int color, int key);
// Whether two ranks of MPI_COMM_WORLD on one node would use the same GPU, by PCI bus id as the
// communicator's own check (backend: this rank's, null where it has none, which counts as sharing
// with another such rank). Collective over MPI_COMM_WORLD.
bool node_ranks_share_a_gpu(const cuda::CudaBackend* backend);
// The timeout of the communicators made from here on (llm-pretrain: --distributed-timeout-minutes,
// Megatron's, 10 minutes by default as here); 0: none. Needs the watchdog (LLM_NCCL_WATCHDOG_MS
// not 0), whose thread checks it once per period.
void set_nccl_timeout_seconds(double seconds);

}  // namespace llm
