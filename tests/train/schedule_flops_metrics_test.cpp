#include <gtest/gtest.h>

#include <sys/resource.h>

#include <cmath>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <regex>

#include "train/flops.h"
#include "train/lr_schedule.h"
#include "train/metrics.h"

using namespace llm;

// Megatron's inverse-square-root: warmup, then max_lr sqrt(warmup) / sqrt(updates) floored at
// min_lr, and min_lr past the decay.
TEST(LRSchedule, InverseSquareRoot) {
  const LRSchedule s{2.0, 0.3, 4, 100, "inverse-square-root"};
  EXPECT_DOUBLE_EQ(s.at(2), 1.0);  // warmup
  EXPECT_DOUBLE_EQ(s.at(4), 2.0);
  EXPECT_DOUBLE_EQ(s.at(16), 2.0 * 2.0 / 4.0);
  EXPECT_DOUBLE_EQ(s.at(25), 2.0 * 2.0 / 5.0);
  EXPECT_DOUBLE_EQ(s.at(81), 2.0 * 2.0 / 9.0);
  EXPECT_DOUBLE_EQ(s.at(100), 0.4);
  EXPECT_DOUBLE_EQ(s.at(101), 0.3);  // past the decay
  const LRSchedule low{2.0, 0.45, 4, 100, "inverse-square-root"};
  EXPECT_DOUBLE_EQ(low.at(81), 0.45);  // the floor
  // Megatron counts in samples: without warmup its floor is one sample, so the global batch shows.
  LRSchedule none{1.0, 0.0, 0, 100, "inverse-square-root"};
  EXPECT_DOUBLE_EQ(none.at(0), 1.0);
  EXPECT_DOUBLE_EQ(none.at(4), 0.5);  // one sample per update
  none.samples_per_update = 16;
  EXPECT_DOUBLE_EQ(none.at(1), 0.25);  // 1 / sqrt(16 samples)
  EXPECT_DOUBLE_EQ(none.at(4), 0.125);  // 1 / sqrt(64)
  LRSchedule warm = s;
  warm.samples_per_update = 16;  // with warmup the unit cancels
  EXPECT_DOUBLE_EQ(warm.at(16), s.at(16));
}

TEST(LRSchedule, WarmupThenCosineLinearConstant) {
  LRSchedule s{1.0, 0.1, 10, 110, "cosine"};
  EXPECT_DOUBLE_EQ(s.at(1), 0.1);
  EXPECT_DOUBLE_EQ(s.at(5), 0.5);
  EXPECT_DOUBLE_EQ(s.at(10), 1.0);
  EXPECT_NEAR(s.at(60), 0.1 + 0.9 * 0.5, 1e-12);  // halfway through decay
  EXPECT_NEAR(s.at(110), 0.1, 1e-12);
  EXPECT_DOUBLE_EQ(s.at(500), 0.1);
  s.style = "linear";
  EXPECT_NEAR(s.at(35), 0.1 + 0.9 * 0.75, 1e-12);
  s.style = "constant";
  EXPECT_DOUBLE_EQ(s.at(80), 1.0);
  EXPECT_DOUBLE_EQ(s.at(3), 0.3);
  LRSchedule nowarm{2.0, 0.0, 0, 100, "cosine"};
  EXPECT_NEAR(nowarm.at(0), 2.0, 1e-12);
  // --lr-warmup-fraction 0.025 of 100 decay iterations: Megatron's 2.5 warmup steps
  LRSchedule frac{1.0, 0.0, 2.5, 100, "linear"};
  EXPECT_DOUBLE_EQ(frac.at(0), 0.0);
  EXPECT_DOUBLE_EQ(frac.at(2), 0.8);
  EXPECT_NEAR(frac.at(3), 1.0 - 0.5 / 97.5, 1e-12);
  EXPECT_NEAR(frac.at(100), 0.0, 1e-12);
}

