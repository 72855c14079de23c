// The GPT model against an independent float64 implementation of GPT-2's forward pass, a
// whole-model finite-difference gradient check, and layout-independent initialisation.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <vector>

#include "core/philox.h"
#include "model/gpt.h"
#include "support/max_or_nan.h"

using namespace llm;

namespace {

using Vec = std::vector<double>;

GPTConfig tiny_config() {
  GPTConfig c;
  c.name = "tiny";
  c.num_layers = 2;
  c.hidden_size = 32;
  c.num_heads = 2;
  c.vocab_size = 50;
  c.vocab_divisible_by = 16;  // Vp = 64: padding columns exist
  return c;
}

// Randomises every parameter (LayerNorm gains and biases too), so no term is trivially 1 or 0.
void randomise(GPT& m, uint64_t seed, float scale = 0.1f) {
  Tensor p = m.parameters().flat_params();
  float* d = p.data<float>();
  for (const ParamSpec& s : m.parameters().specs()) {
    for (int64_t i = 0; i < numel(s.shape); ++i) {
      float r = scale * philox_normal(seed, hash_name(s.name), i);
      d[s.offset + i] = s.init == Init::ones ? 1.0f + r : r;
    }
  }
}

Vec get(const GPT& m, const std::string& name) {
  Tensor t = m.parameters().param(name);
  return Vec(t.data<float>(), t.data<float>() + t.numel());
}

// Float64 GPT-2 forward, written from the paper/HF semantics with plain loops.
// Returns the mean loss; fills logits [B*T*V].
double reference_loss(const GPT& m, const std::vector<int>& tok, const std::vector<int>& tgt, int B,
                      int T, Vec* logits_out) {
  const GPTConfig& c = m.config();
  const int C = c.hidden_size, NH = c.num_heads, hd = C / NH, F = c.ffn(), V = c.vocab_size;
  const double eps = c.layernorm_eps;
  auto layernorm = [&](const Vec& x, const Vec& w, const Vec& b) {
    Vec y(x.size());
    for (size_t r = 0; r < x.size() / C; ++r) {
      double mu = 0, var = 0;
      for (int i = 0; i < C; ++i) mu += x[r * C + i];
      mu /= C;
      for (int i = 0; i < C; ++i) var += (x[r * C + i] - mu) * (x[r * C + i] - mu);
      var /= C;
      for (int i = 0; i < C; ++i) y[r * C + i] = (x[r * C + i] - mu) / std::sqrt(var + eps) * w[i] + b[i];
    }
    return y;
  };
  auto linear = [&](const Vec& x, const Vec& w, const Vec* b, int in, int out) {
    const size_t rows = x.size() / in;
    Vec y(rows * out);
    for (size_t r = 0; r < rows; ++r)
      for (int o = 0; o < out; ++o) {
        double s = b ? (*b)[o] : 0.0;
        for (int i = 0; i < in; ++i) s += x[r * in + i] * w[static_cast<size_t>(o) * in + i];
        y[r * out + o] = s;
      }
    return y;
  };
  Vec wte = get(m, "wte"), wpe = get(m, "wpe");
  Vec x(static_cast<size_t>(B) * T * C);
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T; ++t)
      for (int i = 0; i < C; ++i)
        x[(b * T + t) * C + i] = wte[tok[b * T + t] * C + i] + wpe[t * C + i];
  for (int l = 0; l < c.num_layers; ++l) {
    const std::string p = "h." + std::to_string(l) + ".";
    Vec h = layernorm(x, get(m, p + "ln_1.weight"), get(m, p + "ln_1.bias"));
    Vec qb = get(m, p + "attn.c_attn.bias");
    Vec qkv = linear(h, get(m, p + "attn.c_attn.weight"), &qb, C, 3 * C);
    Vec y(x.size(), 0.0);
    for (int b = 0; b < B; ++b)
      for (int hh = 0; hh < NH; ++hh)
        for (int t = 0; t < T; ++t) {
          std::vector<double> s(t + 1);
          double mx = -1e300;
          for (int u = 0; u <= t; ++u) {
            double d = 0;
            for (int e = 0; e < hd; ++e)
              d += qkv[(b * T + t) * 3 * C + hh * hd + e] * qkv[(b * T + u) * 3 * C + C + hh * hd + e];
            s[u] = d / std::sqrt(static_cast<double>(hd));
            mx = std::max(mx, s[u]);
          }
          double z = 0;
          for (int u = 0; u <= t; ++u) z += (s[u] = std::exp(s[u] - mx));
          for (int u = 0; u <= t; ++u)
            for (int e = 0; e < hd; ++e)
              y[(b * T + t) * C + hh * hd + e] += s[u] / z * qkv[(b * T + u) * 3 * C + 2 * C + hh * hd + e];
        }
    Vec pb = get(m, p + "attn.c_proj.bias");
    Vec ap = linear(y, get(m, p + "attn.c_proj.weight"), &pb, C, C);
    for (size_t i = 0; i < x.size(); ++i) x[i] += ap[i];
    h = layernorm(x, get(m, p + "ln_2.weight"), get(m, p + "ln_2.bias"));
    Vec fb = get(m, p + "mlp.c_fc.bias");
    Vec f = linear(h, get(m, p + "mlp.c_fc.weight"), &fb, C, F);
    for (double& v : f) v = 0.5 * v * (1 + std::tanh(std::sqrt(2 / M_PI) * (v + 0.044715 * v * v * v)));
    Vec f2b = get(m, p + "mlp.c_proj.bias");
    Vec f2 = linear(f, get(m, p + "mlp.c_proj.weight"), &f2b, F, C);
    for (size_t i = 0; i < x.size(); ++i) x[i] += f2[i];
  }
  Vec h = layernorm(x, get(m, "ln_f.weight"), get(m, "ln_f.bias"));
  Vec logits = linear(h, wte, nullptr, C, static_cast<int>(c.padded_vocab_size()));
  double loss = 0;
  int count = 0;
  const int Vp = static_cast<int>(c.padded_vocab_size());
  logits_out->assign(static_cast<size_t>(B) * T * V, 0);
  for (int r = 0; r < B * T; ++r) {
    double mx = -1e300, z = 0;
    for (int v = 0; v < V; ++v) mx = std::max(mx, logits[r * Vp + v]);
    for (int v = 0; v < V; ++v) z += std::exp(logits[r * Vp + v] - mx);
    for (int v = 0; v < V; ++v) (*logits_out)[r * V + v] = logits[r * Vp + v];
    if (tgt[r] < 0) continue;
    loss += mx + std::log(z) - logits[r * Vp + tgt[r]];
    ++count;
  }
  return loss / count;
}

