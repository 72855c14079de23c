// Resume is bit-exact: 2N iterations straight equal N, save, load into fresh objects, N.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <functional>
#include <fstream>

#include "core/fsync.h"
#include "data/mock_data.h"
#include "train/checkpointing.h"

using namespace llm;
namespace fs = std::filesystem;

namespace {
TrainArgs args_for_resume() {
  TrainArgs a;
  a.num_layers = 2;
  a.hidden_size = 64;
  a.num_attention_heads = 4;
  a.vocab_size = 100;  // padded to 128
  a.seq_length = 16;
  a.micro_batch_size = 2;
  a.global_batch_size = 4;
  a.lr = 2e-3;
  a.min_lr = 1e-4;
  a.lr_warmup_iters = 3;
  a.train_iters = 12;
  a.seed = 5;
  a.resolve_defaults();
  a.validate();
  return a;
}

// A save root `name` under TempDir(), emptied, holding the checkpoint of `steps` iterations of
// `a` from initialisation seed 5.
std::string trained_checkpoint(const TrainArgs& a, const SampleSource& data, const std::string& name, int steps) {
  const std::string root = ::testing::TempDir() + "/" + name;
  fs::remove_all(root);
  GPT model(a.model_config(), cpu_backend(), 5, a.seq_length);
  Trainer t(a, model, data);
  for (int i = 0; i < steps; ++i) t.train_step();
  save_training_checkpoint(root, a, t, gather_training_state(t), TokenizerRecord{{"mock", "0"}, {}}, 0);
  return root;
}
}  // namespace

TEST(CheckpointResume, SaveLoadContinueIsBitExact) {
  const TrainArgs a = args_for_resume();
  MockDataSource data(a.vocab_size, a.seq_length, 5);
  const std::string root = ::testing::TempDir() + "/resume-test";
  fs::remove_all(root);

  std::vector<double> straight;
  Tensor straight_params, straight_m;
  {
    GPT model(a.model_config(), cpu_backend(), 5, a.seq_length);
    Trainer t(a, model, data);
    for (int i = 0; i < 12; ++i) straight.push_back(t.train_step().loss);
    straight_params = model.parameters().flat_params().clone();
    straight_m = t.optimizer().m().clone();
  }
  std::vector<double> resumed;
  {
    GPT model(a.model_config(), cpu_backend(), 5, a.seq_length);
    Trainer t(a, model, data);
    for (int i = 0; i < 6; ++i) resumed.push_back(t.train_step().loss);
    save_training_checkpoint(root, a, t, gather_training_state(t), TokenizerRecord{{"mock", "0"}, {}}, 0);
  }
  {
    GPT model(a.model_config(), cpu_backend(), 999, a.seq_length);  // other init: must be overwritten
    Trainer t(a, model, data);
    LoadResult r = load_training_checkpoint(root, t, {});
    EXPECT_EQ(r.iteration, 6);
    EXPECT_EQ(r.consumed_samples, 24);
    EXPECT_EQ(t.optimizer().steps(), 6);
    for (int i = 0; i < 6; ++i) resumed.push_back(t.train_step().loss);
    EXPECT_EQ(t.iteration(), 12);
    const Tensor& p = model.parameters().flat_params();
    EXPECT_EQ(0, std::memcmp(p.raw(), straight_params.raw(), p.nbytes()));
    EXPECT_EQ(0, std::memcmp(t.optimizer().m().raw(), straight_m.raw(), straight_m.nbytes()));
  }
  for (int i = 0; i < 12; ++i) EXPECT_EQ(resumed[i], straight[i]) << "iteration " << i + 1;

  // the checkpoint is self-describing
  CheckpointReader ckpt = CheckpointReader::open(root);
  GPTConfig c = checkpoint_model_config(ckpt);
  EXPECT_EQ(c.num_layers, 2);
  EXPECT_EQ(c.vocab_size, 100);
  EXPECT_EQ(c.padded_vocab_size(), 128);
  EXPECT_EQ(checkpoint_tokenizer(ckpt).identity.kind, "mock");
  EXPECT_EQ(ckpt.verify(), 3 * static_cast<int64_t>(GPT(a.model_config(), cpu_backend(), 1, 16).parameters().specs().size()));
}