TEST(Flops, MegatronFormulaExpandsAsInThePaper) {
  GPTConfig c;
  c.num_layers = 24;
  c.hidden_size = 2048;
  c.num_heads = 16;
  c.vocab_size = 50257;  // padded to 50304
  const double B = 512, s = 2048, l = 24, h = 2048, V = 50304;
  const double expanded = 72 * B * s * l * h * h + 12 * B * s * s * l * h + 4.5 * B * s * h * V;
  EXPECT_NEAR(megatron_flops_per_iteration(c, 512, 2048, false) / expanded, 1.0, 1e-12);
  // with recompute: 96 B s l h^2 (...) = 4/3 of the above
  EXPECT_NEAR(megatron_flops_per_iteration(c, 512, 2048, true) / expanded, 4.0 / 3.0, 1e-12);
}

TEST(Flops, ModelFlopsAreThreeForwards) {
  GPTConfig c;
  c.num_layers = 6;
  c.hidden_size = 384;
  c.num_heads = 6;
  c.vocab_size = 8192;
  c.max_position_embeddings = 256;
  // matmul weights: per layer qkv 3h^2, proj h^2, fc 4h^2, fcproj 4h^2; plus the V x h head
  const double matmul_weights = 6 * 12.0 * 384 * 384 + 8192.0 * 384;
  const double tokens = 8 * 256;
  const double expect = 6 * matmul_weights * tokens + 12 * tokens * 256 * 384 * 6;
  EXPECT_NEAR(model_flops_per_iteration(c, 8, 256) / expect, 1.0, 1e-12);
}

// Model FLOPs against Megatron-LM's num_floating_point_operations (ALCF's [LM]TFLOPs), written
// out as there: 12 B s l h^2 (1 + ffn/h + kv/heads + s/h + V / (2 l h)), and current
// Megatron-DeepSpeed's throughput_calculator without recompute ([DS]TFLOPs): 2 x 3 x the
// forward's multiply-adds (4 h^2 projections, 2 s h attention, 2 ffn h MLP per layer and token,
// V h for the output layer).
TEST(Flops, ModelFlopsEqualMegatronLmAndDeepSpeedCounts) {
  GPTConfig c;
  c.num_layers = 24;
  c.hidden_size = 2048;
  c.num_heads = 16;
  c.vocab_size = 50257;  // padded to 50304
  const double B = 16, s = 2048, l = 24, h = 2048, F = 4 * h, V = 50304;
  const double lm = 12 * B * s * l * h * h * (1 + F / h + 1 + s / h + V / (2 * l * h));
  const double fwd_macs = B * l * 4 * h * h * s + B * l * 2 * h * s * s + B * l * 2 * F * h * s + B * V * h * s;
  const double ds = 2 * 3 * fwd_macs;
  EXPECT_NEAR(model_flops_per_iteration(c, 16, 2048) / lm, 1.0, 1e-12);
  EXPECT_NEAR(model_flops_per_iteration(c, 16, 2048) / ds, 1.0, 1e-12);
}

