#include "comm/nccl_communicator.h"

#include <mpi.h>
#include <nccl.h>

#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_check.h"

#define NCCL_CHECK(call, ...)                                                                          \
  do {                                                                                                 \
    const ncclResult_t llm_nccl_r_ = (call);                                                           \
    if (llm_nccl_r_ != ncclSuccess)                                                                    \
      throw ::llm::Error(::llm::detail::concat("NCCL error ", ncclGetErrorString(llm_nccl_r_),         \
                                               " in " __VA_OPT__(, ) __VA_ARGS__, " [", #call, " at ", \
                                               __FILE__, ":", __LINE__, "]"));                         \
  } while (0)

namespace llm {

namespace {

ncclDataType_t nccl_type(DType t, const char* op) {
  switch (t) {
    case DType::f32: return ncclFloat32;
    case DType::bf16: return ncclBfloat16;
    case DType::f16: return ncclFloat16;
    case DType::i32: return ncclInt32;
    case DType::i64: return ncclInt64;
    case DType::u8: return ncclUint8;
    default: LLM_FAIL(op, ": no NCCL type for ", dtype_name(t));
  }
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(cuda::CudaBackend& backend, MPI_Comm comm, bool owned, std::unique_ptr<Communicator> host)
      : backend_(backend), mpi_(comm), owned_(owned), host_(std::move(host)) {
    MPI_Comm_rank(mpi_, &rank_);
    MPI_Comm_size(mpi_, &size_);
    check_local_device();
    ncclUniqueId id{};
    if (rank_ == 0) NCCL_CHECK(ncclGetUniqueId(&id), "creating the NCCL unique id");
    MPI_Bcast(&id, static_cast<int>(sizeof(id)), MPI_BYTE, 0, mpi_);
    CUDA_CHECK(cudaSetDevice(backend_.device().index), "NCCL communicator on ", backend_.device().str());
    NCCL_CHECK(ncclCommInitRank(&comm_, size_, id, rank_), "ncclCommInitRank (rank ", rank_, " of ", size_, " on ",
               backend_.device().str(), "; one GPU per rank: check the local-rank device choice)");
  }
  ~NcclCommunicator() override {
    if (comm_) (void)ncclCommDestroy(comm_);
    if (owned_) MPI_Comm_free(&mpi_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }

  void all_reduce_sum(const Tensor& x) override {
    if (x.device().is_cpu()) return host_->all_reduce_sum(x);
    check_device(x, "all_reduce_sum");
    if (size_ == 1 || x.numel() == 0) return;
    NCCL_CHECK(ncclAllReduce(x.raw(), x.raw(), static_cast<size_t>(x.numel()), nccl_type(x.dtype(), "all_reduce_sum"),
                             ncclSum, comm_, backend_.stream()),
               "all_reduce_sum ", shape_str(x.shape()), " ", dtype_name(x.dtype()));
  }
  double all_reduce_sum(double v) override { return host_->all_reduce_sum(v); }
  double all_reduce_min(double v) override { return host_->all_reduce_min(v); }
  double all_reduce_max(double v) override { return host_->all_reduce_max(v); }

  void all_gather_ranges(const Tensor& x, const std::vector<int64_t>& offsets) override {
    if (x.device().is_cpu()) return host_->all_gather_ranges(x, offsets);
    check_device(x, "all_gather_ranges");
    LLM_CHECK(static_cast<int>(offsets.size()) == size_ + 1 && offsets.back() == x.numel(), "all_gather_ranges: ",
              offsets.size(), " offsets for ", size_, " ranks");
    if (size_ == 1) return;
    const ncclDataType_t t = nccl_type(x.dtype(), "all_gather_ranges");
    const size_t es = dtype_size(x.dtype());
    char* base = static_cast<char*>(x.raw());
    bool equal = offsets[0] == 0;
    for (int r = 0; r < size_; ++r) equal = equal && offsets[r + 1] - offsets[r] == offsets[1] - offsets[0];
    if (equal) {  // in-place all-gather: rank r's send buffer is its slot of the receive buffer
      const size_t count = static_cast<size_t>(offsets[1]);
      NCCL_CHECK(ncclAllGather(base + count * es * static_cast<size_t>(rank_), base, count, t, comm_, backend_.stream()),
                 "all_gather_ranges ", shape_str(x.shape()));
      return;
    }
    // Uneven ranges: one in-place broadcast per owner, fused into one NCCL group.
    NCCL_CHECK(ncclGroupStart(), "all_gather_ranges");
    for (int r = 0; r < size_; ++r) {
      const size_t count = static_cast<size_t>(offsets[r + 1] - offsets[r]);
      if (count == 0) continue;
      char* p = base + static_cast<size_t>(offsets[r]) * es;
      NCCL_CHECK(ncclBroadcast(p, p, count, t, r, comm_, backend_.stream()), "all_gather_ranges range of rank ", r);
    }
    NCCL_CHECK(ncclGroupEnd(), "all_gather_ranges ", shape_str(x.shape()));
  }

  void broadcast(const Tensor& x, int root) override {
    if (x.device().is_cpu()) return host_->broadcast(x, root);
    check_device(x, "broadcast");
    if (size_ == 1 || x.nbytes() == 0) return;
    NCCL_CHECK(ncclBroadcast(x.raw(), x.raw(), x.nbytes(), ncclUint8, root, comm_, backend_.stream()), "broadcast ",
               shape_str(x.shape()), " from rank ", root);
  }

  void barrier() override {
    backend_.synchronize();
    host_->barrier();
  }

 private:
  void check_device(const Tensor& x, const char* op) const {
    LLM_CHECK(x.device() == backend_.device() && x.is_contiguous(), "NCCL ", op, ": needs a contiguous tensor on ",
              backend_.device().str(), ", got ", x.device().str());
  }
  // One GPU per rank: the backend picked its device from the launcher's local-rank variable;
  // confirm it against the ranks that share this node (MPI_COMM_TYPE_SHARED), so two ranks on
  // one GPU fail here with a clear message instead of inside NCCL.
  void check_local_device() {
    MPI_Comm node;
    MPI_Comm_split_type(mpi_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node);
    int local = 0, local_size = 1;
    MPI_Comm_rank(node, &local);
    MPI_Comm_size(node, &local_size);
    std::vector<int> devices(static_cast<size_t>(local_size));
    int mine = backend_.device().index;
    MPI_Allgather(&mine, 1, MPI_INT, devices.data(), 1, MPI_INT, node);
    MPI_Comm_free(&node);
    int count = 0;
    CUDA_CHECK(cudaGetDeviceCount(&count), "NCCL communicator");
    for (int r = 0; r < local_size; ++r)
      for (int q = r + 1; q < local_size; ++q)
        LLM_CHECK(devices[static_cast<size_t>(r)] != devices[static_cast<size_t>(q)] || local_size > count,
                  "NCCL communicator: node-local ranks ", r, " and ", q, " both use cuda:", devices[static_cast<size_t>(r)],
                  " (", local_size, " ranks, ", count, " GPUs on this node); the launcher must export a local rank "
                  "(OMPI_COMM_WORLD_LOCAL_RANK, MPI_LOCALRANKID, SLURM_LOCALID, PALS_LOCAL_RANKID or LOCAL_RANK)");
  }
  cuda::CudaBackend& backend_;
  MPI_Comm mpi_;
  bool owned_;
  std::unique_ptr<Communicator> host_;
  ncclComm_t comm_ = nullptr;
  int rank_ = 0, size_ = 1;
};

}  // namespace

std::unique_ptr<Communicator> nccl_world_communicator(cuda::CudaBackend& backend) {
  return std::make_unique<NcclCommunicator>(backend, MPI_COMM_WORLD, false, mpi_world_communicator());
}

std::unique_ptr<Communicator> nccl_split_communicator(cuda::CudaBackend& backend, int color, int key) {
  MPI_Comm sub;
  MPI_Comm_split(MPI_COMM_WORLD, color, key, &sub);
  return std::make_unique<NcclCommunicator>(backend, sub, true, mpi_split_communicator(color, key));
}

}  // namespace llm
