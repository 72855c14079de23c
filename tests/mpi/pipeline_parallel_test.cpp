// Pipeline parallelism against the single-process run on every rank: the trainer's 1F1B schedule
// over several micro-batches gives the same loss and gradient norm each step and the same
// gradients (each stage's tensors against the matching ones of the reference), alone
// and with tensor parallelism + Megatron SP inside the stages; and a stage holds at most
// (stages - stage) micro-batches' activations, as 1F1B promises.
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

llm::TrainArgs pipeline_args(int pp, int tp, bool sp, int64_t logits_chunk = 0) {
  // 6 micro-batches: more than the stages, so 1F1B reaches its steady state
  return mpi_support::tiny_train_args(12, 11, [&](llm::TrainArgs& a) {
    a.pipeline_model_parallel_size = pp;
    a.tensor_model_parallel_size = tp;
    a.sequence_parallel = sp;
    a.logits_chunk_tokens = logits_chunk;
  });
}

// Largest |local - matching box of global| relative to the reference's largest magnitude.
double rel_box_error(const llm::ParamSpec& spec, const Tensor& local, const Tensor& global) {
  double scale = 0;
  const double err = mpi_support::box_error(spec, local, global, &scale);
  return err / std::max(scale, 1e-12);
}

// logits_chunk: the pipeline's (the reference computes every row at once).
void check_pipeline(int pp, int tp, bool sp, int64_t logits_chunk = 0) {
  auto world = llm::mpi_world_communicator();
  if (world->size() != pp * tp) GTEST_SKIP() << "needs " << pp * tp << " ranks, world has " << world->size();
  const int me = world->rank(), tp_rank = me % tp, stage = me / tp;
  auto tp_group = llm::mpi_split_communicator(stage, tp_rank);
  auto pipe = llm::mpi_split_communicator(1000 + tp_rank, stage);
  const llm::TrainArgs a = pipeline_args(pp, tp, sp, logits_chunk), one = pipeline_args(1, 1, false);
  llm::MockDataSource data(a.vocab_size, a.seq_length, 4);
  llm::Backend& be = llm::cpu_backend();
  llm::ModelParallel mp{tp_group.get(), sp, nullptr};
  mp.pipeline = pipe.get();
  llm::GPT ref(one.model_config(), be, 11, a.seq_length);
  llm::GPT model(a.model_config(), be, 11, a.seq_length, mp);
  ASSERT_EQ(model.first_layer(), stage * 4 / pp);
  llm::Trainer tr(one, ref, data), tt(a, model, data);
  int checked = 0;
  for (int it = 1; it <= 3; ++it) {
    const llm::IterationStats r = tr.train_step(), t = tt.train_step();
    EXPECT_NEAR(t.loss, r.loss, 1e-5 * r.loss) << "iteration " << it << ", stage " << stage;
    EXPECT_NEAR(t.grad_norm, r.grad_norm, 1e-4 * r.grad_norm) << "iteration " << it << ", stage " << stage;
    if (it > 1) continue;
    // The first step's gradients (left in the buffers by the step; the parameters were equal
    // before it), the tied copy's included: it holds the sum of both ends' contributions.
    for (const llm::ParamSpec& s : model.parameters().specs()) {
      EXPECT_LE(rel_box_error(s, model.parameters().grad(s.name), ref.parameters().grad(s.name)), 2e-5)
          << s.name << " on stage " << stage << ", tensor-parallel rank " << tp_rank;
      ++checked;
    }
  }
  // 1F1B: stage s keeps at most pp - s micro-batches in flight (GPipe would keep all 6).
  EXPECT_EQ(model.activation_sets(), pp - stage) << "stage " << stage;
  // Each stage holds its layers' 12 tensors; the first the embeddings, the last ln_f and wte.
  const int expected = 12 * 4 / pp + (stage == 0 ? 2 : 0) + (stage == pp - 1 ? (stage == 0 ? 2 : 3) : 0);
  EXPECT_EQ(checked, expected) << "stage " << stage;
  // Every global tensor is held by some stage: count names over the pipeline (tensor-parallel rank 0).
  const double total = pipe->all_reduce_sum(static_cast<double>(checked));
  EXPECT_EQ(static_cast<int64_t>(total), static_cast<int64_t>(ref.parameters().specs().size()) + (pp > 1 ? 1 : 0));
}

TEST(PipelineParallel, Pp2MatchesSingleProcess) { check_pipeline(2, 1, false); }
TEST(PipelineParallel, Pp4MatchesSingleProcess) { check_pipeline(4, 1, false); }
TEST(PipelineParallel, Pp2TimesTp2SequenceParallelMatchesSingleProcess) { check_pipeline(2, 2, true); }
// The last stage's head in chunks, with micro-batches in flight in their own activation sets.
TEST(PipelineParallel, Pp4LogitsInChunksMatchSingleProcess) { check_pipeline(4, 1, false, 5); }
TEST(PipelineParallel, Pp2TimesTp2SequenceParallelLogitsInChunksMatchSingleProcess) { check_pipeline(2, 2, true, 9); }

}  // namespace
