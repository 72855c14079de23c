#include <gtest/gtest.h>

#include <fstream>

#include "core/error.h"
#include "support/scratch_dir.h"
#include "sweep/calibrate.h"
#include "sweep/perf_model.h"
#include "train/flops.h"

using namespace llm;
using namespace llm::sweep;

namespace {
GPTConfig model(int64_t layers, int64_t hidden, int64_t heads, int64_t vocab, int64_t seq) {
  GPTConfig m;
  m.num_layers = layers, m.hidden_size = hidden, m.num_heads = heads, m.vocab_size = vocab;
  m.max_position_embeddings = seq;
  return m;
}
ClusterSpec bf16_cluster() {
  ClusterSpec c;
  c.dtype = "bf16", c.devices_per_node = 8, c.peak_tflops = 100, c.matmul_efficiency = 0.5, c.matmul_half_tokens = 0;
  c.attention_efficiency = 0.25, c.memory_gib = 80, c.memory_bandwidth_gbs = 1000, c.memory_overhead_gib = 1;
  c.intra_node_bandwidth_gbs = 100, c.intra_node_latency_us = 10, c.inter_node_bandwidth_gbs = 80;
  c.inter_node_latency_us = 20, c.activation_bytes_per_hidden = 34;
  return c;
}
}  // namespace

TEST(PerfModel, ModelStatesPerZeroStage) {
  // libllm's mixed precision: f32 masters and the 16-bit copy, f32 gradients, two f32 moments
  // (6 + 4 + 8 bytes per parameter); 1e9 parameters over 8 ranks. ZeRO-1/2 shard the masters
  // (the copy whole: 2 + 4/8).
  EXPECT_DOUBLE_EQ(model_state_memory(1e9, "bf16", 0, 8).total(), 18e9);
  EXPECT_DOUBLE_EQ(model_state_memory(1e9, "bf16", 1, 8).total(), 2.5e9 + 4e9 + 1e9);
  EXPECT_DOUBLE_EQ(model_state_memory(1e9, "bf16", 2, 8).total(), 2.5e9 + 0.5e9 + 1e9);
  EXPECT_DOUBLE_EQ(model_state_memory(1e9, "bf16", 3, 8).total(), 0.5e9 + 0.5e9 + 1e9);  // 16 / 8
  // the LayerNorms' masters stay whole (f32_op: 1e6 of them); one rank keeps every master
  EXPECT_DOUBLE_EQ(model_state_memory(1e9, "bf16", 1, 8, 0, 0, 1, 1, 1e6).params, 2.5e9 + 4e6);
  EXPECT_DOUBLE_EQ(model_state_memory(1e9, "bf16", 1, 1, 0, 0, 1, 1, 1e6).params, 6e9);
  EXPECT_DOUBLE_EQ(model_state_memory(1e9, "fp16", 2, 4).params, 3e9);
  // ZeRO-2/3 keep the resident tensors and the layers' working areas whole: 1e8 resident, layers
  // of 5e7, two gradient areas and one parameter area
  const ModelStateMemory z3 = model_state_memory(1e9, "bf16", 3, 8, 1e8, 5e7, 2, 1);
  EXPECT_DOUBLE_EQ(z3.params, 6 * (1e8 + 5e7) + 4 * 1.25e8);
  EXPECT_DOUBLE_EQ(z3.grads, 4 * (1e8 + 2 * 5e7) + 4 * 1.25e8);
  EXPECT_DOUBLE_EQ(z3.optimizer, 8 * 1.25e8);
  EXPECT_DOUBLE_EQ(model_state_memory(1e9, "bf16", 2, 8, 1e8, 5e7, 2, 1).params, 2.5e9);
  // fp32 training: 4 + 4 + 8.
  EXPECT_DOUBLE_EQ(model_state_memory(1e9, "fp32", 0, 8).total(), 16e9);
  EXPECT_DOUBLE_EQ(model_state_memory(1e9, "fp32", 1, 8).optimizer, 1e9);
  EXPECT_DOUBLE_EQ(model_state_memory(1e9, "fp32", 1, 1).total(), 16e9);
  EXPECT_DOUBLE_EQ(model_state_memory(1e9, "fp32", 3, 8, 1e8, 5e7, 1, 2).params, 4 * (1e8 + 2 * 5e7) + 4 * 1.25e8);
}

