// --deepspeed_config: DeepSpeed's JSON as ALCF's Megatron-DeepSpeed launchers write it.
#include "train/deepspeed_config.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>

#include "core/error.h"
#include "support/scratch_dir.h"
#include "support/config_error.h"

using namespace llm;

namespace {

using llm::testing::error_of;

}  // namespace

TEST(DeepSpeedConfig, SetsTheOptionsItDecides) {
  const llm::testing::ScratchDir tmp("ds-config");
  const std::string path = tmp / "ds_config.json";
  std::ofstream(path) << R"({
  "train_batch_size": 8,
  "train_micro_batch_size_per_gpu": 2,
  "gradient_accumulation_steps": 4,
  "steps_per_print": 1,
  "gradient_clipping": 0.5,
  "zero_optimization": {"stage": 1, "overlap_comm": true, "offload_optimizer": {"device": "cpu"}},
  "fp16": {"enabled": true, "loss_scale": 0, "initial_scale_power": 12, "loss_scale_window": 500,
           "hysteresis": 3, "min_loss_scale": 2},
  "bf16": {"enabled": false},
  "wall_clock_breakdown": false
})";
  TrainArgs a;
  const std::vector<std::string> ignored = apply_deepspeed_config(a, path, {});
  EXPECT_EQ(a.global_batch_size, 8);
  EXPECT_EQ(a.micro_batch_size, 2);
  EXPECT_EQ(a.ds_gradient_accumulation_steps, 4);
  EXPECT_EQ(a.clip_grad, 0.5);
  EXPECT_EQ(a.zero_stage, 1);
  EXPECT_TRUE(a.fp16);
  EXPECT_FALSE(a.bf16);
  EXPECT_EQ(a.loss_scale, 0.0);
  EXPECT_EQ(a.initial_loss_scale, 4096.0);
  EXPECT_EQ(a.loss_scale_window, 500);
  EXPECT_EQ(a.hysteresis, 3);
  EXPECT_EQ(a.min_loss_scale, 2.0);
  for (const char* k : {"steps_per_print", "wall_clock_breakdown", "zero_optimization.overlap_comm",
                        "zero_optimization.offload_optimizer"})
    EXPECT_NE(std::find(ignored.begin(), ignored.end(), k), ignored.end()) << k;
  // the batch sizes agree with gradient_accumulation_steps at one data-parallel rank...
  a.deepspeed_config = path;
  a.resolve_defaults();
  a.validate();
  // ...and not at two
  a.data_parallel_size = 2;
  a.global_batch_size = 8;
  const std::string e = error_of([&] { a.validate(); });
  EXPECT_NE(e.find("gradient_accumulation_steps is 4 but the batch sizes give 2"), std::string::npos) << e;
}

// Where the JSON is silent, DeepSpeed's defaults hold for what it decides: no clipping, an fp16
// scale from 2^16; gradient_accumulation_steps alone gives the global batch.
TEST(DeepSpeedConfig, DeepSpeedsDefaultsWhereTheFileIsSilent) {
  const llm::testing::ScratchDir tmp("ds-config");
  const std::string path = tmp / "ds.json";
  std::ofstream(path) << "{\"train_micro_batch_size_per_gpu\": 2, \"gradient_accumulation_steps\": 3,\n"
                         " \"fp16\": {\"enabled\": true, \"consecutive_hysteresis\": false}}\n";
  TrainArgs a;
  const std::vector<std::string> ignored = apply_deepspeed_config(a, path, {});
  EXPECT_EQ(a.clip_grad, 0.0);
  EXPECT_EQ(a.initial_loss_scale, 65536.0);
  EXPECT_NE(std::find(ignored.begin(), ignored.end(), "fp16.consecutive_hysteresis"), ignored.end());
  a.data_parallel_size = 2;
  a.resolve_defaults();
  EXPECT_EQ(a.global_batch_size, 12);  // 2 x 3 x 2
  // a flag that set the option keeps it
  TrainArgs b;
  b.clip_grad = 0.7;
  apply_deepspeed_config(b, path, {"clip-grad"});
  EXPECT_EQ(b.clip_grad, 0.7);
  // fp16 from the file and --bf16 from the flags: named here
  TrainArgs c;
  c.bf16 = true;
  const std::string e = error_of([&] { apply_deepspeed_config(c, path, {"bf16"}); });
  EXPECT_NE(e.find("fp16 and bf16 are both enabled"), std::string::npos) << e;
}

TEST(DeepSpeedConfig, FlagsMustAgreeAndForeignBlocksAreRefused) {
  const llm::testing::ScratchDir tmp("ds-config");
  const std::string path = tmp / "ds.json";
  std::ofstream(path) << "{\n  \"zero_optimization\": {\"stage\": 1},\n  \"gradient_clipping\": \"auto\"\n}\n";
  TrainArgs a;
  a.zero_stage = 2;  // --zero-stage 2 given
  a.clip_grad = 0.25;
  std::string e = error_of([&] { apply_deepspeed_config(a, path, {"zero-stage"}); });
  EXPECT_NE(e.find("ds.json:2: 'zero_optimization.stage' is 1 but --zero-stage is 2"), std::string::npos) << e;
  a.zero_stage = 1;  // the same value in both is fine; "auto" leaves the option alone
  apply_deepspeed_config(a, path, {"zero-stage"});
  EXPECT_EQ(a.clip_grad, 0.25);
  std::ofstream(path) << "{\"train_batch_size\": 16,\n \"optimizer\": {\"type\": \"Adam\", \"params\": {\"lr\": 0.001}}}\n";
  e = error_of([&] { apply_deepspeed_config(a, path, {}); });
  EXPECT_NE(e.find("ds.json:2: DeepSpeed's own 'optimizer' block"), std::string::npos) << e;
  std::ofstream(path) << "{\"fp16\": {\"enabled\": false}}\n";
  TrainArgs f;
  f.fp16 = true;
  e = error_of([&] { apply_deepspeed_config(f, path, {"fp16"}); });
  EXPECT_NE(e.find("'fp16.enabled' is false but --fp16 is given"), std::string::npos) << e;
  std::ofstream(path) << "{\"train_batch_size\": \"many\"}\n";
  e = error_of([&] { apply_deepspeed_config(f, path, {}); });
  EXPECT_NE(e.find("'train_batch_size' must be a number"), std::string::npos) << e;
  e = error_of([&] { apply_deepspeed_config(f, tmp / "missing.json", {}); });
  EXPECT_NE(e.find("missing.json"), std::string::npos) << e;
}
