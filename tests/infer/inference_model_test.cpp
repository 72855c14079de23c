// The inference model (llm-generate's): weights in the compute precision only, no gradients, one
// block's activations shared by every layer. It must compute exactly what the training model
// computes from the same checkpoint (bit for bit: same ops, same rounded weights), in less memory.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "core/philox.h"
#include "data/simple_tokenizers.h"
#include "infer/generator.h"
#include "io/checkpoint.h"
#include "model/gpt.h"
#include "train/checkpointing.h"

using namespace llm;

namespace {

GPTConfig small_config(int64_t layers = 2) {
  GPTConfig c;
  c.name = "inference";
  c.num_layers = layers;
  c.hidden_size = 64;
  c.num_heads = 4;
  c.vocab_size = 90;
  c.vocab_divisible_by = 32;  // Vp = 96: padding rows exist
  c.max_position_embeddings = 48;
  return c;
}

// Every parameter random (LayerNorm gains and biases too), so none is trivially 1 or 0.
void randomise(GPT& m, uint64_t seed) {
  float* d = m.parameters().flat_params().data<float>();
  for (const ParamSpec& s : m.parameters().specs())
    for (int64_t i = 0; i < numel(s.shape); ++i) {
      const float r = 0.1f * philox_normal(seed, hash_name(s.name), static_cast<uint64_t>(i));
      d[s.offset + i] = s.init == Init::ones ? 1.0f + r : r;
    }
}

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

// A checkpoint of a randomised model, removed with the fixture.
struct SavedModel {
  GPTConfig config = small_config();
  std::string root;
  explicit SavedModel(const std::string& tag) {
    root = ::testing::TempDir() + "llm_inference_" + tag + "_" + std::to_string(::getpid());
    std::filesystem::remove_all(root);
    GPT m(config, cpu_backend(), 1, config.max_position_embeddings);
    randomise(m, 31);
    TokenizerRecord rec;
    rec.identity = NullTokenizer(config.vocab_size - 1).identity();
    save_model_checkpoint(root, 0, config, m.parameters(), rec);
  }
  ~SavedModel() { std::filesystem::remove_all(root); }
};

Tensor tokens_of(const std::vector<int32_t>& ids) {
  Tensor t = Tensor::empty({1, static_cast<int64_t>(ids.size())}, DType::i32);
  std::memcpy(t.raw(), ids.data(), ids.size() * sizeof(int32_t));
  return t;
}

class InferenceModel : public ::testing::TestWithParam<DType> {};

}  // namespace

