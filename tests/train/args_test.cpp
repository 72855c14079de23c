#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "train/args.h"
#include "support/config_error.h"

using namespace llm;

namespace {
std::string write_file(const std::string& name, const std::string& text) {
  auto p = std::filesystem::temp_directory_path() / name;
  std::ofstream(p) << text;
  return p.string();
}
using llm::testing::error_of;
}  // namespace

TEST(Args, YamlSetsOptionsUnderFlagNames) {
  TrainArgs a;
  auto keys = apply_yaml_file(a, write_file("ok.yaml", "num-layers: 3\nlr: 2.5e-4\nmock_data: true\nlr-decay-style: linear\n"));
  EXPECT_EQ(a.num_layers, 3);
  EXPECT_DOUBLE_EQ(a.lr, 2.5e-4);
  EXPECT_TRUE(a.mock_data);
  EXPECT_EQ(a.lr_decay_style, "linear");
  EXPECT_EQ(keys.size(), 4u);
  apply_option(a, "num-layers", "5", "--num-layers");  // a flag overrides the file
  EXPECT_EQ(a.num_layers, 5);
}

TEST(Args, BadInputNamesFileLineAndKey) {
  TrainArgs a;
  std::string e = error_of([&] { apply_yaml_file(a, write_file("bad1.yaml", "lr: 1e-3\nnum-layerz: 4\n")); });
  EXPECT_NE(e.find("bad1.yaml:2"), std::string::npos) << e;
  EXPECT_NE(e.find("num-layerz"), std::string::npos) << e;
  e = error_of([&] { apply_yaml_file(a, write_file("bad2.yaml", "seed: 1\nhidden-size: big\n")); });
  EXPECT_NE(e.find("bad2.yaml:2"), std::string::npos) << e;
  EXPECT_NE(e.find("hidden-size"), std::string::npos) << e;
  EXPECT_NE(e.find("'big'"), std::string::npos) << e;
  e = error_of([&] { apply_yaml_file(a, "/nonexistent/x.yaml"); });
  EXPECT_NE(e.find("/nonexistent/x.yaml"), std::string::npos) << e;
  e = error_of([&] { apply_option(a, "lr", "fast", "--lr"); });
  EXPECT_NE(e.find("--lr"), std::string::npos) << e;
  e = error_of([&] { apply_yaml_file(a, write_file("bad3.yaml", "lr: [1, 2]\n")); });
  EXPECT_NE(e.find("bad3.yaml:1"), std::string::npos) << e;
}

