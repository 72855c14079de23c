#include <gtest/gtest.h>

#include <algorithm>

#include "core/error.h"
#include "sweep/point.h"

using namespace llm;
using namespace llm::sweep;

TEST(SweepPoint, GridIsTheProductSequenceInnermost) {
  SweepGrid g;
  g.models = {"tiny", "small"};
  g.seq_lengths = {128, 256, 512};
  g.tps = {1, 2};
  g.recomputes = {false, true};
  const auto pts = expand(g);
  ASSERT_EQ(pts.size(), 2u * 3 * 2 * 2);
  EXPECT_EQ(pts[0].seq_length, 128);
  EXPECT_EQ(pts[1].seq_length, 256);
  EXPECT_EQ(pts[2].seq_length, 512);
  EXPECT_EQ(pts[3].recompute, true);
  EXPECT_EQ(pts[0].model, "tiny");
  EXPECT_EQ(pts[12].model, "small");
  EXPECT_EQ(swept_variable(g), "seq");
  SweepGrid h;
  h.micro_batches = {1, 2};
  EXPECT_EQ(swept_variable(h), "mb");
  h.overlaps = {false, true};  // inside recompute, outside the micro-batches
  const auto q = expand(h);
  ASSERT_EQ(q.size(), 4u);
  EXPECT_EQ(q[0].overlap, false);
  EXPECT_EQ(q[1].overlap, false);
  EXPECT_EQ(q[1].micro_batch, 2);
  EXPECT_EQ(q[2].overlap, true);
}

TEST(SweepPoint, LabelsWorldAndBatch) {
  SweepPoint p;
  p.model = "GPT25B", p.seq_length = 4096, p.dp = 2, p.tp = 4, p.sp = 8, p.sp_type = "ds", p.micro_batch = 2,
  p.grad_accum = 3, p.recompute = true, p.dtype = "bf16", p.backend = "cuda";
  EXPECT_EQ(p.label(), "GPT25B s4096 mb2 gas3 dp2 tp4 pp1 sp8(ds) z0 bf16 cuda +rc");
  EXPECT_EQ(p.label_without("seq"), "GPT25B mb2 gas3 dp2 tp4 pp1 sp8(ds) z0 bf16 cuda +rc");
  EXPECT_EQ(p.world(), 2 * 4 * 8);
  EXPECT_EQ(p.global_batch(), 2 * 3 * 2);
  p.sp_type = "megatron", p.sp = 4;
  EXPECT_EQ(p.world(), 8);  // Megatron SP reuses the tensor-parallel ranks
  EXPECT_EQ(p.swept_value("tp"), 4);
  p.logits_chunk = 4096;
  EXPECT_EQ(p.label(), "GPT25B s4096 mb2 gas3 dp2 tp4 pp1 sp4(megatron) z0 bf16 cuda +rc lc4096");
}

TEST(SweepPoint, LayoutProblemsAreReportedNotThrown) {
  GPTConfig m;
  m.num_layers = 2, m.hidden_size = 128, m.num_heads = 4, m.max_position_embeddings = 4096;
  SweepPoint p;
  p.seq_length = 128;
  EXPECT_EQ(layout_problem(p, m), "");
  p.tp = 3;
  EXPECT_EQ(layout_problem(p, m), "--num-attention-heads 4 is not divisible by --tensor-model-parallel-size 3");
  p.tp = 1, p.pp = 4;
  EXPECT_EQ(layout_problem(p, m), "--num-layers 2 is not divisible by --pipeline-model-parallel-size 4");
  p.pp = 1, p.sp = 4, p.seq_length = 130;
  EXPECT_EQ(layout_problem(p, m), "--seq-length 130 is not divisible by --ds-sequence-parallel-size 4");
  p.seq_length = 128, p.sp_type = "megatron", p.tp = 2;
  EXPECT_EQ(layout_problem(p, m), "Megatron sequence parallelism runs over the tensor-parallel group: sp 4 must equal tp 2");
  p.sp = 2, p.zero_stage = 4;
  EXPECT_EQ(layout_problem(p, m), "ZeRO stage 4 is not 0, 1, 2 or 3");
}