TEST(PerfModel, MegatronSpAgainstUlyssesCommunication) {
  // 4 N h (t-1)/t against 4 N h (P-1)/P^2: N = 4096 tokens, h = 1024, t = P = 4.
  EXPECT_DOUBLE_EQ(megatron_tp_elements_per_layer(4096, 1024, 4), 12582912.0);
  EXPECT_DOUBLE_EQ(ulysses_elements_per_layer(4096, 1024, 4), 3145728.0);
  for (int64_t P : {2, 8, 64})
    EXPECT_DOUBLE_EQ(megatron_tp_elements_per_layer(4096, 1024, P) / ulysses_elements_per_layer(4096, 1024, P),
                     static_cast<double>(P));
  EXPECT_DOUBLE_EQ(megatron_tp_elements_per_layer(4096, 1024, 1), 0.0);
  EXPECT_DOUBLE_EQ(ulysses_elements_per_layer(4096, 1024, 1), 0.0);
}

TEST(PerfModel, PipelineBubbleAndCollectives) {
  EXPECT_DOUBLE_EQ(pipeline_bubble_fraction(4, 12), 3.0 / 15.0);
  EXPECT_DOUBLE_EQ(pipeline_bubble_fraction(1, 7), 0.0);
  EXPECT_DOUBLE_EQ(pipeline_bubble_fraction(8, 1), 7.0 / 8.0);
  // 1 GB over 4 ranks at 100 GB/s, 10 us: 2 (3/4) 1e9/1e11 + 2 x 3 x 10 us.
  EXPECT_NEAR(all_reduce_seconds(1e9, 4, 100, 10), 0.015 + 60e-6, 1e-15);
  EXPECT_NEAR(all_gather_seconds(1e9, 4, 100, 10), 0.0075 + 30e-6, 1e-15);
  EXPECT_EQ(all_reduce_seconds(1e9, 1, 100, 10), 0.0);
}

TEST(PerfModel, FlopsAgreeWithTheMegatronFormula) {
  const GPTConfig m = model(2, 1024, 16, 1024, 2048);
  EXPECT_DOUBLE_EQ(layer_matmul_flops(m, 2, 2048), 103079215104.0);  // 24 b s h^2
  EXPECT_DOUBLE_EQ(layer_causal_attention_flops(m, 2, 2048), 17179869184.0);  // 2 b s^2 h
  // Narayanan et al. (recompute form): 4 passes over the layers, attention counted dense (twice
  // the causal work), 3 over the logit layer (2 b s V h forward); without recompute x 3/4.
  const double layers = 2 * (layer_matmul_flops(m, 2, 2048) + 2 * layer_causal_attention_flops(m, 2, 2048));
  const double logits = 2.0 * 2 * 2048 * 1024 * 1024;
  EXPECT_DOUBLE_EQ(4 * layers + 3 * logits, megatron_flops_per_iteration(m, 2, 2048, true));
  EXPECT_DOUBLE_EQ(0.75 * (4 * layers + 3 * logits), megatron_flops_per_iteration(m, 2, 2048, false));
}

TEST(PerfModel, ActivationsPerLayerKorthikanti) {
  const GPTConfig m = model(2, 1024, 16, 1024, 2048);
  const ClusterSpec c = bf16_cluster();
  EXPECT_DOUBLE_EQ(layer_activation_bytes(m, 1, 2048, 1, 1, false, c), 34.0 * 2048 * 1024);
  EXPECT_DOUBLE_EQ(layer_activation_bytes(m, 1, 2048, 4, 1, false, c), (10.0 + 24.0 / 4) * 2048 * 1024);
  EXPECT_DOUBLE_EQ(layer_activation_bytes(m, 1, 2048, 4, 1, true, c), 34.0 / 4 * 2048 * 1024);
  EXPECT_DOUBLE_EQ(layer_activation_bytes(m, 1, 2048, 1, 4, false, c), 34.0 / 4 * 2048 * 1024);  // Ulysses
  ClusterSpec no_flash = c;
  no_flash.flash_attention = false;  // + 5 a s^2 b
  EXPECT_DOUBLE_EQ(layer_activation_bytes(m, 1, 2048, 1, 1, false, no_flash), 34.0 * 2048 * 1024 + 5.0 * 16 * 2048 * 2048);
  EXPECT_DOUBLE_EQ(layer_checkpoint_bytes(m, 1, 2048, 1, 1, false, c), 2.0 * 2048 * 1024);
  EXPECT_DOUBLE_EQ(layer_checkpoint_bytes(m, 1, 2048, 4, 1, true, c), 2.0 * 2048 * 1024 / 4);
}