// A Megatron script that leaves a flag out gets Megatron's value; the flags its launchers pass
// that change nothing here are accepted at the values that mean what this toolkit does.
TEST(Args, MegatronDefaultsAndAcceptedFlags) {
  TrainArgs a;
  EXPECT_EQ(a.min_lr, 0.0);
  EXPECT_EQ(a.lr_decay_style, "linear");
  EXPECT_EQ(a.weight_decay, 0.01);
  EXPECT_EQ(a.adam_beta2, 0.999);
  EXPECT_EQ(a.split, "969,30,1");
  EXPECT_EQ(a.adam_beta1, 0.9);
  EXPECT_EQ(a.adam_eps, 1e-8);
  EXPECT_EQ(a.clip_grad, 1.0);
  EXPECT_EQ(a.init_method_std, 0.02);
  EXPECT_EQ(a.layernorm_epsilon, 1e-5);
  // fp16's dynamic scaler as issue 6 gives it (Megatron starts at 2^32)
  EXPECT_EQ(a.initial_loss_scale, 4096.0);
  EXPECT_EQ(a.min_loss_scale, 1.0);
  EXPECT_EQ(a.loss_scale_window, 1000);
  EXPECT_EQ(a.hysteresis, 2);
  for (const char* flag : {"no-bias-gelu-fusion", "no-masked-softmax-fusion", "deepspeed", "deepspeed_mpi",
                           "no-query-key-layer-scaling", "use-flash-attn-v1", "accumulate-allreduce-grads-in-fp32"})
    apply_option(a, flag, "true", std::string("--") + flag);
  apply_option(a, "optimizer", "adamw", "--optimizer");
  apply_option(a, "distributed-backend", "nccl", "--distributed-backend");
  apply_option(a, "hidden-dropout", "0", "--hidden-dropout");
  apply_option(a, "init-method-std", "0.006", "--init-method-std");
  a.resolve_defaults();
  a.validate();
  EXPECT_FLOAT_EQ(a.model_config().init_std, 0.006f);
  auto refused = [&](const char* flag, const char* value, const char* part) {
    TrainArgs b;
    apply_option(b, flag, value, std::string("--") + flag);
    b.resolve_defaults();
    const std::string e = error_of([&] { b.validate(); });
    EXPECT_NE(e.find(part), std::string::npos) << flag << " " << value << ": " << e;
  };
  refused("hidden-dropout", "0.1", "no dropout");
  refused("optimizer", "sgd", "adam or adamw");
  refused("distributed-backend", "hccl", "nccl, gloo, ccl or mpi");
  refused("data-impl", "lazy", "mmap and infer");
  refused("checkpoint-num-layers", "2", "only 1");
  refused("distributed-timeout-minutes", "-1", "--distributed-timeout-minutes -1");
  {  // ZeRO-3's reduce-scatters overlap only behind prefetched gathers
    TrainArgs z;
    apply_option(z, "zero-stage", "3", "--zero-stage");
    apply_option(z, "overlap-grad-reduce", "true", "--overlap-grad-reduce");
    z.resolve_defaults();
    EXPECT_NE(error_of([&] { z.validate(); }).find("needs --overlap-param-gather"), std::string::npos);
    apply_option(z, "overlap-param-gather", "true", "--overlap-param-gather");
    z.validate();
    z.zero_stage = 2, z.overlap_param_gather = false;
    z.validate();  // ZeRO-2 has no gathers in backward
  }
  for (const char* v : {"inf", "nan"}) {  // refused when read or when checked, naming the flag
    const std::string e = error_of([&] {
      TrainArgs b;
      apply_option(b, "distributed-timeout-minutes", v, "--distributed-timeout-minutes");
      b.resolve_defaults();
      b.validate();
    });
    EXPECT_NE(e.find("--distributed-timeout-minutes"), std::string::npos) << v << ": " << e;
  }
  EXPECT_EQ(TrainArgs{}.distributed_timeout_minutes, 10.0);  // Megatron's (PyTorch's process groups')
  TrainArgs t;
  apply_option(t, "distributed-timeout-minutes", "0", "--distributed-timeout-minutes");  // 0: none
  t.resolve_defaults();
  t.validate();
  EXPECT_EQ(t.distributed_timeout_minutes, 0.0);
  TrainArgs pp;
  apply_option(pp, "no-pipeline-parallel", "true", "--no-pipeline-parallel");
  pp.pipeline_model_parallel_size = 2;
  pp.resolve_defaults();
  EXPECT_NE(error_of([&] { pp.validate(); }).find("--no-pipeline-parallel"), std::string::npos);
  size_t no_ops = 0;
  for (const OptionSpec& o : train_options()) no_ops += o.no_op;
  EXPECT_GE(no_ops, 15u);
}

TEST(Args, WarmupFractionOrIterationsNotBoth) {
  TrainArgs a;
  apply_option(a, "lr-warmup-fraction", "0.01", "--lr-warmup-fraction");
  EXPECT_DOUBLE_EQ(a.lr_warmup_fraction, 0.01);
  a.train_iters = 100;
  a.resolve_defaults();
  a.validate();
  a.lr_warmup_iters = 5;
  std::string e = error_of([&] { a.validate(); });
  EXPECT_NE(e.find("--lr-warmup-fraction"), std::string::npos) << e;
  EXPECT_NE(e.find("--lr-warmup-iters"), std::string::npos) << e;
  a.lr_warmup_iters = 0;
  a.lr_warmup_fraction = 1.5;
  e = error_of([&] { a.validate(); });
  EXPECT_NE(e.find("--lr-warmup-fraction must be in [0, 1], got 1.5"), std::string::npos) << e;
}

