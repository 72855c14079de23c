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
}  // namespace

Trainer::Trainer(const TrainArgs& args, GPT& model, const SampleSource& train, Communicator* dp)
    : args_(args), model_(model), train_(train),
      optimizer_(model.parameters(), model.backend(), optimizer_config(args)), dp_(dp) {
  const int64_t dp_size = dp_ ? dp_->size() : 1, sp = model.model_parallel().sp_size();
  LLM_CHECK(dp_size == args.data_parallel_size * sp, "gradient group of ", dp_size,
            " ranks, but the arguments say data parallel ", args.data_parallel_size, " x Ulysses ", sp, " = ",
            args.data_parallel_size);
  model_.set_recompute(args.full_recompute());
  optimizer_.set_tensor_parallel(model_.model_parallel().group);
  optimizer_.set_pipeline(model_.model_parallel().pipeline);
  if (args.zero_stage == 1 && dp_size > 1) {
    // ZeRO-1: each replica keeps the optimizer state of a contiguous 1/dp of the flat buffer.
    const int64_t n = model_.parameters().numel();
    for (int64_t r = 0; r <= dp_size; ++r) shard_offsets_.push_back(n * r / dp_size);
    optimizer_.set_shard(shard_offsets_[dp_->rank()], shard_offsets_[dp_->rank() + 1]);
  }
  if (args.overlap_grad_reduce && dp_size > 1) {
    if (model_.parameters().flat_grads().device().is_cpu()) {
      plan_buckets(dp_size);
    }  // else: device gradients go through the host in one piece (the MPI path)
  }
  LLM_CHECK(train.seq_length() == args.seq_length, "data sequence length ", train.seq_length(),
            " differs from --seq-length ", args.seq_length);
  if (train.vocab_size() > model.config().vocab_size)
    throw ConfigError(detail::concat(train.describe(), ": vocabulary ", train.vocab_size(),
                                     " exceeds the model's --vocab-size ", model.config().vocab_size));
  schedule_.lr = args.lr;
  schedule_.min_lr = args.min_lr;
  schedule_.warmup_iters = args.lr_warmup_iters;
  schedule_.decay_iters = args.lr_decay_iters ? args.lr_decay_iters : args.train_iters;
  schedule_.style = args.lr_decay_style;
  LLM_CHECK(args.seq_length % sp == 0, "--seq-length ", args.seq_length, " is not divisible by Ulysses ", sp);
  tokens_ = Tensor::empty({args.micro_batch_size, args.seq_length / sp}, DType::i32);
  targets_ = Tensor::empty({args.micro_batch_size, args.seq_length / sp}, DType::i32);
  sample_ = Tensor::empty({args.seq_length + 1}, DType::i32);
}

void Trainer::fill_batch(const SampleSource& src, uint64_t first_index, int64_t rows) {
  // Ulysses: this rank's positions [sp_rank * T, (sp_rank + 1) * T) of each sample.
  const int64_t T = tokens_.size(1), off = model_.model_parallel().sp_rank() * T;
  int32_t* s = sample_.data<int32_t>();
  for (int64_t r = 0; r < rows; ++r) {
    src.sample((first_index + static_cast<uint64_t>(r)) % src.num_samples(), s);
    std::copy(s + off, s + off + T, tokens_.data<int32_t>() + r * T);
    std::copy(s + off + 1, s + off + T + 1, targets_.data<int32_t>() + r * T);
  }
}

