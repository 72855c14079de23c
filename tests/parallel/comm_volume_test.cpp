// The analytic communication volumes, hand-computed for a small layout. (The CLI test checks that
// llm-pretrain's measured traffic equals them for every layout it runs.)
#include <gtest/gtest.h>

#include "parallel/comm_volume.h"

namespace {

llm::CommVolumeInputs base() {
  llm::CommVolumeInputs in;
  in.model.num_layers = 2;
  in.model.hidden_size = 64;
  in.micro_batch = 2;
  in.seq_length = 32;
  in.micro_batches = 4;
  in.params_per_rank = 1000;
  return in;
}

constexpr int64_t kNh = 2 * 32 * 64 * 4;  // one [B*T, h] f32 tensor: 16384 bytes

TEST(CommVolume, TensorParallelAllReducesFourPerLayerPlusTwo) {
  auto in = base();
  in.tp = 2;
  const auto v = llm::analytic_comm_volume(in);
  EXPECT_EQ(v.tp.all_reduce, 4 * kNh * (4 * 2 + 2));
  EXPECT_EQ(v.tp.all_gather, 4 * 2 * 2 * (2 * 32) * 4);  // lse + loss, tp x N floats each
  EXPECT_EQ(v.tp.reduce_scatter, 0);
  EXPECT_EQ(v.dp.all_reduce, 0);  // one replica
}

TEST(CommVolume, MegatronSequenceParallelMovesFourNhPerLayerForward) {
  auto in = base();
  in.tp = 2;
  in.megatron_sp = true;
  in.micro_batches = 1;
  const auto v = llm::analytic_comm_volume(in);
  // forward: 2 all-gathers + 2 reduce-scatters per layer (4 N h) + embedding/final edges;
  // backward: 4 all-gathers + 2 reduce-scatters per layer + edges
  EXPECT_EQ(v.tp.reduce_scatter, kNh * (5 + 5));
  EXPECT_EQ(v.tp.all_gather - 2 * 2 * 64 * 4, kNh * (5 + 9));
  EXPECT_EQ(v.tp.all_reduce, (4 * 2 + 2) * 64 * 4);  // LayerNorm gradients once per step
  in.recompute = true;  // one extra forward of the first layer: +2 of each
  const auto r = llm::analytic_comm_volume(in);
  EXPECT_EQ(r.tp.reduce_scatter - v.tp.reduce_scatter, 2 * kNh);
  EXPECT_EQ(r.tp.all_gather - v.tp.all_gather, 2 * kNh);
  // ZeRO-2/3 reduce the layers' LayerNorm gradients per micro-batch in their hook, one replica too
  in.recompute = false;
  in.micro_batches = 4;
  in.zero_stage = 2;
  EXPECT_EQ(llm::analytic_comm_volume(in).tp.all_reduce, (4 * 2 * 4 + 2) * 64 * 4);
}

TEST(CommVolume, UlyssesMovesFourNhOverPPerLayerEachWay) {
  auto in = base();
  in.sp = 2;
  in.micro_batches = 1;
  const auto v = llm::analytic_comm_volume(in);
  // 4 N h / P per layer forward and again backward: (3 + 1) * (N/2) * h * 4 bytes * 2 layers * 2
  EXPECT_EQ(v.sp.all_to_all, 4 * (kNh / 2) * 2 * 2);
  EXPECT_EQ(v.dp.all_reduce, 1000 * 4);  // the Ulysses ranks' partial gradients
  EXPECT_EQ(v.tp.all_reduce + v.tp.all_gather, 0);
}

TEST(CommVolume, PipelineSendsActivationsForwardAndGradientsBackward) {
  auto in = base();
  in.model.num_layers = 4;
  in.model.vocab_size = 100;  // padded to 128
  in.pp = 4;
  const int64_t wte = 128 * 64 * 4;  // the tied embedding's gradient, exchanged by the two ends
  in.stage = 0;  // sends 4 micro-batches' outputs forward
  EXPECT_EQ(llm::analytic_comm_volume(in).pp.send_recv, 4 * kNh + wte);
  in.stage = 1;  // forward and backward
  EXPECT_EQ(llm::analytic_comm_volume(in).pp.send_recv, 2 * 4 * kNh);
  in.stage = 3;  // input gradients backward
  EXPECT_EQ(llm::analytic_comm_volume(in).pp.send_recv, 4 * kNh + wte);
  // Tensor parallelism inside the stages: the stage's 1 layer, the embedding's all-reduce on the
  // first stage only, the head's on the last only.
  in.tp = 2;
  in.model.tensor_parallel = 2;  // vocabulary padded to 256, 128 rows per rank
  in.stage = 0;
  auto v = llm::analytic_comm_volume(in);
  EXPECT_EQ(v.tp.all_reduce, 4 * kNh * (4 * 1 + 1));
  EXPECT_EQ(v.tp.all_gather, 0);  // the loss lives on the last stage
  in.stage = 3;
  v = llm::analytic_comm_volume(in);
  EXPECT_EQ(v.tp.all_reduce, 4 * kNh * (4 * 1 + 1));
  EXPECT_EQ(v.tp.all_gather, 4 * 2 * 2 * (2 * 32) * 4);
  // Megatron SP: stages exchange this rank's half of the rows.
  in.megatron_sp = true;
  in.stage = 1;
  EXPECT_EQ(llm::analytic_comm_volume(in).pp.send_recv, 2 * 4 * kNh / 2);
}

TEST(CommVolume, ZeroTwoAndThreeMoveLayersPerMicroBatch) {
  auto in = base();  // 2 layers, 4 micro-batches
  in.dp = 2;
  in.params_per_rank = 1000;
  in.resident_params = 200;
  in.layer_params = 400;
  in.zero_stage = 2;
  auto v = llm::analytic_comm_volume(in);
  EXPECT_EQ(v.dp.reduce_scatter, 4 * 2 * 400 * 4);  // every layer, every micro-batch
  EXPECT_EQ(v.dp.all_reduce, 200 * 4);              // the resident gradients, once
  EXPECT_EQ(v.dp.all_gather, 1000 * 4);             // the parameters after the step
  in.zero_stage = 3;
  v = llm::analytic_comm_volume(in);
  EXPECT_EQ(v.dp.reduce_scatter, 4 * 2 * 400 * 4);
  EXPECT_EQ(v.dp.all_gather, 2 * 4 * 2 * 400 * 4 + 200 * 4);  // before forward and backward; resident refresh
  // Mixed precision: the layers' 16-bit copy, and their 16 LayerNorm elements' f32 masters
  in.activation_bytes = 2;
  in.layer_f32_op_params = 16;
  v = llm::analytic_comm_volume(in);
  EXPECT_EQ(v.dp.all_gather, 2 * 4 * 2 * (400 * 2 + 16 * 4) + 200 * 4);
  EXPECT_EQ(v.dp.reduce_scatter, 4 * 2 * 400 * 4);  // f32 gradients in every precision
}

TEST(CommVolume, ZeroOneReduceScattersAndGathers) {
  auto in = base();
  in.dp = 4;
  in.zero_stage = 1;
  auto v = llm::analytic_comm_volume(in);
  EXPECT_EQ(v.dp.all_reduce, 0);
  EXPECT_EQ(v.dp.reduce_scatter, 4000);
  EXPECT_EQ(v.dp.all_gather, 4000);
  // Sharded masters (mixed precision): the gather moves the 16-bit copy and 24 LayerNorm masters
  in.activation_bytes = 2;
  in.sharded_masters = true;
  in.f32_op_params = 24;
  in.layer_params = 400;
  for (int64_t zero : {1, 2}) {
    in.zero_stage = zero;
    v = llm::analytic_comm_volume(in);
    EXPECT_EQ(v.dp.all_gather, in.params_per_rank * 2 + 24 * 4) << "ZeRO-" << zero;
  }
  EXPECT_EQ(v.dp.reduce_scatter, 4 * 2 * 400 * 4);  // ZeRO-2: f32 gradients all the same
  in.zero_stage = 0;
  EXPECT_EQ(llm::analytic_comm_volume(in).dp.all_reduce, 4000);
}

TEST(CommVolume, ReportFlagsMismatches) {
  llm::GroupVolumes a, b;
  a.tp.all_reduce = b.tp.all_reduce = 2'000'000;
  EXPECT_EQ(llm::comm_volume_report(a, b).find("MISMATCH"), std::string::npos);
  a.sp.all_to_all = 5;
  EXPECT_NE(llm::comm_volume_report(a, b).find("MISMATCH"), std::string::npos);
}

}  // namespace

namespace {
TEST(CommVolume, HalfPrecisionHalvesActivationTrafficOnly) {
  auto in = base();
  in.tp = 2;
  in.megatron_sp = true;
  in.dp = 2;
  const auto v32 = llm::analytic_comm_volume(in);
  in.activation_bytes = 2;
  const auto v16 = llm::analytic_comm_volume(in);
  EXPECT_EQ(2 * v16.tp.reduce_scatter, v32.tp.reduce_scatter);  // activations only
  // all-gathers: activations (halved) + the vocab-parallel loss's f32 lse and losses (kept)
  const int64_t loss_stats = 4 * 2 * 2 * (2 * 32) * 4;
  EXPECT_EQ(2 * (v16.tp.all_gather - loss_stats), v32.tp.all_gather - loss_stats);
  EXPECT_EQ(v16.tp.all_reduce, v32.tp.all_reduce);  // LayerNorm gradients: f32
  EXPECT_EQ(v16.dp.all_reduce, v32.dp.all_reduce);  // gradients: f32
}
}  // namespace
