// Hugging Face GPT-2 export/import: names, shapes and Conv1D orientation as transformers writes
// them, config.json, lossless round trip (bit-exact parameters and logits), the variants real
// checkpoints come in (no "transformer." prefix, mask buffers, a stored tied lm_head, half
// precision), and the errors import must give.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "core/philox.h"
#include "data/json.h"
#include "io/hf_gpt2.h"
#include "io/safetensors.h"
#include "model/gpt.h"
#include "support/scratch_dir.h"

using namespace llm;
namespace fs = std::filesystem;

namespace {

using Named = std::vector<std::pair<std::string, Tensor>>;

class ScratchDir : public llm::testing::ScratchDir {
 public:
  ScratchDir() : llm::testing::ScratchDir("llm-hf-gpt2-test") {}
};

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}
void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << bytes;
}

GPTConfig tiny_config() {
  GPTConfig c;
  c.name = "tiny";
  c.num_layers = 2;
  c.hidden_size = 32;
  c.num_heads = 2;
  c.vocab_size = 50;
  c.vocab_divisible_by = 16;  // Vp = 64: padding rows exist
  c.layernorm_eps = 1e-5f;
  return c;
}

constexpr int64_t kSeq = 16;

// Every parameter random, LayerNorm gains around 1 (as in tests/model/gpt_test.cpp).
void randomise(GPT& m, uint64_t seed) {
  float* d = m.parameters().flat_params().data<float>();
  for (const ParamSpec& s : m.parameters().specs())
    for (int64_t i = 0; i < numel(s.shape); ++i) {
      const float r = 0.1f * philox_normal(seed, hash_name(s.name), i);
      d[s.offset + i] = s.init == Init::ones ? 1.0f + r : r;
    }
}