TEST(PerfModel, SingleDevicePredictionByHand) {
  const GPTConfig m = model(2, 1024, 16, 1024, 2048);
  SweepPoint p;
  p.seq_length = 2048, p.dtype = "bf16";
  const Prediction r = predict(p, m, bf16_cluster());
  ASSERT_EQ(r.problem, "");
  // compute: 3 x (matmul 107374182400 / (1e14 x 0.5) + causal attention 17179869184 / (1e14 x 0.25))
  EXPECT_NEAR(r.stage_compute_s, 0.00850403524608, 1e-15);
  // traffic: 3 x (2 layers x 34 s h + bf16 logits 2 s V) / 1e12 B/s
  EXPECT_NEAR(r.stage_memory_s, 0.00044040192, 1e-15);
  // AdamW: 2 x 28340224 parameters x 18 B / 1e12 B/s
  EXPECT_NEAR(r.optimizer_s, 0.001020248064, 1e-15);
  EXPECT_NEAR(r.iteration_s, 0.00996468523008, 1e-14);
  EXPECT_DOUBLE_EQ(r.states.total(), 18.0 * 28340224);  // = 18 x GPTConfig::num_parameters()
  EXPECT_EQ(m.num_parameters(), 28340224);  // 1024 x 1024 + 2048 x 1024 + 2 x 12596224 + 2 x 1024
  EXPECT_DOUBLE_EQ(r.activations, 2 * 71303168.0);
  EXPECT_DOUBLE_EQ(r.total_memory, 510124032.0 + 142606336 + 71303168 + 4194304 + 1073741824);
  EXPECT_TRUE(r.fits);
  EXPECT_DOUBLE_EQ(r.tflops_megatron, megatron_flops_per_iteration(m, 1, 2048, false) / r.iteration_s / 1e12);
  EXPECT_EQ(r.dp_s, 0.0);
}

// --logits-chunk-tokens 512 of 2048 rows: 512 rows of bf16 logits resident instead of 2048, in
// the same time (each chunk's backward runs in its forward: nothing recomputed).
TEST(PerfModel, LogitsInChunksHoldOneChunk) {
  const GPTConfig m = model(2, 1024, 16, 1024, 2048);
  SweepPoint p;
  p.seq_length = 2048, p.dtype = "bf16";
  const Prediction whole = predict(p, m, bf16_cluster());
  p.logits_chunk = 512;
  const Prediction chunked = predict(p, m, bf16_cluster());
  EXPECT_DOUBLE_EQ(whole.logits, 2048.0 * 1024 * 2);
  EXPECT_DOUBLE_EQ(chunked.logits, 512.0 * 1024 * 2);
  EXPECT_DOUBLE_EQ(whole.total_memory - chunked.total_memory, 1536.0 * 1024 * 2);
  EXPECT_DOUBLE_EQ(chunked.iteration_s, whole.iteration_s);
  // a chunk as large as the micro-batch changes nothing
  p.logits_chunk = 2048;
  EXPECT_DOUBLE_EQ(predict(p, m, bf16_cluster()).iteration_s, whole.iteration_s);
  EXPECT_DOUBLE_EQ(predict(p, m, bf16_cluster()).total_memory, whole.total_memory);
}

