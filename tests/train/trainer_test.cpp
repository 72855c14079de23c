#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "data/mock_data.h"
#include "support/max_or_nan.h"
#include "train/tiny_args.h"
#include "train/trainer.h"

using namespace llm;

namespace {
TrainArgs tiny_args() { return tiny_train_args(80); }

std::vector<double> run(const TrainArgs& a, int iters, Tensor* final_params = nullptr,
                        std::vector<double>* grad_norms = nullptr) {
  MockDataSource data(a.vocab_size, a.seq_length, static_cast<uint64_t>(a.seed));
  GPT model(a.model_config(), cpu_backend(), static_cast<uint64_t>(a.seed), a.seq_length);
  Trainer t(a, model, data);
  std::vector<double> losses;
  for (int i = 0; i < iters; ++i) {
    const IterationStats st = t.train_step();
    losses.push_back(st.loss);
    if (grad_norms) grad_norms->push_back(st.grad_norm);
  }
  if (final_params) *final_params = model.parameters().flat_params().clone();
  return losses;
}
}  // namespace

TEST(MockData, DeterministicAndLearnable) {
  MockDataSource d(100, 16, 5);
  std::vector<int32_t> a(17), b(17);
  d.sample(42, a.data());
  d.sample(42, b.data());
  EXPECT_EQ(a, b);
  d.sample(43, b.data());
  EXPECT_NE(a, b);
  MockDataSource v(100, 16, 5, "valid");
  v.sample(42, b.data());
  EXPECT_NE(a, b);
  for (int32_t x : a) EXPECT_TRUE(x >= 0 && x < 100);
  EXPECT_LT(d.entropy(), 0.5 * std::log(100.0));
}

TEST(Trainer, LossFallsOnTheMockStream) {
  TrainArgs a = tiny_args();
  std::vector<double> l = run(a, 80);
  const double first = (l[0] + l[1] + l[2]) / 3, last = (l[77] + l[78] + l[79]) / 3;
  EXPECT_NEAR(first, std::log(128.0), 0.3);  // starts at chance
  EXPECT_LT(last, first - 1.5) << "first " << first << " last " << last;
  MockDataSource d(a.vocab_size, a.seq_length, 7);
  EXPECT_GT(last, d.entropy() - 0.05);  // cannot beat the stream's entropy
}

TEST(Trainer, SameSeedGivesBitIdenticalLosses) {
  TrainArgs a = tiny_args();
  Tensor p1, p2;
  std::vector<double> l1 = run(a, 12, &p1), l2 = run(a, 12, &p2);
  for (size_t i = 0; i < l1.size(); ++i) EXPECT_EQ(l1[i], l2[i]) << "iteration " << i + 1;
  EXPECT_EQ(0, std::memcmp(p1.raw(), p2.raw(), p1.nbytes()));
  a.seed = 8;
  EXPECT_NE(run(a, 1)[0], l1[0]);
}

TEST(Trainer, GradientAccumulationMatchesOneBigMicroBatch) {
  TrainArgs a = tiny_args();
  a.micro_batch_size = 8;  // one micro-batch of 8
  TrainArgs b = tiny_args();
  b.micro_batch_size = 2;  // four micro-batches of 2
  Tensor pa, pb;
  std::vector<double> na, nb;  // the gradient norms too: Adam's step is blind to a uniform scale
  std::vector<double> la = run(a, 3, &pa, &na), lb = run(b, 3, &pb, &nb);
  for (int i = 0; i < 3; ++i) {
    EXPECT_NEAR(la[i], lb[i], 1e-5 * la[i]);
    EXPECT_NEAR(na[size_t(i)], nb[size_t(i)], 1e-5 * na[size_t(i)]) << "gradient norm, iteration " << i + 1;
  }
  double worst = 0;
  for (int64_t i = 0; i < pa.numel(); ++i)
    worst = llm::testing::max_or_nan(worst, static_cast<double>(std::abs(pa.data<float>()[i] - pb.data<float>()[i])));
  EXPECT_LT(worst, 2e-5);
}

