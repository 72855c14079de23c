// The GPU training check: the same tiny model, seed and data trained on the CPU backend and on
// the CUDA backend give the same loss curve: fp32 on both sides to fp32 round-off growth, and
// bf16 (and fp16 with loss scaling) on the GPU against fp32 on the CPU to the types' tolerance,
// the same bounds the CPU's emulated mixed precision meets (tests/train/mixed_precision_test.cpp).
// Without a device the tests report themselves skipped with the reason.
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "data/mock_data.h"
#include "data/simple_tokenizers.h"
#include "infer/generator.h"
#include "model/gpt.h"
#include "support/max_or_nan.h"
#include "support/require_cuda.h"
#include "train/checkpointing.h"
#include "train/tiny_args.h"
#include "train/trainer.h"

#ifdef LLM_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#endif

using namespace llm;

namespace {

TrainArgs tiny_args() { return tiny_train_args(40, /*seq_length=*/64, /*lr_warmup_iters=*/5, /*seed=*/11); }

std::vector<double> train(Backend& be, const TrainArgs& a, int iters, std::vector<double>* grad_norms = nullptr) {
  MockDataSource data(a.vocab_size, a.seq_length, static_cast<uint64_t>(a.seed));
  GPT model(a.model_config(), be, static_cast<uint64_t>(a.seed), a.seq_length);
  Trainer t(a, model, data);
  std::vector<double> losses;
  for (int i = 0; i < iters; ++i) {
    const IterationStats st = t.train_step();
    losses.push_back(st.loss);
    if (grad_norms) grad_norms->push_back(st.grad_norm);
  }
  return losses;
}

// The GPU's backend, or null with the reason in `why` (a build without CUDA, no usable device).
Backend* gpu_or_reason(std::string& why) {
#ifdef LLM_HAVE_CUDA
  if (cuda::CudaBackend* b = cuda::cuda_backend()) return b;
  why = cuda::device_status();
#else
  why = "built without CUDA (LLM_ENABLE_CUDA=OFF or no nvcc found)";
#endif
  return nullptr;
}

}  // namespace

// Without a device the test reports itself skipped with the reason; under LLM_REQUIRE_CUDA=1 it
// fails instead (support/require_cuda.h).
#define REQUIRE_GPU(gpu)                                                                             \
  std::string gpu_skip_reason_;                                                                      \
  Backend* gpu = gpu_or_reason(gpu_skip_reason_);                                                    \
  if (!gpu && llm::testing::cuda_required())                                                         \
    GTEST_FAIL() << "LLM_REQUIRE_CUDA=1 and no CUDA backend: " << gpu_skip_reason_;                  \
  if (!gpu) GTEST_SKIP() << gpu_skip_reason_

TEST(GpuTraining, LossCurveMatchesTheCpu) {
  REQUIRE_GPU(gpu);
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
}

class GpuMixedPrecision : public ::testing::TestWithParam<DType> {};

TEST_P(GpuMixedPrecision, LossCurveMatchesTheCpuFp32) {
  REQUIRE_GPU(gpu);
  const DType t = GetParam();
  TrainArgs a = tiny_args();
  const int iters = 40;
  std::vector<double> cpu_norms, dev_norms;
  const std::vector<double> cpu = train(cpu_backend(), a, iters, &cpu_norms);
  a.bf16 = t == DType::bf16;
  a.fp16 = t == DType::f16;
  const std::vector<double> dev = train(*gpu, a, iters, &dev_norms);
  EXPECT_LT(dev.back(), dev.front() - 0.5) << "the GPU run must learn";
  // The CPU emulation's bounds (mixed_precision_test.cpp): the device adds only fp32
  // accumulation-order differences inside its bf16/fp16 GEMMs and attention tiles.
  const double loss_tol = t == DType::bf16 ? 4e-3 : 4e-4, norm_tol = t == DType::bf16 ? 2e-2 : 3e-3;
  double worst = 0, worst_norm = 0;
  for (int i = 0; i < iters; ++i) {
    const double rel = std::fabs(dev[size_t(i)] - cpu[size_t(i)]) / cpu[size_t(i)];
    const double reln = std::fabs(dev_norms[size_t(i)] - cpu_norms[size_t(i)]) / cpu_norms[size_t(i)];
    worst = llm::testing::max_or_nan(worst, rel), worst_norm = llm::testing::max_or_nan(worst_norm, reln);
    EXPECT_LT(rel, loss_tol) << "iteration " << i + 1 << ": " << dev[size_t(i)] << " vs CPU fp32 " << cpu[size_t(i)];
    EXPECT_LT(reln, norm_tol) << "iteration " << i + 1 << ": grad norm " << dev_norms[size_t(i)] << " vs "
                              << cpu_norms[size_t(i)];
  }
  std::printf("  GPU %s vs CPU fp32 over %d iterations: worst relative loss %.2e, grad norm %.2e\n",
              std::string(dtype_name(t)).c_str(), iters, worst, worst_norm);
}

