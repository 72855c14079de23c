// The GPU training check: the same tiny model, seed and data trained on the CPU backend and on
// the CUDA backend give the same loss curve. fp32 on both sides: the curves agree to fp32
// round-off growth. (The bf16 curve against the CPU fp32 one needs the mixed-precision trainer
// (--bf16), which the trainer integration adds; docs/gpu-validation.md has the command.)
// Without a device the test reports itself skipped with the reason.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "data/mock_data.h"
#include "train/trainer.h"

#ifdef LLM_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#endif

using namespace llm;

namespace {

TrainArgs tiny_args() {
  TrainArgs a;
  a.num_layers = 2;
  a.hidden_size = 64;
  a.num_attention_heads = 4;
  a.vocab_size = 128;
  a.seq_length = 64;
  a.micro_batch_size = 4;
  a.global_batch_size = 8;
  a.lr = 3e-3;
  a.min_lr = 3e-4;
  a.lr_warmup_iters = 5;
  a.train_iters = 40;
  a.seed = 11;
  a.resolve_defaults();
  a.validate();
  return a;
}

std::vector<double> train(Backend& be, const TrainArgs& a, int iters) {
  MockDataSource data(a.vocab_size, a.seq_length, static_cast<uint64_t>(a.seed));
  GPT model(a.model_config(), be, static_cast<uint64_t>(a.seed), a.seq_length);
  Trainer t(a, model, data);
  std::vector<double> losses;
  for (int i = 0; i < iters; ++i) losses.push_back(t.train_step().loss);
  return losses;
}

}  // namespace

TEST(GpuTraining, LossCurveMatchesTheCpu) {
#ifndef LLM_HAVE_CUDA
  GTEST_SKIP() << "built without CUDA (LLM_ENABLE_CUDA=OFF or no nvcc found)";
#else
  cuda::CudaBackend* gpu = cuda::cuda_backend();
  if (!gpu) GTEST_SKIP() << cuda::device_status();
  const TrainArgs a = tiny_args();
  const int iters = 40;
  const std::vector<double> cpu = train(cpu_backend(), a, iters);
  const std::vector<double> dev = train(*gpu, a, iters);
  ASSERT_EQ(cpu.size(), dev.size());
  EXPECT_LT(dev.back(), dev.front() - 0.5) << "the GPU run must learn";
  for (int i = 0; i < iters; ++i) {
    // Same fp32 math in a different order: differences start at ~1e-7 and grow with training.
    const double tol = 1e-4 * (1 + i) * std::fabs(cpu[size_t(i)]);
    EXPECT_NEAR(dev[size_t(i)], cpu[size_t(i)], tol) << "iteration " << i + 1;
  }
#endif
}