TEST(SweepPoint, PretrainCommand) {
  SweepPoint p;
  p.model = "small", p.seq_length = 512, p.micro_batch = 2, p.recompute = true;
  LaunchOptions o;
  o.pretrain = "/b/llm-pretrain", o.output_dir = "/o/1", o.warmup_iters = 2, o.timed_iters = 5, o.threads = 2;
  auto cmd = pretrain_command(p, o);
  auto has = [&](const std::string& flag, const std::string& value) {
    auto it = std::find(cmd.begin(), cmd.end(), flag);
    return it != cmd.end() && it + 1 != cmd.end() && *(it + 1) == value;
  };
  EXPECT_EQ(cmd[0], "/b/llm-pretrain");
  EXPECT_TRUE(has("--model", "small"));
  EXPECT_TRUE(has("--seq-length", "512"));
  EXPECT_TRUE(has("--micro-batch-size", "2"));
  EXPECT_TRUE(has("--global-batch-size", "2"));
  EXPECT_TRUE(has("--train-iters", "7"));
  EXPECT_TRUE(has("--log-interval", "1"));
  EXPECT_TRUE(has("--recompute-granularity", "full"));
  EXPECT_TRUE(has("--output-dir", "/o/1"));
  EXPECT_TRUE(has("--threads", "2"));
  EXPECT_NE(std::find(cmd.begin(), cmd.end(), "--mock-data"), cmd.end());
  EXPECT_EQ(std::find(cmd.begin(), cmd.end(), "--logits-chunk-tokens"), cmd.end());
  p.logits_chunk = 1024;
  cmd = pretrain_command(p, o);
  EXPECT_TRUE(has("--logits-chunk-tokens", "1024"));
  p.logits_chunk = 0;
  // --overlap: the gradient reduction, and under ZeRO-3 the gathers too
  auto count = [&](const char* flag) { return std::count(cmd.begin(), cmd.end(), std::string(flag)); };
  EXPECT_EQ(count("--overlap-grad-reduce") + count("--overlap-param-gather"), 0);
  p.overlap = true;
  cmd = pretrain_command(p, o);
  EXPECT_EQ(count("--overlap-grad-reduce"), 1);
  EXPECT_EQ(count("--overlap-param-gather"), 0);
  EXPECT_NE(p.label().find(" +rc +ov"), std::string::npos) << p.label();
  p.zero_stage = 1;
  cmd = pretrain_command(p, o);
  EXPECT_EQ(count("--overlap-grad-reduce"), 1);
  EXPECT_EQ(count("--overlap-param-gather"), 1);
  p.overlap = false, p.zero_stage = 0;
  // Several ranks: mpiexec, threads split over the ranks, Ulysses flag, Megatron dtype flag.
  p.dp = 2, p.sp = 2, p.dtype = "bf16", p.recompute = false;
  o.as_root = true;
  cmd = pretrain_command(p, o);
  EXPECT_EQ(cmd[0], "mpiexec");
  EXPECT_TRUE(has("-np", "4"));
  EXPECT_TRUE(has("--bind-to", "none"));  // each rank's threads are not pinned to one core
  EXPECT_NE(std::find(cmd.begin(), cmd.end(), "--allow-run-as-root"), cmd.end());
  EXPECT_TRUE(has("-x", "OMP_NUM_THREADS=1"));
  EXPECT_TRUE(has("--global-batch-size", "4"));
  EXPECT_TRUE(has("--ds-sequence-parallel-size", "2"));
  EXPECT_NE(std::find(cmd.begin(), cmd.end(), "--bf16"), cmd.end());
  o.open_mpi = false;  // MPICH / Hydra
  cmd = pretrain_command(p, o);
  EXPECT_EQ(std::vector<std::string>(cmd.begin(), cmd.begin() + 4),
            (std::vector<std::string>{"mpiexec", "-n", "4", "/b/llm-pretrain"}));
  EXPECT_EQ(threads_per_rank(p, 8), 2);
  EXPECT_EQ(threads_per_rank(p, 2), 1);
}

TEST(SweepPoint, UnknownModelKeyIsAConfigError) {
  SweepPoint p;
  p.model = "GPT7Q";
  try {
    point_model(p, "");
    FAIL() << "accepted an unknown model";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("no model config named 'GPT7Q'"), std::string::npos) << e.what();
  }
  p.model = "GPT125M", p.seq_length = 4096;
  const GPTConfig m = point_model(p, "");
  EXPECT_EQ(m.num_layers, 12);
  EXPECT_EQ(m.hidden_size, 768);
  EXPECT_EQ(m.max_position_embeddings, 4096);
}
