#include "train/optimizer.h"

#include <cmath>

namespace llm {

AdamW::AdamW(ParameterSet& params, Backend& backend, const OptimizerConfig& config)
    : params_(params), backend_(backend), config_(config) {
  m_ = backend_.zeros({params_.numel()});
  v_ = backend_.zeros({params_.numel()});
}

StepResult AdamW::step(double lr, double grad_scale) {
  StepResult r;
  const Tensor& g = params_.flat_grads();
  r.grad_norm = std::sqrt(backend_.sum_squares(g)) * grad_scale;
  r.finite = std::isfinite(r.grad_norm);
  if (!r.finite) return r;
  double scale = grad_scale;
  if (config_.clip_grad > 0) {
    // Megatron's rule: coefficient = max_norm / (norm + 1e-6), applied only when < 1.
    const double coeff = config_.clip_grad / (r.grad_norm + 1e-6);
    if (coeff < 1.0) scale *= coeff;
  }
  ++step_;
  AdamWParams p;
  p.lr = static_cast<float>(lr);
  p.beta1 = static_cast<float>(config_.beta1);
  p.beta2 = static_cast<float>(config_.beta2);
  p.eps = static_cast<float>(config_.eps);
  p.step = step_;
  p.grad_scale = static_cast<float>(scale);
  const int64_t nd = params_.decay_numel(), n = params_.numel();
  const Tensor& w = params_.flat_params();
  if (nd > 0) {
    p.weight_decay = static_cast<float>(config_.weight_decay);
    backend_.adamw_update(w.flat(0, nd), g.flat(0, nd), m_.flat(0, nd), v_.flat(0, nd), p);
  }
  if (n > nd) {
    p.weight_decay = 0.0f;
    backend_.adamw_update(w.flat(nd, n - nd), g.flat(nd, n - nd), m_.flat(nd, n - nd),
                          v_.flat(nd, n - nd), p);
  }
  return r;
}

}  // namespace llm