struct Batch {
  Tensor tokens, targets;
  std::vector<int> tok, tgt;
};

Batch make_batch(int B, int T, int V, uint64_t seed, bool with_ignored) {
  Batch b;
  b.tokens = Tensor::empty({B, T}, DType::i32);
  b.targets = Tensor::empty({B, T}, DType::i32);
  for (int i = 0; i < B * T; ++i) {
    int t = static_cast<int>(philox_below(seed, 1, i, V));
    int g = static_cast<int>(philox_below(seed, 2, i, V));
    if (with_ignored && i % 5 == 3) g = -1;
    b.tokens.data<int32_t>()[i] = t;
    b.targets.data<int32_t>()[i] = g;
    b.tok.push_back(t);
    b.tgt.push_back(g);
  }
  return b;
}

}  // namespace

TEST(GPT, MatchesFloat64ReferenceForward) {
  GPTConfig c = tiny_config();
  for (int T : {1, 7, 70}) {
    GPT m(c, cpu_backend(), 1234, 80);
    randomise(m, 99);
    Batch b = make_batch(2, T, static_cast<int>(c.vocab_size), 5 + T, true);
    double loss = m.forward(b.tokens, b.targets);
    Vec ref_logits;
    double ref = reference_loss(m, b.tok, b.tgt, 2, T, &ref_logits);
    EXPECT_NEAR(loss, ref, 1e-5 * std::abs(ref)) << "T=" << T;
    const float* lg = m.logits().data<float>();
    const int64_t Vp = c.padded_vocab_size(), V = c.vocab_size;
    double worst = 0;
    for (int64_t r = 0; r < 2 * T; ++r)
      for (int64_t v = 0; v < V; ++v) worst = llm::testing::max_or_nan(worst, std::abs(lg[r * Vp + v] - ref_logits[r * V + v]));
    EXPECT_LT(worst, 2e-5) << "T=" << T;
  }
}

