#include "backend/loss_scaler.h"

#include <algorithm>

#include "core/error.h"

namespace llm {

LossScaler::LossScaler(const LossScalerConfig& c) : config_(c) {
  LLM_CHECK(c.initial_scale > 0 && c.min_scale > 0 && c.min_scale <= c.initial_scale,
            "loss scaler: need 0 < min scale <= initial scale, got ", c.min_scale, " and ", c.initial_scale);
  LLM_CHECK(c.window >= 1 && c.hysteresis >= 1, "loss scaler: window and hysteresis must be >= 1, got ", c.window,
            " and ", c.hysteresis);
  LLM_CHECK(c.growth >= 1 && c.backoff > 0 && c.backoff < 1, "loss scaler: need growth >= 1 and 0 < backoff < 1");
  state_.scale = c.initial_scale;
  state_.hysteresis_left = c.hysteresis;
}

LossScaler LossScaler::constant(double scale) {
  LossScalerConfig c;
  c.initial_scale = c.min_scale = scale;
  LossScaler s(c);
  s.dynamic_ = false;
  return s;
}

bool LossScaler::update(bool found_nonfinite) {
  if (!dynamic_) {
    if (found_nonfinite) ++state_.skipped;
    return !found_nonfinite;
  }
  if (found_nonfinite) {
    ++state_.skipped;
    state_.good_steps = 0;
    if (--state_.hysteresis_left <= 0) {
      state_.scale = std::max(state_.scale * config_.backoff, config_.min_scale);
      state_.hysteresis_left = 0;
    }
    return false;
  }
  // >=: a run resumed with a smaller --loss-scale-window than the checkpoint's count grows at
  // its next good step instead of never again
  if (++state_.good_steps >= config_.window) {
    state_.good_steps = 0;
    state_.hysteresis_left = config_.hysteresis;
    state_.scale *= config_.growth;
  }
  return true;
}

}  // namespace llm
