// Mixed-precision training (--bf16, --fp16 with dynamic loss scaling) against the fp32 run: the
// bf16/fp16 loss curves stay within their types' tolerance of the fp32 curve while learning,
// the compute weights are the rounded masters, skipped fp16 iterations leave every parameter and
// the schedule untouched, and a checkpoint carries the loss scaler's state.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>

#include "backend/profiling_backend.h"
#include "data/mock_data.h"
#include "support/max_or_nan.h"
#include "train/checkpointing.h"
#include "train/tiny_args.h"

using namespace llm;
namespace fs = std::filesystem;

namespace {
TrainArgs tiny_args() { return tiny_train_args(60); }

struct Curve {
  std::vector<double> loss, grad_norm;
};

Curve run(const TrainArgs& a, int iters) {
  MockDataSource data(a.vocab_size, a.seq_length, static_cast<uint64_t>(a.seed));
  GPT model(a.model_config(), cpu_backend(), static_cast<uint64_t>(a.seed), a.seq_length);
  Trainer t(a, model, data);
  Curve c;
  for (int i = 0; i < iters; ++i) {
    const IterationStats st = t.train_step();
    EXPECT_TRUE(st.finite && !st.skipped) << "iteration " << i + 1;
    c.loss.push_back(st.loss);
    c.grad_norm.push_back(st.grad_norm);
  }
  return c;
}

float rounded(float x, DType t) { return t == DType::bf16 ? bf16_to_f32(f32_to_bf16(x)) : f16_to_f32(f32_to_f16(x)); }
float low_value(const Tensor& t, int64_t i) {
  const uint16_t v = static_cast<const uint16_t*>(t.raw())[i];
  return t.dtype() == DType::bf16 ? bf16_to_f32(v) : f16_to_f32(v);
}
}  // namespace

// The curves of a learning run: each iteration's loss within `tol` (relative) of fp32's, and the
// run learns as much (the last losses ~1.5 nats below the first).
class MixedPrecisionCurve : public ::testing::TestWithParam<DType> {};

TEST_P(MixedPrecisionCurve, TracksTheFp32Curve) {
  const DType t = GetParam();
  TrainArgs a = tiny_args();
  const Curve ref = run(a, 60);
  a.bf16 = t == DType::bf16;
  a.fp16 = t == DType::f16;
  const Curve low = run(a, 60);
  // bf16 keeps 8 significant bits (unit roundoff 2^-9), fp16 11 (2^-12). The loss is a mean over
  // 256 tokens, so per-element rounding mostly averages out; what remains is the drift of 60
  // updates from fp32's. The gradient norm (unscaled: fp16's loss scale divided out) is checked
  // too: Adam would hide a wrongly scaled gradient in the loss curve. Measured worst differences
  // are printed; the bounds leave 7-11x margin.
  const double loss_tol = t == DType::bf16 ? 4e-3 : 4e-4, norm_tol = t == DType::bf16 ? 2e-2 : 3e-3;
  double worst = 0, worst_norm = 0;
  bool differs = false;
  for (size_t i = 0; i < ref.loss.size(); ++i) {
    const double rel = std::fabs(low.loss[i] - ref.loss[i]) / ref.loss[i];
    const double reln = std::fabs(low.grad_norm[i] - ref.grad_norm[i]) / ref.grad_norm[i];
    worst = llm::testing::max_or_nan(worst, rel);
    worst_norm = llm::testing::max_or_nan(worst_norm, reln);
    differs = differs || low.loss[i] != ref.loss[i];
    EXPECT_LT(rel, loss_tol) << "iteration " << i + 1 << ": loss " << low.loss[i] << " vs fp32 " << ref.loss[i];
    EXPECT_LT(reln, norm_tol) << "iteration " << i + 1 << ": grad norm " << low.grad_norm[i] << " vs fp32 "
                              << ref.grad_norm[i];
  }
  EXPECT_TRUE(differs) << "identical to fp32: the low-precision path did not run";
  const std::vector<double>& l = low.loss;
  const double first = (l[0] + l[1] + l[2]) / 3, last = (l[57] + l[58] + l[59]) / 3;
  EXPECT_LT(last, first - 1.2) << "first " << first << " last " << last;
  std::printf("  %s: worst relative difference from fp32 over 60 iterations: loss %.2e, grad norm %.2e\n",
              std::string(dtype_name(t)).c_str(), worst, worst_norm);
}