// Directional finite differences per parameter tensor: perturb the tensor along a random
// direction u and compare (L(p+eps u) - L(p-eps u)) / 2eps with <grad, u>.
TEST(GPT, WholeModelGradientMatchesFiniteDifferences) {
  GPTConfig c = tiny_config();
  GPT m(c, cpu_backend(), 7, 16);
  randomise(m, 11, 0.2f);
  Batch b = make_batch(2, 13, static_cast<int>(c.vocab_size), 3, true);
  m.zero_grad();
  m.forward(b.tokens, b.targets);
  m.backward();
  Tensor grads = m.parameters().flat_grads().clone();
  float* p = m.parameters().flat_params().data<float>();
  int checked = 0;
  for (const ParamSpec& s : m.parameters().specs()) {
    const int64_t n = numel(s.shape);
    std::vector<float> u(n);
    double gu = 0;
    for (int64_t i = 0; i < n; ++i) {
      u[i] = philox_normal(77, hash_name(s.name), i);
      gu += static_cast<double>(grads.data<float>()[s.offset + i]) * u[i];
    }
    const float eps = 1e-2f / std::sqrt(static_cast<float>(n)) * 4;
    auto loss_at = [&](float sign) {
      std::vector<float> saved(p + s.offset, p + s.offset + n);
      for (int64_t i = 0; i < n; ++i) p[s.offset + i] += sign * eps * u[i];
      double l = m.forward(b.tokens, b.targets);
      std::copy(saved.begin(), saved.end(), p + s.offset);
      return l;
    };
    const double fd = (loss_at(1) - loss_at(-1)) / (2.0 * eps);
    EXPECT_NEAR(gu, fd, 2e-3 * std::abs(fd) + 3e-4) << s.name;
    ++checked;
  }
  EXPECT_EQ(checked, static_cast<int>(m.parameters().specs().size()));
}

TEST(GPT, GradientsAccumulateAndLossWeightScales) {
  GPTConfig c = tiny_config();
  GPT m(c, cpu_backend(), 3, 16);
  Batch b = make_batch(2, 9, static_cast<int>(c.vocab_size), 8, false);
  m.zero_grad();
  m.forward(b.tokens, b.targets);
  m.backward(1.0f);
  Tensor g1 = m.parameters().flat_grads().clone();
  m.forward(b.tokens, b.targets);
  m.backward(0.5f);
  const float* g = m.parameters().flat_grads().data<float>();
  for (int64_t i = 0; i < g1.numel(); i += 97)
    EXPECT_NEAR(g[i], 1.5f * g1.data<float>()[i], 1e-6f + 1e-5f * std::abs(g[i]));
}

TEST(GPT, InitialisationIsLayoutIndependent) {
  GPTConfig c = tiny_config();
  GPT m(c, cpu_backend(), 2024, 16);
  for (const char* name : {"wte", "h.1.attn.c_attn.weight", "h.0.mlp.c_proj.weight"}) {
    const ParamSpec& s = m.parameters().spec(name);
    Tensor full = m.parameters().param(name);
    const int64_t n = numel(s.shape), half = n / 3;
    std::vector<float> a(half), b(n - half);
    init_parameter_range(a.data(), s, 2024, 0, half);  // "rank 0"
    init_parameter_range(b.data(), s, 2024, half, n - half);  // "rank 1"
    for (int64_t i = 0; i < half; ++i) ASSERT_EQ(a[i], full.data<float>()[i]) << name;
    for (int64_t i = half; i < n; ++i) ASSERT_EQ(b[i - half], full.data<float>()[i]) << name;
  }
  // statistics of the GPT-2 scheme
  Tensor w = m.parameters().param("h.0.mlp.c_proj.weight");
  double s2 = 0;
  for (float v : w.span<float>()) s2 += v * v;
  EXPECT_NEAR(std::sqrt(s2 / w.numel()), 0.02 / std::sqrt(4.0), 0.0015);
  for (float v : m.parameters().param("h.0.ln_1.weight").span<float>()) EXPECT_EQ(v, 1.0f);
  for (float v : m.parameters().param("h.0.attn.c_attn.bias").span<float>()) EXPECT_EQ(v, 0.0f);
}

