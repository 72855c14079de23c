// --overlap-grad-reduce: the gradient group's reduction in buckets of whole layers, started during
// the last micro-batch's backward. Against the plain trainer on the same ranks: the same loss,
// gradient norm and reduced gradients each step; and the buckets really are started before
// backward ends (every non-blocking all-reduce precedes the blocking reduction of the rest).
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "data/mock_data.h"
#include "model/gpt.h"
#include "mpi/mpi_support.h"
#include "support/max_or_nan.h"
#include "train/trainer.h"

namespace {

using llm::Communicator;
using llm::Tensor;

// Forwards to a real communicator and records the order of all-reduce calls.
class Recorder final : public Communicator {
 public:
  explicit Recorder(std::unique_ptr<Communicator> c) : c_(std::move(c)) {}
  std::vector<std::string> log;
  int rank() const override { return c_->rank(); }
  int size() const override { return c_->size(); }
  void all_reduce_sum(const Tensor& x) override {
    log.push_back("blocking");
    c_->all_reduce_sum(x);
  }
  double all_reduce_sum(double v) override { return c_->all_reduce_sum(v); }
  double all_reduce_min(double v) override { return c_->all_reduce_min(v); }
  double all_reduce_max(double v) override { return c_->all_reduce_max(v); }
  void all_gather_ranges(const Tensor& x, const std::vector<int64_t>& o) override { c_->all_gather_ranges(x, o); }
  void reduce_scatter_ranges(const Tensor& x, const std::vector<int64_t>& o) override { c_->reduce_scatter_ranges(x, o); }
  void broadcast(const Tensor& x, int root) override { c_->broadcast(x, root); }
  void barrier() override { c_->barrier(); }
  void all_gather(const Tensor& out, const Tensor& in) override { c_->all_gather(out, in); }
  void reduce_scatter(const Tensor& out, const Tensor& in) override { c_->reduce_scatter(out, in); }
  void all_to_all(const Tensor& out, const Tensor& in) override { c_->all_to_all(out, in); }
  void send(const Tensor& x, int peer, int tag) override { c_->send(x, peer, tag); }
  void recv(const Tensor& x, int peer, int tag) override { c_->recv(x, peer, tag); }
  void send_recv(const Tensor& s, int dst, int st, const Tensor& r, int src, int rt) override {
    c_->send_recv(s, dst, st, r, src, rt);
  }
  std::unique_ptr<Request> all_reduce_sum_async(const Tensor& x) override {
    log.push_back("async");
    if (on_async) on_async();
    return c_->all_reduce_sum_async(x);
  }
  std::function<void()> on_async;  // called as each non-blocking all-reduce starts

 private:
  std::unique_ptr<Communicator> c_;
};

llm::TrainArgs dp_args(int dp, bool overlap) {
  // 2 micro-batches per replica: only the last one's backward reduces
  return mpi_support::tiny_train_args(4 * dp, 5, [&](llm::TrainArgs& a) {
    a.data_parallel_size = dp;
    a.overlap_grad_reduce = overlap;
    a.ddp_bucket_size = 1;  // every layer its own bucket
  });
}

TEST(OverlapGradReduce, BucketsMatchThePlainReductionAndStartDuringBackward) {
  auto world = llm::mpi_world_communicator();
  const int dp = world->size();
  if (dp == 1) GTEST_SKIP() << "needs 2 ranks (one data-parallel replica reduces nothing)";
  llm::MockDataSource data(200, 16, 9);
  llm::Backend& be = llm::cpu_backend();
  const llm::TrainArgs plain_args = dp_args(dp, false), overlap_args = dp_args(dp, true);
  Recorder plain_comm(llm::mpi_split_communicator(0, world->rank()));
  Recorder overlap_comm(llm::mpi_split_communicator(0, world->rank()));
  llm::GPT m1(plain_args.model_config(), be, 5, 16), m2(overlap_args.model_config(), be, 5, 16);
  llm::Trainer plain(plain_args, m1, data, &plain_comm), overlap(overlap_args, m2, data, &overlap_comm);
  EXPECT_EQ(plain.num_buckets(), 0);
  EXPECT_EQ(overlap.num_buckets(), 4);  // one per layer
  // Layer 0's gradient as each bucket starts: the first bucket (the last layer's) starts before
  // layer 0's backward of the last micro-batch has run, its own (the fourth) after, so the two
  // differ; buckets started only once backward had ended would all see the same gradient.
  std::vector<std::vector<float>> h0_at_async;
  overlap_comm.on_async = [&] {
    const Tensor g = m2.parameters().grad("h.0.mlp.c_fc.weight");
    h0_at_async.emplace_back(g.data<float>(), g.data<float>() + g.numel());
  };
  for (int it = 1; it <= 3; ++it) {
    overlap_comm.log.clear();
    h0_at_async.clear();
    const llm::IterationStats a = plain.train_step(), b = overlap.train_step();
    ASSERT_EQ(h0_at_async.size(), 4u);
    EXPECT_NE(h0_at_async.front(), h0_at_async.back())
        << "layer 0's gradient did not change between the first bucket's start and its own: iteration " << it;
    EXPECT_NEAR(b.loss, a.loss, 1e-6 * a.loss) << "iteration " << it;
    EXPECT_NEAR(b.grad_norm, a.grad_norm, 1e-5 * a.grad_norm) << "iteration " << it;
    // 4 layers x (decayed, no-decay) ranges merged per layer: the layer's range is contiguous.
    const auto& log = overlap_comm.log;
    ASSERT_GE(log.size(), 5u);
    size_t async = 0;
    while (async < log.size() && log[async] == "async") ++async;
    EXPECT_EQ(async, 4u) << "one non-blocking all-reduce per layer bucket, all before the blocking rest";
    for (size_t i = async; i < log.size(); ++i) EXPECT_EQ(log[i], "blocking") << "call " << i;
    if (it == 1) {  // the reduced gradients themselves (the parameters were equal before the step)
      const Tensor& g1 = m1.parameters().flat_grads();
      const Tensor& g2 = m2.parameters().flat_grads();
      double err = 0, mag = 1e-12;
      for (int64_t i = 0; i < g1.numel(); ++i) {
        err = llm::testing::max_or_nan(err, std::fabs(double(g1.data<float>()[i]) - double(g2.data<float>()[i])));
        mag = std::max(mag, std::fabs(double(g1.data<float>()[i])));
      }
      EXPECT_LE(err, 1e-6 * mag);
    }
  }
}

}  // namespace