TEST(CheckpointResume, FinetuneLoadsWeightsOnlyAndMismatchesAreNamed) {
  const TrainArgs a = args_for_resume();
  MockDataSource data(a.vocab_size, a.seq_length, 5);
  const std::string root = ::testing::TempDir() + "/finetune-test";
  fs::remove_all(root);
  Tensor saved;
  {
    GPT model(a.model_config(), cpu_backend(), 5, a.seq_length);
    Trainer t(a, model, data);
    for (int i = 0; i < 3; ++i) t.train_step();
    saved = model.parameters().flat_params().clone();
    save_training_checkpoint(root, a, t, gather_training_state(t), TokenizerRecord{{"mock", "0"}, {}}, 0);
  }
  GPT model(a.model_config(), cpu_backend(), 6, a.seq_length);
  Trainer t(a, model, data);
  LoadOptions o;
  o.finetune = true;
  LoadResult r = load_training_checkpoint(root, t, o);
  EXPECT_EQ(r.iteration, 0);
  EXPECT_EQ(t.iteration(), 0);
  EXPECT_EQ(t.optimizer().steps(), 0);
  EXPECT_EQ(0, std::memcmp(model.parameters().flat_params().raw(), saved.raw(), saved.nbytes()));

  TrainArgs b = a;
  b.hidden_size = 32;
  b.num_attention_heads = 2;
  GPT other(b.model_config(), cpu_backend(), 1, b.seq_length);
  Trainer to(b, other, data);
  try {
    load_training_checkpoint(root, to, {});
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("hidden_size is 64 but the model's is 32"), std::string::npos) << e.what();
  }
}

// Megatron's OptimizerParamScheduler on load: the schedule must agree with the checkpoint's
// unless the run says whose to follow. Extending --train-iters with --lr-decay-iters 0 moves the
// decay's end: an error naming it; then each flag's choice; a finetune starts its own schedule.
// Megatron's --no-load-optim: its scheduler, loaded with the optimizer, starts again at the resumed
// iteration (warmup from 0 on the fresh moments); a later resume with the optimizer continues
// that restarted schedule, and the fp16 loss scaler starts afresh too.
TEST(CheckpointResume, NoLoadOptimRestartsTheScheduleAtTheResumedIteration) {
  const TrainArgs a = args_for_resume();  // warmup 3, decay over 12
  MockDataSource data(a.vocab_size, a.seq_length, 5);
  const std::string root = trained_checkpoint(a, data, "no-load-optim-test", 5);
  const std::string root2 = ::testing::TempDir() + "/no-load-optim-test-2";
  fs::remove_all(root2);
  std::vector<double> restarted;
  {
    GPT model(a.model_config(), cpu_backend(), 5, a.seq_length);
    Trainer t(a, model, data);
    LoadOptions o;
    o.load_optimizer = false;
    load_training_checkpoint(root, t, o);
    EXPECT_EQ(t.schedule_origin(), 5);
    for (int i = 0; i < 3; ++i) {
      const IterationStats st = t.train_step();
      EXPECT_EQ(st.iteration, 6 + i);
      EXPECT_DOUBLE_EQ(st.lr_applied, t.schedule().at(i)) << "iteration " << st.iteration;
    }
    EXPECT_DOUBLE_EQ(t.schedule().at(0), 0.0);  // the warmup's first update, again
    save_training_checkpoint(root2, a, t, gather_training_state(t), TokenizerRecord{{"mock", "0"}, {}}, 0);
    restarted.push_back(t.train_step().lr_applied);
  }
  GPT model(a.model_config(), cpu_backend(), 5, a.seq_length);
  Trainer t(a, model, data);
  load_training_checkpoint(root2, t, LoadOptions{});
  EXPECT_EQ(t.schedule_origin(), 5);
  EXPECT_DOUBLE_EQ(t.train_step().lr_applied, restarted[0]);  // iteration 9 = the restarted schedule's 4th update
  EXPECT_DOUBLE_EQ(restarted[0], t.schedule().at(3));
}