// Any local range of any tensor, computed alone, equals that range of the whole tensor's values:
// tensor-parallel shards along rows and columns (several chunks under Megatron SP's fused QKV),
// replicated tensors, ranges inside one row, across rows and chunks, and whole tensors.
TEST(GPT, LocalRangesOfAnInitialisationEqualTheWholeTensor) {
  GPTConfig c = tiny_config();
  int64_t checked = 0;
  for (int rank : {0, 1}) {
    const ParameterSet ps = gpt_parameters(c, 16, rank, 2, true);
    for (const ParamSpec& s : ps.specs()) {
      const int64_t n = numel(s.shape);
      std::vector<float> whole(static_cast<size_t>(n));
      init_parameter(whole.data(), s, 77);
      const int64_t cols = s.shape.size() == 2 ? s.shape[1] : n;
      for (auto [lo, hi] : std::vector<std::pair<int64_t, int64_t>>{
               {0, n}, {1, n - 1}, {n / 3, 2 * n / 3}, {cols - 1, std::min(n, cols + 3)}, {n - 1, n}, {n / 2, n / 2 + 1}}) {
        if (lo < 0 || hi > n || hi <= lo) continue;
        std::vector<float> part(static_cast<size_t>(hi - lo), -1.0f);
        init_parameter_local(part.data(), s, 77, lo, hi);
        for (int64_t i = lo; i < hi; ++i) ASSERT_EQ(part[i - lo], whole[i]) << s.name << " [" << lo << ", " << hi << ") at " << i;
        ++checked;
      }
    }
  }
  EXPECT_GT(checked, 50);
}

TEST(GPT, ConfigValidationNamesTheFlag) {
  GPTConfig c = tiny_config();
  c.hidden_size = 33;
  try {
    c.validate(16);
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("--num-attention-heads"), std::string::npos) << e.what();
  }
  c = tiny_config();
  c.num_heads = 8;  // head dim 4
  EXPECT_THROW(c.validate(16), ConfigError);
  c = tiny_config();
  c.max_position_embeddings = 8;
  EXPECT_THROW(c.validate(16), ConfigError);
  EXPECT_EQ(tiny_config().padded_vocab_size(), 64);
  GPTConfig d = tiny_config();
  d.vocab_size = 50257;
  d.vocab_divisible_by = 128;
  EXPECT_EQ(d.padded_vocab_size(), 50304);
}

// Generation path: prefill + decode through the KV cache gives the logits of the full forward.
TEST(GPT, KVCacheForwardMatchesFullForward) {
  GPTConfig c = tiny_config();
  GPT m(c, cpu_backend(), 4, 40);
  randomise(m, 21);
  const int T = 23;
  Batch b = make_batch(1, T, static_cast<int>(c.vocab_size), 77, false);
  m.forward_logits(b.tokens);
  Tensor full = m.logits().clone();  // [1, T, Vp]
  KVCache cache = m.make_kv_cache(1, 40);
  const int64_t Vp = c.padded_vocab_size();
  int pos = 0;
  for (int n : {9, 1, 1, 5, 1, 6}) {
    Tensor chunk = Tensor::empty({1, n}, DType::i32);
    for (int i = 0; i < n; ++i) chunk.data<int32_t>()[i] = b.tok[pos + i];
    const Tensor& last = m.forward_cached(chunk, cache);
    pos += n;
    double worst = 0;
    for (int64_t v = 0; v < Vp; ++v)
      worst = llm::testing::max_or_nan(worst, static_cast<double>(std::abs(last.data<float>()[v] - full.data<float>()[(pos - 1) * Vp + v])));
    EXPECT_LT(worst, 1e-4) << "after " << pos << " tokens";
  }
  EXPECT_EQ(cache.length, T);
  Tensor more = Tensor::zeros({1, 20}, DType::i32);
  EXPECT_THROW(m.forward_cached(more, cache), ConfigError);  // 23 + 20 > 40
}

