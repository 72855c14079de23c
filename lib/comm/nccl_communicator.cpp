#include "comm/nccl_communicator.h"

#include <mpi.h>
#include <nccl.h>

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_check.h"
#include "comm/nccl_shared_gpu.h"
#include "comm/watchdog.h"

// NCCL's own words for the last failure ("Duplicate GPU detected ...", a socket it could not
// reach), where the library has them (2.13 on): the result code alone ("invalid usage",
// "unhandled system error") rarely says what to fix.
inline std::string nccl_last_error() {
#if defined(NCCL_VERSION_CODE) && NCCL_VERSION_CODE >= NCCL_VERSION(2, 13, 0)
  const char* e = ncclGetLastError(nullptr);
  if (e && *e) return std::string(": ") + e;
#endif
  return "";
}

#define NCCL_CHECK(call, ...)                                                                             \
  do {                                                                                                    \
    const ncclResult_t llm_nccl_r_ = (call);                                                              \
    if (llm_nccl_r_ != ncclSuccess)                                                                       \
      throw ::llm::Error(::llm::detail::concat("NCCL error ", ncclGetErrorString(llm_nccl_r_),            \
                                               nccl_last_error(), " in " __VA_OPT__(, ) __VA_ARGS__, " [", \
                                               #call, " at ", __FILE__, ":", __LINE__, "]"));             \
  } while (0)

namespace llm {

namespace {

// ncclGroupStart() .. end() as a scope: when a check throws between them the destructor still
// ends the group (its result ignored: the first error is the one reported), so no later NCCL
// call of this thread, an abort's included, is queued into a group that never ends.
class NcclGroup {
 public:
  explicit NcclGroup(const char* op) { NCCL_CHECK(ncclGroupStart(), op); }
  NcclGroup(const NcclGroup&) = delete;
  NcclGroup& operator=(const NcclGroup&) = delete;
  ~NcclGroup() {
    if (open_) (void)ncclGroupEnd();
  }
  void end(const std::string& what) {
    open_ = false;
    NCCL_CHECK(ncclGroupEnd(), what);
  }

 private:
  bool open_ = true;
};

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

// LLM_NCCL_SHARED_GPU=1 (comm/nccl_shared_gpu.h): read once, and this process's NCCL host id set
// before its first NCCL call (the first communicator's constructor).
bool shared_gpu_mode() {
  static const bool on = [] {
    const bool shared = nccl_shared_gpu_setting(std::getenv("LLM_NCCL_SHARED_GPU"));
    int world = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &world);
    char host[256] = {};
    (void)gethostname(host, sizeof(host) - 1);
    if (const auto id = nccl_shared_gpu_host_id(shared, std::getenv("NCCL_HOSTID"), host, world))
      ::setenv("NCCL_HOSTID", id->c_str(), 1);
    return shared;
  }();
  return on;
}

// The process's watchdog over its NCCL communicators (comm/watchdog.h): a failure NCCL records
// asynchronously (a network error, a peer lost inside the network) is otherwise seen by no
// caller, and this rank would wait in its next synchronise until the job's wall time. On one it
// says which failed and ends the process with exit status 1 (no abort first: comm/watchdog.cpp),
// so the launcher ends the job.
// LLM_NCCL_WATCHDOG_MS sets its period (1000; 0 off), read at the first communicator.
Watchdog& nccl_watchdog() {
  static Watchdog w(
      watchdog_period_ms(std::getenv("LLM_NCCL_WATCHDOG_MS")),
      [](void* h) -> std::string {
        ncclResult_t r = ncclSuccess;
        const ncclResult_t q = ncclCommGetAsyncError(static_cast<ncclComm_t>(h), &r);
        if (q != ncclSuccess) r = q;
#if defined(NCCL_VERSION_CODE) && NCCL_VERSION_CODE >= NCCL_VERSION(2, 14, 0)
        if (r == ncclInProgress) return "";  // a non-blocking communicator's operation under way
#endif
        if (r == ncclSuccess) return "";
        return std::string("NCCL asynchronous error ") + ncclGetErrorString(r) + nccl_last_error();
      },
      [](void* h) { (void)ncclCommAbort(static_cast<ncclComm_t>(h)); },
      [](const std::string& message) { watchdog_exit(message, "its exit ends its NCCL kernels"); });
  return w;
}

std::atomic<double>& op_timeout() {
  static std::atomic<double> seconds{600.0};  // Megatron's --distributed-timeout-minutes default
  return seconds;
}

// The PCI bus id of the GPU each rank of `comm` on this node uses, in node-rank order (device:
// this rank's, -1 for none; "" where a rank has none or its id could not be read, `error` saying
// why for this rank). Compared by bus id, not device number: a launcher or wrapper that gives each
// rank its own CUDA_VISIBLE_DEVICES (ALCF's Polaris affinity script, Slurm's --gpus-per-task)
// shows every rank its GPU as cuda:0. Collective over comm.
struct NodeGpus {
  std::vector<std::string> ids;
  int local = 0;
  cudaError_t error = cudaSuccess;
};
NodeGpus node_gpus(MPI_Comm comm, int device) {
  constexpr int kIdLen = 32;  // "dddd:bb:dd.f" and its terminator, with room
  NodeGpus n;
  char mine[kIdLen] = {};
  if (device >= 0 && (n.error = cudaDeviceGetPCIBusId(mine, kIdLen, device)) != cudaSuccess) mine[0] = '\0';
  int rank = 0, local_size = 1;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm node;
  MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node);
  MPI_Comm_rank(node, &n.local);
  MPI_Comm_size(node, &local_size);
  std::vector<char> all(static_cast<size_t>(kIdLen) * static_cast<size_t>(local_size));
  MPI_Allgather(mine, kIdLen, MPI_CHAR, all.data(), kIdLen, MPI_CHAR, node);
  MPI_Comm_free(&node);
  for (int r = 0; r < local_size; ++r) n.ids.emplace_back(all.data() + static_cast<size_t>(r) * kIdLen);
  return n;
}

// Completion of a non-blocking operation on the communication stream: wait() orders the compute
// stream after it (no host block); the tensors must not be touched by the host before a synchronise.
// The request holds the operation's tensors until then: the caching allocator reuses a freed
// block in the compute stream's order, so a temporary released while the communication stream
// still reads it could be handed to the next compute op.
class NcclRequest final : public Communicator::Request {
 public:
  NcclRequest(cudaStream_t compute, cudaEvent_t done, std::vector<Tensor> keep)
      : compute_(compute), done_(done), keep_(std::move(keep)) {}
  ~NcclRequest() override {
    try {
      wait();
    } catch (...) {
    }
  }
  void wait() override {
    if (!done_) return;
    cudaEvent_t e = done_;
    done_ = nullptr;
    const cudaError_t r = cudaStreamWaitEvent(compute_, e, 0);
    (void)cudaEventDestroy(e);
    if (r == cudaSuccess) keep_.clear();  // from here the compute stream is ordered after the operation
    CUDA_CHECK(r, "waiting for an asynchronous NCCL operation");
  }
  // Not ready yet is no error, but the runtime records it as the thread's last error, which the
  // backend's next launch check (cudaGetLastError) would report as that kernel's failure: cleared.
  // Any other result is a real error (a faulted NCCL kernel), not "still running".
  bool test() override {
    if (!done_) return true;
    const cudaError_t r = cudaEventQuery(done_);
    if (r == cudaErrorNotReady) {
      (void)cudaGetLastError();
      return false;
    }
    CUDA_CHECK(r, "polling an asynchronous NCCL operation");
    return true;
  }

 private:
  cudaStream_t compute_;
  cudaEvent_t done_;
  std::vector<Tensor> keep_;
};

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
    Watchdog& watchdog = nccl_watchdog();  // its setting checked before the first communicator exists
    NCCL_CHECK(ncclCommInitRank(&comm_, size_, id, rank_), "ncclCommInitRank (rank ", rank_, " of ", size_, " on ",
               backend_.device().str(), "; one GPU per rank: check the local-rank device choice)");
    int world = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &world);
    world_rank_ = world;
    // The timeout's markers only where the watchdog's thread runs to check them.
    timeout_s_ = op_timeout().load();
    if (timeout_s_ > 0 && watchdog.polling()) {
      const int dev = backend_.device().index;
      pending_ = std::make_unique<PendingOps>([dev](void* marker) {
        // The watchdog's thread: on this rank's device, so the runtime makes no context on device 0.
        thread_local int current = -1;
        if (current != dev && cudaSetDevice(dev) == cudaSuccess) current = dev;
        const cudaError_t r = cudaEventQuery(static_cast<cudaEvent_t>(marker));
        if (r == cudaSuccess) return true;
        (void)cudaGetLastError();  // this thread's record of "not ready"
        // Any other error is a faulted context: the rank's own next check reports it.
        return r != cudaErrorNotReady;
      });
    }
    std::function<std::string()> check;
    if (pending_) check = [this] { return pending_->check(PendingOps::Clock::now(), timeout_s_); };
    watchdog.add(comm_,
                 detail::concat("rank ", world, ": the NCCL communicator of ", size_, " ranks (its rank ", rank_, ", ",
                                backend_.device().str(), ")"),
                 std::move(check));
  }
  ~NcclCommunicator() override {
    if (std::uncaught_exceptions() > uncaught_) {
      // Unwinding from an error on this rank: what it queued may wait on peers that will never
      // join, and ncclCommDestroy (or a synchronise) would wait with it; aborted instead, so the
      // error reaches main and the launcher's abort.
      if (comm_) nccl_watchdog().remove(comm_);  // no query or abort of it runs past here
      if (comm_) (void)ncclCommAbort(comm_);
    } else {
      // Both streams' NCCL work done first (the blocking operations run on the compute stream),
      // still watched: a peer that never joins the last operations is timed out as anywhere.
      (void)cudaStreamSynchronize(backend_.stream());
      if (comm_stream_) (void)cudaStreamSynchronize(comm_stream_);
      if (comm_) nccl_watchdog().remove(comm_);
      if (comm_) {
        const WatchedPhase destroy(nccl_watchdog(), detail::concat("ncclCommDestroy (rank ", rank_, " of ", size_, ")"),
                                   timeout_s_);
        (void)ncclCommDestroy(comm_);
      }
    }
    if (pending_)
      for (void* m : pending_->release_all()) (void)cudaEventDestroy(static_cast<cudaEvent_t>(m));
    if (comm_stream_) (void)cudaStreamDestroy(comm_stream_);
    if (owned_) MPI_Comm_free(&mpi_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  bool takes(const Device& device) const override { return device.is_cpu() || device == backend_.device(); }

  void all_reduce_sum(const Tensor& x) override {
    if (x.device().is_cpu()) return on_host([&] { return host_->all_reduce_sum(x); });
    check_device(x, "all_reduce_sum");
    if (size_ == 1 || x.numel() == 0) return;
    volume_.all_reduce += static_cast<int64_t>(x.nbytes());
    Timed timed(*this, "all_reduce_sum", x.nbytes());
    NCCL_CHECK(ncclAllReduce(x.raw(), x.raw(), static_cast<size_t>(x.numel()), nccl_type(x.dtype(), "all_reduce_sum"),
                             ncclSum, comm_, stream()),
               "all_reduce_sum ", shape_str(x.shape()), " ", dtype_name(x.dtype()));
    timed.queued();
  }
  double all_reduce_sum(double v) override {
    return watched("an all-reduce (sum) of a scalar", [&] { return host_->all_reduce_sum(v); });
  }
  double all_reduce_min(double v) override {
    return watched("an all-reduce (min) of a scalar", [&] { return host_->all_reduce_min(v); });
  }
  double all_reduce_max(double v) override {
    return watched("an all-reduce (max) of a scalar", [&] { return host_->all_reduce_max(v); });
  }

  void all_gather_ranges(const Tensor& x, const std::vector<int64_t>& offsets) override {
    if (x.device().is_cpu()) return on_host([&] { return host_->all_gather_ranges(x, offsets); });
    check_device(x, "all_gather_ranges");
    LLM_CHECK(static_cast<int>(offsets.size()) == size_ + 1 && offsets.back() == x.numel(), "all_gather_ranges: ",
              offsets.size(), " offsets for ", size_, " ranks");
    if (size_ == 1 || x.numel() == 0) return;
    volume_.all_gather += static_cast<int64_t>(x.nbytes());
    const ncclDataType_t t = nccl_type(x.dtype(), "all_gather_ranges");
    const size_t es = dtype_size(x.dtype());
    char* base = static_cast<char*>(x.raw());
    bool equal = offsets[0] == 0;
    for (int r = 0; r < size_; ++r) equal = equal && offsets[r + 1] - offsets[r] == offsets[1] - offsets[0];
    if (equal) {  // in-place all-gather: rank r's send buffer is its slot of the receive buffer
      const size_t count = static_cast<size_t>(offsets[1]);
      Timed timed(*this, "all_gather_ranges", x.nbytes());
      NCCL_CHECK(ncclAllGather(base + count * es * static_cast<size_t>(rank_), base, count, t, comm_, stream()),
                 "all_gather_ranges ", shape_str(x.shape()));
      return timed.queued();
    }
    // Uneven ranges: one in-place broadcast per owner, fused into one NCCL group.
    Timed timed(*this, "all_gather_ranges (broadcasts)", x.nbytes());
    NcclGroup group("all_gather_ranges");
    for (int r = 0; r < size_; ++r) {
      const size_t count = static_cast<size_t>(offsets[r + 1] - offsets[r]);
      if (count == 0) continue;
      char* p = base + static_cast<size_t>(offsets[r]) * es;
      NCCL_CHECK(ncclBroadcast(p, p, count, t, r, comm_, stream()), "all_gather_ranges range of rank ", r);
    }
    group.end(detail::concat("all_gather_ranges ", shape_str(x.shape())));
    timed.queued();
  }

  void reduce_scatter_ranges(const Tensor& x, const std::vector<int64_t>& offsets) override {
    if (x.device().is_cpu()) return on_host([&] { return host_->reduce_scatter_ranges(x, offsets); });
    check_device(x, "reduce_scatter_ranges");
    LLM_CHECK(static_cast<int>(offsets.size()) == size_ + 1 && offsets.front() == 0 && offsets.back() == x.numel(),
              "reduce_scatter_ranges: ", offsets.size(), " offsets for ", size_, " ranks");
    if (size_ == 1 || x.numel() == 0) return;
    volume_.reduce_scatter += static_cast<int64_t>(x.nbytes());
    const ncclDataType_t t = nccl_type(x.dtype(), "reduce_scatter_ranges");
    const size_t es = dtype_size(x.dtype());
    char* base = static_cast<char*>(x.raw());
    bool equal = true;
    for (int r = 0; r < size_; ++r) equal = equal && offsets[r + 1] - offsets[r] == offsets[1] - offsets[0];
    if (equal) {  // in-place reduce-scatter: rank r's result lands in its own slot of the buffer
      const size_t count = static_cast<size_t>(offsets[1]);
      Timed timed(*this, "reduce_scatter_ranges", x.nbytes());
      NCCL_CHECK(ncclReduceScatter(base, base + count * es * static_cast<size_t>(rank_), count, t, ncclSum, comm_,
                                   stream()),
                 "reduce_scatter_ranges ", shape_str(x.shape()));
      return timed.queued();
    }
    // Uneven ranges: one in-place reduce per owner, fused into one NCCL group.
    Timed timed(*this, "reduce_scatter_ranges (reduces)", x.nbytes());
    NcclGroup group("reduce_scatter_ranges");
    for (int r = 0; r < size_; ++r) {
      const size_t count = static_cast<size_t>(offsets[r + 1] - offsets[r]);
      if (count == 0) continue;
      char* p = base + static_cast<size_t>(offsets[r]) * es;
      NCCL_CHECK(ncclReduce(p, p, count, t, ncclSum, r, comm_, stream()), "reduce_scatter_ranges range of rank ", r);
    }
    group.end(detail::concat("reduce_scatter_ranges ", shape_str(x.shape())));
    timed.queued();
  }

  void broadcast(const Tensor& x, int root) override {
    if (x.device().is_cpu()) return on_host([&] { return host_->broadcast(x, root); });
    check_device(x, "broadcast");
    if (size_ == 1 || x.nbytes() == 0) return;
    volume_.broadcast += static_cast<int64_t>(x.nbytes());
    Timed timed(*this, "broadcast", x.nbytes(), root);
    NCCL_CHECK(ncclBroadcast(x.raw(), x.raw(), x.nbytes(), ncclUint8, root, comm_, stream()), "broadcast ",
               shape_str(x.shape()), " from rank ", root);
    timed.queued();
  }

  // Also finishes this rank's non-blocking operations still on the communication stream.
  void barrier() override {
    backend_.synchronize();
    if (comm_stream_) CUDA_CHECK(cudaStreamSynchronize(comm_stream_), "NCCL barrier (the communication stream)");
    watched("a barrier", [&] { host_->barrier(); });
  }

  void all_gather(const Tensor& out, const Tensor& in) override {
    if (out.device().is_cpu() && in.device().is_cpu()) return on_host([&] { return host_->all_gather(out, in); });
    check_pair(out, in, "all_gather");
    LLM_CHECK(out.numel() == in.numel() * size_, "all_gather: output of ", out.numel(), " elements for ", size_,
              " inputs of ", in.numel());
    if (in.numel() == 0) return;
    if (size_ > 1) volume_.all_gather += static_cast<int64_t>(out.nbytes());
    Timed timed(*this, "all_gather", out.nbytes());
    NCCL_CHECK(ncclAllGather(in.raw(), out.raw(), static_cast<size_t>(in.numel()), nccl_type(in.dtype(), "all_gather"),
                             comm_, stream()),
               "all_gather ", shape_str(in.shape()), " -> ", shape_str(out.shape()));
    timed.queued();
  }

  void reduce_scatter(const Tensor& out, const Tensor& in) override {
    if (out.device().is_cpu() && in.device().is_cpu()) return on_host([&] { return host_->reduce_scatter(out, in); });
    check_pair(out, in, "reduce_scatter");
    LLM_CHECK(in.numel() == out.numel() * size_, "reduce_scatter: input of ", in.numel(), " elements for ", size_,
              " outputs of ", out.numel());
    if (out.numel() == 0) return;
    if (size_ > 1) volume_.reduce_scatter += static_cast<int64_t>(in.nbytes());
    Timed timed(*this, "reduce_scatter", in.nbytes());
    NCCL_CHECK(ncclReduceScatter(in.raw(), out.raw(), static_cast<size_t>(out.numel()),
                                 nccl_type(in.dtype(), "reduce_scatter"), ncclSum, comm_, stream()),
               "reduce_scatter ", shape_str(in.shape()), " -> ", shape_str(out.shape()));
    timed.queued();
  }

  // NCCL has no all-to-all primitive: one grouped send and receive per peer (chunk r of `in`
  // to rank r, chunk r of `out` from rank r), which NCCL schedules as a single operation.
  void all_to_all(const Tensor& out, const Tensor& in) override {
    if (out.device().is_cpu() && in.device().is_cpu()) return on_host([&] { return host_->all_to_all(out, in); });
    check_pair(out, in, "all_to_all");
    LLM_CHECK(in.numel() == out.numel() && in.numel() % size_ == 0, "all_to_all: ", in.numel(), " and ", out.numel(),
              " elements for ", size_, " ranks (equal sizes, divisible by the group)");
    LLM_CHECK(out.raw() != in.raw() || size_ == 1, "all_to_all: NCCL needs distinct input and output buffers");
    if (in.numel() == 0) return;
    if (size_ > 1) volume_.all_to_all += static_cast<int64_t>(in.nbytes());
    const ncclDataType_t t = nccl_type(in.dtype(), "all_to_all");
    const size_t chunk = static_cast<size_t>(in.numel() / size_);
    const size_t bytes = chunk * dtype_size(in.dtype());
    const char* src = static_cast<const char*>(in.raw());
    char* dst = static_cast<char*>(out.raw());
    Timed timed(*this, "all_to_all", in.nbytes());
    NcclGroup group("all_to_all");
    for (int r = 0; r < size_; ++r) {
      NCCL_CHECK(ncclSend(src + bytes * static_cast<size_t>(r), chunk, t, r, comm_, stream()),
                 "all_to_all send to rank ", r);
      NCCL_CHECK(ncclRecv(dst + bytes * static_cast<size_t>(r), chunk, t, r, comm_, stream()),
                 "all_to_all receive from rank ", r);
    }
    group.end(detail::concat("all_to_all ", shape_str(in.shape())));
    timed.queued();
  }

  // NCCL point-to-point has no tags: messages between a pair of ranks are matched in order, which
  // is what the pipeline schedule relies on (`tag` is only checked on the MPI path).
  void send(const Tensor& x, int peer, int tag) override {
    if (x.device().is_cpu()) return on_host([&] { return host_->send(x, peer, tag); });
    check_device(x, "send");
    check_peer(peer, "send");
    volume_.send_recv += static_cast<int64_t>(x.nbytes());
    if (x.numel() == 0) return;
    Timed timed(*this, "send", x.nbytes(), peer);
    NCCL_CHECK(ncclSend(x.raw(), static_cast<size_t>(x.numel()), nccl_type(x.dtype(), "send"), peer, comm_,
                        stream()),
               "send ", shape_str(x.shape()), " to rank ", peer);
    timed.queued();
  }
  void recv(const Tensor& x, int peer, int tag) override {
    if (x.device().is_cpu()) return on_host([&] { return host_->recv(x, peer, tag); });
    check_device(x, "recv");
    check_peer(peer, "recv");
    if (x.numel() == 0) return;
    Timed timed(*this, "receive", x.nbytes(), peer);
    NCCL_CHECK(ncclRecv(x.raw(), static_cast<size_t>(x.numel()), nccl_type(x.dtype(), "recv"), peer, comm_,
                        stream()),
               "recv ", shape_str(x.shape()), " from rank ", peer);
    timed.queued();
  }

  void send_recv(const Tensor& send, int dst, int send_tag, const Tensor& recv, int src, int recv_tag) override {
    if (dst < 0 && src < 0) return;
    if (dst < 0) return this->recv(recv, src, recv_tag);
    if (src < 0) return this->send(send, dst, send_tag);
    LLM_CHECK(send.device().is_cpu() == recv.device().is_cpu(), "send_recv: ", send.device().str(), " to rank ", dst,
              " with ", recv.device().str(), " from rank ", src,
              ": both on the host (MPI) or both on the GPU (NCCL); a mixed pair would block inside the NCCL group");
    if (send.device().is_cpu() && recv.device().is_cpu())
      return on_host([&] { return host_->send_recv(send, dst, send_tag, recv, src, recv_tag); });
    // One timed operation for the pair: NCCL queues it (and may wait for the peers) at the group's end.
    Timed timed(*this, send.nbytes() > 0 ? "send (with a receive)" : "receive (with a send)",
                send.nbytes() + recv.nbytes(), send.nbytes() > 0 ? dst : src);
    {
      NcclGroup group("send_recv");
      grouped_ = true;  // the inner send and receive not timed on their own
      struct Ungroup {
        bool& g;
        ~Ungroup() { g = false; }
      } ungroup{grouped_};
      this->send(send, dst, send_tag);
      this->recv(recv, src, recv_tag);
      group.end(detail::concat("send_recv ", shape_str(send.shape()), " to rank ", dst, ", ", shape_str(recv.shape()),
                               " from rank ", src));
    }
    timed.queued();
  }

  // Overlap: the reduction runs on a separate communication stream once the compute stream has
  // produced `x` (event), and wait() makes the compute stream wait for it (another event) without
  // blocking the host, so backward keeps running while buckets are reduced.
  // Overlap: a non-blocking operation runs on a separate communication stream once the compute
  // stream has produced its inputs (an event), and wait() makes the compute stream wait for it
  // (another event) without blocking the host, so compute keeps running meanwhile.
  std::unique_ptr<Request> all_reduce_sum_async(const Tensor& x) override {
    if (x.device().is_cpu()) return on_host([&] { return host_->all_reduce_sum_async(x); });
    return on_comm_stream("all_reduce_sum_async", {x}, [&] { all_reduce_sum(x); });
  }
  std::unique_ptr<Request> all_gather_ranges_async(const Tensor& x, const std::vector<int64_t>& offsets) override {
    if (x.device().is_cpu()) return on_host([&] { return host_->all_gather_ranges_async(x, offsets); });
    return on_comm_stream("all_gather_ranges_async", {x}, [&] { all_gather_ranges(x, offsets); });
  }
  std::unique_ptr<Request> reduce_scatter_ranges_async(const Tensor& x, const std::vector<int64_t>& offsets) override {
    if (x.device().is_cpu()) return on_host([&] { return host_->reduce_scatter_ranges_async(x, offsets); });
    return on_comm_stream("reduce_scatter_ranges_async", {x}, [&] { reduce_scatter_ranges(x, offsets); });
  }
  std::unique_ptr<Request> all_gather_async(const Tensor& out, const Tensor& in) override {
    if (out.device().is_cpu() && in.device().is_cpu()) return on_host([&] { return host_->all_gather_async(out, in); });
    return on_comm_stream("all_gather_async", {out, in}, [&] { all_gather(out, in); });
  }
  std::unique_ptr<Request> all_to_all_async(const Tensor& out, const Tensor& in) override {
    if (out.device().is_cpu() && in.device().is_cpu()) return on_host([&] { return host_->all_to_all_async(out, in); });
    return on_comm_stream("all_to_all_async", {out, in}, [&] { all_to_all(out, in); });
  }
  std::unique_ptr<Request> send_async(const Tensor& x, int peer, int tag) override {
    if (x.device().is_cpu()) return on_host([&] { return host_->send_async(x, peer, tag); });
    return on_comm_stream("send_async", {x}, [&] { send(x, peer, tag); });
  }
  std::unique_ptr<Request> recv_async(const Tensor& x, int peer, int tag) override {
    if (x.device().is_cpu()) return on_host([&] { return host_->recv_async(x, peer, tag); });
    return on_comm_stream("recv_async", {x}, [&] { recv(x, peer, tag); });
  }

 private:
  void check_device(const Tensor& x, const char* op) const {
    LLM_CHECK(x.device() == backend_.device() && x.is_contiguous(), "NCCL ", op, ": needs a contiguous tensor on ",
              backend_.device().str(), ", got ", x.device().str());
  }
  // An output and an input on this device, of one dtype.
  void check_pair(const Tensor& out, const Tensor& in, const char* op) const {
    check_device(out, op);
    check_device(in, op);
    LLM_CHECK(out.dtype() == in.dtype(), "NCCL ", op, ": ", dtype_name(out.dtype()), " output for ",
              dtype_name(in.dtype()), " input");
  }
  void check_peer(int peer, const char* op) const {
    LLM_CHECK(peer >= 0 && peer < size_ && peer != rank_, "NCCL ", op, ": peer ", peer, " in a group of ", size_,
              " (this is rank ", rank_, ")");
  }
  // A host tensor's operation goes over the MPI communicator of the same group (host_); its bytes
  // count in this communicator's volume too, which is the one the communication report reads
  // (the vocabulary shards' all-gathers, the tied embedding's gradient exchange).
  template <class F>
  std::invoke_result_t<F&> on_host(F&& f) {
    struct Count {
      Volume& to;
      const Communicator& from;
      const Volume before;
      ~Count() { to += from.volume() - before; }
    } count{volume_, *host_, host_->volume()};
    return watched("a collective of host tensors", f);
  }
  // MPI's blocking calls beside NCCL's (the scalar reductions of the loss and the gradient norm,
  // the barrier, host tensors) under the same timeout: a rank stuck elsewhere (a hung kernel, a
  // different collective) would otherwise hold its peers in MPI after every NCCL operation has
  // finished. (A non-blocking one returns at once; its wait is not watched.)
  template <class F>
  std::invoke_result_t<F&> watched(const char* what, F&& f) {
    if (!pending_) return f();  // no timeout here (0, or the watchdog off)
    const WatchedPhase phase(nccl_watchdog(),
                             detail::concat("rank ", world_rank_, ": ", what, " over MPI beside the NCCL communicator of ",
                                            size_, " ranks (its rank ", rank_, ")"),
                             timeout_s_);
    return f();
  }
  // One operation under the timeout (comm/watchdog.h), from before its NCCL call: the call itself
  // may wait for a peer (since NCCL 2.22 a first operation between two ranks sets up their
  // connection inside the call, or inside the group's end), so it is timed while the host is in
  // it; queued() then records its marker (a CUDA event, recycled once finished) on stream().
  // Inactive without a timeout and inside send_recv's group, which is timed as one.
  class Timed {
   public:
    Timed(NcclCommunicator& c, const char* op, size_t bytes, int peer = -1)
        : c_(c), op_(op), bytes_(static_cast<int64_t>(bytes)), peer_(peer), active_(c.pending_ && !c.grouped_) {
      if (active_) c_.pending_->enter(op_, bytes_, peer_, started_ = PendingOps::Clock::now());
    }
    Timed(const Timed&) = delete;
    Timed& operator=(const Timed&) = delete;
    ~Timed() {
      if (active_) c_.pending_->leave();
    }
    void queued() {
      if (!active_) return;
      cudaEvent_t e = static_cast<cudaEvent_t>(c_.pending_->reuse());
      if (!e) CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "NCCL ", op_, ": its timeout marker");
      const cudaError_t r = cudaEventRecord(e, c_.stream());
      if (r != cudaSuccess) (void)cudaEventDestroy(e);
      CUDA_CHECK(r, "NCCL ", op_, ": recording its timeout marker");
      c_.pending_->push(e, op_, bytes_, peer_, started_);
    }

   private:
    NcclCommunicator& c_;
    const char* op_;
    int64_t bytes_;
    int peer_;
    bool active_;
    PendingOps::Clock::time_point started_{};
  };
  cudaStream_t comm_stream() {
    if (!comm_stream_) CUDA_CHECK(cudaStreamCreateWithFlags(&comm_stream_, cudaStreamNonBlocking), "NCCL stream");
    return comm_stream_;
  }
  // The stream the NCCL calls go to: the backend's, or the communication stream while a
  // non-blocking operation is being enqueued.
  cudaStream_t stream() const { return side_ ? side_ : backend_.stream(); }
  // Enqueues the blocking form on the communication stream, after the compute stream's work so far.
  template <class Enqueue>
  std::unique_ptr<Request> on_comm_stream(const char* op, std::vector<Tensor> keep, Enqueue&& enqueue) {
    cudaStream_t comm = comm_stream();
    cudaEvent_t ready = nullptr, done = nullptr;
    CUDA_CHECK(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming), op);
    CUDA_CHECK(cudaEventRecord(ready, backend_.stream()), op);
    CUDA_CHECK(cudaStreamWaitEvent(comm, ready, 0), op);
    CUDA_CHECK(cudaEventDestroy(ready), op);
    side_ = comm;
    try {
      enqueue();
    } catch (...) {
      side_ = nullptr;
      throw;
    }
    side_ = nullptr;
    CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming), op);
    CUDA_CHECK(cudaEventRecord(done, comm), op);
    return std::make_unique<NcclRequest>(backend_.stream(), done, std::move(keep));
  }
  // One GPU per rank: the backend picked its device from the launcher's local-rank variable;
  // confirm it against the ranks that share this node (MPI_COMM_TYPE_SHARED), so two ranks on
  // one GPU fail here with a clear message instead of inside NCCL ("Duplicate GPU detected"),
  // unless LLM_NCCL_SHARED_GPU=1 made every rank its own NCCL host (shared_gpu_mode()). GPUs are
  // compared by PCI bus id, not by device number: a launcher or wrapper that gives each rank its
  // own CUDA_VISIBLE_DEVICES (ALCF's Polaris affinity script, Slurm's --gpus-per-task) shows every
  // rank its GPU as cuda:0.
  void check_local_device() {
    const NodeGpus gpus = node_gpus(mpi_, backend_.device().index);  // every rank, before any may throw
    CUDA_CHECK(gpus.error, "NCCL communicator: the PCI bus id of ", backend_.device().str());
    if (shared_gpu_mode()) return;
    int count = 0;
    CUDA_CHECK(cudaGetDeviceCount(&count), "NCCL communicator");
    const int local_size = static_cast<int>(gpus.ids.size());
    for (int r = 0; r < local_size; ++r)
      for (int q = r + 1; q < local_size; ++q)
        LLM_CHECK(gpus.ids[size_t(r)] != gpus.ids[size_t(q)], "NCCL communicator: node-local ranks ", r, " and ", q,
                  " both use the GPU at PCI ", gpus.ids[size_t(r)], " (", local_size, " ranks on this node; rank ",
                  gpus.local, " sees ", count, " GPUs and uses ", backend_.device().str(),
                  "); NCCL takes one GPU per rank: ",
                  local_size > count ? "start at most one rank per GPU, or set LLM_NCCL_SHARED_GPU=1 for a correctness "
                                       "run with ranks sharing GPUs (each rank its own NCCL host, over sockets: slow)"
                                     : "the launcher must export a local rank (OMPI_COMM_WORLD_LOCAL_RANK, "
                                       "MPI_LOCALRANKID, SLURM_LOCALID, PALS_LOCAL_RANKID or LOCAL_RANK)");
  }
  cuda::CudaBackend& backend_;
  MPI_Comm mpi_;
  bool owned_;
  std::unique_ptr<Communicator> host_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t comm_stream_ = nullptr;
  cudaStream_t side_ = nullptr;  // set while on_comm_stream enqueues
  bool grouped_ = false;         // set while send_recv's group is open: no marker inside it
  double timeout_s_ = 0;
  std::unique_ptr<PendingOps> pending_;  // null: no timeout (0, or the watchdog off)
  int rank_ = 0, size_ = 1, world_rank_ = 0;
  const int uncaught_ = std::uncaught_exceptions();  // at construction: the destructor tells unwinding from it
};

}  // namespace

