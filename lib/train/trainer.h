// The training step: gradient accumulation over micro-batches, clipping, AdamW with the LR
// schedule, and non-finite detection. Single process here; the data-parallel reduction plugs
// in between backward and the optimizer step.
#pragma once
#include <algorithm>
#include <functional>
#include <memory>
#include <tuple>

#include "backend/loss_scaler.h"
#include "comm/communicator.h"
#include "data/sample_source.h"
#include "model/gpt.h"
#include "train/args.h"
#include "train/lr_schedule.h"
#include "train/optimizer.h"

namespace llm {

struct IterationStats {
  int64_t iteration = 0;
  double loss = 0;       // mean over the global batch
  double grad_norm = 0;  // before clipping
  double lr_applied = 0;  // the rate this iteration's update used (Megatron's: the schedule after the previous updates)
  double lr = 0;          // the rate after this iteration, as Megatron's log line shows it
  bool finite = true;    // false: loss or gradient was NaN/Inf and the update was skipped
  bool skipped = false;  // the update was not applied (non-finite, or an fp16 overflow)
  double loss_scale = 1;  // the loss scale this iteration ran with (fp16; 1 otherwise)
  double seconds = 0;
  double data_seconds = 0;  // of which: reading samples (shows whether input is a bottleneck)
  // Phase timers (Megatron's timer names), seconds on this rank.
  double forward_backward_seconds = 0, grads_all_reduce_seconds = 0, params_all_gather_seconds = 0,
         optimizer_seconds = 0;
  double pipeline_seconds = 0;  // in pipeline sends and receives (waiting for neighbours included)
};

class Trainer {
 public:
  // dp: the data-parallel group (nullptr or size 1 = one replica). Each replica takes its
  // slice of every global batch; gradients are summed over the group before the update, so
  // every replica applies the same step.
  Trainer(const TrainArgs& args, GPT& model, const SampleSource& train, Communicator* dp = nullptr);
  IterationStats train_step();
  // Mean loss over `iters` global batches of `valid` (Megatron's --eval-iters: iterations),
  // starting at sample 0 (the same samples every evaluation, so the numbers are comparable).
  // Each replica runs its slice of every batch, as in training, and the losses are summed over
  // the gradient group: collective over it (every rank of the layout calls it).
  double evaluate(const SampleSource& valid, int64_t iters);