TEST(PerfModel, ParallelTermsAndProblems) {
  const GPTConfig m = model(4, 1024, 16, 1024, 4096);
  const ClusterSpec c = bf16_cluster();
  SweepPoint p;
  p.seq_length = 4096, p.dtype = "bf16", p.pp = 2, p.grad_accum = 6, p.dp = 2;
  Prediction r = predict(p, m, c);
  ASSERT_EQ(r.problem, "");
  EXPECT_DOUBLE_EQ(r.bubble_fraction, 1.0 / 7.0);
  EXPECT_GT(r.stage_pp_s, 0);
  EXPECT_GT(r.dp_s, 0);
  // Recompute trades time for memory.
  SweepPoint q = p;
  q.recompute = true;
  const Prediction rq = predict(q, m, c);
  EXPECT_GT(rq.iteration_s, r.iteration_s);
  EXPECT_LT(rq.total_memory, r.total_memory);
  // Bytes for one micro-batch. ZeRO-1 (reduce-scatter, then the shards gathered) moves 3/4 of plain
  // data parallelism's in mixed precision (its masters sharded, it gathers the 16-bit copy), the
  // same in fp32 (f32 shards gathered). ZeRO-3 in fp32 moves 1.5x (the ZeRO paper's 3 vs 2 buffers); in mixed
  // precision its layer gathers move the 16-bit copy, so only the resident tensors
  // (R = 1024 x 1024 + 4096 x 1024 + 2 x 1024 elements, all-reduced and gathered in f32) move
  // more: 4 R (all-reduce) + 2 R (gather) against 4 R, at dp 2.
  p.pp = 1, p.grad_accum = 1, p.zero_stage = 0;
  const double z0 = predict(p, m, c).dp_bytes, R = 1024.0 * 1024 + 4096.0 * 1024 + 2048;
  p.zero_stage = 1;
  EXPECT_NEAR(predict(p, m, c).dp_bytes, 0.75 * z0, 1e-12 * z0);
  p.zero_stage = 3;
  EXPECT_NEAR(predict(p, m, c).dp_bytes, z0 + 2.0 * R, 1e-12 * z0);
  {
    ClusterSpec c32 = c;
    c32.dtype = "fp32";
    SweepPoint p32 = p;
    p32.dtype = "fp32", p32.zero_stage = 0;
    const double f0 = predict(p32, m, c32).dp_bytes;
    p32.zero_stage = 3;
    EXPECT_NEAR(predict(p32, m, c32).dp_bytes, 1.5 * f0, 1e-12 * f0);
    p32.zero_stage = 1;
    EXPECT_NEAR(predict(p32, m, c32).dp_bytes, f0, 1e-12 * f0);
    EXPECT_DOUBLE_EQ(f0, z0);  // f32 gradients either way
  }
  // Impossible layouts and mismatches are reported, not thrown.
  p.tp = 3;
  EXPECT_EQ(predict(p, m, c).problem,
            "impossible layout: model 'custom': --num-attention-heads 16 is not divisible by --tensor-model-parallel-size 3");
  p.tp = 1, p.dtype = "fp32";
  EXPECT_EQ(predict(p, m, c).problem, "the point's dtype fp32 differs from the cluster's bf16");
  // Ulysses under TP: each rank's heads are h / tp wide, so the all-to-alls' bytes halve at TP 2
  // (the latency terms stay): 4 (sp - 1) / sp^2 x tokens x h / tp elements per layer and pass
  ClusterSpec fast = c;
  fast.intra_node_latency_us = 0, fast.inter_node_latency_us = 0;
  SweepPoint u;
  u.seq_length = 4096, u.dtype = "bf16", u.sp = 4;
  const double sp1 = predict(u, m, fast).stage_sp_s;
  u.tp = 2;
  const double sp2 = predict(u, m, fast).stage_sp_s;
  ASSERT_GT(sp1, 0);
  EXPECT_NEAR(sp2 / sp1, 0.5, 1e-12);
}