TEST(Metrics, LogLineHasMegatronFieldsInOrder) {
  LogRecord r;
  r.iteration = 10;
  r.train_iters = 100;
  r.consumed_samples = 320;
  r.consumed_tokens = 320 * 2048;
  r.elapsed_ms_per_iteration = 1234.56;
  r.learning_rate = 1.5e-4;
  r.global_batch_size = 32;
  r.lm_loss = 6.25;
  r.grad_norm = 1.2345;
  r.seq_length = 2048;
  r.samples_per_second = 25.9;
  r.tokens_per_gpu_per_second = 53043.2;
  r.tflops_megatron = 12.345;
  r.tflops_model = 9.0;
  const std::string line = megatron_log_line(r);
  EXPECT_EQ(line,
            " iteration       10/     100 | consumed samples:          320 | consumed tokens:       655360 |"
            " elapsed time per iteration (ms): 1234.6 | learning rate: 1.500E-04 | global batch size:    32 |"
            " lm loss: 6.250000E+00 | loss scale: 1.0 | grad norm: 1.234 | actual seqlen:  2048 |"
            " number of skipped iterations:   0 | number of nan iterations:   0 | samples per second: 25.900 |"
            " tokens per gpu per second (tgs): 53043.200 | TFLOPs: 12.35 |");
  r.tflops_formula = "model";
  EXPECT_NE(megatron_log_line(r).find("TFLOPs: 9.00 |"), std::string::npos);
  const std::string js = metrics_json(r);
  EXPECT_NE(js.find("\"tflops_megatron\": 12.345"), std::string::npos) << js;
  EXPECT_NE(js.find("\"tflops_model\": 9,"), std::string::npos) << js;
  EXPECT_NE(js.find("\"lm_loss\": 6.25,"), std::string::npos) << js;
  EXPECT_EQ(js.front(), '{');
  EXPECT_EQ(js.back(), '}');
  EXPECT_EQ(js.find("memory_"), std::string::npos) << "a CPU run has no device memory figures: " << js;
  r.memory_allocated_mib = 100.5, r.memory_max_allocated_mib = 2048.25, r.memory_reserved_mib = 4096;
  const std::string jd = metrics_json(r);
  EXPECT_NE(jd.find("\"memory_allocated_mib\": 100.5, \"memory_max_allocated_mib\": 2048.25, \"memory_reserved_mib\": 4096,"),
            std::string::npos) << jd;
  EXPECT_EQ(memory_report_line(0, 1, 100.5, 2048.25, 4096),
            "[Rank 0] (after 1 iterations) memory (MB) | allocated: 100.5 | max allocated: 2048.2 | reserved: 4096.0");
}

TEST(Metrics, ActivationReportHintsAtChunksWhenTheLogitsDominate) {
  EXPECT_EQ(activation_report(31.64, 25.8, 0),
            "activation buffers per rank: 31.6 MB, the logits 25.8 MB of them (every token's: "
            "--logits-chunk-tokens N would hold N tokens' at a time)");
  EXPECT_EQ(activation_report(100, 24.9, 0), "activation buffers per rank: 100.0 MB, the logits 24.9 MB of them");
  EXPECT_EQ(activation_report(6.1, 0.4, 128),
            "activation buffers per rank: 6.1 MB, the logits 0.4 MB of them (in chunks of 128 tokens)");
  EXPECT_EQ(activation_report(6.1, 0, 0), "activation buffers per rank: 6.1 MB, the logits 0.0 MB of them");
}

