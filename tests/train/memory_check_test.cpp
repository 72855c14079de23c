// The host-memory check before a CPU run: its estimate against what the trainer really holds,
// and its verdicts around the node's share.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "backend/backend.h"
#include "core/error.h"
#include "data/mock_data.h"
#include "model/gpt.h"
#include "train/memory_check.h"
#include "train/tiny_args.h"
#include "train/trainer.h"
#include "support/scratch_dir.h"

using namespace llm;

namespace {
ParallelLayout one_process() { return ParallelLayout{}; }
}  // namespace

// The estimate's parts against one real step of the same run: the model states exactly (f32
// parameters, gradients and the two AdamW moments, 16 bytes a parameter), the activations and
// logits within the bounds below (the estimate was 1.13x what one step held at 8 x 64 tokens).
TEST(HostMemoryCheck, EstimatesWhatOneStepHolds) {
  TrainArgs a = tiny_train_args(2, 64);
  a.micro_batch_size = 8, a.global_batch_size = 8;
  a.resolve_defaults();
  a.validate();
  const HostMemoryVerdict v = check_host_memory(a, one_process(), 1e15);
  GPT model(a.model_config(), cpu_backend(), 7, a.seq_length);
  MockDataSource data(a.vocab_size, a.seq_length, 7, "train");
  Trainer trainer(a, model, data);
  trainer.train_step();
  const Trainer::StateBytes sb = trainer.state_bytes();
  EXPECT_DOUBLE_EQ(v.states, static_cast<double>(sb.parameters + sb.gradients + sb.optimizer));
  EXPECT_DOUBLE_EQ(v.states, 16.0 * static_cast<double>(model.parameters().numel()));
  const double measured = static_cast<double>(model.activation_bytes());
  EXPECT_GT(v.activations + v.logits, 0.75 * measured) << "measured " << measured;
  EXPECT_LT(v.activations + v.logits, 1.5 * measured) << "measured " << measured;
}

TEST(HostMemoryCheck, WarnsOverTheShareAndRefusesFarOverIt) {
  const TrainArgs a = tiny_train_args(2, 64);
  const double need = check_host_memory(a, one_process(), 1e15).predicted;
  ASSERT_GT(need, 0);
  EXPECT_TRUE(check_host_memory(a, one_process(), need * 1.01).warning.empty());
  EXPECT_TRUE(check_host_memory(a, one_process(), 0).warning.empty());  // unknown: no verdict
  const std::string w = check_host_memory(a, one_process(), need / 2).warning;
  EXPECT_NE(w.find("may not fit"), std::string::npos) << w;
  try {
    check_host_memory(a, one_process(), need / 5);
    FAIL() << "no error at a fifth of the estimate";
  } catch (const ConfigError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("out of host memory (predicted before allocating)"), std::string::npos) << m;  // llm-sweep's OOM
    EXPECT_NE(m.find("--micro-batch-size"), std::string::npos) << m;
  }
}

// More micro-batch, more estimate; full recompute and logits in chunks, less.
TEST(HostMemoryCheck, FollowsTheFlagsThatShrinkIt) {
  TrainArgs a = tiny_train_args(2, 256);
  const double base = check_host_memory(a, one_process(), 1e15).predicted;
  TrainArgs rc = a;
  rc.recompute_granularity = "full";
  EXPECT_LT(check_host_memory(rc, one_process(), 1e15).predicted, base);
  TrainArgs lc = a;
  lc.logits_chunk_tokens = 64;
  EXPECT_LT(check_host_memory(lc, one_process(), 1e15).predicted, base);
  TrainArgs mb = a;
  mb.micro_batch_size = 8, mb.global_batch_size = 8;
  EXPECT_GT(check_host_memory(mb, one_process(), 1e15).predicted, base);
}

TEST(HostMemoryCheck, ReadsTheHostsAvailableMemory) {
  const double b = available_host_bytes();
  EXPECT_GT(b, 1 << 20);  // this machine leaves at least a MiB
}

// A made-up /proc and cgroup tree: the job's group (the step's parent) holds the limit, and its
// file cache is reclaimable; the tightest of MemAvailable and each group's room counts.
TEST(HostMemoryCheck, TakesTheTightestCgroupOnThePathWithoutItsCache) {
  namespace fs = std::filesystem;
  const llm::testing::ScratchDir dir("memcheck");
  const fs::path proc = dir.path() / "proc", cg = dir.path() / "cgroup";
  fs::create_directories(proc / "self");
  fs::create_directories(cg / "job/step");
  const double GiB = 1073741824.0;
  auto put = [](const fs::path& p, const std::string& s) { std::ofstream(p) << s; };
  put(proc / "meminfo", "MemTotal:       33554432 kB\nMemAvailable:    8388608 kB\n");
  EXPECT_DOUBLE_EQ(available_host_bytes(proc.string(), cg.string()), 8 * GiB);  // no cgroup file: MemAvailable
  put(proc / "self/cgroup", "0::/job/step\n");
  put(cg / "job/step/memory.max", "max\n");
  put(cg / "job/step/memory.current", "1073741824\n");
  put(cg / "job/memory.max", "4294967296\n");
  put(cg / "job/memory.current", "3221225472\n");
  put(cg / "job/memory.stat", "anon 1073741824\nfile 2147483648\ninactive_file 2147483648\n");
  EXPECT_DOUBLE_EQ(available_host_bytes(proc.string(), cg.string()), 3 * GiB);  // 4 - (3 - 2)
  put(cg / "job/memory.max", "68719476736\n");  // a roomier limit than the host leaves
  EXPECT_DOUBLE_EQ(available_host_bytes(proc.string(), cg.string()), 8 * GiB);
}