TEST(PerfModel, SeedShapeOnPolaris) {
  const ClusterSpec c = load_cluster(std::string(LLM_SOURCE_DIR) + "/configs/clusters/polaris.yaml");
  EXPECT_EQ(c.devices_per_node, 4);
  EXPECT_DOUBLE_EQ(c.peak_tflops, 312);
  EXPECT_DOUBLE_EQ(c.memory_gib, 40);
  // GPT25B (64 layers, hidden 6144, 64 heads) on 32 GPUs: tp 4 x pp 8, ZeRO-1.
  SweepPoint p;
  p.model = "GPT25B", p.dtype = "bf16", p.tp = 4, p.pp = 8, p.grad_accum = 16, p.zero_stage = 1, p.vocab_size = 50257;
  auto max_seq = [&](SweepPoint q) {
    return find_max_fitting(1024, 1 << 22, 1024 * q.ulysses(), [&](int64_t s) {
      q.seq_length = s;
      return predict(q, point_model(q, ""), c).fits;
    });
  };
  const int64_t base = max_seq(p);
  SweepPoint rc = p;
  rc.recompute = true;
  SweepPoint uly = p;
  uly.sp = 4, uly.sp_type = "ds", uly.dp = 1;  // 128 GPUs
  EXPECT_GT(base, 0);
  EXPECT_GT(max_seq(rc), 2 * base);   // recompute moves the OOM boundary out
  EXPECT_GT(max_seq(uly), 2 * base);  // so does Ulysses over 4x the GPUs
  // TFLOPS rises with the sequence length below the boundary.
  double last = 0;
  for (int64_t s = 1024; s <= base; s *= 2) {
    p.seq_length = s;
    const Prediction r = predict(p, point_model(p, ""), c);
    EXPECT_GT(r.tflops_megatron, last) << s;
    last = r.tflops_megatron;
  }
}

TEST(PerfModel, FindMaxFitting) {
  int calls = 0;
  auto below = [&](int64_t limit) {
    return [&calls, limit](int64_t s) {
      ++calls;
      return s <= limit;
    };
  };
  EXPECT_EQ(find_max_fitting(128, 1 << 20, 128, below(5000)), 4992);
  EXPECT_LE(calls, 20);
  EXPECT_EQ(find_max_fitting(128, 1024, 128, below(1 << 30)), 1024);  // the bound itself
  EXPECT_EQ(find_max_fitting(128, 1000, 128, below(1 << 30)), 896);   // a multiple below the bound
  EXPECT_EQ(find_max_fitting(256, 1 << 20, 128, below(100)), 0);
  EXPECT_EQ(find_max_fitting(100, 1 << 20, 64, below(129)), 128);     // lo rounded up to 128
}

TEST(PerfModel, ClusterFileErrorsNameFileLineAndKey) {
  llm::testing::ScratchDir dir;
  std::ofstream(dir / "bad.yaml") << "name: x\ndevices-per-node: 4\npeak-tflop: 3\n";
  try {
    load_cluster(dir / "bad.yaml");
    FAIL() << "accepted an unknown key";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()), dir / "bad.yaml" + ":3: unknown key 'peak-tflop'");
  }
  std::ofstream(dir / "bad2.yaml") << "devices-per-node: four\n";
  try {
    load_cluster(dir / "bad2.yaml");
    FAIL() << "accepted a bad value";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()), dir / "bad2.yaml" + ":1: bad value for 'devices-per-node'");
  }
  for (const char* f : {"polaris.yaml", "h100-8x.yaml", "cpu-2core.yaml"})
    EXPECT_NO_THROW(load_cluster(std::string(LLM_SOURCE_DIR) + "/configs/clusters/" + f)) << f;
}

TEST(PerfModel, FitRecoversKnownEfficiencies) {
  ClusterSpec truth = bf16_cluster();
  truth.matmul_efficiency = 0.8, truth.attention_efficiency = 0.4, truth.matmul_half_tokens = 64;
  std::vector<PointResult> measured;
  for (int64_t s : {256, 512, 1024, 2048, 4096}) {
    PointResult r;
    r.point.seq_length = s, r.point.dtype = "bf16";
    const GPTConfig m = model(2, 512, 8, 1024, s);
    r.ms_per_iteration = stats_of({predict(r.point, m, truth).iteration_s * 1e3});
    measured.push_back(r);
  }
  PointResult failed;
  failed.status = Status::oom;
  measured.push_back(failed);  // ignored
  const FitResult f = fit_efficiencies(measured, bf16_cluster(), 0, [&](const SweepPoint& p) { return model(2, 512, 8, 1024, p.seq_length); });
  EXPECT_EQ(f.points, 5);
  EXPECT_DOUBLE_EQ(f.cluster.matmul_efficiency, 0.8);
  EXPECT_DOUBLE_EQ(f.cluster.attention_efficiency, 0.4);
  EXPECT_DOUBLE_EQ(f.cluster.matmul_half_tokens, 64);
  EXPECT_LT(f.error_after, 1e-9);
  EXPECT_GT(f.error_before, 0.1);
  // The fitted file reads back.
  llm::testing::ScratchDir dir;
  std::ofstream(dir / "fitted.yaml") << cluster_yaml(f.cluster, "test");
  EXPECT_DOUBLE_EQ(load_cluster(dir / "fitted.yaml").attention_efficiency, 0.4);
}

