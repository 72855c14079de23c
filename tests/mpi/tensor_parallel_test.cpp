// Tensor parallelism (with and without Megatron sequence parallelism, with and without full
// recompute) against the single-process model on every rank: the same loss, and each rank's
// gradient shards equal to the matching boxes of the single-process gradients, to fp32 round-off.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "comm/communicator.h"
#include "core/philox.h"
#include "model/gpt.h"

namespace {

using llm::Tensor;

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

// Largest |a - b| over the local tensor and the matching global box of the reference, relative
// to the reference's largest magnitude (rows of the reference beyond its extent are skipped:
// the padded vocabulary differs between layouts).
double box_error(const llm::ParamSpec& spec, const Tensor& local, const Tensor& global, double* scale) {
  const auto& gs = global.shape();
  const int64_t gcols = gs.size() == 2 ? gs[1] : 1, lcols = spec.shape.size() == 2 ? spec.shape[1] : 1;
  double err = 0, mag = 0;
  for (int64_t i = 0; i < global.numel(); ++i) mag = std::max(mag, std::fabs(double(global.data<float>()[i])));
  for (const llm::LocalBox& b : llm::local_boxes(spec)) {
    const int64_t rows = b.extent[0], cols = b.extent.size() == 2 ? b.extent[1] : 1;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t gr = b.global_offset[0] + r, lr = b.local_offset[0] + r;
      if (gr >= gs[0]) continue;
      for (int64_t c = 0; c < cols; ++c) {
        const int64_t gc = (b.global_offset.size() == 2 ? b.global_offset[1] : 0) + c;
        const int64_t lc = (b.local_offset.size() == 2 ? b.local_offset[1] : 0) + c;
        const double want = global.data<float>()[gr * gcols + gc], got = local.data<float>()[lr * lcols + lc];
        err = std::max(err, std::fabs(want - got));
      }
    }
  }
  *scale = mag;
  return err;
}

struct Case {
  int tp;
  bool sp, recompute;
};

void check_case(const Case& k) {
  auto world = llm::mpi_world_communicator();
  if (world->size() % k.tp) GTEST_SKIP() << "world " << world->size() << " not divisible by tp " << k.tp;
  const int me = world->rank();
  auto group = llm::mpi_split_communicator(me / k.tp, me % k.tp);
  const int64_t B = 2, T = 16, V = 200;
  llm::Backend& be = llm::cpu_backend();
  llm::GPT ref(tiny(V), be, 42, T);
  llm::GPT tpm(tiny(V), be, 42, T, llm::TensorParallel{group.get(), k.sp});
  ref.set_recompute(k.recompute);
  tpm.set_recompute(k.recompute);
  // Two micro-batches accumulate into the gradients, as training does.
  for (int micro = 0; micro < 2; ++micro) {
    const Tensor tokens = random_ids(B, T, V, 7 + micro), targets = random_ids(B, T, V, 100 + micro);
    targets.data<int32_t>()[3] = -1;  // an ignored position
    const double lr = ref.forward(tokens, targets), lt = tpm.forward(tokens, targets);
    EXPECT_NEAR(lt, lr, 1e-5 * std::fabs(lr)) << "micro-batch " << micro;
    // per-token losses over the whole vocabulary
    for (int64_t i = 0; i < B * T; ++i)
      ASSERT_NEAR(tpm.losses().data<float>()[i], ref.losses().data<float>()[i], 2e-5) << "token " << i;
    ref.backward(0.5f);
    tpm.backward(0.5f);
  }
  tpm.reduce_partial_grads();
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
