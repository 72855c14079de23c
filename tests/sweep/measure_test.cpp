#include <gtest/gtest.h>

#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <fstream>

#include "support/scratch_dir.h"
#include "sweep/child.h"
#include "sweep/measure.h"
#include "sweep/peak.h"
#include "train/flops.h"

using namespace llm;
using namespace llm::sweep;

TEST(SweepStats, MedianAndSpread) {
  const Stats s = stats_of({30, 10, 20, 50});
  EXPECT_EQ(s.n, 4);
  EXPECT_DOUBLE_EQ(s.median, 25);
  EXPECT_DOUBLE_EQ(s.min, 10);
  EXPECT_DOUBLE_EQ(s.max, 50);
  EXPECT_DOUBLE_EQ(s.spread(), 40.0 / 25.0);
  EXPECT_DOUBLE_EQ(stats_of({3, 1, 2}).median, 2);
  EXPECT_EQ(stats_of({}).n, 0);
}

TEST(SweepMeasure, TimedIterationsSkipWarmup) {
  llm::testing::ScratchDir dir;
  std::ofstream(dir / "metrics.jsonl") << "{\"iteration\": 1, \"elapsed_ms_per_iteration\": 90.5}\n"
                                       << "{\"iteration\": 2, \"elapsed_ms_per_iteration\": 50}\n"
                                       << "{\"iteration\": 3, \"elapsed_ms_per_iteration\": 10.25}\n";
  EXPECT_EQ(timed_iterations(dir / "metrics.jsonl", 1), (std::vector<double>{50, 10.25}));
  EXPECT_EQ(timed_iterations(dir / "metrics.jsonl", 0).size(), 3u);
  EXPECT_TRUE(timed_iterations(dir / "metrics.jsonl", 3).empty());
  EXPECT_EQ(read_run_metrics(dir / "metrics.jsonl", 0).device_peak_bytes, -1);  // a CPU run's records
}

TEST(SweepMeasure, DevicePeakIsTheLargestRecorded) {
  llm::testing::ScratchDir dir;
  std::ofstream(dir / "metrics.jsonl")
      << "{\"iteration\": 1, \"elapsed_ms_per_iteration\": 9, \"memory_max_allocated_mib\": 1024.5}\n"
      << "{\"iteration\": 2, \"elapsed_ms_per_iteration\": 8, \"memory_max_allocated_mib\": 2048}\n"
      << "{\"iteration\": 3, \"elapsed_ms_per_iteration\": 8, \"memory_max_allocated_mib\": 1500}\n";
  const RunMetrics m = read_run_metrics(dir / "metrics.jsonl", 1);
  EXPECT_EQ(m.ms, (std::vector<double>{8, 8}));
  EXPECT_EQ(m.device_peak_bytes, int64_t{2048} * 1048576);
}

TEST(SweepMeasure, RatesFromTheMedian) {
  PointResult r;
  r.point.seq_length = 256, r.point.micro_batch = 2, r.point.grad_accum = 2, r.point.dp = 2;  // 8 samples, 4 ranks... world 2
  r.ms_per_iteration = stats_of({400, 500, 600});
  GPTConfig m;
  m.num_layers = 2, m.hidden_size = 128, m.num_heads = 4, m.vocab_size = 512, m.max_position_embeddings = 256;
  derive_rates(r, m, /*peak_tflops_total=*/0.1);
  EXPECT_DOUBLE_EQ(r.samples_per_second, 8 / 0.5);
  EXPECT_DOUBLE_EQ(r.tokens_per_second, 8 * 256 / 0.5);
  EXPECT_DOUBLE_EQ(r.tokens_per_device_per_second, 8 * 256 / 0.5 / 2);
  const double fm = model_flops_per_iteration(m, 8, 256);
  EXPECT_DOUBLE_EQ(r.tflops_model, fm / 0.5 / 2 / 1e12);
  EXPECT_DOUBLE_EQ(r.tflops_megatron, megatron_flops_per_iteration(m, 8, 256, false) / 0.5 / 2 / 1e12);
  EXPECT_DOUBLE_EQ(r.mfu, fm / 0.5 / 1e12 / 0.1);
}