// A range's collective rooted at its owners: the busiest ring link carries the range less the
// smallest part any rank owns.
TEST(PerfModel, OwnerRangesCostTheRangeLessItsSmallestPart) {
  // 100 elements of 4 bytes over 4 ranks (shards of 25), 1 GB/s, no latency
  EXPECT_DOUBLE_EQ(owner_ranges_seconds(0, 100, 100, 4, 4, 1, 0), all_gather_seconds(400, 4, 1, 0));  // 75 x 4 B
  EXPECT_DOUBLE_EQ(owner_ranges_seconds(10, 30, 100, 4, 4, 1, 0), 20 * 4 / 1e9);  // ranks 2 and 3 own none
  EXPECT_DOUBLE_EQ(owner_ranges_seconds(20, 80, 100, 4, 4, 1, 0), 55 * 4 / 1e9);  // parts 5, 25, 25, 5
  EXPECT_DOUBLE_EQ(owner_ranges_seconds(20, 80, 100, 4, 4, 1, 10), 55 * 4 / 1e9 + 3 * 10e-6);
  EXPECT_EQ(owner_ranges_seconds(0, 100, 100, 1, 4, 1, 10), 0.0);
}

namespace {
// 2 ranks, 4 layers of 500 elements after 1000 resident ones (shards [0, 1500) and [1500, 3000):
// each layer and the resident group owned by one rank), 2 micro-batches, 1 GB/s, no latency.
// f32 elements: a layer's collective 2 us, the resident group's 4 us, its all-reduce 4 us, the
// whole buffer's all-reduce 12 us and all-gather 6 us.
DataParallelPlan plan(int64_t zero, bool overlap, double compute) {
  DataParallelPlan q;
  q.zero_stage = zero, q.ranks = 2, q.micro_batches = 2, q.layers = 4, q.overlap = overlap;
  q.resident = 1000, q.per_layer = 500;
  q.forward_layer_s = compute, q.backward_layer_s = 2 * compute, q.forward_rest_s = 0.1 * compute;
  q.backward_rest_s = 0.2 * compute, q.bandwidth_gbs = 1, q.latency_us = 0;
  return q;
}
}  // namespace