TEST(Args, CrossOptionValidation) {
  TrainArgs a;
  a.micro_batch_size = 3;
  a.global_batch_size = 8;
  std::string e = error_of([&] { a.validate(); });
  EXPECT_NE(e.find("--global-batch-size 8"), std::string::npos) << e;
  a = TrainArgs{};
  a.resolve_defaults();
  EXPECT_EQ(a.global_batch_size, a.micro_batch_size);
  EXPECT_EQ(a.lr_decay_iters, a.train_iters);
  a.lr_decay_style = "exp";
  EXPECT_NE(error_of([&] { a.validate(); }).find("--lr-decay-style"), std::string::npos);
  a = TrainArgs{};
  a.resolve_defaults();
  a.hidden_size = 100;
  a.num_attention_heads = 3;
  EXPECT_NE(error_of([&] { a.validate(); }).find("--num-attention-heads"), std::string::npos);
  // Flags that need another: each refused naming both, and accepted once it is given.
  auto fresh = [] {
    TrainArgs x;
    x.resolve_defaults();
    return x;
  };
  a = fresh();
  a.min_lr = 2 * a.lr;
  e = error_of([&] { a.validate(); });
  EXPECT_NE(e.find("--min-lr"), std::string::npos) << e;
  EXPECT_NE(e.find("--lr"), std::string::npos) << e;
  a.min_lr = a.lr;
  EXPECT_EQ(error_of([&] { a.validate(); }), "");
  a = fresh();
  a.save_interval = 10;
  EXPECT_NE(error_of([&] { a.validate(); }).find("--save-interval needs --save"), std::string::npos);
  a.save = "runs/ck";
  EXPECT_EQ(error_of([&] { a.validate(); }), "");
  a = fresh();
  a.finetune = true;
  EXPECT_NE(error_of([&] { a.validate(); }).find("--finetune needs --load"), std::string::npos);
  a.load = "runs/ck";
  EXPECT_EQ(error_of([&] { a.validate(); }), "");
}

// --adam-eps -1 trained (the update's denominator can reach 0 or change sign); 0 stopped at the
// second iteration on a NaN from the padded vocabulary's rows, the flag unnamed.
TEST(Args, AdamEpsilonMustBePositive) {
  for (const char* eps : {"0", "-1"}) {
    TrainArgs a;
    apply_option(a, "adam-eps", eps, "--adam-eps");
    a.resolve_defaults();
    const std::string e = error_of([&] { a.validate(); });
    EXPECT_NE(e.find(std::string("--adam-eps must be > 0, got ") + eps), std::string::npos) << e;
  }
  TrainArgs a;
  apply_option(a, "adam-eps", "1e-30", "--adam-eps");
  a.resolve_defaults();
  EXPECT_NO_THROW(a.validate());
}

// A loss scale past the fp32 range overflows every scaled loss: 2^1000 (DeepSpeed's
// initial_scale_power 1000) was taken and skipped iterations halving itself.
TEST(Args, LossScalesStayInTheFp32Range) {
  for (const char* flag : {"loss-scale", "initial-loss-scale"}) {
    TrainArgs a;
    apply_option(a, flag, "1e300", std::string("--") + flag);
    a.resolve_defaults();
    const std::string e = error_of([&] { a.validate(); });
    EXPECT_NE(e.find(std::string("--") + flag + " must be < 2^128 (the fp32 range), got 1e+300"), std::string::npos) << e;
  }
  TrainArgs a;
  apply_option(a, "initial-loss-scale", "4294967296", "--initial-loss-scale");  // Megatron's 2^32
  a.resolve_defaults();
  EXPECT_NO_THROW(a.validate());
}