bool bit_equal(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

Tensor transposed(const Tensor& t) {
  Tensor out = Tensor::empty({t.size(1), t.size(0)});
  for (int64_t r = 0; r < t.size(0); ++r)
    for (int64_t c = 0; c < t.size(1); ++c) out.data<float>()[c * t.size(0) + r] = t.data<float>()[r * t.size(1) + c];
  return out;
}

// Logits [B, T, V] (real vocabulary columns only) for a fixed batch.
std::vector<float> real_logits(GPT& m) {
  const int64_t B = 2, T = kSeq, V = m.config().vocab_size, Vp = m.config().padded_vocab_size();
  Tensor tokens = Tensor::empty({B, T}, DType::i32);
  for (int64_t i = 0; i < B * T; ++i) tokens.data<int32_t>()[i] = static_cast<int32_t>((i * 7 + 3) % V);
  m.forward_logits(tokens);
  const float* lg = m.logits().data<float>();
  std::vector<float> out;
  for (int64_t r = 0; r < B * T; ++r) out.insert(out.end(), lg + r * Vp, lg + r * Vp + V);
  return out;
}

struct Fixture {
  ScratchDir tmp;
  GPTConfig config = tiny_config();
  std::unique_ptr<GPT> model;
  HFTokenizerFiles tok;
  std::string dir;

  explicit Fixture(GPTConfig c = tiny_config()) : config(c) {
    model = std::make_unique<GPT>(config, cpu_backend(), 1, kSeq);
    randomise(*model, 42);
    write_file(tmp / "encoder.json", "{\"a\": 0, \"<|endoftext|>\": 49}");
    write_file(tmp / "vocab.bpe", "#version: 0.2\na b\n");
    tok.kind = HFTokenizerFiles::Kind::gpt2_bpe;
    tok.vocab_file = tmp / "encoder.json";
    tok.merge_file = tmp / "vocab.bpe";
    tok.eod_id = 49;
    dir = tmp / "hf/tiny-gpt2";
  }
  void export_to(const std::string& d, bool overwrite = false) {
    export_hf_gpt2(d, model->config(), [&](const std::string& n) { return model->parameters().param(n); }, tok,
                   overwrite);
  }
};

// Rewrites model.safetensors of `dir` through `edit` (over name -> tensor, in order).
void edit_weights(const std::string& dir,
                  const std::function<void(std::vector<std::pair<std::string, Tensor>>&)>& edit) {
  const std::string path = dir + "/model.safetensors";
  std::vector<std::pair<std::string, Tensor>> tensors;
  std::map<std::string, std::string> meta;
  {
    SafetensorsFile f(path);
    for (const std::string& n : f.names()) tensors.emplace_back(n, f.read(n));
    meta = f.metadata();
  }
  edit(tensors);
  write_safetensors(path, tensors, meta);
}

void edit_config(const std::string& dir, const std::string& from, const std::string& to) {
  const std::string path = dir + "/config.json";
  std::string s = read_file(path);
  const size_t at = s.find(from);
  ASSERT_NE(at, std::string::npos) << from;
  s.replace(at, from.size(), to);
  write_file(path, s);
}

void expect_import_error(const std::string& dir, std::initializer_list<std::string> parts) {
  try {
    import_hf_gpt2(dir, 16);
    ADD_FAILURE() << "import succeeded; expected an error mentioning " << *parts.begin();
  } catch (const ConfigError& e) {
    const std::string msg = e.what();
    for (const std::string& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
  }
}

}  // namespace

TEST(HFGpt2, ExportWritesTransformersLayout) {
  Fixture fx;
  fx.export_to(fx.dir);
  EXPECT_EQ(fx.tmp.entries(), (std::vector<std::string>{"encoder.json", "hf", "vocab.bpe"}));
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(fx.dir)) files.push_back(e.path().filename().string());
  std::sort(files.begin(), files.end());
  EXPECT_EQ(files, (std::vector<std::string>{"config.json", "merges.txt", "model.safetensors", "vocab.json"}));
  EXPECT_EQ(std::vector<std::string>{"tiny-gpt2"}, [&] {
    std::vector<std::string> v;
    for (const auto& e : fs::directory_iterator(fx.tmp / "hf")) v.push_back(e.path().filename().string());
    return v;
  }());  // no staging directory left
  EXPECT_EQ(read_file(fx.dir + "/vocab.json"), read_file(fx.tmp / "encoder.json"));
  EXPECT_EQ(read_file(fx.dir + "/merges.txt"), read_file(fx.tmp / "vocab.bpe"));

  const GPTConfig& c = fx.model->config();
  const int64_t C = c.hidden_size, V = c.vocab_size, F = c.ffn(), P = kSeq;
  SafetensorsFile f(fx.dir + "/model.safetensors");
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.names().size(), static_cast<size_t>(2 + 12 * c.num_layers + 2));
  EXPECT_FALSE(f.contains("lm_head.weight"));
  EXPECT_EQ(f.names().front(), "transformer.wte.weight");
  EXPECT_EQ(f.names().back(), "transformer.ln_f.bias");
  std::map<std::string, Shape> expect = {
      {"transformer.wte.weight", {V, C}},   {"transformer.wpe.weight", {P, C}},
      {"transformer.ln_f.weight", {C}},     {"transformer.ln_f.bias", {C}},
  };
  for (int l = 0; l < c.num_layers; ++l) {
    const std::string p = "transformer.h." + std::to_string(l) + ".";
    expect[p + "ln_1.weight"] = {C};
    expect[p + "ln_1.bias"] = {C};
    expect[p + "attn.c_attn.weight"] = {C, 3 * C};
    expect[p + "attn.c_attn.bias"] = {3 * C};
    expect[p + "attn.c_proj.weight"] = {C, C};
    expect[p + "attn.c_proj.bias"] = {C};
    expect[p + "ln_2.weight"] = {C};
    expect[p + "ln_2.bias"] = {C};
    expect[p + "mlp.c_fc.weight"] = {C, F};
    expect[p + "mlp.c_fc.bias"] = {F};
    expect[p + "mlp.c_proj.weight"] = {F, C};
    expect[p + "mlp.c_proj.bias"] = {C};
  }
  for (const std::string& n : f.names()) {
    ASSERT_TRUE(expect.count(n)) << n;
    EXPECT_EQ(f.info(n).shape, expect[n]) << n;
    EXPECT_EQ(f.info(n).dtype, "F32") << n;
  }
  EXPECT_EQ(f.names().size(), expect.size());

  // Orientation: Conv1D weights are ours transposed; wte is our first V rows; others as is.
  const ParameterSet& ps = fx.model->parameters();
  for (const char* w : {"attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"})
    for (int l = 0; l < c.num_layers; ++l) {
      const std::string ours = "h." + std::to_string(l) + "." + w;
      EXPECT_TRUE(bit_equal(f.read("transformer." + ours), transposed(ps.param(ours)))) << ours;
    }
  EXPECT_TRUE(bit_equal(f.read("transformer.wte.weight"), ps.param("wte").slice(0, 0, V).clone()));
  EXPECT_TRUE(bit_equal(f.read("transformer.wpe.weight"), ps.param("wpe")));
  EXPECT_TRUE(bit_equal(f.read("transformer.h.1.ln_2.bias"), ps.param("h.1.ln_2.bias")));
  // A spot check of the convention itself: HF computes x @ W, W[i][o] = our W[o][i].
  const Tensor hf_attn = f.read("transformer.h.0.attn.c_attn.weight");
  EXPECT_EQ(hf_attn.data<float>()[1 * 3 * C + 5], ps.param("h.0.attn.c_attn.weight").data<float>()[5 * C + 1]);

  const json::Value cfg = json::parse_file(fx.dir + "/config.json");
  auto num = [&](const char* k) { return cfg.find(k)->as_int(); };
  EXPECT_EQ(cfg.find("model_type")->as_string(), "gpt2");
  ASSERT_EQ(cfg.find("architectures")->as_array().size(), 1u);
  EXPECT_EQ(cfg.find("architectures")->as_array()[0].as_string(), "GPT2LMHeadModel");
  EXPECT_EQ(num("vocab_size"), V);
  EXPECT_EQ(num("n_positions"), P);
  EXPECT_EQ(num("n_ctx"), P);
  EXPECT_EQ(num("n_embd"), C);
  EXPECT_EQ(num("n_layer"), c.num_layers);
  EXPECT_EQ(num("n_head"), c.num_heads);
  EXPECT_TRUE(cfg.find("n_inner")->is_null());
  EXPECT_EQ(static_cast<float>(cfg.find("layer_norm_epsilon")->as_double()), 1e-5f);
  EXPECT_EQ(cfg.find("layer_norm_epsilon")->as_double(), 1e-5);  // written as 1e-05, not 9.99999974e-06
  EXPECT_EQ(cfg.find("activation_function")->as_string(), "gelu_new");
  EXPECT_EQ(num("bos_token_id"), 49);
  EXPECT_EQ(num("eos_token_id"), 49);
  EXPECT_TRUE(cfg.find("tie_word_embeddings")->as_bool());
  for (const char* k : {"resid_pdrop", "embd_pdrop", "attn_pdrop"}) EXPECT_EQ(cfg.find(k)->as_double(), 0.0) << k;
  EXPECT_EQ(cfg.find("torch_dtype")->as_string(), "float32");
}

TEST(HFGpt2, RoundTripIsLosslessAndGivesIdenticalLogits) {
  Fixture fx;
  fx.export_to(fx.dir);
  const HFGpt2Import imp = import_hf_gpt2(fx.dir, 16);
  const GPTConfig& a = fx.model->config();
  const GPTConfig& b = imp.config;
  EXPECT_EQ(b.name, "tiny-gpt2");
  EXPECT_EQ(b.num_layers, a.num_layers);
  EXPECT_EQ(b.hidden_size, a.hidden_size);
  EXPECT_EQ(b.num_heads, a.num_heads);
  EXPECT_EQ(b.ffn(), a.ffn());
  EXPECT_EQ(b.max_position_embeddings, a.max_position_embeddings);
  EXPECT_EQ(b.vocab_size, a.vocab_size);
  EXPECT_EQ(b.padded_vocab_size(), a.padded_vocab_size());
  EXPECT_EQ(b.layernorm_eps, a.layernorm_eps);
  EXPECT_EQ(imp.tokenizer.kind, HFTokenizerFiles::Kind::gpt2_bpe);
  EXPECT_EQ(imp.tokenizer.vocab_file, fx.dir + "/vocab.json");
  EXPECT_EQ(imp.tokenizer.merge_file, fx.dir + "/merges.txt");
  EXPECT_EQ(imp.tokenizer.eod_id, 49);

  // Every parameter bit-exact in our layout; wte's padding rows come back as zeros.
  const ParameterSet& ps = fx.model->parameters();
  EXPECT_EQ(imp.params.size(), ps.specs().size());
  const int64_t V = a.vocab_size, Vp = a.padded_vocab_size(), C = a.hidden_size;
  for (const ParamSpec& s : ps.specs()) {
    ASSERT_TRUE(imp.params.count(s.name)) << s.name;
    const Tensor& t = imp.params.at(s.name);
    ASSERT_EQ(t.shape(), s.shape) << s.name;
    if (s.name == "wte") {
      EXPECT_EQ(std::memcmp(t.raw(), ps.param("wte").raw(), V * C * 4), 0);
      for (int64_t i = V * C; i < Vp * C; ++i) ASSERT_EQ(t.data<float>()[i], 0.0f);
    } else {
      EXPECT_TRUE(bit_equal(t, ps.param(s.name))) << s.name;
    }
  }

  // A second model with the imported parameters computes bit-identical logits.
  GPT m2(imp.config, cpu_backend(), 999, kSeq);
  for (const auto& [name, t] : imp.params) m2.parameters().param(name).copy_from(t);
  const std::vector<float> la = real_logits(*fx.model), lb = real_logits(m2);
  ASSERT_EQ(la.size(), lb.size());
  EXPECT_EQ(std::memcmp(la.data(), lb.data(), la.size() * sizeof(float)), 0);

  // Exporting the import again gives the same safetensors file, byte for byte.
  const std::string again = fx.tmp / "again";
  export_hf_gpt2(again, imp.config, [&](const std::string& n) { return imp.params.at(n); }, imp.tokenizer);
  EXPECT_EQ(read_file(again + "/model.safetensors"), read_file(fx.dir + "/model.safetensors"));
  EXPECT_EQ(read_file(again + "/config.json"), read_file(fx.dir + "/config.json"));
}

TEST(HFGpt2, CustomFfnSentencePieceAndNoEod) {
  GPTConfig c = tiny_config();
  c.ffn_hidden_size = 48;
  c.layernorm_eps = 1e-6f;
  Fixture fx(c);
  write_file(fx.tmp / "sp.model", "not really a sentencepiece model");
  fx.tok = HFTokenizerFiles{};
  fx.tok.kind = HFTokenizerFiles::Kind::sentencepiece;
  fx.tok.model_file = fx.tmp / "sp.model";
  fx.export_to(fx.dir);
  const json::Value cfg = json::parse_file(fx.dir + "/config.json");
  EXPECT_EQ(cfg.find("n_inner")->as_int(), 48);
  EXPECT_TRUE(cfg.find("eos_token_id")->is_null());
  EXPECT_EQ(cfg.find("layer_norm_epsilon")->as_double(), 1e-6);
  EXPECT_EQ(read_file(fx.dir + "/tokenizer.model"), "not really a sentencepiece model");
  EXPECT_FALSE(fs::exists(fx.dir + "/vocab.json"));
  SafetensorsFile f(fx.dir + "/model.safetensors");
  EXPECT_EQ(f.info("transformer.h.0.mlp.c_fc.weight").shape, (Shape{32, 48}));
  EXPECT_EQ(f.info("transformer.h.0.mlp.c_proj.weight").shape, (Shape{48, 32}));

  const HFGpt2Import imp = import_hf_gpt2(fx.dir, 16);
  EXPECT_EQ(imp.config.ffn(), 48);
  EXPECT_EQ(imp.config.layernorm_eps, 1e-6f);
  EXPECT_EQ(imp.tokenizer.kind, HFTokenizerFiles::Kind::sentencepiece);
  EXPECT_EQ(imp.tokenizer.model_file, fx.dir + "/tokenizer.model");
  EXPECT_EQ(imp.tokenizer.eod_id, -1);
  EXPECT_TRUE(bit_equal(imp.params.at("h.1.mlp.c_proj.weight"), fx.model->parameters().param("h.1.mlp.c_proj.weight")));
  // Default vocab_divisible_by (128) pads further.
  EXPECT_EQ(import_hf_gpt2(fx.dir).params.at("wte").shape(), (Shape{128, 32}));
}