// Blocking, the collectives add all their time, as the trainer issues them: ZeRO-0 one all-reduce,
// ZeRO-1 that and the all-gather, ZeRO-2 each micro-batch's layer reductions (reduces onto the
// owner, the full layer each) + the resident all-reduce + the all-gather, ZeRO-3 two gathers and
// a reduction per layer and micro-batch + the resident all-reduce and gather.
TEST(PerfModel, DataParallelCollectivesBlocking) {
  const double us = 1e-6, eps = 1e-18;
  const double want[4] = {12 * us, (6 + 6) * us, (2 * 4 * 2 + 4 + 6) * us, (2 * 3 * 4 * 2 + 4 + 4) * us};
  // bytes sent per device: half of each buffer per reduce-scatter or gather, all of it per all-reduce
  const double bytes[4] = {12000, 12000, 0.5 * (2 * 8000 + 2 * 4000 + 12000), 0.5 * (3 * 2 * 8000 + 3 * 4000)};
  for (int64_t z : {0, 1, 2, 3}) {
    const DataParallelTime t = data_parallel_time(plan(z, false, 1e-3));
    EXPECT_NEAR(t.collectives_s, want[z], eps) << "ZeRO-" << z;
    EXPECT_NEAR(t.exposed_s, want[z], 1e-15) << "ZeRO-" << z;
    EXPECT_DOUBLE_EQ(t.bytes, bytes[z]) << "ZeRO-" << z;
    // one rank: nothing
    DataParallelPlan one = plan(z, false, 1e-3);
    one.ranks = 1;
    EXPECT_EQ(data_parallel_time(one).exposed_s, 0.0);
  }
  // Mixed precision: ZeRO-1/2's masters are sharded and the post-step all-gather moves the 16-bit
  // copy (3 us); the reductions stay f32.
  for (int64_t z : {1, 2}) {
    DataParallelPlan q = plan(z, false, 1e-3);
    q.gather_bytes = 2;
    const DataParallelTime t = data_parallel_time(q);
    EXPECT_NEAR(t.collectives_s, (z == 1 ? 6 + 3 : 2 * 4 * 2 + 4 + 3) * us, eps) << "ZeRO-" << z;
    EXPECT_DOUBLE_EQ(t.bytes, z == 1 ? 0.5 * (12000 + 6000) : 0.5 * (2 * 8000 + 2 * 4000 + 6000)) << "ZeRO-" << z;
  }
}

// Overlapped, against compute far longer than any collective, what stays exposed is what the
// trainer waits for before any compute could hide it.
TEST(PerfModel, DataParallelCollectivesOverlapped) {
  const double us = 1e-6, tol = 1e-15;
  // ZeRO-0: the small model's one bucket starts after the last layer's backward: all exposed.
  DataParallelTime t = data_parallel_time(plan(0, true, 1e-3));
  EXPECT_NEAR(t.exposed_s, 12 * us, tol);
  // Buckets of one layer: only the last one (2 us) and the resident all-reduce (4 us).
  DataParallelPlan q = plan(0, true, 1e-3);
  q.bucket = 500;
  t = data_parallel_time(q);
  EXPECT_NEAR(t.exposed_s, 6 * us, tol);
  EXPECT_NEAR(t.collectives_s, 12 * us, tol);
  // ZeRO-1: the resident gather waited for at the start (4), the first layer's gather queued
  // behind it (2), then the one bucket reduce-scattered onto its owners (the layers [1000, 3000):
  // rank 0 owns 500 of them, so 1500 x 4 B, 6) and the resident tensors' reduction (4); the
  // gathers rooted at their owners cost 4 + 4 x 2 against the blocking all-gather's 6.
  t = data_parallel_time(plan(1, true, 1e-3));
  EXPECT_NEAR(t.exposed_s, 16 * us, tol);
  EXPECT_NEAR(t.collectives_s, 22 * us, tol);
  // The same in mixed precision: the gathers of the 16-bit copy take half as long (2, then 1).
  q = plan(1, true, 1e-3);
  q.gather_bytes = 2;
  t = data_parallel_time(q);
  EXPECT_NEAR(t.exposed_s, (2 + 1 + 6 + 4) * us, tol);
  EXPECT_NEAR(t.collectives_s, (2 + 4 * 1 + 6 + 4) * us, tol);
  // ZeRO-2: the same gathers (4 + 2), the last layer reduction's tail (2) and the resident
  // all-reduce (4); the first micro-batch's last reductions hide behind the second's forward.
  t = data_parallel_time(plan(2, true, 1e-3));
  EXPECT_NEAR(t.exposed_s, 12 * us, tol);
  EXPECT_NEAR(t.collectives_s, (4 + 4 * 2 + 2 * 4 * 2 + 4) * us, tol);
  // Reductions slower than a layer's backward (0.5 us forward, 1 us backward, 2 us reduce):
  // layer l's backward waits for its area's reduction (layer l + 2's), and they queue behind one
  // another. Played by hand: the gathers end at 4 (waited for), 6, 8, 10, 12; the first
  // micro-batch's forward ends at 12.65 and its reductions at 15.65, 17.65, 19.65, 21.65 (layers
  // 1 and 0 wait for 15.65 and 17.65); the second's at 23.8, 25.8, 27.8, 29.8 (its layer 1 waits
  // for 23.8, layer 0 for 25.8); the resident all-reduce ends at 33.8, against 12.3 of compute.
  t = data_parallel_time(plan(2, true, 0.5 * us));
  EXPECT_NEAR(t.exposed_s, 21.5 * us, tol);
  EXPECT_NEAR(t.collectives_s, (4 + 4 * 2 + 2 * 4 * 2 + 4) * us, tol);
  // ZeRO-3: each pass's first gather (2 + 2 per micro-batch), the second micro-batch's first
  // gather queued behind the first's last reduction (+2), the last reduction's tail (2), the
  // resident all-reduce and gather (4 + 4).
  t = data_parallel_time(plan(3, true, 1e-3));
  EXPECT_NEAR(t.exposed_s, (2 + 2 + 4 + 2 + 2 + 4 + 4) * us, tol);
  EXPECT_NEAR(t.collectives_s, (2 * 3 * 4 * 2 + 4 + 4) * us, tol);
  // Mixed precision: ZeRO-3's layer gathers move the 16-bit copy, 1 us each; the reductions and
  // resident tensors stay f32. Blocking: 2 x 4 layers x (1 + 1 + 2) + 4 + 4.
  q = plan(3, false, 1e-3);
  q.gather_bytes = 2;
  t = data_parallel_time(q);
  EXPECT_NEAR(t.collectives_s, (2 * 4 * 4 + 4 + 4) * us, tol);
  EXPECT_DOUBLE_EQ(t.bytes, 0.5 * (2 * 2 * 8000 + 3 * 4000));
  // No compute to hide behind: everything is exposed, overlapped or not.
  for (int64_t z : {0, 1, 2, 3})
    for (bool ov : {false, true}) {
      const DataParallelTime u = data_parallel_time(plan(z, ov, 0));
      EXPECT_NEAR(u.exposed_s, u.collectives_s, tol) << "ZeRO-" << z << (ov ? " overlapped" : "");
    }
}