INSTANTIATE_TEST_SUITE_P(Types, GpuMixedPrecision, ::testing::Values(DType::bf16, DType::f16),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

// --logits-chunk-tokens on the GPU: the head's projection and loss in chunks of 50 of a
// micro-batch's rows (the last chunk shorter) follow the whole head's loss curve; only wte's
// gradient sums its parts in another order.
class GpuLogitsChunks : public ::testing::TestWithParam<DType> {};

TEST_P(GpuLogitsChunks, FollowTheWholeHeadsLossCurve) {
  REQUIRE_GPU(gpu);
  const DType t = GetParam();
  TrainArgs a = tiny_args();
  a.bf16 = t == DType::bf16;
  const int iters = 10;
  std::vector<double> whole_norms, chunk_norms;
  const std::vector<double> whole = train(*gpu, a, iters, &whole_norms);
  a.logits_chunk_tokens = 50;
  ASSERT_NE(a.micro_batch_size * a.seq_length % a.logits_chunk_tokens, 0) << "a shorter last chunk";
  const std::vector<double> chunked = train(*gpu, a, iters, &chunk_norms);
  const double tol = t == DType::f32 ? 1e-5 : 2e-3;
  double worst = 0;
  for (int i = 0; i < iters; ++i) {
    const double rel = std::fabs(chunked[size_t(i)] - whole[size_t(i)]) / whole[size_t(i)];
    worst = llm::testing::max_or_nan(worst, rel);
    EXPECT_LT(rel, tol) << "iteration " << i + 1 << ": " << chunked[size_t(i)] << " vs " << whole[size_t(i)];
    EXPECT_LT(std::fabs(chunk_norms[size_t(i)] - whole_norms[size_t(i)]), 10 * tol * whole_norms[size_t(i)])
        << "iteration " << i + 1;
  }
  std::printf("  GPU %s, logits in chunks of 50 vs whole: worst relative loss %.2e\n",
              std::string(dtype_name(t)).c_str(), worst);
}

// The other form: forward() without the loss weight, then backward() recomputing every chunk's
// logits but the last, against the whole head on the GPU (one micro-batch's gradients). cuBLASLt
// may pick another kernel for a 50-row chunk, so bf16 logits can round differently.
TEST_P(GpuLogitsChunks, RecomputedChunksGiveTheWholeHeadsGradients) {
  REQUIRE_GPU(gpu);
  const DType t = GetParam();
  const TrainArgs a = tiny_args();
  MockDataSource data(a.vocab_size, a.seq_length, 3);
  const int64_t B = a.micro_batch_size, T = a.seq_length;
  Tensor tokens = Tensor::empty({B, T}, DType::i32), targets = Tensor::empty({B, T}, DType::i32);
  std::vector<int32_t> s(static_cast<size_t>(T) + 1);
  for (int64_t b = 0; b < B; ++b) {
    data.sample(static_cast<uint64_t>(b), s.data());
    for (int64_t i = 0; i < T; ++i) {
      tokens.data<int32_t>()[b * T + i] = s[size_t(i)];
      targets.data<int32_t>()[b * T + i] = s[size_t(i) + 1];
    }
  }
  targets.data<int32_t>()[5] = -1;  // an ignored position
  std::vector<float> grads[2];
  double losses[2];
  for (int k = 0; k < 2; ++k) {
    GPT m(a.model_config(), *gpu, static_cast<uint64_t>(a.seed), a.seq_length);
    m.set_precision(t);
    m.set_logits_chunk(k ? 50 : 0);
    m.zero_grad();
    losses[k] = m.forward(tokens, targets);
    m.backward(0.5f);
    const Tensor g = gpu->download(m.parameters().flat_grads());
    grads[k].assign(g.data<float>(), g.data<float>() + g.numel());
  }
  EXPECT_NEAR(losses[1], losses[0], (t == DType::f32 ? 1e-6 : 1e-3) * losses[0]);
  double err = 0, big = 0;
  for (size_t i = 0; i < grads[0].size(); ++i) {
    err = llm::testing::max_or_nan(err, std::fabs(double(grads[1][i]) - double(grads[0][i])));
    big = std::max(big, std::fabs(double(grads[0][i])));
  }
  ASSERT_GT(big, 0.0);
  EXPECT_LE(err, (t == DType::f32 ? 1e-4 : 2e-2) * big) << "largest gradient " << big;
  std::printf("  GPU %s, recomputed chunks of 50 vs whole: loss %.7g vs %.7g, worst gradient difference %.2e of %.2e\n",
              std::string(dtype_name(t)).c_str(), losses[1], losses[0], err, big);
}

INSTANTIATE_TEST_SUITE_P(Types, GpuLogitsChunks, ::testing::Values(DType::f32, DType::bf16),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

// Generation on the GPU (llm-generate --backend cuda): the KV-cache path, a prompt prefilled and
// then tokens one at a time, gives the CPU's logits: fp32 to round-off; bf16/f16 against the CPU's
// emulation (load low, compute fp32, store low), from which the GPU differs by summation order,
// P rounded to 16 bits before P V, and cuBLASLt's GELU epilogue on the unrounded pre-activation
// (each about 2^-9 relative). Head dim 64: in 16 bits the tensor-core kernels' KV-cache forward
// (wgmma-ws3 on sm_90, tc elsewhere); the 200-token prefill and the 70-token chunk cross their
// query blocks and key tiles at offsets that are not tile multiples. Every logit must be finite.
class GpuGeneration : public ::testing::TestWithParam<DType> {};

GPTConfig generation_config() {  // 2 layers, hidden 128, head dim 64, vocabulary 300 (padded to 320), 320 positions
  GPTConfig c;
  c.name = "generation";
  c.num_layers = 2;
  c.hidden_size = 128;
  c.num_heads = 2;
  c.vocab_size = 300;
  c.vocab_divisible_by = 64;
  c.max_position_embeddings = 320;
  return c;
}

// A weights-only checkpoint of generation_config() (seed 7, a NullTokenizer whose eod is
// vocab_size - 1), saved from the CPU under TempDir()/<tag><pid>; returns its directory.
std::string save_generation_checkpoint(const std::string& tag) {
  const GPTConfig c = generation_config();
  const std::string root = ::testing::TempDir() + tag + std::to_string(::getpid());
  GPT saved(c, cpu_backend(), 7, c.max_position_embeddings);
  TokenizerRecord rec;
  rec.identity = NullTokenizer(c.vocab_size - 1).identity();
  save_model_checkpoint(root, 0, c, saved.parameters(), rec);
  return root;
}

TEST_P(GpuGeneration, KVCacheLogitsMatchTheCpu) {
  REQUIRE_GPU(gpu);
  const DType t = GetParam();
  const GPTConfig c = generation_config();
  const int64_t context = c.max_position_embeddings, Vp = c.padded_vocab_size();
  GPT host(c, cpu_backend(), 7, context), dev(c, *gpu, 7, context);  // the same initial weights
  if (t != DType::f32)
    for (GPT* m : {&host, &dev}) m->set_precision(t);  // the compute copy rounded from the same weights
  KVCache hc = host.make_kv_cache(1, context), dc = dev.make_kv_cache(1, context);
  int pos = 0;
  for (int n : {200, 1, 1, 70, 1, 12}) {
    Tensor chunk = Tensor::empty({1, n}, DType::i32);
    for (int i = 0; i < n; ++i) chunk.data<int32_t>()[i] = static_cast<int32_t>((37 * (pos + i) + 11) % c.vocab_size);
    // (fp32 logits whatever the precision: data<float> below checks)
    const Tensor a = host.forward_cached(chunk, hc), b = gpu->download(dev.forward_cached(chunk, dc));
    double scale = 0, worst = 0;
    int64_t nonfinite = 0;
    for (int64_t v = 0; v < Vp; ++v) {
      const double x = a.data<float>()[v], y = b.data<float>()[v];
      nonfinite += !std::isfinite(y);
      scale = std::max(scale, std::fabs(x));
      if (!(std::fabs(x - y) <= worst)) worst = std::fabs(x - y);  // NaN too
    }
    ASSERT_EQ(nonfinite, 0) << dtype_name(t) << " after " << pos + n << " tokens: logits not finite";
    pos += n;
    ASSERT_GT(scale, 0.0);
    std::printf("  %s after %d tokens: worst |GPU - CPU| %.3g of logits up to %.3g (%.2g)\n",
                std::string(dtype_name(t)).c_str(), pos, worst, scale, worst / scale);
    EXPECT_LT(worst, (t == DType::f32 ? 1e-4 : 2e-2) * scale)
        << dtype_name(t) << " after " << pos << " tokens: worst " << worst << " of logits up to " << scale;
  }
  EXPECT_EQ(dc.length, pos);
}

INSTANTIATE_TEST_SUITE_P(Types, GpuGeneration, ::testing::Values(DType::f32, DType::bf16, DType::f16),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

// llm-generate's own path on the GPU: a checkpoint saved from a CPU model, loaded into a GPU
// inference model (load_model_parameters with the backend: every stored element exact in fp32;
// in bf16 rounded on the host, tensor by tensor), then the Generator (prompt, KV cache, fp32 logits
// to the host sampler): greedy fp32 gives the CPU's tokens from the same checkpoint, and --bf16
// the CPU emulation's (the logits themselves: KVCacheLogitsMatchTheCpu).
TEST(GpuGenerator, FromACheckpointMatchesTheCpu) {
  REQUIRE_GPU(gpu);
  const GPTConfig c = generation_config();
  const int64_t context = c.max_position_embeddings;
  const NullTokenizer tok(c.vocab_size - 1);  // ids in, ids out; eod = vocab_size - 1
  const std::string root = save_generation_checkpoint("llm_gpu_generation_");
  const CheckpointReader ckpt = CheckpointReader::open(root);
  GPT host(c, cpu_backend(), 99, context), dev(c, *gpu, InferenceOptions{DType::f32});
  load_model_parameters(ckpt, host.parameters());
  load_model_parameters(ckpt, dev.parameters(), *gpu);
  for (const ParamSpec& s : host.parameters().specs()) {
    Tensor a = host.parameters().param(s.name), b = gpu->download(dev.parameters().param(s.name));
    if (s.name == "wte") {  // the stored rows (the padded vocabulary's rest is the layout's)
      a = a.slice(0, 0, c.vocab_size);
      b = b.slice(0, 0, c.vocab_size);
    }
    EXPECT_EQ(0, std::memcmp(a.raw(), b.raw(), a.nbytes())) << s.name << " loaded onto the GPU";
  }
  GenerateOptions go;
  go.max_new_tokens = 12;
  go.sampler.temperature = 0;
  go.stop_at_eod = false;
  const std::string prompt = "5 17 42 8 99 3 250";
  Generator on_cpu(host, tok, context), on_gpu(dev, tok, context);
  const GenerateStats want = on_cpu.generate(prompt, go, {}), got = on_gpu.generate(prompt, go, {});
  EXPECT_EQ(got.new_tokens, 12);
  EXPECT_EQ(got.text, want.text) << "greedy fp32 on the GPU and the CPU";
  // --bf16: the CPU's emulation's greedy tokens too. The model is untrained, so the last token's
  // own logit leads by about 0.3 while bf16 moves logits by about 0.004: no near ties to flip.
  host.set_precision(DType::bf16);
  GPT dev_bf16(c, *gpu, InferenceOptions{DType::bf16});
  load_model_parameters(ckpt, dev_bf16.parameters(), *gpu);
  Generator on_cpu_bf16(host, tok, context), on_gpu_bf16(dev_bf16, tok, context);
  const GenerateStats wb = on_cpu_bf16.generate(prompt, go, {}), b = on_gpu_bf16.generate(prompt, go, {});
  EXPECT_EQ(b.new_tokens, 12);
  EXPECT_EQ(b.stop_reason, "max-new-tokens");
  EXPECT_EQ(b.text, wb.text) << "greedy bf16 on the GPU and the CPU's emulation";
  std::filesystem::remove_all(root);
}

// The GPU inference model against the GPU training model loaded from the same checkpoint (then
// set_precision, as llm-generate did before): the same weights bit for bit (the host's rounding is
// the device's), the same kernels on the same shapes and alignments, so the same logits bit for
// bit, through the KV cache and the full forward, while its blocks share one set of buffers on the
// stream. The device memory it takes is its parameter_bytes(): 2 bytes a weight in bf16 against
// the training model's 10.
class GpuInferenceModel : public ::testing::TestWithParam<DType> {};

TEST_P(GpuInferenceModel, ComputesWhatTheTrainingModelComputes) {
  REQUIRE_GPU(gpu);
  const DType t = GetParam();
  const GPTConfig c = generation_config();
  const int64_t context = c.max_position_embeddings;
  const std::string root = save_generation_checkpoint("llm_gpu_inference_");
  const CheckpointReader ckpt = CheckpointReader::open(root);
  GPT train(c, *gpu, 99, context);
  load_model_parameters(ckpt, train.parameters(), *gpu);
  train.set_precision(t);
  DeviceMemoryStats before, after;
#ifdef LLM_HAVE_CUDA
  // Fresh blocks for what follows (a cached block may be up to twice a request): each buffer is
  // then exactly its size rounded (512 bytes under 1 MiB, 2 MiB above).
  static_cast<cuda::CudaBackend*>(gpu)->allocator().empty_cache();
#endif
  ASSERT_TRUE(gpu->device_memory(before));
  GPT inf(c, *gpu, InferenceOptions{t});
  ASSERT_TRUE(gpu->device_memory(after));
  const int64_t taken = after.allocated - before.allocated;
  std::printf("  %s: inference parameters %lld bytes on the device (parameter_bytes %lld), training %lld\n",
              std::string(dtype_name(t)).c_str(), static_cast<long long>(taken),
              static_cast<long long>(inf.parameter_bytes()), static_cast<long long>(train.parameter_bytes()));
  // The two buffers (the packed f32 LayerNorms and the 16-bit copy; or the f32 weights) and
  // nothing else, and in 16 bits under half of what the training model holds.
  EXPECT_GE(taken, inf.parameter_bytes());
#ifdef LLM_HAVE_CUDA
  const ParameterSet& ips = inf.parameters();
  size_t want = cuda::CachingAllocator::round_size(ips.flat_params().nbytes());
  if (ips.flat_compute().defined()) want += cuda::CachingAllocator::round_size(ips.flat_compute().nbytes());
  EXPECT_EQ(taken, static_cast<int64_t>(want)) << "device memory beyond the inference weights' buffers";
#endif
  if (t != DType::f32) {
    EXPECT_LT(2 * taken, train.parameter_bytes());
  }
  load_model_parameters(ckpt, inf.parameters(), *gpu);
  for (const ParamSpec& s : inf.parameters().specs()) {
    const Tensor a = gpu->download(inf.parameters().compute_param(s.name)),
                 b = gpu->download(train.parameters().compute_param(s.name));
    EXPECT_EQ(0, std::memcmp(a.raw(), b.raw(), a.nbytes())) << s.name << " in " << dtype_name(t);
  }
  KVCache ci = inf.make_kv_cache(1, context), ct = train.make_kv_cache(1, context);
  int pos = 0;
  for (int n : {200, 1, 1, 70, 1, 12}) {
    Tensor chunk = Tensor::empty({1, n}, DType::i32);
    for (int i = 0; i < n; ++i) chunk.data<int32_t>()[i] = static_cast<int32_t>((37 * (pos + i) + 11) % c.vocab_size);
    pos += n;
    const Tensor a = gpu->download(inf.forward_cached(chunk, ci)), b = gpu->download(train.forward_cached(chunk, ct));
    double top = 0;
    for (int64_t v = 0; v < c.vocab_size; ++v) top = std::max(top, std::fabs(static_cast<double>(a.data<float>()[v])));
    ASSERT_GT(top, 0.0) << "zero logits after " << pos << " tokens";
    EXPECT_EQ(0, std::memcmp(a.raw(), b.raw(), a.nbytes())) << dtype_name(t) << ": cached logits after " << pos << " tokens";
  }
  Tensor tok = Tensor::empty({2, 64}, DType::i32), tgt = Tensor::empty({2, 64}, DType::i32);
  for (int i = 0; i < 128; ++i) {
    tok.data<int32_t>()[i] = static_cast<int32_t>((13 * i + 5) % c.vocab_size);
    tgt.data<int32_t>()[i] = static_cast<int32_t>((13 * i + 18) % c.vocab_size);
  }
  const double li = inf.forward(tok, tgt), lt = train.forward(tok, tgt);
  EXPECT_EQ(li, lt) << dtype_name(t) << ": loss of the full forward";
  const Tensor a = gpu->download(inf.logits()), b = gpu->download(train.logits());
  EXPECT_EQ(0, std::memcmp(a.raw(), b.raw(), a.nbytes())) << dtype_name(t) << ": full-forward logits";
  std::filesystem::remove_all(root);
}

INSTANTIATE_TEST_SUITE_P(Types, GpuInferenceModel, ::testing::Values(DType::f32, DType::bf16, DType::f16),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });
