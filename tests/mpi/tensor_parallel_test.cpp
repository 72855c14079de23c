// Tensor parallelism (with and without Megatron sequence parallelism, with and without full
// recompute) against the single-process model on every rank: the same loss, and each rank's
// gradient shards equal to the matching boxes of the single-process gradients, to fp32 round-off;
// and the trainer under Ulysses, whose gradient group spans data parallel x Ulysses.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "comm/communicator.h"
#include "core/philox.h"
#include "data/mock_data.h"
#include "model/gpt.h"
#include "mpi/mpi_support.h"
#include "train/trainer.h"

namespace {

using llm::Tensor;
using mpi_support::box_error;

llm::GPTConfig tiny(int64_t vocab) {
  llm::GPTConfig c;
  c.num_layers = 2;
  c.hidden_size = 32;
  c.num_heads = 4;
  c.vocab_size = vocab;
  c.vocab_divisible_by = 16;
  return c;
}

Tensor random_ids(int64_t B, int64_t T, int64_t V, uint64_t seed) {
  Tensor t = Tensor::empty({B, T}, llm::DType::i32);
  for (int64_t i = 0; i < B * T; ++i)
    t.data<int32_t>()[i] = static_cast<int32_t>(llm::philox_below(seed, 1, static_cast<uint64_t>(i), static_cast<uint64_t>(V)));
  return t;
}

struct Case {
  int tp;
  bool sp, recompute;
  int ulysses = 1;
  int64_t logits_chunk = 0;  // the TP model's (the reference computes every row at once)
  bool fused = false;        // the TP model's forward gets the loss weight (its head's backward runs there)
};

// Positions [r*T/S, (r+1)*T/S) of every sequence.
Tensor seq_shard(const Tensor& x, int r, int S) {
  const int64_t B = x.size(0), T = x.size(1), Tl = T / S;
  Tensor out = Tensor::empty({B, Tl}, llm::DType::i32);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < Tl; ++t) out.data<int32_t>()[b * Tl + t] = x.data<int32_t>()[b * T + r * Tl + t];
  return out;
}

void check_case(const Case& k) {
  auto world = llm::mpi_world_communicator();
  const int P = k.tp * k.ulysses;
  if (world->size() % P) GTEST_SKIP() << "world " << world->size() << " not divisible by tp x sp " << P;
  const int me = world->rank(), tp_rank = me % k.tp, sp_rank = (me / k.tp) % k.ulysses, replica = me / P;
  auto group = llm::mpi_split_communicator(replica * k.ulysses + sp_rank, tp_rank);
  auto uly = llm::mpi_split_communicator(1000 + replica * k.tp + tp_rank, sp_rank);
  const int64_t B = 2, T = 16, V = 200;
  llm::Backend& be = llm::cpu_backend();
  llm::GPT ref(tiny(V), be, 42, T);
  llm::GPT tpm(tiny(V), be, 42, T, llm::ModelParallel{group.get(), k.sp, uly.get()});
  ref.set_recompute(k.recompute);
  tpm.set_recompute(k.recompute);
  tpm.set_logits_chunk(k.logits_chunk);
  // Two micro-batches accumulate into the gradients, as training does.
  for (int micro = 0; micro < 2; ++micro) {
    const Tensor tokens = random_ids(B, T, V, 7 + micro), targets = random_ids(B, T, V, 100 + micro);
    targets.data<int32_t>()[3] = -1;  // an ignored position
    const double lr = ref.forward(tokens, targets);
    const Tensor tokens_here = seq_shard(tokens, sp_rank, k.ulysses), targets_here = seq_shard(targets, sp_rank, k.ulysses);
    const double lt = k.fused ? tpm.forward(tokens_here, targets_here, 0.5f) : tpm.forward(tokens_here, targets_here);
    EXPECT_NEAR(lt, lr, 1e-5 * std::fabs(lr)) << "micro-batch " << micro;
    // per-token losses over the whole vocabulary (this rank's positions)
    const int64_t Tl = T / k.ulysses;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < Tl; ++t)
        ASSERT_NEAR(tpm.losses().data<float>()[b * Tl + t], ref.losses().data<float>()[b * T + sp_rank * Tl + t], 2e-5)
            << "token " << b << "," << t;
    ref.backward(0.5f);
    tpm.backward(0.5f);
  }
  tpm.reduce_partial_grads();
  uly->all_reduce_sum(tpm.parameters().flat_grads());  // Ulysses: partial sums over the positions
  int checked = 0;
  for (const llm::ParamSpec& s : tpm.parameters().specs()) {
    double scale = 0;
    const double err = box_error(s, tpm.parameters().grad(s.name), ref.parameters().grad(s.name), &scale);
    EXPECT_LE(err, 2e-5 * scale + 1e-9) << s.name << " (rank " << group->rank() << " of " << k.tp << ")";
    // and the parameters themselves start identical (layout-independent initialisation)
    double pscale = 0;
    EXPECT_EQ(box_error(s, tpm.parameters().param(s.name), ref.parameters().param(s.name), &pscale), 0.0) << s.name;
    ++checked;
  }
  EXPECT_EQ(checked, static_cast<int>(ref.parameters().specs().size()));
}

