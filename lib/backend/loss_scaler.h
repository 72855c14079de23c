// Dynamic loss scaling for fp16 training (Megatron's DynamicGradScaler policy): the loss is
// multiplied by scale() before backward and the gradients by 1/scale() before the optimizer.
//
//   * A step whose gradients hold a NaN/Inf is skipped (not applied) and counted; the growth
//     window restarts. After `hysteresis` such steps since the last growth, the scale is
//     multiplied by `backoff` (never below `min_scale`); the hysteresis budget is only
//     replenished by a growth.
//   * After `window` consecutive good steps the scale is multiplied by `growth`.
//
// Defaults are the issue's: initial scale 2^12, window 1000, hysteresis 2, min 1. bf16 and fp32
// need no scaling (LossScaler::constant(1)). Pure host logic; the non-finite check itself is the
// backend's (CudaBackend::count_nonfinite).
#pragma once
#include <cstdint>

namespace llm {

struct LossScalerConfig {
  double initial_scale = 4096.0;
  int64_t window = 1000;
  int hysteresis = 2;
  double min_scale = 1.0;
  double growth = 2.0;
  double backoff = 0.5;
};

struct LossScalerState {  // what a checkpoint stores
  double scale = 1.0;
  int64_t good_steps = 0;  // since the last growth or overflow
  int hysteresis_left = 0;
  int64_t skipped = 0;
};

class LossScaler {
 public:
  explicit LossScaler(const LossScalerConfig& config = {});
  // A fixed scale that never changes and never skips (bf16/fp32).
  static LossScaler constant(double scale);

  double scale() const { return state_.scale; }
  // After backward: returns true if the step may be applied, false if it must be skipped.
  bool update(bool found_nonfinite);
  // Steps skipped so far (the log line's "number of skipped iterations").
  int64_t skipped() const { return state_.skipped; }
  bool dynamic() const { return dynamic_; }

  const LossScalerState& state() const { return state_; }
  void restore(const LossScalerState& s) { state_ = s; }
  const LossScalerConfig& config() const { return config_; }

 private:
  LossScalerConfig config_;
  LossScalerState state_;
  bool dynamic_ = true;
};

}  // namespace llm