TEST(SweepMeasure, ClassifiesFailures) {
  PointResult r;
  ChildResult c;
  c.exit_code = 1;
  classify(r, c, "> model tiny\nllm-pretrain: error: out of host memory allocating 123 bytes\n", 60);
  EXPECT_EQ(r.status, Status::oom);
  EXPECT_EQ(r.message, "out of host memory allocating 123 bytes");
  classify(r, c, "llm-pretrain: error: only data parallelism is available\n", 60);
  EXPECT_EQ(r.status, Status::error);
  EXPECT_EQ(r.message, "only data parallelism is available");
  c.exit_code = 109;  // CLI11: an option this llm-pretrain does not know yet
  classify(r, c, "The following argument was not expected: --bf16\nRun with --help for more information.\n", 60);
  EXPECT_EQ(r.status, Status::error);
  EXPECT_EQ(r.message, "The following argument was not expected: --bf16");
  c.exit_code = 134;
  classify(r, c, "terminate called after throwing an instance of 'std::bad_alloc'\n", 60);
  EXPECT_EQ(r.status, Status::oom);
  EXPECT_NE(r.message.find("signal 6"), std::string::npos) << r.message;
  EXPECT_NE(r.message.find("std::bad_alloc"), std::string::npos) << r.message;
  // a rank SIGKILLed under mpiexec: exit code 137 and mpiexec's note between rules of dashes
  c.exit_code = 137;
  classify(r, c,
           "--------------------------------------------------------------------------\n"
           "Primary job  terminated normally, but 1 process returned\na non-zero exit code.\n"
           "--------------------------------------------------------------------------\n", 60);
  EXPECT_EQ(r.status, Status::oom);
  EXPECT_NE(r.message.find("signal 9"), std::string::npos) << r.message;
  EXPECT_NE(r.message.find("OOM killer"), std::string::npos) << r.message;
  c.exit_code = -1, c.signal = SIGKILL;
  classify(r, c, "", 60);
  EXPECT_EQ(r.status, Status::oom);
  EXPECT_NE(r.message.find("OOM killer"), std::string::npos);
  c.signal = SIGSEGV;
  classify(r, c, "", 60);
  EXPECT_EQ(r.status, Status::error);
  EXPECT_NE(r.message.find("signal 11"), std::string::npos);
  c.signal = 0, c.timed_out = true;
  classify(r, c, "", 30);
  EXPECT_EQ(r.status, Status::error);
  EXPECT_EQ(r.message, "timed out after 30 s");
  c.timed_out = false, c.over_memory = true;
  classify(r, c, "", 30, 512ll << 20);
  EXPECT_EQ(r.status, Status::oom);
  EXPECT_EQ(r.message, "a rank's resident memory passed the cap of 512 MiB (--mem-limit-gib); killed");
  c = ChildResult{};
  c.exit_code = 0;
  classify(r, c, "", 30);
  EXPECT_EQ(r.status, Status::ok);
}

TEST(SweepChild, ExitCodesSignalsTimeoutsAndTheMemoryCap) {
  llm::testing::ScratchDir dir;
  ChildOptions o;
  o.stdout_path = dir / "out", o.stderr_path = dir / "err";
  o.env = {"SWEEP_TEST_VALUE=42"};
  ChildResult r = run_child({"/bin/sh", "-c", "echo $SWEEP_TEST_VALUE; echo oops >&2; exit 3"}, o);
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(tail_lines(dir / "out", 5), "42");
  EXPECT_EQ(tail_lines(dir / "err", 5), "oops");
  r = run_child({"/bin/sh", "-c", "kill -9 $$"}, o);
  EXPECT_EQ(r.signal, SIGKILL);
  o.timeout_seconds = 0.3;
  r = run_child({"/bin/sh", "-c", "sleep 5"}, o);
  EXPECT_TRUE(r.timed_out);
  EXPECT_LT(r.wall_seconds, 3.0);
  // A timeout kills everything the child started, also processes in other process groups
  // (job control puts each background job in its own group, as mpiexec does with its ranks).
  r = run_child({"/bin/bash", "-c", "set -m; sleep 7.25 & wait"}, o);
  EXPECT_TRUE(r.timed_out);
  // ('7[.]25' so that the pattern does not match the shell running pgrep; zombies get a moment)
  bool gone = false;
  for (int i = 0; i < 50 && !gone; ++i, ::usleep(20000)) gone = std::system("pgrep -f 'sleep 7[.]25' > /dev/null") != 0;
  EXPECT_TRUE(gone) << "a grandchild outlived its point";
  o.timeout_seconds = 20;
  r = run_child({"/nonexistent/program"}, o);
  EXPECT_TRUE(r.exec_failed);
  // A shell variable of 64 MB: resident well above a 24 MiB cap.
  o.mem_limit_bytes = 24ll << 20;
  r = run_child({"/bin/sh", "-c", "x=$(head -c 64000000 /dev/zero | tr '\\0' a); sleep 2; echo ${#x}"}, o);
  EXPECT_TRUE(r.over_memory);
  EXPECT_GT(r.max_rss_bytes, 24ll << 20);
  EXPECT_LT(r.wall_seconds, 2.0);
  o.mem_limit_bytes = 0;
  r = run_child({"/bin/sh", "-c", "true"}, o);
  EXPECT_TRUE(r.ok());
  EXPECT_GT(r.max_rss_bytes, 0);
}

TEST(SweepPeak, CpuPointPeakCountsTheProcessesTheCoresRunSideBySide) {
  // 100 GFLOP/s per 1-thread process on 2 cores: 2 ranks get 200, 4 ranks still 200.
  EXPECT_DOUBLE_EQ(llm::sweep::cpu_point_peak(0.1, 1, 1, 2), 0.1);
  EXPECT_DOUBLE_EQ(llm::sweep::cpu_point_peak(0.1, 2, 1, 2), 0.2);
  EXPECT_DOUBLE_EQ(llm::sweep::cpu_point_peak(0.1, 4, 1, 2), 0.2);
  // A 2-thread process already uses both cores: more ranks share that ceiling.
  EXPECT_DOUBLE_EQ(llm::sweep::cpu_point_peak(0.19, 2, 2, 2), 0.19);
  EXPECT_DOUBLE_EQ(llm::sweep::cpu_point_peak(0.19, 1, 4, 2), 0.19);
  // 8 of 16 cores' threads split over 2 ranks of 4: the 8-thread ceiling, not twice it; over 3
  // ranks of 2 threads, 6 of the 8
  EXPECT_DOUBLE_EQ(llm::sweep::cpu_point_peak(0.4, 2, 8, 16), 0.4);
  EXPECT_DOUBLE_EQ(llm::sweep::cpu_point_peak(0.4, 3, 8, 16), 0.4 * 6 / 8);
}