// Megatron's OptimizerParamScheduler steps after each update: iteration i runs at the rate after
// i - 1 updates (0 in the first warmup iteration: the weights do not move, the moments do) and
// its log line shows the rate after i. Warm-up 4 to lr 1, then cosine down to 0.1 at 12.
TEST(Trainer, LearningRateFollowsMegatronsScheduler) {
  TrainArgs a = tiny_train_args(12, 32, 4);
  a.lr = 1.0;
  a.min_lr = 0.1;
  a.lr_decay_style = "cosine";
  a.resolve_defaults();
  a.validate();
  MockDataSource data(a.vocab_size, a.seq_length, 7);
  GPT model(a.model_config(), cpu_backend(), 7, a.seq_length);
  Trainer t(a, model, data);
  const Tensor before = model.parameters().flat_params().clone();
  const std::vector<double> megatron = {0.0, 0.25, 0.5, 0.75, 1.0};  // get_lr at num_steps 0..4
  for (int i = 1; i <= 12; ++i) {
    const IterationStats st = t.train_step();
    const double cosine_before = 0.1 + 0.45 * (std::cos(M_PI * (i - 1 - 4) / 8.0) + 1.0);
    const double cosine_after = 0.1 + 0.45 * (std::cos(M_PI * (i - 4) / 8.0) + 1.0);
    EXPECT_NEAR(st.lr_applied, i - 1 <= 4 ? megatron[size_t(i - 1)] : cosine_before, 1e-12) << "iteration " << i;
    EXPECT_NEAR(st.lr, i <= 4 ? megatron[size_t(i)] : cosine_after, 1e-12) << "iteration " << i;
    if (i == 1) {
      EXPECT_EQ(0, std::memcmp(before.raw(), model.parameters().flat_params().raw(), before.nbytes()))
          << "the first warm-up update runs at rate 0";
    }
  }
  EXPECT_NEAR(t.schedule().at(12), 0.1, 1e-12);
}

TEST(Optimizer, DecayOnlyOnMatricesAndClipping) {
  TrainArgs a = tiny_args();
  GPT model(a.model_config(), cpu_backend(), 1, a.seq_length);
  ParameterSet& ps = model.parameters();
  // biases are zero-initialised: make them non-zero so decay would show
  ps.param("h.0.attn.c_attn.bias").fill(0.5f);
  OptimizerConfig oc;
  oc.weight_decay = 0.5;
  oc.clip_grad = 0;
  AdamW opt(ps, cpu_backend(), oc);
  model.zero_grad();  // zero gradient: Adam's update is 0, only decay acts
  // Megatron's parameter groups: decay on every matrix, both embeddings included, none on the
  // 1-D biases and LayerNorm parameters
  for (const ParamSpec& s : ps.specs()) EXPECT_EQ(s.decay, s.shape.size() == 2) << s.name;
  const float w0 = ps.param("h.0.mlp.c_fc.weight").data<float>()[3], p0 = ps.param("wpe").data<float>()[3];
  opt.step(0.1);
  EXPECT_FLOAT_EQ(ps.param("h.0.mlp.c_fc.weight").data<float>()[3], w0 * (1 - 0.1f * 0.5f));
  EXPECT_FLOAT_EQ(ps.param("wpe").data<float>()[3], p0 * (1 - 0.1f * 0.5f));
  EXPECT_FLOAT_EQ(ps.param("h.0.attn.c_attn.bias").data<float>()[0], 0.5f);
  EXPECT_FLOAT_EQ(ps.param("ln_f.weight").data<float>()[0], 1.0f);

  // clipping: grad norm 10 clipped to 1 -> Adam sees g/10; the reported norm is pre-clip
  OptimizerConfig oc2;
  oc2.clip_grad = 1.0;
  oc2.weight_decay = 0;
  AdamW clipped(ps, cpu_backend(), oc2);
  Tensor g = ps.flat_grads();
  g.fill(10.0f / std::sqrt(static_cast<float>(g.numel())));
  StepResult r = clipped.step(0.0);
  EXPECT_NEAR(r.grad_norm, 10.0, 1e-3);
  EXPECT_NEAR(clipped.m().data<float>()[0], 0.1 * (1.0 / std::sqrt(static_cast<double>(g.numel()))), 1e-7);
}

// Megatron's clipping only ever scales down: a gradient whose norm is under --clip-grad reaches
// Adam as it is (the first moment after one step is (1 - beta1) g), one over it is scaled by
// clip / (norm + 1e-6). Adam's update alone cannot tell (it is nearly invariant to a gradient's
// scale), so the moment is what is checked.
TEST(Optimizer, ClippingScalesOnlyANormOverTheLimit) {
  TrainArgs a = tiny_args();
  GPT model(a.model_config(), cpu_backend(), 1, a.seq_length);
  ParameterSet& ps = model.parameters();
  OptimizerConfig oc;
  oc.clip_grad = 1.0;
  oc.weight_decay = 0;
  for (double norm : {0.25, 0.999, 1.5, 4.0}) {
    SCOPED_TRACE("gradient norm " + std::to_string(norm));
    AdamW opt(ps, cpu_backend(), oc);
    Tensor g = ps.flat_grads();
    const double each = norm / std::sqrt(static_cast<double>(g.numel()));
    g.fill(static_cast<float>(each));
    const StepResult r = opt.step(0.0);
    EXPECT_NEAR(r.grad_norm, norm, 1e-5 * norm);
    const double seen = each * std::min(1.0, oc.clip_grad / (norm + 1e-6));
    EXPECT_NEAR(opt.m().data<float>()[0], (1 - oc.beta1) * seen, 1e-5 * (1 - oc.beta1) * seen);
  }
}