IterationStats Trainer::train_step() {
  Timer timer;
  IterationStats st;
  st.iteration = ++iteration_;
  st.lr = schedule_.at(iteration_);
  const int64_t micro = args_.micro_batches();
  // The gradient group is data parallel x Ulysses (group rank = dp_rank * sp + sp_rank): the
  // Ulysses ranks of a replica read the same samples and hold partial gradients of them.
  const int64_t sp = model_.model_parallel().sp_size();
  const int64_t dp_size = dp_ ? dp_->size() : 1, dp_rank = dp_ ? dp_->rank() / sp : 0;
  model_.zero_grad();
  double loss_sum = 0;
  Timer phase;
  auto load = [&](int64_t k) {  // micro-batch k of this replica's slice of the global batch
    const uint64_t first = global_sample_index(static_cast<uint64_t>(consumed_samples_), dp_rank, micro,
                                               args_.micro_batch_size, k, 0);
    Timer data_timer;
    fill_batch(train_, first, args_.micro_batch_size);
    st.data_seconds += data_timer.seconds();
  };
  if (model_.model_parallel().pp_size() > 1) {
    loss_sum = pipeline_step(micro, load, st);
  } else {
    for (int64_t k = 0; k < micro; ++k) {
      load(k);
      loss_sum += model_.forward(tokens_, targets_);
      backward(k, micro);
    }
  }
  model_.reduce_partial_grads();
  model_.reduce_tied_grads();
  model_.backend().synchronize();
  st.forward_backward_seconds = phase.seconds();
  double grad_scale = 1.0;
  if (dp_size > 1) {
    phase.reset();
    // Sum the replicas' gradients (each is the mean over its own samples) and average: the
    // gradient of the global batch's mean loss, identical on every rank.
    const Tensor& g = model_.parameters().flat_grads();
    if (overlap_) {
      // The layers' buckets are in flight; the embeddings, head, partial and tied gradients
      // (complete only now) go in one more round, then everything is waited for.
      for (auto [b, e] : rest_ranges_) dp_->all_reduce_sum(g.flat(b, e - b));
      for (auto& r : inflight_) r->wait();
      inflight_.clear();
    } else if (g.device().is_cpu()) {
      dp_->all_reduce_sum(g);
    } else {
      Tensor h = model_.backend().download(g);
      dp_->all_reduce_sum(h);
      model_.backend().copy(g, h);
    }
    loss_sum = dp_->all_reduce_sum(loss_sum);
    grad_scale = static_cast<double>(sp) / static_cast<double>(dp_size);  // 1 / data-parallel size
    st.grads_all_reduce_seconds = phase.seconds();
  }
  st.loss = loss_sum / static_cast<double>(micro * dp_size);
  st.finite = std::isfinite(st.loss);
  if (st.finite) {
    phase.reset();
    StepResult r = optimizer_.step(st.lr, grad_scale);
    model_.backend().synchronize();
    st.optimizer_seconds = phase.seconds();
    st.grad_norm = r.grad_norm;
    st.finite = r.finite;
    if (r.finite && !shard_offsets_.empty()) {
      phase.reset();
      // Each replica updated its range: share them so every replica has all parameters.
      const Tensor& w = model_.parameters().flat_params();
      Tensor h = w.device().is_cpu() ? w : model_.backend().download(w);
      dp_->all_gather_ranges(h, shard_offsets_);
      if (!w.device().is_cpu()) model_.backend().copy(w, h);
      st.params_all_gather_seconds = phase.seconds();
    }
  }
  if (!st.finite) ++nan_iterations_;
  consumed_samples_ += args_.global_batch_size;
  model_.backend().synchronize();
  st.seconds = timer.seconds();
  return st;
}

std::pair<Tensor, Tensor> Trainer::full_optimizer_state() {
  Backend& be = model_.backend();
  auto host = [&](const Tensor& t) { return t.device().is_cpu() ? t : be.download(t); };
  if (shard_offsets_.empty()) return {host(optimizer_.m()), host(optimizer_.v())};
  const int64_t n = model_.parameters().numel(), b = optimizer_.shard_begin(), e = optimizer_.shard_end();
  std::pair<Tensor, Tensor> full{Tensor::zeros({n}), Tensor::zeros({n})};
  full.first.flat(b, e - b).copy_from(host(optimizer_.m()));
  full.second.flat(b, e - b).copy_from(host(optimizer_.v()));
  dp_->all_gather_ranges(full.first, shard_offsets_);
  dp_->all_gather_ranges(full.second, shard_offsets_);
  return full;
}

void Trainer::plan_buckets(int64_t dp_size) {
  const ParameterSet& ps = model_.parameters();
  const int64_t cap = args_.ddp_bucket_size > 0 ? args_.ddp_bucket_size
                                                : std::max<int64_t>(40'000'000, 1'000'000 * dp_size);
  const int first = model_.first_layer();
  const int last = first + static_cast<int>(args_.num_layers / model_.model_parallel().pp_size()) - 1;
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
      for (auto [lo, hi] : b.ranges) inflight_.push_back(dp_->all_reduce_sum_async(g.flat(lo, hi - lo)));
  for (auto& r : inflight_) r->test();  // progress the ones in flight while backward goes on
}

void Trainer::backward(int64_t k, int64_t micro) {
  reduce_in_backward_ = overlap_ && k == micro - 1;
  model_.backward(1.0f / static_cast<float>(micro));
  reduce_in_backward_ = false;
}

double Trainer::evaluate(const SampleSource& valid, int64_t iters) {
  const ModelParallel& mp = model_.model_parallel();
  double sum = 0;
  for (int64_t k = 0; k < iters; ++k) {
    fill_batch(valid, static_cast<uint64_t>(k * args_.micro_batch_size), args_.micro_batch_size);
    if (!mp.first_stage()) mp.pipeline->recv(model_.stage_input(tokens_.size(0), tokens_.size(1)), mp.pp_rank() - 1, kForward);
    sum += model_.forward(tokens_, targets_);
    if (!mp.last_stage()) mp.pipeline->send(model_.stage_output(), mp.pp_rank() + 1, kForward);
  }
  if (mp.pp_size() > 1) sum = mp.pipeline->all_reduce_sum(sum);  // the last stage's losses
  return iters ? sum / static_cast<double>(iters) : NAN;
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
  auto timed = [&](auto&& f) {
    Timer t;
    f();
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
    loss_sum += m.forward(tokens_, targets_);
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
