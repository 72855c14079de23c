// Evaluation over the layout (Trainer::evaluate): `iters` global batches of the validation source
// from sample 0, each replica running its slice as in training, the losses summed over the
// gradient group. Against a hand-made reference: the single-process model's forward over
// samples [0, iters x global batch) in micro-batches, averaged; every rank gets the same value.
// Plain data parallel, with a pipeline, under ZeRO-3 (the layers gathered over the group), and
// with Ulysses.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "comm/communicator.h"
#include "data/mock_data.h"
#include "model/gpt.h"
#include "mpi/mpi_support.h"
#include "train/trainer.h"

namespace {

using llm::Tensor;

// The mean forward loss of `iters` x `global_batch` samples from 0, micro-batches of `mbs`.
double reference_loss(llm::GPT& ref, const llm::SampleSource& data, int64_t iters, int64_t global_batch, int64_t mbs,
                      int64_t T) {
  Tensor tokens = Tensor::empty({mbs, T}, llm::DType::i32), targets = Tensor::empty({mbs, T}, llm::DType::i32);
  std::vector<int32_t> s(static_cast<size_t>(T + 1));
  double sum = 0;
  int64_t batches = 0;
  for (int64_t first = 0; first < iters * global_batch; first += mbs, ++batches) {
    for (int64_t r = 0; r < mbs; ++r) {
      data.sample(static_cast<uint64_t>(first + r) % data.num_samples(), s.data());
      std::copy(s.begin(), s.begin() + T, tokens.data<int32_t>() + r * T);
      std::copy(s.begin() + 1, s.end(), targets.data<int32_t>() + r * T);
    }
    sum += ref.forward(tokens, targets);
  }
  return sum / static_cast<double>(batches);
}

void check_evaluation(int zero, int pp) {
  auto world = llm::mpi_world_communicator();
  if (world->size() % pp) GTEST_SKIP() << "world " << world->size() << " not divisible by pp " << pp;
  const int dp = world->size() / pp, me = world->rank(), stage = me / dp, dp_rank = me % dp;
  auto grads = llm::mpi_split_communicator(stage, dp_rank);
  auto pipe = llm::mpi_split_communicator(1000 + dp_rank, stage);
  const int64_t global_batch = 4 * dp;  // 2 micro-batches of 2 per replica
  const llm::TrainArgs a = mpi_support::tiny_train_args(global_batch, 21, [&](llm::TrainArgs& x) {
    x.data_parallel_size = dp;
    x.pipeline_model_parallel_size = pp;
    x.zero_stage = zero;
  });
  llm::MockDataSource data(200, 16, 5);
  llm::Backend& be = llm::cpu_backend();
  llm::ModelParallel mp;
  mp.pipeline = pipe.get();
  mp.zero_stage = zero >= 2 ? zero : 0;
  llm::GPT model(a.model_config(), be, 21, 16, mp);
  llm::Trainer t(a, model, data, grads.get());
  llm::GPT ref(a.model_config(), be, 21, 16);
  for (int64_t iters : {1, 3}) {
    const double got = t.evaluate(data, iters);
    const double want = reference_loss(ref, data, iters, global_batch, a.micro_batch_size, 16);
    EXPECT_NEAR(got, want, 1e-5 * want) << "ZeRO-" << zero << ", pp " << pp << ", dp " << dp << ", " << iters
                                        << " iterations, rank " << me;
    // one value on every rank
    EXPECT_EQ(world->all_reduce_max(got), got) << "rank " << me;
    EXPECT_EQ(world->all_reduce_min(got), got) << "rank " << me;
  }
  // The samples are the global batches', not the first replica's micro-batches: 3 iterations of
  // 4 x dp samples differ from 3 micro-batches of 2 (the loss would match by chance only).
  if (dp > 1) {
    EXPECT_NE(t.evaluate(data, 3), reference_loss(ref, data, 1, 3 * a.micro_batch_size, a.micro_batch_size, 16));
  }
}

// Ulysses 2 (x the rest as data parallel): a replica's two ranks each hold its whole loss, which
// counts once in the sum over the gradient group (rank = dp_rank x 2 + sp_rank).
TEST(Evaluation, WithUlysses) {
  auto world = llm::mpi_world_communicator();
  if (world->size() % 2) GTEST_SKIP() << "world " << world->size() << " not divisible by sp 2";
  const int dp = world->size() / 2, me = world->rank(), sp_rank = me % 2, dp_rank = me / 2;
  auto grads = llm::mpi_split_communicator(0, me);
  auto uly = llm::mpi_split_communicator(1 + dp_rank, sp_rank);
  const int64_t global_batch = 4 * dp;
  const llm::TrainArgs a = mpi_support::tiny_train_args(global_batch, 21, [&](llm::TrainArgs& x) {
    x.data_parallel_size = dp;
    x.ds_sequence_parallel_size = 2;
  });
  llm::MockDataSource data(200, 16, 5);
  llm::Backend& be = llm::cpu_backend();
  llm::GPT model(a.model_config(), be, 21, 16, llm::ModelParallel{nullptr, false, uly.get()});
  llm::Trainer t(a, model, data, grads.get());
  llm::GPT ref(a.model_config(), be, 21, 16);
  const double got = t.evaluate(data, 2), want = reference_loss(ref, data, 2, global_batch, a.micro_batch_size, 16);
  EXPECT_NEAR(got, want, 1e-5 * want) << "Ulysses 2 x dp " << dp << ", rank " << me;
}

TEST(Evaluation, DataParallelReplicasEachRunTheirSlice) { check_evaluation(0, 1); }
TEST(Evaluation, WithAPipeline) { check_evaluation(0, 2); }
TEST(Evaluation, UnderZero3) { check_evaluation(3, 1); }
TEST(Evaluation, UnderZero3WithAPipeline) { check_evaluation(3, 2); }

}  // namespace