// A cache made before set_precision (fp32) handed to the bf16 model, or another model's cache:
// one message naming both, not an op's dtype check deep inside.
TEST(GPT, KVCacheOfAnotherPrecisionIsRefused) {
  GPTConfig c = tiny_config();
  GPT m(c, cpu_backend(), 4, 40);
  KVCache early = m.make_kv_cache(1, 40);
  m.set_precision(DType::bf16);
  Tensor tok = Tensor::zeros({1, 3}, DType::i32);
  try {
    m.forward_cached(tok, early);
    ADD_FAILURE() << "an fp32 cache for a bf16 model was taken";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("after set_precision"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("bf16"), std::string::npos) << e.what();
  }
  EXPECT_EQ(early.length, 0);
  KVCache good = m.make_kv_cache(1, 40);
  m.forward_cached(tok, good);
  EXPECT_EQ(good.length, 3);
  KVCache none;
  none.batch = 1, none.max_len = 40;
  EXPECT_THROW(m.forward_cached(tok, none), Error);
}

// An id in the padding rows [vocab_size, padded_vocab_size) would look up (and train) a row no
// token owns: refused like one past the table, naming the id and where, before anything runs.
TEST(GPT, TokenIdsInThePaddingRowsAreRefused) {
  const GPTConfig c = tiny_config();  // V 50, Vp 64
  GPT m(c, cpu_backend(), 4, 40);
  Batch b = make_batch(2, 6, static_cast<int>(c.vocab_size), 7, false);
  const double good = m.forward(b.tokens, b.targets);
  for (int32_t bad : {50, 63, -1}) {
    SCOPED_TRACE(bad);
    Tensor tok = b.tokens.clone();
    tok.data<int32_t>()[1 * 6 + 4] = bad;
    try {
      m.forward(tok, b.targets);
      ADD_FAILURE() << "id " << bad << " was taken";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("id " + std::to_string(bad) + " at [1, 4]"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("[0, 50)"), std::string::npos) << e.what();
    }
    KVCache cache = m.make_kv_cache(2, 40);
    EXPECT_THROW(m.forward_cached(tok, cache), Error);
    EXPECT_EQ(cache.length, 0);
  }
  EXPECT_EQ(good, m.forward(b.tokens, b.targets));  // the model is unharmed
}

// The same in bf16 (llm-generate --bf16; the CPU's emulation has the GPU's load-low, compute-fp32,
// store-low semantics): the cached path in bf16 against the full bf16 forward, and both near fp32.
TEST(GPT, KVCacheForwardMatchesFullForwardInBf16) {
  GPTConfig c = tiny_config();
  GPT m(c, cpu_backend(), 4, 40), ref(c, cpu_backend(), 4, 40);
  randomise(m, 21);
  randomise(ref, 21);
  m.set_precision(DType::bf16);  // the compute copy rounded from the randomised weights
  const int T = 23;
  Batch b = make_batch(1, T, static_cast<int>(c.vocab_size), 77, false);
  const int64_t Vp = c.padded_vocab_size();
  m.forward_logits(b.tokens);
  const Tensor full = Tensor::empty(m.logits().shape());  // [1, T, Vp], the bf16 logits as floats
  cpu_backend().convert(full, m.logits());
  ref.forward_logits(b.tokens);
  const Tensor exact = ref.logits().clone();
  double scale = 0;
  for (int64_t i = 0; i < T * Vp; ++i) scale = std::max(scale, static_cast<double>(std::abs(exact.data<float>()[i])));
  KVCache cache = m.make_kv_cache(1, 40);
  int pos = 0;
  for (int n : {9, 1, 1, 5, 1, 6}) {
    Tensor chunk = Tensor::empty({1, n}, DType::i32);
    for (int i = 0; i < n; ++i) chunk.data<int32_t>()[i] = b.tok[pos + i];
    const Tensor& last = m.forward_cached(chunk, cache);
    EXPECT_EQ(last.dtype(), DType::f32) << "the sampler's logits, unrounded";
    pos += n;
    double worst = 0, off = 0;
    for (int64_t v = 0; v < Vp; ++v) {
      const float x = last.data<float>()[v];
      ASSERT_TRUE(std::isfinite(x)) << "logit " << v << " after " << pos << " tokens";
      worst = llm::testing::max_or_nan(worst, static_cast<double>(std::abs(x - full.data<float>()[(pos - 1) * Vp + v])));
      off = std::max(off, static_cast<double>(std::abs(x - exact.data<float>()[(pos - 1) * Vp + v])));
    }
    // bf16 keeps 8 bits: one rounding step of a logit is 2^-8 of it; the cached path writes its
    // logits in fp32 (the full forward's are rounded to bf16), fp32's path differs by every rounding.
    EXPECT_LT(worst, 1e-2 * scale) << "after " << pos << " tokens (bf16 cached vs bf16 full)";
    EXPECT_LT(off, 2e-2 * scale) << "after " << pos << " tokens (bf16 cached vs fp32)";
    EXPECT_GT(off, 0.0) << "the bf16 path must round";
  }
}

