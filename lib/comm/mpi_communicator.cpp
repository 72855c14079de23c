#include <mpi.h>

#include "comm/communicator.h"

namespace llm {

namespace {

class MpiCommunicator final : public Communicator {
 public:
  explicit MpiCommunicator(MPI_Comm comm, bool owned) : comm_(comm), owned_(owned) {
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }
  ~MpiCommunicator() override {
    if (owned_) MPI_Comm_free(&comm_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void all_reduce_sum(const Tensor& x) override {
    LLM_CHECK(x.dtype() == DType::f32 && x.is_contiguous() && x.device().is_cpu(),
              "MPI all-reduce needs a contiguous host f32 tensor");
    if (size_ == 1) return;
    // MPI counts are int: reduce in windows of at most 2^30 elements.
    float* p = x.data<float>();
    for (int64_t off = 0, n = x.numel(); off < n; off += int64_t{1} << 30) {
      const int count = static_cast<int>(std::min<int64_t>(n - off, int64_t{1} << 30));
      MPI_Allreduce(MPI_IN_PLACE, p + off, count, MPI_FLOAT, MPI_SUM, comm_);
    }
  }
  double all_reduce_sum(double v) override { return reduce(v, MPI_SUM); }
  double all_reduce_min(double v) override { return reduce(v, MPI_MIN); }
  double all_reduce_max(double v) override { return reduce(v, MPI_MAX); }
  void all_gather_ranges(const Tensor& x, const std::vector<int64_t>& offsets) override {
    LLM_CHECK(x.dtype() == DType::f32 && x.is_contiguous() && x.device().is_cpu(),
              "MPI all-gather needs a contiguous host f32 tensor");
    LLM_CHECK(static_cast<int>(offsets.size()) == size_ + 1 && offsets.back() == x.numel(),
              "all_gather_ranges: ", offsets.size(), " offsets for ", size_, " ranks");
    if (size_ == 1) return;
    LLM_CHECK(x.numel() < (int64_t{1} << 31), "all_gather_ranges: ", x.numel(),
              " elements exceed MPI's int counts (split the buffer)");
    std::vector<int> counts(size_), displs(size_);
    for (int r = 0; r < size_; ++r) {
      displs[r] = static_cast<int>(offsets[r]);
      counts[r] = static_cast<int>(offsets[r + 1] - offsets[r]);
    }
    MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, x.data<float>(), counts.data(), displs.data(), MPI_FLOAT, comm_);
  }
  void broadcast(const Tensor& x, int root) override {
    LLM_CHECK(x.is_contiguous() && x.device().is_cpu(), "MPI broadcast needs a contiguous host tensor");
    if (size_ == 1) return;
    char* p = static_cast<char*>(x.raw());
    for (size_t off = 0, n = x.nbytes(); off < n; off += size_t{1} << 30) {
      const int count = static_cast<int>(std::min<size_t>(n - off, size_t{1} << 30));
      MPI_Bcast(p + off, count, MPI_BYTE, root, comm_);
    }
  }
  void barrier() override { MPI_Barrier(comm_); }

 private:
  double reduce(double v, MPI_Op op) {
    double out = v;
    if (size_ > 1) MPI_Allreduce(&v, &out, 1, MPI_DOUBLE, op, comm_);
    return out;
  }
  MPI_Comm comm_;
  bool owned_;
  int rank_ = 0, size_ = 1;
};

}  // namespace

std::unique_ptr<Communicator> mpi_world_communicator() {
  return std::make_unique<MpiCommunicator>(MPI_COMM_WORLD, false);
}

std::unique_ptr<Communicator> mpi_split_communicator(int color, int key) {
  MPI_Comm sub;
  MPI_Comm_split(MPI_COMM_WORLD, color, key, &sub);
  return std::make_unique<MpiCommunicator>(sub, true);
}

}  // namespace llm