  int64_t iteration() const { return iteration_; }
  int64_t consumed_samples() const { return consumed_samples_; }
  // Tokens of the samples consumed, summed as they were taken (a resume at another --seq-length
  // carries the count on, as Megatron-DeepSpeed's consumed_train_tokens).
  int64_t consumed_tokens() const { return consumed_tokens_; }
  void restore_consumed_tokens(int64_t tokens) { consumed_tokens_ = tokens; }
  int64_t nan_iterations() const { return nan_iterations_; }
  const TrainArgs& args() const { return args_; }
  // fp16's loss scaling (dynamic, or a fixed --loss-scale; a constant 1 in bf16 and fp32);
  // checkpoints keep its state.
  LossScaler& loss_scaler() { return scaler_; }
  const LossScaler& loss_scaler() const { return scaler_; }
  const LRSchedule& schedule() const { return schedule_; }
  void set_schedule(const LRSchedule& s) { schedule_ = s; }  // a resumed run that continues the checkpoint's
  AdamW& optimizer() { return optimizer_; }
  const AdamW& optimizer() const { return optimizer_; }
  GPT& model() { return model_; }
  const GPT& model() const { return model_; }
  // The full AdamW moments (host, flat). Collective under ZeRO-1 (every rank must call it);
  // otherwise the optimizer's own buffers.
  std::pair<Tensor, Tensor> full_optimizer_state();
  // The full flat parameters (host). Collective over the gradient group under ZeRO-3 and with
  // sharded masters, whose ranks hold only their shards in f32; otherwise the model's buffer.
  Tensor full_parameters();
  // Checkpoint loading tensor by tensor: whether this rank keeps any of parameter `s` (under
  // ZeRO-3 only its shard and the resident tensors), and storing its values (host, s.shape).
  bool keeps_parameter(const ParamSpec& s) const;
  void set_parameter(const ParamSpec& s, const Tensor& values);
  // Mixed precision: finishes every overlapped parameter gather, then rounds the f32 parameters
  // into the model's compute copy if they changed (under ZeRO-3 the resident tensors' only: a
  // layer's copy comes with its gather; with sharded masters never: the copy is gathered). train_step and evaluate do the same for the resident
  // tensors alone (sync_compute_weights_resident), each layer's gather finishing in its hook.
  void sync_compute_weights();
  // The parameters were written behind the trainer's back (a checkpoint loaded in place): the
  // compute copy is refreshed before the next use.
  void mark_parameters_changed() { compute_stale_ = true; }
  // Clears the hooks it set on the model (they point at this trainer); what is in flight is waited for.
  ~Trainer();
  // Bytes this rank holds for parameters, gradients and optimizer state (model states, ZeRO's
  // accounting; activations excluded).
  struct StateBytes {
    int64_t parameters = 0, gradients = 0, optimizer = 0;
  };
  StateBytes state_bytes() const;
  // Host copies (or views) of the logical flat range [begin, end) of the parameters and of the
  // AdamW moments, from whatever this rank holds (under ZeRO only its own shard can be asked).
  std::tuple<Tensor, Tensor, Tensor> state_range(int64_t begin, int64_t end);
  Communicator* gradient_group() const { return dp_; }
  // Buckets of the overlapped gradient reduction (empty without --overlap-grad-reduce).
  int64_t num_buckets() const { return static_cast<int64_t>(buckets_.size()); }
  // ZeRO-3 layer gathers found already started by the pass's previous layer (--overlap-param-gather).
  int64_t prefetched_gathers() const { return prefetched_gathers_; }
  // ZeRO-1/2 --overlap-param-gather: the post-step all-gather is started group by group and
  // each group is finished before its first use (false: one blocking all-gather).
  bool overlaps_param_gather() const { return overlap_param_gather_; }
  int64_t param_gathers_in_flight() const { return static_cast<int64_t>(param_gathers_.size()); }
  // ZeRO-1/2 in mixed precision over a group of 2 or more (TrainArgs::shard_masters): each rank
  // keeps the f32 masters of its own range only (in param_shard_); the model's f32 buffer holds
  // just the LayerNorms' (packed, ParameterSet::pack_masters), and the step's update writes the
  // 16-bit copy of the range, which is all-gathered with the LayerNorms' masters beside it.
  bool shards_masters() const { return sharded_masters_; }
  // Finishes whatever parameter all-gathers are still in flight (every reader of the parameters
  // outside a step calls it: checkpoint saves, loads).
  void finish_param_gathers();
  // Continue after `iteration` steps that consumed `consumed_samples` (checkpoint resume).
  void restore(int64_t iteration, int64_t consumed_samples, int64_t nan_iterations) {
    iteration_ = iteration;
    consumed_samples_ = consumed_samples;
    consumed_tokens_ = consumed_samples * args_.seq_length;  // (until the checkpoint's own count)
    nan_iterations_ = nan_iterations;
  }
  // The iterations before the learning-rate schedule's start: 0, or where a resume restarted it
  // (--no-load-optim: Megatron loads the scheduler with the optimizer, so its schedule starts
  // again, warmup included, at the resumed iteration). Saved with the schedule.
  int64_t schedule_origin() const { return schedule_origin_; }
  void set_schedule_origin(int64_t iterations) { schedule_origin_ = iterations; }