TEST(HFGpt2, ExportRefusesNonEmptyDirectoryUnlessOverwrite) {
  Fixture fx;
  fs::create_directories(fx.dir);
  fx.export_to(fx.dir);  // an existing empty directory is fine
  write_file(fx.dir + "/stray.txt", "x");
  try {
    fx.export_to(fx.dir);
    ADD_FAILURE() << "overwrote a non-empty directory";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find(fx.dir), std::string::npos) << e.what();
  }
  EXPECT_TRUE(fs::exists(fx.dir + "/stray.txt"));
  fx.export_to(fx.dir, /*overwrite=*/true);
  EXPECT_FALSE(fs::exists(fx.dir + "/stray.txt"));  // replaced as a whole
  EXPECT_TRUE(fs::exists(fx.dir + "/model.safetensors"));
  std::vector<std::string> siblings;
  for (const auto& e : fs::directory_iterator(fx.tmp / "hf")) siblings.push_back(e.path().filename().string());
  EXPECT_EQ(siblings, std::vector<std::string>{"tiny-gpt2"});  // no staging or old copies left

  // A failing export (missing tokenizer file) leaves the destination as it was and no staging.
  const std::string before = read_file(fx.dir + "/model.safetensors");
  fx.tok.merge_file = fx.tmp / "missing.bpe";
  try {
    fx.export_to(fx.dir, true);
    ADD_FAILURE() << "exported without the merge file";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("missing.bpe"), std::string::npos) << e.what();
  }
  EXPECT_EQ(read_file(fx.dir + "/model.safetensors"), before);
  siblings.clear();
  for (const auto& e : fs::directory_iterator(fx.tmp / "hf")) siblings.push_back(e.path().filename().string());
  EXPECT_EQ(siblings, std::vector<std::string>{"tiny-gpt2"});

  fx.tok.merge_file = fx.tmp / "vocab.bpe";
  fx.tok.eod_id = 50;  // outside the 50-token vocabulary
  EXPECT_THROW(fx.export_to(fx.tmp / "other"), ConfigError);
  EXPECT_FALSE(fs::exists(fx.tmp / "other"));
}