// --lr-warmup-fraction is a share of the decay iterations (Megatron: lr_warmup_steps = fraction x
// lr_decay_steps), which --lr-decay-iters sets apart from --train-iters.
TEST(Trainer, WarmupFractionIsAShareOfTheDecay) {
  TrainArgs a = tiny_train_args(12, 32, 0);
  a.lr_decay_iters = 40;
  a.lr_warmup_fraction = 0.25;
  a.resolve_defaults();
  a.validate();
  MockDataSource data(a.vocab_size, a.seq_length, 7);
  GPT model(a.model_config(), cpu_backend(), 7, a.seq_length);
  Trainer t(a, model, data);
  EXPECT_EQ(t.schedule().decay_iters, 40);
  EXPECT_DOUBLE_EQ(t.schedule().warmup_iters, 10.0);
  EXPECT_DOUBLE_EQ(t.train_step().lr, a.lr * 0.1);  // after the first of the 10 warm-up updates
}

TEST(Trainer, NonFiniteLossIsDetectedAndSkipped) {
  TrainArgs a = tiny_args();
  MockDataSource data(a.vocab_size, a.seq_length, 7);
  GPT model(a.model_config(), cpu_backend(), 7, a.seq_length);
  Trainer t(a, model, data);
  t.train_step();
  model.parameters().param("ln_f.weight").data<float>()[0] = NAN;
  Tensor before = model.parameters().flat_params().clone();
  IterationStats st = t.train_step();
  EXPECT_FALSE(st.finite);
  EXPECT_EQ(t.nan_iterations(), 1);
  Tensor after = model.parameters().flat_params();
  // skipped: nothing changed (compare bytes so the NaN compares equal to itself)
  EXPECT_EQ(0, std::memcmp(before.raw(), after.raw(), before.nbytes()));
}

// ZeRO-1's arithmetic: two optimizers owning the two halves of the flat buffer, each updating
// only its range, give exactly the parameters of one optimizer owning everything.
TEST(Optimizer, ShardedRangesReproduceTheFullUpdate) {
  TrainArgs a = tiny_args();
  MockDataSource data(a.vocab_size, a.seq_length, 7);
  GPT full(a.model_config(), cpu_backend(), 2, a.seq_length), split(a.model_config(), cpu_backend(), 2, a.seq_length);
  OptimizerConfig oc;
  AdamW whole(full.parameters(), cpu_backend(), oc);
  const int64_t n = split.parameters().numel(), h = n / 2 + 12345;  // the halves straddle decay/no-decay
  // (one made owning its range, one re-sharded: the same optimizer either way)
  AdamW lo(split.parameters(), cpu_backend(), oc, 0, h), hi(split.parameters(), cpu_backend(), oc);
  EXPECT_EQ(lo.m().numel(), h);  // only the owned range's moments, from the start
  EXPECT_EQ(lo.shard_end(), h);
  hi.set_shard(h, n);
  Tensor tokens = Tensor::empty({4, a.seq_length}, DType::i32), targets = Tensor::empty({4, a.seq_length}, DType::i32);
  std::vector<int32_t> s(a.seq_length + 1);
  for (int step = 0; step < 3; ++step) {
    for (int r = 0; r < 4; ++r) {
      data.sample(step * 4 + r, s.data());
      std::copy(s.begin(), s.end() - 1, tokens.data<int32_t>() + r * a.seq_length);
      std::copy(s.begin() + 1, s.end(), targets.data<int32_t>() + r * a.seq_length);
    }
    for (GPT* m : {&full, &split}) {
      m->zero_grad();
      m->forward(tokens, targets);
      m->backward();
    }
    whole.step(1e-3);
    lo.step(1e-3);
    hi.step(1e-3);
  }
  EXPECT_EQ(0, std::memcmp(full.parameters().flat_params().raw(), split.parameters().flat_params().raw(),
                           full.parameters().flat_params().nbytes()));
  EXPECT_EQ(lo.m().numel() + hi.m().numel(), n);
}