// Full activation recompute: the same gradients bit for bit, with a fraction of the memory.
TEST(GPT, FullRecomputeGivesIdenticalGradientsWithLessMemory) {
  GPTConfig c = tiny_config();
  c.num_layers = 4;
  Batch b = make_batch(2, 30, static_cast<int>(c.vocab_size), 5, true);
  GPT plain(c, cpu_backend(), 9, 32), recomputed(c, cpu_backend(), 9, 32);
  randomise(plain, 3);
  randomise(recomputed, 3);
  recomputed.set_recompute(true);
  for (GPT* m : {&plain, &recomputed}) {
    m->zero_grad();
    m->forward(b.tokens, b.targets);
    m->backward();
  }
  const Tensor& g1 = plain.parameters().flat_grads();
  const Tensor& g2 = recomputed.parameters().flat_grads();
  EXPECT_EQ(0, std::memcmp(g1.raw(), g2.raw(), g1.nbytes()));
  // per-block activations: 4 blocks' worth without recompute, one shared set + outputs with it
  EXPECT_LT(recomputed.activation_bytes() * 10, plain.activation_bytes() * 6)
      << recomputed.activation_bytes() << " vs " << plain.activation_bytes();
  // switching between a forward and its backward is refused (the re-plan would drop the
  // forward's activations); after the backward it re-plans the buffers
  recomputed.zero_grad();
  recomputed.forward(b.tokens, b.targets);
  EXPECT_THROW(recomputed.set_recompute(false), Error);
  recomputed.backward();
  recomputed.set_recompute(false);
  recomputed.zero_grad();
  recomputed.forward(b.tokens, b.targets);
  recomputed.backward();
  EXPECT_EQ(0, std::memcmp(g1.raw(), recomputed.parameters().flat_grads().raw(), g1.nbytes()));
}