// Storage: 4 bytes a parameter in f32; in bf16/f16 two, plus f32 LayerNorm parameters (the ops
// read them in f32). The training model holds f32 masters, f32 gradients and, in 16 bits, the copy.
TEST_P(InferenceModel, HoldsOnlyTheWeightsItComputesWith) {
  const DType t = GetParam();
  const GPTConfig c = small_config();
  GPT inf(c, cpu_backend(), InferenceOptions{t});
  GPT train(c, cpu_backend(), 1, c.max_position_embeddings);
  train.set_precision(t);
  const ParameterSet& ps = inf.parameters();
  const int64_t n = ps.numel();
  int64_t norms = 0;
  for (const ParamSpec& s : ps.specs())
    if (s.name.find("ln_") != std::string::npos) {
      EXPECT_TRUE(s.f32_op) << s.name;
      norms += numel(s.shape);
    } else {
      EXPECT_FALSE(s.f32_op) << s.name;
    }
  EXPECT_EQ(norms, (2 * c.num_layers + 1) * 2 * c.hidden_size);
  const int64_t half = static_cast<int64_t>(dtype_size(t));
  EXPECT_EQ(inf.parameter_bytes(), t == DType::f32 ? 4 * n : half * n + 4 * norms);
  EXPECT_EQ(train.parameter_bytes(), 8 * n + (t == DType::f32 ? 0 : half * n));
  EXPECT_FALSE(ps.has_grads());
  EXPECT_TRUE(inf.inference());
  EXPECT_FALSE(train.inference());
  EXPECT_EQ(inf.precision(), t);
  EXPECT_EQ(ps.compute_param("h.1.mlp.c_fc.weight").dtype(), t);
  EXPECT_EQ(ps.param("h.1.ln_2.bias").dtype(), DType::f32);
  EXPECT_TRUE(ps.has_master("ln_f.weight"));
  EXPECT_EQ(ps.has_master("wte"), t == DType::f32);
  // What an inference model cannot do says so, naming the tensor or the call.
  auto message = [](auto&& f) {
    try {
      f();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("(nothing thrown)");
  };
  EXPECT_NE(message([&] { (void)ps.grad("wpe"); }).find("'wpe': an inference model has no gradients"), std::string::npos);
  if (t != DType::f32) {
    const std::string m = message([&] { (void)ps.param("h.0.attn.c_attn.weight"); });
    EXPECT_NE(m.find("'h.0.attn.c_attn.weight'"), std::string::npos) << m;
    EXPECT_NE(m.find(std::string(dtype_name(t))), std::string::npos) << m;
    EXPECT_NE(message([&] { ps.refresh_compute(cpu_backend()); }).find("no f32 masters"), std::string::npos);
    const std::string dir = ::testing::TempDir() + "llm_inference_save_" + std::to_string(::getpid());
    EXPECT_NE(message([&] { save_model_checkpoint(dir, 0, c, ps, TokenizerRecord{}); }).find("no f32 weights to save"),
              std::string::npos);
    EXPECT_FALSE(std::filesystem::exists(dir)) << "a refused save left files behind";
    std::filesystem::remove_all(dir);
  }
  EXPECT_NE(message([&] { inf.backward(); }).find("inference model"), std::string::npos);
  EXPECT_NE(message([&] { inf.zero_grad(); }).find("inference model"), std::string::npos);
  const DType other = t == DType::bf16 ? DType::f16 : DType::bf16;
  EXPECT_NE(message([&] { inf.set_precision(other); }).find("precision it was made with"), std::string::npos);
  inf.set_precision(t);  // its own precision: nothing to do
  GPTConfig no_table = c;
  no_table.max_position_embeddings = 0;
  EXPECT_THROW(GPT(no_table, cpu_backend(), InferenceOptions{t}), Error);
}

// Loaded from a checkpoint, the inference model equals the training model that llm-generate used
// to build (loaded, then set_precision): the same 16-bit weights bit for bit, and the same logits
// bit for bit through the KV cache (prefill, single tokens, chunks), the full forward and the loss.
TEST_P(InferenceModel, ComputesWhatTheTrainingModelComputes) {
  const DType t = GetParam();
  const SavedModel saved("same_" + std::string(dtype_name(t)));
  const GPTConfig& c = saved.config;
  const CheckpointReader ckpt = CheckpointReader::open(saved.root);
  GPT train(checkpoint_model_config(ckpt), cpu_backend(), 5, c.max_position_embeddings);
  load_model_parameters(ckpt, train.parameters(), cpu_backend());
  train.set_precision(t);
  GPT inf(checkpoint_model_config(ckpt), cpu_backend(), InferenceOptions{t});
  load_model_parameters(ckpt, inf.parameters(), cpu_backend());
  for (const ParamSpec& s : inf.parameters().specs()) {
    EXPECT_TRUE(same_bits(inf.parameters().compute_param(s.name), train.parameters().compute_param(s.name))) << s.name;
    if (s.f32_op) {
      EXPECT_TRUE(same_bits(inf.parameters().param(s.name), train.parameters().param(s.name))) << s.name;
    }
  }
  std::vector<int32_t> ids;
  for (int i = 0; i < 40; ++i) ids.push_back(static_cast<int32_t>((29 * i + 7) % c.vocab_size));
  KVCache ci = inf.make_kv_cache(1, c.max_position_embeddings), ct = train.make_kv_cache(1, c.max_position_embeddings);
  EXPECT_EQ(ci.bytes(), 2 * c.num_layers * c.max_position_embeddings * c.hidden_size * static_cast<int64_t>(dtype_size(t)));
  size_t pos = 0;
  for (size_t n : {17, 1, 1, 9, 1, 11}) {
    const Tensor chunk = tokens_of(std::vector<int32_t>(ids.begin() + static_cast<long>(pos), ids.begin() + static_cast<long>(pos + n)));
    pos += n;
    const Tensor a = inf.forward_cached(chunk, ci).clone(), b = train.forward_cached(chunk, ct).clone();
    float top = 0;
    for (int64_t v = 0; v < c.vocab_size; ++v) top = std::max(top, std::fabs(a.data<float>()[v]));
    ASSERT_GT(top, 0.1f) << "logits after " << pos << " tokens are (near) zero: the weights did not load";
    EXPECT_TRUE(same_bits(a, b)) << dtype_name(t) << ": cached logits after " << pos << " tokens";
  }
  EXPECT_EQ(ci.length, 40);
  // The full forward (logits allocated on demand) and the loss, twice: the shared buffers are
  // reused, not stale.
  const Tensor tok = tokens_of(std::vector<int32_t>(ids.begin(), ids.begin() + 32));
  const Tensor tgt = tokens_of(std::vector<int32_t>(ids.begin() + 1, ids.begin() + 33));
  for (int rep = 0; rep < 2; ++rep) {
    const double li = inf.forward(tok, tgt), lt = train.forward(tok, tgt);
    EXPECT_EQ(li, lt) << "loss, pass " << rep;
    EXPECT_GT(li, 1.0);
    EXPECT_TRUE(same_bits(inf.logits(), train.logits())) << "full-forward logits, pass " << rep;
    train.backward();  // the training model still trains; its logits become gradients
  }
}

// llm-generate's loop on the two models: the same greedy text from one checkpoint.
TEST_P(InferenceModel, GeneratesTheTrainingModelsText) {
  const DType t = GetParam();
  const SavedModel saved("text_" + std::string(dtype_name(t)));
  const GPTConfig& c = saved.config;
  const CheckpointReader ckpt = CheckpointReader::open(saved.root);
  GPT train(c, cpu_backend(), 5, c.max_position_embeddings);
  load_model_parameters(ckpt, train.parameters(), cpu_backend());
  train.set_precision(t);
  GPT inf(c, cpu_backend(), InferenceOptions{t});
  load_model_parameters(ckpt, inf.parameters());  // the host-only form: the same rounding
  const NullTokenizer tok(c.vocab_size - 1);  // ids in, ids out; eod = vocab_size - 1
  GenerateOptions go;
  go.max_new_tokens = 20;
  go.sampler.temperature = 0;
  go.stop_at_eod = false;
  Generator gi(inf, tok, c.max_position_embeddings), gt(train, tok, c.max_position_embeddings);
  const GenerateStats a = gi.generate("3 14 15 82 65", go, {}), b = gt.generate("3 14 15 82 65", go, {});
  EXPECT_EQ(a.new_tokens, 20);
  EXPECT_EQ(a.text, b.text);
}

INSTANTIATE_TEST_SUITE_P(Types, InferenceModel, ::testing::Values(DType::f32, DType::bf16, DType::f16),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

// Activation memory: the training model keeps every block's activations (and backward scratch);
// the inference model one block's plus two alternating outputs, whatever the depth.
TEST(InferenceModelMemory, ActivationsDoNotGrowWithDepth) {
  auto bytes = [](int64_t layers, bool inference) {
    const GPTConfig c = small_config(layers);
    GPT m = inference ? GPT(c, cpu_backend(), InferenceOptions{DType::bf16})
                      : GPT(c, cpu_backend(), 1, c.max_position_embeddings);
    if (!inference) m.set_precision(DType::bf16);
    KVCache cache = m.make_kv_cache(1, c.max_position_embeddings);
    m.forward_cached(Tensor::zeros({1, 32}, DType::i32), cache);  // a 32-token prefill
    return m.activation_bytes();
  };
  const int64_t i2 = bytes(2, true), i6 = bytes(6, true), t2 = bytes(2, false), t6 = bytes(6, false);
  EXPECT_EQ(i2, i6) << "inference activations grew with depth";
  EXPECT_GT(t6, t2);
  EXPECT_LT(2 * i2, t2) << "inference " << i2 << " bytes vs training " << t2;
  // Exactly one block's forward at 32 tokens, hidden 64, 4 heads, bf16: per token the embedding,
  // the two outputs, LayerNorm 1, q,k,v, attention, its projection, the residual, LayerNorm 2, the
  // MLP's projection and the final LayerNorm ([C] each, 13 C in all) and the GELU's input and
  // output ([F] each); f32 mean and rstd of three LayerNorms and a log-sum-exp per head; i32
  // token and target.
  const int64_t C = 64, N = 32, F = 4 * C, NH = 4;
  EXPECT_EQ(i2, N * (2 * (13 * C + 2 * F) + 4 * (6 + NH) + 4 * 2));
}