// A checkpoint saved under tensor parallelism pads the vocabulary to 128 x TP rows: the export
// takes the first V rows whatever the padding, and names wte when it has fewer than V.
TEST(HFGpt2, ExportTakesAnyVocabularyPadding) {
  Fixture fx;
  const GPTConfig& c = fx.model->config();
  const int64_t V = c.vocab_size, Vp = c.padded_vocab_size(), C = c.hidden_size;
  const Tensor wte = fx.model->parameters().param("wte");
  Tensor tp2 = Tensor::zeros({2 * Vp, C});  // as a TP 2 run stores it
  std::copy(wte.data<float>(), wte.data<float>() + Vp * C, tp2.data<float>());
  auto param = [&](const Tensor& w) {
    return [&, w](const std::string& n) { return n == "wte" ? w : fx.model->parameters().param(n); };
  };
  export_hf_gpt2(fx.dir, c, param(tp2), fx.tok);
  const Tensor got = SafetensorsFile(fx.dir + "/model.safetensors").read("transformer.wte.weight");
  ASSERT_EQ(got.shape(), (Shape{V, C}));
  for (int64_t i = 0; i < V * C; ++i) ASSERT_EQ(got.data<float>()[i], wte.data<float>()[i]) << i;
  try {
    export_hf_gpt2(fx.tmp / "short", c, param(Tensor::zeros({V - 1, C})), fx.tok);
    ADD_FAILURE() << "exported a wte with fewer rows than the vocabulary";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("wte"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(fx.tmp / "short"));
}

// Checkpoints as they exist on the Hub: GPT2Model names (no prefix), the attention-mask
// buffers older transformers saved, a stored tied lm_head, half-precision storage.
TEST(HFGpt2, ImportAcceptsHubVariants) {
  Fixture fx;
  fx.export_to(fx.dir);
  const HFGpt2Import ref = import_hf_gpt2(fx.dir, 16);
  const int64_t T = 8;
  edit_weights(fx.dir, [&](Named& ts) {
    Tensor wte;
    for (auto& [n, t] : ts) {
      n = n.substr(std::string("transformer.").size());
      if (n == "wte.weight") wte = t;
    }
    for (int l = 0; l < 2; ++l) {
      ts.emplace_back("h." + std::to_string(l) + ".attn.bias", Tensor::zeros({1, 1, T, T}, DType::f32));
      ts.emplace_back("h." + std::to_string(l) + ".attn.masked_bias", Tensor::zeros({}, DType::f32));
    }
    ts.emplace_back("lm_head.weight", wte.clone());
  });
  HFGpt2Import imp = import_hf_gpt2(fx.dir, 16);
  for (const auto& [n, t] : ref.params) EXPECT_TRUE(bit_equal(imp.params.at(n), t)) << n;

  // BF16 and F16 storage, mixed: converted exactly.
  edit_weights(fx.dir, [&](Named& ts) {
    int k = 0;
    for (auto& [n, t] : ts) {
      if (n.find("attn.bias") != std::string::npos || n.find("masked_bias") != std::string::npos) continue;
      // wte and lm_head both bf16, so they stay equal; the rest alternate.
      const bool bf = n == "wte.weight" || n == "lm_head.weight" || k++ % 2 == 0;
      Tensor h = Tensor::empty(t.shape(), bf ? DType::bf16 : DType::f16);
      for (int64_t i = 0; i < t.numel(); ++i)
        static_cast<uint16_t*>(h.raw())[i] = bf ? f32_to_bf16(t.data<float>()[i]) : f32_to_f16(t.data<float>()[i]);
      t = h;
    }
  });
  imp = import_hf_gpt2(fx.dir, 16);
  SafetensorsFile f(fx.dir + "/model.safetensors");
  const Tensor stored = f.read("h.0.attn.c_attn.weight");
  const Tensor& ours = imp.params.at("h.0.attn.c_attn.weight");
  const int64_t C = 32;
  for (int64_t i = 0; i < C; ++i)
    for (int64_t o = 0; o < 3 * C; ++o) {
      const uint16_t h = static_cast<const uint16_t*>(stored.raw())[i * 3 * C + o];
      const float want = stored.dtype() == DType::bf16 ? bf16_to_f32(h) : f16_to_f32(h);
      ASSERT_EQ(ours.data<float>()[o * C + i], want);
    }
}

TEST(HFGpt2, ImportErrorsNameTheFileAndTensor) {
  Fixture fx;
  fx.export_to(fx.dir);
  const std::string st = fx.dir + "/model.safetensors";
  const std::string cfg = fx.dir + "/config.json";
  const std::string good_st = read_file(st), good_cfg = read_file(cfg);
  auto restore = [&] {
    write_file(st, good_st);
    write_file(cfg, good_cfg);
  };

  edit_weights(fx.dir, [](Named& ts) {
    ts.erase(std::find_if(ts.begin(), ts.end(), [](const auto& p) { return p.first == "transformer.h.1.mlp.c_fc.bias"; }));
  });
  expect_import_error(fx.dir, {st, "missing tensor", "h.1.mlp.c_fc.bias"});
  restore();

  edit_weights(fx.dir, [](Named& ts) {
    for (auto& [n, t] : ts)
      if (n == "transformer.h.0.attn.c_proj.weight") t = Tensor::zeros({32, 31});
  });
  expect_import_error(fx.dir, {st, "transformer.h.0.attn.c_proj.weight", "[32, 31]", "[32, 32]"});
  restore();

  // Our [out, in] orientation where HF expects [in, out] is a shape error, not silently accepted.
  edit_weights(fx.dir, [](Named& ts) {
    for (auto& [n, t] : ts)
      if (n == "transformer.h.0.mlp.c_fc.weight") t = transposed(t);
  });
  expect_import_error(fx.dir, {st, "transformer.h.0.mlp.c_fc.weight", "[128, 32]"});
  restore();

  edit_weights(fx.dir, [](Named& ts) { ts.emplace_back("transformer.h.2.ln_1.weight", Tensor::zeros({32})); });
  expect_import_error(fx.dir, {st, "transformer.h.2.ln_1.weight", "n_layer"});
  restore();

  edit_weights(fx.dir, [](Named& ts) {
    Tensor head = ts[0].second.clone();
    head.data<float>()[7] += 1.0f;
    ts.emplace_back("lm_head.weight", head);
  });
  expect_import_error(fx.dir, {st, "lm_head.weight", "untied"});
  restore();

  edit_weights(fx.dir, [](Named& ts) { ts.emplace_back("wpe.weight", ts[1].second.clone()); });
  expect_import_error(fx.dir, {"wpe.weight", "stored twice"});
  restore();

  edit_weights(fx.dir, [](Named& ts) {
    for (auto& [n, t] : ts)
      if (n == "transformer.ln_f.weight") t = Tensor::zeros({32}, DType::i32);
  });
  expect_import_error(fx.dir, {st, "transformer.ln_f.weight", "I32"});
  restore();

  // config.json problems and disagreements with the tensors.
  edit_config(fx.dir, "\"vocab_size\": 50", "\"vocab_size\": 51");
  expect_import_error(fx.dir, {st, "transformer.wte.weight", "50 rows", "vocab_size 51"});
  restore();
  edit_config(fx.dir, "\"n_positions\": 16", "\"n_positions\": 32");
  expect_import_error(fx.dir, {st, "transformer.wpe.weight", "n_positions 32"});
  restore();
  edit_config(fx.dir, "\"n_inner\": null", "\"n_inner\": 64");
  expect_import_error(fx.dir, {st, "mlp.c_fc.weight", "[32, 64]"});
  restore();
  edit_config(fx.dir, "\"activation_function\": \"gelu_new\"", "\"activation_function\": \"relu\"");
  expect_import_error(fx.dir, {cfg, "activation_function", "relu"});
  restore();
  edit_config(fx.dir, "\"activation_function\": \"gelu_new\"", "\"activation_function\": \"gelu_pytorch_tanh\"");
  EXPECT_NO_THROW(import_hf_gpt2(fx.dir, 16));
  restore();
  edit_config(fx.dir, "\"model_type\": \"gpt2\"", "\"model_type\": \"llama\"");
  expect_import_error(fx.dir, {cfg, "model_type", "llama"});
  restore();
  edit_config(fx.dir, "\"scale_attn_weights\": true", "\"scale_attn_weights\": false");
  expect_import_error(fx.dir, {cfg, "scale_attn_weights"});
  restore();
  edit_config(fx.dir, "\"tie_word_embeddings\": true", "\"tie_word_embeddings\": false");
  expect_import_error(fx.dir, {cfg, "tie_word_embeddings", "untied"});
  restore();
  edit_config(fx.dir, "\"n_embd\": 32,\n", "");
  expect_import_error(fx.dir, {cfg, "'n_embd'", "missing"});
  restore();
  edit_config(fx.dir, "\"n_head\": 2", "\"n_head\": 3");
  expect_import_error(fx.dir, {cfg, "n_head", "does not divide"});
  restore();
  edit_config(fx.dir, "\"n_layer\": 2", "\"n_layer\": 2.5");
  expect_import_error(fx.dir, {cfg, "'n_layer'"});
  restore();
  edit_config(fx.dir, "\"n_layer\": 2", "\"n_layer\": 3");
  expect_import_error(fx.dir, {st, "missing tensor", "h.2."});
  restore();
  write_file(cfg, "{\"model_type\": \"gpt2\",}");
  expect_import_error(fx.dir, {cfg});
  restore();

  // Files.
  fs::remove(cfg);
  expect_import_error(fx.dir, {cfg, "missing"});
  restore();
  fs::rename(st, fx.dir + "/pytorch_model.bin");
  expect_import_error(fx.dir, {fx.dir, "pytorch_model.bin"});
  fs::remove(fx.dir + "/pytorch_model.bin");
  expect_import_error(fx.dir, {fx.dir, "model.safetensors"});
  restore();
  write_file(st, good_st.substr(0, good_st.size() - 4));
  expect_import_error(fx.dir, {st, "outside"});
  restore();
  expect_import_error(fx.tmp / "nowhere", {"nowhere", "not a directory"});
  EXPECT_NO_THROW(import_hf_gpt2(fx.dir, 16));
}

TEST(HFGpt2, ImportReadsShardedCheckpoints) {
  Fixture fx;
  fx.export_to(fx.dir);
  const HFGpt2Import ref = import_hf_gpt2(fx.dir, 16);
  // Split into two shards with an index, as save_pretrained does for large models.
  std::vector<std::pair<std::string, Tensor>> a, b;
  std::string map;
  {
    SafetensorsFile f(fx.dir + "/model.safetensors");
    for (size_t i = 0; i < f.names().size(); ++i) {
      const std::string& n = f.names()[i];
      const std::string file = i < 10 ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
      (i < 10 ? a : b).emplace_back(n, f.read(n));
      map += std::string(map.empty() ? "" : ",") + json::quote(n) + ":" + json::quote(file);
    }
  }
  fs::remove(fx.dir + "/model.safetensors");
  write_safetensors(fx.dir + "/model-00001-of-00002.safetensors", a, {{"format", "pt"}});
  write_safetensors(fx.dir + "/model-00002-of-00002.safetensors", b, {{"format", "pt"}});
  const std::string index = fx.dir + "/model.safetensors.index.json";
  write_file(index, "{\"metadata\": {\"total_size\": 0}, \"weight_map\": {" + map + "}}");
  const HFGpt2Import imp = import_hf_gpt2(fx.dir, 16);
  for (const auto& [n, t] : ref.params) EXPECT_TRUE(bit_equal(imp.params.at(n), t)) << n;

  // An index entry pointing at the wrong shard.
  std::string bad = read_file(index);
  const std::string from = "\"transformer.wte.weight\":\"model-00001-of-00002.safetensors\"";
  ASSERT_NE(bad.find(from), std::string::npos);
  bad.replace(bad.find(from), from.size(), "\"transformer.wte.weight\":\"model-00002-of-00002.safetensors\"");
  write_file(index, bad);
  expect_import_error(fx.dir, {index, "transformer.wte.weight", "does not hold it"});
}