INSTANTIATE_TEST_SUITE_P(Types, MixedPrecisionCurve, ::testing::Values(DType::bf16, DType::f16),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

TEST(MixedPrecision, ComputeWeightsAreTheRoundedMastersAfterEachStep) {
  TrainArgs a = tiny_args();
  a.bf16 = true;
  MockDataSource data(a.vocab_size, a.seq_length, 7);
  ProfilingBackend ops(cpu_backend());  // which ops the steps call
  GPT model(a.model_config(), ops, 7, a.seq_length);
  Trainer t(a, model, data);
  EXPECT_EQ(model.precision(), DType::bf16);
  const ParameterSet& ps = model.parameters();
  ASSERT_TRUE(ps.flat_compute().defined());
  EXPECT_EQ(ps.flat_compute().dtype(), DType::bf16);
  for (int step = 0; step < 3; ++step) {
    if (step == 1) ops.reset();  // (the first step rounds the masters it starts from)
    t.train_step();
    t.sync_compute_weights();  // what the next step starts with
    const float* m = ps.flat_params().data<float>();
    int64_t bad = 0;
    for (int64_t i = 0; i < ps.numel(); ++i) bad += low_value(ps.flat_compute(), i) != rounded(m[i], DType::bf16);
    EXPECT_EQ(bad, 0) << "step " << step + 1;
  }
  // Steps 2 and 3: the update writes the copy in the same pass (adamw_update_mixed, once per
  // range of decayed and of undecayed tensors), so no separate rounding pass (convert) runs.
  const auto& prof = ops.profile();
  const size_t ranges = ps.ranges([](const ParamSpec& s) { return s.decay; }).size() +
                        ps.ranges([](const ParamSpec& s) { return !s.decay; }).size();
  ASSERT_TRUE(prof.count("adamw_update_mixed"));
  EXPECT_EQ(prof.at("adamw_update_mixed").calls, int64_t(2 * ranges));
  EXPECT_EQ(prof.count("adamw_update"), 0u);
  EXPECT_EQ(prof.count("convert"), 0u);
  // The model computes with them: the linear layers' weights are views of the bf16 copy.
  EXPECT_EQ(ps.compute_param("h.0.attn.c_attn.weight").dtype(), DType::bf16);
  EXPECT_EQ(ps.compute_param("h.0.ln_1.weight").raw(), ps.flat_compute().flat(ps.spec("h.0.ln_1.weight").offset, 1).raw());
  // The state counts them: f32 masters (4 bytes) + bf16 copy (2 bytes) per parameter.
  EXPECT_EQ(t.state_bytes().parameters, 6 * ps.numel());
}

TEST(MixedPrecision, Fp16OverflowsSkipTheUpdateAndHalveTheScale) {
  TrainArgs a = tiny_args();
  a.fp16 = true;
  a.initial_loss_scale = std::ldexp(1.0, 40);  // the scaled gradients overflow fp16
  a.hysteresis = 1;
  a.loss_scale_window = 4;
  a.validate();
  MockDataSource data(a.vocab_size, a.seq_length, 7);
  GPT model(a.model_config(), cpu_backend(), 7, a.seq_length);
  Trainer t(a, model, data);
  int64_t skipped = 0, applied = 0;
  double lr_first_applied = -1;
  for (int i = 0; i < 40; ++i) {
    const Tensor before = model.parameters().flat_params().clone();
    const double scale = t.loss_scaler().scale();
    const IterationStats st = t.train_step();
    EXPECT_EQ(st.loss_scale, scale);
    EXPECT_TRUE(std::isfinite(st.loss)) << "iteration " << i + 1;
    EXPECT_TRUE(st.finite) << "an fp16 overflow is not a NaN iteration";
    if (st.skipped) {
      ++skipped;
      EXPECT_EQ(0, std::memcmp(before.raw(), model.parameters().flat_params().raw(), before.nbytes()))
          << "iteration " << i + 1 << " was skipped but changed the parameters";
      EXPECT_EQ(t.loss_scaler().scale(), scale / 2) << "hysteresis 1: every overflow halves the scale";
      // Skipped iterations do not advance the schedule: the rate stays the one after the
      // applied updates, for this iteration and the log line after it.
      EXPECT_DOUBLE_EQ(st.lr_applied, t.schedule().at(applied));
      EXPECT_DOUBLE_EQ(st.lr, t.schedule().at(applied));
    } else {
      if (applied == 0) lr_first_applied = st.lr_applied;
      EXPECT_DOUBLE_EQ(st.lr_applied, t.schedule().at(applied));
      ++applied;
      EXPECT_DOUBLE_EQ(st.lr, t.schedule().at(applied));
    }
  }
  EXPECT_GE(skipped, 10) << "2^40 must overflow for at least 10 halvings";
  EXPECT_EQ(t.loss_scaler().skipped(), skipped);
  EXPECT_EQ(t.optimizer().steps(), applied);
  EXPECT_DOUBLE_EQ(lr_first_applied, t.schedule().at(0));
  EXPECT_LT(t.loss_scaler().scale(), std::ldexp(1.0, 30));
  EXPECT_EQ(t.nan_iterations(), 0);
}

TEST(MixedPrecision, Fp16WithAFixedScaleSkipsOverflowsWithoutBackingOff) {
  TrainArgs a = tiny_args();
  a.fp16 = true;
  a.loss_scale = std::ldexp(1.0, 40);  // fixed, and overflowing every time
  MockDataSource data(a.vocab_size, a.seq_length, 7);
  GPT model(a.model_config(), cpu_backend(), 7, a.seq_length);
  Trainer t(a, model, data);
  const Tensor before = model.parameters().flat_params().clone();
  for (int i = 0; i < 3; ++i) {
    const IterationStats st = t.train_step();
    EXPECT_TRUE(st.skipped && st.finite) << "iteration " << i + 1 << ": an overflow, not a NaN iteration";
    EXPECT_EQ(st.loss_scale, std::ldexp(1.0, 40));
    EXPECT_DOUBLE_EQ(st.lr_applied, t.schedule().at(0));
    EXPECT_DOUBLE_EQ(st.lr, t.schedule().at(0));
  }
  EXPECT_EQ(t.loss_scaler().skipped(), 3);
  EXPECT_EQ(t.optimizer().steps(), 0);
  EXPECT_EQ(t.nan_iterations(), 0);
  EXPECT_EQ(0, std::memcmp(before.raw(), model.parameters().flat_params().raw(), before.nbytes()));
}

TEST(MixedPrecision, CheckpointCarriesTheLossScaler) {
  TrainArgs a = tiny_args();
  a.fp16 = true;
  a.initial_loss_scale = std::ldexp(1.0, 36);
  a.hysteresis = 1;
  a.validate();
  MockDataSource data(a.vocab_size, a.seq_length, 7);
  const std::string root = ::testing::TempDir() + "/fp16-scaler";
  fs::remove_all(root);
  LossScalerState saved;
  std::vector<double> straight;
  {
    GPT model(a.model_config(), cpu_backend(), 7, a.seq_length);
    Trainer t(a, model, data);
    // 2^36 overflows until the backoffs bring it down; then a few good steps count towards the
    // next growth (so that a load dropping that count would show)
    for (int i = 0; i < 60 && (t.loss_scaler().skipped() == 0 || t.loss_scaler().state().good_steps < 3); ++i)
      t.train_step();
    saved = t.loss_scaler().state();
    ASSERT_GT(saved.skipped, 0);
    ASSERT_EQ(saved.good_steps, 3);
    save_training_checkpoint(root, a, t, gather_training_state(t), TokenizerRecord{{"mock", "0"}, {}}, 0);
    for (int i = 0; i < 4; ++i) straight.push_back(t.train_step().loss);
  }
  GPT model(a.model_config(), cpu_backend(), 99, a.seq_length);
  Trainer t(a, model, data);
  load_training_checkpoint(root, t, {});
  EXPECT_EQ(t.loss_scaler().scale(), saved.scale);
  EXPECT_EQ(t.loss_scaler().skipped(), saved.skipped);
  EXPECT_EQ(t.loss_scaler().state().good_steps, saved.good_steps);
  EXPECT_EQ(t.loss_scaler().state().hysteresis_left, saved.hysteresis_left);
  // and the run continues bit-identically (the compute copy is refreshed from the loaded masters)
  for (int i = 0; i < 4; ++i) {
    const IterationStats st = t.train_step();
    EXPECT_EQ(st.loss, straight[size_t(i)]) << "iteration " << st.iteration;
  }
}

TEST(MixedPrecision, ArgumentsAreChecked) {
  TrainArgs a = tiny_args();
  a.bf16 = a.fp16 = true;
  EXPECT_THROW(a.validate(), ConfigError);
  a = tiny_args();
  a.fp16 = true;
  a.min_loss_scale = 8;
  a.initial_loss_scale = 4;
  EXPECT_THROW(a.validate(), ConfigError);
  a = tiny_args();
  a.hysteresis = 0;
  EXPECT_THROW(a.validate(), ConfigError);
  EXPECT_EQ(tiny_args().compute_dtype(), DType::f32);
}