TEST(CheckpointResume, TheLearningRateScheduleMustAgreeOrBeChosen) {
  const TrainArgs a = args_for_resume();
  MockDataSource data(a.vocab_size, a.seq_length, 5);
  const std::string root = trained_checkpoint(a, data, "schedule-test", 4);
  TrainArgs longer = a;
  longer.train_iters = 20;
  longer.lr_decay_iters = 0;
  longer.resolve_defaults();  // decay over 20 instead of 12
  // The schedule a run of `args` has after loading the checkpoint with `o`.
  auto load_as = [&](const TrainArgs& args, const LoadOptions& o) {
    GPT model(args.model_config(), cpu_backend(), 5, args.seq_length);
    Trainer t(args, model, data);
    load_training_checkpoint(root, t, o);
    return t.schedule();
  };
  auto scheduled = [](SchedulerSource s, bool finetune = false) {
    LoadOptions o;
    o.scheduler = s;
    o.finetune = finetune;
    return o;
  };
  auto load = [&](SchedulerSource s, bool finetune = false) { return load_as(longer, scheduled(s, finetune)); };
  try {
    load(SchedulerSource::must_match);
    ADD_FAILURE() << "a different decay was accepted";
  } catch (const ConfigError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("decay_iters 12 but this run's is 20"), std::string::npos) << m;
    EXPECT_NE(m.find("--use-checkpoint-opt_param-scheduler"), std::string::npos) << m;
    EXPECT_NE(m.find("--override-opt_param-scheduler"), std::string::npos) << m;
  }
  EXPECT_EQ(load(SchedulerSource::checkpoint).decay_iters, 12);
  EXPECT_DOUBLE_EQ(load(SchedulerSource::checkpoint).warmup_iters, 3.0);
  EXPECT_EQ(load(SchedulerSource::this_run).decay_iters, 20);
  EXPECT_EQ(load(SchedulerSource::must_match, true).decay_iters, 20);
  {  // each of the other values alone is checked too, and named with its flag (--lr: below)
    const std::vector<std::pair<std::string, std::function<void(TrainArgs&)>>> changes = {
        {"has min_lr 0.0001 but this run's is 0.0002 (--min-lr)", [](TrainArgs& x) { x.min_lr = 2e-4; }},
        {"has warmup_iters 3 but this run's is 4 (--lr-warmup-iters", [](TrainArgs& x) { x.lr_warmup_iters = 4; }},
        {"(--lr-decay-style)", [](TrainArgs& x) { x.lr_decay_style = x.lr_decay_style == "cosine" ? "linear" : "cosine"; }}};
    for (const auto& [says, change] : changes) {
      SCOPED_TRACE(says);
      TrainArgs b = a;
      change(b);
      b.resolve_defaults();
      b.validate();
      try {
        load_as(b, scheduled(SchedulerSource::must_match));
        ADD_FAILURE() << "a different schedule was accepted";
      } catch (const ConfigError& e) {
        EXPECT_NE(std::string(e.what()).find(says), std::string::npos) << e.what();
      }
      EXPECT_NO_THROW(load_as(b, scheduled(SchedulerSource::this_run)));
    }
  }
  {  // --no-load-optim restarts the optimizer and its schedule from this run's flags (Megatron)
    LoadOptions o;
    o.load_optimizer = false;
    EXPECT_EQ(load_as(longer, o).decay_iters, 20);
  }
  {  // another global batch: Megatron's sample-counted schedule refuses it unless overridden
    TrainArgs wider = a;
    wider.global_batch_size = 8;
    wider.resolve_defaults();
    auto load_wider = [&](SchedulerSource s) { load_as(wider, scheduled(s)); };
    for (SchedulerSource s : {SchedulerSource::must_match, SchedulerSource::checkpoint}) {
      try {
        load_wider(s);
        ADD_FAILURE() << "another global batch was accepted";
      } catch (const ConfigError& e) {
        EXPECT_NE(std::string(e.what()).find("ran at global batch 4, this run's is 8 (--global-batch-size)"),
                  std::string::npos)
            << e.what();
      }
    }
    EXPECT_NO_THROW(load_wider(SchedulerSource::this_run));
  }
  longer.train_iters = 12;  // the same schedule at another peak
  longer.lr_decay_iters = 12;
  longer.lr = 1e-3;
  try {
    load(SchedulerSource::must_match);
    ADD_FAILURE() << "a different peak was accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("has lr 0.002 but this run's is 0.001 (--lr)"), std::string::npos) << e.what();
  }
}