// The head in chunks of rows: the same per-token losses and, over two accumulated micro-batches,
// the same gradients up to the order in which wte's gradient sums the chunks; one chunk's logits
// buffer instead of every row's. Both forms: backward() recomputing the chunks, and forward()
// with the loss weight running the output layer's backward as it goes.
TEST(GPT, LogitsInChunksGiveTheSameLossesAndGradients) {
  const GPTConfig c = tiny_config();
  const int B = 2, T = 30, N = B * T;
  const int64_t Vp = c.padded_vocab_size();
  for (DType dt : {DType::f32, DType::bf16}) {
    GPT whole(c, cpu_backend(), 9, 32);
    randomise(whole, 3);
    whole.set_precision(dt);
    std::vector<float> want_losses;
    whole.zero_grad();
    for (int micro = 0; micro < 2; ++micro) {
      Batch b = make_batch(B, T, static_cast<int>(c.vocab_size), 5 + micro, true);
      whole.forward(b.tokens, b.targets);
      const float* l = whole.losses().data<float>();
      want_losses.insert(want_losses.end(), l, l + N);
      whole.backward(0.5f);
    }
    const Tensor want = whole.parameters().flat_grads();
    double gmax = 0;
    for (int64_t i = 0; i < want.numel(); ++i) gmax = std::max(gmax, std::fabs(double(want.data<float>()[i])));
    ASSERT_GT(gmax, 0.0);
    const int64_t whole_bytes = whole.activation_bytes();
    for (int64_t chunk : {1, 7, 59, 60, 61})
    for (bool fused : {false, true}) {
      SCOPED_TRACE(std::string(dtype_name(dt)) + ", chunk " + std::to_string(chunk) + (fused ? ", fused" : ""));
      GPT m(c, cpu_backend(), 9, 32);
      randomise(m, 3);
      m.set_precision(dt);
      m.set_logits_chunk(chunk);
      m.zero_grad();
      for (int micro = 0; micro < 2; ++micro) {
        Batch b = make_batch(B, T, static_cast<int>(c.vocab_size), 5 + micro, true);
        if (fused)
          m.forward(b.tokens, b.targets, 0.5f);
        else
          m.forward(b.tokens, b.targets);
        const float* l = m.losses().data<float>();
        for (int i = 0; i < N; ++i)
          ASSERT_NEAR(l[i], want_losses[micro * N + i], 1e-6 * std::fabs(want_losses[micro * N + i]) + 1e-7)
              << "micro-batch " << micro << ", token " << i;
        if (chunk < N || fused)
          EXPECT_THROW(m.logits(), Error);  // only the last chunk's logits (or dlogits) are left
        else
          EXPECT_EQ(m.logits().numel(), N * Vp);
        m.backward(0.5f);
      }
      const Tensor got = m.parameters().flat_grads();
      double err = 0;
      for (int64_t i = 0; i < got.numel(); ++i)
        err = llm::testing::max_or_nan(err, std::fabs(double(got.data<float>()[i]) - double(want.data<float>()[i])));
      EXPECT_LE(err, (dt == DType::f32 ? 1e-6 : 1e-3) * gmax) << "largest gradient " << gmax;
      // one chunk's logits instead of N rows' (bf16 in bf16)
      const int64_t rows = std::min<int64_t>(chunk, N);
      EXPECT_EQ(whole_bytes - m.activation_bytes(), (N - rows) * Vp * int64_t(dtype_size(dt)));
      // forward_logits() still gives every row's logits; the next forward holds one chunk again
      const int64_t chunked_bytes = m.activation_bytes();
      Batch b = make_batch(B, T, static_cast<int>(c.vocab_size), 5, true);
      m.forward_logits(b.tokens);
      whole.forward_logits(b.tokens);
      const Tensor lm = m.logits(), lw = whole.logits();
      ASSERT_EQ(lm.shape(), lw.shape());
      EXPECT_EQ(0, std::memcmp(lm.raw(), lw.raw(), lm.nbytes()));
      m.forward(b.tokens, b.targets);
      EXPECT_EQ(m.activation_bytes(), chunked_bytes);
    }
  }
  GPT m(c, cpu_backend(), 9, 32);
  EXPECT_THROW(m.set_logits_chunk(-1), Error);
  // the output layer's backward ran with 0.5: backward() with another weight is refused
  m.set_logits_chunk(7);
  Batch b = make_batch(B, T, static_cast<int>(c.vocab_size), 5, true);
  m.forward(b.tokens, b.targets, 0.5f);
  EXPECT_THROW(m.backward(1.0f), Error);
  // another chunk between forward() and backward(): backward recomputes every chunk at the new size
  GPT w(c, cpu_backend(), 9, 32), x(c, cpu_backend(), 9, 32);
  for (GPT* g : {&w, &x}) randomise(*g, 3), g->zero_grad();
  x.set_logits_chunk(7);
  w.forward(b.tokens, b.targets);
  x.forward(b.tokens, b.targets);
  x.set_logits_chunk(13);
  w.backward(0.5f);
  x.backward(0.5f);
  const Tensor gw = w.parameters().flat_grads(), gx = x.parameters().flat_grads();
  double err = 0, big = 0;
  for (int64_t i = 0; i < gw.numel(); ++i) {
    err = llm::testing::max_or_nan(err, std::fabs(double(gw.data<float>()[i]) - double(gx.data<float>()[i])));
    big = std::max(big, std::fabs(double(gw.data<float>()[i])));
  }
  EXPECT_LE(err, 1e-6 * big);
}

TEST(GPT, EachLayerIsOneContiguousRangeOfTheFlatBuffer) {
  // Gradient buckets and per-layer collectives rely on it: the layer's tensors fill
  // [min offset, max end) exactly, and layers follow each other in order.
  GPTConfig c = tiny_config();
  c.num_layers = 3;
  for (int tp : {1, 2}) {
    GPTConfig ct = c;
    ct.tensor_parallel = tp;
    const ParameterSet ps = gpt_parameters(ct, 16, 0, tp, tp > 1);
    int64_t prev_end = -1;
    for (int l = 0; l < 3; ++l) {
      int64_t lo = INT64_MAX, hi = 0, count = 0;
      for (const ParamSpec& s : ps.specs()) {
        if (s.group != l) continue;
        lo = std::min(lo, s.offset);
        hi = std::max(hi, s.offset + numel(s.shape));
        count += numel(s.shape);
        EXPECT_EQ(s.name.rfind("h." + std::to_string(l) + ".", 0), 0u) << s.name;
      }
      EXPECT_EQ(hi - lo, count) << "layer " << l << ", tp " << tp;
      EXPECT_EQ(ps.ranges_if([&](const ParamSpec& s) { return s.group == l; }).size(), 1u);
      EXPECT_GT(lo, prev_end - 1);
      prev_end = hi;
    }
    // Everything else (embeddings, final LayerNorm) is group -1.
    for (const ParamSpec& s : ps.specs())
      if (s.name.rfind("h.", 0) != 0) {
        EXPECT_EQ(s.group, -1) << s.name;
      }
  }
}

