// AdamW over a ParameterSet's flat buffers, with global gradient-norm clipping.
// The flat layout puts decayed tensors first, so a step is two fused kernel calls.
#pragma once
#include "comm/communicator.h"
#include "model/parameters.h"

namespace llm {

struct OptimizerConfig {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
  double clip_grad = 1.0;  // 0 = no clipping
};

struct StepResult {
  double grad_norm = 0.0;  // before clipping
  bool finite = true;      // false: the step was skipped
  // The update also wrote the parameters' compute copy (mixed precision, every parameter owned):
  // no refresh needed before the next forward.
  bool compute_written = false;
};

class AdamW {
 public:
  // Owning the flat range [shard_begin, shard_end) (end -1: to the end; see set_shard): only that
  // range's moments are ever allocated (a sharded optimizer never holds the whole state).
  AdamW(ParameterSet& params, Backend& backend, const OptimizerConfig& config, int64_t shard_begin = 0,
        int64_t shard_end = -1);
  // One update with learning rate lr. grad_scale multiplies the gradients first (e.g. 1/loss
  // scale); clipping is applied on top. A non-finite gradient norm skips the update. With a
  // compute copy (ParameterSet::set_compute_copy) and every parameter owned, the same pass
  // rounds the updated masters into it (adamw_update_mixed; StepResult::compute_written).
  StepResult step(double lr, double grad_scale = 1.0);
  // ZeRO-1/2/3: the same update on the owned range only, from buffers holding exactly that range
  // of the parameters (w) and of the reduced gradients (g). The gradient norm adds the group's
  // shards (`shards`: the gradient group), then the tensor-parallel and pipeline parts. `low`
  // (optional): the compute copy of the same range, written in the same pass (sharded masters).
  StepResult step_shard(double lr, double grad_scale, const Tensor& w, const Tensor& g, Communicator* shards,
                        const Tensor& low = Tensor{});
  int64_t steps() const { return step_; }
  void set_steps(int64_t n) { step_ = n; }  // when resuming from a checkpoint
  const OptimizerConfig& config() const { return config_; }
  // The moments of the owned range [shard_begin(), shard_end()) of the flat parameter buffer
  // (all of it unless sharded).
  const Tensor& m() const { return m_; }
  const Tensor& v() const { return v_; }

  // ZeRO stage 1: own only the flat range [begin, end) of the optimizer state and update only
  // those parameters (the caller all-gathers the updated ranges). Resets the moments.
  void set_shard(int64_t begin, int64_t end);
  // Tensor parallelism: the gradient norm counts each sharded parameter's pieces over the group
  // once (summed across it) and each replicated parameter once.
  void set_tensor_parallel(Communicator* tp) { tp_ = tp; }
  // Pipeline parallelism: the gradient norm adds the stages' parts (one rank per stage).
  void set_pipeline(Communicator* pp) { pp_ = pp; }
  int64_t shard_begin() const { return shard_begin_; }
  int64_t shard_end() const { return shard_end_; }
  bool sharded() const { return shard_begin_ != 0 || shard_end_ != params_.numel(); }

 private:
  // Clipping and the update of the owned range from `w` and `g`, whose element 0 is logical
  // element `base` of the flat buffer, given the global sum of squared gradients.
  // `low` (or undefined): the compute copy of the same elements as `w`, written in the same pass.
  StepResult update(double lr, double grad_scale, double sum_squares, const Tensor& w, const Tensor& g, int64_t base,
                    const Tensor& low);

  ParameterSet& params_;
  Backend& backend_;
  OptimizerConfig config_;
  Tensor m_, v_;
  std::vector<std::pair<int64_t, int64_t>> decay_ranges_, no_decay_ranges_;
  Communicator* tp_ = nullptr;
  Communicator* pp_ = nullptr;
  int64_t step_ = 0;
  int64_t shard_begin_ = 0, shard_end_ = 0;
};

}  // namespace llm
