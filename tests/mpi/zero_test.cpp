// ZeRO stages 2 and 3 against the single-process run on every rank: the same loss and gradient
// norm step after step, the full parameters gathered from the shards equal to the reference's
// after the first step (to fp32 round-off of the reduction), alone and with a pipeline; and the
// model states per rank shrink as the stage grows (stage 3 holds one layer, not all of them).
// With --overlap-grad-reduce (each layer's reduce-scatter overlapped with the next layer's
// backward) the same, and exactly the blocking run's numbers.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>

#include "comm/communicator.h"
#include "data/mock_data.h"
#include "model/gpt.h"
#include "mpi/mpi_support.h"
#include "support/max_or_nan.h"
#include "sweep/perf_model.h"
#include "train/trainer.h"

namespace {

using llm::Tensor;

// llm-sweep's model-state bytes (sweep/perf_model.h) are what the trainer holds, to the rounding
// of a shard (one element of each sharded state).
void expect_model_states(const llm::Trainer& t, const llm::GPT& model, const char* dtype, int zero, int dp) {
  const llm::ParameterSet& ps = model.parameters();
  const llm::Trainer::StateBytes sb = t.state_bytes();
  int64_t f32_op = 0;
  for (const llm::ParamSpec& s : ps.specs()) f32_op += s.f32_op ? llm::numel(s.shape) : 0;
  const llm::sweep::ModelStateMemory want =
      llm::sweep::model_state_memory(static_cast<double>(ps.numel()), dtype, zero, dp, static_cast<double>(ps.resident_numel()),
                                     static_cast<double>(ps.layer_area()), ps.grad_areas(), ps.param_areas(),
                                     static_cast<double>(f32_op));
  EXPECT_NEAR(static_cast<double>(sb.parameters), want.params, 4.0) << "ZeRO-" << zero << " " << dtype;
  EXPECT_NEAR(static_cast<double>(sb.gradients), want.grads, 4.0) << "ZeRO-" << zero << " " << dtype;
  EXPECT_NEAR(static_cast<double>(sb.optimizer), want.optimizer, 8.0) << "ZeRO-" << zero << " " << dtype;
}

llm::TrainArgs zero_args(int zero, int dp, int pp, int64_t global_batch, bool overlap = false) {
  return mpi_support::tiny_train_args(global_batch, 21, [&](llm::TrainArgs& a) {
    a.data_parallel_size = dp;
    a.pipeline_model_parallel_size = pp;
    a.zero_stage = zero;
    a.overlap_grad_reduce = overlap;
    a.overlap_param_gather = overlap;
  });
}

// overlap: --overlap-grad-reduce (ZeRO-1: buckets; ZeRO-2/3: each layer's reduce-scatter in
// flight while the next layer's backward runs, two gradient working areas) and
// --overlap-param-gather (ZeRO-1/2: the post-step all-gather finished layer by layer before
// each forward; ZeRO-3: the next layer's gather while this one computes, two parameter areas),
// also against the blocking run: the same reductions in the same order, so the same numbers
// exactly.
void check_zero(int zero, int pp, bool overlap = false) {
  auto world = llm::mpi_world_communicator();
  if (world->size() % pp) GTEST_SKIP() << "world " << world->size() << " not divisible by pp " << pp;
  const int dp = world->size() / pp, me = world->rank(), stage = me / dp, dp_rank = me % dp;
  auto grads = llm::mpi_split_communicator(stage, dp_rank);
  auto pipe = llm::mpi_split_communicator(1000 + dp_rank, stage);
  // 2 micro-batches per replica: gradients accumulate in the shards
  const llm::TrainArgs a = zero_args(zero, dp, pp, 4 * dp, overlap), one = zero_args(0, 1, 1, 4 * dp),
                       blocking = zero_args(zero, dp, pp, 4 * dp);
  llm::MockDataSource data(200, 16, 3);
  llm::Backend& be = llm::cpu_backend();
  llm::ModelParallel mp;
  mp.pipeline = pipe.get();
  mp.zero_stage = zero >= 2 ? zero : 0;
  llm::ModelParallel mp_blocking = mp;
  mp.zero_grad_areas = overlap && zero >= 2 ? 2 : 1;
  mp.zero_param_areas = overlap && zero == 3 ? 2 : 1;
  llm::GPT ref(one.model_config(), be, 21, 16);
  llm::GPT model(a.model_config(), be, 21, 16, mp);
  std::unique_ptr<llm::GPT> model_b;  // overlap: the blocking run too
  std::unique_ptr<llm::Trainer> tb;
  if (overlap) {
    model_b = std::make_unique<llm::GPT>(blocking.model_config(), be, 21, 16, mp_blocking);
    tb = std::make_unique<llm::Trainer>(blocking, *model_b, data, grads.get());
  }
  llm::Trainer tr(one, ref, data), tz(a, model, data, grads.get());
  for (int it = 1; it <= 3; ++it) {
    const llm::IterationStats r = tr.train_step(), z = tz.train_step();
    EXPECT_NEAR(z.loss, r.loss, 1e-5 * r.loss) << "ZeRO-" << zero << ", iteration " << it;
    EXPECT_NEAR(z.grad_norm, r.grad_norm, 1e-4 * r.grad_norm) << "ZeRO-" << zero << ", iteration " << it;
    if (tb) {
      const llm::IterationStats b = tb->train_step();
      EXPECT_EQ(z.loss, b.loss) << "ZeRO-" << zero << " overlapped against blocking, iteration " << it;
      EXPECT_EQ(z.grad_norm, b.grad_norm) << "ZeRO-" << zero << " overlapped against blocking, iteration " << it;
    }
    if (it == 1) {
      // Parameters after one step: gathered from the shards (collective under ZeRO-3).
      const Tensor full = tz.full_parameters();
      if (tb) {
        const Tensor fb = tb->full_parameters();
        int64_t differ = 0;
        for (int64_t i = 0; i < full.numel(); ++i) differ += full.data<float>()[i] != fb.data<float>()[i];
        EXPECT_EQ(differ, 0) << "parameters after one step, overlapped against blocking";
      }

      // Adam's first step moves an element by lr g / (|g| + eps): where the reference gradient is
      // cancellation noise (the key bias's is exactly zero in exact arithmetic: softmax ignores a
      // per-row constant; measured 1e-13..1e-8 against tensor maxima ~1e-2), a different replica
      // count sums that noise in another order and the update follows it, up to lr. Those elements
      // (below 1e-5 of the tensor's largest gradient) are held to lr, every other to 1e-4 of the
      // tensor's magnitude; a wrong shard offset or a lost update misses both.
      for (const llm::ParamSpec& s : model.parameters().specs()) {
        const Tensor want = ref.parameters().param(s.name), g = ref.parameters().grad(s.name);
        double mag = 1e-12, gmax = 0;
        for (int64_t i = 0; i < want.numel(); ++i) {
          mag = std::max(mag, std::fabs(double(want.data<float>()[i])));
          gmax = std::max(gmax, std::fabs(double(g.data<float>()[i])));
        }
        double err = 0, noise_err = 0;
        for (int64_t i = 0; i < want.numel(); ++i) {
          const double e = std::fabs(double(want.data<float>()[i]) - double(full.data<float>()[s.offset + i]));
          double& worst = std::fabs(double(g.data<float>()[i])) < 1e-5 * gmax ? noise_err : err;
          worst = llm::testing::max_or_nan(worst, e);
        }
        EXPECT_LE(err, 1e-4 * mag) << s.name << " on stage " << stage;
        EXPECT_LE(noise_err, a.lr) << s.name << " on stage " << stage << " (noise-level gradients)";
      }
    }
  }
  if (zero == 1 && dp > 1) {
    // ZeRO-1 reduce-scatters the gradients onto their owners (buckets and the rest alike): the
    // whole buffer once, no all-reduce of it; then the updated ranges are gathered.
    grads->reset_volume();
    tz.train_step();
    const int64_t bytes = 4 * model.parameters().numel();
    EXPECT_EQ(grads->volume().reduce_scatter, bytes);
    EXPECT_EQ(grads->volume().all_reduce, 0);
    EXPECT_EQ(grads->volume().all_gather, bytes);
  }
  if (tz.overlaps_param_gather()) {
    // After a step every group's gather is in flight (started, not finished); a forward pass
    // (evaluation) finishes the resident tensors' at its start and each layer's before its forward.
    const int64_t groups = static_cast<int64_t>(model.parameters().groups().size());
    EXPECT_EQ(tz.param_gathers_in_flight(), groups);
    EXPECT_GE(groups, 2);
    tz.evaluate(data, 1);
    EXPECT_EQ(tz.param_gathers_in_flight(), 0);
  } else {
    EXPECT_EQ(tz.param_gathers_in_flight(), 0);
  }
  // Prefetched: every layer of a pass but its first, forward and backward, each micro-batch.
  const int64_t stage_layers = a.num_layers / pp;
  EXPECT_EQ(tz.prefetched_gathers(), overlap && zero == 3 ? 3 * 2 * 2 * (stage_layers - 1) : 0);
  // Model states: ZeRO-3 keeps one layer of parameters and gradients plus the shards.
  const llm::Trainer::StateBytes sb = tz.state_bytes();
  const llm::ParameterSet& ps = model.parameters();
  const int64_t n = ps.numel(), own = n / dp + 1;
  const int64_t areas = overlap && zero >= 2 ? 2 : 1;
  // ZeRO-1/2: the post-step all-gather started layer by layer, finished before each forward
  EXPECT_EQ(tz.overlaps_param_gather(), overlap && zero < 3 && dp > 1);
  EXPECT_EQ(ps.grad_areas(), areas);
  const int64_t param_areas = overlap && zero == 3 ? 2 : 1;
  EXPECT_EQ(ps.param_areas(), param_areas);
  if (zero == 3) {
    EXPECT_LE(sb.parameters, 4 * (ps.resident_numel() + param_areas * ps.layer_area() + own));
    // (one rank's shard is everything, plus the working area; the 4-layer model's two areas and a
    // half shard are more than its replica)
    if (pp == 1 && dp > 1 && param_areas == 1) {
      EXPECT_LT(sb.parameters, 4 * n) << "ZeRO-3 holds less than the replicated parameters";
    }
  } else {
    EXPECT_EQ(sb.parameters, 4 * n);
  }
  if (zero >= 2) {
    EXPECT_LE(sb.gradients, 4 * (ps.resident_numel() + areas * ps.layer_area() + own));
  }
  EXPECT_LE(sb.optimizer, 8 * own);
  expect_model_states(tz, model, "fp32", zero, dp);
}

// ZeRO-2/3 with tensor parallelism and Megatron sequence parallelism (2 x 2 ranks): a layer's
// LayerNorm gradients are partial sums over the tensor group, completed as the layer finishes
// (before its reduce-scatter onto the owners), so the loss and gradient norm follow the single
// process, and a replicated tensor (the LayerNorms, the row-parallel biases) stays the same on
// both tensor-parallel ranks, each of which another data-parallel group updates.
void check_zero_tensor_parallel(int zero, bool overlap) {
  auto world = llm::mpi_world_communicator();
  if (world->size() != 4) GTEST_SKIP() << "needs 4 ranks (tensor parallel 2 x data parallel 2), world has " << world->size();
  const int tp = 2, dp = 2, me = world->rank(), tp_rank = me % tp, dp_rank = me / tp;
  auto tp_group = llm::mpi_split_communicator(dp_rank, tp_rank);
  auto grads = llm::mpi_split_communicator(1000 + tp_rank, dp_rank);
  auto layout = [&](int stage) {
    return mpi_support::tiny_train_args(4 * dp, 21, [&](llm::TrainArgs& a) {
      a.data_parallel_size = stage ? dp : 1;
      a.tensor_model_parallel_size = stage ? tp : 1;
      a.sequence_parallel = stage != 0;
      a.zero_stage = stage;
      a.overlap_grad_reduce = overlap && stage;
      a.overlap_param_gather = overlap && stage;
    });
  };
  const llm::TrainArgs a = layout(zero), one = layout(0);
  llm::MockDataSource data(200, 16, 3);
  llm::Backend& be = llm::cpu_backend();
  llm::ModelParallel mp{tp_group.get(), true, nullptr};
  mp.zero_stage = zero;
  mp.zero_grad_areas = overlap ? 2 : 1;
  mp.zero_param_areas = overlap && zero == 3 ? 2 : 1;
  llm::GPT ref(one.model_config(), be, 21, 16), model(a.model_config(), be, 21, 16, mp);
  llm::Trainer tr(one, ref, data), tz(a, model, data, grads.get());
  const std::string what = "ZeRO-" + std::to_string(zero) + " x tensor parallel 2 x sequence parallel" +
                           (overlap ? ", overlapped" : "");
  for (int it = 1; it <= 3; ++it) {
    const llm::IterationStats r = tr.train_step(), z = tz.train_step();
    EXPECT_NEAR(z.loss, r.loss, 1e-5 * r.loss) << what << ", iteration " << it;
    EXPECT_NEAR(z.grad_norm, r.grad_norm, 1e-4 * r.grad_norm) << what << ", iteration " << it;
    const Tensor full = tz.full_parameters();
    int replicated = 0;
    for (const llm::ParamSpec& s : model.parameters().specs()) {
      if (s.sharded()) continue;
      ++replicated;
      // A checksum that sees any element's change: the same value on both tensor-parallel ranks.
      double sum = 0;
      for (int64_t i = 0; i < llm::numel(s.shape); ++i) sum += double(full.data<float>()[s.offset + i]) * double(i % 7 + 1);
      EXPECT_EQ(tp_group->all_reduce_max(sum), tp_group->all_reduce_min(sum))
          << s.name << " differs between the tensor-parallel ranks, " << what << ", iteration " << it;
    }
    EXPECT_EQ(replicated, 4 * 6 + 3) << "replicated tensors: per layer 4 LayerNorm, 2 row-parallel biases; wpe, ln_f";
  }
}

// bf16: the overlapped ZeRO-1/2 all-gather refreshes each group's 16-bit copy as it finishes
// (the blocking path refreshes the whole copy at the next step): the same numbers exactly.
void check_zero_bf16_overlap(int zero) {
  auto world = llm::mpi_world_communicator();
  const int dp = world->size();
  auto make = [&](bool overlap) {
    return mpi_support::tiny_train_args(4 * dp, 21, [&](llm::TrainArgs& a) {
      a.data_parallel_size = dp;
      a.zero_stage = zero;
      a.bf16 = true;
      a.overlap_param_gather = overlap;
    });
  };
  const llm::TrainArgs on = make(true), off = make(false);
  llm::MockDataSource data(200, 16, 3);
  llm::Backend& be = llm::cpu_backend();
  llm::ModelParallel mp;
  mp.zero_stage = zero >= 2 ? zero : 0;
  auto g1 = llm::mpi_split_communicator(0, world->rank()), g2 = llm::mpi_split_communicator(0, world->rank());
  llm::GPT m_on(on.model_config(), be, 21, 16, mp), m_off(off.model_config(), be, 21, 16, mp);
  llm::Trainer t_on(on, m_on, data, g1.get()), t_off(off, m_off, data, g2.get());
  EXPECT_EQ(t_on.overlaps_param_gather(), dp > 1);
  for (int it = 1; it <= 3; ++it) {
    const llm::IterationStats a = t_on.train_step(), b = t_off.train_step();
    EXPECT_EQ(a.loss, b.loss) << "ZeRO-" << zero << " bf16, iteration " << it;
    EXPECT_EQ(a.grad_norm, b.grad_norm) << "ZeRO-" << zero << " bf16, iteration " << it;
  }
  EXPECT_EQ(t_on.evaluate(data, 2), t_off.evaluate(data, 2));
}

// Mixed precision ZeRO-3 gathers each layer's 16-bit copy, each rank rounding its own part, and
// the f32 masters of the LayerNorms only (the ops read those in f32): the bytes of the layers'
// gathers nearly halve, and the numbers are ZeRO-2's exactly (the same reductions, and a copy
// rounded from the same f32 values), blocking and overlapped.
void check_zero3_bf16_gathers_the_copy(bool overlap) {
  auto world = llm::mpi_world_communicator();
  const int dp = world->size();
  auto make = [&](int zero) {
    return mpi_support::tiny_train_args(4 * dp, 21, [&](llm::TrainArgs& a) {
      a.data_parallel_size = dp;
      a.zero_stage = zero;
      a.bf16 = true;
      a.overlap_grad_reduce = overlap;
      a.overlap_param_gather = overlap;
    });
  };
  const llm::TrainArgs a2 = make(2), a3 = make(3);
  llm::MockDataSource data(200, 16, 3);
  llm::Backend& be = llm::cpu_backend();
  llm::ModelParallel mp2, mp3;
  mp2.zero_stage = 2, mp3.zero_stage = 3;
  mp2.zero_grad_areas = mp3.zero_grad_areas = overlap ? 2 : 1;
  mp3.zero_param_areas = overlap ? 2 : 1;
  auto g2 = llm::mpi_split_communicator(0, world->rank()), g3 = llm::mpi_split_communicator(0, world->rank());
  llm::GPT m2(a2.model_config(), be, 21, 16, mp2), m3(a3.model_config(), be, 21, 16, mp3);
  llm::Trainer t2(a2, m2, data, g2.get()), t3(a3, m3, data, g3.get());
  const llm::ParameterSet& ps = m3.parameters();
  ASSERT_EQ(ps.compute_dtype(), llm::DType::bf16);
  // Bytes one step gathers: each layer twice per micro-batch (forward, backward), 2 per element
  // and 4 more per LayerNorm element; then the resident tensors' f32 masters once.
  int64_t layer_bytes = 0, f32_bytes = 0;
  for (const llm::ParamSpec& sp : ps.specs()) {
    if (sp.group < 0) continue;
    layer_bytes += 2 * llm::numel(sp.shape);
    if (sp.f32_op) f32_bytes += 4 * llm::numel(sp.shape);
  }
  ASSERT_GT(f32_bytes, 0);
  ASSERT_LT(f32_bytes, layer_bytes / 10);
  const int64_t micro = a3.global_batch_size / (dp * a3.micro_batch_size);
  for (int it = 1; it <= 3; ++it) {
    g3->reset_volume();
    const llm::IterationStats x = t2.train_step(), y = t3.train_step();
    EXPECT_EQ(y.loss, x.loss) << "ZeRO-3 against ZeRO-2, bf16, iteration " << it;
    EXPECT_EQ(y.grad_norm, x.grad_norm) << "ZeRO-3 against ZeRO-2, bf16, iteration " << it;
    if (dp > 1) {
      EXPECT_EQ(g3->volume().all_gather, micro * 2 * (layer_bytes + f32_bytes) + 4 * ps.resident_numel())
          << "iteration " << it;
    }
  }
  const Tensor p2 = t2.full_parameters(), p3 = t3.full_parameters();
  ASSERT_EQ(p2.numel(), p3.numel());
  int64_t differ = 0;
  for (int64_t i = 0; i < p2.numel(); ++i) differ += p2.data<float>()[i] != p3.data<float>()[i];
  EXPECT_EQ(differ, 0) << "f32 parameters after 3 steps, ZeRO-3 against ZeRO-2";
  EXPECT_EQ(t3.evaluate(data, 2), t2.evaluate(data, 2));
  expect_model_states(t2, m2, "bf16", 2, dp);
  expect_model_states(t3, m3, "bf16", 3, dp);
}

// Sharded masters: ZeRO-1/2 in mixed precision keep the f32 masters of their own range only and
// gather the 16-bit copy the update wrote (and the LayerNorms' f32 masters) after the step. The
// numbers are those of full masters exactly (the same update of the same range, rounded to the
// same bits), blocking and overlapped, bf16 and fp16; the parameter bytes drop to
// 2 + 4/dp per element; parameters set tensor by tensor (a checkpoint load) reach the shard, the
// LayerNorms and the copy alike.
void check_sharded_masters(int zero, llm::DType dtype, bool overlap) {
  auto world = llm::mpi_world_communicator();
  const int dp = world->size();
  const char* name = dtype == llm::DType::bf16 ? "bf16" : "fp16";
  auto make = [&](bool shard) {
    return mpi_support::tiny_train_args(4 * dp, 21, [&](llm::TrainArgs& a) {
      a.data_parallel_size = dp;
      a.zero_stage = zero;
      a.bf16 = dtype == llm::DType::bf16;
      a.fp16 = dtype == llm::DType::f16;
      a.overlap_grad_reduce = overlap;
      a.overlap_param_gather = overlap;
      a.shard_masters = shard;
    });
  };
  const llm::TrainArgs as = make(true), af = make(false);
  llm::MockDataSource data(200, 16, 3);
  llm::Backend& be = llm::cpu_backend();
  llm::ModelParallel mp;
  mp.zero_stage = zero >= 2 ? zero : 0;
  mp.zero_grad_areas = overlap && zero >= 2 ? 2 : 1;
  auto gs = llm::mpi_split_communicator(0, world->rank()), gf = llm::mpi_split_communicator(0, world->rank());
  llm::GPT ms(as.model_config(), be, 21, 16, mp), mf(af.model_config(), be, 21, 16, mp);
  llm::Trainer ts(as, ms, data, gs.get()), tf(af, mf, data, gf.get());
  const std::string what = std::string("ZeRO-") + std::to_string(zero) + " " + name + (overlap ? " overlapped" : "");
  // A model built for sharded masters (llm-pretrain's): no whole f32 buffer from the start, the
  // trainer's shard from the seed; the same numbers again.
  std::unique_ptr<llm::GPT> mb;
  std::unique_ptr<llm::Communicator> gb;
  std::unique_ptr<llm::Trainer> tb;
  int64_t f32_op_elements = 0;
  if (dp > 1) {
    llm::ModelParallel mpb = mp;
    mpb.sharded_masters = dtype;
    mb = std::make_unique<llm::GPT>(as.model_config(), be, 21, 16, mpb);
    for (const llm::ParamSpec& s : mb->parameters().specs()) f32_op_elements += s.f32_op ? llm::numel(s.shape) : 0;
    EXPECT_EQ(mb->parameters().flat_params().numel(), f32_op_elements) << what << ": built without the f32 buffer";
    EXPECT_EQ(mb->precision(), dtype);
    gb = llm::mpi_split_communicator(0, world->rank());
    tb = std::make_unique<llm::Trainer>(as, *mb, data, gb.get());
    EXPECT_TRUE(tb->shards_masters());
    // Only a run that shards the masters takes such a model (not one without ZeRO, not one in
    // fp32), and only one trainer: a second would start the masters again from the seed.
    auto refused = [&](const llm::TrainArgs& args, llm::GPT& m, const char* why, const char* want) {
      auto g = llm::mpi_split_communicator(0, world->rank());
      try {
        llm::Trainer t0(args, m, data, g.get());
        ADD_FAILURE() << what << ": a sharded-masters model taken " << why;
      } catch (const llm::ConfigError& e) {
        EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
      }
    };
    llm::TrainArgs plain = as;
    plain.zero_stage = 0;
    llm::ModelParallel mp0 = mpb;
    mp0.zero_stage = 0, mp0.zero_grad_areas = 1;
    llm::GPT m0(plain.model_config(), be, 21, 16, mp0);
    refused(plain, m0, "without ZeRO", "built with sharded masters");
    llm::TrainArgs f32 = as;
    f32.bf16 = f32.fp16 = false;
    llm::GPT m32(f32.model_config(), be, 21, 16, mpb);
    refused(f32, m32, "in fp32", "built with sharded masters");
    refused(as, *mb, "by a second trainer", "held by another trainer");
  }
  ASSERT_EQ(ts.shards_masters(), dp > 1) << what;
  ASSERT_FALSE(tf.shards_masters()) << what;
  const llm::ParameterSet& ps = ms.parameters();
  auto same_copy = [&](const char* when) {
    const llm::Tensor& a = ps.flat_compute();
    const llm::Tensor& b = mf.parameters().flat_compute();
    ASSERT_EQ(a.nbytes(), b.nbytes());
    const auto* x = static_cast<const uint16_t*>(a.raw());
    const auto* y = static_cast<const uint16_t*>(b.raw());
    int64_t differ = 0;
    for (int64_t i = 0; i < a.numel(); ++i) differ += x[i] != y[i];
    EXPECT_EQ(differ, 0) << what << ": the 16-bit copy " << when;
  };
  auto same_params = [&](llm::Trainer& a, llm::Trainer& b, const char* when) {
    const Tensor p = a.full_parameters(), q = b.full_parameters();
    ASSERT_EQ(p.numel(), q.numel());
    int64_t differ = 0;
    for (int64_t i = 0; i < p.numel(); ++i) differ += p.data<float>()[i] != q.data<float>()[i];
    EXPECT_EQ(differ, 0) << what << ": f32 parameters " << when;
  };
  for (int it = 1; it <= 3; ++it) {
    const llm::IterationStats x = ts.train_step(), y = tf.train_step();
    EXPECT_EQ(x.loss, y.loss) << what << ", iteration " << it;
    EXPECT_EQ(x.grad_norm, y.grad_norm) << what << ", iteration " << it;
    EXPECT_EQ(x.skipped, y.skipped) << what << ", iteration " << it;
    if (tb) {
      const llm::IterationStats z = tb->train_step();
      EXPECT_EQ(z.loss, y.loss) << what << ", built sharded, iteration " << it;
      EXPECT_EQ(z.grad_norm, y.grad_norm) << what << ", built sharded, iteration " << it;
    }
  }
  if (tb) same_params(*tb, tf, "after 3 steps, built sharded");
  ts.sync_compute_weights();
  tf.sync_compute_weights();
  same_copy("after 3 steps");
  same_params(ts, tf, "after 3 steps");
  EXPECT_EQ(ts.evaluate(data, 2), tf.evaluate(data, 2)) << what;
  if (dp == 1) return;
  // The model's f32 buffer holds the LayerNorms only; a matrix is in the copy alone.
  int64_t f32_op = 0;
  for (const llm::ParamSpec& s : ps.specs()) f32_op += s.f32_op ? llm::numel(s.shape) : 0;
  EXPECT_EQ(ps.flat_params().numel(), f32_op);
  EXPECT_TRUE(ps.has_master("h.0.ln_1.weight"));
  EXPECT_FALSE(ps.has_master("h.0.attn.c_attn.weight"));
  try {
    (void)ps.param("h.0.attn.c_attn.weight");
    ADD_FAILURE() << "param() of a matrix under sharded masters";
  } catch (const llm::Error& e) {
    EXPECT_NE(std::string(e.what()).find("sharded masters"), std::string::npos) << e.what();
  }
  expect_model_states(ts, ms, name, zero, dp);
  const int64_t n = ps.numel();
  EXPECT_LT(ts.state_bytes().parameters, 2 * n + 4 * (n / dp + 1) + 4 * f32_op + 1);
  EXPECT_EQ(tf.state_bytes().parameters, 6 * n);
  // The post-step gather: the 16-bit copy and the LayerNorms' masters, no f32 parameters else.
  gs->reset_volume();
  const llm::IterationStats x = ts.train_step(), y = tf.train_step();
  EXPECT_EQ(x.loss, y.loss) << what << ", iteration 4";
  if (!x.skipped) {
    EXPECT_EQ(gs->volume().all_gather, 2 * n + 4 * f32_op) << what;
  }
  // Parameters set tensor by tensor (a checkpoint load) into fresh trainers: the same copies and
  // masters, then the same step.
  const Tensor values = tf.full_parameters();
  llm::GPT ms2(as.model_config(), be, 5, 16, mp), mf2(af.model_config(), be, 5, 16, mp);
  auto gs2 = llm::mpi_split_communicator(0, world->rank()), gf2 = llm::mpi_split_communicator(0, world->rank());
  llm::Trainer ts2(as, ms2, data, gs2.get()), tf2(af, mf2, data, gf2.get());
  for (const llm::ParamSpec& s : ps.specs()) {
    Tensor v = Tensor::empty(s.shape);
    std::copy(values.data<float>() + s.offset, values.data<float>() + s.offset + llm::numel(s.shape), v.data<float>());
    ts2.set_parameter(s, v);
    tf2.set_parameter(s, v);
  }
  same_params(ts2, tf2, "after set_parameter");
  same_params(ts2, tf, "after set_parameter, against the source");
  const llm::IterationStats x2 = ts2.train_step(), y2 = tf2.train_step();
  EXPECT_EQ(x2.loss, y2.loss) << what << ", after set_parameter";
  EXPECT_EQ(x2.grad_norm, y2.grad_norm) << what << ", after set_parameter";
  same_params(ts2, tf2, "a step after set_parameter");
}

TEST(Zero, ShardedMastersEqualFullMastersInMixedPrecision) {
  for (int zero : {1, 2})
    for (llm::DType dtype : {llm::DType::bf16, llm::DType::f16})
      for (bool overlap : {false, true}) check_sharded_masters(zero, dtype, overlap);
}

TEST(Zero, Stage3InBf16GathersTheCopyAndEqualsStage2) {
  check_zero3_bf16_gathers_the_copy(false);
  check_zero3_bf16_gathers_the_copy(true);
}

TEST(Zero, Stage1And2OverlappedGatherInBf16EqualsTheBlockingRun) {
  check_zero_bf16_overlap(1);
  check_zero_bf16_overlap(2);
}

TEST(Zero, Stage2WithTensorAndSequenceParallelMatchesSingleProcess) {
  check_zero_tensor_parallel(2, false);
  check_zero_tensor_parallel(2, true);
}
TEST(Zero, Stage3WithTensorAndSequenceParallelMatchesSingleProcess) {
  check_zero_tensor_parallel(3, false);
  check_zero_tensor_parallel(3, true);
}
TEST(Zero, Stage2MatchesSingleProcess) { check_zero(2, 1); }
TEST(Zero, Stage3MatchesSingleProcess) { check_zero(3, 1); }
TEST(Zero, Stage2WithPipelineMatchesSingleProcess) { check_zero(2, 2); }
TEST(Zero, Stage3WithPipelineMatchesSingleProcess) { check_zero(3, 2); }
TEST(Zero, Stage1OverlappedMatchesSingleProcessAndTheBlockingRun) { check_zero(1, 1, true); }
TEST(Zero, Stage1OverlappedWithPipelineMatchesTheBlockingRun) { check_zero(1, 2, true); }
TEST(Zero, Stage2OverlappedMatchesSingleProcessAndTheBlockingRun) { check_zero(2, 1, true); }
TEST(Zero, Stage2OverlappedWithPipelineMatchesTheBlockingRun) { check_zero(2, 2, true); }
TEST(Zero, Stage3OverlappedMatchesSingleProcessAndTheBlockingRun) { check_zero(3, 1, true); }
TEST(Zero, Stage3OverlappedWithPipelineMatchesTheBlockingRun) { check_zero(3, 2, true); }

}  // namespace