// Consumed tokens are summed as the samples were taken: a resume at another sequence length
// carries the count on (it was samples x this run's length).
TEST(CheckpointResume, ConsumedTokensCarryOnAcrossASequenceLengthChange) {
  TrainArgs a = args_for_resume();  // seq 16, global batch 4
  a.max_position_embeddings = 16;
  MockDataSource data(a.vocab_size, a.seq_length, 5);
  const std::string root = ::testing::TempDir() + "/consumed-tokens-test";
  fs::remove_all(root);
  {
    GPT model(a.model_config(), cpu_backend(), 5, a.seq_length);
    Trainer t(a, model, data);
    for (int i = 0; i < 2; ++i) t.train_step();
    EXPECT_EQ(t.consumed_tokens(), 2 * 4 * 16);
    save_training_checkpoint(root, a, t, gather_training_state(t), TokenizerRecord{{"mock", "0"}, {}}, 0);
  }
  TrainArgs shorter = a;
  shorter.seq_length = 8;
  MockDataSource data8(shorter.vocab_size, shorter.seq_length, 5);
  GPT model(shorter.model_config(), cpu_backend(), 5, shorter.seq_length);
  Trainer t(shorter, model, data8);
  load_training_checkpoint(root, t, LoadOptions{});
  EXPECT_EQ(t.consumed_samples(), 8);
  EXPECT_EQ(t.consumed_tokens(), 128);
  t.train_step();
  EXPECT_EQ(t.consumed_tokens(), 128 + 4 * 8);
}

// A count in the metadata that is negative (a hand edit, a corrupt file) is refused naming the
// file and the key: optimizer.step -5 reached AdamW's internal check, and negative consumed
// samples, NaN iterations or schedule origin were taken as they were.
TEST(CheckpointResume, NegativeCountsInTheMetadataAreRefusedNamingTheKey) {
  const TrainArgs a = args_for_resume();
  MockDataSource data(a.vocab_size, a.seq_length, 5);
  const std::string root = trained_checkpoint(a, data, "negative-counts-test", 2);
  const std::string meta = root + "/iter_0000002/metadata.json";
  const std::string good = read_whole_file(meta, "metadata");
  struct Case {
    const char* pattern;  // "key": value as written
    const char* replacement;
    const char* key;
  };
  for (const Case& c : {Case{"\"step\": 2,", "\"step\": -5,", "optimizer.step"},
                        Case{"\"consumed_samples\": 8,", "\"consumed_samples\": -8,", "consumed_samples"},
                        Case{"\"consumed_tokens\": 128,", "\"consumed_tokens\": -1,", "consumed_tokens"},
                        Case{"\"nan_iterations\": 0", "\"nan_iterations\": -4", "nan_iterations"},
                        Case{"\"origin\": 0", "\"origin\": -3", "lr_schedule.origin"}}) {
    const size_t at = good.find(c.pattern);
    ASSERT_NE(at, std::string::npos) << c.pattern << " in " << good;
    std::string bad = good;
    bad.replace(at, std::strlen(c.pattern), c.replacement);
    std::ofstream(meta, std::ios::trunc) << bad;
    GPT model(a.model_config(), cpu_backend(), 5, a.seq_length);
    Trainer t(a, model, data);
    try {
      load_training_checkpoint(root, t, {});
      ADD_FAILURE() << c.key << " " << c.replacement << " was accepted";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(meta + ": metadata '" + c.key + "' must be a non-negative integer, got -"),
                std::string::npos)
          << e.what();
    }
  }
  std::ofstream(meta, std::ios::trunc) << good;
  GPT model(a.model_config(), cpu_backend(), 5, a.seq_length);
  Trainer t(a, model, data);
  EXPECT_EQ(load_training_checkpoint(root, t, {}).consumed_samples, 8);
}