 private:
  // Micro-batch m of this replica's slice of the global batch that starts at sample `batch_start`
  // of `src` (training and evaluation alike; the Ulysses ranks of a replica read the same samples).
  void fill_micro_batch(const SampleSource& src, uint64_t batch_start, int64_t m);
  // The 1F1B pipeline schedule over `micro` micro-batches (load(k) fills micro-batch k); returns
  // the sum of their losses (on every stage).
  double pipeline_step(int64_t micro, const std::function<void(int64_t)>& load, IterationStats& st);
  static constexpr int kForward = 1, kBackward = 2;  // pipeline message tags
  // --overlap-grad-reduce: the gradient group's all-reduce (ZeRO-1: reduce-scatter) in buckets of
  // whole layers, each started (non-blocking) as soon as the last micro-batch's backward has
  // finished its layers.
  struct Bucket {
    int trigger_layer = 0;                            // its last layer to finish in backward
    std::vector<std::pair<int64_t, int64_t>> ranges;  // flat gradient ranges
  };
  void plan_buckets(int64_t dp_size);
  void on_grad_ready(int layer);
  void backward(int64_t k, int64_t micro);  // micro-batch k's backward (reduces during the last)
  // The weight of one of `micro` micro-batches' losses in the step's gradient: loss scale / micro
  // (forward() gets it too, for the output layer's backward in chunks).
  float loss_weight(int64_t micro) const {
    return static_cast<float>(scaler_.scale()) / static_cast<float>(micro);
  }
  bool overlap_ = false, reduce_in_backward_ = false;
  // ZeRO-2/3: the reduced gradients (and under ZeRO-3, or with sharded masters, the fp32
  // parameters) of this rank's range of the flat buffer; the model's working area holds one layer
  // at a time (each of two areas, with --overlap-grad-reduce / --overlap-param-gather).
  int zero_ = 0;
  Tensor grad_shard_, param_shard_;
  bool sharded_masters_ = false;
  std::vector<int64_t> packed_offsets_;  // sharded masters: shard_offsets_ in the packed f32 buffer
  // Sharded masters: each owned piece of an f32_op range, at `shard` in param_shard_ and at
  // `packed` in the packed f32 buffer.
  struct OwnF32Op {
    int64_t shard, packed, length;
  };
  std::vector<OwnF32Op> own_f32_op_;
  // ZeRO-3 and sharded masters: this rank's range of the f32 parameters from the seed.
  Tensor shard_from_seed() const;
  // Sharded masters: the owned part of the f32_op tensors' masters, from param_shard_ into the
  // packed buffer (before it is all-gathered).
  void publish_own_f32_op();
  // Sharded masters: the all-gathers of the logical range [b, e) of the 16-bit copy and of its
  // f32_op masters (started, or done when async is false).
  void gather_copy(int64_t b, int64_t e, bool async, int group);
  std::vector<int64_t> clamp_offsets(int64_t begin, int64_t end) const;  // shard offsets within a range
  // ZeRO 0/1's gradient reduction of x, the flat gradients from `begin`: an all-reduce, or under
  // ZeRO-1 a reduce-scatter onto the owners' ranges (the rest is scratch after it).
  void reduce_grads(const Tensor& x, int64_t begin);
  // ZeRO-3: the layer's parameters into its working area (16-bit: its compute copy, and the f32
  // masters of the f32_op tensors only) before it computes;
  // `next` (-1: none) is the layer the same pass computes after it, gathered meanwhile with
  // --overlap-param-gather (two parameter areas).
  void gather_layer(int layer, int next);
  struct ZeroGather {
    // the layer's (16-bit: the copy's, then each f32_op range's); none once complete or with one rank
    std::vector<std::unique_ptr<Communicator::Request>> requests;
    int layer = -1;
  };
  ZeroGather zero_prefetch_;
  // ZeRO-1/2 --overlap-param-gather: per parameter group (-1 resident, then the layers), its
  // all-gathers in flight since the step (sharded masters: the copy's and the f32_op masters').
  bool overlap_param_gather_ = false;
  std::vector<std::pair<int, std::unique_ptr<Communicator::Request>>> param_gathers_;
  void start_param_gathers();
  void finish_param_gather(int group);  // waited for, then its compute copy refreshed
  // train_step and evaluate: the resident tensors' gather only (each layer's in its forward hook).
  void sync_compute_weights_resident();
  int64_t prefetched_gathers_ = 0;
  bool zero_prefetching_ = false;
  // This rank's part copied in, then the all-gather: started (the prefetch) or done.
  void start_gather(int layer, bool async);
  void drop_prefetch();          // a prefetch no pass used (cut short): waited for and forgotten
  void zero_before_backward(int layer);
  void zero_grad_ready(int layer);
  // The layer's reduced range (this rank's part) added into grad_shard_.
  void zero_accumulate(int layer);
  // --overlap-grad-reduce under ZeRO-2/3: per gradient working area (layer l in area l mod 2),
  // the reduce-scatter in flight there and its layer (-1: none). Finished (waited for, then
  // accumulated) before the area is zeroed for another layer, and after the last backward.
  struct ZeroReduction {
    std::unique_ptr<Communicator::Request> request;
    int layer = -1;
  };
  ZeroReduction zero_inflight_[2];
  ZeroReduction& zero_slot(int layer) { return zero_inflight_[layer % model_.parameters().grad_areas()]; }
  int last_layer() const {  // this stage's
    return model_.first_layer() + static_cast<int>(args_.num_layers / model_.model_parallel().pp_size()) - 1;
  }
  bool zero_overlap_ = false;
  void zero_finish(ZeroReduction& r);
  int64_t own_begin() const { return shard_offsets_.empty() ? 0 : shard_offsets_[group_rank()]; }
  int64_t own_end() const;
  // The part [lo, hi) of the logical flat range [begin, end) this rank owns (hi <= lo: none).
  std::pair<int64_t, int64_t> owned(int64_t begin, int64_t end) const {
    return {std::max(begin, own_begin()), std::min(end, own_end())};
  }
  int group_rank() const { return dp_ ? dp_->rank() : 0; }
  std::vector<Bucket> buckets_;
  std::vector<std::pair<int64_t, int64_t>> rest_ranges_;  // reduced after backward
  std::vector<std::unique_ptr<Communicator::Request>> inflight_;

  LossScaler scaler_;
  bool compute_stale_ = true;  // the compute copy lags the f32 parameters
  TrainArgs args_;
  GPT& model_;
  const SampleSource& train_;
  AdamW optimizer_;
  LRSchedule schedule_;
  Tensor tokens_, targets_, sample_;
  Communicator* dp_ = nullptr;
  std::vector<int64_t> shard_offsets_;  // ZeRO-1: rank r owns [offsets[r], offsets[r+1])
  int64_t iteration_ = 0, consumed_samples_ = 0, nan_iterations_ = 0;
  int64_t schedule_origin_ = 0, consumed_tokens_ = 0;
};

}  // namespace llm
