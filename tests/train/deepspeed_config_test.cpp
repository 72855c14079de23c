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
  "zero_optimization": {"stage": 1, "overlap_comm": true, "offload_optimizer": {"device": "none"}},
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

namespace {

std::string write(const llm::testing::ScratchDir& tmp, const std::string& name, const std::string& text) {
  const std::string path = tmp / name;
  std::ofstream(path) << text;
  return path;
}

bool named(const std::vector<std::string>& ignored, const std::string& key) {
  return std::find(ignored.begin(), ignored.end(), key) != ignored.end();
}

}  // namespace

// argonne-lcf/Megatron-DeepSpeed ALCF/helpers.sh generateDSconfig: ZERO_STAGE=3, DTYPE=fp16
// (its offload_optimizer block with "device": "none" is no offload), and ZERO_STAGE=2 with
// CPU_OPTIMIZER set, which offloads and is refused naming the key.
TEST(DeepSpeedConfig, AlcfHelpersConfigs) {
  const llm::testing::ScratchDir tmp("ds-config");
  const std::string common = R"({
        "train_batch_size": 16,
        "train_micro_batch_size_per_gpu": 1,
        "gradient_clipping": 1.0,
        "steps_per_print": 1,
        "gradient_accumulation_steps": 8,
        "zero_force_ds_cpu_optimizer": false,
        "zero_allow_untested_optimizer": true,
        "wall_clock_breakdown": false,
)";
  const std::string flops = R"(
        "flops_profiler": {"enabled": true, "profile_step": 2, "module_depth": -1, "top_modules": 1,
                           "detailed": true, "output_file": null}
}
)";
  const std::string z3 = write(tmp, "ds_stage3_mb1_gb16_pp1_fp16.json", common + R"(
            "zero_optimization": {
              "stage": 3,
              "reduce_scatter": false,
              "mics_hierarchical_params_gather": true,
              "stage3_max_live_parameters": 3e9,
              "stage3_max_reuse_distance": 3e9,
              "stage3_param_persistence_threshold": 1e5,
              "stage3_prefetch_bucket_size": 5e7,
              "contiguous_gradients": true,
              "overlap_comm": true,
              "reduce_bucket_size": 90000000,
              "sub_group_size": 1e9,
              "offload_optimizer": {"device": "none", "buffer_count": 4, "pipeline_read": false,
                                    "pipeline_write": false, "pin_memory": true}
            },
            "communication_data_type": "fp16",
            "fp16": {"enabled": true, "loss_scale": 0, "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1},
            "bfloat16": {"enabled": false, "loss_scale": 1.0},)" + flops);
  TrainArgs a;  // ALCF's launcher passes --zero-stage=3 and --fp16 too
  a.zero_stage = 3;
  a.fp16 = true;
  const std::vector<std::string> ignored = apply_deepspeed_config(a, z3, {"zero-stage", "fp16"});
  EXPECT_EQ(a.zero_stage, 3);
  EXPECT_TRUE(a.fp16);
  EXPECT_EQ(a.initial_loss_scale, 65536.0);
  EXPECT_EQ(a.clip_grad, 1.0);
  for (const char* k : {"zero_optimization.offload_optimizer", "zero_optimization.reduce_scatter", "flops_profiler",
                        "communication_data_type", "zero_force_ds_cpu_optimizer"})
    EXPECT_TRUE(named(ignored, k)) << k;
  a.data_parallel_size = 2;
  a.resolve_defaults();
  a.validate();

  const std::string cpu = write(tmp, "ds_stage2_mb1_gb16_pp2_bf16.json", common + R"(
                "zero_optimization": {
                    "stage": 2,
                    "offload_optimizer": {
                      "device": "cpu"
                    }
                },
            "fp16": {"enabled": false, "loss_scale": 0, "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1},
            "bfloat16": {"enabled": true, "loss_scale": 1.0},
                "data_types": {"grad_accum_dtype": "fp32"},
                "comms_logger": {"enabled": true, "verbose": false, "prof_all": true, "debug": false},)" + flops);
  TrainArgs b;
  const std::string e = error_of([&] { apply_deepspeed_config(b, cpu, {}); });
  EXPECT_NE(e.find("ds_stage2_mb1_gb16_pp2_bf16.json:14: 'zero_optimization.offload_optimizer.device' is cpu"),
            std::string::npos) << e;
  // microsoft/Megatron-DeepSpeed ds_config.json: ZeRO-3 with the optimizer on the CPU, the older spelling too
  for (const char* text : {R"({"zero_optimization": {"stage": 3, "offload_param": {"device": "nvme"}}})",
                           R"({"zero_optimization": {"stage": 2, "cpu_offload": true}})"}) {
    const std::string p = write(tmp, "offload.json", text);
    TrainArgs c;
    const std::string m = error_of([&] { apply_deepspeed_config(c, p, {}); });
    EXPECT_NE(m.find("offload.json:1: 'zero_optimization."), std::string::npos) << m;
    EXPECT_NE(m.find("not implemented here"), std::string::npos) << m;
  }
}

// microsoft/Megatron-DeepSpeed ds_zero2_config_bf16.json (its optimizer block left out: refused
// above): train_batch_size and gradient_accumulation_steps without a micro-batch, which DeepSpeed
// derives as train_batch_size / (steps x data parallel).
TEST(DeepSpeedConfig, MicroBatchDerivedAsDeepSpeedDoes) {
  const llm::testing::ScratchDir tmp("ds-config");
  const std::string path = write(tmp, "ds_zero2_config_bf16.json", R"({
    "train_batch_size": 96,
    "gradient_accumulation_steps": 1,
    "steps_per_print": 1,
    "zero_optimization": {
      "stage": 2
    },
    "zero_allow_untested_optimizer": true,
    "communication_data_type": "bfp16",
    "gradient_clipping": 1.0,
    "fp16": {"enabled": false, "loss_scale": 0, "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1},
    "bfloat16": {"enabled": true, "loss_scale": 1.0},
    "activation_checkpointing": {"partition_activations": true, "contiguous_memory_optimization": false},
    "wall_clock_breakdown": false,
    "flops_profiler": {"enabled": true, "profile_step": -1, "module_depth": -1, "top_modules": 1, "detailed": true,
                       "output_file": null}
  })");
  TrainArgs a;
  apply_deepspeed_config(a, path, {});
  a.deepspeed_config = path;
  a.data_parallel_size = 8;
  a.resolve_defaults();
  EXPECT_EQ(a.micro_batch_size, 12);  // 96 / (1 x 8)
  EXPECT_TRUE(a.bf16);
  a.validate();
  // a --micro-batch-size given keeps it (and must agree with the steps)
  TrainArgs b;
  b.micro_batch_size = 6;
  apply_deepspeed_config(b, path, {"micro-batch-size"});
  b.deepspeed_config = path;
  b.data_parallel_size = 8;
  b.resolve_defaults();
  EXPECT_EQ(b.micro_batch_size, 6);
  EXPECT_NE(error_of([&] { b.validate(); }).find("gradient_accumulation_steps is 1 but the batch sizes give 2"),
            std::string::npos);
  // and so does one from a --config file (a YAML line, in TrainArgs::option_sources)
  TrainArgs d;
  apply_option(d, "micro-batch-size", "6", "model.yaml:3");
  apply_deepspeed_config(d, path, {});
  d.deepspeed_config = path;
  d.data_parallel_size = 8;
  d.resolve_defaults();
  EXPECT_EQ(d.micro_batch_size, 6);
  // not divisible: named as DeepSpeed's division
  TrainArgs c;
  apply_deepspeed_config(c, path, {});
  c.deepspeed_config = path;
  c.data_parallel_size = 7;
  const std::string e = error_of([&] { c.resolve_defaults(); });
  EXPECT_NE(e.find("train_batch_size 96 is not divisible by gradient_accumulation_steps 1 x data-parallel size 7"),
            std::string::npos) << e;
}

// Settings that change what DeepSpeed trains and that have no equivalent here are refused, naming
// the file and key; the same blocks disabled are accepted.
TEST(DeepSpeedConfig, TrainingChangingSettingsAreRefused) {
  const llm::testing::ScratchDir tmp("ds-config");
  // microsoft/Megatron-DeepSpeed examples/data_efficiency/gpt/pretrain_curriculum_learning/
  // ds_config_gpt_data_efficiency_seqlen_TEMPLATE.json, filled in
  const std::string de = write(tmp, "ds_config_gpt_data_efficiency_seqlen.json", R"({
  "train_batch_size" : 512,
  "train_micro_batch_size_per_gpu": 4,
  "steps_per_print": 100,
  "zero_optimization": {"stage": 0, "elastic_checkpoint": true},
  "gradient_clipping": 1.0,
  "prescale_gradients": false,
  "fp16": {"enabled": true, "loss_scale": 0, "loss_scale_window": 500, "hysteresis": 2, "min_loss_scale": 1,
           "initial_scale_power": 11},
  "wall_clock_breakdown" : false,
  "dataloader_drop_last": true,
  "data_efficiency": {
    "enabled": true,
    "seed": 1234,
    "data_sampling": {"enabled": true, "num_workers": 0,
      "curriculum_learning": {"enabled": true, "data_cluster_path": "/tmp/cl",
        "curriculum_metrics": {"seqlen_truncate": {"difficulty_type": "value", "clustering_type": "single_cluster",
          "min_difficulty": 80, "max_difficulty": 2048, "schedule_type": "fixed_root",
          "schedule_config": {"total_curriculum_step": 1000, "difficulty_step": 8, "root_degree": 1}}}}}
  }
})");
  TrainArgs a;
  std::string e = error_of([&] { apply_deepspeed_config(a, de, {}); });
  EXPECT_NE(e.find("ds_config_gpt_data_efficiency_seqlen.json:12: 'data_efficiency' is enabled"), std::string::npos) << e;
  struct Case {
    const char* text;
    const char* message;
  };
  for (const Case& c : {
           Case{R"({"curriculum_learning": {"enabled": true, "curriculum_type": "seqlen", "min_difficulty": 8}})",
                "'curriculum_learning' is enabled"},
           Case{R"({"progressive_layer_drop": {"enabled": true, "theta": 0.5, "gamma": 0.001}})",
                "'progressive_layer_drop' is enabled"},
           Case{R"({"elasticity": {"enabled": true, "max_train_batch_size": 2000}})", "'elasticity' is enabled"},
           Case{R"({"amp": {"enabled": true, "opt_level": "O1"}})", "'amp' is enabled"},
           Case{R"({"compression_training": {"weight_quantization": {"shared_parameters": {"enabled": true}}}})",
                "'compression_training' is enabled"},
           Case{R"({"fp16": {"enabled": true, "consecutive_hysteresis": true}})", "'fp16.consecutive_hysteresis' is true"},
           Case{R"({"bf16": {"enabled": true}, "data_types": {"grad_accum_dtype": "bf16"}})",
                "'data_types.grad_accum_dtype' is not fp32"},
           Case{R"({"zero_optimization": {"stage": 3, "zero_quantized_weights": true}})",
                "'zero_optimization.zero_quantized_weights' is true"},
       }) {
    const std::string p = write(tmp, "ds.json", c.text);
    TrainArgs t;
    e = error_of([&] { apply_deepspeed_config(t, p, {}); });
    EXPECT_NE(e.find(std::string("ds.json:1: ") + c.message), std::string::npos) << c.text << "\n" << e;
  }
  // disabled, they are accepted and named
  const std::string off = write(tmp, "ds.json", R"({"curriculum_learning": {"enabled": false}, "amp": {"enabled": false},
 "fp16": {"enabled": false, "consecutive_hysteresis": true}, "data_types": {"grad_accum_dtype": "fp32"},
 "zero_optimization": true})");
  TrainArgs t;
  const std::vector<std::string> ignored = apply_deepspeed_config(t, off, {});
  EXPECT_TRUE(named(ignored, "curriculum_learning") && named(ignored, "amp") && named(ignored, "data_types"));
  EXPECT_EQ(t.zero_stage, 1);  // DeepSpeed's deprecated boolean form: true is stage 1
}

