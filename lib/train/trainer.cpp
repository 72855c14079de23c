#include "train/trainer.h"

#include <algorithm>
#include <cmath>

#include "core/timer.h"

namespace llm {

namespace {
OptimizerConfig optimizer_config(const TrainArgs& a) {
  OptimizerConfig c;
  c.beta1 = a.adam_beta1;
  c.beta2 = a.adam_beta2;
  c.eps = a.adam_eps;
  c.weight_decay = a.weight_decay;
  c.clip_grad = a.clip_grad;
  return c;
}

// The flat range this rank's optimizer owns: under ZeRO (stage 1 over 2 or more ranks, or 2-3)
// its 1/G of the gradient group, contiguous; the whole buffer otherwise.
std::pair<int64_t, int64_t> optimizer_range(const TrainArgs& a, const GPT& model, const Communicator* dp) {
  const int64_t n = model.parameters().numel(), g = dp ? dp->size() : 1, r = dp ? dp->rank() : 0;
  if ((a.zero_stage == 1 && g > 1) || a.zero_stage >= 2) return {n * r / g, n * (r + 1) / g};
  return {0, n};
}

LossScaler loss_scaler_for(const TrainArgs& a) {
  if (!a.fp16) return LossScaler::constant(1.0);
  if (a.loss_scale > 0) return LossScaler::constant(a.loss_scale);
  LossScalerConfig c;
  c.initial_scale = a.initial_loss_scale;
  c.min_scale = a.min_loss_scale;
  c.window = a.loss_scale_window;
  c.hysteresis = static_cast<int>(a.hysteresis);
  return LossScaler(c);
}
}  // namespace

Trainer::Trainer(const TrainArgs& args, GPT& model, const SampleSource& train, Communicator* dp)
    : scaler_(loss_scaler_for(args)), args_(args), model_(model), train_(train),
      optimizer_(model.parameters(), model.backend(), optimizer_config(args), optimizer_range(args, model, dp).first,
                 optimizer_range(args, model, dp).second),
      dp_(dp) {
  const int64_t dp_size = dp_ ? dp_->size() : 1, sp = model.model_parallel().sp_size();
  LLM_CHECK(dp_size == args.data_parallel_size * sp, "gradient group of ", dp_size,
            " ranks, but the arguments say data parallel ", args.data_parallel_size, " x Ulysses ", sp, " = ",
            args.data_parallel_size * sp);
  // Sharded masters (ZeRO-1/2 in mixed precision, below): whether this run keeps them, and a model
  // built for them (ModelParallel::sharded_masters) only where it does, and only once.
  const bool shard_masters = args.shard_masters && (args.zero_stage == 1 || args.zero_stage == 2) &&
                             args.compute_dtype() != DType::f32 && dp_size > 1 &&
                             dp_->takes(model_.parameters().flat_params().device());
  if (model_.parameters().packed_masters() && !shard_masters)
    throw ConfigError(detail::concat(
        "the model was built with sharded masters (ModelParallel::sharded_masters) but this run does not shard "
        "them: they need --zero-stage 1 or 2, --bf16 or --fp16, a gradient group of 2 or more that takes the "
        "model's tensors (it has ", dp_size, " ranks, --zero-stage ", args.zero_stage, ", ",
        dtype_name(args.compute_dtype()), ")"));
  if (model_.parameters().masters_claimed())
    throw ConfigError("the model's f32 masters are held by another trainer's shard (one trainer per model with "
                      "sharded masters)");
  model_.set_recompute(args.full_recompute());
  model_.set_logits_chunk(args.logits_chunk_tokens);
  model_.set_precision(args.compute_dtype());
  optimizer_.set_tensor_parallel(model_.model_parallel().group);
  optimizer_.set_pipeline(model_.model_parallel().pipeline);
  const int want_storage = args.zero_stage >= 2 ? static_cast<int>(args.zero_stage) : 0;
  LLM_CHECK(model_.model_parallel().zero_stage == want_storage, "--zero-stage ", args.zero_stage,
            " needs the model built with ModelParallel::zero_stage ", want_storage, " (it has ",
            model_.model_parallel().zero_stage, ")");
  LLM_CHECK(args.zero_stage >= 0 && args.zero_stage <= 3, "--zero-stage must be 0, 1, 2 or 3, got ", args.zero_stage);
  const int want_areas = args.zero_stage >= 2 && args.overlap_grad_reduce ? 2 : 1;
  LLM_CHECK(want_storage == 0 || model_.model_parallel().zero_grad_areas == want_areas, "--zero-stage ",
            args.zero_stage, args.overlap_grad_reduce ? " with" : " without", " --overlap-grad-reduce needs the model built with ModelParallel::zero_grad_areas ",
            want_areas, " (it has ", model_.model_parallel().zero_grad_areas, ")");
  const int want_param_areas = args.zero_stage == 3 && args.overlap_param_gather ? 2 : 1;
  LLM_CHECK(want_storage < 3 || model_.model_parallel().zero_param_areas == want_param_areas, "--zero-stage 3",
            args.overlap_param_gather ? " with" : " without",
            " --overlap-param-gather needs the model built with ModelParallel::zero_param_areas ", want_param_areas,
            " (it has ", model_.model_parallel().zero_param_areas, ")");
  if ((args.zero_stage == 1 && dp_size > 1) || args.zero_stage >= 2) {
    // ZeRO: each rank of the gradient group keeps the optimizer state (stage 2: and the reduced
    // gradients; stage 3: and the parameters) of a contiguous 1/dp of the flat buffer.
    const int64_t n = model_.parameters().numel();
    for (int64_t r = 0; r <= dp_size; ++r) shard_offsets_.push_back(n * r / dp_size);
    // (the optimizer was made owning this range: never the whole state, even for a moment)
    LLM_CHECK(optimizer_.shard_begin() == own_begin() && optimizer_.shard_end() == own_end(), "optimizer range [",
              optimizer_.shard_begin(), ", ", optimizer_.shard_end(), ") is not the ZeRO shard [", own_begin(), ", ",
              own_end(), ")");
  }
  if (args.zero_stage >= 2) {
    zero_ = static_cast<int>(args.zero_stage);
    const ParameterSet& ps = model_.parameters();
    Backend& be = model_.backend();
    // The shards live where the model does; the collectives run on them directly.
    if (dp_size > 1 && !dp_->takes(ps.flat_grads().device()))
      throw ConfigError(detail::concat("--zero-stage ", zero_, ": the gradient group cannot take ",
                                       ps.flat_grads().device().str(), " tensors (NCCL for GPUs, MPI for the CPU)"));
    grad_shard_ = be.zeros({own_end() - own_begin()});
    if (zero_ == 3) param_shard_ = shard_from_seed();
    zero_prefetching_ = want_param_areas == 2;
    model_.set_layer_hooks(zero_ == 3 ? std::function<void(int)>([this](int l) { gather_layer(l, l + 1); })
                                      : std::function<void(int)>(),
                           [this](int l) { zero_before_backward(l); });
    model_.set_grad_ready_hook([this](int l) { zero_grad_ready(l); });
    zero_overlap_ = want_areas == 2 && dp_size > 1;
  }
  // Sharded masters (ZeRO-1/2 in mixed precision): this rank's range of the f32 masters lives in
  // param_shard_; the model keeps the LayerNorms' (packed: the ops read them in f32) beside its
  // 16-bit copy, the only full parameters. A model built for it (ModelParallel::sharded_masters)
  // never had the rest; another one's masters move here now.
  if (shard_masters) {
    ParameterSet& ps = model_.parameters();
    Backend& be = model_.backend();
    const int64_t own = own_end() - own_begin();
    if (ps.packed_masters()) {  // the initial values, as allocate_packed rounded them into the copy
      param_shard_ = shard_from_seed();
    } else {
      param_shard_ = be.empty({own});
      be.copy(param_shard_, ps.flat_params().flat(own_begin(), own));
      ps.refresh_compute(be);  // the copy from these masters, whatever happened since it was made
      model_.pack_masters();   // (the layers rebound to the packed LayerNorms)
    }
    for (int64_t o : shard_offsets_) packed_offsets_.push_back(ps.packed_index(o));
    // The owned parts of the LayerNorms' masters (contiguous in the packed buffer too), which
    // every step publishes: computed once.
    for (auto [rb, re] : ps.ranges_if([](const ParamSpec& s) { return s.f32_op; })) {
      const int64_t lo = std::max(rb, own_begin()), hi = std::min(re, own_end());
      if (hi > lo) own_f32_op_.push_back({lo - own_begin(), ps.packed_index(lo), hi - lo});
    }
    ps.claim_masters();
    sharded_masters_ = true;
    compute_stale_ = false;
  }
  // ZeRO-1/2 --overlap-param-gather: the parameters' all-gather after the step is started group by
  // group and each is waited for just before its first use (the layer's forward; the resident
  // tensors at the next step's start). Only where the group takes the parameters directly.
  if (args.overlap_param_gather && zero_ < 3 && !shard_offsets_.empty() && dp_size > 1 &&
      dp_->takes(model_.parameters().flat_params().device())) {
    overlap_param_gather_ = true;
    model_.set_layer_hooks([this](int l) { finish_param_gather(l); },
                           zero_ == 2 ? std::function<void(int)>([this](int l) { zero_before_backward(l); })
                                      : std::function<void(int)>());
  }
  if (args.overlap_grad_reduce && dp_size > 1 && zero_ < 2) {
    if (dp_->takes(model_.parameters().flat_grads().device())) {
      plan_buckets(dp_size);
    }  // else: device gradients go through the host in one piece
  }
  LLM_CHECK(train.seq_length() == args.seq_length, "data sequence length ", train.seq_length(),
            " differs from --seq-length ", args.seq_length);
  if (train.vocab_size() > model.config().vocab_size)
    throw ConfigError(detail::concat(train.describe(), ": vocabulary ", train.vocab_size(),
                                     " exceeds the model's --vocab-size ", model.config().vocab_size));
  schedule_.lr = args.lr;
  schedule_.min_lr = args.min_lr;
  schedule_.decay_iters = args.lr_decay_iters ? args.lr_decay_iters : args.train_iters;
  // Megatron: --lr-warmup-fraction warms up over that share of the decay (fractional iterations)
  schedule_.warmup_iters = args.lr_warmup_fraction > 0
                               ? args.lr_warmup_fraction * static_cast<double>(schedule_.decay_iters)
                               : static_cast<double>(args.lr_warmup_iters);
  schedule_.style = args.lr_decay_style;
  schedule_.samples_per_update = args.global_batch_size;
  LLM_CHECK(args.seq_length % sp == 0, "--seq-length ", args.seq_length, " is not divisible by Ulysses ", sp);
  tokens_ = Tensor::empty({args.micro_batch_size, args.seq_length / sp}, DType::i32);
  targets_ = Tensor::empty({args.micro_batch_size, args.seq_length / sp}, DType::i32);
  sample_ = Tensor::empty({args.seq_length + 1}, DType::i32);
}

void Trainer::fill_micro_batch(const SampleSource& src, uint64_t batch_start, int64_t m) {
  // The gradient group is data parallel x Ulysses (group rank = dp_rank * sp + sp_rank).
  const ModelParallel& mp = model_.model_parallel();
  const int64_t dp_rank = dp_ ? dp_->rank() / mp.sp_size() : 0, rows = args_.micro_batch_size;
  const uint64_t first_index = global_sample_index(batch_start, dp_rank, args_.micro_batches(), rows, m, 0);
  // Ulysses: this rank's positions [sp_rank * T, (sp_rank + 1) * T) of each sample.
  const int64_t T = tokens_.size(1), off = mp.sp_rank() * T;
  int32_t* s = sample_.data<int32_t>();
  for (int64_t r = 0; r < rows; ++r) {
    src.sample((first_index + static_cast<uint64_t>(r)) % src.num_samples(), s);
    std::copy(s + off, s + off + T, tokens_.data<int32_t>() + r * T);
    std::copy(s + off + 1, s + off + T + 1, targets_.data<int32_t>() + r * T);
  }
}

IterationStats Trainer::train_step() {
  Timer timer;
  sync_compute_weights_resident();
  IterationStats st;
  st.iteration = ++iteration_;
  // Megatron's scheduler steps after each applied update (fp16 iterations skipped for an
  // overflow do not advance it): update n + 1 runs at the rate after n updates, 0 in the first
  // warmup step, and the log line shows the rate after this iteration.
  const int64_t updates_before = iteration_ - 1 - schedule_origin_ - (args_.fp16 ? scaler_.skipped() : 0);
  st.lr_applied = schedule_.at(updates_before);
  st.loss_scale = scaler_.scale();
  const int64_t micro = args_.micro_batches();
  // The gradient group is data parallel x Ulysses: the Ulysses ranks of a replica read the same
  // samples and hold partial gradients of them.
  const int64_t sp = model_.model_parallel().sp_size();
  const int64_t dp_size = dp_ ? dp_->size() : 1;
  model_.zero_grad();
  if (zero_) model_.backend().zero(grad_shard_);
  double loss_sum = 0;
  Timer phase;
  auto load = [&](int64_t k) {  // micro-batch k of this replica's slice of the global batch
    Timer data_timer;
    fill_micro_batch(train_, static_cast<uint64_t>(consumed_samples_), k);
    st.data_seconds += data_timer.seconds();
  };
  if (model_.model_parallel().pp_size() > 1) {
    loss_sum = pipeline_step(micro, load, st);
  } else {
    for (int64_t k = 0; k < micro; ++k) {
      load(k);
      loss_sum += model_.forward(tokens_, targets_, loss_weight(micro));
      backward(k, micro);
    }
  }
  model_.reduce_partial_grads();
  model_.reduce_tied_grads();
  model_.backend().synchronize();
  st.forward_backward_seconds = phase.seconds();
  double grad_scale = 1.0;
  if (zero_) {
    phase.reset();
    // The layers' gradients were reduce-scattered into grad_shard_ as each finished (the last
    // two, overlapped, are finished here); the resident ones (embeddings, final LayerNorm) are
    // complete only now.
    for (ZeroReduction& r : zero_inflight_) zero_finish(r);
    drop_prefetch();  // (none: a pass prefetches only a layer it goes on to compute)
    const ParameterSet& ps = model_.parameters();
    const Tensor resident = ps.flat_grads().flat(0, ps.resident_numel());
    if (dp_size > 1) dp_->all_reduce_sum(resident);
    const auto [lo, hi] = owned(0, ps.resident_numel());
    if (hi > lo) model_.backend().copy(grad_shard_.flat(lo - own_begin(), hi - lo), resident.flat(lo, hi - lo));
    if (dp_size > 1) loss_sum = dp_->all_reduce_sum(loss_sum);
    grad_scale = static_cast<double>(sp) / static_cast<double>(dp_size);
    model_.backend().synchronize();  // NCCL's reductions are queued on the device: time them, not the queueing
    st.grads_all_reduce_seconds = phase.seconds();
  } else if (dp_size > 1) {
    phase.reset();
    // Sum the replicas' gradients (each is the mean over its own samples) and average: the
    // gradient of the global batch's mean loss, identical on every rank. ZeRO-1 needs only its
    // own range summed (its optimizer updates that range, and the parameters are gathered after
    // the step): a reduce-scatter, half an all-reduce's bytes (Megatron's distributed optimizer).
    const Tensor& g = model_.parameters().flat_grads();
    if (overlap_) {
      // The layers' buckets are in flight; the embeddings, head, partial and tied gradients
      // (complete only now) go in one more round, then everything is waited for.
      for (auto [b, e] : rest_ranges_) reduce_grads(g.flat(b, e - b), b);
      for (auto& r : inflight_) r->wait();
      inflight_.clear();
    } else if (dp_->takes(g.device())) {  // host tensors over MPI, GPU tensors over NCCL
      reduce_grads(g, 0);
    } else {
      Tensor h = model_.backend().download(g);
      reduce_grads(h, 0);
      model_.backend().copy(g, h);
    }
    loss_sum = dp_->all_reduce_sum(loss_sum);
    grad_scale = static_cast<double>(sp) / static_cast<double>(dp_size);  // 1 / data-parallel size
    model_.backend().synchronize();  // NCCL's reductions are queued on the device: time them, not the queueing
    st.grads_all_reduce_seconds = phase.seconds();
  }
  st.loss = loss_sum / static_cast<double>(micro * dp_size);
  st.finite = std::isfinite(st.loss);
  grad_scale /= st.loss_scale;  // the gradients are of loss_scale x the loss
  bool applied = false;
  if (st.finite) {
    finish_param_gathers();  // (none left: every layer's forward has run)
    phase.reset();
    const ParameterSet& ps = model_.parameters();
    const bool sharded = !shard_offsets_.empty();  // ZeRO 1-3
    const int64_t own = own_end() - own_begin();
    const Tensor own_params = param_shard_.defined() ? param_shard_  // ZeRO-3, sharded masters
                              : sharded ? ps.flat_params().flat(own_begin(), own) : Tensor{};
    // ZeRO-1: the reduced range of the gradients is this rank's (the rest is scratch)
    const Tensor own_grads = zero_ ? grad_shard_ : sharded ? ps.flat_grads().flat(own_begin(), own) : Tensor{};
    // Sharded masters: the update rounds the range into the copy in the same pass.
    const Tensor own_copy = sharded_masters_ ? ps.flat_compute().flat(own_begin(), own) : Tensor{};
    StepResult r = sharded ? optimizer_.step_shard(st.lr_applied, grad_scale, own_params, own_grads, dp_, own_copy)
                           : optimizer_.step(st.lr_applied, grad_scale);
    model_.backend().synchronize();
    st.optimizer_seconds = phase.seconds();
    st.grad_norm = r.grad_norm;
    applied = r.finite;
    // fp16: a non-finite gradient is an overflow of the scaled loss (skipped, and the scaler
    // backs off when it is dynamic), not a NaN iteration.
    st.finite = r.finite || args_.fp16;
    if (r.finite) compute_stale_ = !r.compute_written;
    if (r.finite && zero_ == 3) {
      // Parameters stay sharded (layers are gathered when used); refresh the resident copies.
      phase.reset();
      const int64_t res = ps.resident_numel();
      const Tensor resident = ps.flat_params().flat(0, res);
      const auto [lo, hi] = owned(0, res);
      if (hi > lo) model_.backend().copy(resident.flat(lo, hi - lo), param_shard_.flat(lo - own_begin(), hi - lo));
      if (dp_size > 1) dp_->all_gather_ranges(resident, clamp_offsets(0, res));
      st.params_all_gather_seconds = phase.seconds();
    } else if (r.finite && sharded_masters_ && !overlap_param_gather_) {
      phase.reset();
      // Each replica updated its range of the copy: share them, and the LayerNorms' masters.
      publish_own_f32_op();
      gather_copy(0, ps.numel(), false, -1);
      st.params_all_gather_seconds = phase.seconds();
    } else if (r.finite && overlap_param_gather_) {
      phase.reset();
      // Each replica updated its range: shared group by group, finished where first used.
      start_param_gathers();
      st.params_all_gather_seconds = phase.seconds();  // the starting only
    } else if (r.finite && !shard_offsets_.empty() && dp_size > 1) {
      phase.reset();
      // Each replica updated its range: share them so every replica has all parameters.
      const Tensor& w = model_.parameters().flat_params();
      const bool direct = dp_->takes(w.device());
      Tensor h = direct ? w : model_.backend().download(w);
      dp_->all_gather_ranges(h, shard_offsets_);
      if (!direct) model_.backend().copy(w, h);
      st.params_all_gather_seconds = phase.seconds();
    }
  }
  if (args_.fp16) scaler_.update(!applied);
  st.skipped = !applied;
  st.lr = schedule_.at(updates_before + (args_.fp16 && st.skipped ? 0 : 1));
  if (!st.finite) ++nan_iterations_;
  consumed_samples_ += args_.global_batch_size;
  consumed_tokens_ += args_.global_batch_size * args_.seq_length;
  model_.backend().synchronize();
  st.seconds = timer.seconds();
  return st;
}

void Trainer::reduce_grads(const Tensor& x, int64_t begin) {
  if (shard_offsets_.empty())
    dp_->all_reduce_sum(x);
  else
    dp_->reduce_scatter_ranges(x, clamp_offsets(begin, begin + x.numel()));
}

int64_t Trainer::own_end() const {
  return shard_offsets_.empty() ? model_.parameters().numel() : shard_offsets_[group_rank() + 1];
}

std::vector<int64_t> Trainer::clamp_offsets(int64_t begin, int64_t end) const {
  std::vector<int64_t> out;
  for (int64_t o : shard_offsets_) out.push_back(std::clamp(o, begin, end) - begin);
  return out;
}

void Trainer::start_gather(int layer, bool async) {
  // The layer's parameters from every rank's shard into its working area. In mixed precision the
  // ops read the 16-bit copy but for the f32_op tensors (the LayerNorms'): the copy is what is
  // gathered (half the bytes), each rank rounding its own part as refresh_compute would have after
  // an f32 gather (the same bits), and the f32_op tensors' masters beside it.
  const ParameterSet& ps = model_.parameters();
  Backend& be = model_.backend();
  const auto [gb, ge] = ps.group_range(layer);
  const int64_t area = ps.area_begin(layer, false);
  const Tensor work = ps.flat_params().flat(area, ge - gb);
  const auto [lo, hi] = owned(gb, ge);
  const Tensor own = hi > lo ? param_shard_.flat(lo - own_begin(), hi - lo) : Tensor{};
  if (hi > lo) be.copy(work.flat(lo - gb, hi - lo), own);
  const bool low = ps.compute_dtype() != DType::f32;
  if (low && hi > lo) be.convert(ps.flat_compute().flat(area + lo - gb, hi - lo), own);
  const bool group = dp_ && dp_->size() > 1;
  if (async) zero_prefetch_.layer = layer;
  if (!group) return;
  auto gather = [&](const Tensor& x, int64_t b, int64_t e) {
    if (async)
      zero_prefetch_.requests.push_back(dp_->all_gather_ranges_async(x, clamp_offsets(b, e)));
    else
      dp_->all_gather_ranges(x, clamp_offsets(b, e));
  };
  if (!low) return gather(work, gb, ge);
  gather(ps.flat_compute().flat(area, ge - gb), gb, ge);
  for (auto [b, e] : ps.ranges_if([&](const ParamSpec& s) { return s.group == layer && s.f32_op; }))
    gather(work.flat(b - gb, e - b), b, e);
}

void Trainer::drop_prefetch() {
  for (auto& r : zero_prefetch_.requests) r->wait();
  zero_prefetch_ = ZeroGather{};
}

void Trainer::gather_layer(int layer, int next) {
  // Prefetched (the pass's previous layer started it), or gathered now (its compute copy with it).
  // The prefetch writes the other area, whose layer the stream has finished with: a pass goes
  // layer by layer, so it held the layer before this one.
  if (zero_prefetch_.layer == layer) {
    ++prefetched_gathers_;
    drop_prefetch();  // complete (NCCL: the compute stream waits for it, the host does not)
  } else {
    drop_prefetch();
    start_gather(layer, false);
  }
  if (zero_prefetching_ && next >= model_.first_layer() && next <= last_layer()) start_gather(next, true);
}

void Trainer::zero_before_backward(int layer) {
  if (zero_ == 3) gather_layer(layer, layer - 1);  // released after forward: gathered again
  const ParameterSet& ps = model_.parameters();
  const auto [gb, ge] = ps.group_range(layer);
  const int64_t area = ps.area_begin(layer, true);
  // The area's previous layer (overlapped: its reduction may still be in flight) is done first.
  if (zero_overlap_) zero_finish(zero_slot(layer));
  model_.backend().zero(ps.flat_grads().flat(area, ge - gb));
}

void Trainer::zero_grad_ready(int layer) {
  // The layer's gradients of this micro-batch: summed over the gradient group onto each owner's
  // range and accumulated into the owner's shard; then the working area is free for another
  // layer. Overlapped, the reduction is only started here, on the communicator's own stream or
  // MPI's progress, while the next layer's backward fills the other area.
  const ParameterSet& ps = model_.parameters();
  const auto [gb, ge] = ps.group_range(layer);
  const int64_t area = ps.area_begin(layer, true);
  const Tensor work = ps.flat_grads().flat(area, ge - gb);
  const ModelParallel& mp = model_.model_parallel();
  if (mp.size() > 1)  // Megatron SP: the LayerNorms' partial sums over the tensor-parallel group
    for (auto [b, e] : ps.ranges_if([&](const ParamSpec& s) { return s.group == layer && s.partial_grad; }))
      mp.group->all_reduce_sum(work.flat(b - gb, e - b));
  if (zero_overlap_) {
    ZeroReduction& r = zero_slot(layer);
    zero_finish(r);  // (already finished by zero_before_backward, unless hooks came out of order)
    r.request = dp_->reduce_scatter_ranges_async(work, clamp_offsets(gb, ge));
    r.layer = layer;
    for (ZeroReduction& o : zero_inflight_)  // progress (MPI advances only inside its calls)
      if (o.request) (void)o.request->test();
    return;
  }
  if (dp_ && dp_->size() > 1) dp_->reduce_scatter_ranges(work, clamp_offsets(gb, ge));
  zero_accumulate(layer);
}

void Trainer::zero_accumulate(int layer) {
  const ParameterSet& ps = model_.parameters();
  const auto [gb, ge] = ps.group_range(layer);
  const Tensor work = ps.flat_grads().flat(ps.area_begin(layer, true), ge - gb);
  const auto [lo, hi] = owned(gb, ge);
  if (hi > lo) {  // shard += the reduced range (an element-wise add on the backend)
    const Tensor g = grad_shard_.flat(lo - own_begin(), hi - lo);
    model_.backend().residual_forward(g, g, work.flat(lo - gb, hi - lo));
  }
}

void Trainer::zero_finish(ZeroReduction& r) {
  if (r.layer < 0) return;
  r.request->wait();  // NCCL: the compute stream waits for it, the host does not
  r.request.reset();
  const int layer = r.layer;
  r.layer = -1;
  zero_accumulate(layer);
}

Tensor Trainer::full_parameters() {
  finish_param_gathers();
  const ParameterSet& ps = model_.parameters();
  Backend& be = model_.backend();
  if (!param_shard_.defined()) return ps.flat_params().device().is_cpu() ? ps.flat_params() : be.download(ps.flat_params());
  const bool direct = !dp_ || dp_->takes(param_shard_.device());
  Tensor full = direct ? be.zeros({ps.numel()}) : Tensor::zeros({ps.numel()});
  be.copy(full.flat(own_begin(), own_end() - own_begin()), param_shard_);
  if (dp_ && dp_->size() > 1) dp_->all_gather_ranges(full, shard_offsets_);
  return full.device().is_cpu() ? full : be.download(full);
}

std::tuple<Tensor, Tensor, Tensor> Trainer::state_range(int64_t begin, int64_t end) {
  finish_param_gathers();
  const ParameterSet& ps = model_.parameters();
  Backend& be = model_.backend();
  auto host = [&](const Tensor& t) { return t.device().is_cpu() ? t : be.download(t); };
  const int64_t len = end - begin;
  Tensor params;
  if (zero_ == 3) {
    LLM_CHECK(begin == own_begin() && end == own_end(), "state_range [", begin, ", ", end,
              ") is not this rank's ZeRO-3 shard [", own_begin(), ", ", own_end(), ")");
    params = host(param_shard_);
  } else if (sharded_masters_) {
    LLM_CHECK(own_begin() <= begin && end <= own_end(), "state_range [", begin, ", ", end,
              ") is outside this rank's shard of the masters [", own_begin(), ", ", own_end(), ")");
    params = host(param_shard_.flat(begin - own_begin(), len));
  } else {
    params = host(ps.flat_params().flat(begin, len));
  }
  const int64_t ob = optimizer_.shard_begin(), oe = optimizer_.shard_end();
  LLM_CHECK(ob <= begin && end <= oe, "state_range [", begin, ", ", end, ") outside the optimizer's [", ob, ", ", oe, ")");
  return {params, host(optimizer_.m().flat(begin - ob, len)), host(optimizer_.v().flat(begin - ob, len))};
}

bool Trainer::keeps_parameter(const ParamSpec& s) const {
  if (zero_ != 3 || s.group < 0) return true;
  const auto [lo, hi] = owned(s.offset, s.offset + numel(s.shape));
  return hi > lo;
}

void Trainer::publish_own_f32_op() {
  const Tensor& packed = model_.parameters().flat_params();
  for (const OwnF32Op& p : own_f32_op_)
    model_.backend().copy(packed.flat(p.packed, p.length), param_shard_.flat(p.shard, p.length));
}

Tensor Trainer::shard_from_seed() const {
  Tensor init = Tensor::empty({own_end() - own_begin()});
  model_.parameters().init_range(init.data<float>(), own_begin(), own_end());
  // on the host the buffer itself (no second copy), else uploaded
  return model_.parameters().flat_params().device().is_cpu() ? init : model_.backend().upload(init);
}

void Trainer::gather_copy(int64_t b, int64_t e, bool async, int group) {
  const ParameterSet& ps = model_.parameters();
  auto run = [&](const Tensor& x, const std::vector<int64_t>& offsets) {
    if (async)
      param_gathers_.emplace_back(group, dp_->all_gather_ranges_async(x, offsets));
    else
      dp_->all_gather_ranges(x, offsets);
  };
  run(ps.flat_compute().flat(b, e - b), clamp_offsets(b, e));
  // The f32_op masters of [b, e): contiguous in the packed buffer, and so is each rank's part.
  const int64_t pb = ps.packed_index(b), pe = ps.packed_index(e);
  if (pe <= pb) return;
  std::vector<int64_t> offsets;
  for (int64_t o : packed_offsets_) offsets.push_back(std::clamp(o, pb, pe) - pb);
  run(ps.flat_params().flat(pb, pe - pb), offsets);
}

void Trainer::start_param_gathers() {
  const ParameterSet& ps = model_.parameters();
  const Tensor& w = ps.flat_params();
  if (sharded_masters_) publish_own_f32_op();
  int64_t next = 0;  // the groups cover the buffer in order: resident, then the stage's layers
  for (int g : ps.groups()) {
    const auto [b, e] = ps.group_range(g);
    LLM_CHECK(b == next, "parameter group ", g, " starts at ", b, ", not where the previous one ended (", next, ")");
    if (sharded_masters_)
      gather_copy(b, e, true, g);
    else
      param_gathers_.emplace_back(g, dp_->all_gather_ranges_async(w.flat(b, e - b), clamp_offsets(b, e)));
    next = e;
  }
  LLM_CHECK(next == ps.numel(), "the parameter groups end at ", next, " of ", ps.numel());
  compute_stale_ = false;  // each group's compute copy is refreshed as its gather is finished
}

void Trainer::finish_param_gather(int group) {
  bool found = false;
  for (auto it = param_gathers_.begin(); it != param_gathers_.end();) {
    if (it->first != group) {
      ++it;
      continue;
    }
    it->second->wait();  // NCCL: the compute stream waits for it, the host does not
    it = param_gathers_.erase(it);
    found = true;
  }
  if (!found || sharded_masters_) return;  // (sharded masters: the copy itself was gathered)
  const auto [b, e] = model_.parameters().group_range(group);  // (logical = storage: not compact)
  model_.parameters().refresh_compute(model_.backend(), b, e - b);
}

void Trainer::finish_param_gathers() {
  while (!param_gathers_.empty()) finish_param_gather(param_gathers_.front().first);
}

void Trainer::sync_compute_weights() {
  finish_param_gathers();
  sync_compute_weights_resident();
}

Trainer::~Trainer() {
  // (the requests still in flight wait as they are destroyed, after this)
  model_.set_layer_hooks({}, {});
  model_.set_grad_ready_hook({});
}

void Trainer::sync_compute_weights_resident() {
  finish_param_gather(-1);  // overlapped ZeRO-1/2: the resident tensors first (the embeddings)
  if (!compute_stale_) return;
  // ZeRO-3: the resident tensors' copy only; a layer's comes with its gather.
  if (zero_ == 3)
    model_.parameters().refresh_compute(model_.backend(), 0, model_.parameters().resident_numel());
  else
    model_.refresh_compute_weights();
  compute_stale_ = false;
}

void Trainer::set_parameter(const ParamSpec& s, const Tensor& values) {
  finish_param_gathers();  // (a gather still running would overwrite the values)
  const ParameterSet& ps = model_.parameters();
  LLM_CHECK(values.device().is_cpu() && values.numel() == numel(s.shape), "set_parameter '", s.name, "': ",
            values.numel(), " host values for ", shape_str(s.shape));
  if (sharded_masters_) {
    // This rank's part of the masters into the shard, the LayerNorms' whole into the packed
    // buffer, and the copy rounded here as the owners' update would have (every rank has them).
    Backend& be = model_.backend();
    const Tensor flat = values.view({values.numel()});
    const auto [lo, hi] = owned(s.offset, s.offset + numel(s.shape));
    if (hi > lo) be.copy(param_shard_.flat(lo - own_begin(), hi - lo), flat.flat(lo - s.offset, hi - lo));
    if (s.f32_op) be.copy(ps.param(s.name), values);
    const Tensor copy = ps.compute_param(s.name);
    be.convert(copy, copy.device().is_cpu() ? values : be.upload(values));
    return;
  }
  compute_stale_ = true;
  if (zero_ == 3) {  // this rank's part of it into the shard; a layer's tensor lives nowhere else
    const Tensor flat = values.view({values.numel()});
    const auto [lo, hi] = owned(s.offset, s.offset + numel(s.shape));
    if (hi > lo) model_.backend().copy(param_shard_.flat(lo - own_begin(), hi - lo), flat.flat(lo - s.offset, hi - lo));
    if (s.group >= 0) return;
  }
  const Tensor dst = ps.param(s.name);  // resident storage
  if (dst.device().is_cpu())
    dst.copy_from(values);
  else
    model_.backend().copy(dst, values);
}

Trainer::StateBytes Trainer::state_bytes() const {
  const ParameterSet& ps = model_.parameters();
  StateBytes b;
  b.parameters = static_cast<int64_t>(ps.flat_params().nbytes()) +
                 (ps.flat_compute().defined() ? static_cast<int64_t>(ps.flat_compute().nbytes()) : 0) +
                 (param_shard_.defined() ? static_cast<int64_t>(param_shard_.nbytes()) : 0);
  b.gradients = static_cast<int64_t>(ps.flat_grads().nbytes()) +
                (grad_shard_.defined() ? static_cast<int64_t>(grad_shard_.nbytes()) : 0);
  b.optimizer = static_cast<int64_t>(optimizer_.m().nbytes() + optimizer_.v().nbytes());
  return b;
}

std::pair<Tensor, Tensor> Trainer::full_optimizer_state() {
  Backend& be = model_.backend();
  auto host = [&](const Tensor& t) { return t.device().is_cpu() ? t : be.download(t); };
  if (shard_offsets_.empty() || !dp_ || dp_->size() == 1) return {host(optimizer_.m()), host(optimizer_.v())};
  const int64_t n = model_.parameters().numel(), b = optimizer_.shard_begin(), e = optimizer_.shard_end();
  // Gathered where the group's collectives run (the device under NCCL), then brought to the host.
  const bool direct = dp_->takes(optimizer_.m().device());
  std::pair<Tensor, Tensor> full{direct ? be.zeros({n}) : Tensor::zeros({n}), direct ? be.zeros({n}) : Tensor::zeros({n})};
  be.copy(full.first.flat(b, e - b), optimizer_.m());
  be.copy(full.second.flat(b, e - b), optimizer_.v());
  dp_->all_gather_ranges(full.first, shard_offsets_);
  dp_->all_gather_ranges(full.second, shard_offsets_);
  return {host(full.first), host(full.second)};
}

void Trainer::plan_buckets(int64_t dp_size) {
  const ParameterSet& ps = model_.parameters();
  const int64_t cap = args_.ddp_bucket_size > 0 ? args_.ddp_bucket_size
                                                : std::max<int64_t>(40'000'000, 1'000'000 * dp_size);
  const int first = model_.first_layer(), last = last_layer();
  Bucket cur;
  int64_t n = 0;
  for (int l = last; l >= first; --l) {  // the order backward completes them
    for (auto r : ps.ranges_if([&](const ParamSpec& s) { return s.group == l && !s.partial_grad && !s.tied_copy; })) {
      cur.ranges.push_back(r);
      n += r.second - r.first;
    }
    cur.trigger_layer = l;
    if (n >= cap || l == first) {
      std::sort(cur.ranges.begin(), cur.ranges.end());
      std::vector<std::pair<int64_t, int64_t>> merged;
      for (auto r : cur.ranges) {
        if (!merged.empty() && merged.back().second == r.first)
          merged.back().second = r.second;
        else
          merged.push_back(r);
      }
      cur.ranges = std::move(merged);
      buckets_.push_back(std::move(cur));
      cur = Bucket{};
      n = 0;
    }
  }
  rest_ranges_ = ps.ranges_if([](const ParamSpec& s) { return s.group < 0 || s.partial_grad || s.tied_copy; });
  overlap_ = true;
  model_.set_grad_ready_hook([this](int layer) { on_grad_ready(layer); });
}

void Trainer::on_grad_ready(int layer) {
  if (!reduce_in_backward_) return;
  const Tensor& g = model_.parameters().flat_grads();
  for (const Bucket& b : buckets_)
    if (b.trigger_layer == layer)
      for (auto [lo, hi] : b.ranges)
        inflight_.push_back(shard_offsets_.empty() ? dp_->all_reduce_sum_async(g.flat(lo, hi - lo))
                                                   : dp_->reduce_scatter_ranges_async(g.flat(lo, hi - lo), clamp_offsets(lo, hi)));
  for (auto& r : inflight_) r->test();  // progress the ones in flight while backward goes on
}

void Trainer::backward(int64_t k, int64_t micro) {
  reduce_in_backward_ = overlap_ && k == micro - 1;
  model_.backward(loss_weight(micro));
  reduce_in_backward_ = false;
}

double Trainer::evaluate(const SampleSource& valid, int64_t iters) {
  const ModelParallel& mp = model_.model_parallel();
  sync_compute_weights_resident();
  const int64_t micro = args_.micro_batches(), replicas = dp_ ? dp_->size() / mp.sp_size() : 1;
  double sum = 0;
  for (int64_t k = 0; k < iters; ++k)
    for (int64_t m = 0; m < micro; ++m) {  // this replica's slice of global batch k, as in training
      fill_micro_batch(valid, static_cast<uint64_t>(k * args_.global_batch_size), m);
      if (!mp.first_stage()) mp.pipeline->recv(model_.stage_input(tokens_.size(0), tokens_.size(1)), mp.pp_rank() - 1, kForward);
      sum += model_.forward(tokens_, targets_);
      if (!mp.last_stage()) mp.pipeline->send(model_.stage_output(), mp.pp_rank() + 1, kForward);
    }
  if (mp.pp_size() > 1) sum = mp.pipeline->all_reduce_sum(sum);  // the last stage's losses
  // Every replica's: once per replica (a replica's Ulysses ranks each hold its whole loss).
  if (dp_ && dp_->size() > 1) sum = dp_->all_reduce_sum(mp.sp_rank() == 0 ? sum : 0.0);
  return iters ? sum / static_cast<double>(iters * micro * replicas) : NAN;
}

double Trainer::pipeline_step(int64_t micro, const std::function<void(int64_t)>& load, IterationStats& st) {
  // 1F1B (PipeDream-Flush, as Megatron's non-interleaved schedule): stage s runs P - s - 1
  // warm-up forwards, then alternates one forward and one backward, then drains the backwards.
  // At most P - s micro-batches are in flight (consecutive ones), each in its own activation set
  // (k mod (P - s)).
  // Opposite-direction transfers between neighbours are paired (send_recv), so no two stages
  // can block on each other's sends.
  GPT& m = model_;
  const ModelParallel& mp = m.model_parallel();
  Communicator& pipe = *mp.pipeline;
  const int s = mp.pp_rank(), P = mp.pp_size();
  const int prev = mp.first_stage() ? -1 : s - 1, next = mp.last_stage() ? -1 : s + 1;
  const int64_t B = tokens_.size(0), T = tokens_.size(1);
  const int64_t warmup = std::min<int64_t>(P - s - 1, micro), remaining = micro - warmup;
  double loss_sum = 0, comm = 0;
  auto select = [&](int64_t k) { m.select_micro_batch(static_cast<int>(k % (P - s))); };
  // With the timer block on (--timing-log-level >= 1), device work is synchronised around each
  // transfer, as Megatron's timers do: NCCL's sends and receives are only queued otherwise.
  const bool sync_timers = args_.timing_log_level >= 1;
  auto timed = [&](auto&& f) {
    if (sync_timers) m.backend().synchronize();
    Timer t;
    f();
    if (sync_timers) m.backend().synchronize();
    comm += t.seconds();
  };
  auto recv_forward = [&](int64_t k) {
    select(k);
    if (prev >= 0) {
      const Tensor in = m.stage_input(B, T);
      timed([&] { pipe.recv(in, prev, kForward); });
    }
  };
  auto forward = [&](int64_t k) {  // micro-batch k, its activation set selected and input received
    load(k);
    loss_sum += m.forward(tokens_, targets_, loss_weight(micro));
  };
  for (int64_t k = 0; k < warmup; ++k) {
    recv_forward(k);
    forward(k);
    if (next >= 0) timed([&] { pipe.send(m.stage_output(), next, kForward); });
  }
  if (remaining > 0) recv_forward(warmup);
  for (int64_t i = 0; i < remaining; ++i) {
    const int64_t k = warmup + i;  // forward of k, then backward of i
    forward(k);
    const Tensor out = next >= 0 ? m.stage_output() : Tensor{};
    select(i);
    if (next >= 0) {
      const Tensor dout = m.stage_output_grad(B, T);
      timed([&] { pipe.send_recv(out, next, kForward, dout, next, kBackward); });
    }
    backward(i, micro);
    const Tensor din = prev >= 0 ? m.stage_input_grad() : Tensor{};
    if (i + 1 == remaining) {
      if (prev >= 0) timed([&] { pipe.send(din, prev, kBackward); });
    } else {
      select(k + 1);
      if (prev >= 0) {
        const Tensor in = m.stage_input(B, T);
        timed([&] { pipe.send_recv(din, prev, kBackward, in, prev, kForward); });
      }
    }
  }
  for (int64_t j = remaining; j < micro; ++j) {  // cool-down: the warm-up micro-batches' backwards
    select(j);
    if (next >= 0) {
      const Tensor dout = m.stage_output_grad(B, T);
      timed([&] { pipe.recv(dout, next, kBackward); });
    }
    backward(j, micro);
    if (prev >= 0) timed([&] { pipe.send(m.stage_input_grad(), prev, kBackward); });
  }
  m.select_micro_batch(0);
  st.pipeline_seconds = comm;
  // Every stage needs the loss (they decide together whether the step is finite).
  return pipe.all_reduce_sum(loss_sum);
}

}  // namespace llm
