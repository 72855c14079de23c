#include <mpi.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <memory>
#include <optional>
#include <utility>

#include "comm/communicator.h"
#include "comm/watchdog.h"

namespace llm {

namespace {

// bf16 and f16 travel as 2-byte MPI types of their own, so the sum below knows which it adds.
struct LowTypes {
  MPI_Datatype bf16 = MPI_DATATYPE_NULL, f16 = MPI_DATATYPE_NULL;
  MPI_Op sum = MPI_OP_NULL;
};
const LowTypes& low_types();

// Sums in fp32 and rounds once per combining step (what NCCL does for these types).
void low_sum(void* in, void* inout, int* len, MPI_Datatype* type) {
  const auto* a = static_cast<const uint16_t*>(in);
  auto* b = static_cast<uint16_t*>(inout);
  if (*type == low_types().bf16) {
    for (int i = 0; i < *len; ++i) b[i] = f32_to_bf16(bf16_to_f32(a[i]) + bf16_to_f32(b[i]));
  } else {
    for (int i = 0; i < *len; ++i) b[i] = f32_to_f16(f16_to_f32(a[i]) + f16_to_f32(b[i]));
  }
}

const LowTypes& low_types() {
  // Created on first use (after MPI_Init); freed by MPI_Finalize.
  static const LowTypes t = [] {
    LowTypes l;
    MPI_Type_contiguous(2, MPI_BYTE, &l.bf16);
    MPI_Type_commit(&l.bf16);
    MPI_Type_contiguous(2, MPI_BYTE, &l.f16);
    MPI_Type_commit(&l.f16);
    MPI_Op_create(&low_sum, 1, &l.sum);
    return l;
  }();
  return t;
}

// A contiguous host float tensor (f32, bf16 or f16), and the pair of one collective's sides.
void check_host_float(const Tensor& x, const char* op) {
  const DType t = x.dtype();
  LLM_CHECK(is_float(t) && x.is_contiguous() && x.device().is_cpu(),
            "MPI ", op, " needs a contiguous host f32, bf16 or f16 tensor, got ", dtype_name(t), " ",
            shape_str(x.shape()), " on ", x.device().str());
}
void check_pair(const Tensor& out, const Tensor& in, const char* op) {
  check_host_float(out, op);
  check_host_float(in, op);
  LLM_CHECK(out.dtype() == in.dtype(), "MPI ", op, ": output ", dtype_name(out.dtype()), ", input ",
            dtype_name(in.dtype()), " (they must match)");
}

// The MPI type of a contiguous host float tensor.
MPI_Datatype host_float_type(const Tensor& x, const char* op) {
  check_host_float(x, op);
  const DType t = x.dtype();
  if (t == DType::f32) return MPI_FLOAT;
  return t == DType::bf16 ? low_types().bf16 : low_types().f16;
}
MPI_Op sum_op(const Tensor& x) { return x.dtype() == DType::f32 ? MPI_SUM : low_types().sum; }

// Both sides of a collective hold the same element type.
MPI_Datatype pair_type(const Tensor& out, const Tensor& in, const char* op) {
  check_pair(out, in, op);
  return host_float_type(out, op);
}

// The tag of all_to_all's point-to-point form (the callers' own tags are small: 0-12); MPI
// guarantees tags up to 32767.
constexpr int kAllToAllTag = 32767;

// Elements per MPI call: MPI's counts and displacements are int, so larger buffers go in windows
// of at most 2^30 elements. LLM_MPI_MAX_COUNT lowers the window (the tests run every collective
// in small windows that way); a test knob, which every rank must see alike (Open MPI: -x).
int64_t window_elements() {
  static const int64_t w = [] {
    const char* e = std::getenv("LLM_MPI_MAX_COUNT");
    const int64_t n = e ? std::atoll(e) : 0;
    return n > 0 ? std::min<int64_t>(n, int64_t{1} << 30) : int64_t{1} << 30;
  }();
  return w;
}

// ---- the collective timeout (set_mpi_timeout_seconds) ----------------------------------------

std::atomic<double>& mpi_timeout() {
  static std::atomic<double> seconds{0.0};
  return seconds;
}

int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

// The process's watchdog over its MPI communicators' blocking waits (comm/watchdog.h): a rank
// that never joins a collective (stopped without an error MPI sees, waiting in another collective,
// a hung node) would hold its peers in MPI until the job's wall time. Started with the first
// communicator made under a timeout, polling a tenth of that timeout (50 ms to 1 s).
Watchdog& mpi_watchdog() {
  static Watchdog w(
      watchdog_period_for(mpi_timeout().load()), [](void*) { return std::string(); }, [](void*) {},
      [](const std::string& message) { watchdog_exit(message, "the launcher then ends the other ranks"); });
  return w;
}

// The owner's thread inside a blocking MPI call or wait, timed from when it entered (a
// non-blocking operation is timed from its wait, not its start: the compute between the two is
// no peer's fault).
class InCall {
 public:
  InCall(PendingOps* calls, const char* op, int64_t bytes, int peer) : calls_(calls) {
    if (calls_) calls_->enter(op, bytes, peer, PendingOps::Clock::now());
  }
  ~InCall() {
    if (calls_) calls_->leave();
  }
  InCall(const InCall&) = delete;
  InCall& operator=(const InCall&) = delete;