namespace {

// ZeRO storage (ParameterSet::set_compact): the layers share one working area, or with two
// gradient areas (--overlap-grad-reduce) layer l's gradients sit in area l mod 2, so adjacent
// layers never alias and layers two apart do; the parameters keep one area.
TEST(GPT, CompactStorageWithTwoGradientAreasAlternatesTheLayers) {
  GPTConfig c = tiny_config();
  c.num_layers = 4;
  ParameterSet ps = gpt_parameters(c, 16, 0, 1, false);
  EXPECT_THROW(ps.set_compact(true, false, 2), Error) << "two areas need compact gradients";
  EXPECT_THROW(ps.set_compact(false, true, 3), Error);
  ps.set_compact(true, true, 2);
  ps.allocate(cpu_backend(), 5);
  const int64_t res = ps.resident_numel(), area = ps.layer_area();
  ASSERT_GT(area, 0);
  EXPECT_EQ(ps.grad_areas(), 2);
  EXPECT_EQ(ps.flat_grads().numel(), res + 2 * area);
  EXPECT_EQ(ps.flat_params().numel(), res + area);
  const float* g0 = ps.flat_grads().data<float>();
  const float* p0 = ps.flat_params().data<float>();
  for (int l = 0; l < 4; ++l) {
    EXPECT_EQ(ps.area_begin(l, true), res + (l % 2) * area) << "layer " << l;
    EXPECT_EQ(ps.area_begin(l, false), res) << "layer " << l;
    const int64_t first = ps.group_range(l).first;
    for (const ParamSpec& s : ps.specs()) {
      if (s.group != l) continue;
      // every view of the layer inside its own area, at its offset within the layer
      const int64_t gofs = ps.grad(s.name).data<float>() - g0, pofs = ps.param(s.name).data<float>() - p0;
      EXPECT_EQ(gofs, res + (l % 2) * area + s.offset - first) << s.name;
      EXPECT_EQ(pofs, res + s.offset - first) << s.name;
      EXPECT_LE(gofs + numel(s.shape), res + (l % 2 + 1) * area) << s.name;
    }
  }
  EXPECT_EQ(ps.area_begin(-1, true), 0);
  // Two parameter areas as well (ZeRO-3 with --overlap-param-gather), and the compute copy with them.
  ParameterSet pp = gpt_parameters(c, 16, 0, 1, false);
  EXPECT_THROW(pp.set_compact(false, true, 1, 2), Error) << "two parameter areas need compact parameters";
  pp.set_compact(true, true, 2, 2);
  pp.allocate(cpu_backend(), 5);
  pp.set_compute_copy(cpu_backend(), DType::bf16);
  EXPECT_EQ(pp.flat_params().numel(), res + 2 * area);
  EXPECT_EQ(pp.flat_compute().numel(), res + 2 * area);
  for (int l = 0; l < 4; ++l) {
    EXPECT_EQ(pp.area_begin(l, false), res + (l % 2) * area) << "layer " << l;
    const std::string w = "h." + std::to_string(l) + ".attn.c_attn.weight";
    EXPECT_EQ(pp.param(w).data<float>() - pp.flat_params().data<float>(),
              res + (l % 2) * area + pp.spec(w).offset - pp.group_range(l).first);
  }
  // Resident tensors keep their logical offsets.
  for (const ParamSpec& s : ps.specs())
    if (s.group < 0) {
      EXPECT_EQ(ps.grad(s.name).data<float>() - g0, s.offset) << s.name;
    }
}

}  // namespace