TEST(TensorParallel, Tp2MatchesSingleProcess) { check_case({2, false, false}); }
TEST(TensorParallel, Tp2SequenceParallelMatchesSingleProcess) { check_case({2, true, false}); }
TEST(TensorParallel, Tp2SequenceParallelRecomputeMatchesSingleProcess) { check_case({2, true, true}); }
TEST(TensorParallel, Tp4MatchesSingleProcess) { check_case({4, false, false}); }
TEST(TensorParallel, Tp4SequenceParallelMatchesSingleProcess) { check_case({4, true, true}); }

TEST(UlyssesSequenceParallel, Sp2MatchesSingleProcess) { check_case({1, false, false, 2}); }
TEST(UlyssesSequenceParallel, Sp4RecomputeMatchesSingleProcess) { check_case({1, false, true, 4}); }
TEST(UlyssesSequenceParallel, Tp2TimesSp2MatchesSingleProcess) { check_case({2, false, false, 2}); }

// The head in chunks: per chunk, each shard's logits and loss; the shards' lse combined after.
TEST(TensorParallel, Tp2LogitsInChunksMatchSingleProcess) { check_case({2, false, false, 1, 5}); }
TEST(TensorParallel, Tp2SequenceParallelLogitsInChunksMatchSingleProcess) { check_case({2, true, true, 1, 7}); }
TEST(UlyssesSequenceParallel, Tp2TimesSp2LogitsInChunksMatchSingleProcess) { check_case({2, false, false, 2, 3}); }
// ... with each chunk's vocab-parallel lse combined as it goes, for the fused backward
TEST(TensorParallel, Tp2FusedLogitsChunksMatchSingleProcess) { check_case({2, false, false, 1, 5, true}); }
TEST(TensorParallel, Tp4SequenceParallelFusedLogitsChunksMatchSingleProcess) { check_case({4, true, true, 1, 6, true}); }
TEST(UlyssesSequenceParallel, Tp2TimesSp2FusedLogitsChunksMatchSingleProcess) { check_case({2, false, false, 2, 3, true}); }

// The trainer under Ulysses (2 x the remaining ranks as data parallel, plain and ZeRO-2): each
// rank's gradient is a partial sum, over its positions, of its replica's mean loss; the gradient
// group (data parallel x Ulysses) sums them and averages over the replicas alone. The step's loss
// and gradient norm follow the single process. Adam's update nearly ignores a gradient's scale,
// so averaging over the whole group (a gradient sp times too small) shows in the norm.
void check_ulysses_trainer(int zero) {
  auto world = llm::mpi_world_communicator();
  const int S = 2;
  if (world->size() % S) GTEST_SKIP() << "world " << world->size() << " not divisible by Ulysses " << S;
  const int dp = world->size() / S, me = world->rank(), sp_rank = me % S, replica = me / S;
  auto uly = llm::mpi_split_communicator(replica, sp_rank);
  auto grads = llm::mpi_split_communicator(0, me);  // group rank = replica * S + sp_rank
  auto layout = [&](bool parallel) {
    return mpi_support::tiny_train_args(4 * dp, 21, [&](llm::TrainArgs& a) {
      if (!parallel) return;
      a.data_parallel_size = dp;
      a.ds_sequence_parallel_size = S;
      a.zero_stage = zero;
    });
  };
  const llm::TrainArgs a = layout(true), one = layout(false);
  llm::MockDataSource data(a.vocab_size, a.seq_length, 5);
  llm::Backend& be = llm::cpu_backend();
  llm::ModelParallel mp{nullptr, false, uly.get()};  // tensor parallel 1
  mp.zero_stage = zero >= 2 ? zero : 0;
  llm::GPT ref(one.model_config(), be, 21, a.seq_length), model(a.model_config(), be, 21, a.seq_length, mp);
  llm::Trainer tr(one, ref, data), tu(a, model, data, grads.get());
  for (int it = 1; it <= 3; ++it) {
    const llm::IterationStats r = tr.train_step(), u = tu.train_step();
    EXPECT_NEAR(u.loss, r.loss, 1e-5 * r.loss) << "Ulysses 2 x data parallel " << dp << ", ZeRO-" << zero
                                               << ", iteration " << it;
    EXPECT_NEAR(u.grad_norm, r.grad_norm, 1e-4 * r.grad_norm)
        << "Ulysses 2 x data parallel " << dp << ", ZeRO-" << zero << ", iteration " << it;
  }
}

TEST(UlyssesSequenceParallel, TrainerMatchesSingleProcess) {
  check_ulysses_trainer(0);
  check_ulysses_trainer(2);
}

TEST(TensorParallel, ShardsPartitionEveryShardedTensor) {
  // Over the ranks of a group of 4, the boxes of each sharded tensor cover it exactly once.
  const llm::GPTConfig c = tiny(200);
  llm::GPTConfig c4 = c;
  c4.tensor_parallel = 4;
  std::vector<llm::ParameterSet> sets;
  for (int r = 0; r < 4; ++r) sets.push_back(llm::gpt_parameters(c4, 16, r, 4, false));
  for (const llm::ParamSpec& s : sets[0].specs()) {
    if (!s.sharded()) continue;
    std::vector<int> cover(static_cast<size_t>(s.global_shape[s.shard_dim]), 0);
    for (int r = 0; r < 4; ++r)
      for (const llm::ShardChunk& ch : sets[r].spec(s.name).chunks)
        for (int64_t i = 0; i < ch.length; ++i) ++cover[static_cast<size_t>(ch.global_begin + i)];
    EXPECT_TRUE(std::all_of(cover.begin(), cover.end(), [](int v) { return v == 1; })) << s.name;
  }
}

}  // namespace