 private:
  PendingOps* calls_;
};

// What a request's wait is reported as under the timeout (calls null: not watched).
struct Watch {
  std::shared_ptr<PendingOps> calls;
  const char* op = "";
  int64_t bytes = 0;
  int peer = -1;
};

// One or more MPI requests, and the buffers MPI reads until they complete (counts, displacements).
class MpiRequest final : public Communicator::Request {
 public:
  MpiRequest(Watch watch, MPI_Request r) : watch_(std::move(watch)), reqs_{r} {}
  MpiRequest(Watch watch, std::vector<MPI_Request> reqs, std::vector<int> keep = {})
      : watch_(std::move(watch)), reqs_(std::move(reqs)), keep_(std::move(keep)) {}
  ~MpiRequest() override { wait(); }
  void wait() override {
    const InCall in(watch_.calls.get(), watch_.op, watch_.bytes, watch_.peer);
    MPI_Waitall(static_cast<int>(reqs_.size()), reqs_.data(), MPI_STATUSES_IGNORE);
  }
  bool test() override {
    int done = 0;
    MPI_Testall(static_cast<int>(reqs_.size()), reqs_.data(), &done, MPI_STATUSES_IGNORE);
    return done != 0;
  }

 private:
  Watch watch_;
  std::vector<MPI_Request> reqs_;
  std::vector<int> keep_;
};

class MpiCommunicator final : public Communicator {
 public:
  explicit MpiCommunicator(MPI_Comm comm, bool owned) : comm_(comm), owned_(owned) {
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
    if (const double t = mpi_timeout().load(); t > 0 && size_ > 1) {
      calls_ = std::make_shared<PendingOps>([](void*) { return true; }, "MPI");
      mpi_watchdog().add(calls_.get(),
                         detail::concat("rank ", world_rank(), ": the MPI communicator of ", size_, " ranks (its rank ",
                                        rank_, ")"),
                         [calls = calls_.get(), t] { return calls->check(PendingOps::Clock::now(), t); }, false);
    }
  }
  ~MpiCommunicator() override {
    if (calls_) mpi_watchdog().remove(calls_.get());
    if (owned_) MPI_Comm_free(&comm_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void all_reduce_sum(const Tensor& x) override { all_reduce_sum_async(x)->wait(); }
  double all_reduce_sum(double v) override { return reduce(v, MPI_SUM, "all_reduce_sum (a scalar)"); }
  double all_reduce_min(double v) override { return reduce(v, MPI_MIN, "all_reduce_min (a scalar)"); }
  double all_reduce_max(double v) override { return reduce(v, MPI_MAX, "all_reduce_max (a scalar)"); }
  void all_gather_ranges(const Tensor& x, const std::vector<int64_t>& offsets) override {
    all_gather_ranges_async(x, offsets)->wait();
  }
  std::unique_ptr<Request> all_gather_ranges_async(const Tensor& x, const std::vector<int64_t>& offsets) override {
    const MPI_Datatype type = host_float_type(x, "all-gather");
    LLM_CHECK(static_cast<int>(offsets.size()) == size_ + 1 && offsets.back() == x.numel(),
              "all_gather_ranges: ", offsets.size(), " offsets for ", size_, " ranks");
    if (size_ == 1) return done();
    volume_.all_gather += static_cast<int64_t>(x.nbytes());
    // Window by window (counts and displacements are int): each rank's part of the window.
    const int64_t n = x.numel(), w = window_elements();
    const int64_t windows = (n + w - 1) / w;
    std::vector<int> counts_displs(2 * static_cast<size_t>(size_ * windows));  // per window: counts, displacements
    std::vector<MPI_Request> reqs;
    char* p = static_cast<char*>(x.raw());
    const size_t esize = dtype_size(x.dtype());
    for (int64_t k = 0; k < windows; ++k) {
      const int64_t w0 = k * w, w1 = std::min(n, w0 + w);
      int* counts = counts_displs.data() + 2 * size_ * k;
      int* displs = counts + size_;
      for (int r = 0; r < size_; ++r) {
        const int64_t b = std::clamp(offsets[r], w0, w1), e = std::clamp(offsets[r + 1], w0, w1);
        displs[r] = static_cast<int>(b - w0);
        counts[r] = static_cast<int>(e - b);
      }
      MPI_Request r;
      MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, p + static_cast<size_t>(w0) * esize, counts, displs, type,
                      comm_, &r);
      reqs.push_back(r);
    }
    return std::make_unique<MpiRequest>(watch("all_gather_ranges", x.nbytes()), std::move(reqs), std::move(counts_displs));
  }
  void reduce_scatter_ranges(const Tensor& x, const std::vector<int64_t>& offsets) override {
    reduce_scatter_ranges_async(x, offsets)->wait();
  }
  std::unique_ptr<Request> reduce_scatter_ranges_async(const Tensor& x, const std::vector<int64_t>& offsets) override {
    const MPI_Datatype type = host_float_type(x, "reduce-scatter");
    LLM_CHECK(static_cast<int>(offsets.size()) == size_ + 1 && offsets.front() == 0 && offsets.back() == x.numel(),
              "reduce_scatter_ranges: ", offsets.size(), " offsets for ", size_, " ranks over ", x.numel(), " elements");
    if (size_ == 1) return done();
    volume_.reduce_scatter += static_cast<int64_t>(x.nbytes());
    // One reduce per owner (in windows of its range: counts are int), in place at the owner; the
    // other ranks' copies of a range are left as they were (scratch). An owner holds a temporary
    // of its own range at most, where MPI's in-place reduce-scatter reduces the whole buffer to
    // one rank first (Open MPI: a temporary of the whole buffer there, +107 MB on one of 2 ranks
    // for 110 MB, against +55 MB on each this way; the same time).
    const int64_t w = window_elements();
    std::vector<MPI_Request> reqs;
    char* p = static_cast<char*>(x.raw());
    const size_t esize = dtype_size(x.dtype());
    for (int r = 0; r < size_; ++r)
      for (int64_t b = offsets[r]; b < offsets[r + 1]; b += w) {
        const int count = static_cast<int>(std::min(w, offsets[r + 1] - b));
        char* q = p + static_cast<size_t>(b) * esize;
        MPI_Request req;
        MPI_Ireduce(r == rank_ ? MPI_IN_PLACE : q, q, count, type, sum_op(x), r, comm_, &req);
        reqs.push_back(req);
      }
    return std::make_unique<MpiRequest>(watch("reduce_scatter_ranges", x.nbytes()), std::move(reqs));
  }
  void broadcast(const Tensor& x, int root) override {
    LLM_CHECK(x.is_contiguous() && x.device().is_cpu(), "MPI broadcast needs a contiguous host tensor");
    if (size_ == 1) return;
    volume_.broadcast += static_cast<int64_t>(x.nbytes());
    char* p = static_cast<char*>(x.raw());
    const size_t w = static_cast<size_t>(window_elements());
    const InCall in(calls_.get(), "broadcast", static_cast<int64_t>(x.nbytes()), root);
    for (size_t off = 0, n = x.nbytes(); off < n; off += w) {
      const int count = static_cast<int>(std::min<size_t>(n - off, w));
      MPI_Bcast(p + off, count, MPI_BYTE, root, comm_);
    }
  }
  void barrier() override {
    const InCall in(calls_.get(), "barrier", 0, -1);
    MPI_Barrier(comm_);
  }

  void all_gather(const Tensor& out, const Tensor& in) override { all_gather_async(out, in)->wait(); }
  std::unique_ptr<Request> all_gather_async(const Tensor& out, const Tensor& in) override {
    const MPI_Datatype type = pair_type(out, in, "all-gather");
    LLM_CHECK(out.numel() == in.numel() * size_, "all_gather: output of ", out.numel(), " elements for ", size_,
              " inputs of ", in.numel());
    if (size_ == 1) {
      if (out.raw() != in.raw()) out.view(in.shape()).copy_from(in);
      return done();
    }
    const int64_t n = in.numel();
    // Windows by the whole output, not this rank's part: MPI implementations compute a block's
    // offset as rank x count in int (Open MPI's libnbc and coll/base do), which overflows once
    // the output passes 2^31 elements even when every argument fits.
    if (n * size_ > window_elements()) {  // this rank's part into place, then the ranges form in windows
      const Tensor mine = out.flat(n * rank_, n);
      if (mine.raw() != in.raw()) mine.copy_from(in.view({n}));
      return all_gather_ranges_async(out.view({out.numel()}), equal_ranges(n));
    }
    volume_.all_gather += static_cast<int64_t>(out.nbytes());
    MPI_Request r;
    // `in` may be this rank's own slot of `out` (as the other communicators allow): MPI_IN_PLACE
    const void* send = in.raw() == static_cast<const char*>(out.raw()) + static_cast<size_t>(n * rank_) * dtype_size(out.dtype())
                           ? MPI_IN_PLACE
                           : in.raw();
    MPI_Iallgather(send, static_cast<int>(n), type, out.raw(), static_cast<int>(n), type, comm_, &r);
    return std::make_unique<MpiRequest>(watch("all_gather", out.nbytes()), r);
  }
  void reduce_scatter(const Tensor& out, const Tensor& in) override {
    const MPI_Datatype type = pair_type(out, in, "reduce-scatter");
    LLM_CHECK(in.numel() == out.numel() * size_, "reduce_scatter: input of ", in.numel(), " elements for ", size_,
              " outputs of ", out.numel());
    if (size_ == 1) {
      if (out.raw() != in.raw()) out.copy_from(in.view(out.shape()));
      return;
    }
    const int64_t n = out.numel();
    // (windows by the whole input: see all_gather_async; an output inside the input, which MPI
    // forbids, takes the same copy)
    const char* ib = static_cast<const char*>(in.raw());
    const char* ob = static_cast<const char*>(out.raw());
    const bool aliased = ob < ib + in.nbytes() && ib < ob + out.nbytes();
    if (in.numel() > window_elements() || aliased) {  // on a copy of the input, in windows; then this rank's range out
      const Tensor work = in.clone().view({in.numel()});
      reduce_scatter_ranges(work, equal_ranges(n));
      out.copy_from(work.flat(n * rank_, n).view(out.shape()));
      return;
    }
    volume_.reduce_scatter += static_cast<int64_t>(in.nbytes());
    const InCall call(calls_.get(), "reduce_scatter", static_cast<int64_t>(in.nbytes()), -1);
    MPI_Reduce_scatter_block(in.raw(), out.raw(), static_cast<int>(n), type, sum_op(in), comm_);
  }
  void all_to_all(const Tensor& out, const Tensor& in) override { all_to_all_async(out, in)->wait(); }
  std::unique_ptr<Request> all_to_all_async(const Tensor& out, const Tensor& in) override {
    const MPI_Datatype type = pair_type(out, in, "all-to-all");
    LLM_CHECK(in.numel() == out.numel() && in.numel() % size_ == 0, "all_to_all: ", in.numel(), " and ", out.numel(),
              " elements for ", size_, " ranks (equal sizes, divisible by the group)");
    if (size_ == 1) {
      if (out.raw() != in.raw()) out.copy_from(in.view(out.shape()));
      return done();
    }
    volume_.all_to_all += static_cast<int64_t>(in.nbytes());
    const int64_t chunk = in.numel() / size_;
    if (in.numel() > window_elements()) {
      // Past a window in all (block offsets rank x count overflow int inside MPI, as in
      // all_gather_async): each pair of ranks exchanges its blocks point to point, in windows.
      LLM_CHECK(out.raw() != in.raw(), "all_to_all past ", window_elements(), " elements needs separate buffers");
      const Tensor src = in.view({in.numel()}), dst = out.view({out.numel()});
      dst.flat(chunk * rank_, chunk).copy_from(src.flat(chunk * rank_, chunk));
      std::vector<MPI_Request> reqs;
      for (int r = 0; r < size_; ++r)
        if (r != rank_) post(reqs, dst.flat(chunk * r, chunk), r, kAllToAllTag, type, false);
      for (int r = 0; r < size_; ++r)
        if (r != rank_) post(reqs, src.flat(chunk * r, chunk), r, kAllToAllTag, type, true);
      return std::make_unique<MpiRequest>(watch("all_to_all", in.nbytes()), std::move(reqs));
    }
    MPI_Request r;
    MPI_Ialltoall(in.raw(), static_cast<int>(chunk), type, out.raw(), static_cast<int>(chunk), type, comm_, &r);
    return std::make_unique<MpiRequest>(watch("all_to_all", in.nbytes()), r);
  }
  // Point to point in windows: one message per window, in order (MPI keeps the order of
  // messages between two ranks with one tag and communicator).
  void send(const Tensor& x, int peer, int tag) override { send_async(x, peer, tag)->wait(); }
  void recv(const Tensor& x, int peer, int tag) override { recv_async(x, peer, tag)->wait(); }
  std::unique_ptr<Request> send_async(const Tensor& x, int peer, int tag) override {
    const MPI_Datatype type = host_float_type(x, "send");
    volume_.send_recv += static_cast<int64_t>(x.nbytes());
    std::vector<MPI_Request> reqs;
    post(reqs, x, peer, tag, type, true);
    return std::make_unique<MpiRequest>(watch("send", x.nbytes(), peer), std::move(reqs));
  }
  std::unique_ptr<Request> recv_async(const Tensor& x, int peer, int tag) override {
    const MPI_Datatype type = host_float_type(x, "recv");
    std::vector<MPI_Request> reqs;
    post(reqs, x, peer, tag, type, false);
    return std::make_unique<MpiRequest>(watch("recv", x.nbytes(), peer), std::move(reqs));
  }
  void send_recv(const Tensor& send, int dst, int send_tag, const Tensor& recv, int src, int recv_tag) override {
    if (dst < 0 && src < 0) return;
    if (dst < 0) return this->recv(recv, src, recv_tag);
    if (src < 0) return this->send(send, dst, send_tag);
    const MPI_Datatype st = host_float_type(send, "send"), rt = host_float_type(recv, "recv");
    volume_.send_recv += static_cast<int64_t>(send.nbytes());
    std::vector<MPI_Request> reqs;  // receives posted first, then the sends: no two ranks block
    post(reqs, recv, src, recv_tag, rt, false);
    post(reqs, send, dst, send_tag, st, true);
    const InCall in(calls_.get(), "send_recv (receiving)", static_cast<int64_t>(recv.nbytes()), src);
    MPI_Waitall(static_cast<int>(reqs.size()), reqs.data(), MPI_STATUSES_IGNORE);
  }
  std::unique_ptr<Request> all_reduce_sum_async(const Tensor& x) override {
    const MPI_Datatype type = host_float_type(x, "all-reduce");
    if (size_ == 1) return std::make_unique<MpiRequest>(Watch{}, MPI_REQUEST_NULL);
    volume_.all_reduce += static_cast<int64_t>(x.nbytes());
    std::vector<MPI_Request> reqs;
    char* p = static_cast<char*>(x.raw());
    const size_t esize = dtype_size(x.dtype());
    const int64_t w = window_elements();
    for (int64_t off = 0, n = x.numel(); off < n; off += w) {
      const int count = static_cast<int>(std::min<int64_t>(n - off, w));
      MPI_Request r;
      MPI_Iallreduce(MPI_IN_PLACE, p + static_cast<size_t>(off) * esize, count, type, sum_op(x), comm_, &r);
      reqs.push_back(r);
    }
    return std::make_unique<MpiRequest>(watch("all_reduce_sum", x.nbytes()), std::move(reqs));
  }

 private:
  // Non-blocking sends (or receives) of x's windows, appended to reqs.
  void post(std::vector<MPI_Request>& reqs, const Tensor& x, int peer, int tag, MPI_Datatype type, bool send) {
    char* p = static_cast<char*>(x.raw());
    const size_t esize = dtype_size(x.dtype());
    const int64_t w = window_elements(), n = x.numel();
    const int64_t windows = std::max<int64_t>(1, (n + w - 1) / w);  // an empty message still matches
    for (int64_t k = 0; k < windows; ++k) {
      const int count = static_cast<int>(std::min(n - k * w, w));
      void* at = p + static_cast<size_t>(k * w) * esize;
      MPI_Request r;
      if (send)
        MPI_Isend(at, count, type, peer, tag, comm_, &r);
      else
        MPI_Irecv(at, count, type, peer, tag, comm_, &r);
      reqs.push_back(r);
    }
  }
  // Offsets of `size_` equal ranges of n elements (the plain collectives in windows).
  std::vector<int64_t> equal_ranges(int64_t n) const {
    std::vector<int64_t> offsets(static_cast<size_t>(size_) + 1);
    for (int r = 0; r <= size_; ++r) offsets[static_cast<size_t>(r)] = n * r;
    return offsets;
  }
  double reduce(double v, MPI_Op op, const char* name) {
    double out = v;
    if (size_ == 1) return out;
    const InCall in(calls_.get(), name, 8, -1);
    MPI_Allreduce(&v, &out, 1, MPI_DOUBLE, op, comm_);
    return out;
  }
  Watch watch(const char* op, size_t bytes, int peer = -1) const {
    return {calls_, op, static_cast<int64_t>(bytes), peer};
  }
  MPI_Comm comm_;
  bool owned_;
  int rank_ = 0, size_ = 1;
  // Under a timeout: this communicator's blocking call or wait, checked by mpi_watchdog() (shared
  // with its requests, which may outlive it). Null: not watched.
  std::shared_ptr<PendingOps> calls_;
};

}  // namespace

namespace {
bool mpi_initialised() {
  int init = 0, finalized = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&finalized);
  return init && !finalized;
}

class SelfCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void all_reduce_sum(const Tensor& x) override { check_host_float(x, "all-reduce"); }
  double all_reduce_sum(double v) override { return v; }
  double all_reduce_min(double v) override { return v; }
  double all_reduce_max(double v) override { return v; }
  void all_gather_ranges(const Tensor& x, const std::vector<int64_t>& offsets) override {
    check_host_float(x, "all-gather");
    LLM_CHECK(offsets.size() == 2 && offsets.back() == x.numel(), "all_gather_ranges: ", offsets.size(),
              " offsets for 1 rank");
  }
  void reduce_scatter_ranges(const Tensor& x, const std::vector<int64_t>& offsets) override {
    check_host_float(x, "reduce-scatter");
    LLM_CHECK(offsets.size() == 2 && offsets.front() == 0 && offsets.back() == x.numel(), "reduce_scatter_ranges: ",
              offsets.size(), " offsets for 1 rank over ", x.numel(), " elements");
  }
  void broadcast(const Tensor& x, int root) override {
    LLM_CHECK(root == 0 && x.is_contiguous() && x.device().is_cpu(), "broadcast from rank ", root, " in a group of 1");
  }
  void barrier() override {}
  void all_gather(const Tensor& out, const Tensor& in) override { copy(out, in, "all-gather"); }
  void reduce_scatter(const Tensor& out, const Tensor& in) override { copy(out, in, "reduce-scatter"); }
  void all_to_all(const Tensor& out, const Tensor& in) override { copy(out, in, "all-to-all"); }
  void send(const Tensor&, int peer, int) override { LLM_FAIL("send to rank ", peer, " in a group of 1"); }
  void recv(const Tensor&, int peer, int) override { LLM_FAIL("recv from rank ", peer, " in a group of 1"); }
  void send_recv(const Tensor&, int dst, int, const Tensor&, int src, int) override {
    LLM_CHECK(dst < 0 && src < 0, "send_recv with ranks ", dst, " and ", src, " in a group of 1");
  }
  std::unique_ptr<Request> all_reduce_sum_async(const Tensor& x) override {
    all_reduce_sum(x);
    return done();
  }

