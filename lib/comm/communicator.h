// Collectives over tensors within a group of ranks. MpiCommunicator carries host tensors over
// MPI; a NCCL communicator will carry device tensors behind the same interface.
//
// Tensors are contiguous floats: f32, or bf16/f16 under mixed precision (sums in fp32, rounded
// once per combining step, as NCCL does), one type per call. Every collective must be called by
// every rank of the group in the same order.
#pragma once
#include <memory>
#include <vector>

#include "core/tensor.h"

namespace llm {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // True when the tensor collectives take tensors on `device` directly (NCCL: its GPU); otherwise
  // callers stage device tensors through the host.
  virtual bool takes(const Device& device) const { return device.is_cpu(); }
  // In place: x = sum over the group.
  virtual void all_reduce_sum(const Tensor& x) = 0;
  // Sum / min / max of a scalar over the group.
  virtual double all_reduce_sum(double v) = 0;
  virtual double all_reduce_min(double v) = 0;
  virtual double all_reduce_max(double v) = 0;
  // In place over a flat tensor: rank r contributes elements [offsets[r], offsets[r+1]) and
  // afterwards every rank holds every range (ZeRO's parameter all-gather).
  virtual void all_gather_ranges(const Tensor& x, const std::vector<int64_t>& offsets) = 0;
  // In place over a flat tensor: afterwards rank r's range [offsets[r], offsets[r+1]) holds the
  // element-wise sum over the group (ZeRO's gradient reduce-scatter: ZeRO-1's
  // whole buffer, ZeRO-2/3's layer by layer); the rest of x is scratch.
  virtual void reduce_scatter_ranges(const Tensor& x, const std::vector<int64_t>& offsets) = 0;
  // In place: x = root's x.
  virtual void broadcast(const Tensor& x, int root) = 0;
  virtual void barrier() = 0;

  // out = every rank's `in` concatenated in rank order (out.numel() == size() * in.numel()).
  virtual void all_gather(const Tensor& out, const Tensor& in) = 0;
  // out = this rank's chunk of the element-wise sum of every rank's `in`
  // (in.numel() == size() * out.numel(); chunk r is elements [r*n, (r+1)*n)).
  virtual void reduce_scatter(const Tensor& out, const Tensor& in) = 0;
  // Chunk j of `in` goes to rank j; chunk i of `out` arrives from rank i (equal chunks).
  virtual void all_to_all(const Tensor& out, const Tensor& in) = 0;
  // Point to point (pipeline stages); `x` is received in place and has as many elements as the
  // peer sends (MPI moves large buffers in windows, matched one by one).
  virtual void send(const Tensor& x, int peer, int tag = 0) = 0;
  virtual void recv(const Tensor& x, int peer, int tag = 0) = 0;
  // Both at once, so two stages exchanging in opposite directions cannot deadlock (the pipeline
  // schedule's send-forward/receive-backward pairs). A peer < 0 skips that half.
  virtual void send_recv(const Tensor& send, int dst, int send_tag, const Tensor& recv, int src, int recv_tag) = 0;

  // A non-blocking operation in flight: wait() completes it (the tensor must stay alive and
  // untouched until then). Destroying an unfinished request waits for it.
  class Request {
   public:
    virtual ~Request() = default;
    virtual void wait() = 0;
    // Advances the operation without blocking (MPI progresses non-blocking collectives only inside
    // MPI calls); true once it is complete.
    virtual bool test() = 0;
  };
  // Non-blocking in-place sum (gradient buckets overlapped with backward).
  virtual std::unique_ptr<Request> all_reduce_sum_async(const Tensor& x) = 0;
  // Non-blocking forms of the other collectives and of point to point, with the blocking ones'
  // results once waited for. MpiCommunicator runs them as MPI's non-blocking operations, the NCCL
  // communicator on its communication stream; a communicator without its own (the base forms
  // here) completes them before returning. Unlike MPI's, NCCL's point-to-point forms run in the
  // order they were issued, on every rank: an exchange in both directions between two ranks must
  // be one send_recv (grouped), never recv_async then send on both sides (each send would wait
  // behind its own rank's receive: a deadlock on NCCL, fine on MPI).
  virtual std::unique_ptr<Request> all_gather_ranges_async(const Tensor& x, const std::vector<int64_t>& offsets) {
    all_gather_ranges(x, offsets);
    return done();
  }
  virtual std::unique_ptr<Request> reduce_scatter_ranges_async(const Tensor& x, const std::vector<int64_t>& offsets) {
    reduce_scatter_ranges(x, offsets);
    return done();
  }
  virtual std::unique_ptr<Request> all_gather_async(const Tensor& out, const Tensor& in) {
    all_gather(out, in);
    return done();
  }
  virtual std::unique_ptr<Request> all_to_all_async(const Tensor& out, const Tensor& in) {
    all_to_all(out, in);
    return done();
  }
  virtual std::unique_ptr<Request> send_async(const Tensor& x, int peer, int tag = 0) {
    send(x, peer, tag);
    return done();
  }
  virtual std::unique_ptr<Request> recv_async(const Tensor& x, int peer, int tag = 0) {
    recv(x, peer, tag);
    return done();
  }

  // Bytes per kind of collective since the last reset, for the communication-volume report,
  // counted as collective benchmarks count message size: the whole tensor (all-reduce), the
  // gathered output (all-gather), the unreduced input (reduce-scatter), this rank's input
  // (all-to-all, send).
  struct Volume {
    int64_t all_reduce = 0, all_gather = 0, reduce_scatter = 0, all_to_all = 0, send_recv = 0, broadcast = 0;
    Volume& operator+=(const Volume& o) {
      all_reduce += o.all_reduce, all_gather += o.all_gather, reduce_scatter += o.reduce_scatter;
      all_to_all += o.all_to_all, send_recv += o.send_recv, broadcast += o.broadcast;
      return *this;
    }
    Volume operator-(const Volume& o) const {
      return {all_reduce - o.all_reduce, all_gather - o.all_gather, reduce_scatter - o.reduce_scatter,
              all_to_all - o.all_to_all, send_recv - o.send_recv, broadcast - o.broadcast};
    }
  };
  const Volume& volume() const { return volume_; }
  void reset_volume() { volume_ = {}; }

 protected:
  // A request that is already complete.
  static std::unique_ptr<Request> done() {
    struct Done final : Request {
      void wait() override {}
      bool test() override { return true; }
    };
    return std::make_unique<Done>();
  }
  Volume volume_;
};

// A communicator over all of MPI_COMM_WORLD, or over the ranks with the same `color`
// (MPI_Comm_split) for sub-groups. Without MPI initialised (a process not started by an MPI
// launcher, see MpiSession) both are a group of this process alone (self_communicator()).
std::unique_ptr<Communicator> mpi_world_communicator();
std::unique_ptr<Communicator> mpi_split_communicator(int color, int key);
// A group of one: the collectives are identities (or copies into `out`), point to point has no
// peer. Same element types and checks as MpiCommunicator.
std::unique_ptr<Communicator> self_communicator();
// The collective timeout of the MPI communicators made from here on (llm-pretrain:
// --distributed-timeout-minutes; 0, the default, none): a rank that waits in a blocking MPI call,
// or in a non-blocking operation's wait, this many seconds ends with exit status 1, naming the
// communicator and the operation (a peer never joined it). MPI_Comm_split is watched the same way.
void set_mpi_timeout_seconds(double seconds);
// Elements per MPI call of MpiCommunicator: 2^30, or LLM_MPI_MAX_COUNT's lower value (a test knob).
int64_t mpi_window_elements();

}  // namespace llm