TEST(Args, EveryShippedModelConfigLoadsAndValidates) {
  const std::map<std::string, std::array<int64_t, 3>> alcf = {
      {"GPT125M", {12, 768, 16}}, {"GPT1_5B", {48, 1536, 24}}, {"GPT2_7B", {32, 2560, 32}},
      {"GPT6_7B", {32, 4096, 32}}, {"GPT13B", {40, 5120, 64}},  {"GPT25B", {64, 6144, 64}},
      {"GPT30B", {64, 6144, 64}},  {"GPT33B", {80, 6144, 64}},  {"GPT145B", {80, 12288, 96}}};
  for (const auto& [name, dims] : alcf) {
    TrainArgs a;
    apply_yaml_file(a, resolve_model_file(name, ""));
    EXPECT_EQ(a.num_layers, dims[0]) << name;
    EXPECT_EQ(a.hidden_size, dims[1]) << name;
    EXPECT_EQ(a.num_attention_heads, dims[2]) << name;
    a.seq_length = 2048;
    a.vocab_size = 50257;
    a.resolve_defaults();
    EXPECT_NO_THROW(a.validate()) << name;
  }
  for (const char* name : {"tiny", "small"}) {
    TrainArgs a;
    apply_yaml_file(a, resolve_model_file(name, ""));
    a.resolve_defaults();
    EXPECT_NO_THROW(a.validate()) << name;
  }
  EXPECT_NE(error_of([] { resolve_model_file("GPT9000B", ""); }).find("GPT9000B"), std::string::npos);
}

// The command line as Megatron's argparse reads it: the last occurrence of a repeated option
// counts (its values with it), '_' spellings reach CLI11 as the option's name, and an unknown
// option is named with the closest known one.
TEST(Args, RepeatedOptionsTakeTheLastAndUnknownOnesAreNamed) {
  using V = std::vector<std::string>;
  V repeated;
  const V got = last_occurrences({"--num-layers", "2", "--data-path", "a", "b", "--lr=1e-3", "--num_layers", "4",
                                  "--data-path", "c", "--mock-data", "--lr", "-2e-3", "--config", "x.yaml"},
                                 {"config", "help"}, &repeated);
  EXPECT_EQ(got, (V{"--num-layers", "4", "--data-path", "c", "--mock-data", "--lr", "-2e-3", "--config", "x.yaml"}));
  EXPECT_EQ(repeated, (V{"data-path", "lr", "num-layers"}));
  V none;
  EXPECT_EQ(last_occurrences({"--deepspeed_config", "ds.json", "-h"}, {"config", "help"}, &none),
            (V{"--deepspeed-config", "ds.json", "-h"}));
  EXPECT_TRUE(none.empty());
  EXPECT_EQ(last_occurrences({"--lr=1", "--lr=2"}, {}, nullptr), (V{"--lr=2"}));
  const std::string e = error_of([] { last_occurrences({"--mock-data", "--num-layer", "3"}, {"config", "help"}, nullptr); });
  EXPECT_NE(e.find("unknown option --num-layer (did you mean --num-layers?)"), std::string::npos) << e;
  const std::string far = error_of([] { last_occurrences({"--frobnicate"}, {"config", "help"}, nullptr); });
  EXPECT_NE(far.find("unknown option --frobnicate; --help lists them"), std::string::npos) << far;
  // a stray argument of a dropped occurrence is still an error (CLI11 would have refused it)
  const std::string stray = error_of([] { last_occurrences({"--num-layers", "2", "3", "--num-layers", "4"}, {}, nullptr); });
  EXPECT_NE(stray.find("unexpected argument '3' after --num-layers"), std::string::npos) << stray;
  EXPECT_NE(error_of([] { last_occurrences({"--mock-data", "foo", "--mock-data"}, {}, nullptr); }).find("'foo'"),
            std::string::npos);
  EXPECT_EQ(last_occurrences({"--data-path", "a", "b", "--data-path", "c"}, {}, nullptr), (V{"--data-path", "c"}));
  EXPECT_EQ(closest_option("hiden_size", {}), "hidden-size");
  EXPECT_EQ(closest_option("confg", {"config"}), "config");
}