// --overlap in a prediction: the iteration adds what the collectives expose; bytes and memory
// are the blocking run's.
TEST(PerfModel, OverlapHidesTheDataParallelCollectivesBehindTheirWindow) {
  const GPTConfig m = model(4, 1024, 16, 1024, 4096);
  ClusterSpec c = bf16_cluster();
  SweepPoint p;
  p.seq_length = 4096, p.dtype = "bf16", p.dp = 2, p.grad_accum = 2;
  for (int64_t z : {0, 1, 2, 3}) {
    p.zero_stage = z, p.overlap = false;
    const Prediction a = predict(p, m, c);
    p.overlap = true;
    const Prediction b = predict(p, m, c);
    ASSERT_GT(a.dp_s, 0) << "ZeRO-" << z;
    EXPECT_NEAR(a.dp_exposed_s, a.dp_s, 1e-12 * a.dp_s);
    EXPECT_DOUBLE_EQ(b.dp_bytes, a.dp_bytes);
    // ZeRO-2/3 hold a second working area of a layer (12596224 elements): gradients, and under
    // ZeRO-3 parameters (f32 and the 16-bit copy)
    EXPECT_DOUBLE_EQ(b.total_memory - a.total_memory, (z == 2 ? 4.0 : z == 3 ? 10.0 : 0.0) * 12596224);
    const double stage = a.stage_compute_s + a.stage_memory_s + a.stage_tp_s + a.stage_sp_s + a.stage_pp_s;
    EXPECT_NEAR(a.iteration_s, 2 * stage + a.dp_s + a.optimizer_s, 1e-12 * a.iteration_s);
    EXPECT_NEAR(b.iteration_s, 2 * stage + b.dp_exposed_s + b.optimizer_s, 1e-12 * b.iteration_s);
    EXPECT_LE(b.dp_exposed_s, b.dp_s * (1 + 1e-12)) << "ZeRO-" << z;
    // ZeRO-2/3 reduce layer by layer behind the backward: overlapping hides most of it here
    if (z >= 2) {
      EXPECT_LT(b.dp_exposed_s, 0.5 * a.dp_s) << "ZeRO-" << z;
    }
  }
}