 private:
  static void copy(const Tensor& out, const Tensor& in, const char* op) {
    check_pair(out, in, op);
    LLM_CHECK(out.numel() == in.numel(), op, ": ", out.numel(), " and ", in.numel(), " elements in a group of 1");
    if (out.raw() != in.raw()) out.copy_from(in.view(out.shape()));
  }
};
}  // namespace

std::unique_ptr<Communicator> self_communicator() { return std::make_unique<SelfCommunicator>(); }

std::unique_ptr<Communicator> mpi_world_communicator() {
  if (!mpi_initialised()) return self_communicator();
  return std::make_unique<MpiCommunicator>(MPI_COMM_WORLD, false);
}

std::unique_ptr<Communicator> mpi_split_communicator(int color, int key) {
  if (!mpi_initialised()) return self_communicator();
  MPI_Comm sub;
  {
    std::optional<WatchedPhase> split;  // (it waits for every rank)
    if (const double t = mpi_timeout().load(); t > 0)
      split.emplace(mpi_watchdog(), detail::concat("rank ", world_rank(), ": MPI_Comm_split of every rank (color ", color, ")"), t);
    MPI_Comm_split(MPI_COMM_WORLD, color, key, &sub);
  }
  return std::make_unique<MpiCommunicator>(sub, true);
}

void set_mpi_timeout_seconds(double seconds) {
  LLM_CHECK(seconds >= 0 && std::isfinite(seconds), "MPI timeout: ", seconds, " s (0: none)");
  mpi_timeout() = seconds;
}

int64_t mpi_window_elements() { return window_elements(); }

}  // namespace llm