TEST(Metrics, ValidationReportAndAccumulator) {
  const std::string v = validation_report("iteration 100", std::log(50.0));
  EXPECT_NE(v.find(" validation loss at iteration 100 | lm loss value: 3.912023E+00 | lm loss PPL: 5.000000E+01 | "),
            std::string::npos)
      << v;
  EXPECT_EQ(v.substr(0, 5), "-----");
  LogAccumulator acc;
  acc.add(2.0, true, true, 0.5, 1.0, 1e-3);
  acc.add(NAN, false, false, 0.5, NAN, 2e-3);
  acc.add(4.0, true, true, 1.0, 3.0, 3e-3);
  LogRecord r;
  acc.flush_into(r, 16, 128, 1, 4e12, 2e12);
  EXPECT_DOUBLE_EQ(r.lm_loss, 3.0);
  EXPECT_NEAR(r.elapsed_ms_per_iteration, 2000.0 / 3, 1e-9);
  EXPECT_EQ(r.nan_iterations, 1);
  EXPECT_EQ(r.skipped_iterations, 1);
  EXPECT_DOUBLE_EQ(r.grad_norm, 3.0);
  EXPECT_DOUBLE_EQ(r.learning_rate, 3e-3);
  EXPECT_NEAR(r.samples_per_second, 16 / (2.0 / 3), 1e-9);
  EXPECT_NEAR(r.tokens_per_gpu_per_second, 16 * 128 / (2.0 / 3), 1e-6);
  EXPECT_NEAR(r.tflops_megatron, 4.0 / (2.0 / 3), 1e-9);
  EXPECT_TRUE(acc.empty());
  // fp16: an overflow skips the update with a finite loss (counted as skipped); as in
  // Megatron's log, its loss and grad norm are left out of the averages
  acc.add(2.0, true, true, 1.0, 1.0, 1e-3);
  acc.add(5.0, true, false, 1.0, 9.0, 1e-3);
  acc.flush_into(r, 16, 128, 1, 4e12, 2e12);
  EXPECT_DOUBLE_EQ(r.lm_loss, 2.0);
  EXPECT_EQ(r.skipped_iterations, 1);
  EXPECT_EQ(r.nan_iterations, 0);
  EXPECT_DOUBLE_EQ(r.grad_norm, 1.0);
  // an interval of overflows alone: their forwards' mean (Megatron prints none); NaN only when no
  // loss was finite
  acc.add(6.0, true, false, 1.0, 9.0, 1e-3);
  acc.add(8.0, true, false, 1.0, 9.0, 1e-3);
  acc.flush_into(r, 16, 128, 1, 4e12, 2e12);
  EXPECT_DOUBLE_EQ(r.lm_loss, 7.0);
  EXPECT_EQ(r.skipped_iterations, 2);
  acc.add(NAN, false, false, 1.0, NAN, 1e-3);
  acc.flush_into(r, 16, 128, 1, 4e12, 2e12);
  EXPECT_TRUE(std::isnan(r.lm_loss));
  // On 4 ranks: samples per second is the job's, tokens per GPU and TFLOPs are per rank.
  acc.add(2.0, true, true, 0.5, 1.0, 1e-3);
  acc.flush_into(r, 16, 128, 4, 4e12, 2e12);
  EXPECT_NEAR(r.samples_per_second, 32.0, 1e-9);
  EXPECT_NEAR(r.tokens_per_gpu_per_second, 32.0 * 128 / 4, 1e-9);
  EXPECT_NEAR(r.tflops_megatron, 4.0 / 0.5 / 4, 1e-12);
  EXPECT_NEAR(r.tflops_model, 2.0 / 0.5 / 4, 1e-12);
}

TEST(Metrics, TimerBlockAsMegatronPrintsIt) {
  const std::string b = timers_block({{"forward-backward", 1234.564, 1240.1234}, {"optimizer", 3.0, 4.5}});
  EXPECT_EQ(b,
            "(min, max) time across ranks (ms):\n"
            "    forward-backward ...............................: (1234.56, 1240.12)\n"
            "    optimizer ......................................: (3.00, 4.50)");
}

// A record that cannot be written (a full disk; here the file-size limit, SIGXFSZ ignored, which
// makes write() fail with EFBIG part-way): the file keeps its whole records, no half line, and
// error() names the file and the iteration. It ended with half a record before, and the run exited 0.
TEST(Metrics, AFailedWriteKeepsWholeRecordsAndIsReported) {
  const std::string dir = ::testing::TempDir() + "/metrics-full";
  std::filesystem::remove_all(dir);
  MetricsWriter w(dir);
  LogRecord r;
  r.iteration = 1;
  w.write(r);
  EXPECT_EQ(w.error(), "");
  const uintmax_t one = std::filesystem::file_size(w.path());
  rlimit old{};
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old), 0);
  auto* previous = std::signal(SIGXFSZ, SIG_IGN);
  rlimit small = old;
  small.rlim_cur = one + one / 2;  // room for half of the next record
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &small), 0);
  r.iteration = 2;
  w.write(r);
  r.iteration = 3;
  w.write(r);  // (nothing more after a failure)
  setrlimit(RLIMIT_FSIZE, &old);
  std::signal(SIGXFSZ, previous);
  EXPECT_EQ(std::filesystem::file_size(w.path()), one);
  EXPECT_NE(w.error().find(w.path() + ": writing the record of iteration 2 failed ("), std::string::npos) << w.error();
  std::ifstream in(w.path());
  std::string line, last;
  int lines = 0;
  while (std::getline(in, line)) ++lines, last = line;
  EXPECT_EQ(lines, 1);
  EXPECT_EQ(last.back(), '}');
}
