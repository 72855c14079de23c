#include "train/optimizer.h"

#include <algorithm>
#include <cmath>

namespace llm {

AdamW::AdamW(ParameterSet& params, Backend& backend, const OptimizerConfig& config, int64_t shard_begin,
             int64_t shard_end)
    : params_(params), backend_(backend), config_(config),
      decay_ranges_(params.ranges([](const ParamSpec& s) { return s.decay; })),
      no_decay_ranges_(params.ranges([](const ParamSpec& s) { return !s.decay; })) {
  set_shard(shard_begin, shard_end < 0 ? params_.numel() : shard_end);
}

void AdamW::set_shard(int64_t begin, int64_t end) {
  LLM_CHECK(0 <= begin && begin <= end && end <= params_.numel(), "optimizer shard [", begin, ", ", end,
            ") outside the ", params_.numel(), " parameters");
  shard_begin_ = begin;
  shard_end_ = end;
  m_ = backend_.zeros({end - begin});
  v_ = backend_.zeros({end - begin});
}

StepResult AdamW::step(double lr, double grad_scale) {
  const Tensor& g = params_.flat_grads();
  double sq = 0;
  const bool tp = tp_ && tp_->size() > 1, pp = pp_ && pp_->size() > 1;
  if (tp || pp) {
    // Each sharded parameter's pieces summed over the tensor-parallel group, each replicated one
    // counted once; the stages' sums added over the pipeline; a tied copy left out (its owner
    // counts it).
    double sharded = 0;
    for (auto [b, e] : params_.ranges([](const ParamSpec& s) { return s.sharded() && !s.tied_copy; }))
      sharded += backend_.sum_squares(g.flat(b, e - b));
    for (auto [b, e] : params_.ranges([](const ParamSpec& s) { return !s.sharded() && !s.tied_copy; }))
      sq += backend_.sum_squares(g.flat(b, e - b));
    sq += tp ? tp_->all_reduce_sum(sharded) : sharded;
    if (pp) sq = pp_->all_reduce_sum(sq);
  } else {
    sq = backend_.sum_squares(g);
  }
  // Owning every parameter, the update writes the whole compute copy (the masters' layout and size).
  const Tensor& low = params_.flat_compute();
  return update(lr, grad_scale, sq, params_.flat_params(), g, 0, sharded() ? Tensor{} : low);
}

StepResult AdamW::step_shard(double lr, double grad_scale, const Tensor& w, const Tensor& g, Communicator* shards,
                             const Tensor& low) {
  const int64_t b = shard_begin_, e = shard_end_;
  LLM_CHECK(w.numel() == e - b && g.numel() == e - b && (!low.defined() || low.numel() == e - b), "step_shard: ",
            w.numel(), " parameters, ", g.numel(), " gradients and ", low.defined() ? low.numel() : 0,
            " compute-copy elements for the owned range of ", e - b);
  // Squares of this rank's part of each class; the group's shards together cover the buffer.
  auto part = [&](const std::vector<std::pair<int64_t, int64_t>>& ranges) {
    double sq = 0;
    for (auto [rb, re] : ranges) {
      const int64_t lo = std::max(rb, b), hi = std::min(re, e);
      if (hi > lo) sq += backend_.sum_squares(g.flat(lo - b, hi - lo));
    }
    return sq;
  };
  double sharded = part(params_.ranges([](const ParamSpec& s) { return s.sharded() && !s.tied_copy; }));
  double replicated = part(params_.ranges([](const ParamSpec& s) { return !s.sharded() && !s.tied_copy; }));
  if (shards && shards->size() > 1) {
    sharded = shards->all_reduce_sum(sharded);
    replicated = shards->all_reduce_sum(replicated);
  }
  double sq = replicated + (tp_ && tp_->size() > 1 ? tp_->all_reduce_sum(sharded) : sharded);
  if (pp_ && pp_->size() > 1) sq = pp_->all_reduce_sum(sq);
  return update(lr, grad_scale, sq, w, g, b, low);
}

StepResult AdamW::update(double lr, double grad_scale, double sum_squares, const Tensor& w, const Tensor& g,
                         int64_t base, const Tensor& low) {
  StepResult r;
  r.grad_norm = std::sqrt(sum_squares) * grad_scale;
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
  // The owned range, intersected with the decayed and the no-decay tensors' ranges.
  const int64_t b = shard_begin_, e = shard_end_;
  auto apply = [&](const std::vector<std::pair<int64_t, int64_t>>& ranges, float wd) {
    p.weight_decay = wd;
    for (auto [rb, re] : ranges) {
      const int64_t lo = std::max(rb, b), hi = std::min(re, e);
      if (hi <= lo) continue;
      const Tensor ws = w.flat(lo - base, hi - lo), gs = g.flat(lo - base, hi - lo);
      const Tensor ms = m_.flat(lo - b, hi - lo), vs = v_.flat(lo - b, hi - lo);
      if (low.defined())
        backend_.adamw_update_mixed(ws, gs, ms, vs, p, low.flat(lo - base, hi - lo));
      else
        backend_.adamw_update(ws, gs, ms, vs, p);
    }
  };
  apply(decay_ranges_, static_cast<float>(config_.weight_decay));
  apply(no_decay_ranges_, 0.0f);
  // The two classes of ranges cover every parameter, so the whole copy was written.
  r.compute_written = low.defined();
  return r;
}

}  // namespace llm