// DeepSpeed loads the file with hjson, so comments, trailing commas and unquoted keys and values
// are a valid config there; they read the same here, and errors still name the line.
TEST(DeepSpeedConfig, ReadAsHjsonAsDeepSpeedDoes) {
  const llm::testing::ScratchDir tmp("ds-config-hjson");
  const std::string path = tmp / "ds_config.json";
  std::ofstream(path) << R"(// written by hand
{
  "train_batch_size": 8,            # global
  train_micro_batch_size_per_gpu: 2
  "gradient_clipping": 1.0,
  /* ZeRO */ "zero_optimization": {"stage": 2,},
  bf16: {enabled: true},
})";
  TrainArgs a;
  apply_deepspeed_config(a, path, {});
  EXPECT_EQ(a.global_batch_size, 8);
  EXPECT_EQ(a.micro_batch_size, 2);
  EXPECT_EQ(a.clip_grad, 1.0);
  EXPECT_EQ(a.zero_stage, 2);
  EXPECT_TRUE(a.bf16);
  // hjson reads 4.0 as the integer 4, so DeepSpeed takes it as a batch size; so do we
  std::ofstream(path) << "{train_batch_size: 4.0\n}";
  TrainArgs b;
  apply_deepspeed_config(b, path, {});
  EXPECT_EQ(b.global_batch_size, 4);
  std::ofstream(path) << "{\n  \"train_batch_size\": 8,\n  \"train_batch_size\": 16\n}";
  TrainArgs c;
  const std::string e = error_of([&] { apply_deepspeed_config(c, path, {}); });
  EXPECT_EQ(e, path + ":3:3: duplicate key \"train_batch_size\"");
}