void set_nccl_timeout_seconds(double seconds) {
  LLM_CHECK(seconds >= 0 && std::isfinite(seconds), "NCCL timeout: ", seconds, " s (0: none)");
  op_timeout() = seconds;
}

namespace {
// A communicator's set-up under the collective timeout: the MPI collectives it starts with and
// ncclCommInitRank wait for every rank of the group, so one that never comes (stopped, or set up
// another group first) would hold the others there until the job's wall time.
WatchedPhase watched_setup(const char* group) {
  Watchdog& w = nccl_watchdog();  // (its setting checked before the first communicator exists)
  int world = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &world);
  return WatchedPhase(w,
                      detail::concat("rank ", world, ": setting up the NCCL communicator of ", group,
                                     " (MPI's collectives, then ncclCommInitRank, which waits for every rank)"),
                      w.polling() ? op_timeout().load() : 0.0);
}
}  // namespace

std::unique_ptr<Communicator> nccl_world_communicator(cuda::CudaBackend& backend) {
  const WatchedPhase setup = watched_setup("every rank");
  return std::make_unique<NcclCommunicator>(backend, MPI_COMM_WORLD, false, mpi_world_communicator());
}

bool node_ranks_share_a_gpu(const cuda::CudaBackend* backend) {
  const NodeGpus gpus = node_gpus(MPI_COMM_WORLD, backend ? backend->device().index : -1);
  int sharing = 0;
  for (size_t r = 0; r < gpus.ids.size(); ++r)
    for (size_t q = r + 1; q < gpus.ids.size(); ++q) sharing = sharing || gpus.ids[r] == gpus.ids[q];
  MPI_Allreduce(MPI_IN_PLACE, &sharing, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  return sharing != 0;
}

std::unique_ptr<Communicator> nccl_split_communicator(cuda::CudaBackend& backend, int color, int key) {
  const WatchedPhase setup = watched_setup(detail::concat("color ", color).c_str());
  MPI_Comm sub;
  MPI_Comm_split(MPI_COMM_WORLD, color, key, &sub);
  return std::make_unique<NcclCommunicator>(backend, sub, true, mpi_split_communicator(color, key));
}

}  // namespace llm