// metadata.json describing another model than the tensors stored: llm-generate builds its model
// from the metadata, and took num_layers 1 over two stored layers (the second skipped) or a
// vocab_size past wte's rows (those rows zeros) without a word. Loading refuses both.
TEST(CheckpointResume, MetadataThatDisagreesWithTheStoredTensorsIsRefused) {
  const TrainArgs a = args_for_resume();  // 2 layers, vocab 100 (wte 128 rows)
  MockDataSource data(a.vocab_size, a.seq_length, 5);
  const std::string root = trained_checkpoint(a, data, "metadata-tensors-test", 1);
  const std::string meta = root + "/iter_0000001/metadata.json";
  const std::string good = read_whole_file(meta, "metadata");
  auto edit = [&](const std::string& from, const std::string& to) {
    std::string bad = good;
    const size_t at = bad.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    if (at != std::string::npos) bad.replace(at, from.size(), to);
    std::ofstream(meta, std::ios::trunc) << bad;
  };
  auto generate_load = [&]() -> std::string {
    try {
      const CheckpointReader ckpt = CheckpointReader::open(root);
      GPT inf(checkpoint_model_config(ckpt), cpu_backend(), InferenceOptions{DType::f32});
      load_model_parameters(ckpt, inf.parameters(), cpu_backend());
    } catch (const ConfigError& e) {
      return e.what();
    }
    return "";
  };
  auto training_load = [&](TrainArgs b) -> std::string {
    b.resolve_defaults();
    try {
      GPT model(b.model_config(), cpu_backend(), 5, b.seq_length);
      Trainer t(b, model, data);
      LoadOptions o;
      o.finetune = true;
      load_training_checkpoint(root, t, o);
    } catch (const ConfigError& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_EQ(generate_load(), "");
  edit("\"num_layers\": 2,", "\"num_layers\": 1,");
  std::string m = generate_load();
  EXPECT_NE(m.find(root + "/iter_0000001: the checkpoint stores tensor 'h.1."), std::string::npos) << m;
  EXPECT_NE(m.find("which the model of its metadata.json (1 layers) has no parameter for"), std::string::npos) << m;
  TrainArgs one_layer = a;
  one_layer.num_layers = 1;
  m = training_load(one_layer);  // the flags agree with the metadata, not with the tensors
  EXPECT_NE(m.find("the checkpoint stores tensor 'h.1."), std::string::npos) << m;
  edit("\"vocab_size\": 100,", "\"vocab_size\": 200,");
  m = generate_load();
  EXPECT_NE(m.find(root + "/iter_0000001: tensor 'wte' (model) has 128 rows but its metadata.json's vocab_size is 200"),
            std::string::npos)
      << m;
  std::ofstream(meta, std::ios::trunc) << good;
  EXPECT_EQ(generate_load(), "");
  EXPECT_EQ(training_load(a), "");
}

// The tokenizer files a checkpoint records are copies inside it: a path out of it is refused
// (it loaded whatever file was there as the checkpoint's tokenizer).
TEST(CheckpointResume, TokenizerFilesAreInsideTheCheckpoint) {
  const TrainArgs a = args_for_resume();
  MockDataSource data(a.vocab_size, a.seq_length, 5);
  const std::string root = ::testing::TempDir() + "/tokenizer-files-test";
  fs::remove_all(root);
  const std::string model = ::testing::TempDir() + "/tokenizer-files-test.model";
  std::ofstream(model) << "not really a model";
  {
    GPT model_(a.model_config(), cpu_backend(), 5, a.seq_length);
    Trainer t(a, model_, data);
    save_training_checkpoint(root, a, t, gather_training_state(t), TokenizerRecord{{"mock", "0"}, {{"model", model}}}, 0);
  }
  const std::string meta = root + "/iter_0000000/metadata.json";
  const std::string good = read_whole_file(meta, "metadata");
  const std::string rec = "\"model\": \"tokenizer/tokenizer-files-test.model\"";
  ASSERT_NE(good.find(rec), std::string::npos) << good;
  EXPECT_EQ(checkpoint_tokenizer(CheckpointReader::open(root)).files.at("model"),
            root + "/iter_0000000/tokenizer/tokenizer-files-test.model");
  for (const char* bad : {"../../tokenizer-files-test.model", "/etc/passwd", "tokenizer/../../x.model", ""}) {
    std::string text = good;
    text.replace(text.find(rec), rec.size(), std::string("\"model\": \"") + bad + "\"");
    std::ofstream(meta, std::ios::trunc) << text;
    try {
      checkpoint_tokenizer(CheckpointReader::open(root));
      ADD_FAILURE() << bad << " was accepted";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(meta + ": metadata 'files.model' must be a path inside the checkpoint, not '" +
                                           bad + "'"),
                std::string::npos)
          << e.what();
    }
  }
}