// Counts are integers in DeepSpeed's ranges, and a key a letter or two from one DeepSpeed reads is
// a misspelling: each is refused naming the file, line and key, never taken or skipped silently.
TEST(DeepSpeedConfig, CountsAndMisspelledKeysAreRefusedByName) {
  const llm::testing::ScratchDir tmp("ds-config-keys");
  const std::string path = tmp / "ds_config.json";
  const auto refusal = [&](const std::string& text) {
    std::ofstream(path) << text;
    TrainArgs a;
    return error_of([&] { apply_deepspeed_config(a, path, {}); });
  };
  EXPECT_EQ(refusal("{\n  \"train_micro_batch_size_per_gpu\": 8.5\n}"),
            path + ":2: 'train_micro_batch_size_per_gpu' must be an integer >= 1 (or \"auto\"), got 8.5");
  EXPECT_EQ(refusal("{\"train_batch_size\": 99999999999999999999}"),
            path + ":1: 'train_batch_size' must be an integer >= 1 (or \"auto\"), got 1e+20");
  EXPECT_EQ(refusal("{\"train_batch_size\": 0}"), path + ":1: 'train_batch_size' must be an integer >= 1 (or \"auto\"), got 0");
  EXPECT_EQ(refusal("{\"gradient_accumulation_steps\": -2}"),
            path + ":1: 'gradient_accumulation_steps' must be an integer >= 1 (or \"auto\"), got -2");
  EXPECT_EQ(refusal("{\"zero_optimization\": {\"stage\": 4}}"),
            path + ":1: 'zero_optimization.stage' must be an integer from 0 to 3 (or \"auto\"), got 4");
  EXPECT_EQ(refusal("{\"fp16\": {\"enabled\": true, \"initial_scale_power\": 1000}}"),
            path + ":1: 'fp16.initial_scale_power' must be an integer from 0 to 127 (or \"auto\"), got 1000");
  EXPECT_EQ(refusal("{\"train_batch_size\": 1e400}"), path + ":1:22: number out of range");
  EXPECT_EQ(refusal("{\n  \"train_batch_size\": 8,\n  \"zero_optimisation\": {\"stage\": 2}\n}"),
            path + ":3: 'zero_optimisation' is not a DeepSpeed setting; did you mean 'zero_optimization'?");
  EXPECT_EQ(refusal("{\"train_micro_batch_size_per_gpuu\": 2}"),
            path + ":1: 'train_micro_batch_size_per_gpuu' is not a DeepSpeed setting; did you mean 'train_micro_batch_size_per_gpu'?");
  EXPECT_EQ(refusal("{\"bf16\": {\"enable\": true}}"), path + ":1: 'bf16.enable' is not a DeepSpeed setting; did you mean 'bf16.enabled'?");
  EXPECT_EQ(refusal("{\"bfloat16\": {\"enable\": true}}"),
            path + ":1: 'bfloat16.enable' is not a DeepSpeed setting; did you mean 'bfloat16.enabled'?");
  EXPECT_EQ(refusal("{\"fp16\": {\"enabled\": true, \"intial_scale_power\": 8}}"),
            path + ":1: 'fp16.intial_scale_power' is not a DeepSpeed setting; did you mean 'fp16.initial_scale_power'?");
  EXPECT_EQ(refusal("{\"zero_optimization\": {\"stage\": 1, \"overlap_com\": true}}"),
            path + ":1: 'zero_optimization.overlap_com' is not a DeepSpeed setting; did you mean 'zero_optimization.overlap_comm'?");
  EXPECT_EQ(refusal("{\"zero_optimization\": {\"stage\": 3, \"cpu_offload_param\": true}}"),
            path + ":1: 'zero_optimization.cpu_offload_param' is true: offloading to the CPU is not implemented here; remove it or give false");
  // a model's YAML given by mistake: Hjson reads its lines as an object, none of them DeepSpeed's
  EXPECT_EQ(refusal("# model\nnum_layers: 2\nhidden_size: 64\n"),
            path + ": none of its keys is a DeepSpeed setting (the first is 'num_layers', line 2): is it a DeepSpeed config?");
  // a key far from every DeepSpeed setting is left alone, as DeepSpeed leaves it
  std::ofstream(path) << "{\"train_batch_size\": 8, \"my_run_note\": \"baseline\"}";
  TrainArgs a;
  const std::vector<std::string> ignored = apply_deepspeed_config(a, path, {});
  EXPECT_NE(std::find(ignored.begin(), ignored.end(), "my_run_note"), ignored.end());
  EXPECT_EQ(a.global_batch_size, 8);
}
